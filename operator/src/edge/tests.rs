//! The Session handshake over a real loopback socket, with a Kubernetes client that is never
//! reached (these refusals happen before any API call).

use decloud_proto as pb;
use decloud_proto::edge_message::Kind;

use crate::fixtures::start;
use crate::provider::valid_provider_name;

#[test]
fn provider_names() {
    for (name, ok) in [
        ("alice-laptop", true),
        ("a", true),
        ("a.b", true),
        ("", false),
        ("Alice", false),
        ("-a", false),
        ("a-", false),
        ("a_b", false),
        ("a/b", false),
    ] {
        assert_eq!(valid_provider_name(name), ok, "{name:?}");
    }
    assert!(!valid_provider_name(&"a".repeat(201)));
}

fn message(kind: Kind) -> pb::EdgeMessage {
    pb::EdgeMessage { kind: Some(kind) }
}

fn hello(name: &str) -> Kind {
    Kind::Hello(pb::Hello {
        provider_name: name.into(),
        ..Default::default()
    })
}

#[tokio::test]
async fn session_refusals() {
    // (leader?, first message, expected code, words in the message)
    let cases = [
        (false, hello("alice"), tonic::Code::Unavailable, "standby"),
        (
            true,
            Kind::Heartbeat(pb::Heartbeat::default()),
            tonic::Code::FailedPrecondition,
            "must be a Hello",
        ),
        (
            true,
            hello("Not_A_Name"),
            tonic::Code::InvalidArgument,
            "provider name",
        ),
        // A Hello naming another provider than the credential's.
        (
            true,
            hello("bob"),
            tonic::Code::PermissionDenied,
            "belongs to provider \"alice\"",
        ),
        // The API is unreachable: the edge is told to retry, not silently dropped.
        (
            true,
            hello("alice"),
            tonic::Code::Unavailable,
            "Kubernetes API",
        ),
    ];
    for (leader, first, code, words) in cases {
        let (mut client, _ctx) = start(leader).await;
        let mut request = tonic::Request::new(tokio_stream::iter(vec![message(first.clone())]));
        request
            .metadata_mut()
            .insert(decloud_proto::PROVIDER_METADATA, "alice".parse().unwrap());
        let status = client.session(request).await.unwrap_err();
        assert_eq!(status.code(), code, "{first:?}: {status:?}");
        assert!(status.message().contains(words), "{first:?}: {status:?}");
    }
}

#[tokio::test]
async fn a_session_without_credentials_is_refused_before_its_hello_is_read() {
    let (mut client, _ctx) = start(true).await;
    // A Hello that would take the whole message limit to decode: never read.
    let big = Kind::Hello(pb::Hello {
        provider_name: "alice".into(),
        agent_version: "x".repeat(3 << 20),
        ..Default::default()
    });
    let status = client
        .session(tokio_stream::iter(vec![message(big)]))
        .await
        .unwrap_err();
    assert_eq!(status.code(), tonic::Code::Unauthenticated, "{status:?}");
}

#[tokio::test]
async fn register_refusals() {
    let req = |name: &str| pb::RegisterRequest {
        join_token: "abcdef.0123456789".into(),
        provider_name: name.into(),
        ..Default::default()
    };
    let (mut standby, _ctx) = start(false).await;
    let status = standby.register(req("alice")).await.unwrap_err();
    assert_eq!(status.code(), tonic::Code::Unavailable, "{status:?}");
    assert!(status.message().contains("standby"));
    let (mut client, _ctx) = start(true).await;
    let status = client.register(req("Not_A_Name")).await.unwrap_err();
    assert_eq!(status.code(), tonic::Code::InvalidArgument, "{status:?}");
    let status = client.register(req("alice")).await.unwrap_err();
    assert_eq!(status.code(), tonic::Code::Unavailable, "{status:?}");
    assert!(status.message().contains("join tokens"), "{status:?}");
    let status = client
        .register(pb::RegisterRequest {
            provider_name: "alice".into(),
            ..Default::default()
        })
        .await
        .unwrap_err();
    assert_eq!(status.code(), tonic::Code::Unauthenticated, "{status:?}");
}
