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
pub mod error;
pub mod lifecycle;
pub mod logs;
pub mod metrics;
pub mod pod_supervisor;
pub(crate) mod pod_worker;
pub mod probe;
pub mod runtime;
pub mod session;
pub mod state_file;
pub mod status_board;
pub mod tunnel;

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
    let pods = PodSupervisor::start(runtime, Some(state_file), PodWorkerConfig::default()).await?;

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
    };
    session::run(cfg, pods, metrics, shutdown).await;
    Ok(())
}
