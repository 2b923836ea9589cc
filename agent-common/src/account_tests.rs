use super::*;
use crate::{DIRECTION_EGRESS, DIRECTION_INGRESS, FAMILY_IPV4};
use core::cell::{Cell, RefCell};
use std::collections::BTreeMap;

/// A bounded map like a preallocated BPF hash: inserts fail with -E2BIG when full; it can also
/// be told to report one -EEXIST race.
struct BoundedMap<K> {
    capacity: usize,
    entries: RefCell<BTreeMap<K, Counter>>,
    race_once: Cell<bool>,
}

impl<K: Ord + Clone> BoundedMap<K> {
    fn new(capacity: usize) -> Self {
        BoundedMap {
            capacity,
            entries: RefCell::new(BTreeMap::new()),
            race_once: Cell::new(false),
        }
    }
    fn get(&self, key: &K) -> Option<Counter> {
        self.entries.borrow().get(key).copied()
    }
}

impl<K: Ord + Clone> CounterMap<K> for BoundedMap<K> {
    fn add_existing(&self, key: &K, bytes: u64, packets: u64) -> bool {
        match self.entries.borrow_mut().get_mut(key) {
            Some(c) => {
                c.add(bytes, packets);
                true
            }
            None => false,
        }
    }
    fn insert_new(&self, key: &K, value: &Counter) -> Result<(), i64> {
        if self.race_once.replace(false) {
            // Another CPU won the race: its (zero on this CPU) entry now exists.
            self.entries
                .borrow_mut()
                .insert(key.clone(), Counter::default());
            return Err(EEXIST);
        }
        let mut entries = self.entries.borrow_mut();
        if entries.contains_key(key) {
            return Err(EEXIST);
        }
        if entries.len() >= self.capacity {
            return Err(-7); // -E2BIG
        }
        entries.insert(key.clone(), *value);
        Ok(())
    }
}

#[derive(Default)]
struct Lost(RefCell<[Counter; 2]>);
impl LostCounter for Lost {
    fn add(&self, direction: u8, bytes: u64, packets: u64) {
        self.0.borrow_mut()[direction as usize].add(bytes, packets);
    }
}

fn st<'a, T>(
    flows: &'a BoundedMap<FlowKey>,
    overflow: &'a BoundedMap<OverflowKey>,
    lost: &'a Lost,
    translated: &'a T,
) -> Stores<'a, BoundedMap<FlowKey>, BoundedMap<OverflowKey>, Lost, T, NoQuota> {
    Stores {
        flows,
        overflow,
        lost,
        translated,
        quota: &NoQuota,
    }
}

/// No owner is limited.
struct NoQuota;
impl FlowQuota for NoQuota {
    fn allows(&self, _: u64) -> bool {
        true
    }
    fn charge(&self, _: u64) {}
}

/// New flows per owner, at most `limit`.
struct Quota {
    limit: u64,
    used: RefCell<BTreeMap<u64, u64>>,
}
impl FlowQuota for Quota {
    fn allows(&self, cgroup_id: u64) -> bool {
        self.used.borrow().get(&cgroup_id).copied().unwrap_or(0) < self.limit
    }
    fn charge(&self, cgroup_id: u64) {
        *self.used.borrow_mut().entry(cgroup_id).or_default() += 1;
    }
}

#[test]
fn an_owner_over_its_quota_keeps_its_bytes_and_leaves_room_for_the_others() {
    let flows = BoundedMap::new(8);
    let overflow = BoundedMap::new(4);
    let lost = Lost::default();
    let quota = Quota {
        limit: 3,
        used: RefCell::new(BTreeMap::new()),
    };
    let stores = Stores {
        flows: &flows,
        overflow: &overflow,
        lost: &lost,
        translated: &Nothing,
        quota: &quota,
    };
    // Owner 1 sprays 100 remotes: 3 flows, the rest in its overflow entry.
    for last in 0..100u8 {
        account(&stores, &key(1, last, DIRECTION_EGRESS), 10, 1);
    }
    // An existing flow of owner 1 still adds in place.
    assert_eq!(
        account(&stores, &key(1, 0, DIRECTION_EGRESS), 10, 1),
        Landed::Flow
    );
    // Owner 2 still finds room, for as many flows as its own quota.
    for last in 0..3u8 {
        assert_eq!(
            account(&stores, &key(2, last, DIRECTION_EGRESS), 7, 1),
            Landed::Flow
        );
    }
    assert_eq!(
        overflow
            .get(&OverflowKey::new(1, DIRECTION_EGRESS))
            .unwrap()
            .bytes,
        970
    );
    assert!(overflow
        .get(&OverflowKey::new(2, DIRECTION_EGRESS))
        .is_none());
    assert_eq!(flows.entries.borrow().len(), 3 + 3);
}

/// No remote is translated: every key is stored per remote.
struct Nothing;
impl Translated for Nothing {
    fn contains(&self, _: &FlowKey) -> bool {
        false
    }
}

/// Remotes translated when their last octet is in the set.
struct LastOctets(&'static [u8]);
impl Translated for LastOctets {
    fn contains(&self, key: &FlowKey) -> bool {
        self.0.contains(&key.remote_octets()[3])
    }
}

fn connection(last_octet: u8, local_port: u16) -> FlowKey {
    let mut k = key(1, last_octet, DIRECTION_EGRESS);
    k.local = [u32::from_ne_bytes([10, 0, 1, 2]), 0, 0, 0];
    k.local_port = local_port.to_be();
    k.remote_port = 80u16.to_be();
    k.protocol = 6;
    k
}

#[test]
fn only_translated_remotes_are_stored_per_connection() {
    let flows = BoundedMap::new(16);
    let overflow = BoundedMap::new(1);
    let lost = Lost::default();
    let translated = LastOctets(&[10]);
    let mut slot = CacheEntry::default();
    // Two connections to a Service address and two to a plain remote, interleaved.
    for port in [40_000u16, 40_001, 40_000, 40_001] {
        for (remote, bytes) in [(10u8, 100u64), (20, 10)] {
            let k = connection(remote, port);
            account_via_cache(
                Some(&mut slot),
                &st(&flows, &overflow, &lost, &translated),
                &k,
                bytes,
                1,
            );
        }
    }
    // Flush the slot.
    account(
        &st(&flows, &overflow, &lost, &translated),
        &slot.key,
        slot.counter.bytes,
        slot.counter.packets,
    );
    let entries = flows.entries.borrow();
    assert_eq!(entries.get(&connection(10, 40_000)).unwrap().bytes, 200);
    assert_eq!(entries.get(&connection(10, 40_001)).unwrap().bytes, 200);
    assert_eq!(
        entries
            .get(&connection(20, 40_000).per_remote())
            .unwrap()
            .bytes,
        40
    );
    assert_eq!(entries.len(), 3, "{entries:?}");
}

fn key(cgroup: u64, last_octet: u8, direction: u8) -> FlowKey {
    let remote = [u32::from_ne_bytes([192, 0, 2, last_octet]), 0, 0, 0];
    FlowKey::new(cgroup, remote, FAMILY_IPV4, direction)
}

#[test]
fn bytes_fall_through_flow_then_overflow_then_lost_and_none_vanish() {
    let flows = BoundedMap::new(2);
    let overflow = BoundedMap::new(1);
    let lost = Lost::default();
    let sent = [
        (key(1, 1, DIRECTION_EGRESS), 100, Landed::Flow),
        (key(1, 1, DIRECTION_EGRESS), 50, Landed::Flow),
        (key(1, 2, DIRECTION_EGRESS), 10, Landed::Flow),
        (key(1, 3, DIRECTION_EGRESS), 7, Landed::Overflow),
        (key(1, 4, DIRECTION_EGRESS), 3, Landed::Overflow),
        (key(2, 4, DIRECTION_INGRESS), 5, Landed::Lost),
    ];
    for (k, bytes, want) in sent {
        assert_eq!(
            account(&st(&flows, &overflow, &lost, &Nothing), &k, bytes, 1),
            want
        );
    }
    assert_eq!(flows.get(&key(1, 1, DIRECTION_EGRESS)).unwrap().bytes, 150);
    assert_eq!(
        overflow
            .get(&OverflowKey::new(1, DIRECTION_EGRESS))
            .unwrap(),
        Counter {
            bytes: 10,
            packets: 2
        }
    );
    assert_eq!(lost.0.borrow()[DIRECTION_INGRESS as usize].bytes, 5);
    let stored: u64 = flows
        .entries
        .borrow()
        .values()
        .map(|c| c.bytes)
        .sum::<u64>()
        + overflow
            .entries
            .borrow()
            .values()
            .map(|c| c.bytes)
            .sum::<u64>()
        + lost.0.borrow().iter().map(|c| c.bytes).sum::<u64>();
    assert_eq!(stored, 100 + 50 + 10 + 7 + 3 + 5);
}

fn total(flows: &BoundedMap<FlowKey>, slot: &CacheEntry) -> u64 {
    flows
        .entries
        .borrow()
        .values()
        .map(|c| c.bytes)
        .sum::<u64>()
        + slot.counter.bytes
}

#[test]
fn the_cache_combines_a_run_of_one_flow_and_flushes_on_a_new_key() {
    let flows = BoundedMap::new(8);
    let overflow = BoundedMap::new(1);
    let lost = Lost::default();
    let mut slot = CacheEntry::default();
    let (a, b) = (key(1, 1, DIRECTION_EGRESS), key(1, 2, DIRECTION_EGRESS));
    for _ in 0..10 {
        account_via_cache(
            Some(&mut slot),
            &st(&flows, &overflow, &lost, &Nothing),
            &a,
            100,
            1,
        );
    }
    assert!(
        flows.entries.borrow().is_empty(),
        "a run of one flow stays in the slot"
    );
    assert_eq!(
        slot.counter,
        Counter {
            bytes: 1000,
            packets: 10
        }
    );
    account_via_cache(
        Some(&mut slot),
        &st(&flows, &overflow, &lost, &Nothing),
        &b,
        7,
        1,
    );
    assert_eq!(
        flows.get(&a),
        Some(Counter {
            bytes: 1000,
            packets: 10
        })
    );
    assert_eq!((slot.key, slot.counter.bytes), (b, 7));
    account_via_cache(
        Some(&mut slot),
        &st(&flows, &overflow, &lost, &Nothing),
        &a,
        5,
        1,
    );
    assert_eq!(flows.get(&b).unwrap().bytes, 7);
    assert_eq!(total(&flows, &slot), 1012);
    assert_eq!(slot.busy, 0);
}

#[test]
fn a_nested_run_leaves_a_busy_slot_alone() {
    let flows = BoundedMap::new(8);
    let overflow = BoundedMap::new(1);
    let lost = Lost::default();
    let a = key(1, 1, DIRECTION_EGRESS);
    let mut slot = CacheEntry {
        key: a,
        counter: Counter {
            bytes: 50,
            packets: 1,
        },
        busy: 1,
    };
    let other = key(2, 9, DIRECTION_EGRESS);
    account_via_cache(
        Some(&mut slot),
        &st(&flows, &overflow, &lost, &Nothing),
        &other,
        30,
        1,
    );
    assert_eq!(slot.counter.bytes, 50, "busy slot untouched");
    assert_eq!(flows.get(&other).unwrap().bytes, 30);
    // Without a slot (lookup failed) the maps take the bytes too.
    account_via_cache(None, &st(&flows, &overflow, &lost, &Nothing), &a, 3, 1);
    assert_eq!(flows.get(&a).unwrap().bytes, 3);
}

#[test]
fn insert_race_adds_to_the_winner_entry() {
    let flows = BoundedMap::new(8);
    flows.race_once.set(true);
    let overflow = BoundedMap::new(1);
    let lost = Lost::default();
    let k = key(9, 9, DIRECTION_EGRESS);
    assert_eq!(
        account(&st(&flows, &overflow, &lost, &Nothing), &k, 42, 3),
        Landed::Flow
    );
    assert_eq!(
        flows.get(&k),
        Some(Counter {
            bytes: 42,
            packets: 3
        })
    );
}
