//! The real pebble, Let's Encrypt's ACME test server (built from its Go module by
//! `e2e/k8s/build-pebble.sh`), on loopback, with pebble-challtestsrv as its DNS server so that
//! the suites' custom domains "point at" 127.0.0.1. pebble validates HTTP-01 on the port the
//! suite gives (the gateway's plain HTTP port) as a real CA would, with no sleep before it.

use std::path::PathBuf;
use std::process::Command;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, bail, ensure};
use rustls::pki_types::{CertificateDer, ServerName, pem::PemObject};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use crate::env::repo_root;
use crate::{ChildGuard, TestEnv, eventually, free_port};

/// The folder with `pebble`, `pebble-challtestsrv`, `pebble.minica.pem` and pebble's own HTTPS
/// key pair: `$DECLOUD_PEBBLE`, else the cached build (made now if missing). Under `CI=true`
/// a folder without them is an error, like any missing part.
pub fn pebble_dir() -> anyhow::Result<PathBuf> {
    let dir = match std::env::var("DECLOUD_PEBBLE") {
        Ok(p) => PathBuf::from(p),
        Err(_) => {
            let out = Command::new("bash")
                .arg(repo_root().join("e2e/k8s/build-pebble.sh"))
                .output()
                .context("running e2e/k8s/build-pebble.sh")?;
            if !out.status.success() {
                bail!(
                    "building pebble failed (needs Go and the Go module proxy; see e2e/k8s/build-pebble.sh): {}",
                    String::from_utf8_lossy(&out.stderr).trim()
                );
            }
            let text = String::from_utf8_lossy(&out.stdout);
            PathBuf::from(text.lines().last().unwrap_or_default().trim())
        }
    };
    for f in ["pebble", "pebble-challtestsrv", "pebble.minica.pem"] {
        ensure!(
            dir.join(f).exists(),
            "pebble: {} is missing (run e2e/k8s/build-pebble.sh)",
            dir.join(f).display()
        );
    }
    Ok(dir)
}

/// A running pebble and its DNS server.
pub struct Pebble {
    /// pebble.
    pub child: ChildGuard,
    /// pebble-challtestsrv (DNS: every name is 127.0.0.1).
    pub dns: ChildGuard,
    /// The ACME API's port (HTTPS under the minica root).
    pub acme_port: u16,
    /// The management API's port (`/roots/0`: the root issued chains lead to).
    pub management_port: u16,
    dir: PathBuf,
}

impl Pebble {
    /// Starts pebble on `acme_port` (loopback), validating HTTP-01 challenges on `http_port`,
    /// refusing to issue for `blocked` domains.
    pub async fn start(
        env: &TestEnv,
        acme_port: u16,
        http_port: u16,
        blocked: &[&str],
    ) -> anyhow::Result<Self> {
        let dir = pebble_dir()?;
        let management_port = free_port()?;
        let dns_port = free_port()?;
        let dns_management = free_port()?;
        let work = env.dir().join("pebble");
        std::fs::create_dir_all(&work)?;
        let config = serde_json::json!({
            "pebble": {
                "listenAddress": format!("127.0.0.1:{acme_port}"),
                "managementListenAddress": format!("127.0.0.1:{management_port}"),
                "certificate": dir.join("localhost-cert.pem"),
                "privateKey": dir.join("localhost-key.pem"),
                "httpPort": http_port,
                "tlsPort": free_port()?,
                "ocspResponderURL": "",
                "externalAccountBindingRequired": false,
                "domainBlocklist": blocked,
                "retryAfter": {"authz": 1, "order": 1},
                "keyAlgorithm": "ecdsa",
                "profiles": {"default": {"description": "e2e", "validityPeriod": 7_776_000}},
            }
        });
        let config_path = work.join("pebble-config.json");
        std::fs::write(&config_path, serde_json::to_vec_pretty(&config)?)?;

        let mut dns = Command::new(dir.join("pebble-challtestsrv"));
        dns.args(["-http01", "", "-https01", "", "-tlsalpn01", "", "-doh", ""])
            .args(["-dnsserver", &format!("127.0.0.1:{dns_port}")])
            .args(["-management", &format!("127.0.0.1:{dns_management}")])
            .args(["-defaultIPv4", "127.0.0.1", "-defaultIPv6", ""]);
        let dns = ChildGuard::spawn("pebble-challtestsrv", dns, &work.join("challtestsrv.log"))?;
        let mut cmd = Command::new(dir.join("pebble"));
        cmd.arg("-config")
            .arg(&config_path)
            .args(["-dnsserver", &format!("127.0.0.1:{dns_port}")])
            // Validate at once, and never reject a good nonce at random (pebble's default
            // tests clients' badNonce retries; not what this suite is about).
            .env("PEBBLE_VA_NOSLEEP", "1")
            .env("PEBBLE_WFE_NONCEREJECT", "0")
            .env("PEBBLE_AUTHZREUSE", "0");
        let child = ChildGuard::spawn("pebble", cmd, &work.join("pebble.log"))?;
        let pebble = Self {
            child,
            dns,
            acme_port,
            management_port,
            dir,
        };
        eventually(Duration::from_secs(30), || async {
            let dir = pebble.get(acme_port, "/dir").await?;
            ensure!(dir.contains("newOrder"), "pebble /dir: {dir}");
            Ok(())
        })
        .await
        .context("pebble did not start")?;
        Ok(pebble)
    }

    /// The ACME directory URL.
    pub fn directory(&self) -> String {
        format!("https://127.0.0.1:{}/dir", self.acme_port)
    }

    /// The root pebble's own HTTPS is served under (the gateway's `--acme-ca-bundle`).
    pub fn minica_path(&self) -> PathBuf {
        self.dir.join("pebble.minica.pem")
    }

    /// The root the certificates pebble issues lead to (a new one each pebble start).
    pub async fn issuing_root(&self) -> anyhow::Result<String> {
        let pem = self.get(self.management_port, "/roots/0").await?;
        ensure!(pem.contains("BEGIN CERTIFICATE"), "pebble /roots/0: {pem}");
        Ok(pem)
    }

    /// `GET path` on pebble's `port` over HTTPS verified against the minica root: the body.
    async fn get(&self, port: u16, path: &str) -> anyhow::Result<String> {
        let minica = std::fs::read(self.minica_path())?;
        let mut roots = rustls::RootCertStore::empty();
        roots.add(CertificateDer::from_pem_slice(&minica)?)?;
        let config = rustls::ClientConfig::builder_with_provider(Arc::new(
            rustls::crypto::ring::default_provider(),
        ))
        .with_safe_default_protocol_versions()?
        .with_root_certificates(roots)
        .with_no_client_auth();
        let tcp = tokio::net::TcpStream::connect(("127.0.0.1", port)).await?;
        let mut s = tokio_rustls::TlsConnector::from(Arc::new(config))
            .connect(ServerName::try_from("127.0.0.1")?.to_owned(), tcp)
            .await?;
        s.write_all(
            format!("GET {path} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nUser-Agent: decloud-e2e\r\nConnection: close\r\n\r\n").as_bytes(),
        )
        .await?;
        let mut out = Vec::new();
        tokio::time::timeout(Duration::from_secs(10), s.read_to_end(&mut out))
            .await
            .context("pebble did not answer")??;
        let text = String::from_utf8_lossy(&out).into_owned();
        let (head, body) = text.split_once("\r\n\r\n").unwrap_or((&text, ""));
        ensure!(
            head.starts_with("HTTP/1.1 200"),
            "pebble {path}: {head}\n{body}"
        );
        if !head
            .to_ascii_lowercase()
            .contains("transfer-encoding: chunked")
        {
            return Ok(body.to_string());
        }
        // Chunked: size lines and chunks, to the last (empty) chunk.
        let (mut rest, mut out) = (body, String::new());
        while let Some((size, after)) = rest.split_once("\r\n") {
            let size = usize::from_str_radix(size.split(';').next().unwrap_or("").trim(), 16)?;
            if size == 0 || after.len() < size {
                break;
            }
            out.push_str(&after[..size]);
            rest = after[size..].trim_start_matches("\r\n");
        }
        Ok(out)
    }
}
