//! The tunnel endpoint: carries one gateway connection to one container port.
//!
//! Not built yet (a later issue does it). The shape is fixed already: on `OpenTunnel` the edge
//! opens a `Tunnel` stream to the operator, sends `TunnelOpen{tunnel_id}`, connects to
//! `pod_ip:port` and copies bytes both ways until either side closes.

use std::sync::Arc;

use decloud_proto as pb;

use crate::pod_supervisor::PodSupervisor;

/// Handles an `OpenTunnel` request. For now: logged and refused.
pub fn open(req: pb::OpenTunnel, _pods: &Arc<PodSupervisor>) {
    tracing::warn!(
        tunnel_id = req.tunnel_id,
        pod_uid = %req.pod_uid,
        port = req.port,
        "OpenTunnel is not supported yet by this edge-kubelet; ignoring the request"
    );
}
