//! Stateful replicas: a Workload with `volumeClaimTemplates` runs the replica identities
//! `<name>-0 … <name>-(N-1)`, each bound to the provider holding its volumes, like a
//! StatefulSet whose volumes live on one volunteer's disk.
//!
//! Pure, like [`crate::rollout`]: the controller feeds it a snapshot and carries out the plan.
//! The rules, replica by replica:
//! - A replica with no binding yet is placed like any replica (selectors, spread, capacity,
//!   and the provider's storage offer for its volumes), and is bound there from then on.
//! - A bound replica whose pod is gone (a rollout step, a finished pod, a scale-up back over
//!   an old ordinal) is created again on the same provider, never elsewhere.
//! - A template change replaces one replica at a time: first a replica that does not serve,
//!   then the highest ordinal, and only while every other replica serves.
//! - A replica whose provider is unreachable waits for it (`onProviderLoss: Wait`, the
//!   default), whatever the failover grace, and its status says so; with `Recreate` it starts
//!   again elsewhere, with empty volumes, once the grace is over.
//! - A replica on a provider its owner drains stops there (the machine is the owner's) and
//!   waits for the provider to resume (`Wait`), or starts elsewhere, empty (`Recreate`).
//! - Replicas past `spec.replicas` are removed, and their bindings dropped: the edges then
//!   delete their volumes (the retention policy is Delete).

use std::collections::{BTreeMap, BTreeSet};

use decloud_crds::{
    LabelSelector, Spread,
    persistence::{OnProviderLoss, PersistentReplica, replica_ordinal, replica_pod_name},
};

use crate::{
    failover::Verdict,
    placement::{Candidate, PlacementRequest, Readiness, Resources, place_replicas},
    rollout::{
        self, BUSY_REQUEUE, DeleteReason, Deletion, IDLE_REQUEUE, Observed, Plan, SHORT_REQUEUE,
    },
};

/// A replica serving from its provider.
pub(crate) const RUNNING: &str = "Running";
/// A replica being created (or created again) on its provider, or not Ready yet.
pub(crate) const STARTING: &str = "Starting";
/// A replica whose provider, holding its data, cannot run it now.
pub(crate) const WAITING_FOR_PROVIDER: &str = "WaitingForProvider";
/// A replica being started elsewhere with empty volumes (`onProviderLoss: Recreate`).
pub(crate) const MOVING: &str = "Moving";

/// Input of [`plan`].
#[derive(Clone, Debug)]
pub(crate) struct StatefulInput<'a> {
    /// The Workload's name (replica `N` is the pod `<name>-N`).
    pub workload: &'a str,
    /// `spec.replicas`.
    pub desired: usize,
    /// Hash of the current template.
    pub hash: &'a str,
    /// This Workload's pods.
    pub observed: &'a [Observed],
    /// The provider holding each ordinal's volumes, as last recorded.
    pub bindings: &'a BTreeMap<u32, String>,
    /// What each provider's health means for a replica bound to it (by provider name; absent:
    /// the provider is gone).
    pub verdicts: &'a BTreeMap<String, Verdict>,
    /// Providers whose owners are draining them (taking the machine back).
    pub draining: &'a BTreeSet<String>,
    /// All providers; `used` holds every pod's requests and the other Workloads' volumes.
    pub candidates: &'a [Candidate],
    /// CPU, memory and pod count of one replica.
    pub per_replica: Resources,
    /// Bytes of one replica's volumes (the sum of its claim templates).
    pub volume_bytes: i64,
    /// Spread mode.
    pub spread: Spread,
    /// Provider selector.
    pub selector: Option<&'a LabelSelector>,
    /// The template's `nodeSelector`.
    pub node_selector: &'a BTreeMap<String, String>,
    /// `spec.persistence.onProviderLoss`.
    pub on_loss: OnProviderLoss,
    /// Failover grace in seconds, for messages.
    pub grace_seconds: i64,
}

/// What one stateful step does.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub(crate) struct StatefulPlan {
    /// Deletions, the providers to create on, shortage, placed count and when to look again.
    pub plan: Plan,
    /// The ordinal of each creation in `plan.create`, in the same order.
    pub ordinals: Vec<u32>,
    /// Every replica's binding and state after the step, by ordinal: `status.persistentReplicas`.
    pub replicas: Vec<PersistentReplica>,
    /// One line per replica that cannot run where its data is, for the `Degraded` condition.
    pub waiting: Vec<String>,
}

/// Where one replica stands before placement.
enum Slot<'a> {
    /// It has a live pod (or one being replaced) on `provider`.
    Pod(&'a Observed),
    /// No pod: create it on `provider`, which holds its volumes.
    Recreate(String),
    /// No pod, no usable binding: place it.
    Place,
    /// No pod; its provider cannot take it now (message).
    Wait(String, String),
}

/// Decides one step of a stateful Workload.
pub(crate) fn plan(input: &StatefulInput<'_>) -> StatefulPlan {
    let mut out = StatefulPlan::default();
    let mut wait = SHORT_REQUEUE;
    let mut settling = false;
    let mut by_ordinal: BTreeMap<u32, &Observed> = BTreeMap::new();
    for o in input.observed {
        match replica_ordinal(input.workload, &o.pod) {
            Some(n) if (n as usize) < input.desired => {
                by_ordinal.insert(n, o);
            }
            // Past spec.replicas, or not a replica identity (a pod from before the Workload
            // had claims): removed; its binding is dropped.
            _ if o.terminating && matches!(o.verdict, Verdict::Replace { .. }) => {
                out.plan.delete.push(deletion(o, DeleteReason::Abandoned))
            }
            _ if o.terminating => settling = true,
            _ => out.plan.delete.push(deletion(o, DeleteReason::Surplus)),
        }
    }
    let loss = match input.on_loss {
        OnProviderLoss::Wait => "onProviderLoss: Wait",
        OnProviderLoss::Recreate => "onProviderLoss: Recreate",
    };

    let mut slots: Vec<(u32, Slot<'_>)> = Vec::new();
    for n in 0..u32::try_from(input.desired).unwrap_or(u32::MAX) {
        let slot = match (by_ordinal.get(&n), input.bindings.get(&n)) {
            (Some(o), _) => Slot::Pod(o),
            (None, Some(p)) => {
                let verdict = input.verdicts.get(p).copied().unwrap_or(Verdict::Replace {
                    down_for: std::time::Duration::ZERO,
                });
                let candidate = input.candidates.iter().find(|c| &c.name == p);
                match verdict {
                    Verdict::Keep if input.draining.contains(p) => {
                        if input.on_loss == OnProviderLoss::Recreate {
                            Slot::Place
                        } else {
                            Slot::Wait(p.clone(), drained_message(p))
                        }
                    }
                    Verdict::Keep => {
                        let room = candidate.is_some_and(|c| {
                            c.readiness != Readiness::NotReady
                                && c.allocatable.fits(c.used, input.per_replica)
                        });
                        if room {
                            Slot::Recreate(p.clone())
                        } else {
                            Slot::Wait(
                                p.clone(),
                                format!(
                                    "provider {p}, which holds the replica's volumes, lacks free \
                                     capacity for {} now; the replica waits for it",
                                    input.per_replica.describe()
                                ),
                            )
                        }
                    }
                    Verdict::Replace { .. } if input.on_loss == OnProviderLoss::Recreate => {
                        Slot::Place
                    }
                    v => {
                        if let Verdict::Wait { remaining } = v {
                            wait = wait.min(remaining);
                        }
                        Slot::Wait(p.clone(), lost_message(p, v, input, loss))
                    }
                }
            }
            (None, None) => Slot::Place,
        };
        slots.push((n, slot));
    }

    // The replicas kept where they are count for spread and storage; a replica placed again
    // gives its old place up.
    let mut kept: BTreeMap<&str, usize> = BTreeMap::new();
    for (_, slot) in &slots {
        let provider = match slot {
            Slot::Pod(o) => Some(o.provider.as_str()),
            Slot::Recreate(p) | Slot::Wait(p, _) => Some(p.as_str()),
            Slot::Place => None,
        };
        if let Some(p) = provider {
            *kept.entry(p).or_default() += 1;
        }
    }
    let candidates: Vec<Candidate> = input
        .candidates
        .iter()
        .map(|c| {
            let replicas = kept.get(c.name.as_str()).copied().unwrap_or(0);
            let volumes = input.volume_bytes.saturating_mul(replicas as i64);
            Candidate {
                replicas,
                used: c.used.plus(Resources::storage(volumes)),
                ..c.clone()
            }
        })
        .collect();
    let fresh: Vec<u32> = slots
        .iter()
        .filter(|(_, s)| matches!(s, Slot::Place))
        .map(|(n, _)| *n)
        .collect();
    let placement = place_replicas(
        &candidates,
        &PlacementRequest {
            count: fresh.len(),
            per_replica: input
                .per_replica
                .plus(Resources::storage(input.volume_bytes)),
            spread: input.spread,
            selector: input.selector,
            node_selector: input.node_selector,
        },
    );
    let mut chosen: BTreeMap<u32, String> = fresh.iter().copied().zip(placement.chosen).collect();

    // Each replica's binding and state; pods to delete; creations.
    let mut serving = 0;
    let mut old: Vec<(u32, &Observed)> = Vec::new();
    let mut live = 0;
    for (n, slot) in &slots {
        let name = replica_pod_name(input.workload, *n);
        let replica = |provider: &str, state: &str, message: String| PersistentReplica {
            name: name.clone(),
            provider: provider.to_string(),
            state: state.to_string(),
            message,
        };
        let r = match slot {
            Slot::Pod(o) if o.terminating => {
                if matches!(o.verdict, Verdict::Replace { .. }) {
                    out.plan.delete.push(deletion(o, DeleteReason::Abandoned));
                } else {
                    settling = true;
                }
                replica(
                    &o.provider,
                    STARTING,
                    format!(
                        "pod {} is stopping; it starts again on {}",
                        o.pod, o.provider
                    ),
                )
            }
            Slot::Pod(o) => match o.verdict {
                Verdict::Keep if matches!(o.phase.as_str(), "Succeeded" | "Failed") => {
                    out.plan.delete.push(deletion(o, DeleteReason::Finished));
                    replica(&o.provider, STARTING, format!("pod {} has finished", o.pod))
                }
                Verdict::Keep if o.draining => {
                    out.plan
                        .delete
                        .push(deletion(o, DeleteReason::Drained { replaced: false }));
                    if input.on_loss == OnProviderLoss::Recreate {
                        replica(
                            &o.provider,
                            MOVING,
                            format!(
                                "provider {} is drained by its owner; the replica starts \
                                 elsewhere with empty volumes ({loss})",
                                o.provider
                            ),
                        )
                    } else {
                        let message = drained_message(&o.provider);
                        out.waiting.push(format!("{name}: {message}"));
                        replica(&o.provider, WAITING_FOR_PROVIDER, message)
                    }
                }
                Verdict::Keep => {
                    live += 1;
                    if o.hash != input.hash {
                        old.push((*n, o));
                    }
                    if o.serving() {
                        serving += 1;
                        replica(&o.provider, RUNNING, String::new())
                    } else {
                        // A new replica settles before the next is replaced; an old one that
                        // does not serve is replaced first.
                        settling |= o.hash == input.hash;
                        replica(&o.provider, STARTING, String::new())
                    }
                }
                Verdict::Replace { down_for } if input.on_loss == OnProviderLoss::Recreate => {
                    out.plan
                        .delete
                        .push(deletion(o, DeleteReason::Failover { down_for }));
                    replica(
                        &o.provider,
                        MOVING,
                        format!(
                            "provider {} is lost; the replica starts elsewhere with empty \
                             volumes ({loss})",
                            o.provider
                        ),
                    )
                }
                v => {
                    if let Verdict::Wait { remaining } = v {
                        wait = wait.min(remaining);
                    }
                    live += 1;
                    let message = lost_message(&o.provider, v, input, loss);
                    out.waiting.push(format!("{name}: {message}"));
                    replica(&o.provider, WAITING_FOR_PROVIDER, message)
                }
            },
            Slot::Recreate(p) => {
                out.plan.create.push(p.clone());
                out.ordinals.push(*n);
                replica(
                    p,
                    STARTING,
                    format!("creating pod {name} on {p}, which holds its volumes"),
                )
            }
            Slot::Wait(p, message) => {
                out.waiting.push(format!("{name}: {message}"));
                replica(p, WAITING_FOR_PROVIDER, message.clone())
            }
            Slot::Place => match chosen.remove(n) {
                Some(p) => {
                    out.plan.create.push(p.clone());
                    out.ordinals.push(*n);
                    let moved = input.bindings.get(n).is_some_and(|was| *was != p);
                    let message = match input.bindings.get(n) {
                        Some(was) if moved => format!(
                            "provider {was} is lost; starting on {p} with empty volumes ({loss})"
                        ),
                        _ => format!("creating pod {name} on {p}"),
                    };
                    replica(&p, if moved { MOVING } else { STARTING }, message)
                }
                // Not placed: a replica moving off a lost provider keeps its old binding
                // (and says why it is stuck); a new one has none yet.
                None => match input.bindings.get(n) {
                    Some(was) => {
                        let message = format!(
                            "provider {was} is lost and no other provider can take the replica \
                             now ({loss})"
                        );
                        out.waiting.push(format!("{name}: {message}"));
                        replica(was, MOVING, message)
                    }
                    None => continue,
                },
            },
        };
        out.replicas.push(r);
    }

    // A template change: one replica at a time, only while all the others serve.
    let busy = settling || !out.plan.delete.is_empty() || !out.plan.create.is_empty();
    if !busy && !old.is_empty() {
        old.sort_by_key(|(n, o)| (o.serving(), std::cmp::Reverse(*n)));
        let (n, o) = old[0];
        let others_serve = serving - usize::from(o.serving()) == input.desired - 1;
        if !o.serving() || others_serve {
            out.plan.delete.push(deletion(o, DeleteReason::Replaced));
            if let Some(r) = out.replicas.iter_mut().find(|r| r.name == o.pod) {
                r.state = STARTING.into();
                r.message = format!(
                    "replica {n} is replaced by the new template on {}, which holds its volumes",
                    o.provider
                );
            }
            live -= 1;
        }
    }

    out.plan.placed = live + out.plan.create.len();
    out.plan.shortage = placement.shortage;
    let settled = out.plan.delete.is_empty()
        && out.plan.create.is_empty()
        && !settling
        && old.is_empty()
        && out.waiting.is_empty()
        && out.plan.shortage.is_none();
    out.plan.requeue = if !out.waiting.is_empty() {
        wait.clamp(std::time::Duration::from_millis(100), SHORT_REQUEUE)
    } else if out.plan.shortage.is_some()
        && out.plan.delete.is_empty()
        && out.plan.create.is_empty()
    {
        SHORT_REQUEUE
    } else if settled {
        IDLE_REQUEUE
    } else {
        BUSY_REQUEUE
    };
    out
}

/// Why a replica on a provider its owner drains does not run.
fn drained_message(provider: &str) -> String {
    format!(
        "provider {provider}, which holds the replica's volumes, is drained by its owner; the \
         replica waits for it to resume (onProviderLoss: Wait; Recreate would start it elsewhere \
         with empty volumes)"
    )
}

/// Why a replica whose provider is not Ready does not move.
fn lost_message(provider: &str, verdict: Verdict, input: &StatefulInput<'_>, loss: &str) -> String {
    let elsewhere = match input.on_loss {
        OnProviderLoss::Wait => {
            "it waits for it (onProviderLoss: Wait; Recreate would start it elsewhere with \
             empty volumes)"
                .to_string()
        }
        OnProviderLoss::Recreate => format!(
            "it starts elsewhere with empty volumes unless the provider is back within the \
             {}s grace ({loss})",
            input.grace_seconds
        ),
    };
    match verdict {
        Verdict::Replace { down_for } if down_for.is_zero() => format!(
            "provider {provider}, which holds the replica's volumes, is gone (deleted or \
             revoked); {elsewhere}"
        ),
        // No running count in the text: the status (and its event) change only when the
        // situation does.
        Verdict::Replace { .. } => format!(
            "provider {provider}, which holds the replica's volumes, has been NotReady for more \
             than the {}s grace; {elsewhere}",
            input.grace_seconds
        ),
        _ => format!(
            "provider {provider}, which holds the replica's volumes, is NotReady; {elsewhere}"
        ),
    }
}

/// A deletion of `o`: forced when its provider cannot confirm a graceful stop, or when it was
/// already stopping there.
fn deletion(o: &Observed, reason: DeleteReason) -> Deletion {
    rollout::deletion(o, reason == DeleteReason::Abandoned, reason)
}

#[cfg(test)]
mod tests;
