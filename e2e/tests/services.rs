//! Service-to-service across providers, end to end: a real kube-apiserver, the real
//! `decloud-operator`, three real `edge-kubelet`s (each on a Docker network of its own, as on
//! separate machines) and the real Docker engine. A front end on provider A reaches a
//! "database" Workload on providers B and C by name, over A → operator → B/C; containers are
//! reached only the way a user reaches them (`kubectl exec`).
//!
//! Needs `cargo build --workspace --bins` first.

use std::collections::BTreeSet;
use std::process::Command;
use std::time::Duration;

use anyhow::{Context as _, bail, ensure};
use decloud_crds::contracts::node_name;
use decloud_e2e::cluster::{
    ContainerSweeper, EdgeProcess, OperatorProcess, busybox_image, docker, pod_ready,
    wait_providers_ready, workload_pods,
};
use decloud_e2e::{TestEnv, eventually};
use kube::{Client, ResourceExt};

/// The key-value "database": busybox httpd with a CGI script that stores a POSTed value and
/// returns it (and which replica answered) on GET.
const DB_SCRIPT: &str = r#"mkdir -p /www/cgi-bin
cat > /www/cgi-bin/kv <<'EOF'
#!/bin/sh
echo "Content-Type: text/plain"
echo ""
if [ "$REQUEST_METHOD" = POST ]; then
  head -c "$CONTENT_LENGTH" > /tmp/value
  echo "stored by $(hostname)"
else
  echo "value=$(cat /tmp/value 2>/dev/null) from $(hostname)"
fi
EOF
chmod +x /www/cgi-bin/kv
exec httpd -f -p 8080 -h /www"#;

/// A Workload of busybox containers running `script` on providers labelled `role`.
fn workload(ns: &str, name: &str, replicas: u32, role: &str, script: &str, extra: &str) -> String {
    let image = busybox_image().expect("the test image (pushed at the start of the test)");
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
        - name: main
          image: {image}
          command: ["/bin/sh", "-c", {script:?}]
          ports: [{{containerPort: 8080}}]
          resources: {{requests: {{cpu: 20m, memory: 16Mi}}, limits: {{cpu: 300m, memory: 64Mi}}}}
          readinessProbe: {{tcpSocket: {{port: 8080}}, periodSeconds: 1}}
  placement:
    spread: Required
    providerSelector: {{matchLabels: {{svc-role: {role}}}}}
  failover: {{graceSeconds: 3}}
{extra}"#
    )
}

/// The front end: a container that only waits; the test speaks through it with `kubectl exec`.
fn front(ns: &str, name: &str) -> String {
    workload(
        ns,
        name,
        1,
        "front",
        "httpd -p 8080 -h /www; exec sleep 100000",
        "",
    )
}

struct Scenario {
    env: TestEnv,
    client: Client,
    run: u32,
    names: Vec<String>,
    sweeper: ContainerSweeper,
}

impl Scenario {
    fn ns(&self) -> String {
        format!("svc-{}", self.run)
    }

    fn other_ns(&self) -> String {
        format!("svc-{}-other", self.run)
    }

    /// Runs `sh -c script` in the one pod of Workload `wl` in `ns` (20 s at most).
    async fn exec(&self, ns: &str, wl: &str, script: &str) -> anyhow::Result<String> {
        let pod = workload_pods(&self.client, ns, wl)
            .await?
            .into_iter()
            .find(pod_ready)
            .with_context(|| format!("no ready pod of {ns}/{wl}"))?;
        let out = Command::new("timeout")
            .arg("20s")
            .arg(self.env.bin_dir().join("kubectl"))
            .args(["exec", "-n", ns, &pod.name_any(), "--", "sh", "-c", script])
            .env("KUBECONFIG", self.env.kubeconfig())
            .output()
            .context("running kubectl exec")?;
        ensure!(
            out.status.success(),
            "kubectl exec {script:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    }

    /// An HTTP/1.0 request to `host:8080` made by `nc` inside `ns/wl`: the response body.
    async fn http(
        &self,
        ns: &str,
        wl: &str,
        host: &str,
        method: &str,
        body: &str,
    ) -> anyhow::Result<String> {
        let script = format!(
            "printf '{method} /cgi-bin/kv HTTP/1.0\\r\\nContent-Length: {}\\r\\n\\r\\n{body}' | nc -w 10 {host} 8080",
            body.len()
        );
        let out = self.exec(ns, wl, &script).await?;
        let body = out
            .replace("\r\n", "\n")
            .split_once("\n\n")
            .map(|(_, b)| b.trim().to_string())
            .with_context(|| format!("no HTTP response from {host}: {out:?}"))?;
        Ok(body)
    }

    async fn ready(&self, ns: &str, wl: &str, n: usize) -> anyhow::Result<()> {
        eventually(Duration::from_secs(90), || async {
            let ready = workload_pods(&self.client, ns, wl)
                .await?
                .into_iter()
                .filter(pod_ready)
                .count();
            ensure!(ready >= n, "{ns}/{wl}: {ready} of {n} ready");
            Ok(())
        })
        .await
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn services_reach_workloads_on_other_providers_by_name() -> anyhow::Result<()> {
    let env = TestEnv::start().await?;
    busybox_image()?;
    let run = std::process::id();
    let names: Vec<String> = ["a", "b", "c"]
        .iter()
        .map(|s| format!("svc-{run}-{s}"))
        .collect();
    let nodes: Vec<String> = names.iter().map(|n| node_name(n)).collect();
    let s = Scenario {
        client: env.client(),
        sweeper: ContainerSweeper::new(&env, &nodes),
        env,
        run,
        names,
    };
    let operator = OperatorProcess::start(&s.env, &["--identity", "e2e-services"]).await?;
    let mut edges = Vec::new();
    for (n, role) in s.names.iter().zip(["front", "db", "db"]) {
        // A network of its own per edge, as edges on separate machines have.
        let mut args = operator.edge_args();
        args.extend(["--docker-network".to_string(), format!("{n}-net")]);
        let label = format!("svc-role={role}");
        edges.push(EdgeProcess::start_with(&s.env, n, &[&label], &args)?);
    }
    let result = scenario(&s, &operator, &mut edges).await;
    if result.is_err() {
        for e in &edges {
            let log = std::fs::read(e.log()).unwrap_or_default();
            let log = String::from_utf8_lossy(&log);
            let tail: String = log.lines().rev().take(25).collect::<Vec<_>>().join("\n");
            eprintln!("--- {} (newest first) ---\n{tail}", e.name);
        }
        eprintln!("--- operator ---\n{}", operator.child.log_tail(40));
    }
    drop(edges);
    s.sweeper.sweep();
    for n in &s.names {
        if let Ok(engine) = s.env.engine(n) {
            let _ = docker(&engine, &["network", "rm", &format!("{n}-net")]);
        }
    }
    result?;
    if operator.warnings().iter().any(|w| w.contains("panicked")) {
        bail!("the operator panicked");
    }
    Ok(())
}

async fn scenario(
    s: &Scenario,
    operator: &OperatorProcess,
    edges: &mut [EdgeProcess],
) -> anyhow::Result<()> {
    wait_providers_ready(&s.client, operator, &s.names).await?;
    let (ns, other) = (s.ns(), s.other_ns());
    s.env.kubectl(&["create", "namespace", &ns])?;
    s.env.kubectl(&["create", "namespace", &other])?;
    // The database first: replicas' /etc/hosts list the services that exist when they start.
    s.env.kubectl_stdin(
        &["apply", "-f", "-"],
        &workload(&ns, "db", 2, "db", DB_SCRIPT, ""),
    )?;
    s.ready(&ns, "db", 2).await?;
    s.env
        .kubectl_stdin(&["apply", "-f", "-"], &front(&ns, "front"))?;
    s.env
        .kubectl_stdin(&["apply", "-f", "-"], &front(&other, "stranger"))?;
    s.ready(&ns, "front", 1).await?;
    s.ready(&other, "stranger", 1).await?;
    let front_pod = &workload_pods(&s.client, &ns, "front").await?[0];
    ensure!(
        front_pod.spec.as_ref().and_then(|p| p.node_name.as_deref())
            == Some(&node_name(&s.names[0])),
        "the front end runs on provider A"
    );

    // 1. Reads and writes by short name, across providers (A → operator → B or C).
    let stored = s.http(&ns, "front", "db", "POST", "hello").await?;
    ensure!(stored.starts_with("stored by db-"), "POST db: {stored:?}");
    let writer = stored.trim_start_matches("stored by ").to_string();
    let read = eventually(Duration::from_secs(30), || async {
        let r = s.http(&ns, "front", "db", "GET", "").await?;
        ensure!(r.contains(&format!("from {writer}")), "{r}");
        Ok(r)
    })
    .await?;
    ensure!(read.starts_with("value=hello "), "GET db: {read:?}");
    println!("by name: POST → {stored:?}; GET → {read:?}");

    // 2. By full name.
    let fqdn = format!("db.{ns}.svc.decloud");
    let full = s.http(&ns, "front", &fqdn, "GET", "").await?;
    ensure!(full.starts_with("value="), "GET {fqdn}: {full:?}");
    println!("by {fqdn}: {full:?}");

    // 3. Another namespace is refused (default deny) ...
    let refused = s.http(&other, "stranger", &fqdn, "GET", "").await;
    ensure!(
        refused.is_err(),
        "a connection from namespace {other} was carried: {refused:?}"
    );
    let events = eventually(Duration::from_secs(20), || async {
        let ev = s.env.kubectl(&["get", "events", "-n", &other])?;
        ensure!(ev.contains("ServiceConnectionRefused"), "{ev}");
        Ok(ev)
    })
    .await?;
    println!(
        "cross-namespace refused: {}",
        events
            .lines()
            .find(|l| l.contains("ServiceConnectionRefused"))
            .unwrap_or_default()
            .trim()
    );
    // ... until the target lets it in.
    let patch = format!(r#"{{"spec":{{"serviceAccess":{{"allowedNamespaces":["{other}"]}}}}}}"#);
    s.env.kubectl(&[
        "patch", "wl", "db", "-n", &ns, "--type", "merge", "-p", &patch,
    ])?;
    let allowed = eventually(Duration::from_secs(20), || async {
        s.http(&other, "stranger", &fqdn, "GET", "").await
    })
    .await?;
    ensure!(allowed.starts_with("value="), "{allowed:?}");
    println!("cross-namespace allowed after serviceAccess: {allowed:?}");

    // 4. The replica behind the name is killed: the next connections reach the other one.
    let mut seen = BTreeSet::new();
    for _ in 0..8 {
        let r = s.http(&ns, "front", "db", "GET", "").await?;
        if let Some((_, who)) = r.rsplit_once(" from ") {
            seen.insert(who.to_string());
        }
    }
    ensure!(seen.len() == 2, "both replicas answer in turn: {seen:?}");
    let db_pods = workload_pods(&s.client, &ns, "db").await?;
    let victim = db_pods
        .iter()
        .find(|p| {
            p.spec.as_ref().and_then(|x| x.node_name.as_deref()) == Some(&node_name(&s.names[1]))
        })
        .context("a db replica on provider B")?
        .name_any();
    edges[1].child.kill();
    for i in 0..4 {
        let r = s.http(&ns, "front", "db", "GET", "").await?;
        ensure!(
            !r.ends_with(&format!("from {victim}")),
            "connection {i} after the kill reached the dead replica: {r}"
        );
        ensure!(r.starts_with("value="), "{r}");
    }
    println!("after killing provider B ({victim}): every connection reached the other replica");
    Ok(())
}
