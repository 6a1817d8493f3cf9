//! One reconcile step's decisions: which pods to delete, where to create, when to look again.
//!
//! Pure: the controller feeds it a snapshot and carries out the result.

use std::{collections::BTreeMap, time::Duration};

use decloud_crds::{LabelSelector, Spread};

use crate::{
    failover::Verdict,
    placement::{Candidate, PlacementRequest, Resources, Shortage, place_replicas},
};

/// Look again this soon while anything is in flight.
pub(crate) const BUSY_REQUEUE: Duration = Duration::from_secs(1);
/// Look again this soon while short of capacity (Provider changes also trigger a look).
pub(crate) const SHORT_REQUEUE: Duration = Duration::from_secs(10);
/// Look again this soon when all is settled (a safety net; watches do the real work).
pub(crate) const IDLE_REQUEUE: Duration = Duration::from_secs(300);
/// Never look again sooner than this.
const MIN_REQUEUE: Duration = Duration::from_millis(100);

/// One existing replica pod with its provider's verdict.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct Observed {
    /// Pod name.
    pub pod: String,
    /// Provider name.
    pub provider: String,
    /// Template hash the pod was made from.
    pub hash: String,
    /// Pod phase.
    pub phase: String,
    /// The pod's Ready condition.
    pub ready: bool,
    /// Deletion has begun.
    pub terminating: bool,
    /// What its provider's health means for it.
    pub verdict: Verdict,
    /// Its provider's owner is draining it: the replica moves, make-before-break.
    pub draining: bool,
}

impl Observed {
    fn finished(&self) -> bool {
        matches!(self.phase.as_str(), "Succeeded" | "Failed")
    }

    /// Ready and on a provider that is not in doubt.
    pub(crate) fn serving(&self) -> bool {
        self.ready && self.verdict == Verdict::Keep
    }
}

/// Why a pod is deleted.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) enum DeleteReason {
    /// Its provider has been lost past the grace.
    Failover {
        /// How long the provider has been unreachable.
        down_for: Duration,
    },
    /// Already being deleted, but its provider is lost and will never confirm.
    Abandoned,
    /// It ran to completion or failed; a fresh replica replaces it.
    Finished,
    /// More replicas than desired.
    Surplus,
    /// Superseded by a replica of the new template.
    Replaced,
    /// Too little capacity to surge: an old replica gives up its place to a new one.
    MakeRoom,
    /// Its provider is being drained by its owner and the replica's replacement elsewhere is
    /// serving (or no other provider can take it: then it waits for one, unplaced).
    Drained {
        /// Whether a replacement serves (false: the replica waits for a provider).
        replaced: bool,
    },
}

/// One pod to delete.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct Deletion {
    /// Pod name.
    pub pod: String,
    /// Provider name.
    pub provider: String,
    /// Delete with grace 0 (the provider cannot confirm a graceful stop).
    pub force: bool,
    /// Why.
    pub reason: DeleteReason,
}

/// What one reconcile step does.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub(crate) struct Plan {
    /// Pods to delete.
    pub delete: Vec<Deletion>,
    /// Providers to create one new replica on each.
    pub create: Vec<String>,
    /// Replicas missing for lack of capacity, with the reasons.
    pub shortage: Option<Shortage>,
    /// Replicas that will exist after this step (not being deleted).
    pub placed: usize,
    /// Pods waiting out their provider's failover grace.
    pub unreachable: Vec<Observed>,
    /// When to look again.
    pub requeue: Duration,
}

/// Input of [`plan`].
#[derive(Clone, Debug)]
pub(crate) struct PlanInput<'a> {
    /// `spec.replicas`.
    pub desired: usize,
    /// Hash of the current template.
    pub hash: &'a str,
    /// This Workload's pods.
    pub observed: &'a [Observed],
    /// All providers; their `replicas` field is filled in here.
    pub candidates: &'a [Candidate],
    /// Requests of one replica.
    pub per_replica: Resources,
    /// Spread mode.
    pub spread: Spread,
    /// Provider selector.
    pub selector: Option<&'a LabelSelector>,
    /// The template's `nodeSelector`.
    pub node_selector: &'a BTreeMap<String, String>,
}

/// Decides one step towards `desired` replicas of the current template.
///
/// Lost replicas are force-deleted and replaced at once. A template change rolls like a
/// Deployment with surge 1 and no unavailability: one extra new replica at a time, an old one
/// removed only once the ready count stays at `desired` without it — unless there is no room
/// for the extra replica, in which case one old replica makes room.
pub(crate) fn plan(input: &PlanInput<'_>) -> Plan {
    let mut out = Plan::default();
    let mut wait = BUSY_REQUEUE;
    let mut terminating = 0;
    let mut active: Vec<&Observed> = Vec::new();
    for o in input.observed {
        match (o.terminating, o.verdict) {
            (true, Verdict::Replace { .. }) => {
                out.delete.push(deletion(o, true, DeleteReason::Abandoned))
            }
            (true, _) => terminating += 1,
            (false, Verdict::Replace { down_for }) => {
                out.delete
                    .push(deletion(o, true, DeleteReason::Failover { down_for }))
            }
            (false, Verdict::Wait { remaining }) => {
                wait = wait.min(remaining);
                out.unreachable.push(o.clone());
                active.push(o);
            }
            (false, Verdict::Keep) if o.finished() => {
                out.delete.push(deletion(o, false, DeleteReason::Finished))
            }
            (false, Verdict::Keep) => active.push(o),
        }
    }
    // Removal order: replicas in doubt first, then unready ones, then by name.
    active.sort_by(|a, b| {
        (a.verdict == Verdict::Keep, a.serving(), &a.pod).cmp(&(
            b.verdict == Verdict::Keep,
            b.serving(),
            &b.pod,
        ))
    });
    // A replica on a draining provider rolls away like one of an old template: a replacement
    // elsewhere first, then the old one goes once the ready count holds without it.
    let (new, old): (Vec<&Observed>, Vec<&Observed>) = active
        .iter()
        .partition(|o| o.hash == input.hash && !o.draining);
    let desired = input.desired;
    let mut removed = 0;
    if new.len() > desired {
        for o in &new[..new.len() - desired] {
            out.delete.push(deletion(o, false, DeleteReason::Surplus));
        }
        for o in &old {
            out.delete.push(deletion(o, false, DeleteReason::Surplus));
        }
        removed = new.len() - desired + old.len();
    } else {
        let max_total = if old.is_empty() { desired } else { desired + 1 };
        let room = max_total.saturating_sub(new.len() + old.len());
        let count = (desired - new.len()).min(room);
        let candidates = with_replica_counts(input.candidates, &active);
        let placement = place_replicas(
            &candidates,
            &PlacementRequest {
                count,
                per_replica: input.per_replica,
                spread: input.spread,
                selector: input.selector,
                node_selector: input.node_selector,
            },
        );
        out.create = placement.chosen;
        let mut shortage = placement.shortage;
        if !old.is_empty() {
            let total = new.len() + old.len() + out.create.len();
            let mut removable = total.saturating_sub(desired);
            let mut serving = active.iter().filter(|o| o.serving()).count();
            for o in &old {
                if removable == 0 || (o.serving() && serving <= desired) {
                    break;
                }
                if o.serving() {
                    serving -= 1;
                }
                let reason = if o.draining {
                    DeleteReason::Drained { replaced: true }
                } else {
                    DeleteReason::Replaced
                };
                out.delete.push(deletion(o, false, reason));
                removable -= 1;
                removed += 1;
            }
            let new_settling = new.iter().any(|o| !o.serving());
            if removed == 0
                && out.create.is_empty()
                && shortage.is_some()
                && terminating == 0
                && !new_settling
                && new.len() + old.len() <= desired
            {
                let reason = if old[0].draining {
                    DeleteReason::Drained { replaced: false }
                } else {
                    DeleteReason::MakeRoom
                };
                out.delete.push(deletion(old[0], false, reason));
                removed += 1;
                // The shortage is ours by choice and ends when the old replica is gone.
                shortage = None;
            }
        }
        let placed = active.len() - removed + out.create.len();
        out.shortage = shortage
            .filter(|_| placed < desired && terminating == 0)
            .map(|s| Shortage {
                unplaced: desired - placed,
                ..s
            });
    }
    out.placed = active.len() - removed + out.create.len();
    let settled = out.delete.is_empty()
        && out.create.is_empty()
        && terminating == 0
        && out.unreachable.is_empty()
        && old.is_empty()
        && active.iter().all(|o| o.serving())
        && out.placed == desired;
    out.requeue = if !out.unreachable.is_empty() {
        wait.clamp(MIN_REQUEUE, BUSY_REQUEUE)
    } else if out.shortage.is_some() && out.delete.is_empty() && out.create.is_empty() {
        SHORT_REQUEUE
    } else if !settled {
        BUSY_REQUEUE
    } else {
        IDLE_REQUEUE
    };
    out
}

pub(crate) fn deletion(o: &Observed, force: bool, reason: DeleteReason) -> Deletion {
    Deletion {
        pod: o.pod.clone(),
        provider: o.provider.clone(),
        // An unreachable provider cannot confirm a graceful stop.
        force: force || o.verdict != Verdict::Keep,
        reason,
    }
}

fn with_replica_counts(candidates: &[Candidate], active: &[&Observed]) -> Vec<Candidate> {
    candidates
        .iter()
        .map(|c| Candidate {
            replicas: active.iter().filter(|o| o.provider == c.name).count(),
            ..c.clone()
        })
        .collect()
}

#[cfg(test)]
mod tests;
