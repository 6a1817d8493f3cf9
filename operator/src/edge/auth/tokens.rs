//! Join tokens: kubeadm-style `<id>.<secret>`, stored as Secrets labelled
//! [`JOIN_TOKEN_LABEL`] in the operator's namespace holding only their SHA-256 and expiry (the
//! chart's optional Secret holds the plain token under `token`, hashed on read). A join token
//! lets a new edge call `Register` once.

use std::collections::BTreeMap;
use std::time::Duration;

use decloud_crds::contracts::{JOIN_TOKEN_LABEL, OPERATOR_FIELD_MANAGER};
use jiff::{SignedDuration, Timestamp};
use k8s_openapi::ByteString;
use k8s_openapi::api::core::v1::Secret;
use kube::api::{Api, ListParams, ObjectMeta, PostParams};
use rand::Rng;
use tonic::Status;

use super::credentials::{same, sha256_hex};
use crate::time::rfc3339;

/// Prefix of the Secrets `decloud-operator token create` makes.
pub(crate) const TOKEN_SECRET_PREFIX: &str = "decloud-join-";

fn random_string(len: usize, alphabet: &[u8]) -> String {
    let mut rng = rand::rng();
    (0..len)
        .map(|_| alphabet[rng.random_range(0..alphabet.len())] as char)
        .collect()
}

const LOWER_ALNUM: &[u8] = b"abcdefghijklmnopqrstuvwxyz0123456789";

/// A new join token `<6 chars id>.<32 chars secret>`.
pub(crate) fn new_token() -> String {
    format!(
        "{}.{}",
        random_string(6, LOWER_ALNUM),
        random_string(32, LOWER_ALNUM)
    )
}

/// What `token list` shows about one join token.
#[derive(Clone, Debug)]
pub(crate) struct TokenInfo {
    /// The token's id (its part before the dot), or the Secret's name for chart tokens.
    pub(crate) id: String,
    /// The Secret holding it.
    pub(crate) secret: String,
    /// When it stops working (None: never).
    pub(crate) expires: Option<Timestamp>,
    /// SHA-256 of the token.
    hash: String,
    /// Made by `token create` (only a hash stored), not the chart's plain-token Secret, which
    /// Helm owns and the operator never deletes.
    created_by_operator: bool,
}

fn text(secret: &Secret, key: &str) -> Option<String> {
    let v = secret.data.as_ref()?.get(key)?;
    String::from_utf8(v.0.clone())
        .ok()
        .map(|s| s.trim().to_string())
}

impl TokenInfo {
    fn from_secret(secret: &Secret) -> Option<Self> {
        let name = secret.metadata.name.clone()?;
        let plain = text(secret, "token");
        let created_by_operator = plain.is_none();
        let hash = text(secret, "token-sha256").or_else(|| plain.map(|t| sha256_hex(&t)))?;
        let expires = text(secret, "expiration").and_then(|e| e.parse::<Timestamp>().ok());
        let id = text(secret, "token-id").unwrap_or_else(|| name.clone());
        Some(Self {
            id,
            secret: name,
            expires,
            hash,
            created_by_operator,
        })
    }

    /// Whether the token has expired at `now`.
    pub(crate) fn expired(&self, now: Timestamp) -> bool {
        self.expires.is_some_and(|e| e <= now)
    }

    /// Whether its Secret is due for deletion: made by `token create` and expired for longer
    /// than `retention` (until then a late edge is told "expired", not "unknown").
    pub(crate) fn due_for_cleanup(&self, now: Timestamp, retention: Duration) -> bool {
        let retention = SignedDuration::try_from(retention).unwrap_or(SignedDuration::MAX);
        self.created_by_operator
            && self
                .expires
                .and_then(|e| e.checked_add(retention).ok())
                .is_some_and(|due| due <= now)
    }
}

/// Deletes the Secrets of join tokens expired for longer than `retention`, as kubeadm's token
/// cleaner does, every `retention / 4` (between 1 s and 10 min). Runs on the leader until
/// the process ends; failures are logged and retried on the next pass.
pub(crate) async fn clean_expired_tokens(
    client: kube::Client,
    namespace: String,
    retention: Duration,
) {
    let period = (retention / 4).clamp(Duration::from_secs(1), Duration::from_secs(600));
    let api: Api<Secret> = Api::namespaced(client.clone(), &namespace);
    let mut tick = tokio::time::interval(period);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        let tokens = match list_tokens(&client, &namespace).await {
            Ok(t) => t,
            Err(e) => {
                tracing::warn!(error = %e, "cannot list join tokens for cleanup");
                continue;
            }
        };
        let now = Timestamp::now();
        for t in tokens.iter().filter(|t| t.due_for_cleanup(now, retention)) {
            match api.delete(&t.secret, &Default::default()).await {
                Ok(_) => tracing::info!(
                    token_id = %t.id,
                    secret = %t.secret,
                    expired = %t.expires.map(rfc3339).unwrap_or_default(),
                    "deleted an expired join token"
                ),
                Err(kube::Error::Api(e)) if e.code == 404 => {}
                Err(e) => {
                    tracing::warn!(token_id = %t.id, error = %e, "cannot delete an expired join token");
                }
            }
        }
    }
}

/// Every join token in `namespace`.
pub(crate) async fn list_tokens(
    client: &kube::Client,
    namespace: &str,
) -> kube::Result<Vec<TokenInfo>> {
    let api: Api<Secret> = Api::namespaced(client.clone(), namespace);
    let list = api
        .list(&ListParams::default().labels(&format!("{JOIN_TOKEN_LABEL}=true")))
        .await?;
    Ok(list
        .items
        .iter()
        .filter_map(TokenInfo::from_secret)
        .collect())
}

/// Stores a new join token valid until `expires` in `namespace`; returns the token.
pub(crate) async fn create_token(
    client: &kube::Client,
    namespace: &str,
    expires: Timestamp,
) -> kube::Result<String> {
    let token = new_token();
    let id = token.split('.').next().unwrap_or_default().to_string();
    let secret = Secret {
        metadata: ObjectMeta {
            name: Some(format!("{TOKEN_SECRET_PREFIX}{id}")),
            namespace: Some(namespace.into()),
            labels: Some(BTreeMap::from([(
                JOIN_TOKEN_LABEL.to_string(),
                "true".to_string(),
            )])),
            ..ObjectMeta::default()
        },
        type_: Some("Opaque".into()),
        data: Some(BTreeMap::from([
            ("token-id".to_string(), ByteString(id.into_bytes())),
            (
                "token-sha256".to_string(),
                ByteString(sha256_hex(&token).into_bytes()),
            ),
            (
                "expiration".to_string(),
                ByteString(rfc3339(expires).into_bytes()),
            ),
        ])),
        ..Secret::default()
    };
    let api: Api<Secret> = Api::namespaced(client.clone(), namespace);
    let pp = PostParams {
        field_manager: Some(OPERATOR_FIELD_MANAGER.into()),
        ..PostParams::default()
    };
    api.create(&pp, &secret).await?;
    Ok(token)
}

/// Deletes the join token `id` (its id, whole token, or Secret name). False if none matched.
pub(crate) async fn revoke_token(
    client: &kube::Client,
    namespace: &str,
    id: &str,
) -> kube::Result<bool> {
    let id = id.split('.').next().unwrap_or(id);
    let api: Api<Secret> = Api::namespaced(client.clone(), namespace);
    let mut any = false;
    for t in list_tokens(client, namespace).await? {
        if t.id == id || t.secret == id {
            api.delete(&t.secret, &Default::default()).await?;
            any = true;
        }
    }
    Ok(any)
}

/// The token list is read from the API at most this often, however many `Register` calls come.
const TOKEN_READ_INTERVAL: std::time::Duration = std::time::Duration::from_millis(500);

/// The join tokens, read from the API at most every [`TOKEN_READ_INTERVAL`]: a flood of bad
/// tokens costs the API server at most two LISTs a second. Every answer still rests on a read
/// made after the request arrived, so a revoked token is refused and a new one accepted at
/// once; concurrent checks share one read (and wait for it, which also slows guessing).
#[derive(Default)]
pub(crate) struct TokenCache {
    read: tokio::sync::Mutex<Option<(tokio::time::Instant, std::sync::Arc<Vec<TokenInfo>>)>>,
}

impl std::fmt::Debug for TokenCache {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TokenCache").finish_non_exhaustive()
    }
}

impl TokenCache {
    /// The token list as read at or after `arrived`.
    async fn tokens_since(
        &self,
        client: &kube::Client,
        namespace: &str,
        arrived: tokio::time::Instant,
    ) -> Result<std::sync::Arc<Vec<TokenInfo>>, Status> {
        let mut read = self.read.lock().await;
        if let Some((at, tokens)) = read.as_ref() {
            if *at > arrived {
                return Ok(tokens.clone());
            }
            tokio::time::sleep_until(*at + TOKEN_READ_INTERVAL).await;
        }
        let at = tokio::time::Instant::now();
        let tokens = std::sync::Arc::new(list_tokens(client, namespace).await.map_err(|e| {
            Status::unavailable(format!("the operator cannot read its join tokens: {e}"))
        })?);
        *read = Some((at, tokens.clone()));
        Ok(tokens)
    }

    /// Checks a join token against those stored in `namespace`.
    pub(crate) async fn check(
        &self,
        client: &kube::Client,
        namespace: &str,
        token: &str,
    ) -> Result<(), Status> {
        let token = token.trim();
        if token.is_empty() {
            return Err(Status::unauthenticated(
                "no join token given: an edge joins with `edge-kubelet join --token …`; an \
                 administrator creates one with `decloud-operator token create`",
            ));
        }
        let hash = sha256_hex(token);
        let tokens = self
            .tokens_since(client, namespace, tokio::time::Instant::now())
            .await?;
        match tokens.iter().find(|t| same(&t.hash, &hash)) {
            None => Err(Status::unauthenticated(
                "invalid join token (unknown, mistyped or revoked); ask the cluster administrator \
                 for a new one (`decloud-operator token create`)",
            )),
            Some(t) if t.expired(Timestamp::now()) => Err(Status::unauthenticated(format!(
                "the join token expired at {}; ask the cluster administrator for a new one \
                 (`decloud-operator token create`)",
                t.expires.map(rfc3339).unwrap_or_default()
            ))),
            Some(_) => Ok(()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tokens_have_their_shape() {
        let t = new_token();
        let (id, secret) = t.split_once('.').unwrap();
        assert_eq!((id.len(), secret.len()), (6, 32));
        assert_ne!(new_token(), t);
    }

    #[test]
    fn chart_tokens_are_hashed_on_read_and_expiry_counts() {
        let secret = |data: &[(&str, &str)]| Secret {
            metadata: ObjectMeta {
                name: Some("s".into()),
                ..Default::default()
            },
            data: Some(
                data.iter()
                    .map(|(k, v)| (k.to_string(), ByteString(v.as_bytes().to_vec())))
                    .collect(),
            ),
            ..Default::default()
        };
        let chart = TokenInfo::from_secret(&secret(&[("token", "plain\n")])).unwrap();
        assert_eq!(chart.hash, sha256_hex("plain"));
        assert!(!chart.expired(Timestamp::now()));
        let old = TokenInfo::from_secret(&secret(&[
            ("token-sha256", "ab"),
            ("expiration", "2020-01-01T00:00:00Z"),
        ]))
        .unwrap();
        assert!(old.expired(Timestamp::now()));
        assert!(TokenInfo::from_secret(&secret(&[])).is_none());

        // Cleanup: only tokens `token create` made, only once expired longer than retention.
        let day = Duration::from_secs(86_400);
        let expired_at = |at: &str, plain: bool| {
            let mut data = vec![("token-sha256", "ab"), ("expiration", at)];
            if plain {
                data.push(("token", "plain"));
            }
            TokenInfo::from_secret(&secret(&data)).unwrap()
        };
        let now: Timestamp = "2026-11-22T12:00:00Z".parse().unwrap();
        assert!(expired_at("2026-11-20T12:00:00Z", false).due_for_cleanup(now, day));
        assert!(expired_at("2026-11-21T12:00:00Z", false).due_for_cleanup(now, day));
        assert!(!expired_at("2026-11-21T12:00:01Z", false).due_for_cleanup(now, day));
        assert!(!expired_at("2026-11-23T12:00:00Z", false).due_for_cleanup(now, Duration::ZERO));
        assert!(!expired_at("2020-01-01T00:00:00Z", true).due_for_cleanup(now, day));
        assert!(!chart.due_for_cleanup(now, Duration::ZERO));
    }

    /// An API server holding the token Secrets `hashes` (shared, so a test can revoke), and
    /// counting the LISTs it answers.
    fn token_api(
        hashes: std::sync::Arc<parking_lot::Mutex<Vec<String>>>,
        lists: std::sync::Arc<std::sync::atomic::AtomicUsize>,
    ) -> kube::Client {
        let service = tower::service_fn(move |_req: http::Request<kube::client::Body>| {
            let hashes = hashes.clone();
            let lists = lists.clone();
            async move {
                lists.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
                let items: Vec<serde_json::Value> = hashes
                    .lock()
                    .iter()
                    .enumerate()
                    .map(|(i, h)| {
                        let secret = Secret {
                            metadata: ObjectMeta {
                                name: Some(format!("decloud-join-{i}")),
                                ..Default::default()
                            },
                            data: Some(BTreeMap::from([(
                                "token-sha256".to_string(),
                                ByteString(h.clone().into_bytes()),
                            )])),
                            ..Default::default()
                        };
                        serde_json::to_value(secret).unwrap()
                    })
                    .collect();
                let body = serde_json::json!({"apiVersion": "v1", "kind": "SecretList",
                    "metadata": {}, "items": items});
                Ok::<_, std::convert::Infallible>(
                    http::Response::builder()
                        .status(200)
                        .header("content-type", "application/json")
                        .body(kube::client::Body::from(body.to_string().into_bytes()))
                        .unwrap(),
                )
            }
        });
        kube::Client::new(service, "default")
    }

    #[tokio::test(start_paused = true)]
    async fn a_flood_of_bad_tokens_costs_two_lists_a_second_and_revocation_is_immediate() {
        let good = "abcdef.0123456789abcdef0123456789ab";
        let hashes = std::sync::Arc::new(parking_lot::Mutex::new(vec![sha256_hex(good)]));
        let lists = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
        let client = token_api(hashes.clone(), lists.clone());
        let cache = std::sync::Arc::new(TokenCache::default());
        // 200 guesses at once: they share reads, one per TOKEN_READ_INTERVAL.
        let started = tokio::time::Instant::now();
        let guesses: Vec<_> = (0..200)
            .map(|i| {
                let (cache, client) = (cache.clone(), client.clone());
                tokio::spawn(async move {
                    cache
                        .check(&client, "default", &format!("abcdef.guess{i:026}"))
                        .await
                })
            })
            .collect();
        for g in guesses {
            let e = g.await.unwrap().unwrap_err();
            assert_eq!(e.code(), tonic::Code::Unauthenticated);
        }
        let n = lists.load(std::sync::atomic::Ordering::SeqCst);
        let elapsed = started.elapsed();
        assert!(
            n <= 2 + (elapsed.as_millis() / 500) as usize,
            "{n} LISTs in {elapsed:?}"
        );
        // The good token is accepted; once revoked it is refused at the very next check.
        assert!(cache.check(&client, "default", good).await.is_ok());
        hashes.lock().clear();
        let e = cache.check(&client, "default", good).await.unwrap_err();
        assert!(e.message().contains("invalid join token"), "{e:?}");
        // ...and a token created just now is accepted at once.
        let new = "ghijkl.0123456789abcdef0123456789ab";
        hashes.lock().push(sha256_hex(new));
        assert!(cache.check(&client, "default", new).await.is_ok());
    }
}
