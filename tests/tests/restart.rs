//! Root tests: restarts lose nothing. The agent is killed with SIGKILL while traffic flows; the
//! kernel goes on counting into the pinned maps through the pinned links; the next agent adopts
//! them and its checkpoint and goes on with the same totals, which must equal the wire meters.
//! A layout the agent cannot adopt starts fresh, saying so; `cleanup` removes everything.

use std::{
    sync::atomic::{AtomicBool, Ordering},
    time::Duration,
};

use anyhow::{ensure, Context, Result};
use netcost_tests::{
    agent::{agent_bin, Agent, AgentState, Samples},
    serial,
    simnode::{Family, Offloads, SimNode, TOPOLOGY_YAML},
    truth::{compare_with_meters, run_plan, PLAN},
};

const DRAIN: Duration = Duration::from_millis(500);
const TRAFFIC: &str = env!("CARGO_BIN_EXE_nct-traffic");

fn config(state: &AgentState, extra: &str) -> String {
    format!(
        "drain_interval_seconds: 0.5\nkubernetes: {{ enabled: false }}\n{extra}{TOPOLOGY_YAML}{}",
        state.yaml()
    )
}

fn start_info(samples: &Samples) -> Option<(String, String, String)> {
    samples
        .series
        .get("netcost_start_info")?
        .iter()
        .find(|(_, v)| *v == 1.0)
        .map(|(l, _)| (l["maps"].clone(), l["totals"].clone(), l["pins"].clone()))
}

#[test]
fn a_sigkill_while_traffic_flows_loses_no_byte() -> Result<()> {
    let _serial = serial();
    let node = SimNode::build(TRAFFIC.as_ref(), Offloads::Default)?;
    let state = AgentState::new("restart")?;
    let config = config(&state, "");
    let first = Agent::start("restart-1", &config)?;
    ensure!(
        start_info(&first.metrics()?) == Some(("created".into(), "new".into(), "pinned".into())),
        "first start: {:?}",
        start_info(&first.metrics()?)
    );

    // The shared plan, over and over, while the first agent is killed and the second starts.
    let stop = AtomicBool::new(false);
    let (rounds, second) = std::thread::scope(|s| -> Result<(u32, Agent)> {
        let traffic = s.spawn(|| -> Result<u32> {
            let mut rounds = 0;
            while !stop.load(Ordering::Relaxed) {
                run_plan(&node, PLAN)?;
                rounds += 1;
            }
            Ok(rounds)
        });
        let restart = || -> Result<Agent> {
            std::thread::sleep(Duration::from_millis(1500));
            // Mid-drain or between drains: wherever the kill lands, nothing may be lost.
            first.kill()?;
            eprintln!("restart: first agent killed with SIGKILL");
            std::thread::sleep(Duration::from_millis(1500));
            let second = Agent::start("restart-2", &config)?;
            std::thread::sleep(Duration::from_millis(1500));
            Ok(second)
        };
        let second = restart();
        stop.store(true, Ordering::Relaxed);
        let rounds = traffic.join().expect("traffic thread panicked")?;
        Ok((rounds, second?))
    })?;
    let samples = second.settled_metrics(DRAIN)?;
    let log = second.log();
    ensure!(
        start_info(&samples) == Some(("adopted".into(), "restored".into(), "pinned".into())),
        "second start: {:?}\n{log}",
        start_info(&samples)
    );
    ensure!(
        log.contains("totals restored from the checkpoint"),
        "no restore in the log:\n{log}"
    );
    let active = |pod: &str, class: &str| PLAN.iter().any(|t| t.0 == pod && t.1 == class);
    let cmp = compare_with_meters(
        &node,
        &samples,
        &|pod| vec![("pod_uid".into(), node.pod(pod).uid.clone())],
        &active,
    )?;
    eprintln!(
        "restart: {rounds} rounds of the plan; SIGKILL after 1.5 s, next agent 1.5 s later\n{}",
        cmp.report.join("\n")
    );
    ensure!(cmp.failures.is_empty(), "{}", cmp.failures.join("\n"));
    second.stop()?;
    Ok(())
}

#[test]
fn an_incompatible_layout_starts_fresh_and_says_so() -> Result<()> {
    let _serial = serial();
    let node = SimNode::build(TRAFFIC.as_ref(), Offloads::Default)?;
    let state = AgentState::new("layout")?;
    let uid = node.pod("pod1").uid.clone();
    let key = [
        ("pod_uid", uid.as_str()),
        ("traffic_class", "internet"),
        ("direction", "egress"),
    ];
    let truth = || -> Result<f64> {
        Ok(node.pod("pod1").truth()?[&("internet".to_owned(), "egress".to_owned())] as f64)
    };

    let first = Agent::start("layout-1", &config(&state, ""))?;
    node.transfer("pod1", "internet", Family::V4, &["send", "3000000"])?;
    let before = first
        .settled_metrics(DRAIN)?
        .value("netcost_network_bytes_total", &key)
        .context("no series")?;
    ensure!(before == truth()?, "first agent {before} vs {}", truth()?);
    first.stop()?;

    // Another capacity is another layout: the pinned maps cannot be adopted.
    let truth_at_restart = truth()?;
    let second = Agent::start(
        "layout-2",
        &config(&state, "maps: { flow_entries: 1024 }\n"),
    )?;
    let log = second.log();
    ensure!(
        log.contains("incompatible layout") && log.contains("1024 entries"),
        "no log line naming the incompatible layout:\n{log}"
    );
    let samples = second.metrics()?;
    ensure!(
        start_info(&samples) == Some(("replaced".into(), "reset".into(), "pinned".into())),
        "{:?}",
        start_info(&samples)
    );
    node.transfer("pod1", "internet", Family::V4, &["send", "1000000"])?;
    let after = second
        .settled_metrics(DRAIN)?
        .value("netcost_network_bytes_total", &key)
        .context("no series")?;
    let new_bytes = truth()? - truth_at_restart;
    eprintln!("layout: first agent {before} (truth {truth_at_restart}); after the reset {after}, new traffic {new_bytes}");
    // A counter reset Prometheus sees: lower than before, and exactly what came since.
    ensure!(after < before, "no reset: {after} ≥ {before}");
    ensure!(
        after == new_bytes,
        "counted {after} since the reset, truth {new_bytes}"
    );
    second.stop()?;
    Ok(())
}

/// Pinned (the default), both programs stay attached after the agent stops, until
/// `netcost-agent cleanup`, which removes every pin and the checkpoint.
#[test]
fn cleanup_detaches_the_programs_and_removes_every_pin() -> Result<()> {
    let _serial = serial();
    let state = AgentState::new("cleanup")?;
    let config = config(&state, "");
    let agent = Agent::start("cleanup", &config)?;
    let during = netcost_tests::programs_at_cgroup_root()?;
    let abi = agent.metrics()?.series["netcost_build_info"][0].0["abi_version"].clone();
    agent.stop()?;
    let after_stop = netcost_tests::programs_at_cgroup_root()?;
    let pins = state.pin_dir().join(format!("v{abi}"));
    for f in ["links/netcost_egress", "maps/FLOWS_0", "maps/CONTROL"] {
        ensure!(
            pins.join(f).exists(),
            "{f} not pinned in {}",
            pins.display()
        );
    }
    let checkpoint = state.dir.join("checkpoint.json");
    ensure!(checkpoint.exists(), "no checkpoint written");

    let config_path = std::env::temp_dir().join("nct-cleanup.yaml");
    std::fs::write(&config_path, &config)?;
    let out = std::process::Command::new(agent_bin()?)
        .arg("cleanup")
        .arg("--config")
        .arg(&config_path)
        .output()?;
    let _ = std::fs::remove_file(&config_path);
    let said = String::from_utf8_lossy(&out.stdout);
    eprintln!("cleanup said:\n{said}");
    ensure!(
        out.status.success(),
        "cleanup failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let after_cleanup = netcost_tests::programs_at_cgroup_root()?;
    for name in ["netcost_egress", "netcost_ingres"] {
        // bpftool prints names truncated to 15 characters.
        ensure!(during.contains(name), "{name} not attached: {during}");
        ensure!(
            after_stop.contains(name),
            "{name} not attached after stop: {after_stop}"
        );
        ensure!(
            !after_cleanup.contains(name),
            "{name} still attached after cleanup: {after_cleanup}"
        );
    }
    ensure!(!state.pin_dir().exists(), "pins left after cleanup");
    ensure!(!checkpoint.exists(), "checkpoint left after cleanup");
    Ok(())
}

/// Uninstalling needs only to know where the state is: a config whose other sections this node
/// would refuse (no zone, nothing to learn it from) does not stop `cleanup`, and `--pin-dir` /
/// `--state-dir` say where when there is no config at all (the cleanup DaemonSet).
#[test]
fn cleanup_reads_only_where_the_state_is() -> Result<()> {
    let _serial = serial();
    let state = AgentState::new("cleanup-state-only")?;
    let agent = Agent::start("cleanup-state-only", &config(&state, ""))?;
    agent.stop()?;
    ensure!(state.pin_dir().exists(), "nothing pinned");
    let config_path = std::env::temp_dir().join("nct-cleanup-state-only.yaml");
    std::fs::write(
        &config_path,
        format!(
            "kubernetes: {{ enabled: false }}\nimds: {{ enabled: false }}\n{}",
            state.yaml()
        ),
    )?;
    let refused = std::process::Command::new(agent_bin()?)
        .arg("--config")
        .arg(&config_path)
        .output()?;
    ensure!(
        !refused.status.success(),
        "the agent itself accepted a config without a zone"
    );
    let out = std::process::Command::new(agent_bin()?)
        .args(["cleanup", "--config"])
        .arg(&config_path)
        .output()?;
    let _ = std::fs::remove_file(&config_path);
    ensure!(
        out.status.success(),
        "cleanup refused: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    ensure!(!state.pin_dir().exists(), "pins left after cleanup");
    // Again without a config file, by flags.
    let agent = Agent::start("cleanup-state-only-2", &config(&state, ""))?;
    agent.stop()?;
    let out = std::process::Command::new(agent_bin()?)
        .args([
            "cleanup",
            "--config",
            "/nonexistent/netcost.yaml",
            "--pin-dir",
        ])
        .arg(state.pin_dir())
        .arg("--state-dir")
        .arg(&state.dir)
        .output()?;
    ensure!(
        out.status.success(),
        "cleanup by flags: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    ensure!(
        !state.pin_dir().exists(),
        "pins left after cleanup by flags"
    );
    ensure!(
        !state.dir.join("checkpoint.json").exists(),
        "checkpoint left"
    );
    Ok(())
}

/// A truncated checkpoint is not half-restored: it is moved aside (kept, not overwritten), and
/// the agent starts with `totals="reset"`, saying why.
#[test]
fn a_truncated_checkpoint_is_kept_aside_and_the_totals_start_again() -> Result<()> {
    let _serial = serial();
    let state = AgentState::new("truncated")?;
    let agent = Agent::start("truncated", &config(&state, ""))?;
    agent.stop()?;
    let path = state.dir.join("checkpoint.json");
    let text = std::fs::read(&path)?;
    std::fs::write(&path, &text[..text.len() / 2])?;
    let agent = Agent::start("truncated-2", &config(&state, ""))?;
    let info = start_info(&agent.metrics()?);
    let aside: Vec<_> = std::fs::read_dir(&state.dir)?
        .filter_map(Result::ok)
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .filter(|n| n.starts_with("checkpoint.json.bad-"))
        .collect();
    let log = agent.stop()?;
    eprintln!("start info {info:?}, set aside {aside:?}");
    ensure!(
        info.as_ref()
            .is_some_and(|(_, totals, _)| totals == "reset"),
        "{info:?}\n{log}"
    );
    ensure!(aside.len() == 1, "not kept aside: {aside:?}");
    let kept = std::fs::read(state.dir.join(&aside[0]))?;
    ensure!(
        kept == text[..text.len() / 2],
        "the kept file is not the truncated one"
    );
    ensure!(
        log.contains("moved aside to"),
        "the log does not say where: {log}"
    );
    Ok(())
}
