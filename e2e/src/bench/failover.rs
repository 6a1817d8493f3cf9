//! `failover`: SIGKILL of the edge carrying a Workload's only replica; how long until a
//! replacement is Ready elsewhere and the gateway answers again. Default settings throughout
//! (1 s heartbeats, 3 missed, failover grace 5 s). Then, for comparison, stock Kubernetes
//! eviction rules (kube-controller-manager's taint eviction) on a plain pod in the same cluster.

use std::{
    net::SocketAddr,
    process::Command,
    time::{Duration, Instant},
};

use anyhow::{Context as _, bail, ensure};
use decloud_crds::contracts::{EDGE_TAINT, node_name};
use decloud_crds::{Provider, ProviderPhase};
use k8s_openapi::api::core::v1::{Node, Pod};
use kube::{Api, Client, ResourceExt, api::DeleteParams};
use serde_json::json;

use crate::{ChildGuard, cluster::workload_pods, eventually, free_port};

use super::{
    cluster::BenchCluster,
    harness::{NS, Opts, check_workload_ready, create_workload, pod_ready, web_server, workload},
    loadgen::Target,
    report::{Row, ScenarioReport, ms},
    stats::Summary,
};

const EDGES: usize = 3;
const WL: &str = "failover";
const TARGET_P99_MS: f64 = 10_000.0;
/// Kubernetes defaults: node-monitor-grace-period (50 s since v1.32) and the 300 s
/// not-ready/unreachable tolerations the DefaultTolerationSeconds admission plugin adds.
const K8S_GRACE_S: f64 = 50.0;
const K8S_TOLERATION_S: f64 = 300.0;
const SHORT_TOLERATION_S: i64 = 10;

/// One trial's timings since the SIGKILL.
#[derive(Debug, Clone, Copy, Default)]
struct Trial {
    not_ready: Option<Duration>,
    replacement_ready: Option<Duration>,
    gateway_back: Option<Duration>,
}

/// Runs the scenario.
pub async fn run(opts: Opts) -> anyhow::Result<ScenarioReport> {
    let mut report = ScenarioReport::new("failover");
    let mut cluster = BenchCluster::start("failover", EDGES, &[]).await?;
    let client = cluster.env.client();
    create_workload(
        &client,
        &workload(WL, 1, "Required", web_server(1, 1), None)?,
    )
    .await?;
    let gateway = Target {
        addr: SocketAddr::from(([127, 0, 0, 1], cluster.gateway_port)),
        host: format!("{WL}.{NS}.decloud.localhost"),
    };
    let trials = if opts.quick { 3 } else { 20 };
    let mut results = Vec::new();
    for trial in 0..trials {
        settle(&cluster, &gateway)
            .await
            .with_context(|| format!("before trial {trial}"))?;
        let (pod, node) = current_replica(&client).await?;
        let victim = cluster
            .index_of_node(&node)
            .context("replica on an unknown node")?;
        let t = one_trial(&mut cluster, victim, &pod, &gateway).await?;
        println!(
            "failover trial {}/{trials}: NotReady {:?}, replacement Ready {:?}, gateway back {:?}",
            trial + 1,
            t.not_ready,
            t.replacement_ready,
            t.gateway_back
        );
        results.push(t);
        cluster.start_edge(victim)?;
        cluster
            .wait_provider_ready(victim, Duration::from_secs(60))
            .await?;
    }
    let pick = |f: fn(&Trial) -> Option<Duration>| -> Vec<Duration> {
        results.iter().filter_map(f).collect()
    };
    let detect = Summary::of(&pick(|t| t.not_ready));
    let ready = Summary::of(&pick(|t| t.replacement_ready));
    let gw = Summary::of(&pick(|t| t.gateway_back));
    report.row(Row::info(
        format!("SIGKILL → provider NotReady, p50 / p99 ({trials} trials)"),
        format!("{} / {}", ms(detect.p50), ms(detect.p99)),
    ));
    report.row(
        Row::target(
            "SIGKILL → replacement Ready, p50 / p99",
            format!("{} / {}", ms(ready.p50), ms(ready.p99)),
            "p99 ≤ 10 s",
            ready.p99 <= TARGET_P99_MS,
        )
        .anchor("k8s defaults ~5 min 50 s; Swarm ~15 s; Nomad 20–30 s"),
    );
    report.row(
        Row::target(
            "SIGKILL → gateway answering again, p50 / p99",
            format!("{} / {}", ms(gw.p50), ms(gw.p99)),
            "p99 ≤ 10 s",
            gw.n == trials && gw.p99 <= TARGET_P99_MS,
        )
        .anchor("k8s defaults ~5 min 50 s; Swarm ~15 s; Nomad 20–30 s"),
    );
    let end_to_end = gw;
    report.set(
        "decloud",
        json!({"trials": trials, "not_ready": detect.to_json(), "replacement_ready": ready.to_json(),
               "gateway_back": gw.to_json()}),
    );
    report.note(format!(
        "{EDGES} real Docker edges, Workload of 1 busybox-httpd replica (spread Required, readiness probe every 1 s), \
         operator defaults (heartbeat 1 s × 3 missed), failover grace 5 s (default); the killed edge is restarted \
         between trials"
    ));

    match stock_kubernetes(&mut cluster).await {
        Ok(stock) => {
            let computed_ms =
                (K8S_GRACE_S + K8S_TOLERATION_S) * 1e3 + stock.eviction_lag.as_secs_f64() * 1e3;
            let on_decloud_ms = stock.taint.as_secs_f64() * 1e3
                + K8S_TOLERATION_S * 1e3
                + stock.eviction_lag.as_secs_f64() * 1e3;
            report.row(Row::info(
                "stock k8s rules on a plain pod: SIGKILL → NoExecute taint (measured)",
                ms(stock.taint.as_secs_f64() * 1e3),
            ));
            report.row(Row::info(
                format!("stock k8s rules: taint → eviction beyond a {SHORT_TOLERATION_S} s toleration (measured lag)"),
                ms(stock.eviction_lag.as_secs_f64() * 1e3),
            ));
            report.row(Row::info(
                "stock k8s eviction of a default pod (taint + 300 s toleration + lag, computed)",
                ms(on_decloud_ms),
            ));
            let ratio = computed_ms / end_to_end.p50.max(1.0);
            report.row(
                Row::info(
                    "stock k8s defaults (50 s grace + 300 s + lag, computed) / DeCloud p50",
                    format!("{} / {} = {ratio:.0}×", ms(computed_ms), ms(end_to_end.p50)),
                )
                .anchor("k8s defaults ~5 min 50 s"),
            );
            report.set(
                "stock_kubernetes",
                json!({"taint_ms": stock.taint.as_millis() as u64, "eviction_lag_ms": stock.eviction_lag.as_millis() as u64,
                       "short_toleration_s": SHORT_TOLERATION_S, "default_pod_kept": stock.default_kept,
                       "computed_default_ms": computed_ms, "computed_on_decloud_ms": on_decloud_ms, "ratio_vs_p50": ratio}),
            );
            report.note(format!(
                "stock comparison: kube-controller-manager (node-lifecycle + taint-eviction controllers) runs against the \
                 same apiserver; a plain pod with an explicit {SHORT_TOLERATION_S} s unreachable toleration is evicted by it \
                 for real, and one with the admission default (300 s) is still there then ({}); the 300 s wait itself is \
                 added, not waited for. A stock replacement would further need a ReplicaSet and a scheduler, not counted",
                if stock.default_kept { "checked" } else { "NOT the case" }
            ));
        }
        Err(e) => report.note(format!("stock Kubernetes comparison skipped: {e:#}")),
    }
    Ok(report)
}

/// Waits until the Workload is Available with one replica (and the gateway answers).
async fn settle(cluster: &BenchCluster, gateway: &Target) -> anyhow::Result<()> {
    let client = cluster.env.client();
    eventually(Duration::from_secs(90), || async {
        check_workload_ready(&client, WL).await?;
        let pods = live_pods(&client).await?;
        ensure!(pods.len() == 1, "{} live pods", pods.len());
        let r = gateway.get("/").await?;
        ensure!(r.status == 200, "gateway: {}", r.status);
        Ok(())
    })
    .await
}

async fn live_pods(client: &Client) -> anyhow::Result<Vec<Pod>> {
    workload_pods(client, NS, WL).await
}

async fn current_replica(client: &Client) -> anyhow::Result<(String, String)> {
    let pod = live_pods(client)
        .await?
        .into_iter()
        .next()
        .context("no replica")?;
    let node = pod
        .spec
        .as_ref()
        .and_then(|s| s.node_name.clone())
        .context("unbound")?;
    Ok((pod.name_any(), node))
}

async fn one_trial(
    cluster: &mut BenchCluster,
    victim: usize,
    lost_pod: &str,
    gateway: &Target,
) -> anyhow::Result<Trial> {
    let client = cluster.env.client();
    let providers = Api::<Provider>::all(client.clone());
    let victim_name = cluster.names[victim].clone();
    let victim_node = node_name(&victim_name);
    let mut t = Trial::default();
    let mut gateway_failed = false;
    let killed = Instant::now();
    cluster.kill_edge(victim);
    while killed.elapsed() < Duration::from_secs(90) {
        if t.not_ready.is_none() {
            let p = providers.get(&victim_name).await?;
            if p.status.map(|s| s.phase) == Some(ProviderPhase::NotReady) {
                t.not_ready = Some(killed.elapsed());
            }
        }
        if t.replacement_ready.is_none() {
            let pods = live_pods(&client).await?;
            if pods.iter().any(|p| {
                p.name_any() != lost_pod
                    && p.spec.as_ref().and_then(|s| s.node_name.as_deref()) != Some(&victim_node)
                    && pod_ready(p)
            }) {
                t.replacement_ready = Some(killed.elapsed());
            }
        }
        if t.gateway_back.is_none() {
            match gateway.get("/").await {
                Ok(r) if r.status == 200 => {
                    if gateway_failed {
                        t.gateway_back = Some(killed.elapsed());
                    }
                }
                _ => gateway_failed = true,
            }
        }
        if t.replacement_ready.is_some() && t.gateway_back.is_some() && t.not_ready.is_some() {
            return Ok(t);
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    bail!("no replacement within 90 s: {t:?}")
}

struct StockOutcome {
    taint: Duration,
    eviction_lag: Duration,
    default_kept: bool,
}

/// Plain pods on one edge, kube-controller-manager's eviction rules, SIGKILL of that edge.
async fn stock_kubernetes(cluster: &mut BenchCluster) -> anyhow::Result<StockOutcome> {
    let client = cluster.env.client();
    let (_, busy_node) = current_replica(&client).await?;
    let busy = cluster.index_of_node(&busy_node);
    let victim = (0..cluster.names.len())
        .find(|&i| Some(i) != busy)
        .context("no free edge")?;
    let node = node_name(&cluster.names[victim]);
    let kcm_bin = cluster.env.bin_dir().join("kube-controller-manager");
    ensure!(kcm_bin.is_file(), "{} not built", kcm_bin.display());
    let mut cmd = Command::new(&kcm_bin);
    cmd.args([
        format!("--kubeconfig={}", cluster.env.kubeconfig().display()),
        "--controllers=node-lifecycle-controller,taint-eviction-controller".into(),
        "--leader-elect=false".into(),
        "--use-service-account-credentials=false".into(),
        format!("--secure-port={}", free_port()?),
        "--bind-address=127.0.0.1".into(),
        format!("--cert-dir={}", cluster.env.dir().join("kcm").display()),
        "--v=1".into(),
    ]);
    let mut kcm = ChildGuard::spawn(
        "kube-controller-manager",
        cmd,
        &cluster.env.dir().join("kcm.log"),
    )?;
    tokio::time::sleep(Duration::from_secs(3)).await;
    kcm.check_running()?;

    let pods = Api::<Pod>::namespaced(client.clone(), NS);
    for (name, tolerations) in [
        ("stock-default", String::new()),
        (
            "stock-short",
            format!(
                "\n    - {{key: node.kubernetes.io/unreachable, operator: Exists, effect: NoExecute, tolerationSeconds: {SHORT_TOLERATION_S}}}\
                 \n    - {{key: node.kubernetes.io/not-ready, operator: Exists, effect: NoExecute, tolerationSeconds: {SHORT_TOLERATION_S}}}"
            ),
        ),
    ] {
        let image = super::harness::test_image();
        let yaml = format!(
            "apiVersion: v1\nkind: Pod\nmetadata: {{name: {name}, namespace: {NS}}}\nspec:\n  nodeName: {node}\n  \
             terminationGracePeriodSeconds: 1\n  tolerations:\n    - {{key: {EDGE_TAINT}, operator: Exists, effect: NoSchedule}}{tolerations}\n  \
             containers:\n    - name: main\n      image: {image}\n      imagePullPolicy: IfNotPresent\n      \
             command: [/bin/sh, -c, \"trap 'exit 0' TERM; while true; do sleep 1; done\"]\n"
        );
        cluster.env.kubectl_stdin(&["apply", "-f", "-"], &yaml)?;
    }
    eventually(Duration::from_secs(60), || async {
        for n in ["stock-default", "stock-short"] {
            ensure!(pod_ready(&pods.get(n).await?), "{n} not ready");
        }
        Ok(())
    })
    .await?;
    let default_pod = pods.get("stock-default").await?;
    let default_toleration = default_pod
        .spec
        .as_ref()
        .and_then(|s| s.tolerations.as_ref())
        .and_then(|ts| {
            ts.iter()
                .find(|t| t.key.as_deref() == Some("node.kubernetes.io/unreachable"))
        })
        .and_then(|t| t.toleration_seconds);
    ensure!(
        default_toleration == Some(300),
        "admission did not add the default 300 s toleration: {default_toleration:?}"
    );

    let nodes = Api::<Node>::all(client.clone());
    let killed = Instant::now();
    cluster.kill_edge(victim);
    let mut taint = None;
    let mut evicted = None;
    while killed.elapsed() < Duration::from_secs(120) && evicted.is_none() {
        if taint.is_none() {
            let n = nodes.get(&node).await?;
            let has = n.spec.and_then(|s| s.taints).is_some_and(|ts| {
                ts.iter()
                    .any(|t| t.key == "node.kubernetes.io/unreachable" && t.effect == "NoExecute")
            });
            if has {
                taint = Some(killed.elapsed());
            }
        }
        match pods.get_opt("stock-short").await? {
            Some(p) if p.metadata.deletion_timestamp.is_none() => {}
            _ => evicted = Some(killed.elapsed()),
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let result = (|| {
        let taint = taint.context("no NoExecute taint within 120 s")?;
        let evicted = evicted.with_context(|| {
            format!(
                "stock-short not evicted within 120 s; kcm log:\n{}",
                kcm.log_tail(20)
            )
        })?;
        anyhow::Ok((taint, evicted))
    })();
    let default_kept = pods
        .get_opt("stock-default")
        .await?
        .is_some_and(|p| p.metadata.deletion_timestamp.is_none());
    kcm.stop(Duration::from_secs(3));
    cluster.start_edge(victim)?;
    cluster
        .wait_provider_ready(victim, Duration::from_secs(60))
        .await?;
    for n in ["stock-default", "stock-short"] {
        let _ = pods.delete(n, &DeleteParams::default()).await;
    }
    let (taint, evicted) = result?;
    Ok(StockOutcome {
        taint,
        eviction_lag: evicted
            .saturating_sub(taint + Duration::from_secs(SHORT_TOLERATION_S as u64)),
        default_kept,
    })
}
