//! `footprint`: resident memory and CPU of one real edge-kubelet (Docker runtime), connected
//! and idle, then running 10 pods.

use std::time::Duration;

use serde_json::json;

use crate::eventually;

use super::{
    cluster::BenchCluster,
    harness::{Opts, check_workload_ready, create_workload, web_server, workload},
    procfs::{ProcSample, ProcWindow},
    report::{Row, ScenarioReport},
};

const TARGET_RSS_MIB: f64 = 20.0;
const TARGET_CPU_PCT: f64 = 1.0;

/// Runs the scenario.
pub async fn run(opts: Opts) -> anyhow::Result<ScenarioReport> {
    let mut report = ScenarioReport::new("footprint");
    let window = Duration::from_secs(if opts.quick { 10 } else { 60 });
    let cluster = BenchCluster::start("footprint", 1, &[]).await?;
    let pid = cluster.edges[0]
        .as_ref()
        .map(|e| e.child.pid())
        .unwrap_or_default();
    tokio::time::sleep(Duration::from_secs(5)).await;
    let idle = ProcWindow::measure(pid, window).await?;
    let client = cluster.env.client();
    create_workload(
        &client,
        &workload("footprint", 10, "Preferred", web_server(1, 10), None)?,
    )
    .await?;
    eventually(Duration::from_secs(120), || {
        check_workload_ready(&client, "footprint")
    })
    .await?;
    tokio::time::sleep(Duration::from_secs(5)).await;
    let busy = ProcWindow::measure(pid, window).await?;
    let peak = ProcSample::read(pid)?.hwm_kib as f64 / 1024.0;
    for (label, w, targeted) in [("idle (0 pods)", &idle, true), ("10 pods", &busy, false)] {
        let rss = format!("{:.1} MiB (max {:.1})", w.rss_mean_mib, w.rss_max_mib);
        let cpu = format!("{:.2} % of a core", w.cpu_pct);
        if targeted {
            report.row(
                Row::target(
                    format!("RSS, {label}"),
                    rss,
                    "≤ 20 MB",
                    w.rss_max_mib <= TARGET_RSS_MIB,
                )
                .anchor("kubelet ~200 MiB at 0 pods; k3s agent 275 MB; edgecore 61–74 MB"),
            );
            report.row(Row::target(
                format!("CPU, {label}"),
                cpu,
                "< 1 % of a core",
                w.cpu_pct < TARGET_CPU_PCT,
            ));
        } else {
            report.row(Row::info(format!("RSS, {label}"), rss));
            report.row(Row::info(format!("CPU, {label}"), cpu));
        }
    }
    report.row(Row::info(
        "peak RSS of the process (VmHWM)",
        format!("{peak:.1} MiB"),
    ));
    report.set("idle", json!({"cpu_pct": idle.cpu_pct, "rss_mean_mib": idle.rss_mean_mib, "rss_max_mib": idle.rss_max_mib}));
    report.set("pods10", json!({"cpu_pct": busy.cpu_pct, "rss_mean_mib": busy.rss_mean_mib, "rss_max_mib": busy.rss_max_mib}));
    report.set("peak_rss_mib", json!(peak));
    report.set("window_s", json!(window.as_secs()));
    report.note(format!(
        "release edge-kubelet, Docker runtime, 1 s heartbeats, connected to the operator; sampled every second \
         for {}s from /proc/<pid>/stat and /status; the 10 pods are busybox httpd with an HTTP readiness probe \
         every 10 s (the Kubernetes default period)",
        window.as_secs()
    ));
    Ok(report)
}
