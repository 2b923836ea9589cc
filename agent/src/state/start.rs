//! What a starting agent's totals go on from: the checkpoint, when it belongs to the maps the
//! kernel still counts into (or the maps are new), else zero, said why.

use std::path::Path;

use super::{Checkpoint, CheckpointStore, MapsIdentity};
use crate::{drain::DrainState, kernel::MapsOrigin};

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

impl StartTotals {
    /// Reads the checkpoint in `store` (if there is a store) and decides. A corrupt,
    /// truncated or newer checkpoint is kept aside for whoever looks into it, and the totals
    /// start again (restoring part of it could take a counter back).
    pub fn open(
        store: Option<&CheckpointStore>,
        origin: &MapsOrigin,
        other_layout: Option<&Path>,
        maps: &MapsIdentity,
        epoch: u32,
    ) -> StartTotals {
        match store.map(CheckpointStore::load).transpose() {
            Ok(checkpoint) => {
                StartTotals::decide(origin, other_layout, checkpoint.flatten(), maps, epoch)
            }
            Err(e) => {
                let reason = match store.map(CheckpointStore::set_aside) {
                    Some(Ok(p)) => format!("{e}; moved aside to {}", p.display()),
                    Some(Err(m)) => format!("{e}; could not move it aside: {m}"),
                    None => e.to_string(),
                };
                StartTotals::Reset {
                    reason,
                    incompatible: false,
                }
            }
        }
    }

    /// Where the drain of the adopted maps stood, said in the log.
    pub fn drain_state(&self) -> Option<DrainState> {
        match self {
            StartTotals::Reset {
                reason,
                incompatible: true,
            } => {
                tracing::warn!(%reason, "incompatible layout: starting fresh, the totals start from zero (a counter reset Prometheus sees)");
                None
            }
            StartTotals::Reset { reason, .. } => {
                tracing::warn!(%reason, "the totals start from zero");
                None
            }
            StartTotals::Restored { drain, .. } => *drain,
            StartTotals::New => None,
        }
    }
}
