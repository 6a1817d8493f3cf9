//! `LogRequest` → `LogChunk`s, from the runtime's container logs.

use std::sync::Arc;

use futures::StreamExt;
use tokio::sync::mpsc;

use decloud_proto as pb;
use pb::edge_message::Kind as Out;

use crate::pod::PodSupervisor;
use crate::runtime::LogOptions;

fn chunk(request_id: u64, data: Vec<u8>, eof: bool, error: String) -> pb::EdgeMessage {
    pb::EdgeMessage {
        kind: Some(Out::LogChunk(pb::LogChunk {
            request_id,
            data,
            eof,
            error,
        })),
    }
}

/// Streams the logs asked for, ending with an `eof` chunk (with `error` set on failure).
pub(crate) async fn serve(
    req: pb::LogRequest,
    pods: Arc<PodSupervisor>,
    tx: mpsc::Sender<pb::EdgeMessage>,
) {
    let id = req.request_id;
    let target = pods
        .log_target(&req.pod_uid, &req.container, req.previous)
        .await;
    let container_id = match target {
        Ok(c) => c,
        Err(e) => {
            let _ = tx.send(chunk(id, Vec::new(), true, e.to_string())).await;
            return;
        }
    };
    let opts = LogOptions {
        follow: req.follow,
        tail_lines: u64::try_from(req.tail_lines).ok(),
        timestamps: req.timestamps,
    };
    let mut stream = pods.runtime().logs(&container_id, opts);
    let mut error = String::new();
    while let Some(item) = stream.next().await {
        match item {
            Ok(bytes) => {
                for part in bytes.chunks(pb::MAX_LOG_CHUNK) {
                    if tx
                        .send(chunk(id, part.to_vec(), false, String::new()))
                        .await
                        .is_err()
                    {
                        return;
                    }
                }
            }
            Err(e) => {
                error = e.to_string();
                break;
            }
        }
    }
    let _ = tx.send(chunk(id, Vec::new(), true, error)).await;
}
