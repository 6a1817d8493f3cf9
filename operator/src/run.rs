//! `decloud-operator run`: builds the one watch per kind, the shared context and every server
//! and loop, and runs them until the process is told to stop.
//!
//! Servers (edge gRPC, health/metrics) run on every replica; everything that acts on the
//! cluster starts only once this replica holds the leader Lease.

use std::sync::Arc;
use std::time::Duration;

use decloud_crds::{Provider, Workload};
use decloud_workload::{Resumed, SharedWatch};
use futures::{Stream, StreamExt};
use k8s_openapi::api::core::v1::{Namespace, Node, Pod};
use kube::api::{Api, ListParams};
use kube::runtime::reflector::{self, Store};
use kube::runtime::{WatchStreamExt, watcher};
use tracing::info;

use crate::admin::{default_sans, kube_client};
use crate::cli::RunArgs;
use crate::context::{Caches, Context, ContextQueues};
use crate::edge::liveness::DisruptionPolicy;
use crate::edge::{CredentialAuthenticator, EdgeService};
use crate::health::Readiness;
use crate::leader::{Elector, LeaderConfig};
use crate::metrics::Metrics;
use crate::{Config, Error, Result, edge, health, install, pods, provider, relay, tls, usage};

/// How often every edge is resent its full desired pod set (the push path's safety net).
const POD_SET_RESYNC: Duration = Duration::from_secs(30);

/// Objects a slow subscriber of a shared watch may lag behind before the watch waits for it.
const SUBSCRIBER_BUFFER: usize = 1024;

/// Fails with how to install the CRDs when they are missing.
async fn check_crds(client: &kube::Client) -> Result<()> {
    let lp = ListParams::default().limit(1);
    for (kind, res) in [
        (
            "Provider",
            Api::<Provider>::all(client.clone())
                .list(&lp)
                .await
                .map(|_| ()),
        ),
        (
            "Workload",
            Api::<Workload>::all(client.clone())
                .list(&lp)
                .await
                .map(|_| ()),
        ),
    ] {
        match res {
            Ok(()) => {}
            Err(kube::Error::Api(e)) if e.code == 404 => {
                return Err(Error::CrdsMissing(format!("{kind}.decloud.dev not found")));
            }
            Err(e) => return Err(e.into()),
        }
    }
    Ok(())
}

fn config(args: &RunArgs) -> Config {
    Config {
        heartbeat_interval: args.heartbeat_interval,
        missed_heartbeats: args.missed_heartbeats,
        kubelet_port: args.kubelet_port,
        node_address: args.node_address,
        node_lease_renew: args.node_lease_renew,
        status_report_interval: args.status_report_interval,
        namespace: args.namespace.clone(),
        failed_auth_burst: args.failed_auth_burst,
        failed_auth_per_minute: args.failed_auth_per_minute,
        max_connections_per_address: args.max_connections_per_address,
        max_tunnels_per_edge: args.max_tunnels_per_edge as usize,
        disruption: DisruptionPolicy {
            unhealthy_threshold: args.unhealthy_threshold,
            large_cluster_size: args.large_cluster_size,
            hold: args.disruption_hold,
        },
        allow_daemonsets: args.allow_daemonsets,
    }
}

async fn edge_tls(client: &kube::Client, args: &RunArgs) -> Result<Option<tls::OperatorTls>> {
    if args.insecure_plaintext {
        tracing::warn!(
            "--insecure-plaintext: edges are served WITHOUT TLS; credentials and pod specs travel \
             in the clear. For local debugging only."
        );
        return Ok(None);
    }
    let tls = tls::load_or_create(
        client,
        &args.namespace,
        &default_sans(args.node_address, &args.tls_sans),
    )
    .await?;
    info!(ca_hash = %tls.ca_hash()?, "edge TLS ready");
    Ok(Some(tls))
}

/// The operator's one watch per kind: Pods, Providers, Workloads, Namespaces (the custom hosts
/// granted to each) and virtual Nodes. Each
/// subscriber handed out here is read by exactly one part; the watches start (and so the
/// subscribers must be read) only under leadership.
struct Watches {
    pods: SharedWatch<Pod>,
    providers: SharedWatch<Provider>,
    workloads: SharedWatch<Workload>,
    namespaces: SharedWatch<Namespace>,
    nodes: Store<Node>,
    node_stream: std::pin::Pin<Box<dyn Stream<Item = watcher::Result<Node>> + Send>>,
}

fn watches(client: &kube::Client) -> Watches {
    let (nodes, node_writer) = reflector::store();
    let node_stream = reflector::reflector(
        node_writer,
        watcher(
            Api::<Node>::all(client.clone()),
            watcher::Config::default().labels("type=virtual-kubelet"),
        )
        .default_backoff(),
    )
    .applied_objects();
    Watches {
        pods: SharedWatch::new(SUBSCRIBER_BUFFER),
        providers: SharedWatch::new(SUBSCRIBER_BUFFER),
        workloads: SharedWatch::new(SUBSCRIBER_BUFFER),
        namespaces: SharedWatch::new(SUBSCRIBER_BUFFER),
        nodes,
        node_stream: node_stream.boxed(),
    }
}

/// Runs the operator until Ctrl-C or SIGTERM (then the leader Lease is handed over).
pub(crate) async fn run(args: RunArgs) -> Result<()> {
    let client = kube_client().await?;
    check_crds(&client).await?;
    let tls = edge_tls(&client, &args).await?;
    let mut registry = prometheus_client::registry::Registry::default();
    let metrics = Arc::new(Metrics::new(&mut registry));
    let readiness = Arc::new(Readiness::default());
    let w = watches(&client);
    let caches = Caches {
        pods: w.pods.store(),
        providers: w.providers.store(),
        nodes: w.nodes.clone(),
    };
    let (ctx, queues) = Context::new(
        client.clone(),
        config(&args),
        metrics,
        caches,
        readiness.clone(),
    );
    ctx.services.set_workloads(w.workloads.store());

    let metrics_listener = health::bind(args.metrics_listen).await?;
    info!(addr = ?metrics_listener.local_addr().ok(), "serving /metrics, /healthz and /readyz");
    let edge_listener = edge::bind(args.edge_listen).await?;
    let edge_addr = edge_listener.local_addr().map_err(|source| Error::Serve {
        what: "edge gRPC",
        source,
    })?;
    match &tls {
        Some(tls) => {
            println!(
                "decloud-operator: edge gRPC listening on {edge_addr} (TLS, CA {})",
                tls.ca_hash()?
            );
            info!(addr = %edge_addr, "edge gRPC listening (TLS)");
        }
        None => {
            println!("decloud-operator: edge gRPC listening on {edge_addr} (INSECURE plaintext)");
            info!(addr = %edge_addr, "edge gRPC listening (plaintext)");
        }
    }

    let mut servers = tokio::task::JoinSet::new();
    servers.spawn(health::serve(metrics_listener, registry, readiness.clone()));
    let auth = CredentialAuthenticator::new(client.clone(), ctx.providers.clone());
    let install =
        install::InstallFiles::load(&args.edge_binaries, tls.as_ref().map(|t| t.ca_pem.clone()))
            .await?;
    info!(platforms = ?install.platforms(), "serving /install.sh and the edge binaries on the edge listener");
    servers.spawn(edge::serve(
        edge_listener,
        EdgeService::new(ctx.clone(), auth),
        tls.as_ref().map(tls::OperatorTls::server_config),
        install::router(Arc::new(install)),
    ));

    let elector = Elector::new(leader_config(&args)).await?;
    let (led_tx, led_rx) = tokio::sync::oneshot::channel();
    let mut terminate = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
        .map_err(|source| Error::Serve {
        what: "SIGTERM handler",
        source,
    })?;

    // Everything below acts on the cluster, so it starts only once this replica leads.
    let leading = async {
        if led_rx.await.is_err() {
            return;
        }
        lead(ctx.clone(), queues, w, &args).await;
    };
    // The election and the leader's loops are dropped when this ends, before the Lease is
    // released: nothing renews it or acts on the cluster afterwards.
    let stopped = tokio::select! {
        res = servers.join_next() => match res {
            Some(Ok(Err(e))) => Err(e),
            Some(Err(e)) => Err(Error::Config(format!("a server task failed: {e}"))),
            _ => Err(Error::Config("a server task ended unexpectedly".into())),
        },
        res = elector.run(&readiness, led_tx) => res,
        () = leading => Err(Error::Config("a controller loop ended unexpectedly".into())),
        _ = tokio::signal::ctrl_c() => {
            info!("interrupted; exiting");
            Ok(())
        }
        _ = terminate.recv() => {
            info!("terminated (SIGTERM); handing over and exiting");
            Ok(())
        }
    };
    if stopped.is_ok() {
        elector.release(&readiness).await;
    }
    stopped
}

fn leader_config(args: &RunArgs) -> LeaderConfig {
    let identity = args.identity.clone().unwrap_or_else(|| {
        let host = std::fs::read_to_string("/proc/sys/kernel/hostname")
            .map(|h| h.trim().to_string())
            .unwrap_or_else(|_| "decloud-operator".into());
        format!("{host}-{}", std::process::id())
    });
    LeaderConfig {
        name: args.lease_name.clone(),
        namespace: args.lease_namespace.clone(),
        identity,
        lease_duration: args.lease_duration,
        retry_period: (args.lease_duration / 5).max(Duration::from_millis(500)),
    }
}

/// The leader's loops: the watches, the pod bridge and status writer, node Leases, liveness,
/// usage, the Provider and Workload controllers, token cleanup, the gateway and kubelet API.
/// Returns only if one of them ends.
async fn lead(ctx: Arc<Context>, queues: ContextQueues, mut w: Watches, args: &RunArgs) {
    let client = ctx.client.clone();
    // Hand out every subscriber before any watch starts (kube-runtime cannot subscribe later).
    let watches = decloud_workload::Watches {
        workloads: w.workloads.store(),
        workload_events: w.workloads.subscribe(),
        workload_claims: w.workloads.subscribe(),
        deleted_workloads: w.workloads.deletions(),
        namespaces: w.namespaces.store(),
        namespace_events: w.namespaces.subscribe(),
        providers: w.providers.store(),
        provider_events: w.providers.subscribe(),
        pods: w.pods.store(),
        pod_events: w.pods.subscribe(),
        deleted_providers: w.providers.deletions(),
        deleted_pods: w.pods.deletions(),
    };
    let controller = provider::controller(
        w.providers.store(),
        Resumed::new(w.providers.subscribe()),
        w.node_stream,
    );
    let workloads = w.workloads.store();
    let namespaces = w.namespaces.store();
    let pod_events = w
        .pods
        .events(Api::all(client.clone()), watcher::Config::default());

    let mut loops = tokio::task::JoinSet::new();
    // The pod bridge owns the Pod watch: it needs every event (deletions, re-lists).
    loops.spawn(pods::run_pod_watcher(ctx.clone(), pod_events));
    loops.spawn(
        w.providers
            .run(Api::all(client.clone()), watcher::Config::default()),
    );
    loops.spawn(
        w.workloads
            .run(Api::all(client.clone()), watcher::Config::default()),
    );
    loops.spawn(
        w.namespaces
            .run(Api::all(client.clone()), watcher::Config::default()),
    );
    loops.spawn(pods::write_statuses(ctx.clone()));
    loops.spawn(pods::write_pod_events(ctx.clone(), queues.pod_events_rx));
    loops.spawn(pods::resync_periodically(ctx.clone(), POD_SET_RESYNC));
    loops.spawn(provider::renew_node_leases(ctx.clone()));
    loops.spawn(sweep_liveness(ctx.clone()));
    loops.spawn(usage::write_workload_usage(
        ctx.clone(),
        args.usage_interval,
    ));
    loops.spawn(provider::run(controller, ctx.clone(), queues.reconcile_rx));
    loops.spawn(crate::edge::auth::clean_expired_tokens(
        client.clone(),
        args.namespace.clone(),
        args.expired_token_retention,
    ));
    // One certificate store: the Workload controller fills it, the HTTPS listener reads it.
    let certificates = args.https_listen.map(|_| decloud_gateway::CertStore::new());
    // ACME HTTP-01 answers: the issuer publishes them, the plain HTTP listener gives them.
    let challenges = decloud_gateway::Http01Challenges::default();
    let gateway_config = relay::GatewayConfig {
        listen: args.gateway_listen,
        https: args
            .https_listen
            .zip(certificates.clone())
            .map(|(listen, store)| (listen, store, args.https_public_port, challenges.clone())),
        base_domain: args.base_domain.clone(),
        tcp: args
            .tcp_port_range
            .map(|range| decloud_gateway::TcpExposure {
                bind: args.gateway_listen.ip(),
                range,
                per_namespace: usize::from(args.tcp_ports_per_namespace),
            }),
        limits: decloud_gateway::GatewayLimits {
            header_timeout: args.gateway_header_timeout,
            max_header_bytes: args.gateway_max_header_bytes,
            max_connections: args.gateway_max_connections,
            idle_timeout: args.gateway_idle_timeout,
            ..Default::default()
        },
        kubelet_client_ca: args.kubelet_client_ca.clone(),
    };
    let gateway_ctx = ctx.clone();
    loops.spawn(async move {
        if let Err(e) =
            relay::run_endpoints(gateway_ctx, gateway_config, workloads, namespaces).await
        {
            tracing::error!(error = %e, "the gateway stopped");
        }
    });
    let workload_config = decloud_workload::Config {
        base_domain: args.base_domain.clone(),
        url_template: args.url_template.clone(),
        tcp: args
            .tcp_port_range
            .map(|range| decloud_workload::TcpConfig {
                range,
                per_namespace: usize::from(args.tcp_ports_per_namespace),
                host: args
                    .tcp_public_host
                    .clone()
                    .unwrap_or_else(|| args.base_domain.clone()),
            }),
    };
    let acme = match (&args.acme_directory, &certificates) {
        (Some(directory), Some(_)) => {
            match acme_issuer(args, directory, client.clone(), &challenges) {
                Ok(a) => Some(a),
                Err(e) => {
                    tracing::error!(error = %e, "ACME is off: its settings are not usable");
                    None
                }
            }
        }
        _ => None,
    };
    let certificates = certificates.map(|store| {
        Arc::new(relay::GatewayCertificates::new(
            store,
            args.https_public_port,
            acme,
        )) as Arc<dyn decloud_workload::Certificates>
    });
    loops.spawn(async move {
        if let Err(e) =
            decloud_workload::run_with_certificates(client, workload_config, watches, certificates)
                .await
        {
            tracing::error!(error = %e, "the Workload controller stopped");
        }
    });
    loops.join_next().await;
}

/// Answers HTTP-01 challenges on the gateway's plain HTTP listener.
struct GatewayChallenges(decloud_gateway::Http01Challenges);

impl decloud_workload::acme::Http01Responder for GatewayChallenges {
    fn publish(&self, host: &str, token: &str, key_authorization: &str) -> bool {
        self.0.publish(host, token, key_authorization)
    }

    fn withdraw(&self, token: &str) {
        self.0.withdraw(token);
    }
}

/// Most ACME account contacts.
const MAX_ACME_CONTACTS: usize = 4;

/// The ACME issuer the flags describe.
fn acme_issuer(
    args: &RunArgs,
    directory: &str,
    client: kube::Client,
    challenges: &decloud_gateway::Http01Challenges,
) -> std::result::Result<Arc<decloud_workload::acme::Acme>, String> {
    if !directory.starts_with("https://") {
        return Err(format!(
            "--acme-directory {directory:?} is not an https:// URL"
        ));
    }
    if args.acme_contacts.len() > MAX_ACME_CONTACTS {
        return Err(format!(
            "at most {MAX_ACME_CONTACTS} --acme-contact are accepted"
        ));
    }
    if let Some(c) = args
        .acme_contacts
        .iter()
        .find(|c| !c.starts_with("mailto:") || c.len() > 254)
    {
        return Err(format!("--acme-contact {c:?} is not a mailto: URI"));
    }
    let bundle = std::fs::read(&args.acme_ca_bundle)
        .map_err(|e| format!("--acme-ca-bundle {}: {e}", args.acme_ca_bundle.display()))?;
    let identity = leader_config(args).identity;
    let config = decloud_workload::acme::AcmeConfig {
        directory: directory.to_string(),
        contact: args.acme_contacts.clone(),
        ca_bundle: Some(bundle),
        namespace: args.namespace.clone(),
        identity,
        base_domain_hosts: args.acme_base_domain_hosts,
        orders_per_namespace_hour: usize::from(args.acme_orders_per_namespace_hour),
        concurrent_orders: usize::from(args.acme_concurrent_orders),
    };
    tracing::info!(directory, "ACME certificates on");
    decloud_workload::acme::Acme::new(
        config,
        client,
        Arc::new(GatewayChallenges(challenges.clone())),
    )
    .map(Arc::new)
}

/// Turns missed heartbeats into Provider reconciles, checking several times per interval.
async fn sweep_liveness(ctx: Arc<Context>) {
    let mut tick = tokio::time::interval(ctx.config.sweep_period());
    // After a stall, the next sweep must come a full period after the one that noticed it
    // (which judges nobody), so heartbeats buffered meanwhile are read first; the default
    // (`Burst`) would fire the missed ticks back to back.
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        for (provider, transition) in ctx.registry.sweep() {
            info!(%provider, ?transition, "edge liveness changed");
            ctx.reconcile_provider(&provider);
        }
    }
}

#[cfg(test)]
mod tests {
    use clap::Parser as _;

    use super::*;

    fn args(extra: &[&str]) -> RunArgs {
        let argv = ["decloud-operator", "run"].iter().chain(extra);
        match crate::cli::Cli::try_parse_from(argv)
            .expect("parses")
            .command
        {
            crate::cli::Command::Run(a) => *a,
            other => panic!("parsed as {other:?}"),
        }
    }

    fn issuer(extra: &[&str], directory: &str) -> std::result::Result<(), String> {
        let client = kube::Client::try_from(kube::Config::new(
            "http://127.0.0.1:9".parse().expect("url"),
        ))
        .expect("client");
        let challenges = decloud_gateway::Http01Challenges::default();
        acme_issuer(&args(extra), directory, client, &challenges).map(|_| ())
    }

    #[tokio::test]
    async fn acme_settings_are_checked_and_refused_clearly() {
        let dir = std::env::temp_dir().join(format!("decloud-acme-test-{}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("dir");
        let good = dir.join("ca.pem");
        std::fs::write(&good, tls::new_ca().expect("ca").0).expect("write");
        let junk = dir.join("junk.pem");
        std::fs::write(&junk, "not a certificate").expect("write");
        let good_s = good.to_string_lossy().to_string();
        let junk_s = junk.to_string_lossy().to_string();
        let base = ["--https-listen", "127.0.0.1:0", "--acme-ca-bundle"];
        let with = |bundle: &str, more: &[&str]| {
            let mut v: Vec<&str> = base.to_vec();
            v.push(bundle);
            v.extend_from_slice(more);
            v.iter().map(|s| s.to_string()).collect::<Vec<_>>()
        };
        let run = |a: Vec<String>, d: &str| {
            let a: Vec<&str> = a.iter().map(String::as_str).collect();
            issuer(&a, d)
        };
        let dirurl = "https://127.0.0.1:14000/dir";
        run(
            with(&good_s, &["--acme-contact", "mailto:ops@example.org"]),
            dirurl,
        )
        .expect("good settings");
        let err = run(with(&good_s, &[]), "http://127.0.0.1:14000/dir").unwrap_err();
        assert!(err.contains("not an https:// URL"), "{err}");
        let err = run(
            with(&good_s, &["--acme-contact", "ops@example.org"]),
            dirurl,
        )
        .unwrap_err();
        assert!(err.contains("not a mailto: URI"), "{err}");
        let five = "mailto:a@x,mailto:b@x,mailto:c@x,mailto:d@x,mailto:e@x";
        let err = run(with(&good_s, &["--acme-contact", five]), dirurl).unwrap_err();
        assert!(err.contains("at most 4"), "{err}");
        let err = run(with("/nonexistent/ca.pem", &[]), dirurl).unwrap_err();
        assert!(err.contains("--acme-ca-bundle"), "{err}");
        let err = run(with(&junk_s, &[]), dirurl).unwrap_err();
        assert!(err.contains("CA bundle"), "{err}");
        let _ = std::fs::remove_dir_all(&dir);
    }
}
