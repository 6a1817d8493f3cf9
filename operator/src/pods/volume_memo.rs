//! The VolumeSets last computed, shared by the edges that connect within a second.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

/// How long one computed set of VolumeSets serves edges that connect: a burst of connects (an
/// operator restart with 10,000 edges) shares one pass over the Workloads and pods per interval
/// instead of making one each. No longer than the caches may lag anyway.
const SHARED_FOR: Duration = Duration::from_secs(1);

/// Volume ids to keep, by provider.
pub(crate) type VolumeSets = HashMap<String, Vec<String>>;

/// The VolumeSets last computed, and when.
#[derive(Default)]
pub(crate) struct VolumeSetMemo(Mutex<Option<(Instant, Arc<VolumeSets>)>>);

impl VolumeSetMemo {
    /// The sets: computed by `compute` when `fresh` or when the last are older than
    /// [`SHARED_FOR`], else shared; `None` when `compute` has none (the Workload cache is not
    /// complete yet).
    pub(crate) fn get(
        &self,
        fresh: bool,
        compute: impl FnOnce() -> Option<VolumeSets>,
    ) -> Option<Arc<VolumeSets>> {
        let mut memo = self.0.lock().unwrap_or_else(PoisonError::into_inner);
        if let Some((at, sets)) = memo.as_ref()
            && !fresh
            && at.elapsed() < SHARED_FOR
        {
            return Some(sets.clone());
        }
        let sets = Arc::new(compute()?);
        *memo = Some((Instant::now(), sets.clone()));
        Some(sets)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn connects_within_a_second_share_one_pass_and_a_resync_recomputes() {
        let memo = VolumeSetMemo::default();
        let passes = std::cell::Cell::new(0);
        let compute = || {
            passes.set(passes.get() + 1);
            Some(VolumeSets::from([(
                "a".to_string(),
                vec![format!("v{}", passes.get())],
            )]))
        };
        assert!(VolumeSetMemo::default().get(false, || None).is_none());
        let first = memo.get(false, compute).unwrap();
        let shared = memo.get(false, compute).unwrap();
        assert_eq!((passes.get(), &first), (1, &shared));
        let resync = memo.get(true, compute).unwrap();
        assert_eq!(passes.get(), 2);
        assert_eq!(resync["a"], ["v2"]);
    }
}
