//! The pod side of virtual-kubelet: pods bound to virtual nodes go to their edges.
//!
//! Push-first: the pod watch feeds every change to the live session of the pod's node, and the
//! edge pushes status changes. A re-list of pods (watch restart) resends every edge its full set.

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::Ordering;

use decloud_crds::contracts::{node_name, provider_of_node};
use decloud_crds::pods::is_terminal;
use decloud_proto as pb;
use futures::{Stream, StreamExt};
use k8s_openapi::api::core::v1::Pod;
use kube::ResourceExt;
use kube::runtime::reflector::ObjectRef;
use kube::runtime::watcher::{self, Event};
use tracing::{debug, warn};

use super::admission::{
    Disposition, NODE_AFFINITY_REASON, already_refused, disposition, refuse, virtual_node,
};
use super::claims::send_volume_sets;
use super::config::{pod_refs, push_config, resolve, track};
use super::deletion::{deletion_grace, spawn_finish};
use crate::context::Context;
use crate::edge::EdgeSession;

/// Sends `provider`'s edge its full desired set (on connect and after a pod re-list).
///
/// Runs under the registry lock, so it must not block. Returns what the caller must do once
/// the lock is released ([`PodSetFollowUp::spawn`]).
pub(crate) fn send_pod_set(
    ctx: &Context,
    provider: &str,
    session: &mut EdgeSession,
) -> PodSetFollowUp {
    let node = node_name(provider);
    let platform = session.platform().cloned();
    let pods = ctx.pods.state_filter(|p| {
        p.spec.as_ref().and_then(|s| s.node_name.as_deref()) == Some(node.as_str())
    });
    let mut specs = Vec::new();
    let mut deletes = Vec::new();
    let mut finish = Vec::new();
    let mut refuse = Vec::new();
    let mut configured = Vec::new();
    for pod in pods {
        let spec = match disposition(
            &pod,
            ctx.config.allow_daemonsets,
            platform.as_ref(),
            ctx.services.workload_store(),
        ) {
            Disposition::Run(spec) => spec,
            Disposition::Hold(why) => {
                debug!(pod = %pod.name_any(), %why, "pod held back");
                continue;
            }
            // Judged by this edge's platform only now that it said Hello.
            Disposition::Refuse { reason, message }
                if reason == NODE_AFFINITY_REASON
                    && pod.metadata.deletion_timestamp.is_none()
                    && !already_refused(&pod, reason) =>
            {
                refuse.push((pod, reason, message));
                continue;
            }
            Disposition::Refuse { .. } => continue,
        };
        if spec.needs_config {
            configured.push((pod.clone(), spec.clone()));
        }
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
    // Each pod's configuration goes first, so its containers can start when the set arrives.
    for (pod, spec) in &configured {
        if let Some(config) = resolve(pod, spec, |r| ctx.config_sources.lookup(r)) {
            session.send_config(config);
        }
    }
    session.send_pod_set(specs);
    for (uid, grace) in deletes {
        session.delete(&uid, grace);
    }
    PodSetFollowUp { finish, refuse }
}

/// What is left to do after an edge was sent its pod set, outside the registry lock.
#[must_use]
pub(crate) struct PodSetFollowUp {
    /// Pods being deleted that the edge never ran: their deletion is finished now.
    finish: Vec<Arc<Pod>>,
    /// Pods the edge cannot run (its platform): failed with a reason and an Event.
    refuse: Vec<(Arc<Pod>, &'static str, String)>,
}

impl PodSetFollowUp {
    /// Nothing to do.
    pub(crate) fn none() -> Self {
        Self {
            finish: Vec::new(),
            refuse: Vec::new(),
        }
    }

    /// Adds `other`'s work to this.
    fn extend(&mut self, other: Self) {
        self.finish.extend(other.finish);
        self.refuse.extend(other.refuse);
    }

    /// Does it in the background.
    pub(crate) fn spawn(self, ctx: &Arc<Context>) {
        for pod in self.finish {
            spawn_finish(ctx, &pod);
        }
        for (pod, reason, message) in self.refuse {
            let ctx = ctx.clone();
            tokio::spawn(async move { refuse(&ctx, &pod, reason, message).await });
        }
    }
}

/// Consumes the operator's Pod watch (its owner: the shared store is filled as this polls),
/// and relays changes to edges. Runs until the watch ends.
pub(crate) async fn run_pod_watcher(
    ctx: Arc<Context>,
    stream: impl Stream<Item = watcher::Result<Event<Pod>>> + Send,
) {
    let mut stream = std::pin::pin!(stream);
    // Per pod: whether it counted towards its provider's allocation last time.
    let mut counted: HashMap<String, bool> = HashMap::new();
    while let Some(event) = stream.next().await {
        match event {
            Ok(Event::Apply(pod) | Event::InitApply(pod)) => on_pod(&ctx, &pod, &mut counted),
            Ok(Event::Delete(pod)) => on_pod_deleted(&ctx, &pod, &mut counted),
            Ok(Event::InitDone) => {
                ctx.readiness.synced.store(true, Ordering::Relaxed);
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
    let provider = provider_of_node(node).unwrap_or_default().to_string();
    let uid = pod.uid().unwrap_or_default();
    let counts = !is_terminal(pod) && pod.metadata.deletion_timestamp.is_none();
    // The ConfigMaps and Secrets it uses are read (by name) while it may still run.
    let refs = if is_terminal(pod) {
        Vec::new()
    } else {
        pod_refs(pod)
    };
    track(ctx, pod, refs);
    if counted.insert(uid.clone(), counts) != Some(counts) {
        ctx.reconcile_provider(&provider);
    }
    // The platform is the live session's Hello's; with no session it is judged when the edge
    // connects (send_pod_set).
    let platform = ctx
        .registry
        .with_session(&provider, |s| s.platform().cloned())
        .flatten();
    match disposition(
        pod,
        ctx.config.allow_daemonsets,
        platform.as_ref(),
        ctx.services.workload_store(),
    ) {
        Disposition::Hold(why) => {
            debug!(pod = %pod.name_any(), %why, "pod held back until its Workload is known");
        }
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
                let provider_gone = ctx.readiness.synced.load(Ordering::Relaxed)
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
                if spec.needs_config {
                    push_config(ctx, pod);
                }
                ctx.registry.with_session(&provider, |s| s.upsert(spec));
            }
        }
    }
}

fn on_pod_deleted(ctx: &Arc<Context>, pod: &Pod, counted: &mut HashMap<String, bool>) {
    let Some(node) = virtual_node(pod) else {
        return;
    };
    let provider = provider_of_node(node).unwrap_or_default();
    let uid = pod.uid().unwrap_or_default();
    counted.remove(&uid);
    track(ctx, pod, Vec::new());
    ctx.usage.pod_removed(&uid);
    ctx.registry.with_session(provider, |s| s.pod_removed(&uid));
    ctx.reconcile_provider(provider);
}

/// Resends every edge its full desired set every `period`: a safety net under the push path
/// (as kubelet's periodic sync is under its watch), so a change an edge missed (a race between
/// a session's start and the pod watch) is made good within one period.
pub(crate) async fn resync_periodically(ctx: Arc<Context>, period: std::time::Duration) {
    let mut tick = tokio::time::interval(period);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    tick.tick().await;
    loop {
        tick.tick().await;
        resync_all(&ctx);
    }
}

fn resync_all(ctx: &Arc<Context>) {
    let mut follow_up = PodSetFollowUp::none();
    ctx.registry.for_each_session(|provider, session| {
        follow_up.extend(send_pod_set(ctx, provider, session));
    });
    follow_up.spawn(ctx);
    // After the pods, so an edge never drops a volume a pod of its new set mounts.
    send_volume_sets(ctx, None);
}

/// Whether `provider` may report on the pod `report` names: it must be bound to its node.
pub(crate) fn authorized(ctx: &Context, provider: &str, report: &pb::PodStatus) -> bool {
    let key = ObjectRef::new(&report.name).within(&report.namespace);
    ctx.pods.get(&key).is_some_and(|pod| {
        pod.uid().as_deref() == Some(report.uid.as_str())
            && virtual_node(&pod) == Some(node_name(provider).as_str())
    })
}
