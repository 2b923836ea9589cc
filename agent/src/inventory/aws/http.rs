//! The one HTTP(S) client the AWS sources share: plain HTTP for instance metadata and the
//! container credentials endpoint, HTTPS with the system's CA certificates for EC2 and STS.
//! Every answer is read with a time limit and a size limit: a misbehaving endpoint costs a
//! bounded wait and bounded memory, and the error names the URL.

use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt as _, Full, Limited};
use hyper::{Request, StatusCode};
use hyper_util::{
    client::legacy::{connect::HttpConnector, Client},
    rt::TokioExecutor,
};

#[derive(Debug, thiserror::Error)]
pub enum HttpError {
    #[error("{url}: {message}")]
    Request { url: String, message: String },
    #[error("{url} did not answer within {timeout:?}")]
    Timeout { url: String, timeout: Duration },
    #[error("{url} answered more than {limit} bytes")]
    TooLarge { url: String, limit: usize },
}

/// A status and the whole body.
#[derive(Debug)]
pub struct Response {
    pub status: StatusCode,
    pub body: Bytes,
}

impl Response {
    /// The body as text (invalid UTF-8 replaced: AWS answers are ASCII).
    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }
}

type Inner = Client<hyper_rustls::HttpsConnector<HttpConnector>, Full<Bytes>>;

#[derive(Clone)]
pub struct HttpClient {
    inner: Inner,
}

impl std::fmt::Debug for HttpClient {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("HttpClient")
    }
}

impl HttpClient {
    /// A client for `http://` and `https://` URLs. Without any CA certificate on the system,
    /// HTTPS requests fail with an error that says so (plain HTTP still works).
    pub fn new() -> HttpClient {
        HttpClient::with_pool(true)
    }

    /// The same without keeping connections between requests: for callers whose runtime does
    /// not run between them (a closed idle connection would go unnoticed and be reused).
    pub fn unpooled() -> HttpClient {
        HttpClient::with_pool(false)
    }

    fn with_pool(pool: bool) -> HttpClient {
        let connector = match hyper_rustls::HttpsConnectorBuilder::new().with_native_roots() {
            Ok(b) => b,
            Err(e) => {
                tracing::warn!(error = %e, "no CA certificates found: HTTPS to AWS endpoints will fail");
                let config = rustls_config_without_roots();
                hyper_rustls::HttpsConnectorBuilder::new().with_tls_config(config)
            }
        }
        .https_or_http()
        .enable_http1()
        .build();
        let mut builder = Client::builder(TokioExecutor::new());
        if !pool {
            builder.pool_max_idle_per_host(0);
        }
        HttpClient {
            inner: builder.build(connector),
        }
    }

    /// Sends `request` and reads the answer, at most `limit` bytes, within `timeout` in all.
    pub async fn send(
        &self,
        request: Request<Full<Bytes>>,
        timeout: Duration,
        limit: usize,
    ) -> Result<Response, HttpError> {
        let url = redact_query(&request.uri().to_string());
        let failed = |message: String| HttpError::Request {
            url: url.clone(),
            message,
        };
        let exchange = async {
            let response = self
                .inner
                .request(request)
                .await
                .map_err(|e| failed(error_chain(&e)))?;
            let status = response.status();
            let body = Limited::new(response.into_body(), limit)
                .collect()
                .await
                .map_err(|e| {
                    if e.downcast_ref::<http_body_util::LengthLimitError>()
                        .is_some()
                    {
                        HttpError::TooLarge {
                            url: url.clone(),
                            limit,
                        }
                    } else {
                        failed(e.to_string())
                    }
                })?
                .to_bytes();
            Ok(Response { status, body })
        };
        tokio::time::timeout(timeout, exchange)
            .await
            .map_err(|_| HttpError::Timeout {
                url: url.clone(),
                timeout,
            })?
    }
}

impl Default for HttpClient {
    fn default() -> Self {
        HttpClient::new()
    }
}

fn rustls_config_without_roots() -> rustls::ClientConfig {
    rustls::ClientConfig::builder()
        .with_root_certificates(rustls::RootCertStore::empty())
        .with_no_client_auth()
}

/// The error and its causes on one line (hyper's outer error only says "client error").
fn error_chain(e: &dyn std::error::Error) -> String {
    let mut out = e.to_string();
    let mut source = e.source();
    while let Some(s) = source {
        out.push_str(": ");
        out.push_str(&s.to_string());
        source = s.source();
    }
    out
}

/// A URL without its query string, for error messages (queries may carry tokens).
fn redact_query(url: &str) -> String {
    url.split('?').next().unwrap_or(url).to_owned()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn errors_never_show_a_query_string() {
        assert_eq!(
            redact_query("https://sts.example/?WebIdentityToken=secret"),
            "https://sts.example/"
        );
    }
}
