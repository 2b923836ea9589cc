//! One direction of data: kernel maps → drain → attribute → classify → expose.

use std::{
    collections::{HashMap, HashSet},
    net::{IpAddr, Ipv4Addr, Ipv6Addr},
    time::{Duration, Instant},
};

use agent_common::{Counter, FlowKey, FAMILY_IPV4};

use crate::{
    drain::{CountingBuffers, Drainer},
    identity::{CgroupResolver, Identity},
    metrics::{Direction, DirectionLabels, Metrics, TrafficLabels},
    topology::{Topology, TrafficClass},
};

/// How often the cgroup tree is walked even when no unknown id shows up: new pods get their zero
/// series and gone pods start their grace period.
const CGROUP_REFRESH: Duration = Duration::from_secs(10);

pub fn remote_addr(key: &FlowKey) -> IpAddr {
    let octets = key.remote_octets();
    if key.family == FAMILY_IPV4 {
        let [a, b, c, d, ..] = octets;
        IpAddr::V4(Ipv4Addr::new(a, b, c, d))
    } else {
        IpAddr::V6(Ipv6Addr::from(octets))
    }
}

pub struct Pipeline<B, T> {
    drainer: Drainer<B>,
    resolver: CgroupResolver,
    topology: T,
    metrics: Metrics,
    /// Pods that have series, and since when their cgroup is gone (if it is).
    pods_with_series: HashMap<String, Option<Instant>>,
    series_grace: Duration,
}

impl<B: CountingBuffers, T: Topology> Pipeline<B, T> {
    pub fn new(
        drainer: Drainer<B>,
        resolver: CgroupResolver,
        topology: T,
        metrics: Metrics,
        series_grace: Duration,
    ) -> Self {
        Pipeline {
            drainer,
            resolver,
            topology,
            metrics,
            pods_with_series: HashMap::new(),
            series_grace,
        }
    }

    pub fn drainer(&self) -> &Drainer<B> {
        &self.drainer
    }

    /// One drain. On error nothing was taken out of the kernel that is not also accounted.
    pub fn tick(&mut self) -> Result<(), B::Error> {
        let started = Instant::now();
        self.resolver.refresh_if_older(CGROUP_REFRESH);
        let batch = self.drainer.drain()?;
        for (key, counter) in &batch.flows {
            let identity = self.resolver.resolve(key.cgroup_id);
            let class = self.topology.classify(remote_addr(key));
            self.add(
                &identity,
                class,
                Direction::from_abi(key.direction),
                counter,
            );
        }
        for (key, counter) in &batch.overflow {
            let identity = self.resolver.resolve(key.cgroup_id);
            let direction = Direction::from_abi(key.direction);
            self.add(&identity, TrafficClass::Unknown, direction, counter);
            self.metrics
                .overflow_bytes
                .get_or_create(&DirectionLabels { direction })
                .inc_by(counter.bytes);
        }
        for direction in Direction::BOTH {
            let lost = batch.lost[direction as usize];
            let labels = DirectionLabels { direction };
            self.metrics
                .lost_bytes
                .get_or_create(&labels)
                .inc_by(lost.bytes);
            self.metrics
                .lost_packets
                .get_or_create(&labels)
                .inc_by(lost.packets);
        }
        self.sync_pod_series();
        self.metrics
            .drain_duration
            .observe(started.elapsed().as_secs_f64());
        Ok(())
    }

    fn add(&mut self, identity: &Identity, class: TrafficClass, direction: Direction, c: &Counter) {
        if let Identity::Pod { uid, .. } = identity {
            if !self.pods_with_series.contains_key(uid) {
                self.metrics.ensure_pod(uid);
                self.pods_with_series.insert(uid.clone(), None);
            }
        }
        let labels = TrafficLabels::new(identity, class, direction);
        self.metrics.bytes.get_or_create(&labels).inc_by(c.bytes);
        self.metrics
            .packets
            .get_or_create(&labels)
            .inc_by(c.packets);
    }

    /// Zero series for pods that appeared; removal of pods gone for longer than the grace period.
    fn sync_pod_series(&mut self) {
        let live: &HashSet<String> = self.resolver.live_pods();
        for uid in live {
            if !self.pods_with_series.contains_key(uid) {
                self.metrics.ensure_pod(uid);
            }
            self.pods_with_series.insert(uid.clone(), None);
        }
        let now = Instant::now();
        let grace = self.series_grace;
        let metrics = &self.metrics;
        self.pods_with_series.retain(|uid, gone_since| {
            if live.contains(uid) {
                return true;
            }
            let since = *gone_since.get_or_insert(now);
            if now.duration_since(since) >= grace {
                metrics.remove_pod(uid);
                return false;
            }
            true
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use agent_common::{FlowKey, FAMILY_IPV6};

    #[test]
    fn remote_addresses_round_trip() {
        let v4 = [u32::from_ne_bytes([203, 0, 113, 5]), 0, 0, 0];
        let k = FlowKey::new(1, v4, FAMILY_IPV4, 0);
        assert_eq!(remote_addr(&k), "203.0.113.5".parse::<IpAddr>().unwrap());
        let v6: Ipv6Addr = "2001:db8::7".parse().unwrap();
        let o = v6.octets();
        let words = std::array::from_fn(|i| {
            u32::from_ne_bytes([o[4 * i], o[4 * i + 1], o[4 * i + 2], o[4 * i + 3]])
        });
        let k = FlowKey::new(1, words, FAMILY_IPV6, 1);
        assert_eq!(remote_addr(&k), IpAddr::V6(v6));
    }
}
