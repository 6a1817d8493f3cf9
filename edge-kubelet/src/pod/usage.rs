//! Usage accounting: CPU-seconds and memory-GiB-hours per pod, from samples of its containers.
//!
//! CPU is cumulative in the engine, per container instance; a restarted instance starts from
//! zero, so what an instance used is kept when it disappears. Memory is integrated over the
//! time between samples (the rectangle rule on the newer sample).

use std::{collections::HashMap, time::Instant};

use decloud_proto as pb;

use crate::runtime::ContainerUsage;

/// Accumulated usage of one pod.
#[derive(Debug, Default)]
pub(crate) struct UsageMeter {
    /// Latest cumulative CPU of each sampled instance.
    cpu_by_instance: HashMap<String, f64>,
    /// CPU of instances that are gone.
    retired_cpu: f64,
    memory_gib_hours: f64,
    last: Option<Instant>,
}

const GIB: f64 = (1u64 << 30) as f64;

impl UsageMeter {
    /// Records a sample of every current instance (id → counters) taken at `now`.
    pub(crate) fn record(&mut self, now: Instant, samples: &[(String, ContainerUsage)]) {
        let current: HashMap<&str, &ContainerUsage> =
            samples.iter().map(|(id, u)| (id.as_str(), u)).collect();
        let gone: Vec<String> = self
            .cpu_by_instance
            .keys()
            .filter(|id| !current.contains_key(id.as_str()))
            .cloned()
            .collect();
        for id in gone {
            self.retired_cpu += self.cpu_by_instance.remove(&id).unwrap_or_default();
        }
        for (id, u) in samples {
            let seen = self.cpu_by_instance.entry(id.clone()).or_default();
            // Counters never go back; a smaller value is a sampling glitch, not a refund.
            *seen = seen.max(u.cpu_seconds);
        }
        if let Some(last) = self.last {
            let hours = now.saturating_duration_since(last).as_secs_f64() / 3600.0;
            let bytes: u64 = samples.iter().map(|(_, u)| u.memory_bytes).sum();
            self.memory_gib_hours += bytes as f64 / GIB * hours;
        }
        self.last = Some(now);
    }

    /// What the pod used so far.
    pub(crate) fn usage(&self) -> pb::Usage {
        pb::Usage {
            cpu_seconds: self.retired_cpu + self.cpu_by_instance.values().sum::<f64>(),
            memory_gib_hours: self.memory_gib_hours,
            ephemeral_storage_bytes: 0,
        }
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    fn u(cpu: f64, mem_gib: f64) -> ContainerUsage {
        ContainerUsage {
            cpu_seconds: cpu,
            memory_bytes: (mem_gib * GIB) as u64,
        }
    }

    #[test]
    fn accumulates_cpu_across_restarts_and_integrates_memory() {
        let t0 = Instant::now();
        let mut m = UsageMeter::default();
        m.record(t0, &[("a".into(), u(1.0, 1.0))]);
        assert_eq!(m.usage().cpu_seconds, 1.0);
        assert_eq!(m.usage().memory_gib_hours, 0.0, "no interval yet");
        // Half an hour later the instance used 3 s in all and held 1 GiB.
        m.record(t0 + Duration::from_secs(1800), &[("a".into(), u(3.0, 1.0))]);
        assert_eq!(m.usage().cpu_seconds, 3.0);
        assert!((m.usage().memory_gib_hours - 0.5).abs() < 1e-9);
        // The instance restarted: the new one starts from zero, the old one's 3 s are kept.
        m.record(t0 + Duration::from_secs(3600), &[("b".into(), u(0.5, 2.0))]);
        assert_eq!(m.usage().cpu_seconds, 3.5);
        assert!((m.usage().memory_gib_hours - 1.5).abs() < 1e-9);
        // A glitchy smaller reading does not refund CPU.
        m.record(t0 + Duration::from_secs(3600), &[("b".into(), u(0.2, 0.0))]);
        assert_eq!(m.usage().cpu_seconds, 3.5);
    }
}
