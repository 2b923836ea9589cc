//! The fields of Kubernetes objects netcost keeps — a pod's names, workload, IPs and
//! containers; a Node's place, addresses and pod CIDRs; an EndpointSlice's endpoints — and the
//! conversions from the API's types. Everything else an object carries is dropped on arrival.

use std::{net::IpAddr, sync::Arc};

use k8s_openapi::api::{
    core::v1::{Node, Pod},
    discovery::v1::EndpointSlice,
};

use crate::vocab::{Cidr, Place};

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
/// `kube::OwnerResolver`), and this is the answer when that lookup is impossible.
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
