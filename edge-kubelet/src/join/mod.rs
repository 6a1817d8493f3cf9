//! Joining a cluster and proving who this edge is.
//!
//! `edge-kubelet join` fetches the operator's CA trusting only its pin (`pinned_ca`), calls
//! `Register` with the join token (`register`) and stores the per-provider credential and
//! the CA (`credential`). From then on every connection trusts only that CA (`dial`) and
//! every RPC carries `authorization: Bearer <credential>`.

mod credential;
mod dial;
mod pinned_ca;
mod register;

use std::collections::HashMap;
use std::path::Path;
use std::time::Duration;

use tokio_util::sync::CancellationToken;

pub use credential::CREDENTIAL_FILE;
pub(crate) use credential::EdgeCredential;
pub(crate) use dial::{connect, endpoint};

use crate::backoff::ReconnectBackoff;
use crate::error::{Error, Result};

/// Where and as whom to join. No `Debug`: it carries the join token.
pub(crate) struct JoinRequest<'a> {
    /// Operator URL.
    pub(crate) operator: &'a str,
    /// Join token.
    pub(crate) token: &'a str,
    /// The operator's CA pin (`sha256:<hex>`), required over TLS.
    pub(crate) ca_hash: Option<&'a str>,
    /// Provider name.
    pub(crate) name: &'a str,
    /// Provider owner.
    pub(crate) owner: &'a str,
    /// Labels for the node.
    pub(crate) labels: HashMap<String, String>,
    /// Where the credential is stored.
    pub(crate) state_dir: &'a Path,
}

/// Joins the cluster once (see [`register::join`]).
pub(crate) async fn join(req: &JoinRequest<'_>) -> Result<EdgeCredential> {
    let request = register::register_request(req.name, req.owner, req.labels.clone());
    register::join(req.operator, req.token, req.ca_hash, request, req.state_dir).await
}

/// Whether a failed join may succeed if retried (operator busy, standby, unreachable, the
/// call cut on the way). Retrying is safe: the edge asks for the same credential each time,
/// so a join whose answer was lost is recognised.
fn join_retryable(e: &Error) -> bool {
    use tonic::Code;
    match e {
        Error::Timeout(_) => true,
        Error::JoinRefused { code, .. } => matches!(
            code,
            Code::Unavailable
                | Code::Unknown
                | Code::Cancelled
                | Code::DeadlineExceeded
                | Code::Internal
                | Code::ResourceExhausted
                | Code::Aborted
        ),
        Error::Session(m) => m.starts_with("cannot reach") || m.starts_with("transport error"),
        _ => false,
    }
}

/// Joins as [`join`] does, retrying while the operator is unreachable or a standby, until
/// `shutdown`.
pub(crate) async fn join_retrying(
    req: &JoinRequest<'_>,
    max_backoff: Duration,
    shutdown: &CancellationToken,
) -> Result<EdgeCredential> {
    let mut backoff = ReconnectBackoff::new(max_backoff);
    loop {
        match join(req).await {
            Ok(c) => return Ok(c),
            Err(e) if join_retryable(&e) => {
                tracing::warn!(operator = %req.operator, error = %e, "joining failed; retrying");
            }
            Err(e) => return Err(e),
        }
        tokio::select! {
            _ = shutdown.cancelled() => return Err(Error::Session("shut down before joining".into())),
            _ = tokio::time::sleep(backoff.next_delay()) => {}
        }
    }
}
