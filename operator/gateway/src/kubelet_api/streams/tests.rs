use std::time::Duration;

use futures::future::BoxFuture;
use futures::{FutureExt, SinkExt, StreamExt};
use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::server::conn::auto;
use hyper_util::service::TowerToHyperService;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio_util::codec::{FramedRead, FramedWrite};

use super::*;
use crate::kubelet_api::spdy::{Frame, FrameDecoder, FrameEncoder};
use crate::seams::{ExecIo, TunnelIo};

/// Pod `ns/web-1` (uid `u1`, container `web`) exists; exec echoes stdin to stdout, writes
/// "err" to stderr and exits with the number of resizes it saw plus 3; port 80 echoes, port 81
/// is closed.
struct FakeStreams;

impl ContainerStreams for FakeStreams {
    fn check(
        &self,
        _namespace: &str,
        pod: &str,
        uid: Option<&str>,
        container: Option<&str>,
    ) -> Result<(), StreamError> {
        if pod != "web-1" {
            return Err(StreamError::PodNotFound);
        }
        if uid.is_some_and(|u| u != "u1") {
            return Err(StreamError::UidMismatch);
        }
        if container.is_some_and(|c| c != "web") {
            return Err(StreamError::ContainerNotFound(format!(
                "container not found ({:?})",
                container.unwrap_or_default()
            )));
        }
        Ok(())
    }

    fn exec(&self, req: ExecRequest) -> BoxFuture<'static, Result<ExecIo, StreamError>> {
        async move {
            let (input, mut rx) = mpsc::channel(8);
            let (tx, output) = mpsc::channel(8);
            tokio::spawn(async move {
                let _ = tx
                    .send(ExecOutput::Stderr(Bytes::from_static(b"err")))
                    .await;
                let mut resizes = 0;
                while let Some(i) = rx.recv().await {
                    match i {
                        ExecInput::Stdin(b) => {
                            let _ = tx.send(ExecOutput::Stdout(b)).await;
                            if req.command == ["once"] {
                                break;
                            }
                        }
                        ExecInput::Resize { width, height } => {
                            assert_eq!((width, height), (100, 30));
                            resizes += 1;
                        }
                        ExecInput::StdinEof => break,
                    }
                }
                let code = if req.command == ["true"] {
                    0
                } else {
                    3 + resizes
                };
                let _ = tx.send(ExecOutput::Exited(code)).await;
            });
            Ok(ExecIo { input, output })
        }
        .boxed()
    }

    fn port_forward(
        &self,
        _namespace: &str,
        _pod: &str,
        port: u16,
    ) -> BoxFuture<'static, Result<Box<dyn TunnelIo>, StreamError>> {
        async move {
            if port != 80 {
                return Err(StreamError::Edge(format!(
                    "connecting to container port {port}: Connection refused"
                )));
            }
            let (a, mut b) = tokio::io::duplex(1 << 16);
            tokio::spawn(async move {
                let mut buf = [0u8; 1024];
                while let Ok(n) = b.read(&mut buf).await {
                    if n == 0 || b.write_all(&buf[..n]).await.is_err() {
                        break;
                    }
                }
            });
            Ok(Box::new(a) as Box<dyn TunnelIo>)
        }
        .boxed()
    }
}

async fn serve() -> u16 {
    serve_capped(64).await
}

async fn serve_capped(max_connections: usize) -> u16 {
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let port = listener.local_addr().expect("addr").port();
    let app = routes_capped(Arc::new(FakeStreams), max_connections);
    tokio::spawn(async move {
        while let Ok((tcp, _)) = listener.accept().await {
            let app = app.clone();
            tokio::spawn(async move {
                let _ = auto::Builder::new(TokioExecutor::new())
                    .serve_connection_with_upgrades(
                        TokioIo::new(tcp),
                        TowerToHyperService::new(app),
                    )
                    .await;
            });
        }
    });
    port
}

/// Sends a request head; the response head and the connection.
async fn request(port: u16, path: &str, extra: &str) -> (String, TcpStream) {
    let mut tcp = TcpStream::connect(("127.0.0.1", port))
        .await
        .expect("connect");
    let head = format!("POST {path} HTTP/1.1\r\nHost: x\r\nContent-Length: 0\r\n{extra}\r\n");
    tcp.write_all(head.as_bytes()).await.expect("write");
    let mut got = Vec::new();
    let mut byte = [0u8; 1];
    while !got.ends_with(b"\r\n\r\n") {
        let n = tcp.read(&mut byte).await.expect("read");
        assert!(n > 0, "closed after {:?}", String::from_utf8_lossy(&got));
        got.push(byte[0]);
    }
    (String::from_utf8_lossy(&got).into_owned(), tcp)
}

const SPDY: &str = "Connection: Upgrade\r\nUpgrade: SPDY/3.1\r\n";

type Client = (
    FramedWrite<tokio::io::WriteHalf<TcpStream>, FrameEncoder>,
    FramedRead<tokio::io::ReadHalf<TcpStream>, FrameDecoder>,
);

fn client(tcp: TcpStream) -> Client {
    let (r, w) = tokio::io::split(tcp);
    (
        FramedWrite::new(w, FrameEncoder::default()),
        FramedRead::new(r, FrameDecoder::default()),
    )
}

fn syn(id: u32, headers: &[(&str, &str)]) -> Frame {
    Frame::SynStream {
        stream_id: id,
        associated: 0,
        priority: 0,
        fin: false,
        unidirectional: false,
        headers: headers
            .iter()
            .map(|(n, v)| (n.to_string(), vec![v.to_string()]))
            .collect(),
    }
}

fn data(id: u32, fin: bool, d: &[u8]) -> Frame {
    Frame::Data {
        stream_id: id,
        fin,
        data: Bytes::copy_from_slice(d),
    }
}

/// Reads frames until every stream in `until_fin` has sent FIN; data per stream id.
async fn collect(c: &mut Client, until_fin: &[u32]) -> HashMap<u32, Vec<u8>> {
    let mut got: HashMap<u32, Vec<u8>> = HashMap::new();
    let mut open: Vec<u32> = until_fin.to_vec();
    while !open.is_empty() {
        let f = tokio::time::timeout(Duration::from_secs(5), c.1.next())
            .await
            .expect("in time")
            .expect("a frame")
            .expect("valid");
        match f {
            Frame::Data {
                stream_id,
                fin,
                data,
            } => {
                got.entry(stream_id).or_default().extend_from_slice(&data);
                if fin {
                    open.retain(|i| *i != stream_id);
                }
            }
            Frame::RstStream { stream_id, .. } => open.retain(|i| *i != stream_id),
            Frame::SynReply { .. } | Frame::GoAway { .. } => {}
            other => panic!("unexpected {other:?}"),
        }
    }
    got
}

#[tokio::test]
async fn refusals_are_kubelets() {
    let port = serve().await;
    let v4 = "X-Stream-Protocol-Version: v4.channel.k8s.io\r\n";
    let cases = [
        (
            "/exec/ns/web-1/web?command=true",
            format!("{SPDY}{v4}"),
            "400",
            "",
        ),
        (
            "/exec/ns/nope/web?command=true&output=1",
            format!("{SPDY}{v4}"),
            "404",
            "",
        ),
        (
            "/exec/ns/web-1/u2/web?command=true&output=1",
            format!("{SPDY}{v4}"),
            "404",
            "",
        ),
        (
            "/exec/ns/web-1/side?command=true&output=1",
            format!("{SPDY}{v4}"),
            "500",
            "",
        ),
        (
            "/exec/ns/web-1/web?command=true&output=1",
            SPDY.to_string(),
            "400",
            "",
        ),
        (
            "/exec/ns/web-1/web?command=true&output=1",
            format!("{SPDY}X-Stream-Protocol-Version: v9.channel.k8s.io\r\n"),
            "403",
            "x-accepted-stream-protocol-versions: v4.channel.k8s.io",
        ),
        (
            "/exec/ns/web-1/web?command=true&output=1",
            v4.to_string(),
            "400",
            "",
        ),
        (
            "/portForward/ns/nope",
            format!("{SPDY}X-Stream-Protocol-Version: portforward.k8s.io\r\n"),
            "404",
            "",
        ),
        ("/portForward/ns/web-1", format!("{SPDY}{v4}"), "403", ""),
    ];
    for (path, extra, code, has) in cases {
        let (head, _) = request(port, path, &extra).await;
        assert!(
            head.starts_with(&format!("HTTP/1.1 {code}")),
            "{path}: {head}"
        );
        assert!(head.to_ascii_lowercase().contains(has), "{path}: {head}");
    }
}

#[tokio::test]
async fn exec_v4_carries_stdin_stdout_stderr_resize_and_the_exit_status() {
    let port = serve().await;
    let (head, tcp) = request(
        port,
        "/exec/ns/web-1/web?command=sh&command=-c&command=x&input=1&output=1&error=1",
        &format!(
            "{SPDY}X-Stream-Protocol-Version: v5.channel.k8s.io\r\nX-Stream-Protocol-Version: v4.channel.k8s.io, v3.channel.k8s.io\r\n"
        ),
    )
    .await;
    assert!(head.starts_with("HTTP/1.1 101"), "{head}");
    assert!(
        head.to_ascii_lowercase()
            .contains("x-stream-protocol-version: v4.channel.k8s.io"),
        "the first offered protocol the server speaks: {head}"
    );
    let mut c = client(tcp);
    for (id, t) in [(1, "error"), (3, "stdin"), (5, "stdout"), (7, "stderr")] {
        c.0.send(syn(id, &[("streamtype", t)])).await.expect("syn");
    }
    c.0.send(data(3, false, b"hello ")).await.expect("data");
    c.0.send(data(3, true, b"world")).await.expect("fin");
    let got = collect(&mut c, &[1, 5, 7]).await;
    assert_eq!(got[&5], b"hello world");
    assert_eq!(got[&7], b"err");
    let status: serde_json::Value = serde_json::from_slice(&got[&1]).expect("status JSON");
    assert_eq!(status["status"], "Failure");
    assert_eq!(status["reason"], "NonZeroExitCode");
    assert_eq!(status["details"]["causes"][0]["reason"], "ExitCode");
    assert_eq!(status["details"]["causes"][0]["message"], "3");
}

#[tokio::test]
async fn exec_with_a_terminal_reads_resizes_and_older_protocols_speak_text() {
    let port = serve().await;
    // v3: a resize stream; the error stream says only failures, in words.
    let (head, tcp) = request(
        port,
        "/exec/ns/web-1/web?command=sh&input=1&output=1&tty=1&error=1",
        &format!("{SPDY}X-Stream-Protocol-Version: v3.channel.k8s.io\r\n"),
    )
    .await;
    assert!(head.starts_with("HTTP/1.1 101"), "{head}");
    let mut c = client(tcp);
    // With a terminal there is no stderr stream: error, stdin, stdout, resize.
    for (id, t) in [(1, "error"), (3, "stdin"), (5, "stdout"), (7, "resize")] {
        c.0.send(syn(id, &[("streamtype", t)])).await.expect("syn");
    }
    c.0.send(data(7, false, br#"{"Width":100,"#))
        .await
        .expect("resize");
    c.0.send(data(
        7,
        false,
        b"\"Height\":30}\n{\"Width\":100,\"Height\":30}\n",
    ))
    .await
    .expect("resize");
    tokio::time::sleep(Duration::from_millis(200)).await;
    c.0.send(data(3, true, b"x")).await.expect("fin");
    let got = collect(&mut c, &[1, 5]).await;
    assert_eq!(got[&5], b"x");
    let text = String::from_utf8_lossy(&got[&1]);
    assert!(
        text.contains("non-zero exit code") && text.contains("exit code 5"),
        "two resizes: exit code 3 + 2: {text}"
    );

    // A successful exec says nothing on v3's error stream.
    let (_, tcp) = request(
        port,
        "/exec/ns/web-1/web?command=true&input=1&output=1",
        &format!("{SPDY}X-Stream-Protocol-Version: v3.channel.k8s.io\r\n"),
    )
    .await;
    let mut c = client(tcp);
    for (id, t) in [(1, "error"), (3, "stdin"), (5, "stdout")] {
        c.0.send(syn(id, &[("streamtype", t)])).await.expect("syn");
    }
    c.0.send(data(3, true, b"")).await.expect("fin");
    let got = collect(&mut c, &[1, 5]).await;
    assert!(got.get(&1).is_none_or(|b| b.is_empty()));
}

#[tokio::test]
async fn port_forward_pairs_streams_by_request_id_and_reports_failures() {
    let port = serve().await;
    let (head, tcp) = request(
        port,
        "/portForward/ns/web-1",
        &format!("{SPDY}X-Stream-Protocol-Version: portforward.k8s.io\r\n"),
    )
    .await;
    assert!(head.starts_with("HTTP/1.1 101"), "{head}");
    let mut c = client(tcp);
    // Two forwarded connections to port 80 at once, one to the closed port 81.
    for (rid, base, p) in [("0", 1, "80"), ("1", 5, "80"), ("2", 9, "81")] {
        c.0.send(syn(
            base,
            &[("streamtype", "error"), ("port", p), ("requestid", rid)],
        ))
        .await
        .expect("syn");
        c.0.send(syn(
            base + 2,
            &[("streamtype", "data"), ("port", p), ("requestid", rid)],
        ))
        .await
        .expect("syn");
    }
    // A stream without a port is reset at once.
    c.0.send(syn(13, &[("streamtype", "data")]))
        .await
        .expect("syn");
    c.0.send(data(3, true, b"one")).await.expect("data");
    c.0.send(data(7, true, b"two")).await.expect("data");
    let got = collect(&mut c, &[1, 3, 5, 7, 9, 11, 13]).await;
    assert_eq!(got[&3], b"one");
    assert_eq!(got[&7], b"two");
    assert!(got.get(&1).is_none_or(|b| b.is_empty()));
    let err = String::from_utf8_lossy(&got[&9]);
    assert!(
        err.starts_with("error forwarding port 81 to pod ns/web-1, uid : ")
            && err.contains("Connection refused"),
        "{err}"
    );
}

#[test]
fn queries_decode_repeated_keys_and_escapes() {
    assert_eq!(
        query_pairs("command=sh&command=-c&command=echo+a%20b%3B&input=1&x"),
        vec![
            ("command".to_string(), "sh".to_string()),
            ("command".into(), "-c".into()),
            ("command".into(), "echo a b;".into()),
            ("input".into(), "1".into()),
            ("x".into(), "".into()),
        ]
    );
    assert_eq!(query_pairs("a=%zz%4"), vec![("a".into(), "%zz%4".into())]);
}

// === WebSocket, as a kubelet also serves it ===

const WS: &str = "Connection: Upgrade\r\nUpgrade: websocket\r\nSec-WebSocket-Version: 13\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n";

fn masked(opcode: u8, payload: &[u8]) -> Vec<u8> {
    assert!(payload.len() < 126);
    let mask = [7u8, 1, 2, 3];
    let mut v = vec![0x80 | opcode, 0x80 | payload.len() as u8];
    v.extend_from_slice(&mask);
    v.extend(payload.iter().enumerate().map(|(i, b)| b ^ mask[i % 4]));
    v
}

/// The next server frame: opcode and payload.
async fn ws_frame(tcp: &mut TcpStream) -> (u8, Vec<u8>) {
    let read = async {
        let mut h = [0u8; 2];
        tcp.read_exact(&mut h).await.expect("head");
        let len = match h[1] & 0x7f {
            126 => {
                let mut l = [0u8; 2];
                tcp.read_exact(&mut l).await.expect("len");
                usize::from(u16::from_be_bytes(l))
            }
            127 => panic!("no frame that big here"),
            n => usize::from(n),
        };
        let mut payload = vec![0u8; len];
        tcp.read_exact(&mut payload).await.expect("payload");
        (h[0] & 0x0f, payload)
    };
    tokio::time::timeout(Duration::from_secs(5), read)
        .await
        .expect("a frame in time")
}

#[tokio::test]
async fn exec_over_websocket_uses_channels_and_ends_with_the_status() {
    let port = serve().await;
    let (head, mut tcp) = request(
        port,
        "/exec/ns/web-1/web?command=once&input=1&output=1&error=1",
        &format!("{WS}Sec-WebSocket-Protocol: v9.channel.k8s.io, v4.channel.k8s.io\r\n"),
    )
    .await;
    let lower = head.to_ascii_lowercase();
    assert!(head.starts_with("HTTP/1.1 101"), "{head}");
    assert!(
        lower.contains("sec-websocket-accept: s3pplmbitxaq9kygzzhzrbk+xoo="),
        "{head}"
    );
    assert!(
        lower.contains("sec-websocket-protocol: v4.channel.k8s.io"),
        "{head}"
    );
    assert_eq!(ws_frame(&mut tcp).await, (2, vec![1]), "ready, on stdout");
    tcp.write_all(&masked(2, b"\x00hi")).await.expect("stdin");
    assert_eq!(ws_frame(&mut tcp).await, (2, b"\x02err".to_vec()));
    assert_eq!(ws_frame(&mut tcp).await, (2, b"\x01hi".to_vec()));
    let (op, status) = ws_frame(&mut tcp).await;
    assert_eq!((op, status[0]), (2, 3), "the error channel");
    let status: serde_json::Value = serde_json::from_slice(&status[1..]).expect("JSON");
    assert_eq!(status["reason"], "NonZeroExitCode");
    assert_eq!(status["details"]["causes"][0]["message"], "3");
    assert_eq!(ws_frame(&mut tcp).await.0, 8, "then a close");

    // A protocol the server does not speak is refused before any upgrade.
    let (head, _) = request(
        port,
        "/exec/ns/web-1/web?command=true&output=1",
        &format!("{WS}Sec-WebSocket-Protocol: v5.channel.k8s.io\r\n"),
    )
    .await;
    assert!(head.starts_with("HTTP/1.1 400"), "{head}");
}

#[tokio::test]
async fn port_forward_over_websocket_announces_ports_and_reports_failures() {
    use base64::Engine as _;
    let b64 = |d: &[u8]| base64::engine::general_purpose::STANDARD.encode(d);
    let port = serve().await;
    let (head, mut tcp) = request(
        port,
        "/portForward/ns/web-1?port=80,81",
        &format!("{WS}Sec-WebSocket-Protocol: v4.base64.channel.k8s.io\r\n"),
    )
    .await;
    assert!(head.starts_with("HTTP/1.1 101"), "{head}");
    for want in [
        format!("0{}", b64(&80u16.to_le_bytes())),
        format!("1{}", b64(&80u16.to_le_bytes())),
        format!("2{}", b64(&81u16.to_le_bytes())),
        format!("3{}", b64(&81u16.to_le_bytes())),
    ] {
        assert_eq!(ws_frame(&mut tcp).await, (1, want.into_bytes()));
    }
    tcp.write_all(&masked(1, format!("0{}", b64(b"ping")).as_bytes()))
        .await
        .expect("data");
    let (mut echoed, mut refused) = (false, false);
    while !(echoed && refused) {
        let (op, m) = ws_frame(&mut tcp).await;
        assert_eq!(op, 1);
        let data = base64::engine::general_purpose::STANDARD
            .decode(&m[1..])
            .expect("base64");
        match m[0] {
            b'0' => {
                assert_eq!(data, b"ping");
                echoed = true;
            }
            b'3' => {
                let text = String::from_utf8_lossy(&data);
                assert!(
                    text.starts_with("error forwarding port 81 to pod ns/web-1"),
                    "{text}"
                );
                refused = true;
            }
            other => panic!("unexpected channel {other}"),
        }
    }
    // Without `port`, kubelet's 400.
    let (head, _) = request(port, "/portForward/ns/web-1", WS).await;
    assert!(head.starts_with("HTTP/1.1 400"), "{head}");
}

#[tokio::test]
async fn upgraded_connections_are_capped() {
    let port = serve_capped(1).await;
    let pf = format!("{SPDY}X-Stream-Protocol-Version: portforward.k8s.io\r\n");
    let (head, held) = request(port, "/portForward/ns/web-1", &pf).await;
    assert!(head.starts_with("HTTP/1.1 101"), "{head}");
    let (head, _) = request(port, "/portForward/ns/web-1", &pf).await;
    assert!(
        head.starts_with("HTTP/1.1 503"),
        "the second at once: {head}"
    );
    let (head, _) = request(
        port,
        "/exec/ns/web-1/web?command=true&output=1",
        &format!("{WS}Sec-WebSocket-Protocol: v4.channel.k8s.io\r\n"),
    )
    .await;
    assert!(head.starts_with("HTTP/1.1 503"), "WebSocket too: {head}");
    // Once the first ends, its slot is free again.
    drop(held);
    let mut freed = false;
    for _ in 0..50 {
        let (head, _) = request(port, "/portForward/ns/web-1", &pf).await;
        if head.starts_with("HTTP/1.1 101") {
            freed = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert!(freed);
}
