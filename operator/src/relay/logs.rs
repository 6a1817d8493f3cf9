//! `kubectl logs` through edges: the operator's [`LogSource`].
//!
//! The kubelet API asks for a pod's logs; the relay finds the pod's edge, sends it a
//! `LogRequest` on its session, and streams the `LogChunk`s the session loop routes back here
//! by request id. Dropping the HTTP stream sends `LogCancel`.

use std::io;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use decloud_crds::contracts::provider_of_node;
use decloud_gateway::{LogError, LogQuery, LogSource, LogStream};
use decloud_proto as pb;
use futures::future::BoxFuture;
use futures::{FutureExt, StreamExt};
use k8s_openapi::api::core::v1::Pod;
use kube::ResourceExt;
use kube::runtime::reflector::ObjectRef;
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;

use super::pending::Unclaimed;
use crate::context::Context;

/// Chunks (≤ 64 KiB each) buffered per request for a slow HTTP client before the request is
/// cut off.
const LOG_QUEUE: usize = 256;
/// How long to wait for the edge's first chunk, so that an immediate refusal (no such
/// container, no previous instance) becomes an HTTP error instead of an empty stream.
const FIRST_CHUNK_WAIT: Duration = Duration::from_secs(1);

/// Routes one `LogChunk` from `provider`'s session to its HTTP stream. Must not block: a client
/// too slow to keep up is cut off (and the edge told to stop) rather than stall the session.
pub(crate) fn on_chunk(ctx: &Context, provider: &str, chunk: pb::LogChunk) {
    let id = chunk.request_id;
    let eof = chunk.eof;
    let data = chunk.data;
    let answered = ctx.logs.answer(id, provider, |tx| {
        if data.is_empty() {
            return (false, eof);
        }
        match tx.try_send(Ok(Bytes::from(data))) {
            Ok(()) => (false, eof),
            Err(mpsc::error::TrySendError::Full(_)) => {
                tracing::warn!(request = id, "log client too slow; ending its stream");
                (!eof, true)
            }
            Err(mpsc::error::TrySendError::Closed(_)) => (!eof, true),
        }
    });
    match answered {
        Err(Unclaimed::Unknown) => {
            tracing::debug!(request = id, "log chunk for a request no longer running");
        }
        Err(Unclaimed::NotAskedOf) => {
            tracing::debug!(
                request = id,
                "dropping a log chunk from an edge that was not asked"
            );
            ctx.metrics.unauthorized_reports.inc();
        }
        Ok((cancel, done)) => {
            if eof
                && !chunk.error.is_empty()
                && let Some(tx) = done
            {
                let _ = tx.try_send(Err(io::Error::other(chunk.error)));
            }
            if cancel {
                ctx.registry.with_session(provider, |s| s.cancel_logs(id));
            }
        }
    }
}

/// Ends a log request when its HTTP stream is dropped: forgets it and, if the edge is still
/// streaming, sends `LogCancel`.
struct CancelOnDrop {
    ctx: Arc<Context>,
    provider: String,
    id: u64,
}

impl Drop for CancelOnDrop {
    fn drop(&mut self) {
        if self.ctx.logs.forget(self.id).is_some() {
            self.ctx
                .registry
                .with_session(&self.provider, |s| s.cancel_logs(self.id));
        }
    }
}

/// Serves `kubectl logs` from the edges in this (leader) replica's registry.
#[derive(Clone)]
pub(crate) struct LogRelay {
    ctx: Arc<Context>,
}

impl LogRelay {
    /// A relay over `ctx`'s pod cache and sessions.
    pub(crate) fn new(ctx: Arc<Context>) -> Self {
        Self { ctx }
    }
}

/// The provider, pod uid and container name a query names, from the pod cache.
fn locate(ctx: &Context, q: &LogQuery) -> Result<(String, String, String), LogError> {
    let key = format!("{}/{}", q.namespace, q.pod);
    let pod: Arc<Pod> = ctx
        .pods
        .get(&ObjectRef::new(&q.pod).within(&q.namespace))
        .ok_or_else(|| LogError::NotFound(format!("pod {key} not found")))?;
    let node = pod
        .spec
        .as_ref()
        .and_then(|s| s.node_name.clone())
        .unwrap_or_default();
    let provider = provider_of_node(&node)
        .ok_or_else(|| {
            LogError::NotFound(format!(
                "pod {key} is not on a DeCloud edge (node {node:?})"
            ))
        })?
        .to_string();
    let uid = pod.uid().unwrap_or_default();
    let names: Vec<&str> = pod
        .spec
        .iter()
        .flat_map(|s| s.containers.iter())
        .map(|c| c.name.as_str())
        .collect();
    let container = if q.container.is_empty() {
        names.first().copied().unwrap_or_default().to_string()
    } else {
        q.container.clone()
    };
    if !names.contains(&container.as_str()) {
        return Err(LogError::NotFound(format!(
            "container {container:?} is not valid for pod {key} (containers: {})",
            names.join(", ")
        )));
    }
    Ok((provider, uid, container))
}

impl LogSource for LogRelay {
    fn logs(&self, q: LogQuery) -> BoxFuture<'static, Result<LogStream, LogError>> {
        let ctx = self.ctx.clone();
        async move {
            let result = relay(ctx.clone(), q).await;
            ctx.metrics.log_requested(match &result {
                Ok(_) => "ok",
                Err(LogError::NotFound(_)) => "not_found",
                Err(LogError::Unavailable(_)) => "unavailable",
                Err(LogError::Edge(_)) => "edge_error",
            });
            result
        }
        .boxed()
    }
}

async fn relay(ctx: Arc<Context>, q: LogQuery) -> Result<LogStream, LogError> {
    let (provider, pod_uid, container) = locate(&ctx, &q)?;
    let (tx, mut rx) = mpsc::channel(LOG_QUEUE);
    let id = ctx.logs.register(&provider, tx);
    let guard = CancelOnDrop {
        ctx: ctx.clone(),
        provider: provider.clone(),
        id,
    };
    let request = pb::LogRequest {
        request_id: id,
        pod_uid,
        container,
        follow: q.follow,
        tail_lines: q.tail_lines.unwrap_or(-1),
        timestamps: q.timestamps,
        previous: q.previous,
    };
    match ctx
        .registry
        .with_session(&provider, |s| s.request_logs(request))
    {
        None => {
            return Err(LogError::Unavailable(format!(
                "the edge of provider {provider} (running pod {}/{}) is not connected",
                q.namespace, q.pod
            )));
        }
        Some(false) => {
            return Err(LogError::Unavailable(format!(
                "the edge running pod {}/{} is busy; retry",
                q.namespace, q.pod
            )));
        }
        Some(true) => {}
    }
    let first = match tokio::time::timeout(FIRST_CHUNK_WAIT, rx.recv()).await {
        Ok(Some(Err(e))) => return Err(LogError::Edge(e.to_string())),
        Ok(Some(Ok(bytes))) => Some(bytes),
        Ok(None) | Err(_) => None,
    };
    let stream = futures::stream::iter(first.map(Ok))
        .chain(ReceiverStream::new(rx))
        // The stream owns the guard: dropping it (client gone) cancels the request.
        .map(move |item| {
            let _ = &guard;
            item
        });
    Ok(stream.boxed())
}

#[cfg(test)]
mod tests;
