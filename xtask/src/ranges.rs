//! `cargo xtask service-ranges FILE`: regenerates the agent's bundled AWS service ranges
//! (`agent/data/aws-service-ranges.tsv`) from AWS's published `ip-ranges.json`
//! (<https://ip-ranges.amazonaws.com/ip-ranges.json>), keeping S3 and DynamoDB prefixes of every
//! region, IPv4 and IPv6, with the file's `createDate` and `syncToken` in the header.

use std::{collections::BTreeSet, path::Path};

use anyhow::{bail, Context, Result};
use serde_json::Value;

/// `service` values of ip-ranges.json we keep, and the tag the agent exposes.
const SERVICES: [(&str, &str); 2] = [("S3", "aws-s3"), ("DYNAMODB", "aws-dynamodb")];

pub fn convert(json: &str) -> Result<String> {
    let doc: Value = serde_json::from_str(json).context("ip-ranges.json is not JSON")?;
    let field = |name: &str| -> Result<String> {
        doc.get(name)
            .and_then(Value::as_str)
            .map(str::to_owned)
            .with_context(|| format!("ip-ranges.json has no string field {name:?}"))
    };
    let (create_date, sync_token) = (field("createDate")?, field("syncToken")?);
    let mut rows = BTreeSet::new();
    for (list, key) in [("prefixes", "ip_prefix"), ("ipv6_prefixes", "ipv6_prefix")] {
        let entries = doc
            .get(list)
            .and_then(Value::as_array)
            .with_context(|| format!("ip-ranges.json has no array {list:?}"))?;
        for (i, e) in entries.iter().enumerate() {
            let text = |k: &str| -> Result<&str> {
                e.get(k)
                    .and_then(Value::as_str)
                    .with_context(|| format!("{list}[{i}] has no string field {k:?}"))
            };
            let service = text("service")?;
            let Some((_, tag)) = SERVICES.iter().find(|(s, _)| *s == service) else {
                continue;
            };
            let prefix = text(key)?;
            let region = text("region")?;
            if !prefix.contains('/') || region.is_empty() || region.contains(char::is_whitespace) {
                bail!("{list}[{i}]: {prefix:?} in {region:?} is not a prefix and a region");
            }
            rows.insert((tag.to_string(), region.to_owned(), prefix.to_owned()));
        }
    }
    if rows.is_empty() {
        bail!("ip-ranges.json lists no S3 or DYNAMODB prefix");
    }
    let mut out = String::new();
    out.push_str("# AWS S3 and DynamoDB address ranges, derived from AWS's published\n");
    out.push_str(
        "# https://ip-ranges.amazonaws.com/ip-ranges.json (entries with service S3 or DYNAMODB).\n",
    );
    out.push_str(&format!(
        "# createDate: {create_date}\n# syncToken: {sync_token}\n"
    ));
    out.push_str("# Regenerate: cargo xtask service-ranges <downloaded ip-ranges.json>\n");
    out.push_str("# prefix\tservice\tregion\n");
    for (tag, region, prefix) in &rows {
        out.push_str(&format!("{prefix}\t{tag}\t{region}\n"));
    }
    Ok(out)
}

pub fn run(args: &[String]) -> Result<()> {
    let [input] = args else {
        bail!("usage: cargo xtask service-ranges <ip-ranges.json>");
    };
    let json = std::fs::read_to_string(input).with_context(|| format!("reading {input}"))?;
    let table = convert(&json).with_context(|| format!("converting {input}"))?;
    let out = Path::new(env!("CARGO_MANIFEST_DIR")).join("../agent/data/aws-service-ranges.tsv");
    std::fs::write(&out, &table).with_context(|| format!("writing {}", out.display()))?;
    println!(
        "wrote {} prefixes to {}",
        table.lines().filter(|l| !l.starts_with('#')).count(),
        out.display()
    );
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Shaped like the real file: other services, the AMAZON superset, GLOBAL, IPv6.
    const EXCERPT: &str = r#"{
  "syncToken": "1714757592",
  "createDate": "2024-05-03-17-33-12",
  "prefixes": [
    {"ip_prefix": "3.5.140.0/22", "region": "ap-northeast-2", "service": "AMAZON", "network_border_group": "ap-northeast-2"},
    {"ip_prefix": "52.216.0.0/15", "region": "us-east-1", "service": "S3", "network_border_group": "us-east-1"},
    {"ip_prefix": "52.216.0.0/15", "region": "us-east-1", "service": "AMAZON", "network_border_group": "us-east-1"},
    {"ip_prefix": "3.218.180.0/22", "region": "us-east-1", "service": "DYNAMODB", "network_border_group": "us-east-1"},
    {"ip_prefix": "13.32.0.0/15", "region": "GLOBAL", "service": "CLOUDFRONT", "network_border_group": "GLOBAL"},
    {"ip_prefix": "3.5.0.0/19", "region": "eu-west-1", "service": "S3", "network_border_group": "eu-west-1"}
  ],
  "ipv6_prefixes": [
    {"ipv6_prefix": "2600:1fa0:8000::/39", "region": "us-east-1", "service": "S3", "network_border_group": "us-east-1"},
    {"ipv6_prefix": "2600:1f14::/35", "region": "eu-west-1", "service": "EC2", "network_border_group": "eu-west-1"}
  ]
}"#;

    #[test]
    fn keeps_s3_and_dynamodb_of_every_region_with_the_date() {
        let out = convert(EXCERPT).unwrap();
        let rows: Vec<&str> = out.lines().filter(|l| !l.starts_with('#')).collect();
        assert_eq!(
            rows,
            vec![
                "3.218.180.0/22\taws-dynamodb\tus-east-1",
                "3.5.0.0/19\taws-s3\teu-west-1",
                "2600:1fa0:8000::/39\taws-s3\tus-east-1",
                "52.216.0.0/15\taws-s3\tus-east-1",
            ]
        );
        assert!(out.contains("# createDate: 2024-05-03-17-33-12\n"));
        assert!(out.contains("# syncToken: 1714757592\n"));
    }

    #[test]
    fn malformed_input_names_what_is_wrong() {
        let e = convert("{}").unwrap_err().to_string();
        assert!(e.contains("createDate"), "{e}");
        let bad = EXCERPT.replace(
            r#""ip_prefix": "52.216.0.0/15", "region": "us-east-1", "service": "S3""#,
            r#""region": "us-east-1", "service": "S3""#,
        );
        let e = format!("{:#}", convert(&bad).unwrap_err());
        assert!(e.contains("prefixes[1]") && e.contains("ip_prefix"), "{e}");
    }
}
