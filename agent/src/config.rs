//! The agent's configuration file (YAML). Every error names the field that is wrong.
//!
//! ```yaml
//! listen: "[::]:3001"          # metrics, /healthz, /readyz (IPv6 any also accepts IPv4)
//! server:                      # what one client can hold
//!   header_timeout_seconds: 5  # a request head must arrive within this
//!   idle_timeout_seconds: 15   # no progress (idle keep-alive, a reader that stopped): closed
//!   max_connections: 1024      # beyond: 503 and close
//!   max_scrapes: 256           # /metrics answers in flight; beyond: 503
//!   tls: { cert_file: /etc/netcost/tls/tls.crt, key_file: /etc/netcost/tls/tls.key }  # reloaded on change
//!   auth: { kubernetes: true, cache_seconds: 60 }  # bearer tokens: TokenReview + SubjectAccessReview
//! drain_interval_seconds: 5
//! cgroup_root: auto            # or a path; auto reads /proc/mounts
//! maps: { flow_entries: 65536, overflow_entries: 4096, flows_per_owner: 16384 }
//! series_grace_seconds: 300    # a deleted pod's series stay this long with their final values
//! kubernetes:
//!   enabled: auto              # auto: on when running in a cluster or api_server is set
//!   api_server: "https://…"    # default: in-cluster service account, else kubeconfig
//!   node_name: ip-10-0-1-5     # default: $NODE_NAME (downward API)
//!   watch_nodes: true          # place other nodes' IPs and pod CIDRs by their zone labels
//!   hold_unknown_seconds: 600  # bytes of a pod not yet in the API are held this long
//!   watch_endpointslices: true # place Service backends cluster-wide (as kube-proxy watches them)
//! imds:                        # EC2 instance metadata (IMDSv2): our zone, our subnets, the VPC
//!   enabled: false
//!   endpoint: "http://169.254.169.254"
//! ec2:                         # every subnet of our VPC by zone ID (ec2:DescribeSubnets)
//!   subnets: auto              # auto: on when AWS credentials are found; true: required; false
//!   refresh_seconds: 600
//!   vpc_id: vpc-0abc           # default: from instance metadata
//!   endpoint: "https://…"      # default: $AWS_ENDPOINT_URL_EC2, $AWS_ENDPOINT_URL, the region's
//!   sts_endpoint: "https://…"  # default: $AWS_ENDPOINT_URL_STS, $AWS_ENDPOINT_URL, the region's
//! nat:                         # Services and SNAT: the real remote end, from conntrack
//!   conntrack: auto            # auto: on when the kernel offers ctnetlink; true: required; false
//!   netns: /proc/1/ns/net      # whose conntrack (kube-proxy's); default: the agent's own netns
//!   service_cidrs: ["10.100.0.0/16"]  # ClusterIP ranges: per connection from the first packet
//!   max_connections: 131072    # translated connections remembered at once
//!   retention_seconds: 30      # a closed connection stays resolvable this long (≥ 2 drains)
//! egress:                      # how this node's subnet reaches the internet and AWS services
//!   nat_gateway: { zone: us-east-1b, zone_id: use1-az2 }  # absent: an internet gateway
//!   gateway_endpoints: [aws-s3, aws-dynamodb]             # gateway VPC endpoints (free)
//! services:                    # cloud-service address ranges (tag `service`)
//!   bundled: true              # the AWS S3/DynamoDB table built in (dated; see README)
//!   file: /etc/netcost/service-ranges.tsv   # replaces the bundled table: prefix, service, region
//! prices:                      # USD per GB (2^30 bytes); built-in AWS table, see README
//!   file: /etc/netcost/prices.yaml   # replaces the built-in table (same schema)
//!   internet_tier: 1           # 1 = first 10 TB/month (default) … 4 = beyond 150 TB
//!   override: { cross_zone_out: 0.01, cross_zone_in: 0.01, internet_out: 0.09, inter_region_out: 0.02, nat_gateway_per_gb: 0.045 }
//! kubecost:
//!   config_file: /etc/network-costs/config.yaml  # Kubecost's network-costs-config, as it is
//! state:                       # restarts and upgrades that lose no byte
//!   pin: true                  # pin maps and links in bpffs so counting goes on without us
//!   pin_dir: /sys/fs/bpf/netcost   # must be on bpffs; pins go to <pin_dir>/v<ABI>/
//!   dir: /var/lib/netcost      # the totals checkpoint (written at every drain)
//! topology:                    # our place: config, else our Node's labels, else IMDS
//!   region: us-east-1
//!   zone: us-east-1a
//!   zone_id: use1-az1
//!   vpc_cidrs: ["10.0.0.0/16"]
//!   zones:                     # subnets are single-zone: list them with their zone
//!     - { name: us-east-1b, zone_id: use1-az2, region: us-east-1, cidrs: ["10.0.16.0/20"] }
//!   regions:
//!     - { name: eu-west-1, cidrs: ["10.1.0.0/16"] }
//! ```

use std::{net::SocketAddr, path::PathBuf, time::Duration};

use serde::Deserialize;

use crate::topology::{Cidr, Place, StaticTopology};

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("cannot read config file {path}: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("config file {path} is not valid: {message}")]
    Syntax { path: PathBuf, message: String },
    #[error("config field `{field}`: {message}")]
    Field { field: String, message: String },
}

fn field_error(field: impl Into<String>, message: impl Into<String>) -> ConfigError {
    ConfigError::Field {
        field: field.into(),
        message: message.into(),
    }
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawConfig {
    #[serde(default)]
    listen: Option<String>,
    #[serde(default)]
    server: Option<RawServer>,
    #[serde(default)]
    drain_interval_seconds: Option<f64>,
    #[serde(default)]
    cgroup_root: Option<String>,
    #[serde(default)]
    maps: Option<RawMaps>,
    #[serde(default)]
    series_grace_seconds: Option<f64>,
    #[serde(default)]
    kubernetes: Option<RawKubernetes>,
    #[serde(default)]
    imds: Option<RawImds>,
    #[serde(default)]
    ec2: Option<RawEc2>,
    #[serde(default)]
    topology: Option<RawTopology>,
    #[serde(default)]
    nat: Option<RawNat>,
    #[serde(default)]
    egress: Option<RawEgress>,
    #[serde(default)]
    services: Option<RawServices>,
    #[serde(default)]
    prices: Option<RawPrices>,
    #[serde(default)]
    kubecost: Option<RawKubecost>,
    #[serde(default)]
    state: Option<RawState>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawServer {
    header_timeout_seconds: Option<f64>,
    idle_timeout_seconds: Option<f64>,
    max_connections: Option<u32>,
    max_scrapes: Option<u32>,
    tls: Option<RawTls>,
    auth: Option<RawAuth>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawTls {
    cert_file: Option<String>,
    key_file: Option<String>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawAuth {
    kubernetes: Option<bool>,
    cache_seconds: Option<f64>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawState {
    pin: Option<bool>,
    pin_dir: Option<String>,
    dir: Option<String>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawKubecost {
    config_file: Option<String>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawPrices {
    file: Option<String>,
    internet_tier: Option<u32>,
    #[serde(rename = "override")]
    overrides: Option<RawOverrides>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawOverrides {
    internet_out: Option<f64>,
    inter_region_out: Option<f64>,
    cross_zone_out: Option<f64>,
    cross_zone_in: Option<f64>,
    nat_gateway_per_gb: Option<f64>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawNat {
    conntrack: Option<BoolOrText>,
    netns: Option<String>,
    #[serde(default)]
    service_cidrs: Vec<String>,
    max_connections: Option<u32>,
    retention_seconds: Option<f64>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawEgress {
    nat_gateway: Option<RawGateway>,
    #[serde(default)]
    gateway_endpoints: Vec<String>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawGateway {
    zone: Option<String>,
    zone_id: Option<String>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawServices {
    bundled: Option<bool>,
    file: Option<String>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawKubernetes {
    enabled: Option<BoolOrText>,
    api_server: Option<String>,
    node_name: Option<String>,
    watch_nodes: Option<bool>,
    watch_endpointslices: Option<bool>,
    hold_unknown_seconds: Option<f64>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawEc2 {
    subnets: Option<BoolOrText>,
    refresh_seconds: Option<f64>,
    vpc_id: Option<String>,
    endpoint: Option<String>,
    sts_endpoint: Option<String>,
}

/// `true`, `false` or `auto`.
#[derive(Debug, Deserialize)]
#[serde(untagged)]
enum BoolOrText {
    Bool(bool),
    Text(String),
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawImds {
    enabled: Option<bool>,
    endpoint: Option<String>,
    timeout_seconds: Option<f64>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawMaps {
    flow_entries: Option<u32>,
    overflow_entries: Option<u32>,
    flows_per_owner: Option<u32>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawTopology {
    region: Option<String>,
    zone: Option<String>,
    zone_id: Option<String>,
    #[serde(default)]
    vpc_cidrs: Vec<String>,
    #[serde(default)]
    zones: Vec<RawZone>,
    #[serde(default)]
    regions: Vec<RawRegion>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawZone {
    name: String,
    zone_id: Option<String>,
    region: String,
    cidrs: Vec<String>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawRegion {
    name: String,
    cidrs: Vec<String>,
}

/// Where the cgroup v2 hierarchy is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CgroupRoot {
    /// Found in /proc/mounts at start.
    Auto,
    Path(PathBuf),
}

/// Whether to read pods and nodes from the Kubernetes API.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum KubernetesMode {
    /// On when the agent runs in a cluster (`KUBERNETES_SERVICE_HOST`) or `api_server` is set.
    Auto,
    On,
    Off,
}

#[derive(Debug, Clone)]
pub struct KubernetesConfig {
    pub mode: KubernetesMode,
    pub api_server: Option<String>,
    pub node_name: Option<String>,
    pub watch_nodes: bool,
    pub watch_endpointslices: bool,
    pub hold_unknown: Duration,
}

impl KubernetesConfig {
    /// Resolves `auto` against the environment.
    pub fn enabled(&self, in_cluster: bool) -> bool {
        match self.mode {
            KubernetesMode::On => true,
            KubernetesMode::Off => false,
            KubernetesMode::Auto => in_cluster || self.api_server.is_some(),
        }
    }
}

#[derive(Debug, Clone)]
pub struct ImdsConfig {
    pub enabled: bool,
    pub endpoint: String,
    pub timeout: Duration,
}

/// Whether to read every subnet of the VPC from EC2.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Ec2Mode {
    /// On when AWS credentials are found (and the VPC is known); else off, said at start.
    Auto,
    On,
    Off,
}

#[derive(Debug, Clone)]
pub struct Ec2Config {
    pub subnets: Ec2Mode,
    pub refresh: Duration,
    /// Default: the VPC of our network interfaces, from instance metadata.
    pub vpc_id: Option<String>,
    /// Endpoint overrides; `None`: the environment's (`AWS_ENDPOINT_URL_EC2`…), else the region's.
    pub endpoint: Option<String>,
    pub sts_endpoint: Option<String>,
}

/// Whether to read conntrack.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ConntrackMode {
    /// On when the kernel offers ctnetlink; without it the agent warns and counts by the addresses
    /// its sockets saw.
    Auto,
    On,
    Off,
}

#[derive(Debug, Clone)]
pub struct NatConfig {
    pub conntrack: ConntrackMode,
    pub netns: Option<PathBuf>,
    pub service_cidrs: Vec<Cidr>,
    pub max_connections: u32,
    /// `None`: derived from the drain interval.
    pub retention: Option<Duration>,
}

#[derive(Debug, Clone, Default)]
pub struct EgressConfig {
    /// The NAT gateway's zone, when the subnet routes internet traffic through one.
    pub nat_gateway: Option<Place>,
    /// Service tags (e.g. `aws-s3`) reached through gateway VPC endpoints.
    pub gateway_endpoints: Vec<String>,
}

#[derive(Debug, Clone)]
pub struct ServicesConfig {
    pub bundled: bool,
    pub file: Option<PathBuf>,
}

#[derive(Debug, Clone, Default)]
pub struct PricesConfig {
    pub file: Option<PathBuf>,
    /// 0-based index of the internet-egress tier to price with.
    pub internet_tier: usize,
    pub overrides: crate::prices::Overrides,
}

/// Where the agent keeps what must outlive it: pinned maps and links (the kernel goes on counting
/// while no agent runs) and the checkpoint of its totals.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StateConfig {
    pub pin: bool,
    pub pin_dir: PathBuf,
    pub dir: PathBuf,
}

/// A config file as `netcost-agent cleanup` reads it: its `state` section alone.
#[derive(Debug, Default, Deserialize)]
struct RawStateOnly {
    #[serde(default)]
    state: Option<RawState>,
}

impl StateConfig {
    /// The `state` section of a config file; the rest of the file is not checked.
    pub fn load(path: &std::path::Path) -> Result<StateConfig, ConfigError> {
        let text = read_config(path)?;
        let raw: RawStateOnly = crate::yaml::from_str(&text).map_err(|e| ConfigError::Syntax {
            path: path.to_owned(),
            message: e.to_string(),
        })?;
        state(raw.state.unwrap_or_default())
    }
}

impl Default for StateConfig {
    fn default() -> Self {
        StateConfig {
            pin: true,
            pin_dir: PathBuf::from("/sys/fs/bpf/netcost"),
            dir: PathBuf::from("/var/lib/netcost"),
        }
    }
}

#[derive(Debug, Clone)]
pub struct Config {
    pub listen: SocketAddr,
    pub server: crate::server::ServerOptions,
    pub drain_interval: Duration,
    pub cgroup_root: CgroupRoot,
    pub flow_entries: u32,
    pub overflow_entries: u32,
    /// Most flow entries one owner (cgroup) may create per drain interval.
    pub flows_per_owner: u32,
    pub series_grace: Duration,
    pub kubernetes: KubernetesConfig,
    pub imds: ImdsConfig,
    pub ec2: Ec2Config,
    /// Our own place and the configured prefixes; the own place may be partly unknown when the
    /// Node object or IMDS supply it.
    pub topology: StaticTopology,
    pub nat: NatConfig,
    pub egress: EgressConfig,
    pub services: ServicesConfig,
    pub prices: PricesConfig,
    /// Kubecost's network-costs `config.yaml`, accepted as it is.
    pub kubecost_config: Option<PathBuf>,
    pub state: StateConfig,
}

pub const DEFAULT_LISTEN: &str = "[::]:3001";

impl Config {
    pub fn load(path: &std::path::Path) -> Result<Config, ConfigError> {
        let text = read_config(path)?;
        Config::parse(&text).map_err(|e| match e {
            ConfigError::Syntax { message, .. } => ConfigError::Syntax {
                path: path.to_owned(),
                message,
            },
            other => other,
        })
    }

    pub fn parse(text: &str) -> Result<Config, ConfigError> {
        let raw: RawConfig = crate::yaml::from_str(text).map_err(|e| ConfigError::Syntax {
            path: PathBuf::from("<config>"),
            message: e.to_string(),
        })?;
        let listen_text = raw.listen.as_deref().unwrap_or(DEFAULT_LISTEN);
        let listen = listen_text.parse().map_err(|_| {
            field_error(
                "listen",
                format!("{listen_text:?} is not an address:port such as \"[::]:3001\" or \"127.0.0.1:3001\""),
            )
        })?;
        let interval = raw.drain_interval_seconds.unwrap_or(5.0);
        if !(0.1..=300.0).contains(&interval) {
            return Err(field_error(
                "drain_interval_seconds",
                format!("{interval} is outside 0.1..=300"),
            ));
        }
        let cgroup_root = match raw.cgroup_root.as_deref() {
            None | Some("auto") => CgroupRoot::Auto,
            Some("") => return Err(field_error("cgroup_root", "empty; use `auto` or a path")),
            Some(p) => CgroupRoot::Path(PathBuf::from(p)),
        };
        let maps = raw.maps.unwrap_or(RawMaps {
            flow_entries: None,
            overflow_entries: None,
            flows_per_owner: None,
        });
        let flow_entries = maps
            .flow_entries
            .unwrap_or(agent_common::DEFAULT_FLOW_ENTRIES);
        let overflow_entries = maps
            .overflow_entries
            .unwrap_or(agent_common::DEFAULT_OVERFLOW_ENTRIES);
        for (field, value) in [
            ("maps.flow_entries", flow_entries),
            ("maps.overflow_entries", overflow_entries),
        ] {
            if !(16..=16_777_216).contains(&value) {
                return Err(field_error(
                    field,
                    format!("{value} is outside 16..=16777216"),
                ));
            }
        }
        // A quarter of the map by default: a pod that sprays new remote addresses keeps its
        // bytes (without their addresses beyond its quota) and leaves room for everyone else.
        let flows_per_owner = maps.flows_per_owner.unwrap_or(flow_entries / 4);
        if !(1..=flow_entries).contains(&flows_per_owner) {
            return Err(field_error(
                "maps.flows_per_owner",
                format!("{flows_per_owner} is outside 1..={flow_entries} (maps.flow_entries)"),
            ));
        }
        let series_grace = seconds(
            "series_grace_seconds",
            raw.series_grace_seconds.unwrap_or(300.0),
            0.0..=86_400.0,
        )?;
        let kubernetes = kubernetes(raw.kubernetes.unwrap_or_default())?;
        let imds = imds(raw.imds.unwrap_or_default())?;
        let ec2 = ec2(raw.ec2.unwrap_or_default())?;
        let topology = topology(raw.topology.unwrap_or_default())?;
        if kubernetes.mode == KubernetesMode::Off && !imds.enabled && !topology.own().is_placed() {
            return Err(field_error(
                "topology.zone",
                "required (with topology.region) when kubernetes and imds are both off: nothing else can tell this node's zone",
            ));
        }
        let nat = nat(raw.nat.unwrap_or_default())?;
        let egress = egress(raw.egress.unwrap_or_default())?;
        let services = services(raw.services.unwrap_or_default())?;
        let prices = prices(raw.prices.unwrap_or_default())?;
        let kubecost_config = optional(
            "kubecost.config_file",
            raw.kubecost.unwrap_or_default().config_file,
        )?
        .map(PathBuf::from);
        let state = state(raw.state.unwrap_or_default())?;
        let server = server(raw.server.unwrap_or_default())?;
        if server.auth_cache.is_some() && kubernetes.mode == KubernetesMode::Off {
            return Err(field_error(
                "server.auth.kubernetes",
                "checks tokens with the Kubernetes API, which kubernetes.enabled: false turns off",
            ));
        }
        Ok(Config {
            server,
            state,
            kubecost_config,
            prices,
            nat,
            egress,
            services,
            listen,
            drain_interval: Duration::from_secs_f64(interval),
            cgroup_root,
            flow_entries,
            overflow_entries,
            flows_per_owner,
            series_grace,
            kubernetes,
            imds,
            ec2,
            topology,
        })
    }
}

fn server(raw: RawServer) -> Result<crate::server::ServerOptions, ConfigError> {
    let d = crate::server::ServerOptions::default();
    let count = |field: &str, v: Option<u32>, default: usize, max: u32| match v {
        None => Ok(default),
        Some(n) if (1..=max).contains(&n) => Ok(n as usize),
        Some(n) => Err(field_error(field, format!("{n} is outside 1..={max}"))),
    };
    Ok(crate::server::ServerOptions {
        header_timeout: raw
            .header_timeout_seconds
            .map(|v| seconds("server.header_timeout_seconds", v, 0.5..=60.0))
            .transpose()?
            .unwrap_or(d.header_timeout),
        idle_timeout: raw
            .idle_timeout_seconds
            .map(|v| seconds("server.idle_timeout_seconds", v, 1.0..=600.0))
            .transpose()?
            .unwrap_or(d.idle_timeout),
        max_connections: count(
            "server.max_connections",
            raw.max_connections,
            d.max_connections,
            65_536,
        )?,
        max_scrapes: count("server.max_scrapes", raw.max_scrapes, d.max_scrapes, 4096)?,
        tls: match raw.tls {
            None => None,
            Some(t) => {
                let path = |field: &str, v: Option<String>| -> Result<PathBuf, ConfigError> {
                    let p = optional(field, v)?
                        .ok_or_else(|| field_error(field, "required with server.tls"))?;
                    if !p.starts_with('/') {
                        return Err(field_error(field, format!("{p:?} is not an absolute path")));
                    }
                    Ok(PathBuf::from(p))
                };
                Some(crate::tls::TlsFiles {
                    cert: path("server.tls.cert_file", t.cert_file)?,
                    key: path("server.tls.key_file", t.key_file)?,
                })
            }
        },
        auth_cache: match raw.auth {
            Some(a) if a.kubernetes.unwrap_or(true) => Some(seconds(
                "server.auth.cache_seconds",
                a.cache_seconds.unwrap_or(60.0),
                1.0..=3600.0,
            )?),
            _ => None,
        },
    })
}

/// Config files are small: a larger one is refused before it is parsed.
const MAX_CONFIG_BYTES: u64 = 1024 * 1024;

fn read_config(path: &std::path::Path) -> Result<String, ConfigError> {
    let read = |source| ConfigError::Read {
        path: path.to_owned(),
        source,
    };
    let len = std::fs::metadata(path).map_err(read)?.len();
    if len > MAX_CONFIG_BYTES {
        return Err(ConfigError::Syntax {
            path: path.to_owned(),
            message: format!("{len} bytes, more than {MAX_CONFIG_BYTES}: not a config file"),
        });
    }
    std::fs::read_to_string(path).map_err(read)
}

fn state(raw: RawState) -> Result<StateConfig, ConfigError> {
    let default = StateConfig::default();
    let absolute =
        |field: &str, value: Option<String>, default: PathBuf| match optional(field, value)? {
            None => Ok(default),
            Some(p) if p.starts_with('/') => Ok(PathBuf::from(p)),
            Some(p) => Err(field_error(field, format!("{p:?} is not an absolute path"))),
        };
    Ok(StateConfig {
        pin: raw.pin.unwrap_or(true),
        pin_dir: absolute("state.pin_dir", raw.pin_dir, default.pin_dir)?,
        dir: absolute("state.dir", raw.dir, default.dir)?,
    })
}

fn seconds(
    field: &str,
    value: f64,
    range: std::ops::RangeInclusive<f64>,
) -> Result<Duration, ConfigError> {
    if !range.contains(&value) {
        return Err(field_error(
            field,
            format!("{value} is outside {}..={}", range.start(), range.end()),
        ));
    }
    Ok(Duration::from_secs_f64(value))
}

/// A `true`/`false`/`auto` field: `None` means auto (also when absent).
fn auto_bool(field: &str, value: Option<BoolOrText>) -> Result<Option<bool>, ConfigError> {
    match value {
        None => Ok(None),
        Some(BoolOrText::Bool(b)) => Ok(Some(b)),
        Some(BoolOrText::Text(t)) if t == "auto" => Ok(None),
        Some(BoolOrText::Text(other)) => Err(field_error(
            field,
            format!("{other:?} is not one of auto, true, false"),
        )),
    }
}

fn kubernetes(raw: RawKubernetes) -> Result<KubernetesConfig, ConfigError> {
    let mode = match auto_bool("kubernetes.enabled", raw.enabled)? {
        None => KubernetesMode::Auto,
        Some(true) => KubernetesMode::On,
        Some(false) => KubernetesMode::Off,
    };
    let api_server = match raw.api_server {
        Some(url) => {
            let url = non_empty("kubernetes.api_server", &url)?;
            if !(url.starts_with("http://") || url.starts_with("https://"))
                || url.parse::<hyper::Uri>().is_err()
            {
                return Err(field_error(
                    "kubernetes.api_server",
                    format!("{url:?} is not an http:// or https:// URL"),
                ));
            }
            Some(url)
        }
        None => None,
    };
    let node_name = raw
        .node_name
        .map(|n| non_empty("kubernetes.node_name", &n))
        .transpose()?;
    Ok(KubernetesConfig {
        mode,
        api_server,
        node_name,
        watch_nodes: raw.watch_nodes.unwrap_or(true),
        watch_endpointslices: raw.watch_endpointslices.unwrap_or(true),
        hold_unknown: seconds(
            "kubernetes.hold_unknown_seconds",
            raw.hold_unknown_seconds.unwrap_or(600.0),
            0.0..=86_400.0,
        )?,
    })
}

fn imds(raw: RawImds) -> Result<ImdsConfig, ConfigError> {
    let endpoint = raw
        .endpoint
        .unwrap_or_else(|| "http://169.254.169.254".to_owned());
    if !endpoint.starts_with("http://") || endpoint.parse::<hyper::Uri>().is_err() {
        return Err(field_error(
            "imds.endpoint",
            format!("{endpoint:?} is not an http:// URL"),
        ));
    }
    Ok(ImdsConfig {
        enabled: raw.enabled.unwrap_or(false),
        endpoint: endpoint.trim_end_matches('/').to_owned(),
        timeout: seconds(
            "imds.timeout_seconds",
            raw.timeout_seconds.unwrap_or(2.0),
            0.1..=60.0,
        )?,
    })
}

fn ec2(raw: RawEc2) -> Result<Ec2Config, ConfigError> {
    let subnets = match auto_bool("ec2.subnets", raw.subnets)? {
        None => Ec2Mode::Auto,
        Some(true) => Ec2Mode::On,
        Some(false) => Ec2Mode::Off,
    };
    let url = |field: &str, value: Option<String>| -> Result<Option<String>, ConfigError> {
        match optional(field, value)? {
            None => Ok(None),
            Some(u)
                if (u.starts_with("https://") || u.starts_with("http://"))
                    && u.parse::<hyper::Uri>().is_ok() =>
            {
                Ok(Some(u.trim_end_matches('/').to_owned()))
            }
            Some(u) => Err(field_error(
                field,
                format!("{u:?} is not an http:// or https:// URL"),
            )),
        }
    };
    let vpc_id = optional("ec2.vpc_id", raw.vpc_id)?;
    if let Some(id) = &vpc_id {
        if !id.starts_with("vpc-") || !id[4..].chars().all(|c| c.is_ascii_hexdigit()) {
            return Err(field_error(
                "ec2.vpc_id",
                format!("{id:?} is not a VPC ID such as \"vpc-0abc123\""),
            ));
        }
    }
    Ok(Ec2Config {
        subnets,
        refresh: seconds(
            "ec2.refresh_seconds",
            raw.refresh_seconds.unwrap_or(600.0),
            10.0..=86_400.0,
        )?,
        vpc_id,
        endpoint: url("ec2.endpoint", raw.endpoint)?,
        sts_endpoint: url("ec2.sts_endpoint", raw.sts_endpoint)?,
    })
}

fn nat(raw: RawNat) -> Result<NatConfig, ConfigError> {
    let conntrack = match auto_bool("nat.conntrack", raw.conntrack)? {
        None => ConntrackMode::Auto,
        Some(true) => ConntrackMode::On,
        Some(false) => ConntrackMode::Off,
    };
    let max_connections = raw.max_connections.unwrap_or(131_072);
    if !(16..=16_777_216).contains(&max_connections) {
        return Err(field_error(
            "nat.max_connections",
            format!("{max_connections} is outside 16..=16777216"),
        ));
    }
    Ok(NatConfig {
        conntrack,
        netns: optional("nat.netns", raw.netns)?.map(PathBuf::from),
        service_cidrs: cidrs("nat.service_cidrs", &raw.service_cidrs)?,
        max_connections,
        retention: raw
            .retention_seconds
            .map(|s| seconds("nat.retention_seconds", s, 1.0..=3_600.0))
            .transpose()?,
    })
}

/// A service tag: lowercase letters, digits and dashes (it becomes a label value).
pub fn check_service_tag(field: &str, tag: &str) -> Result<String, ConfigError> {
    let tag = non_empty(field, tag)?;
    if !tag
        .chars()
        .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-')
    {
        return Err(field_error(
            field,
            format!("{tag:?} is not a service tag such as \"aws-s3\" (lowercase letters, digits, dashes)"),
        ));
    }
    Ok(tag)
}

fn egress(raw: RawEgress) -> Result<EgressConfig, ConfigError> {
    let nat_gateway = match raw.nat_gateway {
        None => None,
        Some(g) => {
            let place = Place {
                zone: optional("egress.nat_gateway.zone", g.zone)?,
                zone_id: optional("egress.nat_gateway.zone_id", g.zone_id)?,
                region: None,
            };
            if place.zone.is_none() && place.zone_id.is_none() {
                return Err(field_error(
                    "egress.nat_gateway",
                    "needs the gateway's zone or zone_id (to tell whether reaching it crosses zones)",
                ));
            }
            Some(place)
        }
    };
    let gateway_endpoints = raw
        .gateway_endpoints
        .iter()
        .enumerate()
        .map(|(i, t)| check_service_tag(&format!("egress.gateway_endpoints[{i}]"), t))
        .collect::<Result<_, _>>()?;
    Ok(EgressConfig {
        nat_gateway,
        gateway_endpoints,
    })
}

fn prices(raw: RawPrices) -> Result<PricesConfig, ConfigError> {
    let tier = raw.internet_tier.unwrap_or(1);
    if !(1..=8).contains(&tier) {
        return Err(field_error(
            "prices.internet_tier",
            format!("{tier} is not a tier number (1 = first 10 TB per month)"),
        ));
    }
    let o = raw.overrides.unwrap_or_default();
    let check = |name: &str, v: Option<f64>| -> Result<Option<f64>, ConfigError> {
        match v {
            Some(p) if !p.is_finite() || !(0.0..=10.0).contains(&p) => Err(field_error(
                format!("prices.override.{name}"),
                format!("{p} is not a price in USD per GB (0 ..= 10)"),
            )),
            other => Ok(other),
        }
    };
    Ok(PricesConfig {
        file: optional("prices.file", raw.file)?.map(PathBuf::from),
        internet_tier: tier as usize - 1,
        overrides: crate::prices::Overrides {
            internet_out: check("internet_out", o.internet_out)?,
            inter_region_out: check("inter_region_out", o.inter_region_out)?,
            cross_zone_out: check("cross_zone_out", o.cross_zone_out)?,
            cross_zone_in: check("cross_zone_in", o.cross_zone_in)?,
            nat_gateway_per_gb: check("nat_gateway_per_gb", o.nat_gateway_per_gb)?,
        },
    })
}

fn services(raw: RawServices) -> Result<ServicesConfig, ConfigError> {
    Ok(ServicesConfig {
        bundled: raw.bundled.unwrap_or(true),
        file: optional("services.file", raw.file)?.map(PathBuf::from),
    })
}

fn optional(field: &str, value: Option<String>) -> Result<Option<String>, ConfigError> {
    value.map(|v| non_empty(field, &v)).transpose()
}

fn non_empty(field: &str, value: &str) -> Result<String, ConfigError> {
    let value = value.trim();
    if value.is_empty() {
        return Err(field_error(field, "must not be empty"));
    }
    Ok(value.to_owned())
}

fn cidrs(field: &str, list: &[String]) -> Result<Vec<Cidr>, ConfigError> {
    list.iter()
        .enumerate()
        .map(|(i, text)| {
            text.parse::<Cidr>()
                .map_err(|e| field_error(format!("{field}[{i}]"), format!("{text:?}: {e}")))
        })
        .collect()
}

fn topology(raw: RawTopology) -> Result<StaticTopology, ConfigError> {
    let own = Place {
        zone: optional("topology.zone", raw.zone)?,
        zone_id: optional("topology.zone_id", raw.zone_id)?,
        region: optional("topology.region", raw.region)?,
    };
    if own.region.is_none() && (own.zone.is_some() || own.zone_id.is_some()) {
        return Err(field_error(
            "topology.region",
            "required when topology.zone or topology.zone_id is set",
        ));
    }
    let vpc = cidrs("topology.vpc_cidrs", &raw.vpc_cidrs)?;
    let mut entries = Vec::new();
    for (i, z) in raw.zones.iter().enumerate() {
        let place = Place {
            zone: Some(non_empty(&format!("topology.zones[{i}].name"), &z.name)?),
            zone_id: optional(&format!("topology.zones[{i}].zone_id"), z.zone_id.clone())?,
            region: Some(non_empty(
                &format!("topology.zones[{i}].region"),
                &z.region,
            )?),
        };
        for cidr in cidrs(&format!("topology.zones[{i}].cidrs"), &z.cidrs)? {
            entries.push((cidr, place.clone()));
        }
    }
    for (i, r) in raw.regions.iter().enumerate() {
        let place = Place::region(&non_empty(&format!("topology.regions[{i}].name"), &r.name)?);
        for cidr in cidrs(&format!("topology.regions[{i}].cidrs"), &r.cidrs)? {
            entries.push((cidr, place.clone()));
        }
    }
    Ok(StaticTopology::new(own, vpc, entries))
}

#[cfg(test)]
mod tests {
    use super::*;

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
}
