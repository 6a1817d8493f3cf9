//! The broker and the `Tunnel` RPC over a real loopback gRPC server, with a fake edge driven
//! by the test (a real tonic client speaking the real protocol).

use decloud_proto::edge_client::EdgeClient;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tonic::transport::Channel;

use super::*;

async fn start() -> (EdgeClient<Channel>, Arc<Context>) {
    crate::fixtures::start(true).await
}

use crate::fixtures::fake_session;

fn backend(provider: &str) -> Backend {
    Backend {
        namespace: "default".into(),
        pod: "web-0".into(),
        pod_uid: "uid-web-0".into(),
        provider: provider.into(),
        port: 8080,
    }
}

async fn next_open(rx: &mut mpsc::Receiver<Result<pb::OperatorMessage, Status>>) -> pb::OpenTunnel {
    match rx.recv().await {
        Some(Ok(pb::OperatorMessage {
            kind: Some(pb::operator_message::Kind::OpenTunnel(t)),
        })) => t,
        other => panic!("expected OpenTunnel, got {other:?}"),
    }
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

#[tokio::test]
async fn tunnels_carry_bytes_both_ways_and_fail_fast() {
    let (client, ctx) = start().await;
    let broker = TunnelBroker::new(ctx.clone());

    // No session: fails at once.
    let err = broker.dial(&backend("ghost")).await.err().expect("error");
    assert!(matches!(err, DialError::NotConnected(_)), "{err:?}");

    let mut session = fake_session(&ctx, "alice");
    let dial = tokio::spawn(broker.dial(&backend("alice")));
    let open = next_open(&mut session).await;
    assert_eq!((open.pod_uid.as_str(), open.port), ("uid-web-0", 8080));
    let open_frame = frame(Frame::Open(pb::TunnelOpen {
        tunnel_id: open.tunnel_id,
    }));

    // Another provider may not open alice's tunnel.
    let (_tx, res) = tunnel_rpc(&client, "mallory", vec![open_frame.clone()]).await;
    let status = res.expect_err("refused");
    assert_eq!(status.code(), tonic::Code::PermissionDenied, "{status:?}");

    // Alice's edge opens it and echoes every data frame.
    let (edge_tx, res) = tunnel_rpc(
        &client,
        "alice",
        vec![open_frame, frame(Frame::Data(Bytes::new()))],
    )
    .await;
    let mut inbound = res.expect("tunnel accepted");
    tokio::spawn(async move {
        // Echo until the operator ends the RPC; dropping the response stream earlier would
        // reset the whole HTTP/2 stream, losing echoed frames not yet sent.
        while let Ok(Some(f)) = inbound.message().await {
            if edge_tx.send(f).await.is_err() {
                break;
            }
        }
    });
    let io = dial.await.expect("join").expect("dialled");
    let (mut r, mut w) = tokio::io::split(io);
    let payload: Vec<u8> = (0..3 * 1024 * 1024 + 17).map(|i| (i % 251) as u8).collect();
    let expected = payload.clone();
    let writer = tokio::spawn(async move {
        w.write_all(&payload).await.expect("write");
        w.shutdown().await.expect("shutdown");
        w
    });
    let mut echoed = Vec::new();
    r.read_to_end(&mut echoed)
        .await
        .expect("read to the clean close");
    assert_eq!(echoed.len(), expected.len());
    assert!(echoed == expected, "echo differs");
    writer.await.expect("writer");
    assert_eq!(ctx.tunnels.len(), 0);

    // The edge cannot reach the port: the dial fails with its reason, at once.
    let dial = tokio::spawn(broker.dial(&backend("alice")));
    let open = next_open(&mut session).await;
    let started = Instant::now();
    let (_tx, _res) = tunnel_rpc(
        &client,
        "alice",
        vec![
            frame(Frame::Open(pb::TunnelOpen {
                tunnel_id: open.tunnel_id,
            })),
            frame(Frame::Close(pb::TunnelClose {
                error: "connection refused".into(),
            })),
        ],
    )
    .await;
    let err = dial.await.expect("join").err().expect("refused");
    assert!(
        matches!(&err, DialError::Refused(m) if m.contains("connection refused")),
        "{err:?}"
    );
    assert!(started.elapsed() < Duration::from_secs(1));

    // The edge never answers: the dial times out, and a late answer is turned away.
    let dial = tokio::spawn(broker.dial(&backend("alice")));
    let open = next_open(&mut session).await;
    let err = dial.await.expect("join").err().expect("timeout");
    assert!(matches!(err, DialError::Timeout(_)), "{err:?}");
    let (_tx, res) = tunnel_rpc(
        &client,
        "alice",
        vec![frame(Frame::Open(pb::TunnelOpen {
            tunnel_id: open.tunnel_id,
        }))],
    )
    .await;
    assert_eq!(res.expect_err("not awaited").code(), tonic::Code::NotFound);
    assert_eq!(ctx.tunnels.len(), 0);
}

#[tokio::test]
async fn an_edge_carries_at_most_its_share_of_tunnels_and_a_full_queue_fails_one_request() {
    let config = crate::Config {
        max_tunnels_per_edge: 2,
        ..crate::Config::default()
    };
    let ctx = crate::fixtures::context_with(Vec::new(), true, config);
    let broker = TunnelBroker::new(ctx.clone());
    let mut session = fake_session(&ctx, "alice");
    // Two dials wait for the edge; a third is refused at once, and no OpenTunnel goes out.
    let first = tokio::spawn(broker.dial(&backend("alice")));
    let second = tokio::spawn(broker.dial(&backend("alice")));
    next_open(&mut session).await;
    next_open(&mut session).await;
    let started = Instant::now();
    let err = broker.dial(&backend("alice")).await.err().expect("refused");
    assert!(matches!(err, DialError::Busy(_)), "{err:?}");
    assert!(started.elapsed() < Duration::from_millis(500));
    assert!(session.try_recv().is_err(), "nothing asked of the edge");
    // Another edge has its own share.
    let mut other = fake_session(&ctx, "bob");
    let bob = tokio::spawn(broker.dial(&backend("bob")));
    next_open(&mut other).await;
    // When a dial ends (here: the edge never answers), its slot is free again.
    assert!(matches!(
        first.await.unwrap().err(),
        Some(DialError::Timeout(_))
    ));
    assert!(matches!(
        second.await.unwrap().err(),
        Some(DialError::Timeout(_))
    ));
    let _ = bob.await;
    assert_eq!(ctx.tunnel_slots.held(&"alice".to_string()), 0);
    let again = tokio::spawn(broker.dial(&backend("alice")));
    next_open(&mut session).await;
    again.abort();
}

#[tokio::test]
async fn a_session_queue_short_of_room_fails_the_tunnel_not_the_session() {
    let ctx = crate::fixtures::context(Vec::new(), true);
    let broker = TunnelBroker::new(ctx.clone());
    // A session whose edge reads nothing: its queue fills with pod state.
    let (tx, _rx) = tokio::sync::mpsc::channel(crate::edge::SESSION_QUEUE);
    let (_, close, _) = ctx.registry.connect(
        "slow",
        crate::edge::HelloInfo::default(),
        tx.clone(),
        pb::Welcome::default(),
        |_| {},
    );
    while tx.capacity() > crate::edge::SESSION_QUEUE / 8 {
        tx.try_send(Ok(pb::OperatorMessage::default())).unwrap();
    }
    let err = broker.dial(&backend("slow")).await.err().expect("refused");
    assert!(matches!(err, DialError::Busy(_)), "{err:?}");
    assert!(!close.is_cancelled(), "the session stays open");
}
