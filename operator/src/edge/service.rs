//! The gRPC server edges dial: one `Session` stream per edge.
//!
//! The edge's first message must be a Hello; the operator answers Welcome, then the edge's full
//! `PodSet`, then upserts and deletes as pods change. Heartbeats end in memory.

use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use decloud_crds::contracts::node_name;
use decloud_proto as pb;
use decloud_proto::edge_message::Kind;
use decloud_proto::edge_server::{Edge, EdgeServer};
use decloud_proto::{MAX_HTTP2_FRAME, TUNNEL_CONNECTION_WINDOW, TUNNEL_STREAM_WINDOW};
use tokio::net::TcpListener;
use tokio_stream::wrappers::{ReceiverStream, TcpListenerStream};
use tonic::metadata::MetadataMap;
use tonic::{Request, Response, Status, Streaming};
use tracing::{Instrument, info};

use super::auth::{self, EdgeAuthenticator, FailedAuthThrottle, Lookup};
use super::counting::{ConnectionLimits, CountingStream};
use super::registry::{HelloInfo, SESSION_QUEUE};
use super::session::{drive, on_pod_status};
use crate::context::Context;
use crate::provider::{Registration, ensure_provider, invalid_name, valid_provider_name};
use crate::{Error, Result, pods, relay};

/// How long an edge has to send its Hello once its credential is accepted.
const HELLO_TIMEOUT: Duration = Duration::from_secs(5);
/// HTTP/2 streams one edge connection may have open: its session, tunnels and log streams
/// (the per-edge tunnel cap is far below).
const MAX_STREAMS_PER_CONNECTION: u32 = 1024;
/// How long a session waits for the pod cache after a (re)start before refusing.
const CACHE_TIMEOUT: Duration = Duration::from_secs(30);

/// The `decloud.edge.v1.Edge` service.
pub(crate) struct EdgeService<A> {
    ctx: Arc<Context>,
    auth: A,
    throttle: Arc<FailedAuthThrottle>,
}

impl<A: EdgeAuthenticator> EdgeService<A> {
    /// A service answering edges with `ctx`, authorising them with `auth`.
    pub(crate) fn new(ctx: Arc<Context>, auth: A) -> Self {
        let throttle = Arc::new(FailedAuthThrottle::new(
            ctx.config.failed_auth_burst,
            ctx.config.failed_auth_per_minute,
        ));
        Self {
            ctx,
            auth,
            throttle,
        }
    }

    /// The provider the caller of any edge RPC (Session, Tunnel) is, from its request
    /// `metadata` alone: use before reading anything else of the request.
    ///
    /// A valid credential is always accepted, whatever others sent from the same address
    /// (`peer`): only refusals count against an address, and once it is out of budget its
    /// credentials are checked against the Provider cache only (no API call), and refused
    /// with `RESOURCE_EXHAUSTED`.
    pub(crate) async fn identify(
        &self,
        peer: Option<IpAddr>,
        metadata: &MetadataMap,
    ) -> Result<String, Status> {
        let throttled = self.throttle.check(peer);
        let lookup = if throttled.is_some() {
            Lookup::CacheOnly
        } else {
            Lookup::CacheThenApi
        };
        match self.auth.authenticate(metadata, lookup).await {
            Ok(name) => Ok(name),
            Err(status) => Err(self.refused(peer, status, throttled)),
        }
    }

    /// Counts a refusal against `peer` if `status` says the caller failed to prove who it is;
    /// what to answer: `throttled` (the address was out of budget) or `status`.
    fn refused(&self, peer: Option<IpAddr>, status: Status, throttled: Option<Status>) -> Status {
        if matches!(
            status.code(),
            tonic::Code::Unauthenticated | tonic::Code::PermissionDenied
        ) {
            self.throttle.refused(peer);
            if let Some(throttled) = throttled {
                self.ctx.metrics.auth_throttled.inc();
                return throttled;
            }
        }
        status
    }
}

fn standby() -> Status {
    Status::unavailable(
        "this decloud-operator replica is a standby: the operator is single-active and only the \
         leader serves edges; retry to reach the leader",
    )
}

#[tonic::async_trait]
impl<A: EdgeAuthenticator> Edge for EdgeService<A> {
    async fn register(
        &self,
        request: Request<pb::RegisterRequest>,
    ) -> Result<Response<pb::RegisterResponse>, Status> {
        let ctx = &self.ctx;
        if !ctx.readiness.leader.load(Ordering::Relaxed) {
            return Err(standby());
        }
        let peer = request.remote_addr().map(|a| a.ip());
        let throttled = self.throttle.check(peer);
        let req = request.into_inner();
        let name = req.provider_name.clone();
        if !valid_provider_name(&name) {
            return Err(invalid_name(&name));
        }
        // The token list is cached and re-read at most a few times a second, however many
        // tokens are tried: a valid token joins even from an address out of budget.
        ctx.tokens
            .check(&ctx.client, &ctx.config.namespace, &req.join_token)
            .await
            .map_err(|status| self.refused(peer, status, throttled))?;
        let credential = if req.credential.is_empty() {
            auth::new_credential(&name)
        } else if auth::credential_provider(&req.credential) == Some(name.as_str()) {
            req.credential.clone()
        } else {
            return Err(Status::invalid_argument(format!(
                "the credential asked for must be `{name}.<64 hex digits>`"
            )));
        };
        let hash = auth::sha256_hex(&credential);
        let registration = Registration {
            name: &name,
            owner: &req.owner,
            labels: &req.labels,
            offered: None,
            credential_hash: Some(&hash),
        };
        ensure_provider(ctx, &registration).await?;
        ctx.registry.readmit(&name);
        info!(provider = %name, "provider joined with a join token");
        Ok(Response::new(pb::RegisterResponse {
            provider_name: name,
            credential,
        }))
    }

    type SessionStream = ReceiverStream<Result<pb::OperatorMessage, Status>>;

    async fn session(
        &self,
        request: Request<Streaming<pb::EdgeMessage>>,
    ) -> Result<Response<Self::SessionStream>, Status> {
        let ctx = &self.ctx;
        if !ctx.readiness.leader.load(Ordering::Relaxed) {
            return Err(standby());
        }
        let peer = request.remote_addr().map(|a| a.ip());
        // Who is calling, from the metadata alone: nothing of the stream is read (or decoded)
        // for a caller that cannot prove it is a provider.
        let identified = self.identify(peer, request.metadata()).await?;
        let mut inbound = request.into_inner();
        let first = match tokio::time::timeout(HELLO_TIMEOUT, inbound.message()).await {
            Err(_) => {
                return Err(Status::deadline_exceeded(
                    "no Hello within 5 s of opening the Session",
                ));
            }
            Ok(Err(status)) => return Err(status),
            Ok(Ok(None)) => return Err(Status::cancelled("the Session closed before its Hello")),
            Ok(Ok(Some(m))) => m,
        };
        let Some(Kind::Hello(hello)) = first.kind else {
            return Err(Status::failed_precondition(
                "the first message of a Session must be a Hello",
            ));
        };
        let name = hello.provider_name.clone();
        if !valid_provider_name(&name) {
            return Err(invalid_name(&name));
        }
        if name != identified {
            return Err(Status::permission_denied(format!(
                "this credential belongs to provider {identified:?}, not {name:?}"
            )));
        }
        let registration = Registration {
            name: &name,
            owner: &hello.owner,
            labels: &hello.labels,
            offered: hello.offered,
            credential_hash: None,
        };
        ensure_provider(ctx, &registration).await?;
        match tokio::time::timeout(CACHE_TIMEOUT, ctx.pods.wait_until_ready()).await {
            Ok(Ok(())) => {}
            _ => {
                return Err(Status::unavailable(
                    "the operator's pod cache is not ready yet; retry",
                ));
            }
        }

        let (tx, rx) = tokio::sync::mpsc::channel(SESSION_QUEUE);
        let welcome = pb::Welcome {
            node_name: node_name(&name),
            heartbeat_interval_millis: ctx
                .config
                .heartbeat_interval
                .as_millis()
                .min(u128::from(u32::MAX)) as u32,
        };
        let mut follow_up = pods::PodSetFollowUp::none();
        let (id, close, _) =
            ctx.registry
                .connect(&name, HelloInfo::from_hello(&hello), tx, welcome, |s| {
                    follow_up = pods::send_pod_set(ctx, &name, s);
                });
        follow_up.spawn(ctx);
        pods::send_volume_sets(ctx, Some(&name));
        for report in hello.pods {
            on_pod_status(ctx, &name, report);
        }
        ctx.reconcile_provider(&name);
        info!(provider = %name, session = id, agent = %hello.agent_version, "edge connected");
        let span = tracing::info_span!("session", provider = %name, session = id);
        tokio::spawn(drive(ctx.clone(), name, id, inbound, close).instrument(span));
        Ok(Response::new(ReceiverStream::new(rx)))
    }

    type TunnelStream = relay::TunnelResponse;

    async fn tunnel(
        &self,
        request: Request<Streaming<pb::TunnelFrame>>,
    ) -> Result<Response<Self::TunnelStream>, Status> {
        // Only the provider a tunnel was asked of may open it (checked against this identity).
        let peer = request.remote_addr().map(|a| a.ip());
        let provider = self.identify(peer, request.metadata()).await?;
        relay::accept_tunnel(&self.ctx, &provider, request.into_inner()).await
    }
}

/// Connections the kernel may queue for the edge listener. When thousands of edges reconnect
/// at once (an operator restart) the default of 1,024 overflows, and an edge whose handshake
/// was dropped waits for SYN-ACK retransmissions (~31 s). Capped by `net.core.somaxconn`.
const EDGE_LISTEN_BACKLOG: u32 = 8192;

/// Binds the edge listener.
pub(crate) async fn bind(addr: SocketAddr) -> Result<TcpListener> {
    let serve_error = |source| Error::Serve {
        what: "edge gRPC",
        source,
    };
    let socket = if addr.is_ipv4() {
        tokio::net::TcpSocket::new_v4()
    } else {
        tokio::net::TcpSocket::new_v6()
    }
    .map_err(serve_error)?;
    socket.set_reuseaddr(true).map_err(serve_error)?;
    socket.bind(addr).map_err(serve_error)?;
    socket.listen(EDGE_LISTEN_BACKLOG).map_err(serve_error)
}

/// Serves the edge gRPC API on `listener` until the process ends: over TLS with `tls`,
/// plaintext without (local debugging only); `http` are plain HTTP routes served beside it.
pub(crate) async fn serve<A: EdgeAuthenticator>(
    listener: TcpListener,
    service: EdgeService<A>,
    tls: Option<tonic::transport::ServerTlsConfig>,
    http: axum::Router,
) -> Result<()> {
    let received = service.ctx.metrics.edge_bytes_received.clone();
    let sent = service.ctx.metrics.edge_bytes_sent.clone();
    let refused = service.ctx.metrics.edge_connections_refused.clone();
    let limits = ConnectionLimits::new(service.ctx.config.max_connections_per_address);
    let mut builder = tonic::transport::Server::builder();
    if let Some(tls) = tls {
        builder = builder.tls_config(tls)?;
    }
    builder
        .http2_keepalive_interval(Some(Duration::from_secs(10)))
        .http2_keepalive_timeout(Some(Duration::from_secs(10)))
        // Tunnels carry bulk data: h2's default 64 KiB windows would cap their throughput.
        .initial_stream_window_size(Some(TUNNEL_STREAM_WINDOW))
        .initial_connection_window_size(Some(TUNNEL_CONNECTION_WINDOW))
        .max_frame_size(Some(MAX_HTTP2_FRAME))
        // One session and the edge's tunnels and log streams: bounded per connection.
        .max_concurrent_streams(Some(MAX_STREAMS_PER_CONNECTION))
        // Plain HTTP routes beside the service (the one-line install's files), on the same
        // port and TLS: the one address every provider already reaches.
        .add_routes(tonic::service::Routes::from(
            tonic::service::Routes::new(
                EdgeServer::new(service)
                    .max_decoding_message_size(pb::MAX_MESSAGE_BYTES)
                    .max_encoding_message_size(pb::MAX_MESSAGE_BYTES),
            )
            .into_axum_router()
            .merge(http),
        ))
        // Connections come from our own listener, so tonic's `tcp_nodelay` does not reach
        // them: without it Nagle and delayed ACKs add tens of ms to every small tunnel write.
        .serve_with_incoming(tokio_stream::StreamExt::filter_map(
            TcpListenerStream::new(listener),
            move |conn| {
                let c = match conn {
                    Ok(c) => c,
                    Err(e) => return Some(Err(e)),
                };
                let slot = match c.peer_addr() {
                    Ok(peer) => match limits.acquire(&peer.ip()) {
                        Some(slot) => Some(slot),
                        None => {
                            // Dropped at once: the address holds its share of connections.
                            refused.inc();
                            return None;
                        }
                    },
                    Err(_) => None,
                };
                let _ = c.set_nodelay(true);
                Some(Ok(CountingStream::new(
                    c,
                    received.clone(),
                    sent.clone(),
                    slot,
                )))
            },
        ))
        .await?;
    Ok(())
}
