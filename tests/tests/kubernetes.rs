//! Root tests: the simulated node with its pods, nodes and zones coming from a local double of
//! the Kubernetes API (real list/watch: resourceVersion, bookmarks, watch timeouts, 410 Gone),
//! read by the agent's production client path. No CIDR file: every zone comes from Node objects.

use std::{
    sync::Arc,
    time::{Duration, Instant},
};

use anyhow::{bail, ensure, Context, Result};
use netcost_tests::{
    agent::{Agent, Samples},
    apiserver::{pod_json, ApiServer, ApiState, ServerOptions},
    kubenode::{add_pod, cluster, config, names, with_container, NODE},
    serial,
    simnode::{Family, Offloads, SimNode},
    truth::{compare_with_meters, run_plan, Transfer, PLAN, TOLERANCE},
};

const DRAIN: Duration = Duration::from_millis(500);
const TRAFFIC: &str = env!("CARGO_BIN_EXE_nct-traffic");
fn by_name(pod: &str) -> Vec<(String, String)> {
    let (ns, name, kind, workload) = names(pod);
    vec![
        ("namespace".into(), ns.into()),
        ("pod".into(), name.into()),
        ("workload_kind".into(), kind.into()),
        ("workload".into(), workload.into()),
    ]
}

fn check(node: &SimNode, samples: &Samples, plan: &[Transfer], agent: Agent) -> Result<()> {
    let active = |pod: &str, class: &str| plan.iter().any(|(p, c, ..)| *p == pod && *c == class);
    let c = compare_with_meters(node, samples, &by_name, &active)?;
    eprintln!("{}", c.report.join("\n"));
    let held = samples.value("netcost_held_bytes", &[]).unwrap_or(-1.0);
    let expired = samples
        .value("netcost_hold_expired_bytes_total", &[])
        .unwrap_or(-1.0);
    let mut failures = c.failures;
    if held != 0.0 || expired != 0.0 {
        failures.push(format!(
            "held {held}, hold expired {expired}: some bytes were not attributed"
        ));
    }
    // Nothing without names: every pod byte carries a namespace.
    for (labels, v) in samples
        .series
        .get("netcost_network_bytes_total")
        .into_iter()
        .flatten()
    {
        if labels.get("owner").map(String::as_str) == Some("pod")
            && !labels.contains_key("namespace")
            && *v > 0.0
        {
            failures.push(format!(
                "{v} bytes on a pod series without names: {labels:?}"
            ));
        }
    }
    let log = agent.stop()?;
    if !failures.is_empty() {
        bail!("{}\nagent log:\n{log}", failures.join("\n"));
    }
    Ok(())
}

fn wait_for(what: &str, timeout: Duration, mut f: impl FnMut() -> bool) -> Result<()> {
    let deadline = Instant::now() + timeout;
    while !f() {
        if Instant::now() > deadline {
            bail!("timed out after {timeout:?} waiting for {what}");
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    Ok(())
}

fn readyz(agent: &Agent) -> u16 {
    agent.get("/readyz").map(|(c, _)| c).unwrap_or(0)
}

#[test]
fn pods_nodes_and_zones_come_from_the_api() -> Result<()> {
    let _serial = serial();
    let node = SimNode::build(TRAFFIC.as_ref(), Offloads::Default)?;
    let state = Arc::new(ApiState::new());
    cluster(&node, &state, &["pod1", "pod2", "hostpod"]);
    let api = ApiServer::start(state.clone())?;
    let agent = Agent::start("kube-names", &config(&api.url(), ""))?;
    run_plan(&node, PLAN)?;
    let samples = agent.settled_metrics(DRAIN)?;
    let (_, body) = agent.get("/metrics")?;
    eprintln!("--- /metrics excerpt ---");
    for line in body.lines().filter(|l| {
        l.starts_with("netcost_network_bytes_total{")
            && l.contains("namespace=")
            && !l.ends_with(" 0")
    }) {
        eprintln!("{line}");
    }
    ensure!(
        !body.contains("cart-7d9f8c-remote"),
        "a pod of another node showed up"
    );
    // Pods were only ever listed and watched for this node.
    for r in state.requests() {
        if r.path.ends_with("/pods") {
            ensure!(
                r.query
                    .contains(&format!("fieldSelector=spec.nodeName%3D{NODE}"))
                    || r.query
                        .contains(&format!("fieldSelector=spec.nodeName={NODE}")),
                "pods requested without this node's field selector: {} {}",
                r.path,
                r.query
            );
        }
    }
    netcost_tests::rbac::assert_within(&state, &netcost_tests::rbac::granted_by_file()?)?;
    check(&node, &samples, PLAN, agent)
}

/// The API is down when the agent starts, comes up, goes down again in the middle of a
/// transfer and comes back with its watch history gone (410 Gone → relist). A pod the API only
/// learns about after the outage sends before and during it. Every byte still reaches the right
/// pod and class.
#[test]
fn an_api_outage_loses_and_misattributes_nothing() -> Result<()> {
    let _serial = serial();
    let node = SimNode::build(TRAFFIC.as_ref(), Offloads::Default)?;
    let state = Arc::new(ApiState::new());
    cluster(&node, &state, &["pod1", "hostpod"]);
    let port = std::net::TcpListener::bind("127.0.0.1:0")?
        .local_addr()?
        .port();
    let url = format!("http://127.0.0.1:{port}");
    let agent = Agent::start_unready("kube-outage", &config(&url, ""))?;
    ensure!(readyz(&agent) == 503, "ready without an API");

    // 1. API down since start: bytes are held.
    run_plan(&node, &PLAN[0..1])?;
    wait_for("held bytes", Duration::from_secs(10), || {
        agent
            .metrics()
            .ok()
            .and_then(|s| s.value("netcost_held_bytes", &[]))
            .unwrap_or(0.0)
            > 0.0
    })?;
    // 2. API up: synced, held bytes attributed.
    let options = ServerOptions {
        max_watch: Duration::from_secs(5),
        ..ServerOptions::default()
    };
    let api = ApiServer::start_on(state.clone(), port, options.clone())?;
    wait_for(
        "/readyz 200 after the API came up",
        Duration::from_secs(60),
        || readyz(&agent) == 200,
    )?;
    // 3. A pod the API does not know yet sends; the API goes away in the middle of a transfer.
    run_plan(&node, &PLAN[4..6])?;
    let during = std::thread::scope(|s| -> Result<()> {
        let t = s.spawn(|| run_plan(&node, &PLAN[2..3]));
        std::thread::sleep(Duration::from_millis(100));
        api.stop();
        t.join()
            .map_err(|_| anyhow::anyhow!("transfer thread panicked"))?
    });
    during?;
    run_plan(&node, &PLAN[6..])?;
    run_plan(&node, &PLAN[1..2])?;
    run_plan(&node, &PLAN[3..4])?;
    wait_for(
        "/readyz 503 while the API is down",
        Duration::from_secs(30),
        || readyz(&agent) == 503,
    )?;
    // 4. The API comes back with the new pod and without its old watch history.
    add_pod(&node, &state, "pod2");
    state.compact();
    let _api = ApiServer::start_on(state.clone(), port, options)?;
    wait_for(
        "/readyz 200 after the outage",
        Duration::from_secs(90),
        || readyz(&agent) == 200,
    )?;
    let samples = agent.settled_metrics(DRAIN)?;
    let relists = state
        .requests()
        .iter()
        .filter(|r| r.path.ends_with("/pods") && !r.watch)
        .count();
    eprintln!("pod lists (initial + relists): {relists}");
    ensure!(relists >= 2, "no relist after the history was compacted");
    check(&node, &samples, PLAN, agent)
}

/// A deleted pod's series keep their final value for the grace period, then disappear; a new pod
/// that gets the same IP (and its own cgroup) in the same network namespace gets its own bytes.
#[test]
fn deleted_pods_linger_for_the_grace_period_and_reused_ips_count_for_the_new_pod() -> Result<()> {
    let _serial = serial();
    let mut node = SimNode::build(TRAFFIC.as_ref(), Offloads::Default)?;
    let state = Arc::new(ApiState::new());
    cluster(&node, &state, &["pod1", "pod2", "hostpod"]);
    let api = ApiServer::start(state.clone())?;
    let grace = Duration::from_secs(6);
    let agent = Agent::start(
        "kube-grace",
        &config(&api.url(), "series_grace_seconds: 6\n"),
    )?;
    let old = [
        ("namespace", "shop"),
        ("pod", "cart-7d9f8c-x2x4p"),
        ("traffic_class", "internet"),
        ("direction", "egress"),
    ];
    node.transfer("pod1", "internet", Family::V4, &["send", "2000000"])?;
    let before = agent.settled_metrics(DRAIN)?;
    let old_bytes = before
        .value("netcost_network_bytes_total", &old)
        .context("old pod series")?;
    let truth_before =
        node.pod("pod1").truth()?[&("internet".to_owned(), "egress".to_owned())] as f64;
    ensure!(
        (old_bytes - truth_before).abs() <= truth_before * TOLERANCE,
        "old pod {old_bytes} vs truth {truth_before}"
    );

    // The pod is deleted: from the API, and its cgroup goes away.
    state.delete("/api/v1", "pods", "shop", "cart-7d9f8c-x2x4p");
    let old_cgroup = node.pod("pod1").cgroup.clone();
    node.cgroups.remove(&old_cgroup)?;
    let deleted_at = Instant::now();
    // Its replacement: same IP, same network namespace, a new UID and cgroup.
    let new_uid = "1e57c0de-0000-4000-8000-0000000000aa";
    let new_cgroup = node
        .cgroups
        .create(&format!("kubepods/besteffort/pod{new_uid}/c0ffeeaa"))?;
    {
        let pod = node
            .pods
            .iter_mut()
            .find(|p| p.name == "pod1")
            .context("pod1")?;
        pod.uid = new_uid.to_owned();
        pod.cgroup = new_cgroup;
    }
    state.apply(
        "/api/v1",
        "pods",
        with_container(
            pod_json(
                "shop",
                "cart-7d9f8c-n3wpd",
                new_uid,
                NODE,
                &["10.0.1.11", "fd00:0:1::11"],
                Some(("ReplicaSet", "cart-7d9f8c")),
                false,
            ),
            Some(("pod-template-hash", "7d9f8c")),
        ),
    );
    node.transfer("pod1", "internet", Family::V4, &["send", "3000000"])?;
    std::thread::sleep(DRAIN * 4);
    let during = agent.metrics()?;
    ensure!(
        deleted_at.elapsed() < grace,
        "test too slow to observe the grace period"
    );
    let truth_after =
        node.pod("pod1").truth()?[&("internet".to_owned(), "egress".to_owned())] as f64;
    let new_truth = truth_after - truth_before;
    let new = [
        ("namespace", "shop"),
        ("pod", "cart-7d9f8c-n3wpd"),
        ("workload", "cart"),
        ("traffic_class", "internet"),
        ("direction", "egress"),
    ];
    let old_during = during.value("netcost_network_bytes_total", &old);
    let new_during = during
        .value("netcost_network_bytes_total", &new)
        .unwrap_or(0.0);
    eprintln!("within grace: old pod {old_during:?} (final {old_bytes}), new pod {new_during} (truth {new_truth})");
    ensure!(
        old_during == Some(old_bytes),
        "old pod's series changed or vanished within the grace period: {old_during:?}"
    );
    ensure!(
        (new_during - new_truth).abs() <= new_truth * TOLERANCE,
        "new pod {new_during} vs truth {new_truth}"
    );

    std::thread::sleep(grace.saturating_sub(deleted_at.elapsed()) + DRAIN * 4);
    let after = agent.metrics()?;
    let (_, body) = agent.get("/metrics")?;
    ensure!(
        !body.contains("cart-7d9f8c-x2x4p"),
        "old pod's series outlived the grace period"
    );
    ensure!(
        after.value("netcost_network_bytes_total", &new) == Some(new_during),
        "new pod's series changed"
    );
    agent.stop()?;
    Ok(())
}
