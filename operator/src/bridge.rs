//! The pod side of virtual-kubelet: pods bound to virtual nodes go to their edges, and the
//! edges' reports come back as pod status.
//!
//! Push-first: a pod watcher feeds every change to the live session of the pod's node, and the
//! edge pushes status changes. A re-list of pods (watch restart) resends every edge its full set.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Instant;

use chrono::Utc;
use decloud_proto as pb;
use futures::StreamExt;
use k8s_openapi::api::core::v1::Pod;
use kube::api::{Api, DeleteParams, Patch, PatchParams, Preconditions};
use kube::runtime::WatchStreamExt;
use kube::runtime::events::{Event as KubeEvent, EventType};
use kube::runtime::reflector::{self, ObjectRef};
use kube::runtime::watcher::{self, Event};
use kube::{Resource, ResourceExt};
use serde_json::json;
use sha2::{Digest, Sha256};
use tokio::sync::mpsc;
use tracing::{debug, info, warn};

use crate::context::Context;
use crate::registry::EdgeSession;
use crate::{Error, FIELD_MANAGER, forbidden, status, translate};

/// Reason of a pod refused because the edge cannot run what it asks.
pub const UNSUPPORTED_REASON: &str = "Unsupported";

/// An edge's report about one of its pods, queued for the status writer.
#[derive(Clone, Debug)]
pub struct StatusReport {
    /// The reporting provider (already authorised for this pod).
    pub provider: String,
    /// What the edge said.
    pub report: pb::PodStatus,
    /// When it arrived, for the bridge latency metric.
    pub received: Instant,
}

/// The virtual node a pod is bound to, if any.
pub fn virtual_node(pod: &Pod) -> Option<&str> {
    let node = pod.spec.as_ref()?.node_name.as_deref()?;
    crate::provider_of_node(node).map(|_| node)
}

/// What the bridge does with a pod bound to a virtual node.
#[derive(Debug, PartialEq)]
pub enum Disposition {
    /// Deliver this spec to the edge.
    Run(pb::PodSpec),
    /// Never deliver it: fail it with `reason` and `message`.
    Refuse {
        /// `Forbidden` or `Unsupported`.
        reason: &'static str,
        /// What is wrong, for people.
        message: String,
    },
}

/// Decides what to do with `pod`.
pub fn disposition(pod: &Pod) -> Disposition {
    let reasons = forbidden::forbidden_reasons(pod);
    if !reasons.is_empty() {
        return Disposition::Refuse {
            reason: forbidden::REASON,
            message: format!(
                "this pod asks for what a volunteer edge must not grant: {}",
                reasons.join("; ")
            ),
        };
    }
    match translate::pod_spec(pod) {
        Ok(spec) => Disposition::Run(spec),
        Err(e) => Disposition::Refuse {
            reason: UNSUPPORTED_REASON,
            message: format!("this pod cannot run on an edge: {e}"),
        },
    }
}

fn already_refused(pod: &Pod, reason: &str) -> bool {
    pod.status.as_ref().is_some_and(|s| {
        s.phase.as_deref() == Some("Failed") && s.reason.as_deref() == Some(reason)
    })
}

fn is_terminal(pod: &Pod) -> bool {
    matches!(
        pod.status.as_ref().and_then(|s| s.phase.as_deref()),
        Some("Succeeded" | "Failed")
    )
}

/// Grace period of a pod being deleted.
fn deletion_grace(pod: &Pod) -> u32 {
    pod.metadata
        .deletion_grace_period_seconds
        .unwrap_or(0)
        .clamp(0, i64::from(u32::MAX)) as u32
}

/// Sends `provider`'s edge its full desired set (on connect and after a pod re-list).
///
/// Runs under the registry lock, so it must not block. Returns the pods being deleted that
/// this edge never ran: nothing needs stopping, the caller finishes their deletion.
pub fn send_pod_set(ctx: &Context, provider: &str, session: &mut EdgeSession) -> Vec<Arc<Pod>> {
    let node = crate::node_name(provider);
    let pods = ctx.pods.state_filter(|p| {
        p.spec.as_ref().and_then(|s| s.node_name.as_deref()) == Some(node.as_str())
    });
    let mut specs = Vec::new();
    let mut deletes = Vec::new();
    let mut finish = Vec::new();
    for pod in pods {
        let Disposition::Run(spec) = disposition(&pod) else {
            continue;
        };
        if pod.metadata.deletion_timestamp.is_some() {
            if session.knows(&spec.uid) {
                // Keep it in the set so it is not killed outright, and stop it gracefully.
                deletes.push((spec.uid.clone(), deletion_grace(&pod)));
                specs.push(spec);
            } else {
                finish.push(pod);
            }
        } else {
            specs.push(spec);
        }
    }
    session.send_pod_set(specs);
    for (uid, grace) in deletes {
        session.delete(&uid, grace);
    }
    finish
}

/// Deletes `pod` with grace 0 (its edge confirmed, or it never reached one).
pub async fn finish_deletion(ctx: &Context, pod: &Pod) {
    let api: Api<Pod> = Api::namespaced(ctx.client.clone(), &pod.namespace().unwrap_or_default());
    let dp = DeleteParams {
        grace_period_seconds: Some(0),
        preconditions: Some(Preconditions {
            uid: pod.uid(),
            resource_version: None,
        }),
        ..DeleteParams::default()
    };
    let key = format!("{}/{}", pod.namespace().unwrap_or_default(), pod.name_any());
    match api.delete(&pod.name_any(), &dp).await {
        Ok(_) => info!(pod = %key, "pod deleted"),
        Err(kube::Error::Api(e)) if e.code == 404 || e.code == 409 => {}
        Err(e) => {
            let e = Error::from(e);
            warn!(pod = %key, error = %e, "finishing pod deletion");
            ctx.metrics.failed("bridge", &e);
        }
    }
}

/// Fails `pod` with `reason` and publishes a Warning Event; it never reaches an edge.
async fn refuse(ctx: &Context, pod: &Pod, reason: &'static str, message: String) {
    let key = format!("{}/{}", pod.namespace().unwrap_or_default(), pod.name_any());
    warn!(pod = %key, reason, %message, "refusing pod");
    let api: Api<Pod> = Api::namespaced(ctx.client.clone(), &pod.namespace().unwrap_or_default());
    let body = json!({
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": pod.name_any(), "namespace": pod.namespace()},
        "status": status::refused_status(pod, reason, &message, Utc::now()),
    });
    let pp = PatchParams::apply(FIELD_MANAGER).force();
    if let Err(e) = api
        .patch_status(&pod.name_any(), &pp, &Patch::Apply(&body))
        .await
    {
        let e = Error::from(e);
        warn!(pod = %key, error = %e, "failing refused pod");
        ctx.metrics.failed("bridge", &e);
        return;
    }
    let event = KubeEvent {
        type_: EventType::Warning,
        reason: reason.to_string(),
        note: Some(message),
        action: "Admit".into(),
        secondary: None,
    };
    if let Err(e) = ctx.recorder.publish(&event, &pod.object_ref(&())).await {
        warn!(pod = %key, error = %e, "publishing event");
    }
}

/// Watches every pod, keeps the pod cache, and relays changes to edges. Runs forever.
pub async fn run_pod_watcher(ctx: Arc<Context>, writer: reflector::store::Writer<Pod>) {
    let api: Api<Pod> = Api::all(ctx.client.clone());
    let stream = reflector::reflector(
        writer,
        watcher::watcher(api, watcher::Config::default()).default_backoff(),
    );
    let mut stream = std::pin::pin!(stream);
    // Per pod: whether it counted towards its provider's allocation last time.
    let mut counted: HashMap<String, bool> = HashMap::new();
    while let Some(event) = stream.next().await {
        match event {
            Ok(Event::Apply(pod) | Event::InitApply(pod)) => on_pod(&ctx, &pod, &mut counted),
            Ok(Event::Delete(pod)) => on_pod_deleted(&ctx, &pod, &mut counted),
            Ok(Event::InitDone) => {
                ctx.readiness
                    .synced
                    .store(true, std::sync::atomic::Ordering::Relaxed);
                resync_all(&ctx);
            }
            Ok(Event::Init) => {}
            Err(e) => warn!(error = %e, "pod watch"),
        }
    }
}

fn on_pod(ctx: &Arc<Context>, pod: &Pod, counted: &mut HashMap<String, bool>) {
    let Some(node) = virtual_node(pod) else {
        return;
    };
    let provider = crate::provider_of_node(node)
        .unwrap_or_default()
        .to_string();
    let uid = pod.uid().unwrap_or_default();
    let counts = !is_terminal(pod) && pod.metadata.deletion_timestamp.is_none();
    if counted.insert(uid.clone(), counts) != Some(counts) {
        ctx.reconcile_provider(&provider);
    }
    match disposition(pod) {
        Disposition::Refuse { reason, message } => {
            if pod.metadata.deletion_timestamp.is_some() {
                spawn_finish(ctx, pod);
            } else if !already_refused(pod, reason) {
                let (ctx, pod) = (ctx.clone(), pod.clone());
                tokio::spawn(async move { refuse(&ctx, &pod, reason, message).await });
            }
        }
        Disposition::Run(spec) => {
            if pod.metadata.deletion_timestamp.is_some() {
                let grace = deletion_grace(pod);
                let known = ctx.registry.with_session(&provider, |s| {
                    let known = s.knows(&uid);
                    if known {
                        s.delete(&uid, grace);
                    }
                    known
                });
                let provider_gone = ctx
                    .readiness
                    .synced
                    .load(std::sync::atomic::Ordering::Relaxed)
                    && ctx.providers.get(&ObjectRef::new(&provider)).is_none();
                match known {
                    // The edge stops it and answers PodGone.
                    Some(true) => {}
                    // Connected, and it never ran there: nothing to stop.
                    Some(false) => spawn_finish(ctx, pod),
                    // Gone for good: no edge will ever confirm.
                    None if provider_gone => spawn_finish(ctx, pod),
                    // Wait for the edge to come back.
                    None => debug!(pod = %pod.name_any(), "deletion waits for its edge"),
                }
            } else {
                ctx.registry.with_session(&provider, |s| s.upsert(spec));
            }
        }
    }
}

fn on_pod_deleted(ctx: &Context, pod: &Pod, counted: &mut HashMap<String, bool>) {
    let Some(node) = virtual_node(pod) else {
        return;
    };
    let provider = crate::provider_of_node(node).unwrap_or_default();
    let uid = pod.uid().unwrap_or_default();
    counted.remove(&uid);
    ctx.usage.pod_removed(&uid);
    ctx.registry.with_session(provider, |s| s.pod_removed(&uid));
    ctx.reconcile_provider(provider);
}

fn spawn_finish(ctx: &Arc<Context>, pod: &Pod) {
    let (ctx, pod) = (ctx.clone(), pod.clone());
    tokio::spawn(async move { finish_deletion(&ctx, &pod).await });
}

fn resync_all(ctx: &Arc<Context>) {
    let mut finish = Vec::new();
    ctx.registry.for_each_session(|provider, session| {
        finish.extend(send_pod_set(ctx, provider, session));
    });
    for pod in finish {
        spawn_finish(ctx, &pod);
    }
}

/// The edge `provider` says pod `uid` is gone: finish its deletion if one was asked for.
pub fn on_pod_gone(ctx: &Arc<Context>, provider: &str, session_id: u64, uid: &str) {
    ctx.registry
        .with_current(provider, session_id, |s| s.pod_gone(uid));
    let node = crate::node_name(provider);
    let pod = ctx.pods.find(|p| {
        p.uid().as_deref() == Some(uid)
            && p.spec.as_ref().and_then(|s| s.node_name.as_deref()) == Some(node.as_str())
    });
    match pod {
        Some(pod) if pod.metadata.deletion_timestamp.is_some() => spawn_finish(ctx, &pod),
        Some(pod) => {
            debug!(pod = %pod.name_any(), "edge reports a pod gone that is not being deleted")
        }
        None => {}
    }
}

/// Whether `provider` may report on the pod `report` names: it must be bound to its node.
pub fn authorized(ctx: &Context, provider: &str, report: &pb::PodStatus) -> bool {
    let key = ObjectRef::new(&report.name).within(&report.namespace);
    ctx.pods.get(&key).is_some_and(|pod| {
        pod.uid().as_deref() == Some(report.uid.as_str())
            && virtual_node(&pod) == Some(crate::node_name(provider).as_str())
    })
}

/// Writes queued pod reports as pod status, newest report per pod, forever.
pub async fn write_statuses(ctx: Arc<Context>, mut rx: mpsc::UnboundedReceiver<StatusReport>) {
    let written: Mutex<HashMap<String, [u8; 32]>> = Mutex::new(HashMap::new());
    let mut pending: HashMap<String, StatusReport> = HashMap::new();
    while let Some(first) = rx.recv().await {
        pending.insert(first.report.uid.clone(), first);
        while let Ok(more) = rx.try_recv() {
            pending.insert(more.report.uid.clone(), more);
        }
        let batch: Vec<StatusReport> = pending.drain().map(|(_, r)| r).collect();
        futures::stream::iter(batch)
            .for_each_concurrent(16, |r| write_status(&ctx, r, &written))
            .await;
        let mut w = written.lock().unwrap_or_else(|e| e.into_inner());
        if w.len() > 1024 && w.len() > 2 * ctx.pods.state().len() {
            let live: std::collections::HashSet<String> =
                ctx.pods.state().iter().filter_map(|p| p.uid()).collect();
            w.retain(|uid, _| live.contains(uid));
        }
    }
}

async fn write_status(ctx: &Context, r: StatusReport, written: &Mutex<HashMap<String, [u8; 32]>>) {
    let key = ObjectRef::new(&r.report.name).within(&r.report.namespace);
    let Some(pod) = ctx.pods.get(&key) else {
        return;
    };
    if pod.uid().as_deref() != Some(r.report.uid.as_str()) {
        return;
    }
    let runtime = ctx.registry.runtime(&r.provider);
    let host_ip = ctx.config.node_address.to_string();
    let status = status::pod_status(&pod, &r.report, &runtime, &host_ip, Utc::now());
    let digest: [u8; 32] = Sha256::digest(status.to_string().as_bytes()).into();
    let unchanged = written
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .get(&r.report.uid)
        == Some(&digest);
    if unchanged {
        return;
    }
    let api: Api<Pod> = Api::namespaced(ctx.client.clone(), &r.report.namespace);
    let body = json!({
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": r.report.name, "namespace": r.report.namespace},
        "status": status,
    });
    let pp = PatchParams::apply(FIELD_MANAGER).force();
    let span = tracing::debug_span!("pod_status", pod = %format!("{}/{}", r.report.namespace, r.report.name));
    let _guard = span.enter();
    match api
        .patch_status(&r.report.name, &pp, &Patch::Apply(&body))
        .await
    {
        Ok(_) => {
            written
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .insert(r.report.uid.clone(), digest);
            ctx.metrics.bridged(r.received.elapsed());
        }
        Err(kube::Error::Api(e)) if e.code == 404 => {}
        Err(e) => {
            let e = Error::from(e);
            warn!(error = %e, "writing pod status");
            ctx.metrics.failed("bridge", &e);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pod(spec: serde_json::Value) -> Pod {
        serde_json::from_value(
            json!({"metadata": {"name": "p", "namespace": "default", "uid": "u"}, "spec": spec}),
        )
        .unwrap()
    }

    #[test]
    fn dispositions() {
        let plain =
            pod(json!({"nodeName": "edge-a", "containers": [{"name": "c", "image": "b:1"}]}));
        assert!(matches!(disposition(&plain), Disposition::Run(_)));
        assert_eq!(virtual_node(&plain), Some("edge-a"));
        let privileged = pod(
            json!({"nodeName": "edge-a", "containers": [{"name": "c", "image": "b:1", "securityContext": {"privileged": true}}]}),
        );
        match disposition(&privileged) {
            Disposition::Refuse { reason, message } => {
                assert_eq!(reason, "Forbidden");
                assert!(message.contains("privileged"), "{message}");
            }
            other => panic!("{other:?}"),
        }
        let secret_env = pod(
            json!({"nodeName": "edge-a", "containers": [{"name": "c", "image": "b:1",
            "env": [{"name": "S", "valueFrom": {"secretKeyRef": {"name": "s", "key": "k"}}}]}]}),
        );
        assert!(matches!(
            disposition(&secret_env),
            Disposition::Refuse {
                reason: "Unsupported",
                ..
            }
        ));
        let elsewhere =
            pod(json!({"nodeName": "worker-1", "containers": [{"name": "c", "image": "b:1"}]}));
        assert_eq!(virtual_node(&elsewhere), None);
        let bare = pod(json!({"nodeName": "edge-", "containers": [{"name": "c", "image": "b:1"}]}));
        assert_eq!(virtual_node(&bare), None);
    }
}
