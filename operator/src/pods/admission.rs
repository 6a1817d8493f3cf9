//! Admission of pods bound to virtual nodes: what a volunteer edge must never grant, and what
//! an edge cannot run.
//!
//! A pod that asks for any of it is failed (reason [`REASON`] or [`UNSUPPORTED_REASON`]) with
//! an Event and never reaches the edge: the edge runs containers of strangers, so host access
//! is out.

use decloud_crds::contracts::{ARCH_LABEL, OPERATOR_FIELD_MANAGER, OS_LABEL, provider_of_node};
use decloud_crds::{Platform, Workload};
use decloud_proto as pb;
use k8s_openapi::api::core::v1::{Container, Pod};
use kube::api::{Api, Patch, PatchParams};
use kube::runtime::events::{Event as KubeEvent, EventType};
use kube::runtime::reflector::Store;
use kube::{Resource, ResourceExt};
use serde_json::json;
use tracing::warn;

use super::claims::Binding;
use super::{status, translate};
use crate::Error;
use crate::context::Context;

/// Reason of a pod refused because the edge cannot run what it asks.
pub(crate) const UNSUPPORTED_REASON: &str = "Unsupported";

/// Pod status reason of a pod failed for asking what an edge must not grant.
pub(crate) const REASON: &str = "Forbidden";

/// Reason of a DaemonSet's pod refused (unless `--allow-daemonsets`).
pub(crate) const DAEMONSET_REASON: &str = "DaemonSetNotAllowed";

/// The DaemonSet owning `pod`, if one does (`apps/v1`, kind `DaemonSet`).
///
/// Nobody placed such a pod on a volunteer's machine: a DaemonSet that tolerates every taint
/// (`operator: Exists`, common for cluster agents that carry credentials) lands on every node,
/// virtual ones included.
pub(crate) fn daemonset_owner(pod: &Pod) -> Option<&str> {
    pod.metadata
        .owner_references
        .iter()
        .flatten()
        .find(|o| o.kind == "DaemonSet" && o.api_version.split('/').next() == Some("apps"))
        .map(|o| o.name.as_str())
}

/// Resource names a container may request; anything else is a device (GPU, FPGA, …).
const PLAIN_RESOURCES: [&str; 3] = ["cpu", "memory", "ephemeral-storage"];

/// Every reason why `pod` must not run on an edge; empty when it may.
pub(crate) fn forbidden_reasons(pod: &Pod) -> Vec<String> {
    let mut out = Vec::new();
    let Some(spec) = &pod.spec else {
        return out;
    };
    if spec.host_network == Some(true) {
        out.push("hostNetwork is not allowed".to_string());
    }
    if spec.host_pid == Some(true) {
        out.push("hostPID is not allowed".to_string());
    }
    if spec.host_ipc == Some(true) {
        out.push("hostIPC is not allowed".to_string());
    }
    for volume in spec.volumes.iter().flatten() {
        if volume.host_path.is_some() {
            out.push(format!(
                "volume {:?}: hostPath volumes are not allowed",
                volume.name
            ));
        }
    }
    let containers = spec
        .init_containers
        .iter()
        .flatten()
        .chain(spec.containers.iter());
    for c in containers {
        container_reasons(c, &mut out);
    }
    for c in spec.ephemeral_containers.iter().flatten() {
        out.push(format!(
            "container {:?}: ephemeral containers are not allowed",
            c.name
        ));
    }
    out
}

fn container_reasons(c: &Container, out: &mut Vec<String>) {
    let name = &c.name;
    if let Some(sc) = &c.security_context {
        if sc.privileged == Some(true) {
            out.push(format!(
                "container {name:?}: privileged mode is not allowed"
            ));
        }
        if let Some(add) = sc.capabilities.as_ref().and_then(|caps| caps.add.as_ref())
            && !add.is_empty()
        {
            out.push(format!(
                "container {name:?}: adding capabilities ({}) is not allowed",
                add.join(", ")
            ));
        }
        if sc.proc_mount.as_deref() == Some("Unmasked") {
            out.push(format!(
                "container {name:?}: an unmasked /proc is not allowed"
            ));
        }
    }
    for port in c.ports.iter().flatten() {
        if port.host_port.is_some_and(|p| p != 0) {
            out.push(format!(
                "container {name:?}: hostPort {} is not allowed",
                port.host_port.unwrap_or_default()
            ));
        }
    }
    if c.volume_devices.as_ref().is_some_and(|d| !d.is_empty()) {
        out.push(format!("container {name:?}: devices are not allowed"));
    }
    if let Some(res) = &c.resources {
        let names = res
            .requests
            .iter()
            .flatten()
            .chain(res.limits.iter().flatten())
            .map(|(k, _)| k.as_str())
            .filter(|k| !PLAIN_RESOURCES.contains(k) && !k.starts_with("hugepages-"));
        let mut devices: Vec<&str> = names.collect();
        devices.sort_unstable();
        devices.dedup();
        if !devices.is_empty() {
            out.push(format!(
                "container {name:?}: devices ({}) are not allowed",
                devices.join(", ")
            ));
        }
    }
}

/// The virtual node a pod is bound to, if any.
pub(crate) fn virtual_node(pod: &Pod) -> Option<&str> {
    let node = pod.spec.as_ref()?.node_name.as_deref()?;
    provider_of_node(node).map(|_| node)
}

/// What the bridge does with a pod bound to a virtual node.
#[derive(Debug, PartialEq)]
pub(crate) enum Disposition {
    /// Deliver this spec to the edge.
    Run(pb::PodSpec),
    /// Never deliver it: fail it with `reason` and `message`.
    Refuse {
        /// `Forbidden`, `Unsupported` or `DaemonSetNotAllowed`.
        reason: &'static str,
        /// What is wrong, for people.
        message: String,
    },
    /// Not yet: what it needs (its Workload, for persistent volumes) is not in the cache.
    Hold(String),
}

/// Decides what to do with `pod`; `allow_daemonsets` lets DaemonSets' pods through.
pub(crate) fn disposition(
    pod: &Pod,
    allow_daemonsets: bool,
    platform: Option<&Platform>,
    workloads: Option<&Store<Workload>>,
) -> Disposition {
    if let Some(message) = platform_mismatch(pod, platform) {
        return Disposition::Refuse {
            reason: NODE_AFFINITY_REASON,
            message,
        };
    }
    if let Some(ds) = daemonset_owner(pod).filter(|_| !allow_daemonsets) {
        return Disposition::Refuse {
            reason: DAEMONSET_REASON,
            message: format!(
                "this pod belongs to DaemonSet {ds:?}: DaemonSets do not run on volunteer edges \
                 (the operator's --allow-daemonsets lets them); to run on edges, use a Workload \
                 or a pod with spec.nodeName"
            ),
        };
    }
    let reasons = forbidden_reasons(pod);
    if !reasons.is_empty() {
        return Disposition::Refuse {
            reason: REASON,
            message: format!(
                "this pod asks for what a volunteer edge must not grant: {}",
                reasons.join("; ")
            ),
        };
    }
    if let Some(problem) = super::config::refs_problem(pod) {
        return Disposition::Refuse {
            reason: UNSUPPORTED_REASON,
            message: format!("this pod cannot run on an edge: {problem}"),
        };
    }
    match translate::pod_spec(pod) {
        Ok(mut spec) => match super::claims::bind(&mut spec, pod, workloads) {
            Binding::Bound => Disposition::Run(spec),
            Binding::NotYet(why) => Disposition::Hold(why),
            Binding::Refused(why) => Disposition::Refuse {
                reason: UNSUPPORTED_REASON,
                message: format!("this pod cannot run on an edge: {why}"),
            },
        },
        Err(e) => Disposition::Refuse {
            reason: UNSUPPORTED_REASON,
            message: format!("this pod cannot run on an edge: {e}"),
        },
    }
}

/// Kubelet's reason for a pod whose node selector its node does not satisfy.
pub(crate) const NODE_AFFINITY_REASON: &str = "NodeAffinity";

/// Why `pod`'s `kubernetes.io/arch` / `kubernetes.io/os` node selector rules out an edge
/// running on `platform`, as kubelet's admission refuses a pod its node cannot satisfy (a
/// Raspberry Pi must never be sent amd64 images). An edge that reported no platform (an older
/// agent) is not judged: the Workload controller never places explicit requests on one.
fn platform_mismatch(pod: &Pod, platform: Option<&Platform>) -> Option<String> {
    let platform = platform?;
    let selector = pod.spec.as_ref()?.node_selector.as_ref()?;
    [
        (ARCH_LABEL, platform.architecture.as_str()),
        (OS_LABEL, platform.os.as_str()),
    ]
    .into_iter()
    .find_map(|(key, have)| {
        let want = selector.get(key)?;
        (have != want).then(|| {
            format!(
                "Predicate NodeAffinity failed: the pod's nodeSelector asks for {key}={want}, \
                 this edge is {key}={have}"
            )
        })
    })
}

pub(crate) fn already_refused(pod: &Pod, reason: &str) -> bool {
    pod.status.as_ref().is_some_and(|s| {
        s.phase.as_deref() == Some("Failed") && s.reason.as_deref() == Some(reason)
    })
}

/// Fails `pod` with `reason` and publishes a Warning Event; it never reaches an edge.
pub(crate) async fn refuse(ctx: &Context, pod: &Pod, reason: &'static str, message: String) {
    let key = format!("{}/{}", pod.namespace().unwrap_or_default(), pod.name_any());
    warn!(pod = %key, reason, %message, "refusing pod");
    let api: Api<Pod> = Api::namespaced(ctx.client.clone(), &pod.namespace().unwrap_or_default());
    let body = json!({
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": pod.name_any(), "namespace": pod.namespace()},
        "status": status::refused_status(pod, reason, &message, jiff::Timestamp::now()),
    });
    let pp = PatchParams::apply(OPERATOR_FIELD_MANAGER).force();
    if let Err(e) = api
        .patch_status(&pod.name_any(), &pp, &Patch::Apply(&body))
        .await
    {
        let e = Error::from(e);
        warn!(pod = %key, error = %e, "failing refused pod");
        ctx.metrics.failed("bridge", &e);
        return;
    }
    let event = KubeEvent {
        type_: EventType::Warning,
        reason: reason.to_string(),
        note: Some(message),
        action: "Admit".into(),
        secondary: None,
    };
    if let Err(e) = ctx.recorder.publish(&event, &pod.object_ref(&())).await {
        warn!(pod = %key, error = %e, "publishing event");
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn pod(spec: serde_json::Value) -> Pod {
        serde_json::from_value(json!({"metadata": {"name": "p"}, "spec": spec})).unwrap()
    }

    fn plain_container(extra: serde_json::Value) -> serde_json::Value {
        let mut c = json!({"name": "c", "image": "busybox"});
        c.as_object_mut()
            .unwrap()
            .extend(extra.as_object().unwrap().clone());
        c
    }

    #[test]
    fn table() {
        let cases: Vec<(&str, serde_json::Value, Option<&str>)> = vec![
            (
                "plain",
                json!({"containers": [plain_container(json!({}))]}),
                None,
            ),
            (
                "resources",
                json!({"containers": [plain_container(json!({"resources": {"requests": {"cpu": "1", "memory": "1Gi"}}}))]}),
                None,
            ),
            (
                "privileged",
                json!({"containers": [plain_container(json!({"securityContext": {"privileged": true}}))]}),
                Some("privileged mode"),
            ),
            (
                "not privileged",
                json!({"containers": [plain_container(json!({"securityContext": {"privileged": false}}))]}),
                None,
            ),
            (
                "hostNetwork",
                json!({"hostNetwork": true, "containers": [plain_container(json!({}))]}),
                Some("hostNetwork"),
            ),
            (
                "hostPID",
                json!({"hostPID": true, "containers": [plain_container(json!({}))]}),
                Some("hostPID"),
            ),
            (
                "hostIPC",
                json!({"hostIPC": true, "containers": [plain_container(json!({}))]}),
                Some("hostIPC"),
            ),
            (
                "hostPath",
                json!({"volumes": [{"name": "root", "hostPath": {"path": "/"}}], "containers": [plain_container(json!({}))]}),
                Some("hostPath"),
            ),
            (
                "emptyDir is fine",
                json!({"volumes": [{"name": "tmp", "emptyDir": {}}], "containers": [plain_container(json!({}))]}),
                None,
            ),
            (
                "hostPort",
                json!({"containers": [plain_container(json!({"ports": [{"containerPort": 80, "hostPort": 80}]}))]}),
                Some("hostPort 80"),
            ),
            (
                "containerPort only",
                json!({"containers": [plain_container(json!({"ports": [{"containerPort": 80}]}))]}),
                None,
            ),
            (
                "capabilities",
                json!({"containers": [plain_container(json!({"securityContext": {"capabilities": {"add": ["NET_ADMIN"]}}}))]}),
                Some("NET_ADMIN"),
            ),
            (
                "dropping capabilities is fine",
                json!({"containers": [plain_container(json!({"securityContext": {"capabilities": {"drop": ["ALL"]}}}))]}),
                None,
            ),
            (
                "gpu",
                json!({"containers": [plain_container(json!({"resources": {"limits": {"nvidia.com/gpu": "1"}}}))]}),
                Some("nvidia.com/gpu"),
            ),
            (
                "volumeDevices",
                json!({"containers": [plain_container(json!({"volumeDevices": [{"name": "d", "devicePath": "/dev/xvda"}]}))]}),
                Some("devices are not allowed"),
            ),
            (
                "privileged init container",
                json!({"initContainers": [plain_container(json!({"securityContext": {"privileged": true}}))], "containers": [plain_container(json!({}))]}),
                Some("privileged"),
            ),
        ];
        for (name, spec, want) in cases {
            let reasons = forbidden_reasons(&pod(spec));
            match want {
                None => assert!(reasons.is_empty(), "{name}: {reasons:?}"),
                Some(needle) => assert!(
                    reasons.iter().any(|r| r.contains(needle)),
                    "{name}: {reasons:?} lacks {needle:?}"
                ),
            }
        }
    }

    fn bound_pod(spec: serde_json::Value) -> Pod {
        serde_json::from_value(
            json!({"metadata": {"name": "p", "namespace": "default", "uid": "u"}, "spec": spec}),
        )
        .unwrap()
    }

    #[test]
    fn daemonset_pods_are_refused_unless_allowed() {
        let owned = |api_version: &str, kind: &str| -> Pod {
            serde_json::from_value(json!({
                "metadata": {"name": "p", "namespace": "default", "uid": "u",
                    "ownerReferences": [{"apiVersion": api_version, "kind": kind, "name": "agent",
                        "uid": "ds-1", "controller": true}]},
                "spec": {"nodeName": "edge-a", "containers": [{"name": "c", "image": "b:1"}]},
            }))
            .unwrap()
        };
        // (owner apiVersion, owner kind, allow_daemonsets, refused?)
        let cases = [
            ("apps/v1", "DaemonSet", false, true),
            ("apps/v1beta2", "DaemonSet", false, true),
            ("apps/v1", "DaemonSet", true, false),
            ("apps/v1", "ReplicaSet", false, false),
            ("decloud.dev/v1alpha1", "Workload", false, false),
            ("example.com/v1", "DaemonSet", false, false),
        ];
        for (api_version, kind, allow, refused) in cases {
            match disposition(&owned(api_version, kind), allow, None, None) {
                Disposition::Refuse { reason, message } => {
                    assert!(refused, "{api_version} {kind} {allow}: {message}");
                    assert_eq!(reason, DAEMONSET_REASON);
                    assert!(message.contains("\"agent\""), "{message}");
                }
                Disposition::Run(_) => assert!(!refused, "{api_version} {kind} {allow}"),
                Disposition::Hold(why) => panic!("{api_version} {kind}: held: {why}"),
            }
        }
    }

    #[test]
    fn dispositions() {
        let plain =
            bound_pod(json!({"nodeName": "edge-a", "containers": [{"name": "c", "image": "b:1"}]}));
        assert!(matches!(
            disposition(&plain, false, None, None),
            Disposition::Run(_)
        ));
        assert_eq!(virtual_node(&plain), Some("edge-a"));
        let privileged = bound_pod(
            json!({"nodeName": "edge-a", "containers": [{"name": "c", "image": "b:1", "securityContext": {"privileged": true}}]}),
        );
        match disposition(&privileged, false, None, None) {
            Disposition::Refuse { reason, message } => {
                assert_eq!(reason, "Forbidden");
                assert!(message.contains("privileged"), "{message}");
            }
            other => panic!("{other:?}"),
        }
        let secret_env = bound_pod(
            json!({"nodeName": "edge-a", "containers": [{"name": "c", "image": "b:1",
            "env": [{"name": "S", "valueFrom": {"secretKeyRef": {"name": "s", "key": "k"}}}]}]}),
        );
        // Secrets and ConfigMaps are served to the pod's edge (pods/config.rs).
        match disposition(&secret_env, false, None, None) {
            Disposition::Run(spec) => assert!(spec.needs_config),
            other => panic!("{other:?}"),
        }
        let many = bound_pod(json!({"nodeName": "edge-a",
            "volumes": (0..33).map(|i| json!({"name": format!("v{i}"), "secret": {"secretName": format!("s{i}")}})).collect::<Vec<_>>(),
            "containers": [{"name": "c", "image": "b:1"}]}));
        match disposition(&many, false, None, None) {
            Disposition::Refuse { reason, message } => {
                assert_eq!(reason, "Unsupported");
                assert!(message.contains("at most 32"), "{message}");
            }
            other => panic!("{other:?}"),
        }
        let elsewhere = bound_pod(
            json!({"nodeName": "worker-1", "containers": [{"name": "c", "image": "b:1"}]}),
        );
        assert_eq!(virtual_node(&elsewhere), None);
        let bare =
            bound_pod(json!({"nodeName": "edge-", "containers": [{"name": "c", "image": "b:1"}]}));
        assert_eq!(virtual_node(&bare), None);
    }

    #[test]
    fn pods_asking_for_another_platform_are_refused_like_kubelet_does() {
        let arm = Platform {
            os: "linux".into(),
            architecture: "arm64".into(),
            ..Default::default()
        };
        let want = |sel: serde_json::Value| {
            bound_pod(json!({"nodeName": "edge-a", "nodeSelector": sel,
                "containers": [{"name": "c", "image": "b:1"}]}))
        };
        let on = |p: &Pod, platform: Option<&Platform>| match disposition(p, false, platform, None)
        {
            Disposition::Run(_) => None,
            Disposition::Refuse { reason, message } => Some((reason, message)),
            Disposition::Hold(why) => panic!("held: {why}"),
        };
        let amd = want(json!({"kubernetes.io/arch": "amd64"}));
        let (reason, message) = on(&amd, Some(&arm)).expect("refused");
        assert_eq!(reason, NODE_AFFINITY_REASON);
        assert!(
            message.contains("kubernetes.io/arch=amd64") && message.contains("arm64"),
            "{message}"
        );
        assert!(on(&want(json!({"kubernetes.io/arch": "arm64"})), Some(&arm)).is_none());
        assert!(on(&want(json!({"kubernetes.io/os": "windows"})), Some(&arm)).is_some());
        assert!(
            on(&want(json!({"disk": "ssd"})), Some(&arm)).is_none(),
            "other keys: the scheduler's"
        );
        assert!(
            on(&amd, None).is_none(),
            "an edge that reported no platform is not judged"
        );
        assert!(on(&want(json!({})), None).is_none());
    }
}
