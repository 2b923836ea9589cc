//! `netcost-agent report`: who pays for which bytes, to whom, and what to change to pay less.
//!
//! In: the agent's series over a window, from a Prometheus server (`--prometheus URL --since
//! 7d`) or two scrapes of one agent (`--metrics URL --over 60s`) (`source`), and the AWS prices
//! of the region (`price`). Out: cost per namespace, workload and class (or per pod label), the
//! top destinations and pairs, and savings suggestions with the bytes they rest on, the dollars
//! a month they save net of any new hourly cost, and the change to make (`analyze`, `suggest`),
//! as a table, Markdown or JSON (`render`). The report reads; it never changes anything.

use std::{path::PathBuf, time::Duration};

use crate::{
    config::PriceOverrides,
    inventory::aws::http::{HttpClient, HttpError},
    price::{PriceError, PriceTable, Prices},
};

mod analyze;
mod args;
mod context;
mod render;
mod series;
mod source;
mod suggest;
#[cfg(test)]
mod tests;
mod text;

pub use analyze::Report;
pub use args::{parse_args, parse_duration, USAGE};
pub use context::HOURS_PER_MONTH;
pub use series::{describe_remote, grid, label, usd, Labels, Series};
pub use source::scrape;
pub use source::{Observed, Source};
pub use suggest::Suggestion;
pub use text::parse as parse_exposition;

#[derive(Debug, thiserror::Error)]
pub enum ReportError {
    #[error("{0}")]
    Usage(String),
    #[error(transparent)]
    Http(#[from] HttpError),
    #[error("{url}: not a URL: {message}")]
    Url { url: String, message: String },
    #[error("{url} answered {status}: {body}")]
    Status {
        url: String,
        status: u16,
        body: String,
    },
    #[error("{url}: {message}")]
    Answer { url: String, message: String },
    #[error(transparent)]
    Prices(#[from] PriceError),
    #[error("no prices for region {0:?} in the price table (pass --region or --prices)")]
    Region(String),
    #[error(
        "the region is unknown: the agent's netcost_node_info has none; pass --region (e.g. us-east-1)"
    )]
    NoRegion,
    #[error("no netcost series in the window: is the source scraping a netcost agent?")]
    Empty,
}

#[derive(Clone, Debug, PartialEq)]
pub enum SourceSpec {
    Prometheus {
        url: String,
        since: Duration,
        at: Option<f64>,
    },
    Metrics {
        url: String,
        over: Duration,
    },
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum OutputFormat {
    Table,
    Markdown,
    Json,
}

/// What the user chose; every assumption a suggestion makes that the metrics cannot tell is
/// here, with its default.
#[derive(Clone, Debug, PartialEq)]
pub struct ReportOptions {
    pub source: SourceSpec,
    pub format: OutputFormat,
    /// `--by label:KEY`: group costs by this pod label (kube-state-metrics' `kube_pod_labels`).
    pub by_label: Option<String>,
    pub region: Option<String>,
    pub prices: Option<PathBuf>,
    /// Rows in the destination and pair tables.
    pub top: usize,
    /// Suggestions saving less than this a month are left out.
    pub min_saving: f64,
    /// A NAT gateway's hourly price; default: the region's per-GB processing price, which AWS
    /// charges per hour too (the same figure in every region where both were found).
    pub nat_gateway_hourly: Option<f64>,
    /// The instance a scraper inside the VPC would run on, $/hour (default: t3.small, us-east-1
    /// on-demand).
    pub scraper_hourly: f64,
    /// The agent's metrics port and DaemonSet: destination series of the node or that DaemonSet
    /// with this serving port are its scrapes.
    pub agent_port: u16,
    pub agent_workload: String,
}

/// An elastic IP for a new NAT gateway: $0.005/hour (public IPv4, since 2024-02-01).
pub const PUBLIC_IPV4_HOURLY: f64 = 0.005;

/// Reads the source and builds the report.
pub async fn run(options: &ReportOptions) -> Result<Report, ReportError> {
    // Scrapes --over apart: no connection kept in between (the agent closes idle ones).
    let client = HttpClient::unpooled();
    let observed = match &options.source {
        SourceSpec::Prometheus { url, since, at } => {
            source::Prometheus {
                url: url.clone(),
                range: *since,
                at: *at,
                client,
            }
            .observe()
            .await?
        }
        SourceSpec::Metrics { url, over } => {
            source::Scrapes {
                url: url.clone(),
                over: *over,
                client,
            }
            .observe()
            .await?
        }
    };
    let prices = prices_for(options, &observed)?;
    Report::build(&observed, &prices, options)
}

/// The region's prices: `--region`, else the one the agents say they are in.
pub fn prices_for(options: &ReportOptions, observed: &Observed) -> Result<Prices, ReportError> {
    let table = match &options.prices {
        Some(path) => PriceTable::load(path)?,
        None => PriceTable::built_in(),
    };
    let region = match &options.region {
        Some(r) => r.clone(),
        None => observed
            .gauge("netcost_node_info")
            .iter()
            .filter_map(|s| s.labels.get("region"))
            .find(|r| !r.is_empty())
            .cloned()
            .ok_or(ReportError::NoRegion)?,
    };
    Prices::for_region(&table, &region, 0, &PriceOverrides::default())
        .ok_or(ReportError::Region(region))
}

/// The report in the chosen format.
pub fn render(report: &Report, format: OutputFormat) -> String {
    match format {
        OutputFormat::Table => render::table(report, false),
        OutputFormat::Markdown => render::table(report, true),
        OutputFormat::Json => render::json(report),
    }
}
