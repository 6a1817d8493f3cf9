//! Prometheus metrics of the operator.

use std::time::Duration;

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::Registry;

/// Labels of reconcile counters.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub(crate) struct ControllerLabels {
    /// Which controller.
    pub(crate) controller: String,
}

/// Labels of error counters.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub(crate) struct ErrorLabels {
    /// Which controller or loop.
    pub(crate) controller: String,
    /// `Error::metric_label()`.
    pub(crate) error: String,
}

/// Labels of closed-session counters.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub(crate) struct CloseLabels {
    /// Why the session ended.
    pub(crate) reason: String,
}

/// Labels of gateway tunnel and log request counters.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub(crate) struct OutcomeLabels {
    /// `ok` or the error's metric label.
    pub(crate) outcome: String,
}

/// Labels of refused pod event counters.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub(crate) struct RefusalLabels {
    /// Why it was refused.
    pub(crate) reason: String,
}

/// Every metric the operator exports.
#[derive(Debug)]
pub(crate) struct Metrics {
    /// Edge sessions open right now.
    pub(crate) connected_edges: Gauge,
    /// Edge sessions ever opened.
    pub(crate) sessions_opened: Counter,
    closed: Family<CloseLabels, Counter>,
    /// Heartbeats received.
    pub(crate) heartbeats: Counter,
    reconciles: Family<ControllerLabels, Counter>,
    errors: Family<ErrorLabels, Counter>,
    /// Seconds from an edge's pod report to the pod status written.
    pub(crate) bridge_latency: Histogram,
    /// Pod reports dropped because they named pods of another node.
    pub(crate) unauthorized_reports: Counter,
    /// Edge pod events recorded on their pods.
    pub(crate) pod_events_recorded: Counter,
    pod_events_refused: Family<RefusalLabels, Counter>,
    /// Edge statistics reports dropped (sooner than the minimum interval).
    pub(crate) stats_refused: Counter,
    /// Pod IPs an edge reported that were not published (outside its pod network, or a
    /// special-purpose address).
    pub(crate) refused_pod_ips: Counter,
    /// Pod reports dropped because the status queue was full.
    pub(crate) dropped_reports: Counter,
    /// Edge RPCs refused up front: their address had too many refused authentications.
    pub(crate) auth_throttled: Counter,
    tunnels: Family<OutcomeLabels, Counter>,
    /// Seconds from asking an edge for a tunnel to the tunnel carrying bytes.
    pub(crate) tunnel_open_latency: Histogram,
    log_requests: Family<OutcomeLabels, Counter>,
    /// Bytes read from edge connections (TLS records: sessions, tunnels, logs).
    pub(crate) edge_bytes_received: Counter,
    /// Bytes written to edge connections.
    pub(crate) edge_bytes_sent: Counter,
    /// Edge connections dropped at once: their address held its share already.
    pub(crate) edge_connections_refused: Counter,
    /// Tunnels refused because the edge had its share open or its session was busy.
    pub(crate) tunnels_refused: Counter,
    /// Liveness sweeps that came so late that this process must have stalled.
    pub(crate) liveness_stalls: Counter,
    /// 1 while a disruption holds liveness verdicts, 0 otherwise.
    pub(crate) liveness_disruption: Gauge,
    /// Disruptions begun (mass silence held instead of failed over).
    pub(crate) liveness_disruptions: Counter,
}

impl Metrics {
    /// Creates the metrics and registers them in `registry` under the `decloud_operator` prefix.
    pub(crate) fn new(registry: &mut Registry) -> Self {
        let m = Self {
            connected_edges: Gauge::default(),
            sessions_opened: Counter::default(),
            closed: Family::default(),
            heartbeats: Counter::default(),
            reconciles: Family::default(),
            errors: Family::default(),
            bridge_latency: Histogram::new(exponential_buckets(0.001, 2.0, 15)),
            unauthorized_reports: Counter::default(),
            pod_events_recorded: Counter::default(),
            pod_events_refused: Family::default(),
            stats_refused: Counter::default(),
            refused_pod_ips: Counter::default(),
            dropped_reports: Counter::default(),
            auth_throttled: Counter::default(),
            tunnels: Family::default(),
            tunnel_open_latency: Histogram::new(exponential_buckets(0.0001, 2.0, 16)),
            log_requests: Family::default(),
            edge_bytes_received: Counter::default(),
            edge_bytes_sent: Counter::default(),
            edge_connections_refused: Counter::default(),
            tunnels_refused: Counter::default(),
            liveness_stalls: Counter::default(),
            liveness_disruption: Gauge::default(),
            liveness_disruptions: Counter::default(),
        };
        let r = registry.sub_registry_with_prefix("decloud_operator");
        r.register(
            "connected_edges",
            "Edge sessions open now",
            m.connected_edges.clone(),
        );
        r.register(
            "sessions_opened",
            "Edge sessions opened",
            m.sessions_opened.clone(),
        );
        r.register(
            "sessions_closed",
            "Edge sessions closed, by reason",
            m.closed.clone(),
        );
        r.register(
            "heartbeats",
            "Edge heartbeats received",
            m.heartbeats.clone(),
        );
        r.register(
            "reconciles",
            "Reconciles run, by controller",
            m.reconciles.clone(),
        );
        r.register(
            "errors",
            "Errors, by controller and reason",
            m.errors.clone(),
        );
        r.register(
            "bridge_latency_seconds",
            "Time from an edge's pod report to the pod status written",
            m.bridge_latency.clone(),
        );
        r.register(
            "unauthorized_reports",
            "Pod reports dropped because the pod is not bound to the reporting edge",
            m.unauthorized_reports.clone(),
        );
        r.register(
            "pod_events_recorded",
            "Kubelet events of edge pods recorded on their pods",
            m.pod_events_recorded.clone(),
        );
        r.register(
            "pod_events_refused",
            "Edge pod events not recorded, by reason (not_bound, bad_reason, rate_limited, …)",
            m.pod_events_refused.clone(),
        );
        r.register(
            "stats_refused",
            "Edge statistics reports dropped (sooner than the minimum interval)",
            m.stats_refused.clone(),
        );
        r.register(
            "refused_pod_ips",
            "Reported pod IPs not published: outside the edge's pod network or special-purpose",
            m.refused_pod_ips.clone(),
        );
        r.register(
            "dropped_reports",
            "Pod reports dropped because the status queue was full",
            m.dropped_reports.clone(),
        );
        r.register(
            "auth_throttled",
            "Edge RPCs refused up front because their source address had too many refused \
             authentications (join tokens or credentials)",
            m.auth_throttled.clone(),
        );
        r.register(
            "gateway_tunnels",
            "Tunnels the gateway asked edges for, by outcome",
            m.tunnels.clone(),
        );
        r.register(
            "gateway_tunnel_open_seconds",
            "Time from asking an edge for a tunnel to the tunnel being open",
            m.tunnel_open_latency.clone(),
        );
        r.register(
            "log_requests",
            "kubectl logs requests relayed to edges, by outcome",
            m.log_requests.clone(),
        );
        r.register(
            "edge_received_bytes",
            "Bytes read from edge connections (TLS records: sessions, tunnels, logs)",
            m.edge_bytes_received.clone(),
        );
        r.register(
            "edge_sent_bytes",
            "Bytes written to edge connections (TLS records: sessions, tunnels, logs)",
            m.edge_bytes_sent.clone(),
        );
        r.register(
            "edge_connections_refused",
            "Edge connections dropped because their source address held \
             --max-connections-per-address already",
            m.edge_connections_refused.clone(),
        );
        r.register(
            "tunnels_refused",
            "Tunnels refused because the edge had --max-tunnels-per-edge open or its session \
             queue was busy (the request got 503; the session stayed)",
            m.tunnels_refused.clone(),
        );
        r.register(
            "liveness_stalls",
            "Liveness sweeps skipped because the operator itself stalled (the gap since the \
             previous sweep exceeded half the heartbeat window)",
            m.liveness_stalls.clone(),
        );
        r.register(
            "liveness_disruption",
            "1 while mass edge silence is held as a disruption (no edge marked NotReady), else 0",
            m.liveness_disruption.clone(),
        );
        r.register(
            "liveness_disruptions",
            "Disruptions begun: more than --unhealthy-threshold of the ready edges silent at once",
            m.liveness_disruptions.clone(),
        );
        m
    }

    /// Counts one tunnel dial ending with `outcome`.
    pub(crate) fn tunnel_dialed(&self, outcome: &str) {
        self.tunnels
            .get_or_create(&OutcomeLabels {
                outcome: outcome.to_string(),
            })
            .inc();
    }

    /// Counts one log request ending with `outcome`.
    pub(crate) fn log_requested(&self, outcome: &str) {
        self.log_requests
            .get_or_create(&OutcomeLabels {
                outcome: outcome.to_string(),
            })
            .inc();
    }

    /// Counts one edge pod event not recorded, for `reason`.
    pub(crate) fn pod_event_refused(&self, reason: &str) {
        self.pod_events_refused
            .get_or_create(&RefusalLabels {
                reason: reason.to_string(),
            })
            .inc();
    }

    /// Counts one closed session.
    pub(crate) fn sessions_closed(&self, reason: &str) {
        self.closed
            .get_or_create(&CloseLabels {
                reason: reason.to_string(),
            })
            .inc();
    }

    /// Counts one reconcile of `controller`.
    pub(crate) fn reconciled(&self, controller: &str) {
        self.reconciles
            .get_or_create(&ControllerLabels {
                controller: controller.to_string(),
            })
            .inc();
    }

    /// Counts one failure of `controller`.
    pub(crate) fn failed(&self, controller: &str, error: &crate::Error) {
        self.errors
            .get_or_create(&ErrorLabels {
                controller: controller.to_string(),
                error: error.metric_label().to_string(),
            })
            .inc();
    }

    /// Records one bridge round trip.
    pub(crate) fn bridged(&self, elapsed: Duration) {
        self.bridge_latency.observe(elapsed.as_secs_f64());
    }
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new(&mut Registry::default())
    }
}
