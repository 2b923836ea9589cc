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

pub mod metrics;
mod schedule;

pub use crate::kernel::{sum_per_cpu, CountingBuffers, Undeleted};
pub use metrics::DrainMetrics;
pub use schedule::wait_for_drain;

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
mod tests;
