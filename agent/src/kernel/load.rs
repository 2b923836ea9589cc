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
};

use agent_common::{
    MapEntries, MapKind, MapSpec, ABI_VERSION, CONTROL_FLOW_QUOTA, MAPS, MAP_CACHE, MAP_CONTROL,
    MAP_FILL, MAP_FLOWS, MAP_LOST, MAP_OVERFLOW, MAP_QUOTA, MAP_TRANSLATED,
};
use aya::{
    maps::{IterableMap as _, MapError, MapInfo, MapType},
    programs::{links::FdLink, CgroupAttachMode, CgroupSkb, CgroupSkbAttachType},
    Ebpf, EbpfLoader,
};

use super::{sys as bpf_sys, KernelMaps, TranslatedTrie};

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

/// The maps kept across restarts (see `MapSpec::pinned`).
pub fn pinned_maps() -> impl Iterator<Item = &'static MapSpec> {
    MAPS.iter().filter(|m| m.pinned)
}

/// The pin directory of this build's layout.
pub fn versioned_pin_dir(pin_dir: &Path) -> PathBuf {
    pin_dir.join(format!("v{ABI_VERSION}"))
}

/// `<pin_dir>/v<N>` directories of other ABI versions: their programs count into maps this
/// agent cannot read.
pub fn other_layout_dirs(pin_root: &Path) -> Vec<PathBuf> {
    let ours = versioned_pin_dir(pin_root);
    let Ok(entries) = std::fs::read_dir(pin_root) else {
        return Vec::new();
    };
    entries
        .filter_map(Result::ok)
        .map(|e| e.path())
        .filter(|p| {
            p != &ours
                && p.file_name()
                    .and_then(|n| n.to_str())
                    .is_some_and(|n| n.starts_with('v') && n[1..].parse::<u32>().is_ok())
        })
        .collect()
}

/// The kernel's name for a map kind.
pub fn map_type(kind: MapKind) -> MapType {
    match kind {
        MapKind::Array => MapType::Array,
        MapKind::PerCpuArray => MapType::PerCpuArray,
        MapKind::Hash => MapType::Hash,
        MapKind::PerCpuHash => MapType::PerCpuHash,
        MapKind::LpmTrie => MapType::LpmTrie,
    }
}

/// Checks the maps pinned in `dir` against this build: all there and alike → adopt; none there →
/// create; anything else → the reason they cannot be adopted.
fn check_pinned_maps(dir: &Path, flow_entries: u32, overflow_entries: u32) -> Result<bool, String> {
    let mut found = 0;
    let mut pinned = 0;
    for spec in pinned_maps() {
        pinned += 1;
        let path = dir.join(spec.name);
        if !path.exists() {
            continue;
        }
        found += 1;
        let info = MapInfo::from_pin(&path)
            .map_err(|e| format!("cannot open pinned map {}: {e}", path.display()))?;
        let want = (
            map_type(spec.kind),
            spec.key_size,
            spec.value_size,
            spec.max_entries(flow_entries, overflow_entries),
        );
        let kind = info.map_type().ok();
        let have = (info.key_size(), info.value_size(), info.max_entries());
        if kind != Some(want.0) || have != (want.1, want.2, want.3) {
            return Err(format!(
                "pinned map {} is {kind:?} with key {} B, value {} B, {} entries; this agent needs {:?} with key {} B, value {} B, {} entries",
                spec.name, have.0, have.1, have.2, want.0, want.1, want.2, want.3
            ));
        }
    }
    match found {
        0 => Ok(false),
        n if n == pinned => Ok(true),
        n => Err(format!("only {n} of the {pinned} pinned maps are there")),
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
    for spec in &MAPS {
        if !matches!(spec.entries, MapEntries::Fixed(_)) {
            loader.map_max_entries(
                spec.name,
                spec.max_entries(options.flow_entries, options.overflow_entries),
            );
        }
    }
    let pin_paths: Vec<(&str, PathBuf)> = match &map_dir {
        Some(dir) => pinned_maps().map(|m| (m.name, dir.join(m.name))).collect(),
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

#[cfg(test)]
mod tests {
    use super::*;

    /// The compiled object declares exactly the maps of the ABI table, with its types and sizes.
    #[test]
    fn the_compiled_object_has_the_maps_of_the_abi_table() {
        let object = aya_obj::Object::parse(EBPF_OBJECT).expect("the eBPF object parses");
        let mut names: Vec<&str> = object
            .maps
            .keys()
            .map(String::as_str)
            .filter(|n| !n.starts_with('.'))
            .collect();
        names.sort_unstable();
        let mut want: Vec<&str> = MAPS.iter().map(|m| m.name).collect();
        want.sort_unstable();
        assert_eq!(names, want);
        for spec in &MAPS {
            let map = &object.maps[spec.name];
            assert_eq!(map.map_type(), map_type(spec.kind) as u32, "{}", spec.name);
            assert_eq!(map.key_size(), spec.key_size, "{} key", spec.name);
            assert_eq!(map.value_size(), spec.value_size, "{} value", spec.name);
            let default = spec.max_entries(
                agent_common::DEFAULT_FLOW_ENTRIES,
                agent_common::DEFAULT_OVERFLOW_ENTRIES,
            );
            assert_eq!(map.max_entries(), default, "{} entries", spec.name);
        }
    }
}
