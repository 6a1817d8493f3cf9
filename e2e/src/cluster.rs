//! The DeCloud processes of a suite: the real `decloud-operator` and real `edge-kubelet`s,
//! started against a [`TestEnv`], plus Docker look-ups and clean-up of what edges left behind.

use std::{
    path::{Path, PathBuf},
    process::Command,
    time::Duration,
};

use anyhow::{Context, bail};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use crate::{ChildGuard, TestEnv, binary, eventually, free_port, repo_root};

/// A running `decloud-operator`.
pub struct OperatorProcess {
    /// The process (SIGKILL-able).
    pub child: ChildGuard,
    /// Port edges dial.
    pub edge_port: u16,
    /// Port of /metrics, /healthz and /readyz.
    pub metrics_port: u16,
    /// Port published as the virtual nodes' kubelet endpoint.
    pub kubelet_port: u16,
}

impl OperatorProcess {
    /// Starts the operator with `extra` arguments and waits until `/readyz` answers ok.
    pub async fn start(env: &TestEnv, extra: &[&str]) -> anyhow::Result<Self> {
        let mut op = Self::spawn(env, extra)?;
        op.wait_ready().await?;
        Ok(op)
    }

    /// Starts the operator with `extra` arguments without waiting (e.g. a standby replica).
    pub fn spawn(env: &TestEnv, extra: &[&str]) -> anyhow::Result<Self> {
        Self::spawn_on(env, [free_port()?, free_port()?, free_port()?], extra)
    }

    /// Starts another operator on this one's ports (after this one was killed): a restart.
    pub fn respawn(&self, env: &TestEnv, extra: &[&str]) -> anyhow::Result<Self> {
        Self::spawn_on(
            env,
            [self.edge_port, self.metrics_port, self.kubelet_port],
            extra,
        )
    }

    fn spawn_on(env: &TestEnv, ports: [u16; 3], extra: &[&str]) -> anyhow::Result<Self> {
        let [edge_port, metrics_port, kubelet_port] = ports;
        let mut cmd = Command::new(binary("decloud-operator")?);
        cmd.env("KUBECONFIG", env.kubeconfig())
            .env(
                "RUST_LOG",
                std::env::var("RUST_LOG").unwrap_or_else(|_| "info".into()),
            )
            .args(["run", "--edge-listen", &format!("127.0.0.1:{edge_port}")])
            .args(["--metrics-listen", &format!("127.0.0.1:{metrics_port}")])
            .args(["--kubelet-port", &kubelet_port.to_string()])
            .args(extra);
        let log = env.dir().join(format!(
            "operator-{edge_port}-{}.log",
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map(|d| d.as_millis())
                .unwrap_or_default()
        ));
        let child = ChildGuard::spawn("decloud-operator", cmd, &log)?;
        Ok(Self {
            child,
            edge_port,
            metrics_port,
            kubelet_port,
        })
    }

    /// Waits until `/readyz` answers ok (leader with warm caches).
    pub async fn wait_ready(&mut self) -> anyhow::Result<()> {
        let port = self.metrics_port;
        let child = &mut self.child;
        let res = eventually(Duration::from_secs(60), || {
            let running = child.check_running();
            async move {
                running?;
                let (code, body) = http_get(port, "/readyz").await?;
                if code != 200 {
                    bail!("/readyz: {code} {body}");
                }
                Ok(())
            }
        })
        .await;
        res.with_context(|| {
            format!(
                "the operator did not become ready; log:\n{}",
                self.child.log_tail(30)
            )
        })
    }

    /// `/readyz` (status code, body).
    pub async fn readyz(&self) -> anyhow::Result<(u16, String)> {
        http_get(self.metrics_port, "/readyz").await
    }

    /// Log lines at WARN or ERROR level.
    pub fn warnings(&self) -> Vec<String> {
        std::fs::read_to_string(self.child.log_path())
            .unwrap_or_default()
            .lines()
            .filter(|l| l.contains(" WARN ") || l.contains(" ERROR "))
            .map(str::to_string)
            .collect()
    }

    /// The operator's Prometheus text.
    pub async fn metrics(&self) -> anyhow::Result<String> {
        let (code, body) = http_get(self.metrics_port, "/metrics").await?;
        if code != 200 {
            bail!("/metrics: {code}");
        }
        Ok(body)
    }

    /// The value of the first sample of `name` whose labels contain `labels` (e.g.
    /// `reason="revoked"`), if any.
    pub async fn metric(&self, name: &str, labels: &str) -> anyhow::Result<Option<f64>> {
        let text = self.metrics().await?;
        Ok(text
            .lines()
            .filter(|l| !l.starts_with('#'))
            .filter(|l| l.split(['{', ' ']).next() == Some(name))
            .filter(|l| l.contains(labels))
            .find_map(|l| l.rsplit(' ').next()?.parse().ok()))
    }
}

/// A running `edge-kubelet` on the local Docker engine.
pub struct EdgeProcess {
    /// The process (SIGKILL-able).
    pub child: ChildGuard,
    /// Provider name.
    pub name: String,
    /// Its state folder (kept across restarts).
    pub state_dir: PathBuf,
}

impl EdgeProcess {
    /// Starts edge-kubelet `name` against `operator` with `labels` and a 1 s heartbeat; a
    /// restart with the same `state_dir` re-adopts its containers.
    pub fn start(
        env: &TestEnv,
        operator: &OperatorProcess,
        name: &str,
        labels: &[&str],
    ) -> anyhow::Result<Self> {
        let state_dir = env.dir().join(format!("edge-{name}"));
        std::fs::create_dir_all(&state_dir)?;
        let mut cmd = Command::new(binary("edge-kubelet")?);
        cmd.env(
            "RUST_LOG",
            std::env::var("RUST_LOG").unwrap_or_else(|_| "info".into()),
        )
        .args([
            "run",
            "--operator",
            &format!("http://127.0.0.1:{}", operator.edge_port),
            "--name",
            name,
            "--state-dir",
            &state_dir.to_string_lossy(),
            "--heartbeat-interval",
            "1s",
            "--runtime",
            "docker",
        ]);
        for l in labels {
            cmd.args(["--label", l]);
        }
        let child = ChildGuard::spawn(name, cmd, &env.dir().join(format!("edge-{name}.log")))?;
        Ok(Self {
            child,
            name: name.to_string(),
            state_dir,
        })
    }

    /// The edge's log file.
    pub fn log(&self) -> &Path {
        self.child.log_path()
    }
}

/// Builds the test image `decloud-test/busybox:1` (idempotent).
pub fn busybox_image() -> anyhow::Result<String> {
    let out = Command::new("bash")
        .arg(repo_root().join("e2e/images/busybox-image.sh"))
        .output()
        .context("running e2e/images/busybox-image.sh")?;
    if !out.status.success() {
        bail!(
            "building the test image failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    Ok(String::from_utf8_lossy(&out.stdout).trim().to_string())
}

/// Runs `docker` with `args`, failing with its stderr.
pub fn docker(args: &[&str]) -> anyhow::Result<String> {
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

/// Ids of the containers (running or not) carrying `label` (`key=value`).
pub fn containers_with_label(label: &str) -> anyhow::Result<Vec<String>> {
    Ok(docker(&[
        "ps",
        "-aq",
        "--no-trunc",
        "--filter",
        &format!("label={label}"),
    ])?
    .lines()
    .map(str::to_string)
    .collect())
}

/// Removes, on drop, every container an edge of these nodes created (`decloud.dev/node`).
pub struct ContainerSweeper {
    nodes: Vec<String>,
}

impl ContainerSweeper {
    /// Sweeps the containers of `nodes` (node names, `edge-<provider>`) when dropped.
    pub fn new(nodes: &[String]) -> Self {
        Self {
            nodes: nodes.to_vec(),
        }
    }

    /// Removes them now.
    pub fn sweep(&self) {
        for node in &self.nodes {
            if let Ok(ids) = containers_with_label(&format!("decloud.dev/node={node}")) {
                for id in ids {
                    let _ = docker(&["rm", "-f", &id]);
                }
            }
        }
    }
}

impl Drop for ContainerSweeper {
    fn drop(&mut self) {
        self.sweep();
    }
}

/// A minimal HTTP/1.1 GET on 127.0.0.1 (status code, body).
pub async fn http_get(port: u16, path: &str) -> anyhow::Result<(u16, String)> {
    let mut s = tokio::time::timeout(
        Duration::from_secs(2),
        tokio::net::TcpStream::connect(("127.0.0.1", port)),
    )
    .await
    .context("connect timed out")??;
    s.write_all(
        format!("GET {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n").as_bytes(),
    )
    .await?;
    let mut buf = Vec::new();
    tokio::time::timeout(Duration::from_secs(5), s.read_to_end(&mut buf))
        .await
        .context("read timed out")??;
    let text = String::from_utf8_lossy(&buf);
    let (head, body) = text.split_once("\r\n\r\n").unwrap_or((&text, ""));
    let code = head
        .split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .context("no HTTP status")?;
    let body = if head
        .to_ascii_lowercase()
        .contains("transfer-encoding: chunked")
    {
        dechunk(body)
    } else {
        body.to_string()
    };
    Ok((code, body))
}

fn dechunk(mut s: &str) -> String {
    let mut out = String::new();
    while let Some((size, rest)) = s.split_once("\r\n") {
        let Ok(n) = usize::from_str_radix(size.trim(), 16) else {
            break;
        };
        if n == 0 || rest.len() < n {
            break;
        }
        out.push_str(&rest[..n]);
        s = rest[n..].trim_start_matches("\r\n");
    }
    out
}
