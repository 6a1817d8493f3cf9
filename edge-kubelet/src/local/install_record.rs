//! What the install script put on the machine, as it recorded it in the state folder
//! (`installed-by-script`: the binary, the systemd unit, the settings file), and how
//! `edge-kubelet uninstall` takes it away again.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

/// File the install script writes in the state folder.
pub(crate) const FILE: &str = "installed-by-script";
/// Pid of an agent the script started without systemd (`--start-without-systemd`).
pub(crate) const PID_FILE: &str = "edge-kubelet.pid";
/// Files that mark a folder as an edge's state folder (one must exist before uninstall
/// deletes it).
const MARKERS: [&str; 4] = [FILE, "credential", "status.json", "credential.pending"];
/// The unit name the script installs.
const UNIT_NAME: &str = "edge-kubelet.service";

/// The paths the script recorded.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub(crate) struct InstallRecord {
    pub(crate) binary: Option<PathBuf>,
    pub(crate) unit: Option<PathBuf>,
    pub(crate) config: Option<PathBuf>,
}

impl InstallRecord {
    /// Parses `KEY=/absolute/path` lines; anything else is ignored (the file is ours, but a
    /// path that is not absolute is never acted upon).
    pub(crate) fn parse(text: &str) -> Self {
        let mut r = Self::default();
        for line in text.lines().take(64) {
            let Some((k, v)) = line.split_once('=') else {
                continue;
            };
            let path = PathBuf::from(v.trim());
            if !path.is_absolute() || path == Path::new("/") {
                continue;
            }
            match k.trim() {
                "BINARY" => r.binary = Some(path),
                "UNIT" => r.unit = Some(path),
                "CONFIG" => r.config = Some(path),
                _ => {}
            }
        }
        r
    }

    /// The record in `state_dir`, if the script installed this edge.
    pub(crate) fn load(state_dir: &Path) -> Option<Self> {
        std::fs::read_to_string(state_dir.join(FILE))
            .ok()
            .map(|t| Self::parse(&t))
    }
}

/// Whether systemd manages services on this machine.
pub(crate) fn systemd_runs() -> bool {
    Path::new("/run/systemd/system").is_dir()
}

/// How long `uninstall` waits for the background agent to drain and exit: the agent's default
/// --shutdown-drain-timeout and some.
const STOP_WAIT: Duration = Duration::from_secs(90);

/// Stops the agent the script started: the systemd unit (disabled too) or the background
/// process in the pid file. What it did, one line each.
pub(crate) fn stop_agent(state_dir: &Path, record: &InstallRecord) -> Vec<String> {
    let mut done = Vec::new();
    if record.unit.is_some() && systemd_runs() {
        match Command::new("systemctl")
            .args(["disable", "--now", UNIT_NAME])
            .output()
        {
            Ok(o) if o.status.success() => done.push(format!("{UNIT_NAME} stopped and disabled")),
            Ok(o) => done.push(format!(
                "systemctl disable --now {UNIT_NAME}: {}",
                String::from_utf8_lossy(&o.stderr).trim()
            )),
            Err(e) => done.push(format!("systemctl: {e}")),
        }
    }
    let pid_file = state_dir.join(PID_FILE);
    if let Some(pid) = std::fs::read_to_string(&pid_file)
        .ok()
        .and_then(|t| t.trim().parse::<u32>().ok())
        .filter(|p| *p > 1)
    {
        let proc_dir = PathBuf::from(format!("/proc/{pid}"));
        if proc_dir.exists() && is_edge_kubelet(&proc_dir) {
            let _ = Command::new("kill")
                .args(["-TERM", &pid.to_string()])
                .status();
            // On SIGTERM the agent drains first (its pods move elsewhere, make-before-break),
            // for at most its --shutdown-drain-timeout (60 s by default).
            eprintln!(
                "edge-kubelet: stopping the background agent (pid {pid}); it drains first (at most {} s)",
                STOP_WAIT.as_secs()
            );
            let deadline = Instant::now() + STOP_WAIT;
            while proc_dir.exists() && Instant::now() < deadline {
                std::thread::sleep(Duration::from_millis(100));
            }
            done.push(if proc_dir.exists() {
                format!(
                    "the background agent (pid {pid}) did not stop within {} s",
                    STOP_WAIT.as_secs()
                )
            } else {
                format!("the background agent (pid {pid}) stopped")
            });
        }
        let _ = std::fs::remove_file(&pid_file);
    }
    done
}

/// Whether process `/proc/PID` runs edge-kubelet (so a reused pid is never signalled).
fn is_edge_kubelet(proc_dir: &Path) -> bool {
    std::fs::read(proc_dir.join("cmdline"))
        .ok()
        .and_then(|c| {
            c.split(|b| *b == 0)
                .next()
                .map(|a| a.ends_with(b"edge-kubelet"))
        })
        .unwrap_or(false)
}

/// Removes the unit, the settings file and the binary the script recorded.
pub(crate) fn remove_installed(record: &InstallRecord) -> Vec<String> {
    let mut done = Vec::new();
    for (what, path) in [
        ("unit", &record.unit),
        ("settings", &record.config),
        ("binary", &record.binary),
    ] {
        let Some(path) = path else { continue };
        match std::fs::remove_file(path) {
            Ok(()) => done.push(format!("{what} {} removed", path.display())),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => done.push(format!("{what} {} kept: {e}", path.display())),
        }
    }
    if record.unit.is_some() && systemd_runs() {
        let _ = Command::new("systemctl").arg("daemon-reload").status();
    }
    done
}

/// Deletes `state_dir` if it is an edge's state folder (holds one of its marker files).
pub(crate) fn remove_state_dir(state_dir: &Path) -> String {
    let is_state = MARKERS.iter().any(|m| state_dir.join(m).exists());
    if !is_state || state_dir.parent().is_none() {
        return format!(
            "state folder {} kept: it holds no edge state",
            state_dir.display()
        );
    }
    match std::fs::remove_dir_all(state_dir) {
        Ok(()) => format!(
            "state folder {} removed (credential included: joining again needs a new token)",
            state_dir.display()
        ),
        Err(e) => format!("state folder {} kept: {e}", state_dir.display()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_what_the_script_writes_and_nothing_else() {
        let r = InstallRecord::parse(
            "BINARY=/usr/local/bin/edge-kubelet\nUNIT=/etc/systemd/system/edge-kubelet.service\nCONFIG=relative\nOTHER=/x\nBINARY2=/y\n",
        );
        assert_eq!(
            r.binary.as_deref(),
            Some(Path::new("/usr/local/bin/edge-kubelet"))
        );
        assert_eq!(
            r.unit.as_deref(),
            Some(Path::new("/etc/systemd/system/edge-kubelet.service"))
        );
        assert_eq!(r.config, None);
        assert_eq!(InstallRecord::parse("UNIT=/\n").unit, None);
    }

    #[test]
    fn removes_only_a_state_folder() {
        let dir = tempfile::tempdir().unwrap();
        let other = dir.path().join("photos");
        std::fs::create_dir(&other).unwrap();
        std::fs::write(other.join("a.jpg"), b"x").unwrap();
        assert!(remove_state_dir(&other).contains("kept"));
        assert!(other.join("a.jpg").exists());
        let state = dir.path().join("state");
        std::fs::create_dir(&state).unwrap();
        std::fs::write(state.join("credential"), b"c").unwrap();
        assert!(remove_state_dir(&state).contains("removed"));
        assert!(!state.exists());
    }
}
