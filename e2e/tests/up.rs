//! The README's first command works: `decloud-up` brings up a local DeCloud (real control
//! plane, operator, two edges each on a Docker engine of its own, a loopback registry), runs
//! the demo Workload until it is ready, prints what to use, and tears everything down: its
//! engines are gone (processes, sockets, folders) and the machine's own engine still answers,
//! also after a Ctrl-C to decloud-up's process group.

use std::io::{BufRead, BufReader};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, bail, ensure};
use decloud_e2e::binary;

/// The engines' sockets decloud-up reported (`dockerd on unix://…`).
fn engine_sockets(stderr: &str) -> Vec<PathBuf> {
    stderr
        .lines()
        .filter_map(|l| l.split("dockerd on unix://").nth(1))
        .filter_map(|rest| rest.split_whitespace().next())
        .map(PathBuf::from)
        .collect()
}

/// No process runs from `root`, and its socket and folder are gone.
fn engine_gone(socket: &Path) -> anyhow::Result<()> {
    let root = socket.parent().context("socket folder")?;
    ensure!(!socket.exists(), "{} is still there", socket.display());
    ensure!(!root.exists(), "{} is still there", root.display());
    let needle = format!("{}/", root.display());
    for p in std::fs::read_dir("/proc")?.flatten() {
        let cmdline = std::fs::read(p.path().join("cmdline")).unwrap_or_default();
        ensure!(
            !String::from_utf8_lossy(&cmdline).contains(&needle),
            "process {:?} still runs from {needle}",
            p.file_name()
        );
    }
    Ok(())
}

/// The machine's own Docker engine (the default socket) still answers.
fn host_engine_answers() -> anyhow::Result<()> {
    let out = Command::new("docker")
        .args(["version", "--format", "{{.Server.Version}}"])
        .output()?;
    ensure!(
        out.status.success(),
        "the machine's Docker engine no longer answers: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    Ok(())
}

#[test]
fn decloud_up_brings_up_the_demo_and_tears_it_down() -> anyhow::Result<()> {
    let out = Command::new(binary("decloud-up")?)
        .args([
            "--exit-when-ready",
            "--edges",
            "2",
            "--timeout",
            "120s",
            "--gateway-port",
            "0",
        ])
        .env_remove("DECLOUD_KUBECONFIG")
        .output()
        .context("running decloud-up")?;
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    println!("{stderr}\n{stdout}");
    ensure!(out.status.success(), "decloud-up failed: {stderr}");
    for want in [
        "[1/",
        "control plane",
        "providers Ready",
        "is ready: http://hello.default.",
    ] {
        ensure!(stderr.contains(want), "progress output lacks {want:?}");
    }
    for want in [
        "workload.decloud.dev/hello",
        "provider.decloud.dev/local-1",
        "node/edge-local-2",
        "export KUBECONFIG=",
    ] {
        ensure!(stdout.contains(want), "final output lacks {want:?}");
    }
    // Torn down: the engines of the demo's edges (and so their containers) are gone, the
    // machine's engine is untouched.
    let sockets = engine_sockets(&stderr);
    ensure!(
        sockets.len() == 2,
        "decloud-up reported engines {sockets:?}"
    );
    for s in &sockets {
        engine_gone(s)?;
    }
    host_engine_answers()
}

/// Ctrl-C (SIGINT to the whole process group, as a terminal sends it) while decloud-up runs:
/// its engines stop and go; the machine's engine keeps answering.
#[test]
fn ctrl_c_stops_decloud_ups_engines_and_only_those() -> anyhow::Result<()> {
    let mut child = Command::new(binary("decloud-up")?)
        .args(["--no-demo", "--edges", "2", "--gateway-port", "0"])
        .env_remove("DECLOUD_KUBECONFIG")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .process_group(0)
        .spawn()
        .context("running decloud-up")?;
    let pgid = nix::unistd::Pid::from_raw(child.id() as i32);
    let stderr = child.stderr.take().context("stderr")?;
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stderr).lines().map_while(Result::ok) {
            if tx.send(line).is_err() {
                break;
            }
        }
    });
    let mut log = String::new();
    let deadline = Instant::now() + Duration::from_secs(180);
    loop {
        match rx.recv_timeout(Duration::from_secs(1)) {
            Ok(line) => {
                log.push_str(&line);
                log.push('\n');
                if line.contains("Press Ctrl-C") {
                    break;
                }
            }
            Err(std::sync::mpsc::RecvTimeoutError::Timeout) => {}
            Err(e) => bail!("decloud-up ended early ({e}):\n{log}"),
        }
        if Instant::now() > deadline {
            let _ = nix::sys::signal::killpg(pgid, nix::sys::signal::Signal::SIGKILL);
            bail!("decloud-up did not come up within 180 s:\n{log}");
        }
    }
    let sockets = engine_sockets(&log);
    ensure!(
        sockets.len() == 2,
        "decloud-up reported engines {sockets:?}"
    );
    for s in &sockets {
        ensure!(s.exists(), "{} missing while up", s.display());
    }
    nix::sys::signal::killpg(pgid, nix::sys::signal::Signal::SIGINT)?;
    let deadline = Instant::now() + Duration::from_secs(90);
    let status = loop {
        if let Some(status) = child.try_wait()? {
            break status;
        }
        if Instant::now() > deadline {
            let _ = nix::sys::signal::killpg(pgid, nix::sys::signal::Signal::SIGKILL);
            bail!("decloud-up did not exit within 90 s of Ctrl-C");
        }
        std::thread::sleep(Duration::from_millis(100));
    };
    while let Ok(line) = rx.recv_timeout(Duration::from_secs(2)) {
        log.push_str(&line);
        log.push('\n');
    }
    println!("{log}");
    ensure!(status.success(), "decloud-up after Ctrl-C: {status}");
    ensure!(log.contains("stopped 2 Docker engines"), "{log}");
    for s in &sockets {
        engine_gone(s)?;
    }
    host_engine_answers()
}
