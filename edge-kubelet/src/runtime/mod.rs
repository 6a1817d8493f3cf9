//! The container runtime seen by the pod side of the edge: one trait, two implementations.
//!
//! [`DockerRuntime`] runs real containers with the local Docker engine; [`SimulatedRuntime`]
//! keeps fake containers in memory for scale benchmarks. [`types`] holds the plain data both
//! sides exchange and [`probe`] the network probe checks, so neither depends on the trait.

mod container_runtime;
mod docker;
mod probe;
mod simulated;
mod types;

pub use container_runtime::ContainerRuntime;
pub use docker::{DockerRuntime, EngineFacts, ImageRules, ResourceCeiling};
pub(crate) use docker::{mount_options_of, storage_quota_supported};
pub use simulated::{SimulatedRuntime, SimulatedTimings};
pub use types::{
    BindMount, ContainerInfo, ContainerMeasurements, ContainerStream, ContainerUsage,
    CreateRequest, LogOptions, PodNetwork, ProbeTarget, RuntimeEvent, StreamChunk, StreamHandle,
    StreamSpec,
};
