//! `cargo xtask prices OFFER.json [EC2_OFFER.json] [--out FILE]`: reduces AWS's Price List offer
//! files to a netcost price file (the schema of `agent/data/aws-prices.yaml`).
//!
//! - `AWSDataTransfer` offer (<https://pricing.us-east-1.amazonaws.com/offers/v1.0/aws/AWSDataTransfer/current/index.json>):
//!   `transferType` "AWS Outbound" to `toLocation` "External" gives the internet tiers,
//!   "InterRegion Outbound" the price from `fromRegionCode` to `toRegionCode`, "IntraRegion" the
//!   cross-zone price (charged each way).
//! - `AmazonEC2` offer (optional, large): usage types ending in `NatGateway-Bytes` give the NAT
//!   gateway's per-GB processing price by `regionCode`.
//!
//! Prices are on-demand (`terms.OnDemand`), USD, unit GB.

use std::collections::{BTreeMap, HashMap};

use anyhow::{bail, Context, Result};
use serde_json::Value;

/// A price dimension: beginRange GB, endRange GB (`None`: Inf), USD per GB.
type Dimension = (f64, Option<f64>, f64);

#[derive(Debug, Default)]
struct Region {
    internet: Vec<Dimension>,
    inter: BTreeMap<String, f64>,
    cross_zone: Option<f64>,
    nat: Option<f64>,
}

fn text<'a>(v: &'a Value, key: &str) -> Option<&'a str> {
    v.get(key).and_then(Value::as_str)
}

/// sku → price dimensions (begin, end, USD) of its on-demand term.
fn on_demand(doc: &Value, origin: &str) -> Result<HashMap<String, Vec<Dimension>>> {
    let terms = doc
        .pointer("/terms/OnDemand")
        .and_then(Value::as_object)
        .with_context(|| format!("{origin}: no terms.OnDemand"))?;
    let mut out = HashMap::new();
    for (sku, offers) in terms {
        let mut dims = Vec::new();
        for offer in offers.as_object().into_iter().flat_map(|o| o.values()) {
            for d in offer
                .get("priceDimensions")
                .and_then(Value::as_object)
                .into_iter()
                .flat_map(|o| o.values())
            {
                if text(d, "unit").is_some_and(|u| !u.eq_ignore_ascii_case("GB")) {
                    continue;
                }
                let usd: f64 = d
                    .pointer("/pricePerUnit/USD")
                    .and_then(Value::as_str)
                    .with_context(|| format!("{origin}: terms.OnDemand.{sku}: a price dimension has no pricePerUnit.USD"))?
                    .parse()
                    .with_context(|| format!("{origin}: terms.OnDemand.{sku}: pricePerUnit.USD is not a number"))?;
                let begin: f64 = text(d, "beginRange").unwrap_or("0").parse().unwrap_or(0.0);
                let end = match text(d, "endRange") {
                    None | Some("Inf") => None,
                    Some(e) => Some(e.parse().with_context(|| {
                        format!("{origin}: terms.OnDemand.{sku}: endRange {e:?} is not a number")
                    })?),
                };
                dims.push((begin, end, usd));
            }
        }
        dims.sort_by(|a, b| a.0.total_cmp(&b.0));
        out.insert(sku.clone(), dims);
    }
    Ok(out)
}

fn products(doc: &Value, origin: &str) -> Result<Vec<(String, Value)>> {
    Ok(doc
        .get("products")
        .and_then(Value::as_object)
        .with_context(|| {
            format!("{origin}: no products object (is this a Price List offer file?)")
        })?
        .iter()
        .map(|(k, v)| {
            (
                k.clone(),
                v.get("attributes").cloned().unwrap_or(Value::Null),
            )
        })
        .collect())
}

pub fn reduce(transfer: &str, ec2: Option<&str>) -> Result<String> {
    let doc: Value =
        serde_json::from_str(transfer).context("the AWSDataTransfer offer is not JSON")?;
    let origin = "AWSDataTransfer offer";
    let publication = text(&doc, "publicationDate")
        .unwrap_or("unknown")
        .to_owned();
    let version = text(&doc, "version").unwrap_or("unknown").to_owned();
    let prices = on_demand(&doc, origin)?;
    let mut regions: BTreeMap<String, Region> = BTreeMap::new();
    for (sku, a) in products(&doc, origin)? {
        let (Some(kind), Some(from)) = (text(&a, "transferType"), text(&a, "fromRegionCode"))
        else {
            continue;
        };
        let Some(dims) = prices.get(&sku) else {
            continue;
        };
        let first = dims.first().map(|d| d.2);
        let region = regions.entry(from.to_owned()).or_default();
        match kind {
            "AWS Outbound" if text(&a, "toLocation") == Some("External") => {
                region.internet = dims.clone();
            }
            "InterRegion Outbound" => {
                if let (Some(to), Some(p)) = (text(&a, "toRegionCode"), first) {
                    region.inter.insert(to.to_owned(), p);
                }
            }
            "IntraRegion" => region.cross_zone = first,
            _ => {}
        }
    }
    if let Some(ec2) = ec2 {
        let doc: Value = serde_json::from_str(ec2).context("the AmazonEC2 offer is not JSON")?;
        let prices = on_demand(&doc, "AmazonEC2 offer")?;
        for (sku, a) in products(&doc, "AmazonEC2 offer")? {
            let nat = text(&a, "usagetype").is_some_and(|u| u.ends_with("NatGateway-Bytes"));
            if let (true, Some(region), Some(dims)) =
                (nat, text(&a, "regionCode"), prices.get(&sku))
            {
                if let Some(r) = regions.get_mut(region) {
                    r.nat = dims.first().map(|d| d.2);
                }
            }
        }
    }
    regions.retain(|_, r| !r.internet.is_empty());
    if regions.is_empty() {
        bail!("{origin}: no region with internet egress prices (transferType \"AWS Outbound\" to \"External\")");
    }
    let mut out = format!(
        "# AWS data-transfer prices reduced from AWS's Price List by `cargo xtask prices`.\n\
         # AWSDataTransfer offer version {version}, published {publication}.\n\
         schema: 1\ndate: \"{}\"\ngigabyte_bytes: 1073741824\nsources:\n  price-list: \"AWS Price List API, AWSDataTransfer offer {version}{}\"\nregions:\n",
        publication.get(..10).unwrap_or(&publication),
        if ec2.is_some() { " and AmazonEC2 offer (NatGateway-Bytes)" } else { "" }
    );
    for (name, r) in &regions {
        // The free tier of the first 100 GB a month is account-wide: price from the first paid
        // tier, whose lower bound is then 0.
        let paid: Vec<_> = r.internet.iter().filter(|d| d.2 > 0.0).collect();
        let tiers: Vec<String> = paid
            .iter()
            .map(|(_, end, usd)| match end {
                Some(e) => format!("{{ up_to_gb: {e}, usd: {usd} }}"),
                None => format!("{{ usd: {usd} }}"),
            })
            .collect();
        let mut counts: BTreeMap<String, usize> = BTreeMap::new();
        for p in r.inter.values() {
            *counts.entry(p.to_string()).or_default() += 1;
        }
        let default = counts
            .iter()
            .max_by_key(|(_, n)| **n)
            .map(|(p, _)| p.clone())
            .unwrap_or_else(|| "0".into());
        let to: Vec<String> = r
            .inter
            .iter()
            .filter(|(_, p)| p.to_string() != default)
            .map(|(k, p)| format!("{k}: {p}"))
            .collect();
        let cz = r.cross_zone.unwrap_or(0.01);
        out.push_str(&format!(
            "  {name}:\n    internet_out: [{}]\n",
            tiers.join(", ")
        ));
        if to.is_empty() {
            out.push_str(&format!("    inter_region_out: {{ default: {default} }}\n"));
        } else {
            out.push_str(&format!(
                "    inter_region_out: {{ default: {default}, to: {{ {} }} }}\n",
                to.join(", ")
            ));
        }
        out.push_str(&format!("    cross_zone: {{ out: {cz}, in: {cz} }}\n"));
        if let Some(nat) = r.nat {
            out.push_str(&format!("    nat_gateway_per_gb: {nat}\n"));
        }
        out.push_str("    source: { transfer: price-list }\n");
    }
    Ok(out)
}

pub fn run(args: &[String]) -> Result<()> {
    let mut files = Vec::new();
    let mut out = None;
    let mut it = args.iter();
    while let Some(a) = it.next() {
        if a == "--out" {
            out = Some(it.next().context("--out needs a file")?.clone());
        } else {
            files.push(a.clone());
        }
    }
    let (transfer, ec2) = match files.as_slice() {
        [t] => (t, None),
        [t, e] => (t, Some(e)),
        _ => bail!("usage: cargo xtask prices <AWSDataTransfer offer.json> [<AmazonEC2 offer.json>] [--out FILE]"),
    };
    let read = |p: &str| std::fs::read_to_string(p).with_context(|| format!("reading {p}"));
    let ec2_text = ec2.map(|p| read(p)).transpose()?;
    let yaml = reduce(&read(transfer)?, ec2_text.as_deref())?;
    match out {
        Some(p) => std::fs::write(&p, &yaml).with_context(|| format!("writing {p}"))?,
        None => print!("{yaml}"),
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Shaped like the real offer files: other product families, a free-tier dimension, Inf.
    const TRANSFER: &str = r#"{
  "formatVersion": "v1.0", "offerCode": "AWSDataTransfer", "version": "20250618000000", "publicationDate": "2025-06-18T00:00:00Z",
  "products": {
    "OUT1": {"sku": "OUT1", "productFamily": "Data Transfer", "attributes": {"transferType": "AWS Outbound", "fromLocation": "US East (N. Virginia)", "fromLocationType": "AWS Region", "toLocation": "External", "toLocationType": "Other", "usagetype": "DataTransfer-Out-Bytes", "fromRegionCode": "us-east-1", "servicecode": "AWSDataTransfer"}},
    "IN1": {"sku": "IN1", "productFamily": "Data Transfer", "attributes": {"transferType": "AWS Inbound", "fromLocation": "External", "toLocation": "US East (N. Virginia)", "toRegionCode": "us-east-1", "usagetype": "DataTransfer-In-Bytes"}},
    "IR1": {"sku": "IR1", "productFamily": "Data Transfer", "attributes": {"transferType": "InterRegion Outbound", "fromRegionCode": "us-east-1", "toRegionCode": "us-east-2", "usagetype": "USE1-USE2-AWS-Out-Bytes"}},
    "IR2": {"sku": "IR2", "productFamily": "Data Transfer", "attributes": {"transferType": "InterRegion Outbound", "fromRegionCode": "us-east-1", "toRegionCode": "eu-west-1", "usagetype": "USE1-EU-AWS-Out-Bytes"}},
    "IR3": {"sku": "IR3", "productFamily": "Data Transfer", "attributes": {"transferType": "InterRegion Outbound", "fromRegionCode": "us-east-1", "toRegionCode": "us-west-2", "usagetype": "USE1-USW2-AWS-Out-Bytes"}},
    "AZ1": {"sku": "AZ1", "productFamily": "Data Transfer", "attributes": {"transferType": "IntraRegion", "fromRegionCode": "us-east-1", "toRegionCode": "us-east-1", "usagetype": "DataTransfer-Regional-Bytes"}}
  },
  "terms": {"OnDemand": {
    "OUT1": {"OUT1.JRTCKXETXF": {"priceDimensions": {
      "OUT1.JRTCKXETXF.1": {"unit": "GB", "beginRange": "0", "endRange": "100", "pricePerUnit": {"USD": "0.0000000000"}},
      "OUT1.JRTCKXETXF.2": {"unit": "GB", "beginRange": "100", "endRange": "10240", "pricePerUnit": {"USD": "0.0900000000"}},
      "OUT1.JRTCKXETXF.3": {"unit": "GB", "beginRange": "10240", "endRange": "51200", "pricePerUnit": {"USD": "0.0850000000"}},
      "OUT1.JRTCKXETXF.4": {"unit": "GB", "beginRange": "51200", "endRange": "153600", "pricePerUnit": {"USD": "0.0700000000"}},
      "OUT1.JRTCKXETXF.5": {"unit": "GB", "beginRange": "153600", "endRange": "Inf", "pricePerUnit": {"USD": "0.0500000000"}}}}},
    "IN1": {"IN1.JRTCKXETXF": {"priceDimensions": {"IN1.JRTCKXETXF.1": {"unit": "GB", "beginRange": "0", "endRange": "Inf", "pricePerUnit": {"USD": "0.0000000000"}}}}},
    "IR1": {"IR1.JRTCKXETXF": {"priceDimensions": {"IR1.JRTCKXETXF.1": {"unit": "GB", "beginRange": "0", "endRange": "Inf", "pricePerUnit": {"USD": "0.0100000000"}}}}},
    "IR2": {"IR2.JRTCKXETXF": {"priceDimensions": {"IR2.JRTCKXETXF.1": {"unit": "GB", "beginRange": "0", "endRange": "Inf", "pricePerUnit": {"USD": "0.0200000000"}}}}},
    "IR3": {"IR3.JRTCKXETXF": {"priceDimensions": {"IR3.JRTCKXETXF.1": {"unit": "GB", "beginRange": "0", "endRange": "Inf", "pricePerUnit": {"USD": "0.0200000000"}}}}},
    "AZ1": {"AZ1.JRTCKXETXF": {"priceDimensions": {"AZ1.JRTCKXETXF.1": {"unit": "GB", "beginRange": "0", "endRange": "Inf", "pricePerUnit": {"USD": "0.0100000000"}}}}}
  }}
}"#;

    const EC2: &str = r#"{"products": {
    "N1": {"sku": "N1", "productFamily": "NAT Gateway", "attributes": {"regionCode": "us-east-1", "usagetype": "NatGateway-Bytes", "group": "NGW:NatGateway"}},
    "H1": {"sku": "H1", "productFamily": "NAT Gateway", "attributes": {"regionCode": "us-east-1", "usagetype": "NatGateway-Hours"}}},
  "terms": {"OnDemand": {
    "N1": {"N1.JRTCKXETXF": {"priceDimensions": {"N1.JRTCKXETXF.1": {"unit": "GB", "beginRange": "0", "endRange": "Inf", "pricePerUnit": {"USD": "0.0450000000"}}}}},
    "H1": {"H1.JRTCKXETXF": {"priceDimensions": {"H1.JRTCKXETXF.1": {"unit": "Hrs", "beginRange": "0", "endRange": "Inf", "pricePerUnit": {"USD": "0.0450000000"}}}}}}}}"#;

    #[test]
    fn reduces_an_offer_excerpt_to_the_agents_schema() {
        let yaml = reduce(TRANSFER, Some(EC2)).unwrap();
        assert!(yaml.contains("date: \"2025-06-18\""), "{yaml}");
        assert!(yaml.contains("internet_out: [{ up_to_gb: 10240, usd: 0.09 }, { up_to_gb: 51200, usd: 0.085 }, { up_to_gb: 153600, usd: 0.07 }, { usd: 0.05 }]"), "{yaml}");
        assert!(
            yaml.contains("inter_region_out: { default: 0.02, to: { us-east-2: 0.01 } }"),
            "{yaml}"
        );
        assert!(
            yaml.contains("cross_zone: { out: 0.01, in: 0.01 }"),
            "{yaml}"
        );
        assert!(yaml.contains("nat_gateway_per_gb: 0.045"), "{yaml}");
        // The agent reads it as a price file.
        let table = agent::price::PriceTable::parse("reduced", &yaml).unwrap();
        let p =
            agent::price::Prices::for_region(&table, "us-east-1", 0, &Default::default()).unwrap();
        assert_eq!(
            (p.internet_out, p.cross_zone_in, p.nat_gateway_per_gb),
            (0.09, 0.01, Some(0.045))
        );
        assert_eq!(p.inter_region_to.get("us-east-2"), Some(&0.01));
    }

    #[test]
    fn a_file_that_is_not_an_offer_is_refused_with_the_reason() {
        let e = format!("{:#}", reduce("{\"products\": {}}", None).unwrap_err());
        assert!(e.contains("terms.OnDemand"), "{e}");
        let e = format!(
            "{:#}",
            reduce(&TRANSFER.replace("\"0.0900000000\"", "\"ninety\""), None).unwrap_err()
        );
        assert!(e.contains("OUT1") && e.contains("pricePerUnit.USD"), "{e}");
    }
}
