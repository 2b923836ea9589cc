//! Loads the kernel programs, attaches them at the cgroup v2 root, and gives the drain its maps.

use std::{fs::File, path::Path, time::Duration};

use std::net::IpAddr;

use agent_common::{
    cache_index, CacheEntry, Counter, FlowKey, OverflowKey, TranslatedKey, CONTROL_ACTIVE,
    DIRECTION_EGRESS, DIRECTION_INGRESS, FAMILY_IPV4, FAMILY_IPV6, MAP_CACHE, MAP_CONTROL,
    MAP_FLOWS, MAP_LOST, MAP_OVERFLOW, MAP_TRANSLATED,
};
use aya::{
    maps::{lpm_trie, Array, LpmTrie, MapData, MapError, PerCpuArray, PerCpuHashMap, PerCpuValues},
    programs::{CgroupAttachMode, CgroupSkb, CgroupSkbAttachType},
    Ebpf, EbpfLoader,
};

use crate::{
    drain::{sum_per_cpu, CountingBuffers},
    topology::Cidr,
};

#[derive(Debug, thiserror::Error)]
pub enum KernelError {
    #[error("loading the eBPF object: {0}")]
    Load(#[from] aya::EbpfError),
    #[error("program {name}: {source}")]
    Program {
        name: &'static str,
        source: aya::programs::ProgramError,
    },
    #[error("the eBPF object has no {0}")]
    Missing(&'static str),
    #[error("map {name}: {source}")]
    Map {
        name: &'static str,
        source: MapError,
    },
    #[error("opening the cgroup v2 root {path}: {source}")]
    CgroupRoot {
        path: String,
        source: std::io::Error,
    },
    #[error("waiting for an RCU grace period (membarrier): {0}")]
    Membarrier(std::io::Error),
}

/// The compiled kernel programs (built by aya-build from `agent-ebpf`).
pub static EBPF_OBJECT: &[u8] = aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/netcost"));

pub const PROGRAMS: [(&str, CgroupSkbAttachType); 2] = [
    ("netcost_egress", CgroupSkbAttachType::Egress),
    ("netcost_ingress", CgroupSkbAttachType::Ingress),
];

/// Loaded and attached programs plus their maps. Dropping it detaches the programs (they are
/// attached through BPF links owned by this process, so even a SIGKILL detaches them).
pub struct Kernel {
    _ebpf: Ebpf,
    pub attached: usize,
}

pub struct KernelMaps {
    control: Array<MapData, u32>,
    flows: [PerCpuHashMap<MapData, FlowKey, Counter>; 2],
    overflow: [PerCpuHashMap<MapData, OverflowKey, Counter>; 2],
    lost: PerCpuArray<MapData, Counter>,
    cache: PerCpuArray<MapData, CacheEntry>,
    pub flow_capacity: u32,
    pub overflow_capacity: u32,
    /// Entries found in the last drain (≈ peak occupancy of one interval).
    pub last_flow_entries: usize,
    pub last_overflow_entries: usize,
    /// Entries that could not be read or deleted in the last drain (left for the next one).
    pub last_entry_errors: usize,
}

/// The kernel's `TRANSLATED` prefixes: remotes whose flows are counted per connection.
pub struct TranslatedTrie {
    trie: LpmTrie<MapData, TranslatedKey, u8>,
}

/// The trie's key for a prefix: the family word is always matched, then the prefix's bits.
pub fn translated_key(cidr: &Cidr) -> lpm_trie::Key<TranslatedKey> {
    let (addr, bits) = cidr.parts();
    let (family, words) = match addr {
        IpAddr::V4(a) => (FAMILY_IPV4, [u32::from_ne_bytes(a.octets()), 0, 0, 0]),
        IpAddr::V6(a) => {
            let o = a.octets();
            (
                FAMILY_IPV6,
                std::array::from_fn(|i| {
                    u32::from_ne_bytes([o[4 * i], o[4 * i + 1], o[4 * i + 2], o[4 * i + 3]])
                }),
            )
        }
    };
    lpm_trie::Key::new(
        32 + bits as u32,
        TranslatedKey {
            family: family as u32,
            addr: words,
        },
    )
}

impl TranslatedTrie {
    pub fn insert(&mut self, cidr: &Cidr) -> Result<(), KernelError> {
        self.trie
            .insert(&translated_key(cidr), 1u8, 0)
            .map_err(|source| KernelError::Map {
                name: MAP_TRANSLATED,
                source,
            })
    }

    pub fn remove(&mut self, cidr: &Cidr) -> Result<(), KernelError> {
        self.trie
            .remove(&translated_key(cidr))
            .map_err(|source| KernelError::Map {
                name: MAP_TRANSLATED,
                source,
            })
    }
}

fn map<T>(ebpf: &mut Ebpf, name: &'static str) -> Result<T, KernelError>
where
    T: TryFrom<aya::maps::Map, Error = MapError>,
{
    let m = ebpf.take_map(name).ok_or(KernelError::Missing(name))?;
    T::try_from(m).map_err(|source| KernelError::Map { name, source })
}

pub fn load_and_attach(
    cgroup_root: &Path,
    flow_entries: u32,
    overflow_entries: u32,
) -> Result<(Kernel, KernelMaps, TranslatedTrie), KernelError> {
    let mut loader = EbpfLoader::new();
    for name in MAP_FLOWS {
        loader.map_max_entries(name, flow_entries);
    }
    for name in MAP_OVERFLOW {
        loader.map_max_entries(name, overflow_entries);
    }
    let mut ebpf = loader.load(EBPF_OBJECT)?;
    let root = File::open(cgroup_root).map_err(|source| KernelError::CgroupRoot {
        path: cgroup_root.display().to_string(),
        source,
    })?;
    let maps = KernelMaps {
        control: map(&mut ebpf, MAP_CONTROL)?,
        flows: [map(&mut ebpf, MAP_FLOWS[0])?, map(&mut ebpf, MAP_FLOWS[1])?],
        overflow: [
            map(&mut ebpf, MAP_OVERFLOW[0])?,
            map(&mut ebpf, MAP_OVERFLOW[1])?,
        ],
        lost: map(&mut ebpf, MAP_LOST)?,
        cache: map(&mut ebpf, MAP_CACHE)?,
        flow_capacity: flow_entries,
        overflow_capacity: overflow_entries,
        last_flow_entries: 0,
        last_overflow_entries: 0,
        last_entry_errors: 0,
    };
    let translated = TranslatedTrie {
        trie: map(&mut ebpf, MAP_TRANSLATED)?,
    };
    let mut attached = 0;
    for (name, attach_type) in PROGRAMS {
        let program: &mut CgroupSkb = ebpf
            .program_mut(name)
            .ok_or(KernelError::Missing(name))?
            .try_into()
            .map_err(|source| KernelError::Program { name, source })?;
        program
            .load()
            .map_err(|source| KernelError::Program { name, source })?;
        // aya attaches through a BPF link on kernels >= 5.7. Cgroup links always coexist with other
        // programs on the same cgroup (systemd's, Cilium's, …) and the kernel rejects any flag on
        // them, so the mode must be the flag-less `Single`.
        program
            .attach(&root, attach_type, CgroupAttachMode::Single)
            .map_err(|source| KernelError::Program { name, source })?;
        attached += 1;
    }
    Ok((
        Kernel {
            _ebpf: ebpf,
            attached,
        },
        maps,
        translated,
    ))
}

/// Reads and deletes every entry of a per-CPU hash. Keys are collected first: deleting while the
/// kernel iterator walks the same buckets could skip entries.
fn take_all<K: aya::Pod + Eq + std::hash::Hash>(
    map: &mut PerCpuHashMap<MapData, K, Counter>,
    errors: &mut usize,
) -> Vec<(K, Counter)> {
    let keys: Vec<K> = map.keys().filter_map(Result::ok).collect();
    let mut out = Vec::with_capacity(keys.len());
    for key in keys {
        let Ok(values) = map.get(&key, 0) else {
            *errors += 1;
            continue;
        };
        // Only report what we could also delete; otherwise the next drain would count it again.
        if map.remove(&key).is_err() {
            *errors += 1;
            continue;
        }
        out.push((key, sum_per_cpu(&values)));
    }
    out
}

impl CountingBuffers for KernelMaps {
    type Error = KernelError;

    fn set_active(&mut self, index: u32) -> Result<(), KernelError> {
        self.control
            .set(CONTROL_ACTIVE, index, 0)
            .map_err(|source| KernelError::Map {
                name: MAP_CONTROL,
                source,
            })
    }

    fn wait_for_writers(&mut self) -> Result<(), KernelError> {
        wait_for_rcu_grace_period()
    }

    fn take_flows(&mut self, index: u32) -> Result<Vec<(FlowKey, Counter)>, KernelError> {
        self.last_entry_errors = 0;
        let out = take_all(&mut self.flows[index as usize], &mut self.last_entry_errors);
        self.last_flow_entries = out.len();
        Ok(out)
    }

    fn take_overflow(&mut self, index: u32) -> Result<Vec<(OverflowKey, Counter)>, KernelError> {
        let out = take_all(
            &mut self.overflow[index as usize],
            &mut self.last_entry_errors,
        );
        self.last_overflow_entries = out.len();
        Ok(out)
    }

    fn take_cached(&mut self, index: u32) -> Result<Vec<(FlowKey, Counter)>, KernelError> {
        let err = |source| KernelError::Map {
            name: MAP_CACHE,
            source,
        };
        let mut out = Vec::new();
        for direction in [DIRECTION_EGRESS, DIRECTION_INGRESS] {
            let slot = cache_index(index, direction);
            let per_cpu = self.cache.get(&slot, 0).map_err(err)?;
            let valid: Vec<_> = per_cpu
                .iter()
                .filter(|e| e.counter.packets > 0)
                .map(|e| (e.key, e.counter))
                .collect();
            // Nothing writes the idle buffer's slots now; clear them for its next turn. Only
            // report them once the clear succeeded, or the next drain would count them again.
            let zeros = PerCpuValues::try_from(vec![CacheEntry::default(); per_cpu.len()])
                .map_err(|e| err(MapError::from(e)))?;
            self.cache.set(slot, zeros, 0).map_err(err)?;
            out.extend(valid);
        }
        Ok(out)
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
