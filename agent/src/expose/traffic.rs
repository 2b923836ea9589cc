//! The traffic group: every byte counted, by owner, destination and direction, with what it
//! cost, and the totals around it (bytes the maps could not key, bytes held, expired, unpriced,
//! resolved through NAT). All of it is durable: the checkpoint keeps it (`totals`, `restore`).
//!
//! A pod's series exist from its first sight at zero (Prometheus' `increase()` cannot see what
//! a counter held at its first sample) and go away with the pod after its grace period.

use std::collections::{HashMap, HashSet};

use agent_common::Counter as Bytes;
use prometheus_client::{
    encoding::EncodeLabelSet,
    metrics::{counter::Counter, family::Family, gauge::Gauge},
    registry::Unit,
};
use serde::{Deserialize, Serialize};

use super::kubecost::{KubecostMetrics, KubecostTotal};
use crate::{
    price::Prices,
    vocab::{
        Destination, Direction, DollarCounter, Owner, PodLabels, Registries, Route, TrafficClass,
        TrafficLabels,
    },
};

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct DirectionLabels {
    direction: Direction,
}

#[derive(Clone, Default)]
struct Families {
    bytes: Family<TrafficLabels, Counter>,
    packets: Family<TrafficLabels, Counter>,
    cost: Family<TrafficLabels, DollarCounter>,
    overflow_bytes: Family<DirectionLabels, Counter>,
    lost_bytes: Family<DirectionLabels, Counter>,
    lost_packets: Family<DirectionLabels, Counter>,
    held_bytes: Gauge,
    hold_expired_bytes: Counter,
    pods_with_series: Gauge,
    nat_resolved_bytes: Counter,
    nat_unresolved_bytes: Counter,
    unpriced_bytes: Counter,
}

pub struct TrafficMetrics {
    f: Families,
    kubecost: KubecostMetrics,
    /// The route plain internet bytes take from this node: a pod's zero series use it.
    internet_route: Route,
    /// Series of each pod beyond its zero set (cloud services, routes), removed with the pod.
    extra: HashMap<String, HashSet<TrafficLabels>>,
    /// Series without a pod (node, unknown): few, and never removed.
    node_series: HashSet<TrafficLabels>,
}

/// One series of `netcost_network_*` and `netcost_network_cost_dollars_total`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct TrafficTotal {
    pub labels: TrafficLabels,
    pub bytes: u64,
    pub packets: u64,
    pub dollars: f64,
}

/// Counters without a pod: by direction where they have one (egress, ingress).
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct Counters {
    pub overflow_bytes: [u64; 2],
    pub lost_bytes: [u64; 2],
    pub lost_packets: [u64; 2],
    pub hold_expired_bytes: u64,
    pub nat_resolved_bytes: u64,
    pub nat_unresolved_bytes: u64,
    pub unpriced_bytes: u64,
    pub kubecost_unmapped_bytes: u64,
}

/// Everything the group counted: what a checkpoint keeps of it.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct Totals {
    pub traffic: Vec<TrafficTotal>,
    pub kubecost: Vec<KubecostTotal>,
    pub counters: Counters,
}

impl TrafficMetrics {
    /// In the durable registry; `internet_route` is the route of this node's internet bytes,
    /// `price_gauges` whether Kubecost's five price gauges are exposed.
    pub fn register(
        registries: &mut Registries,
        internet_route: Route,
        price_gauges: bool,
    ) -> TrafficMetrics {
        let kubecost = KubecostMetrics::register(registries, price_gauges);
        let f = Families::default();
        let r = registries.durable();
        r.register_with_unit(
            "network",
            "L3 wire bytes (each segment of a GSO/GRO super-packet with its own headers) by owner, traffic class and direction",
            Unit::Bytes,
            f.bytes.clone(),
        );
        r.register(
            "network_packets",
            "Wire packets (segments) by owner, traffic class and direction",
            f.packets.clone(),
        );
        r.register_with_unit(
            "overflow",
            "Bytes whose flow entry could not be created (flow map full or busy): attributed to the owner with traffic_class=\"unknown\"",
            Unit::Bytes,
            f.overflow_bytes.clone(),
        );
        r.register_with_unit(
            "lost",
            "Bytes that could be stored neither per flow nor per owner (both maps full): counted but not attributed",
            Unit::Bytes,
            f.lost_bytes.clone(),
        );
        r.register(
            "lost_packets",
            "Packets that could be stored neither per flow nor per owner",
            f.lost_packets.clone(),
        );
        r.register_with_unit(
            "held",
            "Bytes counted but not yet attributed: their pod is not yet known from the Kubernetes API, or the topology is not yet synced",
            Unit::Bytes,
            f.held_bytes.clone(),
        );
        r.register_with_unit(
            "hold_expired",
            "Bytes held longer than kubernetes.hold_unknown_seconds and then attributed with what was known (pod UID only, or an unplaced class)",
            Unit::Bytes,
            f.hold_expired_bytes.clone(),
        );
        r.register(
            "pods_with_series",
            "Pods that currently have series (including deleted pods in their grace period)",
            f.pods_with_series.clone(),
        );
        r.register_with_unit(
            "nat_resolved",
            "Bytes of connections NAT rewrote, classified by the real remote end conntrack named",
            Unit::Bytes,
            f.nat_resolved_bytes.clone(),
        );
        r.register_with_unit(
            "nat_unresolved",
            "Bytes to a Service address whose connection conntrack did not name (classified by the Service address)",
            Unit::Bytes,
            f.nat_unresolved_bytes.clone(),
        );
        r.register_with_unit(
            "network_cost",
            "Cost of the bytes in netcost_network_bytes_total at the prices in force when they were counted (transfer, plus NAT gateway processing), by the same labels",
            Unit::Other("dollars".into()),
            f.cost.clone(),
        );
        r.register_with_unit(
            "unpriced",
            "Bytes that could not be priced: unplaced or unknown class, or no prices for our region",
            Unit::Bytes,
            f.unpriced_bytes.clone(),
        );
        // Alerts watch these: exposed at zero from the start.
        for direction in Direction::BOTH {
            let labels = DirectionLabels { direction };
            let _ = f.overflow_bytes.get_or_create(&labels);
            let _ = f.lost_bytes.get_or_create(&labels);
            let _ = f.lost_packets.get_or_create(&labels);
        }
        TrafficMetrics {
            f,
            kubecost,
            internet_route,
            extra: HashMap::new(),
            node_series: HashSet::new(),
        }
    }

    /// Bytes of one series, with their dollars (`None`: they could not be priced).
    pub fn record(&mut self, labels: &TrafficLabels, counter: &Bytes, dollars: Option<f64>) {
        self.note_series(labels);
        let f = &self.f;
        f.bytes.get_or_create(labels).inc_by(counter.bytes);
        f.packets.get_or_create(labels).inc_by(counter.packets);
        match dollars {
            Some(d) => {
                f.cost.get_or_create(labels).inc_by(d);
            }
            None => {
                f.unpriced_bytes.inc_by(counter.bytes);
            }
        }
        self.kubecost.record(labels, counter.bytes);
    }

    /// Remembers a series outside a pod's zero set (so it is removed with the pod), or without
    /// a pod (so the checkpoint finds it).
    fn note_series(&mut self, labels: &TrafficLabels) {
        if labels.owner != Owner::Pod {
            if !self.node_series.contains(labels) {
                self.node_series.insert(labels.clone());
            }
            return;
        }
        let d = &labels.destination;
        let zero_set = d.service.is_none()
            && (d.route == Route::Direct
                || (d.class == TrafficClass::Internet && d.route == self.internet_route));
        if zero_set {
            return;
        }
        let extra = self.extra.entry(labels.pod.pod_uid.clone()).or_default();
        if !extra.contains(labels) {
            extra.insert(labels.clone());
        }
    }

    /// Bytes of an owner whose flow entry could not be created (attributed separately).
    pub fn overflow(&self, direction: Direction, bytes: u64) {
        let labels = DirectionLabels { direction };
        self.f.overflow_bytes.get_or_create(&labels).inc_by(bytes);
    }

    /// The increase of the kernel's `LOST` slots.
    pub fn lost(&self, direction: Direction, lost: &Bytes) {
        let labels = DirectionLabels { direction };
        self.f.lost_bytes.get_or_create(&labels).inc_by(lost.bytes);
        self.f
            .lost_packets
            .get_or_create(&labels)
            .inc_by(lost.packets);
    }

    /// Bytes held past their time, counted with what was known.
    pub fn hold_expired(&self, bytes: u64) {
        self.f.hold_expired_bytes.inc_by(bytes);
    }

    pub fn nat_resolved(&self, bytes: u64) {
        self.f.nat_resolved_bytes.inc_by(bytes);
    }

    pub fn nat_unresolved(&self, bytes: u64) {
        self.f.nat_unresolved_bytes.inc_by(bytes);
    }

    /// Bytes waiting now, and the pods that have series.
    pub fn set_waiting(&self, held_bytes: u64, pods_with_series: usize) {
        self.f.held_bytes.set(held_bytes as i64);
        self.f.pods_with_series.set(pods_with_series as i64);
    }

    pub fn set_prices(&self, prices: &Prices) {
        self.kubecost.set_prices(prices);
    }

    /// A pod's zero set: every class both ways, internet bytes by this node's route.
    fn zero_set(&self, pod: &PodLabels) -> impl Iterator<Item = TrafficLabels> + '_ {
        let route = self.internet_route;
        let pod = pod.clone();
        TrafficClass::ALL.into_iter().flat_map(move |class| {
            let pod = pod.clone();
            Direction::BOTH.into_iter().map(move |direction| {
                let mut destination = Destination::from(class);
                if class == TrafficClass::Internet {
                    destination.route = route;
                }
                TrafficLabels::pod(&pod, destination, direction)
            })
        })
    }

    /// Creates a pod's series at zero, so a scraper sees every series before its first byte.
    pub fn ensure_pod(&self, pod: &PodLabels) {
        for labels in self.zero_set(pod) {
            let _ = self.f.bytes.get_or_create(&labels);
            let _ = self.f.packets.get_or_create(&labels);
            let _ = self.f.cost.get_or_create(&labels);
            self.kubecost.ensure(&labels);
        }
    }

    /// Removes every series of a pod (after its grace period): the zero sets of each label set
    /// it had and every other destination its bytes went to.
    pub fn remove_pod(&mut self, uid: &str, label_sets: &[PodLabels]) {
        let extra = self.extra.remove(uid).unwrap_or_default();
        let zero: Vec<TrafficLabels> = label_sets.iter().flat_map(|p| self.zero_set(p)).collect();
        for labels in zero.iter().chain(&extra) {
            self.f.bytes.remove(labels);
            self.f.packets.remove(labels);
            self.f.cost.remove(labels);
            self.kubecost.remove(labels);
        }
    }

    /// Every series' totals (`pods`: the label sets of the pods with series).
    pub fn totals<'a>(&self, pods: impl Iterator<Item = &'a PodLabels>) -> Totals {
        let f = &self.f;
        let mut all: Vec<TrafficLabels> = pods.flat_map(|p| self.zero_set(p)).collect();
        all.extend(self.extra.values().flatten().cloned());
        all.extend(self.node_series.iter().cloned());
        let traffic = all
            .iter()
            .filter_map(|labels| {
                let bytes = f.bytes.get_or_create(labels).get();
                let packets = f.packets.get_or_create(labels).get();
                let dollars = f.cost.get_or_create(labels).get();
                (bytes != 0 || packets != 0 || dollars != 0.0).then(|| TrafficTotal {
                    labels: labels.clone(),
                    bytes,
                    packets,
                    dollars,
                })
            })
            .collect();
        let per_direction = |family: &Family<DirectionLabels, Counter>| {
            Direction::BOTH
                .map(|direction| family.get_or_create(&DirectionLabels { direction }).get())
        };
        Totals {
            traffic,
            kubecost: self.kubecost.totals(all.iter()),
            counters: Counters {
                overflow_bytes: per_direction(&f.overflow_bytes),
                lost_bytes: per_direction(&f.lost_bytes),
                lost_packets: per_direction(&f.lost_packets),
                hold_expired_bytes: f.hold_expired_bytes.get(),
                nat_resolved_bytes: f.nat_resolved_bytes.get(),
                nat_unresolved_bytes: f.nat_unresolved_bytes.get(),
                unpriced_bytes: f.unpriced_bytes.get(),
                kubecost_unmapped_bytes: self.kubecost.unmapped(),
            },
        }
    }

    /// Takes over a predecessor's totals (their label sets already cleaned; each pod's zero
    /// series created by the caller first).
    pub fn restore(&mut self, totals: &Totals) {
        for t in &totals.traffic {
            self.note_series(&t.labels);
            let f = &self.f;
            f.bytes.get_or_create(&t.labels).inc_by(t.bytes);
            f.packets.get_or_create(&t.labels).inc_by(t.packets);
            if t.dollars != 0.0 {
                f.cost.get_or_create(&t.labels).inc_by(t.dollars);
            }
        }
        let c = &totals.counters;
        let f = &self.f;
        for direction in Direction::BOTH {
            let d = direction as usize;
            let labels = DirectionLabels { direction };
            f.overflow_bytes
                .get_or_create(&labels)
                .inc_by(c.overflow_bytes[d]);
            f.lost_bytes.get_or_create(&labels).inc_by(c.lost_bytes[d]);
            f.lost_packets
                .get_or_create(&labels)
                .inc_by(c.lost_packets[d]);
        }
        f.hold_expired_bytes.inc_by(c.hold_expired_bytes);
        f.nat_resolved_bytes.inc_by(c.nat_resolved_bytes);
        f.nat_unresolved_bytes.inc_by(c.nat_unresolved_bytes);
        f.unpriced_bytes.inc_by(c.unpriced_bytes);
        self.kubecost
            .restore(&totals.kubecost, c.kubecost_unmapped_bytes);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::expose::exposition::{encode, Format};

    #[test]
    fn pod_series_exist_at_zero_and_go_away() {
        let mut registries = Registries::default();
        let mut m = TrafficMetrics::register(&mut registries, Route::Direct, true);
        let registry = &registries.durable;
        let pod = PodLabels {
            namespace: "shop".into(),
            pod: "cart-1".into(),
            pod_uid: "u1".into(),
            workload_kind: "Deployment".into(),
            workload: "cart".into(),
        };
        m.ensure_pod(&pod);
        m.ensure_pod(&PodLabels::uid_only("u2"));
        let text = encode(registry, Format::PrometheusText).unwrap();
        let line = "netcost_network_bytes_total{owner=\"pod\",namespace=\"shop\",pod=\"cart-1\",workload_kind=\"Deployment\",workload=\"cart\",pod_uid=\"u1\",traffic_class=\"cross_zone\",direction=\"ingress\"} 0";
        assert!(text.contains(line), "{text}");
        // Unknown names are left out rather than exposed empty.
        let line = "netcost_network_bytes_total{owner=\"pod\",pod_uid=\"u2\",traffic_class=\"internet\",direction=\"egress\"} 0";
        assert!(text.contains(line), "{text}");
        assert!(!text.contains("# EOF"));
        m.remove_pod("u1", &[pod]);
        m.remove_pod("u2", &[PodLabels::uid_only("u2")]);
        let text = encode(registry, Format::OpenMetrics).unwrap();
        assert!(!text.contains("u1") && !text.contains("u2"), "{text}");
        assert!(text.ends_with("# EOF\n"));
    }

    /// `kubecost.price_gauges: false`: the five price gauges are not exposed (true: they are).
    #[test]
    fn price_gauges_can_be_left_to_opencost() {
        for gauges in [true, false] {
            let mut registries = Registries::default();
            let m = TrafficMetrics::register(&mut registries, Route::Direct, gauges);
            let table = crate::price::PriceTable::built_in();
            let prices =
                crate::price::Prices::for_region(&table, "us-east-1", 0, &Default::default());
            m.set_prices(&prices.unwrap());
            let text = encode(&registries.durable, Format::PrometheusText).unwrap();
            for name in [
                "kubecost_network_zone_egress_cost",
                "kubecost_network_region_egress_cost",
                "kubecost_network_internet_egress_cost",
                "kubecost_network_nat_gateway_egress_cost",
                "kubecost_network_nat_gateway_ingress_cost",
            ] {
                assert_eq!(
                    text.contains(&format!("\n{name} ")),
                    gauges,
                    "{name}: {text}"
                );
            }
        }
    }
}
