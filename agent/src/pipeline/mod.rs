//! One drain, conducted through the stages in order: kernel maps → drain → attribute →
//! classify → price → expose, and the totals persisted (state) before the kernel entries they
//! came from are deleted. Each stage decides its part; this module only passes what one stage
//! gives to the next and records the outcome.
//!
//! Attribution and classification wait for what they need: bytes of a pod the Kubernetes API has
//! not told us about yet, or bytes to a private address while the node inventory is not synced,
//! are held (bounded, for `kubernetes.hold_unknown_seconds`) and attributed once the answer is
//! known — an API outage delays names, it never loses or misattributes bytes.

use std::{sync::PoisonError, time::Instant};

use agent_common::{Counter, FlowKey};

use crate::{
    attribute::{Attributor, HeldKey, Whose},
    classify::{nat, nat::NatTable, Classifier, NatOutcome, RemoteEnd},
    drain::{CountingBuffers, DrainMetrics, Drainer},
    expose::{DestinationMetrics, TrafficMetrics},
    inventory::Inventory,
    price::Pricer,
    state::{Checkpoint, Durability, Saver},
    vocab::{Direction, PodLabels, TrafficClass},
};

/// The stages a drain goes through, built by the caller from their own config.
pub struct Stages {
    pub attributor: Attributor,
    pub classifier: Classifier,
    pub pricer: Pricer,
    pub traffic: TrafficMetrics,
    pub destinations: DestinationMetrics,
}

pub struct Pipeline<B> {
    drainer: Drainer<B>,
    attributor: Attributor,
    classifier: Classifier,
    pricer: Pricer,
    traffic: TrafficMetrics,
    destinations: DestinationMetrics,
    /// Where the totals are checkpointed at every drain; `None`: nowhere (no state directory).
    checkpoint: Option<Saver>,
    /// The last batch is in the totals but its checkpoint could not be written.
    unsaved: bool,
    drain_metrics: DrainMetrics,
    /// Tests compare the grouped path with the entry-by-entry one.
    #[cfg(test)]
    per_entry: bool,
}

impl<B: CountingBuffers> Pipeline<B> {
    pub fn new(
        drainer: Drainer<B>,
        stages: Stages,
        checkpoint: Option<Saver>,
        drain_metrics: DrainMetrics,
    ) -> Self {
        Pipeline {
            drainer,
            attributor: stages.attributor,
            classifier: stages.classifier,
            pricer: stages.pricer,
            traffic: stages.traffic,
            destinations: stages.destinations,
            checkpoint,
            unsaved: false,
            drain_metrics,
            #[cfg(test)]
            per_entry: false,
        }
    }

    /// Whether every drained entry goes through `take_flow` alone (tests only).
    fn per_entry(&self) -> bool {
        #[cfg(test)]
        return self.per_entry;
        #[cfg(not(test))]
        false
    }

    pub fn drainer(&self) -> &Drainer<B> {
        &self.drainer
    }

    pub fn classifier(&self) -> &Classifier {
        &self.classifier
    }

    /// One drain. On error nothing was taken out of the kernel that is not also accounted.
    pub fn tick(&mut self) -> Result<Durability, B::Error> {
        let started = Instant::now();
        // The last batch is in the totals but not on the disk: write it first. Until it is
        // written, nothing more is drained and its entries stay in the kernel, so a restart
        // counts them again from there (and never from totals that were not saved).
        if self.unsaved {
            if !self.save() {
                return Ok(Durability::NotSaved);
            }
            self.unsaved = false;
            self.drainer.commit()?;
        }
        self.attributor.refresh();
        let batch = self.drainer.drain()?;
        let shared = self.classifier.kube().map(|k| k.inventory.clone());
        let guard = shared
            .as_ref()
            .map(|i| i.read().unwrap_or_else(PoisonError::into_inner));
        let inventory: Option<&Inventory> = guard.as_deref();
        self.classifier.refresh(inventory);
        if let Some(prices) = self.pricer.refresh(self.classifier.own().region.as_deref()) {
            self.traffic.set_prices(prices);
        }
        let now = Instant::now();

        let shared_nat = self.classifier.nat_table();
        let nat_guard = shared_nat.as_ref().map(nat::lock);
        let nat: Option<&NatTable> = nat_guard.as_deref();
        // What was held first, so it is attributed in the order it was counted.
        for (key, held) in self.attributor.take_held() {
            self.account(inventory, nat, key, &held.counter, held.since, now);
        }
        for (key, held) in self.classifier.take_pending() {
            self.take_flow(inventory, nat, &key, &held.counter, held.since, now);
        }
        self.take_flows(inventory, nat, &batch.flows, now);
        drop(nat_guard);
        for (key, counter) in &batch.overflow {
            let direction = Direction::from_abi(key.direction);
            let key = HeldKey {
                identity: self.attributor.identity(key.cgroup_id),
                remote: None,
                outbound: true,
                direction,
            };
            self.account(inventory, None, key, counter, now, now);
            self.traffic.overflow(direction, counter.bytes);
        }
        for direction in Direction::BOTH {
            self.traffic
                .lost(direction, &batch.lost[direction as usize]);
        }
        let pods = self.attributor.sync_pods(inventory, now);
        for pod in &pods.appeared {
            self.traffic.ensure_pod(pod);
        }
        for (uid, label_sets) in &pods.forgotten {
            self.traffic.remove_pod(uid, label_sets);
            self.destinations.remove_pod(uid);
        }
        self.destinations.flush(now);
        self.traffic.set_waiting(
            self.attributor.held().bytes() + self.classifier.pending_bytes(),
            self.attributor.pods().len(),
        );
        self.drain_metrics.took(started.elapsed().as_secs_f64());
        // Persist what this drain added before its entries leave the kernel: a crash in
        // between is then either before the checkpoint (the entries are drained again) or after
        // it (they are deleted unread); see `drain`.
        if !self.save() {
            self.unsaved = true;
            return Ok(Durability::NotSaved);
        }
        // Entries that could not be deleted are counted in `last_entry_errors` by the maps.
        self.drainer.commit()?;
        Ok(if self.checkpoint.is_some() {
            Durability::Saved
        } else {
            Durability::Volatile
        })
    }

    /// The real remote end of a flow entry, whether our side opened the connection and whether
    /// conntrack said so; `None` while it waits for conntrack (the classifier holds it).
    fn remote_of(
        &mut self,
        nat: Option<&NatTable>,
        key: &FlowKey,
        counter: &Counter,
        since: Instant,
        now: Instant,
    ) -> Option<(std::net::IpAddr, bool, bool)> {
        match self.classifier.remote_end(nat, key, counter, since, now) {
            RemoteEnd::Pending => None,
            RemoteEnd::Found {
                remote,
                outbound,
                nat,
            } => {
                match nat {
                    NatOutcome::Resolved => self.traffic.nat_resolved(counter.bytes),
                    NatOutcome::Unresolved => self.traffic.nat_unresolved(counter.bytes),
                    NatOutcome::Direct => {}
                }
                Some((remote, outbound, nat == NatOutcome::Resolved))
            }
        }
    }

    /// A flow entry: its real remote end (classify), then whose it is and the rest.
    fn take_flow(
        &mut self,
        inventory: Option<&Inventory>,
        nat: Option<&NatTable>,
        key: &FlowKey,
        counter: &Counter,
        since: Instant,
        now: Instant,
    ) {
        let Some((remote, outbound, resolved)) = self.remote_of(nat, key, counter, since, now)
        else {
            return;
        };
        let mut key = HeldKey {
            identity: self.attributor.identity(key.cgroup_id),
            remote: Some(remote),
            outbound,
            direction: Direction::from_abi(key.direction),
        };
        // Where conntrack did not say who opened the connection (keys counted per remote
        // address), a remote end that opened one to a port of ours makes these bytes answers:
        // they leave the way they came in, not through a NAT gateway.
        if !resolved && self.classifier.served_port(inventory, nat, &key).is_some() {
            key.outbound = false;
        }
        self.account(inventory, nat, key, counter, since, now);
    }

    /// Whose the bytes are (attribute), where they went (classify), what they cost (price),
    /// recorded (expose) — or held for a later drain when an answer is still missing.
    fn account(
        &mut self,
        inventory: Option<&Inventory>,
        nat: Option<&NatTable>,
        key: HeldKey,
        counter: &Counter,
        since: Instant,
        now: Instant,
    ) {
        let whose = match self.attributor.whose(inventory, &key.identity) {
            Whose::Unnamed(uid) => {
                if self.attributor.wait(&key, counter, since, now) {
                    return;
                }
                self.traffic.hold_expired(counter.bytes);
                Whose::Pod(PodLabels::uid_only(&uid))
            }
            whose => whose,
        };
        let served = self.classifier.served_port(inventory, nat, &key);
        let destination = self.classifier.destination(key.remote, key.outbound);
        // Internet and node-local answers do not depend on the inventory; private addresses
        // do, and wait for it.
        if destination.class == TrafficClass::Unplaced && !self.classifier.ready(inventory) {
            if self.attributor.wait(&key, counter, since, now) {
                return;
            }
            self.traffic.hold_expired(counter.bytes);
        }
        let remote_region = self.classifier.remote_region(&destination, key.remote);
        let dollars =
            self.pricer
                .dollars(&destination, key.direction, remote_region, counter.bytes);
        if let Whose::Pod(pod) = &whose {
            if self.attributor.note_pod(pod) {
                self.traffic.ensure_pod(pod);
            }
        }
        let peer = self.classifier.peer(&key, &destination, served);
        let labels = whose.labels(destination, key.direction);
        self.traffic.record(&labels, counter, dollars);
        self.destinations.add(&labels, peer, counter.bytes, dollars);
    }

    /// Writes the checkpoint; false when it could not be written.
    fn save(&mut self) -> bool {
        if self.checkpoint.is_none() {
            return true;
        }
        let checkpoint = self.snapshot(Instant::now());
        self.checkpoint
            .as_mut()
            .is_none_or(|saver| saver.save(&checkpoint))
    }

    /// Everything a successor needs to go on with the same totals: each stage's part.
    pub fn snapshot(&self, now: Instant) -> Checkpoint {
        let state = self.drainer.state();
        Checkpoint {
            format: crate::state::FORMAT,
            abi: agent_common::ABI_VERSION,
            maps: self.checkpoint.as_ref().map(|s| s.maps.clone()),
            drained_epoch: state.map(|s| s.drained_epoch),
            lost_seen: state
                .unwrap_or_default()
                .lost_seen
                .map(|c| [c.bytes, c.packets]),
            saved_unix_seconds: std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map_or(0, |d| d.as_secs()),
            totals: self.traffic.totals(self.attributor.pods().labels()),
            held: self.attributor.held().snapshot(now),
            pending_nat: self.classifier.snapshot_pending(now),
            destinations: self.destinations.totals(),
        }
    }

    /// Takes over a predecessor's totals (before anything is counted or served).
    pub fn restore(&mut self, checkpoint: &Checkpoint, now: Instant) {
        let mut totals = checkpoint.totals.clone();
        for t in &mut totals.traffic {
            // The state disk is outside too: its labels are cleaned like the API's.
            t.labels.pod = t.labels.pod.cleaned();
            if t.labels.owner == crate::vocab::Owner::Pod && self.attributor.note_pod(&t.labels.pod)
            {
                self.traffic.ensure_pod(&t.labels.pod);
            }
        }
        self.traffic.restore(&totals);
        let mut destinations = checkpoint.destinations.clone();
        for d in &mut destinations {
            d.labels.pod = d.labels.pod.cleaned();
            d.labels.peer = d.labels.peer.cleaned();
        }
        self.destinations.restore(&destinations);
        self.attributor.restore_held(&checkpoint.held, now);
        self.classifier
            .restore_pending(&checkpoint.pending_nat, now);
    }
}

mod grouped;
#[cfg(test)]
mod tests;
