//! How a Provider comes to exist: created (or, if an administrator made it by hand, completed)
//! by the edge's `Register` with a join token, or on its first `Hello`. One create-or-complete
//! path serves both.

use std::collections::BTreeMap;

pub(crate) use decloud_crds::contracts::valid_provider_name;
use decloud_crds::contracts::{CREDENTIAL_ANNOTATION, OPERATOR_FIELD_MANAGER, PROVIDER_FINALIZER};
use decloud_crds::quantity::{format_bytes, format_millis};
use decloud_crds::{Provider, ProviderPhase, ProviderSpec, ResourceOffer};
use decloud_proto as pb;
use kube::api::{Api, ObjectMeta, Patch, PatchParams, PostParams};
use kube::runtime::reflector::ObjectRef;
use tonic::Status;
use tracing::info;

use super::node::reserved_label;
use crate::context::Context;
use crate::edge::auth::{credential_hash, is_revoked, same};

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

impl Registration<'_> {
    fn labels(&self) -> BTreeMap<String, String> {
        self.labels
            .iter()
            .filter(|(k, _)| !reserved_label(k))
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect()
    }

    fn offer(&self) -> Option<ResourceOffer> {
        self.offered.map(|o| ResourceOffer {
            cpu: (o.cpu_millis > 0).then(|| format_millis(o.cpu_millis)),
            memory: (o.memory_bytes > 0).then(|| format_bytes(o.memory_bytes)),
            pods: (o.pods > 0).then(|| o.pods.min(10_000) as i32),
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
    let labels = reg.labels();
    let current = existing.metadata.labels.clone().unwrap_or_default();
    if labels.iter().any(|(k, v)| current.get(k) != Some(v)) {
        let patch = serde_json::json!({"metadata": {"labels": labels}});
        api.patch(name, &patch_params(), &Patch::Merge(&patch))
            .await
            .map_err(|e| Status::invalid_argument(format!("updating provider labels: {e}")))?;
    }
    Ok(())
}

async fn create(api: &Api<Provider>, reg: &Registration<'_>) -> Result<(), Status> {
    let name = reg.name;
    let provider = Provider {
        metadata: ObjectMeta {
            name: Some(name.to_string()),
            labels: Some(reg.labels()),
            annotations: reg
                .credential_hash
                .map(|h| BTreeMap::from([(CREDENTIAL_ANNOTATION.to_string(), h.to_string())])),
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
