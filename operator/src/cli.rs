//! The `decloud-operator` command line: `run`, `token create|list|revoke`, `provider revoke`.

use std::net::{IpAddr, SocketAddr};
use std::time::Duration;

use clap::{Parser, Subcommand};

/// Parses a positive duration: `1s`, `500ms`, `2m`, `1h 30m` (humantime), or a bare number of
/// seconds.
fn parse_duration(s: &str) -> Result<Duration, String> {
    let s = s.trim();
    let d = match s.parse::<f64>() {
        Ok(secs) if secs.is_finite() && secs >= 0.0 => {
            Duration::try_from_secs_f64(secs).map_err(|_| format!("duration {s:?} is too long"))?
        }
        Ok(_) => return Err(format!("duration {s:?} must be positive")),
        Err(_) => humantime::parse_duration(s)
            .map_err(|e| format!("invalid duration {s:?} ({e}); e.g. 500ms, 5s, 2m, 24h"))?,
    };
    if d.is_zero() {
        return Err(format!("duration {s:?} must be positive"));
    }
    Ok(d)
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

#[derive(Parser, Debug)]
#[command(name = "decloud-operator", version, about = "The DeCloud operator")]
pub struct Cli {
    #[command(subcommand)]
    /// What to do.
    pub command: Command,
}

#[derive(Subcommand, Debug)]
pub enum Command {
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
pub enum TokenCommand {
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
pub enum ProviderCommand {
    /// Revoke a provider: its credential stops working and its live session closes at once.
    /// Delete the Provider afterwards to let a machine join under the name again.
    Revoke {
        /// The provider's name.
        name: String,
    },
}

#[derive(clap::Args, Debug)]
pub struct RunArgs {
    /// Address the edge gRPC server listens on (edges dial it).
    #[arg(long, env = "DECLOUD_EDGE_LISTEN", default_value = "0.0.0.0:7443")]
    pub(crate) edge_listen: SocketAddr,
    /// Address of the /metrics, /healthz and /readyz endpoints.
    #[arg(long, env = "DECLOUD_METRICS_LISTEN", default_value = "0.0.0.0:9090")]
    pub(crate) metrics_listen: SocketAddr,
    /// Port of the operator's kubelet API, published as each virtual node's kubelet endpoint.
    #[arg(long, env = "DECLOUD_KUBELET_PORT", default_value_t = 10250)]
    pub(crate) kubelet_port: u16,
    /// Address published on virtual nodes and as pods' hostIP (the operator's own, e.g. its
    /// pod IP); never a provider's address.
    #[arg(long, env = "POD_IP", default_value = "127.0.0.1")]
    pub(crate) node_address: IpAddr,
    /// How often edges send heartbeats, e.g. `1s` or `500ms`.
    #[arg(long, default_value = "1s", value_parser = parse_duration)]
    pub(crate) heartbeat_interval: Duration,
    /// Heartbeats an edge may miss before its Provider is NotReady and its Node unreachable.
    #[arg(long, default_value_t = 3, value_parser = clap::value_parser!(u32).range(1..=100))]
    pub(crate) missed_heartbeats: u32,
    /// Share of the ready edges that must fall silent together (within one heartbeat interval)
    /// for the operator to suspect itself or its network rather than the edges: in (0, 1].
    /// Such mass silence is held as a disruption (no edge marked NotReady, nothing failed over)
    /// for up to --disruption-hold, so that a stalled or cut-off operator does not blame and
    /// fail over thousands of healthy edges at once. Exactly this share is not yet a
    /// disruption; 1 turns the guard off. Like kube-controller-manager's
    /// --unhealthy-zone-threshold.
    #[arg(long, default_value_t = 0.55, value_parser = parse_unhealthy_threshold)]
    pub(crate) unhealthy_threshold: f64,
    /// With fewer ready edges than this, silence is never held as a disruption: in a small
    /// fleet a few edges are a large share, and each loss must be failed over within seconds.
    /// Like kube-controller-manager's --large-cluster-size-threshold.
    #[arg(long, default_value_t = 50)]
    pub(crate) large_cluster_size: usize,
    /// How long a disruption may hold NotReady verdicts; if the silence lasts longer it is an
    /// outage after all, and the silent edges are marked NotReady (and failed over) this much
    /// later than a single edge would be.
    #[arg(long, default_value = "20s", value_parser = parse_duration)]
    pub(crate) disruption_hold: Duration,
    /// Relay pods owned by DaemonSets to edges. Off by default: a DaemonSet that tolerates
    /// every taint would otherwise land on every volunteer's machine; its pods are failed
    /// with reason DaemonSetNotAllowed instead.
    #[arg(long, env = "DECLOUD_ALLOW_DAEMONSETS")]
    pub(crate) allow_daemonsets: bool,
    /// How often node Leases in kube-node-lease are renewed for ready edges.
    #[arg(long, default_value = "10s", value_parser = parse_duration)]
    pub(crate) node_lease_renew: Duration,
    /// How often a ready Provider's status.lastHeartbeatTime (and its Node's) is refreshed when
    /// nothing else changed: the only periodic status write per edge (kubelet's
    /// nodeStatusReportFrequency is 5m too). Transitions are written at once regardless.
    #[arg(long, default_value = "5m", value_parser = parse_duration)]
    pub(crate) status_report_interval: Duration,
    /// Name of the leader-election Lease.
    #[arg(long, default_value = "decloud-operator")]
    pub(crate) lease_name: String,
    /// Namespace of the leader-election Lease.
    #[arg(long, env = "POD_NAMESPACE", default_value = "default")]
    pub(crate) lease_namespace: String,
    /// This replica's identity in the leader election (default: hostname and process id).
    #[arg(long, env = "POD_NAME")]
    pub(crate) identity: Option<String>,
    /// Domain under which Workloads without `expose.host` are published
    /// (`<name>.<namespace>.<base-domain>`).
    #[arg(long, default_value = "decloud.localhost")]
    pub(crate) base_domain: String,
    /// How a Workload's `status.url` is formed from its host; `{host}` is replaced.
    #[arg(long, default_value = "http://{host}")]
    pub(crate) url_template: String,
    /// Address of the public HTTP gateway (Workloads' URLs; served by the leader).
    #[arg(long, env = "DECLOUD_GATEWAY_LISTEN", default_value = "0.0.0.0:8080")]
    pub(crate) gateway_listen: SocketAddr,
    /// Address of the gateway's HTTPS listener (TLS by SNI with the certificates Workloads
    /// name in `spec.expose.tls`); off unless given.
    #[arg(long, env = "DECLOUD_HTTPS_LISTEN")]
    pub(crate) https_listen: Option<SocketAddr>,
    /// The port clients reach the gateway's HTTPS on (redirects and `status.url`; omitted
    /// when 443).
    #[arg(long, default_value_t = 443)]
    pub(crate) https_public_port: u16,
    /// ACME directory URL: certificates for Workloads that name no Secret are ordered from it
    /// (HTTP-01, answered by the gateway) and renewed; off unless given (needs
    /// --https-listen). A Secret a Workload names wins.
    #[arg(long, env = "DECLOUD_ACME_DIRECTORY", requires = "https_listen")]
    pub(crate) acme_directory: Option<String>,
    /// ACME account contact (`mailto:` URI); repeat for more (at most 4).
    #[arg(
        long = "acme-contact",
        env = "DECLOUD_ACME_CONTACT",
        value_delimiter = ','
    )]
    pub(crate) acme_contacts: Vec<String>,
    /// PEM bundle of the roots trusted for the ACME server's HTTPS.
    #[arg(
        long,
        env = "DECLOUD_ACME_CA_BUNDLE",
        default_value = "/etc/ssl/certs/ca-certificates.crt"
    )]
    pub(crate) acme_ca_bundle: std::path::PathBuf,
    /// Order ACME certificates for hosts under the base domain too (default: granted custom
    /// hosts only).
    #[arg(long)]
    pub(crate) acme_base_domain_hosts: bool,
    /// ACME orders one namespace may start in any hour.
    #[arg(long, default_value_t = 10, value_parser = clap::value_parser!(u16).range(1..=1000))]
    pub(crate) acme_orders_per_namespace_hour: u16,
    /// ACME orders running at once.
    #[arg(long, default_value_t = 4, value_parser = clap::value_parser!(u16).range(1..=64))]
    pub(crate) acme_concurrent_orders: u16,
    /// Gateway ports for Workloads exposed with `protocol: TCP`, e.g. `30000-30099` (at most
    /// 4096 ports; bound on the gateway's listen address); off unless given.
    #[arg(long, env = "DECLOUD_TCP_PORT_RANGE")]
    pub(crate) tcp_port_range: Option<decloud_crds::tcp_ports::TcpPortRange>,
    /// TCP ports one namespace may hold at once (beyond: `PortQuotaExceeded`).
    #[arg(long, default_value_t = 4, value_parser = clap::value_parser!(u16).range(1..=4096))]
    pub(crate) tcp_ports_per_namespace: u16,
    /// The host TCP Workloads' `status.url` names (`tcp://<host>:<port>`); default: the base
    /// domain.
    #[arg(long)]
    pub(crate) tcp_public_host: Option<String>,
    /// How long a gateway client may take to send a request head (then 408).
    #[arg(long, default_value = "10s", value_parser = parse_duration)]
    pub(crate) gateway_header_timeout: Duration,
    /// Largest request head the gateway reads (larger: 431).
    #[arg(long, default_value_t = 64 * 1024)]
    pub(crate) gateway_max_header_bytes: usize,
    /// Client connections the gateway serves at once (more: 503 with Retry-After).
    #[arg(long, default_value_t = 10_000)]
    pub(crate) gateway_max_connections: usize,
    /// A gateway connection with no traffic either way for this long is closed.
    #[arg(long, default_value = "300s", value_parser = parse_duration)]
    pub(crate) gateway_idle_timeout: Duration,
    /// PEM file of the CA signing the API server's kubelet client certificate
    /// (`--kubelet-client-certificate`); default: the cluster's client CA from
    /// kube-system/extension-apiserver-authentication, if readable.
    #[arg(long, env = "DECLOUD_KUBELET_CLIENT_CA")]
    pub(crate) kubelet_client_ca: Option<std::path::PathBuf>,
    /// How long the leader Lease is valid without renewal.
    #[arg(long, default_value = "15s", value_parser = parse_duration)]
    pub(crate) lease_duration: Duration,
    /// How often changed Workload usage totals (CPU-seconds, memory-GiB-hours) are written.
    #[arg(long, default_value = "30s", value_parser = parse_duration)]
    pub(crate) usage_interval: Duration,
    /// How long the Secret of an expired join token is kept before the operator deletes it
    /// (meanwhile an edge using it is told it expired rather than that it is unknown).
    /// Tokens from the chart's Secret are never deleted.
    #[arg(long, default_value = "24h", value_parser = parse_duration)]
    pub(crate) expired_token_retention: Duration,
    /// Refused authentications (bad join token or credential) one source address may have
    /// in a burst; beyond it the address is refused up front, without any API call, until it
    /// earns budget back. 0 turns this off (e.g. when every edge reaches the operator through
    /// one source-NATed address).
    #[arg(long, default_value_t = 20)]
    pub(crate) failed_auth_burst: u32,
    /// Refused authentications per minute an address earns back.
    #[arg(long, default_value_t = 10, value_parser = clap::value_parser!(u32).range(1..))]
    pub(crate) failed_auth_per_minute: u32,
    /// Open edge connections one source address may hold; more are dropped at once. Size it
    /// for the largest NAT many edges share; 0 turns the limit off.
    #[arg(long, default_value_t = 256)]
    pub(crate) max_connections_per_address: usize,
    /// Tunnels (gateway connections, service traffic, exec/attach/port-forward sessions) one
    /// edge may carry at once; beyond it a request gets 503 and the edge's session is
    /// untouched.
    #[arg(long, default_value_t = 256, value_parser = clap::value_parser!(u32).range(1..=65_536))]
    pub(crate) max_tunnels_per_edge: u32,
    /// The operator's own namespace: its TLS Secret and the join tokens live there.
    #[arg(long, env = "POD_NAMESPACE", default_value = "default")]
    pub(crate) namespace: String,
    /// Extra DNS name or IP address for the edge serving certificate; repeat for more
    /// (localhost, 127.0.0.1 and --node-address are always included).
    #[arg(long = "tls-san")]
    pub(crate) tls_sans: Vec<String>,
    /// Serve edges over plaintext gRPC instead of TLS. INSECURE: credentials and pod specs
    /// travel in the clear; for local debugging only.
    #[arg(long)]
    pub(crate) insecure_plaintext: bool,
    /// The edge-kubelet binary the one-line install downloads, `[OS/ARCH=]PATH` (default
    /// platform: the operator's own); repeat or comma-separate for more platforms. Served on
    /// the edge listener as /edge-kubelet/OS/ARCH with its SHA-256, beside /install.sh.
    #[arg(
        long = "edge-binary",
        env = "DECLOUD_EDGE_BINARY",
        value_delimiter = ','
    )]
    pub(crate) edge_binaries: Vec<crate::install::EdgeBinarySpec>,
}

#[cfg(test)]
mod tests {
    use clap::CommandFactory as _;

    use super::*;
    use crate::edge::liveness::DisruptionPolicy;

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
    fn durations_parse_like_before() {
        for (s, d) in [
            ("1s", 1.0),
            ("500ms", 0.5),
            ("2m", 120.0),
            ("24h", 86_400.0),
            ("5", 5.0),
            ("0.25", 0.25),
        ] {
            assert_eq!(parse_duration(s), Ok(Duration::from_secs_f64(d)), "{s}");
        }
        for bad in ["0s", "0", "-1", "soon", "", "5 parsecs"] {
            assert!(parse_duration(bad).is_err(), "{bad:?} accepted");
        }
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
