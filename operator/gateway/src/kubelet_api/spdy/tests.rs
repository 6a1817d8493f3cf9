use std::time::Duration;

use bytes::{BufMut, Bytes, BytesMut};
use futures::{SinkExt, StreamExt};
use tokio_util::codec::{Decoder, Encoder, FramedRead, FramedWrite};

use super::frame::{
    FrameError, MAX_CONTROL_FRAME, MAX_DATA_FRAME, MAX_HEADER_BLOCK, MAX_HEADERS, rst,
};
use super::*;

fn h(pairs: &[(&str, &[&str])]) -> Headers {
    pairs
        .iter()
        .map(|(n, v)| (n.to_string(), v.iter().map(|s| s.to_string()).collect()))
        .collect()
}

fn every_frame() -> Vec<Frame> {
    vec![
        Frame::SynStream {
            stream_id: 1,
            associated: 0,
            priority: 7,
            fin: false,
            unidirectional: false,
            headers: h(&[("streamtype", &["error"])]),
        },
        Frame::SynStream {
            stream_id: 3,
            associated: 1,
            priority: 0,
            fin: true,
            unidirectional: true,
            headers: h(&[
                ("streamtype", &["data"]),
                ("port", &["80"]),
                ("x", &["a", "b"]),
            ]),
        },
        Frame::SynReply {
            stream_id: 1,
            fin: false,
            headers: Vec::new(),
        },
        Frame::Headers {
            stream_id: 3,
            fin: true,
            headers: h(&[("requestid", &["0"])]),
        },
        Frame::RstStream {
            stream_id: 3,
            status: rst::CANCEL,
        },
        Frame::Settings {
            entries: vec![(1, 4, 100), (0, 7, 65536)],
        },
        Frame::Ping { id: 1 },
        Frame::GoAway {
            last_good: 3,
            status: 0,
        },
        Frame::WindowUpdate {
            stream_id: 1,
            delta: 4096,
        },
        Frame::Data {
            stream_id: 1,
            fin: true,
            data: Bytes::from_static(b"hello"),
        },
        Frame::Data {
            stream_id: 5,
            fin: false,
            data: Bytes::from(vec![7u8; MAX_DATA_FRAME]),
        },
    ]
}

#[test]
fn every_frame_round_trips_with_one_zlib_stream_per_direction() {
    let mut enc = FrameEncoder::default();
    let mut dec = FrameDecoder::default();
    let mut wire = BytesMut::new();
    // Twice: the second header blocks continue the same zlib streams.
    let frames: Vec<Frame> = every_frame().into_iter().chain(every_frame()).collect();
    for f in &frames {
        enc.encode(f.clone(), &mut wire).expect("encode");
    }
    // Fed a byte at a time for the first frames: partial input waits for more.
    let mut buf = BytesMut::new();
    let mut got = Vec::new();
    for b in wire.iter() {
        buf.put_u8(*b);
        if let Some(f) = dec.decode(&mut buf).expect("decode") {
            got.push(f);
        }
    }
    assert!(buf.is_empty());
    assert_eq!(got, frames);
}

#[test]
fn unknown_control_frames_are_skipped() {
    let mut wire = BytesMut::new();
    wire.put_u16(0x8003);
    wire.put_u16(0x0042);
    wire.put_u32(3);
    wire.put_slice(b"abc");
    let f = FrameDecoder::default().decode(&mut wire).expect("decode");
    assert_eq!(f, Some(Frame::Unknown { kind: 0x42 }));
}

fn decode_err(wire: &[u8]) -> FrameError {
    let mut buf = BytesMut::from(wire);
    match FrameDecoder::default().decode(&mut buf) {
        Err(e) => e,
        Ok(f) => panic!("decoded {f:?} from malformed input"),
    }
}

fn control(kind: u16, flags: u8, payload: &[u8]) -> Vec<u8> {
    let mut v = vec![0x80, 0x03];
    v.extend_from_slice(&kind.to_be_bytes());
    v.push(flags);
    v.extend_from_slice(&(payload.len() as u32).to_be_bytes()[1..]);
    v.extend_from_slice(payload);
    v
}

#[test]
fn malformed_frames_are_refused() {
    // Wrong version.
    let mut v2 = control(6, 0, &1u32.to_be_bytes());
    v2[1] = 2;
    assert!(matches!(decode_err(&v2), FrameError::Version(2)));
    // Fixed-size frames of the wrong size.
    assert!(matches!(
        decode_err(&control(3, 0, &[0, 0, 0, 1])),
        FrameError::Malformed("RST_STREAM")
    ));
    assert!(matches!(
        decode_err(&control(6, 0, &[0, 0, 0, 1, 0])),
        FrameError::Malformed("PING")
    ));
    assert!(matches!(
        decode_err(&control(7, 0, &[0; 4])),
        FrameError::Malformed("GOAWAY")
    ));
    assert!(matches!(
        decode_err(&control(9, 0, &[0; 12])),
        FrameError::Malformed("WINDOW_UPDATE")
    ));
    // RST_STREAM with status 0, SETTINGS announcing more entries than it holds.
    assert!(matches!(
        decode_err(&control(3, 0, &[0, 0, 0, 1, 0, 0, 0, 0])),
        FrameError::Malformed(_)
    ));
    assert!(matches!(
        decode_err(&control(4, 0, &[0, 0, 0, 9, 0, 0, 0, 0])),
        FrameError::Malformed("SETTINGS")
    ));
    // Stream 0.
    assert!(matches!(
        decode_err(&[0, 0, 0, 0, 0, 0, 0, 1, 9]),
        FrameError::Malformed(_)
    ));
    assert!(matches!(
        decode_err(&control(1, 0, &[0; 10])),
        FrameError::Malformed("SYN_STREAM")
    ));
    // A SYN_STREAM too short for its fixed fields, and one whose header block is not zlib.
    assert!(matches!(
        decode_err(&control(1, 0, &[0, 0, 0, 1, 0])),
        FrameError::Malformed("SYN_STREAM")
    ));
    assert!(matches!(
        decode_err(&control(1, 0, &[0, 0, 0, 1, 0, 0, 0, 0, 0, 0, 1, 2, 3, 4])),
        FrameError::HeaderBlock(_)
    ));
}

#[test]
fn oversized_frames_are_refused_from_their_header_alone() {
    let mut data = BytesMut::new();
    data.put_u32(1);
    data.put_u32((MAX_DATA_FRAME + 1) as u32);
    assert!(matches!(
        FrameDecoder::default().decode(&mut data),
        Err(FrameError::TooLarge { .. })
    ));
    let mut ctl = BytesMut::new();
    ctl.put_u16(0x8003);
    ctl.put_u16(1);
    ctl.put_u32((MAX_CONTROL_FRAME + 1) as u32);
    assert!(matches!(
        FrameDecoder::default().decode(&mut ctl),
        Err(FrameError::TooLarge { .. })
    ));
}

/// A SYN_STREAM for stream 1 whose header block is `raw`, compressed as a peer would.
fn syn_with_raw_block(raw: &[u8]) -> BytesMut {
    let mut z = flate2::Compress::new(flate2::Compression::best(), true);
    z.set_dictionary(super::dictionary::DICTIONARY)
        .expect("dictionary");
    let mut block = Vec::with_capacity(raw.len() / 100 + 1024);
    let mut consumed = 0;
    loop {
        if block.capacity() - block.len() < 64 {
            block.reserve(4096);
        }
        let before = z.total_in();
        z.compress_vec(&raw[consumed..], &mut block, flate2::FlushCompress::Sync)
            .expect("compress");
        consumed += (z.total_in() - before) as usize;
        if consumed == raw.len() && block.len() < block.capacity() {
            break;
        }
    }
    let mut payload = vec![0, 0, 0, 1, 0, 0, 0, 0, 0, 0];
    payload.extend_from_slice(&block);
    BytesMut::from(&control(1, 0, &payload)[..])
}

fn raw_block(pairs: &[(&[u8], &[u8])], count: u32) -> Vec<u8> {
    let mut raw = BytesMut::new();
    raw.put_u32(count);
    for (n, v) in pairs {
        raw.put_u32(n.len() as u32);
        raw.put_slice(n);
        raw.put_u32(v.len() as u32);
        raw.put_slice(v);
    }
    raw.to_vec()
}

#[test]
fn decompression_bomb_is_refused() {
    // 4 MiB of header value compresses to a few KiB: well within a control frame.
    let huge = vec![b'a'; 4 * 1024 * 1024];
    let raw = raw_block(&[(b"streamtype", &huge)], 1);
    let mut wire = syn_with_raw_block(&raw);
    assert!(wire.len() < MAX_CONTROL_FRAME, "the bomb fits in a frame");
    assert!(matches!(
        FrameDecoder::default().decode(&mut wire),
        Err(FrameError::HeaderBomb)
    ));
    // Just under the limit is fine.
    let fits = vec![b'a'; MAX_HEADER_BLOCK - 64];
    let mut ok = syn_with_raw_block(&raw_block(&[(b"streamtype", &fits)], 1));
    assert!(matches!(
        FrameDecoder::default().decode(&mut ok),
        Ok(Some(Frame::SynStream { .. }))
    ));
}

#[test]
fn bad_header_blocks_are_refused() {
    let cases: Vec<(&str, Vec<u8>)> = vec![
        (
            "too many",
            raw_block(&[(b"a", b"b")], MAX_HEADERS as u32 + 1),
        ),
        ("upper case", raw_block(&[(b"StreamType", b"error")], 1)),
        ("twice", raw_block(&[(b"a", b"1"), (b"a", b"2")], 2)),
        ("truncated", raw_block(&[(b"a", b"1")], 2)),
        ("not utf-8", raw_block(&[(b"a", &[0xff, 0xfe])], 1)),
        ("trailing", {
            let mut r = raw_block(&[(b"a", b"1")], 1);
            r.push(0);
            r
        }),
    ];
    for (what, raw) in cases {
        let mut wire = syn_with_raw_block(&raw);
        assert!(
            matches!(
                FrameDecoder::default().decode(&mut wire),
                Err(FrameError::HeaderBlock(_))
            ),
            "{what}"
        );
    }
}

// === a connection, driven by a test client speaking the same frames ===

type Client = (
    FramedWrite<tokio::io::WriteHalf<tokio::io::DuplexStream>, FrameEncoder>,
    FramedRead<tokio::io::ReadHalf<tokio::io::DuplexStream>, FrameDecoder>,
);

fn accept_typed(headers: &Headers) -> Result<(), String> {
    match super::frame::header(headers, "streamtype") {
        Some("error" | "data") => Ok(()),
        other => Err(format!("bad stream type {other:?}")),
    }
}

fn start(max_streams: usize, idle: Duration) -> (Connection, Client) {
    let (a, b) = tokio::io::duplex(1 << 20);
    let conn = Connection::start(a, Limits { max_streams, idle }, accept_typed);
    let (r, w) = tokio::io::split(b);
    (
        conn,
        (
            FramedWrite::new(w, FrameEncoder::default()),
            FramedRead::new(r, FrameDecoder::default()),
        ),
    )
}

fn syn(id: u32, kind: &str) -> Frame {
    Frame::SynStream {
        stream_id: id,
        associated: 0,
        priority: 0,
        fin: false,
        unidirectional: false,
        headers: h(&[("streamtype", &[kind])]),
    }
}

async fn next(c: &mut Client) -> Frame {
    tokio::time::timeout(Duration::from_secs(5), c.1.next())
        .await
        .expect("a frame in time")
        .expect("a frame")
        .expect("valid")
}

#[tokio::test]
async fn streams_are_replied_routed_half_closed_and_pings_echoed() {
    let (mut conn, mut c) = start(8, Duration::from_secs(60));
    c.0.send(syn(1, "data")).await.expect("send");
    assert_eq!(
        next(&mut c).await,
        Frame::SynReply {
            stream_id: 1,
            fin: false,
            headers: Vec::new()
        }
    );
    let mut s = conn.incoming.recv().await.expect("stream");
    assert_eq!(s.id(), 1);
    assert_eq!(s.header("streamtype"), Some("data"));
    c.0.send(Frame::Data {
        stream_id: 1,
        fin: false,
        data: Bytes::from_static(b"in"),
    })
    .await
    .expect("send");
    assert_eq!(s.rx.recv().await.as_deref(), Some(&b"in"[..]));
    c.0.send(Frame::Ping { id: 7 }).await.expect("send");
    assert_eq!(next(&mut c).await, Frame::Ping { id: 7 });
    s.tx.send(Bytes::from(vec![1u8; 40 * 1024]))
        .await
        .expect("write");
    s.tx.finish().await.expect("fin");
    let mut got = 0;
    loop {
        match next(&mut c).await {
            Frame::Data {
                stream_id: 1,
                fin,
                data,
            } => {
                got += data.len();
                assert!(data.len() <= super::conn::MAX_WRITE);
                if fin {
                    break;
                }
            }
            other => panic!("unexpected {other:?}"),
        }
    }
    assert_eq!(got, 40 * 1024);
    c.0.send(Frame::Data {
        stream_id: 1,
        fin: true,
        data: Bytes::new(),
    })
    .await
    .expect("send");
    assert_eq!(
        s.rx.recv().await,
        None,
        "the client's FIN ends the stream's data"
    );
    conn.close().await;
    assert!(matches!(
        next(&mut c).await,
        Frame::GoAway { status: 0, .. }
    ));
}

#[tokio::test]
async fn too_many_streams_and_bad_headers_are_refused() {
    let (mut conn, mut c) = start(2, Duration::from_secs(60));
    c.0.send(syn(1, "error")).await.expect("send");
    c.0.send(syn(3, "data")).await.expect("send");
    c.0.send(syn(5, "data")).await.expect("send");
    c.0.send(syn(7, "stdin")).await.expect("send");
    let mut seen = Vec::new();
    for _ in 0..4 {
        seen.push(next(&mut c).await);
    }
    assert!(matches!(seen[0], Frame::SynReply { stream_id: 1, .. }));
    assert!(matches!(seen[1], Frame::SynReply { stream_id: 3, .. }));
    assert_eq!(
        seen[2],
        Frame::RstStream {
            stream_id: 5,
            status: rst::REFUSED_STREAM
        },
        "the third stream at once is refused"
    );
    assert!(
        matches!(seen[3], Frame::RstStream { stream_id: 7, .. }),
        "an unacceptable stream type is reset"
    );
    // Closing one stream frees its slot.
    let first = conn.incoming.recv().await.expect("stream 1");
    drop(first);
    c.0.send(syn(9, "data")).await.expect("send");
    assert!(matches!(
        next(&mut c).await,
        Frame::SynReply { stream_id: 9, .. }
    ));
    // A stream id going backwards is a protocol error: GOAWAY, then the end.
    c.0.send(syn(3, "data")).await.expect("send");
    assert!(matches!(
        next(&mut c).await,
        Frame::GoAway { status: 1, .. }
    ));
}

#[tokio::test]
async fn a_malformed_frame_ends_the_connection() {
    let (mut conn, mut c) = start(2, Duration::from_secs(60));
    let w = c.0.get_mut();
    tokio::io::AsyncWriteExt::write_all(w, &control(6, 0, &[0, 0, 1]))
        .await
        .expect("write");
    assert!(matches!(
        next(&mut c).await,
        Frame::GoAway { status: 1, .. }
    ));
    assert!(conn.incoming.recv().await.is_none());
}

#[tokio::test(start_paused = true)]
async fn a_silent_connection_ends_after_its_idle_time() {
    let (mut conn, mut c) = start(2, Duration::from_secs(30));
    c.0.send(syn(1, "data")).await.expect("send");
    let mut s = conn.incoming.recv().await.expect("stream");
    // No frame for longer than the idle time: the stream's data and the incoming end.
    assert_eq!(s.rx.recv().await, None);
    assert!(conn.incoming.recv().await.is_none());
}
