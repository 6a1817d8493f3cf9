//! DeCloud edge-kubelet: the agent on a provider's machine.
//!
//! - node side: [`session`] dials the operator, says hello, heartbeats, pushes pod status;
//! - pod side: [`pod_supervisor`] runs one [`pod_worker`] per assigned pod, each driving its
//!   containers through the [`lifecycle`] state machine on a [`runtime::ContainerRuntime`]
//!   (Docker, or the simulated one for benchmarks);
//! - [`state_file`] keeps the assigned set so a restart without the operator changes nothing.
#![forbid(unsafe_code)]

pub mod capacity;
pub mod cli;
pub mod credentials;
pub mod error;
pub mod image_policy;
pub mod lifecycle;
pub mod logs;
pub mod metrics;
pub mod pod_supervisor;
pub(crate) mod pod_worker;
pub mod probe;
pub mod report;
pub mod runtime;
pub mod session;
pub mod state_file;
pub mod status_board;
pub mod tunnel;
pub mod usage;

use std::sync::Arc;

use tokio_util::sync::CancellationToken;

pub use error::{Error, Result};
pub use pod_supervisor::PodSupervisor;
pub use pod_worker::PodWorkerConfig;

/// Version reported in `Hello`.
pub const AGENT_VERSION: &str = env!("CARGO_PKG_VERSION");

/// Runs the edge described by `args` until `shutdown` is cancelled. On shutdown the pods'
/// containers keep running; the next start re-adopts them.
pub async fn run(args: cli::RunArgs, shutdown: CancellationToken) -> Result<()> {
    let node = args.node_name();
    // First: an edge that cannot prove who it is starts nothing.
    let credential = credential_for_run(&args, &args.state_dir(), &shutdown).await?;
    let runtime: Arc<dyn runtime::ContainerRuntime> = match args.runtime {
        cli::RuntimeKind::Docker => {
            Arc::new(runtime::docker::DockerRuntime::connect(&node, &args.docker_network).await?)
        }
        cli::RuntimeKind::Simulated => {
            tracing::warn!("using the SIMULATED runtime: no container really runs");
            Arc::new(runtime::simulated::SimulatedRuntime::new(
                &node,
                runtime::simulated::SimulatedTimings::default(),
            ))
        }
    };
    let state_dir = args.state_dir();
    let state_file = state_file::StateFile::new(&state_dir, &node);
    tracing::info!(%node, state_file = %state_file.path().display(), runtime = runtime.name(), "starting edge-kubelet");
    let worker_config = PodWorkerConfig {
        allowed_images: image_policy::ImagePolicy::new(args.allowed_images.iter().cloned()),
        max_pods: usize::try_from(args.max_pods).unwrap_or(usize::MAX),
        ..PodWorkerConfig::default()
    };
    let pods = PodSupervisor::start(runtime, Some(state_file), worker_config).await?;

    let capacity = capacity::detect();
    let offered = capacity::offered(&capacity, args.cpu, args.memory, args.max_pods);
    let metrics = Arc::new(metrics::Metrics::default());
    if let Some(addr) = args.metrics_listen {
        let (m, b, s) = (metrics.clone(), pods.board().clone(), shutdown.clone());
        tokio::spawn(async move {
            if let Err(e) = metrics::serve(addr, m, b, s).await {
                tracing::error!(%addr, error = %e, "metrics listener failed");
            }
        });
    }
    let cfg = session::SessionConfig {
        operator: args.operator.clone(),
        provider_name: args.name.clone(),
        owner: args.owner.clone(),
        labels: args.label_map(),
        capacity,
        offered,
        heartbeat_interval: args.heartbeat_interval,
        max_backoff: args.max_reconnect_backoff,
        credential,
    };
    let report = report::EdgeReport {
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
    let reporter = tokio::spawn(report::keep_writing(
        state_dir,
        report,
        pods.board().clone(),
        metrics.clone(),
        shutdown.clone(),
    ));
    session::run(cfg, pods, metrics, shutdown.clone()).await;
    shutdown.cancel();
    let _ = reporter.await;
    Ok(())
}

/// `edge-kubelet status`: the report of the agent using `state_dir`, rendered.
pub fn status(state_dir: &std::path::Path) -> Result<String> {
    let r = report::read(state_dir)?;
    let alive = std::path::Path::new(&format!("/proc/{}", r.pid)).exists();
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs() as i64)
        .unwrap_or_default();
    Ok(report::render(&r, now, alive))
}

/// Joins the cluster at `args.operator` with `args.token` once (see [`credentials::join`]).
pub async fn join(args: &cli::JoinArgs) -> Result<credentials::EdgeCredential> {
    let request = credentials::register_request(
        &args.name,
        &args.owner,
        args.labels.iter().cloned().collect(),
    );
    credentials::join(
        &args.operator,
        &args.token,
        args.ca_hash.as_deref(),
        request,
        &args.state_dir(),
    )
    .await
}

/// Whether a failed join may succeed if retried (operator busy, standby, unreachable, the
/// call cut on the way). Retrying is safe: the edge asks for the same credential each time,
/// so a join whose answer was lost is recognised.
fn join_retryable(e: &Error) -> bool {
    use tonic::Code;
    match e {
        Error::Timeout(_) => true,
        Error::JoinRefused { code, .. } => matches!(
            code,
            Code::Unavailable
                | Code::Unknown
                | Code::Cancelled
                | Code::DeadlineExceeded
                | Code::Internal
                | Code::ResourceExhausted
                | Code::Aborted
        ),
        Error::Session(m) => m.starts_with("cannot reach") || m.starts_with("transport error"),
        _ => false,
    }
}

/// The stored credential, or (with `--token`) one from joining now, retrying while the
/// operator is unreachable or a standby.
async fn credential_for_run(
    args: &cli::RunArgs,
    state_dir: &std::path::Path,
    shutdown: &CancellationToken,
) -> Result<credentials::EdgeCredential> {
    if let Some(c) = credentials::EdgeCredential::load(state_dir)? {
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
    let join_args = cli::JoinArgs {
        operator: args.operator.clone(),
        token: token.clone(),
        ca_hash: args.ca_hash.clone(),
        name: args.name.clone(),
        owner: args.owner.clone(),
        labels: args.labels.clone(),
        state_dir: Some(state_dir.to_path_buf()),
    };
    let mut backoff = session::ReconnectBackoff::new(args.max_reconnect_backoff);
    loop {
        match join(&join_args).await {
            Ok(c) => return Ok(c),
            Err(e) if join_retryable(&e) => {
                tracing::warn!(operator = %args.operator, error = %e, "joining failed; retrying");
            }
            Err(e) => return Err(e),
        }
        tokio::select! {
            _ = shutdown.cancelled() => return Err(Error::Session("shut down before joining".into())),
            _ = tokio::time::sleep(backoff.next_delay()) => {}
        }
    }
}
