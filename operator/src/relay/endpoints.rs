//! The public gateway and the kubelet API, wired to this (leader) replica's edge sessions.
//!
//! Both run on the leader only: tunnels and log streams ride on edge sessions, which live in
//! the leader's memory.

use std::net::{IpAddr, SocketAddr};
use std::path::PathBuf;
use std::sync::Arc;

use decloud_crds::Workload;
use decloud_gateway::{
    CertStore, ContainerStreams, GatewayLimits, Https, KubeAccessReview, KubeletAuth, LogError,
    LogQuery, LogSource, LogStream, NodeReadings, Routes, ServingNode, self_signed_tls,
    serve_gateway_with_tcp, serve_kubelet_api, serve_node_kubelet_api,
};
use futures::future::BoxFuture;
use k8s_openapi::api::core::v1::{ConfigMap, Namespace, Pod};
use kube::runtime::reflector::{ObjectRef, Store};
use tokio::net::TcpListener;
use tracing::{info, warn};

use super::exec::StreamRelay;
use super::logs::LogRelay;
use super::tunnels::TunnelBroker;
use crate::context::Context;
use crate::{Error, Result};

/// Where and how the gateway serves.
#[derive(Clone, Debug)]
pub(crate) struct GatewayConfig {
    /// Address of the public HTTP listener.
    pub(crate) listen: SocketAddr,
    /// The HTTPS listener's address, its certificates and the port clients reach it on.
    pub(crate) https: Option<(
        SocketAddr,
        CertStore,
        u16,
        decloud_gateway::Http01Challenges,
    )>,
    /// Domain of Workloads without `expose.host` (`<name>.<namespace>.<base-domain>`).
    pub(crate) base_domain: String,
    /// Raw TCP exposure, if on.
    pub(crate) tcp: Option<decloud_gateway::TcpExposure>,
    /// Limits of the public listener.
    pub(crate) limits: GatewayLimits,
    /// PEM file of the CA that signs the API server's kubelet client certificate; without
    /// it, the cluster's client CA from `kube-system/extension-apiserver-authentication`.
    pub(crate) kubelet_client_ca: Option<PathBuf>,
}
/// The kubelet client CA (PEM): `file`, else the cluster's `client-ca-file` published in
/// `kube-system/extension-apiserver-authentication` (readable with the built-in Role
/// `extension-apiserver-authentication-reader`), else none (then only bearer tokens
/// authenticate, and `kubectl logs` through the API server is refused).
async fn kubelet_client_ca(ctx: &Context, file: Option<&PathBuf>) -> Result<Option<Vec<u8>>> {
    if let Some(file) = file {
        return std::fs::read(file)
            .map(Some)
            .map_err(|source| Error::Serve {
                what: "kubelet client CA file",
                source,
            });
    }
    let api: kube::Api<ConfigMap> = kube::Api::namespaced(ctx.client.clone(), "kube-system");
    match api.get_opt("extension-apiserver-authentication").await {
        Ok(Some(cm)) => {
            if let Some(pem) = cm.data.and_then(|mut d| d.remove("client-ca-file")) {
                info!(
                    "kubelet API trusts the cluster's client CA (extension-apiserver-authentication)"
                );
                return Ok(Some(pem.into_bytes()));
            }
        }
        Ok(None) => {}
        Err(e) => warn!(error = %e, "cannot read kube-system/extension-apiserver-authentication"),
    }
    warn!(
        "no kubelet client CA (--kubelet-client-ca): the kubelet API accepts only bearer tokens, \
         so `kubectl logs` through the API server is refused"
    );
    Ok(None)
}

/// The log relay, plus the pod cache to tell which node a pod is on (for authorization).
struct NodeAwareLogs {
    relay: LogRelay,
    ctx: Arc<Context>,
}

impl LogSource for NodeAwareLogs {
    fn logs(&self, query: LogQuery) -> BoxFuture<'static, Result<LogStream, LogError>> {
        self.relay.logs(query)
    }

    fn node_of(&self, namespace: &str, pod: &str) -> Option<String> {
        let pod: Arc<Pod> = self.ctx.pods.get(&ObjectRef::new(pod).within(namespace))?;
        pod.spec.as_ref()?.node_name.clone()
    }
}

async fn bind(what: &'static str, addr: SocketAddr) -> Result<TcpListener> {
    TcpListener::bind(addr)
        .await
        .map_err(|source| Error::Serve { what, source })
}

/// Serves the gateway on `cfg.listen` and the kubelet API on `--node-address:--kubelet-port`
/// (all interfaces if that address is not local) until the process ends.
pub(crate) async fn run(
    ctx: Arc<Context>,
    cfg: GatewayConfig,
    workloads: Store<Workload>,
    namespaces: Store<Namespace>,
) -> Result<()> {
    let gateway = bind("gateway", cfg.listen).await?;
    let addr = gateway.local_addr().map_err(|source| Error::Serve {
        what: "gateway",
        source,
    })?;
    println!("decloud-operator: gateway listening on {addr}");
    info!(%addr, base_domain = %cfg.base_domain, "gateway listening");
    let https = match cfg.https {
        Some((listen, certificates, public_port, challenges)) => {
            let listener = bind("gateway HTTPS", listen).await?;
            let addr = listener.local_addr().map_err(|source| Error::Serve {
                what: "gateway HTTPS",
                source,
            })?;
            println!("decloud-operator: gateway HTTPS listening on {addr}");
            info!(%addr, public_port, "gateway HTTPS listening");
            Some(Https {
                listener,
                certificates,
                public_port,
                challenges,
            })
        }
        None => None,
    };

    let node = ctx.config.node_address;
    let port = ctx.config.kubelet_port;
    let kubelet = match bind("kubelet API", SocketAddr::new(node, port)).await {
        Ok(l) => l,
        Err(e) => {
            warn!(error = %e, "cannot bind the kubelet API on the node address; using all interfaces");
            bind(
                "kubelet API",
                SocketAddr::new(IpAddr::from([0, 0, 0, 0]), port),
            )
            .await?
        }
    };
    let names = vec![
        node.to_string(),
        "localhost".to_string(),
        "127.0.0.1".to_string(),
    ];
    let client_ca = kubelet_client_ca(&ctx, cfg.kubelet_client_ca.as_ref()).await?;
    let tls = self_signed_tls(&names, client_ca.as_deref()).map_err(|e| Error::Serve {
        what: "kubelet API TLS",
        source: std::io::Error::other(e.to_string()),
    })?;
    info!(addr = ?kubelet.local_addr().ok(), "kubelet API listening (kubectl logs, exec, attach, port-forward)");

    // Routes read the operator's shared Workload, Pod and Namespace caches: no watch of their own.
    let routes = Routes::new(workloads, ctx.pods.clone(), namespaces, cfg.base_domain);
    let dialer = Arc::new(TunnelBroker::new(ctx.clone()));
    let auth = KubeletAuth::new(Arc::new(KubeAccessReview::new(ctx.client.clone())));
    let streams = Arc::new(StreamRelay::new(ctx.clone()));
    let logs = Arc::new(NodeAwareLogs {
        relay: LogRelay::new(ctx.clone()),
        ctx: ctx.clone(),
    });
    // Each virtual node's own port, for the node-level reads (and everything else).
    let readings: Arc<dyn NodeReadings> = Arc::new(crate::stats::NodeViews { ctx: ctx.clone() });
    let node_server = {
        let (tls, logs, auth) = (tls.clone(), logs.clone(), auth.clone());
        let streams: Arc<dyn ContainerStreams> = streams.clone();
        Arc::new(move |node: String, listener: TcpListener| {
            let serving = ServingNode {
                node,
                readings: readings.clone(),
            };
            let logs: Arc<dyn LogSource> = logs.clone();
            tokio::spawn(serve_node_kubelet_api(
                listener,
                tls.clone(),
                logs,
                streams.clone(),
                auth.clone(),
                serving,
            ))
        })
    };
    ctx.node_ports.serve_with(node, node_server);
    tokio::join!(
        serve_gateway_with_tcp(gateway, https, cfg.tcp, routes, dialer, cfg.limits),
        serve_kubelet_api(kubelet, tls, logs, streams, auth),
    );
    Ok(())
}

// === impl GatewayCertificates ===

/// The gateway's certificate store as the Workload controller fills it: each Secret checked
/// (`decloud_gateway::load_tls_secret`) for the host its Workload owns before it is served.
pub(crate) struct GatewayCertificates {
    store: CertStore,
    public_port: u16,
    acme: Option<Arc<decloud_workload::acme::Acme>>,
}

impl GatewayCertificates {
    pub(crate) fn new(
        store: CertStore,
        public_port: u16,
        acme: Option<Arc<decloud_workload::acme::Acme>>,
    ) -> Self {
        Self {
            store,
            public_port,
            acme,
        }
    }
}

impl decloud_workload::Certificates for GatewayCertificates {
    fn install(
        &self,
        owner: &str,
        host: &str,
        secret: &k8s_openapi::api::core::v1::Secret,
    ) -> std::result::Result<(), decloud_workload::CertificateProblem> {
        let now = k8s_openapi::jiff::Timestamp::now().as_second();
        match decloud_gateway::load_tls_secret(secret, host, now) {
            Ok(cert) => {
                self.store.install(owner, host, cert);
                Ok(())
            }
            Err(e) => {
                self.store.remove_owner(owner);
                Err(decloud_workload::CertificateProblem {
                    reason: e.reason().into(),
                    message: e.to_string(),
                })
            }
        }
    }

    fn remove(&self, owner: &str) {
        self.store.remove_owner(owner);
    }

    fn acme(&self) -> Option<Arc<decloud_workload::acme::Acme>> {
        self.acme.clone()
    }

    fn https_url(&self, host: &str) -> String {
        match self.public_port {
            443 => format!("https://{host}"),
            port => format!("https://{host}:{port}"),
        }
    }
}
