//! A SIMULATED runtime: fake containers in memory, for scale benchmarks only.
//!
//! Nothing runs. Containers move through the same states as real ones with realistic delays
//! (pull, create, start, stop), get fake pod IPs, and can be told to exit: a container whose
//! env has `SIM_EXIT_AFTER_MS=<ms>` exits after that long with `SIM_EXIT_CODE` (default 0).
//! Images whose name contains `does-not-exist` fail to pull. Thousands of edges, each with its
//! own [`SimulatedRuntime`], fit in one process.

use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use bytes::Bytes;
use futures::StreamExt;
use futures::stream::BoxStream;
use parking_lot::{Mutex, MutexGuard};
use tokio::sync::broadcast;
use tokio_stream::wrappers::BroadcastStream;

use decloud_proto as pb;

use super::container_runtime::ContainerRuntime;
use super::types::{
    ContainerInfo, ContainerUsage, CreateRequest, LogOptions, PodNetwork, ProbeTarget, RuntimeEvent,
};
use crate::clock::now_millis;
use crate::error::{Error, Result};

/// Delays the simulated engine takes for each operation.
#[derive(Debug, Clone, Copy)]
pub struct SimulatedTimings {
    /// Pulling an image not yet present.
    pub pull: Duration,
    /// Creating a container.
    pub create: Duration,
    /// Starting a container.
    pub start: Duration,
    /// A container reacting to SIGTERM (capped by the grace period).
    pub stop: Duration,
}

impl Default for SimulatedTimings {
    fn default() -> Self {
        SimulatedTimings {
            pull: Duration::from_millis(300),
            create: Duration::from_millis(20),
            start: Duration::from_millis(50),
            stop: Duration::from_millis(100),
        }
    }
}

#[derive(Default)]
struct SimState {
    images: HashSet<String>,
    containers: HashMap<String, SimContainer>,
    next_id: u64,
}

struct SimContainer {
    info: ContainerInfo,
    env: HashMap<String, String>,
    exit_task: Option<tokio::task::AbortHandle>,
}

/// The simulated engine of one edge.
#[derive(Clone)]
pub struct SimulatedRuntime {
    node: String,
    timings: SimulatedTimings,
    state: Arc<Mutex<SimState>>,
    events: broadcast::Sender<RuntimeEvent>,
}

impl std::fmt::Debug for SimulatedRuntime {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SimulatedRuntime")
            .field("node", &self.node)
            .finish()
    }
}

impl SimulatedRuntime {
    /// A fresh simulated engine for node `node`.
    pub fn new(node: &str, timings: SimulatedTimings) -> Self {
        SimulatedRuntime {
            node: node.to_string(),
            timings,
            state: Arc::default(),
            events: broadcast::channel(1024).0,
        }
    }

    fn lock(&self) -> MutexGuard<'_, SimState> {
        self.state.lock()
    }

    fn exit(&self, id: &str, code: i32) {
        let pod_uid = {
            let mut st = self.lock();
            let Some(c) = st.containers.get_mut(id) else {
                return;
            };
            if !c.info.running {
                return;
            }
            c.info.running = false;
            c.info.exit_code = code;
            c.info.finished_unix_millis = now_millis();
            if let Some(t) = c.exit_task.take() {
                t.abort();
            }
            c.info.pod_uid.clone()
        };
        let _ = self.events.send(RuntimeEvent::Died {
            pod_uid,
            container_id: id.to_string(),
        });
    }
}

#[async_trait]
impl ContainerRuntime for SimulatedRuntime {
    fn name(&self) -> &'static str {
        "simulated"
    }

    async fn version(&self) -> Result<String> {
        Ok(format!("simulated://{}", crate::AGENT_VERSION))
    }

    async fn prepare(&self) -> Result<()> {
        Ok(())
    }

    async fn pod_cidr(&self) -> Option<String> {
        // Where `create_container` hands out addresses (10.88.0.0 – 10.187.255.255).
        Some("10.0.0.0/8".into())
    }

    async fn ensure_image(&self, image: &str, policy: pb::PullPolicy) -> Result<()> {
        let present = self.lock().images.contains(image);
        match policy {
            pb::PullPolicy::IfNotPresent | pb::PullPolicy::Never if present => return Ok(()),
            pb::PullPolicy::Never => {
                return Err(Error::ImagePull {
                    reason: "ErrImageNeverPull",
                    message: format!("simulated: image {image} is not present"),
                });
            }
            _ => {}
        }
        tokio::time::sleep(self.timings.pull).await;
        if image.contains("does-not-exist") {
            return Err(Error::ImagePull {
                reason: "ErrImagePull",
                message: format!("simulated: pull access denied for {image}"),
            });
        }
        self.lock().images.insert(image.to_string());
        Ok(())
    }

    async fn create_container(&self, req: CreateRequest<'_>) -> Result<String> {
        tokio::time::sleep(self.timings.create).await;
        let mut st = self.lock();
        st.next_id += 1;
        let n = st.next_id;
        let id = format!("sim{n:013x}");
        let ip = match req.network {
            PodNetwork::Own => Some(format!(
                "10.{}.{}.{}",
                88 + (n >> 16) % 100,
                (n >> 8) % 256,
                n % 256
            )),
            PodNetwork::JoinContainer(_) => None,
        };
        let info = ContainerInfo {
            id: id.clone(),
            pod_uid: req.pod.uid.clone(),
            pod_namespace: req.pod.namespace.clone(),
            pod_name: req.pod.name.clone(),
            container_name: req.container.name.clone(),
            restart_count: req.restart_count,
            spec_hash: req.pod.spec_hash.clone(),
            image: req.container.image.clone(),
            image_id: format!("sim:{}", req.container.image),
            created_unix_millis: now_millis(),
            ip,
            ..Default::default()
        };
        let env = req
            .container
            .env
            .iter()
            .map(|e| (e.name.clone(), e.value.clone()))
            .collect();
        st.containers.insert(
            id.clone(),
            SimContainer {
                info,
                env,
                exit_task: None,
            },
        );
        Ok(id)
    }

    async fn start_container(&self, id: &str) -> Result<()> {
        tokio::time::sleep(self.timings.start).await;
        let (pod_uid, exit_after) = {
            let mut st = self.lock();
            let c = st
                .containers
                .get_mut(id)
                .ok_or_else(|| Error::NotFound(id.to_string()))?;
            c.info.running = true;
            c.info.started_unix_millis = now_millis();
            c.info.finished_unix_millis = 0;
            let exit_after = c
                .env
                .get("SIM_EXIT_AFTER_MS")
                .and_then(|v| v.parse::<u64>().ok())
                .map(|ms| {
                    let code = c
                        .env
                        .get("SIM_EXIT_CODE")
                        .and_then(|v| v.parse().ok())
                        .unwrap_or(0);
                    (Duration::from_millis(ms), code)
                });
            (c.info.pod_uid.clone(), exit_after)
        };
        if let Some((after, code)) = exit_after {
            let me = self.clone();
            let cid = id.to_string();
            let task = tokio::spawn(async move {
                tokio::time::sleep(after).await;
                me.exit(&cid, code);
            });
            if let Some(c) = self.lock().containers.get_mut(id) {
                c.exit_task = Some(task.abort_handle());
            }
        }
        let _ = self.events.send(RuntimeEvent::Started {
            pod_uid,
            container_id: id.to_string(),
        });
        Ok(())
    }

    async fn inspect_container(&self, id: &str) -> Result<ContainerInfo> {
        self.lock()
            .containers
            .get(id)
            .map(|c| c.info.clone())
            .ok_or_else(|| Error::NotFound(id.to_string()))
    }

    /// SIMULATED counters: 1 % of a core and 8 MiB while running.
    async fn usage(&self, id: &str) -> Result<Option<ContainerUsage>> {
        let c = self.lock();
        let Some(c) = c.containers.get(id).filter(|c| c.info.running) else {
            return Ok(None);
        };
        let secs = (now_millis() - c.info.started_unix_millis).max(0) as f64 / 1000.0;
        Ok(Some(ContainerUsage {
            cpu_seconds: secs * 0.01,
            memory_bytes: 8 << 20,
        }))
    }

    async fn list_containers(&self) -> Result<Vec<ContainerInfo>> {
        Ok(self
            .lock()
            .containers
            .values()
            .map(|c| c.info.clone())
            .collect())
    }

    async fn stop_container(&self, id: &str, grace: Duration) -> Result<()> {
        let running = self
            .lock()
            .containers
            .get(id)
            .is_some_and(|c| c.info.running);
        if running {
            // A well-behaved process exits on SIGTERM (143); past the grace period it is killed.
            let code = if self.timings.stop <= grace { 143 } else { 137 };
            tokio::time::sleep(self.timings.stop.min(grace)).await;
            self.exit(id, code);
        }
        Ok(())
    }

    async fn remove_container(&self, id: &str) -> Result<()> {
        if let Some(c) = self.lock().containers.remove(id)
            && let Some(t) = c.exit_task
        {
            t.abort();
        }
        Ok(())
    }

    fn events(&self) -> BoxStream<'static, RuntimeEvent> {
        BroadcastStream::new(self.events.subscribe())
            .map(|r| r.unwrap_or(RuntimeEvent::Resync))
            .boxed()
    }

    async fn exec(&self, id: &str, _cmd: &[String], _timeout: Duration) -> Result<i64> {
        let running = self
            .lock()
            .containers
            .get(id)
            .is_some_and(|c| c.info.running);
        Ok(if running { 0 } else { 1 })
    }

    fn logs(&self, id: &str, _opts: LogOptions) -> BoxStream<'static, Result<Bytes>> {
        let line = self
            .lock()
            .containers
            .get(id)
            .map(|c| {
                format!(
                    "simulated container {} of pod {}\n",
                    c.info.container_name, c.info.pod_name
                )
            })
            .ok_or_else(|| Error::NotFound(id.to_string()));
        futures::stream::once(async move { line.map(Bytes::from) }).boxed()
    }

    /// Simulated probes pass while the container runs: there is no process to ask.
    async fn probe(
        &self,
        target: ProbeTarget<'_>,
        _probe: &pb::Probe,
    ) -> std::result::Result<(), String> {
        let running = self
            .lock()
            .containers
            .get(target.container_id)
            .is_some_and(|c| c.info.running);
        if running {
            Ok(())
        } else {
            Err("container is not running".into())
        }
    }
}
