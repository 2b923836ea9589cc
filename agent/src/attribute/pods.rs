//! The pods whose bytes have been attributed, and since when each is gone: a deleted pod keeps
//! its names for the grace period (late bytes still find them, its series keep their final
//! values), then it is forgotten and its series are removed.

use std::{
    collections::{HashMap, HashSet},
    time::{Duration, Instant},
};

use crate::vocab::PodLabels;

struct Pod {
    /// The label sets the pod's series carry (more than one only if its names changed).
    labels: Vec<PodLabels>,
    gone_since: Option<Instant>,
}

/// What a sync found.
#[derive(Debug, Default)]
pub struct PodChanges {
    /// Label sets seen for the first time: their zero series are due.
    pub appeared: Vec<PodLabels>,
    /// Pods gone for longer than the grace period, with every label set they had.
    pub forgotten: Vec<(String, Vec<PodLabels>)>,
}

pub struct PodBook {
    pods: HashMap<String, Pod>,
    grace: Duration,
}

impl PodBook {
    pub fn new(grace: Duration) -> PodBook {
        PodBook {
            pods: HashMap::new(),
            grace,
        }
    }

    /// Records that bytes go to `labels`; true the first time this label set is seen.
    pub fn note(&mut self, labels: &PodLabels) -> bool {
        let pod = self
            .pods
            .entry(labels.pod_uid.clone())
            .or_insert_with(|| Pod {
                labels: Vec::new(),
                gone_since: None,
            });
        if pod.labels.contains(labels) {
            return false;
        }
        pod.labels.push(labels.clone());
        true
    }

    /// The names a pod had when last seen (a pod just deleted from the API).
    pub fn recent(&self, uid: &str) -> Option<&PodLabels> {
        self.pods.get(uid).and_then(|p| p.labels.last())
    }

    /// Takes the pods that exist now: new ones are noted, the others start (or go on with)
    /// their grace period, and those past it are forgotten.
    pub fn sync(&mut self, live: impl IntoIterator<Item = PodLabels>, now: Instant) -> PodChanges {
        let mut changes = PodChanges::default();
        let mut live_uids = HashSet::new();
        for labels in live {
            if self.note(&labels) {
                changes.appeared.push(labels.clone());
            }
            live_uids.insert(labels.pod_uid);
        }
        let grace = self.grace;
        self.pods.retain(|uid, pod| {
            if live_uids.contains(uid) {
                pod.gone_since = None;
                return true;
            }
            let since = *pod.gone_since.get_or_insert(now);
            if now.duration_since(since) >= grace {
                changes
                    .forgotten
                    .push((uid.clone(), std::mem::take(&mut pod.labels)));
                return false;
            }
            true
        });
        changes
    }

    /// Every label set of every pod known.
    pub fn labels(&self) -> impl Iterator<Item = &PodLabels> {
        self.pods.values().flat_map(|p| p.labels.iter())
    }

    pub fn len(&self) -> usize {
        self.pods.len()
    }

    pub fn is_empty(&self) -> bool {
        self.pods.is_empty()
    }
}
