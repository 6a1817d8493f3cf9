//! One SPDY/3.1 server connection: a reader task that accepts the client's streams and routes
//! their data, and a writer task that owns the socket's write half and the outbound zlib
//! stream. The application sees each accepted stream as a [`SpdyStream`].
//!
//! Go's spdystream (the API server's side) has no flow control, so none is done here either:
//! a stream whose reader falls behind stalls the reading of the whole connection (TCP then
//! pushes back on the client), bounded by [`STREAM_QUEUE`] frames per stream.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use futures::{SinkExt, StreamExt};
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::sync::{OwnedSemaphorePermit, Semaphore, mpsc};
use tokio::task::JoinHandle;
use tokio_util::codec::{FramedRead, FramedWrite};

use super::frame::{Frame, FrameDecoder, FrameEncoder, FrameError, Headers, goaway, header, rst};

/// Data frames queued per stream towards the application.
const STREAM_QUEUE: usize = 8;
/// Frames queued towards the socket.
const OUT_QUEUE: usize = 64;
/// Largest data frame written (what Go's `io.Copy` reads at once).
pub(crate) const MAX_WRITE: usize = 32 * 1024;
/// How long closing may wait for queued frames to reach the socket.
const CLOSE_GRACE: Duration = Duration::from_secs(5);

/// Bounds of one connection.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Limits {
    /// Streams open at once; more are refused with `RST_STREAM REFUSED_STREAM`.
    pub(crate) max_streams: usize,
    /// With no frame from the client for this long the connection ends.
    pub(crate) idle: Duration,
}

enum Out {
    Frame(Frame),
    Close,
}

/// Writes frames of one stream; clones share the stream.
#[derive(Clone)]
pub(crate) struct StreamWriter {
    id: u32,
    out: mpsc::Sender<Out>,
    _permit: Arc<OwnedSemaphorePermit>,
}

/// The connection is gone.
#[derive(Debug, thiserror::Error)]
#[error("the SPDY connection is closed")]
pub(crate) struct Closed;

impl StreamWriter {
    /// Sends `data` (in frames of at most [`MAX_WRITE`] bytes).
    pub(crate) async fn send(&self, mut data: Bytes) -> Result<(), Closed> {
        while !data.is_empty() {
            let part = data.split_to(data.len().min(MAX_WRITE));
            self.frame(Frame::Data {
                stream_id: self.id,
                fin: false,
                data: part,
            })
            .await?;
        }
        Ok(())
    }

    /// Half-closes the stream (a `FIN`): this side sends nothing more.
    pub(crate) async fn finish(&self) -> Result<(), Closed> {
        self.frame(Frame::Data {
            stream_id: self.id,
            fin: true,
            data: Bytes::new(),
        })
        .await
    }

    /// Ends the stream abnormally (`RST_STREAM CANCEL`, as spdystream's `Reset`).
    pub(crate) async fn reset(&self) -> Result<(), Closed> {
        self.frame(Frame::RstStream {
            stream_id: self.id,
            status: rst::CANCEL,
        })
        .await
    }

    async fn frame(&self, f: Frame) -> Result<(), Closed> {
        self.out.send(Out::Frame(f)).await.map_err(|_| Closed)
    }
}

/// A stream the client opened and this side accepted.
pub(crate) struct SpdyStream {
    /// Its headers.
    pub(crate) headers: Headers,
    /// Data from the client; `None` once the client half-closed or reset it.
    pub(crate) rx: mpsc::Receiver<Bytes>,
    /// Writes to the client.
    pub(crate) tx: StreamWriter,
}

impl SpdyStream {
    /// Stream id.
    pub(crate) fn id(&self) -> u32 {
        self.tx.id
    }

    /// The first value of header `name` (lower-case).
    pub(crate) fn header(&self, name: &str) -> Option<&str> {
        header(&self.headers, name)
    }
}

/// Decides whether a new stream is accepted (replied to) or reset, from its headers.
pub(crate) type Acceptor = fn(&Headers) -> Result<(), String>;

/// A running server connection.
pub(crate) struct Connection {
    /// Streams as the client opens them; ends when the client's side of the connection does.
    pub(crate) incoming: mpsc::Receiver<SpdyStream>,
    out: mpsc::Sender<Out>,
    reader: JoinHandle<()>,
    writer: Option<JoinHandle<()>>,
}

impl Connection {
    /// Serves SPDY on `io` (already upgraded), accepting streams `accept` allows.
    pub(crate) fn start<IO>(io: IO, limits: Limits, accept: Acceptor) -> Self
    where
        IO: AsyncRead + AsyncWrite + Send + Unpin + 'static,
    {
        let (read, write) = tokio::io::split(io);
        let (out, out_rx) = mpsc::channel(OUT_QUEUE);
        let (incoming_tx, incoming) = mpsc::channel(limits.max_streams.max(1));
        let writer = tokio::spawn(write_frames(
            FramedWrite::new(write, FrameEncoder::default()),
            out_rx,
        ));
        let reader = tokio::spawn(read_frames(
            FramedRead::new(read, FrameDecoder::default()),
            out.clone(),
            incoming_tx,
            limits,
            accept,
        ));
        Self {
            incoming,
            out,
            reader,
            writer: Some(writer),
        }
    }

    /// Ends the connection cleanly: `GOAWAY`, then the queued frames are written (for at most
    /// a few seconds) and the socket is shut down.
    pub(crate) async fn close(mut self) {
        let _ = self
            .out
            .send(Out::Frame(Frame::GoAway {
                last_good: 0,
                status: goaway::OK,
            }))
            .await;
        let _ = self.out.send(Out::Close).await;
        if let Some(w) = self.writer.take() {
            let abort = w.abort_handle();
            if tokio::time::timeout(CLOSE_GRACE, w).await.is_err() {
                abort.abort();
            }
        }
    }
}

impl Drop for Connection {
    fn drop(&mut self) {
        self.reader.abort();
        if let Some(w) = self.writer.take() {
            w.abort();
        }
    }
}

async fn write_frames<W: AsyncWrite + Send + Unpin + 'static>(
    mut framed: FramedWrite<W, FrameEncoder>,
    mut rx: mpsc::Receiver<Out>,
) {
    while let Some(out) = rx.recv().await {
        match out {
            Out::Frame(f) => {
                // Feed, and flush only when nothing else is queued: frames batch into writes.
                if let Err(e) = framed.feed(f).await {
                    tracing::debug!(error = %e, "SPDY write failed");
                    return;
                }
                if rx.is_empty() && framed.flush().await.is_err() {
                    return;
                }
            }
            Out::Close => break,
        }
    }
    let _ = framed.flush().await;
    let _ = tokio::io::AsyncWriteExt::shutdown(framed.get_mut()).await;
}

async fn read_frames<R: AsyncRead + Send + Unpin + 'static>(
    mut framed: FramedRead<R, FrameDecoder>,
    out: mpsc::Sender<Out>,
    incoming: mpsc::Sender<SpdyStream>,
    limits: Limits,
    accept: Acceptor,
) {
    let slots = Arc::new(Semaphore::new(limits.max_streams));
    let mut open: HashMap<u32, mpsc::Sender<Bytes>> = HashMap::new();
    let mut last_id = 0u32;
    let send = |f: Frame| {
        let out = out.clone();
        async move { out.send(Out::Frame(f)).await.is_ok() }
    };
    loop {
        let next = match tokio::time::timeout(limits.idle, framed.next()).await {
            Err(_) => {
                tracing::debug!("SPDY connection idle; closing");
                break;
            }
            Ok(None) => break,
            Ok(Some(Err(e))) => {
                protocol_error(&out, &e).await;
                break;
            }
            Ok(Some(Ok(f))) => f,
        };
        match next {
            Frame::SynStream {
                stream_id,
                fin,
                headers,
                ..
            } => {
                if stream_id % 2 == 0 || stream_id <= last_id {
                    protocol_error(&out, &FrameError::Malformed("SYN_STREAM (stream id)")).await;
                    break;
                }
                last_id = stream_id;
                let Ok(permit) = slots.clone().try_acquire_owned() else {
                    tracing::debug!(stream_id, "SPDY stream refused: too many open");
                    let _ = send(Frame::RstStream {
                        stream_id,
                        status: rst::REFUSED_STREAM,
                    })
                    .await;
                    continue;
                };
                if let Err(why) = accept(&headers) {
                    tracing::debug!(stream_id, %why, "SPDY stream rejected");
                    let _ = send(Frame::RstStream {
                        stream_id,
                        status: rst::CANCEL,
                    })
                    .await;
                    continue;
                }
                if !send(Frame::SynReply {
                    stream_id,
                    fin: false,
                    headers: Vec::new(),
                })
                .await
                {
                    break;
                }
                let (data_tx, data_rx) = mpsc::channel(STREAM_QUEUE);
                if !fin {
                    open.insert(stream_id, data_tx);
                }
                let stream = SpdyStream {
                    headers,
                    rx: data_rx,
                    tx: StreamWriter {
                        id: stream_id,
                        out: out.clone(),
                        _permit: Arc::new(permit),
                    },
                };
                if incoming.send(stream).await.is_err() {
                    // Nobody takes streams any more.
                    open.remove(&stream_id);
                    let _ = send(Frame::RstStream {
                        stream_id,
                        status: rst::REFUSED_STREAM,
                    })
                    .await;
                }
            }
            Frame::Data {
                stream_id,
                fin,
                data,
            } => {
                if let Some(tx) = open.get(&stream_id) {
                    if !data.is_empty() {
                        // Bounded by the idle time: a stream nobody reads ends the connection.
                        match tokio::time::timeout(limits.idle, tx.send(data)).await {
                            Ok(Ok(())) => {}
                            Ok(Err(_)) => {
                                open.remove(&stream_id);
                            }
                            Err(_) => break,
                        }
                    }
                    if fin {
                        open.remove(&stream_id);
                    }
                }
            }
            Frame::RstStream { stream_id, .. } => {
                open.remove(&stream_id);
            }
            Frame::Ping { id } => {
                // Echo the client's (odd) pings; ours would be even, and we send none.
                if id % 2 == 1 && !send(Frame::Ping { id }).await {
                    break;
                }
            }
            Frame::GoAway { .. } => break,
            Frame::Headers { stream_id, fin, .. } => {
                if fin {
                    open.remove(&stream_id);
                }
            }
            Frame::SynReply { .. }
            | Frame::Settings { .. }
            | Frame::WindowUpdate { .. }
            | Frame::Unknown { .. } => {}
        }
    }
    // Dropping the senders ends every stream's data, and `incoming`.
}

async fn protocol_error(out: &mpsc::Sender<Out>, e: &FrameError) {
    tracing::info!(error = %e, "SPDY protocol error; closing the connection");
    let _ = out
        .send(Out::Frame(Frame::GoAway {
            last_good: 0,
            status: goaway::PROTOCOL_ERROR,
        }))
        .await;
    let _ = out.send(Out::Close).await;
}
