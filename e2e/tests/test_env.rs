//! The test environment is as in production: each edge runs on a Docker engine of its own
//! (the environment's `dockerd`, its own socket, data root and address pool) and pulls the
//! test image from a real registry on loopback, so an image one edge pulled is not on another
//! edge's engine. A registry behind htpasswd refuses an anonymous pull: the pod waits with
//! `ErrImagePull`/`ImagePullBackOff` and the registry's own refusal. An edge restarted under
//! the same name finds its engine and its running container again. A pod naming a
//! `kubernetes.io/dockerconfigjson` Secret in `imagePullSecrets` pulls from it; a wrong password
//! is refused by the registry, and the credential stays out of the edge's state and log.
//!
//! Needs root (dockerd, iptables), Debian's docker-registry and apache2-utils, and
//! `cargo build --workspace --bins`.

use std::time::Duration;

use anyhow::{Context as _, ensure};
use decloud_e2e::cluster::{
    ContainerSweeper, EdgeProcess, OperatorProcess, busybox_image, container_id, pod_ready,
    wait_providers_ready,
};
use decloud_e2e::{TestEnv, eventually};
use k8s_openapi::api::core::v1::Pod;
use kube::api::{Api, PostParams};
use serde_json::json;

const NS: &str = "default";

fn bound_pod(name: &str, node: &str, image: &str) -> anyhow::Result<Pod> {
    Ok(serde_json::from_value(json!({
        "apiVersion": "v1", "kind": "Pod",
        "metadata": {"name": name, "namespace": NS},
        "spec": {
            "nodeName": node,
            "terminationGracePeriodSeconds": 1,
            "tolerations": [{"operator": "Exists"}],
            "containers": [{"name": "main", "image": image,
                "command": ["sleep", "3600"],
                "resources": {"requests": {"cpu": "10m", "memory": "8Mi"}}}],
        }
    }))?)
}

/// The reason and message of pod `name`'s container waiting on a failed pull
/// (`ErrImagePull` or `ImagePullBackOff`).
async fn pull_refused(pods: &Api<Pod>, name: &str) -> anyhow::Result<(String, String)> {
    let w = pods
        .get(name)
        .await?
        .status
        .and_then(|s| s.container_statuses)
        .and_then(|c| c.first().cloned())
        .and_then(|c| c.state)
        .and_then(|s| s.waiting)
        .context("not waiting")?;
    let reason = w.reason.unwrap_or_default();
    ensure!(
        reason == "ErrImagePull" || reason == "ImagePullBackOff",
        "reason {reason}"
    );
    Ok((reason, w.message.unwrap_or_default()))
}

/// The image references an engine holds.
fn images_of(edge: &EdgeProcess) -> anyhow::Result<Vec<String>> {
    Ok(edge
        .docker(&["images", "--format", "{{.Repository}}:{{.Tag}}"])?
        .lines()
        .map(str::to_string)
        .collect())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn edges_have_their_own_engines_and_pull_from_real_registries() -> anyhow::Result<()> {
    let env = TestEnv::start().await?;
    let client = env.client();
    let image = busybox_image()?;
    ensure!(
        image.starts_with("127.0.0.1:") && image.ends_with("/decloud-test/busybox:1"),
        "the test image is not a registry reference: {image}"
    );
    let operator = OperatorProcess::start(&env, &["--heartbeat-interval", "1s"]).await?;
    let run = std::process::id();
    let (a, b) = (format!("tenv-{run}-a"), format!("tenv-{run}-b"));
    let mut edge_a = EdgeProcess::start(&env, &operator, &a, &[])?;
    let edge_b = EdgeProcess::start(&env, &operator, &b, &[])?;
    let (node_a, node_b) = (edge_a.node(), edge_b.node());
    let _sweeper = ContainerSweeper::new(&env, &[node_a.clone(), node_b.clone()]);
    wait_providers_ready(&client, &operator, &[&a, &b]).await?;

    // Two engines: distinct sockets, data roots and address pools, none the host's.
    let (ea, eb) = (edge_a.engine()?, edge_b.engine()?);
    ensure!(ea.socket() != eb.socket(), "one socket for two edges");
    ensure!(ea.pool_range() != eb.pool_range(), "one pool for two edges");
    for e in [ea, eb] {
        let root = e.docker(&["info", "--format", "{{.DockerRootDir}}"])?;
        ensure!(
            root == e.data_root().to_string_lossy(),
            "{}: engine root {root}",
            e.provider()
        );
        ensure!(
            root != "/var/lib/docker",
            "an edge runs on the host's engine"
        );
    }
    // Nothing pulled yet: the fresh engines hold no image at all.
    ensure!(images_of(&edge_a)?.is_empty(), "{:?}", images_of(&edge_a)?);

    let pods: Api<Pod> = Api::namespaced(client.clone(), NS);
    pods.create(
        &PostParams::default(),
        &bound_pod("pulled", &node_a, &image)?,
    )
    .await?;
    let pod = eventually(Duration::from_secs(90), || async {
        let p = pods.get("pulled").await?;
        ensure!(pod_ready(&p), "not ready: {:?}", p.status);
        Ok(p)
    })
    .await
    .with_context(|| format!("edge a log:\n{}", edge_a.child.log_tail(30)))?;
    // The image was really pulled, into a's engine only.
    ensure!(
        images_of(&edge_a)?.contains(&image),
        "{:?}",
        images_of(&edge_a)?
    );
    ensure!(
        !images_of(&edge_b)?.contains(&image),
        "b's engine has a's image"
    );
    let id = container_id(&pod)?;
    ensure!(
        edge_b.docker(&["inspect", &id]).is_err(),
        "b's engine sees a's container"
    );
    let network = edge_a.docker(&[
        "network",
        "inspect",
        "decloud",
        "-f",
        "{{(index .IPAM.Config 0).Subnet}}",
    ])?;
    println!(
        "edge a: network decloud {network}, engine pool {}",
        ea.pool()
    );
    ensure!(
        network.starts_with(&ea.pool_range()[..ea.pool_range().rfind('.').unwrap_or(0)]),
        "the edge's network {network} is not from its engine's pool {}",
        ea.pool_range()
    );

    // A private registry refuses the anonymous pull: a real auth failure, reported as such.
    let private = env.private_registry()?;
    pods.create(
        &PostParams::default(),
        &bound_pod("anonymous", &node_a, &private.image)?,
    )
    .await?;
    let (reason, message) =
        eventually(Duration::from_secs(60), || pull_refused(&pods, "anonymous"))
            .await
            .with_context(|| format!("edge a log:\n{}", edge_a.child.log_tail(30)))?;
    println!("anonymous pull from {}: {reason}: {message}", private.host);
    let lower = message.to_lowercase();
    ensure!(
        lower.contains("unauthorized")
            || lower.contains("authentication required")
            || lower.contains("no basic auth credentials"),
        "not an auth failure: {message}"
    );
    ensure!(
        !images_of(&edge_a)?.contains(&private.image),
        "pulled without credentials"
    );
    // With the credentials the same image pulls (the fixture works), and only with them.
    let config = env.dir().join("docker-config");
    std::fs::create_dir_all(&config)?;
    let cli = |args: &[&str], stdin: &str| -> anyhow::Result<bool> {
        use std::io::Write as _;
        let mut child = ea
            .command()
            .env("DOCKER_CONFIG", &config)
            .args(args)
            .stdin(std::process::Stdio::piped())
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()?;
        child
            .stdin
            .take()
            .context("stdin")?
            .write_all(stdin.as_bytes())?;
        Ok(child.wait()?.success())
    };
    ensure!(
        !cli(&["pull", "-q", &private.image], "")?,
        "an anonymous CLI pull from the private registry worked"
    );
    ensure!(
        cli(
            &[
                "login",
                "-u",
                &private.user,
                "--password-stdin",
                &private.host
            ],
            &private.password
        )?,
        "docker login to the private registry failed"
    );
    ensure!(
        cli(&["pull", "-q", &private.image], "")?,
        "a pull with the credentials failed"
    );
    ea.docker(&["rmi", &private.image])?;
    ensure!(
        !images_of(&edge_a)?.contains(&private.image),
        "the private image is still on edge a's engine"
    );

    // imagePullSecrets: the pod's dockerconfigjson Secret lets the edge pull it; a wrong
    // password is the registry's refusal again. The credential reaches only this pod's edge,
    // in memory: it is in neither the edge's state folder nor its log.
    // As a user makes one: `kubectl create secret docker-registry`.
    for (name, password) in [
        ("regcred", private.password.as_str()),
        ("badcred", "not-the-password"),
    ] {
        env.kubectl(&[
            "create",
            "secret",
            "docker-registry",
            name,
            "-n",
            NS,
            &format!("--docker-server={}", private.host),
            &format!("--docker-username={}", private.user),
            &format!("--docker-password={password}"),
        ])?;
    }
    let with_secret = |pod: &str, secret: &str| -> anyhow::Result<Pod> {
        let mut p = serde_json::to_value(bound_pod(pod, &node_a, &private.image)?)?;
        p["spec"]["imagePullSecrets"] = json!([{"name": secret}]);
        Ok(serde_json::from_value(p)?)
    };
    // The wrong password first (the image is on no engine yet): the registry refuses it.
    pods.create(
        &PostParams::default(),
        &with_secret("bad-secret", "badcred")?,
    )
    .await?;
    let (_, bad) = eventually(Duration::from_secs(60), || {
        pull_refused(&pods, "bad-secret")
    })
    .await?;
    println!("a wrong password: {bad}");
    // The engine words a refused credential as it does a missing one.
    let lower = bad.to_lowercase();
    ensure!(
        lower.contains("unauthorized")
            || lower.contains("authentication required")
            || lower.contains("no basic auth credentials"),
        "a wrong password is not an auth failure: {bad}"
    );
    pods.delete("bad-secret", &Default::default()).await?;
    ensure!(
        !images_of(&edge_a)?.contains(&private.image),
        "pulled with a wrong password"
    );
    // The right one: the edge pulls it (nothing else put it there).
    pods.create(
        &PostParams::default(),
        &with_secret("with-secret", "regcred")?,
    )
    .await?;
    eventually(Duration::from_secs(90), || async {
        let p = pods.get("with-secret").await?;
        ensure!(
            pod_ready(&p),
            "not ready: {:?}",
            p.status.and_then(|s| s.container_statuses)
        );
        Ok(())
    })
    .await
    .with_context(|| format!("edge a log:\n{}", edge_a.child.log_tail(30)))?;
    ensure!(
        images_of(&edge_a)?.contains(&private.image),
        "the private image is not on edge a's engine"
    );
    let log = std::fs::read_to_string(edge_a.log()).unwrap_or_default();
    ensure!(
        !log.contains(&private.password),
        "the registry password is in the edge's log"
    );
    for entry in walk(&edge_a.state_dir) {
        let bytes = std::fs::read(&entry).unwrap_or_default();
        ensure!(
            !String::from_utf8_lossy(&bytes).contains(&private.password),
            "the registry password is in {}",
            entry.display()
        );
    }
    pods.delete("with-secret", &Default::default()).await?;

    // Restarted under its name, edge a finds its engine and the same running container.
    let started = ea.docker(&["inspect", "-f", "{{.State.StartedAt}}", &id])?;
    let engine_pid = ea.pid();
    edge_a.child.kill();
    drop(edge_a);
    let edge_a = EdgeProcess::start(&env, &operator, &a, &[])?;
    wait_providers_ready(&client, &operator, &[&a]).await?;
    let ea = edge_a.engine()?;
    ensure!(
        ea.pid() == engine_pid,
        "a new engine after the edge restart"
    );
    ensure!(
        ea.docker(&["inspect", "-f", "{{.State.StartedAt}}", &id])? == started,
        "the container was restarted or replaced"
    );
    eventually(Duration::from_secs(30), || async {
        let p = pods.get("pulled").await?;
        ensure!(pod_ready(&p), "not ready again");
        ensure!(container_id(&p)? == id, "another container");
        Ok(())
    })
    .await?;
    Ok(())
}

/// Every file below `dir`.
fn walk(dir: &std::path::Path) -> Vec<std::path::PathBuf> {
    let mut out = Vec::new();
    let mut todo = vec![dir.to_path_buf()];
    while let Some(d) = todo.pop() {
        for e in std::fs::read_dir(&d).into_iter().flatten().flatten() {
            let path = e.path();
            match e.file_type() {
                Ok(t) if t.is_dir() => todo.push(path),
                Ok(t) if t.is_file() => out.push(path),
                _ => {}
            }
        }
    }
    out
}
