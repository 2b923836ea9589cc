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
