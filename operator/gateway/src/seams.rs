//! The two seams the operator fills: how to open a byte stream to a container port on an edge
//! ([`TunnelDialer`]) and how to fetch a container's logs ([`LogSource`]). The crate knows
//! nothing of edge sessions.

use bytes::Bytes;
use futures::{future::BoxFuture, stream::BoxStream};
use tokio::io::{AsyncRead, AsyncWrite};

use crate::error::{DialError, LogError};
use crate::routes::Backend;

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

/// A `kubectl logs` request.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct LogQuery {
    /// Pod namespace.
    pub namespace: String,
    /// Pod name.
    pub pod: String,
    /// Container name.
    pub container: String,
    /// Keep streaming new lines.
    pub follow: bool,
    /// Only the last N lines.
    pub tail_lines: Option<i64>,
    /// Prefix lines with RFC 3339 timestamps.
    pub timestamps: bool,
    /// Logs of the previous (restarted) instance.
    pub previous: bool,
}

/// What the kubelet API's node-level reads serve, rendered as kubelet renders them. Every
/// method must not block.
pub trait NodeReadings: Send + Sync + 'static {
    /// `/pods`: the node's pods as a v1 PodList (JSON).
    fn pods(&self, node: &str) -> Vec<u8>;
    /// `/stats/summary` (JSON); `None` while the node's edge has sent no fresh statistics.
    fn stats_summary(&self, node: &str) -> Option<Vec<u8>>;
    /// `/metrics/resource` (Prometheus text); `None` as for `stats_summary`.
    fn resource_metrics(&self, node: &str) -> Option<String>;
}
