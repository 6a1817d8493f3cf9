use std::time::Duration;

use super::*;
use crate::placement::tests::provider;

const MI: i64 = 1 << 20;

fn pod(name: &str, provider: &str) -> Observed {
    Observed {
        pod: name.into(),
        provider: provider.into(),
        hash: "h1".into(),
        phase: "Running".into(),
        ready: true,
        terminating: false,
        verdict: Verdict::Keep,
        draining: false,
    }
}

fn with(o: Observed, f: impl FnOnce(&mut Observed)) -> Observed {
    let mut o = o;
    f(&mut o);
    o
}

/// A scene: `db` with `desired` replicas of 64Mi volumes over providers `a`, `b` and `c`, each
/// offering 1Gi of storage, all Ready.
struct Scene {
    desired: usize,
    observed: Vec<Observed>,
    bindings: BTreeMap<u32, String>,
    verdicts: BTreeMap<String, Verdict>,
    draining: BTreeSet<String>,
    candidates: Vec<Candidate>,
    on_loss: OnProviderLoss,
    spread: Spread,
}

impl Scene {
    fn new(desired: usize) -> Self {
        let candidates: Vec<Candidate> = ["a", "b", "c"]
            .into_iter()
            .map(|n| {
                let mut c = provider(n);
                c.allocatable.storage_bytes = Some(1024 * MI);
                c
            })
            .collect();
        Self {
            desired,
            observed: Vec::new(),
            bindings: BTreeMap::new(),
            verdicts: candidates
                .iter()
                .map(|c| (c.name.clone(), Verdict::Keep))
                .collect(),
            draining: BTreeSet::new(),
            candidates,
            on_loss: OnProviderLoss::Wait,
            spread: Spread::Required,
        }
    }

    fn bind(mut self, ordinal: u32, provider: &str) -> Self {
        self.bindings.insert(ordinal, provider.into());
        self
    }

    fn lose(mut self, provider: &str, verdict: Verdict) -> Self {
        self.verdicts.insert(provider.into(), verdict);
        for c in &mut self.candidates {
            if c.name == provider {
                c.readiness = Readiness::NotReady;
            }
        }
        for o in &mut self.observed {
            if o.provider == provider {
                o.verdict = verdict;
            }
        }
        self
    }

    fn plan(&self) -> StatefulPlan {
        plan(&StatefulInput {
            workload: "db",
            desired: self.desired,
            hash: "h1",
            observed: &self.observed,
            bindings: &self.bindings,
            verdicts: &self.verdicts,
            draining: &self.draining,
            candidates: &self.candidates,
            per_replica: Resources::pod(100, 32 * MI),
            volume_bytes: 64 * MI,
            spread: self.spread,
            selector: None,
            node_selector: &BTreeMap::new(),
            on_loss: self.on_loss,
            grace_seconds: 5,
        })
    }
}

fn creates(p: &StatefulPlan) -> Vec<(u32, &str)> {
    p.ordinals
        .iter()
        .copied()
        .zip(p.plan.create.iter().map(String::as_str))
        .collect()
}

fn deletes(p: &StatefulPlan) -> Vec<(&str, bool)> {
    p.plan
        .delete
        .iter()
        .map(|d| (d.pod.as_str(), d.force))
        .collect()
}

fn states(p: &StatefulPlan) -> Vec<(&str, &str, &str)> {
    p.replicas
        .iter()
        .map(|r| (r.name.as_str(), r.provider.as_str(), r.state.as_str()))
        .collect()
}

const LOST: Verdict = Verdict::Replace {
    down_for: Duration::from_secs(30),
};
const GONE: Verdict = Verdict::Replace {
    down_for: Duration::ZERO,
};

#[test]
fn new_replicas_get_identities_on_distinct_providers() {
    let p = Scene::new(2).plan();
    assert_eq!(creates(&p), [(0, "a"), (1, "b")]);
    assert_eq!(
        states(&p),
        [("db-0", "a", STARTING), ("db-1", "b", STARTING)]
    );
    assert_eq!(p.plan.placed, 2);
    assert!(p.plan.shortage.is_none() && p.waiting.is_empty());
}

#[test]
fn placement_honours_the_storage_offer() {
    // a has 1Gi offered and 980Mi held by other Workloads' volumes: 64Mi more do not fit.
    let mut s = Scene::new(1);
    s.candidates[0].used = Resources::storage(980 * MI);
    assert_eq!(creates(&s.plan()), [(0, "b")]);
    // No provider has room: a shortage that names the storage asked for.
    for c in &mut s.candidates {
        c.allocatable.storage_bytes = Some(32 * MI);
    }
    let p = s.plan();
    assert!(p.plan.create.is_empty());
    let message = p.plan.shortage.expect("shortage").message(0, 1);
    assert!(message.contains("storage 64Mi"), "{message}");
    assert!(
        p.replicas.is_empty(),
        "an unplaced new replica has no binding"
    );
    // The Workload's own volumes count: b holds db-0's 64Mi, so db-1 (spread Preferred) does
    // not fit beside it in 100Mi, but does in 128Mi.
    let mut s = Scene::new(2).bind(0, "b");
    s.spread = Spread::Preferred;
    s.observed = vec![pod("db-0", "b")];
    s.candidates.retain(|c| c.name == "b");
    s.candidates[0].allocatable.storage_bytes = Some(100 * MI);
    let p = s.plan();
    assert!(p.plan.create.is_empty(), "{:?}", creates(&p));
    s.candidates[0].allocatable.storage_bytes = Some(128 * MI);
    assert_eq!(creates(&s.plan()), [(1, "b")]);
}

#[test]
fn a_replica_without_its_pod_comes_back_where_its_data_is() {
    // db-0's volumes are on c; a and b are emptier, but only c will do.
    let mut s = Scene::new(2).bind(0, "c").bind(1, "a");
    s.candidates[2].used = Resources::pod(1500, 0);
    s.observed = vec![pod("db-1", "a")];
    let p = s.plan();
    assert_eq!(creates(&p), [(0, "c")]);
    assert_eq!(
        states(&p),
        [("db-0", "c", STARTING), ("db-1", "a", RUNNING)]
    );
    // c lacks the CPU now: the replica waits for it instead of moving.
    s.candidates[2].used = Resources::pod(1950, 0);
    let p = s.plan();
    assert!(p.plan.create.is_empty());
    assert_eq!(p.replicas[0].state, WAITING_FOR_PROVIDER);
    assert!(
        p.waiting[0].contains("lacks free capacity"),
        "{:?}",
        p.waiting
    );
}

#[test]
fn a_template_change_replaces_one_replica_at_a_time_highest_first() {
    let old = |name: &str, provider: &str| with(pod(name, provider), |o| o.hash = "h0".into());
    let mut s = Scene::new(3).bind(0, "a").bind(1, "b").bind(2, "c");
    s.observed = vec![old("db-0", "a"), old("db-1", "b"), old("db-2", "c")];
    let p = s.plan();
    assert_eq!(deletes(&p), [("db-2", false)]);
    assert!(p.plan.create.is_empty());
    // db-2 is stopping: nothing else moves.
    s.observed[2].terminating = true;
    assert!(s.plan().plan.delete.is_empty());
    // db-2 is back (new template) but not Ready: db-1 waits.
    s.observed[2] = pod("db-2", "c");
    s.observed[2].ready = false;
    assert!(s.plan().plan.delete.is_empty());
    // An old replica that does not serve goes first, whatever its ordinal.
    s.observed[2].ready = true;
    s.observed[0].ready = false;
    assert_eq!(deletes(&s.plan()), [("db-0", false)]);
}

#[test]
fn a_lost_provider_is_waited_for() {
    let mut s = Scene::new(2).bind(0, "a").bind(1, "b");
    s.observed = vec![pod("db-0", "a"), pod("db-1", "b")];
    let s = s.lose("a", LOST);
    let p = s.plan();
    assert!(p.plan.delete.is_empty() && p.plan.create.is_empty());
    assert_eq!(
        states(&p),
        [("db-0", "a", WAITING_FOR_PROVIDER), ("db-1", "b", RUNNING)]
    );
    assert!(
        p.waiting[0].contains("NotReady for more than the 5s grace"),
        "{:?}",
        p.waiting
    );
    assert_eq!(p.plan.requeue, SHORT_REQUEUE);
    // Its pod gone too, and the provider deleted: still no replica elsewhere.
    let mut s = s.lose("a", GONE);
    s.observed.remove(0);
    let p = s.plan();
    assert!(p.plan.create.is_empty(), "{:?}", creates(&p));
    assert!(p.waiting[0].contains("is gone"), "{:?}", p.waiting);
}

#[test]
fn recreate_moves_a_lost_replica_after_the_grace() {
    let mut s = Scene::new(1).bind(0, "a");
    s.on_loss = OnProviderLoss::Recreate;
    s.observed = vec![pod("db-0", "a")];
    // Within the grace: it waits.
    let within = s.lose(
        "a",
        Verdict::Wait {
            remaining: Duration::from_secs(2),
        },
    );
    let p = within.plan();
    assert!(p.plan.delete.is_empty() && p.plan.create.is_empty());
    assert_eq!(p.plan.requeue, Duration::from_secs(2));
    // Past it: the lost pod is force-deleted, then the replica starts on another provider.
    let mut s = within.lose("a", LOST);
    let p = s.plan();
    assert_eq!(deletes(&p), [("db-0", true)]);
    assert_eq!(states(&p), [("db-0", "a", MOVING)]);
    s.observed.clear();
    let p = s.plan();
    assert_eq!(creates(&p), [(0, "b")]);
    assert_eq!(states(&p), [("db-0", "b", MOVING)]);
}

#[test]
fn replicas_past_the_count_and_foreign_pods_go_with_their_bindings() {
    let mut s = Scene::new(1).bind(0, "a").bind(1, "b");
    s.observed = vec![
        pod("db-0", "a"),
        pod("db-1", "b"),
        // From before the Workload had claims.
        pod("db-5f2c9a1b-x7k2q", "c"),
    ];
    let p = s.plan();
    let mut d = deletes(&p);
    d.sort();
    assert_eq!(d, [("db-1", false), ("db-5f2c9a1b-x7k2q", false)]);
    assert_eq!(states(&p), [("db-0", "a", RUNNING)]);
    assert_eq!(p.plan.placed, 1);
}

#[test]
fn a_stuck_pod_on_a_lost_provider_is_force_deleted() {
    let mut s = Scene::new(1).bind(0, "a");
    s.observed = vec![with(pod("db-0", "a"), |o| o.terminating = true)];
    assert!(
        s.plan().plan.delete.is_empty(),
        "a graceful stop is awaited"
    );
    let s = s.lose("a", LOST);
    assert_eq!(deletes(&s.plan()), [("db-0", true)]);
}

#[test]
fn a_drained_provider_gets_its_machine_back() {
    let mut s = Scene::new(1).bind(0, "a");
    s.observed = vec![with(pod("db-0", "a"), |o| o.draining = true)];
    s.draining.insert("a".into());
    s.candidates[0].readiness = Readiness::Cordoned;
    // Wait: the pod stops there, the replica waits for the provider to resume.
    let p = s.plan();
    assert_eq!(deletes(&p), [("db-0", false)]);
    assert_eq!(states(&p), [("db-0", "a", WAITING_FOR_PROVIDER)]);
    s.observed.clear();
    let p = s.plan();
    assert!(p.plan.create.is_empty(), "{:?}", creates(&p));
    assert!(
        p.waiting[0].contains("drained by its owner"),
        "{:?}",
        p.waiting
    );
    // Recreate: it starts elsewhere.
    s.on_loss = OnProviderLoss::Recreate;
    assert_eq!(creates(&s.plan()), [(0, "b")]);
}
