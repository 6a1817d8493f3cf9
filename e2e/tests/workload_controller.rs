//! The Workload controller (`decloud_workload::run`, in-process) against a real kube-apiserver,
//! with Provider objects whose status the test writes itself and a stand-in for the operator's
//! pod bridge (marks pods on up providers Running/Ready, finishes graceful deletions). No edges:
//! this proves the controller's side of the contract; the full suite with edges lives elsewhere.

use std::{
    collections::{BTreeMap, BTreeSet},
    sync::{Arc, Mutex},
    time::{Duration, Instant},
};

use anyhow::{Context as _, bail, ensure};
use decloud_crds::contracts::{TEMPLATE_HASH_LABEL, node_name, provider_of_node};
use decloud_crds::{Provider, Workload, find_condition};
use decloud_e2e::cluster::{node_of, pod_ready, workload_pods};
use decloud_e2e::{TestEnv, eventually};
use decloud_workload::{SharedWatch, Watches};
use k8s_openapi::{
    api::core::v1::{Namespace, Pod},
    jiff::Timestamp,
};
use kube::{
    Api, Client, ResourceExt,
    api::{DeleteParams, ListParams, Patch, PatchParams, PostParams},
};
use serde_json::json;

const NS: &str = "default";
const WL: &str = "hello";

fn now() -> String {
    Timestamp::now().strftime("%Y-%m-%dT%H:%M:%SZ").to_string()
}

/// Creates Provider `name` and reports it Ready with room for ten small pods.
async fn add_provider(client: &Client, name: &str, reliability: &str) -> anyhow::Result<()> {
    let api = Api::<Provider>::all(client.clone());
    let p: Provider = serde_json::from_value(json!({
        "apiVersion": "decloud.dev/v1alpha1", "kind": "Provider",
        "metadata": {"name": name, "labels": {"topology.kubernetes.io/region": "eu-west"}},
        "spec": {"owner": format!("{name}@example.org")},
    }))?;
    api.create(&PostParams::default(), &p).await?;
    set_provider_ready(client, name, true, reliability).await
}

async fn set_provider_ready(
    client: &Client,
    name: &str,
    ready: bool,
    reliability: &str,
) -> anyhow::Result<()> {
    let api = Api::<Provider>::all(client.clone());
    let status = json!({"status": {
        "phase": if ready { "Ready" } else { "NotReady" },
        "nodeName": node_name(name),
        "allocatable": {"cpu": "2", "memory": "4Gi", "pods": 10},
        "reliability": reliability,
        "conditions": [{
            "type": "Ready",
            "status": if ready { "True" } else { "False" },
            "reason": if ready { "EdgeConnected" } else { "HeartbeatsMissed" },
            "message": "",
            "lastTransitionTime": now(),
        }],
    }});
    api.patch_status(name, &PatchParams::default(), &Patch::Merge(&status))
        .await?;
    Ok(())
}

/// Stands in for the operator's pod bridge: pods on providers in `up` become Running and
/// Ready; pods being deleted there are finished (the edge confirmed).
fn spawn_fake_bridge(client: Client, up: Arc<Mutex<BTreeSet<String>>>) {
    tokio::spawn(async move {
        let pods = Api::<Pod>::namespaced(client, NS);
        loop {
            let up_now = up.lock().expect("up").clone();
            if let Ok(list) = pods.list(&ListParams::default()).await {
                for pod in list.items {
                    let node = node_of(&pod);
                    if !provider_of_node(&node).is_some_and(|p| up_now.contains(p)) {
                        continue;
                    }
                    let name = pod.name_any();
                    if pod.metadata.deletion_timestamp.is_some() {
                        let _ = pods
                            .delete(&name, &DeleteParams::default().grace_period(0))
                            .await;
                    } else if pod.status.as_ref().and_then(|s| s.phase.as_deref())
                        != Some("Running")
                    {
                        let status = json!({"status": {"phase": "Running", "conditions": [
                            {"type": "Ready", "status": "True"}]}});
                        let _ = pods
                            .patch_status(&name, &PatchParams::default(), &Patch::Merge(&status))
                            .await;
                    }
                }
            }
            tokio::time::sleep(Duration::from_millis(150)).await;
        }
    });
}

/// Live (not terminating) replica pods: name -> (provider, template hash, ready).
async fn replicas(client: &Client) -> anyhow::Result<BTreeMap<String, (String, String, bool)>> {
    Ok(workload_pods(client, NS, WL)
        .await?
        .into_iter()
        .map(|p| {
            let node = node_of(&p);
            let provider = provider_of_node(&node).unwrap_or(&node).to_string();
            let hash = p
                .labels()
                .get(TEMPLATE_HASH_LABEL)
                .cloned()
                .unwrap_or_default();
            let ready = pod_ready(&p);
            (p.name_any(), (provider, hash, ready))
        })
        .collect())
}

async fn workload(client: &Client) -> anyhow::Result<Workload> {
    Ok(Api::<Workload>::namespaced(client.clone(), NS)
        .get(WL)
        .await?)
}

fn condition(wl: &Workload, type_: &str) -> Option<decloud_crds::Condition> {
    wl.status
        .as_ref()
        .and_then(|s| find_condition(&s.conditions, type_).cloned())
}

/// Waits until the Workload reports `ready` ready replicas, all on distinct providers, all of
/// the current template and Available.
async fn wait_settled(
    client: &Client,
    ready: usize,
) -> anyhow::Result<BTreeMap<String, (String, String, bool)>> {
    eventually(Duration::from_secs(30), || async {
        let wl = workload(client).await?;
        let status = wl.status.clone().context("no status")?;
        let pods = replicas(client).await?;
        let providers: BTreeSet<&String> = pods.values().map(|(p, _, _)| p).collect();
        let hashes: BTreeSet<&String> = pods.values().map(|(_, h, _)| h).collect();
        ensure!(pods.len() == ready, "{} pods, want {ready}", pods.len());
        ensure!(
            providers.len() == ready,
            "replicas share providers: {pods:?}"
        );
        ensure!(hashes.len() == 1, "mixed templates: {pods:?}");
        ensure!(
            status.ready_replicas as usize == ready,
            "status: {status:?}"
        );
        ensure!(
            status.observed_generation == wl.metadata.generation,
            "status is stale"
        );
        ensure!(
            condition(&wl, "Available").is_some_and(|c| c.is_true()),
            "not Available"
        );
        Ok(pods)
    })
    .await
}

async fn scale(client: &Client, replicas: i32) -> anyhow::Result<()> {
    Api::<Workload>::namespaced(client.clone(), NS)
        .patch(
            WL,
            &PatchParams::default(),
            &Patch::Merge(json!({"spec": {"replicas": replicas}})),
        )
        .await?;
    Ok(())
}

/// The Workload controller over its own shared watches, as the operator runs it.
async fn run_controller(client: Client) -> decloud_workload::Result<()> {
    let mut workloads = SharedWatch::<Workload>::new(1024);
    let namespaces = SharedWatch::<Namespace>::new(1024);
    let mut providers = SharedWatch::<Provider>::new(1024);
    let mut pods = SharedWatch::<Pod>::new(1024);
    let watches = Watches {
        workloads: workloads.store(),
        workload_events: workloads.subscribe(),
        workload_claims: workloads.subscribe(),
        deleted_workloads: workloads.deletions(),
        namespaces: namespaces.store(),
        namespace_events: namespaces.subscribe(),
        providers: providers.store(),
        provider_events: providers.subscribe(),
        deleted_providers: providers.deletions(),
        pods: pods.store(),
        pod_events: pods.subscribe(),
        deleted_pods: pods.deletions(),
    };
    tokio::spawn(workloads.run(Api::all(client.clone()), Default::default()));
    tokio::spawn(namespaces.run(Api::all(client.clone()), Default::default()));
    tokio::spawn(providers.run(Api::all(client.clone()), Default::default()));
    tokio::spawn(pods.run(Api::all(client.clone()), Default::default()));
    decloud_workload::run(client, Default::default(), watches).await
}

#[tokio::test(flavor = "multi_thread")]
async fn workload_controller_places_rolls_fails_over_and_cleans_up() -> anyhow::Result<()> {
    let env = TestEnv::start().await?;
    let client = env.client();
    let up = Arc::new(Mutex::new(BTreeSet::new()));
    for (name, reliability) in [("alice", "0.99"), ("bob", "0.999"), ("carol", "0.95")] {
        add_provider(&client, name, reliability).await?;
        up.lock().expect("up").insert(name.to_string());
    }
    spawn_fake_bridge(client.clone(), up.clone());
    let controller = tokio::spawn(run_controller(client.clone()));

    // Two replicas land on the two most reliable providers and become Available.
    let wl: Workload = serde_json::from_value(json!({
        "apiVersion": "decloud.dev/v1alpha1", "kind": "Workload",
        "metadata": {"name": WL, "namespace": NS},
        "spec": {
            "replicas": 2,
            "template": {"metadata": {"labels": {"app": "hello"}}, "spec": {"containers": [{
                "name": "web", "image": "decloud-test/busybox:1",
                "ports": [{"containerPort": 8080}],
                "resources": {"requests": {"cpu": "100m", "memory": "32Mi"}}
            }]}},
            "placement": {"providerSelector": {"matchLabels": {"topology.kubernetes.io/region": "eu-west"}}},
            "expose": {"port": 8080},
            "failover": {"graceSeconds": 2}
        }
    }))?;
    Api::<Workload>::namespaced(client.clone(), NS)
        .create(&PostParams::default(), &wl)
        .await?;
    let pods = wait_settled(&client, 2).await?;
    let on: BTreeSet<&str> = pods.values().map(|(p, _, _)| p.as_str()).collect();
    assert_eq!(on, BTreeSet::from(["alice", "bob"]));
    let wl = workload(&client).await?;
    assert_eq!(
        wl.status.as_ref().and_then(|s| s.url.as_deref()),
        Some("http://hello.default.decloud.localhost")
    );
    assert!(
        wl.finalizers()
            .iter()
            .any(|f| f == decloud_crds::contracts::WORKLOAD_FINALIZER)
    );

    // Idempotent: a reconcile with nothing to do writes nothing (no changing status values).
    let touched = Api::<Workload>::namespaced(client.clone(), NS)
        .patch(
            WL,
            &PatchParams::default(),
            &Patch::Merge(json!({"metadata": {"annotations": {"touch": "1"}}})),
        )
        .await?;
    tokio::time::sleep(Duration::from_secs(2)).await;
    let after = workload(&client).await?;
    assert_eq!(
        after.resource_version(),
        touched.resource_version(),
        "status rewritten"
    );
    assert_eq!(after.status, wl.status);

    // Three uses the third provider; four is Degraded with the numbers, until a fourth joins.
    scale(&client, 3).await?;
    wait_settled(&client, 3).await?;
    scale(&client, 4).await?;
    let degraded = eventually(Duration::from_secs(15), || async {
        let wl = workload(&client).await?;
        let c = condition(&wl, "Degraded").context("no Degraded")?;
        ensure!(c.is_true(), "not degraded yet: {c:?}");
        Ok(c)
    })
    .await?;
    assert_eq!(
        degraded.message,
        "3/4 replicas placed: 1 needs a provider; 3 Ready providers match, all in use"
    );
    let events = env.kubectl(&["get", "events", "-n", NS, "-o", "json"])?;
    assert!(
        events.contains("InsufficientCapacity"),
        "no capacity Warning event"
    );
    add_provider(&client, "dave", "0.9").await?;
    up.lock().expect("up").insert("dave".into());
    wait_settled(&client, 4).await?;
    assert!(!condition(&workload(&client).await?, "Degraded").is_some_and(|c| c.is_true()));

    // A template change rolls every replica, one surge pod at a time, never below 3 ready.
    scale(&client, 3).await?;
    let before = wait_settled(&client, 3).await?;
    let old_hash = before
        .values()
        .next()
        .map(|(_, h, _)| h.clone())
        .unwrap_or_default();
    Api::<Workload>::namespaced(client.clone(), NS)
        .patch(
            WL,
            &PatchParams::default(),
            // A merge patch replaces the containers list as a whole.
            &Patch::Merge(json!({"spec": {"template": {"spec": {"containers": [{
                "name": "web", "image": "decloud-test/busybox:2",
                "ports": [{"containerPort": 8080}],
                "resources": {"requests": {"cpu": "100m", "memory": "32Mi"}}
            }]}}}})),
        )
        .await?;
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let pods = replicas(&client).await?;
        let ready = pods.values().filter(|(_, _, r)| *r).count();
        let all_new = pods.len() == 3 && pods.values().all(|(_, h, r)| *h != old_hash && *r);
        ensure!(ready >= 3, "ready dropped below 3: {pods:?}");
        ensure!(pods.len() <= 4, "surge above 1: {pods:?}");
        if all_new {
            break;
        }
        if Instant::now() > deadline {
            bail!("rollout did not finish: {pods:?}");
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let pods = wait_settled(&client, 3).await?;

    // Failover: a provider with a replica goes NotReady; after the 2 s grace its replica is
    // replaced on the free provider and the lost pod is gone.
    let (lost_pod, (lost_provider, _, _)) = pods.iter().next().context("a pod")?;
    let (lost_pod, lost_provider) = (lost_pod.clone(), lost_provider.clone());
    up.lock().expect("up").remove(&lost_provider);
    let killed = Instant::now();
    set_provider_ready(&client, &lost_provider, false, "0.5").await?;
    let pods = eventually(Duration::from_secs(20), || async {
        let pods = replicas(&client).await?;
        ensure!(!pods.contains_key(&lost_pod), "lost pod still there");
        ensure!(
            pods.len() == 3 && pods.values().all(|(p, _, r)| *r && *p != lost_provider),
            "{pods:?}"
        );
        Ok(pods)
    })
    .await?;
    let took = killed.elapsed();
    println!(
        "failover: replacement ready {took:?} after provider {lost_provider} went NotReady (grace 2s)"
    );
    assert!(
        took >= Duration::from_secs(2),
        "replaced before the grace: {took:?}"
    );
    assert!(took < Duration::from_secs(8), "failover too slow: {took:?}");
    // The lost pod was force-deleted: gone from the API, not left terminating.
    let all = Api::<Pod>::namespaced(client.clone(), NS)
        .list(&ListParams::default())
        .await?;
    assert!(all.items.iter().all(|p| p.name_any() != lost_pod));
    assert_eq!(pods.len(), 3);

    // Deleting the Workload removes every pod, then the Workload itself.
    Api::<Workload>::namespaced(client.clone(), NS)
        .delete(WL, &DeleteParams::default())
        .await?;
    eventually(Duration::from_secs(20), || async {
        let left = Api::<Pod>::namespaced(client.clone(), NS)
            .list(&ListParams::default())
            .await?;
        ensure!(left.items.is_empty(), "{} pods left", left.items.len());
        match Api::<Workload>::namespaced(client.clone(), NS)
            .get_opt(WL)
            .await?
        {
            None => Ok(()),
            Some(_) => bail!("Workload still there"),
        }
    })
    .await?;
    ensure!(!controller.is_finished(), "the controller stopped");
    controller.abort();
    Ok(())
}
