//! DeCloud operator: the virtual-kubelet side of the cluster.
//!
//! - [`edge`]: the gRPC service edges dial, their sessions, the live-session registry,
//!   liveness from heartbeats, and auth (join tokens, credentials, throttling);
//! - [`provider`]: the Provider controller, virtual Nodes, node Leases and registration;
//! - [`pods`]: admission, translation to the edge's spec, relaying pods to edges, pod status;
//! - [`relay`]: tunnels and log streams over edge sessions, wired to the public gateway and
//!   the kubelet API (the `decloud-gateway` crate);
//! - [`run`] builds the shared watches and context and starts everything.
//!
//! Heartbeats end in memory: the API server sees only transitions and node Lease renewals.
//! The operator is single-active: replicas elect a leader with a `coordination.k8s.io` Lease
//! and standbys refuse edges, because sessions live in the leader's memory.
//! `docs/architecture.md` maps each data path to the file where each step happens.
#![forbid(unsafe_code)]
#![warn(unreachable_pub)]

mod admin;
mod cli;
mod config;
mod context;
mod edge;
mod error;
#[cfg(test)]
mod fixtures;
pub mod fuzzing;
mod health;
mod install;
mod leader;
mod metrics;
mod pods;
mod provider;
mod relay;
mod run;
mod slots;
mod stats;
mod time;
mod tls;
mod usage;

pub use cli::{Cli, Command, ProviderCommand, RunArgs, TokenCommand};
pub use error::{Error, Result};

use config::Config;

/// Runs one `decloud-operator` command line.
pub async fn main(cli: Cli) -> Result<()> {
    match cli.command {
        Command::Run(args) => run::run(*args).await,
        Command::Token(cmd) => admin::token(cmd).await,
        Command::Provider(ProviderCommand::Revoke { name }) => admin::revoke_provider(&name).await,
    }
}
