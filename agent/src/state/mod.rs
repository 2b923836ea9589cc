//! Persist: the agent's totals, written at every drain before the drained entries are deleted
//! from the kernel, so that a restarted agent goes on from exactly where the last one stopped
//! (see `drain` for how the two are kept in step).
//!
//! One JSON file, replaced atomically and durably (written beside, fsynced, renamed, the
//! directory fsynced): a crash leaves either the old checkpoint or the new one, never half of
//! one, and nothing is exposed before the checkpoint that holds it is on the disk. A file that
//! cannot be read as a checkpoint of this format is moved aside, not overwritten, and the totals
//! start from zero.

use std::path::PathBuf;

use prometheus_client::{
    encoding::EncodeLabelSet,
    metrics::{counter::Counter, family::Family, gauge::Gauge},
    registry::Unit,
};
use serde::{Deserialize, Serialize};

use crate::{
    attribute::HeldBytes,
    classify::pending::PendingConnection,
    drain::DrainState,
    expose::{DestinationTotal, Totals},
    vocab::Registries,
};

mod start;
mod store;
#[cfg(test)]
mod tests;

pub use start::StartTotals;
pub use store::{CheckpointStore, Saver};

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
pub(crate) const KEPT_ASIDE: usize = 4;
/// A checkpoint larger than this is not read (the totals of 250 pods take a few MB).
pub(crate) const MAX_CHECKPOINT_BYTES: u64 = 256 * 1024 * 1024;

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
    /// What the traffic group counted (its series and counters), as it gives them.
    #[serde(flatten)]
    pub totals: Totals,
    /// Bytes drained but not attributed yet (their pod or the topology was not known).
    pub held: Vec<HeldBytes>,
    /// Bytes of Service connections waiting for conntrack to name their real remote end.
    pub pending_nat: Vec<PendingConnection>,
    /// The destination series and their ranking (absent from checkpoints of earlier agents).
    #[serde(default)]
    pub destinations: Vec<DestinationTotal>,
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
                .map(|[bytes, packets]| agent_common::Counter { bytes, packets }),
        })
    }
}

/// Where a drain's totals stand.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Durability {
    /// In the checkpoint on the disk: they may be exposed.
    Saved,
    /// Not written (the checkpoint failed): they must not be exposed yet.
    NotSaved,
    /// There is no checkpoint (no state directory): exposed as they are.
    Volatile,
}

impl Durability {
    pub fn exposable(self) -> bool {
        self != Durability::NotSaved
    }
}

/// The checkpoint group: how saving goes, and how the agent started.
#[derive(Clone, Default)]
pub struct CheckpointMetrics {
    errors: Counter,
    size: Gauge,
    start_info: Family<StartLabels, Gauge>,
}

/// How this agent started: whether it took over the kernel's maps and its predecessor's totals.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct StartLabels {
    /// `created`, `adopted` (pinned by an earlier agent) or `replaced` (incompatible layout).
    maps: &'static str,
    /// `restored` (the checkpoint's totals go on) or `reset` (they start from zero).
    totals: &'static str,
    /// `pinned`, or `unpinned` (a restart loses what was counted since the last drain).
    pins: &'static str,
}

impl CheckpointMetrics {
    pub fn register(registries: &mut Registries) -> CheckpointMetrics {
        let m = CheckpointMetrics::default();
        let r = registries.live();
        r.register(
            "checkpoint_errors",
            "Checkpoints of the totals that could not be written (a restart then goes on from an older one)",
            m.errors.clone(),
        );
        r.register_with_unit(
            "checkpoint_size",
            "Size of the last checkpoint of the totals",
            Unit::Bytes,
            m.size.clone(),
        );
        r.register(
            "start_info",
            "How the agent started: maps created, adopted or replaced; totals restored or reset; pinned or not (value is always 1)",
            m.start_info.clone(),
        );
        m
    }

    fn saved(&self, size: usize) {
        self.size.set(size as i64);
    }

    fn not_saved(&self) {
        self.errors.inc();
    }

    pub fn started(&self, maps: &'static str, totals: &'static str, pinned: bool) {
        let pins = if pinned { "pinned" } else { "unpinned" };
        self.start_info
            .get_or_create(&StartLabels { maps, totals, pins })
            .set(1);
    }
}
