//! The DeCloud processes of a suite: the real `decloud-operator` and real `edge-kubelet`s,
//! started against a [`TestEnv`], plus Docker look-ups and clean-up of what edges left behind.

use std::{
    path::{Path, PathBuf},
    process::Command,
    sync::Arc,
    time::Duration,
};

use anyhow::{Context, bail, ensure};
use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper_util::{
    client::legacy::{Client as LegacyClient, connect::HttpConnector},
    rt::TokioExecutor,
};

use decloud_crds::contracts::{WORKLOAD_LABEL, container_labels, node_name};
use decloud_crds::{Provider, ProviderPhase};
use k8s_openapi::api::core::v1::Pod;
use kube::{Api, Client, api::ListParams};

use crate::engine::{DockerEngine, Engines};
use crate::{ChildGuard, TestEnv, binary, eventually, free_port};

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
    /// Port of the public HTTP gateway (a free loopback port, so suites never collide).
    pub gateway_port: u16,
    /// A join token (valid 1 h) from `decloud-operator token create`.
    pub join_token: String,
    /// The operator CA's pin, `sha256:<hex>`.
    pub ca_hash: String,
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
        Self::spawn_on(
            env,
            [free_port()?, free_port()?, free_port()?, free_port()?],
            extra,
        )
    }

    /// Starts another operator on this one's ports (after this one was killed): a restart.
    pub fn respawn(&self, env: &TestEnv, extra: &[&str]) -> anyhow::Result<Self> {
        Self::spawn_on(
            env,
            [
                self.edge_port,
                self.metrics_port,
                self.kubelet_port,
                self.gateway_port,
            ],
            extra,
        )
    }

    fn spawn_on(env: &TestEnv, ports: [u16; 4], extra: &[&str]) -> anyhow::Result<Self> {
        let [edge_port, metrics_port, kubelet_port, gateway_port] = ports;
        // Made first: this also makes the CA (kept in the cluster) the operator then serves with.
        let (join_token, ca_hash) = create_join_token(env.kubeconfig(), "1h")?;
        let mut cmd = Command::new(binary("decloud-operator")?);
        // The chart's ServiceAccount and RBAC, never cluster-admin: what the chart does not
        // grant fails the suites.
        cmd.env("KUBECONFIG", env.operator_kubeconfig()?)
            .env(
                "RUST_LOG",
                std::env::var("RUST_LOG").unwrap_or_else(|_| "info".into()),
            )
            .args(["run", "--edge-listen", &format!("127.0.0.1:{edge_port}")])
            .args(["--metrics-listen", &format!("127.0.0.1:{metrics_port}")])
            .args(["--kubelet-port", &kubelet_port.to_string()])
            .arg("--kubelet-client-ca")
            .arg(env.kubelet_client_ca());
        if !extra.contains(&"--gateway-listen") {
            cmd.args(["--gateway-listen", &format!("127.0.0.1:{gateway_port}")]);
        }
        cmd.args(extra);
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
            gateway_port,
            join_token,
            ca_hash,
        })
    }

    /// The URL edges dial (TLS).
    pub fn edge_url(&self) -> String {
        format!("https://127.0.0.1:{}", self.edge_port)
    }

    /// `edge-kubelet run` flags to reach this operator and join it on first start:
    /// `--operator URL --token T --ca-hash H`.
    pub fn edge_args(&self) -> Vec<String> {
        vec![
            "--operator".into(),
            self.edge_url(),
            "--token".into(),
            self.join_token.clone(),
            "--ca-hash".into(),
            self.ca_hash.clone(),
        ]
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

    /// Fails if the chart's RBAC refused the operator anything or the operator panicked: the end
    /// of every suite that runs it with the chart's ServiceAccount.
    pub fn ensure_clean(&self) -> anyhow::Result<()> {
        let forbidden = self.forbidden();
        ensure!(
            forbidden.is_empty(),
            "refused by the chart's RBAC: {forbidden:?}"
        );
        if self.warnings().iter().any(|w| w.contains("panicked")) {
            bail!("the operator panicked");
        }
        Ok(())
    }

    /// Log lines where the API server refused the operator (its ServiceAccount) a permission:
    /// what the chart's RBAC does not grant. Suites fail on any.
    pub fn forbidden(&self) -> Vec<String> {
        std::fs::read_to_string(self.child.log_path())
            .unwrap_or_default()
            .lines()
            .filter(|l| l.contains("forbidden") && l.contains("system:serviceaccount"))
            .map(str::to_string)
            .collect()
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

/// A running `edge-kubelet` on its own Docker engine (the environment's, per provider name:
/// a restarted edge finds its engine and containers again).
pub struct EdgeProcess {
    /// The process (SIGKILL-able).
    pub child: ChildGuard,
    /// Provider name.
    pub name: String,
    /// Its state folder (kept across restarts).
    pub state_dir: PathBuf,
    /// Its Docker engine (none for the simulated runtime).
    pub engine: Option<Arc<DockerEngine>>,
}

impl EdgeProcess {
    /// Starts edge-kubelet `name` against `operator` with `labels` and a 1 s heartbeat, joining
    /// with the operator's token over TLS on first start; a restart with the same `state_dir`
    /// re-adopts its containers (and reuses its stored credential).
    pub fn start(
        env: &TestEnv,
        operator: &OperatorProcess,
        name: &str,
        labels: &[&str],
    ) -> anyhow::Result<Self> {
        Self::start_with(env, name, labels, &operator.edge_args())
    }

    /// Starts edge-kubelet `name` with exactly `connect` as its operator flags (`--operator`,
    /// and `--token`/`--ca-hash` or none) plus `labels` and a 1 s heartbeat.
    pub fn start_with(
        env: &TestEnv,
        name: &str,
        labels: &[&str],
        connect: &[String],
    ) -> anyhow::Result<Self> {
        Self::spawn(env, name, labels, connect, "docker", &[])
    }

    /// Starts edge-kubelet `name` against `operator` with the SIMULATED runtime (no container
    /// ever runs): a real edge process and session for tests of liveness, not of pods.
    pub fn start_simulated(
        env: &TestEnv,
        operator: &OperatorProcess,
        name: &str,
    ) -> anyhow::Result<Self> {
        Self::spawn(env, name, &[], &operator.edge_args(), "simulated", &[])
    }

    /// [`EdgeProcess::start`] with `extra` flags for `edge-kubelet run` (e.g. `--schedule`).
    pub fn start_args(
        env: &TestEnv,
        operator: &OperatorProcess,
        name: &str,
        labels: &[&str],
        extra: &[&str],
    ) -> anyhow::Result<Self> {
        Self::spawn(env, name, labels, &operator.edge_args(), "docker", extra)
    }

    fn spawn(
        env: &TestEnv,
        name: &str,
        labels: &[&str],
        connect: &[String],
        runtime: &str,
        extra: &[&str],
    ) -> anyhow::Result<Self> {
        let state_dir = Self::state_dir_of(env, name);
        std::fs::create_dir_all(&state_dir)?;
        let engine = match runtime {
            "docker" => Some(env.engine(name)?),
            _ => None,
        };
        let mut cmd = Command::new(binary("edge-kubelet")?);
        cmd.env(
            "RUST_LOG",
            std::env::var("RUST_LOG").unwrap_or_else(|_| "info".into()),
        )
        .arg("run")
        .args(connect)
        .args([
            "--name",
            name,
            "--state-dir",
            &state_dir.to_string_lossy(),
            "--heartbeat-interval",
            "1s",
            "--runtime",
            runtime,
            // Each edge's console on a port of its own (many edges share this machine).
            "--console-listen",
            "127.0.0.1:0",
        ]);
        if let Some(engine) = &engine {
            // Its own engine; the test images come from the environment's loopback
            // registries, which an edge refuses unless told (they are IP literals).
            cmd.args(["--docker-host", &engine.host()])
                .args(["--allow-registry", &crate::registry::allowed_registries()?]);
        }
        for l in labels {
            cmd.args(["--label", l]);
        }
        cmd.args(extra);
        let child = ChildGuard::spawn(name, cmd, &env.dir().join(format!("edge-{name}.log")))?;
        Ok(Self {
            child,
            name: name.to_string(),
            state_dir,
            engine,
        })
    }

    /// Its Docker engine (fails for the simulated runtime).
    pub fn engine(&self) -> anyhow::Result<&DockerEngine> {
        self.engine
            .as_deref()
            .with_context(|| format!("edge {} has no Docker engine", self.name))
    }

    /// Runs `docker args` against its engine.
    pub fn docker(&self, args: &[&str]) -> anyhow::Result<String> {
        self.engine()?.docker(args)
    }

    /// The state folder edge `name` keeps in `env` (credential, CA, adopted containers).
    pub fn state_dir_of(env: &TestEnv, name: &str) -> PathBuf {
        env.dir().join(format!("edge-{name}"))
    }

    /// Its virtual node's name.
    pub fn node(&self) -> String {
        node_name(&self.name)
    }

    /// The edge's log file.
    pub fn log(&self) -> &Path {
        self.child.log_path()
    }
}

impl Drop for EdgeProcess {
    /// Stops the edge, then removes its egress rules: they outlive the process on purpose
    /// (its containers keep running), but a suite leaves no rules on the machine. A restart
    /// with the same name installs them again.
    fn drop(&mut self) {
        self.child.stop(Duration::from_secs(3));
        if let Err(e) = edge_kubelet::remove_egress_policy(&self.node()) {
            eprintln!("cannot remove the egress rules of {}: {e}", self.node());
        }
    }
}

/// Runs `decloud-operator token create --ttl <ttl>` against the cluster of `kubeconfig`:
/// (token, CA hash).
pub fn create_join_token(kubeconfig: &Path, ttl: &str) -> anyhow::Result<(String, String)> {
    let out = Command::new(binary("decloud-operator")?)
        .env("KUBECONFIG", kubeconfig)
        .args(["token", "create", "--ttl", ttl])
        .output()
        .context("running decloud-operator token create")?;
    if !out.status.success() {
        bail!(
            "decloud-operator token create: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    let text = String::from_utf8_lossy(&out.stdout);
    let field = |label: &str| {
        text.lines()
            .find_map(|l| l.strip_prefix(label))
            .map(|v| v.trim().to_string())
            .with_context(|| format!("no {label:?} in the output of token create:\n{text}"))
    };
    Ok((field("Join token:")?, field("CA hash:")?))
}

/// The test image `decloud-test/busybox:1`, built with the host's engine and pushed to the
/// environment's registry: its reference there (`127.0.0.1:PORT/decloud-test/busybox:1`),
/// which every edge pulls into its own engine.
pub fn busybox_image() -> anyhow::Result<String> {
    crate::registry::test_image("decloud-test/busybox:1")
}

/// The stateful example's image `decloud-test/redis:7` (Debian's redis-server, redis-tools
/// and busybox), built with the host's engine and pushed to the environment's registry: its
/// reference there, which every edge pulls into its own engine.
pub fn redis_image() -> anyhow::Result<String> {
    crate::registry::registry()?.push(
        &crate::registry::local_redis()?,
        crate::registry::REDIS_IMAGE,
    )
}

/// The size of the host engine's image behind registry reference `reference` (its local
/// name `decloud-test/…`), as `docker images` shows it.
pub fn docker_image_size(reference: &str) -> anyhow::Result<String> {
    let local = reference.split_once('/').map_or(reference, |(_, r)| r);
    let out = Command::new("docker")
        .args(["image", "inspect", "-f", "{{.Size}}", local])
        .output()?;
    let bytes: u64 = String::from_utf8_lossy(&out.stdout).trim().parse()?;
    Ok(format!("{:.1} MiB", bytes as f64 / (1 << 20) as f64))
}

/// Runs `docker args` against `engine` (an edge's), failing with its stderr.
pub fn docker(engine: &DockerEngine, args: &[&str]) -> anyhow::Result<String> {
    engine.docker(args)
}

/// Ids of the containers (running or not) carrying `label` (`key=value`) on `engine`.
pub fn containers_with_label(engine: &DockerEngine, label: &str) -> anyhow::Result<Vec<String>> {
    Ok(docker(
        engine,
        &[
            "ps",
            "-aq",
            "--no-trunc",
            "--filter",
            &format!("label={label}"),
        ],
    )?
    .lines()
    .map(str::to_string)
    .collect())
}

/// Ids of the running containers named `container` of the pod with `uid` on `engine`.
pub fn running_containers(
    engine: &DockerEngine,
    uid: &str,
    container: &str,
) -> anyhow::Result<Vec<String>> {
    Ok(docker(
        engine,
        &[
            "ps",
            "-q",
            "--no-trunc",
            "--filter",
            &format!("label={}={uid}", container_labels::POD_UID),
            "--filter",
            &format!("label={}={container}", container_labels::CONTAINER),
        ],
    )?
    .lines()
    .map(str::to_string)
    .collect())
}

/// Ids of the containers (running or not) an edge created on `engine` for the pod with `uid`.
pub fn containers_of_pod(engine: &DockerEngine, uid: &str) -> anyhow::Result<Vec<String>> {
    containers_with_label(engine, &format!("{}={uid}", container_labels::POD_UID))
}

/// Ids of the containers (running or not) any edge of `env` created for the pod with `uid`,
/// on every engine started so far: for a pod that may never have reached a node.
pub fn containers_of_pod_anywhere(env: &TestEnv, uid: &str) -> anyhow::Result<Vec<String>> {
    let mut out = Vec::new();
    for engine in env.engines().all() {
        out.extend(containers_of_pod(&engine, uid)?);
    }
    Ok(out)
}

/// The engine of the node `pod` is bound to.
pub fn engine_of_pod(env: &TestEnv, pod: &Pod) -> anyhow::Result<Arc<DockerEngine>> {
    env.engine_of_node(&node_of(pod))
}

/// Removes, on drop, every container an edge of these nodes created (`decloud.dev/node`),
/// and the edges' egress rules (their iptables chains, which outlive an edge process on
/// purpose: its containers keep running).
pub struct ContainerSweeper {
    nodes: Vec<String>,
    engines: Arc<Engines>,
}

impl ContainerSweeper {
    /// Sweeps the containers of `nodes` (node names, `edge-<provider>`) from their engines in
    /// `env` when dropped.
    pub fn new(env: &TestEnv, nodes: &[String]) -> Self {
        Self::with_engines(env.engines(), nodes)
    }

    /// As [`ContainerSweeper::new`], with the engines of `engines`.
    pub fn with_engines(engines: Arc<Engines>, nodes: &[String]) -> Self {
        Self {
            nodes: nodes.to_vec(),
            engines,
        }
    }

    /// Removes them now.
    pub fn sweep(&self) {
        for node in &self.nodes {
            if let Some(engine) = self.engines.of_node(node) {
                let label = format!("{}={node}", container_labels::NODE);
                if let Ok(ids) = containers_with_label(&engine, &label) {
                    for id in ids {
                        let _ = engine.docker(&["rm", "-f", &id]);
                    }
                }
            }
            if let Err(e) = edge_kubelet::remove_egress_policy(node) {
                eprintln!("cannot remove the egress rules of {node}: {e}");
            }
        }
    }
}

impl Drop for ContainerSweeper {
    fn drop(&mut self) {
        self.sweep();
    }
}

/// One HTTP response: status code, head (status line and headers), body.
pub struct HttpReply {
    /// Status code.
    pub code: u16,
    /// The status line and the headers, one per line (`name: value`).
    pub head: String,
    /// The whole body (de-chunked).
    pub body: Vec<u8>,
}

impl HttpReply {
    /// The body as (lossy) UTF-8.
    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }
}

/// An HTTP/1.1 GET on 127.0.0.1 (status code, body).
pub async fn http_get(port: u16, path: &str) -> anyhow::Result<(u16, String)> {
    http_get_host(port, "127.0.0.1", path).await
}

/// An HTTP/1.1 GET on 127.0.0.1 with `Host: host` (e.g. through the gateway): (status code,
/// body). Connecting may take 2 s, the answer 5 s more.
pub async fn http_get_host(port: u16, host: &str, path: &str) -> anyhow::Result<(u16, String)> {
    let reply = get(
        port,
        host,
        path,
        Duration::from_secs(2),
        Duration::from_secs(7),
    )
    .await?;
    let body = reply.text();
    Ok((reply.code, body))
}

/// `GET path` on 127.0.0.1:`port` with `Host: host`, the whole exchange bounded by `timeout`.
/// The gateway routes by that Host header, so it is sent as given, not derived from the URL.
pub async fn http_get_reply(
    port: u16,
    host: &str,
    path: &str,
    timeout: Duration,
) -> anyhow::Result<HttpReply> {
    get(port, host, path, timeout, timeout).await
}

/// `POST path` with `body` on 127.0.0.1:`port` with `Host: host` (e.g. through the gateway),
/// the whole exchange bounded by `timeout`.
pub async fn http_post_reply(
    port: u16,
    host: &str,
    path: &str,
    body: &[u8],
    timeout: Duration,
) -> anyhow::Result<HttpReply> {
    request(
        http::Method::POST,
        port,
        host,
        path,
        Bytes::copy_from_slice(body),
        timeout,
        timeout,
    )
    .await
}

/// A GET (see [`request`]).
async fn get(
    port: u16,
    host: &str,
    path: &str,
    connect_timeout: Duration,
    timeout: Duration,
) -> anyhow::Result<HttpReply> {
    request(
        http::Method::GET,
        port,
        host,
        path,
        Bytes::new(),
        connect_timeout,
        timeout,
    )
    .await
}

/// One request on a fresh connection (`Connection: close`, no pooling), as a client that
/// happens by would send it; a non-empty `body` goes with its `Content-Length`.
async fn request(
    method: http::Method,
    port: u16,
    host: &str,
    path: &str,
    body: Bytes,
    connect_timeout: Duration,
    timeout: Duration,
) -> anyhow::Result<HttpReply> {
    let mut connector = HttpConnector::new();
    connector.set_connect_timeout(Some(connect_timeout));
    connector.set_nodelay(true);
    let client: LegacyClient<HttpConnector, Full<Bytes>> =
        LegacyClient::builder(TokioExecutor::new())
            .pool_max_idle_per_host(0)
            .build(connector);
    let what = format!("{method} {path} (Host: {host}) on port {port}");
    let request = http::Request::builder()
        .method(method)
        .uri(format!("http://127.0.0.1:{port}{path}"))
        .header(http::header::HOST, host)
        .header(http::header::CONNECTION, "close")
        .body(Full::new(body))?;
    let exchange = async {
        let (parts, body) = client.request(request).await?.into_parts();
        let body = body.collect().await?.to_bytes().to_vec();
        let mut head = format!("{:?} {}", parts.version, parts.status);
        for (name, value) in &parts.headers {
            head.push_str(&format!(
                "\r\n{name}: {}",
                String::from_utf8_lossy(value.as_bytes())
            ));
        }
        anyhow::Ok(HttpReply {
            code: parts.status.as_u16(),
            head,
            body,
        })
    };
    tokio::time::timeout(timeout, exchange)
        .await
        .with_context(|| format!("{what} timed out"))?
        .with_context(|| what.clone())
}

// === pods and providers in the API ===

/// Whether `pod` has the condition `Ready=True`.
pub fn pod_ready(pod: &Pod) -> bool {
    pod.status
        .as_ref()
        .and_then(|s| s.conditions.as_ref())
        .is_some_and(|cs| cs.iter().any(|c| c.type_ == "Ready" && c.status == "True"))
}

/// The node `pod` is bound to (empty if none).
pub fn node_of(pod: &Pod) -> String {
    pod.spec
        .as_ref()
        .and_then(|s| s.node_name.clone())
        .unwrap_or_default()
}

/// The Docker id of `pod`'s first container, from its status (`docker://<id>`).
pub fn container_id(pod: &Pod) -> anyhow::Result<String> {
    let cs = pod
        .status
        .as_ref()
        .and_then(|s| s.container_statuses.as_ref())
        .and_then(|cs| cs.first())
        .context("no container status")?;
    let id = cs.container_id.clone().context("no containerID")?;
    Ok(id
        .strip_prefix("docker://")
        .context("containerID is not docker://")?
        .to_string())
}

/// The live (not terminating) replica pods of Workload `workload` in `namespace`.
pub async fn workload_pods(
    client: &Client,
    namespace: &str,
    workload: &str,
) -> anyhow::Result<Vec<Pod>> {
    Ok(Api::<Pod>::namespaced(client.clone(), namespace)
        .list(&ListParams::default().labels(&format!("{WORKLOAD_LABEL}={workload}")))
        .await?
        .items
        .into_iter()
        .filter(|p| p.metadata.deletion_timestamp.is_none())
        .collect())
}

/// Every provider in `names` in phase Ready.
pub async fn check_providers_ready(
    client: &Client,
    names: &[impl AsRef<str>],
) -> anyhow::Result<()> {
    for n in names {
        let n = n.as_ref();
        let p = Api::<Provider>::all(client.clone()).get(n).await?;
        let phase = p.status.map(|s| s.phase);
        ensure!(phase == Some(ProviderPhase::Ready), "{n}: {phase:?}");
    }
    Ok(())
}

/// Waits (60 s at most) until every provider in `names` is in phase Ready; shows `operator`'s
/// log if not.
pub async fn wait_providers_ready(
    client: &Client,
    operator: &OperatorProcess,
    names: &[impl AsRef<str>],
) -> anyhow::Result<()> {
    eventually(Duration::from_secs(60), || {
        check_providers_ready(client, names)
    })
    .await
    .with_context(|| {
        // The edges' logs sit beside the operator's (the environment's folder).
        let dir = operator.child.log_path().parent().map(Path::to_path_buf);
        let edges: String = names
            .iter()
            .filter_map(|n| {
                let log = dir.as_ref()?.join(format!("edge-{}.log", n.as_ref()));
                let text = String::from_utf8_lossy(&std::fs::read(&log).ok()?).into_owned();
                let tail: Vec<&str> = text.lines().rev().take(20).collect();
                let tail: Vec<&str> = tail.into_iter().rev().collect();
                Some(format!(
                    "\n--- edge {} log ---\n{}",
                    n.as_ref(),
                    tail.join("\n")
                ))
            })
            .collect();
        format!(
            "edges not Ready; operator log:\n{}{edges}",
            operator.child.log_tail(30)
        )
    })
}

#[cfg(test)]
mod tests {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    use super::*;

    /// A one-shot HTTP/1.1 server on loopback: answers `response` and hands back the request
    /// head it read.
    async fn serve_once(response: &'static str) -> (u16, tokio::task::JoinHandle<String>) {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        let task = tokio::spawn(async move {
            let (mut s, _) = listener.accept().await.unwrap();
            let mut head = Vec::new();
            let mut buf = [0u8; 1024];
            while !head.ends_with(b"\r\n\r\n") {
                let n = s.read(&mut buf).await.unwrap();
                assert!(n > 0, "request head cut short");
                head.extend_from_slice(&buf[..n]);
            }
            s.write_all(response.as_bytes()).await.unwrap();
            String::from_utf8(head).unwrap()
        });
        (port, task)
    }

    #[tokio::test]
    async fn the_host_header_is_sent_as_given_and_chunked_bodies_are_joined() {
        let (port, server) = serve_once(
            "HTTP/1.1 404 Not Found\r\nTransfer-Encoding: chunked\r\nX-Route: none\r\n\r\n\
             5\r\nno ro\r\n9\r\nute here\n\r\n0\r\n\r\n",
        )
        .await;
        let reply = http_get_reply(
            port,
            "hello.default.decloud.localhost",
            "/x?y=1",
            Duration::from_secs(5),
        )
        .await
        .unwrap();
        let head = server.await.unwrap().to_ascii_lowercase();
        assert!(head.starts_with("get /x?y=1 http/1.1\r\n"), "{head}");
        assert!(
            head.contains("\r\nhost: hello.default.decloud.localhost\r\n"),
            "{head}"
        );
        assert!(!head.contains("127.0.0.1"), "{head}");
        assert!(head.contains("\r\nconnection: close\r\n"), "{head}");
        assert_eq!(reply.code, 404);
        assert_eq!(reply.text(), "no route here\n");
        assert!(
            reply.head.starts_with("HTTP/1.1 404 Not Found"),
            "{}",
            reply.head
        );
        assert!(reply.head.contains("x-route: none"), "{}", reply.head);
    }

    #[tokio::test]
    async fn a_silent_server_times_out() {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        let err = http_get_reply(port, "x", "/", Duration::from_millis(300))
            .await
            .err()
            .expect("an answer from a server that never answers");
        assert!(format!("{err:#}").contains("timed out"), "{err:#}");
        drop(listener);
    }
}
