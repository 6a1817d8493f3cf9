//! The SIMULATED runtime: same pod lifecycle, no containers; many edges in one process.

use std::sync::Arc;
use std::time::Duration;

use decloud_proto as pb;
use edge_kubelet::{
    BackoffPolicy, OUT_OF_PODS, PodSupervisor, PodUpdate, PodWorkerConfig, SimulatedRuntime,
    SimulatedTimings,
};

fn pod(uid: &str, image: &str, env: &[(&str, &str)]) -> pb::PodSpec {
    pb::PodSpec {
        uid: uid.into(),
        namespace: "bench".into(),
        name: uid.into(),
        spec_hash: "h".into(),
        containers: vec![pb::ContainerSpec {
            name: "c".into(),
            image: image.into(),
            env: env
                .iter()
                .map(|(k, v)| pb::EnvVar {
                    name: k.to_string(),
                    value: v.to_string(),
                })
                .collect(),
            ..Default::default()
        }],
        ..Default::default()
    }
}

fn fast() -> PodWorkerConfig {
    PodWorkerConfig {
        backoff: BackoffPolicy {
            initial: Duration::from_millis(100),
            max: Duration::from_secs(1),
            pull_error_hold: Duration::from_millis(100),
        },
        poll_interval: Duration::from_secs(10),
        ..PodWorkerConfig::default()
    }
}

async fn wait_for(what: &str, mut f: impl FnMut() -> bool) {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    while !f() {
        assert!(tokio::time::Instant::now() < deadline, "timed out: {what}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hundreds_of_simulated_edges_run_their_pods_in_one_process() {
    const EDGES: usize = 200;
    const PODS: usize = 3;
    let mut edges = Vec::new();
    for e in 0..EDGES {
        let rt = SimulatedRuntime::new(&format!("edge-sim-{e}"), SimulatedTimings::default());
        let sup = PodSupervisor::start(Arc::new(rt), None, fast())
            .await
            .unwrap();
        sup.apply_pod_set(
            (0..PODS)
                .map(|p| pod(&format!("e{e}-p{p}"), "sim/app:1", &[]))
                .collect(),
        );
        edges.push(sup);
    }
    let running = |edges: &Vec<Arc<PodSupervisor>>| {
        edges
            .iter()
            .flat_map(|e| e.board().all())
            .filter(|s| s.phase() == pb::PodPhase::Running && s.ready)
            .count()
    };
    wait_for("every simulated pod Running and ready", || {
        running(&edges) == EDGES * PODS
    })
    .await;
    let s = edges[0].board().get("e0-p0").unwrap();
    assert!(!s.pod_ip.is_empty());
    assert!(s.containers[0].container_id.starts_with("simulated://"));
}

#[tokio::test]
async fn simulated_pods_crash_fail_to_pull_and_go_away_like_real_ones() {
    let rt = SimulatedRuntime::new("edge-sim-x", SimulatedTimings::default());
    let sup = PodSupervisor::start(Arc::new(rt), None, fast())
        .await
        .unwrap();
    let mut updates = sup.board().subscribe();
    sup.upsert(pod(
        "crash",
        "sim/app:1",
        &[("SIM_EXIT_AFTER_MS", "50"), ("SIM_EXIT_CODE", "3")],
    ))
    .unwrap();
    sup.upsert(pod("nopull", "sim/does-not-exist:1", &[]))
        .unwrap();
    wait_for("restart count rises", || {
        sup.board()
            .get("crash")
            .is_some_and(|s| s.containers[0].restart_count >= 3)
    })
    .await;
    wait_for("ErrImagePull", || {
        sup.board()
            .get("nopull")
            .is_some_and(|s| s.reason == "ErrImagePull")
    })
    .await;
    sup.delete("crash", None);
    wait_for("gone", || sup.board().get("crash").is_none()).await;
    let mut gone = false;
    while let Ok(u) = updates.try_recv() {
        gone |= u == PodUpdate::Gone("crash".into());
    }
    assert!(gone);
    assert_eq!(sup.assigned(), vec!["nopull".to_string()]);
}

#[tokio::test]
async fn pods_beyond_max_pods_fail_with_out_of_pods_and_stay_refused() {
    let rt = SimulatedRuntime::new("edge-sim-full", SimulatedTimings::default());
    let cfg = PodWorkerConfig {
        max_pods: 2,
        ..fast()
    };
    let sup = PodSupervisor::start(Arc::new(rt), None, cfg).await.unwrap();
    sup.apply_pod_set(vec![
        pod("a", "sim/app:1", &[]),
        pod("b", "sim/app:1", &[]),
        pod("c", "sim/app:1", &[]),
    ]);
    wait_for("a and b Running", || {
        ["a", "b"].iter().all(|u| {
            sup.board()
                .get(u)
                .is_some_and(|s| s.phase() == pb::PodPhase::Running)
        })
    })
    .await;
    let c = sup.board().get("c").expect("c has a status");
    assert_eq!(c.phase(), pb::PodPhase::Failed);
    assert_eq!(c.reason, OUT_OF_PODS);
    assert!(c.message.contains("used: 2, capacity: 2"), "{}", c.message);
    assert_eq!(sup.assigned().len(), 2, "c must not run");

    // Room frees up: the refusal of c is final (a reconnect's PodSet sends it again), but a
    // new pod is admitted.
    sup.delete("a", None);
    wait_for("a gone", || sup.board().get("a").is_none()).await;
    sup.apply_pod_set(vec![
        pod("b", "sim/app:1", &[]),
        pod("c", "sim/app:1", &[]),
        pod("d", "sim/app:1", &[]),
    ]);
    wait_for("d Running", || {
        sup.board()
            .get("d")
            .is_some_and(|s| s.phase() == pb::PodPhase::Running)
    })
    .await;
    assert_eq!(
        sup.board().get("c").map(|s| s.reason),
        Some(OUT_OF_PODS.to_string())
    );
    let mut assigned = sup.assigned();
    assigned.sort();
    assert_eq!(assigned, vec!["b".to_string(), "d".to_string()]);
}
