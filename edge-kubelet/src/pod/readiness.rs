//! Probe scheduling, as kubelet's prober: readiness (changes of readiness), liveness (a
//! container failing it past its threshold is to be killed and restarted) and startup (gates
//! the other two until it passes once; failing past its threshold kills too). Each loop
//! probes a running container with the probe's period and thresholds and reports only
//! outcomes to the pod worker; each failure is an `Unhealthy` Warning event.

use std::sync::Arc;
use std::time::Duration;

use tokio::sync::mpsc;

use decloud_proto as pb;

use super::status_board::StatusBoard;
use crate::runtime::{ContainerRuntime, ProbeTarget};

/// Which of kubelet's probes a loop runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum ProbeKind {
    /// `readinessProbe`.
    Readiness,
    /// `livenessProbe`.
    Liveness,
    /// `startupProbe`.
    Startup,
}

impl ProbeKind {
    /// As kubelet's events name it.
    pub(crate) fn word(self) -> &'static str {
        match self {
            ProbeKind::Readiness => "Readiness",
            ProbeKind::Liveness => "Liveness",
            ProbeKind::Startup => "Startup",
        }
    }
}

/// What a probe loop tells the worker.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum ProbeOutcome {
    /// Readiness changed.
    Ready(bool),
    /// The startup probe passed.
    Started,
    /// A liveness or startup probe failed past its threshold: kill the container.
    Failed(ProbeKind),
}

/// Result of a probe loop about container `slot` of the pod.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct ReadinessChange {
    /// Index of the container in the pod spec.
    pub(crate) slot: usize,
    /// Container id the probe ran against (stale results are ignored).
    pub(crate) container_id: String,
    /// What happened.
    pub(crate) outcome: ProbeOutcome,
}

/// Runs a liveness or startup probe until it decides: startup reports `Started` at its first
/// pass; either reports `Failed` after `failureThreshold` failures in a row (a liveness probe
/// runs until then, or until aborted).
#[allow(clippy::too_many_arguments)]
pub(crate) async fn liveness_loop(
    kind: ProbeKind,
    runtime: Arc<dyn ContainerRuntime>,
    slot: usize,
    container_id: String,
    pod_ip: String,
    probe: pb::Probe,
    changes: mpsc::UnboundedSender<ReadinessChange>,
    events: (Arc<StatusBoard>, pb::PodEvent),
) {
    let period = Duration::from_secs(u64::from(probe.period_seconds.max(1)));
    let failure_threshold = probe.failure_threshold.max(1);
    tokio::time::sleep(Duration::from_secs(u64::from(probe.initial_delay_seconds))).await;
    let mut failures = 0u32;
    let mut attempts = 0u32;
    loop {
        let target = ProbeTarget {
            container_id: &container_id,
            pod_ip: &pod_ip,
        };
        let outcome = match runtime.probe(target, &probe).await {
            Ok(()) => {
                failures = 0;
                (kind == ProbeKind::Startup).then_some(ProbeOutcome::Started)
            }
            Err(why) => {
                failures += 1;
                let (board, base) = &events;
                board.event(pb::PodEvent {
                    warning: true,
                    reason: "Unhealthy".into(),
                    message: format!("{} probe failed: {why}", kind.word()),
                    ..base.clone()
                });
                (failures >= failure_threshold).then_some(ProbeOutcome::Failed(kind))
            }
        };
        if let Some(outcome) = outcome {
            let _ = changes.send(ReadinessChange {
                slot,
                container_id,
                outcome,
            });
            return;
        }
        // A startup probe ramps up like readiness (a fast start is seen soon); liveness keeps
        // its period.
        let wait = if kind == ProbeKind::Startup {
            next_wait(false, attempts, period)
        } else {
            period
        };
        tokio::time::sleep(wait).await;
        attempts = attempts.saturating_add(1);
    }
}

/// Probes forever with the probe's period and thresholds and reports only changes.
/// Starts not ready; the caller aborts the task when the container stops.
pub(crate) async fn readiness_loop(
    runtime: Arc<dyn ContainerRuntime>,
    slot: usize,
    container_id: String,
    pod_ip: String,
    probe: pb::Probe,
    changes: mpsc::UnboundedSender<ReadinessChange>,
    events: (Arc<StatusBoard>, pb::PodEvent),
) {
    let period = Duration::from_secs(u64::from(probe.period_seconds.max(1)));
    let success_threshold = probe.success_threshold.max(1);
    let failure_threshold = probe.failure_threshold.max(1);
    tokio::time::sleep(Duration::from_secs(u64::from(probe.initial_delay_seconds))).await;
    let (mut ready, mut successes, mut failures) = (false, 0u32, 0u32);
    let mut attempts = 0u32;
    loop {
        let target = ProbeTarget {
            container_id: &container_id,
            pod_ip: &pod_ip,
        };
        match runtime.probe(target, &probe).await {
            Ok(()) => {
                successes += 1;
                failures = 0;
            }
            Err(why) => {
                failures += 1;
                successes = 0;
                // As kubelet's prober words it; the board bounds how many go out.
                let (board, base) = &events;
                board.event(pb::PodEvent {
                    warning: true,
                    reason: "Unhealthy".into(),
                    message: format!("{} probe failed: {why}", ProbeKind::Readiness.word()),
                    ..base.clone()
                });
            }
        }
        let next = if successes >= success_threshold {
            true
        } else if failures >= failure_threshold {
            false
        } else {
            ready
        };
        if next != ready {
            ready = next;
            let change = ReadinessChange {
                slot,
                container_id: container_id.clone(),
                outcome: ProbeOutcome::Ready(ready),
            };
            if changes.send(change).is_err() {
                return;
            }
        }
        tokio::time::sleep(next_wait(ready, attempts, period)).await;
        attempts = attempts.saturating_add(1);
    }
}

/// The pause before the next readiness probe. Once ready: the probe's period. Until then a
/// short, doubling interval (100 ms, 200 ms, … up to the period, at most 1 s): a server that
/// is up 150 ms after its container starts is seen ~50 ms later, not a whole period later.
/// Every replacement placed at failover waits on this first success.
fn next_wait(ready: bool, attempt: u32, period: Duration) -> Duration {
    if ready {
        return period;
    }
    Duration::from_millis(100)
        .saturating_mul(1u32 << attempt.min(10))
        .min(period)
        .min(Duration::from_secs(1))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn probes_fast_until_first_ready_then_every_period() {
        let ms = Duration::from_millis;
        let ten_s = Duration::from_secs(10);
        let waits: Vec<_> = (0..7).map(|a| next_wait(false, a, ten_s)).collect();
        assert_eq!(
            waits,
            [
                ms(100),
                ms(200),
                ms(400),
                ms(800),
                ms(1000),
                ms(1000),
                ms(1000)
            ]
        );
        assert_eq!(next_wait(true, 0, ten_s), ten_s);
        assert_eq!(next_wait(true, 9, ten_s), ten_s);
        // A period shorter than the ramp caps it.
        assert_eq!(next_wait(false, 3, ms(500)), ms(500));
        assert_eq!(next_wait(false, u32::MAX, ten_s), ms(1000));
    }
}
