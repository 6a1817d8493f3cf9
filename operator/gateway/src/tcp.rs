//! Raw TCP exposure: the gateway listens on each port of its TCP range that a Workload holds
//! (by `decloud_crds::tcp_ports`, the rule `status.tcpPort` is written by) and carries every
//! connection, byte for byte, through a tunnel to a ready replica of the holder, trying the
//! next replica when one cannot be reached, as for HTTP.
//!
//! The set of ports is re-read from the Workload cache every [`RESYNC`]: a port no Workload
//! holds any more is closed (its listener and its connections), one that changes hands is
//! reopened for the new holder. Only ports inside the range are ever bound. Connections count
//! against the gateway's shared connection cap (over it, a client is just closed: there is no
//! protocol to answer in) and end after the idle timeout without a byte either way.

use std::{
    collections::BTreeMap,
    net::{IpAddr, SocketAddr},
    sync::Arc,
    time::Duration,
};

use decloud_crds::tcp_ports::{TcpPortRange, WorkloadKey};
use tokio::{
    io::{AsyncWriteExt, split},
    net::{TcpListener, TcpStream},
    sync::Semaphore,
    task::{JoinHandle, JoinSet},
};

use crate::activity::{Activity, copy_marking};
use crate::limits::GatewayLimits;
use crate::routes::{Route, Routes};
use crate::seams::TunnelDialer;

/// How often the listened-on ports are brought in line with the assignments.
const RESYNC: Duration = Duration::from_millis(500);

/// Where and how the gateway serves TCP Workloads.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TcpExposure {
    /// The address the ports are bound on.
    pub bind: IpAddr,
    /// The ports Workloads may hold.
    pub range: TcpPortRange,
    /// Ports one namespace may hold at once.
    pub per_namespace: usize,
}

/// Serves TCP exposure until the task is dropped (which closes every port).
pub(crate) async fn serve_tcp(
    tcp: TcpExposure,
    routes: Routes,
    dialer: Arc<dyn TunnelDialer>,
    limits: GatewayLimits,
    slots: Arc<Semaphore>,
) {
    let mut open: BTreeMap<u16, (WorkloadKey, AbortOnDrop)> = BTreeMap::new();
    loop {
        let want = routes.tcp_owners(tcp.range, tcp.per_namespace);
        // Close the ports that changed hands or are free; wait for each listener to be gone,
        // so that a port passing to a new holder can be bound again at once.
        let closing: Vec<u16> = open
            .iter()
            .filter(|(port, (key, _))| want.get(port) != Some(key))
            .map(|(port, _)| *port)
            .collect();
        for port in closing {
            if let Some((_, task)) = open.remove(&port) {
                task.close().await;
            }
        }
        for (port, key) in want {
            if open.contains_key(&port) || !tcp.range.contains(i32::from(port)) {
                continue;
            }
            let addr = SocketAddr::new(tcp.bind, port);
            match TcpListener::bind(addr).await {
                Ok(listener) => {
                    tracing::info!(%addr, workload = %format!("{}/{}", key.0, key.1), "gateway TCP port open");
                    let task = tokio::spawn(accept_loop(
                        listener,
                        key.clone(),
                        routes.clone(),
                        dialer.clone(),
                        limits.clone(),
                        slots.clone(),
                    ));
                    open.insert(port, (key, AbortOnDrop(task)));
                }
                // Retried on the next pass (e.g. the port's previous listener is still closing).
                Err(e) => tracing::warn!(%addr, error = %e, "cannot open gateway TCP port"),
            }
        }
        tokio::time::sleep(RESYNC).await;
    }
}

/// Aborts its task when dropped.
struct AbortOnDrop(JoinHandle<()>);

impl AbortOnDrop {
    /// Aborts the task and waits until it is dropped (its listener closed).
    async fn close(mut self) {
        self.0.abort();
        let _ = (&mut self.0).await;
    }
}

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}

/// Accepts clients of `key`'s port; its connections end with it.
async fn accept_loop(
    listener: TcpListener,
    key: WorkloadKey,
    routes: Routes,
    dialer: Arc<dyn TunnelDialer>,
    limits: GatewayLimits,
    slots: Arc<Semaphore>,
) {
    let mut conns = JoinSet::new();
    loop {
        let accepted = tokio::select! {
            a = listener.accept() => a,
            Some(_) = conns.join_next() => continue,
        };
        let (conn, peer) = match accepted {
            Ok(c) => c,
            Err(e) => {
                tracing::warn!(error = %e, "gateway TCP accept failed");
                tokio::time::sleep(Duration::from_millis(50)).await;
                continue;
            }
        };
        let Ok(slot) = slots.clone().try_acquire_owned() else {
            tracing::debug!(%peer, "gateway at its connection cap; closing a TCP client");
            continue;
        };
        let _ = conn.set_nodelay(true);
        let (key, routes, dialer, limits) =
            (key.clone(), routes.clone(), dialer.clone(), limits.clone());
        conns.spawn(async move {
            let _slot = slot;
            if let Err(e) = carry(conn, &key, &routes, dialer.as_ref(), &limits).await {
                tracing::debug!(%peer, error = %e, "gateway TCP connection ended with an error");
            }
        });
    }
}

/// Carries one client connection to a ready replica of `key`.
async fn carry(
    conn: TcpStream,
    key: &WorkloadKey,
    routes: &Routes,
    dialer: &dyn TunnelDialer,
    limits: &GatewayLimits,
) -> std::io::Result<()> {
    let workload = format!("{}/{}", key.0, key.1);
    let backends = match routes.resolve_tcp(key) {
        Route::Backends { backends, .. } => backends,
        Route::NoReady { .. } | Route::Unknown => {
            tracing::debug!(%workload, "TCP client for a workload with no ready replica; closed");
            return Ok(());
        }
    };
    let mut tunnel = None;
    for backend in &backends {
        match dialer.dial(backend).await {
            Ok(t) => {
                tunnel = Some(t);
                break;
            }
            Err(e) => {
                tracing::warn!(%workload, pod = %backend.pod, error = %e, reason = e.metric_label(), "replica unreachable; trying the next");
            }
        }
    }
    let Some(tunnel) = tunnel else {
        return Ok(());
    };
    let activity = Activity::new();
    let (client_read, mut client_write) = conn.into_split();
    let (tunnel_read, mut tunnel_write) = split(tunnel);
    let up = async {
        let r = copy_marking(client_read, &mut tunnel_write, &activity).await;
        let _ = tunnel_write.shutdown().await;
        r
    };
    let down = async {
        let r = copy_marking(tunnel_read, &mut client_write, &activity).await;
        let _ = client_write.shutdown().await;
        r
    };
    tokio::select! {
        (up, down) = async { tokio::join!(up, down) } => up.and(down),
        () = activity.idle_for(limits.idle_timeout) => {
            tracing::debug!(%workload, "gateway TCP connection idle; closed");
            Ok(())
        }
    }
}

#[cfg(test)]
mod tests;
