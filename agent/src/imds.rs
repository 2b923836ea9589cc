//! Our own zone and region from EC2 instance metadata (IMDSv2: a session token from a PUT, then
//! GETs that carry it). Used when neither the config nor our Node object says where we are.

use std::{
    sync::{Arc, PoisonError, RwLock},
    time::Duration,
};

use bytes::Bytes;
use http_body_util::{BodyExt as _, Empty};
use hyper::{Method, Request, StatusCode};
use hyper_util::{
    client::legacy::{connect::HttpConnector, Client},
    rt::TokioExecutor,
};

use crate::{config::ImdsConfig, topology::Place};

#[derive(Debug, thiserror::Error)]
pub enum ImdsError {
    #[error("instance metadata {url}: {message}")]
    Request { url: String, message: String },
    #[error("instance metadata {url} answered {status}")]
    Status { url: String, status: StatusCode },
    #[error("instance metadata {url} did not answer within {timeout:?}")]
    Timeout { url: String, timeout: Duration },
}

type HttpClient = Client<HttpConnector, Empty<Bytes>>;

async fn call(
    client: &HttpClient,
    method: Method,
    url: &str,
    header: (&str, &str),
    timeout: Duration,
) -> Result<Option<String>, ImdsError> {
    let request = Request::builder()
        .method(method)
        .uri(url)
        .header(header.0, header.1)
        .body(Empty::new())
        .map_err(|e| ImdsError::Request {
            url: url.to_owned(),
            message: e.to_string(),
        })?;
    let exchange = async {
        let response = client
            .request(request)
            .await
            .map_err(|e| ImdsError::Request {
                url: url.to_owned(),
                message: e.to_string(),
            })?;
        let status = response.status();
        let body = response
            .into_body()
            .collect()
            .await
            .map_err(|e| ImdsError::Request {
                url: url.to_owned(),
                message: e.to_string(),
            })?
            .to_bytes();
        if status == StatusCode::NOT_FOUND {
            return Ok(None);
        }
        if !status.is_success() {
            return Err(ImdsError::Status {
                url: url.to_owned(),
                status,
            });
        }
        Ok(Some(String::from_utf8_lossy(&body).trim().to_owned()))
    };
    tokio::time::timeout(timeout, exchange)
        .await
        .map_err(|_| ImdsError::Timeout {
            url: url.to_owned(),
            timeout,
        })?
}

/// Zone, zone ID and region of this instance. A missing zone ID (older IMDS) is `None`; a missing
/// zone or region is an error.
pub async fn placement(endpoint: &str, timeout: Duration) -> Result<Place, ImdsError> {
    let client: HttpClient = Client::builder(TokioExecutor::new()).build_http();
    let token_url = format!("{endpoint}/latest/api/token");
    let token = call(
        &client,
        Method::PUT,
        &token_url,
        ("X-aws-ec2-metadata-token-ttl-seconds", "300"),
        timeout,
    )
    .await?
    .ok_or_else(|| ImdsError::Status {
        url: token_url.clone(),
        status: StatusCode::NOT_FOUND,
    })?;
    let get = |path: &'static str| {
        let client = client.clone();
        let token = token.clone();
        let url = format!("{endpoint}/latest/meta-data/placement/{path}");
        async move {
            call(
                &client,
                Method::GET,
                &url,
                ("X-aws-ec2-metadata-token", &token),
                timeout,
            )
            .await
            .map(|v| (url, v.filter(|v| !v.is_empty())))
        }
    };
    let required = |(url, value): (String, Option<String>)| {
        value.ok_or(ImdsError::Status {
            url,
            status: StatusCode::NOT_FOUND,
        })
    };
    let zone = required(get("availability-zone").await?)?;
    let region = required(get("region").await?)?;
    let zone_id = get("availability-zone-id").await?.1;
    Ok(Place {
        zone: Some(zone),
        zone_id,
        region: Some(region),
    })
}

/// Fetches our placement into `place`, retrying with backoff (1 s doubling to 60 s) until IMDS
/// answers; meanwhile bytes to private addresses are held by the pipeline.
pub async fn fill_place(config: ImdsConfig, place: Arc<RwLock<Place>>) {
    let mut delay = Duration::from_secs(1);
    loop {
        match placement(&config.endpoint, config.timeout).await {
            Ok(p) => {
                tracing::info!(zone = ?p.zone, zone_id = ?p.zone_id, region = ?p.region, "placement from instance metadata");
                *place.write().unwrap_or_else(PoisonError::into_inner) = p;
                return;
            }
            Err(e) => {
                tracing::warn!(error = %e, "instance metadata unavailable; retrying");
                tokio::time::sleep(delay).await;
                delay = (delay * 2).min(Duration::from_secs(60));
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use http_body_util::Full;
    use hyper::{body::Incoming, service::service_fn, Response};
    use hyper_util::rt::TokioIo;
    use std::{
        convert::Infallible,
        sync::{Arc, Mutex},
    };

    /// A local IMDSv2 double: tokens from PUT only, every GET must carry one.
    async fn double(with_zone_id: bool) -> (String, Arc<Mutex<Vec<String>>>) {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://{}", listener.local_addr().unwrap());
        let log = Arc::new(Mutex::new(Vec::new()));
        let log2 = log.clone();
        tokio::spawn(async move {
            loop {
                let Ok((stream, _)) = listener.accept().await else {
                    return;
                };
                let log = log2.clone();
                tokio::spawn(async move {
                    let service = service_fn(move |req: Request<Incoming>| {
                        let log = log.clone();
                        async move {
                            let path = req.uri().path().to_owned();
                            log.lock().unwrap().push(format!("{} {path}", req.method()));
                            let token_ok = req
                                .headers()
                                .get("x-aws-ec2-metadata-token")
                                .is_some_and(|v| v == "tok-1");
                            let (status, body) = match (req.method().clone(), path.as_str()) {
                                (Method::PUT, "/latest/api/token")
                                    if req
                                        .headers()
                                        .contains_key("x-aws-ec2-metadata-token-ttl-seconds") =>
                                {
                                    (200, "tok-1")
                                }
                                (Method::GET, _) if !token_ok => (401, ""),
                                (Method::GET, "/latest/meta-data/placement/availability-zone") => {
                                    (200, "eu-west-1b")
                                }
                                (
                                    Method::GET,
                                    "/latest/meta-data/placement/availability-zone-id",
                                ) if with_zone_id => (200, "euw1-az3"),
                                (Method::GET, "/latest/meta-data/placement/region") => {
                                    (200, "eu-west-1")
                                }
                                _ => (404, ""),
                            };
                            let mut r = Response::new(Full::new(Bytes::from(body)));
                            *r.status_mut() = StatusCode::from_u16(status).unwrap();
                            Ok::<_, Infallible>(r)
                        }
                    });
                    let _ = hyper::server::conn::http1::Builder::new()
                        .serve_connection(TokioIo::new(stream), service)
                        .await;
                });
            }
        });
        (url, log)
    }

    #[tokio::test]
    async fn reads_placement_with_a_session_token() {
        let (url, log) = double(true).await;
        let place = placement(&url, Duration::from_secs(5)).await.unwrap();
        assert_eq!(
            place,
            Place {
                zone: Some("eu-west-1b".into()),
                zone_id: Some("euw1-az3".into()),
                region: Some("eu-west-1".into()),
            }
        );
        let log = log.lock().unwrap();
        assert_eq!(log[0], "PUT /latest/api/token", "{log:?}");
    }

    #[tokio::test]
    async fn zone_id_is_optional() {
        let (url, _) = double(false).await;
        let place = placement(&url, Duration::from_secs(5)).await.unwrap();
        assert_eq!(place.zone_id, None);
        assert_eq!(place.zone.as_deref(), Some("eu-west-1b"));
    }

    #[tokio::test]
    async fn unreachable_endpoint_is_named() {
        // A port nobody listens on.
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let url = format!("http://{}", l.local_addr().unwrap());
        drop(l);
        let e = placement(&url, Duration::from_secs(2)).await.unwrap_err();
        assert!(e.to_string().contains(&url), "{e}");
    }
}
