//! The pod side of virtual-kubelet: admission (what an edge must never run), translation to
//! the edge's spec, relaying pods to their edges, pod status from the edges' reports, and
//! deletion (which no real kubelet finalizes here).

mod admission;
mod claims;
mod config;
mod config_sources;
mod deletion;
mod event_writer;
mod events;
mod pull_secrets;
mod relay;
mod report;
mod status;
mod translate;
mod volume_memo;
mod writer;

pub(crate) use admission::{Disposition, disposition};
pub(crate) use claims::send_volume_sets;
pub(crate) use config_sources::ConfigSources;
pub(crate) use deletion::on_pod_gone;
pub(crate) use event_writer::{on_pod_event, write_pod_events};
pub(crate) use events::{EVENT_QUEUE, EventLimiter, PodEventRecord};
pub(crate) use relay::{
    PodSetFollowUp, authorized, resync_periodically, run_pod_watcher, send_pod_set,
};
pub(crate) use report::{StatusQueue, StatusReport};
pub(crate) use status::pod_status;
pub(crate) use translate::spec_hash;
pub(crate) use volume_memo::VolumeSetMemo;
pub(crate) use writer::write_statuses;
