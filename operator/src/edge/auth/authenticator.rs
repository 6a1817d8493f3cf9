//! The authentication seam of every edge RPC but `Register`.

#[cfg(test)]
use decloud_proto::PROVIDER_METADATA;
use tonic::Status;
use tonic::metadata::MetadataMap;

/// Decides who a caller is: the security seam of every edge RPC but `Register`.
#[tonic::async_trait]
pub(crate) trait EdgeAuthenticator: Send + Sync + 'static {
    /// The provider the caller's request `metadata` proves it speaks for. Errors are
    /// `Unauthenticated` (no or unknown credential), `PermissionDenied` (revoked) or
    /// `Unavailable` (the answer needs the API and it cannot be reached). With
    /// [`Lookup::CacheOnly`] it makes no API call.
    async fn authenticate(&self, metadata: &MetadataMap, lookup: Lookup) -> Result<String, Status>;
}

/// Where a credential may be looked up.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Lookup {
    /// The Provider cache, then the API for providers it does not know yet (just joined).
    CacheThenApi,
    /// The Provider cache only: for callers whose address is out of budget.
    CacheOnly,
}

#[cfg(test)]
/// Trusts every caller's `decloud-provider` metadata: for unit tests only, never served by the
/// binary.
#[derive(Clone, Copy, Debug, Default)]
pub(crate) struct TrustingAuthenticator;

#[cfg(test)]
#[tonic::async_trait]
impl EdgeAuthenticator for TrustingAuthenticator {
    async fn authenticate(&self, metadata: &MetadataMap, _: Lookup) -> Result<String, Status> {
        metadata
            .get(PROVIDER_METADATA)
            .and_then(|v| v.to_str().ok())
            .map(str::to_string)
            .ok_or_else(|| Status::unauthenticated("no provider named"))
    }
}
