//! The `Tunnel` RPC: its first frame says what it carries, a gateway tunnel
//! (`TunnelOpen`, [`super::tunnels`]), an exec/attach session (`ExecOpen`, [`super::exec`]) or
//! a container's connection to a service (`ServiceOpen`, [`super::services`]).

use std::sync::Arc;

use decloud_proto as pb;
use pb::tunnel_frame::Kind as Frame;
use tonic::{Response, Status, Streaming};

use super::tunnels::{OPEN_TIMEOUT, TunnelResponse};
use crate::context::Context;

/// Serves one `Tunnel` RPC of `provider` (already authenticated).
pub(crate) async fn accept(
    ctx: &Arc<Context>,
    provider: &str,
    mut inbound: Streaming<pb::TunnelFrame>,
) -> Result<Response<TunnelResponse>, Status> {
    let first = match tokio::time::timeout(OPEN_TIMEOUT, inbound.message()).await {
        Err(_) => {
            return Err(Status::deadline_exceeded(
                "no TunnelOpen within 3 s of opening the Tunnel",
            ));
        }
        Ok(r) => r?,
    };
    match first {
        Some(pb::TunnelFrame {
            kind: Some(Frame::Open(open)),
        }) => super::tunnels::accept_open(ctx, provider, open, inbound).await,
        Some(pb::TunnelFrame {
            kind: Some(Frame::ExecOpen(open)),
        }) => super::exec::accept(ctx, provider, open.tunnel_id, inbound),
        Some(pb::TunnelFrame {
            kind: Some(Frame::ServiceOpen(open)),
        }) => super::services::accept(ctx, provider, open, inbound),
        _ => Err(Status::failed_precondition(
            "the first frame of a Tunnel must be a TunnelOpen, an ExecOpen or a ServiceOpen",
        )),
    }
}
