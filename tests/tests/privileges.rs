//! Root test: the agent runs with exactly the DaemonSet's capabilities (CAP_BPF, CAP_PERFMON,
//! CAP_NET_ADMIN; every other one dropped from the effective, permitted, inheritable, ambient and
//! bounding sets) on a read-only root filesystem, and loads, attaches, counts and serves, then
//! drops them (all but CAP_NET_ADMIN on its conntrack thread); without any one of the three it
//! exits with an error that names the missing capability. Its pins and
//! checkpoint are mounts of their own (bpffs, tmpfs), as the DaemonSet's hostPath volumes are.

use std::time::Duration;

use anyhow::{ensure, Context, Result};
use netcost_tests::{
    agent::{agent_bin, Agent, AgentState},
    serial,
    simnode::{Family, Offloads, SimNode, TOPOLOGY_YAML},
};

const TRAFFIC: &str = env!("CARGO_BIN_EXE_nct-traffic");
const CAPS: [&str; 3] = ["bpf", "perfmon", "net_admin"];

fn config() -> String {
    format!("drain_interval_seconds: 0.5\nkubernetes: {{ enabled: false }}\n{TOPOLOGY_YAML}")
}

/// A private mount namespace whose root is remounted read-only (checked: a write must fail),
/// then setpriv down to `caps` and exec the agent.
fn wrapper(caps: &[&str]) -> Vec<String> {
    let set = format!(
        "-all,{}",
        caps.iter()
            .map(|c| format!("+{c}"))
            .collect::<Vec<_>>()
            .join(",")
    );
    vec![
        "unshare".into(),
        "--mount".into(),
        "--propagation".into(),
        "private".into(),
        "sh".into(),
        "-c".into(),
        format!(
            "mount -o remount,bind,ro / && ! touch /nct-read-only-probe 2>/dev/null && exec setpriv --inh-caps={set} --ambient-caps={set} --bounding-set={set} \"$@\""
        ),
        "sh".into(),
    ]
}

#[test]
fn runs_with_exactly_its_three_capabilities_on_a_read_only_root() -> Result<()> {
    let _serial = serial();
    let node = SimNode::build(TRAFFIC.as_ref(), Offloads::Default)?;
    let w = wrapper(&CAPS);
    let w: Vec<&str> = w.iter().map(String::as_str).collect();
    let mut agent = Agent::start_wrapped("least-privilege", &config(), &w)?;
    // It was given exactly CAP_NET_ADMIN (12), CAP_PERFMON (38) and CAP_BPF (39) (the bounding
    // set says so), and once its programs are loaded and attached it holds none of them: every
    // thread's effective and permitted sets are empty, but the conntrack reader's, which keeps
    // CAP_NET_ADMIN alone for its resync dumps.
    let three = (1u64 << 12) | (1 << 38) | (1 << 39);
    let pid = agent.pid();
    let mut conntrack_threads = 0;
    for task in std::fs::read_dir(format!("/proc/{pid}/task"))? {
        let dir = task?.path();
        let name = std::fs::read_to_string(dir.join("comm"))?.trim().to_owned();
        let status = std::fs::read_to_string(dir.join("status"))?;
        let set = |field: &str| -> Result<u64> {
            let v = status
                .lines()
                .find_map(|l| l.strip_prefix(field))
                .map(str::trim)
                .with_context(|| format!("{field} missing"))?;
            Ok(u64::from_str_radix(v, 16)?)
        };
        let want = if name == "conntrack" { 1 << 12 } else { 0 };
        eprintln!(
            "thread {name}: CapEff {:016x} CapPrm {:016x} CapBnd {:016x}",
            set("CapEff:")?,
            set("CapPrm:")?,
            set("CapBnd:")?
        );
        ensure!(
            set("CapBnd:")? == three,
            "{name}: bounding set {:x}",
            set("CapBnd:")?
        );
        for field in ["CapEff:", "CapPrm:"] {
            ensure!(
                set(field)? == want,
                "thread {name} still holds {field} {:x}",
                set(field)?
            );
        }
        // Nothing to hand on to a program it could run, and no way to gain privileges again.
        for field in ["CapInh:", "CapAmb:"] {
            ensure!(set(field)? == 0, "thread {name}: {field} {:x}", set(field)?);
        }
        ensure!(
            set("NoNewPrivs:")? == 1,
            "thread {name}: NoNewPrivs not set"
        );
        conntrack_threads += usize::from(name == "conntrack");
    }
    ensure!(
        conntrack_threads == 1,
        "{conntrack_threads} conntrack threads: the exception above was not checked"
    );
    node.transfer("pod1", "internet", Family::V4, &["send", "2000000"])?;
    let samples = agent.settled_metrics(Duration::from_millis(500))?;
    let uid = &node.pod("pod1").uid;
    let truth = node.pod("pod1").truth()?[&("internet".to_owned(), "egress".to_owned())] as f64;
    let got = samples
        .value(
            "netcost_network_bytes_total",
            &[
                ("pod_uid", uid),
                ("traffic_class", "internet"),
                ("direction", "egress"),
            ],
        )
        .context("no pod1 internet egress series")?;
    eprintln!("least privilege: pod1 internet egress netcost {got}, truth {truth}");
    ensure!(got == truth, "counted {got}, truth {truth}");
    ensure!(
        samples.value("netcost_programs_attached", &[]) == Some(2.0),
        "programs not attached"
    );
    // And it pins its maps and links and writes its checkpoint with no more than that: restarts
    // lose nothing under the DaemonSet's privileges too.
    ensure!(
        samples.value("netcost_start_info", &[("pins", "pinned")]) == Some(1.0),
        "not pinned with three capabilities: {}",
        agent.log()
    );
    let checkpoint = samples
        .value("netcost_checkpoint_size_bytes", &[])
        .unwrap_or(0.0);
    ensure!(
        checkpoint > 0.0 && samples.value("netcost_checkpoint_errors_total", &[]) == Some(0.0),
        "no checkpoint written with three capabilities: {}",
        agent.log()
    );
    agent.stop()?;
    Ok(())
}

#[test]
fn without_any_one_capability_it_names_the_missing_one() -> Result<()> {
    let _serial = serial();
    let dir = std::env::temp_dir();
    let config_path = dir.join("nct-missing-cap.yaml");
    // Its own bpffs and state directory: a run that gets as far as pinning leaves nothing on
    // the machine.
    let state = AgentState::new("missing-cap")?;
    std::fs::write(
        &config_path,
        format!("listen: \"127.0.0.1:0\"\n{}{}", config(), state.yaml()),
    )?;
    for missing in CAPS {
        let caps: Vec<&str> = CAPS.iter().copied().filter(|c| *c != missing).collect();
        let w = wrapper(&caps);
        let out = std::process::Command::new(&w[0])
            .args(&w[1..])
            .arg(agent_bin()?)
            .arg("--config")
            .arg(&config_path)
            .output()?;
        let stderr = String::from_utf8_lossy(&out.stderr);
        let line = stderr
            .lines()
            .find(|l| l.starts_with("netcost-agent:"))
            .unwrap_or_default()
            .to_owned();
        eprintln!("without CAP_{}: {}", missing.to_uppercase(), line);
        ensure!(!out.status.success(), "started without CAP_{missing}");
        let want = format!("missing capability CAP_{}", missing.to_uppercase());
        ensure!(
            line.contains(&want),
            "error does not say {want:?}: {stderr}"
        );
    }
    let _ = std::fs::remove_file(&config_path);
    Ok(())
}
