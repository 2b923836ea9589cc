//! What `/healthz` and `/readyz` report: the drain is alive (a drain succeeded lately), and
//! the agent is ready (programs attached, one drain done, the Kubernetes inventory synced).

use std::{
    sync::{
        atomic::{AtomicBool, AtomicU64, Ordering},
        Arc,
    },
    time::Duration,
};

use crate::{inventory::KubeHealth, vocab::now_ms};

/// What the probes report.
pub struct Health {
    /// Programs attached and one drain done.
    ready: AtomicBool,
    /// Unix time (ms) of the last successful drain.
    last_drain_ms: AtomicU64,
    /// The drain loop is considered stuck when no drain succeeded for this long.
    stale_after: Duration,
    /// The Kubernetes watches, when the agent uses the API.
    kube: Option<Arc<KubeHealth>>,
}

impl Health {
    pub fn new(stale_after: Duration, kube: Option<Arc<KubeHealth>>) -> Health {
        Health {
            ready: AtomicBool::new(false),
            last_drain_ms: AtomicU64::new(now_ms()),
            stale_after,
            kube,
        }
    }

    /// Ready: programs attached, one drain done, and the pod and node inventories synced.
    pub fn readiness(&self) -> Result<(), String> {
        if !self.ready.load(Ordering::Relaxed) {
            return Err("not yet drained".into());
        }
        match &self.kube {
            Some(k) if !k.synced() => Err(format!("kubernetes inventory: {}", k.describe())),
            _ => Ok(()),
        }
    }

    pub fn drained(&self) {
        self.last_drain_ms.store(now_ms(), Ordering::Relaxed);
        self.ready.store(true, Ordering::Relaxed);
    }

    pub fn alive(&self) -> bool {
        now_ms().saturating_sub(self.last_drain_ms.load(Ordering::Relaxed))
            <= self.stale_after.as_millis() as u64
    }
}
