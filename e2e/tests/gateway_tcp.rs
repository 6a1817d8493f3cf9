//! Raw TCP exposure, end to end: a real kube-apiserver, the real `decloud-operator` (gateway
//! with `--tcp-port-range`), two real `edge-kubelet`s and a Docker engine of its own per edge. A busybox
//! `nc` echo server (it names its replica first) is reached on its assigned gateway port;
//! ports have one owner, a per-namespace cap, and are freed on deletion; a killed container
//! or edge sends the next connection to the other replica. Traffic goes only to 127.0.0.1 and
//! to the suite's own containers.
//!
//! Needs `cargo build -p decloud-operator -p edge-kubelet --bins` first.

use std::time::{Duration, Instant};

use anyhow::{Context as _, bail, ensure};
use decloud_crds::contracts::node_name;
use decloud_crds::{Workload, WorkloadStatus, find_condition};
use decloud_e2e::cluster::{
    ContainerSweeper, EdgeProcess, OperatorProcess, busybox_image, container_id, engine_of_pod,
    node_of, pod_ready, wait_providers_ready, workload_pods,
};
use decloud_e2e::{TestEnv, eventually, free_port};
use kube::api::Api;
use kube::{Client, ResourceExt};
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::TcpStream;

const NS_A: &str = "tcp-a";
const NS_B: &str = "tcp-b";
/// Ports in the gateway's range.
const RANGE_LEN: u16 = 3;

/// The echo server: prints its host name (the pod's name), then echoes every byte.
const ECHO_SCRIPT: &str = "printf '#!/bin/sh\\nhostname\\nexec cat\\n' > /tmp/echo; \
    chmod +x /tmp/echo; exec nc -ll -p 7000 -e /tmp/echo";

/// A TCP Workload in `ns` (`tcp_port` requested if given) of busybox containers running
/// `script` on container port 7000.
fn workload(ns: &str, name: &str, replicas: u32, script: &str, tcp_port: Option<u16>) -> String {
    // The test registry's reference (built and pushed once per process).
    let image = busybox_image().expect("the busybox test image");
    let request = tcp_port.map_or(String::new(), |p| format!(", tcpPort: {p}"));
    format!(
        r#"apiVersion: decloud.dev/v1alpha1
kind: Workload
metadata: {{name: {name}, namespace: {ns}}}
spec:
  replicas: {replicas}
  template:
    spec:
      terminationGracePeriodSeconds: 1
      containers:
        - name: echo
          image: {image}
          command: ["/bin/sh", "-c", {script:?}]
          ports: [{{containerPort: 7000}}]
          resources: {{requests: {{cpu: 50m, memory: 16Mi}}, limits: {{cpu: 500m, memory: 64Mi}}}}
          readinessProbe: {{tcpSocket: {{port: 7000}}, periodSeconds: 1}}
  placement: {{spread: Required}}
  expose: {{port: 7000, protocol: TCP{request}}}
  failover: {{graceSeconds: 3}}
"#
    )
}

/// `RANGE_LEN + 1` consecutive free ports on 127.0.0.1 (the range, and the one after it).
fn free_range() -> anyhow::Result<u16> {
    for _ in 0..200 {
        let base = free_port()?;
        if base > 65000 {
            continue;
        }
        let all_free = (base..=base + RANGE_LEN)
            .all(|p| std::net::TcpListener::bind(("127.0.0.1", p)).is_ok());
        if all_free {
            return Ok(base);
        }
    }
    bail!("no {} consecutive free ports", RANGE_LEN + 1)
}

async fn status_of(client: &Client, ns: &str, name: &str) -> anyhow::Result<WorkloadStatus> {
    let api: Api<Workload> = Api::namespaced(client.clone(), ns);
    Ok(api.get(name).await?.status.unwrap_or_default())
}

/// Waits until `ns/name`'s condition `TcpPortAssigned` has `reason`; returns the status.
async fn wait_reason(
    operator: &OperatorProcess,
    client: &Client,
    ns: &str,
    name: &str,
    reason: &str,
) -> anyhow::Result<WorkloadStatus> {
    eventually(Duration::from_secs(60), || async {
        let s = status_of(client, ns, name).await?;
        let c = find_condition(&s.conditions, "TcpPortAssigned")
            .with_context(|| format!("{ns}/{name}: no TcpPortAssigned yet"))?;
        ensure!(
            c.reason == reason,
            "{ns}/{name}: {} {} (want {reason})",
            c.reason,
            c.message
        );
        Ok(s)
    })
    .await
    .with_context(|| {
        let log = operator.child.log_tail(2000);
        let notable: Vec<&str> = log
            .lines()
            .filter(|l| {
                l.contains("ERROR")
                    || l.contains("Workload controller")
                    || l.contains("reconcile failed")
            })
            .collect();
        format!(
            "operator log (notable):\n{}\n...\n{}",
            notable.join("\n"),
            operator.child.log_tail(15)
        )
    })
}

/// One connection to the gateway port: the replica's name, then `payload` echoed back whole.
async fn echo(port: u16, payload: &[u8]) -> anyhow::Result<String> {
    let conn = tokio::time::timeout(
        Duration::from_secs(5),
        TcpStream::connect(("127.0.0.1", port)),
    )
    .await
    .context("connect timed out")??;
    let (read, mut write) = conn.into_split();
    let mut read = BufReader::new(read);
    let work = async {
        let mut name = String::new();
        read.read_line(&mut name).await?;
        ensure!(!name.is_empty(), "closed before the replica named itself");
        let sent = payload.to_vec();
        let writer = async move {
            write.write_all(&sent).await?;
            anyhow::Ok(write)
        };
        let reader = async {
            let mut got = vec![0u8; payload.len()];
            read.read_exact(&mut got).await?;
            anyhow::Ok(got)
        };
        let (w, got) = tokio::try_join!(writer, reader)?;
        drop(w);
        ensure!(got == payload, "echo differs ({} bytes)", got.len());
        Ok(name.trim().to_string())
    };
    tokio::time::timeout(Duration::from_secs(30), work)
        .await
        .context("echo timed out")?
}

/// Whether a connection to `port` is refused (nothing listens).
async fn refused(port: u16) -> bool {
    matches!(TcpStream::connect(("127.0.0.1", port)).await, Err(e) if e.kind() == std::io::ErrorKind::ConnectionRefused)
}

fn random_bytes(n: usize) -> Vec<u8> {
    // xorshift: incompressible enough, no extra crate.
    let mut x: u64 = 0x9E37_79B9_7F4A_7C15 ^ u64::from(std::process::id());
    (0..n)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x as u8
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn tcp_workloads_get_their_own_gateway_port() -> anyhow::Result<()> {
    let env = TestEnv::start().await?;
    busybox_image()?;
    let client = env.client();
    let run = std::process::id();
    let names: Vec<String> = ["a", "b"]
        .iter()
        .map(|s| format!("tcp-{run}-{s}"))
        .collect();
    let nodes: Vec<String> = names.iter().map(|n| node_name(n)).collect();
    let sweeper = ContainerSweeper::new(&env, &nodes);
    let base = free_range()?;
    let (last, outside) = (base + RANGE_LEN - 1, base + RANGE_LEN);
    let gateway_listen = format!("127.0.0.1:{}", free_port()?);
    let range = format!("{base}-{last}");
    let operator_args = [
        "--gateway-listen",
        &gateway_listen,
        "--tcp-port-range",
        &range,
        "--tcp-ports-per-namespace",
        "2",
        "--tcp-public-host",
        "127.0.0.1",
        "--identity",
        "e2e-gateway-tcp",
    ];
    let mut operator = OperatorProcess::start(&env, &operator_args).await?;
    let mut edges = Vec::new();
    for n in &names {
        edges.push(EdgeProcess::start(&env, &operator, n, &[])?);
    }
    wait_providers_ready(&client, &operator, &names).await?;
    for ns in [NS_A, NS_B] {
        env.kubectl(&["create", "namespace", ns])?;
    }

    // 1. An echo app answers on the port it asked for, for a line and for 2 MiB.
    let port = base + 1;
    env.kubectl_stdin(
        &["apply", "-f", "-"],
        &workload(NS_A, "echo", 2, ECHO_SCRIPT, Some(port)),
    )?;
    let s = wait_reason(&operator, &client, NS_A, "echo", "PortAssigned").await?;
    ensure!(s.tcp_port == Some(i32::from(port)), "{:?}", s.tcp_port);
    ensure!(
        s.url.as_deref() == Some(format!("tcp://127.0.0.1:{port}").as_str()),
        "url {:?}",
        s.url
    );
    eventually(Duration::from_secs(90), || async {
        let ready = workload_pods(&client, NS_A, "echo").await?;
        ensure!(
            ready.iter().filter(|p| pod_ready(p)).count() == 2,
            "echo not 2/2 ready"
        );
        echo(port, b"ping\n").await?;
        Ok(())
    })
    .await
    .with_context(|| {
        format!(
            "echo not served; operator log:\n{}",
            operator.child.log_tail(30)
        )
    })?;
    let big = random_bytes(2 * 1024 * 1024 + 7);
    let started = Instant::now();
    let who = echo(port, &big).await?;
    println!(
        "2 MiB echoed through gateway port {port} by {who} in {:.0} ms",
        started.elapsed().as_secs_f64() * 1000.0
    );

    // 2. Another tenant asking for the same port is refused; the owner still answers. A port
    //    outside the range is refused and never bound.
    env.kubectl_stdin(
        &["apply", "-f", "-"],
        &workload(NS_B, "thief", 0, ECHO_SCRIPT, Some(port)),
    )?;
    let s = wait_reason(&operator, &client, NS_B, "thief", "PortTaken").await?;
    ensure!(s.tcp_port.is_none() && s.url.is_none(), "{s:?}");
    env.kubectl_stdin(
        &["apply", "-f", "-"],
        &workload(NS_B, "far", 0, ECHO_SCRIPT, Some(outside)),
    )?;
    wait_reason(&operator, &client, NS_B, "far", "PortOutOfRange").await?;
    ensure!(
        refused(outside).await,
        "port {outside} outside the range is listened on"
    );
    // The API server refuses HTTP-only fields on a TCP Workload, and tcpPort on an HTTP one.
    let with_host = workload(NS_B, "hosted", 0, ECHO_SCRIPT, None).replace(
        "protocol: TCP",
        "protocol: TCP, host: x.tcp-b.decloud.localhost",
    );
    let refused_host = env.kubectl_stdin(&["apply", "-f", "-"], &with_host);
    ensure!(
        refused_host
            .as_ref()
            .is_err_and(|e| format!("{e:#}").contains("apply only to protocol HTTP")),
        "{refused_host:?}"
    );
    let http_port = workload(NS_B, "httpport", 0, ECHO_SCRIPT, Some(last))
        .replace("protocol: TCP, ", "protocol: HTTP, ");
    let refused_port = env.kubectl_stdin(&["apply", "-f", "-"], &http_port);
    ensure!(
        refused_port
            .as_ref()
            .is_err_and(|e| format!("{e:#}").contains("tcpPort applies only to protocol TCP")),
        "{refused_port:?}"
    );
    echo(port, b"still mine\n").await?;
    println!("PortTaken and PortOutOfRange refused; the owner still answers on {port}");

    // 3. The per-namespace cap (2): tcp-a's second Workload gets a port, its third does not.
    env.kubectl_stdin(
        &["apply", "-f", "-"],
        &workload(NS_A, "second", 0, ECHO_SCRIPT, None),
    )?;
    let s = wait_reason(&operator, &client, NS_A, "second", "PortAssigned").await?;
    ensure!(s.tcp_port == Some(i32::from(base)), "{:?}", s.tcp_port);
    env.kubectl_stdin(
        &["apply", "-f", "-"],
        &workload(NS_A, "third", 0, ECHO_SCRIPT, None),
    )?;
    wait_reason(&operator, &client, NS_A, "third", "PortQuotaExceeded").await?;
    // tcp-b, under its own cap, takes the last free port; then the range is exhausted.
    env.kubectl_stdin(
        &["apply", "-f", "-"],
        &workload(NS_B, "last", 0, ECHO_SCRIPT, None),
    )?;
    let s = wait_reason(&operator, &client, NS_B, "last", "PortAssigned").await?;
    ensure!(s.tcp_port == Some(i32::from(last)), "{:?}", s.tcp_port);
    env.kubectl(&[
        "delete",
        "wl",
        "-n",
        NS_B,
        "far",
        "--wait=true",
        "--timeout=60s",
    ])?;
    env.kubectl_stdin(
        &["apply", "-f", "-"],
        &workload(NS_B, "late", 0, ECHO_SCRIPT, None),
    )?;
    wait_reason(&operator, &client, NS_B, "late", "NoPortAvailable").await?;
    println!("cap: tcp-a/third PortQuotaExceeded; range exhausted: tcp-b/late NoPortAvailable");

    // 3b. An operator restart rebuilds the same allocation from the Workloads: every holder
    //     keeps its port, every refusal stands, and the echo answers on its port again.
    let holders = [(NS_A, "echo"), (NS_A, "second"), (NS_B, "last")];
    let mut before = Vec::new();
    for (ns, n) in holders {
        before.push(status_of(&client, ns, n).await?.tcp_port);
    }
    operator.child.kill();
    let mut next = operator.respawn(&env, &operator_args)?;
    next.wait_ready().await?;
    operator = next;
    eventually(Duration::from_secs(60), || async {
        echo(port, b"after restart\n").await?;
        Ok(())
    })
    .await
    .context("echo not served after the operator restart")?;
    wait_reason(&operator, &client, NS_B, "thief", "PortTaken").await?;
    wait_reason(&operator, &client, NS_A, "third", "PortQuotaExceeded").await?;
    for ((ns, n), was) in holders.into_iter().zip(before) {
        let s = wait_reason(&operator, &client, ns, n, "PortAssigned").await?;
        ensure!(
            s.tcp_port == was,
            "{ns}/{n}: {:?} after the restart, {was:?} before",
            s.tcp_port
        );
    }
    println!("operator restarted: every port kept, every refusal stands");

    // 4. A killed container: the next connections reach a replica that answers.
    let pods = workload_pods(&client, NS_A, "echo").await?;
    ensure!(pods.len() == 2, "{} echo pods", pods.len());
    let victim = &pods[0];
    let survivor = pods[1].name_any();
    engine_of_pod(&env, victim)?.docker(&["kill", &container_id(victim)?])?;
    let killed = Instant::now();
    for i in 0..6 {
        let who = echo(port, format!("after kill {i}\n").as_bytes())
            .await
            .with_context(|| format!("connection {i} after the container kill"))?;
        ensure!(
            who == survivor || who == victim.name_any(),
            "answered by {who}"
        );
    }
    println!(
        "container of {} killed: 6 connections answered within {:.1}s",
        victim.name_any(),
        killed.elapsed().as_secs_f64()
    );

    // 5. A killed edge: every next connection reaches the replica on the other edge.
    let pods = workload_pods(&client, NS_A, "echo").await?;
    let ready: Vec<_> = eventually(Duration::from_secs(60), || async {
        let pods = workload_pods(&client, NS_A, "echo").await?;
        let ready: Vec<_> = pods.into_iter().filter(pod_ready).collect();
        ensure!(ready.len() == 2, "echo not 2/2 ready again");
        Ok(ready)
    })
    .await?;
    drop(pods);
    let victim_node = node_of(&ready[0]);
    let survivor = ready[1].name_any();
    let edge = edges
        .iter()
        .position(|e| e.node() == victim_node)
        .context("victim edge")?;
    edges[edge].child.kill();
    for i in 0..10 {
        let who = echo(port, format!("after edge kill {i}\n").as_bytes())
            .await
            .with_context(|| format!("connection {i} after the edge kill"))?;
        ensure!(
            who == survivor,
            "connection {i} answered by {who}, not {survivor}"
        );
    }
    println!("edge {victim_node} killed: the next 10 connections reached {survivor}");

    // 6. Deleting the owner frees its port: refused, and a new Workload may take it. (The
    //    other claimants go first, so that no one takes the port over at once.)
    for (ns, n) in [(NS_B, "thief"), (NS_A, "third"), (NS_B, "late")] {
        env.kubectl(&["delete", "wl", "-n", ns, n, "--wait=true", "--timeout=60s"])?;
    }
    env.kubectl(&["delete", "wl", "-n", NS_A, "echo", "--wait=false"])?;
    eventually(Duration::from_secs(30), || async {
        ensure!(refused(port).await, "port {port} still open");
        Ok(())
    })
    .await?;
    tokio::time::sleep(Duration::from_secs(2)).await;
    ensure!(refused(port).await, "port {port} reopened with no holder");
    env.kubectl_stdin(
        &["apply", "-f", "-"],
        &workload(NS_B, "next", 0, ECHO_SCRIPT, Some(port)),
    )?;
    let s = wait_reason(&operator, &client, NS_B, "next", "PortAssigned").await?;
    ensure!(s.tcp_port == Some(i32::from(port)), "{:?}", s.tcp_port);
    eventually(Duration::from_secs(10), || async {
        TcpStream::connect(("127.0.0.1", port)).await?;
        Ok(())
    })
    .await
    .context("the reassigned port is not listened on")?;
    println!("echo deleted: port {port} refused, then assigned to tcp-b/next and open again");

    for (ns, n) in [(NS_B, "next"), (NS_A, "second"), (NS_B, "last")] {
        let _ = env.kubectl(&["delete", "wl", "-n", ns, n, "--wait=false"]);
    }
    drop(edges);
    sweeper.sweep();
    if operator.warnings().iter().any(|w| w.contains("panicked")) {
        bail!("the operator panicked");
    }
    Ok(())
}
