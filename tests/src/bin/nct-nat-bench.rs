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

const CONNECTIONS: u32 = 10_000;

fn main() -> Result<()> {
    let traffic = std::env::current_exe()?.with_file_name("nct-traffic");
    ensure!(
        traffic.exists(),
        "build nct-traffic first ({})",
        traffic.display()
    );
    let node = SimNode::build(&traffic, Offloads::Default)?;
    let ns = node.netns("node")?;
    for chain in ["PREROUTING", "OUTPUT"] {
        ns.exec(&[
            "iptables",
            "-w",
            "-t",
            "nat",
            "-A",
            chain,
            "-d",
            "172.20.0.10/32",
            "-p",
            "tcp",
            "--dport",
            "80",
            "-j",
            "DNAT",
            "--to-destination",
            "10.0.2.10:5001",
        ])?;
    }
    ns.sysctl("net.netfilter.nf_conntrack_tcp_timeout_time_wait=1")?;
    let config = format!(
        "drain_interval_seconds: 1\nkubernetes: {{ enabled: false }}\n\
         nat: {{ conntrack: true, netns: /run/netns/nct-node, service_cidrs: [\"172.20.0.0/16\"] }}\n{TOPOLOGY_YAML}"
    );
    let mut agent = Agent::start("nat-bench", &config)?;
    println!("| storm of {CONNECTIONS} connections to | conntrack thread CPU per 1,000 | agent CPU per 1,000 | storm time | RSS after |");
    println!("|---|---|---|---|---|");
    for (label, target) in [
        ("a plain address (no NAT; baseline)", "10.0.2.10:5001"),
        ("the ClusterIP (DNAT)", "172.20.0.10:80"),
        ("the ClusterIP again (table warm)", "172.20.0.10:80"),
    ] {
        // Settle: let the previous storm's DESTROY events and drains pass.
        std::thread::sleep(Duration::from_secs(3));
        let before = agent.thread_cpu_ns()?;
        let started = Instant::now();
        node.transfer_to("pod1", target, &["storm", &CONNECTIONS.to_string(), "1000"])?;
        let storm = started.elapsed();
        // Until every NEW event is read and two drains attributed the storm.
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
    Ok(())
}
