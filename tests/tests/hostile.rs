//! Root tests: a hostile tenant and a failing disk. Label values from API objects cannot forge
//! series; slow or stuck HTTP clients cannot hold the agent; a failing state directory neither
//! loses bytes nor lets a counter go back; one pod that sprays addresses cannot push every
//! other pod's bytes out of their class.

use std::{collections::BTreeSet, sync::Arc, time::Duration};

use anyhow::{bail, ensure, Context, Result};
use netcost_tests::{
    agent::{http_get_with, Agent},
    apiserver::{job_json, pod_json, replicaset_json, ApiServer, ApiState},
    kubenode::{cluster, config, names, with_container, NODE},
    openmetrics, promtool_check_metrics, serial,
    simnode::{Offloads, SimNode},
    sockets_of,
    truth::{compare_with_meters, run_plan, PLAN},
};

const DRAIN: Duration = Duration::from_millis(500);
const TRAFFIC: &str = env!("CARGO_BIN_EXE_nct-traffic");

/// A Deployment name that tries to end its label value, its sample and its line, then forge a
/// Kubecost series of a namespace without pods and the end of the exposition.
const FORGED_DEPLOYMENT: &str = "cart\"} 1e15\nkubecost_pod_network_egress_bytes_total{pod_name=\"x\",namespace=\"nopod\",internet=\"true\",same_region=\"false\",same_zone=\"false\",service=\"\",nat_gateway=\"false\"} 1e15\n# EOF\n";
/// An owner kind with a tab, a NUL, a bidirectional override, braces and a backslash.
const FORGED_KIND: &str = "DaemonSet\"}\t\u{0}\u{202E}{# }\\";

fn long_cronjob() -> String {
    format!("{}\u{2028}#", "r".repeat(10_000))
}

/// What `vocab::clean` makes of a value (the agent's own function, to name what to expect).
fn cleaned(v: &str) -> String {
    agent::vocab::owned(v)
}

#[test]
fn label_values_from_api_objects_cannot_forge_series() -> Result<()> {
    let _serial = serial();
    let node = SimNode::build(TRAFFIC.as_ref(), Offloads::Default)?;
    let state = Arc::new(ApiState::new());
    cluster(&node, &state, &["pod1", "pod2"]);
    // The owners above this node's pods, with hostile names.
    state.apply(
        "/apis/apps/v1",
        "replicasets",
        replicaset_json("shop", "cart-7d9f8c", FORGED_DEPLOYMENT),
    );
    state.apply(
        "/apis/batch/v1",
        "jobs",
        job_json("reports", "report-28912345", &long_cronjob()),
    );
    let (ns, name, ..) = names("hostpod");
    state.apply(
        "/api/v1",
        "pods",
        with_container(
            pod_json(
                ns,
                name,
                &node.pod("hostpod").uid,
                NODE,
                &["10.0.0.1"],
                Some((FORGED_KIND, "node-exporter")),
                true,
            ),
            None,
        ),
    );
    let api = ApiServer::start(state.clone())?;
    let agent = Agent::start("hostile-labels", &config(&api.url(), ""))?;
    run_plan(&node, PLAN)?;
    let samples = agent.settled_metrics(DRAIN)?;

    let mut failures = Vec::new();
    // The Prometheus text format: promtool finds nothing to say.
    let (_, text) = agent.get("/metrics")?;
    if let Err(e) = promtool_check_metrics(&text) {
        failures.push(format!("{e:#}"));
    }
    // The OpenMetrics format: every line parses, and every series is one of this node's pods.
    let (code, om) = http_get_with(
        agent.port,
        "/metrics",
        &[("Accept", "application/openmetrics-text; version=1.0.0")],
    )?;
    ensure!(code == 200, "OpenMetrics scrape answered {code}");
    let parsed = openmetrics::parse(&om).context("the OpenMetrics exposition does not parse")?;
    let pods: BTreeSet<(String, String)> = ["pod1", "pod2", "hostpod"]
        .iter()
        .map(|p| {
            let (ns, name, ..) = names(p);
            (ns.to_owned(), name.to_owned())
        })
        .collect();
    for s in &parsed {
        let ns = s.labels.get("namespace");
        let pod = s.labels.get("pod").or(s.labels.get("pod_name"));
        if let (Some(ns), Some(pod)) = (ns, pod) {
            if !pods.contains(&(ns.clone(), pod.clone())) {
                failures.push(format!("a series of no pod of this node: {s:?}"));
            }
        }
        for v in s.labels.values() {
            if v.len() > agent::vocab::MAX_VALUE_BYTES || v.chars().any(char::is_control) {
                failures.push(format!("an uncleaned label value in {}: {v:?}", s.name));
            }
        }
    }
    // Each pod is still shown, with its workload as the API said it (cleaned).
    for (pod, kind, workload) in [
        ("pod1", "Deployment".to_owned(), cleaned(FORGED_DEPLOYMENT)),
        ("pod2", "CronJob".to_owned(), cleaned(&long_cronjob())),
        ("hostpod", cleaned(FORGED_KIND), "node-exporter".to_owned()),
    ] {
        let (ns, name, ..) = names(pod);
        let found = parsed.iter().any(|s| {
            s.name == "netcost_network_bytes_total"
                && s.labels.get("namespace").map(String::as_str) == Some(ns)
                && s.labels.get("pod").map(String::as_str) == Some(name)
                && s.labels.get("workload_kind") == Some(&kind)
                && s.labels.get("workload") == Some(&workload)
        });
        if !found {
            failures.push(format!(
                "{pod}: no series with workload {kind:?}/{workload:?}"
            ));
        }
    }
    // And every byte is where the meters say.
    let by_name = |pod: &str| {
        let (ns, name, ..) = names(pod);
        vec![
            ("namespace".to_owned(), ns.to_owned()),
            ("pod".to_owned(), name.to_owned()),
        ]
    };
    let active = |pod: &str, class: &str| PLAN.iter().any(|(p, c, ..)| *p == pod && *c == class);
    let cmp = compare_with_meters(&node, &samples, &by_name, &active)?;
    failures.extend(cmp.failures);
    eprintln!(
        "OpenMetrics samples: {}, Prometheus text lines: {}",
        parsed.len(),
        text.lines().count()
    );
    let log = agent.stop()?;
    if !failures.is_empty() {
        let tail: String = log
            .chars()
            .rev()
            .take(4000)
            .collect::<Vec<_>>()
            .into_iter()
            .rev()
            .collect();
        bail!("{}\nagent log (tail): {tail}", failures.join("\n"));
    }
    Ok(())
}

/// Every netcost counter series of pods (and the node) with its value.
fn counters(
    samples: &netcost_tests::agent::Samples,
) -> Vec<(String, netcost_tests::agent::Labels, f64)> {
    samples
        .series
        .iter()
        .filter(|(name, _)| {
            name.ends_with("_total")
                && (name.starts_with("netcost_network") || name.starts_with("kubecost_"))
        })
        .flat_map(|(name, v)| v.iter().map(move |(l, x)| (name.clone(), l.clone(), *x)))
        .collect()
}

/// A full, then read-only, state directory for several drains, then SIGKILL: the next agent
/// goes on from totals at least as high as anything ever scraped, and in the end every cell
/// equals the meters (the kernel kept what could not be checkpointed).
#[test]
fn a_failing_disk_never_takes_a_counter_back_nor_loses_a_byte() -> Result<()> {
    use netcost_tests::agent::AgentState;
    let _serial = serial();
    let node = SimNode::build(TRAFFIC.as_ref(), Offloads::Default)?;
    let state = AgentState::with_size("hostile-disk", "2m")?;
    let config = format!(
        "drain_interval_seconds: 0.5\n{}{}",
        netcost_tests::simnode::TOPOLOGY_YAML,
        state.yaml()
    )
    .replace("state:\n", "kubernetes:\n  enabled: false\nstate:\n");
    let mut seen: std::collections::BTreeMap<(String, netcost_tests::agent::Labels), f64> =
        Default::default();
    let remember = |s: &netcost_tests::agent::Samples,
                    seen: &mut std::collections::BTreeMap<_, f64>|
     -> Vec<String> {
        let mut back = Vec::new();
        for (name, labels, v) in counters(s) {
            let e = seen.entry((name.clone(), labels.clone())).or_insert(v);
            if v < *e {
                back.push(format!("{name}{labels:?} went back from {e} to {v}"));
            }
            *e = e.max(v);
        }
        back
    };
    let mut failures = Vec::new();
    let agent = Agent::start("hostile-disk", &config)?;
    run_plan(&node, &PLAN[0..4])?;
    failures.extend(remember(&agent.settled_metrics(DRAIN)?, &mut seen));
    // The disk fills up.
    let filler = state.dir.join("filler");
    let _ = std::process::Command::new("dd")
        .args([
            "if=/dev/zero",
            &format!("of={}", filler.display()),
            "bs=64k",
        ])
        .output();
    run_plan(&node, &PLAN[4..8])?;
    for _ in 0..6 {
        std::thread::sleep(DRAIN);
        failures.extend(remember(&agent.metrics()?, &mut seen));
    }
    let errors_full = agent
        .metrics()?
        .value("netcost_checkpoint_errors_total", &[])
        .unwrap_or(0.0);
    // Then it goes read-only.
    std::fs::remove_file(&filler)?;
    netcost_tests::run(&["mount", "-o", "remount,ro", &state.dir.to_string_lossy()])?;
    run_plan(&node, &PLAN[8..])?;
    for _ in 0..6 {
        std::thread::sleep(DRAIN);
        failures.extend(remember(&agent.metrics()?, &mut seen));
    }
    let errors_ro = agent
        .metrics()?
        .value("netcost_checkpoint_errors_total", &[])
        .unwrap_or(0.0);
    eprintln!("checkpoint errors: {errors_full} while full, {errors_ro} after read-only");
    ensure!(
        errors_full >= 3.0 && errors_ro > errors_full,
        "saves did not fail: {errors_full}, {errors_ro}"
    );
    agent.kill()?;
    netcost_tests::run(&["mount", "-o", "remount,rw", &state.dir.to_string_lossy()])?;
    let agent = Agent::start("hostile-disk-2", &config)?;
    failures.extend(remember(&agent.metrics()?, &mut seen));
    let samples = agent.settled_metrics(DRAIN)?;
    failures.extend(remember(&samples, &mut seen));
    let by_uid = |pod: &str| vec![("pod_uid".to_owned(), node.pod(pod).uid.clone())];
    let active = |pod: &str, class: &str| PLAN.iter().any(|(p, c, ..)| *p == pod && *c == class);
    let cmp = compare_with_meters(&node, &samples, &by_uid, &active)?;
    eprintln!("{}", cmp.report.join("\n"));
    failures.extend(cmp.failures);
    let log = agent.stop()?;
    if !failures.is_empty() {
        bail!("{}\nsecond agent's log: {log}", failures.join("\n"));
    }
    Ok(())
}

/// 400 connections that trickle a header byte every 2 s and 200 that ask for /metrics and never
/// read: the agent stays up, /healthz answers within 1 s throughout, memory grows little, drains
/// stay on schedule, and every slow connection is closed at its timeout.
#[test]
fn slow_and_stuck_clients_cannot_hold_the_agent() -> Result<()> {
    use std::{io::Write as _, net::TcpStream, time::Instant};
    let _serial = serial();
    let config = format!(
        // The server's defaults: 5 s for a request head, 15 s without progress.
        "drain_interval_seconds: 0.5\n{}kubernetes:\n  enabled: false\n",
        netcost_tests::simnode::TOPOLOGY_YAML
    );
    let mut agent = Agent::start("hostile-http", &config)?;
    let pid = agent.pid();
    let (rss_before, _) = agent.memory_kib()?;
    let drains = |a: &Agent| -> Result<f64> {
        Ok(a.metrics()?
            .value("netcost_drain_duration_seconds_count", &[])
            .unwrap_or(0.0))
    };
    let drains_before = drains(&agent)?;
    let sockets_before = sockets_of(pid);
    let started = Instant::now();
    let mut trickle: Vec<Option<TcpStream>> = Vec::new();
    for _ in 0..400 {
        let mut s = TcpStream::connect(("127.0.0.1", agent.port))?;
        s.write_all(b"GET /metrics HTTP/1.1\r\nHost: x\r\n")?;
        trickle.push(Some(s));
    }
    let mut stuck = Vec::new();
    for _ in 0..200 {
        let s = TcpStream::connect(("127.0.0.1", agent.port))?;
        netcost_tests::small_receive_buffer(&s, 2048);
        (&s).write_all(
            b"GET /metrics HTTP/1.1\r\nHost: x\r\nAccept: application/openmetrics-text\r\n\r\n",
        )?;
        stuck.push(s);
    }
    // The agent accepts on one runtime thread: give it a moment to take the last connections
    // of the burst before counting them.
    let mut opened = sockets_of(pid);
    let counting = Instant::now();
    while opened < sockets_before + 600 && counting.elapsed() < Duration::from_secs(3) {
        std::thread::sleep(Duration::from_millis(50));
        opened = opened.max(sockets_of(pid));
    }
    let mut worst = Duration::ZERO;
    let mut bad_probes = Vec::new();
    let mut peak_rss = rss_before;
    let mut closed_at: Option<Duration> = None;
    let mut last_trickle = Instant::now();
    while started.elapsed() < Duration::from_secs(40) {
        let t = Instant::now();
        match agent.get("/healthz") {
            Ok((200, _)) => {}
            other => bad_probes.push(format!("{:?}: {other:?}", started.elapsed())),
        }
        worst = worst.max(t.elapsed());
        peak_rss = peak_rss.max(agent.memory_kib()?.0);
        if last_trickle.elapsed() >= Duration::from_secs(2) {
            last_trickle = Instant::now();
            for slot in trickle.iter_mut() {
                if let Some(s) = slot {
                    if s.write_all(b"X").is_err() {
                        *slot = None;
                    }
                }
            }
        }
        if closed_at.is_none() && sockets_of(pid) <= sockets_before + 2 {
            closed_at = Some(started.elapsed());
        }
        std::thread::sleep(Duration::from_millis(250));
    }
    let drained = drains(&agent)? - drains_before;
    let (_, normal) = agent.get("/metrics")?;
    let rss_growth = peak_rss.saturating_sub(rss_before) as f64 / 1024.0;
    let refused_trickles = trickle.iter().filter(|s| s.is_none()).count();
    eprintln!(
        "healthz worst {worst:?}, {} bad; RSS {:.1} MiB → peak +{rss_growth:.1} MiB; sockets {sockets_before} → {opened} → {} (all slow ones closed after {closed_at:?}); drains {drained} in 40 s; trickling writers that saw the close: {refused_trickles}",
        bad_probes.len(),
        rss_before as f64 / 1024.0,
        sockets_of(pid),
    );
    let mut failures = bad_probes;
    if worst >= Duration::from_secs(1) {
        failures.push(format!("/healthz took {worst:?}"));
    }
    if rss_growth >= 16.0 {
        failures.push(format!("RSS grew by {rss_growth:.1} MiB"));
    }
    if drained < 0.9 * 40.0 / 0.5 {
        failures.push(format!("only {drained} drains in 40 s at 0.5 s"));
    }
    match closed_at {
        // Trickles at the 5 s header timeout, stuck readers at the 15 s idle timeout.
        Some(t) if t <= Duration::from_secs(15 + 5) => {}
        other => failures.push(format!(
            "slow connections still open: closed at {other:?}, {} sockets",
            sockets_of(pid)
        )),
    }
    if opened < sockets_before + 500 {
        failures.push(format!(
            "the connections were not all accepted: {opened} sockets"
        ));
    }
    if !normal.contains("netcost_build_info") {
        failures.push("a normal scrape after the attack failed".into());
    }
    drop(stuck);
    agent.stop()?;
    if !failures.is_empty() {
        bail!("{}", failures.join("\n"));
    }
    Ok(())
}

/// One pod sprays 100,000 remote addresses within one drain interval while the others run
/// their usual traffic: their cells stay exact and classified; the sprayer keeps every byte
/// (its own flows to its quota, the rest on its overflow entry, `unknown`).
#[test]
fn one_pod_spraying_addresses_cannot_push_the_others_out_of_their_class() -> Result<()> {
    let _serial = serial();
    let mut classes = netcost_tests::simnode::standard_classes();
    for (class, prefixes) in classes.iter_mut() {
        if *class == "internet" {
            prefixes.push("198.18.0.0/15".into());
        }
    }
    let node = SimNode::build_with(TRAFFIC.as_ref(), Offloads::Default, &[], &classes)?;
    // 198.18.0.0/15 (benchmarking addresses) routed to the internet host, which drops them.
    node.netns("router")?
        .ip("route add 198.18.0.0/15 via 203.0.113.10")?;
    // A quota above half the map, so that the sprayer alone fills the buffer past half and the
    // drain comes early (with the default quota of a quarter, one pod alone never does).
    let config = format!(
        "drain_interval_seconds: 5\nmaps: {{ flow_entries: 16384, overflow_entries: 1024, flows_per_owner: 12288 }}\n{}kubernetes:\n  enabled: false\n",
        netcost_tests::simnode::TOPOLOGY_YAML
    );
    let agent = Agent::start("hostile-spray", &config)?;
    let plan: Vec<_> = PLAN
        .iter()
        .filter(|(p, ..)| *p != "pod1")
        .copied()
        .collect();
    // pod1 sprays 100,000 new addresses again and again while the others run their plan, so
    // that every interval sees the flood.
    let done = std::sync::atomic::AtomicBool::new(false);
    let rounds = std::thread::scope(|s| -> Result<u32> {
        let spray = s.spawn(|| -> Result<u32> {
            let mut rounds = 0;
            while !done.load(std::sync::atomic::Ordering::SeqCst) || rounds < 2 {
                let t = std::time::Instant::now();
                node.transfer_to("pod1", "198.18.0.1:5001", &["spray", "100000", "18"])?;
                rounds += 1;
                eprintln!(
                    "spray round {rounds}: 100,000 addresses in {:?}",
                    t.elapsed()
                );
            }
            Ok(rounds)
        });
        std::thread::sleep(Duration::from_secs(1));
        let ran = run_plan(&node, &plan);
        done.store(true, std::sync::atomic::Ordering::SeqCst);
        ran?;
        spray
            .join()
            .map_err(|_| anyhow::anyhow!("spray panicked"))?
    })?;
    let samples = agent.settled_metrics(Duration::from_secs(5))?;
    let by_uid = |pod: &str| vec![("pod_uid".to_owned(), node.pod(pod).uid.clone())];
    // pod1's spray is internet-bound, metered on its own: its cells are checked below.
    let active = |pod: &str, class: &str| plan.iter().any(|(p, c, ..)| *p == pod && *c == class);
    let cmp = compare_with_meters(&node, &samples, &by_uid, &active)?;
    let mut failures: Vec<String> = cmp
        .failures
        .into_iter()
        .filter(|f| !f.starts_with("pod1 "))
        .collect();
    let pod1 = |class: &str| {
        samples
            .value(
                "netcost_network_bytes_total",
                &[
                    ("pod_uid", &node.pod("pod1").uid),
                    ("traffic_class", class),
                    ("direction", "egress"),
                ],
            )
            .unwrap_or(0.0)
    };
    let truth = node.pod("pod1").truth()?;
    let sprayed = truth[&("internet".to_owned(), "egress".to_owned())] as f64;
    let counted = pod1("internet") + pod1("unknown");
    let early = samples
        .value("netcost_early_drains_total", &[])
        .unwrap_or(0.0);
    eprintln!(
        "{}\npod1 sprayed {rounds} × 100,000 addresses, {sprayed} wire bytes: {} internet + {} unknown = {counted}; early drains {early}; lost {}",
        cmp.report.join("\n"),
        pod1("internet"),
        pod1("unknown"),
        samples.sum("netcost_lost_bytes_total", &[])
    );
    if (counted - sprayed).abs() > 0.0 {
        failures.push(format!(
            "pod1 sprayed {sprayed} bytes, netcost counted {counted}"
        ));
    }
    if early == 0.0 {
        failures.push("no early drain while the buffer was more than half full".into());
    }
    if pod1("unknown") == 0.0 {
        failures.push("pod1 never went over its quota: the spray did not test anything".into());
    }
    for pod in ["pod2", "hostpod"] {
        for dir in ["egress", "ingress"] {
            let unknown = samples
                .value(
                    "netcost_network_bytes_total",
                    &[
                        ("pod_uid", &node.pod(pod).uid),
                        ("traffic_class", "unknown"),
                        ("direction", dir),
                    ],
                )
                .unwrap_or(-1.0);
            if unknown != 0.0 {
                failures.push(format!("{pod} {dir}: {unknown} bytes lost their class"));
            }
        }
    }
    agent.stop()?;
    if !failures.is_empty() {
        bail!("{}", failures.join("\n"));
    }
    Ok(())
}
