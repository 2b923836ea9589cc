//! One look at an agent: its `/metrics` turned into one row per owner (a pod, the node) with
//! bytes per class and direction, rates since the previous look, dollars, top destinations and
//! the agent's health. Pure: built from parsed samples, unit-tested without an agent.

use std::collections::{BTreeMap, BTreeSet, HashMap};

use crate::report::{describe_remote, label as get, Labels, Series};

pub type Samples = HashMap<String, Vec<Series>>;

/// (traffic class, direction).
pub type Cell = (String, String);

#[derive(Clone, Debug, Default, PartialEq)]
pub struct Row {
    /// `pod`, `node` or `unknown`.
    pub owner: String,
    pub namespace: String,
    pub pod: String,
    /// `Kind/name`.
    pub workload: String,
    pub pod_uid: String,
    pub bytes: BTreeMap<Cell, f64>,
    pub dollars: f64,
    /// Bytes per second out and in, and dollars per hour, since the previous look.
    pub rate_out: f64,
    pub rate_in: f64,
    pub dollars_per_hour: f64,
    /// The labels its series share (owner's).
    pub labels: Labels,
    pub destinations: Vec<Destination>,
}

impl Row {
    pub fn key(&self) -> (String, String) {
        (self.owner.clone(), self.pod_uid.clone())
    }

    pub fn total_bytes(&self) -> f64 {
        self.bytes.values().sum()
    }

    /// How the row names its owner.
    pub fn name(&self) -> String {
        match self.owner.as_str() {
            "pod" if !self.pod.is_empty() => format!("{}/{}", self.namespace, self.pod),
            "pod" => format!("pod {}", self.pod_uid),
            other => format!("({other})"),
        }
    }
}

#[derive(Clone, Debug, Default, PartialEq)]
pub struct Destination {
    pub direction: String,
    pub class: String,
    pub remote: String,
    pub port: String,
    pub bytes: f64,
    pub dollars: f64,
}

#[derive(Clone, Debug, Default, PartialEq)]
pub struct Health {
    pub drains: f64,
    pub drain_interval: Option<f64>,
    /// Time spent draining, all drains together, seconds.
    pub drain_seconds_total: f64,
    /// Mean drain time since the previous look (or overall), seconds.
    pub drain_seconds: f64,
    pub drain_errors: f64,
    pub early_drains: f64,
    /// (map, entries, capacity).
    pub maps: Vec<(String, f64, f64)>,
    pub held_bytes: f64,
    pub overflow_bytes: f64,
    pub lost_bytes: f64,
    /// (resource, synced).
    pub kubernetes: Vec<(String, bool)>,
    pub conntrack_up: Option<bool>,
    pub checkpoint_errors: f64,
    pub checkpoint_bytes: Option<f64>,
    /// `maps=…, totals=…, pins=…` of `netcost_start_info`.
    pub start: String,
    /// The region's prices are in force.
    pub priced: bool,
    pub unpriced_bytes: f64,
    pub node: String,
    pub zone: String,
}

#[derive(Clone, Debug, Default, PartialEq)]
pub struct Snapshot {
    pub rows: Vec<Row>,
    /// Every (class, direction) that has bytes, in a stable order.
    pub cells: Vec<Cell>,
    pub health: Health,
}

fn sum(samples: &Samples, name: &str) -> f64 {
    samples
        .get(name)
        .into_iter()
        .flatten()
        .map(|s| s.value)
        .sum()
}

fn owner_key(l: &Labels) -> (String, String) {
    (get(l, "owner").to_owned(), get(l, "pod_uid").to_owned())
}

/// Labels that describe the owner, not the series.
const OWNER_LABELS: [&str; 6] = [
    "owner",
    "namespace",
    "pod",
    "workload_kind",
    "workload",
    "pod_uid",
];

/// Builds a snapshot; `previous` and `elapsed` (seconds since it) give the rates.
pub fn build(samples: &Samples, previous: Option<(&Snapshot, f64)>) -> Snapshot {
    let mut rows: BTreeMap<(String, String), Row> = BTreeMap::new();
    let mut cells: BTreeSet<Cell> = BTreeSet::new();
    let series = |name: &str| samples.get(name).into_iter().flatten();
    for s in series("netcost_network_bytes_total") {
        let l = &s.labels;
        let row = rows.entry(owner_key(l)).or_insert_with(|| Row {
            owner: get(l, "owner").to_owned(),
            namespace: get(l, "namespace").to_owned(),
            pod: get(l, "pod").to_owned(),
            workload: match (get(l, "workload_kind"), get(l, "workload")) {
                ("", "") => String::new(),
                (k, w) => format!("{k}/{w}"),
            },
            pod_uid: get(l, "pod_uid").to_owned(),
            labels: OWNER_LABELS
                .iter()
                .filter_map(|k| Some((k.to_string(), l.get(*k)?.clone())))
                .collect(),
            ..Row::default()
        });
        let cell = (
            get(l, "traffic_class").to_owned(),
            get(l, "direction").to_owned(),
        );
        if s.value > 0.0 {
            cells.insert(cell.clone());
        }
        *row.bytes.entry(cell).or_default() += s.value;
    }
    for s in series("netcost_network_cost_dollars_total") {
        if let Some(row) = rows.get_mut(&owner_key(&s.labels)) {
            row.dollars += s.value;
        }
    }
    let dollars: HashMap<&Labels, f64> = series("netcost_destination_cost_dollars_total")
        .map(|s| (&s.labels, s.value))
        .collect();
    for s in series("netcost_destination_bytes_total") {
        let l = &s.labels;
        if let Some(row) = rows.get_mut(&owner_key(l)) {
            row.destinations.push(Destination {
                direction: get(l, "direction").to_owned(),
                class: get(l, "traffic_class").to_owned(),
                remote: describe_remote(l, &HashMap::new()),
                port: get(l, "port").to_owned(),
                bytes: s.value,
                dollars: dollars.get(l).copied().unwrap_or(0.0),
            });
        }
    }
    let mut rows: Vec<Row> = rows.into_values().collect();
    let before: HashMap<(String, String), &Row> = previous
        .map(|(s, _)| s.rows.iter().map(|r| (r.key(), r)).collect())
        .unwrap_or_default();
    for row in &mut rows {
        row.destinations
            .sort_by(|a, b| b.bytes.total_cmp(&a.bytes).then(a.remote.cmp(&b.remote)));
        if let Some((_, elapsed)) = previous.filter(|(_, e)| *e > 0.0) {
            if let Some(old) = before.get(&row.key()) {
                let by = |r: &Row, d: &str| -> f64 {
                    r.bytes
                        .iter()
                        .filter(|((_, dir), _)| dir == d)
                        .map(|(_, b)| b)
                        .sum()
                };
                row.rate_out = ((by(row, "egress") - by(old, "egress")) / elapsed).max(0.0);
                row.rate_in = ((by(row, "ingress") - by(old, "ingress")) / elapsed).max(0.0);
                row.dollars_per_hour = ((row.dollars - old.dollars) / elapsed * 3600.0).max(0.0);
            }
        }
    }
    Snapshot {
        rows,
        cells: cells.into_iter().collect(),
        health: health(samples, previous.map(|(s, _)| &s.health)),
    }
}

fn health(samples: &Samples, previous: Option<&Health>) -> Health {
    let series = |name: &str| samples.get(name).into_iter().flatten();
    let drains = sum(samples, "netcost_drain_duration_seconds_count");
    let seconds = sum(samples, "netcost_drain_duration_seconds_sum");
    let drain_seconds = match previous {
        Some(p) if drains > p.drains => (seconds - p.drain_seconds_total) / (drains - p.drains),
        Some(p) => p.drain_seconds,
        None if drains > 0.0 => seconds / drains,
        None => 0.0,
    };
    let capacity: HashMap<&str, f64> = series("netcost_map_capacity")
        .map(|s| (get(&s.labels, "map"), s.value))
        .collect();
    let info = series("netcost_node_info").next();
    Health {
        drains,
        drain_interval: series("netcost_drain_interval_seconds")
            .next()
            .map(|s| s.value),
        drain_seconds_total: seconds,
        drain_seconds,
        drain_errors: sum(samples, "netcost_drain_errors_total"),
        early_drains: sum(samples, "netcost_early_drains_total"),
        maps: series("netcost_map_entries")
            .map(|s| {
                let map = get(&s.labels, "map");
                (
                    map.to_owned(),
                    s.value,
                    capacity.get(map).copied().unwrap_or(0.0),
                )
            })
            .collect(),
        held_bytes: sum(samples, "netcost_held_bytes"),
        overflow_bytes: sum(samples, "netcost_overflow_bytes_total"),
        lost_bytes: sum(samples, "netcost_lost_bytes_total"),
        kubernetes: series("netcost_kubernetes_synced")
            .map(|s| (get(&s.labels, "resource").to_owned(), s.value == 1.0))
            .collect(),
        conntrack_up: series("netcost_conntrack_up")
            .next()
            .map(|s| s.value == 1.0),
        checkpoint_errors: sum(samples, "netcost_checkpoint_errors_total"),
        checkpoint_bytes: series("netcost_checkpoint_size_bytes")
            .next()
            .map(|s| s.value),
        start: series("netcost_start_info")
            .next()
            .map(|s| {
                format!(
                    "maps {}, totals {}",
                    get(&s.labels, "maps"),
                    get(&s.labels, "totals")
                )
            })
            .unwrap_or_default(),
        priced: series("netcost_price_dollars_per_gigabyte")
            .next()
            .is_some(),
        unpriced_bytes: sum(samples, "netcost_unpriced_bytes_total"),
        node: info
            .map(|s| get(&s.labels, "node").to_owned())
            .unwrap_or_default(),
        zone: info
            .map(|s| get(&s.labels, "zone").to_owned())
            .unwrap_or_default(),
    }
}
