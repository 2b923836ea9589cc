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
    gzip: [OnceLock<GzipHead>; 2],
}

/// The totals' part of a gzip stream: the gzip header and raw deflate blocks of the text, ended
/// by a sync flush (byte-aligned, not final) so that each scrape's own blocks can follow in the
/// same member, then the trailer. One member, because not every gzip reader reads several
/// (curl stops at the end of the first).
struct GzipHead {
    bytes: Bytes,
    crc: u32,
    len: u64,
}

/// RFC 1952 §2.3: magic, deflate, no flags, no time, no extra flags, unknown OS.
const GZIP_HEADER: [u8; 10] = [0x1f, 0x8b, 8, 0, 0, 0, 0, 0, 0, 0xff];

fn compress_head(data: &[u8]) -> GzipHead {
    use std::io::Write as _;
    let mut enc =
        flate2::write::DeflateEncoder::new(GZIP_HEADER.to_vec(), flate2::Compression::fast());
    // Writing to a Vec cannot fail; flush ends the blocks on a byte boundary, none final.
    let _ = enc.write_all(data);
    let _ = enc.flush();
    let bytes = Bytes::from(std::mem::take(enc.get_mut()));
    let mut crc = crc32fast::Hasher::new();
    crc.update(data);
    GzipHead {
        bytes,
        crc: crc.finalize(),
        len: data.len() as u64,
    }
}

/// The rest of the member after `head`: `data` in final deflate blocks (their own: nothing in
/// them refers back), then the CRC-32 and the length (mod 2^32) of everything.
fn gzip_tail(head: &GzipHead, data: &[u8]) -> Bytes {
    use std::io::Write as _;
    let mut enc = flate2::write::DeflateEncoder::new(Vec::new(), flate2::Compression::fast());
    let _ = enc.write_all(data);
    let mut out = enc.finish().unwrap_or_default();
    let mut crc = crc32fast::Hasher::new_with_initial_len(head.crc, head.len);
    crc.update(data);
    out.extend_from_slice(&crc.finalize().to_le_bytes());
    out.extend_from_slice(&((head.len + data.len() as u64) as u32).to_le_bytes());
    Bytes::from(out)
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

    fn gzip_head(&self, format: Format) -> &GzipHead {
        self.gzip[usize::from(format == Format::PrometheusText)]
            .get_or_init(|| compress_head(&self.plain(format)))
    }

    /// The chunks of a whole body: the totals, then `live` (an OpenMetrics encoding of the live
    /// registry, `# EOF` included). Gzipped, one gzip member whose head (the totals) is
    /// compressed once per drain and whose tail (`live`) per scrape.
    pub fn body(&self, format: Format, compressed: bool, live: &str) -> Vec<Bytes> {
        let tail = match format {
            Format::OpenMetrics => live.to_owned(),
            Format::PrometheusText => to_prometheus_text(live),
        };
        if compressed {
            let head = self.gzip_head(format);
            vec![head.bytes.clone(), gzip_tail(head, tail.as_bytes())]
        } else {
            vec![self.plain(format), Bytes::from(tail)]
        }
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
        // One member: a reader that stops at the end of the first gets everything.
        flate2::read::GzDecoder::new(&z1.concat()[..])
            .read_to_string(&mut out)
            .unwrap();
        assert_eq!(
            out,
            "# TYPE a counter\na_total 1\n# TYPE b gauge\nb 2\n# EOF\n"
        );
    }

    /// Megabytes of totals (many deflate blocks) and a live part: one gzip member whose CRC and
    /// length cover both, as a strict single-member reader checks them.
    #[test]
    fn a_large_gzip_body_is_one_valid_member() {
        let mut totals = String::from("# TYPE a counter\n");
        for i in 0..60_000u32 {
            totals.push_str(&format!(
                "a_total{{pod=\"p{}\"}} {}\n",
                i,
                i.wrapping_mul(2_654_435_761)
            ));
        }
        let e = Exposition::new(format!("{totals}# EOF\n"));
        let live = "# TYPE b gauge\nb 2\n# EOF\n";
        let z = e.body(Format::OpenMetrics, true, live).concat();
        let mut decoder = flate2::read::GzDecoder::new(&z[..]);
        let mut out = String::new();
        use std::io::Read as _;
        decoder.read_to_string(&mut out).unwrap();
        assert_eq!(out, format!("{totals}{live}"));
        let mut rest = Vec::new();
        decoder.into_inner().read_to_end(&mut rest).unwrap();
        assert!(rest.is_empty(), "{} bytes after the member", rest.len());
        // The trailer is checked: a wrong CRC is refused.
        let mut bad = z.clone();
        let crc_at = bad.len() - 8;
        bad[crc_at] ^= 1;
        let mut ignored = String::new();
        assert!(flate2::read::GzDecoder::new(&bad[..])
            .read_to_string(&mut ignored)
            .is_err());
    }
}
