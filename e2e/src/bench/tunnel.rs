//! `tunnel`: HTTP through gateway → operator → edge tunnel → container, against the same
//! container reached directly on the Docker bridge: requests/s, latency, bulk both ways.

use std::{net::SocketAddr, time::Duration};

use anyhow::Context as _;
use decloud_crds::contracts::WORKLOAD_LABEL;
use k8s_openapi::api::core::v1::Pod;
use kube::{Api, api::ListParams};
use serde_json::{Value, json};

use crate::eventually;

use super::{
    cluster::BenchCluster,
    harness::{NS, Opts, check_workload_ready, create_workload, web_server, workload},
    loadgen::Target,
    report::{Row, ScenarioReport},
    stats::Summary,
};

const WL: &str = "tunnel";

struct PathFigures {
    latency: Summary,
    rps: f64,
    failed: u64,
    down_gbps: f64,
    up_gbps: f64,
}

impl PathFigures {
    fn to_json(&self) -> Value {
        json!({"latency": self.latency.to_json(), "requests_per_s": self.rps, "failed": self.failed,
               "download_gbit_s": self.down_gbps, "upload_gbit_s": self.up_gbps})
    }
}

/// Runs the scenario.
pub async fn run(opts: Opts) -> anyhow::Result<ScenarioReport> {
    let mut report = ScenarioReport::new("tunnel");
    let (requests, window, big_mib, repeats) = if opts.quick {
        (200, Duration::from_secs(3), 16u32, 2)
    } else {
        (2000, Duration::from_secs(10), 128u32, 3)
    };
    let big_mib = opts.tunnel_mib.unwrap_or(big_mib);
    let concurrency = 16;
    let cluster = BenchCluster::start("tunnel", 1, &[]).await?;
    let client = cluster.env.client();
    create_workload(
        &client,
        &workload(WL, 1, "Required", web_server(big_mib, 2), None)?,
    )
    .await?;
    eventually(Duration::from_secs(90), || {
        check_workload_ready(&client, WL)
    })
    .await?;
    let pods = Api::<Pod>::namespaced(client.clone(), NS)
        .list(&ListParams::default().labels(&format!("{WORKLOAD_LABEL}={WL}")))
        .await?;
    let ip = pods
        .items
        .iter()
        .find_map(|p| p.status.as_ref()?.pod_ip.clone())
        .context("no pod IP")?;
    let direct = Target {
        addr: SocketAddr::new(ip.parse()?, 8080),
        host: format!("{ip}:8080"),
    };
    let measure = |t: Target| async move {
        // Warm up (connections, page cache of the file).
        t.latencies("/", 20).await.context("warm-up GET /")?;
        t.get("/big").await.context("warm-up GET /big")?;
        let latency = t
            .latencies("/", requests)
            .await
            .context("GET / latencies")?;
        let (rps, failed) = t.rate("/", concurrency, window).await;
        let down_gbps = t.download_gbps("/big", repeats).await.context("download")?;
        let up_gbps = t
            .upload_gbps("/cgi-bin/sink", u64::from(big_mib) << 20, repeats)
            .await
            .context("upload")?;
        anyhow::Ok(PathFigures {
            latency,
            rps,
            failed,
            down_gbps,
            up_gbps,
        })
    };
    let d = measure(direct.clone())
        .await
        .context("direct to the container")?;
    report.row(Row::info(
        "direct: latency p50 / p99 (1 conn per request)",
        format!("{:.2} / {:.2} ms", d.latency.p50, d.latency.p99),
    ));
    report.row(Row::info(
        format!("direct: requests/s ({concurrency} concurrent)"),
        format!("{:.0} ({} failed)", d.rps, d.failed),
    ));
    report.row(Row::info(
        "direct: download / upload",
        format!("{:.2} / {:.2} Gbit/s", d.down_gbps, d.up_gbps),
    ));
    report.set("direct", d.to_json());
    {
        let gw = Target {
            addr: SocketAddr::from(([127, 0, 0, 1], cluster.gateway_port)),
            host: format!("{WL}.{NS}.decloud.localhost"),
        };
        eventually(Duration::from_secs(30), || async {
            let r = gw.get("/").await?;
            anyhow::ensure!(r.status == 200, "gateway: {}", r.status);
            Ok(())
        })
        .await?;
        let g = measure(gw).await.context("through the gateway")?;
        let added50 = g.latency.p50 - d.latency.p50;
        let added99 = g.latency.p99 - d.latency.p99;
        report.row(
            Row::target(
                "gateway: latency p50 / p99 (added p50 / p99)",
                format!(
                    "{:.2} / {:.2} ms (+{added50:.2} / +{added99:.2} ms)",
                    g.latency.p50, g.latency.p99
                ),
                "added p50 ≤ 1 ms",
                added50 <= 1.0,
            )
            .anchor("rathole ~2 ms at 1–3k QPS"),
        );
        let rps_ratio = g.rps / d.rps.max(1e-9);
        report.row(Row::target(
            format!("gateway: requests/s ({concurrency} concurrent)"),
            format!(
                "{:.0} ({:.0} % of direct, {} failed)",
                g.rps,
                rps_ratio * 100.0,
                g.failed
            ),
            "≥ 50 % of direct",
            rps_ratio >= 0.5,
        ));
        let down_ratio = g.down_gbps / d.down_gbps.max(1e-9);
        let up_ratio = g.up_gbps / d.up_gbps.max(1e-9);
        report.row(
            Row::target(
                "gateway: download / upload",
                format!(
                    "{:.2} / {:.2} Gbit/s ({:.0} % / {:.0} % of direct)",
                    g.down_gbps,
                    g.up_gbps,
                    down_ratio * 100.0,
                    up_ratio * 100.0
                ),
                "≥ 50 % of direct",
                down_ratio >= 0.5 && up_ratio >= 0.5,
            )
            .anchor("rathole ~3.6 Gbit/s; chisel ~0.8 Gbit/s"),
        );
        report.set("gateway", g.to_json());
    }
    report.note(format!(
        "one real Docker edge, one busybox httpd replica; every request opens a new connection (busybox httpd \
         has no keep-alive), so through the gateway each request is also a new tunnel stream; {requests} sequential \
         requests for latency, {concurrency} workers for {}s for requests/s, best of {repeats} transfers of {big_mib} MiB \
         (GET of a file, POST to a CGI that discards the body) for bulk",
        window.as_secs()
    ));
    Ok(report)
}
