//! Prometheus metrics and the optional `/healthz`, `/readyz`, `/metrics` listener.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use axum::Router;
use axum::extract::State;
use axum::http::StatusCode;
use axum::routing::get;
use prometheus_client::encoding::text::encode;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry;
use tokio_util::sync::CancellationToken;

use crate::error::Error;
use crate::pod::StatusBoard;

/// The edge's metrics.
#[derive(Debug)]
pub(crate) struct Metrics {
    registry: Registry,
    connected: Gauge,
    connected_flag: AtomicBool,
    heartbeats: Counter,
    errors: Family<Vec<(String, String)>, Counter>,
    pods: Gauge,
}

impl Default for Metrics {
    fn default() -> Self {
        let mut registry = Registry::with_prefix("edge");
        let connected = Gauge::default();
        let heartbeats = Counter::default();
        let errors = Family::<Vec<(String, String)>, Counter>::default();
        let pods = Gauge::default();
        registry.register(
            "session_connected",
            "1 while a session with the operator is up",
            connected.clone(),
        );
        registry.register("heartbeats", "Heartbeats sent", heartbeats.clone());
        registry.register("errors", "Errors by kind", errors.clone());
        registry.register("pods", "Pods on this edge", pods.clone());
        Metrics {
            registry,
            connected,
            connected_flag: AtomicBool::new(false),
            heartbeats,
            errors,
            pods,
        }
    }
}

impl Metrics {
    /// Whether the session with the operator is up.
    pub(crate) fn is_connected(&self) -> bool {
        self.connected_flag.load(Ordering::Relaxed)
    }

    /// Records whether the session with the operator is up.
    pub(crate) fn set_connected(&self, up: bool) {
        self.connected.set(i64::from(up));
        self.connected_flag.store(up, Ordering::Relaxed);
    }

    /// One heartbeat sent.
    pub(crate) fn heartbeat(&self) {
        self.heartbeats.inc();
    }

    /// Counts an error under its [`Error::metric_label`].
    pub(crate) fn error(&self, e: &Error) {
        self.errors
            .get_or_create(&vec![("error".to_string(), e.metric_label().to_string())])
            .inc();
    }

    /// Renders the Prometheus text format.
    pub(crate) fn render(&self, board: &StatusBoard) -> String {
        self.pods.set(board.all().len() as i64);
        let mut out = String::new();
        // Writing into a String cannot fail.
        let _ = encode(&mut out, &self.registry);
        out
    }
}

#[derive(Clone)]
struct AppState {
    metrics: Arc<Metrics>,
    board: Arc<StatusBoard>,
}

/// Serves `/healthz` (process alive), `/readyz` (session up) and `/metrics` until `shutdown`.
pub(crate) async fn serve(
    addr: SocketAddr,
    metrics: Arc<Metrics>,
    board: Arc<StatusBoard>,
    shutdown: CancellationToken,
) -> std::io::Result<()> {
    let app = Router::new()
        .route("/healthz", get(|| async { "ok" }))
        .route(
            "/readyz",
            get(|State(s): State<AppState>| async move {
                if s.metrics.connected_flag.load(Ordering::Relaxed) {
                    (StatusCode::OK, "ok")
                } else {
                    (
                        StatusCode::SERVICE_UNAVAILABLE,
                        "not connected to the operator",
                    )
                }
            }),
        )
        .route(
            "/metrics",
            get(|State(s): State<AppState>| async move { s.metrics.render(&s.board) }),
        )
        .with_state(AppState { metrics, board });
    let listener = tokio::net::TcpListener::bind(addr).await?;
    tracing::info!(%addr, "serving /healthz, /readyz and /metrics");
    axum::serve(listener, app)
        .with_graceful_shutdown(async move { shutdown.cancelled().await })
        .await
}
