//! The real metrics-server (built from its Go module by `e2e/k8s/build-metrics-server.sh`),
//! run as the test cluster's aggregated `metrics.k8s.io` API, scraping the nodes' kubelet
//! APIs (for virtual nodes: the operator's) as it scrapes any kubelet, so `kubectl top` works.

use std::net::IpAddr;
use std::path::PathBuf;
use std::process::Command;
use std::time::Duration;

use anyhow::{Context, bail};

use crate::env::repo_root;
use crate::{ChildGuard, TestEnv, eventually, free_port};

/// The metrics-server binary: `$DECLOUD_METRICS_SERVER`, else the cached build (made now if
/// missing).
pub fn metrics_server_binary() -> anyhow::Result<PathBuf> {
    if let Ok(p) = std::env::var("DECLOUD_METRICS_SERVER") {
        return Ok(PathBuf::from(p));
    }
    let out = Command::new("bash")
        .arg(repo_root().join("e2e/k8s/build-metrics-server.sh"))
        .output()
        .context("running e2e/k8s/build-metrics-server.sh")?;
    if !out.status.success() {
        bail!(
            "building metrics-server failed: {}",
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    let text = String::from_utf8_lossy(&out.stdout);
    Ok(PathBuf::from(
        text.lines().last().unwrap_or_default().trim(),
    ))
}

/// A running metrics-server, registered as the `v1beta1.metrics.k8s.io` APIService.
pub struct MetricsServer {
    /// The process.
    pub child: ChildGuard,
    /// Where it serves (the routable address: an EndpointSlice may not point at loopback).
    pub address: IpAddr,
    /// Its port.
    pub port: u16,
}

impl MetricsServer {
    /// Starts metrics-server on `address` (see [`crate::node_address`]) with a 10 s resolution
    /// and registers it with the API server (Service, EndpointSlice and APIService in
    /// `kube-system`, as its own manifests do, with the endpoint written by hand: no
    /// controller manager runs here). It scrapes kubelets by their InternalIP and the port in
    /// their Node status, trusting their self-signed serving certificates.
    pub async fn start(env: &TestEnv, address: IpAddr) -> anyhow::Result<Self> {
        let bin = metrics_server_binary()?;
        let port = free_port()?;
        let certs = env.dir().join("metrics-server");
        std::fs::create_dir_all(&certs)?;
        let kubeconfig = env.kubeconfig().to_string_lossy().to_string();
        let mut cmd = Command::new(bin);
        cmd.args([
            &format!("--secure-port={port}"),
            &format!("--bind-address={address}"),
            &format!("--cert-dir={}", certs.display()),
            &format!("--kubeconfig={kubeconfig}"),
            &format!("--authentication-kubeconfig={kubeconfig}"),
            &format!("--authorization-kubeconfig={kubeconfig}"),
            "--kubelet-insecure-tls",
            "--kubelet-preferred-address-types=InternalIP",
            "--kubelet-use-node-status-port",
            "--metric-resolution=10s",
            "--kubelet-request-timeout=5s",
            "--v=2",
        ]);
        let child =
            ChildGuard::spawn("metrics-server", cmd, &env.dir().join("metrics-server.log"))?;
        let manifests = format!(
            r#"apiVersion: v1
kind: Service
metadata: {{name: metrics-server, namespace: kube-system}}
spec:
  ports: [{{name: https, port: 443, targetPort: {port}, protocol: TCP}}]
---
apiVersion: discovery.k8s.io/v1
kind: EndpointSlice
metadata:
  name: metrics-server-local
  namespace: kube-system
  labels: {{kubernetes.io/service-name: metrics-server}}
addressType: IPv4
ports: [{{name: https, port: {port}, protocol: TCP}}]
endpoints: [{{addresses: ["{address}"], conditions: {{ready: true}}}}]
---
apiVersion: apiregistration.k8s.io/v1
kind: APIService
metadata: {{name: v1beta1.metrics.k8s.io}}
spec:
  group: metrics.k8s.io
  version: v1beta1
  service: {{name: metrics-server, namespace: kube-system, port: 443}}
  insecureSkipTLSVerify: true
  groupPriorityMinimum: 100
  versionPriority: 100
"#
        );
        env.kubectl_stdin(&["apply", "-f", "-"], &manifests)?;
        let mut server = Self {
            child,
            address,
            port,
        };
        eventually(Duration::from_secs(90), || {
            let running = server.child.check_running();
            async move {
                running?;
                let out = env.kubectl(&["get", "apiservice", "v1beta1.metrics.k8s.io"])?;
                anyhow::ensure!(
                    out.lines().nth(1).is_some_and(|l| l.contains("True")),
                    "APIService not Available yet:\n{out}"
                );
                Ok(())
            }
        })
        .await
        .with_context(|| {
            format!(
                "metrics-server did not become available; its log:\n{}",
                server.child.log_tail(30)
            )
        })?;
        Ok(server)
    }
}
