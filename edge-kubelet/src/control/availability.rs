//! The machine's availability: the owner's choice and the rules, combined into one state
//! ([`Availability`], the handle every part acts on).

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use decloud_proto as pb;
use serde::{Deserialize, Serialize};
use tokio::sync::watch;

/// What the machine does about work, from least to most restrictive.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum State {
    /// Takes work.
    #[default]
    Available,
    /// Takes no new work; running pods stay (as `kubectl cordon`).
    Paused,
    /// Takes no new work and asks the operator to move every pod elsewhere, make-before-break
    /// (as `kubectl drain`).
    Draining,
}

/// Where the machine stands, as the session reports it and `edge-kubelet status` shows it.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct AvailabilityStatus {
    /// The state in force: the most restrictive of the owner's choice and the rules.
    pub state: State,
    /// Who decided it: `owner`, `shutdown`, `schedule` or `busy` (empty when available).
    pub reason: String,
    /// What the owner chose last (`pause`, `drain`, `resume`), kept across restarts.
    pub owner: State,
    /// The schedule in force, as given, with its time zone.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub schedule: Option<String>,
    /// When the schedule next changes the state (RFC 3339).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub next_change: Option<String>,
    /// Pods still on this machine.
    pub pods: usize,
    /// Whether the operator has been told the current state.
    pub reported: bool,
}

impl AvailabilityStatus {
    /// Draining and nothing left here, the operator told: the machine may be taken back.
    pub fn drained(&self) -> bool {
        self.state == State::Draining && self.pods == 0 && self.reported
    }

    /// The `Availability` message for the operator.
    pub(crate) fn to_proto(&self) -> pb::Availability {
        pb::Availability {
            state: match self.state {
                State::Available => pb::availability::State::Available,
                State::Paused => pb::availability::State::Paused,
                State::Draining => pb::availability::State::Draining,
            } as i32,
            reason: self.reason.clone(),
            schedule: self.schedule.clone().unwrap_or_default(),
            next_change_unix_seconds: self
                .next_change
                .as_deref()
                .and_then(|t| t.parse::<jiff::Timestamp>().ok())
                .map_or(0, |t| t.as_second()),
        }
    }
}

/// The inputs the state is combined from.
#[derive(Debug, Clone, Default)]
struct Inputs {
    owner: State,
    /// SIGTERM: the system is shutting down.
    shutdown: bool,
    /// The schedule's verdict: `Some(false)` outside a window (or within the margin of its end).
    schedule_open: Option<bool>,
    schedule: Option<String>,
    next_change: Option<jiff::Timestamp>,
    /// The idle rule's verdict: `Some(false)` while the machine is busy.
    idle: Option<bool>,
    pods: usize,
    /// Generation of the state last sent to the operator.
    reported: u64,
    /// Generation of the state in force (bumped on every change of `state`).
    generation: u64,
}

impl Inputs {
    fn status(&self) -> AvailabilityStatus {
        let mut state = (
            self.owner,
            if self.owner == State::Available {
                ""
            } else {
                "owner"
            },
        );
        for (on, why) in [
            (self.shutdown, "shutdown"),
            (self.schedule_open == Some(false), "schedule"),
            (self.idle == Some(false), "busy"),
        ] {
            if on && state.0 < State::Draining {
                state = (State::Draining, why);
            }
        }
        AvailabilityStatus {
            state: state.0,
            reason: state.1.to_string(),
            owner: self.owner,
            schedule: self.schedule.clone(),
            next_change: self.next_change.map(|t| t.to_string()),
            pods: self.pods,
            reported: self.reported >= self.generation,
        }
    }
}

/// The in-process handle on this machine's availability. Cheap to clone; every clone is the
/// same handle.
#[derive(Clone)]
pub struct Availability {
    inputs: Arc<parking_lot::Mutex<Inputs>>,
    tx: Arc<watch::Sender<AvailabilityStatus>>,
    /// Where the owner's choice is kept across restarts (None: not kept).
    owner_file: Option<PathBuf>,
}

impl std::fmt::Debug for Availability {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_tuple("Availability")
            .field(&*self.tx.borrow())
            .finish()
    }
}

impl Default for Availability {
    fn default() -> Self {
        Self::new(None)
    }
}

/// The file in the state folder keeping the owner's last choice.
const OWNER_FILE: &str = "availability";

impl Availability {
    /// A handle starting from the owner's choice kept in `state_dir` (available if none).
    pub fn new(state_dir: Option<&Path>) -> Self {
        let owner_file = state_dir.map(|d| d.join(OWNER_FILE));
        let owner = owner_file
            .as_ref()
            .and_then(|f| std::fs::read_to_string(f).ok())
            .and_then(|s| match s.trim() {
                "paused" => Some(State::Paused),
                "draining" => Some(State::Draining),
                _ => None,
            })
            .unwrap_or_default();
        let inputs = Inputs {
            owner,
            // Generation 0 counts as told; the first state is not, until the session says so.
            generation: 1,
            ..Default::default()
        };
        let (tx, _) = watch::channel(inputs.status());
        Self {
            inputs: Arc::new(parking_lot::Mutex::new(inputs)),
            tx: Arc::new(tx),
            owner_file,
        }
    }

    /// Stop taking work; running pods stay (`kubectl cordon`). Kept across restarts.
    pub async fn pause(&self) {
        self.set_owner(State::Paused).await;
    }

    /// Stop taking work and have every pod moved elsewhere (`kubectl drain`). Kept across
    /// restarts. Returns at once; [`Availability::drained`] waits for the end.
    pub async fn drain(&self) {
        self.set_owner(State::Draining).await;
    }

    /// Take work again (`kubectl uncordon`), as far as the schedule and idle rule allow.
    pub async fn resume(&self) {
        self.set_owner(State::Available).await;
    }

    /// The current state, and every change to it.
    pub fn watch(&self) -> watch::Receiver<AvailabilityStatus> {
        self.tx.subscribe()
    }

    /// The current state.
    pub fn current(&self) -> AvailabilityStatus {
        self.tx.borrow().clone()
    }

    /// Waits until the machine is drained (see [`AvailabilityStatus::drained`]) or `timeout`
    /// passes; true when drained.
    pub async fn drained(&self, timeout: Duration) -> bool {
        let mut rx = self.watch();
        tokio::time::timeout(timeout, rx.wait_for(AvailabilityStatus::drained))
            .await
            .is_ok_and(|r| r.is_ok())
    }

    async fn set_owner(&self, owner: State) {
        self.update(|i| i.owner = owner);
        if let Some(f) = self.owner_file.clone() {
            let word = match owner {
                State::Available => "available",
                State::Paused => "paused",
                State::Draining => "draining",
            };
            let written = tokio::task::spawn_blocking(move || std::fs::write(&f, word)).await;
            if !matches!(written, Ok(Ok(()))) {
                tracing::warn!(
                    "could not keep the owner's availability choice in the state folder"
                );
            }
        }
    }

    /// The system is shutting down (SIGTERM): drain, not kept across restarts.
    pub fn shutting_down(&self) {
        self.update(|i| i.shutdown = true);
    }

    pub(crate) fn set_schedule(
        &self,
        text: Option<String>,
        open: Option<bool>,
        next: Option<jiff::Timestamp>,
    ) {
        self.update(|i| {
            i.schedule = text;
            i.schedule_open = open;
            i.next_change = next;
        });
    }

    pub(crate) fn set_idle(&self, idle: Option<bool>) {
        self.update(|i| i.idle = idle);
    }

    pub(crate) fn set_pods(&self, pods: usize) {
        self.update(|i| i.pods = pods);
    }

    /// The session told the operator the state of `generation`.
    pub(crate) fn reported(&self, generation: u64) {
        self.update(|i| i.reported = i.reported.max(generation));
    }

    /// What to tell the operator now, with its generation.
    pub(crate) fn to_report(&self) -> (u64, pb::Availability) {
        let inputs = self.inputs.lock();
        (inputs.generation, inputs.status().to_proto())
    }

    fn update(&self, change: impl FnOnce(&mut Inputs)) {
        let mut inputs = self.inputs.lock();
        let before = inputs.status();
        change(&mut inputs);
        let mut after = inputs.status();
        let moved = |a: &AvailabilityStatus, b: &AvailabilityStatus| {
            a.state != b.state
                || a.reason != b.reason
                || a.schedule != b.schedule
                || a.next_change != b.next_change
        };
        if moved(&before, &after) {
            inputs.generation += 1;
            after = inputs.status();
        }
        self.tx.send_if_modified(|s| {
            if *s == after {
                false
            } else {
                *s = after;
                true
            }
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn the_most_restrictive_input_wins_and_resume_undoes_the_owners_choice() {
        let a = Availability::new(None);
        assert_eq!(a.current().state, State::Available);
        a.pause().await;
        assert_eq!(
            (a.current().state, a.current().reason.as_str()),
            (State::Paused, "owner")
        );
        a.set_idle(Some(false));
        assert_eq!(
            (a.current().state, a.current().reason.as_str()),
            (State::Draining, "busy")
        );
        a.resume().await;
        assert_eq!(a.current().state, State::Draining, "still busy");
        a.set_idle(Some(true));
        assert_eq!(a.current().state, State::Available);
        a.set_schedule(Some("Mon 00:00-01:00 UTC".into()), Some(false), None);
        assert_eq!(a.current().reason, "schedule");
    }

    #[tokio::test]
    async fn drained_needs_no_pods_and_the_operator_told() {
        let a = Availability::new(None);
        a.set_pods(2);
        a.drain().await;
        assert!(!a.drained(Duration::from_millis(10)).await);
        a.set_pods(0);
        assert!(!a.current().drained(), "the operator was not told yet");
        let (generation, msg) = a.to_report();
        assert_eq!(msg.state, pb::availability::State::Draining as i32);
        a.reported(generation);
        assert!(a.drained(Duration::from_millis(10)).await);
    }

    #[tokio::test]
    async fn the_owners_choice_survives_a_restart() {
        let dir = tempfile::tempdir().unwrap();
        Availability::new(Some(dir.path())).pause().await;
        assert_eq!(
            Availability::new(Some(dir.path())).current().state,
            State::Paused
        );
        Availability::new(Some(dir.path())).resume().await;
        assert_eq!(
            Availability::new(Some(dir.path())).current().state,
            State::Available
        );
    }
}
