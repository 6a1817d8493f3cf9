//! Hostile callers of the operator's kubelet API and public gateway (issue 14, items 2 and 7),
//! end to end: a real kube-apiserver with a kubelet client certificate, the real
//! `decloud-operator`, one real `edge-kubelet` on a Docker engine of its own per edge, and plain clients
//! (curl for HTTPS, raw TCP for HTTP) calling the operator directly as anyone could.
//!
//! Needs `cargo build -p decloud-operator -p edge-kubelet --bins` first.

use std::process::Command;
use std::time::Duration;

use anyhow::{Context as _, bail, ensure};
use decloud_crds::{Provider, ProviderPhase};
use decloud_e2e::cluster::{ContainerSweeper, EdgeProcess, OperatorProcess, busybox_image};
use decloud_e2e::{TestEnv, eventually, free_port};
use k8s_openapi::api::core::v1::Pod;
use kube::ResourceExt;
use kube::api::{Api, ListParams};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

const NS: &str = "default";
const LOG_LINE: &str = "hostile-suite-log-line";

fn workload(name: &str) -> String {
    // The test registry's reference (built and pushed once per process).
    let image = busybox_image().expect("the busybox test image");
    format!(
        r#"apiVersion: decloud.dev/v1alpha1
kind: Workload
metadata: {{name: {name}, namespace: {NS}}}
spec:
  replicas: 1
  template:
    metadata: {{labels: {{app: {name}}}}}
    spec:
      terminationGracePeriodSeconds: 1
      containers:
        - name: web
          image: {image}
          command: ["/bin/sh", "-c", "mkdir -p /www; echo hi > /www/index.html; echo {LOG_LINE}; exec httpd -f -p 8080 -h /www"]
          ports: [{{containerPort: 8080}}]
          resources: {{requests: {{cpu: 50m, memory: 16Mi}}, limits: {{cpu: 500m, memory: 64Mi}}}}
          readinessProbe: {{tcpSocket: {{port: 8080}}, periodSeconds: 1}}
  expose: {{port: 8080}}
"#
    )
}

/// One HTTPS GET to the kubelet API with `extra` curl arguments: the status code (0 if no
/// HTTP answer came, e.g. the TLS handshake was refused) and the body.
fn kubelet_get(port: u16, path: &str, extra: &[&str]) -> anyhow::Result<(u16, String)> {
    let out = Command::new("curl")
        .args(["-sk", "--max-time", "10", "-w", "\n%{http_code}"])
        .args(extra)
        .arg(format!("https://127.0.0.1:{port}{path}"))
        .output()
        .context("running curl")?;
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    let (body, code) = text.rsplit_once('\n').unwrap_or(("", text.as_str()));
    Ok((code.trim().parse().unwrap_or(0), body.to_string()))
}

fn bearer(token: &str) -> String {
    format!("Authorization: Bearer {token}")
}

/// A client certificate claiming `system:masters`, signed by a CA the cluster never trusted.
fn forged_certificate(dir: &std::path::Path) -> anyhow::Result<(String, String)> {
    let mut params = rcgen::CertificateParams::new(Vec::<String>::new())?;
    params
        .distinguished_name
        .push(rcgen::DnType::CommonName, "kube-apiserver-kubelet-client");
    params
        .distinguished_name
        .push(rcgen::DnType::OrganizationName, "system:masters");
    params.extended_key_usages = vec![rcgen::ExtendedKeyUsagePurpose::ClientAuth];
    let key = rcgen::KeyPair::generate()?;
    let cert = params.self_signed(&key)?;
    let (c, k) = (dir.join("forged.crt"), dir.join("forged.key"));
    std::fs::write(&c, cert.pem())?;
    std::fs::write(&k, key.serialize_pem())?;
    Ok((
        c.to_string_lossy().into_owned(),
        k.to_string_lossy().into_owned(),
    ))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn kubelet_api_refuses_anonymous_and_unauthorized_callers() -> anyhow::Result<()> {
    let env = TestEnv::start().await?;
    let client = env.client();
    busybox_image()?;
    let name = format!("hg-{}", std::process::id());
    let node = format!("edge-{name}");
    let _sweeper = ContainerSweeper::new(&env, std::slice::from_ref(&node));
    let operator = OperatorProcess::start(&env, &["--identity", "e2e-hostile-gateway"]).await?;
    let _edge = EdgeProcess::start(&env, &operator, &name, &[])?;
    eventually(Duration::from_secs(60), || async {
        let p = Api::<Provider>::all(client.clone()).get(&name).await?;
        let phase = p.status.map(|s| s.phase);
        ensure!(phase == Some(ProviderPhase::Ready), "{phase:?}");
        Ok(())
    })
    .await
    .with_context(|| format!("edge not Ready: {}", operator.child.log_tail(30)))?;

    env.kubectl_stdin(&["apply", "-f", "-"], &workload("logger"))?;
    let pod = eventually(Duration::from_secs(90), || async {
        let pods = Api::<Pod>::namespaced(client.clone(), NS)
            .list(&ListParams::default().labels("decloud.dev/workload=logger"))
            .await?;
        let Some(p) = pods.items.into_iter().find(decloud_e2e::cluster::pod_ready) else {
            bail!("logger not ready");
        };
        Ok(p.name_any())
    })
    .await?;
    let port = operator.kubelet_port;
    let path = format!("/containerLogs/{NS}/{pod}/web");

    // --- Through the API server (its kubelet client certificate): kubectl logs works.
    let logs = eventually(Duration::from_secs(20), || async {
        let logs = env.kubectl(&["logs", &pod])?;
        ensure!(logs.contains(LOG_LINE), "{logs}");
        Ok(logs)
    })
    .await?;
    println!("kubectl logs through the API server: {}", logs.trim());

    // --- Anonymous, forged token, forged certificate: 401 (or no TLS session at all).
    let (code, body) = kubelet_get(port, &path, &[])?;
    ensure!(
        code == 401 && !body.contains(LOG_LINE),
        "anonymous: {code} {body}"
    );
    for p in ["/healthz", "/exec/default/x/y", "/stats/summary", "/pods"] {
        let (code, body) = kubelet_get(port, p, &[])?;
        ensure!(code == 401, "anonymous {p}: {code} {body}");
    }
    let (code, body) = kubelet_get(port, &path, &["-H", &bearer("not-a-real-token")])?;
    ensure!(code == 401, "forged token: {code} {body}");
    let (cert, key) = forged_certificate(env.dir())?;
    let (code, body) = kubelet_get(port, &path, &["--cert", &cert, "--key", &key])?;
    ensure!(
        code == 0 || code == 401,
        "self-signed system:masters certificate: {code} {body}"
    );
    println!("anonymous 401, forged token 401, untrusted certificate refused ({code})");

    // --- A ServiceAccount token without rights: 403.
    env.kubectl(&["create", "serviceaccount", "snoop", "-n", NS])?;
    let token = env
        .kubectl(&["create", "token", "snoop", "-n", NS])?
        .trim()
        .to_string();
    let auth = bearer(&token);
    let (code, body) = kubelet_get(port, &path, &["-H", &auth])?;
    ensure!(
        code == 403 && !body.contains(LOG_LINE),
        "no rights: {code} {body}"
    );

    // --- nodes/log on another node only: still 403 (the right is checked on the pod's node).
    let grant = |role: &str, names: &str| {
        format!(
            r#"apiVersion: rbac.authorization.k8s.io/v1
kind: ClusterRole
metadata: {{name: {role}}}
rules:
  - apiGroups: [""]
    resources: [nodes/log]
    verbs: [get]
{names}---
apiVersion: rbac.authorization.k8s.io/v1
kind: ClusterRoleBinding
metadata: {{name: {role}}}
roleRef: {{apiGroup: rbac.authorization.k8s.io, kind: ClusterRole, name: {role}}}
subjects: [{{kind: ServiceAccount, name: snoop, namespace: {NS}}}]
"#
        )
    };
    env.kubectl_stdin(
        &["apply", "-f", "-"],
        &grant(
            "snoop-other-node",
            "    resourceNames: [edge-someone-else]\n",
        ),
    )?;
    // Past the review cache's lifetime, the scoped grant is known and still not enough.
    tokio::time::sleep(Duration::from_secs(11)).await;
    let (code, body) = kubelet_get(port, &path, &["-H", &auth])?;
    ensure!(code == 403, "nodes/log on another node: {code} {body}");
    // Logs are not exec: nodes/log does not open the other kubelet paths.
    let (code, body) = kubelet_get(port, &format!("/exec/{NS}/{pod}/web"), &["-H", &auth])?;
    ensure!(
        code == 403,
        "exec with nodes/log on another node: {code} {body}"
    );

    // --- nodes/log: the logs (within the review cache's lifetime of the grant).
    env.kubectl_stdin(&["apply", "-f", "-"], &grant("snoop-logs", ""))?;
    let body = eventually(Duration::from_secs(30), || async {
        let (code, body) = kubelet_get(port, &path, &["-H", &auth])?;
        ensure!(code == 200 && body.contains(LOG_LINE), "{code} {body}");
        Ok(body)
    })
    .await?;
    println!(
        "ServiceAccount: 403 without rights, 200 with nodes/log: {}",
        body.trim()
    );
    let (code, body) = kubelet_get(port, &format!("/exec/{NS}/{pod}/web"), &["-H", &auth])?;
    ensure!(code == 403, "exec with nodes/log only: {code} {body}");

    // --- And kubectl logs through the API server still works.
    let logs = env.kubectl(&["logs", &pod])?;
    ensure!(logs.contains(LOG_LINE), "{logs}");
    Ok(())
}

/// Sends `raw` to the gateway and reads until it closes (at most `within`); None on timeout.
async fn exchange(port: u16, raw: &[u8], within: Duration) -> anyhow::Result<Option<String>> {
    let mut s = TcpStream::connect(("127.0.0.1", port)).await?;
    // The gateway may answer (and close) before it has read everything.
    let _ = s.write_all(raw).await;
    let mut out = Vec::new();
    match tokio::time::timeout(within, s.read_to_end(&mut out)).await {
        Err(_) => Ok(None),
        Ok(_) => Ok(Some(String::from_utf8_lossy(&out).into_owned())),
    }
}

/// Serves `env` (the CGI environment, hence the request headers as the app sees them) on
/// `/cgi-bin/env`.
const WHOAMI_SCRIPT: &str = "mkdir -p /www/cgi-bin; echo hi > /www/index.html; \
    printf '#!/bin/sh\\necho Content-Type: text/plain\\necho\\nenv\\n' > /www/cgi-bin/env; \
    chmod +x /www/cgi-bin/env; exec httpd -f -p 8080 -h /www";

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn public_gateway_limits_hold_against_the_real_operator() -> anyhow::Result<()> {
    let env = TestEnv::start().await?;
    busybox_image()?;
    let name = format!("hgw-{}", std::process::id());
    let _sweeper = ContainerSweeper::new(&env, &[format!("edge-{name}")]);
    let gw = free_port()?;
    let listen = format!("127.0.0.1:{gw}");
    let operator = OperatorProcess::start(
        &env,
        &[
            "--identity",
            "e2e-hostile-gateway-limits",
            "--gateway-listen",
            &listen,
            "--gateway-header-timeout",
            "2s",
            "--gateway-max-header-bytes",
            "16384",
            "--gateway-max-connections",
            "4",
        ],
    )
    .await?;
    let _edge = EdgeProcess::start(&env, &operator, &name, &[])?;
    let manifest = workload("whoami").replace(
        &format!(
            "[\"/bin/sh\", \"-c\", \"mkdir -p /www; echo hi > /www/index.html; echo {LOG_LINE}; exec httpd -f -p 8080 -h /www\"]"
        ),
        &format!("[\"/bin/sh\", \"-c\", {WHOAMI_SCRIPT:?}]"),
    );
    ensure!(manifest.contains("cgi-bin"), "{manifest}");
    env.kubectl_stdin(&["apply", "-f", "-"], &manifest)?;
    let host = "whoami.default.decloud.localhost";
    let get = |path: &str, extra: &str| {
        format!("GET {path} HTTP/1.1\r\nHost: {host}\r\n{extra}Connection: close\r\n\r\n")
    };
    eventually(Duration::from_secs(90), || async {
        let r = exchange(gw, get("/", "").as_bytes(), Duration::from_secs(5))
            .await?
            .unwrap_or_default();
        ensure!(r.starts_with("HTTP/1.1 200"), "{r}");
        Ok(())
    })
    .await
    .with_context(|| format!("whoami not served: {}", operator.child.log_tail(20)))?;

    // --- The app sees the client the gateway saw, not what the client claimed.
    let spoofed = "X-Forwarded-For: 6.6.6.6\r\nX-Forwarded-Proto: https\r\nX-Forwarded-Host: evil.example\r\nForwarded: for=6.6.6.6\r\n";
    let r = exchange(
        gw,
        get("/cgi-bin/env", spoofed).as_bytes(),
        Duration::from_secs(10),
    )
    .await?
    .context("no answer")?;
    ensure!(
        r.contains("HTTP_X_FORWARDED_FOR=127.0.0.1\n")
            && r.contains("HTTP_X_FORWARDED_PROTO=http\n")
            && r.contains(&format!("HTTP_X_FORWARDED_HOST={host}\n"))
            && !r.contains("6.6.6.6")
            && !r.contains("evil"),
        "the app saw: {r}"
    );
    println!(
        "the app sees X-Forwarded-For=127.0.0.1, Proto=http, Host={host}; the forged ones are gone"
    );

    // --- A head larger than the limit: 431.
    let big = get("/", &format!("X-Big: {}\r\n", "a".repeat(64 * 1024)));
    let r = exchange(gw, big.as_bytes(), Duration::from_secs(10))
        .await?
        .context("no answer")?;
    ensure!(r.starts_with("HTTP/1.1 431"), "{r}");

    // --- A slow client is cut off after the header timeout (408), not held forever.
    let started = std::time::Instant::now();
    let r = exchange(
        gw,
        b"GET / HTTP/1.1\r\nHost: whoami.def",
        Duration::from_secs(10),
    )
    .await?
    .context("a slow client was held for 10 s")?;
    ensure!(r.starts_with("HTTP/1.1 408"), "{r}");
    println!(
        "431 for a 64 KiB head; a slow head cut off with 408 after {:?}",
        started.elapsed()
    );

    // --- Beyond the connection cap: 503 with Retry-After, naming no provider or node.
    let mut held = Vec::new();
    for _ in 0..4 {
        held.push(TcpStream::connect(("127.0.0.1", gw)).await?);
    }
    // The cap counts connections the gateway has accepted: on a loaded machine the four may
    // take a moment to be, so the fifth is tried until they are.
    let r = eventually(Duration::from_secs(10), || async {
        let r = exchange(gw, get("/", "").as_bytes(), Duration::from_secs(5))
            .await?
            .context("no answer beyond the cap")?;
        ensure!(
            r.starts_with("HTTP/1.1 503") && r.to_ascii_lowercase().contains("retry-after: "),
            "{r}"
        );
        Ok(r)
    })
    .await?;
    ensure!(!r.contains(&name), "the 503 names the provider: {r}");
    drop(held);
    eventually(Duration::from_secs(10), || async {
        let r = exchange(gw, get("/", "").as_bytes(), Duration::from_secs(5))
            .await?
            .unwrap_or_default();
        ensure!(r.starts_with("HTTP/1.1 200"), "{r}");
        Ok(())
    })
    .await?;
    println!("5th connection over a cap of 4: 503 with Retry-After; served again once they closed");
    Ok(())
}
