//! The gRPC server edges dial: one `Session` stream per edge.
//!
//! The edge's first message must be a Hello; the operator answers Welcome, then the edge's full
//! `PodSet`, then upserts and deletes as pods change. Heartbeats end in memory.

use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use decloud_crds::{Provider, ProviderPhase, ProviderSpec, ResourceOffer};
use decloud_proto as pb;
use decloud_proto::edge_message::Kind;
use decloud_proto::edge_server::{Edge, EdgeServer};
use kube::api::{Api, ObjectMeta, Patch, PatchParams, PostParams};
use tokio::net::TcpListener;
use tokio_stream::wrappers::{ReceiverStream, TcpListenerStream};
use tokio_util::sync::CancellationToken;
use tonic::metadata::MetadataMap;
use tonic::{Request, Response, Status, Streaming};
use tracing::{Instrument, debug, info, warn};

use crate::context::Context;
use crate::liveness::Transition;
use crate::quantity::{format_bytes, format_millis};
use crate::registry::{HelloInfo, SESSION_QUEUE};
use crate::{Error, Result, bridge};
use counting::CountingStream;

/// How long an edge has to send its Hello.
const HELLO_TIMEOUT: Duration = Duration::from_secs(10);
/// How long a session waits for the pod cache after a (re)start before refusing.
const CACHE_TIMEOUT: Duration = Duration::from_secs(30);

/// Metadata key of an edge's bearer credential (`authorization: Bearer <credential>`).
pub const CREDENTIAL_METADATA: &str = "authorization";
/// Metadata key naming the provider when the [`TrustingAuthenticator`] is in use (tests only).
pub const PROVIDER_METADATA: &str = "decloud-provider";

/// Decides who a caller is: the security seam of every edge RPC but `Register`.
#[tonic::async_trait]
pub trait EdgeAuthenticator: Send + Sync + 'static {
    /// The provider the caller's request `metadata` proves it speaks for. `claimed` is the name
    /// the caller gave in-band (a Hello's `provider_name`), if the RPC carries one; a caller
    /// claiming another provider than its credential's is refused. Errors are `Unauthenticated`
    /// (no or unknown credential) or `PermissionDenied` (revoked, other provider).
    async fn authenticate(
        &self,
        metadata: &MetadataMap,
        claimed: Option<&str>,
    ) -> Result<String, Status>;
}

/// Trusts every caller's claimed provider name (the Hello's, else the `decloud-provider`
/// metadata): for unit tests only, never served by the binary.
#[derive(Clone, Copy, Debug, Default)]
pub struct TrustingAuthenticator;

#[tonic::async_trait]
impl EdgeAuthenticator for TrustingAuthenticator {
    async fn authenticate(
        &self,
        metadata: &MetadataMap,
        claimed: Option<&str>,
    ) -> Result<String, Status> {
        claimed
            .map(str::to_string)
            .or_else(|| {
                metadata
                    .get(PROVIDER_METADATA)
                    .and_then(|v| v.to_str().ok())
                    .map(str::to_string)
            })
            .ok_or_else(|| Status::unauthenticated("no provider named"))
    }
}

/// The `decloud.edge.v1.Edge` service.
pub struct EdgeService<A> {
    ctx: Arc<Context>,
    auth: A,
    throttle: Arc<FailedAuthThrottle>,
}

impl<A: EdgeAuthenticator> EdgeService<A> {
    /// A service answering edges with `ctx`, authorising them with `auth`.
    pub fn new(ctx: Arc<Context>, auth: A) -> Self {
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
    pub async fn identify(
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

/// Whether `name` can be a provider (and so `edge-<name>` a node and Lease name).
pub fn valid_provider_name(name: &str) -> bool {
    let bytes = name.as_bytes();
    !name.is_empty()
        && name.len() <= 200
        && bytes
            .iter()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || *b == b'-' || *b == b'.')
        && bytes[0].is_ascii_alphanumeric()
        && bytes[bytes.len() - 1].is_ascii_alphanumeric()
}

fn standby() -> Status {
    Status::unavailable(
        "this decloud-operator replica is a standby: the operator is single-active and only the \
         leader serves edges; retry to reach the leader",
    )
}

fn invalid_name(name: &str) -> Status {
    Status::invalid_argument(format!(
        "provider name {name:?} must be 1-200 lowercase letters, digits, '-' or '.', starting \
         and ending with a letter or digit"
    ))
}

fn internal(e: kube::Error) -> Status {
    Status::unavailable(format!("the operator cannot reach the Kubernetes API: {e}"))
}

/// Creates (or, if an administrator made it without a credential, completes) the Provider of
/// a joining edge with the hash of its new credential. A name already joined is refused: a
/// second machine must not take over a provider's identity with a join token.
async fn register_provider(
    ctx: &Context,
    req: &pb::RegisterRequest,
    credential_hash: &str,
) -> Result<(), Status> {
    use crate::join::{CREDENTIAL_ANNOTATION, credential_hash as stored_hash, is_revoked};
    let name = &req.provider_name;
    let api: Api<Provider> = Api::all(ctx.client.clone());
    let annotations = std::collections::BTreeMap::from([(
        CREDENTIAL_ANNOTATION.to_string(),
        credential_hash.to_string(),
    )]);
    match api.get_opt(name).await.map_err(internal)? {
        Some(p) if p.metadata.deletion_timestamp.is_some() || is_revoked(&p) => {
            Err(Status::permission_denied(format!(
                "provider {name:?} is revoked; an administrator must delete it \
                 (`kubectl delete provider {name}`) before a machine may join under that name"
            )))
        }
        // The same join again (its answer was lost): same credential, same answer.
        Some(p) if stored_hash(&p).is_some_and(|h| crate::join::same(h, credential_hash)) => Ok(()),
        Some(p) if stored_hash(&p).is_some() => Err(Status::already_exists(format!(
            "provider {name:?} has already joined (its edge keeps its credential in its state \
             directory); to join this machine under that name, an administrator must first \
             delete the Provider (`kubectl delete provider {name}`), or pick another --name"
        ))),
        Some(p) => {
            let patch = serde_json::json!({"metadata": {
                "annotations": annotations,
                "resourceVersion": p.metadata.resource_version,
            }});
            let pp = PatchParams {
                field_manager: Some(crate::FIELD_MANAGER.into()),
                ..PatchParams::default()
            };
            api.patch(name, &pp, &Patch::Merge(&patch))
                .await
                .map_err(internal)?;
            Ok(())
        }
        None => {
            let labels = req
                .labels
                .iter()
                .filter(|(k, _)| !crate::node::reserved_label(k))
                .map(|(k, v)| (k.clone(), v.clone()))
                .collect();
            let provider = Provider {
                metadata: ObjectMeta {
                    name: Some(name.clone()),
                    labels: Some(labels),
                    annotations: Some(annotations),
                    // Born with the cleanup finalizer: the Provider controller need not add it,
                    // which at a join storm would race its own stale cache (422 on the patch).
                    finalizers: Some(vec![crate::provider::FINALIZER.to_string()]),
                    ..ObjectMeta::default()
                },
                spec: ProviderSpec {
                    owner: (!req.owner.is_empty()).then(|| req.owner.clone()),
                    offered: None,
                    cordoned: false,
                },
                status: None,
            };
            let pp = PostParams {
                field_manager: Some(crate::FIELD_MANAGER.into()),
                ..PostParams::default()
            };
            match api.create(&pp, &provider).await {
                Ok(_) => Ok(()),
                Err(kube::Error::Api(e)) if e.code == 409 => Err(Status::already_exists(format!(
                    "provider {name:?} joined concurrently; pick another --name"
                ))),
                Err(kube::Error::Api(e)) if e.code == 422 || e.code == 400 => {
                    Err(Status::invalid_argument(format!(
                        "the request does not make a valid Provider: {}",
                        e.message
                    )))
                }
                Err(e) => Err(internal(e)),
            }
        }
    }
}

/// Creates the Provider on an edge's first Hello; refuses deleted (revoked) ones.
async fn ensure_provider(ctx: &Context, hello: &pb::Hello) -> Result<(), Status> {
    let name = &hello.provider_name;
    let api: Api<Provider> = Api::all(ctx.client.clone());
    let labels: std::collections::BTreeMap<String, String> = hello
        .labels
        .iter()
        .filter(|(k, _)| !crate::node::reserved_label(k))
        .map(|(k, v)| (k.clone(), v.clone()))
        .collect();
    // The cache answers for edges that reconnect (thousands at once after an operator restart);
    // the API only for ones it does not know yet (just joined, or a new name).
    let cached = ctx
        .providers
        .get(&kube::runtime::reflector::ObjectRef::new(name))
        .map(|p| Provider::clone(&p));
    let found = match cached {
        Some(p) => Some(p),
        None => api.get_opt(name).await.map_err(internal)?,
    };
    match found {
        Some(p) if p.metadata.deletion_timestamp.is_some() => Err(Status::permission_denied(
            format!("provider {name:?} is being deleted (revoked); this edge may not connect"),
        )),
        Some(p)
            if p.status
                .as_ref()
                .is_some_and(|s| s.phase == ProviderPhase::Revoked) =>
        {
            Err(Status::permission_denied(format!(
                "provider {name:?} is revoked"
            )))
        }
        Some(p) => {
            ctx.registry.readmit(name);
            let current = p.metadata.labels.clone().unwrap_or_default();
            if labels.iter().any(|(k, v)| current.get(k) != Some(v)) {
                let patch = serde_json::json!({"metadata": {"labels": labels}});
                let pp = PatchParams {
                    field_manager: Some(crate::FIELD_MANAGER.into()),
                    ..PatchParams::default()
                };
                api.patch(name, &pp, &Patch::Merge(&patch))
                    .await
                    .map_err(|e| {
                        Status::invalid_argument(format!("updating provider labels: {e}"))
                    })?;
            }
            Ok(())
        }
        None if ctx.registry.is_revoked(name) => Err(Status::permission_denied(format!(
            "provider {name:?} was deleted (revoked); an administrator must re-create the Provider \
             before this edge may join again"
        ))),
        None => {
            let offered = hello.offered.map(|o| ResourceOffer {
                cpu: (o.cpu_millis > 0).then(|| format_millis(o.cpu_millis)),
                memory: (o.memory_bytes > 0).then(|| format_bytes(o.memory_bytes)),
                pods: (o.pods > 0).then(|| o.pods.min(10_000) as i32),
            });
            let provider = Provider {
                metadata: ObjectMeta {
                    name: Some(name.clone()),
                    labels: Some(labels),
                    finalizers: Some(vec![crate::provider::FINALIZER.to_string()]),
                    ..ObjectMeta::default()
                },
                spec: ProviderSpec {
                    owner: (!hello.owner.is_empty()).then(|| hello.owner.clone()),
                    offered,
                    cordoned: false,
                },
                status: None,
            };
            let pp = PostParams {
                field_manager: Some(crate::FIELD_MANAGER.into()),
                ..PostParams::default()
            };
            match api.create(&pp, &provider).await {
                Ok(_) => {
                    info!(provider = %name, "provider created on first Hello");
                    Ok(())
                }
                Err(kube::Error::Api(e)) if e.code == 409 => Ok(()),
                Err(kube::Error::Api(e)) if e.code == 422 || e.code == 400 => {
                    Err(Status::invalid_argument(format!(
                        "the Hello does not make a valid Provider: {}",
                        e.message
                    )))
                }
                Err(e) => Err(internal(e)),
            }
        }
    }
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
        crate::join::check_token(&ctx.client, &ctx.config.namespace, &req.join_token)
            .await
            .inspect_err(|status| self.refused(peer, status))?;
        let credential = if req.credential.is_empty() {
            crate::join::new_credential(&name)
        } else if crate::join::credential_provider(&req.credential) == Some(name.as_str()) {
            req.credential.clone()
        } else {
            return Err(Status::invalid_argument(format!(
                "the credential asked for must be `{name}.<64 hex digits>`"
            )));
        };
        register_provider(ctx, &req, &crate::join::sha256_hex(&credential)).await?;
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
        ensure_provider(ctx, &hello).await?;
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
            node_name: crate::node_name(&name),
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
                    finish = bridge::send_pod_set(ctx, &name, s);
                });
        for pod in finish {
            let ctx = ctx.clone();
            tokio::spawn(async move { bridge::finish_deletion(&ctx, &pod).await });
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

    type TunnelStream = crate::tunnels::TunnelResponse;

    async fn tunnel(
        &self,
        request: Request<Streaming<pb::TunnelFrame>>,
    ) -> Result<Response<Self::TunnelStream>, Status> {
        // Only the provider a tunnel was asked of may open it (checked against this identity).
        let peer = request.remote_addr().map(|a| a.ip());
        let provider = self.identify(peer, request.metadata(), None).await?;
        crate::tunnels::accept(&self.ctx, &provider, request.into_inner()).await
    }
}

fn on_pod_status(ctx: &Arc<Context>, provider: &str, report: pb::PodStatus) {
    if bridge::authorized(ctx, provider, &report) {
        if let Some(usage) = &report.usage {
            let key =
                kube::runtime::reflector::ObjectRef::new(&report.name).within(&report.namespace);
            let workload = ctx.pods.get(&key).and_then(|pod| {
                use kube::ResourceExt;
                let name = pod.labels().get("decloud.dev/workload")?.clone();
                Some((report.namespace.clone(), name))
            });
            ctx.usage.record(provider, &report.uid, workload, usage);
        }
        ctx.report_status(bridge::StatusReport {
            provider: provider.to_string(),
            report,
            received: std::time::Instant::now(),
        });
    } else {
        ctx.metrics.unauthorized_reports.inc();
        debug!(pod = %format!("{}/{}", report.namespace, report.name), uid = %report.uid,
            "dropping a report on a pod not bound to this edge");
    }
}

/// Reads one edge's messages until it disconnects or the session is closed.
async fn drive(
    ctx: Arc<Context>,
    provider: String,
    id: u64,
    mut inbound: Streaming<pb::EdgeMessage>,
    close: CancellationToken,
) {
    let reason = loop {
        tokio::select! {
            _ = close.cancelled() => break "closed",
            msg = inbound.message() => match msg {
                Ok(Some(pb::EdgeMessage { kind: Some(kind) })) => match kind {
                    Kind::Heartbeat(_) => {
                        if ctx.registry.heartbeat(&provider, id) == Some(Transition::BecameReady) {
                            info!("edge ready again");
                            ctx.reconcile_provider(&provider);
                        }
                    }
                    Kind::PodStatus(report) => on_pod_status(&ctx, &provider, report),
                    Kind::PodGone(gone) => bridge::on_pod_gone(&ctx, &provider, id, &gone.uid),
                    Kind::Hello(_) => warn!("ignoring a second Hello on the same session"),
                    Kind::LogChunk(chunk) => crate::logs::on_chunk(&ctx, &provider, chunk),
                },
                Ok(Some(pb::EdgeMessage { kind: None })) => debug!("ignoring an empty message"),
                Ok(None) => break "edge_closed",
                Err(status) => {
                    debug!(%status, "session stream error");
                    break "stream_error";
                }
            },
        }
    };
    info!(reason, "edge session ended");
    ctx.registry.disconnect(&provider, id, reason);
}

/// HTTP/2 flow-control window per stream (each tunnel is one stream).
pub const TUNNEL_STREAM_WINDOW: u32 = 4 * 1024 * 1024;
/// HTTP/2 flow-control window per edge connection (shared by its tunnels and session).
pub const TUNNEL_CONNECTION_WINDOW: u32 = 16 * 1024 * 1024;

/// Connections the kernel may queue for the edge listener. When thousands of edges reconnect
/// at once (an operator restart) the default of 1,024 overflows, and an edge whose handshake
/// was dropped waits for SYN-ACK retransmissions (~31 s). Capped by `net.core.somaxconn`.
const EDGE_LISTEN_BACKLOG: u32 = 8192;

/// Binds the edge listener.
pub async fn bind(addr: SocketAddr) -> Result<TcpListener> {
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
pub async fn serve<A: EdgeAuthenticator>(
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

mod counting;
mod throttle;
pub use throttle::FailedAuthThrottle;
#[cfg(test)]
pub(crate) mod tests;
