//! The security model end to end: a real kube-apiserver, the real `decloud-operator` serving
//! edges over TLS on loopback, real `edge-kubelet` processes, a Docker engine of its own per edge, and a
//! hand-written tonic client speaking the real protocol with real credentials.
//!
//! Needs `cargo build -p decloud-operator -p edge-kubelet` first (the suite says so if not).

use std::os::unix::fs::PermissionsExt;
use std::process::Command;
use std::time::{Duration, Instant};

use anyhow::{Context as _, bail, ensure};
use decloud_crds::contracts::{CREDENTIAL_ANNOTATION, EDGE_TAINT, node_name};
use decloud_crds::{Provider, ProviderPhase};
use decloud_e2e::cluster::{
    ContainerSweeper, EdgeProcess, OperatorProcess, busybox_image, containers_of_pod,
    create_join_token,
};
use decloud_e2e::raw_edge::{channel, operator_ca, register};
use decloud_e2e::{TestEnv, binary, eventually};
use decloud_proto as pb;
use k8s_openapi::api::core::v1::{Pod, Secret};
use kube::api::{Api, PostParams};
use kube::{Client, ResourceExt};
use pb::edge_client::EdgeClient;
use pb::edge_message::Kind as Out;
use pb::operator_message::Kind as In;
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tonic::transport::Channel;

const NS: &str = "default";

/// Runs the real `edge-kubelet` with `args` to completion (it must fail): its stderr.
fn edge_fails(args: &[&str]) -> anyhow::Result<String> {
    let out = Command::new(binary("edge-kubelet")?)
        .args(args)
        .env("RUST_LOG", "warn")
        .output()?;
    let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
    ensure!(
        !out.status.success(),
        "edge-kubelet {args:?} succeeded: {stderr}"
    );
    Ok(stderr)
}

/// A session of a hand-written edge.
struct RawSession {
    tx: mpsc::Sender<pb::EdgeMessage>,
    inbound: tonic::Streaming<pb::OperatorMessage>,
}

fn msg(kind: Out) -> pb::EdgeMessage {
    pb::EdgeMessage { kind: Some(kind) }
}

/// Opens a Session saying Hello as `name`, with `credential` (if any) as the bearer.
async fn open_session(
    ch: &Channel,
    credential: Option<&str>,
    name: &str,
) -> Result<RawSession, tonic::Status> {
    let (tx, rx) = mpsc::channel(16);
    let hello = pb::Hello {
        provider_name: name.into(),
        agent_version: "hand-written".into(),
        capacity: Some(pb::Resources {
            cpu_millis: 1000,
            memory_bytes: 1 << 30,
            pods: 10,
            ..Default::default()
        }),
        runtime: "docker".into(),
        ..Default::default()
    };
    tx.send(msg(Out::Hello(hello))).await.unwrap();
    let mut req = tonic::Request::new(ReceiverStream::new(rx));
    if let Some(c) = credential {
        req.metadata_mut()
            .insert("authorization", format!("Bearer {c}").parse().unwrap());
    }
    let inbound = EdgeClient::new(ch.clone()).session(req).await?.into_inner();
    Ok(RawSession { tx, inbound })
}

impl RawSession {
    /// Reads messages until `pick` returns something (10 s at most).
    async fn until<T>(&mut self, mut pick: impl FnMut(In) -> Option<T>) -> anyhow::Result<T> {
        let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
        loop {
            let m = tokio::time::timeout_at(deadline, self.inbound.message())
                .await
                .context("timed out waiting for the operator")??
                .context("session closed")?;
            if let Some(t) = m.kind.and_then(&mut pick) {
                return Ok(t);
            }
        }
    }
}

fn expect_code(
    r: Result<impl std::fmt::Debug, tonic::Status>,
    code: tonic::Code,
    words: &str,
) -> anyhow::Result<String> {
    match r {
        Ok(v) => bail!("expected {code:?} ({words}), got Ok({v:?})"),
        Err(s) => {
            ensure!(
                s.code() == code && s.message().contains(words),
                "expected {code:?} with {words:?}, got {s:?}"
            );
            Ok(s.message().to_string())
        }
    }
}

/// Runs `decloud-operator <args>` against the cluster of `env`.
fn operator_cli(env: &TestEnv, args: &[&str]) -> anyhow::Result<std::process::Output> {
    Ok(Command::new(binary("decloud-operator")?)
        .env("KUBECONFIG", env.kubeconfig())
        .args(args)
        .output()?)
}

/// Runs `decloud-operator <args>`, which must succeed (else `what` and its stderr).
fn operator_cli_ok(env: &TestEnv, args: &[&str], what: &str) -> anyhow::Result<()> {
    let out = operator_cli(env, args)?;
    ensure!(
        out.status.success(),
        "{what}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    Ok(())
}

/// What `decloud-operator token list` prints.
fn token_list(env: &TestEnv) -> anyhow::Result<String> {
    let out = operator_cli(env, &["token", "list"])?;
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// The scenario of [`joining_credentials_and_revocation`]: one operator and the edge `name`
/// that joins it, with what every step needs to reach them.
struct Joining {
    operator: OperatorProcess,
    url: String,
    token: String,
    ca_hash: String,
    run: u32,
    /// The real edge that joins.
    name: String,
    /// Its state folder.
    state_dir: String,
    client: Client,
    env: TestEnv,
}

impl Joining {
    async fn start() -> anyhow::Result<Self> {
        let env = TestEnv::start().await?;
        let client = env.client();
        let run = std::process::id();
        // Expired tokens are deleted 15 s after expiry (default 24 h): long enough for the
        // "expired" refusal below, short enough to see the cleanup.
        let operator = OperatorProcess::start(
            &env,
            &[
                "--heartbeat-interval",
                "1s",
                "--expired-token-retention",
                "15s",
            ],
        )
        .await?;
        let name = format!("sec-{run}-x");
        Ok(Self {
            url: operator.edge_url(),
            token: operator.join_token.clone(),
            ca_hash: operator.ca_hash.clone(),
            operator,
            run,
            state_dir: state_dir(&env, &name),
            name,
            client,
            env,
        })
    }

    /// `edge-kubelet join` of `name` with `token`, pinning `ca_hash`, into `state_dir`.
    fn join_args<'a>(
        &'a self,
        token: &'a str,
        ca_hash: &'a str,
        state_dir: &'a str,
    ) -> Vec<&'a str> {
        vec![
            "join",
            "--operator",
            &self.url,
            "--token",
            token,
            "--ca-hash",
            ca_hash,
            "--name",
            &self.name,
            "--state-dir",
            state_dir,
        ]
    }

    /// Runs that join, which must fail: its stderr.
    fn join_fails(&self, token: &str, ca_hash: &str, state_dir: &str) -> anyhow::Result<String> {
        edge_fails(&self.join_args(token, ca_hash, state_dir))
    }
}

/// Edge `name`'s state folder in `env`, as a string for the command line.
fn state_dir(env: &TestEnv, name: &str) -> String {
    EdgeProcess::state_dir_of(env, name)
        .to_string_lossy()
        .into_owned()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn joining_credentials_and_revocation() -> anyhow::Result<()> {
    let mut j = Joining::start().await?;
    // Refusals, each with a clear message, before anything runs.
    run_without_joining_is_refused(&j)?;
    a_wrong_pin_or_token_is_refused(&j)?;
    let short = an_expired_token_is_refused(&j).await?;
    a_revoked_token_is_refused(&j)?;

    let edge = a_good_join_stores_the_credential_privately(&j).await?;
    let ch = channel(&j.operator, &operator_ca(&j.client).await?).await?;
    let hand = the_protocol_checks_credentials(&j, &ch).await?;
    a_retried_register_gets_the_same_credential(&j, &ch, &hand).await?;
    revoking_closes_the_live_session_at_once(&j, &ch, &hand).await?;
    a_revoked_real_edge_is_told(&j, &edge).await?;
    an_oversized_message_is_refused(&mut j, &ch, &hand).await?;
    expired_tokens_are_cleaned_up(&j, &short).await?;
    drop(edge);
    Ok(())
}

/// `run` without ever having joined.
fn run_without_joining_is_refused(j: &Joining) -> anyhow::Result<()> {
    let no_token = edge_fails(&[
        "run",
        "--operator",
        &j.url,
        "--name",
        &j.name,
        "--state-dir",
        &j.state_dir,
    ])?;
    ensure!(no_token.contains("has not joined"), "{no_token}");
    println!("no token: {}", no_token.lines().last().unwrap_or_default());
    Ok(())
}

/// A join pinning another CA, and a join with an unknown token.
fn a_wrong_pin_or_token_is_refused(j: &Joining) -> anyhow::Result<()> {
    let wrong_pin = format!("sha256:{}", "0".repeat(64));
    let pin = j.join_fails(&j.token, &wrong_pin, &j.state_dir)?;
    ensure!(pin.contains("does not match --ca-hash"), "{pin}");
    println!("wrong CA pin: {}", pin.lines().last().unwrap_or_default());

    let wrong = j.join_fails(
        "abcdef.wrongwrongwrongwrongwrongwrong",
        &j.ca_hash,
        &j.state_dir,
    )?;
    ensure!(wrong.contains("invalid join token"), "{wrong}");
    println!("wrong token: {}", wrong.lines().last().unwrap_or_default());
    Ok(())
}

/// A join with a token that expired (1 s): the token, whose cleanup a later step checks.
async fn an_expired_token_is_refused(j: &Joining) -> anyhow::Result<String> {
    let (short, _) = create_join_token(j.env.kubeconfig(), "1s")?;
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let expired = j.join_fails(&short, &j.ca_hash, &j.state_dir)?;
    ensure!(expired.contains("expired"), "{expired}");
    println!(
        "expired token: {}",
        expired.lines().last().unwrap_or_default()
    );
    Ok(short)
}

/// A revoked token is gone from `token list` (the expired one is listed as such) and refused.
fn a_revoked_token_is_refused(j: &Joining) -> anyhow::Result<()> {
    let (revoked_token, _) = create_join_token(j.env.kubeconfig(), "1h")?;
    operator_cli_ok(&j.env, &["token", "revoke", &revoked_token], "token revoke")?;
    let list = token_list(&j.env)?;
    println!("token list:\n{list}");
    ensure!(
        list.contains("expired") && !list.contains(revoked_token.split('.').next().unwrap()),
        "{list}"
    );
    let gone = j.join_fails(&revoked_token, &j.ca_hash, &j.state_dir)?;
    ensure!(gone.contains("invalid join token"), "{gone}");
    Ok(())
}

/// A good join stores the credential and CA privately (the Provider holds only a hash), a
/// second join of the name is refused, and `run` then needs no token: the running edge.
async fn a_good_join_stores_the_credential_privately(j: &Joining) -> anyhow::Result<EdgeProcess> {
    let (client, name, s) = (&j.client, &j.name, &j.state_dir);
    let out = Command::new(binary("edge-kubelet")?)
        .args(j.join_args(&j.token, &j.ca_hash, s))
        .output()?;
    ensure!(
        out.status.success(),
        "join: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    for f in ["credential", "ca.crt"] {
        let mode = std::fs::metadata(std::path::Path::new(s).join(f))?
            .permissions()
            .mode();
        ensure!(mode & 0o777 == 0o600, "{f} has mode {mode:o}");
    }
    let twice = j.join_fails(&j.token, &j.ca_hash, &state_dir(&j.env, "other"))?;
    ensure!(twice.contains("already joined"), "{twice}");
    let provider = Api::<Provider>::all(client.clone()).get(name).await?;
    let stored = provider
        .annotations()
        .get(CREDENTIAL_ANNOTATION)
        .cloned()
        .unwrap_or_default();
    let credential = std::fs::read_to_string(std::path::Path::new(s).join("credential"))?;
    ensure!(
        stored.len() == 64 && !stored.contains(credential.trim()),
        "the Provider must hold only a hash"
    );
    let edge = EdgeProcess::start_with(&j.env, name, &[], &["--operator".into(), j.url.clone()])?;
    eventually(Duration::from_secs(30), || async {
        let p = Api::<Provider>::all(client.clone()).get(name).await?;
        ensure!(
            p.status.map(|s| s.phase) == Some(ProviderPhase::Ready),
            "not Ready"
        );
        Ok(())
    })
    .await
    .with_context(|| {
        format!(
            "edge log:\n{}",
            std::fs::read_to_string(edge.log()).unwrap_or_default()
        )
    })?;
    println!("joined edge {name} Ready over TLS without a token on `run`");
    Ok(edge)
}

/// A hand-written edge registered over the protocol: its name and credential.
struct HandEdge {
    name: String,
    credential: String,
}

/// The protocol itself: no credential, a forged one, another provider's name, a Register
/// without a token. The hand-written edge registered on the way.
async fn the_protocol_checks_credentials(j: &Joining, ch: &Channel) -> anyhow::Result<HandEdge> {
    let name = &j.name;
    expect_code(
        open_session(ch, None, name).await.map(|_| ()),
        tonic::Code::Unauthenticated,
        "no credential",
    )?;
    let forged = format!("{name}.{}", "a".repeat(64));
    expect_code(
        open_session(ch, Some(&forged), name).await.map(|_| ()),
        tonic::Code::Unauthenticated,
        "unknown or revoked credential",
    )?;
    let hand = format!("sec-{}-hand", j.run);
    let hand_cred = register(ch, &j.token, &hand).await?;
    expect_code(
        open_session(ch, Some(&hand_cred), name).await.map(|_| ()),
        tonic::Code::PermissionDenied,
        "not",
    )?;
    expect_code(
        register(ch, "", "sec-nobody").await,
        tonic::Code::Unauthenticated,
        "no join token",
    )?;
    Ok(HandEdge {
        name: hand,
        credential: hand_cred,
    })
}

/// A Register retried because its answer was lost asks for the same credential and gets it
/// again; any other credential for a joined name is refused, as is a malformed one.
async fn a_retried_register_gets_the_same_credential(
    j: &Joining,
    ch: &Channel,
    hand: &HandEdge,
) -> anyhow::Result<()> {
    let retried = format!("sec-{}-retry", j.run);
    let asked = format!("{retried}.{}", "5e".repeat(32));
    let ask = |credential: String| {
        let ch = ch.clone();
        let (token, retried) = (j.token.clone(), retried.clone());
        async move {
            EdgeClient::new(ch)
                .register(pb::RegisterRequest {
                    join_token: token,
                    provider_name: retried,
                    credential,
                    ..Default::default()
                })
                .await
                .map(|r| r.into_inner().credential)
        }
    };
    ensure!(ask(asked.clone()).await? == asked, "first answer");
    ensure!(ask(asked.clone()).await? == asked, "retried join");
    expect_code(
        ask(format!("{retried}.{}", "7f".repeat(32))).await,
        tonic::Code::AlreadyExists,
        "already joined",
    )?;
    expect_code(
        ask(format!("{}.{}", hand.name, "5e".repeat(32))).await,
        tonic::Code::InvalidArgument,
        "must be",
    )?;
    open_session(ch, Some(&asked), &retried).await?;
    println!("a retried Register gets the same credential; another one is refused");
    Ok(())
}

/// Revoking a provider closes its live session within 1 s; it cannot come back, and the
/// Provider turns Revoked.
async fn revoking_closes_the_live_session_at_once(
    j: &Joining,
    ch: &Channel,
    hand: &HandEdge,
) -> anyhow::Result<()> {
    let mut live = open_session(ch, Some(&hand.credential), &hand.name).await?;
    live.until(|k| matches!(k, In::Welcome(_)).then_some(()))
        .await?;
    let t0 = Instant::now();
    let out = operator_cli(&j.env, &["provider", "revoke", &hand.name])?;
    let command_done = t0.elapsed();
    ensure!(
        out.status.success(),
        "provider revoke: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let closed = loop {
        match tokio::time::timeout(Duration::from_secs(5), live.inbound.message()).await {
            Err(_) => bail!("the revoked session is still open after 5 s"),
            Ok(Ok(Some(_))) => continue,
            Ok(Ok(None)) => break "closed".to_string(),
            Ok(Err(status)) => break format!("{:?}: {}", status.code(), status.message()),
        }
    };
    let latency = t0.elapsed();
    println!(
        "revocation: live session dropped {:.0} ms after `decloud-operator provider revoke` started \
         (the command itself took {:.0} ms): {closed}",
        latency.as_secs_f64() * 1000.0,
        command_done.as_secs_f64() * 1000.0
    );
    ensure!(
        latency < Duration::from_secs(1),
        "revocation took {latency:?}"
    );
    ensure!(closed.contains("revoked"), "{closed}");
    drop(live);
    expect_code(
        open_session(ch, Some(&hand.credential), &hand.name)
            .await
            .map(|_| ()),
        tonic::Code::Unauthenticated,
        "revoked",
    )?;
    eventually(Duration::from_secs(10), || async {
        let p = Api::<Provider>::all(j.client.clone())
            .get(&hand.name)
            .await?;
        ensure!(
            p.status.map(|s| s.phase) == Some(ProviderPhase::Revoked),
            "phase not Revoked"
        );
        Ok(())
    })
    .await
}

/// A real edge: setting its status phase Revoked ends its session; its reconnects fail with a
/// clear message, and no edge stays connected.
async fn a_revoked_real_edge_is_told(j: &Joining, edge: &EdgeProcess) -> anyhow::Result<()> {
    let t0 = Instant::now();
    j.env.kubectl(&[
        "patch",
        "provider",
        &j.name,
        "--subresource=status",
        "--type=merge",
        "-p",
        r#"{"status":{"phase":"Revoked"}}"#,
    ])?;
    eventually(Duration::from_secs(10), || async {
        let log = std::fs::read_to_string(edge.log())?;
        ensure!(log.contains("was revoked"), "edge not told");
        Ok(())
    })
    .await?;
    println!(
        "status phase Revoked: the real edge was told within {:.0} ms",
        t0.elapsed().as_secs_f64() * 1000.0
    );
    let connected = j
        .operator
        .metric("decloud_operator_connected_edges", "")
        .await?;
    ensure!(connected == Some(0.0), "connected edges: {connected:?}");
    Ok(())
}

/// Hostile input: an oversized message is refused, the operator keeps serving.
async fn an_oversized_message_is_refused(
    j: &mut Joining,
    ch: &Channel,
    hand: &HandEdge,
) -> anyhow::Result<()> {
    let mut big = EdgeClient::new(ch.clone()).max_encoding_message_size(64 << 20);
    let (tx, rx) = mpsc::channel(1);
    tx.send(msg(Out::Hello(pb::Hello {
        provider_name: hand.name.clone(),
        owner: "x".repeat(pb::MAX_MESSAGE_BYTES + 1),
        ..Default::default()
    })))
    .await?;
    let mut req = tonic::Request::new(ReceiverStream::new(rx));
    req.metadata_mut().insert(
        "authorization",
        format!("Bearer {}", hand.credential).parse()?,
    );
    let r = big.session(req).await;
    ensure!(r.is_err(), "an oversized Hello was accepted");
    println!(
        "oversized Hello: {:?}",
        r.err().map(|s| (s.code(), s.message().to_string()))
    );
    let (code, _) = j.operator.readyz().await?;
    ensure!(
        code == 200 && j.operator.child.check_running().is_ok(),
        "the operator did not survive"
    );
    Ok(())
}

/// The expired token's Secret is cleaned up (15 s after expiry here); valid ones stay.
async fn expired_tokens_are_cleaned_up(j: &Joining, short: &str) -> anyhow::Result<()> {
    let secrets = Api::<Secret>::namespaced(j.client.clone(), NS);
    let short_secret = format!(
        "decloud-join-{}",
        short.split('.').next().unwrap_or_default()
    );
    eventually(Duration::from_secs(40), || async {
        ensure!(
            secrets.get_opt(&short_secret).await?.is_none(),
            "{short_secret} still there"
        );
        Ok(())
    })
    .await?;
    let list = token_list(&j.env)?;
    ensure!(
        list.contains("valid") && !list.contains("expired"),
        "after cleanup:\n{list}"
    );
    println!("expired token {short_secret} deleted by the operator; valid tokens kept");
    Ok(())
}

/// The scenario of [`sessions_and_workloads_are_confined`]: a real edge `a` that only accepts
/// the test image's repository, and a hand-written edge `b` with its own valid credential.
struct Confined {
    edge: EdgeProcess,
    operator: OperatorProcess,
    ch: Channel,
    cred_b: String,
    b: String,
    node_a: String,
    node_b: String,
    image: String,
    pods: Api<Pod>,
    sweeper: ContainerSweeper,
    /// The cluster, held to the end (fields drop in order: it goes last).
    _env: TestEnv,
}

impl Confined {
    async fn start() -> anyhow::Result<Self> {
        let env = TestEnv::start().await?;
        let client = env.client();
        let image = busybox_image()?;
        let run = std::process::id();
        let operator = OperatorProcess::start(&env, &["--heartbeat-interval", "1s"]).await?;
        let (a, b) = (format!("conf-{run}-a"), format!("conf-{run}-b"));
        let (node_a, node_b) = (node_name(&a), node_name(&b));
        let sweeper = ContainerSweeper::new(&env, std::slice::from_ref(&node_a));
        let mut connect = operator.edge_args();
        // The test repository, in the test registry (where the edge pulls it from).
        let allowed = format!(
            "{}/decloud-test/*",
            decloud_e2e::registry::registry()?.host()
        );
        connect.extend(["--allowed-images".into(), allowed]);
        let edge = EdgeProcess::start_with(&env, &a, &[], &connect)?;
        let ca = operator_ca(&client).await?;
        let ch = channel(&operator, &ca).await?;
        let cred_b = register(&ch, &operator.join_token, &b).await?;
        Ok(Self {
            edge,
            operator,
            ch,
            cred_b,
            b,
            node_a,
            node_b,
            image,
            pods: Api::namespaced(client, NS),
            sweeper,
            _env: env,
        })
    }

    /// Creates pod `name` on `node` running `image`, with `extra` JSON fields in its container.
    async fn create_pod(
        &self,
        name: &str,
        node: &str,
        image: &str,
        extra: &str,
    ) -> anyhow::Result<()> {
        let pod: Pod = serde_json::from_value(serde_json::json!({
            "apiVersion": "v1", "kind": "Pod",
            "metadata": {"name": name, "namespace": NS},
            "spec": {
                "nodeName": node,
                "tolerations": [{"key": EDGE_TAINT, "operator": "Exists"}],
                "containers": [serde_json::from_str::<serde_json::Value>(&format!(
                    r#"{{"name": "main", "image": "{image}", "command": ["sh", "-c", "sleep 3600"] {extra}}}"#
                ))?],
            }
        }))?;
        self.pods.create(&PostParams::default(), &pod).await?;
        Ok(())
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn sessions_and_workloads_are_confined() -> anyhow::Result<()> {
    let c = Confined::start().await?;
    c.create_pod("web", &c.node_a, &c.image, "").await?;
    c.create_pod("miner", &c.node_a, "evil.example/miner:1", "")
        .await?;
    c.create_pod(
        "root",
        &c.node_a,
        &c.image,
        r#", "securityContext": {"privileged": true}"#,
    )
    .await?;

    let web_uid = workloads_are_hardened_as_docker_sees_it(&c).await?;
    a_refused_image_never_runs(&c).await?;
    a_privileged_pod_never_reaches_docker(&c).await?;
    let sb = a_session_receives_only_its_own_pods(&c).await?;
    its_reports_on_other_pods_are_refused(&c, &sb, &web_uid).await?;
    // An edge asking to tunnel to another node's pod is refused (when the Tunnel RPC is served).
    drop(sb);
    let Confined { edge, sweeper, .. } = c;
    drop(edge);
    sweeper.sweep();
    Ok(())
}

/// Workload hardening as Docker sees it (edge a's pod "web"): its uid.
async fn workloads_are_hardened_as_docker_sees_it(c: &Confined) -> anyhow::Result<String> {
    let web = eventually(Duration::from_secs(60), || async {
        let p = c.pods.get("web").await?;
        ensure!(
            p.status.as_ref().and_then(|s| s.phase.as_deref()) == Some("Running"),
            "web not Running"
        );
        Ok(p)
    })
    .await
    .with_context(|| {
        format!(
            "edge log:\n{}",
            std::fs::read_to_string(c.edge.log()).unwrap_or_default()
        )
    })?;
    let uid = web.uid().unwrap_or_default();
    let engine = c.edge.engine()?;
    let id = containers_of_pod(engine, &uid)?
        .pop()
        .context("no container for web")?;
    let inspect = engine.docker(&[
        "inspect",
        "-f",
        "privileged={{.HostConfig.Privileged}} capdrop={{.HostConfig.CapDrop}} capadd={{.HostConfig.CapAdd}} secopt={{.HostConfig.SecurityOpt}} pids={{.HostConfig.PidsLimit}} memory={{.HostConfig.Memory}} nanocpus={{.HostConfig.NanoCpus}} net={{.HostConfig.NetworkMode}} binds={{.HostConfig.Binds}} pidmode={{.HostConfig.PidMode}}",
        &id,
    ])?;
    println!("docker inspect web: {inspect}");
    for want in [
        "privileged=false",
        "capdrop=[ALL]",
        "secopt=[no-new-privileges]",
        "pids=256",
        "net=decloud",
    ] {
        ensure!(inspect.contains(want), "{want} missing in {inspect}");
    }
    ensure!(
        !inspect.contains("memory=0 ") && !inspect.contains("nanocpus=0 "),
        "no default limits: {inspect}"
    );
    ensure!(
        !inspect.contains("binds=[/")
            && !inspect.contains("pidmode=host")
            && !inspect.contains("SYS_ADMIN")
            && !inspect.contains("NET_ADMIN"),
        "{inspect}"
    );
    let seccomp = engine.docker(&["exec", &id, "grep", "Seccomp:", "/proc/1/status"])?;
    println!("inside web: {seccomp}");
    ensure!(
        seccomp.contains('2'),
        "the default seccomp filter is not on: {seccomp}"
    );
    Ok(uid)
}

/// A refused image never runs: waiting reason ImageNotAllowed.
async fn a_refused_image_never_runs(c: &Confined) -> anyhow::Result<()> {
    let reason = eventually(Duration::from_secs(30), || async {
        let p = c.pods.get("miner").await?;
        let w = p
            .status
            .and_then(|s| s.container_statuses)
            .and_then(|c| c.first().cloned())
            .and_then(|c| c.state)
            .and_then(|s| s.waiting)
            .context("not waiting")?;
        ensure!(
            w.reason.as_deref() == Some("ImageNotAllowed"),
            "reason {:?}",
            w.reason
        );
        Ok(w.message.unwrap_or_default())
    })
    .await?;
    println!("miner: ImageNotAllowed: {reason}");
    ensure!(reason.contains("not allowed by this provider"), "{reason}");
    Ok(())
}

/// A privileged pod never reaches Docker (the API server allows privileged here).
async fn a_privileged_pod_never_reaches_docker(c: &Confined) -> anyhow::Result<()> {
    let root = eventually(Duration::from_secs(30), || async {
        let p = c.pods.get("root").await?;
        let s = p.status.clone().context("no status")?;
        ensure!(
            s.reason.as_deref() == Some("Forbidden"),
            "reason {:?}",
            s.reason
        );
        Ok(s.message.unwrap_or_default())
    })
    .await?;
    println!("privileged pod: Forbidden: {root}");
    ensure!(root.contains("privileged"), "{root}");
    let root_uid = c.pods.get("root").await?.uid().unwrap_or_default();
    ensure!(
        containers_of_pod(c.edge.engine()?, &root_uid)?.is_empty(),
        "a container was created for the privileged pod"
    );
    Ok(())
}

/// Session b only ever receives its own pods: its session.
async fn a_session_receives_only_its_own_pods(c: &Confined) -> anyhow::Result<RawSession> {
    c.create_pod("mine", &c.node_b, &c.image, "").await?;
    let mut sb = open_session(&c.ch, Some(&c.cred_b), &c.b).await?;
    // The PodSet is built from the operator's pod cache, which may not have seen "mine" yet;
    // then it follows as an upsert. Either way b must get "mine" and nothing of a's.
    let mut received: Vec<String> = Vec::new();
    while !received.iter().any(|n| n == "mine") {
        let names = sb
            .until(|k| match k {
                In::PodSet(s) => Some(s.pods.into_iter().map(|p| p.name).collect::<Vec<_>>()),
                In::PodUpsert(u) => Some(u.pod.into_iter().map(|p| p.name).collect()),
                _ => None,
            })
            .await?;
        received.extend(names);
    }
    println!("b received: {received:?}");
    ensure!(
        received.iter().all(|n| n == "mine"),
        "b received {received:?}"
    );
    Ok(sb)
}

/// Session b may not report on a's pod "web" (`uid`): the reports are counted as
/// unauthorized and never written.
async fn its_reports_on_other_pods_are_refused(
    c: &Confined,
    sb: &RawSession,
    uid: &str,
) -> anyhow::Result<()> {
    let operator = &c.operator;
    let before = operator
        .metric("decloud_operator_unauthorized_reports_total", "")
        .await?
        .unwrap_or(0.0);
    sb.tx
        .send(msg(Out::PodStatus(pb::PodStatus {
            uid: uid.to_string(),
            namespace: NS.into(),
            name: "web".into(),
            phase: pb::PodPhase::Failed as i32,
            reason: "Hijacked".into(),
            ..Default::default()
        })))
        .await?;
    sb.tx
        .send(msg(Out::PodGone(pb::PodGone {
            uid: uid.to_string(),
        })))
        .await?;
    eventually(Duration::from_secs(10), || async {
        let after = operator
            .metric("decloud_operator_unauthorized_reports_total", "")
            .await?
            .unwrap_or(0.0);
        ensure!(after > before, "unauthorized reports {before} -> {after}");
        Ok(())
    })
    .await?;
    tokio::time::sleep(Duration::from_secs(2)).await;
    let web = c.pods.get("web").await?;
    let s = web.status.unwrap_or_default();
    ensure!(
        s.phase.as_deref() == Some("Running") && s.reason.as_deref() != Some("Hijacked"),
        "b's report on a's pod was written: {s:?}"
    );
    println!("b's report on a's pod was refused; web still Running");
    Ok(())
}

/// An address that keeps failing to authenticate has its failures refused up front, without any
/// API call, until it earns budget back; a good token from it joins at once all the same.
#[tokio::test]
async fn refused_authentication_is_throttled_per_address() -> anyhow::Result<()> {
    let env = TestEnv::start().await?;
    let client = env.client();
    let operator = OperatorProcess::start(
        &env,
        &["--failed-auth-burst", "5", "--failed-auth-per-minute", "12"],
    )
    .await?;
    let ch = channel(&operator, &operator_ca(&client).await?).await?;
    let (token, _) = create_join_token(env.kubeconfig(), "1h")?;

    // A burst of 5 refusals is told why; the 6th spends the address's budget.
    for i in 1..=6 {
        let e = register(&ch, "abcdef.wrongwrongwrongwrongwrongwrong", "sec-guess")
            .await
            .expect_err("a wrong token was accepted");
        ensure!(
            e.code() == tonic::Code::Unauthenticated,
            "guess {i}: {:?} {}",
            e.code(),
            e.message()
        );
    }
    // Now this address's failures are refused up front (RESOURCE_EXHAUSTED, no API call): a
    // wrong token, and a Session with a forged credential. A good token still joins at once:
    // others' failures never lock out a caller who proves who it is (hostile_auth.rs has the
    // full story).
    let e = register(&ch, "abcdef.wrongwrongwrongwrongwrongwrong", "sec-guess")
        .await
        .expect_err("a wrong token was accepted");
    ensure!(
        e.code() == tonic::Code::ResourceExhausted && e.message().contains("too many refused"),
        "{:?} {}",
        e.code(),
        e.message()
    );
    println!("throttled: {}", e.message());
    let forged = format!("sec-late.{}", "0".repeat(64));
    let e = open_session(&ch, Some(&forged), "sec-late")
        .await
        .err()
        .context("a throttled address opened a session")?;
    ensure!(e.code() == tonic::Code::ResourceExhausted, "{e:?}");
    let throttled = operator
        .metric("decloud_operator_auth_throttled_total", "")
        .await?
        .unwrap_or(0.0);
    ensure!(throttled >= 2.0, "auth_throttled {throttled}");
    let t0 = Instant::now();
    let credential = register(&ch, &token, "sec-late")
        .await
        .context("a good token from a throttled address was refused")?;
    println!(
        "the good token joined {:.0} ms after the address ran out of budget",
        t0.elapsed().as_secs_f64() * 1000.0
    );
    ensure!(credential.starts_with("sec-late."), "{credential}");
    ensure!(
        Api::<Provider>::all(client.clone())
            .get_opt("sec-late")
            .await?
            .is_some(),
        "no Provider after the join"
    );
    // 12 per minute: one refusal earned back every 5 s; then a wrong token is told why again.
    eventually(Duration::from_secs(20), || async {
        let e = register(&ch, "abcdef.wrongwrongwrongwrongwrongwrong", "sec-guess")
            .await
            .expect_err("a wrong token was accepted");
        ensure!(
            e.code() == tonic::Code::Unauthenticated,
            "still throttled: {e:?}"
        );
        Ok(())
    })
    .await?;
    Ok(())
}
