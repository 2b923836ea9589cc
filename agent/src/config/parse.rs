//! From the file's text to the typed config: each section checked on its own, every error
//! naming its field, and the values derived from other fields computed here, once.

use std::{path::PathBuf, time::Duration};

use super::{
    check::{field_error, optional, seconds},
    raw::*,
    sections::*,
    *,
};

fn syntax(message: impl ToString) -> ConfigError {
    ConfigError::Syntax {
        path: PathBuf::from("<config>"),
        message: message.to_string(),
    }
}

/// The `state` section alone (for `netcost-agent cleanup`).
pub(super) fn state_only(path: &std::path::Path, text: &str) -> Result<StateConfig, ConfigError> {
    let raw: RawStateOnly =
        crate::vocab::yaml::from_str(text).map_err(|e| ConfigError::Syntax {
            path: path.to_owned(),
            message: e.to_string(),
        })?;
    state(raw.state.unwrap_or_default())
}

pub(super) fn config(text: &str) -> Result<Config, ConfigError> {
    let raw: RawConfig = crate::vocab::yaml::from_str(text).map_err(syntax)?;
    let listen_text = raw.listen.as_deref().unwrap_or(DEFAULT_LISTEN);
    let listen = listen_text.parse().map_err(|_| {
        field_error(
            "listen",
            format!("{listen_text:?} is not an address:port such as \"[::]:3001\" or \"127.0.0.1:3001\""),
        )
    })?;
    let interval = raw
        .drain_interval_seconds
        .unwrap_or(DEFAULT_DRAIN_INTERVAL.as_secs_f64());
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
    if kubernetes.mode == KubernetesMode::Off && !imds.enabled && !topology.own.is_placed() {
        return Err(field_error(
            "topology.zone",
            "required (with topology.region) when kubernetes and imds are both off: nothing else can tell this node's zone",
        ));
    }
    let drain_interval = Duration::from_secs_f64(interval);
    let nat = nat(raw.nat.unwrap_or_default(), drain_interval)?;
    let egress = egress(raw.egress.unwrap_or_default())?;
    let services = services(raw.services.unwrap_or_default())?;
    let prices = prices(raw.prices.unwrap_or_default())?;
    let kubecost = raw.kubecost.unwrap_or_default();
    let kubecost_price_gauges = kubecost.price_gauges.unwrap_or(true);
    let kubecost_config =
        optional("kubecost.config_file", kubecost.config_file)?.map(PathBuf::from);
    let state = state(raw.state.unwrap_or_default())?;
    let destinations = destinations(raw.destinations.unwrap_or_default())?;
    let server = server(raw.server.unwrap_or_default(), drain_interval)?;
    if server.auth_cache.is_some() && kubernetes.mode == KubernetesMode::Off {
        return Err(field_error(
            "server.auth.kubernetes",
            "checks tokens with the Kubernetes API, which kubernetes.enabled: false turns off",
        ));
    }
    Ok(Config {
        destinations,
        server,
        state,
        kubecost_config,
        kubecost_price_gauges,
        prices,
        nat,
        egress,
        services,
        listen,
        drain_interval,
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

fn server(raw: RawServer, drain_interval: Duration) -> Result<ServerConfig, ConfigError> {
    let d = ServerConfig::default();
    let count = |field: &str, v: Option<u32>, default: usize, max: u32| match v {
        None => Ok(default),
        Some(n) if (1..=max).contains(&n) => Ok(n as usize),
        Some(n) => Err(field_error(field, format!("{n} is outside 1..={max}"))),
    };
    Ok(ServerConfig {
        stale_after: stale_after(drain_interval),
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
                Some(TlsFiles {
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

pub(super) fn read_config(path: &std::path::Path) -> Result<String, ConfigError> {
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
