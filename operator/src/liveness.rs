//! Edge liveness, kept in memory: heartbeats end here.
//!
//! The tracker is pure (every method takes `now`), so its transitions are table-tested; the
//! registry drives it with real time and turns transitions into Provider reconciles.

use std::collections::{HashMap, VecDeque};
use std::time::{Duration, Instant};

/// How far back the reliability score looks.
pub const RELIABILITY_WINDOW: Duration = Duration::from_secs(24 * 60 * 60);

/// A change of an edge's readiness.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Transition {
    /// First heartbeat after being unknown or unreachable.
    BecameReady,
    /// No heartbeat within the allowed window.
    BecameUnreachable,
}

/// Uptime of one edge over a sliding window.
#[derive(Clone, Debug)]
struct UptimeWindow {
    /// When the tracker first saw the edge.
    since: Instant,
    /// Closed ready intervals, oldest first.
    up: VecDeque<(Instant, Instant)>,
    /// Start of the current ready interval, if ready.
    up_since: Option<Instant>,
}

impl UptimeWindow {
    fn new(now: Instant) -> Self {
        Self {
            since: now,
            up: VecDeque::new(),
            up_since: None,
        }
    }

    fn set_ready(&mut self, ready: bool, now: Instant) {
        match (ready, self.up_since) {
            (true, None) => self.up_since = Some(now),
            (false, Some(start)) => {
                self.up.push_back((start, now));
                self.up_since = None;
            }
            _ => {}
        }
    }

    /// Ready time over observed time within the window ending at `now`.
    fn ratio(&mut self, now: Instant, window: Duration) -> f64 {
        let start = now
            .checked_sub(window)
            .unwrap_or(self.since)
            .max(self.since);
        while self.up.front().is_some_and(|(_, end)| *end <= start) {
            self.up.pop_front();
        }
        let observed = now.saturating_duration_since(start);
        if observed.is_zero() {
            return if self.up_since.is_some() { 1.0 } else { 0.0 };
        }
        let clip = |a: Instant, b: Instant| b.saturating_duration_since(a.max(start));
        let mut up: Duration = self.up.iter().map(|(a, b)| clip(*a, *b)).sum();
        if let Some(a) = self.up_since {
            up += clip(a, now);
        }
        (up.as_secs_f64() / observed.as_secs_f64()).clamp(0.0, 1.0)
    }
}

#[derive(Clone, Debug)]
struct Entry {
    last_heartbeat: Instant,
    ready: bool,
    uptime: UptimeWindow,
}

/// Liveness of every edge this operator has heard from since it started.
#[derive(Debug)]
pub struct LivenessTracker {
    unreachable_after: Duration,
    entries: HashMap<String, Entry>,
}

impl LivenessTracker {
    /// A tracker that declares an edge unreachable after `unreachable_after` of silence.
    pub fn new(unreachable_after: Duration) -> Self {
        Self {
            unreachable_after,
            entries: HashMap::new(),
        }
    }

    /// Records a sign of life (a Hello or a heartbeat) from `name`.
    pub fn heartbeat(&mut self, name: &str, now: Instant) -> Option<Transition> {
        let entry = self
            .entries
            .entry(name.to_string())
            .or_insert_with(|| Entry {
                last_heartbeat: now,
                ready: false,
                uptime: UptimeWindow::new(now),
            });
        entry.last_heartbeat = now;
        if entry.ready {
            return None;
        }
        entry.ready = true;
        entry.uptime.set_ready(true, now);
        Some(Transition::BecameReady)
    }

    /// Marks every edge silent for longer than allowed as unreachable; returns those.
    ///
    /// May be called as often as wanted; each edge is reported once per outage.
    pub fn sweep(&mut self, now: Instant) -> Vec<(String, Transition)> {
        let mut out = Vec::new();
        for (name, e) in &mut self.entries {
            if e.ready && now.saturating_duration_since(e.last_heartbeat) > self.unreachable_after {
                e.ready = false;
                e.uptime.set_ready(false, now);
                out.push((name.clone(), Transition::BecameUnreachable));
            }
        }
        out.sort_by(|a, b| a.0.cmp(&b.0));
        out
    }

    /// `Some(ready)` for an edge seen since start, `None` otherwise.
    pub fn is_ready(&self, name: &str) -> Option<bool> {
        self.entries.get(name).map(|e| e.ready)
    }

    /// When `name` last showed a sign of life.
    pub fn last_heartbeat(&self, name: &str) -> Option<Instant> {
        self.entries.get(name).map(|e| e.last_heartbeat)
    }

    /// Uptime ratio of `name` over the last [`RELIABILITY_WINDOW`] (or since first seen).
    pub fn reliability(&mut self, name: &str, now: Instant) -> Option<f64> {
        self.entries
            .get_mut(name)
            .map(|e| e.uptime.ratio(now, RELIABILITY_WINDOW))
    }

    /// Forgets `name` (its provider was deleted).
    pub fn forget(&mut self, name: &str) {
        self.entries.remove(name);
    }

    /// Names of the edges currently ready.
    pub fn ready_names(&self) -> Vec<String> {
        let mut names: Vec<String> = self
            .entries
            .iter()
            .filter(|(_, e)| e.ready)
            .map(|(n, _)| n.clone())
            .collect();
        names.sort();
        names
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const S: Duration = Duration::from_secs(1);

    enum Step {
        Beat(&'static str),
        Sweep(Vec<(&'static str, Transition)>),
    }

    #[test]
    fn transitions_table() {
        use Step::*;
        use Transition::*;
        // (seconds since start, step, transition expected from a Beat)
        let steps: Vec<(u64, Step, Option<Transition>)> = vec![
            (0, Beat("a"), Some(BecameReady)),
            (1, Beat("a"), None),
            (1, Beat("b"), Some(BecameReady)),
            (3, Sweep(vec![]), None), // a silent 2 s: within 3 s
            (4, Beat("b"), None),
            (5, Sweep(vec![("a", BecameUnreachable)]), None), // a silent 4 s
            (6, Sweep(vec![]), None),                         // reported once per outage
            (8, Sweep(vec![("b", BecameUnreachable)]), None),
            (9, Beat("a"), Some(BecameReady)), // reconnect
            (10, Sweep(vec![]), None),
        ];
        let t0 = Instant::now();
        let mut tracker = LivenessTracker::new(3 * S);
        for (at, step, want) in steps {
            let now = t0 + S * at as u32;
            match step {
                Beat(name) => assert_eq!(tracker.heartbeat(name, now), want, "beat {name} at {at}"),
                Sweep(expected) => {
                    let got = tracker.sweep(now);
                    let expected: Vec<(String, Transition)> = expected
                        .into_iter()
                        .map(|(n, t)| (n.to_string(), t))
                        .collect();
                    assert_eq!(got, expected, "sweep at {at}");
                }
            }
        }
        assert_eq!(tracker.is_ready("a"), Some(true));
        assert_eq!(tracker.is_ready("b"), Some(false));
        assert_eq!(tracker.is_ready("c"), None);
        assert_eq!(tracker.ready_names(), vec!["a".to_string()]);
        tracker.forget("a");
        assert_eq!(tracker.is_ready("a"), None);
    }

    #[test]
    fn reliability_is_uptime_over_observed_time() {
        let t0 = Instant::now();
        let mut tracker = LivenessTracker::new(3 * S);
        tracker.heartbeat("a", t0);
        // Up for 10 s (detected unreachable at 10 s), down until 20 s, up again until 40 s.
        tracker.sweep(t0 + 10 * S + S / 2);
        tracker.heartbeat("a", t0 + 20 * S);
        let r = tracker.reliability("a", t0 + 40 * S).unwrap();
        assert!((r - 30.5 / 40.0).abs() < 1e-9, "{r}");
        assert_eq!(tracker.reliability("nobody", t0), None);
    }

    #[test]
    fn reliability_window_slides() {
        let t0 = Instant::now();
        let mut w = UptimeWindow::new(t0);
        w.set_ready(true, t0);
        w.set_ready(false, t0 + Duration::from_secs(3600));
        // 25 h later the first hour has left the 24 h window: nothing but downtime remains.
        let r = w.ratio(t0 + Duration::from_secs(25 * 3600), RELIABILITY_WINDOW);
        assert_eq!(r, 0.0);
        assert!(w.up.is_empty());
    }
}
