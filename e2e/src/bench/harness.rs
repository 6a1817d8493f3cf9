//! What the scenarios share: options, Workload manifests, a pod watch that timestamps
//! creation and readiness, and waits on Workloads.

use std::{
    collections::HashMap,
    sync::{Arc, Mutex},
    time::{Duration, Instant},
};

use anyhow::{Context as _, bail, ensure};
use decloud_crds::contracts::WORKLOAD_LABEL;
use decloud_crds::{Workload, find_condition};
use futures::StreamExt;
use k8s_openapi::api::core::v1::Pod;
use kube::{
    Api, Client, ResourceExt,
    api::{DeleteParams, ListParams, PostParams},
    runtime::watcher,
};
use serde_json::{Value, json};

use crate::eventually;

/// Namespace every scenario uses.
pub const NS: &str = "default";

/// Options shared by every scenario.
#[derive(Debug, Clone, Default)]
pub struct Opts {
    /// Small counts and short windows, for a smoke run.
    pub quick: bool,
    /// `scale`: (edges, pods per edge) to run instead of the default plan.
    pub scale_sizes: Vec<(usize, usize)>,
    /// `scale`: the operator's `--node-lease-renew`, if not its default.
    pub node_lease_renew: Option<String>,
    /// `scale`: the heartbeat interval of the second steady-state window (default 500ms).
    pub second_heartbeat: Option<String>,
    /// `tunnel`: MiB per bulk transfer, if not the default.
    pub tunnel_mib: Option<u32>,
}

/// The busybox test image in the environment's registry (edges pull it into their engines).
pub fn test_image() -> String {
    crate::cluster::busybox_image().expect("the busybox test image in the test registry")
}

/// A container that idles and stops at once on SIGTERM.
pub fn sleeper() -> Value {
    json!({
        "name": "main", "image": test_image(), "imagePullPolicy": "IfNotPresent",
        "command": ["/bin/sh", "-c", "trap 'exit 0' TERM; while true; do sleep 1; done"],
        "resources": {"requests": {"cpu": "10m", "memory": "8Mi"}, "limits": {"cpu": "100m", "memory": "32Mi"}},
    })
}

/// A busybox httpd on 8080 serving `/` and `/big` (`big_mib` MiB) and accepting uploads on
/// `/cgi-bin/sink`, ready when `/` answers (probe every `probe_period` s).
pub fn web_server(big_mib: u32, probe_period: u32) -> Value {
    let setup = format!(
        "mkdir -p /tmp/w/cgi-bin && echo hello >/tmp/w/index.html && \
         dd if=/dev/zero of=/tmp/w/big bs=1048576 count={big_mib} 2>/dev/null && \
         echo '#!/bin/sh' >/tmp/w/cgi-bin/sink && \
         echo '/bin/head -c \"$CONTENT_LENGTH\" >/dev/null; echo Content-Type: text/plain; echo; echo ok' \
           >>/tmp/w/cgi-bin/sink && chmod +x /tmp/w/cgi-bin/sink && \
         exec httpd -f -p 8080 -h /tmp/w"
    );
    json!({
        "name": "web", "image": test_image(), "imagePullPolicy": "IfNotPresent",
        "command": ["/bin/sh", "-c", setup],
        "ports": [{"name": "http", "containerPort": 8080, "protocol": "TCP"}],
        "resources": {"requests": {"cpu": "10m", "memory": "8Mi"}, "limits": {"cpu": "1", "memory": "256Mi"}},
        "readinessProbe": {"httpGet": {"path": "/", "port": 8080}, "periodSeconds": probe_period},
    })
}

/// A Workload manifest with `replicas` copies of `container`.
pub fn workload(
    name: &str,
    replicas: i32,
    spread: &str,
    container: Value,
    grace_seconds: Option<i64>,
) -> anyhow::Result<Workload> {
    let exposes = container["ports"][0]["containerPort"].as_i64();
    let mut spec = json!({
        "replicas": replicas,
        "template": {"metadata": {"labels": {"app": name}}, "spec": {
            "terminationGracePeriodSeconds": 2, "containers": [container]}},
        "placement": {"spread": spread},
    });
    if let Some(port) = exposes {
        spec["expose"] = json!({"port": port});
    }
    if let Some(g) = grace_seconds {
        spec["failover"] = json!({"graceSeconds": g});
    }
    Ok(serde_json::from_value(json!({
        "apiVersion": "decloud.dev/v1alpha1", "kind": "Workload",
        "metadata": {"name": name, "namespace": NS}, "spec": spec,
    }))?)
}

/// Creates `wl`.
pub async fn create_workload(client: &Client, wl: &Workload) -> anyhow::Result<()> {
    Api::<Workload>::namespaced(client.clone(), NS)
        .create(&PostParams::default(), wl)
        .await?;
    Ok(())
}

/// Whether Workload `name` is Available with all `replicas` ready and status current.
pub async fn check_workload_ready(client: &Client, name: &str) -> anyhow::Result<()> {
    let wl = Api::<Workload>::namespaced(client.clone(), NS)
        .get(name)
        .await?;
    let want = wl.spec.replicas;
    let status = wl.status.clone().context("no status")?;
    ensure!(
        status.ready_replicas == want,
        "{name}: {}/{want} ready",
        status.ready_replicas
    );
    ensure!(
        status.observed_generation == wl.metadata.generation,
        "{name}: status is stale"
    );
    ensure!(
        find_condition(&status.conditions, "Available").is_some_and(|c| c.is_true()),
        "{name}: not Available"
    );
    Ok(())
}

/// Deletes Workload `name` and waits until it and its pods are gone.
pub async fn delete_workload(client: &Client, name: &str, timeout: Duration) -> anyhow::Result<()> {
    let wls = Api::<Workload>::namespaced(client.clone(), NS);
    if wls.get_opt(name).await?.is_some() {
        wls.delete(name, &DeleteParams::default()).await?;
    }
    let pods = Api::<Pod>::namespaced(client.clone(), NS);
    eventually(timeout, || async {
        let left = pods
            .list(&ListParams::default().labels(&format!("{WORKLOAD_LABEL}={name}")))
            .await?;
        ensure!(left.items.is_empty(), "{} pods left", left.items.len());
        ensure!(wls.get_opt(name).await?.is_none(), "Workload still there");
        Ok(())
    })
    .await
}

/// When the watch first saw each pod, and first saw it Ready.
#[derive(Debug, Clone, Default)]
pub struct PodTimes {
    /// First seen (creation observed).
    pub seen: Option<Instant>,
    /// First seen with condition Ready=True.
    pub ready: Option<Instant>,
    /// Node it is bound to.
    pub node: String,
    /// Pod IP, once reported.
    pub pod_ip: String,
    /// Deletion observed.
    pub deleted: bool,
}

/// A watch on pods matching a label selector, recording [`PodTimes`] by pod name.
pub struct PodTimeline {
    times: Arc<Mutex<HashMap<String, PodTimes>>>,
    task: tokio::task::JoinHandle<()>,
}

impl PodTimeline {
    /// Starts watching pods matching `selector` and returns once the initial list is in.
    pub async fn start(client: &Client, selector: &str) -> anyhow::Result<Self> {
        let times: Arc<Mutex<HashMap<String, PodTimes>>> = Arc::default();
        let (init_tx, init_rx) = tokio::sync::oneshot::channel();
        let api = Api::<Pod>::namespaced(client.clone(), NS);
        let cfg = watcher::Config::default().labels(selector);
        let t = times.clone();
        let task = tokio::spawn(async move {
            let mut init_tx = Some(init_tx);
            let mut stream = watcher(api, cfg).boxed();
            while let Some(ev) = stream.next().await {
                let now = Instant::now();
                let (pod, deleted) = match ev {
                    Ok(watcher::Event::Apply(p)) | Ok(watcher::Event::InitApply(p)) => (p, false),
                    Ok(watcher::Event::Delete(p)) => (p, true),
                    Ok(watcher::Event::InitDone) => {
                        if let Some(tx) = init_tx.take() {
                            let _ = tx.send(());
                        }
                        continue;
                    }
                    _ => continue,
                };
                let mut map = t.lock().expect("timeline");
                let e = map.entry(pod.name_any()).or_default();
                e.seen.get_or_insert(now);
                e.deleted |= deleted || pod.metadata.deletion_timestamp.is_some();
                if let Some(n) = pod.spec.as_ref().and_then(|s| s.node_name.clone()) {
                    e.node = n;
                }
                if let Some(ip) = pod.status.as_ref().and_then(|s| s.pod_ip.clone()) {
                    e.pod_ip = ip;
                }
                if e.ready.is_none() && pod_ready(&pod) {
                    e.ready = Some(now);
                }
            }
        });
        tokio::time::timeout(Duration::from_secs(30), init_rx)
            .await
            .context("pod watch did not start")??;
        Ok(PodTimeline { times, task })
    }

    /// A copy of what was seen so far.
    pub fn snapshot(&self) -> HashMap<String, PodTimes> {
        self.times.lock().expect("timeline").clone()
    }

    /// Forgets everything seen so far.
    pub fn clear(&self) {
        self.times.lock().expect("timeline").clear();
    }
}

impl Drop for PodTimeline {
    fn drop(&mut self) {
        self.task.abort();
    }
}

pub use crate::cluster::pod_ready;

/// Runs `f` until it is `Ok` or `timeout` passes, polling every `every`; the time it took.
pub async fn time_until<F, Fut>(
    timeout: Duration,
    every: Duration,
    mut f: F,
) -> anyhow::Result<Duration>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = anyhow::Result<()>>,
{
    let start = Instant::now();
    loop {
        match f().await {
            Ok(()) => return Ok(start.elapsed()),
            Err(e) if start.elapsed() > timeout => {
                bail!("still failing after {timeout:?}: {e:#}")
            }
            Err(_) => tokio::time::sleep(every).await,
        }
    }
}
