//! The DeCloud edge protocol (`decloud.edge.v1`), generated at build time from
//! `proto/decloud/edge/v1/edge.proto`, and the wire contracts both sides share: message and
//! frame limits, flow-control windows, metadata keys and the CA pin format.
#![forbid(unsafe_code)]

mod pin;

/// Package `decloud.edge.v1`.
pub mod v1 {
    #![allow(clippy::all, missing_docs, unreachable_pub)]
    tonic::include_proto!("decloud.edge.v1");
}

pub use pin::{CaPin, PinError};
pub use v1::*;

/// Largest message either side accepts on any RPC (hostile input is cut off here).
pub const MAX_MESSAGE_BYTES: usize = 4 * 1024 * 1024;

/// Largest data payload of one tunnel frame, either way. Bulk transfers are cut into frames of
/// this size: larger frames mean fewer messages, wake-ups and HTTP/2 frame headers per byte.
pub const MAX_TUNNEL_FRAME: usize = 256 * 1024;

/// Largest HTTP/2 frame either side of an edge connection accepts: one tunnel frame and its
/// gRPC and protobuf framing fit in one HTTP/2 DATA frame (h2's default is 16 KiB).
pub const MAX_HTTP2_FRAME: u32 = MAX_TUNNEL_FRAME as u32 + 64;

/// Most volumes of one pod on an edge.
pub const MAX_POD_VOLUMES: usize = 32;

/// Most volume mounts of one container on an edge.
pub const MAX_VOLUME_MOUNTS: usize = 32;

/// Most `envFrom` sources of one container.
pub const MAX_ENV_FROM: usize = 16;

/// Most ConfigMaps and Secrets one pod may refer to (distinct objects).
pub const MAX_POD_CONFIG_OBJECTS: usize = 32;

/// Most `items` of one configMap/secret volume.
pub const MAX_VOLUME_ITEMS: usize = 256;

/// Most files of all config volumes of one pod, and most variables of one container's
/// environment once resolved.
pub const MAX_POD_CONFIG_ENTRIES: usize = 1024;

/// Largest ConfigMap or Secret the operator reads for a pod (the API server's own cap is 1 MiB).
pub const MAX_CONFIG_OBJECT_BYTES: usize = 1024 * 1024;

/// Largest `PodConfig` (all of one pod's resolved environment and files), well inside
/// [`MAX_MESSAGE_BYTES`].
pub const MAX_POD_CONFIG_BYTES: usize = 2 * 1024 * 1024;

/// Longest path of a mount, `subPath` or volume item.
pub const MAX_VOLUME_PATH: usize = 1024;

/// Largest log chunk an edge sends in one `LogChunk`.
pub const MAX_LOG_CHUNK: usize = 64 * 1024;

/// Most arguments of an exec command (`OpenExec.command`).
pub const MAX_EXEC_ARGS: usize = 256;

/// Most bytes of an exec command's arguments in all.
pub const MAX_EXEC_COMMAND_BYTES: usize = 32 * 1024;

/// HTTP/2 flow-control window per stream (each tunnel is one stream), on both sides.
pub const TUNNEL_STREAM_WINDOW: u32 = 4 * 1024 * 1024;

/// HTTP/2 flow-control window per edge connection (shared by its tunnels and session).
pub const TUNNEL_CONNECTION_WINDOW: u32 = 16 * 1024 * 1024;

/// gRPC metadata key carrying the provider's bearer credential.
pub const CREDENTIAL_METADATA: &str = "authorization";

/// gRPC metadata key naming the provider a Session or Tunnel is for.
pub const PROVIDER_METADATA: &str = "decloud-provider";

/// Longest `PodEvent.reason` accepted (kubelet's and the Events API's bound).
pub const MAX_EVENT_REASON: usize = 128;

/// Longest `PodEvent.message` kept (the Events API's note is at most 1 kB); longer ones are
/// cut.
pub const MAX_EVENT_MESSAGE: usize = 1024;

/// Events one pod may have recorded at once, as client-go's spam filter allows kubelet
/// (25 per object).
pub const POD_EVENT_BURST: u32 = 25;

/// After the burst, one more event per pod every this many seconds.
pub const POD_EVENT_REFILL_SECONDS: u64 = 5;

/// Pods one `NodeStats` may describe (more are ignored).
pub const MAX_STATS_PODS: usize = 1000;

/// Containers one `PodStats` may describe (a pod has at most 8; more are ignored).
pub const MAX_STATS_CONTAINERS: usize = 16;

/// Shortest interval between two `NodeStats` the operator takes from one edge; one sooner is
/// dropped (and counted).
pub const MIN_STATS_INTERVAL_MILLIS: u64 = 1000;

/// Fewest milliseconds between two availability changes the operator acts on, per session
/// (a looping edge cannot make it thrash; later changes wait for the next one it takes).
pub const MIN_AVAILABILITY_INTERVAL_MILLIS: u64 = 2000;

/// Longest `Availability.reason` the operator keeps (bytes).
pub const MAX_AVAILABILITY_REASON: usize = 32;

/// Longest `Availability.schedule` the operator keeps (bytes), and the longest `--schedule`.
pub const MAX_SCHEDULE_BYTES: usize = 256;
/// Longest persistent volume id (`<workload uid>-<template>-<ordinal>`: 36 + 1 + 63 + 1 + 4).
pub const MAX_VOLUME_ID_BYTES: usize = 128;
/// Most persistent volumes one edge holds, reports in its Hello, or is told to keep.
pub const MAX_HELD_VOLUMES: usize = 1024;
/// Smallest persistent volume (ext4 needs room for its journal and metadata): 16 MiB.
pub const MIN_VOLUME_BYTES: u64 = 16 << 20;
/// Largest persistent volume one claim may ask for: 16 TiB (the offer caps it further).
pub const MAX_VOLUME_BYTES: u64 = 16 << 40;

/// Whether `id` is a well-formed persistent volume id: 1..=[`MAX_VOLUME_ID_BYTES`] bytes of
/// `[a-z0-9-]`, not starting with `-` (it names a folder on the volunteer's machine).
pub fn valid_volume_id(id: &str) -> bool {
    !id.is_empty()
        && id.len() <= MAX_VOLUME_ID_BYTES
        && !id.starts_with('-')
        && id
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
}

/// Most `PodSpec.host_aliases` entries (service names in a pod's `/etc/hosts`).
pub const MAX_HOST_ALIASES: usize = 512;

/// Most names of one `HostAlias`.
pub const MAX_ALIAS_NAMES: usize = 4;
