//! EC2 `DescribeSubnets` for our VPC over the Query API (`Action=DescribeSubnets&Version=
//! 2016-11-15`), SigV4-signed, every page: each subnet's IPv4 and IPv6 prefixes with its zone
//! and zone ID. Subnets are single-zone, so this places every address of the VPC — pods behind
//! no Service and AWS-managed hosts (RDS, ElastiCache, EFS mount targets…) included. The only
//! permission it needs is `ec2:DescribeSubnets`.

use std::time::{Duration, SystemTime};

use bytes::Bytes;
use http_body_util::Full;
use hyper::{header, Method, Request};

use super::{
    credentials::Credentials,
    http::{HttpClient, HttpError},
    xml::{self, Subnet},
};

/// One page of 1,000 subnets is a few hundred KB.
const BODY_LIMIT: usize = 8 * 1024 * 1024;
/// Pages read at most (200,000 subnets; a VPC holds at most a few hundred).
const MAX_PAGES: usize = 200;
const TIMEOUT: Duration = Duration::from_secs(20);

#[derive(Debug, thiserror::Error)]
pub enum Ec2Error {
    #[error("EC2 DescribeSubnets: {0}")]
    Http(#[from] HttpError),
    #[error("EC2 DescribeSubnets answered {status}: {message}")]
    Api {
        status: u16,
        code: Option<String>,
        message: String,
    },
    #[error("EC2 DescribeSubnets: {0}")]
    Invalid(String),
}

impl Ec2Error {
    /// The credentials were refused (expired, revoked): worth fetching them again.
    pub fn is_auth(&self) -> bool {
        matches!(self, Ec2Error::Api { code: Some(c), .. }
            if c == "AuthFailure" || c == "RequestExpired" || c == "ExpiredToken" || c == "InvalidClientTokenId")
    }
}

pub struct Ec2 {
    http: HttpClient,
    endpoint: String,
    region: String,
}

impl Ec2 {
    pub fn new(http: HttpClient, endpoint: String, region: String) -> Ec2 {
        Ec2 {
            http,
            endpoint,
            region,
        }
    }

    pub fn endpoint(&self) -> &str {
        &self.endpoint
    }

    /// Every subnet of `vpc_id`.
    pub async fn describe_subnets(
        &self,
        credentials: &Credentials,
        vpc_id: &str,
    ) -> Result<Vec<Subnet>, Ec2Error> {
        let mut all = Vec::new();
        let mut token: Option<String> = None;
        for _ in 0..MAX_PAGES {
            let page = self.page(credentials, vpc_id, token.as_deref()).await?;
            all.extend(page.subnets);
            match page.next_token {
                Some(t) if Some(&t) != token.as_ref() => token = Some(t),
                _ => return Ok(all),
            }
        }
        Err(Ec2Error::Invalid(format!(
            "more than {MAX_PAGES} pages of subnets"
        )))
    }

    async fn page(
        &self,
        credentials: &Credentials,
        vpc_id: &str,
        token: Option<&str>,
    ) -> Result<xml::SubnetPage, Ec2Error> {
        // The serializer is not Send: build the body before any await.
        let body = {
            let mut form = form_urlencoded::Serializer::new(String::new());
            form.append_pair("Action", "DescribeSubnets")
                .append_pair("Version", "2016-11-15")
                .append_pair("Filter.1.Name", "vpc-id")
                .append_pair("Filter.1.Value.1", vpc_id)
                .append_pair("MaxResults", "1000");
            if let Some(t) = token {
                form.append_pair("NextToken", t);
            }
            form.finish()
        };
        let request = signed_post(
            &format!("{}/", self.endpoint),
            body,
            credentials,
            &self.region,
            "ec2",
            SystemTime::now(),
        )
        .map_err(Ec2Error::Invalid)?;
        let response = self.http.send(request, TIMEOUT, BODY_LIMIT).await?;
        let text = response.text();
        if !response.status.is_success() {
            return Err(Ec2Error::Api {
                status: response.status.as_u16(),
                code: xml::error_code(&text),
                message: xml::error_message(&text),
            });
        }
        xml::describe_subnets(&text).map_err(Ec2Error::Invalid)
    }
}

/// A form-encoded POST to a Query API, SigV4-signed for `service` in `region`.
pub fn signed_post(
    url: &str,
    body: String,
    credentials: &Credentials,
    region: &str,
    service: &str,
    time: SystemTime,
) -> Result<Request<Full<Bytes>>, String> {
    use aws_sigv4::{
        http_request::{sign, SignableBody, SignableRequest, SigningSettings},
        sign::v4,
    };
    let uri: hyper::Uri = url.parse().map_err(|e| format!("{url}: {e}"))?;
    let host = uri
        .authority()
        .map(|a| a.as_str().to_owned())
        .ok_or_else(|| format!("{url} has no host"))?;
    let content_type = "application/x-www-form-urlencoded; charset=utf-8";
    let mut request = Request::builder()
        .method(Method::POST)
        .uri(uri)
        .header(header::HOST, &host)
        .header(header::CONTENT_TYPE, content_type)
        .body(Full::new(Bytes::from(body.clone())))
        .map_err(|e| e.to_string())?;
    let identity = aws_credential_types::Credentials::new(
        &credentials.access_key_id,
        &credentials.secret_access_key,
        credentials.session_token.clone(),
        credentials.expires,
        "netcost",
    )
    .into();
    let params = v4::SigningParams::builder()
        .identity(&identity)
        .region(region)
        .name(service)
        .time(time)
        .settings(SigningSettings::default())
        .build()
        .map_err(|e| e.to_string())?
        .into();
    let headers = [("host", host.as_str()), ("content-type", content_type)];
    let signable = SignableRequest::new(
        "POST",
        url,
        headers.into_iter(),
        SignableBody::Bytes(body.as_bytes()),
    )
    .map_err(|e| e.to_string())?;
    let (instructions, _) = sign(signable, &params)
        .map_err(|e| e.to_string())?
        .into_parts();
    instructions.apply_to_request_http1x(&mut request);
    Ok(request)
}

/// The EC2 and STS endpoints: the config's, else the environment's (`AWS_ENDPOINT_URL_<SERVICE>`,
/// then `AWS_ENDPOINT_URL`, as the SDKs read them), else the region's public one.
pub fn endpoint(
    configured: Option<&str>,
    env: &crate::inventory::aws::credentials::Env,
    service: &str,
    region: &str,
) -> String {
    let from_env = |k: &str| {
        env.get(k)
            .map(|v| v.trim().trim_end_matches('/').to_owned())
            .filter(|v| !v.is_empty())
    };
    configured
        .map(str::to_owned)
        .or_else(|| {
            from_env(&format!(
                "AWS_ENDPOINT_URL_{}",
                service.to_ascii_uppercase()
            ))
        })
        .or_else(|| from_env("AWS_ENDPOINT_URL"))
        .unwrap_or_else(|| format!("https://{service}.{region}.amazonaws.com"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn requests_carry_a_sigv4_authorization_for_the_service_and_region() {
        let creds = Credentials {
            access_key_id: "AKIDEXAMPLE".into(),
            secret_access_key: "wJalrXUtnFEMI/K7MDENG+bPxRfiCYEXAMPLEKEY".into(),
            session_token: Some("session".into()),
            expires: None,
        };
        let r = signed_post(
            "http://127.0.0.1:8080/",
            "Action=DescribeSubnets".into(),
            &creds,
            "us-east-1",
            "ec2",
            SystemTime::UNIX_EPOCH + Duration::from_secs(1_796_166_000),
        )
        .unwrap();
        let auth = r.headers()[header::AUTHORIZATION].to_str().unwrap();
        assert!(
            auth.starts_with("AWS4-HMAC-SHA256 Credential=AKIDEXAMPLE/20261201/us-east-1/ec2/aws4_request, SignedHeaders="),
            "{auth}"
        );
        assert!(
            auth.contains("host") && auth.contains("x-amz-date"),
            "{auth}"
        );
        assert_eq!(r.headers()["x-amz-security-token"], "session");
        assert_eq!(r.headers()[header::HOST], "127.0.0.1:8080");
    }

    #[test]
    fn endpoints_follow_config_then_environment_then_region() {
        let env: crate::inventory::aws::credentials::Env = [
            (
                "AWS_ENDPOINT_URL_EC2".to_owned(),
                "http://ec2.local/".to_owned(),
            ),
            ("AWS_ENDPOINT_URL".to_owned(), "http://all.local".to_owned()),
        ]
        .into();
        assert_eq!(endpoint(Some("http://cfg"), &env, "ec2", "r"), "http://cfg");
        assert_eq!(endpoint(None, &env, "ec2", "r"), "http://ec2.local");
        assert_eq!(endpoint(None, &env, "sts", "r"), "http://all.local");
        assert_eq!(
            endpoint(None, &Default::default(), "sts", "eu-west-1"),
            "https://sts.eu-west-1.amazonaws.com"
        );
    }
}
