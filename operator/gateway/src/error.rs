//! Errors of the gateway.

/// Errors of the gateway's listeners.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// A socket operation failed.
    #[error("gateway I/O: {0}")]
    Io(#[from] std::io::Error),
    /// The kubelet API's TLS setup failed.
    #[error("kubelet API TLS: {0}")]
    Tls(String),
}

impl Error {
    /// Short label for metrics.
    pub fn metric_label(&self) -> &'static str {
        match self {
            Self::Io(_) => "io",
            Self::Tls(_) => "tls",
        }
    }
}

/// Result alias of this crate.
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// Why a tunnel could not be opened. Whichever it is, the gateway tries the next replica and
/// finally answers 503 with `Retry-After`; the message (which names the provider) is only
/// logged, never sent to the client.
#[derive(Debug, thiserror::Error)]
pub enum DialError {
    /// The replica's edge has no live session.
    #[error("provider {0} is not connected")]
    NotConnected(String),
    /// The edge did not open the tunnel in time.
    #[error("provider {0} did not open the tunnel in time")]
    Timeout(String),
    /// The edge could not reach the container port.
    #[error("edge refused the tunnel: {0}")]
    Refused(String),
    /// The edge's session cannot take another tunnel now (its queue towards the edge is full,
    /// or the edge's tunnel cap is reached). This request fails with 503; the session stays.
    #[error("provider {0} cannot take another tunnel now")]
    Busy(String),
}

impl DialError {
    /// Short label for metrics.
    pub fn metric_label(&self) -> &'static str {
        match self {
            Self::NotConnected(_) => "not_connected",
            Self::Timeout(_) => "timeout",
            Self::Refused(_) => "refused",
            Self::Busy(_) => "busy",
        }
    }
}

/// Why logs cannot be served.
#[derive(Debug, thiserror::Error)]
pub enum LogError {
    /// No such pod or container on a virtual node.
    #[error("{0}")]
    NotFound(String),
    /// The pod's edge is not connected.
    #[error("{0}")]
    Unavailable(String),
    /// The edge answered with an error.
    #[error("{0}")]
    Edge(String),
}

/// Why an exec, attach or port-forward cannot be served; each maps to the HTTP status and
/// words kubelet uses.
#[derive(Debug, thiserror::Error)]
pub enum StreamError {
    /// No such pod on a DeCloud node (404 "pod does not exist").
    #[error("pod does not exist")]
    PodNotFound,
    /// The pod exists with another uid than the path names (404 "pod not found").
    #[error("pod not found")]
    UidMismatch,
    /// The container is not there or not running (kubelet: 500 `container not found ("c")`).
    #[error("{0}")]
    ContainerNotFound(String),
    /// The pod's edge is not connected, or cannot take another stream now.
    #[error("{0}")]
    Unavailable(String),
    /// The edge could not start or carry it.
    #[error("{0}")]
    Edge(String),
    /// The request is out of bounds (a command too long).
    #[error("{0}")]
    Invalid(String),
}

impl StreamError {
    /// Short label for metrics.
    pub fn metric_label(&self) -> &'static str {
        match self {
            Self::PodNotFound | Self::UidMismatch => "pod_not_found",
            Self::ContainerNotFound(_) => "container_not_found",
            Self::Unavailable(_) => "unavailable",
            Self::Edge(_) => "edge_error",
            Self::Invalid(_) => "invalid",
        }
    }
}
