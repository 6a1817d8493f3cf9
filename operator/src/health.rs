//! `/metrics`, `/healthz` and `/readyz`.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use axum::Router;
use axum::extract::State;
use axum::http::{StatusCode, header};
use axum::response::IntoResponse;
use axum::routing::get;
use prometheus_client::registry::Registry;
use tokio::net::TcpListener;

use crate::{Error, Result};

/// What `/readyz` reports on.
#[derive(Debug, Default)]
pub(crate) struct Readiness {
    /// This replica holds the leader Lease.
    pub(crate) leader: AtomicBool,
    /// The pod and provider caches are filled.
    pub(crate) synced: AtomicBool,
}

impl Readiness {
    /// Ready to serve edges: leader with warm caches. Standbys are not ready, so a Service
    /// sends edges to the leader only.
    pub(crate) fn is_ready(&self) -> bool {
        self.leader.load(Ordering::Relaxed) && self.synced.load(Ordering::Relaxed)
    }
}

#[derive(Clone)]
struct AppState {
    registry: Arc<Registry>,
    readiness: Arc<Readiness>,
}

async fn metrics(State(s): State<AppState>) -> impl IntoResponse {
    let mut body = String::new();
    match prometheus_client::encoding::text::encode(&mut body, &s.registry) {
        Ok(()) => (
            StatusCode::OK,
            [(
                header::CONTENT_TYPE,
                "application/openmetrics-text; version=1.0.0; charset=utf-8",
            )],
            body,
        )
            .into_response(),
        Err(e) => (StatusCode::INTERNAL_SERVER_ERROR, e.to_string()).into_response(),
    }
}

async fn readyz(State(s): State<AppState>) -> impl IntoResponse {
    if s.readiness.is_ready() {
        (StatusCode::OK, "ok")
    } else if !s.readiness.leader.load(Ordering::Relaxed) {
        (StatusCode::SERVICE_UNAVAILABLE, "standby: not the leader")
    } else {
        (StatusCode::SERVICE_UNAVAILABLE, "caches not synced")
    }
}

/// Binds `addr`; the returned listener is served by [`serve`].
pub(crate) async fn bind(addr: SocketAddr) -> Result<TcpListener> {
    TcpListener::bind(addr)
        .await
        .map_err(|source| Error::Serve {
            what: "metrics",
            source,
        })
}

/// Serves the HTTP endpoints on `listener` until the process ends.
pub(crate) async fn serve(
    listener: TcpListener,
    registry: Registry,
    readiness: Arc<Readiness>,
) -> Result<()> {
    let app = Router::new()
        .route("/metrics", get(metrics))
        .route("/healthz", get(|| async { "ok" }))
        .route("/readyz", get(readyz))
        .with_state(AppState {
            registry: Arc::new(registry),
            readiness,
        });
    axum::serve(listener, app)
        .await
        .map_err(|source| Error::Serve {
            what: "metrics",
            source,
        })
}
