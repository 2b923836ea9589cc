//! The report's command line.

use std::{path::PathBuf, time::Duration};

use super::{OutputFormat, ReportError, ReportOptions, SourceSpec};

pub const USAGE: &str =
    "usage: netcost-agent report (--prometheus URL [--since 7d] [--at UNIX_SECONDS]
                             | --metrics URL [--over 60s]) [options]

Reads netcost's series and prints cost per namespace, workload and class, the top destinations
and pairs, and savings suggestions (each with its bytes, $/month saved and the change to make).
  --prometheus URL        a Prometheus server (HTTP API); --since: the range (s, m, h, d, w)
  --metrics URL           one agent's /metrics, scraped twice --over apart
  --format F              table (default), markdown or json
  --by label:KEY          cost by the pod label KEY (needs kube-state-metrics' kube_pod_labels)
  --region R              AWS region for prices (default: the agent's netcost_node_info)
  --prices FILE           a price file instead of the built-in table
  --top N                 rows in the destination and pair tables (default 10)
  --min-saving USD        leave out suggestions saving less a month (default 1)
  --nat-gateway-hourly USD  a NAT gateway's hourly price (default: the region's NAT per-GB price)
  --scraper-hourly USD    an in-VPC scraper instance, $/hour (default 0.0208, t3.small us-east-1)
  --agent-port P          the agents' metrics port (default 3001)
  --agent-workload NAME   the agents' DaemonSet (default netcost)";

/// `7d`, `60s`, `1.5h`, `90` (seconds).
pub fn parse_duration(text: &str) -> Option<Duration> {
    let (number, unit) = match text.find(|c: char| c.is_ascii_alphabetic()) {
        Some(i) => text.split_at(i),
        None => (text, "s"),
    };
    let n: f64 = number.parse().ok()?;
    let scale = match unit {
        "s" => 1.0,
        "m" => 60.0,
        "h" => 3600.0,
        "d" => 86400.0,
        "w" => 7.0 * 86400.0,
        _ => return None,
    };
    let secs = n * scale;
    (secs.is_finite() && (1.0..=400.0 * 86400.0).contains(&secs))
        .then(|| Duration::from_secs_f64(secs))
}

fn number(flag: &str, value: &str) -> Result<f64, ReportError> {
    value
        .parse::<f64>()
        .ok()
        .filter(|v| v.is_finite() && *v >= 0.0)
        .ok_or_else(|| ReportError::Usage(format!("{flag}: {value:?} is not a number ≥ 0")))
}

pub fn parse_args(args: impl IntoIterator<Item = String>) -> Result<ReportOptions, ReportError> {
    let mut prometheus = None;
    let mut metrics = None;
    let mut since = Duration::from_secs(7 * 86400);
    let mut over = Duration::from_secs(60);
    let mut at = None;
    let mut o = ReportOptions {
        source: SourceSpec::Metrics {
            url: String::new(),
            over,
        },
        format: OutputFormat::Table,
        by_label: None,
        region: None,
        prices: None,
        top: 10,
        min_saving: 1.0,
        nat_gateway_hourly: None,
        scraper_hourly: 0.0208,
        agent_port: 3001,
        agent_workload: "netcost".into(),
    };
    let mut args = args.into_iter();
    while let Some(flag) = args.next() {
        let mut value = || {
            args.next()
                .ok_or_else(|| ReportError::Usage(format!("{flag} needs a value")))
        };
        match flag.as_str() {
            "--prometheus" => prometheus = Some(value()?),
            "--metrics" => metrics = Some(value()?),
            "--since" | "--over" => {
                let v = value()?;
                let d = parse_duration(&v).ok_or_else(|| {
                    ReportError::Usage(format!("{flag}: {v:?} is not a duration such as 60s or 7d"))
                })?;
                if flag == "--since" {
                    since = d;
                } else {
                    over = d;
                }
            }
            "--at" => at = Some(number(&flag, &value()?)?),
            "--format" => {
                o.format = match value()?.as_str() {
                    "table" => OutputFormat::Table,
                    "markdown" => OutputFormat::Markdown,
                    "json" => OutputFormat::Json,
                    other => {
                        return Err(ReportError::Usage(format!(
                            "--format: {other:?} is not table, markdown or json"
                        )))
                    }
                }
            }
            "--by" => {
                let v = value()?;
                let key = v.strip_prefix("label:").filter(|k| {
                    !k.is_empty() && k.chars().all(|c| c.is_ascii_alphanumeric() || c == '_')
                });
                let Some(key) = key else {
                    return Err(ReportError::Usage(format!(
                        "--by: {v:?} is not label:KEY (KEY as kube_pod_labels names it, e.g. label:team or label:app_kubernetes_io_name)"
                    )));
                };
                o.by_label = Some(key.to_owned());
            }
            "--region" => o.region = Some(value()?),
            "--prices" => o.prices = Some(PathBuf::from(value()?)),
            "--top" => o.top = number(&flag, &value()?)? as usize,
            "--min-saving" => o.min_saving = number(&flag, &value()?)?,
            "--nat-gateway-hourly" => o.nat_gateway_hourly = Some(number(&flag, &value()?)?),
            "--scraper-hourly" => o.scraper_hourly = number(&flag, &value()?)?,
            "--agent-port" => {
                let v = value()?;
                o.agent_port = v.parse().map_err(|_| {
                    ReportError::Usage(format!("--agent-port: {v:?} is not a port"))
                })?;
            }
            "--agent-workload" => o.agent_workload = value()?,
            other => return Err(ReportError::Usage(format!("unknown argument {other:?}"))),
        }
    }
    o.source = match (prometheus, metrics) {
        (Some(url), None) => SourceSpec::Prometheus { url, since, at },
        (None, Some(url)) => SourceSpec::Metrics { url, over },
        _ => {
            return Err(ReportError::Usage(
                "give one of --prometheus URL or --metrics URL".into(),
            ))
        }
    };
    Ok(o)
}
