//! Who may call the kubelet API, decided as kubelet decides it.
//!
//! A caller is authenticated by a client certificate signed by the kubelet client CA (the user
//! is the certificate's CN, its groups the O entries; this is how the kube-apiserver calls, with
//! its `--kubelet-client-certificate`) or by a bearer token the API server vouches for
//! (TokenReview). Anonymous callers get 401. The user is then authorized with a
//! SubjectAccessReview on `nodes/<subresource>` of the node the request is about, the verb
//! taken from the HTTP method (kubelet's `pkg/kubelet/server/auth.go`); refused: 403.
//!
//! Reviews are cached for a few seconds in a bounded map, and at most a few run at a time, so
//! a flood of requests costs the API server little.

use std::{
    collections::{BTreeMap, HashMap},
    hash::Hash,
    sync::{Arc, Mutex},
    time::{Duration, Instant},
};

use futures::{FutureExt, future::BoxFuture};
use k8s_openapi::api::{
    authentication::v1::{TokenReview, TokenReviewSpec},
    authorization::v1::{ResourceAttributes, SubjectAccessReview, SubjectAccessReviewSpec},
};
use kube::api::{Api, PostParams};
use tokio::sync::Semaphore;

/// How long a review's answer is reused.
pub const REVIEW_TTL: Duration = Duration::from_secs(10);
/// Most answers remembered per kind of review.
pub const REVIEW_CACHE_ENTRIES: usize = 1024;
/// Most reviews in flight towards the API server at once.
const REVIEWS_IN_FLIGHT: usize = 8;
/// Longest bearer token sent for review; longer ones are refused unread.
const MAX_TOKEN: usize = 16 * 1024;

/// An authenticated caller.
#[derive(Clone, Debug, Default, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct User {
    /// User name (a certificate's CN, or the TokenReview's username).
    pub name: String,
    /// Uid, when the authenticator gave one.
    pub uid: String,
    /// Groups (a certificate's O entries, or the TokenReview's groups).
    pub groups: Vec<String>,
    /// Extra attributes from the TokenReview.
    pub extra: BTreeMap<String, Vec<String>>,
}

/// What a request asks to do, in SubjectAccessReview terms (resource `nodes`).
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct Access {
    /// API verb: get, create, update, patch, delete.
    pub verb: &'static str,
    /// Subresource of `nodes`: log, proxy, stats, metrics, spec, checkpoint, healthz.
    pub subresource: &'static str,
    /// Node name; empty when the request names no single node (then rights on all nodes are
    /// needed).
    pub node: String,
}

/// Why a review could not be made.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct ReviewError(pub String);

/// Asks the API server who a token belongs to and what a user may do.
pub trait AccessReview: Send + Sync + 'static {
    /// The user `token` authenticates, or `None` if it authenticates nobody.
    fn authenticate(&self, token: &str) -> BoxFuture<'static, Result<Option<User>, ReviewError>>;
    /// Whether `user` may do `access`.
    fn authorize(
        &self,
        user: &User,
        access: &Access,
    ) -> BoxFuture<'static, Result<bool, ReviewError>>;
}

/// [`AccessReview`] by TokenReview and SubjectAccessReview through the API server.
#[derive(Clone)]
pub struct KubeAccessReview {
    client: kube::Client,
}

impl KubeAccessReview {
    /// Reviews through `client` (which needs `create` on tokenreviews and
    /// subjectaccessreviews).
    pub fn new(client: kube::Client) -> Self {
        Self { client }
    }
}

impl AccessReview for KubeAccessReview {
    fn authenticate(&self, token: &str) -> BoxFuture<'static, Result<Option<User>, ReviewError>> {
        let api: Api<TokenReview> = Api::all(self.client.clone());
        let review = TokenReview {
            spec: TokenReviewSpec {
                token: Some(token.to_string()),
                audiences: None,
            },
            ..Default::default()
        };
        async move {
            let done = api
                .create(&PostParams::default(), &review)
                .await
                .map_err(|e| ReviewError(format!("TokenReview: {e}")))?;
            let Some(status) = done.status else {
                return Ok(None);
            };
            if status.authenticated != Some(true) {
                return Ok(None);
            }
            let info = status.user.unwrap_or_default();
            Ok(Some(User {
                name: info.username.unwrap_or_default(),
                uid: info.uid.unwrap_or_default(),
                groups: info.groups.unwrap_or_default(),
                extra: info.extra.unwrap_or_default(),
            }))
        }
        .boxed()
    }

    fn authorize(
        &self,
        user: &User,
        access: &Access,
    ) -> BoxFuture<'static, Result<bool, ReviewError>> {
        let api: Api<SubjectAccessReview> = Api::all(self.client.clone());
        let review = SubjectAccessReview {
            spec: SubjectAccessReviewSpec {
                user: Some(user.name.clone()),
                uid: (!user.uid.is_empty()).then(|| user.uid.clone()),
                groups: Some(user.groups.clone()),
                extra: (!user.extra.is_empty()).then(|| user.extra.clone()),
                resource_attributes: Some(ResourceAttributes {
                    verb: Some(access.verb.to_string()),
                    version: Some("v1".into()),
                    resource: Some("nodes".into()),
                    subresource: Some(access.subresource.to_string()),
                    name: (!access.node.is_empty()).then(|| access.node.clone()),
                    ..Default::default()
                }),
                ..Default::default()
            },
            ..Default::default()
        };
        async move {
            let done = api
                .create(&PostParams::default(), &review)
                .await
                .map_err(|e| ReviewError(format!("SubjectAccessReview: {e}")))?;
            Ok(done.status.is_some_and(|s| s.allowed))
        }
        .boxed()
    }
}

// === impl TtlCache ===

/// A bounded map whose entries expire: when full, expired entries go first, then the oldest.
struct TtlCache<K, V> {
    ttl: Duration,
    capacity: usize,
    entries: HashMap<K, (Instant, V)>,
}

impl<K: Eq + Hash + Clone, V: Clone> TtlCache<K, V> {
    fn new(ttl: Duration, capacity: usize) -> Self {
        Self {
            ttl,
            capacity,
            entries: HashMap::new(),
        }
    }

    fn get(&mut self, key: &K) -> Option<V> {
        match self.entries.get(key) {
            Some((at, v)) if at.elapsed() < self.ttl => Some(v.clone()),
            Some(_) => {
                self.entries.remove(key);
                None
            }
            None => None,
        }
    }

    fn insert(&mut self, key: K, value: V) {
        if self.capacity == 0 {
            return;
        }
        if self.entries.len() >= self.capacity && !self.entries.contains_key(&key) {
            let ttl = self.ttl;
            self.entries.retain(|_, (at, _)| at.elapsed() < ttl);
            if self.entries.len() >= self.capacity
                && let Some(oldest) = self
                    .entries
                    .iter()
                    .min_by_key(|(_, (at, _))| *at)
                    .map(|(k, _)| k.clone())
            {
                self.entries.remove(&oldest);
            }
        }
        self.entries.insert(key, (Instant::now(), value));
    }

    #[cfg(test)]
    fn len(&self) -> usize {
        self.entries.len()
    }
}

/// Authenticates and authorizes kubelet API callers, with cached reviews.
#[derive(Clone)]
pub struct KubeletAuth {
    review: Arc<dyn AccessReview>,
    tokens: Arc<Mutex<TtlCache<String, Option<User>>>>,
    grants: Arc<Mutex<TtlCache<(User, Access), bool>>>,
    in_flight: Arc<Semaphore>,
}

impl std::fmt::Debug for KubeletAuth {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("KubeletAuth").finish_non_exhaustive()
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

impl KubeletAuth {
    /// Reviews with `review`, caching answers for [`REVIEW_TTL`] (at most
    /// [`REVIEW_CACHE_ENTRIES`] of each kind).
    pub fn new(review: Arc<dyn AccessReview>) -> Self {
        Self::with_cache(review, REVIEW_TTL, REVIEW_CACHE_ENTRIES)
    }

    /// Like [`KubeletAuth::new`] with another cache lifetime and size.
    pub fn with_cache(review: Arc<dyn AccessReview>, ttl: Duration, entries: usize) -> Self {
        Self {
            review,
            tokens: Arc::new(Mutex::new(TtlCache::new(ttl, entries))),
            grants: Arc::new(Mutex::new(TtlCache::new(ttl, entries))),
            in_flight: Arc::new(Semaphore::new(REVIEWS_IN_FLIGHT)),
        }
    }

    /// The user a bearer token authenticates (`None`: nobody).
    pub(crate) async fn authenticate(&self, token: &str) -> Result<Option<User>, ReviewError> {
        if token.is_empty() || token.len() > MAX_TOKEN {
            return Ok(None);
        }
        if let Some(hit) = lock(&self.tokens).get(&token.to_string()) {
            return Ok(hit);
        }
        let _permit = self
            .in_flight
            .acquire()
            .await
            .map_err(|e| ReviewError(e.to_string()))?;
        // Another request may have answered it while this one waited.
        if let Some(hit) = lock(&self.tokens).get(&token.to_string()) {
            return Ok(hit);
        }
        let user = self.review.authenticate(token).await?;
        lock(&self.tokens).insert(token.to_string(), user.clone());
        Ok(user)
    }

    /// Whether `user` may do `access`.
    pub(crate) async fn authorize(
        &self,
        user: &User,
        access: &Access,
    ) -> Result<bool, ReviewError> {
        let key = (user.clone(), access.clone());
        if let Some(hit) = lock(&self.grants).get(&key) {
            return Ok(hit);
        }
        let _permit = self
            .in_flight
            .acquire()
            .await
            .map_err(|e| ReviewError(e.to_string()))?;
        if let Some(hit) = lock(&self.grants).get(&key) {
            return Ok(hit);
        }
        let allowed = self.review.authorize(user, access).await?;
        lock(&self.grants).insert(key, allowed);
        Ok(allowed)
    }
}

/// The user of a verified client certificate: CN is the name, each O a group (as kubelet's
/// x509 authenticator), plus `system:authenticated`.
pub(crate) fn certificate_user(der: &[u8]) -> Option<User> {
    let (_, cert) = x509_parser::parse_x509_certificate(der).ok()?;
    let subject = cert.subject();
    let name = subject
        .iter_common_name()
        .next()
        .and_then(|a| a.as_str().ok())?
        .to_string();
    if name.is_empty() {
        return None;
    }
    let mut groups: Vec<String> = subject
        .iter_organization()
        .filter_map(|a| a.as_str().ok().map(str::to_string))
        .collect();
    groups.push("system:authenticated".into());
    Some(User {
        name,
        groups,
        ..Default::default()
    })
}

/// The SubjectAccessReview verb of an HTTP method, as kubelet maps it.
pub(crate) fn verb_of(method: &http::Method) -> Option<&'static str> {
    Some(match *method {
        http::Method::GET | http::Method::HEAD => "get",
        http::Method::POST => "create",
        http::Method::PUT => "update",
        http::Method::PATCH => "patch",
        http::Method::DELETE => "delete",
        _ => return None,
    })
}

/// The `nodes` subresources that allow a request to `path`, most specific first: kubelet
/// accepts `proxy` for everything, and the finer one where it has one. Logs (`/logs/`, and
/// here also `/containerLogs/`) take `log`, so a role granting `nodes/log` reads logs without
/// the exec-capable `nodes/proxy`.
pub(crate) fn subresources_of(path: &str) -> &'static [&'static str] {
    let under = |prefix: &str| path == prefix || path.starts_with(&format!("{prefix}/"));
    if under("/logs") || under("/containerLogs") {
        &["log", "proxy"]
    } else if under("/stats") {
        &["stats", "proxy"]
    } else if under("/metrics") {
        &["metrics", "proxy"]
    } else if under("/spec") {
        &["spec", "proxy"]
    } else if under("/checkpoint") {
        &["checkpoint", "proxy"]
    } else if under("/healthz") {
        &["healthz", "proxy"]
    } else {
        &["proxy"]
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cache_is_bounded_and_expires() {
        let mut c = TtlCache::new(Duration::from_millis(50), 3);
        for i in 0..10 {
            c.insert(i, i);
        }
        assert_eq!(c.len(), 3);
        assert_eq!(c.get(&9), Some(9));
        std::thread::sleep(Duration::from_millis(60));
        assert_eq!(c.get(&9), None);
    }

    #[test]
    fn kubelet_mapping() {
        assert_eq!(verb_of(&http::Method::GET), Some("get"));
        assert_eq!(verb_of(&http::Method::POST), Some("create"));
        assert_eq!(verb_of(&http::Method::DELETE), Some("delete"));
        assert_eq!(subresources_of("/containerLogs/a/b/c"), ["log", "proxy"]);
        assert_eq!(subresources_of("/logs/"), ["log", "proxy"]);
        assert_eq!(subresources_of("/stats/summary"), ["stats", "proxy"]);
        assert_eq!(subresources_of("/exec/a/b/c"), ["proxy"]);
        assert_eq!(subresources_of("/pods"), ["proxy"]);
        assert_eq!(subresources_of("/logsx"), ["proxy"]);
    }
}
