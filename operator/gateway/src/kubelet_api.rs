//! The kubelet API, served by the operator for every virtual node: enough of it for
//! `kubectl logs` (and `-f`, `--tail`, `--timestamps`, `--previous`), `kubectl exec`, `attach`
//! and `port-forward` ([`streams`], over SPDY/3.1) to work through the real kube-apiserver, and
//! a clear refusal for what edges do not offer yet.
//!
//! Every request is authenticated and authorized first, as kubelet does ([`auth`]): anonymous
//! callers get 401, callers without the right 403, before any path is looked at.

use std::{net::SocketAddr, sync::Arc};

use axum::{
    Extension, Router,
    body::Body,
    extract::{Path, Query, Request, State},
    http::StatusCode,
    middleware::{self, Next},
    response::{IntoResponse, Response},
    routing::get,
};
use hyper_util::{
    rt::{TokioExecutor, TokioIo, TokioTimer},
    server::conn::auto,
    service::TowerToHyperService,
};
use serde::Deserialize;
use tokio::net::TcpListener;
use tokio_rustls::TlsAcceptor;

use crate::seams::{ContainerStreams, LogQuery, LogSource};
use crate::{Error, LogError, Result};
pub use node_reads::ServingNode;
use node_reads::{node_pods, resource_metrics, stats_summary};

mod auth;
mod node_reads;
mod spdy;
mod streams;
mod websocket;

pub use auth::{
    Access, AccessReview, KubeAccessReview, KubeletAuth, REVIEW_CACHE_ENTRIES, REVIEW_TTL,
    ReviewError, User,
};

/// How long a client has for its TLS handshake, and then for each request head.
const HANDSHAKE_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(10);

/// Kubelet API connections served at once (each `kubectl logs -f` holds one); more are closed
/// at accept, so a flood of handshakes or reviews cannot grow without bound.
const MAX_CONNECTIONS: usize = 4096;

#[derive(Deserialize, Default)]
#[serde(rename_all = "camelCase")]
struct LogParams {
    #[serde(default)]
    follow: Option<String>,
    #[serde(default)]
    tail_lines: Option<i64>,
    #[serde(default)]
    timestamps: Option<String>,
    #[serde(default)]
    previous: Option<String>,
}

fn flag(v: &Option<String>) -> bool {
    matches!(v.as_deref(), Some("true" | "1" | ""))
}

/// A self-signed serving certificate for the kubelet API, valid for `names` (DNS names or
/// IP addresses), asking clients for a certificate signed by `client_ca` (PEM; the API
/// server's `--kubelet-client-certificate` is). Clients without one may still connect and
/// present a bearer token. The apiserver does not verify kubelet certificates unless told to
/// (`--kubelet-certificate-authority`); a production install pins a CA-signed one.
pub fn self_signed_tls(
    names: &[String],
    client_ca: Option<&[u8]>,
) -> Result<Arc<rustls::ServerConfig>> {
    let certified = rcgen::generate_simple_self_signed(names.to_vec())
        .map_err(|e| Error::Tls(e.to_string()))?;
    let cert = certified.cert.der().clone();
    let key = rustls::pki_types::PrivateKeyDer::try_from(certified.signing_key.serialize_der())
        .map_err(|e| Error::Tls(e.to_string()))?;
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let builder = rustls::ServerConfig::builder_with_provider(provider.clone())
        .with_safe_default_protocol_versions()
        .map_err(|e| Error::Tls(e.to_string()))?;
    let builder = match client_ca {
        None => builder.with_no_client_auth(),
        Some(pem) => {
            use rustls::pki_types::{CertificateDer, pem::PemObject};
            let mut roots = rustls::RootCertStore::empty();
            for c in CertificateDer::pem_slice_iter(pem) {
                let c = c.map_err(|e| Error::Tls(format!("kubelet client CA: {e}")))?;
                roots
                    .add(c)
                    .map_err(|e| Error::Tls(format!("kubelet client CA: {e}")))?;
            }
            if roots.is_empty() {
                return Err(Error::Tls("kubelet client CA: no certificate in it".into()));
            }
            let verifier =
                rustls::server::WebPkiClientVerifier::builder_with_provider(roots.into(), provider)
                    .allow_unauthenticated()
                    .build()
                    .map_err(|e| Error::Tls(format!("kubelet client CA: {e}")))?;
            builder.with_client_cert_verifier(verifier)
        }
    };
    let mut config = builder
        .with_single_cert(vec![cert], key)
        .map_err(|e| Error::Tls(e.to_string()))?;
    config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    Ok(Arc::new(config))
}

/// The user of the connection's verified client certificate, if it presented one.
#[derive(Clone, Debug, Default)]
struct PeerCertificate(Option<User>);

#[derive(Clone)]
struct Guard {
    auth: KubeletAuth,
    logs: Arc<dyn LogSource>,
}

fn refuse(status: StatusCode, msg: String) -> Response {
    (status, [("content-type", "text/plain; charset=utf-8")], msg).into_response()
}

/// The node a kubelet API path is about: that of the pod it names, or "" (all nodes).
fn node_of_path(logs: &dyn LogSource, path: &str) -> String {
    let mut parts = path.trim_start_matches('/').split('/');
    let kind = parts.next().unwrap_or_default();
    let (Some(ns), Some(pod)) = (parts.next(), parts.next()) else {
        return String::new();
    };
    match kind {
        "containerLogs" | "exec" | "attach" | "portForward" | "run" if !pod.is_empty() => {
            logs.node_of(ns, pod).unwrap_or_default()
        }
        _ => String::new(),
    }
}

/// Authenticates (client certificate, else bearer token) and authorizes (SubjectAccessReview)
/// every request, kubelet's way.
async fn guard(State(g): State<Guard>, req: Request, next: Next) -> Response {
    let cert = req
        .extensions()
        .get::<PeerCertificate>()
        .and_then(|p| p.0.clone());
    let user = match cert {
        Some(u) => Some(u),
        None => {
            let token = req
                .headers()
                .get(http::header::AUTHORIZATION)
                .and_then(|v| v.to_str().ok())
                .and_then(|v| v.strip_prefix("Bearer "))
                .map(str::trim);
            match token {
                None => None,
                Some(t) => match g.auth.authenticate(t).await {
                    Ok(u) => u,
                    Err(e) => {
                        tracing::warn!(error = %e, "kubelet API: cannot review a token");
                        None
                    }
                },
            }
        }
    };
    let Some(user) = user else {
        return refuse(StatusCode::UNAUTHORIZED, "Unauthorized\n".into());
    };
    let Some(verb) = auth::verb_of(req.method()) else {
        return refuse(
            StatusCode::METHOD_NOT_ALLOWED,
            "Method Not Allowed\n".into(),
        );
    };
    let path = req.uri().path().to_string();
    let mut node = node_of_path(g.logs.as_ref(), &path);
    if node.is_empty()
        && let Some(serving) = req.extensions().get::<ServingNode>()
    {
        node = serving.node.clone();
    }
    let subresources = auth::subresources_of(&path);
    for subresource in subresources {
        let access = Access {
            verb,
            subresource,
            node: node.clone(),
        };
        match g.auth.authorize(&user, &access).await {
            Ok(true) => return next.run(req).await,
            Ok(false) => {}
            Err(e) => {
                tracing::warn!(error = %e, user = %user.name, "kubelet API: cannot review access");
                return refuse(
                    StatusCode::INTERNAL_SERVER_ERROR,
                    format!(
                        "Authorization error (user={}, verb={verb}, resource=nodes, subresource={subresource})\n",
                        user.name
                    ),
                );
            }
        }
    }
    tracing::debug!(user = %user.name, %verb, %path, "kubelet API: forbidden");
    refuse(
        StatusCode::FORBIDDEN,
        format!(
            "Forbidden (user={}, verb={verb}, resource=nodes, subresource={})\n",
            user.name, subresources[0]
        ),
    )
}

fn router(
    logs: Arc<dyn LogSource>,
    streams: Arc<dyn ContainerStreams>,
    auth: KubeletAuth,
) -> Router {
    let guarded = Guard {
        auth,
        logs: logs.clone(),
    };
    Router::new()
        .route("/healthz", get(|| async { "ok" }))
        .route(
            "/containerLogs/{namespace}/{pod}/{container}",
            get(container_logs),
        )
        .route("/pods", get(node_pods))
        .route("/stats/summary", get(stats_summary))
        .route("/metrics/resource", get(resource_metrics))
        .fallback(|| async { (StatusCode::NOT_FOUND, "404 page not found\n") })
        .with_state(logs)
        .merge(streams::routes(streams))
        .layer(middleware::from_fn_with_state(guarded, guard))
}

async fn container_logs(
    State(logs): State<Arc<dyn LogSource>>,
    Path((namespace, pod, container)): Path<(String, String, String)>,
    Query(p): Query<LogParams>,
) -> Response {
    let query = LogQuery {
        namespace,
        pod,
        container,
        follow: flag(&p.follow),
        tail_lines: p.tail_lines,
        timestamps: flag(&p.timestamps),
        previous: flag(&p.previous),
    };
    match logs.logs(query).await {
        Ok(stream) => Response::builder()
            .header("content-type", "text/plain")
            .body(Body::from_stream(stream))
            .unwrap_or_else(|_| StatusCode::INTERNAL_SERVER_ERROR.into_response()),
        Err(e) => {
            let status = match e {
                LogError::NotFound(_) => StatusCode::NOT_FOUND,
                LogError::Unavailable(_) => StatusCode::SERVICE_UNAVAILABLE,
                LogError::Edge(_) => StatusCode::BAD_GATEWAY,
            };
            (status, format!("{e}\n")).into_response()
        }
    }
}

/// Serves the kubelet API over TLS on `listener` until the task is dropped.
pub async fn serve_kubelet_api(
    listener: TcpListener,
    tls: Arc<rustls::ServerConfig>,
    logs: Arc<dyn LogSource>,
    streams: Arc<dyn ContainerStreams>,
    auth: KubeletAuth,
) {
    serve(listener, tls, router(logs, streams, auth)).await
}

/// Serves the kubelet API of one virtual node (its own port) over TLS on `listener`, with
/// the node-level reads, until the task is dropped.
pub async fn serve_node_kubelet_api(
    listener: TcpListener,
    tls: Arc<rustls::ServerConfig>,
    logs: Arc<dyn LogSource>,
    streams: Arc<dyn ContainerStreams>,
    auth: KubeletAuth,
    serving: ServingNode,
) {
    serve(
        listener,
        tls,
        router(logs, streams, auth).layer(Extension(serving)),
    )
    .await
}

async fn serve(listener: TcpListener, tls: Arc<rustls::ServerConfig>, app: Router) {
    let acceptor = TlsAcceptor::from(tls);
    let slots = Arc::new(tokio::sync::Semaphore::new(MAX_CONNECTIONS));
    loop {
        let (tcp, peer): (_, SocketAddr) = match listener.accept().await {
            Ok(c) => c,
            Err(e) => {
                tracing::warn!(error = %e, "kubelet API accept failed");
                continue;
            }
        };
        let Ok(slot) = slots.clone().try_acquire_owned() else {
            tracing::debug!(%peer, "kubelet API at its connection cap; closing");
            continue;
        };
        let acceptor = acceptor.clone();
        let app = app.clone();
        tokio::spawn(async move {
            let _slot = slot;
            let tls = match tokio::time::timeout(HANDSHAKE_TIMEOUT, acceptor.accept(tcp)).await {
                Ok(Ok(t)) => t,
                Ok(Err(e)) => {
                    tracing::debug!(%peer, error = %e, "kubelet API TLS handshake failed");
                    return;
                }
                Err(_) => {
                    tracing::debug!(%peer, "kubelet API TLS handshake timed out");
                    return;
                }
            };
            // The verifier already checked the chain against the client CA.
            let peer_user = tls
                .get_ref()
                .1
                .peer_certificates()
                .and_then(|certs| certs.first())
                .and_then(|leaf| auth::certificate_user(leaf));
            let service =
                TowerToHyperService::new(app.layer(Extension(PeerCertificate(peer_user))));
            let mut builder = auto::Builder::new(TokioExecutor::new());
            builder
                .http1()
                .timer(TokioTimer::new())
                .header_read_timeout(HANDSHAKE_TIMEOUT);
            if let Err(e) = builder
                .serve_connection_with_upgrades(TokioIo::new(tls), service)
                .await
            {
                tracing::debug!(%peer, error = %e, "kubelet API connection ended with an error");
            }
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use futures::{FutureExt, StreamExt, future::BoxFuture};
    use std::sync::Mutex;
    use tower::ServiceExt;

    struct Recorded(Mutex<Vec<LogQuery>>);

    impl LogSource for Recorded {
        fn logs(
            &self,
            q: LogQuery,
        ) -> BoxFuture<'static, Result<crate::seams::LogStream, LogError>> {
            self.0.lock().expect("lock").push(q.clone());
            async move {
                if q.pod == "missing" {
                    return Err(LogError::NotFound("pods \"missing\" not found".into()));
                }
                let lines = futures::stream::iter(vec![Ok(bytes::Bytes::from("line 1\n"))]);
                Ok(lines.boxed())
            }
            .boxed()
        }

        fn node_of(&self, _namespace: &str, pod: &str) -> Option<String> {
            (pod == "web-1").then(|| "edge-a".to_string())
        }
    }

    /// Tokens `admin` (may do anything), `reader` (nodes/log on edge-a only), `nobody`
    /// (authenticated, no rights); any other token authenticates nobody. Counts reviews.
    #[derive(Default)]
    struct FakeReview {
        reviews: std::sync::atomic::AtomicUsize,
    }

    impl AccessReview for FakeReview {
        fn authenticate(
            &self,
            token: &str,
        ) -> BoxFuture<'static, std::result::Result<Option<User>, ReviewError>> {
            self.reviews
                .fetch_add(1, std::sync::atomic::Ordering::SeqCst);
            let user = ["admin", "reader", "nobody"]
                .contains(&token)
                .then(|| User {
                    name: token.to_string(),
                    ..Default::default()
                });
            async move { Ok(user) }.boxed()
        }

        fn authorize(
            &self,
            user: &User,
            access: &Access,
        ) -> BoxFuture<'static, std::result::Result<bool, ReviewError>> {
            self.reviews
                .fetch_add(1, std::sync::atomic::Ordering::SeqCst);
            let allowed = match user.name.as_str() {
                "admin" => true,
                "reader" => access.subresource == "log" && access.node == "edge-a",
                _ => false,
            };
            async move { Ok(allowed) }.boxed()
        }
    }

    fn get(path: &str, token: &str) -> http::Request<Body> {
        http::Request::get(path)
            .header("authorization", format!("Bearer {token}"))
            .body(Body::empty())
            .expect("request")
    }

    /// Knows no pod: every stream request is answered "pod does not exist".
    pub(crate) struct NoStreams;

    impl ContainerStreams for NoStreams {
        fn check(
            &self,
            _: &str,
            _: &str,
            _: Option<&str>,
            _: Option<&str>,
        ) -> std::result::Result<(), crate::StreamError> {
            Err(crate::StreamError::PodNotFound)
        }

        fn exec(
            &self,
            _: crate::seams::ExecRequest,
        ) -> BoxFuture<'static, std::result::Result<crate::seams::ExecIo, crate::StreamError>>
        {
            async { Err(crate::StreamError::PodNotFound) }.boxed()
        }

        fn port_forward(
            &self,
            _: &str,
            _: &str,
            _: u16,
        ) -> BoxFuture<
            'static,
            std::result::Result<Box<dyn crate::seams::TunnelIo>, crate::StreamError>,
        > {
            async { Err(crate::StreamError::PodNotFound) }.boxed()
        }
    }

    fn app_with(src: Arc<Recorded>) -> (Router, Arc<FakeReview>) {
        let review = Arc::new(FakeReview::default());
        (
            router(src, Arc::new(NoStreams), KubeletAuth::new(review.clone())),
            review,
        )
    }

    #[tokio::test]
    async fn anonymous_is_401_unauthorized_is_403_and_reviews_are_cached() {
        let src = Arc::new(Recorded(Mutex::new(Vec::new())));
        let (app, review) = app_with(src.clone());
        let status = |req: http::Request<Body>| {
            let app = app.clone();
            async move { app.oneshot(req).await.expect("response").status() }
        };
        let anonymous = http::Request::get("/containerLogs/ns/web-1/web")
            .body(Body::empty())
            .expect("request");
        assert_eq!(status(anonymous).await, StatusCode::UNAUTHORIZED);
        for path in [
            "/containerLogs/ns/web-1/web",
            "/healthz",
            "/exec/ns/web-1/web",
            "/nope",
        ] {
            assert_eq!(
                status(get(path, "forged")).await,
                StatusCode::UNAUTHORIZED,
                "{path}"
            );
            assert_eq!(
                status(get(path, "nobody")).await,
                StatusCode::FORBIDDEN,
                "{path}"
            );
        }
        // nodes/log on the pod's node reads logs, and nothing else.
        assert_eq!(
            status(get("/containerLogs/ns/web-1/web", "reader")).await,
            StatusCode::OK
        );
        assert_eq!(
            status(get("/containerLogs/ns/elsewhere/web", "reader")).await,
            StatusCode::FORBIDDEN
        );
        assert_eq!(
            status(get("/exec/ns/web-1/web", "reader")).await,
            StatusCode::FORBIDDEN
        );
        assert_eq!(
            status(get("/exec/ns/web-1/web?output=1&command=true", "admin")).await,
            StatusCode::NOT_FOUND,
            "past authorization, exec looks the pod up"
        );
        assert_eq!(
            src.0.lock().expect("lock").len(),
            1,
            "only the allowed request was served"
        );

        let before = review.reviews.load(std::sync::atomic::Ordering::SeqCst);
        for _ in 0..50 {
            assert_eq!(
                status(get("/containerLogs/ns/web-1/web", "nobody")).await,
                StatusCode::FORBIDDEN
            );
            assert_eq!(
                status(get("/containerLogs/ns/web-1/web", "forged")).await,
                StatusCode::UNAUTHORIZED
            );
        }
        assert_eq!(
            review.reviews.load(std::sync::atomic::Ordering::SeqCst),
            before,
            "repeated requests are answered from the cache"
        );
    }

    #[test]
    fn certificate_user_is_cn_with_o_groups() {
        let mut params = rcgen::CertificateParams::new(Vec::<String>::new()).expect("params");
        params
            .distinguished_name
            .push(rcgen::DnType::CommonName, "kube-apiserver-kubelet-client");
        params
            .distinguished_name
            .push(rcgen::DnType::OrganizationName, "system:masters");
        let key = rcgen::KeyPair::generate().expect("key");
        let cert = params.self_signed(&key).expect("cert");
        let user = auth::certificate_user(cert.der()).expect("user");
        assert_eq!(user.name, "kube-apiserver-kubelet-client");
        assert_eq!(user.groups, ["system:masters", "system:authenticated"]);
    }

    #[tokio::test]
    async fn container_logs_maps_query_flags_and_errors() {
        let src = Arc::new(Recorded(Mutex::new(Vec::new())));
        let (app, _) = app_with(src.clone());
        let resp = app
            .clone()
            .oneshot(
                http::Request::get(
                    "/containerLogs/ns/web-1/web?follow=true&tailLines=5&timestamps=true",
                )
                .header("authorization", "Bearer admin")
                .body(Body::empty())
                .expect("request"),
            )
            .await
            .expect("response");
        assert_eq!(resp.status(), StatusCode::OK);
        let body = axum::body::to_bytes(resp.into_body(), 1024)
            .await
            .expect("body");
        assert_eq!(&body[..], b"line 1\n");
        let q = src.0.lock().expect("lock")[0].clone();
        assert_eq!(
            q,
            LogQuery {
                namespace: "ns".into(),
                pod: "web-1".into(),
                container: "web".into(),
                follow: true,
                tail_lines: Some(5),
                timestamps: true,
                previous: false
            }
        );
        let resp = app
            .clone()
            .oneshot(
                http::Request::get("/containerLogs/ns/missing/web")
                    .header("authorization", "Bearer admin")
                    .body(Body::empty())
                    .expect("req"),
            )
            .await
            .expect("response");
        assert_eq!(resp.status(), StatusCode::NOT_FOUND);
        let resp = app
            .oneshot(
                http::Request::post("/exec/ns/web-1/web?command=sh")
                    .header("authorization", "Bearer admin")
                    .body(Body::empty())
                    .expect("req"),
            )
            .await
            .expect("response");
        assert_eq!(
            resp.status(),
            StatusCode::BAD_REQUEST,
            "no stream asked for, as kubelet answers"
        );
    }

    #[test]
    fn self_signed_certificate_builds() {
        assert!(self_signed_tls(&["127.0.0.1".into(), "localhost".into()], None).is_ok());
        let ca = rcgen::generate_simple_self_signed(vec!["ca".into()]).expect("ca");
        let pem = ca.cert.pem();
        assert!(self_signed_tls(&["localhost".into()], Some(pem.as_bytes())).is_ok());
        assert!(self_signed_tls(&["localhost".into()], Some(b"not a certificate")).is_err());
    }
}
