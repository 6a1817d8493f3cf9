//! `Provider`: one volunteer machine running edge-kubelet.

use kube::CustomResource;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use crate::{Condition, Usage};

/// Desired state of a Provider (cluster-scoped; created when an edge first joins).
#[derive(CustomResource, Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[kube(
    group = "decloud.dev",
    version = "v1alpha1",
    kind = "Provider",
    plural = "providers",
    shortname = "prov",
    status = "ProviderStatus",
    printcolumn = r#"{"name":"Ready","type":"string","jsonPath":".status.conditions[?(@.type==\"Ready\")].status"}"#,
    printcolumn = r#"{"name":"Phase","type":"string","jsonPath":".status.phase","priority":1}"#,
    printcolumn = r#"{"name":"Availability","type":"string","jsonPath":".status.availability.state"}"#,
    printcolumn = r#"{"name":"Next-Change","type":"string","jsonPath":".status.availability.nextChangeTime","priority":1}"#,
    printcolumn = r#"{"name":"CPU","type":"string","jsonPath":".status.allocatable.cpu"}"#,
    printcolumn = r#"{"name":"Memory","type":"string","jsonPath":".status.allocatable.memory"}"#,
    printcolumn = r#"{"name":"Storage","type":"string","jsonPath":".status.allocatable.storage"}"#,
    printcolumn = r#"{"name":"Pods","type":"integer","jsonPath":".status.allocated.pods"}"#,
    printcolumn = r#"{"name":"Reliability","type":"string","jsonPath":".status.reliability"}"#,
    printcolumn = r#"{"name":"Last-Seen","type":"date","jsonPath":".status.lastHeartbeatTime"}"#
)]
#[serde(rename_all = "camelCase")]
pub struct ProviderSpec {
    /// Who lends this machine (contact address).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(max = 254))]
    pub owner: Option<String>,
    /// Caps on what the cluster may use; never more than the machine has.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub offered: Option<ResourceOffer>,
    /// When true, running pods stay but no new ones are placed here.
    #[serde(default)]
    pub cordoned: bool,
}

/// Resources of a provider.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
pub struct ResourceOffer {
    /// CPU cores, e.g. `2` or `1500m`; at most 1024.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(transform = crate::bounds::cpu_quantity)]
    pub cpu: Option<String>,
    /// Memory, e.g. `4Gi`; at most 64Ti.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(transform = crate::bounds::memory_quantity)]
    pub memory: Option<String>,
    /// Maximum number of pods.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 0, max = 10000))]
    pub pods: Option<i32>,
    /// Ephemeral storage (containers' writable layers and logs), e.g. `50Gi`; at most 1Pi.
    /// The virtual Node's `ephemeral-storage`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(transform = crate::bounds::storage_quantity)]
    pub storage: Option<String>,
}

/// Lifecycle phase of a provider.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, Default, PartialEq, Eq, JsonSchema)]
pub enum ProviderPhase {
    /// Registered, never connected.
    #[default]
    Pending,
    /// Connected and heartbeating.
    Ready,
    /// Heartbeats missed.
    NotReady,
    /// Credential revoked; the edge is refused.
    Revoked,
}

/// Observed state of a Provider.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct ProviderStatus {
    /// Lifecycle phase.
    #[serde(default)]
    pub phase: ProviderPhase,
    /// Name of the virtual node.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(max = 253))]
    pub node_name: Option<String>,
    /// edge-kubelet version.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(max = 256))]
    pub agent_version: Option<String>,
    /// Last heartbeat the operator recorded (written on transitions and periodically, not per
    /// heartbeat).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(max = 64))]
    pub last_heartbeat_time: Option<String>,
    /// Detected on the machine.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub capacity: Option<ResourceOffer>,
    /// What the cluster may use: capacity capped by the offer.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub allocatable: Option<ResourceOffer>,
    /// Requests of the pods bound here.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub allocated: Option<ResourceOffer>,
    /// Uptime ratio over the last 24 h, e.g. `0.997`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(max = 32))]
    pub reliability: Option<String>,
    /// Resources consumed by pods on this provider.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub usage: Option<Usage>,
    /// What the machine is, as its edge reported it (the virtual Node's `nodeInfo` and its
    /// `kubernetes.io/os` / `kubernetes.io/arch` labels).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub platform: Option<Platform>,
    /// What protects the machine, as its edge reported it: `userns-remap`, the egress policy.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub isolation: Option<HostIsolation>,
    /// Whether the owner lends the machine now: `Available`, `Paused`, `Draining`, `Drained`
    /// (a planned departure, unlike `NotReady`, which is a crash or a lost connection).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub availability: Option<ProviderAvailability>,
    /// `Ready` and friends.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 16))]
    pub conditions: Vec<Condition>,
}

/// Whether a provider takes work, as its owner (`edge-kubelet pause|drain|resume`), its
/// schedule (`--schedule`) or its idle rule (`--when-idle`) decided.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct ProviderAvailability {
    /// Where the provider stands.
    #[serde(default)]
    pub state: AvailabilityState,
    /// Who or what decided: `owner`, `shutdown`, `schedule`, `busy`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(max = 32))]
    pub reason: Option<String>,
    /// Progress in words, e.g. `2 pods still running here; 1 replica waits for another
    /// provider`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(max = 1024))]
    pub message: Option<String>,
    /// Pods still bound to the provider while it drains.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 0, max = 10000))]
    pub pods_remaining: Option<i32>,
    /// The owner's lending schedule (`--schedule`, with its time zone).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(max = 256))]
    pub schedule: Option<String>,
    /// When the schedule next changes the state (RFC 3339).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(max = 64))]
    pub next_change_time: Option<String>,
}

impl Provider {
    /// Whether new pods may go here: not cordoned by an admin and not paused, draining or
    /// drained by its owner.
    pub fn takes_work(&self) -> bool {
        !self.spec.cordoned
            && self
                .status
                .as_ref()
                .and_then(|s| s.availability.as_ref())
                .is_none_or(|a| a.state == AvailabilityState::Available)
    }

    /// Whether its owner is taking it back: its pods are to be moved elsewhere.
    pub fn is_draining(&self) -> bool {
        self.status
            .as_ref()
            .and_then(|s| s.availability.as_ref())
            .is_some_and(|a| {
                matches!(
                    a.state,
                    AvailabilityState::Draining | AvailabilityState::Drained
                )
            })
    }
}

/// Where a provider stands as far as new work is concerned.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, Default, PartialEq, Eq, JsonSchema)]
pub enum AvailabilityState {
    /// Takes work.
    #[default]
    Available,
    /// Cordoned by its owner: running pods stay, no new ones come.
    Paused,
    /// Cordoned, its pods being moved elsewhere (make-before-break).
    Draining,
    /// Cordoned and empty: the owner may take the machine back.
    Drained,
}

/// What keeps a provider's machine its owner's while strangers' pods run on it.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct HostIsolation {
    /// The engine runs with `userns-remap`: root in a container is an unprivileged user on
    /// the host.
    #[serde(default)]
    pub userns_remap: bool,
    /// `Enforced`: containers reach only the public internet (not the host, not its
    /// networks); `Disabled`: the provider runs with `--unsafe-no-egress-policy`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub egress_policy: Option<EgressPolicyState>,
}

/// Whether a provider's egress policy is in force.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, JsonSchema)]
pub enum EgressPolicyState {
    /// Installed and verified by the edge.
    Enforced,
    /// Switched off by the provider (`--unsafe-no-egress-policy`). (Not `Off`: YAML 1.1
    /// reads a bare `Off` in the CRD's enum as `false`.)
    Disabled,
}

/// A provider machine's platform, as kubelet reports a node's `nodeInfo`.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct Platform {
    /// Operating system, as `kubernetes.io/os` names it (`linux`).
    #[schemars(length(max = 63))]
    pub os: String,
    /// CPU architecture, as `kubernetes.io/arch` names it (`amd64`, `arm64`).
    #[schemars(length(max = 63))]
    pub architecture: String,
    /// Kernel version (`uname -r`).
    #[serde(default)]
    #[schemars(length(max = 256))]
    pub kernel_version: String,
    /// Operating system image, e.g. `Debian GNU/Linux 12 (bookworm)`.
    #[serde(default)]
    #[schemars(length(max = 256))]
    pub os_image: String,
    /// Container runtime and version, e.g. `docker://20.10.24`.
    #[serde(default)]
    #[schemars(length(max = 256))]
    pub container_runtime_version: String,
}

#[cfg(test)]
mod tests {
    use super::*;
    use kube::CustomResourceExt;

    #[test]
    fn kubectl_get_prov_shows_the_storage_offer() {
        let crd = Provider::crd();
        let columns = crd.spec.versions[0]
            .additional_printer_columns
            .clone()
            .unwrap_or_default();
        let storage = columns
            .iter()
            .find(|c| c.name == "Storage")
            .expect("a Storage column");
        assert_eq!(storage.json_path, ".status.allocatable.storage");
        let schema = serde_json::to_value(&crd.spec.versions[0].schema).unwrap();
        let offered = &schema["openAPIV3Schema"]["properties"]["spec"]["properties"]["offered"]["properties"]
            ["storage"];
        assert_eq!(offered["maxLength"], 32, "{offered}");
        let rules = offered["x-kubernetes-validations"].to_string();
        assert!(rules.contains("quantity('1Pi')"), "{rules}");
    }
}
