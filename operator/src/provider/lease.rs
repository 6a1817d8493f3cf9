//! Node Leases: each ready edge's Lease in `kube-node-lease` is renewed every
//! `--node-lease-renew` (~10 s), paced, and never once per heartbeat.

use std::sync::Arc;

use decloud_crds::contracts::{NODE_LEASE_NAMESPACE, OPERATOR_FIELD_MANAGER, node_name};
use futures::StreamExt;
use jiff::Timestamp;
use k8s_openapi::api::coordination::v1::Lease;
use kube::Resource;
use kube::api::{Api, Patch, PatchParams};
use kube::runtime::reflector::ObjectRef;
use serde_json::json;

use crate::context::Context;
use crate::time::rfc3339_micros;

/// Seconds a node Lease stays valid without renewal.
const NODE_LEASE_SECONDS: i64 = 40;

/// Node Lease renewals in flight at once, when the API server is slower than the pacing.
const LEASE_RENEWALS_IN_FLIGHT: usize = 32;

/// Renews the node Lease of every ready edge once per `config.node_lease_renew`, forever.
///
/// The renewals of a round are spread evenly over the period (a steady write rate, not a burst
/// of thousands every 10 s), with a few in flight when the API server lags.
pub(crate) async fn renew_node_leases(ctx: Arc<Context>) {
    let period = ctx.config.node_lease_renew;
    loop {
        let round = tokio::time::Instant::now();
        let nodes: Vec<(String, String)> = ctx
            .registry
            .ready_providers()
            .into_iter()
            .filter_map(|provider| {
                let node = node_name(&provider);
                // Only nodes that exist get a Lease (the Provider controller creates them).
                let owner = ctx.nodes.get(&ObjectRef::new(&node))?;
                Some((node, owner.meta().uid.clone().unwrap_or_default()))
            })
            .collect();
        let gap = period / u32::try_from(nodes.len().max(1)).unwrap_or(u32::MAX);
        futures::stream::iter(nodes.into_iter().enumerate())
            .map(|(i, (node, uid))| {
                let ctx = &ctx;
                let at = round + gap * u32::try_from(i).unwrap_or(u32::MAX);
                async move {
                    tokio::time::sleep_until(at).await;
                    renew_node_lease(ctx, &node, &uid).await;
                }
            })
            .buffer_unordered(LEASE_RENEWALS_IN_FLIGHT)
            .for_each(|()| async {})
            .await;
        tokio::time::sleep_until(round + period).await;
    }
}

async fn renew_node_lease(ctx: &Context, node: &str, node_uid: &str) {
    let api: Api<Lease> = Api::namespaced(ctx.client.clone(), NODE_LEASE_NAMESPACE);
    let body = json!({
        "apiVersion": "coordination.k8s.io/v1",
        "kind": "Lease",
        "metadata": {
            "name": node,
            "namespace": NODE_LEASE_NAMESPACE,
            "ownerReferences": [{"apiVersion": "v1", "kind": "Node", "name": node, "uid": node_uid}],
        },
        "spec": {
            "holderIdentity": node,
            "leaseDurationSeconds": NODE_LEASE_SECONDS,
            "renewTime": rfc3339_micros(Timestamp::now()),
        },
    });
    let pp = PatchParams::apply(OPERATOR_FIELD_MANAGER).force();
    if let Err(e) = api.patch(node, &pp, &Patch::Apply(&body)).await {
        let e = crate::Error::from(e);
        tracing::warn!(node = %node, error = %e, "renewing node lease");
        ctx.metrics.failed("node-lease", &e);
    }
}
