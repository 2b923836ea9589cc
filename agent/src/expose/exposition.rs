//! The exposition: Prometheus text 0.0.4 or OpenMetrics, as the scraper asks.
//!
//! Label names avoid `zone`, `region`, `instance` and `job`, which clash with target labels that
//! Prometheus adds. No timestamps are exposed; counters only ever go up within one process life.

use std::sync::{Arc, OnceLock, PoisonError, RwLock};

use bytes::Bytes;
use prometheus_client::registry::Registry;

/// Exposition formats. prometheus-client writes OpenMetrics text; the Prometheus 0.0.4 text format
/// is the same minus the `# EOF` trailer (its parser ignores the `# UNIT` comments).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Format {
    OpenMetrics,
    PrometheusText,
}

impl Format {
    /// Picks the format from an `Accept` header, as Prometheus negotiates it.
    pub fn negotiate(accept: Option<&str>) -> Format {
        match accept {
            Some(a) if a.contains("application/openmetrics-text") => Format::OpenMetrics,
            _ => Format::PrometheusText,
        }
    }

    pub fn content_type(self) -> &'static str {
        match self {
            Format::OpenMetrics => "application/openmetrics-text; version=1.0.0; charset=utf-8",
            Format::PrometheusText => "text/plain; version=0.0.4; charset=utf-8",
        }
    }
}

pub fn encode(registry: &Registry, format: Format) -> Result<String, std::fmt::Error> {
    let mut out = String::with_capacity(16 * 1024);
    prometheus_client::encoding::text::encode(&mut out, registry)?;
    match format {
        Format::OpenMetrics => Ok(out),
        Format::PrometheusText => Ok(to_prometheus_text(&out)),
    }
}

/// OpenMetrics text → Prometheus text 0.0.4: a counter's HELP and TYPE name its samples
/// (`x_total`, where OpenMetrics names the family `x`), and there is no `# UNIT` or `# EOF`.
/// Without this, 0.0.4 parsers see the samples as untyped and `promtool check metrics` says
/// "no help text".
pub fn to_prometheus_text(open_metrics: &str) -> String {
    let counters: std::collections::HashSet<&str> = open_metrics
        .lines()
        .filter_map(|l| l.strip_prefix("# TYPE ")?.strip_suffix(" counter"))
        .collect();
    let mut out = String::with_capacity(open_metrics.len());
    for line in open_metrics.lines() {
        if line.starts_with("# UNIT ") || line == "# EOF" {
            continue;
        }
        let renamed = ["# HELP ", "# TYPE "].iter().find_map(|prefix| {
            let rest = line.strip_prefix(prefix)?;
            let (name, tail) = rest.split_once(' ')?;
            counters
                .contains(name)
                .then(|| format!("{prefix}{name}_total {tail}"))
        });
        match renamed {
            Some(l) => out.push_str(&l),
            None => out.push_str(line),
        }
        out.push('\n');
    }
    out
}

/// One encoding of the totals (the durable registry), in OpenMetrics without its `# EOF`; the
/// Prometheus text form and the gzipped forms are made from it when first asked for. A scrape
/// sends it followed by the live registry, encoded then.
pub struct Exposition {
    open_metrics: Bytes,
    prometheus: OnceLock<Bytes>,
    gzip: [OnceLock<Bytes>; 2],
}

fn gzip(data: &[u8]) -> Bytes {
    use std::io::Write as _;
    let mut enc = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
    // Writing to a Vec cannot fail.
    let _ = enc.write_all(data);
    Bytes::from(enc.finish().unwrap_or_default())
}

const EOF: &str = "# EOF\n";

impl Exposition {
    pub fn new(open_metrics: String) -> Exposition {
        let open_metrics = match open_metrics.strip_suffix(EOF) {
            Some(body) => body.to_owned(),
            None => open_metrics,
        };
        Exposition {
            open_metrics: Bytes::from(open_metrics),
            prometheus: OnceLock::new(),
            gzip: [OnceLock::new(), OnceLock::new()],
        }
    }

    fn plain(&self, format: Format) -> Bytes {
        match format {
            Format::OpenMetrics => self.open_metrics.clone(),
            Format::PrometheusText => self
                .prometheus
                .get_or_init(|| {
                    Bytes::from(to_prometheus_text(&String::from_utf8_lossy(
                        &self.open_metrics,
                    )))
                })
                .clone(),
        }
    }

    /// The totals' part of a body for `format`, gzipped or not.
    fn part(&self, format: Format, compressed: bool) -> Bytes {
        if !compressed {
            return self.plain(format);
        }
        self.gzip[usize::from(format == Format::PrometheusText)]
            .get_or_init(|| gzip(&self.plain(format)))
            .clone()
    }

    /// The chunks of a whole body: the totals, then `live` (an OpenMetrics encoding of the live
    /// registry, `# EOF` included). Gzipped, they are two gzip members, which a gzip reader
    /// reads as one stream (RFC 1952 §2.2).
    pub fn body(&self, format: Format, compressed: bool, live: &str) -> Vec<Bytes> {
        let tail = match format {
            Format::OpenMetrics => live.to_owned(),
            Format::PrometheusText => to_prometheus_text(live),
        };
        let tail = if compressed {
            gzip(tail.as_bytes())
        } else {
            Bytes::from(tail)
        };
        vec![self.part(format, compressed), tail]
    }
}

/// The exposition the server answers with: replaced by the drain after each checkpoint.
#[derive(Default)]
pub struct ExpositionCache {
    current: RwLock<Option<Arc<Exposition>>>,
}

impl ExpositionCache {
    /// Encodes `registry` (on the drain thread: a scrape costs no encoding) and serves it from
    /// now on; if the encoding fails the previous one stays.
    pub fn publish_registry(&self, registry: &Registry) {
        let mut text = String::with_capacity(256 * 1024);
        match prometheus_client::encoding::text::encode(&mut text, registry) {
            Ok(()) => self.publish(text),
            Err(e) => {
                tracing::warn!(error = %e, "encoding the metrics failed; the previous encoding stays")
            }
        }
    }

    pub fn publish(&self, open_metrics: String) {
        let e = Arc::new(Exposition::new(open_metrics));
        *self.current.write().unwrap_or_else(PoisonError::into_inner) = Some(e);
    }

    pub fn current(&self) -> Option<Arc<Exposition>> {
        self.current
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn prometheus_text_names_counters_by_their_samples() {
        let om = "# HELP a_bytes Bytes.\n# TYPE a_bytes counter\n# UNIT a_bytes bytes\na_bytes_total{x=\"1\"} 5\n# HELP g A gauge.\n# TYPE g gauge\ng 1\n# EOF\n";
        assert_eq!(
            to_prometheus_text(om),
            "# HELP a_bytes_total Bytes.\n# TYPE a_bytes_total counter\na_bytes_total{x=\"1\"} 5\n# HELP g A gauge.\n# TYPE g gauge\ng 1\n"
        );
    }

    #[test]
    fn negotiates_like_prometheus() {
        assert_eq!(
            Format::negotiate(Some(
                "application/openmetrics-text;version=1.0.0,text/plain;version=0.0.4;q=0.5"
            )),
            Format::OpenMetrics
        );
        assert_eq!(
            Format::negotiate(Some("text/plain")),
            Format::PrometheusText
        );
        assert_eq!(Format::negotiate(None), Format::PrometheusText);
    }

    #[test]
    fn an_exposition_is_encoded_once_and_gzipped_once() {
        let e = Exposition::new("# TYPE a counter\na_total 1\n# EOF\n".into());
        let live = "# TYPE b gauge\nb 2\n# EOF\n";
        let plain: Vec<u8> = e.body(Format::PrometheusText, false, live).concat();
        assert_eq!(
            String::from_utf8(plain).unwrap(),
            "# TYPE a_total counter\na_total 1\n# TYPE b gauge\nb 2\n"
        );
        let z1 = e.body(Format::OpenMetrics, true, live);
        let z2 = e.body(Format::OpenMetrics, true, live);
        assert_eq!(
            z1[0].as_ptr(),
            z2[0].as_ptr(),
            "the same bytes, not a second compression"
        );
        let mut out = String::new();
        use std::io::Read as _;
        flate2::read::MultiGzDecoder::new(&z1.concat()[..])
            .read_to_string(&mut out)
            .unwrap();
        assert_eq!(
            out,
            "# TYPE a counter\na_total 1\n# TYPE b gauge\nb 2\n# EOF\n"
        );
    }
}
