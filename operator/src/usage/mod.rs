//! Usage accounting: the CPU-seconds and memory-GiB-hours edges report for their pods, summed
//! per Provider and per Workload.
//!
//! Edges send cumulative per-pod figures with their status reports; the ledger keeps the latest
//! per pod and, when a pod goes away, folds it into its provider's and workload's history, so
//! totals never go back. Writes are coalesced: Provider totals ride on the Provider status the
//! controller writes anyway, Workload totals are applied on a timer by [`write_workload_usage`],
//! only for Workloads whose totals changed.

mod ledger;

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use decloud_crds::contracts::USAGE_FIELD_MANAGER;
use decloud_crds::{Usage, Workload};
use kube::Api;
use kube::api::{Patch, PatchParams};

pub(crate) use ledger::{UsageLedger, WorkloadKey};

use crate::context::Context;

/// Applies changed Workload usage totals every `interval`, until the process ends.
pub(crate) async fn write_workload_usage(ctx: Arc<Context>, interval: Duration) {
    let mut written: HashMap<WorkloadKey, Usage> = HashMap::new();
    let mut tick = tokio::time::interval(interval);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        for ((ns, name), usage) in ctx.usage.take_changed_workloads() {
            let key = (ns.clone(), name.clone());
            if written.get(&key) == Some(&usage) {
                continue;
            }
            let api: Api<Workload> = Api::namespaced(ctx.client.clone(), &ns);
            let body = serde_json::json!({
                "apiVersion": "decloud.dev/v1alpha1",
                "kind": "Workload",
                "status": {"usage": usage},
            });
            match api
                .patch_status(
                    &name,
                    &PatchParams::apply(USAGE_FIELD_MANAGER).force(),
                    &Patch::Apply(body),
                )
                .await
            {
                Ok(_) => {
                    written.insert(key, usage);
                }
                Err(kube::Error::Api(e)) if e.code == 404 => {
                    written.remove(&key);
                }
                Err(e) => {
                    tracing::warn!(workload = %format!("{ns}/{name}"), error = %e, "writing Workload usage")
                }
            }
        }
    }
}
