//! A hostile provider (issue 14, items 4 and 5) against a real kube-apiserver and the real
//! `decloud-operator` over TLS: a hand-written edge with a real credential says in its Hello
//! and its pod reports what a modified edge-kubelet could, and the Provider, its Node and the
//! pods show that none of it is taken as sent. Pods of DaemonSets never reach the edge.
//!
//! Needs `cargo build -p decloud-operator` first (the suite says so if not).

use std::collections::HashMap;
use std::time::Duration;

use anyhow::{Context as _, ensure};
use decloud_crds::Provider;
use decloud_crds::quantity::{cpu_millis, memory_bytes};
use decloud_e2e::cluster::OperatorProcess;
use decloud_e2e::raw_edge::{channel, operator_ca};
use decloud_e2e::{TestEnv, eventually};
use decloud_proto as pb;
use k8s_openapi::api::apps::v1::DaemonSet;
use k8s_openapi::api::core::v1::{Event, Node, Pod};
use kube::ResourceExt;
use kube::api::{Api, ListParams, PostParams};
use pb::edge_client::EdgeClient;
use pb::edge_message::Kind as Out;
use pb::operator_message::Kind as In;
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tonic::transport::Channel;

const NS: &str = "default";
/// The pod network the hostile edge announces.
const POD_CIDR: &str = "10.244.0.0/16";

fn msg(kind: Out) -> pb::EdgeMessage {
    pb::EdgeMessage { kind: Some(kind) }
}

/// A session of the hand-written edge; heartbeats run while it lives.
struct RawSession {
    tx: mpsc::Sender<pb::EdgeMessage>,
    inbound: tonic::Streaming<pb::OperatorMessage>,
    /// Names of every pod the operator sent this session (PodSet and PodUpsert).
    received: Vec<String>,
    heartbeats: tokio::task::JoinHandle<()>,
}

impl Drop for RawSession {
    fn drop(&mut self) {
        self.heartbeats.abort();
    }
}

/// Opens a Session with `hello`, with `credential` as the bearer.
async fn open_session(
    ch: &Channel,
    credential: &str,
    hello: pb::Hello,
) -> anyhow::Result<RawSession> {
    let (tx, rx) = mpsc::channel(16);
    tx.send(msg(Out::Hello(hello))).await?;
    let mut req = tonic::Request::new(ReceiverStream::new(rx));
    req.metadata_mut()
        .insert("authorization", format!("Bearer {credential}").parse()?);
    let inbound = EdgeClient::new(ch.clone())
        .max_encoding_message_size(pb::MAX_MESSAGE_BYTES)
        .session(req)
        .await?
        .into_inner();
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
    Ok(RawSession {
        tx,
        inbound,
        received: Vec::new(),
        heartbeats,
    })
}

impl RawSession {
    /// Reads messages for up to `wait`, until `name` was received (if given). Whether it was.
    async fn read_for(&mut self, wait: Duration, name: Option<&str>) -> anyhow::Result<bool> {
        let deadline = tokio::time::Instant::now() + wait;
        loop {
            if name.is_some_and(|n| self.received.iter().any(|r| r == n)) {
                return Ok(true);
            }
            let m = match tokio::time::timeout_at(deadline, self.inbound.message()).await {
                Err(_) => return Ok(false),
                Ok(m) => m?.context("session closed")?,
            };
            match m.kind {
                Some(In::PodSet(s)) => self.received.extend(s.pods.into_iter().map(|p| p.name)),
                Some(In::PodUpsert(u)) => self.received.extend(u.pod.into_iter().map(|p| p.name)),
                _ => {}
            }
        }
    }
}

/// A pod bound to `node` that tolerates everything, owned by `owner` if given.
fn bound_pod(name: &str, node: &str, owner: Option<&DaemonSet>) -> anyhow::Result<Pod> {
    let owners: Vec<serde_json::Value> = owner
        .map(|ds| {
            serde_json::json!({
                "apiVersion": "apps/v1", "kind": "DaemonSet", "name": ds.name_any(),
                "uid": ds.uid().unwrap_or_default(), "controller": true,
                "blockOwnerDeletion": true,
            })
        })
        .into_iter()
        .collect();
    Ok(serde_json::from_value(serde_json::json!({
        "apiVersion": "v1", "kind": "Pod",
        "metadata": {"name": name, "namespace": NS, "ownerReferences": owners},
        "spec": {
            "nodeName": node,
            "tolerations": [{"operator": "Exists"}],
            "containers": [{"name": "main", "image": "decloud-test/busybox:1",
                "command": ["sleep", "3600"]}],
        }
    }))?)
}

fn labels_of(labels: &std::collections::BTreeMap<String, String>) -> String {
    let mut v: Vec<String> = labels.iter().map(|(k, v)| format!("{k}={v}")).collect();
    v.sort();
    v.join(",")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_hostile_providers_claims_are_not_taken_as_sent() -> anyhow::Result<()> {
    let env = TestEnv::start().await?;
    let client = env.client();
    let run = std::process::id();
    let operator = OperatorProcess::start(&env, &["--heartbeat-interval", "1s"]).await?;
    let name = format!("hostile-{run}");
    let node = format!("edge-{name}");

    // The administrator made the Provider, with a label of theirs.
    let providers: Api<Provider> = Api::all(client.clone());
    let admin: Provider = serde_json::from_value(serde_json::json!({
        "apiVersion": "decloud.dev/v1alpha1", "kind": "Provider",
        "metadata": {"name": name, "labels": {"tier": "gold"}},
        "spec": {},
    }))?;
    providers.create(&PostParams::default(), &admin).await?;

    // The edge joins it with a real token (completing the administrator's Provider).
    let ca = operator_ca(&client).await?;
    let ch = channel(&operator, &ca).await?;
    let credential = EdgeClient::new(ch.clone())
        .register(pb::RegisterRequest {
            join_token: operator.join_token.clone(),
            provider_name: name.clone(),
            labels: HashMap::from([("node-restriction.kubernetes.io/register".into(), "x".into())]),
            ..Default::default()
        })
        .await?
        .into_inner()
        .credential;

    // --- Its Hello claims reserved labels, the administrator's label, and a huge machine.
    let huge = pb::Resources {
        cpu_millis: 10_i64.pow(18), // 10^15 cores
        memory_bytes: i64::MAX,
        pods: i64::MAX,
        storage_bytes: i64::MAX,
    };
    let claimed: HashMap<String, String> = [
        ("node-restriction.kubernetes.io/x", "y"),
        ("decloud.dev/x", "y"),
        ("decloud.dev/provider", "someone-else"),
        ("kubernetes.io/arch", "evil"),
        ("node-role.kubernetes.io/control-plane", ""),
        ("tier", "bronze"),
        ("colour", "blue"),
        ("topology.kubernetes.io/region", "eu-west"),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_string(), v.to_string()))
    .collect();
    let hello = pb::Hello {
        provider_name: name.clone(),
        agent_version: "hostile".into(),
        capacity: Some(huge),
        offered: Some(huge),
        labels: claimed,
        runtime: "docker".into(),
        platform: Some(pb::Platform {
            os: "linux".into(),
            architecture: "amd64".into(),
            ..Default::default()
        }),
        pod_cidr: POD_CIDR.into(),
        ..Default::default()
    };
    let mut session = open_session(&ch, &credential, hello).await?;

    // The edge's harmless label is taken: the Hello was processed.
    let provider = eventually(Duration::from_secs(20), || async {
        let p = providers.get(&name).await?;
        ensure!(
            p.labels().get("colour").map(String::as_str) == Some("blue"),
            "edge labels not applied yet: {}",
            labels_of(p.labels())
        );
        Ok(p)
    })
    .await?;
    let labels = provider.labels();
    println!("Provider labels: {}", labels_of(labels));
    ensure!(
        labels.get("tier").map(String::as_str) == Some("gold"),
        "the edge overwrote the administrator's label: {}",
        labels_of(labels)
    );
    ensure!(
        labels
            .get("topology.kubernetes.io/region")
            .map(String::as_str)
            == Some("eu-west"),
        "{}",
        labels_of(labels)
    );
    for reserved in [
        "node-restriction.kubernetes.io/x",
        "node-restriction.kubernetes.io/register",
        "decloud.dev/x",
        "decloud.dev/provider",
        "kubernetes.io/arch",
        "node-role.kubernetes.io/control-plane",
    ] {
        ensure!(
            !labels.contains_key(reserved),
            "reserved label {reserved} on the Provider: {}",
            labels_of(labels)
        );
    }

    let nodes: Api<Node> = Api::all(client.clone());
    let n = eventually(Duration::from_secs(20), || async {
        let n = nodes.get(&node).await?;
        ensure!(
            n.status
                .as_ref()
                .and_then(|s| s.capacity.as_ref())
                .is_some(),
            "no capacity yet"
        );
        ensure!(
            n.labels().contains_key("colour"),
            "labels not on the Node yet"
        );
        Ok(n)
    })
    .await?;
    let nl = n.labels();
    println!("Node labels: {}", labels_of(nl));
    ensure!(
        nl.get("tier").map(String::as_str) == Some("gold"),
        "{}",
        labels_of(nl)
    );
    ensure!(
        nl.get("kubernetes.io/arch").map(String::as_str) == Some("amd64"),
        "{}",
        labels_of(nl)
    );
    ensure!(
        nl.get("decloud.dev/provider") == Some(&name),
        "{}",
        labels_of(nl)
    );
    for reserved in [
        "node-restriction.kubernetes.io/x",
        "node-restriction.kubernetes.io/register",
        "decloud.dev/x",
        "node-role.kubernetes.io/control-plane",
    ] {
        ensure!(
            !nl.contains_key(reserved),
            "reserved label {reserved} on the Node: {}",
            labels_of(nl)
        );
    }
    let status = n.status.clone().unwrap_or_default();
    for (what, list) in [
        ("capacity", &status.capacity),
        ("allocatable", &status.allocatable),
    ] {
        let list = list.clone().unwrap_or_default();
        let q = |k: &str| list.get(k).map(|q| q.0.clone()).unwrap_or_default();
        println!(
            "Node {what}: cpu={} memory={} pods={}",
            q("cpu"),
            q("memory"),
            q("pods")
        );
        let cpu = cpu_millis(&q("cpu")).context("cpu")?;
        let mem = memory_bytes(&q("memory")).context("memory")?;
        // A count as a quantity (the API server writes 10000 as "10k").
        let pods = cpu_millis(&q("pods")).context("pods")? / 1000;
        ensure!(
            cpu > 0 && cpu <= 1_024_000,
            "{what} cpu {} not clamped",
            q("cpu")
        );
        ensure!(
            mem > 0 && mem <= 64 << 40,
            "{what} memory {} not clamped",
            q("memory")
        );
        ensure!(pods > 0 && pods <= 10_000, "{what} pods {pods} not clamped");
    }

    // --- A pod bound to the edge; its reports claim the metadata service's address and a
    // 1 MiB message.
    let pods: Api<Pod> = Api::namespaced(client.clone(), NS);
    let pod = pods
        .create(&PostParams::default(), &bound_pod("victim", &node, None)?)
        .await?;
    let uid = pod.uid().unwrap_or_default();
    ensure!(
        session
            .read_for(Duration::from_secs(20), Some("victim"))
            .await?,
        "the pod never reached the session: {:?}",
        session.received
    );
    let report = |ip: &str, message: String| pb::PodStatus {
        uid: uid.clone(),
        namespace: NS.into(),
        name: "victim".into(),
        phase: pb::PodPhase::Running as i32,
        pod_ip: ip.into(),
        message,
        ..Default::default()
    };
    let big = format!("{}-end", "m".repeat(1 << 20));
    session
        .tx
        .send(msg(Out::PodStatus(report("169.254.169.254", big))))
        .await?;
    let s = eventually(Duration::from_secs(20), || async {
        let s = pods.get("victim").await?.status.context("no status")?;
        ensure!(
            s.phase.as_deref() == Some("Running") && s.message.is_some(),
            "not written yet"
        );
        Ok(s)
    })
    .await?;
    let written = s.message.clone().unwrap_or_default();
    println!(
        "victim: podIP {:?}, message of {} bytes",
        s.pod_ip,
        written.len()
    );
    ensure!(
        s.pod_ip.is_none() && s.pod_ips.is_none(),
        "the metadata address was published as podIP: {:?}",
        s.pod_ip
    );
    ensure!(
        written.len() <= 4096,
        "message of {} bytes stored",
        written.len()
    );
    let refused = operator
        .metric("decloud_operator_refused_pod_ips_total", "")
        .await?
        .unwrap_or(0.0);
    ensure!(refused >= 1.0, "refused pod IPs not counted: {refused}");

    // An address outside the announced pod network is not taken either; one inside it is.
    session
        .tx
        .send(msg(Out::PodStatus(report("10.96.0.1", "outside".into()))))
        .await?;
    let s = eventually(Duration::from_secs(20), || async {
        let s = pods.get("victim").await?.status.context("no status")?;
        ensure!(s.message.as_deref() == Some("outside"), "not written yet");
        Ok(s)
    })
    .await?;
    ensure!(
        s.pod_ip.is_none(),
        "an address outside {POD_CIDR} was published: {:?}",
        s.pod_ip
    );
    session
        .tx
        .send(msg(Out::PodStatus(report("10.244.3.7", "inside".into()))))
        .await?;
    eventually(Duration::from_secs(20), || async {
        let s = pods.get("victim").await?.status.context("no status")?;
        ensure!(
            s.pod_ip.as_deref() == Some("10.244.3.7"),
            "an address in the pod network is not published: {:?} ({:?})",
            s.pod_ip,
            s.message
        );
        Ok(())
    })
    .await?;
    println!("victim: 169.254.169.254 and 10.96.0.1 refused, 10.244.3.7 published");

    // --- A DaemonSet tolerating everything, aimed at the edge node. No kube-controller-manager
    // runs here, so its pod is made by hand as the DaemonSet controller would.
    let daemonsets: Api<DaemonSet> = Api::namespaced(client.clone(), NS);
    let ds: DaemonSet = serde_json::from_value(serde_json::json!({
        "apiVersion": "apps/v1", "kind": "DaemonSet",
        "metadata": {"name": "agent", "namespace": NS},
        "spec": {
            "selector": {"matchLabels": {"app": "agent"}},
            "template": {
                "metadata": {"labels": {"app": "agent"}},
                "spec": {
                    "nodeSelector": {"kubernetes.io/hostname": node},
                    "tolerations": [{"operator": "Exists"}],
                    "containers": [{"name": "main", "image": "decloud-test/busybox:1"}],
                },
            },
        },
    }))?;
    let ds = daemonsets.create(&PostParams::default(), &ds).await?;
    let agent = format!("agent-{run}");
    pods.create(
        &PostParams::default(),
        &bound_pod(&agent, &node, Some(&ds))?,
    )
    .await?;
    let s = eventually(Duration::from_secs(20), || async {
        let s = pods.get(&agent).await?.status.context("no status")?;
        ensure!(
            s.phase.as_deref() == Some("Failed")
                && s.reason.as_deref() == Some("DaemonSetNotAllowed"),
            "{agent}: phase {:?} reason {:?}",
            s.phase,
            s.reason
        );
        Ok(s)
    })
    .await?;
    println!(
        "{agent}: Failed, DaemonSetNotAllowed: {}",
        s.message.unwrap_or_default()
    );
    eventually(Duration::from_secs(15), || async {
        let events: Api<Event> = Api::namespaced(client.clone(), NS);
        let list = events.list(&ListParams::default()).await?;
        ensure!(
            list.items
                .iter()
                .any(|e| e.involved_object.name.as_deref() == Some(&agent)
                    && e.reason.as_deref() == Some("DaemonSetNotAllowed")
                    && e.type_.as_deref() == Some("Warning")),
            "no DaemonSetNotAllowed Warning event for {agent}"
        );
        Ok(())
    })
    .await?;
    // Whatever the session got by now (and in a little while) never includes it.
    session.read_for(Duration::from_secs(2), None).await?;
    ensure!(
        !session.received.contains(&agent),
        "the DaemonSet's pod was sent to the edge: {:?}",
        session.received
    );
    println!("session received only {:?}", session.received);
    // A fresh session's PodSet does not carry it either.
    drop(session);
    let again = pb::Hello {
        provider_name: name.clone(),
        runtime: "docker".into(),
        pod_cidr: POD_CIDR.into(),
        ..Default::default()
    };
    let mut session = open_session(&ch, &credential, again).await?;
    session.read_for(Duration::from_secs(3), None).await?;
    ensure!(
        session.received.contains(&"victim".to_string()) && !session.received.contains(&agent),
        "second session received {:?}",
        session.received
    );
    // The administrator's label still stands after a second Hello (which no longer claims the
    // edge's own `colour`: that one is removed).
    let p = eventually(Duration::from_secs(10), || async {
        let p = providers.get(&name).await?;
        ensure!(
            !p.labels().contains_key("colour"),
            "{}",
            labels_of(p.labels())
        );
        Ok(p)
    })
    .await?;
    ensure!(
        p.labels().get("tier").map(String::as_str) == Some("gold"),
        "{}",
        labels_of(p.labels())
    );
    Ok(())
}
