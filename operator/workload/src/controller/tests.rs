//! One reconcile step against a mock API server.

use std::convert::Infallible;

use super::*;
use decloud_crds::{
    Condition, Container, PodSpec, PodTemplate, ProviderPhase, ProviderSpec, ProviderStatus,
    ResourceOffer, WorkloadSpec,
};
use http::{Request, Response};
use kube::{
    client::Body,
    runtime::{reflector::store::Writer, watcher},
};
use serde_json::{Value, json};

/// Every request the mock saw: method, path, query, JSON body.
type Log = Arc<Mutex<Vec<(String, String, String, Value)>>>;

fn mock_client(log: Log, pods: Value) -> Client {
    let service = tower::service_fn(move |req: Request<Body>| {
        let log = log.clone();
        let pods = pods.clone();
        async move {
            let method = req.method().to_string();
            let path = req.uri().path().to_string();
            let query = req.uri().query().unwrap_or_default().to_string();
            let bytes = req.into_body().collect_bytes().await.expect("body");
            let body: Value = serde_json::from_slice(&bytes).unwrap_or(Value::Null);
            let n = {
                let mut log = log.lock().expect("log");
                log.push((method.clone(), path.clone(), query, body.clone()));
                log.len()
            };
            let reply = match (method.as_str(), path.as_str()) {
                ("GET", "/api/v1/namespaces/default/pods") => pods,
                ("POST", "/api/v1/namespaces/default/pods") => {
                    let mut pod = body;
                    let name = format!(
                        "{}{n:05}",
                        pod["metadata"]["generateName"].as_str().unwrap_or_default()
                    );
                    pod["metadata"]["name"] = json!(name);
                    pod["status"] = json!({"phase": "Pending"});
                    pod
                }
                ("DELETE", _) => json!({"kind": "Status", "apiVersion": "v1", "status": "Success"}),
                (_, p) if p.contains("/events") => body,
                ("PATCH", p) if p.ends_with("/status") => {
                    let mut wl = serde_json::to_value(workload()).expect("json");
                    wl["status"] = body["status"].clone();
                    wl
                }
                _ => panic!("unexpected request {method} {path}"),
            };
            let bytes = serde_json::to_vec(&reply).expect("json");
            Ok::<_, Infallible>(Response::new(Body::from(bytes)))
        }
    });
    Client::new(service, "default")
}

fn workload() -> Workload {
    let mut wl = Workload::new(
        "hello",
        WorkloadSpec {
            replicas: 2,
            template: PodTemplate {
                metadata: None,
                spec: PodSpec {
                    containers: vec![Container {
                        name: "web".into(),
                        image: "decloud-demo/hello:1".into(),
                        ..Default::default()
                    }],
                    ..Default::default()
                },
            },
            placement: None,
            expose: None,
            failover: None,
            service_access: None,
            volume_claim_templates: Vec::new(),
            persistence: None,
        },
    );
    wl.metadata.namespace = Some("default".into());
    wl.metadata.uid = Some("wl-uid".into());
    wl.metadata.generation = Some(1);
    wl.metadata.finalizers = Some(vec![WORKLOAD_FINALIZER.into()]);
    wl
}

fn provider(name: &str, phase: ProviderPhase, reliability: &str) -> Provider {
    let mut p = Provider::new(name, ProviderSpec::default());
    p.status = Some(ProviderStatus {
        phase,
        node_name: Some(format!("edge-{name}")),
        allocatable: Some(ResourceOffer {
            cpu: Some("2".into()),
            memory: Some("4Gi".into()),
            pods: Some(10),
            storage: None,
        }),
        reliability: Some(reliability.into()),
        conditions: vec![Condition {
            type_: "Ready".into(),
            status: if phase == ProviderPhase::Ready {
                "True"
            } else {
                "False"
            }
            .into(),
            last_transition_time: Some("2020-01-01T00:00:00Z".into()),
            ..Default::default()
        }],
        ..Default::default()
    });
    p
}

fn context(client: Client, providers: Vec<Provider>) -> Arc<Context> {
    let mut writer: Writer<Provider> = Writer::new(());
    for p in providers {
        writer.apply_watcher_event(&watcher::Event::Apply(p));
    }
    Arc::new(Context {
        recorder: Recorder::new(client.clone(), WORKLOAD_FIELD_MANAGER.into()),
        client,
        certificates: None,
        config: Config::default(),
        providers: writer.as_reader(),
        pods: Writer::<Pod>::new(()).as_reader(),
        workloads: Writer::<Workload>::new(()).as_reader(),
        namespaces: Writer::<Namespace>::new(()).as_reader(),
        outages: OutageClock::default(),
        assumed: Mutex::default(),
        placing: tokio::sync::Mutex::new(()),
    })
}

#[tokio::test]
async fn first_reconcile_places_replicas_and_writes_status() {
    let log = Log::default();
    let empty = json!({"apiVersion": "v1", "kind": "PodList", "metadata": {}, "items": []});
    let client = mock_client(log.clone(), empty);
    let ctx = context(
        client,
        vec![
            provider("alice", ProviderPhase::Ready, "0.99"),
            provider("bob", ProviderPhase::Ready, "0.999"),
            provider("carol", ProviderPhase::Ready, "0.5"),
            provider("dave", ProviderPhase::NotReady, "1"),
        ],
    );
    let action = reconcile(Arc::new(workload()), ctx)
        .await
        .expect("reconcile");
    assert_eq!(action, Action::requeue(crate::rollout::BUSY_REQUEUE));

    let log = log.lock().expect("log");
    let created: Vec<&Value> = log
        .iter()
        .filter(|(m, p, _, _)| m == "POST" && p == "/api/v1/namespaces/default/pods")
        .map(|(_, _, _, body)| body)
        .collect();
    let nodes: Vec<&str> = created
        .iter()
        .map(|pod| pod["spec"]["nodeName"].as_str().expect("nodeName"))
        .collect();
    assert_eq!(
        nodes,
        ["edge-bob", "edge-alice"],
        "most reliable Ready providers first"
    );
    assert_eq!(created[0]["metadata"]["labels"][WORKLOAD_LABEL], "hello");
    assert_eq!(
        created[0]["metadata"]["ownerReferences"][0]["uid"],
        "wl-uid"
    );

    let (_, _, query, patch) = log
        .iter()
        .find(|(m, p, _, _)| m == "PATCH" && p.ends_with("/workloads/hello/status"))
        .expect("status patch");
    assert!(query.contains("fieldManager=decloud-workload"), "{query}");
    assert!(query.contains("force=true"), "{query}");
    let status = &patch["status"];
    assert_eq!(status["replicas"], 2);
    assert_eq!(status["readyReplicas"], 0);
    assert_eq!(status["url"], "http://hello.default.decloud.localhost");
    assert_eq!(status["placements"].as_array().map(Vec::len), Some(2));
    let events = log
        .iter()
        .filter(|(_, p, _, _)| p.contains("/events"))
        .count();
    assert_eq!(events, 2, "one Placed event per replica");
}

#[tokio::test]
async fn cleanup_force_deletes_pods_on_lost_providers_and_keeps_the_finalizer() {
    let log = Log::default();
    let pod = |name: &str, node: &str| {
        json!({
            "apiVersion": "v1", "kind": "Pod",
            "metadata": {
                "name": name, "namespace": "default",
                "labels": {WORKLOAD_LABEL: "hello"},
                "ownerReferences": [{"apiVersion": "decloud.dev/v1alpha1", "kind": "Workload",
                    "name": "hello", "uid": "wl-uid", "controller": true}],
            },
            "spec": {"nodeName": node, "containers": [{"name": "web"}]},
        })
    };
    let pods = json!({"apiVersion": "v1", "kind": "PodList", "metadata": {},
        "items": [pod("hello-1", "edge-alice"), pod("hello-2", "edge-dave")]});
    let client = mock_client(log.clone(), pods);
    let ctx = context(
        client,
        vec![
            provider("alice", ProviderPhase::Ready, "0.99"),
            provider("dave", ProviderPhase::NotReady, "1"),
        ],
    );
    let mut wl = workload();
    wl.metadata.deletion_timestamp = Some(k8s_openapi::apimachinery::pkg::apis::meta::v1::Time(
        Timestamp::now(),
    ));
    let err = reconcile(Arc::new(wl), ctx).await.expect_err("pods remain");
    assert!(matches!(err.inner(), Error::PodsRemaining(2)), "{err}");

    let log = log.lock().expect("log");
    let deletes: Vec<(&str, Option<i64>)> = log
        .iter()
        .filter(|(m, _, _, _)| m == "DELETE")
        .map(|(_, p, _, body)| {
            (
                p.rsplit('/').next().unwrap_or_default(),
                body["gracePeriodSeconds"].as_i64(),
            )
        })
        .collect();
    assert_eq!(deletes, [("hello-1", None), ("hello-2", Some(0))]);
    assert!(
        !log.iter().any(|(m, _, _, _)| m == "PATCH"),
        "the finalizer stays while pods remain"
    );
}

// === plan ===

fn ready_candidate(name: &str) -> Candidate {
    Candidate {
        name: name.into(),
        labels: Default::default(),
        readiness: crate::placement::Readiness::Ready,
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

fn replica(pod: &str, provider: &str, verdict: crate::failover::Verdict) -> Observed {
    Observed {
        pod: pod.into(),
        provider: provider.into(),
        hash: "h1".into(),
        phase: "Running".into(),
        ready: true,
        terminating: false,
        verdict,
        draining: false,
    }
}

fn snapshot(observed: Vec<Observed>, candidates: Vec<Candidate>) -> Snapshot {
    Snapshot {
        desired: 1,
        hash: "h1".into(),
        per_replica: Resources::pod(100, 32 << 20),
        grace_seconds: 5,
        placement: Placement::default(),
        node_selector: BTreeMap::new(),
        nodes: candidates
            .iter()
            .map(|c| (c.name.clone(), format!("edge-{}", c.name)))
            .collect(),
        observed,
        candidates,
        host: HostClaim::None,
        tcp: None,
        now: Timestamp::now(),
        name: "web".into(),
        stateful: None,
    }
}

#[test]
fn plan_table() {
    use crate::failover::Verdict;
    let lost = Verdict::Replace {
        down_for: Duration::from_secs(9),
    };
    struct Case {
        name: &'static str,
        snapshot: Snapshot,
        /// `(pod, force)` deleted.
        deletes: Vec<(&'static str, bool)>,
        /// `(provider, node)` created on.
        creates: Vec<(&'static str, &'static str)>,
    }
    let mut renamed = snapshot(vec![], vec![ready_candidate("bob")]);
    renamed.nodes.insert("bob".into(), "edge-bob-2".into());
    let mut unnamed = snapshot(vec![], vec![ready_candidate("carol")]);
    unnamed.nodes.clear();
    let on = |name: &str, arch: &str| {
        let mut c = ready_candidate(name);
        c.labels.insert(ARCH_LABEL.to_string(), arch.to_string());
        c
    };
    let mut arm = snapshot(
        vec![],
        vec![
            on("a-amd", "amd64"),
            on("b-arm", "arm64"),
            ready_candidate("c-unknown"),
        ],
    );
    arm.node_selector = BTreeMap::from([(ARCH_LABEL.to_string(), "arm64".to_string())]);
    let cases = vec![
        Case {
            name: "a settled replica is kept",
            snapshot: snapshot(
                vec![replica("p1", "alice", Verdict::Keep)],
                vec![ready_candidate("alice"), ready_candidate("bob")],
            ),
            deletes: vec![],
            creates: vec![],
        },
        Case {
            name: "failover force-deletes the lost replica and places one elsewhere",
            snapshot: snapshot(
                vec![replica("p1", "dave", lost)],
                vec![ready_candidate("alice")],
            ),
            deletes: vec![("p1", true)],
            creates: vec![("alice", "edge-alice")],
        },
        Case {
            name: "a create goes to the node the Provider reports",
            snapshot: renamed,
            deletes: vec![],
            creates: vec![("bob", "edge-bob-2")],
        },
        Case {
            name: "an arm64 template goes to the arm64 provider only",
            snapshot: arm,
            deletes: vec![],
            creates: vec![("b-arm", "edge-b-arm")],
        },
        Case {
            name: "a provider without a known node gets the conventional one",
            snapshot: unnamed,
            deletes: vec![],
            creates: vec![("carol", "edge-carol")],
        },
    ];
    for case in cases {
        let step = plan(&case.snapshot);
        let deletes: Vec<(&str, bool)> = step
            .plan
            .delete
            .iter()
            .map(|d| (d.pod.as_str(), d.force))
            .collect();
        assert_eq!(deletes, case.deletes, "{}", case.name);
        let creates: Vec<(&str, &str)> = step
            .creates
            .iter()
            .map(|(p, n, _)| (p.as_str(), n.as_str()))
            .collect();
        assert_eq!(creates, case.creates, "{}", case.name);
    }
}

#[test]
fn placement_sees_the_reported_platform_not_the_labels() {
    let mut p = provider("alice", ProviderPhase::Ready, "0.99");
    p.metadata.labels = Some(BTreeMap::from([
        (ARCH_LABEL.to_string(), "arm64".to_string()),
        ("region".to_string(), "eu".to_string()),
    ]));
    let labels = placement_labels(&p);
    assert_eq!(labels.get(ARCH_LABEL), None, "no platform reported yet");
    assert_eq!(labels["region"], "eu");
    p.status.as_mut().expect("status").platform = Some(decloud_crds::Platform {
        os: "linux".into(),
        architecture: "amd64".into(),
        ..Default::default()
    });
    let labels = placement_labels(&p);
    assert_eq!(labels[ARCH_LABEL], "amd64");
    assert_eq!(labels[OS_LABEL], "linux");
}
