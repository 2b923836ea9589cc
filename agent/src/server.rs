//! HTTP: `/metrics` (OpenMetrics or Prometheus text, negotiated), `/healthz`, `/readyz`.

use std::{
    convert::Infallible,
    sync::{
        atomic::{AtomicBool, AtomicU64, Ordering},
        Arc,
    },
    time::{Duration, SystemTime, UNIX_EPOCH},
};

use bytes::Bytes;
use http_body_util::Full;
use hyper::{body::Incoming, header, service::service_fn, Method, Request, Response, StatusCode};
use hyper_util::rt::TokioIo;
use prometheus_client::registry::Registry;
use tokio::net::TcpListener;

use crate::{
    inventory::KubeHealth,
    metrics::{encode, Format},
};

/// What the probes report.
pub struct Health {
    /// Programs attached and one drain done.
    ready: AtomicBool,
    /// Unix time (ms) of the last successful drain.
    last_drain_ms: AtomicU64,
    /// The drain loop is considered stuck when no drain succeeded for this long.
    stale_after: Duration,
    /// The Kubernetes watches, when the agent uses the API.
    kube: Option<Arc<KubeHealth>>,
}

fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

impl Health {
    pub fn new(stale_after: Duration, kube: Option<Arc<KubeHealth>>) -> Health {
        Health {
            ready: AtomicBool::new(false),
            last_drain_ms: AtomicU64::new(now_ms()),
            stale_after,
            kube,
        }
    }

    /// Ready: programs attached, one drain done, and the pod and node inventories synced.
    fn readiness(&self) -> Result<(), String> {
        if !self.ready.load(Ordering::Relaxed) {
            return Err("not yet drained".into());
        }
        match &self.kube {
            Some(k) if !k.synced() => Err(format!("kubernetes inventory: {}", k.describe())),
            _ => Ok(()),
        }
    }

    pub fn drained(&self) {
        self.last_drain_ms.store(now_ms(), Ordering::Relaxed);
        self.ready.store(true, Ordering::Relaxed);
    }

    fn alive(&self) -> bool {
        now_ms().saturating_sub(self.last_drain_ms.load(Ordering::Relaxed))
            <= self.stale_after.as_millis() as u64
    }
}

fn text(
    status: StatusCode,
    content_type: &'static str,
    body: impl Into<Bytes>,
) -> Response<Full<Bytes>> {
    let mut r = Response::new(Full::new(body.into()));
    *r.status_mut() = status;
    r.headers_mut().insert(
        header::CONTENT_TYPE,
        header::HeaderValue::from_static(content_type),
    );
    r
}

fn handle(req: &Request<Incoming>, registry: &Registry, health: &Health) -> Response<Full<Bytes>> {
    const PLAIN: &str = "text/plain; charset=utf-8";
    if req.method() != Method::GET && req.method() != Method::HEAD {
        return text(StatusCode::METHOD_NOT_ALLOWED, PLAIN, "only GET\n");
    }
    match req.uri().path() {
        "/metrics" => {
            let accept = req
                .headers()
                .get(header::ACCEPT)
                .and_then(|v| v.to_str().ok());
            let format = Format::negotiate(accept);
            match encode(registry, format) {
                Ok(body) => text(StatusCode::OK, format.content_type(), body),
                Err(_) => text(
                    StatusCode::INTERNAL_SERVER_ERROR,
                    PLAIN,
                    "encoding failed\n",
                ),
            }
        }
        "/healthz" if health.alive() => text(StatusCode::OK, PLAIN, "ok\n"),
        "/healthz" => text(
            StatusCode::SERVICE_UNAVAILABLE,
            PLAIN,
            "drain loop stalled\n",
        ),
        "/readyz" => match health.readiness() {
            Ok(()) => text(StatusCode::OK, PLAIN, "ok\n"),
            Err(why) => text(StatusCode::SERVICE_UNAVAILABLE, PLAIN, format!("{why}\n")),
        },
        _ => text(StatusCode::NOT_FOUND, PLAIN, "not found; try /metrics\n"),
    }
}

pub async fn serve(listener: TcpListener, registry: Arc<Registry>, health: Arc<Health>) {
    loop {
        let stream = match listener.accept().await {
            Ok((stream, _)) => stream,
            Err(e) => {
                tracing::warn!(error = %e, "accepting a metrics connection failed");
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            }
        };
        let (registry, health) = (registry.clone(), health.clone());
        tokio::spawn(async move {
            let service = service_fn(move |req| {
                let response = handle(&req, &registry, &health);
                async move { Ok::<_, Infallible>(response) }
            });
            let conn = hyper::server::conn::http1::Builder::new()
                .serve_connection(TokioIo::new(stream), service);
            // A scraper that hangs up mid-response is not our error.
            let _ = conn.await;
        });
    }
}
