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
mod console;
/// Whether this machine takes work (pause, drain, resume, --schedule, --when-idle): the
/// in-process [`control::Availability`] handle and the control socket.
pub mod control;
mod error;
mod host;
mod images;
mod join;
mod local;
mod metrics;
mod offer;
mod platform;
mod pod;
mod runtime;
mod session;

pub use agent::{join, run, run_with, status, uninstall};
pub use console::{ConsoleActions, LendingState, OfferForm, url_with_token as console_url};
pub use error::{Error, Result};
pub use host::{
    Cidr, EgressPolicy, MAX_VOLUME_BYTES, MIN_VOLUME_BYTES, PERSISTENT_VOLUMES_DIR, Volume,
    VolumeStore,
};
pub use images::{ImagePolicy, PulledImages, RegistryGuard};
pub use join::CREDENTIAL_FILE;
pub use local::{EdgeReport, Given, PodLine, StateFile, read_report};
pub use pod::{
    BackoffPolicy, OUT_OF_CPU, OUT_OF_MEMORY, OUT_OF_PODS, OUT_OF_STORAGE, PodSupervisor,
    PodUpdate, PodWorkerConfig, StatusBoard,
};
pub use runtime::{
    BindMount, ContainerInfo, ContainerMeasurements, ContainerRuntime, ContainerStream,
    ContainerUsage, CreateRequest, DockerRuntime, EngineFacts, ImageRules, LogOptions, PodNetwork,
    ProbeTarget, ResourceCeiling, RuntimeEvent, SimulatedRuntime, SimulatedTimings, StreamChunk,
    StreamHandle, StreamSpec,
};

/// Removes the egress rules of edge `node` (`edge-<provider>`) from this machine, as
/// `edge-kubelet uninstall` does; for test harnesses that sweep up after edges.
pub fn remove_egress_policy(node: &str) -> Result<()> {
    host::uninstall(node)
}

/// The names of edge `node`'s iptables chains: (container → other hosts, container → this
/// host), the same in both address families.
pub fn egress_chains(node: &str) -> (String, String) {
    let c = host::Chains::of(node);
    (c.forward, c.input)
}

/// Version reported in `Hello`.
const AGENT_VERSION: &str = env!("CARGO_PKG_VERSION");
