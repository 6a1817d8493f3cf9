//! The tunnel endpoint: carries one gateway connection to one container port.
//!
//! On `OpenTunnel` the edge connects to `pod_ip:port` locally, then opens a `Tunnel` RPC on the
//! session's own connection (the edge always dials out): `TunnelOpen{tunnel_id}`, then an
//! empty data frame meaning "connected", then bytes both ways until either side closes. If
//! the port cannot be reached it sends `TunnelOpen` and `TunnelClose{error}` at once, so the
//! gateway tries another replica without waiting.

use std::sync::Arc;
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use futures::future::BoxFuture;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::sync::{Semaphore, mpsc};
use tokio_stream::wrappers::ReceiverStream;
use tonic::{Status, Streaming};

use decloud_proto as pb;
use pb::tunnel_frame::Kind as Frame;

use crate::pod::PodSupervisor;

/// Frames queued towards the operator per tunnel.
const FRAME_QUEUE: usize = 32;
/// Below this much spare room the read buffer is replaced rather than read into.
const MIN_READ: usize = 16 * 1024;
/// How long connecting to a container port may take.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(2);

/// The edge → operator frames of one tunnel.
pub(crate) type TunnelRequest = ReceiverStream<pb::TunnelFrame>;

/// Opens a `Tunnel` RPC to the operator on the session's connection, with the session's
/// identity; returns the operator → edge frames.
pub(crate) type TunnelOpener = Arc<
    dyn Fn(TunnelRequest) -> BoxFuture<'static, Result<Streaming<pb::TunnelFrame>, Status>>
        + Send
        + Sync,
>;

fn frame(kind: Frame) -> pb::TunnelFrame {
    pb::TunnelFrame { kind: Some(kind) }
}

/// Tunnels this edge carries at once, whatever the operator asks: beyond it an `OpenTunnel` is
/// answered with a refusal (the gateway tries another replica), and nothing is connected.
pub(crate) const MAX_TUNNELS: usize = 256;

/// The tunnel endpoint of one session: opens tunnels on its connection, at most
/// [`MAX_TUNNELS`] at once.
#[derive(Clone)]
pub(crate) struct Tunnels {
    opener: TunnelOpener,
    slots: Arc<Semaphore>,
}

impl Tunnels {
    /// Tunnels opened with `opener`.
    pub(crate) fn new(opener: TunnelOpener) -> Self {
        Self {
            opener,
            slots: Arc::new(Semaphore::new(MAX_TUNNELS)),
        }
    }

    /// Handles an `OpenTunnel` request in the background. Only pods this edge runs are
    /// reachable.
    pub(crate) fn open(&self, req: pb::OpenTunnel, pods: &Arc<PodSupervisor>) {
        let target = pods.pod_ip(&req.pod_uid);
        let opener = self.opener.clone();
        let slot = self.slots.clone().try_acquire_owned().ok();
        tokio::spawn(async move {
            let id = req.tunnel_id;
            let Some(_slot) = slot else {
                tracing::warn!(
                    tunnel = id,
                    "refusing a tunnel: {MAX_TUNNELS} are open already"
                );
                refuse(
                    id,
                    format!("this edge carries its maximum of {MAX_TUNNELS} tunnels"),
                    opener,
                )
                .await;
                return;
            };
            if let Err(e) = run(req, target, opener).await {
                tracing::debug!(tunnel = id, error = %e, "tunnel ended with an error");
            }
        });
    }
}

impl Tunnels {
    /// How this session opens `Tunnel` RPCs.
    pub(crate) fn opener(&self) -> TunnelOpener {
        self.opener.clone()
    }

    /// One of the [`MAX_TUNNELS`] slots, if one is free; held as long as the tunnel lives.
    pub(crate) fn try_slot(&self) -> Option<tokio::sync::OwnedSemaphorePermit> {
        self.slots.clone().try_acquire_owned().ok()
    }
}

/// Answers tunnel `id` with `TunnelOpen` and `TunnelClose{error}` at once.
async fn refuse(id: u64, error: String, opener: TunnelOpener) {
    let (tx, rx) = mpsc::channel(2);
    let _ = tx
        .send(frame(Frame::Open(pb::TunnelOpen { tunnel_id: id })))
        .await;
    let _ = tx
        .send(frame(Frame::Close(pb::TunnelClose { error })))
        .await;
    drop(tx);
    // Deliver the refusal; the operator ends the RPC at once.
    let _ = opener(ReceiverStream::new(rx)).await;
}

async fn connect(target: Option<String>, port: u32) -> Result<TcpStream, String> {
    let ip = target.ok_or("the pod is not running on this edge or has no address yet")?;
    let port = u16::try_from(port).map_err(|_| format!("invalid port {port}"))?;
    let conn = tokio::time::timeout(CONNECT_TIMEOUT, TcpStream::connect((ip.as_str(), port)))
        .await
        .map_err(|_| format!("connecting to container port {port} timed out"))?
        .map_err(|e| format!("connecting to container port {port}: {e}"))?;
    let _ = conn.set_nodelay(true);
    Ok(conn)
}

async fn run(
    req: pb::OpenTunnel,
    target: Option<String>,
    opener: TunnelOpener,
) -> Result<(), String> {
    let id = req.tunnel_id;
    let conn = match connect(target, req.port).await {
        Ok(c) => c,
        Err(error) => {
            tracing::info!(tunnel = id, pod_uid = %req.pod_uid, port = req.port, %error, "tunnel refused");
            refuse(id, error, opener).await;
            return Ok(());
        }
    };
    let (tx, rx) = mpsc::channel(FRAME_QUEUE);
    let _ = tx
        .send(frame(Frame::Open(pb::TunnelOpen { tunnel_id: id })))
        .await;
    let _ = tx.send(frame(Frame::Data(Bytes::new()))).await;
    let inbound = opener(ReceiverStream::new(rx))
        .await
        .map_err(|s| format!("opening the Tunnel RPC: {}", s.message()))?;
    tracing::debug!(tunnel = id, pod_uid = %req.pod_uid, port = req.port, "tunnel open");
    splice(conn, inbound, tx).await
}

/// Copies container → operator and operator → container until both directions are closed,
/// or either fails.
pub(crate) async fn splice(
    conn: TcpStream,
    mut inbound: Streaming<pb::TunnelFrame>,
    tx: mpsc::Sender<pb::TunnelFrame>,
) -> Result<(), String> {
    let (mut from_container, mut to_container) = conn.into_split();
    let up = async {
        let mut buf = BytesMut::with_capacity(pb::MAX_TUNNEL_FRAME);
        loop {
            // Read into spare capacity (no zeroing); the bytes read leave as one frame and
            // the rest of the allocation serves the next reads.
            if buf.capacity() < MIN_READ {
                buf = BytesMut::with_capacity(pb::MAX_TUNNEL_FRAME);
            }
            match from_container.read_buf(&mut buf).await {
                Ok(0) => {
                    let _ = tx
                        .send(frame(Frame::Close(pb::TunnelClose::default())))
                        .await;
                    return Ok(());
                }
                Ok(_) => {
                    let data = buf.split().freeze();
                    if tx.send(frame(Frame::Data(data))).await.is_err() {
                        return Err("the operator closed the tunnel".to_string());
                    }
                }
                Err(e) => {
                    let error = format!("reading from the container: {e}");
                    let _ = tx
                        .send(frame(Frame::Close(pb::TunnelClose {
                            error: error.clone(),
                        })))
                        .await;
                    return Err(error);
                }
            }
        }
    };
    let down = async {
        loop {
            match inbound.message().await {
                Ok(Some(pb::TunnelFrame {
                    kind: Some(Frame::Data(data)),
                })) => {
                    if let Err(e) = to_container.write_all(&data).await {
                        return Err(format!("writing to the container: {e}"));
                    }
                }
                Ok(Some(pb::TunnelFrame {
                    kind: Some(Frame::Close(close)),
                })) => {
                    if !close.error.is_empty() {
                        return Err(format!("the operator closed the tunnel: {}", close.error));
                    }
                    // Half-close; keep reading until the operator ends the RPC, since
                    // dropping the response stream first would reset the HTTP/2 stream and
                    // lose container bytes not yet sent.
                    let _ = to_container.shutdown().await;
                }
                Ok(Some(_)) => {}
                Ok(None) => {
                    let _ = to_container.shutdown().await;
                    return Ok(());
                }
                Err(status) => return Err(format!("tunnel stream: {}", status.message())),
            }
        }
    };
    // Either direction failing ends both; a clean close of one waits for the other.
    tokio::try_join!(up, down).map(|_| ())
}
