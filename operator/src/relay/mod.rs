//! The relays: byte streams and log streams to containers on edges, carried over the edges' own
//! outbound connections. One table of requests waiting on edges serves both; the public
//! gateway and the kubelet API are wired to them in [`endpoints`].

mod endpoints;
mod logs;
mod node_ports;
mod pending;
mod tunnels;

pub(crate) use endpoints::{GatewayConfig, run as run_endpoints};
pub(crate) use logs::on_chunk as on_log_chunk;
pub(crate) use node_ports::NodePorts;
pub(crate) use pending::{PendingLogs, PendingTunnels};
pub(crate) use tunnels::{TunnelResponse, accept as accept_tunnel};
