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
    /// Starts one simulated edge per name with `connect` as its operator flags
    /// ([`OperatorProcess::edge_args`](crate::cluster::OperatorProcess::edge_args): URL, join
    /// token, CA pin), state under `state_root`.
    pub fn start(connect: &[String], names: &[String], state_root: &Path) -> anyhow::Result<Self> {
        let shutdown = CancellationToken::new();
        let mut tasks = Vec::with_capacity(names.len());
        for name in names {
            let dir = state_root.join(name);
            let mut argv: Vec<String> = vec!["edge-kubelet".into(), "run".into()];
            argv.extend(connect.iter().cloned());
            argv.extend([
                "--name".into(),
                name.clone(),
                "--runtime".into(),
                "simulated".into(),
                "--state-dir".into(),
                dir.to_string_lossy().into_owned(),
                "--max-pods".into(),
                "20".into(),
            ]);
            let cli = Cli::try_parse_from(argv).context("simulated edge arguments")?;
            // `edge-kubelet` has more subcommands on some branches (join); only `run` is built here.
            #[allow(irrefutable_let_patterns)]
            let Command::Run(args) = cli.command else {
                anyhow::bail!("expected `run` arguments");
            };
            let stop = shutdown.clone();
            let name = name.clone();
            tasks.push(tokio::spawn(async move {
                if let Err(e) = edge_kubelet::run(*args, stop).await {
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
