//! The edges' node statistics, for the kubelet API's read endpoints: each edge's latest
//! `NodeStats` ([`store`]: checked, at most one report per `MIN_STATS_INTERVAL_MILLIS`),
//! rendered as kubelet renders them ([`render`]), with the node's pods as `/pods`.

pub(crate) mod render;
pub(crate) mod store;

use std::sync::Arc;
use std::time::Instant;

use decloud_crds::contracts::node_name;
use decloud_proto as pb;
use kube::runtime::reflector::ObjectRef;

use crate::context::Context;
use crate::time::rfc3339;
use render::{pod_list, resource_metrics, summary};
use store::{Received, own_figures};

/// Takes one `NodeStats` of `provider`'s edge. Never blocks.
pub(crate) fn on_node_stats(ctx: &Arc<Context>, provider: &str, stats: pb::NodeStats) {
    let node = node_name(provider);
    let now = Instant::now();
    if ctx.stats.too_soon(&node, now) {
        ctx.metrics.stats_refused.inc();
        return;
    }
    let (stats, dropped) = own_figures(stats, &node, |ns, name| {
        ctx.pods.get(&ObjectRef::new(name).within(ns))
    });
    if dropped > 0 {
        ctx.metrics.unauthorized_reports.inc_by(dropped as u64);
    }
    ctx.stats.put(node, Received { stats, at: now });
}

/// The node-level reads of the kubelet API, from the operator's pod cache and the edges'
/// statistics.
pub(crate) struct NodeViews {
    /// The shared state.
    pub(crate) ctx: Arc<Context>,
}

impl decloud_gateway::NodeReadings for NodeViews {
    fn pods(&self, node: &str) -> Vec<u8> {
        serde_json::to_vec(&pod_list(&self.ctx.pods, node)).unwrap_or_default()
    }

    fn stats_summary(&self, node: &str) -> Option<Vec<u8>> {
        let r = self.ctx.stats.get(node)?;
        let start = self
            .ctx
            .nodes
            .get(&ObjectRef::new(node))
            .and_then(|n| n.metadata.creation_timestamp.clone())
            .map(|t| rfc3339(t.0));
        serde_json::to_vec(&summary(node, start.as_deref(), &r.stats)).ok()
    }

    fn resource_metrics(&self, node: &str) -> Option<String> {
        Some(resource_metrics(&self.ctx.stats.get(node)?.stats))
    }
}
