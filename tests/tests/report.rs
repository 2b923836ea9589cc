//! Root test of `netcost-agent report`: the simulated node runs one scenario per savings
//! suggestion, and the report, read from a real Prometheus and from two scrapes of `/metrics`,
//! prints each suggestion with the bytes the meters measured and the dollars those bytes cost at
//! us-east-1's prices (within 0.5 %), and nothing for traffic that does not warrant a change.
//!
//! The scenarios, with kube-proxy-like rules and EndpointSlices from the API double:
//! - pod1 → Service shop/db (ClusterIP 172.20.0.10:80, DNATed 50/50 to a backend in our zone,
//!   10.0.2.10, and one in us-east-1b, 10.0.16.10): PreferClose;
//! - pod2 ↔ 10.0.16.77, a pod of a node in us-east-1b, with no Service: co-location;
//! - pod1 ↔ S3 (203.0.113.100) and DynamoDB (203.0.113.101) of us-east-1 through the NAT gateway,
//!   which sits in us-east-1b (config): gateway endpoints;
//! - pod1 → the internet host through that NAT gateway: a gateway in our zone, only when the hop
//!   it saves pays for the gateway;
//! - the internet host scrapes pod2's exporter on port 9100: a scraper inside the VPC;
//! - and traffic that warrants nothing: pod2 → a same-zone host, pod1 → another region.
//!
//! The truth is HTB meters where the packets carry the real remote address (the router's links
//! to the remote hosts and the hosts' own links). Every packet stays in the test's namespaces.

use std::{process::Command, sync::Arc, time::Duration};

use anyhow::{ensure, Context, Result};
use netcost_tests::{
    agent::{agent_bin, Agent},
    apiserver::{endpointslice_json, ApiServer, ApiState, EndpointSpec},
    kubenode::{cluster, config},
    meter::{Filter, Meter},
    prometheus::{now, value, Prometheus},
    serial,
    simnode::{standard_classes, Offloads, SimNode},
};
use serde_json::Value;

const DRAIN: Duration = Duration::from_millis(500);
const TRAFFIC: &str = env!("CARGO_BIN_EXE_nct-traffic");
const TOLERANCE: f64 = 0.005;
const GB: f64 = (1u64 << 30) as f64;
/// us-east-1, the built-in table.
const CROSS_ZONE: f64 = 0.01;
const NAT: f64 = 0.045;
const INTERNET: f64 = 0.09;
const SCRAPER_HOURLY: f64 = 0.0208;
const RANGES: &str =
    "# test ranges\n203.0.113.100/32 aws-s3 us-east-1\n203.0.113.101/32 aws-dynamodb us-east-1\n";

struct TempFile(std::path::PathBuf);
impl Drop for TempFile {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.0);
    }
}

fn pair(src: &str, dst: &str) -> Filter {
    ("ip", format!("match ip src {src} match ip dst {dst}"))
}

/// Both directions of each scenario: (name, filter towards the remote, filter back).
const LEGS: [(&str, [&str; 2]); 6] = [
    ("service_cross_zone", ["10.0.1.11", "10.0.16.10"]),
    ("pair", ["10.0.1.12", "10.0.16.77"]),
    ("s3", ["10.0.1.11", "203.0.113.100"]),
    ("dynamodb", ["10.0.1.11", "203.0.113.101"]),
    ("internet_via_nat", ["10.0.1.11", "203.0.113.10"]),
    ("exporter", ["10.0.1.12", "203.0.113.10"]),
];

struct Truth {
    meters: Vec<Meter>,
}

impl Truth {
    fn install(node: &SimNode) -> Result<Truth> {
        let mut meters = Vec::new();
        for (towards, back, host) in [("rt-rxz", "eth0", "rxz"), ("rt-rin", "eth0", "rin")] {
            let legs: Vec<_> = LEGS
                .iter()
                .filter(|(_, [_, r])| (host == "rxz") == r.starts_with("10."))
                .collect();
            let out: Vec<(&str, Vec<Filter>)> = legs
                .iter()
                .map(|(n, [l, r])| (*n, vec![pair(l, r)]))
                .collect();
            let inn: Vec<(&str, Vec<Filter>)> = legs
                .iter()
                .map(|(n, [l, r])| (*n, vec![pair(r, l)]))
                .collect();
            meters.push(Meter::install(&node.netns("router")?.name, towards, &out)?);
            meters.push(Meter::install(&node.netns(host)?.name, back, &inn)?);
        }
        Ok(Truth { meters })
    }

    /// Bytes of each leg, both directions together, and the exporter's bytes out alone.
    fn read(&self) -> Result<std::collections::BTreeMap<String, f64>> {
        let mut out = std::collections::BTreeMap::new();
        for (i, m) in self.meters.iter().enumerate() {
            for (name, bytes) in m.read()? {
                *out.entry(name.clone()).or_default() += bytes as f64;
                // Towards the remote (even meters) is the pod's egress.
                if i % 2 == 0 {
                    *out.entry(format!("{name}_egress")).or_default() += bytes as f64;
                }
            }
        }
        Ok(out)
    }
}

fn delta(
    after: &std::collections::BTreeMap<String, f64>,
    before: &std::collections::BTreeMap<String, f64>,
) -> std::collections::BTreeMap<String, f64> {
    after
        .iter()
        .map(|(k, v)| (k.clone(), v - before.get(k).copied().unwrap_or(0.0)))
        .collect()
}

fn kube_proxy_rules(node: &SimNode) -> Result<()> {
    let ns = node.netns("node")?;
    for rule in [
        "-t nat -A PREROUTING -d 172.20.0.10/32 -p tcp --dport 80 -m statistic --mode random --probability 0.5 -j DNAT --to-destination 10.0.2.10:5001",
        "-t nat -A PREROUTING -d 172.20.0.10/32 -p tcp --dport 80 -j DNAT --to-destination 10.0.16.10:5001",
    ] {
        let mut argv = vec!["iptables", "-w"];
        argv.extend(rule.split_whitespace());
        ns.exec(&argv)?;
    }
    Ok(())
}

/// One round of every scenario; `internet` bytes go through the NAT gateway in the other zone.
fn run_scenarios(node: &SimNode, internet: u64) -> Result<()> {
    for _ in 0..12 {
        node.transfer_to("pod1", "172.20.0.10:80", &["send", "1500000"])?;
        node.transfer_to("pod1", "172.20.0.10:80", &["recv", "500000"])?;
    }
    node.transfer_to("pod2", "10.0.16.77:5001", &["send", "20000000"])?;
    node.transfer_to("pod2", "10.0.16.77:5001", &["recv", "4000000"])?;
    node.transfer_to("pod1", "203.0.113.100:5001", &["recv", "20000000"])?;
    node.transfer_to("pod1", "203.0.113.100:5001", &["send", "2000000"])?;
    node.transfer_to("pod1", "203.0.113.101:5001", &["recv", "8000000"])?;
    node.transfer_to(
        "pod1",
        "203.0.113.10:5001",
        &["send", &internet.to_string()],
    )?;
    for _ in 0..10 {
        node.transfer_from_remote("rin", "10.0.1.12:9100", &["recv", "3000000"])?;
    }
    // Nothing to change here: same zone, and another region (no cheaper path).
    node.transfer_to("pod2", "10.0.2.10:5001", &["send", "5000000"])?;
    node.transfer_to("pod1", "10.1.0.10:5001", &["send", "3000000"])?;
    Ok(())
}

/// The report as JSON, and as Markdown too when `markdown` (a second read of the same source).
fn report(args: &[&str], markdown: bool) -> Result<(Value, String)> {
    let run = |format: &str| -> Result<String> {
        let out = Command::new(agent_bin()?)
            .arg("report")
            .args(args)
            // The NAT gateway's hourly price the test checks against, given rather than assumed.
            .args([
                "--format",
                format,
                "--min-saving",
                "1",
                "--nat-gateway-hourly",
                "0.045",
            ])
            .output()?;
        ensure!(
            out.status.success(),
            "report {args:?} failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        Ok(String::from_utf8(out.stdout)?)
    };
    let json: Value = serde_json::from_str(&run("json")?)?;
    let text = if markdown {
        run("markdown")?
    } else {
        String::new()
    };
    Ok((json, text))
}

/// What each suggestion must say, from the meters and the prices: (kind, title part, bytes,
/// $/month saved).
fn expected(
    truth: &std::collections::BTreeMap<String, f64>,
    factor: f64,
) -> Vec<(&'static str, &'static str, f64, f64)> {
    let t = |k: &str| truth.get(k).copied().unwrap_or(0.0);
    let monthly = |bytes: f64, per_gb: f64| bytes / GB * per_gb * factor;
    let mut v = vec![
        (
            "prefer_close",
            "shop/db",
            t("service_cross_zone"),
            monthly(t("service_cross_zone"), 2.0 * CROSS_ZONE),
        ),
        (
            "co_locate",
            "10.0.16.77",
            t("pair"),
            monthly(t("pair"), 2.0 * CROSS_ZONE),
        ),
        (
            "gateway_endpoint",
            "s3",
            t("s3"),
            monthly(t("s3"), NAT + CROSS_ZONE),
        ),
        (
            "gateway_endpoint",
            "dynamodb",
            t("dynamodb"),
            monthly(t("dynamodb"), NAT + CROSS_ZONE),
        ),
    ];
    // The exporter's answers to connections the internet host opened do not take the NAT
    // gateway: only pod1's own internet bytes make the hop.
    let hop = monthly(t("internet_via_nat"), CROSS_ZONE) - (NAT + 0.005) * 730.0;
    v.push((
        "nat_gateway_per_zone",
        "us-east-1a",
        t("internet_via_nat"),
        hop,
    ));
    let e = t("exporter_egress");
    let net = monthly(e, INTERNET) - monthly(e, 2.0 * CROSS_ZONE) - SCRAPER_HOURLY * 730.0;
    v.push(("scrape_inside_vpc", "1 exporter", e, net));
    // The report's --min-saving.
    v.retain(|s| s.3 >= 1.0);
    v
}

fn check(label: &str, report: &Value, want: &[(&str, &str, f64, f64)], failures: &mut Vec<String>) {
    let got = report["suggestions"]
        .as_array()
        .cloned()
        .unwrap_or_default();
    let mut lines = vec![format!(
        "{label}: {:<22} {:<12} {:>12} {:>12} {:>10} {:>10}",
        "kind", "subject", "truth B", "report B", "truth $/mo", "report $/mo"
    )];
    for (kind, subject, bytes, dollars) in want {
        let found = got
            .iter()
            .find(|s| s["kind"] == *kind && s["title"].as_str().unwrap_or("").contains(subject));
        let Some(s) = found else {
            failures.push(format!("{label}: no {kind} suggestion for {subject}"));
            continue;
        };
        let (b, d) = (
            s["bytes"].as_f64().unwrap_or(0.0),
            s["monthly_saving"].as_f64().unwrap_or(0.0),
        );
        lines.push(format!(
            "{label}: {kind:<22} {subject:<12} {bytes:>12.0} {b:>12.0} {dollars:>10.2} {d:>10.2}"
        ));
        let near = |x: f64, y: f64| (x - y).abs() <= y.abs() * TOLERANCE;
        if *bytes <= 0.0 || !near(b, *bytes) || !near(d, *dollars) {
            failures.push(format!("{label}: {kind} {subject}: report {b} B ${d}/month, truth {bytes} B ${dollars}/month"));
        }
    }
    // Nothing else: no suggestion for same-zone or cross-region bytes, or for what does not pay.
    for s in &got {
        let wanted = want
            .iter()
            .any(|(k, sub, ..)| s["kind"] == *k && s["title"].as_str().unwrap_or("").contains(sub));
        if !wanted {
            failures.push(format!("{label}: unwarranted suggestion {}", s["title"]));
        }
    }
    eprintln!("{}", lines.join("\n"));
}

/// The dashboard's destination and savings panels on the same Prometheus: the top destinations
/// answer, and each savings row equals the report's figure for the same bytes.
fn dashboard(
    prometheus: &Prometheus,
    report: &Value,
    since: &str,
    at: f64,
    failures: &mut Vec<String>,
) -> Result<()> {
    let dashboard: Value = serde_json::from_str(&std::fs::read_to_string(
        std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../deploy/grafana/netcost.json"),
    )?)?;
    let seconds = since.trim_end_matches('s');
    let suggestion = |kind: &str, subject: &str, field: &str| -> f64 {
        report["suggestions"]
            .as_array()
            .into_iter()
            .flatten()
            .find(|s| s["kind"] == kind && s["title"].as_str().unwrap_or("").contains(subject))
            .and_then(|s| s[field].as_f64())
            .unwrap_or(f64::NAN)
    };
    // (panel target, the report's figure for the same change).
    let want = [
        (
            "A",
            suggestion("gateway_endpoint", "s3", "monthly_saving")
                + suggestion("gateway_endpoint", "dynamodb", "monthly_saving"),
        ),
        ("B", suggestion("prefer_close", "shop/db", "monthly_saving")),
        ("C", suggestion("co_locate", "10.0.16.77", "monthly_saving")),
        (
            "D",
            suggestion("scrape_inside_vpc", "exporter", "monthly_gross"),
        ),
    ];
    let mut lines = Vec::new();
    for panel in dashboard["panels"].as_array().context("panels")? {
        let title = panel["title"].as_str().unwrap_or("");
        if !title.starts_with("Savings") && !title.starts_with("Top destinations") {
            continue;
        }
        for target in panel["targets"].as_array().context("targets")? {
            let filled = target["expr"]
                .as_str()
                .context("expr")?
                .replace("$__range_s", seconds)
                .replace("$__range", since)
                .replace("$namespace", ".*");
            let rows = prometheus.query(&filled, at)?;
            let got: f64 = rows.iter().filter_map(|r| value(r).ok()).sum();
            let reference = target["refId"].as_str().unwrap_or("");
            match want
                .iter()
                .find(|w| title.starts_with("Savings") && w.0 == reference)
            {
                Some((_, expected)) => {
                    lines.push(format!(
                        "dashboard: savings {reference} {:<70} {got:>10.2} report {expected:>10.2}",
                        target["legendFormat"].as_str().unwrap_or("")
                    ));
                    // NaN (no such suggestion) is not near anything.
                    let near = (got - expected).abs() <= expected.abs() * TOLERANCE;
                    if !near {
                        failures.push(format!("dashboard savings {reference}: {got} $/month, the report says {expected}"));
                    }
                }
                None if rows.is_empty() => {
                    failures.push(format!("dashboard {title:?}: no data for {filled}"))
                }
                None => lines.push(format!("dashboard: {title}: {} rows", rows.len())),
            }
        }
    }
    eprintln!("{}", lines.join("\n"));
    Ok(())
}

#[test]
fn the_report_suggests_each_change_with_the_metered_bytes_and_dollars() -> Result<()> {
    let _serial = serial();
    let extra = [("rxz", "10.0.16.77")];
    let mut node = SimNode::build_with(
        TRAFFIC.as_ref(),
        Offloads::Default,
        &extra,
        &standard_classes(),
    )?;
    kube_proxy_rules(&node)?;
    node.serve_in_pod("pod2", "0.0.0.0:9100")?;
    node.add_internet_aliases(2)?;
    let state = Arc::new(ApiState::new());
    cluster(&node, &state, &["pod1", "pod2", "hostpod"]);
    let backend =
        |addr: &'static [&'static str], node: &'static str, zone: &'static str| EndpointSpec {
            addresses: addr,
            node: Some(node),
            zone: Some(zone),
            pod: None,
        };
    state.apply(
        "/apis/discovery.k8s.io/v1",
        "endpointslices",
        endpointslice_json(
            "shop",
            "db-x7k2p",
            Some("db"),
            "IPv4",
            &[
                backend(&["10.0.2.10"], "ip-10-0-2-10.ec2.internal", "us-east-1c"),
                backend(&["10.0.16.10"], "ip-10-0-16-10.ec2.internal", "us-east-1b"),
            ],
        ),
    );
    let api = ApiServer::start(state.clone())?;
    let ranges =
        TempFile(std::env::temp_dir().join(format!("nct-report-ranges-{}", std::process::id())));
    std::fs::write(&ranges.0, RANGES)?;
    let agent = Agent::start(
        "report",
        &config(
            &api.url(),
            &format!(
                "nat: {{ conntrack: true, netns: /run/netns/nct-node, service_cidrs: [\"172.20.0.0/16\"] }}\n\
                 egress: {{ nat_gateway: {{ zone: us-east-1b }} }}\n\
                 services: {{ file: {} }}\n",
                ranges.0.display()
            ),
        ),
    )?;
    let truth = Truth::install(&node)?;
    let prometheus = Prometheus::start(agent.port)?;
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    while prometheus
        .query("count(netcost_node_info)", now())?
        .is_empty()
    {
        ensure!(
            std::time::Instant::now() < deadline,
            "prometheus never scraped the agent: {}",
            prometheus.log()
        );
        std::thread::sleep(Duration::from_millis(250));
    }
    let mut failures = Vec::new();

    // Through Prometheus: everything, with enough internet bytes for a gateway of our own.
    let before = truth.read()?;
    let started = now();
    run_scenarios(&node, 400_000_000)?;
    agent.settled_metrics(DRAIN)?;
    std::thread::sleep(Duration::from_secs(3));
    let measured = delta(&truth.read()?, &before);
    let last = prometheus.query("timestamp(netcost_node_info)", now())?;
    let at = value(last.first().context("no scrape")?)?;
    let url = format!("http://127.0.0.1:{}", prometheus.port);
    let at_text = format!("{at}");
    // From just before the first scenario byte to the last scrape.
    let since = format!("{}s", (at - started).ceil() as u64 + 1);
    let (json, markdown) = report(
        &["--prometheus", &url, "--since", &since, "--at", &at_text],
        true,
    )?;
    // The window is the range asked for; the month, 730 hours of it.
    let window = (at - started).ceil() + 1.0;
    ensure!(
        json["window_seconds"].as_f64() == Some(window),
        "the report's window {} is not the {window} s asked for",
        json["window_seconds"]
    );
    let factor = 730.0 * 3600.0 / window;
    check(
        "prometheus",
        &json,
        &expected(&measured, factor),
        &mut failures,
    );
    eprintln!("--- report (markdown, from Prometheus) ---\n{markdown}---");
    dashboard(&prometheus, &json, &since, at, &mut failures)?;

    // From /metrics, two scrapes: a smaller internet share, whose hop does not pay for a gateway.
    let before = truth.read()?;
    let metrics = format!("http://127.0.0.1:{}/metrics", agent.port);
    let asked = std::time::Instant::now();
    let reader =
        std::thread::spawn(move || report(&["--metrics", &metrics, "--over", "15s"], false));
    std::thread::sleep(Duration::from_secs(2));
    run_scenarios(&node, 2_000_000)?;
    let (json, _) = reader
        .join()
        .map_err(|_| anyhow::anyhow!("report thread panicked"))??;
    let measured = delta(&truth.read()?, &before);
    // Two scrapes 15 s apart: the window is that, plus at most the first scrape's own time.
    let window = json["window_seconds"].as_f64().context("no window")?;
    ensure!(
        window >= 15.0 && window <= asked.elapsed().as_secs_f64() && window < 16.0,
        "the /metrics window {window} s is not the 15 s asked for"
    );
    let factor = 730.0 * 3600.0 / window;
    let want = expected(&measured, factor);
    ensure!(
        !want.iter().any(|w| w.0 == "nat_gateway_per_zone"),
        "the /metrics round must not warrant a NAT gateway"
    );
    check("metrics", &json, &want, &mut failures);
    let notes = json["notes"].to_string();
    if !notes.contains("keep the shared one") {
        failures.push(format!(
            "metrics: the weighed NAT gateway is not in the notes: {notes}"
        ));
    }
    let log = agent.stop()?;
    ensure!(
        failures.is_empty(),
        "{}\nagent log:\n{log}",
        failures.join("\n")
    );
    Ok(())
}
