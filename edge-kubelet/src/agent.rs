//! The three things the `edge-kubelet` binary does, wired from their parts: `run`, `join`
//! and `status`.

use std::path::Path;
use std::sync::Arc;

use tokio_util::sync::CancellationToken;

use crate::cli::{JoinArgs, RunArgs, RuntimeKind};
use crate::error::{Error, Result};
use crate::join::{self, EdgeCredential, JoinRequest};
use crate::local::{self, EdgeReport, StateFile};
use crate::metrics::{self, Metrics};
use crate::pod::{ImagePolicy, PodSupervisor, PodWorkerConfig};
use crate::runtime::{ContainerRuntime, DockerRuntime, SimulatedRuntime, SimulatedTimings};
use crate::session::{self, SessionConfig};
use crate::{capacity, platform};

/// Runs the edge described by `args` until `shutdown` is cancelled. On shutdown the pods'
/// containers keep running; the next start re-adopts them.
pub async fn run(args: RunArgs, shutdown: CancellationToken) -> Result<()> {
    let node = args.node_name();
    // First: an edge that cannot prove who it is starts nothing.
    let credential = credential_for_run(&args, &args.state_dir(), &shutdown).await?;
    let runtime: Arc<dyn ContainerRuntime> = match args.runtime {
        RuntimeKind::Docker => Arc::new(DockerRuntime::connect(&node, &args.docker_network).await?),
        RuntimeKind::Simulated => {
            tracing::warn!("using the SIMULATED runtime: no container really runs");
            Arc::new(SimulatedRuntime::new(&node, SimulatedTimings::default()))
        }
    };
    let state_dir = args.state_dir();
    let state_file = StateFile::new(&state_dir, &node);
    tracing::info!(%node, state_file = %state_file.path().display(), runtime = runtime.name(), "starting edge-kubelet");
    let runtime_version = runtime.version().await.unwrap_or_else(|e| {
        tracing::warn!(error = %e, "cannot tell the container runtime's version");
        format!("{}://", runtime.name())
    });
    let worker_config = PodWorkerConfig {
        allowed_images: ImagePolicy::new(args.allowed_images.iter().cloned()),
        max_pods: usize::try_from(args.max_pods).unwrap_or(usize::MAX),
        ..PodWorkerConfig::default()
    };
    let pods = PodSupervisor::start(runtime, Some(state_file), worker_config).await?;

    let capacity = capacity::detect();
    let offered = capacity::offered(&capacity, args.cpu, args.memory, args.max_pods);
    let metrics = Arc::new(Metrics::default());
    if let Some(addr) = args.metrics_listen {
        let (m, b, s) = (metrics.clone(), pods.board().clone(), shutdown.clone());
        tokio::spawn(async move {
            if let Err(e) = metrics::serve(addr, m, b, s).await {
                tracing::error!(%addr, error = %e, "metrics listener failed");
            }
        });
    }
    let cfg = SessionConfig {
        operator: args.operator.clone(),
        provider_name: args.name.clone(),
        owner: args.owner.clone(),
        labels: args.label_map(),
        capacity,
        offered,
        heartbeat_interval: args.heartbeat_interval,
        stats_interval: args.stats_interval,
        max_backoff: args.max_reconnect_backoff,
        credential,
        platform: platform::detect(runtime_version),
    };
    let report = EdgeReport {
        pid: std::process::id(),
        provider: args.name.clone(),
        operator: args.operator.clone(),
        runtime: format!("{:?}", args.runtime).to_lowercase(),
        offered_cpu_millis: offered.cpu_millis,
        offered_memory_bytes: offered.memory_bytes,
        offered_pods: offered.pods,
        allowed_images: args.allowed_images.clone(),
        ..Default::default()
    };
    let (board, connected) = (pods.board().clone(), metrics.clone());
    let reporter = tokio::spawn(local::keep_writing(
        state_dir,
        report,
        move || (connected.is_connected(), board.all()),
        shutdown.clone(),
    ));
    session::run(cfg, pods, metrics, shutdown.clone()).await;
    shutdown.cancel();
    let _ = reporter.await;
    Ok(())
}

/// `edge-kubelet status`: the report of the agent using `state_dir`, rendered.
pub fn status(state_dir: &Path) -> Result<String> {
    local::status_text(state_dir)
}

/// Joins the cluster at `args.operator` with `args.token` once: checks the operator's CA
/// against `--ca-hash`, registers, and stores the credential in the state directory.
pub async fn join(args: &JoinArgs) -> Result<()> {
    let state_dir = args.state_dir();
    join::join(&JoinRequest {
        operator: &args.operator,
        token: &args.token,
        ca_hash: args.ca_hash.as_deref(),
        name: &args.name,
        owner: &args.owner,
        labels: args.labels.iter().cloned().collect(),
        state_dir: &state_dir,
    })
    .await
    .map(drop)
}

/// The stored credential, or (with `--token`) one from joining now, retrying while the
/// operator is unreachable or a standby.
async fn credential_for_run(
    args: &RunArgs,
    state_dir: &Path,
    shutdown: &CancellationToken,
) -> Result<EdgeCredential> {
    if let Some(c) = EdgeCredential::load(state_dir)? {
        return Ok(c);
    }
    let Some(token) = &args.token else {
        return Err(Error::InvalidInput(format!(
            "this edge has not joined a cluster (no credential in {}): run `edge-kubelet join \
             --operator … --token … --ca-hash … --name {}` first, or pass --token and --ca-hash \
             to `run`",
            state_dir.display(),
            args.name
        )));
    };
    let req = JoinRequest {
        operator: &args.operator,
        token,
        ca_hash: args.ca_hash.as_deref(),
        name: &args.name,
        owner: &args.owner,
        labels: args.labels.iter().cloned().collect(),
        state_dir,
    };
    join::join_retrying(&req, args.max_reconnect_backoff, shutdown).await
}
