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

use k8s_openapi::api::{
    core::v1::{Node, Pod},
    discovery::v1::EndpointSlice,
};

use crate::topology::{Cidr, Layer, Place, PlaceSource, StaticTopology, Tier};

pub const ZONE_LABEL: &str = "topology.kubernetes.io/zone";
pub const REGION_LABEL: &str = "topology.kubernetes.io/region";
pub const ZONE_ID_LABEL: &str = "topology.k8s.aws/zone-id";
/// The label the EndpointSlice controller puts on a Service's slices.
pub const SERVICE_NAME_LABEL: &str = "kubernetes.io/service-name";

/// The workload a pod belongs to: its top-level controller.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct Workload {
    /// `Deployment`, `StatefulSet`, `DaemonSet`, `Job`, `CronJob`, `ReplicaSet`, … or `Pod` for a
    /// pod without controller (then `name` is the pod's name).
    pub kind: String,
    pub name: String,
}

/// An owner one step up: the pod's controller reference, to be resolved to a workload.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct OwnerRef {
    pub namespace: String,
    pub kind: String,
    pub name: String,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PodMeta {
    pub uid: String,
    pub namespace: String,
    pub name: String,
    pub workload: Workload,
    pub host_network: bool,
    /// Pod IPs (empty for hostNetwork pods: theirs is the node's, shared by many).
    pub ips: Vec<IpAddr>,
    /// Container runtime id (without `containerd://`) → container name.
    pub containers: Vec<(String, String)>,
    /// The pod has ended (Succeeded/Failed): its IPs may already belong to another pod.
    pub finished: bool,
}

impl PodMeta {
    pub fn container_name(&self, id: &str) -> Option<&str> {
        self.containers
            .iter()
            .find(|(cid, _)| cid == id)
            .map(|(_, n)| n.as_str())
    }
}

/// The controller reference of a pod, if it has one.
pub fn controller_of(pod: &Pod) -> Option<OwnerRef> {
    let refs = pod.metadata.owner_references.as_ref()?;
    let owner = refs
        .iter()
        .find(|r| r.controller == Some(true))
        .or(refs.first())?;
    Some(OwnerRef {
        namespace: pod.metadata.namespace.clone().unwrap_or_default(),
        kind: owner.kind.clone(),
        name: owner.name.clone(),
    })
}

/// What a pod's workload is without asking the API any further: controllers that are workloads
/// themselves map directly; a ReplicaSet or Job needs its own owner looked up (see
/// `k8s::OwnerResolver`), and this is the answer when that lookup is impossible.
pub fn direct_workload(pod: &Pod, owner: Option<&OwnerRef>) -> Workload {
    match owner {
        Some(o) => {
            // The Deployment controller names its ReplicaSets `<deployment>-<pod-template-hash>`
            // and labels their pods with that hash: a deterministic fallback when the
            // ReplicaSet cannot be read.
            if o.kind == "ReplicaSet" {
                let hash = pod
                    .metadata
                    .labels
                    .as_ref()
                    .and_then(|l| l.get("pod-template-hash"));
                if let Some(prefix) = hash.and_then(|h| o.name.strip_suffix(&format!("-{h}"))) {
                    return Workload {
                        kind: "Deployment".into(),
                        name: prefix.to_owned(),
                    };
                }
            }
            Workload {
                kind: o.kind.clone(),
                name: o.name.clone(),
            }
        }
        None => Workload {
            kind: "Pod".into(),
            name: pod.metadata.name.clone().unwrap_or_default(),
        },
    }
}

/// The fields of a Pod netcost keeps. `None` for an object without UID or name (not a real pod).
pub fn pod_meta(pod: &Pod, workload: Workload) -> Option<PodMeta> {
    let uid = pod.metadata.uid.clone()?;
    let name = pod.metadata.name.clone()?;
    let spec = pod.spec.as_ref();
    let status = pod.status.as_ref();
    let host_network = spec.and_then(|s| s.host_network).unwrap_or(false);
    let mut ips = Vec::new();
    if !host_network {
        if let Some(status) = status {
            for ip in status.pod_ips.iter().flatten() {
                if let Ok(ip) = ip.ip.parse::<IpAddr>() {
                    ips.push(ip);
                }
            }
            if let Some(ip) = status.pod_ip.as_deref().and_then(|ip| ip.parse().ok()) {
                if !ips.contains(&ip) {
                    ips.push(ip);
                }
            }
        }
    }
    let mut containers = Vec::new();
    if let Some(status) = status {
        for cs in status
            .container_statuses
            .iter()
            .flatten()
            .chain(status.init_container_statuses.iter().flatten())
            .chain(status.ephemeral_container_statuses.iter().flatten())
        {
            if let Some(id) = cs.container_id.as_deref() {
                // `containerd://<id>`, `cri-o://<id>`, `docker://<id>`
                let id = id.rsplit_once("://").map_or(id, |(_, id)| id);
                containers.push((id.to_owned(), cs.name.clone()));
            }
        }
    }
    let phase = status.and_then(|s| s.phase.as_deref());
    Some(PodMeta {
        uid,
        namespace: pod.metadata.namespace.clone().unwrap_or_default(),
        name,
        workload,
        host_network,
        ips,
        containers,
        finished: matches!(phase, Some("Succeeded" | "Failed")),
    })
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct NodeMeta {
    pub name: String,
    pub place: Place,
    /// InternalIP and ExternalIP addresses.
    pub addresses: Vec<IpAddr>,
    /// The ExternalIP addresses among them (public or Elastic IPs).
    pub external: Vec<IpAddr>,
    pub pod_cidrs: Vec<Cidr>,
}

/// The fields of a Node netcost keeps; malformed addresses or CIDRs are skipped (and named in the
/// returned list of problems, which the caller logs once per node change).
pub fn node_meta(node: &Node) -> (NodeMeta, Vec<String>) {
    let mut problems = Vec::new();
    let labels = node.metadata.labels.as_ref();
    let label = |k: &str| {
        labels
            .and_then(|l| l.get(k))
            .filter(|v| !v.is_empty())
            .cloned()
    };
    let place = Place {
        zone: label(ZONE_LABEL),
        zone_id: label(ZONE_ID_LABEL),
        region: label(REGION_LABEL),
    };
    let mut addresses = Vec::new();
    let mut external = Vec::new();
    for a in node
        .status
        .as_ref()
        .and_then(|s| s.addresses.as_ref())
        .into_iter()
        .flatten()
    {
        if a.type_ != "InternalIP" && a.type_ != "ExternalIP" {
            continue;
        }
        match a.address.parse::<IpAddr>() {
            Ok(ip) => {
                addresses.push(ip);
                if a.type_ == "ExternalIP" {
                    external.push(ip);
                }
            }
            Err(_) => problems.push(format!(
                "status.addresses: {:?} is not an IP address",
                a.address
            )),
        }
    }
    let spec = node.spec.as_ref();
    let mut pod_cidrs = Vec::new();
    let listed = spec.and_then(|s| s.pod_cidrs.clone()).unwrap_or_default();
    for text in listed.iter().chain(spec.and_then(|s| s.pod_cidr.as_ref())) {
        match text.parse::<Cidr>() {
            Ok(c) if !pod_cidrs.contains(&c) => pod_cidrs.push(c),
            Ok(_) => {}
            Err(e) => problems.push(format!("spec.podCIDRs: {text:?}: {e}")),
        }
    }
    (
        NodeMeta {
            external,
            name: node.metadata.name.clone().unwrap_or_default(),
            place,
            addresses,
            pod_cidrs,
        },
        problems,
    )
}

/// One endpoint of an EndpointSlice: an address, where it is and, when the slice says it, the
/// pod behind it. Only what placing and naming a destination needs is kept.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct EndpointMeta {
    pub addr: IpAddr,
    /// `nodeName`: the node the endpoint runs on (its zone ID comes from that Node).
    pub node: Option<Arc<str>>,
    /// `zone`: the zone name, when the node is not known.
    pub zone: Option<Arc<str>>,
    /// `targetRef` of kind Pod: the pod's name (in the slice's namespace).
    pub pod: Option<Arc<str>>,
}

/// The fields of an EndpointSlice netcost keeps.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SliceMeta {
    pub namespace: Arc<str>,
    pub name: String,
    /// The Service it belongs to (`kubernetes.io/service-name`); `None` for a slice of no Service.
    pub service: Option<Arc<str>>,
    pub endpoints: Vec<EndpointMeta>,
}

impl SliceMeta {
    pub fn key(&self) -> String {
        slice_key(&self.namespace, &self.name)
    }
}

/// How the inventory keys an EndpointSlice: `namespace/name`.
pub fn slice_key(namespace: &str, name: &str) -> String {
    format!("{namespace}/{name}")
}

/// Shares the few distinct strings of many objects (zone names, node names, namespaces): 20,000
/// endpoints name a few hundred nodes.
#[derive(Debug, Default)]
pub struct Interner {
    strings: std::collections::HashSet<Arc<str>>,
    since_prune: usize,
}

impl Interner {
    pub fn get(&mut self, s: &str) -> Arc<str> {
        if let Some(a) = self.strings.get(s) {
            return a.clone();
        }
        // Strings nothing holds any more (deleted nodes, namespaces) go, now and then.
        self.since_prune += 1;
        if self.since_prune >= 4096 {
            self.since_prune = 0;
            self.strings.retain(|a| Arc::strong_count(a) > 1);
        }
        let a: Arc<str> = Arc::from(s);
        self.strings.insert(a.clone());
        a
    }
}

/// The fields of an EndpointSlice netcost keeps; FQDN slices, unparsable addresses and objects
/// without a name are dropped (named in the returned problems).
pub fn slice_meta(slice: &EndpointSlice, names: &mut Interner) -> (Option<SliceMeta>, Vec<String>) {
    let mut problems = Vec::new();
    let Some(name) = slice.metadata.name.clone() else {
        return (None, vec!["an EndpointSlice without a name".into()]);
    };
    if slice.address_type != "IPv4" && slice.address_type != "IPv6" {
        // FQDN slices carry names, not addresses.
        return (None, problems);
    }
    let namespace = names.get(slice.metadata.namespace.as_deref().unwrap_or_default());
    let service = slice
        .metadata
        .labels
        .as_ref()
        .and_then(|l| l.get(SERVICE_NAME_LABEL))
        .filter(|s| !s.is_empty())
        .map(|s| names.get(s));
    let mut endpoints = Vec::new();
    for e in &slice.endpoints {
        let node = e
            .node_name
            .as_deref()
            .filter(|n| !n.is_empty())
            .map(|n| names.get(n));
        let zone = e
            .zone
            .as_deref()
            .filter(|z| !z.is_empty())
            .map(|z| names.get(z));
        let pod = e
            .target_ref
            .as_ref()
            .filter(|r| r.kind.as_deref() == Some("Pod"))
            .and_then(|r| r.name.as_deref())
            .map(Arc::<str>::from);
        for text in &e.addresses {
            match text.parse::<IpAddr>() {
                Ok(addr) => endpoints.push(EndpointMeta {
                    addr,
                    node: node.clone(),
                    zone: zone.clone(),
                    pod: pod.clone(),
                }),
                Err(_) => problems.push(format!(
                    "endpoints[].addresses: {text:?} is not an IP address"
                )),
            }
        }
    }
    (
        Some(SliceMeta {
            namespace,
            name,
            service,
            endpoints,
        }),
        problems,
    )
}

/// The AWS region of an AWS zone name: `us-east-1a` → `us-east-1`, `us-gov-west-1b` →
/// `us-gov-west-1`, a Local Zone `us-east-1-bos-1a` → its parent `us-east-1`. `None` for a name
/// that is not shaped like an AWS zone.
pub fn region_of_zone(zone: &str) -> Option<&str> {
    let mut end = 0;
    for (i, part) in zone.split('-').enumerate() {
        let start = end + usize::from(i > 0);
        let digits = part.bytes().take_while(u8::is_ascii_digit).count();
        if i >= 2 && digits > 0 {
            let rest = &part[digits..];
            if rest.is_empty() || (rest.len() == 1 && rest.bytes().all(|b| b.is_ascii_lowercase()))
            {
                return Some(&zone[..start + digits]);
            }
            return None;
        }
        if part.is_empty() || !part.bytes().all(|b| b.is_ascii_lowercase()) {
            return None;
        }
        end = start + part.len();
    }
    None
}

/// A watch counts as current again when no error came for this long (longer than the longest
/// backoff), or at its next event.
const ERROR_QUIET: std::time::Duration = std::time::Duration::from_secs(35);

fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

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
    fn endpoint_place(&self, e: &EndpointMeta) -> Option<Place> {
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

    /// The cluster tier of the classification table: every node's addresses and pod CIDRs at
    /// the node's place, this node's pods' IPs at `own` (VPC CNI pod IPs come from the node's
    /// subnets), and every EndpointSlice address at its endpoint's place.
    pub fn cluster_layer(&self, own: &Place) -> Layer {
        let mut layer = Layer::default();
        for node in self.nodes.live.values() {
            for ip in &node.addresses {
                layer.add_host(PlaceSource::Nodes, *ip, &node.place);
            }
            for c in &node.pod_cidrs {
                layer.add(PlaceSource::Nodes, *c, &node.place);
            }
        }
        for ip in self.pod_ips.keys() {
            layer.add_host(PlaceSource::Pods, *ip, own);
        }
        for slice in self.slices.live.values() {
            for e in &slice.endpoints {
                if let Some(place) = self.endpoint_place(e) {
                    layer.add_host(PlaceSource::EndpointSlices, e.addr, &place);
                }
            }
        }
        layer
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

    /// The classification table: `base` (the config's tiers, and instance metadata's and EC2's)
    /// with the cluster tier. Our own place: what the config says, else our Node's labels, else
    /// `fallback` (IMDS).
    pub fn topology(
        &self,
        base: &StaticTopology,
        own_node: Option<&str>,
        fallback: &Place,
    ) -> StaticTopology {
        let own = base
            .own()
            .clone()
            .or(self.node_place(own_node))
            .or(fallback.clone());
        let layer = self.cluster_layer(&own);
        base.with_own(own)
            .with_layer(Tier::Cluster, Arc::new(layer))
            .with_public(self.public_addresses())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::topology::{Topology, TrafficClass};
    use k8s_openapi::{
        api::core::v1::{
            ContainerStatus, NodeAddress, NodeSpec, NodeStatus, PodIP, PodSpec, PodStatus,
        },
        apimachinery::pkg::apis::meta::v1::{ObjectMeta, OwnerReference},
    };

    fn pod(uid: &str, name: &str, owner: Option<(&str, &str)>, ip: Option<&str>) -> Pod {
        Pod {
            metadata: ObjectMeta {
                uid: Some(uid.into()),
                name: Some(name.into()),
                namespace: Some("shop".into()),
                labels: Some([("pod-template-hash".to_owned(), "7d9f8c".to_owned())].into()),
                owner_references: owner.map(|(kind, name)| {
                    vec![OwnerReference {
                        kind: kind.into(),
                        name: name.into(),
                        controller: Some(true),
                        ..Default::default()
                    }]
                }),
                ..Default::default()
            },
            spec: Some(PodSpec::default()),
            status: Some(PodStatus {
                pod_ip: ip.map(str::to_owned),
                pod_ips: ip.map(|ip| vec![PodIP { ip: ip.into() }]),
                phase: Some("Running".into()),
                container_statuses: Some(vec![ContainerStatus {
                    name: "web".into(),
                    container_id: Some("containerd://abc123".into()),
                    ..Default::default()
                }]),
                ..Default::default()
            }),
        }
    }

    fn meta(p: &Pod) -> PodMeta {
        let owner = controller_of(p);
        pod_meta(p, direct_workload(p, owner.as_ref())).unwrap()
    }

    #[test]
    fn pods_map_to_workloads_and_containers() {
        let p = pod(
            "u1",
            "cart-7d9f8c-x2x",
            Some(("ReplicaSet", "cart-7d9f8c")),
            Some("10.0.1.5"),
        );
        let m = meta(&p);
        assert_eq!(m.workload.kind, "Deployment");
        assert_eq!(m.workload.name, "cart");
        assert_eq!(m.container_name("abc123"), Some("web"));
        assert_eq!(m.ips, vec!["10.0.1.5".parse::<IpAddr>().unwrap()]);
        // A ReplicaSet whose name does not carry the pod's hash stays a ReplicaSet.
        let p = pod("u2", "x", Some(("ReplicaSet", "handmade")), None);
        assert_eq!(meta(&p).workload.kind, "ReplicaSet");
        let p = pod("u3", "db-0", Some(("StatefulSet", "db")), None);
        assert_eq!(
            meta(&p).workload,
            Workload {
                kind: "StatefulSet".into(),
                name: "db".into()
            }
        );
        let p = pod("u4", "bare", None, None);
        assert_eq!(
            meta(&p).workload,
            Workload {
                kind: "Pod".into(),
                name: "bare".into()
            }
        );
    }

    #[test]
    fn host_network_pods_never_claim_the_node_ip() {
        let mut p = pod(
            "u1",
            "agent",
            Some(("DaemonSet", "agent")),
            Some("10.0.0.1"),
        );
        p.spec.as_mut().unwrap().host_network = Some(true);
        let m = meta(&p);
        assert!(m.host_network);
        assert!(m.ips.is_empty());
    }

    #[test]
    fn reused_pod_ip_points_at_the_pod_that_has_it_now() {
        let mut inv = Inventory::default();
        inv.pods_init();
        inv.pod_apply(meta(&pod("old", "a", None, Some("10.0.1.9"))));
        inv.pods_init_done();
        assert_eq!(
            inv.pod_by_ip("10.0.1.9".parse().unwrap()).unwrap().uid,
            "old"
        );
        // The old pod finished; a new pod gets the same IP.
        let mut old = meta(&pod("old", "a", None, Some("10.0.1.9")));
        old.finished = true;
        inv.pod_apply(old);
        assert!(inv.pod_by_ip("10.0.1.9".parse().unwrap()).is_none());
        inv.pod_apply(meta(&pod("new", "b", None, Some("10.0.1.9"))));
        assert_eq!(
            inv.pod_by_ip("10.0.1.9".parse().unwrap()).unwrap().uid,
            "new"
        );
        // Deleting the old pod afterwards does not unmap the new one.
        inv.pod_delete("old");
        assert_eq!(
            inv.pod_by_ip("10.0.1.9".parse().unwrap()).unwrap().uid,
            "new"
        );
        assert!(inv.pod("old").is_none());
    }

    #[test]
    fn relist_replaces_the_set_atomically() {
        let mut inv = Inventory::default();
        assert!(!inv.pods_synced());
        inv.pods_init();
        inv.pod_apply(meta(&pod("a", "a", None, Some("10.0.1.1"))));
        inv.pod_apply(meta(&pod("b", "b", None, Some("10.0.1.2"))));
        // Not visible until the list is complete.
        assert!(inv.pod("a").is_none());
        inv.pods_init_done();
        assert!(inv.pods_synced());
        assert_eq!(inv.pod_count(), 2);
        // A relist (after 410 Gone) that no longer has b: b and its IP disappear at InitDone.
        inv.pods_init();
        inv.pod_apply(meta(&pod("a", "a", None, Some("10.0.1.1"))));
        assert!(inv.pod("b").is_some());
        inv.pods_init_done();
        assert!(inv.pod("b").is_none());
        assert!(inv.pod_by_ip("10.0.1.2".parse().unwrap()).is_none());
        assert!(inv.pod_by_ip("10.0.1.1".parse().unwrap()).is_some());
    }

    fn node(name: &str, zone: &str, zone_id: &str, ip: &str, cidr: &str) -> Node {
        Node {
            metadata: ObjectMeta {
                name: Some(name.into()),
                labels: Some(
                    [
                        (ZONE_LABEL.to_owned(), zone.to_owned()),
                        (REGION_LABEL.to_owned(), "us-east-1".to_owned()),
                        (ZONE_ID_LABEL.to_owned(), zone_id.to_owned()),
                    ]
                    .into(),
                ),
                ..Default::default()
            },
            spec: Some(NodeSpec {
                pod_cidrs: Some(vec![cidr.into()]),
                ..Default::default()
            }),
            status: Some(NodeStatus {
                addresses: Some(vec![
                    NodeAddress {
                        type_: "InternalIP".into(),
                        address: ip.into(),
                    },
                    NodeAddress {
                        type_: "Hostname".into(),
                        address: "ip-x".into(),
                    },
                ]),
                ..Default::default()
            }),
        }
    }

    #[test]
    fn nodes_place_addresses_and_pod_cidrs_by_zone_id() {
        let mut inv = Inventory::default();
        inv.nodes_init();
        // A node of our own zone with a public IP: reaching it there costs like cross-zone.
        let mut twin = node("twin", "us-east-1c", "use1-az1", "10.0.0.9", "10.0.9.0/24");
        if let Some(a) = twin.status.as_mut().and_then(|s| s.addresses.as_mut()) {
            a.push(NodeAddress {
                type_: "ExternalIP".into(),
                address: "198.51.100.9".into(),
            });
        }
        for n in [
            node("me", "us-east-1a", "use1-az1", "10.0.0.1", "10.0.1.0/24"),
            // Named "us-east-1c" but the same physical zone as ours.
            twin,
            node("far", "us-east-1b", "use1-az2", "10.0.16.1", "10.0.17.0/24"),
        ] {
            let (m, problems) = node_meta(&n);
            assert!(problems.is_empty());
            inv.node_apply(m);
        }
        inv.nodes_init_done();
        let base = StaticTopology::new(Place::default(), vec![], vec![]);
        let t = inv.topology(&base, Some("me"), &Place::default());
        let class = |a: &str| t.classify(a.parse().unwrap());
        assert_eq!(class("10.0.0.9"), TrafficClass::SameZone);
        assert_eq!(class("10.0.9.77"), TrafficClass::SameZone);
        assert_eq!(class("10.0.16.1"), TrafficClass::CrossZone);
        assert_eq!(class("10.0.17.3"), TrafficClass::CrossZone);
        assert_eq!(class("10.0.200.1"), TrafficClass::Unplaced);
        assert_eq!(class("198.51.100.9"), TrafficClass::RegionalPublic);
        // Without our own Node, nothing private can be placed (and nothing is guessed).
        let t = inv.topology(&base, Some("unknown-node"), &Place::default());
        assert_eq!(
            t.classify("10.0.16.1".parse().unwrap()),
            TrafficClass::Unplaced
        );
    }

    /// (addresses, node, zone, pod) of one endpoint.
    type TestEndpoint<'a> = (
        &'a [&'a str],
        Option<&'a str>,
        Option<&'a str>,
        Option<&'a str>,
    );

    fn slice(name: &str, service: Option<&str>, endpoints: Vec<TestEndpoint>) -> EndpointSlice {
        use k8s_openapi::api::{core::v1::ObjectReference, discovery::v1::Endpoint};
        EndpointSlice {
            metadata: ObjectMeta {
                name: Some(name.into()),
                namespace: Some("shop".into()),
                labels: service.map(|s| [(SERVICE_NAME_LABEL.to_owned(), s.to_owned())].into()),
                ..Default::default()
            },
            address_type: "IPv4".into(),
            endpoints: endpoints
                .into_iter()
                .map(|(addrs, node, zone, pod)| Endpoint {
                    addresses: addrs.iter().map(|a| a.to_string()).collect(),
                    node_name: node.map(Into::into),
                    zone: zone.map(Into::into),
                    target_ref: pod.map(|p| ObjectReference {
                        kind: Some("Pod".into()),
                        name: Some(p.into()),
                        ..Default::default()
                    }),
                    ..Default::default()
                })
                .collect(),
            ports: None,
        }
    }

    #[test]
    fn endpointslices_place_service_backends_by_their_node_else_their_zone() {
        let mut inv = Inventory::default();
        inv.nodes_init();
        for n in [
            node("me", "us-east-1a", "use1-az1", "10.0.0.1", "10.0.1.0/24"),
            // Another account's name for our zone.
            node("twin", "us-east-1c", "use1-az1", "10.0.0.9", "10.0.9.0/24"),
        ] {
            inv.node_apply(node_meta(&n).0);
        }
        inv.nodes_init_done();
        let mut names = Interner::default();
        let s = slice(
            "api-x1",
            Some("api"),
            vec![
                // On a known node: its zone ID decides (same zone despite the name).
                (
                    &["10.0.40.5"],
                    Some("twin"),
                    Some("us-east-1c"),
                    Some("api-1"),
                ),
                // Node unknown: the zone name, in the region it names.
                (
                    &["10.0.50.6"],
                    Some("gone"),
                    Some("us-east-1b"),
                    Some("api-2"),
                ),
                // Neither: nothing to place it with.
                (&["10.0.60.7"], None, None, None),
                (&["not-an-ip"], None, None, None),
            ],
        );
        let (meta, problems) = slice_meta(&s, &mut names);
        let meta = meta.unwrap();
        assert_eq!(problems.len(), 1, "{problems:?}");
        assert_eq!(meta.service.as_deref(), Some("api"));
        assert_eq!(meta.endpoints[0].pod.as_deref(), Some("api-1"));
        inv.slices_init();
        inv.slice_apply(meta);
        inv.slices_init_done();
        assert_eq!(inv.endpoint_count(), 3);
        let base = StaticTopology::new(Place::default(), vec![], vec![]);
        let t = inv.topology(&base, Some("me"), &Place::default());
        let class = |a: &str| t.classify(a.parse().unwrap());
        assert_eq!(class("10.0.40.5"), TrafficClass::SameZone);
        assert_eq!(class("10.0.50.6"), TrafficClass::CrossZone);
        assert_eq!(class("10.0.60.7"), TrafficClass::Unplaced);
        let counts: HashMap<_, _> = t.prefix_counts().collect();
        assert_eq!(counts[&PlaceSource::EndpointSlices], 2);
        assert_eq!(counts[&PlaceSource::Nodes], 4);
        // The slice goes away: so do its places.
        inv.slice_delete("shop/api-x1");
        let t = inv.topology(&base, Some("me"), &Place::default());
        assert_eq!(
            t.classify("10.0.50.6".parse().unwrap()),
            TrafficClass::Unplaced
        );
        // FQDN slices place nothing.
        let mut fqdn = slice(
            "ext",
            Some("ext"),
            vec![(&["db.example"], None, None, None)],
        );
        fqdn.address_type = "FQDN".into();
        assert!(slice_meta(&fqdn, &mut names).0.is_none());
    }

    #[test]
    fn aws_zone_names_give_their_region() {
        for (zone, region) in [
            ("us-east-1a", Some("us-east-1")),
            ("eu-central-2c", Some("eu-central-2")),
            ("us-gov-west-1b", Some("us-gov-west-1")),
            ("us-east-1-bos-1a", Some("us-east-1")),
            ("us-east-1-wl1-bos-wlz-1", Some("us-east-1")),
            ("zone-a", None),
            ("", None),
            ("us-east-1ab", None),
            ("US-EAST-1a", None),
        ] {
            assert_eq!(region_of_zone(zone), region, "{zone}");
        }
    }

    #[test]
    fn malformed_node_fields_are_named() {
        let mut n = node("bad", "z", "id", "not-an-ip", "10.0.0.0/99");
        n.metadata.labels = None;
        let (m, problems) = node_meta(&n);
        assert_eq!(m.place, Place::default());
        assert_eq!(problems.len(), 2, "{problems:?}");
        assert!(problems[0].contains("status.addresses"));
        assert!(problems[1].contains("spec.podCIDRs"));
    }
}
