//! The relay with a pod cache filled by the test and a fake edge session.

use k8s_openapi::api::core::v1::{Container, PodSpec};
use tokio::sync::mpsc::Receiver;
use tonic::Status;

use super::*;

fn pod(name: &str, node: &str) -> Pod {
    let mut p = Pod::default();
    p.metadata.name = Some(name.into());
    p.metadata.namespace = Some("default".into());
    p.metadata.uid = Some(format!("uid-{name}"));
    p.spec = Some(PodSpec {
        node_name: Some(node.into()),
        containers: vec![Container {
            name: "web".into(),
            ..Default::default()
        }],
        ..Default::default()
    });
    p
}

fn context(pods: Vec<Pod>) -> Arc<Context> {
    crate::fixtures::context(pods, true)
}

use crate::fixtures::fake_session as session;

fn query(pod: &str, container: &str) -> LogQuery {
    LogQuery {
        namespace: "default".into(),
        pod: pod.into(),
        container: container.into(),
        follow: true,
        tail_lines: Some(10),
        ..Default::default()
    }
}

fn chunk(request_id: u64, data: &str, eof: bool, error: &str) -> pb::LogChunk {
    pb::LogChunk {
        request_id,
        data: data.as_bytes().to_vec(),
        eof,
        error: error.into(),
    }
}

async fn next(
    rx: &mut Receiver<Result<pb::OperatorMessage, Status>>,
) -> pb::operator_message::Kind {
    rx.recv()
        .await
        .expect("message")
        .expect("ok")
        .kind
        .expect("kind")
}

#[tokio::test]
async fn relays_chunks_by_request_and_cancels_when_the_client_goes() {
    use pb::operator_message::Kind;
    let ctx = context(vec![pod("web-0", "edge-alice"), pod("db-0", "worker-1")]);
    let relay = LogRelay::new(ctx.clone());

    for (q, words) in [
        (query("nope", "web"), "not found"),
        (query("db-0", "web"), "not on a DeCloud edge"),
        (query("web-0", "sidecar"), "not valid"),
    ] {
        match relay.logs(q).await {
            Err(LogError::NotFound(m)) => assert!(m.contains(words), "{m}"),
            Err(e) => panic!("{e:?}"),
            Ok(_) => panic!("expected an error"),
        }
    }
    assert!(matches!(
        relay.logs(query("web-0", "web")).await,
        Err(LogError::Unavailable(_))
    ));

    let mut rx = session(&ctx, "alice");
    let pending = tokio::spawn(relay.logs(query("web-0", "")));
    let Kind::LogRequest(req) = next(&mut rx).await else {
        panic!("expected a LogRequest");
    };
    assert_eq!(
        (req.pod_uid.as_str(), req.container.as_str()),
        ("uid-web-0", "web")
    );
    assert!(req.follow && req.tail_lines == 10);
    on_chunk(&ctx, "alice", chunk(req.request_id, "line 1\n", false, ""));
    let mut stream = pending.await.expect("join").expect("stream");
    assert_eq!(
        &stream.next().await.expect("item").expect("ok")[..],
        b"line 1\n"
    );
    // Another edge cannot write into alice's stream.
    on_chunk(
        &ctx,
        "mallory",
        chunk(req.request_id, "forged\n", false, ""),
    );
    on_chunk(&ctx, "alice", chunk(req.request_id, "line 2\n", false, ""));
    assert_eq!(
        &stream.next().await.expect("item").expect("ok")[..],
        b"line 2\n"
    );
    drop(stream);
    assert!(matches!(next(&mut rx).await, Kind::LogCancel(c) if c.request_id == req.request_id));
    assert_eq!(ctx.logs.len(), 0);

    // An edge refusal before any byte is an error; eof ends the stream without a cancel.
    let pending = tokio::spawn(relay.logs(query("web-0", "web")));
    let Kind::LogRequest(req) = next(&mut rx).await else {
        panic!("expected a LogRequest");
    };
    on_chunk(
        &ctx,
        "alice",
        chunk(req.request_id, "", true, "no previous instance"),
    );
    assert!(
        matches!(pending.await.expect("join"), Err(LogError::Edge(m)) if m.contains("previous"))
    );
    let pending = tokio::spawn(relay.logs(query("web-0", "web")));
    let Kind::LogRequest(req) = next(&mut rx).await else {
        panic!("expected a LogRequest");
    };
    on_chunk(&ctx, "alice", chunk(req.request_id, "last\n", true, ""));
    let stream = pending.await.expect("join").expect("stream");
    let all: Vec<_> = stream.collect().await;
    assert_eq!(all.len(), 1);
    assert!(rx.try_recv().is_err(), "no LogCancel after eof");
}
