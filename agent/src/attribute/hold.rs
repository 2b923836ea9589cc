//! Bytes that wait for an answer — their pod's names, the topology, conntrack's word on their
//! connection — kept with the age of their oldest byte, bounded: when the hold is full, new
//! bytes go on with what is known instead of waiting (and are counted as such by the caller).

use std::{
    collections::HashMap,
    hash::Hash,
    net::IpAddr,
    time::{Duration, Instant},
};

use agent_common::Counter;

use super::Identity;
use crate::vocab::Direction;

/// Most entries held at once by one hold.
pub const HOLD_CAPACITY: usize = 65_536;

/// Bytes held under one key, and since when.
#[derive(Clone, Copy, Debug)]
pub struct Held {
    pub counter: Counter,
    pub since: Instant,
}

#[derive(Debug)]
pub struct Hold<K> {
    entries: HashMap<K, Held>,
    capacity: usize,
}

impl<K: Eq + Hash + Clone> Default for Hold<K> {
    fn default() -> Self {
        Hold::new(HOLD_CAPACITY)
    }
}

impl<K: Eq + Hash + Clone> Hold<K> {
    pub fn new(capacity: usize) -> Hold<K> {
        Hold {
            entries: HashMap::new(),
            capacity,
        }
    }

    /// Adds bytes under `key`; false when a new key does not fit (the bytes are not held).
    pub fn add(&mut self, key: &K, counter: &Counter, since: Instant) -> bool {
        if let Some(h) = self.entries.get_mut(key) {
            h.counter.add(counter.bytes, counter.packets);
            h.since = h.since.min(since);
            return true;
        }
        if self.entries.len() >= self.capacity {
            return false;
        }
        self.entries.insert(
            key.clone(),
            Held {
                counter: *counter,
                since,
            },
        );
        true
    }

    /// Everything held, emptying the hold (what is still not answered is added back).
    pub fn take(&mut self) -> HashMap<K, Held> {
        std::mem::take(&mut self.entries)
    }

    pub fn iter(&self) -> impl Iterator<Item = (&K, &Held)> {
        self.entries.iter()
    }

    pub fn bytes(&self) -> u64 {
        self.entries.values().map(|h| h.counter.bytes).sum()
    }

    pub fn len(&self) -> usize {
        self.entries.len()
    }

    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }
}

/// Seconds since `since`, for a checkpoint (an `Instant` does not outlive the process).
pub fn age_seconds(since: Instant, now: Instant) -> f64 {
    now.saturating_duration_since(since).as_secs_f64()
}

/// The `Instant` a checkpointed age stands for (ages beyond a day are taken as a day).
pub fn since_age(age_seconds: f64, now: Instant) -> Instant {
    now.checked_sub(Duration::from_secs_f64(age_seconds.clamp(0.0, 86_400.0)))
        .unwrap_or(now)
}

/// What attribution waits on: bytes of one identity to one real remote end, one way.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct HeldKey {
    pub identity: Identity,
    /// The real remote end (after NAT); `None` for overflow bytes (no remote address recorded).
    pub remote: Option<IpAddr>,
    /// Whether our side opened the connection (or we cannot tell): only then do internet bytes
    /// pass the NAT gateway.
    pub outbound: bool,
    pub direction: Direction,
}

/// Held bytes as a checkpoint keeps them.
#[derive(Clone, Debug, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct HeldBytes {
    pub identity: Identity,
    pub remote: Option<IpAddr>,
    pub outbound: bool,
    pub direction: Direction,
    pub bytes: u64,
    pub packets: u64,
    pub age_seconds: f64,
}

impl Hold<HeldKey> {
    pub fn snapshot(&self, now: Instant) -> Vec<HeldBytes> {
        self.iter()
            .map(|(k, h)| HeldBytes {
                identity: k.identity.clone(),
                remote: k.remote,
                outbound: k.outbound,
                direction: k.direction,
                bytes: h.counter.bytes,
                packets: h.counter.packets,
                age_seconds: age_seconds(h.since, now),
            })
            .collect()
    }

    pub fn restore(&mut self, held: &[HeldBytes], now: Instant) {
        for h in held {
            let key = HeldKey {
                identity: h.identity.clone(),
                remote: h.remote,
                outbound: h.outbound,
                direction: h.direction,
            };
            let counter = Counter {
                bytes: h.bytes,
                packets: h.packets,
            };
            let _ = self.add(&key, &counter, since_age(h.age_seconds, now));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_full_hold_takes_more_bytes_for_its_keys_only() {
        let mut hold: Hold<u32> = Hold::new(2);
        let c = Counter {
            bytes: 10,
            packets: 1,
        };
        let now = Instant::now();
        let later = now + Duration::from_secs(1);
        assert!(hold.add(&1, &c, later));
        assert!(hold.add(&2, &c, now));
        assert!(!hold.add(&3, &c, now), "full");
        assert!(hold.add(&1, &c, now), "an existing key still takes bytes");
        assert_eq!(hold.bytes(), 30);
        let taken = hold.take();
        assert_eq!(taken[&1].counter.packets, 2);
        assert_eq!(taken[&1].since, now, "the oldest byte's age");
        assert!(hold.is_empty());
    }
}
