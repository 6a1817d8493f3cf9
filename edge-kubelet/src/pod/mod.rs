//! The pod side of the edge: the [`PodSupervisor`] runs one worker per assigned pod, each
//! driving its containers through the lifecycle state machine on a
//! [`crate::runtime::ContainerRuntime`] and publishing status on the [`StatusBoard`].
//!
//! - `supervisor`: admission (`--max-pods`), the assigned set, engine events to workers;
//! - `worker`: one task per pod, carrying out what `lifecycle` decides;
//! - `lifecycle`: the pure per-container state machine and the pod phase;
//! - `config_volumes`: configMap/secret volume files on the edge's tmpfs (atomic swaps);
//! - `persistent`: per-replica persistent volumes (checks, admission, the `VolumeSet`);
//! - `readiness`: when to probe; `usage`: the meters; `storage`: ephemeral-storage eviction. Image rules live in `crate::images`.

mod config_volumes;
mod kubelet_events;
mod lifecycle;
mod persistent;
mod readiness;
mod status_board;
mod storage;
mod supervisor;
mod usage;
mod worker;

pub(crate) use config_volumes::prepare_config_dir;
pub use lifecycle::BackoffPolicy;
pub use persistent::OUT_OF_STORAGE;
pub use status_board::{PodUpdate, StatusBoard};
pub(crate) use supervisor::{AdmissionOffer, AppLine};
pub use supervisor::{OUT_OF_CPU, OUT_OF_MEMORY, OUT_OF_PODS, PodSupervisor};
pub use worker::PodWorkerConfig;
