//! One task per pod: drives the pod's containers through the lifecycle state machine
//! ([`super::lifecycle`]) and publishes the pod's status whenever it changes.
//!
//! Engine calls that may take long (pulls, create+start) run as child tasks and report back
//! through a channel tagged with a generation number, so the worker never blocks on them and
//! results from before a spec change or a termination are ignored.

use std::sync::Arc;
use std::time::Duration;

use tokio::sync::{mpsc, oneshot};
use tokio::task::{JoinHandle, JoinSet};
use tokio::time::Instant;

use decloud_proto as pb;

use super::config_volumes::PodFiles;
use super::kubelet_events::{self, KubeletEvent};
use super::lifecycle::{
    Action, BackoffPolicy, ContainerEvent, ContainerLifecycle, FailureMemory, RestartPolicy,
    TerminatedInfo, pod_phase,
};
use super::persistent::{self, NO_VOLUME_STORE, PersistentMount};
use super::readiness::{ProbeKind, ProbeOutcome, ReadinessChange, liveness_loop, readiness_loop};
use super::status_board::StatusBoard;
use super::storage::{ContainerDisk, EVICTED, eviction};
use super::usage::UsageMeter;
use crate::clock::now_millis;
use crate::error::{Error, Result};
use crate::images::ImagePolicy;
use crate::runtime::{
    BindMount, ContainerInfo, ContainerRuntime, CreateRequest, PodNetwork, RuntimeEvent,
};

/// kubelet's runAsNonRoot verification: the container's user (its runAsUser, else the
/// image's) must be a non-zero numeric uid.
fn non_root_check(
    sc: &pb::SecurityContext,
    image_user: Option<&str>,
    pod: &pb::PodSpec,
    container: &str,
) -> Result<()> {
    let pod_desc = format!("{}_{}({})", pod.name, pod.namespace, pod.uid);
    let as_root = || {
        Err(Error::CreateContainerConfig(format!(
            "container has runAsNonRoot and image will run as root (pod: {pod_desc:?}, container: {container})"
        )))
    };
    match sc.run_as_user {
        Some(0) => Err(Error::CreateContainerConfig(format!(
            "container's runAsUser breaks non-root policy (pod: {pod_desc:?}, container: {container})"
        ))),
        Some(_) => Ok(()),
        None => {
            let user = image_user.unwrap_or_default();
            let user = user.split(':').next().unwrap_or_default();
            match user.parse::<u64>() {
                Ok(0) => as_root(),
                Ok(_) => Ok(()),
                Err(_) if user.is_empty() || user == "root" => as_root(),
                Err(_) => Err(Error::CreateContainerConfig(format!(
                    "container has runAsNonRoot and image has non-numeric user ({user}), cannot verify user is non-root (pod: {pod_desc:?}, container: {container})"
                ))),
            }
        }
    }
}

/// What a container is created with from its pod's configuration: its environment (when it
/// comes from there), its mounts, and its persistent volumes' mounts (ensured on disk by the
/// create task, off the worker: mkfs and mount block).
struct Prepared {
    env: Option<Vec<pb::EnvVar>>,
    mounts: Vec<BindMount>,
    persistent: Vec<PersistentMount>,
}

/// The folder name of pod `uid`.
fn pod_folder(uid: &str) -> String {
    uid.replace(['/', '.'], "_")
}

/// Why a config volume cannot be mounted on this edge.
const NO_CONFIG_DIR: &str =
    "this edge has no tmpfs for configMap and secret volumes (edge-kubelet --config-dir)";

/// Tunables of pod workers.
#[derive(Debug, Clone)]
pub struct PodWorkerConfig {
    /// Back-off for pulls, creates and crash loops.
    pub backoff: BackoffPolicy,
    /// Fallback re-inspection of running containers, in case an engine event was missed.
    pub poll_interval: Duration,
    /// Images the provider allows (`--allowed-images`); others fail with `ImageNotAllowed`.
    pub allowed_images: ImagePolicy,
    /// Pods admitted at once (`--max-pods`); the supervisor fails more with `OutOfpods`.
    /// 0: no limit.
    pub max_pods: usize,
    /// Offered CPU (millicores): pods whose requests do not fit, or whose limits exceed it,
    /// fail with `OutOfcpu`. 0: no limit.
    pub offered_cpu_millis: i64,
    /// Offered memory (bytes), likewise with `OutOfmemory`. 0: no limit.
    pub offered_memory_bytes: i64,
    /// Offered ephemeral storage (bytes), likewise with `OutOfephemeral-storage`. 0: no limit.
    pub offered_storage_bytes: i64,
    /// Storage bound of a pod that sets no `ephemeral-storage` limit (bytes); above it the pod
    /// is evicted. 0: none.
    pub default_pod_storage_bytes: i64,
    /// Where pods' configMap/secret volumes are written: a tmpfs (`--config-dir`, checked at
    /// start). `None`: this edge cannot mount such volumes (their containers fail with
    /// `CreateContainerConfigError`).
    pub config_dir: Option<std::path::PathBuf>,
    /// Where pods' disk `emptyDir` volumes live (`<state-dir>/volumes`). `None`: this edge
    /// cannot mount them.
    pub volume_dir: Option<std::path::PathBuf>,
    /// The edge's persistent volumes (`<state-dir>/persistent-volumes`): they count against
    /// the storage offer and outlive pods. `None`: pods with persistent volumes fail with
    /// `CreateContainerConfigError`.
    pub persistent_volumes: Option<crate::host::VolumeStore>,
}

impl Default for PodWorkerConfig {
    fn default() -> Self {
        PodWorkerConfig {
            backoff: BackoffPolicy::default(),
            poll_interval: Duration::from_secs(10),
            allowed_images: Default::default(),
            max_pods: 0,
            offered_cpu_millis: 0,
            offered_memory_bytes: 0,
            offered_storage_bytes: 0,
            default_pod_storage_bytes: 0,
            config_dir: None,
            volume_dir: None,
            persistent_volumes: None,
        }
    }
}

/// Instructions from the pod supervisor to one worker.
#[derive(Debug)]
pub(crate) enum PodCommand {
    /// The operator sent this spec again (maybe changed).
    Update(Box<pb::PodSpec>),
    /// The pod's configuration (ConfigMaps and Secrets) is this now.
    Config(Arc<pb::PodConfig>),
    /// Stop and remove every container of the pod, then answer and end.
    Terminate {
        grace: Option<Duration>,
        done: oneshot::Sender<()>,
    },
    /// The engine reported something about one of this pod's containers.
    Runtime(RuntimeEvent),
    /// Which container id serves logs for `container` (`previous`: the one before).
    LogTarget {
        container: String,
        previous: bool,
        reply: oneshot::Sender<Option<String>>,
    },
}

/// Result of a child task, fed back into the worker.
enum OpResult {
    Image {
        slot: usize,
        result: Result<()>,
    },
    Created {
        slot: usize,
        result: Result<Box<ContainerInfo>>,
    },
    /// A persistent volume could not be mounted (its message): retried every poll interval,
    /// since what stands in the way (a volume in use, a full disk) may pass.
    VolumeFailed {
        slot: usize,
        message: String,
    },
}

/// One container of the pod.
struct Slot {
    spec: pb::ContainerSpec,
    state: ContainerLifecycle,
    memory: FailureMemory,
    restart_count: u32,
    container_id: Option<String>,
    previous_id: Option<String>,
    image_id: String,
    last_state: Option<pb::ContainerState>,
    ready: bool,
    deadline: Option<Instant>,
    /// Its probe loops (startup, or readiness and liveness).
    probes: Vec<JoinHandle<()>>,
    /// Its startup probe passed (or it has none) while it runs.
    started: bool,
    awaiting_primary: bool,
    /// Waits for the pod's configuration to arrive before it is created.
    awaiting_config: bool,
}

impl Slot {
    fn new(spec: pb::ContainerSpec) -> Self {
        Slot {
            spec,
            state: ContainerLifecycle::Pulling,
            memory: FailureMemory::default(),
            restart_count: 0,
            container_id: None,
            previous_id: None,
            image_id: String::new(),
            last_state: None,
            ready: false,
            deadline: None,
            probes: Vec::new(),
            started: false,
            awaiting_primary: false,
            awaiting_config: false,
        }
    }

    fn stop_probe(&mut self) {
        for p in self.probes.drain(..) {
            p.abort();
        }
        self.ready = false;
        self.started = false;
    }
}

fn terminated_from(info: &ContainerInfo) -> TerminatedInfo {
    TerminatedInfo::new(
        info.exit_code,
        info.oom_killed,
        info.error.clone(),
        info.started_unix_millis,
        info.finished_unix_millis,
    )
}

/// The task that owns one pod.
pub(crate) struct PodWorker {
    spec: pb::PodSpec,
    runtime: Arc<dyn ContainerRuntime>,
    board: Arc<StatusBoard>,
    cfg: PodWorkerConfig,
    slots: Vec<Slot>,
    pod_ip: String,
    start_unix_millis: i64,
    generation: u64,
    ops_tx: mpsc::UnboundedSender<(u64, OpResult)>,
    ops_rx: mpsc::UnboundedReceiver<(u64, OpResult)>,
    pulls: JoinSet<()>,
    creates: JoinSet<()>,
    probe_tx: mpsc::UnboundedSender<ReadinessChange>,
    probe_rx: mpsc::UnboundedReceiver<ReadinessChange>,
    usage: UsageMeter,
    /// Re-adopting containers found at start: what happens then is not news (no events).
    adopting: bool,
    /// Set once the pod is evicted (its message): the containers are gone, the pod is
    /// `Failed` for good and the worker only waits to be terminated.
    evicted: Option<String>,
    /// Bytes the containers held on disk at the last measurement.
    storage_used: i64,
    /// Told (uid, message) when this pod is evicted, so the eviction outlives a restart.
    evictions: Option<mpsc::UnboundedSender<(String, String)>>,
    /// The pod's configuration, in memory only (never logged, never in the state file).
    config: Option<Arc<pb::PodConfig>>,
    /// Why a config volume could not be written (volume name → message).
    volume_errors: std::collections::HashMap<String, String>,
}

impl PodWorker {
    pub(crate) fn new(
        spec: pb::PodSpec,
        runtime: Arc<dyn ContainerRuntime>,
        board: Arc<StatusBoard>,
        cfg: PodWorkerConfig,
    ) -> Self {
        let (ops_tx, ops_rx) = mpsc::unbounded_channel();
        let (probe_tx, probe_rx) = mpsc::unbounded_channel();
        let slots = spec.containers.iter().cloned().map(Slot::new).collect();
        PodWorker {
            spec,
            runtime,
            board,
            cfg,
            slots,
            pod_ip: String::new(),
            start_unix_millis: now_millis(),
            generation: 0,
            ops_tx,
            ops_rx,
            pulls: JoinSet::new(),
            creates: JoinSet::new(),
            probe_tx,
            probe_rx,
            usage: UsageMeter::default(),
            adopting: false,
            evicted: None,
            storage_used: 0,
            evictions: None,
            config: None,
            volume_errors: Default::default(),
        }
    }

    /// Starts with the configuration the operator already sent, if any.
    pub(crate) fn with_config(mut self, config: Option<Arc<pb::PodConfig>>) -> Self {
        if let Some(c) = config {
            self.set_config(c);
        }
        self
    }

    fn files(&self) -> Option<PodFiles> {
        self.cfg
            .config_dir
            .as_ref()
            .map(|d| PodFiles::new(d, &self.spec.uid))
    }

    /// Takes `config` and writes the config volumes' files (an atomic swap per volume).
    fn set_config(&mut self, config: Arc<pb::PodConfig>) {
        self.volume_errors.clear();
        let files = self.files();
        for v in &config.volumes {
            let is_config = self.spec.volumes.iter().any(|s| {
                s.name == v.name && matches!(s.source, Some(pb::volume::Source::Config(_)))
            });
            if !is_config {
                continue;
            }
            let result = match &files {
                Some(f) => f.write_volume(&v.name, &v.files),
                None => Err(NO_CONFIG_DIR.to_string()),
            };
            if let Err(message) = result {
                tracing::warn!(pod = %self.key(), volume = %v.name, %message, "cannot write a config volume");
                self.volume_errors.insert(v.name.clone(), message);
            }
        }
        self.config = Some(config);
    }

    /// New configuration: files follow at once; containers waiting for it are created, and
    /// those that failed for want of it are retried.
    fn on_config(&mut self, config: Arc<pb::PodConfig>) {
        self.set_config(config);
        for i in 0..self.slots.len() {
            if self.slots[i].awaiting_config {
                self.slots[i].awaiting_config = false;
                self.spawn_create(i);
            } else if matches!(
                self.slots[i].state,
                ContainerLifecycle::ConfigError { .. }
                    | ContainerLifecycle::ImagePullBackOff { .. }
            ) {
                // (A pull that failed may succeed with the credentials just received.)
                self.slots[i].deadline = Some(Instant::now());
            }
        }
    }

    /// The folder of emptyDir `name` (created): on the edge's tmpfs for `medium: Memory`,
    /// under the volume folder otherwise.
    fn empty_dir(
        &self,
        name: &str,
        memory: bool,
    ) -> std::result::Result<std::path::PathBuf, String> {
        if memory {
            let files = self.files().ok_or_else(|| NO_CONFIG_DIR.to_string())?;
            files.memory_dir(name)
        } else {
            let base = self
                .cfg
                .volume_dir
                .as_ref()
                .ok_or_else(|| "this edge has no folder for emptyDir volumes".to_string())?;
            super::config_volumes::empty_dir_at(&base.join(pod_folder(&self.spec.uid)), name)
        }
    }

    /// Measures the pod's emptyDirs; one above its `sizeLimit` evicts the pod, in kubelet's
    /// words.
    async fn check_empty_dirs(&mut self) {
        let mut over = None;
        for v in &self.spec.volumes {
            let Some(pb::volume::Source::EmptyDir(e)) = &v.source else {
                continue;
            };
            if e.size_limit_bytes <= 0 {
                continue;
            }
            let Ok(dir) = self.empty_dir(&v.name, e.memory) else {
                continue;
            };
            let used = tokio::task::spawn_blocking(move || super::config_volumes::dir_usage(&dir))
                .await
                .ok()
                .flatten();
            if used.is_none_or(|u| u > e.size_limit_bytes as u64) {
                over = Some(format!(
                    "Usage of EmptyDir volume {:?} exceeds the limit {:?}. ",
                    v.name,
                    decloud_crds::quantity::format_bytes(e.size_limit_bytes)
                ));
                break;
            }
        }
        let Some(message) = over else { return };
        tracing::warn!(pod = %self.key(), %message, "evicting pod for its emptyDir use");
        if let Some(tx) = &self.evictions {
            let _ = tx.send((self.spec.uid.clone(), message.clone()));
        }
        self.evict(message).await;
    }

    /// Container `i`'s environment (when it comes from the configuration) and mounts:
    /// `Ok(None)` while the configuration has not arrived, `Err` with kubelet's message when it
    /// cannot start.
    fn container_config(&self, i: usize) -> std::result::Result<Option<Prepared>, String> {
        let c = &self.slots[i].spec;
        let env = if self.spec.needs_config {
            let Some(config) = &self.config else {
                return Ok(None);
            };
            let Some(cc) = config.containers.iter().find(|x| x.name == c.name) else {
                return Err(format!("no configuration for container {:?}", c.name));
            };
            if !cc.error.is_empty() {
                return Err(cc.error.clone());
            }
            Some(cc.env.clone())
        } else {
            None
        };
        let files = self.files();
        let mut mounts = Vec::new();
        let mut pending = Vec::new();
        for (n, m) in c.volume_mounts.iter().enumerate() {
            let Some(volume) = self.spec.volumes.iter().find(|v| v.name == m.name) else {
                return Err(format!(
                    "volumeMount {:?} names no volume of the pod",
                    m.name
                ));
            };
            match &volume.source {
                Some(pb::volume::Source::Config(_)) => {
                    let Some(files) = &files else {
                        return Err(NO_CONFIG_DIR.to_string());
                    };
                    if let Some(e) = self.volume_errors.get(&m.name) {
                        return Err(e.clone());
                    }
                    let source = if m.sub_path.is_empty() {
                        files.volume_dir(&m.name)
                    } else {
                        files.sub_path_copy(&m.name, &m.sub_path, &c.name, n)?
                    };
                    mounts.push(BindMount {
                        source: source.display().to_string(),
                        target: m.mount_path.clone(),
                        // configMap and secret volumes are always read-only (as in kubelet).
                        read_only: true,
                    });
                }
                Some(pb::volume::Source::EmptyDir(e)) => {
                    let dir = self.empty_dir(&m.name, e.memory)?;
                    let source = if m.sub_path.is_empty() {
                        dir
                    } else {
                        super::config_volumes::empty_sub_path(&dir, &m.sub_path)?
                    };
                    mounts.push(BindMount {
                        source: source.display().to_string(),
                        target: m.mount_path.clone(),
                        read_only: m.read_only,
                    });
                }
                Some(pb::volume::Source::Persistent(p)) => {
                    if self.cfg.persistent_volumes.is_none() {
                        return Err(format!(
                            "persistent volume {:?}: {NO_VOLUME_STORE}",
                            p.claim_name
                        ));
                    }
                    persistent::check_volume(p)?;
                    if !m.sub_path.is_empty() {
                        persistent::check_sub_path(&p.claim_name, &m.sub_path)?;
                    }
                    pending.push(PersistentMount {
                        id: p.id.clone(),
                        size_bytes: p.size_bytes,
                        claim_name: p.claim_name.clone(),
                        sub_path: m.sub_path.clone(),
                        target: m.mount_path.clone(),
                        read_only: m.read_only,
                    });
                }
                None => {}
            }
        }
        Ok(Some(Prepared {
            env,
            mounts,
            persistent: pending,
        }))
    }

    /// Mounts the pod's persistent volumes again if the machine's mount is gone (a reboot, or
    /// someone unmounted it): containers re-adopted or created later find the same data.
    async fn ensure_persistent_volumes(&self) {
        let Some(store) = self.cfg.persistent_volumes.clone() else {
            return;
        };
        let volumes = persistent::pod_volumes(&self.spec);
        if volumes.is_empty() {
            return;
        }
        let key = self.key();
        let _ = tokio::task::spawn_blocking(move || {
            for (id, size) in volumes {
                if let Err(e) = store.ensure(&id, size) {
                    tracing::warn!(pod = %key, volume = %id, error = %e, "cannot mount a persistent volume of a re-adopted pod");
                }
            }
        })
        .await;
    }

    // === kubelet's events ===

    /// An event about container `i` of this pod, still to be given its type, reason and text.
    fn event_base(&self, i: usize) -> pb::PodEvent {
        pb::PodEvent {
            uid: self.spec.uid.clone(),
            namespace: self.spec.namespace.clone(),
            name: self.spec.name.clone(),
            container: self.slots[i].spec.name.clone(),
            ..Default::default()
        }
    }

    /// Announces kubelet's events for container `i` (the board bounds how many go out).
    fn emit(&self, i: usize, events: Vec<KubeletEvent>) {
        if self.adopting {
            return;
        }
        for e in events {
            self.board.event(pb::PodEvent {
                warning: e.warning,
                reason: e.reason.into(),
                message: e.message,
                ..self.event_base(i)
            });
        }
    }

    /// Reports evictions on `tx`.
    pub(crate) fn with_evictions(mut self, tx: mpsc::UnboundedSender<(String, String)>) -> Self {
        self.evictions = Some(tx);
        self
    }

    /// A pod evicted before the edge restarted: it stays `Failed` with `message`, and whatever
    /// of it is left on the engine is removed.
    pub(crate) fn already_evicted(mut self, message: String) -> Self {
        self.evicted = Some(message);
        self
    }

    fn key(&self) -> String {
        format!("{}/{}", self.spec.namespace, self.spec.name)
    }

    fn restart_policy(&self) -> RestartPolicy {
        RestartPolicy::from(self.spec.restart_policy())
    }

    /// Runs until terminated (containers removed) or until the supervisor goes away
    /// (the edge shuts down: containers keep running, to be re-adopted).
    pub(crate) async fn run(
        mut self,
        mut commands: mpsc::UnboundedReceiver<PodCommand>,
        adopted: Vec<ContainerInfo>,
    ) {
        if let Some(message) = self.evicted.clone() {
            self.evict(message).await;
        } else {
            self.adopt(adopted).await;
        }
        self.publish();
        let mut poll = tokio::time::interval(self.cfg.poll_interval);
        poll.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        poll.tick().await;
        loop {
            let deadline = self.slots.iter().filter_map(|s| s.deadline).min();
            tokio::select! {
                cmd = commands.recv() => match cmd {
                    None => {
                        self.abandon();
                        return;
                    }
                    Some(PodCommand::Update(_)) | Some(PodCommand::Runtime(_)) if self.evicted.is_some() => {}
                    Some(PodCommand::Update(spec)) => self.update(*spec).await,
                    Some(PodCommand::Config(config)) => self.on_config(config),
                    Some(PodCommand::Terminate { grace, done }) => {
                        self.terminate(grace).await;
                        let _ = done.send(());
                        return;
                    }
                    Some(PodCommand::Runtime(ev)) => self.on_runtime_event(ev).await,
                    Some(PodCommand::LogTarget { container, previous, reply }) => {
                        let slot = self.slots.iter().find(|s| s.spec.name == container);
                        let id = slot.and_then(|s| if previous { s.previous_id.clone() } else { s.container_id.clone() });
                        let _ = reply.send(id);
                    }
                },
                Some((generation, op)) = self.ops_rx.recv() => {
                    if generation == self.generation {
                        self.on_op(op).await;
                    }
                }
                Some(change) = self.probe_rx.recv() => self.on_readiness(change),
                _ = tokio::time::sleep_until(deadline.unwrap_or_else(Instant::now)), if deadline.is_some() && self.evicted.is_none() => {
                    self.fire_timers();
                }
                _ = poll.tick(), if self.evicted.is_none() => self.poll().await,
            }
            while self.pulls.try_join_next().is_some() {}
            while self.creates.try_join_next().is_some() {}
            self.publish();
        }
    }

    // === lifecycle ===

    fn apply(&mut self, i: usize, event: ContainerEvent) {
        let policy = self.restart_policy();
        let backoff = self.cfg.backoff;
        let key = self.key();
        let slot = &mut self.slots[i];
        let (next, action) = slot.memory.step(&slot.state, &event, policy, &backoff);
        if slot.state.is_running() && !next.is_running() {
            slot.stop_probe();
        }
        if action == Action::Restart
            && let ContainerLifecycle::CrashLoopBackOff { last, .. } = &slot.state
        {
            slot.last_state = Some(ContainerLifecycle::Terminated(last.clone()).to_proto());
        }
        tracing::debug!(pod = %key, container = %slot.spec.name, ?event, from = ?slot.state, to = ?next, ?action, "transition");
        let pod_desc = format!(
            "{}_{}({})",
            self.spec.name, self.spec.namespace, self.spec.uid
        );
        let events = kubelet_events::of_transition(&slot.state, &next, &slot.spec, &pod_desc);
        slot.state = next;
        self.emit(i, events);
        self.execute(i, action);
    }

    fn execute(&mut self, i: usize, action: Action) {
        match action {
            Action::None => {}
            Action::Wait(d) => self.slots[i].deadline = Some(Instant::now() + d),
            Action::PullImage => self.spawn_pull(i),
            Action::CreateAndStart => self.spawn_create(i),
            Action::Restart => {
                let slot = &mut self.slots[i];
                slot.restart_count += 1;
                // Keep the instance that just ended for `logs --previous`; the one before goes
                // (removed by the create task first, so at most two instances ever exist).
                let older = slot.previous_id.take();
                slot.previous_id = slot.container_id.take();
                self.spawn_create_after_removing(i, older);
            }
        }
    }

    fn fire_timers(&mut self) {
        let now = Instant::now();
        for i in 0..self.slots.len() {
            if self.slots[i].deadline.is_some_and(|d| d <= now) {
                self.slots[i].deadline = None;
                self.apply(i, ContainerEvent::TimerFired);
            }
        }
    }

    fn spawn_pull(&mut self, slot: usize) {
        let runtime = self.runtime.clone();
        let image = self.slots[slot].spec.image.clone();
        let policy = self.slots[slot].spec.pull_policy();
        let tx = self.ops_tx.clone();
        let generation = self.generation;
        let allowed = self.cfg.allowed_images.check(&image);
        let auth = self
            .config
            .as_ref()
            .and_then(|c| {
                c.containers
                    .iter()
                    .find(|x| x.name == self.slots[slot].spec.name)
            })
            .and_then(|c| c.pull_auth.clone());
        let board = self.board.clone();
        let base = (!self.adopting).then(|| self.event_base(slot));
        self.pulls.spawn(async move {
            let emit = |events: Vec<KubeletEvent>| {
                for e in events {
                    if let Some(base) = &base {
                        board.event(pb::PodEvent {
                            warning: e.warning,
                            reason: e.reason.into(),
                            message: e.message,
                            ..base.clone()
                        });
                    }
                }
            };
            // A refused image is never pulled, let alone run.
            let result = match allowed {
                Ok(()) => {
                    let present = runtime.image_size(&image).await.is_some();
                    let pulls = policy == pb::PullPolicy::Always
                        || (policy == pb::PullPolicy::IfNotPresent && !present);
                    if pulls {
                        emit(vec![kubelet_events::pulling(&image)]);
                    }
                    let started = Instant::now();
                    let result = runtime
                        .ensure_image_with(&image, policy, auth.as_ref())
                        .await;
                    match &result {
                        Ok(()) if pulls => {
                            let size = runtime.image_size(&image).await.unwrap_or(0);
                            emit(vec![kubelet_events::pulled(
                                &image,
                                started.elapsed(),
                                size,
                            )]);
                        }
                        Ok(()) => emit(vec![kubelet_events::already_present(&image)]),
                        Err(e) => emit(kubelet_events::pull_failed(&image, e)),
                    }
                    result
                }
                Err(e) => {
                    emit(kubelet_events::pull_failed(&image, &e));
                    Err(e)
                }
            };
            let _ = tx.send((generation, OpResult::Image { slot, result }));
        });
    }

    fn spawn_create(&mut self, slot: usize) {
        self.spawn_create_after_removing(slot, None);
    }

    fn spawn_create_after_removing(&mut self, slot: usize, older: Option<String>) {
        let network = if slot == 0 {
            PodNetwork::Own
        } else {
            match (&self.slots[0].state, &self.slots[0].container_id) {
                (ContainerLifecycle::Running { .. }, Some(id)) => {
                    PodNetwork::JoinContainer(id.clone())
                }
                _ => {
                    // Joins the pod's namespace once the first container runs.
                    self.slots[slot].awaiting_primary = true;
                    if let Some(old) = older {
                        self.spawn_remove(old);
                    }
                    return;
                }
            }
        };
        self.slots[slot].awaiting_primary = false;
        let Prepared {
            env,
            mounts,
            persistent,
        } = match self.container_config(slot) {
            Ok(Some(prepared)) => prepared,
            Ok(None) => {
                // Created once the configuration arrives.
                self.slots[slot].awaiting_config = true;
                if let Some(old) = older {
                    self.spawn_remove(old);
                }
                return;
            }
            Err(message) => {
                if let Some(old) = older {
                    self.spawn_remove(old);
                }
                self.apply(slot, ContainerEvent::ConfigFailed { message });
                return;
            }
        };
        let runtime = self.runtime.clone();
        let pod = self.spec.clone();
        let container = self.slots[slot].spec.clone();
        let restart_count = self.slots[slot].restart_count;
        let tx = self.ops_tx.clone();
        let generation = self.generation;
        let store = self.cfg.persistent_volumes.clone();
        self.creates.spawn(async move {
            let mut mounts = mounts;
            if !persistent.is_empty() {
                // Checked by container_config: a store exists when there is anything to mount.
                let ensured = match store {
                    Some(store) => tokio::task::spawn_blocking(move || {
                        persistent::resolve(&store, &persistent)
                    })
                    .await
                    .unwrap_or_else(|e| Err(format!("persistent volumes: {e}"))),
                    None => Err(NO_VOLUME_STORE.to_string()),
                };
                match ensured {
                    Ok(bind) => mounts.extend(bind),
                    Err(message) => {
                        if let Some(old) = older
                            && let Err(e) = runtime.remove_container(&old).await
                        {
                            tracing::warn!(container_id = %old, error = %e, "cannot remove old container");
                        }
                        let _ = tx.send((generation, OpResult::VolumeFailed { slot, message }));
                        return;
                    }
                }
            }
            let req = CreateRequest {
                pod: &pod,
                container: &container,
                restart_count,
                network: &network,
                env: env.as_deref(),
                mounts: &mounts,
                image_user: None,
            };
            if let Some(old) = older
                && let Err(e) = runtime.remove_container(&old).await
            {
                tracing::warn!(container_id = %old, error = %e, "cannot remove old container");
            }
            let result = async {
                let image_user = match &container.security_context {
                    Some(sc)
                        if sc.run_as_non_root
                            || (sc.run_as_group.is_some() && sc.run_as_user.is_none()) =>
                    {
                        runtime.image_user(&container.image).await
                    }
                    _ => None,
                };
                if let Some(sc) = &container.security_context
                    && sc.run_as_non_root
                {
                    non_root_check(sc, image_user.as_deref(), &pod, &container.name)?;
                }
                let req = CreateRequest {
                    image_user: image_user
                        .as_deref()
                        .map(|u| u.split(':').next().unwrap_or(u)),
                    ..req
                };
                let id = runtime.create_container(req).await?;
                if let Err(e) = runtime.start_container(&id).await {
                    let _ = runtime.remove_container(&id).await;
                    return Err(e);
                }
                runtime.inspect_container(&id).await.map(Box::new)
            }
            .await;
            let _ = tx.send((generation, OpResult::Created { slot, result }));
        });
    }

    fn spawn_remove(&self, id: String) {
        let runtime = self.runtime.clone();
        tokio::spawn(async move {
            if let Err(e) = runtime.remove_container(&id).await {
                tracing::warn!(container_id = %id, error = %e, "cannot remove old container");
            }
        });
    }

    fn spawn_stop(&self, id: String, grace: Duration) {
        let runtime = self.runtime.clone();
        tokio::spawn(async move {
            if let Err(e) = runtime.stop_container(&id, grace).await {
                tracing::warn!(container_id = %id, error = %e, "cannot stop container");
            }
        });
    }

    /// Probes a container that just started: its startup probe first, if it has one;
    /// readiness and liveness once that passed.
    fn start_probe(&mut self, i: usize) {
        self.slots[i].stop_probe();
        let (Some(startup), Some(id)) = (
            self.slots[i].spec.startup_probe.clone(),
            self.slots[i].container_id.clone(),
        ) else {
            self.slots[i].started = true;
            self.start_running_probes(i);
            return;
        };
        let task = tokio::spawn(liveness_loop(
            ProbeKind::Startup,
            self.runtime.clone(),
            i,
            id,
            self.pod_ip.clone(),
            startup,
            self.probe_tx.clone(),
            (self.board.clone(), self.event_base(i)),
        ));
        self.slots[i].probes.push(task);
    }

    /// Readiness and liveness probes of a started container.
    fn start_running_probes(&mut self, i: usize) {
        let base = self.event_base(i);
        let Some(id) = self.slots[i].container_id.clone() else {
            return;
        };
        let slot = &mut self.slots[i];
        match slot.spec.readiness_probe.clone() {
            Some(probe) => slot.probes.push(tokio::spawn(readiness_loop(
                self.runtime.clone(),
                i,
                id.clone(),
                self.pod_ip.clone(),
                probe,
                self.probe_tx.clone(),
                (self.board.clone(), base.clone()),
            ))),
            // No readiness probe: ready as soon as it runs (and started).
            None => slot.ready = true,
        }
        if let Some(probe) = slot.spec.liveness_probe.clone() {
            slot.probes.push(tokio::spawn(liveness_loop(
                ProbeKind::Liveness,
                self.runtime.clone(),
                i,
                id,
                self.pod_ip.clone(),
                probe,
                self.probe_tx.clone(),
                (self.board.clone(), base),
            )));
        }
    }

    async fn on_op(&mut self, op: OpResult) {
        match op {
            OpResult::Image { slot, result } => {
                let event = match result {
                    Ok(()) => ContainerEvent::ImageReady,
                    Err(Error::ImagePull { reason, message }) => ContainerEvent::ImagePullFailed {
                        reason: reason.to_string(),
                        message,
                    },
                    Err(e) => ContainerEvent::ImagePullFailed {
                        reason: "ErrImagePull".to_string(),
                        message: e.to_string(),
                    },
                };
                if let ContainerEvent::ImagePullFailed { message, .. } = &event {
                    tracing::warn!(pod = %self.key(), image = %self.slots[slot].spec.image, %message, "image pull failed");
                }
                self.apply(slot, event);
            }
            OpResult::Created {
                slot,
                result: Err(Error::CreateContainerConfig(message)),
            } => {
                tracing::warn!(pod = %self.key(), container = %self.slots[slot].spec.name, %message, "container's configuration forbids starting it");
                self.apply(slot, ContainerEvent::ConfigFailed { message });
            }
            OpResult::Created {
                slot,
                result: Err(e),
            } => {
                tracing::warn!(pod = %self.key(), container = %self.slots[slot].spec.name, error = %e, "cannot create container");
                let message = match e {
                    Error::CreateContainer(m) => m,
                    other => other.to_string(),
                };
                self.apply(slot, ContainerEvent::CreateFailed { message });
            }
            OpResult::Created {
                slot,
                result: Ok(info),
            } => self.on_started(slot, *info),
            OpResult::VolumeFailed { slot, message } => {
                tracing::warn!(pod = %self.key(), container = %self.slots[slot].spec.name, %message, "cannot mount a persistent volume; will retry");
                self.apply(slot, ContainerEvent::ConfigFailed { message });
                if matches!(
                    self.slots[slot].state,
                    ContainerLifecycle::ConfigError { .. }
                ) {
                    self.slots[slot].deadline = Some(Instant::now() + self.cfg.poll_interval);
                }
            }
        }
    }

    /// A container of ours was created and started (or found running at adoption).
    fn on_started(&mut self, i: usize, info: ContainerInfo) {
        tracing::info!(pod = %self.key(), container = %self.slots[i].spec.name, container_id = %info.id, restart_count = info.restart_count, "container started");
        {
            let slot = &mut self.slots[i];
            slot.container_id = Some(info.id.clone());
            slot.image_id = info.image_id.clone();
        }
        if i == 0
            && let Some(ip) = &info.ip
        {
            self.pod_ip = ip.clone();
        }
        let at = if info.started_unix_millis > 0 {
            info.started_unix_millis
        } else {
            now_millis()
        };
        self.apply(i, ContainerEvent::Started { at_unix_millis: at });
        if info.running {
            self.start_probe(i);
        } else {
            // It already ended (a fast-exiting command).
            self.apply(i, ContainerEvent::Exited(terminated_from(&info)));
        }
        if i == 0 {
            self.primary_restarted();
        }
    }

    /// The first container owns the pod's network namespace: containers waiting for it get
    /// created now; containers still joined to an old namespace are restarted.
    fn primary_restarted(&mut self) {
        let Some(primary) = self.slots[0].container_id.clone() else {
            return;
        };
        let grace = Duration::from_secs(u64::from(self.spec.termination_grace_period_seconds));
        for i in 1..self.slots.len() {
            if self.slots[i].awaiting_primary {
                self.spawn_create(i);
            } else if self.slots[i].state.is_running()
                && let Some(id) = self.slots[i].container_id.clone()
            {
                tracing::info!(pod = %self.key(), container = %self.slots[i].spec.name, %primary, "restarting container to join the pod's new network namespace");
                self.spawn_stop(id, grace);
            }
        }
    }

    fn on_readiness(&mut self, change: ReadinessChange) {
        let i = change.slot;
        let Some(slot) = self.slots.get_mut(i) else {
            return;
        };
        if slot.container_id.as_deref() != Some(change.container_id.as_str())
            || !slot.state.is_running()
        {
            return;
        }
        match change.outcome {
            ProbeOutcome::Ready(ready) => slot.ready = ready,
            ProbeOutcome::Started => {
                slot.started = true;
                self.start_running_probes(i);
            }
            ProbeOutcome::Failed(kind) => {
                // As kubelet: killed with the pod's grace period; its restart policy decides
                // what comes next (the exit is its lastState, restartCount grows).
                let name = slot.spec.name.clone();
                slot.stop_probe();
                tracing::info!(pod = %self.key(), container = %name, probe = kind.word(), "container failed its probe; killing it");
                self.emit(
                    i,
                    vec![KubeletEvent {
                        warning: false,
                        reason: "Killing",
                        message: format!(
                            "Container {name} failed {} probe, will be restarted",
                            kind.word().to_lowercase()
                        ),
                    }],
                );
                let grace =
                    Duration::from_secs(u64::from(self.spec.termination_grace_period_seconds));
                self.spawn_stop(change.container_id, grace);
            }
        }
    }

    async fn on_runtime_event(&mut self, ev: RuntimeEvent) {
        match ev {
            RuntimeEvent::Died { container_id, .. } => {
                if let Some(i) = self.slots.iter().position(|s| {
                    s.state.is_running() && s.container_id.as_deref() == Some(&container_id)
                }) {
                    self.check_running(i).await;
                }
            }
            // Starts are learnt from our own create calls.
            RuntimeEvent::Started { .. } => {}
            RuntimeEvent::Resync => self.poll().await,
        }
    }

    /// Re-inspects every running container (fallback for missed events) and samples the
    /// pod's usage.
    async fn poll(&mut self) {
        for i in 0..self.slots.len() {
            if self.slots[i].state.is_running() {
                self.check_running(i).await;
            }
        }
        self.sample_usage().await;
        self.check_empty_dirs().await;
        if self.evicted.is_none() {
            self.check_storage().await;
        }
    }

    /// Measures the containers' writable layers and logs; a pod above its bound is evicted
    /// as kubelet's eviction manager does it: killed at once (no grace), containers removed,
    /// `Failed` with reason `Evicted` for good.
    async fn check_storage(&mut self) {
        let mut usage = Vec::new();
        for slot in &self.slots {
            let Some(id) = slot.container_id.clone() else {
                continue;
            };
            match self.runtime.disk_usage(&id).await {
                Ok(Some(bytes)) => usage.push(ContainerDisk {
                    name: slot.spec.name.clone(),
                    bytes,
                }),
                // The runtime cannot tell: nothing to hold the pod to.
                Ok(None) => return,
                Err(e) => {
                    tracing::debug!(pod = %self.key(), error = %e, "storage sample failed");
                }
            }
        }
        self.storage_used = usage
            .iter()
            .fold(0i64, |a, c| a.saturating_add(c.bytes.max(0)));
        let Some(message) = eviction(&self.spec, &usage, self.cfg.default_pod_storage_bytes) else {
            return;
        };
        tracing::warn!(pod = %self.key(), ?usage, %message, "evicting pod for its storage use");
        if let Some(tx) = &self.evictions {
            let _ = tx.send((self.spec.uid.clone(), message.clone()));
        }
        self.evict(message).await;
    }

    /// Kills and removes every container at once and leaves the pod `Failed` (`Evicted`) for
    /// good.
    async fn evict(&mut self, message: String) {
        self.evicted = Some(message.clone());
        self.remove_all(Some(Duration::ZERO)).await;
        // Removed with its containers: the pod holds nothing any more.
        self.storage_used = 0;
        let now = now_millis();
        for s in &mut self.slots {
            let started = match s.state {
                ContainerLifecycle::Running {
                    started_unix_millis,
                } => started_unix_millis,
                _ => 0,
            };
            if !matches!(s.state, ContainerLifecycle::Terminated(_)) {
                s.state = ContainerLifecycle::Terminated(TerminatedInfo {
                    exit_code: 137,
                    reason: EVICTED.into(),
                    message: message.clone(),
                    started_unix_millis: started,
                    finished_unix_millis: now,
                });
            }
            s.ready = false;
            s.deadline = None;
        }
    }

    /// Adds the running containers' CPU and memory to the pod's usage meter.
    async fn sample_usage(&mut self) {
        let mut samples = Vec::new();
        for slot in self.slots.iter().filter(|s| s.state.is_running()) {
            let Some(id) = slot.container_id.clone() else {
                continue;
            };
            match self.runtime.usage(&id).await {
                Ok(Some(u)) => samples.push((id, u)),
                Ok(None) => {}
                Err(e) => tracing::debug!(pod = %self.key(), error = %e, "usage sample failed"),
            }
        }
        self.usage.record(Instant::now().into_std(), &samples);
    }

    async fn check_running(&mut self, i: usize) {
        let Some(id) = self.slots[i].container_id.clone() else {
            return;
        };
        match self.runtime.inspect_container(&id).await {
            Ok(info) if info.running => {}
            Ok(info) => {
                let t = terminated_from(&info);
                tracing::info!(pod = %self.key(), container = %self.slots[i].spec.name, exit_code = t.exit_code, reason = %t.reason, "container exited");
                self.apply(i, ContainerEvent::Exited(t));
            }
            Err(Error::NotFound(_)) => {
                let started = match self.slots[i].state {
                    ContainerLifecycle::Running {
                        started_unix_millis,
                    } => started_unix_millis,
                    _ => 0,
                };
                let t = TerminatedInfo {
                    exit_code: 137,
                    reason: "ContainerStatusUnknown".to_string(),
                    message: "the container was removed outside edge-kubelet".to_string(),
                    started_unix_millis: started,
                    finished_unix_millis: now_millis(),
                };
                self.slots[i].container_id = None;
                self.apply(i, ContainerEvent::Exited(t));
            }
            Err(e) => {
                tracing::warn!(pod = %self.key(), error = %e, "cannot inspect container; will retry");
            }
        }
    }

    // === adoption, update, termination ===

    /// Takes over containers found at start-up (left running by a previous edge process):
    /// running ones are kept as they are, ones that exited meanwhile go through the restart
    /// policy, anything stale is removed.
    async fn adopt(&mut self, adopted: Vec<ContainerInfo>) {
        if !adopted.is_empty() {
            self.ensure_persistent_volumes().await;
        }
        self.adopting = true;
        let adopted_slots = self.adopt_quietly(adopted).await;
        self.adopting = false;
        for i in 0..self.slots.len() {
            if !adopted_slots.contains(&i) {
                self.execute(i, Action::PullImage);
            }
        }
    }

    /// Takes over what runs already; returns the slots it found a container for.
    async fn adopt_quietly(&mut self, mut adopted: Vec<ContainerInfo>) -> Vec<usize> {
        adopted.sort_by(|a, b| {
            (b.restart_count, b.created_unix_millis).cmp(&(a.restart_count, a.created_unix_millis))
        });
        let mut stale = Vec::new();
        let mut mine: Vec<Vec<ContainerInfo>> = vec![Vec::new(); self.slots.len()];
        for c in adopted {
            match self
                .slots
                .iter()
                .position(|s| s.spec.name == c.container_name)
            {
                Some(i) if c.spec_hash == self.spec.spec_hash => mine[i].push(c),
                _ => stale.push(c),
            }
        }
        let mut starts = Vec::new();
        for (i, found) in mine.into_iter().enumerate() {
            let mut found = found.into_iter();
            let current = found.next();
            if let Some(prev) = found.next() {
                self.slots[i].previous_id = Some(prev.id);
            }
            stale.extend(found);
            match current {
                Some(c) if c.started_unix_millis > 0 => {
                    self.start_unix_millis = self.start_unix_millis.min(c.started_unix_millis);
                    self.slots[i].restart_count = c.restart_count;
                    self.slots[i].state = ContainerLifecycle::Creating;
                    tracing::info!(pod = %self.key(), container = %c.container_name, container_id = %c.id, running = c.running, "re-adopted container");
                    starts.push((i, c));
                }
                Some(c) => {
                    // Created but never started: the edge died mid-create. Start over.
                    self.slots[i].restart_count = c.restart_count;
                    stale.push(c);
                }
                None => {}
            }
        }
        for c in stale {
            tracing::info!(pod = %self.key(), container_id = %c.id, "removing stale container of this pod");
            let runtime = self.runtime.clone();
            tokio::spawn(async move {
                let _ = runtime.stop_container(&c.id, Duration::ZERO).await;
                let _ = runtime.remove_container(&c.id).await;
            });
        }
        // First container first: it provides the pod IP and namespace.
        starts.sort_by_key(|(i, _)| *i);
        let adopted_slots: Vec<usize> = starts.iter().map(|(i, _)| *i).collect();
        for (i, c) in starts {
            let slot = &mut self.slots[i];
            slot.container_id = Some(c.id.clone());
            slot.image_id = c.image_id.clone();
            if i == 0 {
                self.pod_ip = c.ip.clone().unwrap_or_default();
            }
            self.apply(
                i,
                ContainerEvent::Started {
                    at_unix_millis: c.started_unix_millis,
                },
            );
            if c.running {
                self.start_probe(i);
            } else {
                self.apply(i, ContainerEvent::Exited(terminated_from(&c)));
            }
        }
        adopted_slots
    }

    async fn update(&mut self, spec: pb::PodSpec) {
        if spec.spec_hash == self.spec.spec_hash && spec.containers == self.spec.containers {
            self.spec = spec;
            return;
        }
        tracing::info!(pod = %self.key(), "pod spec changed; replacing its containers");
        self.remove_all(None).await;
        self.spec = spec;
        self.slots = self
            .spec
            .containers
            .iter()
            .cloned()
            .map(Slot::new)
            .collect();
        self.pod_ip.clear();
        for i in 0..self.slots.len() {
            self.execute(i, Action::PullImage);
        }
    }

    async fn terminate(&mut self, grace: Option<Duration>) {
        tracing::info!(pod = %self.key(), ?grace, "terminating pod");
        self.remove_all(grace).await;
        // Its configuration goes with it.
        self.config = None;
        if let Some(files) = self.files() {
            files.remove();
        }
        if let Some(base) = &self.cfg.volume_dir {
            let _ = std::fs::remove_dir_all(base.join(pod_folder(&self.spec.uid)));
        }
        tracing::info!(pod = %self.key(), "pod's containers are gone");
    }

    /// Stops (with the grace period) and removes every container of this pod, including
    /// earlier instances, by asking the engine rather than trusting memory.
    async fn remove_all(&mut self, grace: Option<Duration>) {
        self.generation += 1;
        for i in 0..self.slots.len() {
            if self.slots[i].state.is_running() {
                let name = self.slots[i].spec.name.clone();
                self.emit(i, vec![kubelet_events::killing(&name)]);
            }
        }
        for s in &mut self.slots {
            s.stop_probe();
            s.deadline = None;
        }
        // A pull creates no container and may be aborted; a create must be allowed to finish,
        // or the engine could create a container after the sweep below.
        self.pulls.abort_all();
        while self.creates.join_next().await.is_some() {}
        let grace = grace.unwrap_or(Duration::from_secs(u64::from(
            self.spec.termination_grace_period_seconds,
        )));
        let mut delay = Duration::from_millis(200);
        loop {
            match self.sweep(grace).await {
                Ok(()) => return,
                Err(e) => {
                    tracing::warn!(pod = %self.key(), error = %e, "cannot remove the pod's containers yet; retrying");
                    tokio::time::sleep(delay).await;
                    delay = (delay * 2).min(Duration::from_secs(5));
                }
            }
        }
    }

    async fn sweep(&self, grace: Duration) -> Result<()> {
        let ours: Vec<ContainerInfo> = self
            .runtime
            .list_containers()
            .await?
            .into_iter()
            .filter(|c| c.pod_uid == self.spec.uid)
            .collect();
        let stops = ours
            .iter()
            .filter(|c| c.running)
            .map(|c| self.runtime.stop_container(&c.id, grace));
        for r in futures::future::join_all(stops).await {
            r?;
        }
        for c in &ours {
            self.runtime.remove_container(&c.id).await?;
        }
        Ok(())
    }

    /// The edge is shutting down: leave containers running, stop background work.
    fn abandon(&mut self) {
        for s in &mut self.slots {
            s.stop_probe();
        }
        self.pulls.abort_all();
        self.creates.detach_all();
    }

    // === status ===

    fn status(&self) -> pb::PodStatus {
        let phase = pod_phase(self.slots.iter().map(|s| (&s.state, s.restart_count)));
        let containers: Vec<pb::ContainerStatus> = self
            .slots
            .iter()
            .map(|s| pb::ContainerStatus {
                name: s.spec.name.clone(),
                container_id: s
                    .container_id
                    .as_ref()
                    .map(|id| format!("{}://{id}", self.runtime.name()))
                    .unwrap_or_default(),
                image: s.spec.image.clone(),
                image_id: s.image_id.clone(),
                restart_count: s.restart_count,
                ready: s.ready && s.state.is_running(),
                started: s.state.is_running() && s.started,
                state: Some(s.state.to_proto()),
                last_state: s
                    .state
                    .implied_last_state()
                    .or_else(|| s.last_state.clone()),
            })
            .collect();
        let containers_ready = !containers.is_empty() && containers.iter().all(|c| c.ready);
        let (phase, evicted) = match &self.evicted {
            Some(m) => (pb::PodPhase::Failed, Some((EVICTED.to_string(), m.clone()))),
            None => (phase, None),
        };
        let (reason, message) = if let Some(e) = evicted {
            e
        } else if phase == pb::PodPhase::Pending {
            self.slots
                .iter()
                .find_map(|s| s.state.pending_reason())
                .map(|(r, m)| (r.to_string(), m.to_string()))
                .unwrap_or_default()
        } else {
            Default::default()
        };
        let mut status = pb::PodStatus {
            uid: self.spec.uid.clone(),
            namespace: self.spec.namespace.clone(),
            name: self.spec.name.clone(),
            phase: 0,
            reason,
            message,
            pod_ip: self.pod_ip.clone(),
            start_unix_millis: self.start_unix_millis,
            ready: containers_ready && phase == pb::PodPhase::Running,
            containers_ready,
            containers,
            usage: Some(pb::Usage {
                ephemeral_storage_bytes: self.storage_used,
                ..self.usage.usage()
            }),
        };
        status.set_phase(phase);
        status
    }

    fn publish(&self) {
        self.board.publish(self.status());
    }
}
