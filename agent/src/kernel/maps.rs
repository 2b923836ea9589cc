//! The counting maps of a loaded object: both buffers' flow and overflow hashes, the
//! write-combining slots, `LOST`, the owners' quotas and the fill counts, read and emptied for
//! the drain.

use std::time::Duration;

use agent_common::{
    cache_index, CacheEntry, Counter, FlowKey, OverflowKey, CONTROL_ACTIVE, DIRECTION_EGRESS,
    DIRECTION_INGRESS, MAP_CACHE, MAP_CONTROL, MAP_FILL, MAP_LOST,
};
use std::os::fd::AsFd as _;

use aya::maps::{
    Array, HashMap, IterableMap as _, MapData, MapError, PerCpuArray, PerCpuHashMap, PerCpuValues,
};

use crate::kernel::{batch, sum_per_cpu, CountingBuffers, KernelError, Undeleted};

pub struct KernelMaps {
    pub(super) control: Array<MapData, u32>,
    pub(super) flows: [PerCpuHashMap<MapData, FlowKey, Counter>; 2],
    pub(super) overflow: [PerCpuHashMap<MapData, OverflowKey, Counter>; 2],
    pub(super) lost: PerCpuArray<MapData, Counter>,
    pub(super) cache: PerCpuArray<MapData, CacheEntry>,
    pub(super) quota: [HashMap<MapData, u64, u64>; 2],
    pub(super) fill: PerCpuArray<MapData, u64>,
    pub flow_capacity: u32,
    pub overflow_capacity: u32,
    /// Entries found in the last drain (≈ peak occupancy of one interval).
    pub last_flow_entries: usize,
    pub last_overflow_entries: usize,
    /// Entries that could not be read or deleted in the last drain (left for the next one).
    pub last_entry_errors: usize,
}

/// Reads every entry of a per-CPU hash, leaving it in place: in batches where the kernel has
/// them, else entry by entry.
fn read_all<K: aya::Pod + Eq + std::hash::Hash>(
    map: &PerCpuHashMap<MapData, K, Counter>,
    errors: &mut usize,
) -> Vec<(K, Counter)> {
    if let Ok(cpus) = aya::util::nr_cpus() {
        match batch::lookup_all(map.map().fd().as_fd(), cpus) {
            Ok(entries) => return entries,
            Err(e) if batch::unsupported(&e) => {}
            // Nothing is deleted by a failed read: the entry-by-entry read below takes them.
            Err(_) => *errors += 1,
        }
    }
    read_one_by_one(map, errors)
}

/// Keys are collected first: the kernel's key iteration restarts from the beginning when the
/// key it was given is gone.
fn read_one_by_one<K: aya::Pod + Eq + std::hash::Hash>(
    map: &PerCpuHashMap<MapData, K, Counter>,
    errors: &mut usize,
) -> Vec<(K, Counter)> {
    let keys: Vec<K> = map.keys().filter_map(Result::ok).collect();
    let mut out = Vec::with_capacity(keys.len());
    for key in keys {
        match map.get(&key, 0) {
            Ok(values) => out.push((key, sum_per_cpu(&values))),
            Err(_) => *errors += 1,
        }
    }
    out
}

/// Deletes `keys`; returns those that could not be.
fn delete_all<K: aya::Pod>(
    map: &mut PerCpuHashMap<MapData, K, Counter>,
    keys: &[K],
    errors: &mut usize,
) -> Vec<K> {
    match batch::delete_all(map.map().fd().as_fd(), keys) {
        Ok(failed) => {
            *errors += failed.len();
            return failed;
        }
        Err(e) if batch::unsupported(&e) => {}
        Err(_) => *errors += 1,
    }
    let mut failed = Vec::new();
    for key in keys {
        match map.remove(key) {
            Ok(()) => {}
            // Already gone: nothing to do.
            Err(MapError::KeyNotFound) => {}
            Err(_) => {
                *errors += 1;
                failed.push(*key);
            }
        }
    }
    failed
}

impl CountingBuffers for KernelMaps {
    type Error = KernelError;

    fn epoch(&mut self) -> Result<u32, KernelError> {
        self.control
            .get(&CONTROL_ACTIVE, 0)
            .map_err(|source| KernelError::Map {
                name: MAP_CONTROL,
                source,
            })
    }

    fn set_epoch(&mut self, epoch: u32) -> Result<(), KernelError> {
        self.control
            .set(CONTROL_ACTIVE, epoch, 0)
            .map_err(|source| KernelError::Map {
                name: MAP_CONTROL,
                source,
            })
    }

    fn wait_for_writers(&mut self) -> Result<(), KernelError> {
        wait_for_rcu_grace_period()
    }

    fn read_flows(&mut self, index: u32) -> Result<Vec<(FlowKey, Counter)>, KernelError> {
        self.last_entry_errors = 0;
        let out = read_all(&self.flows[index as usize], &mut self.last_entry_errors);
        self.last_flow_entries = out.len();
        Ok(out)
    }

    fn read_overflow(&mut self, index: u32) -> Result<Vec<(OverflowKey, Counter)>, KernelError> {
        let out = read_all(&self.overflow[index as usize], &mut self.last_entry_errors);
        self.last_overflow_entries = out.len();
        Ok(out)
    }

    fn read_cached(&mut self, index: u32) -> Result<Vec<(FlowKey, Counter)>, KernelError> {
        let mut out = Vec::new();
        for direction in [DIRECTION_EGRESS, DIRECTION_INGRESS] {
            let slot = cache_index(index, direction);
            let per_cpu = self
                .cache
                .get(&slot, 0)
                .map_err(|source| KernelError::Map {
                    name: MAP_CACHE,
                    source,
                })?;
            out.extend(
                per_cpu
                    .iter()
                    .filter(|e| e.counter.packets > 0)
                    .map(|e| (e.key, e.counter)),
            );
        }
        Ok(out)
    }

    fn clear(
        &mut self,
        index: u32,
        flows: &[FlowKey],
        overflow: &[OverflowKey],
    ) -> Result<Undeleted, KernelError> {
        let err = |source| KernelError::Map {
            name: MAP_CACHE,
            source,
        };
        // Nothing writes the idle buffer's slots now; clear them for its next turn.
        let cpus = aya::util::nr_cpus().map_err(|(_, e)| err(MapError::from(e)))?;
        for direction in [DIRECTION_EGRESS, DIRECTION_INGRESS] {
            let zeros = PerCpuValues::try_from(vec![CacheEntry::default(); cpus])
                .map_err(|e| err(MapError::from(e)))?;
            self.cache
                .set(cache_index(index, direction), zeros, 0)
                .map_err(err)?;
        }
        let fill = PerCpuValues::try_from(vec![0u64; cpus]).map_err(|e| err(MapError::from(e)))?;
        self.fill
            .set(index, fill, 0)
            .map_err(|source| KernelError::Map {
                name: MAP_FILL,
                source,
            })?;
        // The owners' quotas start again with the buffer (a key that cannot be removed keeps
        // its owner's count one more interval: never more bytes lost, only fewer flows).
        let owners: Vec<u64> = self.quota[index as usize]
            .keys()
            .filter_map(Result::ok)
            .collect();
        for owner in owners {
            let _ = self.quota[index as usize].remove(&owner);
        }
        let flows = delete_all(
            &mut self.flows[index as usize],
            flows,
            &mut self.last_entry_errors,
        );
        let overflow = delete_all(
            &mut self.overflow[index as usize],
            overflow,
            &mut self.last_entry_errors,
        );
        Ok(Undeleted { flows, overflow })
    }

    fn lost(&mut self) -> Result<[Counter; 2], KernelError> {
        let mut out = [Counter::default(); 2];
        for (direction, slot) in out.iter_mut().enumerate() {
            let values =
                self.lost
                    .get(&(direction as u32), 0)
                    .map_err(|source| KernelError::Map {
                        name: MAP_LOST,
                        source,
                    })?;
            *slot = sum_per_cpu(&values);
        }
        Ok(out)
    }
}

impl KernelMaps {
    /// Flow entries created in the buffer the programs write now (per-CPU counts summed): how
    /// full it is, without walking it.
    pub fn active_fill(&self) -> Result<u64, KernelError> {
        let epoch = self
            .control
            .get(&CONTROL_ACTIVE, 0)
            .map_err(|source| KernelError::Map {
                name: MAP_CONTROL,
                source,
            })?;
        let values = self
            .fill
            .get(&(epoch & 1), 0)
            .map_err(|source| KernelError::Map {
                name: MAP_FILL,
                source,
            })?;
        Ok(values.iter().sum())
    }
}

/// `membarrier(MEMBARRIER_CMD_GLOBAL)` runs `synchronize_rcu()` in the kernel. cgroup_skb programs
/// run inside an RCU read-side critical section, so when it returns every program that read the
/// old buffer index has finished. The command is refused on nohz_full kernels; there a generous
/// sleep is the best we can do (programs run for nanoseconds).
fn wait_for_rcu_grace_period() -> Result<(), KernelError> {
    const MEMBARRIER_CMD_GLOBAL: libc::c_int = 1;
    // SAFETY: membarrier takes two integers and touches no memory of ours.
    let ret = unsafe { libc::syscall(libc::SYS_membarrier, MEMBARRIER_CMD_GLOBAL, 0) };
    if ret == 0 {
        return Ok(());
    }
    let err = std::io::Error::last_os_error();
    if err.raw_os_error() == Some(libc::EINVAL) {
        std::thread::sleep(Duration::from_millis(50));
        return Ok(());
    }
    Err(KernelError::Membarrier(err))
}
