//! The pod side against the real Docker engine: pods run, answer, crash, restart, fail to
//! pull and go away as Kubernetes users expect.

mod common;

use std::sync::Arc;
use std::time::Duration;

use common::*;
use decloud_proto as pb;
use edge_kubelet::{
    DockerRuntime, ImagePolicy, ImageRules, PodSupervisor, PodUpdate, PodWorkerConfig,
    RegistryGuard, StateFile,
};
use pb::container_state::State;

const PATIENCE: Duration = Duration::from_secs(30);

struct Edge {
    pods: Arc<PodSupervisor>,
    _state: tempfile::TempDir,
    _sweeper: ContainerSweeper,
}

/// The test images are built locally (no registry): lent, as a volunteer would.
fn lend_test_images() -> ImageRules {
    ImageRules {
        lent: ImagePolicy::new(["decloud-test/*".to_string()]),
        ..Default::default()
    }
}

async fn edge(test: &str) -> Edge {
    edge_with(test, lend_test_images()).await
}

async fn edge_with(test: &str, rules: ImageRules) -> Edge {
    require_docker();
    let node = format!("edge-{}", unique_node(test));
    let sweeper = ContainerSweeper { node: node.clone() };
    let state = tempfile::tempdir().unwrap();
    let runtime = DockerRuntime::connect(&node, "decloud")
        .await
        .expect("docker")
        .with_image_rules(rules);
    let pods = PodSupervisor::start(
        Arc::new(runtime),
        Some(StateFile::new(state.path(), &node)),
        PodWorkerConfig::default(),
    )
    .await
    .expect("supervisor starts");
    Edge {
        pods,
        _state: state,
        _sweeper: sweeper,
    }
}

async fn status_where(
    e: &Edge,
    uid: &str,
    what: &str,
    f: impl Fn(&pb::PodStatus) -> bool,
) -> pb::PodStatus {
    eventually(what, PATIENCE, async || {
        e.pods.board().get(uid).filter(|s| f(s))
    })
    .await
}

#[tokio::test]
async fn http_pod_runs_is_ready_and_answers_on_its_pod_ip() {
    let image = test_image();
    let e = edge("http").await;
    e.pods.upsert(httpd_pod("u-http", "web", &image)).unwrap();
    let s = status_where(&e, "u-http", "pod Running and ready", |s| {
        s.phase() == pb::PodPhase::Running && s.ready
    })
    .await;
    assert!(s.containers_ready && s.containers[0].ready && s.containers[0].started);
    assert!(!s.pod_ip.is_empty(), "a pod IP on the edge's bridge");
    let body = http_get(&s.pod_ip, 8080).await.expect("pod answers HTTP");
    assert!(
        body.starts_with("HTTP/1.") && body.contains("hello from decloud"),
        "{body}"
    );

    // The container is locked down and labelled as the contracts say.
    let id = container_id(&s).unwrap();
    let fmt = "{{json .HostConfig.CapDrop}}|{{json .HostConfig.CapAdd}}|{{json .HostConfig.SecurityOpt}}|{{.HostConfig.PidsLimit}}|{{.HostConfig.Memory}}|{{.HostConfig.NanoCpus}}|{{.HostConfig.Privileged}}|{{.HostConfig.NetworkMode}}";
    let host = docker(&["inspect", "--format", fmt, &id]);
    let parts: Vec<&str> = host.split('|').collect();
    assert_eq!(parts[0], r#"["ALL"]"#, "{host}");
    assert!(
        parts[1].contains("NET_BIND_SERVICE") && !parts[1].contains("SYS_ADMIN"),
        "{host}"
    );
    assert!(parts[2].contains("no-new-privileges"), "{host}");
    assert_eq!(parts[3], "256");
    assert_eq!(parts[4], (64u64 << 20).to_string());
    assert_eq!(parts[5], "500000000");
    assert_eq!(parts[6], "false");
    assert_eq!(parts[7], "decloud");
    let labels = docker(&["inspect", "--format", "{{json .Config.Labels}}", &id]);
    for want in [
        r#""decloud.dev/managed-by":"edge-kubelet""#,
        r#""decloud.dev/pod-uid":"u-http""#,
        r#""decloud.dev/pod-namespace":"default""#,
        r#""decloud.dev/pod-name":"web""#,
        r#""decloud.dev/container":"main""#,
    ] {
        assert!(labels.contains(want), "{want} missing in {labels}");
    }
    let env = docker(&["inspect", "--format", "{{json .Config.Env}}", &id]);
    assert!(env.contains("GREETING=hi"), "{env}");
}

#[tokio::test]
async fn exit_3_under_never_is_failed_with_exit_code_3() {
    let image = test_image();
    let e = edge("never").await;
    let mut p = pod(
        "u-never",
        "once",
        &image,
        &["sh", "-c", "sleep 0.3; exit 3"],
    );
    p.restart_policy = pb::RestartPolicy::Never as i32;
    e.pods.upsert(p).unwrap();
    let s = status_where(&e, "u-never", "pod Failed", |s| {
        s.phase() == pb::PodPhase::Failed
    })
    .await;
    let c = &s.containers[0];
    match &c.state.as_ref().unwrap().state {
        Some(State::Terminated(t)) => {
            assert_eq!(t.exit_code, 3);
            assert_eq!(t.reason, "Error");
            assert!(t.finished_unix_millis >= t.started_unix_millis && t.started_unix_millis > 0);
        }
        other => panic!("expected terminated, got {other:?}"),
    }
    assert_eq!(c.restart_count, 0);
    assert!(!s.ready);
    // And it stays that way: no restart under Never.
    tokio::time::sleep(Duration::from_secs(3)).await;
    let later = e.pods.board().get("u-never").unwrap();
    assert_eq!(later.phase(), pb::PodPhase::Failed);
    assert_eq!(later.containers[0].restart_count, 0);
}

#[tokio::test]
async fn exit_3_under_always_restarts_with_rising_restart_count() {
    let image = test_image();
    let e = edge("always").await;
    e.pods
        .upsert(pod("u-always", "crash", &image, &["sh", "-c", "exit 3"]))
        .unwrap();
    let mut updates = e.pods.board().subscribe();
    let s = status_where(&e, "u-always", "restart count reaches 2", |s| {
        s.containers[0].restart_count >= 2
    })
    .await;
    assert_eq!(
        s.phase(),
        pb::PodPhase::Running,
        "a restarting pod is Running"
    );
    let last = s.containers[0].last_state.clone().unwrap();
    match last.state {
        Some(State::Terminated(t)) => assert_eq!(t.exit_code, 3),
        other => panic!("expected last state terminated, got {other:?}"),
    }
    // CrashLoopBackOff was reported on the way, with the exit as last state.
    let mut saw_backoff = false;
    while let Ok(u) = updates.try_recv() {
        if let PodUpdate::Status(s) = u
            && let Some(State::Waiting(w)) =
                s.containers[0].state.as_ref().and_then(|c| c.state.clone())
            && w.reason == "CrashLoopBackOff"
        {
            saw_backoff = true;
        }
    }
    assert!(saw_backoff, "CrashLoopBackOff reported");
    // The edge keeps the previous instance (for logs --previous) and no more.
    let all = containers_with_label("decloud.dev/pod-uid", "u-always");
    assert!(!all.is_empty() && all.len() <= 2, "{all:?}");
}

#[tokio::test]
async fn unknown_image_reports_err_image_pull_with_the_engines_message() {
    let _ = test_image();
    // A registry on a closed loopback port, allowed as a provider allows a local mirror: the
    // pull fails at once, and no traffic leaves the machine.
    let image = "127.0.0.1:9/decloud-test/does-not-exist:1";
    let refused = edge("pull-refused").await;
    refused
        .pods
        .upsert(pod("u-pull-r", "nope", image, &[]))
        .unwrap();
    let s = status_where(&refused, "u-pull-r", "ImageNotAllowed", |s| {
        s.reason == "ImageNotAllowed"
    })
    .await;
    assert!(s.message.contains("is an IP address"), "{}", s.message);
    let e = edge_with(
        "pull",
        ImageRules {
            registries: RegistryGuard::new(&["127.0.0.1:9".into()], Default::default()).unwrap(),
            ..lend_test_images()
        },
    )
    .await;
    e.pods.upsert(pod("u-pull", "nope", image, &[])).unwrap();
    let s = status_where(&e, "u-pull", "ErrImagePull", |s| s.reason == "ErrImagePull").await;
    assert_eq!(s.phase(), pb::PodPhase::Pending);
    let Some(State::Waiting(w)) = s.containers[0].state.clone().unwrap().state else {
        panic!("expected waiting: {s:?}");
    };
    assert_eq!(w.reason, "ErrImagePull");
    // The engine's own words name the registry it could not reach.
    assert!(
        w.message.contains("127.0.0.1:9"),
        "engine message: {}",
        w.message
    );
    assert_eq!(s.message, w.message);
    let s = status_where(&e, "u-pull", "ImagePullBackOff", |s| {
        s.reason == "ImagePullBackOff"
    })
    .await;
    assert!(s.message.contains("127.0.0.1:9"), "{}", s.message);
    assert!(containers_with_label("decloud.dev/pod-uid", "u-pull").is_empty());
}

#[tokio::test]
async fn pod_removed_from_the_desired_set_is_stopped_and_removed() {
    let image = test_image();
    let e = edge("set").await;
    let keep = pod("u-keep", "keep", &image, &["sleep", "3600"]);
    let drop_me = pod("u-drop", "drop", &image, &["sleep", "3600"]);
    let mut updates = e.pods.board().subscribe();
    e.pods.apply_pod_set(vec![keep.clone(), drop_me]);
    let k = status_where(&e, "u-keep", "keep Running", |s| {
        s.phase() == pb::PodPhase::Running
    })
    .await;
    status_where(&e, "u-drop", "drop Running", |s| {
        s.phase() == pb::PodPhase::Running
    })
    .await;
    let keep_id = container_id(&k).unwrap();
    assert_eq!(
        containers_with_label("decloud.dev/pod-uid", "u-drop").len(),
        1
    );

    e.pods.apply_pod_set(vec![keep]);
    eventually("PodGone for the dropped pod", PATIENCE, async || {
        loop {
            match updates.try_recv() {
                Ok(PodUpdate::Gone(uid)) if uid == "u-drop" => return Some(()),
                Ok(_) => continue,
                Err(_) => return None,
            }
        }
    })
    .await;
    assert!(
        containers_with_label("decloud.dev/pod-uid", "u-drop").is_empty(),
        "dropped pod's container removed"
    );
    assert!(e.pods.board().get("u-drop").is_none());
    // The pod still wanted is untouched.
    assert_eq!(
        containers_with_label("decloud.dev/pod-uid", "u-keep"),
        vec![keep_id.clone()]
    );
    assert_eq!(
        docker(&["inspect", "--format", "{{.State.Running}}", &keep_id]),
        "true"
    );
    assert_eq!(e.pods.assigned(), vec!["u-keep".to_string()]);
}

#[tokio::test]
async fn containers_it_did_not_create_are_never_touched() {
    let image = test_image();
    let node = format!("edge-{}", unique_node("foreign"));
    let _sweeper = ContainerSweeper { node: node.clone() };
    let other_node = format!("edge-{}", unique_node("other"));
    let _other = ContainerSweeper {
        node: other_node.clone(),
    };
    // One container of another edge, one that merely claims the label without being ours.
    let foreign = docker(&[
        "run",
        "-d",
        // No network: these only have to run, and need nothing of the machine's default bridge.
        "--network",
        "none",
        "--label",
        "decloud.dev/managed-by=edge-kubelet",
        "--label",
        &format!("decloud.dev/node={other_node}"),
        "--label",
        "decloud.dev/pod-uid=u-foreign",
        &image,
        "sleep",
        "3600",
    ]);
    let unlabelled = docker(&[
        "run",
        "-d",
        "--network",
        "none",
        "--label",
        &format!("decloud.dev/node={node}"),
        "--label",
        "decloud.dev/pod-uid=u-x",
        &image,
        "sleep",
        "3600",
    ]);
    assert!(!foreign.is_empty() && !unlabelled.is_empty());
    let state = tempfile::tempdir().unwrap();
    let runtime = DockerRuntime::connect(&node, "decloud")
        .await
        .unwrap()
        .with_image_rules(lend_test_images());
    let pods = PodSupervisor::start(
        Arc::new(runtime),
        Some(StateFile::new(state.path(), &node)),
        PodWorkerConfig::default(),
    )
    .await
    .unwrap();
    pods.apply_pod_set(vec![]);
    pods.delete("u-foreign", Some(Duration::ZERO));
    pods.delete("u-x", Some(Duration::ZERO));
    tokio::time::sleep(Duration::from_secs(2)).await;
    for id in [&foreign, &unlabelled] {
        assert_eq!(
            docker(&["inspect", "--format", "{{.State.Running}}", id]),
            "true",
            "{id} untouched"
        );
    }
    docker(&["rm", "-f", &foreign, &unlabelled]);
}

#[tokio::test]
async fn containers_of_a_pod_share_one_network_namespace_and_exec_probes_work() {
    let image = test_image();
    let e = edge("shared").await;
    let mut p = httpd_pod("u-shared", "duo", &image);
    // The sidecar reaches the web container on localhost, then an exec probe sees the proof.
    let side = pb::ContainerSpec {
        name: "side".into(),
        image: image.clone(),
        command: vec![
            "sh".into(),
            "-c".into(),
            "until wget -q -O /tmp/page http://127.0.0.1:8080/; do sleep 0.2; done; sleep 3600"
                .into(),
        ],
        readiness_probe: Some(pb::Probe {
            handler: Some(pb::probe::Handler::Exec(pb::ExecAction {
                command: vec![
                    "grep".into(),
                    "-q".into(),
                    "hello".into(),
                    "/tmp/page".into(),
                ],
            })),
            period_seconds: 1,
            ..Default::default()
        }),
        ..Default::default()
    };
    p.containers.push(side);
    e.pods.upsert(p).unwrap();
    let s = status_where(&e, "u-shared", "both containers ready", |s| s.ready).await;
    assert_eq!(s.containers.len(), 2);
    assert!(s.containers.iter().all(|c| c.ready && c.restart_count == 0));
    let side_id = s.containers[1]
        .container_id
        .split("://")
        .nth(1)
        .unwrap()
        .to_string();
    let web_id = container_id(&s).unwrap();
    assert_eq!(
        docker(&[
            "inspect",
            "--format",
            "{{.HostConfig.NetworkMode}}",
            &side_id
        ]),
        format!("container:{web_id}")
    );
}
