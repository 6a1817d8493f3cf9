//! The plain data the runtime and the pod side exchange: leaf types, no behaviour.

use decloud_proto as pb;

/// Where a new container gets its network namespace.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PodNetwork {
    /// The pod's first container: it owns the pod's network namespace on the edge's bridge.
    Own,
    /// Any further container: joins the namespace of the given (first) container.
    JoinContainer(String),
}

/// Everything needed to create one container of a pod.
#[derive(Debug, Clone, Copy)]
pub struct CreateRequest<'a> {
    /// The pod.
    pub pod: &'a pb::PodSpec,
    /// The container within it.
    pub container: &'a pb::ContainerSpec,
    /// Restart count this instance starts with (kept as a label for re-adoption).
    pub restart_count: u32,
    /// Network namespace to use.
    pub network: &'a PodNetwork,
    /// The container's full environment when it comes from the pod's configuration
    /// (ConfigMaps/Secrets); `None`: the spec's.
    pub env: Option<&'a [pb::EnvVar]>,
    /// Host folders and files bind-mounted into it.
    pub mounts: &'a [BindMount],
    /// The image's user (its `USER`), when known; for `runAsGroup` without `runAsUser`.
    pub image_user: Option<&'a str>,
}

/// A host path bind-mounted into a container (a pod volume the edge prepared).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BindMount {
    /// Path on the host.
    pub source: String,
    /// Path in the container.
    pub target: String,
    /// Mounted read-only.
    pub read_only: bool,
}

/// What the runtime knows about one of this edge's containers.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct ContainerInfo {
    /// Engine container id.
    pub id: String,
    /// From labels: pod UID.
    pub pod_uid: String,
    /// From labels: pod namespace.
    pub pod_namespace: String,
    /// From labels: pod name.
    pub pod_name: String,
    /// From labels: container name in the pod.
    pub container_name: String,
    /// From labels: restart count at creation.
    pub restart_count: u32,
    /// From labels: pod spec hash at creation.
    pub spec_hash: String,
    /// Image reference as requested.
    pub image: String,
    /// Resolved image id.
    pub image_id: String,
    /// True while the process runs.
    pub running: bool,
    /// Exit code once exited.
    pub exit_code: i32,
    /// Killed by the OOM killer.
    pub oom_killed: bool,
    /// Engine error text (for example a failed start), if any.
    pub error: String,
    /// Creation time (Unix ms), orders restarts.
    pub created_unix_millis: i64,
    /// Start time (Unix ms), 0 if never started.
    pub started_unix_millis: i64,
    /// End time (Unix ms), 0 while running.
    pub finished_unix_millis: i64,
    /// Address on the edge's container network, if it has one.
    pub ip: Option<String>,
}

/// A change the engine noticed on one of this edge's containers.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RuntimeEvent {
    /// A container started.
    Started {
        /// Pod UID label.
        pod_uid: String,
        /// Container id.
        container_id: String,
    },
    /// A container's process ended.
    Died {
        /// Pod UID label.
        pod_uid: String,
        /// Container id.
        container_id: String,
    },
    /// Events may have been missed (the event stream reconnected): everyone re-inspects.
    Resync,
}

/// Options of a log read.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct LogOptions {
    /// Keep streaming new output.
    pub follow: bool,
    /// Only the last N lines; `None` for all.
    pub tail_lines: Option<u64>,
    /// Prefix each line with an RFC 3339 timestamp.
    pub timestamps: bool,
}

/// Where a readiness probe is aimed.
#[derive(Debug, Clone, Copy)]
pub struct ProbeTarget<'a> {
    /// The container (for `exec`).
    pub container_id: &'a str,
    /// The pod's IP (for `httpGet` / `tcpSocket`).
    pub pod_ip: &'a str,
}

/// One container instance's counters at one moment.
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct ContainerUsage {
    /// CPU time the instance used since it started, in seconds.
    pub cpu_seconds: f64,
    /// Memory the instance holds now, in bytes.
    pub memory_bytes: u64,
}

/// An interactive session a user asked for (`kubectl exec` / `kubectl attach`).
#[derive(Debug, Clone, Copy)]
pub struct StreamSpec<'a> {
    /// The command to run inside the container; `None` attaches to its main process.
    pub command: Option<&'a [String]>,
    /// Allocate a terminal (exec) / the container has one (attach).
    pub tty: bool,
    /// Carry stdin.
    pub stdin: bool,
    /// Carry stdout.
    pub stdout: bool,
    /// Carry stderr.
    pub stderr: bool,
}

/// Output of an interactive session.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum StreamChunk {
    /// From stdout, or the terminal.
    Stdout(bytes::Bytes),
    /// From stderr.
    Stderr(bytes::Bytes),
}

/// Which session a resize or exit-code query is about.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum StreamHandle {
    /// An exec, by the engine's exec id.
    Exec(String),
    /// An attach, by container id.
    Attach(String),
}

/// A running interactive session.
pub struct ContainerStream {
    /// What the process writes, until it ends.
    pub output: futures::stream::BoxStream<'static, crate::error::Result<StreamChunk>>,
    /// Its stdin; shutting it down closes the process's stdin.
    pub input: std::pin::Pin<Box<dyn tokio::io::AsyncWrite + Send>>,
    /// The session, for resizes and the exit code.
    pub handle: StreamHandle,
}

impl std::fmt::Debug for ContainerStream {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ContainerStream")
            .field("handle", &self.handle)
            .finish_non_exhaustive()
    }
}

/// One container instance's figures at one moment, as kubelet's stats summary reports them.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ContainerMeasurements {
    /// CPU time used since the instance started, in nanoseconds.
    pub cpu_nanos: u64,
    /// Memory in use (the cgroup's usage), in bytes.
    pub usage_bytes: u64,
    /// Usage minus inactive file cache: what kubelet calls the working set.
    pub working_set_bytes: u64,
    /// Anonymous memory (RSS).
    pub rss_bytes: u64,
    /// The memory limit; 0 when none.
    pub limit_bytes: u64,
    /// Network counters of the container's interfaces (the pod's, for its first container).
    pub rx_bytes: u64,
    /// Bytes sent.
    pub tx_bytes: u64,
    /// Receive errors.
    pub rx_errors: u64,
    /// Send errors.
    pub tx_errors: u64,
    /// Bytes the container wrote to its writable layer.
    pub rootfs_used_bytes: u64,
}
