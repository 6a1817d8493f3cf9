//! Many SIMULATED edges in this process: the real edge-kubelet session and pod lifecycle
//! (`edge_kubelet::run`) with the in-memory runtime, one task per edge.

use std::path::Path;

use anyhow::Context as _;
use clap::Parser;
use edge_kubelet::cli::{Cli, Command};
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

/// Simulated edges sharing this process; stopped on drop.
pub struct SimEdges {
    shutdown: CancellationToken,
    tasks: Vec<JoinHandle<()>>,
}

impl SimEdges {
    /// Starts one simulated edge per name, dialing `operator_url`, state under `state_root`.
    pub fn start(operator_url: &str, names: &[String], state_root: &Path) -> anyhow::Result<Self> {
        let shutdown = CancellationToken::new();
        let mut tasks = Vec::with_capacity(names.len());
        for name in names {
            let dir = state_root.join(name);
            let cli = Cli::try_parse_from([
                "edge-kubelet",
                "run",
                "--operator",
                operator_url,
                "--name",
                name,
                "--runtime",
                "simulated",
                "--state-dir",
                &dir.to_string_lossy(),
                "--max-pods",
                "20",
            ])
            .context("simulated edge arguments")?;
            let Command::Run(args) = cli.command else {
                anyhow::bail!("expected `run` arguments");
            };
            let stop = shutdown.clone();
            let name = name.clone();
            tasks.push(tokio::spawn(async move {
                if let Err(e) = edge_kubelet::run(args, stop).await {
                    tracing::error!(%name, error = %e, "simulated edge stopped");
                }
            }));
        }
        Ok(SimEdges { shutdown, tasks })
    }

    /// Number of edges.
    pub fn len(&self) -> usize {
        self.tasks.len()
    }

    /// Whether there are none.
    pub fn is_empty(&self) -> bool {
        self.tasks.is_empty()
    }

    /// Stops every edge and waits for them.
    pub async fn stop(mut self) {
        self.shutdown.cancel();
        for t in self.tasks.drain(..) {
            let _ = t.await;
        }
    }
}

impl Drop for SimEdges {
    fn drop(&mut self) {
        self.shutdown.cancel();
        for t in &self.tasks {
            t.abort();
        }
    }
}
