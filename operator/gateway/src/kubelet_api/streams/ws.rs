//! The same exec, attach and port-forward over WebSocket, as a kubelet also serves them
//! (`k8s.io/kubelet/pkg/cri/streaming/{remotecommand,portforward}/websocket.go` over
//! `apimachinery/pkg/util/httpstream/wsstream`): every message starts with its channel (a
//! byte, or an ASCII digit followed by base64 in the `base64.` protocols).
//!
//! - exec/attach: channels 0 stdin, 1 stdout, 2 stderr, 3 error (the final status), 4 resize;
//!   an empty message on the first output channel says the streams are ready. There is no
//!   stdin end short of closing the connection (that came with `v5`, which kubelets do not
//!   speak).
//! - port-forward: the `port` query names the ports; port i has data channel 2i and error
//!   channel 2i+1, each opened with the port as two little-endian bytes. One connection per
//!   port; the WebSocket closes when all have ended.

use base64::Engine as _;

use super::*;
use crate::kubelet_api::websocket::{Message, WsConnection, WsSender, accept_key};

/// Exec/attach protocols (`""`: the client asked for none; binary).
const EXEC_PROTOCOLS: [&str; 5] = [
    "v4.channel.k8s.io",
    "v4.base64.channel.k8s.io",
    "channel.k8s.io",
    "base64.channel.k8s.io",
    "",
];
/// Port-forward protocols.
const PORT_FORWARD_PROTOCOLS: [&str; 3] = ["v4.channel.k8s.io", "v4.base64.channel.k8s.io", ""];
/// Most ports one port-forward WebSocket may name.
const MAX_PORTS: usize = 32;

const STDIN: u8 = 0;
const STDOUT: u8 = 1;
const STDERR: u8 = 2;
const ERROR: u8 = 3;
const RESIZE: u8 = 4;

/// The client's first offered protocol the server speaks, and the accept key; or kubelet's
/// refusal.
fn ws_handshake(
    headers: &HeaderMap,
    supported: &[&'static str],
) -> Result<(&'static str, String), Box<Response>> {
    let version = headers
        .get("sec-websocket-version")
        .and_then(|v| v.to_str().ok());
    let key = headers
        .get("sec-websocket-key")
        .and_then(|v| v.to_str().ok());
    let (Some("13"), Some(key)) = (version, key) else {
        return Err(boxed(
            StatusCode::BAD_REQUEST,
            "unable to upgrade websocket connection: Sec-WebSocket-Version 13 and a Sec-WebSocket-Key are required",
        ));
    };
    let mut offered: Vec<String> = header_values(headers, "sec-websocket-protocol")
        .take(MAX_OFFERED_PROTOCOLS)
        .collect();
    if offered.is_empty() {
        offered.push(String::new());
    }
    let chosen = offered
        .iter()
        .find_map(|o| supported.iter().find(|s| **s == o.as_str()).copied())
        .ok_or_else(|| {
            boxed(
                StatusCode::BAD_REQUEST,
                format!(
                    "unable to upgrade websocket connection: requested protocol(s) are not supported: [{}]; supports [{}]",
                    offered.join(" "),
                    supported.join(" ")
                ),
            )
        })?;
    Ok((chosen, accept_key(key)))
}

/// Answers 101 and runs `serve` on the upgraded WebSocket in the background.
fn upgrade_ws<F, Fut>(
    mut req: Request,
    protocol: &'static str,
    key: String,
    slot: tokio::sync::OwnedSemaphorePermit,
    serve: F,
) -> Response
where
    F: FnOnce(WsConnection) -> Fut + Send + 'static,
    Fut: std::future::Future<Output = ()> + Send + 'static,
{
    let on_upgrade = hyper::upgrade::on(&mut req);
    tokio::spawn(async move {
        let _slot = slot;
        match on_upgrade.await {
            Ok(upgraded) => serve(WsConnection::start(TokioIo::new(upgraded), IDLE_TIMEOUT)).await,
            Err(e) => tracing::debug!(error = %e, "kubelet API WebSocket upgrade failed"),
        }
    });
    let mut resp = Response::builder()
        .status(StatusCode::SWITCHING_PROTOCOLS)
        .header(header::CONNECTION, "Upgrade")
        .header(header::UPGRADE, "websocket")
        .header("sec-websocket-accept", key);
    if !protocol.is_empty() {
        resp = resp.header("sec-websocket-protocol", protocol);
    }
    resp.body(Body::empty())
        .unwrap_or_else(|_| StatusCode::INTERNAL_SERVER_ERROR.into_response())
}

/// How messages carry their channel.
#[derive(Clone, Copy)]
struct Channels {
    base64: bool,
}

impl Channels {
    fn of(protocol: &str) -> Self {
        Self {
            base64: protocol.contains("base64"),
        }
    }

    fn encode(self, channel: u8, data: &[u8]) -> Message {
        if self.base64 {
            let mut s = vec![b'0' + channel];
            s.extend_from_slice(
                base64::engine::general_purpose::STANDARD
                    .encode(data)
                    .as_bytes(),
            );
            Message {
                text: true,
                data: Bytes::from(s),
            }
        } else {
            let mut v = Vec::with_capacity(data.len() + 1);
            v.push(channel);
            v.extend_from_slice(data);
            Message {
                text: false,
                data: Bytes::from(v),
            }
        }
    }

    fn decode(self, m: &Message) -> Option<(u8, Bytes)> {
        let (&first, rest) = m.data.split_first()?;
        if self.base64 {
            let channel = first.checked_sub(b'0')?;
            let data = base64::engine::general_purpose::STANDARD
                .decode(rest)
                .ok()?;
            Some((channel, Bytes::from(data)))
        } else {
            Some((first, m.data.slice(1..)))
        }
    }

    async fn send(self, tx: &WsSender, channel: u8, data: &[u8]) -> bool {
        // Each message at most one SPDY-sized write, so a big output does not make one huge
        // frame.
        if data.is_empty() {
            return tx.send(self.encode(channel, data)).await;
        }
        for part in data.chunks(spdy::MAX_WRITE) {
            if !tx.send(self.encode(channel, part)).await {
                return false;
            }
        }
        true
    }
}

// === exec and attach ===

pub(super) fn remote_command(req: Request, shared: Shared, exec: ExecRequest) -> Response {
    let (protocol, key) = match ws_handshake(req.headers(), &EXEC_PROTOCOLS) {
        Ok(p) => p,
        Err(r) => return *r,
    };
    let slot = match shared.slot() {
        Ok(s) => s,
        Err(r) => return *r,
    };
    let streams = shared.streams;
    tracing::info!(
        pod = %format!("{}/{}", exec.namespace, exec.pod),
        container = %exec.container,
        attach = exec.attach,
        %protocol,
        "kubelet API: {} negotiated over WebSocket",
        if exec.attach { "attach" } else { "exec" }
    );
    upgrade_ws(req, protocol, key, slot, move |conn| {
        serve_remote_command(conn, streams, exec, protocol)
    })
}

async fn serve_remote_command(
    mut conn: WsConnection,
    streams: Arc<dyn ContainerStreams>,
    req: ExecRequest,
    protocol: &'static str,
) {
    let ch = Channels::of(protocol);
    let ready = if req.stdout {
        STDOUT
    } else if req.stderr {
        STDERR
    } else {
        ERROR
    };
    ch.send(&conn.tx, ready, b"").await;
    let outcome = match streams.exec(req.clone()).await {
        Err(e) => Some(Outcome::Failed(e.to_string())),
        Ok(io) => pump(&mut conn, io, &req, ch).await,
    };
    let Some(outcome) = outcome else {
        return;
    };
    if let Some(body) = final_status(protocol.starts_with("v4."), &outcome, &req) {
        ch.send(&conn.tx, ERROR, &body).await;
    }
    conn.close().await;
}

async fn pump(
    conn: &mut WsConnection,
    io: crate::seams::ExecIo,
    req: &ExecRequest,
    ch: Channels,
) -> Option<Outcome> {
    let crate::seams::ExecIo { input, mut output } = io;
    let tx = conn.tx.clone();
    loop {
        tokio::select! {
            out = output.recv() => match out {
                Some(ExecOutput::Stdout(b)) if req.stdout => { ch.send(&tx, STDOUT, &b).await; }
                Some(ExecOutput::Stderr(b)) if req.stderr => { ch.send(&tx, STDERR, &b).await; }
                Some(ExecOutput::Stdout(_) | ExecOutput::Stderr(_)) => {}
                Some(ExecOutput::Exited(code)) => return Some(Outcome::Exited(code)),
                Some(ExecOutput::Failed(e)) => return Some(Outcome::Failed(e)),
                None => return Some(Outcome::Failed("the edge ended the session".into())),
            },
            m = conn.incoming.recv() => {
                let m = m?;
                match ch.decode(&m) {
                    Some((STDIN, data)) if req.stdin && !data.is_empty() => {
                        let _ = input.send(ExecInput::Stdin(data)).await;
                    }
                    Some((RESIZE, data)) if req.tty => {
                        if let Ok(size) = serde_json::from_slice::<TerminalSize>(&data) {
                            let _ = input
                                .send(ExecInput::Resize { width: size.width, height: size.height })
                                .await;
                        }
                    }
                    _ => {}
                }
            }
        }
    }
}

// === port-forward ===

/// Kubelet's `NewV4Options`: the `port` query, repeated or comma-separated.
fn ports_of(req: &Request) -> Result<Vec<u16>, String> {
    let pairs = query_pairs(req.uri().query().unwrap_or_default());
    let mut ports = Vec::new();
    let mut any = false;
    for (_, v) in pairs.iter().filter(|(k, _)| k == "port") {
        any = true;
        if v.is_empty() {
            return Err("query parameter \"port\" cannot be empty".into());
        }
        for p in v.split(',') {
            let port: u16 = p
                .parse()
                .map_err(|e| format!("unable to parse {v:?} as a port: {e}"))?;
            if port < 1 {
                return Err(format!("port {v:?} must be > 0"));
            }
            ports.push(port);
            if ports.len() > MAX_PORTS {
                return Err(format!("at most {MAX_PORTS} ports per connection"));
            }
        }
    }
    if !any {
        return Err("query parameter \"port\" is required".into());
    }
    Ok(ports)
}

pub(super) fn port_forward(req: Request, shared: Shared, p: PodPath) -> Response {
    let ports = match ports_of(&req) {
        Ok(ports) => ports,
        Err(e) => return text(StatusCode::BAD_REQUEST, e),
    };
    let (protocol, key) = match ws_handshake(req.headers(), &PORT_FORWARD_PROTOCOLS) {
        Ok(p) => p,
        Err(r) => return *r,
    };
    let slot = match shared.slot() {
        Ok(s) => s,
        Err(r) => return *r,
    };
    let streams = shared.streams;
    tracing::info!(
        pod = %format!("{}/{}", p.namespace, p.pod),
        %protocol,
        ?ports,
        "kubelet API: port-forward negotiated over WebSocket"
    );
    upgrade_ws(req, protocol, key, slot, move |conn| {
        serve_port_forward(conn, streams, p, ports, Channels::of(protocol))
    })
}

async fn serve_port_forward(
    mut conn: WsConnection,
    streams: Arc<dyn ContainerStreams>,
    p: PodPath,
    ports: Vec<u16>,
    ch: Channels,
) {
    let mut to_pods = Vec::new();
    let mut forwards = tokio::task::JoinSet::new();
    for (i, port) in ports.iter().copied().enumerate() {
        let (data, error) = (2 * i as u8, 2 * i as u8 + 1);
        ch.send(&conn.tx, data, &port.to_le_bytes()).await;
        ch.send(&conn.tx, error, &port.to_le_bytes()).await;
        let (to_pod, from_client) = mpsc::channel::<Bytes>(8);
        to_pods.push(to_pod);
        let (streams, tx) = (streams.clone(), conn.tx.clone());
        let (ns, name, uid) = (
            p.namespace.clone(),
            p.pod.clone(),
            p.uid.clone().unwrap_or_default(),
        );
        forwards.spawn(async move {
            let result = match streams.port_forward(&ns, &name, port).await {
                Err(e) => Err(e.to_string()),
                Ok(tunnel) => splice_ws(tunnel, from_client, &tx, ch, data).await,
            };
            if let Err(e) = result {
                let msg =
                    format!("error forwarding port {port} to pod {ns}/{name}, uid {uid}: {e}");
                ch.send(&tx, error, msg.as_bytes()).await;
            }
        });
    }
    loop {
        tokio::select! {
            m = conn.incoming.recv() => {
                let Some(m) = m else { break };
                if let Some((c, data)) = ch.decode(&m)
                    && c % 2 == 0
                    && let Some(to_pod) = to_pods.get(usize::from(c / 2))
                    && !data.is_empty()
                {
                    let _ = to_pod.send(data).await;
                }
            }
            done = forwards.join_next() => if done.is_none() { break },
        }
    }
    drop(to_pods);
    while forwards.join_next().await.is_some() {}
    conn.close().await;
}

async fn splice_ws(
    tunnel: Box<dyn crate::seams::TunnelIo>,
    from_client: mpsc::Receiver<Bytes>,
    tx: &WsSender,
    ch: Channels,
    data: u8,
) -> Result<(), String> {
    let (from_pod, to_pod) = tokio::io::split(tunnel);
    let down = client_to_pod(from_client, to_pod);
    let up = pod_to_client(from_pod, |b| async move { ch.send(tx, data, &b).await });
    // The pod's side ending ends the forward (as kubelet's copy does).
    tokio::pin!(down);
    tokio::select! {
        r = up => r,
        r = &mut down => match r {
            Ok(()) => Ok(()),
            Err(e) => Err(e),
        },
    }
}
