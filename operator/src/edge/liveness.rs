//! Edge liveness, kept in memory: heartbeats end here.
//!
//! The tracker is pure (every method takes `now`), so its transitions are table-tested; the
//! registry drives it with real time and turns transitions into Provider reconciles.
//!
//! Missed heartbeats are evidence against an edge only while this process is reading them. Two
//! guards keep an operator that stalls (CPU starvation, a pause, its own uplink blipping) from
//! blaming, and failing over, thousands of healthy edges at once:
//! - a sweep that comes much later than the sweeper's period means the process itself was not
//!   running: it judges nobody, so heartbeats buffered meanwhile are read first;
//! - when more than a share of a large fleet falls silent together, the operator (or the
//!   network in front of it) is the likelier culprit: verdicts are held for a while, as
//!   kube-controller-manager's node lifecycle controller stops evicting in a disrupted zone.

use std::collections::{HashMap, VecDeque};
use std::time::{Duration, Instant};

/// How far back the reliability score looks.
pub(crate) const RELIABILITY_WINDOW: Duration = Duration::from_secs(24 * 60 * 60);

/// A change of an edge's readiness.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Transition {
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

/// When mass silence counts as a disruption rather than as many edges failing.
///
/// The precedent is kube-controller-manager's node lifecycle controller
/// (`--unhealthy-zone-threshold` 0.55, `--large-cluster-size-threshold` 50), which stops
/// evicting pods in a zone where that share of nodes is NotReady. Unlike it, DeCloud holds only
/// for `hold`: a real mass outage is still failed over, just that much later.
#[derive(Clone, Copy, Debug, PartialEq)]
pub(crate) struct DisruptionPolicy {
    /// Share of the ready edges that must fall silent together, in (0, 1]; exactly this share
    /// is not yet a disruption.
    pub(crate) unhealthy_threshold: f64,
    /// Fewer ready edges than this are never held: in a small fleet a few edges are a large
    /// share, and each one's loss must be acted on within seconds.
    pub(crate) large_cluster_size: usize,
    /// How long a disruption's verdicts are held before the silent edges are marked anyway.
    pub(crate) hold: Duration,
}

impl Default for DisruptionPolicy {
    fn default() -> Self {
        Self {
            unhealthy_threshold: 0.55,
            large_cluster_size: 50,
            hold: Duration::from_secs(20),
        }
    }
}

/// How often edges beat, how long one may stay silent, and how often the tracker is swept.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct LivenessTimings {
    /// How often edges send a heartbeat.
    pub(crate) heartbeat_interval: Duration,
    /// Silence after which an edge is unreachable (missed heartbeats × interval).
    pub(crate) unreachable_after: Duration,
    /// How often [`LivenessTracker::sweep`] runs.
    pub(crate) sweep_period: Duration,
}

/// Something about a sweep (rather than about one edge) worth telling an operator.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum SweepEvent {
    /// The sweep came `gap` after the previous one: this process was not running, so it marked
    /// nobody.
    Stalled {
        /// Time since the previous sweep.
        gap: Duration,
    },
    /// `silent` of `ready` edges went silent together: no verdict is given while it lasts.
    DisruptionBegan {
        /// Ready edges that missed heartbeats together (see [`LivenessTracker::new`]).
        silent: usize,
        /// Edges ready (silent ones included).
        ready: usize,
    },
    /// The silence fell back to the threshold or below before the hold ran out; edges that
    /// resumed were never marked.
    DisruptionEnded {
        /// How long verdicts were held.
        held: Duration,
        /// Edges still silent past the window, marked by this sweep as usual.
        marked: usize,
        /// Edges ready before this sweep.
        ready: usize,
    },
    /// The disruption outlasted the hold: this sweep marked the edges silent past the window.
    DisruptionHoldExpired {
        /// How long verdicts were held.
        held: Duration,
        /// Edges marked by this sweep.
        marked: usize,
        /// Edges ready before this sweep.
        ready: usize,
    },
}

/// What one sweep found.
#[derive(Clone, Debug, Default, PartialEq)]
pub(crate) struct Sweep {
    /// Edges that just became unreachable, by name.
    pub(crate) transitions: Vec<(String, Transition)>,
    /// A stall or a change of the disruption state, if any.
    pub(crate) event: Option<SweepEvent>,
}

#[derive(Clone, Debug)]
struct Entry {
    last_heartbeat: Instant,
    ready: bool,
    uptime: UptimeWindow,
}

/// Liveness of every edge this operator has heard from since it started.
#[derive(Debug)]
pub(crate) struct LivenessTracker {
    unreachable_after: Duration,
    /// A gap between sweeps longer than this means the process was not running.
    stall_after: Duration,
    /// An edge silent longer than this counts towards a disruption.
    late_after: Duration,
    policy: DisruptionPolicy,
    entries: HashMap<String, Entry>,
    last_sweep: Option<Instant>,
    /// When the current disruption began, while its verdicts are held.
    disrupted_since: Option<Instant>,
}

impl LivenessTracker {
    /// A tracker that declares an edge unreachable after `timings.unreachable_after` of
    /// silence, holding verdicts in a disruption as `policy` says.
    ///
    /// A sweep more than half the window after the previous one counts as a stall (but never
    /// less than two sweep periods, so that a short window does not make every sweep one).
    ///
    /// Edges that fall silent at the same instant cross the window up to one heartbeat interval
    /// apart (their heartbeats are not in phase), so a sweep sees only some of them past it. To
    /// tell one mass silence from many single ones, an edge counts towards a disruption once it
    /// is silent for half the window (and at least one heartbeat interval): when the first of
    /// them is past the window, the others have been silent for the window less one interval,
    /// more than half of it when 3 or more heartbeats may be missed (the default), while a
    /// healthy edge is silent for about one interval at most. With 1 missed heartbeat allowed
    /// there is no such margin, and only edges past the window count.
    pub(crate) fn new(timings: LivenessTimings, policy: DisruptionPolicy) -> Self {
        let LivenessTimings {
            heartbeat_interval,
            unreachable_after,
            sweep_period,
        } = timings;
        Self {
            unreachable_after,
            stall_after: (unreachable_after / 2).max(sweep_period * 2),
            late_after: (unreachable_after / 2)
                .max(heartbeat_interval)
                .min(unreachable_after),
            policy,
            entries: HashMap::new(),
            last_sweep: None,
            disrupted_since: None,
        }
    }

    /// Records a sign of life (a Hello or a heartbeat) from `name`.
    pub(crate) fn heartbeat(&mut self, name: &str, now: Instant) -> Option<Transition> {
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

    /// Marks every edge silent for longer than allowed as unreachable and returns those, unless
    /// this process stalled or a disruption holds the verdicts (see the module docs).
    ///
    /// May be called as often as wanted; each edge is reported once per outage.
    pub(crate) fn sweep(&mut self, now: Instant) -> Sweep {
        let previous = self.last_sweep.replace(now);
        if let Some(gap) = previous.map(|p| now.saturating_duration_since(p))
            && gap > self.stall_after
        {
            // Heartbeats that arrived during the stall may not be read yet: judge nobody now,
            // the next sweep (one period later) will.
            return Sweep {
                transitions: Vec::new(),
                event: Some(SweepEvent::Stalled { gap }),
            };
        }
        let silent_for = |e: &Entry| now.saturating_duration_since(e.last_heartbeat);
        let (mut ready, mut late, mut due) = (0, 0, 0);
        for e in self.entries.values().filter(|e| e.ready) {
            ready += 1;
            late += usize::from(silent_for(e) > self.late_after);
            due += usize::from(silent_for(e) > self.unreachable_after);
        }
        // A ratio of two small integers is exact enough to compare with the threshold: exactly
        // at the threshold is no disruption (`0.5` of 4 is 2).
        let mass = ready >= self.policy.large_cluster_size
            && ready > 0
            && late as f64 / ready as f64 > self.policy.unhealthy_threshold;
        let event = match (mass, self.disrupted_since) {
            // Nobody is due yet: no verdict to hold (a blip shorter than the window stays quiet).
            (true, None) if due == 0 => None,
            (true, None) => {
                self.disrupted_since = Some(now);
                return Sweep {
                    transitions: Vec::new(),
                    event: Some(SweepEvent::DisruptionBegan {
                        silent: late,
                        ready,
                    }),
                };
            }
            (true, Some(since)) => {
                let held = now.saturating_duration_since(since);
                if held <= self.policy.hold {
                    return Sweep::default();
                }
                // Held long enough: this is an outage after all. A later disruption is held
                // again.
                self.disrupted_since = None;
                Some(SweepEvent::DisruptionHoldExpired {
                    held,
                    marked: due,
                    ready,
                })
            }
            (false, Some(since)) => {
                self.disrupted_since = None;
                Some(SweepEvent::DisruptionEnded {
                    held: now.saturating_duration_since(since),
                    marked: due,
                    ready,
                })
            }
            (false, None) => None,
        };
        let mut transitions = Vec::new();
        for (name, e) in &mut self.entries {
            if e.ready && now.saturating_duration_since(e.last_heartbeat) > self.unreachable_after {
                e.ready = false;
                e.uptime.set_ready(false, now);
                transitions.push((name.clone(), Transition::BecameUnreachable));
            }
        }
        transitions.sort_by(|a, b| a.0.cmp(&b.0));
        Sweep { transitions, event }
    }

    /// When mass silence is held as a disruption.
    pub(crate) fn disruption_policy(&self) -> DisruptionPolicy {
        self.policy
    }

    /// Whether a disruption is holding verdicts right now.
    pub(crate) fn is_disrupted(&self) -> bool {
        self.disrupted_since.is_some()
    }

    /// `Some(ready)` for an edge seen since start, `None` otherwise.
    pub(crate) fn is_ready(&self, name: &str) -> Option<bool> {
        self.entries.get(name).map(|e| e.ready)
    }

    /// When `name` last showed a sign of life.
    pub(crate) fn last_heartbeat(&self, name: &str) -> Option<Instant> {
        self.entries.get(name).map(|e| e.last_heartbeat)
    }

    /// Uptime ratio of `name` over the last [`RELIABILITY_WINDOW`] (or since first seen).
    pub(crate) fn reliability(&mut self, name: &str, now: Instant) -> Option<f64> {
        self.entries
            .get_mut(name)
            .map(|e| e.uptime.ratio(now, RELIABILITY_WINDOW))
    }

    /// Forgets `name` (its provider was deleted).
    pub(crate) fn forget(&mut self, name: &str) {
        self.entries.remove(name);
    }

    /// Names of the edges currently ready.
    pub(crate) fn ready_names(&self) -> Vec<String> {
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
    use std::ops::Range;

    use super::*;

    const S: Duration = Duration::from_secs(1);
    const MS: Duration = Duration::from_millis(1);
    const SWEEP_PERIOD: Duration = Duration::from_millis(250);

    /// 1 s heartbeats, 3 missed: silent 1.5 s counts towards a disruption, 3 s is unreachable.
    fn tracker(policy: DisruptionPolicy) -> LivenessTracker {
        LivenessTracker::new(
            LivenessTimings {
                heartbeat_interval: S,
                unreachable_after: 3 * S,
                sweep_period: SWEEP_PERIOD,
            },
            policy,
        )
    }

    enum Step {
        Beat(&'static str),
        Sweep(Vec<(&'static str, Transition)>),
    }

    #[test]
    fn transitions_table() {
        use Step::*;
        use Transition::*;
        // (seconds since start, step, transition expected from a Beat); one sweep a second.
        let steps: Vec<(u32, Step, Option<Transition>)> = vec![
            (0, Beat("a"), Some(BecameReady)),
            (1, Beat("a"), None),
            (1, Beat("b"), Some(BecameReady)),
            (1, Sweep(vec![]), None),
            (2, Sweep(vec![]), None),
            (3, Sweep(vec![]), None), // a silent 2 s: within 3 s
            (4, Beat("b"), None),
            (4, Sweep(vec![]), None), // a silent 3 s: not more than 3 s
            (5, Sweep(vec![("a", BecameUnreachable)]), None), // a silent 4 s
            (6, Sweep(vec![]), None), // reported once per outage
            (7, Sweep(vec![]), None),
            (8, Sweep(vec![("b", BecameUnreachable)]), None),
            (9, Beat("a"), Some(BecameReady)), // reconnect
            (9, Sweep(vec![]), None),
            (10, Sweep(vec![]), None),
        ];
        let t0 = Instant::now();
        let mut tracker = tracker(DisruptionPolicy::default());
        for (at, step, want) in steps {
            let now = t0 + S * at;
            match step {
                Beat(name) => assert_eq!(tracker.heartbeat(name, now), want, "beat {name} at {at}"),
                Sweep(expected) => {
                    let got = tracker.sweep(now);
                    let expected: Vec<(String, Transition)> = expected
                        .into_iter()
                        .map(|(n, t)| (n.to_string(), t))
                        .collect();
                    assert_eq!(got.transitions, expected, "sweep at {at}");
                    assert_eq!(got.event, None, "sweep at {at}");
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

    /// One row of a fleet table: at `ms`, heartbeats from the edges in `beating`, then a sweep
    /// that must mark exactly the edges in `marked` and report `event`.
    struct Row {
        ms: u64,
        beating: Range<usize>,
        marked: Range<usize>,
        event: Option<SweepEvent>,
    }

    fn row(ms: u64, beating: Range<usize>, marked: Range<usize>, event: Option<SweepEvent>) -> Row {
        Row {
            ms,
            beating,
            marked,
            event,
        }
    }

    /// Rows every second from `from_s` to `to_s` (inclusive) where `beating` beat and nothing
    /// is expected to happen.
    fn quiet(from_s: u64, to_s: u64, beating: Range<usize>) -> Vec<Row> {
        (from_s..=to_s)
            .map(|s| row(s * 1000, beating.clone(), 0..0, None))
            .collect()
    }

    fn edge(i: usize) -> String {
        format!("e{i:03}")
    }

    /// Runs `rows` against a fresh tracker with `policy`; returns it for further checks.
    fn run(policy: DisruptionPolicy, rows: Vec<Row>) -> LivenessTracker {
        let t0 = Instant::now();
        let mut tracker = tracker(policy);
        let mut holding = false;
        for r in rows {
            let now = t0 + MS * r.ms as u32;
            for i in r.beating {
                tracker.heartbeat(&edge(i), now);
            }
            let got = tracker.sweep(now);
            let marked: Vec<(String, Transition)> = r
                .marked
                .map(|i| (edge(i), Transition::BecameUnreachable))
                .collect();
            assert_eq!(got.transitions, marked, "marked at {} ms", r.ms);
            assert_eq!(got.event, r.event, "event at {} ms", r.ms);
            match got.event {
                Some(SweepEvent::DisruptionBegan { .. }) => holding = true,
                Some(
                    SweepEvent::DisruptionEnded { .. } | SweepEvent::DisruptionHoldExpired { .. },
                ) => holding = false,
                _ => {}
            }
            assert_eq!(tracker.is_disrupted(), holding, "holding at {} ms", r.ms);
        }
        tracker
    }

    /// 10 edges, held when more than half of at least 4 ready ones fall silent, for 5 s.
    fn small_policy() -> DisruptionPolicy {
        DisruptionPolicy {
            unhealthy_threshold: 0.5,
            large_cluster_size: 4,
            hold: 5 * S,
        }
    }

    #[test]
    fn a_single_silent_edge_in_a_large_fleet_is_marked_after_the_window() {
        // 60 ready edges (default policy: held only from 50 ready and above 55 % silent); e000
        // stops at 1 s. Silent exactly 3 s at 4 s is still fine; at 5 s it is marked.
        let mut rows = quiet(0, 1, 0..60);
        rows.extend(quiet(2, 4, 1..60));
        rows.push(row(5000, 1..60, 0..1, None));
        rows.extend(quiet(6, 7, 1..60));
        let t = run(DisruptionPolicy::default(), rows);
        assert_eq!(t.ready_names().len(), 59);
    }

    #[test]
    fn a_stall_judges_nobody_and_the_next_sweep_does() {
        // e000 stops at 2 s; e001 keeps beating, but the operator stalls from 2 s to 7 s: its
        // first sweep after the stall runs before e001's buffered heartbeats are read.
        let mut rows = quiet(0, 2, 0..2);
        rows.push(row(
            7000,
            0..0,
            0..0,
            Some(SweepEvent::Stalled { gap: 5 * S }),
        ));
        // One sweep period later e001's heartbeat was read; e000 is truly silent.
        rows.push(row(7250, 1..2, 0..1, None));
        // A gap of exactly unreachable_after / 2 is no stall; a longer one is.
        rows.push(row(8750, 1..2, 0..0, None));
        rows.push(row(
            10_251,
            1..2,
            0..0,
            Some(SweepEvent::Stalled { gap: 1501 * MS }),
        ));
        rows.push(row(10_500, 1..2, 0..0, None));
        let t = run(DisruptionPolicy::default(), rows);
        assert_eq!(t.ready_names(), vec![edge(1)]);
    }

    #[test]
    fn a_short_window_never_makes_every_sweep_a_stall() {
        // 100 ms heartbeats, one may be missed, swept every 50 ms: half the window is 50 ms,
        // less than a sweep period plus scheduling jitter.
        let t0 = Instant::now();
        let mut t = LivenessTracker::new(
            LivenessTimings {
                heartbeat_interval: 100 * MS,
                unreachable_after: 100 * MS,
                sweep_period: 50 * MS,
            },
            DisruptionPolicy::default(),
        );
        t.heartbeat("a", t0);
        assert_eq!(t.sweep(t0).event, None);
        assert_eq!(t.sweep(t0 + 60 * MS).event, None);
        let late = t.sweep(t0 + 160 * MS);
        assert_eq!(late.event, None);
        assert_eq!(
            late.transitions,
            vec![("a".to_string(), Transition::BecameUnreachable)]
        );
        assert_eq!(
            t.sweep(t0 + 261 * MS).event,
            Some(SweepEvent::Stalled { gap: 101 * MS })
        );
    }

    #[test]
    fn mass_silence_is_held_resumed_edges_are_never_marked_the_rest_are_after_the_hold() {
        // e000..e007 (8 of 10) stop at 1 s; e006 and e007 resume at 7 s.
        let mut rows = quiet(0, 1, 0..10);
        rows.extend(quiet(2, 4, 8..10)); // silent exactly 3 s at 4 s: nothing yet
        rows.push(row(
            5000,
            8..10,
            0..0,
            Some(SweepEvent::DisruptionBegan {
                silent: 8,
                ready: 10,
            }),
        ));
        rows.extend(quiet(6, 6, 8..10));
        rows.extend(quiet(7, 10, 6..10)); // 6 of 10 still silent: held; held 5 s at 10 s
        rows.push(row(
            11_000,
            6..10,
            0..6,
            Some(SweepEvent::DisruptionHoldExpired {
                held: 6 * S,
                marked: 6,
                ready: 10,
            }),
        ));
        rows.extend(quiet(12, 13, 6..10));
        let t = run(small_policy(), rows);
        assert!(!t.is_disrupted());
        assert_eq!(t.ready_names(), (6..10).map(edge).collect::<Vec<_>>());
    }

    #[test]
    fn edges_silent_together_but_out_of_phase_are_one_disruption() {
        // 4 edges beat once a second, a quarter of a second apart (e000 at .000, e001 at .250,
        // …), swept every 250 ms. e000..e002 stop after their beats in the first second (as
        // behind one cut link); e003 keeps beating. e000 is past the window at 4.25 s, when
        // e001 and e002 are not yet: marking it alone (1 of 4) would miss the disruption, and
        // then each of the others in turn.
        let hold = 5 * S;
        let stopped = |edge: usize, ms: u64| edge < 3 && ms > 1500;
        let mut rows: Vec<Row> = (0..=40u64)
            .map(|k| {
                let ms = k * 250;
                let i = (k % 4) as usize;
                let beating = if stopped(i, ms) { 0..0 } else { i..i + 1 };
                row(ms, beating, 0..0, None)
            })
            .collect();
        let at = |ms: u64| (ms / 250) as usize;
        rows[at(4250)].event = Some(SweepEvent::DisruptionBegan {
            silent: 3,
            ready: 4,
        });
        // Held 5 s at 9.25 s; expired at 9.5 s.
        rows[at(9500)].marked = 0..3;
        rows[at(9500)].event = Some(SweepEvent::DisruptionHoldExpired {
            held: hold + 250 * MS,
            marked: 3,
            ready: 4,
        });
        let policy = DisruptionPolicy {
            unhealthy_threshold: 0.5,
            large_cluster_size: 3,
            hold,
        };
        let t = run(policy, rows);
        assert_eq!(t.ready_names(), vec![edge(3)]);

        // The same with only e000 stopping: 1 of 4 is marked on time, at 4.25 s.
        let rows: Vec<Row> = (0..=24u64)
            .map(|k| {
                let ms = k * 250;
                let i = (k % 4) as usize;
                let beating = if i == 0 && ms > 1500 { 0..0 } else { i..i + 1 };
                let marked = if ms == 4250 { 0..1 } else { 0..0 };
                row(ms, beating, marked, None)
            })
            .collect();
        run(policy, rows);
    }

    #[test]
    fn a_blip_shorter_than_the_window_is_no_disruption() {
        // All 10 edges silent from 1 s to 4 s (3 s, not more): no verdict, no disruption.
        let mut rows = quiet(0, 1, 0..10);
        rows.extend(quiet(2, 3, 0..0));
        rows.extend(quiet(4, 6, 0..10));
        let t = run(small_policy(), rows);
        assert_eq!(t.ready_names().len(), 10);
    }

    #[test]
    fn below_the_large_cluster_size_nothing_is_held() {
        // 3 ready edges (< 4), 2 stop: marked after the window as always.
        let mut rows = quiet(0, 1, 0..3);
        rows.extend(quiet(2, 4, 2..3));
        rows.push(row(5000, 2..3, 0..2, None));
        run(small_policy(), rows);
    }

    #[test]
    fn exactly_at_the_threshold_is_not_held() {
        // (ready edges, threshold, silent ones, held?)
        let cases = [
            (10, 0.5, 5, false),
            (10, 0.5, 6, true),
            (20, 0.55, 11, false),
            (20, 0.55, 12, true),
            (100, 0.29, 29, false),
            (100, 0.29, 30, true),
            (4, 1.0, 4, false),
        ];
        for (fleet, threshold, silent, held) in cases {
            let policy = DisruptionPolicy {
                unhealthy_threshold: threshold,
                large_cluster_size: 4,
                hold: 5 * S,
            };
            let mut rows = quiet(0, 1, 0..fleet);
            rows.extend(quiet(2, 4, silent..fleet));
            rows.push(if held {
                row(
                    5000,
                    silent..fleet,
                    0..0,
                    Some(SweepEvent::DisruptionBegan {
                        silent,
                        ready: fleet,
                    }),
                )
            } else {
                row(5000, silent..fleet, 0..silent, None)
            });
            run(policy, rows);
        }
    }

    #[test]
    fn a_disruption_ends_when_edges_resume_and_a_later_one_is_held_again() {
        // 4 edges, 3 stop at 1 s and resume at 6 s: held, never marked.
        let mut rows = quiet(0, 1, 0..4);
        rows.extend(quiet(2, 4, 3..4));
        let began = Some(SweepEvent::DisruptionBegan {
            silent: 3,
            ready: 4,
        });
        rows.push(row(5000, 3..4, 0..0, began));
        rows.push(row(
            6000,
            0..4,
            0..0,
            Some(SweepEvent::DisruptionEnded {
                held: S,
                marked: 0,
                ready: 4,
            }),
        ));
        // They stop again at 7 s: a new disruption, held the full 5 s again, then marked.
        rows.extend(quiet(7, 7, 0..4));
        rows.extend(quiet(8, 10, 3..4));
        rows.push(row(11_000, 3..4, 0..0, began));
        rows.extend(quiet(12, 16, 3..4));
        rows.push(row(
            17_000,
            3..4,
            0..3,
            Some(SweepEvent::DisruptionHoldExpired {
                held: 6 * S,
                marked: 3,
                ready: 4,
            }),
        ));
        // Back again, and a third silence is held once more: the state reset after the expiry.
        rows.extend(quiet(18, 18, 3..4));
        rows.extend(quiet(19, 19, 0..4));
        rows.extend(quiet(20, 22, 3..4));
        rows.push(row(23_000, 3..4, 0..0, began));
        let t = run(small_policy(), rows);
        assert!(t.is_disrupted());
    }

    #[test]
    fn reliability_is_uptime_over_observed_time() {
        let t0 = Instant::now();
        let mut tracker = tracker(DisruptionPolicy::default());
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
