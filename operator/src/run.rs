//! `decloud-operator run`: builds the one watch per kind, the shared context and every server
//! and loop, and runs them until the process is told to stop.
//!
//! Servers (edge gRPC, health/metrics) run on every replica; everything that acts on the
//! cluster starts only once this replica holds the leader Lease.

use std::sync::Arc;
use std::time::Duration;

use decloud_crds::{Provider, Workload};
use futures::{Stream, StreamExt};
use k8s_openapi::api::core::v1::{Node, Pod};
use kube::api::{Api, ListParams};
use kube::runtime::reflector::{self, ReflectHandle, Store};
use kube::runtime::{WatchStreamExt, watcher};
use tracing::info;

use crate::admin::{default_sans, kube_client};
use crate::cli::RunArgs;
use crate::context::{Caches, Context, ContextQueues};
use crate::edge::liveness::DisruptionPolicy;
use crate::edge::{CredentialAuthenticator, EdgeService};
use crate::health::Readiness;
use crate::leader::{self, LeaderConfig};
use crate::metrics::Metrics;
use crate::{Config, Error, Result, edge, health, pods, provider, relay, tls, usage};

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

/// One shared watch of kind `K`: the store every part reads, and the stream that drives it
/// (to be polled by exactly one owner).
fn shared_watch<K>(
    api: Api<K>,
    config: watcher::Config,
) -> (
    Store<K>,
    reflector::store::Writer<K>,
    impl Stream<Item = watcher::Result<watcher::Event<K>>> + Send + 'static,
)
where
    K: kube::Resource<DynamicType = ()>
        + Clone
        + std::fmt::Debug
        + serde::de::DeserializeOwned
        + Send
        + Sync
        + 'static,
{
    let (store, writer) = reflector::store_shared(SUBSCRIBER_BUFFER);
    (store, writer, watcher(api, config).default_backoff())
}

/// Drives a shared watch no one else consumes the events of.
async fn drive<K, S>(stream: S)
where
    S: Stream<Item = watcher::Result<watcher::Event<K>>> + Send,
{
    let mut stream = std::pin::pin!(stream);
    while let Some(event) = stream.next().await {
        if let Err(e) = event {
            tracing::warn!(error = %e, "watch");
        }
    }
}

/// The operator's one watch per kind: Pods, Providers, Workloads and virtual Nodes.
struct Watches {
    pods: Store<Pod>,
    /// Pod events for the pod bridge, which owns (polls) the Pod watch.
    pod_stream: std::pin::Pin<Box<dyn Stream<Item = watcher::Result<watcher::Event<Pod>>> + Send>>,
    pod_events: ReflectHandle<Pod>,
    providers: Store<Provider>,
    provider_stream:
        std::pin::Pin<Box<dyn Stream<Item = watcher::Result<watcher::Event<Provider>>> + Send>>,
    provider_events_for_providers: ReflectHandle<Provider>,
    provider_events_for_workloads: ReflectHandle<Provider>,
    workloads: Store<Workload>,
    workload_stream:
        std::pin::Pin<Box<dyn Stream<Item = watcher::Result<watcher::Event<Workload>>> + Send>>,
    workload_events: ReflectHandle<Workload>,
    nodes: Store<Node>,
    node_stream: std::pin::Pin<Box<dyn Stream<Item = watcher::Result<Node>> + Send>>,
}

fn watches(client: &kube::Client) -> Watches {
    let (pods, pod_writer, pod_watch) =
        shared_watch(Api::<Pod>::all(client.clone()), watcher::Config::default());
    let pod_events = pod_writer.subscribe().expect("a shared store");
    let (providers, provider_writer, provider_watch) = shared_watch(
        Api::<Provider>::all(client.clone()),
        watcher::Config::default(),
    );
    let provider_events_for_providers = provider_writer.subscribe().expect("a shared store");
    let provider_events_for_workloads = provider_writer.subscribe().expect("a shared store");
    let (workloads, workload_writer, workload_watch) = shared_watch(
        Api::<Workload>::all(client.clone()),
        watcher::Config::default(),
    );
    let workload_events = workload_writer.subscribe().expect("a shared store");
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
        pods,
        pod_stream: pod_watch.reflect_shared(pod_writer).boxed(),
        pod_events,
        providers,
        provider_stream: provider_watch.reflect_shared(provider_writer).boxed(),
        provider_events_for_providers,
        provider_events_for_workloads,
        workloads,
        workload_stream: workload_watch.reflect_shared(workload_writer).boxed(),
        workload_events,
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
        pods: w.pods.clone(),
        providers: w.providers.clone(),
        nodes: w.nodes.clone(),
    };
    let (ctx, queues) = Context::new(
        client.clone(),
        config(&args),
        metrics,
        caches,
        readiness.clone(),
    );

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
    servers.spawn(edge::serve(
        edge_listener,
        EdgeService::new(ctx.clone(), auth),
        tls.as_ref().map(tls::OperatorTls::server_config),
    ));

    let leader_cfg = leader_config(&args);
    let (led_tx, led_rx) = tokio::sync::oneshot::channel();
    servers.spawn(leader::run(
        client.clone(),
        leader_cfg.clone(),
        readiness.clone(),
        led_tx,
    ));
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
    tokio::select! {
        res = servers.join_next() => match res {
            Some(Ok(Err(e))) => Err(e),
            Some(Err(e)) => Err(Error::Config(format!("a server task failed: {e}"))),
            _ => Err(Error::Config("a server task ended unexpectedly".into())),
        },
        () = leading => Err(Error::Config("a controller loop ended unexpectedly".into())),
        _ = tokio::signal::ctrl_c() => {
            info!("interrupted; exiting");
            leader::release(&client, &leader_cfg).await;
            Ok(())
        }
        _ = terminate.recv() => {
            info!("terminated (SIGTERM); handing over and exiting");
            leader::release(&client, &leader_cfg).await;
            Ok(())
        }
    }
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
async fn lead(ctx: Arc<Context>, queues: ContextQueues, w: Watches, args: &RunArgs) {
    let client = ctx.client.clone();
    let mut loops = tokio::task::JoinSet::new();
    loops.spawn(pods::run_pod_watcher(ctx.clone(), w.pod_stream));
    loops.spawn(drive(w.provider_stream));
    loops.spawn(drive(w.workload_stream));
    loops.spawn(pods::write_statuses(ctx.clone()));
    loops.spawn(provider::renew_node_leases(ctx.clone()));
    loops.spawn(sweep_liveness(ctx.clone()));
    loops.spawn(usage::write_workload_usage(
        ctx.clone(),
        args.usage_interval,
    ));
    let controller = provider::controller(
        w.providers.clone(),
        w.provider_events_for_providers,
        w.node_stream,
    );
    loops.spawn(provider::run(controller, ctx.clone(), queues.reconcile_rx));
    loops.spawn(crate::edge::auth::clean_expired_tokens(
        client.clone(),
        args.namespace.clone(),
        args.expired_token_retention,
    ));
    let gateway_config = relay::GatewayConfig {
        listen: args.gateway_listen,
        base_domain: args.base_domain.clone(),
    };
    let gateway_ctx = ctx.clone();
    let workloads = w.workloads.clone();
    loops.spawn(async move {
        if let Err(e) = relay::run_endpoints(gateway_ctx, gateway_config, workloads).await {
            tracing::error!(error = %e, "the gateway stopped");
        }
    });
    let workload_config = decloud_workload::Config {
        base_domain: args.base_domain.clone(),
        url_template: args.url_template.clone(),
    };
    // integrator: hand the shared watches to the Workload controller (decloud_workload::Watches).
    drop((
        w.workload_events,
        w.provider_events_for_workloads,
        w.pod_events,
    ));
    loops.spawn(async move {
        if let Err(e) = decloud_workload::run(client, workload_config).await {
            tracing::error!(error = %e, "the Workload controller stopped");
        }
    });
    loops.join_next().await;
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
