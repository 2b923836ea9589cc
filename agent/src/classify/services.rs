//! Cloud-service address ranges: which public addresses are an AWS service (S3, DynamoDB…) and in
//! which region. Bytes to them are tagged with the service, and in-region service traffic is not
//! internet traffic on the bill.
//!
//! The bundled table (`agent/data/aws-service-ranges.tsv`) is derived from AWS's published
//! `ip-ranges.json`; its header says from which `createDate`, and `cargo xtask service-ranges
//! FILE` regenerates it from a fresh download. `services.file` replaces it with a file of the same
//! format: one `prefix service region` per line, `#` comments.

use std::{collections::HashMap, net::IpAddr, path::Path, sync::Arc};

use crate::vocab::{Cidr, PrefixTable};

/// The bundled table.
pub const BUNDLED: &str = include_str!("../../data/aws-service-ranges.tsv");

#[derive(Debug, thiserror::Error)]
pub enum RangesError {
    #[error("cannot read service ranges file {path}: {source}")]
    Read {
        path: String,
        source: std::io::Error,
    },
    #[error("{source_name} line {line}: {message}")]
    Line {
        source_name: String,
        line: usize,
        message: String,
    },
}

/// A service and the region its range is in.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Service {
    /// e.g. `aws-s3`.
    pub tag: Arc<str>,
    /// e.g. `us-east-1`; `None` for global ranges.
    pub region: Option<Arc<str>>,
}

#[derive(Clone, Debug, Default)]
pub struct ServiceRanges {
    table: PrefixTable<Service>,
    /// Where the table came from (for logs).
    pub origin: String,
    pub prefixes: usize,
}

impl ServiceRanges {
    /// Parses the table format. Every error names the line and what is wrong with it.
    pub fn parse(source_name: &str, text: &str) -> Result<ServiceRanges, RangesError> {
        let err = |line: usize, message: String| RangesError::Line {
            source_name: source_name.to_owned(),
            line,
            message,
        };
        let mut interned: HashMap<String, Arc<str>> = HashMap::new();
        let mut intern = |s: &str| -> Arc<str> {
            interned
                .entry(s.to_owned())
                .or_insert_with(|| Arc::from(s))
                .clone()
        };
        let mut table = PrefixTable::default();
        let mut prefixes = 0;
        for (i, raw) in text.lines().enumerate() {
            let line = i + 1;
            let content = raw.split('#').next().unwrap_or("").trim();
            if content.is_empty() {
                continue;
            }
            let fields: Vec<&str> = content.split_whitespace().collect();
            let [prefix, tag, region] = fields[..] else {
                return Err(err(
                    line,
                    format!(
                        "expected 3 fields (prefix service region), found {}: {content:?}",
                        fields.len()
                    ),
                ));
            };
            let cidr: Cidr = prefix
                .parse()
                .map_err(|e| err(line, format!("prefix {prefix:?}: {e}")))?;
            crate::vocab::check_service_tag(tag).map_err(|e| err(line, format!("service: {e}")))?;
            if !region
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || c == '-')
            {
                return Err(err(line, format!("region {region:?} is not a region name")));
            }
            let service = Service {
                tag: intern(tag),
                region: (region != "GLOBAL").then(|| intern(region)),
            };
            table.insert(cidr, service);
            prefixes += 1;
        }
        Ok(ServiceRanges {
            table,
            origin: source_name.to_owned(),
            prefixes,
        })
    }

    pub fn bundled() -> ServiceRanges {
        // The bundled table is checked by a unit test; an error here is a build defect.
        ServiceRanges::parse("bundled AWS service ranges", BUNDLED).unwrap_or_default()
    }

    pub fn load(path: &Path) -> Result<ServiceRanges, RangesError> {
        let (origin, text) = crate::vocab::read_input(path)
            .map_err(|(path, source)| RangesError::Read { path, source })?;
        ServiceRanges::parse(&origin, &text)
    }

    pub fn lookup(&self, addr: IpAddr) -> Option<&Service> {
        self.table.lookup(addr)
    }
}

/// The `createDate` line of the bundled table's header.
pub fn bundled_date() -> Option<&'static str> {
    BUNDLED
        .lines()
        .find_map(|l| l.strip_prefix("# createDate: "))
        .map(str::trim)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_bundled_table_parses_and_places_s3_and_dynamodb() {
        let t = ServiceRanges::parse("bundled", BUNDLED).unwrap();
        assert!(t.prefixes > 100, "only {} prefixes", t.prefixes);
        assert!(bundled_date().is_some(), "the bundled table has no date");
        let mut tags: Vec<&str> = t.table.values().map(|s| &*s.tag).collect();
        tags.sort();
        tags.dedup();
        assert_eq!(tags, vec!["aws-dynamodb", "aws-s3"]);
        // Long-standing, documented ranges: S3 and DynamoDB endpoints of us-east-1.
        let at = |a: &str| {
            t.lookup(a.parse().unwrap())
                .map(|s| (s.tag.to_string(), s.region.as_deref().map(str::to_owned)))
        };
        let us_east_1 = Some("us-east-1".to_owned());
        assert_eq!(
            at("52.216.10.1"),
            Some(("aws-s3".into(), us_east_1.clone()))
        );
        assert_eq!(at("52.94.0.10"), Some(("aws-dynamodb".into(), us_east_1)));
        assert_eq!(at("203.0.113.1"), None);
    }

    #[test]
    fn longest_prefix_wins_and_errors_name_the_line() {
        let t = ServiceRanges::parse(
            "test",
            "# comment\n52.216.0.0/15 aws-s3 us-east-1\n52.216.4.0/24\taws-dynamodb\tus-east-1 # x\n2600:1f18::/33 aws-s3 us-east-1\n",
        )
        .unwrap();
        let hit = |a: &str| t.lookup(a.parse().unwrap()).map(|s| s.tag.to_string());
        assert_eq!(hit("52.216.4.9").as_deref(), Some("aws-dynamodb"));
        assert_eq!(hit("52.217.0.1").as_deref(), Some("aws-s3"));
        assert_eq!(hit("2600:1f18::1").as_deref(), Some("aws-s3"));
        assert_eq!(hit("203.0.113.1"), None);
        let e = ServiceRanges::parse("f", "1.2.3.0/24 aws-s3 us-east-1\n1.2.3.0/40 aws-s3 x\n")
            .unwrap_err()
            .to_string();
        assert!(e.contains("f line 2") && e.contains("1.2.3.0/40"), "{e}");
        let e = ServiceRanges::parse("f", "1.2.3.0/24 aws-s3\n")
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("line 1") && e.contains("expected 3 fields"),
            "{e}"
        );
        let e = ServiceRanges::parse("f", "1.2.3.0/24 AWS_S3 r\n")
            .unwrap_err()
            .to_string();
        assert!(e.contains("line 1") && e.contains("AWS_S3"), "{e}");
    }
}
