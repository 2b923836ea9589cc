//! The conntrack resolver's cost per new connection, on the simulated node: a ClusterIP DNATed by
//! kube-proxy-like rules, and storms of short connections through it. Reports the CPU time of the
//! agent's `conntrack` thread and of the whole agent per 1,000 new connections, against the same
//! storm to a plain address (no NAT) as the baseline. Run by `cargo xtask bench` (root).

use std::time::{Duration, Instant};

use anyhow::{ensure, Context, Result};
use netcost_tests::{
    agent::Agent,
    simnode::{Offloads, SimNode, TOPOLOGY_YAML},
};

const CONNECTIONS: u32 = 5_000;

fn main() -> Result<()> {
    let traffic = std::env::current_exe()?.with_file_name("nct-traffic");
    ensure!(
        traffic.exists(),
        "build nct-traffic first ({})",
        traffic.display()
    );
    let node = SimNode::build(&traffic, Offloads::Default)?;
    let ns = node.netns("node")?;
    // Every storm goes to a destination no earlier storm used: TIME_WAIT sockets of an earlier
    // storm to the same destination would slow the client's port search and skew the times.
    for (vip, backend) in [
        ("172.20.0.10", "10.0.2.10"),
        ("172.20.0.11", "10.0.16.10"),
        ("172.20.0.12", "10.0.2.10"),
    ] {
        for chain in ["PREROUTING", "OUTPUT"] {
            let rule = format!(
                "-w -t nat -A {chain} -d {vip}/32 -p tcp --dport 80 -j DNAT --to-destination {backend}:5001"
            );
            let mut argv = vec!["iptables"];
            argv.extend(rule.split_whitespace());
            ns.exec(&argv)?;
        }
    }
    ns.sysctl("net.netfilter.nf_conntrack_tcp_timeout_time_wait=1")?;
    let config = format!(
        "drain_interval_seconds: 1\nkubernetes: {{ enabled: false }}\n\
         nat: {{ conntrack: true, netns: /run/netns/nct-node, service_cidrs: [\"172.20.0.0/16\"] }}\n{TOPOLOGY_YAML}"
    );
    // The same storms without the agent: what the node's own NAT path takes.
    let mut bare = Vec::new();
    for target in ["10.0.2.10:5001", "172.20.0.10:80"] {
        std::thread::sleep(Duration::from_secs(3));
        let started = Instant::now();
        node.transfer_to("pod1", target, &["storm", &CONNECTIONS.to_string(), "1000"])?;
        bare.push((target, started.elapsed()));
    }
    let mut agent = Agent::start("nat-bench", &config)?;
    let mut rows = Vec::new();
    println!("| storm of {CONNECTIONS} connections to | conntrack thread CPU per 1,000 | agent CPU per 1,000 | storm time | RSS after |");
    println!("|---|---|---|---|---|");
    for (label, target) in [
        ("a plain address (no NAT; baseline)", "10.0.16.10:5001"),
        ("a ClusterIP (DNAT)", "172.20.0.11:80"),
        (
            "another ClusterIP (DNAT): memory after churn",
            "172.20.0.12:80",
        ),
    ] {
        // Settle: let the previous storm's DESTROY events and drains pass.
        std::thread::sleep(Duration::from_secs(3));
        let before = agent.thread_cpu_ns()?;
        let started = Instant::now();
        // pod2, an identical pod whose port space the storms without the agent did not use.
        node.transfer_to("pod2", target, &["storm", &CONNECTIONS.to_string(), "1000"])?;
        let storm = started.elapsed();
        // Until every NEW event is read and two drains attributed the storm (the connections'
        // DESTROY events and retention follow within the next storm's settling time).
        std::thread::sleep(Duration::from_secs(3));
        let after = agent.thread_cpu_ns()?;
        let per_1000 = |pick: &dyn Fn(&str) -> bool| -> f64 {
            let sum = |m: &std::collections::BTreeMap<String, u64>| -> u64 {
                m.iter().filter(|(k, _)| pick(k)).map(|(_, v)| v).sum()
            };
            (sum(&after).saturating_sub(sum(&before))) as f64 / 1e6 / (CONNECTIONS as f64 / 1000.0)
        };
        let conntrack = per_1000(&|k| k == "conntrack");
        let total = per_1000(&|_| true);
        let (rss, _) = agent.memory_kib()?;
        println!(
            "| {label} | {conntrack:.2} ms | {total:.2} ms | {:.2} s | {:.1} MiB |",
            storm.as_secs_f64(),
            rss as f64 / 1024.0
        );
        rows.push(serde_json::json!({
            "storm_to": label,
            "conntrack_cpu_ms_per_1000": conntrack,
            "agent_cpu_ms_per_1000": total,
            "storm_seconds": storm.as_secs_f64(),
            "rss_mib": rss as f64 / 1024.0,
        }));
    }
    for (target, took) in &bare {
        println!(
            "| {target}, agent not running | – | – | {:.2} s | – |",
            took.as_secs_f64()
        );
    }
    let samples = agent.metrics()?;
    let unresolved = samples.sum("netcost_nat_unresolved_bytes_total", &[]);
    let new = samples
        .value("netcost_conntrack_events_total", &[("event", "new")])
        .context("no conntrack events metric")?;
    println!(
        "\nconntrack NEW events read: {new}; bytes to the ClusterIP left unresolved: {unresolved}"
    );
    agent.stop()?;
    let bare: Vec<_> = bare
        .iter()
        .map(|(target, took)| serde_json::json!({"storm_to": target, "agent": false, "storm_seconds": took.as_secs_f64()}))
        .collect();
    netcost_tests::bench_json(
        "nat",
        &serde_json::json!({
            "connections": CONNECTIONS,
            "with_agent": rows,
            "without_agent": bare,
            "conntrack_new_events": new,
            "unresolved_bytes": unresolved,
        }),
    )
}
