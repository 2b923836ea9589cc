//! Kubecost's `network-costs-config` ConfigMap (`config.yaml`), accepted as it is, so that a
//! cluster switching from Kubecost's network-costs DaemonSet keeps its classification rules.
//!
//! ```yaml
//! destinations:
//!   in-zone: ["10.0.0.0/8"]
//!   in-region: []
//!   cross-region: []
//!   internet: []
//!   direct-classification: [{ region: us-east-1, zone: us-east-1c, ips: ["10.0.0.0/24"] }]
//! services:
//!   amazon-web-services: true
//!   services: [{ service: test-service-1, ips: ["19.1.1.2"] }]
//! ```
//!
//! Kubecost's precedence is kept: direct-classification first, then internet, then the in-zone,
//! in-region and cross-region lists. One deliberate difference: the lists (not
//! direct-classification) only apply to addresses that the cluster itself does not place (Nodes'
//! addresses and pod CIDRs, `topology.zones`): the chart's default `in-zone: 10.0.0.0/8` would
//! otherwise call every cross-zone byte in a 10/8 VPC same-zone (kubecost #820, #1630). Addresses in
//! no list keep netcost's own classification, where Kubecost says "internet".

use std::net::IpAddr;

use serde::Deserialize;

use crate::vocab::{check_service_tag, Cidr, Place, PrefixTable, TrafficClass};

#[derive(Debug, thiserror::Error)]
pub enum KubecostConfigError {
    #[error("cannot read Kubecost network-costs config {path}: {source}")]
    Read {
        path: String,
        source: std::io::Error,
    },
    #[error("Kubecost network-costs config {origin} is not valid: {message}")]
    Syntax { origin: String, message: String },
    #[error("Kubecost network-costs config {origin}: `{field}`: {message}")]
    Field {
        origin: String,
        field: String,
        message: String,
    },
}

// Unknown keys are errors that name them: a typo (`in_zone` for `in-zone`) would otherwise drop a
// rule silently and misclassify every byte it was for.
#[derive(Debug, Default, Deserialize)]
#[serde(rename_all = "kebab-case", deny_unknown_fields)]
struct RawConfig {
    #[serde(default)]
    destinations: RawDestinations,
    #[serde(default)]
    services: RawServices,
}

#[derive(Debug, Default, Deserialize)]
#[serde(rename_all = "kebab-case", deny_unknown_fields)]
struct RawDestinations {
    #[serde(default)]
    in_zone: Vec<String>,
    #[serde(default)]
    in_region: Vec<String>,
    #[serde(default)]
    cross_region: Vec<String>,
    #[serde(default)]
    internet: Vec<String>,
    #[serde(default)]
    direct_classification: Vec<RawDirect>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawDirect {
    region: String,
    zone: Option<String>,
    #[serde(default)]
    ips: Vec<String>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(rename_all = "kebab-case", deny_unknown_fields)]
struct RawServices {
    amazon_web_services: Option<bool>,
    google_cloud_services: Option<bool>,
    azure_cloud_services: Option<bool>,
    #[serde(default)]
    services: Vec<RawService>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawService {
    service: String,
    #[serde(default)]
    ips: Vec<String>,
}

/// The rules of a Kubecost config, in its precedence.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct KubecostRules {
    pub direct: PrefixTable<Place>,
    pub internet: PrefixTable<()>,
    /// in-zone, in-region and cross-region entries: the longest prefix decides among them.
    pub lists: PrefixTable<TrafficClass>,
    /// `services.amazon-web-services` (the bundled AWS ranges), default true.
    pub amazon_web_services: bool,
    /// Custom services: prefix → tag.
    pub services: PrefixTable<String>,
}

impl KubecostRules {
    pub fn parse(origin: &str, text: &str) -> Result<KubecostRules, KubecostConfigError> {
        let raw: RawConfig =
            crate::vocab::yaml::from_str(text).map_err(|e| KubecostConfigError::Syntax {
                origin: origin.to_owned(),
                message: e.to_string(),
            })?;
        let err = |field: String, message: String| KubecostConfigError::Field {
            origin: origin.to_owned(),
            field,
            message,
        };
        let cidrs = |field: &str, list: &[String]| -> Result<Vec<Cidr>, KubecostConfigError> {
            list.iter()
                .enumerate()
                .map(|(i, t)| {
                    t.parse::<Cidr>()
                        .map_err(|e| err(format!("{field}[{i}]"), format!("{t:?}: {e}")))
                })
                .collect()
        };
        let d = &raw.destinations;
        let mut rules = KubecostRules {
            amazon_web_services: raw.services.amazon_web_services.unwrap_or(true),
            ..KubecostRules::default()
        };
        for c in cidrs("destinations.internet", &d.internet)? {
            rules.internet.insert(c, ());
        }
        for (field, list, class) in [
            ("destinations.in-zone", &d.in_zone, TrafficClass::SameZone),
            (
                "destinations.in-region",
                &d.in_region,
                TrafficClass::CrossZone,
            ),
            (
                "destinations.cross-region",
                &d.cross_region,
                TrafficClass::CrossRegion,
            ),
        ] {
            for c in cidrs(field, list)? {
                rules.lists.insert(c, class);
            }
        }
        for (i, dc) in d.direct_classification.iter().enumerate() {
            let field = format!("destinations.direct-classification[{i}]");
            if dc.region.trim().is_empty() {
                return Err(err(format!("{field}.region"), "must not be empty".into()));
            }
            let place = Place {
                zone: dc.zone.clone().filter(|z| !z.trim().is_empty()),
                zone_id: None,
                region: Some(dc.region.trim().to_owned()),
            };
            for c in cidrs(&format!("{field}.ips"), &dc.ips)? {
                rules.direct.insert(c, place.clone());
            }
        }
        for (i, s) in raw.services.services.iter().enumerate() {
            let tag = check_service_tag(&s.service)
                .map_err(|e| err(format!("services.services[{i}].service"), e))?;
            for c in cidrs(&format!("services.services[{i}].ips"), &s.ips)? {
                rules.services.insert(c, tag.clone());
            }
        }
        for (flag, name) in [
            (raw.services.google_cloud_services, "google-cloud-services"),
            (raw.services.azure_cloud_services, "azure-cloud-services"),
        ] {
            if flag == Some(true) {
                tracing::info!(
                    setting = name,
                    "ignored: netcost runs on AWS and bundles AWS's service ranges only"
                );
            }
        }
        Ok(rules)
    }

    pub fn load(path: &std::path::Path) -> Result<KubecostRules, KubecostConfigError> {
        let (origin, text) = crate::vocab::read_input(path)
            .map_err(|(path, source)| KubecostConfigError::Read { path, source })?;
        KubecostRules::parse(&origin, &text)
    }

    /// A direct classification of `addr` (the place it names).
    pub fn direct(&self, addr: IpAddr) -> Option<&Place> {
        self.direct.lookup(addr)
    }

    /// The class the internet and zone lists give `addr`, in Kubecost's precedence.
    pub fn listed(&self, addr: IpAddr) -> Option<TrafficClass> {
        if self.internet.lookup(addr).is_some() {
            return Some(TrafficClass::Internet);
        }
        self.lists.lookup(addr).copied()
    }

    pub fn service(&self, addr: IpAddr) -> Option<&str> {
        self.services.lookup(addr).map(String::as_str)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The Helm chart's default, plus a direct classification, a custom service and lists.
    const CHART: &str = r#"
destinations:
  in-zone: ["127.0.0.0/8", "169.254.0.0/16", "10.0.0.0/8", "172.16.0.0/12", "192.168.0.0/16"]
  in-region: ["100.64.0.0/10"]
  cross-region: ["10.1.0.0/16"]
  internet: ["10.99.0.0/16"]
  direct-classification:
    - region: us-east-1
      zone: us-east-1c
      ips: ["10.0.5.0/24"]
services:
  google-cloud-services: true
  amazon-web-services: true
  azure-cloud-services: false
  services:
    - service: "test-service-1"
      ips: ["19.1.1.2"]
"#;

    fn ip(a: &str) -> IpAddr {
        a.parse().unwrap()
    }

    #[test]
    fn parses_the_charts_config_with_kubecosts_precedence() {
        let r = KubecostRules::parse("config.yaml", CHART).unwrap();
        assert_eq!(
            r.direct(ip("10.0.5.9")).and_then(|p| p.zone.as_deref()),
            Some("us-east-1c")
        );
        // internet beats in-zone's 10.0.0.0/8.
        assert_eq!(r.listed(ip("10.99.1.1")), Some(TrafficClass::Internet));
        // The longest list prefix wins: cross-region's /16 inside in-zone's /8.
        assert_eq!(r.listed(ip("10.1.2.3")), Some(TrafficClass::CrossRegion));
        assert_eq!(r.listed(ip("10.200.0.1")), Some(TrafficClass::SameZone));
        assert_eq!(r.listed(ip("100.64.3.3")), Some(TrafficClass::CrossZone));
        assert_eq!(r.listed(ip("8.8.8.8")), None);
        assert_eq!(r.service(ip("19.1.1.2")), Some("test-service-1"));
        assert!(r.amazon_web_services);
    }

    #[test]
    fn errors_name_the_field() {
        let e = KubecostRules::parse("config.yaml", &CHART.replace("10.1.0.0/16", "10.1.0.0/40"))
            .unwrap_err()
            .to_string();
        assert!(e.contains("`destinations.cross-region[0]`"), "{e}");
        let e = KubecostRules::parse(
            "config.yaml",
            &CHART.replace("ips: [\"10.0.5.0/24\"]", "ips: [\"x\"]"),
        )
        .unwrap_err()
        .to_string();
        assert!(
            e.contains("`destinations.direct-classification[0].ips[0]`"),
            "{e}"
        );
        let e = KubecostRules::parse("config.yaml", "destinations: [1]")
            .unwrap_err()
            .to_string();
        assert!(e.contains("config.yaml"), "{e}");
    }

    #[test]
    fn an_unknown_key_is_an_error_naming_it() {
        for (typo, name) in [
            ("in-zone:", "in_zone"),
            ("amazon-web-services:", "amazon_web_service"),
            ("destinations:", "destination"),
        ] {
            let text = CHART.replacen(typo, &format!("{name}:"), 1);
            assert_ne!(text, CHART, "{typo}");
            let e = KubecostRules::parse("config.yaml", &text)
                .unwrap_err()
                .to_string();
            assert!(e.contains(name) && e.contains("config.yaml"), "{e}");
        }
    }
}
