//! The Session handshake over a real loopback socket, with a Kubernetes client that is never
//! reached (these refusals happen before any API call).

use std::convert::Infallible;
use std::sync::atomic::Ordering;

use decloud_proto::edge_client::EdgeClient;
use http::{Request, Response, StatusCode};
use kube::client::Body;
use kube::runtime::reflector;

use super::*;
use crate::Config;
use crate::context::Caches;
use crate::http::Readiness;
use crate::metrics::Metrics;

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

/// A Kubernetes client that answers 503 to everything (for steps that never reach the API).
pub(crate) fn unreachable_client() -> kube::Client {
    let service = tower::service_fn(|_req: Request<Body>| async {
        let resp = Response::builder()
            .status(StatusCode::SERVICE_UNAVAILABLE)
            .body(Body::from(b"{}".to_vec()))
            .unwrap();
        Ok::<_, Infallible>(resp)
    });
    kube::Client::new(service, "default")
}

/// A context over `pods`, with empty provider and node caches and an unreachable API.
pub(crate) fn context(pods: Vec<k8s_openapi::api::core::v1::Pod>, leader: bool) -> Arc<Context> {
    let (pod_store, mut writer) = reflector::store();
    for p in pods {
        writer.apply_watcher_event(&kube::runtime::watcher::Event::Apply(p));
    }
    let (providers, _) = reflector::store();
    let (nodes, _) = reflector::store();
    let readiness = Arc::new(Readiness::default());
    readiness.leader.store(leader, Ordering::Relaxed);
    Context::new(
        unreachable_client(),
        Config::default(),
        Arc::new(Metrics::default()),
        Caches {
            pods: pod_store,
            providers,
            nodes,
        },
        readiness,
    )
    .0
}

/// A real edge gRPC server on loopback over a fresh context, and a client of it.
pub(crate) async fn start(leader: bool) -> (EdgeClient<tonic::transport::Channel>, Arc<Context>) {
    let ctx = context(Vec::new(), leader);
    let listener = bind("127.0.0.1:0".parse().unwrap()).await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(serve(
        listener,
        EdgeService::new(ctx.clone(), TrustingAuthenticator),
        None,
    ));
    let client = EdgeClient::connect(format!("http://{addr}")).await.unwrap();
    (client, ctx)
}

/// Registers a session for `provider`; returns what the operator sends it.
pub(crate) fn fake_session(
    ctx: &Context,
    provider: &str,
) -> tokio::sync::mpsc::Receiver<Result<pb::OperatorMessage, Status>> {
    let (tx, mut rx) = tokio::sync::mpsc::channel(64);
    ctx.registry.connect(
        provider,
        crate::registry::HelloInfo::default(),
        tx,
        pb::Welcome::default(),
        |_| {},
    );
    let _ = rx.try_recv(); // Welcome
    rx
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
        let outbound = tokio_stream::iter(vec![message(first.clone())]);
        let status = client.session(outbound).await.unwrap_err();
        assert_eq!(status.code(), code, "{first:?}: {status:?}");
        assert!(status.message().contains(words), "{first:?}: {status:?}");
    }
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
