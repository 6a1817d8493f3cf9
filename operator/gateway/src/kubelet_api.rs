//! The kubelet API, served by the operator for every virtual node: enough of it for
//! `kubectl logs` (and `-f`, `--tail`, `--timestamps`, `--previous`) to work through the real
//! kube-apiserver, and a clear refusal for what edges do not offer yet.

use std::{net::SocketAddr, sync::Arc};

use axum::{
    Router,
    body::Body,
    extract::{Path, Query, State},
    http::StatusCode,
    response::{IntoResponse, Response},
    routing::{any, get},
};
use hyper_util::{
    rt::{TokioExecutor, TokioIo},
    server::conn::auto,
    service::TowerToHyperService,
};
use serde::Deserialize;
use tokio::net::TcpListener;
use tokio_rustls::TlsAcceptor;

use crate::{Error, LogError, LogSource, Result};

/// A `kubectl logs` request.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct LogQuery {
    /// Pod namespace.
    pub namespace: String,
    /// Pod name.
    pub pod: String,
    /// Container name.
    pub container: String,
    /// Keep streaming new lines.
    pub follow: bool,
    /// Only the last N lines.
    pub tail_lines: Option<i64>,
    /// Prefix lines with RFC 3339 timestamps.
    pub timestamps: bool,
    /// Logs of the previous (restarted) instance.
    pub previous: bool,
}

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
/// IP addresses). The apiserver does not verify kubelet certificates unless told to
/// (`--kubelet-certificate-authority`); a production install pins a CA-signed one.
pub fn self_signed_tls(names: &[String]) -> Result<Arc<rustls::ServerConfig>> {
    let certified = rcgen::generate_simple_self_signed(names.to_vec())
        .map_err(|e| Error::Tls(e.to_string()))?;
    let cert = certified.cert.der().clone();
    let key = rustls::pki_types::PrivateKeyDer::try_from(certified.signing_key.serialize_der())
        .map_err(|e| Error::Tls(e.to_string()))?;
    let mut config = rustls::ServerConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .map_err(|e| Error::Tls(e.to_string()))?
    .with_no_client_auth()
    .with_single_cert(vec![cert], key)
    .map_err(|e| Error::Tls(e.to_string()))?;
    config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    Ok(Arc::new(config))
}

fn router(logs: Arc<dyn LogSource>) -> Router {
    Router::new()
        .route("/healthz", get(|| async { "ok" }))
        .route(
            "/containerLogs/{namespace}/{pod}/{container}",
            get(container_logs),
        )
        .route("/exec/{*rest}", any(unsupported))
        .route("/attach/{*rest}", any(unsupported))
        .route("/portForward/{*rest}", any(unsupported))
        .route("/run/{*rest}", any(unsupported))
        .with_state(logs)
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

async fn unsupported() -> Response {
    (
        StatusCode::NOT_IMPLEMENTED,
        "exec, attach, port-forward and run are not supported on DeCloud edges yet; \
         use `kubectl logs` to see what a pod prints\n",
    )
        .into_response()
}

/// Serves the kubelet API over TLS on `listener` until the task is dropped.
pub async fn serve_kubelet_api(
    listener: TcpListener,
    tls: Arc<rustls::ServerConfig>,
    logs: Arc<dyn LogSource>,
) {
    let acceptor = TlsAcceptor::from(tls);
    let app = router(logs);
    loop {
        let (tcp, peer): (_, SocketAddr) = match listener.accept().await {
            Ok(c) => c,
            Err(e) => {
                tracing::warn!(error = %e, "kubelet API accept failed");
                continue;
            }
        };
        let acceptor = acceptor.clone();
        let app = app.clone();
        tokio::spawn(async move {
            let tls = match acceptor.accept(tcp).await {
                Ok(t) => t,
                Err(e) => {
                    tracing::debug!(%peer, error = %e, "kubelet API TLS handshake failed");
                    return;
                }
            };
            let service = TowerToHyperService::new(app);
            if let Err(e) = auto::Builder::new(TokioExecutor::new())
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
        fn logs(&self, q: LogQuery) -> BoxFuture<'static, Result<crate::LogStream, LogError>> {
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
    }

    #[tokio::test]
    async fn container_logs_maps_query_flags_and_errors() {
        let src = Arc::new(Recorded(Mutex::new(Vec::new())));
        let app = router(src.clone());
        let resp = app
            .clone()
            .oneshot(
                http::Request::get(
                    "/containerLogs/ns/web-1/web?follow=true&tailLines=5&timestamps=true",
                )
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
                    .body(Body::empty())
                    .expect("req"),
            )
            .await
            .expect("response");
        assert_eq!(resp.status(), StatusCode::NOT_FOUND);
        let resp = app
            .oneshot(
                http::Request::post("/exec/ns/web-1/web?command=sh")
                    .body(Body::empty())
                    .expect("req"),
            )
            .await
            .expect("response");
        assert_eq!(resp.status(), StatusCode::NOT_IMPLEMENTED);
    }

    #[test]
    fn self_signed_certificate_builds() {
        assert!(self_signed_tls(&["127.0.0.1".into(), "localhost".into()]).is_ok());
    }
}
