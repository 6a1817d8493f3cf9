//! Dialling the operator: TLS trusting only the pinned CA, bounded in time.

use std::time::Duration;

use tonic::transport::{Certificate, ClientTlsConfig, Endpoint};

use crate::error::{Error, Result};

/// An endpoint for `operator`: TLS trusting only `ca_pem` for `https://`, plaintext for
/// `http://` (which must have no CA).
pub(crate) fn endpoint(operator: &str, ca_pem: Option<&str>) -> Result<Endpoint> {
    let endpoint = Endpoint::from_shared(operator.to_string())
        .map_err(|e| Error::InvalidInput(format!("--operator {operator}: {e}")))?
        .connect_timeout(Duration::from_secs(3))
        .tcp_nodelay(true)
        .http2_keep_alive_interval(Duration::from_secs(10))
        .keep_alive_timeout(Duration::from_secs(5));
    let https = operator.starts_with("https://");
    match (https, ca_pem) {
        (true, Some(ca)) => Ok(endpoint
            .tls_config(ClientTlsConfig::new().ca_certificate(Certificate::from_pem(ca)))?),
        (true, None) => Err(Error::InvalidInput(format!(
            "{operator} is https but this edge has no pinned CA; join with --ca-hash"
        ))),
        (false, _) if operator.starts_with("http://") => {
            tracing::warn!(%operator, "talking to the operator over INSECURE plaintext");
            Ok(endpoint)
        }
        (false, _) => Err(Error::InvalidInput(format!(
            "--operator {operator} must start with https:// (or http:// for a plaintext debug operator)"
        ))),
    }
}

/// How long dialling the operator may take in all: TCP, TLS and HTTP/2 handshakes.
pub(crate) const DIAL_TIMEOUT: Duration = Duration::from_secs(10);

/// Dials `endpoint`, giving up after [`DIAL_TIMEOUT`]. The endpoint's own connect timeout
/// covers only the TCP handshake; a connection the server's kernel queued but never completed
/// (its accept queue overflowed during a reconnect storm) would otherwise hang until the
/// server's SYN-ACK retransmissions (~31 s) and hold the edge back that long.
pub(crate) async fn connect(endpoint: Endpoint) -> Result<tonic::transport::Channel> {
    tokio::time::timeout(DIAL_TIMEOUT, endpoint.connect())
        .await
        .map_err(|_| Error::Timeout(DIAL_TIMEOUT))?
        .map_err(Error::from)
}
