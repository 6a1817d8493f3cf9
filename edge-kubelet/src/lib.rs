//! DeCloud edge-kubelet: the agent on a provider's machine.
//!
//! - `session/`: the node side. Dials the operator, says hello, heartbeats, pushes pod status,
//!   serves logs and tunnels;
//! - `pod/`: the pod side. One worker per assigned pod drives its containers through the
//!   lifecycle state machine;
//! - `runtime/`: the [`ContainerRuntime`] trait, Docker, the simulated one for benchmarks, and
//!   probe checks;
//! - `local/`: what the edge keeps on disk (the assigned set, the `status` report);
//! - `join/`: joining a cluster and the credential the edge proves itself with;
//! - `agent`: `run`, `join` and `status` wired from those parts.
#![forbid(unsafe_code)]

mod agent;
mod backoff;
mod capacity;
/// The command line; public as a module for the e2e benches, which parse edge command lines.
pub mod cli;
mod clock;
mod error;
mod join;
mod local;
mod metrics;
mod platform;
mod pod;
mod runtime;
mod session;

pub use agent::{join, run, status};
pub use error::{Error, Result};
pub use join::CREDENTIAL_FILE;
pub use local::{EdgeReport, PodLine, StateFile, read_report};
pub use pod::{
    BackoffPolicy, ImagePolicy, OUT_OF_PODS, PodSupervisor, PodUpdate, PodWorkerConfig, StatusBoard,
};
pub use runtime::{
    ContainerInfo, ContainerMeasurements, ContainerRuntime, ContainerUsage, CreateRequest,
    DockerRuntime, LogOptions, PodNetwork, ProbeTarget, RuntimeEvent, SimulatedRuntime,
    SimulatedTimings,
};

/// Version reported in `Hello`.
const AGENT_VERSION: &str = env!("CARGO_PKG_VERSION");
