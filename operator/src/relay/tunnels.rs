//! Gateway tunnels through edges: the operator's [`TunnelDialer`].
//!
//! To reach a container port the broker sends `OpenTunnel{tunnel_id, pod_uid, port}` on the
//! provider's live session. The edge connects to the port locally and opens a `Tunnel` RPC on
//! its own connection (edges always dial out): first `TunnelOpen{tunnel_id}`, then data (an
//! empty data frame says "connected" before any byte flows) or, if the port could not be
//! reached, a `TunnelClose{error}`. The RPC's two streams then become one byte stream
//! ([`GrpcTunnel`]) that the gateway splices with its client.

use std::io;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context as TaskContext, Poll, ready};
use std::time::{Duration, Instant};

use bytes::Bytes;
use decloud_gateway::{Backend, DialError, TunnelDialer, TunnelIo};
use decloud_proto as pb;
use decloud_proto::MAX_TUNNEL_FRAME;
use futures::future::BoxFuture;
use futures::{FutureExt, Stream};
use pb::tunnel_frame::Kind as Frame;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::sync::{mpsc, oneshot};
use tokio_stream::wrappers::ReceiverStream;
use tokio_util::io::StreamReader;
use tokio_util::sync::PollSender;
use tonic::{Response, Status, Streaming};

use super::pending::{Opened, Unclaimed};
use crate::context::Context;
use crate::slots::Slot;

/// How long an edge has to open a tunnel it was asked for.
pub(crate) const OPEN_TIMEOUT: Duration = Duration::from_secs(3);
/// Frames queued towards the edge per tunnel (at most `FRAME_QUEUE × MAX_TUNNEL_FRAME` bytes).
pub(super) const FRAME_QUEUE: usize = 32;

/// The operator → edge half of a `Tunnel` RPC.
pub(crate) type TunnelResponse = ReceiverStream<Result<pb::TunnelFrame, Status>>;

/// Forgets a pending tunnel when its dial ends, whichever way.
struct ForgetOnDrop {
    ctx: Arc<Context>,
    id: u64,
}

impl Drop for ForgetOnDrop {
    fn drop(&mut self) {
        self.ctx.tunnels.forget(self.id);
    }
}

/// Opens tunnels through the edges' sessions in this (leader) replica's registry.
#[derive(Clone)]
pub(crate) struct TunnelBroker {
    ctx: Arc<Context>,
}

impl TunnelBroker {
    /// A broker over `ctx`'s sessions.
    pub(crate) fn new(ctx: Arc<Context>) -> Self {
        Self { ctx }
    }
}

impl TunnelDialer for TunnelBroker {
    fn dial(&self, backend: &Backend) -> BoxFuture<'static, Result<Box<dyn TunnelIo>, DialError>> {
        let ctx = self.ctx.clone();
        let backend = backend.clone();
        async move {
            let started = Instant::now();
            let provider = backend.provider.clone();
            // Counted from the ask until the tunnel closes: one edge carries at most its share.
            let Some(slot) = ctx.tunnel_slots.acquire(&provider) else {
                ctx.metrics.tunnels_refused.inc();
                ctx.metrics.tunnel_dialed("busy");
                return Err(DialError::Busy(provider));
            };
            let (reply, rx) = oneshot::channel();
            let id = ctx.tunnels.register(&provider, reply);
            let _forget = ForgetOnDrop {
                ctx: ctx.clone(),
                id,
            };
            let asked = ctx.registry.with_session(&provider, |s| {
                s.open_tunnel(id, &backend.pod_uid, u32::from(backend.port))
            });
            let result = match asked {
                None => Err(DialError::NotConnected(provider.clone())),
                Some(false) => {
                    ctx.metrics.tunnels_refused.inc();
                    Err(DialError::Busy(provider.clone()))
                }
                Some(true) => match tokio::time::timeout(OPEN_TIMEOUT, rx).await {
                    Ok(Ok(opened)) => opened.map(|io| {
                        Box::new(Slotted { io, _slot: slot }) as Box<dyn TunnelIo>
                    }),
                    Ok(Err(_)) => Err(DialError::NotConnected(provider.clone())),
                    Err(_) => Err(DialError::Timeout(provider.clone())),
                },
            };
            match &result {
                Ok(_) => {
                    ctx.metrics
                        .tunnel_open_latency
                        .observe(started.elapsed().as_secs_f64());
                    ctx.metrics.tunnel_dialed("ok");
                }
                Err(e) => {
                    ctx.metrics.tunnel_dialed(e.metric_label());
                    tracing::debug!(tunnel = id, pod = %backend.pod, %provider, error = %e, "tunnel not opened");
                }
            }
            result
        }
        .boxed()
    }
}

/// An open tunnel holding its edge's tunnel slot until it is dropped.
struct Slotted {
    io: Box<dyn TunnelIo>,
    _slot: Slot<String>,
}

impl AsyncRead for Slotted {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut TaskContext<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        Pin::new(&mut self.io).poll_read(cx, buf)
    }
}

impl AsyncWrite for Slotted {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut TaskContext<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.io).poll_write(cx, buf)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut TaskContext<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.io).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut TaskContext<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.io).poll_shutdown(cx)
    }
}

fn frame(kind: Frame) -> pb::TunnelFrame {
    pb::TunnelFrame { kind: Some(kind) }
}

/// Serves a gateway `Tunnel` RPC of `provider` (already authenticated) whose first frame was
/// `open`: matches it to the dial waiting for it and hands that dial the byte stream, or the
/// edge's refusal.
pub(crate) async fn accept_open(
    ctx: &Context,
    provider: &str,
    open: pb::TunnelOpen,
    mut inbound: Streaming<pb::TunnelFrame>,
) -> Result<Response<TunnelResponse>, Status> {
    let id = open.tunnel_id;
    let reply = ctx.tunnels.claim(id, provider).map_err(|e| match e {
        Unclaimed::Unknown => Status::not_found(format!(
            "tunnel {id} is not awaited (it timed out or was never asked for)"
        )),
        Unclaimed::NotAskedOf => Status::permission_denied(format!(
            "tunnel {id} was not asked of provider {provider:?}"
        )),
    })?;
    let (tx, rx) = mpsc::channel(FRAME_QUEUE);
    // The edge follows TunnelOpen with data once connected, or with its refusal.
    let second = tokio::time::timeout(OPEN_TIMEOUT, inbound.message()).await;
    let opened: Opened = match second {
        Ok(Ok(Some(pb::TunnelFrame {
            kind: Some(Frame::Data(first)),
        }))) => Ok(Box::new(GrpcTunnel::new(inbound, first, tx))),
        Ok(Ok(Some(pb::TunnelFrame {
            kind: Some(Frame::Close(close)),
        }))) => Err(DialError::Refused(if close.error.is_empty() {
            "the edge closed the tunnel at once".into()
        } else {
            close.error
        })),
        Ok(Ok(_)) => Err(DialError::Refused(
            "the edge ended the tunnel before it was open".into(),
        )),
        Ok(Err(status)) => Err(DialError::Refused(format!(
            "tunnel stream failed: {}",
            status.message()
        ))),
        Err(_) => Err(DialError::Timeout(provider.to_string())),
    };
    // If the dial gave up meanwhile, the tunnel is dropped here and the edge sees it end.
    let _ = reply.send(opened);
    Ok(Response::new(ReceiverStream::new(rx)))
}

// === impl GrpcTunnel ===

/// One `Tunnel` RPC as a byte stream: reads the edge's data frames, writes data frames back
/// (at most [`MAX_TUNNEL_FRAME`] bytes each), and sends `TunnelClose` on shutdown. Dropping it ends
/// the RPC.
pub(crate) struct GrpcTunnel {
    reader: StreamReader<InboundBytes, Bytes>,
    writer: FrameWriter,
}

impl GrpcTunnel {
    /// A tunnel over `inbound` (edge → operator, `first` already read from it) and `tx` (the
    /// RPC's response stream).
    pub(crate) fn new(
        inbound: Streaming<pb::TunnelFrame>,
        first: Bytes,
        tx: mpsc::Sender<Result<pb::TunnelFrame, Status>>,
    ) -> Self {
        Self {
            reader: StreamReader::new(InboundBytes {
                inbound: Some(inbound),
                first: (!first.is_empty()).then_some(first),
            }),
            writer: FrameWriter {
                tx: PollSender::new(tx),
                closed: false,
            },
        }
    }
}

impl AsyncRead for GrpcTunnel {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut TaskContext<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        Pin::new(&mut self.reader).poll_read(cx, buf)
    }
}

impl AsyncWrite for GrpcTunnel {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut TaskContext<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        self.writer.poll_write(cx, buf)
    }

    fn poll_flush(self: Pin<&mut Self>, _cx: &mut TaskContext<'_>) -> Poll<io::Result<()>> {
        // Every write is a frame already queued to the RPC.
        Poll::Ready(Ok(()))
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut TaskContext<'_>) -> Poll<io::Result<()>> {
        self.writer.poll_shutdown(cx)
    }
}

/// The edge's frames as bytes: data until `TunnelClose` (an error there is an I/O error).
struct InboundBytes {
    inbound: Option<Streaming<pb::TunnelFrame>>,
    first: Option<Bytes>,
}

impl Stream for InboundBytes {
    type Item = io::Result<Bytes>;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut TaskContext<'_>) -> Poll<Option<Self::Item>> {
        if let Some(first) = self.first.take() {
            return Poll::Ready(Some(Ok(first)));
        }
        loop {
            let Some(inbound) = self.inbound.as_mut() else {
                return Poll::Ready(None);
            };
            let item = ready!(Pin::new(inbound).poll_next(cx));
            let out = match item {
                None => None,
                Some(Err(status)) => Some(Err(io::Error::new(
                    io::ErrorKind::ConnectionReset,
                    format!("tunnel stream failed: {}", status.message()),
                ))),
                Some(Ok(pb::TunnelFrame {
                    kind: Some(Frame::Data(data)),
                })) => {
                    if data.is_empty() {
                        continue;
                    }
                    return Poll::Ready(Some(Ok(data)));
                }
                Some(Ok(pb::TunnelFrame {
                    kind: Some(Frame::Close(close)),
                })) => (!close.error.is_empty()).then(|| {
                    Err(io::Error::new(
                        io::ErrorKind::ConnectionReset,
                        format!("edge closed the tunnel: {}", close.error),
                    ))
                }),
                Some(Ok(_)) => continue,
            };
            // Closed, cleanly or not: stop reading (the RPC itself ends when the tunnel drops).
            self.inbound = None;
            return Poll::Ready(out);
        }
    }
}

/// Writes data frames to the RPC's response stream.
struct FrameWriter {
    tx: PollSender<Result<pb::TunnelFrame, Status>>,
    closed: bool,
}

fn broken() -> io::Error {
    io::Error::new(io::ErrorKind::BrokenPipe, "the tunnel to the edge is gone")
}

impl FrameWriter {
    fn poll_write(&mut self, cx: &mut TaskContext<'_>, buf: &[u8]) -> Poll<io::Result<usize>> {
        if self.closed {
            return Poll::Ready(Err(broken()));
        }
        if buf.is_empty() {
            return Poll::Ready(Ok(0));
        }
        ready!(self.tx.poll_reserve(cx)).map_err(|_| broken())?;
        let n = buf.len().min(MAX_TUNNEL_FRAME);
        self.tx
            .send_item(Ok(frame(Frame::Data(Bytes::copy_from_slice(&buf[..n])))))
            .map_err(|_| broken())?;
        Poll::Ready(Ok(n))
    }

    /// Sends `TunnelClose` (half-close: the edge shuts the container socket's write side) but
    /// keeps the response stream open, since ending it would also end the edge's direction.
    fn poll_shutdown(&mut self, cx: &mut TaskContext<'_>) -> Poll<io::Result<()>> {
        if self.closed {
            return Poll::Ready(Ok(()));
        }
        ready!(self.tx.poll_reserve(cx)).map_err(|_| broken())?;
        self.tx
            .send_item(Ok(frame(Frame::Close(pb::TunnelClose::default()))))
            .map_err(|_| broken())?;
        self.closed = true;
        Poll::Ready(Ok(()))
    }
}

#[cfg(test)]
mod tests;
