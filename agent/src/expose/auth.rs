//! Optional authentication of `/metrics` (off by default: the Kubecost drop-in is scraped without
//! it): a bearer token is checked with the Kubernetes `TokenReview` API, and the user it names
//! must be allowed `get` on the non-resource URL `/metrics` by a `SubjectAccessReview` — the
//! check kube-rbac-proxy and controller-runtime's metrics filter make. Answers are cached for a
//! short time (by a keyed hash of the token, never the token itself), so a scrape every 15 s
//! costs two API calls a minute at most. `/healthz` and `/readyz` stay open.

use std::{
    collections::HashMap,
    future::Future,
    hash::{BuildHasher, RandomState},
    pin::Pin,
    sync::{Arc, Mutex, PoisonError},
    time::{Duration, Instant},
};

use k8s_openapi::api::{
    authentication::v1::{TokenReview, TokenReviewSpec},
    authorization::v1::{NonResourceAttributes, SubjectAccessReview, SubjectAccessReviewSpec},
};

/// Who a token says the caller is.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct User {
    pub name: String,
    pub uid: Option<String>,
    pub groups: Vec<String>,
    pub extra: std::collections::BTreeMap<String, Vec<String>>,
}

/// What a check decided.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Decision {
    Allowed,
    /// The token is valid; its user may not read `/metrics`.
    Forbidden(String),
    /// No valid token.
    Unauthenticated(String),
}

type BoxFuture<'a, T> = Pin<Box<dyn Future<Output = T> + Send + 'a>>;

/// The two reviews, as the authenticator needs them (the API server, or a fake in tests).
pub trait Reviewer: Send + Sync {
    /// `Ok(None)`: the token is not valid.
    fn token(&self, token: &str) -> BoxFuture<'_, Result<Option<User>, String>>;
    fn may_get_metrics<'a>(&'a self, user: &'a User) -> BoxFuture<'a, Result<bool, String>>;
}

/// The reviews through the Kubernetes API.
pub struct KubeReviewer {
    pub client: kube::Client,
}

impl Reviewer for KubeReviewer {
    fn token(&self, token: &str) -> BoxFuture<'_, Result<Option<User>, String>> {
        let review = TokenReview {
            spec: TokenReviewSpec {
                token: Some(token.to_owned()),
                audiences: None,
            },
            ..Default::default()
        };
        Box::pin(async move {
            let api: kube::Api<TokenReview> = kube::Api::all(self.client.clone());
            let answer = api
                .create(&kube::api::PostParams::default(), &review)
                .await
                .map_err(|e| format!("TokenReview: {e}"))?;
            let Some(status) = answer.status.filter(|s| s.authenticated == Some(true)) else {
                return Ok(None);
            };
            let info = status.user.unwrap_or_default();
            Ok(Some(User {
                name: info.username.unwrap_or_default(),
                uid: info.uid,
                groups: info.groups.unwrap_or_default(),
                extra: info.extra.unwrap_or_default(),
            }))
        })
    }

    fn may_get_metrics<'a>(&'a self, user: &'a User) -> BoxFuture<'a, Result<bool, String>> {
        let review = SubjectAccessReview {
            spec: SubjectAccessReviewSpec {
                user: Some(user.name.clone()),
                uid: user.uid.clone(),
                groups: Some(user.groups.clone()),
                extra: (!user.extra.is_empty()).then(|| user.extra.clone()),
                non_resource_attributes: Some(NonResourceAttributes {
                    path: Some("/metrics".into()),
                    verb: Some("get".into()),
                }),
                resource_attributes: None,
            },
            ..Default::default()
        };
        Box::pin(async move {
            let api: kube::Api<SubjectAccessReview> = kube::Api::all(self.client.clone());
            let answer = api
                .create(&kube::api::PostParams::default(), &review)
                .await
                .map_err(|e| format!("SubjectAccessReview: {e}"))?;
            Ok(answer.status.is_some_and(|s| s.allowed))
        })
    }
}

/// Answers kept at most; beyond, the cache starts again (a flood of bad tokens cannot grow it).
const CACHE_ENTRIES: usize = 1024;
/// How long a review may take before the scrape is answered 503.
const REVIEW_TIMEOUT: Duration = Duration::from_secs(5);

pub struct Authenticator {
    reviewer: Arc<dyn Reviewer>,
    /// How long a decision is reused: `ttl` for allowed and forbidden, a tenth of it (at least
    /// a second) for invalid tokens.
    ttl: Duration,
    cache: Mutex<HashMap<u64, (Decision, Instant)>>,
    keys: RandomState,
}

/// Why a scrape is refused: the HTTP status and a short reason.
#[derive(Debug, PartialEq, Eq)]
pub struct Refusal {
    pub status: u16,
    pub reason: String,
}

impl Authenticator {
    pub fn new(reviewer: Arc<dyn Reviewer>, ttl: Duration) -> Authenticator {
        Authenticator {
            reviewer,
            ttl,
            cache: Mutex::new(HashMap::new()),
            keys: RandomState::new(),
        }
    }

    /// Checks an `Authorization` header.
    pub async fn check(&self, authorization: Option<&str>) -> Result<(), Refusal> {
        let refuse = |status: u16, reason: &str| Refusal {
            status,
            reason: reason.to_owned(),
        };
        let Some(token) = authorization
            .and_then(|h| h.strip_prefix("Bearer "))
            .map(str::trim)
            .filter(|t| !t.is_empty() && t.len() <= 16 * 1024)
        else {
            return Err(refuse(401, "a bearer token is required"));
        };
        let key = self.keys.hash_one(token);
        let cached = {
            let cache = self.cache.lock().unwrap_or_else(PoisonError::into_inner);
            cache
                .get(&key)
                .filter(|(_, until)| Instant::now() < *until)
                .cloned()
        };
        let decision = match cached {
            Some((d, _)) => d,
            None => {
                let decided = tokio::time::timeout(REVIEW_TIMEOUT, self.decide(token)).await;
                let decision = match decided {
                    Ok(Ok(d)) => d,
                    Ok(Err(e)) => {
                        tracing::warn!(error = %e, "cannot review a scrape's token");
                        return Err(refuse(503, "cannot verify the token now"));
                    }
                    Err(_) => return Err(refuse(503, "cannot verify the token now")),
                };
                let ttl = match decision {
                    Decision::Unauthenticated(_) => (self.ttl / 10).max(Duration::from_secs(1)),
                    _ => self.ttl,
                };
                let mut cache = self.cache.lock().unwrap_or_else(PoisonError::into_inner);
                if cache.len() >= CACHE_ENTRIES {
                    cache.clear();
                }
                cache.insert(key, (decision.clone(), Instant::now() + ttl));
                decision
            }
        };
        match decision {
            Decision::Allowed => Ok(()),
            Decision::Forbidden(user) => Err(Refusal {
                status: 403,
                reason: format!("{user} may not get /metrics"),
            }),
            Decision::Unauthenticated(why) => Err(Refusal {
                status: 401,
                reason: why,
            }),
        }
    }

    async fn decide(&self, token: &str) -> Result<Decision, String> {
        let Some(user) = self.reviewer.token(token).await? else {
            return Ok(Decision::Unauthenticated("the token is not valid".into()));
        };
        if self.reviewer.may_get_metrics(&user).await? {
            Ok(Decision::Allowed)
        } else {
            Ok(Decision::Forbidden(user.name))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicUsize, Ordering};

    /// Tokens "good" (allowed), "other" (valid, not allowed); counts the calls.
    #[derive(Default)]
    struct Fake {
        calls: AtomicUsize,
        down: std::sync::atomic::AtomicBool,
    }

    impl Reviewer for Fake {
        fn token(&self, token: &str) -> BoxFuture<'_, Result<Option<User>, String>> {
            self.calls.fetch_add(1, Ordering::SeqCst);
            let t = token.to_owned();
            Box::pin(async move {
                if self.down.load(Ordering::SeqCst) {
                    return Err("API down".into());
                }
                Ok(match t.as_str() {
                    "good" | "other" => Some(User {
                        name: format!("system:serviceaccount:monitoring:{t}"),
                        ..Default::default()
                    }),
                    _ => None,
                })
            })
        }
        fn may_get_metrics<'a>(&'a self, user: &'a User) -> BoxFuture<'a, Result<bool, String>> {
            Box::pin(async move { Ok(user.name.ends_with(":good")) })
        }
    }

    #[tokio::test]
    async fn tokens_are_reviewed_once_per_ttl_and_refusals_say_why() {
        let fake = Arc::new(Fake::default());
        let auth = Authenticator::new(fake.clone(), Duration::from_secs(60));
        assert_eq!(auth.check(Some("Bearer good")).await, Ok(()));
        assert_eq!(auth.check(Some("Bearer good")).await, Ok(()));
        assert_eq!(fake.calls.load(Ordering::SeqCst), 1, "cached");
        assert_eq!(
            auth.check(Some("Bearer other")).await.unwrap_err().status,
            403
        );
        assert_eq!(
            auth.check(Some("Bearer forged")).await.unwrap_err().status,
            401
        );
        assert_eq!(auth.check(None).await.unwrap_err().status, 401);
        assert_eq!(
            auth.check(Some("Basic Zm9vOmJhcg=="))
                .await
                .unwrap_err()
                .status,
            401
        );
        // The API goes away: known tokens still pass from the cache, new ones get 503.
        fake.down.store(true, Ordering::SeqCst);
        assert_eq!(auth.check(Some("Bearer good")).await, Ok(()));
        assert_eq!(
            auth.check(Some("Bearer new")).await.unwrap_err().status,
            503
        );
    }

    #[tokio::test]
    async fn a_flood_of_bad_tokens_does_not_grow_the_cache() {
        let auth = Authenticator::new(Arc::new(Fake::default()), Duration::from_secs(60));
        for i in 0..5000 {
            let _ = auth.check(Some(&format!("Bearer bad-{i}"))).await;
        }
        assert!(auth.cache.lock().unwrap().len() <= CACHE_ENTRIES);
    }
}
