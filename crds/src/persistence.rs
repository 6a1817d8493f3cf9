//! Per-replica persistent volumes: a Workload's `volumeClaimTemplates`, shaped like a
//! StatefulSet's so the YAML carries over, and what follows from them: stable replica
//! identities (`<name>-0`, `<name>-1`, …), each bound to the provider holding its data.
//!
//! The names every part derives from a Workload are declared here once: the pod of replica
//! `N` is `<workload>-N`, its claim of template `data` is `data-<workload>-N` (as a
//! StatefulSet's PVC), and the volume on the edge is `<workload uid>-data-N`, so a Workload
//! deleted and created again under the same name never finds the old one's data.

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

/// Most `volumeClaimTemplates` of one Workload.
pub const MAX_CLAIM_TEMPLATES: usize = 4;
pub use crate::bounds::{MAX_VOLUME, MIN_VOLUME};

/// One per-replica persistent volume, as in a StatefulSet: `metadata.name` is what the
/// containers' `volumeMounts` name, `spec.resources.requests.storage` its hard size.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct VolumeClaimTemplate {
    pub metadata: ClaimMetadata,
    pub spec: ClaimSpec,
}

/// The claim's name.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct ClaimMetadata {
    /// A DNS label, unique among the Workload's volumes and claims.
    #[schemars(
        length(min = 1, max = 63),
        regex(pattern = r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$")
    )]
    pub name: String,
}

/// What the claim asks for.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct ClaimSpec {
    /// Only `ReadWriteOnce`: the volume lives on one provider, used by one replica.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 1))]
    pub access_modes: Vec<AccessMode>,
    pub resources: ClaimResources,
}

/// Access modes a volume on one volunteer's disk can honour.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, Default, PartialEq, Eq, JsonSchema)]
pub enum AccessMode {
    #[default]
    ReadWriteOnce,
}

/// The claim's size.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct ClaimResources {
    pub requests: ClaimRequests,
}

/// `storage`: the volume's hard size.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct ClaimRequests {
    /// Between 16Mi and 16Ti, e.g. `1Gi`. Writes past it fail with `ENOSPC` in the container.
    #[schemars(transform = crate::bounds::volume_quantity)]
    pub storage: String,
}

impl VolumeClaimTemplate {
    /// A `ReadWriteOnce` template `name` of `storage` (a quantity such as `64Mi`).
    pub fn new(name: &str, storage: &str) -> Self {
        Self {
            metadata: ClaimMetadata { name: name.into() },
            spec: ClaimSpec {
                access_modes: vec![AccessMode::ReadWriteOnce],
                resources: ClaimResources {
                    requests: ClaimRequests {
                        storage: storage.into(),
                    },
                },
            },
        }
    }

    /// The template's name.
    pub fn name(&self) -> &str {
        &self.metadata.name
    }

    /// Its size in bytes (`None` if the quantity does not parse, which the schema prevents).
    pub fn size_bytes(&self) -> Option<u64> {
        crate::quantity::memory_bytes(&self.spec.resources.requests.storage)
            .and_then(|b| u64::try_from(b).ok())
    }
}

/// What becomes of a replica whose provider, holding its data, is gone.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct Persistence {
    /// `Wait` (default): the replica waits for its provider to come back, and its status says
    /// so. `Recreate`: after the failover grace it starts elsewhere with empty volumes.
    #[serde(default)]
    pub on_provider_loss: OnProviderLoss,
}

/// See [`Persistence::on_provider_loss`].
#[derive(Serialize, Deserialize, Clone, Copy, Debug, Default, PartialEq, Eq, JsonSchema)]
pub enum OnProviderLoss {
    #[default]
    Wait,
    Recreate,
}

/// One stateful replica's identity and where its data is.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct PersistentReplica {
    /// The replica's pod name, `<workload>-<ordinal>`.
    #[schemars(length(max = 253))]
    pub name: String,
    /// The provider holding its volumes.
    #[schemars(length(max = 253))]
    pub provider: String,
    /// `Running`, `Starting`, `WaitingForProvider` or `Moving`.
    #[schemars(length(max = 64))]
    pub state: String,
    /// Why, in words.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    #[schemars(length(max = 1024))]
    pub message: String,
}

/// The pod name of replica `ordinal` of Workload `workload`.
pub fn replica_pod_name(workload: &str, ordinal: u32) -> String {
    format!("{workload}-{ordinal}")
}

/// The ordinal of pod `pod` if it is a replica identity of Workload `workload`.
pub fn replica_ordinal(workload: &str, pod: &str) -> Option<u32> {
    let n = pod.strip_prefix(workload)?.strip_prefix('-')?;
    // No leading zeros, no sign: one name per ordinal.
    if n.is_empty() || n.len() > 4 || (n.len() > 1 && n.starts_with('0')) {
        return None;
    }
    n.bytes()
        .all(|b| b.is_ascii_digit())
        .then(|| n.parse().ok())?
}

/// The claim name of template `template` for pod `pod` (`data-redis-0`, as a StatefulSet's).
pub fn claim_name(template: &str, pod: &str) -> String {
    format!("{template}-{pod}")
}

/// The id of the volume of template `template` of replica `ordinal` of the Workload with uid
/// `workload_uid`, as the edge stores it.
pub fn volume_id(workload_uid: &str, template: &str, ordinal: u32) -> String {
    format!("{workload_uid}-{template}-{ordinal}")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ordinals_have_one_name_each() {
        assert_eq!(replica_ordinal("redis", "redis-0"), Some(0));
        assert_eq!(replica_ordinal("redis", "redis-17"), Some(17));
        for not in [
            "redis-",
            "redis-01",
            "redis--1",
            "redis-+1",
            "redis-1x",
            "redisx-1",
            "redis",
            "redis-10000",
        ] {
            assert_eq!(replica_ordinal("redis", not), None, "{not}");
        }
        // A Workload named like another's prefix does not claim its pods.
        assert_eq!(replica_ordinal("redis", "redis-web-0"), None);
    }

    #[test]
    fn names_fit_their_bounds() {
        let long = "a".repeat(63);
        let uid = "0f8fad5b-d9cb-469f-a165-70867728950e";
        let id = volume_id(uid, &long, 9999);
        assert!(decloud_proto_bound(&id), "{id}");
        assert!(claim_name(&long, &replica_pod_name(&long, 9999)).len() <= 253);
    }

    /// The edge's rule for volume ids, restated (`decloud_proto::valid_volume_id`; the crds
    /// crate does not depend on the protocol).
    fn decloud_proto_bound(id: &str) -> bool {
        id.len() <= 128
            && id
                .bytes()
                .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
    }
}
