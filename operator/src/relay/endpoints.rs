//! The public gateway and the kubelet API, wired to this (leader) replica's edge sessions.
//!
//! Both run on the leader only: tunnels and log streams ride on edge sessions, which live in
//! the leader's memory.

use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;

use decloud_crds::Workload;
use decloud_gateway::{Routes, self_signed_tls, serve_gateway, serve_kubelet_api};
use k8s_openapi::api::core::v1::Namespace;
use kube::runtime::reflector::Store;
use tokio::net::TcpListener;
use tracing::{info, warn};

use super::logs::LogRelay;
use super::tunnels::TunnelBroker;
use crate::context::Context;
use crate::{Error, Result};

/// Where and how the gateway serves.
#[derive(Clone, Debug)]
pub(crate) struct GatewayConfig {
    /// Address of the public HTTP listener.
    pub(crate) listen: SocketAddr,
    /// Domain of Workloads without `expose.host` (`<name>.<namespace>.<base-domain>`).
    pub(crate) base_domain: String,
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
    let tls = self_signed_tls(&names).map_err(|e| Error::Serve {
        what: "kubelet API TLS",
        source: std::io::Error::other(e.to_string()),
    })?;
    info!(addr = ?kubelet.local_addr().ok(), "kubelet API listening (kubectl logs)");

    // Routes read the operator's shared Workload, Pod and Namespace caches: no watch of their own.
    let routes = Routes::new(workloads, ctx.pods.clone(), namespaces, cfg.base_domain);
    let dialer = Arc::new(TunnelBroker::new(ctx.clone()));
    let logs = Arc::new(LogRelay::new(ctx));
    tokio::join!(
        serve_gateway(gateway, routes, dialer),
        serve_kubelet_api(kubelet, tls, logs),
    );
    Ok(())
}
