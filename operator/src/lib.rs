//! DeCloud operator: the virtual-kubelet side of the cluster.
//!
//! Edges dial in over gRPC ([`server`]); each connected edge is a `Provider` and a virtual
//! Node `edge-<provider>` ([`provider`], [`node`]); every pod bound to such a node is relayed
//! to its edge and the edge's reports become the pod's status ([`bridge`]). Heartbeats end in
//! memory ([`liveness`]): the API server sees only transitions and node Lease renewals.
//!
//! The operator is single-active: replicas elect a leader with a `coordination.k8s.io` Lease
//! ([`leader`]) and standbys refuse edges, because sessions live in the leader's memory.
#![forbid(unsafe_code)]

pub mod bridge;
pub mod config;
pub mod context;
pub mod error;
pub mod forbidden;
pub mod fuzzing;
pub mod gateway;
pub mod http;
pub mod join;
pub mod leader;
pub mod liveness;
pub mod logs;
pub mod metrics;
pub mod node;
pub mod provider;
pub mod quantity;
pub mod registry;
pub mod server;
pub mod status;
pub mod tls;
pub mod translate;
pub mod tunnels;
pub mod usage;

pub use config::Config;
pub use error::{Error, Result};

/// The field manager of every write the operator makes (server-side apply).
pub const FIELD_MANAGER: &str = "decloud-operator";

/// Prefix of every virtual node's name: Provider `P` is Node `edge-P`.
pub const NODE_PREFIX: &str = "edge-";

/// The virtual node of a provider.
pub fn node_name(provider: &str) -> String {
    format!("{NODE_PREFIX}{provider}")
}

/// The provider behind a virtual node, if `node` is one.
pub fn provider_of_node(node: &str) -> Option<&str> {
    node.strip_prefix(NODE_PREFIX).filter(|p| !p.is_empty())
}
