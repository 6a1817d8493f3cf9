//! The offer as a hard ceiling: every container of an edge runs below one cgroup (Docker's
//! `--cgroup-parent`) whose CPU, memory and process limits are what the volunteer offered,
//! so all DeCloud pods together never take more than that, whatever their own limits say.
//!
//! What the engine uses decides the form (`docker info`: `CgroupDriver`, `CgroupVersion`):
//! - `cgroupfs`, cgroup v1: `/decloud-<node>` in the `cpu`, `memory` and `pids` hierarchies,
//!   with `cpu.cfs_quota_us`, `memory.limit_in_bytes` (and `memory.memsw.limit_in_bytes`
//!   where swap is accounted, so the ceiling is not dodged through swap) and `pids.max`;
//! - `cgroupfs`, cgroup v2: `/sys/fs/cgroup/decloud-<node>` with `cpu.max`, `memory.max`,
//!   `memory.swap.max` = 0 and `pids.max`, and the controllers enabled in its
//!   `cgroup.subtree_control` so the containers below are limited too;
//! - `systemd`: the slice `decloud-<node>.slice`, its limits set with
//!   `systemctl set-property --runtime` (`CPUQuota`, `MemoryMax`, `TasksMax`). Not exercised
//!   by the test suites (their engine uses cgroupfs).
//!
//! An edge that cannot set its ceiling does not start: the offer would be a wish, not a limit.

use std::path::{Path, PathBuf};
use std::process::Command;

use crate::error::{Error, Result};

/// The least memory limit (and reservation) Docker accepts on a container: 6 MiB. Smaller
/// requests, which Kubernetes accepts, are raised to it (the pod is then given a little more
/// than it asked, never refused). The ceiling is never below it either.
pub(crate) const MIN_MEMORY_BYTES: i64 = 6 << 20;

/// Processes at most in all of an edge's containers together, per offered pod.
const PIDS_PER_POD: i64 = 1024;
/// CFS period the CPU quota is expressed in (100 ms, as Docker uses).
const CPU_PERIOD_US: i64 = 100_000;

/// How the engine places containers in cgroups.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum CgroupLayout {
    /// `cgroupfs` driver, cgroup v1 (one hierarchy per controller).
    V1,
    /// `cgroupfs` driver, cgroup v2 (one unified hierarchy).
    V2,
    /// `systemd` driver (slices).
    Systemd,
}

impl CgroupLayout {
    /// From `docker info`'s `CgroupDriver` and `CgroupVersion`.
    pub(crate) fn of(driver: &str, version: &str) -> Result<Self> {
        match (driver, version) {
            ("systemd", _) => Ok(CgroupLayout::Systemd),
            ("cgroupfs", "2") => Ok(CgroupLayout::V2),
            ("cgroupfs", _) => Ok(CgroupLayout::V1),
            (d, v) => Err(Error::Unsupported(format!(
                "the engine's cgroup driver {d:?} (cgroup v{v}): cannot cap DeCloud's containers"
            ))),
        }
    }
}

/// The limits every DeCloud container of one edge shares.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Ceiling {
    pub layout: CgroupLayout,
    /// What containers are given as `HostConfig.CgroupParent`.
    pub parent: String,
    pub cpu_millis: i64,
    pub memory_bytes: i64,
    pub pids: i64,
}

impl Ceiling {
    /// The ceiling of edge `node` offering `cpu_millis`, `memory_bytes` and `pods`.
    pub(crate) fn new(
        layout: CgroupLayout,
        node: &str,
        cpu_millis: i64,
        memory_bytes: i64,
        pods: i64,
    ) -> Self {
        let safe: String = node
            .chars()
            .map(|c| if c.is_ascii_alphanumeric() { c } else { '_' })
            .collect();
        let parent = match layout {
            CgroupLayout::Systemd => format!("decloud-{safe}.slice"),
            CgroupLayout::V1 | CgroupLayout::V2 => format!("/decloud-{safe}"),
        };
        Ceiling {
            layout,
            parent,
            cpu_millis: cpu_millis.max(1),
            memory_bytes: memory_bytes.max(MIN_MEMORY_BYTES),
            pids: PIDS_PER_POD.saturating_mul(pods.max(1)).min(1 << 22),
        }
    }

    /// The cgroup files and values to write, in order (pure; the systemd layout has none).
    pub(crate) fn files(&self, root: &Path) -> Vec<(PathBuf, String)> {
        let quota = (self.cpu_millis * CPU_PERIOD_US / 1000).max(1000);
        let dir = |ctrl: &str| root.join(ctrl).join(self.parent.trim_start_matches('/'));
        match self.layout {
            CgroupLayout::V1 => vec![
                (
                    dir("cpu").join("cpu.cfs_period_us"),
                    CPU_PERIOD_US.to_string(),
                ),
                (dir("cpu").join("cpu.cfs_quota_us"), quota.to_string()),
                (
                    dir("memory").join("memory.limit_in_bytes"),
                    self.memory_bytes.to_string(),
                ),
                (
                    dir("memory").join("memory.memsw.limit_in_bytes"),
                    self.memory_bytes.to_string(),
                ),
                (dir("pids").join("pids.max"), self.pids.to_string()),
            ],
            CgroupLayout::V2 => {
                let d = root.join(self.parent.trim_start_matches('/'));
                vec![
                    (
                        d.join("cgroup.subtree_control"),
                        "+cpu +memory +pids".to_string(),
                    ),
                    (d.join("cpu.max"), format!("{quota} {CPU_PERIOD_US}")),
                    (d.join("memory.max"), self.memory_bytes.to_string()),
                    (d.join("memory.swap.max"), "0".to_string()),
                    (d.join("pids.max"), self.pids.to_string()),
                ]
            }
            CgroupLayout::Systemd => Vec::new(),
        }
    }

    /// Creates the cgroup(s) and writes the limits; then reads them back.
    pub(crate) fn install(&self) -> Result<()> {
        let root = Path::new("/sys/fs/cgroup");
        if self.layout == CgroupLayout::Systemd {
            let quota = format!("CPUQuota={}%", (self.cpu_millis / 10).max(1));
            let mem = format!("MemoryMax={}", self.memory_bytes);
            let tasks = format!("TasksMax={}", self.pids);
            let out = Command::new("systemctl")
                .args([
                    "set-property",
                    "--runtime",
                    &self.parent,
                    &quota,
                    &mem,
                    &tasks,
                ])
                .output()
                .map_err(|e| Error::Runtime(format!("cannot run systemctl: {e}")))?;
            if !out.status.success() {
                return Err(Error::Runtime(format!(
                    "systemctl set-property {}: {}",
                    self.parent,
                    String::from_utf8_lossy(&out.stderr).trim()
                )));
            }
            return Ok(());
        }
        for (path, value) in self.files(root) {
            if let Some(dir) = path.parent() {
                std::fs::create_dir_all(dir)
                    .map_err(|e| Error::Runtime(format!("mkdir {}: {e}", dir.display())))?;
            }
            let optional =
                path.ends_with("memory.memsw.limit_in_bytes") || path.ends_with("memory.swap.max");
            match write(&path, &value) {
                Ok(()) => {}
                Err(_) if optional && !path.exists() => {} // swap not accounted here
                Err(e) => {
                    // memory.limit_in_bytes above memsw is refused: raise memsw first.
                    let memsw = path.with_file_name("memory.memsw.limit_in_bytes");
                    if path.ends_with("memory.limit_in_bytes") && memsw.exists() {
                        write(&memsw, &value)?;
                        write(&path, &value)?;
                    } else {
                        return Err(e);
                    }
                }
            }
        }
        self.verify()
    }

    /// Reads the limits back (memory rounds down to a page).
    pub(crate) fn verify(&self) -> Result<()> {
        for (path, want) in self.files(Path::new("/sys/fs/cgroup")) {
            if path.ends_with("cgroup.subtree_control") {
                let have = std::fs::read_to_string(&path).unwrap_or_default();
                for c in ["cpu", "memory", "pids"] {
                    if !have.split_whitespace().any(|x| x == c) {
                        return Err(Error::Runtime(format!(
                            "{}: controller {c} not enabled",
                            path.display()
                        )));
                    }
                }
                continue;
            }
            let Ok(have) = std::fs::read_to_string(&path) else {
                if path.ends_with("memory.memsw.limit_in_bytes")
                    || path.ends_with("memory.swap.max")
                {
                    continue;
                }
                return Err(Error::Runtime(format!("cannot read {}", path.display())));
            };
            let (have, want) = (have.trim(), want.trim());
            let close = match (have.parse::<i64>(), want.parse::<i64>()) {
                (Ok(h), Ok(w)) => h <= w && w - h < 4096,
                _ => have == want,
            };
            if !close {
                return Err(Error::Runtime(format!(
                    "{} is {have}, expected {want}",
                    path.display()
                )));
            }
        }
        Ok(())
    }

    /// Removes the cgroup(s); they must be empty (no container left).
    pub(crate) fn remove(&self) {
        let root = Path::new("/sys/fs/cgroup");
        let mut dirs: Vec<PathBuf> = self
            .files(root)
            .into_iter()
            .filter_map(|(p, _)| p.parent().map(Path::to_path_buf))
            .collect();
        dirs.dedup();
        for d in dirs {
            if let Err(e) = std::fs::remove_dir(&d)
                && e.kind() != std::io::ErrorKind::NotFound
            {
                tracing::warn!(dir = %d.display(), error = %e, "cannot remove the ceiling cgroup");
            }
        }
    }
}

fn write(path: &Path, value: &str) -> Result<()> {
    std::fs::write(path, value)
        .map_err(|e| Error::Runtime(format!("writing {value} to {}: {e}", path.display())))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn layouts_and_files() {
        assert_eq!(CgroupLayout::of("cgroupfs", "1").unwrap(), CgroupLayout::V1);
        assert_eq!(CgroupLayout::of("cgroupfs", "2").unwrap(), CgroupLayout::V2);
        assert_eq!(
            CgroupLayout::of("systemd", "2").unwrap(),
            CgroupLayout::Systemd
        );
        assert!(CgroupLayout::of("none", "1").is_err());
        let c = Ceiling::new(CgroupLayout::V1, "edge-a.b", 1500, 256 << 20, 4);
        assert_eq!(c.parent, "/decloud-edge_a_b");
        let files = c.files(Path::new("/sys/fs/cgroup"));
        let get = |name: &str| {
            files
                .iter()
                .find(|(p, _)| p.ends_with(name))
                .map(|(p, v)| (p.display().to_string(), v.clone()))
                .unwrap()
        };
        assert_eq!(
            get("cpu.cfs_quota_us"),
            (
                "/sys/fs/cgroup/cpu/decloud-edge_a_b/cpu.cfs_quota_us".into(),
                "150000".into()
            )
        );
        assert_eq!(get("memory.limit_in_bytes").1, (256u64 << 20).to_string());
        assert_eq!(get("pids.max").1, "4096");
        let v2 = Ceiling::new(CgroupLayout::V2, "edge-a", 500, 1 << 30, 1);
        let files = v2.files(Path::new("/sys/fs/cgroup"));
        assert_eq!(
            files[0].0,
            Path::new("/sys/fs/cgroup/decloud-edge_a/cgroup.subtree_control")
        );
        assert!(
            files
                .iter()
                .any(|(p, v)| p.ends_with("cpu.max") && v == "50000 100000")
        );
        let sd = Ceiling::new(CgroupLayout::Systemd, "edge-a", 500, 1 << 30, 1);
        assert_eq!(sd.parent, "decloud-edge_a.slice");
        assert!(sd.files(Path::new("/")).is_empty());
    }
}
