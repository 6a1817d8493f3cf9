//! The files of a pod's `configMap` and `secret` volumes, on a tmpfs of the edge's own.
//!
//! Layout (under `--config-dir`, which must be a tmpfs so nothing reaches a disk):
//! `<dir>/<pod uid>/volumes/<volume>/` is bind-mounted read-only into the containers; inside
//! it, as kubelet's atomic writer does, the payload lives in a timestamped folder
//! (`..2026_12_02_03_50_01.123456789`), `..data` is a symlink to it and each top-level entry
//! is a symlink through `..data`. An update writes a new folder and renames a new `..data`
//! over the old one, so a running container sees the old or the new set, never half of each.
//! `subPath` mounts are copies made when the container is created
//! (`<dir>/<pod uid>/subpath/<container>/<n>`), so they do not follow updates (as in kubelet).
//! Everything of a pod is removed when the pod goes; nothing here is ever logged.

use std::collections::BTreeSet;
use std::io::Write;
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};

use decloud_proto as pb;

/// `..data`: the symlink to the current payload.
const DATA: &str = "..data";
const DATA_TMP: &str = "..data_tmp";

/// Why `path` is not a safe relative path inside a volume (checked again here: the operator
/// already refuses such paths at admission).
pub(crate) fn path_problem(path: &str) -> Option<&'static str> {
    if path.is_empty() {
        Some("is empty")
    } else if path.len() > pb::MAX_VOLUME_PATH {
        Some("is too long")
    } else if path.starts_with('/') {
        Some("is absolute")
    } else if path.contains('\0') {
        Some("contains NUL")
    } else if path
        .split('/')
        .any(|p| p.is_empty() || p == "." || p.starts_with(".."))
    {
        Some("has an empty, '.' or '..' part")
    } else {
        None
    }
}

/// Whether `name` may name a folder (a volume's or a container's name: a DNS label).
pub(crate) fn name_ok(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 63
        && name
            .chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-')
}

/// Whether `dir` lies on a tmpfs (or ramfs), judged from `/proc/self/mountinfo`.
pub(crate) fn on_tmpfs(dir: &Path) -> bool {
    let Ok(dir) = dir.canonicalize() else {
        return false;
    };
    let Ok(info) = std::fs::read_to_string("/proc/self/mountinfo") else {
        return false;
    };
    let mut best: Option<(usize, bool)> = None;
    for line in info.lines() {
        let mut parts = line.split(" - ");
        let (Some(left), Some(right)) = (parts.next(), parts.next()) else {
            continue;
        };
        let Some(mount_point) = left.split(' ').nth(4) else {
            continue;
        };
        let fstype = right.split(' ').next().unwrap_or_default();
        let mount_point = mount_point.replace("\\040", " ");
        if dir.starts_with(&mount_point) {
            let len = mount_point.len();
            if best.is_none_or(|(l, _)| len >= l) {
                best = Some((len, fstype == "tmpfs" || fstype == "ramfs"));
            }
        }
    }
    best.is_some_and(|(_, tmpfs)| tmpfs)
}

/// Creates `dir` (0700) and checks it is on a tmpfs: `Some(dir)` when pods' config volumes
/// may be written there, `None` (with a warning) otherwise.
pub(crate) fn prepare_config_dir(dir: &Path) -> Option<PathBuf> {
    if let Err(e) = mkdir(dir, 0o700) {
        tracing::warn!(dir = %dir.display(), error = %e, "cannot create the config folder; configMap and secret volumes are off");
        return None;
    }
    if !on_tmpfs(dir) {
        tracing::warn!(dir = %dir.display(), "the config folder is not on a tmpfs; configMap and secret volumes are off (Secrets must never reach a disk)");
        return None;
    }
    tracing::info!(dir = %dir.display(), "configMap and secret volumes on tmpfs");
    Some(dir.to_path_buf())
}

/// Where one pod's files live.
#[derive(Debug, Clone)]
pub(crate) struct PodFiles {
    dir: PathBuf,
}

fn mkdir(path: &Path, mode: u32) -> std::io::Result<()> {
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(mode)
        .create(path)?;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode))
}

impl PodFiles {
    /// The files of pod `uid` under `root`.
    pub(crate) fn new(root: &Path, uid: &str) -> Self {
        PodFiles {
            dir: root.join(uid.replace(['/', '.'], "_")),
        }
    }

    /// The folder bind-mounted for volume `name`.
    pub(crate) fn volume_dir(&self, name: &str) -> PathBuf {
        self.dir.join("volumes").join(name)
    }

    /// Writes volume `name`'s files atomically (a new payload, then `..data` swapped).
    pub(crate) fn write_volume(&self, name: &str, files: &[pb::VolumeFile]) -> Result<(), String> {
        if !name_ok(name) {
            return Err(format!("volume name {name:?} is not a DNS label"));
        }
        for f in files {
            if let Some(p) = path_problem(&f.path) {
                return Err(format!("volume {name:?}: path {:?} {p}", f.path));
            }
            if f.mode > 0o777 {
                return Err(format!(
                    "volume {name:?}: mode {:o} is not within 0..=0777",
                    f.mode
                ));
            }
        }
        let io = |what: &str, e: std::io::Error| format!("volume {name:?}: {what}: {e}");
        let vol = self.volume_dir(name);
        mkdir(&self.dir, 0o700).map_err(|e| io("creating the pod's folder", e))?;
        mkdir(&vol, 0o755).map_err(|e| io("creating the volume's folder", e))?;
        let stamp = format!(
            "..{}_{:08x}",
            jiff::Timestamp::now().strftime("%Y_%m_%d_%H_%M_%S.%f"),
            rand::random::<u32>()
        );
        let payload = vol.join(&stamp);
        mkdir(&payload, 0o755).map_err(|e| io("creating the payload", e))?;
        let mut top = BTreeSet::new();
        for f in files {
            let target = payload.join(&f.path);
            if let Some(parent) = target.parent() {
                mkdir(parent, 0o755).map_err(|e| io("creating a folder", e))?;
            }
            let mut out = std::fs::OpenOptions::new()
                .write(true)
                .create_new(true)
                .mode(f.mode)
                .open(&target)
                .map_err(|e| io("writing a file", e))?;
            out.write_all(&f.data)
                .map_err(|e| io("writing a file", e))?;
            std::fs::set_permissions(&target, std::fs::Permissions::from_mode(f.mode))
                .map_err(|e| io("setting a file's mode", e))?;
            if let Some(first) = f.path.split('/').next() {
                top.insert(first.to_string());
            }
        }
        let old = std::fs::read_link(vol.join(DATA)).ok();
        let tmp = vol.join(DATA_TMP);
        let _ = std::fs::remove_file(&tmp);
        std::os::unix::fs::symlink(&stamp, &tmp).map_err(|e| io("linking the payload", e))?;
        std::fs::rename(&tmp, vol.join(DATA)).map_err(|e| io("swapping the payload", e))?;
        // Top-level names point through ..data; stale ones go.
        for name in &top {
            let link = vol.join(name);
            if std::fs::symlink_metadata(&link).is_err() {
                std::os::unix::fs::symlink(format!("{DATA}/{name}"), &link)
                    .map_err(|e| io("linking a file", e))?;
            }
        }
        if let Ok(entries) = std::fs::read_dir(&vol) {
            for entry in entries.flatten() {
                let n = entry.file_name().to_string_lossy().into_owned();
                if !n.starts_with("..") && !top.contains(&n) {
                    let _ = std::fs::remove_file(entry.path());
                }
            }
        }
        if let Some(old) = old
            && old != Path::new(&stamp)
        {
            let _ = std::fs::remove_dir_all(vol.join(old));
        }
        Ok(())
    }

    /// A copy of `sub_path` of volume `volume` for mount `index` of `container` (a fresh one
    /// per container instance); its path, to bind-mount.
    pub(crate) fn sub_path_copy(
        &self,
        volume: &str,
        sub_path: &str,
        container: &str,
        index: usize,
    ) -> Result<PathBuf, String> {
        if let Some(p) = path_problem(sub_path) {
            return Err(format!("subPath {sub_path:?} {p}"));
        }
        if !name_ok(volume) || !name_ok(container) {
            return Err("volume and container names must be DNS labels".into());
        }
        let data = self.volume_dir(volume).join(DATA);
        let source = data.join(sub_path);
        let real = source
            .canonicalize()
            .map_err(|_| format!("subPath {sub_path:?} does not exist in volume {volume:?}"))?;
        let base = data
            .canonicalize()
            .map_err(|e| format!("volume {volume:?}: {e}"))?;
        if !real.starts_with(&base) {
            return Err(format!("subPath {sub_path:?} leaves volume {volume:?}"));
        }
        let dest = self
            .dir
            .join("subpath")
            .join(container)
            .join(index.to_string());
        let _ = std::fs::remove_dir_all(&dest);
        let _ = std::fs::remove_file(&dest);
        if let Some(parent) = dest.parent() {
            mkdir(parent, 0o700).map_err(|e| format!("subPath {sub_path:?}: {e}"))?;
        }
        copy_tree(&real, &dest).map_err(|e| format!("subPath {sub_path:?}: {e}"))?;
        Ok(dest)
    }

    /// Pod `emptyDir` `name` with `medium: Memory`: a folder on the edge's tmpfs (its pages
    /// are charged to the memory of the container that writes them), made world-writable as
    /// kubelet makes emptyDirs.
    pub(crate) fn memory_dir(&self, name: &str) -> Result<PathBuf, String> {
        empty_dir_at(&self.dir.join("empty"), name)
    }

    /// Removes everything of the pod.
    pub(crate) fn remove(&self) {
        if let Err(e) = std::fs::remove_dir_all(&self.dir)
            && e.kind() != std::io::ErrorKind::NotFound
        {
            tracing::warn!(dir = %self.dir.display(), error = %e, "cannot remove a pod's config files");
        }
    }
}

/// Folder `name` under `base` (0777, created), for an emptyDir.
pub(crate) fn empty_dir_at(base: &Path, name: &str) -> Result<PathBuf, String> {
    if !name_ok(name) {
        return Err(format!("volume name {name:?} is not a DNS label"));
    }
    let dir = base.join(name);
    if let Some(parent) = dir.parent() {
        mkdir(parent, 0o711).map_err(|e| format!("emptyDir {name:?}: {e}"))?;
    }
    mkdir(&dir, 0o777).map_err(|e| format!("emptyDir {name:?}: {e}"))?;
    Ok(dir)
}

/// `sub_path` inside emptyDir folder `dir` (created, as kubelet does), refusing escapes.
pub(crate) fn empty_sub_path(dir: &Path, sub_path: &str) -> Result<PathBuf, String> {
    if let Some(p) = path_problem(sub_path) {
        return Err(format!("subPath {sub_path:?} {p}"));
    }
    let target = dir.join(sub_path);
    if std::fs::symlink_metadata(&target).is_err() {
        mkdir(&target, 0o777).map_err(|e| format!("subPath {sub_path:?}: {e}"))?;
    }
    // The container may have put symlinks there: the real path must stay inside.
    let real = target
        .canonicalize()
        .map_err(|e| format!("subPath {sub_path:?}: {e}"))?;
    let base = dir.canonicalize().map_err(|e| format!("emptyDir: {e}"))?;
    if !real.starts_with(&base) {
        return Err(format!("subPath {sub_path:?} leaves its volume"));
    }
    Ok(real)
}

/// Most entries one measurement of a folder visits; a folder with more counts as full.
const MAX_MEASURED_ENTRIES: usize = 200_000;

/// Bytes `dir` holds on its filesystem (allocated blocks, symlinks not followed), as kubelet's
/// `du`-like measurement; `None` when it holds more entries than a measurement visits.
pub(crate) fn dir_usage(dir: &Path) -> Option<u64> {
    use std::os::unix::fs::MetadataExt;
    let mut total = 0u64;
    let mut seen = 0usize;
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        let Ok(entries) = std::fs::read_dir(&d) else {
            continue;
        };
        for e in entries.flatten() {
            seen += 1;
            if seen > MAX_MEASURED_ENTRIES {
                return None;
            }
            let Ok(meta) = std::fs::symlink_metadata(e.path()) else {
                continue;
            };
            total = total.saturating_add(meta.blocks().saturating_mul(512));
            if meta.is_dir() {
                stack.push(e.path());
            }
        }
    }
    Some(total)
}

fn copy_tree(from: &Path, to: &Path) -> std::io::Result<()> {
    let meta = std::fs::metadata(from)?;
    if meta.is_dir() {
        mkdir(to, meta.permissions().mode() & 0o777)?;
        for entry in std::fs::read_dir(from)? {
            let entry = entry?;
            copy_tree(&entry.path(), &to.join(entry.file_name()))?;
        }
    } else {
        std::fs::copy(from, to)?;
        std::fs::set_permissions(
            to,
            std::fs::Permissions::from_mode(meta.permissions().mode() & 0o777),
        )?;
    }
    Ok(())
}

/// Removes the folders of pods not in `keep` (at start: what a crash left).
pub(crate) fn sweep(root: &Path, keep: &[String]) {
    let Ok(entries) = std::fs::read_dir(root) else {
        return;
    };
    let keep: BTreeSet<String> = keep.iter().map(|u| u.replace(['/', '.'], "_")).collect();
    for entry in entries.flatten() {
        let name = entry.file_name().to_string_lossy().into_owned();
        if !keep.contains(&name) {
            let _ = std::fs::remove_dir_all(entry.path());
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn file(path: &str, data: &str, mode: u32) -> pb::VolumeFile {
        pb::VolumeFile {
            path: path.into(),
            data: data.as_bytes().to_vec(),
            mode,
        }
    }

    #[test]
    fn atomic_swap_and_stale_names() {
        let root = tempfile::tempdir().unwrap();
        let pod = PodFiles::new(root.path(), "uid-1");
        pod.write_volume("cfg", &[file("a", "1", 0o644), file("d/b", "2", 0o400)])
            .unwrap();
        let vol = pod.volume_dir("cfg");
        assert_eq!(std::fs::read_to_string(vol.join("a")).unwrap(), "1");
        assert_eq!(std::fs::read_to_string(vol.join("d/b")).unwrap(), "2");
        let mode = std::fs::metadata(vol.join("d/b"))
            .unwrap()
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o400);
        let copy = pod.sub_path_copy("cfg", "a", "c", 0).unwrap();
        pod.write_volume("cfg", &[file("a", "changed", 0o644)])
            .unwrap();
        assert_eq!(std::fs::read_to_string(vol.join("a")).unwrap(), "changed");
        assert!(
            std::fs::symlink_metadata(vol.join("d")).is_err(),
            "stale name left"
        );
        // One payload folder only.
        let payloads = std::fs::read_dir(&vol)
            .unwrap()
            .flatten()
            .filter(|e| {
                let n = e.file_name().to_string_lossy().into_owned();
                n.starts_with("..") && n != DATA
            })
            .count();
        assert_eq!(payloads, 1);
        // subPath copies do not follow updates.
        assert_eq!(std::fs::read_to_string(copy).unwrap(), "1");
        pod.remove();
        assert!(!root.path().join("uid-1").exists());
    }

    #[test]
    fn hostile_paths_are_refused() {
        let root = tempfile::tempdir().unwrap();
        let pod = PodFiles::new(root.path(), "uid-1");
        for bad in [
            "../x",
            "/etc/passwd",
            "a/../../x",
            "..data/x",
            "a//b",
            "./a",
            "",
        ] {
            assert!(
                pod.write_volume("cfg", &[file(bad, "x", 0o644)]).is_err(),
                "{bad:?} accepted"
            );
        }
        assert!(pod.write_volume("../up", &[]).is_err());
        assert!(pod.write_volume("cfg", &[file("a", "x", 0o7777)]).is_err());
        pod.write_volume("cfg", &[file("a", "x", 0o644)]).unwrap();
        assert!(pod.sub_path_copy("cfg", "../../..", "c", 0).is_err());
        assert!(pod.sub_path_copy("cfg", "missing", "c", 0).is_err());
        assert!(!root.path().join("x").exists());
    }

    #[test]
    fn tmpfs_is_recognised() {
        if Path::new("/dev/shm").exists() {
            assert!(on_tmpfs(Path::new("/dev/shm")));
        }
        assert!(!on_tmpfs(Path::new("/proc/self/definitely-missing")));
    }
}
