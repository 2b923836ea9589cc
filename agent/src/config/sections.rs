//! The sections of the file that configure one component each (sources, NAT, egress, prices,
//! topology), checked on their own.

use std::{path::PathBuf, time::Duration};

use super::{
    check::{auto_bool, cidrs, field_error, non_empty, optional, seconds},
    nat_retention, nat_wait,
    raw::*,
    *,
};
use crate::vocab::check_service_tag;

pub(super) fn kubernetes(raw: RawKubernetes) -> Result<KubernetesConfig, ConfigError> {
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

pub(super) fn imds(raw: RawImds) -> Result<ImdsConfig, ConfigError> {
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

pub(super) fn ec2(raw: RawEc2) -> Result<Ec2Config, ConfigError> {
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

pub(super) fn nat(raw: RawNat, drain_interval: Duration) -> Result<NatConfig, ConfigError> {
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
        table_capacity: max_connections as usize * 2,
        retention: raw
            .retention_seconds
            .map(|s| seconds("nat.retention_seconds", s, 1.0..=3_600.0))
            .transpose()?
            .unwrap_or_else(|| nat_retention(drain_interval)),
        wait: nat_wait(drain_interval),
    })
}

pub(super) fn egress(raw: RawEgress) -> Result<EgressConfig, ConfigError> {
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
        .map(|(i, t)| {
            check_service_tag(t)
                .map_err(|m| field_error(format!("egress.gateway_endpoints[{i}]"), m))
        })
        .collect::<Result<_, _>>()?;
    Ok(EgressConfig {
        nat_gateway,
        gateway_endpoints,
    })
}

pub(super) fn prices(raw: RawPrices) -> Result<PricesConfig, ConfigError> {
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
        overrides: PriceOverrides {
            internet_out: check("internet_out", o.internet_out)?,
            inter_region_out: check("inter_region_out", o.inter_region_out)?,
            cross_zone_out: check("cross_zone_out", o.cross_zone_out)?,
            cross_zone_in: check("cross_zone_in", o.cross_zone_in)?,
            nat_gateway_per_gb: check("nat_gateway_per_gb", o.nat_gateway_per_gb)?,
        },
    })
}

pub(super) fn services(raw: RawServices) -> Result<ServicesConfig, ConfigError> {
    Ok(ServicesConfig {
        bundled: raw.bundled.unwrap_or(true),
        file: optional("services.file", raw.file)?.map(PathBuf::from),
    })
}

pub(super) fn topology(raw: RawTopology) -> Result<TopologyConfig, ConfigError> {
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
    Ok(TopologyConfig { own, vpc, entries })
}

pub(super) fn destinations(raw: RawDestinations) -> Result<DestinationsConfig, ConfigError> {
    let d = DestinationsConfig::default();
    let count =
        |field: &str, v: Option<u32>, default: usize, range: std::ops::RangeInclusive<u32>| match v
        {
            None => Ok(default),
            Some(n) if range.contains(&n) => Ok(n as usize),
            Some(n) => Err(field_error(
                field,
                format!("{n} is outside {}..={}", range.start(), range.end()),
            )),
        };
    Ok(DestinationsConfig {
        enabled: raw.enabled.unwrap_or(d.enabled),
        top: count("destinations.top", raw.top, d.top, 1..=100)?,
        max_series: count(
            "destinations.max_series",
            raw.max_series,
            d.max_series,
            16..=1_000_000,
        )?,
        half_life: match raw.half_life_seconds {
            None => d.half_life,
            Some(s) => seconds("destinations.half_life_seconds", s, 10.0..=86_400.0)?,
        },
    })
}
