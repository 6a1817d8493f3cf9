//! Join tokens and per-provider credentials.
//!
//! A join token (`<id>.<secret>`, kubeadm-style) lets a new edge call `Register` once; it lives
//! as a Secret labelled [`JOIN_TOKEN_LABEL`] in the operator's namespace holding only its
//! SHA-256 and expiry (the chart's optional Secret holds the plain token under `token`, hashed
//! on read). `Register` answers with a credential `<provider>.<secret>`; the Provider keeps only
//! its SHA-256 in the annotation [`CREDENTIAL_ANNOTATION`]. Every later RPC carries the
//! credential as `authorization: Bearer …` and [`CredentialAuthenticator`] checks it.

use std::collections::BTreeMap;
use std::time::Duration;

use chrono::{DateTime, Utc};
use decloud_crds::{Provider, ProviderPhase};
use k8s_openapi::ByteString;
use k8s_openapi::api::core::v1::Secret;
use kube::api::{Api, ListParams, ObjectMeta, PostParams};
use kube::runtime::reflector::{ObjectRef, Store};
use rand::Rng;
use sha2::{Digest, Sha256};
use tonic::Status;
use tonic::metadata::MetadataMap;

use crate::server::{CREDENTIAL_METADATA, EdgeAuthenticator};

/// Label marking a Secret as a join token.
pub const JOIN_TOKEN_LABEL: &str = "decloud.dev/join-token";
/// Provider annotation holding the SHA-256 (hex) of its edge's credential.
pub const CREDENTIAL_ANNOTATION: &str = "decloud.dev/credential-sha256";
/// Provider annotation set by `decloud-operator provider revoke` (when, RFC 3339).
pub const REVOKED_ANNOTATION: &str = "decloud.dev/revoked";
/// Prefix of the Secrets `decloud-operator token create` makes.
pub const TOKEN_SECRET_PREFIX: &str = "decloud-join-";

/// SHA-256 of `s`, hex.
pub fn sha256_hex(s: &str) -> String {
    hex::encode(Sha256::digest(s.as_bytes()))
}

/// Compares without an early exit, so timing says nothing about how much matched.
pub(crate) fn same(a: &str, b: &str) -> bool {
    a.len() == b.len()
        && a.bytes()
            .zip(b.bytes())
            .fold(0u8, |acc, (x, y)| acc | (x ^ y))
            == 0
}

fn random_string(len: usize, alphabet: &[u8]) -> String {
    let mut rng = rand::rng();
    (0..len)
        .map(|_| alphabet[rng.random_range(0..alphabet.len())] as char)
        .collect()
}

const LOWER_ALNUM: &[u8] = b"abcdefghijklmnopqrstuvwxyz0123456789";

/// A new join token `<6 chars id>.<32 chars secret>`.
pub fn new_token() -> String {
    format!(
        "{}.{}",
        random_string(6, LOWER_ALNUM),
        random_string(32, LOWER_ALNUM)
    )
}

/// A new credential for `provider`: `<provider>.<64 hex>` (256 random bits).
pub fn new_credential(provider: &str) -> String {
    format!("{provider}.{}", random_string(64, b"0123456789abcdef"))
}

/// The provider a credential names (everything before its last `.`), if well-formed.
pub fn credential_provider(credential: &str) -> Option<&str> {
    let (provider, secret) = credential.rsplit_once('.')?;
    (crate::server::valid_provider_name(provider)
        && secret.len() == 64
        && secret.bytes().all(|b| b.is_ascii_hexdigit()))
    .then_some(provider)
}

/// What `token list` shows about one join token.
#[derive(Clone, Debug)]
pub struct TokenInfo {
    /// The token's id (its part before the dot), or the Secret's name for chart tokens.
    pub id: String,
    /// The Secret holding it.
    pub secret: String,
    /// When it stops working (None: never).
    pub expires: Option<DateTime<Utc>>,
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
        let expires = text(secret, "expiration")
            .and_then(|e| DateTime::parse_from_rfc3339(&e).ok())
            .map(|t| t.with_timezone(&Utc));
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
    pub fn expired(&self, now: DateTime<Utc>) -> bool {
        self.expires.is_some_and(|e| e <= now)
    }

    /// Whether its Secret is due for deletion: made by `token create` and expired for longer
    /// than `retention` (until then a late edge is told "expired", not "unknown").
    pub fn due_for_cleanup(&self, now: DateTime<Utc>, retention: Duration) -> bool {
        let retention = chrono::Duration::from_std(retention).unwrap_or(chrono::Duration::MAX);
        self.created_by_operator
            && self
                .expires
                .and_then(|e| e.checked_add_signed(retention))
                .is_some_and(|due| due <= now)
    }
}

/// Deletes the Secrets of join tokens expired for longer than `retention`, as kubeadm's token
/// cleaner does, every `retention / 4` (between 1 s and 10 min). Runs on the leader until
/// the process ends; failures are logged and retried on the next pass.
pub async fn clean_expired_tokens(client: kube::Client, namespace: String, retention: Duration) {
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
        let now = Utc::now();
        for t in tokens.iter().filter(|t| t.due_for_cleanup(now, retention)) {
            match api.delete(&t.secret, &Default::default()).await {
                Ok(_) => tracing::info!(
                    token_id = %t.id,
                    secret = %t.secret,
                    expired = %t.expires.map(crate::status::rfc3339).unwrap_or_default(),
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
pub async fn list_tokens(client: &kube::Client, namespace: &str) -> kube::Result<Vec<TokenInfo>> {
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
pub async fn create_token(
    client: &kube::Client,
    namespace: &str,
    expires: DateTime<Utc>,
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
                ByteString(crate::status::rfc3339(expires).into_bytes()),
            ),
        ])),
        ..Secret::default()
    };
    let api: Api<Secret> = Api::namespaced(client.clone(), namespace);
    let pp = PostParams {
        field_manager: Some(crate::FIELD_MANAGER.into()),
        ..PostParams::default()
    };
    api.create(&pp, &secret).await?;
    Ok(token)
}

/// Deletes the join token `id` (its id, whole token, or Secret name). False if none matched.
pub async fn revoke_token(client: &kube::Client, namespace: &str, id: &str) -> kube::Result<bool> {
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

/// Checks a join token against those stored in `namespace`.
pub async fn check_token(
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
    let tokens = list_tokens(client, namespace).await.map_err(|e| {
        Status::unavailable(format!("the operator cannot read its join tokens: {e}"))
    })?;
    let hash = sha256_hex(token);
    match tokens.iter().find(|t| same(&t.hash, &hash)) {
        None => Err(Status::unauthenticated(
            "invalid join token (unknown, mistyped or revoked); ask the cluster administrator \
             for a new one (`decloud-operator token create`)",
        )),
        Some(t) if t.expired(Utc::now()) => Err(Status::unauthenticated(format!(
            "the join token expired at {}; ask the cluster administrator for a new one \
             (`decloud-operator token create`)",
            t.expires.map(crate::status::rfc3339).unwrap_or_default()
        ))),
        Some(_) => Ok(()),
    }
}

/// Whether `provider` was revoked (`provider revoke`, or its status phase set to Revoked).
pub fn is_revoked(provider: &Provider) -> bool {
    provider
        .metadata
        .annotations
        .as_ref()
        .is_some_and(|a| a.contains_key(REVOKED_ANNOTATION))
        || provider
            .status
            .as_ref()
            .is_some_and(|s| s.phase == ProviderPhase::Revoked)
}

/// The SHA-256 of `provider`'s credential, if it has one.
pub fn credential_hash(provider: &Provider) -> Option<&str> {
    provider
        .metadata
        .annotations
        .as_ref()?
        .get(CREDENTIAL_ANNOTATION)
        .map(String::as_str)
}

/// Whether `credential` is `provider`'s live credential.
fn check_credential(provider: &Provider, name: &str, credential: &str) -> Result<(), Status> {
    if provider.metadata.deletion_timestamp.is_some() || is_revoked(provider) {
        return Err(Status::unauthenticated(format!(
            "provider {name:?} was revoked: its credential no longer works; an administrator \
             must delete the Provider before a machine may join under that name again"
        )));
    }
    match credential_hash(provider) {
        Some(h) if same(h, &sha256_hex(credential)) => Ok(()),
        _ => Err(Status::unauthenticated(format!(
            "unknown or revoked credential for provider {name:?}; join again with a new token \
             (`edge-kubelet join --token …`)"
        ))),
    }
}

/// The bearer credential in `metadata`.
pub fn bearer(metadata: &MetadataMap) -> Result<&str, Status> {
    let value = metadata.get(CREDENTIAL_METADATA).ok_or_else(|| {
        Status::unauthenticated(
            "no credential: this edge has not joined; run `edge-kubelet join --operator … \
             --token … --ca-hash …` first (or `run` with --token and --ca-hash)",
        )
    })?;
    value
        .to_str()
        .ok()
        .and_then(|v| v.strip_prefix("Bearer "))
        .map(str::trim)
        .filter(|v| !v.is_empty())
        .ok_or_else(|| Status::unauthenticated("malformed authorization metadata"))
}

/// Checks each caller's bearer credential against its Provider's stored hash.
#[derive(Clone)]
pub struct CredentialAuthenticator {
    client: kube::Client,
    providers: Store<Provider>,
}

impl CredentialAuthenticator {
    /// Looks Providers up in `providers` first, then (for ones just registered) the API.
    pub fn new(client: kube::Client, providers: Store<Provider>) -> Self {
        Self { client, providers }
    }
}

#[tonic::async_trait]
impl EdgeAuthenticator for CredentialAuthenticator {
    async fn authenticate(
        &self,
        metadata: &MetadataMap,
        claimed: Option<&str>,
    ) -> Result<String, Status> {
        let credential = bearer(metadata)?;
        let name = credential_provider(credential)
            .ok_or_else(|| Status::unauthenticated("malformed credential"))?;
        if let Some(claimed) = claimed
            && claimed != name
        {
            return Err(Status::permission_denied(format!(
                "this credential belongs to provider {name:?}, not {claimed:?}"
            )));
        }
        // Right after an operator starts, every edge reconnects at once: answer them from the
        // cache once it has listed the Providers, not with thousands of GETs to the API server
        // (measured: some hundred of 1,000 edges then waited ~30 s). Returns at once if the
        // cache is ready (or has no writer).
        let _ = tokio::time::timeout(
            std::time::Duration::from_secs(10),
            self.providers.wait_until_ready(),
        )
        .await;
        if let Some(p) = self.providers.get(&ObjectRef::new(name)) {
            match check_credential(&p, name, credential) {
                Ok(()) => return Ok(name.to_string()),
                Err(e) if is_revoked(&p) => return Err(e),
                // The cache may lag a fresh Register: ask the API below.
                Err(_) => {}
            }
        }
        let api: Api<Provider> = Api::all(self.client.clone());
        match api.get_opt(name).await {
            Ok(Some(p)) => check_credential(&p, name, credential).map(|()| name.to_string()),
            Ok(None) => Err(Status::unauthenticated(format!(
                "unknown credential: provider {name:?} does not exist (deleted, i.e. revoked); \
                 join again with a new token"
            ))),
            Err(e) => Err(Status::unavailable(format!(
                "the operator cannot reach the Kubernetes API: {e}"
            ))),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tokens_and_credentials_have_their_shape() {
        let t = new_token();
        let (id, secret) = t.split_once('.').unwrap();
        assert_eq!((id.len(), secret.len()), (6, 32));
        assert_ne!(new_token(), t);
        let c = new_credential("alice.laptop");
        assert_eq!(credential_provider(&c), Some("alice.laptop"));
        for bad in ["", "alice", "alice.short", "Alice.x", &format!("{c}x")] {
            assert_eq!(credential_provider(bad), None, "{bad}");
        }
        assert!(same("abc", "abc") && !same("abc", "abd") && !same("abc", "ab"));
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
        assert!(!chart.expired(Utc::now()));
        let old = TokenInfo::from_secret(&secret(&[
            ("token-sha256", "ab"),
            ("expiration", "2020-01-01T00:00:00Z"),
        ]))
        .unwrap();
        assert!(old.expired(Utc::now()));
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
        let now: DateTime<Utc> = "2026-11-22T12:00:00Z".parse().unwrap();
        assert!(expired_at("2026-11-20T12:00:00Z", false).due_for_cleanup(now, day));
        assert!(expired_at("2026-11-21T12:00:00Z", false).due_for_cleanup(now, day));
        assert!(!expired_at("2026-11-21T12:00:01Z", false).due_for_cleanup(now, day));
        assert!(!expired_at("2026-11-23T12:00:00Z", false).due_for_cleanup(now, Duration::ZERO));
        assert!(!expired_at("2020-01-01T00:00:00Z", true).due_for_cleanup(now, day));
        assert!(!chart.due_for_cleanup(now, Duration::ZERO));
    }

    #[test]
    fn bearer_metadata() {
        let mut md = MetadataMap::new();
        assert_eq!(
            bearer(&md).unwrap_err().code(),
            tonic::Code::Unauthenticated
        );
        md.insert(CREDENTIAL_METADATA, "Basic x".parse().unwrap());
        assert!(bearer(&md).is_err());
        md.insert(CREDENTIAL_METADATA, "Bearer abc".parse().unwrap());
        assert_eq!(bearer(&md).unwrap(), "abc");
    }
}
