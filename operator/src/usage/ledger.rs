//! The usage ledger: the latest cumulative per-pod figures edges report, and, when a pod goes
//! away, its provider's and workload's history, so totals never go back.

use std::collections::{HashMap, HashSet};

use decloud_crds::Usage;
use decloud_proto as pb;
use parking_lot::Mutex;

/// `namespace/name` of a Workload.
pub(crate) type WorkloadKey = (String, String);

#[derive(Debug, Clone)]
struct PodUsage {
    provider: String,
    workload: Option<WorkloadKey>,
    usage: Usage,
}

#[derive(Debug, Default)]
struct Inner {
    pods: HashMap<String, PodUsage>,
    retired_by_provider: HashMap<String, Usage>,
    retired_by_workload: HashMap<WorkloadKey, Usage>,
    dirty_workloads: HashSet<WorkloadKey>,
}

/// Per-pod usage as last reported, with the history of pods that are gone.
#[derive(Debug, Default)]
pub(crate) struct UsageLedger {
    inner: Mutex<Inner>,
}

fn add(a: &mut Usage, b: &Usage) {
    a.cpu_seconds += b.cpu_seconds;
    a.memory_gibibyte_hours += b.memory_gibibyte_hours;
}

/// Largest cumulative figure taken from an edge: a thousand cores for a century, in seconds
/// (or GiB-hours), far beyond any real pod, and small enough that sums stay finite.
pub(crate) const MAX_USAGE: f64 = 1024.0 * 100.0 * 365.25 * 86_400.0;

/// An edge's figure as counted: NaN, infinite, negative or implausibly large ones count as 0
/// (so they never raise what was already counted: figures only grow, see `record`).
fn plausible(x: f64) -> f64 {
    if x.is_finite() && (0.0..=MAX_USAGE).contains(&x) {
        x
    } else {
        0.0
    }
}

/// Rounds to what a status shows, so tiny changes do not cause writes.
fn rounded(u: Usage) -> Usage {
    Usage {
        cpu_seconds: (u.cpu_seconds * 1000.0).round() / 1000.0,
        memory_gibibyte_hours: (u.memory_gibibyte_hours * 1_000_000.0).round() / 1_000_000.0,
    }
}

impl UsageLedger {
    fn lock(&self) -> parking_lot::MutexGuard<'_, Inner> {
        self.inner.lock()
    }

    /// Records pod `uid`'s cumulative usage as reported by `provider`.
    pub(crate) fn record(
        &self,
        provider: &str,
        uid: &str,
        workload: Option<WorkloadKey>,
        u: &pb::Usage,
    ) {
        let usage = Usage {
            cpu_seconds: plausible(u.cpu_seconds),
            memory_gibibyte_hours: plausible(u.memory_gib_hours),
        };
        let mut inner = self.lock();
        if let Some(w) = &workload {
            inner.dirty_workloads.insert(w.clone());
        }
        let entry = inner
            .pods
            .entry(uid.to_string())
            .or_insert_with(|| PodUsage {
                provider: provider.to_string(),
                workload: workload.clone(),
                usage: Usage::default(),
            });
        // Cumulative figures only grow; a smaller one (an edge that lost its meter) keeps
        // what was already counted.
        entry.usage.cpu_seconds = entry.usage.cpu_seconds.max(usage.cpu_seconds);
        entry.usage.memory_gibibyte_hours = entry
            .usage
            .memory_gibibyte_hours
            .max(usage.memory_gibibyte_hours);
    }

    /// Pod `uid` is gone: its usage moves into its provider's and workload's history.
    pub(crate) fn pod_removed(&self, uid: &str) {
        let mut inner = self.lock();
        let Some(p) = inner.pods.remove(uid) else {
            return;
        };
        add(
            inner.retired_by_provider.entry(p.provider).or_default(),
            &p.usage,
        );
        if let Some(w) = p.workload {
            add(
                inner.retired_by_workload.entry(w.clone()).or_default(),
                &p.usage,
            );
            inner.dirty_workloads.insert(w);
        }
    }

    /// Everything the pods of `provider` used, if any was reported.
    pub(crate) fn provider(&self, provider: &str) -> Option<Usage> {
        let inner = self.lock();
        let mut total = inner.retired_by_provider.get(provider).cloned();
        for p in inner.pods.values().filter(|p| p.provider == provider) {
            add(total.get_or_insert_with(Usage::default), &p.usage);
        }
        total.map(rounded)
    }

    /// Totals of the Workloads whose usage changed since the last call.
    pub(crate) fn take_changed_workloads(&self) -> Vec<(WorkloadKey, Usage)> {
        let mut inner = self.lock();
        let dirty: Vec<WorkloadKey> = inner.dirty_workloads.drain().collect();
        dirty
            .into_iter()
            .map(|w| {
                let mut total = inner
                    .retired_by_workload
                    .get(&w)
                    .cloned()
                    .unwrap_or_default();
                for p in inner
                    .pods
                    .values()
                    .filter(|p| p.workload.as_ref() == Some(&w))
                {
                    add(&mut total, &p.usage);
                }
                (w, rounded(total))
            })
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn u(cpu: f64, mem: f64) -> pb::Usage {
        pb::Usage {
            cpu_seconds: cpu,
            memory_gib_hours: mem,
            ..Default::default()
        }
    }

    #[test]
    fn only_finite_growing_figures_count() {
        // (reported cpu seconds, counted afterwards); each row follows the one before.
        let cases = [
            (10.0, 10.0),
            (f64::NAN, 10.0),
            (f64::INFINITY, 10.0),
            (f64::NEG_INFINITY, 10.0),
            (-5.0, 10.0),
            (f64::MAX, 10.0),
            (MAX_USAGE * 2.0, 10.0),
            (4.0, 10.0),
            (12.5, 12.5),
        ];
        let l = UsageLedger::default();
        for (reported, counted) in cases {
            l.record("p", "a", None, &u(reported, reported));
            let total = l.provider("p").unwrap();
            assert_eq!(total.cpu_seconds, counted, "after {reported}");
            assert_eq!(total.memory_gibibyte_hours, counted, "after {reported}");
        }
    }

    #[test]
    fn sums_per_provider_and_workload_and_keeps_history() {
        let l = UsageLedger::default();
        let web = ("default".to_string(), "web".to_string());
        l.record("p1", "a", Some(web.clone()), &u(2.0, 0.5));
        l.record("p2", "b", Some(web.clone()), &u(1.0, 0.25));
        l.record("p1", "c", None, &u(4.0, 0.0));
        assert_eq!(
            l.provider("p1"),
            Some(Usage {
                cpu_seconds: 6.0,
                memory_gibibyte_hours: 0.5
            })
        );
        assert_eq!(l.provider("p3"), None);
        let changed = l.take_changed_workloads();
        assert_eq!(
            changed,
            vec![(
                web.clone(),
                Usage {
                    cpu_seconds: 3.0,
                    memory_gibibyte_hours: 0.75
                }
            )]
        );
        assert!(
            l.take_changed_workloads().is_empty(),
            "nothing changed since"
        );

        // A pod that goes away still counts; a lower report never lowers a total.
        l.pod_removed("a");
        l.record("p2", "b", Some(web.clone()), &u(0.5, 0.1));
        assert_eq!(
            l.provider("p1"),
            Some(Usage {
                cpu_seconds: 6.0,
                memory_gibibyte_hours: 0.5
            })
        );
        assert_eq!(
            l.take_changed_workloads(),
            vec![(
                web,
                Usage {
                    cpu_seconds: 3.0,
                    memory_gibibyte_hours: 0.75
                }
            )]
        );
    }
}
