//! The container runtime seen by the pod side of the edge: one trait, two implementations.
//!
//! [`docker::DockerRuntime`] runs real containers with the local Docker engine;
//! [`simulated::SimulatedRuntime`] keeps fake containers in memory for scale benchmarks.

use std::time::Duration;

use async_trait::async_trait;
use bytes::Bytes;
use futures::stream::BoxStream;

use decloud_proto as pb;

use crate::Result;

pub mod docker;
pub mod simulated;

/// Label keys every container edge-kubelet creates carries (see docs/contracts.md).
pub mod labels {
    /// `edge-kubelet` on every container this agent created.
    pub const MANAGED_BY: &str = "decloud.dev/managed-by";
    /// Value of [`MANAGED_BY`].
    pub const MANAGED_BY_VALUE: &str = "edge-kubelet";
    /// The node (`edge-<provider>`) whose agent created the container.
    pub const NODE: &str = "decloud.dev/node";
    /// Pod UID.
    pub const POD_UID: &str = "decloud.dev/pod-uid";
    /// Pod namespace.
    pub const POD_NAMESPACE: &str = "decloud.dev/pod-namespace";
    /// Pod name.
    pub const POD_NAME: &str = "decloud.dev/pod-name";
    /// Container name inside the pod.
    pub const CONTAINER: &str = "decloud.dev/container";
    /// How many times this container had been restarted when this instance was created.
    pub const RESTART_COUNT: &str = "decloud.dev/restart-count";
    /// The pod's `spec_hash` when the container was created (a changed spec replaces it).
    pub const SPEC_HASH: &str = "decloud.dev/spec-hash";
}

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

/// A container engine as the pod workers use it.
///
/// Contracts, for every implementation:
/// - Only containers labelled `decloud.dev/managed-by=edge-kubelet` and this edge's
///   `decloud.dev/node` are ever listed, stopped or removed.
/// - Every method may be called more than once and concurrently; stop and remove are
///   idempotent (a container that is already gone is not an error).
/// - Methods may wait on the engine but never block a thread.
#[async_trait]
pub trait ContainerRuntime: Send + Sync + 'static {
    /// Short name reported to the operator (`docker`, `simulated`).
    fn name(&self) -> &'static str;

    /// Gets the engine ready (for Docker: checks the connection, creates the bridge network).
    /// May be called more than once.
    async fn prepare(&self) -> Result<()>;

    /// Makes `image` available under `policy`. Fails with [`crate::Error::ImagePull`] carrying
    /// the engine's message.
    async fn ensure_image(&self, image: &str, policy: pb::PullPolicy) -> Result<()>;

    /// Creates (does not start) a container and returns its id.
    async fn create_container(&self, req: CreateRequest<'_>) -> Result<String>;

    /// Starts a created container.
    async fn start_container(&self, id: &str) -> Result<()>;

    /// Current facts about one container; [`crate::Error::NotFound`] if it is gone.
    async fn inspect_container(&self, id: &str) -> Result<ContainerInfo>;

    /// All of this edge's containers, running or not.
    async fn list_containers(&self) -> Result<Vec<ContainerInfo>>;

    /// Stops a container: SIGTERM, then SIGKILL after `grace`. Idempotent.
    async fn stop_container(&self, id: &str, grace: Duration) -> Result<()>;

    /// Removes a stopped container. Idempotent.
    async fn remove_container(&self, id: &str) -> Result<()>;

    /// Changes of this edge's containers as they happen. The stream never ends on its own:
    /// implementations reconnect and emit [`RuntimeEvent::Resync`] when they may have missed
    /// something.
    fn events(&self) -> BoxStream<'static, RuntimeEvent>;

    /// Runs `cmd` inside a running container and returns its exit code.
    async fn exec(&self, id: &str, cmd: &[String], timeout: Duration) -> Result<i64>;

    /// The container's output (stdout and stderr interleaved).
    fn logs(&self, id: &str, opts: LogOptions) -> BoxStream<'static, Result<Bytes>>;

    /// CPU and memory counters of a running container, for usage accounting; `None` when the
    /// engine cannot tell. The default tells nothing.
    async fn usage(&self, _id: &str) -> Result<Option<crate::usage::ContainerUsage>> {
        Ok(None)
    }

    /// Runs one readiness probe; true when it passed. The default aims network probes at the
    /// pod IP from the edge host and runs `exec` probes through [`ContainerRuntime::exec`].
    async fn probe(&self, target: ProbeTarget<'_>, probe: &pb::Probe) -> bool {
        crate::probe::run_once(self, target, probe).await
    }
}
