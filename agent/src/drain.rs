//! Drain: moves what the kernel counted since the last drain into user space, losing nothing.
//!
//! The kernel writes to one of two buffers (`CONTROL[0]` says which). A drain flips the index,
//! waits until every program that could still be writing to the old buffer has returned, then
//! reads and empties the old buffer, which nothing writes any more. A read-then-delete on a live
//! map would lose whatever a packet added between the two calls; this cannot.

use agent_common::{Counter, FlowKey, OverflowKey, DIRECTION_INGRESS};

/// The kernel side of a drain, as the drain logic sees it.
pub trait CountingBuffers {
    type Error: std::error::Error + Send + Sync + 'static;
    /// Points the programs at buffer `index`.
    fn set_active(&mut self, index: u32) -> Result<(), Self::Error>;
    /// Returns once no program can still be writing to the buffer that was active before.
    fn wait_for_writers(&mut self) -> Result<(), Self::Error>;
    /// Reads every entry of flow buffer `index` (per-CPU values summed) and deletes it. Entries
    /// that could not be read are left in place, so a later drain picks them up.
    fn take_flows(&mut self, index: u32) -> Result<Vec<(FlowKey, Counter)>, Self::Error>;
    fn take_overflow(&mut self, index: u32) -> Result<Vec<(OverflowKey, Counter)>, Self::Error>;
    /// Reads and clears buffer `index`'s write-combining slots on every CPU; returns the valid ones.
    fn take_cached(&mut self, index: u32) -> Result<Vec<(FlowKey, Counter)>, Self::Error>;
    /// The `LOST` slots (per direction, summed over CPUs): monotonic, never reset.
    fn lost(&mut self) -> Result<[Counter; 2], Self::Error>;
}

/// Sums one entry's per-CPU values.
pub fn sum_per_cpu(values: &[Counter]) -> Counter {
    values.iter().fold(Counter::default(), |mut acc, v| {
        acc.add(v.bytes, v.packets);
        acc
    })
}

/// What one drain brought out.
#[derive(Debug, Default)]
pub struct Batch {
    /// Flow entries and write-combining slots; a key may appear more than once.
    pub flows: Vec<(FlowKey, Counter)>,
    pub overflow: Vec<(OverflowKey, Counter)>,
    /// Increase of the `LOST` slots since the previous drain, per direction.
    pub lost: [Counter; 2],
}

pub struct Drainer<B> {
    buffers: B,
    active: u32,
    lost_seen: [Counter; 2],
}

impl<B: CountingBuffers> Drainer<B> {
    /// `active` is the buffer the programs write to now (0 for freshly loaded maps).
    pub fn new(buffers: B, active: u32) -> Drainer<B> {
        Drainer {
            buffers,
            active,
            lost_seen: [Counter::default(); 2],
        }
    }

    pub fn buffers(&self) -> &B {
        &self.buffers
    }

    #[cfg(test)]
    pub fn buffers_mut(&mut self) -> &mut B {
        &mut self.buffers
    }

    pub fn drain(&mut self) -> Result<Batch, B::Error> {
        let idle = self.active;
        let next = 1 - idle;
        self.buffers.set_active(next)?;
        self.active = next;
        self.buffers.wait_for_writers()?;
        let mut flows = self.buffers.take_flows(idle)?;
        flows.extend(self.buffers.take_cached(idle)?);
        let overflow = self.buffers.take_overflow(idle)?;
        let lost_now = self.buffers.lost()?;
        let mut lost = [Counter::default(); 2];
        for d in 0..=DIRECTION_INGRESS as usize {
            lost[d] = Counter {
                bytes: lost_now[d].bytes.wrapping_sub(self.lost_seen[d].bytes),
                packets: lost_now[d].packets.wrapping_sub(self.lost_seen[d].packets),
            };
        }
        self.lost_seen = lost_now;
        Ok(Batch {
            flows,
            overflow,
            lost,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use agent_common::{DIRECTION_EGRESS, FAMILY_IPV4};
    use std::collections::BTreeMap;

    #[derive(Debug, thiserror::Error)]
    #[error("mock")]
    struct MockError;

    /// Two buffers and a writer that, like a program, writes to whatever buffer is active — and
    /// keeps writing to the old one until `wait_for_writers` (an in-flight program finishing).
    #[derive(Default)]
    struct Mock {
        active: u32,
        writer_sees: u32,
        flows: [BTreeMap<FlowKey, Counter>; 2],
        cached: [Option<(FlowKey, Counter)>; 2],
        overflow: [BTreeMap<OverflowKey, Counter>; 2],
        lost: [Counter; 2],
        written: u64,
        fail_read_of: Option<FlowKey>,
    }

    impl Mock {
        fn packet(&mut self, remote: u8, bytes: u64) {
            let addr = [u32::from_ne_bytes([192, 0, 2, remote]), 0, 0, 0];
            let key = FlowKey::new(7, addr, FAMILY_IPV4, DIRECTION_EGRESS);
            self.flows[self.writer_sees as usize]
                .entry(key)
                .or_default()
                .add(bytes, 1);
            self.written += bytes;
        }
    }

    impl CountingBuffers for Mock {
        type Error = MockError;
        fn set_active(&mut self, index: u32) -> Result<(), MockError> {
            self.active = index;
            // A program already running still holds the old index: write once more to it.
            self.packet(99, 1);
            Ok(())
        }
        fn wait_for_writers(&mut self) -> Result<(), MockError> {
            self.writer_sees = self.active;
            Ok(())
        }
        fn take_flows(&mut self, index: u32) -> Result<Vec<(FlowKey, Counter)>, MockError> {
            assert_ne!(index, self.writer_sees, "drained the buffer being written");
            let map = &mut self.flows[index as usize];
            let keep = self.fail_read_of.and_then(|k| map.remove_entry(&k));
            let out = std::mem::take(map).into_iter().collect();
            if let Some((k, v)) = keep {
                map.insert(k, v);
            }
            Ok(out)
        }
        fn take_overflow(&mut self, index: u32) -> Result<Vec<(OverflowKey, Counter)>, MockError> {
            Ok(std::mem::take(&mut self.overflow[index as usize])
                .into_iter()
                .collect())
        }
        fn take_cached(&mut self, index: u32) -> Result<Vec<(FlowKey, Counter)>, MockError> {
            assert_ne!(index, self.writer_sees, "drained the slot being written");
            Ok(self.cached[index as usize].take().into_iter().collect())
        }
        fn lost(&mut self) -> Result<[Counter; 2], MockError> {
            Ok(self.lost)
        }
    }

    fn total(batch: &Batch) -> u64 {
        batch.flows.iter().map(|(_, c)| c.bytes).sum()
    }

    #[test]
    fn every_byte_is_drained_exactly_once() {
        let mut d = Drainer::new(Mock::default(), 0);
        let mut drained = 0;
        for round in 0..5u8 {
            for i in 0..10 {
                d.buffers.packet(i, 100 + round as u64);
            }
            drained += total(&d.drain().unwrap());
            // Including the write a still-running program made to the old buffer after the flip.
            assert_eq!(drained, d.buffers.written);
        }
    }

    #[test]
    fn cached_slots_of_the_idle_buffer_are_drained_with_it() {
        let mut d = Drainer::new(Mock::default(), 0);
        let key = FlowKey::new(3, [1, 0, 0, 0], FAMILY_IPV4, DIRECTION_EGRESS);
        d.buffers.cached[0] = Some((
            key,
            Counter {
                bytes: 900,
                packets: 3,
            },
        ));
        d.buffers.packet(5, 100);
        let batch = d.drain().unwrap();
        assert_eq!(total(&batch), 900 + 100 + 1);
        assert!(d.buffers.cached[0].is_none());
    }

    #[test]
    fn an_entry_that_cannot_be_read_is_kept_for_a_later_drain() {
        let mut d = Drainer::new(Mock::default(), 0);
        d.buffers.packet(1, 500);
        d.buffers.packet(2, 70);
        let addr = [u32::from_ne_bytes([192, 0, 2, 2]), 0, 0, 0];
        d.buffers.fail_read_of = Some(FlowKey::new(7, addr, FAMILY_IPV4, DIRECTION_EGRESS));
        let first = total(&d.drain().unwrap());
        d.buffers.fail_read_of = None;
        let second = total(&d.drain().unwrap()); // other buffer
        let third = total(&d.drain().unwrap()); // back to the one holding the kept entry
        assert_eq!(first + second + third, d.buffers.written);
        assert!(third >= 70);
    }

    #[test]
    fn lost_is_reported_as_increase_between_drains() {
        let mut d = Drainer::new(Mock::default(), 0);
        d.buffers.lost[1] = Counter {
            bytes: 40,
            packets: 2,
        };
        assert_eq!(d.drain().unwrap().lost[1].bytes, 40);
        d.buffers.lost[1].add(2, 1);
        let b = d.drain().unwrap();
        assert_eq!((b.lost[1].bytes, b.lost[1].packets), (2, 1));
        assert_eq!(d.drain().unwrap().lost[1].bytes, 0);
    }

    #[test]
    fn per_cpu_values_are_summed() {
        let v = [
            Counter {
                bytes: 1,
                packets: 1,
            },
            Counter {
                bytes: 10,
                packets: 2,
            },
            Counter::default(),
        ];
        assert_eq!(
            sum_per_cpu(&v),
            Counter {
                bytes: 11,
                packets: 3
            }
        );
    }
}
