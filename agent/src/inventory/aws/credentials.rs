//! AWS credentials, found the way the AWS SDKs find them (their default chain, minus shared
//! config files, which a pod does not have):
//! 1. `AWS_ACCESS_KEY_ID` / `AWS_SECRET_ACCESS_KEY` (/ `AWS_SESSION_TOKEN`);
//! 2. IRSA: `AWS_ROLE_ARN` + `AWS_WEB_IDENTITY_TOKEN_FILE` → STS `AssumeRoleWithWebIdentity`
//!    (not signed: the token is the proof), the token file read again at every refresh (the
//!    kubelet rotates it);
//! 3. EKS Pod Identity (and ECS): `AWS_CONTAINER_CREDENTIALS_FULL_URI` with
//!    `AWS_CONTAINER_AUTHORIZATION_TOKEN_FILE` (or `…_TOKEN`), or `…_RELATIVE_URI`;
//! 4. the instance profile through IMDSv2.
//!
//! Temporary credentials are refreshed five minutes before they expire. Secrets never appear in
//! `Debug` output or errors.

use std::{
    collections::HashMap,
    path::PathBuf,
    sync::Arc,
    time::{Duration, SystemTime},
};

use bytes::Bytes;
use http_body_util::Full;
use hyper::{header, Method, Request};

pub use super::keys::Credentials;
use super::{
    http::{HttpClient, HttpError},
    imds::{Imds, ImdsError},
    keys::credentials_json,
    xml,
};

/// Credential answers are small JSON or XML documents.
const BODY_LIMIT: usize = 64 * 1024;
const TIMEOUT: Duration = Duration::from_secs(10);

#[derive(Debug, thiserror::Error)]
pub enum CredentialsError {
    #[error("{source_name}: {message}")]
    Invalid {
        source_name: &'static str,
        message: String,
    },
    #[error("{source_name}: {source}")]
    Http {
        source_name: &'static str,
        source: HttpError,
    },
    #[error("instance profile: {0}")]
    Imds(#[from] ImdsError),
}

/// Where the credentials come from.
#[derive(Clone)]
pub enum Source {
    Environment(Credentials),
    WebIdentity {
        role_arn: String,
        token_file: PathBuf,
        session_name: String,
    },
    Container {
        uri: String,
        token: Option<ContainerToken>,
    },
    InstanceProfile {
        role: String,
        imds: Arc<Imds>,
    },
}

#[derive(Clone)]
pub enum ContainerToken {
    File(PathBuf),
    Value(String),
}

impl std::fmt::Debug for Source {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.describe())
    }
}

impl Source {
    /// For the start-up log: which source, and its non-secret identifiers.
    pub fn describe(&self) -> String {
        match self {
            Source::Environment(c) => {
                format!("environment (AWS_ACCESS_KEY_ID {})", c.access_key_id)
            }
            Source::WebIdentity { role_arn, .. } => format!("IRSA web identity, role {role_arn}"),
            Source::Container { uri, .. } => format!("EKS Pod Identity / container endpoint {uri}"),
            Source::InstanceProfile { role, .. } => format!("instance profile, role {role}"),
        }
    }

    fn name(&self) -> &'static str {
        match self {
            Source::Environment(_) => "environment credentials",
            Source::WebIdentity { .. } => "IRSA web identity",
            Source::Container { .. } => "container credentials",
            Source::InstanceProfile { .. } => "instance profile",
        }
    }
}

/// The process environment as the chain reads it (a map in tests).
pub type Env = HashMap<String, String>;

pub fn process_env() -> Env {
    std::env::vars().collect()
}

fn var<'a>(env: &'a Env, key: &str) -> Option<&'a str> {
    env.get(key)
        .map(String::as_str)
        .filter(|v| !v.trim().is_empty())
}

/// Finds the first source of the chain that is configured; the instance profile only when IMDS
/// is given and says the instance has one.
pub async fn find(env: &Env, imds: Option<&Arc<Imds>>) -> Result<Option<Source>, CredentialsError> {
    if let (Some(id), Some(secret)) = (
        var(env, "AWS_ACCESS_KEY_ID"),
        var(env, "AWS_SECRET_ACCESS_KEY"),
    ) {
        return Ok(Some(Source::Environment(Credentials {
            access_key_id: id.to_owned(),
            secret_access_key: secret.to_owned(),
            session_token: var(env, "AWS_SESSION_TOKEN").map(str::to_owned),
            expires: None,
        })));
    }
    if let (Some(role_arn), Some(file)) = (
        var(env, "AWS_ROLE_ARN"),
        var(env, "AWS_WEB_IDENTITY_TOKEN_FILE"),
    ) {
        let session_name = var(env, "AWS_ROLE_SESSION_NAME")
            .map(str::to_owned)
            .unwrap_or_else(|| {
                format!(
                    "netcost-{}",
                    SystemTime::now()
                        .duration_since(SystemTime::UNIX_EPOCH)
                        .map_or(0, |d| d.as_secs())
                )
            });
        return Ok(Some(Source::WebIdentity {
            role_arn: role_arn.to_owned(),
            token_file: PathBuf::from(file),
            session_name,
        }));
    }
    let token = var(env, "AWS_CONTAINER_AUTHORIZATION_TOKEN_FILE")
        .map(|f| ContainerToken::File(PathBuf::from(f)))
        .or_else(|| {
            var(env, "AWS_CONTAINER_AUTHORIZATION_TOKEN")
                .map(|t| ContainerToken::Value(t.to_owned()))
        });
    if let Some(uri) = var(env, "AWS_CONTAINER_CREDENTIALS_FULL_URI") {
        check_container_uri(uri)?;
        return Ok(Some(Source::Container {
            uri: uri.to_owned(),
            token,
        }));
    }
    if let Some(relative) = var(env, "AWS_CONTAINER_CREDENTIALS_RELATIVE_URI") {
        return Ok(Some(Source::Container {
            uri: format!("http://169.254.170.2{relative}"),
            token,
        }));
    }
    if let Some(imds) = imds {
        if let Some(role) = imds.instance_profile_role().await? {
            return Ok(Some(Source::InstanceProfile {
                role,
                imds: imds.clone(),
            }));
        }
    }
    Ok(None)
}

/// The SDKs' rule for a full container URI: HTTPS anywhere, plain HTTP only to loopback or the
/// ECS and EKS Pod Identity agents' link-local addresses (a token must not travel elsewhere).
fn check_container_uri(uri: &str) -> Result<(), CredentialsError> {
    let invalid = |message: String| CredentialsError::Invalid {
        source_name: "container credentials",
        message,
    };
    let parsed: hyper::Uri = uri.parse().map_err(|_| {
        invalid(format!(
            "AWS_CONTAINER_CREDENTIALS_FULL_URI {uri:?} is not a URL"
        ))
    })?;
    match parsed.scheme_str() {
        Some("https") => Ok(()),
        Some("http") => {
            let host = parsed.host().unwrap_or_default().trim_matches(['[', ']']);
            let allowed = host == "localhost"
                || host.parse::<std::net::IpAddr>().is_ok_and(|a| {
                    a.is_loopback()
                        || a == std::net::IpAddr::from([169, 254, 170, 2])
                        || a == std::net::IpAddr::from([169, 254, 170, 23])
                        || a == "fd00:ec2::23".parse::<std::net::IpAddr>().unwrap_or(a)
                });
            if allowed {
                Ok(())
            } else {
                Err(invalid(format!("AWS_CONTAINER_CREDENTIALS_FULL_URI {uri:?}: plain http only to loopback, 169.254.170.2, 169.254.170.23 or fd00:ec2::23")))
            }
        }
        _ => Err(invalid(format!(
            "AWS_CONTAINER_CREDENTIALS_FULL_URI {uri:?} is not http:// or https://"
        ))),
    }
}

/// Credentials from one source, cached until shortly before they expire.
pub struct Provider {
    source: Source,
    http: HttpClient,
    /// STS for web identity.
    sts_endpoint: String,
    cached: Option<Credentials>,
}

impl Provider {
    pub fn new(source: Source, http: HttpClient, sts_endpoint: String) -> Provider {
        Provider {
            source,
            http,
            sts_endpoint,
            cached: None,
        }
    }

    pub fn source(&self) -> &Source {
        &self.source
    }

    /// Valid credentials: the cached ones, or fresh ones.
    pub async fn get(&mut self) -> Result<Credentials, CredentialsError> {
        let now = SystemTime::now();
        if let Some(c) = self.cached.as_ref().filter(|c| c.fresh_at(now)) {
            return Ok(c.clone());
        }
        let fresh = self.fetch().await?;
        self.cached = Some(fresh.clone());
        Ok(fresh)
    }

    /// Forgets the cached credentials (after an authentication error).
    pub fn invalidate(&mut self) {
        self.cached = None;
    }

    async fn fetch(&self) -> Result<Credentials, CredentialsError> {
        let name = self.source.name();
        let invalid = |message: String| CredentialsError::Invalid {
            source_name: name,
            message,
        };
        let http_error = |source: HttpError| CredentialsError::Http {
            source_name: name,
            source,
        };
        match &self.source {
            Source::Environment(c) => Ok(c.clone()),
            Source::WebIdentity {
                role_arn,
                token_file,
                session_name,
            } => {
                let token = std::fs::read_to_string(token_file).map_err(|e| {
                    invalid(format!(
                        "reading AWS_WEB_IDENTITY_TOKEN_FILE {}: {e}",
                        token_file.display()
                    ))
                })?;
                let body = form_urlencoded::Serializer::new(String::new())
                    .append_pair("Action", "AssumeRoleWithWebIdentity")
                    .append_pair("Version", "2011-06-15")
                    .append_pair("RoleArn", role_arn)
                    .append_pair("RoleSessionName", session_name)
                    .append_pair("WebIdentityToken", token.trim())
                    .finish();
                let request = Request::builder()
                    .method(Method::POST)
                    .uri(format!("{}/", self.sts_endpoint))
                    .header(
                        header::CONTENT_TYPE,
                        "application/x-www-form-urlencoded; charset=utf-8",
                    )
                    .header(header::ACCEPT, "application/xml")
                    .body(Full::new(Bytes::from(body)))
                    .map_err(|e| invalid(e.to_string()))?;
                let response = self
                    .http
                    .send(request, TIMEOUT, BODY_LIMIT)
                    .await
                    .map_err(http_error)?;
                let text = response.text();
                if !response.status.is_success() {
                    return Err(invalid(format!(
                        "STS AssumeRoleWithWebIdentity answered {}: {}",
                        response.status,
                        xml::error_message(&text)
                    )));
                }
                xml::assume_role_credentials(&text).map_err(|e| invalid(format!("STS answer: {e}")))
            }
            Source::Container { uri, token } => {
                let mut request = Request::builder().method(Method::GET).uri(uri.as_str());
                match token {
                    Some(ContainerToken::File(f)) => {
                        let t = std::fs::read_to_string(f).map_err(|e| {
                            invalid(format!(
                                "reading AWS_CONTAINER_AUTHORIZATION_TOKEN_FILE {}: {e}",
                                f.display()
                            ))
                        })?;
                        request = request.header(header::AUTHORIZATION, t.trim());
                    }
                    Some(ContainerToken::Value(t)) => {
                        request = request.header(header::AUTHORIZATION, t.trim())
                    }
                    None => {}
                }
                let request = request
                    .body(Full::new(Bytes::new()))
                    .map_err(|e| invalid(e.to_string()))?;
                let response = self
                    .http
                    .send(request, TIMEOUT, BODY_LIMIT)
                    .await
                    .map_err(http_error)?;
                if !response.status.is_success() {
                    return Err(invalid(format!("{uri} answered {}", response.status)));
                }
                credentials_json(&response.body).map_err(invalid)
            }
            Source::InstanceProfile { role, imds } => {
                let doc = imds.instance_profile_credentials(role).await?;
                credentials_json(doc.as_bytes()).map_err(invalid)
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn env(pairs: &[(&str, &str)]) -> Env {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    #[tokio::test]
    async fn the_chain_goes_environment_then_web_identity_then_container() {
        let all = env(&[
            ("AWS_ACCESS_KEY_ID", "AKIDENV"),
            ("AWS_SECRET_ACCESS_KEY", "s"),
            ("AWS_ROLE_ARN", "arn:aws:iam::1:role/r"),
            ("AWS_WEB_IDENTITY_TOKEN_FILE", "/t"),
            (
                "AWS_CONTAINER_CREDENTIALS_FULL_URI",
                "http://169.254.170.23/v1/credentials",
            ),
        ]);
        let found = find(&all, None).await.unwrap().unwrap();
        assert!(matches!(found, Source::Environment(_)), "{found:?}");
        let mut rest = all.clone();
        rest.remove("AWS_ACCESS_KEY_ID");
        let found = find(&rest, None).await.unwrap().unwrap();
        assert!(matches!(found, Source::WebIdentity { .. }), "{found:?}");
        rest.remove("AWS_ROLE_ARN");
        let found = find(&rest, None).await.unwrap().unwrap();
        assert!(matches!(found, Source::Container { .. }), "{found:?}");
        rest.remove("AWS_CONTAINER_CREDENTIALS_FULL_URI");
        assert!(find(&rest, None).await.unwrap().is_none());
    }

    #[tokio::test]
    async fn a_container_token_goes_only_to_allowed_hosts() {
        for ok in [
            "http://169.254.170.23/v1/credentials",
            "http://127.0.0.1:8080/creds",
            "http://[fd00:ec2::23]/v1/credentials",
            "https://creds.example/",
        ] {
            let e = env(&[("AWS_CONTAINER_CREDENTIALS_FULL_URI", ok)]);
            assert!(find(&e, None).await.is_ok(), "{ok}");
        }
        let e = env(&[("AWS_CONTAINER_CREDENTIALS_FULL_URI", "http://evil.example/")]);
        let err = find(&e, None).await.unwrap_err().to_string();
        assert!(err.contains("plain http only to loopback"), "{err}");
    }

    #[test]
    fn secrets_stay_out_of_debug_output() {
        let c = Credentials {
            access_key_id: "AKID".into(),
            secret_access_key: "very-secret".into(),
            session_token: Some("tok-secret".into()),
            expires: None,
        };
        let text = format!("{c:?} {:?}", Source::Environment(c.clone()));
        assert!(
            !text.contains("very-secret") && !text.contains("tok-secret"),
            "{text}"
        );
        assert!(text.contains("AKID"));
    }

    #[test]
    fn credential_documents_are_checked() {
        let c = credentials_json(br#"{"Code":"Success","AccessKeyId":"AK","SecretAccessKey":"S","Token":"T","Expiration":"2026-12-01T23:00:00Z"}"#).unwrap();
        assert_eq!(c.access_key_id, "AK");
        assert_eq!(
            c.expires
                .unwrap()
                .duration_since(SystemTime::UNIX_EPOCH)
                .unwrap()
                .as_secs(),
            1_796_166_000
        );
        assert!(credentials_json(
            br#"{"Code":"Failure","AccessKeyId":"AK","SecretAccessKey":"S"}"#
        )
        .is_err());
        assert!(credentials_json(br#"{"AccessKeyId":"","SecretAccessKey":"S"}"#).is_err());
        assert!(credentials_json(b"<html>").is_err());
        let e =
            credentials_json(br#"{"AccessKeyId":"A","SecretAccessKey":"S","Expiration":"soon"}"#)
                .unwrap_err();
        assert!(e.contains("expiration"), "{e}");
    }

    #[test]
    fn credentials_are_refreshed_before_they_expire() {
        let now = SystemTime::now();
        let c = |left: u64| Credentials {
            access_key_id: "A".into(),
            secret_access_key: "S".into(),
            session_token: None,
            expires: Some(now + Duration::from_secs(left)),
        };
        assert!(c(3600).fresh_at(now));
        assert!(!c(120).fresh_at(now));
        assert!(Credentials {
            expires: None,
            ..c(0)
        }
        .fresh_at(now));
    }
}
