//! Root integration tests of Service and NAT classification on the simulated node, with
//! kube-proxy-like iptables rules in the node's namespace:
//!
//! - ClusterIP 172.20.0.10:80, DNATed at random (50/50) to a backend in our zone (10.0.2.10) and
//!   one in another zone (10.0.16.10), in PREROUTING (pod-network pods) and OUTPUT (hostNetwork);
//!   and an IPv6 ClusterIP [fd00:ffff::10]:80 DNATed to [fd00:0:16::10]:5001;
//! - NodePort 10.0.0.1:30080 → pod2:5001, masqueraded to the bridge address like kube-proxy's
//!   externalTrafficPolicy=Cluster;
//! - MASQUERADE of pod traffic to the internet hosts, through a NAT gateway in another zone
//!   (config), with two "AWS service" addresses on the internet host (a test service-ranges
//!   file): S3 through a gateway endpoint, DynamoDB through the NAT gateway.
//!
//! The truth for each backend zone is an HTB meter where the packets carry the backend's address
//! (the router's links to the backends, and the backends' own links), so it does not depend on
//! any NAT bookkeeping. Every packet stays inside the test's namespaces.

use std::time::{Duration, Instant};

use anyhow::{ensure, Context, Result};
use netcost_tests::{
    agent::{Agent, Samples},
    meter::Meter,
    serial,
    simnode::{Family, Offloads, SimNode, TOPOLOGY_YAML},
};

const DRAIN: Duration = Duration::from_millis(500);
const TRAFFIC: &str = env!("CARGO_BIN_EXE_nct-traffic");
/// Per backend zone, the agent must agree with the meters within 0.5 %.
const TOLERANCE: f64 = 0.005;
const CLUSTER_IP: &str = "172.20.0.10";
const STORM: u32 = 2_000;

/// The test's service ranges: two addresses of the internet host play S3 and DynamoDB.
const RANGES: &str =
    "# test ranges\n203.0.113.100/32 aws-s3 us-east-1\n203.0.113.101/32 aws-dynamodb us-east-1\n";

fn config(ranges: &std::path::Path) -> String {
    format!(
        "drain_interval_seconds: 0.5\nkubernetes: {{ enabled: false }}\n\
         nat: {{ conntrack: true, netns: /run/netns/nct-node, service_cidrs: [\"172.20.0.0/16\", \"fd00:ffff::/108\"], retention_seconds: 2 }}\n\
         egress: {{ nat_gateway: {{ zone: us-east-1b }}, gateway_endpoints: [aws-s3] }}\n\
         services: {{ file: {} }}\n\
         {TOPOLOGY_YAML}",
        ranges.display()
    )
}

/// A file removed on drop.
struct TempFile(std::path::PathBuf);
impl Drop for TempFile {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.0);
    }
}

fn iptables(node: &SimNode, rule: &str) -> Result<()> {
    let mut argv = vec!["iptables", "-w"];
    argv.extend(rule.split_whitespace());
    node.netns("node")?.exec(&argv).map(drop)
}

/// kube-proxy's rules for the ClusterIP, the NodePort and the masquerade.
fn kube_proxy_rules(node: &SimNode) -> Result<()> {
    for chain in ["PREROUTING", "OUTPUT"] {
        iptables(node, &format!("-t nat -A {chain} -d {CLUSTER_IP}/32 -p tcp --dport 80 -m statistic --mode random --probability 0.5 -j DNAT --to-destination 10.0.2.10:5001"))?;
        iptables(node, &format!("-t nat -A {chain} -d {CLUSTER_IP}/32 -p tcp --dport 80 -j DNAT --to-destination 10.0.16.10:5001"))?;
    }
    // An IPv6 ClusterIP with a single backend in another zone.
    let ns = node.netns("node")?;
    ns.exec(&[
        "ip6tables",
        "-w",
        "-t",
        "nat",
        "-A",
        "PREROUTING",
        "-d",
        "fd00:ffff::10/128",
        "-p",
        "tcp",
        "--dport",
        "80",
        "-j",
        "DNAT",
        "--to-destination",
        "[fd00:0:16::10]:5001",
    ])?;
    iptables(node, "-t nat -A PREROUTING -d 10.0.0.1/32 -p tcp --dport 30080 -j DNAT --to-destination 10.0.1.12:5001")?;
    iptables(node, "-t nat -A POSTROUTING -d 10.0.1.12/32 -p tcp --dport 5001 -m conntrack --ctstate DNAT --ctorigdstport 30080 -j MASQUERADE")?;
    iptables(
        node,
        "-t nat -A POSTROUTING -s 10.0.1.0/24 -d 203.0.113.0/24 -o up0 -j MASQUERADE",
    )?;
    // Short connections leave conntrack soon after they close (kube-proxy's nodes keep the
    // default 120 s; the churn check below needs the DESTROY events within the test).
    node.netns("node")?
        .sysctl("net.netfilter.nf_conntrack_tcp_timeout_time_wait=1")?;
    Ok(())
}

fn u32_match(field: &str, addr: &str) -> (&'static str, String) {
    ("ip", format!("match ip {field} {addr}"))
}

fn u32_match6(field: &str, addr: &str) -> (&'static str, String) {
    ("ipv6", format!("match ip6 {field} {addr}"))
}

fn pod_bytes(samples: &Samples, uid: &str, class: &str, direction: &str) -> f64 {
    samples.sum(
        "netcost_network_bytes_total",
        &[
            ("owner", "pod"),
            ("pod_uid", uid),
            ("traffic_class", class),
            ("direction", direction),
        ],
    )
}

fn within(got: f64, truth: f64) -> bool {
    (got - truth).abs() <= truth * TOLERANCE
}

#[test]
fn service_nodeport_and_masquerade_bytes_go_to_the_real_remote_end() -> Result<()> {
    let _serial = serial();
    let mut node = SimNode::build(TRAFFIC.as_ref(), Offloads::Default)?;
    kube_proxy_rules(&node)?;
    node.serve_in_pod("pod2", "0.0.0.0:5001")?;

    // Truth per backend zone: what reaches each backend from a client, and what it sends back.
    let from = |ns: &str, dev: &str| -> Result<Meter> {
        Meter::install(
            &node.netns(ns)?.name,
            dev,
            &[
                (
                    "pod1",
                    vec![
                        u32_match("src", "10.0.1.11/32"),
                        u32_match6("src", "fd00:0:1::11/128"),
                    ],
                ),
                ("hostpod", vec![u32_match("src", "10.0.0.1/32")]),
            ],
        )
    };
    let to = |ns: &str| -> Result<Meter> {
        Meter::install(
            &node.netns(ns)?.name,
            "eth0",
            &[
                (
                    "pod1",
                    vec![
                        u32_match("dst", "10.0.1.11/32"),
                        u32_match6("dst", "fd00:0:1::11/128"),
                    ],
                ),
                ("hostpod", vec![u32_match("dst", "10.0.0.1/32")]),
            ],
        )
    };
    let zones = [("same_zone", "rsz"), ("cross_zone", "rxz")];
    let mut sent = Vec::new();
    let mut received = Vec::new();
    for (class, host) in zones {
        sent.push((class, from("router", &format!("rt-{host}"))?));
        received.push((class, to(host)?));
    }
    // NodePort truth (the internet client's bytes to the node port, and the answers) and the
    // "AWS services" truth, on the internet host's side of the NAT.
    node.add_internet_aliases(2)?;
    let nodeport = |field: &str, port_field: &str| {
        (
            "ip",
            format!("match ip {field} 10.0.0.1/32 match ip {port_field} 30080 0xffff"),
        )
    };
    let internet_in = Meter::install(
        &node.netns("rin")?.name,
        "eth0",
        &[
            ("nodeport", vec![nodeport("dst", "dport")]),
            ("aws-s3", vec![u32_match("src", "203.0.113.100/32")]),
            ("aws-dynamodb", vec![u32_match("src", "203.0.113.101/32")]),
        ],
    )?;
    let internet_out = Meter::install(
        &node.netns("router")?.name,
        "rt-rin",
        &[
            ("nodeport", vec![nodeport("src", "sport")]),
            ("aws-s3", vec![u32_match("dst", "203.0.113.100/32")]),
            ("aws-dynamodb", vec![u32_match("dst", "203.0.113.101/32")]),
        ],
    )?;
    let ranges =
        TempFile(std::env::temp_dir().join(format!("nct-ranges-{}.tsv", std::process::id())));
    std::fs::write(&ranges.0, RANGES)?;

    let agent = Agent::start("services", &config(&ranges.0))?;
    let service = format!("{CLUSTER_IP}:80");
    // Many connections, so the random split lands on both backends; both directions.
    for _ in 0..24 {
        node.transfer_to("pod1", &service, &["send", "300000"])?;
        node.transfer_to("pod1", &service, &["recv", "200000"])?;
    }
    for _ in 0..8 {
        node.transfer_to("hostpod", &service, &["send", "400000"])?;
        node.transfer_to("hostpod", &service, &["recv", "300000"])?;
    }
    for _ in 0..4 {
        node.transfer_to("pod1", "[fd00:ffff::10]:80", &["send", "300000"])?;
        node.transfer_to("pod1", "[fd00:ffff::10]:80", &["recv", "200000"])?;
    }
    // A storm of sub-second connections through the Service.
    let storm_started = Instant::now();
    node.transfer_to("pod1", &service, &["storm", &STORM.to_string(), "2000"])?;
    let storm_took = storm_started.elapsed();
    // NodePort from the internet to pod2, and pod2 to the internet through MASQUERADE.
    node.transfer_from_remote("rin", "10.0.0.1:30080", &["send", "3000000"])?;
    node.transfer_from_remote("rin", "10.0.0.1:30080", &["recv", "2000000"])?;
    node.transfer("pod2", "internet", Family::V4, &["send", "1500000"])?;
    node.transfer("pod2", "internet", Family::V4, &["recv", "1000000"])?;
    node.transfer_to("pod2", "203.0.113.100:5001", &["send", "800000"])?;
    node.transfer_to("pod2", "203.0.113.101:5001", &["recv", "600000"])?;

    let samples = agent.settled_metrics(DRAIN)?;
    let mut failures = Vec::new();
    let mut report = vec![format!(
        "{:<8} {:<10} {:<8} {:>12} {:>12} {:>8}",
        "pod", "backend", "dir", "truth", "netcost", "diff %"
    )];
    for pod_name in ["pod1", "hostpod"] {
        let pod = node.pod(pod_name);
        for (direction, meters) in [("egress", &sent), ("ingress", &received)] {
            let mut total_truth = 0.0;
            for (class, meter) in meters.iter() {
                let truth = *meter.read()?.get(pod_name).unwrap_or(&0) as f64;
                total_truth += truth;
                let got = pod_bytes(&samples, &pod.uid, class, direction);
                let diff = if truth > 0.0 {
                    (got - truth) / truth * 100.0
                } else {
                    0.0
                };
                report.push(format!(
                    "{pod_name:<8} {class:<10} {direction:<8} {truth:>12} {got:>12} {diff:>8.3}"
                ));
                if truth == 0.0 || !within(got, truth) {
                    failures.push(format!(
                        "{pod_name} {class} {direction}: netcost {got}, truth {truth}"
                    ));
                }
            }
            // Nothing of it may be classified by the Service address.
            for class in [
                "internet",
                "unplaced",
                "cross_region",
                "same_region",
                "unknown",
            ] {
                let wrong = pod_bytes(&samples, &pod.uid, class, direction);
                if wrong != 0.0 {
                    failures.push(format!("{pod_name} {direction}: {wrong} bytes misclassified as {class} (of {total_truth})"));
                }
            }
        }
    }
    // pod2: NodePort bytes from the internet client (they came in: no NAT gateway), its own
    // masqueraded internet traffic (out through the NAT gateway in us-east-1b), S3 through the
    // gateway endpoint and DynamoDB through the NAT gateway.
    let pod2 = node.pod("pod2");
    let own = pod2.truth()?;
    let series = |direction: &str, extra: &[(&str, &str)]| {
        let mut want = vec![
            ("owner", "pod"),
            ("pod_uid", pod2.uid.as_str()),
            ("direction", direction),
        ];
        want.extend_from_slice(extra);
        samples.sum("netcost_network_bytes_total", &want)
    };
    for (direction, meter) in [("ingress", &internet_in), ("egress", &internet_out)] {
        let m = meter.read()?;
        let np = *m.get("nodeport").unwrap_or(&0) as f64;
        let s3 = *m.get("aws-s3").unwrap_or(&0) as f64;
        let ddb = *m.get("aws-dynamodb").unwrap_or(&0) as f64;
        // pod2's own meters see every 203.0.113.0/24 byte as internet, the services included.
        let masq = *own
            .get(&("internet".to_owned(), direction.to_owned()))
            .unwrap_or(&0) as f64
            - s3
            - ddb;
        let nat_gw = [("nat_gateway", "true"), ("nat_gateway_hop", "cross_zone")];
        let internet = series(direction, &[("traffic_class", "internet")]);
        let via_gw = series(
            direction,
            &[&[("traffic_class", "internet")][..], &nat_gw[..]].concat(),
        );
        let s3_got = series(
            direction,
            &[
                ("traffic_class", "same_region"),
                ("service", "aws-s3"),
                ("gateway_endpoint", "true"),
            ],
        );
        let ddb_got = series(
            direction,
            &[
                &[
                    ("traffic_class", "same_region"),
                    ("service", "aws-dynamodb"),
                ][..],
                &nat_gw[..],
            ]
            .concat(),
        );
        for (what, got, truth) in [
            ("internet, NodePort (no NAT gateway)", internet - via_gw, np),
            ("internet via NAT gateway (masquerade)", via_gw, masq),
            ("same_region aws-s3 via gateway endpoint", s3_got, s3),
            ("same_region aws-dynamodb via NAT gateway", ddb_got, ddb),
        ] {
            let diff = if truth > 0.0 {
                (got - truth) / truth * 100.0
            } else {
                0.0
            };
            report.push(format!(
                "{:<8} {what:<42} {direction:<8} {truth:>12} {got:>12} {diff:>8.3}",
                "pod2"
            ));
            if truth <= 0.0 || !within(got, truth) {
                failures.push(format!(
                    "pod2 {what} {direction}: netcost {got}, truth {truth}"
                ));
            }
        }
        for class in [
            "same_zone",
            "cross_zone",
            "cross_region",
            "unplaced",
            "unknown",
        ] {
            let wrong = pod_bytes(&samples, &pod2.uid, class, direction);
            if wrong != 0.0 {
                failures.push(format!(
                    "pod2 {direction}: {wrong} NodePort/masquerade bytes classified {class}"
                ));
            }
        }
    }
    let unresolved = samples.sum("netcost_nat_unresolved_bytes_total", &[]);
    let resolved = samples.sum("netcost_nat_resolved_bytes_total", &[]);
    let new_events = samples
        .value("netcost_conntrack_events_total", &[("event", "new")])
        .unwrap_or(0.0);
    report.push(format!(
        "storm: {STORM} connections in {storm_took:?}; conntrack NEW events read {new_events}; NAT-resolved bytes {resolved}, unresolved {unresolved}"
    ));
    if unresolved != 0.0 {
        failures.push(format!(
            "{unresolved} bytes to the Service address were not resolved"
        ));
    }
    if new_events < STORM as f64 {
        failures.push(format!(
            "only {new_events} NEW events for a storm of {STORM}"
        ));
    }

    // Churn: once conntrack destroyed the storm's connections and the retention passed, the
    // table is empty again.
    let deadline = Instant::now() + Duration::from_secs(60);
    let mut connections;
    loop {
        connections = agent
            .metrics()?
            .value("netcost_nat_connections", &[])
            .context("no netcost_nat_connections")?;
        if connections == 0.0 || Instant::now() > deadline {
            break;
        }
        std::thread::sleep(Duration::from_millis(500));
    }
    report.push(format!(
        "translated connections remembered after churn: {connections}"
    ));
    if connections != 0.0 {
        failures.push(format!(
            "{connections} translated connections still remembered 60 s after the storm"
        ));
    }
    eprintln!("{}", report.join("\n"));
    let log = agent.stop()?;
    ensure!(
        failures.is_empty(),
        "{}\nagent log:\n{log}",
        failures.join("\n")
    );
    Ok(())
}
