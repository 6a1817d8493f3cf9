//! The latest status of every pod on this edge, and the stream of changes the session pushes.

use std::collections::HashMap;
use std::time::Duration;

use parking_lot::{Mutex, MutexGuard};
use tokio::sync::broadcast;
use tokio::time::Instant;

use decloud_proto as pb;

/// A change the operator must hear about.
#[derive(Debug, Clone, PartialEq)]
pub enum PodUpdate {
    /// A pod's status changed (the full new status).
    Status(pb::PodStatus),
    /// A pod's containers are all removed.
    Gone(String),
    /// Something happened to a pod, worded as kubelet words its events (never stored; lost
    /// while no session listens).
    Event(pb::PodEvent),
}

/// How often a pod whose only change is its usage meter is sent again. Usage grows with every
/// sample (each 10 s poll); sending it at that rate would be most of an idle edge's traffic, while
/// the operator writes usage totals only every `--usage-interval` (30 s by default) anyway.
pub(crate) const USAGE_REPORT_PERIOD: Duration = Duration::from_secs(30);

/// One pod's latest status, and when it was last broadcast.
#[derive(Debug)]
struct Entry {
    status: pb::PodStatus,
    sent: Instant,
}

/// Latest pod statuses plus a broadcast of changes. Shared by the pod workers (writers) and
/// the session (reader).
#[derive(Debug)]
pub struct StatusBoard {
    statuses: Mutex<HashMap<String, Entry>>,
    updates: broadcast::Sender<PodUpdate>,
    events: Mutex<HashMap<String, EventBudget>>,
}

/// One pod's event budget: the operator's limit ([`pb::POD_EVENT_BURST`], then one per
/// [`pb::POD_EVENT_REFILL_SECONDS`]), kept here too so an honest edge never sends what the
/// operator would drop.
#[derive(Debug, Clone, Copy)]
struct EventBudget {
    tokens: f64,
    at: Instant,
}

impl Default for StatusBoard {
    fn default() -> Self {
        StatusBoard {
            statuses: Mutex::default(),
            updates: broadcast::channel(4096).0,
            events: Mutex::default(),
        }
    }
}

impl StatusBoard {
    fn map(&self) -> MutexGuard<'_, HashMap<String, Entry>> {
        self.statuses.lock()
    }

    /// Records `status`; broadcasts it if it differs from the last one, except that a change of
    /// usage alone is broadcast at most once per [`USAGE_REPORT_PERIOD`] (it is kept, and rides
    /// along with the next broadcast either way).
    pub(crate) fn publish(&self, status: pb::PodStatus) {
        let mut map = self.map();
        let now = Instant::now();
        if let Some(old) = map.get_mut(&status.uid) {
            if old.status == status {
                return;
            }
            let usage_only = pb::PodStatus {
                usage: status.usage,
                ..old.status.clone()
            } == status;
            if usage_only && now.duration_since(old.sent) < USAGE_REPORT_PERIOD {
                old.status = status;
                return;
            }
        }
        map.insert(
            status.uid.clone(),
            Entry {
                status: status.clone(),
                sent: now,
            },
        );
        // No receiver (no session right now) is fine: the board keeps the latest anyway.
        let _ = self.updates.send(PodUpdate::Status(status));
    }

    /// Announces `event` unless its pod has used up its event budget (then it is dropped,
    /// as kubelet's spam filter drops events).
    pub(crate) fn event(&self, mut event: pb::PodEvent) {
        let now = Instant::now();
        {
            let mut budgets = self.events.lock();
            let b = budgets.entry(event.uid.clone()).or_insert(EventBudget {
                tokens: f64::from(pb::POD_EVENT_BURST),
                at: now,
            });
            let gained =
                now.duration_since(b.at).as_secs_f64() / pb::POD_EVENT_REFILL_SECONDS as f64;
            b.tokens = (b.tokens + gained).min(f64::from(pb::POD_EVENT_BURST));
            b.at = now;
            if b.tokens < 1.0 {
                tracing::debug!(pod = %event.name, reason = %event.reason, "pod event dropped: budget used up");
                return;
            }
            b.tokens -= 1.0;
        }
        event
            .reason
            .truncate(floor_char_boundary(&event.reason, pb::MAX_EVENT_REASON));
        event
            .message
            .truncate(floor_char_boundary(&event.message, pb::MAX_EVENT_MESSAGE));
        let _ = self.updates.send(PodUpdate::Event(event));
    }

    /// Forgets pod `uid` and announces that it is gone.
    pub(crate) fn gone(&self, uid: &str) {
        self.map().remove(uid);
        self.events.lock().remove(uid);
        let _ = self.updates.send(PodUpdate::Gone(uid.to_string()));
    }

    /// The latest status of every pod, sorted by uid.
    pub fn all(&self) -> Vec<pb::PodStatus> {
        let mut v: Vec<_> = self.map().values().map(|e| e.status.clone()).collect();
        v.sort_by(|a, b| a.uid.cmp(&b.uid));
        v
    }

    /// The latest status of pod `uid`.
    pub fn get(&self, uid: &str) -> Option<pb::PodStatus> {
        self.map().get(uid).map(|e| e.status.clone())
    }

    /// Changes from now on. A lagging receiver should re-read [`StatusBoard::all`].
    pub fn subscribe(&self) -> broadcast::Receiver<PodUpdate> {
        self.updates.subscribe()
    }
}

/// The largest index `<= max` that is a character boundary of `s`.
fn floor_char_boundary(s: &str, max: usize) -> usize {
    let mut end = s.len().min(max);
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    end
}

#[cfg(test)]
mod tests {
    use super::*;

    fn status(ready: bool, cpu_seconds: f64) -> pb::PodStatus {
        pb::PodStatus {
            uid: "u1".into(),
            ready,
            usage: Some(pb::Usage {
                cpu_seconds,
                ..Default::default()
            }),
            ..Default::default()
        }
    }

    fn sent(rx: &mut broadcast::Receiver<PodUpdate>) -> Vec<PodUpdate> {
        std::iter::from_fn(|| rx.try_recv().ok()).collect()
    }

    #[tokio::test(start_paused = true)]
    async fn events_are_bounded_per_pod_as_the_operator_bounds_them() {
        let board = StatusBoard::default();
        let mut rx = board.subscribe();
        let ev = |uid: &str| pb::PodEvent {
            uid: uid.into(),
            reason: "BackOff".into(),
            message: "é".repeat(pb::MAX_EVENT_MESSAGE),
            ..Default::default()
        };
        for _ in 0..100 {
            board.event(ev("a"));
        }
        board.event(ev("b"));
        let got = sent(&mut rx);
        assert_eq!(got.len(), pb::POD_EVENT_BURST as usize + 1);
        for u in got {
            let PodUpdate::Event(e) = u else {
                panic!("{u:?}")
            };
            assert!(e.message.len() <= pb::MAX_EVENT_MESSAGE);
        }
        tokio::time::advance(Duration::from_secs(pb::POD_EVENT_REFILL_SECONDS)).await;
        board.event(ev("a"));
        board.event(ev("a"));
        assert_eq!(sent(&mut rx).len(), 1);
    }

    #[tokio::test(start_paused = true)]
    async fn usage_alone_is_sent_once_per_period_other_changes_at_once() {
        let board = StatusBoard::default();
        let mut rx = board.subscribe();
        board.publish(status(false, 0.0));
        board.publish(status(false, 0.0));
        assert_eq!(sent(&mut rx), [PodUpdate::Status(status(false, 0.0))]);

        // Usage grew 10 s later: kept, not sent.
        tokio::time::advance(Duration::from_secs(10)).await;
        board.publish(status(false, 1.0));
        assert!(sent(&mut rx).is_empty());
        assert_eq!(board.get("u1"), Some(status(false, 1.0)));
        assert_eq!(board.all(), [status(false, 1.0)]);

        // A real change goes at once, with the latest usage.
        board.publish(status(true, 1.5));
        assert_eq!(sent(&mut rx), [PodUpdate::Status(status(true, 1.5))]);

        // Usage alone again: held until a period has passed since the last send.
        tokio::time::advance(USAGE_REPORT_PERIOD - Duration::from_secs(1)).await;
        board.publish(status(true, 2.0));
        assert!(sent(&mut rx).is_empty());
        tokio::time::advance(Duration::from_secs(1)).await;
        board.publish(status(true, 3.0));
        assert_eq!(sent(&mut rx), [PodUpdate::Status(status(true, 3.0))]);
    }
}
