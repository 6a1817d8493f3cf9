//! The kubelet API's node-level reads — `/pods`, `/stats/summary`, `/metrics/resource` —
//! served on each virtual node's own port (which tells them which node they are about).

use std::sync::Arc;

use axum::{
    Extension,
    http::StatusCode,
    response::{IntoResponse, Response},
};

use crate::seams::NodeReadings;

fn refuse(status: StatusCode, msg: String) -> Response {
    (status, [("content-type", "text/plain; charset=utf-8")], msg).into_response()
}

/// The virtual node one kubelet API listener serves: each node has its own port (its
/// `daemonEndpoints.kubeletEndpoint`), so that node-level paths (`/pods`, `/stats/summary`,
/// `/metrics/resource`) know which node they are about.
#[derive(Clone)]
pub struct ServingNode {
    /// The node's name.
    pub node: String,
    /// What its reads serve.
    pub readings: Arc<dyn NodeReadings>,
}

/// Node-level reads need the node: they are served on each node's own port only.
fn no_node() -> Response {
    refuse(
        StatusCode::NOT_FOUND,
        "node-level endpoints are served on each node's own kubelet port \
         (status.daemonEndpoints.kubeletEndpoint of the Node)\n"
            .into(),
    )
}

fn no_stats(node: &str) -> Response {
    refuse(
        StatusCode::SERVICE_UNAVAILABLE,
        format!("no statistics from the edge of node {node} yet\n"),
    )
}

pub(super) async fn node_pods(serving: Option<Extension<ServingNode>>) -> Response {
    let Some(Extension(s)) = serving else {
        return no_node();
    };
    (
        [("content-type", "application/json")],
        s.readings.pods(&s.node),
    )
        .into_response()
}

pub(super) async fn stats_summary(serving: Option<Extension<ServingNode>>) -> Response {
    let Some(Extension(s)) = serving else {
        return no_node();
    };
    match s.readings.stats_summary(&s.node) {
        Some(body) => ([("content-type", "application/json")], body).into_response(),
        None => no_stats(&s.node),
    }
}

pub(super) async fn resource_metrics(serving: Option<Extension<ServingNode>>) -> Response {
    let Some(Extension(s)) = serving else {
        return no_node();
    };
    match s.readings.resource_metrics(&s.node) {
        Some(body) => (
            [("content-type", "text/plain; version=0.0.4; charset=utf-8")],
            body,
        )
            .into_response(),
        None => no_stats(&s.node),
    }
}

#[cfg(test)]
mod tests;
