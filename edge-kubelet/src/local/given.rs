//! Resource-hours given, today and in total, kept in the state folder (`given.json`) so they
//! survive restarts. Each pod's meters are cumulative; the ledger adds what grew since it last
//! looked (a pod seen for the first time counts whole, a meter that went down restarts).

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use decloud_proto as pb;

/// Resource-hours given.
#[derive(Debug, Clone, Copy, Default, PartialEq, Serialize, Deserialize)]
pub struct Given {
    /// CPU time used by pods, seconds.
    pub cpu_seconds: f64,
    /// Memory held by pods over time, GiB-hours.
    pub memory_gib_hours: f64,
}

/// File name in the state folder.
const FILE: &str = "given.json";
/// Pods whose last meters are remembered at most (the ones running now).
const MAX_PODS: usize = 10_000;

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
struct Saved {
    /// The local date `today` is for (YYYY-MM-DD).
    day: String,
    today: Given,
    total: Given,
    /// Last meters seen per pod uid: (CPU seconds, GiB-hours).
    last: BTreeMap<String, (f64, f64)>,
}

/// The ledger of resources given.
#[derive(Debug)]
pub(crate) struct GivenLedger {
    path: PathBuf,
    saved: Saved,
}

fn local_day() -> String {
    jiff::Zoned::now().date().to_string()
}

impl GivenLedger {
    /// The ledger of `state_dir` (empty if none or unreadable).
    pub(crate) fn open(state_dir: &Path) -> Self {
        let path = state_dir.join(FILE);
        let saved = std::fs::read_to_string(&path)
            .ok()
            .and_then(|t| serde_json::from_str(&t).ok())
            .unwrap_or_default();
        Self { path, saved }
    }

    /// Adds what `pods`' meters grew by, and saves.
    pub(crate) fn record(&mut self, pods: &[pb::PodStatus]) {
        self.add(pods, &local_day());
        if let Ok(bytes) = serde_json::to_vec(&self.saved) {
            let tmp = self.path.with_extension("json.tmp");
            if std::fs::write(&tmp, bytes).is_ok() {
                let _ = std::fs::rename(&tmp, &self.path);
            }
        }
    }

    fn add(&mut self, pods: &[pb::PodStatus], day: &str) {
        let s = &mut self.saved;
        if s.day != day {
            s.day = day.to_string();
            s.today = Given::default();
        }
        let mut last = BTreeMap::new();
        for p in pods.iter().take(MAX_PODS) {
            let u = p.usage.unwrap_or_default();
            let now = (finite(u.cpu_seconds), finite(u.memory_gib_hours));
            let before = s.last.get(&p.uid).copied().unwrap_or((0.0, 0.0));
            let grew = |n: f64, b: f64| if n >= b { n - b } else { n };
            let (cpu, mem) = (grew(now.0, before.0), grew(now.1, before.1));
            for g in [&mut s.today, &mut s.total] {
                g.cpu_seconds += cpu;
                g.memory_gib_hours += mem;
            }
            last.insert(p.uid.clone(), now);
        }
        s.last = last;
    }

    /// Given today.
    pub(crate) fn today(&self) -> Given {
        self.saved.today
    }

    /// Given in total.
    pub(crate) fn total(&self) -> Given {
        self.saved.total
    }
}

fn finite(v: f64) -> f64 {
    if v.is_finite() && v > 0.0 { v } else { 0.0 }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pod(uid: &str, cpu: f64, mem: f64) -> pb::PodStatus {
        pb::PodStatus {
            uid: uid.into(),
            usage: Some(pb::Usage {
                cpu_seconds: cpu,
                memory_gib_hours: mem,
                ..Default::default()
            }),
            ..Default::default()
        }
    }

    #[test]
    fn counts_growth_once_resets_the_day_and_survives_reopening() {
        let dir = tempfile::tempdir().unwrap();
        let mut l = GivenLedger::open(dir.path());
        l.add(&[pod("a", 10.0, 1.0)], "2026-12-01");
        l.add(
            &[pod("a", 15.0, 1.5), pod("b", 2.0, f64::NAN)],
            "2026-12-01",
        );
        assert_eq!(
            l.today(),
            Given {
                cpu_seconds: 17.0,
                memory_gib_hours: 1.5
            }
        );
        l.add(&[pod("b", 3.0, 0.0)], "2026-12-02");
        assert_eq!(
            l.today(),
            Given {
                cpu_seconds: 1.0,
                memory_gib_hours: 0.0
            }
        );
        assert_eq!(
            l.total(),
            Given {
                cpu_seconds: 18.0,
                memory_gib_hours: 1.5
            }
        );
        l.record(&[pod("b", 3.0, 0.0)]);
        let again = GivenLedger::open(dir.path());
        assert_eq!(again.total(), l.total());
    }
}
