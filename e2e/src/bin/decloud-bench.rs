//! `decloud-bench`: DeCloud's benchmarks on the real test environment.
//!
//! ```text
//! cargo build --release --bins
//! cargo run -p decloud-e2e --release --bin decloud-bench -- <SCENARIO|all> [--quick] [--json out.json]
//! (`decloud-bench --help` lists the scenarios)
//! ```
//! Each scenario starts its own etcd + kube-apiserver, the release `decloud-operator` and
//! `edge-kubelet` binaries next to this one, and Docker containers it removes afterwards
//! (`quantity` is a micro-benchmark of the quantity parser and needs none of them). It prints a
//! table (figure, target, met, anchors) and optionally writes the figures as JSON.

use std::{path::PathBuf, time::Instant};

use anyhow::Context as _;
use clap::{Parser, ValueEnum};
use decloud_e2e::bench::{self, Opts, ScenarioReport};
use serde_json::json;
use tracing_subscriber::EnvFilter;

/// DeCloud benchmarks (real control plane, real binaries, Docker; bounded in count and time).
#[derive(Parser, Debug)]
#[command(version, about)]
struct Args {
    /// Which scenario to run.
    #[arg(value_enum)]
    scenario: Scenario,
    /// Small counts and short windows (a smoke run, not figures to quote).
    #[arg(long)]
    quick: bool,
    /// Also write the results as JSON to this file.
    #[arg(long)]
    json: Option<PathBuf>,
    /// `scale` only: the sizes to run, as EDGESxPODS_PER_EDGE (default 1000x2 then 5000x1;
    /// with --quick 200x2), e.g. `--scale-sizes 5000x1`.
    #[arg(long, value_delimiter = ',', value_parser = parse_size)]
    scale_sizes: Vec<(usize, usize)>,
    /// `scale` only: the operator's --node-lease-renew (its default, 10s, when not given).
    #[arg(long)]
    node_lease_renew: Option<String>,
    /// `scale` only: the heartbeat interval of the second steady-state window (default 500ms).
    #[arg(long)]
    second_heartbeat: Option<String>,
    /// `tunnel` only: size of each bulk transfer in MiB (default 128; with --quick 16), e.g.
    /// 1024 for transfers long enough to profile.
    #[arg(long, value_parser = clap::value_parser!(u32).range(1..=4096))]
    tunnel_mib: Option<u32>,
}

fn parse_size(s: &str) -> Result<(usize, usize), String> {
    let bad = || format!("{s:?}: expected EDGESxPODS_PER_EDGE, e.g. 1000x2");
    let (e, p) = s.split_once('x').ok_or_else(bad)?;
    let (e, p) = (e.parse().map_err(|_| bad())?, p.parse().map_err(|_| bad())?);
    if e == 0 || p == 0 {
        return Err(bad());
    }
    Ok((e, p))
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
enum Scenario {
    /// Workload applied → N replicas Ready (N = 1, 10, 50).
    Startup,
    /// SIGKILL of an edge → replacement Ready and the gateway answering again.
    Failover,
    /// `edge-kubelet drain` of a provider carrying replicas of 3 Workloads under a request
    /// loop: failed requests and time until the provider is empty.
    Drain,
    /// One operator with 1,000 and 5,000 simulated edges.
    Scale,
    /// Pod created → Running through the test registry, cold (fresh engine) and warm.
    Pull,
    /// HTTP through the gateway tunnel vs direct to the container.
    Tunnel,
    /// A container reaching another Workload by service address through two edges vs two
    /// containers on one bridge.
    Services,
    /// The gateway's HTTPS against its plain HTTP: handshakes/s, requests/s per new
    /// connection and on keep-alive (HTTP/1.1 and HTTP/2).
    Https,
    /// edge-kubelet memory and CPU, idle and with 10 pods.
    Footprint,
    /// The quantity parser on the worst strings the CRD accepts and on attacker strings.
    Quantity,
    /// File I/O on a DeCloud persistent volume vs a plain Docker volume on the same disk.
    Volume,
    /// Every scenario, one after the other.
    All,
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    tracing_subscriber::fmt()
        .with_writer(std::io::stderr)
        .with_env_filter(
            EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| EnvFilter::new("error,kube_client=off")),
        )
        .init();
    // The services scenario's load generator, re-run inside a container's network namespace.
    if let Ok(plan) = std::env::var(bench::services::CLIENT_ENV) {
        return bench::services::client_main(&plan).await;
    }
    let args = Args::parse();
    let opts = Opts {
        quick: args.quick,
        scale_sizes: args.scale_sizes,
        node_lease_renew: args.node_lease_renew,
        second_heartbeat: args.second_heartbeat,
        tunnel_mib: args.tunnel_mib,
    };
    let list = match args.scenario {
        Scenario::All => vec![
            Scenario::Quantity,
            Scenario::Volume,
            Scenario::Footprint,
            Scenario::Startup,
            Scenario::Tunnel,
            Scenario::Services,
            Scenario::Https,
            Scenario::Failover,
            Scenario::Drain,
            Scenario::Scale,
            Scenario::Pull,
        ],
        s => vec![s],
    };
    let mut reports: Vec<ScenarioReport> = Vec::new();
    let mut failed = Vec::new();
    for s in list {
        let started = Instant::now();
        eprintln!(
            "decloud-bench: running {s:?}{}",
            if opts.quick { " (quick)" } else { "" }
        );
        let outcome = match s {
            Scenario::Startup => bench::startup::run(opts.clone()).await,
            Scenario::Failover => bench::failover::run(opts.clone()).await,
            Scenario::Drain => bench::drain::run(opts.clone()).await,
            Scenario::Scale => bench::scale::run(opts.clone()).await,
            Scenario::Pull => bench::pull::run(opts.clone()).await,
            Scenario::Tunnel => bench::tunnel::run(opts.clone()).await,
            Scenario::Services => bench::services::run(opts.clone()).await,
            Scenario::Https => bench::https::run(opts.clone()).await,
            Scenario::Footprint => bench::footprint::run(opts.clone()).await,
            Scenario::Quantity => bench::quantity::run(opts.clone()).await,
            Scenario::Volume => bench::volume::run(opts.clone()).await,
            Scenario::All => unreachable!("expanded above"),
        };
        match outcome {
            Ok(mut r) => {
                r.note(format!(
                    "scenario took {:.0} s",
                    started.elapsed().as_secs_f64()
                ));
                println!("{}", r.render());
                reports.push(r);
            }
            Err(e) => {
                eprintln!("decloud-bench: {s:?} failed: {e:#}");
                failed.push(format!("{s:?}: {e:#}"));
            }
        }
    }
    if let Some(path) = args.json {
        let doc = json!({
            "quick": opts.quick,
            "machine": machine(),
            "scenarios": reports.iter().map(ScenarioReport::to_json).collect::<Vec<_>>(),
            "failed": failed,
        });
        std::fs::write(&path, serde_json::to_string_pretty(&doc)?)
            .with_context(|| format!("writing {}", path.display()))?;
        eprintln!("decloud-bench: wrote {}", path.display());
    }
    anyhow::ensure!(failed.is_empty(), "{} scenario(s) failed", failed.len());
    Ok(())
}

/// CPU model, core count, memory, load and commit, for the record.
fn machine() -> serde_json::Value {
    let cpuinfo = std::fs::read_to_string("/proc/cpuinfo").unwrap_or_default();
    let model = cpuinfo
        .lines()
        .find_map(|l| l.strip_prefix("model name"))
        .map(|s| s.trim_start_matches([' ', '\t', ':']).to_string())
        .unwrap_or_default();
    let cores = std::thread::available_parallelism()
        .map(|n| n.get())
        .unwrap_or(0);
    let mem_kib: u64 = std::fs::read_to_string("/proc/meminfo")
        .unwrap_or_default()
        .lines()
        .find_map(|l| l.strip_prefix("MemTotal:"))
        .and_then(|v| v.split_whitespace().next()?.parse().ok())
        .unwrap_or(0);
    let load = std::fs::read_to_string("/proc/loadavg").unwrap_or_default();
    let commit = std::process::Command::new("git")
        .args(["rev-parse", "--short", "HEAD"])
        .current_dir(decloud_e2e::repo_root())
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string())
        .unwrap_or_default();
    json!({"cpu_model": model, "cores": cores, "mem_gib": mem_kib as f64 / 1048576.0,
           "loadavg_at_end": load.trim(), "commit": commit})
}
