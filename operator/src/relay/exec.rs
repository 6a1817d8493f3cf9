//! `kubectl exec`, `attach` and `port-forward` through edges: the operator's
//! [`ContainerStreams`].
//!
//! Exec and attach: the relay sends `OpenExec{tunnel_id, pod_uid, container, command, …}` on
//! the pod's edge's session; the edge opens a `Tunnel` RPC whose first frame is
//! `ExecOpen{tunnel_id}` (claimed here, by the provider asked only), then sends the process's
//! stdout/stderr frames and one final `ExecExit`; the operator sends stdin, stdin EOF and
//! terminal resizes. Port-forward: each forwarded connection is one gateway tunnel
//! ([`TunnelBroker`]) to the pod's port. Both count against the edge's tunnel slots, so one
//! edge carries at most `--max-tunnels-per-edge` of them and the gateway's tunnels together.

use std::sync::Arc;

use decloud_crds::contracts::provider_of_node;
use decloud_gateway::{
    Backend, ContainerStreams, DialError, ExecInput, ExecIo, ExecOutput, ExecRequest, StreamError,
    TunnelDialer, TunnelIo,
};
use decloud_proto as pb;
use futures::future::BoxFuture;
use futures::{FutureExt, StreamExt};
use k8s_openapi::api::core::v1::Pod;
use kube::ResourceExt;
use kube::runtime::reflector::ObjectRef;
use pb::tunnel_frame::Kind as Frame;
use tokio::sync::{mpsc, oneshot};
use tokio_stream::wrappers::ReceiverStream;
use tonic::{Response, Status, Streaming};

use super::pending::{ExecRpc, Unclaimed};
use super::tunnels::{FRAME_QUEUE, OPEN_TIMEOUT, TunnelBroker, TunnelResponse};
use crate::context::Context;
use crate::slots::Slot;

/// Messages buffered each way between the kubelet API and one exec tunnel.
const EXEC_QUEUE: usize = 16;

/// Serves exec, attach and port-forward from the edges in this (leader) replica's registry.
pub(crate) struct StreamRelay {
    ctx: Arc<Context>,
    tunnels: TunnelBroker,
}

impl StreamRelay {
    /// A relay over `ctx`'s pod cache and sessions.
    pub(crate) fn new(ctx: Arc<Context>) -> Self {
        Self {
            tunnels: TunnelBroker::new(ctx.clone()),
            ctx,
        }
    }
}

/// Where a request's pod runs.
struct Located {
    provider: String,
    uid: String,
    container: String,
}

/// Finds pod `namespace/name` on a DeCloud node in the pod cache, as kubelet finds a pod of
/// its own: unknown (or not on an edge) is "pod does not exist"; with `container`, that
/// container must be running.
fn locate(
    ctx: &Context,
    namespace: &str,
    name: &str,
    uid: Option<&str>,
    container: Option<&str>,
) -> Result<Located, StreamError> {
    let pod: Arc<Pod> = ctx
        .pods
        .get(&ObjectRef::new(name).within(namespace))
        .ok_or(StreamError::PodNotFound)?;
    let node = pod
        .spec
        .as_ref()
        .and_then(|s| s.node_name.clone())
        .unwrap_or_default();
    let provider = provider_of_node(&node)
        .ok_or(StreamError::PodNotFound)?
        .to_string();
    let pod_uid = pod.uid().unwrap_or_default();
    if uid.is_some_and(|u| u != pod_uid) {
        return Err(StreamError::UidMismatch);
    }
    let mut located = Located {
        provider,
        uid: pod_uid,
        container: String::new(),
    };
    let Some(container) = container else {
        return Ok(located);
    };
    let spec_names: Vec<&str> = pod
        .spec
        .iter()
        .flat_map(|s| s.containers.iter())
        .map(|c| c.name.as_str())
        .collect();
    let container = if container.is_empty() {
        spec_names.first().copied().unwrap_or_default()
    } else {
        container
    };
    let running = pod
        .status
        .as_ref()
        .and_then(|s| s.container_statuses.as_ref())
        .into_iter()
        .flatten()
        .any(|c| c.name == container && c.state.as_ref().is_some_and(|st| st.running.is_some()));
    if !spec_names.contains(&container) || !running {
        return Err(StreamError::ContainerNotFound(format!(
            "container not found ({container:?})"
        )));
    }
    located.container = container.to_string();
    Ok(located)
}

/// Forgets a pending exec when its open ends, whichever way.
struct ForgetOnDrop {
    ctx: Arc<Context>,
    id: u64,
}

impl Drop for ForgetOnDrop {
    fn drop(&mut self) {
        self.ctx.execs.forget(self.id);
    }
}

impl ContainerStreams for StreamRelay {
    fn check(
        &self,
        namespace: &str,
        pod: &str,
        pod_uid: Option<&str>,
        container: Option<&str>,
    ) -> Result<(), StreamError> {
        locate(&self.ctx, namespace, pod, pod_uid, container).map(|_| ())
    }

    fn check_exec(&self, req: &ExecRequest) -> Result<(), StreamError> {
        let bytes: usize = req.command.iter().map(String::len).sum();
        if req.command.len() > pb::MAX_EXEC_ARGS || bytes > pb::MAX_EXEC_COMMAND_BYTES {
            return Err(StreamError::Invalid(format!(
                "the command is too long: at most {} arguments and {} bytes",
                pb::MAX_EXEC_ARGS,
                pb::MAX_EXEC_COMMAND_BYTES
            )));
        }
        self.check(
            &req.namespace,
            &req.pod,
            req.pod_uid.as_deref(),
            Some(&req.container),
        )
    }

    fn exec(&self, req: ExecRequest) -> BoxFuture<'static, Result<ExecIo, StreamError>> {
        let ctx = self.ctx.clone();
        async move {
            let result = open_exec(ctx.clone(), req).await;
            ctx.metrics.tunnel_dialed(match &result {
                Ok(_) => "exec_ok",
                Err(e) => e.metric_label(),
            });
            result
        }
        .boxed()
    }

    fn port_forward(
        &self,
        namespace: &str,
        pod: &str,
        port: u16,
    ) -> BoxFuture<'static, Result<Box<dyn TunnelIo>, StreamError>> {
        let located = locate(&self.ctx, namespace, pod, None, None);
        let (namespace, pod) = (namespace.to_string(), pod.to_string());
        let tunnels = self.tunnels.clone();
        async move {
            let l = located?;
            let backend = Backend {
                namespace,
                pod,
                pod_uid: l.uid,
                provider: l.provider,
                port,
            };
            tunnels.dial(&backend).await.map_err(|e| match e {
                DialError::NotConnected(_) | DialError::Busy(_) => {
                    StreamError::Unavailable(format!("the pod's edge: {e}"))
                }
                DialError::Timeout(_) => {
                    StreamError::Edge("the pod's edge did not open the tunnel in time".into())
                }
                DialError::Refused(why) => StreamError::Edge(why),
            })
        }
        .boxed()
    }
}

async fn open_exec(ctx: Arc<Context>, req: ExecRequest) -> Result<ExecIo, StreamError> {
    let key = format!("{}/{}", req.namespace, req.pod);
    let l = locate(
        &ctx,
        &req.namespace,
        &req.pod,
        req.pod_uid.as_deref(),
        Some(&req.container),
    )?;
    let Some(slot) = ctx.tunnel_slots.acquire(&l.provider) else {
        ctx.metrics.tunnels_refused.inc();
        return Err(StreamError::Unavailable(format!(
            "the edge running pod {key} carries its maximum of streams; retry"
        )));
    };
    let (reply, rx) = oneshot::channel();
    let id = ctx.execs.register(&l.provider, reply);
    let _forget = ForgetOnDrop {
        ctx: ctx.clone(),
        id,
    };
    let open = pb::OpenExec {
        tunnel_id: id,
        pod_uid: l.uid,
        container: l.container,
        command: req.command,
        attach: req.attach,
        tty: req.tty,
        stdin: req.stdin,
        stdout: req.stdout,
        stderr: req.stderr,
    };
    match ctx
        .registry
        .with_session(&l.provider, |s| s.open_exec(open))
    {
        None => {
            return Err(StreamError::Unavailable(format!(
                "the edge running pod {key} is not connected"
            )));
        }
        Some(false) => {
            return Err(StreamError::Unavailable(format!(
                "the edge running pod {key} is busy; retry"
            )));
        }
        Some(true) => {}
    }
    let (inbound, tx) = match tokio::time::timeout(OPEN_TIMEOUT, rx).await {
        Ok(Ok(rpc)) => rpc,
        Ok(Err(_)) => {
            return Err(StreamError::Unavailable(format!(
                "the edge running pod {key} went away"
            )));
        }
        Err(_) => {
            return Err(StreamError::Edge(format!(
                "the edge running pod {key} did not open the stream in time"
            )));
        }
    };
    let (input, input_rx) = mpsc::channel(EXEC_QUEUE);
    let (output_tx, output) = mpsc::channel(EXEC_QUEUE);
    tokio::spawn(bridge(inbound, tx, input_rx, output_tx, slot));
    Ok(ExecIo { input, output })
}

fn frame(kind: Frame) -> Result<pb::TunnelFrame, Status> {
    Ok(pb::TunnelFrame { kind: Some(kind) })
}

/// Carries one exec tunnel: client input to frames, the edge's frames to output, until the
/// edge's `ExecExit` or either side goes. Holds the edge's tunnel slot meanwhile.
async fn bridge(
    mut inbound: Streaming<pb::TunnelFrame>,
    tx: mpsc::Sender<Result<pb::TunnelFrame, Status>>,
    mut input: mpsc::Receiver<ExecInput>,
    output: mpsc::Sender<ExecOutput>,
    _slot: Slot<String>,
) {
    loop {
        tokio::select! {
            msg = input.recv() => match msg {
                Some(ExecInput::Stdin(mut b)) => {
                    while !b.is_empty() {
                        let part = b.split_to(b.len().min(pb::MAX_TUNNEL_FRAME));
                        if tx.send(frame(Frame::Stdin(part))).await.is_err() {
                            return;
                        }
                    }
                }
                Some(ExecInput::StdinEof) => {
                    if tx.send(frame(Frame::StdinEof(pb::StdinEof {}))).await.is_err() {
                        return;
                    }
                }
                Some(ExecInput::Resize { width, height }) => {
                    let size = pb::TerminalSize { width: width.into(), height: height.into() };
                    if tx.send(frame(Frame::Resize(size))).await.is_err() {
                        return;
                    }
                }
                // The client is gone: ending the RPC ends the session on the edge.
                None => return,
            },
            msg = inbound.next() => {
                let out = match msg {
                    Some(Ok(pb::TunnelFrame { kind: Some(Frame::Stdout(b)) })) => {
                        ExecOutput::Stdout(b)
                    }
                    Some(Ok(pb::TunnelFrame { kind: Some(Frame::Stderr(b)) })) => {
                        ExecOutput::Stderr(b)
                    }
                    Some(Ok(pb::TunnelFrame { kind: Some(Frame::Exit(exit)) })) => {
                        let last = if exit.error.is_empty() {
                            ExecOutput::Exited(exit.exit_code)
                        } else {
                            ExecOutput::Failed(exit.error)
                        };
                        let _ = output.send(last).await;
                        return;
                    }
                    Some(Ok(_)) => continue,
                    Some(Err(status)) => {
                        let _ = output
                            .send(ExecOutput::Failed(format!("the edge's stream failed: {}", status.message())))
                            .await;
                        return;
                    }
                    None => {
                        let _ = output
                            .send(ExecOutput::Failed("the edge ended the stream without an exit status".into()))
                            .await;
                        return;
                    }
                };
                if output.send(out).await.is_err() {
                    return;
                }
            }
        }
    }
}

/// Serves an exec `Tunnel` RPC of `provider` whose first frame named `id`: hands its two
/// halves to the exec waiting for them.
pub(crate) fn accept(
    ctx: &Context,
    provider: &str,
    id: u64,
    inbound: Streaming<pb::TunnelFrame>,
) -> Result<Response<TunnelResponse>, Status> {
    let reply = ctx.execs.claim(id, provider).map_err(|e| match e {
        Unclaimed::Unknown => Status::not_found(format!(
            "exec {id} is not awaited (it timed out or was never asked for)"
        )),
        Unclaimed::NotAskedOf => {
            Status::permission_denied(format!("exec {id} was not asked of provider {provider:?}"))
        }
    })?;
    let (tx, rx) = mpsc::channel(FRAME_QUEUE);
    let rpc: ExecRpc = (inbound, tx);
    // If the exec gave up meanwhile, the RPC ends here and the edge stops the process.
    let _ = reply.send(rpc);
    Ok(Response::new(ReceiverStream::new(rx)))
}

#[cfg(test)]
mod tests;
