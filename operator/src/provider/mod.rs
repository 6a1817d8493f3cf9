//! The Provider controller: Provider status and the virtual Node follow the edge's session.
//!
//! Reconciles run on Provider and Node changes, on session transitions (connect, heartbeats
//! resumed, heartbeats missed), on pod changes on the node, and every `--status-report-interval`
//! (default 5 min, for the periodic `lastHeartbeatTime` and reliability).

use std::sync::Arc;
use std::time::Duration;

use decloud_crds::contracts::{
    OPERATOR_FIELD_MANAGER, PROVIDER_FINALIZER, WORKLOAD_LABEL, node_name,
};
use decloud_crds::pods::{is_terminal, pod_requests};
use decloud_crds::quantity::{cpu_millis, format_bytes, format_millis, memory_bytes};
use decloud_crds::{
    AvailabilityState, Condition, Provider, ProviderAvailability, ProviderPhase, ProviderStatus,
    ResourceOffer, find_condition, set_condition,
};
use decloud_proto as pb;
use futures::StreamExt;
use jiff::Timestamp;
use k8s_openapi::api::core::v1::Pod;
use kube::api::{Api, DeleteParams, ListParams, Patch, PatchParams};
use kube::runtime::controller::{Action, Controller};
use kube::runtime::events::{Event, EventType};
use kube::runtime::finalizer::{Event as Finalizer, finalizer};
use kube::runtime::reflector::{ObjectRef, Store};
use kube::runtime::watcher;
use kube::{Resource, ResourceExt};
use serde_json::json;
use tokio::sync::mpsc;
use tokio_stream::wrappers::UnboundedReceiverStream;
use tracing::{Instrument, info, warn};

use crate::context::Context;
use crate::edge::auth::is_revoked;
use crate::edge::{EdgeAvailability, ProviderView};
use crate::time::rfc3339;
use crate::{Error, Result};

mod lease;
mod node;
mod registration;

pub(crate) use lease::renew_node_leases;
pub(crate) use registration::{Registration, ensure_provider, invalid_name, valid_provider_name};
/// Provider reconciles running at once. Each writes up to three objects; at a connect storm of
/// thousands of edges an unbounded controller would push the API server into timeouts (seen at
/// 5,000 simulated edges on 2 cores), and every timeout would come back as a retry.
const RECONCILES_IN_FLIGHT: u16 = 16;
/// Pods an edge may run when neither it nor its Provider says.
pub(crate) const DEFAULT_MAX_PODS: i32 = 110;

/// Reconciles one Provider.
pub(crate) async fn reconcile(provider: Arc<Provider>, ctx: Arc<Context>) -> Result<Action> {
    let name = provider.name_any();
    ctx.metrics.reconciled("provider");
    let api: Api<Provider> = Api::all(ctx.client.clone());
    let span = tracing::info_span!("reconcile", provider = %name);
    finalizer(&api, PROVIDER_FINALIZER, provider, |event| async {
        match event {
            Finalizer::Apply(p) => apply(&p, &ctx).await,
            Finalizer::Cleanup(p) => cleanup(&p, &ctx).await,
        }
    })
    .instrument(span)
    .await
    .map_err(|e| Error::Finalizer(Box::new(e)))
}

/// `period` give or take 10 %: edges that joined together (a fleet roll-out, an operator
/// restart) would otherwise refresh their status together, thousands of writes in one burst.
fn jittered(period: Duration) -> Duration {
    use rand::Rng as _;
    period.mul_f64(rand::rng().random_range(0.9..1.1))
}

/// Retries a failed reconcile after 2–6 s: jittered, so that failures of many Providers at
/// once (an overloaded API server) do not come back as one synchronised wave.
pub(crate) fn error_policy(provider: Arc<Provider>, error: &Error, ctx: Arc<Context>) -> Action {
    use rand::Rng as _;
    warn!(provider = %provider.name_any(), %error, "reconcile failed");
    ctx.metrics.failed("provider", error);
    Action::requeue(Duration::from_millis(
        rand::rng().random_range(2_000..6_000),
    ))
}

async fn apply(provider: &Provider, ctx: &Context) -> Result<Action> {
    let name = provider.name_any();
    if is_revoked(provider) {
        // Closes a live session at once (a no-op for later reconciles).
        ctx.registry.revoke(
            &name,
            tonic::Status::unauthenticated(format!(
                "provider {name:?} was revoked: its credential no longer works"
            )),
        );
    }
    let view = ctx.registry.view(&name);
    let window = ctx.config.unreachable_after();
    if view.ready.is_none() && view.operator_uptime < window {
        // Just started: give edges one heartbeat window to reconnect before judging them.
        return Ok(Action::requeue(
            window - view.operator_uptime + Duration::from_millis(100),
        ));
    }
    let node_name = node_name(&name);
    let pods = ctx.pods.state_filter(|p| {
        p.spec.as_ref().and_then(|s| s.node_name.as_deref()) == Some(node_name.as_str())
    });
    let mut status = desired_status(provider, &view, &pods, &ctx.config, Timestamp::now());
    // Usage rides along with writes that happen anyway; it never causes one by itself between
    // the periodic `lastHeartbeatTime` refreshes.
    if let Some(usage) = ctx.usage.provider(&name) {
        let writing = provider.status.as_ref() != Some(&status);
        if writing || status.usage.is_none() {
            status.usage = Some(usage);
        }
    }
    if provider.status.as_ref() != Some(&status) {
        let api: Api<Provider> = Api::all(ctx.client.clone());
        let body = json!({
            "apiVersion": "decloud.dev/v1alpha1",
            "kind": "Provider",
            "metadata": {"name": name},
            "status": status,
        });
        api.patch_status(
            &name,
            &PatchParams::apply(OPERATOR_FIELD_MANAGER).force(),
            &Patch::Apply(&body),
        )
        .await?;
        let old = provider
            .status
            .as_ref()
            .and_then(|s| s.availability.as_ref());
        if let Some((reason, note)) = availability_event(old, status.availability.as_ref()) {
            info!(reason, "{note}");
            publish(ctx, provider, reason, note).await;
        }
    }
    if status
        .availability
        .as_ref()
        .is_some_and(|a| a.state == AvailabilityState::Draining)
    {
        delete_plain_pods(ctx, &pods).await?;
    }
    let ready = status.phase == ProviderPhase::Ready;
    let node_exists = ctx.nodes.get(&ObjectRef::new(&node_name)).is_some();
    // The Node appears once the edge connected (capacity known), and stays while it exists.
    if status.capacity.is_some() || node_exists {
        node::apply_node(ctx, provider, &status, ready).await?;
    }
    Ok(Action::requeue(if ready {
        jittered(ctx.config.status_report_interval)
    } else {
        Duration::from_secs(60)
    }))
}

/// Records a Normal Event on `provider` (best effort: a failure is logged, not retried).
async fn publish(ctx: &Context, provider: &Provider, reason: &str, note: String) {
    let event = Event {
        type_: EventType::Normal,
        reason: reason.into(),
        note: Some(note),
        action: reason.into(),
        secondary: None,
    };
    if let Err(e) = ctx
        .recorder
        .publish(&event, &provider.object_ref(&()))
        .await
    {
        warn!(error = %e, reason, "could not publish event");
    }
}

async fn cleanup(provider: &Provider, ctx: &Context) -> Result<Action> {
    let name = provider.name_any();
    info!(provider = %name, "provider deleted: closing its session, removing its pods and node");
    ctx.registry.revoke(
        &name,
        tonic::Status::permission_denied(format!(
            "provider {name:?} was deleted (revoked); this edge may no longer connect"
        )),
    );
    let pods: Api<Pod> = Api::all(ctx.client.clone());
    let node_name = node_name(&name);
    let bound = pods
        .list(&ListParams::default().fields(&format!("spec.nodeName={node_name}")))
        .await?;
    for pod in bound {
        let ns = pod.namespace().unwrap_or_default();
        let api: Api<Pod> = Api::namespaced(ctx.client.clone(), &ns);
        let dp = DeleteParams {
            grace_period_seconds: Some(0),
            ..DeleteParams::default()
        };
        node::ignore_not_found(api.delete(&pod.name_any(), &dp).await.map(|_| ()))?;
    }
    node::delete_node(ctx, &name).await?;
    Ok(Action::await_change())
}

/// What an edge reports, as quantities. Memory is rounded down to whole MiB (never more than
/// the machine has), which also keeps `kubectl get prov` readable.
fn offer(r: &pb::Resources) -> ResourceOffer {
    const MI: i64 = 1 << 20;
    let memory = if r.memory_bytes >= MI {
        r.memory_bytes / MI * MI
    } else {
        r.memory_bytes
    };
    ResourceOffer {
        cpu: Some(format_millis(r.cpu_millis)),
        memory: Some(format_bytes(memory)),
        pods: (r.pods > 0).then(|| r.pods.min(i64::from(i32::MAX)) as i32),
        storage: (r.storage_bytes > 0).then(|| format_bytes(round_down_mi(r.storage_bytes))),
    }
}

/// `bytes` rounded down to whole MiB when at least one.
fn round_down_mi(bytes: i64) -> i64 {
    const MI: i64 = 1 << 20;
    if bytes >= MI { bytes / MI * MI } else { bytes }
}

/// Component-wise minimum of what is set (cpu/memory compared as quantities).
fn cap(limits: &[Option<&ResourceOffer>]) -> ResourceOffer {
    let min_by = |get: &dyn Fn(&ResourceOffer) -> Option<String>,
                  parse: fn(&str) -> Option<i64>| {
        limits
            .iter()
            .flatten()
            .filter_map(|r| get(r))
            .filter_map(|q| parse(&q).map(|v| (v, q)))
            .min_by_key(|(v, _)| *v)
            .map(|(_, q)| q)
    };
    ResourceOffer {
        cpu: min_by(&|r| r.cpu.clone(), cpu_millis),
        memory: min_by(&|r| r.memory.clone(), memory_bytes),
        pods: limits.iter().flatten().filter_map(|r| r.pods).min(),
        storage: min_by(&|r| r.storage.clone(), memory_bytes),
    }
}

/// The status `provider` should have, given its edge's `view` and the `pods` bound to its node.
///
/// Pure and stable: with unchanged inputs it returns the status already written, so a second
/// reconcile writes nothing.
pub(crate) fn desired_status(
    provider: &Provider,
    view: &ProviderView,
    pods: &[Arc<Pod>],
    config: &crate::Config,
    now: Timestamp,
) -> ProviderStatus {
    let old = provider.status.clone().unwrap_or_default();
    let phase = match view.ready {
        _ if is_revoked(provider) => ProviderPhase::Revoked,
        Some(true) => ProviderPhase::Ready,
        Some(false) => ProviderPhase::NotReady,
        // Not seen since this operator started (and the reconnect window has passed).
        None => match old.phase {
            ProviderPhase::Ready => ProviderPhase::NotReady,
            other => other,
        },
    };
    let window = config.unreachable_after();
    let ready_condition = match phase {
        ProviderPhase::Ready => (
            "True",
            "HeartbeatsReceived",
            "edge-kubelet is connected and heartbeating".to_string(),
        ),
        ProviderPhase::Pending => (
            "False",
            "NeverConnected",
            "no edge-kubelet has connected as this provider yet".to_string(),
        ),
        ProviderPhase::Revoked => (
            "False",
            "Revoked",
            "the provider's credential was revoked".to_string(),
        ),
        ProviderPhase::NotReady => (
            "False",
            "HeartbeatsMissed",
            format!(
                "no heartbeat from edge-kubelet for more than {}ms",
                window.as_millis()
            ),
        ),
    };
    let mut conditions = old.conditions.clone();
    set_condition(
        &mut conditions,
        Condition {
            type_: "Ready".into(),
            status: ready_condition.0.into(),
            reason: ready_condition.1.into(),
            message: ready_condition.2,
            last_transition_time: Some(rfc3339(now)),
            observed_generation: provider.metadata.generation,
        },
    );
    let transitioned =
        find_condition(&old.conditions, "Ready").is_none_or(|c| c.status != ready_condition.0);
    let last_heartbeat_time = match view.last_heartbeat {
        Some(seen) => {
            let seen = Timestamp::try_from(seen).unwrap_or(now);
            let fresh_enough = old
                .last_heartbeat_time
                .as_deref()
                .and_then(|t| t.parse::<Timestamp>().ok())
                .is_some_and(|t| {
                    let age = seen.duration_since(t);
                    !age.is_negative()
                        && std::time::Duration::try_from(age)
                            .is_ok_and(|a| a < config.status_report_interval)
                });
            if fresh_enough && !transitioned {
                old.last_heartbeat_time.clone()
            } else {
                Some(rfc3339(seen))
            }
        }
        None => old.last_heartbeat_time.clone(),
    };
    let hello = view.hello.as_ref();
    let capacity = hello.map(|h| offer(&h.capacity)).or(old.capacity.clone());
    let offered_by_edge = hello.map(|h| offer(&h.offered));
    let mut allocatable = capacity.as_ref().map(|c| {
        cap(&[
            Some(c),
            provider.spec.offered.as_ref(),
            offered_by_edge.as_ref(),
        ])
    });
    if let Some(a) = &mut allocatable {
        a.pods = a.pods.or(Some(DEFAULT_MAX_PODS));
    }
    let live: Vec<&Arc<Pod>> = pods.iter().filter(|p| !is_terminal(p)).collect();
    let (cpu, mem, storage) =
        live.iter()
            .map(|p| pod_requests(p))
            .fold((0i64, 0i64, 0i64), |(c, m, s), r| {
                (
                    c.saturating_add(r.cpu_millis),
                    m.saturating_add(r.memory_bytes),
                    s.saturating_add(r.ephemeral_storage_bytes),
                )
            });
    let availability = match hello {
        Some(h) => Some(availability_status(&h.availability, live.len())),
        // Not connected since this operator started: what was last written stands.
        None => old.availability.clone(),
    };
    ProviderStatus {
        phase,
        availability,
        node_name: Some(node_name(&provider.name_any())),
        agent_version: hello.map(|h| h.agent_version.clone()).or(old.agent_version),
        platform: hello.and_then(|h| h.platform.clone()).or(old.platform),
        isolation: hello.and_then(|h| h.isolation.clone()).or(old.isolation),
        last_heartbeat_time,
        capacity,
        allocatable,
        allocated: Some(ResourceOffer {
            cpu: Some(format_millis(cpu)),
            memory: Some(format_bytes(mem)),
            pods: Some(live.len().min(i32::MAX as usize) as i32),
            storage: Some(format_bytes(storage)),
        }),
        reliability: view
            .reliability
            .map(|r| format!("{r:.3}"))
            .or(old.reliability),
        usage: old.usage,
        conditions,
    }
}

/// The Provider's `status.availability` for its edge's request, with `pods` still bound here.
/// Stable: no timestamp of its own, so an unchanged request writes nothing.
fn availability_status(edge: &EdgeAvailability, pods: usize) -> ProviderAvailability {
    let state = edge.state(pods);
    let message = match state {
        AvailabilityState::Available => None,
        AvailabilityState::Paused => {
            Some("paused by its owner: running pods stay, no new ones come".to_string())
        }
        AvailabilityState::Draining => Some(format!(
            "draining: {pods} pod(s) still here; each Workload replica is re-placed elsewhere \
             and removed here once its replacement is Ready, plain pods are deleted"
        )),
        AvailabilityState::Drained => Some(
            "drained: nothing runs here; replicas that found no other provider wait for one \
             (see their Workloads)"
                .to_string(),
        ),
    };
    ProviderAvailability {
        state,
        reason: Some(edge.reason.clone()).filter(|r| !r.is_empty()),
        message,
        pods_remaining: (state == AvailabilityState::Draining)
            .then(|| pods.min(i32::MAX as usize) as i32),
        schedule: edge.schedule.clone(),
        next_change_time: edge.next_change.map(rfc3339),
    }
}

/// The Event that tells a planned change of availability (never a crash: those are the
/// `Ready` condition's), or `None` when the state did not change.
fn availability_event(
    old: Option<&ProviderAvailability>,
    new: Option<&ProviderAvailability>,
) -> Option<(&'static str, String)> {
    let before = old.map_or(AvailabilityState::Available, |a| a.state);
    let after = new.map_or(AvailabilityState::Available, |a| a.state);
    if before == after {
        return None;
    }
    let by = new
        .and_then(|a| a.reason.as_deref())
        .map_or(String::new(), |r| format!(" ({r})"));
    Some(match after {
        AvailabilityState::Available => ("Resumed", format!("the provider takes work again{by}")),
        AvailabilityState::Paused => (
            "Paused",
            format!("the provider's owner paused it{by}: running pods stay, no new ones come"),
        ),
        AvailabilityState::Draining => (
            "DrainRequested",
            format!(
                "the provider's owner asked to drain it{by}: its pods are moved elsewhere, \
                 make-before-break"
            ),
        ),
        AvailabilityState::Drained => (
            "Drained",
            format!("the provider is drained{by}: nothing runs here, it takes no new work"),
        ),
    })
}

/// While its owner drains the provider, plain pods (no Workload re-places them) bound to it are
/// deleted with their own grace period, as `kubectl drain --force` does; Workload replicas are
/// left to the Workload controller, which replaces them make-before-break.
async fn delete_plain_pods(ctx: &Context, pods: &[Arc<Pod>]) -> Result<()> {
    for pod in pods {
        let plain = !pod.labels().contains_key(WORKLOAD_LABEL);
        if !plain || pod.metadata.deletion_timestamp.is_some() || is_terminal(pod) {
            continue;
        }
        let ns = pod.namespace().unwrap_or_default();
        let api: Api<Pod> = Api::namespaced(ctx.client.clone(), &ns);
        info!(pod = %format!("{ns}/{}", pod.name_any()), "draining: deleting a plain pod");
        node::ignore_not_found(
            api.delete(&pod.name_any(), &DeleteParams::default())
                .await
                .map(|_| ()),
        )?;
    }
    Ok(())
}

/// Runs the Provider controller until the process ends.
pub(crate) async fn run(
    controller: Controller<Provider>,
    ctx: Arc<Context>,
    reconcile_rx: mpsc::UnboundedReceiver<ObjectRef<Provider>>,
) {
    controller
        .reconcile_on(UnboundedReceiverStream::new(reconcile_rx))
        .run(reconcile, error_policy, ctx)
        .for_each(|res| async move {
            if let Err(e) = res {
                tracing::debug!(error = %e, "provider reconcile");
            }
        })
        .await;
}

/// The Provider controller, fed by the operator's one Provider watch (`providers`, and
/// `provider_events` subscribed to it) and the virtual Nodes they own.
pub(crate) fn controller(
    providers: Store<Provider>,
    provider_events: impl futures::Stream<Item = Arc<Provider>> + Send + 'static,
    nodes: impl futures::Stream<Item = Result<k8s_openapi::api::core::v1::Node, watcher::Error>>
    + Send
    + 'static,
) -> Controller<Provider> {
    Controller::for_shared_stream(provider_events, providers)
        .owns_stream(nodes)
        .with_config(kube::runtime::controller::Config::default().concurrency(RECONCILES_IN_FLIGHT))
}

#[cfg(test)]
mod tests;
