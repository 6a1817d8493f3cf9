use super::*;
use crate::placement::{Allocatable, Readiness};
use std::collections::BTreeMap;

fn provider(name: &str) -> Candidate {
    Candidate {
        name: name.into(),
        labels: BTreeMap::new(),
        readiness: Readiness::Ready,
        reliability_permille: 990,
        allocatable: Allocatable {
            cpu_millis: Some(2000),
            memory_bytes: Some(4 << 30),
            pods: Some(10),
            storage_bytes: None,
        },
        used: Resources::default(),
        replicas: 0,
        available_until: None,
    }
}

fn providers(names: &[&str]) -> Vec<Candidate> {
    names.iter().map(|n| provider(n)).collect()
}

/// A serving replica `pod` of template `hash` on `provider`.
fn pod(pod: &str, provider: &str, hash: &str) -> Observed {
    Observed {
        pod: pod.into(),
        provider: provider.into(),
        hash: hash.into(),
        phase: "Running".into(),
        ready: true,
        terminating: false,
        verdict: Verdict::Keep,
        draining: false,
    }
}

fn unready(mut o: Observed) -> Observed {
    o.ready = false;
    o.phase = "Pending".into();
    o
}

fn run(desired: usize, observed: &[Observed], candidates: &[Candidate]) -> Plan {
    plan(&PlanInput {
        desired,
        hash: "new",
        observed,
        candidates,
        per_replica: Resources::pod(100, 32 << 20),
        spread: Spread::Required,
        selector: None,
        node_selector: &BTreeMap::new(),
    })
}

fn deleted(plan: &Plan) -> Vec<(&str, bool, &DeleteReason)> {
    plan.delete
        .iter()
        .map(|d| (d.pod.as_str(), d.force, &d.reason))
        .collect()
}

#[test]
fn creates_missing_replicas_on_distinct_providers() {
    let p = run(2, &[], &providers(&["a", "b", "c"]));
    assert_eq!(p.create, ["a", "b"]);
    assert!(p.delete.is_empty());
    assert_eq!(p.placed, 2);
    assert_eq!(p.shortage, None);
    assert_eq!(p.requeue, BUSY_REQUEUE);
}

#[test]
fn settled_workload_does_nothing() {
    let observed = [pod("w-1", "a", "new"), pod("w-2", "b", "new")];
    let p = run(2, &observed, &providers(&["a", "b", "c"]));
    assert_eq!(p.create, Vec::<String>::new());
    assert!(p.delete.is_empty());
    assert_eq!(p.requeue, IDLE_REQUEUE);
}

#[test]
fn scale_up_uses_free_provider_and_reports_shortage() {
    let observed = [
        pod("w-1", "a", "new"),
        pod("w-2", "b", "new"),
        pod("w-3", "c", "new"),
    ];
    let p = run(4, &observed, &providers(&["a", "b", "c"]));
    assert!(p.create.is_empty());
    let shortage = p.shortage.as_ref().expect("shortage");
    assert_eq!(
        shortage.message(p.placed, 4),
        "3/4 replicas placed: 1 needs a provider; 3 Ready providers match, all in use"
    );
    assert_eq!(p.requeue, SHORT_REQUEUE);
    // A fourth provider appears: placed at once.
    let p = run(4, &observed, &providers(&["a", "b", "c", "d"]));
    assert_eq!(p.create, ["d"]);
    assert_eq!(p.shortage, None);
}

#[test]
fn scale_down_removes_unready_first() {
    let observed = [
        pod("w-1", "a", "new"),
        unready(pod("w-2", "b", "new")),
        pod("w-3", "c", "new"),
    ];
    let p = run(1, &observed, &providers(&["a", "b", "c"]));
    assert_eq!(
        deleted(&p),
        [
            ("w-2", false, &DeleteReason::Surplus),
            ("w-1", false, &DeleteReason::Surplus)
        ]
    );
    assert_eq!(p.placed, 1);
}

#[test]
fn rolling_update_steps() {
    let cands = providers(&["a", "b", "c"]);
    // Step 1: surge one new replica, keep both old ones.
    let step1 = [pod("w-o1", "a", "old"), pod("w-o2", "b", "old")];
    let p = run(2, &step1, &cands);
    assert_eq!(p.create, ["c"]);
    assert!(p.delete.is_empty());
    // Step 2: the new replica is not ready yet: nothing happens.
    let step2 = [
        pod("w-o1", "a", "old"),
        pod("w-o2", "b", "old"),
        unready(pod("w-n1", "c", "new")),
    ];
    let p = run(2, &step2, &cands);
    assert!(p.create.is_empty() && p.delete.is_empty());
    assert_eq!(p.requeue, BUSY_REQUEUE);
    // Step 3: it is ready: one old replica goes.
    let step3 = [
        pod("w-o1", "a", "old"),
        pod("w-o2", "b", "old"),
        pod("w-n1", "c", "new"),
    ];
    let p = run(2, &step3, &cands);
    assert!(p.create.is_empty());
    assert_eq!(deleted(&p), [("w-o1", false, &DeleteReason::Replaced)]);
    // Step 4: the old replica is terminating: surge again, on its provider.
    let mut gone = pod("w-o1", "a", "old");
    gone.terminating = true;
    let step4 = [gone, pod("w-o2", "b", "old"), pod("w-n1", "c", "new")];
    let p = run(2, &step4, &cands);
    assert_eq!(p.create, ["a"]);
    assert!(p.delete.is_empty());
    // Step 5: both new ready: the last old replica goes.
    let step5 = [
        pod("w-o2", "b", "old"),
        pod("w-n1", "c", "new"),
        pod("w-n2", "a", "new"),
    ];
    let p = run(2, &step5, &cands);
    assert_eq!(deleted(&p), [("w-o2", false, &DeleteReason::Replaced)]);
}

#[test]
fn rolling_update_without_room_replaces_in_place() {
    let cands = providers(&["a", "b"]);
    let observed = [pod("w-o1", "a", "old"), pod("w-o2", "b", "old")];
    let p = run(2, &observed, &cands);
    assert!(p.create.is_empty());
    assert_eq!(deleted(&p), [("w-o1", false, &DeleteReason::MakeRoom)]);
    assert_eq!(p.shortage, None, "making room is not a degradation");
    // While it terminates, nothing else is removed.
    let mut gone = pod("w-o1", "a", "old");
    gone.terminating = true;
    let observed = [gone, pod("w-o2", "b", "old")];
    let p = run(2, &observed, &cands);
    assert_eq!(p.create, ["a"]);
    assert!(p.delete.is_empty());
}

#[test]
fn rolling_update_removes_unready_old_replicas_first() {
    let cands = providers(&["a", "b", "c"]);
    let observed = [
        pod("w-o1", "a", "old"),
        unready(pod("w-o2", "b", "old")),
        pod("w-n1", "c", "new"),
    ];
    let p = run(2, &observed, &cands);
    assert_eq!(deleted(&p), [("w-o2", false, &DeleteReason::Replaced)]);
}

#[test]
fn failover_after_grace() {
    let cands = {
        let mut c = providers(&["a", "b", "c"]);
        c[0].readiness = Readiness::NotReady;
        c
    };
    // Within grace: the replica counts, nothing moves, look again when the grace ends.
    let mut waiting = pod("w-1", "a", "new");
    waiting.verdict = Verdict::Wait {
        remaining: Duration::from_millis(300),
    };
    let p = run(2, &[waiting.clone(), pod("w-2", "b", "new")], &cands);
    assert!(p.create.is_empty() && p.delete.is_empty());
    assert_eq!(p.unreachable, [waiting]);
    assert_eq!(p.requeue, Duration::from_millis(300));
    // Past grace: force-delete and replace elsewhere in the same step.
    let mut lost = pod("w-1", "a", "new");
    lost.verdict = Verdict::Replace {
        down_for: Duration::from_secs(6),
    };
    let p = run(2, &[lost, pod("w-2", "b", "new")], &cands);
    assert_eq!(
        deleted(&p),
        [(
            "w-1",
            true,
            &DeleteReason::Failover {
                down_for: Duration::from_secs(6)
            }
        )]
    );
    assert_eq!(p.create, ["c"]);
}

#[test]
fn terminating_pod_on_lost_provider_is_force_deleted() {
    let mut stuck = pod("w-1", "a", "new");
    stuck.terminating = true;
    stuck.verdict = Verdict::Replace {
        down_for: Duration::ZERO,
    };
    let p = run(0, &[stuck], &providers(&["b"]));
    assert_eq!(deleted(&p), [("w-1", true, &DeleteReason::Abandoned)]);
}

#[test]
fn finished_pods_are_replaced() {
    let mut failed = pod("w-1", "a", "new");
    failed.phase = "Failed".into();
    failed.ready = false;
    let p = run(1, &[failed], &providers(&["a"]));
    assert_eq!(deleted(&p), [("w-1", false, &DeleteReason::Finished)]);
    assert_eq!(p.create, ["a"]);
}

#[test]
fn plan_is_deterministic() {
    let observed = [pod("w-o1", "a", "old"), unready(pod("w-n1", "b", "new"))];
    let cands = providers(&["c", "b", "a", "d"]);
    assert_eq!(run(3, &observed, &cands), run(3, &observed, &cands));
}

#[test]
fn scale_down_force_deletes_replicas_on_unreachable_providers() {
    let mut waiting = pod("w-1", "a", "new");
    waiting.verdict = Verdict::Wait {
        remaining: Duration::from_secs(3),
    };
    let p = run(
        1,
        &[pod("w-2", "b", "new"), waiting],
        &providers(&["a", "b"]),
    );
    assert_eq!(deleted(&p), [("w-1", true, &DeleteReason::Surplus)]);
}

fn draining(mut o: Observed) -> Observed {
    o.draining = true;
    o
}

fn cordoned(mut c: Candidate) -> Candidate {
    c.readiness = Readiness::Cordoned;
    c
}

#[test]
fn a_drained_replica_moves_make_before_break() {
    let candidates = [cordoned(provider("a")), provider("b")];
    // Step 1: a replacement on b, the replica on a untouched.
    let observed = [draining(pod("w-1", "a", "new"))];
    let p = run(1, &observed, &candidates);
    assert_eq!(p.create, ["b"]);
    assert!(p.delete.is_empty(), "{p:?}");
    // Step 2: the replacement is not Ready yet: nothing is removed.
    let observed = [
        draining(pod("w-1", "a", "new")),
        unready(pod("w-2", "b", "new")),
    ];
    let p = run(1, &observed, &candidates);
    assert!(p.create.is_empty() && p.delete.is_empty(), "{p:?}");
    // Step 3: it is Ready: now the old one goes.
    let observed = [draining(pod("w-1", "a", "new")), pod("w-2", "b", "new")];
    let p = run(1, &observed, &candidates);
    assert_eq!(
        deleted(&p),
        [("w-1", false, &DeleteReason::Drained { replaced: true })]
    );
}

#[test]
fn a_drained_replica_with_nowhere_to_go_leaves_and_waits() {
    let candidates = [cordoned(provider("a"))];
    let observed = [draining(pod("w-1", "a", "new"))];
    let p = run(1, &observed, &candidates);
    assert!(p.create.is_empty());
    assert_eq!(
        deleted(&p),
        [("w-1", false, &DeleteReason::Drained { replaced: false })]
    );
    // Once it is gone the Workload reports the replica as waiting for a provider.
    let p = run(1, &[], &candidates);
    let shortage = p.shortage.as_ref().expect("shortage");
    assert_eq!(shortage.unplaced, 1);
}
