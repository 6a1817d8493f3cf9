//! What a volunteer edge must never grant.
//!
//! A pod that asks for any of it is failed by the bridge (reason [`REASON`]) with an Event and
//! never reaches the edge: the edge runs containers of strangers, so host access is out.

use k8s_openapi::api::core::v1::{Container, Pod};

/// Pod status reason of a pod failed for asking what an edge must not grant.
pub const REASON: &str = "Forbidden";

/// Resource names a container may request; anything else is a device (GPU, FPGA, …).
const PLAIN_RESOURCES: [&str; 3] = ["cpu", "memory", "ephemeral-storage"];

/// Every reason why `pod` must not run on an edge; empty when it may.
pub fn forbidden_reasons(pod: &Pod) -> Vec<String> {
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
}
