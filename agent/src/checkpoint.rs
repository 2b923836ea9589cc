//! Persist: the agent's totals, written at every drain before the drained entries are deleted
//! from the kernel, so that a restarted agent goes on from exactly where the last one stopped
//! (see `drain` for how the two are kept in step).
//!
//! One JSON file, replaced atomically and durably (written beside, fsynced, renamed, the
//! directory fsynced): a crash leaves either the old checkpoint or the new one, never half of
//! one, and nothing is exposed before the checkpoint that holds it is on the disk. A file that
//! cannot be read as a checkpoint of this format is moved aside, not overwritten, and the totals
//! start from zero.

use std::{
    net::IpAddr,
    path::{Path, PathBuf},
};

use serde::{Deserialize, Serialize};

use agent_common::Counter;

use crate::{
    drain::DrainState,
    identity::Identity,
    kernel::MapsOrigin,
    metrics::{Direction, KubecostLabels, TrafficLabels},
};

/// Bump when the file's meaning changes; other formats are not read.
pub const FORMAT: u32 = 1;
pub const FILE_NAME: &str = "checkpoint.json";

#[derive(Debug, thiserror::Error)]
pub enum CheckpointError {
    #[error("reading checkpoint {path}: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("checkpoint {path} is not valid: {message}")]
    Invalid { path: PathBuf, message: String },
    #[error("writing checkpoint {path}: {source}")]
    Write {
        path: PathBuf,
        source: std::io::Error,
    },
}

/// Checkpoints moved aside at most; older ones are removed.
const KEPT_ASIDE: usize = 4;
/// A checkpoint larger than this is not read (the totals of 250 pods take a few MB).
const MAX_CHECKPOINT_BYTES: u64 = 256 * 1024 * 1024;

/// Which kernel maps a checkpoint's drain state refers to: this boot's, this map instance.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct MapsIdentity {
    pub boot_id: String,
    /// Kernel id of the pinned `CONTROL` map (unique within a boot).
    pub maps_id: u32,
}

impl MapsIdentity {
    pub fn current(maps_id: u32) -> MapsIdentity {
        MapsIdentity {
            boot_id: std::fs::read_to_string("/proc/sys/kernel/random/boot_id")
                .map(|s| s.trim().to_owned())
                .unwrap_or_default(),
            maps_id,
        }
    }
}

#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct Checkpoint {
    pub format: u32,
    pub abi: u32,
    pub maps: Option<MapsIdentity>,
    /// The last drained epoch whose bytes are in these totals, and `LOST` as of then.
    pub drained_epoch: Option<u32>,
    pub lost_seen: [[u64; 2]; 2],
    pub saved_unix_seconds: u64,
    pub traffic: Vec<TrafficTotal>,
    pub kubecost: Vec<KubecostTotal>,
    pub counters: Counters,
    pub held: Vec<HeldBytes>,
    pub pending_nat: Vec<PendingConnection>,
}

/// One series of `netcost_network_*` and `netcost_network_cost_dollars_total`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct TrafficTotal {
    pub labels: TrafficLabels,
    pub bytes: u64,
    pub packets: u64,
    pub dollars: f64,
}

/// One series of Kubecost's byte counters.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct KubecostTotal {
    pub direction: Direction,
    #[serde(flatten)]
    pub labels: KubecostLabels,
    pub bytes: u64,
}

/// Counters without a pod: by direction where they have one (egress, ingress).
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct Counters {
    pub overflow_bytes: [u64; 2],
    pub lost_bytes: [u64; 2],
    pub lost_packets: [u64; 2],
    pub hold_expired_bytes: u64,
    pub nat_resolved_bytes: u64,
    pub nat_unresolved_bytes: u64,
    pub unpriced_bytes: u64,
    pub kubecost_unmapped_bytes: u64,
}

/// Bytes drained but not attributed yet (their pod or the topology was not known).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct HeldBytes {
    pub identity: Identity,
    pub remote: Option<IpAddr>,
    pub outbound: bool,
    pub direction: Direction,
    pub bytes: u64,
    pub packets: u64,
    pub age_seconds: f64,
}

/// Bytes of a Service connection waiting for conntrack to name its real remote end.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct PendingConnection {
    pub cgroup_id: u64,
    pub local: IpAddr,
    pub remote: IpAddr,
    /// Network byte order, as the kernel stored them.
    pub local_port: u16,
    pub remote_port: u16,
    pub protocol: u8,
    pub direction: Direction,
    pub bytes: u64,
    pub packets: u64,
    pub age_seconds: f64,
}

impl Checkpoint {
    /// A checkpoint file's text, if it is one of this format.
    pub fn parse(text: &str) -> Result<Checkpoint, String> {
        let checkpoint: Checkpoint = serde_json::from_str(text).map_err(|e| e.to_string())?;
        if checkpoint.format != FORMAT {
            return Err(format!(
                "format {} (this agent reads format {FORMAT})",
                checkpoint.format
            ));
        }
        Ok(checkpoint)
    }

    /// Where the drain of `maps` stood when this was written; `None` if it was written for
    /// other maps (or before any drain).
    pub fn drain_state(&self, maps: &MapsIdentity) -> Option<DrainState> {
        if self.maps.as_ref() != Some(maps) {
            return None;
        }
        self.drained_epoch.map(|drained_epoch| DrainState {
            drained_epoch,
            lost_seen: self
                .lost_seen
                .map(|[bytes, packets]| Counter { bytes, packets }),
        })
    }
}

/// What a starting agent's totals go on from.
#[derive(Debug)]
pub enum StartTotals {
    /// Nothing to go on from: new maps and no checkpoint.
    New,
    /// The checkpoint's totals go on; `drain` is where the drain of the adopted maps stood.
    Restored {
        checkpoint: Box<Checkpoint>,
        drain: Option<DrainState>,
    },
    /// From zero although something was there before (a counter reset Prometheus sees).
    Reset {
        reason: String,
        /// The pins or the checkpoint are of another layout (rather than missing).
        incompatible: bool,
    },
}

impl StartTotals {
    /// Decides from how the maps came to be, pins of other layouts (`other_layout`), the
    /// checkpoint found and the identity of the maps loaded now.
    /// `epoch` is the kernel's current epoch (`CONTROL[0]`) of the loaded maps.
    pub fn decide(
        origin: &MapsOrigin,
        other_layout: Option<&Path>,
        checkpoint: Option<Checkpoint>,
        maps: &MapsIdentity,
        epoch: u32,
    ) -> StartTotals {
        let incompatible = match (origin, other_layout) {
            (MapsOrigin::Replaced(reason), _) => Some(reason.clone()),
            (_, Some(dir)) => Some(format!("pins of another layout in {}", dir.display())),
            _ => checkpoint
                .as_ref()
                .filter(|c| c.abi != agent_common::ABI_VERSION)
                .map(|c| format!("the checkpoint is of kernel ABI {}", c.abi)),
        };
        if let Some(reason) = incompatible {
            return StartTotals::Reset {
                reason,
                incompatible: true,
            };
        }
        match (origin, checkpoint) {
            (MapsOrigin::Adopted, Some(cp)) if cp.maps.as_ref() == Some(maps) => {
                let drain = cp.drain_state(maps);
                // The last drained buffer is the idle one (epoch - 1) or the one before it
                // (epoch - 2: the idle buffer not drained yet). Anything older means buffers were
                // drained and emptied after this checkpoint: restoring it would lose their bytes
                // and take every counter back, which Prometheus reads as a reset.
                let fresh = drain.is_none_or(|d| {
                    let behind = epoch.wrapping_sub(d.drained_epoch);
                    behind == 1 || behind == 2
                });
                if !fresh {
                    return StartTotals::Reset {
                        reason: format!(
                            "the checkpoint is stale: it holds the totals up to epoch {}, the pinned maps are at epoch {epoch}",
                            drain.map_or(0, |d| d.drained_epoch)
                        ),
                        incompatible: false,
                    };
                }
                StartTotals::Restored {
                    checkpoint: Box::new(cp),
                    drain,
                }
            }
            (MapsOrigin::Adopted, _) => StartTotals::Reset {
                reason: "pinned maps adopted without their checkpoint".to_owned(),
                incompatible: false,
            },
            // New maps: nothing in them the checkpoint could disagree with.
            (_, Some(cp)) => StartTotals::Restored {
                checkpoint: Box::new(cp),
                drain: None,
            },
            (_, None) => StartTotals::New,
        }
    }

    /// The `totals` label of `netcost_start_info`.
    pub fn label(&self) -> &'static str {
        match self {
            StartTotals::New => "new",
            StartTotals::Restored { .. } => "restored",
            StartTotals::Reset { .. } => "reset",
        }
    }
}

/// The checkpoint file in the state directory.
#[derive(Clone, Debug)]
pub struct CheckpointStore {
    pub path: PathBuf,
}

impl CheckpointStore {
    pub fn in_dir(dir: &Path) -> CheckpointStore {
        CheckpointStore {
            path: dir.join(FILE_NAME),
        }
    }

    /// The checkpoint, if there is one. A file of another format is an error that names it.
    pub fn load(&self) -> Result<Option<Checkpoint>, CheckpointError> {
        if let Ok(meta) = std::fs::metadata(&self.path) {
            if meta.len() > MAX_CHECKPOINT_BYTES {
                return Err(CheckpointError::Invalid {
                    path: self.path.clone(),
                    message: format!("{} bytes, more than {MAX_CHECKPOINT_BYTES}", meta.len()),
                });
            }
        }
        let text = match std::fs::read_to_string(&self.path) {
            Ok(t) => t,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
            Err(source) => {
                return Err(CheckpointError::Read {
                    path: self.path.clone(),
                    source,
                })
            }
        };
        Checkpoint::parse(&text)
            .map(Some)
            .map_err(|message| CheckpointError::Invalid {
                path: self.path.clone(),
                message,
            })
    }

    /// Replaces the checkpoint atomically; returns its size in bytes.
    pub fn save(&self, checkpoint: &Checkpoint) -> Result<usize, CheckpointError> {
        let write = |source| CheckpointError::Write {
            path: self.path.clone(),
            source,
        };
        let text = serde_json::to_vec(checkpoint).map_err(|e| write(std::io::Error::other(e)))?;
        let tmp = self.path.with_extension("json.tmp");
        let written = (|| {
            use std::io::Write as _;
            let mut f = std::fs::File::create(&tmp)?;
            f.write_all(&text)?;
            f.sync_all()?;
            drop(f);
            std::fs::rename(&tmp, &self.path)?;
            // The rename is durable once the directory is.
            let dir = self.path.parent().unwrap_or(Path::new("."));
            std::fs::File::open(dir)?.sync_all()
        })();
        if let Err(e) = written {
            let _ = std::fs::remove_file(&tmp);
            return Err(write(e));
        }
        Ok(text.len())
    }

    /// Moves an unreadable checkpoint aside (`checkpoint.json.bad-<unix seconds>`), so the
    /// next save does not overwrite what may be needed to understand it; keeps the newest few.
    pub fn set_aside(&self) -> std::io::Result<PathBuf> {
        let stamp = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_millis());
        let aside = self.path.with_extension(format!("json.bad-{stamp}"));
        std::fs::rename(&self.path, &aside)?;
        if let Some(dir) = self.path.parent() {
            let mut old: Vec<PathBuf> = std::fs::read_dir(dir)?
                .filter_map(Result::ok)
                .map(|e| e.path())
                .filter(|p| {
                    p.file_name()
                        .and_then(|n| n.to_str())
                        .is_some_and(|n| n.starts_with(&format!("{FILE_NAME}.bad-")))
                })
                .collect();
            old.sort();
            let excess = old.len().saturating_sub(KEPT_ASIDE);
            for p in &old[..excess] {
                let _ = std::fs::remove_file(p);
            }
        }
        Ok(aside)
    }

    pub fn remove(&self) -> std::io::Result<bool> {
        match std::fs::remove_file(&self.path) {
            Ok(()) => Ok(true),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(false),
            Err(e) => Err(e),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{
        metrics::{Owner, PodLabels},
        route::{Destination, Route},
        topology::TrafficClass,
    };

    fn sample() -> Checkpoint {
        let pod = PodLabels {
            namespace: "shop".into(),
            pod: "cart-7d9f".into(),
            pod_uid: "0b8e-uid".into(),
            workload_kind: "Deployment".into(),
            workload: "cart".into(),
        };
        Checkpoint {
            format: FORMAT,
            abi: agent_common::ABI_VERSION,
            maps: Some(MapsIdentity {
                boot_id: "b00t".into(),
                maps_id: 42,
            }),
            drained_epoch: Some(u32::MAX),
            lost_seen: [[1, 2], [3, 4]],
            saved_unix_seconds: 1_700_000_000,
            traffic: vec![TrafficTotal {
                labels: TrafficLabels {
                    owner: Owner::Pod,
                    pod,
                    destination: Destination {
                        class: TrafficClass::SameRegion,
                        service: Some("aws-s3".into()),
                        route: Route::NatGateway { cross_zone: true },
                    },
                    direction: Direction::Egress,
                },
                bytes: u64::MAX - 1,
                packets: 3,
                // Dollars must come back bit for bit.
                dollars: 0.1 + 0.2,
            }],
            kubecost: vec![KubecostTotal {
                direction: Direction::Ingress,
                labels: KubecostLabels {
                    pod_name: "cart-7d9f".into(),
                    namespace: "shop".into(),
                    internet: false,
                    same_region: true,
                    same_zone: false,
                    service: String::new(),
                    nat_gateway: true,
                },
                bytes: 12,
            }],
            counters: Counters {
                unpriced_bytes: 9,
                ..Counters::default()
            },
            held: vec![HeldBytes {
                identity: Identity::Pod {
                    uid: "u".into(),
                    container: None,
                },
                remote: Some("2001:db8::1".parse().unwrap()),
                outbound: false,
                direction: Direction::Ingress,
                bytes: 5,
                packets: 1,
                age_seconds: 1.5,
            }],
            pending_nat: vec![],
        }
    }

    #[test]
    fn a_checkpoint_round_trips_exactly() {
        let dir = std::env::temp_dir().join(format!("netcost-cp-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let store = CheckpointStore::in_dir(&dir);
        assert_eq!(store.load().unwrap(), None);
        let cp = sample();
        store.save(&cp).unwrap();
        assert_eq!(store.load().unwrap(), Some(cp));
        assert!(store.remove().unwrap());
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn a_checkpoint_goes_on_only_with_the_maps_it_was_written_for() {
        let ours = MapsIdentity {
            boot_id: "b00t".into(),
            maps_id: 42,
        };
        // sample()'s drained epoch is u32::MAX: the kernel at epoch 1 has that buffer idle.
        let decide = |origin: &MapsOrigin, other: Option<&Path>, cp: Option<Checkpoint>| {
            StartTotals::decide(origin, other, cp, &ours, 1)
        };
        match decide(&MapsOrigin::Adopted, None, Some(sample())) {
            StartTotals::Restored { drain, .. } => {
                assert_eq!(drain.map(|d| d.drained_epoch), Some(u32::MAX));
                assert_eq!(drain.unwrap().lost_seen[1].packets, 4);
            }
            other => panic!("{other:?}"),
        }
        // Maps of another boot or instance: their drain state says nothing about ours.
        let mut foreign = sample();
        foreign.maps.as_mut().unwrap().maps_id = 7;
        assert!(matches!(
            decide(&MapsOrigin::Adopted, None, Some(foreign.clone())),
            StartTotals::Reset {
                incompatible: false,
                ..
            }
        ));
        // New maps (after a reboot): the totals go on, the drain starts afresh.
        assert!(matches!(
            decide(&MapsOrigin::Created, None, Some(foreign)),
            StartTotals::Restored { drain: None, .. }
        ));
        assert!(matches!(
            decide(&MapsOrigin::Created, None, None),
            StartTotals::New
        ));
        let reset = decide(
            &MapsOrigin::Created,
            Some(Path::new("/sys/fs/bpf/netcost/v2")),
            Some(sample()),
        );
        assert!(
            matches!(&reset, StartTotals::Reset { reason, incompatible: true } if reason.contains("v2")),
            "{reset:?}"
        );
        let mut old_abi = sample();
        old_abi.abi = 1;
        assert_eq!(
            decide(&MapsOrigin::Adopted, None, Some(old_abi)).label(),
            "reset"
        );
        assert_eq!(
            decide(&MapsOrigin::Replaced("x".into()), None, Some(sample())).label(),
            "reset"
        );
    }

    #[test]
    fn a_checkpoint_older_than_the_last_drains_of_its_maps_is_not_restored() {
        let ours = MapsIdentity {
            boot_id: "b00t".into(),
            maps_id: 42,
        };
        let mut cp = sample();
        cp.drained_epoch = Some(10);
        for (epoch, restored) in [
            (11, true),
            (12, true),
            (13, false),
            (10, false),
            (200, false),
        ] {
            let t = StartTotals::decide(&MapsOrigin::Adopted, None, Some(cp.clone()), &ours, epoch);
            assert_eq!(
                matches!(t, StartTotals::Restored { .. }),
                restored,
                "epoch {epoch}: {t:?}"
            );
            if !restored {
                assert!(
                    matches!(&t, StartTotals::Reset { reason, .. } if reason.contains("stale")),
                    "{t:?}"
                );
            }
        }
        // Epochs wrap.
        cp.drained_epoch = Some(u32::MAX);
        assert!(matches!(
            StartTotals::decide(&MapsOrigin::Adopted, None, Some(cp), &ours, 1),
            StartTotals::Restored { .. }
        ));
    }

    #[test]
    fn an_unreadable_checkpoint_is_kept_aside() {
        let dir = std::env::temp_dir().join(format!("netcost-cp-aside-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        let store = CheckpointStore::in_dir(&dir);
        for i in 0..6 {
            std::fs::write(&store.path, format!("{{truncated {i}")).unwrap();
            assert!(store.load().is_err());
            let aside = store.set_aside().unwrap();
            assert_eq!(
                std::fs::read_to_string(&aside).unwrap(),
                format!("{{truncated {i}")
            );
            assert!(!store.path.exists());
            std::thread::sleep(std::time::Duration::from_millis(2));
        }
        let kept = std::fs::read_dir(&dir).unwrap().count();
        assert_eq!(kept, KEPT_ASIDE, "the newest few are kept");
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn a_damaged_or_foreign_checkpoint_is_an_error_naming_the_file() {
        let dir = std::env::temp_dir().join(format!("netcost-cp-bad-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let store = CheckpointStore::in_dir(&dir);
        std::fs::write(&store.path, "{\"format\": 1, \"abi\": 3").unwrap();
        let e = store.load().unwrap_err().to_string();
        assert!(e.contains("checkpoint.json") && e.contains("EOF"), "{e}");
        let mut cp = sample();
        cp.format = 99;
        std::fs::write(&store.path, serde_json::to_string(&cp).unwrap()).unwrap();
        let e = store.load().unwrap_err().to_string();
        assert!(e.contains("format 99"), "{e}");
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
