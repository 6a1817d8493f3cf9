//! What an edge says about its availability (`edge-kubelet pause|drain|resume`, its schedule,
//! its idle rule), checked and bounded, and how often the operator acts on a change.

use std::time::{Duration, Instant};

use decloud_crds::AvailabilityState;
use decloud_proto as pb;
use jiff::Timestamp;

/// Fewest time between two Provider reconciles caused by availability changes of one session.
pub(crate) const MIN_CHANGE_INTERVAL: Duration =
    Duration::from_millis(pb::MIN_AVAILABILITY_INTERVAL_MILLIS);

/// What the edge asks for.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub(crate) enum Requested {
    /// Take work.
    #[default]
    Available,
    /// Take no new work; keep what runs.
    Paused,
    /// Take no new work; move everything away.
    Draining,
}

/// An edge's availability, as the operator keeps it (checked, bounded).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub(crate) struct EdgeAvailability {
    /// What the edge asks for.
    pub(crate) requested: Requested,
    /// Who decided (a short word; empty when the edge did not say).
    pub(crate) reason: String,
    /// The owner's schedule, if any.
    pub(crate) schedule: Option<String>,
    /// When the schedule next changes the state.
    pub(crate) next_change: Option<Timestamp>,
}

impl EdgeAvailability {
    /// The edge's message, checked: texts truncated and stripped of control characters, an
    /// unknown state read as available (an older operator's view), a next change outside
    /// 1970..9999 dropped.
    pub(crate) fn from_proto(a: &pb::Availability) -> Self {
        let requested = match pb::availability::State::try_from(a.state) {
            Ok(pb::availability::State::Paused) => Requested::Paused,
            Ok(pb::availability::State::Draining) => Requested::Draining,
            _ => Requested::Available,
        };
        let reason: String = bounded(&a.reason, pb::MAX_AVAILABILITY_REASON)
            .chars()
            .filter(|c| c.is_ascii_alphanumeric() || *c == '-')
            .collect();
        let schedule = Some(bounded(&a.schedule, pb::MAX_SCHEDULE_BYTES)).filter(|s| !s.is_empty());
        let next_change = (a.next_change_unix_seconds > 0)
            .then(|| Timestamp::from_second(a.next_change_unix_seconds).ok())
            .flatten();
        Self {
            requested,
            reason,
            schedule,
            next_change,
        }
    }

    /// The Provider's availability state for this request, with `pods` still bound to it.
    pub(crate) fn state(&self, pods: usize) -> AvailabilityState {
        match self.requested {
            Requested::Available => AvailabilityState::Available,
            Requested::Paused => AvailabilityState::Paused,
            Requested::Draining if pods == 0 => AvailabilityState::Drained,
            Requested::Draining => AvailabilityState::Draining,
        }
    }
}

fn bounded(s: &str, max: usize) -> String {
    let mut end = s.len().min(max);
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    s[..end].chars().filter(|c| !c.is_control()).collect()
}

/// Paces the reconciles one session's availability changes cause: at most one per
/// [`MIN_CHANGE_INTERVAL`]; a change inside the interval is picked up by the one already
/// scheduled (which reads the latest state), so a looping edge costs one reconcile per interval.
#[derive(Clone, Copy, Debug, Default)]
pub(crate) struct ChangePacer {
    next: Option<Instant>,
}

impl ChangePacer {
    /// When to reconcile for a change seen at `now`: `Some(delay)` to schedule one, `None` when
    /// one is already scheduled.
    pub(crate) fn on_change(&mut self, now: Instant) -> Option<Duration> {
        if self.next.is_some_and(|t| t > now) {
            return None;
        }
        let at = match self.next {
            Some(t) => (t + MIN_CHANGE_INTERVAL).max(now),
            None => now,
        };
        self.next = Some(at);
        Some(at - now)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hostile_availability_is_bounded() {
        let a = EdgeAvailability::from_proto(&pb::Availability {
            state: 77,
            reason: "x\u{7}y".repeat(100),
            schedule: "é".repeat(1000),
            next_change_unix_seconds: i64::MAX,
        });
        assert_eq!(a.requested, Requested::Available);
        assert!(
            a.reason.len() <= pb::MAX_AVAILABILITY_REASON,
            "{}",
            a.reason
        );
        assert!(!a.reason.contains('\u{7}'));
        assert!(a.schedule.as_ref().unwrap().len() <= pb::MAX_SCHEDULE_BYTES);
        assert_eq!(a.next_change, None);
        let d = EdgeAvailability::from_proto(&pb::Availability {
            state: pb::availability::State::Draining as i32,
            ..Default::default()
        });
        assert_eq!(d.state(2), AvailabilityState::Draining);
        assert_eq!(d.state(0), AvailabilityState::Drained);
    }

    #[test]
    fn a_looping_edge_gets_one_reconcile_per_interval() {
        let mut pacer = ChangePacer::default();
        let t0 = Instant::now();
        assert_eq!(pacer.on_change(t0), Some(Duration::ZERO));
        // The next change waits out the interval; the ones after it ride along.
        assert_eq!(
            pacer.on_change(t0 + Duration::from_millis(10)),
            Some(MIN_CHANGE_INTERVAL - Duration::from_millis(10))
        );
        for ms in 20..1000 {
            assert_eq!(pacer.on_change(t0 + Duration::from_millis(ms)), None);
        }
        // Long after: at once again.
        let later = t0 + MIN_CHANGE_INTERVAL * 10;
        assert_eq!(pacer.on_change(later), Some(Duration::ZERO));
    }
}
