//! What kubectl users reach for on a DeCloud node (issue 18), against a real kube-apiserver,
//! the real operator and edge-kubelet on a Docker engine of its own per edge, with the pinned kubectl:
//! - `kubectl scale` on a Workload (its scale subresource shows the pods' selector, the
//!   Workload controller follows, `kubectl wait --for=condition=Available` returns) and
//!   `kubectl describe` reading its usage fields well;
//! - `kubectl describe pod` showing kubelet's events for a pull failure, a crash loop and a
//!   failing readiness probe;
//! - `kubectl get --raw /api/v1/nodes/<node>/proxy/{healthz,pods,stats/summary,metrics/resource}`
//!   with real figures, the node being advertised at the routable test address
//!   (`e2e/scripts/node-address.sh`) on a kubelet port of its own, and `kubectl top pod/node`
//!   through the real metrics-server (`e2e/k8s/build-metrics-server.sh`) as an aggregated API,
//!   and a HorizontalPodAutoscaler (the real kube-controller-manager's) scaling a Workload;
//! - a hand-written edge that can neither put events or statistics on a pod of another node nor
//!   flood the API server with events.
//!
//! Needs `cargo build --workspace --bins` first (the suite says so if not). No pull ever
//! dials out: the pods pull the test image from the environment's loopback registry or use
//! `imagePullPolicy: Never`.

use std::time::Duration;

use anyhow::{Context as _, ensure};
use decloud_crds::Workload;
use decloud_e2e::cluster::{ContainerSweeper, EdgeProcess, OperatorProcess, busybox_image};
use decloud_e2e::metrics_server::MetricsServer;
use decloud_e2e::raw_edge::{channel, operator_ca};
use decloud_e2e::{TestEnv, eventually, node_address};
use decloud_proto as pb;
use k8s_openapi::api::core::v1::{Event, Pod};
use kube::ResourceExt;
use kube::api::{Api, ListParams, PostParams};
use pb::edge_client::EdgeClient;
use pb::edge_message::Kind as Out;
use pb::operator_message::Kind as In;
use serde_json::json;
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;

const NS: &str = "default";

/// A pod bound to `node`, tolerating the edge taint, with `container` as its one container.
fn bound_pod(name: &str, node: &str, container: serde_json::Value) -> anyhow::Result<Pod> {
    Ok(serde_json::from_value(json!({
        "apiVersion": "v1", "kind": "Pod",
        "metadata": {"name": name, "namespace": NS},
        "spec": {
            "nodeName": node,
            "terminationGracePeriodSeconds": 1,
            "tolerations": [{"operator": "Exists"}],
            "containers": [container],
        }
    }))?)
}

/// `kubectl describe pod name` until its output contains every one of `wanted`.
async fn describe_until(env: &TestEnv, pod: &str, wanted: &[&str]) -> anyhow::Result<String> {
    eventually(Duration::from_secs(90), || async {
        let out = env.kubectl(&["describe", "pod", pod, "-n", NS])?;
        let missing: Vec<&&str> = wanted.iter().filter(|w| !out.contains(**w)).collect();
        ensure!(missing.is_empty(), "missing {missing:?} in:\n{out}");
        Ok(out)
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn kubectl_scale_and_kubelet_events_on_a_real_edge() -> anyhow::Result<()> {
    let env = TestEnv::start().await?;
    let client = env.client();
    let image = busybox_image()?;
    let operator = OperatorProcess::start(
        &env,
        &["--heartbeat-interval", "1s", "--usage-interval", "1s"],
    )
    .await?;
    let name = format!("kev-{}", std::process::id());
    let edge = EdgeProcess::start(&env, &operator, &name, &[])?;
    let node = edge.node();
    let _sweeper = ContainerSweeper::new(&env, std::slice::from_ref(&node));
    decloud_e2e::cluster::wait_providers_ready(&client, &operator, &[&name]).await?;

    // --- kubectl scale: the scale subresource, its selector, and the controller following.
    let wl = json!({
        "apiVersion": "decloud.dev/v1alpha1", "kind": "Workload",
        "metadata": {"name": "scaled", "namespace": NS},
        "spec": {
            "replicas": 1,
            "placement": {"spread": "Preferred"},
            "template": {"spec": {
                "terminationGracePeriodSeconds": 1,
                "containers": [{"name": "main", "image": image,
                    "command": ["sleep", "3600"],
                    "resources": {"requests": {"cpu": "10m", "memory": "8Mi"}}}],
            }},
        }
    });
    env.kubectl_stdin(&["apply", "-f", "-"], &wl.to_string())?;
    let out = env.kubectl(&["scale", "wl", "scaled", "-n", NS, "--replicas=3"])?;
    println!("kubectl scale: {}", out.trim());
    let workloads: Api<Workload> = Api::namespaced(client.clone(), NS);
    let scale = eventually(Duration::from_secs(60), || async {
        let raw = env.kubectl(&[
            "get",
            "--raw",
            "/apis/decloud.dev/v1alpha1/namespaces/default/workloads/scaled/scale",
        ])?;
        let v: serde_json::Value = serde_json::from_str(&raw)?;
        ensure!(
            v["status"]["replicas"] == 3 && v["spec"]["replicas"] == 3,
            "not scaled yet: {raw}"
        );
        Ok(v)
    })
    .await?;
    println!("scale: {scale}");
    ensure!(
        scale["kind"] == "Scale" && scale["status"]["selector"] == "decloud.dev/workload=scaled",
        "the scale subresource does not show the pods' selector: {scale}"
    );
    // The selector picks exactly the Workload's pods.
    let pods: Api<Pod> = Api::namespaced(client.clone(), NS);
    let selected = pods
        .list(&ListParams::default().labels("decloud.dev/workload=scaled"))
        .await?;
    let owned = selected
        .items
        .iter()
        .filter(|p| p.owner_references().iter().any(|o| o.name == "scaled"))
        .count();
    ensure!(
        selected.items.len() == 3 && owned == 3,
        "selector picked {} pods, {owned} of them the Workload's",
        selected.items.len()
    );
    let w = workloads.get("scaled").await?;
    ensure!(w.spec.replicas == 3, "spec.replicas {}", w.spec.replicas);
    env.kubectl(&[
        "wait",
        "--for=condition=Available",
        "wl/scaled",
        "-n",
        NS,
        "--timeout=90s",
    ])?;
    // kubectl describe reads the usage fields well ("Memory Gibibyte Hours", not "Gi B").
    let described = eventually(Duration::from_secs(120), || async {
        let out = env.kubectl(&["describe", "wl", "scaled", "-n", NS])?;
        ensure!(
            out.contains("Memory Gibibyte Hours:"),
            "no usage yet:\n{out}"
        );
        Ok(out)
    })
    .await?;
    ensure!(
        !described.contains("Gi B"),
        "describe splits a field name badly:\n{described}"
    );
    env.kubectl(&["delete", "wl", "scaled", "-n", NS, "--wait=false"])?;

    // --- kubectl describe pod: kubelet's events.
    // A started container: Pulled (present), Created, Started; then a failing readiness probe.
    let probe = bound_pod(
        "unready",
        &node,
        json!({"name": "web", "image": image, "imagePullPolicy": "IfNotPresent",
            "command": ["sleep", "3600"],
            "readinessProbe": {"httpGet": {"path": "/", "port": 8080}, "periodSeconds": 1}}),
    )?;
    // A crash loop.
    let crash = bound_pod(
        "crashing",
        &node,
        json!({"name": "app", "image": image, "command": ["sh", "-c", "exit 3"]}),
    )?;
    // A pull failure that never dials out: the image is absent and may not be pulled.
    let never = bound_pod(
        "neverpull",
        &node,
        json!({"name": "app", "image": "decloud-test/absent:never", "imagePullPolicy": "Never"}),
    )?;
    for p in [&probe, &crash, &never] {
        pods.create(&PostParams::default(), p).await?;
    }

    let out = describe_until(
        &env,
        "unready",
        &[
            &format!("Container image \"{image}\" already present on machine"),
            "Created container: web",
            "Started container web",
            "Unhealthy",
            "Readiness probe failed: Get \"http://",
            ":8080/\": dial tcp ",
            "connect: connection refused",
        ],
    )
    .await?;
    println!("--- kubectl describe pod unready\n{out}");

    let uid = pods.get("crashing").await?.uid().unwrap_or_default();
    let out = describe_until(
        &env,
        "crashing",
        &[
            "Created container: app",
            "Started container app",
            "BackOff",
            &format!("Back-off restarting failed container app in pod crashing_default({uid})"),
        ],
    )
    .await?;
    println!("--- kubectl describe pod crashing\n{out}");

    let out = describe_until(
        &env,
        "neverpull",
        &[
            "ErrImageNeverPull",
            "Container image \"decloud-test/absent:never\" is not present with pull policy of Never",
            "Error: ErrImageNeverPull",
        ],
    )
    .await?;
    println!("--- kubectl describe pod neverpull\n{out}");

    // Recorded as kubelet records them: by "kubelet" on the node, about the container.
    let events: Api<Event> = Api::namespaced(client.clone(), NS);
    let list = events
        .list(&ListParams::default().fields("involvedObject.name=crashing"))
        .await?;
    let backoff = list
        .items
        .iter()
        .find(|e| e.reason.as_deref() == Some("BackOff"))
        .context("no BackOff event")?;
    ensure!(
        backoff.reporting_component.as_deref() == Some("kubelet")
            && backoff.reporting_instance.as_deref() == Some(node.as_str())
            && backoff.type_.as_deref() == Some("Warning")
            && backoff.involved_object.field_path.as_deref() == Some("spec.containers{app}"),
        "not shaped like kubelet's: {backoff:?}"
    );
    Ok(())
}

/// The number a kubectl quantity starts with (`98m` → 98, `5Mi` → 5).
fn leading_number(q: &str) -> u64 {
    let digits: String = q.chars().take_while(char::is_ascii_digit).collect();
    digits.parse().unwrap_or(0)
}

/// `kubectl get --raw /api/v1/nodes/<node>/proxy/<path>`.
fn node_proxy(env: &TestEnv, node: &str, path: &str) -> anyhow::Result<String> {
    env.kubectl(&[
        "get",
        "--raw",
        &format!("/api/v1/nodes/{node}/proxy/{path}"),
    ])
}

/// The value of the Prometheus sample whose name and labels start `prefix`, and its timestamp.
fn sample(text: &str, prefix: &str) -> Option<(f64, i64)> {
    let line = text.lines().find(|l| l.starts_with(prefix))?;
    let mut words = line[prefix.len()..].split_whitespace();
    Some((words.next()?.parse().ok()?, words.next()?.parse().ok()?))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn node_proxy_serves_kubelets_reads_with_real_figures() -> anyhow::Result<()> {
    let env = TestEnv::start().await?;
    let client = env.client();
    let image = busybox_image()?;
    let address = node_address()?.to_string();
    let operator = OperatorProcess::start(
        &env,
        &["--heartbeat-interval", "1s", "--node-address", &address],
    )
    .await?;
    let name = format!("kread-{}", std::process::id());
    let mut connect = operator.edge_args();
    connect.extend(["--stats-interval".to_string(), "2s".to_string()]);
    let edge = EdgeProcess::start_with(&env, &name, &[], &connect)?;
    let node = edge.node();
    let _sweeper = ContainerSweeper::new(&env, std::slice::from_ref(&node));
    decloud_e2e::cluster::wait_providers_ready(&client, &operator, &[&name]).await?;

    // The node is advertised at the routable address, on a kubelet port of its own.
    let nodes: Api<k8s_openapi::api::core::v1::Node> = Api::all(client.clone());
    eventually(Duration::from_secs(30), || async {
        let status = nodes.get(&node).await?.status.unwrap_or_default();
        let internal = status
            .addresses
            .unwrap_or_default()
            .into_iter()
            .find(|a| a.type_ == "InternalIP")
            .map(|a| a.address);
        ensure!(
            internal.as_deref() == Some(address.as_str()),
            "InternalIP {internal:?}"
        );
        let port = status
            .daemon_endpoints
            .and_then(|d| d.kubelet_endpoint)
            .map(|e| e.port);
        ensure!(
            port.is_some_and(|p| p != i32::from(operator.kubelet_port)),
            "the node has no kubelet port of its own: {port:?}"
        );
        Ok(())
    })
    .await?;

    // A pod that burns a little CPU and holds some memory.
    let pods: Api<Pod> = Api::namespaced(client.clone(), NS);
    let busy = bound_pod(
        "busy",
        &node,
        json!({"name": "app", "image": image,
            "command": ["sh", "-c", "x=$(head -c 4000000 /dev/zero | tr '\\0' a); while :; do :; done"],
            "resources": {"limits": {"cpu": "100m", "memory": "64Mi"}}}),
    )?;
    pods.create(&PostParams::default(), &busy).await?;

    ensure!(
        node_proxy(&env, &node, "healthz")?.trim() == "ok",
        "healthz"
    );
    let list: serde_json::Value = eventually(Duration::from_secs(60), || async {
        let v: serde_json::Value = serde_json::from_str(&node_proxy(&env, &node, "pods")?)?;
        let running = v["items"]
            .as_array()
            .into_iter()
            .flatten()
            .any(|p| p["metadata"]["name"] == "busy" && p["status"]["phase"] == "Running");
        ensure!(running, "busy not Running in /pods yet");
        Ok(v)
    })
    .await?;
    ensure!(
        list["kind"] == "PodList" && list["apiVersion"] == "v1",
        "{list}"
    );

    let summary: serde_json::Value = eventually(Duration::from_secs(60), || async {
        let v: serde_json::Value =
            serde_json::from_str(&node_proxy(&env, &node, "stats/summary")?)?;
        let pod = v["pods"]
            .as_array()
            .into_iter()
            .flatten()
            .find(|p| p["podRef"]["name"] == "busy")
            .cloned()
            .context("no busy in the summary yet")?;
        let c = &pod["containers"][0];
        ensure!(
            c["cpu"]["usageNanoCores"].as_u64().unwrap_or(0) > 0
                && c["cpu"]["usageCoreNanoSeconds"].as_u64().unwrap_or(0) > 0
                && c["memory"]["workingSetBytes"].as_u64().unwrap_or(0) > 1_000_000,
            "no real figures yet: {c}"
        );
        Ok(v)
    })
    .await?;
    println!("stats/summary: {summary}");
    ensure!(summary["node"]["nodeName"] == node.as_str(), "{summary}");
    ensure!(
        summary["node"]["cpu"]["usageCoreNanoSeconds"]
            .as_u64()
            .unwrap_or(0)
            > 0
            && summary["node"]["memory"]["workingSetBytes"]
                .as_u64()
                .unwrap_or(0)
                > 0,
        "node figures: {}",
        summary["node"]
    );

    let text = node_proxy(&env, &node, "metrics/resource")?;
    println!("metrics/resource:\n{text}");
    let (cpu, ts) = sample(
        &text,
        "container_cpu_usage_seconds_total{container=\"app\",namespace=\"default\",pod=\"busy\"}",
    )
    .context("no container_cpu_usage_seconds_total of busy")?;
    ensure!(cpu > 0.0 && ts > 1_600_000_000_000, "cpu {cpu} at {ts}");
    let (ws, _) = sample(
        &text,
        "container_memory_working_set_bytes{container=\"app\",namespace=\"default\",pod=\"busy\"}",
    )
    .context("no container_memory_working_set_bytes of busy")?;
    ensure!(ws > 1_000_000.0, "working set {ws}");
    for family in [
        "node_cpu_usage_seconds_total ",
        "node_memory_working_set_bytes ",
        "pod_cpu_usage_seconds_total{namespace=\"default\",pod=\"busy\"}",
        "pod_memory_working_set_bytes{namespace=\"default\",pod=\"busy\"}",
        "container_start_time_seconds{container=\"app\"",
        "resource_scrape_error 0",
        "scrape_error 0",
    ] {
        ensure!(text.contains(family), "no {family} in:\n{text}");
    }

    // --- kubectl top, through the real metrics-server scraping the node's kubelet API.
    let _metrics = MetricsServer::start(&env, node_address()?).await?;
    let top = eventually(Duration::from_secs(120), || async {
        let out = env.kubectl(&["top", "pod", "busy", "-n", NS, "--no-headers"])?;
        // NAME CPU(cores) MEMORY(bytes), e.g. "busy 98m 5Mi"
        let fields: Vec<&str> = out.split_whitespace().collect();
        ensure!(
            fields.len() == 3 && fields[0] == "busy",
            "kubectl top pod: {out}"
        );
        ensure!(
            leading_number(fields[1]) > 0 && leading_number(fields[2]) > 0,
            "no real figures: {out}"
        );
        Ok(out)
    })
    .await?;
    println!("kubectl top pod: {}", top.trim());
    let top = eventually(Duration::from_secs(60), || async {
        let out = env.kubectl(&["top", "node", &node, "--no-headers"])?;
        let fields: Vec<&str> = out.split_whitespace().collect();
        ensure!(
            fields.first() == Some(&node.as_str()) && fields.len() >= 3,
            "kubectl top node: {out}"
        );
        ensure!(leading_number(fields[1]) > 0, "no real figures: {out}");
        Ok(out)
    })
    .await?;
    println!("kubectl top node: {}", top.trim());

    // --- A HorizontalPodAutoscaler scales a Workload through its scale subresource, on the
    // figures metrics-server has from the edge (the real kube-controller-manager, with only
    // its HPA controller).
    let wl = json!({
        "apiVersion": "decloud.dev/v1alpha1", "kind": "Workload",
        "metadata": {"name": "auto", "namespace": NS},
        "spec": {
            "replicas": 1,
            "placement": {"spread": "Preferred"},
            "template": {"spec": {
                "terminationGracePeriodSeconds": 1,
                "containers": [{"name": "main", "image": image,
                    "command": ["sh", "-c", "while :; do :; done"],
                    "resources": {"requests": {"cpu": "10m", "memory": "8Mi"},
                        "limits": {"cpu": "50m", "memory": "32Mi"}}}],
            }},
        }
    });
    env.kubectl_stdin(&["apply", "-f", "-"], &wl.to_string())?;
    let hpa = json!({
        "apiVersion": "autoscaling/v2", "kind": "HorizontalPodAutoscaler",
        "metadata": {"name": "auto", "namespace": NS},
        "spec": {
            "scaleTargetRef": {"apiVersion": "decloud.dev/v1alpha1", "kind": "Workload", "name": "auto"},
            "minReplicas": 1,
            "maxReplicas": 2,
            "metrics": [{"type": "Resource", "resource": {"name": "cpu",
                "target": {"type": "Utilization", "averageUtilization": 50}}}],
        }
    });
    env.kubectl_stdin(&["apply", "-f", "-"], &hpa.to_string())?;
    let mut kcm = std::process::Command::new(env.bin_dir().join("kube-controller-manager"));
    kcm.args([
        &format!("--kubeconfig={}", env.kubeconfig().display()),
        "--controllers=horizontalpodautoscaling",
        "--leader-elect=false",
        "--secure-port=0",
        "--horizontal-pod-autoscaler-sync-period=5s",
        "--v=2",
    ]);
    let _kcm = decloud_e2e::ChildGuard::spawn(
        "kube-controller-manager",
        kcm,
        &env.dir().join("kube-controller-manager.log"),
    )?;
    let workloads: Api<Workload> = Api::namespaced(client.clone(), NS);
    eventually(Duration::from_secs(180), || async {
        let w = workloads.get("auto").await?;
        let ready = w.status.as_ref().map_or(0, |s| s.ready_replicas);
        ensure!(
            w.spec.replicas == 2 && ready == 2,
            "not scaled by the HPA yet: spec {} ready {ready}; {}",
            w.spec.replicas,
            env.kubectl(&["describe", "hpa", "auto", "-n", NS])
                .unwrap_or_default()
        );
        Ok(())
    })
    .await?;
    println!("{}", env.kubectl(&["get", "hpa", "auto", "-n", NS])?.trim());
    Ok(())
}

fn msg(kind: Out) -> pb::EdgeMessage {
    pb::EdgeMessage { kind: Some(kind) }
}

/// Events recorded about pod `name` (a count of Event objects).
async fn events_of(events: &Api<Event>, name: &str) -> anyhow::Result<Vec<Event>> {
    Ok(events
        .list(&ListParams::default().fields(&format!("involvedObject.name={name}")))
        .await?
        .items)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_modified_edge_can_neither_forge_nor_flood_events() -> anyhow::Result<()> {
    let env = TestEnv::start().await?;
    let client = env.client();
    let address = node_address()?.to_string();
    let operator = OperatorProcess::start(
        &env,
        &["--heartbeat-interval", "1s", "--node-address", &address],
    )
    .await?;
    let name = format!("kev-raw-{}", std::process::id());
    let node = format!("edge-{name}");

    let ca = operator_ca(&client).await?;
    let ch = channel(&operator, &ca).await?;
    let credential = EdgeClient::new(ch.clone())
        .register(pb::RegisterRequest {
            join_token: operator.join_token.clone(),
            provider_name: name.clone(),
            ..Default::default()
        })
        .await?
        .into_inner()
        .credential;
    let (tx, rx) = mpsc::channel(4096);
    tx.send(msg(Out::Hello(pb::Hello {
        provider_name: name.clone(),
        agent_version: "modified".into(),
        runtime: "docker".into(),
        capacity: Some(pb::Resources {
            cpu_millis: 2000,
            memory_bytes: 1 << 30,
            pods: 10,
            ..Default::default()
        }),
        offered: Some(pb::Resources {
            cpu_millis: 2000,
            memory_bytes: 1 << 30,
            pods: 10,
            ..Default::default()
        }),
        ..Default::default()
    })))
    .await?;
    let mut req = tonic::Request::new(ReceiverStream::new(rx));
    req.metadata_mut()
        .insert("authorization", format!("Bearer {credential}").parse()?);
    let mut inbound = EdgeClient::new(ch.clone()).session(req).await?.into_inner();
    let beat = tx.clone();
    let heartbeats = tokio::spawn(async move {
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

    let pods: Api<Pod> = Api::namespaced(client.clone(), NS);
    let container = json!({"name": "main", "image": "decloud-test/absent:never",
        "imagePullPolicy": "Never"});
    let mine = pods
        .create(
            &PostParams::default(),
            &bound_pod("mine", &node, container.clone())?,
        )
        .await?;
    let theirs = pods
        .create(
            &PostParams::default(),
            &bound_pod("theirs", "edge-someone-else", container)?,
        )
        .await?;
    // The operator knows our pod once it has sent it to us.
    tokio::time::timeout(Duration::from_secs(30), async {
        loop {
            let m = inbound.message().await?.context("session closed")?;
            let names: Vec<String> = match m.kind {
                Some(In::PodSet(s)) => s.pods.into_iter().map(|p| p.name).collect(),
                Some(In::PodUpsert(u)) => u.pod.into_iter().map(|p| p.name).collect(),
                _ => vec![],
            };
            if names.iter().any(|n| n == "mine") {
                return anyhow::Ok(());
            }
        }
    })
    .await
    .context("the pod never reached the session")??;
    let event = |pod: &Pod, reason: String| pb::PodEvent {
        uid: pod.uid().unwrap_or_default(),
        namespace: NS.into(),
        name: pod.name_any(),
        container: "main".into(),
        warning: true,
        reason,
        message: "x".repeat(5000),
    };

    // A forged event on another node's pod (with its real uid), then a flood on our own.
    tx.send(msg(Out::PodEvent(event(&theirs, "Forged".into()))))
        .await?;
    const FLOOD: usize = 500;
    for i in 0..FLOOD {
        tx.send(msg(Out::PodEvent(event(&mine, format!("Flood{i}")))))
            .await?;
    }
    let events: Api<Event> = Api::namespaced(client.clone(), NS);
    let burst = pb::POD_EVENT_BURST as usize;
    eventually(Duration::from_secs(60), || async {
        let n = events_of(&events, "mine").await?.len();
        ensure!(n >= burst, "{n} events recorded so far");
        Ok(())
    })
    .await?;
    // The writer records in order, so everything sent before is settled; give stragglers a
    // moment anyway.
    tokio::time::sleep(Duration::from_secs(3)).await;
    let recorded = events_of(&events, "mine").await?;
    println!(
        "flood of {FLOOD}: {} events recorded on the pod",
        recorded.len()
    );
    // The burst, plus at most one refill during the test's few seconds.
    ensure!(
        recorded.len() <= burst + 2,
        "{} of {FLOOD} flooded events recorded",
        recorded.len()
    );
    for e in &recorded {
        let note = e.message.as_deref().unwrap_or_default();
        ensure!(
            note.len() <= pb::MAX_EVENT_MESSAGE,
            "a message of {} bytes",
            note.len()
        );
    }
    let forged = events_of(&events, "theirs").await?;
    ensure!(
        forged.is_empty(),
        "an event was recorded on another node's pod: {forged:?}"
    );
    let metric = |reason: &'static str| {
        let operator = &operator;
        async move {
            operator
                .metric(
                    "decloud_operator_pod_events_refused_total",
                    &format!("reason=\"{reason}\""),
                )
                .await
                .map(|v| v.unwrap_or(0.0))
        }
    };
    ensure!(
        metric("not_bound").await? >= 1.0,
        "forged event not counted"
    );
    ensure!(
        metric("rate_limited").await? >= (FLOOD - burst - 2) as f64,
        "flood not counted as rate limited"
    );

    // Statistics about another node's pod are not taken; about its own pod they are.
    let pod_stats = |pod: &Pod| pb::PodStats {
        uid: pod.uid().unwrap_or_default(),
        namespace: NS.into(),
        name: pod.name_any(),
        start_unix_millis: 1_700_000_000_000,
        cpu: Some(pb::CpuStats {
            usage_nano_cores: 1,
            usage_core_nano_seconds: 7_000_000_000,
        }),
        containers: vec![pb::ContainerStats {
            name: "main".into(),
            start_unix_millis: 1_700_000_000_000,
            ..Default::default()
        }],
        ..Default::default()
    };
    let report = pb::NodeStats {
        unix_millis: 1_700_000_000_000,
        pods: vec![pod_stats(&theirs), pod_stats(&mine)],
        ..Default::default()
    };
    tx.send(msg(Out::NodeStats(report.clone()))).await?;
    // Sooner than the minimum interval: dropped.
    tx.send(msg(Out::NodeStats(report))).await?;
    let summary: serde_json::Value = eventually(Duration::from_secs(60), || async {
        let v: serde_json::Value =
            serde_json::from_str(&node_proxy(&env, &node, "stats/summary")?)?;
        ensure!(v["pods"].as_array().is_some_and(|p| !p.is_empty()), "{v}");
        Ok(v)
    })
    .await?;
    let names: Vec<&str> = summary["pods"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|p| p["podRef"]["name"].as_str())
        .collect();
    ensure!(
        names == ["mine"],
        "statistics of another node's pod were taken: {names:?}"
    );
    let too_soon = operator
        .metric("decloud_operator_stats_refused_total", "")
        .await?
        .unwrap_or(0.0);
    ensure!(
        too_soon >= 1.0,
        "a report sooner than the minimum was taken"
    );
    heartbeats.abort();
    Ok(())
}
