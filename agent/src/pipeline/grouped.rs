//! The drained flow entries, accounted a group at a time: one group per owner (cgroup) and
//! direction. The owner's names are looked up once per group and each traffic series is recorded
//! once with the sum of its entries; classification, price and remote-end names stay per entry.
//! At 100,000 entries per drain, cloning names and hashing whole label sets per entry was most
//! of the drain's time. Entries whose answer must wait (pod not named yet, topology not synced,
//! NAT not resolved) take the entry-by-entry path, which holds them: the totals are the same
//! either way (tested against that path).

use std::{collections::HashMap, time::Instant};

use agent_common::{Counter, FlowKey};

use super::Pipeline;
use crate::{
    attribute::{HeldKey, Whose},
    classify::nat::NatTable,
    drain::CountingBuffers,
    inventory::Inventory,
    vocab::{Destination, Direction, Owner, PodLabels, TrafficClass, TrafficLabels},
};

/// One series' sum within a group: its labels, bytes and packets, dollars.
struct Sum {
    labels: TrafficLabels,
    counter: Counter,
    dollars: f64,
}

impl<B: CountingBuffers> Pipeline<B> {
    pub(super) fn take_flows(
        &mut self,
        inventory: Option<&Inventory>,
        nat: Option<&NatTable>,
        flows: &[(FlowKey, Counter)],
        now: Instant,
    ) {
        let mut order: Vec<&(FlowKey, Counter)> = flows.iter().collect();
        order.sort_unstable_by_key(|(k, _)| (k.cgroup_id, k.direction));
        for group in
            order.chunk_by(|a, b| (a.0.cgroup_id, a.0.direction) == (b.0.cgroup_id, b.0.direction))
        {
            self.take_group(inventory, nat, group, now);
        }
    }

    fn take_group(
        &mut self,
        inventory: Option<&Inventory>,
        nat: Option<&NatTable>,
        group: &[&(FlowKey, Counter)],
        now: Instant,
    ) {
        let Some((first, _)) = group.first() else {
            return;
        };
        let direction = Direction::from_abi(first.direction);
        let identity = self.attributor.identity(first.cgroup_id);
        let whose = self.attributor.whose(inventory, &identity);
        if self.per_entry() || matches!(whose, Whose::Unnamed(_)) {
            for (key, counter) in group {
                self.take_flow(inventory, nat, key, counter, now, now);
            }
            return;
        }
        let mut key = HeldKey {
            identity,
            remote: None,
            outbound: true,
            direction,
        };
        // Keyed by destination and whether priced: an unpriced sum is recorded as unpriced.
        let mut sums: HashMap<(Destination, bool), Sum> = HashMap::new();
        let mut peers = Vec::with_capacity(group.len());
        for (flow, counter) in group {
            let Some((remote, outbound, resolved)) = self.remote_of(nat, flow, counter, now, now)
            else {
                continue;
            };
            key.remote = Some(remote);
            key.outbound = outbound;
            if !resolved && self.classifier.served_port(inventory, nat, &key).is_some() {
                key.outbound = false;
            }
            let destination = self.classifier.destination(key.remote, key.outbound);
            if destination.class == TrafficClass::Unplaced && !self.classifier.ready(inventory) {
                // Waits for the topology: the entry-by-entry path holds it.
                self.account(inventory, nat, key.clone(), counter, now, now);
                continue;
            }
            let served = self.classifier.served_port(inventory, nat, &key);
            let remote_region = self.classifier.remote_region(&destination, key.remote);
            let dollars =
                self.pricer
                    .dollars(&destination, direction, remote_region, counter.bytes);
            let peer = self.classifier.peer(&key, &destination, served);
            peers.push((destination.class, peer, counter.bytes, dollars));
            let sum = sums
                .entry((destination.clone(), dollars.is_some()))
                .or_insert_with(|| Sum {
                    labels: whose.labels(destination, direction),
                    counter: Counter::default(),
                    dollars: 0.0,
                });
            sum.counter.bytes += counter.bytes;
            sum.counter.packets += counter.packets;
            sum.dollars += dollars.unwrap_or(0.0);
        }
        if sums.is_empty() {
            return;
        }
        let (owner, pod) = match &whose {
            Whose::Pod(pod) => {
                if self.attributor.note_pod(pod) {
                    self.traffic.ensure_pod(pod);
                }
                (Owner::Pod, pod.clone())
            }
            Whose::Node => (Owner::Node, PodLabels::default()),
            _ => (Owner::Unknown, PodLabels::default()),
        };
        for ((_, priced), sum) in &sums {
            self.traffic
                .record(&sum.labels, &sum.counter, priced.then_some(sum.dollars));
        }
        self.destinations.add_all(owner, direction, &pod, peers);
    }
}
