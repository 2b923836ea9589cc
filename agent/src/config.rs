//! The agent's configuration file (YAML). Every error names the field that is wrong.
//!
//! ```yaml
//! listen: "[::]:3001"          # metrics, /healthz, /readyz (IPv6 any also accepts IPv4)
//! drain_interval_seconds: 5
//! cgroup_root: auto            # or a path; auto reads /proc/mounts
//! maps: { flow_entries: 65536, overflow_entries: 4096 }
//! topology:
//!   region: us-east-1
//!   zone: us-east-1a
//!   vpc_cidrs: ["10.0.0.0/16"]
//!   zones:
//!     - { name: us-east-1b, region: us-east-1, cidrs: ["10.0.16.0/20"] }
//!   regions:
//!     - { name: eu-west-1, cidrs: ["10.1.0.0/16"] }
//! ```

use std::{net::SocketAddr, path::PathBuf, time::Duration};

use serde::Deserialize;

use crate::topology::{Cidr, StaticTopology, ZoneEntry};

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
    drain_interval_seconds: Option<f64>,
    #[serde(default)]
    cgroup_root: Option<String>,
    #[serde(default)]
    maps: Option<RawMaps>,
    topology: RawTopology,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawMaps {
    flow_entries: Option<u32>,
    overflow_entries: Option<u32>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawTopology {
    region: String,
    zone: String,
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

#[derive(Debug, Clone)]
pub struct Config {
    pub listen: SocketAddr,
    pub drain_interval: Duration,
    pub cgroup_root: CgroupRoot,
    pub flow_entries: u32,
    pub overflow_entries: u32,
    pub topology: StaticTopology,
}

pub const DEFAULT_LISTEN: &str = "[::]:3001";

impl Config {
    pub fn load(path: &std::path::Path) -> Result<Config, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
            path: path.to_owned(),
            source,
        })?;
        Config::parse(&text).map_err(|e| match e {
            ConfigError::Syntax { message, .. } => ConfigError::Syntax {
                path: path.to_owned(),
                message,
            },
            other => other,
        })
    }

    pub fn parse(text: &str) -> Result<Config, ConfigError> {
        let raw: RawConfig = serde_saphyr::from_str(text).map_err(|e| ConfigError::Syntax {
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
        Ok(Config {
            listen,
            drain_interval: Duration::from_secs_f64(interval),
            cgroup_root,
            flow_entries,
            overflow_entries,
            topology: topology(raw.topology)?,
        })
    }
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
    let region = non_empty("topology.region", &raw.region)?;
    let zone = non_empty("topology.zone", &raw.zone)?;
    let vpc = cidrs("topology.vpc_cidrs", &raw.vpc_cidrs)?;
    let mut entries = Vec::new();
    for (i, z) in raw.zones.iter().enumerate() {
        let name = non_empty(&format!("topology.zones[{i}].name"), &z.name)?;
        let zregion = non_empty(&format!("topology.zones[{i}].region"), &z.region)?;
        for cidr in cidrs(&format!("topology.zones[{i}].cidrs"), &z.cidrs)? {
            entries.push((
                cidr,
                ZoneEntry {
                    zone: Some(name.clone()),
                    region: zregion.clone(),
                },
            ));
        }
    }
    for (i, r) in raw.regions.iter().enumerate() {
        let name = non_empty(&format!("topology.regions[{i}].name"), &r.name)?;
        for cidr in cidrs(&format!("topology.regions[{i}].cidrs"), &r.cidrs)? {
            entries.push((
                cidr,
                ZoneEntry {
                    zone: None,
                    region: name.clone(),
                },
            ));
        }
    }
    Ok(StaticTopology::new(region, zone, vpc, entries))
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
        let e = error_of("topology: {region: r}\n");
        assert!(e.contains("zone"), "{e}");
        let e = error_of(&format!("{GOOD}maps: {{ flow_entries: 1 }}\n"));
        assert!(e.contains("maps.flow_entries"), "{e}");
    }
}
