//! The price table: every region's data-transfer prices, from the built-in file or
//! `prices.file` (same schema), each figure checked.

use std::collections::BTreeMap;

use serde::Deserialize;

/// The built-in table.
pub const BUILT_IN: &str = include_str!("../../data/aws-prices.yaml");

pub const GIB: f64 = 1_073_741_824.0;

#[derive(Debug, thiserror::Error)]
pub enum PriceError {
    #[error("cannot read price file {path}: {source}")]
    Read {
        path: String,
        source: std::io::Error,
    },
    #[error("price file {origin} is not valid YAML for the price schema: {message}")]
    Syntax { origin: String, message: String },
    #[error("price file {origin}: `{field}`: {message}")]
    Field {
        origin: String,
        field: String,
        message: String,
    },
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawFile {
    schema: u32,
    date: String,
    gigabyte_bytes: Option<u64>,
    #[serde(default)]
    sources: BTreeMap<String, String>,
    regions: BTreeMap<String, RawRegion>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawRegion {
    internet_out: Vec<RawTier>,
    inter_region_out: RawInterRegion,
    cross_zone: RawEachWay,
    public_ip_in_region: Option<RawEachWay>,
    nat_gateway_per_gb: Option<f64>,
    #[serde(default)]
    source: BTreeMap<String, String>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawTier {
    up_to_gb: Option<f64>,
    usd: f64,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawInterRegion {
    default: f64,
    #[serde(default)]
    to: BTreeMap<String, f64>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawEachWay {
    out: f64,
    #[serde(rename = "in")]
    inbound: f64,
}

/// One internet-egress volume tier: the price up to `up_to_gb` (monthly, per account).
#[derive(Clone, Debug, PartialEq)]
pub struct Tier {
    pub up_to_gb: Option<f64>,
    pub usd: f64,
}

/// A region's prices, USD per GB.
#[derive(Clone, Debug, PartialEq)]
pub struct RegionPrices {
    pub internet_out: Vec<Tier>,
    pub inter_region_out: f64,
    pub inter_region_to: BTreeMap<String, f64>,
    pub cross_zone_out: f64,
    pub cross_zone_in: f64,
    pub public_ip_out: f64,
    pub public_ip_in: f64,
    /// `None` where no source gave it: NAT processing is then not priced (and said so).
    pub nat_gateway_per_gb: Option<f64>,
    pub source: BTreeMap<String, String>,
}

#[derive(Clone, Debug, PartialEq)]
pub struct PriceTable {
    pub origin: String,
    pub date: String,
    pub gigabyte_bytes: f64,
    pub regions: BTreeMap<String, RegionPrices>,
}

/// A price must be a finite, non-negative number of dollars per GB, and not absurd (every AWS
/// transfer price is well under $1/GB; $10 catches a cents-for-dollars or per-TB mistake).
fn check_price(origin: &str, field: &str, value: f64) -> Result<f64, PriceError> {
    if !value.is_finite() || !(0.0..=10.0).contains(&value) {
        return Err(PriceError::Field {
            origin: origin.to_owned(),
            field: field.to_owned(),
            message: format!("{value} is not a price in USD per GB (0 ..= 10)"),
        });
    }
    Ok(value)
}

fn region_name_ok(name: &str) -> bool {
    !name.is_empty()
        && name
            .chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-')
}

impl PriceTable {
    /// Parses and checks a price file; every error names the field.
    pub fn parse(origin: &str, text: &str) -> Result<PriceTable, PriceError> {
        let raw: RawFile = crate::vocab::yaml::from_str(text).map_err(|e| PriceError::Syntax {
            origin: origin.to_owned(),
            message: e.to_string(),
        })?;
        let field_err = |field: String, message: String| PriceError::Field {
            origin: origin.to_owned(),
            field,
            message,
        };
        if raw.schema != 1 {
            return Err(field_err(
                "schema".into(),
                format!("{} is not a schema this agent reads (1)", raw.schema),
            ));
        }
        let gigabyte_bytes = match raw.gigabyte_bytes {
            None | Some(1_073_741_824) => GIB,
            Some(1_000_000_000) => 1e9,
            Some(other) => {
                return Err(field_err(
                    "gigabyte_bytes".into(),
                    format!("{other} is neither 1073741824 (2^30, AWS's GB) nor 1000000000"),
                ))
            }
        };
        if raw.regions.is_empty() {
            return Err(field_err("regions".into(), "lists no region".into()));
        }
        let mut regions = BTreeMap::new();
        for (name, r) in raw.regions {
            let at = |f: &str| format!("regions.{name}.{f}");
            if !region_name_ok(&name) {
                return Err(field_err(
                    format!("regions.{name}"),
                    "is not a region name such as us-east-1".into(),
                ));
            }
            if r.internet_out.is_empty() {
                return Err(field_err(at("internet_out"), "lists no tier".into()));
            }
            let mut tiers = Vec::with_capacity(r.internet_out.len());
            let mut last_bound = 0.0;
            let n = r.internet_out.len();
            for (i, t) in r.internet_out.iter().enumerate() {
                let usd = check_price(origin, &at(&format!("internet_out[{i}].usd")), t.usd)?;
                match (t.up_to_gb, i + 1 == n) {
                    (Some(b), false) if b.is_finite() && b > last_bound => last_bound = b,
                    (None, true) => {}
                    (Some(b), false) => {
                        return Err(field_err(
                            at(&format!("internet_out[{i}].up_to_gb")),
                            format!(
                                "{b} does not rise above the previous tier's bound {last_bound}"
                            ),
                        ))
                    }
                    (None, false) => {
                        return Err(field_err(
                            at(&format!("internet_out[{i}].up_to_gb")),
                            "missing: only the last tier is unbounded".into(),
                        ))
                    }
                    (Some(_), true) => {
                        return Err(field_err(
                            at(&format!("internet_out[{i}].up_to_gb")),
                            "the last tier must be unbounded (no up_to_gb)".into(),
                        ))
                    }
                }
                tiers.push(Tier {
                    up_to_gb: t.up_to_gb,
                    usd,
                });
            }
            let mut inter_region_to = BTreeMap::new();
            for (to, p) in &r.inter_region_out.to {
                if !region_name_ok(to) {
                    return Err(field_err(
                        at(&format!("inter_region_out.to.{to}")),
                        "is not a region name".into(),
                    ));
                }
                inter_region_to.insert(
                    to.clone(),
                    check_price(origin, &at(&format!("inter_region_out.to.{to}")), *p)?,
                );
            }
            let public = r.public_ip_in_region.as_ref().unwrap_or(&r.cross_zone);
            for (key, value) in &r.source {
                if !raw
                    .sources
                    .contains_key(value.split(' ').next().unwrap_or(""))
                {
                    return Err(field_err(
                        at(&format!("source.{key}")),
                        format!("{value:?} does not start with a key of `sources`"),
                    ));
                }
            }
            regions.insert(
                name.clone(),
                RegionPrices {
                    internet_out: tiers,
                    inter_region_out: check_price(
                        origin,
                        &at("inter_region_out.default"),
                        r.inter_region_out.default,
                    )?,
                    inter_region_to,
                    cross_zone_out: check_price(origin, &at("cross_zone.out"), r.cross_zone.out)?,
                    cross_zone_in: check_price(origin, &at("cross_zone.in"), r.cross_zone.inbound)?,
                    public_ip_out: check_price(origin, &at("public_ip_in_region.out"), public.out)?,
                    public_ip_in: check_price(
                        origin,
                        &at("public_ip_in_region.in"),
                        public.inbound,
                    )?,
                    nat_gateway_per_gb: r
                        .nat_gateway_per_gb
                        .map(|p| check_price(origin, &at("nat_gateway_per_gb"), p))
                        .transpose()?,
                    source: r.source,
                },
            );
        }
        Ok(PriceTable {
            origin: origin.to_owned(),
            date: raw.date,
            gigabyte_bytes,
            regions,
        })
    }

    pub fn built_in() -> PriceTable {
        // Checked by a unit test; an error here is a build defect.
        PriceTable::parse("built-in AWS prices", BUILT_IN).unwrap_or_else(|e| {
            tracing::error!(error = %e, "the built-in price table is invalid");
            PriceTable {
                origin: "none".into(),
                date: String::new(),
                gigabyte_bytes: GIB,
                regions: BTreeMap::new(),
            }
        })
    }

    pub fn load(path: &std::path::Path) -> Result<PriceTable, PriceError> {
        let (origin, text) = crate::vocab::read_input(path)
            .map_err(|(path, source)| PriceError::Read { path, source })?;
        PriceTable::parse(&origin, &text)
    }
}
