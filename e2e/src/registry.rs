//! The environment's image registries: Debian's `docker-registry` (distribution 2.8) on
//! loopback, one open and one behind htpasswd (bcrypt), each the environment's own process
//! with its storage in a folder of its own. The test images, built with the host's engine
//! (`e2e/images/*.sh`), are pushed there and every edge pulls them from there, as in
//! production.

use std::{
    path::{Path, PathBuf},
    process::Command,
    sync::{Mutex, OnceLock},
    time::{Duration, Instant},
};

use anyhow::{Context, bail};

use crate::{ChildGuard, free_port, repo_root};

/// Where registries keep their blobs: `<pid>-<name>` per process (stale ones are removed).
const REGISTRY_DIR: &str = "/var/tmp/decloud-e2e-registry";

/// The user of the private registry.
pub const PRIVATE_USER: &str = "decloud-tester";

/// The stateful example's image (`e2e/images/redis-image.sh`), as `examples/apps/guestbook`
/// names it and as it is pushed to the open registry.
pub const REDIS_IMAGE: &str = "decloud-test/redis:7";

/// One running registry.
pub struct Registry {
    _child: ChildGuard,
    port: u16,
    dir: PathBuf,
    credentials: Option<(String, String)>,
    /// Repositories already pushed (`name:tag`), so each is pushed once per process.
    pushed: Mutex<Vec<String>>,
}

impl Registry {
    /// Starts a registry on a free loopback port; with `credentials`, behind htpasswd.
    pub fn start(name: &str, credentials: Option<(String, String)>) -> anyhow::Result<Self> {
        remove_stale_dirs();
        let dir = PathBuf::from(REGISTRY_DIR).join(format!("{}-{name}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(dir.join("data"))?;
        let port = free_port()?;
        let mut config = format!(
            "version: 0.1\nlog:\n  level: warn\n  accesslog:\n    disabled: true\n\
             storage:\n  filesystem:\n    rootdirectory: {}\n  delete:\n    enabled: true\n\
             http:\n  addr: 127.0.0.1:{port}\n  secret: decloud-e2e-{name}\n",
            dir.join("data").display()
        );
        if let Some((user, password)) = &credentials {
            let out = Command::new("htpasswd")
                .args(["-Bbn", user, password])
                .output()
                .context("running htpasswd (apt-get install apache2-utils)")?;
            if !out.status.success() {
                bail!("htpasswd: {}", String::from_utf8_lossy(&out.stderr));
            }
            std::fs::write(dir.join("htpasswd"), &out.stdout)?;
            config.push_str(&format!(
                "auth:\n  htpasswd:\n    realm: decloud-e2e\n    path: {}\n",
                dir.join("htpasswd").display()
            ));
        }
        std::fs::write(dir.join("config.yml"), config)?;
        // Under a shell that removes the folder when the registry goes, also when the
        // process-wide registries are stopped by their watchdog at the process's exit.
        let mut cmd = Command::new("sh");
        cmd.arg("-c")
            .arg(
                "trap 'rm -rf \"$0\"' EXIT; trap 'exit 0' TERM INT; \
                 docker-registry serve \"$0/config.yml\" & wait",
            )
            .arg(&dir);
        let mut child =
            ChildGuard::spawn(&format!("registry-{name}"), cmd, &dir.join("registry.log"))
                .context("starting docker-registry (apt-get install docker-registry)")?;
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            child.check_running()?;
            if std::net::TcpStream::connect(("127.0.0.1", port)).is_ok() {
                break;
            }
            if Instant::now() > deadline {
                bail!("docker-registry did not listen on {port} within 20 s");
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        Ok(Self {
            _child: child,
            port,
            dir,
            credentials,
            pushed: Mutex::new(Vec::new()),
        })
    }

    /// `127.0.0.1:PORT`: what image references start with, and the edges' `--allow-registry`.
    pub fn host(&self) -> String {
        format!("127.0.0.1:{}", self.port)
    }

    /// Its port.
    pub fn port(&self) -> u16 {
        self.port
    }

    /// The user and password it requires, if any.
    pub fn credentials(&self) -> Option<(&str, &str)> {
        self.credentials
            .as_ref()
            .map(|(u, p)| (u.as_str(), p.as_str()))
    }

    /// Pushes the host engine's image `local` as `repo` (`name:tag`) with the host's engine,
    /// once per process; the reference `127.0.0.1:PORT/repo`. The host engine keeps no tag
    /// of it, and its CLI configuration is a scratch one (a login never lands in ~/.docker).
    pub fn push(&self, local: &str, repo: &str) -> anyhow::Result<String> {
        let reference = format!("{}/{repo}", self.host());
        let mut pushed = self.pushed.lock().unwrap_or_else(|e| e.into_inner());
        if pushed.iter().any(|r| r == repo) {
            return Ok(reference);
        }
        let config = tempfile::tempdir()?;
        let host_docker = |args: &[&str]| -> anyhow::Result<()> {
            let out = Command::new("docker")
                .env("DOCKER_CONFIG", config.path())
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
            Ok(())
        };
        if let Some((user, password)) = self.credentials() {
            let mut login = Command::new("docker")
                .env("DOCKER_CONFIG", config.path())
                .args(["login", "-u", user, "--password-stdin", &self.host()])
                .stdin(std::process::Stdio::piped())
                .stdout(std::process::Stdio::null())
                .stderr(std::process::Stdio::piped())
                .spawn()?;
            use std::io::Write as _;
            login
                .stdin
                .take()
                .context("docker login stdin")?
                .write_all(password.as_bytes())?;
            let out = login.wait_with_output()?;
            if !out.status.success() {
                bail!("docker login: {}", String::from_utf8_lossy(&out.stderr));
            }
        }
        host_docker(&["tag", local, &reference])?;
        let res = host_docker(&["push", "-q", &reference]);
        // Only the tag goes: the image stays under its local name.
        let _ = host_docker(&["rmi", &reference]);
        res?;
        pushed.push(repo.to_string());
        Ok(reference)
    }

    /// Its folder (config, storage, log).
    pub fn dir(&self) -> &Path {
        &self.dir
    }
}

impl Drop for Registry {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// Removes the folders of registries whose process is gone.
fn remove_stale_dirs() {
    let Ok(entries) = std::fs::read_dir(REGISTRY_DIR) else {
        return;
    };
    for e in entries.flatten() {
        let name = e.file_name().to_string_lossy().into_owned();
        let pid = name.split('-').next().unwrap_or_default();
        if pid != std::process::id().to_string() && !Path::new("/proc").join(pid).exists() {
            let _ = std::fs::remove_dir_all(e.path());
        }
    }
}

/// The registries of this process, started on first use: (open, private). They live as long
/// as the process (a child watchdog stops them when it exits).
fn registries() -> anyhow::Result<&'static (Registry, Registry)> {
    static REGISTRIES: OnceLock<Result<(Registry, Registry), String>> = OnceLock::new();
    REGISTRIES
        .get_or_init(|| {
            let open = Registry::start("open", None).map_err(|e| format!("{e:#}"))?;
            let password = format!("pw-{}-{}", std::process::id(), free_port().unwrap_or(1));
            let private = Registry::start("private", Some((PRIVATE_USER.into(), password)))
                .map_err(|e| format!("{e:#}"))?;
            Ok((open, private))
        })
        .as_ref()
        .map_err(|e| anyhow::anyhow!("{e}"))
}

/// The open test registry.
pub fn registry() -> anyhow::Result<&'static Registry> {
    Ok(&registries()?.0)
}

/// The `--allow-registry` value every test edge gets: both test registries.
pub fn allowed_registries() -> anyhow::Result<String> {
    let (open, private) = registries()?;
    Ok(format!("{},{}", open.host(), private.host()))
}

/// A registry requiring credentials, with the busybox test image in it.
pub struct PrivateRegistry {
    /// `127.0.0.1:PORT`.
    pub host: String,
    /// The user it accepts.
    pub user: String,
    /// That user's password.
    pub password: String,
    /// `127.0.0.1:PORT/decloud-test/busybox:1`, pullable only with the credentials.
    pub image: String,
}

/// The private registry (htpasswd, bcrypt) with the busybox image pushed to it.
pub fn private_registry() -> anyhow::Result<PrivateRegistry> {
    let private = &registries()?.1;
    let local = local_busybox()?;
    let image = private.push(&local, "decloud-test/busybox:1")?;
    let (user, password) = private
        .credentials()
        .context("the private registry has no users")?;
    Ok(PrivateRegistry {
        host: private.host(),
        user: user.to_string(),
        password: password.to_string(),
        image,
    })
}

/// Builds the local test image `decloud-test/busybox:1` with the host's engine (idempotent).
pub fn local_busybox() -> anyhow::Result<String> {
    static LOCAL: OnceLock<Result<String, String>> = OnceLock::new();
    LOCAL
        .get_or_init(|| {
            let out = Command::new("bash")
                .arg(repo_root().join("e2e/images/busybox-image.sh"))
                .output()
                .map_err(|e| format!("running e2e/images/busybox-image.sh: {e}"))?;
            if !out.status.success() {
                return Err(format!(
                    "building the test image failed: {}",
                    String::from_utf8_lossy(&out.stderr)
                ));
            }
            Ok(String::from_utf8_lossy(&out.stdout).trim().to_string())
        })
        .clone()
        .map_err(anyhow::Error::msg)
}

/// The busybox test image under `repo` (`name:tag`) in the open registry: its reference.
pub fn test_image(repo: &str) -> anyhow::Result<String> {
    registry()?.push(&local_busybox()?, repo)
}

/// Builds the local image `decloud-test/redis:7` with the host's engine (idempotent): Debian
/// bookworm's redis-server, redis-tools and busybox (`e2e/images/redis-image.sh`, which caches
/// its debootstrap root filesystem under `~/.cache/decloud/images`; minutes the first time).
pub fn local_redis() -> anyhow::Result<String> {
    static LOCAL: OnceLock<Result<String, String>> = OnceLock::new();
    LOCAL
        .get_or_init(|| {
            let out = Command::new("bash")
                .arg(repo_root().join("e2e/images/redis-image.sh"))
                .arg(REDIS_IMAGE)
                .output()
                .map_err(|e| format!("running e2e/images/redis-image.sh: {e}"))?;
            if !out.status.success() {
                return Err(format!(
                    "building the redis test image failed (e2e/images/redis-image.sh: needs \
                     debootstrap, the apt mirror and the host's Docker engine): {}",
                    String::from_utf8_lossy(&out.stderr).trim()
                ));
            }
            Ok(String::from_utf8_lossy(&out.stdout)
                .lines()
                .last()
                .unwrap_or_default()
                .trim()
                .to_string())
        })
        .clone()
        .map_err(anyhow::Error::msg)
}
