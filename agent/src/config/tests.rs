use super::*;
use std::{path::PathBuf, time::Duration};

const GOOD: &str = r#"
listen: "127.0.0.1:9999"
drain_interval_seconds: 2
topology:
  region: us-east-1
  zone: us-east-1a
  vpc_cidrs: ["10.0.0.0/16"]
  zones:
    - { name: us-east-1a, region: us-east-1, cidrs: ["10.0.0.0/20"] }
    - { name: us-east-1b, region: us-east-1, cidrs: ["10.0.16.0/20"] }
  regions:
    - { name: eu-west-1, cidrs: ["10.1.0.0/16", "fd00:1::/64"] }
"#;

#[test]
fn parses_a_full_config() {
    let c = Config::parse(GOOD).unwrap();
    assert_eq!(c.listen, "127.0.0.1:9999".parse().unwrap());
    assert_eq!(c.drain_interval, Duration::from_secs(2));
    assert_eq!(c.cgroup_root, CgroupRoot::Auto);
    assert_eq!(c.flow_entries, agent_common::DEFAULT_FLOW_ENTRIES);
}

fn error_of(text: &str) -> String {
    Config::parse(text).unwrap_err().to_string()
}

#[test]
fn errors_name_the_field() {
    let e = error_of(&GOOD.replace("10.0.16.0/20", "10.0.16.0/33"));
    assert!(e.contains("topology.zones[1].cidrs[0]"), "{e}");
    let e = error_of(&GOOD.replace("127.0.0.1:9999", "localhost"));
    assert!(e.contains("`listen`"), "{e}");
    let e = error_of(&GOOD.replace("drain_interval_seconds: 2", "drain_interval_seconds: 0"));
    assert!(e.contains("drain_interval_seconds"), "{e}");
    let e = error_of(&GOOD.replace("zone: us-east-1a\n", "zone: \"\"\n"));
    assert!(e.contains("topology.zone"), "{e}");
    let e = error_of(&GOOD.replace("listen:", "listne:"));
    assert!(e.contains("listne"), "{e}");
    let e = error_of("topology: {region: r}\nkubernetes: {enabled: false}\n");
    assert!(e.contains("topology.zone"), "{e}");
    let e = error_of("topology: {zone: z}\n");
    assert!(e.contains("topology.region"), "{e}");
    let e = error_of(&format!("{GOOD}kubernetes: {{ enabled: maybe }}\n"));
    assert!(e.contains("kubernetes.enabled"), "{e}");
    let e = error_of(&format!(
        "{GOOD}kubernetes: {{ api_server: \"localhost:80\" }}\n"
    ));
    assert!(e.contains("kubernetes.api_server"), "{e}");
    let e = error_of(&format!("{GOOD}series_grace_seconds: -1\n"));
    assert!(e.contains("series_grace_seconds"), "{e}");
    let e = error_of(&format!("{GOOD}imds: {{ endpoint: \"https://x\" }}\n"));
    assert!(e.contains("imds.endpoint"), "{e}");
    let e = error_of(&format!("{GOOD}maps: {{ flow_entries: 1 }}\n"));
    assert!(e.contains("maps.flow_entries"), "{e}");
    let e = error_of(&format!(
        "{GOOD}nat: {{ service_cidrs: [\"10.100.0.0/99\"] }}\n"
    ));
    assert!(e.contains("nat.service_cidrs[0]"), "{e}");
    let e = error_of(&format!("{GOOD}nat: {{ conntrack: sometimes }}\n"));
    assert!(e.contains("nat.conntrack"), "{e}");
    let e = error_of(&format!("{GOOD}egress: {{ nat_gateway: {{}} }}\n"));
    assert!(e.contains("egress.nat_gateway"), "{e}");
    let e = error_of(&format!(
        "{GOOD}egress: {{ gateway_endpoints: [\"S3\"] }}\n"
    ));
    assert!(e.contains("egress.gateway_endpoints[0]"), "{e}");
    let e = error_of(&format!(
        "{GOOD}prices: {{ override: {{ internet_out: -1 }} }}\n"
    ));
    assert!(e.contains("prices.override.internet_out"), "{e}");
    let e = error_of(&format!("{GOOD}prices: {{ internet_tier: 0 }}\n"));
    assert!(e.contains("prices.internet_tier"), "{e}");
    let e = error_of(&format!("{GOOD}nat: {{ retention_seconds: 0 }}\n"));
    assert!(e.contains("nat.retention_seconds"), "{e}");
    let e = error_of(&format!("{GOOD}server: {{ max_connections: 0 }}\n"));
    assert!(e.contains("server.max_connections"), "{e}");
    let e = error_of(&format!("{GOOD}server: {{ header_timeout_seconds: 0 }}\n"));
    assert!(e.contains("server.header_timeout_seconds"), "{e}");
    let e = error_of(&format!("{GOOD}ec2: {{ subnets: sometimes }}\n"));
    assert!(e.contains("ec2.subnets"), "{e}");
    let e = error_of(&format!("{GOOD}ec2: {{ vpc_id: \"myvpc\" }}\n"));
    assert!(e.contains("ec2.vpc_id"), "{e}");
    let e = error_of(&format!("{GOOD}ec2: {{ endpoint: \"ec2.local\" }}\n"));
    assert!(e.contains("ec2.endpoint"), "{e}");
    let e = error_of(&format!("{GOOD}ec2: {{ refresh_seconds: 1 }}\n"));
    assert!(e.contains("ec2.refresh_seconds"), "{e}");
}

#[test]
fn ec2_and_endpointslices_have_defaults() {
    let c = Config::parse(GOOD).unwrap();
    assert_eq!(c.ec2.subnets, Ec2Mode::Auto);
    assert_eq!(c.ec2.refresh, Duration::from_secs(600));
    assert!(c.kubernetes.watch_endpointslices);
    let c = Config::parse(&format!(
        "{GOOD}ec2: {{ subnets: false, vpc_id: vpc-0a1b, endpoint: \"http://127.0.0.1:9/\" }}\nkubernetes: {{ watch_endpointslices: false }}\n"
    ))
    .unwrap();
    assert_eq!(c.ec2.subnets, Ec2Mode::Off);
    assert_eq!(c.ec2.vpc_id.as_deref(), Some("vpc-0a1b"));
    assert_eq!(c.ec2.endpoint.as_deref(), Some("http://127.0.0.1:9"));
    assert!(!c.kubernetes.watch_endpointslices);
}

#[test]
fn parses_nat_egress_and_services() {
    let c = Config::parse(&format!(
        "{GOOD}nat: {{ conntrack: true, netns: /run/netns/x, service_cidrs: [\"172.20.0.0/16\", \"fd00:ffff::/108\"] }}\negress: {{ nat_gateway: {{ zone_id: use1-az2 }}, gateway_endpoints: [aws-s3] }}\nservices: {{ bundled: false }}\n"
    ))
    .unwrap();
    assert_eq!(c.nat.conntrack, ConntrackMode::On);
    assert_eq!(c.nat.service_cidrs.len(), 2);
    assert_eq!(c.nat.netns, Some(PathBuf::from("/run/netns/x")));
    assert_eq!(
        c.egress.nat_gateway.unwrap().zone_id.as_deref(),
        Some("use1-az2")
    );
    assert_eq!(c.egress.gateway_endpoints, vec!["aws-s3".to_owned()]);
    assert!(!c.services.bundled);
    let d = Config::parse(GOOD).unwrap();
    assert_eq!(d.nat.conntrack, ConntrackMode::Auto);
    assert!(d.services.bundled && d.egress.nat_gateway.is_none());
}

#[test]
fn auto_fields_take_true_false_or_auto_only() {
    let with = |section: &str| Config::parse(&format!("{GOOD}{section}\n"));
    assert_eq!(
        with("nat: { conntrack: auto }").unwrap().nat.conntrack,
        ConntrackMode::Auto
    );
    assert_eq!(
        with("nat: { conntrack: false }").unwrap().nat.conntrack,
        ConntrackMode::Off
    );
    assert_eq!(
        with("kubernetes: { enabled: false }")
            .unwrap()
            .kubernetes
            .mode,
        KubernetesMode::Off
    );
    let e = with("nat: { conntrack: maybe }").unwrap_err().to_string();
    assert!(
        e.contains("nat.conntrack") && e.contains("\"maybe\" is not one of auto"),
        "{e}"
    );
    let e = with("kubernetes: { enabled: yes please }")
        .unwrap_err()
        .to_string();
    assert!(e.contains("kubernetes.enabled"), "{e}");
}
