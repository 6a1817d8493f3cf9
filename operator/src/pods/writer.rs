//! The pod status writer: edges' reports become pod status, newest report per pod, written
//! with server-side apply only when what would be written changed.

use std::collections::HashMap;
use std::sync::Arc;

use decloud_crds::contracts::OPERATOR_FIELD_MANAGER;
use futures::StreamExt;
use k8s_openapi::api::core::v1::Pod;
use kube::ResourceExt;
use kube::api::{Api, Patch, PatchParams};
use kube::runtime::reflector::ObjectRef;
use parking_lot::Mutex;
use serde_json::json;
use sha2::{Digest, Sha256};
use tracing::{debug, warn};

use super::report::StatusReport;
use super::status;
use crate::Error;
use crate::context::Context;

/// Writes queued pod reports ([`Context::statuses`]) as pod status, newest report per pod,
/// forever.
pub(crate) async fn write_statuses(ctx: Arc<Context>) {
    let written: Mutex<HashMap<String, [u8; 32]>> = Mutex::new(HashMap::new());
    loop {
        let batch: Vec<StatusReport> = ctx.statuses.take().await;
        futures::stream::iter(batch)
            .for_each_concurrent(16, |r| write_status(&ctx, r, &written))
            .await;
        let mut w = written.lock();
        if w.len() > 1024 && w.len() > 2 * ctx.pods.state().len() {
            let live: std::collections::HashSet<String> =
                ctx.pods.state().iter().filter_map(|p| p.uid()).collect();
            w.retain(|uid, _| live.contains(uid));
        }
    }
}

async fn write_status(ctx: &Context, r: StatusReport, written: &Mutex<HashMap<String, [u8; 32]>>) {
    let key = ObjectRef::new(&r.report.name).within(&r.report.namespace);
    let Some(pod) = ctx.pods.get(&key) else {
        return;
    };
    if pod.uid().as_deref() != Some(r.report.uid.as_str()) {
        return;
    }
    let runtime = ctx.registry.runtime(&r.provider);
    let network = ctx.registry.pod_network(&r.provider);
    let host_ip = ctx.config.node_address;
    let status = status::pod_status(
        &pod,
        &r.report,
        &runtime,
        host_ip,
        network.as_ref(),
        jiff::Timestamp::now(),
    );
    if status.get("podIP").is_none() && !r.report.pod_ip.is_empty() {
        ctx.metrics.refused_pod_ips.inc();
        debug!(pod = %format!("{}/{}", r.report.namespace, r.report.name), ip = %r.report.pod_ip.escape_debug(),
            "not publishing a pod IP outside the edge's pod network");
    }
    let digest: [u8; 32] = Sha256::digest(status.to_string().as_bytes()).into();
    let unchanged = written.lock().get(&r.report.uid) == Some(&digest);
    if unchanged {
        return;
    }
    let api: Api<Pod> = Api::namespaced(ctx.client.clone(), &r.report.namespace);
    let body = json!({
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": r.report.name, "namespace": r.report.namespace},
        "status": status,
    });
    let pp = PatchParams::apply(OPERATOR_FIELD_MANAGER).force();
    let span = tracing::debug_span!("pod_status", pod = %format!("{}/{}", r.report.namespace, r.report.name));
    let _guard = span.enter();
    match api
        .patch_status(&r.report.name, &pp, &Patch::Apply(&body))
        .await
    {
        Ok(_) => {
            written.lock().insert(r.report.uid.clone(), digest);
            ctx.metrics.bridged(r.received.elapsed());
        }
        Err(kube::Error::Api(e)) if e.code == 404 => {}
        Err(e) => {
            let e = Error::from(e);
            warn!(error = %e, "writing pod status");
            ctx.metrics.failed("bridge", &e);
        }
    }
}
