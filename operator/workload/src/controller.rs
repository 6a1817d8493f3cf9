//! The controller: wiring (watches, caches, context) and the reconcile of one Workload.

use std::{
    collections::{BTreeMap, BTreeSet, HashMap},
    sync::{Arc, Mutex, PoisonError},
    time::{Duration, Instant},
};

use decloud_crds::{
    Placement, Provider, ReplicaPlacement, Workload, WorkloadStatus,
    contracts::{
        WORKLOAD_FIELD_MANAGER, WORKLOAD_FINALIZER, WORKLOAD_LABEL, node_name, provider_of_node,
    },
    find_condition,
    hosts::{HostClaim, granted_hosts, host_claim},
    persistence::{OnProviderLoss, PersistentReplica, replica_ordinal},
    pods::is_terminal,
    quantity::{cpu_millis, memory_bytes},
    tcp_ports::PortClaim,
};
use futures::StreamExt;
use k8s_openapi::{
    api::core::v1::{Namespace, Pod},
    jiff::Timestamp,
};
use kube::{
    Api, Client, Resource, ResourceExt,
    api::{DeleteParams, ListParams, Patch, PatchParams, PostParams},
    runtime::{
        Controller,
        controller::Action,
        events::{Event, EventType, Recorder, Reporter},
        finalizer::{Event as Finalizer, finalizer},
        reflector::{ObjectRef, Store},
    },
};
use tracing::{Instrument, debug, info, info_span, warn};

use crate::{
    Config, Error, Result,
    certificates::{
        CertificateProblem, Certificates, RECHECK_NOT_READY, RECHECK_READY, SharedCertificates,
        reconcile_certificate,
    },
    failover::{Health, OutageClock, Verdict, verdict},
    hosts::ClaimIndex,
    placement::{ARCH_LABEL, Allocatable, Candidate, OS_LABEL, Resources, is_platform_key},
    pod::{Replica, build_pod, replica_requests, requests_of, template_hash},
    rollout::{self, DeleteReason, Deletion, Observed, PlanInput},
    stateful::{self, StatefulInput},
    status::{
        CERTIFICATE_READY, DEGRADED, HOST_ACCEPTED, StatusInput, TCP_PORT_ASSIGNED, compute_status,
    },
    watches::{Resumed, Watches},
};

/// Pod creates one reconcile has in flight at once.
const CREATES_IN_FLIGHT: usize = 16;
/// How long a pod this controller created counts against its provider before the cache shows it.
const ASSUME_FOR: Duration = Duration::from_secs(30);
/// Retry delay after an unexpected error.
const ERROR_REQUEUE: Duration = Duration::from_secs(5);
/// Retry delay while a deleted Workload waits for its pods to go.
const CLEANUP_REQUEUE: Duration = Duration::from_secs(1);
/// How soon a TCP Workload refused a port looks again.
const TCP_RECHECK: Duration = Duration::from_secs(5);

// === impl Context ===

/// A pod created by this controller, not yet in the pod cache.
struct Assumed {
    node: String,
    requests: Resources,
    owner_uid: String,
    at: Instant,
}

/// Shared by every reconcile, built once.
pub(crate) struct Context {
    pub(crate) client: Client,
    /// The gateway's certificate store, when it serves HTTPS.
    pub(crate) certificates: SharedCertificates,
    config: Config,
    recorder: Recorder,
    /// Every Provider, from a watch.
    providers: Store<Provider>,
    /// Every pod, from a watch: the requests already bound to each provider.
    pods: Store<Pod>,
    /// Every Workload, from a watch: who else claims a host.
    workloads: Store<Workload>,
    /// Every Namespace, from a watch: the custom hosts granted to each.
    namespaces: Store<Namespace>,
    outages: OutageClock,
    /// Pods created here that the pod cache may not show yet, by `namespace/name`.
    assumed: Mutex<HashMap<String, Assumed>>,
    /// Held while reading capacity and creating pods, so two Workloads never both take the
    /// last room on a provider.
    placing: tokio::sync::Mutex<()>,
}

impl Context {
    /// Requests bound to each node: cached pods, plus created-but-not-yet-cached ones, minus the
    /// pods of the Workload `skip_uid` (the caller has a fresher list of those).
    fn node_usage(&self, skip_uid: &str) -> HashMap<String, Resources> {
        let mut usage: HashMap<String, Resources> = HashMap::new();
        let mut cached = BTreeSet::new();
        for pod in self.pods.state() {
            cached.insert(format!(
                "{}/{}",
                pod.namespace().unwrap_or_default(),
                pod.name_any()
            ));
            let owned = pod.owner_references().iter().any(|o| o.uid == skip_uid);
            let Some(node) = pod.spec.as_ref().and_then(|s| s.node_name.as_ref()) else {
                continue;
            };
            if owned || is_terminal(&pod) {
                continue;
            }
            let entry = usage.entry(node.clone()).or_default();
            *entry = entry.plus(requests_of(&pod));
        }
        let mut assumed = self.assumed.lock().unwrap_or_else(PoisonError::into_inner);
        assumed.retain(|key, a| !cached.contains(key) && a.at.elapsed() < ASSUME_FOR);
        for a in assumed.values().filter(|a| a.owner_uid != skip_uid) {
            let entry = usage.entry(a.node.clone()).or_default();
            *entry = entry.plus(a.requests);
        }
        usage
    }

    /// Counts a just-created pod against its node until the pod cache shows it.
    fn assume(&self, namespace: &str, pod: &str, assumed: Assumed) {
        self.assumed
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .insert(format!("{namespace}/{pod}"), assumed);
    }

    /// Publishes `events` a few at a time (a 1,000-replica placement has 1,000 of them).
    async fn publish_all(&self, workload: &Workload, events: Vec<(EventType, &str, String)>) {
        futures::stream::iter(events)
            .for_each_concurrent(8, |(type_, reason, note)| {
                self.publish(workload, type_, reason, note)
            })
            .await;
    }

    async fn publish(&self, workload: &Workload, type_: EventType, reason: &str, note: String) {
        let event = Event {
            type_,
            reason: reason.into(),
            note: Some(note),
            action: reason.into(),
            secondary: None,
        };
        if let Err(e) = self
            .recorder
            .publish(&event, &workload.object_ref(&()))
            .await
        {
            warn!(error = %e, reason, "could not publish event");
        }
    }
}

// === run ===

/// Runs the Workload controller over the process's shared watches until the process ends (or
/// the watches end).
///
/// How long a start-up step may take before the log says it is still waiting.
const STILL_WAITING: Duration = Duration::from_secs(15);

/// Awaits `step`, warning every [`STILL_WAITING`] that `what` has not finished yet.
async fn warn_while_pending<F: std::future::Future>(what: &str, step: F) -> F::Output {
    let mut step = std::pin::pin!(step);
    let mut waited = Duration::ZERO;
    loop {
        match tokio::time::timeout(STILL_WAITING, step.as_mut()).await {
            Ok(out) => return out,
            Err(_) => {
                waited += STILL_WAITING;
                warn!(
                    step = what,
                    waited_secs = waited.as_secs(),
                    "the Workload controller is still waiting to start"
                );
            }
        }
    }
}

/// Checks first that the CRDs are installed and says how to install them if not, then waits
/// until the Provider and pod caches are complete.
pub async fn run(client: Client, config: Config, watches: Watches) -> Result<()> {
    run_with_certificates(client, config, watches, None).await
}

/// [`run`], handing the certificates that Workloads name (`spec.expose.tls`) to
/// `certificates` (the gateway's HTTPS certificate store).
pub async fn run_with_certificates(
    client: Client,
    config: Config,
    watches: Watches,
    certificates: Option<Arc<dyn Certificates>>,
) -> Result<()> {
    let workloads_api = Api::<Workload>::all(client.clone());
    let one = ListParams::default().limit(1);
    warn_while_pending("the Workload CRD check", workloads_api.list(&one))
        .await
        .map_err(|e| Error::CrdMissing("workloads.decloud.dev", e))?;
    let providers_api = Api::<Provider>::all(client.clone());
    warn_while_pending("the Provider CRD check", providers_api.list(&one))
        .await
        .map_err(|e| Error::CrdMissing("providers.decloud.dev", e))?;

    let Watches {
        workloads,
        workload_events,
        workload_claims,
        deleted_workloads,
        namespaces,
        namespace_events,
        providers,
        provider_events,
        pods,
        pod_events,
        deleted_providers,
        deleted_pods,
    } = watches;
    // Without a full view of providers every replica would look lost; without one of Workloads
    // and Namespaces, hosts would change hands (and Warning events fly) at every start.
    // Each wait says so while it lasts: a cache that never fills must show in the log.
    let _ = warn_while_pending("the Provider cache", providers.wait_until_ready()).await;
    let _ = warn_while_pending("the pod cache", pods.wait_until_ready()).await;
    let _ = warn_while_pending("the Workload cache", workloads.wait_until_ready()).await;
    let _ = warn_while_pending("the Namespace cache", namespaces.wait_until_ready()).await;
    info!("provider, pod, Workload and Namespace caches ready; starting the Workload controller");

    let reporter = Reporter {
        controller: WORKLOAD_FIELD_MANAGER.into(),
        instance: std::env::var("POD_NAME").ok(),
    };
    let ctx = Arc::new(Context {
        recorder: Recorder::new(client.clone(), reporter),
        client: client.clone(),
        certificates,
        config,
        providers,
        pods: pods.clone(),
        workloads: workloads.clone(),
        namespaces,
        outages: OutageClock::default(),
        assumed: Mutex::default(),
        placing: tokio::sync::Mutex::new(()),
    });

    // Shared streams carry changes only; deletions come on their own channels.
    let pod_triggers = futures::stream::select(Resumed::new(pod_events), deleted_pods);
    let provider_triggers =
        futures::stream::select(Resumed::new(provider_events), deleted_providers);
    let workload_store = workloads.clone();
    // A change of one Workload (or its deletion) may hand its host to another claimant.
    let claims = Arc::new(ClaimIndex::new(ctx.config.base_domain.clone()));
    let (changed_store, gone_store, ns_store) =
        (workloads.clone(), workloads.clone(), workloads.clone());
    let (gone_claims, ns_claims) = (claims.clone(), claims.clone());
    // Bounded: each reconcile lists its Workload's pods and may create many; a few in flight keep
    // the API server responsive for everything else.
    Controller::for_shared_stream(Resumed::new(workload_events), workloads)
        .with_config(kube::runtime::controller::Config::default().concurrency(8))
        .owns_shared_stream(pod_triggers)
        .watches_shared_stream(provider_triggers, move |provider| {
            workloads_affected_by(&provider, &pods, &workload_store)
        })
        .watches_shared_stream(Resumed::new(workload_claims), move |wl| {
            claims.affected_by(&wl, false, &changed_store)
        })
        .watches_shared_stream(deleted_workloads, move |wl| {
            gone_claims.affected_by(&wl, true, &gone_store)
        })
        .watches_shared_stream(Resumed::new(namespace_events), move |ns| {
            ns_claims.affected_by_namespace(&ns, &ns_store)
        })
        .run(reconcile, error_policy, ctx)
        .for_each(|result| async move {
            match result {
                Ok((obj, _)) => debug!(workload = %obj, "reconciled"),
                Err(e) => debug!(error = %e, "reconcile failed"),
            }
        })
        .await;
    Ok(())
}

/// The Workloads a change of `provider` may matter to: those with replicas on it (failover,
/// status) and those short of replicas (new capacity).
fn workloads_affected_by(
    provider: &Provider,
    pods: &Store<Pod>,
    workloads: &Store<Workload>,
) -> Vec<ObjectRef<Workload>> {
    let node = provider_node(provider);
    let mut refs: BTreeSet<(String, String)> = pods
        .state()
        .iter()
        .filter(|p| p.spec.as_ref().and_then(|s| s.node_name.as_deref()) == Some(node.as_str()))
        .filter_map(|p| Some((p.namespace()?, p.labels().get(WORKLOAD_LABEL)?.clone())))
        .collect();
    for wl in workloads.state() {
        let short = wl.status.as_ref().is_none_or(|s| {
            s.ready_replicas < wl.spec.replicas
                || find_condition(&s.conditions, DEGRADED).is_some_and(|c| c.is_true())
        });
        if short {
            refs.insert((wl.namespace().unwrap_or_default(), wl.name_any()));
        }
    }
    refs.into_iter()
        .map(|(ns, name)| ObjectRef::new(&name).within(&ns))
        .collect()
}

fn provider_node(provider: &Provider) -> String {
    provider
        .status
        .as_ref()
        .and_then(|s| s.node_name.clone())
        .unwrap_or_else(|| node_name(&provider.name_any()))
}

// === reconcile ===

/// Reconciles one Workload: its finalizer, then [`apply`] or [`cleanup`].
pub(crate) async fn reconcile(workload: Arc<Workload>, ctx: Arc<Context>) -> Result<Action> {
    let ns = workload
        .namespace()
        .ok_or_else(|| Error::InvalidWorkload("a Workload must be namespaced".into()))?;
    let key = format!("{ns}/{}", workload.name_any());
    let api = Api::<Workload>::namespaced(ctx.client.clone(), &ns);
    async {
        finalizer(&api, WORKLOAD_FINALIZER, workload, |event| async {
            match event {
                Finalizer::Apply(wl) => apply(&wl, &ctx).await,
                Finalizer::Cleanup(wl) => cleanup(&wl, &ctx).await,
            }
        })
        .await
        .map_err(|e| Error::Finalizer(Box::new(e)))
    }
    .instrument(info_span!("reconcile", workload = %key))
    .await
}

/// Requeues soon after a failure; a cleanup still waiting for pods is not a failure.
pub(crate) fn error_policy(workload: Arc<Workload>, error: &Error, _ctx: Arc<Context>) -> Action {
    if let Error::PodsRemaining(n) = error.inner() {
        debug!(workload = %workload.name_any(), pods = n, "cleanup waiting for pods");
        return Action::requeue(CLEANUP_REQUEUE);
    }
    warn!(
        workload = %format!("{}/{}", workload.namespace().unwrap_or_default(), workload.name_any()),
        error = %error,
        kind = error.metric_label(),
        "reconcile failed"
    );
    Action::requeue(ERROR_REQUEUE)
}

/// How often a Workload whose ACME order runs is looked at again.
const ACME_PENDING_RECHECK: Duration = Duration::from_secs(3);

// The domain logic of a Workload. These would be `impl Workload { … }` as in controller-rs,
// but `Workload` lives in `decloud-crds`, so they are free functions here.

/// This Workload's own pods, read fresh from the API (the cache may lag behind our creates).
async fn owned_pods(workload: &Workload, ctx: &Context) -> Result<(Api<Pod>, Vec<Pod>)> {
    let ns = workload.namespace().unwrap_or_default();
    let uid = workload.uid().unwrap_or_default();
    let api = Api::<Pod>::namespaced(ctx.client.clone(), &ns);
    let selector = format!("{WORKLOAD_LABEL}={}", workload.name_any());
    let pods = api
        .list(&ListParams::default().labels(&selector))
        .await?
        .items
        .into_iter()
        .filter(|p| p.owner_references().iter().any(|o| o.uid == uid))
        .collect();
    Ok((api, pods))
}

/// Brings the Workload's pods one step closer to its spec and writes its status:
/// [`observe`] → [`plan`] → [`execute`] → [`summarize`].
async fn apply(workload: &Workload, ctx: &Context) -> Result<Action> {
    let uid = workload
        .uid()
        .ok_or_else(|| Error::InvalidWorkload("no uid".into()))?;
    // Our own pods change only through this reconcile, which never runs twice at once for
    // one Workload; others' pods are what the lock below is about.
    let (pods_api, pods) = owned_pods(workload, ctx).await?;
    let bindings = bindings(workload, ctx).await?;
    let placing = ctx.placing.lock().await;
    let snapshot = observe(workload, ctx, &uid, &pods, bindings, Timestamp::now());
    let step = plan(&snapshot);
    let outcome = execute(workload, ctx, &pods_api, &uid, &snapshot, &step).await?;
    // Events are published after the lock is released; they need not hold up other Workloads.
    drop(placing);
    ctx.publish_all(workload, outcome.events).await;
    if let Some(e) = outcome.failure {
        return Err(e.into());
    }
    let certificate = reconcile_certificate(
        workload,
        &ctx.client,
        &ctx.certificates,
        &snapshot.host,
        &ctx.config.base_domain,
    )
    .await?;
    let requeue = match &certificate {
        None => step.plan.requeue,
        Some(Ok(_)) => step.plan.requeue.min(RECHECK_READY),
        // An order in progress is looked at often: its certificate is served soon after.
        Some(Err(p)) if p.reason == "AcmePending" => step.plan.requeue.min(ACME_PENDING_RECHECK),
        Some(Err(_)) => step.plan.requeue.min(RECHECK_NOT_READY),
    };
    // A refused TCP claim is looked at again: ports free up as other Workloads go.
    let requeue = match &snapshot.tcp {
        Some(PortClaim::Refused { .. }) => requeue.min(TCP_RECHECK),
        _ => requeue,
    };
    let status = summarize(
        workload,
        &ctx.config,
        &snapshot,
        &step,
        &outcome.gone,
        outcome.created,
        certificate,
    );
    write_status(workload, ctx, status).await?;
    Ok(Action::requeue(requeue))
}

/// Where each replica's volumes are, for a stateful Workload (`None` for others): read from
/// the API, not the cache, so a binding the last step wrote is never missed (a replica created
/// again elsewhere would come up without its data).
async fn bindings(workload: &Workload, ctx: &Context) -> Result<Option<BTreeMap<u32, String>>> {
    if workload.spec.volume_claim_templates.is_empty() {
        return Ok(None);
    }
    let api = Api::<Workload>::namespaced(
        ctx.client.clone(),
        &workload.namespace().unwrap_or_default(),
    );
    let fresh = api.get_status(&workload.name_any()).await?;
    if fresh.uid() != workload.uid() {
        return Err(Error::InvalidWorkload(
            "the Workload was deleted and created again".into(),
        ));
    }
    let name = workload.name_any();
    Ok(Some(
        fresh
            .status
            .iter()
            .flat_map(|s| &s.persistent_replicas)
            .filter(|r| !r.provider.is_empty())
            .filter_map(|r| Some((replica_ordinal(&name, &r.name)?, r.provider.clone())))
            .collect(),
    ))
}

/// Bytes of persistent volumes bound to each provider by the Workloads other than `skip_uid`,
/// as their statuses say.
fn volume_usage(workloads: &Store<Workload>, skip_uid: &str) -> HashMap<String, i64> {
    let mut usage: HashMap<String, i64> = HashMap::new();
    for wl in workloads.state() {
        if wl.uid().as_deref() == Some(skip_uid) {
            continue;
        }
        let bytes = claim_bytes(&wl);
        if bytes == 0 {
            continue;
        }
        for r in wl.status.iter().flat_map(|s| &s.persistent_replicas) {
            let entry = usage.entry(r.provider.clone()).or_default();
            *entry = entry.saturating_add(bytes);
        }
    }
    usage
}

/// Bytes of one replica's volumes: the sum of the Workload's claim templates.
fn claim_bytes(workload: &Workload) -> i64 {
    workload
        .spec
        .volume_claim_templates
        .iter()
        .filter_map(|t| t.size_bytes())
        .map(|b| i64::try_from(b).unwrap_or(i64::MAX))
        .fold(0, i64::saturating_add)
}

// === observe ===

/// What one reconcile knows: the Workload's spec, its pods with their providers' verdicts, and
/// every provider as placement sees it.
#[derive(Clone, Debug)]
struct Snapshot {
    /// The Workload's name.
    name: String,
    /// `spec.replicas`.
    desired: usize,
    /// Hash of the current template.
    hash: String,
    /// Requests of one replica.
    per_replica: Resources,
    /// Failover grace, seconds.
    grace_seconds: i64,
    /// Placement rules.
    placement: Placement,
    /// The template's `nodeSelector`.
    node_selector: BTreeMap<String, String>,
    /// The Workload's pods.
    observed: Vec<Observed>,
    /// Every provider, with what is bound to it.
    candidates: Vec<Candidate>,
    /// Each provider's virtual node, by provider name.
    nodes: HashMap<String, String>,
    /// What the Workload's claim on its public host comes to.
    host: HostClaim,
    /// Its gateway TCP port (`TCP` Workloads only).
    tcp: Option<PortClaim>,
    /// When the snapshot was taken.
    now: Timestamp,
    /// Set for a Workload with `volumeClaimTemplates`.
    stateful: Option<StatefulView>,
}

/// What a stateful Workload's step knows beyond the rest.
#[derive(Clone, Debug)]
struct StatefulView {
    /// The provider holding each ordinal's volumes.
    bindings: BTreeMap<u32, String>,
    /// Each provider's verdict for a replica bound to it.
    verdicts: BTreeMap<String, Verdict>,
    /// Providers their owners drain.
    draining: BTreeSet<String>,
    /// Bytes of one replica's volumes.
    volume_bytes: i64,
    on_loss: OnProviderLoss,
}

/// Reads the caches into a [`Snapshot`]. `pods` are the Workload's own, fresher than the cache.
fn observe(
    workload: &Workload,
    ctx: &Context,
    uid: &str,
    pods: &[Pod],
    bindings: Option<BTreeMap<u32, String>>,
    now: Timestamp,
) -> Snapshot {
    let spec = &workload.spec;
    let host = host_claim(
        workload,
        ctx.workloads.state().iter().map(AsRef::as_ref),
        &ctx.config.base_domain,
        &|ns: &str| granted_hosts(&ctx.namespaces, ns),
    );
    let tcp = ctx
        .config
        .tcp_claim(workload, ctx.workloads.state().iter().map(AsRef::as_ref));
    let grace_seconds = spec
        .failover
        .as_ref()
        .map_or(decloud_crds::default_failover_grace(), |f| f.grace_seconds)
        .max(0);
    let grace = Duration::from_secs(grace_seconds.unsigned_abs());
    let providers = ctx.providers.state();
    let by_node: HashMap<String, &Provider> = providers
        .iter()
        .map(|p| (provider_node(p), p.as_ref()))
        .collect();

    let mut usage = ctx.node_usage(uid);
    for pod in pods.iter().filter(|p| !is_terminal(p)) {
        if let Some(node) = pod.spec.as_ref().and_then(|s| s.node_name.clone()) {
            let entry = usage.entry(node).or_default();
            *entry = entry.plus(requests_of(pod));
        }
    }
    // Only a stateful replica takes storage, so only its placement reads the others' volumes.
    let volumes = match &bindings {
        Some(_) => volume_usage(&ctx.workloads, uid),
        None => HashMap::new(),
    };
    let candidates = providers
        .iter()
        .map(|p| {
            let used = usage.get(&provider_node(p)).copied().unwrap_or_default();
            let stored = volumes.get(&p.name_any()).copied().unwrap_or_default();
            candidate(p, used.plus(Resources::storage(stored)))
        })
        .collect();
    let stateful = bindings.map(|bindings| StatefulView {
        bindings,
        verdicts: providers
            .iter()
            .map(|p| {
                let health = Health::of(Some(p));
                let first_seen = ctx.outages.observe(&p.name_any(), &health, now);
                (p.name_any(), verdict(&health, first_seen, now, grace))
            })
            .collect(),
        draining: providers
            .iter()
            .filter(|p| p.is_draining())
            .map(|p| p.name_any())
            .collect(),
        volume_bytes: claim_bytes(workload),
        on_loss: spec
            .persistence
            .as_ref()
            .map(|p| p.on_provider_loss)
            .unwrap_or_default(),
    });

    let observed = pods
        .iter()
        .map(|pod| {
            let r = Replica::from_pod(pod);
            let node = r.node.clone().unwrap_or_default();
            let provider = by_node.get(&node).copied();
            let provider_name = provider.map_or_else(
                || provider_of_node(&node).unwrap_or(&node).to_string(),
                |p| p.name_any(),
            );
            let health = Health::of(provider);
            let first_seen = ctx.outages.observe(&provider_name, &health, now);
            Observed {
                pod: r.name,
                provider: provider_name,
                hash: r.hash,
                phase: r.phase,
                ready: r.ready,
                terminating: r.terminating,
                verdict: verdict(&health, first_seen, now, grace),
                draining: provider.is_some_and(Provider::is_draining),
            }
        })
        .collect();

    Snapshot {
        name: workload.name_any(),
        desired: usize::try_from(spec.replicas).unwrap_or(0),
        hash: template_hash(&spec.template),
        per_replica: replica_requests(&spec.template.spec),
        grace_seconds,
        placement: spec.placement.clone().unwrap_or_default(),
        node_selector: spec.template.spec.node_selector.clone(),
        observed,
        candidates,
        nodes: by_node
            .iter()
            .map(|(node, p)| (p.name_any(), node.clone()))
            .collect(),
        host,
        tcp,
        now,
        stateful,
    }
}

// === plan ===

/// What one reconcile does.
#[derive(Clone, Debug, PartialEq, Eq)]
struct Step {
    /// Deletions, creations (by provider), shortage and when to look again.
    plan: rollout::Plan,
    /// `(provider, node, ordinal)` of each replica to create (an ordinal for a stateful one).
    creates: Vec<(String, String, Option<u32>)>,
    /// A stateful Workload's replicas after the step: `status.persistentReplicas`.
    replicas: Vec<PersistentReplica>,
    /// Stateful replicas that cannot run where their data is, for `Degraded`.
    waiting: Vec<String>,
}

/// Decides the step: pure, over the snapshot alone.
fn plan(s: &Snapshot) -> Step {
    let (plan, ordinals, replicas, waiting) = match &s.stateful {
        None => {
            let plan = rollout::plan(&PlanInput {
                desired: s.desired,
                hash: &s.hash,
                observed: &s.observed,
                candidates: &s.candidates,
                per_replica: s.per_replica,
                spread: s.placement.spread,
                selector: s.placement.provider_selector.as_ref(),
                node_selector: &s.node_selector,
            });
            let ordinals = vec![None; plan.create.len()];
            (plan, ordinals, Vec::new(), Vec::new())
        }
        Some(view) => {
            let p = stateful::plan(&StatefulInput {
                workload: &s.name,
                desired: s.desired,
                hash: &s.hash,
                observed: &s.observed,
                bindings: &view.bindings,
                verdicts: &view.verdicts,
                draining: &view.draining,
                candidates: &s.candidates,
                per_replica: s.per_replica,
                volume_bytes: view.volume_bytes,
                spread: s.placement.spread,
                selector: s.placement.provider_selector.as_ref(),
                node_selector: &s.node_selector,
                on_loss: view.on_loss,
                grace_seconds: s.grace_seconds,
            });
            let ordinals = p.ordinals.into_iter().map(Some).collect();
            (p.plan, ordinals, p.replicas, p.waiting)
        }
    };
    let creates = plan
        .create
        .iter()
        .zip(ordinals)
        .map(|(provider, ordinal)| {
            let node = s
                .nodes
                .get(provider)
                .cloned()
                .unwrap_or_else(|| node_name(provider));
            (provider.clone(), node, ordinal)
        })
        .collect();
    Step {
        plan,
        creates,
        replicas,
        waiting,
    }
}

// === execute ===

/// An event to publish: type, reason, note.
type Note = (EventType, &'static str, String);

/// What [`execute`] did.
struct Outcome {
    /// Pods deleted (or already gone).
    gone: BTreeSet<String>,
    /// `(pod, provider)` of each replica created.
    created: Vec<(String, String)>,
    /// Events to publish, one per pod touched.
    events: Vec<Note>,
    /// The first create that failed, if any.
    failure: Option<kube::Error>,
}

/// Carries out `step`: deletions one by one, then creations a few at a time. A failed delete
/// stops the step; a failed create is reported in [`Outcome::failure`] after the others.
async fn execute(
    workload: &Workload,
    ctx: &Context,
    pods_api: &Api<Pod>,
    uid: &str,
    s: &Snapshot,
    step: &Step,
) -> Result<Outcome> {
    let ns = workload.namespace().unwrap_or_default();
    let mut events = Vec::new();
    let mut gone = BTreeSet::new();
    for d in &step.plan.delete {
        let params = if d.force {
            DeleteParams::default().grace_period(0)
        } else {
            DeleteParams::default()
        };
        match pods_api.delete(&d.pod, &params).await {
            Ok(_) => {}
            Err(kube::Error::Api(s)) if s.code == 404 => {}
            Err(e) => return Err(e.into()),
        }
        gone.insert(d.pod.clone());
        let note = deletion_note(d, s.grace_seconds);
        info!(pod = %d.pod, provider = %d.provider, force = d.force, reason = note.1, "deleting pod");
        events.push(note);
    }

    // Creates go out a few at a time: a 1,000-replica Workload is placed in seconds, not
    // one API round trip after another.
    // Service names as /etc/hosts entries, fixed at creation like a container's resolv.conf.
    let namespace = workload.namespace().unwrap_or_default();
    let aliases = decloud_crds::services::host_aliases(
        ctx.workloads.state().iter().map(AsRef::as_ref),
        &namespace,
    );
    let planned = step
        .creates
        .iter()
        .map(|(provider, node, ordinal)| {
            let mut pod = build_pod(workload, &s.hash, node, *ordinal)?;
            if let Some(spec) = pod.spec.as_mut() {
                spec.host_aliases = (!aliases.is_empty()).then(|| aliases.clone());
            }
            Ok((provider.clone(), node.clone(), pod))
        })
        .collect::<Result<Vec<_>>>()?;
    let results: Vec<(String, String, kube::Result<Pod>)> =
        futures::stream::iter(planned.into_iter().map(|(provider, node, pod)| async move {
            let result = pods_api.create(&PostParams::default(), &pod).await;
            (provider, node, result)
        }))
        .buffered(CREATES_IN_FLIGHT)
        .collect()
        .await;
    let mut created = Vec::new();
    let mut failure = None;
    for (provider, node, result) in results {
        let pod = match result {
            Ok(pod) => pod,
            Err(e) => {
                // Say why in `kubectl describe`, not only in the controller's log.
                events.push((
                    EventType::Warning,
                    "FailedCreate",
                    format!("could not create a replica pod on provider {provider}: {e}"),
                ));
                failure.get_or_insert(e);
                continue;
            }
        };
        let name = pod.name_any();
        ctx.assume(
            &ns,
            &name,
            Assumed {
                node,
                requests: s.per_replica,
                owner_uid: uid.to_string(),
                at: Instant::now(),
            },
        );
        info!(pod = %name, provider = %provider, "placed replica");
        events.push((
            EventType::Normal,
            "Placed",
            format!("placed replica {name} on provider {provider}"),
        ));
        created.push((name, provider));
    }
    Ok(Outcome {
        gone,
        created,
        events,
        failure,
    })
}

/// The event that explains a deletion.
fn deletion_note(d: &Deletion, grace_seconds: i64) -> Note {
    match &d.reason {
        DeleteReason::Failover { down_for } => (
            EventType::Warning,
            "Failover",
            format!(
                "provider {} NotReady for {}s (grace {grace_seconds}s): replacing pod {}",
                d.provider,
                down_for.as_secs(),
                d.pod
            ),
        ),
        DeleteReason::Abandoned => (
            EventType::Warning,
            "ForceDeleted",
            format!("pod {} was stopping on lost provider {}", d.pod, d.provider),
        ),
        DeleteReason::Finished => (
            EventType::Normal,
            "Replacing",
            format!("pod {} on {} has finished; replacing it", d.pod, d.provider),
        ),
        DeleteReason::Surplus => (
            EventType::Normal,
            "ScaledDown",
            format!("removed pod {} from provider {}", d.pod, d.provider),
        ),
        DeleteReason::Drained { replaced: true } => (
            EventType::Normal,
            "Evacuated",
            format!(
                "pod {} removed from provider {}, which its owner drains: its replacement \
                 elsewhere is Ready",
                d.pod, d.provider
            ),
        ),
        DeleteReason::Drained { replaced: false } => (
            EventType::Warning,
            "Evacuated",
            format!(
                "pod {} removed from provider {}, which its owner drains; no other provider \
                 can take the replica now: it waits, unplaced, for one",
                d.pod, d.provider
            ),
        ),
        DeleteReason::Replaced | DeleteReason::MakeRoom => (
            EventType::Normal,
            "Replaced",
            format!(
                "pod {} on {} replaced by the new template",
                d.pod, d.provider
            ),
        ),
    }
}

// === summarize ===

/// The status after the step: the replicas that remain, those just created, and the reasons
/// for any shortage. Pure.
fn summarize(
    workload: &Workload,
    config: &Config,
    s: &Snapshot,
    step: &Step,
    gone: &BTreeSet<String>,
    created: Vec<(String, String)>,
    certificate: Option<std::result::Result<String, CertificateProblem>>,
) -> WorkloadStatus {
    let remaining = || {
        s.observed
            .iter()
            .filter(|o| !o.terminating && !gone.contains(&o.pod))
    };
    let mut placements: Vec<ReplicaPlacement> = remaining()
        .map(|o| ReplicaPlacement {
            pod: o.pod.clone(),
            provider: o.provider.clone(),
            phase: o.phase.clone(),
            ready: o.serving(),
        })
        .collect();
    let mut updated = remaining().filter(|o| o.hash == s.hash).count();
    for (pod, provider) in created {
        updated += 1;
        placements.push(ReplicaPlacement {
            pod,
            provider,
            phase: "Pending".into(),
            ready: false,
        });
    }
    let now_text = s.now.strftime("%Y-%m-%dT%H:%M:%SZ").to_string();
    compute_status(StatusInput {
        generation: workload.metadata.generation,
        desired: s.desired,
        selector: workload.pod_selector(),
        // Only the owner of a host (or a Workload exposing nothing) shows a URL.
        // With its certificate in force, the URL is https.
        url: match (&s.tcp, &s.host, &certificate) {
            (Some(PortClaim::Assigned(port)), ..) => Some(config.tcp_url(*port)),
            (Some(PortClaim::Refused { .. }), ..) => None,
            (None, host, certificate) => match (host, certificate) {
                (HostClaim::Owner(_), Some(Ok(https))) => Some(https.clone()),
                (HostClaim::None | HostClaim::Owner(_), _) => Some(config.url(workload)),
                (HostClaim::Conflict { .. } | HostClaim::NotAllowed(..), _) => None,
            },
        },
        tcp: s.tcp.clone(),
        certificate: certificate.map(|c| c.map(|_| ())),
        host: s.host.clone(),
        placements,
        updated,
        shortage: step
            .plan
            .shortage
            .as_ref()
            .map(|sh| sh.message(step.plan.placed, s.desired)),
        unreachable: step
            .plan
            .unreachable
            .iter()
            .map(|o| (o.pod.clone(), o.provider.clone()))
            .collect(),
        grace_seconds: s.grace_seconds,
        waiting: step.waiting.clone(),
        persistent_replicas: step.replicas.clone(),
        previous: workload.status.as_ref(),
        now: &now_text,
    })
}

/// A provider as placement sees it.
fn candidate(provider: &Provider, used: Resources) -> Candidate {
    let status = provider.status.clone().unwrap_or_default();
    let alloc = status.allocatable.unwrap_or_default();
    Candidate {
        name: provider.name_any(),
        labels: placement_labels(provider),
        readiness: Health::of(Some(provider)).readiness(!provider.takes_work()),
        reliability_permille: status
            .reliability
            .as_deref()
            .and_then(|r| r.trim().parse::<f64>().ok())
            .filter(|r| r.is_finite())
            .map_or(0, |r| (r.clamp(0.0, 1.0) * 1000.0).round() as i64),
        allocatable: Allocatable {
            cpu_millis: alloc.cpu.as_deref().and_then(cpu_millis),
            memory_bytes: alloc.memory.as_deref().and_then(memory_bytes),
            pods: alloc.pods.map(i64::from),
            storage_bytes: alloc.storage.as_deref().and_then(memory_bytes),
        },
        used,
        replicas: 0,
        available_until: status
            .availability
            .as_ref()
            .and_then(|a| a.next_change_time.as_deref())
            .and_then(|t| t.parse::<Timestamp>().ok())
            .map(|t| t.as_second()),
    }
}

/// A provider's labels as selectors see them: the platform keys say what its edge reported,
/// whatever its labels claim, and are absent until it has reported.
fn placement_labels(provider: &Provider) -> BTreeMap<String, String> {
    let mut labels = provider.labels().clone();
    labels.retain(|k, _| !is_platform_key(k));
    if let Some(p) = provider.status.as_ref().and_then(|s| s.platform.as_ref()) {
        for (key, value) in [(ARCH_LABEL, &p.architecture), (OS_LABEL, &p.os)] {
            if !value.is_empty() {
                labels.insert(key.to_string(), value.clone());
            }
        }
    }
    labels
}

/// Writes `status` by server-side apply, unless it is what the Workload already shows; emits a
/// Warning event when the Workload becomes (differently) degraded.
async fn write_status(workload: &Workload, ctx: &Context, status: WorkloadStatus) -> Result<()> {
    let previous = workload
        .status
        .clone()
        .map(|s| WorkloadStatus { usage: None, ..s });
    if previous.as_ref() == Some(&status) {
        return Ok(());
    }
    let was = previous
        .as_ref()
        .and_then(|s| find_condition(&s.conditions, DEGRADED))
        .filter(|c| c.is_true());
    if let Some(now) = find_condition(&status.conditions, DEGRADED).filter(|c| c.is_true())
        && was.is_none_or(|w| w.message != now.message)
    {
        ctx.publish(
            workload,
            EventType::Warning,
            &now.reason,
            now.message.clone(),
        )
        .await;
    }
    condition_event(workload, ctx, previous.as_ref(), &status, HOST_ACCEPTED).await;
    condition_event(workload, ctx, previous.as_ref(), &status, CERTIFICATE_READY).await;
    condition_event(workload, ctx, previous.as_ref(), &status, TCP_PORT_ASSIGNED).await;
    let api = Api::<Workload>::namespaced(
        ctx.client.clone(),
        &workload.namespace().unwrap_or_default(),
    );
    let patch = serde_json::json!({
        "apiVersion": Workload::api_version(&()),
        "kind": Workload::kind(&()),
        "status": status,
    });
    api.patch_status(
        &workload.name_any(),
        &PatchParams::apply(WORKLOAD_FIELD_MANAGER).force(),
        &Patch::Apply(&patch),
    )
    .await?;
    Ok(())
}

/// Publishes an event when condition `type_` (the Workload's hold on its host, or its
/// certificate) changes: a Warning when it turns false (once per transition: the same refusal
/// is not repeated), a Normal one when it turns true after being false.
async fn condition_event(
    workload: &Workload,
    ctx: &Context,
    previous: Option<&WorkloadStatus>,
    status: &WorkloadStatus,
    type_: &str,
) {
    let was = previous.and_then(|s| find_condition(&s.conditions, type_));
    let Some(now) = find_condition(&status.conditions, type_) else {
        return;
    };
    if was.is_some_and(|w| w.status == now.status && w.message == now.message) {
        return;
    }
    if !now.is_true() {
        ctx.publish(
            workload,
            EventType::Warning,
            &now.reason,
            now.message.clone(),
        )
        .await;
    } else if was.is_some_and(|w| !w.is_true()) {
        ctx.publish(
            workload,
            EventType::Normal,
            &now.reason,
            now.message.clone(),
        )
        .await;
    }
}

/// Deletes the Workload's pods; fails with [`Error::PodsRemaining`] (keeping the finalizer)
/// until none is left.
async fn cleanup(workload: &Workload, ctx: &Context) -> Result<Action> {
    if let Some(c) = &ctx.certificates {
        c.remove(&format!(
            "{}/{}",
            workload.namespace().unwrap_or_default(),
            workload.name_any()
        ));
    }
    let (api, pods) = owned_pods(workload, ctx).await?;
    if pods.is_empty() {
        info!("all pods gone; releasing the Workload");
        return Ok(Action::await_change());
    }
    let providers = ctx.providers.state();
    for pod in &pods {
        let r = Replica::from_pod(pod);
        let node = r.node.unwrap_or_default();
        let provider = providers.iter().find(|p| provider_node(p) == node);
        // Only a Ready provider can confirm a graceful stop; for the others, force.
        let force = Health::of(provider.map(AsRef::as_ref)) != Health::Ready;
        if r.terminating && !force {
            continue;
        }
        let params = if force {
            DeleteParams::default().grace_period(0)
        } else {
            DeleteParams::default()
        };
        match api.delete(&r.name, &params).await {
            Ok(_) => debug!(pod = %r.name, force, "deleting pod"),
            Err(kube::Error::Api(s)) if s.code == 404 => {}
            Err(e) => return Err(e.into()),
        }
    }
    Err(Error::PodsRemaining(pods.len()))
}

#[cfg(test)]
mod tests;
