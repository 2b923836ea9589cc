//! Per-connection entries to a Service address conntrack has not named yet: held (bounded) for
//! `nat.wait`, then classified by the Service address and counted as unresolved.

use std::{net::IpAddr, time::Instant};

use agent_common::{Counter, FlowKey};

use crate::{
    attribute::hold::{age_seconds, since_age, Hold},
    vocab::Direction,
};

/// A waiting connection as a checkpoint keeps it.
#[derive(Clone, Debug, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct PendingConnection {
    pub cgroup_id: u64,
    pub local: IpAddr,
    pub remote: IpAddr,
    /// Network byte order, as the kernel stored them.
    pub local_port: u16,
    pub remote_port: u16,
    pub protocol: u8,
    pub direction: Direction,
    pub bytes: u64,
    pub packets: u64,
    pub age_seconds: f64,
}

pub fn snapshot(pending: &Hold<FlowKey>, now: Instant) -> Vec<PendingConnection> {
    pending
        .iter()
        .map(|(k, h)| PendingConnection {
            cgroup_id: k.cgroup_id,
            local: k.local_addr(),
            remote: k.remote_addr(),
            local_port: k.local_port,
            remote_port: k.remote_port,
            protocol: k.protocol,
            direction: Direction::from_abi(k.direction),
            bytes: h.counter.bytes,
            packets: h.counter.packets,
            age_seconds: age_seconds(h.since, now),
        })
        .collect()
}

pub fn restore(pending: &mut Hold<FlowKey>, saved: &[PendingConnection], now: Instant) {
    for p in saved {
        let (family, remote) = agent_common::addr_words(p.remote);
        let key = FlowKey {
            cgroup_id: p.cgroup_id,
            remote,
            local: agent_common::addr_words(p.local).1,
            local_port: p.local_port,
            remote_port: p.remote_port,
            family,
            direction: p.direction.abi(),
            protocol: p.protocol,
            _pad: 0,
        };
        let counter = Counter {
            bytes: p.bytes,
            packets: p.packets,
        };
        let _ = pending.add(&key, &counter, since_age(p.age_seconds, now));
    }
}
