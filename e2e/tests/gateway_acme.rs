//! Issue 17, HTTPS with certificates over ACME. Against a real kube-apiserver, the real
//! `decloud-operator` (Workload controller and gateway, with `--https-listen` and
//! `--acme-directory`), a real `edge-kubelet` on the real Docker engine, and the real ACME
//! server pebble (built from its Go module), whose DNS (pebble-challtestsrv) points every
//! custom domain at 127.0.0.1 and which validates HTTP-01 on the gateway's HTTP port. Traffic
//! only to 127.0.0.1 and the suite's own containers.
//!
//! - A Workload on a custom domain granted to its namespace gets a certificate from pebble
//!   (HTTP-01 answered by the gateway): `CertificateReady` True, an `https://` URL, the
//!   certificate stored in a labelled `kubernetes.io/tls` Secret in the operator's namespace;
//!   it answers HTTPS verified against pebble's issuing root only (never "insecure"), over
//!   HTTP/1.1 and over HTTP/2 negotiated by ALPN; plain HTTP gets 308 to `https://`.
//! - A WebSocket (RFC 6455 handshake, then frames both ways) passes over HTTPS on another
//!   granted domain with its own certificate.
//! - A host pebble refuses (its block list): `AcmeOrderFailed` with the ACME error in the
//!   condition and a Warning event, and the failure and its backoff recorded on the Secret.
//! - A custom host not granted: `HostNotAccepted`, and nothing is ordered for it.
//!
//! Needs `cargo build --workspace --bins` first.

use std::{sync::Arc, time::Duration};

use anyhow::{bail, ensure};
use decloud_crds::contracts::{
    ACME_ERROR_ANNOTATION, ACME_HOST_ANNOTATION, ACME_LABEL, ACME_LABEL_VALUE,
    ACME_RETRY_AFTER_ANNOTATION, node_name,
};
use decloud_crds::{Workload, find_condition};
use decloud_e2e::cluster::{
    ContainerSweeper, EdgeProcess, OperatorProcess, busybox_image, http_get_reply, pod_ready,
    wait_providers_ready, workload_pods,
};
use decloud_e2e::pebble::Pebble;
use decloud_e2e::{OPERATOR_NAMESPACE, TestEnv, eventually, free_port};
use decloud_workload::acme::secret_name;
use http_body_util::{BodyExt, Empty};
use k8s_openapi::api::core::v1::{Event, Secret};
use kube::Client;
use kube::api::{Api, ListParams};
use rustls::pki_types::{CertificateDer, ServerName, pem::PemObject};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

const NS: &str = "gw-acme";
const SHOP: &str = "shop.acme-e2e.test";
const CHAT: &str = "chat.acme-e2e.test";
const BLOCKED: &str = "blocked.acme-e2e.test";
const UNGRANTED: &str = "nope.acme-e2e.test";

/// RFC 6455's example key and its accept value (section 1.3).
const WS_KEY: &str = "dGhlIHNhbXBsZSBub25jZQ==";
const WS_ACCEPT: &str = "s3pPLMBiTxaQ9kYGzzhZRbK+xOo=";

/// A Workload serving `host`, naming no Secret. `app` is `httpd` (answers `app <name>`) or
/// `ws` (a WebSocket echo: the handshake answered, then every byte echoed).
fn workload(name: &str, host: &str, replicas: u32, app: &str) -> String {
    let image = busybox_image().expect("the test image (pushed at the start of the test)");
    let (script, probe) = match app {
        "httpd" => (
            format!(
                "mkdir -p /www; echo 'app {name}' > /www/index.html; exec httpd -f -p 8080 -h /www"
            ),
            "\n          readinessProbe: {httpGet: {path: /, port: 8080}, periodSeconds: 1}",
        ),
        _ => (
            format!(
                "cat > /ws.sh <<'EOF'\n#!/bin/sh\nwhile read -r line; do\n  line=$(printf '%s' \"$line\" | tr -d '\\r')\n  [ -z \"$line\" ] && break\ndone\nprintf 'HTTP/1.1 101 Switching Protocols\\r\\nUpgrade: websocket\\r\\nConnection: Upgrade\\r\\nSec-WebSocket-Accept: {WS_ACCEPT}\\r\\n\\r\\n'\nexec cat\nEOF\nchmod +x /ws.sh; exec nc -ll -p 8080 -e /ws.sh"
            ),
            "",
        ),
    };
    format!(
        r#"apiVersion: decloud.dev/v1alpha1
kind: Workload
metadata: {{name: {name}, namespace: {NS}}}
spec:
  replicas: {replicas}
  template:
    spec:
      terminationGracePeriodSeconds: 1
      containers:
        - name: web
          image: {image}
          command: ["/bin/sh", "-c", {script:?}]
          ports: [{{containerPort: 8080}}]
          resources: {{requests: {{cpu: 50m, memory: 16Mi}}, limits: {{cpu: 500m, memory: 64Mi}}}}{probe}
  expose: {{port: 8080, host: {host}}}
"#
    )
}

/// Waits until `name` shows `CertificateReady` with `status` and `reason`: (message, url).
async fn wait_certificate(
    client: &Client,
    name: &str,
    status: &str,
    reason: &str,
    within: Duration,
) -> anyhow::Result<(String, Option<String>)> {
    eventually(within, || async {
        let wl = Api::<Workload>::namespaced(client.clone(), NS)
            .get(name)
            .await?;
        let st = wl.status.unwrap_or_default();
        match find_condition(&st.conditions, "CertificateReady") {
            Some(c) if c.status == status && c.reason == reason => Ok((c.message.clone(), st.url)),
            other => bail!(
                "{NS}/{name}: CertificateReady {:?}, url {:?}",
                other.map(|c| (&c.status, &c.reason, &c.message)),
                st.url
            ),
        }
    })
    .await
}

/// A TLS connection to the gateway's HTTPS port with SNI `host`, trusting only `root`,
/// offering `alpn`.
async fn tls_connect(
    port: u16,
    host: &str,
    root: &str,
    alpn: &[&[u8]],
) -> anyhow::Result<tokio_rustls::client::TlsStream<tokio::net::TcpStream>> {
    let mut roots = rustls::RootCertStore::empty();
    roots.add(CertificateDer::from_pem_slice(root.as_bytes())?)?;
    let mut config = rustls::ClientConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()?
    .with_root_certificates(roots)
    .with_no_client_auth();
    config.alpn_protocols = alpn.iter().map(|p| p.to_vec()).collect();
    let tcp = tokio::net::TcpStream::connect(("127.0.0.1", port)).await?;
    Ok(tokio_rustls::TlsConnector::from(Arc::new(config))
        .connect(ServerName::try_from(host.to_string())?, tcp)
        .await?)
}

async fn warning_events(client: &Client, name: &str, reason: &str) -> anyhow::Result<usize> {
    Ok(Api::<Event>::namespaced(client.clone(), NS)
        .list(&ListParams::default().fields(&format!(
            "involvedObject.name={name},reason={reason},type=Warning"
        )))
        .await?
        .items
        .len())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn acme_certificates_from_pebble_are_served_and_failures_reported() -> anyhow::Result<()> {
    let env = TestEnv::start().await?;
    busybox_image()?;
    // Under CI a missing pebble fails here, loudly (pebble_dir errors; it never skips).
    decloud_e2e::pebble::pebble_dir()?;
    let client = env.client();
    let name = format!("gwacme-{}", std::process::id());
    let sweeper = ContainerSweeper::new(&env, &[node_name(&name)]);
    let https_port = free_port()?;
    let acme_port = free_port()?;
    let https_listen = format!("127.0.0.1:{https_port}");
    let public_port = https_port.to_string();
    let directory = format!("https://127.0.0.1:{acme_port}/dir");
    let minica = decloud_e2e::pebble::pebble_dir()?.join("pebble.minica.pem");
    let minica = minica.to_string_lossy().to_string();
    let operator = OperatorProcess::start(
        &env,
        &[
            "--identity",
            "e2e-gateway-acme",
            "--https-listen",
            &https_listen,
            "--https-public-port",
            &public_port,
            "--acme-directory",
            &directory,
            "--acme-contact",
            "mailto:e2e@acme-e2e.test",
            "--acme-ca-bundle",
            &minica,
        ],
    )
    .await?;
    // pebble validates HTTP-01 on the gateway's plain HTTP port, as a CA reaches port 80.
    let pebble = Pebble::start(&env, acme_port, operator.gateway_port, &[BLOCKED]).await?;
    let edge = EdgeProcess::start(&env, &operator, &name, &[])?;
    wait_providers_ready(&client, &operator, std::slice::from_ref(&name)).await?;
    env.kubectl(&["create", "namespace", NS])?;
    env.kubectl(&[
        "annotate",
        "namespace",
        NS,
        &format!("decloud.dev/allowed-hosts={SHOP},{CHAT},{BLOCKED}"),
    ])?;
    let result = async {
        let ctx = Suite {
            env: &env,
            client: &client,
            http: operator.gateway_port,
            https: https_port,
        };
        ctx.a_custom_domain_gets_a_certificate_from_pebble(&pebble)
            .await?;
        ctx.a_websocket_passes_over_https(&pebble).await?;
        ctx.a_refused_order_is_reported().await?;
        ctx.an_ungranted_host_is_never_ordered().await?;
        anyhow::Ok(())
    }
    .await;
    if result.is_err() {
        eprintln!("operator log:\n{}", operator.child.log_tail(80));
        eprintln!("pebble log:\n{}", pebble.child.log_tail(40));
    }
    let _ = env.kubectl(&["delete", "wl", "--all", "-n", NS, "--wait=false"]);
    drop(edge);
    sweeper.sweep();
    result?;
    // The operator runs with the chart's RBAC: storing the certificates must be granted.
    operator.ensure_clean()
}

struct Suite<'a> {
    env: &'a TestEnv,
    client: &'a Client,
    http: u16,
    https: u16,
}

impl Suite<'_> {
    fn apply(&self, yaml: &str) -> anyhow::Result<()> {
        self.env.kubectl_stdin(&["apply", "-f", "-"], yaml)?;
        Ok(())
    }

    async fn ready(&self, name: &str) -> anyhow::Result<()> {
        eventually(Duration::from_secs(90), || async {
            let pods = workload_pods(self.client, NS, name).await?;
            ensure!(pods.iter().any(pod_ready), "{name}: no ready replica");
            Ok(())
        })
        .await
    }

    /// `shop` on SHOP: pebble issues (HTTP-01 through the gateway), the Secret is stored and
    /// labelled, HTTPS verifies against pebble's root over HTTP/1.1 and HTTP/2, HTTP → 308.
    async fn a_custom_domain_gets_a_certificate_from_pebble(
        &self,
        pebble: &Pebble,
    ) -> anyhow::Result<()> {
        self.apply(&workload("shop", SHOP, 1, "httpd"))?;
        let (_, url) = wait_certificate(
            self.client,
            "shop",
            "True",
            "CertificateServed",
            Duration::from_secs(120),
        )
        .await?;
        let want = format!("https://{SHOP}:{}", self.https);
        ensure!(
            url.as_deref() == Some(want.as_str()),
            "url {url:?}, want {want}"
        );
        let secret = Api::<Secret>::namespaced(self.client.clone(), OPERATOR_NAMESPACE)
            .get(&secret_name(SHOP))
            .await?;
        ensure!(
            secret.type_.as_deref() == Some("kubernetes.io/tls")
                && secret
                    .metadata
                    .labels
                    .as_ref()
                    .and_then(|l| l.get(ACME_LABEL))
                    == Some(&ACME_LABEL_VALUE.to_string())
                && secret
                    .metadata
                    .annotations
                    .as_ref()
                    .and_then(|a| a.get(ACME_HOST_ANNOTATION))
                    == Some(&SHOP.to_string()),
            "the stored certificate Secret: {:?}",
            secret.metadata
        );
        self.ready("shop").await?;
        let root = pebble.issuing_root().await?;
        let answer = eventually(Duration::from_secs(30), || async {
            let mut s = tls_connect(self.https, SHOP, &root, &[b"http/1.1"]).await?;
            s.write_all(
                format!("GET / HTTP/1.1\r\nHost: {SHOP}\r\nConnection: close\r\n\r\n").as_bytes(),
            )
            .await?;
            let mut out = Vec::new();
            let _ = tokio::time::timeout(Duration::from_secs(10), s.read_to_end(&mut out)).await;
            let answer = String::from_utf8_lossy(&out).into_owned();
            ensure!(answer.starts_with("HTTP/1.1 200"), "{answer}");
            Ok(answer)
        })
        .await?;
        ensure!(answer.contains("app shop"), "{answer}");
        // The certificate verifies against pebble's issuing root only: not against its other
        // root (the minica one its API is served under).
        let minica = std::fs::read_to_string(pebble.minica_path())?;
        ensure!(
            tls_connect(self.https, SHOP, &minica, &[]).await.is_err(),
            "the served chain must not verify against an unrelated root"
        );

        // HTTP/2 by ALPN on the same listener.
        let s = tls_connect(self.https, SHOP, &root, &[b"h2", b"http/1.1"]).await?;
        ensure!(
            s.get_ref().1.alpn_protocol() == Some(&b"h2"[..]),
            "ALPN picked {:?}",
            s.get_ref().1.alpn_protocol()
        );
        let (mut send, conn) = hyper::client::conn::http2::handshake(
            hyper_util::rt::TokioExecutor::new(),
            hyper_util::rt::TokioIo::new(s),
        )
        .await?;
        tokio::spawn(conn);
        for _ in 0..3 {
            let req =
                http::Request::get(format!("https://{SHOP}/")).body(Empty::<bytes::Bytes>::new())?;
            let rsp = send.send_request(req).await?;
            ensure!(
                rsp.status() == 200 && rsp.version() == http::Version::HTTP_2,
                "HTTP/2: {:?} {:?}",
                rsp.status(),
                rsp.version()
            );
            let body = rsp.into_body().collect().await?.to_bytes();
            ensure!(body.starts_with(b"app shop"), "{body:?}");
        }

        let reply = http_get_reply(self.http, SHOP, "/x?y=1", Duration::from_secs(10)).await?;
        let want = format!("https://{SHOP}:{}/x?y=1", self.https);
        ensure!(
            reply.code == 308 && reply.head.contains(&format!("\r\nlocation: {want}")),
            "plain HTTP: {}, want 308 to {want}",
            reply.head
        );
        println!(
            "{SHOP}: certificate from pebble (HTTP-01 via the gateway), stored in {OPERATOR_NAMESPACE}/{}; HTTPS verified against pebble's root, HTTP/1.1 and h2; HTTP → 308",
            secret_name(SHOP)
        );
        Ok(())
    }

    /// `chat` on CHAT (its own certificate): the WebSocket handshake over HTTPS answers 101
    /// with the RFC's accept value, then a frame goes through and comes back.
    async fn a_websocket_passes_over_https(&self, pebble: &Pebble) -> anyhow::Result<()> {
        self.apply(&workload("chat", CHAT, 1, "ws"))?;
        wait_certificate(
            self.client,
            "chat",
            "True",
            "CertificateServed",
            Duration::from_secs(120),
        )
        .await?;
        self.ready("chat").await?;
        let root = pebble.issuing_root().await?;
        let got = eventually(Duration::from_secs(30), || async {
            let mut s = tls_connect(self.https, CHAT, &root, &[b"http/1.1"]).await?;
            s.write_all(
                format!(
                    "GET /chat HTTP/1.1\r\nHost: {CHAT}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Key: {WS_KEY}\r\nSec-WebSocket-Version: 13\r\n\r\n"
                )
                .as_bytes(),
            )
            .await?;
            let mut head = Vec::new();
            let mut byte = [0u8; 1];
            while !head.ends_with(b"\r\n\r\n") && head.len() < 4096 {
                let n = tokio::time::timeout(Duration::from_secs(10), s.read(&mut byte)).await??;
                ensure!(n == 1, "closed during the handshake: {:?}", String::from_utf8_lossy(&head));
                head.push(byte[0]);
            }
            let head = String::from_utf8_lossy(&head).into_owned();
            ensure!(
                head.starts_with("HTTP/1.1 101") && head.contains(WS_ACCEPT),
                "{head}"
            );
            // A masked text frame "hello" (RFC 6455 5.7's example); the app echoes bytes.
            let frame = [0x81u8, 0x85, 0x37, 0xfa, 0x21, 0x3d, 0x7f, 0x9f, 0x4d, 0x51, 0x58];
            s.write_all(&frame).await?;
            let mut back = [0u8; 11];
            tokio::time::timeout(Duration::from_secs(10), s.read_exact(&mut back)).await??;
            ensure!(back == frame, "echoed {back:?}");
            Ok(head)
        })
        .await?;
        println!(
            "{CHAT}: WebSocket over HTTPS ({}), a frame both ways",
            got.lines().next().unwrap_or_default()
        );
        Ok(())
    }

    /// `blocked` on a host pebble refuses: `AcmeOrderFailed` with pebble's error, a Warning
    /// event, and the failure count, backoff and error on the Secret.
    async fn a_refused_order_is_reported(&self) -> anyhow::Result<()> {
        self.apply(&workload("blocked", BLOCKED, 0, "httpd"))?;
        let (message, url) = wait_certificate(
            self.client,
            "blocked",
            "False",
            "AcmeOrderFailed",
            Duration::from_secs(120),
        )
        .await?;
        ensure!(
            message.contains("rejectedIdentifier") && message.contains("next attempt at"),
            "message {message:?}"
        );
        ensure!(
            url.as_deref() == Some(format!("http://{BLOCKED}").as_str()),
            "url {url:?}"
        );
        eventually(Duration::from_secs(10), || async {
            ensure!(
                warning_events(self.client, "blocked", "AcmeOrderFailed").await? >= 1,
                "no AcmeOrderFailed Warning event yet"
            );
            Ok(())
        })
        .await?;
        let secret = Api::<Secret>::namespaced(self.client.clone(), OPERATOR_NAMESPACE)
            .get(&secret_name(BLOCKED))
            .await?;
        let ann = secret.metadata.annotations.unwrap_or_default();
        ensure!(
            ann.get(ACME_ERROR_ANNOTATION)
                .is_some_and(|e| e.contains("rejectedIdentifier"))
                && ann.contains_key(ACME_RETRY_AFTER_ANNOTATION),
            "annotations {ann:?}"
        );
        println!("{BLOCKED}: AcmeOrderFailed ({message})");
        Ok(())
    }

    /// `nope` claims a custom host not granted: `HostNotAccepted`, no order, no Secret.
    async fn an_ungranted_host_is_never_ordered(&self) -> anyhow::Result<()> {
        self.apply(&workload("nope", UNGRANTED, 0, "httpd"))?;
        let (message, _) = wait_certificate(
            self.client,
            "nope",
            "False",
            "HostNotAccepted",
            Duration::from_secs(30),
        )
        .await?;
        ensure!(message.contains(UNGRANTED), "{message}");
        tokio::time::sleep(Duration::from_secs(3)).await;
        let secret = Api::<Secret>::namespaced(self.client.clone(), OPERATOR_NAMESPACE)
            .get_opt(&secret_name(UNGRANTED))
            .await?;
        ensure!(secret.is_none(), "a host not granted was ordered");
        println!("{UNGRANTED}: not granted, HostNotAccepted, nothing ordered");
        Ok(())
    }
}
