//! Issue 17, HTTPS with a user-supplied certificate. Against a real kube-apiserver, the real
//! `decloud-operator` (Workload controller and gateway, with `--https-listen`) and a real
//! `edge-kubelet` on a Docker engine of its own per edge; traffic only to 127.0.0.1 and the suite's own
//! container.
//!
//! The suite makes its own CA and leaves (rcgen), stores them as `kubernetes.io/tls` Secrets
//! and checks the gateway's HTTPS answers against that CA only (a rustls client; never
//! "insecure"):
//! - a Workload naming a Secret that covers its host: `CertificateReady` True, an `https://`
//!   URL, the app answers over HTTPS (SNI), plain HTTP gets 308 to `https://`;
//! - a Secret not covering the host: `HostNotCovered` with a Warning event, no handshake;
//! - another Workload naming the first one's Secret: for its own host `HostNotCovered`; for
//!   the first one's host (which it may not take) `HostNotAccepted`, and the host's HTTPS stays
//!   the first one's; from another namespace the Secret is `SecretNotFound`;
//! - an expired certificate: `Expired`; a wrong Secret type: `InvalidCertificate`.
//!
//! Needs `cargo build --workspace --bins` first.

use std::{sync::Arc, time::Duration};

use anyhow::{bail, ensure};
use decloud_crds::contracts::node_name;
use decloud_crds::{Workload, find_condition};
use decloud_e2e::cluster::{
    ContainerSweeper, EdgeProcess, OperatorProcess, busybox_image, http_get_reply, pod_ready,
    wait_providers_ready, workload_pods,
};
use decloud_e2e::{TestEnv, eventually, free_port};
use k8s_openapi::api::core::v1::Event;
use kube::Client;
use kube::api::{Api, ListParams};
use rcgen::{BasicConstraints, CertificateParams, IsCa, Issuer, KeyPair};
use rustls::pki_types::{CertificateDer, ServerName, pem::PemObject};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

const NS: &str = "gw-tls";
const OTHER_NS: &str = "gw-tls-other";

fn host(name: &str) -> String {
    format!("{name}.{NS}.decloud.localhost")
}

/// The suite's CA.
struct Ca {
    pem: String,
    params: CertificateParams,
    key: KeyPair,
}

impl Ca {
    fn new() -> anyhow::Result<Self> {
        let key = KeyPair::generate()?;
        let mut params = CertificateParams::new(Vec::<String>::new())?;
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params
            .distinguished_name
            .push(rcgen::DnType::CommonName, "decloud-e2e-gateway-tls-ca");
        let pem = params.self_signed(&key)?.pem();
        Ok(Self { pem, params, key })
    }

    /// `(tls.crt, tls.key)` for `names`, valid from `from` to `until` (years).
    fn leaf(&self, names: &[&str], from: i32, until: i32) -> anyhow::Result<(String, String)> {
        let key = KeyPair::generate()?;
        let mut p =
            CertificateParams::new(names.iter().map(|s| s.to_string()).collect::<Vec<_>>())?;
        p.not_before = rcgen::date_time_ymd(from, 1, 1);
        p.not_after = rcgen::date_time_ymd(until, 1, 1);
        let cert = p.signed_by(&key, &Issuer::from_params(&self.params, &self.key))?;
        Ok((cert.pem(), key.serialize_pem()))
    }
}

/// A Secret `name` of `kind` in `ns` (JSON, which `kubectl apply` takes too).
fn secret(ns: &str, name: &str, kind: &str, (crt, key): &(String, String)) -> String {
    serde_json::json!({
        "apiVersion": "v1", "kind": "Secret",
        "metadata": {"name": name, "namespace": ns},
        "type": kind,
        "stringData": {"tls.crt": crt, "tls.key": key},
    })
    .to_string()
}

/// A Workload answering `answer` on `/`, with `replicas`, naming Secret `secret`; exposed as
/// `host` if given.
fn workload(ns: &str, name: &str, replicas: u32, secret: &str, host: Option<&str>) -> String {
    // The test registry's reference (built and pushed once per process).
    let image = busybox_image().expect("the busybox test image");
    let script = format!(
        "mkdir -p /www; echo 'app {name}' > /www/index.html; exec httpd -f -p 8080 -h /www"
    );
    let host = host.map(|h| format!(", host: {h}")).unwrap_or_default();
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
        - name: web
          image: {image}
          command: ["/bin/sh", "-c", {script:?}]
          ports: [{{containerPort: 8080}}]
          resources: {{requests: {{cpu: 50m, memory: 16Mi}}, limits: {{cpu: 500m, memory: 64Mi}}}}
          readinessProbe: {{httpGet: {{path: /, port: 8080}}, periodSeconds: 1}}
  expose: {{port: 8080, tls: {{secretName: {secret}}}{host}}}
"#
    )
}

/// Waits until `ns/name` shows `CertificateReady` with `status` and `reason`: (message, url).
async fn wait_certificate(
    client: &Client,
    ns: &str,
    name: &str,
    status: &str,
    reason: &str,
) -> anyhow::Result<(String, Option<String>)> {
    eventually(Duration::from_secs(30), || async {
        let wl = Api::<Workload>::namespaced(client.clone(), ns)
            .get(name)
            .await?;
        let st = wl.status.unwrap_or_default();
        match find_condition(&st.conditions, "CertificateReady") {
            Some(c) if c.status == status && c.reason == reason => Ok((c.message.clone(), st.url)),
            other => bail!(
                "{ns}/{name}: CertificateReady {:?}, url {:?}",
                other.map(|c| (&c.status, &c.reason, &c.message)),
                st.url
            ),
        }
    })
    .await
}

/// A TLS connection to the gateway's HTTPS port with SNI `host`, trusting only `ca`.
async fn tls_connect(
    port: u16,
    host: &str,
    ca: &str,
) -> anyhow::Result<tokio_rustls::client::TlsStream<tokio::net::TcpStream>> {
    let mut roots = rustls::RootCertStore::empty();
    roots.add(CertificateDer::from_pem_slice(ca.as_bytes())?)?;
    let config = rustls::ClientConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()?
    .with_root_certificates(roots)
    .with_no_client_auth();
    let tcp = tokio::net::TcpStream::connect(("127.0.0.1", port)).await?;
    Ok(tokio_rustls::TlsConnector::from(Arc::new(config))
        .connect(ServerName::try_from(host.to_string())?, tcp)
        .await?)
}

/// `GET /` over HTTPS for `host`, verified against `ca`: the raw answer.
async fn https_get(port: u16, host: &str, ca: &str) -> anyhow::Result<String> {
    let mut s = tls_connect(port, host, ca).await?;
    s.write_all(format!("GET / HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\n\r\n").as_bytes())
        .await?;
    let mut out = Vec::new();
    let _ = tokio::time::timeout(Duration::from_secs(10), s.read_to_end(&mut out)).await;
    Ok(String::from_utf8_lossy(&out).into_owned())
}

async fn warning_events(
    client: &Client,
    ns: &str,
    name: &str,
    reason: &str,
) -> anyhow::Result<usize> {
    Ok(Api::<Event>::namespaced(client.clone(), ns)
        .list(&ListParams::default().fields(&format!(
            "involvedObject.name={name},reason={reason},type=Warning"
        )))
        .await?
        .items
        .len())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn user_supplied_certificates_are_served_by_sni_and_checked() -> anyhow::Result<()> {
    let env = TestEnv::start().await?;
    busybox_image()?;
    let client = env.client();
    let name = format!("gwtls-{}", std::process::id());
    let sweeper = ContainerSweeper::new(&env, &[node_name(&name)]);
    let https_port = free_port()?;
    let https_listen = format!("127.0.0.1:{https_port}");
    let public_port = https_port.to_string();
    let operator = OperatorProcess::start(
        &env,
        &[
            "--identity",
            "e2e-gateway-tls",
            "--https-listen",
            &https_listen,
            "--https-public-port",
            &public_port,
        ],
    )
    .await?;
    let edge = EdgeProcess::start(&env, &operator, &name, &[])?;
    wait_providers_ready(&client, &operator, std::slice::from_ref(&name)).await?;
    for ns in [NS, OTHER_NS] {
        env.kubectl(&["create", "namespace", ns])?;
    }
    let result = async {
        let ca = Ca::new()?;
        let ctx = Suite {
            env: &env,
            client: &client,
            ca: &ca,
            http: operator.gateway_port,
            https: https_port,
        };
        ctx.the_schema_bounds_the_secret_name()?;
        ctx.a_covering_certificate_is_served_and_http_redirects()
            .await?;
        ctx.a_certificate_not_covering_the_host_is_refused().await?;
        ctx.another_workload_cannot_use_the_certificate().await?;
        ctx.expired_and_mistyped_secrets_are_refused().await?;
        anyhow::Ok(())
    }
    .await;
    if result.is_err() {
        eprintln!("operator log:\n{}", operator.child.log_tail(60));
    }
    for ns in [NS, OTHER_NS] {
        let _ = env.kubectl(&["delete", "wl", "--all", "-n", ns, "--wait=false"]);
    }
    drop(edge);
    sweeper.sweep();
    result?;
    // The operator runs with the chart's RBAC: reading the named Secrets must be granted.
    operator.ensure_clean()
}

struct Suite<'a> {
    env: &'a TestEnv,
    client: &'a Client,
    ca: &'a Ca,
    http: u16,
    https: u16,
}

impl Suite<'_> {
    fn apply(&self, yaml: &str) -> anyhow::Result<()> {
        self.env.kubectl_stdin(&["apply", "-f", "-"], yaml)?;
        Ok(())
    }

    /// A Secret name that is no DNS subdomain (a path, another namespace's `ns/name`, too
    /// long) is refused at `kubectl apply`, the field named.
    fn the_schema_bounds_the_secret_name(&self) -> anyhow::Result<()> {
        let long = "a".repeat(254);
        for bad in [
            "other-ns/web-cert",
            "../web-cert",
            "Web-Cert",
            long.as_str(),
        ] {
            let err = match self.apply(&workload(NS, "bad", 0, &format!("{bad:?}"), None)) {
                Ok(()) => bail!("secretName {bad:?} was accepted"),
                Err(e) => format!("{e:#}"),
            };
            ensure!(
                err.contains("spec.expose.tls.secretName"),
                "secretName {bad:?}: {err}"
            );
        }
        println!("secretName: paths, namespaced names, upper case and 254 characters refused");
        Ok(())
    }

    /// `web` names `web-cert` (for its host): served over HTTPS verified against the suite's
    /// CA, `https://` URL, and plain HTTP answers 308 to `https://`.
    async fn a_covering_certificate_is_served_and_http_redirects(&self) -> anyhow::Result<()> {
        let web = host("web");
        self.apply(&secret(
            NS,
            "web-cert",
            "kubernetes.io/tls",
            &self.ca.leaf(&[&web], 2020, 2100)?,
        ))?;
        self.apply(&workload(NS, "web", 1, "web-cert", None))?;
        let (_, url) =
            wait_certificate(self.client, NS, "web", "True", "CertificateServed").await?;
        let want = format!("https://{web}:{}", self.https);
        ensure!(
            url.as_deref() == Some(want.as_str()),
            "url {url:?}, want {want}"
        );
        eventually(Duration::from_secs(90), || async {
            let pods = workload_pods(self.client, NS, "web").await?;
            ensure!(pods.iter().any(pod_ready), "web: no ready replica");
            Ok(())
        })
        .await?;
        let answer = eventually(Duration::from_secs(30), || async {
            let answer = https_get(self.https, &web, &self.ca.pem).await?;
            ensure!(answer.starts_with("HTTP/1.1 200"), "{answer}");
            Ok(answer)
        })
        .await?;
        ensure!(answer.contains("app web"), "{answer}");
        let reply = http_get_reply(self.http, &web, "/x?y=1", Duration::from_secs(10)).await?;
        let want = format!("https://{web}:{}/x?y=1", self.https);
        ensure!(
            reply.code == 308 && reply.head.contains(&format!("\r\nlocation: {want}")),
            "plain HTTP: {}, want 308 to {want}",
            reply.head
        );
        println!("{web}: HTTPS verified against the suite's CA; HTTP → 308 {want}");
        Ok(())
    }

    /// `wrong` names a Secret for another host: `HostNotCovered`, a Warning event, no
    /// certificate on its SNI, plain `http://` URL.
    async fn a_certificate_not_covering_the_host_is_refused(&self) -> anyhow::Result<()> {
        self.apply(&secret(
            NS,
            "wrong-cert",
            "kubernetes.io/tls",
            &self.ca.leaf(&[&host("other")], 2020, 2100)?,
        ))?;
        self.apply(&workload(NS, "wrong", 0, "wrong-cert", None))?;
        let (message, url) =
            wait_certificate(self.client, NS, "wrong", "False", "HostNotCovered").await?;
        ensure!(
            message.contains(&host("wrong")) && message.contains(&host("other")),
            "message {message:?}"
        );
        ensure!(
            url.as_deref() == Some(format!("http://{}", host("wrong")).as_str()),
            "url {url:?}"
        );
        eventually(Duration::from_secs(10), || async {
            ensure!(
                warning_events(self.client, NS, "wrong", "HostNotCovered").await? == 1,
                "no HostNotCovered Warning event yet"
            );
            Ok(())
        })
        .await?;
        ensure!(
            tls_connect(self.https, &host("wrong"), &self.ca.pem)
                .await
                .is_err(),
            "a host without a usable certificate has no HTTPS"
        );
        println!("wrong: HostNotCovered ({message})");
        Ok(())
    }

    /// `thief` names `web-cert`: for its own host it does not cover it; claiming web's host
    /// (owned by the older web) it is `HostNotAccepted` and web's HTTPS is unchanged; from
    /// another namespace the name finds no Secret.
    async fn another_workload_cannot_use_the_certificate(&self) -> anyhow::Result<()> {
        self.apply(&workload(NS, "thief", 0, "web-cert", None))?;
        wait_certificate(self.client, NS, "thief", "False", "HostNotCovered").await?;
        ensure!(
            tls_connect(self.https, &host("thief"), &self.ca.pem)
                .await
                .is_err(),
            "thief's host has no HTTPS"
        );
        self.apply(&workload(NS, "squat", 1, "web-cert", Some(&host("web"))))?;
        wait_certificate(self.client, NS, "squat", "False", "HostNotAccepted").await?;
        self.apply(&workload(OTHER_NS, "web", 0, "web-cert", None))?;
        let (message, _) =
            wait_certificate(self.client, OTHER_NS, "web", "False", "SecretNotFound").await?;
        ensure!(message.contains(OTHER_NS), "{message}");
        // squat's replica runs; the host's HTTPS still reaches web's app only.
        eventually(Duration::from_secs(90), || async {
            let pods = workload_pods(self.client, NS, "squat").await?;
            ensure!(pods.iter().any(pod_ready), "squat: no ready replica");
            Ok(())
        })
        .await?;
        for _ in 0..5 {
            let answer = https_get(self.https, &host("web"), &self.ca.pem).await?;
            ensure!(
                answer.starts_with("HTTP/1.1 200") && answer.contains("app web"),
                "{answer}"
            );
        }
        println!("web-cert: refused to thief, squat and {OTHER_NS}/web; web's HTTPS unchanged");
        Ok(())
    }

    /// An expired certificate: `Expired`; an Opaque Secret: `InvalidCertificate`.
    async fn expired_and_mistyped_secrets_are_refused(&self) -> anyhow::Result<()> {
        self.apply(&secret(
            NS,
            "old-cert",
            "kubernetes.io/tls",
            &self.ca.leaf(&[&host("old")], 2020, 2022)?,
        ))?;
        self.apply(&workload(NS, "old", 0, "old-cert", None))?;
        let (expired, _) = wait_certificate(self.client, NS, "old", "False", "Expired").await?;
        ensure!(expired.contains("2022-01-01"), "{expired}");
        self.apply(&secret(
            NS,
            "opaque-cert",
            "Opaque",
            &self.ca.leaf(&[&host("opaque")], 2020, 2100)?,
        ))?;
        self.apply(&workload(NS, "opaque", 0, "opaque-cert", None))?;
        let (message, _) =
            wait_certificate(self.client, NS, "opaque", "False", "InvalidCertificate").await?;
        ensure!(message.contains("Opaque"), "{message}");
        for h in ["old", "opaque"] {
            ensure!(
                tls_connect(self.https, &host(h), &self.ca.pem)
                    .await
                    .is_err(),
                "{h}: no HTTPS"
            );
        }
        println!("old: Expired ({expired}); opaque: InvalidCertificate ({message})");
        Ok(())
    }
}
