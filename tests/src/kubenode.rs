//! The simulated node as a Kubernetes API double knows it: its Node and the other nodes (three
//! zones of us-east-1 and one node in eu-west-1), its pods with their owners, and a pod of
//! another node that the agent must never show.

use serde_json::{json, Value};

use crate::{
    apiserver::{job_json, node_json, pod_json, replicaset_json, ApiState},
    simnode::SimNode,
};

/// This node's name in the API.
pub const NODE: &str = "ip-10-0-0-1.ec2.internal";

pub fn config(api: &str, extra: &str) -> String {
    format!(
        "drain_interval_seconds: 0.5\n{extra}kubernetes:\n  enabled: true\n  api_server: \"{api}\"\n  node_name: {NODE}\n"
    )
}

/// A Node with an IPv4 and IPv6 InternalIP, and an image list like real Nodes carry (tens of
/// KB that the agent must not keep).
pub fn dual_stack_node(
    name: &str,
    zone: &str,
    zone_id: &str,
    region: &str,
    ips: [&str; 2],
    cidrs: [&str; 2],
) -> Value {
    let mut node = node_json(name, zone, region, zone_id, ips[0], &cidrs);
    if let Some(addresses) = node["status"]["addresses"].as_array_mut() {
        addresses.push(json!({"type": "InternalIP", "address": ips[1]}));
    }
    node["status"]["images"] = (0..50)
        .map(|i| json!({"names": [format!("registry.example/img-{i}@sha256:{i:064}")], "sizeBytes": 1000 + i}))
        .collect();
    node
}

/// `pod` with an extra label (the Deployment's `pod-template-hash`, a Job's `job-name`) and a
/// container status with a runtime id, as a running pod has.
pub fn with_container(mut pod: Value, label: Option<(&str, &str)>) -> Value {
    if let Some((k, v)) = label {
        pod["metadata"]["labels"][k] = v.into();
    }
    pod["status"]["containerStatuses"] = json!([{"name": "main", "ready": true, "restartCount": 0,
        "image": "registry.example/app:1", "imageID": "", "containerID": "containerd://c0ffee", "started": true}]);
    pod
}

/// The pods of the simulated node as the API knows them: (pod name in SimNode, namespace, API
/// name, workload kind, workload).
pub const NAMES: [(&str, &str, &str, &str, &str); 3] = [
    ("pod1", "shop", "cart-7d9f8c-x2x4p", "Deployment", "cart"),
    (
        "pod2",
        "reports",
        "report-28912345-q7hzm",
        "CronJob",
        "report",
    ),
    (
        "hostpod",
        "kube-system",
        "node-exporter-8kq2d",
        "DaemonSet",
        "node-exporter",
    ),
];

pub fn names(pod: &str) -> (&'static str, &'static str, &'static str, &'static str) {
    let (_, ns, name, kind, workload) = NAMES
        .iter()
        .find(|n| n.0 == pod)
        .expect("pod without API name");
    (ns, name, kind, workload)
}

/// Nodes in three zones of us-east-1 and one in eu-west-1, the node's pods, their owners, and
/// a pod on another node that must never show up here.
pub fn cluster(node: &SimNode, state: &ApiState, with: &[&str]) {
    for n in [
        dual_stack_node(
            NODE,
            "us-east-1a",
            "use1-az1",
            "us-east-1",
            ["10.0.0.1", "fd00::1"],
            ["10.0.1.0/24", "fd00:0:1::/64"],
        ),
        // Another AWS account's name for our zone: the zone ID says it is the same place.
        dual_stack_node(
            "ip-10-0-2-10.ec2.internal",
            "us-east-1c",
            "use1-az1",
            "us-east-1",
            ["10.0.2.10", "fd00:0:2::10"],
            ["10.0.2.0/24", "fd00:0:2::/64"],
        ),
        dual_stack_node(
            "ip-10-0-16-10.ec2.internal",
            "us-east-1b",
            "use1-az2",
            "us-east-1",
            ["10.0.16.10", "fd00:0:16::10"],
            ["10.0.16.0/24", "fd00:0:16::/64"],
        ),
        dual_stack_node(
            "ip-10-1-0-10.eu-west-1.compute.internal",
            "eu-west-1a",
            "euw1-az1",
            "eu-west-1",
            ["10.1.0.10", "fd00:1:0::10"],
            ["10.1.0.0/24", "fd00:1:0::/64"],
        ),
    ] {
        state.apply("/api/v1", "nodes", n);
    }
    owners(state);
    state.apply(
        "/api/v1",
        "pods",
        with_container(
            pod_json(
                "shop",
                "cart-7d9f8c-remote",
                "99999999-0000-4000-8000-000000000001",
                "ip-10-0-16-10.ec2.internal",
                &["10.0.16.77"],
                Some(("ReplicaSet", "cart-7d9f8c")),
                false,
            ),
            Some(("pod-template-hash", "7d9f8c")),
        ),
    );
    for pod in with {
        add_pod(node, state, pod);
    }
}

/// The ReplicaSet and Job that own this node's pods (they name the Deployment and CronJob).
pub fn owners(state: &ApiState) {
    state.apply(
        "/apis/apps/v1",
        "replicasets",
        replicaset_json("shop", "cart-7d9f8c", "cart"),
    );
    state.apply(
        "/apis/batch/v1",
        "jobs",
        job_json("reports", "report-28912345", "report"),
    );
}

pub fn add_pod(node: &SimNode, state: &ApiState, name: &str) {
    let (ns, api_name, ..) = names(name);
    let uid = node.pod(name).uid.clone();
    let object = match name {
        "pod1" => with_container(
            pod_json(
                ns,
                api_name,
                &uid,
                NODE,
                &["10.0.1.11", "fd00:0:1::11"],
                Some(("ReplicaSet", "cart-7d9f8c")),
                false,
            ),
            Some(("pod-template-hash", "7d9f8c")),
        ),
        "pod2" => with_container(
            pod_json(
                ns,
                api_name,
                &uid,
                NODE,
                &["10.0.1.12", "fd00:0:1::12"],
                Some(("Job", "report-28912345")),
                false,
            ),
            Some(("job-name", "report-28912345")),
        ),
        _ => with_container(
            pod_json(
                ns,
                api_name,
                &uid,
                NODE,
                &["10.0.0.1", "fd00::1"],
                Some(("DaemonSet", "node-exporter")),
                true,
            ),
            None,
        ),
    };
    state.apply("/api/v1", "pods", object);
}
