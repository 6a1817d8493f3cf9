//! SPDY/3.1 frames and their wire format (draft-mbelshe-httpbis-spdy-00 §2.2, §2.6), with the
//! zlib-compressed header blocks (§2.6.10) both directions keep one stream of per connection.
//!
//! Every length read from the wire is checked before anything is allocated: a frame larger
//! than [`MAX_CONTROL_FRAME`] / [`MAX_DATA_FRAME`], a header block inflating past
//! [`MAX_HEADER_BLOCK`] (a decompression bomb) or with more than [`MAX_HEADERS`] entries is a
//! protocol error, and the connection ends.

use bytes::{Buf, BufMut, Bytes, BytesMut};
use flate2::{Compress, Compression, Decompress, FlushCompress, FlushDecompress, Status};
use tokio_util::codec::{Decoder, Encoder};

use super::dictionary::DICTIONARY;

/// The SPDY version spoken (SPDY/3.1 frames carry version 3).
pub(crate) const VERSION: u16 = 3;
/// Largest control frame payload accepted (its header block still compressed).
pub(crate) const MAX_CONTROL_FRAME: usize = 64 * 1024;
/// Largest data frame payload accepted. Go's clients write what one `io.Copy` read gives
/// (32 KiB); more is refused.
pub(crate) const MAX_DATA_FRAME: usize = 256 * 1024;
/// Largest header block once inflated.
pub(crate) const MAX_HEADER_BLOCK: usize = 64 * 1024;
/// Most name/value pairs in one header block.
pub(crate) const MAX_HEADERS: usize = 64;

/// `RST_STREAM` status codes used here.
pub(crate) mod rst {
    /// The stream was refused before any processing (stream cap reached).
    pub(crate) const REFUSED_STREAM: u32 = 3;
    /// The stream is no longer needed (what spdystream's `Reset` sends).
    pub(crate) const CANCEL: u32 = 5;
}

/// `GOAWAY` status codes.
pub(crate) mod goaway {
    /// A clean end.
    pub(crate) const OK: u32 = 0;
    /// The peer broke the protocol.
    pub(crate) const PROTOCOL_ERROR: u32 = 1;
}

const FLAG_FIN: u8 = 0x01;
const FLAG_UNIDIRECTIONAL: u8 = 0x02;

const TYPE_SYN_STREAM: u16 = 1;
const TYPE_SYN_REPLY: u16 = 2;
const TYPE_RST_STREAM: u16 = 3;
const TYPE_SETTINGS: u16 = 4;
const TYPE_PING: u16 = 6;
const TYPE_GOAWAY: u16 = 7;
const TYPE_HEADERS: u16 = 8;
const TYPE_WINDOW_UPDATE: u16 = 9;

/// Header name/value pairs, names lower-case; a name may carry several values.
pub(crate) type Headers = Vec<(String, Vec<String>)>;

/// The first value of header `name` (lower-case).
pub(crate) fn header<'a>(headers: &'a Headers, name: &str) -> Option<&'a str> {
    headers
        .iter()
        .find(|(n, _)| n == name)
        .and_then(|(_, v)| v.first())
        .map(String::as_str)
}

/// One SPDY/3.1 frame.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) enum Frame {
    /// Opens a stream.
    SynStream {
        /// Stream id (odd when the client opens it).
        stream_id: u32,
        /// Stream this one is associated with (0: none).
        associated: u32,
        /// 0 (highest) to 7.
        priority: u8,
        /// The sender sends nothing more on it.
        fin: bool,
        /// The receiver may not send on it.
        unidirectional: bool,
        /// Its headers.
        headers: Headers,
    },
    /// Accepts a stream.
    SynReply {
        /// Stream id.
        stream_id: u32,
        /// The sender sends nothing more on it.
        fin: bool,
        /// Its headers.
        headers: Headers,
    },
    /// Ends a stream abnormally.
    RstStream {
        /// Stream id.
        stream_id: u32,
        /// Why ([`rst`]).
        status: u32,
    },
    /// Connection settings: `(flags, id, value)`; read and ignored here.
    Settings {
        /// The entries.
        entries: Vec<(u8, u32, u32)>,
    },
    /// Liveness check, echoed by the receiver when the peer started it.
    Ping {
        /// Odd from the client, even from the server.
        id: u32,
    },
    /// The sender will accept no new stream.
    GoAway {
        /// Last stream the sender handled.
        last_good: u32,
        /// Why ([`goaway`]).
        status: u32,
    },
    /// More headers of a stream.
    Headers {
        /// Stream id.
        stream_id: u32,
        /// The sender sends nothing more on it.
        fin: bool,
        /// The headers.
        headers: Headers,
    },
    /// Flow-control credit; read and ignored (Go's spdystream does not do flow control).
    WindowUpdate {
        /// Stream id.
        stream_id: u32,
        /// Credit in bytes.
        delta: u32,
    },
    /// Stream data.
    Data {
        /// Stream id.
        stream_id: u32,
        /// Last frame the sender sends on this stream.
        fin: bool,
        /// Payload.
        data: Bytes,
    },
    /// A control frame of a type SPDY/3.1 does not define: ignored, as the spec asks.
    Unknown {
        /// Its type.
        kind: u16,
    },
}

/// Why bytes are not a valid SPDY/3.1 frame.
#[derive(Debug, thiserror::Error)]
pub(crate) enum FrameError {
    /// A frame larger than allowed.
    #[error("SPDY frame of {len} bytes is larger than the {max} allowed")]
    TooLarge {
        /// Announced payload length.
        len: usize,
        /// The limit.
        max: usize,
    },
    /// Not SPDY/3.
    #[error("unsupported SPDY version {0}")]
    Version(u16),
    /// A frame whose fields do not fit its type.
    #[error("malformed SPDY {0} frame")]
    Malformed(&'static str),
    /// A header block that does not inflate or parse.
    #[error("bad SPDY header block: {0}")]
    HeaderBlock(String),
    /// A header block inflating past [`MAX_HEADER_BLOCK`].
    #[error("SPDY header block inflates past {MAX_HEADER_BLOCK} bytes")]
    HeaderBomb,
    /// The socket failed.
    #[error("SPDY connection: {0}")]
    Io(#[from] std::io::Error),
}

// === impl FrameDecoder ===

/// Reads frames; holds the connection's inbound header zlib stream.
pub(crate) struct FrameDecoder {
    inflate: Decompress,
}

impl Default for FrameDecoder {
    fn default() -> Self {
        Self {
            inflate: Decompress::new(true),
        }
    }
}

impl FrameDecoder {
    /// Inflates one header block (continuing the connection's zlib stream), at most
    /// [`MAX_HEADER_BLOCK`] bytes.
    fn inflate(&mut self, input: &[u8]) -> Result<Vec<u8>, FrameError> {
        let mut out = Vec::new();
        let mut chunk = [0u8; 4096];
        let mut consumed = 0usize;
        loop {
            let (in0, out0) = (self.inflate.total_in(), self.inflate.total_out());
            let r = self
                .inflate
                .decompress(&input[consumed..], &mut chunk, FlushDecompress::Sync);
            let n_in = usize::try_from(self.inflate.total_in() - in0).unwrap_or(usize::MAX);
            let n_out = usize::try_from(self.inflate.total_out() - out0).unwrap_or(usize::MAX);
            consumed = consumed.saturating_add(n_in).min(input.len());
            match r {
                Ok(Status::StreamEnd) => {
                    return Err(FrameError::HeaderBlock("the zlib stream ended".into()));
                }
                Ok(_) => {}
                Err(e) if e.needs_dictionary().is_some() => {
                    self.inflate
                        .set_dictionary(DICTIONARY)
                        .map_err(|e| FrameError::HeaderBlock(e.to_string()))?;
                    continue;
                }
                Err(e) => return Err(FrameError::HeaderBlock(e.to_string())),
            }
            if out.len() + n_out > MAX_HEADER_BLOCK {
                return Err(FrameError::HeaderBomb);
            }
            out.extend_from_slice(&chunk[..n_out]);
            let drained = n_out < chunk.len();
            if consumed == input.len() && drained {
                return Ok(out);
            }
            if n_in == 0 && n_out == 0 {
                return Err(FrameError::HeaderBlock("the zlib stream is stuck".into()));
            }
        }
    }

    fn headers(&mut self, block: &[u8]) -> Result<Headers, FrameError> {
        let raw = self.inflate(block)?;
        parse_header_block(&raw)
    }
}

fn take_u32(buf: &mut &[u8]) -> Result<u32, FrameError> {
    if buf.len() < 4 {
        return Err(FrameError::HeaderBlock("truncated".into()));
    }
    Ok(buf.get_u32())
}

fn take_str(buf: &mut &[u8]) -> Result<String, FrameError> {
    let len = take_u32(buf)? as usize;
    if buf.len() < len {
        return Err(FrameError::HeaderBlock("truncated".into()));
    }
    let s = std::str::from_utf8(&buf[..len])
        .map_err(|_| FrameError::HeaderBlock("a name or value is not UTF-8".into()))?
        .to_string();
    buf.advance(len);
    Ok(s)
}

/// Parses an inflated header block: a count, then length-prefixed names and values (several
/// values of one name joined by NUL).
fn parse_header_block(mut raw: &[u8]) -> Result<Headers, FrameError> {
    let count = take_u32(&mut raw)? as usize;
    if count > MAX_HEADERS {
        return Err(FrameError::HeaderBlock(format!(
            "{count} headers (at most {MAX_HEADERS})"
        )));
    }
    let mut headers: Headers = Vec::with_capacity(count);
    for _ in 0..count {
        let name = take_str(&mut raw)?;
        if name.is_empty() || name.bytes().any(|b| b.is_ascii_uppercase()) {
            return Err(FrameError::HeaderBlock(format!(
                "header name {name:?} is empty or not lower-case"
            )));
        }
        if headers.iter().any(|(n, _)| *n == name) {
            return Err(FrameError::HeaderBlock(format!("header {name:?} twice")));
        }
        let value = take_str(&mut raw)?;
        headers.push((name, value.split('\0').map(str::to_string).collect()));
    }
    if !raw.is_empty() {
        return Err(FrameError::HeaderBlock(
            "bytes after the last header".into(),
        ));
    }
    Ok(headers)
}

impl Decoder for FrameDecoder {
    type Item = Frame;
    type Error = FrameError;

    fn decode(&mut self, buf: &mut BytesMut) -> Result<Option<Frame>, FrameError> {
        if buf.len() < 8 {
            return Ok(None);
        }
        let first = u32::from_be_bytes([buf[0], buf[1], buf[2], buf[3]]);
        let flags = buf[4];
        let len = (usize::from(buf[5]) << 16) | (usize::from(buf[6]) << 8) | usize::from(buf[7]);
        let control = first & 0x8000_0000 != 0;
        let max = if control {
            MAX_CONTROL_FRAME
        } else {
            MAX_DATA_FRAME
        };
        if len > max {
            return Err(FrameError::TooLarge { len, max });
        }
        if buf.len() < 8 + len {
            buf.reserve(8 + len - buf.len());
            return Ok(None);
        }
        buf.advance(8);
        let payload = buf.split_to(len).freeze();
        if !control {
            let stream_id = first & 0x7fff_ffff;
            if stream_id == 0 {
                return Err(FrameError::Malformed("DATA (stream 0)"));
            }
            return Ok(Some(Frame::Data {
                stream_id,
                fin: flags & FLAG_FIN != 0,
                data: payload,
            }));
        }
        let version = ((first >> 16) & 0x7fff) as u16;
        if version != VERSION {
            return Err(FrameError::Version(version));
        }
        let kind = (first & 0xffff) as u16;
        let mut p = &payload[..];
        let fin = flags & FLAG_FIN != 0;
        let stream = |p: &mut &[u8], what: &'static str| -> Result<u32, FrameError> {
            if p.len() < 4 {
                return Err(FrameError::Malformed(what));
            }
            let id = p.get_u32() & 0x7fff_ffff;
            if id == 0 {
                return Err(FrameError::Malformed(what));
            }
            Ok(id)
        };
        let frame = match kind {
            TYPE_SYN_STREAM => {
                let stream_id = stream(&mut p, "SYN_STREAM")?;
                if p.len() < 6 {
                    return Err(FrameError::Malformed("SYN_STREAM"));
                }
                let associated = p.get_u32() & 0x7fff_ffff;
                let priority = p.get_u8() >> 5;
                let _slot = p.get_u8();
                Frame::SynStream {
                    stream_id,
                    associated,
                    priority,
                    fin,
                    unidirectional: flags & FLAG_UNIDIRECTIONAL != 0,
                    headers: self.headers(p)?,
                }
            }
            TYPE_SYN_REPLY => {
                let stream_id = stream(&mut p, "SYN_REPLY")?;
                Frame::SynReply {
                    stream_id,
                    fin,
                    headers: self.headers(p)?,
                }
            }
            TYPE_HEADERS => {
                let stream_id = stream(&mut p, "HEADERS")?;
                Frame::Headers {
                    stream_id,
                    fin,
                    headers: self.headers(p)?,
                }
            }
            TYPE_RST_STREAM => {
                if len != 8 {
                    return Err(FrameError::Malformed("RST_STREAM"));
                }
                let stream_id = stream(&mut p, "RST_STREAM")?;
                let status = p.get_u32();
                if status == 0 {
                    return Err(FrameError::Malformed("RST_STREAM (status 0)"));
                }
                Frame::RstStream { stream_id, status }
            }
            TYPE_SETTINGS => {
                if p.len() < 4 {
                    return Err(FrameError::Malformed("SETTINGS"));
                }
                let count = p.get_u32() as usize;
                if p.len() != count.saturating_mul(8) {
                    return Err(FrameError::Malformed("SETTINGS"));
                }
                let entries = (0..count)
                    .map(|_| {
                        let id = p.get_u32();
                        ((id >> 24) as u8, id & 0x00ff_ffff, p.get_u32())
                    })
                    .collect();
                Frame::Settings { entries }
            }
            TYPE_PING => {
                if len != 4 {
                    return Err(FrameError::Malformed("PING"));
                }
                Frame::Ping { id: p.get_u32() }
            }
            TYPE_GOAWAY => {
                if len != 8 {
                    return Err(FrameError::Malformed("GOAWAY"));
                }
                Frame::GoAway {
                    last_good: p.get_u32() & 0x7fff_ffff,
                    status: p.get_u32(),
                }
            }
            TYPE_WINDOW_UPDATE => {
                if len != 8 {
                    return Err(FrameError::Malformed("WINDOW_UPDATE"));
                }
                Frame::WindowUpdate {
                    stream_id: p.get_u32() & 0x7fff_ffff,
                    delta: p.get_u32() & 0x7fff_ffff,
                }
            }
            kind => Frame::Unknown { kind },
        };
        Ok(Some(frame))
    }
}

// === impl FrameEncoder ===

/// Writes frames; holds the connection's outbound header zlib stream.
pub(crate) struct FrameEncoder {
    deflate: Compress,
}

impl Default for FrameEncoder {
    fn default() -> Self {
        let mut deflate = Compress::new(Compression::default(), true);
        // Cannot fail on a fresh stream.
        let _ = deflate.set_dictionary(DICTIONARY);
        Self { deflate }
    }
}

impl FrameEncoder {
    fn header_block(&mut self, headers: &Headers) -> Result<Vec<u8>, FrameError> {
        let mut raw = BytesMut::new();
        raw.put_u32(headers.len() as u32);
        for (name, values) in headers {
            let name = name.to_ascii_lowercase();
            raw.put_u32(name.len() as u32);
            raw.put_slice(name.as_bytes());
            let value = values.join("\0");
            raw.put_u32(value.len() as u32);
            raw.put_slice(value.as_bytes());
        }
        let mut out = Vec::with_capacity(raw.len() + 64);
        let mut consumed = 0usize;
        loop {
            if out.capacity() - out.len() < 64 {
                out.reserve(256);
            }
            let in0 = self.deflate.total_in();
            self.deflate
                .compress_vec(&raw[consumed..], &mut out, FlushCompress::Sync)
                .map_err(|e| FrameError::HeaderBlock(e.to_string()))?;
            consumed += usize::try_from(self.deflate.total_in() - in0).unwrap_or(0);
            if consumed >= raw.len() && out.len() < out.capacity() {
                return Ok(out);
            }
        }
    }
}

fn control(dst: &mut BytesMut, kind: u16, flags: u8, payload: &[u8]) -> Result<(), FrameError> {
    if payload.len() > MAX_CONTROL_FRAME {
        return Err(FrameError::TooLarge {
            len: payload.len(),
            max: MAX_CONTROL_FRAME,
        });
    }
    dst.reserve(8 + payload.len());
    dst.put_u16(0x8000 | VERSION);
    dst.put_u16(kind);
    dst.put_u32((u32::from(flags) << 24) | payload.len() as u32);
    dst.put_slice(payload);
    Ok(())
}

impl Encoder<Frame> for FrameEncoder {
    type Error = FrameError;

    fn encode(&mut self, frame: Frame, dst: &mut BytesMut) -> Result<(), FrameError> {
        let fin = |f: bool| if f { FLAG_FIN } else { 0 };
        match frame {
            Frame::Data {
                stream_id,
                fin: f,
                data,
            } => {
                if data.len() > MAX_DATA_FRAME {
                    return Err(FrameError::TooLarge {
                        len: data.len(),
                        max: MAX_DATA_FRAME,
                    });
                }
                dst.reserve(8 + data.len());
                dst.put_u32(stream_id & 0x7fff_ffff);
                dst.put_u32((u32::from(fin(f)) << 24) | data.len() as u32);
                dst.put_slice(&data);
                Ok(())
            }
            Frame::SynStream {
                stream_id,
                associated,
                priority,
                fin: f,
                unidirectional,
                headers,
            } => {
                let mut p = BytesMut::new();
                p.put_u32(stream_id);
                p.put_u32(associated);
                p.put_u8(priority << 5);
                p.put_u8(0);
                p.put_slice(&self.header_block(&headers)?);
                let flags = fin(f)
                    | if unidirectional {
                        FLAG_UNIDIRECTIONAL
                    } else {
                        0
                    };
                control(dst, TYPE_SYN_STREAM, flags, &p)
            }
            Frame::SynReply {
                stream_id,
                fin: f,
                headers,
            } => {
                let mut p = BytesMut::new();
                p.put_u32(stream_id);
                p.put_slice(&self.header_block(&headers)?);
                control(dst, TYPE_SYN_REPLY, fin(f), &p)
            }
            Frame::Headers {
                stream_id,
                fin: f,
                headers,
            } => {
                let mut p = BytesMut::new();
                p.put_u32(stream_id);
                p.put_slice(&self.header_block(&headers)?);
                control(dst, TYPE_HEADERS, fin(f), &p)
            }
            Frame::RstStream { stream_id, status } => {
                let mut p = BytesMut::new();
                p.put_u32(stream_id);
                p.put_u32(status);
                control(dst, TYPE_RST_STREAM, 0, &p)
            }
            Frame::Settings { entries } => {
                let mut p = BytesMut::new();
                p.put_u32(entries.len() as u32);
                for (flags, id, value) in entries {
                    p.put_u32((u32::from(flags) << 24) | (id & 0x00ff_ffff));
                    p.put_u32(value);
                }
                control(dst, TYPE_SETTINGS, 0, &p)
            }
            Frame::Ping { id } => control(dst, TYPE_PING, 0, &id.to_be_bytes()),
            Frame::GoAway { last_good, status } => {
                let mut p = BytesMut::new();
                p.put_u32(last_good);
                p.put_u32(status);
                control(dst, TYPE_GOAWAY, 0, &p)
            }
            Frame::WindowUpdate { stream_id, delta } => {
                let mut p = BytesMut::new();
                p.put_u32(stream_id);
                p.put_u32(delta);
                control(dst, TYPE_WINDOW_UPDATE, 0, &p)
            }
            Frame::Unknown { kind } => control(dst, kind, 0, &[]),
        }
    }
}
