//! The public HTTP listener: reads a request head to learn the Host, picks a ready replica and
//! carries the client connection through a tunnel to it.
//!
//! Every request head the client sends is read (within [`GatewayLimits::header_timeout`], at
//! most [`GatewayLimits::max_header_bytes`]) and forwarded with `X-Forwarded-For`,
//! `X-Forwarded-Proto` and `X-Forwarded-Host` set by the gateway (whatever the client sent
//! under those names, or as `Forwarded`, is dropped), so apps see the real client. Bodies
//! (`Content-Length` or chunked) and responses are copied as bytes, so keep-alive, large
//! bodies and upgraded connections (WebSocket) pass; once the app answers an `Upgrade` request
//! with 101 the connection is raw bytes both ways (an app answering otherwise gets no further
//! request on that connection). A connection stays with the replica it was given, as with any
//! layer-4 balancer after routing, and ends after [`GatewayLimits::idle_timeout`] without a
//! byte either way. Beyond [`GatewayLimits::max_connections`] clients get 503 with
//! `Retry-After`. No answer names a provider or node.
//!
//! With [`Https`], a second listener terminates TLS (certificate by SNI from a [`CertStore`],
//! see `tls`) and hands the decrypted stream to the same request path, with
//! `X-Forwarded-Proto: https`. The handshake must finish within the header timeout, and both
//! listeners share one connection cap (over it, HTTPS clients are just closed: a 503 needs a
//! handshake). Plain HTTP requests for a host whose certificate is in force get `308` to
//! `https://` unless its Workload says `insecureHttp: Allow`.

use std::{net::SocketAddr, sync::Arc, time::Duration};

use tokio::{
    io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt},
    net::TcpListener,
    sync::Semaphore,
};

use decloud_crds::InsecureHttp;
use tokio_rustls::TlsAcceptor;

use crate::activity::{Activity, COPY_BUFFER, copy_marking};
use crate::limits::GatewayLimits;
use crate::routes::{Route, Routes, bare_host};
use crate::seams::TunnelDialer;
use crate::tcp::{TcpExposure, serve_tcp};
use crate::tls::{ACME_CHALLENGE_PATH, CertStore, Http01Challenges, SniResolver, server_config};

/// Longest chunk-size or trailer line of a chunked request body.
const MAX_CHUNK_LINE: usize = 4096;
/// Connections over the cap being answered 503 at once; beyond that they are just closed.
const REFUSING: usize = 256;
/// How long an over-the-cap client is given to take its 503.
const REFUSE_TIMEOUT: Duration = Duration::from_secs(1);

/// The HTTPS listener of the gateway.
pub struct Https {
    /// Where TLS clients connect.
    pub listener: TcpListener,
    /// Certificates by host.
    pub certificates: CertStore,
    /// The port clients reach HTTPS on (in redirects; omitted when 443).
    pub public_port: u16,
    /// ACME HTTP-01 answers, given on the plain HTTP listener before any redirect or route.
    pub challenges: Http01Challenges,
}

/// What both listeners share.
struct Shared {
    routes: Routes,
    dialer: Arc<dyn TunnelDialer>,
    limits: GatewayLimits,
    slots: Arc<Semaphore>,
    refusing: Arc<Semaphore>,
    /// The resolver and the public HTTPS port, when HTTPS is served.
    https: Option<(Arc<SniResolver>, u16)>,
    /// ACME HTTP-01 answers, when HTTPS is served.
    challenges: Option<Http01Challenges>,
}

impl Shared {
    /// Where a plain HTTP request for `host` to `target` is redirected, if it is.
    fn redirect(&self, host: &str, target: &str) -> Option<String> {
        let (resolver, port) = self.https.as_ref()?;
        let wl = self.routes.owner_workload(host)?;
        let policy = wl
            .spec
            .expose
            .as_ref()
            .and_then(|e| e.insecure_http)
            .unwrap_or_default();
        if policy == InsecureHttp::Allow || resolver.certificate_for(host).is_none() {
            return None;
        }
        let port = if *port == 443 {
            String::new()
        } else {
            format!(":{port}")
        };
        let target = if target.starts_with('/') { target } else { "/" };
        Some(format!("https://{host}{port}{target}"))
    }
}

/// Serves the gateway on `listener` (and HTTPS on `https`, if given) within `limits` until the
/// task is dropped.
pub async fn serve_gateway(
    listener: TcpListener,
    https: Option<Https>,
    routes: Routes,
    dialer: Arc<dyn TunnelDialer>,
    limits: GatewayLimits,
) {
    serve_gateway_with_tcp(listener, https, None, routes, dialer, limits).await;
}

/// [`serve_gateway`], plus raw TCP exposure on the ports of `tcp` (see `tcp`), all under one
/// connection cap.
pub async fn serve_gateway_with_tcp(
    listener: TcpListener,
    https: Option<Https>,
    tcp: Option<TcpExposure>,
    routes: Routes,
    dialer: Arc<dyn TunnelDialer>,
    limits: GatewayLimits,
) {
    let challenges = https.as_ref().map(|h| h.challenges.clone());
    let (https_listener, acceptor, resolver) = match https {
        Some(h) => {
            let resolver = Arc::new(SniResolver::new(h.certificates, routes.clone()));
            let config = server_config(resolver.clone());
            (
                Some(h.listener),
                Some(TlsAcceptor::from(config)),
                Some((resolver, h.public_port)),
            )
        }
        None => (None, None, None),
    };
    let shared = Arc::new(Shared {
        routes,
        dialer,
        slots: Arc::new(Semaphore::new(limits.max_connections)),
        refusing: Arc::new(Semaphore::new(REFUSING)),
        limits,
        https: resolver,
        challenges,
    });
    let http = accept_loop(listener, shared.clone(), None);
    let tcp = async {
        if let Some(tcp) = tcp {
            serve_tcp(
                tcp,
                shared.routes.clone(),
                shared.dialer.clone(),
                shared.limits.clone(),
                shared.slots.clone(),
            )
            .await;
        }
    };
    match (https_listener, acceptor) {
        (Some(l), Some(a)) => {
            tokio::join!(http, accept_loop(l, shared.clone(), Some(a)), tcp);
        }
        _ => {
            tokio::join!(http, tcp);
        }
    }
}

/// Accepts clients on `listener`: plain HTTP, or TLS through `tls`.
async fn accept_loop(listener: TcpListener, shared: Arc<Shared>, tls: Option<TlsAcceptor>) {
    loop {
        let (conn, peer) = match listener.accept().await {
            Ok(c) => c,
            Err(e) => {
                tracing::warn!(error = %e, "gateway accept failed");
                tokio::time::sleep(Duration::from_millis(50)).await;
                continue;
            }
        };
        let _ = conn.set_nodelay(true);
        let Ok(slot) = shared.slots.clone().try_acquire_owned() else {
            tracing::debug!(%peer, "gateway at its connection cap; refusing");
            if tls.is_some() {
                // An answer would need a handshake first: closing is the cheap refusal.
                continue;
            }
            if let Ok(permit) = shared.refusing.clone().try_acquire_owned() {
                let retry = shared.limits.retry_after_secs();
                tokio::spawn(async move {
                    let _permit = permit;
                    let mut conn = conn;
                    let _ = tokio::time::timeout(REFUSE_TIMEOUT, async {
                        let _ = respond(
                            &mut conn,
                            503,
                            "the gateway is busy; try again shortly\n",
                            Some(retry),
                        )
                        .await;
                        // Drain what the client sent, so closing does not reset the answer.
                        let mut sink = [0u8; 4096];
                        while matches!(conn.read(&mut sink).await, Ok(n) if n > 0) {}
                    })
                    .await;
                });
            }
            continue;
        };
        let shared = shared.clone();
        let tls = tls.clone();
        tokio::spawn(async move {
            let _slot = slot;
            let r = match tls {
                None => handle(conn, peer, Proto::Http, &shared).await,
                // The handshake is part of the request head's time budget.
                Some(acceptor) => {
                    match tokio::time::timeout(shared.limits.header_timeout, acceptor.accept(conn))
                        .await
                    {
                        // HTTP/2 when the client picked it by ALPN; else the HTTP/1 path.
                        Ok(Ok(tls)) if tls.get_ref().1.alpn_protocol() == Some(b"h2") => {
                            let sni = tls.get_ref().1.server_name().map(str::to_ascii_lowercase);
                            let h2 = crate::h2::H2 {
                                routes: shared.routes.clone(),
                                dialer: shared.dialer.clone(),
                                limits: shared.limits.clone(),
                            };
                            crate::h2::serve_h2(tls, peer, sni, Arc::new(h2)).await
                        }
                        Ok(Ok(tls)) => handle(tls, peer, Proto::Https, &shared).await,
                        Ok(Err(e)) => {
                            tracing::debug!(%peer, error = %e, "TLS handshake failed");
                            Ok(())
                        }
                        Err(_) => {
                            tracing::debug!(%peer, "TLS handshake not done in time");
                            Ok(())
                        }
                    }
                }
            };
            if let Err(e) = r {
                tracing::debug!(%peer, error = %e, "gateway connection ended with an error");
            }
        });
    }
}

/// The scheme a client reached the gateway by.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Proto {
    Http,
    Https,
}

impl Proto {
    fn as_str(self) -> &'static str {
        match self {
            Self::Http => "http",
            Self::Https => "https",
        }
    }
}

async fn handle<S>(conn: S, peer: SocketAddr, proto: Proto, shared: &Shared) -> std::io::Result<()>
where
    S: AsyncRead + AsyncWrite + Send + Unpin,
{
    let (routes, dialer, limits) = (&shared.routes, shared.dialer.as_ref(), &shared.limits);
    let (read, mut write) = tokio::io::split(conn);
    let activity = Activity::new();
    let mut client = ClientReader::new(read, activity.clone(), limits.max_header_bytes);
    let head = match tokio::time::timeout(limits.header_timeout, client.read_head()).await {
        Ok(Ok(Head::Complete(head))) => head,
        Ok(Ok(Head::Closed)) => return Ok(()),
        Ok(Ok(Head::TooLarge)) => {
            let r = respond(&mut write, 431, "request header fields too large\n", None).await;
            client.linger().await;
            return r;
        }
        Ok(Err(e)) => return Err(e),
        Err(_) => {
            let r = respond(&mut write, 408, "request head not received in time\n", None).await;
            client.linger().await;
            return r;
        }
    };
    let request = match Request::parse(&head, peer, proto) {
        Ok(r) => r,
        Err(msg) => return respond(&mut write, 400, &format!("{msg}\n"), None).await,
    };
    // ACME HTTP-01: the gateway itself answers the CA's validation request for a host it
    // orders a certificate for, before any redirect or route.
    if proto == Proto::Http
        && let Some(token) = request.target.strip_prefix(ACME_CHALLENGE_PATH)
        && let Some(answer) = shared
            .challenges
            .as_ref()
            .and_then(|c| c.answer(&request.host, token))
    {
        let r = respond(&mut write, 200, &answer, None).await;
        client.linger().await;
        return r;
    }
    if proto == Proto::Http
        && let Some(location) = shared.redirect(&request.host, &request.target)
    {
        let r = redirect(&mut write, &location).await;
        client.linger().await;
        return r;
    }
    let retry = Some(limits.retry_after_secs());
    let (workload, backends) = match routes.resolve(&request.host) {
        Route::Unknown => {
            let msg = format!("no DeCloud workload is exposed as {}\n", request.host);
            return respond(&mut write, 404, &msg, None).await;
        }
        Route::NoReady { workload, desired } => {
            let msg = format!(
                "workload {workload} has no ready replica (0/{desired} ready); try again shortly\n"
            );
            return respond(&mut write, 503, &msg, retry).await;
        }
        Route::Backends { workload, backends } => (workload, backends),
    };
    let mut tunnel = None;
    for backend in &backends {
        match dialer.dial(backend).await {
            Ok(t) => {
                tracing::debug!(%workload, pod = %backend.pod, "gateway connection routed");
                tunnel = Some(t);
                break;
            }
            Err(e) => {
                // The reason (naming the provider) stays in the log, never in the answer.
                tracing::warn!(%workload, pod = %backend.pod, error = %e, reason = e.metric_label(), "replica unreachable; trying the next");
            }
        }
    }
    let Some(tunnel) = tunnel else {
        let msg = format!(
            "no replica of workload {workload} could be reached ({} tried); try again shortly\n",
            backends.len()
        );
        return respond(&mut write, 503, &msg, retry).await;
    };
    let (tunnel_read, mut tunnel_write) = tokio::io::split(tunnel);
    let (first_status_tx, first_status_rx) = tokio::sync::oneshot::channel();
    let up = async {
        let r = forward_requests(
            &mut client,
            request,
            &mut tunnel_write,
            first_status_rx,
            peer,
            proto,
            limits,
        )
        .await;
        let _ = tunnel_write.shutdown().await;
        r
    };
    let down = async {
        let r = copy_responses(tunnel_read, &mut write, &activity, first_status_tx).await;
        let _ = write.shutdown().await;
        r
    };
    tokio::select! {
        (up, down) = async { tokio::join!(up, down) } => up.and(down),
        () = activity.idle_for(limits.idle_timeout) => {
            tracing::debug!(%peer, %workload, "gateway connection idle; closed");
            Ok(())
        }
    }
}

/// Forwards `first` and every later request head (rewritten) and body to the tunnel, until
/// the client closes, upgrades the connection, or breaks the protocol.
async fn forward_requests<R: AsyncRead + Unpin, W: AsyncWrite + Unpin>(
    client: &mut ClientReader<R>,
    first: Request,
    tunnel: &mut W,
    first_status: tokio::sync::oneshot::Receiver<u16>,

    peer: SocketAddr,
    proto: Proto,
    limits: &GatewayLimits,
) -> std::io::Result<()> {
    let host = first.host.clone();
    let mut request = first;
    let mut first_status = Some(first_status);
    loop {
        tunnel.write_all(&request.forwarded).await?;
        if !matches!(request.body, Body::Raw) {
            first_status = None;
        }
        match request.body {
            Body::Length(n) => client.copy_exact(n, tunnel).await?,
            Body::Chunked => client.copy_chunked(tunnel).await?,
            Body::Raw => {
                // Raw bytes follow only once the app switched protocols (101; 2xx for
                // CONNECT) in answer to this, the connection's first request, or answered
                // with no HTTP status line at all (not an HTTP app). An HTTP answer refusing
                // the upgrade ends forwarding: later requests must not pass unread (with the
                // client's own X-Forwarded-*).
                // An upgrade later on a keep-alive connection is not followed (clients open
                // a fresh connection for WebSocket).
                let Some(rx) = first_status.take() else {
                    return Ok(());
                };
                let switched = rx.await.unwrap_or(NOT_HTTP);
                let connect = request.method_connect;
                if switched == NOT_HTTP
                    || switched == 101
                    || (connect && (200..300).contains(&switched))
                {
                    return client.copy_rest(tunnel).await;
                }
                return Ok(());
            }
        }
        // Between requests a client may idle (the idle timeout covers that); once it starts
        // a head it must finish it in time.
        if !client.wait_for_byte().await? {
            return Ok(());
        }
        let head = match tokio::time::timeout(limits.header_timeout, client.read_head()).await {
            Ok(Ok(Head::Complete(head))) => head,
            Ok(Ok(Head::Closed)) => return Ok(()),
            Ok(Ok(Head::TooLarge)) | Err(_) => return Ok(()),
            Ok(Err(e)) => return Err(e),
        };
        request = match Request::parse(&head, peer, proto) {
            // A connection routed for one host carries only that host's requests.
            Ok(r) if r.host == host => r,
            _ => return Ok(()),
        };
    }
}

// === impl Request ===

/// How a request's body is delimited.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Body {
    /// `Content-Length` bytes (0 without a body).
    Length(u64),
    /// `Transfer-Encoding: chunked`.
    Chunked,
    /// An upgrade or CONNECT: raw bytes follow.
    Raw,
}

/// A parsed request head and what the gateway sends on in its place.
#[derive(Debug)]
struct Request {
    /// Host, lower-cased, without port or trailing dot.
    host: String,
    body: Body,
    /// A CONNECT request.
    method_connect: bool,
    /// The request target (path and query).
    target: String,
    /// The head as forwarded: the client's headers minus the forwarding ones, plus the
    /// gateway's.
    forwarded: Vec<u8>,
}

/// Headers only the gateway may set.
const FORWARDING_HEADERS: [&str; 4] = [
    "x-forwarded-for",
    "x-forwarded-proto",
    "x-forwarded-host",
    "forwarded",
];

impl Request {
    fn parse(head: &[u8], peer: SocketAddr, proto: Proto) -> Result<Self, &'static str> {
        let mut headers = [httparse::EMPTY_HEADER; 128];
        let mut req = httparse::Request::new(&mut headers);
        match req.parse(head) {
            Ok(httparse::Status::Complete(_)) => {}
            Ok(httparse::Status::Partial) | Err(_) => return Err("malformed HTTP request"),
        }
        let (Some(method), Some(path), Some(version)) = (req.method, req.path, req.version) else {
            return Err("malformed HTTP request");
        };
        let raw_host = req
            .headers
            .iter()
            .find(|h| h.name.eq_ignore_ascii_case("host"))
            .map(|h| String::from_utf8_lossy(h.value).trim().to_string())
            .ok_or("the request has no Host header")?;
        let host = bare_host(&raw_host);
        let mut length: Option<u64> = None;
        let mut chunked = false;
        let mut upgrade = method.eq_ignore_ascii_case("CONNECT");
        for h in req.headers.iter() {
            if h.name.eq_ignore_ascii_case("content-length") {
                let v = std::str::from_utf8(h.value)
                    .ok()
                    .and_then(|v| v.trim().parse::<u64>().ok())
                    .ok_or("invalid Content-Length")?;
                if length.is_some_and(|l| l != v) {
                    return Err("conflicting Content-Length headers");
                }
                length = Some(v);
            } else if h.name.eq_ignore_ascii_case("transfer-encoding") {
                let v = String::from_utf8_lossy(h.value).to_ascii_lowercase();
                let last = v.rsplit(',').next().unwrap_or_default().trim().to_string();
                if last != "chunked" {
                    return Err("unsupported Transfer-Encoding");
                }
                chunked = true;
            } else if h.name.eq_ignore_ascii_case("upgrade") {
                upgrade = true;
            }
        }
        // Both framings at once is how requests are smuggled past a proxy: refuse.
        if chunked && length.is_some() {
            return Err("both Content-Length and Transfer-Encoding");
        }
        let body = if upgrade {
            Body::Raw
        } else if chunked {
            Body::Chunked
        } else {
            Body::Length(length.unwrap_or(0))
        };
        let mut out = Vec::with_capacity(head.len() + 128);
        out.extend_from_slice(method.as_bytes());
        out.push(b' ');
        out.extend_from_slice(path.as_bytes());
        out.extend_from_slice(format!(" HTTP/1.{version}\r\n").as_bytes());
        for h in req.headers.iter() {
            if FORWARDING_HEADERS
                .iter()
                .any(|f| h.name.eq_ignore_ascii_case(f))
            {
                continue;
            }
            out.extend_from_slice(h.name.as_bytes());
            out.extend_from_slice(b": ");
            out.extend_from_slice(h.value);
            out.extend_from_slice(b"\r\n");
        }
        let client_ip = peer.ip().to_canonical();
        out.extend_from_slice(
            format!(
                "X-Forwarded-For: {client_ip}\r\nX-Forwarded-Proto: {}\r\nX-Forwarded-Host: {raw_host}\r\n\r\n",
                proto.as_str()
            )
            .as_bytes(),
        );
        Ok(Self {
            host,
            body,
            method_connect: method.eq_ignore_ascii_case("CONNECT"),
            target: path.to_string(),
            forwarded: out,
        })
    }
}

/// The Host of a request head, lower-cased and without port.
#[cfg(test)]
fn host_of(head: &[u8]) -> Result<String, &'static str> {
    Request::parse(head, SocketAddr::from(([127, 0, 0, 1], 1)), Proto::Http).map(|r| r.host)
}

/// What [`copy_responses`] reports when the app's first bytes are no HTTP status line.
const NOT_HTTP: u16 = 0;

/// Copies the app's responses to the client, first telling `first_status` the status code of
/// the first response ([`NOT_HTTP`] if its first bytes are not a status line).
async fn copy_responses<R, W>(
    mut from: R,
    to: &mut W,
    activity: &Activity,
    first_status: tokio::sync::oneshot::Sender<u16>,
) -> std::io::Result<()>
where
    R: AsyncRead + Unpin,
    W: AsyncWrite + Unpin,
{
    let mut head = Vec::with_capacity(64);
    let mut chunk = [0u8; 512];
    // "HTTP/1.1 101" is 12 bytes; read until those are in.
    while head.len() < 12 {
        let n = from.read(&mut chunk).await?;
        if n == 0 {
            let _ = first_status.send(NOT_HTTP);
            to.write_all(&head).await?;
            return Ok(());
        }
        activity.mark();
        head.extend_from_slice(&chunk[..n]);
    }
    let status = std::str::from_utf8(&head[..12])
        .ok()
        .filter(|s| s.starts_with("HTTP/1."))
        .and_then(|s| s[9..12].parse().ok())
        .unwrap_or(NOT_HTTP);
    let _ = first_status.send(status);
    to.write_all(&head).await?;
    activity.mark();
    copy_marking(from, to, activity).await
}

// === impl ClientReader ===

enum Head {
    Complete(Vec<u8>),
    Closed,
    TooLarge,
}

/// The client's side of a connection, read with a buffer so that request heads and bodies
/// can be told apart.
struct ClientReader<R> {
    conn: R,
    buf: Vec<u8>,
    /// Body copy buffer, allocated on the first body larger than what `buf` holds.
    body: Option<Vec<u8>>,
    activity: Activity,
    max_head: usize,
}

impl<R: AsyncRead + Unpin> ClientReader<R> {
    fn new(conn: R, activity: Activity, max_head: usize) -> Self {
        Self {
            conn,
            buf: Vec::with_capacity(4096),
            body: None,
            activity,
            max_head,
        }
    }

    /// Reads more into the buffer; false at end of stream.
    async fn fill(&mut self) -> std::io::Result<bool> {
        let mut chunk = [0u8; 8192];
        let n = self.conn.read(&mut chunk).await?;
        if n == 0 {
            return Ok(false);
        }
        self.activity.mark();
        self.buf.extend_from_slice(&chunk[..n]);
        Ok(true)
    }

    /// Waits until a byte is buffered; false if the client closed first.
    async fn wait_for_byte(&mut self) -> std::io::Result<bool> {
        if !self.buf.is_empty() {
            return Ok(true);
        }
        self.fill().await
    }

    /// Takes one request head (through its blank line) off the stream.
    async fn read_head(&mut self) -> std::io::Result<Head> {
        let mut searched: usize = 0;
        loop {
            let from = searched.saturating_sub(3);
            if let Some(i) = self.buf[from..].windows(4).position(|w| w == b"\r\n\r\n") {
                let end = from + i + 4;
                if end > self.max_head {
                    return Ok(Head::TooLarge);
                }
                return Ok(Head::Complete(self.buf.drain(..end).collect()));
            }
            searched = self.buf.len();
            if self.buf.len() > self.max_head {
                return Ok(Head::TooLarge);
            }
            if !self.fill().await? {
                return Ok(Head::Closed);
            }
        }
    }

    /// Copies exactly `n` body bytes to `to`.
    async fn copy_exact<W: AsyncWrite + Unpin>(
        &mut self,
        mut n: u64,
        to: &mut W,
    ) -> std::io::Result<()> {
        while n > 0 {
            if self.buf.is_empty() {
                // Nothing buffered: read the body straight into a large buffer and pass it
                // on, rather than through the small head buffer (fewer, larger tunnel frames).
                let want = usize::try_from(n).unwrap_or(usize::MAX).min(COPY_BUFFER);
                let body = self.body.get_or_insert_with(|| vec![0u8; COPY_BUFFER]);
                let got = self.conn.read(&mut body[..want]).await?;
                if got == 0 {
                    return Err(std::io::ErrorKind::UnexpectedEof.into());
                }
                self.activity.mark();
                to.write_all(&body[..got]).await?;
                self.activity.mark();
                n -= got as u64;
                continue;
            }
            let take = usize::try_from(n).unwrap_or(usize::MAX).min(self.buf.len());
            to.write_all(&self.buf[..take]).await?;
            self.activity.mark();
            self.buf.drain(..take);
            n -= take as u64;
        }
        Ok(())
    }

    /// Takes one line (through CRLF) of at most `max` bytes.
    async fn read_line(&mut self, max: usize) -> std::io::Result<Vec<u8>> {
        loop {
            if let Some(i) = self.buf.windows(2).position(|w| w == b"\r\n") {
                return Ok(self.buf.drain(..i + 2).collect());
            }
            if self.buf.len() > max {
                return Err(std::io::Error::new(
                    std::io::ErrorKind::InvalidData,
                    "chunk line too long",
                ));
            }
            if !self.fill().await? {
                return Err(std::io::ErrorKind::UnexpectedEof.into());
            }
        }
    }

    /// Copies one chunked body (chunks, last chunk, trailers) to `to`.
    async fn copy_chunked<W: AsyncWrite + Unpin>(&mut self, to: &mut W) -> std::io::Result<()> {
        let invalid = || std::io::Error::new(std::io::ErrorKind::InvalidData, "bad chunk size");
        loop {
            let line = self.read_line(MAX_CHUNK_LINE).await?;
            let text = std::str::from_utf8(&line).map_err(|_| invalid())?;
            let size = text.trim_end().split(';').next().unwrap_or_default().trim();
            let size = u64::from_str_radix(size, 16).map_err(|_| invalid())?;
            to.write_all(&line).await?;
            if size == 0 {
                // Trailers, up to the blank line.
                loop {
                    let line = self.read_line(MAX_CHUNK_LINE).await?;
                    to.write_all(&line).await?;
                    if line == b"\r\n" {
                        return Ok(());
                    }
                }
            }
            self.copy_exact(size, to).await?;
            if self.read_line(2).await? != b"\r\n" {
                return Err(invalid());
            }
            to.write_all(b"\r\n").await?;
        }
    }

    /// Reads and drops what the client still sends, for a moment, so that closing after an
    /// error answer does not reset the connection before the client read it.
    async fn linger(&mut self) {
        let _ = tokio::time::timeout(REFUSE_TIMEOUT, async {
            let mut sink = [0u8; 8192];
            let mut left = 1024 * 1024usize;
            while left > 0 {
                match self.conn.read(&mut sink).await {
                    Ok(0) | Err(_) => return,
                    Ok(n) => left = left.saturating_sub(n),
                }
            }
        })
        .await;
    }

    /// Copies everything the client sends from now on.
    async fn copy_rest<W: AsyncWrite + Unpin>(&mut self, to: &mut W) -> std::io::Result<()> {
        if !self.buf.is_empty() {
            to.write_all(&self.buf).await?;
            self.buf.clear();
        }
        copy_marking(&mut self.conn, to, &self.activity).await
    }
}

/// Answers `308 Permanent Redirect` to `location` and closes.
async fn redirect<W: AsyncWrite + Unpin>(conn: &mut W, location: &str) -> std::io::Result<()> {
    let body = format!("this host is served over HTTPS: {location}\n");
    let msg = format!(
        "HTTP/1.1 308 Permanent Redirect\r\nlocation: {location}\r\ncontent-type: text/plain; charset=utf-8\r\ncontent-length: {}\r\nconnection: close\r\nserver: decloud-gateway\r\n\r\n{body}",
        body.len()
    );
    write_close(conn, msg).await
}

async fn respond<W: AsyncWrite + Unpin>(
    conn: &mut W,
    status: u16,
    body: &str,
    retry_after: Option<u64>,
) -> std::io::Result<()> {
    let reason = match status {
        200 => "OK",
        400 => "Bad Request",
        404 => "Not Found",
        408 => "Request Timeout",
        431 => "Request Header Fields Too Large",
        _ => "Service Unavailable",
    };
    let retry = retry_after
        .map(|s| format!("retry-after: {s}\r\n"))
        .unwrap_or_default();
    let msg = format!(
        "HTTP/1.1 {status} {reason}\r\ncontent-type: text/plain; charset=utf-8\r\ncontent-length: {}\r\n{retry}connection: close\r\nserver: decloud-gateway\r\n\r\n{body}",
        body.len()
    );
    write_close(conn, msg).await
}

/// Writes `msg` and shuts the stream down, within a bound: a client that does not read its
/// answer does not hold the task.
async fn write_close<W: AsyncWrite + Unpin>(conn: &mut W, msg: String) -> std::io::Result<()> {
    match tokio::time::timeout(REFUSE_TIMEOUT * 5, async {
        conn.write_all(msg.as_bytes()).await?;
        conn.shutdown().await
    })
    .await
    {
        Ok(r) => r,
        Err(_) => Err(std::io::ErrorKind::TimedOut.into()),
    }
}

#[cfg(test)]
mod tests;
