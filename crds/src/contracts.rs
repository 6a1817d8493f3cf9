//! Names every DeCloud part agrees on: node naming, labels, taints, annotations, field managers
//! and finalizers. Declared once here (mirroring `docs/contracts.md`) and imported everywhere
//! else; a copy elsewhere is a bug.

/// Prefix of every virtual node's name: Provider `P` is Node `edge-P`.
pub const NODE_PREFIX: &str = "edge-";

/// The virtual node of a provider.
pub fn node_name(provider: &str) -> String {
    format!("{NODE_PREFIX}{provider}")
}

/// The provider behind a virtual node, if `node` is one.
pub fn provider_of_node(node: &str) -> Option<&str> {
    node.strip_prefix(NODE_PREFIX).filter(|p| !p.is_empty())
}

/// Whether `name` can be a provider (and so `edge-<name>` a node and Lease name): 1-200
/// lowercase letters, digits, `-` or `.`, starting and ending with a letter or digit.
pub fn valid_provider_name(name: &str) -> bool {
    let bytes = name.as_bytes();
    !name.is_empty()
        && name.len() <= 200
        && bytes
            .iter()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || *b == b'-' || *b == b'.')
        && bytes[0].is_ascii_alphanumeric()
        && bytes[bytes.len() - 1].is_ascii_alphanumeric()
}

/// Namespace of the virtual nodes' Leases (as for every kubelet).
pub const NODE_LEASE_NAMESPACE: &str = "kube-node-lease";

// === labels ===

/// On a Workload's replica pods: the Workload's name.
pub const WORKLOAD_LABEL: &str = "decloud.dev/workload";
/// On a Workload's replica pods: the hash of the template they were made from.
pub const TEMPLATE_HASH_LABEL: &str = "decloud.dev/template-hash";
/// On a virtual node: the Provider it stands for.
pub const PROVIDER_LABEL: &str = "decloud.dev/provider";
/// Kubernetes' well-known node label of the CPU architecture (`amd64`, `arm64`): on virtual
/// nodes it comes from the edge's reported platform, never from the edge's own labels.
pub const ARCH_LABEL: &str = "kubernetes.io/arch";
/// Kubernetes' well-known node label of the operating system (`linux`).
pub const OS_LABEL: &str = "kubernetes.io/os";
/// On join-token Secrets.
pub const JOIN_TOKEN_LABEL: &str = "decloud.dev/join-token";

/// On the Secrets the gateway's ACME issuer keeps certificates in (in the operator's
/// namespace): value [`ACME_LABEL_VALUE`].
pub const ACME_LABEL: &str = "decloud.dev/acme";
/// The value of [`ACME_LABEL`].
pub const ACME_LABEL_VALUE: &str = "certificate";

// === taints ===

/// Taint on every virtual node (`NoSchedule`): only pods that tolerate it land on volunteers.
pub const EDGE_TAINT: &str = "decloud.dev/edge";
/// Kubernetes' own taint for an unreachable node.
pub const UNREACHABLE_TAINT: &str = "node.kubernetes.io/unreachable";
/// Taint of a virtual node whose provider takes no new work (paused, draining, drained or
/// cordoned), as `kubectl cordon` puts on a node.
pub const UNSCHEDULABLE_TAINT: &str = "node.kubernetes.io/unschedulable";

// === annotations ===

/// On a Provider: sha256 of its credential (the credential itself is never stored).
pub const CREDENTIAL_ANNOTATION: &str = "decloud.dev/credential-sha256";
/// On a Provider: set when it was revoked.
pub const REVOKED_ANNOTATION: &str = "decloud.dev/revoked";
/// On the operator's TLS Secret: the names its serving certificate covers.
pub const SANS_ANNOTATION: &str = "decloud.dev/serving-sans";

/// On an ACME certificate Secret: the one host it is for.
pub const ACME_HOST_ANNOTATION: &str = "decloud.dev/acme-host";
/// On an ACME certificate Secret while an order runs: `<holder> <expiry, Unix seconds>`; only
/// the holder orders for the host until it clears the lock or the lock expires.
pub const ACME_LOCK_ANNOTATION: &str = "decloud.dev/acme-lock";
/// On an ACME certificate Secret: failed orders in a row.
pub const ACME_FAILURES_ANNOTATION: &str = "decloud.dev/acme-failures";
/// On an ACME certificate Secret: no new order before this time (Unix seconds).
pub const ACME_RETRY_AFTER_ANNOTATION: &str = "decloud.dev/acme-retry-after";
/// On an ACME certificate Secret: why the last order failed.
pub const ACME_ERROR_ANNOTATION: &str = "decloud.dev/acme-last-error";

// === field managers (server-side apply) ===

/// Every write of the operator's node and pod side.
pub const OPERATOR_FIELD_MANAGER: &str = "decloud-operator";
/// Usage accounting (`status.usage` of Providers and Workloads).
pub const USAGE_FIELD_MANAGER: &str = "decloud-operator-usage";
/// The Workload controller.
pub const WORKLOAD_FIELD_MANAGER: &str = "decloud-workload";

// === finalizers ===

/// On every Provider: its Node, Lease and pods are cleaned up before it goes.
pub const PROVIDER_FINALIZER: &str = "decloud.dev/provider-cleanup";
/// On every Workload: its pods are gone before it goes.
pub const WORKLOAD_FINALIZER: &str = "decloud.dev/workload-cleanup";

// === containers on an edge ===

/// Labels edge-kubelet puts on every container it creates. It never touches a container
/// without `MANAGED_BY=MANAGED_BY_VALUE` and its own `NODE`.
pub mod container_labels {
    /// Who manages the container.
    pub const MANAGED_BY: &str = "decloud.dev/managed-by";
    /// The value of [`MANAGED_BY`] on DeCloud's containers.
    pub const MANAGED_BY_VALUE: &str = "edge-kubelet";
    /// The virtual node the container belongs to.
    pub const NODE: &str = "decloud.dev/node";
    /// The pod's uid.
    pub const POD_UID: &str = "decloud.dev/pod-uid";
    /// The pod's namespace.
    pub const POD_NAMESPACE: &str = "decloud.dev/pod-namespace";
    /// The pod's name.
    pub const POD_NAME: &str = "decloud.dev/pod-name";
    /// The container's name in the pod spec.
    pub const CONTAINER: &str = "decloud.dev/container";
    /// How often the container was restarted.
    pub const RESTART_COUNT: &str = "decloud.dev/restart-count";
    /// Hash of the container spec it was created from.
    pub const SPEC_HASH: &str = "decloud.dev/spec-hash";
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn node_names_round_trip() {
        assert_eq!(node_name("alice"), "edge-alice");
        assert_eq!(provider_of_node("edge-alice"), Some("alice"));
        assert_eq!(provider_of_node("edge-"), None);
        assert_eq!(provider_of_node("worker-1"), None);
    }
}
