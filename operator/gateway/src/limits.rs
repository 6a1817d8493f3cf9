//! The public gateway's limits, shared by its HTTP, HTTPS and TCP listeners.

use std::time::Duration;

/// Limits of the public gateway.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct GatewayLimits {
    /// How long a client may take to send a request head (from its first byte, after the
    /// first request). Slower clients get 408 and are closed.
    pub header_timeout: Duration,
    /// Largest request head; larger ones get 431.
    pub max_header_bytes: usize,
    /// Client connections served at once; more get 503 with `Retry-After`.
    pub max_connections: usize,
    /// A connection with no byte in either direction for this long is closed.
    pub idle_timeout: Duration,
    /// What `Retry-After` tells clients refused with 503 (whole seconds, at least 1).
    pub retry_after: Duration,
}

impl Default for GatewayLimits {
    fn default() -> Self {
        Self {
            header_timeout: Duration::from_secs(10),
            max_header_bytes: 64 * 1024,
            max_connections: 10_000,
            idle_timeout: Duration::from_secs(300),
            retry_after: Duration::from_secs(1),
        }
    }
}

impl GatewayLimits {
    pub(crate) fn retry_after_secs(&self) -> u64 {
        self.retry_after.as_secs().max(1)
    }
}
