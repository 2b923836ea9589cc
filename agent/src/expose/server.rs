//! HTTP: `/metrics` (OpenMetrics or Prometheus text, negotiated; gzip when asked), `/healthz`,
//! `/readyz`.
//!
//! The port is reachable by anyone who reaches the node, so every connection is bounded: its
//! headers must arrive within `header_timeout`, a connection that makes no progress (reading a
//! request or taking our answer) for `idle_timeout` is closed, at most `max_connections` are open
//! (beyond: `503` and close, without reading), at most `max_scrapes` `/metrics` answers are in
//! flight (beyond: `503`), and a request head is at most 16 KiB. `/metrics` serves the bytes the
//! drain encoded once after its checkpoint was written (`ExpositionCache`): a scrape costs a copy
//! of a pointer, not an encoding, and every stuck reader shares the same bytes. Optionally TLS
//! (`tls`) and bearer tokens checked against the Kubernetes API (`auth`) guard `/metrics`;
//! `/healthz` and `/readyz` stay open.

use std::{
    convert::Infallible,
    pin::Pin,
    sync::Arc,
    task::{Context, Poll},
    time::Duration,
};

use bytes::Bytes;
use hyper::{body::Incoming, header, service::service_fn, Method, Request, Response, StatusCode};
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::{
    io::{AsyncRead, AsyncWrite},
    net::TcpListener,
    sync::{OwnedSemaphorePermit, Semaphore},
};

use prometheus_client::{metrics::counter::Counter, registry::Registry};

use super::stalling::Stalling;
use super::{
    auth::Authenticator,
    exposition::{ExpositionCache, Format},
    health::Health,
    tls::Tls,
};
use crate::config::ServerConfig;

/// Longest request head read (hyper's smallest buffer limit).
const MAX_REQUEST_HEAD: usize = 16 * 1024;

type Body = PermitBody;

/// A response body of a few chunks that holds its `/metrics` slot until it is sent (or the
/// connection dies).
pub struct PermitBody {
    chunks: std::collections::VecDeque<Bytes>,
    _permit: Option<OwnedSemaphorePermit>,
}

impl PermitBody {
    fn new(chunks: Vec<Bytes>, permit: Option<OwnedSemaphorePermit>) -> PermitBody {
        PermitBody {
            chunks: chunks.into_iter().filter(|c| !c.is_empty()).collect(),
            _permit: permit,
        }
    }
}

impl hyper::body::Body for PermitBody {
    type Data = Bytes;
    type Error = Infallible;
    fn poll_frame(
        mut self: Pin<&mut Self>,
        _cx: &mut Context<'_>,
    ) -> Poll<Option<Result<hyper::body::Frame<Bytes>, Infallible>>> {
        Poll::Ready(
            self.chunks
                .pop_front()
                .map(|c| Ok(hyper::body::Frame::data(c))),
        )
    }
    fn is_end_stream(&self) -> bool {
        self.chunks.is_empty()
    }
    fn size_hint(&self) -> hyper::body::SizeHint {
        hyper::body::SizeHint::with_exact(self.chunks.iter().map(|c| c.len() as u64).sum())
    }
}

fn text(status: StatusCode, content_type: &'static str, body: impl Into<Bytes>) -> Response<Body> {
    let mut r = Response::new(PermitBody::new(vec![body.into()], None));
    *r.status_mut() = status;
    r.headers_mut().insert(
        header::CONTENT_TYPE,
        header::HeaderValue::from_static(content_type),
    );
    r
}

const PLAIN: &str = "text/plain; charset=utf-8";

/// Whether an `Accept-Encoding` header accepts gzip (and does not refuse it with `q=0`).
fn accepts_gzip(value: Option<&str>) -> bool {
    value.is_some_and(|v| {
        v.split(',').any(|part| {
            let mut it = part.split(';');
            let coding = it.next().unwrap_or("").trim();
            let refused = it.any(|p| {
                p.trim()
                    .strip_prefix("q=")
                    .is_some_and(|q| q.trim().parse::<f32>().is_ok_and(|q| q == 0.0))
            });
            (coding.eq_ignore_ascii_case("gzip") || coding == "*") && !refused
        })
    })
}

/// What the server records: how much its own `/metrics` answers weigh, so that the cost of
/// scraping the agent can be reported (`netcost report`).
#[derive(Clone, Debug, Default)]
pub struct ScrapeMetrics {
    responses: Counter,
    bytes: Counter,
}

impl ScrapeMetrics {
    pub fn register(registries: &mut crate::vocab::Registries) -> ScrapeMetrics {
        let m = ScrapeMetrics::default();
        let r = registries.live();
        r.register(
            "scrape_responses",
            "/metrics answers served (200)",
            m.responses.clone(),
        );
        r.register_with_unit(
            "scrape_response",
            "Body bytes of the /metrics answers served, as sent (after gzip when asked)",
            prometheus_client::registry::Unit::Bytes,
            m.bytes.clone(),
        );
        m
    }
}

/// What the server serves.
pub struct Served {
    pub cache: Arc<ExpositionCache>,
    /// The agent's own state, encoded at each scrape (small).
    pub live: Arc<Registry>,
    pub health: Arc<Health>,
    pub metrics: ScrapeMetrics,
}

struct Shared {
    served: Served,
    scrapes: Arc<Semaphore>,
    auth: Option<Arc<Authenticator>>,
}

/// Checks the scraper's token when authentication is on; `None` when it may go on.
async fn refused(req: &Request<Incoming>, shared: &Shared) -> Option<Response<Body>> {
    let auth = shared.auth.as_ref()?;
    if req.uri().path() != "/metrics" {
        return None;
    }
    let header = req
        .headers()
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok());
    let refusal = auth.check(header).await.err()?;
    let status = StatusCode::from_u16(refusal.status).unwrap_or(StatusCode::FORBIDDEN);
    let mut r = text(status, PLAIN, format!("{}\n", refusal.reason));
    if status == StatusCode::UNAUTHORIZED {
        r.headers_mut().insert(
            header::WWW_AUTHENTICATE,
            header::HeaderValue::from_static("Bearer realm=\"netcost\""),
        );
    }
    Some(r)
}

fn handle(req: &Request<Incoming>, shared: &Shared) -> Response<Body> {
    if req.method() != Method::GET && req.method() != Method::HEAD {
        return text(StatusCode::METHOD_NOT_ALLOWED, PLAIN, "only GET\n");
    }
    // Nothing here takes a body: one sent anyway is refused, and the connection closed.
    let has_body = req.headers().contains_key(header::TRANSFER_ENCODING)
        || req
            .headers()
            .get(header::CONTENT_LENGTH)
            .is_some_and(|v| v.as_bytes() != b"0");
    if has_body {
        let mut r = text(
            StatusCode::PAYLOAD_TOO_LARGE,
            PLAIN,
            "no request body expected\n",
        );
        r.headers_mut().insert(
            header::CONNECTION,
            header::HeaderValue::from_static("close"),
        );
        return r;
    }
    match req.uri().path() {
        "/metrics" => {
            let Ok(permit) = shared.scrapes.clone().try_acquire_owned() else {
                return text(
                    StatusCode::SERVICE_UNAVAILABLE,
                    PLAIN,
                    "too many scrapes in flight\n",
                );
            };
            let Some(exposition) = shared.served.cache.current() else {
                return text(StatusCode::SERVICE_UNAVAILABLE, PLAIN, "no drain yet\n");
            };
            let accept = req
                .headers()
                .get(header::ACCEPT)
                .and_then(|v| v.to_str().ok());
            let format = Format::negotiate(accept);
            let gzip = accepts_gzip(
                req.headers()
                    .get(header::ACCEPT_ENCODING)
                    .and_then(|v| v.to_str().ok()),
            );
            let mut live = String::with_capacity(8 * 1024);
            if prometheus_client::encoding::text::encode(&mut live, &shared.served.live).is_err() {
                return text(
                    StatusCode::INTERNAL_SERVER_ERROR,
                    PLAIN,
                    "encoding failed\n",
                );
            }
            let body = exposition.body(format, gzip, &live);
            let m = &shared.served.metrics;
            m.responses.inc();
            m.bytes.inc_by(body.iter().map(|c| c.len() as u64).sum());
            let mut r = Response::new(PermitBody::new(body, Some(permit)));
            let h = r.headers_mut();
            h.insert(
                header::CONTENT_TYPE,
                header::HeaderValue::from_static(format.content_type()),
            );
            if gzip {
                h.insert(
                    header::CONTENT_ENCODING,
                    header::HeaderValue::from_static("gzip"),
                );
            }
            h.insert(
                header::VARY,
                header::HeaderValue::from_static("Accept, Accept-Encoding"),
            );
            r
        }
        "/healthz" if shared.served.health.alive() => text(StatusCode::OK, PLAIN, "ok\n"),
        "/healthz" => text(
            StatusCode::SERVICE_UNAVAILABLE,
            PLAIN,
            "drain loop stalled\n",
        ),
        "/readyz" => match shared.served.health.readiness() {
            Ok(()) => text(StatusCode::OK, PLAIN, "ok\n"),
            Err(why) => text(StatusCode::SERVICE_UNAVAILABLE, PLAIN, format!("{why}\n")),
        },
        _ => text(StatusCode::NOT_FOUND, PLAIN, "not found; try /metrics\n"),
    }
}

/// Serves until the process ends.
pub async fn serve(
    listener: TcpListener,
    served: Served,
    options: ServerConfig,
    auth: Option<Arc<Authenticator>>,
    tls: Option<Arc<Tls>>,
) {
    let connections = Arc::new(Semaphore::new(options.max_connections));
    let shared = Arc::new(Shared {
        served,
        scrapes: Arc::new(Semaphore::new(options.max_scrapes)),
        auth,
    });
    loop {
        let stream = match listener.accept().await {
            Ok((stream, _)) => stream,
            Err(e) => {
                // EMFILE and the like: do not spin.
                tracing::warn!(error = %e, "accepting a metrics connection failed");
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            }
        };
        let Ok(permit) = connections.clone().try_acquire_owned() else {
            // Full: say so without reading anything, and close. A new socket's send buffer takes
            // these bytes at once; written through the std socket, because a tokio stream that
            // was never polled reports WouldBlock to `try_write` (no 503 ever left).
            if let Ok(stream) = stream.into_std() {
                use std::io::Write as _;
                let _ = (&stream).write(
                    b"HTTP/1.1 503 Service Unavailable\r\nContent-Length: 0\r\nConnection: close\r\n\r\n",
                );
                let _ = stream.shutdown(std::net::Shutdown::Write);
            }
            continue;
        };
        let shared = shared.clone();
        let options = options.clone();
        let acceptor = tls.as_ref().map(|t| t.acceptor());
        tokio::spawn(async move {
            let _permit = permit;
            let io = Stalling::new(stream, options.idle_timeout);
            match acceptor {
                None => serve_http(io, shared, &options).await,
                // The handshake is part of the request head's time.
                Some(acceptor) => {
                    if let Ok(Ok(tls)) =
                        tokio::time::timeout(options.header_timeout, acceptor.accept(io)).await
                    {
                        serve_http(tls, shared, &options).await;
                    }
                }
            }
        });
    }
}

async fn serve_http<T>(io: T, shared: Arc<Shared>, options: &ServerConfig)
where
    T: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let service = service_fn(move |req| {
        let shared = shared.clone();
        async move {
            let response = match refused(&req, &shared).await {
                Some(r) => r,
                None => handle(&req, &shared),
            };
            Ok::<_, Infallible>(response)
        }
    });
    let conn = hyper::server::conn::http1::Builder::new()
        .timer(TokioTimer::new())
        .header_read_timeout(options.header_timeout)
        .max_buf_size(MAX_REQUEST_HEAD)
        .serve_connection(TokioIo::new(io), service);
    // A scraper that hangs up mid-response, or is cut off, is not our error.
    let _ = conn.await;
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn gzip_is_taken_only_when_accepted() {
        assert!(accepts_gzip(Some("gzip")));
        assert!(accepts_gzip(Some("deflate, gzip;q=1.0, *;q=0.5")));
        assert!(!accepts_gzip(Some("gzip;q=0")));
        assert!(!accepts_gzip(Some("identity")));
        assert!(!accepts_gzip(None));
    }
}
