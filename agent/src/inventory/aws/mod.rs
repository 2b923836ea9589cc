//! AWS, an input on the side of classification: what instance metadata says of this node (its
//! zone, the subnets of its network interfaces, the VPC's own ranges, the VPC's ID) and what
//! EC2 `DescribeSubnets` says of every subnet of the VPC. Both feed the AWS tier of the
//! classification table (`classify::layers`); classification reads [`CloudFacts`] at each
//! drain.
//!
//! In: the `imds` and `ec2` config, the process environment (credentials, endpoint overrides).
//! Out: [`SharedCloud`], and the [`AwsMetrics`] group.

pub mod credentials;
pub mod ec2;
pub mod http;
pub mod imds;
pub mod keys;
pub mod xml;

use std::{
    sync::{Arc, PoisonError, RwLock},
    time::Duration,
};

use prometheus_client::{
    encoding::EncodeLabelSet,
    metrics::{counter::Counter, family::Family},
};

use crate::{
    config::{Ec2Config, Ec2Mode, ImdsConfig},
    vocab::{Cidr, Place, Registries},
};

/// `netcost_aws_errors_total`: failed requests, by the AWS endpoint asked.
#[derive(Clone, Default)]
pub struct AwsMetrics {
    errors: Family<AwsLabels, Counter>,
}

/// An AWS endpoint the agent talks to: `imds`, `ec2`, `credentials`.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct AwsLabels {
    service: &'static str,
}

impl AwsMetrics {
    pub fn register(registries: &mut Registries) -> AwsMetrics {
        let m = AwsMetrics::default();
        registries.live().register(
            "aws_errors",
            "Failed requests to AWS (imds, ec2, credentials); the last good answer stays in use",
            m.errors.clone(),
        );
        m
    }

    fn error(&self, service: &'static str) {
        self.errors.get_or_create(&AwsLabels { service }).inc();
    }
}

/// How a source stands.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum SourceState {
    /// Not used on this node (off in the config, or nothing to use it with).
    #[default]
    Off,
    /// On, its first answer pending: bytes to addresses it may place wait for it (bounded by
    /// the hold).
    Starting,
    Up,
    /// The last attempt failed; what it said before stays in use.
    Failing,
}

impl SourceState {
    /// Whether waiting for this source is over.
    pub fn settled(self) -> bool {
        self != SourceState::Starting
    }
}

/// What the AWS sources have said so far.
#[derive(Clone, Debug, Default)]
pub struct CloudFacts {
    /// Our place from instance metadata.
    pub place: Place,
    /// Our interfaces' subnets, the VPC's ranges and ID, from instance metadata.
    pub network: imds::Network,
    /// Every subnet of the VPC with its place, from EC2.
    pub subnets: Vec<(Cidr, Place)>,
    pub imds: SourceState,
    pub ec2: SourceState,
    /// Changes whenever a field above does.
    pub generation: u64,
}

pub type SharedCloud = Arc<RwLock<CloudFacts>>;

impl CloudFacts {
    /// The facts as the pipeline starts with them: sources that are on are `Starting`.
    pub fn starting(imds: bool) -> CloudFacts {
        CloudFacts {
            imds: if imds {
                SourceState::Starting
            } else {
                SourceState::Off
            },
            ..Default::default()
        }
    }
}

fn update(cloud: &SharedCloud, f: impl FnOnce(&mut CloudFacts)) {
    let mut c = cloud.write().unwrap_or_else(PoisonError::into_inner);
    f(&mut c);
    c.generation += 1;
}

/// What the rest of the node's sources are, for the one start-up line that says what places
/// addresses here and what is missing.
#[derive(Clone, Debug)]
pub struct SourcesSummary {
    pub config_prefixes: usize,
    pub nodes: bool,
    pub endpointslices: bool,
    pub imds: bool,
}

impl SourcesSummary {
    /// Logs the sources once EC2 is decided (`ec2`: `Ok(description)` when on, `Err(why not)`).
    pub fn log(&self, ec2: Result<String, String>) {
        let on_off = |b: bool| if b { "on" } else { "off" };
        let missing = match (&ec2, self.endpointslices) {
            (Ok(_), _) => "none: every subnet of the VPC is placed by zone ID".to_owned(),
            (Err(why), true) => format!("EC2 subnets ({why}): pods outside Services in other zones and AWS-managed hosts (RDS, ElastiCache, EFS…) will be unplaced"),
            (Err(why), false) => format!("EC2 subnets ({why}) and EndpointSlices: addresses outside Nodes' IPs and pod CIDRs (VPC CNI pods, AWS-managed hosts) will be unplaced"),
        };
        let ec2_text = match &ec2 {
            Ok(d) => format!("on ({d})"),
            Err(_) => "off".to_owned(),
        };
        tracing::info!(
            config_prefixes = self.config_prefixes,
            instance_metadata = on_off(self.imds),
            ec2_subnets = %ec2_text,
            endpointslices = on_off(self.endpointslices),
            nodes = on_off(self.nodes),
            "topology sources; missing: {missing}"
        );
    }
}

/// Everything the AWS task needs.
pub struct AwsOptions {
    pub imds: ImdsConfig,
    pub ec2: Ec2Config,
    /// Our region from the config, if it says.
    pub region: Option<String>,
    pub env: credentials::Env,
    pub summary: SourcesSummary,
}

/// Runs the AWS sources until the process ends: instance metadata (placement and network,
/// retried until it answers, re-read at every EC2 refresh), then EC2 subnets when on.
pub async fn run(options: AwsOptions, cloud: SharedCloud, metrics: AwsMetrics) {
    let http = http::HttpClient::new();
    let error = |service: &'static str| metrics.error(service);
    let imds = options.imds.enabled.then(|| {
        Arc::new(imds::Imds::new(
            &options.imds.endpoint,
            options.imds.timeout,
            http.clone(),
        ))
    });
    if let Some(imds) = &imds {
        read_instance_metadata(imds, &cloud, &error).await;
    }
    let ec2 = decide_ec2(&options, &cloud, imds.as_ref(), &http).await;
    let (ec2, mut provider, vpc_id) = match ec2 {
        Ok(parts) => {
            options
                .summary
                .log(Ok(format!("{}, {}", parts.1.source().describe(), parts.2)));
            parts
        }
        Err(why) => {
            if options.ec2.subnets == Ec2Mode::On {
                tracing::error!(reason = %why, "ec2.subnets is true but EC2 subnets cannot be read");
                update(&cloud, |c| c.ec2 = SourceState::Failing);
            } else {
                update(&cloud, |c| c.ec2 = SourceState::Off);
            }
            options.summary.log(Err(why));
            // Instance metadata still changes when interfaces are attached.
            if let Some(imds) = &imds {
                loop {
                    tokio::time::sleep(options.ec2.refresh).await;
                    refresh_network(imds, &cloud, &error).await;
                }
            }
            return;
        }
    };
    let mut failures = 0u32;
    loop {
        let result = match provider.get().await {
            Ok(creds) => ec2.describe_subnets(&creds, &vpc_id).await.map_err(|e| {
                if e.is_auth() {
                    provider.invalidate();
                }
                e.to_string()
            }),
            Err(e) => {
                error("credentials");
                Err(e.to_string())
            }
        };
        let wait = match result {
            Ok(subnets) => {
                let places = subnet_places(&subnets, ec2_region(&cloud, &options));
                let count = places.len();
                let changed =
                    cloud.read().unwrap_or_else(PoisonError::into_inner).subnets != places;
                if changed
                    || failures > 0
                    || cloud.read().unwrap_or_else(PoisonError::into_inner).ec2 != SourceState::Up
                {
                    tracing::info!(vpc = %vpc_id, subnets = subnets.len(), prefixes = count, "EC2 subnets read");
                    update(&cloud, |c| {
                        c.subnets = places;
                        c.ec2 = SourceState::Up;
                    });
                }
                failures = 0;
                options.ec2.refresh
            }
            Err(e) => {
                error("ec2");
                failures += 1;
                if failures == 1 || failures.is_power_of_two() {
                    tracing::warn!(error = %e, failures, "EC2 subnets not read; the last answer stays in use, retrying");
                }
                update(&cloud, |c| c.ec2 = SourceState::Failing);
                backoff(failures).min(options.ec2.refresh)
            }
        };
        tokio::time::sleep(wait).await;
        if let Some(imds) = &imds {
            refresh_network(imds, &cloud, &error).await;
        }
    }
}

fn ec2_region(cloud: &SharedCloud, options: &AwsOptions) -> Option<String> {
    options.region.clone().or_else(|| {
        cloud
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .place
            .region
            .clone()
    })
}

/// Subnets as prefixes and places; a subnet without a zone places nothing.
pub fn subnet_places(subnets: &[xml::Subnet], region: Option<String>) -> Vec<(Cidr, Place)> {
    let mut out = Vec::new();
    for s in subnets {
        if s.zone.is_none() && s.zone_id.is_none() {
            continue;
        }
        let place = Place {
            zone: s.zone.clone(),
            zone_id: s.zone_id.clone(),
            region: region.clone(),
        };
        for c in s.ipv4.iter().chain(&s.ipv6) {
            out.push((*c, place.clone()));
        }
    }
    out
}

/// 5 s doubling to 5 minutes.
fn backoff(failures: u32) -> Duration {
    Duration::from_secs(5u64 << failures.clamp(1, 7).saturating_sub(1))
        .min(Duration::from_secs(300))
}

/// Placement and network from instance metadata, retried with backoff (1 s doubling to 60 s)
/// until both answered. Meanwhile bytes to private addresses are held by the pipeline.
async fn read_instance_metadata(
    imds: &imds::Imds,
    cloud: &SharedCloud,
    error: &impl Fn(&'static str),
) {
    let mut delay = Duration::from_secs(1);
    loop {
        match tokio::try_join!(imds.placement(), imds.network()) {
            Ok((place, network)) => {
                tracing::info!(zone = ?place.zone, zone_id = ?place.zone_id, region = ?place.region, vpc = ?network.vpc_id, subnets = ?network.subnets.iter().map(Cidr::to_string).collect::<Vec<_>>(), vpc_ranges = ?network.vpc_cidrs.iter().map(Cidr::to_string).collect::<Vec<_>>(), "placement and network from instance metadata");
                update(cloud, |c| {
                    c.place = place;
                    c.network = network;
                    c.imds = SourceState::Up;
                });
                return;
            }
            Err(e) => {
                error("imds");
                tracing::warn!(error = %e, "instance metadata unavailable; retrying");
                let first = cloud.read().unwrap_or_else(PoisonError::into_inner).imds
                    == SourceState::Starting;
                if first {
                    update(cloud, |c| c.imds = SourceState::Failing);
                }
                tokio::time::sleep(delay).await;
                delay = (delay * 2).min(Duration::from_secs(60));
            }
        }
    }
}

/// Interfaces come and go (the VPC CNI attaches more as pods arrive): read them again.
async fn refresh_network(imds: &imds::Imds, cloud: &SharedCloud, error: &impl Fn(&'static str)) {
    match imds.network().await {
        Ok(network) => {
            let changed = cloud.read().unwrap_or_else(PoisonError::into_inner).network != network;
            if changed {
                tracing::info!(
                    subnets = network.subnets.len(),
                    "network interfaces changed"
                );
                update(cloud, |c| c.network = network);
            }
        }
        Err(e) => {
            error("imds");
            tracing::warn!(error = %e, "instance metadata network not read; the last answer stays in use");
        }
    }
}

/// Whether EC2 subnets can be read here: the client, the credentials and the VPC, or why not.
async fn decide_ec2(
    options: &AwsOptions,
    cloud: &SharedCloud,
    imds: Option<&Arc<imds::Imds>>,
    http: &http::HttpClient,
) -> Result<(ec2::Ec2, credentials::Provider, String), String> {
    if options.ec2.subnets == Ec2Mode::Off {
        return Err("ec2.subnets is false".into());
    }
    let source = credentials::find(&options.env, imds)
        .await
        .map_err(|e| format!("finding credentials: {e}"))?
        .ok_or("no AWS credentials found: no AWS_ACCESS_KEY_ID, no IRSA (AWS_ROLE_ARN), no EKS Pod Identity (AWS_CONTAINER_CREDENTIALS_FULL_URI), no instance profile")?;
    let region = ec2_region(cloud, options)
        .ok_or("our region is unknown: set topology.region or enable imds")?;
    let vpc_id = options
        .ec2
        .vpc_id
        .clone()
        .or_else(|| {
            cloud
                .read()
                .unwrap_or_else(PoisonError::into_inner)
                .network
                .vpc_id
                .clone()
        })
        .ok_or(if imds.is_some() {
            "instance metadata gave no VPC ID; set ec2.vpc_id"
        } else {
            "the VPC ID is unknown: enable imds or set ec2.vpc_id"
        })?;
    let sts = ec2::endpoint(
        options.ec2.sts_endpoint.as_deref(),
        &options.env,
        "sts",
        &region,
    );
    let endpoint = ec2::endpoint(
        options.ec2.endpoint.as_deref(),
        &options.env,
        "ec2",
        &region,
    );
    update(cloud, |c| c.ec2 = SourceState::Starting);
    Ok((
        ec2::Ec2::new(http.clone(), endpoint.clone(), region),
        credentials::Provider::new(source, http.clone(), sts),
        vpc_id,
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_doubles_to_five_minutes() {
        assert_eq!(backoff(1), Duration::from_secs(5));
        assert_eq!(backoff(2), Duration::from_secs(10));
        assert_eq!(backoff(30), Duration::from_secs(300));
    }
}
