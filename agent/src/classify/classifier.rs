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
    nat::{NatTable, Resolution, SharedNat},
    pending::{self, PendingConnection},
    route::Router,
    topology::{Layer, PlaceSource, StaticTopology, Tier},
};
use crate::{
    attribute::{Held, Hold},
    inventory::{
        aws::{SharedCloud, SourceState},
        Inventory, KubeView,
    },
    vocab::{Destination, Place, Registries, Route, TrafficClass},
};

/// How long bytes wait for an optional source (EndpointSlices) that fails without ever having
/// listed (e.g. a ClusterRole without `endpointslices`): then they are classified without it.
const OPTIONAL_PATIENCE: Duration = Duration::from_secs(30);

/// `netcost_topology_*`: what places addresses, by source.
#[derive(Clone, Default)]
pub struct TopologyMetrics {
    prefixes: Family<SourceLabels, Gauge>,
    source_up: Family<SourceLabels, Gauge>,
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
        m
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
