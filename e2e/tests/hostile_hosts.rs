//! Issue 14, item 3: a tenant cannot take another tenant's public host. Against a real
//! kube-apiserver, the real `decloud-operator` (Workload controller and gateway) and two real
//! `edge-kubelet`s on a Docker engine of its own per edge; traffic only to 127.0.0.1 and the suite's own
//! containers.
//!
//! - Two Workloads in two namespaces, both granted the custom host: the older serves it, the
//!   other shows `HostConflict` naming the owner's namespace, one Warning event and no URL, and
//!   the gateway sends that host only to the owner's app — also (503) while the owner has no
//!   ready replica. Deleting the owner hands the host to the other within seconds.
//! - A host in another namespace's zone of the base domain, and a custom host not granted:
//!   `HostNotAllowed`, no URL, not routed.
//!
//! Needs `cargo build --workspace --bins` first.

use std::time::Duration;

use anyhow::{Context as _, bail, ensure};
use decloud_crds::contracts::node_name;
use decloud_crds::{Workload, find_condition};
use decloud_e2e::cluster::{
    ContainerSweeper, EdgeProcess, OperatorProcess, busybox_image, http_get_host, pod_ready,
    wait_providers_ready, workload_pods,
};
use decloud_e2e::{TestEnv, eventually};
use k8s_openapi::api::core::v1::Event;
use kube::api::{Api, ListParams, Patch, PatchParams};
use kube::{Client, ResourceExt};

/// The custom host both tenants were granted.
const SHOP: &str = "shop.hostile-hosts.test";
/// A custom host nobody was granted.
const UNGRANTED: &str = "free.hostile-hosts.test";
/// A host in team-b's zone of the base domain.
const TEAM_B_ZONE: &str = "x.team-b.decloud.localhost";

/// Namespace `name`, granted `hosts` by the platform team.
fn namespace(name: &str, hosts: &str) -> String {
    format!(
        r#"apiVersion: v1
kind: Namespace
metadata:
  name: {name}
  annotations: {{decloud.dev/allowed-hosts: "{hosts}"}}
"#
    )
}

/// A one-replica Workload whose app answers `answer` on `/`, exposed as `host`.
fn workload(ns: &str, name: &str, host: &str, answer: &str) -> String {
    // The test registry's reference (built and pushed once per process).
    let image = busybox_image().expect("the busybox test image");
    let script =
        format!("mkdir -p /www; echo '{answer}' > /www/index.html; exec httpd -f -p 8080 -h /www");
    format!(
        r#"apiVersion: decloud.dev/v1alpha1
kind: Workload
metadata: {{name: {name}, namespace: {ns}}}
spec:
  replicas: 1
  template:
    spec:
      terminationGracePeriodSeconds: 1
      containers:
        - name: web
          image: {image}
          command: ["/bin/sh", "-c", {script:?}]
          ports: [{{containerPort: 8080}}]
          resources: {{requests: {{cpu: 50m, memory: 16Mi}}, limits: {{cpu: 500m, memory: 64Mi}}}}
          readinessProbe: {{httpGet: {{path: /, port: 8080}}, periodSeconds: 1}}
  placement: {{spread: Preferred}}
  expose: {{port: 8080, host: {host}}}
"#
    )
}

async fn get_wl(client: &Client, ns: &str, name: &str) -> anyhow::Result<Workload> {
    Ok(Api::<Workload>::namespaced(client.clone(), ns)
        .get(name)
        .await?)
}

/// `(status, reason, message)` of the Workload's `HostAccepted` condition, and its URL.
async fn host_state(
    client: &Client,
    ns: &str,
    name: &str,
) -> anyhow::Result<(Option<(String, String, String)>, Option<String>)> {
    let wl = get_wl(client, ns, name).await?;
    let status = wl.status.unwrap_or_default();
    let cond = find_condition(&status.conditions, "HostAccepted")
        .map(|c| (c.status.clone(), c.reason.clone(), c.message.clone()));
    Ok((cond, status.url))
}

/// Waits until Workload `ns/name` shows `HostAccepted` with `status`/`reason`.
async fn wait_host(
    client: &Client,
    ns: &str,
    name: &str,
    status: &str,
    reason: &str,
) -> anyhow::Result<(String, Option<String>)> {
    eventually(Duration::from_secs(30), || async {
        let (cond, url) = host_state(client, ns, name).await?;
        match cond {
            Some((s, r, m)) if s == status && r == reason => Ok((m, url)),
            other => bail!("{ns}/{name}: HostAccepted {other:?}, url {url:?}"),
        }
    })
    .await
}

/// Waits until Workload `ns/name` has a ready replica.
async fn wait_ready(client: &Client, ns: &str, name: &str) -> anyhow::Result<()> {
    eventually(Duration::from_secs(90), || async {
        let pods = workload_pods(client, ns, name).await?;
        ensure!(pods.iter().any(pod_ready), "{ns}/{name}: no ready replica");
        Ok(())
    })
    .await
}

/// Warning events with `reason` about Workload `ns/name`.
async fn warnings(
    client: &Client,
    ns: &str,
    name: &str,
    reason: &str,
) -> anyhow::Result<Vec<Event>> {
    Ok(Api::<Event>::namespaced(client.clone(), ns)
        .list(&ListParams::default().fields(&format!(
            "involvedObject.name={name},reason={reason},type=Warning"
        )))
        .await?
        .items)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_tenant_cannot_take_another_tenants_host() -> anyhow::Result<()> {
    let env = TestEnv::start().await?;
    busybox_image()?;
    let client = env.client();
    let run = std::process::id();
    let names: Vec<String> = ["a", "b"].iter().map(|s| format!("hh-{run}-{s}")).collect();
    let nodes: Vec<String> = names.iter().map(|n| node_name(n)).collect();
    let sweeper = ContainerSweeper::new(&env, &nodes);
    let operator = OperatorProcess::start(&env, &["--identity", "e2e-hostile-hosts"]).await?;
    let mut edges = Vec::new();
    for n in &names {
        edges.push(EdgeProcess::start(&env, &operator, n, &[])?);
    }
    wait_providers_ready(&client, &operator, &names).await?;
    let port = operator.gateway_port;

    let grant = format!("{SHOP},*.other-hosts.test");
    env.kubectl_stdin(&["apply", "-f", "-"], &namespace("team-a", &grant))?;
    env.kubectl_stdin(&["apply", "-f", "-"], &namespace("team-b", &grant))?;

    let result = async {
        the_older_claimant_serves_and_the_other_is_refused(&env, &client, port).await?;
        the_owner_without_replicas_answers_503_never_the_other(&client, port).await?;
        the_next_claimant_takes_over_when_the_owner_goes(&env, &client, port).await?;
        hosts_a_namespace_was_not_given_are_refused(&env, &client, port).await?;
        anyhow::Ok(())
    }
    .await;
    if result.is_err() {
        eprintln!("operator log:\n{}", operator.child.log_tail(60));
    }
    for (ns, name) in [
        ("team-a", "shop"),
        ("team-b", "shop"),
        ("team-a", "squat"),
        ("team-a", "free"),
    ] {
        let _ = env.kubectl(&["delete", "wl", "-n", ns, name, "--wait=false"]);
    }
    drop(edges);
    sweeper.sweep();
    result?;
    // The operator runs with the chart's RBAC: reading Namespaces (host grants) must be granted.
    operator.ensure_clean()
}

/// A (team-a, created first) owns the host; B (team-b) is refused with the owner's namespace
/// named, one Warning event and no URL; the gateway sends the host only to A's app.
async fn the_older_claimant_serves_and_the_other_is_refused(
    env: &TestEnv,
    client: &Client,
    port: u16,
) -> anyhow::Result<()> {
    env.kubectl_stdin(
        &["apply", "-f", "-"],
        &workload("team-a", "shop", SHOP, "app A"),
    )?;
    // Creation times have a resolution of one second: B is created strictly later.
    tokio::time::sleep(Duration::from_millis(1100)).await;
    env.kubectl_stdin(
        &["apply", "-f", "-"],
        &workload("team-b", "shop", SHOP, "app B"),
    )?;

    let (_, url) = wait_host(client, "team-a", "shop", "True", "HostAccepted").await?;
    ensure!(
        url.as_deref().is_some_and(|u| u.contains(SHOP)),
        "owner url {url:?}"
    );
    let (message, url) = wait_host(client, "team-b", "shop", "False", "HostConflict").await?;
    ensure!(
        message == format!("host {SHOP} is already served by a Workload in namespace team-a"),
        "conflict message {message:?}"
    );
    ensure!(url.is_none(), "a refused claimant shows no URL: {url:?}");
    // Both apps run, so a misroute would show.
    wait_ready(client, "team-a", "shop").await?;
    wait_ready(client, "team-b", "shop").await?;

    let events = eventually(Duration::from_secs(10), || async {
        let events = warnings(client, "team-b", "shop", "HostConflict").await?;
        ensure!(!events.is_empty(), "no HostConflict Warning event yet");
        Ok(events)
    })
    .await?;
    for _ in 0..10 {
        let (code, body) = http_get_host(port, SHOP, "/").await?;
        ensure!(
            code == 200 && body.trim() == "app A",
            "{SHOP} answered {code} {body:?}"
        );
    }
    // B was reconciled many times meanwhile (its pod started, became ready): still one event.
    let again = warnings(client, "team-b", "shop", "HostConflict").await?;
    ensure!(
        events.len() == 1 && again.len() == 1 && again[0].count.unwrap_or(0) <= 1,
        "one Warning per transition, got {:?}",
        again
            .iter()
            .map(|e| (e.name_any(), e.count))
            .collect::<Vec<_>>()
    );
    println!("{SHOP}: team-a serves, team-b refused ({message}); 10/10 requests reached app A");
    Ok(())
}

/// With A scaled to 0 the host answers 503 (A has no ready replica), never B's app.
async fn the_owner_without_replicas_answers_503_never_the_other(
    client: &Client,
    port: u16,
) -> anyhow::Result<()> {
    Api::<Workload>::namespaced(client.clone(), "team-a")
        .patch(
            "shop",
            &PatchParams::default(),
            &Patch::Merge(serde_json::json!({"spec": {"replicas": 0}})),
        )
        .await?;
    eventually(Duration::from_secs(30), || async {
        let (code, body) = http_get_host(port, SHOP, "/").await?;
        ensure!(code == 503, "{SHOP} answered {code} {body:?}");
        Ok(())
    })
    .await?;
    for _ in 0..10 {
        let (code, body) = http_get_host(port, SHOP, "/").await?;
        ensure!(
            code == 503 && !body.contains("app B") && body.contains("no ready replica"),
            "{SHOP} while its owner has no replica: {code} {body:?}"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let (cond, url) = host_state(client, "team-b", "shop").await?;
    ensure!(
        url.is_none() && cond.as_ref().is_some_and(|c| c.1 == "HostConflict"),
        "B still refused while A exists: {cond:?} {url:?}"
    );
    println!("{SHOP}: 503 while the owner has no ready replica; team-b's app never answered");
    Ok(())
}

/// Deleting A hands the host to B within seconds: B shows the URL and serves it.
async fn the_next_claimant_takes_over_when_the_owner_goes(
    env: &TestEnv,
    client: &Client,
    port: u16,
) -> anyhow::Result<()> {
    env.kubectl(&["delete", "wl", "-n", "team-a", "shop", "--wait=false"])?;
    let started = std::time::Instant::now();
    let (_, url) = eventually(Duration::from_secs(10), || async {
        let (cond, url) = host_state(client, "team-b", "shop").await?;
        match cond {
            Some((s, _, m)) if s == "True" && url.is_some() => Ok((m, url)),
            other => bail!("team-b/shop: HostAccepted {other:?}, url {url:?}"),
        }
    })
    .await
    .context("B takes over once A is deleted")?;
    ensure!(
        url.as_deref().is_some_and(|u| u.contains(SHOP)),
        "url {url:?}"
    );
    eventually(Duration::from_secs(10), || async {
        let (code, body) = http_get_host(port, SHOP, "/").await?;
        ensure!(
            code == 200 && body.trim() == "app B",
            "{SHOP} answered {code} {body:?}"
        );
        Ok(())
    })
    .await?;
    println!(
        "{SHOP}: team-b took over {:?} after team-a's Workload was deleted",
        started.elapsed()
    );
    Ok(())
}

/// A host in team-b's zone claimed from team-a, and a custom host team-a was not granted:
/// `HostNotAllowed`, no URL, not routed (404) although the apps are ready.
async fn hosts_a_namespace_was_not_given_are_refused(
    env: &TestEnv,
    client: &Client,
    port: u16,
) -> anyhow::Result<()> {
    env.kubectl_stdin(
        &["apply", "-f", "-"],
        &workload("team-a", "squat", TEAM_B_ZONE, "squatter"),
    )?;
    env.kubectl_stdin(
        &["apply", "-f", "-"],
        &workload("team-a", "free", UNGRANTED, "not granted"),
    )?;
    for (name, host) in [("squat", TEAM_B_ZONE), ("free", UNGRANTED)] {
        let (message, url) = wait_host(client, "team-a", name, "False", "HostNotAllowed").await?;
        ensure!(
            url.is_none(),
            "{name}: a refused host shows no URL: {url:?}"
        );
        ensure!(message.contains(host), "{name}: {message:?}");
        wait_ready(client, "team-a", name).await?;
        eventually(Duration::from_secs(10), || async {
            ensure!(
                !warnings(client, "team-a", name, "HostNotAllowed")
                    .await?
                    .is_empty(),
                "{name}: no HostNotAllowed Warning event"
            );
            Ok(())
        })
        .await?;
        for _ in 0..5 {
            let (code, body) = http_get_host(port, host, "/").await?;
            ensure!(
                code == 404 && !body.contains("squatter") && !body.contains("not granted"),
                "{host} answered {code} {body:?}"
            );
        }
        println!("{host}: refused to team-a/{name} ({message}); not routed");
    }
    Ok(())
}
