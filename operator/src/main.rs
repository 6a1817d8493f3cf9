//! `decloud-operator`: the DeCloud operator binary.

use std::collections::BTreeSet;
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context as _;
use clap::{Parser, Subcommand};
use decloud_crds::{Provider, Workload};
use decloud_operator::context::{Caches, Context};
use decloud_operator::http::Readiness;
use decloud_operator::join::{self, CredentialAuthenticator};
use decloud_operator::leader::LeaderConfig;
use decloud_operator::liveness::DisruptionPolicy;
use decloud_operator::metrics::Metrics;
use decloud_operator::server::EdgeService;
use decloud_operator::tls;
use decloud_operator::{Config, Error, bridge, http, leader, node, provider, server};
use k8s_openapi::api::core::v1::Node;
use kube::api::{Api, ListParams, Patch, PatchParams};
use kube::runtime::{WatchStreamExt, reflector, watcher};
use tracing::info;
use tracing_subscriber::EnvFilter;

#[derive(Parser, Debug)]
#[command(name = "decloud-operator", version, about = "The DeCloud operator")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Run the operator (kubeconfig from KUBECONFIG, ~/.kube/config or the in-cluster account).
    Run(Box<RunArgs>),
    /// Manage join tokens (what a new provider machine joins with).
    #[command(subcommand)]
    Token(TokenCommand),
    /// Manage providers.
    #[command(subcommand)]
    Provider(ProviderCommand),
}

#[derive(Subcommand, Debug)]
enum TokenCommand {
    /// Create a join token and print it with the full join command.
    Create {
        /// How long the token works, e.g. `24h`, `30m`.
        #[arg(long, default_value = "24h", value_parser = parse_duration)]
        ttl: Duration,
        /// The operator's namespace (where tokens and its TLS Secret live).
        #[arg(long, env = "POD_NAMESPACE", default_value = "default")]
        namespace: String,
        /// Address edges dial, printed in the join command.
        #[arg(long, default_value = "https://<operator-address>:7443")]
        operator_url: String,
    },
    /// List join tokens.
    List {
        /// The operator's namespace.
        #[arg(long, env = "POD_NAMESPACE", default_value = "default")]
        namespace: String,
    },
    /// Revoke (delete) a join token by its id (the part before the dot) or the whole token.
    Revoke {
        /// The token or its id.
        id: String,
        /// The operator's namespace.
        #[arg(long, env = "POD_NAMESPACE", default_value = "default")]
        namespace: String,
    },
}

#[derive(Subcommand, Debug)]
enum ProviderCommand {
    /// Revoke a provider: its credential stops working and its live session closes at once.
    /// Delete the Provider afterwards to let a machine join under the name again.
    Revoke {
        /// The provider's name.
        name: String,
    },
}

#[derive(clap::Args, Debug)]
struct RunArgs {
    /// Address the edge gRPC server listens on (edges dial it).
    #[arg(long, env = "DECLOUD_EDGE_LISTEN", default_value = "0.0.0.0:7443")]
    edge_listen: SocketAddr,
    /// Address of the /metrics, /healthz and /readyz endpoints.
    #[arg(long, env = "DECLOUD_METRICS_LISTEN", default_value = "0.0.0.0:9090")]
    metrics_listen: SocketAddr,
    /// Port of the operator's kubelet API, published as each virtual node's kubelet endpoint.
    #[arg(long, env = "DECLOUD_KUBELET_PORT", default_value_t = 10250)]
    kubelet_port: u16,
    /// Address published on virtual nodes and as pods' hostIP (the operator's own, e.g. its
    /// pod IP); never a provider's address.
    #[arg(long, env = "POD_IP", default_value = "127.0.0.1")]
    node_address: IpAddr,
    /// How often edges send heartbeats, e.g. `1s` or `500ms`.
    #[arg(long, default_value = "1s", value_parser = parse_duration)]
    heartbeat_interval: Duration,
    /// Heartbeats an edge may miss before its Provider is NotReady and its Node unreachable.
    #[arg(long, default_value_t = 3, value_parser = clap::value_parser!(u32).range(1..=100))]
    missed_heartbeats: u32,
    /// Share of the ready edges that must fall silent together (within one heartbeat interval)
    /// for the operator to suspect itself or its network rather than the edges: in (0, 1].
    /// Such mass silence is held as a disruption (no edge marked NotReady, nothing failed over)
    /// for up to --disruption-hold, so that a stalled or cut-off operator does not blame and
    /// fail over thousands of healthy edges at once. Exactly this share is not yet a
    /// disruption; 1 turns the guard off. Like kube-controller-manager's
    /// --unhealthy-zone-threshold.
    #[arg(long, default_value_t = 0.55, value_parser = parse_unhealthy_threshold)]
    unhealthy_threshold: f64,
    /// With fewer ready edges than this, silence is never held as a disruption: in a small
    /// fleet a few edges are a large share, and each loss must be failed over within seconds.
    /// Like kube-controller-manager's --large-cluster-size-threshold.
    #[arg(long, default_value_t = 50)]
    large_cluster_size: usize,
    /// How long a disruption may hold NotReady verdicts; if the silence lasts longer it is an
    /// outage after all, and the silent edges are marked NotReady (and failed over) this much
    /// later than a single edge would be.
    #[arg(long, default_value = "20s", value_parser = parse_duration)]
    disruption_hold: Duration,
    /// How often node Leases in kube-node-lease are renewed for ready edges.
    #[arg(long, default_value = "10s", value_parser = parse_duration)]
    node_lease_renew: Duration,
    /// How often a ready Provider's status.lastHeartbeatTime (and its Node's) is refreshed when
    /// nothing else changed: the only periodic status write per edge (kubelet's
    /// nodeStatusReportFrequency is 5m too). Transitions are written at once regardless.
    #[arg(long, default_value = "5m", value_parser = parse_duration)]
    status_report_interval: Duration,
    /// Name of the leader-election Lease.
    #[arg(long, default_value = "decloud-operator")]
    lease_name: String,
    /// Namespace of the leader-election Lease.
    #[arg(long, env = "POD_NAMESPACE", default_value = "default")]
    lease_namespace: String,
    /// This replica's identity in the leader election (default: hostname and process id).
    #[arg(long, env = "POD_NAME")]
    identity: Option<String>,
    /// Domain under which Workloads without `expose.host` are published
    /// (`<name>.<namespace>.<base-domain>`).
    #[arg(long, default_value = "decloud.localhost")]
    base_domain: String,
    /// How a Workload's `status.url` is formed from its host; `{host}` is replaced.
    #[arg(long, default_value = "http://{host}")]
    url_template: String,
    /// Address of the public HTTP gateway (Workloads' URLs; served by the leader).
    #[arg(long, env = "DECLOUD_GATEWAY_LISTEN", default_value = "0.0.0.0:8080")]
    gateway_listen: SocketAddr,
    /// How long a gateway client may take to send a request head (then 408).
    #[arg(long, default_value = "10s", value_parser = parse_duration)]
    gateway_header_timeout: Duration,
    /// Largest request head the gateway reads (larger: 431).
    #[arg(long, default_value_t = 64 * 1024)]
    gateway_max_header_bytes: usize,
    /// Client connections the gateway serves at once (more: 503 with Retry-After).
    #[arg(long, default_value_t = 10_000)]
    gateway_max_connections: usize,
    /// A gateway connection with no traffic either way for this long is closed.
    #[arg(long, default_value = "300s", value_parser = parse_duration)]
    gateway_idle_timeout: Duration,
    /// PEM file of the CA signing the API server's kubelet client certificate
    /// (`--kubelet-client-certificate`); default: the cluster's client CA from
    /// kube-system/extension-apiserver-authentication, if readable.
    #[arg(long, env = "DECLOUD_KUBELET_CLIENT_CA")]
    kubelet_client_ca: Option<std::path::PathBuf>,
    /// How long the leader Lease is valid without renewal.
    #[arg(long, default_value = "15s", value_parser = parse_duration)]
    lease_duration: Duration,
    /// How often changed Workload usage totals (CPU-seconds, memory-GiB-hours) are written.
    #[arg(long, default_value = "30s", value_parser = parse_duration)]
    usage_interval: Duration,
    /// How long the Secret of an expired join token is kept before the operator deletes it
    /// (meanwhile an edge using it is told it expired rather than that it is unknown).
    /// Tokens from the chart's Secret are never deleted.
    #[arg(long, default_value = "24h", value_parser = parse_duration)]
    expired_token_retention: Duration,
    /// Refused authentications (bad join token or credential) one source address may have
    /// in a burst; beyond it the address is refused up front, without any API call, until it
    /// earns budget back. 0 turns this off (e.g. when every edge reaches the operator through
    /// one source-NATed address).
    #[arg(long, default_value_t = 20)]
    failed_auth_burst: u32,
    /// Refused authentications per minute an address earns back.
    #[arg(long, default_value_t = 10, value_parser = clap::value_parser!(u32).range(1..))]
    failed_auth_per_minute: u32,
    /// The operator's own namespace: its TLS Secret and the join tokens live there.
    #[arg(long, env = "POD_NAMESPACE", default_value = "default")]
    namespace: String,
    /// Extra DNS name or IP address for the edge serving certificate; repeat for more
    /// (localhost, 127.0.0.1 and --node-address are always included).
    #[arg(long = "tls-san")]
    tls_sans: Vec<String>,
    /// Serve edges over plaintext gRPC instead of TLS. INSECURE: credentials and pod specs
    /// travel in the clear; for local debugging only.
    #[arg(long)]
    insecure_plaintext: bool,
}

/// Parses `1s`, `500ms`, `2m` or a bare number of seconds.
fn parse_duration(s: &str) -> Result<Duration, String> {
    let s = s.trim();
    let (num, unit) = s
        .find(|c: char| !(c.is_ascii_digit() || c == '.'))
        .map_or((s, "s"), |i| s.split_at(i));
    let n: f64 = num.parse().map_err(|_| format!("invalid duration {s:?}"))?;
    let secs = match unit {
        "ms" => n / 1000.0,
        "s" => n,
        "m" => n * 60.0,
        "h" => n * 3600.0,
        _ => {
            return Err(format!(
                "invalid duration unit in {s:?} (use ms, s, m or h)"
            ));
        }
    };
    if !(secs > 0.0 && secs.is_finite()) {
        return Err(format!("duration {s:?} must be positive"));
    }
    Ok(Duration::from_secs_f64(secs))
}

/// Parses `--unhealthy-threshold`: a share in (0, 1].
fn parse_unhealthy_threshold(s: &str) -> Result<f64, String> {
    let v: f64 = s
        .trim()
        .parse()
        .map_err(|_| format!("invalid share {s:?}: expected a number in (0, 1], e.g. 0.55"))?;
    if !(v > 0.0 && v <= 1.0) {
        return Err(format!(
            "{s} is not in (0, 1]: it is the share of ready edges that must fall silent together \
             (0.55 = 55 %; 1 turns the guard off)"
        ));
    }
    Ok(v)
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    tracing_subscriber::fmt()
        .with_env_filter(
            EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info")),
        )
        .init();
    match Cli::parse().command {
        Command::Run(args) => run(*args).await,
        Command::Token(cmd) => token(cmd).await,
        Command::Provider(ProviderCommand::Revoke { name }) => revoke_provider(&name).await,
    }
}

async fn kube_client() -> anyhow::Result<kube::Client> {
    kube::Client::try_default()
        .await
        .context("loading the Kubernetes configuration (KUBECONFIG, ~/.kube/config or in-cluster)")
}

fn default_sans(node_address: IpAddr, extra: &[String]) -> BTreeSet<String> {
    [
        "localhost".to_string(),
        "127.0.0.1".to_string(),
        node_address.to_string(),
    ]
    .into_iter()
    .chain(extra.iter().cloned())
    .collect()
}

async fn token(cmd: TokenCommand) -> anyhow::Result<()> {
    let client = kube_client().await?;
    match cmd {
        TokenCommand::Create {
            ttl,
            namespace,
            operator_url,
        } => {
            // The CA is made here if the operator has not run yet; it keeps it.
            let tls = tls::load_or_create(
                &client,
                &namespace,
                &default_sans(IpAddr::from([127, 0, 0, 1]), &[]),
            )
            .await?;
            let ca_hash = tls.ca_hash()?;
            let expires = chrono::Utc::now()
                + chrono::Duration::from_std(ttl).context("--ttl is too long")?;
            let token = join::create_token(&client, &namespace, expires)
                .await
                .context("storing the join token")?;
            println!("Join token: {token}");
            println!("Expires:    {}", decloud_operator::status::rfc3339(expires));
            println!("CA hash:    {ca_hash}");
            println!("Join a provider machine (Docker installed) with:");
            println!(
                "  edge-kubelet join --operator {operator_url} --token {token} --ca-hash {ca_hash} --name <machine-name>"
            );
            println!("then keep it running with:");
            println!("  edge-kubelet run --operator {operator_url} --name <machine-name>");
        }
        TokenCommand::List { namespace } => {
            let now = chrono::Utc::now();
            println!("{:<24} {:<34} {:<22} STATE", "ID", "SECRET", "EXPIRES");
            for t in join::list_tokens(&client, &namespace).await? {
                let expires = t
                    .expires
                    .map(decloud_operator::status::rfc3339)
                    .unwrap_or_else(|| "never".into());
                let state = if t.expired(now) { "expired" } else { "valid" };
                println!("{:<24} {:<34} {:<22} {state}", t.id, t.secret, expires);
            }
        }
        TokenCommand::Revoke { id, namespace } => {
            if !join::revoke_token(&client, &namespace, &id).await? {
                anyhow::bail!("no join token {id:?} in namespace {namespace}");
            }
            println!("join token {id} revoked");
        }
    }
    Ok(())
}

async fn revoke_provider(name: &str) -> anyhow::Result<()> {
    let client = kube_client().await?;
    let api: Api<Provider> = Api::all(client);
    let now = decloud_operator::status::rfc3339(chrono::Utc::now());
    let patch = serde_json::json!({"metadata": {"annotations": {
        join::REVOKED_ANNOTATION: now,
        join::CREDENTIAL_ANNOTATION: null,
    }}});
    let pp = PatchParams {
        field_manager: Some(decloud_operator::FIELD_MANAGER.into()),
        ..PatchParams::default()
    };
    api.patch(name, &pp, &Patch::Merge(&patch))
        .await
        .with_context(|| format!("revoking provider {name:?}"))?;
    println!(
        "provider {name} revoked: its credential no longer works and its session is closed; \
         `kubectl delete provider {name}` removes it (and lets a machine join under the name again)"
    );
    Ok(())
}

/// Fails with how to install the CRDs when they are missing.
async fn check_crds(client: &kube::Client) -> anyhow::Result<()> {
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
                return Err(Error::CrdsMissing(format!("{kind}.decloud.dev not found")).into());
            }
            Err(e) => return Err(e).context("checking that the DeCloud CRDs are installed"),
        }
    }
    Ok(())
}

async fn run(args: RunArgs) -> anyhow::Result<()> {
    let client = kube_client().await?;
    check_crds(&client).await?;
    let tls = if args.insecure_plaintext {
        tracing::warn!(
            "--insecure-plaintext: edges are served WITHOUT TLS; credentials and pod specs travel \
             in the clear. For local debugging only."
        );
        None
    } else {
        let tls = tls::load_or_create(
            &client,
            &args.namespace,
            &default_sans(args.node_address, &args.tls_sans),
        )
        .await?;
        info!(ca_hash = %tls.ca_hash()?, "edge TLS ready");
        Some(tls)
    };

    let config = Config {
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
    };
    let mut registry = prometheus_client::registry::Registry::default();
    let metrics = Arc::new(Metrics::new(&mut registry));
    let readiness = Arc::new(Readiness::default());

    // Caches: pods (all), virtual nodes, and Providers (through the controller's own store).
    let (pods, pods_writer) = reflector::store();
    let (nodes, nodes_writer) = reflector::store();
    let node_api: Api<Node> = Api::all(client.clone());
    let node_stream = reflector::reflector(
        nodes_writer,
        watcher(
            node_api,
            watcher::Config::default().labels("type=virtual-kubelet"),
        )
        .default_backoff(),
    )
    .applied_objects();
    let controller = provider::controller(client.clone(), node_stream);
    let caches = Caches {
        pods,
        providers: controller.store(),
        nodes,
    };
    let (ctx, queues) = Context::new(client.clone(), config, metrics, caches, readiness.clone());

    let metrics_listener = http::bind(args.metrics_listen).await?;
    info!(addr = %metrics_listener.local_addr()?, "serving /metrics, /healthz and /readyz");
    let edge_listener = server::bind(args.edge_listen).await?;
    let edge_addr = edge_listener.local_addr()?;
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

    let mut tasks = tokio::task::JoinSet::new();
    tasks.spawn(http::serve(metrics_listener, registry, readiness.clone()));
    let auth = CredentialAuthenticator::new(client.clone(), ctx.providers.clone());
    tasks.spawn(server::serve(
        edge_listener,
        EdgeService::new(ctx.clone(), auth),
        tls.as_ref().map(tls::OperatorTls::server_config),
    ));

    let identity = args.identity.unwrap_or_else(|| {
        let host = std::fs::read_to_string("/proc/sys/kernel/hostname")
            .map(|h| h.trim().to_string())
            .unwrap_or_else(|_| "decloud-operator".into());
        format!("{host}-{}", std::process::id())
    });
    let leader_cfg = LeaderConfig {
        name: args.lease_name,
        namespace: args.lease_namespace,
        identity,
        lease_duration: args.lease_duration,
        retry_period: (args.lease_duration / 5).max(Duration::from_millis(500)),
    };
    let (led_tx, led_rx) = tokio::sync::oneshot::channel();
    tasks.spawn(leader::run(
        client.clone(),
        leader_cfg.clone(),
        readiness.clone(),
        led_tx,
    ));
    let mut terminate = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?;

    // Everything below acts on the cluster, so it starts only once this replica leads.
    let leading = async {
        if led_rx.await.is_err() {
            return;
        }
        let mut loops = tokio::task::JoinSet::new();
        loops.spawn(bridge::run_pod_watcher(ctx.clone(), pods_writer));
        loops.spawn(bridge::write_statuses(ctx.clone(), queues.status_rx));
        loops.spawn(node::renew_node_leases(ctx.clone()));
        loops.spawn(sweep_liveness(ctx.clone()));
        loops.spawn(decloud_operator::usage::write_workload_usage(
            ctx.clone(),
            args.usage_interval,
        ));
        loops.spawn(provider::run(controller, ctx.clone(), queues.reconcile_rx));
        loops.spawn(join::clean_expired_tokens(
            client.clone(),
            args.namespace.clone(),
            args.expired_token_retention,
        ));
        let gateway_config = decloud_operator::gateway::GatewayConfig {
            listen: args.gateway_listen,
            base_domain: args.base_domain.clone(),
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
            if let Err(e) = decloud_operator::gateway::run(gateway_ctx, gateway_config).await {
                tracing::error!(error = %e, "the gateway stopped");
            }
        });
        let workload_config = decloud_workload::Config {
            base_domain: args.base_domain,
            url_template: args.url_template,
        };
        let workload_client = client.clone();
        loops.spawn(async move {
            if let Err(e) = decloud_workload::run(workload_client, workload_config).await {
                tracing::error!(error = %e, "the Workload controller stopped");
            }
        });
        loops.join_next().await;
    };
    tokio::select! {
        res = tasks.join_next() => match res {
            Some(Ok(Err(e))) => Err(anyhow::Error::from(e)),
            Some(Err(e)) => Err(anyhow::Error::from(e)),
            _ => Err(anyhow::anyhow!("a server task ended unexpectedly")),
        },
        () = leading => Err(anyhow::anyhow!("a controller loop ended unexpectedly")),
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
    use clap::CommandFactory as _;

    use super::*;

    fn run_args(extra: &[&str]) -> Result<RunArgs, clap::Error> {
        let argv = ["decloud-operator", "run"].iter().chain(extra);
        match Cli::try_parse_from(argv)?.command {
            Command::Run(args) => Ok(*args),
            other => panic!("parsed as {other:?}"),
        }
    }

    #[test]
    fn the_cli_is_well_formed() {
        Cli::command().debug_assert();
    }

    #[test]
    fn disruption_flags_default_like_kube_controller_manager() {
        let args = run_args(&[]).unwrap();
        assert_eq!(args.unhealthy_threshold, 0.55);
        assert_eq!(args.large_cluster_size, 50);
        assert_eq!(args.disruption_hold, Duration::from_secs(20));
        let defaults = DisruptionPolicy::default();
        assert_eq!(
            (
                defaults.unhealthy_threshold,
                defaults.large_cluster_size,
                defaults.hold
            ),
            (
                args.unhealthy_threshold,
                args.large_cluster_size,
                args.disruption_hold
            ),
            "the CLI and the library agree on the defaults"
        );
        let args = run_args(&[
            "--unhealthy-threshold",
            "0.5",
            "--large-cluster-size",
            "3",
            "--disruption-hold",
            "12s",
        ])
        .unwrap();
        assert_eq!(
            (
                args.unhealthy_threshold,
                args.large_cluster_size,
                args.disruption_hold
            ),
            (0.5, 3, Duration::from_secs(12))
        );
        assert_eq!(
            run_args(&["--unhealthy-threshold", "1"])
                .unwrap()
                .unhealthy_threshold,
            1.0
        );
    }

    #[test]
    fn an_unhealthy_threshold_outside_zero_to_one_is_refused() {
        for bad in ["0", "-0.1", "1.01", "55", "NaN", "inf", "half"] {
            let flag = format!("--unhealthy-threshold={bad}");
            let err = run_args(&[flag.as_str()])
                .err()
                .unwrap_or_else(|| panic!("{bad:?} accepted"))
                .to_string();
            assert!(
                err.contains("--unhealthy-threshold") && err.contains("(0, 1]"),
                "{bad:?}: {err}"
            );
        }
        assert!(run_args(&["--disruption-hold", "0s"]).is_err());
        assert!(run_args(&["--large-cluster-size", "-1"]).is_err());
    }
}
