//! Expose: the metric families and their typed label sets.
//!
//! Label names avoid `zone`, `region`, `instance` and `job`, which clash with target labels that
//! Prometheus adds. No timestamps are exposed; counters only ever go up within one process life.

use std::fmt::Write as _;

use std::sync::atomic::AtomicU64;

use prometheus_client::{
    encoding::{EncodeLabel, EncodeLabelSet, EncodeLabelValue, LabelSetEncoder, LabelValueEncoder},
    metrics::{counter::Counter, family::Family, gauge::Gauge, histogram::Histogram},
    registry::{Registry, Unit},
};

/// Dollars: counters and gauges of `f64`.
pub type DollarCounter = Counter<f64, AtomicU64>;
pub type DollarGauge = Gauge<f64, AtomicU64>;

use crate::{
    route::{Destination, Route},
    topology::TrafficClass,
};

impl EncodeLabelValue for TrafficClass {
    fn encode(&self, encoder: &mut LabelValueEncoder) -> Result<(), std::fmt::Error> {
        encoder.write_str(self.as_str())
    }
}

#[derive(
    Clone, Copy, Debug, Hash, PartialEq, Eq, PartialOrd, Ord, serde::Serialize, serde::Deserialize,
)]
#[serde(rename_all = "snake_case")]
pub enum Direction {
    Egress,
    Ingress,
}

impl Direction {
    pub const BOTH: [Direction; 2] = [Direction::Egress, Direction::Ingress];

    pub fn from_abi(d: u8) -> Direction {
        if d == agent_common::DIRECTION_INGRESS {
            Direction::Ingress
        } else {
            Direction::Egress
        }
    }

    /// The kernel's value (`DIRECTION_*`); the inverse of `from_abi`.
    pub fn abi(self) -> u8 {
        match self {
            Direction::Egress => agent_common::DIRECTION_EGRESS,
            Direction::Ingress => agent_common::DIRECTION_INGRESS,
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Direction::Egress => "egress",
            Direction::Ingress => "ingress",
        }
    }
}

impl EncodeLabelValue for Direction {
    fn encode(&self, encoder: &mut LabelValueEncoder) -> Result<(), std::fmt::Error> {
        encoder.write_str(self.as_str())
    }
}

/// Who the bytes belong to: a pod, the node itself, or an identity we could not resolve.
#[derive(
    Clone, Copy, Debug, Hash, PartialEq, Eq, PartialOrd, Ord, serde::Serialize, serde::Deserialize,
)]
#[serde(rename_all = "snake_case")]
pub enum Owner {
    Pod,
    Node,
    Unknown,
}

impl EncodeLabelValue for Owner {
    fn encode(&self, encoder: &mut LabelValueEncoder) -> Result<(), std::fmt::Error> {
        encoder.write_str(match self {
            Owner::Pod => "pod",
            Owner::Node => "node",
            Owner::Unknown => "unknown",
        })
    }
}

/// Who a pod is, as its series say it: fixed for the pod's life (namespace, name and UID are
/// immutable; the workload is resolved once, before the first series is created).
#[derive(
    Clone,
    Debug,
    Default,
    Hash,
    PartialEq,
    Eq,
    PartialOrd,
    Ord,
    serde::Serialize,
    serde::Deserialize,
)]
pub struct PodLabels {
    pub namespace: String,
    pub pod: String,
    pub pod_uid: String,
    pub workload_kind: String,
    pub workload: String,
}

impl PodLabels {
    /// The same labels with every value cleaned (see `labels::clean`).
    pub fn cleaned(&self) -> PodLabels {
        use crate::labels::owned;
        PodLabels {
            namespace: owned(&self.namespace),
            pod: owned(&self.pod),
            pod_uid: owned(&self.pod_uid),
            workload_kind: owned(&self.workload_kind),
            workload: owned(&self.workload),
        }
    }

    /// A pod known only by the UID in its cgroup path (no Kubernetes API, or the API never
    /// told us about it).
    pub fn uid_only(uid: &str) -> PodLabels {
        PodLabels {
            pod_uid: uid.to_owned(),
            ..PodLabels::default()
        }
    }
}

#[derive(
    Clone, Debug, Hash, PartialEq, Eq, PartialOrd, Ord, serde::Serialize, serde::Deserialize,
)]
pub struct TrafficLabels {
    pub owner: Owner,
    /// Empty unless `owner="pod"`.
    pub pod: PodLabels,
    /// Class, cloud service and route.
    pub destination: Destination,
    pub direction: Direction,
}

/// Labels with an empty value are left out (Prometheus treats an empty label as absent, and
/// node-owned series have no pod labels).
impl EncodeLabelSet for TrafficLabels {
    fn encode(&self, encoder: &mut LabelSetEncoder) -> Result<(), std::fmt::Error> {
        ("owner", self.owner).encode(encoder.encode_label())?;
        for (key, value) in [
            ("namespace", &self.pod.namespace),
            ("pod", &self.pod.pod),
            ("workload_kind", &self.pod.workload_kind),
            ("workload", &self.pod.workload),
            ("pod_uid", &self.pod.pod_uid),
        ] {
            if !value.is_empty() {
                (key, value.as_str()).encode(encoder.encode_label())?;
            }
        }
        ("traffic_class", self.destination.class).encode(encoder.encode_label())?;
        ("direction", self.direction).encode(encoder.encode_label())?;
        if let Some(service) = &self.destination.service {
            ("service", &**service).encode(encoder.encode_label())?;
        }
        match self.destination.route {
            Route::Direct => Ok(()),
            Route::NatGateway { cross_zone } => {
                ("nat_gateway", "true").encode(encoder.encode_label())?;
                let hop = if cross_zone {
                    "cross_zone"
                } else {
                    "same_zone"
                };
                ("nat_gateway_hop", hop).encode(encoder.encode_label())
            }
            Route::GatewayEndpoint => ("gateway_endpoint", "true").encode(encoder.encode_label()),
        }
    }
}

impl TrafficLabels {
    pub fn node(owner: Owner, destination: impl Into<Destination>, direction: Direction) -> Self {
        TrafficLabels {
            owner,
            pod: PodLabels::default(),
            destination: destination.into(),
            direction,
        }
    }

    pub fn pod(pod: &PodLabels, destination: impl Into<Destination>, direction: Direction) -> Self {
        TrafficLabels {
            owner: Owner::Pod,
            pod: pod.clone(),
            destination: destination.into(),
            direction,
        }
    }
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct DirectionLabels {
    pub direction: Direction,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct MapLabels {
    pub map: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct BuildLabels {
    pub version: &'static str,
    pub abi_version: String,
}

#[derive(Clone)]
pub struct Metrics {
    pub bytes: Family<TrafficLabels, Counter>,
    pub packets: Family<TrafficLabels, Counter>,
    pub overflow_bytes: Family<DirectionLabels, Counter>,
    pub lost_bytes: Family<DirectionLabels, Counter>,
    pub lost_packets: Family<DirectionLabels, Counter>,
    pub map_entries: Family<MapLabels, Gauge>,
    pub map_capacity: Family<MapLabels, Gauge>,
    pub map_entry_errors: Counter,
    pub drain_duration: Histogram,
    pub drain_errors: Counter,
    pub early_drains: Counter,
    pub programs_attached: Gauge,
    pub build_info: Family<BuildLabels, Gauge>,
    pub held_bytes: Gauge,
    pub hold_expired_bytes: Counter,
    pub kubernetes_synced: Family<ResourceLabels, Gauge>,
    pub kubernetes_objects: Family<ResourceLabels, Gauge>,
    pub kubernetes_watch_errors: Family<ResourceLabels, Counter>,
    pub pods_with_series: Gauge,
    pub conntrack_events: Family<EventLabels, Counter>,
    pub conntrack_resyncs: Counter,
    pub conntrack_malformed: Counter,
    pub conntrack_up: Gauge,
    pub nat_connections: Gauge,
    pub nat_table_full: Counter,
    pub translated_prefixes: Gauge,
    pub translated_errors: Counter,
    pub nat_resolved_bytes: Counter,
    pub nat_unresolved_bytes: Counter,
    /// The route plain internet bytes take from this node: a pod's zero series use it.
    pub internet_route: Route,
    pub cost: Family<TrafficLabels, DollarCounter>,
    pub unpriced_bytes: Counter,
    pub price: Family<PriceLabels, DollarGauge>,
    pub kubecost: KubecostMetrics,
    pub checkpoint_errors: Counter,
    pub checkpoint_size: Gauge,
    pub start_info: Family<StartLabels, Gauge>,
    pub topology_prefixes: Family<SourceLabels, Gauge>,
    pub topology_source_up: Family<SourceLabels, Gauge>,
    pub aws_errors: Family<AwsLabels, Counter>,
}

/// A source of the classification table (`topology::PlaceSource`).
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct SourceLabels {
    pub source: &'static str,
}

/// An AWS endpoint the agent talks to: `imds`, `ec2`, `credentials`.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct AwsLabels {
    pub service: &'static str,
}

/// How this agent started: whether it took over the kernel's maps and its predecessor's totals.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct StartLabels {
    /// `created`, `adopted` (pinned by an earlier agent) or `replaced` (incompatible layout).
    pub maps: &'static str,
    /// `restored` (the checkpoint's totals go on) or `reset` (they start from zero).
    pub totals: &'static str,
    /// `pinned`, or `unpinned` (a restart loses what was counted since the last drain).
    pub pins: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct PriceLabels {
    pub price: &'static str,
}

/// Kubecost's `network-costs` metrics, with exactly its names and labels, so that OpenCost and
/// Kubecost read netcost unchanged.
#[derive(Clone, Default)]
pub struct KubecostMetrics {
    pub egress_bytes: Family<KubecostLabels, Counter>,
    pub ingress_bytes: Family<KubecostLabels, Counter>,
    pub zone_egress_cost: DollarGauge,
    pub region_egress_cost: DollarGauge,
    pub internet_egress_cost: DollarGauge,
    pub nat_gateway_egress_cost: DollarGauge,
    pub nat_gateway_ingress_cost: DollarGauge,
    /// Pod bytes Kubecost's labels cannot express (unplaced, unknown): not in its families.
    pub unmapped_bytes: Counter,
}

/// Kubecost's label set, in its order (flags are encoded `true`/`false`, as Kubecost writes them).
#[derive(
    Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet, serde::Serialize, serde::Deserialize,
)]
pub struct KubecostLabels {
    pub pod_name: String,
    pub namespace: String,
    pub internet: bool,
    pub same_region: bool,
    pub same_zone: bool,
    pub service: String,
    pub nat_gateway: bool,
}

impl KubecostLabels {
    /// Kubecost's classes as OpenCost queries them; `None` for what they cannot express.
    /// In-region AWS services (free transfer) are written as same-zone, so OpenCost does not
    /// price them as cross-zone; their `service` label says what they are.
    pub fn of(labels: &TrafficLabels) -> Option<KubecostLabels> {
        if labels.owner != Owner::Pod || labels.pod.pod.is_empty() {
            return None;
        }
        let (internet, same_region, same_zone) = match labels.destination.class {
            TrafficClass::SameZone | TrafficClass::SameRegion => (false, true, true),
            // Charged like cross-zone traffic, which is how OpenCost then prices it.
            TrafficClass::CrossZone | TrafficClass::RegionalPublic => (false, true, false),
            TrafficClass::CrossRegion => (false, false, false),
            TrafficClass::Internet => (true, false, false),
            TrafficClass::Unplaced | TrafficClass::Unknown => return None,
        };
        Some(KubecostLabels {
            pod_name: labels.pod.pod.clone(),
            namespace: labels.pod.namespace.clone(),
            internet,
            same_region,
            same_zone,
            service: labels
                .destination
                .service
                .as_deref()
                .unwrap_or("")
                .to_owned(),
            nat_gateway: matches!(labels.destination.route, Route::NatGateway { .. }),
        })
    }
}

impl KubecostMetrics {
    pub fn bytes(&self, direction: Direction) -> &Family<KubecostLabels, Counter> {
        match direction {
            Direction::Egress => &self.egress_bytes,
            Direction::Ingress => &self.ingress_bytes,
        }
    }

    fn register(&self, r: &mut Registry) {
        r.register(
            "kubecost_pod_network_egress_bytes",
            "Kubecost network-costs compatible: bytes sent by a pod, by destination class",
            self.egress_bytes.clone(),
        );
        r.register(
            "kubecost_pod_network_ingress_bytes",
            "Kubecost network-costs compatible: bytes received by a pod, by source class",
            self.ingress_bytes.clone(),
        );
        for (name, help, gauge) in [
            (
                "kubecost_network_zone_egress_cost",
                "Price of cross-zone egress, USD per GB",
                &self.zone_egress_cost,
            ),
            (
                "kubecost_network_region_egress_cost",
                "Price of inter-region egress, USD per GB",
                &self.region_egress_cost,
            ),
            (
                "kubecost_network_internet_egress_cost",
                "Price of internet egress (the configured tier), USD per GB",
                &self.internet_egress_cost,
            ),
            (
                "kubecost_network_nat_gateway_egress_cost",
                "NAT gateway processing price, USD per GB",
                &self.nat_gateway_egress_cost,
            ),
            (
                "kubecost_network_nat_gateway_ingress_cost",
                "NAT gateway processing price, USD per GB",
                &self.nat_gateway_ingress_cost,
            ),
        ] {
            r.register(name, help, gauge.clone());
        }
    }
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct EventLabels {
    pub event: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ResourceLabels {
    pub resource: &'static str,
}

impl Metrics {
    /// Every metric in one registry.
    pub fn new(registry: &mut Registry) -> Metrics {
        let m = Metrics::unregistered();
        m.register_durable(registry);
        m.register_live(registry);
        m.init();
        m
    }

    fn unregistered() -> Metrics {
        Metrics {
            bytes: Family::default(),
            packets: Family::default(),
            overflow_bytes: Family::default(),
            lost_bytes: Family::default(),
            lost_packets: Family::default(),
            map_entries: Family::default(),
            map_capacity: Family::default(),
            map_entry_errors: Counter::default(),
            drain_duration: Histogram::new([
                0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 1.0,
            ]),
            drain_errors: Counter::default(),
            early_drains: Counter::default(),
            programs_attached: Gauge::default(),
            build_info: Family::default(),
            held_bytes: Gauge::default(),
            hold_expired_bytes: Counter::default(),
            kubernetes_synced: Family::default(),
            kubernetes_objects: Family::default(),
            kubernetes_watch_errors: Family::default(),
            pods_with_series: Gauge::default(),
            conntrack_events: Family::default(),
            conntrack_resyncs: Counter::default(),
            conntrack_malformed: Counter::default(),
            conntrack_up: Gauge::default(),
            nat_connections: Gauge::default(),
            nat_table_full: Counter::default(),
            translated_prefixes: Gauge::default(),
            translated_errors: Counter::default(),
            nat_resolved_bytes: Counter::default(),
            nat_unresolved_bytes: Counter::default(),
            internet_route: Route::Direct,
            cost: Family::default(),
            unpriced_bytes: Counter::default(),
            price: Family::default(),
            kubecost: KubecostMetrics::default(),
            checkpoint_errors: Counter::default(),
            checkpoint_size: Gauge::default(),
            start_info: Family::default(),
            topology_prefixes: Family::default(),
            topology_source_up: Family::default(),
            aws_errors: Family::default(),
        }
    }

    fn init(&self) {
        let m = self;
        m.build_info
            .get_or_create(&BuildLabels {
                version: env!("CARGO_PKG_VERSION"),
                abi_version: agent_common::ABI_VERSION.to_string(),
            })
            .set(1);
        // Alerts watch these: expose them at zero from the start.
        for direction in Direction::BOTH {
            let labels = DirectionLabels { direction };
            let _ = m.overflow_bytes.get_or_create(&labels);
            let _ = m.lost_bytes.get_or_create(&labels);
            let _ = m.lost_packets.get_or_create(&labels);
        }
    }

    /// The metrics with the totals (`durable`: what the checkpoint keeps, exposed only once the
    /// checkpoint that holds them is written) and the agent's own state (`live`: encoded at
    /// each scrape) in two registries.
    pub fn new_split(durable: &mut Registry, live: &mut Registry) -> Metrics {
        let m = Metrics::unregistered();
        m.register_durable(durable);
        m.register_live(live);
        m.init();
        m
    }

    fn register_durable(&self, registry: &mut Registry) {
        let m = self;
        m.kubecost.register(registry);
        let r = registry.sub_registry_with_prefix("netcost");
        r.register_with_unit(
            "network",
            "L3 wire bytes (each segment of a GSO/GRO super-packet with its own headers) by owner, traffic class and direction",
            Unit::Bytes,
            m.bytes.clone(),
        );
        r.register(
            "network_packets",
            "Wire packets (segments) by owner, traffic class and direction",
            m.packets.clone(),
        );
        r.register_with_unit(
            "overflow",
            "Bytes whose flow entry could not be created (flow map full or busy): attributed to the owner with traffic_class=\"unknown\"",
            Unit::Bytes,
            m.overflow_bytes.clone(),
        );
        r.register_with_unit(
            "lost",
            "Bytes that could be stored neither per flow nor per owner (both maps full): counted but not attributed",
            Unit::Bytes,
            m.lost_bytes.clone(),
        );
        r.register(
            "lost_packets",
            "Packets that could be stored neither per flow nor per owner",
            m.lost_packets.clone(),
        );
        r.register_with_unit(
            "held",
            "Bytes counted but not yet attributed: their pod is not yet known from the Kubernetes API, or the topology is not yet synced",
            Unit::Bytes,
            m.held_bytes.clone(),
        );
        r.register_with_unit(
            "hold_expired",
            "Bytes held longer than kubernetes.hold_unknown_seconds and then attributed with what was known (pod UID only, or an unplaced class)",
            Unit::Bytes,
            m.hold_expired_bytes.clone(),
        );
        r.register(
            "pods_with_series",
            "Pods that currently have series (including deleted pods in their grace period)",
            m.pods_with_series.clone(),
        );
        r.register_with_unit(
            "nat_resolved",
            "Bytes of connections NAT rewrote, classified by the real remote end conntrack named",
            Unit::Bytes,
            m.nat_resolved_bytes.clone(),
        );
        r.register_with_unit(
            "nat_unresolved",
            "Bytes to a Service address whose connection conntrack did not name (classified by the Service address)",
            Unit::Bytes,
            m.nat_unresolved_bytes.clone(),
        );
        r.register_with_unit(
            "network_cost",
            "Cost of the bytes in netcost_network_bytes_total at the prices in force when they were counted (transfer, plus NAT gateway processing), by the same labels",
            Unit::Other("dollars".into()),
            m.cost.clone(),
        );
        r.register_with_unit(
            "unpriced",
            "Bytes that could not be priced: unplaced or unknown class, or no prices for our region",
            Unit::Bytes,
            m.unpriced_bytes.clone(),
        );
        r.register(
            "price_dollars_per_gigabyte",
            "Prices in force, USD per GB (2^30 bytes): cross_zone_out, cross_zone_in, inter_region_out, internet_out, nat_gateway",
            m.price.clone(),
        );
        r.register_with_unit(
            "kubecost_unmapped",
            "Pod bytes that Kubecost's labels cannot express (unplaced, unknown) and that its metrics leave out",
            Unit::Bytes,
            m.kubecost.unmapped_bytes.clone(),
        );
    }

    fn register_live(&self, registry: &mut Registry) {
        let m = self;
        let r = registry.sub_registry_with_prefix("netcost");
        r.register(
            "map_entries",
            "Entries found in a counting map at the last drain",
            m.map_entries.clone(),
        );
        r.register(
            "map_capacity",
            "Maximum entries of a counting map",
            m.map_capacity.clone(),
        );
        r.register(
            "map_entry_errors",
            "Map entries that could not be read or deleted during a drain (kept for the next one)",
            m.map_entry_errors.clone(),
        );
        r.register_with_unit(
            "drain_duration",
            "Time to drain the kernel maps and attribute their entries",
            Unit::Seconds,
            m.drain_duration.clone(),
        );
        r.register(
            "early_drains",
            "Drains started before the interval because the buffer being written was half full",
            m.early_drains.clone(),
        );
        r.register(
            "drain_errors",
            "Drains that failed (nothing is lost: the entries stay in the kernel)",
            m.drain_errors.clone(),
        );
        r.register(
            "programs_attached",
            "eBPF programs currently attached",
            m.programs_attached.clone(),
        );
        r.register(
            "build_info",
            "Agent version and kernel ABI version (value is always 1)",
            m.build_info.clone(),
        );
        r.register(
            "kubernetes_synced",
            "1 when the watch of a Kubernetes resource has listed everything and is current",
            m.kubernetes_synced.clone(),
        );
        r.register(
            "kubernetes_objects",
            "Objects of a Kubernetes resource known to the agent",
            m.kubernetes_objects.clone(),
        );
        r.register(
            "kubernetes_watch_errors",
            "Errors of a Kubernetes watch (it resumes with backoff, relisting after 410 Gone)",
            m.kubernetes_watch_errors.clone(),
        );
        r.register(
            "conntrack_events",
            "Conntrack events read (new, destroy) plus rows of dumps (dump)",
            m.conntrack_events.clone(),
        );
        r.register(
            "conntrack_resyncs",
            "Full conntrack dumps after the kernel dropped events (ENOBUFS) or on the periodic resync",
            m.conntrack_resyncs.clone(),
        );
        r.register(
            "conntrack_malformed",
            "Conntrack messages that could not be decoded (the reason is logged)",
            m.conntrack_malformed.clone(),
        );
        r.register(
            "conntrack_up",
            "1 while the conntrack reader is subscribed to events",
            m.conntrack_up.clone(),
        );
        r.register(
            "nat_connections",
            "Translated connections known (live, or destroyed and kept for their retention)",
            m.nat_connections.clone(),
        );
        r.register(
            "nat_table_full",
            "Translated connections not stored because nat.max_connections was reached",
            m.nat_table_full.clone(),
        );
        r.register(
            "translated_prefixes",
            "Prefixes in the kernel's TRANSLATED trie (Service CIDRs, learned Service and node addresses)",
            m.translated_prefixes.clone(),
        );
        r.register(
            "translated_errors",
            "Prefixes that could not be added to or removed from the kernel's TRANSLATED trie",
            m.translated_errors.clone(),
        );
        r.register(
            "checkpoint_errors",
            "Checkpoints of the totals that could not be written (a restart then goes on from an older one)",
            m.checkpoint_errors.clone(),
        );
        r.register_with_unit(
            "checkpoint_size",
            "Size of the last checkpoint of the totals",
            Unit::Bytes,
            m.checkpoint_size.clone(),
        );
        r.register(
            "start_info",
            "How the agent started: maps created, adopted or replaced; totals restored or reset; pinned or not (value is always 1)",
            m.start_info.clone(),
        );
        r.register(
            "topology_prefixes",
            "Prefixes that place remote addresses, by source (config, instance_metadata, ec2, nodes, pods, endpointslices); an earlier source outranks a later one",
            m.topology_prefixes.clone(),
        );
        r.register(
            "topology_source_up",
            "1 when a source of the classification table is on and its last answer succeeded",
            m.topology_source_up.clone(),
        );
        r.register(
            "aws_errors",
            "Failed requests to AWS (imds, ec2, credentials); the last good answer stays in use",
            m.aws_errors.clone(),
        );
    }

    /// Creates a pod's series at zero, so a scraper sees every series before its first byte
    /// (Prometheus' `increase()` cannot see what a counter held at its first sample).
    pub fn ensure_pod(&self, pod: &PodLabels) {
        for labels in pod_label_sets(pod, self.internet_route) {
            let _ = self.bytes.get_or_create(&labels);
            let _ = self.packets.get_or_create(&labels);
            let _ = self.cost.get_or_create(&labels);
            if let Some(k) = KubecostLabels::of(&labels) {
                let _ = self.kubecost.bytes(labels.direction).get_or_create(&k);
            }
        }
    }

    /// Publishes the prices in force (Kubecost's gauges too).
    pub fn set_prices(&self, prices: &crate::prices::Prices) {
        let nat = prices.nat_gateway_per_gb.unwrap_or(0.0);
        for (price, value) in [
            ("cross_zone_out", prices.cross_zone_out),
            ("cross_zone_in", prices.cross_zone_in),
            ("inter_region_out", prices.inter_region_out),
            ("internet_out", prices.internet_out),
            ("nat_gateway", nat),
        ] {
            self.price.get_or_create(&PriceLabels { price }).set(value);
        }
        let k = &self.kubecost;
        k.zone_egress_cost.set(prices.cross_zone_out);
        k.region_egress_cost.set(prices.inter_region_out);
        k.internet_egress_cost.set(prices.internet_out);
        k.nat_gateway_egress_cost.set(nat);
        k.nat_gateway_ingress_cost.set(nat);
    }

    /// Removes every series of a pod (after its grace period): the zero series and every
    /// destination its bytes went to (`used`).
    pub fn remove_pod(&self, pod: &PodLabels, used: &[TrafficLabels]) {
        for labels in pod_label_sets(pod, self.internet_route).chain(used.iter().cloned()) {
            self.bytes.remove(&labels);
            self.packets.remove(&labels);
            self.cost.remove(&labels);
            if let Some(k) = KubecostLabels::of(&labels) {
                self.kubecost.bytes(labels.direction).remove(&k);
            }
        }
    }
}

pub fn pod_label_sets(
    pod: &PodLabels,
    internet_route: Route,
) -> impl Iterator<Item = TrafficLabels> + '_ {
    TrafficClass::ALL.into_iter().flat_map(move |class| {
        Direction::BOTH.into_iter().map(move |direction| {
            let mut destination = Destination::from(class);
            if class == TrafficClass::Internet {
                destination.route = internet_route;
            }
            TrafficLabels::pod(pod, destination, direction)
        })
    })
}

/// Exposition formats. prometheus-client writes OpenMetrics text; the Prometheus 0.0.4 text format
/// is the same minus the `# EOF` trailer (its parser ignores the `# UNIT` comments).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Format {
    OpenMetrics,
    PrometheusText,
}

impl Format {
    /// Picks the format from an `Accept` header, as Prometheus negotiates it.
    pub fn negotiate(accept: Option<&str>) -> Format {
        match accept {
            Some(a) if a.contains("application/openmetrics-text") => Format::OpenMetrics,
            _ => Format::PrometheusText,
        }
    }

    pub fn content_type(self) -> &'static str {
        match self {
            Format::OpenMetrics => "application/openmetrics-text; version=1.0.0; charset=utf-8",
            Format::PrometheusText => "text/plain; version=0.0.4; charset=utf-8",
        }
    }
}

pub fn encode(registry: &Registry, format: Format) -> Result<String, std::fmt::Error> {
    let mut out = String::with_capacity(16 * 1024);
    prometheus_client::encoding::text::encode(&mut out, registry)?;
    match format {
        Format::OpenMetrics => Ok(out),
        Format::PrometheusText => Ok(to_prometheus_text(&out)),
    }
}

/// OpenMetrics text → Prometheus text 0.0.4: a counter's HELP and TYPE name its samples
/// (`x_total`, where OpenMetrics names the family `x`), and there is no `# UNIT` or `# EOF`.
/// Without this, 0.0.4 parsers see the samples as untyped and `promtool check metrics` says
/// "no help text".
pub fn to_prometheus_text(open_metrics: &str) -> String {
    let counters: std::collections::HashSet<&str> = open_metrics
        .lines()
        .filter_map(|l| l.strip_prefix("# TYPE ")?.strip_suffix(" counter"))
        .collect();
    let mut out = String::with_capacity(open_metrics.len());
    for line in open_metrics.lines() {
        if line.starts_with("# UNIT ") || line == "# EOF" {
            continue;
        }
        let renamed = ["# HELP ", "# TYPE "].iter().find_map(|prefix| {
            let rest = line.strip_prefix(prefix)?;
            let (name, tail) = rest.split_once(' ')?;
            counters
                .contains(name)
                .then(|| format!("{prefix}{name}_total {tail}"))
        });
        match renamed {
            Some(l) => out.push_str(&l),
            None => out.push_str(line),
        }
        out.push('\n');
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn prometheus_text_names_counters_by_their_samples() {
        let om = "# HELP a_bytes Bytes.\n# TYPE a_bytes counter\n# UNIT a_bytes bytes\na_bytes_total{x=\"1\"} 5\n# HELP g A gauge.\n# TYPE g gauge\ng 1\n# EOF\n";
        assert_eq!(
            to_prometheus_text(om),
            "# HELP a_bytes_total Bytes.\n# TYPE a_bytes_total counter\na_bytes_total{x=\"1\"} 5\n# HELP g A gauge.\n# TYPE g gauge\ng 1\n"
        );
    }

    #[test]
    fn pod_series_exist_at_zero_and_go_away() {
        let mut registry = Registry::default();
        let m = Metrics::new(&mut registry);
        let pod = PodLabels {
            namespace: "shop".into(),
            pod: "cart-1".into(),
            pod_uid: "u1".into(),
            workload_kind: "Deployment".into(),
            workload: "cart".into(),
        };
        m.ensure_pod(&pod);
        m.ensure_pod(&PodLabels::uid_only("u2"));
        let text = encode(&registry, Format::PrometheusText).unwrap();
        let line = "netcost_network_bytes_total{owner=\"pod\",namespace=\"shop\",pod=\"cart-1\",workload_kind=\"Deployment\",workload=\"cart\",pod_uid=\"u1\",traffic_class=\"cross_zone\",direction=\"ingress\"} 0";
        assert!(text.contains(line), "{text}");
        // Unknown names are left out rather than exposed empty.
        let line = "netcost_network_bytes_total{owner=\"pod\",pod_uid=\"u2\",traffic_class=\"internet\",direction=\"egress\"} 0";
        assert!(text.contains(line), "{text}");
        assert!(!text.contains("# EOF"));
        m.remove_pod(&pod, &[]);
        m.remove_pod(&PodLabels::uid_only("u2"), &[]);
        let text = encode(&registry, Format::OpenMetrics).unwrap();
        assert!(!text.contains("u1") && !text.contains("u2"), "{text}");
        assert!(text.ends_with("# EOF\n"));
    }

    #[test]
    fn negotiates_like_prometheus() {
        assert_eq!(
            Format::negotiate(Some(
                "application/openmetrics-text;version=1.0.0,text/plain;version=0.0.4;q=0.5"
            )),
            Format::OpenMetrics
        );
        assert_eq!(
            Format::negotiate(Some("text/plain")),
            Format::PrometheusText
        );
        assert_eq!(Format::negotiate(None), Format::PrometheusText);
    }
}
