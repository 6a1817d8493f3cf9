//! Workloads on real edges: placement across distinct providers, scaling, capacity shortage and
//! recovery, rolling image updates, failover after SIGKILL of an edge, no duplicates when it
//! returns, and clean deletion — against a real kube-apiserver, the real operator and three to
//! four real edge-kubelet processes on a Docker engine of its own per edge.

use std::{
    collections::{BTreeMap, BTreeSet},
    time::{Duration, Instant},
};

use anyhow::{Context, bail, ensure};
use decloud_crds::contracts::{WORKLOAD_LABEL, container_labels, node_name, provider_of_node};
use decloud_crds::{Provider, Workload, find_condition};
use decloud_e2e::{
    TestEnv,
    cluster::{
        ContainerSweeper, EdgeProcess, OperatorProcess, busybox_image, check_providers_ready,
        node_of, pod_ready, wait_providers_ready, workload_pods,
    },
    eventually,
};
use k8s_openapi::api::core::v1::Pod;
use kube::{
    Api, Client, ResourceExt,
    api::{ListParams, Patch, PatchParams},
};

const WORKLOAD: &str = "web";

fn workload_yaml(replicas: i32, image: &str) -> String {
    format!(
        r#"apiVersion: decloud.dev/v1alpha1
kind: Workload
metadata: {{name: {WORKLOAD}, namespace: default}}
spec:
  replicas: {replicas}
  template:
    metadata: {{labels: {{app: web}}}}
    spec:
      terminationGracePeriodSeconds: 2
      containers:
        - name: web
          image: {image}
          command: ["/bin/httpd", "-f", "-p", "8080", "-h", "/www"]
          ports: [{{containerPort: 8080}}]
          resources: {{requests: {{cpu: 50m, memory: 16Mi}}, limits: {{cpu: 200m, memory: 64Mi}}}}
          readinessProbe: {{httpGet: {{path: /, port: 8080}}, periodSeconds: 1}}
  expose: {{port: 8080}}
"#
    )
}

/// Live (not deleting) pods of the Workload: name → (node, ready, image).
async fn replicas(client: &Client) -> anyhow::Result<BTreeMap<String, (String, bool, String)>> {
    Ok(workload_pods(client, "default", WORKLOAD)
        .await?
        .into_iter()
        .map(|p| {
            let image = p
                .spec
                .as_ref()
                .and_then(|s| s.containers.first())
                .and_then(|c| c.image.clone())
                .unwrap_or_default();
            (p.name_any(), (node_of(&p), pod_ready(&p), image))
        })
        .collect())
}

async fn workload(client: &Client) -> anyhow::Result<Workload> {
    Ok(Api::<Workload>::namespaced(client.clone(), "default")
        .get(WORKLOAD)
        .await?)
}

/// `want` ready replicas of `image` on `want` distinct nodes, and the Workload Available.
async fn check_available(client: &Client, want: usize, image: &str) -> anyhow::Result<()> {
    let reps = replicas(client).await?;
    let ready: Vec<_> = reps.values().filter(|(_, r, i)| *r && i == image).collect();
    ensure!(
        ready.len() == want && reps.len() == want,
        "replicas: {reps:?}"
    );
    let nodes: BTreeSet<_> = reps.values().map(|(n, _, _)| n.clone()).collect();
    ensure!(nodes.len() == want, "replicas share providers: {reps:?}");
    let wl = workload(client).await?;
    let status = wl.status.context("no Workload status")?;
    ensure!(
        status.ready_replicas == want as i32,
        "readyReplicas {}",
        status.ready_replicas
    );
    let available = find_condition(&status.conditions, "Available").context("no Available")?;
    ensure!(available.is_true(), "Available: {available:?}");
    Ok(())
}

/// Running containers of this Workload's pods, per node, from Docker itself.
fn running_containers(
    env: &TestEnv,
    nodes: &[String],
) -> anyhow::Result<BTreeMap<String, Vec<String>>> {
    let mut out = BTreeMap::new();
    for node in nodes {
        // An edge not started yet has no engine, hence no containers.
        let Ok(engine) = env.engine_of_node(node) else {
            out.insert(node.clone(), Vec::new());
            continue;
        };
        let ids = engine.docker(&[
            "ps",
            "--filter",
            &format!("label={}={node}", container_labels::NODE),
            "--filter",
            &format!("label={}=default", container_labels::POD_NAMESPACE),
            "--format",
            &format!("{{{{.Label \"{}\"}}}}", container_labels::POD_NAME),
        ])?;
        let names: Vec<String> = ids
            .lines()
            .filter(|l| l.starts_with(&format!("{WORKLOAD}-")))
            .map(str::to_string)
            .collect();
        out.insert(node.clone(), names);
    }
    Ok(out)
}

async fn patch_workload(client: &Client, patch: serde_json::Value) -> anyhow::Result<()> {
    Api::<Workload>::namespaced(client.clone(), "default")
        .patch(WORKLOAD, &PatchParams::default(), &Patch::Merge(patch))
        .await?;
    Ok(())
}

/// The scenario: the cluster, the two images, four providers (three at first) and their nodes.
struct Scenario {
    client: Client,
    v1: String,
    v2: String,
    names: Vec<String>,
    nodes: Vec<String>,
    _sweeper: ContainerSweeper,
    env: TestEnv,
}

impl Scenario {
    async fn start() -> anyhow::Result<Self> {
        let env = TestEnv::start().await?;
        let v1 = busybox_image()?;
        // The same image under a second tag in the registry: the rollout pulls it.
        let v2 = decloud_e2e::registry::test_image("decloud-test/busybox:2")?;
        let run = std::process::id();
        let names: Vec<String> = ["a", "b", "c", "d"]
            .iter()
            .map(|s| format!("wl-{run}-{s}"))
            .collect();
        let nodes: Vec<String> = names.iter().map(|n| node_name(n)).collect();
        Ok(Self {
            client: env.client(),
            v1,
            v2,
            _sweeper: ContainerSweeper::new(&env, &nodes),
            names,
            nodes,
            env,
        })
    }

    async fn start_operator(&self) -> anyhow::Result<OperatorProcess> {
        OperatorProcess::start(
            &self.env,
            &[
                "--heartbeat-interval",
                "1s",
                "--missed-heartbeats",
                "3",
                "--identity",
                "e2e-wl",
                "--usage-interval",
                "2s",
                // Provider usage rides on the periodic status refresh (default 5 min).
                "--status-report-interval",
                "5s",
            ],
        )
        .await
    }
}

/// The running edges, by provider name.
type Edges = BTreeMap<String, EdgeProcess>;

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn workloads_place_scale_roll_fail_over_and_clean_up() -> anyhow::Result<()> {
    let s = Scenario::start().await?;
    let operator = s.start_operator().await?;
    let mut edges = Edges::new();
    for name in &s.names[..3] {
        edges.insert(
            name.clone(),
            EdgeProcess::start(&s.env, &operator, name, &[])?,
        );
    }
    wait_providers_ready(&s.client, &operator, &s.names[..3]).await?;

    two_replicas_land_on_two_providers(&s, &operator).await?;
    scaling_to_3_uses_the_third_provider(&s).await?;
    a_shortage_degrades_until_a_4th_provider_joins(&s, &operator, &mut edges).await?;
    changing_the_image_rolls_every_replica(&s).await?;
    let lost = a_sigkilled_edge_fails_over(&s, &operator, &mut edges).await?;
    the_returning_edge_stops_its_stale_replica(&s, &operator, &mut edges, &lost).await?;
    usage_is_summed_per_workload_and_provider(&s).await?;
    edge_kubelet_status_shows_its_session_and_pods(&s, &edges).await?;
    deleting_the_workload_leaves_nothing(&s).await?;

    let forbidden = operator.forbidden();
    anyhow::ensure!(
        forbidden.is_empty(),
        "the operator needed rights the chart's RBAC does not grant: {forbidden:#?}"
    );
    let warnings = operator.warnings();
    println!("operator warnings during the suite: {}", warnings.len());
    Ok(())
}

/// 2 replicas land on 2 distinct providers and become Available; Docker runs them on 2 edges.
async fn two_replicas_land_on_two_providers(
    s: &Scenario,
    operator: &OperatorProcess,
) -> anyhow::Result<()> {
    let t0 = Instant::now();
    s.env
        .kubectl_stdin(&["apply", "-f", "-"], &workload_yaml(2, &s.v1))?;
    eventually(Duration::from_secs(60), || {
        check_available(&s.client, 2, &s.v1)
    })
    .await
    .with_context(|| {
        format!(
            "2 replicas not Available; operator log:\n{}",
            operator.child.log_tail(30)
        )
    })?;
    println!("2 replicas Available in {:.1}s", t0.elapsed().as_secs_f64());
    let containers = running_containers(&s.env, &s.nodes)?;
    ensure!(
        containers.values().filter(|c| !c.is_empty()).count() == 2,
        "Docker should run the 2 replicas on 2 edges: {containers:?}"
    );
    Ok(())
}

/// Scaling to 3 uses the third provider.
async fn scaling_to_3_uses_the_third_provider(s: &Scenario) -> anyhow::Result<()> {
    patch_workload(&s.client, serde_json::json!({"spec": {"replicas": 3}})).await?;
    eventually(Duration::from_secs(60), || {
        check_available(&s.client, 3, &s.v1)
    })
    .await?;
    println!("scaled to 3: {:?}", replicas(&s.client).await?);
    Ok(())
}

/// Scaling to 4 with 3 providers: Degraded with the numbers, then recovery on a 4th.
async fn a_shortage_degrades_until_a_4th_provider_joins(
    s: &Scenario,
    operator: &OperatorProcess,
    edges: &mut Edges,
) -> anyhow::Result<()> {
    let (env, client) = (&s.env, &s.client);
    patch_workload(client, serde_json::json!({"spec": {"replicas": 4}})).await?;
    let degraded = eventually(Duration::from_secs(30), || async {
        let wl = workload(client).await?;
        let status = wl.status.context("no status")?;
        let d = find_condition(&status.conditions, "Degraded")
            .context("no Degraded")?
            .clone();
        ensure!(d.is_true(), "Degraded: {d:?}");
        ensure!(
            d.message.contains('3') && d.message.contains('4'),
            "message lacks numbers: {}",
            d.message
        );
        Ok(d)
    })
    .await?;
    println!("Degraded ({}): {}", degraded.reason, degraded.message);
    println!("{}", env.kubectl(&["get", "wl"])?);
    let events = env.kubectl(&[
        "get",
        "events",
        "--field-selector",
        &format!("involvedObject.name={WORKLOAD}"),
    ])?;
    println!("{events}");
    edges.insert(
        s.names[3].clone(),
        EdgeProcess::start(env, operator, &s.names[3], &[])?,
    );
    eventually(Duration::from_secs(60), || {
        check_available(client, 4, &s.v1)
    })
    .await?;
    let wl = workload(client).await?;
    let d = find_condition(&wl.status.unwrap_or_default().conditions, "Degraded").cloned();
    ensure!(
        d.as_ref().is_none_or(|d| !d.is_true()),
        "still Degraded: {d:?}"
    );
    println!("recovered with a 4th provider: 4/4 ready");
    Ok(())
}

/// Changing the image rolls every replica; the old replicas' containers stop (after their
/// grace period) and the rest run the new image.
async fn changing_the_image_rolls_every_replica(s: &Scenario) -> anyhow::Result<()> {
    let (client, v2) = (&s.client, &s.v2);
    let t0 = Instant::now();
    let mut min_ready = usize::MAX;
    patch_workload(
        client,
        serde_json::json!({"spec": {"template": {"spec": {"containers": [{
            "name": "web", "image": v2, "command": ["/bin/httpd", "-f", "-p", "8080", "-h", "/www"],
            "ports": [{"containerPort": 8080}],
            "resources": {"requests": {"cpu": "50m", "memory": "16Mi"}, "limits": {"cpu": "200m", "memory": "64Mi"}},
            "readinessProbe": {"httpGet": {"path": "/", "port": 8080}, "periodSeconds": 1}
        }]}}}}),
    )
    .await?;
    let deadline = Instant::now() + Duration::from_secs(120);
    loop {
        let reps = replicas(client).await?;
        min_ready = min_ready.min(reps.values().filter(|(_, r, _)| *r).count());
        if check_available(client, 4, v2).await.is_ok() {
            break;
        }
        if Instant::now() > deadline {
            bail!("rollout did not finish: {reps:?}");
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    println!(
        "rolled 4 replicas to {v2} in {:.1}s; fewest ready during the rollout: {min_ready}",
        t0.elapsed().as_secs_f64()
    );
    eventually(Duration::from_secs(30), || async {
        for (node, pods) in running_containers(&s.env, &s.nodes)? {
            for pod in pods {
                let image = s.env.engine_of_node(&node)?.docker(&[
                    "ps",
                    "--filter",
                    &format!("label={}={node}", container_labels::NODE),
                    "--filter",
                    &format!("label={}={pod}", container_labels::POD_NAME),
                    "--format",
                    "{{.Image}}",
                ])?;
                ensure!(image == *v2, "{pod} on {node} still runs {image}");
            }
        }
        Ok(())
    })
    .await
}

/// The replica lost with a SIGKILLed edge.
struct Lost {
    pod: String,
    node: String,
    /// The killed edge's provider.
    victim: String,
}

/// Failover: with a spare provider, SIGKILL an edge that carries a replica; a replacement is
/// Running and Ready elsewhere, still one replica per provider.
async fn a_sigkilled_edge_fails_over(
    s: &Scenario,
    operator: &OperatorProcess,
    edges: &mut Edges,
) -> anyhow::Result<Lost> {
    let (client, v2) = (&s.client, &s.v2);
    patch_workload(client, serde_json::json!({"spec": {"replicas": 3}})).await?;
    eventually(Duration::from_secs(60), || check_available(client, 3, v2)).await?;
    let reps = replicas(client).await?;
    let (lost_pod, (lost_node, _, _)) = reps.into_iter().next().context("a replica")?;
    let victim = provider_of_node(&lost_node)
        .context("a replica off the virtual nodes")?
        .to_string();
    let killed_at = Instant::now();
    edges.get_mut(&victim).context("victim edge")?.child.kill();
    let replacement = eventually(Duration::from_secs(60), || async {
        let reps = replicas(client).await?;
        ensure!(!reps.contains_key(&lost_pod), "{lost_pod} still in the API");
        let ready: Vec<_> = reps
            .iter()
            .filter(|(_, (n, r, _))| *r && *n != lost_node)
            .collect();
        ensure!(ready.len() == 3, "ready elsewhere: {reps:?}");
        let nodes: BTreeSet<_> = reps.values().map(|(n, _, _)| n.clone()).collect();
        ensure!(nodes.len() == 3, "replicas share providers: {reps:?}");
        Ok(reps)
    })
    .await
    .with_context(|| {
        format!(
            "no replacement; operator log:\n{}",
            operator.child.log_tail(40)
        )
    })?;
    let failover = killed_at.elapsed();
    println!(
        "FAILOVER: SIGKILL of {victim} -> replacement Running and Ready elsewhere in {:.2}s (target <= 10 s)",
        failover.as_secs_f64()
    );
    println!("after failover: {replacement:?}");
    Ok(Lost {
        pod: lost_pod,
        node: lost_node,
        victim,
    })
}

/// The killed edge comes back: its stale container is stopped, no duplicate remains, and
/// Docker runs exactly the pods the API has.
async fn the_returning_edge_stops_its_stale_replica(
    s: &Scenario,
    operator: &OperatorProcess,
    edges: &mut Edges,
    lost: &Lost,
) -> anyhow::Result<()> {
    let client = &s.client;
    // The killed edge's handle goes first: dropping it removes its egress rules, which must not
    // race the new edge installing the same chains.
    drop(edges.remove(&lost.victim));
    edges.insert(
        lost.victim.clone(),
        EdgeProcess::start(&s.env, operator, &lost.victim, &[])?,
    );
    let victim = [&lost.victim];
    eventually(Duration::from_secs(30), || {
        check_providers_ready(client, &victim)
    })
    .await?;
    eventually(Duration::from_secs(30), || async {
        let containers = running_containers(&s.env, &s.nodes)?;
        ensure!(
            containers
                .get(&lost.node)
                .is_none_or(|c| !c.contains(&lost.pod)),
            "stale container of {} still runs on {}",
            lost.pod,
            lost.node
        );
        let total: usize = containers.values().map(Vec::len).sum();
        ensure!(
            total == 3,
            "expected exactly 3 running replica containers: {containers:?}"
        );
        let api: BTreeSet<String> = replicas(client).await?.into_keys().collect();
        let docker_pods: BTreeSet<String> = containers.values().flatten().cloned().collect();
        ensure!(
            api == docker_pods,
            "API pods {api:?} != Docker pods {docker_pods:?}"
        );
        Ok(())
    })
    .await?;
    println!("the returning edge stopped its stale replica: 3 containers for 3 replicas");
    Ok(())
}

/// Usage accounting: what the edges measured in Docker is summed per Workload and per
/// Provider.
async fn usage_is_summed_per_workload_and_provider(s: &Scenario) -> anyhow::Result<()> {
    let client = &s.client;
    let (wl_usage, prov_usage) = eventually(Duration::from_secs(60), || async {
        let wl = workload(client).await?;
        let u = wl
            .status
            .and_then(|s| s.usage)
            .context("no Workload usage yet")?;
        ensure!(
            u.cpu_seconds > 0.0 && u.memory_gibibyte_hours > 0.0,
            "Workload usage {u:?}"
        );
        let mut prov = Vec::new();
        for name in &s.names {
            let p = Api::<Provider>::all(client.clone()).get(name).await?;
            if let Some(u) = p.status.and_then(|s| s.usage) {
                prov.push((name.clone(), u));
            }
        }
        ensure!(
            prov.iter().any(|(_, u)| u.cpu_seconds > 0.0),
            "no Provider usage yet: {prov:?}"
        );
        Ok((u, prov))
    })
    .await?;
    println!(
        "usage: Workload {WORKLOAD} {:.3} CPU-s, {:.6} GiB-h; providers {prov_usage:?}",
        wl_usage.cpu_seconds, wl_usage.memory_gibibyte_hours
    );
    Ok(())
}

/// `edge-kubelet status` on a provider shows its session, caps, pods and usage.
async fn edge_kubelet_status_shows_its_session_and_pods(
    s: &Scenario,
    edges: &Edges,
) -> anyhow::Result<()> {
    let (carrier_pod, (carrier_node, _, _)) = replicas(&s.client)
        .await?
        .into_iter()
        .next()
        .context("a replica")?;
    let carrier = provider_of_node(&carrier_node)
        .and_then(|p| edges.get(p))
        .context("carrier edge")?;
    let status = eventually(Duration::from_secs(15), || async {
        let out = std::process::Command::new(decloud_e2e::binary("edge-kubelet")?)
            .args(["status", "--name", &carrier.name, "--state-dir"])
            .arg(&carrier.state_dir)
            .output()?;
        let text = String::from_utf8_lossy(&out.stdout).into_owned();
        ensure!(
            out.status.success(),
            "edge-kubelet status failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        ensure!(text.contains("session:    connected"), "{text}");
        ensure!(text.contains(&format!("default/{carrier_pod}")), "{text}");
        ensure!(text.contains("offered:    cpu"), "{text}");
        Ok(text)
    })
    .await?;
    println!("edge-kubelet status:\n{status}");
    Ok(())
}

/// Deleting the Workload leaves no pod (not even a terminating one), no container and, once
/// its finalizer ran, no Workload.
async fn deleting_the_workload_leaves_nothing(s: &Scenario) -> anyhow::Result<()> {
    let client = &s.client;
    s.env.kubectl(&["delete", "wl", WORKLOAD, "--wait=false"])?;
    eventually(Duration::from_secs(60), || async {
        let reps = Api::<Pod>::namespaced(client.clone(), "default")
            .list(&ListParams::default().labels(&format!("{WORKLOAD_LABEL}={WORKLOAD}")))
            .await?;
        ensure!(reps.items.is_empty(), "{} pods remain", reps.items.len());
        let containers = running_containers(&s.env, &s.nodes)?;
        ensure!(
            containers.values().all(Vec::is_empty),
            "containers remain: {containers:?}"
        );
        let wl = Api::<Workload>::namespaced(client.clone(), "default")
            .get_opt(WORKLOAD)
            .await?;
        ensure!(wl.is_none(), "the Workload is still there (finalizer)");
        Ok(())
    })
    .await?;
    println!("deleted: no pod, no container, no Workload");
    Ok(())
}
