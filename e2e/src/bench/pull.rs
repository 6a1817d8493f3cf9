//! `pull`: a pod naming the test image in the environment's loopback registry; how long from
//! the pod created to its container Running, cold (a fresh edge on a fresh engine: the image
//! is pulled) and warm (the same edge again: the image is in its engine, `IfNotPresent`).
//!
//! Each cold round starts a new edge, hence a new Docker engine with an empty data root; each
//! warm round follows on the edge of the cold round before it.

use std::time::{Duration, Instant};

use k8s_openapi::api::core::v1::Pod;
use kube::api::{Api, DeleteParams, PostParams};
use serde_json::json;

use super::{
    harness::Opts,
    report::{Row, ScenarioReport, ms},
    stats::Summary,
};
use crate::{
    TestEnv,
    cluster::{
        ContainerSweeper, EdgeProcess, OperatorProcess, busybox_image, wait_providers_ready,
    },
    eventually,
};

const NS: &str = "default";

/// A pod bound to `node` running `image`'s `sleep`.
fn pod(name: &str, node: &str, image: &str) -> anyhow::Result<Pod> {
    Ok(serde_json::from_value(json!({
        "apiVersion": "v1", "kind": "Pod",
        "metadata": {"name": name, "namespace": NS, "labels": {"bench": "pull"}},
        "spec": {
            "nodeName": node,
            "terminationGracePeriodSeconds": 1,
            "tolerations": [{"operator": "Exists"}],
            "containers": [{"name": "main", "image": image, "imagePullPolicy": "IfNotPresent",
                "command": ["sleep", "3600"],
                "resources": {"requests": {"cpu": "10m", "memory": "8Mi"}}}],
        }
    }))?)
}

/// Creates pod `name` on `node` and polls (10 ms) until its container is running: the time
/// from the create call to that.
async fn time_to_running(
    pods: &Api<Pod>,
    name: &str,
    node: &str,
    image: &str,
) -> anyhow::Result<Duration> {
    let created = Instant::now();
    pods.create(&PostParams::default(), &pod(name, node, image)?)
        .await?;
    let deadline = created + Duration::from_secs(120);
    loop {
        let p = pods.get(name).await?;
        let running = p
            .status
            .as_ref()
            .and_then(|s| s.container_statuses.as_ref())
            .and_then(|c| c.first())
            .and_then(|c| c.state.as_ref())
            .is_some_and(|s| s.running.is_some());
        if running {
            return Ok(created.elapsed());
        }
        anyhow::ensure!(
            Instant::now() < deadline,
            "{name} not running after 120 s: {:?}",
            p.status
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

async fn delete(pods: &Api<Pod>, name: &str) -> anyhow::Result<()> {
    pods.delete(name, &DeleteParams::default()).await?;
    eventually(Duration::from_secs(60), || async {
        anyhow::ensure!(pods.get_opt(name).await?.is_none(), "{name} still there");
        Ok(())
    })
    .await
}

/// Runs the scenario.
pub async fn run(opts: Opts) -> anyhow::Result<ScenarioReport> {
    let mut report = ScenarioReport::new("pull");
    let env = TestEnv::start().await?;
    let client = env.client();
    let image = busybox_image()?;
    let operator = OperatorProcess::start(&env, &["--heartbeat-interval", "1s"]).await?;
    let pods: Api<Pod> = Api::namespaced(client.clone(), NS);
    let rounds = if opts.quick { 1 } else { 3 };
    let run = std::process::id();
    let (mut cold, mut warm, mut engine_start) = (Vec::new(), Vec::new(), Vec::new());
    for round in 0..rounds {
        let name = format!("pull-{run}-{round}");
        let t = Instant::now();
        let engine = env.engine(&name)?;
        engine_start.push(t.elapsed());
        let image_bytes = engine.docker(&["images", "-q"])?;
        anyhow::ensure!(image_bytes.is_empty(), "a fresh engine holds images");
        let edge = EdgeProcess::start(&env, &operator, &name, &[])?;
        let node = edge.node();
        let _sweeper = ContainerSweeper::new(&env, std::slice::from_ref(&node));
        wait_providers_ready(&client, &operator, &[&name]).await?;
        let c = time_to_running(&pods, &format!("cold-{round}"), &node, &image).await?;
        cold.push(c);
        delete(&pods, &format!("cold-{round}")).await?;
        let w = time_to_running(&pods, &format!("warm-{round}"), &node, &image).await?;
        warm.push(w);
        delete(&pods, &format!("warm-{round}")).await?;
        eprintln!(
            "pull round {round}: engine {} ms, cold {} ms, warm {} ms",
            engine_start[round].as_millis(),
            c.as_millis(),
            w.as_millis()
        );
    }
    let (c, w, e) = (
        Summary::of(&cold),
        Summary::of(&warm),
        Summary::of(&engine_start),
    );
    report.row(Row::info(
        format!("cold (fresh engine, image pulled): pod created → Running, p50 of {rounds}"),
        ms(c.p50),
    ));
    report.row(Row::info(
        format!("warm (image in the engine): pod created → Running, p50 of {rounds}"),
        ms(w.p50),
    ));
    report.row(Row::info(
        format!("a fresh dockerd started and answering, p50 of {rounds}"),
        ms(e.p50),
    ));
    let size = crate::cluster::docker_image_size(&image).unwrap_or_default();
    report.set(
        "pull",
        json!({"rounds": rounds, "cold": c.to_json(), "warm": w.to_json(),
               "engine_start": e.to_json(), "image": image, "image_size": size}),
    );
    report.note(format!(
        "one real edge-kubelet per round on a Docker engine of its own, {image} ({size}) from the \
         environment's loopback docker-registry; polled every 10 ms from the create call"
    ));
    Ok(report)
}
