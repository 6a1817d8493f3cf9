//! The seams the operator fills: how to open a byte stream to a container port on an edge
//! ([`TunnelDialer`]), how to fetch a container's logs ([`LogSource`]) and how to run exec,
//! attach and port-forward streams ([`ContainerStreams`]). The crate knows nothing of edge
//! sessions.

use bytes::Bytes;
use futures::{future::BoxFuture, stream::BoxStream};
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::sync::mpsc;

use crate::error::{DialError, LogError, StreamError};
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

/// What `kubectl exec` or `kubectl attach` asks for.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ExecRequest {
    /// Pod namespace.
    pub namespace: String,
    /// Pod name.
    pub pod: String,
    /// Pod uid, when the path names one (it must then match).
    pub pod_uid: Option<String>,
    /// Container name.
    pub container: String,
    /// The command to run in the container; empty for an attach.
    pub command: Vec<String>,
    /// Attach to the container's main process instead of running a command.
    pub attach: bool,
    /// Allocate a terminal.
    pub tty: bool,
    /// Carry the client's stdin.
    pub stdin: bool,
    /// Carry stdout.
    pub stdout: bool,
    /// Carry stderr (never with a terminal, which merges it into stdout).
    pub stderr: bool,
}

/// From the client to the process.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ExecInput {
    /// Bytes for its stdin.
    Stdin(Bytes),
    /// Its stdin is closed.
    StdinEof,
    /// The terminal was resized.
    Resize {
        /// Columns.
        width: u16,
        /// Rows.
        height: u16,
    },
}

/// From the process to the client.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ExecOutput {
    /// Bytes it wrote to stdout (or the terminal).
    Stdout(Bytes),
    /// Bytes it wrote to stderr.
    Stderr(Bytes),
    /// It exited with this code; the last message.
    Exited(i32),
    /// It could not be run or followed; the last message.
    Failed(String),
}

/// A running exec or attach session: dropping `input` ends the session on the edge.
pub struct ExecIo {
    /// Towards the process.
    pub input: mpsc::Sender<ExecInput>,
    /// From the process, until [`ExecOutput::Exited`] or [`ExecOutput::Failed`].
    pub output: mpsc::Receiver<ExecOutput>,
}

/// Streams to containers on edges: exec, attach and port-forward.
pub trait ContainerStreams: Send + Sync + 'static {
    /// Checks that pod `namespace/pod` (with uid `pod_uid`, if given) is on a DeCloud node and
    /// has container `container` (if given) running, before anything is upgraded. Must not
    /// block.
    fn check(
        &self,
        namespace: &str,
        pod: &str,
        pod_uid: Option<&str>,
        container: Option<&str>,
    ) -> Result<(), StreamError>;

    /// Checks an exec or attach request before anything is upgraded: the pod and container
    /// as [`ContainerStreams::check`], and the command within the edge protocol's bounds.
    fn check_exec(&self, req: &ExecRequest) -> Result<(), StreamError> {
        self.check(
            &req.namespace,
            &req.pod,
            req.pod_uid.as_deref(),
            Some(&req.container),
        )
    }

    /// Starts `req` on the pod's edge.
    fn exec(&self, req: ExecRequest) -> BoxFuture<'static, Result<ExecIo, StreamError>>;

    /// Opens a byte stream to `port` of pod `namespace/pod`. Concurrent calls each get their
    /// own stream.
    fn port_forward(
        &self,
        namespace: &str,
        pod: &str,
        port: u16,
    ) -> BoxFuture<'static, Result<Box<dyn TunnelIo>, StreamError>>;
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
