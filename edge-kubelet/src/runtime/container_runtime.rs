//! The [`ContainerRuntime`] trait: the container engine as the pod side of the edge uses it.

use std::time::Duration;

use async_trait::async_trait;
use bytes::Bytes;
use futures::stream::BoxStream;

use decloud_proto as pb;
use pb::probe::Handler;

use super::probe;
use super::types::{
    ContainerInfo, ContainerMeasurements, ContainerStream, ContainerUsage, CreateRequest,
    LogOptions, ProbeTarget, RuntimeEvent, StreamHandle, StreamSpec,
};
use crate::error::Result;

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

    /// The runtime's name and version as kubelet reports `containerRuntimeVersion`
    /// (`docker://24.0.7`).
    async fn version(&self) -> Result<String>;

    /// Gets the engine ready (for Docker: checks the connection, creates the bridge network).
    /// May be called more than once.
    async fn prepare(&self) -> Result<()>;

    /// Makes `image` available under `policy`. Fails with [`crate::error::Error::ImagePull`] carrying
    /// the engine's message.
    async fn ensure_image(&self, image: &str, policy: pb::PullPolicy) -> Result<()>;

    /// [`ContainerRuntime::ensure_image`] with the credential for the image's registry (from
    /// the pod's imagePullSecrets; kept in memory only). The default ignores it.
    async fn ensure_image_with(
        &self,
        image: &str,
        policy: pb::PullPolicy,
        _auth: Option<&pb::RegistryAuth>,
    ) -> Result<()> {
        self.ensure_image(image, policy).await
    }

    /// Creates (does not start) a container and returns its id.
    async fn create_container(&self, req: CreateRequest<'_>) -> Result<String>;

    /// Starts a created container.
    async fn start_container(&self, id: &str) -> Result<()>;

    /// Current facts about one container; [`crate::error::Error::NotFound`] if it is gone.
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

    /// Starts an interactive session in running container `id`: `spec.command` inside the
    /// container (never on the host), or an attach to its main process. The default: not
    /// supported by this runtime.
    async fn open_stream(&self, _id: &str, _spec: StreamSpec<'_>) -> Result<ContainerStream> {
        Err(crate::error::Error::Unsupported(format!(
            "the {} runtime does not run interactive sessions",
            self.name()
        )))
    }

    /// Resizes the terminal of a session.
    async fn resize_stream(&self, _handle: &StreamHandle, _width: u16, _height: u16) -> Result<()> {
        Ok(())
    }

    /// The exit code of a session whose output ended; `None` when there is none (an attach).
    async fn stream_exit_code(&self, _handle: &StreamHandle) -> Result<Option<i64>> {
        Ok(None)
    }

    /// The container's output (stdout and stderr interleaved).
    fn logs(&self, id: &str, opts: LogOptions) -> BoxStream<'static, Result<Bytes>>;

    /// CPU and memory counters of a running container, for usage accounting; `None` when the
    /// engine cannot tell. The default tells nothing.
    async fn usage(&self, _id: &str) -> Result<Option<ContainerUsage>> {
        Ok(None)
    }

    /// Bytes container `id` holds on this machine's disk: its writable layer plus its log
    /// files (for ephemeral-storage eviction); `None` when the runtime cannot tell. The
    /// default tells nothing.
    async fn disk_usage(&self, _id: &str) -> Result<Option<i64>> {
        Ok(None)
    }

    /// The pod network as a CIDR (`172.18.0.0/16`), announced in the Hello: the operator
    /// accepts a reported pod IP only inside it. `None` when unknown (no pod IP is accepted).
    async fn pod_cidr(&self) -> Option<String> {
        None
    }

    /// A running container's figures for the kubelet API's stats (`None` when the engine
    /// cannot tell). The default tells nothing.
    async fn measure(&self, _id: &str) -> Result<Option<ContainerMeasurements>> {
        Ok(None)
    }

    /// The user an image runs as (its `USER`: `""`, `"1000"`, `"app:app"`); `None` when the
    /// engine cannot tell. The default tells nothing.
    async fn image_user(&self, _image: &str) -> Option<String> {
        None
    }

    /// Whether `image` is present, and its size in bytes (`None`: absent, or the engine cannot
    /// tell), for kubelet's `Pulling`/`Pulled` events. The default tells nothing.
    async fn image_size(&self, _image: &str) -> Option<u64> {
        None
    }

    /// Runs one readiness probe: `Err` says why it failed, as kubelet's `Unhealthy` events say
    /// it. The default aims network probes at the pod IP from the edge host and runs `exec`
    /// probes through [`ContainerRuntime::exec`].
    async fn probe(
        &self,
        target: ProbeTarget<'_>,
        probe: &pb::Probe,
    ) -> std::result::Result<(), String> {
        let timeout = probe::attempt_timeout(probe);
        match &probe.handler {
            Some(Handler::HttpGet(h)) => probe::http_get(target.pod_ip, h, timeout).await,
            Some(Handler::TcpSocket(t)) => probe::tcp_connect(target.pod_ip, t, timeout).await,
            Some(Handler::Exec(e)) => {
                match self.exec(target.container_id, &e.command, timeout).await {
                    Ok(0) => Ok(()),
                    // kubelet shows the command's output; the edge does not capture it.
                    Ok(code) => Err(format!("command exited with {code}")),
                    Err(e) => Err(e.to_string()),
                }
            }
            // A probe without a handler cannot fail.
            None => Ok(()),
        }
    }
}
