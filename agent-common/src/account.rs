//! Where a measured packet's bytes are added, and what happens when a map is full.
//!
//! The order is: the flow's own entry; failing that (map full, a bucket busy because another
//! program on this CPU holds it, or the owner over its quota of new flows) the identity's
//! overflow entry, so the pod still gets its bytes but loses the remote address; failing that the
//! per-direction `LOST` slot, which cannot fail. Every byte lands somewhere, and the second and
//! third places are visible as metrics. The quota keeps the cost of a flood of new remotes on
//! the owner that sends it: everyone else's flows still find room.

use crate::{CacheEntry, Counter, FlowKey, OverflowKey};

/// `-EEXIST`: another CPU inserted the same key between our lookup and our insert.
pub const EEXIST: i64 = -17;

/// A counting map as the per-packet logic sees it (a per-CPU hash in the kernel).
pub trait CounterMap<K> {
    /// Adds to an existing entry; false when the key is absent. The kernel adds atomically: a
    /// program interrupting another on the same CPU may add to the same entry.
    fn add_existing(&self, key: &K, bytes: u64, packets: u64) -> bool;
    /// Inserts a new entry only if absent; the kernel's error code otherwise.
    fn insert_new(&self, key: &K, value: &Counter) -> Result<(), i64>;
}

/// The remote addresses whose flows are counted per connection: addresses NAT rewrites (Service
/// addresses, the node's own addresses that SNAT uses). The kernel asks the `TRANSLATED` trie,
/// once per entry written to a map rather than per packet.
pub trait Translated {
    fn contains(&self, key: &FlowKey) -> bool;
}

/// The key a packet is stored under: per connection only when the remote is translated.
#[inline(always)]
pub fn storage_key<T: Translated>(translated: &T, key: &FlowKey) -> FlowKey {
    if key.is_connection() && !translated.contains(key) {
        key.per_remote()
    } else {
        *key
    }
}

/// How many new flow entries each owner may still create in the buffer being written.
pub trait FlowQuota {
    /// Whether `cgroup_id` may create another flow entry.
    fn allows(&self, cgroup_id: u64) -> bool;
    /// Records that `cgroup_id` created one (and that the buffer holds one more entry).
    fn charge(&self, cgroup_id: u64);
}

/// The last resort: a slot per direction that always exists.
pub trait LostCounter {
    fn add(&self, direction: u8, bytes: u64, packets: u64);
}

/// Where the bytes of one packet went.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Landed {
    /// Held in this CPU's write-combining slot.
    Cache,
    Flow,
    Overflow,
    Lost,
}

#[inline(always)]
fn add_or_insert<K, M: CounterMap<K>>(map: &M, key: &K, bytes: u64, packets: u64) -> bool {
    if map.add_existing(key, bytes, packets) {
        return true;
    }
    match map.insert_new(key, &Counter { bytes, packets }) {
        Ok(()) => true,
        Err(EEXIST) => map.add_existing(key, bytes, packets),
        Err(_) => false,
    }
}

/// Where a packet's bytes can go, in order: its flow, its identity's overflow entry, `LOST`;
/// which remotes are kept per connection; and the owners' quota of new flows.
pub struct Stores<'a, F, O, L, T, Q> {
    pub flows: &'a F,
    pub overflow: &'a O,
    pub lost: &'a L,
    pub translated: &'a T,
    pub quota: &'a Q,
}

/// Adds to the flow's entry, creating it if the owner's quota allows.
#[inline(always)]
fn add_to_flow<F: CounterMap<FlowKey>, Q: FlowQuota>(
    flows: &F,
    quota: &Q,
    key: &FlowKey,
    bytes: u64,
    packets: u64,
) -> bool {
    if flows.add_existing(key, bytes, packets) {
        return true;
    }
    if !quota.allows(key.cgroup_id) {
        return false;
    }
    match flows.insert_new(key, &Counter { bytes, packets }) {
        Ok(()) => {
            quota.charge(key.cgroup_id);
            true
        }
        Err(EEXIST) => flows.add_existing(key, bytes, packets),
        Err(_) => false,
    }
}

#[inline(always)]
pub fn account<F, O, L, T, Q>(
    stores: &Stores<'_, F, O, L, T, Q>,
    key: &FlowKey,
    bytes: u64,
    packets: u64,
) -> Landed
where
    F: CounterMap<FlowKey>,
    O: CounterMap<OverflowKey>,
    L: LostCounter,
    T: Translated,
    Q: FlowQuota,
{
    let Stores {
        flows,
        overflow,
        lost,
        translated,
        quota,
    } = *stores;
    let key = &storage_key(translated, key);
    if add_to_flow(flows, quota, key, bytes, packets) {
        return Landed::Flow;
    }
    if add_or_insert(
        overflow,
        &OverflowKey::new(key.cgroup_id, key.direction),
        bytes,
        packets,
    ) {
        return Landed::Overflow;
    }
    lost.add(key.direction, bytes, packets);
    Landed::Lost
}

/// Counts through this CPU's write-combining slot: same key as the slot → add to it; otherwise
/// flush the slot into the maps and take its place. A run nested inside another on the same CPU
/// (slot busy) or without a slot goes straight to the maps. The slot compares whole connection
/// keys; whether a key is kept per connection is decided only when it is written to a map.
#[inline(always)]
pub fn account_via_cache<F, O, L, T, Q>(
    slot: Option<&mut CacheEntry>,
    stores: &Stores<'_, F, O, L, T, Q>,
    key: &FlowKey,
    bytes: u64,
    packets: u64,
) -> Landed
where
    F: CounterMap<FlowKey>,
    O: CounterMap<OverflowKey>,
    L: LostCounter,
    T: Translated,
    Q: FlowQuota,
{
    let Some(slot) = slot else {
        return account(stores, key, bytes, packets);
    };
    // SAFETY (both volatile accesses): `slot` is a valid, exclusive reference. Volatile keeps the
    // flag's store before and after the slot's updates in program order, which is what a nested
    // run on this CPU observes.
    if unsafe { core::ptr::read_volatile(&slot.busy) } != 0 {
        return account(stores, key, bytes, packets);
    }
    unsafe { core::ptr::write_volatile(&mut slot.busy, 1) };
    if slot.counter.packets != 0 && slot.key == *key {
        slot.counter.add(bytes, packets);
    } else {
        if slot.counter.packets != 0 {
            let old = slot.counter;
            account(stores, &slot.key, old.bytes, old.packets);
        }
        slot.key = *key;
        slot.counter = Counter { bytes, packets };
    }
    unsafe { core::ptr::write_volatile(&mut slot.busy, 0) };
    Landed::Cache
}

#[cfg(test)]
#[path = "account_tests.rs"]
mod tests;
