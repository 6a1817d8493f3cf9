//! What a Workload's pod template takes from ConfigMaps and Secrets, and its volumes: the
//! `core/v1` names and semantics (`env[].valueFrom`, `envFrom`, `volumes`, `volumeMounts`),
//! bounded as an edge takes them (the limits in `decloud_proto`: 32 volumes, 32 mounts per
//! container, 16 `envFrom` sources, 256 items per volume, paths of at most 1024 bytes, items' 512).
//! Paths are checked here too (no `..`, items and `subPath` relative, mounts absolute), so a
//! hostile template is refused at `kubectl apply` time.

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

/// Where an env var's value comes from (exactly one).
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
#[schemars(extend("x-kubernetes-validations" = [{
    "rule": "[has(self.configMapKeyRef), has(self.secretKeyRef)].filter(x, x).size() == 1",
    "message": "valueFrom needs exactly one of configMapKeyRef or secretKeyRef",
}]))]
pub struct EnvVarSource {
    /// A key of a ConfigMap in the Workload's namespace.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub config_map_key_ref: Option<KeySelector>,
    /// A key of a Secret in the Workload's namespace.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub secret_key_ref: Option<KeySelector>,
}

/// One key of a ConfigMap or Secret.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
pub struct KeySelector {
    /// The object's name.
    #[schemars(
        length(min = 1, max = 253),
        regex(pattern = r"^[a-z0-9]([-a-z0-9.]*[a-z0-9])?$")
    )]
    pub name: String,
    /// The key.
    #[schemars(length(min = 1, max = 253), regex(pattern = r"^[-._a-zA-Z0-9]+$"))]
    pub key: String,
    /// Whether the container may start without it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub optional: Option<bool>,
}

/// Every key of a ConfigMap or Secret as env vars (exactly one source).
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
#[schemars(extend("x-kubernetes-validations" = [{
    "rule": "[has(self.configMapRef), has(self.secretRef)].filter(x, x).size() == 1",
    "message": "envFrom needs exactly one of configMapRef or secretRef",
}]))]
pub struct EnvFromSource {
    /// Put before every key.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(max = 256), regex(pattern = r"^[-._a-zA-Z0-9]*$"))]
    pub prefix: Option<String>,
    /// A ConfigMap in the Workload's namespace.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub config_map_ref: Option<ObjectRef>,
    /// A Secret in the Workload's namespace.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub secret_ref: Option<ObjectRef>,
}

/// A Secret by name (`imagePullSecrets`).
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
pub struct LocalObjectReference {
    /// The Secret's name.
    #[schemars(
        length(min = 1, max = 253),
        regex(pattern = r"^[a-z0-9]([-a-z0-9.]*[a-z0-9])?$")
    )]
    pub name: String,
}

/// A ConfigMap or Secret by name.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
pub struct ObjectRef {
    /// The object's name.
    #[schemars(
        length(min = 1, max = 253),
        regex(pattern = r"^[a-z0-9]([-a-z0-9.]*[a-z0-9])?$")
    )]
    pub name: String,
    /// Whether the container may start without it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub optional: Option<bool>,
}

/// The securityContext subset a volunteer's edge grants a container: who it runs as, and a
/// read-only root filesystem. Nothing that adds privileges exists here.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct SecurityContext {
    /// User id the process runs as (default: the image's).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 0, max = 2147483647))]
    pub run_as_user: Option<i64>,
    /// Primary group id of the process.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 0, max = 2147483647))]
    pub run_as_group: Option<i64>,
    /// Refuse to start the container if it would run as root (uid 0).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub run_as_non_root: Option<bool>,
    /// Mount the container's root filesystem read-only.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub read_only_root_filesystem: Option<bool>,
}

/// The pod-level securityContext subset (the containers' own fields win).
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct PodSecurityContext {
    /// User id the processes run as.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 0, max = 2147483647))]
    pub run_as_user: Option<i64>,
    /// Primary group id of the processes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 0, max = 2147483647))]
    pub run_as_group: Option<i64>,
    /// Refuse to start containers that would run as root.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub run_as_non_root: Option<bool>,
}

/// A volume of the pod (exactly one source). Anything that would reach the volunteer's
/// machine (hostPath, devices) is absent.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
#[schemars(extend("x-kubernetes-validations" = [{
    "rule": "[has(self.configMap), has(self.secret), has(self.emptyDir)].filter(x, x).size() == 1",
    "message": "a volume needs exactly one of configMap, secret or emptyDir",
}]))]
pub struct Volume {
    /// Volume name, a DNS label, unique within the pod.
    #[schemars(
        length(min = 1, max = 63),
        regex(pattern = r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$")
    )]
    pub name: String,
    /// A ConfigMap's keys as files.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub config_map: Option<ConfigMapVolume>,
    /// A Secret's keys as files (on tmpfs on the edge).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub secret: Option<SecretVolume>,
    /// Scratch space shared by the pod's containers, gone with the pod.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub empty_dir: Option<EmptyDirVolume>,
}

/// A ConfigMap volume.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct ConfigMapVolume {
    /// The ConfigMap's name.
    #[schemars(
        length(min = 1, max = 253),
        regex(pattern = r"^[a-z0-9]([-a-z0-9.]*[a-z0-9])?$")
    )]
    pub name: String,
    /// Only these keys, at these paths (default: every key, at its name).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 256))]
    pub items: Vec<KeyToPath>,
    /// Mode of the files (0..=0777, default 0644).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 0, max = 511))]
    pub default_mode: Option<i32>,
    /// Whether the pod may start without it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub optional: Option<bool>,
}

/// A Secret volume.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct SecretVolume {
    /// The Secret's name.
    #[schemars(
        length(min = 1, max = 253),
        regex(pattern = r"^[a-z0-9]([-a-z0-9.]*[a-z0-9])?$")
    )]
    pub secret_name: String,
    /// Only these keys, at these paths (default: every key, at its name).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 256))]
    pub items: Vec<KeyToPath>,
    /// Mode of the files (0..=0777, default 0644).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 0, max = 511))]
    pub default_mode: Option<i32>,
    /// Whether the pod may start without it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub optional: Option<bool>,
}

/// One key as one file.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
pub struct KeyToPath {
    /// The key.
    #[schemars(length(min = 1, max = 253), regex(pattern = r"^[-._a-zA-Z0-9]+$"))]
    pub key: String,
    /// Relative path of the file in the volume (no `..`; at most 512 bytes, which keeps the
    /// rule's cost within the API server's budget across 32 volumes of 256 items).
    #[schemars(length(min = 1, max = 512), extend("x-kubernetes-validations" = [{
        "rule": "!self.startsWith('/') && !self.matches('(^|/)[.][.]')",
        "message": "must be a relative path without '..'",
    }]))]
    pub path: String,
    /// Mode of this file (0..=0777).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 0, max = 511))]
    pub mode: Option<i32>,
}

/// An emptyDir volume.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct EmptyDirVolume {
    /// `Memory`: a tmpfs, its size counted against the pod's memory. Default: the edge's disk.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(regex(pattern = r"^(Memory)?$"))]
    pub medium: Option<String>,
    /// Most bytes the volume may hold; above it the pod is evicted, as by kubelet.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(transform = crate::bounds::storage_quantity)]
    pub size_limit: Option<String>,
}

/// A volume mounted into a container.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct VolumeMount {
    /// The volume's name.
    #[schemars(
        length(min = 1, max = 63),
        regex(pattern = r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$")
    )]
    pub name: String,
    /// Absolute path in the container (no `..`).
    #[schemars(length(min = 1, max = 1024), extend("x-kubernetes-validations" = [{
        "rule": "self.startsWith('/') && !self.matches('(^|/)[.][.](/|$)')",
        "message": "must be an absolute path without '..'",
    }]))]
    pub mount_path: String,
    /// A path inside the volume to mount instead of its root (does not follow updates).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 1024), extend("x-kubernetes-validations" = [{
        "rule": "!self.startsWith('/') && !self.matches('(^|/)[.][.]')",
        "message": "must be a relative path without '..'",
    }]))]
    pub sub_path: Option<String>,
    /// Mount read-only (configMap and secret volumes always are).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub read_only: Option<bool>,
}
