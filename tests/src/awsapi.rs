//! A local double of the AWS endpoints the agent uses, speaking their real protocols over plain
//! `http://127.0.0.1:PORT` (the agent is pointed at it the way the SDKs allow:
//! `AWS_ENDPOINT_URL_EC2`, `AWS_ENDPOINT_URL_STS`, `imds.endpoint`,
//! `AWS_CONTAINER_CREDENTIALS_FULL_URI`). No test ever reaches a real AWS endpoint.
//!
//! - IMDSv2: `PUT /latest/api/token` (needs the TTL header), then `GET /latest/meta-data/…`
//!   with the token; placement, `network/interfaces/macs/…`, `iam/security-credentials/…`.
//! - EC2 Query API: `POST /` with `Action=DescribeSubnets&Version=2016-11-15`, the
//!   `vpc-id` filter, `MaxResults` and `NextToken` pagination, XML answers with
//!   `availabilityZoneId`. Every request's SigV4 signature is verified here, independently of
//!   the agent's signer: the access key must be one the double issued, the credential scope
//!   must name the expected region and `ec2`, and the signature must match the secret.
//! - STS Query API: `POST /` with `Action=AssumeRoleWithWebIdentity` (unsigned, as AWS
//!   defines it: the web identity token is the proof), checked against the expected role and
//!   token; answers temporary credentials.
//! - The container credentials endpoint (EKS Pod Identity): `GET /v1/credentials` with the
//!   expected `Authorization` token; answers JSON.

use std::{
    collections::{BTreeMap, HashMap},
    io::{self, BufRead, BufReader, Read, Write},
    net::{Shutdown, TcpListener, TcpStream},
    sync::{
        atomic::{AtomicBool, AtomicU64, Ordering},
        Arc, Mutex, MutexGuard,
    },
    thread,
    time::{Duration, SystemTime},
};

use anyhow::{Context, Result};

use crate::{rfc3339, uri_encode};

/// One subnet the EC2 double lists.
#[derive(Clone, Debug)]
pub struct Subnet {
    pub id: String,
    pub vpc_id: String,
    pub zone: String,
    pub zone_id: String,
    pub ipv4: String,
    pub ipv6: Option<String>,
}

impl Subnet {
    /// Subnet `id` of `vpc_id` in `zone` (`zone_id`) with its IPv4 and perhaps IPv6 prefix.
    pub fn new(
        id: &str,
        vpc_id: &str,
        zone: (&str, &str),
        ipv4: &str,
        ipv6: Option<&str>,
    ) -> Subnet {
        Subnet {
            id: id.into(),
            vpc_id: vpc_id.into(),
            zone: zone.0.into(),
            zone_id: zone.1.into(),
            ipv4: ipv4.into(),
            ipv6: ipv6.map(Into::into),
        }
    }
}

/// What the double serves. Change it through [`AwsDouble::state`] while it runs.
#[derive(Clone, Debug, Default)]
pub struct AwsState {
    /// IMDS items by path below `/latest/meta-data/` (missing: 404).
    pub metadata: BTreeMap<String, String>,
    pub subnets: Vec<Subnet>,
    /// Subnets per page at most (whatever MaxResults asks for), to exercise pagination.
    pub page_size: usize,
    /// The region EC2 requests must be signed for.
    pub region: String,
    /// IRSA: the role and the token STS accepts for it.
    pub web_identity: Option<(String, String)>,
    /// EKS Pod Identity: the token the container endpoint accepts.
    pub container_token: Option<String>,
    /// Access key → secret of every credential the double issued or accepts.
    pub secrets: HashMap<String, String>,
    /// Lifetime of issued credentials.
    pub lifetime: Duration,
}

/// One request the double answered.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct AwsRequest {
    /// `imds`, `ec2`, `sts`, `container`.
    pub service: &'static str,
    pub action: String,
    /// The access key of a signed request.
    pub access_key: Option<String>,
    /// `None` for unsigned requests; `Some(Err(why))` when the signature did not verify.
    pub signature: Option<std::result::Result<(), String>>,
    pub status: u16,
}

struct Shared {
    state: Mutex<AwsState>,
    log: Mutex<Vec<AwsRequest>>,
    stopping: AtomicBool,
    issued: AtomicU64,
}

pub struct AwsDouble {
    shared: Arc<Shared>,
    port: u16,
    accept: Option<thread::JoinHandle<()>>,
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

impl AwsDouble {
    pub fn start(state: AwsState) -> Result<AwsDouble> {
        let listener = TcpListener::bind("127.0.0.1:0").context("binding the AWS double")?;
        let port = listener.local_addr()?.port();
        let shared = Arc::new(Shared {
            state: Mutex::new(state),
            log: Mutex::new(Vec::new()),
            stopping: AtomicBool::new(false),
            issued: AtomicU64::new(0),
        });
        let s = shared.clone();
        let accept = thread::Builder::new()
            .name("aws-double".into())
            .spawn(move || {
                for conn in listener.incoming() {
                    if s.stopping.load(Ordering::SeqCst) {
                        break;
                    }
                    let Ok(conn) = conn else { continue };
                    let s = s.clone();
                    let _ = thread::Builder::new()
                        .name("aws-double-conn".into())
                        .spawn(move || serve(conn, &s));
                }
            })?;
        Ok(AwsDouble {
            shared,
            port,
            accept: Some(accept),
        })
    }

    pub fn url(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    pub fn state(&self) -> MutexGuard<'_, AwsState> {
        lock(&self.shared.state)
    }

    pub fn requests(&self) -> Vec<AwsRequest> {
        lock(&self.shared.log).clone()
    }
}

impl Drop for AwsDouble {
    fn drop(&mut self) {
        self.shared.stopping.store(true, Ordering::SeqCst);
        let _ = TcpStream::connect(("127.0.0.1", self.port));
        if let Some(h) = self.accept.take() {
            let _ = h.join();
        }
    }
}

/// The VPC of the simulated node's EKS shape: two subnets per zone of us-east-1 (use1-az1,
/// use1-az2), IPv6 on three of them, and a subnet of a peered VPC that the `vpc-id` filter leaves
/// out; the node's interface in `subnet-a1`; IRSA for `role` with the projected token `token`.
pub const EKS_VPC: &str = "vpc-0a1b2c3d";

pub fn eks_vpc(role: &str, token: &str) -> AwsState {
    let a = ("us-east-1a", "use1-az1");
    let b = ("us-east-1b", "use1-az2");
    AwsState {
        metadata: instance_metadata(
            a.0,
            a.1,
            "us-east-1",
            EKS_VPC,
            &["10.0.0.0/20", "fd00:0:1::/64"],
            &["10.0.0.0/16", "fd00::/56"],
        ),
        subnets: vec![
            Subnet::new(
                "subnet-a1",
                EKS_VPC,
                a,
                "10.0.0.0/20",
                Some("fd00:0:1::/64"),
            ),
            Subnet::new(
                "subnet-a2",
                EKS_VPC,
                a,
                "10.0.32.0/20",
                Some("fd00:0:2::/64"),
            ),
            Subnet::new(
                "subnet-b1",
                EKS_VPC,
                b,
                "10.0.16.0/20",
                Some("fd00:0:16::/64"),
            ),
            Subnet::new("subnet-b2", EKS_VPC, b, "10.0.48.0/20", None),
            Subnet::new("subnet-peer", "vpc-0peer", a, "172.31.0.0/16", None),
        ],
        page_size: 2,
        region: "us-east-1".into(),
        web_identity: Some((role.into(), token.into())),
        lifetime: Duration::from_secs(3600),
        ..Default::default()
    }
}

/// The IMDS items of a node in `zone`/`zone_id` with one interface in `subnets` of `vpc_id`.
pub fn instance_metadata(
    zone: &str,
    zone_id: &str,
    region: &str,
    vpc_id: &str,
    subnets: &[&str],
    vpc_cidrs: &[&str],
) -> BTreeMap<String, String> {
    let mac = "0e:5c:00:00:00:01";
    let base = format!("network/interfaces/macs/{mac}");
    let (v4, v6): (Vec<&str>, Vec<&str>) = subnets.iter().partition(|c| !c.contains(':'));
    let (vpc4, vpc6): (Vec<&str>, Vec<&str>) = vpc_cidrs.iter().partition(|c| !c.contains(':'));
    let mut m = BTreeMap::new();
    m.insert("placement/availability-zone".into(), zone.into());
    m.insert("placement/availability-zone-id".into(), zone_id.into());
    m.insert("placement/region".into(), region.into());
    m.insert("network/interfaces/macs/".into(), format!("{mac}/"));
    m.insert(format!("{base}/vpc-id"), vpc_id.into());
    if let Some(c) = v4.first() {
        m.insert(format!("{base}/subnet-ipv4-cidr-block"), (*c).into());
    }
    if !v6.is_empty() {
        m.insert(format!("{base}/subnet-ipv6-cidr-blocks"), v6.join("\n"));
    }
    m.insert(format!("{base}/vpc-ipv4-cidr-blocks"), vpc4.join("\n"));
    if !vpc6.is_empty() {
        m.insert(format!("{base}/vpc-ipv6-cidr-blocks"), vpc6.join("\n"));
    }
    m
}

struct Request {
    method: String,
    path: String,
    query: String,
    headers: Vec<(String, String)>,
    body: Vec<u8>,
}

impl Request {
    fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }

    fn form(&self) -> HashMap<String, String> {
        form_urlencoded::parse(&self.body).into_owned().collect()
    }
}

fn read_request(reader: &mut BufReader<TcpStream>) -> io::Result<Option<Request>> {
    let mut line = String::new();
    if reader.read_line(&mut line)? == 0 {
        return Ok(None);
    }
    let mut parts = line.split_whitespace();
    let (Some(method), Some(target)) = (parts.next(), parts.next()) else {
        return Err(io::Error::new(io::ErrorKind::InvalidData, "request line"));
    };
    let (path, query) = target.split_once('?').unwrap_or((target, ""));
    let mut req = Request {
        method: method.to_owned(),
        path: path.to_owned(),
        query: query.to_owned(),
        headers: Vec::new(),
        body: Vec::new(),
    };
    let mut length = 0usize;
    loop {
        line.clear();
        if reader.read_line(&mut line)? == 0 {
            return Ok(None);
        }
        let h = line.trim_end();
        if h.is_empty() {
            break;
        }
        if let Some((k, v)) = h.split_once(':') {
            if k.eq_ignore_ascii_case("content-length") {
                length = v.trim().parse().unwrap_or(0);
            }
            req.headers.push((k.trim().to_owned(), v.trim().to_owned()));
        }
    }
    req.body.resize(length.min(1 << 20), 0);
    reader.read_exact(&mut req.body)?;
    Ok(Some(req))
}

fn serve(conn: TcpStream, shared: &Shared) {
    let Ok(mut writer) = conn.try_clone() else {
        return;
    };
    let mut reader = BufReader::new(conn);
    while let Ok(Some(req)) = read_request(&mut reader) {
        let (record, status, content_type, body) = handle(shared, &req);
        lock(&shared.log).push(AwsRequest { status, ..record });
        let head = format!(
            "HTTP/1.1 {status} X\r\nContent-Type: {content_type}\r\nContent-Length: {}\r\n\r\n",
            body.len()
        );
        if writer.write_all(head.as_bytes()).is_err() || writer.write_all(body.as_bytes()).is_err()
        {
            break;
        }
    }
    let _ = writer.shutdown(Shutdown::Both);
}

const TOKEN: &str = "imds-session-token";

fn record(service: &'static str, action: &str) -> AwsRequest {
    AwsRequest {
        service,
        action: action.to_owned(),
        access_key: None,
        signature: None,
        status: 0,
    }
}

fn handle(shared: &Shared, req: &Request) -> (AwsRequest, u16, &'static str, String) {
    const XML: &str = "text/xml";
    const TEXT: &str = "text/plain";
    const JSON: &str = "application/json";
    if req.path == "/latest/api/token" {
        let r = record("imds", "token");
        return if req.method == "PUT"
            && req.header("x-aws-ec2-metadata-token-ttl-seconds").is_some()
        {
            (r, 200, TEXT, TOKEN.into())
        } else {
            (r, 400, TEXT, String::new())
        };
    }
    if let Some(item) = req.path.strip_prefix("/latest/meta-data/") {
        let r = record("imds", item);
        if req.header("x-aws-ec2-metadata-token") != Some(TOKEN) {
            return (r, 401, TEXT, String::new());
        }
        let state = lock(&shared.state);
        if let Some(role) = item
            .strip_prefix("iam/security-credentials/")
            .filter(|r| !r.is_empty())
        {
            if state
                .metadata
                .get("iam/security-credentials/")
                .map(|s| s.trim())
                != Some(role)
            {
                return (r, 404, TEXT, String::new());
            }
            drop(state);
            return (r, 200, JSON, issue_json(shared, "ASIAIMDS", true));
        }
        return match state.metadata.get(item) {
            Some(v) => (r, 200, TEXT, v.clone()),
            None => (r, 404, TEXT, String::new()),
        };
    }
    if req.path == "/v1/credentials" {
        let r = record("container", "credentials");
        let want = lock(&shared.state).container_token.clone();
        if want.is_none() || req.header("authorization") != want.as_deref() {
            return (r, 401, JSON, "{\"message\":\"bad token\"}".into());
        }
        return (r, 200, JSON, issue_json(shared, "ASIAPODID", false));
    }
    if req.method == "POST" && req.path == "/" {
        let form = req.form();
        let action = form.get("Action").cloned().unwrap_or_default();
        match action.as_str() {
            "AssumeRoleWithWebIdentity" => return sts(shared, req, &form),
            "DescribeSubnets" => return ec2(shared, req, &form),
            _ => {}
        }
        return (
            record("ec2", &action),
            400,
            XML,
            ec2_error("InvalidAction", "unknown action"),
        );
    }
    (record("imds", &req.path), 404, TEXT, String::new())
}

fn issue(shared: &Shared, prefix: &str) -> (String, String, String, String) {
    let n = shared.issued.fetch_add(1, Ordering::SeqCst);
    let key = format!("{prefix}{n:08}");
    let secret = format!("secret-{prefix}-{n}");
    let mut state = lock(&shared.state);
    state.secrets.insert(key.clone(), secret.clone());
    let expires = SystemTime::now() + state.lifetime.max(Duration::from_secs(1));
    (key, secret, format!("session-{n}"), rfc3339(expires))
}

fn issue_json(shared: &Shared, prefix: &str, imds: bool) -> String {
    let (key, secret, token, expires) = issue(shared, prefix);
    let code = if imds {
        "\"Code\":\"Success\",\"Type\":\"AWS-HMAC\","
    } else {
        ""
    };
    format!("{{{code}\"AccessKeyId\":\"{key}\",\"SecretAccessKey\":\"{secret}\",\"Token\":\"{token}\",\"Expiration\":\"{expires}\"}}")
}

fn sts(
    shared: &Shared,
    req: &Request,
    form: &HashMap<String, String>,
) -> (AwsRequest, u16, &'static str, String) {
    let mut r = record("sts", "AssumeRoleWithWebIdentity");
    if req.header("authorization").is_some() {
        r.signature = Some(Err("AssumeRoleWithWebIdentity is not signed".into()));
    }
    let want = lock(&shared.state).web_identity.clone();
    let ok = want.is_some_and(|(role, token)| {
        form.get("RoleArn") == Some(&role) && form.get("WebIdentityToken") == Some(&token)
    }) && form.get("Version").map(String::as_str) == Some("2011-06-15")
        && form.get("RoleSessionName").is_some_and(|s| !s.is_empty());
    if !ok {
        let body = "<ErrorResponse><Error><Type>Sender</Type><Code>InvalidIdentityToken</Code><Message>token or role not accepted</Message></Error></ErrorResponse>";
        return (r, 400, "text/xml", body.into());
    }
    let (key, secret, token, expires) = issue(shared, "ASIAIRSA");
    let body = format!("<AssumeRoleWithWebIdentityResponse xmlns=\"https://sts.amazonaws.com/doc/2011-06-15/\"><AssumeRoleWithWebIdentityResult><Credentials><AccessKeyId>{key}</AccessKeyId><SecretAccessKey>{secret}</SecretAccessKey><SessionToken>{token}</SessionToken><Expiration>{expires}</Expiration></Credentials></AssumeRoleWithWebIdentityResult></AssumeRoleWithWebIdentityResponse>");
    (r, 200, "text/xml", body)
}

fn ec2_error(code: &str, message: &str) -> String {
    format!("<?xml version=\"1.0\" encoding=\"UTF-8\"?><Response><Errors><Error><Code>{code}</Code><Message>{message}</Message></Error></Errors><RequestID>req-1</RequestID></Response>")
}

fn ec2(
    shared: &Shared,
    req: &Request,
    form: &HashMap<String, String>,
) -> (AwsRequest, u16, &'static str, String) {
    let mut r = record("ec2", "DescribeSubnets");
    let state = lock(&shared.state).clone();
    let verdict = verify_sigv4(req, &state.secrets, &state.region, "ec2");
    r.access_key = verdict.as_ref().ok().cloned().or_else(|| signed_key(req));
    r.signature = Some(verdict.map(drop));
    if let Some(Err(why)) = &r.signature {
        let why = why.clone();
        return (r, 403, "text/xml", ec2_error("AuthFailure", &why));
    }
    if form.get("Version").map(String::as_str) != Some("2016-11-15") {
        return (
            r,
            400,
            "text/xml",
            ec2_error("InvalidParameterValue", "Version"),
        );
    }
    let vpc = (form.get("Filter.1.Name").map(String::as_str) == Some("vpc-id"))
        .then(|| form.get("Filter.1.Value.1").cloned())
        .flatten();
    let max: usize = form
        .get("MaxResults")
        .and_then(|m| m.parse().ok())
        .unwrap_or(1000);
    let start: usize = form
        .get("NextToken")
        .and_then(|t| t.strip_prefix("tok-")?.parse().ok())
        .unwrap_or(0);
    let matching: Vec<&Subnet> = state
        .subnets
        .iter()
        .filter(|s| vpc.as_ref().is_none_or(|v| *v == s.vpc_id))
        .collect();
    let size = max.min(state.page_size.max(1));
    let page: Vec<&&Subnet> = matching.iter().skip(start).take(size).collect();
    let mut body = String::from("<?xml version=\"1.0\" encoding=\"UTF-8\"?>\n<DescribeSubnetsResponse xmlns=\"http://ec2.amazonaws.com/doc/2016-11-15/\"><requestId>r</requestId><subnetSet>");
    for s in page {
        body.push_str(&format!(
            "<item><subnetId>{}</subnetId><state>available</state><vpcId>{}</vpcId><cidrBlock>{}</cidrBlock>",
            s.id, s.vpc_id, s.ipv4
        ));
        if let Some(v6) = &s.ipv6 {
            body.push_str(&format!("<ipv6CidrBlockAssociationSet><item><ipv6CidrBlock>{v6}</ipv6CidrBlock><associationId>a</associationId><ipv6CidrBlockState><state>associated</state></ipv6CidrBlockState></item></ipv6CidrBlockAssociationSet>"));
        }
        body.push_str(&format!(
            "<availabilityZone>{}</availabilityZone><availabilityZoneId>{}</availabilityZoneId><tagSet><item><key>Name</key><value>x</value></item></tagSet></item>",
            s.zone, s.zone_id
        ));
    }
    body.push_str("</subnetSet>");
    if start + size < matching.len() {
        body.push_str(&format!("<nextToken>tok-{}</nextToken>", start + size));
    }
    body.push_str("</DescribeSubnetsResponse>");
    (r, 200, "text/xml", body)
}

/// The access key a request claims in its `Authorization` header.
fn signed_key(req: &Request) -> Option<String> {
    let auth = req.header("authorization")?;
    let cred = auth.split("Credential=").nth(1)?;
    Some(cred.split('/').next()?.to_owned())
}

/// Verifies a SigV4 `Authorization` header against the secrets the double knows: returns the
/// access key, or why the signature is not valid. Written from AWS's specification
/// ("Create a signed AWS API request"), independent of the agent's signer.
fn verify_sigv4(
    req: &Request,
    secrets: &HashMap<String, String>,
    region: &str,
    service: &str,
) -> std::result::Result<String, String> {
    let auth = req
        .header("authorization")
        .ok_or("not signed: no Authorization header")?;
    let rest = auth
        .strip_prefix("AWS4-HMAC-SHA256 ")
        .ok_or("not AWS4-HMAC-SHA256")?;
    let mut credential = None;
    let mut signed = None;
    let mut signature = None;
    for part in rest.split(',') {
        let (k, v) = part
            .trim()
            .split_once('=')
            .ok_or("malformed Authorization")?;
        match k {
            "Credential" => credential = Some(v),
            "SignedHeaders" => signed = Some(v),
            "Signature" => signature = Some(v),
            _ => {}
        }
    }
    let (credential, signed, signature) = (
        credential.ok_or("no Credential")?,
        signed.ok_or("no SignedHeaders")?,
        signature.ok_or("no Signature")?,
    );
    let scope: Vec<&str> = credential.split('/').collect();
    let [key, date, r, s, terminal] = scope.as_slice() else {
        return Err(format!("credential scope {credential:?}"));
    };
    if *r != region || *s != service || *terminal != "aws4_request" {
        return Err(format!(
            "credential scope {credential:?} is not {region}/{service}"
        ));
    }
    let secret = secrets
        .get(*key)
        .ok_or_else(|| format!("unknown access key {key}"))?;
    let amz_date = req.header("x-amz-date").ok_or("no X-Amz-Date")?;
    if !amz_date.starts_with(date) {
        return Err("X-Amz-Date does not match the scope's date".into());
    }
    let mut canonical_headers = String::new();
    for name in signed.split(';') {
        let value = req
            .header(name)
            .ok_or_else(|| format!("signed header {name} missing"))?;
        let value = value.split_whitespace().collect::<Vec<_>>().join(" ");
        canonical_headers.push_str(&format!("{name}:{value}\n"));
    }
    let mut query: Vec<(String, String)> = form_urlencoded::parse(req.query.as_bytes())
        .into_owned()
        .collect();
    query.sort();
    let canonical_query = query
        .iter()
        .map(|(k, v)| format!("{}={}", uri_encode(k), uri_encode(v)))
        .collect::<Vec<_>>()
        .join("&");
    let canonical_request = format!(
        "{}\n{}\n{canonical_query}\n{canonical_headers}\n{signed}\n{}",
        req.method,
        req.path,
        hex(&sha256(&req.body))
    );
    let string_to_sign = format!(
        "AWS4-HMAC-SHA256\n{amz_date}\n{date}/{region}/{service}/aws4_request\n{}",
        hex(&sha256(canonical_request.as_bytes()))
    );
    let k_date = hmac(format!("AWS4{secret}").as_bytes(), date.as_bytes());
    let k_region = hmac(&k_date, region.as_bytes());
    let k_service = hmac(&k_region, service.as_bytes());
    let k_signing = hmac(&k_service, b"aws4_request");
    let expected = hex(&hmac(&k_signing, string_to_sign.as_bytes()));
    if expected != signature {
        return Err("SignatureDoesNotMatch".into());
    }
    Ok((*key).to_owned())
}

fn sha256(data: &[u8]) -> Vec<u8> {
    ring::digest::digest(&ring::digest::SHA256, data)
        .as_ref()
        .to_vec()
}

fn hmac(key: &[u8], data: &[u8]) -> Vec<u8> {
    let k = ring::hmac::Key::new(ring::hmac::HMAC_SHA256, key);
    ring::hmac::sign(&k, data).as_ref().to_vec()
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    /// AWS's published SigV4 example (IAM ListUsers, "Examples of the complete Signature Version
    /// 4 signing process"): the verifier accepts the signature AWS computed.
    #[test]
    fn the_verifier_accepts_aws_published_example() {
        let req = Request {
            method: "GET".into(),
            path: "/".into(),
            query: "Action=ListUsers&Version=2010-05-08".into(),
            headers: vec![
                ("Host".into(), "iam.amazonaws.com".into()),
                ("Content-Type".into(), "application/x-www-form-urlencoded; charset=utf-8".into()),
                ("X-Amz-Date".into(), "20150830T123600Z".into()),
                ("Authorization".into(), "AWS4-HMAC-SHA256 Credential=AKIDEXAMPLE/20150830/us-east-1/iam/aws4_request, SignedHeaders=content-type;host;x-amz-date, Signature=5d672d79c15b13162d9279b0855cfba6789a8edb4c82c400e06b5924a6f2b5d7".into()),
            ],
            body: Vec::new(),
        };
        let secrets: HashMap<String, String> = [(
            "AKIDEXAMPLE".to_owned(),
            "wJalrXUtnFEMI/K7MDENG+bPxRfiCYEXAMPLEKEY".to_owned(),
        )]
        .into();
        assert_eq!(
            verify_sigv4(&req, &secrets, "us-east-1", "iam"),
            Ok("AKIDEXAMPLE".into())
        );
        assert!(verify_sigv4(&req, &secrets, "eu-west-1", "iam").is_err());
        let mut wrong = secrets.clone();
        wrong.insert("AKIDEXAMPLE".into(), "other".into());
        assert_eq!(
            verify_sigv4(&req, &wrong, "us-east-1", "iam"),
            Err("SignatureDoesNotMatch".into())
        );
    }

    #[test]
    fn times_are_rfc3339() {
        assert_eq!(
            rfc3339(SystemTime::UNIX_EPOCH + Duration::from_secs(1_796_166_000)),
            "2026-12-01T23:00:00Z"
        );
    }
}
