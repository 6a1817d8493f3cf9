//! DeCloud Workload controller: keeps each Workload's replicas running across volunteer
//! providers — placement, rolling updates, failover in seconds, and cleanup on deletion.
//!
//! It talks to the rest of DeCloud only through Kubernetes objects (see `docs/contracts.md`):
//! it reads `Provider` status and writes `Pod`s bound to the virtual nodes `edge-<provider>`;
//! the operator's pod bridge carries those pods to the edges and reports their status back.
//!
//! The operator spawns [`run`] under its leader election, handing it the process's one watch
//! per kind:
//!
//! ```no_run
//! # use decloud_crds::{Provider, Workload};
//! # use k8s_openapi::api::core::v1::{Namespace, Pod};
//! # use decloud_workload::{SharedWatch, Watches};
//! # use kube::Api;
//! # async fn spawn(client: kube::Client) {
//! let mut workloads = SharedWatch::<Workload>::new(1024);
//! let namespaces = SharedWatch::<Namespace>::new(1024);
//! let mut providers = SharedWatch::<Provider>::new(1024);
//! let mut pods = SharedWatch::<Pod>::new(1024);
//! let watches = Watches {
//!     workloads: workloads.store(),
//!     workload_events: workloads.subscribe(),
//!     workload_claims: workloads.subscribe(),
//!     deleted_workloads: workloads.deletions(),
//!     namespaces: namespaces.store(),
//!     namespace_events: namespaces.subscribe(),
//!     providers: providers.store(),
//!     provider_events: providers.subscribe(),
//!     deleted_providers: providers.deletions(),
//!     pods: pods.store(),
//!     pod_events: pods.subscribe(),
//!     deleted_pods: pods.deletions(),
//! };
//! tokio::spawn(workloads.run(Api::all(client.clone()), Default::default()));
//! tokio::spawn(providers.run(Api::all(client.clone()), Default::default()));
//! tokio::spawn(pods.run(Api::all(client.clone()), Default::default()));
//! tokio::spawn(namespaces.run(Api::all(client.clone()), Default::default()));
//! tokio::spawn(decloud_workload::run(client, decloud_workload::Config::default(), watches));
//! # }
//! ```
#![forbid(unsafe_code)]

pub mod acme;
mod certificates;
mod config;
mod controller;
mod error;
mod failover;
mod hosts;
mod placement;
mod pod;
mod problem;
mod rollout;
mod stateful;
mod status;
mod watches;

pub use certificates::{CertificateProblem, Certificates};
pub use config::{Config, TcpConfig};
pub use controller::{run, run_with_certificates};
pub use error::{Error, Result};
pub use watches::{Resumed, SharedWatch, Watches};
