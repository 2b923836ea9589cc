//! Loads the kernel programs, attaches them at the cgroup v2 root, and gives the drain its maps.
//!
//! With pinning (the default) the counting maps and both links live in bpffs under
//! `<pin_dir>/v<ABI>/`: when the agent stops or dies the programs go on counting into the same
//! maps, and the next agent adopts them, swapping its own programs into the pinned links in one
//! step. Maps whose layout differs from this build's are not adopted: they are replaced, and the
//! totals start again (the caller says so).

use std::{
    fs::File,
    os::fd::AsFd,
    path::{Path, PathBuf},
    time::Duration,
};

use agent_common::{
    cache_index, CacheEntry, Counter, FlowKey, OverflowKey, TranslatedKey, ABI_VERSION,
    CACHE_ENTRIES, CONTROL_ACTIVE, CONTROL_ENTRIES, CONTROL_FLOW_QUOTA, DEFAULT_QUOTA_ENTRIES,
    DIRECTION_EGRESS, DIRECTION_INGRESS, FILL_ENTRIES, LOST_ENTRIES, MAP_CACHE, MAP_CONTROL,
    MAP_FILL, MAP_FLOWS, MAP_LOST, MAP_OVERFLOW, MAP_QUOTA, MAP_TRANSLATED,
};
use aya::{
    maps::{
        lpm_trie, Array, HashMap, IterableMap, LpmTrie, MapData, MapError, MapInfo, MapType,
        PerCpuArray, PerCpuHashMap, PerCpuValues,
    },
    programs::{links::FdLink, CgroupAttachMode, CgroupSkb, CgroupSkbAttachType},
    Ebpf, EbpfLoader,
};

use crate::{
    bpf_sys,
    drain::{sum_per_cpu, CountingBuffers, Undeleted},
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
    #[error("pin directory {path}: {source}")]
    Pins {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("link of {name}: {source}")]
    Link {
        name: &'static str,
        source: aya::programs::links::LinkError,
    },
    #[error("pinning the {name} link at {path}: {source}")]
    PinLink {
        name: &'static str,
        path: PathBuf,
        source: aya::pin::PinError,
    },
}

/// The compiled kernel programs (built by aya-build from `agent-ebpf`).
pub static EBPF_OBJECT: &[u8] = aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/netcost"));

pub const PROGRAMS: [(&str, CgroupSkbAttachType); 2] = [
    ("netcost_egress", CgroupSkbAttachType::Egress),
    ("netcost_ingress", CgroupSkbAttachType::Ingress),
];

/// The loaded programs. Unpinned, dropping it detaches them (they are attached through BPF links
/// owned by this process, so even a SIGKILL detaches them); pinned, they stay attached.
pub struct Kernel {
    ebpf: Ebpf,
    pub attached: usize,
    /// The versioned pin directory, when maps and links are pinned.
    pub pins: Option<PathBuf>,
}

/// How the counting maps came to be.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum MapsOrigin {
    /// Created now (first start on this boot, or pinning is off).
    Created,
    /// Pinned by an earlier agent and taken over with what they hold.
    Adopted,
    /// Pinned maps were there but of another layout: replaced by empty ones.
    Replaced(String),
}

impl MapsOrigin {
    /// The `maps` label of `netcost_start_info`.
    pub fn label(&self) -> &'static str {
        match self {
            MapsOrigin::Created => "created",
            MapsOrigin::Adopted => "adopted",
            MapsOrigin::Replaced(_) => "replaced",
        }
    }
}

/// The maps kept across restarts. `TRANSLATED` is not among them: each agent fills its own from
/// conntrack before its programs take over the links.
pub const PINNED_MAPS: [&str; 10] = [
    MAP_CONTROL,
    MAP_FLOWS[0],
    MAP_FLOWS[1],
    MAP_OVERFLOW[0],
    MAP_OVERFLOW[1],
    MAP_LOST,
    MAP_CACHE,
    MAP_QUOTA[0],
    MAP_QUOTA[1],
    MAP_FILL,
];

/// The pin directory of this build's layout.
pub fn versioned_pin_dir(pin_dir: &Path) -> PathBuf {
    pin_dir.join(format!("v{ABI_VERSION}"))
}

/// Type, key size, value size and capacity a pinned map must have to be adopted.
fn expected_layout(
    name: &str,
    flow_entries: u32,
    overflow_entries: u32,
) -> (MapType, u32, u32, u32) {
    use std::mem::size_of;
    let counter = size_of::<Counter>() as u32;
    match name {
        MAP_CONTROL => (MapType::Array, 4, 4, CONTROL_ENTRIES),
        MAP_LOST => (MapType::PerCpuArray, 4, counter, LOST_ENTRIES),
        MAP_CACHE => (
            MapType::PerCpuArray,
            4,
            size_of::<CacheEntry>() as u32,
            CACHE_ENTRIES,
        ),
        MAP_FILL => (MapType::PerCpuArray, 4, 8, FILL_ENTRIES),
        n if MAP_QUOTA.contains(&n) => (MapType::Hash, 8, 8, DEFAULT_QUOTA_ENTRIES),
        n if MAP_FLOWS.contains(&n) => (
            MapType::PerCpuHash,
            size_of::<FlowKey>() as u32,
            counter,
            flow_entries,
        ),
        _ => (
            MapType::PerCpuHash,
            size_of::<OverflowKey>() as u32,
            counter,
            overflow_entries,
        ),
    }
}

/// Checks the maps pinned in `dir` against this build: all there and alike → adopt; none there →
/// create; anything else → the reason they cannot be adopted.
fn check_pinned_maps(dir: &Path, flow_entries: u32, overflow_entries: u32) -> Result<bool, String> {
    let mut found = 0;
    for name in PINNED_MAPS {
        let path = dir.join(name);
        if !path.exists() {
            continue;
        }
        found += 1;
        let info = MapInfo::from_pin(&path)
            .map_err(|e| format!("cannot open pinned map {}: {e}", path.display()))?;
        let want = expected_layout(name, flow_entries, overflow_entries);
        let kind = info.map_type().ok();
        let have = (info.key_size(), info.value_size(), info.max_entries());
        if kind != Some(want.0) || have != (want.1, want.2, want.3) {
            return Err(format!(
                "pinned map {name} is {kind:?} with key {} B, value {} B, {} entries; this agent needs {:?} with key {} B, value {} B, {} entries",
                have.0, have.1, have.2, want.0, want.1, want.2, want.3
            ));
        }
    }
    match found {
        0 => Ok(false),
        n if n == PINNED_MAPS.len() => Ok(true),
        n => Err(format!(
            "only {n} of the {} pinned maps are there",
            PINNED_MAPS.len()
        )),
    }
}

pub struct KernelMaps {
    control: Array<MapData, u32>,
    flows: [PerCpuHashMap<MapData, FlowKey, Counter>; 2],
    overflow: [PerCpuHashMap<MapData, OverflowKey, Counter>; 2],
    lost: PerCpuArray<MapData, Counter>,
    cache: PerCpuArray<MapData, CacheEntry>,
    quota: [HashMap<MapData, u64, u64>; 2],
    fill: PerCpuArray<MapData, u64>,
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
    let (family, words) = agent_common::addr_words(addr);
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

pub struct LoadOptions<'a> {
    pub flow_entries: u32,
    pub overflow_entries: u32,
    /// Most flow entries one owner may create in a buffer (0: no limit).
    pub flow_quota: u32,
    /// The versioned pin directory on bpffs; `None`: nothing is pinned.
    pub pins: Option<&'a Path>,
}

/// Loaded programs (not attached yet) and their maps.
pub struct Loaded {
    pub kernel: Kernel,
    pub maps: KernelMaps,
    pub translated: TranslatedTrie,
    pub origin: MapsOrigin,
    /// Kernel id of `CONTROL`: which maps a checkpoint belongs to.
    pub maps_id: u32,
}

/// Loads the programs and their maps, adopting compatible pinned maps.
pub fn load(options: &LoadOptions<'_>) -> Result<Loaded, KernelError> {
    let mut origin = MapsOrigin::Created;
    let map_dir = options.pins.map(|p| p.join("maps"));
    if let Some(dir) = &map_dir {
        match check_pinned_maps(dir, options.flow_entries, options.overflow_entries) {
            Ok(true) => origin = MapsOrigin::Adopted,
            Ok(false) => {}
            Err(reason) => {
                // Unpin them; the old programs keep them alive until our programs take over
                // their links, and nothing reads them any more.
                let _ = std::fs::remove_dir_all(dir);
                origin = MapsOrigin::Replaced(reason);
            }
        }
        std::fs::create_dir_all(dir).map_err(|source| KernelError::Pins {
            path: dir.clone(),
            source,
        })?;
    }
    let mut loader = EbpfLoader::new();
    for name in MAP_FLOWS {
        loader.map_max_entries(name, options.flow_entries);
    }
    for name in MAP_OVERFLOW {
        loader.map_max_entries(name, options.overflow_entries);
    }
    let pin_paths: Vec<(&str, PathBuf)> = match &map_dir {
        Some(dir) => PINNED_MAPS.iter().map(|n| (*n, dir.join(n))).collect(),
        None => Vec::new(),
    };
    for (name, path) in &pin_paths {
        loader.map_pin_path(name, path.as_path());
    }
    let mut ebpf = loader.load(EBPF_OBJECT)?;
    let maps = KernelMaps {
        control: map(&mut ebpf, MAP_CONTROL)?,
        flows: [map(&mut ebpf, MAP_FLOWS[0])?, map(&mut ebpf, MAP_FLOWS[1])?],
        overflow: [
            map(&mut ebpf, MAP_OVERFLOW[0])?,
            map(&mut ebpf, MAP_OVERFLOW[1])?,
        ],
        lost: map(&mut ebpf, MAP_LOST)?,
        cache: map(&mut ebpf, MAP_CACHE)?,
        quota: [map(&mut ebpf, MAP_QUOTA[0])?, map(&mut ebpf, MAP_QUOTA[1])?],
        fill: map(&mut ebpf, MAP_FILL)?,
        flow_capacity: options.flow_entries,
        overflow_capacity: options.overflow_entries,
        last_flow_entries: 0,
        last_overflow_entries: 0,
        last_entry_errors: 0,
    };
    // This agent's quota, also on maps an earlier agent pinned.
    let mut maps = maps;
    maps.control
        .set(CONTROL_FLOW_QUOTA, options.flow_quota, 0)
        .map_err(|source| KernelError::Map {
            name: MAP_CONTROL,
            source,
        })?;
    let maps_id = maps
        .control
        .map()
        .info()
        .map_err(|source| KernelError::Map {
            name: MAP_CONTROL,
            source,
        })?
        .id();
    let translated = TranslatedTrie {
        trie: map(&mut ebpf, MAP_TRANSLATED)?,
    };
    for (name, _) in PROGRAMS {
        let program: &mut CgroupSkb = ebpf
            .program_mut(name)
            .ok_or(KernelError::Missing(name))?
            .try_into()
            .map_err(|source| KernelError::Program { name, source })?;
        program
            .load()
            .map_err(|source| KernelError::Program { name, source })?;
    }
    Ok(Loaded {
        kernel: Kernel {
            ebpf,
            attached: 0,
            pins: options.pins.map(Path::to_owned),
        },
        maps,
        translated,
        origin,
        maps_id,
    })
}

/// How a program was put in place.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Attached {
    /// A new link (and pin, when pinning).
    Linked,
    /// Swapped into the link an earlier agent pinned: counting never stopped.
    Swapped,
}

impl Kernel {
    /// Attaches both programs at the cgroup v2 root: into the pinned links if there are any,
    /// else through new links (pinned when pinning).
    pub fn attach(
        &mut self,
        cgroup_root: &Path,
    ) -> Result<Vec<(&'static str, Attached)>, KernelError> {
        let root = File::open(cgroup_root).map_err(|source| KernelError::CgroupRoot {
            path: cgroup_root.display().to_string(),
            source,
        })?;
        let link_dir = self.pins.as_ref().map(|p| p.join("links"));
        if let Some(dir) = &link_dir {
            std::fs::create_dir_all(dir).map_err(|source| KernelError::Pins {
                path: dir.clone(),
                source,
            })?;
        }
        let mut out = Vec::new();
        for (name, attach_type) in PROGRAMS {
            let program: &mut CgroupSkb = self
                .ebpf
                .program_mut(name)
                .ok_or(KernelError::Missing(name))?
                .try_into()
                .map_err(|source| KernelError::Program { name, source })?;
            let pin = link_dir.as_ref().map(|d| d.join(name));
            if let Some(pin) = pin.as_ref().filter(|p| p.exists()) {
                let prog_fd = program
                    .fd()
                    .map_err(|source| KernelError::Program { name, source })?;
                let swapped = bpf_sys::obj_get(pin)
                    .and_then(|link| bpf_sys::link_update(link.as_fd(), prog_fd.as_fd()));
                match swapped {
                    Ok(()) => {
                        out.push((name, Attached::Swapped));
                        self.attached += 1;
                        continue;
                    }
                    Err(e) => {
                        // Not a link we can update (another kernel's layout, a stale pin):
                        // unpin it, which detaches its program, and link afresh.
                        tracing::warn!(link = %pin.display(), error = %e, "cannot swap our program into the pinned link; replacing the link");
                        let _ = std::fs::remove_file(pin);
                    }
                }
            }
            // aya attaches through a BPF link on kernels >= 5.7. Cgroup links always coexist with
            // other programs on the same cgroup (systemd's, Cilium's, …) and the kernel rejects
            // any flag on them, so the mode must be the flag-less `Single`.
            let link_id = program
                .attach(&root, attach_type, CgroupAttachMode::Single)
                .map_err(|source| KernelError::Program { name, source })?;
            if let Some(pin) = pin {
                let link = program
                    .take_link(link_id)
                    .map_err(|source| KernelError::Program { name, source })?;
                let link =
                    FdLink::try_from(link).map_err(|source| KernelError::Link { name, source })?;
                // The pin holds the link: dropping our descriptor leaves the program attached.
                link.pin(&pin).map_err(|source| KernelError::PinLink {
                    name,
                    path: pin.clone(),
                    source,
                })?;
            }
            out.push((name, Attached::Linked));
            self.attached += 1;
        }
        Ok(out)
    }
}

/// Removes every netcost pin under `pin_dir` (all layouts) and detaches every netcost program
/// still attached, whoever holds it. Returns what it did, one line each.
pub fn cleanup(pin_dir: &Path) -> Result<Vec<String>, KernelError> {
    let mut done = Vec::new();
    if pin_dir.exists() {
        // Links first: unpinning a link detaches its program (unless a running agent holds it,
        // which the detach below handles).
        let mut files = Vec::new();
        collect_files(pin_dir, &mut files).map_err(|source| KernelError::Pins {
            path: pin_dir.to_owned(),
            source,
        })?;
        files.sort_by_key(|p| !p.components().any(|c| c.as_os_str() == "links"));
        for f in files {
            std::fs::remove_file(&f).map_err(|source| KernelError::Pins {
                path: f.clone(),
                source,
            })?;
            done.push(format!("unpinned {}", f.display()));
        }
        std::fs::remove_dir_all(pin_dir).map_err(|source| KernelError::Pins {
            path: pin_dir.to_owned(),
            source,
        })?;
        done.push(format!("removed {}", pin_dir.display()));
    }
    let ours: std::collections::HashSet<u32> = aya::programs::loaded_programs()
        .filter_map(Result::ok)
        .filter(|p| {
            // Kernel names are cut at 15 bytes; ours are no longer than that.
            p.name_as_str()
                .is_some_and(|n| PROGRAMS.iter().any(|(name, _)| *name == n))
        })
        .map(|p| p.id())
        .collect();
    for link in aya::programs::loaded_links().filter_map(Result::ok) {
        if !ours.contains(&link.program_id()) {
            continue;
        }
        let detached =
            bpf_sys::link_by_id(link.id()).and_then(|fd| bpf_sys::link_detach(fd.as_fd()));
        match detached {
            Ok(()) => done.push(format!(
                "detached link {} (program {})",
                link.id(),
                link.program_id()
            )),
            Err(e) => done.push(format!("could not detach link {}: {e}", link.id())),
        }
    }
    Ok(done)
}

fn collect_files(dir: &Path, out: &mut Vec<PathBuf>) -> std::io::Result<()> {
    for entry in std::fs::read_dir(dir)? {
        let path = entry?.path();
        if path.is_dir() {
            collect_files(&path, out)?;
        } else {
            out.push(path);
        }
    }
    Ok(())
}

/// Reads every entry of a per-CPU hash, leaving it in place. Keys are collected first: the
/// kernel's key iteration restarts from the beginning when the key it was given is gone.
fn read_all<K: aya::Pod + Eq + std::hash::Hash>(
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
