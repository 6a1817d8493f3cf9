//! The gateway and `kubectl logs`, end to end: a real kube-apiserver, the real
//! `decloud-operator` (gateway and kubelet API), three real `edge-kubelet`s and the real Docker
//! engine. Traffic goes only to 127.0.0.1 and to the suite's own containers.
//!
//! Needs `cargo build -p decloud-operator -p edge-kubelet --bins` first.

use std::collections::BTreeSet;
use std::process::Command;
use std::time::{Duration, Instant};

use anyhow::{Context as _, bail, ensure};
use decloud_crds::Workload;
use decloud_crds::contracts::node_name;
use decloud_e2e::cluster::{
    ContainerSweeper, EdgeProcess, HttpReply, OperatorProcess, busybox_image, container_id,
    engine_of_pod, http_get_reply, node_of, pod_ready, wait_providers_ready, workload_pods,
};
use decloud_e2e::{TestEnv, eventually, free_port};
use k8s_openapi::api::core::v1::Pod;
use kube::api::Api;
use kube::{Client, ResourceExt};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

const NS: &str = "default";
const HELLO_HOST: &str = "hello.default.decloud.localhost";

/// A Workload of busybox containers running `script`, exposing `port`.
fn workload(name: &str, replicas: u32, script: &str, port: u16, probe: &str) -> String {
    // The test registry's reference (built and pushed once per process).
    let image = busybox_image().expect("the busybox test image");
    format!(
        r#"apiVersion: decloud.dev/v1alpha1
kind: Workload
metadata: {{name: {name}, namespace: {NS}}}
spec:
  replicas: {replicas}
  template:
    metadata: {{labels: {{app: {name}}}}}
    spec:
      terminationGracePeriodSeconds: 1
      containers:
        - name: web
          image: {image}
          command: ["/bin/sh", "-c", {script:?}]
          ports: [{{containerPort: {port}}}]
          resources: {{requests: {{cpu: 50m, memory: 16Mi}}, limits: {{cpu: 500m, memory: 64Mi}}}}
          readinessProbe: {probe}
  placement: {{spread: Required}}
  expose: {{port: {port}}}
  failover: {{graceSeconds: 3}}
"#
    )
}

/// Each replica names itself on `/`, serves a 10 MiB random `/big`, and prints a numbered
/// tick every second (for `kubectl logs`).
const HELLO_SCRIPT: &str = "echo \"replica $(hostname)\" > /www/index.html; \
    dd if=/dev/urandom of=/www/big bs=1048576 count=10 2>/dev/null; \
    echo serving; \
    (i=0; while true; do echo tick $i; i=$((i+1)); sleep 1; done) & \
    exec httpd -f -p 8080 -h /www";

/// `GET path` with `Host: host` through the gateway on 127.0.0.1:`port` (10 s at most).
async fn get(port: u16, host: &str, path: &str) -> anyhow::Result<HttpReply> {
    http_get_reply(port, host, path, Duration::from_secs(10)).await
}

/// Ready replicas of Workload `name`.
async fn ready_pods(client: &Client, name: &str) -> anyhow::Result<Vec<Pod>> {
    Ok(workload_pods(client, NS, name)
        .await?
        .into_iter()
        .filter(pod_ready)
        .collect())
}

/// Runs kubectl for at most `limit` (a bound for `-f`), returning stdout and stderr.
fn kubectl_bounded(
    env: &TestEnv,
    args: &[&str],
    limit: Duration,
) -> anyhow::Result<(String, String)> {
    let out = Command::new("timeout")
        .arg(format!("{}s", limit.as_secs()))
        .arg(env.bin_dir().join("kubectl"))
        .args(args)
        .env("KUBECONFIG", env.kubeconfig())
        .output()
        .context("running kubectl")?;
    Ok((
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    ))
}

/// Reads from `s` into `got` until it holds `want` bytes.
async fn read_until(s: &mut TcpStream, got: &mut Vec<u8>, want: usize) -> anyhow::Result<()> {
    let mut chunk = [0u8; 4096];
    while got.len() < want {
        let n = s.read(&mut chunk).await?;
        ensure!(
            n > 0,
            "echo closed after {:?}",
            String::from_utf8_lossy(got)
        );
        got.extend_from_slice(&chunk[..n]);
    }
    Ok(())
}

/// sha256 of `bytes`, by the machine's `sha256sum`.
fn sha256(env: &TestEnv, bytes: &[u8]) -> anyhow::Result<String> {
    let f = env.dir().join("download.bin");
    std::fs::write(&f, bytes)?;
    let out = Command::new("sha256sum").arg(&f).output()?;
    ensure!(out.status.success(), "sha256sum failed");
    Ok(String::from_utf8_lossy(&out.stdout)
        .split_whitespace()
        .next()
        .unwrap_or_default()
        .to_string())
}

/// The scenario: the cluster, three providers, and the gateway's port.
struct Gateway {
    client: Client,
    names: Vec<String>,
    /// The gateway's port on 127.0.0.1.
    port: u16,
    sweeper: ContainerSweeper,
    env: TestEnv,
}

impl Gateway {
    async fn start() -> anyhow::Result<Self> {
        let env = TestEnv::start().await?;
        busybox_image()?;
        let run = std::process::id();
        let names: Vec<String> = ["a", "b", "c"]
            .iter()
            .map(|s| format!("gw-{run}-{s}"))
            .collect();
        let nodes: Vec<String> = names.iter().map(|n| node_name(n)).collect();
        Ok(Self {
            client: env.client(),
            sweeper: ContainerSweeper::new(&env, &nodes),
            names,
            port: free_port()?,
            env,
        })
    }

    /// The operator, its gateway on [`Gateway::port`] and publishing URLs there.
    async fn start_operator(&self) -> anyhow::Result<OperatorProcess> {
        let gateway_listen = format!("127.0.0.1:{}", self.port);
        let url_template = format!("http://{{host}}:{}", self.port);
        OperatorProcess::start(
            &self.env,
            &[
                "--gateway-listen",
                &gateway_listen,
                "--url-template",
                &url_template,
                "--identity",
                "e2e-gateway",
            ],
        )
        .await
    }
}

/// What the first requests saw: the replicas that answered, every response (head and body)
/// for the leak check, and the ready pods of "hello".
struct Served {
    seen: BTreeSet<String>,
    texts: Vec<String>,
    hello_pods: Vec<Pod>,
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn gateway_routes_through_edges_and_kubectl_logs_work() -> anyhow::Result<()> {
    let g = Gateway::start().await?;
    let operator = g.start_operator().await?;
    let mut edges = Vec::new();
    for n in &g.names {
        edges.push(EdgeProcess::start(&g.env, &operator, n, &[])?);
    }
    wait_providers_ready(&g.client, &operator, &g.names).await?;
    apply_the_workloads(&g)?;

    let mut served = both_replicas_serve_through_the_gateway(&g, &operator).await?;
    a_10_mib_response_arrives_intact(&g, &mut served).await?;
    raw_bytes_pass_both_ways(&g).await?;
    errors_are_clear(&g).await?;
    no_address_leaks(&g, &served).await?;
    kubectl_logs_and_exec_work(&g, &served)?;
    let (victim_node, killed) = the_url_survives_a_sigkilled_edge(&g, &mut edges, &served).await?;
    the_lost_replica_is_replaced_and_serves(&g, &victim_node, killed).await?;

    show_tunnel_metrics(&operator).await?;
    for n in ["hello", "echo", "idle"] {
        g.env.kubectl(&["delete", "wl", n, "--wait=false"])?;
    }
    drop(edges);
    g.sweeper.sweep();
    if operator.warnings().iter().any(|w| w.contains("panicked")) {
        bail!("the operator panicked");
    }
    Ok(())
}

/// "hello" (2 replicas of [`HELLO_SCRIPT`]), "echo" (a TCP echo) and "idle" (never ready:
/// nothing listens on the probed port).
fn apply_the_workloads(g: &Gateway) -> anyhow::Result<()> {
    let env = &g.env;
    let tcp_probe = |port: u16| format!("{{tcpSocket: {{port: {port}}}, periodSeconds: 1}}");
    env.kubectl_stdin(
        &["apply", "-f", "-"],
        &workload(
            "hello",
            2,
            HELLO_SCRIPT,
            8080,
            "{httpGet: {path: /, port: 8080}, periodSeconds: 1}",
        ),
    )?;
    env.kubectl_stdin(
        &["apply", "-f", "-"],
        &workload(
            "echo",
            1,
            "exec nc -ll -p 9000 -e cat",
            9000,
            &tcp_probe(9000),
        ),
    )?;
    env.kubectl_stdin(
        &["apply", "-f", "-"],
        &workload("idle", 1, "exec sleep 3600", 8080, &tcp_probe(8080)),
    )?;
    Ok(())
}

/// Both replicas serve through the gateway: 20 requests are answered by both.
async fn both_replicas_serve_through_the_gateway(
    g: &Gateway,
    operator: &OperatorProcess,
) -> anyhow::Result<Served> {
    let (client, gw) = (&g.client, g.port);
    let started = Instant::now();
    eventually(Duration::from_secs(90), || async {
        ensure!(
            ready_pods(client, "hello").await?.len() == 2,
            "hello not 2/2 ready"
        );
        ensure!(
            ready_pods(client, "echo").await?.len() == 1,
            "echo not ready"
        );
        let r = get(gw, HELLO_HOST, "/").await?;
        ensure!(r.code == 200, "{} {}", r.head, r.text());
        Ok(())
    })
    .await
    .with_context(|| {
        format!(
            "hello not served; operator log:\n{}",
            operator.child.log_tail(30)
        )
    })?;
    println!(
        "hello 2/2 ready and served through the gateway {:.1}s after apply",
        started.elapsed().as_secs_f64()
    );
    let mut seen = BTreeSet::new();
    let mut texts = Vec::new();
    for _ in 0..20 {
        let r = get(gw, HELLO_HOST, "/").await?;
        ensure!(r.code == 200, "{} {}", r.head, r.text());
        seen.insert(r.text().trim().to_string());
        texts.push(format!("{}\r\n\r\n{}", r.head, r.text()));
    }
    println!("20 requests, answered by: {seen:?}");
    ensure!(seen.len() == 2, "both replicas should serve: {seen:?}");
    let hello_pods = ready_pods(client, "hello").await?;
    for p in &hello_pods {
        ensure!(
            seen.contains(&format!("replica {}", p.name_any())),
            "replica {} not seen in {seen:?}",
            p.name_any()
        );
    }
    Ok(Served {
        seen,
        texts,
        hello_pods,
    })
}

/// A 10 MiB response arrives intact: its sha256 is that of a replica's file.
async fn a_10_mib_response_arrives_intact(g: &Gateway, served: &mut Served) -> anyhow::Result<()> {
    let started = Instant::now();
    let big = get(g.port, HELLO_HOST, "/big").await?;
    let elapsed = started.elapsed();
    ensure!(big.code == 200, "{}", big.head);
    ensure!(
        big.body.len() == 10 * 1024 * 1024,
        "{} bytes",
        big.body.len()
    );
    let got = sha256(&g.env, &big.body)?;
    let mut sums = BTreeSet::new();
    for p in &served.hello_pods {
        let id = container_id(p)?;
        let out = engine_of_pod(&g.env, p)?.docker(&["exec", &id, "sha256sum", "/www/big"])?;
        sums.insert(
            out.split_whitespace()
                .next()
                .unwrap_or_default()
                .to_string(),
        );
    }
    ensure!(
        sums.contains(&got),
        "sha256 {got} not among the replicas' {sums:?}"
    );
    println!(
        "10 MiB through the gateway in {:.0} ms ({:.0} MiB/s), sha256 {got} matches the replica's file",
        elapsed.as_secs_f64() * 1000.0,
        10.0 / elapsed.as_secs_f64()
    );
    served.texts.push(format!("{}\r\n\r\n{}", big.head, ""));
    Ok(())
}

/// A raw byte stream past the request head: the echo container returns everything. A raw
/// socket on purpose: an HTTP client sends nothing after an Upgrade it got no answer to.
async fn raw_bytes_pass_both_ways(g: &Gateway) -> anyhow::Result<()> {
    let mut s = TcpStream::connect(("127.0.0.1", g.port)).await?;
    let head = "GET /chat HTTP/1.1\r\nHost: echo.default.decloud.localhost\r\nUpgrade: raw\r\nConnection: Upgrade\r\n\r\n";
    s.write_all(head.as_bytes()).await?;
    s.write_all(b"ping-1;").await?;
    // The app sees the client as the gateway tells it (X-Forwarded-*), then raw bytes.
    let forwarded = head.replacen(
        "\r\n\r\n",
        "\r\nX-Forwarded-For: 127.0.0.1\r\nX-Forwarded-Proto: http\r\nX-Forwarded-Host: echo.default.decloud.localhost\r\n\r\n",
        1,
    );
    let want_first = format!("{forwarded}ping-1;");
    let mut got = Vec::new();
    tokio::time::timeout(
        Duration::from_secs(10),
        read_until(&mut s, &mut got, want_first.len()),
    )
    .await
    .context("echo timed out")??;
    s.write_all(b"ping-2;").await?;
    let want = format!("{want_first}ping-2;");
    tokio::time::timeout(
        Duration::from_secs(10),
        read_until(&mut s, &mut got, want.len()),
    )
    .await
    .context("echo timed out")??;
    ensure!(
        got == want.as_bytes(),
        "{:?}",
        String::from_utf8_lossy(&got)
    );
    drop(s);
    println!(
        "raw connection: request head (with the gateway's X-Forwarded-*) and later bytes echoed both ways"
    );
    Ok(())
}

/// Clear errors: unknown host (404), no ready replica (503).
async fn errors_are_clear(g: &Gateway) -> anyhow::Result<()> {
    let r = get(g.port, "nope.default.decloud.localhost", "/").await?;
    ensure!(
        r.code == 404 && r.text().contains("nope.default.decloud.localhost"),
        "{} {}",
        r.head,
        r.text()
    );
    println!("unknown host: 404 {}", r.text().trim());
    let r = get(g.port, "idle.default.decloud.localhost", "/").await?;
    ensure!(
        r.code == 503 && r.text().contains("no ready replica"),
        "{} {}",
        r.head,
        r.text()
    );
    println!("no ready replica: 503 {}", r.text().trim());
    Ok(())
}

/// The status URL is the gateway's; no provider or pod address leaks in any response or in
/// the Workload's status.
async fn no_address_leaks(g: &Gateway, served: &Served) -> anyhow::Result<()> {
    let wl = Api::<Workload>::namespaced(g.client.clone(), NS)
        .get("hello")
        .await?;
    let status = serde_json::to_string(&wl.status)?;
    let want_url = format!("http://{HELLO_HOST}:{}", g.port);
    ensure!(status.contains(&want_url), "status url: {status}");
    let mut addresses: Vec<String> = served
        .hello_pods
        .iter()
        .filter_map(|p| p.status.as_ref()?.pod_ip.clone())
        .collect();
    addresses.push("127.0.0.1".into());
    if let Ok(out) = Command::new("hostname").arg("-I").output() {
        addresses.extend(
            String::from_utf8_lossy(&out.stdout)
                .split_whitespace()
                .map(str::to_string),
        );
    }
    for text in served.texts.iter().chain([&status]) {
        for a in &addresses {
            ensure!(!text.contains(a.as_str()), "address {a} leaked in {text}");
        }
    }
    println!("status.url {want_url}; no address of {addresses:?} in responses or Workload status");
    Ok(())
}

/// `kubectl logs`, `logs -f` and `exec` through the real kube-apiserver and the kubelet API
/// (`e2e/tests/kubectl_streams.rs` covers exec, attach and port-forward in depth).
fn kubectl_logs_and_exec_work(g: &Gateway, served: &Served) -> anyhow::Result<()> {
    let env = &g.env;
    let pod = served.hello_pods[0].name_any();
    let logs = env.kubectl(&["logs", &pod])?;
    ensure!(
        logs.contains("serving") && logs.contains("tick 0"),
        "{logs}"
    );
    let (follow, stderr) = kubectl_bounded(
        env,
        &["logs", "-f", "--tail=1", &pod],
        Duration::from_secs(5),
    )?;
    let ticks: Vec<u64> = follow
        .lines()
        .filter_map(|l| l.strip_prefix("tick ")?.trim().parse().ok())
        .collect();
    ensure!(
        ticks.len() >= 3 && ticks.windows(2).all(|w| w[1] == w[0] + 1),
        "kubectl logs -f over 5 s: {follow:?} {stderr}"
    );
    println!(
        "kubectl logs: {} lines; kubectl logs -f --tail=1 for 5 s followed ticks {:?}",
        logs.lines().count(),
        ticks
    );
    let (out, stderr) = kubectl_bounded(
        env,
        &["exec", &pod, "--", "cat", "/www/index.html"],
        Duration::from_secs(20),
    )?;
    ensure!(
        out.trim() == format!("replica {pod}"),
        "kubectl exec: {out} {stderr}"
    );
    println!("kubectl exec: {}", out.trim());
    Ok(())
}

/// SIGKILL of an edge running a replica: for 20 s the URL keeps answering (at most 5 % of the
/// requests fail), and then every request succeeds. The victim's node and when it was killed.
async fn the_url_survives_a_sigkilled_edge(
    g: &Gateway,
    edges: &mut [EdgeProcess],
    served: &Served,
) -> anyhow::Result<(String, Instant)> {
    let gw = g.port;
    let victim_node = node_of(&served.hello_pods[0]);
    let victim = edges
        .iter()
        .position(|e| e.node() == victim_node)
        .context("victim edge")?;
    edges[victim].child.kill();
    let killed = Instant::now();
    let (mut ok, mut failed) = (0u32, 0u32);
    let mut failures = Vec::new();
    let mut after = BTreeSet::new();
    let mut last_failure = None;
    let mut first_new = None;
    for _ in 0..300 {
        if killed.elapsed() > Duration::from_secs(20) {
            break;
        }
        match get(gw, HELLO_HOST, "/").await {
            Ok(r) if r.code == 200 => {
                ok += 1;
                let text = r.text().trim().to_string();
                if !served.seen.contains(&text) && first_new.is_none() {
                    first_new = Some(killed.elapsed());
                }
                after.insert(text);
            }
            Ok(r) => {
                failed += 1;
                last_failure = Some(killed.elapsed());
                failures.push(format!("{} {}", r.code, r.text().trim()));
            }
            Err(e) => {
                failed += 1;
                last_failure = Some(killed.elapsed());
                failures.push(e.to_string());
            }
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    println!(
        "failover: {} requests in {:.1}s after SIGKILL of {victim_node}: {ok} ok, {failed} failed{}",
        ok + failed,
        killed.elapsed().as_secs_f64(),
        last_failure
            .map(|t| format!(" (last failure at {:.2}s)", t.as_secs_f64()))
            .unwrap_or_default()
    );
    for f in failures.iter().take(5) {
        println!("  failure: {f}");
    }
    println!(
        "replicas answering after the kill: {after:?}; the re-placed one first answered {}",
        first_new
            .map(|t| format!("{:.1}s after the kill", t.as_secs_f64()))
            .unwrap_or_else(|| "not yet".into())
    );
    ensure!(ok > 0 && failed * 20 <= ok + failed, "more than 5% failed");
    for _ in 0..10 {
        let r = get(gw, HELLO_HOST, "/").await?;
        ensure!(r.code == 200, "after failover: {} {}", r.head, r.text());
    }
    Ok((victim_node, killed))
}

/// The lost replica is re-placed on the third edge and serves too.
async fn the_lost_replica_is_replaced_and_serves(
    g: &Gateway,
    victim_node: &str,
    killed: Instant,
) -> anyhow::Result<()> {
    let replaced = eventually(Duration::from_secs(30), || async {
        let pods = ready_pods(&g.client, "hello").await?;
        ensure!(
            pods.len() == 2 && pods.iter().all(|p| node_of(p) != victim_node),
            "not re-placed yet"
        );
        let mut seen = BTreeSet::new();
        for _ in 0..6 {
            seen.insert(
                get(g.port, HELLO_HOST, "/")
                    .await?
                    .text()
                    .trim()
                    .to_string(),
            );
        }
        ensure!(seen.len() == 2, "only {seen:?} answer");
        Ok(seen)
    })
    .await?;
    println!(
        "replica re-placed and serving {:.1}s after the kill: {replaced:?}",
        killed.elapsed().as_secs_f64()
    );
    Ok(())
}

/// Prints the gateway's tunnel counters.
async fn show_tunnel_metrics(operator: &OperatorProcess) -> anyhow::Result<()> {
    let tunnels = operator.metrics().await?;
    for l in tunnels
        .lines()
        .filter(|l| l.starts_with("decloud_operator_gateway_tunnels_total"))
    {
        println!("  {l}");
    }
    if let Some(p50) = tunnels
        .lines()
        .find(|l| l.starts_with("decloud_operator_gateway_tunnel_open_seconds_sum"))
    {
        println!("  {p50}");
    }
    Ok(())
}
