//! `drain`: a planned departure. One provider carries a replica of each of three Workloads
//! (two replicas each, spread over distinct providers); its owner runs `edge-kubelet drain`
//! while a bounded request loop goes through the gateway to all three. Figures: requests that
//! failed during the drain (target 0) and the time until the provider is empty.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context as _, bail, ensure};
use decloud_crds::contracts::node_name;
use decloud_crds::{AvailabilityState, Provider};
use kube::Api;
use kube::api::{Patch, PatchParams};
use serde_json::json;

use crate::{binary, cluster::http_get_reply, eventually};

use super::{
    cluster::BenchCluster,
    harness::{NS, Opts, check_workload_ready, create_workload, workload},
    report::{Row, ScenarioReport, ms},
};

const EDGES: usize = 4;
const WORKLOADS: [&str; 3] = ["drain-a", "drain-b", "drain-c"];
/// Longest the request loop runs, whatever happens.
const LOAD_BOUND: Duration = Duration::from_secs(180);

/// A web server that finishes in-flight requests for 2 s after SIGTERM.
fn graceful_web() -> serde_json::Value {
    json!({
        "name": "web", "image": "decloud-test/busybox:1", "imagePullPolicy": "IfNotPresent",
        "command": ["/bin/sh", "-c", "echo hello > /tmp/index.html; httpd -f -p 8080 -h /tmp & \
            trap 'sleep 2; exit 0' TERM; while true; do sleep 1; done"],
        "ports": [{"name": "http", "containerPort": 8080, "protocol": "TCP"}],
        "resources": {"requests": {"cpu": "10m", "memory": "8Mi"}, "limits": {"cpu": "300m", "memory": "64Mi"}},
        "readinessProbe": {"httpGet": {"path": "/", "port": 8080}, "periodSeconds": 1},
    })
}

async fn cordon(cluster: &BenchCluster, i: usize, on: bool) -> anyhow::Result<()> {
    Api::<Provider>::all(cluster.env.client())
        .patch(
            &cluster.names[i],
            &PatchParams::default(),
            &Patch::Merge(json!({"spec": {"cordoned": on}})),
        )
        .await?;
    Ok(())
}

/// Runs the scenario.
pub async fn run(opts: Opts) -> anyhow::Result<ScenarioReport> {
    let mut report = ScenarioReport::new("drain");
    let cluster = BenchCluster::start("drain", EDGES, &[]).await?;
    let client = cluster.env.client();
    // Place on providers 0 and 1 only, so provider 0 carries a replica of each Workload.
    for i in 2..EDGES {
        cordon(&cluster, i, true).await?;
    }
    tokio::time::sleep(Duration::from_secs(1)).await;
    for name in WORKLOADS {
        create_workload(
            &client,
            &workload(name, 2, "Required", graceful_web(), None)?,
        )
        .await?;
    }
    for name in WORKLOADS {
        eventually(Duration::from_secs(120), || {
            check_workload_ready(&client, name)
        })
        .await?;
    }
    for i in 2..EDGES {
        cordon(&cluster, i, false).await?;
    }
    let edge = cluster.edges[0].as_ref().context("edge 0")?;
    let (name, dir) = (
        edge.name.clone(),
        edge.state_dir.to_string_lossy().into_owned(),
    );
    let node = node_name(&name);

    // The request loop: one request after another to each Workload, bounded in time.
    let port = cluster.gateway_port;
    let stop = Arc::new(AtomicBool::new(false));
    let (ok, failed) = (Arc::new(AtomicU64::new(0)), Arc::new(AtomicU64::new(0)));
    let load = tokio::spawn({
        let (stop, ok, failed) = (stop.clone(), ok.clone(), failed.clone());
        async move {
            let started = Instant::now();
            let mut failures = Vec::new();
            while !stop.load(Ordering::Relaxed) && started.elapsed() < LOAD_BOUND {
                for wl in WORKLOADS {
                    let host = format!("{wl}.{NS}.decloud.localhost");
                    match http_get_reply(port, &host, "/", Duration::from_secs(5)).await {
                        Ok(r) if r.code == 200 => {
                            ok.fetch_add(1, Ordering::Relaxed);
                        }
                        Ok(r) => {
                            failed.fetch_add(1, Ordering::Relaxed);
                            failures.push(format!("{wl}: {}", r.code));
                        }
                        Err(e) => {
                            failed.fetch_add(1, Ordering::Relaxed);
                            failures.push(format!("{wl}: {e:#}"));
                        }
                    }
                }
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
            failures
        }
    });
    tokio::time::sleep(Duration::from_secs(3)).await;
    let before = (ok.load(Ordering::Relaxed), failed.load(Ordering::Relaxed));
    let started = Instant::now();
    let out = std::process::Command::new(binary("edge-kubelet")?)
        .args([
            "drain",
            "--name",
            &name,
            "--state-dir",
            &dir,
            "--timeout",
            "150s",
        ])
        .output()?;
    let empty_after = started.elapsed();
    if !out.status.success() {
        stop.store(true, Ordering::Relaxed);
        bail!(
            "edge-kubelet drain failed: {}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
    }
    let after = (ok.load(Ordering::Relaxed), failed.load(Ordering::Relaxed));
    tokio::time::sleep(Duration::from_secs(3)).await;
    stop.store(true, Ordering::Relaxed);
    let failures = load.await?;
    let during_ok = after.0 - before.0;
    let during_failed = after.1 - before.1;
    // The provider reports Drained, and nothing is bound to its node.
    let p = Api::<Provider>::all(client.clone()).get(&name).await?;
    let state = p.status.and_then(|s| s.availability).map(|a| a.state);
    ensure!(
        state == Some(AvailabilityState::Drained),
        "{name} is {state:?}, not Drained"
    );
    for wl in WORKLOADS {
        eventually(Duration::from_secs(60), || {
            check_workload_ready(&client, wl)
        })
        .await?;
    }
    println!(
        "drain of {node}: empty after {:.1}s; {during_ok} requests answered and {during_failed} failed during the drain",
        empty_after.as_secs_f64()
    );
    for f in failures.iter().take(5) {
        println!("  failure: {f}");
    }
    report.row(Row::target(
        "failed requests through the gateway during the drain",
        format!("{during_failed} of {}", during_ok + during_failed),
        "0",
        during_failed == 0,
    ));
    report.row(
        Row::info(
            "time until the provider is empty (3 replicas moved make-before-break)",
            ms(empty_after.as_secs_f64() * 1000.0),
        )
        .anchor("kubectl drain: evicts first, so a 1-replica Deployment is down until its new pod is Ready"),
    );
    report.set("failed_during_drain", json!(during_failed));
    report.set("answered_during_drain", json!(during_ok));
    report.set("empty_after_ms", json!(empty_after.as_millis() as u64));
    report.set("quick", json!(opts.quick));
    Ok(report)
}
