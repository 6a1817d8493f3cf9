//! Chaos: random (seeded) SIGKILLs and restarts of edges, and one operator restart, while three
//! Workloads run on four real edges. Afterwards every Workload is Available again, each has
//! exactly its replicas as pods and as containers, and no container outlives its pod. No
//! Workload is ever lost. Bounded: the whole test is cut at 4 minutes.
//!
//! `CHAOS_SEED=<n>` replays a run; the seed in use is printed first.
//! Needs `cargo build -p decloud-operator -p edge-kubelet` first (the suite says so if not).

use std::{
    collections::{BTreeMap, BTreeSet},
    time::{Duration, Instant},
};

use anyhow::{Context as _, ensure};
use decloud_crds::contracts::{container_labels, node_name};
use decloud_crds::{Workload, find_condition};
use decloud_e2e::cluster::{
    ContainerSweeper, EdgeProcess, OperatorProcess, busybox_image, workload_pods,
};
use decloud_e2e::{TestEnv, eventually};
use k8s_openapi::api::core::v1::Pod;
use kube::{
    Api, Client, ResourceExt,
    api::{DeleteParams, ListParams, PostParams},
};
use serde_json::json;

const NS: &str = "default";
const EDGES: usize = 4;
/// Workloads and their replica counts.
const WORKLOADS: [(&str, i32); 3] = [("chaos-a", 2), ("chaos-b", 1), ("chaos-c", 2)];
const CHAOS_FOR: Duration = Duration::from_secs(90);
const RECOVER_WITHIN: Duration = Duration::from_secs(90);

/// splitmix64: a tiny, seedable generator (the sequence is the same on every machine).
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    fn below(&mut self, n: usize) -> usize {
        (self.next() % n as u64) as usize
    }
}

fn workload(name: &str, replicas: i32) -> anyhow::Result<Workload> {
    Ok(serde_json::from_value(json!({
        "apiVersion": "decloud.dev/v1alpha1", "kind": "Workload",
        "metadata": {"name": name, "namespace": NS},
        "spec": {
            "replicas": replicas,
            "template": {"metadata": {"labels": {"app": name}}, "spec": {
                "terminationGracePeriodSeconds": 2,
                "containers": [{
                    "name": "main", "image": busybox_image()?, "imagePullPolicy": "IfNotPresent",
                    "command": ["/bin/sh", "-c", "trap 'exit 0' TERM; while true; do sleep 1; done"],
                    "resources": {"requests": {"cpu": "10m", "memory": "8Mi"}},
                }]}},
            "placement": {"spread": "Required"},
            "failover": {"graceSeconds": 2},
        }
    }))?)
}

/// Live (not terminating) pods of Workload `name`.
async fn live_pods(client: &Client, name: &str) -> anyhow::Result<Vec<Pod>> {
    workload_pods(client, NS, name).await
}

/// Containers our edges created: (pod uid, state) per container.
fn edge_containers(env: &TestEnv, nodes: &[String]) -> anyhow::Result<Vec<(String, String)>> {
    let mut out = Vec::new();
    for node in nodes {
        let Ok(engine) = env.engine_of_node(node) else {
            continue;
        };
        let text = engine.docker(&[
            "ps",
            "-a",
            "--filter",
            &format!(
                "label={}={}",
                container_labels::MANAGED_BY,
                container_labels::MANAGED_BY_VALUE
            ),
            "--filter",
            &format!("label={}={node}", container_labels::NODE),
            "--format",
            &format!(
                "{{{{.Label \"{}\"}}}} {{{{.State}}}}",
                container_labels::POD_UID
            ),
        ])?;
        for line in text.lines().filter(|l| !l.trim().is_empty()) {
            let (uid, state) = line.split_once(' ').unwrap_or((line, ""));
            out.push((uid.to_string(), state.to_string()));
        }
    }
    Ok(out)
}

/// The end state: every Workload Available with exactly its replicas as pods (none
/// terminating) and as running containers, and no container without a pod.
async fn check_recovered(client: &Client, env: &TestEnv, nodes: &[String]) -> anyhow::Result<()> {
    let wls = Api::<Workload>::namespaced(client.clone(), NS);
    let all_pods = Api::<Pod>::namespaced(client.clone(), NS)
        .list(&ListParams::default())
        .await?
        .items;
    let terminating: Vec<String> = all_pods
        .iter()
        .filter(|p| p.metadata.deletion_timestamp.is_some())
        .map(|p| p.name_any())
        .collect();
    ensure!(
        terminating.is_empty(),
        "pods still terminating: {terminating:?}"
    );
    let api_uids: BTreeSet<String> = all_pods.iter().filter_map(|p| p.uid()).collect();
    let containers = edge_containers(env, nodes)?;
    let leaked: Vec<&(String, String)> = containers
        .iter()
        .filter(|(uid, _)| !api_uids.contains(uid))
        .collect();
    ensure!(leaked.is_empty(), "containers without a pod: {leaked:?}");
    let mut running_per_uid: BTreeMap<&str, usize> = BTreeMap::new();
    for (uid, state) in &containers {
        if state == "running" {
            *running_per_uid.entry(uid).or_default() += 1;
        }
    }
    for (name, replicas) in WORKLOADS {
        let wl = wls.get(name).await?;
        let status = wl.status.clone().context("no status")?;
        ensure!(
            find_condition(&status.conditions, "Available").is_some_and(|c| c.is_true()),
            "{name} not Available"
        );
        ensure!(
            status.ready_replicas == replicas,
            "{name}: {}/{replicas} ready",
            status.ready_replicas
        );
        let pods = live_pods(client, name).await?;
        ensure!(
            pods.len() == replicas as usize,
            "{name}: {} pods, want {replicas}",
            pods.len()
        );
        let providers: BTreeSet<Option<String>> = pods
            .iter()
            .map(|p| p.spec.as_ref().and_then(|s| s.node_name.clone()))
            .collect();
        ensure!(
            providers.len() == pods.len(),
            "{name}: replicas share a provider"
        );
        let running: usize = pods
            .iter()
            .filter_map(|p| p.uid())
            .map(|uid| running_per_uid.get(uid.as_str()).copied().unwrap_or(0))
            .sum();
        ensure!(
            running == replicas as usize,
            "{name}: {running} running containers, want {replicas}"
        );
    }
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn random_edge_and_operator_crashes_lose_nothing_and_leave_no_duplicates()
-> anyhow::Result<()> {
    tokio::time::timeout(Duration::from_secs(240), chaos())
        .await
        .context("the chaos test exceeded its 4 minute bound")?
}

async fn chaos() -> anyhow::Result<()> {
    let seed: u64 = match std::env::var("CHAOS_SEED") {
        Ok(s) => s.parse().context("CHAOS_SEED is not a number")?,
        Err(_) => std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)?
            .as_nanos() as u64,
    };
    println!("chaos seed: {seed} (replay with CHAOS_SEED={seed})");
    let mut rng = Rng(seed);

    let env = TestEnv::start().await?;
    let client = env.client();
    busybox_image()?;
    let run = std::process::id();
    let names: Vec<String> = (0..EDGES).map(|i| format!("chaos-{run}-{i}")).collect();
    let nodes: Vec<String> = names.iter().map(|n| node_name(n)).collect();
    let sweeper = ContainerSweeper::new(&env, &nodes);
    let operator_args = ["--heartbeat-interval", "1s", "--missed-heartbeats", "3"];
    let mut operator = OperatorProcess::start(&env, &operator_args).await?;
    let mut edges: Vec<Option<EdgeProcess>> = Vec::new();
    for n in &names {
        edges.push(Some(EdgeProcess::start(&env, &operator, n, &[])?));
    }
    let wls = Api::<Workload>::namespaced(client.clone(), NS);
    for (name, replicas) in WORKLOADS {
        wls.create(&PostParams::default(), &workload(name, replicas)?)
            .await?;
    }
    eventually(Duration::from_secs(60), || {
        check_recovered(&client, &env, &nodes)
    })
    .await
    .context("the Workloads did not start")?;
    println!("three Workloads Available on {EDGES} edges; chaos for {CHAOS_FOR:?}");

    let started = Instant::now();
    let operator_restart_at = Duration::from_secs(20 + rng.below(40) as u64);
    let mut operator_restarted = false;
    let mut step = 0;
    while started.elapsed() < CHAOS_FOR {
        step += 1;
        let alive: Vec<usize> = (0..EDGES).filter(|&i| edges[i].is_some()).collect();
        let dead: Vec<usize> = (0..EDGES).filter(|&i| edges[i].is_none()).collect();
        if !operator_restarted && started.elapsed() >= operator_restart_at {
            println!(
                "[{:>5.1}s] step {step}: SIGKILL operator, restart",
                started.elapsed().as_secs_f64()
            );
            operator.child.kill();
            let mut next = operator.respawn(&env, &operator_args)?;
            next.wait_ready().await?;
            operator = next;
            operator_restarted = true;
        } else if !dead.is_empty() && (alive.len() <= 2 || rng.below(2) == 0) {
            let i = dead[rng.below(dead.len())];
            println!(
                "[{:>5.1}s] step {step}: restart edge {i}",
                started.elapsed().as_secs_f64()
            );
            edges[i] = Some(EdgeProcess::start(&env, &operator, &names[i], &[])?);
        } else {
            let i = alive[rng.below(alive.len())];
            println!(
                "[{:>5.1}s] step {step}: SIGKILL edge {i}",
                started.elapsed().as_secs_f64()
            );
            if let Some(mut e) = edges[i].take() {
                e.child.kill();
            }
        }
        // No Workload is ever lost.
        for (name, _) in WORKLOADS {
            ensure!(
                wls.get_opt(name).await?.is_some(),
                "Workload {name} disappeared at step {step} (seed {seed})"
            );
        }
        tokio::time::sleep(Duration::from_millis(1000 + 500 * rng.below(9) as u64)).await;
    }
    ensure!(operator_restarted, "the operator restart did not happen");

    for (i, e) in edges.iter_mut().enumerate() {
        if e.is_none() {
            *e = Some(EdgeProcess::start(&env, &operator, &names[i], &[])?);
        }
    }
    let recovering = Instant::now();
    eventually(RECOVER_WITHIN, || check_recovered(&client, &env, &nodes))
        .await
        .with_context(|| {
            format!(
                "not recovered after {RECOVER_WITHIN:?} (seed {seed}); operator log:\n{}",
                operator.child.log_tail(30)
            )
        })?;
    println!(
        "recovered {:.1}s after the last restart: every Workload Available, pods = containers = replicas, no leaks",
        recovering.elapsed().as_secs_f64()
    );
    // Stays that way: no late duplicate appears.
    tokio::time::sleep(Duration::from_secs(3)).await;
    check_recovered(&client, &env, &nodes).await?;

    for (name, _) in WORKLOADS {
        wls.delete(name, &DeleteParams::default()).await?;
    }
    eventually(Duration::from_secs(30), || async {
        let left = Api::<Pod>::namespaced(client.clone(), NS)
            .list(&ListParams::default())
            .await?;
        let left: Vec<String> = left
            .items
            .iter()
            .map(|p| {
                let node = p.spec.as_ref().and_then(|s| s.node_name.clone());
                let phase = p.status.as_ref().and_then(|s| s.phase.clone());
                format!(
                    "{} on {node:?} ({phase:?}, deleting: {})",
                    p.name_any(),
                    p.metadata.deletion_timestamp.is_some()
                )
            })
            .collect();
        ensure!(left.is_empty(), "{} pods left: {left:?}", left.len());
        Ok(())
    })
    .await
    .with_context(|| {
        let tails: Vec<String> = edges
            .iter()
            .enumerate()
            .filter_map(|(i, e)| Some(format!("edge {i}:\n{}", e.as_ref()?.child.log_tail(15))))
            .collect();
        format!(
            "pods not gone after the Workloads were deleted (seed {seed}); operator log:\n{}\n{}",
            operator.child.log_tail(30),
            tails.join("\n")
        )
    })?;
    drop(edges);
    sweeper.sweep();
    Ok(())
}
