//! Facts about a `core/v1` Pod that several parts need: whether it still holds resources and
//! what it requests. One implementation, with every sum checked.

use k8s_openapi::api::core::v1::{Container, Pod};

use crate::quantity::{QuantityError, to_millis, to_units};

/// Whether the pod has finished (phase `Succeeded` or `Failed`) and so holds nothing on its node.
pub fn is_terminal(pod: &Pod) -> bool {
    matches!(
        pod.status.as_ref().and_then(|s| s.phase.as_deref()),
        Some("Succeeded" | "Failed")
    )
}

/// What a pod requests, summed over its containers.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct PodRequests {
    /// CPU in millicores.
    pub cpu_millis: i64,
    /// Memory in bytes.
    pub memory_bytes: i64,
    /// Ephemeral storage in bytes.
    pub ephemeral_storage_bytes: i64,
}

/// What `container` requests. As Kubernetes does, a resource without a request but with a limit
/// requests the limit; an unparsable quantity counts as 0 (admission refuses such pods), a
/// valid one too large for `i64` as `i64::MAX`, so a huge request never looks free.
pub fn container_requests(container: &Container) -> PodRequests {
    let res = container.resources.as_ref();
    let pick = |key: &str| {
        res.and_then(|r| r.requests.as_ref().and_then(|m| m.get(key)))
            .or_else(|| res.and_then(|r| r.limits.as_ref().and_then(|m| m.get(key))))
    };
    let saturating = |parsed: Result<i64, QuantityError>| match parsed {
        Ok(v) => v,
        Err(e) if e.is_too_large() => i64::MAX,
        Err(_) => 0,
    };
    PodRequests {
        cpu_millis: pick("cpu").map_or(0, |q| saturating(to_millis(&q.0))),
        memory_bytes: pick("memory").map_or(0, |q| saturating(to_units(&q.0))),
        ephemeral_storage_bytes: pick("ephemeral-storage")
            .map_or(0, |q| saturating(to_units(&q.0))),
    }
}

/// What `pod` requests, summed over its containers; saturates instead of wrapping.
pub fn pod_requests(pod: &Pod) -> PodRequests {
    pod.spec
        .iter()
        .flat_map(|s| s.containers.iter())
        .map(container_requests)
        .fold(PodRequests::default(), |acc, r| PodRequests {
            cpu_millis: acc.cpu_millis.saturating_add(r.cpu_millis),
            memory_bytes: acc.memory_bytes.saturating_add(r.memory_bytes),
            ephemeral_storage_bytes: acc
                .ephemeral_storage_bytes
                .saturating_add(r.ephemeral_storage_bytes),
        })
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn pod(v: serde_json::Value) -> Pod {
        serde_json::from_value(v).unwrap()
    }

    #[test]
    fn requests_sum_containers_and_limits_stand_in() {
        let p = pod(json!({"spec": {"containers": [
            {"name": "a", "resources": {"requests": {"cpu": "100m", "memory": "1Mi", "ephemeral-storage": "1Gi"}}},
            {"name": "b", "resources": {"limits": {"cpu": "1", "memory": "1Ki", "ephemeral-storage": "2Mi"}}},
            {"name": "c"}
        ]}}));
        assert_eq!(
            pod_requests(&p),
            PodRequests {
                cpu_millis: 1100,
                memory_bytes: 1024 * 1024 + 1024,
                ephemeral_storage_bytes: (1 << 30) + (2 << 20),
            }
        );
    }

    #[test]
    fn sums_saturate() {
        let big = json!({"requests": {"memory": "4Ei"}});
        let p = pod(json!({"spec": {"containers": [
            {"name": "a", "resources": big}, {"name": "b", "resources": big}
        ]}}));
        assert_eq!(pod_requests(&p).memory_bytes, i64::MAX);
        let huge = json!({"requests": {"cpu": "1e2147483647", "memory": "0e2147483647"}});
        let p = pod(json!({"spec": {"containers": [{"name": "a", "resources": huge}]}}));
        assert_eq!(
            pod_requests(&p),
            PodRequests {
                cpu_millis: i64::MAX,
                memory_bytes: 0,
                ephemeral_storage_bytes: 0,
            }
        );
    }

    #[test]
    fn terminal_phases() {
        assert!(is_terminal(&pod(json!({"status": {"phase": "Failed"}}))));
        assert!(is_terminal(&pod(json!({"status": {"phase": "Succeeded"}}))));
        assert!(!is_terminal(&pod(json!({"status": {"phase": "Running"}}))));
        assert!(!is_terminal(&pod(json!({}))));
    }
}
