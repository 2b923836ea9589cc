//! One direction of data: kernel maps → drain → attribute → classify → price → expose, and the
//! totals persisted (checkpoint) before the kernel entries they came from are deleted.
//!
//! Attribution and classification wait for what they need: bytes of a pod the Kubernetes API has
//! not told us about yet, or bytes to a private address while the node inventory is not synced,
//! are held (bounded, for `hold_max`) and attributed once the answer is known — an API outage
//! delays names, it never loses or misattributes bytes.

use std::{
    collections::{HashMap, HashSet},
    net::{IpAddr, Ipv4Addr, Ipv6Addr},
    sync::{Arc, PoisonError},
    time::{Duration, Instant},
};

use agent_common::{Counter, FlowKey, FAMILY_IPV4};

use crate::{
    aws::{SharedCloud, SourceState},
    checkpoint::{
        Checkpoint, CheckpointStore, Counters, HeldBytes, KubecostTotal, MapsIdentity,
        PendingConnection, TrafficTotal,
    },
    drain::{CountingBuffers, Drainer},
    identity::{CgroupResolver, Identity},
    inventory::{Inventory, PodMeta, SharedInventory},
    metrics::{
        Direction, DirectionLabels, KubecostLabels, Metrics, Owner, PodLabels, SourceLabels,
        TrafficLabels,
    },
    nat::{self, NatTable, Resolution, SharedNat},
    prices::{Overrides, PriceTable, Prices},
    route::{Destination, Router},
    topology::{Layer, PlaceSource, StaticTopology, Tier, TrafficClass},
};

/// How often the cgroup tree is walked even when no unknown id shows up: new pods get their zero
/// series and gone pods start their grace period.
const CGROUP_REFRESH: Duration = Duration::from_secs(10);
/// How long bytes wait for an optional source (EndpointSlices) that fails without ever having
/// listed (e.g. a ClusterRole without `endpointslices`): then they are classified without it.
const OPTIONAL_PATIENCE: Duration = Duration::from_secs(30);
/// Most (identity, remote, direction) entries held at once; beyond it bytes are attributed with
/// what is known rather than held (and counted in `netcost_hold_expired_bytes_total`).
const HOLD_CAPACITY: usize = 65_536;

pub fn remote_addr(key: &FlowKey) -> IpAddr {
    addr(key.family, key.remote_octets())
}

/// The local address of a per-connection key.
pub fn local_addr(key: &FlowKey) -> IpAddr {
    addr(key.family, key.local_octets())
}

fn addr(family: u8, octets: [u8; 16]) -> IpAddr {
    if family == FAMILY_IPV4 {
        let [a, b, c, d, ..] = octets;
        IpAddr::V4(Ipv4Addr::new(a, b, c, d))
    } else {
        IpAddr::V6(Ipv6Addr::from(octets))
    }
}

/// The Kubernetes side of attribution: the inventory the watchers keep, and our node's name.
pub struct KubeView {
    pub inventory: SharedInventory,
    pub node_name: String,
    /// Whether other nodes are watched (else only the config's prefixes place addresses).
    pub watch_nodes: bool,
    /// Whether EndpointSlices are watched (they place Service backends).
    pub watch_endpointslices: bool,
    pub health: Arc<crate::inventory::KubeHealth>,
}

/// Where a tick's totals stand.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Durability {
    /// In the checkpoint on the disk: they may be exposed.
    Saved,
    /// Not written (the checkpoint failed): they must not be exposed yet.
    NotSaved,
    /// There is no checkpoint (no state directory): exposed as they are.
    Volatile,
}

impl Durability {
    pub fn exposable(self) -> bool {
        self != Durability::NotSaved
    }
}

pub struct PipelineOptions {
    pub series_grace: Duration,
    /// How long bytes wait for their pod's names or for the topology.
    pub hold_max: Duration,
    /// Cloud services, NAT gateway and gateway endpoints.
    pub router: Router,
    /// Translated connections from conntrack; `None` when conntrack is not read.
    pub nat: Option<SharedNat>,
    /// How long bytes to a Service address wait for conntrack to name their connection (events
    /// arrive within milliseconds; a resync after dropped events takes longer).
    pub nat_wait: Duration,
    /// The price table, the internet tier and the config's single prices.
    pub price_table: PriceTable,
    pub price_tier: usize,
    pub price_overrides: Overrides,
    /// Where the totals are checkpointed at every drain, and which kernel maps they go with.
    pub checkpoint: Option<(CheckpointStore, MapsIdentity)>,
}

#[derive(Clone, Debug, PartialEq, Eq, Hash)]
struct HeldKey {
    identity: Identity,
    /// The real remote end (after NAT); `None` for overflow bytes (no remote address recorded).
    remote: Option<IpAddr>,
    /// Whether our side opened the connection (or we cannot tell): only then do internet bytes
    /// pass the NAT gateway.
    outbound: bool,
    direction: Direction,
}

struct Held {
    counter: Counter,
    since: Instant,
}

/// A pod that has series: the label sets they carry, and since when the pod is gone.
struct Series {
    labels: Vec<PodLabels>,
    /// Series beyond the zero set (cloud services, routes) the pod's bytes created.
    extra: std::collections::HashSet<TrafficLabels>,
    gone_since: Option<Instant>,
}

/// What the classification table was built from: the inventory's generations (nodes, pods,
/// EndpointSlices) and the cloud facts' generation.
type TopologyKey = (Option<(u64, u64, u64)>, u64);

pub struct Pipeline<B> {
    drainer: Drainer<B>,
    resolver: CgroupResolver,
    /// The config's topology.
    base: StaticTopology,
    /// What instance metadata and EC2 say (our place, subnets), filled in asynchronously.
    cloud: SharedCloud,
    /// The AWS tier built from `cloud`, and the generation it was built from.
    aws_layer: (u64, Arc<Layer>),
    kube: Option<KubeView>,
    topology: StaticTopology,
    topology_key: Option<TopologyKey>,
    metrics: Metrics,
    series: HashMap<String, Series>,
    /// Label sets of series without a pod (node, unknown): few, and never removed.
    node_series: HashSet<TrafficLabels>,
    held: HashMap<HeldKey, Held>,
    /// Per-connection entries to a Service address conntrack has not named yet.
    pending_nat: HashMap<FlowKey, Held>,
    /// The last batch is in the totals but its checkpoint could not be written.
    unsaved: bool,
    save_failures: u64,
    /// Our region's prices, once our region is known (and in the table).
    prices: Option<Prices>,
    prices_for: Option<String>,
    options: PipelineOptions,
}

impl<B: CountingBuffers> Pipeline<B> {
    pub fn new(
        drainer: Drainer<B>,
        resolver: CgroupResolver,
        base: StaticTopology,
        cloud: SharedCloud,
        kube: Option<KubeView>,
        metrics: Metrics,
        options: PipelineOptions,
    ) -> Self {
        Pipeline {
            drainer,
            resolver,
            topology: base.clone(),
            base,
            cloud,
            aws_layer: (u64::MAX, Arc::default()),
            kube,
            topology_key: None,
            metrics,
            series: HashMap::new(),
            node_series: HashSet::new(),
            held: HashMap::new(),
            pending_nat: HashMap::new(),
            unsaved: false,
            save_failures: 0,
            prices: None,
            prices_for: None,
            options,
        }
    }

    pub fn drainer(&self) -> &Drainer<B> {
        &self.drainer
    }

    pub fn topology(&self) -> &StaticTopology {
        &self.topology
    }

    /// One drain. On error nothing was taken out of the kernel that is not also accounted.
    pub fn tick(&mut self) -> Result<Durability, B::Error> {
        let started = Instant::now();
        // The last batch is in the totals but not on the disk: write it first. Until it is
        // written, nothing more is drained and its entries stay in the kernel, so a restart
        // counts them again from there (and never from totals that were not saved).
        if self.unsaved {
            if !self.write_checkpoint() {
                return Ok(Durability::NotSaved);
            }
            self.unsaved = false;
            self.drainer.commit()?;
        }
        self.resolver.refresh_if_older(CGROUP_REFRESH);
        let batch = self.drainer.drain()?;
        let shared = self.kube.as_ref().map(|k| k.inventory.clone());
        let guard = shared
            .as_ref()
            .map(|i| i.read().unwrap_or_else(PoisonError::into_inner));
        let inventory: Option<&Inventory> = guard.as_deref();
        self.refresh_topology(inventory);
        let now = Instant::now();

        let shared_nat = self.options.nat.clone();
        let nat_guard = shared_nat.as_ref().map(nat::lock);
        let nat: Option<&NatTable> = nat_guard.as_deref();

        // What was held first, so it is attributed in the order it was counted.
        for (key, held) in std::mem::take(&mut self.held) {
            self.attribute(inventory, key, &held.counter, held.since, now);
        }
        for (key, held) in std::mem::take(&mut self.pending_nat) {
            self.take_flow(inventory, nat, &key, &held.counter, held.since, now);
        }
        for (key, counter) in &batch.flows {
            self.take_flow(inventory, nat, key, counter, now, now);
        }
        drop(nat_guard);
        for (key, counter) in &batch.overflow {
            let direction = Direction::from_abi(key.direction);
            let key = HeldKey {
                identity: self.resolver.resolve(key.cgroup_id),
                remote: None,
                outbound: true,
                direction,
            };
            self.attribute(inventory, key, counter, now, now);
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
        self.sync_pod_series(inventory, now);
        let held: u64 = self
            .held
            .values()
            .chain(self.pending_nat.values())
            .map(|h| h.counter.bytes)
            .sum();
        self.metrics.held_bytes.set(held as i64);
        self.metrics.pods_with_series.set(self.series.len() as i64);
        // Persist what this drain added before its entries leave the kernel: a crash in
        // between is then either before the checkpoint (the entries are drained again) or after
        // it (they are deleted unread); see `drain`.
        self.metrics
            .drain_duration
            .observe(started.elapsed().as_secs_f64());
        if !self.write_checkpoint() {
            self.unsaved = true;
            return Ok(Durability::NotSaved);
        }
        // Entries that could not be deleted are counted in `last_entry_errors` by the maps.
        self.drainer.commit()?;
        Ok(if self.options.checkpoint.is_some() {
            Durability::Saved
        } else {
            Durability::Volatile
        })
    }

    /// Writes the checkpoint; false when it could not be written (counted and logged).
    fn write_checkpoint(&mut self) -> bool {
        let Some((store, _)) = &self.options.checkpoint else {
            return true;
        };
        let checkpoint = self.snapshot(Instant::now());
        match store.save(&checkpoint) {
            Ok(size) => {
                self.metrics.checkpoint_size.set(size as i64);
                if self.save_failures > 0 {
                    tracing::info!(failures = self.save_failures, "checkpoint written again; the drained entries kept in the kernel meanwhile are now counted");
                }
                self.save_failures = 0;
                true
            }
            Err(e) => {
                self.metrics.checkpoint_errors.inc();
                self.save_failures += 1;
                if self.save_failures == 1 || self.save_failures.is_power_of_two() {
                    tracing::warn!(error = %e, failures = self.save_failures, "checkpoint not written: nothing new is exposed and the drained entries stay in the kernel until it is");
                }
                false
            }
        }
    }

    /// Everything a successor needs to go on with the same totals.
    pub fn snapshot(&self, now: Instant) -> Checkpoint {
        let m = &self.metrics;
        let mut traffic = Vec::new();
        let mut kubecost: HashSet<(Direction, KubecostLabels)> = HashSet::new();
        let mut add = |labels: TrafficLabels, traffic: &mut Vec<TrafficTotal>| {
            let bytes = m.bytes.get_or_create(&labels).get();
            let packets = m.packets.get_or_create(&labels).get();
            let dollars = m.cost.get_or_create(&labels).get();
            if let Some(k) = KubecostLabels::of(&labels) {
                kubecost.insert((labels.direction, k));
            }
            if bytes != 0 || packets != 0 || dollars != 0.0 {
                traffic.push(TrafficTotal {
                    labels,
                    bytes,
                    packets,
                    dollars,
                });
            }
        };
        for series in self.series.values() {
            for pod in &series.labels {
                for labels in crate::metrics::pod_label_sets(pod, m.internet_route) {
                    add(labels, &mut traffic);
                }
            }
            for labels in &series.extra {
                add(labels.clone(), &mut traffic);
            }
        }
        for labels in &self.node_series {
            add(labels.clone(), &mut traffic);
        }
        let kubecost = kubecost
            .into_iter()
            .filter_map(|(direction, k)| {
                let bytes = m.kubecost.bytes(direction).get_or_create(&k).get();
                (bytes != 0).then_some(KubecostTotal {
                    direction,
                    labels: k,
                    bytes,
                })
            })
            .collect();
        let per_direction = |f: &prometheus_client::metrics::family::Family<
            DirectionLabels,
            prometheus_client::metrics::counter::Counter,
        >| {
            Direction::BOTH.map(|direction| f.get_or_create(&DirectionLabels { direction }).get())
        };
        let counters = Counters {
            overflow_bytes: per_direction(&m.overflow_bytes),
            lost_bytes: per_direction(&m.lost_bytes),
            lost_packets: per_direction(&m.lost_packets),
            hold_expired_bytes: m.hold_expired_bytes.get(),
            nat_resolved_bytes: m.nat_resolved_bytes.get(),
            nat_unresolved_bytes: m.nat_unresolved_bytes.get(),
            unpriced_bytes: m.unpriced_bytes.get(),
            kubecost_unmapped_bytes: m.kubecost.unmapped_bytes.get(),
        };
        let age = |since: Instant| now.saturating_duration_since(since).as_secs_f64();
        let held = self
            .held
            .iter()
            .map(|(k, h)| HeldBytes {
                identity: k.identity.clone(),
                remote: k.remote,
                outbound: k.outbound,
                direction: k.direction,
                bytes: h.counter.bytes,
                packets: h.counter.packets,
                age_seconds: age(h.since),
            })
            .collect();
        let pending_nat = self
            .pending_nat
            .iter()
            .map(|(k, h)| PendingConnection {
                cgroup_id: k.cgroup_id,
                local: local_addr(k),
                remote: remote_addr(k),
                local_port: k.local_port,
                remote_port: k.remote_port,
                protocol: k.protocol,
                direction: Direction::from_abi(k.direction),
                bytes: h.counter.bytes,
                packets: h.counter.packets,
                age_seconds: age(h.since),
            })
            .collect();
        let state = self.drainer.state();
        Checkpoint {
            format: crate::checkpoint::FORMAT,
            abi: agent_common::ABI_VERSION,
            maps: self.options.checkpoint.as_ref().map(|(_, id)| id.clone()),
            drained_epoch: state.map(|s| s.drained_epoch),
            lost_seen: state
                .unwrap_or_default()
                .lost_seen
                .map(|c| [c.bytes, c.packets]),
            saved_unix_seconds: std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map_or(0, |d| d.as_secs()),
            traffic,
            kubecost,
            counters,
            held,
            pending_nat,
        }
    }

    /// Takes over a predecessor's totals (before anything is counted or served).
    pub fn restore(&mut self, checkpoint: &Checkpoint, now: Instant) {
        let m = self.metrics.clone();
        for t in &checkpoint.traffic {
            // The state disk is outside too: its labels are cleaned like the API's.
            let mut labels = t.labels.clone();
            labels.pod = labels.pod.cleaned();
            let labels = &labels;
            if labels.owner == Owner::Pod {
                self.note_series(&labels.pod);
                self.note_extra(labels);
            } else {
                self.node_series.insert(labels.clone());
            }
            m.bytes.get_or_create(labels).inc_by(t.bytes);
            m.packets.get_or_create(labels).inc_by(t.packets);
            if t.dollars != 0.0 {
                m.cost.get_or_create(labels).inc_by(t.dollars);
            }
        }
        for k in &checkpoint.kubecost {
            m.kubecost
                .bytes(k.direction)
                .get_or_create(&k.labels)
                .inc_by(k.bytes);
        }
        let c = &checkpoint.counters;
        for direction in Direction::BOTH {
            let d = direction as usize;
            let labels = DirectionLabels { direction };
            m.overflow_bytes
                .get_or_create(&labels)
                .inc_by(c.overflow_bytes[d]);
            m.lost_bytes.get_or_create(&labels).inc_by(c.lost_bytes[d]);
            m.lost_packets
                .get_or_create(&labels)
                .inc_by(c.lost_packets[d]);
        }
        m.hold_expired_bytes.inc_by(c.hold_expired_bytes);
        m.nat_resolved_bytes.inc_by(c.nat_resolved_bytes);
        m.nat_unresolved_bytes.inc_by(c.nat_unresolved_bytes);
        m.unpriced_bytes.inc_by(c.unpriced_bytes);
        m.kubecost.unmapped_bytes.inc_by(c.kubecost_unmapped_bytes);
        let since = |age: f64| {
            now.checked_sub(Duration::from_secs_f64(age.clamp(0.0, 86_400.0)))
                .unwrap_or(now)
        };
        for h in &checkpoint.held {
            let key = HeldKey {
                identity: h.identity.clone(),
                remote: h.remote,
                outbound: h.outbound,
                direction: h.direction,
            };
            let counter = Counter {
                bytes: h.bytes,
                packets: h.packets,
            };
            let _ = self.hold(&key, &counter, since(h.age_seconds));
        }
        for p in &checkpoint.pending_nat {
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
            let held = self.pending_nat.entry(key).or_insert(Held {
                counter: Counter::default(),
                since: since(p.age_seconds),
            });
            held.counter.add(p.bytes, p.packets);
        }
    }

    /// Finds a flow entry's real remote end (through conntrack for per-connection entries), then
    /// attributes it. Entries to a Service address conntrack has not named yet wait up to
    /// `nat_wait`; after that they are classified by the Service address and counted as
    /// unresolved.
    fn take_flow(
        &mut self,
        inventory: Option<&Inventory>,
        nat: Option<&NatTable>,
        key: &FlowKey,
        counter: &Counter,
        since: Instant,
        now: Instant,
    ) {
        let seen = remote_addr(key);
        let (remote, outbound) = match (key.is_connection(), nat) {
            (true, Some(nat)) => match nat.resolve(key) {
                Resolution::Translated { remote, outbound } => {
                    self.metrics.nat_resolved_bytes.inc_by(counter.bytes);
                    (remote, outbound)
                }
                Resolution::Direct => (seen, true),
                Resolution::Unresolved => {
                    let may_wait = now.duration_since(since) < self.options.nat_wait;
                    if may_wait && self.pending_nat.len() < HOLD_CAPACITY {
                        let p = self.pending_nat.entry(*key).or_insert(Held {
                            counter: Counter::default(),
                            since,
                        });
                        p.counter.add(counter.bytes, counter.packets);
                        p.since = p.since.min(since);
                        return;
                    }
                    self.metrics.nat_unresolved_bytes.inc_by(counter.bytes);
                    (seen, true)
                }
            },
            _ => (seen, true),
        };
        let key = HeldKey {
            identity: self.resolver.resolve(key.cgroup_id),
            remote: Some(remote),
            outbound,
            direction: Direction::from_abi(key.direction),
        };
        self.attribute(inventory, key, counter, since, now);
    }

    /// Rebuilds the classification table when the nodes, this node's pods, the EndpointSlices
    /// or what AWS says (our place, subnets) changed.
    fn refresh_topology(&mut self, inventory: Option<&Inventory>) {
        let shared = self.cloud.clone();
        let cloud = shared.read().unwrap_or_else(PoisonError::into_inner);
        let key = (
            inventory.map(|i| {
                (
                    i.nodes_generation(),
                    i.pods_generation(),
                    i.slices_generation(),
                )
            }),
            cloud.generation,
        );
        self.refresh_source_health(inventory, cloud.imds, cloud.ec2);
        if self.topology_key.as_ref() == Some(&key) {
            return;
        }
        if self.aws_layer.0 != cloud.generation {
            self.aws_layer = (cloud.generation, Arc::new(cloud.layer()));
        }
        let base = self
            .base
            .clone()
            .with_vpc(cloud.network.vpc_cidrs.iter().copied())
            .with_layer(Tier::Aws, self.aws_layer.1.clone());
        let fallback = cloud.place.clone();
        drop(cloud);
        self.topology = match (inventory, &self.kube) {
            (Some(inv), Some(kube)) => inv.topology(&base, Some(&kube.node_name), &fallback),
            _ => base.with_own(self.base.own().clone().or(fallback)),
        };
        for (source, n) in self.topology.prefix_counts() {
            self.metrics
                .topology_prefixes
                .get_or_create(&SourceLabels {
                    source: source.as_str(),
                })
                .set(n as i64);
        }
        self.topology_key = Some(key);
        self.refresh_prices();
    }

    /// `netcost_topology_source_up`: each source on and answering.
    fn refresh_source_health(
        &self,
        inventory: Option<&Inventory>,
        imds: SourceState,
        ec2: SourceState,
    ) {
        let kube = self.kube.as_ref();
        let watched = |on: bool, synced: bool| on && synced;
        for (source, up) in [
            (PlaceSource::Config, true),
            (PlaceSource::InstanceMetadata, imds == SourceState::Up),
            (PlaceSource::Ec2, ec2 == SourceState::Up),
            (
                PlaceSource::Nodes,
                watched(
                    kube.is_some(),
                    inventory.is_some_and(Inventory::nodes_synced),
                ),
            ),
            (
                PlaceSource::Pods,
                watched(
                    kube.is_some(),
                    inventory.is_some_and(Inventory::pods_synced),
                ),
            ),
            (
                PlaceSource::EndpointSlices,
                watched(
                    kube.is_some_and(|k| k.watch_endpointslices),
                    inventory.is_some_and(Inventory::slices_synced),
                ),
            ),
        ] {
            self.metrics
                .topology_source_up
                .get_or_create(&SourceLabels {
                    source: source.as_str(),
                })
                .set(i64::from(up));
        }
    }

    /// Prices for our region, when it is first known or changes. A region the table does not
    /// have is an error said once: bytes are then counted, not priced.
    fn refresh_prices(&mut self) {
        let region = self.topology.own().region.clone();
        if region == self.prices_for {
            return;
        }
        self.prices_for = region.clone();
        let Some(region) = region else {
            self.prices = None;
            return;
        };
        let o = &self.options;
        self.prices = Prices::for_region(&o.price_table, &region, o.price_tier, &o.price_overrides);
        match &self.prices {
            Some(p) => {
                self.metrics.set_prices(p);
                tracing::info!(%region, table = %o.price_table.origin, date = %o.price_table.date, cross_zone_out = p.cross_zone_out, internet_out = p.internet_out, inter_region_out = p.inter_region_out, nat_gateway = ?p.nat_gateway_per_gb, "prices in force");
            }
            None => {
                tracing::error!(%region, table = %o.price_table.origin, "no prices for our region in the price table: bytes are counted but not priced (netcost_unpriced_bytes_total); give prices.file or prices.override")
            }
        }
    }

    /// Whether a private address can be placed now: we know our zone, and every source that
    /// may place it has answered once — the node list (if nodes are watched), the EndpointSlices
    /// (if watched; given up on after `OPTIONAL_PATIENCE` of errors), instance metadata and
    /// EC2 (their first attempt, success or not).
    fn topology_ready(&self, inventory: Option<&Inventory>) -> bool {
        let kube_ready = match (&self.kube, inventory) {
            (Some(k), Some(inv)) => {
                (!k.watch_nodes || inv.nodes_synced())
                    && (!k.watch_endpointslices
                        || k.health.endpointslices.settled(OPTIONAL_PATIENCE))
            }
            _ => true,
        };
        let cloud = self.cloud.read().unwrap_or_else(PoisonError::into_inner);
        kube_ready && cloud.imds.settled() && cloud.ec2.settled() && self.topology.own().is_placed()
    }

    /// The labels a pod's bytes go to: from the API, or from the series of a pod that was just
    /// deleted; `None` while the pod is not known yet.
    fn pod_labels(&self, inventory: Option<&Inventory>, uid: &str) -> Option<PodLabels> {
        let Some(inventory) = inventory else {
            return Some(PodLabels::uid_only(uid));
        };
        if let Some(pod) = inventory.pod(uid) {
            return Some(labels_of(pod));
        }
        self.series.get(uid).and_then(|s| s.labels.last().cloned())
    }

    fn attribute(
        &mut self,
        inventory: Option<&Inventory>,
        key: HeldKey,
        counter: &Counter,
        since: Instant,
        now: Instant,
    ) {
        let may_hold = now.duration_since(since) < self.options.hold_max;
        let pod = match &key.identity {
            Identity::Pod { uid, .. } => match self.pod_labels(inventory, uid) {
                Some(labels) => Some(labels),
                None if may_hold && self.hold(&key, counter, since) => return,
                None => {
                    self.metrics.hold_expired_bytes.inc_by(counter.bytes);
                    Some(PodLabels::uid_only(uid))
                }
            },
            _ => None,
        };
        let destination = match key.remote {
            None => Destination::from(TrafficClass::Unknown),
            Some(addr) => {
                let destination =
                    self.options
                        .router
                        .destination(&self.topology, addr, key.outbound);
                // Internet and node-local answers do not depend on the inventory; private
                // addresses do, and wait for it.
                if destination.class == TrafficClass::Unplaced && !self.topology_ready(inventory) {
                    if may_hold && self.hold(&key, counter, since) {
                        return;
                    }
                    self.metrics.hold_expired_bytes.inc_by(counter.bytes);
                }
                destination
            }
        };
        let per_gb = self.prices.as_ref().and_then(|p| {
            let remote_region = match (destination.class, key.remote) {
                (TrafficClass::CrossRegion, Some(addr)) => {
                    self.topology.lookup(addr).and_then(|pl| pl.region.clone())
                }
                _ => None,
            };
            p.per_gb(&destination, key.direction, remote_region.as_deref())
        });
        let labels = match (&key.identity, pod) {
            (_, Some(pod)) => {
                self.note_series(&pod);
                let labels = TrafficLabels::pod(&pod, destination, key.direction);
                self.note_extra(&labels);
                labels
            }
            (Identity::Node, None) => TrafficLabels::node(Owner::Node, destination, key.direction),
            (_, None) => TrafficLabels::node(Owner::Unknown, destination, key.direction),
        };
        if labels.owner != Owner::Pod && !self.node_series.contains(&labels) {
            self.node_series.insert(labels.clone());
        }
        self.metrics
            .bytes
            .get_or_create(&labels)
            .inc_by(counter.bytes);
        self.metrics
            .packets
            .get_or_create(&labels)
            .inc_by(counter.packets);
        // Priced now, at the prices in force: a later price change never rewrites this.
        match (&self.prices, per_gb) {
            (Some(p), Some(per_gb)) => {
                self.metrics
                    .cost
                    .get_or_create(&labels)
                    .inc_by(p.dollars(counter.bytes, per_gb));
            }
            _ => {
                self.metrics.unpriced_bytes.inc_by(counter.bytes);
            }
        }
        if labels.owner == Owner::Pod && !labels.pod.pod.is_empty() {
            match KubecostLabels::of(&labels) {
                Some(k) => {
                    self.metrics
                        .kubecost
                        .bytes(labels.direction)
                        .get_or_create(&k)
                        .inc_by(counter.bytes);
                }
                None => {
                    self.metrics.kubecost.unmapped_bytes.inc_by(counter.bytes);
                }
            }
        }
    }

    /// Holds bytes for a later tick; false when the hold is full.
    fn hold(&mut self, key: &HeldKey, counter: &Counter, since: Instant) -> bool {
        if let Some(h) = self.held.get_mut(key) {
            h.counter.bytes += counter.bytes;
            h.counter.packets += counter.packets;
            h.since = h.since.min(since);
            return true;
        }
        if self.held.len() >= HOLD_CAPACITY {
            return false;
        }
        self.held.insert(
            key.clone(),
            Held {
                counter: *counter,
                since,
            },
        );
        true
    }

    /// Remembers a series outside the pod's zero set, so it is removed with the pod.
    fn note_extra(&mut self, labels: &TrafficLabels) {
        let d = &labels.destination;
        let zero_set = d.service.is_none()
            && (d.route == crate::route::Route::Direct
                || (d.class == TrafficClass::Internet && d.route == self.metrics.internet_route));
        if zero_set {
            return;
        }
        if let Some(series) = self.series.get_mut(&labels.pod.pod_uid) {
            if !series.extra.contains(labels) {
                series.extra.insert(labels.clone());
            }
        }
    }

    /// Records that a pod has series under `labels` (creating them at zero first).
    fn note_series(&mut self, labels: &PodLabels) {
        let series = self
            .series
            .entry(labels.pod_uid.clone())
            .or_insert_with(|| Series {
                labels: Vec::new(),
                extra: Default::default(),
                gone_since: None,
            });
        if !series.labels.contains(labels) {
            self.metrics.ensure_pod(labels);
            series.labels.push(labels.clone());
        }
    }

    /// Zero series for pods that appeared; removal of pods gone for longer than the grace period.
    fn sync_pod_series(&mut self, inventory: Option<&Inventory>, now: Instant) {
        let mut live: Vec<PodLabels> = Vec::new();
        match inventory {
            None => live.extend(
                self.resolver
                    .live_pods()
                    .iter()
                    .map(|u| PodLabels::uid_only(u)),
            ),
            // The API deletes a pod object once the kubelet reports its containers gone: from
            // then on the pod is gone (late bytes still find its labels in its series).
            Some(inv) => live.extend(inv.pods().map(|p| labels_of(p))),
        }
        let mut live_uids = std::collections::HashSet::new();
        for labels in &live {
            self.note_series(labels);
            live_uids.insert(labels.pod_uid.clone());
        }
        let grace = self.options.series_grace;
        let metrics = &self.metrics;
        self.series.retain(|uid, series| {
            if live_uids.contains(uid) {
                series.gone_since = None;
                return true;
            }
            let since = *series.gone_since.get_or_insert(now);
            if now.duration_since(since) >= grace {
                let extra: Vec<TrafficLabels> = series.extra.iter().cloned().collect();
                for labels in &series.labels {
                    metrics.remove_pod(labels, &extra);
                }
                return false;
            }
            true
        });
    }
}

/// A pod's labels, from what the API said (cleaned: every field may be any string).
pub fn labels_of(pod: &PodMeta) -> PodLabels {
    use crate::labels::owned;
    PodLabels {
        namespace: owned(&pod.namespace),
        pod: owned(&pod.name),
        pod_uid: owned(&pod.uid),
        workload_kind: owned(&pod.workload.kind),
        workload: owned(&pod.workload.name),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::topology::Place;
    use crate::{
        inventory::{PodMeta, Workload},
        metrics::{encode, Format},
    };
    use agent_common::{FlowKey, OverflowKey, DIRECTION_EGRESS, FAMILY_IPV6};
    use prometheus_client::registry::Registry;
    use std::os::unix::fs::MetadataExt as _;
    use std::sync::RwLock;

    /// Buffers that hand out whatever the test queued, once.
    #[derive(Default)]
    struct Queue {
        flows: Vec<(FlowKey, Counter)>,
    }

    #[derive(Debug, thiserror::Error)]
    #[error("never")]
    struct Never;

    impl CountingBuffers for Queue {
        type Error = Never;
        fn epoch(&mut self) -> Result<u32, Never> {
            Ok(0)
        }
        fn set_epoch(&mut self, _: u32) -> Result<(), Never> {
            Ok(())
        }
        fn wait_for_writers(&mut self) -> Result<(), Never> {
            Ok(())
        }
        fn read_flows(&mut self, _: u32) -> Result<Vec<(FlowKey, Counter)>, Never> {
            Ok(self.flows.clone())
        }
        fn read_overflow(&mut self, _: u32) -> Result<Vec<(OverflowKey, Counter)>, Never> {
            Ok(Vec::new())
        }
        fn read_cached(&mut self, _: u32) -> Result<Vec<(FlowKey, Counter)>, Never> {
            Ok(Vec::new())
        }
        fn clear(
            &mut self,
            _: u32,
            _: &[FlowKey],
            _: &[OverflowKey],
        ) -> Result<crate::drain::Undeleted, Never> {
            self.flows.clear();
            Ok(Default::default())
        }
        fn lost(&mut self) -> Result<[Counter; 2], Never> {
            Ok([Counter::default(); 2])
        }
    }

    const UID: &str = "0a0b0c0d-1111-4222-8333-444455556666";

    struct Fixture {
        dir: std::path::PathBuf,
        cgroup_id: u64,
        inventory: SharedInventory,
        registry: Registry,
        pipeline: Pipeline<Queue>,
    }

    impl Drop for Fixture {
        fn drop(&mut self) {
            let _ = std::fs::remove_dir_all(&self.dir);
        }
    }

    fn fixture(name: &str, grace: Duration) -> Fixture {
        let dir =
            std::env::temp_dir().join(format!("netcost-pipeline-{name}-{}", std::process::id()));
        let pod_dir = dir.join(format!("kubepods/besteffort/pod{UID}/ctr"));
        std::fs::create_dir_all(&pod_dir).unwrap();
        let cgroup_id = std::fs::metadata(&pod_dir).unwrap().ino();
        let mut registry = Registry::default();
        let metrics = Metrics::new(&mut registry);
        let inventory = Inventory::shared();
        let base = StaticTopology::new(
            Place::zone("us-east-1a", "us-east-1"),
            vec![],
            vec![(
                "10.0.16.0/20".parse().unwrap(),
                Place::zone("us-east-1b", "us-east-1"),
            )],
        );
        let pipeline = Pipeline::new(
            Drainer::resume(Queue::default(), None).unwrap().0,
            CgroupResolver::new(dir.clone(), Duration::from_secs(600)),
            base,
            Arc::new(RwLock::new(crate::aws::CloudFacts::default())),
            Some(KubeView {
                inventory: inventory.clone(),
                node_name: "node-a".into(),
                watch_nodes: false,
                watch_endpointslices: false,
                health: Default::default(),
            }),
            metrics,
            PipelineOptions {
                series_grace: grace,
                hold_max: Duration::from_secs(3600),
                router: Router::default(),
                nat: Some(
                    NatTable::new(
                        vec!["172.20.0.0/16".parse().unwrap()],
                        1024,
                        Duration::from_secs(30),
                    )
                    .shared(),
                ),
                nat_wait: Duration::from_millis(200),
                price_table: PriceTable::built_in(),
                price_tier: 0,
                price_overrides: Overrides::default(),
                checkpoint: None,
            },
        );
        Fixture {
            dir,
            cgroup_id,
            inventory,
            registry,
            pipeline,
        }
    }

    fn flow(f: &mut Fixture, remote: [u8; 4], bytes: u64) {
        let key = FlowKey::new(
            f.cgroup_id,
            [u32::from_ne_bytes(remote), 0, 0, 0],
            FAMILY_IPV4,
            DIRECTION_EGRESS,
        );
        let mut c = Counter::default();
        c.add(bytes, 1);
        f.pipeline.drainer.buffers_mut().flows.push((key, c));
    }

    /// The API lists these pods (a full list, then synced).
    fn list_pods(f: &Fixture, pods: Vec<PodMeta>) {
        let mut inv = f.inventory.write().unwrap();
        inv.pods_init();
        for pod in pods {
            inv.pod_apply(pod);
        }
        inv.pods_init_done();
    }

    fn exposition(f: &Fixture) -> String {
        encode(&f.registry, Format::PrometheusText).unwrap()
    }

    fn cart() -> PodMeta {
        PodMeta {
            uid: UID.into(),
            namespace: "shop".into(),
            name: "cart-1".into(),
            workload: Workload {
                kind: "Deployment".into(),
                name: "cart".into(),
            },
            host_network: false,
            ips: vec![],
            containers: vec![],
            finished: false,
        }
    }

    #[test]
    fn bytes_of_an_unknown_pod_are_held_until_the_api_names_it() {
        let mut f = fixture("hold", Duration::from_secs(300));
        flow(&mut f, [10, 0, 16, 7], 1000);
        flow(&mut f, [203, 0, 113, 1], 500);
        f.pipeline.tick().unwrap();
        let text = exposition(&f);
        assert!(
            !text.contains(UID),
            "attributed before the pod was known:\n{text}"
        );
        assert!(text.contains("netcost_held_bytes 1500"), "{text}");
        // The API catches up: the pod is listed.
        list_pods(&f, vec![cart()]);
        flow(&mut f, [10, 0, 16, 7], 24);
        f.pipeline.tick().unwrap();
        let text = exposition(&f);
        let line = format!("netcost_network_bytes_total{{owner=\"pod\",namespace=\"shop\",pod=\"cart-1\",workload_kind=\"Deployment\",workload=\"cart\",pod_uid=\"{UID}\",traffic_class=\"cross_zone\",direction=\"egress\"}} 1024");
        assert!(text.contains(&line), "{text}");
        let line = format!("netcost_network_bytes_total{{owner=\"pod\",namespace=\"shop\",pod=\"cart-1\",workload_kind=\"Deployment\",workload=\"cart\",pod_uid=\"{UID}\",traffic_class=\"internet\",direction=\"egress\"}} 500");
        assert!(text.contains(&line), "{text}");
        assert!(text.contains("netcost_held_bytes 0"), "{text}");
        assert!(
            text.contains("netcost_hold_expired_bytes_total 0"),
            "{text}"
        );
    }

    #[test]
    fn deleted_pods_keep_their_series_for_the_grace_period_then_lose_them() {
        let mut f = fixture("grace", Duration::from_millis(300));
        list_pods(&f, vec![cart()]);
        flow(&mut f, [203, 0, 113, 1], 77);
        f.pipeline.tick().unwrap();
        assert!(exposition(&f).contains("pod=\"cart-1\""));
        // Deleted from the API and its cgroup gone.
        f.inventory.write().unwrap().pod_delete(UID);
        std::fs::remove_dir_all(&f.dir).unwrap();
        f.pipeline.resolver.rescan();
        f.pipeline.tick().unwrap();
        let text = exposition(&f);
        assert!(
            text.contains("traffic_class=\"internet\",direction=\"egress\"} 77"),
            "final value kept:\n{text}"
        );
        std::thread::sleep(Duration::from_millis(350));
        f.pipeline.tick().unwrap();
        let text = exposition(&f);
        assert!(
            !text.contains("cart-1"),
            "series outlived the grace period:\n{text}"
        );
        assert!(text.contains("netcost_pods_with_series 0"), "{text}");
    }

    #[test]
    fn bytes_are_priced_when_counted_and_exposed_the_kubecost_way() {
        let mut f = fixture("price", Duration::from_secs(300));
        list_pods(&f, vec![cart()]);
        // 1 GiB cross-zone and 1 GiB to the internet, sent.
        flow(&mut f, [10, 0, 16, 7], 1 << 30);
        flow(&mut f, [203, 0, 113, 1], 1 << 30);
        f.pipeline.tick().unwrap();
        let text = exposition(&f);
        let cost = |class: &str| {
            let prefix = format!("netcost_network_cost_dollars_total{{owner=\"pod\",namespace=\"shop\",pod=\"cart-1\",workload_kind=\"Deployment\",workload=\"cart\",pod_uid=\"{UID}\",traffic_class=\"{class}\",direction=\"egress\"}} ");
            text.lines()
                .find_map(|l| l.strip_prefix(&prefix))
                .unwrap_or_else(|| panic!("no {class} cost in\n{text}"))
                .parse::<f64>()
                .unwrap()
        };
        assert!((cost("cross_zone") - 0.01).abs() < 1e-12);
        assert!((cost("internet") - 0.09).abs() < 1e-12);
        assert!(text.contains("kubecost_pod_network_egress_bytes_total{pod_name=\"cart-1\",namespace=\"shop\",internet=\"false\",same_region=\"true\",same_zone=\"false\",service=\"\",nat_gateway=\"false\"} 1073741824"), "{text}");
        assert!(text.contains("kubecost_pod_network_egress_bytes_total{pod_name=\"cart-1\",namespace=\"shop\",internet=\"true\",same_region=\"false\",same_zone=\"false\",service=\"\",nat_gateway=\"false\"} 1073741824"), "{text}");
        // Zero series for the classes without bytes, before any byte.
        assert!(text.contains("kubecost_pod_network_ingress_bytes_total{pod_name=\"cart-1\",namespace=\"shop\",internet=\"false\",same_region=\"false\",same_zone=\"false\",service=\"\",nat_gateway=\"false\"} 0"), "{text}");
        assert!(
            text.contains("kubecost_network_zone_egress_cost 0.01"),
            "{text}"
        );
        assert!(
            text.contains("kubecost_network_internet_egress_cost 0.09"),
            "{text}"
        );
        assert!(
            text.contains("netcost_price_dollars_per_gigabyte{price=\"nat_gateway\"} 0.045"),
            "{text}"
        );
    }

    /// The counters of an exposition (every `_total` line), sorted.
    fn counter_lines(text: &str) -> Vec<String> {
        let mut v: Vec<String> = text
            .lines()
            .filter(|l| {
                !l.starts_with('#')
                    && l.split(['{', ' '])
                        .next()
                        .is_some_and(|n| n.ends_with("_total"))
            })
            .filter(|l| {
                !l.starts_with("netcost_map_entry_errors") && !l.starts_with("netcost_drain_errors")
            })
            .map(str::to_owned)
            .collect();
        v.sort();
        v
    }

    /// A successor restoring a checkpoint exposes exactly the same counters, held bytes included
    /// (attributed once the pod is known), and the checkpoint survives the file round trip.
    #[test]
    fn restored_totals_equal_the_checkpointed_ones() {
        let mut a = fixture("snap-a", Duration::from_secs(300));
        list_pods(&a, vec![cart()]);
        flow(&mut a, [10, 0, 16, 7], 123_456_789);
        flow(&mut a, [203, 0, 113, 1], 1 << 30);
        flow(&mut a, [10, 0, 1, 9], 77);
        a.pipeline.tick().unwrap();
        let now = Instant::now();
        let checkpoint = a.pipeline.snapshot(now);
        let store = crate::checkpoint::CheckpointStore::in_dir(&a.dir);
        store.save(&checkpoint).unwrap();
        let checkpoint = store.load().unwrap().unwrap();

        let mut b = fixture("snap-b", Duration::from_secs(300));
        list_pods(&b, vec![cart()]);
        b.pipeline.restore(&checkpoint, now);
        let before = counter_lines(&exposition(&a));
        assert!(
            before
                .iter()
                .any(|l| l.contains("cross_zone") && l.ends_with(" 123456789")),
            "{before:?}"
        );
        assert_eq!(counter_lines(&exposition(&b)), before);
        // And it goes on from there.
        flow(&mut b, [10, 0, 16, 7], 11);
        b.pipeline.tick().unwrap();
        let text = exposition(&b);
        assert!(
            text.lines().any(
                |l| l.starts_with("netcost_network_bytes_total{owner=\"pod\"")
                    && l.contains("cross_zone")
                    && l.contains("egress")
                    && l.ends_with(" 123456800")
            ),
            "{text}"
        );
    }

    /// A per-connection entry of `cart-1` to the ClusterIP 172.20.0.10:80 from 10.0.1.2:`port`.
    fn service_flow(f: &mut Fixture, port: u16, bytes: u64) {
        let mut key = FlowKey::new(
            f.cgroup_id,
            [u32::from_ne_bytes([172, 20, 0, 10]), 0, 0, 0],
            FAMILY_IPV4,
            DIRECTION_EGRESS,
        );
        key.local = [u32::from_ne_bytes([10, 0, 1, 2]), 0, 0, 0];
        key.local_port = port.to_be();
        key.remote_port = 80u16.to_be();
        key.protocol = 6;
        let mut c = Counter::default();
        c.add(bytes, 1);
        f.pipeline.drainer.buffers_mut().flows.push((key, c));
    }

    #[test]
    fn service_bytes_go_to_the_backend_conntrack_names_or_wait_then_count_as_unresolved() {
        use crate::conntrack::{Connection, Event, Tuple};
        let mut f = fixture("nat", Duration::from_secs(300));
        list_pods(&f, vec![cart()]);
        let tuple = |src: &str, sport: u16, dst: &str, dport: u16| Tuple {
            protocol: 6,
            src: src.parse().unwrap(),
            src_port: sport,
            dst: dst.parse().unwrap(),
            dst_port: dport,
        };
        let nat = f.pipeline.options.nat.clone().unwrap();
        nat::lock(&nat).apply(
            &Event::New(Connection {
                original: tuple("10.0.1.2", 40_000, "172.20.0.10", 80),
                reply: tuple("10.0.16.9", 8080, "10.0.1.2", 40_000),
            }),
            Instant::now(),
        );
        service_flow(&mut f, 40_000, 1_000);
        // Conntrack has not named this one (yet).
        service_flow(&mut f, 40_001, 70);
        f.pipeline.tick().unwrap();
        let text = exposition(&f);
        assert!(
            text.contains(&format!(
                "pod_uid=\"{UID}\",traffic_class=\"cross_zone\",direction=\"egress\"}} 1000"
            )),
            "{text}"
        );
        assert!(text.contains("netcost_held_bytes 70"), "{text}");
        assert!(
            text.contains("netcost_nat_resolved_bytes_total 1000"),
            "{text}"
        );
        // Past nat_wait: classified by the Service address, and said so.
        std::thread::sleep(Duration::from_millis(250));
        f.pipeline.tick().unwrap();
        let text = exposition(&f);
        assert!(
            text.contains("netcost_nat_unresolved_bytes_total 70"),
            "{text}"
        );
        assert!(text.contains("netcost_held_bytes 0"), "{text}");
    }

    /// While the checkpoint cannot be written nothing new is exposed or deleted, nothing is
    /// drained twice, and the first good save takes what waited.
    #[test]
    fn while_saves_fail_the_drained_entries_stay_in_the_kernel_and_count_once() {
        let mut f = fixture("unsaved", Duration::from_secs(300));
        list_pods(&f, vec![cart()]);
        // A state "directory" that is a file: every save fails.
        let state = f.dir.join("state");
        std::fs::write(&state, "not a directory").unwrap();
        f.pipeline.options.checkpoint = Some((
            CheckpointStore::in_dir(&state),
            MapsIdentity {
                boot_id: "b".into(),
                maps_id: 1,
            },
        ));
        flow(&mut f, [203, 0, 113, 1], 1000);
        let internet =
            format!("pod_uid=\"{UID}\",traffic_class=\"internet\",direction=\"egress\"}} ");
        let total = |f: &Fixture| {
            exposition(f)
                .lines()
                .find(|l| l.starts_with("netcost_network_bytes_total") && l.contains(&internet))
                .and_then(|l| l.rsplit(' ').next()?.parse::<u64>().ok())
        };
        for _ in 0..3 {
            assert_eq!(f.pipeline.tick().unwrap(), Durability::NotSaved);
            assert_eq!(
                f.pipeline.drainer.buffers().flows.len(),
                1,
                "the entry stays in the kernel"
            );
        }
        assert_eq!(total(&f), Some(1000), "counted once in memory");
        assert!(exposition(&f).contains("netcost_checkpoint_errors_total 3"));
        // The disk comes back: the waiting batch is saved and deleted, then drains go on.
        std::fs::remove_file(&state).unwrap();
        std::fs::create_dir_all(&state).unwrap();
        assert_eq!(f.pipeline.tick().unwrap(), Durability::Saved);
        assert!(f.pipeline.drainer.buffers().flows.is_empty());
        assert_eq!(total(&f), Some(1000));
        flow(&mut f, [203, 0, 113, 1], 10);
        assert_eq!(f.pipeline.tick().unwrap(), Durability::Saved);
        assert_eq!(total(&f), Some(1010));
        let saved = CheckpointStore::in_dir(&state).load().unwrap().unwrap();
        let bytes: u64 = saved
            .traffic
            .iter()
            .filter(|t| t.labels.destination.class == TrafficClass::Internet)
            .map(|t| t.bytes)
            .sum();
        assert_eq!(bytes, 1010, "the checkpoint holds exactly what was counted");
    }

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
