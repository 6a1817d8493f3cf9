//! DeCloud gateway: carries public HTTP to Workload replicas through tunnels that the replicas'
//! edges open over their own outbound connections, and serves the kubelet API (`kubectl logs`)
//! on behalf of every virtual node.
//!
//! The crate knows nothing of edge sessions: the operator supplies a [`TunnelDialer`] and a
//! [`LogSource`] backed by its session registry. Providers never open an inbound port, and no
//! provider address passes through here.
#![forbid(unsafe_code)]

mod error;
mod kubelet_api;
mod proxy;
mod routes;

pub use error::{DialError, Error, LogError, Result};
pub use kubelet_api::{
    Access, AccessReview, KubeAccessReview, KubeletAuth, LogQuery, REVIEW_CACHE_ENTRIES,
    REVIEW_TTL, ReviewError, User, self_signed_tls, serve_kubelet_api,
};
pub use proxy::{GatewayLimits, serve_gateway};
pub use routes::{Backend, Route, Routes, workload_host};

use bytes::Bytes;
use futures::{future::BoxFuture, stream::BoxStream};
use tokio::io::{AsyncRead, AsyncWrite};

/// A byte stream to one container port, whatever carries it.
pub trait TunnelIo: AsyncRead + AsyncWrite + Send + Unpin {}
impl<T: AsyncRead + AsyncWrite + Send + Unpin> TunnelIo for T {}

/// Opens byte streams to container ports on edges.
pub trait TunnelDialer: Send + Sync + 'static {
    /// Opens a stream to `backend`. May be called concurrently and more than once for the same
    /// backend; must fail (not hang) within a few seconds when the edge does not answer.
    fn dial(&self, backend: &Backend) -> BoxFuture<'static, Result<Box<dyn TunnelIo>, DialError>>;
}

/// A stream of log bytes.
pub type LogStream = BoxStream<'static, std::result::Result<Bytes, std::io::Error>>;

/// Fetches container logs from edges.
pub trait LogSource: Send + Sync + 'static {
    /// Starts streaming the logs `query` names. Dropping the stream cancels the request.
    fn logs(&self, query: LogQuery) -> BoxFuture<'static, Result<LogStream, LogError>>;

    /// The node pod `namespace/name` is bound to, for authorizing requests about it against
    /// that node. `None` (unknown pod, or no pod cache): callers need the right on all nodes.
    /// Must not block.
    fn node_of(&self, namespace: &str, pod: &str) -> Option<String> {
        let _ = (namespace, pod);
        None
    }
}
