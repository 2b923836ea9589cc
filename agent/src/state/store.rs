//! The checkpoint file: read bounded, replaced atomically and durably, set aside when it
//! cannot be read.

use std::path::{Path, PathBuf};

use super::{
    Checkpoint, CheckpointError, CheckpointMetrics, MapsIdentity, FILE_NAME, KEPT_ASIDE,
    MAX_CHECKPOINT_BYTES,
};

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

/// Writes the checkpoint at every drain, counting failures and logging them sparingly.
pub struct Saver {
    pub store: CheckpointStore,
    /// The kernel maps the checkpoint's drain state refers to.
    pub maps: MapsIdentity,
    metrics: CheckpointMetrics,
    failures: u64,
}

impl Saver {
    pub fn new(store: CheckpointStore, maps: MapsIdentity, metrics: CheckpointMetrics) -> Saver {
        Saver {
            store,
            maps,
            metrics,
            failures: 0,
        }
    }

    /// Writes `checkpoint`; false when it could not be written (counted and logged).
    pub fn save(&mut self, checkpoint: &Checkpoint) -> bool {
        match self.store.save(checkpoint) {
            Ok(size) => {
                self.metrics.saved(size);
                if self.failures > 0 {
                    tracing::info!(failures = self.failures, "checkpoint written again; the drained entries kept in the kernel meanwhile are now counted");
                }
                self.failures = 0;
                true
            }
            Err(e) => {
                self.metrics.not_saved();
                self.failures += 1;
                if self.failures == 1 || self.failures.is_power_of_two() {
                    tracing::warn!(error = %e, failures = self.failures, "checkpoint not written: nothing new is exposed and the drained entries stay in the kernel until it is");
                }
                false
            }
        }
    }
}
