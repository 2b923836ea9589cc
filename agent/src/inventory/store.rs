//! What the Kubernetes API says about this node's pods and about every node's place: the state
//! the watchers keep and the attribution and classification steps read.
//!
//! Only the fields netcost uses are kept (a Node object carries tens of KB of image lists; a pod
//! its whole spec), so memory grows with the number of pods and nodes, not with their size.

use std::{
    collections::HashMap,
    net::IpAddr,
    sync::{
        atomic::{AtomicBool, AtomicU64, Ordering},
        Arc, RwLock,
    },
    time::Duration,
};

use super::{region_of_zone, EndpointMeta, NodeMeta, PodMeta, SliceMeta};
use crate::vocab::{now_ms, Place};

/// A watch counts as current again when no error came for this long (longer than the longest
/// backoff), or at its next event.
const ERROR_QUIET: std::time::Duration = std::time::Duration::from_secs(35);

/// Whether one watch has listed everything and is current.
#[derive(Debug, Default)]
pub struct WatchHealth {
    listed: AtomicBool,
    last_error_ms: AtomicU64,
    last_event_ms: AtomicU64,
    /// When errors began while nothing was listed yet (0: no such error).
    failing_since_ms: AtomicU64,
}

impl WatchHealth {
    pub(crate) fn error(&self) {
        let now = now_ms();
        self.last_error_ms.store(now, Ordering::Relaxed);
        if !self.listed.load(Ordering::Relaxed) {
            let _ = self.failing_since_ms.compare_exchange(
                0,
                now,
                Ordering::Relaxed,
                Ordering::Relaxed,
            );
        }
    }

    /// Whether waiting for this watch is over: it listed everything, or it has failed for
    /// longer than `patience` without ever listing (e.g. a permission the RBAC does not grant),
    /// so what depends on it goes on without it.
    pub fn settled(&self, patience: Duration) -> bool {
        if self.listed.load(Ordering::Relaxed) {
            return true;
        }
        let since = self.failing_since_ms.load(Ordering::Relaxed);
        since != 0 && now_ms().saturating_sub(since) > patience.as_millis() as u64
    }

    pub(crate) fn event(&self) {
        self.last_event_ms.store(now_ms(), Ordering::Relaxed);
    }

    pub(crate) fn listed(&self) {
        self.listed.store(true, Ordering::Relaxed);
        self.event();
    }

    pub fn synced(&self) -> bool {
        if !self.listed.load(Ordering::Relaxed) {
            return false;
        }
        let error = self.last_error_ms.load(Ordering::Relaxed);
        error == 0
            || error < self.last_event_ms.load(Ordering::Relaxed)
            || now_ms().saturating_sub(error) > ERROR_QUIET.as_millis() as u64
    }
}

/// The state of the watches, for `/readyz` and the metrics.
#[derive(Debug, Default)]
pub struct KubeHealth {
    pub pods: WatchHealth,
    pub nodes: WatchHealth,
    /// Optional: `/readyz` does not wait for it (see `settled`).
    pub endpointslices: WatchHealth,
}

impl KubeHealth {
    /// The required watches (pods, nodes) are synced.
    pub fn synced(&self) -> bool {
        self.pods.synced() && self.nodes.synced()
    }

    /// What is not synced, for the `/readyz` body.
    pub fn describe(&self) -> String {
        let state = |w: &WatchHealth| if w.synced() { "synced" } else { "not synced" };
        format!("pods {}, nodes {}", state(&self.pods), state(&self.nodes))
    }
}

/// One watched collection: the live map and, during a (re)list, the buffer that replaces it
/// atomically when the list is complete (so a relist after 410 Gone never shows a half list).
#[derive(Debug)]
struct Collection<T> {
    live: HashMap<String, T>,
    relisting: Option<HashMap<String, T>>,
    synced: bool,
    generation: u64,
}

impl<T> Default for Collection<T> {
    fn default() -> Self {
        Collection {
            live: HashMap::new(),
            relisting: None,
            synced: false,
            generation: 0,
        }
    }
}

impl<T> Collection<T> {
    fn init(&mut self) {
        self.relisting = Some(HashMap::new());
    }

    fn apply(&mut self, key: String, value: T) {
        match &mut self.relisting {
            Some(buffer) => {
                buffer.insert(key, value);
            }
            None => {
                self.live.insert(key, value);
                self.generation += 1;
            }
        }
    }

    fn delete(&mut self, key: &str) -> Option<T> {
        let removed = self.live.remove(key);
        if let Some(buffer) = &mut self.relisting {
            buffer.remove(key);
        }
        self.generation += 1;
        removed
    }

    /// Ends a (re)list: returns what the new list no longer has.
    fn init_done(&mut self) -> Vec<T> {
        let Some(buffer) = self.relisting.take() else {
            return Vec::new();
        };
        let old = std::mem::replace(&mut self.live, buffer);
        self.synced = true;
        self.generation += 1;
        old.into_iter()
            .filter(|(k, _)| !self.live.contains_key(k))
            .map(|(_, v)| v)
            .collect()
    }
}

/// This node's pods, every node's place and every EndpointSlice's endpoints, as last seen from
/// the API.
#[derive(Debug, Default)]
pub struct Inventory {
    pods: Collection<Arc<PodMeta>>,
    nodes: Collection<Arc<NodeMeta>>,
    slices: Collection<Arc<SliceMeta>>,
    /// Pod IP → UID of the running pod that holds it now.
    pod_ips: HashMap<IpAddr, String>,
}

pub type SharedInventory = Arc<RwLock<Inventory>>;

/// The Kubernetes side of attribution and classification: the inventory the watchers keep, our
/// node's name and what is watched.
pub struct KubeView {
    pub inventory: SharedInventory,
    pub node_name: String,
    /// Whether other nodes are watched (else only the config's prefixes place addresses).
    pub watch_nodes: bool,
    /// Whether EndpointSlices are watched (they place Service backends).
    pub watch_endpointslices: bool,
    pub health: Arc<KubeHealth>,
}

impl Inventory {
    pub fn shared() -> SharedInventory {
        Arc::new(RwLock::new(Inventory::default()))
    }

    pub fn pods_init(&mut self) {
        self.pods.init();
    }

    pub fn pod_apply(&mut self, meta: PodMeta) {
        let meta = Arc::new(meta);
        let relisting = self.pods.relisting.is_some();
        self.pods.apply(meta.uid.clone(), meta.clone());
        if !relisting {
            self.index_pod_ips(&meta);
        }
    }

    pub fn pod_delete(&mut self, uid: &str) {
        if let Some(old) = self.pods.delete(uid) {
            self.unindex_pod_ips(&old);
        }
    }

    pub fn pods_init_done(&mut self) {
        let gone = self.pods.init_done();
        for old in &gone {
            self.unindex_pod_ips(old);
        }
        let pods: Vec<_> = self.pods.live.values().cloned().collect();
        for pod in &pods {
            self.index_pod_ips(pod);
        }
    }

    /// A pod that ended gives its IPs back; a running pod takes them (the newest claim wins, so a
    /// reused IP points at the pod that has it now).
    fn index_pod_ips(&mut self, pod: &PodMeta) {
        if pod.finished {
            self.unindex_pod_ips(pod);
            return;
        }
        for ip in &pod.ips {
            self.pod_ips.insert(*ip, pod.uid.clone());
        }
    }

    fn unindex_pod_ips(&mut self, pod: &PodMeta) {
        for ip in &pod.ips {
            if self.pod_ips.get(ip) == Some(&pod.uid) {
                self.pod_ips.remove(ip);
            }
        }
    }

    pub fn pods_synced(&self) -> bool {
        self.pods.synced
    }

    pub fn pod(&self, uid: &str) -> Option<&Arc<PodMeta>> {
        self.pods.live.get(uid)
    }

    pub fn pod_by_ip(&self, ip: IpAddr) -> Option<&Arc<PodMeta>> {
        self.pods.live.get(self.pod_ips.get(&ip)?)
    }

    pub fn pods(&self) -> impl Iterator<Item = &Arc<PodMeta>> {
        self.pods.live.values()
    }

    /// Changes whenever a pod is added, changed or removed.
    pub fn pods_generation(&self) -> u64 {
        self.pods.generation
    }

    pub fn pod_count(&self) -> usize {
        self.pods.live.len()
    }

    pub fn nodes_init(&mut self) {
        self.nodes.init();
    }

    pub fn node_apply(&mut self, meta: NodeMeta) {
        self.nodes.apply(meta.name.clone(), Arc::new(meta));
    }

    pub fn node_delete(&mut self, name: &str) {
        self.nodes.delete(name);
    }

    pub fn nodes_init_done(&mut self) {
        self.nodes.init_done();
    }

    pub fn nodes_synced(&self) -> bool {
        self.nodes.synced
    }

    /// Changes whenever the set of nodes or a node's place does.
    pub fn nodes_generation(&self) -> u64 {
        self.nodes.generation
    }

    pub fn node(&self, name: &str) -> Option<&Arc<NodeMeta>> {
        self.nodes.live.get(name)
    }

    pub fn node_count(&self) -> usize {
        self.nodes.live.len()
    }

    pub fn slices_init(&mut self) {
        self.slices.init();
    }

    pub fn slice_apply(&mut self, meta: SliceMeta) {
        self.slices.apply(meta.key(), Arc::new(meta));
    }

    pub fn slice_delete(&mut self, key: &str) {
        self.slices.delete(key);
    }

    pub fn slices_init_done(&mut self) {
        self.slices.init_done();
    }

    pub fn slices_synced(&self) -> bool {
        self.slices.synced
    }

    /// Changes whenever an EndpointSlice is added, changed or removed.
    pub fn slices_generation(&self) -> u64 {
        self.slices.generation
    }

    pub fn slice_count(&self) -> usize {
        self.slices.live.len()
    }

    pub fn endpoint_count(&self) -> usize {
        self.slices.live.values().map(|s| s.endpoints.len()).sum()
    }

    /// Every EndpointSlice known.
    pub fn slices(&self) -> impl Iterator<Item = &Arc<SliceMeta>> {
        self.slices.live.values()
    }

    /// Where an endpoint is: its node's place when the node is known (zone ID included), else
    /// the zone the slice gives, in the region its name says.
    pub fn endpoint_place(&self, e: &EndpointMeta) -> Option<Place> {
        if let Some(node) = e.node.as_deref().and_then(|n| self.node(n)) {
            if node.place.zone.is_some() || node.place.zone_id.is_some() {
                return Some(node.place.clone());
            }
        }
        let zone = e.zone.as_deref()?;
        Some(Place {
            zone: Some(zone.to_owned()),
            zone_id: None,
            region: region_of_zone(zone).map(str::to_owned),
        })
    }

    /// Every node's address the API knows (node → addresses, pod CIDRs, place).
    pub fn nodes(&self) -> impl Iterator<Item = &Arc<NodeMeta>> {
        self.nodes.live.values()
    }

    /// The IPs running pods hold now.
    pub fn pod_ips(&self) -> impl Iterator<Item = &IpAddr> {
        self.pod_ips.keys()
    }

    /// Our own place from our Node's labels, when the API knows our Node.
    pub fn node_place(&self, own_node: Option<&str>) -> Place {
        own_node
            .and_then(|n| self.node(n))
            .map(|n| n.place.clone())
            .unwrap_or_default()
    }

    /// Nodes' ExternalIPs with their region.
    pub fn public_addresses(&self) -> Vec<(IpAddr, Option<String>)> {
        self.nodes
            .live
            .values()
            .flat_map(|n| n.external.iter().map(|ip| (*ip, n.place.region.clone())))
            .collect()
    }
}
