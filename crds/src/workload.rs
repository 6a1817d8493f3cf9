//! `Workload`: an app to run, replicated across volunteer providers.

use std::collections::BTreeMap;

use kube::CustomResource;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use crate::{Condition, Usage};

impl Workload {
    /// The label selector (in its string form, as the scale subresource carries it) that
    /// selects exactly this Workload's pods: the controller puts
    /// [`WORKLOAD_LABEL`](crate::contracts::WORKLOAD_LABEL) on each of them.
    pub fn pod_selector(&self) -> String {
        use kube::ResourceExt;
        format!("{}={}", crate::contracts::WORKLOAD_LABEL, self.name_any())
    }

    /// The public host the gateway serves this Workload under: `spec.expose.host`, else
    /// `<name>.<namespace>.<base_domain>`.
    pub fn public_host(&self, base_domain: &str) -> String {
        use kube::ResourceExt;
        self.spec
            .expose
            .as_ref()
            .and_then(|e| e.host.clone())
            .unwrap_or_else(|| {
                format!(
                    "{}.{}.{}",
                    self.name_any(),
                    self.namespace().unwrap_or_default(),
                    base_domain
                )
            })
    }
}

/// Desired state of a Workload.
#[derive(CustomResource, Serialize, Deserialize, Clone, Debug, PartialEq, JsonSchema)]
#[kube(
    group = "decloud.dev",
    version = "v1alpha1",
    kind = "Workload",
    plural = "workloads",
    shortname = "wl",
    namespaced,
    status = "WorkloadStatus",
    // `kubectl scale` and HorizontalPodAutoscalers: the selector in status picks exactly this
    // Workload's pods (see [`Workload::pod_selector`]).
    scale(
        spec_replicas_path = ".spec.replicas",
        status_replicas_path = ".status.replicas",
        label_selector_path = ".status.labelSelector"
    ),
    printcolumn = r#"{"name":"Image","type":"string","jsonPath":".spec.template.spec.containers[0].image"}"#,
    printcolumn = r#"{"name":"Desired","type":"integer","jsonPath":".spec.replicas"}"#,
    printcolumn = r#"{"name":"Ready","type":"integer","jsonPath":".status.readyReplicas"}"#,
    printcolumn = r#"{"name":"URL","type":"string","jsonPath":".status.url"}"#,
    printcolumn = r#"{"name":"Age","type":"date","jsonPath":".metadata.creationTimestamp"}"#
)]
#[serde(rename_all = "camelCase")]
#[schemars(extend("x-kubernetes-validations" = [{
    "rule": "!has(self.expose) || self.template.spec.containers.exists(c, has(c.ports) && c.ports.exists(p, p.containerPort == self.expose.port))",
    "message": "spec.expose.port must be one of the containers' ports (spec.template.spec.containers[*].ports[*].containerPort)",
    "fieldPath": ".expose.port",
}, {
    "rule": "self.template.spec.containers.all(c, !has(c.volumeMounts) || c.volumeMounts.all(m, (has(self.template.spec.volumes) && self.template.spec.volumes.exists(v, v.name == m.name)) || (has(self.volumeClaimTemplates) && self.volumeClaimTemplates.exists(t, t.metadata.name == m.name))))",
    "message": "every volumeMount must name one of the pod's volumes or one of spec.volumeClaimTemplates",
    "fieldPath": ".template.spec.containers",
}, {
    "rule": "!has(self.volumeClaimTemplates) || self.volumeClaimTemplates.all(t, self.volumeClaimTemplates.exists_one(u, u.metadata.name == t.metadata.name) && (!has(self.template.spec.volumes) || !self.template.spec.volumes.exists(v, v.name == t.metadata.name)))",
    "message": "volumeClaimTemplates names must be unique and differ from the pod's volume names",
    "fieldPath": ".volumeClaimTemplates",
}, {
    "rule": "!has(oldSelf.volumeClaimTemplates) || !has(self.volumeClaimTemplates) || self.volumeClaimTemplates == oldSelf.volumeClaimTemplates",
    "message": "volumeClaimTemplates cannot be changed once set (the volumes exist on the providers at that size); remove them (which deletes the volumes) or create a new Workload",
    "fieldPath": ".volumeClaimTemplates",
}]))]
pub struct WorkloadSpec {
    /// Number of replicas to keep running, each on its own provider by default.
    #[serde(default = "default_replicas")]
    #[schemars(range(min = 0, max = 1000))]
    pub replicas: i32,
    /// The pod each replica runs, shaped like a Deployment's template.
    pub template: PodTemplate,
    /// Where replicas may be placed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub placement: Option<Placement>,
    /// How the app is reached through the DeCloud gateway.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub expose: Option<Expose>,
    /// How fast replicas on a lost provider are replaced.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub failover: Option<Failover>,
    /// Who else may connect to this Workload's ports by service name
    /// (`<name>.<namespace>.svc.decloud`). Workloads of its own namespace always may; other
    /// namespaces only when listed here (default: none).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub service_access: Option<ServiceAccess>,
    /// Per-replica persistent volumes, as a StatefulSet's: with any, replicas get stable
    /// identities (`<name>-0`, `<name>-1`, …), each bound to the provider holding its data,
    /// and are replaced one at a time, highest ordinal first. At most 4.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 4))]
    pub volume_claim_templates: Vec<crate::persistence::VolumeClaimTemplate>,
    /// What happens to a replica whose provider, holding its data, is lost.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub persistence: Option<crate::persistence::Persistence>,
}

/// Namespaces whose Workloads may connect to this one by service name.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct ServiceAccess {
    /// Other namespaces allowed (at most 32 namespace names).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(
        length(max = 32),
        inner(
            length(min = 1, max = 63),
            regex(pattern = r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$")
        )
    )]
    pub allowed_namespaces: Vec<String>,
}

fn default_replicas() -> i32 {
    1
}

/// Pod template of a Workload.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct PodTemplate {
    /// Labels and annotations copied onto every replica's pod.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub metadata: Option<TemplateMetadata>,
    /// The pod's specification.
    pub spec: PodSpec,
}

/// Metadata of a pod template.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct TemplateMetadata {
    /// Labels for the pods (at most 64, keys and values as Kubernetes validates them).
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    #[schemars(transform = crate::bounds::label_map)]
    pub labels: BTreeMap<String, String>,
    /// Annotations for the pods (at most 32, values at most 4096 characters).
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    #[schemars(transform = crate::bounds::annotation_map)]
    pub annotations: BTreeMap<String, String>,
}

/// The subset of a Kubernetes PodSpec a volunteer host will run.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
#[schemars(extend("x-kubernetes-validations" = [{
    "rule": "self.containers.all(c, self.containers.exists_one(d, d.name == c.name))",
    "message": "container names must be unique within a pod",
    "fieldPath": ".containers",
}, {
    "rule": "!has(self.volumes) || self.volumes.all(v, self.volumes.exists_one(w, w.name == v.name))",
    "message": "volume names must be unique within a pod",
    "fieldPath": ".volumes",
}]))]
pub struct PodSpec {
    /// What the edge does when a container exits.
    #[serde(default)]
    pub restart_policy: RestartPolicy,
    /// Seconds between SIGTERM and SIGKILL when a replica stops.
    #[serde(default = "default_grace")]
    #[schemars(range(min = 0, max = 300))]
    pub termination_grace_period_seconds: i64,
    /// The containers of the pod; they share one network namespace.
    #[schemars(length(min = 1, max = 8))]
    pub containers: Vec<Container>,
    /// Only providers that match every entry run replicas, as with a pod's `nodeSelector`:
    /// `kubernetes.io/arch` and `kubernetes.io/os` are matched against the platform the
    /// provider's edge reported (a provider that has reported none matches neither), other keys
    /// against the provider's labels.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    #[schemars(extend("maxProperties" = 32))]
    pub node_selector: BTreeMap<String, String>,
    /// Volumes the containers may mount: configMap, secret, emptyDir.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 32))]
    pub volumes: Vec<crate::Volume>,
    /// `kubernetes.io/dockerconfigjson` Secrets (in the Workload's namespace) holding the
    /// credentials for the images' registries; sent only to the edge pulling them.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 8))]
    pub image_pull_secrets: Vec<crate::LocalObjectReference>,
    /// Who the containers run as (their own `securityContext` wins).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub security_context: Option<crate::PodSecurityContext>,
}

fn default_grace() -> i64 {
    10
}

/// Restart policy of a pod.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, Default, PartialEq, Eq, JsonSchema)]
pub enum RestartPolicy {
    /// Restart every container that exits.
    #[default]
    Always,
    /// Restart containers that exit non-zero.
    OnFailure,
    /// Never restart.
    Never,
}

impl RestartPolicy {
    /// The Kubernetes spelling.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Always => "Always",
            Self::OnFailure => "OnFailure",
            Self::Never => "Never",
        }
    }
}

/// One container of a pod.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
#[schemars(extend("x-kubernetes-validations" = [{
    "rule": "(!has(self.livenessProbe) || !has(self.livenessProbe.successThreshold) || self.livenessProbe.successThreshold == 1) && (!has(self.startupProbe) || !has(self.startupProbe.successThreshold) || self.startupProbe.successThreshold == 1)",
    "message": "livenessProbe and startupProbe successThreshold must be 1",
}]))]
pub struct Container {
    /// Container name, a DNS label.
    #[schemars(
        length(min = 1, max = 63),
        regex(pattern = r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$")
    )]
    pub name: String,
    /// Image reference, e.g. `decloud-demo/hello:1`.
    #[schemars(length(min = 1, max = 512), regex(pattern = r"^[^\s]+$"))]
    pub image: String,
    /// When the edge pulls the image.
    #[serde(default)]
    pub image_pull_policy: PullPolicy,
    /// Entrypoint; the image's when empty.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 64), transform = crate::bounds::arg_list)]
    pub command: Vec<String>,
    /// Arguments to the entrypoint.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 256), transform = crate::bounds::arg_list)]
    pub args: Vec<String>,
    /// Working directory inside the container.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(max = 1024))]
    pub working_dir: Option<String>,
    /// Environment variables.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 128), transform = crate::bounds::env_list)]
    pub env: Vec<EnvVar>,
    /// Every key of ConfigMaps and Secrets as environment variables (`env` wins over them).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 16))]
    pub env_from: Vec<crate::EnvFromSource>,
    /// The pod's volumes mounted into this container.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 32))]
    pub volume_mounts: Vec<crate::VolumeMount>,
    /// Ports the container listens on.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 32))]
    pub ports: Vec<ContainerPort>,
    /// CPU and memory requests and limits.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub resources: Option<ResourceRequirements>,
    /// Probe that decides when the replica may receive traffic.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub readiness_probe: Option<Probe>,
    /// Probe whose failures (past `failureThreshold`) restart the container.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub liveness_probe: Option<Probe>,
    /// Probe that must pass once before readiness and liveness probes start; failing past
    /// `failureThreshold` restarts the container.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub startup_probe: Option<Probe>,
    /// Who the container runs as, and a read-only root filesystem.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub security_context: Option<crate::SecurityContext>,
}

/// Image pull policy.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, Default, PartialEq, Eq, JsonSchema)]
pub enum PullPolicy {
    /// Always pull before starting.
    Always,
    /// Pull only when the image is missing.
    #[default]
    IfNotPresent,
    /// Never pull; fail when missing.
    Never,
}

impl PullPolicy {
    /// The Kubernetes spelling.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Always => "Always",
            Self::IfNotPresent => "IfNotPresent",
            Self::Never => "Never",
        }
    }
}

/// An environment variable: a literal value, or a key of a ConfigMap or Secret.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
#[schemars(extend("x-kubernetes-validations" = [{
    "rule": "!has(self.valueFrom) || !has(self.value) || self.value == ''",
    "message": "value and valueFrom are exclusive",
}]))]
pub struct EnvVar {
    /// Variable name.
    #[schemars(
        length(min = 1, max = 256),
        regex(pattern = r"^[-._a-zA-Z][-._a-zA-Z0-9]*$")
    )]
    pub name: String,
    /// Variable value.
    #[serde(default)]
    #[schemars(length(max = 32768))]
    pub value: String,
    /// Where the value comes from instead.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub value_from: Option<crate::EnvVarSource>,
}

/// A port a container listens on.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct ContainerPort {
    /// Optional port name, an IANA service name.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(
        length(min = 1, max = 15),
        regex(pattern = r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$")
    )]
    pub name: Option<String>,
    /// Port number inside the pod.
    #[schemars(range(min = 1, max = 65535))]
    pub container_port: i32,
    /// Transport protocol.
    #[serde(default)]
    pub protocol: Protocol,
}

/// Transport protocol of a port.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, Default, PartialEq, Eq, JsonSchema)]
pub enum Protocol {
    /// TCP.
    #[default]
    #[serde(rename = "TCP")]
    Tcp,
    /// UDP.
    #[serde(rename = "UDP")]
    Udp,
}

/// Requests and limits of a container.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
pub struct ResourceRequirements {
    /// What placement reserves on the provider.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub requests: Option<ResourceList>,
    /// Hard caps the edge enforces.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub limits: Option<ResourceList>,
}

/// CPU and memory quantities.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
pub struct ResourceList {
    /// CPU, e.g. `100m` or `0.5`; at most 1024.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(transform = crate::bounds::cpu_quantity)]
    pub cpu: Option<String>,
    /// Memory, e.g. `128Mi`; at most 64Ti.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(transform = crate::bounds::memory_quantity)]
    pub memory: Option<String>,
}

/// A readiness, liveness or startup probe; exactly one handler.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
#[schemars(extend("x-kubernetes-validations" = [{
    "rule": "[has(self.httpGet), has(self.tcpSocket), has(self.exec)].filter(x, x).size() == 1",
    "message": "a probe needs exactly one of httpGet, tcpSocket or exec",
}]))]
pub struct Probe {
    /// HTTP GET on the pod; 2xx and 3xx pass.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub http_get: Option<HttpGetAction>,
    /// TCP connect to the pod.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tcp_socket: Option<TcpSocketAction>,
    /// Command run inside the container; exit 0 passes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub exec: Option<ExecAction>,
    /// Seconds after start before the first probe.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 0, max = 3600))]
    pub initial_delay_seconds: Option<i32>,
    /// Seconds between probes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1, max = 3600))]
    pub period_seconds: Option<i32>,
    /// Seconds before a probe times out.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1, max = 3600))]
    pub timeout_seconds: Option<i32>,
    /// Consecutive passes to become ready.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1, max = 100))]
    pub success_threshold: Option<i32>,
    /// Consecutive failures to become unready.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1, max = 100))]
    pub failure_threshold: Option<i32>,
}

/// HTTP GET probe.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
pub struct HttpGetAction {
    /// Request path.
    #[serde(default = "default_path")]
    #[schemars(length(min = 1, max = 2048), regex(pattern = r"^/"))]
    pub path: String,
    /// Port in the pod.
    #[schemars(range(min = 1, max = 65535))]
    pub port: i32,
}

fn default_path() -> String {
    "/".into()
}

/// TCP socket probe.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
pub struct TcpSocketAction {
    /// Port in the pod.
    #[schemars(range(min = 1, max = 65535))]
    pub port: i32,
}

/// Exec probe.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
pub struct ExecAction {
    /// Command and arguments.
    #[schemars(length(min = 1, max = 64), transform = crate::bounds::arg_list)]
    pub command: Vec<String>,
}

/// Placement rules.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct Placement {
    /// Whether replicas must land on distinct providers.
    #[serde(default)]
    pub spread: Spread,
    /// Only providers whose labels match may run replicas.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub provider_selector: Option<LabelSelector>,
}

/// Spread mode.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, Default, PartialEq, Eq, JsonSchema)]
pub enum Spread {
    /// Every replica on a distinct provider; missing capacity is reported, not overcommitted.
    #[default]
    Required,
    /// Distinct providers when possible, shared ones otherwise.
    Preferred,
}

/// A label selector, as in `metav1.LabelSelector`.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct LabelSelector {
    /// Labels that must match exactly.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    #[schemars(transform = crate::bounds::label_map)]
    pub match_labels: BTreeMap<String, String>,
    /// Set-based requirements.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 16))]
    pub match_expressions: Vec<LabelSelectorRequirement>,
}

/// One set-based label requirement.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
#[schemars(extend("x-kubernetes-validations" = [{
    "rule": "(self.operator in ['In', 'NotIn']) == (has(self.values) && size(self.values) > 0)",
    "message": "values must be non-empty for In and NotIn, and empty for Exists and DoesNotExist",
}]))]
pub struct LabelSelectorRequirement {
    /// Label key.
    #[schemars(length(min = 1, max = 317), regex(pattern = crate::bounds::LABEL_KEY_PATTERN))]
    pub key: String,
    /// `In`, `NotIn`, `Exists` or `DoesNotExist`.
    pub operator: SelectorOperator,
    /// Values for `In` and `NotIn`.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 64), transform = crate::bounds::label_value_list)]
    pub values: Vec<String>,
}

/// Operator of a set-based requirement.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, Default, PartialEq, Eq, JsonSchema)]
pub enum SelectorOperator {
    /// Label value in the set.
    #[default]
    In,
    /// Label value not in the set (or label absent).
    NotIn,
    /// Label present.
    Exists,
    /// Label absent.
    DoesNotExist,
}

impl LabelSelector {
    /// Whether `labels` satisfy this selector.
    pub fn matches(&self, labels: &BTreeMap<String, String>) -> bool {
        self.match_labels
            .iter()
            .all(|(k, v)| labels.get(k) == Some(v))
            && self.match_expressions.iter().all(|r| {
                let got = labels.get(&r.key);
                match r.operator {
                    SelectorOperator::In => got.is_some_and(|v| r.values.contains(v)),
                    SelectorOperator::NotIn => got.is_none_or(|v| !r.values.contains(v)),
                    SelectorOperator::Exists => got.is_some(),
                    SelectorOperator::DoesNotExist => got.is_none(),
                }
            })
    }
}

/// How the app is exposed through the gateway.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[schemars(extend("x-kubernetes-validations" = [{
    "rule": "!has(self.protocol) || self.protocol == 'HTTP' || (!has(self.host) && !has(self.tls) && !has(self.insecureHttp))",
    "message": "host, tls and insecureHttp apply only to protocol HTTP",
}, {
    "rule": "!has(self.tcpPort) || (has(self.protocol) && self.protocol == 'TCP')",
    "message": "tcpPort applies only to protocol TCP",
    "fieldPath": ".tcpPort",
}]))]
pub struct Expose {
    /// Container port the gateway forwards to.
    #[schemars(range(min = 1, max = 65535))]
    pub port: i32,
    /// `HTTP` (the default: routed by host name) or `TCP` (raw bytes: the gateway gives the
    /// Workload a port of its own from the platform's TCP port range, recorded in
    /// `status.tcpPort`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub protocol: Option<ExposeProtocol>,
    /// For `TCP`: the gateway port wanted. Honoured when it is in the platform's range and no
    /// older Workload holds it; otherwise condition `TcpPortAssigned` says why not
    /// (`PortOutOfRange`, `PortTaken`). Unset: any free port of the range.
    #[serde(default, rename = "tcpPort", skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1, max = 65535))]
    pub tcp_port: Option<i32>,
    /// Public host name; `<name>.<namespace>.<base-domain>` when unset. Under the base domain
    /// only `*.<namespace>.<base-domain>`; other hosts only when the platform team granted them
    /// to the namespace (Namespace annotation `decloud.dev/allowed-hosts`). The oldest Workload
    /// claiming a host serves it; the others report `HostConflict`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(
        length(min = 1, max = 253),
        regex(
            pattern = r"^[a-z0-9]([-a-z0-9]{0,61}[a-z0-9])?(\.[a-z0-9]([-a-z0-9]{0,61}[a-z0-9])?)*$"
        )
    )]
    pub host: Option<String>,
    /// HTTPS for the host with a certificate the user supplies: a `kubernetes.io/tls` Secret
    /// in the Workload's own namespace. The gateway serves it (by SNI) only if it covers the
    /// host and is valid; condition `CertificateReady` says whether it does and why not.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tls: Option<ExposeTls>,
    /// What plain HTTP requests get while a certificate is in force: `Redirect` (the default,
    /// 308 to `https://`) or `Allow` (served over HTTP too).
    #[serde(
        default,
        rename = "insecureHttp",
        skip_serializing_if = "Option::is_none"
    )]
    pub insecure_http: Option<InsecureHttp>,
}

/// How the gateway carries an exposed Workload's traffic.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, Default, PartialEq, Eq, JsonSchema)]
pub enum ExposeProtocol {
    /// HTTP (and HTTPS) routed by host name.
    #[default]
    #[serde(rename = "HTTP")]
    Http,
    /// Raw TCP on a gateway port of the Workload's own.
    #[serde(rename = "TCP")]
    Tcp,
}

impl Expose {
    /// Whether this is raw TCP exposure.
    pub fn is_tcp(&self) -> bool {
        self.protocol == Some(ExposeProtocol::Tcp)
    }
}

/// The certificate of an exposed host.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct ExposeTls {
    /// Name of a `kubernetes.io/tls` Secret in the Workload's namespace (keys `tls.crt`, the
    /// chain leaf first, and `tls.key`). A name, not a reference: another namespace's Secret
    /// cannot be named.
    #[schemars(
        length(min = 1, max = 253),
        regex(
            pattern = r"^[a-z0-9]([-a-z0-9]{0,61}[a-z0-9])?(\.[a-z0-9]([-a-z0-9]{0,61}[a-z0-9])?)*$"
        )
    )]
    pub secret_name: String,
}

// What plain HTTP requests for a host with a certificate get (documented on the field, so
// that the CRD's description of `insecureHttp` is the field's).
#[derive(Serialize, Deserialize, Clone, Copy, Debug, Default, PartialEq, Eq, JsonSchema)]
pub enum InsecureHttp {
    /// `308 Permanent Redirect` to the same URL over `https://`.
    #[default]
    Redirect,
    /// Served over plain HTTP as well.
    Allow,
}

/// Failover settings.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct Failover {
    /// Seconds a replica's provider may be NotReady before the replica is replaced elsewhere.
    #[serde(default = "default_failover_grace")]
    #[schemars(range(min = 0, max = 3600))]
    pub grace_seconds: i64,
}

impl Default for Failover {
    fn default() -> Self {
        Self {
            grace_seconds: default_failover_grace(),
        }
    }
}

/// Default failover grace, in seconds.
pub fn default_failover_grace() -> i64 {
    5
}

/// Observed state of a Workload.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct WorkloadStatus {
    /// The generation this status describes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub observed_generation: Option<i64>,
    /// Replicas that exist.
    #[serde(default)]
    pub replicas: i32,
    /// Replicas that are ready.
    #[serde(default)]
    pub ready_replicas: i32,
    /// Label selector of this Workload's pods, in string form (`decloud.dev/workload=<name>`),
    /// for the scale subresource and HorizontalPodAutoscalers.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(max = 512))]
    pub label_selector: Option<String>,
    /// Public URL through the gateway.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(max = 512))]
    pub url: Option<String>,
    /// The gateway port assigned to a `TCP` Workload (kept across operator restarts).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1, max = 65535))]
    pub tcp_port: Option<i32>,
    /// Where each replica runs (replicas are at most 1000; room for old and new at once).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 2048))]
    pub placements: Vec<ReplicaPlacement>,
    /// Each stateful replica (Workloads with `volumeClaimTemplates`): where its data is and
    /// how it stands.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 1000))]
    pub persistent_replicas: Vec<crate::persistence::PersistentReplica>,
    /// `Available`, `Progressing`, `Degraded`.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 16))]
    pub conditions: Vec<Condition>,
    /// Resources consumed by this Workload's replicas.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub usage: Option<Usage>,
}

/// One replica's placement.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct ReplicaPlacement {
    /// Pod name.
    #[schemars(length(max = 253))]
    pub pod: String,
    /// Provider name.
    #[schemars(length(max = 253))]
    pub provider: String,
    /// Pod phase.
    #[serde(default)]
    #[schemars(length(max = 64))]
    pub phase: String,
    /// Whether the replica passes its readiness checks.
    #[serde(default)]
    pub ready: bool,
}
