//! A small WebSocket (RFC 6455) server, for the `channel.k8s.io` protocols a kubelet also
//! accepts straight from a client for exec, attach and port-forward (the API server itself
//! speaks SPDY to kubelets; see [`super::spdy`]). No WebSocket crate is in the dependency set,
//! and the subset needed is small: one server side, messages in, messages out, ping/pong,
//! close.
//!
//! Bounded like the SPDY side: a frame larger than [`MAX_FRAME`] or a message (its fragments
//! together) larger than [`MAX_MESSAGE`] ends the connection (close code 1009), unmasked
//! client frames are a protocol error (1002), and a silent connection ends after its idle time.

use std::time::Duration;

use base64::Engine as _;
use bytes::{Buf, BufMut, Bytes, BytesMut};
use futures::{SinkExt, StreamExt};
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::sync::mpsc;
use tokio::task::JoinHandle;
use tokio_util::codec::{Decoder, Encoder, FramedRead, FramedWrite};

/// Largest frame payload accepted.
pub(crate) const MAX_FRAME: usize = 1024 * 1024;
/// Largest message (fragments together) accepted.
pub(crate) const MAX_MESSAGE: usize = 1024 * 1024;
/// Messages queued towards the application and towards the socket.
const QUEUE: usize = 32;

const OP_CONTINUATION: u8 = 0;
const OP_TEXT: u8 = 1;
const OP_BINARY: u8 = 2;
const OP_CLOSE: u8 = 8;
const OP_PING: u8 = 9;
const OP_PONG: u8 = 10;

/// `Sec-WebSocket-Accept` for a client's `Sec-WebSocket-Key`.
pub(crate) fn accept_key(key: &str) -> String {
    let mut input = key.trim().as_bytes().to_vec();
    input.extend_from_slice(b"258EAFA5-E914-47DA-95CA-C5AB0DC85B11");
    let digest = ring::digest::digest(&ring::digest::SHA1_FOR_LEGACY_USE_ONLY, &input);
    base64::engine::general_purpose::STANDARD.encode(digest.as_ref())
}

/// One frame.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct WsFrame {
    /// Last fragment of its message.
    pub(crate) fin: bool,
    /// Opcode.
    pub(crate) opcode: u8,
    /// Payload (unmasked).
    pub(crate) payload: Bytes,
}

/// Why bytes are not an acceptable frame; each maps to a close code.
#[derive(Debug, thiserror::Error)]
pub(crate) enum WsError {
    /// Too big (close code 1009).
    #[error("WebSocket frame or message larger than {MAX_MESSAGE} bytes")]
    TooBig,
    /// Broke the protocol (close code 1002).
    #[error("WebSocket protocol error: {0}")]
    Protocol(&'static str),
    /// The socket failed.
    #[error("WebSocket connection: {0}")]
    Io(#[from] std::io::Error),
}

impl WsError {
    fn close_code(&self) -> u16 {
        match self {
            Self::TooBig => 1009,
            Self::Protocol(_) | Self::Io(_) => 1002,
        }
    }
}

/// Reads client frames (which must be masked).
#[derive(Default)]
pub(crate) struct ClientFrames;

impl Decoder for ClientFrames {
    type Item = WsFrame;
    type Error = WsError;

    fn decode(&mut self, buf: &mut BytesMut) -> Result<Option<WsFrame>, WsError> {
        if buf.len() < 2 {
            return Ok(None);
        }
        let (b0, b1) = (buf[0], buf[1]);
        if b0 & 0x70 != 0 {
            return Err(WsError::Protocol("reserved bits set"));
        }
        let fin = b0 & 0x80 != 0;
        let opcode = b0 & 0x0f;
        if b1 & 0x80 == 0 {
            return Err(WsError::Protocol("unmasked client frame"));
        }
        let (len, head) = match b1 & 0x7f {
            126 => {
                if buf.len() < 4 {
                    return Ok(None);
                }
                (u64::from(u16::from_be_bytes([buf[2], buf[3]])), 4)
            }
            127 => {
                if buf.len() < 10 {
                    return Ok(None);
                }
                let mut b = [0u8; 8];
                b.copy_from_slice(&buf[2..10]);
                (u64::from_be_bytes(b), 10)
            }
            n => (u64::from(n), 2),
        };
        let control = opcode >= 8;
        if control && (len > 125 || !fin) {
            return Err(WsError::Protocol("control frame too long or fragmented"));
        }
        let len = usize::try_from(len).map_err(|_| WsError::TooBig)?;
        if len > MAX_FRAME {
            return Err(WsError::TooBig);
        }
        if buf.len() < head + 4 + len {
            buf.reserve(head + 4 + len - buf.len());
            return Ok(None);
        }
        buf.advance(head);
        let mask = [buf[0], buf[1], buf[2], buf[3]];
        buf.advance(4);
        let mut payload = buf.split_to(len);
        for (i, b) in payload.iter_mut().enumerate() {
            *b ^= mask[i % 4];
        }
        Ok(Some(WsFrame {
            fin,
            opcode,
            payload: payload.freeze(),
        }))
    }
}

/// Writes server frames (unmasked).
#[derive(Default)]
pub(crate) struct ServerFrames;

impl Encoder<WsFrame> for ServerFrames {
    type Error = WsError;

    fn encode(&mut self, f: WsFrame, dst: &mut BytesMut) -> Result<(), WsError> {
        let len = f.payload.len();
        dst.reserve(len + 10);
        dst.put_u8(if f.fin { 0x80 } else { 0 } | (f.opcode & 0x0f));
        if len < 126 {
            dst.put_u8(len as u8);
        } else if let Ok(l) = u16::try_from(len) {
            dst.put_u8(126);
            dst.put_u16(l);
        } else {
            dst.put_u8(127);
            dst.put_u64(len as u64);
        }
        dst.put_slice(&f.payload);
        Ok(())
    }
}

/// A message, text or binary.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct Message {
    /// Sent as a text frame.
    pub(crate) text: bool,
    /// Its bytes.
    pub(crate) data: Bytes,
}

enum Out {
    Frame(WsFrame),
    Close(u16),
}

/// Sends messages on one connection; clones share it.
#[derive(Clone)]
pub(crate) struct WsSender(mpsc::Sender<Out>);

impl WsSender {
    /// Sends one message; false once the connection is gone.
    pub(crate) async fn send(&self, m: Message) -> bool {
        let opcode = if m.text { OP_TEXT } else { OP_BINARY };
        self.0
            .send(Out::Frame(WsFrame {
                fin: true,
                opcode,
                payload: m.data,
            }))
            .await
            .is_ok()
    }
}

/// A running server connection.
pub(crate) struct WsConnection {
    /// Messages from the client; ends when it closes or the connection fails.
    pub(crate) incoming: mpsc::Receiver<Message>,
    /// Sends to the client.
    pub(crate) tx: WsSender,
    reader: JoinHandle<()>,
    writer: Option<JoinHandle<()>>,
}

impl WsConnection {
    /// Serves WebSocket frames on `io` (already upgraded).
    pub(crate) fn start<IO>(io: IO, idle: Duration) -> Self
    where
        IO: AsyncRead + AsyncWrite + Send + Unpin + 'static,
    {
        let (read, write) = tokio::io::split(io);
        let (out, out_rx) = mpsc::channel(QUEUE);
        let (in_tx, incoming) = mpsc::channel(QUEUE);
        let writer = tokio::spawn(write_frames(FramedWrite::new(write, ServerFrames), out_rx));
        let reader = tokio::spawn(read_frames(
            FramedRead::new(read, ClientFrames),
            out.clone(),
            in_tx,
            idle,
        ));
        Self {
            incoming,
            tx: WsSender(out),
            reader,
            writer: Some(writer),
        }
    }

    /// Closes with 1000 (normal), after the queued messages.
    pub(crate) async fn close(mut self) {
        let _ = self.tx.0.send(Out::Close(1000)).await;
        if let Some(w) = self.writer.take() {
            let abort = w.abort_handle();
            if tokio::time::timeout(Duration::from_secs(5), w)
                .await
                .is_err()
            {
                abort.abort();
            }
        }
    }
}

impl Drop for WsConnection {
    fn drop(&mut self) {
        self.reader.abort();
        if let Some(w) = self.writer.take() {
            w.abort();
        }
    }
}

async fn write_frames<W: AsyncWrite + Send + Unpin + 'static>(
    mut framed: FramedWrite<W, ServerFrames>,
    mut rx: mpsc::Receiver<Out>,
) {
    while let Some(out) = rx.recv().await {
        match out {
            Out::Frame(f) => {
                if framed.feed(f).await.is_err() {
                    return;
                }
                if rx.is_empty() && framed.flush().await.is_err() {
                    return;
                }
            }
            Out::Close(code) => {
                let _ = framed
                    .send(WsFrame {
                        fin: true,
                        opcode: OP_CLOSE,
                        payload: Bytes::copy_from_slice(&code.to_be_bytes()),
                    })
                    .await;
                break;
            }
        }
    }
    let _ = framed.flush().await;
    let _ = tokio::io::AsyncWriteExt::shutdown(framed.get_mut()).await;
}

async fn read_frames<R: AsyncRead + Send + Unpin + 'static>(
    mut framed: FramedRead<R, ClientFrames>,
    out: mpsc::Sender<Out>,
    incoming: mpsc::Sender<Message>,
    idle: Duration,
) {
    let mut partial: Option<(bool, BytesMut)> = None;
    loop {
        let frame = match tokio::time::timeout(idle, framed.next()).await {
            Err(_) | Ok(None) => break,
            Ok(Some(Err(e))) => {
                tracing::debug!(error = %e, "WebSocket: closing");
                let _ = out.send(Out::Close(e.close_code())).await;
                break;
            }
            Ok(Some(Ok(f))) => f,
        };
        match frame.opcode {
            OP_PING => {
                let pong = WsFrame {
                    fin: true,
                    opcode: OP_PONG,
                    payload: frame.payload,
                };
                if out.send(Out::Frame(pong)).await.is_err() {
                    break;
                }
            }
            OP_PONG => {}
            OP_CLOSE => {
                let _ = out.send(Out::Close(1000)).await;
                break;
            }
            OP_TEXT | OP_BINARY | OP_CONTINUATION => {
                let (text, mut data) = match (frame.opcode, partial.take()) {
                    (OP_CONTINUATION, Some(p)) => p,
                    (OP_CONTINUATION, None) => {
                        let _ = out.send(Out::Close(1002)).await;
                        break;
                    }
                    (_, Some(_)) => {
                        let _ = out.send(Out::Close(1002)).await;
                        break;
                    }
                    (op, None) => (op == OP_TEXT, BytesMut::new()),
                };
                if data.len() + frame.payload.len() > MAX_MESSAGE {
                    let _ = out.send(Out::Close(1009)).await;
                    break;
                }
                data.extend_from_slice(&frame.payload);
                if !frame.fin {
                    partial = Some((text, data));
                    continue;
                }
                let m = Message {
                    text,
                    data: data.freeze(),
                };
                if incoming.send(m).await.is_err() {
                    break;
                }
            }
            _ => {
                let _ = out.send(Out::Close(1002)).await;
                break;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A client frame, masked as clients must.
    pub(crate) fn masked(fin: bool, opcode: u8, payload: &[u8]) -> Vec<u8> {
        let mask = [1u8, 2, 3, 4];
        let mut v = vec![if fin { 0x80 } else { 0 } | opcode];
        let len = payload.len();
        if len < 126 {
            v.push(0x80 | len as u8);
        } else if len <= 0xffff {
            v.push(0x80 | 126);
            v.extend_from_slice(&(len as u16).to_be_bytes());
        } else {
            v.push(0x80 | 127);
            v.extend_from_slice(&(len as u64).to_be_bytes());
        }
        v.extend_from_slice(&mask);
        v.extend(payload.iter().enumerate().map(|(i, b)| b ^ mask[i % 4]));
        v
    }

    #[test]
    fn accept_key_is_rfc_6455s() {
        // The example of RFC 6455 §1.3.
        assert_eq!(
            accept_key("dGhlIHNhbXBsZSBub25jZQ=="),
            "s3pPLMBiTxaQ9kYGzzhZRbK+xOo="
        );
    }

    #[test]
    fn frames_decode_and_bad_ones_are_refused() {
        let mut buf = BytesMut::from(&masked(true, OP_BINARY, &[9u8; 70_000])[..]);
        let f = ClientFrames.decode(&mut buf).expect("ok").expect("frame");
        assert_eq!(
            (f.fin, f.opcode, f.payload.len()),
            (true, OP_BINARY, 70_000)
        );
        assert!(f.payload.iter().all(|b| *b == 9));
        let mut unmasked = BytesMut::from(&[0x82u8, 0x01, 0x00][..]);
        assert!(matches!(
            ClientFrames.decode(&mut unmasked),
            Err(WsError::Protocol(_))
        ));
        let mut huge = BytesMut::from(&[0x82u8, 0xff, 0, 0, 0, 0, 0x10, 0, 0, 0][..]);
        assert!(matches!(
            ClientFrames.decode(&mut huge),
            Err(WsError::TooBig)
        ));
        let mut long_ping = BytesMut::from(&masked(true, OP_PING, &[0u8; 126])[..]);
        assert!(matches!(
            ClientFrames.decode(&mut long_ping),
            Err(WsError::Protocol(_))
        ));
    }

    #[tokio::test]
    async fn messages_reassemble_pings_are_answered_and_big_messages_close() {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let (a, mut b) = tokio::io::duplex(1 << 20);
        let mut conn = WsConnection::start(a, Duration::from_secs(30));
        b.write_all(&masked(false, OP_TEXT, b"hel"))
            .await
            .expect("w");
        b.write_all(&masked(true, OP_PING, b"p")).await.expect("w");
        b.write_all(&masked(true, OP_CONTINUATION, b"lo"))
            .await
            .expect("w");
        assert_eq!(
            conn.incoming.recv().await,
            Some(Message {
                text: true,
                data: Bytes::from_static(b"hello")
            })
        );
        let mut pong = [0u8; 3];
        b.read_exact(&mut pong).await.expect("pong");
        assert_eq!(pong, [0x8a, 1, b'p']);
        assert!(
            conn.tx
                .send(Message {
                    text: false,
                    data: Bytes::from_static(b"\x01ok")
                })
                .await
        );
        let mut out = [0u8; 5];
        b.read_exact(&mut out).await.expect("message");
        assert_eq!(out, [0x82, 3, 1, b'o', b'k']);
        // Fragments adding up past the limit: close 1009.
        let part = vec![0u8; MAX_MESSAGE / 2 + 1];
        b.write_all(&masked(false, OP_BINARY, &part))
            .await
            .expect("w");
        b.write_all(&masked(true, OP_CONTINUATION, &part))
            .await
            .expect("w");
        let mut close = [0u8; 4];
        b.read_exact(&mut close).await.expect("close");
        assert_eq!(close, [0x88, 2, 0x03, 0xf1]);
        assert_eq!(conn.incoming.recv().await, None);
    }
}
