//! Who owns a socket: the cgroup id the kernel counted under → cgroup path → pod UID and container,
//! for both kubelet cgroup drivers. Anything outside the kubepods tree is the node itself.

use std::{
    collections::{HashMap, HashSet},
    os::unix::fs::MetadataExt,
    path::{Path, PathBuf},
    time::{Duration, Instant},
};

/// The workload identity bytes are attributed to.
#[derive(
    Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, serde::Serialize, serde::Deserialize,
)]
#[serde(rename_all = "snake_case")]
pub enum Identity {
    Pod {
        uid: String,
        /// Container id when the socket belongs to a container's cgroup (not the pod's own level).
        container: Option<String>,
    },
    /// Node processes and hostNetwork sockets outside any pod cgroup.
    Node,
    /// A cgroup that was gone before we could read its path (for example a pod that lived less
    /// than one drain interval and whose cgroup we never saw).
    Unknown,
}

/// Parses a cgroup path relative to the cgroup v2 root.
///
/// cgroupfs driver: `kubepods[/<qos>]/pod<uid>[/<container id>]`.
/// systemd driver: `kubepods.slice[/kubepods-<qos>.slice]/kubepods[-<qos>]-pod<uid_with_underscores>.slice[/<runtime>-<id>.scope]`.
/// Either may sit below a prefix (`kubelet.slice/kubelet-kubepods.slice/…` on kind, a nested
/// runtime's own tree).
pub fn parse_cgroup_path(path: &str) -> Identity {
    let parts: Vec<&str> = path.split('/').filter(|p| !p.is_empty()).collect();
    let Some(first_kubepods) = parts.iter().position(|p| p.contains("kubepods")) else {
        return Identity::Node;
    };
    for (i, part) in parts.iter().enumerate().skip(first_kubepods) {
        let uid = if let Some(rest) = part.strip_prefix("pod") {
            // cgroupfs
            Some(rest.to_owned())
        } else if let Some(slice) = part.strip_suffix(".slice") {
            // systemd: the text after the last "-pod"
            slice
                .rfind("-pod")
                .map(|at| slice[at + 4..].replace('_', "-"))
        } else {
            None
        };
        if let Some(uid) = uid.filter(|u| is_pod_uid(u)) {
            let container = parts.get(i + 1).map(|c| container_id(c));
            return Identity::Pod { uid, container };
        }
    }
    // Inside kubepods but above any pod (the QoS slices themselves): the kubelet's, i.e. the node's.
    Identity::Node
}

/// A pod UID is an RFC 4122 UUID; static pods carry a 32-hex-digit config hash instead.
fn is_pod_uid(s: &str) -> bool {
    let hex = |c: char| c.is_ascii_hexdigit();
    match s.len() {
        36 => s.char_indices().all(|(i, c)| match i {
            8 | 13 | 18 | 23 => c == '-',
            _ => hex(c),
        }),
        32 => s.chars().all(hex),
        _ => false,
    }
}

/// `cri-containerd-<id>.scope`, `crio-<id>.scope`, `docker-<id>.scope` → `<id>`; a cgroupfs
/// container directory is the id itself.
fn container_id(part: &str) -> String {
    let base = part.strip_suffix(".scope").unwrap_or(part);
    match base.rfind('-') {
        Some(at) if part.ends_with(".scope") => base[at + 1..].to_owned(),
        _ => base.to_owned(),
    }
}

struct Cached {
    identity: Identity,
    last_seen: Instant,
}

/// Maps cgroup ids to identities by walking the cgroup v2 tree (a cgroup's id is its directory's
/// inode number). Walks happen when an unknown id shows up (at most once per `min_rescan`) and
/// periodically; ids whose cgroup is gone are kept for `retention`, so bytes drained shortly after
/// a pod ends still reach it.
pub struct CgroupResolver {
    root: PathBuf,
    cache: HashMap<u64, Cached>,
    last_scan: Option<Instant>,
    min_rescan: Duration,
    retention: Duration,
    live_pods: HashSet<String>,
}

impl CgroupResolver {
    pub fn new(root: PathBuf, retention: Duration) -> CgroupResolver {
        CgroupResolver {
            root,
            cache: HashMap::new(),
            last_scan: None,
            min_rescan: Duration::from_secs(1),
            retention,
            live_pods: HashSet::new(),
        }
    }

    pub fn root(&self) -> &Path {
        &self.root
    }

    /// Pod UIDs that had a cgroup at the last walk.
    pub fn live_pods(&self) -> &HashSet<String> {
        &self.live_pods
    }

    /// Walks the tree if it has not been walked for `max_age`.
    pub fn refresh_if_older(&mut self, max_age: Duration) {
        if self.last_scan.is_none_or(|t| t.elapsed() >= max_age) {
            self.rescan();
        }
    }

    pub fn resolve(&mut self, cgroup_id: u64) -> Identity {
        if let Some(c) = self.cache.get(&cgroup_id) {
            return c.identity.clone();
        }
        if self
            .last_scan
            .is_none_or(|t| t.elapsed() >= self.min_rescan)
        {
            self.rescan();
            if let Some(c) = self.cache.get(&cgroup_id) {
                return c.identity.clone();
            }
        }
        Identity::Unknown
    }

    pub fn rescan(&mut self) {
        let now = Instant::now();
        self.last_scan = Some(now);
        let mut live = HashSet::new();
        let mut stack = vec![self.root.clone()];
        while let Some(dir) = stack.pop() {
            // A cgroup may vanish while we walk: skip what we cannot read.
            let Ok(meta) = std::fs::symlink_metadata(&dir) else {
                continue;
            };
            let rel = dir.strip_prefix(&self.root).unwrap_or(&dir);
            let identity = parse_cgroup_path(&rel.to_string_lossy());
            if let Identity::Pod { uid, .. } = &identity {
                live.insert(uid.clone());
            }
            self.cache.insert(
                meta.ino(),
                Cached {
                    identity,
                    last_seen: now,
                },
            );
            if let Ok(entries) = std::fs::read_dir(&dir) {
                for entry in entries.flatten() {
                    if entry.file_type().is_ok_and(|t| t.is_dir()) {
                        stack.push(entry.path());
                    }
                }
            }
        }
        let retention = self.retention;
        self.cache
            .retain(|_, c| now.duration_since(c.last_seen) <= retention);
        self.live_pods = live;
    }
}

/// The cgroup v2 mount point, from /proc/mounts (it may be anywhere: `/sys/fs/cgroup` on a
/// unified host, `/sys/fs/cgroup/unified` on a hybrid one).
pub fn find_cgroup2_mount(mounts: &str) -> Option<PathBuf> {
    mounts.lines().find_map(|line| {
        let mut fields = line.split_whitespace();
        let (_dev, mount_point, fstype) = (fields.next()?, fields.next()?, fields.next()?);
        (fstype == "cgroup2").then(|| PathBuf::from(unescape_mount(mount_point)))
    })
}

/// /proc/mounts escapes space, tab, newline and backslash as octal.
fn unescape_mount(s: &str) -> String {
    s.replace("\\040", " ")
        .replace("\\011", "\t")
        .replace("\\012", "\n")
        .replace("\\134", "\\")
}

#[cfg(test)]
mod tests {
    use super::*;

    const UID: &str = "8a7c2f3e-1b2d-4c5e-9f00-0123456789ab";

    fn pod(container: Option<&str>) -> Identity {
        Identity::Pod {
            uid: UID.into(),
            container: container.map(str::to_owned),
        }
    }

    #[test]
    fn cgroupfs_driver() {
        let cid = "f".repeat(64);
        assert_eq!(
            parse_cgroup_path(&format!("/kubepods/besteffort/pod{UID}/{cid}")),
            pod(Some(&cid))
        );
        assert_eq!(parse_cgroup_path(&format!("kubepods/pod{UID}")), pod(None));
        assert_eq!(
            parse_cgroup_path(&format!("kubepods/burstable/pod{UID}/abc")),
            pod(Some("abc"))
        );
    }

    #[test]
    fn systemd_driver() {
        let u = UID.replace('-', "_");
        assert_eq!(
            parse_cgroup_path(&format!(
                "kubepods.slice/kubepods-burstable.slice/kubepods-burstable-pod{u}.slice/cri-containerd-0123abcd.scope"
            )),
            pod(Some("0123abcd"))
        );
        assert_eq!(
            parse_cgroup_path(&format!("kubepods.slice/kubepods-pod{u}.slice")),
            pod(None)
        );
        assert_eq!(
            parse_cgroup_path(&format!(
                "kubelet.slice/kubelet-kubepods.slice/kubelet-kubepods-besteffort.slice/kubelet-kubepods-besteffort-pod{u}.slice/crio-77.scope"
            )),
            pod(Some("77"))
        );
    }

    #[test]
    fn static_pod_hash_uid() {
        let hash = "0123456789abcdef0123456789abcdef";
        assert_eq!(
            parse_cgroup_path(&format!("kubepods/burstable/pod{hash}/c")),
            Identity::Pod {
                uid: hash.into(),
                container: Some("c".into())
            }
        );
    }

    #[test]
    fn everything_else_is_the_node() {
        for p in [
            "",
            "/",
            "system.slice/containerd.service",
            "user.slice/user-0.slice/session-1.scope",
            "kubepods.slice/kubepods-besteffort.slice",
            "kubepods/burstable",
            "kubepods/podnot-a-uid/x",
            "other/pod8a7c2f3e-1b2d-4c5e-9f00-0123456789ab",
        ] {
            assert_eq!(parse_cgroup_path(p), Identity::Node, "{p}");
        }
    }

    #[test]
    fn finds_cgroup2_wherever_mounted() {
        let mounts = "tmpfs /sys/fs/cgroup tmpfs rw 0 0\ncgroup /sys/fs/cgroup/cpu cgroup rw,cpu 0 0\ncgroup2 /sys/fs/cgroup/unified cgroup2 rw 0 0\n";
        assert_eq!(
            find_cgroup2_mount(mounts),
            Some(PathBuf::from("/sys/fs/cgroup/unified"))
        );
        assert_eq!(
            find_cgroup2_mount("none /my\\040cg cgroup2 rw 0 0"),
            Some(PathBuf::from("/my cg"))
        );
        assert_eq!(find_cgroup2_mount("proc /proc proc rw 0 0"), None);
    }

    #[test]
    fn resolver_maps_inodes_and_keeps_gone_cgroups_for_retention() {
        let dir = std::env::temp_dir().join(format!("netcost-resolver-{}", std::process::id()));
        let pod_dir = dir.join(format!("kubepods/besteffort/pod{UID}/ctr"));
        std::fs::create_dir_all(&pod_dir).unwrap();
        let ino = std::fs::metadata(&pod_dir).unwrap().ino();
        let mut r = CgroupResolver::new(dir.clone(), Duration::from_secs(3600));
        assert_eq!(r.resolve(ino), pod(Some("ctr")));
        assert!(r.live_pods().contains(UID));
        std::fs::remove_dir_all(&dir).unwrap();
        r.rescan();
        // Gone from the tree, still resolvable within the retention period.
        assert_eq!(r.resolve(ino), pod(Some("ctr")));
        assert!(!r.live_pods().contains(UID));
        let mut r = CgroupResolver::new(dir, Duration::ZERO);
        r.rescan();
        assert_eq!(r.resolve(ino), Identity::Unknown);
    }
}
