//! Helpers shared by the integration tests: the real Docker engine, the locally built test
//! image, unique node names, container clean-up guards, bounded waiting.
#![allow(dead_code)]

use std::process::Command;
use std::sync::OnceLock;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::Duration;

use decloud_proto as pb;

/// Fails loudly when there is no Docker engine: these tests never skip silently.
pub(crate) fn require_docker() {
    static CHECK: OnceLock<Result<String, String>> = OnceLock::new();
    let r = CHECK.get_or_init(|| {
        let out = Command::new("docker")
            .args(["version", "--format", "{{.Server.Version}}"])
            .output()
            .map_err(|e| format!("cannot run the docker CLI: {e}"))?;
        if out.status.success() {
            Ok(String::from_utf8_lossy(&out.stdout).trim().to_string())
        } else {
            Err(String::from_utf8_lossy(&out.stderr).trim().to_string())
        }
    });
    if let Err(e) = r {
        panic!(
            "edge-kubelet integration tests need a running Docker engine (CI={:?}): {e}",
            std::env::var("CI").ok()
        );
    }
}

/// Builds (once) the busybox test image with e2e/images/busybox-image.sh and returns its tag.
pub(crate) fn test_image() -> String {
    require_docker();
    static TAG: OnceLock<String> = OnceLock::new();
    TAG.get_or_init(|| {
        let script = concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/../e2e/images/busybox-image.sh"
        );
        let out = Command::new("bash")
            .arg(script)
            .output()
            .unwrap_or_else(|e| panic!("cannot run {script}: {e}"));
        assert!(
            out.status.success(),
            "{script} failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).trim().to_string()
    })
    .clone()
}

/// A node name no other test (or test run) uses.
pub(crate) fn unique_node(test: &str) -> String {
    static N: AtomicU32 = AtomicU32::new(0);
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .subsec_nanos();
    format!(
        "t{}-{}-{}-{:x}",
        test,
        std::process::id(),
        N.fetch_add(1, Ordering::Relaxed),
        nanos & 0xffff
    )
}

/// Docker CLI, returning trimmed stdout (empty on failure).
pub(crate) fn docker(args: &[&str]) -> String {
    let out = Command::new("docker")
        .args(args)
        .output()
        .expect("docker CLI");
    String::from_utf8_lossy(&out.stdout).trim().to_string()
}

/// Ids of all containers (running or not) labelled with `label=value`.
pub(crate) fn containers_with_label(label: &str, value: &str) -> Vec<String> {
    docker(&[
        "ps",
        "-aq",
        "--no-trunc",
        "--filter",
        &format!("label={label}={value}"),
    ])
    .lines()
    .map(str::to_string)
    .collect()
}

/// On drop, force-removes every container labelled with this node: no test leaves any behind,
/// whether it passed or not.
pub(crate) struct ContainerSweeper {
    /// Node label value (`edge-<name>`).
    pub(crate) node: String,
}

impl Drop for ContainerSweeper {
    fn drop(&mut self) {
        let ids = containers_with_label("decloud.dev/node", &self.node);
        if !ids.is_empty() {
            let mut args = vec!["rm", "-f"];
            args.extend(ids.iter().map(String::as_str));
            docker(&args);
        }
        // A real edge binary leaves its egress rules (they outlive it on purpose).
        let _ = edge_kubelet::remove_egress_policy(&self.node);
    }
}

/// Polls `f` until it returns `Some`, for at most `patience`; panics with `what` otherwise.
pub(crate) async fn eventually<T>(
    what: &str,
    patience: Duration,
    mut f: impl AsyncFnMut() -> Option<T>,
) -> T {
    let deadline = tokio::time::Instant::now() + patience;
    loop {
        if let Some(v) = f().await {
            return v;
        }
        if tokio::time::Instant::now() > deadline {
            panic!("timed out after {patience:?} waiting for: {what}");
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// A one-container pod.
pub(crate) fn pod(uid: &str, name: &str, image: &str, command: &[&str]) -> pb::PodSpec {
    pb::PodSpec {
        uid: uid.to_string(),
        namespace: "default".to_string(),
        name: name.to_string(),
        restart_policy: pb::RestartPolicy::Always as i32,
        termination_grace_period_seconds: 2,
        spec_hash: "h1".to_string(),
        containers: vec![pb::ContainerSpec {
            name: "main".to_string(),
            image: image.to_string(),
            command: command.iter().map(|s| s.to_string()).collect(),
            ..Default::default()
        }],
        host_aliases: vec![],
        ..Default::default()
    }
}

/// A pod serving /www on port 8080 with busybox httpd, with an httpGet readiness probe.
pub(crate) fn httpd_pod(uid: &str, name: &str, image: &str) -> pb::PodSpec {
    let mut p = pod(
        uid,
        name,
        image,
        &["httpd", "-f", "-p", "8080", "-h", "/www"],
    );
    let c = &mut p.containers[0];
    c.ports = vec![pb::ContainerPort {
        name: "http".into(),
        container_port: 8080,
        protocol: "TCP".into(),
    }];
    c.resources = Some(pb::ResourceSpec {
        cpu_request_millis: 100,
        cpu_limit_millis: 500,
        memory_request_bytes: 16 << 20,
        memory_limit_bytes: 64 << 20,
        ..Default::default()
    });
    c.env = vec![pb::EnvVar {
        name: "GREETING".into(),
        value: "hi".into(),
    }];
    c.readiness_probe = Some(pb::Probe {
        handler: Some(pb::probe::Handler::HttpGet(pb::HttpGetAction {
            path: "/".into(),
            port: 8080,
        })),
        period_seconds: 1,
        ..Default::default()
    });
    p
}

/// The running container id inside a reported status (`docker://<id>` → `<id>`).
pub(crate) fn container_id(s: &pb::PodStatus) -> Option<String> {
    let c = s.containers.first()?;
    c.container_id.split("://").nth(1).map(str::to_string)
}

/// GET / on `ip:port` over plain TCP; returns the whole response.
pub(crate) async fn http_get(ip: &str, port: u16) -> std::io::Result<String> {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut s = tokio::time::timeout(
        Duration::from_secs(2),
        tokio::net::TcpStream::connect((ip, port)),
    )
    .await
    .map_err(|_| std::io::Error::other("connect timeout"))??;
    s.write_all(b"GET / HTTP/1.0\r\nHost: pod\r\n\r\n").await?;
    let mut out = String::new();
    tokio::time::timeout(Duration::from_secs(2), s.read_to_string(&mut out))
        .await
        .map_err(|_| std::io::Error::other("read timeout"))??;
    Ok(out)
}
