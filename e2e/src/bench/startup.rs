//! `startup`: a Workload is applied; how long until each replica is Ready.
//!
//! Per pod: watch-observed creation → watch-observed Ready (the Kubernetes pod-startup SLI,
//! image already present). Also the whole Workload: apply → all N Ready.

use std::time::{Duration, Instant};

use decloud_crds::contracts::WORKLOAD_LABEL;
use serde_json::json;

use super::{
    cluster::BenchCluster,
    harness::{Opts, PodTimeline, create_workload, delete_workload, sleeper, workload},
    report::{Row, ScenarioReport, ms},
    stats::Summary,
};

const EDGES: usize = 5;
const TARGET_P99_MS: f64 = 1500.0;

/// Runs the scenario.
pub async fn run(opts: Opts) -> anyhow::Result<ScenarioReport> {
    let mut report = ScenarioReport::new("startup");
    let cluster = BenchCluster::start("startup", EDGES, &[]).await?;
    let client = cluster.env.client();
    let sizes: &[i32] = if opts.quick { &[1, 10] } else { &[1, 10, 50] };
    let rounds = if opts.quick { 1 } else { 3 };
    let mut raw = Vec::new();
    for &n in sizes {
        let mut per_pod = Vec::new();
        let mut whole = Vec::new();
        for round in 0..rounds {
            let name = format!("startup-{n}-{round}");
            let timeline = PodTimeline::start(&client, &format!("{WORKLOAD_LABEL}={name}")).await?;
            let applied = Instant::now();
            create_workload(&client, &workload(&name, n, "Preferred", sleeper(), None)?).await?;
            let deadline = applied + Duration::from_secs(120);
            let times = loop {
                let snap = timeline.snapshot();
                let ready = snap.values().filter(|t| t.ready.is_some()).count();
                if ready >= n as usize {
                    break snap;
                }
                anyhow::ensure!(
                    Instant::now() < deadline,
                    "{name}: {ready}/{n} ready after 120 s"
                );
                tokio::time::sleep(Duration::from_millis(20)).await;
            };
            let mut last = applied;
            for t in times.values() {
                if let (Some(seen), Some(ready)) = (t.seen, t.ready) {
                    per_pod.push(ready.duration_since(seen));
                    last = last.max(ready);
                }
            }
            whole.push(last.duration_since(applied));
            drop(timeline);
            delete_workload(&client, &name, Duration::from_secs(120)).await?;
        }
        let s = Summary::of(&per_pod);
        let w = Summary::of(&whole);
        report.row(
            Row::target(
                format!("N={n}: pod created → Ready, p50 / p99"),
                format!("{} / {}", ms(s.p50), ms(s.p99)),
                "p99 ≤ 1.5 s",
                s.p99 <= TARGET_P99_MS,
            )
            .anchor("k8s SLO p99 ≤ 5 s; KubeEdge 100k nodes p99 4.1 s"),
        );
        report.row(Row::info(
            format!("N={n}: Workload applied → all Ready (median of {rounds})"),
            ms(w.p50),
        ));
        raw.push(json!({"replicas": n, "rounds": rounds, "pod_startup": s.to_json(), "workload_all_ready": w.to_json()}));
    }
    report.set("sizes", json!(raw));
    report.note(format!(
        "{EDGES} real edge-kubelets, each on its own Docker engine, spread Preferred, busybox image \
         present; {rounds} round(s) per size, each Workload deleted before the next"
    ));
    report.note("times are observed by a pod watch in the bench (creation event → first event with Ready=True)");
    Ok(report)
}
