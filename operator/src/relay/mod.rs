//! The relays: byte streams, log streams and exec/attach sessions to containers on edges,
//! carried over the edges' own outbound connections. One kind of table of requests waiting on
//! edges serves them all; the public gateway and the kubelet API are wired to them in
//! [`endpoints`].

mod endpoints;
mod exec;
mod logs;
mod node_ports;
mod pending;
mod service_state;
mod services;
mod tunnel_rpc;
mod tunnels;

pub(crate) use endpoints::{GatewayCertificates, GatewayConfig, run as run_endpoints};
pub(crate) use logs::on_chunk as on_log_chunk;
pub(crate) use node_ports::NodePorts;
pub(crate) use pending::{PendingExecs, PendingLogs, PendingTunnels};
pub(crate) use service_state::ServiceState;
pub(crate) use tunnel_rpc::accept as accept_tunnel;
pub(crate) use tunnels::TunnelResponse;
