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
use decloud_proto::{TUNNEL_CONNECTION_WINDOW, TUNNEL_STREAM_WINDOW};
use tokio::net::TcpListener;
use tokio_stream::wrappers::{ReceiverStream, TcpListenerStream};
use tonic::metadata::MetadataMap;
use tonic::{Request, Response, Status, Streaming};
use tracing::{Instrument, info};

use super::auth::{self, EdgeAuthenticator, FailedAuthThrottle};
use super::counting::CountingStream;
use super::registry::{HelloInfo, SESSION_QUEUE};
use super::session::{drive, on_pod_status};
use crate::context::Context;
use crate::provider::{Registration, ensure_provider, invalid_name, valid_provider_name};
use crate::{Error, Result, pods, relay};

/// How long an edge has to send its Hello.
const HELLO_TIMEOUT: Duration = Duration::from_secs(10);
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
    /// `metadata`; `claimed` as in [`EdgeAuthenticator::authenticate`]. Use before anything else.
    /// `peer` (the source address) is throttled once it has had too many refusals.
    pub(crate) async fn identify(
        &self,
        peer: Option<IpAddr>,
        metadata: &MetadataMap,
        claimed: Option<&str>,
    ) -> Result<String, Status> {
        self.admit(peer)?;
        let result = self.auth.authenticate(metadata, claimed).await;
        if let Err(status) = &result {
            self.refused(peer, status);
        }
        result
    }

    fn admit(&self, peer: Option<IpAddr>) -> Result<(), Status> {
        self.throttle.admit(peer).inspect_err(|_| {
            self.ctx.metrics.auth_throttled.inc();
        })
    }

    /// Counts a refusal against `peer` if `status` says the caller failed to prove who it is.
    fn refused(&self, peer: Option<IpAddr>, status: &Status) {
        if matches!(
            status.code(),
            tonic::Code::Unauthenticated | tonic::Code::PermissionDenied
        ) {
            self.throttle.refused(peer);
        }
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
        self.admit(peer)?;
        let req = request.into_inner();
        let name = req.provider_name.clone();
        if !valid_provider_name(&name) {
            return Err(invalid_name(&name));
        }
        auth::check_token(&ctx.client, &ctx.config.namespace, &req.join_token)
            .await
            .inspect_err(|status| self.refused(peer, status))?;
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
        self.admit(peer)?;
        let metadata = request.metadata().clone();
        let mut inbound = request.into_inner();
        let first = match tokio::time::timeout(HELLO_TIMEOUT, inbound.message()).await {
            Err(_) => {
                return Err(Status::deadline_exceeded(
                    "no Hello within 10 s of opening the Session",
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
        let name = self.identify(peer, &metadata, Some(&name)).await?;
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
        let mut finish = Vec::new();
        let (id, close, _) =
            ctx.registry
                .connect(&name, HelloInfo::from_hello(&hello), tx, welcome, |s| {
                    finish = pods::send_pod_set(ctx, &name, s);
                });
        for pod in finish {
            let ctx = ctx.clone();
            tokio::spawn(async move { pods::finish_deletion(&ctx, &pod).await });
        }
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
        let provider = self.identify(peer, request.metadata(), None).await?;
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
/// plaintext without (local debugging only).
pub(crate) async fn serve<A: EdgeAuthenticator>(
    listener: TcpListener,
    service: EdgeService<A>,
    tls: Option<tonic::transport::ServerTlsConfig>,
) -> Result<()> {
    let received = service.ctx.metrics.edge_bytes_received.clone();
    let sent = service.ctx.metrics.edge_bytes_sent.clone();
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
        .add_service(
            EdgeServer::new(service)
                .max_decoding_message_size(pb::MAX_MESSAGE_BYTES)
                .max_encoding_message_size(pb::MAX_MESSAGE_BYTES),
        )
        // Connections come from our own listener, so tonic's `tcp_nodelay` does not reach
        // them: without it Nagle and delayed ACKs add tens of ms to every small tunnel write.
        .serve_with_incoming(tokio_stream::StreamExt::map(
            TcpListenerStream::new(listener),
            move |conn| {
                conn.map(|c| {
                    let _ = c.set_nodelay(true);
                    CountingStream::new(c, received.clone(), sent.clone())
                })
            },
        ))
        .await?;
    Ok(())
}
