//! `edge-kubelet status`: what this machine runs, the caps in force, the connection state and
//! the resources given so far.
//!
//! The running agent rewrites `status.json` in its state folder every few seconds (atomically,
//! mode 0600); `edge-kubelet status` reads it, so no port needs to be opened for it.

use super::given::{Given, GivenLedger};
use std::path::{Path, PathBuf};
use std::time::Duration;

use std::sync::Arc;

use parking_lot::Mutex;
use serde::{Deserialize, Serialize};
use tokio_util::sync::CancellationToken;

use decloud_proto as pb;

use crate::clock::now_unix_secs;
use crate::error::{Error, Result};

/// File name of the report in the state folder.
pub(crate) const FILE: &str = "status.json";
/// How often the running agent rewrites it.
pub(crate) const PERIOD: Duration = Duration::from_secs(2);

/// What `edge-kubelet status` shows.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct EdgeReport {
    /// Process id of the agent.
    pub pid: u32,
    /// Provider name.
    pub provider: String,
    /// Operator URL.
    pub operator: String,
    /// Container runtime.
    pub runtime: String,
    /// Whether the session with the operator is up.
    pub connected: bool,
    /// When this report was written (unix seconds).
    pub written_unix: i64,
    /// CPU offered, millicores.
    pub offered_cpu_millis: i64,
    /// Memory offered, bytes.
    pub offered_memory_bytes: i64,
    /// Most pods at once.
    pub offered_pods: i64,
    /// Ephemeral storage offered (writable layers and logs), bytes; 0: not stated.
    #[serde(default)]
    pub offered_storage_bytes: i64,
    /// How the storage bound is enforced on this machine.
    #[serde(default)]
    pub storage_enforcement: String,
    /// Accepted images (empty: any).
    pub allowed_images: Vec<String>,
    /// The egress policy: `enforced`, `OFF (--unsafe-no-egress-policy)` or `not applicable`.
    #[serde(default)]
    pub egress: String,
    /// The rules as installed (`iptables -S` of the edge's chains, both families).
    #[serde(default)]
    pub egress_rules: Vec<String>,
    /// The cgroup every container runs under, with the offer as its limits.
    #[serde(default)]
    pub cgroup_parent: String,
    /// Whether the engine runs with `userns-remap` (`None`: unknown, e.g. simulated).
    #[serde(default)]
    pub userns_remap: Option<bool>,
    /// Local images lent to tenants (`--lend-local-image`).
    #[serde(default)]
    pub lent_images: Vec<String>,
    /// Registries allowed although private (`--allow-registry`).
    #[serde(default)]
    pub allowed_registries: Vec<String>,
    /// One line per pod.
    pub pods: Vec<PodLine>,
    /// Resources given today (the machine's local date) and since the edge first ran here.
    #[serde(default)]
    pub given_today: Given,
    /// Likewise, in total.
    #[serde(default)]
    pub given_total: Given,
    /// Share of this agent's run time it was connected to the operator (0..=1); the
    /// operator's own measure is the Provider's `reliability`.
    #[serde(default)]
    pub connected_ratio: f64,
    /// The local console's address (`http://127.0.0.1:PORT/`, without its token); empty: off.
    #[serde(default)]
    pub console_url: String,
}

/// What the running agent knows now, for each rewrite of the report.
#[derive(Debug, Clone, Default)]
pub(crate) struct Live {
    pub(crate) connected: bool,
    pub(crate) pods: Vec<pb::PodStatus>,
    /// The admitted pods (images, requests), by uid.
    pub(crate) apps: Vec<crate::pod::AppLine>,
    pub(crate) offered: pb::Resources,
}

/// One pod in the report.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct PodLine {
    /// `namespace/name`.
    pub pod: String,
    /// Pod phase.
    pub phase: String,
    /// Ready for traffic.
    pub ready: bool,
    /// Restarts summed over containers.
    pub restarts: u32,
    /// CPU time used, seconds.
    pub cpu_seconds: f64,
    /// Memory held over time, GiB-hours.
    pub memory_gib_hours: f64,
    /// Bytes its writable layers and logs hold (last measured).
    #[serde(default)]
    pub storage_bytes: i64,
    /// Its containers' images.
    #[serde(default)]
    pub images: Vec<String>,
    /// CPU it requests (millicores), as admission counts it.
    #[serde(default)]
    pub cpu_request_millis: i64,
    /// Memory it requests (bytes).
    #[serde(default)]
    pub memory_request_bytes: i64,
}

impl PodLine {
    fn from_status(s: &pb::PodStatus, apps: &[crate::pod::AppLine]) -> Self {
        let usage = s.usage.unwrap_or_default();
        let app = apps.iter().find(|a| a.uid == s.uid);
        Self {
            images: app.map(|a| a.images.clone()).unwrap_or_default(),
            cpu_request_millis: app.map_or(0, |a| a.requests[0]),
            memory_request_bytes: app.map_or(0, |a| a.requests[1]),
            pod: format!("{}/{}", s.namespace, s.name),
            phase: s
                .phase()
                .as_str_name()
                .trim_start_matches("POD_PHASE_")
                .to_lowercase(),
            ready: s.ready,
            restarts: s.containers.iter().map(|c| c.restart_count).sum(),
            cpu_seconds: usage.cpu_seconds,
            memory_gib_hours: usage.memory_gib_hours,
            storage_bytes: usage.ephemeral_storage_bytes,
        }
    }
}

/// Rewrites the report every [`PERIOD`] until `shutdown`; `base` carries the fixed fields and
/// `now` says what changes (session, pods, offer). The latest report is also kept in
/// `latest`, for the console.
pub(crate) async fn keep_writing(
    state_dir: PathBuf,
    base: EdgeReport,
    now: impl Fn() -> Live,
    latest: Arc<Mutex<EdgeReport>>,
    shutdown: CancellationToken,
) {
    let mut tick = tokio::time::interval(PERIOD);
    let mut given = GivenLedger::open(&state_dir);
    let (mut ticks, mut connected_ticks) = (0u64, 0u64);
    let build = |live: Live, given: &GivenLedger, ratio: f64| EdgeReport {
        connected: live.connected,
        written_unix: now_unix_secs(),
        offered_cpu_millis: live.offered.cpu_millis,
        offered_memory_bytes: live.offered.memory_bytes,
        offered_pods: live.offered.pods,
        offered_storage_bytes: live.offered.storage_bytes,
        pods: live
            .pods
            .iter()
            .map(|p| PodLine::from_status(p, &live.apps))
            .collect(),
        given_today: given.today(),
        given_total: given.total(),
        connected_ratio: ratio,
        ..base.clone()
    };
    loop {
        tokio::select! {
            _ = shutdown.cancelled() => break,
            _ = tick.tick() => {}
        }
        let live = now();
        ticks += 1;
        connected_ticks += u64::from(live.connected);
        given.record(&live.pods);
        let report = build(live, &given, connected_ticks as f64 / ticks as f64);
        if let Err(e) = write(&state_dir, &report) {
            tracing::debug!(error = %e, "writing status.json failed");
        }
        *latest.lock() = report;
    }
    // The agent is stopping: say so, so `status` does not show a stale "connected".
    let live = Live {
        connected: false,
        ..now()
    };
    let report = build(live, &given, connected_ticks as f64 / ticks.max(1) as f64);
    let _ = write(&state_dir, &report);
}

fn write(state_dir: &Path, report: &EdgeReport) -> std::io::Result<()> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    let tmp = state_dir.join(format!("{FILE}.tmp"));
    let mut f = std::fs::OpenOptions::new()
        .create(true)
        .truncate(true)
        .write(true)
        .mode(0o600)
        .open(&tmp)?;
    f.write_all(&serde_json::to_vec_pretty(report)?)?;
    std::fs::rename(&tmp, state_dir.join(FILE))?;
    Ok(())
}

/// Reads the report of the agent using `state_dir`.
pub fn read(state_dir: &Path) -> Result<EdgeReport> {
    let path = state_dir.join(FILE);
    let text = std::fs::read_to_string(&path).map_err(|e| {
        Error::InvalidInput(format!(
            "no status in {} ({e}): is edge-kubelet running with --state-dir {}?",
            path.display(),
            state_dir.display()
        ))
    })?;
    serde_json::from_str(&text)
        .map_err(|e| Error::InvalidInput(format!("{} is not a status report: {e}", path.display())))
}

/// `edge-kubelet status`: the report of the agent using `state_dir`, rendered.
pub(crate) fn status_text(state_dir: &Path) -> Result<String> {
    let r = read(state_dir)?;
    let alive = Path::new(&format!("/proc/{}", r.pid)).exists();
    Ok(render(&r, now_unix_secs(), alive))
}

/// The report as a person reads it. `alive` says whether process `pid` still runs.
pub(crate) fn render(r: &EdgeReport, now_unix: i64, alive: bool) -> String {
    let age = now_unix - r.written_unix;
    let state = match (alive, r.connected) {
        (false, _) => "agent not running".to_string(),
        (true, true) => "connected".to_string(),
        (true, false) => "disconnected (retrying; pods keep running)".to_string(),
    };
    let cpu: f64 = r.pods.iter().map(|p| p.cpu_seconds).sum();
    let mem: f64 = r.pods.iter().map(|p| p.memory_gib_hours).sum();
    let mut out = format!(
        "provider:   {} (node edge-{})\noperator:   {}\nsession:    {state} (report {age}s old, pid {})\nruntime:    {}\noffered:    cpu {}m, memory {} MiB, pods {}\nimages:     {}\ngiven:      {cpu:.3} CPU-seconds, {mem:.4} GiB-hours of memory, {} pods now\n",
        r.provider,
        r.provider,
        r.operator,
        r.pid,
        r.runtime,
        r.offered_cpu_millis,
        r.offered_memory_bytes >> 20,
        r.offered_pods,
        if r.allowed_images.is_empty() {
            "any".to_string()
        } else {
            r.allowed_images.join(", ")
        },
        r.pods.len(),
    );
    let list = |v: &[String]| {
        if v.is_empty() {
            "none".to_string()
        } else {
            v.join(", ")
        }
    };
    out.push_str(&format!(
        "ceiling:    {}
userns:     {}
lent:       {}
registries: public, plus {}
egress:     {}
",
        if r.cgroup_parent.is_empty() {
            "none"
        } else {
            &r.cgroup_parent
        },
        match r.userns_remap {
            Some(true) => "userns-remap on (root in a container is not root here)",
            Some(false) => "userns-remap off (root in a container is root here, confined)",
            None => "unknown",
        },
        list(&r.lent_images),
        list(&r.allowed_registries),
        if r.egress.is_empty() {
            "unknown"
        } else {
            &r.egress
        },
    ));
    for rule in &r.egress_rules {
        out.push_str(&format!("  {rule}\n"));
    }
    out.push_str(&format!(
        "given today: {:.3} CPU-hours, {:.4} GiB-hours of memory; in total: {:.3} CPU-hours, {:.4} GiB-hours\n",
        r.given_today.cpu_seconds / 3600.0,
        r.given_today.memory_gib_hours,
        r.given_total.cpu_seconds / 3600.0,
        r.given_total.memory_gib_hours,
    ));
    if !r.console_url.is_empty() {
        out.push_str(&format!(
            "console:    {} (edge-kubelet console-url prints it with its token)\n",
            r.console_url
        ));
    }
    let stored = r
        .pods
        .iter()
        .fold(0i64, |a, p| a.saturating_add(p.storage_bytes.max(0)));
    out.push_str(&format!(
        "storage:    {} MiB used of {} MiB offered (writable layers and logs); pods {}\n",
        stored >> 20,
        r.offered_storage_bytes >> 20,
        if r.storage_enforcement.is_empty() {
            "unbounded"
        } else {
            &r.storage_enforcement
        },
    ));
    if !r.pods.is_empty() {
        out.push_str(&format!(
            "\n{:<48} {:<10} {:<6} {:>8} {:>10} {:>12} {:>10}\n",
            "POD", "PHASE", "READY", "RESTARTS", "CPU-S", "GIB-HOURS", "DISK-MIB"
        ));
        for p in &r.pods {
            out.push_str(&format!(
                "{:<48} {:<10} {:<6} {:>8} {:>10.3} {:>12.4} {:>10}\n",
                p.pod,
                p.phase,
                p.ready,
                p.restarts,
                p.cpu_seconds,
                p.memory_gib_hours,
                p.storage_bytes >> 20
            ));
        }
    }
    out
}

/// The persistent volumes held on this machine, for `edge-kubelet status`: one line each
/// (id, size, whether it is mounted).
pub(crate) fn render_volumes(volumes: &[crate::host::Volume]) -> String {
    let total = volumes
        .iter()
        .fold(0u64, |a, v| a.saturating_add(v.size_bytes));
    let bytes = |b: u64| decloud_crds::quantity::format_bytes(i64::try_from(b).unwrap_or(i64::MAX));
    let mut out = format!(
        "volumes:    {} persistent ({} held)\n",
        volumes.len(),
        bytes(total)
    );
    for v in volumes {
        let mounted = if v.mounted_at.is_some() {
            "mounted"
        } else {
            "not mounted"
        };
        out.push_str(&format!("  {}  {}  {mounted}\n", v.id, bytes(v.size_bytes)));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trips_through_the_state_folder_and_renders() {
        let dir = tempfile::tempdir().expect("tempdir");
        let report = EdgeReport {
            pid: 42,
            provider: "alice".into(),
            operator: "https://op:7443".into(),
            runtime: "docker".into(),
            connected: true,
            written_unix: 100,
            offered_cpu_millis: 2000,
            offered_memory_bytes: 4 << 30,
            offered_pods: 10,
            offered_storage_bytes: 256 << 20,
            storage_enforcement: "evicted above their limits".into(),
            allowed_images: vec![],
            egress: "enforced".into(),
            egress_rules: vec!["iptables: -N DECLOUD-0-IN".into()],
            cgroup_parent: "/decloud-edge-alice".into(),
            userns_remap: Some(false),
            lent_images: vec![],
            allowed_registries: vec![],
            pods: vec![PodLine {
                pod: "default/web-1".into(),
                phase: "running".into(),
                ready: true,
                restarts: 1,
                cpu_seconds: 12.5,
                memory_gib_hours: 0.25,
                storage_bytes: 5 << 20,
                ..Default::default()
            }],
            ..Default::default()
        };
        write(dir.path(), &report).expect("write");
        assert_eq!(read(dir.path()).expect("read"), report);
        let text = render(&report, 103, true);
        assert!(text.contains("connected (report 3s old"), "{text}");
        assert!(
            text.contains("cpu 2000m, memory 4096 MiB, pods 10"),
            "{text}"
        );
        assert!(text.contains("default/web-1"), "{text}");
        assert!(
            text.contains("egress:     enforced\n  iptables: -N DECLOUD-0-IN"),
            "{text}"
        );
        assert!(text.contains("userns-remap off"), "{text}");
        assert!(
            text.contains("storage:    5 MiB used of 256 MiB offered"),
            "{text}"
        );
        assert!(render(&report, 103, false).contains("agent not running"));
        let missing = read(&dir.path().join("nope")).expect_err("no report");
        assert!(
            missing.to_string().contains("is edge-kubelet running"),
            "{missing}"
        );
    }

    #[test]
    fn held_volumes_are_listed_with_size_and_mount() {
        let v = |id: &str, size: u64, mounted: bool| crate::host::Volume {
            id: id.into(),
            size_bytes: size,
            mounted_at: mounted.then(|| "/x".into()),
        };
        assert_eq!(
            render_volumes(&[
                v("u1-data-0", 1 << 30, true),
                v("u1-data-1", 16 << 20, false)
            ]),
            "volumes:    2 persistent (1040Mi held)\n  u1-data-0  1Gi  mounted\n  u1-data-1  16Mi  not mounted\n"
        );
        assert_eq!(render_volumes(&[]), "volumes:    0 persistent (0 held)\n");
    }
}
