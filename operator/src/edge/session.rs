//! One edge's live session: reads its messages (heartbeats, pod reports, log chunks) until it
//! disconnects or is closed, and hands each to the part that owns it.

use std::sync::Arc;

use decloud_crds::contracts::WORKLOAD_LABEL;
use decloud_proto as pb;
use decloud_proto::edge_message::Kind;
use kube::ResourceExt;
use kube::runtime::reflector::ObjectRef;
use tokio_util::sync::CancellationToken;
use tonic::Streaming;
use tracing::{debug, info, warn};

use super::liveness::Transition;
use crate::context::Context;
use crate::pods::{self, StatusReport};

/// Takes one pod report of `provider`'s edge: usage to the ledger, status to the writer. A
/// report on a pod not bound to this edge is dropped and counted.
pub(crate) fn on_pod_status(ctx: &Arc<Context>, provider: &str, report: pb::PodStatus) {
    if !pods::authorized(ctx, provider, &report) {
        ctx.metrics.unauthorized_reports.inc();
        debug!(pod = %format!("{}/{}", report.namespace, report.name), uid = %report.uid,
            "dropping a report on a pod not bound to this edge");
        return;
    }
    if let Some(usage) = &report.usage {
        let key = ObjectRef::new(&report.name).within(&report.namespace);
        let workload = ctx.pods.get(&key).and_then(|pod| {
            let name = pod.labels().get(WORKLOAD_LABEL)?.clone();
            Some((report.namespace.clone(), name))
        });
        ctx.usage.record(provider, &report.uid, workload, usage);
    }
    ctx.report_status(StatusReport {
        provider: provider.to_string(),
        report,
        received: std::time::Instant::now(),
    });
}

/// Takes one availability change of `provider`'s edge (pause, drain, resume): the Provider
/// is reconciled at once, or — for a change hard on the heels of another — once the pacing
/// interval has passed; a repeated state changes nothing.
fn on_availability(ctx: &Arc<Context>, provider: &str, id: u64, a: &pb::Availability) {
    let availability = super::EdgeAvailability::from_proto(a);
    info!(requested = ?availability.requested, reason = %availability.reason, "edge availability");
    match ctx.registry.set_availability(provider, id, availability) {
        None => {}
        Some(delay) if delay.is_zero() => ctx.reconcile_provider(provider),
        Some(delay) => {
            let (ctx, provider) = (ctx.clone(), provider.to_string());
            tokio::spawn(async move {
                tokio::time::sleep(delay).await;
                ctx.reconcile_provider(&provider);
            });
        }
    }
}

/// Reads one edge's messages until it disconnects or the session is closed.
pub(crate) async fn drive(
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
                    Kind::PodGone(gone) => pods::on_pod_gone(&ctx, &provider, id, &gone.uid),
                    Kind::Hello(_) => warn!("ignoring a second Hello on the same session"),
                    Kind::LogChunk(chunk) => crate::relay::on_log_chunk(&ctx, &provider, chunk),
                    Kind::PodEvent(ev) => pods::on_pod_event(&ctx, &provider, ev),
                    Kind::NodeStats(stats) => crate::stats::on_node_stats(&ctx, &provider, stats),
                    Kind::Availability(a) => on_availability(&ctx, &provider, id, &a),
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
