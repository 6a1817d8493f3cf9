//! `services`: a container reaching another Workload by its service address through two edges
//! (container on edge A → edge A → operator → edge B → container), against two containers on
//! one plain Docker bridge talking directly: latency added p50/p99, requests/s, bulk both ways.
//!
//! The load generator must speak from inside a container's network namespace (the service
//! redirect applies to containers' traffic only): the bench re-runs itself under `nsenter -n`
//! of the client container with [`CLIENT_ENV`] set, and reads the figures it prints.

use std::{net::SocketAddr, process::Command, time::Duration};

use anyhow::{Context as _, bail};
use decloud_crds::contracts::WORKLOAD_LABEL;
use decloud_crds::services::service_ip;
use k8s_openapi::api::core::v1::Pod;
use kube::{Api, api::ListParams};
use serde_json::{Value, json};

use crate::cluster::{ContainerSweeper, EdgeProcess, busybox_image, containers_of_pod, docker};
use crate::engine::DockerEngine;
use crate::eventually;

use super::{
    cluster::BenchCluster,
    harness::{NS, Opts, check_workload_ready, create_workload, sleeper, web_server, workload},
    loadgen::Target,
    report::{Row, ScenarioReport},
};

/// Set (to a JSON [`ClientPlan`]) when the bench runs as the load generator inside a netns.
pub const CLIENT_ENV: &str = "DECLOUD_BENCH_NETNS_CLIENT";

const SERVER: &str = "svc-server";
const CLIENT: &str = "svc-client";

/// What the in-namespace load generator measures.
fn plan(addr: SocketAddr, quick: bool, mib: u32) -> Value {
    json!({"addr": addr.to_string(), "quick": quick, "mib": mib})
}

/// The load generator's side: runs in the client container's network namespace, prints JSON.
pub async fn client_main(plan: &str) -> anyhow::Result<()> {
    let p: Value = serde_json::from_str(plan)?;
    let addr: SocketAddr = p["addr"].as_str().context("addr")?.parse()?;
    let quick = p["quick"].as_bool().unwrap_or(true);
    let mib = p["mib"].as_u64().unwrap_or(16) as u32;
    let (requests, window, repeats) = if quick {
        (200, Duration::from_secs(3), 2)
    } else {
        (2000, Duration::from_secs(10), 3)
    };
    let t = Target {
        addr,
        host: addr.to_string(),
    };
    t.latencies("/", 20).await.context("warm-up")?;
    let latency = t.latencies("/", requests).await?;
    let (rps, failed) = t.rate("/", 16, window).await;
    let down = t.download_gbps("/big", repeats).await?;
    let up = t
        .upload_gbps("/cgi-bin/sink", u64::from(mib) << 20, repeats)
        .await?;
    println!(
        "{}",
        json!({"latency": latency.to_json(), "rps": rps, "failed": failed,
               "down_gbps": down, "up_gbps": up})
    );
    Ok(())
}

/// Runs the load generator in the network namespace of the process `pid`.
fn measure_from(pid: &str, target: SocketAddr, quick: bool, mib: u32) -> anyhow::Result<Value> {
    let exe = std::env::current_exe()?;
    let out = Command::new("nsenter")
        .args(["-t", pid, "-n", "--"])
        .arg(exe)
        .arg("services")
        .env(CLIENT_ENV, plan(target, quick, mib).to_string())
        .output()
        .context("running nsenter")?;
    if !out.status.success() {
        bail!(
            "load generator in netns of {pid}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    Ok(serde_json::from_slice(
        out.stdout
            .split(|b| *b == b'\n')
            .rfind(|l| l.starts_with(b"{"))
            .context("no figures")?,
    )?)
}

fn pid_of(engine: &DockerEngine, container: &str) -> anyhow::Result<String> {
    docker(engine, &["inspect", "-f", "{{.State.Pid}}", container])
}

/// A Workload on the providers labelled `role`.
fn placed(name: &str, container: Value, role: &str) -> anyhow::Result<decloud_crds::Workload> {
    let wl = workload(name, 1, "Required", container, None)?;
    let mut v = serde_json::to_value(&wl)?;
    v["spec"]["placement"]["providerSelector"] = json!({"matchLabels": {"bench-role": role}});
    v["spec"].as_object_mut().map(|s| s.remove("expose"));
    Ok(serde_json::from_value(v)?)
}

fn line(f: &Value) -> (f64, f64, f64, f64, f64) {
    (
        f["latency"]["p50_ms"].as_f64().unwrap_or(f64::NAN),
        f["latency"]["p99_ms"].as_f64().unwrap_or(f64::NAN),
        f["rps"].as_f64().unwrap_or(0.0),
        f["down_gbps"].as_f64().unwrap_or(0.0),
        f["up_gbps"].as_f64().unwrap_or(0.0),
    )
}

/// Runs the scenario.
pub async fn run(opts: Opts) -> anyhow::Result<ScenarioReport> {
    let mut report = ScenarioReport::new("services");
    let mib = opts.tunnel_mib.unwrap_or(if opts.quick { 16 } else { 64 });
    let mut cluster = BenchCluster::start("svcb", 0, &[]).await?;
    let run = std::process::id();
    let net = |i: usize| format!("svcb-{run}-{i}-net");
    for (i, role) in ["client", "server"].iter().enumerate() {
        let name = format!("svcb-{run}-{i}");
        let mut args = cluster.operator.edge_args();
        args.extend(["--docker-network".to_string(), net(i)]);
        let label = format!("bench-role={role}");
        cluster.edges.push(Some(EdgeProcess::start_with(
            &cluster.env,
            &name,
            &[&label],
            &args,
        )?));
        cluster.names.push(name);
        cluster
            .wait_provider_ready(i, Duration::from_secs(60))
            .await?;
    }
    let direct_net = format!("svcb-{run}-direct");
    // The direct pair runs on the client edge's own engine, beside its pods.
    let engine = cluster.env.engine(&cluster.names[0])?;
    let result = measure_both(&cluster, &engine, &direct_net, opts.quick, mib, &mut report).await;
    for c in [format!("svcb-{run}-srv"), format!("svcb-{run}-cli")] {
        let _ = docker(&engine, &["rm", "-f", &c]);
    }
    let _ = docker(&engine, &["network", "rm", &direct_net]);
    // This scenario's edges joined after the cluster's sweeper was made: sweep them here.
    let nodes: Vec<String> = cluster
        .names
        .iter()
        .map(|n| decloud_crds::contracts::node_name(n))
        .collect();
    ContainerSweeper::new(&cluster.env, &nodes).sweep();
    for i in 0..2 {
        if let Some(e) = cluster.edges[i].take() {
            drop(e);
        }
        if let Ok(engine) = cluster.env.engine(&cluster.names[i]) {
            let _ = docker(&engine, &["network", "rm", &net(i)]);
        }
    }
    result?;
    report.note(format!(
        "two real Docker edges on networks of their own; the client is a container on edge A, the load generator \
         running in its network namespace; every request a new connection (busybox httpd has no keep-alive), so \
         through the service path each request is also a ServiceOpen tunnel from A plus an OpenTunnel to B; \
         direct: the same two images on one plain Docker bridge (no edge, no egress policy); bulk: best of \
         {} transfers of {mib} MiB",
        if opts.quick { 2 } else { 3 }
    ));
    Ok(report)
}

async fn measure_both(
    cluster: &BenchCluster,
    engine: &DockerEngine,
    direct_net: &str,
    quick: bool,
    mib: u32,
    report: &mut ScenarioReport,
) -> anyhow::Result<()> {
    let run = std::process::id();
    // Direct: two containers on one bridge.
    docker(engine, &["network", "create", direct_net])?;
    let image = busybox_image()?;
    let script = web_server(mib, 2)["command"][2]
        .as_str()
        .context("server script")?
        .to_string();
    let srv = format!("svcb-{run}-srv");
    let cli = format!("svcb-{run}-cli");
    docker(
        engine,
        &[
            "run",
            "-d",
            "--name",
            &srv,
            "--network",
            direct_net,
            &image,
            "sh",
            "-c",
            &script,
        ],
    )?;
    docker(
        engine,
        &[
            "run",
            "-d",
            "--name",
            &cli,
            "--network",
            direct_net,
            &image,
            "sleep",
            "100000",
        ],
    )?;
    let srv_ip = docker(
        engine,
        &[
            "inspect",
            "-f",
            "{{range .NetworkSettings.Networks}}{{.IPAddress}}{{end}}",
            &srv,
        ],
    )?;
    tokio::time::sleep(Duration::from_secs(2)).await;
    let d = measure_from(
        &pid_of(engine, &cli)?,
        SocketAddr::new(srv_ip.trim().parse()?, 8080),
        quick,
        mib,
    )?;

    // Through two edges.
    let client = cluster.env.client();
    create_workload(&client, &placed(SERVER, web_server(mib, 2), "server")?).await?;
    create_workload(&client, &placed(CLIENT, sleeper(), "client")?).await?;
    for wl in [SERVER, CLIENT] {
        eventually(Duration::from_secs(90), || {
            check_workload_ready(&client, wl)
        })
        .await?;
    }
    let pods = Api::<Pod>::namespaced(client.clone(), NS)
        .list(&ListParams::default().labels(&format!("{WORKLOAD_LABEL}={CLIENT}")))
        .await?;
    let uid = pods.items[0].metadata.uid.clone().context("client uid")?;
    let container = containers_of_pod(engine, &uid)?
        .into_iter()
        .next()
        .context("client container")?;
    let target = SocketAddr::new(service_ip(NS, SERVER).into(), 8080);
    let pid = pid_of(engine, &container)?;
    let s = measure_from(&pid, target, quick, mib)?;

    let (d50, d99, drps, ddown, dup) = line(&d);
    let (s50, s99, srps, sdown, sup) = line(&s);
    report.row(Row::info(
        "direct (one bridge): latency p50 / p99, 1 conn per request",
        format!("{d50:.2} / {d99:.2} ms"),
    ));
    report.row(Row::info(
        "direct: requests/s (16 concurrent)",
        format!("{drps:.0}"),
    ));
    report.row(Row::info(
        "direct: download / upload",
        format!("{ddown:.2} / {dup:.2} Gbit/s"),
    ));
    report.row(Row::info(
        "service via two edges: latency p50 / p99 (added)",
        format!(
            "{s50:.2} / {s99:.2} ms (+{:.2} / +{:.2} ms)",
            s50 - d50,
            s99 - d99
        ),
    ));
    report.row(Row::info(
        "service: requests/s (16 concurrent)",
        format!(
            "{srps:.0} ({:.0} % of direct)",
            srps / drps.max(1e-9) * 100.0
        ),
    ));
    report.row(Row::info(
        "service: download / upload",
        format!(
            "{sdown:.2} / {sup:.2} Gbit/s ({:.0} % / {:.0} % of direct)",
            sdown / ddown.max(1e-9) * 100.0,
            sup / dup.max(1e-9) * 100.0
        ),
    ));
    report.set("direct", d);
    report.set("service", s);
    Ok(())
}
