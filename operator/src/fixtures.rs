//! Test doubles shared by the operator's unit tests: an API server that is never reached, a
//! context over given pods, a real edge gRPC server on loopback, and a registered fake session.

use std::convert::Infallible;
use std::sync::Arc;
use std::sync::atomic::Ordering;

use decloud_proto as pb;
use decloud_proto::edge_client::EdgeClient;
use http::{Request, Response, StatusCode};
use kube::client::Body;
use kube::runtime::reflector;
use tonic::Status;

use crate::Config;
use crate::context::{Caches, Context};
use crate::edge::{EdgeService, HelloInfo, TrustingAuthenticator, bind, serve};
use crate::health::Readiness;
use crate::metrics::Metrics;

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
    context_with(pods, leader, Config::default())
}

/// A context as [`context`], with `config`.
pub(crate) fn context_with(
    pods: Vec<k8s_openapi::api::core::v1::Pod>,
    leader: bool,
    config: Config,
) -> Arc<Context> {
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
        config,
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
    start_over(Vec::new(), leader).await
}

/// [`start`] over a context whose pod cache holds `pods`.
pub(crate) async fn start_over(
    pods: Vec<k8s_openapi::api::core::v1::Pod>,
    leader: bool,
) -> (EdgeClient<tonic::transport::Channel>, Arc<Context>) {
    let ctx = context(pods, leader);
    let listener = bind("127.0.0.1:0".parse().unwrap()).await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(serve(
        listener,
        EdgeService::new(ctx.clone(), TrustingAuthenticator),
        None,
        axum::Router::new(),
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
        HelloInfo::default(),
        tx,
        pb::Welcome::default(),
        |_| {},
    );
    let _ = rx.try_recv(); // Welcome
    rx
}
