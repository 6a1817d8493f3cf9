//! A pod's writable layer and logs stay within what the volunteer offered, end to end: a real
//! kube-apiserver, the real `decloud-operator`, a real `edge-kubelet` on a Docker engine of its own per edge
//! offering `--storage 256Mi`.
//!
//! - The Provider and its virtual Node show the offer (`ephemeral-storage: 256Mi`).
//! - A pod requesting 512Mi of ephemeral storage is refused as kubelet refuses it
//!   (`Failed`, `OutOfephemeral-storage`).
//! - A pod with an ephemeral-storage limit of 20Mi writing 40 MB into its writable layer is
//!   evicted as kubelet's eviction manager evicts it (`Failed`, `Evicted`, kubelet's message)
//!   and its containers are removed, while a pod writing 5 MB under the same limit keeps
//!   running (and `edge-kubelet status` shows what it holds against the offer).
//!
//! Needs root (the edge's ceiling cgroup and egress rules) and `cargo build --workspace --bins`.

use std::process::Command;
use std::time::Duration;

use anyhow::{Context as _, ensure};
use decloud_crds::Provider;
use decloud_crds::contracts::{EDGE_TAINT, container_labels, node_name};
use decloud_e2e::cluster::{ContainerSweeper, EdgeProcess, OperatorProcess, busybox_image};
use decloud_e2e::engine::DockerEngine;
use decloud_e2e::{TestEnv, binary, eventually};
use k8s_openapi::api::core::v1::{Node, Pod};
use kube::ResourceExt;
use kube::api::{Api, PostParams};

const NS: &str = "default";

/// `edge-kubelet uninstall` of the suite's edge on drop (rules, containers, network, cgroup).
struct Uninstall {
    name: String,
    network: String,
    state_dir: String,
    engine: std::sync::Arc<DockerEngine>,
}

impl Drop for Uninstall {
    fn drop(&mut self) {
        let out = Command::new(binary("edge-kubelet").expect("edge-kubelet built"))
            .args(["uninstall", "--name", &self.name])
            .args(["--docker-network", &self.network])
            .args(["--docker-host", &self.engine.host()])
            .args(["--state-dir", &self.state_dir])
            .output();
        if let Ok(o) = out
            && !o.status.success()
        {
            eprintln!("uninstall: {}", String::from_utf8_lossy(&o.stderr));
        }
        let _ = self.engine.docker(&["network", "rm", &self.network]);
    }
}

/// A bare pod on `node` running `script` in the test image with `resources`.
fn pod(name: &str, node: &str, image: &str, script: &str, resources: serde_json::Value) -> Pod {
    serde_json::from_value(serde_json::json!({
        "apiVersion": "v1", "kind": "Pod",
        "metadata": {"name": name, "namespace": NS},
        "spec": {
            "nodeName": node,
            "restartPolicy": "Always",
            "tolerations": [{"key": EDGE_TAINT, "operator": "Exists"}],
            "containers": [{
                "name": "main", "image": image, "imagePullPolicy": "IfNotPresent",
                "command": ["sh", "-c", script], "resources": resources,
            }],
        }
    }))
    .expect("a valid pod")
}

/// (phase, reason, message) of pod `name`.
async fn phase_of(pods: &Api<Pod>, name: &str) -> anyhow::Result<(String, String, String)> {
    let s = pods.get(name).await?.status.context("no status")?;
    Ok((
        s.phase.unwrap_or_default(),
        s.reason.unwrap_or_default(),
        s.message.unwrap_or_default(),
    ))
}

/// Containers (any state) of pod `uid` on the engine.
fn containers_of(engine: &DockerEngine, uid: &str) -> anyhow::Result<String> {
    engine.docker(&[
        "ps",
        "-aq",
        "--filter",
        &format!("label={}={uid}", container_labels::POD_UID),
    ])
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_pods_disk_stays_within_the_offer() -> anyhow::Result<()> {
    let root = Command::new("id")
        .arg("-u")
        .output()
        .is_ok_and(|o| String::from_utf8_lossy(&o.stdout).trim() == "0");
    ensure!(root, "this suite needs root (ceiling cgroup, egress rules)");
    let env = TestEnv::start().await?;
    let image = busybox_image()?;
    let operator = OperatorProcess::start(&env, &["--heartbeat-interval", "1s"]).await?;
    let pid = std::process::id();
    let name = format!("vstor-{pid}");
    let net = format!("vstor{pid}");
    let node = node_name(&name);
    let _sweeper = ContainerSweeper::new(&env, std::slice::from_ref(&node));
    let state_dir = EdgeProcess::state_dir_of(&env, &name);
    let engine = env.engine(&name)?;
    let _uninstall = Uninstall {
        name: name.clone(),
        network: net.clone(),
        state_dir: state_dir.to_string_lossy().into_owned(),
        engine: engine.clone(),
    };
    let mut connect = operator.edge_args();
    connect.extend(["--docker-network", &net, "--storage", "256Mi"].map(String::from));
    let mut edge = EdgeProcess::start_with(&env, &name, &[], &connect)?;

    // The offer, on the Provider and on its Node.
    let providers: Api<Provider> = Api::all(env.client());
    let status = eventually(Duration::from_secs(60), || async {
        let p = providers.get(&name).await?;
        let s = p.status.context("no status")?;
        let alloc = s.allocatable.clone().context("no allocatable")?;
        ensure!(
            alloc.storage.as_deref() == Some("256Mi"),
            "allocatable storage {:?}",
            alloc.storage
        );
        Ok((p.spec, s))
    })
    .await
    .with_context(|| format!("edge log:\n{}", edge.child.log_tail(30)))?;
    let (spec, status) = status;
    ensure!(
        spec.offered
            .as_ref()
            .and_then(|o| o.storage.as_ref())
            .is_none(),
        "nobody capped the Provider yet: {:?}",
        spec.offered
    );
    println!(
        "provider: offered {:?}, capacity {:?}, allocatable {:?}, allocated {:?}",
        spec.offered.as_ref().and_then(|o| o.storage.clone()),
        status.capacity.as_ref().and_then(|c| c.storage.clone()),
        status.allocatable.as_ref().and_then(|c| c.storage.clone()),
        status.allocated.as_ref().and_then(|c| c.storage.clone()),
    );
    ensure!(
        status
            .capacity
            .as_ref()
            .and_then(|c| c.storage.as_deref())
            .is_some(),
        "no storage capacity: {:?}",
        status.capacity
    );
    let nodes: Api<Node> = Api::all(env.client());
    let allocatable = eventually(Duration::from_secs(30), || async {
        let n = nodes.get(&node).await?;
        let q = n
            .status
            .and_then(|s| s.allocatable)
            .and_then(|a| a.get("ephemeral-storage").cloned())
            .context("no ephemeral-storage on the node")?;
        Ok(q.0)
    })
    .await?;
    ensure!(allocatable == "256Mi", "node allocatable {allocatable}");

    let pods: Api<Pod> = Api::namespaced(env.client(), NS);
    // More than the offer: refused on arrival, as kubelet refuses it.
    pods.create(
        &PostParams::default(),
        &pod(
            "stor-big",
            &node,
            &image,
            "sleep 3600",
            serde_json::json!({"requests": {"ephemeral-storage": "512Mi"}}),
        ),
    )
    .await?;
    let (phase, reason, message) = eventually(Duration::from_secs(60), || async {
        let got = phase_of(&pods, "stor-big").await?;
        ensure!(got.0 == "Failed", "stor-big: {got:?}");
        Ok(got)
    })
    .await?;
    println!("512Mi on a 256Mi offer: {phase} {reason}: {message}");
    ensure!(reason == "OutOfephemeral-storage", "{reason}: {message}");
    ensure!(
        message.contains("Node didn't have enough resource: ephemeral-storage"),
        "{message}"
    );

    // Within its limit it runs; past it, it is evicted.
    let limit = serde_json::json!({"limits": {"ephemeral-storage": "20Mi"}});
    pods.create(
        &PostParams::default(),
        &pod(
            "stor-small",
            &node,
            &image,
            "dd if=/dev/zero of=/small bs=1M count=5 && exec sleep 3600",
            limit.clone(),
        ),
    )
    .await?;
    pods.create(
        &PostParams::default(),
        &pod(
            "stor-hog",
            &node,
            &image,
            "dd if=/dev/zero of=/big bs=1M count=40 && exec sleep 3600",
            limit,
        ),
    )
    .await?;
    let hog_uid = eventually(Duration::from_secs(60), || async {
        let p = pods.get("stor-hog").await?;
        let uid = p.uid().unwrap_or_default();
        ensure!(
            !containers_of(&engine, &uid)?.is_empty(),
            "stor-hog has no container yet"
        );
        Ok(uid)
    })
    .await?;
    let (phase, reason, message) = eventually(Duration::from_secs(120), || async {
        let got = phase_of(&pods, "stor-hog").await?;
        ensure!(got.0 == "Failed", "stor-hog: {got:?}");
        Ok(got)
    })
    .await
    .with_context(|| format!("edge log:\n{}", edge.child.log_tail(30)))?;
    println!("40 MB under a 20Mi limit: {phase} {reason}: {message}");
    ensure!(reason == "Evicted", "{reason}: {message}");
    ensure!(
        message.trim()
            == "Pod ephemeral local storage usage exceeds the total limit of containers 20Mi.",
        "{message}"
    );
    eventually(Duration::from_secs(30), || async {
        let left = containers_of(&engine, &hog_uid)?;
        ensure!(
            left.is_empty(),
            "the evicted pod's containers remain: {left}"
        );
        Ok(())
    })
    .await?;

    // The small pod was measured (the edge's status shows what it holds) and still runs.
    let report = eventually(Duration::from_secs(60), || async {
        let out = Command::new(binary("edge-kubelet")?)
            .args(["status", "--name", &name, "--state-dir"])
            .arg(&edge.state_dir)
            .output()?;
        let text = String::from_utf8_lossy(&out.stdout).into_owned();
        let line = text
            .lines()
            .find(|l| l.contains("default/stor-small"))
            .context("no stor-small line")?
            .to_string();
        let disk_mib: i64 = line
            .split_whitespace()
            .last()
            .and_then(|v| v.parse().ok())
            .context("no DISK-MIB")?;
        ensure!(
            disk_mib >= 5,
            "stor-small measured at {disk_mib} MiB: {line}"
        );
        Ok(text)
    })
    .await?;
    println!("edge-kubelet status:\n{report}");
    ensure!(
        report.contains("MiB offered") && report.contains("of 256 MiB offered"),
        "{report}"
    );
    let (phase, reason, message) = phase_of(&pods, "stor-small").await?;
    ensure!(
        phase == "Running",
        "5 MB under a 20Mi limit: {phase} {reason}: {message}"
    );
    let small = pods.get("stor-small").await?;
    ensure!(
        !containers_of(&engine, &small.uid().unwrap_or_default())?.is_empty(),
        "stor-small lost its container"
    );
    // An eviction is final: a restarted edge (same state) does not start the pod again,
    // while it re-adopts the one that runs.
    edge.child.kill();
    let small_uid = small.uid().unwrap_or_default();
    let small_container = containers_of(&engine, &small_uid)?;
    let mut edge = EdgeProcess::start_with(&env, &name, &[], &connect)?;
    // From its start and over more than a poll, nothing of the evicted pod comes back (not
    // even briefly, to be evicted again), and the edge reports it failed whenever it names it.
    let watch_until = std::time::Instant::now() + Duration::from_secs(20);
    let mut reported_connected = false;
    while std::time::Instant::now() < watch_until {
        let back = containers_of(&engine, &hog_uid)?;
        ensure!(back.is_empty(), "the evicted pod was started again: {back}");
        let out = Command::new(binary("edge-kubelet")?)
            .args(["status", "--name", &name, "--state-dir"])
            .arg(&edge.state_dir)
            .output()?;
        let text = String::from_utf8_lossy(&out.stdout).into_owned();
        if text.contains("session:    connected") {
            reported_connected = true;
            if let Some(line) = text.lines().find(|l| l.contains("default/stor-hog")) {
                ensure!(line.contains("failed"), "after the restart: {line}");
            }
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    ensure!(
        reported_connected,
        "the restarted edge never connected; edge log:\n{}",
        edge.child.log_tail(30)
    );
    let (phase, reason, _) = phase_of(&pods, "stor-hog").await?;
    ensure!(
        (phase.as_str(), reason.as_str()) == ("Failed", "Evicted"),
        "after the restart stor-hog is {phase} {reason}"
    );
    ensure!(
        containers_of(&engine, &small_uid)? == small_container,
        "stor-small was not re-adopted as it ran"
    );

    let used = providers
        .get(&name)
        .await?
        .status
        .and_then(|s| s.allocated)
        .and_then(|a| a.storage);
    ensure!(
        used.as_deref() == Some("20Mi"),
        "allocated storage (stor-small's request): {used:?}"
    );

    // The administrator's cap on the Provider lowers what the cluster may use.
    providers
        .patch(
            &name,
            &kube::api::PatchParams::default(),
            &kube::api::Patch::Merge(
                serde_json::json!({"spec": {"offered": {"storage": "128Mi"}}}),
            ),
        )
        .await?;
    eventually(Duration::from_secs(30), || async {
        let a = providers
            .get(&name)
            .await?
            .status
            .and_then(|s| s.allocatable)
            .and_then(|a| a.storage);
        ensure!(a.as_deref() == Some("128Mi"), "allocatable storage {a:?}");
        Ok(())
    })
    .await?;
    edge.child.kill();
    Ok(())
}
