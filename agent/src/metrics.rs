//! Expose: the metric families and their typed label sets.
//!
//! Label names avoid `zone`, `region`, `instance` and `job`, which clash with target labels that
//! Prometheus adds. No timestamps are exposed; counters only ever go up within one process life.

use std::fmt::Write as _;

use prometheus_client::{
    encoding::{EncodeLabelSet, EncodeLabelValue, LabelValueEncoder},
    metrics::{counter::Counter, family::Family, gauge::Gauge, histogram::Histogram},
    registry::{Registry, Unit},
};

use crate::{identity::Identity, topology::TrafficClass};

impl EncodeLabelValue for TrafficClass {
    fn encode(&self, encoder: &mut LabelValueEncoder) -> Result<(), std::fmt::Error> {
        encoder.write_str(self.as_str())
    }
}

#[derive(Clone, Copy, Debug, Hash, PartialEq, Eq, PartialOrd, Ord)]
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
#[derive(Clone, Copy, Debug, Hash, PartialEq, Eq, PartialOrd, Ord)]
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

#[derive(Clone, Debug, Hash, PartialEq, Eq, PartialOrd, Ord, EncodeLabelSet)]
pub struct TrafficLabels {
    pub owner: Owner,
    /// Empty unless `owner="pod"`.
    pub pod_uid: String,
    pub traffic_class: TrafficClass,
    pub direction: Direction,
}

impl TrafficLabels {
    pub fn new(identity: &Identity, traffic_class: TrafficClass, direction: Direction) -> Self {
        let (owner, pod_uid) = match identity {
            Identity::Pod { uid, .. } => (Owner::Pod, uid.clone()),
            Identity::Node => (Owner::Node, String::new()),
            Identity::Unknown => (Owner::Unknown, String::new()),
        };
        TrafficLabels {
            owner,
            pod_uid,
            traffic_class,
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
    pub programs_attached: Gauge,
    pub build_info: Family<BuildLabels, Gauge>,
}

impl Metrics {
    pub fn new(registry: &mut Registry) -> Metrics {
        let m = Metrics {
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
            programs_attached: Gauge::default(),
            build_info: Family::default(),
        };
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
        m
    }

    /// Creates a pod's series at zero, so a scraper sees every series before its first byte
    /// (Prometheus' `increase()` cannot see what a counter held at its first sample).
    pub fn ensure_pod(&self, uid: &str) {
        for labels in pod_label_sets(uid) {
            let _ = self.bytes.get_or_create(&labels);
            let _ = self.packets.get_or_create(&labels);
        }
    }

    /// Removes every series of a pod (after its grace period).
    pub fn remove_pod(&self, uid: &str) {
        for labels in pod_label_sets(uid) {
            self.bytes.remove(&labels);
            self.packets.remove(&labels);
        }
    }
}

fn pod_label_sets(uid: &str) -> impl Iterator<Item = TrafficLabels> + '_ {
    TrafficClass::ALL.into_iter().flat_map(move |class| {
        Direction::BOTH
            .into_iter()
            .map(move |direction| TrafficLabels {
                owner: Owner::Pod,
                pod_uid: uid.to_owned(),
                traffic_class: class,
                direction,
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
    if format == Format::PrometheusText && out.ends_with("# EOF\n") {
        out.truncate(out.len() - "# EOF\n".len());
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pod_series_exist_at_zero_and_go_away() {
        let mut registry = Registry::default();
        let m = Metrics::new(&mut registry);
        m.ensure_pod("u1");
        let text = encode(&registry, Format::PrometheusText).unwrap();
        let line = "netcost_network_bytes_total{owner=\"pod\",pod_uid=\"u1\",traffic_class=\"cross_zone\",direction=\"ingress\"} 0";
        assert!(text.contains(line), "{text}");
        assert!(!text.contains("# EOF"));
        m.remove_pod("u1");
        let text = encode(&registry, Format::OpenMetrics).unwrap();
        assert!(!text.contains("u1"), "{text}");
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
