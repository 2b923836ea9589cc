//! Kubecost's `network-costs` metrics, with exactly its names and labels, so that OpenCost and
//! Kubecost read netcost unchanged: the bytes of each pod by Kubecost's classes, and the prices.

use prometheus_client::{
    encoding::EncodeLabelSet,
    metrics::{counter::Counter, family::Family},
};

use crate::{
    price::Prices,
    vocab::{Direction, DollarGauge, Owner, Registries, Route, TrafficClass, TrafficLabels},
};

#[derive(Clone, Default)]
pub struct KubecostMetrics {
    egress_bytes: Family<KubecostLabels, Counter>,
    ingress_bytes: Family<KubecostLabels, Counter>,
    zone_egress_cost: DollarGauge,
    region_egress_cost: DollarGauge,
    internet_egress_cost: DollarGauge,
    nat_gateway_egress_cost: DollarGauge,
    nat_gateway_ingress_cost: DollarGauge,
    /// Pod bytes Kubecost's labels cannot express (unplaced, unknown): not in its families.
    unmapped_bytes: Counter,
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

/// One series of Kubecost's byte counters, as a checkpoint keeps it.
#[derive(Clone, Debug, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct KubecostTotal {
    pub direction: Direction,
    #[serde(flatten)]
    pub labels: KubecostLabels,
    pub bytes: u64,
}

impl KubecostMetrics {
    /// In the durable registry: the byte counters are totals, the prices what they cost (unless
    /// `price_gauges` is false: OpenCost may export the same gauges with its own values, and two
    /// sources of one series disagree).
    pub fn register(registries: &mut Registries, price_gauges: bool) -> KubecostMetrics {
        let m = KubecostMetrics::default();
        let r = &mut registries.durable;
        r.register(
            "kubecost_pod_network_egress_bytes",
            "Kubecost network-costs compatible: bytes sent by a pod, by destination class",
            m.egress_bytes.clone(),
        );
        r.register(
            "kubecost_pod_network_ingress_bytes",
            "Kubecost network-costs compatible: bytes received by a pod, by source class",
            m.ingress_bytes.clone(),
        );
        for (name, help, gauge) in [
            (
                "kubecost_network_zone_egress_cost",
                "Price of cross-zone egress, USD per GB",
                &m.zone_egress_cost,
            ),
            (
                "kubecost_network_region_egress_cost",
                "Price of inter-region egress, USD per GB",
                &m.region_egress_cost,
            ),
            (
                "kubecost_network_internet_egress_cost",
                "Price of internet egress (the configured tier), USD per GB",
                &m.internet_egress_cost,
            ),
            (
                "kubecost_network_nat_gateway_egress_cost",
                "NAT gateway processing price, USD per GB",
                &m.nat_gateway_egress_cost,
            ),
            (
                "kubecost_network_nat_gateway_ingress_cost",
                "NAT gateway processing price, USD per GB",
                &m.nat_gateway_ingress_cost,
            ),
        ] {
            if price_gauges {
                r.register(name, help, gauge.clone());
            }
        }
        registries.durable().register_with_unit(
            "kubecost_unmapped",
            "Pod bytes that Kubecost's labels cannot express (unplaced, unknown) and that its metrics leave out",
            prometheus_client::registry::Unit::Bytes,
            m.unmapped_bytes.clone(),
        );
        m
    }

    fn bytes(&self, direction: Direction) -> &Family<KubecostLabels, Counter> {
        match direction {
            Direction::Egress => &self.egress_bytes,
            Direction::Ingress => &self.ingress_bytes,
        }
    }

    /// Bytes of a pod's series (ignored for series without a pod name).
    pub fn record(&self, labels: &TrafficLabels, bytes: u64) {
        if labels.owner != Owner::Pod || labels.pod.pod.is_empty() {
            return;
        }
        match KubecostLabels::of(labels) {
            Some(k) => self.bytes(labels.direction).get_or_create(&k).inc_by(bytes),
            None => self.unmapped_bytes.inc_by(bytes),
        };
    }

    /// Creates the series of `labels` at zero.
    pub fn ensure(&self, labels: &TrafficLabels) {
        if let Some(k) = KubecostLabels::of(labels) {
            let _ = self.bytes(labels.direction).get_or_create(&k);
        }
    }

    pub fn remove(&self, labels: &TrafficLabels) {
        if let Some(k) = KubecostLabels::of(labels) {
            self.bytes(labels.direction).remove(&k);
        }
    }

    /// The prices in force, as Kubecost names them.
    pub fn set_prices(&self, prices: &Prices) {
        let nat = prices.nat_gateway_per_gb.unwrap_or(0.0);
        self.zone_egress_cost.set(prices.cross_zone_out);
        self.region_egress_cost.set(prices.inter_region_out);
        self.internet_egress_cost.set(prices.internet_out);
        self.nat_gateway_egress_cost.set(nat);
        self.nat_gateway_ingress_cost.set(nat);
    }

    /// The totals of the series `labels` stand for (each Kubecost series once).
    pub fn totals<'a>(
        &self,
        labels: impl Iterator<Item = &'a TrafficLabels>,
    ) -> Vec<KubecostTotal> {
        let mut seen = std::collections::HashSet::new();
        labels
            .filter_map(|l| Some((l.direction, KubecostLabels::of(l)?)))
            .filter(|key| seen.insert(key.clone()))
            .filter_map(|(direction, labels)| {
                let bytes = self.bytes(direction).get_or_create(&labels).get();
                (bytes != 0).then_some(KubecostTotal {
                    direction,
                    labels,
                    bytes,
                })
            })
            .collect()
    }

    pub fn unmapped(&self) -> u64 {
        self.unmapped_bytes.get()
    }

    pub fn restore(&self, totals: &[KubecostTotal], unmapped: u64) {
        for k in totals {
            self.bytes(k.direction)
                .get_or_create(&k.labels)
                .inc_by(k.bytes);
        }
        self.unmapped_bytes.inc_by(unmapped);
    }
}
