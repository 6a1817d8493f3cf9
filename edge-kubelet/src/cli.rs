//! Command line of the `edge-kubelet` binary.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use clap::{Parser, Subcommand, ValueEnum};

/// DeCloud edge-kubelet: lends this machine's Docker engine to a DeCloud cluster.
#[derive(Debug, Parser)]
#[command(name = "edge-kubelet", version, about)]
pub struct Cli {
    /// What to do.
    #[command(subcommand)]
    pub command: Command,
}

/// Subcommands.
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Connect to the operator and run the pods it assigns to this machine.
    Run(Box<RunArgs>),
    /// Join a cluster once with a join token; `run` then needs no token.
    Join(JoinArgs),
    /// Show what this machine runs, the caps in force, the connection state and the
    /// resources given so far (read from the running agent's state folder).
    Status(StatusArgs),
    /// Take the machine back: stop the agent the install script started (its systemd unit or
    /// background process), remove the edge's egress rules, its containers, its Docker network
    /// (once no container uses it), its ceiling cgroup, its volumes (after a confirmation or
    /// --yes), what the install script added (binary, unit, settings) and the state folder.
    Uninstall(UninstallArgs),
    /// Stop taking new work; running pods stay (as `kubectl cordon`). Kept across restarts
    /// until `resume`. Talks to the running agent over its control socket.
    Pause(ControlArgs),
    /// Leave without breaking anyone: stop taking work and have the operator move every pod
    /// elsewhere, each replica's replacement Ready before the pod here stops (as `kubectl
    /// drain`); waits until nothing runs here. Kept across restarts until `resume`.
    Drain(DrainArgs),
    /// Take work again (as `kubectl uncordon`), as far as --schedule and --when-idle allow.
    Resume(ControlArgs),
    /// Print the URL of the local console (with its access token) of the agent using the
    /// state folder.
    ConsoleUrl(StatusArgs),
}

/// Flags of `edge-kubelet pause|resume`: which running agent.
#[derive(Debug, Clone, clap::Args)]
pub struct ControlArgs {
    /// Provider name (locates the default state folder).
    #[arg(long, env = "DECLOUD_PROVIDER_NAME", value_parser = parse_name)]
    pub name: String,

    /// The state folder the agent runs with (`run --state-dir`); its control socket is there.
    #[arg(long, env = "DECLOUD_STATE_DIR")]
    pub state_dir: Option<PathBuf>,
}

impl ControlArgs {
    /// `--state-dir`, or the per-user default.
    pub fn state_dir(&self) -> PathBuf {
        default_state_dir(self.state_dir.as_ref(), &self.name)
    }
}

/// Flags of `edge-kubelet drain`.
#[derive(Debug, Clone, clap::Args)]
pub struct DrainArgs {
    /// Which running agent.
    #[command(flatten)]
    pub agent: ControlArgs,

    /// Give up waiting after this long (the drain goes on in the agent), e.g. 10m.
    #[arg(long, default_value = "10m", value_parser = parse_duration)]
    pub timeout: Duration,

    /// Ask for the drain and return at once.
    #[arg(long)]
    pub no_wait: bool,
}

/// Flags of `edge-kubelet uninstall`.
#[derive(Debug, Clone, clap::Args)]
pub struct UninstallArgs {
    /// Provider name (as given to `run`).
    #[arg(long, env = "DECLOUD_PROVIDER_NAME", value_parser = parse_name)]
    pub name: String,

    /// The state folder the agent ran with (`run --state-dir`).
    #[arg(long, env = "DECLOUD_STATE_DIR")]
    pub state_dir: Option<PathBuf>,

    /// The Docker network the agent ran with (`run --docker-network`).
    #[arg(long, env = "DECLOUD_DOCKER_NETWORK", default_value = "decloud")]
    pub docker_network: String,

    /// The Docker engine the agent ran with (`run --docker-host`).
    #[arg(long = "docker-host", env = "DOCKER_HOST", value_parser = parse_docker_host)]
    pub docker_host: Option<String>,

    /// Remove the edge's volumes (tenants' data) without asking.
    #[arg(long)]
    pub yes: bool,
}

impl UninstallArgs {
    /// `--state-dir`, or the per-user default.
    pub fn state_dir(&self) -> PathBuf {
        default_state_dir(self.state_dir.as_ref(), &self.name)
    }

    /// The node name (`edge-<name>`).
    pub fn node_name(&self) -> String {
        decloud_crds::contracts::node_name(&self.name)
    }
}

/// Flags of `edge-kubelet status`.
#[derive(Debug, Clone, clap::Args)]
pub struct StatusArgs {
    /// Provider name (locates the default state folder).
    #[arg(long, env = "DECLOUD_NAME")]
    pub name: String,

    /// The state folder the agent runs with (`run --state-dir`).
    #[arg(long, env = "DECLOUD_STATE_DIR")]
    pub state_dir: Option<PathBuf>,

    /// Print the raw report as JSON.
    #[arg(long)]
    pub json: bool,
}

impl StatusArgs {
    /// `--state-dir`, or the per-user default.
    pub fn state_dir(&self) -> PathBuf {
        default_state_dir(self.state_dir.as_ref(), &self.name)
    }
}

/// Flags of `edge-kubelet join`.
#[derive(Debug, Clone, clap::Args)]
pub struct JoinArgs {
    /// Operator URL, e.g. https://operator.example:7443
    #[arg(long, env = "DECLOUD_OPERATOR")]
    pub operator: String,

    /// Join token from `decloud-operator token create`.
    #[arg(long, env = "DECLOUD_JOIN_TOKEN", hide_env_values = true)]
    pub token: String,

    /// The operator's CA pin, sha256:<hex>, from the join command.
    #[arg(long, env = "DECLOUD_CA_HASH")]
    pub ca_hash: Option<String>,

    /// Provider name; the node appears as edge-<NAME>.
    #[arg(long, env = "DECLOUD_PROVIDER_NAME", value_parser = parse_name)]
    pub name: String,

    /// Owner of this provider (e-mail or user name).
    #[arg(long, env = "DECLOUD_OWNER", default_value = "")]
    pub owner: String,

    /// Label copied onto the node, k=v; repeat for more.
    #[arg(long = "label", value_parser = parse_label)]
    pub labels: Vec<(String, String)>,

    /// Directory for the credential and local state (as for `run`).
    #[arg(long, env = "DECLOUD_STATE_DIR")]
    pub state_dir: Option<PathBuf>,
}

impl JoinArgs {
    /// `--state-dir`, or the per-user default.
    pub fn state_dir(&self) -> PathBuf {
        default_state_dir(self.state_dir.as_ref(), &self.name)
    }
}

/// Which container runtime runs the pods.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum RuntimeKind {
    /// The local Docker engine (DOCKER_HOST or /var/run/docker.sock).
    Docker,
    /// SIMULATED containers in memory: nothing runs. For scale benchmarks only.
    Simulated,
}

/// Flags of `edge-kubelet run`.
#[derive(Debug, Clone, clap::Args)]
pub struct RunArgs {
    /// Operator URL the edge dials, e.g. https://operator.example:7443
    #[arg(long, env = "DECLOUD_OPERATOR")]
    pub operator: String,

    /// Join token, used only if this edge has not joined yet (no credential in --state-dir).
    #[arg(long, env = "DECLOUD_JOIN_TOKEN", hide_env_values = true)]
    pub token: Option<String>,

    /// The operator's CA pin (sha256:<hex>) for joining with --token.
    #[arg(long, env = "DECLOUD_CA_HASH")]
    pub ca_hash: Option<String>,

    /// Images this machine accepts (glob with `*`, or a prefix ending in `/` or `:`), e.g.
    /// `docker.io/library/*` or `ghcr.io/acme/`; repeat or comma-separate. Default: any.
    #[arg(long = "allowed-images", env = "DECLOUD_ALLOWED_IMAGES", value_delimiter = ',', num_args = 1..)]
    pub allowed_images: Vec<String>,

    /// Provider name; the node appears as edge-<NAME>.
    #[arg(long, env = "DECLOUD_PROVIDER_NAME", value_parser = parse_name)]
    pub name: String,

    /// Owner of this provider (e-mail or user name), reported to the operator.
    #[arg(long, env = "DECLOUD_OWNER", default_value = "")]
    pub owner: String,

    /// Label copied onto the node, k=v; repeat for more (e.g. --label topology.kubernetes.io/region=eu-west).
    #[arg(long = "label", value_parser = parse_label)]
    pub labels: Vec<(String, String)>,

    /// CPU offered at most (e.g. 2, 1.5, 500m). Default: every detected CPU.
    #[arg(long, env = "DECLOUD_CPU", value_parser = parse_cpu)]
    pub cpu: Option<i64>,

    /// Memory offered at most (e.g. 4Gi, 512Mi). Default: all detected memory.
    #[arg(long, env = "DECLOUD_MEMORY", value_parser = parse_memory)]
    pub memory: Option<i64>,

    /// Disk offered for pods' writable layers and logs (e.g. 50Gi; at most 1Pi): the node's
    /// `ephemeral-storage`. A pod above its ephemeral-storage limit (or, without one, above
    /// this offer / --max-pods) is evicted, as kubelet does. Default: half the space free on
    /// the engine's data root when the edge starts.
    #[arg(long, env = "DECLOUD_STORAGE", value_parser = parse_storage)]
    pub storage: Option<i64>,

    /// Most pods this machine runs at once: offered as the node's `pods` capacity, and pods
    /// beyond it are refused on arrival (phase Failed, reason OutOfpods), as kubelet does.
    #[arg(long, env = "DECLOUD_MAX_PODS", default_value_t = 20, value_parser = clap::value_parser!(i64).range(1..=10_000))]
    pub max_pods: i64,

    /// Container runtime.
    #[arg(long, env = "DECLOUD_RUNTIME", value_enum, default_value_t = RuntimeKind::Docker)]
    pub runtime: RuntimeKind,

    /// Directory for the local state (the assigned pod set). Default: $XDG_STATE_HOME/decloud-edge/<NAME> or ~/.local/state/decloud-edge/<NAME>.
    #[arg(long, env = "DECLOUD_STATE_DIR")]
    pub state_dir: Option<PathBuf>,

    /// Where pods' configMap and secret volumes are written; must be a tmpfs, so that Secrets
    /// never reach a disk (default: /dev/shm/decloud-edge/<name>). Not on a tmpfs: pods
    /// mounting such volumes fail with CreateContainerConfigError.
    #[arg(long, env = "DECLOUD_CONFIG_DIR")]
    pub config_dir: Option<PathBuf>,

    /// Heartbeat interval (e.g. 1s, 500ms) until the operator's Welcome sets one.
    #[arg(long, env = "DECLOUD_HEARTBEAT_INTERVAL", default_value = "1s", value_parser = parse_duration)]
    pub heartbeat_interval: Duration,

    /// How often the node's statistics (Docker's measurements of its pods) are sent to the
    /// operator, for `kubectl top` and the kubelet API's `/stats/summary` (at least 1s).
    #[arg(long, env = "DECLOUD_STATS_INTERVAL", default_value = "10s", value_parser = parse_stats_interval)]
    pub stats_interval: Duration,

    /// Upper bound of the reconnect back-off (e.g. 5s).
    #[arg(long, env = "DECLOUD_MAX_RECONNECT_BACKOFF", default_value = "5s", value_parser = parse_duration)]
    pub max_reconnect_backoff: Duration,

    /// Docker bridge network the edge creates and puts every pod on.
    #[arg(long, env = "DECLOUD_DOCKER_NETWORK", default_value = "decloud")]
    pub docker_network: String,

    /// The Docker engine that runs the pods, e.g. unix:///run/decloud/docker.sock (a daemon of
    /// its own keeps DeCloud's images and containers apart from yours). Default: DOCKER_HOST,
    /// else /var/run/docker.sock.
    #[arg(long = "docker-host", env = "DOCKER_HOST", value_parser = parse_docker_host)]
    pub docker_host: Option<String>,

    /// Serve /healthz, /readyz and /metrics on this address (e.g. 127.0.0.1:9464). Off by default.
    #[arg(long, env = "DECLOUD_METRICS_LISTEN")]
    pub metrics_listen: Option<SocketAddr>,

    /// Let containers reach this range although it is denied by default (private networks,
    /// the host, link-local, multicast), e.g. a service on your LAN you mean to lend; repeat
    /// or comma-separate. The host's own addresses stay closed.
    #[arg(long = "allow-egress", env = "DECLOUD_ALLOW_EGRESS", value_delimiter = ',', value_parser = parse_cidr)]
    pub allow_egress: Vec<crate::host::Cidr>,

    /// Close this range to containers as well (wins over --allow-egress); repeat or
    /// comma-separate.
    #[arg(long = "deny-egress", env = "DECLOUD_DENY_EGRESS", value_delimiter = ',', value_parser = parse_cidr)]
    pub deny_egress: Vec<crate::host::Cidr>,

    /// Port of the service proxy on the edge's bridge gateway address: containers' connections
    /// to service names (`<name>`, `<name>.<namespace>.svc.decloud`) are redirected there and
    /// carried through the operator. 0 turns service names off. Needs the egress policy.
    #[arg(long, env = "DECLOUD_SERVICE_PROXY_PORT", default_value_t = 15001)]
    pub service_proxy_port: u16,

    /// UNSAFE: run pods without the egress policy, so containers can reach this host, your
    /// home network and the cloud metadata address. Without it the edge refuses to start
    /// when the rules cannot be installed (not root, no iptables).
    #[arg(long, env = "DECLOUD_UNSAFE_NO_EGRESS_POLICY")]
    pub unsafe_no_egress_policy: bool,

    /// A registry pulls may go to although it is an IP address, this machine or a name in a
    /// denied range (a local mirror), HOST or HOST:PORT; repeat or comma-separate.
    #[arg(
        long = "allow-registry",
        env = "DECLOUD_ALLOW_REGISTRY",
        value_delimiter = ','
    )]
    pub allow_registry: Vec<String>,

    /// A local image you lend to tenants (glob with `*`, or a prefix ending in `/` or `:`),
    /// used without pulling; repeat or comma-separate. Default: none; tenants only get images
    /// this edge pulled for them.
    #[arg(
        long = "lend-local-image",
        env = "DECLOUD_LEND_LOCAL_IMAGE",
        value_delimiter = ','
    )]
    pub lend_local_image: Vec<String>,

    /// Lend the machine only within these weekly windows, in --timezone: entries
    /// `DAYS HH:MM-HH:MM` separated by commas, DAYS a day (Mon), a range (Mon-Fri) or Daily;
    /// an end at or before the start runs into the next day. E.g.
    /// "Mon-Fri 19:00-07:00,Sat-Sun 00:00-24:00". Outside the windows the edge drains (pods are
    /// moved elsewhere, make-before-break) and takes no work; --schedule-margin before a window
    /// closes it starts draining.
    #[arg(long, env = "DECLOUD_SCHEDULE")]
    pub schedule: Option<String>,

    /// Time zone of --schedule (IANA name, e.g. Europe/Paris, or UTC). Default: the system's
    /// (TZ, then /etc/localtime).
    #[arg(long, env = "DECLOUD_TIMEZONE", default_value = "")]
    pub timezone: String,

    /// How long before a --schedule window closes the edge starts draining (at most 6h).
    #[arg(long, env = "DECLOUD_SCHEDULE_MARGIN", default_value = "10m", value_parser = parse_margin)]
    pub schedule_margin: Duration,

    /// Lend the machine only while its owner is not using it: the machine's busy CPU share
    /// (/proc/stat, every CPU's time neither idle nor iowait) minus what DeCloud's own
    /// containers used (their ceiling cgroup's CPU time) must stay under --idle-threshold for
    /// --idle-for. One sample (every 5 s) at or over it and the edge drains.
    #[arg(long, env = "DECLOUD_WHEN_IDLE")]
    pub when_idle: bool,

    /// Busy share of all CPUs, percent (0-100), at or above which the owner counts as using the
    /// machine (--when-idle). 0: never idle.
    #[arg(long, env = "DECLOUD_IDLE_THRESHOLD", default_value_t = 25, value_parser = clap::value_parser!(u8).range(0..=100))]
    pub idle_threshold: u8,

    /// How long the machine must stay idle before it is lent again (--when-idle).
    #[arg(long, env = "DECLOUD_IDLE_FOR", default_value = "5m", value_parser = parse_duration)]
    pub idle_for: Duration,

    /// On SIGTERM (system shutdown) drain first, for at most this long, then exit anyway
    /// (0s: exit at once, pods keep running as on SIGINT).
    #[arg(long, env = "DECLOUD_SHUTDOWN_DRAIN_TIMEOUT", default_value = "60s", value_parser = parse_margin)]
    pub shutdown_drain_timeout: Duration,

    /// Serve the volunteer's console (a web page: what runs, the offer, pause/resume/drain)
    /// on this loopback address (port 0: any free port), or `off`. `edge-kubelet console-url`
    /// prints its address with the access token.
    #[arg(long, env = "DECLOUD_CONSOLE_LISTEN", default_value = "127.0.0.1:7171", value_parser = parse_console_listen)]
    pub console_listen: ConsoleListen,

    /// UNSAFE: let --console-listen be a non-loopback address (the console is then reachable
    /// from the network, token-protected but over plain HTTP).
    #[arg(long, env = "DECLOUD_UNSAFE_CONSOLE_ANY_ADDRESS")]
    pub unsafe_console_any_address: bool,
}

/// `--console-listen`: an address, or off.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ConsoleListen {
    /// No console.
    Off,
    /// Serve it here.
    At(SocketAddr),
}

fn parse_console_listen(s: &str) -> Result<ConsoleListen, String> {
    if s == "off" {
        return Ok(ConsoleListen::Off);
    }
    s.parse().map(ConsoleListen::At).map_err(|_| {
        format!("--console-listen {s:?}: expected ADDRESS:PORT (e.g. 127.0.0.1:7171) or off")
    })
}

/// Longest `--docker-host` accepted.
const MAX_DOCKER_HOST: usize = 512;

/// `--docker-host`: `unix://PATH`, `tcp://HOST:PORT` or `http://HOST:PORT`, bounded.
fn parse_docker_host(s: &str) -> std::result::Result<String, String> {
    if s.len() > MAX_DOCKER_HOST {
        return Err(format!("longer than {MAX_DOCKER_HOST} bytes"));
    }
    let rest = ["unix://", "tcp://", "http://"]
        .iter()
        .find_map(|p| s.strip_prefix(p))
        .ok_or_else(|| {
            format!("{s:?}: expected unix://PATH, tcp://HOST:PORT or http://HOST:PORT")
        })?;
    if rest.is_empty() || rest.chars().any(char::is_control) {
        return Err(format!(
            "{s:?}: empty or control characters after the scheme"
        ));
    }
    Ok(s.to_string())
}

impl RunArgs {
    /// `--config-dir`, or `/dev/shm/decloud-edge/<name>`.
    pub fn config_dir(&self) -> PathBuf {
        self.config_dir
            .clone()
            .unwrap_or_else(|| PathBuf::from("/dev/shm/decloud-edge").join(&self.name))
    }

    /// The node name this edge uses in container labels (`edge-<name>`).
    pub fn node_name(&self) -> String {
        decloud_crds::contracts::node_name(&self.name)
    }

    /// The node's labels as a map.
    pub fn label_map(&self) -> HashMap<String, String> {
        self.labels.iter().cloned().collect()
    }

    /// `--state-dir`, or the per-user default.
    pub fn state_dir(&self) -> PathBuf {
        default_state_dir(self.state_dir.as_ref(), &self.name)
    }
}

fn default_state_dir(given: Option<&PathBuf>, name: &str) -> PathBuf {
    if let Some(d) = given {
        return d.clone();
    }
    let base = std::env::var_os("XDG_STATE_HOME")
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".local/state")))
        .unwrap_or_else(|| PathBuf::from("."));
    base.join("decloud-edge").join(name)
}

fn parse_name(s: &str) -> Result<String, String> {
    let ok = !s.is_empty()
        && s.len() <= 58
        && s.chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-')
        && !s.starts_with('-')
        && !s.ends_with('-');
    if ok {
        Ok(s.to_string())
    } else {
        Err("a provider name is 1-58 lowercase letters, digits or '-', not starting or ending with '-'".into())
    }
}

fn parse_label(s: &str) -> Result<(String, String), String> {
    match s.split_once('=') {
        Some((k, v)) if !k.is_empty() => Ok((k.to_string(), v.to_string())),
        _ => Err(format!("label {s:?} is not k=v")),
    }
}

fn parse_cidr(s: &str) -> Result<crate::host::Cidr, String> {
    s.parse()
}

fn parse_cpu(s: &str) -> Result<i64, String> {
    crate::capacity::parse_cpu_millis(s).map_err(|e| e.to_string())
}

fn parse_memory(s: &str) -> Result<i64, String> {
    crate::capacity::parse_memory_bytes(s).map_err(|e| e.to_string())
}

fn parse_storage(s: &str) -> Result<i64, String> {
    crate::capacity::parse_storage_bytes(s).map_err(|e| e.to_string())
}

/// The longest duration flag accepted: a heartbeat or back-off of more than a day is a typo.
const MAX_DURATION: Duration = Duration::from_secs(24 * 3600);

/// Parses a positive duration of at most a day: `1s`, `500ms`, `2m`, `1m30s` (humantime), or a
/// bare number of seconds.
/// A stats interval: a duration of at least the operator's minimum between two reports.
fn parse_stats_interval(s: &str) -> Result<Duration, String> {
    let d = parse_duration(s)?;
    let min = Duration::from_millis(decloud_proto::MIN_STATS_INTERVAL_MILLIS);
    if d < min {
        return Err(format!("stats interval {s:?}: at least {min:?}"));
    }
    Ok(d)
}

/// A duration of at most 6 h; `0s` allowed.
fn parse_margin(s: &str) -> Result<Duration, String> {
    let d = if s.trim() == "0" || s.trim() == "0s" {
        Duration::ZERO
    } else {
        parse_duration(s)?
    };
    if d > Duration::from_secs(6 * 3600) {
        return Err(format!("duration {s:?}: at most 6h"));
    }
    Ok(d)
}

fn parse_duration(s: &str) -> Result<Duration, String> {
    let bad = |why: String| format!("duration {s:?} (expected e.g. 1s, 500ms, 2m): {why}");
    let s = s.trim();
    let d = match s.parse::<f64>() {
        Ok(secs) if secs.is_finite() && secs > 0.0 => Duration::from_secs_f64(secs),
        Ok(_) => return Err(bad("not positive".into())),
        Err(_) => humantime::parse_duration(s).map_err(|e| bad(e.to_string()))?,
    };
    if d.is_zero() {
        return Err(bad("not positive".into()));
    }
    if d > MAX_DURATION {
        return Err(bad("longer than a day".into()));
    }
    Ok(d)
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::CommandFactory;

    #[test]
    fn cli_is_consistent_and_every_flag_has_help() {
        Cli::command().debug_assert();
        let cmd = Cli::command();
        for sub in [
            "run",
            "join",
            "uninstall",
            "status",
            "pause",
            "drain",
            "resume",
            "console-url",
        ] {
            for arg in cmd.find_subcommand(sub).unwrap().get_arguments() {
                if arg.get_id() == "help" || arg.get_id() == "version" {
                    continue;
                }
                assert!(arg.get_help().is_some(), "--{} has no help", arg.get_id());
            }
        }
    }

    #[test]
    fn docker_host_takes_a_socket_or_tcp_url_and_refuses_the_rest() {
        let base = [
            "edge-kubelet",
            "run",
            "--operator",
            "http://o",
            "--name",
            "a",
        ];
        let parse = |host: &str| {
            let mut args = base.to_vec();
            args.extend(["--docker-host", host]);
            Cli::try_parse_from(args).map(|cli| match cli.command {
                Command::Run(a) => a.docker_host,
                _ => panic!("not run"),
            })
        };
        assert_eq!(
            parse("unix:///run/e/docker.sock").unwrap().as_deref(),
            Some("unix:///run/e/docker.sock")
        );
        assert!(parse("tcp://127.0.0.1:2375").is_ok());
        for bad in ["/run/docker.sock", "ssh://x", "unix://", "unix://a\nb"] {
            assert!(parse(bad).is_err(), "{bad:?} accepted");
        }
        assert!(parse(&format!("unix:///{}", "a".repeat(600))).is_err());
    }

    #[test]
    fn parses_a_full_command_line() {
        let cli = Cli::try_parse_from([
            "edge-kubelet",
            "run",
            "--operator",
            "http://127.0.0.1:7443",
            "--name",
            "alice-laptop",
            "--label",
            "topology.kubernetes.io/region=eu-west",
            "--label",
            "gpu=none",
            "--cpu",
            "1.5",
            "--memory",
            "2Gi",
            "--max-pods",
            "7",
            "--runtime",
            "simulated",
            "--state-dir",
            "/tmp/x",
            "--heartbeat-interval",
            "500ms",
            "--allow-egress",
            "192.168.50.0/24,fd00::/8",
            "--deny-egress",
            "203.0.113.0/24",
            "--lend-local-image",
            "decloud-test/*",
            "--allow-registry",
            "mirror.lan:5000",
        ])
        .unwrap();
        let Command::Run(a) = cli.command else {
            panic!("not run")
        };
        assert_eq!(a.node_name(), "edge-alice-laptop");
        assert_eq!(a.cpu, Some(1500));
        assert_eq!(a.memory, Some(2 << 30));
        assert_eq!(a.max_pods, 7);
        assert_eq!(a.runtime, RuntimeKind::Simulated);
        assert_eq!(a.heartbeat_interval, Duration::from_millis(500));
        assert_eq!(a.label_map().get("gpu").map(String::as_str), Some("none"));
        assert_eq!(a.state_dir(), PathBuf::from("/tmp/x"));
        assert_eq!(a.allow_egress.len(), 2);
        assert_eq!(a.deny_egress[0].to_string(), "203.0.113.0/24");
        assert!(!a.unsafe_no_egress_policy);
        assert_eq!(a.lend_local_image, ["decloud-test/*"]);
        assert_eq!(a.allow_registry, ["mirror.lan:5000"]);
    }

    #[test]
    fn rejects_bad_values() {
        for bad in [
            vec!["--name", "Bad_Name"],
            vec!["--name", "ok", "--label", "novalue"],
            vec!["--name", "ok", "--cpu", "lots"],
            vec!["--name", "ok", "--heartbeat-interval", "0s"],
            vec!["--name", "ok", "--max-pods", "0"],
            vec!["--name", "ok", "--max-pods", "-3"],
            vec!["--name", "ok", "--allow-egress", "10.0.0.1/8"],
            vec!["--name", "ok", "--deny-egress", "nonsense"],
            vec!["--name", "ok", "--allow-egress", "10.0.0.0/33"],
        ] {
            let mut args = vec!["edge-kubelet", "run", "--operator", "http://x"];
            args.extend(bad.iter().copied());
            assert!(Cli::try_parse_from(&args).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn durations() {
        assert_eq!(parse_duration("1s").unwrap(), Duration::from_secs(1));
        assert_eq!(parse_duration("250ms").unwrap(), Duration::from_millis(250));
        assert_eq!(parse_duration("2").unwrap(), Duration::from_secs(2));
        assert_eq!(parse_duration("1m").unwrap(), Duration::from_secs(60));
        assert!(parse_duration("1y").is_err());
    }
}
