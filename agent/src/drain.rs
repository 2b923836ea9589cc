//! Drain: moves what the kernel counted since the last drain into user space, losing nothing —
//! not even across a restart of the agent.
//!
//! The kernel writes to one of two buffers: `CONTROL[0]` holds an epoch that only grows, and the
//! programs write to buffer `epoch & 1`. A drain advances the epoch, waits until every program
//! that could still be writing to the old buffer has returned, and reads the old buffer, which
//! nothing writes any more. It does not delete what it read yet: the caller first adds it to its
//! totals and checkpoints them with the epoch it drained, then `commit` empties the buffer. A
//! crash anywhere in between is told apart on the next start by comparing the checkpoint's epoch
//! with the kernel's (`Drainer::resume`): the idle buffer is either already in the totals (then it
//! is emptied unread) or not (then it is the first thing drained).

use std::collections::HashMap;

use agent_common::{Counter, FlowKey, OverflowKey, DIRECTION_INGRESS};

/// The kernel side of a drain, as the drain logic sees it.
pub trait CountingBuffers {
    type Error: std::error::Error + Send + Sync + 'static;
    /// The epoch the programs write under (`CONTROL[0]`).
    fn epoch(&mut self) -> Result<u32, Self::Error>;
    /// Points the programs at buffer `epoch & 1`.
    fn set_epoch(&mut self, epoch: u32) -> Result<(), Self::Error>;
    /// Returns once no program can still be writing to the buffer that was active before.
    fn wait_for_writers(&mut self) -> Result<(), Self::Error>;
    /// Every entry of flow buffer `index` (per-CPU values summed), left in place. Entries that
    /// cannot be read are skipped (and stay for a later drain).
    fn read_flows(&mut self, index: u32) -> Result<Vec<(FlowKey, Counter)>, Self::Error>;
    fn read_overflow(&mut self, index: u32) -> Result<Vec<(OverflowKey, Counter)>, Self::Error>;
    /// The valid write-combining slots of buffer `index` on every CPU, left in place.
    fn read_cached(&mut self, index: u32) -> Result<Vec<(FlowKey, Counter)>, Self::Error>;
    /// Deletes these entries from buffer `index` and clears its write-combining slots. Returns
    /// the entries that could not be deleted.
    fn clear(
        &mut self,
        index: u32,
        flows: &[FlowKey],
        overflow: &[OverflowKey],
    ) -> Result<Undeleted, Self::Error>;
    /// The `LOST` slots (per direction, summed over CPUs): monotonic, never reset.
    fn lost(&mut self) -> Result<[Counter; 2], Self::Error>;
}

/// Entries a `clear` could not delete.
#[derive(Debug, Default)]
pub struct Undeleted {
    pub flows: Vec<FlowKey>,
    pub overflow: Vec<OverflowKey>,
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
    /// The epoch whose buffer this is: what a checkpoint taken after it records as drained.
    pub epoch: u32,
}

/// What a checkpoint remembers of the drain: enough to resume it without counting a buffer twice.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct DrainState {
    /// The epoch of the last buffer whose contents are in the checkpointed totals.
    pub drained_epoch: u32,
    /// `LOST` as of that drain.
    pub lost_seen: [Counter; 2],
}

/// How `resume` found the kernel's buffers.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Resumed {
    /// The idle buffer was already in the checkpoint: emptied without counting it again.
    IdleAlreadyCounted,
    /// The idle buffer may hold bytes no checkpoint has: it is the first thing drained.
    IdleToCount,
}

/// Keys read from the idle buffer, to delete once the caller has accounted for them.
#[derive(Debug)]
struct Pending {
    index: u32,
    /// As read, before anything was subtracted: what the entries hold.
    flows: Vec<(FlowKey, Counter)>,
    overflow: Vec<(OverflowKey, Counter)>,
}

pub struct Drainer<B> {
    buffers: B,
    epoch: u32,
    /// Whether the idle buffer is empty: only then may the next drain flip to it.
    idle_clean: bool,
    lost_seen: [Counter; 2],
    pending: Option<Pending>,
    /// Counted entries whose delete failed: subtracted when their buffer is read again.
    counted: [HashMap<FlowKey, Counter>; 2],
    counted_overflow: [HashMap<OverflowKey, Counter>; 2],
    last_drained: Option<u32>,
}

impl<B: CountingBuffers> Drainer<B> {
    /// Takes over the kernel's buffers as they are. `state` is what the last checkpoint that
    /// belongs to these very maps says; `None` when there is none (fresh maps, or totals that
    /// start again from zero).
    pub fn resume(mut buffers: B, state: Option<DrainState>) -> Result<(Self, Resumed), B::Error> {
        let epoch = buffers.epoch()?;
        let mut drainer = Drainer {
            buffers,
            epoch,
            idle_clean: false,
            lost_seen: state.map(|s| s.lost_seen).unwrap_or_default(),
            pending: None,
            counted: Default::default(),
            counted_overflow: Default::default(),
            last_drained: state.map(|s| s.drained_epoch),
        };
        let idle_epoch = epoch.wrapping_sub(1);
        if state.is_some_and(|s| s.drained_epoch == idle_epoch) {
            // Checkpointed, then (perhaps only partly) emptied: finish emptying it.
            let index = idle_epoch & 1;
            let flows = drainer.buffers.read_flows(index)?;
            let overflow = drainer.buffers.read_overflow(index)?;
            drainer.pending = Some(Pending {
                index,
                flows,
                overflow,
            });
            drainer.commit()?;
            return Ok((drainer, Resumed::IdleAlreadyCounted));
        }
        Ok((drainer, Resumed::IdleToCount))
    }

    pub fn buffers(&self) -> &B {
        &self.buffers
    }

    #[cfg(test)]
    pub fn buffers_mut(&mut self) -> &mut B {
        &mut self.buffers
    }

    /// The drain state to checkpoint with totals that include every batch returned so far.
    pub fn state(&self) -> Option<DrainState> {
        self.last_drained.map(|drained_epoch| DrainState {
            drained_epoch,
            lost_seen: self.lost_seen,
        })
    }

    /// Reads the idle buffer (flipping first if it is empty). The entries stay in the kernel
    /// until `commit`.
    pub fn drain(&mut self) -> Result<Batch, B::Error> {
        if self.pending.is_some() {
            // The last batch was accounted but its entries are still there: empty them first.
            self.commit()?;
        }
        if self.idle_clean {
            let next = self.epoch.wrapping_add(1);
            self.buffers.set_epoch(next)?;
            self.epoch = next;
            self.idle_clean = false;
            self.buffers.wait_for_writers()?;
        }
        let idle_epoch = self.epoch.wrapping_sub(1);
        let index = idle_epoch & 1;
        let mut flows = self.buffers.read_flows(index)?;
        let mut overflow = self.buffers.read_overflow(index)?;
        let cached = self.buffers.read_cached(index)?;
        let lost_now = self.buffers.lost()?;
        let pending = Pending {
            index,
            flows: flows.clone(),
            overflow: overflow.clone(),
        };
        subtract_counted(&mut flows, &mut self.counted[index as usize]);
        subtract_counted(&mut overflow, &mut self.counted_overflow[index as usize]);
        flows.extend(cached);
        let mut lost = [Counter::default(); 2];
        for d in 0..=DIRECTION_INGRESS as usize {
            lost[d] = Counter {
                bytes: lost_now[d].bytes.wrapping_sub(self.lost_seen[d].bytes),
                packets: lost_now[d].packets.wrapping_sub(self.lost_seen[d].packets),
            };
        }
        self.lost_seen = lost_now;
        self.pending = Some(pending);
        self.last_drained = Some(idle_epoch);
        Ok(Batch {
            flows,
            overflow,
            lost,
            epoch: idle_epoch,
        })
    }

    /// Empties the buffer of the last batch: call once its bytes are in the totals (and, with a
    /// checkpoint, once the checkpoint is written). Entries that cannot be deleted are
    /// remembered and not counted again; returns how many there were.
    pub fn commit(&mut self) -> Result<usize, B::Error> {
        let Some(p) = self.pending.take() else {
            return Ok(0);
        };
        let flow_keys: Vec<FlowKey> = p.flows.iter().map(|(k, _)| *k).collect();
        let overflow_keys: Vec<OverflowKey> = p.overflow.iter().map(|(k, _)| *k).collect();
        let undeleted = match self.buffers.clear(p.index, &flow_keys, &overflow_keys) {
            Ok(u) => u,
            Err(e) => {
                self.pending = Some(p);
                return Err(e);
            }
        };
        // What could not be deleted was counted: remember how much, so a later read of the same
        // entry only counts what was added since.
        let failed = undeleted.flows.len() + undeleted.overflow.len();
        let index = p.index as usize;
        for key in undeleted.flows {
            if let Some((_, c)) = p.flows.iter().find(|(k, _)| *k == key) {
                self.counted[index].insert(key, *c);
            }
        }
        for key in undeleted.overflow {
            if let Some((_, c)) = p.overflow.iter().find(|(k, _)| *k == key) {
                self.counted_overflow[index].insert(key, *c);
            }
        }
        self.idle_clean = true;
        Ok(failed)
    }
}

/// Takes away from each entry what an earlier drain already counted of it.
fn subtract_counted<K: Eq + std::hash::Hash>(
    entries: &mut [(K, Counter)],
    counted: &mut HashMap<K, Counter>,
) {
    if counted.is_empty() {
        return;
    }
    for (key, c) in entries.iter_mut() {
        if let Some(seen) = counted.remove(key) {
            c.bytes = c.bytes.saturating_sub(seen.bytes);
            c.packets = c.packets.saturating_sub(seen.packets);
        }
    }
    // Entries gone meanwhile were deleted after all: nothing left to subtract.
    counted.clear();
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
    /// It outlives a `Drainer`, as pinned maps outlive the agent.
    #[derive(Default)]
    struct Mock {
        epoch: u32,
        writer_sees: u32,
        flows: [BTreeMap<FlowKey, Counter>; 2],
        cached: [Option<(FlowKey, Counter)>; 2],
        overflow: [BTreeMap<OverflowKey, Counter>; 2],
        lost: [Counter; 2],
        written: u64,
        fail_read_of: Option<FlowKey>,
        fail_delete_of: Option<FlowKey>,
        /// Simulated crash inside `clear`: delete this many entries, then fail.
        crash_after_deletes: Option<usize>,
    }

    fn key(remote: u8) -> FlowKey {
        let addr = [u32::from_ne_bytes([192, 0, 2, remote]), 0, 0, 0];
        FlowKey::new(7, addr, FAMILY_IPV4, DIRECTION_EGRESS)
    }

    impl Mock {
        fn packet(&mut self, remote: u8, bytes: u64) {
            self.flows[(self.writer_sees & 1) as usize]
                .entry(key(remote))
                .or_default()
                .add(bytes, 1);
            self.written += bytes;
        }
    }

    impl CountingBuffers for Mock {
        type Error = MockError;
        fn epoch(&mut self) -> Result<u32, MockError> {
            Ok(self.epoch)
        }
        fn set_epoch(&mut self, epoch: u32) -> Result<(), MockError> {
            self.epoch = epoch;
            // A program already running still holds the old index: write once more to it.
            self.packet(99, 1);
            Ok(())
        }
        fn wait_for_writers(&mut self) -> Result<(), MockError> {
            self.writer_sees = self.epoch;
            Ok(())
        }
        fn read_flows(&mut self, index: u32) -> Result<Vec<(FlowKey, Counter)>, MockError> {
            assert_ne!(index, self.writer_sees & 1, "read the buffer being written");
            Ok(self.flows[index as usize]
                .iter()
                .filter(|(k, _)| Some(**k) != self.fail_read_of)
                .map(|(k, v)| (*k, *v))
                .collect())
        }
        fn read_overflow(&mut self, index: u32) -> Result<Vec<(OverflowKey, Counter)>, MockError> {
            Ok(self.overflow[index as usize]
                .iter()
                .map(|(k, v)| (*k, *v))
                .collect())
        }
        fn read_cached(&mut self, index: u32) -> Result<Vec<(FlowKey, Counter)>, MockError> {
            assert_ne!(index, self.writer_sees & 1, "read the slot being written");
            Ok(self.cached[index as usize].into_iter().collect())
        }
        fn clear(
            &mut self,
            index: u32,
            flows: &[FlowKey],
            overflow: &[OverflowKey],
        ) -> Result<Undeleted, MockError> {
            let mut undeleted = Undeleted::default();
            for (n, k) in flows.iter().enumerate() {
                if self.crash_after_deletes == Some(n) {
                    return Err(MockError);
                }
                if Some(*k) == self.fail_delete_of {
                    undeleted.flows.push(*k);
                    continue;
                }
                self.flows[index as usize].remove(k);
            }
            for k in overflow {
                self.overflow[index as usize].remove(k);
            }
            self.cached[index as usize] = None;
            Ok(undeleted)
        }
        fn lost(&mut self) -> Result<[Counter; 2], MockError> {
            Ok(self.lost)
        }
    }

    fn total(batch: &Batch) -> u64 {
        batch.flows.iter().map(|(_, c)| c.bytes).sum()
    }

    fn fresh(mock: Mock) -> Drainer<Mock> {
        Drainer::resume(mock, None).unwrap().0
    }

    /// One drain as the pipeline does it: count, (checkpoint,) commit.
    fn drain_and_commit(d: &mut Drainer<Mock>) -> u64 {
        let n = total(&d.drain().unwrap());
        d.commit().unwrap();
        n
    }

    #[test]
    fn every_byte_is_drained_exactly_once() {
        let mut d = fresh(Mock::default());
        let mut drained = 0;
        for round in 0..5u8 {
            for i in 0..10 {
                d.buffers.packet(i, 100 + round as u64);
            }
            drained += drain_and_commit(&mut d);
            drained += drain_and_commit(&mut d);
            // Including the write a still-running program made to the old buffer after the flip.
            assert_eq!(drained, d.buffers.written);
        }
    }

    #[test]
    fn cached_slots_of_the_idle_buffer_are_drained_with_it() {
        let mut mock = Mock::default();
        mock.cached[1] = Some((
            key(3),
            Counter {
                bytes: 900,
                packets: 3,
            },
        ));
        let mut d = fresh(mock);
        // Fresh maps: the idle buffer (1) is read first, without a flip.
        assert_eq!(drain_and_commit(&mut d), 900);
        assert!(d.buffers.cached[1].is_none());
        d.buffers.packet(5, 100);
        assert_eq!(drain_and_commit(&mut d), 100 + 1);
    }

    #[test]
    fn an_entry_that_cannot_be_read_is_kept_for_a_later_drain() {
        let mut d = fresh(Mock::default());
        d.buffers.packet(1, 500);
        d.buffers.packet(2, 70);
        d.buffers.fail_read_of = Some(key(2));
        let mut sum = drain_and_commit(&mut d) + drain_and_commit(&mut d);
        d.buffers.fail_read_of = None;
        for _ in 0..3 {
            sum += drain_and_commit(&mut d);
        }
        assert_eq!(sum, d.buffers.written);
    }

    #[test]
    fn an_entry_that_cannot_be_deleted_is_not_counted_twice() {
        let mut d = fresh(Mock::default());
        drain_and_commit(&mut d);
        d.buffers.packet(1, 500);
        d.buffers.fail_delete_of = Some(key(1));
        let mut sum = drain_and_commit(&mut d);
        d.buffers.fail_delete_of = None;
        for _ in 0..4 {
            d.buffers.packet(1, 7);
            sum += drain_and_commit(&mut d);
        }
        sum += drain_and_commit(&mut d);
        assert_eq!(sum, d.buffers.written);
    }

    #[test]
    fn lost_is_reported_as_increase_between_drains() {
        let mut d = fresh(Mock::default());
        d.buffers.lost[1] = Counter {
            bytes: 40,
            packets: 2,
        };
        assert_eq!(d.drain().unwrap().lost[1].bytes, 40);
        d.commit().unwrap();
        d.buffers.lost[1].add(2, 1);
        let b = d.drain().unwrap();
        assert_eq!((b.lost[1].bytes, b.lost[1].packets), (2, 1));
        d.commit().unwrap();
        assert_eq!(d.drain().unwrap().lost[1].bytes, 0);
    }

    /// Where a SIGKILL can land in one drain.
    #[derive(Clone, Copy, Debug)]
    enum Crash {
        AfterRead,
        AfterCheckpoint,
        InsideCommit,
        BetweenDrains,
    }

    /// The agent dies at every point of a drain, the maps live on, the next agent resumes from
    /// its checkpoint: the totals equal what was written, byte for byte.
    #[test]
    fn a_crash_anywhere_in_a_drain_neither_loses_nor_doubles_a_byte() {
        for crash in [
            Crash::AfterRead,
            Crash::AfterCheckpoint,
            Crash::InsideCommit,
            Crash::BetweenDrains,
        ] {
            for crash_round in 0..4u32 {
                let mut d = fresh(Mock::default());
                // Fresh maps: the first drain reads the (empty) idle buffer without a flip.
                let mut totals = drain_and_commit(&mut d);
                let mut checkpoint: (u64, Option<DrainState>) = (0, None);
                for round in 0..8u32 {
                    for i in 0..5 {
                        d.buffers.packet(i, 10 + round as u64);
                    }
                    d.buffers.lost[0].add(round as u64, 1);
                    let crashing = round == crash_round;
                    let batch = d.drain().unwrap();
                    totals += total(&batch) + batch.lost[0].bytes;
                    let mut died = crashing && matches!(crash, Crash::AfterRead);
                    if !died {
                        checkpoint = (totals, d.state());
                        died = crashing && matches!(crash, Crash::AfterCheckpoint);
                    }
                    if !died {
                        if crashing && matches!(crash, Crash::InsideCommit) {
                            d.buffers.crash_after_deletes = Some(2);
                            assert!(d.commit().is_err());
                            d.buffers.crash_after_deletes = None;
                            died = true;
                        } else {
                            d.commit().unwrap();
                            died = crashing && matches!(crash, Crash::BetweenDrains);
                        }
                    }
                    if died {
                        // The process is gone; its maps are not. Traffic goes on meanwhile.
                        let mut mock = std::mem::take(&mut d.buffers);
                        mock.packet(42, 1000);
                        totals = checkpoint.0;
                        let (resumed, _) = Drainer::resume(mock, checkpoint.1).unwrap();
                        d = resumed;
                    }
                }
                for _ in 0..2 {
                    let batch = d.drain().unwrap();
                    totals += total(&batch) + batch.lost[0].bytes;
                    d.commit().unwrap();
                }
                let lost_written: u64 = (0..8).sum();
                assert_eq!(
                    totals,
                    d.buffers.written + lost_written,
                    "{crash:?} in round {crash_round}"
                );
            }
        }
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
