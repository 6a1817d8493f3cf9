//! One kubelet API port per virtual node. The API server reaches a node's kubelet at its
//! address and `daemonEndpoints.kubeletEndpoint.Port`; every virtual node shares the
//! operator's address, so a port of its own is what tells node-level requests (`/pods`,
//! `/stats/summary`, `/metrics/resource`) which node they are about. Ports are taken from the
//! system (ephemeral) when a node's status is first written, and given back with the node.

use std::collections::HashMap;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::sync::{Arc, OnceLock};

use parking_lot::Mutex;
use tokio::net::TcpListener;
use tokio::task::JoinHandle;
use tracing::{info, warn};

/// Most nodes with a port of their own; more share the operator's kubelet port (where
/// node-level reads answer 404).
pub(crate) const MAX_NODE_PORTS: usize = 10_000;

/// Starts serving one node's kubelet API on a listener.
pub(crate) type NodeServer = Arc<dyn Fn(String, TcpListener) -> JoinHandle<()> + Send + Sync>;

/// The nodes' own kubelet API ports.
#[derive(Default)]
pub(crate) struct NodePorts {
    server: OnceLock<(IpAddr, NodeServer)>,
    ports: Mutex<HashMap<String, (u16, JoinHandle<()>)>>,
}

impl std::fmt::Debug for NodePorts {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("NodePorts")
            .field("nodes", &self.ports.lock().len())
            .finish()
    }
}

impl NodePorts {
    /// From now on, nodes get ports on `addr`, served by `server` (set once, by the kubelet
    /// API's start).
    pub(crate) fn serve_with(&self, addr: IpAddr, server: NodeServer) {
        let _ = self.server.set((addr, server));
    }

    /// Node `node`'s own port, opened now if it has none yet. `None` before the kubelet API
    /// started, past [`MAX_NODE_PORTS`], or when no port can be bound. Must be called within
    /// the runtime; never blocks.
    pub(crate) fn port_for(&self, node: &str) -> Option<u16> {
        let (addr, server) = self.server.get()?;
        let mut ports = self.ports.lock();
        if let Some((port, task)) = ports.get(node)
            && !task.is_finished()
        {
            return Some(*port);
        }
        if ports.len() >= MAX_NODE_PORTS && !ports.contains_key(node) {
            return None;
        }
        let listener = std::net::TcpListener::bind(SocketAddr::new(*addr, 0))
            .or_else(|_| std::net::TcpListener::bind((Ipv4Addr::UNSPECIFIED, 0)))
            .and_then(|l| l.set_nonblocking(true).map(|()| l))
            .and_then(TcpListener::from_std);
        let listener = match listener {
            Ok(l) => l,
            Err(e) => {
                warn!(%node, error = %e, "cannot open a kubelet API port for the node");
                return None;
            }
        };
        let port = listener.local_addr().ok()?.port();
        info!(%node, port, "kubelet API port of the node");
        let task = server(node.to_string(), listener);
        if let Some((_, old)) = ports.insert(node.to_string(), (port, task)) {
            old.abort();
        }
        Some(port)
    }

    /// Closes node `node`'s port (the node is gone).
    pub(crate) fn release(&self, node: &str) {
        if let Some((_, task)) = self.ports.lock().remove(node) {
            task.abort();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn each_node_gets_its_own_port_and_gives_it_back() {
        let p = NodePorts::default();
        assert_eq!(p.port_for("edge-a"), None, "not before the API serves");
        let served = Arc::new(Mutex::new(Vec::new()));
        let log = served.clone();
        p.serve_with(
            IpAddr::from([127, 0, 0, 1]),
            Arc::new(move |node, _listener| {
                log.lock().push(node);
                tokio::spawn(std::future::pending())
            }),
        );
        let a = p.port_for("edge-a").unwrap();
        let b = p.port_for("edge-b").unwrap();
        assert_ne!(a, b);
        assert_eq!(p.port_for("edge-a"), Some(a), "stable while served");
        assert_eq!(*served.lock(), ["edge-a", "edge-b"]);
        p.release("edge-a");
        assert_ne!(p.port_for("edge-a"), None);
        assert_eq!(served.lock().len(), 3);
    }
}
