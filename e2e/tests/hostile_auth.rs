//! Hostile callers of the edge endpoint (issue 14, item 6): refusing attackers must not lock
//! out honest edges behind the same address, and before a caller has proved who it is the
//! operator does no expensive work. A real kube-apiserver, the real `decloud-operator` over
//! TLS on loopback, a real `edge-kubelet`, and a hand-written tonic client.

use std::time::{Duration, Instant};

use anyhow::{Context as _, ensure};
use decloud_crds::{Provider, ProviderPhase};
use decloud_e2e::cluster::{EdgeProcess, OperatorProcess, create_join_token};
use decloud_e2e::raw_edge::{channel, operator_ca, register};
use decloud_e2e::{TestEnv, eventually};
use decloud_proto as pb;
use kube::Client;
use kube::api::Api;
use pb::edge_client::EdgeClient;
use pb::edge_message::Kind as Out;
use tokio::io::AsyncReadExt;
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tonic::transport::Channel;

/// Opens a Session with `credential` as the bearer, sending `first` (if any) as its first
/// message; the operator's answer (the response stream, or the refusal).
async fn session(
    ch: &Channel,
    credential: &str,
    first: Option<pb::EdgeMessage>,
) -> Result<
    (
        mpsc::Sender<pb::EdgeMessage>,
        tonic::Streaming<pb::OperatorMessage>,
    ),
    tonic::Status,
> {
    let (tx, rx) = mpsc::channel(4);
    if let Some(m) = first {
        tx.send(m).await.expect("queue");
    }
    let mut req = tonic::Request::new(ReceiverStream::new(rx));
    req.metadata_mut().insert(
        "authorization",
        format!("Bearer {credential}").parse().unwrap(),
    );
    let inbound = EdgeClient::new(ch.clone()).session(req).await?.into_inner();
    Ok((tx, inbound))
}

fn hello(name: &str) -> pb::EdgeMessage {
    pb::EdgeMessage {
        kind: Some(Out::Hello(pb::Hello {
            provider_name: name.into(),
            agent_version: "hand-written".into(),
            ..Default::default()
        })),
    }
}

async fn phase_becomes(client: &Client, name: &str, phase: ProviderPhase) -> anyhow::Result<()> {
    eventually(Duration::from_secs(30), || async {
        let p = Api::<Provider>::all(client.clone()).get(name).await?;
        let now = p.status.map(|s| s.phase);
        ensure!(
            now.as_ref() == Some(&phase),
            "{name} is {now:?}, not {phase:?} yet"
        );
        Ok(())
    })
    .await
}

/// An attacker behind the honest edges' address burns its refusal budget: honest edges keep
/// their sessions and reconnect, a good join token still joins, and only the attacker's
/// forgeries are refused up front.
#[tokio::test]
async fn an_attacker_at_the_same_address_does_not_lock_out_honest_edges() -> anyhow::Result<()> {
    let env = TestEnv::start().await?;
    let client = env.client();
    let operator = OperatorProcess::start(
        &env,
        &["--failed-auth-burst", "3", "--failed-auth-per-minute", "1"],
    )
    .await?;
    let ch = channel(&operator, &operator_ca(&client).await?).await?;
    let (token, _) = create_join_token(env.kubeconfig(), "1h")?;
    // An honest edge-kubelet on this machine (127.0.0.1, like the attacker).
    let mut honest = EdgeProcess::start_simulated(&env, &operator, "auth-honest")?;
    phase_becomes(&client, "auth-honest", ProviderPhase::Ready).await?;

    // The attacker spends the address's budget with forged credentials and bad tokens.
    let forged = format!("auth-mallory.{}", "0".repeat(64));
    for _ in 0..3 {
        let e = session(&ch, &forged, Some(hello("auth-mallory")))
            .await
            .err()
            .context("a forged credential opened a session")?;
        ensure!(e.code() == tonic::Code::Unauthenticated, "{e:?}");
    }
    let e = register(&ch, "abcdef.wrongwrongwrongwrongwrongwrong", "auth-mallory")
        .await
        .expect_err("a wrong token was accepted");
    ensure!(e.code() == tonic::Code::Unauthenticated, "{e:?}");
    // From now on the attacker is refused before any API call...
    let e = session(&ch, &forged, Some(hello("auth-mallory")))
        .await
        .err()
        .context("a forged credential opened a session")?;
    ensure!(
        e.code() == tonic::Code::ResourceExhausted && e.message().contains("too many refused"),
        "{e:?}"
    );
    let e = register(&ch, "abcdef.wrongwrongwrongwrongwrongwrong", "auth-mallory")
        .await
        .expect_err("a wrong token was accepted");
    ensure!(e.code() == tonic::Code::ResourceExhausted, "{e:?}");

    // ...but a good token from the same address joins at once,
    let started = Instant::now();
    let credential = register(&ch, &token, "auth-late")
        .await
        .context("a good token was refused because of others' failures")?;
    println!(
        "good token joined {:.0} ms after the address ran out of budget",
        started.elapsed().as_secs_f64() * 1000.0
    );
    // its credential opens a session,
    let (_tx, mut inbound) = session(&ch, &credential, Some(hello("auth-late")))
        .await
        .context("a valid credential was refused because of others' failures")?;
    let first = tokio::time::timeout(Duration::from_secs(10), inbound.message())
        .await
        .context("no Welcome")??
        .context("closed")?;
    ensure!(
        matches!(first.kind, Some(pb::operator_message::Kind::Welcome(_))),
        "{first:?}"
    );
    // and the honest edge, killed until it is NotReady and restarted, reconnects (with its
    // stored credential, from the same address) and is Ready again.
    honest.child.kill();
    phase_becomes(&client, "auth-honest", ProviderPhase::NotReady).await?;
    let mut restarted = EdgeProcess::start_simulated(&env, &operator, "auth-honest")?;
    phase_becomes(&client, "auth-honest", ProviderPhase::Ready).await?;
    let throttled = operator
        .metric("decloud_operator_auth_throttled_total", "")
        .await?
        .unwrap_or(0.0);
    ensure!(throttled >= 2.0, "auth_throttled {throttled}");
    restarted.child.kill();
    Ok(())
}

/// Before a credential is checked nothing of the stream is read; a Session that proves who it
/// is but sends no Hello is closed within seconds; connections per address are capped.
#[tokio::test]
async fn unauthenticated_callers_cost_little() -> anyhow::Result<()> {
    let env = TestEnv::start().await?;
    let client = env.client();
    let operator = OperatorProcess::start(&env, &["--max-connections-per-address", "4"]).await?;
    let ca = operator_ca(&client).await?;
    let ch = channel(&operator, &ca).await?;
    let (token, _) = create_join_token(env.kubeconfig(), "1h")?;

    // A 3 MiB Hello without a credential is refused without being decoded: the refusal names
    // the missing credential, not the message.
    let big = pb::EdgeMessage {
        kind: Some(Out::Hello(pb::Hello {
            provider_name: "auth-big".into(),
            agent_version: "x".repeat(3 << 20),
            ..Default::default()
        })),
    };
    let (tx, rx) = mpsc::channel(1);
    tx.send(big).await?;
    let e = EdgeClient::new(ch.clone())
        .session(tonic::Request::new(ReceiverStream::new(rx)))
        .await
        .err()
        .context("a session without a credential was accepted")?;
    ensure!(
        e.code() == tonic::Code::Unauthenticated && e.message().contains("no credential"),
        "{e:?}"
    );

    // A valid credential with no Hello: closed after the Hello timeout (5 s), not held open.
    let credential = register(&ch, &token, "auth-silent").await?;
    let started = Instant::now();
    let e = session(&ch, &credential, None)
        .await
        .err()
        .context("a session without a Hello was kept")?;
    let waited = started.elapsed();
    ensure!(
        e.code() == tonic::Code::DeadlineExceeded && waited < Duration::from_secs(8),
        "{e:?} after {waited:?}"
    );
    println!("a session without a Hello was closed after {waited:.1?}");
    let phase = Api::<Provider>::all(client.clone())
        .get("auth-silent")
        .await?
        .status
        .map(|s| s.phase);
    ensure!(
        phase != Some(ProviderPhase::Ready),
        "a Hello-less session made the provider Ready"
    );

    // Connections per address: our gRPC channel holds one; three more raw sockets fill the
    // cap of 4 and a fifth is closed at once, while the held ones stay open.
    let port = operator.edge_port;
    let mut held = Vec::new();
    for _ in 0..3 {
        held.push(tokio::net::TcpStream::connect(("127.0.0.1", port)).await?);
    }
    let mut refused = tokio::net::TcpStream::connect(("127.0.0.1", port)).await?;
    let mut buf = [0u8; 16];
    let n = tokio::time::timeout(Duration::from_secs(5), refused.read(&mut buf))
        .await
        .context("the connection beyond the cap was kept open")?
        .unwrap_or(0);
    ensure!(n == 0, "the connection beyond the cap was answered");
    for s in &held {
        let mut one = [0u8; 1];
        ensure!(
            matches!(s.try_read(&mut one), Err(ref e) if e.kind() == std::io::ErrorKind::WouldBlock),
            "a connection within the cap was closed"
        );
    }
    let refused_total = operator
        .metric("decloud_operator_edge_connections_refused_total", "")
        .await?
        .unwrap_or(0.0);
    ensure!(
        refused_total >= 1.0,
        "edge_connections_refused {refused_total}"
    );
    drop(held);
    // Closed connections free their slots: a new client connects and is served.
    let ch2 = eventually(Duration::from_secs(10), || async {
        let ch2 = channel(&operator, &ca).await?;
        register(&ch2, "abcdef.wrongwrongwrongwrongwrongwrong", "auth-x")
            .await
            .err()
            .filter(|e| e.code() == tonic::Code::Unauthenticated)
            .context("not served")?;
        Ok(ch2)
    })
    .await?;
    drop(ch2);
    Ok(())
}
