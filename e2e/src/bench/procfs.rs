//! CPU time and resident memory of a process, from `/proc/<pid>/stat` and `/proc/<pid>/status`.

use std::time::{Duration, Instant};

use anyhow::Context;

/// Clock ticks per second of `/proc/<pid>/stat` times (USER_HZ, 100 on Linux).
const TICKS_PER_SEC: f64 = 100.0;

/// One reading of a process's counters.
#[derive(Debug, Clone, Copy)]
pub struct ProcSample {
    /// When it was read.
    pub at: Instant,
    /// User + system CPU time so far, seconds.
    pub cpu_secs: f64,
    /// Resident set size, KiB (`VmRSS`).
    pub rss_kib: u64,
    /// Peak resident set size so far, KiB (`VmHWM`).
    pub hwm_kib: u64,
    /// Bytes read so far through read-like syscalls, sockets included (`rchar`).
    pub rchar: u64,
    /// Bytes written so far (`wchar`).
    pub wchar: u64,
}

impl ProcSample {
    /// Reads the counters of `pid` (`"self"` works too).
    pub fn read(pid: impl std::fmt::Display) -> anyhow::Result<Self> {
        let at = Instant::now();
        let stat = std::fs::read_to_string(format!("/proc/{pid}/stat"))
            .with_context(|| format!("reading /proc/{pid}/stat"))?;
        // Fields after the parenthesised command name; utime and stime are fields 14 and 15.
        let rest = stat.rsplit_once(')').context("malformed stat")?.1;
        let f: Vec<&str> = rest.split_whitespace().collect();
        let utime: f64 = f.get(11).context("no utime")?.parse()?;
        let stime: f64 = f.get(12).context("no stime")?.parse()?;
        let status = std::fs::read_to_string(format!("/proc/{pid}/status"))?;
        let kib = |key: &str| {
            status
                .lines()
                .find(|l| l.starts_with(key))
                .and_then(|l| l.split_whitespace().nth(1))
                .and_then(|v| v.parse().ok())
                .unwrap_or(0)
        };
        let io = std::fs::read_to_string(format!("/proc/{pid}/io")).unwrap_or_default();
        let io_field = |key: &str| {
            io.lines()
                .find_map(|l| l.strip_prefix(key))
                .and_then(|v| v.trim().parse().ok())
                .unwrap_or(0)
        };
        Ok(ProcSample {
            at,
            cpu_secs: (utime + stime) / TICKS_PER_SEC,
            rss_kib: kib("VmRSS:"),
            hwm_kib: kib("VmHWM:"),
            rchar: io_field("rchar:"),
            wchar: io_field("wchar:"),
        })
    }
}

/// Usage of a process over a window.
#[derive(Debug, Clone, Copy)]
pub struct ProcWindow {
    /// Window length.
    pub elapsed: Duration,
    /// CPU used, as a percentage of one core.
    pub cpu_pct: f64,
    /// Mean RSS over the samples, MiB.
    pub rss_mean_mib: f64,
    /// Largest RSS sampled, MiB.
    pub rss_max_mib: f64,
    /// Bytes read + written per second.
    pub io_bytes_per_sec: f64,
}

impl ProcWindow {
    /// Samples `pid` every second for `window`.
    pub async fn measure(pid: u32, window: Duration) -> anyhow::Result<Self> {
        let first = ProcSample::read(pid)?;
        let mut rss = vec![first.rss_kib];
        let mut last = first;
        while last.at.duration_since(first.at) < window {
            tokio::time::sleep(Duration::from_secs(1).min(window)).await;
            last = ProcSample::read(pid)?;
            rss.push(last.rss_kib);
        }
        Ok(Self::between(&first, &last, &rss))
    }

    /// Usage between two samples, with the RSS readings taken in between.
    pub fn between(first: &ProcSample, last: &ProcSample, rss: &[u64]) -> Self {
        let elapsed = last.at.duration_since(first.at);
        let secs = elapsed.as_secs_f64().max(1e-9);
        let mib = |k: u64| k as f64 / 1024.0;
        ProcWindow {
            elapsed,
            cpu_pct: 100.0 * (last.cpu_secs - first.cpu_secs) / secs,
            rss_mean_mib: rss.iter().map(|&k| mib(k)).sum::<f64>() / rss.len().max(1) as f64,
            rss_max_mib: rss.iter().map(|&k| mib(k)).fold(0.0, f64::max),
            io_bytes_per_sec: ((last.rchar + last.wchar) as f64
                - (first.rchar + first.wchar) as f64)
                / secs,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_this_process() {
        let s = ProcSample::read("self").unwrap();
        assert!(s.rss_kib > 0 && s.hwm_kib >= s.rss_kib);
    }
}
