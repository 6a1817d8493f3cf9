//! The edges' latest node statistics, and what of an edge's report is taken: only pods bound
//! to its node, only their containers, within the wire bounds.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use decloud_proto as pb;
use k8s_openapi::api::core::v1::Pod;
use kube::ResourceExt;
use parking_lot::Mutex;

/// Statistics older than this are not served (the edge stopped reporting).
pub(crate) const STALE_AFTER: Duration = Duration::from_secs(120);

/// One edge's latest report, as taken.
#[derive(Clone, Debug)]
pub(crate) struct Received {
    /// What the edge measured (only its own pods' figures are kept).
    pub(crate) stats: pb::NodeStats,
    /// When it arrived.
    pub(crate) at: Instant,
}

/// The latest statistics of every node.
#[derive(Debug, Default)]
pub(crate) struct NodeStatsStore {
    latest: Mutex<HashMap<String, Arc<Received>>>,
}

impl NodeStatsStore {
    /// The node's latest statistics, if fresh.
    pub(crate) fn get(&self, node: &str) -> Option<Arc<Received>> {
        let r = self.latest.lock().get(node).cloned()?;
        (r.at.elapsed() < STALE_AFTER).then_some(r)
    }

    /// Forgets `node` (its provider is gone).
    pub(crate) fn forget(&self, node: &str) {
        self.latest.lock().remove(node);
    }

    pub(crate) fn too_soon(&self, node: &str, now: Instant) -> bool {
        self.latest.lock().get(node).is_some_and(|r| {
            now.saturating_duration_since(r.at)
                < Duration::from_millis(pb::MIN_STATS_INTERVAL_MILLIS)
        })
    }

    pub(crate) fn put(&self, node: String, r: Received) {
        self.latest.lock().insert(node, Arc::new(r));
    }
}

/// Keeps of `stats` only what `node` may say: its own pods (uid, namespace and name of a pod
/// bound to it), their own containers, within the wire bounds.
pub(crate) fn own_figures(
    mut stats: pb::NodeStats,
    node: &str,
    pod_of: impl Fn(&str, &str) -> Option<Arc<Pod>>,
) -> (pb::NodeStats, usize) {
    let sent = stats.pods.len();
    stats.pods.truncate(pb::MAX_STATS_PODS);
    stats.pods.retain_mut(|p| {
        let Some(pod) = pod_of(&p.namespace, &p.name) else {
            return false;
        };
        let bound = pod.uid().as_deref() == Some(p.uid.as_str())
            && pod.spec.as_ref().and_then(|s| s.node_name.as_deref()) == Some(node);
        if !bound {
            return false;
        }
        let names: Vec<&str> = pod
            .spec
            .as_ref()
            .map(|s| s.containers.iter().map(|c| c.name.as_str()).collect())
            .unwrap_or_default();
        p.containers.truncate(pb::MAX_STATS_CONTAINERS);
        p.containers.retain(|c| names.contains(&c.name.as_str()));
        true
    });
    let dropped = sent - stats.pods.len();
    (stats, dropped)
}
