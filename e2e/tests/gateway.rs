//! The gateway and `kubectl logs`, end to end: a real kube-apiserver, the real
//! `decloud-operator` (gateway and kubelet API), three real `edge-kubelet`s and the real Docker
//! engine. Traffic goes only to 127.0.0.1 and to the suite's own containers.
//!
//! Needs `cargo build -p decloud-operator -p edge-kubelet --bins` first.

use std::collections::BTreeSet;
use std::process::Command;
use std::time::{Duration, Instant};

use anyhow::{Context as _, bail, ensure};
use decloud_crds::{Provider, ProviderPhase, Workload};
use decloud_e2e::cluster::{ContainerSweeper, EdgeProcess, OperatorProcess, busybox_image, docker};
use decloud_e2e::{TestEnv, eventually, free_port};
use k8s_openapi::api::core::v1::Pod;
use kube::api::{Api, ListParams};
use kube::{Client, ResourceExt};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

const NS: &str = "default";
const HELLO_HOST: &str = "hello.default.decloud.localhost";

/// A Workload of busybox containers running `script`, exposing `port`.
fn workload(name: &str, replicas: u32, script: &str, port: u16, probe: &str) -> String {
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
          image: decloud-test/busybox:1
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

/// One HTTP response: status code, head, body.
struct Reply {
    code: u16,
    head: String,
    body: Vec<u8>,
}

impl Reply {
    fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }
}

/// `GET path` with `Host: host` through the gateway on 127.0.0.1:`port` (connection: close).
async fn get(port: u16, host: &str, path: &str) -> anyhow::Result<Reply> {
    let exchange = async {
        let mut s = TcpStream::connect(("127.0.0.1", port)).await?;
        s.write_all(
            format!("GET {path} HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\n\r\n").as_bytes(),
        )
        .await?;
        let mut buf = Vec::new();
        s.read_to_end(&mut buf).await?;
        anyhow::Ok(buf)
    };
    let buf = tokio::time::timeout(Duration::from_secs(10), exchange)
        .await
        .context("gateway request timed out")??;
    let end = buf
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .with_context(|| format!("no response head in {:?}", String::from_utf8_lossy(&buf)))?;
    let head = String::from_utf8_lossy(&buf[..end]).into_owned();
    let code = head
        .split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .with_context(|| format!("no status in {head:?}"))?;
    Ok(Reply {
        code,
        head,
        body: buf[end + 4..].to_vec(),
    })
}

async fn all_ready(client: &Client, names: &[String]) -> anyhow::Result<()> {
    for n in names {
        let p = Api::<Provider>::all(client.clone()).get(n).await?;
        let phase = p.status.map(|s| s.phase);
        ensure!(phase == Some(ProviderPhase::Ready), "{n}: {phase:?}");
    }
    Ok(())
}

/// Ready replicas of Workload `name`.
async fn ready_pods(client: &Client, name: &str) -> anyhow::Result<Vec<Pod>> {
    let pods = Api::<Pod>::namespaced(client.clone(), NS)
        .list(&ListParams::default().labels(&format!("decloud.dev/workload={name}")))
        .await?;
    Ok(pods
        .items
        .into_iter()
        .filter(|p| p.metadata.deletion_timestamp.is_none())
        .filter(decloud_e2e::cluster::pod_ready)
        .collect())
}

fn node_of(pod: &Pod) -> String {
    pod.spec
        .as_ref()
        .and_then(|s| s.node_name.clone())
        .unwrap_or_default()
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

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn gateway_routes_through_edges_and_kubectl_logs_work() -> anyhow::Result<()> {
    let env = TestEnv::start().await?;
    let client = env.client();
    busybox_image()?;
    let run = std::process::id();
    let names: Vec<String> = ["a", "b", "c"]
        .iter()
        .map(|s| format!("gw-{run}-{s}"))
        .collect();
    let nodes: Vec<String> = names.iter().map(|n| format!("edge-{n}")).collect();
    let sweeper = ContainerSweeper::new(&nodes);

    let gw = free_port()?;
    let gateway_listen = format!("127.0.0.1:{gw}");
    let url_template = format!("http://{{host}}:{gw}");
    let operator = OperatorProcess::start(
        &env,
        &[
            "--gateway-listen",
            &gateway_listen,
            "--url-template",
            &url_template,
            "--identity",
            "e2e-gateway",
        ],
    )
    .await?;
    let mut edges = Vec::new();
    for n in &names {
        edges.push(EdgeProcess::start(&env, &operator, n, &[])?);
    }
    eventually(Duration::from_secs(60), || all_ready(&client, &names))
        .await
        .with_context(|| {
            format!(
                "edges not Ready; operator log:\n{}",
                operator.child.log_tail(30)
            )
        })?;

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
    // Never ready: nothing listens on the probed port.
    env.kubectl_stdin(
        &["apply", "-f", "-"],
        &workload("idle", 1, "exec sleep 3600", 8080, &tcp_probe(8080)),
    )?;

    // --- Both replicas serve through the gateway.
    let started = Instant::now();
    eventually(Duration::from_secs(90), || async {
        ensure!(
            ready_pods(&client, "hello").await?.len() == 2,
            "hello not 2/2 ready"
        );
        ensure!(
            ready_pods(&client, "echo").await?.len() == 1,
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
    let hello_pods = ready_pods(&client, "hello").await?;
    for p in &hello_pods {
        ensure!(
            seen.contains(&format!("replica {}", p.name_any())),
            "replica {} not seen in {seen:?}",
            p.name_any()
        );
    }

    // --- A 10 MiB response arrives intact.
    let started = Instant::now();
    let big = get(gw, HELLO_HOST, "/big").await?;
    let elapsed = started.elapsed();
    ensure!(big.code == 200, "{}", big.head);
    ensure!(
        big.body.len() == 10 * 1024 * 1024,
        "{} bytes",
        big.body.len()
    );
    let got = sha256(&env, &big.body)?;
    let mut sums = BTreeSet::new();
    for p in &hello_pods {
        let id = p
            .status
            .as_ref()
            .and_then(|s| s.container_statuses.as_ref())
            .and_then(|cs| cs.first())
            .and_then(|c| c.container_id.clone())
            .context("no container id")?;
        let id = id.trim_start_matches("docker://");
        let out = docker(&["exec", id, "sha256sum", "/www/big"])?;
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

    // --- A raw byte stream past the request head: the echo container returns everything.
    let mut s = TcpStream::connect(("127.0.0.1", gw)).await?;
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

    // --- Clear errors: unknown host, no ready replica.
    let r = get(gw, "nope.default.decloud.localhost", "/").await?;
    ensure!(
        r.code == 404 && r.text().contains("nope.default.decloud.localhost"),
        "{} {}",
        r.head,
        r.text()
    );
    println!("unknown host: 404 {}", r.text().trim());
    let r = get(gw, "idle.default.decloud.localhost", "/").await?;
    ensure!(
        r.code == 503 && r.text().contains("no ready replica"),
        "{} {}",
        r.head,
        r.text()
    );
    println!("no ready replica: 503 {}", r.text().trim());
    texts.push(format!("{}\r\n\r\n{}", big.head, ""));

    // --- Status URL is the gateway's; no provider or pod address leaks anywhere.
    let wl = Api::<Workload>::namespaced(client.clone(), NS)
        .get("hello")
        .await?;
    let status = serde_json::to_string(&wl.status)?;
    let want_url = format!("http://{HELLO_HOST}:{gw}");
    ensure!(status.contains(&want_url), "status url: {status}");
    let mut addresses: Vec<String> = hello_pods
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
    for text in texts.iter().chain([&status]) {
        for a in &addresses {
            ensure!(!text.contains(a.as_str()), "address {a} leaked in {text}");
        }
    }
    println!("status.url {want_url}; no address of {addresses:?} in responses or Workload status");

    // --- kubectl logs, -f and exec through the real kube-apiserver and the kubelet API.
    let pod = hello_pods[0].name_any();
    let logs = env.kubectl(&["logs", &pod])?;
    ensure!(
        logs.contains("serving") && logs.contains("tick 0"),
        "{logs}"
    );
    let (follow, stderr) = kubectl_bounded(
        &env,
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
    let (out, stderr) =
        kubectl_bounded(&env, &["exec", &pod, "--", "true"], Duration::from_secs(20))?;
    ensure!(
        stderr.contains("not supported on DeCloud edges yet"),
        "kubectl exec: {out} {stderr}"
    );
    println!("kubectl exec: {}", stderr.trim());

    // --- SIGKILL of an edge running a replica: the URL keeps answering.
    let victim_node = node_of(&hello_pods[0]);
    let victim = edges
        .iter()
        .position(|e| format!("edge-{}", e.name) == victim_node)
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
                if !seen.contains(&text) && first_new.is_none() {
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
    // The lost replica is re-placed on the third edge and serves too.
    let replaced = eventually(Duration::from_secs(30), || async {
        let pods = ready_pods(&client, "hello").await?;
        ensure!(
            pods.len() == 2 && pods.iter().all(|p| node_of(p) != victim_node),
            "not re-placed yet"
        );
        let mut seen = BTreeSet::new();
        for _ in 0..6 {
            seen.insert(get(gw, HELLO_HOST, "/").await?.text().trim().to_string());
        }
        ensure!(seen.len() == 2, "only {seen:?} answer");
        Ok(seen)
    })
    .await?;
    println!(
        "replica re-placed and serving {:.1}s after the kill: {replaced:?}",
        killed.elapsed().as_secs_f64()
    );

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
    for n in ["hello", "echo", "idle"] {
        env.kubectl(&["delete", "wl", n, "--wait=false"])?;
    }
    drop(edges);
    sweeper.sweep();
    if operator.warnings().iter().any(|w| w.contains("panicked")) {
        bail!("the operator panicked");
    }
    Ok(())
}
