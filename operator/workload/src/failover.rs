//! When a replica's provider counts as lost: provider health and the failover grace.

use std::{collections::HashMap, sync::Mutex, time::Duration};

use decloud_crds::{Provider, ProviderPhase, find_condition};
use k8s_openapi::jiff::Timestamp;

use crate::placement::Readiness;

/// A provider's health as far as its replicas are concerned.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) enum Health {
    /// Connected and heartbeating.
    Ready,
    /// Not (or no longer) connected; `since` is the Ready condition's `lastTransitionTime`.
    NotReady {
        /// When the provider last changed readiness, if it says.
        since: Option<Timestamp>,
        /// The `lastTransitionTime` text, used to tell one outage from the next.
        transition: Option<String>,
    },
    /// Revoked or deleted: it will not come back, so its replicas are lost at once.
    Gone,
}

impl Health {
    /// Health of `provider`; `None` means the Provider object does not exist.
    pub(crate) fn of(provider: Option<&Provider>) -> Self {
        let Some(provider) = provider else {
            return Self::Gone;
        };
        let Some(status) = provider.status.as_ref() else {
            return Self::NotReady {
                since: None,
                transition: None,
            };
        };
        let ready = find_condition(&status.conditions, "Ready");
        match status.phase {
            ProviderPhase::Revoked => Self::Gone,
            ProviderPhase::Ready if ready.is_none_or(|c| c.is_true()) => Self::Ready,
            _ => {
                let transition = ready.and_then(|c| c.last_transition_time.clone());
                Self::NotReady {
                    since: transition.as_deref().and_then(|t| t.parse().ok()),
                    transition,
                }
            }
        }
    }

    /// Whether new replicas may go to a provider with this health.
    pub(crate) fn readiness(&self, cordoned: bool) -> Readiness {
        match self {
            Self::Ready if cordoned => Readiness::Cordoned,
            Self::Ready => Readiness::Ready,
            Self::NotReady { .. } | Self::Gone => Readiness::NotReady,
        }
    }
}

/// What to do about a replica, given its provider's health.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Verdict {
    /// The provider is fine.
    Keep,
    /// The provider is unreachable, but still within the grace: look again after `remaining`.
    Wait {
        /// Time left before the replica is replaced.
        remaining: Duration,
    },
    /// Replace the replica elsewhere and finish the lost pod.
    Replace {
        /// How long the provider has been unreachable (zero when it is gone).
        down_for: Duration,
    },
}

/// Decides a replica's fate. The outage is measured from the later of the provider's own
/// transition time and the moment this controller first saw it NotReady, so neither a skewed
/// clock on the writer's side nor a restart of this controller can shorten the grace.
pub(crate) fn verdict(
    health: &Health,
    first_seen: Timestamp,
    now: Timestamp,
    grace: Duration,
) -> Verdict {
    match health {
        Health::Ready => Verdict::Keep,
        Health::Gone => Verdict::Replace {
            down_for: Duration::ZERO,
        },
        Health::NotReady { since, .. } => {
            let since = since.map_or(first_seen, |s| s.max(first_seen));
            let down_for = Duration::try_from(now.duration_since(since)).unwrap_or_default();
            if down_for >= grace {
                Verdict::Replace { down_for }
            } else {
                Verdict::Wait {
                    remaining: grace - down_for,
                }
            }
        }
    }
}

/// Remembers when this controller first saw each provider NotReady, per outage.
///
/// Shared by every reconcile; may be called from many tasks at once.
#[derive(Debug, Default)]
pub(crate) struct OutageClock {
    first_seen: Mutex<HashMap<String, (Option<String>, Timestamp)>>,
}

impl OutageClock {
    /// Records `health` for `provider` and returns when the current outage was first seen
    /// (`now` for a Ready provider, which also forgets any earlier outage).
    pub(crate) fn observe(&self, provider: &str, health: &Health, now: Timestamp) -> Timestamp {
        let mut seen = self
            .first_seen
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        match health {
            Health::Ready | Health::Gone => {
                seen.remove(provider);
                now
            }
            Health::NotReady { transition, .. } => {
                let entry = seen
                    .entry(provider.to_string())
                    .or_insert_with(|| (transition.clone(), now));
                if entry.0 != *transition {
                    *entry = (transition.clone(), now);
                }
                entry.1
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use decloud_crds::{Condition, ProviderSpec, ProviderStatus};

    fn ts(s: &str) -> Timestamp {
        s.parse().expect("timestamp")
    }

    fn provider(phase: ProviderPhase, ready: Option<(&str, &str)>) -> Provider {
        let mut p = Provider::new("p", ProviderSpec::default());
        p.status = Some(ProviderStatus {
            phase,
            conditions: ready
                .map(|(status, time)| Condition {
                    type_: "Ready".into(),
                    status: status.into(),
                    last_transition_time: Some(time.into()),
                    ..Default::default()
                })
                .into_iter()
                .collect(),
            ..Default::default()
        });
        p
    }

    #[test]
    fn health_from_provider() {
        let t = "2030-01-01T00:00:00Z";
        assert_eq!(Health::of(None), Health::Gone);
        assert_eq!(
            Health::of(Some(&provider(ProviderPhase::Ready, None))),
            Health::Ready
        );
        assert_eq!(
            Health::of(Some(&provider(ProviderPhase::Ready, Some(("True", t))))),
            Health::Ready
        );
        assert_eq!(
            Health::of(Some(&provider(ProviderPhase::Revoked, None))),
            Health::Gone
        );
        let not_ready = Health::NotReady {
            since: Some(ts(t)),
            transition: Some(t.into()),
        };
        assert_eq!(
            Health::of(Some(&provider(ProviderPhase::NotReady, Some(("False", t))))),
            not_ready
        );
        // A Ready phase with a False condition is not trusted.
        assert_eq!(
            Health::of(Some(&provider(ProviderPhase::Ready, Some(("False", t))))),
            not_ready
        );
        assert_eq!(
            Health::of(Some(&provider(ProviderPhase::Pending, None))),
            Health::NotReady {
                since: None,
                transition: None
            }
        );
        assert_eq!(Health::Ready.readiness(true), Readiness::Cordoned);
        assert_eq!(Health::Ready.readiness(false), Readiness::Ready);
        assert_eq!(Health::Gone.readiness(false), Readiness::NotReady);
    }

    #[test]
    fn verdict_table() {
        let grace = Duration::from_secs(5);
        let down = |since: Option<&str>| Health::NotReady {
            since: since.map(ts),
            transition: since.map(str::to_string),
        };
        let secs = Duration::from_secs;
        let cases = [
            (Health::Ready, "00:00:00", "00:00:30", Verdict::Keep),
            (
                Health::Gone,
                "00:00:00",
                "00:00:00",
                Verdict::Replace {
                    down_for: Duration::ZERO,
                },
            ),
            // Within grace, measured from the transition.
            (
                down(Some("2030-01-01T00:00:00Z")),
                "00:00:00",
                "00:00:03",
                Verdict::Wait { remaining: secs(2) },
            ),
            // Grace over.
            (
                down(Some("2030-01-01T00:00:00Z")),
                "00:00:00",
                "00:00:05",
                Verdict::Replace { down_for: secs(5) },
            ),
            // First seen later than the transition (e.g. after a restart): measured from then.
            (
                down(Some("2030-01-01T00:00:00Z")),
                "00:00:04",
                "00:00:06",
                Verdict::Wait { remaining: secs(3) },
            ),
            // Transition later than first seen (writer's clock ahead): measured from it.
            (
                down(Some("2030-01-01T00:00:10Z")),
                "00:00:00",
                "00:00:12",
                Verdict::Wait { remaining: secs(3) },
            ),
            // No transition time: from first seen.
            (
                down(None),
                "00:00:01",
                "00:00:07",
                Verdict::Replace { down_for: secs(6) },
            ),
        ];
        for (health, first_seen, now, want) in cases {
            let at = |t: &str| ts(&format!("2030-01-01T{t}Z"));
            assert_eq!(
                verdict(&health, at(first_seen), at(now), grace),
                want,
                "{health:?} first seen {first_seen} now {now}"
            );
        }
    }

    #[test]
    fn outage_clock_tracks_each_outage() {
        let clock = OutageClock::default();
        let t0 = ts("2030-01-01T00:00:00Z");
        let t1 = ts("2030-01-01T00:00:01Z");
        let t9 = ts("2030-01-01T00:00:09Z");
        let outage = |t: &str| Health::NotReady {
            since: Some(ts(t)),
            transition: Some(t.into()),
        };
        assert_eq!(clock.observe("p", &outage("2030-01-01T00:00:00Z"), t0), t0);
        assert_eq!(clock.observe("p", &outage("2030-01-01T00:00:00Z"), t1), t0);
        // A new outage (new transition time) starts a new clock.
        assert_eq!(clock.observe("p", &outage("2030-01-01T00:00:08Z"), t9), t9);
        assert_eq!(clock.observe("p", &Health::Ready, t9), t9);
        assert_eq!(clock.observe("p", &outage("2030-01-01T00:00:08Z"), t9), t9);
    }
}
