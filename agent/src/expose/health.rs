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

#[cfg(test)]
mod tests {
    use super::*;

    /// `/readyz` waits for the pod and node watches only: an EndpointSlice watch that never
    /// lists (no RBAC grant, a huge cluster) and the AWS sources (which it never reads) do not
    /// hold it back.
    #[test]
    fn readiness_waits_for_pods_and_nodes_not_for_the_optional_sources() {
        let kube = Arc::new(KubeHealth::default());
        let health = Health::new(Duration::from_secs(60), Some(kube.clone()));
        assert_eq!(health.readiness(), Err("not yet drained".into()));
        health.drained();
        kube.endpointslices.error();
        let not_ready = health.readiness().unwrap_err();
        assert!(
            not_ready.contains("pods not synced, nodes not synced"),
            "{not_ready}"
        );
        kube.pods.listed();
        assert!(health.readiness().unwrap_err().contains("nodes not synced"));
        kube.nodes.listed();
        assert!(!kube.endpointslices.synced());
        assert_eq!(health.readiness(), Ok(()));
    }
}
