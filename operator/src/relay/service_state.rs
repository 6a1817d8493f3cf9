//! The operator's state for service-to-service connections ([`super::services`]): a leaf, so
//! that the shared `Context` can hold it without an import cycle.

use std::sync::OnceLock;
use std::sync::atomic::AtomicUsize;

use decloud_crds::Workload;
use kube::runtime::reflector::Store;

use crate::slots::Slots;

/// Service connections one source pod may have open at once.
pub(crate) const MAX_PER_POD: usize = 64;
/// Service connections one source edge may have open at once (its pods together).
pub(crate) const MAX_PER_EDGE: usize = 512;
/// The operator's service state: the Workload cache and the connection shares.
pub(crate) struct ServiceState {
    pub(super) workloads: OnceLock<Store<Workload>>,
    pub(super) per_pod: Slots<String>,
    pub(super) per_edge: Slots<String>,
    pub(super) next: AtomicUsize,
}

impl Default for ServiceState {
    fn default() -> Self {
        Self {
            workloads: OnceLock::new(),
            per_pod: Slots::new(MAX_PER_POD),
            per_edge: Slots::new(MAX_PER_EDGE),
            next: AtomicUsize::new(0),
        }
    }
}

impl std::fmt::Debug for ServiceState {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ServiceState")
            .field("workloads", &self.workloads.get().is_some())
            .finish()
    }
}

impl ServiceState {
    /// Gives the service path the operator's shared Workload cache (once, at start-up).
    pub(crate) fn set_workloads(&self, workloads: Store<Workload>) {
        let _ = self.workloads.set(workloads);
    }

    /// The operator's shared Workload cache, once it was given.
    pub(crate) fn workload_store(&self) -> Option<&Store<Workload>> {
        self.workloads.get()
    }
}
