//! `/exec`, `/attach` and `/portForward`, served as kubelet serves them to the API server:
//! an HTTP upgrade to SPDY/3.1 (see [`super::spdy`] for why SPDY), then the streams of the
//! negotiated protocol.
//!
//! - exec and attach (`k8s.io/kubelet/pkg/cri/streaming/remotecommand`): protocols
//!   `v4.channel.k8s.io` (the error stream carries a `metav1.Status` JSON, exit codes included),
//!   `v3` (plus a `resize` stream of `{"Width":…,"Height":…}` JSON), `v2` and the unnamed `v1`.
//!   The client opens one stream per `streamType` header: `error`, `stdin`, `stdout`,
//!   `stderr`, `resize`. The API server (1.34) offers `v5`…`v1` and gets `v4`.
//! - port-forward (`…/streaming/portforward`): protocol `portforward.k8s.io`; per forwarded
//!   connection the client opens an `error` and a `data` stream with the same `requestID` and
//!   a `port` header.
//!
//! As a kubelet does, the same endpoints also take WebSocket clients ([`ws`]:
//! `v4.channel.k8s.io`, `channel.k8s.io` and their `base64.` forms).
//!
//! Pods must be on a DeCloud node and running; every stream rides on the pod's edge's
//! outbound connection, counted against that edge's tunnel cap by the [`ContainerStreams`]
//! implementation.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::{
    Router,
    body::Body,
    extract::{Path, Request, State},
    http::{HeaderMap, StatusCode, header},
    response::{IntoResponse, Response},
    routing::any,
};
use bytes::Bytes;
use hyper_util::rt::TokioIo;
use serde::Deserialize;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::sync::mpsc;

use super::spdy::{self, Connection, Limits, SpdyStream, StreamWriter};
use crate::StreamError;
use crate::seams::{ContainerStreams, ExecInput, ExecOutput, ExecRequest};

/// The remote-command protocols offered, most preferred first (kubelet's
/// `SupportedStreamingProtocols`).
const REMOTE_COMMAND_PROTOCOLS: [&str; 4] = [
    "v4.channel.k8s.io",
    "v3.channel.k8s.io",
    "v2.channel.k8s.io",
    "channel.k8s.io",
];
/// The port-forward protocol (kubelet's `portforward.SupportedProtocols`).
const PORT_FORWARD_PROTOCOL: &str = "portforward.k8s.io";
const PROTOCOL_HEADER: &str = "x-stream-protocol-version";
const ACCEPTED_PROTOCOLS_HEADER: &str = "x-accepted-stream-protocol-versions";
/// Protocols read from a client's offer; the rest are ignored.
const MAX_OFFERED_PROTOCOLS: usize = 16;

/// How long the client has to open its streams (kubelet's `StreamCreationTimeout`).
const STREAM_CREATION_TIMEOUT: Duration = Duration::from_secs(30);
/// A connection silent this long ends (kubelet's `--streaming-connection-idle-timeout`
/// default; the API server pings every 5 s, so only a dead peer reaches it).
const IDLE_TIMEOUT: Duration = Duration::from_secs(4 * 60 * 60);
/// Streams of one exec connection (it needs five at most).
const EXEC_STREAMS: usize = 8;
/// Streams of one port-forward connection: two per forwarded connection.
const PORT_FORWARD_STREAMS: usize = 128;
/// Largest pending resize JSON.
const MAX_RESIZE_BUFFER: usize = 4096;

/// Upgraded exec, attach and port-forward connections served at once, all pods together (each
/// edge's sessions are capped again by its tunnel slots); beyond it: 503.
const MAX_STREAM_CONNECTIONS: usize = 1024;

/// The routes, over `streams`.
pub(super) fn routes(streams: Arc<dyn ContainerStreams>) -> Router {
    routes_capped(streams, MAX_STREAM_CONNECTIONS)
}

/// What the handlers share.
#[derive(Clone)]
pub(super) struct Shared {
    streams: Arc<dyn ContainerStreams>,
    connections: Arc<tokio::sync::Semaphore>,
}

impl Shared {
    /// A connection slot, or the 503 that says there is none.
    fn slot(&self) -> Result<tokio::sync::OwnedSemaphorePermit, Box<Response>> {
        self.connections.clone().try_acquire_owned().map_err(|_| {
            boxed(
                StatusCode::SERVICE_UNAVAILABLE,
                format!(
                    "the kubelet API serves {MAX_STREAM_CONNECTIONS} exec, attach and \
                     port-forward connections at most; retry"
                ),
            )
        })
    }
}

/// [`routes`] with at most `max_connections` upgraded connections at once.
fn routes_capped(streams: Arc<dyn ContainerStreams>, max_connections: usize) -> Router {
    let shared = Shared {
        streams,
        connections: Arc::new(tokio::sync::Semaphore::new(max_connections)),
    };
    Router::new()
        .route("/exec/{namespace}/{pod}/{container}", any(exec))
        .route("/exec/{namespace}/{pod}/{uid}/{container}", any(exec_uid))
        .route("/attach/{namespace}/{pod}/{container}", any(attach))
        .route(
            "/attach/{namespace}/{pod}/{uid}/{container}",
            any(attach_uid),
        )
        .route("/portForward/{namespace}/{pod}", any(port_forward))
        .route(
            "/portForward/{namespace}/{pod}/{uid}",
            any(port_forward_uid),
        )
        .route("/run/{*rest}", any(run_unsupported))
        .with_state(shared)
}

type Streams = State<Shared>;

fn text(status: StatusCode, msg: impl Into<String>) -> Response {
    let mut body = msg.into();
    body.push('\n');
    (
        status,
        [(header::CONTENT_TYPE, "text/plain; charset=utf-8")],
        body,
    )
        .into_response()
}

/// [`text`], boxed for an `Err` (a `Response` is large).
fn boxed(status: StatusCode, msg: impl Into<String>) -> Box<Response> {
    Box::new(text(status, msg))
}

async fn run_unsupported() -> Response {
    text(
        StatusCode::NOT_IMPLEMENTED,
        "/run is not served on DeCloud nodes: `kubectl exec` runs commands",
    )
}

fn method_allowed(req: &Request) -> Option<Response> {
    (req.method() != http::Method::GET && req.method() != http::Method::POST)
        .then(|| text(StatusCode::METHOD_NOT_ALLOWED, "Method Not Allowed"))
}

fn refusal(e: &StreamError) -> Response {
    let status = match e {
        StreamError::PodNotFound | StreamError::UidMismatch => StatusCode::NOT_FOUND,
        StreamError::ContainerNotFound(_) | StreamError::Edge(_) => {
            StatusCode::INTERNAL_SERVER_ERROR
        }
        StreamError::Unavailable(_) => StatusCode::SERVICE_UNAVAILABLE,
        StreamError::Invalid(_) => StatusCode::BAD_REQUEST,
    };
    text(status, e.to_string())
}

// === query and handshake ===

fn percent_decode(s: &str) -> String {
    let bytes = s.as_bytes();
    let hex = |b: u8| (b as char).to_digit(16).map(|d| d as u8);
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        match bytes[i] {
            b'+' => out.push(b' '),
            b'%' if i + 2 < bytes.len() => match (hex(bytes[i + 1]), hex(bytes[i + 2])) {
                (Some(h), Some(l)) => {
                    out.push(h << 4 | l);
                    i += 2;
                }
                _ => out.push(b'%'),
            },
            b => out.push(b),
        }
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// The query's `key=value` pairs, decoded, in order (repeated keys kept).
pub(crate) fn query_pairs(query: &str) -> Vec<(String, String)> {
    query
        .split('&')
        .filter(|p| !p.is_empty())
        .map(|p| {
            let (k, v) = p.split_once('=').unwrap_or((p, ""));
            (percent_decode(k), percent_decode(v))
        })
        .collect()
}

/// Kubelet's `remotecommand.NewOptions`: flags are "1"; a terminal merges stderr into stdout.
fn stream_options(pairs: &[(String, String)], req: &mut ExecRequest) -> Result<(), Box<Response>> {
    let on = |k: &str| pairs.iter().any(|(n, v)| n == k && v == "1");
    req.tty = on("tty");
    req.stdin = on("input");
    req.stdout = on("output");
    req.stderr = on("error") && !req.tty;
    if !req.stdin && !req.stdout && !req.stderr {
        return Err(boxed(
            StatusCode::BAD_REQUEST,
            "you must specify at least 1 of stdin, stdout, stderr",
        ));
    }
    Ok(())
}

fn header_values<'a>(headers: &'a HeaderMap, name: &str) -> impl Iterator<Item = String> + 'a {
    let name = name.to_string();
    headers
        .get_all(name.as_str())
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .map(|v| v.trim().to_string())
        .filter(|v| !v.is_empty())
        .collect::<Vec<_>>()
        .into_iter()
}

enum Upgrade {
    Spdy,
    WebSocket,
}

/// Kubelet's `httpstream.Handshake` and the SPDY upgrade check: the protocol agreed on (the
/// client's first that is supported), or the refusal kubelet gives.
fn handshake(
    headers: &HeaderMap,
    supported: &[&'static str],
) -> Result<&'static str, Box<Response>> {
    let offered: Vec<String> = header_values(headers, PROTOCOL_HEADER)
        .take(MAX_OFFERED_PROTOCOLS)
        .collect();
    if offered.is_empty() {
        return Err(boxed(
            StatusCode::BAD_REQUEST,
            "unable to upgrade: X-Stream-Protocol-Version is required",
        ));
    }
    let Some(chosen) = offered
        .iter()
        .find_map(|o| supported.iter().find(|s| **s == o.as_str()).copied())
    else {
        let mut resp = text(
            StatusCode::FORBIDDEN,
            format!(
                "unable to upgrade: unable to negotiate protocol: client supports [{}], server accepts [{}]",
                offered.join(" "),
                supported.join(" ")
            ),
        );
        for s in supported {
            resp.headers_mut()
                .append(ACCEPTED_PROTOCOLS_HEADER, http::HeaderValue::from_static(s));
        }
        return Err(Box::new(resp));
    };
    Ok(chosen)
}

fn upgrade_kind(headers: &HeaderMap) -> Option<Upgrade> {
    let has = |name: header::HeaderName, token: &str| {
        header_values(headers, name.as_str()).any(|v| v.eq_ignore_ascii_case(token))
    };
    if !has(header::CONNECTION, "upgrade") {
        return None;
    }
    if has(header::UPGRADE, spdy::UPGRADE_TOKEN) {
        Some(Upgrade::Spdy)
    } else if has(header::UPGRADE, "websocket") {
        Some(Upgrade::WebSocket)
    } else {
        None
    }
}

fn check_upgrade(headers: &HeaderMap) -> Result<(), Box<Response>> {
    match upgrade_kind(headers) {
        Some(Upgrade::Spdy | Upgrade::WebSocket) => Ok(()),
        None => Err(boxed(
            StatusCode::BAD_REQUEST,
            "unable to upgrade: missing upgrade headers in request",
        )),
    }
}

fn switching(protocol: &'static str) -> Response {
    Response::builder()
        .status(StatusCode::SWITCHING_PROTOCOLS)
        .header(header::CONNECTION, "Upgrade")
        .header(header::UPGRADE, spdy::UPGRADE_TOKEN)
        .header(PROTOCOL_HEADER, protocol)
        .body(Body::empty())
        .unwrap_or_else(|_| StatusCode::INTERNAL_SERVER_ERROR.into_response())
}

/// Answers 101 and runs `serve` on the upgraded connection in the background.
fn upgrade<F, Fut>(
    mut req: Request,
    protocol: &'static str,
    slot: tokio::sync::OwnedSemaphorePermit,
    serve: F,
) -> Response
where
    F: FnOnce(Connection) -> Fut + Send + 'static,
    Fut: std::future::Future<Output = ()> + Send + 'static,
{
    let on_upgrade = hyper::upgrade::on(&mut req);
    let (max_streams, accept): (usize, spdy::Acceptor) = if protocol == PORT_FORWARD_PROTOCOL {
        (PORT_FORWARD_STREAMS, accept_port_forward_stream)
    } else {
        (EXEC_STREAMS, accept_remote_command_stream)
    };
    let limits = Limits {
        max_streams,
        idle: IDLE_TIMEOUT,
    };
    tokio::spawn(async move {
        let _slot = slot;
        match on_upgrade.await {
            Ok(upgraded) => serve(Connection::start(TokioIo::new(upgraded), limits, accept)).await,
            Err(e) => tracing::debug!(error = %e, "kubelet API upgrade failed"),
        }
    });
    switching(protocol)
}

// === exec and attach ===

#[derive(Deserialize)]
struct PodPath {
    namespace: String,
    pod: String,
    #[serde(default)]
    uid: Option<String>,
    #[serde(default)]
    container: Option<String>,
}

async fn exec(State(s): Streams, Path(p): Path<PodPath>, req: Request) -> Response {
    remote_command(s, p, false, req)
}

async fn exec_uid(State(s): Streams, Path(p): Path<PodPath>, req: Request) -> Response {
    remote_command(s, p, false, req)
}

async fn attach(State(s): Streams, Path(p): Path<PodPath>, req: Request) -> Response {
    remote_command(s, p, true, req)
}

async fn attach_uid(State(s): Streams, Path(p): Path<PodPath>, req: Request) -> Response {
    remote_command(s, p, true, req)
}

fn remote_command(shared: Shared, p: PodPath, attach: bool, req: Request) -> Response {
    if let Some(r) = method_allowed(&req) {
        return r;
    }
    let pairs = query_pairs(req.uri().query().unwrap_or_default());
    let mut exec = ExecRequest {
        namespace: p.namespace,
        pod: p.pod,
        pod_uid: p.uid,
        container: p.container.unwrap_or_default(),
        attach,
        ..Default::default()
    };
    if let Err(r) = stream_options(&pairs, &mut exec) {
        return *r;
    }
    if !attach {
        exec.command = pairs
            .iter()
            .filter(|(k, _)| k == "command")
            .map(|(_, v)| v.clone())
            .collect();
        if exec.command.is_empty() {
            return text(StatusCode::BAD_REQUEST, "a command is required");
        }
    }
    let streams = shared.streams.clone();
    if let Err(e) = streams.check_exec(&exec) {
        return refusal(&e);
    }
    if matches!(upgrade_kind(req.headers()), Some(Upgrade::WebSocket)) {
        return ws::remote_command(req, shared, exec);
    }
    let protocol = match handshake(req.headers(), &REMOTE_COMMAND_PROTOCOLS) {
        Ok(p) => p,
        Err(r) => return *r,
    };
    if let Err(r) = check_upgrade(req.headers()) {
        return *r;
    }
    tracing::info!(
        pod = %format!("{}/{}", exec.namespace, exec.pod),
        container = %exec.container,
        attach,
        tty = exec.tty,
        %protocol,
        offered = %header_values(req.headers(), PROTOCOL_HEADER).collect::<Vec<_>>().join(","),
        "kubelet API: {} negotiated over SPDY/3.1",
        if attach { "attach" } else { "exec" }
    );
    let slot = match shared.slot() {
        Ok(s) => s,
        Err(r) => return *r,
    };
    upgrade(req, protocol, slot, move |conn| {
        serve_remote_command(conn, streams, exec, protocol)
    })
}

fn accept_remote_command_stream(headers: &spdy::Headers) -> Result<(), String> {
    match spdy::header(headers, "streamtype") {
        Some("error" | "stdin" | "stdout" | "stderr" | "resize") => Ok(()),
        other => Err(format!("unexpected stream type: {other:?}")),
    }
}

#[derive(Default)]
struct CommandStreams {
    error: Option<SpdyStream>,
    stdin: Option<SpdyStream>,
    stdout: Option<SpdyStream>,
    stderr: Option<SpdyStream>,
    resize: Option<SpdyStream>,
}

impl CommandStreams {
    fn add(&mut self, s: SpdyStream) {
        let slot = match s.header("streamtype") {
            Some("error") => &mut self.error,
            Some("stdin") => &mut self.stdin,
            Some("stdout") => &mut self.stdout,
            Some("stderr") => &mut self.stderr,
            Some("resize") => &mut self.resize,
            _ => return,
        };
        if slot.is_none() {
            *slot = Some(s);
        }
    }

    fn count(&self) -> usize {
        [
            self.error.is_some(),
            self.stdin.is_some(),
            self.stdout.is_some(),
            self.stderr.is_some(),
            self.resize.is_some(),
        ]
        .into_iter()
        .filter(|b| *b)
        .count()
    }
}

/// What the error stream says at the end, per protocol: `v4` a `metav1.Status` JSON always;
/// older ones the failure's message only.
fn final_status(v4: bool, outcome: &Outcome, req: &ExecRequest) -> Option<Vec<u8>> {
    let status = match outcome {
        Outcome::Exited(0) => serde_json::json!({"metadata": {}, "status": "Success"}),
        Outcome::Exited(code) if !req.attach => serde_json::json!({
            "metadata": {},
            "status": "Failure",
            "message": format!(
                "command terminated with non-zero exit code: error executing command {:?}, exit code {code}",
                req.command
            ),
            "reason": "NonZeroExitCode",
            "details": {"causes": [{"reason": "ExitCode", "message": code.to_string()}]},
        }),
        Outcome::Exited(_) => serde_json::json!({"metadata": {}, "status": "Success"}),
        Outcome::Failed(e) => {
            let what = if req.attach {
                "error attaching to container"
            } else {
                "error executing command in container"
            };
            serde_json::json!({
                "metadata": {},
                "status": "Failure",
                "message": format!("Internal error occurred: {what}: {e}"),
                "reason": "InternalError",
                "details": {"causes": [{"message": format!("{what}: {e}")}]},
                "code": 500,
            })
        }
    };
    if v4 {
        return serde_json::to_vec(&status).ok();
    }
    (status["status"] != "Success").then(|| {
        status["message"]
            .as_str()
            .unwrap_or_default()
            .as_bytes()
            .to_vec()
    })
}

enum Outcome {
    Exited(i32),
    Failed(String),
}

async fn serve_remote_command(
    mut conn: Connection,
    streams: Arc<dyn ContainerStreams>,
    req: ExecRequest,
    protocol: &'static str,
) {
    let resizable = protocol != "v2.channel.k8s.io" && protocol != "channel.k8s.io";
    let expected = 1
        + usize::from(req.stdin)
        + usize::from(req.stdout)
        + usize::from(req.stderr)
        + usize::from(req.tty && resizable);
    let mut set = CommandStreams::default();
    let deadline = tokio::time::sleep(STREAM_CREATION_TIMEOUT);
    tokio::pin!(deadline);
    while set.count() < expected {
        tokio::select! {
            s = conn.incoming.recv() => match s {
                Some(s) => set.add(s),
                None => return,
            },
            () = &mut deadline => {
                tracing::info!("kubelet API: timed out waiting for client to create streams");
                conn.close().await;
                return;
            }
        }
    }
    let Some(error) = set.error.take() else {
        // Only reachable if the client opened fewer kinds than it asked for, twice over.
        conn.close().await;
        return;
    };
    let outcome = match streams.exec(req.clone()).await {
        Err(e) => Some(Outcome::Failed(e.to_string())),
        Ok(io) => pump(&mut conn, io, &mut set).await,
    };
    let outcome = match outcome {
        Some(o) => o,
        // The client went away; nobody to tell.
        None => return,
    };
    for w in [set.stdout.as_ref(), set.stderr.as_ref()]
        .into_iter()
        .flatten()
    {
        let _ = w.tx.finish().await;
    }
    if let Some(body) = final_status(protocol == REMOTE_COMMAND_PROTOCOLS[0], &outcome, &req) {
        let _ = error.tx.send(Bytes::from(body)).await;
    }
    let _ = error.tx.finish().await;
    conn.close().await;
}

/// Carries the streams until the process ends (`Some`) or the client goes (`None`).
async fn pump(
    conn: &mut Connection,
    io: crate::seams::ExecIo,
    set: &mut CommandStreams,
) -> Option<Outcome> {
    let crate::seams::ExecIo { input, mut output } = io;
    let mut feeders = tokio::task::JoinSet::new();
    if let Some(mut stdin) = set.stdin.take() {
        let input = input.clone();
        feeders.spawn(async move {
            while let Some(b) = stdin.rx.recv().await {
                if input.send(ExecInput::Stdin(b)).await.is_err() {
                    return;
                }
            }
            let _ = input.send(ExecInput::StdinEof).await;
        });
    }
    if let Some(resize) = set.resize.take() {
        feeders.spawn(feed_resizes(resize, input.clone()));
    }
    let stdout = set.stdout.as_ref().map(|s| s.tx.clone());
    let stderr = set.stderr.as_ref().map(|s| s.tx.clone());
    let outcome = loop {
        tokio::select! {
            out = output.recv() => match out {
                Some(ExecOutput::Stdout(b)) => write_to(stdout.as_ref(), b).await,
                Some(ExecOutput::Stderr(b)) => write_to(stderr.as_ref(), b).await,
                Some(ExecOutput::Exited(code)) => break Some(Outcome::Exited(code)),
                Some(ExecOutput::Failed(e)) => break Some(Outcome::Failed(e)),
                None => break Some(Outcome::Failed("the edge ended the session".into())),
            },
            // The client's side of the connection ended: stop the session.
            s = conn.incoming.recv() => if s.is_none() { break None },
        }
    };
    feeders.abort_all();
    drop(input);
    outcome
}

async fn write_to(w: Option<&StreamWriter>, b: Bytes) {
    if let Some(w) = w {
        let _ = w.send(b).await;
    }
}

#[derive(Deserialize)]
struct TerminalSize {
    #[serde(rename = "Width")]
    width: u16,
    #[serde(rename = "Height")]
    height: u16,
}

/// Reads the resize stream's JSON values (`{"Width":80,"Height":24}`, one after another).
async fn feed_resizes(mut s: SpdyStream, input: mpsc::Sender<ExecInput>) {
    let mut buf: Vec<u8> = Vec::new();
    while let Some(b) = s.rx.recv().await {
        buf.extend_from_slice(&b);
        let mut values = serde_json::Deserializer::from_slice(&buf).into_iter::<TerminalSize>();
        let mut used = 0;
        loop {
            match values.next() {
                Some(Ok(size)) => {
                    used = values.byte_offset();
                    let msg = ExecInput::Resize {
                        width: size.width,
                        height: size.height,
                    };
                    if input.send(msg).await.is_err() {
                        return;
                    }
                }
                Some(Err(e)) if e.is_eof() => break,
                Some(Err(_)) => {
                    tracing::debug!("kubelet API: malformed resize event; resize stream ignored");
                    return;
                }
                None => break,
            }
        }
        buf.drain(..used);
        if buf.len() > MAX_RESIZE_BUFFER {
            tracing::debug!("kubelet API: resize event too long; resize stream ignored");
            return;
        }
    }
}

// === port-forward ===

async fn port_forward(State(s): Streams, Path(p): Path<PodPath>, req: Request) -> Response {
    port_forward_common(s, p, req)
}

async fn port_forward_uid(State(s): Streams, Path(p): Path<PodPath>, req: Request) -> Response {
    port_forward_common(s, p, req)
}

fn port_forward_common(shared: Shared, p: PodPath, req: Request) -> Response {
    if let Some(r) = method_allowed(&req) {
        return r;
    }
    let streams = shared.streams.clone();
    if let Err(e) = streams.check(&p.namespace, &p.pod, p.uid.as_deref(), None) {
        return refusal(&e);
    }
    if matches!(upgrade_kind(req.headers()), Some(Upgrade::WebSocket)) {
        return ws::port_forward(req, shared, p);
    }
    let protocol = match handshake(req.headers(), &[PORT_FORWARD_PROTOCOL]) {
        Ok(p) => p,
        Err(r) => return *r,
    };
    if let Err(r) = check_upgrade(req.headers()) {
        return *r;
    }
    tracing::info!(
        pod = %format!("{}/{}", p.namespace, p.pod),
        %protocol,
        offered = %header_values(req.headers(), PROTOCOL_HEADER).collect::<Vec<_>>().join(","),
        "kubelet API: port-forward negotiated over SPDY/3.1"
    );
    let slot = match shared.slot() {
        Ok(s) => s,
        Err(r) => return *r,
    };
    upgrade(req, protocol, slot, move |conn| {
        serve_port_forward(conn, streams, p)
    })
}

/// Kubelet's `httpStreamReceived`: a port-forward stream needs a valid port and a known type.
fn accept_port_forward_stream(headers: &spdy::Headers) -> Result<(), String> {
    let port = spdy::header(headers, "port").ok_or("\"port\" header is required")?;
    let port: u16 = port
        .parse()
        .map_err(|e| format!("unable to parse {port:?} as a port: {e}"))?;
    if port < 1 {
        return Err(format!("port {port:?} must be > 0"));
    }
    match spdy::header(headers, "streamtype") {
        Some("error" | "data") => Ok(()),
        None => Err("\"streamType\" header is required".into()),
        Some(t) => Err(format!("invalid stream type {t:?}")),
    }
}

struct Pair {
    error: Option<SpdyStream>,
    data: Option<SpdyStream>,
    since: Instant,
}

async fn print_error(s: Option<&SpdyStream>, msg: String) {
    if let Some(s) = s {
        let _ = s.tx.send(Bytes::from(msg)).await;
    }
}

async fn serve_port_forward(mut conn: Connection, streams: Arc<dyn ContainerStreams>, p: PodPath) {
    let mut pairs: HashMap<String, Pair> = HashMap::new();
    let mut forwards = tokio::task::JoinSet::new();
    let mut sweep = tokio::time::interval(Duration::from_secs(1));
    let pod = format!("{}/{}", p.namespace, p.pod);
    let uid = p.uid.clone().unwrap_or_default();
    loop {
        tokio::select! {
            s = conn.incoming.recv() => {
                let Some(s) = s else { break };
                let kind = s.header("streamtype").unwrap_or_default().to_string();
                // Kubelet's default request id when the client sends none.
                let request_id = match s.header("requestid") {
                    Some(r) => r.to_string(),
                    None if kind == "data" => s.id().saturating_sub(2).to_string(),
                    None => s.id().to_string(),
                };
                let pair = pairs.entry(request_id.clone()).or_insert_with(|| Pair {
                    error: None,
                    data: None,
                    since: Instant::now(),
                });
                let slot = if kind == "error" { &mut pair.error } else { &mut pair.data };
                if slot.is_some() {
                    let msg = format!(
                        "error processing stream for request {request_id}: {kind} stream already assigned"
                    );
                    print_error(pair.error.as_ref(), msg).await;
                    continue;
                }
                *slot = Some(s);
                if pair.error.is_some() && pair.data.is_some()
                    && let Some(Pair { error: Some(error), data: Some(data), .. }) = pairs.remove(&request_id)
                {
                    let (streams, ns, name, pod, uid) =
                        (streams.clone(), p.namespace.clone(), p.pod.clone(), pod.clone(), uid.clone());
                    forwards.spawn(async move {
                        forward(streams, &ns, &name, &pod, &uid, error, data).await;
                    });
                }
            }
            _ = sweep.tick() => {
                let expired: Vec<String> = pairs
                    .iter()
                    .filter(|(_, v)| v.since.elapsed() > STREAM_CREATION_TIMEOUT)
                    .map(|(k, _)| k.clone())
                    .collect();
                for id in expired {
                    if let Some(pair) = pairs.remove(&id) {
                        print_error(pair.error.as_ref(), format!("(request={id}) timed out waiting for streams")).await;
                    }
                }
            }
            Some(_) = forwards.join_next(), if !forwards.is_empty() => {}
        }
    }
    // The client is gone: its streams have ended, so the forwards finish on their own.
    drop(pairs);
    while forwards.join_next().await.is_some() {}
    conn.close().await;
}

/// Carries one forwarded connection: the data stream to and from the pod's port; a failure
/// is written on the error stream in kubelet's words and both streams are reset.
async fn forward(
    streams: Arc<dyn ContainerStreams>,
    namespace: &str,
    name: &str,
    pod: &str,
    uid: &str,
    error: SpdyStream,
    data: SpdyStream,
) {
    let port: u16 = data
        .header("port")
        .and_then(|p| p.parse().ok())
        .unwrap_or_default();
    let result = match streams.port_forward(namespace, name, port).await {
        Err(e) => Err(e.to_string()),
        Ok(tunnel) => splice(data.tx.clone(), data.rx, tunnel).await,
    };
    match result {
        Ok(()) => {
            let _ = error.tx.finish().await;
        }
        Err(e) => {
            tracing::debug!(%pod, port, error = %e, "port-forward failed");
            let msg = format!("error forwarding port {port} to pod {pod}, uid {uid}: {e}");
            let _ = error.tx.send(Bytes::from(msg)).await;
            let _ = data.tx.reset().await;
            let _ = error.tx.reset().await;
        }
    }
}

async fn splice(
    tx: StreamWriter,
    rx: mpsc::Receiver<Bytes>,
    tunnel: Box<dyn crate::seams::TunnelIo>,
) -> Result<(), String> {
    let (from_pod, to_pod) = tokio::io::split(tunnel);
    let up = async {
        pod_to_client(from_pod, |b| async { tx.send(b).await.is_ok() }).await?;
        let _ = tx.finish().await;
        Ok(())
    };
    tokio::try_join!(client_to_pod(rx, to_pod), up).map(|_| ())
}

/// One half of a port-forward: what the client sends, written to the pod until the client's
/// side ends; then the pod's write side is shut.
async fn client_to_pod(
    mut from_client: mpsc::Receiver<Bytes>,
    mut to_pod: impl tokio::io::AsyncWrite + Unpin,
) -> Result<(), String> {
    while let Some(b) = from_client.recv().await {
        to_pod
            .write_all(&b)
            .await
            .map_err(|e| format!("writing to the pod: {e}"))?;
    }
    let _ = to_pod.shutdown().await;
    Ok(())
}

/// The other half: what the pod sends, handed to `send` (false: the client is gone) until the
/// pod's side ends.
async fn pod_to_client<F: Future<Output = bool>>(
    mut from_pod: impl tokio::io::AsyncRead + Unpin,
    mut send: impl FnMut(Bytes) -> F,
) -> Result<(), String> {
    let mut buf = vec![0u8; spdy::MAX_WRITE];
    loop {
        let n = from_pod
            .read(&mut buf)
            .await
            .map_err(|e| format!("reading from the pod: {e}"))?;
        if n == 0 {
            return Ok(());
        }
        if !send(Bytes::copy_from_slice(&buf[..n])).await {
            return Err("the client is gone".into());
        }
    }
}

mod ws;

#[cfg(test)]
mod tests;
