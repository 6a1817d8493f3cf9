//! The operator's virtual-kubelet side, end to end: a real kube-apiserver, the real
//! `decloud-operator`, two real `edge-kubelet` processes and a Docker engine of its own per edge.
//!
//! Needs `cargo build -p decloud-operator -p edge-kubelet` first (the suite says so if not).

use std::time::{Duration, Instant};

use anyhow::{Context as _, bail, ensure};
use decloud_crds::contracts::{
    EDGE_TAINT, NODE_LEASE_NAMESPACE, PROVIDER_LABEL, UNREACHABLE_TAINT, node_name,
};
use decloud_crds::{Provider, ProviderPhase, find_condition};
use decloud_e2e::cluster::{
    ContainerSweeper, EdgeProcess, OperatorProcess, busybox_image, container_id,
    containers_of_pod_anywhere, engine_of_pod,
};
use decloud_e2e::{TestEnv, eventually};
use k8s_openapi::api::core::v1::{Event, Node, Pod};
use kube::api::{Api, DeleteParams, ListParams};
use kube::{Client, ResourceExt};
use nix::sys::signal::Signal;

const NS: &str = "default";
const HEARTBEAT: Duration = Duration::from_secs(1);
const MISSED: u32 = 3;

fn pod_yaml(name: &str, node: &str, extra_container: &str) -> String {
    // The test registry's reference (built and pushed once per process).
    let image = busybox_image().expect("the busybox test image");
    format!(
        r#"apiVersion: v1
kind: Pod
metadata:
  name: {name}
  namespace: {NS}
  labels: {{app: {name}}}
spec:
  nodeName: {node}
  terminationGracePeriodSeconds: 2
  tolerations:
    - {{key: {EDGE_TAINT}, operator: Exists, effect: NoSchedule}}
  containers:
    - name: main
      image: {image}
      imagePullPolicy: IfNotPresent
      command: ["/bin/sh", "-c", "trap 'exit 0' TERM; while true; do sleep 1; done"]
      resources:
        requests: {{cpu: 100m, memory: 16Mi}}
        limits: {{cpu: 200m, memory: 32Mi}}
{extra_container}"#
    )
}

async fn provider(client: &Client, name: &str) -> anyhow::Result<Provider> {
    Ok(Api::<Provider>::all(client.clone()).get(name).await?)
}

/// Provider Ready (phase + condition) and Node Ready=True without the unreachable taint.
async fn check_ready(client: &Client, name: &str) -> anyhow::Result<()> {
    let p = provider(client, name).await?;
    let status = p.status.context("no provider status")?;
    ensure!(
        status.phase == ProviderPhase::Ready,
        "{name}: phase {:?}",
        status.phase
    );
    let cond = find_condition(&status.conditions, "Ready").context("no Ready condition")?;
    ensure!(cond.status == "True", "{name}: Ready={}", cond.status);
    let node_name = node_name(name);
    let node = Api::<Node>::all(client.clone()).get(&node_name).await?;
    let (ready, taints) = node_readiness(&node);
    ensure!(ready == "True", "node {node_name} Ready={ready}");
    ensure!(
        !taints.iter().any(|t| t.starts_with(UNREACHABLE_TAINT)),
        "node {node_name} still tainted unreachable: {taints:?}"
    );
    Ok(())
}

/// Every provider in `names` Ready (see [`check_ready`]).
async fn check_all_ready(client: &Client, names: &[impl AsRef<str>]) -> anyhow::Result<()> {
    for n in names {
        check_ready(client, n.as_ref()).await?;
    }
    Ok(())
}

/// Waits (60 s at most) until every provider in `names` is Ready; shows the operator's log if not.
async fn wait_ready(
    client: &Client,
    operator: &OperatorProcess,
    names: &[impl AsRef<str>],
) -> anyhow::Result<()> {
    eventually(Duration::from_secs(60), || check_all_ready(client, names))
        .await
        .with_context(|| {
            format!(
                "edges did not become Ready; operator log:\n{}",
                operator.child.log_tail(40)
            )
        })
}

/// Provider NotReady (HeartbeatsMissed) and Node Ready=Unknown with both unreachable taints.
async fn check_unreachable(client: &Client, name: &str) -> anyhow::Result<()> {
    let p = provider(client, name).await?;
    let status = p.status.context("no provider status")?;
    ensure!(
        status.phase == ProviderPhase::NotReady,
        "{name}: phase {:?}",
        status.phase
    );
    let cond = find_condition(&status.conditions, "Ready").context("no Ready condition")?;
    ensure!(
        cond.status == "False" && cond.reason == "HeartbeatsMissed",
        "{name}: {cond:?}"
    );
    let node_name = node_name(name);
    let node = Api::<Node>::all(client.clone()).get(&node_name).await?;
    let (ready, taints) = node_readiness(&node);
    ensure!(ready == "Unknown", "node {node_name} Ready={ready}");
    for effect in ["NoSchedule", "NoExecute"] {
        let t = format!("{UNREACHABLE_TAINT}:{effect}");
        ensure!(
            taints.contains(&t),
            "node {node_name} lacks taint {t}: {taints:?}"
        );
    }
    Ok(())
}

fn node_readiness(node: &Node) -> (String, Vec<String>) {
    let ready = node
        .status
        .as_ref()
        .and_then(|s| s.conditions.as_ref())
        .and_then(|cs| cs.iter().find(|c| c.type_ == "Ready"))
        .map(|c| c.status.clone())
        .unwrap_or_default();
    let taints = node
        .spec
        .as_ref()
        .and_then(|s| s.taints.as_ref())
        .map(|ts| {
            ts.iter()
                .map(|t| format!("{}:{}", t.key, t.effect))
                .collect()
        })
        .unwrap_or_default();
    (ready, taints)
}

async fn running_pod(pods: &Api<Pod>, name: &str) -> anyhow::Result<Pod> {
    let pod = pods.get(name).await?;
    let status = pod.status.clone().context("no pod status")?;
    ensure!(
        status.phase.as_deref() == Some("Running"),
        "{name}: phase {:?}",
        status.phase
    );
    let ready = status
        .conditions
        .iter()
        .flatten()
        .any(|c| c.type_ == "Ready" && c.status == "True");
    ensure!(ready, "{name}: not Ready yet");
    Ok(pod)
}

/// Waits for pod `name` to be Failed with reason Forbidden (message containing `needle`) and a
/// Forbidden Event, then checks that no container was ever created for it.
async fn expect_refused(
    env: &TestEnv,
    client: &Client,
    name: &str,
    needle: &str,
) -> anyhow::Result<()> {
    let pods: Api<Pod> = Api::namespaced(client.clone(), NS);
    let failed = eventually(Duration::from_secs(30), || async {
        let pod = pods.get(name).await?;
        let s = pod.status.clone().context("no status")?;
        ensure!(s.phase.as_deref() == Some("Failed"), "phase {:?}", s.phase);
        ensure!(
            s.reason.as_deref() == Some("Forbidden"),
            "reason {:?}",
            s.reason
        );
        Ok(pod)
    })
    .await?;
    let message = failed
        .status
        .as_ref()
        .and_then(|s| s.message.clone())
        .unwrap_or_default();
    println!("{name}: Failed, Forbidden: {message}");
    ensure!(message.contains(needle), "{message}");
    eventually(Duration::from_secs(15), || async {
        let events: Api<Event> = Api::namespaced(client.clone(), NS);
        let list = events.list(&ListParams::default()).await?;
        ensure!(
            list.items
                .iter()
                .any(|e| e.involved_object.name.as_deref() == Some(name)
                    && e.reason.as_deref() == Some("Forbidden")),
            "no Forbidden event for {name}"
        );
        Ok(())
    })
    .await?;
    tokio::time::sleep(Duration::from_secs(2)).await;
    let uid = failed.uid().unwrap_or_default();
    ensure!(
        containers_of_pod_anywhere(env, &uid)?.is_empty(),
        "a container was created for {name}"
    );
    Ok(())
}

/// The scenario of [`edges_register_run_pods_and_fail_over`]: the cluster, two providers
/// `a` and `b`, and what every step needs to reach them. The processes are the test's locals,
/// so they stop before the sweeper and the cluster do.
struct Scenario {
    client: Client,
    pods: Api<Pod>,
    run: u32,
    a: String,
    b: String,
    node_a: String,
    node_b: String,
    missed: String,
    sweeper: ContainerSweeper,
    env: TestEnv,
}

/// The label every edge of the scenario offers.
const REGION: &str = "topology.kubernetes.io/region=eu-west";

/// The container of pod "survivor", which must outlive the edge's and the operator's restarts.
struct Survivor {
    id: String,
    started_at: String,
}

impl Scenario {
    async fn start() -> anyhow::Result<Self> {
        let env = TestEnv::start().await?;
        let client = env.client();
        busybox_image()?;
        let run = std::process::id();
        let (a, b) = (format!("op-{run}-a"), format!("op-{run}-b"));
        let (node_a, node_b) = (node_name(&a), node_name(&b));
        let sweeper = ContainerSweeper::new(&env, &[node_a.clone(), node_b.clone()]);
        Ok(Self {
            pods: Api::namespaced(client.clone(), NS),
            client,
            run,
            a,
            b,
            node_a,
            node_b,
            missed: MISSED.to_string(),
            sweeper,
            env,
        })
    }

    /// The leader's arguments (the same across its restart).
    fn operator_args(&self) -> [&str; 6] {
        [
            "--heartbeat-interval",
            "1s",
            "--missed-heartbeats",
            self.missed.as_str(),
            "--identity",
            "e2e-operator",
        ]
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn edges_register_run_pods_and_fail_over() -> anyhow::Result<()> {
    let s = Scenario::start().await?;
    // The API server's own informers hold watches too: count the operator's on top of them.
    let before = watch_counts(&s.env)?;
    let mut operator = OperatorProcess::start(&s.env, &s.operator_args()).await?;
    let mut edge_a = EdgeProcess::start(&s.env, &operator, &s.a, &[REGION])?;
    let _edge_b = EdgeProcess::start(&s.env, &operator, &s.b, &[REGION])?;

    edges_register_as_ready_nodes(&s, &operator).await?;
    one_watch_per_kind(&s, &before).await?;
    steady_heartbeats_write_nothing(&s, &operator).await?;
    a_standby_replica_refuses_edges(&s).await?;
    let plain = a_plain_pod_runs_in_a_real_container(&s, &edge_a).await?;
    deleting_the_pod_removes_its_container(&s, &plain).await?;
    let survivor = sigkill_marks_the_edge_unreachable(&s, &mut edge_a).await?;
    let edge_a = a_restarted_edge_keeps_its_containers(&s, &operator, &survivor).await?;
    operator = a_restarted_operator_keeps_the_containers(&s, operator, &survivor).await?;
    forbidden_pods_are_refused(&s).await?;
    deleting_a_provider_disconnects_its_edge(&s, &operator).await?;
    metrics_reflect_what_happened(&operator).await?;
    clean_up(&s, &operator, edge_a).await?;
    sigterm_hands_leadership_over(&s, operator).await
}

/// Long-running WATCH requests the API server is serving, per resource kind of interest.
fn watch_counts(env: &TestEnv) -> anyhow::Result<Vec<(&'static str, f64)>> {
    let metrics = env.kubectl(&["get", "--raw", "/metrics"])?;
    Ok(["pods", "providers", "workloads", "nodes"]
        .into_iter()
        .map(|resource| {
            let n = metrics
                .lines()
                .filter(|l| {
                    l.starts_with("apiserver_longrunning_requests{")
                        && l.contains(&format!("resource=\"{resource}\""))
                        && l.contains("verb=\"WATCH\"")
                })
                .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
                .sum();
            (resource, n)
        })
        .collect())
}

/// The operator holds one watch per kind (issue 13): on top of what the API server watched
/// before the operator started, exactly one long-running WATCH each of pods, providers,
/// workloads and (virtual) nodes. Before the shared watches it held 4 of pods, 3 of providers
/// and 2 of workloads.
async fn one_watch_per_kind(s: &Scenario, before: &[(&str, f64)]) -> anyhow::Result<()> {
    let now = watch_counts(&s.env)?;
    println!("watches before the operator: {before:?}; with it: {now:?}");
    for ((resource, had), (_, has)) in before.iter().zip(&now) {
        ensure!(
            has - had == 1.0,
            "the operator holds {} watches of {resource}, expected one",
            has - had
        );
    }
    Ok(())
}

/// Two edges register and appear Ready as nodes and providers, with their labels, address,
/// kubelet endpoint and node lease.
async fn edges_register_as_ready_nodes(
    s: &Scenario,
    operator: &OperatorProcess,
) -> anyhow::Result<()> {
    let (env, client) = (&s.env, &s.client);
    let (a, node_a, node_b) = (&s.a, &s.node_a, &s.node_b);
    wait_ready(client, operator, &[a, &s.b]).await?;
    println!("{}", env.kubectl(&["get", "nodes", "-o", "wide"])?);
    println!("{}", env.kubectl(&["get", "prov"])?);
    let nodes = env.kubectl(&["get", "nodes"])?;
    ensure!(
        nodes
            .lines()
            .any(|l| l.starts_with(node_a.as_str()) && l.contains(" Ready ")),
        "{nodes}"
    );
    ensure!(
        nodes
            .lines()
            .any(|l| l.starts_with(node_b.as_str()) && l.contains(" Ready ")),
        "{nodes}"
    );
    let provs = env.kubectl(&["get", "prov"])?;
    ensure!(
        provs
            .lines()
            .any(|l| l.starts_with(a.as_str()) && l.contains("True")),
        "{provs}"
    );
    let node = Api::<Node>::all(client.clone()).get(node_a).await?;
    let labels = node.labels();
    ensure!(
        labels.get("type").map(String::as_str) == Some("virtual-kubelet"),
        "{labels:?}"
    );
    ensure!(labels.get(PROVIDER_LABEL) == Some(a), "{labels:?}");
    ensure!(
        labels
            .get("topology.kubernetes.io/region")
            .map(String::as_str)
            == Some("eu-west")
    );
    let ns = node.status.clone().unwrap_or_default();
    let addresses: Vec<String> = ns
        .addresses
        .iter()
        .flatten()
        .map(|a| a.address.clone())
        .collect();
    ensure!(
        addresses.contains(&"127.0.0.1".to_string()),
        "{addresses:?}"
    );
    // Each virtual node has a kubelet port of its own on the operator (node-level kubelet
    // paths name no node): one that answers, and not the shared one.
    let port = ns
        .daemon_endpoints
        .and_then(|d| d.kubelet_endpoint)
        .map(|e| e.port)
        .and_then(|p| u16::try_from(p).ok())
        .filter(|p| *p != 0)
        .context("no kubelet endpoint port on the node")?;
    ensure!(
        port != operator.kubelet_port,
        "the node advertises the shared kubelet port {port}"
    );
    std::net::TcpStream::connect_timeout(
        &std::net::SocketAddr::from(([127, 0, 0, 1], port)),
        Duration::from_secs(2),
    )
    .with_context(|| format!("the node's kubelet port {port} does not answer"))?;
    let lease_args = [
        "get",
        "lease",
        "-n",
        NODE_LEASE_NAMESPACE,
        node_a.as_str(),
        "-o",
        "name",
    ];
    let lease = env.kubectl(&lease_args);
    eventually(Duration::from_secs(15), || async {
        env.kubectl(&lease_args).map(|_| ())
    })
    .await
    .with_context(|| format!("no node lease: {lease:?}"))
}

/// Heartbeats end at the operator: a steady edge causes no Provider or Node writes.
async fn steady_heartbeats_write_nothing(
    s: &Scenario,
    operator: &OperatorProcess,
) -> anyhow::Result<()> {
    let rv = |client: Client, a: String| async move {
        let p = Api::<Provider>::all(client.clone()).get(&a).await?;
        let n = Api::<Node>::all(client).get(&node_name(&a)).await?;
        anyhow::Ok((p.resource_version(), n.resource_version()))
    };
    let before = rv(s.client.clone(), s.a.clone()).await?;
    tokio::time::sleep(HEARTBEAT * 5).await;
    let after = rv(s.client.clone(), s.a.clone()).await?;
    ensure!(
        before == after,
        "writes during 5 steady heartbeats: {before:?} -> {after:?}"
    );
    let beats = operator
        .metric("decloud_operator_heartbeats_total", "")
        .await?;
    println!(
        "5 heartbeat intervals: no Provider/Node writes; heartbeats received so far: {beats:?}"
    );
    Ok(())
}

/// A standby replica (same leader Lease) refuses edges and is not ready.
async fn a_standby_replica_refuses_edges(s: &Scenario) -> anyhow::Result<()> {
    let standby = OperatorProcess::spawn(&s.env, &[])?;
    let c = format!("op-{}-c", s.run);
    let edge_c = EdgeProcess::start(&s.env, &standby, &c, &[])?;
    eventually(Duration::from_secs(20), || async {
        let (code, body) = standby.readyz().await?;
        ensure!(
            code == 503 && body.contains("standby"),
            "/readyz {code} {body}"
        );
        let log = std::fs::read_to_string(edge_c.log())?;
        ensure!(
            log.contains("standby"),
            "edge c was not told the replica is a standby"
        );
        Ok(())
    })
    .await?;
    ensure!(
        Api::<Provider>::all(s.client.clone())
            .get_opt(&c)
            .await?
            .is_none(),
        "standby created a provider"
    );
    drop(edge_c);
    drop(standby);
    println!("standby replica: /readyz 503, edge refused with Unavailable");
    Ok(())
}

/// A plain Pod bound to edge a runs, with a correct status, in a real container, and its
/// allocation shows on the provider.
async fn a_plain_pod_runs_in_a_real_container(
    s: &Scenario,
    edge_a: &EdgeProcess,
) -> anyhow::Result<Pod> {
    let (env, pods) = (&s.env, &s.pods);
    env.kubectl_stdin(&["apply", "-f", "-"], &pod_yaml("plain", &s.node_a, ""))?;
    let pod = eventually(Duration::from_secs(60), || running_pod(pods, "plain"))
        .await
        .with_context(|| {
            format!(
                "plain pod not Running; edge log:\n{}",
                edge_a.child.log_tail(30)
            )
        })?;
    let status = pod.status.clone().unwrap_or_default();
    let cs = &status.container_statuses.clone().unwrap_or_default()[0];
    ensure!(
        cs.name == "main" && cs.ready && cs.restart_count == 0,
        "{cs:?}"
    );
    ensure!(cs.image == busybox_image()?, "{cs:?}");
    ensure!(
        cs.state
            .as_ref()
            .and_then(|s| s.running.as_ref())
            .and_then(|r| r.started_at.as_ref())
            .is_some(),
        "{cs:?}"
    );
    ensure!(status.pod_ip.is_some(), "no podIP: {status:?}");
    ensure!(
        status.host_ip.as_deref() == Some("127.0.0.1"),
        "hostIP {:?}",
        status.host_ip
    );
    for t in ["PodScheduled", "Initialized", "ContainersReady", "Ready"] {
        ensure!(
            status
                .conditions
                .iter()
                .flatten()
                .any(|c| c.type_ == t && c.status == "True"),
            "condition {t} not True: {:?}",
            status.conditions
        );
    }
    let id = container_id(&pod)?;
    let running =
        engine_of_pod(env, &pod)?.docker(&["inspect", "-f", "{{.State.Running}}", &id])?;
    ensure!(running == "true", "container {id} running={running}");
    println!("{}", env.kubectl(&["get", "pod", "plain", "-o", "wide"])?);
    eventually(Duration::from_secs(15), || async {
        let p = provider(&s.client, &s.a).await?;
        let alloc = p.status.and_then(|s| s.allocated).context("no allocated")?;
        ensure!(
            alloc.pods == Some(1) && alloc.cpu.as_deref() == Some("100m"),
            "{alloc:?}"
        );
        Ok(())
    })
    .await?;
    Ok(pod)
}

/// Deleting the Pod removes its container and then the Pod.
async fn deleting_the_pod_removes_its_container(s: &Scenario, pod: &Pod) -> anyhow::Result<()> {
    let pods = &s.pods;
    pods.delete("plain", &DeleteParams::default()).await?;
    eventually(Duration::from_secs(30), || async {
        match pods.get_opt("plain").await? {
            Some(_) => bail!("pod still exists"),
            None => Ok(()),
        }
    })
    .await?;
    eventually(Duration::from_secs(15), || async {
        let left = containers_of_pod_anywhere(&s.env, &pod.uid().unwrap_or_default())?;
        ensure!(left.is_empty(), "containers left: {left:?}");
        Ok(())
    })
    .await
}

/// With a pod "survivor" running on it, edge a is SIGKILLed: NotReady and unreachable within
/// the configured window, while edge b stays Ready.
async fn sigkill_marks_the_edge_unreachable(
    s: &Scenario,
    edge_a: &mut EdgeProcess,
) -> anyhow::Result<Survivor> {
    let (env, client) = (&s.env, &s.client);
    env.kubectl_stdin(&["apply", "-f", "-"], &pod_yaml("survivor", &s.node_a, ""))?;
    let survivor = eventually(Duration::from_secs(60), || running_pod(&s.pods, "survivor")).await?;
    let id = container_id(&survivor)?;
    let started_at =
        engine_of_pod(env, &survivor)?.docker(&["inspect", "-f", "{{.State.StartedAt}}", &id])?;
    let killed = Instant::now();
    edge_a.child.kill();
    let window = HEARTBEAT * MISSED;
    eventually(window + Duration::from_secs(10), || {
        check_unreachable(client, &s.a)
    })
    .await?;
    let detected = killed.elapsed();
    println!(
        "NotReady detection after SIGKILL: {:.2}s (window {}s = {} missed x {}s heartbeats)",
        detected.as_secs_f64(),
        window.as_secs(),
        MISSED,
        HEARTBEAT.as_secs()
    );
    ensure!(
        detected <= window + Duration::from_secs(2),
        "detected after {detected:?}"
    );
    check_ready(client, &s.b)
        .await
        .context("edge b must stay Ready")?;
    println!("{}", env.kubectl(&["get", "nodes"])?);
    Ok(Survivor { id, started_at })
}

/// `pod` (the survivor) still runs in the same, never restarted container; `when` ends the
/// failure message.
fn check_survivor_untouched(
    env: &TestEnv,
    survivor: &Survivor,
    pod: &Pod,
    when: &str,
) -> anyhow::Result<()> {
    ensure!(container_id(pod)? == survivor.id, "container replaced");
    ensure!(
        engine_of_pod(env, pod)?.docker(&[
            "inspect",
            "-f",
            "{{.State.StartedAt}}",
            &survivor.id
        ])? == survivor.started_at,
        "container restarted{when}"
    );
    Ok(())
}

/// Restarting edge a restores Ready without restarting its containers: the new edge process.
async fn a_restarted_edge_keeps_its_containers(
    s: &Scenario,
    operator: &OperatorProcess,
    survivor: &Survivor,
) -> anyhow::Result<EdgeProcess> {
    let restarted = Instant::now();
    let edge_a = EdgeProcess::start(&s.env, operator, &s.a, &[REGION])?;
    eventually(Duration::from_secs(30), || check_ready(&s.client, &s.a)).await?;
    println!(
        "Ready again {:.2}s after restart",
        restarted.elapsed().as_secs_f64()
    );
    let pod = eventually(Duration::from_secs(30), || running_pod(&s.pods, "survivor")).await?;
    check_survivor_untouched(&s.env, survivor, &pod, "")?;
    let restarts = pod
        .status
        .and_then(|s| s.container_statuses)
        .map(|cs| cs[0].restart_count);
    ensure!(restarts == Some(0), "restartCount {restarts:?}");
    Ok(edge_a)
}

/// The operator restarts (SIGKILL, same identity and ports): edges reconnect, their containers
/// keep running, state is rebuilt from the API and the edges' reports. The new operator.
async fn a_restarted_operator_keeps_the_containers(
    s: &Scenario,
    mut old: OperatorProcess,
    survivor: &Survivor,
) -> anyhow::Result<OperatorProcess> {
    let client = &s.client;
    old.child.kill();
    let restarted = Instant::now();
    let mut operator = old.respawn(&s.env, &s.operator_args())?;
    operator.wait_ready().await?;
    drop(old);
    eventually(Duration::from_secs(30), || async {
        check_ready(client, &s.a).await?;
        check_ready(client, &s.b).await?;
        let connected = operator
            .metric("decloud_operator_connected_edges", "")
            .await?;
        ensure!(connected == Some(2.0), "connected edges: {connected:?}");
        Ok(())
    })
    .await
    .with_context(|| {
        format!(
            "after the operator restart; log:\n{}",
            operator.child.log_tail(30)
        )
    })?;
    println!(
        "operator restart: both edges back and Ready {:.2}s after SIGKILL",
        restarted.elapsed().as_secs_f64()
    );
    let pod = running_pod(&s.pods, "survivor").await?;
    check_survivor_untouched(&s.env, survivor, &pod, " across the operator restart")?;
    Ok(operator)
}

/// Pods asking for what an edge must not grant fail with a clear reason and an Event, and no
/// container is created.
async fn forbidden_pods_are_refused(s: &Scenario) -> anyhow::Result<()> {
    let (env, client) = (&s.env, &s.client);
    // A privileged container first: an API server started without --allow-privileged
    // refuses it itself, so then it never reaches the operator.
    let privileged = pod_yaml("privileged", &s.node_b, "").replace(
        "      resources:",
        "      securityContext: {privileged: true}\n      resources:",
    );
    match env.kubectl_stdin(&["apply", "-f", "-"], &privileged) {
        Ok(_) => expect_refused(env, client, "privileged", "privileged mode").await?,
        Err(e) if e.to_string().contains("disallowed by cluster policy") => {
            println!(
                "privileged pod: refused by the API server itself (no --allow-privileged): {e}"
            );
        }
        Err(e) => return Err(e),
    }
    // Host namespaces, host paths and added capabilities, which every API server accepts.
    let host = pod_yaml("host-access", &s.node_b, "")
        .replace(
            "  containers:",
            "  hostNetwork: true\n  volumes:\n    - {name: root, hostPath: {path: /}}\n  containers:",
        )
        .replace(
            "      resources:",
            "      securityContext: {capabilities: {add: [NET_ADMIN]}}\n      resources:",
        );
    env.kubectl_stdin(&["apply", "-f", "-"], &host)?;
    expect_refused(env, client, "host-access", "hostNetwork").await
}

/// Deleting Provider b disconnects its edge and removes its Node (and its pods); the edge keeps
/// retrying, but a revoked provider is refused: the Node does not come back.
async fn deleting_a_provider_disconnects_its_edge(
    s: &Scenario,
    operator: &OperatorProcess,
) -> anyhow::Result<()> {
    let (client, b, node_b) = (&s.client, &s.b, &s.node_b);
    s.env
        .kubectl(&["delete", "prov", b, "--wait=true", "--timeout=30s"])?;
    eventually(Duration::from_secs(30), || async {
        ensure!(
            Api::<Node>::all(client.clone())
                .get_opt(node_b)
                .await?
                .is_none(),
            "node remains"
        );
        ensure!(
            s.pods.get_opt("host-access").await?.is_none(),
            "pod of b remains"
        );
        let revoked = operator
            .metric(
                "decloud_operator_sessions_closed_total",
                "reason=\"revoked\"",
            )
            .await?;
        ensure!(revoked == Some(1.0), "revoked sessions: {revoked:?}");
        let connected = operator
            .metric("decloud_operator_connected_edges", "")
            .await?;
        ensure!(connected == Some(1.0), "connected edges: {connected:?}");
        Ok(())
    })
    .await?;
    tokio::time::sleep(Duration::from_secs(3)).await;
    ensure!(
        Api::<Node>::all(client.clone())
            .get_opt(node_b)
            .await?
            .is_none(),
        "node came back"
    );
    ensure!(
        Api::<Provider>::all(client.clone())
            .get_opt(b)
            .await?
            .is_none(),
        "provider came back"
    );
    Ok(())
}

/// Metrics reflect what happened.
async fn metrics_reflect_what_happened(operator: &OperatorProcess) -> anyhow::Result<()> {
    let text = operator.metrics().await?;
    for m in [
        "decloud_operator_heartbeats_total",
        "decloud_operator_bridge_latency_seconds_count",
        "decloud_operator_reconciles_total",
    ] {
        ensure!(text.contains(m), "metric {m} missing");
    }
    Ok(())
}

/// Deletes the survivor pod, stops edge a, sweeps the containers and shows the operator's
/// warnings.
async fn clean_up(
    s: &Scenario,
    operator: &OperatorProcess,
    edge_a: EdgeProcess,
) -> anyhow::Result<()> {
    let pods = &s.pods;
    pods.delete("survivor", &DeleteParams::default()).await?;
    eventually(Duration::from_secs(30), || async {
        ensure!(
            pods.get_opt("survivor").await?.is_none(),
            "survivor remains"
        );
        Ok(())
    })
    .await?;
    drop(edge_a);
    s.sweeper.sweep();
    let forbidden = operator.forbidden();
    anyhow::ensure!(
        forbidden.is_empty(),
        "the operator needed rights the chart's RBAC does not grant: {forbidden:#?}"
    );
    let warnings = operator.warnings();
    println!("operator warnings during the suite: {}", warnings.len());
    for w in warnings.iter().take(20) {
        println!("  {w}");
    }
    Ok(())
}

/// SIGTERM (a rolling update) hands leadership over at once: the leader releases its Lease,
/// so its successor does not wait the 15 s the Lease would stay valid.
async fn sigterm_hands_leadership_over(
    s: &Scenario,
    mut operator: OperatorProcess,
) -> anyhow::Result<()> {
    let mut successor = OperatorProcess::spawn(&s.env, &["--identity", "e2e-successor"])?;
    eventually(Duration::from_secs(20), || async {
        let (code, body) = successor.readyz().await?;
        ensure!(
            code == 503 && body.contains("standby"),
            "/readyz {code} {body}"
        );
        Ok(())
    })
    .await?;
    let terminated = Instant::now();
    operator.child.stop(Duration::from_secs(5));
    successor.wait_ready().await?;
    let took = terminated.elapsed();
    ensure!(
        took < Duration::from_secs(10),
        "the successor led only {took:?} after SIGTERM: the Lease was not released"
    );
    ensure!(
        operator
            .child
            .log_tail(20)
            .contains("released the leader Lease"),
        "the old leader did not say it released the Lease:\n{}",
        operator.child.log_tail(20)
    );
    println!(
        "SIGTERM: successor leads {:.2}s later (Lease released)",
        took.as_secs_f64()
    );
    Ok(())
}

/// SIGSTOPs edges (their sessions stay open, they just fall silent, as behind a cut link) and
/// SIGCONTs them when dropped, so a failing test never leaves a frozen process behind.
struct Frozen<'a>(Vec<&'a EdgeProcess>);

impl<'a> Frozen<'a> {
    fn stop(edges: impl IntoIterator<Item = &'a EdgeProcess>) -> Self {
        let edges: Vec<&EdgeProcess> = edges.into_iter().collect();
        for e in &edges {
            e.child.signal(Signal::SIGSTOP);
        }
        Self(edges)
    }
}

impl Drop for Frozen<'_> {
    fn drop(&mut self) {
        for e in &self.0 {
            e.child.signal(Signal::SIGCONT);
        }
    }
}

async fn phase(client: &Client, name: &str) -> anyhow::Result<ProviderPhase> {
    Ok(provider(client, name)
        .await?
        .status
        .context("no provider status")?
        .phase)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn mass_silence_is_held_as_a_disruption_but_a_single_silent_edge_is_not() -> anyhow::Result<()>
{
    const DISRUPTION: &str = "decloud_operator_liveness_disruption";
    const DISRUPTIONS: &str = "decloud_operator_liveness_disruptions_total";
    let env = TestEnv::start().await?;
    let client = env.client();
    let run = std::process::id();
    let names: Vec<String> = (0..4).map(|i| format!("dis-{run}-{i}")).collect();
    let hold = Duration::from_secs(12);
    let window = HEARTBEAT * MISSED;
    let missed = MISSED.to_string();
    // Held when more than half of at least 3 ready edges fall silent at once.
    let operator = OperatorProcess::start(
        &env,
        &[
            "--heartbeat-interval",
            "1s",
            "--missed-heartbeats",
            missed.as_str(),
            "--large-cluster-size",
            "3",
            "--unhealthy-threshold",
            "0.5",
            "--disruption-hold",
            "12s",
            "--identity",
            "e2e-disruption",
        ],
    )
    .await?;
    let edges = names
        .iter()
        .map(|n| EdgeProcess::start_simulated(&env, &operator, n))
        .collect::<anyhow::Result<Vec<_>>>()?;
    wait_ready(&client, &operator, &names).await?;

    // --- One silent edge of four (25 %) is no disruption: NotReady within the window.
    {
        let stopped = Instant::now();
        let _frozen = Frozen::stop([&edges[0]]);
        eventually(window + Duration::from_secs(5), || {
            check_unreachable(&client, &names[0])
        })
        .await
        .context("a single silent edge must turn NotReady at once")?;
        let took = stopped.elapsed();
        println!(
            "1 of 4 edges SIGSTOPped: NotReady after {:.2}s (window {}s)",
            took.as_secs_f64(),
            window.as_secs()
        );
        ensure!(
            took <= window + Duration::from_secs(4),
            "NotReady only after {took:?}"
        );
        ensure!(
            operator.metric(DISRUPTION, "").await? == Some(0.0),
            "a single edge was held as a disruption"
        );
        ensure!(operator.metric(DISRUPTIONS, "").await? == Some(0.0));
        for n in &names[1..] {
            check_ready(&client, n).await?;
        }
    }
    eventually(Duration::from_secs(30), || check_ready(&client, &names[0]))
        .await
        .context("edge 0 did not come back after SIGCONT")?;

    // --- Three of four (75 % > 50 %) fall silent at once: the operator suspects itself and
    // holds their verdicts. The hold starts once they are silent past the window (at least 2 s
    // after the stop: the last heartbeat read may be 1 s older) and lasts 12 s, so for 12 s
    // after the stop none may turn NotReady.
    let stopped = Instant::now();
    let frozen = Frozen::stop(&edges[..3]);
    let mut gauge_seen = false;
    while stopped.elapsed() < hold {
        for n in &names[..3] {
            let p = phase(&client, n).await?;
            ensure!(
                p == ProviderPhase::Ready,
                "{n} turned {p:?} {:.1}s after the stop, during the hold",
                stopped.elapsed().as_secs_f64()
            );
        }
        gauge_seen |= operator.metric(DISRUPTION, "").await? == Some(1.0);
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    ensure!(
        gauge_seen,
        "{DISRUPTION} never showed 1 while 3 of 4 edges were silent; operator log:\n{}",
        operator.child.log_tail(20)
    );
    check_ready(&client, &names[3])
        .await
        .context("the edge that kept beating")?;
    println!(
        "3 of 4 edges SIGSTOPped: all still Ready {}s later, {DISRUPTION} 1",
        hold.as_secs()
    );

    // --- The silence outlasts the hold: an outage after all, so they are marked.
    let deadline = window + hold + Duration::from_secs(6);
    eventually(deadline.saturating_sub(stopped.elapsed()), || async {
        for n in &names[..3] {
            check_unreachable(&client, n).await?;
        }
        anyhow::Ok(())
    })
    .await
    .with_context(|| {
        format!(
            "not NotReady {}s after the stop; operator log:\n{}",
            deadline.as_secs(),
            operator.child.log_tail(20)
        )
    })?;
    println!(
        "after the hold: NotReady {:.2}s after the stop (window {}s + hold {}s)",
        stopped.elapsed().as_secs_f64(),
        window.as_secs(),
        hold.as_secs()
    );
    check_ready(&client, &names[3]).await?;
    ensure!(operator.metric(DISRUPTION, "").await? == Some(0.0));
    ensure!(operator.metric(DISRUPTIONS, "").await? == Some(1.0));
    // Read the log itself: its level names carry colour codes.
    let log = std::fs::read_to_string(operator.child.log_path())?;
    for needle in [
        "3 of 4 ready edges went silent at once",
        "disruption outlasted the hold",
    ] {
        ensure!(
            log.lines()
                .any(|l| l.contains("WARN") && l.contains(needle)),
            "no warning {needle:?} in the operator log"
        );
    }

    // --- Resumed: all four Ready again, and no disruption.
    drop(frozen);
    eventually(Duration::from_secs(30), || check_all_ready(&client, &names))
        .await
        .context("edges did not come back after SIGCONT")?;
    ensure!(operator.metric(DISRUPTION, "").await? == Some(0.0));
    println!("resumed: all 4 Ready, {DISRUPTION} 0");
    Ok(())
}
