//! The state every controller, loop and session shares, built once and handed out in an `Arc`.

use std::sync::Arc;

use decloud_crds::Provider;
use decloud_crds::contracts::OPERATOR_FIELD_MANAGER;
use k8s_openapi::api::core::v1::{Node, Pod};
use kube::Client;
use kube::runtime::events::Recorder;
use kube::runtime::reflector::{ObjectRef, Store};
use tokio::sync::mpsc;

use crate::config::Config;
use crate::edge::ProviderRegistry;
use crate::edge::auth::TokenCache;
use crate::edge::liveness::LivenessTracker;
use crate::health::Readiness;
use crate::metrics::Metrics;
use crate::pods::{
    ConfigSources, EVENT_QUEUE, EventLimiter, PodEventRecord, StatusQueue, StatusReport,
};
use crate::relay::{NodePorts, PendingExecs, PendingLogs, PendingTunnels, ServiceState};
use crate::slots::Slots;
use crate::stats::store::NodeStatsStore;
use crate::usage::UsageLedger;

/// Shared state of the operator.
pub(crate) struct Context {
    /// Kubernetes client.
    pub(crate) client: Client,
    /// Settings.
    pub(crate) config: Config,
    /// Live edge sessions and liveness.
    pub(crate) registry: ProviderRegistry,
    /// Metrics.
    pub(crate) metrics: Arc<Metrics>,
    /// Every pod in the cluster (the bridge only acts on those bound to virtual nodes).
    pub(crate) pods: Store<Pod>,
    /// Every Provider.
    pub(crate) providers: Store<Provider>,
    /// Every virtual node (`type=virtual-kubelet`).
    pub(crate) nodes: Store<Node>,
    /// Publishes Kubernetes Events.
    pub(crate) recorder: Recorder,
    /// What `/readyz` reports.
    pub(crate) readiness: Arc<Readiness>,
    /// Gateway tunnels asked of edges and not yet opened.
    pub(crate) tunnels: PendingTunnels,
    /// Tunnels each edge carries (asked or open), capped per edge.
    pub(crate) tunnel_slots: Slots<String>,
    /// `kubectl logs` requests relayed to edges.
    pub(crate) logs: PendingLogs,
    /// `kubectl exec` / `attach` sessions asked of edges and not yet opened.
    pub(crate) execs: PendingExecs,
    /// The join tokens, read from the API at a bounded rate.
    pub(crate) tokens: TokenCache,
    /// Usage the edges report, per pod, provider and workload.
    pub(crate) usage: UsageLedger,
    /// Pod reports waiting for the status writer (newest per pod, bounded).
    pub(crate) statuses: StatusQueue,
    /// Per-pod rate limits of the edges' kubelet events.
    pub(crate) event_limiter: EventLimiter,
    /// Checked pod events waiting for the event writer (bounded).
    pub(crate) pod_events: mpsc::Sender<PodEventRecord>,
    /// The edges' latest node statistics, for the kubelet API.
    pub(crate) stats: NodeStatsStore,
    /// Each virtual node's own kubelet API port.
    pub(crate) node_ports: NodePorts,
    /// Service-to-service connections: the Workload cache and the per-pod and per-edge shares.
    pub(crate) services: ServiceState,
    /// The ConfigMaps and Secrets bound pods use, each read by name.
    pub(crate) config_sources: ConfigSources,
    /// The persistent volumes each edge keeps, computed at most once a second for connects.
    pub(crate) volume_sets: crate::pods::VolumeSetMemo,
    reconcile_tx: mpsc::UnboundedSender<ObjectRef<Provider>>,
}

/// The receiving ends of the context's internal queues.
pub(crate) struct ContextQueues {
    /// Providers to reconcile now (fed to the Provider controller).
    pub(crate) reconcile_rx: mpsc::UnboundedReceiver<ObjectRef<Provider>>,
    /// Pod events to record (fed to the event writer).
    pub(crate) pod_events_rx: mpsc::Receiver<PodEventRecord>,
}

/// The caches a [`Context`] reads from.
pub(crate) struct Caches {
    /// Pods.
    pub(crate) pods: Store<Pod>,
    /// Providers.
    pub(crate) providers: Store<Provider>,
    /// Virtual nodes.
    pub(crate) nodes: Store<Node>,
}

impl Context {
    /// Builds the context and the queues its consumers read.
    pub(crate) fn new(
        client: Client,
        config: Config,
        metrics: Arc<Metrics>,
        caches: Caches,
        readiness: Arc<Readiness>,
    ) -> (Arc<Self>, ContextQueues) {
        let (reconcile_tx, reconcile_rx) = mpsc::unbounded_channel();
        let (pod_events, pod_events_rx) = mpsc::channel(EVENT_QUEUE);
        let recorder = Recorder::new(client.clone(), OPERATOR_FIELD_MANAGER.into());
        let tunnel_slots = Slots::new(config.max_tunnels_per_edge);
        let ctx = Arc::new(Self {
            tunnel_slots,
            registry: ProviderRegistry::new(
                LivenessTracker::new(config.liveness_timings(), config.disruption),
                metrics.clone(),
            ),
            client,
            config,
            metrics,
            pods: caches.pods,
            providers: caches.providers,
            nodes: caches.nodes,
            recorder,
            readiness,
            tunnels: PendingTunnels::default(),
            logs: PendingLogs::default(),
            execs: PendingExecs::default(),
            tokens: TokenCache::default(),
            usage: UsageLedger::default(),
            statuses: StatusQueue::default(),
            event_limiter: EventLimiter::default(),
            pod_events,
            stats: NodeStatsStore::default(),
            node_ports: NodePorts::default(),
            volume_sets: Default::default(),
            services: ServiceState::default(),
            config_sources: ConfigSources::default(),
            reconcile_tx,
        });
        (
            ctx,
            ContextQueues {
                reconcile_rx,
                pod_events_rx,
            },
        )
    }

    /// Asks the Provider controller to reconcile `provider` soon. Must not block.
    pub(crate) fn reconcile_provider(&self, provider: &str) {
        let _ = self.reconcile_tx.send(ObjectRef::new(provider));
    }

    /// Queues an edge's pod report for the status writer (replacing an older one about the
    /// same pod). Must not block.
    pub(crate) fn report_status(&self, report: StatusReport) {
        if !self.statuses.push(report) {
            self.metrics.dropped_reports.inc();
        }
    }
}
