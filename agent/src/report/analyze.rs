//! From the window's increases to the report's tables: cost per workload and class (or pod
//! label), the top destinations, the costliest pairs and the agent's own scrape cost. Dollars
//! are the agent's own (`netcost_*_cost_dollars_total`, priced as the bytes were counted);
//! $/month projects the window onto 730 hours.

use std::collections::{BTreeMap, HashMap};

use serde::Serialize;

use super::{
    context::{joined, AgentCost, Context, CostRow, Money},
    series::label,
    series::Labels,
    source::Observed,
    suggest::{self, Suggestion},
    ReportError, ReportOptions,
};
use crate::price::Prices;

#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct DestinationRow {
    pub from: String,
    pub direction: String,
    pub class: String,
    pub remote: String,
    pub port: Option<u16>,
    #[serde(flatten)]
    pub money: Money,
}

#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct PairRow {
    pub from: String,
    pub to: String,
    #[serde(flatten)]
    pub money: Money,
}

#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct Report {
    pub region: String,
    pub window_seconds: f64,
    pub total: Money,
    /// "namespace/workload" (or "node NAME") × class; or the `--by` label's values × class.
    pub grouped_by: String,
    pub costs: Vec<CostRow>,
    pub destinations: Vec<DestinationRow>,
    pub pairs: Vec<PairRow>,
    pub agent: Option<AgentCost>,
    pub suggestions: Vec<Suggestion>,
    pub notes: Vec<String>,
}

/// (from, direction, class, remote, serving port).
type DestinationKey = (String, String, String, String, Option<u16>);

/// Rows sorted by dollars then bytes, largest first, zero rows left out.
fn ranked<K: Ord>(rows: BTreeMap<K, (f64, f64)>) -> Vec<(K, f64, f64)> {
    let mut v: Vec<_> = rows
        .into_iter()
        .filter(|(_, (b, _))| *b > 0.0)
        .map(|(k, (b, d))| (k, b, d))
        .collect();
    v.sort_by(|x, y| y.2.total_cmp(&x.2).then(y.1.total_cmp(&x.1)));
    v
}

impl Report {
    pub fn build(
        observed: &Observed,
        prices: &Prices,
        options: &ReportOptions,
    ) -> Result<Report, ReportError> {
        let cx = Context::new(observed, prices, options);
        let traffic = joined(
            observed,
            "netcost_network_bytes_total",
            "netcost_network_cost_dollars_total",
        );
        if traffic.is_empty() {
            return Err(ReportError::Empty);
        }
        let mut notes = Vec::new();
        let mut total = Money::default();
        for (_, b, d) in &traffic {
            total.bytes += b;
            total.dollars += d;
        }
        total.monthly = total.dollars * cx.factor;

        let pod_label = options.by_label.as_ref().map(|key| {
            let k = format!("label_{key}");
            let map: HashMap<(String, String), String> = observed
                .gauge("kube_pod_labels")
                .iter()
                .filter_map(|s| {
                    let v = s.labels.get(&k)?;
                    Some(((label(&s.labels, "namespace").to_owned(), label(&s.labels, "pod").to_owned()), v.clone()))
                })
                .collect();
            if map.is_empty() {
                notes.push(format!(
                    "--by label:{key}: no kube_pod_labels series carry label_{key} (kube-state-metrics must run and export it: --metric-labels-allowlist=pods=[{key}]); grouped as (none)"
                ));
            }
            (key.clone(), map)
        });
        let mut costs: BTreeMap<(String, String), (f64, f64)> = BTreeMap::new();
        for (l, b, d) in &traffic {
            let group = match &pod_label {
                Some((_, map)) => map
                    .get(&(label(l, "namespace").to_owned(), label(l, "pod").to_owned()))
                    .cloned()
                    .unwrap_or_else(|| "(none)".into()),
                None => cx.owner(l),
            };
            let e = costs
                .entry((group, label(l, "traffic_class").to_owned()))
                .or_default();
            e.0 += b;
            e.1 += d;
        }
        let costs = ranked(costs)
            .into_iter()
            .map(|((group, class), b, d)| CostRow {
                group,
                class,
                money: cx.money(b, d),
            })
            .collect();

        let dest = joined(
            observed,
            "netcost_destination_bytes_total",
            "netcost_destination_cost_dollars_total",
        );
        if dest.is_empty() {
            notes.push("no netcost_destination_* series: destinations are off (destinations.enabled) or the agents predate them; suggestions that need the remote end are left out".into());
        }
        let mut rows: BTreeMap<DestinationKey, (f64, f64)> = BTreeMap::new();
        let mut pairs: BTreeMap<(String, String), (f64, f64)> = BTreeMap::new();
        for (l, b, d) in &dest {
            let port = l.get("port").and_then(|p| p.parse().ok());
            let (from, remote) = (cx.owner(l), cx.remote(l));
            let key = (
                from.clone(),
                label(l, "direction").to_owned(),
                label(l, "traffic_class").to_owned(),
                remote.clone(),
                port,
            );
            let e = rows.entry(key).or_default();
            e.0 += b;
            e.1 += d;
            if label(l, "remote_kind") != "other" {
                let e = pairs.entry((from, remote)).or_default();
                e.0 += b;
                e.1 += d;
            }
        }
        let destinations = ranked(rows)
            .into_iter()
            .take(options.top)
            .map(
                |((from, direction, class, remote, port), b, d)| DestinationRow {
                    from,
                    direction,
                    class,
                    remote,
                    port,
                    money: cx.money(b, d),
                },
            )
            .collect();
        let pairs = ranked(pairs)
            .into_iter()
            .take(options.top)
            .map(|((from, to), b, d)| PairRow {
                from,
                to,
                money: cx.money(b, d),
            })
            .collect();
        let agent = agent_cost(&cx, &dest);
        let suggestions = suggest::all(&cx, &traffic, &dest, agent.as_ref(), &mut notes);
        Ok(Report {
            region: prices.region.clone(),
            window_seconds: observed.window_seconds,
            total,
            grouped_by: match &pod_label {
                Some((key, _)) => format!("label:{key}"),
                None => "workload".into(),
            },
            costs,
            destinations,
            pairs,
            agent,
            suggestions,
            notes,
        })
    }
}

/// What scraping the agents cost: their answers' size and rate, and the bytes sent from their
/// metrics port by the scraper's class.
fn agent_cost(cx: &Context, dest: &[(Labels, f64, f64)]) -> Option<AgentCost> {
    let sum = |name: &str| -> f64 { cx.observed.counter(name).iter().map(|s| s.value).sum() };
    let responses = sum("netcost_scrape_responses_total");
    if responses <= 0.0 {
        return None;
    }
    let bytes = sum("netcost_scrape_response_bytes_total");
    let mut by_class: BTreeMap<String, (f64, f64)> = BTreeMap::new();
    for (l, b, d) in dest {
        if cx.is_agent(l) && label(l, "direction") == "egress" {
            let e = by_class
                .entry(label(l, "traffic_class").to_owned())
                .or_default();
            e.0 += b;
            e.1 += d;
        }
    }
    Some(AgentCost {
        scrapes_per_hour: responses / cx.observed.window_seconds * 3600.0,
        bytes_per_scrape: bytes / responses,
        by_class: ranked(by_class)
            .into_iter()
            .map(|(class, b, d)| CostRow {
                group: "agent scrapes".into(),
                class,
                money: cx.money(b, d),
            })
            .collect(),
    })
}
