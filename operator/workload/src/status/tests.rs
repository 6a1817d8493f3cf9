use super::*;
use decloud_crds::find_condition;

fn placement(pod: &str, provider: &str, ready: bool) -> ReplicaPlacement {
    ReplicaPlacement {
        pod: pod.into(),
        provider: provider.into(),
        phase: if ready { "Running" } else { "Pending" }.into(),
        ready,
    }
}

fn input<'a>(previous: Option<&'a WorkloadStatus>, now: &'a str) -> StatusInput<'a> {
    StatusInput {
        generation: Some(3),
        desired: 2,
        selector: "decloud.dev/workload=hello".into(),
        url: Some("http://hello.default.decloud.localhost".into()),
        host: HostClaim::Owner("hello.default.decloud.localhost".into()),
        certificate: None,
        tcp: None,
        placements: vec![
            placement("w-b", "bob", true),
            placement("w-a", "alice", true),
        ],
        updated: 2,
        shortage: None,
        unreachable: vec![],
        grace_seconds: 5,
        waiting: Vec::new(),
        persistent_replicas: Vec::new(),
        previous,
        now,
    }
}

fn condition<'a>(s: &'a WorkloadStatus, type_: &str) -> &'a Condition {
    decloud_crds::find_condition(&s.conditions, type_).expect(type_)
}

#[test]
fn healthy_workload() {
    let s = compute_status(input(None, "t1"));
    assert_eq!(s.observed_generation, Some(3));
    assert_eq!((s.replicas, s.ready_replicas), (2, 2));
    assert_eq!(
        s.url.as_deref(),
        Some("http://hello.default.decloud.localhost")
    );
    let pods: Vec<&str> = s.placements.iter().map(|p| p.pod.as_str()).collect();
    assert_eq!(pods, ["w-a", "w-b"], "placements are sorted");
    let types: Vec<&str> = s.conditions.iter().map(|c| c.type_.as_str()).collect();
    assert_eq!(
        types,
        ["Available", "Degraded", "HostAccepted", "Progressing"]
    );
    assert!(condition(&s, HOST_ACCEPTED).is_true());
    assert!(condition(&s, AVAILABLE).is_true());
    assert!(!condition(&s, DEGRADED).is_true());
    let progressing = condition(&s, PROGRESSING);
    assert_eq!(
        (progressing.status.as_str(), progressing.reason.as_str()),
        ("False", "Complete")
    );
    assert_eq!(progressing.observed_generation, Some(3));
}

#[test]
fn same_inputs_same_status() {
    let first = compute_status(input(None, "t1"));
    let second = compute_status(input(Some(&first), "t2"));
    assert_eq!(
        first, second,
        "nothing changed, so nothing may differ, not even times"
    );
}

#[test]
fn transition_time_moves_only_on_change() {
    let first = compute_status(input(None, "t1"));
    let mut short = input(Some(&first), "t2");
    short.placements.pop();
    short.shortage = Some(
        "1/2 replicas placed: 1 needs a provider; 1 Ready provider matches, all in use".into(),
    );
    let second = compute_status(short);
    let degraded = condition(&second, DEGRADED);
    assert!(degraded.is_true());
    assert_eq!(degraded.reason, "InsufficientCapacity");
    assert!(degraded.message.starts_with("1/2 replicas placed"));
    assert_eq!(degraded.last_transition_time.as_deref(), Some("t2"));
    assert!(!condition(&second, AVAILABLE).is_true());
    assert_eq!(
        condition(&second, PROGRESSING).reason,
        "InsufficientCapacity"
    );
    // Progressing was False before and is False now: its time stays.
    assert_eq!(
        condition(&second, PROGRESSING)
            .last_transition_time
            .as_deref(),
        Some("t1")
    );
}

#[test]
fn rolling_and_unreachable() {
    let mut rolling = input(None, "t1");
    rolling.placements.push(placement("w-c", "carol", false));
    rolling.updated = 1;
    let s = compute_status(rolling);
    assert_eq!(s.replicas, 3);
    let progressing = condition(&s, PROGRESSING);
    assert!(progressing.is_true());
    assert_eq!(progressing.reason, "RollingUpdate");
    assert_eq!(progressing.message, "1/2 replicas updated, 2 ready");

    let mut down = input(None, "t1");
    down.placements[0].ready = false;
    down.unreachable = vec![("w-b".into(), "bob".into())];
    let s = compute_status(down);
    let degraded = condition(&s, DEGRADED);
    assert_eq!(degraded.reason, "ProviderNotReady");
    assert_eq!(
        degraded.message,
        "1 replica(s) on a NotReady provider (w-b on bob); replaced after 5s"
    );
    assert_eq!(s.ready_replicas, 1);
}

#[test]
fn a_host_conflict_names_the_owners_namespace_only() {
    let owner = kube::runtime::reflector::ObjectRef::new("secret-shop").within("team-a");
    let s = compute_status(StatusInput {
        url: None,
        host: HostClaim::Conflict {
            host: "shop.example.org".into(),
            owner,
        },
        ..input(None, "t1")
    });
    assert_eq!(s.url, None);
    let c = condition(&s, HOST_ACCEPTED);
    assert_eq!(
        (c.status.as_str(), c.reason.as_str()),
        ("False", "HostConflict")
    );
    assert_eq!(
        c.message,
        "host shop.example.org is already served by a Workload in namespace team-a"
    );
    // Exposing nothing any more: the condition goes.
    let later = compute_status(StatusInput {
        host: HostClaim::None,
        ..input(Some(&s), "t2")
    });
    assert!(decloud_crds::find_condition(&later.conditions, HOST_ACCEPTED).is_none());
}

#[test]
fn certificate_condition_only_when_a_secret_is_named() {
    let s = compute_status(input(None, "t1"));
    assert!(find_condition(&s.conditions, CERTIFICATE_READY).is_none());
    let refused = compute_status(StatusInput {
        certificate: Some(Err(CertificateProblem {
            reason: "HostNotCovered".into(),
            message: "Secret shop: the certificate does not cover host x".into(),
        })),
        ..input(None, "t1")
    });
    let c = condition(&refused, CERTIFICATE_READY);
    assert_eq!(
        (c.status.as_str(), c.reason.as_str()),
        ("False", "HostNotCovered")
    );
    let served = compute_status(StatusInput {
        certificate: Some(Ok(())),
        ..input(Some(&refused), "t2")
    });
    let c = condition(&served, CERTIFICATE_READY);
    assert_eq!(
        (c.status.as_str(), c.last_transition_time.as_deref()),
        ("True", Some("t2"))
    );
    let dropped = compute_status(input(Some(&served), "t3"));
    assert!(
        find_condition(&dropped.conditions, CERTIFICATE_READY).is_none(),
        "the condition goes with spec.expose.tls"
    );
}
