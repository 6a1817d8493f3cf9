//! Service-to-service connections: a container on one edge to a ready replica of a Workload
//! on any edge, over both edges' own outbound connections.
//!
//! The source edge's service proxy opens a `Tunnel` whose first frame is `ServiceOpen{source
//! pod, service address, port}` (edge-kubelet `session/services.rs`). Here the operator
//! trusts none of it: the source pod must be bound to *that* edge's node, the address must
//! name exactly one Workload (`decloud_crds::services`) that the source's namespace may reach
//! (its own, or one listed in the target's `spec.serviceAccess.allowedNamespaces`), the port
//! must be one the Workload declares, and the pod and the edge must be within their share of
//! open service connections. Refusals end the RPC at once with a status saying why (and an
//! Event on the source pod for a refused namespace). Then ready replicas are tried in
//! rotation through the gateway's own [`TunnelBroker`] (each `OpenTunnel` answered within
//! its open timeout, the next replica tried on failure), and once one is connected the edge
//! gets an empty data frame and the two tunnels are spliced.

use std::net::Ipv4Addr;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Instant;

use bytes::Bytes;
use decloud_crds::Workload;
use decloud_crds::contracts::node_name;
use decloud_crds::pods::is_terminal;
use decloud_crds::services::{
    is_service_ip, may_connect, service_fqdn, service_ports, workloads_at,
};
use decloud_gateway::{Backend, TunnelDialer, ready_backends};
use decloud_proto as pb;
use k8s_openapi::api::core::v1::Pod;
use kube::{Resource, ResourceExt, runtime::reflector::Store};
use pb::tunnel_frame::Kind as Frame;
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tonic::{Response, Status, Streaming};
use tracing::{debug, info, warn};

use super::service_state::{MAX_PER_EDGE, MAX_PER_POD};
use super::tunnels::{FRAME_QUEUE, GrpcTunnel, TunnelBroker, TunnelResponse};
use crate::context::Context;
use crate::pods::PodEventRecord;

/// Ready replicas tried for one connection before it is refused.
const MAX_TRIES: usize = 3;

/// Why a service connection is refused, before any replica is tried.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum Refusal {
    /// The edge named a pod that is not bound to its node (or none at all).
    NotYourPod(String),
    /// Not a service address or port.
    Invalid(String),
    /// No Workload serves this address and port.
    NoService(String),
    /// The target does not let the source's namespace in.
    Namespace {
        target: String,
        source_namespace: String,
    },
    /// Two Workloads the source may reach share the address.
    Ambiguous(String),
    /// The pod or the edge holds its share of connections.
    Busy(String),
}

impl Refusal {
    fn status(&self) -> Status {
        match self {
            Self::NotYourPod(m) => Status::permission_denied(m.clone()),
            Self::Invalid(m) => Status::invalid_argument(m.clone()),
            Self::NoService(m) => Status::not_found(m.clone()),
            Self::Namespace {
                target,
                source_namespace,
            } => Status::permission_denied(format!(
                "{target} does not accept connections from namespace {source_namespace:?} \
                 (spec.serviceAccess.allowedNamespaces)"
            )),
            Self::Ambiguous(m) => Status::failed_precondition(m.clone()),
            Self::Busy(m) => Status::resource_exhausted(m.clone()),
        }
    }

    fn metric_label(&self) -> &'static str {
        match self {
            Self::NotYourPod(_) => "not_your_pod",
            Self::Invalid(_) => "invalid",
            Self::NoService(_) => "no_service",
            Self::Namespace { .. } => "namespace",
            Self::Ambiguous(_) => "ambiguous",
            Self::Busy(_) => "busy",
        }
    }
}

/// The pod `uid` if it is bound to `provider`'s node and not finished.
fn source_pod(pods: &Store<Pod>, provider: &str, uid: &str) -> Result<Arc<Pod>, Refusal> {
    if uid.is_empty() || uid.len() > 64 {
        return Err(Refusal::Invalid(
            "source pod uid missing or too long".into(),
        ));
    }
    let node = node_name(provider);
    pods.state()
        .into_iter()
        .find(|p| p.metadata.uid.as_deref() == Some(uid))
        .filter(|p| p.spec.as_ref().and_then(|s| s.node_name.as_deref()) == Some(node.as_str()))
        .filter(|p| !is_terminal(p))
        .ok_or_else(|| {
            Refusal::NotYourPod(format!(
                "pod {uid} is not running on node {node}: an edge may only speak for its own pods"
            ))
        })
}

/// The one Workload at `ip` that a pod of `source_ns` may reach on `port`.
pub(crate) fn target<'a>(
    workloads: &'a [Arc<Workload>],
    source_ns: &str,
    ip: Ipv4Addr,
    port: u16,
) -> Result<&'a Workload, Refusal> {
    let at = workloads_at(workloads.iter().map(AsRef::as_ref), ip);
    let allowed: Vec<&Workload> = at
        .iter()
        .copied()
        .filter(|w| may_connect(w, source_ns))
        .collect();
    let wl = match (at.first(), allowed.as_slice()) {
        (None, _) => return Err(Refusal::NoService(format!("no service at {ip}"))),
        (Some(w), []) => {
            return Err(Refusal::Namespace {
                target: service_fqdn(&w.name_any(), &w.namespace().unwrap_or_default()),
                source_namespace: source_ns.to_string(),
            });
        }
        (_, [one]) => *one,
        (_, _) => {
            return Err(Refusal::Ambiguous(format!(
                "{ip} is the address of more than one service; rename one"
            )));
        }
    };
    if !service_ports(wl).contains(&port) {
        return Err(Refusal::NoService(format!(
            "{} declares no container port {port}",
            service_fqdn(&wl.name_any(), &wl.namespace().unwrap_or_default())
        )));
    }
    Ok(wl)
}

/// Ready replicas of `wl` on `port`, rotated by `turn`.
fn backends(pods: &Store<Pod>, wl: &Workload, port: u16, turn: usize) -> Vec<Backend> {
    let mut out = ready_backends(pods, wl, port);
    if !out.is_empty() {
        let n = out.len();
        out.rotate_left(turn % n);
    }
    out
}

/// Serves a `Tunnel` RPC of `provider` whose first frame was `open`.
pub(crate) fn accept(
    ctx: &Arc<Context>,
    provider: &str,
    open: pb::ServiceOpen,
    inbound: Streaming<pb::TunnelFrame>,
) -> Result<Response<TunnelResponse>, Status> {
    let pod = source_pod(&ctx.pods, provider, &open.source_pod_uid);
    let decided = pod.and_then(|pod| {
        let ip: Ipv4Addr = open
            .service_ip
            .parse()
            .ok()
            .filter(|ip| is_service_ip(*ip))
            .ok_or_else(|| {
                Refusal::Invalid(format!("{:?} is not a service address", open.service_ip))
            })?;
        let port = u16::try_from(open.port)
            .ok()
            .filter(|p| *p > 0)
            .ok_or_else(|| Refusal::Invalid(format!("invalid port {}", open.port)))?;
        let workloads = ctx
            .services
            .workloads
            .get()
            .map(Store::state)
            .unwrap_or_default();
        let source_ns = pod.namespace().unwrap_or_default();
        let wl = match target(&workloads, &source_ns, ip, port) {
            Ok(wl) => wl.clone(),
            Err(r) => {
                if matches!(r, Refusal::Namespace { .. }) {
                    record_refusal(ctx, &pod, &r);
                }
                return Err(r);
            }
        };
        let uid = open.source_pod_uid.clone();
        let pod_slot = ctx.services.per_pod.acquire(&uid).ok_or_else(|| {
            Refusal::Busy(format!(
                "pod {uid} has {MAX_PER_POD} service connections open"
            ))
        })?;
        let edge_slot = ctx
            .services
            .per_edge
            .acquire(&provider.to_string())
            .ok_or_else(|| {
                Refusal::Busy(format!(
                    "provider {provider} has {MAX_PER_EDGE} service connections open"
                ))
            })?;
        Ok((pod, wl, port, pod_slot, edge_slot))
    });
    let (pod, wl, port, pod_slot, edge_slot) = match decided {
        Ok(d) => d,
        Err(r) => {
            ctx.metrics.tunnel_dialed(r.metric_label());
            info!(%provider, source_pod_uid = %open.source_pod_uid, service = %open.service_ip,
                port = open.port, reason = r.metric_label(), "service connection refused");
            return Err(r.status());
        }
    };
    let (tx, rx) = mpsc::channel(FRAME_QUEUE);
    let ctx = ctx.clone();
    let target = service_fqdn(&wl.name_any(), &wl.namespace().unwrap_or_default());
    let source = format!("{}/{}", pod.namespace().unwrap_or_default(), pod.name_any());
    tokio::spawn(async move {
        let _slots = (pod_slot, edge_slot);
        let started = Instant::now();
        let turn = ctx.services.next.fetch_add(1, Ordering::Relaxed);
        let candidates = backends(&ctx.pods, &wl, port, turn);
        let broker = TunnelBroker::new(ctx.clone());
        let mut why = format!("{target} has no ready replica");
        let mut connected = None;
        for b in candidates.iter().take(MAX_TRIES) {
            match broker.dial(b).await {
                Ok(io) => {
                    connected = Some((io, b.pod.clone()));
                    break;
                }
                Err(e) => {
                    debug!(%target, pod = %b.pod, error = %e, "service replica not reached; trying the next");
                    why = format!("no replica of {target} answered (last: {e})");
                }
            }
        }
        let Some((mut to_target, replica)) = connected else {
            warn!(%source, %target, %why, "service connection failed");
            let _ = tx
                .send(Ok(pb::TunnelFrame {
                    kind: Some(Frame::Close(pb::TunnelClose { error: why })),
                }))
                .await;
            return;
        };
        if tx
            .send(Ok(pb::TunnelFrame {
                kind: Some(Frame::Data(Bytes::new())),
            }))
            .await
            .is_err()
        {
            return;
        }
        debug!(%source, %target, %replica, open_ms = started.elapsed().as_millis() as u64, "service connection open");
        let mut from_source = GrpcTunnel::new(inbound, Bytes::new(), tx);
        // Buffers of one tunnel frame: each read leaves as one frame, not 8 KiB ones.
        let _ = tokio::io::copy_bidirectional_with_sizes(
            &mut from_source,
            &mut to_target,
            pb::MAX_TUNNEL_FRAME,
            pb::MAX_TUNNEL_FRAME,
        )
        .await;
    });
    Ok(Response::new(ReceiverStream::new(rx)))
}

/// An Event on the source pod (as kubelet's are, rate-limited per pod) for a refusal its
/// owner can act on.
fn record_refusal(ctx: &Context, pod: &Pod, refusal: &Refusal) {
    let uid = pod.uid().unwrap_or_default();
    if !ctx.event_limiter.take(&uid, Instant::now()) {
        return;
    }
    let record = PodEventRecord {
        node: pod
            .spec
            .as_ref()
            .and_then(|s| s.node_name.clone())
            .unwrap_or_default(),
        regarding: pod.object_ref(&()),
        warning: true,
        reason: "ServiceConnectionRefused".into(),
        message: refusal.status().message().to_string(),
    };
    let _ = ctx.pod_events.try_send(record);
}

#[cfg(test)]
mod tests {
    use super::*;
    use decloud_crds::services::service_ip;

    fn wl(ns: &str, name: &str, port: i32, allowed: &[&str]) -> Arc<Workload> {
        let mut w: Workload = serde_json::from_value(serde_json::json!({
            "apiVersion": "decloud.dev/v1alpha1", "kind": "Workload",
            "metadata": {"name": name, "namespace": ns},
            "spec": {
                "template": {"spec": {"containers": [{"name": "c", "image": "busybox",
                    "ports": [{"containerPort": port}]}]}},
                "serviceAccess": {"allowedNamespaces": allowed},
            }
        }))
        .unwrap();
        w.metadata.namespace = Some(ns.into());
        Arc::new(w)
    }

    #[test]
    fn the_target_is_the_one_reachable_service_at_the_address_and_port() {
        let all = vec![
            wl("shop", "db", 8080, &[]),
            wl("open", "api", 80, &["shop"]),
        ];
        let db = service_ip("shop", "db");
        assert_eq!(target(&all, "shop", db, 8080).unwrap().name_any(), "db");
        assert!(matches!(
            target(&all, "shop", db, 9999),
            Err(Refusal::NoService(_))
        ));
        assert_eq!(
            target(&all, "other", db, 8080).unwrap_err(),
            Refusal::Namespace {
                target: "db.shop.svc.decloud".into(),
                source_namespace: "other".into()
            }
        );
        let api = service_ip("open", "api");
        assert!(target(&all, "shop", api, 80).is_ok(), "allowed namespace");
        assert!(target(&all, "third", api, 80).is_err());
        assert!(matches!(
            target(&all, "shop", service_ip("shop", "nope"), 80),
            Err(Refusal::NoService(_))
        ));
    }

    #[test]
    fn an_edge_speaks_only_for_pods_bound_to_its_node() {
        let (store, mut writer) = kube::runtime::reflector::store::<Pod>();
        let pod: Pod = serde_json::from_value(serde_json::json!({
            "metadata": {"name": "p", "namespace": "shop", "uid": "u1"},
            "spec": {"nodeName": node_name("alice"), "containers": []},
        }))
        .unwrap();
        writer.apply_watcher_event(&kube::runtime::watcher::Event::Apply(pod));
        assert!(source_pod(&store, "alice", "u1").is_ok());
        assert!(matches!(
            source_pod(&store, "bob", "u1"),
            Err(Refusal::NotYourPod(_))
        ));
        assert!(matches!(
            source_pod(&store, "alice", "u2"),
            Err(Refusal::NotYourPod(_))
        ));
        assert!(matches!(
            source_pod(&store, "alice", &"x".repeat(65)),
            Err(Refusal::Invalid(_))
        ));
    }
}
