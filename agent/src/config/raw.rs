//! The file as serde reads it: every field optional, unknown fields refused. `parse` turns it
//! into the typed config, checking every value.

use serde::Deserialize;

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawConfig {
    #[serde(default)]
    pub(super) listen: Option<String>,
    #[serde(default)]
    pub(super) server: Option<RawServer>,
    #[serde(default)]
    pub(super) drain_interval_seconds: Option<f64>,
    #[serde(default)]
    pub(super) cgroup_root: Option<String>,
    #[serde(default)]
    pub(super) maps: Option<RawMaps>,
    #[serde(default)]
    pub(super) series_grace_seconds: Option<f64>,
    #[serde(default)]
    pub(super) kubernetes: Option<RawKubernetes>,
    #[serde(default)]
    pub(super) imds: Option<RawImds>,
    #[serde(default)]
    pub(super) ec2: Option<RawEc2>,
    #[serde(default)]
    pub(super) topology: Option<RawTopology>,
    #[serde(default)]
    pub(super) nat: Option<RawNat>,
    #[serde(default)]
    pub(super) egress: Option<RawEgress>,
    #[serde(default)]
    pub(super) services: Option<RawServices>,
    #[serde(default)]
    pub(super) prices: Option<RawPrices>,
    #[serde(default)]
    pub(super) kubecost: Option<RawKubecost>,
    #[serde(default)]
    pub(super) state: Option<RawState>,
    #[serde(default)]
    pub(super) destinations: Option<RawDestinations>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawDestinations {
    pub(super) enabled: Option<bool>,
    pub(super) top: Option<u32>,
    pub(super) max_series: Option<u32>,
    pub(super) half_life_seconds: Option<f64>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawServer {
    pub(super) header_timeout_seconds: Option<f64>,
    pub(super) idle_timeout_seconds: Option<f64>,
    pub(super) max_connections: Option<u32>,
    pub(super) max_scrapes: Option<u32>,
    pub(super) tls: Option<RawTls>,
    pub(super) auth: Option<RawAuth>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawTls {
    pub(super) cert_file: Option<String>,
    pub(super) key_file: Option<String>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawAuth {
    pub(super) kubernetes: Option<bool>,
    pub(super) cache_seconds: Option<f64>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawState {
    pub(super) pin: Option<bool>,
    pub(super) pin_dir: Option<String>,
    pub(super) dir: Option<String>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawKubecost {
    pub(super) config_file: Option<String>,
    pub(super) price_gauges: Option<bool>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawPrices {
    pub(super) file: Option<String>,
    pub(super) internet_tier: Option<u32>,
    #[serde(rename = "override")]
    pub(super) overrides: Option<RawOverrides>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawOverrides {
    pub(super) internet_out: Option<f64>,
    pub(super) inter_region_out: Option<f64>,
    pub(super) cross_zone_out: Option<f64>,
    pub(super) cross_zone_in: Option<f64>,
    pub(super) nat_gateway_per_gb: Option<f64>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawNat {
    pub(super) conntrack: Option<BoolOrText>,
    pub(super) netns: Option<String>,
    #[serde(default)]
    pub(super) service_cidrs: Vec<String>,
    pub(super) max_connections: Option<u32>,
    pub(super) retention_seconds: Option<f64>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawEgress {
    pub(super) nat_gateway: Option<RawGateway>,
    #[serde(default)]
    pub(super) gateway_endpoints: Vec<String>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawGateway {
    pub(super) zone: Option<String>,
    pub(super) zone_id: Option<String>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawServices {
    pub(super) bundled: Option<bool>,
    pub(super) file: Option<String>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawKubernetes {
    pub(super) enabled: Option<BoolOrText>,
    pub(super) api_server: Option<String>,
    pub(super) node_name: Option<String>,
    pub(super) watch_nodes: Option<bool>,
    pub(super) watch_endpointslices: Option<bool>,
    pub(super) hold_unknown_seconds: Option<f64>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawEc2 {
    pub(super) subnets: Option<BoolOrText>,
    pub(super) refresh_seconds: Option<f64>,
    pub(super) vpc_id: Option<String>,
    pub(super) endpoint: Option<String>,
    pub(super) sts_endpoint: Option<String>,
}

/// `true`, `false` or `auto`.
#[derive(Debug, Deserialize)]
#[serde(untagged)]
pub(super) enum BoolOrText {
    Bool(bool),
    Text(String),
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawImds {
    pub(super) enabled: Option<bool>,
    pub(super) endpoint: Option<String>,
    pub(super) timeout_seconds: Option<f64>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawMaps {
    pub(super) flow_entries: Option<u32>,
    pub(super) overflow_entries: Option<u32>,
    pub(super) flows_per_owner: Option<u32>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawTopology {
    pub(super) region: Option<String>,
    pub(super) zone: Option<String>,
    pub(super) zone_id: Option<String>,
    #[serde(default)]
    pub(super) vpc_cidrs: Vec<String>,
    #[serde(default)]
    pub(super) zones: Vec<RawZone>,
    #[serde(default)]
    pub(super) regions: Vec<RawRegion>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawZone {
    pub(super) name: String,
    pub(super) zone_id: Option<String>,
    pub(super) region: String,
    pub(super) cidrs: Vec<String>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawRegion {
    pub(super) name: String,
    pub(super) cidrs: Vec<String>,
}

/// A config file as `netcost-agent cleanup` reads it: its `state` section alone.
#[derive(Debug, Default, Deserialize)]
pub(super) struct RawStateOnly {
    #[serde(default)]
    pub(super) state: Option<RawState>,
}
