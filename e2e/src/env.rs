//! [`TestEnv`]: a real etcd and kube-apiserver on free loopback ports, with the DeCloud CRDs
//! installed.

use std::{
    io::Write,
    path::{Path, PathBuf},
    process::{Command, Stdio},
    sync::{Arc, OnceLock},
    time::{Duration, Instant},
};

use anyhow::{Context, bail};
use tempfile::TempDir;

use crate::engine::{DockerEngine, Engines};
use crate::registry::PrivateRegistry;
use crate::{ChildGuard, eventually, free_port};

const ADMIN_TOKEN: &str = "decloud-e2e-admin-token";

/// The namespace the suites install the operator in (as `helm install -n`).
pub const OPERATOR_NAMESPACE: &str = "default";

/// The `helm` binary: `$DECLOUD_HELM`, else built (and cached) by `e2e/k8s/build-helm.sh`.
pub fn helm_binary() -> anyhow::Result<PathBuf> {
    static HELM: OnceLock<Result<PathBuf, String>> = OnceLock::new();
    HELM.get_or_init(|| {
        if let Ok(path) = std::env::var("DECLOUD_HELM") {
            return Ok(PathBuf::from(path));
        }
        let out = Command::new("bash")
            .arg(repo_root().join("e2e/k8s/build-helm.sh"))
            .output()
            .map_err(|e| format!("running e2e/k8s/build-helm.sh: {e}"))?;
        if !out.status.success() {
            return Err(format!(
                "building helm failed: {}",
                String::from_utf8_lossy(&out.stderr)
            ));
        }
        Ok(PathBuf::from(
            String::from_utf8_lossy(&out.stdout)
                .lines()
                .last()
                .unwrap_or_default(),
        ))
    })
    .clone()
    .map_err(anyhow::Error::msg)
}

/// The repository root (the folder holding the workspace `Cargo.toml`).
/// The routable, test-only address of this machine's kubelet APIs (`e2e/scripts/node-address.sh`
/// makes it, idempotently: a veth pair into a network namespace). The API server proxies to
/// nodes (`/api/v1/nodes/<node>/proxy/...`) and aggregated APIs only at such an address, never
/// at loopback. Shared by every TestEnv of the machine (each operator has its own ports).
pub fn node_address() -> anyhow::Result<std::net::IpAddr> {
    static ADDRESS: std::sync::OnceLock<Result<std::net::IpAddr, String>> =
        std::sync::OnceLock::new();
    ADDRESS
        .get_or_init(|| {
            let out = Command::new("bash")
                .arg(repo_root().join("e2e/scripts/node-address.sh"))
                .output()
                .map_err(|e| format!("running e2e/scripts/node-address.sh: {e}"))?;
            if !out.status.success() {
                return Err(format!(
                    "e2e/scripts/node-address.sh failed (needs root): {}",
                    String::from_utf8_lossy(&out.stderr).trim()
                ));
            }
            let text = String::from_utf8_lossy(&out.stdout);
            text.lines()
                .last()
                .unwrap_or_default()
                .trim()
                .parse()
                .map_err(|e| format!("node-address.sh printed {text:?}: {e}"))
        })
        .clone()
        .map_err(anyhow::Error::msg)
}

pub fn repo_root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("e2e/ has a parent")
        .to_path_buf()
}

/// Folder holding `kube-apiserver`, `kube-controller-manager`, `kubectl` and `etcd`.
///
/// `DECLOUD_K8S_BIN` wins when set; otherwise `e2e/k8s/build.sh` is run once per process, which
/// builds them from their Go modules the first time and returns the cached folder after.
pub fn k8s_bin_dir() -> anyhow::Result<PathBuf> {
    static DIR: OnceLock<Result<PathBuf, String>> = OnceLock::new();
    DIR.get_or_init(|| {
        if let Some(dir) = std::env::var_os("DECLOUD_K8S_BIN") {
            return Ok(PathBuf::from(dir));
        }
        let script = repo_root().join("e2e/k8s/build.sh");
        let out = Command::new("bash")
            .arg(&script)
            .stderr(Stdio::inherit())
            .output()
            .map_err(|e| format!("running {}: {e}", script.display()))?;
        if !out.status.success() {
            return Err(format!(
                "{} failed ({}); the e2e suites need Go and the Go module proxy to build \
                 kube-apiserver and etcd",
                script.display(),
                out.status
            ));
        }
        let stdout = String::from_utf8_lossy(&out.stdout);
        let dir = stdout.lines().last().unwrap_or_default().trim().to_string();
        Ok(PathBuf::from(dir))
    })
    .clone()
    .map_err(anyhow::Error::msg)
}

/// A running control plane. Everything is torn down on drop, even when the test panics; if
/// the test process is killed, each child's watchdog tears it down.
pub struct TestEnv {
    // First: the engines stop (and sweep what they ran) before the control plane.
    engines: Arc<Engines>,
    client: kube::Client,
    kubeconfig: PathBuf,
    operator_kubeconfig: OnceLock<PathBuf>,
    bin: PathBuf,
    api_port: u16,
    // Fields drop in order: the apiserver stops before etcd, and the folder goes last.
    apiserver: ChildGuard,
    etcd: ChildGuard,
    dir: TempDir,
}

impl TestEnv {
    /// Starts etcd and kube-apiserver, writes a kubeconfig, installs the DeCloud CRDs and waits
    /// until they are served.
    pub async fn start() -> anyhow::Result<Self> {
        let started = Instant::now();
        let bin = k8s_bin_dir()?;
        for tool in ["etcd", "kube-apiserver", "kubectl"] {
            if !bin.join(tool).is_file() {
                bail!(
                    "{} is missing; run e2e/k8s/build.sh",
                    bin.join(tool).display()
                );
            }
        }
        let dir = tempfile::Builder::new().prefix("decloud-e2e-").tempdir()?;
        let d = dir.path();

        let etcd_port = free_port()?;
        let peer_port = free_port()?;
        let mut etcd_cmd = Command::new(bin.join("etcd"));
        etcd_cmd.args([
            "--name=e2e",
            &format!("--data-dir={}", d.join("etcd").display()),
            &format!("--listen-client-urls=http://127.0.0.1:{etcd_port}"),
            &format!("--advertise-client-urls=http://127.0.0.1:{etcd_port}"),
            &format!("--listen-peer-urls=http://127.0.0.1:{peer_port}"),
            &format!("--initial-advertise-peer-urls=http://127.0.0.1:{peer_port}"),
            &format!("--initial-cluster=e2e=http://127.0.0.1:{peer_port}"),
            "--unsafe-no-fsync",
            "--log-level=warn",
        ]);
        let etcd = ChildGuard::spawn("etcd", etcd_cmd, &d.join("etcd.log"))?;

        let sa_key = d.join("sa.key");
        let status = Command::new("openssl")
            .args(["genrsa", "-out"])
            .arg(&sa_key)
            .arg("2048")
            .stderr(Stdio::null())
            .status()
            .context("running openssl to make the service-account key")?;
        if !status.success() {
            bail!("openssl genrsa failed");
        }
        std::fs::write(
            d.join("tokens.csv"),
            format!("{ADMIN_TOKEN},admin,admin,\"system:masters\"\n"),
        )?;

        kubelet_client_pki(d)?;
        front_proxy_pki(d)?;

        let api_port = free_port()?;
        let mut api_cmd = Command::new(bin.join("kube-apiserver"));
        api_cmd.args([
            &format!("--etcd-servers=http://127.0.0.1:{etcd_port}"),
            "--bind-address=127.0.0.1",
            "--advertise-address=127.0.0.1",
            &format!("--secure-port={api_port}"),
            &format!("--cert-dir={}", d.join("pki").display()),
            &format!("--token-auth-file={}", d.join("tokens.csv").display()),
            "--authorization-mode=RBAC",
            // No kube-controller-manager creates the `default` ServiceAccount here.
            "--disable-admission-plugins=ServiceAccount",
            // Privileged pods pass the API server, so the operator's own refusal is exercised.
            "--allow-privileged=true",
            "--service-cluster-ip-range=10.96.0.0/16",
            "--service-account-issuer=https://kubernetes.default.svc",
            &format!("--service-account-key-file={}", sa_key.display()),
            &format!("--service-account-signing-key-file={}", sa_key.display()),
            // The operator serves the kubelet API with its own certificate, and authenticates
            // the API server by this client certificate (signed by KUBELET_CLIENT_CA).
            "--kubelet-preferred-address-types=InternalIP",
            &format!(
                "--kubelet-client-certificate={}",
                d.join(KUBELET_CLIENT_CERT).display()
            ),
            &format!(
                "--kubelet-client-key={}",
                d.join(KUBELET_CLIENT_KEY).display()
            ),
            // The aggregation layer (metrics-server for `kubectl top`): the API server proxies
            // to aggregated API servers with this client certificate, straight to their
            // endpoints (no kube-proxy here).
            &format!(
                "--requestheader-client-ca-file={}",
                d.join(FRONT_PROXY_CA).display()
            ),
            &format!("--requestheader-allowed-names={FRONT_PROXY_CN}"),
            "--requestheader-username-headers=X-Remote-User",
            "--requestheader-group-headers=X-Remote-Group",
            "--requestheader-extra-headers-prefix=X-Remote-Extra-",
            &format!(
                "--proxy-client-cert-file={}",
                d.join(FRONT_PROXY_CERT).display()
            ),
            &format!(
                "--proxy-client-key-file={}",
                d.join(FRONT_PROXY_KEY).display()
            ),
            "--enable-aggregator-routing=true",
            "--v=0",
        ]);
        let mut apiserver =
            ChildGuard::spawn("kube-apiserver", api_cmd, &d.join("kube-apiserver.log"))?;

        let kubeconfig = d.join("kubeconfig");
        std::fs::write(&kubeconfig, kubeconfig_yaml(api_port))?;
        let client = client_for(&kubeconfig).await?;

        let mut etcd = etcd;
        eventually(Duration::from_secs(90), || {
            let client = client.clone();
            let ok = etcd.check_running().and_then(|_| apiserver.check_running());
            async move {
                ok?;
                let req = http::Request::get("/readyz").body(Vec::new())?;
                let text = client.request_text(req).await?;
                if text.trim() != "ok" {
                    bail!("kube-apiserver /readyz: {text}");
                }
                Ok(())
            }
        })
        .await
        .context("kube-apiserver did not become ready")?;

        let env = Self {
            engines: Arc::new(Engines::default()),
            client,
            kubeconfig,
            operator_kubeconfig: OnceLock::new(),
            bin,
            api_port,
            apiserver,
            etcd,
            dir,
        };
        env.install_crds().await?;
        tracing::info!(elapsed = ?started.elapsed(), api_port, "test control plane ready");
        Ok(env)
    }

    async fn install_crds(&self) -> anyhow::Result<()> {
        let crds = repo_root().join("crds/decloud.yaml");
        self.kubectl(&["apply", "--server-side", "-f", &crds.to_string_lossy()])?;
        self.kubectl(&[
            "wait",
            "--for=condition=Established",
            "--timeout=60s",
            "crd/workloads.decloud.dev",
            "crd/providers.decloud.dev",
        ])?;
        // Established is not yet "in discovery": wait until kubectl can list both.
        eventually(Duration::from_secs(30), || async {
            self.kubectl(&["get", "workloads.decloud.dev,providers.decloud.dev", "-A"])
                .map(|_| ())
        })
        .await
    }

    /// The environment's Docker engines (one per provider, started on first use).
    pub fn engines(&self) -> Arc<Engines> {
        self.engines.clone()
    }

    /// The Docker engine of provider `provider`, started if it has none yet: an edge restarted
    /// under the same name finds the same engine and its containers.
    pub fn engine(&self, provider: &str) -> anyhow::Result<Arc<DockerEngine>> {
        self.engines.get(provider)
    }

    /// The engine of the edge whose node is `node` (`edge-<provider>`); fails if none started.
    pub fn engine_of_node(&self, node: &str) -> anyhow::Result<Arc<DockerEngine>> {
        self.engines
            .of_node(node)
            .with_context(|| format!("no Docker engine runs for node {node:?}"))
    }

    /// A registry requiring credentials (htpasswd), with the busybox test image pushed there:
    /// for `imagePullSecrets`. Every test edge may pull from it (`--allow-registry`).
    pub fn private_registry(&self) -> anyhow::Result<PrivateRegistry> {
        crate::registry::private_registry()
    }

    /// A client for the test cluster, with admin rights.
    pub fn client(&self) -> kube::Client {
        self.client.clone()
    }

    /// Path of an admin kubeconfig for the test cluster.
    pub fn kubeconfig(&self) -> &Path {
        &self.kubeconfig
    }

    /// A kubeconfig with exactly the rights the Helm chart gives the operator: the chart's
    /// ServiceAccount, ClusterRole(s), Role(s) and bindings, rendered with `helm template` and
    /// applied, and a token the API server minted for that ServiceAccount. Every suite runs
    /// the operator with it, so a permission the chart lacks fails a test.
    pub fn operator_kubeconfig(&self) -> anyhow::Result<PathBuf> {
        if let Some(path) = self.operator_kubeconfig.get() {
            return Ok(path.clone());
        }
        let chart = repo_root().join("charts/decloud");
        let out = Command::new(helm_binary()?)
            .args(["template", "decloud"])
            .arg(&chart)
            .args([
                "--namespace",
                OPERATOR_NAMESPACE,
                "--show-only",
                "templates/serviceaccount.yaml",
                "--show-only",
                "templates/rbac.yaml",
                // The rights of an operator serving HTTPS (it reads the TLS Secrets Workloads
                // name), a superset of the default ones: suites may pass --https-listen.
                "--set",
                "gateway.https.enabled=true",
            ])
            .output()
            .context("running helm template")?;
        if !out.status.success() {
            bail!(
                "helm template failed: {}",
                String::from_utf8_lossy(&out.stderr)
            );
        }
        let rendered = String::from_utf8(out.stdout)?;
        self.kubectl_stdin(&["apply", "--server-side", "-f", "-"], &rendered)
            .context("applying the chart's ServiceAccount and RBAC")?;
        let account = rendered
            .split("\n---")
            .find(|doc| doc.contains("kind: ServiceAccount"))
            .and_then(|doc| {
                doc.lines()
                    .find_map(|l| l.trim().strip_prefix("name: ").map(str::trim))
            })
            .context("the chart renders no ServiceAccount")?
            .to_string();
        let token = self
            .kubectl(&[
                "create",
                "token",
                &account,
                "-n",
                OPERATOR_NAMESPACE,
                "--duration=24h",
            ])
            .context("minting a token for the operator's ServiceAccount")?;
        let path = self.dir.path().join("kubeconfig-operator");
        std::fs::write(
            &path,
            kubeconfig_for(self.api_port, "decloud-operator", token.trim()),
        )?;
        tracing::info!(%account, "the operator runs with the chart's RBAC");
        Ok(self.operator_kubeconfig.get_or_init(|| path).clone())
    }

    /// PEM of the CA that signed the API server's kubelet client certificate (the operator's
    /// `--kubelet-client-ca`).
    pub fn kubelet_client_ca(&self) -> PathBuf {
        self.dir.path().join(KUBELET_CLIENT_CA)
    }

    /// The kube-apiserver's secure port on 127.0.0.1.
    pub fn api_port(&self) -> u16 {
        self.api_port
    }

    /// A scratch folder that lives as long as the environment (logs, state dirs).
    pub fn dir(&self) -> &Path {
        self.dir.path()
    }

    /// Folder of the Kubernetes binaries in use.
    pub fn bin_dir(&self) -> &Path {
        &self.bin
    }

    /// Runs kubectl against the test cluster; its stdout, or an error with its stderr.
    pub fn kubectl(&self, args: &[&str]) -> anyhow::Result<String> {
        self.kubectl_stdin(args, "")
    }

    /// Runs kubectl with `input` on its standard input (for `apply -f -`).
    pub fn kubectl_stdin(&self, args: &[&str], input: &str) -> anyhow::Result<String> {
        let mut child = Command::new(self.bin.join("kubectl"))
            .env("KUBECONFIG", &self.kubeconfig)
            .args(args)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .context("starting kubectl")?;
        child
            .stdin
            .take()
            .context("kubectl stdin")?
            .write_all(input.as_bytes())?;
        let out = child.wait_with_output()?;
        if !out.status.success() {
            bail!(
                "kubectl {} failed: {}",
                args.join(" "),
                String::from_utf8_lossy(&out.stderr).trim()
            );
        }
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    }

    /// The last lines of the kube-apiserver's log, for failure messages.
    pub fn apiserver_log_tail(&self, lines: usize) -> String {
        self.apiserver.log_tail(lines)
    }

    /// Keeps the scratch folder (logs) after the environment is dropped; returns its path.
    pub fn keep_dir(self) -> PathBuf {
        let TestEnv { dir, .. } = self;
        dir.keep()
    }

    /// Fails if etcd or kube-apiserver died.
    pub fn check_running(&mut self) -> anyhow::Result<()> {
        self.etcd.check_running()?;
        self.apiserver.check_running()
    }
}

const KUBELET_CLIENT_CA: &str = "kubelet-client-ca.crt";
const KUBELET_CLIENT_CERT: &str = "apiserver-kubelet-client.crt";
const KUBELET_CLIENT_KEY: &str = "apiserver-kubelet-client.key";

/// A CA and the API server's kubelet client certificate signed by it (CN
/// `kube-apiserver-kubelet-client`, O `system:masters`, as kubeadm makes it), written to `d`.
fn kubelet_client_pki(d: &Path) -> anyhow::Result<()> {
    client_pki(
        d,
        "decloud-e2e-kubelet-client-ca",
        "kube-apiserver-kubelet-client",
        Some("system:masters"),
        [KUBELET_CLIENT_CA, KUBELET_CLIENT_CERT, KUBELET_CLIENT_KEY],
    )
}

const FRONT_PROXY_CA: &str = "front-proxy-ca.crt";
const FRONT_PROXY_CERT: &str = "front-proxy-client.crt";
const FRONT_PROXY_KEY: &str = "front-proxy-client.key";
/// The name aggregated API servers accept the API server's proxied requests from.
const FRONT_PROXY_CN: &str = "front-proxy-client";

/// The aggregation layer's CA and the API server's proxy client certificate (CN
/// `front-proxy-client`, as kubeadm makes it), written to `d`: aggregated API servers such as
/// metrics-server trust requests proxied by the API server through it.
fn front_proxy_pki(d: &Path) -> anyhow::Result<()> {
    client_pki(
        d,
        "decloud-e2e-front-proxy-ca",
        FRONT_PROXY_CN,
        None,
        [FRONT_PROXY_CA, FRONT_PROXY_CERT, FRONT_PROXY_KEY],
    )
}

/// A CA named `ca_cn` and a client certificate `cn` (organisation `org`) signed by it, written
/// to `d` as the three `files` (CA, certificate, key).
fn client_pki(
    d: &Path,
    ca_cn: &str,
    cn: &str,
    org: Option<&str>,
    files: [&str; 3],
) -> anyhow::Result<()> {
    use rcgen::{
        BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, Issuer,
        KeyPair, KeyUsagePurpose,
    };
    let ca_key = KeyPair::generate()?;
    let mut ca = CertificateParams::new(Vec::<String>::new())?;
    ca.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    ca.distinguished_name.push(DnType::CommonName, ca_cn);
    ca.key_usages = vec![
        KeyUsagePurpose::KeyCertSign,
        KeyUsagePurpose::CrlSign,
        KeyUsagePurpose::DigitalSignature,
    ];
    let ca_cert = ca.self_signed(&ca_key)?;
    let key = KeyPair::generate()?;
    let mut client = CertificateParams::new(Vec::<String>::new())?;
    client.distinguished_name.push(DnType::CommonName, cn);
    if let Some(org) = org {
        client
            .distinguished_name
            .push(DnType::OrganizationName, org);
    }
    client.extended_key_usages = vec![ExtendedKeyUsagePurpose::ClientAuth];
    client.key_usages = vec![KeyUsagePurpose::DigitalSignature];
    let cert = client.signed_by(&key, &Issuer::from_params(&ca, &ca_key))?;
    let [ca_file, cert_file, key_file] = files;
    std::fs::write(d.join(ca_file), ca_cert.pem())?;
    std::fs::write(d.join(cert_file), cert.pem())?;
    std::fs::write(d.join(key_file), key.serialize_pem())?;
    Ok(())
}

fn kubeconfig_yaml(api_port: u16) -> String {
    kubeconfig_for(api_port, "admin", ADMIN_TOKEN)
}

fn kubeconfig_for(api_port: u16, user: &str, token: &str) -> String {
    // The apiserver generates a self-signed serving certificate in its --cert-dir; the test
    // client does not pin it.
    format!(
        "apiVersion: v1
kind: Config
clusters:
- name: decloud-e2e
  cluster:
    server: https://127.0.0.1:{api_port}
    insecure-skip-tls-verify: true
users:
- name: {user}
  user:
    token: {token}
contexts:
- name: decloud-e2e
  context:
    cluster: decloud-e2e
    user: {user}
    namespace: default
current-context: decloud-e2e
"
    )
}

async fn client_for(kubeconfig: &Path) -> anyhow::Result<kube::Client> {
    let kc = kube::config::Kubeconfig::read_from(kubeconfig)?;
    let config =
        kube::Config::from_custom_kubeconfig(kc, &kube::config::KubeConfigOptions::default())
            .await?;
    Ok(kube::Client::try_from(config)?)
}
