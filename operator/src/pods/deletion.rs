//! Deleting pods on virtual nodes: no real kubelet finalizes them, so the operator deletes a
//! pod with grace 0 once its edge confirms the containers are gone (or it never ran there, or
//! its provider is gone for good).

use std::sync::Arc;

use decloud_crds::contracts::node_name;
use k8s_openapi::api::core::v1::Pod;
use kube::ResourceExt;
use kube::api::{Api, DeleteParams, Preconditions};
use tracing::{debug, info, warn};

use crate::Error;
use crate::context::Context;

/// Grace period of a pod being deleted.
pub(crate) fn deletion_grace(pod: &Pod) -> u32 {
    pod.metadata
        .deletion_grace_period_seconds
        .unwrap_or(0)
        .clamp(0, i64::from(u32::MAX)) as u32
}

/// Deletes `pod` with grace 0 (its edge confirmed, or it never reached one).
pub(crate) async fn finish_deletion(ctx: &Context, pod: &Pod) {
    let api: Api<Pod> = Api::namespaced(ctx.client.clone(), &pod.namespace().unwrap_or_default());
    let dp = DeleteParams {
        grace_period_seconds: Some(0),
        preconditions: Some(Preconditions {
            uid: pod.uid(),
            resource_version: None,
        }),
        ..DeleteParams::default()
    };
    let key = format!("{}/{}", pod.namespace().unwrap_or_default(), pod.name_any());
    match api.delete(&pod.name_any(), &dp).await {
        Ok(_) => info!(pod = %key, "pod deleted"),
        Err(kube::Error::Api(e)) if e.code == 404 || e.code == 409 => {}
        Err(e) => {
            let e = Error::from(e);
            warn!(pod = %key, error = %e, "finishing pod deletion");
            ctx.metrics.failed("bridge", &e);
        }
    }
}

pub(crate) fn spawn_finish(ctx: &Arc<Context>, pod: &Pod) {
    let (ctx, pod) = (ctx.clone(), pod.clone());
    tokio::spawn(async move { finish_deletion(&ctx, &pod).await });
}

/// The edge `provider` says pod `uid` is gone: finish its deletion if one was asked for.
pub(crate) fn on_pod_gone(ctx: &Arc<Context>, provider: &str, session_id: u64, uid: &str) {
    ctx.registry
        .with_current(provider, session_id, |s| s.pod_gone(uid));
    let node = node_name(provider);
    let pod = ctx.pods.find(|p| {
        p.uid().as_deref() == Some(uid)
            && p.spec.as_ref().and_then(|s| s.node_name.as_deref()) == Some(node.as_str())
    });
    match pod {
        Some(pod) if pod.metadata.deletion_timestamp.is_some() => {
            // Only a pod really going frees its event budget (an edge cannot reset it).
            ctx.event_limiter.forget(uid);
            spawn_finish(ctx, &pod)
        }
        Some(pod) => {
            debug!(pod = %pod.name_any(), "edge reports a pod gone that is not being deleted")
        }
        None => {}
    }
}
