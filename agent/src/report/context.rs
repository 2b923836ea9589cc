//! What the report's tables and rules share: the money of a row, the prices and projection, and
//! who and where each series' owner and remote end are.

use std::collections::HashMap;

use serde::Serialize;

use super::{
    series::{describe_remote, label, Labels},
    source::Observed,
    ReportOptions,
};
use crate::price::Prices;

/// AWS bills a month as 730 hours.
pub const HOURS_PER_MONTH: f64 = 730.0;

#[derive(Clone, Debug, Default, PartialEq, Serialize)]
pub struct Money {
    pub bytes: f64,
    pub dollars: f64,
    pub monthly: f64,
}

#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct CostRow {
    pub group: String,
    pub class: String,
    #[serde(flatten)]
    pub money: Money,
}

#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct AgentCost {
    pub scrapes_per_hour: f64,
    pub bytes_per_scrape: f64,
    /// Scrape bytes by the scraper's traffic class (from the agent's serving-port series).
    pub by_class: Vec<CostRow>,
}

/// What the rules share: prices, projection, and who and where each series' owner is.
pub struct Context<'a> {
    pub observed: &'a Observed,
    pub prices: &'a Prices,
    pub options: &'a ReportOptions,
    /// Window → month.
    pub factor: f64,
    zones: HashMap<String, String>,
    nodes: HashMap<String, String>,
    only: Option<(String, String)>,
    pods_by_ip: HashMap<String, String>,
}

impl<'a> Context<'a> {
    pub fn new(observed: &'a Observed, prices: &'a Prices, options: &'a ReportOptions) -> Self {
        let info = observed.gauge("netcost_node_info");
        let get = |l: &Labels, k: &str| l.get(k).cloned().unwrap_or_default();
        let zones = info
            .iter()
            .map(|s| (get(&s.labels, "instance"), get(&s.labels, "zone")))
            .collect();
        let nodes = info
            .iter()
            .map(|s| (get(&s.labels, "instance"), get(&s.labels, "node")))
            .collect();
        let only =
            (info.len() == 1).then(|| (get(&info[0].labels, "node"), get(&info[0].labels, "zone")));
        // kube-state-metrics names pods by address: remote pods on other nodes get a name.
        let pods_by_ip = observed
            .gauge("kube_pod_info")
            .iter()
            .filter_map(|s| {
                let ip = s.labels.get("pod_ip")?;
                let ns = get(&s.labels, "namespace");
                let name = match s.labels.get("created_by_name") {
                    Some(w) if !w.is_empty() => w.clone(),
                    _ => get(&s.labels, "pod"),
                };
                Some((ip.clone(), format!("pod {ns}/{name}")))
            })
            .collect();
        Context {
            observed,
            prices,
            options,
            factor: HOURS_PER_MONTH * 3600.0 / observed.window_seconds,
            zones,
            nodes,
            only,
            pods_by_ip,
        }
    }

    /// The zone of the node a series comes from.
    pub fn zone(&self, l: &Labels) -> String {
        match l.get("instance").and_then(|i| self.zones.get(i)) {
            Some(z) => z.clone(),
            None => self.only.as_ref().map(|o| o.1.clone()).unwrap_or_default(),
        }
    }

    /// Whether a series is the agents' own: on their metrics port, from the node (hostNetwork
    /// without a pod cgroup) or from the agent's DaemonSet.
    pub fn is_agent(&self, l: &Labels) -> bool {
        label(l, "port") == self.options.agent_port.to_string()
            && (label(l, "owner") == "node"
                || (label(l, "workload_kind") == "DaemonSet"
                    && label(l, "workload") == self.options.agent_workload))
    }

    /// "namespace/workload" for a pod's series, "node NAME" for the node's.
    pub fn owner(&self, l: &Labels) -> String {
        let get = |k: &str| l.get(k).map_or("", String::as_str);
        match get("owner") {
            "pod" => {
                let workload = match (get("workload"), get("pod")) {
                    ("", "") => get("pod_uid"),
                    ("", pod) => pod,
                    (w, _) => w,
                };
                format!("{}/{workload}", get("namespace"))
            }
            other => {
                let node = l
                    .get("instance")
                    .and_then(|i| self.nodes.get(i))
                    .or(self.only.as_ref().map(|o| &o.0))
                    .filter(|n| !n.is_empty());
                match node {
                    Some(n) => format!("{other} {n}"),
                    None => other.to_owned(),
                }
            }
        }
    }

    /// The remote end of a destination series, as a person would name it.
    pub fn remote(&self, l: &Labels) -> String {
        describe_remote(l, &self.pods_by_ip)
    }

    pub fn money(&self, bytes: f64, dollars: f64) -> Money {
        Money {
            bytes,
            dollars,
            monthly: dollars * self.factor,
        }
    }

    /// Dollars a month for `bytes` seen in the window at `per_gb`.
    pub fn monthly(&self, bytes: f64, per_gb: f64) -> f64 {
        bytes / self.prices.gigabyte_bytes * per_gb * self.factor
    }
}

/// (labels, bytes, dollars) of a bytes family joined with its dollars family.
pub fn joined(o: &Observed, bytes: &str, dollars: &str) -> Vec<(Labels, f64, f64)> {
    let cost: HashMap<&Labels, f64> = o
        .counter(dollars)
        .iter()
        .map(|s| (&s.labels, s.value))
        .collect();
    o.counter(bytes)
        .iter()
        .map(|s| {
            let d = cost.get(&s.labels).copied().unwrap_or(0.0);
            (s.labels.clone(), s.value, d)
        })
        .collect()
}
