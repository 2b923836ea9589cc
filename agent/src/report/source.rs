//! Where a report's numbers come from: a Prometheus server's HTTP API over a range, or two
//! scrapes of one agent's `/metrics`. Either way the answer is the same shape: each counter
//! series' increase over the window (exact: a series born inside the window started at 0), and
//! each gauge's last value.

use std::{collections::HashMap, time::Duration};

use bytes::Bytes;
use http_body_util::Full;
use serde_json::Value;

use super::{
    series::{Labels, Series},
    text, ReportError,
};
use crate::inventory::aws::http::HttpClient;

/// Counters whose increase the report reads.
pub const COUNTERS: [&str; 6] = [
    "netcost_network_bytes_total",
    "netcost_network_cost_dollars_total",
    "netcost_destination_bytes_total",
    "netcost_destination_cost_dollars_total",
    "netcost_scrape_responses_total",
    "netcost_scrape_response_bytes_total",
];

/// Gauges whose last value the report reads (kube-state-metrics' when Prometheus has them).
pub const GAUGES: [&str; 3] = ["netcost_node_info", "kube_pod_labels", "kube_pod_info"];

/// Longest answer read from a Prometheus query or a `/metrics` scrape.
const MAX_ANSWER: usize = 256 * 1024 * 1024;
const TIMEOUT: Duration = Duration::from_secs(60);

/// What was observed over one window.
#[derive(Clone, Debug, Default)]
pub struct Observed {
    pub window_seconds: f64,
    /// Increase over the window, by counter name.
    pub counters: HashMap<String, Vec<Series>>,
    /// Last value, by gauge name.
    pub gauges: HashMap<String, Vec<Series>>,
}

impl Observed {
    pub fn counter(&self, name: &str) -> &[Series] {
        self.counters.get(name).map_or(&[], Vec::as_slice)
    }

    pub fn gauge(&self, name: &str) -> &[Series] {
        self.gauges.get(name).map_or(&[], Vec::as_slice)
    }
}

/// The one seam between the report and what it reads.
pub trait Source {
    fn observe(&self) -> impl std::future::Future<Output = Result<Observed, ReportError>>;
}

async fn get(client: &HttpClient, url: &str) -> Result<String, ReportError> {
    get_within(client, url, TIMEOUT).await
}

async fn get_within(
    client: &HttpClient,
    url: &str,
    timeout: Duration,
) -> Result<String, ReportError> {
    let request = hyper::Request::get(url)
        .header("accept", "text/plain;version=0.0.4, application/json")
        .body(Full::new(Bytes::new()))
        .map_err(|e| ReportError::Url {
            url: url.to_owned(),
            message: e.to_string(),
        })?;
    let response = client.send(request, timeout, MAX_ANSWER).await?;
    if !response.status.is_success() {
        return Err(ReportError::Status {
            url: url.to_owned(),
            status: response.status.as_u16(),
            body: response.text().chars().take(300).collect(),
        });
    }
    Ok(response.text())
}

/// One scrape of an agent's `/metrics`, parsed, within `timeout`.
pub async fn scrape(
    client: &HttpClient,
    url: &str,
    timeout: Duration,
) -> Result<HashMap<String, Vec<Series>>, ReportError> {
    text::parse(url, &get_within(client, url, timeout).await?)
}

/// A Prometheus server: each counter's increase over `[at - range, at]`, computed from the last
/// value and the value one range before (a series with no value then was born inside the range,
/// at 0), and from `increase()` only for series that reset inside the range.
pub struct Prometheus {
    pub url: String,
    pub range: Duration,
    /// Evaluation time (Unix seconds); `None`: now.
    pub at: Option<f64>,
    pub client: HttpClient,
}

impl Prometheus {
    async fn query(&self, expr: &str) -> Result<Vec<Series>, ReportError> {
        let mut url = format!(
            "{}/api/v1/query?query={}",
            self.url.trim_end_matches('/'),
            form_urlencoded::byte_serialize(expr.as_bytes()).collect::<String>()
        );
        if let Some(at) = self.at {
            url.push_str(&format!("&time={at:.3}"));
        }
        let body = get(&self.client, &url).await?;
        parse_vector(&url, &body)
    }
}

impl Source for Prometheus {
    async fn observe(&self) -> Result<Observed, ReportError> {
        let r = format!("{}s", self.range.as_secs().max(1));
        let mut observed = Observed {
            window_seconds: self.range.as_secs().max(1) as f64,
            ..Observed::default()
        };
        for name in COUNTERS {
            let last = self.query(&format!("last_over_time({name}[{r}])")).await?;
            let before = by_labels(self.query(&format!("{name} offset {r}")).await?);
            let resets = by_labels(self.query(&format!("resets({name}[{r}]) > 0")).await?);
            let increases = if resets.is_empty() {
                HashMap::new()
            } else {
                by_labels(self.query(&format!("increase({name}[{r}])")).await?)
            };
            let series = last
                .into_iter()
                .map(|s| {
                    let value = if resets.contains_key(&s.labels) {
                        increases.get(&s.labels).copied().unwrap_or(s.value)
                    } else {
                        (s.value - before.get(&s.labels).copied().unwrap_or(0.0)).max(0.0)
                    };
                    Series {
                        labels: s.labels,
                        value,
                    }
                })
                .collect();
            observed.counters.insert(name.to_owned(), series);
        }
        for name in GAUGES {
            let series = self.query(&format!("last_over_time({name}[{r}])")).await?;
            observed.gauges.insert(name.to_owned(), series);
        }
        Ok(observed)
    }
}

/// Label sets without `__name__` (the functions above drop it, the offset selector keeps it).
fn by_labels(series: Vec<Series>) -> HashMap<Labels, f64> {
    series.into_iter().map(|s| (s.labels, s.value)).collect()
}

/// A Prometheus instant-vector answer.
fn parse_vector(url: &str, body: &str) -> Result<Vec<Series>, ReportError> {
    let bad = |message: &str| ReportError::Answer {
        url: url.to_owned(),
        message: message.to_owned(),
    };
    let v: Value = serde_json::from_str(body).map_err(|e| bad(&e.to_string()))?;
    if v["status"] != "success" {
        return Err(bad(&format!(
            "status {} ({})",
            v["status"],
            v["error"].as_str().unwrap_or("no error given")
        )));
    }
    if v["data"]["resultType"] != "vector" {
        return Err(bad("the result is not an instant vector"));
    }
    let rows = v["data"]["result"]
        .as_array()
        .ok_or_else(|| bad("no result list"))?;
    let mut out = Vec::with_capacity(rows.len());
    for row in rows {
        let metric = row["metric"]
            .as_object()
            .ok_or_else(|| bad("a result without labels"))?;
        let mut labels: Labels = metric
            .iter()
            .filter_map(|(k, v)| Some((k.clone(), v.as_str()?.to_owned())))
            .collect();
        labels.remove("__name__");
        let value = row["value"][1]
            .as_str()
            .and_then(|v| v.parse::<f64>().ok())
            .filter(|v| v.is_finite())
            .ok_or_else(|| bad("a sample value that is not a finite number"))?;
        out.push(Series { labels, value });
    }
    Ok(out)
}

/// One agent's `/metrics`, scraped twice `over` apart: the counters' differences (a series
/// absent from the first scrape was born in between, at 0; one that went down was reset).
pub struct Scrapes {
    pub url: String,
    pub over: Duration,
    pub client: HttpClient,
}

impl Source for Scrapes {
    async fn observe(&self) -> Result<Observed, ReportError> {
        let started = std::time::Instant::now();
        let first = scrape(&self.client, &self.url, TIMEOUT).await?;
        tokio::time::sleep(self.over).await;
        let second = scrape(&self.client, &self.url, TIMEOUT).await?;
        let mut observed = Observed {
            window_seconds: started.elapsed().as_secs_f64().max(1e-3),
            ..Observed::default()
        };
        for name in COUNTERS {
            let before: HashMap<&Labels, f64> = first
                .get(name)
                .into_iter()
                .flatten()
                .map(|s| (&s.labels, s.value))
                .collect();
            let series = second
                .get(name)
                .into_iter()
                .flatten()
                .map(|s| {
                    let was = before.get(&s.labels).copied().unwrap_or(0.0);
                    let value = if s.value >= was {
                        s.value - was
                    } else {
                        s.value
                    };
                    Series {
                        labels: s.labels.clone(),
                        value,
                    }
                })
                .collect();
            observed.counters.insert(name.to_owned(), series);
        }
        for name in GAUGES {
            let series = second.get(name).cloned().unwrap_or_default();
            observed.gauges.insert(name.to_owned(), series);
        }
        Ok(observed)
    }
}
