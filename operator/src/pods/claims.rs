//! Persistent volumes on edges: a pod's `persistentVolumeClaim` volumes are bound to the
//! volumes of the Workload that owns it, and each edge is told which volumes to keep.
//!
//! Only a Workload's `volumeClaimTemplates` provide persistent volumes. A pod's claim
//! `data-redis-0` is honoured when the pod is replica `redis-0` of the Workload `redis` that
//! its controller reference names, in the pod's own namespace, with that Workload's uid, and
//! the Workload has a template `data`: then the edge gets volume
//! `<workload uid>-data-0` of the template's size. Anything else is refused. A tenant who
//! writes an owner reference by hand therefore reaches, at most, volumes of its own
//! namespace's Workloads (Kubernetes' own boundary for claims), and never decides a size.
//!
//! The edge deletes a volume only when a `VolumeSet` leaves it out ([`volume_set`]), which is
//! sent only once the Workload cache is complete.

use std::collections::HashMap;
use std::sync::Arc;

use decloud_crds::Workload;
use decloud_crds::contracts::provider_of_node;
use decloud_crds::persistence::{claim_name, replica_ordinal, volume_id};
use decloud_proto as pb;
use futures::FutureExt as _;
use k8s_openapi::api::core::v1::Pod;
use kube::ResourceExt;
use kube::runtime::reflector::{ObjectRef, Store};

use crate::context::Context;

/// What became of a pod's persistent volume claims.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum Binding {
    /// Every claim names its volume (or the pod has none).
    Bound,
    /// The owning Workload is not in the cache yet: deliver the pod later.
    NotYet(String),
    /// The claims cannot be honoured: refuse the pod, saying why.
    Refused(String),
}

/// Whether the Workload cache has been filled once.
pub(crate) fn ready(workloads: &Store<Workload>) -> bool {
    matches!(workloads.wait_until_ready().now_or_never(), Some(Ok(())))
}

/// Fills in the id and size of each persistent volume of `spec` (translated from `pod`).
pub(crate) fn bind(
    spec: &mut pb::PodSpec,
    pod: &Pod,
    workloads: Option<&Store<Workload>>,
) -> Binding {
    let claims: Vec<usize> = spec
        .volumes
        .iter()
        .enumerate()
        .filter(|(_, v)| matches!(v.source, Some(pb::volume::Source::Persistent(_))))
        .map(|(i, _)| i)
        .collect();
    if claims.is_empty() {
        return Binding::Bound;
    }
    let pod_name = pod.name_any();
    let namespace = pod.namespace().unwrap_or_default();
    let Some(owner) = pod.owner_references().iter().find(|o| {
        o.controller == Some(true)
            && o.kind == "Workload"
            && o.api_version == "decloud.dev/v1alpha1"
    }) else {
        return Binding::Refused(
            "persistentVolumeClaim volumes on edges come only from a Workload's \
             volumeClaimTemplates; this pod has no Workload as its controller"
                .into(),
        );
    };
    let Some(workloads) = workloads.filter(|w| ready(w)) else {
        return Binding::NotYet("the Workload cache is not filled yet".into());
    };
    let Some(workload) = workloads.get(&ObjectRef::new(&owner.name).within(&namespace)) else {
        return Binding::NotYet(format!(
            "Workload {namespace}/{} is not in the cache",
            owner.name
        ));
    };
    let uid = workload.uid().unwrap_or_default();
    if uid != owner.uid {
        return Binding::Refused(format!(
            "the pod's controller reference names Workload {namespace}/{} with uid {}, \
             which is not that Workload's",
            owner.name, owner.uid
        ));
    }
    let Some(ordinal) = replica_ordinal(&workload.name_any(), &pod_name) else {
        return Binding::Refused(format!(
            "pod {pod_name} is not a replica identity of Workload {} (<name>-<ordinal>)",
            workload.name_any()
        ));
    };
    for i in claims {
        let volume = &mut spec.volumes[i];
        let Some(pb::volume::Source::Persistent(p)) = &mut volume.source else {
            continue;
        };
        let template = workload
            .spec
            .volume_claim_templates
            .iter()
            .find(|t| claim_name(t.name(), &pod_name) == p.claim_name);
        let Some(template) = template else {
            return Binding::Refused(format!(
                "volume {:?}: claim {:?} is none of Workload {}'s volumeClaimTemplates for \
                 replica {pod_name}",
                volume.name,
                p.claim_name,
                workload.name_any()
            ));
        };
        let Some(size) = template
            .size_bytes()
            .filter(|b| (pb::MIN_VOLUME_BYTES..=pb::MAX_VOLUME_BYTES).contains(b))
        else {
            return Binding::Refused(format!(
                "claim {:?}: size {:?} is outside 16Mi..16Ti",
                p.claim_name, template.spec.resources.requests.storage
            ));
        };
        p.id = volume_id(&uid, template.name(), ordinal);
        p.size_bytes = size;
    }
    Binding::Bound
}

/// The persistent volumes each provider's edge is to keep, by provider: those of every
/// stateful replica the Workloads' statuses bind to it, and those its pods mount (a pod is
/// created before the status naming its provider is written). One pass over the Workloads and
/// the pods, whatever the number of edges. `None` until the Workload cache is complete, so an
/// edge is never told to drop what the operator has not read yet.
pub(crate) fn volume_sets(
    workloads: Option<&Store<Workload>>,
    pods: &[Arc<Pod>],
) -> Option<HashMap<String, Vec<String>>> {
    let workloads = workloads.filter(|w| ready(w))?;
    let mut sets: HashMap<String, Vec<String>> = HashMap::new();
    // Stateful Workloads by uid: (name, template names).
    let mut stateful: HashMap<String, (String, Vec<String>)> = HashMap::new();
    for w in workloads.state() {
        if w.spec.volume_claim_templates.is_empty() {
            continue;
        }
        let uid = w.uid().unwrap_or_default();
        let name = w.name_any();
        let templates: Vec<String> = w
            .spec
            .volume_claim_templates
            .iter()
            .map(|t| t.name().to_string())
            .collect();
        for r in w.status.iter().flat_map(|s| &s.persistent_replicas) {
            if let Some(ordinal) = replica_ordinal(&name, &r.name) {
                let ids = sets.entry(r.provider.clone()).or_default();
                ids.extend(templates.iter().map(|t| volume_id(&uid, t, ordinal)));
            }
        }
        stateful.insert(uid, (name, templates));
    }
    for pod in pods {
        let Some(provider) = pod
            .spec
            .as_ref()
            .and_then(|s| s.node_name.as_deref())
            .and_then(provider_of_node)
        else {
            continue;
        };
        let Some(owner) = pod
            .owner_references()
            .iter()
            .find(|o| o.controller == Some(true))
        else {
            continue;
        };
        let Some((name, templates)) = stateful.get(&owner.uid) else {
            continue;
        };
        if let Some(ordinal) = replica_ordinal(name, &pod.name_any()) {
            let ids = sets.entry(provider.to_string()).or_default();
            ids.extend(templates.iter().map(|t| volume_id(&owner.uid, t, ordinal)));
        }
    }
    for ids in sets.values_mut() {
        ids.sort();
        ids.dedup();
    }
    Some(sets)
}

/// Sends every connected edge (or only `only`'s, on its connect) the volumes it is to keep,
/// unless unchanged. An edge whose set would exceed [`pb::MAX_HELD_VOLUMES`] is sent nothing
/// (it keeps all it has) and a warning is logged: a truncated set would delete data.
pub(crate) fn send_volume_sets(ctx: &Context, only: Option<&str>) {
    let Some(sets) = ctx.volume_sets.get(only.is_none(), || {
        volume_sets(ctx.services.workload_store(), &ctx.pods.state())
    }) else {
        return;
    };
    ctx.registry.for_each_session(|provider, session| {
        if only.is_some_and(|o| o != provider) {
            return;
        }
        let ids = sets.get(provider).cloned().unwrap_or_default();
        if ids.len() > pb::MAX_HELD_VOLUMES {
            tracing::warn!(%provider, volumes = ids.len(), "more persistent volumes than an edge may be told to keep; sending none");
            return;
        }
        session.send_volume_set(ids);
    });
}

#[cfg(test)]
mod tests;
