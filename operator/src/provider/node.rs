//! The node side of virtual-kubelet: the virtual Node of each Provider.
//!
//! The Node is a pure function of the Provider (labels, spec, status) and its readiness, so
//! applying it twice changes nothing. Its Lease is renewed in [`super::lease`].

use decloud_crds::contracts::{
    ARCH_LABEL, EDGE_TAINT, NODE_LEASE_NAMESPACE, OPERATOR_FIELD_MANAGER, OS_LABEL, PROVIDER_LABEL,
    UNREACHABLE_TAINT, UNSCHEDULABLE_TAINT, node_name,
};
use decloud_crds::{AvailabilityState, Provider, ProviderStatus, ResourceOffer};
use jiff::Timestamp;
use k8s_openapi::api::coordination::v1::Lease;
use k8s_openapi::api::core::v1::Node;
use kube::api::{Api, DeleteParams, Patch, PatchParams};
use kube::{Resource, ResourceExt};
use serde_json::{Value, json};

use crate::Result;
use crate::config::Config;
use crate::context::Context;
use crate::time::rfc3339;

/// Node labels a provider may not set through its own labels: they belong to the operator
/// (`type`, `decloud.dev`, `*.decloud.dev`) or to Kubernetes (`kubernetes.io`, `k8s.io` and
/// every subdomain of them, so `node-restriction.kubernetes.io/…`, `node-role.kubernetes.io/…`
/// and `node.kubernetes.io/…`, which selectors and admission trust). As kubelet's
/// NodeRestriction does for its own node, `topology.kubernetes.io/region` and `…/zone` stay
/// open: they are how a provider says where it is.
pub(crate) fn reserved_label(key: &str) -> bool {
    const OPEN: [&str; 2] = [
        "topology.kubernetes.io/region",
        "topology.kubernetes.io/zone",
    ];
    let prefix = key.split_once('/').map(|(p, _)| p).unwrap_or("");
    let under = |domain: &str| {
        prefix == domain
            || prefix
                .strip_suffix(domain)
                .is_some_and(|rest| rest.ends_with('.'))
    };
    if OPEN.contains(&key) {
        return false;
    }
    key == "type" || under("decloud.dev") || under("kubernetes.io") || under("k8s.io")
}

/// Most labels kept from an edge.
pub(crate) const MAX_EDGE_LABELS: usize = 64;

/// Whether `s` is a label name or value body: at most 63 of `[A-Za-z0-9_.-]`, beginning and
/// ending with a letter or digit.
fn label_word(s: &str) -> bool {
    let b = s.as_bytes();
    !b.is_empty()
        && b.len() <= 63
        && b[0].is_ascii_alphanumeric()
        && b[b.len() - 1].is_ascii_alphanumeric()
        && b.iter()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, b'-' | b'_' | b'.'))
}

/// Whether `s` is a DNS subdomain (a label key's prefix): at most 253 characters, dot-separated
/// parts of lowercase letters, digits and `-` that begin and end with a letter or digit.
fn dns_subdomain(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 253
        && s.split('.').all(|part| {
            let b = part.as_bytes();
            !b.is_empty()
                && b.len() <= 63
                && b[0].is_ascii_alphanumeric()
                && b[b.len() - 1].is_ascii_alphanumeric()
                && b.iter()
                    .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || *c == b'-')
        })
}

/// Why an edge-supplied label is not taken, or `None` if it is: a reserved key, or one the API
/// server would refuse (which would fail the whole Provider write).
pub(crate) fn refused_label(key: &str, value: &str) -> Option<&'static str> {
    let syntax = match key.split_once('/') {
        Some((prefix, name)) => dns_subdomain(prefix) && label_word(name),
        None => label_word(key),
    };
    if !syntax {
        Some("not a valid label key")
    } else if !(value.is_empty() || label_word(value)) {
        Some("not a valid label value")
    } else if reserved_label(key) {
        Some("reserved for Kubernetes or the operator")
    } else {
        None
    }
}

/// The labels of `claimed` an edge may set, at most [`MAX_EDGE_LABELS`] (by key order); the
/// others are dropped with a warning, never failing the write they ride on.
pub(crate) fn edge_labels<'a>(
    provider: &str,
    claimed: impl IntoIterator<Item = (&'a String, &'a String)>,
) -> std::collections::BTreeMap<String, String> {
    let mut sorted: Vec<(&String, &String)> = claimed.into_iter().collect();
    sorted.sort();
    let mut out = std::collections::BTreeMap::new();
    for (k, v) in sorted {
        if let Some(why) = refused_label(k, v) {
            tracing::warn!(provider, key = %k.escape_debug(), why, "dropping an edge's label");
        } else if out.len() >= MAX_EDGE_LABELS {
            tracing::warn!(provider, key = %k, "dropping an edge's label: too many labels");
        } else {
            out.insert(k.clone(), v.clone());
        }
    }
    out
}

/// The labels of the virtual node of `provider`.
pub(crate) fn node_labels(provider: &Provider) -> serde_json::Map<String, Value> {
    let name = provider.name_any();
    let mut labels = serde_json::Map::new();
    for (k, v) in provider.labels() {
        if !reserved_label(k) {
            labels.insert(k.clone(), json!(v));
        }
    }
    labels.insert("type".into(), json!("virtual-kubelet"));
    labels.insert("kubernetes.io/role".into(), json!("edge"));
    let platform = provider.status.as_ref().and_then(|s| s.platform.as_ref());
    let os = platform.map_or("linux", |p| p.os.as_str());
    labels.insert(OS_LABEL.into(), json!(os));
    if let Some(arch) = platform
        .map(|p| p.architecture.as_str())
        .filter(|a| !a.is_empty())
    {
        labels.insert(ARCH_LABEL.into(), json!(arch));
    }
    labels.insert("kubernetes.io/hostname".into(), json!(node_name(&name)));
    labels.insert(PROVIDER_LABEL.into(), json!(name));
    labels
}

fn resource_list(r: Option<&ResourceOffer>) -> Value {
    let r = r.cloned().unwrap_or_default();
    let mut list = json!({
        "cpu": r.cpu.unwrap_or_else(|| "0".into()),
        "memory": r.memory.unwrap_or_else(|| "0".into()),
        "pods": r.pods.unwrap_or(0).to_string(),
    });
    // An edge that states no storage (older agents) leaves it out, as kubelet does when it
    // cannot measure its filesystem.
    if let Some(storage) = r.storage {
        list["ephemeral-storage"] = json!(storage);
    }
    list
}

/// The Node's metadata and spec, for server-side apply.
///
/// A provider that takes no new work (cordoned by an admin; paused, draining or drained by its
/// owner, per `status`, the status being written) is `unschedulable` with the
/// `node.kubernetes.io/unschedulable` taint, as `kubectl cordon` leaves a node.
pub(crate) fn desired_node(provider: &Provider, status: &ProviderStatus, ready: bool) -> Value {
    let node = node_name(&provider.name_any());
    let mut taints = vec![json!({"key": EDGE_TAINT, "value": "true", "effect": "NoSchedule"})];
    let unschedulable = provider.spec.cordoned
        || status
            .availability
            .as_ref()
            .is_some_and(|a| a.state != AvailabilityState::Available);
    if unschedulable {
        taints.push(json!({"key": UNSCHEDULABLE_TAINT, "effect": "NoSchedule"}));
    }
    if !ready {
        taints.push(json!({"key": UNREACHABLE_TAINT, "effect": "NoSchedule"}));
        taints.push(json!({"key": UNREACHABLE_TAINT, "effect": "NoExecute"}));
    }
    let owner = provider
        .controller_owner_ref(&())
        .map(|o| serde_json::to_value(o).unwrap_or_default());
    json!({
        "apiVersion": "v1",
        "kind": "Node",
        "metadata": {
            "name": node,
            "labels": node_labels(provider),
            "ownerReferences": owner.into_iter().collect::<Vec<_>>(),
        },
        "spec": {
            "taints": taints,
            "unschedulable": unschedulable,
        },
    })
}

/// The Node's status, for server-side apply on `nodes/status`.
///
/// The Ready condition keeps its `lastTransitionTime` from `existing` while its status is
/// unchanged; `lastHeartbeatTime` follows the Provider's (which is written periodically).
pub(crate) fn desired_node_status(
    provider: &Provider,
    status: &ProviderStatus,
    ready: bool,
    existing: Option<&Node>,
    config: &Config,
    kubelet_port: u16,
    now: Timestamp,
) -> Value {
    let node = node_name(&provider.name_any());
    let (cond_status, reason, message) = if ready {
        (
            "True",
            "EdgeReady",
            "edge-kubelet is connected and heartbeating",
        )
    } else {
        (
            "Unknown",
            "NodeStatusUnknown",
            "edge-kubelet stopped posting heartbeats",
        )
    };
    let old = existing
        .and_then(|n| n.status.as_ref())
        .and_then(|s| s.conditions.as_ref())
        .and_then(|cs| cs.iter().find(|c| c.type_ == "Ready"));
    let to_string = |t: &k8s_openapi::apimachinery::pkg::apis::meta::v1::Time| rfc3339(t.0);
    let transition = match old {
        Some(c) if c.status == cond_status => c.last_transition_time.as_ref().map(to_string),
        _ => None,
    }
    .unwrap_or_else(|| rfc3339(now));
    let heartbeat = status
        .last_heartbeat_time
        .clone()
        .unwrap_or_else(|| transition.clone());
    let agent = status.agent_version.clone().unwrap_or_default();
    let platform = status.platform.clone().unwrap_or_default();
    let or = |s: &str, default: &str| {
        if s.is_empty() {
            default.to_string()
        } else {
            s.to_string()
        }
    };
    json!({
        "apiVersion": "v1",
        "kind": "Node",
        "metadata": {"name": node},
        "status": {
            "capacity": resource_list(status.capacity.as_ref()),
            "allocatable": resource_list(status.allocatable.as_ref()),
            "conditions": [{
                "type": "Ready",
                "status": cond_status,
                "reason": reason,
                "message": message,
                "lastHeartbeatTime": heartbeat,
                "lastTransitionTime": transition,
            }],
            // The operator's own address: a provider's real address is never published.
            "addresses": [
                {"type": "InternalIP", "address": config.node_address.to_string()},
                {"type": "Hostname", "address": node},
            ],
            "daemonEndpoints": {"kubeletEndpoint": {"Port": kubelet_port}},
            "nodeInfo": {
                "machineID": "",
                "systemUUID": "",
                "bootID": "",
                "kernelVersion": platform.kernel_version,
                "osImage": or(&platform.os_image, "DeCloud edge"),
                "containerRuntimeVersion": platform.container_runtime_version,
                "kubeletVersion": format!("edge-kubelet/{agent}"),
                "kubeProxyVersion": "",
                "operatingSystem": or(&platform.os, "linux"),
                "architecture": platform.architecture,
            },
        },
    })
}

/// Applies the virtual Node of `provider` (metadata/spec, then status), skipping writes the
/// Node already reflects.
pub(crate) async fn apply_node(
    ctx: &Context,
    provider: &Provider,
    status: &ProviderStatus,
    ready: bool,
) -> Result<()> {
    let name = node_name(&provider.name_any());
    let api: Api<Node> = Api::all(ctx.client.clone());
    let pp = PatchParams::apply(OPERATOR_FIELD_MANAGER).force();
    let existing = ctx
        .nodes
        .get(&kube::runtime::reflector::ObjectRef::new(&name));
    let body = desired_node(provider, status, ready);
    if existing.as_deref().is_none_or(|n| !node_matches(n, &body)) {
        api.patch(&name, &pp, &Patch::Apply(&body)).await?;
    }
    let status_body = desired_node_status(
        provider,
        status,
        ready,
        existing.as_deref(),
        &ctx.config,
        ctx.node_ports
            .port_for(&name)
            .unwrap_or(ctx.config.kubelet_port),
        Timestamp::now(),
    );
    if existing
        .as_deref()
        .is_none_or(|n| !node_status_matches(n, &status_body))
    {
        api.patch_status(&name, &pp, &Patch::Apply(&status_body))
            .await?;
    }
    Ok(())
}

/// Whether every field of `want` (a JSON subset) is already in `have`.
fn json_contains(have: &Value, want: &Value) -> bool {
    match (have, want) {
        (Value::Object(h), Value::Object(w)) => w
            .iter()
            .all(|(k, wv)| h.get(k).is_some_and(|hv| json_contains(hv, wv)) || is_empty(wv)),
        (Value::Array(h), Value::Array(w)) => {
            h.len() == w.len() && h.iter().zip(w).all(|(hv, wv)| json_contains(hv, wv))
        }
        _ => have == want,
    }
}

fn is_empty(v: &Value) -> bool {
    match v {
        Value::Array(a) => a.is_empty(),
        Value::Object(o) => o.is_empty(),
        Value::Bool(b) => !b,
        _ => false,
    }
}

fn node_matches(node: &Node, want: &Value) -> bool {
    let have = serde_json::to_value(node).unwrap_or_default();
    json_contains(&have["metadata"], &want["metadata"])
        && json_contains(&have["spec"], &want["spec"])
}

fn node_status_matches(node: &Node, want: &Value) -> bool {
    let have = serde_json::to_value(node).unwrap_or_default();
    json_contains(&have["status"], &want["status"])
}

/// Deletes the virtual Node of `provider` and its Lease; absent ones are fine.
pub(crate) async fn delete_node(ctx: &Context, provider: &str) -> Result<()> {
    let name = node_name(provider);
    ctx.node_ports.release(&name);
    ctx.stats.forget(&name);
    let nodes: Api<Node> = Api::all(ctx.client.clone());
    ignore_not_found(
        nodes
            .delete(&name, &DeleteParams::default())
            .await
            .map(|_| ()),
    )?;
    let leases: Api<Lease> = Api::namespaced(ctx.client.clone(), NODE_LEASE_NAMESPACE);
    ignore_not_found(
        leases
            .delete(&name, &DeleteParams::default())
            .await
            .map(|_| ()),
    )?;
    Ok(())
}

/// `Ok` for a 404.
pub(crate) fn ignore_not_found(r: kube::Result<()>) -> Result<()> {
    match r {
        Err(kube::Error::Api(e)) if e.code == 404 => Ok(()),
        other => Ok(other?),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn provider() -> Provider {
        serde_json::from_value(json!({
            "apiVersion": "decloud.dev/v1alpha1",
            "kind": "Provider",
            "metadata": {"name": "alice", "uid": "u-p", "labels": {
                "topology.kubernetes.io/region": "eu-west",
                "type": "evil",
                "decloud.dev/provider": "bob",
                "node-role.kubernetes.io/control-plane": "",
            }},
            "spec": {},
        }))
        .unwrap()
    }

    #[test]
    fn labels_and_taints() {
        let ready = desired_node(&provider(), &ProviderStatus::default(), true);
        let labels = &ready["metadata"]["labels"];
        assert_eq!(labels["type"], "virtual-kubelet");
        assert_eq!(labels["kubernetes.io/role"], "edge");
        assert_eq!(labels["decloud.dev/provider"], "alice");
        assert_eq!(labels["topology.kubernetes.io/region"], "eu-west");
        assert!(
            labels
                .get("node-role.kubernetes.io/control-plane")
                .is_none()
        );
        assert_eq!(ready["metadata"]["ownerReferences"][0]["uid"], "u-p");
        assert_eq!(ready["spec"]["taints"].as_array().unwrap().len(), 1);
        let unready = desired_node(&provider(), &ProviderStatus::default(), false);
        let taints: Vec<_> = unready["spec"]["taints"]
            .as_array()
            .unwrap()
            .iter()
            .map(|t| {
                format!(
                    "{}:{}",
                    t["key"].as_str().unwrap(),
                    t["effect"].as_str().unwrap()
                )
            })
            .collect();
        assert_eq!(
            taints,
            vec![
                "decloud.dev/edge:NoSchedule",
                "node.kubernetes.io/unreachable:NoSchedule",
                "node.kubernetes.io/unreachable:NoExecute"
            ]
        );
    }

    #[test]
    fn status_never_publishes_the_provider_address() {
        let status = ProviderStatus {
            capacity: Some(ResourceOffer {
                cpu: Some("8".into()),
                memory: Some("16Gi".into()),
                pods: Some(110),
                storage: Some("100Gi".into()),
            }),
            allocatable: Some(ResourceOffer {
                cpu: Some("2".into()),
                memory: Some("4Gi".into()),
                pods: Some(10),
                storage: None,
            }),
            agent_version: Some("0.1.0".into()),
            ..Default::default()
        };
        let config = Config {
            kubelet_port: 10250,
            ..Default::default()
        };
        let now = Timestamp::now();
        let s = desired_node_status(&provider(), &status, true, None, &config, 10250, now);
        assert_eq!(s["status"]["addresses"][0]["address"], "127.0.0.1");
        assert_eq!(
            s["status"]["daemonEndpoints"]["kubeletEndpoint"]["Port"],
            10250
        );
        assert_eq!(s["status"]["allocatable"]["pods"], "10");
        assert_eq!(s["status"]["capacity"]["memory"], "16Gi");
        assert_eq!(s["status"]["capacity"]["ephemeral-storage"], "100Gi");
        assert!(
            s["status"]["allocatable"]
                .get("ephemeral-storage")
                .is_none(),
            "no storage stated, none offered"
        );
        assert_eq!(s["status"]["conditions"][0]["status"], "True");
        let down = desired_node_status(&provider(), &status, false, None, &config, 10250, now);
        assert_eq!(down["status"]["conditions"][0]["status"], "Unknown");
    }

    #[test]
    fn reserved_and_invalid_labels() {
        // (key, value, taken?)
        let cases = [
            ("region", "eu", true),
            ("example.com/tier", "gold", true),
            ("topology.kubernetes.io/region", "eu-west", true),
            ("topology.kubernetes.io/zone", "eu-west-1a", true),
            ("mykubernetes.io/x", "y", true),
            ("k8s.io.example.com/x", "y", true),
            ("decloud.dev.example.com/x", "y", true),
            ("empty-value", "", true),
            ("type", "x", false),
            ("kubernetes.io/arch", "amd64", false),
            ("kubernetes.io/hostname", "x", false),
            ("k8s.io/x", "y", false),
            ("node-restriction.kubernetes.io/x", "y", false),
            ("node-role.kubernetes.io/control-plane", "", false),
            ("node.kubernetes.io/instance-type", "x", false),
            ("topology.kubernetes.io/other", "x", false),
            ("kubelet.kubernetes.io/x", "y", false),
            ("a.b.k8s.io/x", "y", false),
            ("decloud.dev/provider", "bob", false),
            ("policy.decloud.dev/x", "y", false),
            ("", "x", false),
            ("/x", "y", false),
            ("Example.com/x", "y", false),
            ("bad key", "x", false),
            ("-x", "y", false),
            ("ok", "bad value", false),
            ("ok", "-x", false),
            (&"k".repeat(64), "x", false),
            ("ok", &"v".repeat(64), false),
        ];
        let long_prefix = format!("{}/x", vec!["a".repeat(63); 4].join("."));
        assert!(long_prefix.len() > 253 + 2);
        for (key, value, taken) in cases.iter().copied().chain([
            (long_prefix.as_str(), "y", false),
            (
                &*format!("{}/{}", "a".repeat(63), "n".repeat(63)),
                &*"v".repeat(63),
                true,
            ),
        ]) {
            assert_eq!(
                refused_label(key, value).is_none(),
                taken,
                "{key:?}={value:?}"
            );
        }
        let many: std::collections::HashMap<String, String> = (0..100)
            .map(|i| (format!("l{i:03}"), "v".to_string()))
            .collect();
        let kept = edge_labels("p", &many);
        assert_eq!(kept.len(), MAX_EDGE_LABELS);
        assert!(kept.contains_key("l000") && !kept.contains_key("l099"));
    }

    #[test]
    fn json_subset() {
        let have = json!({"a": 1, "b": {"c": [1, 2], "d": "x"}, "e": true});
        assert!(json_contains(&have, &json!({"b": {"c": [1, 2]}})));
        assert!(json_contains(&have, &json!({"z": []})));
        assert!(!json_contains(&have, &json!({"b": {"c": [1]}})));
        assert!(!json_contains(&have, &json!({"a": 2})));
    }
}
