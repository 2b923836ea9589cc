//! The agent's memory and API traffic with a node of 250 pods in a cluster of 1,000 nodes, from
//! the Kubernetes API double, through rounds of pod churn and node updates — first without
//! EndpointSlices, then with 20,000 endpoints (2,000 Services of 10 pods spread over the nodes),
//! a quarter of them replaced in every round, and the same with destinations off (what naming
//! remote ends costs: the index of every endpoint's address). Run by `cargo xtask bench` (root: the agent
//! attaches its programs); prints Markdown tables.

use std::{sync::Arc, time::Duration};

use anyhow::{bail, Result};
use netcost_tests::{
    agent::Agent,
    apiserver::{
        endpointslice_json, node_json, pod_json, replicaset_json, ApiServer, ApiState, EndpointSpec,
    },
};
use serde_json::json;

const NODE: &str = "ip-10-0-0-1.ec2.internal";
const NODES: usize = 1000;
const PODS: usize = 250;
const OTHER_PODS: usize = 2000;
const DEPLOYMENTS: usize = 50;
const SERVICES: usize = 2000;
const ENDPOINTS_PER_SERVICE: usize = 10;

fn node_name(i: usize) -> String {
    if i == 0 {
        NODE.to_owned()
    } else {
        format!("ip-10-{}-{}-1.ec2.internal", i / 250, i % 250)
    }
}

/// Service `s`'s slice in `generation`: its 10 endpoints on nodes spread over the cluster, each
/// with its node and zone, addresses from those nodes' pod ranges.
fn slice(s: usize, generation: usize) -> serde_json::Value {
    let addrs: Vec<String> = (0..ENDPOINTS_PER_SERVICE)
        .map(|k| {
            let n = (s * 7 + k * 131 + generation) % NODES;
            format!(
                "100.{}.{}.{}",
                64 + n / 250,
                n % 250,
                10 + (s + k + generation) % 240
            )
        })
        .collect();
    let nodes: Vec<String> = (0..ENDPOINTS_PER_SERVICE)
        .map(|k| node_name((s * 7 + k * 131 + generation) % NODES))
        .collect();
    let pods: Vec<String> = (0..ENDPOINTS_PER_SERVICE)
        .map(|k| format!("svc{s}-{generation:x}-{k}"))
        .collect();
    let addr_refs: Vec<[&str; 1]> = addrs.iter().map(|a| [a.as_str()]).collect();
    let specs: Vec<EndpointSpec> = (0..ENDPOINTS_PER_SERVICE)
        .map(|k| EndpointSpec {
            addresses: &addr_refs[k],
            node: Some(&nodes[k]),
            zone: Some(zone((s * 7 + k * 131 + generation) % NODES).0),
            pod: Some(&pods[k]),
        })
        .collect();
    endpointslice_json(
        &format!("team-{}", s % 25),
        &format!("svc-{s}-abcde"),
        Some(&format!("svc-{s}")),
        "IPv4",
        &specs,
    )
}

fn zone(i: usize) -> (&'static str, &'static str) {
    [
        ("us-east-1a", "use1-az1"),
        ("us-east-1b", "use1-az2"),
        ("us-east-1c", "use1-az4"),
    ][i % 3]
}

fn add_nodes(state: &ApiState, generation: usize) {
    for i in 0..NODES {
        let name = node_name(i);
        let (z, id) = zone(i);
        let ip = format!("10.{}.{}.1", i / 250, i % 250);
        let cidr = format!("100.{}.{}.0/24", 64 + i / 250, i % 250);
        let mut node = node_json(&name, z, "us-east-1", id, &ip, &[&cidr]);
        // What makes real Node objects big: the image list (and a heartbeat-like change).
        node["status"]["images"] = (0..50)
            .map(|k| json!({"names": [format!("registry.example/team-{k}/service@sha256:{:064x}", k * 7919 + i)], "sizeBytes": 50_000_000 + k}))
            .collect();
        node["metadata"]["annotations"] = json!({"bench/generation": generation.to_string()});
        state.apply("/api/v1", "nodes", node);
    }
}

fn our_pod(round: usize, i: usize) -> serde_json::Value {
    let d = i % DEPLOYMENTS;
    let name = format!("svc-{d}-5f7c9-r{round}p{i}");
    let uid = format!("{:08x}-0000-4000-8000-{:012x}", round, i);
    let ip = format!("100.64.{}.{}", i / 200, i % 200 + 2);
    let mut p = pod_json(
        &format!("team-{}", d % 25),
        &name,
        &uid,
        NODE,
        &[&ip],
        Some(("ReplicaSet", &format!("svc-{d}-5f7c9"))),
        false,
    );
    p["metadata"]["labels"]["pod-template-hash"] = "5f7c9".into();
    p
}

fn wait_until(
    agent: &Agent,
    what: &str,
    mut ok: impl FnMut(&netcost_tests::agent::Samples) -> bool,
) -> Result<()> {
    for _ in 0..600 {
        if let Ok(s) = agent.metrics() {
            if ok(&s) {
                return Ok(());
            }
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    bail!("timed out waiting for {what}")
}

fn main() -> Result<()> {
    let rounds: usize = std::env::var("NETCOST_BENCH_ROUNDS")
        .ok()
        .and_then(|r| r.parse().ok())
        .unwrap_or(3);
    println!("\n### Without EndpointSlices (kubernetes.watch_endpointslices: false)");
    let mut runs = vec![run(rounds, false, true)?];
    println!(
        "\n### With {} endpoints in {SERVICES} EndpointSlices",
        SERVICES * ENDPOINTS_PER_SERVICE
    );
    runs.push(run(rounds, true, true)?);
    println!(
        "\n### With {} endpoints, destinations off (destinations.enabled: false: no remote-end names)",
        SERVICES * ENDPOINTS_PER_SERVICE
    );
    runs.push(run(rounds, true, false)?);
    netcost_tests::bench_json(
        "kube",
        &json!({ "pods": PODS, "nodes": NODES, "runs": runs }),
    )
}

/// One run: its phases (RSS, peak RSS, series) and the API requests, also as JSON.
fn run(rounds: usize, with_slices: bool, destinations: bool) -> Result<serde_json::Value> {
    let state = Arc::new(ApiState::new());
    add_nodes(&state, 0);
    for d in 0..DEPLOYMENTS {
        state.apply(
            "/apis/apps/v1",
            "replicasets",
            replicaset_json(
                &format!("team-{}", d % 25),
                &format!("svc-{d}-5f7c9"),
                &format!("svc-{d}"),
            ),
        );
    }
    for i in 0..OTHER_PODS {
        let node = format!(
            "ip-10-{}-{}-1.ec2.internal",
            (i % (NODES - 1) + 1) / 250,
            (i % (NODES - 1) + 1) % 250
        );
        state.apply(
            "/api/v1",
            "pods",
            pod_json(
                "elsewhere",
                &format!("other-{i}"),
                "",
                &node,
                &[&format!("100.65.{}.{}", i / 200, i % 200 + 2)],
                None,
                false,
            ),
        );
    }
    for i in 0..PODS {
        state.apply("/api/v1", "pods", our_pod(0, i));
    }
    if with_slices {
        for s in 0..SERVICES {
            state.apply("/apis/discovery.k8s.io/v1", "endpointslices", slice(s, 0));
        }
    }
    let api = ApiServer::start(state.clone())?;
    let config = format!(
        "drain_interval_seconds: 1\nseries_grace_seconds: 1\ndestinations: {{ enabled: {destinations} }}\nkubernetes:\n  enabled: true\n  api_server: \"{}\"\n  node_name: {NODE}\n  watch_endpointslices: {with_slices}\n",
        api.url()
    );
    let want_slices = if with_slices { SERVICES } else { 0 };
    let mut agent = Agent::start("kube-bench", &config)?;
    let settled = |want_nodes: usize| {
        move |s: &netcost_tests::agent::Samples| {
            s.value("netcost_kubernetes_objects", &[("resource", "pods")]) == Some(PODS as f64)
                && s.value("netcost_kubernetes_objects", &[("resource", "nodes")])
                    == Some(want_nodes as f64)
                && s.value("netcost_pods_with_series", &[]) == Some(PODS as f64)
                && (want_slices == 0
                    || s.value(
                        "netcost_kubernetes_objects",
                        &[("resource", "endpointslices")],
                    ) == Some(want_slices as f64))
        }
    };
    wait_until(&agent, "the first sync", settled(NODES))?;
    std::thread::sleep(Duration::from_secs(2));
    println!("\n| phase | pods on this node | nodes | endpoints | pods with series | series exposed | RSS | peak RSS |");
    println!("|---|---|---|---|---|---|---|---|");
    let endpoints = want_slices * ENDPOINTS_PER_SERVICE;
    let mut phases = Vec::new();
    let mut report = |agent: &mut Agent, phase: &str| -> Result<()> {
        let (rss, hwm) = agent.memory_kib()?;
        let (_, body) = agent.get("/metrics")?;
        let series = body
            .lines()
            .filter(|l| !l.starts_with('#') && !l.is_empty())
            .count();
        // The addresses the agent placed from the slices, as it says, beside what the double
        // serves: the endpoints are counted where they land, not only the slices.
        let placed = netcost_tests::agent::Samples::parse(&body)
            .value("netcost_topology_prefixes", &[("source", "endpointslices")])
            .unwrap_or(0.0);
        println!(
            "| {phase} | {PODS} | {NODES} | {endpoints} ({placed} addresses placed) | {PODS} | {series} | {:.1} MiB | {:.1} MiB |",
            rss as f64 / 1024.0,
            hwm as f64 / 1024.0
        );
        phases.push(json!({
            "phase": phase,
            "series": series,
            "endpoint_addresses_placed": placed,
            "rss_mib": rss as f64 / 1024.0,
            "peak_rss_mib": hwm as f64 / 1024.0,
        }));
        Ok(())
    };
    report(&mut agent, "synced")?;
    for round in 1..=rounds {
        for i in 0..PODS {
            let old = our_pod(round - 1, i);
            state.delete(
                "/api/v1",
                "pods",
                old["metadata"]["namespace"].as_str().unwrap_or_default(),
                old["metadata"]["name"].as_str().unwrap_or_default(),
            );
            state.apply("/api/v1", "pods", our_pod(round, i));
        }
        add_nodes(&state, round);
        if with_slices {
            // A quarter of the Services roll: their slices get new endpoints.
            for s in (0..SERVICES).filter(|s| (s + round) % 4 == 0) {
                state.apply(
                    "/apis/discovery.k8s.io/v1",
                    "endpointslices",
                    slice(s, round),
                );
            }
        }
        wait_until(&agent, "churn to settle", settled(NODES))?;
        std::thread::sleep(Duration::from_secs(2));
        let slices = if with_slices {
            ", 500 Services' endpoints replaced"
        } else {
            ""
        };
        report(
            &mut agent,
            &format!("after churn round {round} (250 pods replaced, 1,000 nodes updated{slices})"),
        )?;
    }
    let requests = state.requests();
    let count = |f: &dyn Fn(&netcost_tests::apiserver::RequestRecord) -> bool| {
        requests.iter().filter(|r| f(r)).count()
    };
    println!("\n| API requests by the agent over the whole run | count |\n|---|---|");
    println!(
        "| pod lists (fieldSelector spec.nodeName) | {} |",
        count(&|r| r.path.ends_with("/pods") && !r.watch)
    );
    println!(
        "| pod watches | {} |",
        count(&|r| r.path.ends_with("/pods") && r.watch)
    );
    println!(
        "| node lists | {} |",
        count(&|r| r.path.ends_with("/nodes") && !r.watch)
    );
    println!(
        "| node watches | {} |",
        count(&|r| r.path.ends_with("/nodes") && r.watch)
    );
    println!(
        "| EndpointSlice lists | {} |",
        count(&|r| r.path.ends_with("/endpointslices") && !r.watch)
    );
    println!(
        "| EndpointSlice watches | {} |",
        count(&|r| r.path.ends_with("/endpointslices") && r.watch)
    );
    println!(
        "| ReplicaSet GETs ({DEPLOYMENTS} owners, {} pods seen) | {} |",
        PODS * (rounds + 1),
        count(&|r| r.path.contains("/replicasets/"))
    );
    agent.stop()?;
    let requests = json!({
        "pod_lists": count(&|r| r.path.ends_with("/pods") && !r.watch),
        "pod_watches": count(&|r| r.path.ends_with("/pods") && r.watch),
        "node_lists": count(&|r| r.path.ends_with("/nodes") && !r.watch),
        "node_watches": count(&|r| r.path.ends_with("/nodes") && r.watch),
        "endpointslice_lists": count(&|r| r.path.ends_with("/endpointslices") && !r.watch),
        "endpointslice_watches": count(&|r| r.path.ends_with("/endpointslices") && r.watch),
        "replicaset_gets": count(&|r| r.path.contains("/replicasets/")),
    });
    Ok(json!({
        "endpoints": endpoints,
        "destinations": destinations,
        "phases": phases,
        "api_requests": requests,
    }))
}
