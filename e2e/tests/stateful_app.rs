//! A real stateful app on DeCloud, end to end (issue 16): `examples/apps/guestbook` — Debian's
//! Redis server keeping a guestbook on its replica's persistent volume (`volumeClaimTemplates`),
//! configured from a ConfigMap and a Secret, and a busybox httpd + CGI front end in the same
//! pod — against a real kube-apiserver, the real operator (with the chart's RBAC, its gateway)
//! and two real edge-kubelets, each on a Docker engine of its own and offering `--storage 1Gi`.
//!
//! First the app itself, with `/data` on an emptyDir (what edges ran before persistent
//! volumes): Ready and signed through the gateway, input bounded (413, 400), the Secret in force
//! (redis answers NOAUTH without it) and in no log or command line, a killed redis replays its
//! append-only file. Then the example as it is, on its per-replica volume (`guestbook-0`).
//! Entries written through the gateway are read back through the gateway after each disruption:
//! - the redis container is killed (`docker kill` on the edge's engine): it restarts in the
//!   same pod and replays its append-only file;
//! - the edge-kubelet holding the replica is SIGKILLed and started again;
//! - the operator is SIGKILLed and started again;
//! - the template changes (a rollout): `guestbook-0` is recreated on the SAME provider, which
//!   `status.persistentReplicas` names;
//! - a write past the volume's size fails inside the container with ENOSPC; the container and
//!   the entries are fine, and writes work again once space is freed;
//! - the provider is killed for good: with `onProviderLoss: Wait` the replica waits
//!   (`WaitingForProvider`) and no empty replica starts elsewhere within 3× the failover grace;
//!   the provider comes back and the replica serves its old entries again;
//! - with `onProviderLoss: Recreate`, a second Workload is recreated on the other provider
//!   (with an empty volume) after the grace.
//!
//! Needs root (the edges' egress rules and loop-mounted volumes), `cargo build --workspace
//! --bins` and the redis image (`e2e/images/redis-image.sh`: debootstrap, cached; built here
//! when missing). Without debootstrap it is skipped with a message, except under `CI=true`,
//! where a missing prerequisite fails the suite.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use anyhow::{Context as _, bail, ensure};
use decloud_crds::Workload;
use decloud_crds::contracts::{container_labels, node_name, provider_of_node};
use decloud_crds::persistence::{PersistentReplica, claim_name, replica_pod_name};
use decloud_e2e::cluster::{
    ContainerSweeper, EdgeProcess, OperatorProcess, containers_with_label, http_get_reply,
    http_post_reply, node_of, pod_ready, redis_image, running_containers, wait_providers_ready,
    workload_pods,
};
use decloud_e2e::{TestEnv, eventually, free_port, repo_root};
use k8s_openapi::api::core::v1::Pod;
use kube::api::{Api, DeleteParams};
use kube::{Client, ResourceExt};

const NS: &str = "default";
/// The example, as a user applies it (its image renamed to the registry's copy).
const EXAMPLE: &str = "examples/apps/guestbook/guestbook.yaml";
/// The example's Workload (`onProviderLoss: Wait`).
const APP: &str = "guestbook";
/// The same app with `onProviderLoss: Recreate`.
const ELSEWHERE: &str = "guestbook-elsewhere";
/// The same app with `/data` on an emptyDir (no claim): the app itself, on what edges run today.
const SCRATCH: &str = "guestbook-scratch";
/// The Secret the example reads its password from.
const SECRET: &str = "guestbook-redis";
/// The example's `failover.graceSeconds`.
const GRACE: Duration = Duration::from_secs(5);
/// The example's volume size (`volumeClaimTemplates[0]`: 64Mi).
const VOLUME_BYTES: u64 = 64 << 20;
/// What each provider offers.
const STORAGE_OFFER: &str = "1Gi";
/// The first start: two engines pull the 90 MB image from the loopback registry.
const FIRST_READY_WITHIN: Duration = Duration::from_secs(180);
/// Serving again after a disruption.
const BACK_WITHIN: Duration = Duration::from_secs(90);

fn under_ci() -> bool {
    std::env::var("CI").is_ok_and(|v| v == "true")
}

/// The redis image in the test registry, or `None` (skipped, said why) when it cannot be built
/// here for want of debootstrap, outside CI.
fn redis_image_or_skip() -> anyhow::Result<Option<String>> {
    match redis_image() {
        Ok(image) => Ok(Some(image)),
        Err(e) if !under_ci() && which("debootstrap").is_none() => {
            eprintln!(
                "SKIPPED (not under CI): {e:#}\n(apt-get install debootstrap, or \
                 e2e/scripts/install-prereqs.sh)"
            );
            Ok(None)
        }
        Err(e) => Err(e),
    }
}

fn which(tool: &str) -> Option<std::path::PathBuf> {
    std::env::var_os("PATH")?
        .to_str()?
        .split(':')
        .chain(["/usr/sbin", "/sbin"])
        .map(|d| std::path::Path::new(d).join(tool))
        .find(|p| p.is_file())
}

fn host(app: &str) -> String {
    format!("{app}.{NS}.decloud.localhost")
}

/// The example's documents, its image replaced by `image`: (ConfigMap, Workload).
fn example(image: &str) -> anyhow::Result<(String, String)> {
    let path = repo_root().join(EXAMPLE);
    let text = std::fs::read_to_string(&path).with_context(|| format!("{}", path.display()))?;
    ensure!(
        text.contains("image: decloud-test/redis:7"),
        "{EXAMPLE} no longer names decloud-test/redis:7"
    );
    let text = text.replace("image: decloud-test/redis:7", &format!("image: {image}"));
    let docs: Vec<&str> = text.split("\n---\n").collect();
    let find = |kind: &str| {
        docs.iter()
            .find(|d| d.lines().any(|l| l == format!("kind: {kind}")))
            .map(|d| d.to_string())
            .with_context(|| format!("{EXAMPLE} has no {kind}"))
    };
    Ok((find("ConfigMap")?, find("Workload")?))
}

/// The example's Workload renamed `name`, with `onProviderLoss: Recreate`.
fn recreating(workload: &str, name: &str) -> anyhow::Result<String> {
    let meta = format!("metadata:\n  name: {APP}\n  namespace: {NS}\nspec:");
    ensure!(workload.contains(&meta), "the Workload's metadata moved");
    ensure!(
        workload.contains("onProviderLoss: Wait"),
        "the Workload no longer says onProviderLoss: Wait"
    );
    Ok(workload
        .replace(
            &meta,
            &format!("metadata:\n  name: {name}\n  namespace: {NS}\nspec:"),
        )
        .replace("onProviderLoss: Wait", "onProviderLoss: Recreate"))
}

/// The example's Workload renamed `name`, with `/data` an emptyDir instead of the claim.
fn on_scratch_space(workload: &str, name: &str) -> anyhow::Result<String> {
    let meta = format!("metadata:\n  name: {APP}\n  namespace: {NS}\nspec:");
    let (claims, expose) = (
        workload.find("\n  volumeClaimTemplates:"),
        workload.find("\n  expose:"),
    );
    let (Some(claims), Some(expose)) = (claims, expose) else {
        bail!("the Workload's volumeClaimTemplates or expose moved");
    };
    ensure!(
        workload.contains(&meta) && workload.contains("\n      volumes:\n") && claims < expose,
        "the Workload's layout changed"
    );
    let without = format!("{}{}", &workload[..claims], &workload[expose..]);
    Ok(without
        .replace(
            &meta,
            &format!("metadata:\n  name: {name}\n  namespace: {NS}\nspec:"),
        )
        .replace(
            "\n      volumes:\n",
            "\n      volumes:\n        - {name: data, emptyDir: {sizeLimit: 64Mi}}\n",
        ))
}

/// Whether `app` has per-replica volumes (its pod is `<app>-0`).
fn stateful(app: &str) -> bool {
    app != SCRATCH
}

/// A password for this run (hex; never printed).
fn password() -> String {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_nanos())
        .unwrap_or_default();
    format!("gb-{:x}-{:x}", std::process::id(), nanos)
}

/// The cluster, the operator (gateway on `port`), the two edges, and the clock of the steps.
struct Scene {
    /// Provider name → its running edge (absent while killed).
    edges: BTreeMap<String, EdgeProcess>,
    operator: OperatorProcess,
    operator_args: Vec<String>,
    client: Client,
    port: u16,
    names: Vec<String>,
    started: Instant,
    sweeper: ContainerSweeper,
    env: TestEnv,
}

impl Scene {
    async fn start() -> anyhow::Result<Self> {
        let started = Instant::now();
        let env = TestEnv::start().await?;
        let port = free_port()?;
        let run = std::process::id();
        let names: Vec<String> = ["a", "b"].map(|s| format!("gb-{run}-{s}")).into();
        let nodes: Vec<String> = names.iter().map(|n| node_name(n)).collect();
        let sweeper = ContainerSweeper::new(&env, &nodes);
        let operator_args: Vec<String> = [
            "--gateway-listen",
            &format!("127.0.0.1:{port}"),
            "--url-template",
            &format!("http://{{host}}:{port}"),
            "--identity",
            "e2e-stateful",
            "--heartbeat-interval",
            "1s",
        ]
        .map(String::from)
        .into();
        let args: Vec<&str> = operator_args.iter().map(String::as_str).collect();
        let operator = OperatorProcess::start(&env, &args).await?;
        let mut scene = Self {
            edges: BTreeMap::new(),
            operator,
            operator_args,
            client: env.client(),
            port,
            names,
            started,
            sweeper,
            env,
        };
        for name in scene.names.clone() {
            scene.start_edge(&name)?;
        }
        wait_providers_ready(&scene.client, &scene.operator, &scene.names).await?;
        Ok(scene)
    }

    /// Prints one step, with the time since the start.
    fn step(&self, what: &str) {
        println!("[{:>6.1}s] {what}", self.started.elapsed().as_secs_f64());
    }

    /// Starts (or starts again, same state folder and engine) the edge of provider `name`.
    fn start_edge(&mut self, name: &str) -> anyhow::Result<()> {
        let edge = EdgeProcess::start_args(
            &self.env,
            &self.operator,
            name,
            &[],
            &["--storage", STORAGE_OFFER],
        )?;
        self.edges.insert(name.to_string(), edge);
        Ok(())
    }

    /// SIGKILLs the edge of provider `name` (a crash, as the operator sees it).
    fn kill_edge(&mut self, name: &str) -> anyhow::Result<()> {
        let mut edge = self
            .edges
            .remove(name)
            .with_context(|| format!("edge {name} is not running"))?;
        edge.child.kill();
        Ok(())
    }

    /// The other provider.
    fn other(&self, name: &str) -> String {
        self.names
            .iter()
            .find(|n| *n != name)
            .cloned()
            .unwrap_or_default()
    }

    fn apply(&self, yaml: &str) -> anyhow::Result<String> {
        self.env.kubectl_stdin(&["apply", "-f", "-"], yaml)
    }

    async fn workload(&self, name: &str) -> anyhow::Result<Workload> {
        Ok(Api::<Workload>::namespaced(self.client.clone(), NS)
            .get(name)
            .await?)
    }

    /// `status.persistentReplicas` of Workload `name`.
    async fn persistent_replicas(&self, name: &str) -> anyhow::Result<Vec<PersistentReplica>> {
        Ok(self
            .workload(name)
            .await?
            .status
            .map(|s| s.persistent_replicas)
            .unwrap_or_default())
    }

    /// Waits until replica 0 of `app` is `state` on `provider` in `status.persistentReplicas`.
    async fn wait_replica_state(
        &self,
        app: &str,
        provider: &str,
        state: &str,
        within: Duration,
    ) -> anyhow::Result<PersistentReplica> {
        let pod = replica_pod_name(app, 0);
        eventually(within, || async {
            let replicas = self.persistent_replicas(app).await?;
            let r = replicas.iter().find(|r| r.name == pod).with_context(|| {
                format!("{app}: no persistentReplicas entry {pod}: {replicas:?}")
            })?;
            ensure!(
                r.provider == provider && r.state == state,
                "{app}: {pod} is {:?} on {:?} ({}), want {state} on {provider}",
                r.state,
                r.provider,
                r.message
            );
            Ok(r.clone())
        })
        .await
        .with_context(|| format!("operator log:\n{}", self.operator.child.log_tail(30)))
    }

    /// The one replica of `app` (`<app>-0` when it is stateful), Ready: the pod.
    async fn ready_replica(&self, app: &str) -> anyhow::Result<Pod> {
        let want = replica_pod_name(app, 0);
        let pods = workload_pods(&self.client, NS, app).await?;
        let names: Vec<String> = pods.iter().map(|p| p.name_any()).collect();
        ensure!(pods.len() == 1, "{app}: pods {names:?}, want one ({want})");
        let pod = pods.into_iter().next().context("no pod")?;
        ensure!(
            !stateful(app) || pod.name_any() == want,
            "{app}: pod {names:?}, want {want}"
        );
        ensure!(
            pod_ready(&pod),
            "{} not ready: {:?}",
            pod.name_any(),
            pod.status
        );
        Ok(pod)
    }

    /// The provider running replica 0 of `app`.
    async fn holder(&self, app: &str) -> anyhow::Result<String> {
        let pod = self.ready_replica(app).await?;
        provider_of_node(&node_of(&pod))
            .map(str::to_string)
            .with_context(|| format!("{} is on no edge node", pod.name_any()))
    }

    /// The guestbook's entries, through the gateway.
    async fn entries(&self, app: &str) -> anyhow::Result<Vec<String>> {
        let r = http_get_reply(
            self.port,
            &host(app),
            "/cgi-bin/entries",
            Duration::from_secs(10),
        )
        .await?;
        ensure!(
            r.code == 200,
            "GET /cgi-bin/entries: {} {}",
            r.code,
            r.text().trim()
        );
        Ok(r.text().lines().map(str::to_string).collect())
    }

    /// Signs the guestbook through the gateway.
    async fn sign(&self, app: &str, entry: &str) -> anyhow::Result<()> {
        let r = http_post_reply(
            self.port,
            &host(app),
            "/cgi-bin/entries",
            entry.as_bytes(),
            Duration::from_secs(10),
        )
        .await?;
        ensure!(
            r.code == 201,
            "POST /cgi-bin/entries {entry:?}: {} {}",
            r.code,
            r.text().trim()
        );
        Ok(())
    }

    /// `app` serves exactly `want` through the gateway, from a Ready `<app>-0`: that pod.
    async fn check_entries(&self, app: &str, want: &[String]) -> anyhow::Result<Pod> {
        let pod = self.ready_replica(app).await?;
        let got = self.entries(app).await?;
        ensure!(got == want, "{app} serves {got:?}, want {want:?}");
        Ok(pod)
    }

    /// Waits until [`Scene::check_entries`] passes.
    async fn wait_entries(
        &self,
        app: &str,
        want: &[String],
        within: Duration,
    ) -> anyhow::Result<Pod> {
        eventually(within, || self.check_entries(app, want))
            .await
            .with_context(|| self.logs())
    }

    /// The tails of the operator's and the edges' logs, for failure messages.
    fn logs(&self) -> String {
        let mut out = format!("operator log:\n{}", self.operator.child.log_tail(25));
        for (name, edge) in &self.edges {
            out.push_str(&format!(
                "\n--- edge {name} log ---\n{}",
                edge.child.log_tail(15)
            ));
        }
        out
    }

    /// `kubectl exec` in container `container` of `pod`: its output (the command must exit 0).
    fn exec(&self, pod: &str, container: &str, script: &str) -> anyhow::Result<String> {
        self.env
            .kubectl(&["exec", pod, "-c", container, "--", "sh", "-c", script])
            .map(|s| s.trim_end().to_string())
    }

    /// The id of the running container `container` of `pod` on its provider's engine.
    fn container_of(&self, pod: &Pod, container: &str) -> anyhow::Result<String> {
        let engine = self.env.engine_of_node(&node_of(pod))?;
        let uid = pod.uid().context("pod without uid")?;
        let ids = running_containers(&engine, &uid, container)?;
        ensure!(
            ids.len() == 1,
            "running {container} containers of {}: {ids:?}",
            pod.name_any()
        );
        Ok(ids[0].to_string())
    }

    /// The restart count `pod`'s status gives container `container`.
    fn restarts(pod: &Pod, container: &str) -> anyhow::Result<i32> {
        pod.status
            .as_ref()
            .and_then(|s| s.container_statuses.as_ref())
            .and_then(|cs| cs.iter().find(|c| c.name == container))
            .map(|c| c.restart_count)
            .with_context(|| format!("{}: no status of container {container}", pod.name_any()))
    }

    /// The persistent volumes of the Workload with uid `uid` on provider `name`'s disk (folders
    /// of its edge's `<state-dir>/persistent-volumes`).
    fn volumes_on(&self, name: &str, uid: &str) -> anyhow::Result<Vec<String>> {
        let edge = self
            .edges
            .get(name)
            .with_context(|| format!("edge {name} is not running"))?;
        let dir = edge.state_dir.join("persistent-volumes");
        let mut ids: Vec<String> = match std::fs::read_dir(&dir) {
            Ok(entries) => entries
                .flatten()
                .map(|e| e.file_name().to_string_lossy().into_owned())
                .filter(|id| id.starts_with(uid))
                .collect(),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Vec::new(),
            Err(e) => return Err(e).with_context(|| format!("{}", dir.display())),
        };
        ids.sort();
        Ok(ids)
    }

    /// `kubectl get wl` as a user sees it.
    fn show_workloads(&self) -> anyhow::Result<()> {
        println!(
            "{}",
            self.env.kubectl(&["get", "wl", "-o", "wide"])?.trim_end()
        );
        Ok(())
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_guestbook_keeps_its_entries_through_every_disruption() -> anyhow::Result<()> {
    let Some(image) = redis_image_or_skip()? else {
        return Ok(());
    };
    let mut s = Scene::start().await?;
    s.step(&format!(
        "control plane, operator (gateway on {}) and two edges offering {STORAGE_OFFER} of storage ready; image {image}",
        s.port
    ));
    let (config, workload) = example(&image)?;
    let secret = password();

    configure(&s, &config, &secret)?;
    the_app_runs_on_scratch_space(&s, &workload, &secret).await?;
    the_example_is_accepted(&s, &workload).await?;
    let mut written = first_entries(&s).await?;
    let holder = s.holder(APP).await?;
    s.step(&format!("{APP}-0 runs on provider {holder}"));

    a_killed_redis_replays_its_data(&s, APP, &written).await?;
    a_restarted_edge_keeps_the_data(&mut s, &holder, &written).await?;
    a_restarted_operator_keeps_the_data(&mut s, &written).await?;
    a_rollout_stays_on_the_provider(&s, &holder, &written).await?;
    a_full_volume_fails_writes_only(&s, &mut written).await?;
    a_lost_provider_is_waited_for(&mut s, &holder, &written).await?;
    recreate_starts_elsewhere(&mut s, &workload).await?;
    clean_up(&mut s, &secret).await
}

/// The example's ConfigMap, and the Secret with the run's password.
fn configure(s: &Scene, config: &str, secret: &str) -> anyhow::Result<()> {
    s.apply(config)?;
    // As the README says: `kubectl create secret generic`, never a file with the password.
    s.env.kubectl(&[
        "create",
        "secret",
        "generic",
        SECRET,
        "-n",
        NS,
        &format!("--from-literal=password={secret}"),
    ])?;
    s.step(&format!(
        "applied the ConfigMap of {EXAMPLE}, created Secret {SECRET}"
    ));
    Ok(())
}

/// The example's Workload applies, and the API server keeps what the persistence contract
/// says (nothing pruned).
async fn the_example_is_accepted(s: &Scene, workload: &str) -> anyhow::Result<()> {
    let out = s.apply(workload)?;
    s.step(&format!(
        "applied the Workload of {EXAMPLE}: {}",
        out.trim()
    ));
    let wl = s.workload(APP).await?;
    let templates = &wl.spec.volume_claim_templates;
    ensure!(
        templates.len() == 1
            && templates[0].name() == "data"
            && templates[0].size_bytes() == Some(VOLUME_BYTES),
        "the stored Workload's volumeClaimTemplates: {templates:?}"
    );
    let on_loss = wl.spec.persistence.as_ref().map(|p| p.on_provider_loss);
    ensure!(
        on_loss == Some(decloud_crds::persistence::OnProviderLoss::Wait),
        "the stored Workload's persistence: {:?}",
        wl.spec.persistence
    );
    // The volumes exist at their size: the templates cannot change under them.
    let resize = r#"[{"op":"replace","path":"/spec/volumeClaimTemplates/0/spec/resources/requests/storage","value":"128Mi"}]"#;
    match s
        .env
        .kubectl(&["patch", "wl", APP, "-n", NS, "--type=json", "-p", resize])
    {
        Err(e) if format!("{e:#}").contains("cannot be changed once set") => {}
        other => bail!("resizing volumeClaimTemplates: {other:?}, want a refusal"),
    }
    let grace = wl.spec.failover.as_ref().map(|f| f.grace_seconds);
    ensure!(
        grace == Some(GRACE.as_secs() as i64),
        "failover grace {grace:?}, the suite assumes {GRACE:?}"
    );
    s.step(&format!(
        "the API server stored volumeClaimTemplates [data: 64Mi] (claim {} of pod {}), onProviderLoss Wait; a resize is refused",
        claim_name("data", &replica_pod_name(APP, 0)),
        replica_pod_name(APP, 0)
    ));
    Ok(())
}

/// The app itself, with `/data` on an emptyDir: Ready through the gateway, signed and read
/// through the gateway, input bounded, the Secret in force and in no log, a killed redis
/// replays its append-only file (an emptyDir outlives the pod's containers). Then deleted.
async fn the_app_runs_on_scratch_space(
    s: &Scene,
    workload: &str,
    secret: &str,
) -> anyhow::Result<()> {
    s.apply(&on_scratch_space(workload, SCRATCH)?)?;
    s.wait_entries(SCRATCH, &[], FIRST_READY_WITHIN)
        .await
        .context(
            "the guestbook on an emptyDir never served its (empty) list through the gateway",
        )?;
    s.step(&format!(
        "(scratch) {SCRATCH} Ready; GET http://{}/cgi-bin/entries: empty",
        host(SCRATCH)
    ));
    let stored = sign_some(s, SCRATCH).await?;

    // Bounded input: one byte over the limit is refused, nothing is stored.
    let big = "x".repeat(257);
    let r = http_post_reply(
        s.port,
        &host(SCRATCH),
        "/cgi-bin/entries",
        big.as_bytes(),
        Duration::from_secs(10),
    )
    .await?;
    ensure!(
        r.code == 413,
        "a 257-byte entry: {} {}",
        r.code,
        r.text().trim()
    );
    ensure!(
        s.entries(SCRATCH).await? == stored,
        "the refused entry was stored"
    );
    let r = http_post_reply(
        s.port,
        &host(SCRATCH),
        "/cgi-bin/entries",
        b"\n\t\r",
        Duration::from_secs(10),
    )
    .await?;
    ensure!(
        r.code == 400,
        "an entry of control characters: {} {}",
        r.code,
        r.text().trim()
    );

    // The Secret is in force: redis refuses a client without the password.
    let pod = s.ready_replica(SCRATCH).await?.name_any();
    let anonymous = s.exec(&pod, "web", "REDISCLI_AUTH= redis-cli PING 2>&1 || true")?;
    ensure!(
        anonymous.contains("NOAUTH"),
        "redis without the password: {anonymous:?}"
    );
    let argv = s.exec(&pod, "redis", "cat /proc/1/cmdline | tr '\\0' ' '")?;
    ensure!(
        !argv.contains(secret),
        "the password is on redis-server's command line"
    );
    for (what, log) in [
        (
            "the operator's log",
            s.operator.child.log_path().to_path_buf(),
        ),
        (
            "an edge's log",
            s.edges
                .values()
                .next()
                .context("no edge")?
                .log()
                .to_path_buf(),
        ),
    ] {
        let text = String::from_utf8_lossy(&std::fs::read(&log)?).into_owned();
        ensure!(!text.contains(secret), "the password is in {what}");
    }
    s.step(&format!(
        "(scratch) entries bounded (413, 400); redis answers NOAUTH without the Secret's password, \
         its command line is {argv:?}"
    ));
    a_killed_redis_replays_its_data(s, SCRATCH, &stored).await?;

    Api::<Workload>::namespaced(s.client.clone(), NS)
        .delete(SCRATCH, &DeleteParams::default())
        .await?;
    eventually(Duration::from_secs(60), || async {
        let left = workload_pods(&s.client, NS, SCRATCH).await?;
        ensure!(left.is_empty(), "{SCRATCH}: {} pods left", left.len());
        Ok(())
    })
    .await?;
    s.step(&format!("(scratch) {SCRATCH} deleted"));
    Ok(())
}

/// Signs `app`'s guestbook three times through the gateway and reads it back: the entries as
/// stored (control characters removed).
async fn sign_some(s: &Scene, app: &str) -> anyhow::Result<Vec<String>> {
    let written = [
        "first entry",
        "grüße aus dem Netz",
        "a line with\na newline and a\ttab",
    ];
    for e in written {
        s.sign(app, e).await?;
    }
    let stored: Vec<String> = written
        .iter()
        .map(|e| e.chars().filter(|c| !c.is_control()).collect())
        .collect();
    let got = s.entries(app).await?;
    ensure!(got == stored, "{app} read back {got:?}, want {stored:?}");
    s.step(&format!(
        "signed {} entries of {app} through the gateway, read them back",
        stored.len()
    ));
    Ok(stored)
}

/// The persistent guestbook: Ready through the gateway, then signed: the entries written.
async fn first_entries(s: &Scene) -> anyhow::Result<Vec<String>> {
    s.wait_entries(APP, &[], FIRST_READY_WITHIN)
        .await
        .context("the guestbook on its persistent volume never served its (empty) list")?;
    s.step(&format!(
        "{APP}-0 Ready on its volume; GET http://{}/cgi-bin/entries: empty",
        host(APP)
    ));
    s.show_workloads()?;
    sign_some(s, APP).await
}

/// (a) `docker kill` of `app`'s redis container: it restarts in the same pod, and the entries
/// are back from its append-only file.
async fn a_killed_redis_replays_its_data(
    s: &Scene,
    app: &str,
    written: &[String],
) -> anyhow::Result<()> {
    let pod = s.ready_replica(app).await?;
    let uid = pod.uid().unwrap_or_default();
    let before = Scene::restarts(&pod, "redis")?;
    let id = s.container_of(&pod, "redis")?;
    let engine = s.env.engine_of_node(&node_of(&pod))?;
    engine.docker(&["kill", &id])?;
    s.step(&format!(
        "(a) docker kill of {app}'s redis container {}",
        &id[..12]
    ));
    let pod = eventually(BACK_WITHIN, || async {
        let pod = s.check_entries(app, written).await?;
        let now = Scene::restarts(&pod, "redis")?;
        ensure!(now > before, "redis restartCount {now}, was {before}");
        Ok(pod)
    })
    .await
    .with_context(|| s.logs())?;
    ensure!(
        pod.uid().unwrap_or_default() == uid,
        "the pod was replaced, not its container"
    );
    s.step(&format!(
        "(a) {app}'s redis restarted in the same pod (restartCount {}); all {} entries served",
        Scene::restarts(&pod, "redis")?,
        written.len()
    ));
    Ok(())
}

/// (b) The edge-kubelet holding the replica is SIGKILLed and started again.
async fn a_restarted_edge_keeps_the_data(
    s: &mut Scene,
    holder: &str,
    written: &[String],
) -> anyhow::Result<()> {
    let pod = s.ready_replica(APP).await?;
    s.kill_edge(holder)?;
    s.step(&format!(
        "(b) SIGKILL of edge-kubelet {holder}; starting it again"
    ));
    s.start_edge(holder)?;
    wait_providers_ready(&s.client, &s.operator, &[holder]).await?;
    let after = s.wait_entries(APP, written, BACK_WITHIN).await?;
    ensure!(
        node_of(&after) == node_of(&pod),
        "{APP}-0 moved to {}",
        node_of(&after)
    );
    s.step(&format!(
        "(b) {holder} Ready again; {APP}-0 (pod {}) serves all entries",
        if after.uid() == pod.uid() {
            "kept"
        } else {
            "recreated there"
        }
    ));
    Ok(())
}

/// (c) The operator (and its gateway) is SIGKILLed and started again on the same ports.
async fn a_restarted_operator_keeps_the_data(
    s: &mut Scene,
    written: &[String],
) -> anyhow::Result<()> {
    let pod = s.ready_replica(APP).await?;
    s.operator.child.kill();
    s.step("(c) SIGKILL of the operator; starting it again");
    let args: Vec<&str> = s.operator_args.iter().map(String::as_str).collect();
    let mut next = s.operator.respawn(&s.env, &args)?;
    next.wait_ready().await?;
    let old = std::mem::replace(&mut s.operator, next);
    drop(old);
    wait_providers_ready(&s.client, &s.operator, &s.names).await?;
    let after = s.wait_entries(APP, written, BACK_WITHIN).await?;
    ensure!(
        node_of(&after) == node_of(&pod),
        "{APP}-0 moved to {}",
        node_of(&after)
    );
    s.step("(c) operator back, both edges Ready; all entries served through the new gateway");
    Ok(())
}

/// (d) A template change rolls `guestbook-0`: recreated on the same provider, with its data.
async fn a_rollout_stays_on_the_provider(
    s: &Scene,
    holder: &str,
    written: &[String],
) -> anyhow::Result<()> {
    let before = s.ready_replica(APP).await?;
    let old_uid = before.uid().unwrap_or_default();
    // containers[0] is `web`: a new env var is a new template hash.
    let patch = r#"[{"op":"add","path":"/spec/template/spec/containers/0/env/-","value":{"name":"GUESTBOOK_REVISION","value":"2"}}]"#;
    s.env
        .kubectl(&["patch", "wl", APP, "-n", NS, "--type=json", "-p", patch])?;
    s.step("(d) patched the template (env GUESTBOOK_REVISION=2): a rollout");
    let after = eventually(BACK_WITHIN, || async {
        let pod = s.check_entries(APP, written).await?;
        ensure!(
            pod.uid().unwrap_or_default() != old_uid,
            "{APP}-0 not recreated yet"
        );
        Ok(pod)
    })
    .await
    .with_context(|| s.logs())?;
    ensure!(
        node_of(&after) == node_of(&before),
        "{APP}-0 was recreated on {}, not on {}",
        node_of(&after),
        node_of(&before)
    );
    let replica = s
        .wait_replica_state(APP, holder, "Running", Duration::from_secs(30))
        .await?;
    s.step(&format!(
        "(d) {APP}-0 recreated on {holder} with all entries; status.persistentReplicas: {} on {} ({})",
        replica.name, replica.provider, replica.state
    ));
    s.show_workloads()
}

/// A write past the volume's 64Mi fails inside the container with ENOSPC; redis and the
/// entries are fine, and once the space is freed writes work again.
async fn a_full_volume_fails_writes_only(
    s: &Scene,
    written: &mut Vec<String>,
) -> anyhow::Result<()> {
    let pod_name = replica_pod_name(APP, 0);
    let pod = s.ready_replica(APP).await?;
    let restarts = Scene::restarts(&pod, "redis")?;
    let df = s.exec(&pod_name, "redis", "df -k /data | tail -n 1")?;
    let total_kib: u64 = df
        .split_whitespace()
        .nth(1)
        .and_then(|v| v.parse().ok())
        .with_context(|| format!("df /data: {df:?}"))?;
    ensure!(
        (VOLUME_BYTES / 1024 * 3 / 4..=VOLUME_BYTES / 1024).contains(&total_kib),
        "/data is {total_kib} KiB, the claim is {} KiB: {df}",
        VOLUME_BYTES / 1024
    );
    let dd = s.exec(
        &pod_name,
        "redis",
        "dd if=/dev/zero of=/data/fill bs=1M count=96 2>&1; echo \"exit $?\"",
    )?;
    ensure!(
        dd.contains("No space left on device") && !dd.ends_with("exit 0"),
        "96 MiB into a 64Mi volume: {dd}"
    );
    s.step(&format!(
        "dd of 96 MiB into /data ({total_kib} KiB): {}",
        dd.lines().next().unwrap_or_default()
    ));
    // Reads go on, from the same redis.
    ensure!(
        s.entries(APP).await? == *written,
        "entries changed while the volume was full"
    );
    s.exec(&pod_name, "redis", "rm /data/fill")?;
    let entry = "after the disk was full".to_string();
    // Redis retries its append-only file write within a second of the space coming back.
    eventually(Duration::from_secs(20), || s.sign(APP, &entry)).await?;
    written.push(entry);
    ensure!(
        s.entries(APP).await? == *written,
        "read back after the full disk"
    );
    let pod = s.ready_replica(APP).await?;
    let now = Scene::restarts(&pod, "redis")?;
    ensure!(
        now == restarts,
        "redis restarted ({restarts} → {now}) over a full disk"
    );
    s.step("the full volume failed the write only: redis kept running, entries intact, writes work again");
    Ok(())
}

/// The provider holding the data is killed for good: the replica waits for it
/// (`WaitingForProvider`), and no empty replica starts elsewhere within 3× the grace. It comes
/// back: the replica serves its entries again.
async fn a_lost_provider_is_waited_for(
    s: &mut Scene,
    holder: &str,
    written: &[String],
) -> anyhow::Result<()> {
    let other = s.other(holder);
    s.kill_edge(holder)?;
    let killed = Instant::now();
    s.step(&format!("(Wait) SIGKILL of {holder} for good"));
    let replica = s
        .wait_replica_state(APP, holder, "WaitingForProvider", GRACE * 6)
        .await?;
    s.step(&format!(
        "(Wait) {} is WaitingForProvider on {}: {}",
        replica.name, replica.provider, replica.message
    ));
    s.show_workloads()?;
    let other_node = node_name(&other);
    let other_engine = s.env.engine(&other)?;
    let pod_label = format!(
        "{}={}",
        container_labels::POD_NAME,
        replica_pod_name(APP, 0)
    );
    while killed.elapsed() < GRACE * 3 + Duration::from_secs(2) {
        let elsewhere: Vec<String> = workload_pods(&s.client, NS, APP)
            .await?
            .iter()
            .filter(|p| node_of(p) == other_node)
            .map(|p| p.name_any())
            .collect();
        ensure!(
            elsewhere.is_empty(),
            "an empty replica started on {other}: {elsewhere:?}"
        );
        let containers = containers_with_label(&other_engine, &pod_label)?;
        ensure!(
            containers.is_empty(),
            "{other} runs {APP}-0 containers: {containers:?}"
        );
        let r = s.persistent_replicas(APP).await?;
        ensure!(
            r.iter().all(|r| r.provider == holder),
            "persistentReplicas moved: {r:?}"
        );
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    s.step(&format!(
        "(Wait) {:.0}s after the loss (3× the {GRACE:?} grace): no replica elsewhere, the data waits on {holder}",
        killed.elapsed().as_secs_f64()
    ));
    s.start_edge(holder)?;
    wait_providers_ready(&s.client, &s.operator, &[holder]).await?;
    s.wait_entries(APP, written, BACK_WITHIN).await?;
    s.wait_replica_state(APP, holder, "Running", Duration::from_secs(30))
        .await?;
    s.step(&format!(
        "(Wait) {holder} is back: {APP}-0 serves all {} entries again",
        written.len()
    ));
    Ok(())
}

/// With `onProviderLoss: Recreate`, a replica whose provider is lost starts again on the other
/// provider after the grace, with an empty volume.
async fn recreate_starts_elsewhere(s: &mut Scene, workload: &str) -> anyhow::Result<()> {
    s.apply(&recreating(workload, ELSEWHERE)?)?;
    s.wait_entries(ELSEWHERE, &[], FIRST_READY_WITHIN).await?;
    let entry = "only on the first provider".to_string();
    s.sign(ELSEWHERE, &entry).await?;
    ensure!(s.entries(ELSEWHERE).await? == [entry.clone()], "read back");
    let lost = s.holder(ELSEWHERE).await?;
    let other = s.other(&lost);
    s.step(&format!(
        "(Recreate) {ELSEWHERE}-0 runs on {lost} with one entry; SIGKILL of {lost} for good"
    ));
    s.kill_edge(&lost)?;
    let killed = Instant::now();
    let pod = s
        .wait_entries(ELSEWHERE, &[], GRACE + BACK_WITHIN)
        .await
        .with_context(|| format!("{ELSEWHERE} was not recreated on {other}"))?;
    ensure!(
        node_of(&pod) == node_name(&other),
        "{ELSEWHERE}-0 on {}, want {other}",
        node_of(&pod)
    );
    let elapsed = killed.elapsed();
    ensure!(
        elapsed >= GRACE,
        "recreated {elapsed:?} after the loss, before the {GRACE:?} grace"
    );
    let replica = s
        .wait_replica_state(ELSEWHERE, &other, "Running", Duration::from_secs(30))
        .await?;
    s.step(&format!(
        "(Recreate) {} recreated on {} {:.1}s after the loss, with an empty volume",
        replica.name,
        replica.provider,
        elapsed.as_secs_f64()
    ));
    s.show_workloads()?;
    // Back for the clean-up: its stale copy must not come back to life as a duplicate.
    s.start_edge(&lost)?;
    wait_providers_ready(&s.client, &s.operator, &[&lost]).await?;
    s.wait_entries(ELSEWHERE, &[], BACK_WITHIN).await?;
    // Its stale volume goes with the VolumeSet it gets on connect; the new one stays.
    let uid = s.workload(ELSEWHERE).await?.uid().unwrap_or_default();
    eventually(Duration::from_secs(20), || async {
        let stale = s.volumes_on(&lost, &uid)?;
        ensure!(stale.is_empty(), "{lost} still holds {stale:?}");
        Ok(())
    })
    .await
    .with_context(|| s.logs())?;
    let held = s.volumes_on(&other, &uid)?;
    ensure!(
        held == [format!("{uid}-data-0")],
        "{other} holds {held:?}, want the replica's volume"
    );
    s.step(&format!(
        "(Recreate) {lost} is back and deleted its stale volume; {ELSEWHERE} still one replica, on {other}, which holds {}",
        held[0]
    ));
    Ok(())
}

/// Both Workloads deleted: every pod and container goes; the operator saw nothing forbidden.
async fn clean_up(s: &mut Scene, secret: &str) -> anyhow::Result<()> {
    let wls: Api<Workload> = Api::namespaced(s.client.clone(), NS);
    let mut uids = Vec::new();
    for app in [APP, ELSEWHERE] {
        uids.push(s.workload(app).await?.uid().unwrap_or_default());
    }
    for app in [APP, ELSEWHERE] {
        wls.delete(app, &DeleteParams::default()).await?;
    }
    eventually(Duration::from_secs(60), || async {
        for app in [APP, ELSEWHERE] {
            let left = workload_pods(&s.client, NS, app).await?;
            ensure!(left.is_empty(), "{app}: {} pods left", left.len());
        }
        for name in &s.names {
            let engine = s.env.engine(name)?;
            for app in [APP, ELSEWHERE] {
                let label = format!(
                    "{}={}",
                    container_labels::POD_NAME,
                    replica_pod_name(app, 0)
                );
                let left = containers_with_label(&engine, &label)?;
                ensure!(
                    left.is_empty(),
                    "{name} still runs {app} containers: {left:?}"
                );
            }
        }
        Ok(())
    })
    .await
    .with_context(|| s.logs())?;
    for edge in s.edges.values() {
        let text = String::from_utf8_lossy(&std::fs::read(edge.log())?).into_owned();
        if text.contains(secret) {
            bail!("the password is in the log of edge {}", edge.name);
        }
    }
    s.step("Workloads deleted: no pod, no container left");
    // Retention Delete: each edge drops the volumes at its next VolumeSet (a 30 s resync).
    eventually(Duration::from_secs(60), || async {
        for name in &s.names {
            for uid in &uids {
                let left = s.volumes_on(name, uid)?;
                ensure!(left.is_empty(), "{name} still holds {left:?}");
            }
        }
        Ok(())
    })
    .await
    .with_context(|| s.logs())?;
    s.step("the edges deleted the Workloads' volumes");
    s.operator.ensure_clean()?;
    s.edges.clear();
    s.sweeper.sweep();
    Ok(())
}
