use std::collections::HashSet;
use std::convert::Infallible;
use std::sync::Mutex;
use std::time::SystemTime;

use http::{Request, Response, StatusCode};
use kube::client::Body;
use kube::runtime::reflector;
use serde_json::Value;

use super::*;
use crate::Config;
use crate::context::Caches;
use crate::edge::HelloInfo;
use crate::health::Readiness;
use crate::metrics::Metrics;

fn provider(status: Option<Value>) -> Provider {
    let mut v = json!({
        "apiVersion": "decloud.dev/v1alpha1",
        "kind": "Provider",
        "metadata": {"name": "alice", "uid": "u-alice", "generation": 1, "finalizers": [PROVIDER_FINALIZER],
            "labels": {"topology.kubernetes.io/region": "eu-west"}},
        "spec": {"offered": {"cpu": "2", "memory": "4Gi"}},
    });
    if let Some(s) = status {
        v["status"] = s;
    }
    serde_json::from_value(v).unwrap()
}

fn hello() -> HelloInfo {
    HelloInfo {
        agent_version: "0.1.0".into(),
        capacity: pb::Resources {
            cpu_millis: 8000,
            memory_bytes: 16 << 30,
            pods: 0,
            storage_bytes: 100 << 30,
        },
        offered: pb::Resources {
            cpu_millis: 4000,
            memory_bytes: 2 << 30,
            pods: 5,
            storage_bytes: (256 << 20) + 123,
        },
        runtime: "docker".into(),
        running: HashSet::new(),
        availability: Default::default(),
        platform: None,
        pod_network: None,
        isolation: None,
    }
}

fn pod(name: &str, phase: &str, cpu: &str) -> Arc<Pod> {
    Arc::new(
        serde_json::from_value(json!({
            "metadata": {"name": name, "namespace": "default", "uid": name},
            "spec": {"nodeName": "edge-alice", "containers": [{"name": "c", "image": "b:1",
                "resources": {"requests": {"cpu": cpu, "memory": "64Mi", "ephemeral-storage": "10Mi"}}}]},
            "status": {"phase": phase},
        }))
        .unwrap(),
    )
}

fn at(secs: i64) -> Timestamp {
    Timestamp::from_second(1_800_000_000 + secs).unwrap()
}

fn view(ready: Option<bool>, heartbeat_secs: Option<i64>) -> ProviderView {
    ProviderView {
        ready,
        hello: ready.map(|_| hello()),
        last_heartbeat: heartbeat_secs.map(|s| SystemTime::from(at(s))),
        reliability: ready.map(|_| 0.99949),
        operator_uptime: Duration::from_secs(3600),
    }
}

#[test]
fn status_follows_liveness() {
    // (view, previous phase, expected phase, expected Ready status, expected reason)
    let cases = [
        (
            view(Some(true), Some(0)),
            None,
            ProviderPhase::Ready,
            "True",
            "HeartbeatsReceived",
        ),
        (
            view(Some(false), Some(0)),
            Some("Ready"),
            ProviderPhase::NotReady,
            "False",
            "HeartbeatsMissed",
        ),
        (
            view(None, None),
            Some("Ready"),
            ProviderPhase::NotReady,
            "False",
            "HeartbeatsMissed",
        ),
        (
            view(None, None),
            None,
            ProviderPhase::Pending,
            "False",
            "NeverConnected",
        ),
        (
            view(None, None),
            Some("NotReady"),
            ProviderPhase::NotReady,
            "False",
            "HeartbeatsMissed",
        ),
    ];
    for (i, (v, old, phase, ready, reason)) in cases.into_iter().enumerate() {
        let p = provider(old.map(|o| json!({"phase": o})));
        let s = desired_status(&p, &v, &[], &Config::default(), at(1));
        assert_eq!(s.phase, phase, "case {i}");
        let c = find_condition(&s.conditions, "Ready").unwrap();
        assert_eq!(
            (c.status.as_str(), c.reason.as_str()),
            (ready, reason),
            "case {i}"
        );
        assert_eq!(c.observed_generation, Some(1));
        assert_eq!(s.node_name.as_deref(), Some("edge-alice"));
    }
}

#[test]
fn resources_are_capped_and_summed() {
    let pods = [
        pod("a", "Running", "100m"),
        pod("b", "Pending", "250m"),
        pod("done", "Succeeded", "1"),
    ];
    let s = desired_status(
        &provider(None),
        &view(Some(true), Some(0)),
        &pods,
        &Config::default(),
        at(1),
    );
    let cap = s.capacity.unwrap();
    assert_eq!(
        (cap.cpu.as_deref(), cap.memory.as_deref()),
        (Some("8"), Some("16Gi"))
    );
    // min(capacity 8/16Gi, Provider spec 2/4Gi, edge offer 4/2Gi, edge pods 5)
    let alloc = s.allocatable.unwrap();
    assert_eq!(
        (alloc.cpu.as_deref(), alloc.memory.as_deref(), alloc.pods),
        (Some("2"), Some("2Gi"), Some(5))
    );
    assert_eq!(
        (cap.storage.as_deref(), alloc.storage.as_deref()),
        (Some("100Gi"), Some("256Mi")),
        "the edge's storage offer, rounded down to MiB"
    );
    let used = s.allocated.unwrap();
    assert_eq!(used.storage.as_deref(), Some("20Mi"));
    assert_eq!(
        (used.cpu.as_deref(), used.memory.as_deref(), used.pods),
        (Some("350m"), Some("128Mi"), Some(2))
    );
    assert_eq!(s.reliability.as_deref(), Some("0.999"));
    let odd = offer(&pb::Resources {
        cpu_millis: 1500,
        memory_bytes: 25_276_063_744 + 123,
        pods: 0,
        storage_bytes: 0,
    });
    assert_eq!(
        (odd.cpu.as_deref(), odd.memory.as_deref(), odd.pods),
        (Some("1500m"), Some("24105Mi"), None)
    );
    assert_eq!(
        odd.storage, None,
        "an edge that states no storage offers none"
    );
    assert_eq!(s.agent_version.as_deref(), Some("0.1.0"));
}

#[test]
fn a_second_pass_changes_nothing_and_heartbeat_time_is_written_periodically() {
    let config = Config {
        status_report_interval: std::time::Duration::from_secs(30),
        ..Config::default()
    };
    let v = view(Some(true), Some(0));
    let first = desired_status(&provider(None), &v, &[], &config, at(1));
    let p = provider(Some(serde_json::to_value(&first).unwrap()));
    // Heartbeats keep arriving: within the write period nothing changes.
    let second = desired_status(&p, &view(Some(true), Some(20)), &[], &config, at(21));
    assert_eq!(first, second);
    // Past the period, lastHeartbeatTime moves (and nothing else).
    let third = desired_status(&p, &view(Some(true), Some(31)), &[], &config, at(31));
    assert_eq!(
        third.last_heartbeat_time.as_deref(),
        Some("2027-01-15T08:00:31Z")
    );
    assert_eq!(third.conditions, first.conditions);
    // A transition writes the time at once and keeps the old one on unrelated conditions.
    let down = desired_status(&p, &view(Some(false), Some(5)), &[], &config, at(9));
    let c = find_condition(&down.conditions, "Ready").unwrap();
    assert_eq!(
        c.last_transition_time.as_deref(),
        Some("2027-01-15T08:00:09Z")
    );
    assert_eq!(
        down.last_heartbeat_time.as_deref(),
        Some("2027-01-15T08:00:05Z")
    );
}

// === One reconcile step against kube's client over a mock HTTP service ===

type Log = Arc<Mutex<Vec<(String, String, Value)>>>;

fn mock_client(log: Log) -> kube::Client {
    let service = tower::service_fn(move |req: Request<Body>| {
        let log = log.clone();
        async move {
            let method = req.method().to_string();
            let uri = req.uri().to_string();
            let bytes = req.into_body().collect_bytes().await.unwrap_or_default();
            let body: Value = serde_json::from_slice(&bytes).unwrap_or(Value::Null);
            log.lock()
                .unwrap()
                .push((method.clone(), uri.clone(), body.clone()));
            let path = uri.split('?').next().unwrap_or_default().to_string();
            let (code, reply) = match (method.as_str(), path.as_str()) {
                ("PATCH", "/apis/decloud.dev/v1alpha1/providers/alice/status") => {
                    let mut p = serde_json::to_value(provider(None)).unwrap();
                    p["status"] = body["status"].clone();
                    (StatusCode::OK, p)
                }
                ("PATCH", "/apis/decloud.dev/v1alpha1/providers/alice") => {
                    let mut p = serde_json::to_value(provider(None)).unwrap();
                    p["metadata"]["finalizers"] = json!([]);
                    (StatusCode::OK, p)
                }
                ("PATCH", p) if p.starts_with("/api/v1/nodes/edge-alice") => (StatusCode::OK, body),
                ("GET", "/api/v1/pods") => (
                    StatusCode::OK,
                    json!({"apiVersion": "v1", "kind": "PodList", "metadata": {}, "items": []}),
                ),
                ("DELETE", "/api/v1/nodes/edge-alice") => (
                    StatusCode::NOT_FOUND,
                    json!({"apiVersion": "v1", "kind": "Status", "metadata": {}, "status": "Failure",
                        "reason": "NotFound", "message": "nodes \"edge-alice\" not found", "code": 404}),
                ),
                ("DELETE", _) => (
                    StatusCode::OK,
                    json!({"apiVersion": "v1", "kind": "Status", "metadata": {}, "status": "Success"}),
                ),
                _ => (
                    StatusCode::NOT_IMPLEMENTED,
                    json!({"apiVersion": "v1", "kind": "Status", "metadata": {}, "status": "Failure",
                        "message": format!("unexpected {method} {uri}"), "code": 501}),
                ),
            };
            let resp = Response::builder()
                .status(code)
                .header("content-type", "application/json")
                .body(Body::from(serde_json::to_vec(&reply).unwrap()))
                .unwrap();
            Ok::<_, Infallible>(resp)
        }
    });
    kube::Client::new(service, "default")
}

fn context(log: Log) -> Arc<Context> {
    let (pods, _) = reflector::store();
    let (providers, _) = reflector::store();
    let (nodes, _) = reflector::store();
    let (ctx, _queues) = Context::new(
        mock_client(log),
        Config::default(),
        Arc::new(Metrics::default()),
        Caches {
            pods,
            providers,
            nodes,
        },
        Arc::new(Readiness::default()),
    );
    ctx
}

fn connect(
    ctx: &Context,
) -> tokio::sync::mpsc::Receiver<Result<pb::OperatorMessage, tonic::Status>> {
    let (tx, rx) = tokio::sync::mpsc::channel(16);
    ctx.registry
        .connect("alice", hello(), tx, pb::Welcome::default(), |_| {});
    rx
}

#[tokio::test]
async fn reconcile_writes_provider_status_and_node_once() {
    let log: Log = Arc::default();
    let ctx = context(log.clone());
    let _rx = connect(&ctx);
    let action = reconcile(Arc::new(provider(None)), ctx.clone())
        .await
        .unwrap();
    // Requeued for the periodic refresh (jittered around the period; see `jitter_stays_within_10_percent`).
    assert_ne!(action, Action::await_change());
    let calls = log.lock().unwrap().clone();
    let paths: Vec<String> = calls
        .iter()
        .map(|(m, u, _)| format!("{m} {}", u.split('?').next().unwrap()))
        .collect();
    assert_eq!(
        paths,
        vec![
            "PATCH /apis/decloud.dev/v1alpha1/providers/alice/status",
            "PATCH /api/v1/nodes/edge-alice",
            "PATCH /api/v1/nodes/edge-alice/status",
        ]
    );
    assert!(
        calls[0].1.contains("fieldManager=decloud-operator") && calls[0].1.contains("force=true")
    );
    let status = &calls[0].2["status"];
    assert_eq!(status["phase"], "Ready");
    assert_eq!(status["allocatable"]["cpu"], "2");
    assert_eq!(
        calls[1].2["metadata"]["labels"]["decloud.dev/provider"],
        "alice"
    );
    assert_eq!(calls[2].2["status"]["conditions"][0]["status"], "True");

    // Idempotent: with the status it just wrote, the Provider is not written again.
    log.lock().unwrap().clear();
    let written: ProviderStatus = serde_json::from_value(status.clone()).unwrap();
    let mut again = provider(None);
    again.status = Some(written);
    reconcile(Arc::new(again), ctx).await.unwrap();
    let calls = log.lock().unwrap().clone();
    assert!(
        calls.iter().all(|(_, u, _)| !u.contains("/providers/")),
        "{calls:?}"
    );
}

#[tokio::test]
async fn cleanup_revokes_the_session_and_removes_node_and_lease() {
    let log: Log = Arc::default();
    let ctx = context(log.clone());
    let mut rx = connect(&ctx);
    let mut deleting = provider(None);
    deleting.metadata.deletion_timestamp =
        Some(serde_json::from_value(json!("2027-01-15T08:00:00Z")).unwrap());
    let action = reconcile(Arc::new(deleting), ctx.clone()).await.unwrap();
    assert_eq!(action, Action::await_change());
    let calls: Vec<String> = log
        .lock()
        .unwrap()
        .iter()
        .map(|(m, u, _)| format!("{m} {}", u.split('?').next().unwrap()))
        .collect();
    assert_eq!(
        calls,
        vec![
            "GET /api/v1/pods",
            "DELETE /api/v1/nodes/edge-alice",
            "DELETE /apis/coordination.k8s.io/v1/namespaces/kube-node-lease/leases/edge-alice",
            "PATCH /apis/decloud.dev/v1alpha1/providers/alice",
        ]
    );
    assert!(ctx.registry.is_revoked("alice"));
    assert!(ctx.registry.with_session("alice", |_| ()).is_none());
    // The edge got Welcome, then the revocation as its stream's final status.
    let mut last = None;
    while let Ok(m) = rx.try_recv() {
        last = Some(m);
    }
    let status = last.unwrap().unwrap_err();
    assert_eq!(status.code(), tonic::Code::PermissionDenied);
}

#[test]
fn jitter_stays_within_10_percent_and_varies() {
    let period = Duration::from_secs(300);
    let samples: Vec<Duration> = (0..200).map(|_| super::jittered(period)).collect();
    for d in &samples {
        assert!(
            *d >= Duration::from_secs(270) && *d <= Duration::from_secs(330),
            "{d:?}"
        );
    }
    let distinct: std::collections::BTreeSet<_> = samples.iter().collect();
    assert!(
        distinct.len() > 100,
        "not jittered: {} distinct",
        distinct.len()
    );
}

#[test]
fn a_planned_drain_is_not_a_crash() {
    use crate::edge::EdgeAvailability;
    use decloud_crds::AvailabilityState;
    let mut v = view(Some(true), Some(1));
    let mut h = hello();
    h.availability = EdgeAvailability::from_proto(&pb::Availability {
        state: pb::availability::State::Draining as i32,
        reason: "owner".into(),
        ..Default::default()
    });
    v.hello = Some(h);
    let pods = [pod("p1", "Running", "100m")];
    let draining = desired_status(&provider(None), &v, &pods, &Config::default(), at(1));
    let a = draining.availability.clone().unwrap();
    assert_eq!(a.state, AvailabilityState::Draining);
    assert_eq!(a.pods_remaining, Some(1));
    // Connected and heartbeating all along: Ready, not NotReady.
    assert_eq!(draining.phase, ProviderPhase::Ready);
    let drained = desired_status(&provider(None), &v, &[], &Config::default(), at(2));
    assert_eq!(
        drained.availability.as_ref().unwrap().state,
        AvailabilityState::Drained
    );
    assert_eq!(
        super::availability_event(None, draining.availability.as_ref()).map(|e| e.0),
        Some("DrainRequested")
    );
    assert_eq!(
        super::availability_event(
            draining.availability.as_ref(),
            drained.availability.as_ref()
        )
        .map(|e| e.0),
        Some("Drained")
    );
    // The same state twice: no second Event.
    assert_eq!(
        super::availability_event(drained.availability.as_ref(), drained.availability.as_ref()),
        None
    );
    // The Node is cordoned as kubectl cordon leaves it.
    let node = super::node::desired_node(&provider(None), &drained, true);
    assert_eq!(node["spec"]["unschedulable"], true);
    assert!(
        node["spec"]["taints"]
            .to_string()
            .contains("node.kubernetes.io/unschedulable")
    );
}
