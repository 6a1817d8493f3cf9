//! Ephemeral storage, as kubelet's eviction manager bounds it: a pod's containers' writable
//! layers and log files are measured every poll, and a pod above its `ephemeral-storage`
//! limit is evicted (killed at once, phase `Failed`, reason [`EVICTED`]).
//!
//! The limit is the sum of its containers' limits (when any container sets one), and each
//! container is also held to its own; a pod that sets none is held to the edge's per-pod
//! share of the `--storage` offer (offer / `--max-pods`), so no tenant can fill the disk.

use decloud_crds::quantity::format_bytes;
use decloud_proto as pb;

/// Pod-level reason of a pod evicted for its storage use (kubelet's word).
pub(crate) const EVICTED: &str = "Evicted";

/// What one container uses on disk: writable layer plus log files, bytes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct ContainerDisk {
    /// The container's name in the pod.
    pub(crate) name: String,
    /// Bytes used.
    pub(crate) bytes: i64,
}

/// Why `spec` must be evicted given its containers' measured `usage`, as kubelet words it
/// (`None`: it stays). `default_pod_limit`: the bound of a pod that sets no
/// `ephemeral-storage` limit (0: none).
pub(crate) fn eviction(
    spec: &pb::PodSpec,
    usage: &[ContainerDisk],
    default_pod_limit: i64,
) -> Option<String> {
    let limit_of = |name: &str| {
        spec.containers
            .iter()
            .find(|c| c.name == name)
            .and_then(|c| c.resources)
            .map_or(0, |r| r.ephemeral_storage_limit_bytes.max(0))
    };
    let total = usage
        .iter()
        .fold(0i64, |a, c| a.saturating_add(c.bytes.max(0)));
    let limits: Vec<i64> = spec
        .containers
        .iter()
        .filter_map(|c| c.resources)
        .map(|r| r.ephemeral_storage_limit_bytes)
        .filter(|l| *l > 0)
        .collect();
    if limits.is_empty() {
        if default_pod_limit > 0 && total > default_pod_limit {
            return Some(format!(
                "Pod ephemeral local storage usage exceeds the edge's default limit of {} \
                 (the pod sets no ephemeral-storage limit). ",
                format_bytes(default_pod_limit)
            ));
        }
        return None;
    }
    let pod_limit = limits.iter().fold(0i64, |a, l| a.saturating_add(*l));
    if total > pod_limit {
        return Some(format!(
            "Pod ephemeral local storage usage exceeds the total limit of containers {}. ",
            format_bytes(pod_limit)
        ));
    }
    usage.iter().find_map(|c| {
        let limit = limit_of(&c.name);
        (limit > 0 && c.bytes > limit).then(|| {
            format!(
                "Container {} exceeded its local ephemeral storage limit \"{}\". ",
                c.name,
                format_bytes(limit)
            )
        })
    })
}

/// The pod's `ephemeral-storage` (request, limit), summed over containers; a container
/// with a limit but no request requests its limit, as the API server defaults it.
pub(crate) fn pod_storage(spec: &pb::PodSpec) -> (i64, i64) {
    spec.containers
        .iter()
        .map(|c| c.resources.unwrap_or_default())
        .fold((0i64, 0i64), |(req, lim), r| {
            let l = r.ephemeral_storage_limit_bytes.max(0);
            let q = if r.ephemeral_storage_request_bytes > 0 {
                r.ephemeral_storage_request_bytes
            } else {
                l
            };
            (req.saturating_add(q), lim.saturating_add(l))
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    const MI: i64 = 1 << 20;

    fn pod(limits: &[i64]) -> pb::PodSpec {
        pb::PodSpec {
            uid: "u".into(),
            containers: limits
                .iter()
                .enumerate()
                .map(|(i, &l)| pb::ContainerSpec {
                    name: format!("c{i}"),
                    image: "x".into(),
                    resources: Some(pb::ResourceSpec {
                        ephemeral_storage_limit_bytes: l,
                        ..Default::default()
                    }),
                    ..Default::default()
                })
                .collect(),
            ..Default::default()
        }
    }

    fn used(bytes: &[i64]) -> Vec<ContainerDisk> {
        bytes
            .iter()
            .enumerate()
            .map(|(i, &b)| ContainerDisk {
                name: format!("c{i}"),
                bytes: b,
            })
            .collect()
    }

    #[test]
    fn evicts_as_kubelet_does() {
        // (containers' limits, containers' usage, default pod limit, expected message)
        type Row = (&'static [i64], &'static [i64], i64, Option<&'static str>);
        let table: &[Row] = &[
            (&[20 * MI], &[5 * MI], 0, None),
            (&[20 * MI], &[20 * MI], 0, None),
            (
                &[20 * MI],
                &[40 * MI],
                0,
                Some(
                    "Pod ephemeral local storage usage exceeds the total limit of containers 20Mi. ",
                ),
            ),
            (
                &[10 * MI, 10 * MI],
                &[15 * MI, 6 * MI],
                0,
                Some(
                    "Pod ephemeral local storage usage exceeds the total limit of containers 20Mi. ",
                ),
            ),
            (
                &[10 * MI, 30 * MI],
                &[15 * MI, MI],
                0,
                Some("Container c0 exceeded its local ephemeral storage limit \"10Mi\". "),
            ),
            // A container without a limit counts toward the pod's usage, not its limit.
            (
                &[10 * MI, 0],
                &[MI, 10 * MI],
                0,
                Some(
                    "Pod ephemeral local storage usage exceeds the total limit of containers 10Mi. ",
                ),
            ),
            (&[0], &[100 * MI], 0, None),
            (&[0], &[10 * MI], 12 * MI, None),
            (
                &[0, 0],
                &[10 * MI, 3 * MI],
                12 * MI,
                Some(
                    "Pod ephemeral local storage usage exceeds the edge's default limit of 12Mi (the pod sets no ephemeral-storage limit). ",
                ),
            ),
            // Own limits win over the default share.
            (&[64 * MI], &[40 * MI], 12 * MI, None),
            (&[i64::MAX, i64::MAX], &[i64::MAX, i64::MAX], 0, None),
            (&[20 * MI], &[-5], 0, None),
        ];
        for (limits, usage, default, want) in table {
            let got = eviction(&pod(limits), &used(usage), *default);
            assert_eq!(got.as_deref(), *want, "{limits:?} {usage:?} {default}");
        }
    }

    #[test]
    fn storage_requests_default_to_limits() {
        let mut p = pod(&[20 * MI, 0]);
        p.containers[1].resources = Some(pb::ResourceSpec {
            ephemeral_storage_request_bytes: 5 * MI,
            ..Default::default()
        });
        assert_eq!(pod_storage(&p), (25 * MI, 20 * MI));
        assert_eq!(pod_storage(&pod(&[i64::MAX, 1])), (i64::MAX, i64::MAX));
    }
}
