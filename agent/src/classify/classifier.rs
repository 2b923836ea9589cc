//! The classification step of a drain: keeps the classification table current (rebuilt when
//! the config, AWS or the cluster says something new), finds each entry's real remote end
//! (through conntrack for per-connection entries) and its destination.

use std::{
    collections::HashMap,
    net::IpAddr,
    sync::{Arc, PoisonError},
    time::{Duration, Instant},
};

use agent_common::{Counter, FlowKey};
use prometheus_client::{
    encoding::EncodeLabelSet,
    metrics::{family::Family, gauge::Gauge},
};

use super::{
    layers::{aws_layer, cluster_topology},
    nat::{self, NatTable, Resolution, SharedNat},
    peers::PeerIndex,
    pending::{self, PendingConnection},
    route::Router,
    topology::{Layer, PlaceSource, StaticTopology, Tier},
};
use crate::{
    attribute::{Held, HeldKey, Hold, Identity},
    inventory::{
        aws::{SharedCloud, SourceState},
        Inventory, KubeView,
    },
    vocab::{Destination, Peer, PeerKind, Place, Registries, Route, TrafficClass},
};

/// How long bytes wait for an optional source (EndpointSlices) that fails without ever having
/// listed (e.g. a ClusterRole without `endpointslices`): then they are classified without it.
const OPTIONAL_PATIENCE: Duration = Duration::from_secs(30);

/// `netcost_topology_*`: what places addresses, by source.
#[derive(Clone, Default)]
pub struct TopologyMetrics {
    prefixes: Family<SourceLabels, Gauge>,
    source_up: Family<SourceLabels, Gauge>,
    node_info: Family<NodeInfoLabels, Gauge>,
}

/// This node's name and place, as `netcost report` joins them to the node's series.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct NodeInfoLabels {
    node: String,
    zone: String,
    zone_id: String,
    region: String,
}

/// A source of the classification table (`PlaceSource`).
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct SourceLabels {
    source: &'static str,
}

impl TopologyMetrics {
    pub fn register(registries: &mut Registries) -> TopologyMetrics {
        let m = TopologyMetrics::default();
        let r = registries.live();
        r.register(
            "topology_prefixes",
            "Prefixes that place remote addresses, by source (config, instance_metadata, ec2, nodes, pods, endpointslices); an earlier source outranks a later one",
            m.prefixes.clone(),
        );
        r.register(
            "topology_source_up",
            "1 when a source of the classification table is on and its last answer succeeded",
            m.source_up.clone(),
        );
        r.register(
            "node_info",
            "1, labelled with this node's name, zone, zone ID and region as the agent knows them (empty when unknown)",
            m.node_info.clone(),
        );
        m
    }

    fn set_node(&self, node: &str, own: &Place) {
        self.node_info.clear();
        let clean = |v: Option<&str>| crate::vocab::owned(v.unwrap_or(""));
        self.node_info
            .get_or_create(&NodeInfoLabels {
                node: clean(Some(node)),
                zone: clean(own.zone.as_deref()),
                zone_id: clean(own.zone_id.as_deref()),
                region: clean(own.region.as_deref()),
            })
            .set(1);
    }

    fn set(family: &Family<SourceLabels, Gauge>, source: PlaceSource, value: i64) {
        family
            .get_or_create(&SourceLabels {
                source: source.as_str(),
            })
            .set(value);
    }
}

/// Where a flow entry's bytes really went.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum RemoteEnd {
    /// The real remote end, whether our side opened the connection, and what conntrack said.
    Found {
        remote: IpAddr,
        outbound: bool,
        nat: NatOutcome,
    },
    /// Conntrack has not named the connection yet: the entry is pending (see `take_pending`).
    Pending,
}

/// What NAT resolution did for an entry.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum NatOutcome {
    /// Not a translated connection (or conntrack is not read).
    Direct,
    /// Conntrack named the real remote end.
    Resolved,
    /// Conntrack did not name it in time: classified by the Service address.
    Unresolved,
}

/// What the classification table was built from: the inventory's generations (nodes, pods,
/// EndpointSlices) and the cloud facts' generation.
type TopologyKey = (Option<(u64, u64, u64)>, u64);

pub struct Classifier {
    /// The config's tier.
    base: StaticTopology,
    /// What instance metadata and EC2 say (our place, subnets), filled in asynchronously.
    cloud: SharedCloud,
    /// The AWS tier built from `cloud`, and the generation it was built from.
    aws_layer: (u64, Arc<Layer>),
    kube: Option<KubeView>,
    topology: StaticTopology,
    topology_key: Option<TopologyKey>,
    router: Router,
    nat: Option<SharedNat>,
    pending: Hold<FlowKey>,
    nat_wait: Duration,
    metrics: TopologyMetrics,
    /// Who remote addresses are, when destinations are named (`None`: they are not).
    peers: Option<PeerIndex>,
    /// This node's own addresses (the owner of node bytes).
    node_addresses: Vec<IpAddr>,
}

impl Classifier {
    pub fn new(
        base: StaticTopology,
        cloud: SharedCloud,
        kube: Option<KubeView>,
        router: Router,
        nat: Option<SharedNat>,
        nat_wait: Duration,
        metrics: TopologyMetrics,
    ) -> Classifier {
        Classifier {
            topology: base.clone(),
            base,
            cloud,
            aws_layer: (u64::MAX, Arc::default()),
            kube,
            topology_key: None,
            router,
            nat,
            pending: Hold::default(),
            nat_wait,
            metrics,
            peers: None,
            node_addresses: Vec::new(),
        }
    }

    /// Names remote ends for destination series (a lookup table of the cluster's addresses).
    pub fn name_peers(mut self) -> Classifier {
        self.peers = Some(PeerIndex::default());
        self.topology_key = None;
        self
    }

    pub fn name_peers_if(self, on: bool) -> Classifier {
        if on {
            self.name_peers()
        } else {
            self
        }
    }

    pub fn topology(&self) -> &StaticTopology {
        &self.topology
    }

    /// Our own place as far as it is known.
    pub fn own(&self) -> &Place {
        self.topology.own()
    }

    /// The route plain internet bytes take from this node (a pod's zero series use it).
    pub fn internet_route(&self) -> Route {
        self.router.internet_route(self.topology.own())
    }

    /// The NAT table, to lock once for a whole drain.
    pub fn nat_table(&self) -> Option<SharedNat> {
        self.nat.clone()
    }

    /// The inventory the watchers keep, when the Kubernetes API is used.
    pub fn kube(&self) -> Option<&KubeView> {
        self.kube.as_ref()
    }

    /// Rebuilds the classification table when the nodes, this node's pods, the EndpointSlices
    /// or what AWS says (our place, subnets) changed.
    pub fn refresh(&mut self, inventory: Option<&Inventory>) {
        let shared = self.cloud.clone();
        let cloud = shared.read().unwrap_or_else(PoisonError::into_inner);
        let key = (
            inventory.map(|i| {
                (
                    i.nodes_generation(),
                    i.pods_generation(),
                    i.slices_generation(),
                )
            }),
            cloud.generation,
        );
        self.refresh_source_health(inventory, cloud.imds, cloud.ec2);
        if self.topology_key.as_ref() == Some(&key) {
            return;
        }
        if self.aws_layer.0 != cloud.generation {
            self.aws_layer = (cloud.generation, Arc::new(aws_layer(&cloud)));
        }
        let base = self
            .base
            .clone()
            .with_vpc(cloud.network.vpc_cidrs.iter().copied())
            .with_layer(Tier::Aws, self.aws_layer.1.clone());
        let fallback = cloud.place.clone();
        drop(cloud);
        self.topology = match (inventory, &self.kube) {
            (Some(inv), Some(kube)) => {
                cluster_topology(inv, &base, Some(&kube.node_name), &fallback)
            }
            _ => base.with_own(self.base.own().clone().or(fallback)),
        };
        for (source, n) in self.topology.prefix_counts() {
            TopologyMetrics::set(&self.metrics.prefixes, source, n as i64);
        }
        self.topology_key = Some(key);
        let node = self.kube.as_ref().map_or("", |k| k.node_name.as_str());
        self.metrics.set_node(node, self.topology.own());
        if let (Some(inv), Some(kube)) = (inventory, &self.kube) {
            if self.peers.is_some() {
                self.peers = Some(PeerIndex::build(inv, self.topology.own()));
            }
            self.node_addresses = inv
                .node(&kube.node_name)
                .map(|n| n.addresses.clone())
                .unwrap_or_default();
            // Incoming connections to these are remembered with their port.
            if let Some(table) = &self.nat {
                let pods = inv
                    .pods()
                    .filter(|p| !p.finished)
                    .flat_map(|p| p.ips.clone());
                let local: Vec<IpAddr> = pods.chain(self.node_addresses.iter().copied()).collect();
                nat::lock(table).served.set_local(local);
            }
        }
    }

    /// `netcost_topology_source_up`: each source on and answering.
    fn refresh_source_health(
        &self,
        inventory: Option<&Inventory>,
        imds: SourceState,
        ec2: SourceState,
    ) {
        let kube = self.kube.as_ref();
        let watched = |on: bool, synced: bool| on && synced;
        for (source, up) in [
            (PlaceSource::Config, true),
            (PlaceSource::InstanceMetadata, imds == SourceState::Up),
            (PlaceSource::Ec2, ec2 == SourceState::Up),
            (
                PlaceSource::Nodes,
                watched(
                    kube.is_some(),
                    inventory.is_some_and(Inventory::nodes_synced),
                ),
            ),
            (
                PlaceSource::Pods,
                watched(
                    kube.is_some(),
                    inventory.is_some_and(Inventory::pods_synced),
                ),
            ),
            (
                PlaceSource::EndpointSlices,
                watched(
                    kube.is_some_and(|k| k.watch_endpointslices),
                    inventory.is_some_and(Inventory::slices_synced),
                ),
            ),
        ] {
            TopologyMetrics::set(&self.metrics.source_up, source, i64::from(up));
        }
    }

    /// Whether a private address can be placed now: we know our zone, and every source that
    /// may place it has answered once — the node list (if nodes are watched), the EndpointSlices
    /// (if watched; given up on after `OPTIONAL_PATIENCE` of errors), instance metadata and
    /// EC2 (their first attempt, success or not).
    pub fn ready(&self, inventory: Option<&Inventory>) -> bool {
        let kube_ready = match (&self.kube, inventory) {
            (Some(k), Some(inv)) => {
                (!k.watch_nodes || inv.nodes_synced())
                    && (!k.watch_endpointslices
                        || k.health.endpointslices.settled(OPTIONAL_PATIENCE))
            }
            _ => true,
        };
        let cloud = self.cloud.read().unwrap_or_else(PoisonError::into_inner);
        kube_ready && cloud.imds.settled() && cloud.ec2.settled() && self.topology.own().is_placed()
    }

    /// Finds a flow entry's real remote end, through conntrack for per-connection entries.
    /// Entries to a Service address conntrack has not named yet wait up to `nat.wait` (held
    /// here); after that they are classified by the Service address and counted as unresolved.
    pub fn remote_end(
        &mut self,
        nat: Option<&NatTable>,
        key: &FlowKey,
        counter: &Counter,
        since: Instant,
        now: Instant,
    ) -> RemoteEnd {
        let seen = key.remote_addr();
        let direct = RemoteEnd::Found {
            remote: seen,
            outbound: true,
            nat: NatOutcome::Direct,
        };
        let (true, Some(nat)) = (key.is_connection(), nat) else {
            return direct;
        };
        match nat.resolve(key) {
            Resolution::Translated { remote, outbound } => RemoteEnd::Found {
                remote,
                outbound,
                nat: NatOutcome::Resolved,
            },
            Resolution::Direct => direct,
            Resolution::Unresolved => {
                let may_wait = now.duration_since(since) < self.nat_wait;
                if may_wait && self.pending.add(key, counter, since) {
                    return RemoteEnd::Pending;
                }
                RemoteEnd::Found {
                    remote: seen,
                    outbound: true,
                    nat: NatOutcome::Unresolved,
                }
            }
        }
    }

    /// The entries pending on conntrack, to try again.
    pub fn take_pending(&mut self) -> HashMap<FlowKey, Held> {
        self.pending.take()
    }

    pub fn pending_bytes(&self) -> u64 {
        self.pending.bytes()
    }

    pub fn snapshot_pending(&self, now: Instant) -> Vec<PendingConnection> {
        pending::snapshot(&self.pending, now)
    }

    pub fn restore_pending(&mut self, saved: &[PendingConnection], now: Instant) {
        pending::restore(&mut self.pending, saved, now);
    }

    /// Where bytes to `remote` go (`None`: overflow bytes, whose remote end was not recorded).
    pub fn destination(&self, remote: Option<IpAddr>, outbound: bool) -> Destination {
        match remote {
            None => Destination::from(TrafficClass::Unknown),
            Some(addr) => self.router.destination(&self.topology, addr, outbound),
        }
    }

    /// The region at the other end of cross-region bytes (prices differ by pair of regions).
    pub fn remote_region(&self, destination: &Destination, remote: Option<IpAddr>) -> Option<&str> {
        match (destination.class, remote) {
            (TrafficClass::CrossRegion, Some(addr)) => {
                self.topology.lookup(addr).and_then(|p| p.region.as_deref())
            }
            _ => None,
        }
    }
}

impl Classifier {
    /// The port of ours the remote end of `key` opened a connection to, if it did (conntrack's
    /// serving ports; `None` without conntrack or for a pod the inventory does not know).
    pub fn served_port(
        &self,
        inventory: Option<&Inventory>,
        nat: Option<&NatTable>,
        key: &HeldKey,
    ) -> Option<u16> {
        let (nat, remote) = (nat?, key.remote?);
        let local: &[IpAddr] = match &key.identity {
            // A pod the inventory does not know has no address of its own to match.
            Identity::Pod { uid, .. } => &inventory?.pod(uid)?.ips,
            _ => &self.node_addresses,
        };
        nat.served.port(local, remote)
    }

    /// The remote end of `key`'s bytes for destination series: named by the cluster if it can,
    /// else by its address (grouped outside the VPC), with the serving port when the remote end
    /// opened the connection.
    pub fn peer(&self, key: &HeldKey, destination: &Destination, port: Option<u16>) -> Peer {
        let Some(remote) = key.remote else {
            return Peer::other();
        };
        let named = self.peers.as_ref().and_then(|p| p.get(remote));
        let mut peer = match (named, &destination.service) {
            (Some(p), _) => p.clone(),
            (None, Some(tag)) => Peer::named(PeerKind::AwsService, "", tag, None),
            (None, None) => {
                let external = matches!(
                    destination.class,
                    TrafficClass::Internet | TrafficClass::RegionalPublic
                ) || (destination.class == TrafficClass::CrossRegion
                    && !self.topology.is_private(remote));
                let zone = self.topology.lookup(remote).and_then(|p| p.zone.as_deref());
                Peer::address(remote, external, zone)
            }
        };
        peer.port = port.unwrap_or(0);
        peer
    }
}
