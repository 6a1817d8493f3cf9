//! The authentication seam of every edge RPC but `Register`.

#[cfg(test)]
use decloud_proto::PROVIDER_METADATA;
use tonic::Status;
use tonic::metadata::MetadataMap;

/// Decides who a caller is: the security seam of every edge RPC but `Register`.
#[tonic::async_trait]
pub(crate) trait EdgeAuthenticator: Send + Sync + 'static {
    /// The provider the caller's request `metadata` proves it speaks for. `claimed` is the name
    /// the caller gave in-band (a Hello's `provider_name`), if the RPC carries one; a caller
    /// claiming another provider than its credential's is refused. Errors are `Unauthenticated`
    /// (no or unknown credential) or `PermissionDenied` (revoked, other provider).
    async fn authenticate(
        &self,
        metadata: &MetadataMap,
        claimed: Option<&str>,
    ) -> Result<String, Status>;
}

#[cfg(test)]
/// Trusts every caller's claimed provider name (the Hello's, else the `decloud-provider`
/// metadata): for unit tests only, never served by the binary.
#[derive(Clone, Copy, Debug, Default)]
pub(crate) struct TrustingAuthenticator;

#[cfg(test)]
#[tonic::async_trait]
impl EdgeAuthenticator for TrustingAuthenticator {
    async fn authenticate(
        &self,
        metadata: &MetadataMap,
        claimed: Option<&str>,
    ) -> Result<String, Status> {
        claimed
            .map(str::to_string)
            .or_else(|| {
                metadata
                    .get(PROVIDER_METADATA)
                    .and_then(|v| v.to_str().ok())
                    .map(str::to_string)
            })
            .ok_or_else(|| Status::unauthenticated("no provider named"))
    }
}
