//! Root test: a real Prometheus (Debian's package) scrapes the agent on the simulated node, with
//! pods named by the Kubernetes API double, and OpenCost's network-allocation queries run against
//! it return the bytes the meters measured and the dollars they cost. `promtool check metrics`
//! lints the exposition. Prometheus listens on loopback only and scrapes only the agent.

use std::{
    sync::Arc,
    time::{Duration, Instant},
};

use anyhow::{bail, ensure, Context, Result};
use netcost_tests::{
    agent::Agent,
    apiserver::{ApiServer, ApiState},
    kubenode::{cluster, config, names},
    prometheus::{now, value, Prometheus},
    serial,
    simnode::{Offloads, SimNode},
    truth::{run_plan, PLAN, TOLERANCE},
};
use serde_json::Value;

const DRAIN: Duration = Duration::from_millis(500);
const TRAFFIC: &str = env!("CARGO_BIN_EXE_nct-traffic");

/// OpenCost's classes: (name, selector, price gauge), as in its allocation queries.
const CLASSES: [(&str, &str, &str); 3] = [
    (
        "cross_zone",
        r#"internet="false", same_zone="false", same_region="true""#,
        "kubecost_network_zone_egress_cost",
    ),
    (
        "cross_region",
        r#"internet="false", same_zone="false", same_region="false""#,
        "kubecost_network_region_egress_cost",
    ),
    (
        "internet",
        r#"internet="true""#,
        "kubecost_network_internet_egress_cost",
    ),
];

/// `config.yaml` of Kubecost's `network-costs-config` ConfigMap with the chart's defaults.
const KUBECOST_CHART_CONFIG: &str = r#"destinations:
  in-zone: ["127.0.0.0/8", "169.254.0.0/16", "10.0.0.0/8", "172.16.0.0/12", "192.168.0.0/16"]
  in-region: []
  cross-region: []
  internet: []
  direct-classification: []
services:
  google-cloud-services: true
  amazon-web-services: true
  azure-cloud-services: true
"#;

struct RemoveOnDrop(std::path::PathBuf);
impl Drop for RemoveOnDrop {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.0);
    }
}

/// What us-east-1 charges per GB for each class (the built-in table).
fn price_of(class: &str) -> f64 {
    match class {
        "cross_zone" => 0.01,
        "cross_region" => 0.02,
        _ => 0.09,
    }
}

#[test]
fn opencost_queries_on_a_real_prometheus_give_the_measured_bytes_and_dollars() -> Result<()> {
    let _serial = serial();
    let node = SimNode::build(TRAFFIC.as_ref(), Offloads::Default)?;
    let state = Arc::new(ApiState::new());
    cluster(&node, &state, &["pod1", "pod2", "hostpod"]);
    let api = ApiServer::start(state.clone())?;
    // Kubecost's network-costs ConfigMap as its Helm chart ships it, taken as it is. Its
    // `in-zone: 10.0.0.0/8` would make every cross-zone byte of this 10/8 cluster same-zone in
    // Kubecost (kubecost #820); the Nodes place those addresses, and they win.
    let kubecost_config =
        std::env::temp_dir().join(format!("nct-kubecost-{}.yaml", std::process::id()));
    std::fs::write(&kubecost_config, KUBECOST_CHART_CONFIG)?;
    let _cleanup = RemoveOnDrop(kubecost_config.clone());
    let agent = Agent::start(
        "opencost",
        &config(
            &api.url(),
            &format!(
                "kubecost: {{ config_file: {} }}\n",
                kubecost_config.display()
            ),
        ),
    )?;

    // The exposition passes Prometheus' own linter.
    let (_, body) = agent.get("/metrics")?;
    netcost_tests::promtool_check_metrics(&body)?;

    let prometheus = Prometheus::start(agent.port)?;
    // Prometheus must have the pods' zero series before their first byte: increase() then sees
    // every byte. (It applies its first targets up to 5 s after starting.)
    let deadline = Instant::now() + Duration::from_secs(30);
    while prometheus
        .query("count(kubecost_pod_network_egress_bytes_total)", now())?
        .is_empty()
    {
        ensure!(
            Instant::now() < deadline,
            "prometheus never scraped the agent: {}",
            prometheus.log()
        );
        std::thread::sleep(Duration::from_millis(250));
    }
    std::thread::sleep(Duration::from_secs(2));
    run_plan(&node, PLAN)?;
    let samples = agent.settled_metrics(DRAIN)?;
    std::thread::sleep(Duration::from_secs(3));

    // Evaluate at the last scrape's timestamp, over a window reaching back before the first:
    // the counters start at 0, so increase() over it is exactly what was counted (no
    // extrapolation beyond the samples at either end).
    let last = prometheus.query("timestamp(kubecost_network_zone_egress_cost)", now())?;
    let at = value(last.first().context("the price gauge was never scraped")?)?;
    let window = "10m";
    let mut failures = Vec::new();
    let mut report = vec![format!(
        "{:<22} {:<13} {:>12} {:>12} {:>10} {:>10}",
        "pod", "class", "truth GiB", "query GiB", "truth $", "query $"
    )];
    for (pod, ..) in netcost_tests::kubenode::NAMES {
        let (namespace, pod_name, ..) = names(pod);
        let truth = node.pod(pod).truth()?;
        for (class, selector, gauge) in CLASSES {
            let bytes_q = format!(
                "sum(increase(kubecost_pod_network_egress_bytes_total{{{selector}}}[{window}])) by (pod_name, namespace) / 1024 / 1024 / 1024"
            );
            let cost_q = format!("{bytes_q} * scalar(avg(avg_over_time({gauge}[{window}])))");
            let pick = |rows: Vec<Value>| -> Result<f64> {
                let row = rows.iter().find(|r| {
                    r["metric"]["pod_name"] == pod_name && r["metric"]["namespace"] == namespace
                });
                row.map(value).unwrap_or(Ok(0.0))
            };
            let gib = pick(prometheus.query(&bytes_q, at)?)?;
            let dollars = pick(prometheus.query(&cost_q, at)?)?;
            let truth_bytes = *truth
                .get(&(class.to_owned(), "egress".to_owned()))
                .unwrap_or(&0) as f64;
            let truth_gib = truth_bytes / 1024.0 / 1024.0 / 1024.0;
            let truth_dollars = truth_gib * price_of(class);
            report.push(format!(
                "{:<22} {class:<13} {truth_gib:>12.9} {gib:>12.9} {truth_dollars:>10.8} {dollars:>10.8}",
                format!("{namespace}/{pod_name}")
            ));
            let close = |a: f64, b: f64| (a - b).abs() <= b.abs() * TOLERANCE + 1e-12;
            if !close(gib, truth_gib) || !close(dollars, truth_dollars) {
                failures.push(format!(
                    "{namespace}/{pod_name} {class}: query {gib} GiB ${dollars}, truth {truth_gib} GiB ${truth_dollars}"
                ));
            }
        }
    }
    // netcost's own cost counters: both directions of cross-zone traffic, egress only for
    // inter-region and internet, at us-east-1's prices.
    report.push(format!(
        "{:<30} {:<13} {:<8} {:>12} {:>12}",
        "pod", "class", "dir", "expected $", "netcost $"
    ));
    for (pod, ..) in netcost_tests::kubenode::NAMES {
        let (namespace, pod_name, ..) = names(pod);
        let truth = node.pod(pod).truth()?;
        for ((class, direction), bytes) in &truth {
            let per_gb = match (class.as_str(), direction.as_str()) {
                ("cross_zone", _) => 0.01,
                ("cross_region", "egress") => 0.02,
                ("internet", "egress") => 0.09,
                _ => 0.0,
            };
            let want = *bytes as f64 / 1073741824.0 * per_gb;
            let got = samples.sum(
                "netcost_network_cost_dollars_total",
                &[
                    ("namespace", namespace),
                    ("pod", pod_name),
                    ("traffic_class", class),
                    ("direction", direction),
                ],
            );
            report.push(format!(
                "{:<30} {class:<13} {direction:<8} {want:>12.9} {got:>12.9}",
                format!("{namespace}/{pod_name}")
            ));
            if (got - want).abs() > want * TOLERANCE + 1e-12 {
                failures.push(format!(
                    "{namespace}/{pod_name} {class} {direction}: cost {got}, expected {want}"
                ));
            }
        }
    }
    eprintln!("{}", report.join("\n"));

    // The Grafana dashboard: every panel's query, with Grafana's variables filled in as Grafana
    // would (all namespaces; a rate window of a minute; the range since before the traffic),
    // returns data from this Prometheus.
    let dashboard: Value = serde_json::from_str(&std::fs::read_to_string(
        std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../deploy/grafana/netcost.json"),
    )?)?;
    let mut queries = 0;
    for panel in dashboard["panels"].as_array().context("panels")? {
        // The savings panel needs the scenarios of the report test, which checks it.
        if panel["title"]
            .as_str()
            .is_some_and(|t| t.starts_with("Savings"))
        {
            continue;
        }
        for target in panel["targets"].as_array().context("targets")? {
            let expr = target["expr"].as_str().context("expr")?;
            let filled = expr
                .replace("$__rate_interval", "1m")
                .replace("$__range_s", "600")
                .replace("$__range", window)
                .replace("$namespace", ".*");
            ensure!(!filled.contains('$'), "unfilled variable in {expr}");
            let result = prometheus.query(&filled, at)?;
            queries += 1;
            if result.is_empty() {
                failures.push(format!(
                    "dashboard panel {:?}: no data for {filled}",
                    panel["title"]
                ));
            }
        }
    }
    let variable = dashboard["templating"]["list"][1]["query"]["query"]
        .as_str()
        .context("namespace variable")?;
    let series = variable
        .strip_prefix("label_values(")
        .and_then(|v| v.strip_suffix(", namespace)"))
        .context("label_values(…, namespace)")?;
    let (code, body) = prometheus.get(&format!(
        "/api/v1/label/namespace/values?match[]={}",
        netcost_tests::uri_encode(series)
    ))?;
    ensure!(
        code == 200 && body.contains("\"shop\""),
        "namespace variable: {code} {body}"
    );
    eprintln!("dashboard: {queries} panel queries, each returned data");
    let log = agent.stop()?;
    if !failures.is_empty() {
        bail!(
            "{}\nagent log:\n{log}\nprometheus log:\n{}",
            failures.join("\n"),
            prometheus.log()
        );
    }
    Ok(())
}
