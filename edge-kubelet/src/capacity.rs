//! What this machine has, and what the provider offers of it.

use decloud_proto as pb;

use decloud_crds::quantity;

use crate::error::{Error, Result};

/// Parses a CPU quantity (`2`, `1.5`, `500m`) into millicores, rounded up. Only plain cores
/// or millicores: a suffix such as `k` on a CPU flag is a typo, not a thousand cores.
pub(crate) fn parse_cpu_millis(s: &str) -> Result<i64> {
    let bad = || Error::InvalidInput(format!("CPU quantity {s:?} (expected e.g. 2, 1.5 or 500m)"));
    let number = s.trim().strip_suffix('m').unwrap_or(s.trim());
    if !number.chars().all(|c| c.is_ascii_digit() || c == '.') {
        return Err(bad());
    }
    quantity::to_millis(s).map_err(|_| bad())
}

/// Parses a Kubernetes memory quantity (`4Gi`, `512Mi`, `1G`, `1000`) into bytes, rounded up.
pub(crate) fn parse_memory_bytes(s: &str) -> Result<i64> {
    quantity::to_units(s).map_err(|_| {
        Error::InvalidInput(format!(
            "memory quantity {s:?} (expected e.g. 4Gi or 512Mi)"
        ))
    })
}

/// Parses an ephemeral-storage quantity (`50Gi`, `256Mi`) into bytes: more than 0, at most
/// [`decloud_crds::MAX_STORAGE`].
pub(crate) fn parse_storage_bytes(s: &str) -> Result<i64> {
    let bad = || {
        Error::InvalidInput(format!(
            "storage quantity {s:?} (expected e.g. 50Gi or 256Mi, more than 0, at most {})",
            decloud_crds::MAX_STORAGE
        ))
    };
    let bytes = quantity::to_units(s).map_err(|_| bad())?;
    if bytes <= 0 || bytes > decloud_crds::MAX_STORAGE_BYTES {
        return Err(bad());
    }
    Ok(bytes)
}

/// (total, available) bytes of the filesystem holding `path` (the longest mount point that
/// is a prefix of it); `None` when no mounted filesystem is known to hold it.
pub(crate) fn disk_of(path: &std::path::Path) -> Option<(i64, i64)> {
    let disks = sysinfo::Disks::new_with_refreshed_list();
    disks
        .list()
        .iter()
        .filter(|d| path.starts_with(d.mount_point()))
        .max_by_key(|d| d.mount_point().as_os_str().len())
        .map(|d| {
            let b = |v: u64| i64::try_from(v).unwrap_or(i64::MAX);
            (b(d.total_space()), b(d.available_space()))
        })
}

/// The storage offer: `--storage` (never more than the filesystem holds), else half of what
/// is free on it now; at most [`decloud_crds::MAX_STORAGE_BYTES`]. `disk`: (total, available).
pub(crate) fn storage_offer(flag: Option<i64>, disk: Option<(i64, i64)>) -> i64 {
    let offer = match (flag, disk) {
        (Some(f), Some((total, _))) if total > 0 => f.min(total),
        (Some(f), _) => f,
        (None, Some((_, available))) => available / 2,
        (None, None) => 0,
    };
    offer.clamp(0, decloud_crds::MAX_STORAGE_BYTES)
}

/// The storage bound of a pod that sets no ephemeral-storage limit: an equal share of the
/// offer among `--max-pods` pods, so pods without limits can never fill it together.
pub(crate) fn default_pod_storage(offered: i64, max_pods: i64) -> i64 {
    offered.max(0) / max_pods.max(1)
}

/// The machine's CPUs and memory.
pub(crate) fn detect() -> pb::Resources {
    let cpus = std::thread::available_parallelism().map_or(1, |n| n.get());
    let mut sys = sysinfo::System::new();
    sys.refresh_memory();
    pb::Resources {
        cpu_millis: cpus as i64 * 1000,
        memory_bytes: i64::try_from(sys.total_memory()).unwrap_or(i64::MAX),
        pods: 0,
        storage_bytes: 0,
    }
}

/// Capacity capped by the provider's own limits (`None`: offer all of it).
pub(crate) fn offered(
    capacity: &pb::Resources,
    cpu_millis: Option<i64>,
    memory_bytes: Option<i64>,
    max_pods: i64,
) -> pb::Resources {
    pb::Resources {
        cpu_millis: cpu_millis.map_or(capacity.cpu_millis, |c| c.min(capacity.cpu_millis)),
        memory_bytes: memory_bytes.map_or(capacity.memory_bytes, |m| m.min(capacity.memory_bytes)),
        pods: max_pods,
        storage_bytes: capacity.storage_bytes,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cpu_quantities() {
        for (s, want) in [("2", 2000), ("1.5", 1500), ("500m", 500), ("0.1", 100)] {
            assert_eq!(parse_cpu_millis(s).unwrap(), want, "{s}");
        }
        for s in ["", "x", "-1", "5k", "-5m"] {
            assert!(parse_cpu_millis(s).is_err(), "{s}");
        }
    }

    #[test]
    fn memory_quantities() {
        for (s, want) in [
            ("4Gi", 4 << 30),
            ("512Mi", 512 << 20),
            ("1G", 1_000_000_000),
            ("1000", 1000),
            ("1.5Gi", 3 << 29),
        ] {
            assert_eq!(parse_memory_bytes(s).unwrap(), want, "{s}");
        }
        for s in ["", "Gi", "-1Gi", "4GB"] {
            assert!(parse_memory_bytes(s).is_err(), "{s}");
        }
    }

    #[test]
    fn offer_is_capped_by_capacity() {
        let cap = pb::Resources {
            cpu_millis: 4000,
            memory_bytes: 8 << 30,
            pods: 0,
            storage_bytes: 0,
        };
        let o = offered(&cap, Some(8000), Some(1 << 30), 10);
        assert_eq!((o.cpu_millis, o.memory_bytes, o.pods), (4000, 1 << 30, 10));
        let o = offered(&cap, None, None, 5);
        assert_eq!((o.cpu_millis, o.memory_bytes), (4000, 8 << 30));
        let detected = detect();
        assert!(detected.cpu_millis >= 1000 && detected.memory_bytes > 0);
    }

    #[test]
    fn storage_quantities_are_bounded() {
        assert_eq!(parse_storage_bytes("256Mi").unwrap(), 256 << 20);
        assert_eq!(parse_storage_bytes("1Pi").unwrap(), 1 << 50);
        for s in [
            "",
            "0",
            "-1Gi",
            "2Pi",
            "1Ei",
            "lots",
            "9999999999999999999999",
        ] {
            assert!(parse_storage_bytes(s).is_err(), "{s}");
        }
    }

    #[test]
    fn storage_offer_defaults_to_half_the_free_space() {
        const GI: i64 = 1 << 30;
        let table = [
            (Some(50 * GI), Some((100 * GI, 10 * GI)), 50 * GI),
            (Some(500 * GI), Some((100 * GI, 10 * GI)), 100 * GI),
            (None, Some((100 * GI, 10 * GI)), 5 * GI),
            (Some(GI), None, GI),
            (None, None, 0),
            (
                None,
                Some((i64::MAX, i64::MAX)),
                decloud_crds::MAX_STORAGE_BYTES,
            ),
        ];
        for (flag, disk, want) in table {
            assert_eq!(storage_offer(flag, disk), want, "{flag:?} {disk:?}");
        }
        assert!(disk_of(std::path::Path::new("/")).is_some_and(|(t, _)| t > 0));
        for (offer, pods, want) in [(256 << 20, 20, (256 << 20) / 20), (GI, 0, GI), (-1, 5, 0)] {
            assert_eq!(default_pod_storage(offer, pods), want, "{offer} {pods}");
        }
    }
}
