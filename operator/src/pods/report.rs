//! What an edge says about one of its pods, on its way to the status writer.

use std::time::Instant;

use decloud_proto as pb;

/// An edge's report about one of its pods, queued for the status writer.
#[derive(Clone, Debug)]
pub(crate) struct StatusReport {
    /// The reporting provider (already authorised for this pod).
    pub(crate) provider: String,
    /// What the edge said.
    pub(crate) report: pb::PodStatus,
    /// When it arrived, for the bridge latency metric.
    pub(crate) received: Instant,
}
