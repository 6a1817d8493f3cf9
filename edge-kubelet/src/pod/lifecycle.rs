//! The pod lifecycle as an explicit state machine.
//!
//! Each container of a pod moves through [`ContainerLifecycle`] by [`transition`], a pure
//! function of (state, event, restart policy, back-off policy) that returns the next state and
//! the one [`Action`] the pod worker must carry out. Every state knows the Kubernetes container
//! state it reports ([`ContainerLifecycle::to_proto`]), and the pod phase is derived from the
//! containers' states exactly the way the kubelet derives it ([`pod_phase`]).
//!
//! ```text
//!             ImageReady                 Started
//!  Pulling ───────────────▶ Creating ───────────────▶ Running
//!     ▲  │ ImagePullFailed     ▲  │ CreateFailed        │ Exited
//!     │  ▼                     │  ▼                     ▼
//!     │ ErrImagePull         CreateError      policy says restart? ──no──▶ Terminated
//!     │  │ Timer               (Timer: retry)          │ yes
//!     │  ▼                                             ▼
//!     └─ ImagePullBackOff ◀─ Timer          CrashLoopBackOff ──Timer──▶ Creating (restart_count+1)
//! ```

use std::time::Duration;

use decloud_proto as pb;

/// How a container ended, as reported in `ContainerStatus.state` / `last_state`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct TerminatedInfo {
    /// Process exit code.
    pub(crate) exit_code: i32,
    /// `Completed`, `Error` or `OOMKilled`.
    pub(crate) reason: String,
    /// The engine's message, if any.
    pub(crate) message: String,
    /// When the process started (Unix ms).
    pub(crate) started_unix_millis: i64,
    /// When it ended (Unix ms).
    pub(crate) finished_unix_millis: i64,
}

impl TerminatedInfo {
    /// Builds the Kubernetes reason from the exit code and the OOM flag.
    pub(crate) fn new(
        exit_code: i32,
        oom_killed: bool,
        message: String,
        started: i64,
        finished: i64,
    ) -> Self {
        let reason = if oom_killed {
            "OOMKilled"
        } else if exit_code == 0 {
            "Completed"
        } else {
            "Error"
        };
        TerminatedInfo {
            exit_code,
            reason: reason.to_string(),
            message,
            started_unix_millis: started,
            finished_unix_millis: finished,
        }
    }

    fn to_proto(&self) -> pb::ContainerState {
        pb::ContainerState {
            state: Some(pb::container_state::State::Terminated(pb::Terminated {
                exit_code: self.exit_code,
                reason: self.reason.clone(),
                message: self.message.clone(),
                started_unix_millis: self.started_unix_millis,
                finished_unix_millis: self.finished_unix_millis,
            })),
        }
    }
}

/// Where one container of a pod is in its life.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum ContainerLifecycle {
    /// Making the image available (local lookup or pull). Reports waiting `ContainerCreating`.
    Pulling,
    /// The last pull failed. Reports waiting `ErrImagePull` (or `ErrImageNeverPull`) with the
    /// engine's message, then moves on to the back-off.
    ErrImagePull {
        /// `ErrImagePull` or `ErrImageNeverPull`.
        reason: String,
        /// The engine's message.
        message: String,
        /// Failed pulls in a row.
        attempts: u32,
    },
    /// Waiting out the pull back-off. Reports waiting `ImagePullBackOff`.
    ImagePullBackOff {
        /// The engine's message from the last failed pull.
        message: String,
        /// Failed pulls in a row.
        attempts: u32,
    },
    /// Creating and starting the container. Reports waiting `ContainerCreating`.
    Creating,
    /// Create or start failed; retried after a back-off. Reports waiting `CreateContainerError`.
    CreateError {
        /// The engine's message.
        message: String,
        /// Failures in a row.
        attempts: u32,
    },
    /// Its configuration (a ConfigMap or Secret it needs) is missing or unusable. Reports
    /// waiting `CreateContainerConfigError`; retried when the configuration changes.
    ConfigError {
        /// What is missing, naming it (kubelet's wording).
        message: String,
    },
    /// The process runs. Reports running.
    Running {
        /// When it started (Unix ms).
        started_unix_millis: i64,
    },
    /// Exited and will be restarted after a back-off. Reports waiting `CrashLoopBackOff`
    /// (the exit itself is the last state).
    CrashLoopBackOff {
        /// How the last run ended.
        last: TerminatedInfo,
        /// Restarts in a row that ended badly, for the back-off.
        attempts: u32,
    },
    /// Exited for good under the restart policy. Reports terminated.
    Terminated(TerminatedInfo),
}

/// Something that happened to a container.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum ContainerEvent {
    /// The image is present.
    ImageReady,
    /// The pull failed (or the image is missing under `Never`).
    ImagePullFailed {
        /// Kubernetes reason (`ErrImagePull`, `ErrImageNeverPull`).
        reason: String,
        /// The engine's message.
        message: String,
    },
    /// The container's configuration cannot be had (kubelet's `CreateContainerConfigError`).
    ConfigFailed {
        /// What is missing.
        message: String,
    },
    /// Creating or starting failed.
    CreateFailed {
        /// The engine's message.
        message: String,
    },
    /// The container process started.
    Started {
        /// When (Unix ms).
        at_unix_millis: i64,
    },
    /// The container process ended.
    Exited(TerminatedInfo),
    /// The timer armed by [`Action::Wait`] fired.
    TimerFired,
}

/// What the pod worker must do after a transition.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Action {
    /// Nothing.
    None,
    /// Make the image available, then feed back `ImageReady` or `ImagePullFailed`.
    PullImage,
    /// Create and start a container, then feed back `Started` or `CreateFailed`.
    CreateAndStart,
    /// Like `CreateAndStart`, for a restart: the restart count goes up by one.
    Restart,
    /// Arm a timer and feed back `TimerFired` when it fires.
    Wait(Duration),
}

/// Kubernetes restart policy, as the edge applies it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum RestartPolicy {
    /// Restart whenever the container exits.
    Always,
    /// Restart only on a non-zero exit.
    OnFailure,
    /// Never restart.
    Never,
}

impl From<pb::RestartPolicy> for RestartPolicy {
    fn from(p: pb::RestartPolicy) -> Self {
        match p {
            pb::RestartPolicy::Always => RestartPolicy::Always,
            pb::RestartPolicy::OnFailure => RestartPolicy::OnFailure,
            pb::RestartPolicy::Never => RestartPolicy::Never,
        }
    }
}

impl RestartPolicy {
    fn restarts_after(self, exit_code: i32) -> bool {
        match self {
            RestartPolicy::Always => true,
            RestartPolicy::OnFailure => exit_code != 0,
            RestartPolicy::Never => false,
        }
    }
}

/// Exponential back-off for pulls, failed creates and crash loops.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BackoffPolicy {
    /// First delay; doubles on each further failure.
    pub initial: Duration,
    /// Upper bound.
    pub max: Duration,
    /// How long `ErrImagePull` is shown before `ImagePullBackOff`.
    pub pull_error_hold: Duration,
}

impl Default for BackoffPolicy {
    /// Faster than the kubelet's 10 s…5 min: a volunteer edge has few pods and a short-lived
    /// crash should not keep a replica away for minutes.
    fn default() -> Self {
        BackoffPolicy {
            initial: Duration::from_secs(1),
            max: Duration::from_secs(60),
            pull_error_hold: Duration::from_secs(2),
        }
    }
}

impl BackoffPolicy {
    /// Delay before retry number `attempts` (1-based).
    pub(crate) fn delay(&self, attempts: u32) -> Duration {
        let shift = attempts.saturating_sub(1).min(20);
        self.initial.saturating_mul(1u32 << shift).min(self.max)
    }
}

/// The pure transition function: next state and the action that goes with it.
///
/// Events that make no sense in a state (a stale timer, an exit while pulling) leave the state
/// unchanged with [`Action::None`]: the worker feeds results of operations it started earlier,
/// and those may race with a newer state.
pub(crate) fn transition(
    state: &ContainerLifecycle,
    event: &ContainerEvent,
    restart: RestartPolicy,
    backoff: &BackoffPolicy,
) -> (ContainerLifecycle, Action) {
    use ContainerEvent as E;
    use ContainerLifecycle as S;
    match (state, event) {
        (S::Pulling, E::ImageReady) => (S::Creating, Action::CreateAndStart),
        (S::Pulling, E::ImagePullFailed { reason, message }) => (
            S::ErrImagePull {
                reason: reason.clone(),
                message: message.clone(),
                attempts: 1,
            },
            Action::Wait(backoff.pull_error_hold),
        ),
        (
            S::ErrImagePull {
                message, attempts, ..
            },
            E::TimerFired,
        ) => (
            S::ImagePullBackOff {
                message: message.clone(),
                attempts: *attempts,
            },
            Action::Wait(backoff.delay(*attempts)),
        ),
        (S::ImagePullBackOff { .. }, E::TimerFired) => (S::Pulling, Action::PullImage),
        (S::Creating, E::Started { at_unix_millis }) => (
            S::Running {
                started_unix_millis: *at_unix_millis,
            },
            Action::None,
        ),
        (S::Creating, E::CreateFailed { message }) => (
            S::CreateError {
                message: message.clone(),
                attempts: 1,
            },
            Action::Wait(backoff.delay(1)),
        ),
        (S::CreateError { .. }, E::TimerFired) => (S::Creating, Action::CreateAndStart),
        (S::Creating | S::ConfigError { .. }, E::ConfigFailed { message }) => (
            S::ConfigError {
                message: message.clone(),
            },
            Action::None,
        ),
        (S::ConfigError { .. }, E::TimerFired) => (S::Creating, Action::CreateAndStart),
        (S::Running { .. }, E::Exited(t)) => {
            if restart.restarts_after(t.exit_code) {
                (
                    S::CrashLoopBackOff {
                        last: t.clone(),
                        attempts: 1,
                    },
                    Action::Wait(backoff.delay(1)),
                )
            } else {
                (S::Terminated(t.clone()), Action::None)
            }
        }
        (S::CrashLoopBackOff { .. }, E::TimerFired) => (S::Creating, Action::Restart),
        _ => (state.clone(), Action::None),
    }
}

/// Like [`transition`], but carries the failure counts across a retry so back-offs grow:
/// `Pulling` after a back-off remembers how many pulls failed, `Creating` after a crash
/// remembers how many runs crashed.
#[derive(Debug, Clone, Default)]
pub(crate) struct FailureMemory {
    pulls: u32,
    creates: u32,
    crashes: u32,
}

impl FailureMemory {
    /// Applies [`transition`] and adjusts the attempt counters of the resulting state.
    pub(crate) fn step(
        &mut self,
        state: &ContainerLifecycle,
        event: &ContainerEvent,
        restart: RestartPolicy,
        backoff: &BackoffPolicy,
    ) -> (ContainerLifecycle, Action) {
        use ContainerLifecycle as S;
        let (mut next, mut action) = transition(state, event, restart, backoff);
        match &mut next {
            S::ErrImagePull { attempts, .. } if matches!(state, S::Pulling) => {
                self.pulls += 1;
                *attempts = self.pulls;
            }
            S::CreateError { attempts, .. } if matches!(state, S::Creating) => {
                self.creates += 1;
                *attempts = self.creates;
                action = Action::Wait(backoff.delay(self.creates));
            }
            S::CrashLoopBackOff { last, attempts } if matches!(state, S::Running { .. }) => {
                // A run long enough to prove the container healthy resets the back-off.
                let ran = last.finished_unix_millis - last.started_unix_millis;
                if ran > 2 * backoff.max.as_millis() as i64 {
                    self.crashes = 0;
                }
                self.crashes += 1;
                *attempts = self.crashes;
                action = Action::Wait(backoff.delay(self.crashes));
            }
            S::Running { .. } => {
                self.pulls = 0;
                self.creates = 0;
            }
            S::Creating if matches!(state, S::Pulling) => self.pulls = 0,
            _ => {}
        }
        (next, action)
    }
}

impl ContainerLifecycle {
    /// The Kubernetes container state this lifecycle state reports.
    pub(crate) fn to_proto(&self) -> pb::ContainerState {
        use pb::container_state::State;
        let waiting = |reason: &str, message: &str| pb::ContainerState {
            state: Some(State::Waiting(pb::Waiting {
                reason: reason.to_string(),
                message: message.to_string(),
            })),
        };
        match self {
            ContainerLifecycle::Pulling | ContainerLifecycle::Creating => {
                waiting("ContainerCreating", "")
            }
            ContainerLifecycle::ErrImagePull {
                reason, message, ..
            } => waiting(reason, message),
            ContainerLifecycle::ImagePullBackOff { message, .. } => waiting(
                "ImagePullBackOff",
                &format!("Back-off pulling image: {message}"),
            ),
            ContainerLifecycle::CreateError { message, .. } => {
                waiting("CreateContainerError", message)
            }
            ContainerLifecycle::ConfigError { message } => {
                waiting("CreateContainerConfigError", message)
            }
            ContainerLifecycle::Running {
                started_unix_millis,
            } => pb::ContainerState {
                state: Some(State::Running(pb::Running {
                    started_unix_millis: *started_unix_millis,
                })),
            },
            ContainerLifecycle::CrashLoopBackOff { last, .. } => waiting(
                "CrashLoopBackOff",
                &format!(
                    "back-off restarting failed container (exit code {})",
                    last.exit_code
                ),
            ),
            ContainerLifecycle::Terminated(t) => t.to_proto(),
        }
    }

    /// The `last_state` this state implies on its own (a crash loop carries its last exit).
    pub(crate) fn implied_last_state(&self) -> Option<pb::ContainerState> {
        match self {
            ContainerLifecycle::CrashLoopBackOff { last, .. } => Some(last.to_proto()),
            _ => None,
        }
    }

    /// True while the process runs.
    pub(crate) fn is_running(&self) -> bool {
        matches!(self, ContainerLifecycle::Running { .. })
    }

    /// True before the container ever ran (image or create trouble).
    fn never_ran(&self) -> bool {
        matches!(
            self,
            ContainerLifecycle::Pulling
                | ContainerLifecycle::ErrImagePull { .. }
                | ContainerLifecycle::ImagePullBackOff { .. }
                | ContainerLifecycle::Creating
                | ContainerLifecycle::CreateError { .. }
                | ContainerLifecycle::ConfigError { .. }
        )
    }

    /// Pod-level reason for a pending pod stuck in this state, if worth reporting.
    pub(crate) fn pending_reason(&self) -> Option<(&str, &str)> {
        match self {
            ContainerLifecycle::ErrImagePull {
                reason, message, ..
            } => Some((reason, message)),
            ContainerLifecycle::ImagePullBackOff { message, .. } => {
                Some(("ImagePullBackOff", message))
            }
            ContainerLifecycle::CreateError { message, .. } => {
                Some(("CreateContainerError", message))
            }
            ContainerLifecycle::ConfigError { message } => {
                Some(("CreateContainerConfigError", message))
            }
            _ => None,
        }
    }
}

/// The pod phase, derived from its containers like the kubelet does: Pending until every
/// container has run at least once (or some container still waits for its first start), then
/// Running while any runs or will restart, then Succeeded (all exited 0) or Failed.
pub(crate) fn pod_phase<'a>(
    containers: impl IntoIterator<Item = (&'a ContainerLifecycle, u32)>,
) -> pb::PodPhase {
    let mut any = false;
    let mut all_terminated = true;
    let mut all_zero = true;
    for (c, restart_count) in containers {
        any = true;
        if c.never_ran() && restart_count == 0 {
            return pb::PodPhase::Pending;
        }
        match c {
            ContainerLifecycle::Terminated(t) => all_zero &= t.exit_code == 0,
            _ => all_terminated = false,
        }
    }
    if !any {
        pb::PodPhase::Pending
    } else if all_terminated {
        if all_zero {
            pb::PodPhase::Succeeded
        } else {
            pb::PodPhase::Failed
        }
    } else {
        pb::PodPhase::Running
    }
}

/// Whether the pod finished for good (its containers are not coming back).
pub(crate) fn is_terminal(status: &pb::PodStatus) -> bool {
    matches!(
        status.phase(),
        pb::PodPhase::Succeeded | pb::PodPhase::Failed
    )
}

#[cfg(test)]
mod tests;
