//! How a Provider comes to exist: created (or, if an administrator made it by hand, completed)
//! by the edge's `Register` with a join token, or on its first `Hello`. One create-or-complete
//! path serves both.

use std::collections::BTreeMap;

pub(crate) use decloud_crds::contracts::valid_provider_name;
use decloud_crds::contracts::{CREDENTIAL_ANNOTATION, OPERATOR_FIELD_MANAGER, PROVIDER_FINALIZER};
use decloud_crds::quantity::{format_bytes, format_millis};
use decloud_crds::{Provider, ProviderPhase, ProviderSpec, ResourceOffer};
use decloud_proto as pb;
use kube::ResourceExt;
use kube::api::{Api, ObjectMeta, Patch, PatchParams, PostParams};
use kube::runtime::reflector::ObjectRef;
use tonic::Status;
use tracing::info;

use super::node::edge_labels;
use crate::context::Context;
use crate::edge::auth::{credential_hash, is_revoked, same};
use crate::edge::clamp_resources;

/// The refusal of a name that cannot be a provider.
pub(crate) fn invalid_name(name: &str) -> Status {
    Status::invalid_argument(format!(
        "provider name {name:?} must be 1-200 lowercase letters, digits, '-' or '.', starting \
         and ending with a letter or digit"
    ))
}

fn unreachable_api(e: kube::Error) -> Status {
    Status::unavailable(format!("the operator cannot reach the Kubernetes API: {e}"))
}

/// What an edge asks to be registered as.
pub(crate) struct Registration<'a> {
    /// Provider name (already checked with [`valid_provider_name`]).
    pub(crate) name: &'a str,
    /// Owner the edge names (`spec.owner` of a new Provider).
    pub(crate) owner: &'a str,
    /// Labels the edge asks for; reserved ones are dropped.
    pub(crate) labels: &'a std::collections::HashMap<String, String>,
    /// The offer of a new Provider (Hello only).
    pub(crate) offered: Option<pb::Resources>,
    /// `Register`: the SHA-256 of the credential being issued. `None`: a `Hello` of an edge
    /// that already proved its credential.
    pub(crate) credential_hash: Option<&'a str>,
}

/// The Provider annotation recording which labels came from its edge, as a JSON object of
/// key → value the edge last set.
///
/// Labels the administrator set win over the edge's: an edge's Hello may add a label nobody
/// set, and change or remove a label it set itself, but never touch one someone else set. A
/// label is the edge's while its key is in this record *and* its value is still the one
/// recorded: when an administrator changes an edge's label, the value no longer matches and
/// the label is theirs from then on. The edge cannot write annotations, so it cannot forge
/// the record. (Server-side apply ownership would say the same, but the Provider is also
/// written with merge patches by people, which take no ownership.)
pub(crate) const EDGE_LABELS_ANNOTATION: &str = "decloud.dev/edge-labels";

/// What an edge's Hello changes in its Provider's labels.
#[derive(Debug, PartialEq)]
pub(crate) struct LabelChanges {
    /// Labels to set (new ones, or the edge's own with a new value).
    pub(crate) set: BTreeMap<String, String>,
    /// The edge's own labels it no longer claims.
    pub(crate) remove: Vec<String>,
    /// The new [`EDGE_LABELS_ANNOTATION`] record.
    pub(crate) record: BTreeMap<String, String>,
}

/// The label changes an edge's `claimed` labels make to a Provider that has `current` labels
/// and the edge-ownership record `owned`; `None` when nothing changes.
pub(crate) fn label_changes(
    current: &BTreeMap<String, String>,
    owned: &BTreeMap<String, String>,
    claimed: &BTreeMap<String, String>,
) -> Option<LabelChanges> {
    let edges = |k: &String| current.get(k).is_none_or(|v| owned.get(k) == Some(v));
    let mut set = BTreeMap::new();
    let mut record = BTreeMap::new();
    for (k, v) in claimed {
        if edges(k) {
            if current.get(k) != Some(v) {
                set.insert(k.clone(), v.clone());
            }
            record.insert(k.clone(), v.clone());
        }
    }
    let remove: Vec<String> = owned
        .iter()
        .filter(|(k, v)| !claimed.contains_key(*k) && current.get(*k) == Some(*v))
        .map(|(k, _)| k.clone())
        .collect();
    (!set.is_empty() || !remove.is_empty() || &record != owned).then_some(LabelChanges {
        set,
        remove,
        record,
    })
}

/// The edge-ownership record of `provider`'s labels.
fn owned_labels(provider: &Provider) -> BTreeMap<String, String> {
    provider
        .annotations()
        .get(EDGE_LABELS_ANNOTATION)
        .and_then(|a| serde_json::from_str(a).ok())
        .unwrap_or_default()
}

impl Registration<'_> {
    fn labels(&self) -> BTreeMap<String, String> {
        edge_labels(self.name, self.labels)
    }

    fn offer(&self) -> Option<ResourceOffer> {
        self.offered.map(clamp_resources).map(|o| ResourceOffer {
            cpu: (o.cpu_millis > 0).then(|| format_millis(o.cpu_millis)),
            memory: (o.memory_bytes > 0).then(|| format_bytes(o.memory_bytes)),
            pods: (o.pods > 0).then(|| o.pods.min(10_000) as i32),
            storage: (o.storage_bytes > 0).then(|| format_bytes(o.storage_bytes)),
        })
    }
}

fn patch_params() -> PatchParams {
    PatchParams {
        field_manager: Some(OPERATOR_FIELD_MANAGER.into()),
        ..PatchParams::default()
    }
}

/// Makes sure the Provider `reg` names exists and may be used, creating or completing it.
///
/// `Register` (with a credential hash) reads the API, never the cache: a name already joined
/// with another credential is refused, so a second machine cannot take over a provider's
/// identity with a join token; the same join again (its answer was lost) succeeds. `Hello`
/// answers from the cache first, because after an operator restart thousands of edges reconnect
/// at once; it updates the labels the edge asks for. Revoked or deleted Providers are refused.
pub(crate) async fn ensure_provider(ctx: &Context, reg: &Registration<'_>) -> Result<(), Status> {
    let name = reg.name;
    let api: Api<Provider> = Api::all(ctx.client.clone());
    let cached = match reg.credential_hash {
        Some(_) => None,
        None => ctx
            .providers
            .get(&ObjectRef::new(name))
            .map(|p| Provider::clone(&p)),
    };
    let found = match cached {
        Some(p) => Some(p),
        None => api.get_opt(name).await.map_err(unreachable_api)?,
    };
    let Some(existing) = found else {
        if ctx.registry.is_revoked(name) {
            return Err(Status::permission_denied(format!(
                "provider {name:?} was deleted (revoked); an administrator must re-create the \
                 Provider before this edge may join again"
            )));
        }
        return create(&api, reg).await;
    };
    if existing.metadata.deletion_timestamp.is_some() || is_revoked(&existing) {
        return Err(Status::permission_denied(format!(
            "provider {name:?} is revoked; an administrator must delete it (`kubectl delete \
             provider {name}`) before a machine may join under that name"
        )));
    }
    if let Some(hash) = reg.credential_hash {
        return match credential_hash(&existing) {
            // The same join again (its answer was lost): same credential, same answer.
            Some(h) if same(h, hash) => Ok(()),
            Some(_) => Err(Status::already_exists(format!(
                "provider {name:?} has already joined (its edge keeps its credential in its \
                 state directory); to join this machine under that name, an administrator must \
                 first delete the Provider (`kubectl delete provider {name}`), or pick another \
                 --name"
            ))),
            // Made by an administrator without a credential: complete it.
            None => {
                let patch = serde_json::json!({"metadata": {
                    "annotations": {CREDENTIAL_ANNOTATION: hash},
                    "resourceVersion": existing.metadata.resource_version,
                }});
                api.patch(name, &patch_params(), &Patch::Merge(&patch))
                    .await
                    .map_err(unreachable_api)?;
                Ok(())
            }
        };
    }
    // A Hello from an edge with a valid credential.
    if existing
        .status
        .as_ref()
        .is_some_and(|s| s.phase == ProviderPhase::Revoked)
    {
        return Err(Status::permission_denied(format!(
            "provider {name:?} is revoked"
        )));
    }
    ctx.registry.readmit(name);
    update_labels(&api, existing, &reg.labels()).await
}

/// Applies an edge's `claimed` labels to `existing` under [`EDGE_LABELS_ANNOTATION`]'s rule.
/// The patch carries the resourceVersion it was computed from, so an administrator's change
/// in between is never overwritten: on a conflict it is computed again from a fresh read.
async fn update_labels(
    api: &Api<Provider>,
    mut existing: Provider,
    claimed: &BTreeMap<String, String>,
) -> Result<(), Status> {
    let name = existing.name_any();
    for _ in 0..3 {
        let current = existing.metadata.labels.clone().unwrap_or_default();
        let Some(LabelChanges {
            set,
            remove,
            record,
        }) = label_changes(&current, &owned_labels(&existing), claimed)
        else {
            return Ok(());
        };
        let mut labels: serde_json::Map<String, serde_json::Value> = set
            .into_iter()
            .map(|(k, v)| (k, serde_json::Value::String(v)))
            .collect();
        labels.extend(remove.into_iter().map(|k| (k, serde_json::Value::Null)));
        let record = serde_json::to_string(&record).unwrap_or_default();
        let patch = serde_json::json!({"metadata": {
            "labels": labels,
            "annotations": {EDGE_LABELS_ANNOTATION: record},
            "resourceVersion": existing.metadata.resource_version,
        }});
        match api
            .patch(&name, &patch_params(), &Patch::Merge(&patch))
            .await
        {
            Ok(_) => return Ok(()),
            Err(kube::Error::Api(e)) if e.code == 409 => {
                existing = match api.get_opt(&name).await.map_err(unreachable_api)? {
                    Some(p) => p,
                    None => return Ok(()),
                };
            }
            Err(e) => {
                return Err(Status::invalid_argument(format!(
                    "updating provider labels: {e}"
                )));
            }
        }
    }
    Err(Status::unavailable(
        "the Provider kept changing while its labels were updated; try again",
    ))
}

async fn create(api: &Api<Provider>, reg: &Registration<'_>) -> Result<(), Status> {
    let name = reg.name;
    // Every label of a Provider its edge creates is the edge's.
    let labels = reg.labels();
    let provider = Provider {
        metadata: ObjectMeta {
            name: Some(name.to_string()),
            labels: Some(labels.clone()),
            annotations: Some(
                reg.credential_hash
                    .map(|h| (CREDENTIAL_ANNOTATION.to_string(), h.to_string()))
                    .into_iter()
                    .chain([(
                        EDGE_LABELS_ANNOTATION.to_string(),
                        serde_json::to_string(&labels).unwrap_or_default(),
                    )])
                    .collect(),
            ),
            // Born with the cleanup finalizer: the Provider controller need not add it, which
            // at a join storm would race its own stale cache (422 on the patch).
            finalizers: Some(vec![PROVIDER_FINALIZER.to_string()]),
            ..ObjectMeta::default()
        },
        spec: ProviderSpec {
            owner: (!reg.owner.is_empty()).then(|| reg.owner.to_string()),
            offered: reg.offer(),
            cordoned: false,
        },
        status: None,
    };
    let pp = PostParams {
        field_manager: Some(OPERATOR_FIELD_MANAGER.into()),
        ..PostParams::default()
    };
    let what = if reg.credential_hash.is_some() {
        "request"
    } else {
        "Hello"
    };
    match api.create(&pp, &provider).await {
        Ok(_) => {
            info!(provider = %name, "provider created");
            Ok(())
        }
        Err(kube::Error::Api(e)) if e.code == 409 => match reg.credential_hash {
            Some(_) => Err(Status::already_exists(format!(
                "provider {name:?} joined concurrently; pick another --name"
            ))),
            None => Ok(()),
        },
        Err(kube::Error::Api(e)) if e.code == 422 || e.code == 400 => {
            Err(Status::invalid_argument(format!(
                "the {what} does not make a valid Provider: {}",
                e.message
            )))
        }
        Err(e) => Err(unreachable_api(e)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn map(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    #[test]
    fn administrators_labels_win() {
        // (current labels, edge's record, claimed) → (set, remove, record) or None.
        type Case<'a> = (
            &'a [(&'a str, &'a str)],
            &'a [(&'a str, &'a str)],
            &'a [(&'a str, &'a str)],
            Option<(
                &'a [(&'a str, &'a str)],
                &'a [&'a str],
                &'a [(&'a str, &'a str)],
            )>,
        );
        let cases: [Case<'_>; 7] = [
            // The administrator set tier=gold: the edge's tier=bronze changes nothing.
            (&[("tier", "gold")], &[], &[("tier", "bronze")], None),
            // A label nobody set: the edge adds it and owns it.
            (
                &[("tier", "gold")],
                &[],
                &[("zone", "a")],
                Some((&[("zone", "a")], &[], &[("zone", "a")])),
            ),
            // Its own label: the edge may change it.
            (
                &[("zone", "a")],
                &[("zone", "a")],
                &[("zone", "b")],
                Some((&[("zone", "b")], &[], &[("zone", "b")])),
            ),
            // Its own label, no longer claimed: removed.
            (
                &[("zone", "a")],
                &[("zone", "a")],
                &[],
                Some((&[], &["zone"], &[])),
            ),
            // An administrator changed the edge's label: it is theirs now.
            (
                &[("zone", "admin")],
                &[("zone", "a")],
                &[("zone", "b")],
                Some((&[], &[], &[])),
            ),
            (
                &[("zone", "admin")],
                &[("zone", "a")],
                &[],
                Some((&[], &[], &[])),
            ),
            // Unchanged.
            (&[("zone", "a")], &[("zone", "a")], &[("zone", "a")], None),
        ];
        for (current, owned, claimed, want) in cases {
            let got = label_changes(&map(current), &map(owned), &map(claimed));
            let want = want.map(|(set, remove, record)| LabelChanges {
                set: map(set),
                remove: remove.iter().map(|s| s.to_string()).collect(),
                record: map(record),
            });
            assert_eq!(got, want, "{current:?} {owned:?} {claimed:?}");
        }
    }
}
