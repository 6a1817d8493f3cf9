//! The relay over a real loopback gRPC server, with a fake edge driven by the test.

use bytes::Bytes;
use decloud_proto::edge_client::EdgeClient;
use tonic::transport::Channel;

use super::*;
use crate::fixtures::fake_session;

fn pod(name: &str, node: &str, running: bool) -> Pod {
    let state = if running {
        serde_json::json!({"running": {}})
    } else {
        serde_json::json!({"waiting": {"reason": "ContainerCreating"}})
    };
    serde_json::from_value(serde_json::json!({
        "metadata": {"name": name, "namespace": "default", "uid": format!("uid-{name}")},
        "spec": {"nodeName": node, "containers": [{"name": "web", "image": "x"}]},
        "status": {"phase": "Running", "containerStatuses": [{
            "name": "web", "image": "x", "imageID": "", "ready": true, "restartCount": 0,
            "state": state,
        }]},
    }))
    .expect("pod")
}

async fn start() -> (EdgeClient<Channel>, Arc<Context>) {
    crate::fixtures::start_over(
        vec![
            pod("web-0", "edge-alice", true),
            pod("starting", "edge-alice", false),
            pod("elsewhere", "worker-1", true),
        ],
        true,
    )
    .await
}

fn req(pod: &str, container: &str, command: &[&str]) -> ExecRequest {
    ExecRequest {
        namespace: "default".into(),
        pod: pod.into(),
        container: container.into(),
        command: command.iter().map(|s| s.to_string()).collect(),
        stdin: true,
        stdout: true,
        stderr: true,
        ..Default::default()
    }
}

#[tokio::test]
async fn only_running_containers_of_edge_pods_with_bounded_commands() {
    let (_client, ctx) = start().await;
    let relay = StreamRelay::new(ctx);
    let refused = |r: &ExecRequest| relay.check_exec(r).err().map(|e| e.to_string());
    assert_eq!(refused(&req("web-0", "web", &["true"])), None);
    assert_eq!(
        refused(&req("nope", "web", &["true"])).as_deref(),
        Some("pod does not exist")
    );
    assert_eq!(
        refused(&req("elsewhere", "web", &["true"])).as_deref(),
        Some("pod does not exist"),
        "a pod on a node that is no DeCloud edge is not this kubelet's"
    );
    assert_eq!(
        refused(&req("starting", "web", &["true"])).as_deref(),
        Some("container not found (\"web\")")
    );
    assert_eq!(
        refused(&req("web-0", "side", &["true"])).as_deref(),
        Some("container not found (\"side\")")
    );
    let mut wrong_uid = req("web-0", "web", &["true"]);
    wrong_uid.pod_uid = Some("other".into());
    assert_eq!(refused(&wrong_uid).as_deref(), Some("pod not found"));
    let long: Vec<&str> = vec!["a"; pb::MAX_EXEC_ARGS + 1];
    assert!(matches!(
        relay.check_exec(&req("web-0", "web", &long)),
        Err(StreamError::Invalid(_))
    ));
    let huge = "x".repeat(pb::MAX_EXEC_COMMAND_BYTES + 1);
    assert!(matches!(
        relay.check_exec(&req("web-0", "web", &[&huge])),
        Err(StreamError::Invalid(_))
    ));
}

/// Opens a Tunnel RPC as `provider`, sending `frames` first.
async fn tunnel_rpc(
    client: &EdgeClient<Channel>,
    provider: &str,
    frames: Vec<pb::TunnelFrame>,
) -> (
    mpsc::Sender<pb::TunnelFrame>,
    Result<Streaming<pb::TunnelFrame>, Status>,
) {
    let (tx, rx) = mpsc::channel(64);
    for f in frames {
        tx.send(f).await.expect("queue");
    }
    let mut request = tonic::Request::new(ReceiverStream::new(rx));
    request
        .metadata_mut()
        .insert("decloud-provider", provider.parse().expect("ascii"));
    let res = client.clone().tunnel(request).await.map(|r| r.into_inner());
    (tx, res)
}

fn f(kind: Frame) -> pb::TunnelFrame {
    pb::TunnelFrame { kind: Some(kind) }
}

#[tokio::test]
async fn exec_rides_an_edge_tunnel_only_the_asked_edge_opens() {
    let (client, ctx) = start().await;
    let relay = StreamRelay::new(ctx.clone());
    let mut session = fake_session(&ctx, "alice");
    let mut r = req("web-0", "web", &["sh", "-c", "x"]);
    r.tty = true;
    r.stderr = false;
    let exec = tokio::spawn(relay.exec(r));
    let open = match session.recv().await {
        Some(Ok(pb::OperatorMessage {
            kind: Some(pb::operator_message::Kind::OpenExec(o)),
        })) => o,
        other => panic!("expected OpenExec, got {other:?}"),
    };
    assert_eq!(
        (
            open.pod_uid.as_str(),
            open.container.as_str(),
            open.command.len()
        ),
        ("uid-web-0", "web", 3)
    );
    assert!(open.tty && open.stdin && open.stdout && !open.stderr && !open.attach);
    assert_eq!(ctx.tunnel_slots.held(&"alice".to_string()), 1);

    let first = f(Frame::ExecOpen(pb::ExecOpen {
        tunnel_id: open.tunnel_id,
    }));
    let (_tx, res) = tunnel_rpc(&client, "mallory", vec![first.clone()]).await;
    assert_eq!(
        res.expect_err("refused").code(),
        tonic::Code::PermissionDenied
    );

    let (edge_tx, res) = tunnel_rpc(
        &client,
        "alice",
        vec![first, f(Frame::Stdout(Bytes::from_static(b"hi")))],
    )
    .await;
    let mut from_operator = res.expect("opened");
    let mut io = exec.await.expect("join").expect("exec");
    assert_eq!(
        io.output.recv().await,
        Some(ExecOutput::Stdout(Bytes::from_static(b"hi")))
    );
    io.input
        .send(ExecInput::Stdin(Bytes::from_static(b"in")))
        .await
        .expect("stdin");
    io.input
        .send(ExecInput::Resize {
            width: 80,
            height: 24,
        })
        .await
        .expect("resize");
    io.input.send(ExecInput::StdinEof).await.expect("eof");
    let mut got = Vec::new();
    for _ in 0..3 {
        got.push(
            from_operator
                .message()
                .await
                .expect("frame")
                .expect("some")
                .kind,
        );
    }
    assert_eq!(
        got,
        vec![
            Some(Frame::Stdin(Bytes::from_static(b"in"))),
            Some(Frame::Resize(pb::TerminalSize {
                width: 80,
                height: 24
            })),
            Some(Frame::StdinEof(pb::StdinEof {})),
        ]
    );
    edge_tx
        .send(f(Frame::Exit(pb::ExecExit {
            exit_code: 7,
            error: String::new(),
        })))
        .await
        .expect("exit");
    assert_eq!(io.output.recv().await, Some(ExecOutput::Exited(7)));
    assert_eq!(io.output.recv().await, None);
    // The slot is released once the session ends.
    drop(io);
    for _ in 0..50 {
        if ctx.tunnel_slots.held(&"alice".to_string()) == 0 {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
    assert_eq!(ctx.tunnel_slots.held(&"alice".to_string()), 0);
}

#[tokio::test]
async fn an_edge_that_never_opens_times_out_and_a_missing_edge_fails_at_once() {
    let (_client, ctx) = start().await;
    let relay = StreamRelay::new(ctx.clone());
    let err = relay
        .exec(req("web-0", "web", &["true"]))
        .await
        .err()
        .expect("no session");
    assert!(matches!(err, StreamError::Unavailable(_)), "{err:?}");
    let _session = fake_session(&ctx, "alice");
    let err = relay
        .exec(req("web-0", "web", &["true"]))
        .await
        .err()
        .expect("never opened");
    assert!(matches!(err, StreamError::Edge(_)), "{err:?}");
    assert_eq!(ctx.execs.len(), 0, "the pending exec is forgotten");
}
