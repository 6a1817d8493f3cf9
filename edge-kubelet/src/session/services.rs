//! The service proxy: containers' connections to service addresses, carried to the operator.
//!
//! A container connecting to a service address (`decloud_crds::services::SERVICE_CIDR`, the
//! names in its `/etc/hosts`) is redirected by the edge's `nat` rule to this listener on the
//! bridge's gateway address (`host::with_service_redirect`). The proxy reads where the
//! connection was meant to go (`SO_ORIGINAL_DST`), tells which pod it came from by the
//! container's address (the edge's own record, [`PodSupervisor::pod_at`]), and opens a
//! `Tunnel` on the session's connection whose first frame is `ServiceOpen`. The operator
//! answers with an empty data frame once a ready replica is connected (it checks the source
//! pod is bound here and may reach the service) or with `TunnelClose{error}`; the connection
//! is then spliced or closed at once.

use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use parking_lot::Mutex;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;

use decloud_crds::services::is_service_ip;
use decloud_proto as pb;
use pb::tunnel_frame::Kind as Frame;

use super::tunnel::{Tunnels, splice};
use crate::pod::PodSupervisor;

/// Service connections one pod may have open at once through this edge.
pub(crate) const MAX_SERVICE_CONNECTIONS_PER_POD: usize = 64;
/// How long the operator has to connect a service connection (it tries replicas in turn).
const OPEN_WAIT: Duration = Duration::from_secs(10);
/// Frames queued towards the operator per connection.
const FRAME_QUEUE: usize = 32;

/// The live session's tunnels, for connections that arrive between sessions too (they are
/// refused while there is none).
#[derive(Default)]
pub(crate) struct ServiceLink {
    current: Mutex<Option<(u64, Tunnels)>>,
    next: std::sync::atomic::AtomicU64,
    per_pod: Mutex<HashMap<String, usize>>,
}

/// Detaches the session's tunnels from the link when the session ends.
pub(crate) struct Attached {
    link: Arc<ServiceLink>,
    id: u64,
}

impl Drop for Attached {
    fn drop(&mut self) {
        let mut cur = self.link.current.lock();
        if cur.as_ref().is_some_and(|(id, _)| *id == self.id) {
            *cur = None;
        }
    }
}

impl std::fmt::Debug for ServiceLink {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ServiceLink")
            .field("connected", &self.current.lock().is_some())
            .finish()
    }
}

impl ServiceLink {
    /// Makes `tunnels` (a session just welcomed) the way out until the returned guard drops.
    pub(crate) fn attach(self: &Arc<Self>, tunnels: Tunnels) -> Attached {
        let id = self.next.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        *self.current.lock() = Some((id, tunnels));
        Attached {
            link: self.clone(),
            id,
        }
    }

    fn tunnels(&self) -> Option<Tunnels> {
        self.current.lock().as_ref().map(|(_, t)| t.clone())
    }

    /// One of `pod`'s [`MAX_SERVICE_CONNECTIONS_PER_POD`] slots.
    fn pod_slot(self: &Arc<Self>, pod: &str) -> Option<PodSlot> {
        let mut m = self.per_pod.lock();
        let n = m.entry(pod.to_string()).or_default();
        if *n >= MAX_SERVICE_CONNECTIONS_PER_POD {
            return None;
        }
        *n += 1;
        Some(PodSlot {
            link: self.clone(),
            pod: pod.to_string(),
        })
    }
}

struct PodSlot {
    link: Arc<ServiceLink>,
    pod: String,
}

impl Drop for PodSlot {
    fn drop(&mut self) {
        let mut m = self.link.per_pod.lock();
        if let Some(n) = m.get_mut(&self.pod) {
            *n = n.saturating_sub(1);
            if *n == 0 {
                m.remove(&self.pod);
            }
        }
    }
}

/// Accepts redirected container connections on `listener` until the process ends.
pub(crate) async fn serve(
    listener: Arc<TcpListener>,
    link: Arc<ServiceLink>,
    pods: Arc<PodSupervisor>,
) {
    loop {
        let (conn, peer) = match listener.accept().await {
            Ok(c) => c,
            Err(e) => {
                tracing::warn!(error = %e, "service proxy: accept failed");
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            }
        };
        let (link, pods) = (link.clone(), pods.clone());
        tokio::spawn(async move {
            if let Err(why) = carry(conn, peer, link, pods).await {
                tracing::info!(%peer, %why, "service connection refused");
            }
        });
    }
}

/// Where a redirected connection was meant to go.
fn original_destination(conn: &TcpStream) -> Option<SocketAddr> {
    socket2::SockRef::from(conn)
        .original_dst_v4()
        .ok()?
        .as_socket()
}

async fn carry(
    conn: TcpStream,
    peer: SocketAddr,
    link: Arc<ServiceLink>,
    pods: Arc<PodSupervisor>,
) -> Result<(), String> {
    let dst = original_destination(&conn).ok_or("not a redirected connection")?;
    let IpAddr::V4(service_ip) = dst.ip() else {
        return Err("not an IPv4 service address".into());
    };
    if !is_service_ip(service_ip) {
        return Err(format!("{dst} is not a service address"));
    }
    let source = pods
        .pod_at(&peer.ip().to_string())
        .ok_or("no pod of this edge has this address")?;
    let _pod_slot = link.pod_slot(&source).ok_or_else(|| {
        format!("pod {source} has {MAX_SERVICE_CONNECTIONS_PER_POD} service connections open")
    })?;
    let tunnels = link.tunnels().ok_or("no session with the operator")?;
    // Shares the edge's tunnel cap with gateway tunnels.
    let _slot = tunnels
        .try_slot()
        .ok_or("this edge carries its maximum of tunnels")?;
    let _ = conn.set_nodelay(true);
    let (tx, rx) = mpsc::channel(FRAME_QUEUE);
    let _ = tx
        .send(pb::TunnelFrame {
            kind: Some(Frame::ServiceOpen(pb::ServiceOpen {
                source_pod_uid: source.clone(),
                service_ip: service_ip.to_string(),
                port: u32::from(dst.port()),
            })),
        })
        .await;
    let opened = tokio::time::timeout(OPEN_WAIT, async {
        let mut inbound = (tunnels.opener())(ReceiverStream::new(rx))
            .await
            .map_err(|s| format!("opening the Tunnel RPC: {}", s.message()))?;
        match inbound.message().await {
            Ok(Some(pb::TunnelFrame {
                kind: Some(Frame::Data(first)),
            })) => Ok((inbound, first)),
            Ok(Some(pb::TunnelFrame {
                kind: Some(Frame::Close(close)),
            })) => Err(format!("the operator refused: {}", close.error)),
            Ok(_) => Err("the operator ended the connection".to_string()),
            Err(s) => Err(format!("the operator refused: {}", s.message())),
        }
    })
    .await
    .map_err(|_| format!("{dst} not connected within {OPEN_WAIT:?}"))?;
    let (inbound, first) = opened?;
    tracing::debug!(pod_uid = %source, %dst, "service connection open");
    carry_first(&conn, first).await?;
    splice(conn, inbound, tx).await
}

/// Bytes the operator sent along with its answer (none today), written before the splice.
async fn carry_first(conn: &TcpStream, first: Bytes) -> Result<(), String> {
    let mut rest = &first[..];
    while !rest.is_empty() {
        conn.writable().await.map_err(|e| e.to_string())?;
        match conn.try_write(rest) {
            Ok(n) => rest = &rest[n..],
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {}
            Err(e) => return Err(e.to_string()),
        }
    }
    Ok(())
}
