//! The real DeCloud test environment: a real etcd and kube-apiserver built from their Go
//! modules, a Docker engine of its own per edge, real registries and the real DeCloud binaries,
//! all on loopback.
//!
//! Nothing here is a mock. A suite that lacks a part fails with a message that says how to get
//! it; it never skips.
#![forbid(unsafe_code)]

pub mod bench;
pub mod cluster;
pub mod engine;
mod env;
pub mod metrics_server;
pub mod pebble;
mod process;
pub mod raw_edge;
pub mod registry;
mod wait;

pub use env::{OPERATOR_NAMESPACE, TestEnv, helm_binary, k8s_bin_dir, node_address, repo_root};
pub use process::{ChildGuard, binary, free_port};
pub use wait::eventually;
