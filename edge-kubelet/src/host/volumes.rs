//! Persistent volumes with a hard size: one ext4 filesystem image per volume, loop-mounted on
//! the volunteer's machine and bind-mounted into the containers that use it.
//!
//! Why an image and not a folder: overlay2 on ext4 (the common volunteer setup) cannot cap a
//! folder, and quotas need a filesystem mounted with them. A filesystem of the volume's size is
//! a cap the kernel enforces: a write past it fails with `ENOSPC` inside the container, and
//! nothing outside the image is touched. The image is sparse, so the disk holds only what was
//! written; the offer counts the whole size (the volume may fill).
//!
//! Layout under the store's root (the edge's state folder `persistent-volumes/`; not
//! `volumes/`, which holds the pods' disk emptyDirs and is swept of unknown folders at start):
//! ```text
//! <id>/disk.img   the filesystem image (sparse, mode 0600)
//! <id>/mnt/       where it is mounted (nosuid, nodev, noexec off: containers run programs)
//! ```
//! Mounts do not survive a reboot of the machine; [`VolumeStore::ensure`] mounts again what it
//! finds. Data survives container crashes and edge restarts (the image stays on disk).

use std::{
    fs,
    os::unix::fs::{OpenOptionsExt, PermissionsExt},
    path::{Path, PathBuf},
    process::Command,
    sync::Arc,
};

use parking_lot::Mutex;

use crate::error::{Error, Result};

/// The smallest and largest volume, as the protocol bounds them.
pub use decloud_proto::{MAX_VOLUME_BYTES, MIN_VOLUME_BYTES};
/// Volumes this large or larger get 4 KiB filesystem blocks and loop-device sectors.
const FOUR_K_BLOCKS_FROM: u64 = 64 << 20;
/// The store's folder in the edge's state folder.
pub const PERSISTENT_VOLUMES_DIR: &str = "persistent-volumes";
/// Readahead of a volume's loop device, in 512-byte sectors (2 MiB).
const READAHEAD_SECTORS: &str = "4096";
/// The longest volume id (it names a folder).
const MAX_ID_LEN: usize = 200;

/// The volumes of one edge. Clones share one lock: ensure, unmount and delete of the store's
/// volumes run one at a time (two containers ensuring one volume must not attach it twice).
#[derive(Debug, Clone)]
pub struct VolumeStore {
    root: PathBuf,
    lock: Arc<Mutex<()>>,
}

/// One volume as the store finds it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Volume {
    /// Its id (folder name).
    pub id: String,
    /// Its size in bytes (the filesystem image's length).
    pub size_bytes: u64,
    /// Where it is mounted, when it is.
    pub mounted_at: Option<PathBuf>,
}

impl VolumeStore {
    /// The store under `root` (created on first use, mode 0700).
    pub fn new(root: impl Into<PathBuf>) -> Self {
        Self {
            root: root.into(),
            lock: Arc::default(),
        }
    }

    /// Its root folder.
    pub fn root(&self) -> &Path {
        &self.root
    }

    /// Creates its root folder (mode 0700) if it does not exist yet.
    pub fn create_root(&self) -> Result<()> {
        if let Some(parent) = self.root.parent() {
            fs::create_dir_all(parent).map_err(|e| io_error(parent, e))?;
        }
        create_private_dir(&self.root)
    }

    /// Makes volume `id` exist with `size_bytes`, formatted and mounted; returns its mount
    /// point. Idempotent: an existing volume keeps its data (and is mounted again if it is not,
    /// on the loop device it still has if a container holds one); a larger size grows it, only
    /// while it is neither mounted nor attached (so no container may be using it); a smaller
    /// one is refused (shrinking loses data). Blocking (it runs mkfs, losetup, mount).
    pub fn ensure(&self, id: &str, size_bytes: u64) -> Result<PathBuf> {
        check_id(id)?;
        let _one_at_a_time = self.lock.lock();
        if !(MIN_VOLUME_BYTES..=MAX_VOLUME_BYTES).contains(&size_bytes) {
            return Err(Error::InvalidInput(format!(
                "volume {id}: size {size_bytes} bytes is outside {MIN_VOLUME_BYTES}..={MAX_VOLUME_BYTES}"
            )));
        }
        let dir = self.root.join(id);
        let image = dir.join("disk.img");
        let mnt = dir.join("mnt");
        create_private_dir(&self.root)?;
        create_private_dir(&dir)?;
        fs::create_dir_all(&mnt).map_err(|e| io_error(&mnt, e))?;
        let existing = fs::metadata(&image).ok().map(|m| m.len());
        let fresh = existing.is_none();
        match existing {
            None => {
                let file = fs::OpenOptions::new()
                    .write(true)
                    .create_new(true)
                    .mode(0o600)
                    .open(&image)
                    .map_err(|e| io_error(&image, e))?;
                file.set_len(size_bytes).map_err(|e| io_error(&image, e))?;
                drop(file);
                // -m 0: no blocks reserved for root (the tenant gets the whole size). From
                // 64 MiB on, 4 KiB blocks (mke2fs picks 1 KiB below 512 MiB), so the loop
                // device can take 4 KiB sectors; below, the 4 MiB journal 4 KiB blocks need
                // would take too much of the volume.
                let mut args = vec!["-q", "-F", "-m", "0"];
                if size_bytes >= FOUR_K_BLOCKS_FROM {
                    args.extend(["-b", "4096"]);
                }
                args.push(path_str(&image)?);
                if let Err(e) = run("mkfs.ext4", &args) {
                    let _ = fs::remove_file(&image);
                    return Err(e);
                }
            }
            Some(len) if len > size_bytes => {
                return Err(Error::InvalidInput(format!(
                    "volume {id} holds {len} bytes; it cannot shrink to {size_bytes} (data would be lost)"
                )));
            }
            Some(_) => {}
        }
        if existing.is_some_and(|len| len < size_bytes) {
            // Grown offline (online resize needs more privilege than a container host may
            // give): only while nothing has it mounted or attached. A container may hold it
            // through its own mount even when the machine's is gone, and fsck of a filesystem
            // in use corrupts it, so an attached volume is never grown.
            if is_mountpoint(&mnt)? || !loop_devices_of(&image)?.is_empty() {
                return Err(Error::InvalidInput(format!(
                    "volume {id} holds {} bytes and is in use; it grows to {size_bytes} once no container mounts it",
                    existing.unwrap_or_default()
                )));
            }
            grow(&image, size_bytes)?;
        }
        if !is_mountpoint(&mnt)? {
            // A loop device left attached (a container still holds the filesystem, or the
            // machine's mount was undone) is mounted again: attaching a second one would make
            // two filesystems of one image, and that corrupts it.
            let attached = loop_devices_of(&image)?.into_iter().next();
            let (device, attached_now) = match attached {
                Some(device) => (device, false),
                None => {
                    // Direct I/O on the loop device: one page cache (the volume's), not two;
                    // 4 KiB sectors, the filesystem's block (fewer, larger requests to the
                    // image; a volume made with smaller blocks before keeps 512-byte ones);
                    // and a readahead like a disk's, or cold sequential reads crawl.
                    let mut args = vec!["--find", "--show", "--direct-io=on"];
                    if block_size(&image)? >= 4096 {
                        args.extend(["--sector-size", "4096"]);
                    }
                    args.push(path_str(&image)?);
                    let device = run("losetup", &args)?.trim().to_string();
                    let _ = run("blockdev", &["--setra", READAHEAD_SECTORS, &device]);
                    (device, true)
                }
            };
            if let Err(e) = run(
                "mount",
                &["-t", "ext4", "-o", "nosuid,nodev", &device, path_str(&mnt)?],
            ) {
                if attached_now {
                    let _ = run("losetup", &["-d", &device]);
                }
                return Err(e);
            }
        }
        if fresh {
            // Like an emptyDir: writable by whatever user the container runs as (with
            // userns-remap, even its root is not the filesystem's owner).
            fs::set_permissions(&mnt, fs::Permissions::from_mode(0o777))
                .map_err(|e| io_error(&mnt, e))?;
        }
        Ok(mnt)
    }

    /// Unmounts volume `id` (its data stays). Nothing to do when it is not mounted.
    pub fn unmount(&self, id: &str) -> Result<()> {
        check_id(id)?;
        let _one_at_a_time = self.lock.lock();
        self.unmount_locked(id)
    }

    fn unmount_locked(&self, id: &str) -> Result<()> {
        let mnt = self.root.join(id).join("mnt");
        if mnt.exists() && is_mountpoint(&mnt)? {
            run("umount", &[path_str(&mnt)?])?;
        }
        // Its loop devices (one, unless an earlier detach failed).
        let image = self.root.join(id).join("disk.img");
        if image.exists() {
            for device in loop_devices_of(&image)? {
                run("losetup", &["-d", &device])?;
            }
        }
        Ok(())
    }

    /// Unmounts and deletes volume `id` and its data. Nothing to do when it does not exist.
    pub fn delete(&self, id: &str) -> Result<()> {
        check_id(id)?;
        let _one_at_a_time = self.lock.lock();
        self.unmount_locked(id)?;
        let dir = self.root.join(id);
        match fs::remove_dir_all(&dir) {
            Ok(()) => Ok(()),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
            Err(e) => Err(io_error(&dir, e)),
        }
    }

    /// The volumes on disk, by id.
    pub fn list(&self) -> Result<Vec<Volume>> {
        let entries = match fs::read_dir(&self.root) {
            Ok(entries) => entries,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
            Err(e) => return Err(io_error(&self.root, e)),
        };
        let mut out = Vec::new();
        for entry in entries.flatten() {
            let id = entry.file_name().to_string_lossy().into_owned();
            let Ok(meta) = fs::metadata(entry.path().join("disk.img")) else {
                continue;
            };
            let mnt = entry.path().join("mnt");
            let mounted_at = is_mountpoint(&mnt).unwrap_or(false).then_some(mnt);
            out.push(Volume {
                id,
                size_bytes: meta.len(),
                mounted_at,
            });
        }
        out.sort_by(|a, b| a.id.cmp(&b.id));
        Ok(out)
    }
}

/// A volume id names a folder: DNS-label characters and dots only, no `..`, bounded.
fn check_id(id: &str) -> Result<()> {
    let ok = !id.is_empty()
        && id.len() <= MAX_ID_LEN
        && !id.starts_with('.')
        && !id.contains("..")
        && id
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-' || b == b'.');
    if ok {
        Ok(())
    } else {
        Err(Error::InvalidInput(format!(
            "volume id {id:?}: expected 1..={MAX_ID_LEN} of [a-z0-9.-], not starting with a dot, without \"..\""
        )))
    }
}

/// Whether `path` is a mount point (an entry of /proc/self/mountinfo).
fn is_mountpoint(path: &Path) -> Result<bool> {
    let canonical = match fs::canonicalize(path) {
        Ok(p) => p,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(false),
        Err(e) => return Err(io_error(path, e)),
    };
    let info = fs::read_to_string("/proc/self/mountinfo")
        .map_err(|e| Error::Runtime(format!("reading /proc/self/mountinfo: {e}")))?;
    let wanted = canonical.to_string_lossy();
    // Field 5 is the mount point, with spaces and the like escaped as octal.
    Ok(info
        .lines()
        .filter_map(|l| l.split(' ').nth(4))
        .any(|m| unescape_mountinfo(m) == wanted))
}

fn unescape_mountinfo(field: &str) -> String {
    let mut out = String::with_capacity(field.len());
    let mut rest = field;
    while let Some(i) = rest.find('\\') {
        out.push_str(&rest[..i]);
        let code = rest
            .get(i + 1..i + 4)
            .and_then(|o| u8::from_str_radix(o, 8).ok());
        match code {
            Some(c) => {
                out.push(char::from(c));
                rest = &rest[i + 4..];
            }
            None => {
                out.push('\\');
                rest = &rest[i + 1..];
            }
        }
    }
    out.push_str(rest);
    out
}

/// The block size of the ext4 filesystem in `image`, from its superblock (1 KiB in; the
/// block size is `1024 << s_log_block_size`, the magic `0xEF53` at offset 56).
fn block_size(image: &Path) -> Result<u32> {
    use std::io::{Read, Seek, SeekFrom};
    let mut sb = [0u8; 64];
    let mut f = fs::File::open(image).map_err(|e| io_error(image, e))?;
    f.seek(SeekFrom::Start(1024))
        .and_then(|_| f.read_exact(&mut sb))
        .map_err(|e| io_error(image, e))?;
    let magic = u16::from_le_bytes([sb[56], sb[57]]);
    let log = u32::from_le_bytes([sb[24], sb[25], sb[26], sb[27]]);
    if magic != 0xEF53 || log > 6 {
        return Err(Error::InvalidInput(format!(
            "{}: not an ext4 filesystem image",
            image.display()
        )));
    }
    Ok(1024 << log)
}

/// The loop devices backing `image` (`losetup -j`).
fn loop_devices_of(image: &Path) -> Result<Vec<String>> {
    let out = run("losetup", &["-j", path_str(image)?])?;
    Ok(out
        .lines()
        .filter_map(|l| l.split(':').next())
        .filter(|d| d.starts_with("/dev/loop"))
        .map(str::to_string)
        .collect())
}

/// Grows an unmounted volume's image and filesystem to `size_bytes`.
fn grow(image: &Path, size_bytes: u64) -> Result<()> {
    let file = fs::OpenOptions::new()
        .write(true)
        .open(image)
        .map_err(|e| io_error(image, e))?;
    file.set_len(size_bytes).map_err(|e| io_error(image, e))?;
    drop(file);
    let image = path_str(image)?;
    // resize2fs insists on a freshly checked filesystem.
    run("e2fsck", &["-f", "-p", image])?;
    run("resize2fs", &[image]).map(|_| ())
}

fn create_private_dir(dir: &Path) -> Result<()> {
    use std::os::unix::fs::DirBuilderExt;
    match fs::DirBuilder::new().mode(0o700).create(dir) {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => Ok(()),
        Err(e) => Err(io_error(dir, e)),
    }
}

fn path_str(path: &Path) -> Result<&str> {
    path.to_str()
        .ok_or_else(|| Error::InvalidInput(format!("{} is not UTF-8", path.display())))
}

fn io_error(path: &Path, e: std::io::Error) -> Error {
    Error::Runtime(format!("{}: {e}", path.display()))
}

/// Runs `tool args…`; stdout on success, the tool's stderr in the error otherwise.
fn run(tool: &str, args: &[&str]) -> Result<String> {
    let out = Command::new(tool)
        .args(args)
        .stdin(std::process::Stdio::null())
        .output()
        .map_err(|e| Error::Runtime(format!("cannot run {tool}: {e}")))?;
    if !out.status.success() {
        return Err(Error::Runtime(format!(
            "{tool} {}: {}",
            args.join(" "),
            String::from_utf8_lossy(&out.stderr).trim()
        )));
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_that_could_leave_the_store_are_refused() {
        for bad in [
            "",
            "..",
            "../x",
            "a/b",
            ".hidden",
            "A",
            "a..b",
            &"a".repeat(201),
        ] {
            assert!(check_id(bad).is_err(), "{bad:?} must be refused");
        }
        for good in ["default.db.data-0", "x", "ns-1.wl.claim-12"] {
            assert!(check_id(good).is_ok(), "{good:?} is fine");
        }
    }

    #[test]
    fn sizes_out_of_bounds_are_refused_before_anything_is_written() {
        let dir = tempfile::tempdir().unwrap();
        let store = VolumeStore::new(dir.path().join("volumes"));
        for size in [0, MIN_VOLUME_BYTES - 1, MAX_VOLUME_BYTES + 1] {
            let err = store.ensure("v", size).unwrap_err().to_string();
            assert!(err.contains("outside"), "{err}");
        }
        assert!(!dir.path().join("volumes").exists());
    }

    /// Whether loop mounts can be tested (root); under CI a non-root run fails.
    fn can_mount() -> bool {
        let is_root = fs::read_to_string("/proc/self/status")
            .unwrap()
            .lines()
            .any(|l| l.starts_with("Uid:") && l.split_whitespace().nth(1) == Some("0"));
        if !is_root {
            assert!(
                std::env::var_os("CI").is_none(),
                "this test needs root (loop mounts) under CI"
            );
            eprintln!("skipped outside CI: not root");
        }
        is_root
    }

    /// The logical sector size of loop device `device` (`/dev/loopN`).
    fn sector_size(device: &str) -> String {
        let name = device.trim_start_matches("/dev/");
        fs::read_to_string(format!("/sys/block/{name}/queue/logical_block_size"))
            .unwrap()
            .trim()
            .to_string()
    }

    #[test]
    fn volumes_from_64_mib_get_4_kib_blocks_and_sectors() {
        if !can_mount() {
            return;
        }
        let dir = tempfile::tempdir().unwrap();
        let store = VolumeStore::new(dir.path().join("volumes"));
        struct Delete<'a>(&'a VolumeStore);
        impl Drop for Delete<'_> {
            fn drop(&mut self) {
                let _ = self.0.delete("small");
                let _ = self.0.delete("large");
            }
        }
        let _delete = Delete(&store);
        for (id, size, block, sector) in [
            ("small", 16u64 << 20, 1024, "512"),
            ("large", 64 << 20, 4096, "4096"),
        ] {
            store.ensure(id, size).unwrap();
            let image = store.root().join(id).join("disk.img");
            assert_eq!(block_size(&image).unwrap(), block, "{id}");
            let device = loop_devices_of(&image).unwrap().remove(0);
            assert_eq!(sector_size(&device), sector, "{id}");
        }
        let not_ext4 = dir.path().join("zeros");
        fs::write(&not_ext4, vec![0u8; 4096]).unwrap();
        assert!(block_size(&not_ext4).is_err());
    }

    /// A real loop-mounted volume (root and e2fsprogs needed; under CI their absence fails).
    #[test]
    fn a_volume_is_a_hard_cap_keeps_its_data_and_grows() {
        if !can_mount() {
            return;
        }
        let dir = tempfile::tempdir().unwrap();
        let store = VolumeStore::new(dir.path().join("volumes"));
        // A failed assertion must not leave a mount behind.
        struct Unmount<'a>(&'a VolumeStore);
        impl Drop for Unmount<'_> {
            fn drop(&mut self) {
                let _ = self.0.delete("t.data-0");
            }
        }
        let _unmount = Unmount(&store);
        let mnt = store.ensure("t.data-0", 32 << 20).unwrap();
        assert!(is_mountpoint(&mnt).unwrap());
        let mode = fs::metadata(&mnt).unwrap().permissions().mode() & 0o777;
        assert_eq!(
            mode, 0o777,
            "a fresh volume is writable by any container user"
        );
        // Its mount undone behind the store's back while the loop device stays attached (a
        // container holding it): ensure mounts that device again, it attaches no second one.
        run("umount", &[mnt.to_str().unwrap()]).unwrap();
        let image = store.root().join("t.data-0/disk.img");
        assert_eq!(loop_devices_of(&image).unwrap().len(), 1);
        let mnt = store.ensure("t.data-0", 32 << 20).unwrap();
        assert!(is_mountpoint(&mnt).unwrap());
        assert_eq!(
            loop_devices_of(&image).unwrap().len(),
            1,
            "one loop device per image"
        );
        // Fill it: the write past the size fails with ENOSPC, not at the disk's end.
        let mut file = fs::File::create(mnt.join("fill")).unwrap();
        let chunk = vec![7u8; 1 << 20];
        let mut written = 0u64;
        let err = loop {
            match std::io::Write::write_all(&mut file, &chunk).and_then(|()| file.sync_data()) {
                Ok(()) => written += chunk.len() as u64,
                Err(e) => break e,
            }
            assert!(
                written <= 64 << 20,
                "wrote {written} bytes into a 32 MiB volume"
            );
        };
        drop(file);
        assert_eq!(err.raw_os_error(), Some(28), "ENOSPC expected, got {err}");
        assert!(written >= 20 << 20, "only {written} bytes fit");
        fs::write(mnt.join("keep"), b"data").ok();
        // Edge restart: unmounted, then ensured again: the data is there.
        store.unmount("t.data-0").unwrap();
        assert!(!mnt.join("fill").exists());
        let mnt = store.ensure("t.data-0", 32 << 20).unwrap();
        assert!(mnt.join("fill").exists());
        // Shrinking is refused; growing is refused while mounted, and keeps the data once not.
        assert!(store.ensure("t.data-0", 16 << 20).is_err());
        let err = store.ensure("t.data-0", 48 << 20).unwrap_err().to_string();
        assert!(err.contains("in use"), "{err}");
        store.unmount("t.data-0").unwrap();
        let mnt = store.ensure("t.data-0", 48 << 20).unwrap();
        assert!(mnt.join("fill").exists());
        let listed = store.list().unwrap();
        assert_eq!(listed.len(), 1);
        assert_eq!(listed[0].size_bytes, 48 << 20);
        fs::remove_file(mnt.join("fill")).unwrap();
        store.delete("t.data-0").unwrap();
        assert!(store.list().unwrap().is_empty());
        assert!(!is_mountpoint(&mnt).unwrap());
    }

    #[test]
    fn mountinfo_escapes_are_undone() {
        assert_eq!(unescape_mountinfo(r"/a\040b/c"), "/a b/c");
        assert_eq!(unescape_mountinfo(r"/plain"), "/plain");
        assert_eq!(unescape_mountinfo(r"/odd\x"), r"/odd\x");
    }
}
