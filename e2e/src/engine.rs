//! Docker engines of the environment's own: one `dockerd` per provider, as on a volunteer's
//! machine, so no edge sees another's images or containers and every image is really pulled.
//!
//! Each engine has its own data root, exec root, socket, pid file and address pool, a default
//! bridge of its own (`dcl-e<slot>`, made by the environment, `--bridge`) and its own managed
//! containerd. Not `--bridge=none`: a daemon started so deletes the machine's `docker0`
//! (Docker 20.10 `removeDefaultBridgeInterface`), which is the host engine's.
//! Engines run in their own process group (a Ctrl-C to a script's group never reaches them)
//! and are stopped explicitly: containers and networks removed, SIGTERM, SIGKILL after a grace,
//! mounts under the roots unmounted and the roots removed. Several daemons with `--iptables`
//! share the filter `DOCKER`, `DOCKER-ISOLATION-STAGE-*` and nat `DOCKER` chains, and a
//! starting daemon flushes them (Docker 20.10 `removeIPChains`): the rules other engines had
//! there (the host's own engine included) are saved before each start and put back after it.
//! `DOCKER-USER`, where the edges hook their egress policy by bridge, is never flushed.

use std::{
    collections::BTreeMap,
    fs::File,
    path::{Path, PathBuf},
    process::Command,
    sync::{Arc, Mutex},
    time::{Duration, Instant},
};

use anyhow::{Context, bail};
use decloud_crds::contracts::node_name;

use crate::ChildGuard;

/// Where the engines' roots live: on the machine's disk (overlay2 needs a real filesystem).
pub const ENGINES_DIR: &str = "/var/lib/decloud-e2e/engines";
/// Slot locks (one engine per slot, machine-wide, across test processes).
const LOCK_DIR: &str = "/run/lock/decloud-e2e";
/// Most engines at once on the machine.
const MAX_SLOTS: usize = 64;
/// Slot `i` owns 10.213.(4i).0/22, cut in /24 networks: never the host engine's 172.16/12 or
/// 192.168/16 pools, never another slot's.
const POOL_PREFIX: &str = "10.213";

/// One `dockerd` of the environment's own.
pub struct DockerEngine {
    provider: String,
    slot: usize,
    root: PathBuf,
    daemon: Option<ChildGuard>,
    _slot_lock: File,
}

impl DockerEngine {
    /// Starts an engine for provider `provider` and waits until it answers (30 s at most).
    pub fn start(provider: &str) -> anyhow::Result<Self> {
        let started = Instant::now();
        std::fs::create_dir_all(LOCK_DIR)?;
        std::fs::create_dir_all(ENGINES_DIR)?;
        let (slot, slot_lock) = claim_slot()?;
        let root = PathBuf::from(ENGINES_DIR).join(format!("e{slot}"));
        // A previous holder of the slot died without cleaning up: its leftovers are ours.
        clean_root(&root);
        std::fs::create_dir_all(root.join("data"))?;
        std::fs::create_dir_all(root.join("exec"))?;
        make_bridge(slot)?;
        let mut engine = Self {
            provider: provider.to_string(),
            slot,
            root,
            daemon: None,
            _slot_lock: slot_lock,
        };
        // One start at a time on the machine: the flush and the restore of the shared chains
        // must not interleave with another engine's.
        let start_lock = File::create(Path::new(LOCK_DIR).join("start.lock"))?;
        start_lock.lock()?;
        let saved = SharedChains::save();
        let mut cmd = Command::new("dockerd");
        cmd.arg("--data-root")
            .arg(engine.root.join("data"))
            .arg("--exec-root")
            .arg(engine.root.join("exec"))
            .arg("-H")
            .arg(engine.host())
            .arg("--pidfile")
            .arg(engine.root.join("docker.pid"))
            .arg(format!("--bridge={}", bridge_name(slot)))
            .args(["--iptables=true", "--ip-masq=true"])
            .args(["--default-address-pool", &engine.pool()])
            .args(["--log-level=warn", "--log-driver=json-file"])
            .args(["--log-opt", "max-size=10m", "--log-opt", "max-file=2"]);
        let daemon = ChildGuard::spawn(
            &format!("dockerd-{provider}"),
            cmd,
            &engine.root.join("dockerd.log"),
        )?;
        engine.daemon = Some(daemon);
        let ready = engine.wait_ready(Duration::from_secs(30));
        if let Err(e) = saved.and_then(|s| s.restore()) {
            eprintln!("cannot restore the shared Docker chains: {e:#}");
        }
        drop(start_lock);
        ready?;
        tracing::info!(provider, slot, elapsed = ?started.elapsed(), "docker engine ready");
        Ok(engine)
    }

    fn wait_ready(&mut self, within: Duration) -> anyhow::Result<()> {
        let deadline = Instant::now() + within;
        loop {
            if let Some(d) = self.daemon.as_mut() {
                d.check_running()?;
            }
            if self
                .docker(&["version", "--format", "{{.Server.Version}}"])
                .is_ok()
            {
                return Ok(());
            }
            if Instant::now() > deadline {
                bail!(
                    "dockerd of {} did not answer within {within:?}; log:\n{}",
                    self.provider,
                    self.daemon
                        .as_ref()
                        .map(|d| d.log_tail(30))
                        .unwrap_or_default()
                );
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// The provider it serves.
    pub fn provider(&self) -> &str {
        &self.provider
    }

    /// Its socket.
    pub fn socket(&self) -> PathBuf {
        self.root.join("docker.sock")
    }

    /// `unix://<socket>`: the edge's `--docker-host`, the CLI's `-H`.
    pub fn host(&self) -> String {
        format!("unix://{}", self.socket().display())
    }

    /// Its data root (images, containers' layers).
    pub fn data_root(&self) -> PathBuf {
        self.root.join("data")
    }

    /// Its `--default-address-pool`.
    pub fn pool(&self) -> String {
        format!("base={POOL_PREFIX}.{}.0/22,size=24", self.slot * 4)
    }

    /// The pool's range (`10.213.X.0/22`).
    pub fn pool_range(&self) -> String {
        format!("{POOL_PREFIX}.{}.0/22", self.slot * 4)
    }

    /// The daemon's log.
    pub fn log(&self) -> PathBuf {
        self.root.join("dockerd.log")
    }

    /// The daemon's pid.
    pub fn pid(&self) -> Option<u32> {
        self.daemon.as_ref().map(ChildGuard::pid)
    }

    /// A `docker` CLI command against this engine.
    pub fn command(&self) -> Command {
        let mut cmd = Command::new("docker");
        cmd.arg("-H").arg(self.host());
        cmd
    }

    /// Runs `docker -H <this engine> args`: its stdout, or an error with its stderr.
    pub fn docker(&self, args: &[&str]) -> anyhow::Result<String> {
        let out = self
            .command()
            .args(args)
            .output()
            .context("running docker")?;
        if !out.status.success() {
            bail!(
                "docker ({}) {}: {}",
                self.provider,
                args.join(" "),
                String::from_utf8_lossy(&out.stderr).trim()
            );
        }
        Ok(String::from_utf8_lossy(&out.stdout).trim().to_string())
    }

    /// Removes every container and network it runs (all of them are the environment's).
    pub fn sweep(&self) {
        if let Ok(ids) = self.docker(&["ps", "-aq"]) {
            let ids: Vec<&str> = ids.lines().collect();
            if !ids.is_empty() {
                let mut args = vec!["rm", "-f", "-v"];
                args.extend(ids);
                let _ = self.docker(&args);
            }
        }
        // Its networks' bridges and iptables rules outlive the daemon otherwise.
        let _ = self.docker(&["network", "prune", "-f"]);
    }

    /// Sweeps it, stops the daemon (SIGTERM, SIGKILL after 15 s), unmounts and removes its
    /// roots.
    pub fn stop(&mut self) {
        let Some(mut daemon) = self.daemon.take() else {
            return;
        };
        self.sweep();
        daemon.stop(Duration::from_secs(15));
        drop(daemon);
        clean_root(&self.root);
        remove_bridge(self.slot);
    }
}

/// The default bridge of slot `slot`'s engine.
fn bridge_name(slot: usize) -> String {
    format!("dcl-e{slot}")
}

/// Makes slot `slot`'s default bridge, `10.214.<slot>.1/24` (outside every slot's pool), up;
/// a leftover of a crashed run is made again.
fn make_bridge(slot: usize) -> anyhow::Result<()> {
    remove_bridge(slot);
    let name = bridge_name(slot);
    let addr = format!("10.214.{slot}.1/24");
    for args in [
        vec!["link", "add", &name, "type", "bridge"],
        vec!["addr", "add", &addr, "dev", &name],
        vec!["link", "set", &name, "up"],
    ] {
        let out = Command::new("ip")
            .args(&args)
            .output()
            .context("running ip")?;
        if !out.status.success() {
            bail!(
                "ip {}: {}",
                args.join(" "),
                String::from_utf8_lossy(&out.stderr).trim()
            );
        }
    }
    Ok(())
}

fn remove_bridge(slot: usize) {
    let _ = Command::new("ip")
        .args(["link", "del", &bridge_name(slot)])
        .stderr(std::process::Stdio::null())
        .status();
}

impl Drop for DockerEngine {
    fn drop(&mut self) {
        self.stop();
    }
}

/// The first free slot, held by an exclusive lock for the engine's life (released by the
/// kernel if the process dies).
fn claim_slot() -> anyhow::Result<(usize, File)> {
    for slot in 0..MAX_SLOTS {
        let f = File::create(Path::new(LOCK_DIR).join(format!("slot-{slot}.lock")))?;
        if f.try_lock().is_ok() {
            return Ok((slot, f));
        }
    }
    bail!("{MAX_SLOTS} test Docker engines already run on this machine")
}

/// Kills what still runs from `root` (a daemon, its containerd and shims), unmounts what is
/// mounted under it and removes it.
fn clean_root(root: &Path) {
    if !root.exists() {
        return;
    }
    // With the slash: slot 1's root is a prefix of slot 10's.
    let needle = format!("{}/", root.display());
    if let Ok(procs) = std::fs::read_dir("/proc") {
        for p in procs.flatten() {
            let Some(pid) = p.file_name().to_str().and_then(|s| s.parse::<i32>().ok()) else {
                continue;
            };
            let cmdline = std::fs::read(p.path().join("cmdline")).unwrap_or_default();
            if String::from_utf8_lossy(&cmdline).contains(&needle) {
                let _ = nix::sys::signal::kill(
                    nix::unistd::Pid::from_raw(pid),
                    nix::sys::signal::Signal::SIGKILL,
                );
            }
        }
    }
    let mounts = std::fs::read_to_string("/proc/mounts").unwrap_or_default();
    let mut under: Vec<&str> = mounts
        .lines()
        .filter_map(|l| l.split_whitespace().nth(1))
        .filter(|m| m.starts_with(&needle))
        .collect();
    // Deepest first.
    under.sort_by_key(|m| std::cmp::Reverse(m.len()));
    for m in under {
        let _ = Command::new("umount").args(["-l", m]).status();
    }
    if let Err(e) = std::fs::remove_dir_all(root) {
        eprintln!("cannot remove {}: {e}", root.display());
    }
}

/// Rules of the chains every daemon on the machine shares and a starting daemon flushes.
struct SharedChains {
    /// (table, chain, rule arguments)
    rules: Vec<(&'static str, String, Vec<String>)>,
}

impl SharedChains {
    const FILTER: [&'static str; 3] = [
        "DOCKER",
        "DOCKER-ISOLATION-STAGE-1",
        "DOCKER-ISOLATION-STAGE-2",
    ];

    fn save() -> anyhow::Result<Self> {
        let mut rules = Vec::new();
        for table in ["filter", "nat"] {
            let out = Command::new("iptables-save")
                .args(["-t", table])
                .output()
                .context("running iptables-save")?;
            if !out.status.success() {
                bail!("iptables-save -t {table} failed");
            }
            for line in String::from_utf8_lossy(&out.stdout).lines() {
                let Some(rule) = line.strip_prefix("-A ") else {
                    continue;
                };
                let mut words = rule.split_whitespace().map(str::to_string);
                let Some(chain) = words.next() else { continue };
                let args: Vec<String> = words.collect();
                let keep = match table {
                    "filter" => Self::FILTER.contains(&chain.as_str()),
                    // The nat DOCKER chain, and the PREROUTING/OUTPUT jumps into it.
                    _ => {
                        chain == "DOCKER"
                            || ((chain == "PREROUTING" || chain == "OUTPUT")
                                && args.ends_with(&["-j".to_string(), "DOCKER".to_string()]))
                    }
                };
                // A chain's closing RETURN is the new daemon's to add.
                if keep && args != ["-j", "RETURN"] {
                    rules.push((table, chain, args));
                }
            }
        }
        Ok(Self { rules })
    }

    /// Puts back every saved rule that is gone.
    fn restore(&self) -> anyhow::Result<()> {
        for (table, chain, args) in &self.rules {
            let present = Command::new("iptables")
                .args(["-w", "-t", table, "-C", chain])
                .args(args)
                .output()
                .is_ok_and(|o| o.status.success());
            if present {
                continue;
            }
            let mut cmd = Command::new("iptables");
            cmd.args(["-w", "-t", table]);
            if chain == "PREROUTING" || chain == "OUTPUT" {
                cmd.args(["-A", chain]);
            } else {
                cmd.args(["-I", chain, "1"]);
            }
            let out = cmd.args(args).output()?;
            if !out.status.success() {
                bail!(
                    "iptables -t {table} {chain} {}: {}",
                    args.join(" "),
                    String::from_utf8_lossy(&out.stderr).trim()
                );
            }
        }
        Ok(())
    }
}

/// The engines of one environment, one per provider name, started on first use and kept
/// across restarts of that provider's edge (its containers keep running, as on a real
/// machine); stopped when the registry drops.
#[derive(Default)]
pub struct Engines {
    map: Mutex<BTreeMap<String, Arc<DockerEngine>>>,
}

impl Engines {
    /// The engine of provider `provider`, started if it has none yet.
    pub fn get(&self, provider: &str) -> anyhow::Result<Arc<DockerEngine>> {
        let mut map = self.map.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(e) = map.get(provider) {
            return Ok(e.clone());
        }
        let engine = Arc::new(
            DockerEngine::start(provider)
                .with_context(|| format!("starting the Docker engine of {provider}"))?,
        );
        map.insert(provider.to_string(), engine.clone());
        Ok(engine)
    }

    /// The engine of the provider whose node is `node` (`edge-<provider>`), if started.
    pub fn of_node(&self, node: &str) -> Option<Arc<DockerEngine>> {
        let map = self.map.lock().unwrap_or_else(|e| e.into_inner());
        map.iter()
            .find(|(p, _)| node_name(p) == node)
            .map(|(_, e)| e.clone())
    }

    /// Every engine started so far.
    pub fn all(&self) -> Vec<Arc<DockerEngine>> {
        let map = self.map.lock().unwrap_or_else(|e| e.into_inner());
        map.values().cloned().collect()
    }

    /// Stops every engine no one else holds (now, rather than on drop).
    pub fn stop_all(&self) {
        let engines: Vec<_> = {
            let mut map = self.map.lock().unwrap_or_else(|e| e.into_inner());
            std::mem::take(&mut *map).into_values().collect()
        };
        // In parallel: each stop waits for its daemon.
        let handles: Vec<_> = engines
            .into_iter()
            .map(|e| std::thread::spawn(move || drop(e)))
            .collect();
        for h in handles {
            let _ = h.join();
        }
    }
}

impl Drop for Engines {
    fn drop(&mut self) {
        self.stop_all();
    }
}
