//! Root test: the simulated node in the shape of EKS's default network (the AWS VPC CNI):
//! Nodes carry no pod CIDR, pods take addresses from their node's subnets, two subnets per zone,
//! an RDS-like host in another zone's subnet, a peered VPC. Three ways to run it:
//! (a) EndpointSlices alone place Service backends;
//! (b) with instance metadata and EC2 subnets (IRSA credentials, the AWS double) every VPC
//!     address is placed;
//! (c) with neither, the bytes stay `unplaced` — never guessed — and the start-up log says why.
//! Every pod × class × direction cell must equal the meters in each.

use std::{sync::Arc, time::Duration};

use anyhow::{bail, ensure, Result};
use netcost_tests::{
    agent::Agent,
    apiserver::{endpointslice_json, node_json, ApiServer, ApiState, EndpointSpec},
    awsapi::{eks_vpc, AwsDouble, EKS_VPC as VPC},
    kubenode::{add_pod, names, owners, NODE},
    serial,
    simnode::{Classes, Offloads, SimNode},
    truth::compare_classes,
};

const DRAIN: Duration = Duration::from_millis(500);
const TRAFFIC: &str = env!("CARGO_BIN_EXE_nct-traffic");
const ROLE: &str = "arn:aws:iam::111122223333:role/netcost-agent";

/// Where each destination is, and what it is.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Dest {
    /// A pod behind a Service on another node of our zone (IPv4 and IPv6).
    SameZoneService,
    /// A pod behind no Service in our zone.
    SameZonePod,
    /// A pod behind a Service in another zone (IPv4 and IPv6).
    CrossZoneService,
    /// A pod behind no Service in another zone.
    CrossZonePod,
    /// An AWS-managed host (RDS-like) in another zone's second subnet.
    CrossZoneRds,
    /// A host in a peered VPC: no source places it.
    Peered,
    CrossRegionNode,
    Internet,
}

const DESTS: [(Dest, &[&str]); 8] = [
    (Dest::SameZoneService, &["10.0.2.10/32", "fd00:0:2::10/128"]),
    (Dest::SameZonePod, &["10.0.3.20/32"]),
    (
        Dest::CrossZoneService,
        &["10.0.16.10/32", "fd00:0:16::10/128"],
    ),
    (Dest::CrossZonePod, &["10.0.17.20/32"]),
    (Dest::CrossZoneRds, &["10.0.48.30/32"]),
    (Dest::Peered, &["172.31.5.10/32"]),
    (Dest::CrossRegionNode, &["10.1.0.0/24", "fd00:1:0::/64"]),
    (Dest::Internet, &["203.0.113.0/24", "2001:db8:113::/64"]),
];

/// Addresses added on the remote hosts.
const EXTRA: [(&str, &str); 4] = [
    ("rsz", "10.0.3.20"),
    ("rxz", "10.0.17.20"),
    ("rxz", "10.0.48.30"),
    ("rin", "172.31.5.10"),
];

const PLAN: &[(&str, &str, Dest, &[&str])] = &[
    (
        "pod1",
        "10.0.2.10:5001",
        Dest::SameZoneService,
        &["send", "3000000"],
    ),
    (
        "pod1",
        "[fd00:0:2::10]:5001",
        Dest::SameZoneService,
        &["recv", "1000000"],
    ),
    (
        "pod1",
        "10.0.3.20:5001",
        Dest::SameZonePod,
        &["send", "2000000"],
    ),
    (
        "pod1",
        "10.0.48.30:5001",
        Dest::CrossZoneRds,
        &["recv", "2000000"],
    ),
    (
        "pod2",
        "10.0.16.10:5001",
        Dest::CrossZoneService,
        &["send", "3000000"],
    ),
    (
        "pod2",
        "10.0.17.20:5001",
        Dest::CrossZonePod,
        &["recv", "2000000"],
    ),
    (
        "pod2",
        "[fd00:0:16::10]:5001",
        Dest::CrossZoneService,
        &["udp", "800", "1000"],
    ),
    (
        "pod2",
        "172.31.5.10:5001",
        Dest::Peered,
        &["send", "1000000"],
    ),
    (
        "hostpod",
        "10.1.0.10:5001",
        Dest::CrossRegionNode,
        &["send", "1000000"],
    ),
    (
        "hostpod",
        "203.0.113.10:5001",
        Dest::Internet,
        &["udp", "500", "1200"],
    ),
    (
        "hostpod",
        "10.0.16.10:5001",
        Dest::CrossZoneService,
        &["recv", "1000000"],
    ),
];

#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Mode {
    EndpointSlices,
    WithEc2,
    Neither,
}

/// The class each destination must get in `mode`.
fn class(mode: Mode, d: Dest) -> &'static str {
    use Dest::*;
    match (mode, d) {
        (_, CrossRegionNode) => "cross_region",
        (_, Internet) => "internet",
        (_, Peered) => "unplaced",
        (Mode::EndpointSlices | Mode::WithEc2, SameZoneService) => "same_zone",
        (Mode::EndpointSlices | Mode::WithEc2, CrossZoneService) => "cross_zone",
        (Mode::WithEc2, SameZonePod) => "same_zone",
        (Mode::WithEc2, CrossZonePod | CrossZoneRds) => "cross_zone",
        _ => "unplaced",
    }
}

const CLASSES: [&str; 5] = [
    "same_zone",
    "cross_zone",
    "cross_region",
    "internet",
    "unplaced",
];

fn classes(mode: Mode) -> Classes {
    CLASSES
        .iter()
        .map(|c| {
            let prefixes = DESTS
                .iter()
                .filter(|(d, _)| class(mode, *d) == *c)
                .flat_map(|(_, p)| p.iter().map(|s| s.to_string()))
                .collect();
            (*c, prefixes)
        })
        .collect()
}

/// The cluster as the API double knows it: Nodes without pod CIDRs, this node's pods, and the
/// EndpointSlices of two Services (one headless) whose backends run on other nodes.
fn cluster(node: &SimNode, state: &ApiState) {
    let node_with =
        |name: &str, zone: &str, zone_id: &str, region: &str, v4: &str, v6: Option<&str>| {
            let mut n = node_json(name, zone, region, zone_id, v4, &[]);
            if let (Some(v6), Some(a)) = (v6, n["status"]["addresses"].as_array_mut()) {
                a.push(serde_json::json!({"type": "InternalIP", "address": v6}));
            }
            n
        };
    for n in [
        node_with(
            NODE,
            "us-east-1a",
            "use1-az1",
            "us-east-1",
            "10.0.0.1",
            Some("fd00::1"),
        ),
        // Another account's name for our zone (the zone ID says so).
        node_with(
            "ip-10-0-2-200.ec2.internal",
            "us-east-1c",
            "use1-az1",
            "us-east-1",
            "10.0.2.200",
            None,
        ),
        node_with(
            "ip-10-0-16-200.ec2.internal",
            "us-east-1b",
            "use1-az2",
            "us-east-1",
            "10.0.16.200",
            None,
        ),
        node_with(
            "ip-10-1-0-10.eu-west-1.compute.internal",
            "eu-west-1a",
            "euw1-az1",
            "eu-west-1",
            "10.1.0.10",
            Some("fd00:1:0::10"),
        ),
    ] {
        state.apply("/api/v1", "nodes", n);
    }
    owners(state);
    for pod in ["pod1", "pod2", "hostpod"] {
        add_pod(node, state, pod);
    }
    let sz = EndpointSpec {
        addresses: &["10.0.2.10"],
        node: Some("ip-10-0-2-200.ec2.internal"),
        zone: Some("us-east-1c"),
        pod: Some("api-7c9d5-a1b2c"),
    };
    let xz = EndpointSpec {
        addresses: &["10.0.16.10"],
        node: Some("ip-10-0-16-200.ec2.internal"),
        zone: Some("us-east-1b"),
        pod: Some("api-7c9d5-d3e4f"),
    };
    state.apply(
        "/apis/discovery.k8s.io/v1",
        "endpointslices",
        endpointslice_json("shop", "api-x7k2p", Some("api"), "IPv4", &[sz, xz]),
    );
    // The headless Service of the same pods, IPv6.
    let sz6 = EndpointSpec {
        addresses: &["fd00:0:2::10"],
        node: Some("ip-10-0-2-200.ec2.internal"),
        zone: Some("us-east-1c"),
        pod: Some("api-7c9d5-a1b2c"),
    };
    let xz6 = EndpointSpec {
        addresses: &["fd00:0:16::10"],
        node: Some("ip-10-0-16-200.ec2.internal"),
        zone: Some("us-east-1b"),
        pod: Some("api-7c9d5-d3e4f"),
    };
    state.apply(
        "/apis/discovery.k8s.io/v1",
        "endpointslices",
        endpointslice_json(
            "shop",
            "api-headless-q9w8e",
            Some("api-headless"),
            "IPv6",
            &[sz6, xz6],
        ),
    );
}

fn config(api: &str, mode: Mode, aws: &AwsDouble) -> String {
    let (slices, imds, ec2) = match mode {
        Mode::EndpointSlices => (true, String::new(), String::new()),
        Mode::WithEc2 => (
            true,
            format!("imds:\n  enabled: true\n  endpoint: \"{}\"\n", aws.url()),
            String::new(),
        ),
        // The VPC is known but there are no credentials: the agent says what that costs.
        Mode::Neither => (false, String::new(), format!("ec2:\n  vpc_id: {VPC}\n")),
    };
    format!(
        "drain_interval_seconds: 0.5\n{imds}{ec2}kubernetes:\n  enabled: true\n  api_server: \"{api}\"\n  node_name: {NODE}\n  watch_endpointslices: {slices}\n"
    )
}

fn by_name(pod: &str) -> Vec<(String, String)> {
    let (ns, name, ..) = names(pod);
    vec![("namespace".into(), ns.into()), ("pod".into(), name.into())]
}

fn run(mode: Mode) -> Result<()> {
    let _serial = serial();
    let node = SimNode::build_with(TRAFFIC.as_ref(), Offloads::Default, &EXTRA, &classes(mode))?;
    let state = Arc::new(ApiState::new());
    cluster(&node, &state);
    let api = ApiServer::start(state.clone())?;
    let aws = AwsDouble::start(eks_vpc(ROLE, "projected-sa-token"))?;
    let token = std::env::temp_dir().join(format!("nct-vpc-token-{}", std::process::id()));
    std::fs::write(&token, "projected-sa-token")?;
    let token_path = token.to_string_lossy().into_owned();
    let url = aws.url();
    let env: Vec<(&str, &str)> = match mode {
        Mode::WithEc2 => vec![
            ("AWS_ROLE_ARN", ROLE),
            ("AWS_WEB_IDENTITY_TOKEN_FILE", &token_path),
            ("AWS_ENDPOINT_URL_EC2", &url),
            ("AWS_ENDPOINT_URL_STS", &url),
        ],
        _ => vec![],
    };
    let name = format!("vpc-{mode:?}").to_lowercase();
    let agent = Agent::start_with_env(&name, &config(&api.url(), mode, &aws), &env)?;
    for (pod, addr, _, how) in PLAN {
        node.transfer_to(pod, addr, how)?;
    }
    let samples = agent.settled_metrics(DRAIN)?;
    let active = |pod: &str, c: &str| {
        PLAN.iter()
            .any(|(p, _, d, _)| *p == pod && class(mode, *d) == c)
    };
    let cmp = compare_classes(&node, &samples, &by_name, &active, &CLASSES)?;
    eprintln!("--- {mode:?} ---\n{}", cmp.report.join("\n"));
    let mut failures = cmp.failures;
    let log = agent.log();
    let expect_log = match mode {
        Mode::EndpointSlices => "EC2 subnets (instance metadata is off and ec2.vpc_id is not set): pods outside Services in other zones and AWS-managed hosts (RDS, ElastiCache, EFS…) will be unplaced",
        Mode::WithEc2 => "missing: none: every subnet of the VPC is placed by zone ID",
        Mode::Neither => "EC2 subnets (no AWS credentials found",
    };
    if !log.contains(expect_log) {
        failures.push(format!("the start-up log does not say {expect_log:?}"));
    }
    let gauge =
        |name: &str, source: &str| samples.value(name, &[("source", source)]).unwrap_or(-1.0);
    let prefixes: Vec<(&str, f64)> = [
        "config",
        "instance_metadata",
        "ec2",
        "nodes",
        "pods",
        "endpointslices",
    ]
    .iter()
    .map(|s| (*s, gauge("netcost_topology_prefixes", s)))
    .collect();
    eprintln!("prefixes by source: {prefixes:?}");
    let want_ec2 = if mode == Mode::WithEc2 {
        (7.0, 1.0)
    } else {
        (0.0, 0.0)
    };
    if (
        gauge("netcost_topology_prefixes", "ec2"),
        gauge("netcost_topology_source_up", "ec2"),
    ) != want_ec2
    {
        failures.push(format!(
            "EC2 source: prefixes/up {prefixes:?}, want {want_ec2:?}"
        ));
    }
    let want_slices = if mode == Mode::Neither { 0.0 } else { 4.0 };
    if gauge("netcost_topology_prefixes", "endpointslices") != want_slices {
        failures.push(format!(
            "EndpointSlice prefixes: {prefixes:?}, want {want_slices}"
        ));
    }
    let requests = aws.requests();
    if mode == Mode::WithEc2 {
        let ec2: Vec<_> = requests.iter().filter(|r| r.service == "ec2").collect();
        ensure!(!ec2.is_empty(), "no EC2 request reached the double");
        for r in &ec2 {
            ensure!(
                r.signature == Some(Ok(()))
                    && r.access_key
                        .as_deref()
                        .is_some_and(|k| k.starts_with("ASIAIRSA")),
                "an EC2 request not signed with the IRSA credentials: {r:?}"
            );
        }
        eprintln!(
            "AWS requests: {} IMDS, {} STS, {} EC2",
            requests.iter().filter(|r| r.service == "imds").count(),
            requests.iter().filter(|r| r.service == "sts").count(),
            ec2.len()
        );
    } else {
        ensure!(
            requests.is_empty(),
            "AWS requests without AWS: {requests:?}"
        );
    }
    let _ = std::fs::remove_file(&token);
    let log = agent.stop()?;
    if !failures.is_empty() {
        bail!("{mode:?}:\n{}\nagent log:\n{log}", failures.join("\n"));
    }
    Ok(())
}

#[test]
fn endpointslices_alone_place_service_backends() -> Result<()> {
    run(Mode::EndpointSlices)
}

#[test]
fn with_ec2_subnets_every_vpc_address_is_placed() -> Result<()> {
    run(Mode::WithEc2)
}

#[test]
fn without_either_the_bytes_stay_unplaced_and_the_log_says_why() -> Result<()> {
    run(Mode::Neither)
}
