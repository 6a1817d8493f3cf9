//! Kubelet's events for pods on edges, the writer: checked events ([`super::events`]) are
//! recorded on their pods by one task with kube's event [`Recorder`], reporting controller
//! `kubelet` and instance the node's name, as kubelet's own events read in
//! `kubectl describe pod`.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use decloud_proto as pb;
use kube::runtime::events::{Event, EventType, Recorder, Reporter};
use kube::runtime::reflector::ObjectRef;
use tokio::sync::mpsc;
use tracing::{debug, warn};

use super::events::{PodEventRecord, Refusal, check};
use crate::context::Context;

/// Takes one event of `provider`'s edge: checked, rate-limited and queued for the writer.
/// Never blocks.
pub(crate) fn on_pod_event(ctx: &Arc<Context>, provider: &str, ev: pb::PodEvent) {
    let key = ObjectRef::new(&ev.name).within(&ev.namespace);
    let pod = ctx.pods.get(&key);
    let outcome = check(
        pod.as_deref(),
        provider,
        &ev,
        &ctx.event_limiter,
        Instant::now(),
    )
    .and_then(|record| {
        ctx.pod_events
            .try_send(record)
            .map_err(|_| Refusal::QueueFull)
    });
    match outcome {
        Ok(()) => {}
        Err(refusal) => {
            ctx.metrics.pod_event_refused(refusal.metric_label());
            debug!(pod = %format!("{}/{}", ev.namespace, ev.name), uid = %ev.uid,
                reason = refusal.metric_label(), "pod event not recorded");
        }
    }
}

/// The event's `action`, which kube's recorder folds repeats by (with the reason, not the
/// message): the reason and a hash of the message, so that, as with kubelet's recorder, only
/// identical events become one series ("x3 over 1m") and different messages stay apart.
fn action_of(record: &PodEventRecord) -> String {
    use std::hash::{Hash, Hasher};
    let mut h = std::collections::hash_map::DefaultHasher::new();
    record.message.hash(&mut h);
    // An action is at most 128 bytes; reasons are ASCII (checked).
    let reason = &record.reason[..record.reason.len().min(100)];
    format!("{reason}-{:016x}", h.finish())
}

/// Records queued events, one at a time, with one [`Recorder`] per node (kube's recorder
/// folds repeats of an event into one Event with a growing series count).
pub(crate) async fn write_pod_events(ctx: Arc<Context>, mut queue: mpsc::Receiver<PodEventRecord>) {
    let mut recorders: HashMap<String, (Recorder, Instant)> = HashMap::new();
    while let Some(record) = queue.recv().await {
        let now = Instant::now();
        // Recorders of nodes quiet for a while go, so the map follows the live nodes.
        if recorders.len() > 1024 {
            recorders.retain(|_, (_, used)| now.duration_since(*used) < Duration::from_secs(600));
        }
        let (recorder, used) = recorders.entry(record.node.clone()).or_insert_with(|| {
            let reporter = Reporter {
                controller: "kubelet".into(),
                instance: Some(record.node.clone()),
            };
            (Recorder::new(ctx.client.clone(), reporter), now)
        });
        *used = now;
        let event = Event {
            type_: if record.warning {
                EventType::Warning
            } else {
                EventType::Normal
            },
            reason: record.reason.clone(),
            note: Some(record.message.clone()),
            action: action_of(&record),
            secondary: None,
        };
        match recorder.publish(&event, &record.regarding).await {
            Ok(()) => {
                ctx.metrics.pod_events_recorded.inc();
            }
            Err(e) => warn!(error = %e, reason = %record.reason, "cannot record a pod event"),
        };
    }
}
