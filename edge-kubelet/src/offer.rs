//! Changing the offer while the agent runs (the console's form): validated against the
//! machine and what runs on it, then applied to admission, to the ceiling cgroup, to the
//! report, and to the operator (a new session whose Hello carries it, the way the operator
//! learns any offer). Kept in the state folder (`offer.json`) so a restart keeps it.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use serde::{Deserialize, Serialize};

use decloud_proto as pb;

use crate::capacity;
use crate::console::{ConsoleActions, LendingState, OfferForm};
use crate::control::{Availability, AvailabilityStatus, State};
use crate::host::{Ceiling, CgroupLayout};
use crate::pod::{AdmissionOffer, PodSupervisor};

/// File name in the state folder.
const FILE: &str = "offer.json";
/// Most pods an offer may allow (as `--max-pods`).
const MAX_PODS: i64 = 10_000;

/// An offer as saved.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct SavedOffer {
    pub(crate) cpu_millis: i64,
    pub(crate) memory_bytes: i64,
    pub(crate) storage_bytes: i64,
    pub(crate) pods: i64,
}

impl SavedOffer {
    fn resources(self) -> pb::Resources {
        pb::Resources {
            cpu_millis: self.cpu_millis,
            memory_bytes: self.memory_bytes,
            pods: self.pods,
            storage_bytes: self.storage_bytes,
        }
    }
}

/// The offer the console saved in `state_dir`, if any.
pub(crate) fn load(state_dir: &Path) -> Option<SavedOffer> {
    let text = std::fs::read_to_string(state_dir.join(FILE)).ok()?;
    serde_json::from_str(&text).ok()
}

/// Applies a saved offer over the start-up one, within the machine's `capacity` (a saved
/// value above it, e.g. after a hardware change, is capped).
pub(crate) fn apply_saved(offered: &mut pb::Resources, capacity: &pb::Resources, s: SavedOffer) {
    let within = |v: i64, cap: i64| if cap > 0 { v.min(cap) } else { v };
    if s.cpu_millis > 0 {
        offered.cpu_millis = within(s.cpu_millis, capacity.cpu_millis);
    }
    if s.memory_bytes > 0 {
        offered.memory_bytes = within(s.memory_bytes, capacity.memory_bytes);
    }
    if s.pods > 0 {
        offered.pods = s.pods.min(MAX_PODS);
    }
}

/// Like [`apply_saved`], for storage (known only once the engine's disk is).
pub(crate) fn apply_saved_storage(
    offered: &mut pb::Resources,
    capacity: &pb::Resources,
    s: SavedOffer,
) {
    if s.storage_bytes > 0 {
        offered.storage_bytes = if capacity.storage_bytes > 0 {
            s.storage_bytes.min(capacity.storage_bytes)
        } else {
            s.storage_bytes
        };
    }
}

/// What runs now, as the offer must still hold it: requests (CPU, memory, storage) and pods.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub(crate) struct InUse {
    pub(crate) requests: [i64; 3],
    pub(crate) pods: i64,
}

/// The offer `form` asks for, checked: each field empty (keep `current`) or a quantity within
/// the machine's `capacity` and no less than what runs (`in_use`): shrinking below the
/// running apps would starve them; drain first.
pub(crate) fn validate(
    form: &OfferForm,
    current: &pb::Resources,
    capacity: &pb::Resources,
    in_use: InUse,
) -> Result<SavedOffer, String> {
    fn field(
        what: &str,
        text: &str,
        keep: i64,
        parse: fn(&str) -> crate::Result<i64>,
    ) -> Result<i64, String> {
        let t = text.trim();
        if t.is_empty() {
            return Ok(keep);
        }
        parse(t).map_err(|e| format!("{what}: {e}"))
    }
    let cpu = field(
        "CPU",
        &form.cpu,
        current.cpu_millis,
        capacity::parse_cpu_millis,
    )?;
    let memory = field(
        "memory",
        &form.memory,
        current.memory_bytes,
        capacity::parse_memory_bytes,
    )?;
    let storage = field(
        "storage",
        &form.storage,
        current.storage_bytes,
        capacity::parse_storage_bytes,
    )?;
    let pods = match form.pods.trim() {
        "" => current.pods,
        t => t
            .parse::<i64>()
            .ok()
            .filter(|p| (1..=MAX_PODS).contains(p))
            .ok_or_else(|| format!("pods: a whole number from 1 to {MAX_PODS}, not {t:?}"))?,
    };
    if cpu <= 0 || memory <= 0 {
        return Err("CPU and memory must be more than zero (to stop lending, pause)".into());
    }
    let above = |what: &str, v: i64, cap: i64, unit: &str| {
        if cap > 0 && v > cap {
            Err(format!(
                "{what} {v}{unit} is more than this machine has ({cap}{unit})"
            ))
        } else {
            Ok(())
        }
    };
    above("CPU", cpu, capacity.cpu_millis, "m")?;
    above("memory", memory >> 20, capacity.memory_bytes >> 20, " MiB")?;
    above(
        "storage",
        storage >> 20,
        capacity.storage_bytes >> 20,
        " MiB",
    )?;
    let below = |what: &str, v: i64, used: i64, unit: &str| {
        if v < used {
            Err(format!(
                "{what} {v}{unit} is less than the running apps use ({used}{unit}); drain first or choose more"
            ))
        } else {
            Ok(())
        }
    };
    below("CPU", cpu, in_use.requests[0], "m")?;
    below("memory", memory >> 20, in_use.requests[1] >> 20, " MiB")?;
    if storage > 0 {
        below("storage", storage >> 20, in_use.requests[2] >> 20, " MiB")?;
    }
    below("pods", pods, in_use.pods, "")?;
    Ok(SavedOffer {
        cpu_millis: cpu,
        memory_bytes: memory,
        storage_bytes: storage,
        pods,
    })
}

/// The agent's side of the console.
pub(crate) struct AgentActions {
    pub(crate) state_dir: PathBuf,
    pub(crate) node: String,
    pub(crate) capacity: pb::Resources,
    pub(crate) offer: tokio::sync::watch::Sender<pb::Resources>,
    pub(crate) pods: Arc<PodSupervisor>,
    /// The ceiling cgroup's layout (None: no ceiling, e.g. the simulated runtime).
    pub(crate) ceiling: Option<CgroupLayout>,
    /// Serialises offer changes.
    pub(crate) changing: tokio::sync::Mutex<()>,
    /// Pause, drain and resume: the handle the control socket and SIGTERM act on too.
    pub(crate) availability: Availability,
}

#[async_trait::async_trait]
impl ConsoleActions for AgentActions {
    async fn pause(&self) -> Result<String, String> {
        self.availability.pause().await;
        Ok("paused: no new work comes here; running pods stay until you resume".into())
    }

    async fn resume(&self) -> Result<String, String> {
        self.availability.resume().await;
        let now = self.availability.current();
        Ok(match now.state {
            State::Available => "resumed: this machine takes work again".into(),
            _ => format!(
                "resumed, but the {} rule still keeps this machine {}",
                now.reason,
                state_word(&now)
            ),
        })
    }

    async fn drain(&self) -> Result<String, String> {
        self.availability.drain().await;
        Ok("draining: each pod moves elsewhere (its replacement Ready first), then no work comes here until you resume".into())
    }

    fn availability(&self) -> LendingState {
        let now = self.availability.current();
        let mut state = state_word(&now).to_string();
        if !now.reason.is_empty() {
            state = format!("{state} ({})", now.reason);
        }
        LendingState {
            state,
            schedule: now.schedule.map(|s| match now.next_change {
                Some(next) => format!("{s}; next change {next}"),
                None => s,
            }),
        }
    }

    async fn set_offer(&self, form: OfferForm) -> Result<String, String> {
        let _one = self.changing.lock().await;
        let current = *self.offer.borrow();
        let apps = self.pods.apps();
        let in_use = InUse {
            requests: apps.iter().fold([0i64; 3], |a, p| {
                [
                    a[0].saturating_add(p.requests[0]),
                    a[1].saturating_add(p.requests[1]),
                    a[2].saturating_add(p.requests[2]),
                ]
            }),
            pods: i64::try_from(apps.len()).unwrap_or(i64::MAX),
        };
        let new = validate(&form, &current, &self.capacity, in_use)?;
        if new.resources() == current {
            return Ok("the offer is unchanged".into());
        }
        if let Some(layout) = self.ceiling {
            let ceiling = Ceiling::new(
                layout,
                &self.node,
                new.cpu_millis,
                new.memory_bytes,
                new.pods,
            );
            let install = tokio::task::spawn_blocking(move || ceiling.install())
                .await
                .map_err(|e| e.to_string())?;
            install.map_err(|e| format!("cannot set the ceiling cgroup to the new offer: {e}"))?;
        }
        self.pods.set_admission_offer(AdmissionOffer {
            cpu_millis: new.cpu_millis,
            memory_bytes: new.memory_bytes,
            storage_bytes: new.storage_bytes,
            max_pods: usize::try_from(new.pods).unwrap_or(usize::MAX),
        });
        let saved = serde_json::to_vec_pretty(&new).map_err(|e| e.to_string())?;
        let path = self.state_dir.join(FILE);
        std::fs::write(&path, saved)
            .map_err(|e| format!("applied, but cannot save {}: {e}", path.display()))?;
        // The session reconnects and presents it in its Hello.
        self.offer.send_replace(new.resources());
        tracing::info!(
            cpu_millis = new.cpu_millis,
            memory_bytes = new.memory_bytes,
            storage_bytes = new.storage_bytes,
            pods = new.pods,
            "offer changed from the console"
        );
        Ok(format!(
            "offer now: CPU {}m, memory {} MiB, storage {} MiB, {} pods (sent to the operator)",
            new.cpu_millis,
            new.memory_bytes >> 20,
            new.storage_bytes >> 20,
            new.pods
        ))
    }
}

/// The word the console shows for `status`.
fn state_word(status: &AvailabilityStatus) -> &'static str {
    match status.state {
        State::Available => "available",
        State::Paused => "paused",
        State::Draining if status.drained() => "drained",
        State::Draining => "draining",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn form(cpu: &str, memory: &str, storage: &str, pods: &str) -> OfferForm {
        OfferForm {
            cpu: cpu.into(),
            memory: memory.into(),
            storage: storage.into(),
            pods: pods.into(),
        }
    }

    #[test]
    fn offers_are_checked_against_the_machine_and_what_runs() {
        let cap = pb::Resources {
            cpu_millis: 4000,
            memory_bytes: 8 << 30,
            pods: 0,
            storage_bytes: 100 << 30,
        };
        let cur = pb::Resources {
            cpu_millis: 2000,
            memory_bytes: 4 << 30,
            pods: 10,
            storage_bytes: 10 << 30,
        };
        let used = InUse {
            requests: [500, 1 << 30, 0],
            pods: 2,
        };
        let ok = validate(&form("1500m", "", " 20Gi", "5"), &cur, &cap, used).unwrap();
        assert_eq!(
            ok,
            SavedOffer {
                cpu_millis: 1500,
                memory_bytes: 4 << 30,
                storage_bytes: 20 << 30,
                pods: 5
            }
        );
        for (bad, why) in [
            (form("lots", "", "", ""), "CPU"),
            (form("5", "", "", ""), "more than this machine"),
            (form("", "9Gi", "", ""), "more than this machine"),
            (form("400m", "", "", ""), "less than the running apps"),
            (form("", "512Mi", "", ""), "less than the running apps"),
            (form("", "", "", "1"), "less than the running apps"),
            (form("", "", "", "0"), "whole number"),
            (form("", "", "", "x"), "whole number"),
            (form("0", "", "", ""), "more than zero"),
        ] {
            let e = validate(&bad, &cur, &cap, used).unwrap_err();
            assert!(e.contains(why), "{bad:?}: {e}");
        }
        let mut offered = cur;
        apply_saved(
            &mut offered,
            &cap,
            SavedOffer {
                cpu_millis: 9000,
                memory_bytes: 1 << 30,
                storage_bytes: 0,
                pods: 3,
            },
        );
        assert_eq!(
            (offered.cpu_millis, offered.memory_bytes, offered.pods),
            (4000, 1 << 30, 3)
        );
    }
}
