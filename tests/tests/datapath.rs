//! Root integration tests of the data path on a simulated node (see `netcost_tests::simnode`).
//!
//! Each test builds its own namespaces and cgroups and removes them on drop, even on failure.
//! The truth is an HTB meter on the links (wire bytes per segment); the agent's figures come from
//! its /metrics, scraped over loopback, exactly as Prometheus would.

use std::time::Duration;

use anyhow::{bail, ensure, Context, Result};
use netcost_tests::{
    agent::{agent_bin, Agent, AgentState, Samples},
    serial,
    simnode::{Offloads, SimNode, DIRECTIONS, TOPOLOGY_YAML},
    truth::{compare_with_meters, run_plan, PLAN, TOLERANCE},
};

const DRAIN: Duration = Duration::from_millis(500);
const TRAFFIC: &str = env!("CARGO_BIN_EXE_nct-traffic");

fn config(extra: &str) -> String {
    format!("drain_interval_seconds: 0.5\nkubernetes: {{ enabled: false }}\n{extra}{TOPOLOGY_YAML}")
}

fn bytes(samples: &Samples, uid: &str, class: &str, direction: &str) -> Option<f64> {
    samples.value(
        "netcost_network_bytes_total",
        &[
            ("owner", "pod"),
            ("pod_uid", uid),
            ("traffic_class", class),
            ("direction", direction),
        ],
    )
}

fn compare_with_truth(offloads: Offloads) -> Result<()> {
    let _serial = serial();
    let node = SimNode::build(TRAFFIC.as_ref(), offloads)?;
    let agent = Agent::start(&format!("{offloads:?}"), &config(""))?;
    run_plan(&node, PLAN)?;
    let samples = agent.settled_metrics(DRAIN)?;
    let by_uid = |name: &str| vec![("pod_uid".to_owned(), node.pod(name).uid.clone())];
    let active = |pod: &str, class: &str| PLAN.iter().any(|(p, c, ..)| *p == pod && *c == class);
    let c = compare_with_meters(&node, &samples, &by_uid, &active)?;
    eprintln!("offloads {offloads:?}\n{}", c.report.join("\n"));
    let log = agent.stop()?;
    if !c.failures.is_empty() {
        bail!("{}\nagent log:\n{log}", c.failures.join("\n"));
    }
    Ok(())
}

#[test]
fn counts_equal_wire_bytes_with_default_offloads() -> Result<()> {
    compare_with_truth(Offloads::Default)
}

#[test]
fn counts_equal_wire_bytes_with_offloads_off() -> Result<()> {
    compare_with_truth(Offloads::Off)
}

#[test]
fn counts_equal_wire_bytes_with_gro_on_and_segmentation_off() -> Result<()> {
    compare_with_truth(Offloads::GroOnly)
}

/// With a flow map far too small, bytes must spill into the pod's overflow entry (class
/// `unknown`), say so in a counter, and none may vanish.
#[test]
fn a_full_flow_map_spills_to_overflow_without_losing_bytes() -> Result<()> {
    let _serial = serial();
    let node = SimNode::build(TRAFFIC.as_ref(), Offloads::Default)?;
    let agent = Agent::start("overflow", &config("maps: { flow_entries: 16 }\n"))?;
    let addrs = node.add_internet_aliases(40)?;
    for addr in &addrs {
        node.udp_to("pod1", addr, 20, 1000)?;
    }
    let samples = agent.settled_metrics(DRAIN)?;
    let pod = node.pod("pod1");
    let truth = pod.truth()?;
    for direction in DIRECTIONS {
        let t = truth[&("internet".to_owned(), direction.to_owned())] as f64;
        let internet = bytes(&samples, &pod.uid, "internet", direction).unwrap_or(0.0);
        let unknown = bytes(&samples, &pod.uid, "unknown", direction).unwrap_or(0.0);
        eprintln!("{direction}: truth {t}, internet {internet}, unknown (overflow) {unknown}");
        // 40 destinations for 16 slots per buffer: egress must spill. Replies all come from the
        // host's primary address (one flow), so ingress need not.
        ensure!(
            direction == "ingress" || unknown > 0.0,
            "{direction}: nothing spilled to overflow"
        );
        ensure!(
            ((internet + unknown) - t).abs() <= t * TOLERANCE,
            "{direction}: internet {internet} + overflow {unknown} != truth {t}"
        );
        let counter = samples
            .value("netcost_overflow_bytes_total", &[("direction", direction)])
            .context("no overflow counter")?;
        ensure!(counter >= unknown, "overflow counter {counter} < {unknown}");
    }
    ensure!(
        samples.sum("netcost_lost_bytes_total", &[]) == 0.0,
        "bytes lost"
    );
    agent.stop()?;
    Ok(())
}

/// Both programs are attached at the cgroup v2 root while the agent runs. Unpinned
/// (`state.pin: false`) they are gone after SIGTERM; pinned, see the restart tests.
#[test]
fn programs_are_attached_at_the_root_and_unpinned_detached_on_stop() -> Result<()> {
    let _serial = serial();
    let attached = netcost_tests::programs_at_cgroup_root;
    let state = AgentState::new("attach")?;
    let unpinned = format!(
        "{}state:\n  pin: false\n  dir: \"{}\"\n",
        config(""),
        state.dir.display()
    );
    let agent = Agent::start("attach", &unpinned)?;
    let during = attached()?;
    let samples = agent.metrics()?;
    ensure!(
        samples.value("netcost_programs_attached", &[]) == Some(2.0),
        "programs_attached gauge"
    );
    agent.stop()?;
    let after = attached()?;
    for name in ["netcost_egress", "netcost_ingres"] {
        // bpftool prints names truncated to 15 characters.
        ensure!(during.contains(name), "{name} not attached: {during}");
        ensure!(
            !after.contains(name),
            "{name} still attached after stop: {after}"
        );
    }
    Ok(())
}

/// The node's own processes are counted too, as owner="node" (here: the scrape itself).
#[test]
fn node_processes_are_counted_as_the_node() -> Result<()> {
    let _serial = serial();
    let agent = Agent::start("node", &config(""))?;
    for _ in 0..3 {
        agent.metrics()?;
    }
    std::thread::sleep(DRAIN * 3);
    let samples = agent.metrics()?;
    let node_loopback = samples.sum(
        "netcost_network_bytes_total",
        &[("owner", "node"), ("traffic_class", "same_zone")],
    );
    ensure!(node_loopback > 0.0, "no node loopback bytes counted");
    agent.stop()?;
    Ok(())
}

#[test]
fn a_bad_config_is_refused_naming_the_field() -> Result<()> {
    let dir = std::env::temp_dir().join(format!("nct-badconfig-{}", std::process::id()));
    std::fs::create_dir_all(&dir)?;
    let path = dir.join("bad.yaml");
    std::fs::write(&path, TOPOLOGY_YAML.replace("10.0.16.0/24", "10.0.16.0/40"))?;
    let out = std::process::Command::new(agent_bin()?)
        .arg("--config")
        .arg(&path)
        .output()?;
    std::fs::remove_dir_all(&dir)?;
    let stderr = String::from_utf8_lossy(&out.stderr);
    ensure!(
        out.status.code() == Some(2),
        "exit {:?}: {stderr}",
        out.status
    );
    ensure!(
        stderr.contains("topology.zones[1].cidrs[0]"),
        "error does not name the field: {stderr}"
    );
    Ok(())
}
