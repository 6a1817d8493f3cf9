//! Live edge sessions, one per provider, kept in this (leader) replica's memory.
//!
//! Every message to an edge is queued under the registry's lock, so a session sees its full
//! `PodSet` and the upserts/deletes after it in the order the pod watcher saw the changes.

use std::collections::{HashMap, HashSet};
use std::sync::Arc;

use parking_lot::{Mutex, MutexGuard};
use std::time::{Duration, Instant, SystemTime};

use decloud_crds::{EgressPolicyState, HostIsolation, Platform};
use decloud_proto as pb;
use pb::operator_message::Kind;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;
use tonic::Status;

use super::availability::{ChangePacer, EdgeAvailability};
use super::liveness::{LivenessTracker, SweepEvent, Transition};
use crate::metrics::Metrics;

/// Messages queued towards one edge before it counts as too slow and is disconnected.
pub(crate) const SESSION_QUEUE: usize = 4096;

/// Share of a session's queue kept for pod state (1/4): requests (tunnels, logs) are refused
/// once less than that is free.
const OPTIONAL_HEADROOM_DIVISOR: usize = 4;

/// The sending half of a session's response stream.
pub(crate) type SessionSender = mpsc::Sender<Result<pb::OperatorMessage, Status>>;

/// What an edge said about itself in its Hello.
#[derive(Clone, Debug, Default, PartialEq)]
pub(crate) struct HelloInfo {
    /// edge-kubelet version.
    pub(crate) agent_version: String,
    /// Detected on the machine.
    pub(crate) capacity: pb::Resources,
    /// What the provider offers.
    pub(crate) offered: pb::Resources,
    /// Container runtime (`docker`, `simulated`), the scheme of container ids.
    pub(crate) runtime: String,
    /// Pods (uids) the edge was running when it said Hello.
    pub(crate) running: HashSet<String>,
    /// What the machine is, checked and bounded (None if the edge did not say).
    pub(crate) platform: Option<Platform>,
    /// The pod network the edge announced (None: it did not, or not a valid one; then no
    /// reported pod IP is accepted).
    pub(crate) pod_network: Option<PodNetwork>,
    /// What protects the machine (None if the edge did not say).
    pub(crate) isolation: Option<HostIsolation>,
    /// Whether the owner lends the machine now: from the Hello, then from each change.
    pub(crate) availability: EdgeAvailability,
}

/// Most CPU an edge may claim: 1024 cores (the bound a Workload may request).
pub(crate) const MAX_CPU_MILLIS: i64 = 1024 * 1000;
/// Most memory an edge may claim: 64 TiB.
pub(crate) const MAX_MEMORY_BYTES: i64 = 64 << 40;
/// Most pods an edge may claim.
pub(crate) const MAX_PODS: i64 = 10_000;

/// `r` within sane maxima: an edge claiming a huge machine would attract every placement.
/// Negative figures count as 0.
pub(crate) fn clamp_resources(r: pb::Resources) -> pb::Resources {
    pb::Resources {
        cpu_millis: r.cpu_millis.clamp(0, MAX_CPU_MILLIS),
        memory_bytes: r.memory_bytes.clamp(0, MAX_MEMORY_BYTES),
        pods: r.pods.clamp(0, MAX_PODS),
        storage_bytes: r.storage_bytes.clamp(0, decloud_crds::MAX_STORAGE_BYTES),
    }
}

/// An edge's pod network: an address block in CIDR form.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct PodNetwork {
    base: std::net::IpAddr,
    prefix: u8,
}

impl PodNetwork {
    /// Parses `a.b.c.d/n` or `x::/n`. A block wider than /8 (IPv4) or /32 (IPv6) is refused:
    /// it would let an edge claim most of the address space.
    pub(crate) fn parse(s: &str) -> Option<Self> {
        let (addr, prefix) = s.split_once('/')?;
        let base: std::net::IpAddr = addr.parse().ok()?;
        let prefix: u8 = prefix.parse().ok()?;
        let (min, max) = if base.is_ipv4() { (8, 32) } else { (32, 128) };
        (min..=max)
            .contains(&prefix)
            .then_some(Self { base, prefix })
    }

    /// Whether `ip` is inside the block.
    pub(crate) fn contains(&self, ip: std::net::IpAddr) -> bool {
        use std::net::IpAddr::{V4, V6};
        let masked = |a: u128, bits: u32, len: u32| {
            if len == 0 { 0 } else { a >> (bits - len) }
        };
        match (self.base, ip) {
            (V4(b), V4(i)) => {
                let len = u32::from(self.prefix);
                masked(u128::from(u32::from(b)), 32, len)
                    == masked(u128::from(u32::from(i)), 32, len)
            }
            (V6(b), V6(i)) => {
                let len = u32::from(self.prefix);
                masked(u128::from(b), 128, len) == masked(u128::from(i), 128, len)
            }
            _ => false,
        }
    }
}

/// Longest platform string kept (the CRD's bound): longer ones are cut.
const MAX_PLATFORM_TEXT: usize = 256;

/// `kubernetes.io/os` / `kubernetes.io/arch` values an edge may claim: what Go names them
/// (`linux`, `amd64`, `arm64`, `ppc64le`, …). Anything else would be a label value smuggled in.
fn platform_word(s: &str) -> Option<String> {
    (!s.is_empty()
        && s.len() <= 32
        && s.bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_'))
    .then(|| s.to_string())
}

fn bounded_text(s: &str) -> String {
    let mut end = s.len().min(MAX_PLATFORM_TEXT);
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    s[..end].chars().filter(|c| !c.is_control()).collect()
}

/// The platform an edge claims, if it names a well-formed OS and architecture.
fn platform(p: &pb::Platform) -> Option<Platform> {
    Some(Platform {
        os: platform_word(&p.os)?,
        architecture: platform_word(&p.architecture)?,
        kernel_version: bounded_text(&p.kernel_version),
        os_image: bounded_text(&p.os_image),
        container_runtime_version: bounded_text(&p.container_runtime_version),
    })
}

impl HelloInfo {
    /// The useful part of a Hello.
    pub(crate) fn from_hello(hello: &pb::Hello) -> Self {
        Self {
            agent_version: hello.agent_version.clone(),
            capacity: clamp_resources(hello.capacity.unwrap_or_default()),
            offered: clamp_resources(hello.offered.unwrap_or_default()),
            runtime: if hello.runtime.is_empty() {
                "docker".into()
            } else {
                hello.runtime.clone()
            },
            running: hello.pods.iter().map(|p| p.uid.clone()).collect(),
            platform: hello.platform.as_ref().and_then(platform),
            pod_network: PodNetwork::parse(&hello.pod_cidr),
            isolation: hello.isolation.as_ref().map(isolation),
            availability: hello
                .availability
                .as_ref()
                .map(EdgeAvailability::from_proto)
                .unwrap_or_default(),
        }
    }
}

/// The isolation an edge claims; an unknown egress word counts as not said.
fn isolation(i: &pb::HostIsolation) -> HostIsolation {
    HostIsolation {
        userns_remap: i.userns_remap,
        egress_policy: match i.egress_policy.as_str() {
            "Enforced" => Some(EgressPolicyState::Enforced),
            "Disabled" => Some(EgressPolicyState::Disabled),
            _ => None,
        },
    }
}

/// One edge's live session.
#[derive(Debug)]
pub(crate) struct EdgeSession {
    id: u64,
    tx: SessionSender,
    close: CancellationToken,
    /// Spec hash of every pod sent (uid → hash).
    sent: HashMap<String, String>,
    /// Pods a `PodDelete` was sent for.
    deleting: HashSet<String>,
    /// Hash of the last `PodConfig` sent per pod (uid → hash).
    configs: HashMap<String, [u8; 32]>,
    /// Pods the edge ran when it connected (uids).
    running_at_hello: HashSet<String>,
    /// What the machine is, as its Hello said (checked).
    platform: Option<Platform>,
    /// Paces the reconciles its availability changes cause.
    availability_pacer: ChangePacer,
    /// The last `VolumeSet` sent (sorted ids); `None` before the first.
    volumes: Option<Vec<String>>,
}

impl EdgeSession {
    /// The edge's platform, as its Hello said (None: it did not say).
    pub(crate) fn platform(&self) -> Option<&Platform> {
        self.platform.as_ref()
    }

    fn send(&mut self, kind: Kind) {
        let msg = pb::OperatorMessage { kind: Some(kind) };
        if let Err(mpsc::error::TrySendError::Full(_)) = self.tx.try_send(Ok(msg)) {
            tracing::warn!(
                session = self.id,
                "edge is not reading its session; closing it"
            );
            self.close.cancel();
        }
    }

    /// Replaces the edge's desired set with `pods` (sent on every (re)connect and resync).
    pub(crate) fn send_pod_set(&mut self, pods: Vec<pb::PodSpec>) {
        self.sent = pods
            .iter()
            .map(|p| (p.uid.clone(), p.spec_hash.clone()))
            .collect();
        self.deleting.clear();
        self.send(Kind::PodSet(pb::PodSet { pods }));
    }

    /// Tells the edge which persistent volumes to keep (`ids` sorted), unless this exact set
    /// was the last one sent in this session.
    pub(crate) fn send_volume_set(&mut self, ids: Vec<String>) {
        if self.volumes.as_ref() == Some(&ids) {
            return;
        }
        self.volumes = Some(ids.clone());
        self.send(Kind::VolumeSet(pb::VolumeSet { ids }));
    }

    /// Sends `pod`'s configuration (ConfigMaps and Secrets it uses) unless this exact one was
    /// already sent. Only ever called for pods bound to this session's node.
    pub(crate) fn send_config(&mut self, config: pb::PodConfig) {
        let hash: [u8; 32] = {
            use sha2::{Digest, Sha256};
            Sha256::digest(prost::Message::encode_to_vec(&config)).into()
        };
        if self.configs.get(&config.pod_uid) == Some(&hash)
            || self.deleting.contains(&config.pod_uid)
        {
            return;
        }
        self.configs.insert(config.pod_uid.clone(), hash);
        self.send(Kind::PodConfig(config));
    }

    /// Sends `pod` unless this exact spec was already sent. May be called more than once.
    pub(crate) fn upsert(&mut self, pod: pb::PodSpec) {
        if self.sent.get(&pod.uid) == Some(&pod.spec_hash) || self.deleting.contains(&pod.uid) {
            return;
        }
        self.sent.insert(pod.uid.clone(), pod.spec_hash.clone());
        self.send(Kind::PodUpsert(pb::PodUpsert { pod: Some(pod) }));
    }

    /// Asks the edge to stop `uid`, once per session. May be called more than once.
    pub(crate) fn delete(&mut self, uid: &str, grace_period_seconds: u32) {
        if !self.deleting.insert(uid.to_string()) {
            return;
        }
        self.send(Kind::PodDelete(pb::PodDelete {
            uid: uid.to_string(),
            grace_period_seconds,
        }));
    }

    /// Whether this session was told about `uid` (or the edge ran it at Hello).
    pub(crate) fn knows(&self, uid: &str) -> bool {
        self.sent.contains_key(uid) || self.running_at_hello.contains(uid)
    }

    /// The pod is gone from the API: stop it at once if the edge has it.
    pub(crate) fn pod_removed(&mut self, uid: &str) {
        self.configs.remove(uid);
        if self.sent.remove(uid).is_some() || self.running_at_hello.remove(uid) {
            self.delete(uid, 0);
        }
        self.deleting.remove(uid);
    }

    /// Asks the edge to open tunnel `tunnel_id` to `port` of pod `pod_uid`.
    /// Asks the edge to open tunnel `tunnel_id` to `pod_uid`'s `port`; false if the session's
    /// queue is too full to take it (that request fails; the session stays).
    pub(crate) fn open_tunnel(&mut self, tunnel_id: u64, pod_uid: &str, port: u32) -> bool {
        self.send_optional(Kind::OpenTunnel(pb::OpenTunnel {
            tunnel_id,
            pod_uid: pod_uid.to_string(),
            port,
        }))
    }

    /// Asks the edge to open an exec or attach tunnel; false if the session's queue is too
    /// full to take it.
    pub(crate) fn open_exec(&mut self, open: pb::OpenExec) -> bool {
        self.send_optional(Kind::OpenExec(open))
    }

    /// Asks the edge for a container's logs (answered with `LogChunk`s); false if the
    /// session's queue is too full to take it.
    pub(crate) fn request_logs(&mut self, request: pb::LogRequest) -> bool {
        self.send_optional(Kind::LogRequest(request))
    }

    /// Queues a message the edge may go without (a request of a user's, not pod state): only
    /// while the queue has room to spare for pod state, so a burst of requests can fail them
    /// but never close the session.
    fn send_optional(&mut self, kind: Kind) -> bool {
        if self.tx.capacity() < self.tx.max_capacity() / OPTIONAL_HEADROOM_DIVISOR {
            return false;
        }
        self.tx
            .try_send(Ok(pb::OperatorMessage { kind: Some(kind) }))
            .is_ok()
    }

    /// Tells the edge to stop streaming log request `request_id`.
    pub(crate) fn cancel_logs(&mut self, request_id: u64) {
        self.send(Kind::LogCancel(pb::LogCancel { request_id }));
    }

    /// The edge confirmed `uid` is gone.
    pub(crate) fn pod_gone(&mut self, uid: &str) {
        self.sent.remove(uid);
        self.deleting.remove(uid);
        self.running_at_hello.remove(uid);
    }
}

/// What the Provider controller needs to know about one edge.
#[derive(Clone, Debug, Default)]
pub(crate) struct ProviderView {
    /// `Some(ready)` if the edge was seen since this operator started.
    pub(crate) ready: Option<bool>,
    /// The edge's last Hello since this operator started.
    pub(crate) hello: Option<HelloInfo>,
    /// Wall-clock time of its last sign of life.
    pub(crate) last_heartbeat: Option<SystemTime>,
    /// Uptime ratio over the reliability window.
    pub(crate) reliability: Option<f64>,
    /// How long this operator has been running.
    pub(crate) operator_uptime: Duration,
}

#[derive(Debug)]
struct Inner {
    sessions: HashMap<String, EdgeSession>,
    hellos: HashMap<String, HelloInfo>,
    liveness: LivenessTracker,
    /// Providers deleted while this operator ran: refused until an admin re-creates them.
    revoked: HashSet<String>,
    next_id: u64,
}

/// Every live edge session, by provider name, plus in-memory liveness.
#[derive(Debug)]
pub(crate) struct ProviderRegistry {
    inner: Mutex<Inner>,
    started: Instant,
    metrics: Arc<Metrics>,
}

impl ProviderRegistry {
    /// An empty registry judging edges' liveness with `liveness`.
    pub(crate) fn new(liveness: LivenessTracker, metrics: Arc<Metrics>) -> Self {
        Self {
            inner: Mutex::new(Inner {
                sessions: HashMap::new(),
                hellos: HashMap::new(),
                liveness,
                revoked: HashSet::new(),
                next_id: 1,
            }),
            started: Instant::now(),
            metrics,
        }
    }

    fn lock(&self) -> MutexGuard<'_, Inner> {
        self.inner.lock()
    }

    /// Opens a session for `provider`, replacing (and closing) any older one.
    ///
    /// `welcome` and then `initial(session)` run under the registry lock, so no pod change can
    /// slip between the initial set and the updates after it. Returns the session id, the
    /// close token, and whether the edge became ready.
    pub(crate) fn connect(
        &self,
        provider: &str,
        hello: HelloInfo,
        tx: SessionSender,
        welcome: pb::Welcome,
        initial: impl FnOnce(&mut EdgeSession),
    ) -> (u64, CancellationToken, Option<Transition>) {
        let mut inner = self.lock();
        let id = inner.next_id;
        inner.next_id += 1;
        let close = CancellationToken::new();
        let mut session = EdgeSession {
            id,
            tx,
            close: close.clone(),
            sent: HashMap::new(),
            deleting: HashSet::new(),
            configs: HashMap::new(),
            running_at_hello: hello.running.clone(),
            platform: hello.platform.clone(),
            availability_pacer: ChangePacer::default(),
            volumes: None,
        };
        session.send(Kind::Welcome(welcome));
        initial(&mut session);
        if let Some(old) = inner.sessions.insert(provider.to_string(), session) {
            let _ = old.tx.try_send(Err(Status::aborted(format!(
                "replaced by a newer session of provider {provider:?}"
            ))));
            old.close.cancel();
            self.metrics.sessions_closed("replaced");
        }
        inner.hellos.insert(provider.to_string(), hello);
        let transition = inner.liveness.heartbeat(provider, Instant::now());
        self.metrics.sessions_opened.inc();
        self.metrics
            .connected_edges
            .set(inner.sessions.len() as i64);
        (id, close, transition)
    }

    /// Ends session `id` of `provider` if it is still the current one.
    pub(crate) fn disconnect(&self, provider: &str, id: u64, reason: &'static str) {
        let mut inner = self.lock();
        if inner.sessions.get(provider).is_some_and(|s| s.id == id) {
            inner.sessions.remove(provider);
            self.metrics.sessions_closed(reason);
            self.metrics
                .connected_edges
                .set(inner.sessions.len() as i64);
        }
    }

    /// Closes `provider`'s session with `status` and forgets it entirely (Provider deleted).
    pub(crate) fn revoke(&self, provider: &str, status: Status) {
        let mut inner = self.lock();
        if let Some(old) = inner.sessions.remove(provider) {
            let _ = old.tx.try_send(Err(status));
            old.close.cancel();
            self.metrics.sessions_closed("revoked");
        }
        inner.hellos.remove(provider);
        inner.liveness.forget(provider);
        inner.revoked.insert(provider.to_string());
        self.metrics
            .connected_edges
            .set(inner.sessions.len() as i64);
    }

    /// Whether `provider` was deleted while this operator ran (its edge must not re-create it).
    pub(crate) fn is_revoked(&self, provider: &str) -> bool {
        self.lock().revoked.contains(provider)
    }

    /// Admits `provider` again (an admin re-created it).
    pub(crate) fn readmit(&self, provider: &str) {
        self.lock().revoked.remove(provider);
    }

    /// Records session `id`'s availability (stale sessions are ignored). Returns when to
    /// reconcile the Provider: `None` when nothing changed or a reconcile is already due.
    pub(crate) fn set_availability(
        &self,
        provider: &str,
        id: u64,
        availability: EdgeAvailability,
    ) -> Option<Duration> {
        let mut inner = self.lock();
        let Inner {
            sessions, hellos, ..
        } = &mut *inner;
        let session = sessions.get_mut(provider).filter(|s| s.id == id)?;
        let hello = hellos.get_mut(provider)?;
        if hello.availability == availability {
            return None;
        }
        hello.availability = availability;
        session.availability_pacer.on_change(Instant::now())
    }

    /// Records a heartbeat of session `id`; stale sessions' heartbeats are ignored.
    pub(crate) fn heartbeat(&self, provider: &str, id: u64) -> Option<Transition> {
        let mut inner = self.lock();
        if inner.sessions.get(provider).is_none_or(|s| s.id != id) {
            return None;
        }
        self.metrics.heartbeats.inc();
        inner.liveness.heartbeat(provider, Instant::now())
    }

    /// Edges that just became unreachable. Counts and logs operator stalls and disruptions
    /// (mass silence held instead of failed over) on the way.
    pub(crate) fn sweep(&self) -> Vec<(String, Transition)> {
        self.sweep_at(Instant::now())
    }

    fn sweep_at(&self, now: Instant) -> Vec<(String, Transition)> {
        let (sweep, disrupted, policy) = {
            let mut inner = self.lock();
            let sweep = inner.liveness.sweep(now);
            (
                sweep,
                inner.liveness.is_disrupted(),
                inner.liveness.disruption_policy(),
            )
        };
        self.metrics.liveness_disruption.set(i64::from(disrupted));
        match sweep.event {
            Some(SweepEvent::Stalled { gap }) => {
                self.metrics.liveness_stalls.inc();
                tracing::warn!(
                    gap_ms = gap.as_millis() as u64,
                    "the operator stalled ({gap:?} since the previous liveness sweep): judging \
                     no edge until the heartbeats received meanwhile are read"
                );
            }
            Some(SweepEvent::DisruptionBegan { silent, ready }) => {
                self.metrics.liveness_disruptions.inc();
                tracing::warn!(
                    silent,
                    ready,
                    hold_ms = policy.hold.as_millis() as u64,
                    "{silent} of {ready} ready edges went silent at once: suspecting the \
                     operator or its network rather than the edges; holding NotReady verdicts \
                     for up to {:?}",
                    policy.hold
                );
            }
            Some(SweepEvent::DisruptionEnded {
                held,
                marked,
                ready,
            }) => {
                tracing::info!(
                    held_ms = held.as_millis() as u64,
                    marked,
                    ready,
                    "disruption over after {held:?}: edges resumed; marking the {marked} of \
                     {ready} ready edges still silent past the window NotReady as usual"
                );
            }
            Some(SweepEvent::DisruptionHoldExpired {
                held,
                marked,
                ready,
            }) => {
                tracing::warn!(
                    held_ms = held.as_millis() as u64,
                    marked,
                    ready,
                    "disruption outlasted the hold ({held:?}): marking the {marked} of {ready} \
                     ready edges still silent NotReady"
                );
            }
            None => {}
        }
        sweep.transitions
    }

    /// Runs `f` on `provider`'s live session, if any, under the registry lock. `f` must not
    /// block.
    pub(crate) fn with_session<T>(
        &self,
        provider: &str,
        f: impl FnOnce(&mut EdgeSession) -> T,
    ) -> Option<T> {
        self.lock().sessions.get_mut(provider).map(f)
    }

    /// Runs `f` on session `id` of `provider` if it is still the current one.
    pub(crate) fn with_current<T>(
        &self,
        provider: &str,
        id: u64,
        f: impl FnOnce(&mut EdgeSession) -> T,
    ) -> Option<T> {
        self.lock()
            .sessions
            .get_mut(provider)
            .filter(|s| s.id == id)
            .map(f)
    }

    /// Runs `f` on every live session (provider name, session), under the registry lock.
    pub(crate) fn for_each_session(&self, mut f: impl FnMut(&str, &mut EdgeSession)) {
        for (name, s) in self.lock().sessions.iter_mut() {
            f(name, s);
        }
    }

    /// Names of the providers whose edges are ready.
    pub(crate) fn ready_providers(&self) -> Vec<String> {
        self.lock().liveness.ready_names()
    }

    /// The container runtime `provider`'s edge reported.
    pub(crate) fn runtime(&self, provider: &str) -> String {
        self.lock()
            .hellos
            .get(provider)
            .map(|h| h.runtime.clone())
            .unwrap_or_else(|| "docker".into())
    }

    /// The pod network `provider`'s edge announced in its Hello, if any.
    pub(crate) fn pod_network(&self, provider: &str) -> Option<PodNetwork> {
        self.lock().hellos.get(provider).and_then(|h| h.pod_network)
    }

    /// Everything the Provider controller needs about `provider`.
    pub(crate) fn view(&self, provider: &str) -> ProviderView {
        let mut inner = self.lock();
        let now = Instant::now();
        let wall = SystemTime::now();
        ProviderView {
            ready: inner.liveness.is_ready(provider),
            hello: inner.hellos.get(provider).cloned(),
            last_heartbeat: inner
                .liveness
                .last_heartbeat(provider)
                .map(|t| wall - now.saturating_duration_since(t)),
            reliability: inner.liveness.reliability(provider, now),
            operator_uptime: now.saturating_duration_since(self.started),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::edge::liveness::{DisruptionPolicy, LivenessTimings};

    #[test]
    fn platform_claims_are_checked_and_bounded() {
        let claim = |os: &str, arch: &str, kernel: &str| {
            platform(&pb::Platform {
                os: os.into(),
                architecture: arch.into(),
                kernel_version: kernel.into(),
                ..Default::default()
            })
        };
        let p = claim("linux", "arm64", "6.1.0").unwrap();
        assert_eq!((p.os.as_str(), p.architecture.as_str()), ("linux", "arm64"));
        assert_eq!(p.kernel_version, "6.1.0");
        for (os, arch) in [
            ("", "amd64"),
            ("linux", ""),
            ("Linux", "amd64"),
            ("linux", "amd64,x"),
        ] {
            assert_eq!(claim(os, arch, ""), None, "{os:?} {arch:?}");
        }
        let long = claim("linux", "amd64", &"k\n".repeat(400)).unwrap();
        assert!(long.kernel_version.len() <= MAX_PLATFORM_TEXT);
        assert!(!long.kernel_version.contains('\n'));
    }

    #[test]
    fn claimed_resources_are_clamped() {
        let r = |cpu_millis, memory_bytes, pods| pb::Resources {
            cpu_millis,
            memory_bytes,
            pods,
            storage_bytes: 0,
        };
        for (claim, want) in [
            (i64::MAX, decloud_crds::MAX_STORAGE_BYTES),
            (-1, 0),
            (50 << 30, 50 << 30),
        ] {
            let claim = pb::Resources {
                storage_bytes: claim,
                ..Default::default()
            };
            assert_eq!(clamp_resources(claim).storage_bytes, want);
        }
        let cases = [
            (r(4000, 8 << 30, 110), r(4000, 8 << 30, 110)),
            (
                r(i64::MAX, i64::MAX, i64::MAX),
                r(MAX_CPU_MILLIS, MAX_MEMORY_BYTES, MAX_PODS),
            ),
            (
                r(10_i64.pow(18), 1 << 62, 10_001),
                r(MAX_CPU_MILLIS, MAX_MEMORY_BYTES, MAX_PODS),
            ),
            (r(-1, i64::MIN, -5), r(0, 0, 0)),
        ];
        for (claim, want) in cases {
            assert_eq!(clamp_resources(claim), want, "{claim:?}");
            let hello = pb::Hello {
                capacity: Some(claim),
                offered: Some(claim),
                ..Default::default()
            };
            let info = HelloInfo::from_hello(&hello);
            assert_eq!((info.capacity, info.offered), (want, want), "{claim:?}");
        }
    }

    #[test]
    fn pod_networks() {
        let ip = |s: &str| s.parse::<std::net::IpAddr>().unwrap();
        // (cidr, an address inside, one outside)
        let cases = [
            ("172.18.0.0/16", "172.18.3.4", "172.19.0.1"),
            ("10.0.0.0/8", "10.200.1.1", "11.0.0.1"),
            ("192.168.5.0/24", "192.168.5.255", "192.168.6.0"),
            ("10.1.2.3/32", "10.1.2.3", "10.1.2.4"),
            ("fd00:1::/64", "fd00:1::5", "fd00:2::5"),
        ];
        for (cidr, inside, outside) in cases {
            let n = PodNetwork::parse(cidr).unwrap();
            assert!(n.contains(ip(inside)), "{cidr} {inside}");
            assert!(!n.contains(ip(outside)), "{cidr} {outside}");
            assert!(!n.contains(ip("::1")) || cidr.contains(':'), "{cidr}");
        }
        for bad in [
            "",
            "10.0.0.0",
            "0.0.0.0/0",
            "10.0.0.0/7",
            "10.0.0.0/33",
            "x/8",
            "::/0",
            "fd00::/31",
        ] {
            assert_eq!(PodNetwork::parse(bad), None, "{bad:?}");
        }
    }

    fn spec(uid: &str, hash: &str) -> pb::PodSpec {
        pb::PodSpec {
            uid: uid.into(),
            spec_hash: hash.into(),
            ..Default::default()
        }
    }

    fn drain(rx: &mut mpsc::Receiver<Result<pb::OperatorMessage, Status>>) -> Vec<String> {
        let mut out = Vec::new();
        while let Ok(m) = rx.try_recv() {
            out.push(match m {
                Err(s) => format!("error {:?}", s.code()),
                Ok(pb::OperatorMessage { kind: Some(k) }) => match k {
                    Kind::Welcome(_) => "welcome".into(),
                    Kind::PodSet(s) => format!("set {}", s.pods.len()),
                    Kind::PodUpsert(u) => format!("upsert {}", u.pod.unwrap_or_default().uid),
                    Kind::PodDelete(d) => format!("delete {} {}", d.uid, d.grace_period_seconds),
                    Kind::PodConfig(c) => format!("config {}", c.pod_uid),
                    other => format!("{other:?}"),
                },
                Ok(_) => "empty".into(),
            });
        }
        out
    }

    const TIMINGS: LivenessTimings = LivenessTimings {
        heartbeat_interval: Duration::from_secs(1),
        unreachable_after: Duration::from_secs(3),
        sweep_period: Duration::from_millis(250),
    };

    fn registry() -> ProviderRegistry {
        ProviderRegistry::new(
            LivenessTracker::new(TIMINGS, DisruptionPolicy::default()),
            Arc::new(Metrics::default()),
        )
    }

    #[test]
    fn sweeps_count_stalls_and_disruptions() {
        let metrics = Arc::new(Metrics::default());
        // One ready edge is enough to count as a large fleet here, so its silence is held.
        let policy = DisruptionPolicy {
            unhealthy_threshold: 0.5,
            large_cluster_size: 1,
            hold: Duration::from_secs(10),
        };
        let r = ProviderRegistry::new(LivenessTracker::new(TIMINGS, policy), metrics.clone());
        let (tx, _rx) = mpsc::channel(8);
        r.connect(
            "a",
            HelloInfo::default(),
            tx,
            pb::Welcome::default(),
            |_| {},
        );
        let t = Instant::now();
        let at = |secs: f64| t + Duration::from_secs_f64(secs);
        for s in [1.0, 2.0, 2.9] {
            assert!(r.sweep_at(at(s)).is_empty());
        }
        assert!(r.sweep_at(at(3.5)).is_empty(), "held");
        assert_eq!(
            (
                metrics.liveness_disruption.get(),
                metrics.liveness_disruptions.get()
            ),
            (1, 1)
        );
        assert!(r.sweep_at(at(10.0)).is_empty(), "a stall");
        assert_eq!(metrics.liveness_stalls.get(), 1);
        for s in [11.0, 12.0, 13.0] {
            assert!(r.sweep_at(at(s)).is_empty(), "still held at {s}");
        }
        assert_eq!(
            r.sweep_at(at(14.0)),
            vec![("a".to_string(), Transition::BecameUnreachable)],
            "held 10.5 s > 10 s"
        );
        assert_eq!(metrics.liveness_disruption.get(), 0);
        assert_eq!(metrics.liveness_disruptions.get(), 1);
    }

    #[test]
    fn isolation_claims_are_mapped_and_unknown_words_dropped() {
        for (word, want) in [
            ("Enforced", Some(EgressPolicyState::Enforced)),
            ("Disabled", Some(EgressPolicyState::Disabled)),
            ("Off", None),
            ("", None),
            ("enforced-ish", None),
        ] {
            let got = isolation(&pb::HostIsolation {
                userns_remap: true,
                egress_policy: word.into(),
            });
            assert_eq!(got.egress_policy, want, "{word:?}");
            assert!(got.userns_remap);
        }
        let h = HelloInfo::from_hello(&pb::Hello::default());
        assert_eq!(
            h.isolation, None,
            "an edge that says nothing claims nothing"
        );
    }

    #[test]
    fn sends_in_order_and_deduplicates() {
        let r = registry();
        let (tx, mut rx) = mpsc::channel(64);
        let hello = HelloInfo {
            running: ["old".to_string()].into(),
            ..Default::default()
        };
        let (id, _, transition) = r.connect("a", hello, tx, pb::Welcome::default(), |s| {
            s.send_pod_set(vec![spec("p1", "h1")])
        });
        assert_eq!(transition, Some(Transition::BecameReady));
        r.with_session("a", |s| {
            s.upsert(spec("p1", "h1")); // already sent: nothing
            s.upsert(spec("p1", "h2")); // changed
            s.upsert(spec("p2", "h1"));
            s.delete("p2", 5);
            s.delete("p2", 5); // once per session
            s.upsert(spec("p2", "h3")); // being deleted: not resurrected
            s.pod_removed("p1"); // force-deleted in the API: stop now
            s.pod_removed("never-sent"); // nothing to stop
            assert!(s.knows("old")); // ran at Hello
            s.pod_gone("old");
            assert!(!s.knows("old"));
        });
        assert_eq!(
            drain(&mut rx),
            vec![
                "welcome",
                "set 1",
                "upsert p1",
                "upsert p2",
                "delete p2 5",
                "delete p1 0"
            ]
        );
        assert_eq!(r.with_current("a", id + 1, |_| ()), None);
        assert_eq!(
            r.heartbeat("a", id + 1),
            None,
            "a stale session's heartbeat"
        );
    }

    #[test]
    fn a_newer_session_replaces_the_old_one() {
        let r = registry();
        let (tx1, mut rx1) = mpsc::channel(8);
        let (id1, close1, _) = r.connect(
            "a",
            HelloInfo::default(),
            tx1,
            pb::Welcome::default(),
            |_| {},
        );
        let (tx2, mut rx2) = mpsc::channel(8);
        let (id2, _, transition) = r.connect(
            "a",
            HelloInfo::default(),
            tx2,
            pb::Welcome::default(),
            |_| {},
        );
        assert_ne!(id1, id2);
        assert_eq!(transition, None, "still ready");
        assert!(close1.is_cancelled());
        assert_eq!(drain(&mut rx1), vec!["welcome", "error Aborted"]);
        // The old session ending later does not unregister the new one.
        r.disconnect("a", id1, "edge_closed");
        assert!(r.with_session("a", |_| ()).is_some(), "still connected");
        assert_eq!(drain(&mut rx2), vec!["welcome"]);
        r.revoke("a", Status::permission_denied("deleted"));
        assert_eq!(drain(&mut rx2), vec!["error PermissionDenied"]);
        assert!(r.is_revoked("a"));
        assert_eq!(r.view("a").ready, None);
        r.readmit("a");
        assert!(!r.is_revoked("a"));
    }
}
