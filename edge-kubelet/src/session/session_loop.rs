//! The node side of the edge: one long-lived `Session` stream to the operator.
//!
//! Dials out (the edge is always the caller), says `Hello`, then heartbeats, pushes pod status
//! changes as they happen, and applies what the operator sends (`PodSet` on every connect, then
//! `PodUpsert` / `PodDelete`, log requests). Reconnects forever with exponential back-off and
//! jitter; pods keep running while the operator is away.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::{broadcast, mpsc};
use tokio::task::AbortHandle;
use tokio_stream::wrappers::ReceiverStream;
use tokio_util::sync::CancellationToken;

use decloud_proto as pb;
use pb::edge_client::EdgeClient;
use pb::edge_message::Kind as Out;
use pb::operator_message::Kind as In;

use super::{exec, logs, tunnel};
use crate::backoff::ReconnectBackoff;
use crate::clock::now_millis;
use crate::error::{Error, Result};
use crate::join::{self, EdgeCredential};
use crate::metrics::Metrics;
use crate::pod::{PodSupervisor, PodUpdate};

/// Who this edge is and how it talks to the operator.
#[derive(Debug, Clone)]
pub(crate) struct SessionConfig {
    /// Operator URL (`http://host:port`).
    pub(crate) operator: String,
    /// Provider name.
    pub(crate) provider_name: String,
    /// Provider owner (may be empty).
    pub(crate) owner: String,
    /// Labels copied onto the node.
    pub(crate) labels: HashMap<String, String>,
    /// Detected capacity.
    pub(crate) capacity: pb::Resources,
    /// Offered resources (capacity capped by the provider's flags, or as the console last
    /// set them). A change ends the session: the next one presents it in its Hello, the way
    /// the operator learns any offer.
    pub(crate) offered: tokio::sync::watch::Receiver<pb::Resources>,
    /// Heartbeat interval until the operator's `Welcome` says otherwise.
    pub(crate) heartbeat_interval: Duration,
    /// Upper bound of the reconnect back-off.
    pub(crate) max_backoff: Duration,
    /// This edge's credential and the operator CA it trusts.
    pub(crate) credential: EdgeCredential,
    /// What this machine is, reported in `Hello`.
    pub(crate) platform: pb::Platform,
    /// What protects the machine (userns-remap, the egress policy), for the Hello.
    pub(crate) isolation: Option<pb::HostIsolation>,
    /// How often the node's statistics are sent (for the kubelet API's `/stats/summary`).
    pub(crate) stats_interval: Duration,
    /// Whether the machine takes work: in the Hello, then on every change.
    pub(crate) availability: crate::control::Availability,
    /// Where the service proxy finds the live session's tunnels (service names on).
    pub(crate) services: Option<Arc<super::ServiceLink>>,
}

/// Runs sessions until `shutdown` is cancelled.
pub(crate) async fn run(
    cfg: SessionConfig,
    pods: Arc<PodSupervisor>,
    metrics: Arc<Metrics>,
    shutdown: CancellationToken,
) {
    let mut backoff = ReconnectBackoff::new(cfg.max_backoff);
    loop {
        let outcome = tokio::select! {
            _ = shutdown.cancelled() => return,
            r = session_once(&cfg, &pods, &metrics) => r,
        };
        metrics.set_connected(false);
        match outcome {
            Ok(welcomed) => {
                if welcomed {
                    backoff.reset();
                }
                tracing::warn!(operator = %cfg.operator, "session ended; reconnecting");
            }
            Err((welcomed, e)) => {
                if welcomed {
                    backoff.reset();
                }
                metrics.error(&e);
                tracing::warn!(operator = %cfg.operator, error = %e, "session failed; reconnecting");
            }
        }
        let delay = backoff.next_delay();
        tokio::select! {
            _ = shutdown.cancelled() => return,
            _ = tokio::time::sleep(delay) => {}
        }
    }
}

/// One session, from dial to disconnect. Ok(welcomed) on a clean end by the operator.
async fn session_once(
    cfg: &SessionConfig,
    pods: &Arc<PodSupervisor>,
    metrics: &Arc<Metrics>,
) -> std::result::Result<bool, (bool, Error)> {
    let mut welcomed = false;
    let r = session_inner(cfg, pods, metrics, &mut welcomed).await;
    r.map(|()| welcomed).map_err(|e| (welcomed, e))
}

async fn session_inner(
    cfg: &SessionConfig,
    pods: &Arc<PodSupervisor>,
    metrics: &Arc<Metrics>,
    welcomed: &mut bool,
) -> Result<()> {
    let endpoint = join::endpoint(&cfg.operator, cfg.credential.ca_pem.as_deref())?
        // Tunnels carry bulk data over this connection: h2's 64 KiB default windows are small.
        .initial_stream_window_size(pb::TUNNEL_STREAM_WINDOW)
        .initial_connection_window_size(pb::TUNNEL_CONNECTION_WINDOW)
        .max_frame_size(pb::MAX_HTTP2_FRAME);
    let channel = join::connect(endpoint).await?;
    let mut client = EdgeClient::new(channel)
        .max_decoding_message_size(pb::MAX_MESSAGE_BYTES)
        .max_encoding_message_size(pb::MAX_MESSAGE_BYTES);

    let tunnels = tunnel::Tunnels::new(tunnel_opener(client.clone(), cfg));

    let (tx, rx) = mpsc::channel::<pb::EdgeMessage>(256);
    // Subscribe before taking the snapshot for Hello, so no change falls in between.
    let mut updates = pods.board().subscribe();
    let mut availability = cfg.availability.watch();
    availability.mark_unchanged();
    let (availability_gen, availability_now) = cfg.availability.to_report();
    let mut offer = cfg.offered.clone();
    let offered = *offer.borrow_and_update();
    let hello = pb::Hello {
        volumes: pods.held_volumes().await,
        provider_name: cfg.provider_name.clone(),
        agent_version: crate::AGENT_VERSION.to_string(),
        capacity: Some(cfg.capacity),
        offered: Some(offered),
        labels: cfg.labels.clone(),
        runtime: pods.runtime_name().to_string(),
        owner: cfg.owner.clone(),
        pods: pods.board().all(),
        platform: Some(cfg.platform.clone()),
        isolation: cfg.isolation.clone(),
        pod_cidr: pods.runtime().pod_cidr().await.unwrap_or_default(),
        availability: Some(availability_now),
    };
    tx.send(msg(Out::Hello(hello)))
        .await
        .map_err(|_| Error::Session("outbound stream closed".into()))?;
    let request = cfg
        .credential
        .authorize(tonic::Request::new(ReceiverStream::new(rx)))?;
    let mut inbound = client.session(request).await?.into_inner();

    let first = inbound.message().await?;
    let welcome = match first.and_then(|m| m.kind) {
        Some(In::Welcome(w)) => w,
        Some(other) => {
            return Err(Error::Session(format!(
                "expected Welcome first, got {other:?}"
            )));
        }
        None => {
            return Err(Error::Session(
                "operator closed the session before Welcome".into(),
            ));
        }
    };
    *welcomed = true;
    metrics.set_connected(true);
    cfg.availability.reported(availability_gen);
    let mut sent_generation = availability_gen;
    let _link = cfg.services.as_ref().map(|l| l.attach(tunnels.clone()));
    let interval = if welcome.heartbeat_interval_millis > 0 {
        Duration::from_millis(u64::from(welcome.heartbeat_interval_millis))
    } else {
        cfg.heartbeat_interval
    };
    tracing::info!(operator = %cfg.operator, node = %welcome.node_name, heartbeat = ?interval, "session established");

    let mut heartbeat = tokio::time::interval(interval);
    heartbeat.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut seq = 0u64;
    let mut log_tasks: HashMap<u64, AbortHandle> = HashMap::new();
    let stats = tokio::spawn(super::stats::report_periodically(
        pods.runtime().clone(),
        tx.clone(),
        cfg.stats_interval,
    ));
    let result = loop {
        tokio::select! {
            _ = heartbeat.tick() => {
                seq += 1;
                let hb = pb::Heartbeat { seq, sent_unix_millis: now_millis() };
                if tx.send(msg(Out::Heartbeat(hb))).await.is_err() {
                    break Err(Error::Session("outbound stream closed".into()));
                }
                metrics.heartbeat();
            }
            update = updates.recv() => {
                let out: Vec<pb::EdgeMessage> = match update {
                    Ok(PodUpdate::Status(s)) => vec![msg(Out::PodStatus(s))],
                    Ok(PodUpdate::Gone(uid)) => vec![msg(Out::PodGone(pb::PodGone { uid }))],
                    Ok(PodUpdate::Event(e)) => vec![msg(Out::PodEvent(e))],
                    Err(broadcast::error::RecvError::Lagged(n)) => {
                        tracing::warn!(missed = n, "status updates lagged; resending all");
                        pods.board().all().into_iter().map(|s| msg(Out::PodStatus(s))).collect()
                    }
                    Err(broadcast::error::RecvError::Closed) => break Ok(()),
                };
                for m in out {
                    if tx.send(m).await.is_err() {
                        break;
                    }
                }
            }
            changed = availability.changed() => {
                if changed.is_err() {
                    break Ok(());
                }
                let (generation, report) = cfg.availability.to_report();
                // Pod counts change the watched status too; only a new state is news.
                if generation <= sent_generation {
                    continue;
                }
                sent_generation = generation;
                tracing::info!(state = report.state, reason = %report.reason, "telling the operator this machine's availability");
                if tx.send(msg(Out::Availability(report))).await.is_err() {
                    break Err(Error::Session("outbound stream closed".into()));
                }
                cfg.availability.reported(generation);
            }
            Ok(()) = offer.changed() => {
                tracing::info!("the offer changed: reconnecting to present it to the operator");
                break Ok(());
            }
            incoming = inbound.message() => {
                match incoming {
                    Ok(Some(m)) => handle(m, pods, &tx, &mut log_tasks, &tunnels),
                    Ok(None) => break Ok(()),
                    Err(status) => break Err(status.into()),
                }
            }
        }
        log_tasks.retain(|_, h| !h.is_finished());
    };
    for h in log_tasks.values() {
        h.abort();
    }
    stats.abort();
    result
}

/// Tunnels open on the session's own connection, saying who this edge is.
fn tunnel_opener(
    client: EdgeClient<tonic::transport::Channel>,
    cfg: &SessionConfig,
) -> tunnel::TunnelOpener {
    let credential = cfg.credential.clone();
    let provider = tonic::metadata::MetadataValue::try_from(cfg.provider_name.as_str()).ok();
    Arc::new(move |frames| {
        let mut client = client.clone();
        let mut request = tonic::Request::new(frames);
        if let Some(p) = provider.clone() {
            request.metadata_mut().insert(pb::PROVIDER_METADATA, p);
        }
        let request = credential.authorize(request);
        Box::pin(async move {
            let request = request.map_err(|e| tonic::Status::unauthenticated(e.to_string()))?;
            client.tunnel(request).await.map(|r| r.into_inner())
        })
    })
}

fn msg(kind: Out) -> pb::EdgeMessage {
    pb::EdgeMessage { kind: Some(kind) }
}

fn handle(
    m: pb::OperatorMessage,
    pods: &Arc<PodSupervisor>,
    tx: &mpsc::Sender<pb::EdgeMessage>,
    log_tasks: &mut HashMap<u64, AbortHandle>,
    tunnels: &tunnel::Tunnels,
) {
    match m.kind {
        Some(In::VolumeSet(set)) => {
            tracing::debug!(volumes = set.ids.len(), "received the volumes to keep");
            if let Err(e) = pods.submit_volume_set(set.ids) {
                tracing::warn!(error = %e, "ignoring the operator's volume set; no volume deleted");
            }
        }
        Some(In::PodSet(set)) => {
            tracing::info!(pods = set.pods.len(), "received desired pod set");
            pods.apply_pod_set(set.pods);
        }
        Some(In::PodUpsert(u)) => match u.pod {
            Some(spec) => {
                if let Err(e) = pods.upsert(spec) {
                    tracing::warn!(error = %e, "rejected pod upsert");
                }
            }
            None => tracing::warn!("PodUpsert without a pod"),
        },
        Some(In::PodConfig(c)) => {
            // Never logged: it carries the pod's Secrets.
            if let Err(e) = pods.set_config(c) {
                tracing::warn!(error = %e, "rejected pod configuration");
            }
        }
        Some(In::PodDelete(d)) => {
            pods.delete(
                &d.uid,
                Some(Duration::from_secs(u64::from(d.grace_period_seconds))),
            );
        }
        Some(In::LogRequest(r)) => {
            let id = r.request_id;
            let task = tokio::spawn(logs::serve(r, pods.clone(), tx.clone()));
            log_tasks.insert(id, task.abort_handle());
        }
        Some(In::LogCancel(c)) => {
            if let Some(h) = log_tasks.remove(&c.request_id) {
                h.abort();
            }
        }
        Some(In::OpenTunnel(t)) => tunnels.open(t, pods),
        Some(In::OpenExec(e)) => exec::open(tunnels, e, pods),
        Some(In::Welcome(_)) => tracing::warn!("unexpected second Welcome; ignored"),
        None => tracing::warn!("empty operator message; ignored"),
    }
}
