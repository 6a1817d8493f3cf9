//! The proxy over real loopback sockets, with a dialer that connects straight to local
//! "containers" (TCP servers run by the test) instead of through an edge.

use std::{
    collections::HashMap,
    sync::{
        Arc,
        atomic::{AtomicUsize, Ordering},
    },
    time::Duration,
};

use futures::{FutureExt, future::BoxFuture};
use tokio::{
    io::{AsyncReadExt, AsyncWriteExt},
    net::{TcpListener, TcpStream},
};

use super::*;
use crate::{
    Backend, DialError, TunnelIo,
    routes::tests::{pod, routes, workload},
};

/// Dials `pod uid → local port`; unknown pods are refused, like a dead edge.
struct DirectDialer {
    ports: HashMap<String, u16>,
    dials: AtomicUsize,
}

impl TunnelDialer for DirectDialer {
    fn dial(&self, b: &Backend) -> BoxFuture<'static, Result<Box<dyn TunnelIo>, DialError>> {
        self.dials.fetch_add(1, Ordering::SeqCst);
        let port = self.ports.get(&b.pod_uid).copied();
        let provider = b.provider.clone();
        async move {
            let port = port.ok_or(DialError::NotConnected(provider))?;
            let s = TcpStream::connect(("127.0.0.1", port))
                .await
                .map_err(|e| DialError::Refused(e.to_string()))?;
            Ok(Box::new(s) as Box<dyn TunnelIo>)
        }
        .boxed()
    }
}

/// A tiny HTTP/1.1 server: answers `name` to GET / (keep-alive), 3 MiB to GET /big, the
/// request head it received to GET /headers, skips `Content-Length` bodies, and echoes raw
/// bytes after an `Upgrade` handshake.
async fn container(name: &'static str) -> u16 {
    let l = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let port = l.local_addr().expect("addr").port();
    tokio::spawn(async move {
        loop {
            let Ok((mut s, _)) = l.accept().await else {
                return;
            };
            tokio::spawn(async move {
                let mut buf = Vec::new();
                let mut chunk = [0u8; 4096];
                loop {
                    let Some(end) = buf.windows(4).position(|w| w == b"\r\n\r\n") else {
                        match s.read(&mut chunk).await {
                            Ok(0) | Err(_) => return,
                            Ok(n) => buf.extend_from_slice(&chunk[..n]),
                        }
                        continue;
                    };
                    let head = String::from_utf8_lossy(&buf[..end]).to_string();
                    buf.drain(..end + 4);
                    let length: usize = head
                        .lines()
                        .find_map(|l| {
                            l.to_ascii_lowercase()
                                .strip_prefix("content-length:")
                                .map(|v| v.trim().parse().unwrap_or(0))
                        })
                        .unwrap_or(0);
                    while buf.len() < length {
                        match s.read(&mut chunk).await {
                            Ok(0) | Err(_) => return,
                            Ok(n) => buf.extend_from_slice(&chunk[..n]),
                        }
                    }
                    buf.drain(..length);
                    if head.to_ascii_lowercase().contains("upgrade: echo") {
                        s.write_all(b"HTTP/1.1 101 Switching Protocols\r\nupgrade: echo\r\nconnection: upgrade\r\n\r\n").await.ok();
                        s.write_all(&buf).await.ok();
                        let (mut r, mut w) = s.split();
                        tokio::io::copy(&mut r, &mut w).await.ok();
                        return;
                    }
                    let body = if head.starts_with("GET /big") {
                        vec![b'x'; 3 * 1024 * 1024]
                    } else if head.starts_with("GET /headers") {
                        head.clone().into_bytes()
                    } else {
                        name.as_bytes().to_vec()
                    };
                    let resp = format!("HTTP/1.1 200 OK\r\ncontent-length: {}\r\n\r\n", body.len());
                    if s.write_all(resp.as_bytes()).await.is_err()
                        || s.write_all(&body).await.is_err()
                    {
                        return;
                    }
                    if head.to_ascii_lowercase().contains("connection: close") {
                        return;
                    }
                }
            });
        }
    });
    port
}

async fn gateway(routes: Routes, dialer: Arc<DirectDialer>) -> u16 {
    gateway_with(routes, dialer, GatewayLimits::default()).await
}

async fn gateway_with(routes: Routes, dialer: Arc<DirectDialer>, limits: GatewayLimits) -> u16 {
    let l = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let port = l.local_addr().expect("addr").port();
    tokio::spawn(serve_gateway(l, None, routes, dialer, limits));
    port
}

/// One ready replica `hello-a` served by a local container, and its gateway.
async fn one_replica(limits: GatewayLimits) -> u16 {
    let a = container("replica-a").await;
    let r = routes(
        vec![workload("hello", 8080, None)],
        vec![pod("hello-a", "hello", "p1", true)],
    );
    let dialer = Arc::new(DirectDialer {
        ports: [("uid-hello-a".to_string(), a)].into(),
        dials: AtomicUsize::new(0),
    });
    gateway_with(r, dialer, limits).await
}

/// Reads until the peer closes, failing if that takes longer than `within`.
async fn read_until_closed(s: &mut TcpStream, within: Duration) -> String {
    let mut out = Vec::new();
    tokio::time::timeout(within, s.read_to_end(&mut out))
        .await
        .expect("the gateway closed the connection in time")
        .ok();
    String::from_utf8_lossy(&out).into_owned()
}

async fn request(port: u16, raw: &str) -> String {
    let mut s = TcpStream::connect(("127.0.0.1", port))
        .await
        .expect("connect");
    s.write_all(raw.as_bytes()).await.expect("write");
    let mut out = Vec::new();
    s.read_to_end(&mut out).await.expect("read");
    String::from_utf8_lossy(&out).into_owned()
}

#[tokio::test]
async fn routes_by_host_balances_retries_and_reports_clear_errors() {
    let a = container("replica-a").await;
    let b = container("replica-b").await;
    let r = routes(
        vec![workload("hello", 8080, None), workload("idle", 8080, None)],
        vec![
            pod("hello-a", "hello", "p1", true),
            pod("hello-b", "hello", "p2", true),
            pod("hello-dead", "hello", "p3", true),
            pod("idle-a", "idle", "p1", false),
        ],
    );
    let dialer = Arc::new(DirectDialer {
        ports: [
            ("uid-hello-a".to_string(), a),
            ("uid-hello-b".to_string(), b),
        ]
        .into(),
        dials: AtomicUsize::new(0),
    });
    let gw = gateway(r, dialer.clone()).await;

    let mut seen = std::collections::BTreeSet::new();
    for _ in 0..6 {
        let resp = request(
            gw,
            "GET / HTTP/1.1\r\nHost: Hello.default.decloud.localhost:8000\r\nConnection: close\r\n\r\n",
        )
        .await;
        assert!(resp.starts_with("HTTP/1.1 200"), "{resp}");
        seen.insert(
            resp.rsplit("\r\n\r\n")
                .next()
                .unwrap_or_default()
                .to_string(),
        );
    }
    assert_eq!(seen.len(), 2, "both replicas served: {seen:?}");
    assert!(
        dialer.dials.load(Ordering::SeqCst) > 6,
        "the dead replica was tried and skipped"
    );

    let resp = request(gw, "GET / HTTP/1.1\r\nHost: nope.example.org\r\n\r\n").await;
    assert!(
        resp.starts_with("HTTP/1.1 404") && resp.contains("nope.example.org"),
        "{resp}"
    );
    let resp = request(
        gw,
        "GET / HTTP/1.1\r\nHost: idle.default.decloud.localhost\r\n\r\n",
    )
    .await;
    assert!(
        resp.starts_with("HTTP/1.1 503") && resp.contains("default/idle"),
        "{resp}"
    );
    let resp = request(gw, "GET / HTTP/1.1\r\n\r\n").await;
    assert!(resp.starts_with("HTTP/1.1 400"), "{resp}");
}

#[tokio::test]
async fn unreachable_replicas_answer_503_naming_no_provider() {
    let r = routes(
        vec![workload("hello", 8080, None)],
        vec![pod("hello-dead", "hello", "provider-alice", true)],
    );
    let dialer = Arc::new(DirectDialer {
        ports: HashMap::new(),
        dials: AtomicUsize::new(0),
    });
    let gw = gateway(r, dialer).await;
    let resp = request(
        gw,
        "GET / HTTP/1.1\r\nHost: hello.default.decloud.localhost\r\n\r\n",
    )
    .await;
    assert!(resp.starts_with("HTTP/1.1 503"), "{resp}");
    assert!(
        resp.to_ascii_lowercase().contains("retry-after: 1\r\n"),
        "{resp}"
    );
    assert!(!resp.contains("alice") && !resp.contains("edge-"), "{resp}");
}

#[tokio::test]
async fn slow_request_heads_are_cut_off() {
    let gw = one_replica(GatewayLimits {
        header_timeout: Duration::from_millis(300),
        ..Default::default()
    })
    .await;
    let mut s = TcpStream::connect(("127.0.0.1", gw))
        .await
        .expect("connect");
    s.write_all(b"GET / HTTP/1.1\r\nHost: hello.default.decl")
        .await
        .expect("write");
    let resp = read_until_closed(&mut s, Duration::from_secs(5)).await;
    assert!(resp.starts_with("HTTP/1.1 408"), "{resp}");
}

#[tokio::test]
async fn huge_request_heads_get_431() {
    let gw = one_replica(GatewayLimits {
        max_header_bytes: 8 * 1024,
        ..Default::default()
    })
    .await;
    let mut s = TcpStream::connect(("127.0.0.1", gw))
        .await
        .expect("connect");
    let big = format!(
        "GET / HTTP/1.1\r\nHost: hello.default.decloud.localhost\r\nX-Big: {}\r\n\r\n",
        "a".repeat(100 * 1024)
    );
    // The gateway may answer before it has read all of it.
    let _ = s.write_all(big.as_bytes()).await;
    let resp = read_until_closed(&mut s, Duration::from_secs(5)).await;
    assert!(resp.starts_with("HTTP/1.1 431"), "{resp}");
}

#[tokio::test]
async fn connections_beyond_the_cap_get_503_with_retry_after() {
    let gw = one_replica(GatewayLimits {
        max_connections: 2,
        retry_after: Duration::from_secs(3),
        ..Default::default()
    })
    .await;
    let mut held = Vec::new();
    for _ in 0..2 {
        let mut s = TcpStream::connect(("127.0.0.1", gw))
            .await
            .expect("connect");
        s.write_all(b"GET / HTTP/1.1\r\nHost: hello.default.decloud.localhost\r\n\r\n")
            .await
            .expect("write");
        let mut buf = [0u8; 64];
        let n = s.read(&mut buf).await.expect("read");
        assert!(buf[..n].starts_with(b"HTTP/1.1 200"));
        held.push(s);
    }
    let mut s = TcpStream::connect(("127.0.0.1", gw))
        .await
        .expect("connect");
    let resp = read_until_closed(&mut s, Duration::from_secs(5)).await;
    assert!(resp.starts_with("HTTP/1.1 503"), "{resp}");
    assert!(
        resp.to_ascii_lowercase().contains("retry-after: 3\r\n"),
        "{resp}"
    );
    // A slot freed is a slot served.
    held.pop();
    tokio::time::sleep(Duration::from_millis(100)).await;
    let resp = request(
        gw,
        "GET / HTTP/1.1\r\nHost: hello.default.decloud.localhost\r\nConnection: close\r\n\r\n",
    )
    .await;
    assert!(resp.starts_with("HTTP/1.1 200"), "{resp}");
}

#[tokio::test]
async fn forwarding_headers_are_the_gateways_on_every_request() {
    let gw = one_replica(GatewayLimits::default()).await;
    let mut s = TcpStream::connect(("127.0.0.1", gw))
        .await
        .expect("connect");
    let spoofed = "X-Forwarded-For: 6.6.6.6\r\nx-forwarded-proto: https\r\nX-Forwarded-Host: evil.example\r\nForwarded: for=6.6.6.6\r\n";
    // A request with a body, then one reusing the connection: both heads are rewritten.
    s.write_all(
        format!(
            "POST / HTTP/1.1\r\nHost: Hello.default.decloud.localhost:8000\r\n{spoofed}Content-Length: 5\r\n\r\nhello\
             GET /headers HTTP/1.1\r\nHost: hello.default.decloud.localhost:8000\r\n{spoofed}Connection: close\r\n\r\n"
        )
        .as_bytes(),
    )
    .await
    .expect("write");
    let resp = read_until_closed(&mut s, Duration::from_secs(5)).await;
    assert_eq!(resp.matches("HTTP/1.1 200").count(), 2, "{resp}");
    let seen = resp
        .rsplit("\r\n\r\n")
        .next()
        .unwrap_or_default()
        .to_ascii_lowercase();
    assert!(
        !seen.contains("6.6.6.6") && !seen.contains("evil") && !seen.contains("forwarded: for"),
        "{seen}"
    );
    assert!(seen.contains("x-forwarded-for: 127.0.0.1"), "{seen}");
    assert!(seen.contains("x-forwarded-proto: http\r\n"), "{seen}");
    assert!(
        seen.contains("x-forwarded-host: hello.default.decloud.localhost:8000"),
        "{seen}"
    );
}

#[tokio::test]
async fn a_refused_upgrade_lets_no_unread_request_through() {
    let gw = one_replica(GatewayLimits::default()).await;
    let mut s = TcpStream::connect(("127.0.0.1", gw))
        .await
        .expect("connect");
    // The app answers 200 to an upgrade it does not speak and keeps the connection open.
    s.write_all(
        b"GET / HTTP/1.1\r\nHost: hello.default.decloud.localhost\r\nUpgrade: nope\r\nConnection: Upgrade\r\n\r\n\
          GET /headers HTTP/1.1\r\nHost: hello.default.decloud.localhost\r\nX-Forwarded-For: 6.6.6.6\r\n\r\n",
    )
    .await
    .expect("write");
    let resp = read_until_closed(&mut s, Duration::from_secs(5)).await;
    assert!(resp.starts_with("HTTP/1.1 200"), "{resp}");
    assert!(!resp.contains("6.6.6.6"), "{resp}");
}

#[tokio::test]
async fn idle_connections_are_closed() {
    let gw = one_replica(GatewayLimits {
        idle_timeout: Duration::from_millis(500),
        ..Default::default()
    })
    .await;
    let mut s = TcpStream::connect(("127.0.0.1", gw))
        .await
        .expect("connect");
    s.write_all(b"GET /ws HTTP/1.1\r\nHost: hello.default.decloud.localhost\r\nUpgrade: echo\r\nConnection: Upgrade\r\n\r\n").await.expect("write");
    let mut head = vec![0u8; 256];
    let n = s.read(&mut head).await.expect("read");
    assert!(String::from_utf8_lossy(&head[..n]).starts_with("HTTP/1.1 101"));
    // Traffic keeps it open past the timeout...
    for _ in 0..4 {
        tokio::time::sleep(Duration::from_millis(250)).await;
        s.write_all(b"ping").await.expect("write");
        let mut echo = [0u8; 4];
        s.read_exact(&mut echo)
            .await
            .expect("still open while busy");
    }
    // ...silence closes it.
    let rest = read_until_closed(&mut s, Duration::from_secs(5)).await;
    assert_eq!(rest, "");
}

#[test]
fn ambiguous_framing_is_refused() {
    let peer = std::net::SocketAddr::from(([127, 0, 0, 1], 1));
    for head in [
        "POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 5\r\nTransfer-Encoding: chunked\r\n\r\n",
        "POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 5\r\nContent-Length: 6\r\n\r\n",
        "POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: gzip\r\n\r\n",
    ] {
        assert!(
            Request::parse(head.as_bytes(), peer, Proto::Http).is_err(),
            "{head}"
        );
    }
    let r = Request::parse(
        b"POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n",
        peer,
        Proto::Http,
    )
    .expect("chunked");
    assert_eq!(r.body, Body::Chunked);
}

#[tokio::test]
async fn chunked_bodies_are_followed_to_the_next_request() {
    let mut client_side = Vec::new();
    let body = b"5\r\nhello\r\n0\r\nX-Trailer: 1\r\n\r\nGET / HTTP/1.1\r\n".to_vec();
    let l = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let port = l.local_addr().expect("addr").port();
    let mut tx = TcpStream::connect(("127.0.0.1", port))
        .await
        .expect("connect");
    let (rx, _) = l.accept().await.expect("accept");
    tx.write_all(&body).await.expect("write");
    let (read, _w) = rx.into_split();
    let mut reader = ClientReader::new(read, Activity::new(), 1024);
    reader
        .copy_chunked(&mut client_side)
        .await
        .expect("chunked");
    assert_eq!(client_side, b"5\r\nhello\r\n0\r\nX-Trailer: 1\r\n\r\n");
    assert_eq!(reader.buf, b"GET / HTTP/1.1\r\n");
}

#[tokio::test]
async fn keep_alive_large_bodies_and_upgrades_pass_through() {
    let a = container("replica-a").await;
    let r = routes(
        vec![workload("hello", 8080, None)],
        vec![pod("hello-a", "hello", "p1", true)],
    );
    let dialer = Arc::new(DirectDialer {
        ports: [("uid-hello-a".to_string(), a)].into(),
        dials: AtomicUsize::new(0),
    });
    let gw = gateway(r, dialer).await;

    // Two requests on one connection, the second a 3 MiB body.
    let mut s = TcpStream::connect(("127.0.0.1", gw))
        .await
        .expect("connect");
    s.write_all(b"GET / HTTP/1.1\r\nHost: hello.default.decloud.localhost\r\n\r\nGET /big HTTP/1.1\r\nHost: hello.default.decloud.localhost\r\n\r\n").await.expect("write");
    let mut got = Vec::new();
    let want = 3 * 1024 * 1024;
    while got.iter().filter(|b| **b == b'x').count() < want {
        let mut chunk = [0u8; 65536];
        let n = s.read(&mut chunk).await.expect("read");
        assert!(n > 0, "connection closed early");
        got.extend_from_slice(&chunk[..n]);
    }
    let text = String::from_utf8_lossy(&got);
    assert_eq!(text.matches("HTTP/1.1 200").count(), 2);

    // An upgraded connection echoes raw bytes both ways.
    let mut s = TcpStream::connect(("127.0.0.1", gw))
        .await
        .expect("connect");
    s.write_all(b"GET /ws HTTP/1.1\r\nHost: hello.default.decloud.localhost\r\nUpgrade: echo\r\nConnection: Upgrade\r\n\r\n").await.expect("write");
    let mut head = vec![0u8; 256];
    let n = s.read(&mut head).await.expect("read");
    assert!(String::from_utf8_lossy(&head[..n]).starts_with("HTTP/1.1 101"));
    s.write_all(b"ping over the tunnel").await.expect("write");
    let mut echo = [0u8; 20];
    s.read_exact(&mut echo).await.expect("echo");
    assert_eq!(&echo, b"ping over the tunnel");
}

#[test]
fn host_parsing() {
    assert_eq!(
        host_of(b"GET / HTTP/1.1\r\nHost: A.B:80\r\n\r\n"),
        Ok("a.b".into())
    );
    assert_eq!(
        host_of(b"GET / HTTP/1.1\r\nhost: a.b.\r\n\r\n"),
        Ok("a.b".into())
    );
    assert!(host_of(b"GET / HTTP/1.1\r\n\r\n").is_err());
    assert!(host_of(b"\x00\x01garbage\r\n\r\n").is_err());
}

/// A gateway with HTTPS for `hello` (certificate for its host from `ca`) and `open` (same,
/// `insecureHttp: Allow`): (http port, https port, CA PEM).
async fn https_gateway() -> (u16, u16, String) {
    https_gateway_with(GatewayLimits::default()).await
}

async fn https_gateway_with(limits: GatewayLimits) -> (u16, u16, String) {
    https_gateway_answering(limits, crate::Http01Challenges::default()).await
}

async fn https_gateway_answering(
    limits: GatewayLimits,
    challenges: crate::Http01Challenges,
) -> (u16, u16, String) {
    use crate::tls::{
        CertStore, load_tls_secret,
        tests::{TestCa, secret},
    };
    let a = container("replica-a").await;
    let b = container("replica-b").await;
    let mut open = workload("open", 8080, None);
    open.spec.expose.as_mut().expect("expose").insecure_http = Some(InsecureHttp::Allow);
    let r = routes(
        vec![workload("hello", 8080, None), open],
        vec![
            pod("hello-a", "hello", "p1", true),
            pod("open-a", "open", "p1", true),
        ],
    );
    let dialer = Arc::new(DirectDialer {
        ports: [
            ("uid-hello-a".to_string(), a),
            ("uid-open-a".to_string(), b),
        ]
        .into(),
        dials: AtomicUsize::new(0),
    });
    let ca = TestCa::new();
    let store = CertStore::new();
    for wl in ["hello", "open"] {
        let host = format!("{wl}.default.decloud.localhost");
        let (crt, key) = ca.leaf(&[&host], 2025, 2100);
        let cert = load_tls_secret(
            &secret(crate::TLS_SECRET_TYPE, &crt, &key),
            &host,
            crate::tls::unix_now(),
        )
        .expect("loads");
        store.install(&format!("default/{wl}"), &host, cert);
    }
    let l = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let port = l.local_addr().expect("addr").port();
    let tl = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let tls_port = tl.local_addr().expect("addr").port();
    let https = Https {
        listener: tl,
        certificates: store,
        public_port: 8443,
        challenges,
    };
    tokio::spawn(serve_gateway(l, Some(https), r, dialer, limits));
    (port, tls_port, ca.pem)
}

/// A TLS client trusting only `ca_pem`, connected to `port` with SNI `host`.
async fn tls_connect(
    port: u16,
    host: &str,
    ca_pem: &str,
) -> std::io::Result<tokio_rustls::client::TlsStream<TcpStream>> {
    tls_connect_alpn(port, host, ca_pem, &[]).await
}

/// [`tls_connect`], offering `alpn`.
async fn tls_connect_alpn(
    port: u16,
    host: &str,
    ca_pem: &str,
    alpn: &[&[u8]],
) -> std::io::Result<tokio_rustls::client::TlsStream<TcpStream>> {
    use rustls::pki_types::{CertificateDer, ServerName, pem::PemObject};
    let mut roots = rustls::RootCertStore::empty();
    roots
        .add(CertificateDer::from_pem_slice(ca_pem.as_bytes()).expect("ca pem"))
        .expect("root");
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let config = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .expect("versions")
        .with_root_certificates(roots)
        .with_no_client_auth();
    let mut config = config;
    config.alpn_protocols = alpn.iter().map(|p| p.to_vec()).collect();
    let tcp = TcpStream::connect(("127.0.0.1", port)).await?;
    tokio_rustls::TlsConnector::from(Arc::new(config))
        .connect(ServerName::try_from(host.to_string()).expect("name"), tcp)
        .await
}

#[tokio::test]
async fn https_is_served_by_sni_through_the_same_proxy_path() {
    let (_, tls_port, ca) = https_gateway().await;
    let host = "hello.default.decloud.localhost";
    let mut s = tls_connect(tls_port, host, &ca).await.expect("handshake");
    s.write_all(
        format!(
            "GET /headers HTTP/1.1\r\nHost: {host}\r\nX-Forwarded-Proto: http\r\nConnection: close\r\n\r\n"
        )
        .as_bytes(),
    )
    .await
    .expect("write");
    let mut out = String::new();
    let _ = s.read_to_string(&mut out).await;
    assert!(out.starts_with("HTTP/1.1 200"), "{out}");
    assert!(out.contains("X-Forwarded-Proto: https"), "{out}");
    assert!(
        !out.contains("X-Forwarded-Proto: http\r"),
        "the client's forwarding headers are dropped: {out}"
    );
    // Unknown SNI (and a known Workload without a certificate) fail the handshake.
    assert!(
        tls_connect(tls_port, "nope.default.decloud.localhost", &ca)
            .await
            .is_err()
    );
}

#[tokio::test]
async fn http2_is_negotiated_by_alpn_and_carried_as_http1_to_the_app() {
    use http_body_util::{BodyExt, Empty};
    let (_, tls_port, ca) = https_gateway().await;
    let host = "hello.default.decloud.localhost";
    let s = tls_connect_alpn(tls_port, host, &ca, &[b"h2", b"http/1.1"])
        .await
        .expect("handshake");
    assert_eq!(s.get_ref().1.alpn_protocol(), Some(&b"h2"[..]));
    let (mut send, conn) = hyper::client::conn::http2::handshake(
        hyper_util::rt::TokioExecutor::new(),
        hyper_util::rt::TokioIo::new(s),
    )
    .await
    .expect("h2 handshake");
    tokio::spawn(conn);
    // Several streams on one connection, each to the app as HTTP/1.1 with the gateway's
    // forwarding headers (the client's dropped).
    for _ in 0..3 {
        let req = http::Request::get(format!("https://{host}/headers"))
            .header("x-forwarded-proto", "http")
            .body(Empty::<bytes::Bytes>::new())
            .expect("request");
        let rsp = send.send_request(req).await.expect("response");
        assert_eq!(rsp.status(), 200);
        assert_eq!(rsp.version(), http::Version::HTTP_2);
        let body = rsp.into_body().collect().await.expect("body").to_bytes();
        let head = String::from_utf8_lossy(&body);
        assert!(head.starts_with("GET /headers HTTP/1.1"), "{head}");
        assert!(head.contains("x-forwarded-proto: https"), "{head}");
        assert!(!head.contains("x-forwarded-proto: http\r"), "{head}");
        assert!(head.contains(&format!("host: {host}")), "{head}");
    }
    // Another host on the connection (whose certificate was checked for this one): 421.
    let req = http::Request::get("https://open.default.decloud.localhost/")
        .body(Empty::<bytes::Bytes>::new())
        .expect("request");
    assert_eq!(
        send.send_request(req).await.expect("response").status(),
        421
    );
    // A client offering only HTTP/1.1 gets it.
    let s = tls_connect_alpn(tls_port, host, &ca, &[b"http/1.1"])
        .await
        .expect("handshake");
    assert_eq!(s.get_ref().1.alpn_protocol(), Some(&b"http/1.1"[..]));
}

#[tokio::test]
async fn plain_http_for_a_host_with_a_certificate_is_redirected_unless_allowed() {
    let (port, _, _) = https_gateway().await;
    let out = request(
        port,
        "GET /a/b?c=d HTTP/1.1\r\nHost: hello.default.decloud.localhost:8080\r\n\r\n",
    )
    .await;
    assert!(out.starts_with("HTTP/1.1 308"), "{out}");
    assert!(
        out.contains("location: https://hello.default.decloud.localhost:8443/a/b?c=d\r\n"),
        "{out}"
    );
    let out = request(
        port,
        "GET / HTTP/1.1\r\nHost: open.default.decloud.localhost\r\nConnection: close\r\n\r\n",
    )
    .await;
    assert!(
        out.starts_with("HTTP/1.1 200"),
        "insecureHttp: Allow: {out}"
    );
}

#[tokio::test]
async fn acme_challenges_are_answered_before_redirects_for_their_own_host_only() {
    let challenges = crate::Http01Challenges::default();
    assert!(challenges.publish(
        "hello.default.decloud.localhost",
        "tok-1_A",
        "tok-1_A.thumb"
    ));
    assert!(
        !challenges.publish("x", "bad/token", "k"),
        "a token is base64url"
    );
    assert!(
        !challenges.publish("x", &"a".repeat(200), "k"),
        "a token is short"
    );
    let (port, _, _) = https_gateway_answering(GatewayLimits::default(), challenges.clone()).await;
    let ask = |host: &str, token: &str| {
        format!(
            "GET /.well-known/acme-challenge/{token} HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\n\r\n"
        )
    };
    let out = request(port, &ask("hello.default.decloud.localhost", "tok-1_A")).await;
    assert!(out.starts_with("HTTP/1.1 200"), "{out}");
    assert!(out.ends_with("\r\n\r\ntok-1_A.thumb"), "{out}");
    // Another host's token, or an unknown one, is not answered: the usual redirect.
    let out = request(port, &ask("open.default.decloud.localhost", "tok-1_A")).await;
    assert!(!out.contains("tok-1_A.thumb"), "{out}");
    let out = request(port, &ask("hello.default.decloud.localhost", "tok-2")).await;
    assert!(out.starts_with("HTTP/1.1 308"), "{out}");
    challenges.withdraw("tok-1_A");
    let out = request(port, &ask("hello.default.decloud.localhost", "tok-1_A")).await;
    assert!(out.starts_with("HTTP/1.1 308"), "withdrawn: {out}");
}

#[tokio::test]
async fn tls_handshakes_are_bounded_by_the_header_timeout_and_share_the_connection_cap() {
    let limits = GatewayLimits {
        header_timeout: Duration::from_millis(300),
        max_connections: 1,
        ..GatewayLimits::default()
    };
    let (port, tls_port, ca) = https_gateway_with(limits).await;
    let host = "hello.default.decloud.localhost";
    // A client that connects and never says hello is closed after the header timeout.
    let mut silent = TcpStream::connect(("127.0.0.1", tls_port))
        .await
        .expect("connect");
    let out = read_until_closed(&mut silent, Duration::from_secs(3)).await;
    assert!(out.is_empty(), "{out}");
    drop(silent);
    tokio::time::sleep(Duration::from_millis(100)).await;
    // One plain HTTP connection holds the only slot: a TLS client gets no handshake.
    let mut held = TcpStream::connect(("127.0.0.1", port))
        .await
        .expect("connect");
    held.write_all(b"GET / HTTP/1.1\r\nHost: open.default.decloud.localhost\r\n\r\n")
        .await
        .expect("write");
    let mut first = [0u8; 12];
    held.read_exact(&mut first).await.expect("answer");
    assert_eq!(&first, b"HTTP/1.1 200");
    assert!(
        tls_connect(tls_port, host, &ca).await.is_err(),
        "the cap is shared by both listeners"
    );
    drop(held);
    // The slot comes back once the gateway has seen the close.
    let mut ok = false;
    for _ in 0..40 {
        tokio::time::sleep(Duration::from_millis(50)).await;
        if tls_connect(tls_port, host, &ca).await.is_ok() {
            ok = true;
            break;
        }
    }
    assert!(ok, "a slot is free again");
}
