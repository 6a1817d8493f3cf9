//! `--when-idle`: lend the machine only while its owner's own use of it stays low.
//!
//! The measure: the machine's busy CPU time (from `/proc/stat`: every CPU's time that is
//! neither idle nor iowait) minus the CPU time DeCloud's own containers used (their ceiling
//! cgroup's `cpu.stat` `usage_usec`, or `cpuacct.usage` on cgroup v1), as a share of all CPU
//! time, over each sampling interval. The machine is idle once that share has stayed under the
//! threshold for `--idle-for`; one sample at or over it makes it busy at once (and the edge
//! drains). A threshold of 0 never counts as idle.

use std::path::{Path, PathBuf};
use std::time::Duration;

/// `/proc/stat` counts in USER_HZ, 100 per second on every Linux architecture.
const USER_HZ: u64 = 100;

/// The file holding the CPU time of the cgroup named `parent` (as given to Docker as
/// `CgroupParent`), for the layouts the edge installs.
pub fn cpu_usage_file(parent: &str) -> Option<PathBuf> {
    let root = Path::new("/sys/fs/cgroup");
    let rel = parent.trim_start_matches('/');
    [
        root.join(rel).join("cpu.stat"),
        root.join("cpuacct").join(rel).join("cpuacct.usage"),
        root.join("cpu,cpuacct").join(rel).join("cpuacct.usage"),
    ]
    .into_iter()
    .find(|p| p.exists())
}

/// The idle rule: the threshold, how long it must hold, and where DeCloud's usage is read.
#[derive(Debug, Clone)]
pub struct IdleRule {
    /// Busy share (0-100 %) at or above which the owner is using the machine.
    pub threshold_percent: u8,
    /// How long the share must stay under the threshold before the machine is lent.
    pub idle_for: Duration,
    /// How often the measure is taken.
    pub every: Duration,
    /// DeCloud's containers' CPU time (None: not subtracted, e.g. the simulated runtime).
    pub decloud_usage: Option<PathBuf>,
}

/// One reading: (busy, total) in microseconds of CPU time, and DeCloud's usage.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub(crate) struct Reading {
    busy_us: u64,
    total_us: u64,
    decloud_us: u64,
}

/// Parses the `cpu` line of `/proc/stat`.
pub(crate) fn parse_proc_stat(stat: &str) -> Option<(u64, u64)> {
    let line = stat.lines().find(|l| l.starts_with("cpu "))?;
    let v: Vec<u64> = line
        .split_whitespace()
        .skip(1)
        .filter_map(|f| f.parse().ok())
        .collect();
    if v.len() < 4 {
        return None;
    }
    // user nice system idle iowait irq softirq steal (guest time is already in user).
    let total: u64 = v.iter().take(8).sum();
    let idle = v[3] + v.get(4).copied().unwrap_or(0);
    let to_us = |j: u64| j.saturating_mul(1_000_000 / USER_HZ);
    Some((to_us(total.saturating_sub(idle)), to_us(total)))
}

/// Parses a cgroup's CPU time file, in microseconds.
pub(crate) fn parse_usage(path: &Path, text: &str) -> Option<u64> {
    if path.ends_with("cpu.stat") {
        text.lines()
            .find_map(|l| l.strip_prefix("usage_usec "))
            .and_then(|v| v.trim().parse().ok())
    } else {
        text.trim().parse::<u64>().ok().map(|ns| ns / 1000)
    }
}

impl IdleRule {
    fn read(&self) -> Option<Reading> {
        let (busy_us, total_us) = parse_proc_stat(&std::fs::read_to_string("/proc/stat").ok()?)?;
        let decloud_us = self
            .decloud_usage
            .as_ref()
            .and_then(|p| parse_usage(p, &std::fs::read_to_string(p).ok()?))
            .unwrap_or(0);
        Some(Reading {
            busy_us,
            total_us,
            decloud_us,
        })
    }

    /// The owner's busy share between two readings, percent.
    pub(crate) fn owner_busy_percent(a: Reading, b: Reading) -> f64 {
        let total = b.total_us.saturating_sub(a.total_us);
        if total == 0 {
            return 0.0;
        }
        let busy = b.busy_us.saturating_sub(a.busy_us);
        let ours = b.decloud_us.saturating_sub(a.decloud_us);
        busy.saturating_sub(ours) as f64 * 100.0 / total as f64
    }

    /// Measures until `stop`, telling `idle(true|false)` on every change.
    pub(crate) async fn run(
        self,
        availability: super::availability::Availability,
        stop: tokio_util::sync::CancellationToken,
    ) {
        let mut last = self.read();
        let mut quiet_since: Option<tokio::time::Instant> = None;
        // Busy until shown idle: a machine starting in use is not lent first.
        availability.set_idle(Some(false));
        let mut tick = tokio::time::interval(self.every);
        tick.tick().await;
        loop {
            tokio::select! {
                _ = stop.cancelled() => return,
                _ = tick.tick() => {}
            }
            let now = self.read();
            let (Some(a), Some(b)) = (last, now) else {
                last = now;
                continue;
            };
            last = now;
            let share = Self::owner_busy_percent(a, b);
            let busy = self.threshold_percent == 0 || share >= f64::from(self.threshold_percent);
            if busy {
                quiet_since = None;
                tracing::debug!(share, "the owner is using the machine");
                availability.set_idle(Some(false));
            } else {
                let since = *quiet_since.get_or_insert_with(tokio::time::Instant::now);
                if since.elapsed() >= self.idle_for {
                    availability.set_idle(Some(true));
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_owners_share_leaves_decloud_out() {
        let (busy, total) =
            parse_proc_stat("cpu  100 0 100 700 100 0 0 0 0 0\ncpu0 1 2 3 4\n").unwrap();
        assert_eq!((busy, total), (2_000_000, 10_000_000));
        let a = Reading::default();
        // 4 s of 10 s busy, 3 s of it DeCloud's: the owner used 10 %.
        let b = Reading {
            busy_us: 4_000_000,
            total_us: 10_000_000,
            decloud_us: 3_000_000,
        };
        assert!((IdleRule::owner_busy_percent(a, b) - 10.0).abs() < 1e-9);
        assert_eq!(
            parse_usage(Path::new("x/cpu.stat"), "usage_usec 1234\nuser_usec 1\n"),
            Some(1234)
        );
        assert_eq!(parse_usage(Path::new("x/cpuacct.usage"), "5000\n"), Some(5));
        assert_eq!(parse_proc_stat("intr 1 2"), None);
    }
}
