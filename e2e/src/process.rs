//! Child processes that never outlive the test, and paths to the workspace's binaries.

use std::{
    fs::File,
    io::Write,
    net::TcpListener,
    os::unix::process::CommandExt,
    path::{Path, PathBuf},
    process::{Child, ChildStdin, Command, Stdio},
    time::Duration,
};

use anyhow::{Context, bail};
use nix::{sys::signal::Signal, unistd::Pid};

/// A child process in its own process group, killed with its whole group on drop.
///
/// A watchdog shell holds the read end of a pipe whose write end lives in this process: if
/// the test process dies in any way (panic, timeout, SIGKILL), the pipe closes and the
/// watchdog kills the group. So no process is left behind.
pub struct ChildGuard {
    name: String,
    child: Child,
    watchdog: Option<(Child, ChildStdin)>,
    log: PathBuf,
}

impl ChildGuard {
    /// Spawns `cmd` with stdout and stderr appended to `log`.
    pub fn spawn(name: &str, mut cmd: Command, log: &Path) -> anyhow::Result<Self> {
        let out = File::options()
            .create(true)
            .append(true)
            .open(log)
            .with_context(|| format!("opening {}", log.display()))?;
        cmd.stdin(Stdio::null())
            .stdout(out.try_clone()?)
            .stderr(out)
            .process_group(0);
        let child = cmd
            .spawn()
            .with_context(|| format!("starting {name} ({:?})", cmd.get_program()))?;
        let pgid = child.id();
        let mut watchdog = Command::new("sh")
            .arg("-c")
            // `kill -SIG -PGID` (no `--`: dash, Debian's /bin/sh, rejects it).
            .arg("read _ ; kill -TERM -$1 2>/dev/null; sleep 1; kill -KILL -$1 2>/dev/null")
            .arg("watchdog")
            .arg(pgid.to_string())
            .stdin(Stdio::piped())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .process_group(0)
            .spawn()
            .context("starting the process watchdog")?;
        let stdin = watchdog.stdin.take().context("watchdog stdin")?;
        Ok(Self {
            name: name.to_string(),
            child,
            watchdog: Some((watchdog, stdin)),
            log: log.to_path_buf(),
        })
    }

    /// Process id of the child (also its process group id).
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Path of the child's log file.
    pub fn log_path(&self) -> &Path {
        &self.log
    }

    /// The last `lines` lines of the child's log, for failure messages.
    pub fn log_tail(&self, lines: usize) -> String {
        let text = std::fs::read_to_string(&self.log).unwrap_or_default();
        let all: Vec<&str> = text.lines().collect();
        all[all.len().saturating_sub(lines)..].join("\n")
    }

    /// Whether the child is still running.
    pub fn is_running(&mut self) -> bool {
        matches!(self.child.try_wait(), Ok(None))
    }

    /// Fails with the log tail if the child has exited.
    pub fn check_running(&mut self) -> anyhow::Result<()> {
        if let Ok(Some(status)) = self.child.try_wait() {
            bail!(
                "{} exited with {status}; last lines of {}:\n{}",
                self.name,
                self.log.display(),
                self.log_tail(40)
            );
        }
        Ok(())
    }

    /// Sends `signal` to the child's whole process group.
    pub fn signal(&self, signal: Signal) {
        let _ = nix::sys::signal::killpg(Pid::from_raw(self.child.id() as i32), signal);
    }

    /// SIGKILLs the process group and reaps the child: a crash, as a provider would see it.
    pub fn kill(&mut self) {
        self.signal(Signal::SIGKILL);
        let _ = self.child.wait();
    }

    /// SIGTERM, then SIGKILL after `grace`.
    pub fn stop(&mut self, grace: Duration) {
        self.signal(Signal::SIGTERM);
        let deadline = std::time::Instant::now() + grace;
        while std::time::Instant::now() < deadline {
            if !self.is_running() {
                return;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        self.kill();
    }
}

impl Drop for ChildGuard {
    fn drop(&mut self) {
        self.stop(Duration::from_secs(3));
        if let Some((mut wd, mut stdin)) = self.watchdog.take() {
            let _ = stdin.write_all(b"\n");
            drop(stdin);
            let _ = wd.wait();
        }
    }
}

/// Path of a binary of this workspace (`target/<profile>/<name>`), built by
/// `cargo build --bins`. Fails with that advice when it is missing.
pub fn binary(name: &str) -> anyhow::Result<PathBuf> {
    let exe = std::env::current_exe()?;
    // target/<profile>/deps/<test> or target/<profile>/<bin>
    let mut dir = exe
        .parent()
        .context("test binary has a folder")?
        .to_path_buf();
    if dir.ends_with("deps") {
        dir.pop();
    }
    let path = dir.join(name);
    if !path.is_file() {
        bail!(
            "{} not found: build the workspace binaries first (`cargo build --workspace --bins`)",
            path.display()
        );
    }
    Ok(path)
}

/// A TCP port on 127.0.0.1 that was free a moment ago.
pub fn free_port() -> anyhow::Result<u16> {
    Ok(TcpListener::bind("127.0.0.1:0")?.local_addr()?.port())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Whether process `pid` runs (a zombie waiting to be reaped runs nothing).
    fn alive(pid: &str) -> bool {
        std::fs::read_to_string(format!("/proc/{pid}/stat")).is_ok_and(|s| {
            !s.rsplit(')')
                .next()
                .unwrap_or_default()
                .trim_start()
                .starts_with('Z')
        })
    }

    #[test]
    fn the_watchdog_kills_the_group_when_the_test_process_goes_away() {
        let dir = tempfile::tempdir().expect("temp dir");
        let bg = dir.path().join("bg.pid");
        let mut cmd = Command::new("sh");
        // A child of the child, to show the whole group goes.
        cmd.arg("-c").arg(format!(
            "sleep 300 & echo $! > {}; exec sleep 300",
            bg.display()
        ));
        let mut guard = ChildGuard::spawn("sleeper", cmd, &dir.path().join("log")).expect("spawn");
        let deadline = std::time::Instant::now() + Duration::from_secs(5);
        while !bg.exists() && std::time::Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(20));
        }
        let bg_pid = std::fs::read_to_string(&bg)
            .expect("background pid")
            .trim()
            .to_string();
        assert!(guard.is_running() && alive(&bg_pid));
        // What the death of this process does to the watchdog: its pipe closes.
        let (mut watchdog, stdin) = guard.watchdog.take().expect("watchdog");
        drop(stdin);
        let _ = watchdog.wait();
        let deadline = std::time::Instant::now() + Duration::from_secs(5);
        while (guard.is_running() || alive(&bg_pid)) && std::time::Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(50));
        }
        assert!(!guard.is_running(), "the watchdog did not kill the child");
        assert!(!alive(&bg_pid), "the child's own child survived");
    }
}
