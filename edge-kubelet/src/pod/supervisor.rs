//! The pod side of the edge: one [`PodWorker`] per assigned pod, the assigned set persisted,
//! engine events routed to the right worker.

use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};
use std::sync::Arc;
use std::time::Duration;

use futures::StreamExt;
use parking_lot::{Mutex, MutexGuard};
use tokio::sync::{mpsc, oneshot};

use decloud_proto as pb;

use super::lifecycle::is_terminal;
use super::persistent;
use super::status_board::StatusBoard;
use super::worker::{PodCommand, PodWorker, PodWorkerConfig};
use crate::error::{Error, Result};
use crate::local::StateFile;
use crate::runtime::{ContainerInfo, ContainerRuntime, RuntimeEvent};

struct WorkerHandle {
    spec: pb::PodSpec,
    commands: mpsc::UnboundedSender<PodCommand>,
}

/// Runs the pods assigned to this edge.
pub struct PodSupervisor {
    runtime: Arc<dyn ContainerRuntime>,
    board: Arc<StatusBoard>,
    state_file: Option<StateFile>,
    cfg: PodWorkerConfig,
    workers: Mutex<HashMap<String, WorkerHandle>>,
    /// Pods being terminated (uid → the persistent volumes their containers may still
    /// mount); a repeated delete just waits for the same `Gone`.
    terminating: Mutex<HashMap<String, Vec<String>>>,
    /// Persistent volumes held (on disk, or reserved by an admitted pod that has not created
    /// them yet): id → size in bytes. What admission counts against the storage offer.
    held: Mutex<BTreeMap<String, u64>>,
    /// One `VolumeSet` applied at a time.
    volume_gc: tokio::sync::Mutex<()>,
    /// The latest `VolumeSet` from the session, applied in the background (a newer set
    /// replaces one not yet applied: each is complete).
    volume_sets: tokio::sync::watch::Sender<Option<Arc<Vec<String>>>>,
    /// Pods refused at admission (`OutOfpods`): like kubelet's, the refusal is final, so the
    /// same pod sent again (a reconnect's `PodSet`) is not admitted later.
    rejected: Mutex<HashSet<String>>,
    /// Pods evicted for their storage use (uid → message), saved beside the assigned set so
    /// that a restart does not start them again; the workers report them on `evictions`.
    evicted: Mutex<BTreeMap<String, String>>,
    evictions: mpsc::UnboundedSender<(String, String)>,
    /// What pods are admitted against: the offer (CPU, memory, storage) and `--max-pods`,
    /// from `cfg` at start, changed by the console.
    offer: Mutex<AdmissionOffer>,
    /// Pods' configurations (ConfigMaps and Secrets) as the operator sent them: memory only,
    /// never persisted; gone with the pod.
    configs: Mutex<HashMap<String, Arc<pb::PodConfig>>>,
}

/// The offer pods are admitted against; 0 (or `max_pods` 0): no limit.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub(crate) struct AdmissionOffer {
    pub(crate) cpu_millis: i64,
    pub(crate) memory_bytes: i64,
    pub(crate) storage_bytes: i64,
    pub(crate) max_pods: usize,
}

/// One admitted pod that has not finished, as the console shows it (never env or secrets).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub(crate) struct AppLine {
    pub(crate) uid: String,
    pub(crate) namespace: String,
    pub(crate) name: String,
    pub(crate) images: Vec<String>,
    /// Requests (CPU millicores, memory bytes, ephemeral-storage bytes), as admission counts them.
    pub(crate) requests: [i64; 3],
}

/// Most configurations held at once (one per pod; the operator sends one just before the pod).
const MAX_CONFIGS: usize = 10_000;

/// Pod-level reason of a pod refused because the edge already runs `--max-pods` pods
/// (kubelet's own word for it).
pub const OUT_OF_PODS: &str = "OutOfpods";
/// Pod-level reason of a pod whose CPU does not fit the offer (kubelet's word).
pub const OUT_OF_CPU: &str = "OutOfcpu";
/// Pod-level reason of a pod whose memory does not fit the offer (kubelet's word).
pub const OUT_OF_MEMORY: &str = "OutOfmemory";

/// Pod-level reason of a pod whose ephemeral storage does not fit the offer (kubelet's word).
pub(crate) const OUT_OF_EPHEMERAL_STORAGE: &str = "OutOfephemeral-storage";

/// A pod's CPU (millicores), memory and ephemeral storage (bytes): summed requests, summed
/// limits. A container with a limit but no request counts its limit as request, as the API
/// server defaults it.
fn pod_resources(spec: &pb::PodSpec) -> ([i64; 3], [i64; 3]) {
    let (mut req, mut lim) = ([0i64; 3], [0i64; 3]);
    for c in &spec.containers {
        let r = c.resources.unwrap_or_default();
        let cpu_req = if r.cpu_request_millis > 0 {
            r.cpu_request_millis
        } else {
            r.cpu_limit_millis
        };
        let mem_req = if r.memory_request_bytes > 0 {
            r.memory_request_bytes
        } else {
            r.memory_limit_bytes
        };
        req[0] = req[0].saturating_add(cpu_req.max(0));
        req[1] = req[1].saturating_add(mem_req.max(0));
        lim[0] = lim[0].saturating_add(r.cpu_limit_millis.max(0));
        lim[1] = lim[1].saturating_add(r.memory_limit_bytes.max(0));
    }
    (req[2], lim[2]) = super::storage::pod_storage(spec);
    (req, lim)
}

/// Why a pod cannot run within the offer, as kubelet words it: (reason, message). `used`:
/// the requests of the pods already admitted; `offer`: (CPU millicores, memory bytes,
/// ephemeral-storage bytes), 0 for no limit. Requests must fit next to the admitted pods;
/// limits must fit the offer alone, since the ceiling (cgroup, eviction) would never let a
/// pod have more.
pub(crate) fn misfit(
    spec: &pb::PodSpec,
    used: [i64; 3],
    offer: [i64; 3],
) -> Option<(&'static str, String)> {
    let (req, lim) = pod_resources(spec);
    let names = [
        (OUT_OF_CPU, "cpu"),
        (OUT_OF_MEMORY, "memory"),
        (OUT_OF_EPHEMERAL_STORAGE, "ephemeral-storage"),
    ];
    for (i, (reason, what)) in names.into_iter().enumerate() {
        let (req, lim, used, cap) = (req[i], lim[i], used[i], offer[i]);
        if cap <= 0 {
            continue;
        }
        if req.saturating_add(used) > cap {
            return Some((
                reason,
                format!(
                    "Pod was rejected: Node didn't have enough resource: {what}, requested: {req}, used: {used}, capacity: {cap}"
                ),
            ));
        }
        if lim > cap {
            return Some((
                reason,
                format!(
                    "Pod was rejected: Node didn't have enough resource: {what}, limit: {lim}, capacity: {cap} (the provider's offer is a hard ceiling)"
                ),
            ));
        }
    }
    None
}

impl std::fmt::Debug for PodSupervisor {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PodSupervisor")
            .field("runtime", &self.runtime.name())
            .finish_non_exhaustive()
    }
}

impl PodSupervisor {
    /// Prepares the runtime, loads the saved assigned set, re-adopts this edge's containers
    /// (running ones are left untouched), removes containers of pods no longer assigned, and
    /// starts routing engine events. `state_file: None` keeps the set in memory only
    /// (simulated edges in benchmarks).
    pub async fn start(
        runtime: Arc<dyn ContainerRuntime>,
        state_file: Option<StateFile>,
        cfg: PodWorkerConfig,
    ) -> Result<Arc<Self>> {
        runtime.prepare().await?;
        let assigned = match &state_file {
            Some(f) => f.load()?,
            None => Vec::new(),
        };
        let mut evicted = match &state_file {
            Some(f) => f.load_evicted().unwrap_or_else(|e| {
                tracing::warn!(error = %e, "cannot read the evicted pods; forgetting them");
                BTreeMap::new()
            }),
            None => BTreeMap::new(),
        };
        evicted.retain(|uid, _| assigned.iter().any(|p| &p.uid == uid));
        let existing = runtime.list_containers().await?;
        let held = match cfg.persistent_volumes.clone() {
            Some(store) => held_on_disk(store).await?,
            None => BTreeMap::new(),
        };
        let (evictions, mut evicted_rx) = mpsc::unbounded_channel();
        let (volume_sets, mut volume_sets_rx) = tokio::sync::watch::channel(None);
        let cfg_offer = (
            cfg.offered_cpu_millis,
            cfg.offered_memory_bytes,
            cfg.offered_storage_bytes,
            cfg.max_pods,
        );
        let sup = Arc::new(PodSupervisor {
            runtime: runtime.clone(),
            board: Arc::new(StatusBoard::default()),
            state_file,
            cfg,
            workers: Mutex::default(),
            terminating: Mutex::default(),
            held: Mutex::new(held),
            volume_gc: tokio::sync::Mutex::new(()),
            volume_sets,
            rejected: Mutex::default(),
            evicted: Mutex::new(evicted),
            evictions,
            offer: Mutex::new(AdmissionOffer {
                cpu_millis: cfg_offer.0,
                memory_bytes: cfg_offer.1,
                storage_bytes: cfg_offer.2,
                max_pods: cfg_offer.3,
            }),
            configs: Mutex::default(),
        });
        if let Some(dir) = &sup.cfg.config_dir {
            let keep: Vec<String> = assigned.iter().map(|p| p.uid.clone()).collect();
            super::config_volumes::sweep(dir, &keep);
        }
        if let Some(dir) = &sup.cfg.volume_dir {
            let keep: Vec<String> = assigned.iter().map(|p| p.uid.clone()).collect();
            super::config_volumes::sweep(dir, &keep);
        }
        let weak = Arc::downgrade(&sup);
        tokio::spawn(async move {
            while volume_sets_rx.changed().await.is_ok() {
                let Some(ids) = volume_sets_rx.borrow_and_update().clone() else {
                    continue;
                };
                let Some(sup) = weak.upgrade() else { return };
                match sup.apply_volume_set(ids.to_vec()).await {
                    Ok(deleted) if !deleted.is_empty() => {
                        tracing::info!(
                            deleted = deleted.len(),
                            "applied the operator's volume set"
                        );
                    }
                    Ok(_) => {}
                    Err(e) => tracing::warn!(error = %e, "cannot apply the operator's volume set"),
                }
            }
        });
        let weak = Arc::downgrade(&sup);
        tokio::spawn(async move {
            while let Some((uid, message)) = evicted_rx.recv().await {
                let Some(sup) = weak.upgrade() else { return };
                if sup.workers().contains_key(&uid) {
                    sup.evicted.lock().insert(uid, message);
                    sup.persist_evicted();
                }
            }
        });
        let mut by_pod: HashMap<String, Vec<ContainerInfo>> = HashMap::new();
        for c in existing {
            by_pod.entry(c.pod_uid.clone()).or_default().push(c);
        }
        for spec in assigned {
            let adopted = by_pod.remove(&spec.uid).unwrap_or_default();
            tracing::info!(pod = %format!("{}/{}", spec.namespace, spec.name), containers = adopted.len(), "resuming assigned pod");
            sup.spawn_worker(spec, adopted);
        }
        for (uid, orphans) in by_pod {
            tracing::info!(pod_uid = %uid, containers = orphans.len(), "removing containers of a pod no longer assigned");
            let runtime = runtime.clone();
            tokio::spawn(async move {
                for c in orphans {
                    let _ = runtime.stop_container(&c.id, Duration::from_secs(10)).await;
                    if let Err(e) = runtime.remove_container(&c.id).await {
                        tracing::warn!(container_id = %c.id, error = %e, "cannot remove orphan container");
                    }
                }
            });
        }
        let weak = Arc::downgrade(&sup);
        let mut events = runtime.events();
        tokio::spawn(async move {
            while let Some(ev) = events.next().await {
                let Some(sup) = weak.upgrade() else { return };
                sup.route(ev);
            }
        });
        Ok(sup)
    }

    /// The latest statuses and the stream of changes.
    pub fn board(&self) -> &Arc<StatusBoard> {
        &self.board
    }

    /// The runtime's short name.
    pub(crate) fn runtime_name(&self) -> &'static str {
        self.runtime.name()
    }

    /// The runtime itself (for logs and, later, tunnels).
    pub(crate) fn runtime(&self) -> &Arc<dyn ContainerRuntime> {
        &self.runtime
    }

    /// The address of pod `uid` on this edge's container network, if it is assigned here and
    /// has one.
    pub(crate) fn pod_ip(&self, uid: &str) -> Option<String> {
        if !self.workers().contains_key(uid) {
            return None;
        }
        self.board
            .get(uid)
            .map(|s| s.pod_ip)
            .filter(|ip| !ip.is_empty())
    }

    /// The pod assigned here whose address on this edge's container network is `ip`: who a
    /// container connection came from (the address is the edge's own record, never a claim).
    pub(crate) fn pod_at(&self, ip: &str) -> Option<String> {
        let uids: Vec<String> = self.workers().keys().cloned().collect();
        uids.into_iter()
            .find(|uid| self.board.get(uid).is_some_and(|s| s.pod_ip == ip))
    }

    /// UIDs of the pods currently assigned (not terminating).
    pub fn assigned(&self) -> Vec<String> {
        let mut v: Vec<String> = self.workers().keys().cloned().collect();
        v.sort();
        v
    }

    /// The pods admitted here that have not finished (for the console).
    pub(crate) fn apps(&self) -> Vec<AppLine> {
        let mut out: Vec<AppLine> = self
            .workers()
            .iter()
            .filter(|(uid, _)| !self.board.get(uid).is_some_and(|s| is_terminal(&s)))
            .map(|(uid, w)| AppLine {
                uid: uid.clone(),
                namespace: w.spec.namespace.clone(),
                name: w.spec.name.clone(),
                images: w.spec.containers.iter().map(|c| c.image.clone()).collect(),
                requests: pod_resources(&w.spec).0,
            })
            .collect();
        out.sort_by(|a, b| (&a.namespace, &a.name).cmp(&(&b.namespace, &b.name)));
        out
    }

    /// Admits pods from now on against `offer` (running pods are not touched).
    pub(crate) fn set_admission_offer(&self, offer: AdmissionOffer) {
        *self.offer.lock() = offer;
    }

    fn workers(&self) -> MutexGuard<'_, HashMap<String, WorkerHandle>> {
        self.workers.lock()
    }

    fn terminating_set(&self) -> MutexGuard<'_, HashMap<String, Vec<String>>> {
        self.terminating.lock()
    }

    /// The persistent volumes on this edge's disk, for the Hello (at most
    /// [`pb::MAX_HELD_VOLUMES`]; none when it keeps no persistent volumes).
    pub(crate) async fn held_volumes(&self) -> Vec<pb::HeldVolume> {
        let Some(store) = self.cfg.persistent_volumes.clone() else {
            return Vec::new();
        };
        match held_on_disk(store).await {
            Ok(held) => held
                .into_iter()
                .take(pb::MAX_HELD_VOLUMES)
                .map(|(id, size_bytes)| pb::HeldVolume { id, size_bytes })
                .collect(),
            Err(e) => {
                tracing::warn!(error = %e, "cannot list the persistent volumes");
                Vec::new()
            }
        }
    }

    /// The persistent volumes the pods here may mount: those of assigned pods (running,
    /// creating, finished) and of pods still terminating.
    fn volumes_in_use(&self) -> BTreeSet<String> {
        let mut out: BTreeSet<String> = self
            .workers()
            .values()
            .flat_map(|w| persistent::pod_volumes(&w.spec).into_keys())
            .collect();
        out.extend(self.terminating_set().values().flatten().cloned());
        out
    }

    /// Takes the operator's `VolumeSet` to apply in the background ([`Self::apply_volume_set`]);
    /// `Err` (nothing will be deleted) for a set too long or naming an invalid id. Must not
    /// block: the session loop calls it.
    pub fn submit_volume_set(&self, ids: Vec<String>) -> Result<()> {
        persistent::check_volume_set(&ids).map_err(Error::InvalidInput)?;
        self.volume_sets.send_replace(Some(Arc::new(ids)));
        Ok(())
    }

    /// Applies the operator's `VolumeSet` (every persistent volume this edge is to keep):
    /// deletes, with their data, the held volumes it leaves out that no pod here mounts, and
    /// returns their ids. A set that is too long or names an invalid id is refused whole
    /// (`Err`, nothing deleted). May be called more than once; sets are applied one at a time.
    pub async fn apply_volume_set(&self, ids: Vec<String>) -> Result<Vec<String>> {
        persistent::check_volume_set(&ids).map_err(Error::InvalidInput)?;
        let Some(store) = self.cfg.persistent_volumes.clone() else {
            return Ok(Vec::new());
        };
        let _one_at_a_time = self.volume_gc.lock().await;
        let keep: BTreeSet<String> = ids.into_iter().collect();
        let on_disk: Vec<String> = held_on_disk(store.clone()).await?.into_keys().collect();
        let mut deleted = Vec::new();
        for id in persistent::volumes_to_delete(&on_disk, &keep, &self.volumes_in_use()) {
            // A pod that arrived meanwhile keeps it.
            if self.volumes_in_use().contains(&id) {
                continue;
            }
            tracing::info!(volume = %id, "deleting a persistent volume the operator no longer keeps here");
            let s = store.clone();
            let v = id.clone();
            match tokio::task::spawn_blocking(move || s.delete(&v)).await {
                Ok(Ok(())) => deleted.push(id),
                Ok(Err(e)) => {
                    tracing::warn!(volume = %id, error = %e, "cannot delete a persistent volume")
                }
                Err(e) => {
                    tracing::warn!(volume = %id, error = %e, "cannot delete a persistent volume")
                }
            }
        }
        // What is held now: the disk's volumes and those admitted pods reserved.
        let mut held = held_on_disk(store).await?;
        for w in self.workers().values() {
            for (id, size) in persistent::pod_volumes(&w.spec) {
                let h = held.entry(id).or_insert(0);
                *h = (*h).max(size);
            }
        }
        *self.held.lock() = held;
        Ok(deleted)
    }

    fn route(&self, ev: RuntimeEvent) {
        let workers = self.workers();
        match &ev {
            RuntimeEvent::Started { pod_uid, .. } | RuntimeEvent::Died { pod_uid, .. } => {
                if let Some(w) = workers.get(pod_uid) {
                    let _ = w.commands.send(PodCommand::Runtime(ev));
                }
            }
            RuntimeEvent::Resync => {
                for w in workers.values() {
                    let _ = w.commands.send(PodCommand::Runtime(RuntimeEvent::Resync));
                }
            }
        }
    }

    fn spawn_worker(&self, spec: pb::PodSpec, adopted: Vec<ContainerInfo>) {
        let (tx, rx) = mpsc::unbounded_channel();
        let mut worker = PodWorker::new(
            spec.clone(),
            self.runtime.clone(),
            self.board.clone(),
            self.cfg.clone(),
        )
        .with_evictions(self.evictions.clone())
        .with_config(self.configs.lock().get(&spec.uid).cloned());
        if let Some(message) = self.evicted.lock().get(&spec.uid).cloned() {
            tracing::info!(pod = %format!("{}/{}", spec.namespace, spec.name), "pod was evicted before the restart; it stays Failed");
            worker = worker.already_evicted(message);
        }
        tokio::spawn(worker.run(rx, adopted));
        self.workers()
            .insert(spec.uid.clone(), WorkerHandle { spec, commands: tx });
    }

    fn persist(&self) {
        let Some(f) = &self.state_file else { return };
        let specs: Vec<pb::PodSpec> = self.workers().values().map(|w| w.spec.clone()).collect();
        if let Err(e) = f.save(&specs) {
            tracing::error!(error = %e, "cannot save the assigned pod set");
        }
    }

    fn persist_evicted(&self) {
        let Some(f) = &self.state_file else { return };
        let evicted = self.evicted.lock().clone();
        if let Err(e) = f.save_evicted(&evicted) {
            tracing::error!(error = %e, "cannot save the evicted pods");
        }
    }

    fn validate(spec: &pb::PodSpec) -> Result<()> {
        if spec.uid.is_empty() {
            return Err(Error::InvalidInput("pod without uid".into()));
        }
        if spec.containers.is_empty() {
            return Err(Error::InvalidInput(format!(
                "pod {} has no containers",
                spec.uid
            )));
        }
        if spec.volumes.len() > pb::MAX_POD_VOLUMES
            || spec
                .volumes
                .iter()
                .any(|v| !super::config_volumes::name_ok(&v.name))
        {
            return Err(Error::InvalidInput(format!(
                "pod {}: at most {} volumes, named as DNS labels",
                spec.uid,
                pb::MAX_POD_VOLUMES
            )));
        }
        for c in &spec.containers {
            let bad_mount = c.volume_mounts.iter().any(|m| {
                !m.mount_path.starts_with('/')
                    || m.mount_path.split('/').any(|p| p == "..")
                    || m.mount_path.len() > pb::MAX_VOLUME_PATH
                    || (!m.sub_path.is_empty()
                        && super::config_volumes::path_problem(&m.sub_path).is_some())
            });
            if c.volume_mounts.len() > pb::MAX_VOLUME_MOUNTS || bad_mount {
                return Err(Error::InvalidInput(format!(
                    "pod {}: container {:?}: at most {} mounts, at absolute paths without '..', \
                     subPaths relative without '..'",
                    spec.uid,
                    c.name,
                    pb::MAX_VOLUME_MOUNTS
                )));
            }
        }
        let mut names = HashSet::new();
        for c in &spec.containers {
            if c.name.is_empty() || c.image.is_empty() || !names.insert(&c.name) {
                return Err(Error::InvalidInput(format!(
                    "pod {}: container names must be unique and non-empty, images non-empty",
                    spec.uid
                )));
            }
        }
        Ok(())
    }

    /// Adds or updates one pod. A changed spec replaces the pod's containers. A new pod beyond
    /// `max_pods` admitted ones is not started: it fails with [`OUT_OF_PODS`], as on kubelet;
    /// nor one whose requests do not fit next to the admitted pods' within the offer, or whose
    /// limits exceed the offer ([`OUT_OF_CPU`], [`OUT_OF_MEMORY`], [`OUT_OF_EPHEMERAL_STORAGE`]),
    /// nor one whose persistent volumes not held here yet do not fit the storage offer next to
    /// the held volumes and the pods' ephemeral-storage requests ([`persistent::OUT_OF_STORAGE`]).
    pub fn upsert(&self, spec: pb::PodSpec) -> Result<()> {
        Self::validate(&spec)?;
        {
            let mut workers = self.workers();
            if let Some(w) = workers.get_mut(&spec.uid) {
                if w.spec != spec {
                    w.spec = spec.clone();
                    let _ = w.commands.send(PodCommand::Update(Box::new(spec)));
                    drop(workers);
                    self.persist();
                }
                return Ok(());
            }
            if self.rejected().contains(&spec.uid) {
                return Ok(());
            }
            let admission = *self.offer.lock();
            let max = admission.max_pods;
            // Finished pods (restartPolicy Never/OnFailure) hold no containers: not counted.
            let used = workers
                .keys()
                .filter(|uid| !self.board.get(uid).is_some_and(|s| is_terminal(&s)))
                .count();
            if max > 0 && used >= max {
                drop(workers);
                let message = format!(
                    "Pod was rejected: Node didn't have enough resource: pods, requested: 1, used: {used}, capacity: {max}"
                );
                self.reject(&spec, OUT_OF_PODS, message);
                return Ok(());
            }
            let used = workers
                .iter()
                .filter(|(uid, _)| !self.board.get(uid).is_some_and(|s| is_terminal(&s)))
                .map(|(_, w)| pod_resources(&w.spec).0)
                .fold([0i64; 3], |a, b| {
                    [
                        a[0].saturating_add(b[0]),
                        a[1].saturating_add(b[1]),
                        a[2].saturating_add(b[2]),
                    ]
                });
            let offer = [
                admission.cpu_millis,
                admission.memory_bytes,
                admission.storage_bytes,
            ];
            // Persistent volumes share the storage offer with ephemeral storage: new ones
            // must fit next to the held ones and every pod's ephemeral requests, and held
            // ones leave that much less for ephemeral storage.
            let wanted = persistent::pod_volumes(&spec);
            let mut held = self.held.lock();
            let held_bytes = held.values().fold(0i64, |a, s| {
                a.saturating_add(i64::try_from(*s).unwrap_or(i64::MAX))
            });
            let misfits = persistent::volume_misfit(
                &wanted,
                &held,
                pod_resources(&spec).0[2],
                used[2],
                admission.storage_bytes,
            )
            .or_else(|| {
                let used = [used[0], used[1], used[2].saturating_add(held_bytes)];
                misfit(&spec, used, offer)
            });
            if let Some((reason, message)) = misfits {
                drop(held);
                drop(workers);
                self.reject(&spec, reason, message);
                return Ok(());
            }
            // Reserved now: the next pod is admitted against them before they are created.
            for (id, size) in wanted {
                let h = held.entry(id).or_insert(0);
                *h = (*h).max(size);
            }
        }
        tracing::info!(pod = %format!("{}/{}", spec.namespace, spec.name), uid = %spec.uid, "pod assigned");
        self.spawn_worker(spec, Vec::new());
        self.persist();
        Ok(())
    }

    /// Takes pod `config.pod_uid`'s configuration (checked: bounded, safe paths), for its
    /// worker now or when the pod arrives.
    pub fn set_config(&self, config: pb::PodConfig) -> Result<()> {
        Self::validate_config(&config)?;
        let config = Arc::new(config);
        {
            let mut configs = self.configs.lock();
            if !configs.contains_key(&config.pod_uid) && configs.len() >= MAX_CONFIGS {
                return Err(Error::InvalidInput(format!(
                    "more than {MAX_CONFIGS} pod configurations"
                )));
            }
            configs.insert(config.pod_uid.clone(), config.clone());
        }
        if let Some(w) = self.workers().get(&config.pod_uid) {
            let _ = w.commands.send(PodCommand::Config(config));
        }
        Ok(())
    }

    fn validate_config(config: &pb::PodConfig) -> Result<()> {
        let bad = |m: String| Err(Error::InvalidInput(format!("pod {}: {m}", config.pod_uid)));
        if config.pod_uid.is_empty() {
            return bad("configuration without a pod uid".into());
        }
        let size = prost::Message::encoded_len(config);
        if size > pb::MAX_POD_CONFIG_BYTES {
            return bad(format!("configuration of {size} bytes"));
        }
        let files: usize = config.volumes.iter().map(|v| v.files.len()).sum();
        let env = config
            .containers
            .iter()
            .map(|c| c.env.len())
            .max()
            .unwrap_or(0);
        if files > pb::MAX_POD_CONFIG_ENTRIES || env > pb::MAX_POD_CONFIG_ENTRIES {
            return bad("too many files or variables in its configuration".into());
        }
        if config.volumes.len() > pb::MAX_POD_VOLUMES {
            return bad("too many volumes in its configuration".into());
        }
        for v in &config.volumes {
            if !super::config_volumes::name_ok(&v.name) {
                return bad(format!("volume name {:?}", v.name));
            }
            for f in &v.files {
                if let Some(p) = super::config_volumes::path_problem(&f.path) {
                    return bad(format!("volume {:?}: path {:?} {p}", v.name, f.path));
                }
                if f.mode > 0o777 {
                    return bad(format!("volume {:?}: mode {:o}", v.name, f.mode));
                }
            }
        }
        Ok(())
    }

    /// Refuses `spec` for good: the operator sees it Failed with `reason` ([`OUT_OF_PODS`],
    /// [`OUT_OF_CPU`], [`OUT_OF_MEMORY`], [`OUT_OF_EPHEMERAL_STORAGE`], [`persistent::OUT_OF_STORAGE`]).
    fn reject(&self, spec: &pb::PodSpec, reason: &'static str, message: String) {
        tracing::warn!(pod = %format!("{}/{}", spec.namespace, spec.name), uid = %spec.uid, reason, %message, "pod rejected");
        self.rejected().insert(spec.uid.clone());
        self.board.publish(pb::PodStatus {
            uid: spec.uid.clone(),
            namespace: spec.namespace.clone(),
            name: spec.name.clone(),
            phase: pb::PodPhase::Failed as i32,
            reason: reason.into(),
            message,
            ..Default::default()
        });
    }

    fn rejected(&self) -> MutexGuard<'_, HashSet<String>> {
        self.rejected.lock()
    }

    /// Makes the assigned set exactly `pods`: new ones start, changed ones are replaced,
    /// everything else is terminated (with its own grace period).
    pub fn apply_pod_set(self: &Arc<Self>, pods: Vec<pb::PodSpec>) {
        let wanted: HashSet<String> = pods.iter().map(|p| p.uid.clone()).collect();
        self.rejected().retain(|uid| wanted.contains(uid));
        self.configs.lock().retain(|uid, _| wanted.contains(uid));
        for spec in pods {
            if let Err(e) = self.upsert(spec) {
                tracing::warn!(error = %e, "ignoring invalid pod in the desired set");
            }
        }
        for uid in self.assigned() {
            if !wanted.contains(&uid) {
                tracing::info!(pod_uid = %uid, "pod not in the desired set; stopping it");
                self.delete(&uid, None);
            }
        }
    }

    /// Terminates pod `uid` (grace: `None` for the pod's own). Returns at once; when every
    /// container is removed, [`super::status_board::PodUpdate::Gone`] is published.
    pub fn delete(self: &Arc<Self>, uid: &str, grace: Option<Duration>) {
        let handle = {
            let mut workers = self.workers();
            let handle = workers.remove(uid);
            // Terminating before it stops being assigned: its persistent volumes stay in use
            // for a VolumeSet until its containers are gone.
            if let Some(h) = &handle {
                let volumes = persistent::pod_volumes(&h.spec).into_keys().collect();
                self.terminating_set().insert(uid.to_string(), volumes);
            }
            handle
        };
        self.configs.lock().remove(uid);
        self.persist();
        if self.evicted.lock().remove(uid).is_some() {
            self.persist_evicted();
        }
        let (done_tx, done_rx) = oneshot::channel();
        match handle {
            Some(h) => {
                let _ = h.commands.send(PodCommand::Terminate {
                    grace,
                    done: done_tx,
                });
            }
            None => {
                self.rejected().remove(uid);
                if self.terminating_set().contains_key(uid) {
                    // Already terminating: Gone is published when that ends.
                    return;
                }
                // Unknown pod: make sure nothing of it is left, then confirm.
                let sup = self.clone();
                let uid = uid.to_string();
                tokio::spawn(async move {
                    if let Ok(list) = sup.runtime.list_containers().await {
                        for c in list.into_iter().filter(|c| c.pod_uid == uid) {
                            let _ = sup
                                .runtime
                                .stop_container(&c.id, grace.unwrap_or_default())
                                .await;
                            let _ = sup.runtime.remove_container(&c.id).await;
                        }
                    }
                    sup.board.gone(&uid);
                });
                return;
            }
        }
        let sup = Arc::downgrade(self);
        let board = self.board.clone();
        let uid = uid.to_string();
        tokio::spawn(async move {
            let _ = done_rx.await;
            if let Some(sup) = sup.upgrade() {
                let volumes = sup.terminating_set().remove(&uid).unwrap_or_default();
                // Its volumes are free now: the operator's last VolumeSet applies to them (it
                // may have left them out while the pod still held them, and is not sent again
                // unless it changes).
                if !volumes.is_empty() {
                    sup.volume_sets.send_if_modified(|set| set.is_some());
                }
            }
            board.gone(&uid);
        });
    }

    /// The container id that serves logs of `container` in pod `pod_uid`.
    pub(crate) async fn log_target(
        &self,
        pod_uid: &str,
        container: &str,
        previous: bool,
    ) -> Result<String> {
        let tx = self
            .workers()
            .get(pod_uid)
            .map(|w| {
                (
                    w.commands.clone(),
                    w.spec.containers.first().map(|c| c.name.clone()),
                )
            })
            .ok_or_else(|| Error::NotFound(format!("pod {pod_uid} is not on this edge")))?;
        let (commands, first) = tx;
        let container = if container.is_empty() {
            first.unwrap_or_default()
        } else {
            container.to_string()
        };
        let (reply, rx) = oneshot::channel();
        let _ = commands.send(PodCommand::LogTarget {
            container: container.clone(),
            previous,
            reply,
        });
        rx.await.ok().flatten().ok_or_else(|| {
            Error::NotFound(format!(
                "container {container:?} of pod {pod_uid} has no {}instance",
                if previous { "previous " } else { "" }
            ))
        })
    }
}

/// The persistent volumes in `store` (id → size), listed off the async threads.
async fn held_on_disk(store: crate::host::VolumeStore) -> Result<BTreeMap<String, u64>> {
    let list = tokio::task::spawn_blocking(move || store.list())
        .await
        .map_err(|e| Error::Runtime(format!("listing persistent volumes: {e}")))??;
    Ok(list.into_iter().map(|v| (v.id, v.size_bytes)).collect())
}

#[cfg(test)]
mod admission_tests {
    use super::*;

    fn pod(containers: &[(i64, i64, i64, i64)]) -> pb::PodSpec {
        pb::PodSpec {
            uid: "u".into(),
            containers: containers
                .iter()
                .enumerate()
                .map(|(i, &(cr, cl, mr, ml))| pb::ContainerSpec {
                    name: format!("c{i}"),
                    image: "x".into(),
                    resources: Some(pb::ResourceSpec {
                        cpu_request_millis: cr,
                        cpu_limit_millis: cl,
                        memory_request_bytes: mr,
                        memory_limit_bytes: ml,
                        ..Default::default()
                    }),
                    ..Default::default()
                })
                .collect(),
            ..Default::default()
        }
    }

    #[test]
    fn misfits_like_kubelet() {
        const MI: i64 = 1 << 20;
        let offer = [1000, 256 * MI, 0];
        type Row = (
            &'static [(i64, i64, i64, i64)],
            (i64, i64),
            Option<&'static str>,
        );
        let table: &[Row] = &[
            (&[(100, 500, 32 * MI, 128 * MI)], (0, 0), None),
            (&[(0, 0, 0, 0)], (900, 250 * MI), None),
            (&[(0, 0, 0, 512 * MI)], (0, 0), Some(OUT_OF_MEMORY)),
            (&[(0, 0, 64 * MI, 512 * MI)], (0, 0), Some(OUT_OF_MEMORY)),
            (&[(0, 2000, 0, 0)], (0, 0), Some(OUT_OF_CPU)),
            (&[(600, 0, 0, 0)], (500, 0), Some(OUT_OF_CPU)),
            (
                &[(0, 0, 100 * MI, 0), (0, 0, 100 * MI, 0)],
                (0, 100 * MI),
                Some(OUT_OF_MEMORY),
            ),
            (&[(0, 0, 1, 0)], (0, 0), None),
        ];
        for (containers, used, want) in table {
            let got = misfit(&pod(containers), [used.0, used.1, 0], offer);
            assert_eq!(
                got.as_ref().map(|g| g.0),
                *want,
                "{containers:?} {used:?}: {got:?}"
            );
        }
        let (_, msg) = misfit(&pod(&[(0, 0, 0, 512 * MI)]), [0; 3], offer).unwrap();
        assert!(
            msg.starts_with("Pod was rejected: Node didn't have enough resource: memory, "),
            "{msg}"
        );
        assert!(
            misfit(&pod(&[(0, 0, 0, 512 * MI)]), [0; 3], [0; 3]).is_none(),
            "no offer, no limit"
        );
    }

    #[test]
    fn storage_misfits_like_kubelet() {
        const MI: i64 = 1 << 20;
        let offer = [0, 0, 256 * MI];
        let storage = |req: i64, lim: i64| {
            let mut p = pod(&[(0, 0, 0, 0)]);
            p.containers[0].resources = Some(pb::ResourceSpec {
                ephemeral_storage_request_bytes: req,
                ephemeral_storage_limit_bytes: lim,
                ..Default::default()
            });
            p
        };
        // (request, limit, used by admitted pods, refused)
        let table = [
            (512 * MI, 0, 0, true),
            (0, 512 * MI, 0, true),
            (10 * MI, 512 * MI, 0, true),
            (0, 20 * MI, 0, false),
            (100 * MI, 0, 150 * MI, false),
            (100 * MI, 0, 157 * MI, true),
            (0, 0, 256 * MI, false),
        ];
        for (req, lim, used, refused) in table {
            let got = misfit(&storage(req, lim), [0, 0, used], offer);
            assert_eq!(
                got.as_ref().map(|g| g.0),
                refused.then_some(OUT_OF_EPHEMERAL_STORAGE),
                "{req} {lim} {used}: {got:?}"
            );
        }
        let (_, msg) = misfit(&storage(512 * MI, 0), [0; 3], offer).unwrap();
        assert_eq!(
            msg,
            "Pod was rejected: Node didn't have enough resource: ephemeral-storage, requested: 536870912, used: 0, capacity: 268435456"
        );
    }
}
