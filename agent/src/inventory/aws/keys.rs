//! AWS credentials as a value (secrets never in `Debug` output), and the JSON document the
//! container and instance-profile endpoints give them in (STS's XML is read by `xml`).

use std::time::{Duration, SystemTime};

/// Credentials this close to their expiry are fetched again.
const REFRESH_BEFORE: Duration = Duration::from_secs(300);

#[derive(Clone, PartialEq, Eq)]
pub struct Credentials {
    pub access_key_id: String,
    pub secret_access_key: String,
    pub session_token: Option<String>,
    /// `None`: long-lived keys.
    pub expires: Option<SystemTime>,
}

impl std::fmt::Debug for Credentials {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Credentials")
            .field("access_key_id", &self.access_key_id)
            .field("secret_access_key", &"<redacted>")
            .field(
                "session_token",
                &self.session_token.as_ref().map(|_| "<redacted>"),
            )
            .field("expires", &self.expires)
            .finish()
    }
}

impl Credentials {
    pub fn fresh_at(&self, now: SystemTime) -> bool {
        self.expires.is_none_or(|e| {
            e.duration_since(now)
                .is_ok_and(|left| left > REFRESH_BEFORE)
        })
    }
}

#[derive(serde::Deserialize)]
#[serde(rename_all = "PascalCase")]
struct CredentialsDoc {
    access_key_id: String,
    secret_access_key: String,
    token: Option<String>,
    expiration: Option<String>,
    /// IMDS says `Success`.
    code: Option<String>,
}

/// The JSON document the container endpoint and IMDS answer with.
pub fn credentials_json(body: &[u8]) -> Result<Credentials, String> {
    let doc: CredentialsDoc =
        serde_json::from_slice(body).map_err(|e| format!("not a credentials document: {e}"))?;
    if let Some(code) = doc.code.as_deref().filter(|c| *c != "Success") {
        return Err(format!("credentials not available: Code {code:?}"));
    }
    if doc.access_key_id.is_empty() || doc.secret_access_key.is_empty() {
        return Err("credentials document without AccessKeyId or SecretAccessKey".into());
    }
    Ok(Credentials {
        access_key_id: doc.access_key_id,
        secret_access_key: doc.secret_access_key,
        session_token: doc.token.filter(|t| !t.is_empty()),
        expires: doc.expiration.as_deref().map(parse_time).transpose()?,
    })
}

/// An RFC 3339 time such as `2026-12-01T23:00:00Z`.
pub fn parse_time(text: &str) -> Result<SystemTime, String> {
    let ts: k8s_openapi::jiff::Timestamp = text
        .trim()
        .parse()
        .map_err(|e| format!("expiration {text:?}: {e}"))?;
    Ok(SystemTime::from(ts))
}
