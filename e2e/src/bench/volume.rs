//! `volume`: file I/O on a DeCloud persistent volume (a loop-mounted ext4 image of its own size,
//! `edge_kubelet::VolumeStore`) against a plain Docker volume (a folder under the engine's data
//! root) on the same disk: sequential write (fsync'd at the end), sequential read from a cold
//! page cache, and small writes each followed by `fdatasync` (what a database's log does).
//!
//! The I/O runs in this process on the two folders a container would see bind-mounted: a bind
//! mount adds nothing to the path, so this isolates what the volume's own filesystem costs.
//! Needs root (loop mounts, dropping the page cache) and a Docker engine.

use std::{
    fs,
    io::{Read, Write},
    os::unix::fs::FileExt,
    path::{Path, PathBuf},
    process::Command,
    time::Instant,
};

use anyhow::{Context as _, bail};
use edge_kubelet::VolumeStore;
use serde_json::json;

use super::{
    harness::Opts,
    report::{Row, ScenarioReport},
};

const DOCKER_VOLUME: &str = "decloud-bench-volume";
const VOLUME_ID: &str = "bench.volume-0";

/// What one target measured (medians of the repeats).
#[derive(Debug, Clone, Copy)]
struct Figures {
    write_mib_s: f64,
    read_mib_s: f64,
    fsync_writes_s: f64,
}

/// Runs the scenario.
pub async fn run(opts: Opts) -> anyhow::Result<ScenarioReport> {
    let (mib, small_writes, repeats) = if opts.quick {
        (64u64, 200u32, 1)
    } else {
        (512, 2000, 3)
    };
    tokio::task::spawn_blocking(move || measure_all(mib, small_writes, repeats))
        .await
        .context("the volume benchmark panicked")?
}

fn measure_all(mib: u64, small_writes: u32, repeats: usize) -> anyhow::Result<ScenarioReport> {
    let scratch = tempfile::Builder::new()
        .prefix("decloud-bench-volume")
        .tempdir_in(data_dir()?)
        .context("a scratch folder next to Docker's data root")?;
    let store = VolumeStore::new(scratch.path().join("volumes"));
    let _cleanup = Cleanup(store.clone());
    // Room for the big file plus the small writes' files and ext4's metadata.
    let decloud = store.ensure(VOLUME_ID, (mib + 64) << 20)?;
    let plain = docker_volume()?;
    let mut runs: Vec<(Figures, Figures)> = Vec::new();
    for i in 0..repeats {
        // Alternate which goes first so neither always meets a warmer disk.
        let (a, b) = if i % 2 == 0 {
            let a = measure(&decloud, mib, small_writes)?;
            (a, measure(&plain, mib, small_writes)?)
        } else {
            let b = measure(&plain, mib, small_writes)?;
            (measure(&decloud, mib, small_writes)?, b)
        };
        runs.push((a, b));
    }
    let med = |f: fn(&(Figures, Figures)) -> f64| median(runs.iter().map(f).collect());
    let d = Figures {
        write_mib_s: med(|r| r.0.write_mib_s),
        read_mib_s: med(|r| r.0.read_mib_s),
        fsync_writes_s: med(|r| r.0.fsync_writes_s),
    };
    let p = Figures {
        write_mib_s: med(|r| r.1.write_mib_s),
        read_mib_s: med(|r| r.1.read_mib_s),
        fsync_writes_s: med(|r| r.1.fsync_writes_s),
    };
    let mut report = ScenarioReport::new("volume");
    for (what, dv, pv, unit) in [
        (
            "sequential write (fsync at end)",
            d.write_mib_s,
            p.write_mib_s,
            "MiB/s",
        ),
        (
            "sequential read, cold cache",
            d.read_mib_s,
            p.read_mib_s,
            "MiB/s",
        ),
        (
            "4 KiB writes, each fdatasync'd",
            d.fsync_writes_s,
            p.fsync_writes_s,
            "writes/s",
        ),
    ] {
        let ratio = dv / pv;
        report.row(
            Row::target(
                format!("{what}: DeCloud volume / Docker volume"),
                format!("{dv:.0} / {pv:.0} {unit} = {:.0} %", ratio * 100.0),
                "≥ 90 %",
                ratio >= 0.9,
            )
            .anchor("Docker volume: a folder on the engine's data-root filesystem"),
        );
    }
    report.note(format!(
        "{mib} MiB sequential, {small_writes} small writes, median of {repeats}; the DeCloud volume is a sparse ext4 image loop-mounted (edge_kubelet::VolumeStore), the Docker volume `docker volume create`"
    ));
    report.set(
        "decloud",
        json!({"write_mib_s": d.write_mib_s, "read_mib_s": d.read_mib_s, "fsync_writes_s": d.fsync_writes_s}),
    );
    report.set(
        "docker",
        json!({"write_mib_s": p.write_mib_s, "read_mib_s": p.read_mib_s, "fsync_writes_s": p.fsync_writes_s}),
    );
    Ok(report)
}

/// Removes the bench's volumes, whatever happened.
struct Cleanup(VolumeStore);

impl Drop for Cleanup {
    fn drop(&mut self) {
        if let Err(e) = self.0.delete(VOLUME_ID) {
            eprintln!("decloud-bench: cannot delete the bench volume: {e}");
        }
        let _ = docker(&["volume", "rm", "-f", DOCKER_VOLUME]);
    }
}

fn measure(dir: &Path, mib: u64, small_writes: u32) -> anyhow::Result<Figures> {
    let big = dir.join("sequential");
    let block = vec![0x5au8; 1 << 20];
    let started = Instant::now();
    let mut f = fs::File::create(&big).with_context(|| format!("creating {}", big.display()))?;
    for _ in 0..mib {
        f.write_all(&block)?;
    }
    f.sync_all()?;
    drop(f);
    let write_mib_s = mib as f64 / started.elapsed().as_secs_f64();

    drop_page_cache()?;
    let started = Instant::now();
    let mut f = fs::File::open(&big)?;
    let mut buf = vec![0u8; 1 << 20];
    let mut read = 0u64;
    loop {
        let n = f.read(&mut buf)?;
        if n == 0 {
            break;
        }
        read += n as u64;
    }
    let read_mib_s = (read >> 20) as f64 / started.elapsed().as_secs_f64();
    if read != mib << 20 {
        bail!(
            "read {read} bytes back from {}, wrote {}",
            big.display(),
            mib << 20
        );
    }
    fs::remove_file(&big)?;

    let small = dir.join("small");
    let f = fs::File::create(&small)?;
    let page = [0xa5u8; 4096];
    let started = Instant::now();
    for i in 0..u64::from(small_writes) {
        f.write_all_at(&page, i * 4096)?;
        f.sync_data()?;
    }
    let fsync_writes_s = f64::from(small_writes) / started.elapsed().as_secs_f64();
    drop(f);
    fs::remove_file(&small)?;
    Ok(Figures {
        write_mib_s,
        read_mib_s,
        fsync_writes_s,
    })
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

fn drop_page_cache() -> anyhow::Result<()> {
    // Dirty pages first, or they stay cached.
    Command::new("sync").status().context("running sync")?;
    fs::write("/proc/sys/vm/drop_caches", "3").context("dropping the page cache (needs root)")
}

/// A fresh plain Docker volume's folder.
fn docker_volume() -> anyhow::Result<PathBuf> {
    let _ = docker(&["volume", "rm", "-f", DOCKER_VOLUME]);
    docker(&["volume", "create", DOCKER_VOLUME])?;
    let dir = docker(&[
        "volume",
        "inspect",
        "--format",
        "{{.Mountpoint}}",
        DOCKER_VOLUME,
    ])?;
    Ok(PathBuf::from(dir))
}

/// The folder holding Docker's data root, so both volumes sit on the same disk.
fn data_dir() -> anyhow::Result<PathBuf> {
    let root = PathBuf::from(docker(&["info", "--format", "{{.DockerRootDir}}"])?);
    Ok(root.parent().map(Path::to_path_buf).unwrap_or(root))
}

/// `docker args…` against the engine DOCKER_HOST names (the default one otherwise).
fn docker(args: &[&str]) -> anyhow::Result<String> {
    let out = Command::new("docker")
        .args(args)
        .output()
        .context("running docker")?;
    if !out.status.success() {
        bail!(
            "docker {}: {}",
            args.join(" "),
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok(String::from_utf8_lossy(&out.stdout).trim().to_string())
}
