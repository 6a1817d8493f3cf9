//! The `decloud-bench` scenarios: measured on the real test environment (etcd,
//! kube-apiserver, the release operator and edge-kubelet binaries, Docker), bounded in count
//! and time, traffic only to 127.0.0.1 and our own containers. Benchmarks are commands, not
//! timed assertions in tests.

pub mod cluster;
pub mod drain;
pub mod failover;
pub mod footprint;
pub mod harness;
pub mod https;
pub mod loadgen;
pub mod procfs;
pub mod pull;
pub mod quantity;
pub mod report;
pub mod scale;
pub mod services;
pub mod sim_edges;
pub mod startup;
pub mod stats;
pub mod tunnel;
pub mod volume;

pub use harness::Opts;
pub use report::{Row, ScenarioReport};
