//! How a metric group registers itself. Every component that records metrics owns a group (a
//! struct of families built by its `register`) and puts each family in one of two registries:
//! `durable` for the totals the checkpoint keeps (exposed only from an encoding made after the
//! checkpoint holding them was written) and `live` for the agent's own state (encoded at each
//! scrape).

use std::sync::atomic::AtomicU64;

use prometheus_client::{
    metrics::{counter::Counter, gauge::Gauge},
    registry::Registry,
};

/// Dollars: counters and gauges of `f64`.
pub type DollarCounter = Counter<f64, AtomicU64>;
pub type DollarGauge = Gauge<f64, AtomicU64>;

#[derive(Debug, Default)]
pub struct Registries {
    pub durable: Registry,
    pub live: Registry,
}

impl Registries {
    /// The `netcost_` part of the totals.
    pub fn durable(&mut self) -> &mut Registry {
        self.durable.sub_registry_with_prefix("netcost")
    }

    /// The `netcost_` part of the agent's own state.
    pub fn live(&mut self) -> &mut Registry {
        self.live.sub_registry_with_prefix("netcost")
    }
}
