//! The drain group: how the kernel maps fill and how each drain went (the agent's own state,
//! encoded at each scrape).

use prometheus_client::{
    encoding::EncodeLabelSet,
    metrics::{counter::Counter, family::Family, gauge::Gauge, histogram::Histogram},
    registry::Unit,
};

use crate::{kernel::KernelMaps, vocab::Registries};

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct MapLabels {
    map: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct BuildLabels {
    version: &'static str,
    abi_version: String,
}

#[derive(Clone)]
pub struct DrainMetrics {
    map_entries: Family<MapLabels, Gauge>,
    map_capacity: Family<MapLabels, Gauge>,
    map_entry_errors: Counter,
    duration: Histogram,
    errors: Counter,
    early_drains: Counter,
    programs_attached: Gauge,
    build_info: Family<BuildLabels, Gauge>,
    interval: Gauge<f64, std::sync::atomic::AtomicU64>,
}

impl DrainMetrics {
    pub fn register(registries: &mut Registries) -> DrainMetrics {
        let m = DrainMetrics {
            map_entries: Family::default(),
            map_capacity: Family::default(),
            map_entry_errors: Counter::default(),
            duration: Histogram::new([
                0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 1.0,
            ]),
            errors: Counter::default(),
            early_drains: Counter::default(),
            programs_attached: Gauge::default(),
            build_info: Family::default(),
            interval: Gauge::default(),
        };
        let r = registries.live();
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
            m.duration.clone(),
        );
        r.register(
            "early_drains",
            "Drains started before the interval because the buffer being written was half full",
            m.early_drains.clone(),
        );
        r.register(
            "drain_errors",
            "Drains that failed (nothing is lost: the entries stay in the kernel)",
            m.errors.clone(),
        );
        r.register_with_unit(
            "drain_interval",
            "The configured time between drains (drain_interval_seconds)",
            Unit::Seconds,
            m.interval.clone(),
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
        m
    }

    /// The maps' capacities, once loaded.
    pub fn set_capacity(&self, maps: &KernelMaps) {
        for (map, capacity) in [
            ("flows", maps.flow_capacity),
            ("overflow", maps.overflow_capacity),
        ] {
            self.map_capacity
                .get_or_create(&MapLabels { map })
                .set(i64::from(capacity));
        }
    }

    pub fn set_interval(&self, interval: std::time::Duration) {
        self.interval.set(interval.as_secs_f64());
    }

    pub fn set_attached(&self, programs: usize) {
        self.programs_attached.set(programs as i64);
    }

    /// How long a drain took to read and account its entries (the checkpoint excluded).
    pub fn took(&self, seconds: f64) {
        self.duration.observe(seconds);
    }

    /// A drain failed (its entries stay in the kernel for the next one).
    pub fn failed(&self) {
        self.errors.inc();
    }

    /// A drain started before the interval: the buffer being written was half full.
    pub fn early(&self) {
        self.early_drains.inc();
    }

    /// What the last drain found in the maps.
    pub fn drained(&self, maps: &KernelMaps) {
        for (map, n) in [
            ("flows", maps.last_flow_entries),
            ("overflow", maps.last_overflow_entries),
        ] {
            self.map_entries
                .get_or_create(&MapLabels { map })
                .set(n as i64);
        }
        self.map_entry_errors.inc_by(maps.last_entry_errors as u64);
    }
}
