//! Per-provider credentials. `Register` answers with a credential `<provider>.<secret>`; the
//! Provider keeps only its SHA-256 in the annotation [`CREDENTIAL_ANNOTATION`]. Every later RPC
//! carries the credential as `authorization: Bearer …` and [`CredentialAuthenticator`] checks it.

use decloud_crds::contracts::{CREDENTIAL_ANNOTATION, REVOKED_ANNOTATION, valid_provider_name};
use decloud_crds::{Provider, ProviderPhase};
use decloud_proto::CREDENTIAL_METADATA;
use kube::api::Api;
use kube::runtime::reflector::{ObjectRef, Store};
use sha2::{Digest, Sha256};
use tonic::Status;
use tonic::metadata::MetadataMap;

use super::authenticator::{EdgeAuthenticator, Lookup};

/// SHA-256 of `s`, hex.
pub(crate) fn sha256_hex(s: &str) -> String {
    hex::encode(Sha256::digest(s.as_bytes()))
}

/// Compares in constant time, so timing says nothing about how much matched.
pub(crate) fn same(a: &str, b: &str) -> bool {
    use subtle::ConstantTimeEq;
    bool::from(a.as_bytes().ct_eq(b.as_bytes()))
}

/// A new credential for `provider`: `<provider>.<64 hex>` (256 random bits).
pub(crate) fn new_credential(provider: &str) -> String {
    let secret: [u8; 32] = rand::random();
    format!("{provider}.{}", hex::encode(secret))
}

/// The provider a credential names (everything before its last `.`), if well-formed.
pub(crate) fn credential_provider(credential: &str) -> Option<&str> {
    let (provider, secret) = credential.rsplit_once('.')?;
    (valid_provider_name(provider)
        && secret.len() == 64
        && secret.bytes().all(|b| b.is_ascii_hexdigit()))
    .then_some(provider)
}

/// Whether `provider` was revoked (`provider revoke`, or its status phase set to Revoked).
pub(crate) fn is_revoked(provider: &Provider) -> bool {
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
pub(crate) fn credential_hash(provider: &Provider) -> Option<&str> {
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
pub(crate) fn bearer(metadata: &MetadataMap) -> Result<&str, Status> {
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
pub(crate) struct CredentialAuthenticator {
    client: kube::Client,
    providers: Store<Provider>,
}

impl CredentialAuthenticator {
    /// Looks Providers up in `providers` first, then (for ones just registered) the API.
    pub(crate) fn new(client: kube::Client, providers: Store<Provider>) -> Self {
        Self { client, providers }
    }
}

#[tonic::async_trait]
impl EdgeAuthenticator for CredentialAuthenticator {
    async fn authenticate(&self, metadata: &MetadataMap, lookup: Lookup) -> Result<String, Status> {
        let credential = bearer(metadata)?;
        let name = credential_provider(credential)
            .ok_or_else(|| Status::unauthenticated("malformed credential"))?;
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
                Err(e) if is_revoked(&p) || lookup == Lookup::CacheOnly => return Err(e),
                // The cache may lag a fresh Register: ask the API below.
                Err(_) => {}
            }
        }
        if lookup == Lookup::CacheOnly {
            return Err(Status::unauthenticated(format!(
                "unknown credential for provider {name:?}"
            )));
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
    fn credentials_have_their_shape() {
        let c = new_credential("alice.laptop");
        assert_eq!(credential_provider(&c), Some("alice.laptop"));
        for bad in ["", "alice", "alice.short", "Alice.x", &format!("{c}x")] {
            assert_eq!(credential_provider(bad), None, "{bad}");
        }
        assert!(same("abc", "abc") && !same("abc", "abd") && !same("abc", "ab"));
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
