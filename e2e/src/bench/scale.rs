//! `scale`: one operator carrying thousands of SIMULATED edges (hosted in this process):
//! time to connect them all, time until their pods run, and at steady state the operator's
//! CPU and memory, the API server's write rate at two heartbeat rates, and the bytes per edge.

use std::{
    collections::BTreeMap,
    time::{Duration, Instant},
};

use anyhow::{Context as _, ensure};
use decloud_crds::contracts::WORKLOAD_LABEL;
use decloud_crds::{Provider, ProviderPhase, Workload};
use kube::{Api, api::ListParams};
use serde_json::{Value, json};

use crate::{TestEnv, cluster::OperatorProcess, eventually};

use super::{
    harness::{NS, Opts, PodTimeline, create_workload, sleeper, workload},
    procfs::ProcWindow,
    report::{Row, ScenarioReport, ms},
    sim_edges::SimEdges,
};

/// Verbs of `apiserver_request_total` that write.
const WRITE_VERBS: [&str; 5] = ["POST", "PUT", "PATCH", "DELETE", "APPLY"];
const MAX_REPLICAS: usize = 1000;

/// Runs the scenario for each edge count.
pub async fn run(opts: Opts) -> anyhow::Result<ScenarioReport> {
    let mut report = ScenarioReport::new("scale");
    let plan: &[(usize, usize)] = if !opts.scale_sizes.is_empty() {
        &opts.scale_sizes
    } else if opts.quick {
        &[(200, 2)]
    } else {
        &[(1000, 2), (5000, 1)]
    };
    let window = Duration::from_secs(if opts.quick { 15 } else { 30 });
    let mut raw = Vec::new();
    for &(edges, pods_per_edge) in plan {
        // One size failing must not throw away the figures of the others.
        let lease = opts.node_lease_renew.as_deref();
        let second = opts.second_heartbeat.as_deref().unwrap_or("500ms");
        match one_size(edges, pods_per_edge, window, lease, second, &mut report).await {
            Ok(r) => raw.push(r),
            Err(e) => {
                println!("scale {edges}: FAILED: {e:#}");
                report.row(Row::info(
                    format!("{edges} edges"),
                    format!("FAILED: {e:#}"),
                ));
                raw.push(json!({"edges": edges, "error": format!("{e:#}")}));
            }
        }
    }
    report.set("runs", json!(raw));
    report.note(format!(
        "SIMULATED edges (edge-kubelet's real session and pod lifecycle with the in-memory runtime, every edge its own \
         gRPC connection) hosted in the bench process next to the operator, etcd and kube-apiserver on the same 2 cores; \
         pods are Workloads of ≤ {MAX_REPLICAS} replicas (spread Required); write rates from apiserver_request_total \
         (verbs {}) over a {}s window after a settle; bytes per edge = the operator's byte counters on its edge connections \
         (decloud_operator_edge_{{received,sent}}_bytes_total: TLS records, no TCP/IP headers) / edges",
        WRITE_VERBS.join("/"),
        window.as_secs()
    ));
    Ok(report)
}

async fn one_size(
    edges: usize,
    pods_per_edge: usize,
    window: Duration,
    node_lease_renew: Option<&str>,
    second_heartbeat: &str,
    report: &mut ScenarioReport,
) -> anyhow::Result<Value> {
    let env = TestEnv::start().await?;
    let client = env.client();
    let hb_args = |hb: &str| {
        let mut v = vec!["--heartbeat-interval".to_string(), hb.to_string()];
        if let Some(renew) = node_lease_renew {
            v.extend(["--node-lease-renew".to_string(), renew.to_string()]);
        }
        v
    };
    let args = hb_args("1s");
    let mut operator =
        OperatorProcess::start(&env, &args.iter().map(String::as_str).collect::<Vec<_>>()).await?;
    let names: Vec<String> = (0..edges).map(|i| format!("sim-{i:05}")).collect();
    let state = env.dir().join("sim");
    std::fs::create_dir_all(&state)?;

    let started = Instant::now();
    let sims = SimEdges::start(&operator.edge_args(), &names, &state)?;
    let connected = wait_connected(&operator, edges, Duration::from_secs(600)).await?;
    let all_ready = eventually(Duration::from_secs(600), || async {
        let n = ready_providers(&client).await?;
        ensure!(n == edges, "{n}/{edges} providers Ready");
        Ok(started.elapsed())
    })
    .await?;
    println!("scale {edges}: all connected after {connected:?}, all Ready after {all_ready:?}");

    // Pods: Workloads adding up to edges × pods_per_edge. With spread Required a Workload puts
    // at most one replica on a provider, so none has more replicas than there are edges.
    let total = edges * pods_per_edge;
    let per_workload = edges.min(MAX_REPLICAS);
    let wls: Vec<(String, usize)> = (0..total.div_ceil(per_workload))
        .map(|i| {
            (
                format!("scale-{i}"),
                (total - i * per_workload).min(per_workload),
            )
        })
        .collect();
    // Ready pods counted from a pod watch: the ground truth, independent of Workload status.
    let timeline = PodTimeline::start(&client, WORKLOAD_LABEL).await?;
    let applied = Instant::now();
    for (name, n) in &wls {
        create_workload(
            &client,
            &workload(name, *n as i32, "Required", sleeper(), None)?,
        )
        .await?;
    }
    // Generous: on this machine the API server is the limit (about 6 pods/s at 5,000 edges).
    let pods_timeout = Duration::from_secs(900.max(total as u64 / 3));
    let pods_running = eventually(pods_timeout, || async {
        let ready = timeline
            .snapshot()
            .values()
            .filter(|t| t.ready.is_some() && !t.deleted)
            .count();
        ensure!(ready >= total, "{ready}/{total} pods Ready");
        Ok(applied.elapsed())
    })
    .await?;
    drop(timeline);
    println!("scale {edges}: {total} pods Ready after {pods_running:?}");
    // Workload status lagging behind its pods is a finding of its own, not a stop.
    let status_ready = status_ready_replicas(&client).await?;
    let status_caught_up = eventually(Duration::from_secs(300), || async {
        let n = status_ready_replicas(&client).await?;
        ensure!(n >= total, "Workload status: {n}/{total} ready");
        Ok(applied.elapsed())
    })
    .await
    .ok();
    println!("scale {edges}: Workload status all ready after {status_caught_up:?}");

    let settle = Duration::from_secs(15);
    tokio::time::sleep(settle).await;
    let steady_1s = steady_state(&env, &operator, edges, window).await?;
    steady_1s.print(edges, "1s");

    // Second heartbeat rate: restart the operator with it; edges reconnect.
    operator.child.stop(Duration::from_secs(5));
    let restarted = Instant::now();
    let args = hb_args(second_heartbeat);
    let mut op2 = operator.respawn(&env, &args.iter().map(String::as_str).collect::<Vec<_>>())?;
    op2.wait_ready().await?;
    let reconnected = wait_connected(&op2, edges, Duration::from_secs(600)).await?;
    let reconnect = restarted.elapsed();
    println!(
        "scale {edges}: operator restart, all reconnected after {reconnect:?} ({reconnected:?} after ready)"
    );
    // Reconnecting edges re-report their pods and turn Ready again (Events, pod and Provider
    // status): let that pass, so the window sees the steady state only.
    tokio::time::sleep(settle * 4).await;
    let steady_half = steady_state(&env, &op2, edges, window).await?;
    steady_half.print(edges, second_heartbeat);
    // A listing of thousands of Providers may fail on an overloaded API server: a figure, not a stop.
    let still_ready = ready_providers(&client).await.ok();
    sims.stop().await;
    drop(op2);

    let tag = match node_lease_renew {
        Some(renew) => format!("{edges} edges (node Leases every {renew})"),
        None => format!("{edges} edges"),
    };
    report.row(Row::info(
        format!("{tag}: all sessions connected / all Providers Ready"),
        format!(
            "{} / {}",
            ms(connected.as_secs_f64() * 1e3),
            ms(all_ready.as_secs_f64() * 1e3)
        ),
    ));
    report.row(Row::info(
        format!("{tag}: {total} pods ({pods_per_edge}/edge) applied → all Ready"),
        ms(pods_running.as_secs_f64() * 1e3),
    ));
    report.row(Row::info(
        format!("{tag}: Workload status readyReplicas when all pods were Ready"),
        format!("{status_ready}/{total}"),
    ));
    report.row(Row::info(
        format!("{tag}: applied → Workload status shows all {total} ready"),
        status_caught_up.map_or_else(
            || "not within 300 s".to_string(),
            |d| ms(d.as_secs_f64() * 1e3),
        ),
    ));
    for (hb, s) in [("1s", &steady_1s), (second_heartbeat, &steady_half)] {
        report.row(Row::info(
            format!("{tag}, heartbeat {hb}: API writes/s at steady state"),
            format!("{:.1} ({})", s.writes_per_s, s.top_writes()),
        ));
        report.row(Row::info(
            format!("{tag}, heartbeat {hb}: operator CPU / RSS"),
            format!(
                "{:.1} % of a core / {:.0} MiB",
                s.operator.cpu_pct, s.operator.rss_max_mib
            ),
        ));
        report.row(
            Row::info(
                format!("{tag}, heartbeat {hb}: edge ⇄ operator traffic per edge"),
                format!("{:.3} kbit/s", s.kbit_per_edge),
            )
            .anchor("KubeEdge ~0.25 kbit/s per edge"),
        );
    }
    report.row(Row::info(
        format!("{tag}: operator restart → all edges reconnected"),
        ms(reconnect.as_secs_f64() * 1e3),
    ));
    Ok(json!({
        "edges": edges, "pods": total, "pods_per_edge": pods_per_edge, "node_lease_renew": node_lease_renew.unwrap_or("10s (default)"),
        "connected_ms": connected.as_millis() as u64, "providers_ready_ms": all_ready.as_millis() as u64,
        "pods_ready_ms": pods_running.as_millis() as u64, "reconnect_after_restart_ms": reconnect.as_millis() as u64,
        "providers_ready_after_restart": still_ready, "workload_status_ready_when_pods_ready": status_ready,
        "workload_status_all_ready_ms": status_caught_up.map(|d| d.as_millis() as u64),
        "steady_heartbeat_1s": steady_1s.to_json(), "second_heartbeat": second_heartbeat, "steady_second_heartbeat": steady_half.to_json(),
    }))
}

async fn wait_connected(
    op: &OperatorProcess,
    edges: usize,
    timeout: Duration,
) -> anyhow::Result<Duration> {
    let start = Instant::now();
    eventually(timeout, || async {
        let n = op
            .metric("decloud_operator_connected_edges", "")
            .await?
            .unwrap_or(0.0);
        ensure!(n as usize == edges, "{n}/{edges} connected");
        Ok(start.elapsed())
    })
    .await
}

/// Sum of `status.readyReplicas` over the bench's Workloads.
async fn status_ready_replicas(client: &kube::Client) -> anyhow::Result<usize> {
    Ok(Api::<Workload>::namespaced(client.clone(), NS)
        .list(&ListParams::default())
        .await?
        .items
        .iter()
        .map(|w| w.status.as_ref().map_or(0, |s| s.ready_replicas as usize))
        .sum())
}

async fn ready_providers(client: &kube::Client) -> anyhow::Result<usize> {
    let list = Api::<Provider>::all(client.clone())
        .list(&ListParams::default())
        .await?;
    Ok(list
        .items
        .iter()
        .filter(|p| {
            p.status
                .as_ref()
                .is_some_and(|s| s.phase == ProviderPhase::Ready)
        })
        .count())
}

struct Steady {
    writes_per_s: f64,
    by_resource: BTreeMap<String, f64>,
    operator: ProcWindow,
    kbit_per_edge: f64,
}

impl Steady {
    fn print(&self, edges: usize, heartbeat: &str) {
        println!(
            "scale {edges}, heartbeat {heartbeat}: {:.1} API writes/s ({}), operator {:.1} % CPU / \
             {:.0} MiB, {:.3} kbit/s per edge",
            self.writes_per_s,
            self.top_writes(),
            self.operator.cpu_pct,
            self.operator.rss_max_mib,
            self.kbit_per_edge
        );
    }

    fn top_writes(&self) -> String {
        let mut v: Vec<(&String, &f64)> = self
            .by_resource
            .iter()
            .filter(|(_, r)| **r >= 0.05)
            .collect();
        v.sort_by(|a, b| b.1.total_cmp(a.1));
        v.iter()
            .take(4)
            .map(|(k, r)| format!("{k} {r:.1}"))
            .collect::<Vec<_>>()
            .join(", ")
    }

    fn to_json(&self) -> Value {
        json!({"writes_per_s": self.writes_per_s, "writes_per_s_by_resource": self.by_resource,
               "operator_cpu_pct": self.operator.cpu_pct, "operator_rss_mib": self.operator.rss_max_mib,
               "kbit_s_per_edge": self.kbit_per_edge})
    }
}

async fn steady_state(
    env: &TestEnv,
    op: &OperatorProcess,
    edges: usize,
    window: Duration,
) -> anyhow::Result<Steady> {
    let before = write_counts(env)?;
    let bytes0 = edge_bytes(op).await?;
    let operator = ProcWindow::measure(op.child.pid(), window).await?;
    let bytes1 = edge_bytes(op).await?;
    let after = write_counts(env)?;
    let secs = operator.elapsed.as_secs_f64();
    let mut by_resource = BTreeMap::new();
    let mut total = 0.0;
    for (k, v) in &after {
        let d = v - before.get(k).copied().unwrap_or(0.0);
        if d > 0.0 {
            *by_resource.entry(k.clone()).or_insert(0.0) += d / secs;
            total += d;
        }
    }
    Ok(Steady {
        writes_per_s: total / secs,
        by_resource,
        operator,
        kbit_per_edge: (bytes1 - bytes0) * 8.0 / 1000.0 / secs / edges as f64,
    })
}

/// Bytes on all edge connections so far, both ways, as the operator counts them (TLS records,
/// without TCP/IP headers).
async fn edge_bytes(op: &OperatorProcess) -> anyhow::Result<f64> {
    let mut sum = 0.0;
    for name in [
        "decloud_operator_edge_received_bytes_total",
        "decloud_operator_edge_sent_bytes_total",
    ] {
        sum += op
            .metric(name, "")
            .await?
            .with_context(|| format!("the operator exports no {name}"))?;
    }
    Ok(sum)
}

/// Write requests served so far, by `VERB resource[/subresource]`.
fn write_counts(env: &TestEnv) -> anyhow::Result<BTreeMap<String, f64>> {
    let text = env.kubectl(&["get", "--raw", "/metrics"])?;
    let mut out = BTreeMap::new();
    for line in text
        .lines()
        .filter(|l| l.starts_with("apiserver_request_total{"))
    {
        let label = |k: &str| {
            let pat = format!("{k}=\"");
            line.find(&pat).map(|i| {
                let rest = &line[i + pat.len()..];
                rest[..rest.find('"').unwrap_or(0)].to_string()
            })
        };
        let verb = label("verb").unwrap_or_default();
        if !WRITE_VERBS.contains(&verb.as_str()) {
            continue;
        }
        let mut res = label("resource").unwrap_or_default();
        if let Some(sub) = label("subresource").filter(|s| !s.is_empty()) {
            res = format!("{res}/{sub}");
        }
        let v: f64 = line
            .rsplit(' ')
            .next()
            .and_then(|v| v.parse().ok())
            .unwrap_or(0.0);
        *out.entry(format!("{verb} {res}")).or_insert(0.0) += v;
    }
    Ok(out)
}
