//! `https`: the gateway's HTTPS (TLS termination by SNI, certificate from a
//! `kubernetes.io/tls` Secret) against its plain HTTP, to the same container through the same
//! tunnel: full TLS handshakes/s alone (no session resumption, no request), requests/s with a
//! new connection per request, and requests/s on keep-alive connections (HTTP/1.1) and on one
//! HTTP/2 connection per client.
//!
//! Two apps in one Workload each: busybox httpd (answers one request per connection) for the
//! new-connection figures, and a keep-alive responder (a shell loop under `nc`, answering
//! `ok` with a Content-Length to every request on a connection) for the keep-alive figures.

use std::{
    net::SocketAddr,
    sync::{
        Arc,
        atomic::{AtomicU64, Ordering},
    },
    time::{Duration, Instant},
};

use anyhow::{Context as _, ensure};
use k8s_openapi::api::core::v1::Secret;
use kube::{Api, api::PostParams};
use rcgen::{BasicConstraints, CertificateParams, IsCa, Issuer, KeyPair};
use rustls::pki_types::{CertificateDer, ServerName, pem::PemObject};
use serde_json::{Value, json};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::TcpStream;

use crate::{eventually, free_port};

use super::{
    cluster::BenchCluster,
    harness::{NS, Opts, check_workload_ready, create_workload, test_image, web_server, workload},
    report::{Row, ScenarioReport},
};

const CLOSE_WL: &str = "https-close";
const KEEP_WL: &str = "https-keep";
const IO_TIMEOUT: Duration = Duration::from_secs(30);

fn host(wl: &str) -> String {
    format!("{wl}.{NS}.decloud.localhost")
}

/// The keep-alive responder: every request on a connection gets `ok`.
fn keep_alive_server() -> Value {
    // No fork per line: the blank line ending a head is "\r" (or empty), header lines longer.
    let script = "cat > /ka.sh <<'EOF'\n#!/bin/sh\nwhile read -r line; do\n  if [ ${#line} -le 1 ]; then printf 'HTTP/1.1 200 OK\\r\\nContent-Length: 3\\r\\n\\r\\nok\\n'; fi\ndone\nEOF\nchmod +x /ka.sh; exec nc -ll -p 8080 -e /ka.sh";
    json!({
        "name": "web", "image": test_image(), "imagePullPolicy": "IfNotPresent",
        "command": ["/bin/sh", "-c", script],
        "ports": [{"name": "http", "containerPort": 8080, "protocol": "TCP"}],
        "resources": {"requests": {"cpu": "10m", "memory": "8Mi"}, "limits": {"cpu": "1", "memory": "256Mi"}},
    })
}

/// A CA and a leaf for `hosts`: (CA PEM, leaf chain PEM, key PEM).
fn certificate(hosts: &[String]) -> anyhow::Result<(String, String, String)> {
    let ca_key = KeyPair::generate()?;
    let mut ca = CertificateParams::new(Vec::<String>::new())?;
    ca.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    ca.distinguished_name
        .push(rcgen::DnType::CommonName, "decloud-bench-https-ca");
    let ca_pem = ca.self_signed(&ca_key)?.pem();
    let key = KeyPair::generate()?;
    let leaf = CertificateParams::new(hosts.to_vec())?
        .signed_by(&key, &Issuer::from_params(&ca, &ca_key))?;
    Ok((ca_pem, leaf.pem(), key.serialize_pem()))
}

/// How a benchmark client reaches the gateway.
#[derive(Clone)]
struct Dial {
    port: u16,
    host: String,
    /// `None`: plain HTTP.
    tls: Option<Arc<rustls::ClientConfig>>,
}

trait Stream: AsyncRead + AsyncWrite + Unpin + Send {}
impl<T: AsyncRead + AsyncWrite + Unpin + Send> Stream for T {}

impl Dial {
    async fn connect(&self) -> anyhow::Result<Box<dyn Stream>> {
        let tcp = TcpStream::connect(SocketAddr::from(([127, 0, 0, 1], self.port))).await?;
        tcp.set_nodelay(true)?;
        Ok(match &self.tls {
            None => Box::new(tcp),
            Some(c) => Box::new(
                tokio_rustls::TlsConnector::from(c.clone())
                    .connect(ServerName::try_from(self.host.clone())?, tcp)
                    .await?,
            ),
        })
    }

    /// One request on `s`: the response's status line starts with 200; reads to the end of
    /// the body (by Content-Length, else to the end of the stream).
    async fn request(&self, s: &mut Box<dyn Stream>, close: bool) -> anyhow::Result<()> {
        let conn = if close { "close" } else { "keep-alive" };
        s.write_all(
            format!(
                "GET / HTTP/1.1\r\nHost: {}\r\nConnection: {conn}\r\n\r\n",
                self.host
            )
            .as_bytes(),
        )
        .await?;
        let mut buf = Vec::with_capacity(512);
        let mut chunk = [0u8; 4096];
        let head_end = loop {
            if let Some(i) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
                break i + 4;
            }
            let n = s.read(&mut chunk).await?;
            ensure!(n > 0, "closed before the response head");
            buf.extend_from_slice(&chunk[..n]);
        };
        let head = String::from_utf8_lossy(&buf[..head_end]).to_ascii_lowercase();
        ensure!(head.starts_with("http/1.1 200"), "{head}");
        let length = head.lines().find_map(|l| {
            l.strip_prefix("content-length:")
                .and_then(|v| v.trim().parse::<usize>().ok())
        });
        match length {
            Some(n) => {
                while buf.len() < head_end + n {
                    let got = s.read(&mut chunk).await?;
                    ensure!(got > 0, "closed mid-body");
                    buf.extend_from_slice(&chunk[..got]);
                }
            }
            None => while s.read(&mut chunk).await? > 0 {},
        }
        Ok(())
    }
}

/// Runs `clients` loops of `one` for `window`: operations per second and failures.
async fn rate<F, Fut>(clients: usize, window: Duration, one: F) -> (f64, u64)
where
    F: Fn() -> Fut + Clone + Send + 'static,
    Fut: std::future::Future<Output = anyhow::Result<u64>> + Send,
{
    let done = Arc::new(AtomicU64::new(0));
    let failed = Arc::new(AtomicU64::new(0));
    let started = Instant::now();
    let deadline = started + window;
    let mut tasks = Vec::new();
    for _ in 0..clients {
        let (one, done, failed) = (one.clone(), done.clone(), failed.clone());
        tasks.push(tokio::spawn(async move {
            while Instant::now() < deadline {
                match tokio::time::timeout(IO_TIMEOUT, one()).await {
                    Ok(Ok(n)) => {
                        done.fetch_add(n, Ordering::Relaxed);
                    }
                    _ => {
                        failed.fetch_add(1, Ordering::Relaxed);
                    }
                }
            }
        }));
    }
    for t in tasks {
        let _ = t.await;
    }
    let secs = started.elapsed().as_secs_f64();
    (
        done.load(Ordering::Relaxed) as f64 / secs,
        failed.load(Ordering::Relaxed),
    )
}

/// Runs the scenario.
pub async fn run(opts: Opts) -> anyhow::Result<ScenarioReport> {
    let mut report = ScenarioReport::new("https");
    let (window, clients) = if opts.quick {
        (Duration::from_secs(3), 8)
    } else {
        (Duration::from_secs(10), 16)
    };
    let https_port = free_port()?;
    let listen = format!("127.0.0.1:{https_port}");
    let public = https_port.to_string();
    let cluster = BenchCluster::start(
        "https",
        1,
        &["--https-listen", &listen, "--https-public-port", &public],
    )
    .await?;
    let client = cluster.env.client();
    let hosts = vec![host(CLOSE_WL), host(KEEP_WL)];
    let (ca, crt, key) = certificate(&hosts)?;
    let secret: Secret = serde_json::from_value(json!({
        "apiVersion": "v1", "kind": "Secret",
        "metadata": {"name": "bench-https-cert", "namespace": NS},
        "type": "kubernetes.io/tls",
        "stringData": {"tls.crt": crt, "tls.key": key},
    }))?;
    Api::<Secret>::namespaced(client.clone(), NS)
        .create(&PostParams::default(), &secret)
        .await?;
    for (name, container) in [(CLOSE_WL, web_server(1, 2)), (KEEP_WL, keep_alive_server())] {
        let mut wl = workload(name, 1, "Required", container, None)?;
        let mut spec = serde_json::to_value(&wl.spec)?;
        // Plain HTTP stays served (no redirect) so both schemes reach the same app.
        spec["expose"]["tls"] = json!({"secretName": "bench-https-cert"});
        spec["expose"]["insecureHttp"] = json!("Allow");
        wl.spec = serde_json::from_value(spec)?;
        create_workload(&client, &wl).await?;
    }
    for name in [CLOSE_WL, KEEP_WL] {
        eventually(Duration::from_secs(90), || {
            check_workload_ready(&client, name)
        })
        .await?;
    }
    let mut roots = rustls::RootCertStore::empty();
    roots.add(CertificateDer::from_pem_slice(ca.as_bytes())?)?;
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut tls = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()?
        .with_root_certificates(roots)
        .with_no_client_auth();
    // Every connection a full handshake: no resumption.
    tls.resumption = rustls::client::Resumption::disabled();
    let mut h1 = tls.clone();
    h1.alpn_protocols = vec![b"http/1.1".to_vec()];
    let mut h2 = tls;
    h2.alpn_protocols = vec![b"h2".to_vec()];
    let dial = |wl: &str, tls: Option<&rustls::ClientConfig>| Dial {
        port: if tls.is_some() {
            https_port
        } else {
            cluster.gateway_port
        },
        host: host(wl),
        tls: tls.map(|c| Arc::new(c.clone())),
    };
    let (http_close, https_close) = (dial(CLOSE_WL, None), dial(CLOSE_WL, Some(&h1)));
    let (http_keep, https_keep) = (dial(KEEP_WL, None), dial(KEEP_WL, Some(&h1)));
    // Warm up: every path answers.
    for d in [&http_close, &https_close, &http_keep, &https_keep] {
        eventually(Duration::from_secs(30), || async {
            let mut s = d.connect().await?;
            d.request(&mut s, true).await
        })
        .await
        .with_context(|| format!("warm-up {}:{}", d.host, d.port))?;
    }

    // Handshakes alone: connect, full TLS handshake, close.
    let d = https_close.clone();
    let (handshakes, hs_failed) = rate(clients, window, move || {
        let d = d.clone();
        async move {
            d.connect().await?;
            Ok(1)
        }
    })
    .await;
    report.row(Row::info(
        format!("TLS full handshakes/s alone ({clients} clients, no request)"),
        format!("{handshakes:.0} ({hs_failed} failed)"),
    ));

    // A new connection per request.
    let mut per_conn = Vec::new();
    for (label, d) in [("HTTP", &http_close), ("HTTPS", &https_close)] {
        let d = d.clone();
        let (rps, failed) = rate(clients, window, move || {
            let d = d.clone();
            async move {
                let mut s = d.connect().await?;
                d.request(&mut s, true).await?;
                Ok(1)
            }
        })
        .await;
        report.row(Row::info(
            format!("{label}: requests/s, new connection each ({clients} clients)"),
            format!("{rps:.0} ({failed} failed)"),
        ));
        per_conn.push(rps);
    }

    // Keep-alive: each client keeps one connection and sends requests on it in turn.
    let per_batch = 20u64;
    let mut keep = Vec::new();
    for (label, d) in [("HTTP", &http_keep), ("HTTPS", &https_keep)] {
        let d = d.clone();
        let (rps, failed) = rate(clients, window, move || {
            let d = d.clone();
            async move {
                let mut s = d.connect().await?;
                for _ in 0..per_batch {
                    d.request(&mut s, false).await?;
                }
                Ok(per_batch)
            }
        })
        .await;
        report.row(Row::info(
            format!("{label}: requests/s on keep-alive connections ({per_batch} a connection, {clients} clients)"),
            format!("{rps:.0} ({failed} failed)"),
        ));
        keep.push(rps);
    }

    // HTTP/2: one connection per client, requests one after another on it.
    let h2_host = host(KEEP_WL);
    let h2_cfg = Arc::new(h2);
    let (h2_rps, h2_failed) = rate(clients, window, move || {
        let (cfg, host) = (h2_cfg.clone(), h2_host.clone());
        async move {
            use http_body_util::{BodyExt, Empty};
            let tcp = TcpStream::connect(SocketAddr::from(([127, 0, 0, 1], https_port))).await?;
            let tls = tokio_rustls::TlsConnector::from(cfg)
                .connect(ServerName::try_from(host.clone())?, tcp)
                .await?;
            let (mut send, conn) = hyper::client::conn::http2::handshake(
                hyper_util::rt::TokioExecutor::new(),
                hyper_util::rt::TokioIo::new(tls),
            )
            .await?;
            tokio::spawn(conn);
            for _ in 0..per_batch {
                let req = http::Request::get(format!("https://{host}/"))
                    .body(Empty::<bytes::Bytes>::new())?;
                let rsp = send.send_request(req).await?;
                ensure!(rsp.status() == 200, "h2: {}", rsp.status());
                rsp.into_body().collect().await?;
            }
            Ok(per_batch)
        }
    })
    .await;
    report.row(Row::info(
        format!(
            "HTTPS h2: requests/s, {per_batch} streams in turn a connection ({clients} clients)"
        ),
        format!("{h2_rps:.0} ({h2_failed} failed)"),
    ));

    let cost_ms = |fast: f64, slow: f64| {
        (clients as f64 / slow.max(1e-9) - clients as f64 / fast.max(1e-9)) * 1000.0
    };
    report.note(format!(
        "cost per new connection: HTTPS adds {:.2} ms of latency per request with a new connection each ({:.0} % of HTTP's rate); on keep-alive connections HTTPS runs at {:.0} % of HTTP's rate, so the handshake is what a new connection costs: ≈ {:.2} ms of the machine's time each (1 / handshakes/s alone; the client and the gateway share the same 2 cores)",
        cost_ms(per_conn[0], per_conn[1]),
        per_conn[1] / per_conn[0].max(1e-9) * 100.0,
        keep[1] / keep[0].max(1e-9) * 100.0,
        1000.0 / handshakes.max(1e-9),
    ));
    report.set(
        "figures",
        json!({
            "handshakes_per_s": handshakes,
            "new_connection_rps": {"http": per_conn[0], "https": per_conn[1]},
            "keep_alive_rps": {"http": keep[0], "https": keep[1]},
            "h2_rps": h2_rps,
        }),
    );
    drop(cluster);
    Ok(report)
}
