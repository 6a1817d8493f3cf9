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

/// The machine's CPUs and memory.
pub(crate) fn detect() -> pb::Resources {
    let cpus = std::thread::available_parallelism().map_or(1, |n| n.get());
    let mut sys = sysinfo::System::new();
    sys.refresh_memory();
    pb::Resources {
        cpu_millis: cpus as i64 * 1000,
        memory_bytes: i64::try_from(sys.total_memory()).unwrap_or(i64::MAX),
        pods: 0,
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
        };
        let o = offered(&cap, Some(8000), Some(1 << 30), 10);
        assert_eq!((o.cpu_millis, o.memory_bytes, o.pods), (4000, 1 << 30, 10));
        let o = offered(&cap, None, None, 5);
        assert_eq!((o.cpu_millis, o.memory_bytes), (4000, 8 << 30));
        let detected = detect();
        assert!(detected.cpu_millis >= 1000 && detected.memory_bytes > 0);
    }
}
