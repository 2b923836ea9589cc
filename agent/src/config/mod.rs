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
//!   price_gauges: true         # the five kubecost_network_*_cost gauges; off when OpenCost exports its own
//! state:                       # restarts and upgrades that lose no byte
//!   pin: true                  # pin maps and links in bpffs so counting goes on without us
//!   pin_dir: /sys/fs/bpf/netcost   # must be on bpffs; pins go to <pin_dir>/v<ABI>/
//!   dir: /var/lib/netcost      # the totals checkpoint (written at every drain)
//! destinations:                # each owner's top remote ends, by bytes (netcost_destination_*)
//!   enabled: true
//!   top: 10                    # per owner and direction; the rest in remote_kind="other"
//!   max_series: 5000           # all owners together; admissions beyond it are counted
//!   half_life_seconds: 600     # of the decayed ranking that keeps the top stable
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

use crate::vocab::{Cidr, Place};

mod check;
mod parse;
mod raw;
mod sections;
#[cfg(test)]
mod tests;

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
    /// Entries of the NAT table: both directions of every connection remembered.
    pub table_capacity: usize,
    /// How long a closed connection stays resolvable: `nat.retention_seconds`, else three
    /// drains and at least 30 s, so the drain after a sub-second connection still finds it.
    pub retention: Duration,
    /// How long bytes to a Service address wait for conntrack to name their connection: two
    /// drains and at least 10 s (events arrive within milliseconds; a resync after dropped
    /// events takes longer).
    pub wait: Duration,
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
    pub overrides: PriceOverrides,
}

/// Single prices set in the config, replacing the table's for our region (USD per GB).
#[derive(Clone, Debug, Default, PartialEq)]
pub struct PriceOverrides {
    pub internet_out: Option<f64>,
    pub inter_region_out: Option<f64>,
    pub cross_zone_out: Option<f64>,
    pub cross_zone_in: Option<f64>,
    pub nat_gateway_per_gb: Option<f64>,
}

/// What one client of the metrics port can hold, and how it is secured.
#[derive(Clone, Debug, PartialEq)]
pub struct ServerConfig {
    pub header_timeout: Duration,
    pub idle_timeout: Duration,
    pub max_connections: usize,
    pub max_scrapes: usize,
    /// TLS on the port, from these files (reloaded when they change).
    pub tls: Option<TlsFiles>,
    /// Bearer tokens checked with TokenReview and SubjectAccessReview, answers kept this long.
    pub auth_cache: Option<Duration>,
    /// `/healthz` fails when no drain succeeded for this long: three drain intervals and 5 s.
    pub stale_after: Duration,
}

impl Default for ServerConfig {
    fn default() -> Self {
        ServerConfig {
            header_timeout: Duration::from_secs(5),
            idle_timeout: Duration::from_secs(15),
            max_connections: 1024,
            max_scrapes: 256,
            tls: None,
            auth_cache: None,
            stale_after: stale_after(DEFAULT_DRAIN_INTERVAL),
        }
    }
}

/// Where the certificate chain and the private key are (PEM).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TlsFiles {
    pub cert: PathBuf,
    pub key: PathBuf,
}

/// Our own place and the prefixes the config places (the first tier of the classification
/// table). The own place may be partly unknown when the Node object or IMDS supply it.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct TopologyConfig {
    pub own: Place,
    pub vpc: Vec<Cidr>,
    pub entries: Vec<(Cidr, Place)>,
}

/// Top destinations per owner and direction (`netcost_destination_*`).
#[derive(Debug, Clone, PartialEq)]
pub struct DestinationsConfig {
    pub enabled: bool,
    /// Remote ends kept per owner and direction (the rest go to `other`).
    pub top: usize,
    /// Most destination series at once, all owners together; admissions beyond are counted.
    pub max_series: usize,
    /// Half-life of the decayed ranking (how fast a new heavy talker overtakes an old one).
    pub half_life: Duration,
}

impl Default for DestinationsConfig {
    fn default() -> Self {
        DestinationsConfig {
            enabled: true,
            top: 10,
            max_series: 5_000,
            half_life: Duration::from_secs(600),
        }
    }
}

/// Where the agent keeps what must outlive it: pinned maps and links (the kernel goes on counting
/// while no agent runs) and the checkpoint of its totals.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StateConfig {
    pub pin: bool,
    pub pin_dir: PathBuf,
    pub dir: PathBuf,
}

impl StateConfig {
    /// The `state` section of a config file; the rest of the file is not checked.
    pub fn load(path: &std::path::Path) -> Result<StateConfig, ConfigError> {
        parse::state_only(path, &parse::read_config(path)?)
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
    pub server: ServerConfig,
    pub drain_interval: Duration,
    pub cgroup_root: CgroupRoot,
    pub flow_entries: u32,
    pub overflow_entries: u32,
    /// Most flow entries one owner (cgroup) may create per drain interval.
    pub flows_per_owner: u32,
    /// A deleted pod's series stay this long with their final values.
    pub series_grace: Duration,
    pub kubernetes: KubernetesConfig,
    pub imds: ImdsConfig,
    pub ec2: Ec2Config,
    pub topology: TopologyConfig,
    pub nat: NatConfig,
    pub egress: EgressConfig,
    pub services: ServicesConfig,
    pub prices: PricesConfig,
    /// Kubecost's network-costs `config.yaml`, accepted as it is.
    pub kubecost_config: Option<PathBuf>,
    /// Whether the five `kubecost_network_*_cost` price gauges are exposed (OpenCost may export
    /// its own, with other values).
    pub kubecost_price_gauges: bool,
    pub state: StateConfig,
    pub destinations: DestinationsConfig,
}

pub const DEFAULT_LISTEN: &str = "[::]:3001";
pub const DEFAULT_DRAIN_INTERVAL: Duration = Duration::from_secs(5);

/// When `/healthz` calls the drain stuck.
fn stale_after(drain_interval: Duration) -> Duration {
    drain_interval * 3 + Duration::from_secs(5)
}

/// How long a closed connection stays resolvable, unless the config says.
fn nat_retention(drain_interval: Duration) -> Duration {
    Duration::from_secs(30).max(drain_interval * 3)
}

/// How long bytes to a Service address wait for conntrack.
fn nat_wait(drain_interval: Duration) -> Duration {
    Duration::from_secs(10).max(drain_interval * 2)
}

impl Config {
    pub fn load(path: &std::path::Path) -> Result<Config, ConfigError> {
        let text = parse::read_config(path)?;
        Config::parse(&text).map_err(|e| match e {
            ConfigError::Syntax { message, .. } => ConfigError::Syntax {
                path: path.to_owned(),
                message,
            },
            other => other,
        })
    }

    pub fn parse(text: &str) -> Result<Config, ConfigError> {
        parse::config(text)
    }
}
