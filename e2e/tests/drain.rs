//! Planned departure and lending windows, end to end: a real kube-apiserver, the real operator
//! (Workload controller and gateway) and real edge-kubelets on the real Docker engine.
//!
//! - `edge-kubelet drain` under a request loop through the gateway: a replicated and a
//!   single-replica Workload lose no request, each old pod is deleted only after its
//!   replacement elsewhere is Ready, the Provider goes Draining then Drained (Ready all along:
//!   not the crash path), Events say so; `pause` keeps pods but takes no new ones; `resume`
//!   takes work again.
//! - SIGTERM drains before the edge exits; a `--schedule` window closing soon drains the edge
//!   and its status shows the next change; `--when-idle` with a machine that counts as busy
//!   makes it unavailable.
//!
//! Needs `cargo build -p decloud-operator -p edge-kubelet --bins` first.

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context as _, bail, ensure};
use decloud_crds::contracts::{UNSCHEDULABLE_TAINT, node_name};
use decloud_crds::{AvailabilityState, Provider, ProviderPhase, find_condition};
use decloud_e2e::cluster::{
    ContainerSweeper, EdgeProcess, OperatorProcess, busybox_image, http_get_reply, node_of,
    pod_ready, wait_providers_ready, workload_pods,
};
use decloud_e2e::{TestEnv, binary, eventually, free_port};
use k8s_openapi::api::core::v1::{Event, Node, Pod};
use kube::api::{Api, ListParams};
use kube::{Client, ResourceExt};

const NS: &str = "default";

/// A Workload of `replicas` busybox web servers naming themselves. On SIGTERM the server keeps
/// answering for 2 s before it exits, as a web app behind a load balancer finishes in-flight
/// requests: the gateway stops sending new ones to a terminating pod at once.
fn workload(name: &str, replicas: u32) -> anyhow::Result<String> {
    let image = busybox_image()?;
    let script = "echo \"replica $(hostname)\" > /www/index.html; \
        httpd -f -p 8080 -h /www & \
        trap 'sleep 2; exit 0' TERM; \
        while true; do sleep 1; done";
    Ok(format!(
        r#"apiVersion: decloud.dev/v1alpha1
kind: Workload
metadata: {{name: {name}, namespace: {NS}}}
spec:
  replicas: {replicas}
  template:
    metadata: {{labels: {{app: {name}}}}}
    spec:
      terminationGracePeriodSeconds: 5
      containers:
        - name: web
          image: {image}
          command: ["/bin/sh", "-c", {script:?}]
          ports: [{{containerPort: 8080}}]
          resources: {{requests: {{cpu: 20m, memory: 16Mi}}, limits: {{cpu: 300m, memory: 64Mi}}}}
          readinessProbe: {{httpGet: {{path: /, port: 8080}}, periodSeconds: 1}}
  placement: {{spread: Required}}
  expose: {{port: 8080}}
  failover: {{graceSeconds: 3}}
"#
    ))
}

fn host(name: &str) -> String {
    format!("{name}.{NS}.decloud.localhost")
}

/// The cluster, the operator with its gateway on `port`, and the providers' names.
struct Scene {
    client: Client,
    port: u16,
    operator: OperatorProcess,
    sweeper: ContainerSweeper,
    env: TestEnv,
}

impl Scene {
    async fn start(names: &[String]) -> anyhow::Result<Self> {
        let env = TestEnv::start().await?;
        busybox_image()?;
        let port = free_port()?;
        let nodes: Vec<String> = names.iter().map(|n| node_name(n)).collect();
        let operator = OperatorProcess::start(
            &env,
            &[
                "--gateway-listen",
                &format!("127.0.0.1:{port}"),
                "--url-template",
                &format!("http://{{host}}:{port}"),
                "--identity",
                "e2e-drain",
            ],
        )
        .await?;
        Ok(Self {
            client: env.client(),
            port,
            operator,
            sweeper: ContainerSweeper::new(&env, &nodes),
            env,
        })
    }

    fn apply(&self, yaml: &str) -> anyhow::Result<()> {
        self.env.kubectl_stdin(&["apply", "-f", "-"], yaml)?;
        Ok(())
    }

    async fn provider(&self, name: &str) -> anyhow::Result<Provider> {
        Ok(Api::<Provider>::all(self.client.clone()).get(name).await?)
    }
}

fn names(tag: &str, n: usize) -> Vec<String> {
    let run = std::process::id();
    (0..n)
        .map(|i| format!("drn-{run}-{tag}{}", (b'a' + i as u8) as char))
        .collect()
}

/// Waits until Workload `name` has `want` ready replicas on distinct nodes; their nodes.
async fn wait_ready(client: &Client, name: &str, want: usize) -> anyhow::Result<Vec<String>> {
    eventually(Duration::from_secs(90), || async move {
        let pods = workload_pods(client, NS, name).await?;
        let ready: Vec<&Pod> = pods.iter().filter(|p| pod_ready(p)).collect();
        ensure!(
            ready.len() == want && pods.len() == want,
            "{name}: {}/{} ready",
            ready.len(),
            pods.len()
        );
        Ok(ready.iter().map(|p| node_of(p)).collect())
    })
    .await
}

// === the request loop ===

/// Requests through the gateway to every host, one after another, until stopped: counts and
/// the first failures.
struct Load {
    stop: Arc<AtomicBool>,
    ok: Arc<AtomicU64>,
    task: tokio::task::JoinHandle<Vec<String>>,
}

impl Load {
    fn start(port: u16, hosts: Vec<String>) -> Self {
        let stop = Arc::new(AtomicBool::new(false));
        let ok = Arc::new(AtomicU64::new(0));
        let (s, o) = (stop.clone(), ok.clone());
        let task = tokio::spawn(async move {
            let mut failures = Vec::new();
            while !s.load(Ordering::Relaxed) {
                for h in &hosts {
                    match http_get_reply(port, h, "/", Duration::from_secs(5)).await {
                        Ok(r) if r.code == 200 => {
                            o.fetch_add(1, Ordering::Relaxed);
                        }
                        Ok(r) => failures.push(format!("{h}: {} {}", r.code, r.text().trim())),
                        Err(e) => failures.push(format!("{h}: {e:#}")),
                    }
                }
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
            failures
        });
        Self { stop, ok, task }
    }

    /// Stops the loop: (answered, failures).
    async fn finish(self) -> anyhow::Result<(u64, Vec<String>)> {
        self.stop.store(true, Ordering::Relaxed);
        let failures = self.task.await?;
        Ok((self.ok.load(Ordering::Relaxed), failures))
    }
}

// === the pod timeline ===

/// What a poller saw of the pods of some Workloads and one provider, every 100 ms.
#[derive(Default, Debug)]
struct Timeline {
    /// Pod name → (node, first seen Ready, first seen terminating or gone).
    pods: BTreeMap<String, (String, String, Option<Instant>, Option<Instant>)>,
    /// Availability states the provider went through, in order.
    states: Vec<AvailabilityState>,
    /// Phases the provider went through, in order.
    phases: Vec<ProviderPhase>,
}

struct Watcher {
    stop: Arc<AtomicBool>,
    task: tokio::task::JoinHandle<Timeline>,
}

impl Watcher {
    fn start(client: Client, workloads: Vec<String>, provider: String) -> Self {
        let stop = Arc::new(AtomicBool::new(false));
        let s = stop.clone();
        let task = tokio::spawn(async move {
            let mut t = Timeline::default();
            let pods_api = Api::<Pod>::namespaced(client.clone(), NS);
            let providers = Api::<Provider>::all(client);
            while !s.load(Ordering::Relaxed) {
                let now = Instant::now();
                if let Ok(list) = pods_api.list(&ListParams::default()).await {
                    let mut present = BTreeSet::new();
                    for p in list.items {
                        let Some(wl) = p.labels().get("app").cloned() else {
                            continue;
                        };
                        if !workloads.contains(&wl) {
                            continue;
                        }
                        let name = p.name_any();
                        present.insert(name.clone());
                        let e = t
                            .pods
                            .entry(name)
                            .or_insert_with(|| (wl, node_of(&p), None, None));
                        if pod_ready(&p) && p.metadata.deletion_timestamp.is_none() {
                            e.2.get_or_insert(now);
                        }
                        if p.metadata.deletion_timestamp.is_some() {
                            e.3.get_or_insert(now);
                        }
                    }
                    for (name, e) in t.pods.iter_mut() {
                        if !present.contains(name) {
                            e.3.get_or_insert(now);
                        }
                    }
                }
                if let Ok(p) = providers.get(&provider).await
                    && let Some(status) = p.status
                {
                    if let Some(a) = status.availability
                        && t.states.last() != Some(&a.state)
                    {
                        t.states.push(a.state);
                    }
                    if t.phases.last() != Some(&status.phase) {
                        t.phases.push(status.phase);
                    }
                }
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
            t
        });
        Self { stop, task }
    }

    async fn finish(self) -> anyhow::Result<Timeline> {
        self.stop.store(true, Ordering::Relaxed);
        Ok(self.task.await?)
    }
}

impl Timeline {
    /// Every pod of `node` that went away did so only after a replacement of its Workload on
    /// another node had been seen Ready.
    fn make_before_break(&self, node: &str) -> anyhow::Result<usize> {
        let mut moved = 0;
        for (name, (wl, n, _, gone)) in &self.pods {
            if n != node {
                continue;
            }
            let gone = gone.with_context(|| format!("{name} never left {node}"))?;
            let replacement = self
                .pods
                .iter()
                .filter(|(_, (w, n2, ..))| w == wl && n2 != node)
                .filter_map(|(other, (_, _, ready, _))| ready.map(|r| (other, r)))
                .filter(|(_, r)| *r <= gone)
                .count();
            ensure!(
                replacement > 0,
                "{name} ({wl}) left {node} before any replacement elsewhere was Ready: {self:?}"
            );
            moved += 1;
        }
        Ok(moved)
    }
}

// === helpers ===

/// Runs `edge-kubelet <args…>` to the end (2 min at most): stdout.
fn edge_cli(args: &[&str]) -> anyhow::Result<String> {
    let out = std::process::Command::new(binary("edge-kubelet")?)
        .args(args)
        .output()?;
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    if !out.status.success() {
        bail!(
            "edge-kubelet {args:?}: {}\n{stdout}{}",
            out.status,
            String::from_utf8_lossy(&out.stderr)
        );
    }
    Ok(stdout)
}

fn control_args<'a>(edge: &'a EdgeProcess, dir: &'a str) -> [&'a str; 4] {
    ["--name", edge.name.as_str(), "--state-dir", dir]
}

/// Reasons of the Events recorded on Provider `name`.
async fn provider_events(client: &Client, name: &str) -> anyhow::Result<Vec<String>> {
    let events = Api::<Event>::all(client.clone())
        .list(&ListParams::default().fields(&format!(
            "involvedObject.kind=Provider,involvedObject.name={name}"
        )))
        .await?;
    Ok(events.items.into_iter().filter_map(|e| e.reason).collect())
}

/// Reasons of the Events recorded on Workload `name`.
async fn workload_events(client: &Client, name: &str) -> anyhow::Result<Vec<String>> {
    let events = Api::<Event>::namespaced(client.clone(), NS)
        .list(&ListParams::default().fields(&format!(
            "involvedObject.kind=Workload,involvedObject.name={name}"
        )))
        .await?;
    Ok(events.items.into_iter().filter_map(|e| e.reason).collect())
}

/// Whether node `node` becomes (`want` true) or stops being cordoned within 10 s: the Node is
/// written right after the Provider status, in the same reconcile.
async fn cordoned(client: &Client, node: &str) -> anyhow::Result<bool> {
    cordoned_as(client, node, true).await
}

async fn cordoned_as(client: &Client, node: &str, want: bool) -> anyhow::Result<bool> {
    let got = eventually(Duration::from_secs(10), || async move {
        let now = cordoned_now(client, node).await?;
        ensure!(now == want, "{node}: cordoned {now}");
        Ok(now)
    })
    .await;
    match got {
        Ok(v) => Ok(v),
        Err(_) => cordoned_now(client, node).await,
    }
}

/// Whether node `node` is cordoned as `kubectl cordon` leaves a node.
async fn cordoned_now(client: &Client, node: &str) -> anyhow::Result<bool> {
    let n = Api::<Node>::all(client.clone()).get(node).await?;
    let spec = n.spec.unwrap_or_default();
    let tainted = spec
        .taints
        .unwrap_or_default()
        .iter()
        .any(|t| t.key == UNSCHEDULABLE_TAINT && t.effect == "NoSchedule");
    let unschedulable = spec.unschedulable == Some(true);
    ensure!(
        tainted == unschedulable,
        "{node}: unschedulable {unschedulable} but taint {tainted}"
    );
    Ok(unschedulable)
}

async fn wait_state(
    s: &Scene,
    name: &str,
    want: AvailabilityState,
    within: Duration,
) -> anyhow::Result<Provider> {
    eventually(within, || async move {
        let p = s.provider(name).await?;
        let a = p
            .status
            .as_ref()
            .and_then(|st| st.availability.clone())
            .context("no availability")?;
        ensure!(a.state == want, "{name}: {a:?}");
        Ok(p)
    })
    .await
    .with_context(|| format!("operator log:\n{}", s.operator.child.log_tail(20)))
}

fn state_dir(edge: &EdgeProcess) -> String {
    edge.state_dir.to_string_lossy().into_owned()
}

fn socket_is_private(dir: &Path) -> anyhow::Result<()> {
    use std::os::unix::fs::PermissionsExt;
    let mode = std::fs::metadata(dir.join(edge_kubelet::control::CONTROL_SOCKET))?
        .permissions()
        .mode();
    ensure!(mode & 0o777 == 0o600, "control socket mode {mode:o}");
    Ok(())
}

// === the tests ===

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn drain_moves_every_replica_make_before_break_and_resume_takes_work_again()
-> anyhow::Result<()> {
    let names = names("", 3);
    let s = Scene::start(&names).await?;
    // Two providers first: both Workloads land on them, so the one carrying the single
    // replica carries a replica of the other too.
    let mut edges = Vec::new();
    for n in &names[..2] {
        edges.push(EdgeProcess::start(&s.env, &s.operator, n, &[])?);
    }
    wait_providers_ready(&s.client, &s.operator, &names[..2]).await?;
    s.apply(&workload("drn-web", 2)?)?;
    s.apply(&workload("drn-solo", 1)?)?;
    wait_ready(&s.client, "drn-web", 2).await?;
    let solo_node = wait_ready(&s.client, "drn-solo", 1).await?.remove(0);
    edges.push(EdgeProcess::start(&s.env, &s.operator, &names[2], &[])?);
    wait_providers_ready(&s.client, &s.operator, &names).await?;
    let victim = edges
        .iter()
        .position(|e| e.node() == solo_node)
        .context("the solo replica's edge")?;
    let (vname, vnode, vdir) = (
        edges[victim].name.clone(),
        edges[victim].node(),
        state_dir(&edges[victim]),
    );
    socket_is_private(&edges[victim].state_dir)?;

    // Pause: cordoned, the pods stay.
    let out = edge_cli(&[&["pause"][..], &control_args(&edges[victim], &vdir)].concat())?;
    println!("{}", out.trim());
    wait_state(
        &s,
        &vname,
        AvailabilityState::Paused,
        Duration::from_secs(20),
    )
    .await?;
    ensure!(cordoned(&s.client, &vnode).await?, "paused but schedulable");
    let on_victim = |pods: &[Pod]| pods.iter().filter(|p| node_of(p) == vnode).count();
    ensure!(
        on_victim(&workload_pods(&s.client, NS, "drn-solo").await?) == 1,
        "pause moved the solo replica"
    );

    // Drain under load.
    let load = Load::start(s.port, vec![host("drn-web"), host("drn-solo")]);
    tokio::time::sleep(Duration::from_secs(2)).await;
    let watcher = Watcher::start(
        s.client.clone(),
        vec!["drn-web".into(), "drn-solo".into()],
        vname.clone(),
    );
    let started = Instant::now();
    let out = edge_cli(
        &[
            &["drain"][..],
            &control_args(&edges[victim], &vdir),
            &["--timeout", "120s"],
        ]
        .concat(),
    )?;
    let drained_in = started.elapsed();
    println!("{}", out.trim());
    ensure!(out.contains("drained"), "{out}");
    let p = wait_state(
        &s,
        &vname,
        AvailabilityState::Drained,
        Duration::from_secs(20),
    )
    .await?;
    tokio::time::sleep(Duration::from_secs(2)).await;
    let timeline = watcher.finish().await?;
    let (ok, failures) = load.finish().await?;
    println!(
        "drain of {vname}: {:.1}s until empty; {ok} requests answered, {} failed; states {:?}, phases {:?}",
        drained_in.as_secs_f64(),
        failures.len(),
        timeline.states,
        timeline.phases
    );
    ensure!(failures.is_empty(), "failed requests: {failures:?}");
    ensure!(ok > 20, "only {ok} requests answered");
    let moved = timeline.make_before_break(&vnode)?;
    ensure!(
        moved >= 2,
        "expected a web and the solo replica to move: {timeline:?}"
    );
    ensure!(
        timeline.states.contains(&AvailabilityState::Draining)
            && timeline.states.last() == Some(&AvailabilityState::Drained),
        "states {:?}",
        timeline.states
    );
    // A planned departure, not a crash: Ready throughout.
    ensure!(
        timeline.phases == [ProviderPhase::Ready],
        "phases {:?}",
        timeline.phases
    );
    let status = p.status.context("status")?;
    ensure!(
        find_condition(&status.conditions, "Ready").is_some_and(|c| c.is_true()),
        "{:?}",
        status.conditions
    );
    ensure!(
        cordoned(&s.client, &vnode).await?,
        "drained but schedulable"
    );
    let events = provider_events(&s.client, &vname).await?;
    for want in ["Paused", "DrainRequested", "Drained"] {
        ensure!(events.iter().any(|e| e == want), "{want} not in {events:?}");
    }
    let wl_events = workload_events(&s.client, "drn-solo").await?;
    ensure!(
        wl_events.iter().any(|e| e == "Evacuated") && !wl_events.iter().any(|e| e == "Failover"),
        "{wl_events:?}"
    );
    wait_ready(&s.client, "drn-web", 2).await?;
    let solo_now = wait_ready(&s.client, "drn-solo", 1).await?;
    ensure!(solo_now[0] != vnode, "solo still on the drained edge");

    // Resume: takes work again. Three replicas must spread over all three providers.
    let out = edge_cli(&[&["resume"][..], &control_args(&edges[victim], &vdir)].concat())?;
    println!("{}", out.trim());
    wait_state(
        &s,
        &vname,
        AvailabilityState::Available,
        Duration::from_secs(20),
    )
    .await?;
    ensure!(
        !cordoned_as(&s.client, &vnode, false).await?,
        "resumed but cordoned"
    );
    ensure!(
        provider_events(&s.client, &vname)
            .await?
            .iter()
            .any(|e| e == "Resumed"),
        "no Resumed event"
    );
    s.apply(&workload("drn-web", 3)?)?;
    let nodes = wait_ready(&s.client, "drn-web", 3).await?;
    ensure!(
        nodes.contains(&vnode),
        "nothing placed on the resumed edge: {nodes:?}"
    );

    for n in ["drn-web", "drn-solo"] {
        s.env.kubectl(&["delete", "wl", n, "--wait=false"])?;
    }
    drop(edges);
    s.sweeper.sweep();
    Ok(())
}

/// Today's `HH:MM-HH:MM` window around now, in UTC, ending `ahead` minutes from now.
fn window_closing_in(ahead: i64) -> String {
    let now = k8s_openapi::jiff::Timestamp::now().to_zoned(k8s_openapi::jiff::tz::TimeZone::UTC);
    let from = now
        .checked_sub(k8s_openapi::jiff::SignedDuration::from_mins(60))
        .unwrap();
    let to = now
        .checked_add(k8s_openapi::jiff::SignedDuration::from_mins(ahead))
        .unwrap();
    format!(
        "Daily {:02}:{:02}-{:02}:{:02}",
        from.hour(),
        from.minute(),
        to.hour(),
        to.minute()
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn sigterm_a_closing_window_and_a_busy_machine_drain_the_edge() -> anyhow::Result<()> {
    let names = names("t", 4);
    let s = Scene::start(&names).await?;
    // c: lent until 3 minutes from now, drained 1 minute before the window closes.
    let schedule = window_closing_in(3);
    let sched = EdgeProcess::start_args(
        &s.env,
        &s.operator,
        &names[2],
        &[],
        &[
            "--schedule",
            &schedule,
            "--timezone",
            "UTC",
            "--schedule-margin",
            "1m",
        ],
    )?;
    // d: lent only while idle, with a threshold any machine reaches (0: never idle).
    let idle = EdgeProcess::start_args(
        &s.env,
        &s.operator,
        &names[3],
        &[],
        &["--when-idle", "--idle-threshold", "0"],
    )?;
    // b carries the single replica; a joins afterwards to take it over.
    let b = EdgeProcess::start_args(
        &s.env,
        &s.operator,
        &names[1],
        &[],
        &["--shutdown-drain-timeout", "90s"],
    )?;
    wait_providers_ready(&s.client, &s.operator, &names[1..]).await?;

    // The busy machine is unavailable: drained (nothing ran there), cordoned, reason busy.
    let p = wait_state(
        &s,
        &names[3],
        AvailabilityState::Drained,
        Duration::from_secs(30),
    )
    .await?;
    let a = p
        .status
        .and_then(|st| st.availability)
        .context("availability")?;
    ensure!(a.reason.as_deref() == Some("busy"), "{a:?}");
    ensure!(
        cordoned(&s.client, &node_name(&names[3])).await?,
        "busy but schedulable"
    );

    // The scheduled one is available now and says when that ends.
    let p = wait_state(
        &s,
        &names[2],
        AvailabilityState::Available,
        Duration::from_secs(30),
    )
    .await?;
    let a = p
        .status
        .and_then(|st| st.availability)
        .context("availability")?;
    ensure!(
        a.schedule.as_deref() == Some(&format!("{schedule} (UTC)")[..]),
        "{a:?}"
    );
    let first_change = a.next_change_time.clone().context("no next change")?;

    // Only c is available besides b: the single replica lands on b or c; pin it to b by
    // cordoning c as an admin would.
    Api::<Provider>::all(s.client.clone())
        .patch(
            &names[2],
            &kube::api::PatchParams::default(),
            &kube::api::Patch::Merge(serde_json::json!({"spec": {"cordoned": true}})),
        )
        .await?;
    s.apply(&workload("drn-once", 1)?)?;
    let at = wait_ready(&s.client, "drn-once", 1).await?;
    ensure!(at[0] == b.node(), "placed on {at:?}, not on {}", b.node());
    let a_edge = EdgeProcess::start(&s.env, &s.operator, &names[0], &[])?;
    wait_providers_ready(&s.client, &s.operator, &names[..1]).await?;

    // SIGTERM b: it drains (the replica moves to a first), then exits.
    let load = Load::start(s.port, vec![host("drn-once")]);
    tokio::time::sleep(Duration::from_secs(2)).await;
    let watcher = Watcher::start(s.client.clone(), vec!["drn-once".into()], names[1].clone());
    let mut b = b;
    b.child.signal(nix::sys::signal::Signal::SIGTERM);
    let sent = Instant::now();
    eventually(Duration::from_secs(100), || {
        let running = b.child.is_running();
        async move {
            ensure!(!running, "still running");
            Ok(())
        }
    })
    .await?;
    println!("SIGTERM: exited after {:.1}s", sent.elapsed().as_secs_f64());
    tokio::time::sleep(Duration::from_secs(1)).await;
    let timeline = watcher.finish().await?;
    let (ok, failures) = load.finish().await?;
    println!(
        "SIGTERM drain: {ok} requests answered, {} failed; states {:?}",
        failures.len(),
        timeline.states
    );
    ensure!(failures.is_empty(), "failed requests: {failures:?}");
    timeline.make_before_break(&b.node())?;
    let log = std::fs::read_to_string(b.log())?;
    ensure!(
        log.contains("drained: nothing runs here"),
        "{}",
        b.child.log_tail(20)
    );
    let p = s.provider(&names[1]).await?;
    let a = p
        .status
        .and_then(|st| st.availability)
        .context("availability")?;
    ensure!(
        a.state == AvailabilityState::Drained && a.reason.as_deref() == Some("shutdown"),
        "{a:?}"
    );
    let at = wait_ready(&s.client, "drn-once", 1).await?;
    ensure!(at[0] == a_edge.node(), "{at:?}");

    // The window closes (in 1 to 2 minutes): c drains, and shows when it is lent again.
    let p = wait_state(
        &s,
        &names[2],
        AvailabilityState::Drained,
        Duration::from_secs(150),
    )
    .await?;
    let a = p
        .status
        .and_then(|st| st.availability)
        .context("availability")?;
    ensure!(a.reason.as_deref() == Some("schedule"), "{a:?}");
    let next: k8s_openapi::jiff::Timestamp =
        a.next_change_time.as_deref().context("next")?.parse()?;
    let first: k8s_openapi::jiff::Timestamp = first_change.parse()?;
    ensure!(next > first, "next change {next} not after {first}");
    ensure!(
        provider_events(&s.client, &names[2])
            .await?
            .iter()
            .any(|e| e == "Drained"),
        "no Drained event"
    );

    s.env
        .kubectl(&["delete", "wl", "drn-once", "--wait=false"])?;
    drop((a_edge, b, sched, idle));
    s.sweeper.sweep();
    Ok(())
}

/// Provider reconciles `op` has run.
async fn reconciles(op: &OperatorProcess) -> anyhow::Result<f64> {
    Ok(op
        .metric(
            "decloud_operator_reconciles_total",
            "controller=\"provider\"",
        )
        .await?
        .unwrap_or(0.0))
}

/// A modified edge toggling pause / drain / resume as fast as it can, with overlong texts: the
/// operator acts on at most one change per pacing interval (its Provider reconciles stay few),
/// ends on the edge's last word, and keeps only bounded text.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn an_edge_toggling_in_a_loop_does_not_make_the_operator_thrash() -> anyhow::Result<()> {
    use decloud_e2e::raw_edge::{channel, operator_ca, register};
    use decloud_proto as pb;
    use pb::edge_message::Kind as Out;
    use tokio_stream::wrappers::ReceiverStream;

    let env = TestEnv::start().await?;
    let client = env.client();
    let operator = OperatorProcess::start(&env, &[]).await?;
    let name = format!("drn-{}-loop", std::process::id());
    let ch = channel(&operator, &operator_ca(&client).await?).await?;
    let credential = register(&ch, &operator.join_token, &name)
        .await
        .map_err(|s| anyhow::anyhow!("register: {s}"))?;
    let msg = |kind| pb::EdgeMessage { kind: Some(kind) };
    let (tx, rx) = tokio::sync::mpsc::channel(64);
    tx.send(msg(Out::Hello(pb::Hello {
        provider_name: name.clone(),
        agent_version: "looping".into(),
        capacity: Some(pb::Resources {
            cpu_millis: 1000,
            memory_bytes: 1 << 30,
            pods: 10,
            storage_bytes: 1 << 30,
        }),
        offered: None,
        runtime: "docker".into(),
        ..Default::default()
    })))
    .await?;
    let mut req = tonic::Request::new(ReceiverStream::new(rx));
    req.metadata_mut()
        .insert("authorization", format!("Bearer {credential}").parse()?);
    let mut inbound = pb::edge_client::EdgeClient::new(ch.clone())
        .session(req)
        .await?
        .into_inner();
    tokio::spawn(async move { while let Ok(Some(_)) = inbound.message().await {} });
    let beat = tx.clone();
    let beats = tokio::spawn(async move {
        for seq in 1.. {
            let hb = pb::Heartbeat {
                seq,
                sent_unix_millis: 0,
            };
            if beat.send(msg(Out::Heartbeat(hb))).await.is_err() {
                return;
            }
            tokio::time::sleep(Duration::from_millis(300)).await;
        }
    });
    wait_providers_ready(&client, &operator, &[&name]).await?;
    tokio::time::sleep(Duration::from_secs(2)).await;
    let before = reconciles(&operator).await?;
    let started = Instant::now();
    let states = [
        pb::availability::State::Paused,
        pb::availability::State::Draining,
        pb::availability::State::Available,
    ];
    // Fast enough to outrun any reconcile, slow enough that each change is read on its own:
    // one every 50 ms for 6 s.
    let sent = 120;
    for i in 0..sent {
        tokio::time::sleep(Duration::from_millis(50)).await;
        let a = pb::Availability {
            state: states[i % 3] as i32,
            reason: "owner\u{1b}[2J".repeat(50),
            schedule: "Mon 00:00-24:00,".repeat(100),
            next_change_unix_seconds: i64::MAX,
        };
        tx.send(msg(Out::Availability(a))).await?;
    }
    // The last word: paused, by "final".
    tx.send(msg(Out::Availability(pb::Availability {
        state: pb::availability::State::Paused as i32,
        reason: "final".into(),
        ..Default::default()
    })))
    .await?;
    let took = started.elapsed();
    let s = Scene {
        client: client.clone(),
        port: 0,
        operator,
        sweeper: ContainerSweeper::new(&env, &[]),
        env,
    };
    let p = eventually(Duration::from_secs(20), || async {
        let p = s.provider(&name).await?;
        let a = p.status.as_ref().and_then(|st| st.availability.clone());
        ensure!(
            a.as_ref().and_then(|a| a.reason.as_deref()) == Some("final"),
            "{a:?}"
        );
        Ok(p)
    })
    .await?;
    tokio::time::sleep(Duration::from_secs(3)).await;
    let after = reconciles(&s.operator).await?;
    let a = p
        .status
        .and_then(|st| st.availability)
        .context("availability")?;
    ensure!(a.state == AvailabilityState::Paused, "{a:?}");
    // Pacing: one reconcile per 2 s for the changes, plus the periodic and pod-driven ones.
    let budget = 10.0 + 3.0 * (took.as_secs_f64() + 5.0) / 2.0;
    println!(
        "{sent} availability changes in {:.1}s: {} provider reconciles (budget {budget:.0})",
        took.as_secs_f64(),
        after - before
    );
    ensure!(
        after - before <= budget,
        "{} reconciles for {sent} changes",
        after - before
    );
    // The texts of the hostile changes were bounded (and stripped) when they were taken.
    let kept = s.env.kubectl(&["get", "prov", &name, "-o", "json"])?;
    ensure!(
        !kept.contains('\u{1b}') && !kept.contains("\\u001b"),
        "control characters kept"
    );
    let events = provider_events(&s.client, &name).await?;
    ensure!(events.len() <= 40, "{} Events: {events:?}", events.len());
    beats.abort();
    Ok(())
}
