//! Attribute: whose bytes they are. A cgroup id becomes a pod (by its cgroup path) or the node;
//! a pod becomes its names (namespace, pod, workload) from the inventory; bytes whose pod the API
//! has not named yet are held until it does (bounded, for `kubernetes.hold_unknown_seconds`).
//!
//! In: drained entries' cgroup ids, the inventory. Out: [`Whose`] for each entry (turned into
//! its `TrafficLabels` once classified), held bytes, and the pods that appeared or are forgotten
//! after their grace period (whose series `expose` creates and removes).

pub mod hold;
pub mod identity;
pub mod pods;

use std::{
    collections::HashMap,
    time::{Duration, Instant},
};

use agent_common::Counter;

pub use hold::{Held, HeldBytes, HeldKey, Hold};
pub use identity::{find_cgroup2_mount, parse_cgroup_path, CgroupResolver, Identity};
pub use pods::{PodBook, PodChanges};

use crate::{
    inventory::{Inventory, PodMeta},
    vocab::{owned, Destination, Direction, Owner, PodLabels, TrafficLabels},
};

/// How often the cgroup tree is walked even when no unknown id shows up: new pods get their zero
/// series and gone pods start their grace period.
const CGROUP_REFRESH: Duration = Duration::from_secs(10);

/// Who bytes belong to.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Whose {
    Pod(PodLabels),
    /// A pod the API has not named yet (by the UID in its cgroup path).
    Unnamed(String),
    Node,
    Unknown,
}

impl Whose {
    /// The series `destination` bytes of this owner go to (an unnamed pod by its UID alone).
    pub fn labels(&self, destination: Destination, direction: Direction) -> TrafficLabels {
        match self {
            Whose::Pod(pod) => TrafficLabels::pod(pod, destination, direction),
            Whose::Unnamed(uid) => {
                TrafficLabels::pod(&PodLabels::uid_only(uid), destination, direction)
            }
            Whose::Node => TrafficLabels::node(Owner::Node, destination, direction),
            Whose::Unknown => TrafficLabels::node(Owner::Unknown, destination, direction),
        }
    }
}

pub struct Attributor {
    resolver: CgroupResolver,
    held: Hold<HeldKey>,
    pods: PodBook,
    /// How long bytes may wait for their pod's names or for the topology.
    hold_max: Duration,
}

impl Attributor {
    pub fn new(resolver: CgroupResolver, series_grace: Duration, hold_max: Duration) -> Attributor {
        Attributor {
            resolver,
            held: Hold::default(),
            pods: PodBook::new(series_grace),
            hold_max,
        }
    }

    /// Walks the cgroup tree again if it was not walked lately.
    pub fn refresh(&mut self) {
        self.resolver.refresh_if_older(CGROUP_REFRESH);
    }

    pub fn resolver_mut(&mut self) -> &mut CgroupResolver {
        &mut self.resolver
    }

    pub fn identity(&mut self, cgroup_id: u64) -> Identity {
        self.resolver.resolve(cgroup_id)
    }

    /// Who `identity` is now: a pod by its names from the API (or, just deleted, by the names
    /// it had), or not named yet.
    pub fn whose(&self, inventory: Option<&Inventory>, identity: &Identity) -> Whose {
        let uid = match identity {
            Identity::Pod { uid, .. } => uid,
            Identity::Node => return Whose::Node,
            Identity::Unknown => return Whose::Unknown,
        };
        let Some(inventory) = inventory else {
            return Whose::Pod(PodLabels::uid_only(uid));
        };
        if let Some(pod) = inventory.pod(uid) {
            return Whose::Pod(labels_of(pod));
        }
        match self.pods.recent(uid) {
            Some(labels) => Whose::Pod(labels.clone()),
            None => Whose::Unnamed(uid.clone()),
        }
    }

    /// Holds bytes until a later drain if they may still wait (younger than the hold's
    /// maximum, and room in the hold); false: they must be counted now with what is known.
    pub fn wait(&mut self, key: &HeldKey, counter: &Counter, since: Instant, now: Instant) -> bool {
        now.duration_since(since) < self.hold_max && self.held.add(key, counter, since)
    }

    /// Everything held, to try again.
    pub fn take_held(&mut self) -> HashMap<HeldKey, Held> {
        self.held.take()
    }

    pub fn held(&self) -> &Hold<HeldKey> {
        &self.held
    }

    pub fn restore_held(&mut self, held: &[HeldBytes], now: Instant) {
        self.held.restore(held, now);
    }

    /// Records that bytes went to `pod`; true when its series are new.
    pub fn note_pod(&mut self, pod: &PodLabels) -> bool {
        self.pods.note(pod)
    }

    /// The pods that exist now (from the API, else from the cgroup tree), against those known.
    pub fn sync_pods(&mut self, inventory: Option<&Inventory>, now: Instant) -> PodChanges {
        let live: Vec<PodLabels> = match inventory {
            None => self
                .resolver
                .live_pods()
                .iter()
                .map(|u| PodLabels::uid_only(u))
                .collect(),
            // The API deletes a pod object once the kubelet reports its containers gone: from
            // then on the pod is gone (late bytes still find its labels in the pod book).
            Some(inv) => inv.pods().map(|p| labels_of(p)).collect(),
        };
        self.pods.sync(live, now)
    }

    pub fn pods(&self) -> &PodBook {
        &self.pods
    }
}

/// A pod's labels, from what the API said (cleaned: every field may be any string).
pub fn labels_of(pod: &PodMeta) -> PodLabels {
    PodLabels {
        namespace: owned(&pod.namespace),
        pod: owned(&pod.name),
        pod_uid: owned(&pod.uid),
        workload_kind: owned(&pod.workload.kind),
        workload: owned(&pod.workload.name),
    }
}
