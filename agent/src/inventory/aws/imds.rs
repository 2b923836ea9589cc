//! EC2 instance metadata (IMDSv2: a session token from a PUT, then GETs that carry it): our own
//! zone and region, the subnets of our network interfaces and the VPC's own ranges, the VPC ID
//! (for EC2 DescribeSubnets) and the instance profile's credentials.

use std::{
    sync::Mutex,
    time::{Duration, Instant},
};

use bytes::Bytes;
use http_body_util::Full;
use hyper::{Method, Request, StatusCode};

use super::http::{HttpClient, HttpError};
use crate::vocab::{Cidr, Place};

/// Instance metadata answers are a few bytes to a few KB; anything larger is not IMDS.
pub const BODY_LIMIT: usize = 64 * 1024;
/// Network interfaces read at most (the largest instances have a few dozen).
const MAX_INTERFACES: usize = 128;
/// Session tokens are asked for this long and renewed a minute before they end.
const TOKEN_TTL: Duration = Duration::from_secs(6 * 3600);

#[derive(Debug, thiserror::Error)]
pub enum ImdsError {
    #[error("instance metadata {url}: {message}")]
    Request { url: String, message: String },
    #[error("instance metadata {url} answered {status}")]
    Status { url: String, status: StatusCode },
    #[error("instance metadata {url} did not answer within {timeout:?}")]
    Timeout { url: String, timeout: Duration },
    #[error("instance metadata {url}: {message}")]
    Invalid { url: String, message: String },
}

impl From<HttpError> for ImdsError {
    fn from(e: HttpError) -> ImdsError {
        match e {
            HttpError::Timeout { url, timeout } => ImdsError::Timeout { url, timeout },
            HttpError::Request { url, message } => ImdsError::Request { url, message },
            HttpError::TooLarge { url, limit } => ImdsError::Invalid {
                url,
                message: format!("the answer is larger than {limit} bytes"),
            },
        }
    }
}

/// What instance metadata says of this node's network: the subnets of its interfaces (all in
/// our zone: a subnet is single-zone), the VPC's own ranges, and the VPC's ID.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Network {
    pub vpc_id: Option<String>,
    pub subnets: Vec<Cidr>,
    pub vpc_cidrs: Vec<Cidr>,
}

/// An IMDSv2 client that keeps its session token.
#[derive(Debug)]
pub struct Imds {
    endpoint: String,
    timeout: Duration,
    http: HttpClient,
    token: Mutex<Option<(String, Instant)>>,
}

impl Imds {
    pub fn new(endpoint: &str, timeout: Duration, http: HttpClient) -> Imds {
        Imds {
            endpoint: endpoint.trim_end_matches('/').to_owned(),
            timeout,
            http,
            token: Mutex::new(None),
        }
    }

    async fn call(
        &self,
        method: Method,
        url: &str,
        header: (&str, &str),
    ) -> Result<Option<String>, ImdsError> {
        let request = Request::builder()
            .method(method)
            .uri(url)
            .header(header.0, header.1)
            .body(Full::new(Bytes::new()))
            .map_err(|e| ImdsError::Request {
                url: url.to_owned(),
                message: e.to_string(),
            })?;
        let response = self.http.send(request, self.timeout, BODY_LIMIT).await?;
        if response.status == StatusCode::NOT_FOUND {
            return Ok(None);
        }
        if !response.status.is_success() {
            return Err(ImdsError::Status {
                url: url.to_owned(),
                status: response.status,
            });
        }
        Ok(Some(response.text().trim().to_owned()))
    }

    async fn token(&self, renew: bool) -> Result<String, ImdsError> {
        if !renew {
            let cached = self.token.lock().unwrap_or_else(|p| p.into_inner());
            if let Some((t, until)) = cached.as_ref() {
                if Instant::now() < *until {
                    return Ok(t.clone());
                }
            }
        }
        let url = format!("{}/latest/api/token", self.endpoint);
        let ttl = TOKEN_TTL.as_secs().to_string();
        let token = self
            .call(
                Method::PUT,
                &url,
                ("X-aws-ec2-metadata-token-ttl-seconds", &ttl),
            )
            .await?
            .filter(|t| !t.is_empty())
            .ok_or_else(|| ImdsError::Status {
                url: url.clone(),
                status: StatusCode::NOT_FOUND,
            })?;
        let until = Instant::now() + TOKEN_TTL - Duration::from_secs(60);
        *self.token.lock().unwrap_or_else(|p| p.into_inner()) = Some((token.clone(), until));
        Ok(token)
    }

    /// `GET /latest/meta-data/<path>`: `None` when IMDS has no such item (404).
    pub async fn get(&self, path: &str) -> Result<Option<String>, ImdsError> {
        let url = format!("{}/latest/meta-data/{path}", self.endpoint);
        let token = self.token(false).await?;
        match self
            .call(Method::GET, &url, ("X-aws-ec2-metadata-token", &token))
            .await
        {
            // An expired or revoked session: one new token, one retry.
            Err(ImdsError::Status { status, .. }) if status == StatusCode::UNAUTHORIZED => {
                let token = self.token(true).await?;
                self.call(Method::GET, &url, ("X-aws-ec2-metadata-token", &token))
                    .await
            }
            other => other,
        }
    }

    async fn required(&self, path: &str) -> Result<String, ImdsError> {
        self.get(path)
            .await?
            .filter(|v| !v.is_empty())
            .ok_or_else(|| ImdsError::Status {
                url: format!("{}/latest/meta-data/{path}", self.endpoint),
                status: StatusCode::NOT_FOUND,
            })
    }

    /// Zone, zone ID and region of this instance. A missing zone ID (older IMDS) is `None`; a
    /// missing zone or region is an error.
    pub async fn placement(&self) -> Result<Place, ImdsError> {
        let zone = self.required("placement/availability-zone").await?;
        let region = self.required("placement/region").await?;
        let zone_id = self
            .get("placement/availability-zone-id")
            .await?
            .filter(|v| !v.is_empty());
        Ok(Place {
            zone: Some(zone),
            zone_id,
            region: Some(region),
        })
    }

    /// Prefixes listed one per line at `path`; none when IMDS has no such item.
    async fn cidrs(&self, path: &str) -> Result<Vec<Cidr>, ImdsError> {
        let Some(text) = self.get(path).await? else {
            return Ok(Vec::new());
        };
        text.lines()
            .map(str::trim)
            .filter(|l| !l.is_empty())
            .map(|l| {
                l.parse::<Cidr>().map_err(|e| ImdsError::Invalid {
                    url: format!("{}/latest/meta-data/{path}", self.endpoint),
                    message: format!("{l:?}: {e}"),
                })
            })
            .collect()
    }

    /// Every network interface's subnet (IPv4 and IPv6) and the VPC's ranges.
    pub async fn network(&self) -> Result<Network, ImdsError> {
        let listing = self.required("network/interfaces/macs/").await?;
        let mut network = Network::default();
        for mac in listing.lines().take(MAX_INTERFACES) {
            let mac = mac.trim().trim_end_matches('/');
            if mac.is_empty() || !mac.chars().all(|c| c.is_ascii_hexdigit() || c == ':') {
                return Err(ImdsError::Invalid {
                    url: format!(
                        "{}/latest/meta-data/network/interfaces/macs/",
                        self.endpoint
                    ),
                    message: format!("{mac:?} is not a MAC address"),
                });
            }
            let base = format!("network/interfaces/macs/{mac}");
            for path in ["subnet-ipv4-cidr-block", "subnet-ipv6-cidr-blocks"] {
                for c in self.cidrs(&format!("{base}/{path}")).await? {
                    if !network.subnets.contains(&c) {
                        network.subnets.push(c);
                    }
                }
            }
            for path in ["vpc-ipv4-cidr-blocks", "vpc-ipv6-cidr-blocks"] {
                for c in self.cidrs(&format!("{base}/{path}")).await? {
                    if !network.vpc_cidrs.contains(&c) {
                        network.vpc_cidrs.push(c);
                    }
                }
            }
            if network.vpc_id.is_none() {
                network.vpc_id = self
                    .get(&format!("{base}/vpc-id"))
                    .await?
                    .filter(|v| !v.is_empty());
            }
        }
        Ok(network)
    }

    /// The instance profile's role name, if the instance has one.
    pub async fn instance_profile_role(&self) -> Result<Option<String>, ImdsError> {
        Ok(self
            .get("iam/security-credentials/")
            .await?
            .and_then(|t| t.lines().next().map(|l| l.trim().to_owned()))
            .filter(|r| !r.is_empty()))
    }

    /// The instance profile's current credentials document (JSON).
    pub async fn instance_profile_credentials(&self, role: &str) -> Result<String, ImdsError> {
        self.required(&format!("iam/security-credentials/{role}"))
            .await
    }
}

/// Zone, zone ID and region of this instance, from IMDS at `endpoint`.
pub async fn placement(endpoint: &str, timeout: Duration) -> Result<Place, ImdsError> {
    Imds::new(endpoint, timeout, HttpClient::new())
        .placement()
        .await
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

    static HUGE: std::sync::LazyLock<String> = std::sync::LazyLock::new(|| "x".repeat(100_000));

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
                                (Method::GET, "/latest/meta-data/network/interfaces/macs/") => {
                                    (200, "0e:00:00:00:00:01/\n0e:00:00:00:00:02/")
                                }
                                (Method::GET, p) if p.starts_with("/latest/meta-data/network/interfaces/macs/0e:00:00:00:00:0") => {
                                    let second = p.contains(":02/");
                                    match p.rsplit('/').next().unwrap_or_default() {
                                        "subnet-ipv4-cidr-block" if second => (200, "10.0.32.0/20"),
                                        "subnet-ipv4-cidr-block" => (200, "10.0.0.0/20"),
                                        "subnet-ipv6-cidr-blocks" if !second => (200, "2600:1f18:1:100::/64"),
                                        "vpc-ipv4-cidr-blocks" => (200, "10.0.0.0/16\n100.64.0.0/16"),
                                        "vpc-ipv6-cidr-blocks" => (200, "2600:1f18:1:100::/56"),
                                        "vpc-id" => (200, "vpc-0abc"),
                                        _ => (404, ""),
                                    }
                                }
                                (Method::GET, "/latest/meta-data/placement/huge") => {
                                    (200, HUGE.as_str())
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
    async fn reads_subnets_and_vpc_ranges_of_every_interface() {
        let (url, _) = double(true).await;
        let imds = Imds::new(&url, Duration::from_secs(5), HttpClient::new());
        let n = imds.network().await.unwrap();
        let cidrs = |v: &[&str]| {
            v.iter()
                .map(|c| c.parse::<Cidr>().unwrap())
                .collect::<Vec<_>>()
        };
        assert_eq!(n.vpc_id.as_deref(), Some("vpc-0abc"));
        assert_eq!(
            n.subnets,
            cidrs(&["10.0.0.0/20", "2600:1f18:1:100::/64", "10.0.32.0/20"])
        );
        assert_eq!(
            n.vpc_cidrs,
            cidrs(&["10.0.0.0/16", "100.64.0.0/16", "2600:1f18:1:100::/56"])
        );
    }

    #[tokio::test]
    async fn answers_are_read_with_a_size_limit() {
        assert!(HUGE.len() > BODY_LIMIT);
        let (url, _) = double(true).await;
        let imds = Imds::new(&url, Duration::from_secs(5), HttpClient::new());
        let e = imds.get("placement/huge").await.unwrap_err().to_string();
        assert!(
            e.contains("larger than 65536 bytes") && e.contains("placement/huge"),
            "{e}"
        );
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
