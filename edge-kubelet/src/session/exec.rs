//! `OpenExec` → an exec or attach session in one of this edge's running containers, carried
//! on a `Tunnel` RPC (the edge dials out, as for every tunnel).
//!
//! The RPC starts with `ExecOpen{tunnel_id}`; then the process's output goes up as
//! `stdout`/`stderr` frames and the operator's `stdin`, `stdin_eof` and `resize` frames come
//! down, until the process ends (`ExecExit` with its code) or the operator ends the RPC. A
//! session that cannot start ends with `ExecExit{error}` at once. Commands run inside the
//! container through the engine's exec, never on the host.

use std::sync::Arc;
use std::time::Duration;

use futures::StreamExt;
use tokio::io::AsyncWriteExt;
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tonic::Streaming;

use decloud_proto as pb;
use pb::tunnel_frame::Kind as Frame;

use super::tunnel::{MAX_TUNNELS, TunnelOpener, Tunnels};
use crate::pod::PodSupervisor;
use crate::runtime::{ContainerStream, StreamChunk, StreamSpec};

/// Frames queued towards the operator per session.
const FRAME_QUEUE: usize = 32;
/// How long the operator has to end the RPC after the last frame.
const LINGER: Duration = Duration::from_secs(5);

fn frame(kind: Frame) -> pb::TunnelFrame {
    pb::TunnelFrame { kind: Some(kind) }
}

fn exit(exit_code: i32, error: String) -> pb::TunnelFrame {
    frame(Frame::Exit(pb::ExecExit { exit_code, error }))
}

/// Checks what the operator asked against the protocol's bounds.
fn validate(req: &pb::OpenExec) -> Result<(), String> {
    if req.attach {
        if !req.command.is_empty() {
            return Err("an attach runs no command".into());
        }
    } else {
        let bytes: usize = req.command.iter().map(String::len).sum();
        if req.command.is_empty() {
            return Err("an exec needs a command".into());
        }
        if req.command.len() > pb::MAX_EXEC_ARGS || bytes > pb::MAX_EXEC_COMMAND_BYTES {
            return Err(format!(
                "the command is too long: at most {} arguments and {} bytes",
                pb::MAX_EXEC_ARGS,
                pb::MAX_EXEC_COMMAND_BYTES
            ));
        }
    }
    if !req.stdin && !req.stdout && !req.stderr {
        return Err("you must specify at least 1 of stdin, stdout, stderr".into());
    }
    Ok(())
}

async fn start(req: &pb::OpenExec, pods: &PodSupervisor) -> Result<ContainerStream, String> {
    validate(req)?;
    let container_id = pods
        .log_target(&req.pod_uid, &req.container, false)
        .await
        .map_err(|_| format!("container not found ({:?})", req.container))?;
    let spec = StreamSpec {
        command: (!req.attach).then_some(req.command.as_slice()),
        tty: req.tty,
        stdin: req.stdin,
        stdout: req.stdout,
        stderr: req.stderr && !req.tty,
    };
    pods.runtime()
        .open_stream(&container_id, spec)
        .await
        .map_err(|e| e.to_string())
}

/// Handles an `OpenExec` request in the background: an exec or attach session in one of this
/// edge's running containers, counted against the session's tunnel cap.
pub(crate) fn open(tunnels: &Tunnels, req: pb::OpenExec, pods: &Arc<PodSupervisor>) {
    let opener = tunnels.opener();
    let slot = tunnels.try_slot();
    let pods = pods.clone();
    tokio::spawn(async move {
        let refusal = slot
            .is_none()
            .then(|| format!("this edge carries its maximum of {MAX_TUNNELS} tunnels"));
        let _slot = slot;
        serve(req, pods, opener, refusal).await;
    });
}

/// Serves one `OpenExec`; `refusal` set: answers with it at once.
async fn serve(
    req: pb::OpenExec,
    pods: Arc<PodSupervisor>,
    opener: TunnelOpener,
    refusal: Option<String>,
) {
    let id = req.tunnel_id;
    let (tx, rx) = mpsc::channel(FRAME_QUEUE);
    let _ = tx
        .send(frame(Frame::ExecOpen(pb::ExecOpen { tunnel_id: id })))
        .await;
    let inbound = match opener(ReceiverStream::new(rx)).await {
        Ok(s) => s,
        Err(status) => {
            tracing::debug!(tunnel = id, error = %status.message(), "cannot open the exec tunnel");
            return;
        }
    };
    let started = match refusal {
        Some(why) => Err(why),
        None => start(&req, &pods).await,
    };
    let stream = match started {
        Ok(s) => s,
        Err(error) => {
            tracing::info!(tunnel = id, pod_uid = %req.pod_uid, container = %req.container, %error, "exec refused");
            let _ = tx.send(exit(0, error)).await;
            finish(tx, inbound).await;
            return;
        }
    };
    tracing::info!(
        tunnel = id,
        pod_uid = %req.pod_uid,
        container = %req.container,
        attach = req.attach,
        tty = req.tty,
        "exec session started"
    );
    let last = carry(stream, &pods, &tx, inbound).await;
    if let Some((last, inbound)) = last {
        let _ = tx.send(last).await;
        finish(tx, inbound).await;
    }
}

/// Ends the edge's half and waits (briefly) for the operator to end the RPC, so the last
/// frames are not lost to a reset.
async fn finish(tx: mpsc::Sender<pb::TunnelFrame>, mut inbound: Streaming<pb::TunnelFrame>) {
    drop(tx);
    let _ = tokio::time::timeout(LINGER, async {
        while let Ok(Some(_)) = inbound.message().await {}
    })
    .await;
}

/// Carries the session until the process ends (its `ExecExit` and the RPC returned) or the
/// operator ends the RPC (`None`).
async fn carry(
    stream: ContainerStream,
    pods: &PodSupervisor,
    tx: &mpsc::Sender<pb::TunnelFrame>,
    mut inbound: Streaming<pb::TunnelFrame>,
) -> Option<(pb::TunnelFrame, Streaming<pb::TunnelFrame>)> {
    let ContainerStream {
        mut output,
        mut input,
        handle,
    } = stream;
    let runtime = pods.runtime().clone();
    let ended = {
        let up = async {
            while let Some(chunk) = output.next().await {
                let (mut data, stderr) = match chunk {
                    Ok(StreamChunk::Stdout(b)) => (b, false),
                    Ok(StreamChunk::Stderr(b)) => (b, true),
                    Err(e) => return Err(format!("reading the process's output: {e}")),
                };
                while !data.is_empty() {
                    let part = data.split_to(data.len().min(pb::MAX_TUNNEL_FRAME));
                    let kind = if stderr {
                        Frame::Stderr(part)
                    } else {
                        Frame::Stdout(part)
                    };
                    if tx.send(frame(kind)).await.is_err() {
                        return Err("the operator closed the session".into());
                    }
                }
            }
            Ok(())
        };
        let down = async {
            let mut stdin_open = true;
            loop {
                match inbound.message().await {
                    Ok(Some(pb::TunnelFrame {
                        kind: Some(Frame::Stdin(b)),
                    })) => {
                        if stdin_open && input.write_all(&b).await.is_err() {
                            stdin_open = false;
                        }
                    }
                    Ok(Some(pb::TunnelFrame {
                        kind: Some(Frame::StdinEof(_)),
                    })) => {
                        let _ = input.shutdown().await;
                        stdin_open = false;
                    }
                    Ok(Some(pb::TunnelFrame {
                        kind: Some(Frame::Resize(size)),
                    })) => {
                        let w = u16::try_from(size.width).unwrap_or(u16::MAX);
                        let h = u16::try_from(size.height).unwrap_or(u16::MAX);
                        if let Err(e) = runtime.resize_stream(&handle, w, h).await {
                            tracing::debug!(error = %e, "terminal resize failed");
                        }
                    }
                    Ok(Some(_)) => {}
                    Ok(None) | Err(_) => return,
                }
            }
        };
        tokio::pin!(up, down);
        tokio::select! {
            r = &mut up => Some(r),
            () = &mut down => None,
        }
    };
    let ended = ended?;
    let last = match ended {
        Err(error) => exit(0, error),
        Ok(()) => match runtime.stream_exit_code(&handle).await {
            Ok(code) => exit(
                code.map_or(0, |c| i32::try_from(c).unwrap_or(i32::MAX)),
                String::new(),
            ),
            Err(e) => exit(0, format!("reading the exit code: {e}")),
        },
    };
    Some((last, inbound))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn open(command: &[&str], attach: bool) -> pb::OpenExec {
        pb::OpenExec {
            command: command.iter().map(|s| s.to_string()).collect(),
            attach,
            stdout: true,
            ..Default::default()
        }
    }

    #[test]
    fn requests_out_of_bounds_are_refused() {
        assert_eq!(validate(&open(&["sh"], false)), Ok(()));
        assert_eq!(validate(&open(&[], true)), Ok(()));
        assert!(
            validate(&open(&[], false)).is_err(),
            "an exec needs a command"
        );
        assert!(
            validate(&open(&["sh"], true)).is_err(),
            "an attach runs none"
        );
        let many = vec!["a"; pb::MAX_EXEC_ARGS + 1];
        assert!(validate(&open(&many, false)).is_err());
        let long = "x".repeat(pb::MAX_EXEC_COMMAND_BYTES + 1);
        assert!(validate(&open(&[&long], false)).is_err());
        let mut none = open(&["sh"], false);
        none.stdout = false;
        assert!(validate(&none).is_err(), "at least one stream");
    }
}
