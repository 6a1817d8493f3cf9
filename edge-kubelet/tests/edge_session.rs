//! The real `edge-kubelet` binary against a fake operator: a real tonic server on a loopback
//! socket implementing the generated `Edge` service, driven by the test.

mod common;

use std::path::Path;
use std::pin::Pin;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use common::*;
use decloud_proto as pb;
use futures::Stream;
use pb::edge_message::Kind as Out;
use pb::edge_server::{Edge, EdgeServer};
use pb::operator_message::Kind as In;
use tokio::sync::mpsc;
use tokio_stream::wrappers::{ReceiverStream, TcpListenerStream};
use tonic::{Request, Response, Status, Streaming};

const PATIENCE: Duration = Duration::from_secs(30);

// === fake operator ===

/// One edge session as the test sees it.
struct Conn {
    from_edge: mpsc::UnboundedReceiver<pb::EdgeMessage>,
    to_edge: mpsc::Sender<Result<pb::OperatorMessage, Status>>,
    /// Latest status per pod among the messages consumed so far.
    latest: std::collections::HashMap<String, pb::PodStatus>,
}

impl Conn {
    async fn send(&self, kind: In) {
        self.to_edge
            .send(Ok(pb::OperatorMessage { kind: Some(kind) }))
            .await
            .expect("edge stream open");
    }

    /// Next message of the edge that `pick` accepts (others, e.g. heartbeats, are skipped).
    async fn next<T>(&mut self, what: &str, mut pick: impl FnMut(&Out) -> Option<T>) -> T {
        let deadline = tokio::time::Instant::now() + PATIENCE;
        loop {
            let m = tokio::time::timeout_at(deadline, self.from_edge.recv())
                .await
                .unwrap_or_else(|_| panic!("timed out waiting for {what}"))
                .unwrap_or_else(|| panic!("session ended while waiting for {what}"));
            match &m.kind {
                Some(Out::PodStatus(s)) => {
                    self.latest.insert(s.uid.clone(), s.clone());
                }
                Some(Out::Hello(h)) => {
                    for s in &h.pods {
                        self.latest.insert(s.uid.clone(), s.clone());
                    }
                }
                _ => {}
            }
            if let Some(kind) = m.kind
                && let Some(v) = pick(&kind)
            {
                return v;
            }
        }
    }

    async fn status_where(
        &mut self,
        uid: &str,
        what: &str,
        f: impl Fn(&pb::PodStatus) -> bool,
    ) -> pb::PodStatus {
        if let Some(s) = self.latest.get(uid).filter(|s| f(s)) {
            return s.clone();
        }
        self.next(what, |k| match k {
            Out::PodStatus(s) if s.uid == uid && f(s) => Some(s.clone()),
            _ => None,
        })
        .await
    }
}

struct FakeOperator {
    conns: mpsc::UnboundedSender<Conn>,
}

type OpStream = Pin<Box<dyn Stream<Item = Result<pb::OperatorMessage, Status>> + Send>>;

#[tonic::async_trait]
impl Edge for FakeOperator {
    async fn register(
        &self,
        _r: Request<pb::RegisterRequest>,
    ) -> Result<Response<pb::RegisterResponse>, Status> {
        Err(Status::unimplemented("not in this test"))
    }

    type SessionStream = OpStream;

    async fn session(
        &self,
        r: Request<Streaming<pb::EdgeMessage>>,
    ) -> Result<Response<OpStream>, Status> {
        let mut inbound = r.into_inner();
        let (from_tx, from_edge) = mpsc::unbounded_channel();
        let (to_edge, to_rx) = mpsc::channel(64);
        tokio::spawn(async move {
            while let Ok(Some(m)) = inbound.message().await {
                if from_tx.send(m).is_err() {
                    return;
                }
            }
        });
        let _ = self.conns.send(Conn {
            from_edge,
            to_edge,
            latest: Default::default(),
        });
        Ok(Response::new(Box::pin(ReceiverStream::new(to_rx))))
    }

    type TunnelStream = Pin<Box<dyn Stream<Item = Result<pb::TunnelFrame, Status>> + Send>>;

    async fn tunnel(
        &self,
        _r: Request<Streaming<pb::TunnelFrame>>,
    ) -> Result<Response<Self::TunnelStream>, Status> {
        Err(Status::unimplemented("not in this test"))
    }
}

async fn fake_operator() -> (String, mpsc::UnboundedReceiver<Conn>) {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    let (conns, rx) = mpsc::unbounded_channel();
    tokio::spawn(
        tonic::transport::Server::builder()
            .add_service(EdgeServer::new(FakeOperator { conns }))
            .serve_with_incoming(TcpListenerStream::new(listener)),
    );
    (url, rx)
}

async fn accept(conns: &mut mpsc::UnboundedReceiver<Conn>) -> Conn {
    tokio::time::timeout(PATIENCE, conns.recv())
        .await
        .expect("the edge connects")
        .unwrap()
}

// === the real binary ===

/// The edge process; SIGKILLed on drop.
struct EdgeProcess(Child);

impl Drop for EdgeProcess {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn spawn_edge(operator: &str, name: &str, state_dir: &Path, log: &Path) -> EdgeProcess {
    // As if joined: the fake operator is plaintext (no CA) and takes any credential.
    std::fs::create_dir_all(state_dir).unwrap();
    std::fs::write(
        state_dir.join(edge_kubelet::CREDENTIAL_FILE),
        format!("{name}.{}", "0".repeat(64)),
    )
    .unwrap();
    let log = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(log)
        .unwrap();
    let child = Command::new(env!("CARGO_BIN_EXE_edge-kubelet"))
        .args([
            "run",
            "--operator",
            operator,
            "--name",
            name,
            "--label",
            "test=yes",
        ])
        .args([
            "--heartbeat-interval",
            "200ms",
            "--max-pods",
            "5",
            "--cpu",
            "1",
            "--memory",
            "1Gi",
            // The test image is built locally (no registry): lent, as a volunteer would.
            "--lend-local-image",
            "decloud-test/*",
        ])
        .arg("--state-dir")
        .arg(state_dir)
        .env("RUST_LOG", "info,edge_kubelet=debug")
        .stdout(Stdio::null())
        .stderr(log)
        .spawn()
        .expect("edge-kubelet binary starts");
    EdgeProcess(child)
}

fn welcome(node: &str) -> In {
    In::Welcome(pb::Welcome {
        node_name: node.to_string(),
        heartbeat_interval_millis: 200,
    })
}

#[tokio::test]
async fn edge_session_survives_sigkill_readopts_and_reconciles() {
    let image = test_image();
    let name = unique_node("session");
    let node = format!("edge-{name}");
    let _sweeper = ContainerSweeper { node: node.clone() };
    let state = tempfile::tempdir().unwrap();
    let log = std::env::temp_dir().join(format!("{node}.log"));
    let (url, mut conns) = fake_operator().await;

    // --- first run: Hello, Welcome, PodSet, pods run, heartbeats flow ---
    let mut edge = spawn_edge(&url, &name, state.path(), &log);
    let mut conn = accept(&mut conns).await;
    let hello = conn
        .next("Hello", |k| match k {
            Out::Hello(h) => Some(h.clone()),
            _ => None,
        })
        .await;
    assert_eq!(hello.provider_name, name);
    assert_eq!(hello.runtime, "docker");
    let platform = hello.platform.clone().expect("Hello carries the platform");
    assert_eq!(platform.os, std::env::consts::OS);
    assert!(
        [
            "amd64", "arm64", "arm", "386", "ppc64le", "s390x", "riscv64"
        ]
        .contains(&platform.architecture.as_str()),
        "GOARCH naming: {platform:?}"
    );
    assert!(!platform.kernel_version.is_empty(), "{platform:?}");
    let engine = platform
        .container_runtime_version
        .strip_prefix("docker://")
        .unwrap_or_default();
    assert!(!engine.is_empty(), "{platform:?}");
    assert_eq!(hello.labels.get("test").map(String::as_str), Some("yes"));
    let (cap, offered) = (hello.capacity.unwrap(), hello.offered.unwrap());
    assert!(cap.cpu_millis >= 1000 && cap.memory_bytes > 0);
    assert_eq!(offered.cpu_millis, 1000.min(cap.cpu_millis));
    assert_eq!(offered.memory_bytes, (1i64 << 30).min(cap.memory_bytes));
    assert_eq!(offered.pods, 5);
    assert!(hello.pods.is_empty());

    let web = httpd_pod("u-web", "web", &image);
    let logger = pod(
        "u-log",
        "logger",
        &image,
        &["sh", "-c", "echo hello-from-the-log; sleep 3600"],
    );
    conn.send(welcome(&node)).await;
    conn.send(In::PodSet(pb::PodSet {
        pods: vec![web.clone(), logger.clone()],
    }))
    .await;
    let s = conn
        .status_where("u-web", "web Running and ready", |s| {
            s.phase() == pb::PodPhase::Running && s.ready
        })
        .await;
    let web_id = container_id(&s).unwrap();
    let body = http_get(&s.pod_ip, 8080).await.expect("pod answers");
    assert!(body.contains("hello from decloud"));
    conn.status_where("u-log", "logger Running", |s| {
        s.phase() == pb::PodPhase::Running
    })
    .await;
    let mut seqs = vec![];
    while seqs.len() < 3 {
        seqs.push(
            conn.next("heartbeat", |k| match k {
                Out::Heartbeat(h) => Some(h.seq),
                _ => None,
            })
            .await,
        );
    }
    assert!(
        seqs.windows(2).all(|w| w[1] > w[0]),
        "heartbeat seqs rise: {seqs:?}"
    );

    // Logs on request.
    conn.send(In::LogRequest(pb::LogRequest {
        request_id: 7,
        pod_uid: "u-log".into(),
        tail_lines: -1,
        ..Default::default()
    }))
    .await;
    let mut logs = Vec::new();
    loop {
        let c = conn
            .next("log chunk", |k| match k {
                Out::LogChunk(c) if c.request_id == 7 => Some(c.clone()),
                _ => None,
            })
            .await;
        assert!(c.error.is_empty(), "log error: {}", c.error);
        logs.extend(c.data);
        if c.eof {
            break;
        }
    }
    assert!(String::from_utf8_lossy(&logs).contains("hello-from-the-log"));

    // --- SIGKILL the edge; the containers keep running ---
    let started_at = docker(&["inspect", "--format", "{{.State.StartedAt}}", &web_id]);
    drop(edge);
    drop(conn);
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(
        docker(&["inspect", "--format", "{{.State.Running}}", &web_id]),
        "true"
    );

    // --- restart: re-adopts without restarting, reports the pods in Hello ---
    edge = spawn_edge(&url, &name, state.path(), &log);
    let mut conn = accept(&mut conns).await;
    let hello = conn
        .next("Hello after restart", |k| match k {
            Out::Hello(h) => Some(h.clone()),
            _ => None,
        })
        .await;
    let again = hello
        .pods
        .iter()
        .find(|p| p.uid == "u-web")
        .expect("web pod in Hello");
    assert_eq!(again.phase(), pb::PodPhase::Running);
    assert_eq!(
        container_id(again).as_deref(),
        Some(web_id.as_str()),
        "same container re-adopted"
    );
    assert_eq!(
        containers_with_label("decloud.dev/pod-uid", "u-web"),
        vec![web_id.clone()]
    );
    assert_eq!(
        docker(&["inspect", "--format", "{{.State.StartedAt}}", &web_id]),
        started_at,
        "not restarted"
    );
    assert_eq!(
        docker(&["inspect", "--format", "{{.RestartCount}}", &web_id]),
        "0"
    );

    // --- the new desired set drops the logger: it is stopped and removed ---
    conn.send(welcome(&node)).await;
    conn.send(In::PodSet(pb::PodSet {
        pods: vec![web.clone()],
    }))
    .await;
    conn.next("PodGone for the logger", |k| match k {
        Out::PodGone(g) if g.uid == "u-log" => Some(()),
        _ => None,
    })
    .await;
    assert!(containers_with_label("decloud.dev/pod-uid", "u-log").is_empty());
    let s = conn
        .status_where("u-web", "web ready again", |s| s.ready)
        .await;
    assert_eq!(container_id(&s).as_deref(), Some(web_id.as_str()));

    // --- PodDelete: containers removed, then PodGone ---
    conn.send(In::PodDelete(pb::PodDelete {
        uid: "u-web".into(),
        grace_period_seconds: 1,
    }))
    .await;
    conn.next("PodGone for web", |k| match k {
        Out::PodGone(g) if g.uid == "u-web" => Some(()),
        _ => None,
    })
    .await;
    assert!(containers_with_label("decloud.dev/pod-uid", "u-web").is_empty());
    drop(edge);
    let _ = std::fs::remove_file(&log);
}

#[tokio::test]
async fn edge_reconnects_after_the_operator_goes_away_and_pods_keep_running() {
    let image = test_image();
    let name = unique_node("reconnect");
    let node = format!("edge-{name}");
    let _sweeper = ContainerSweeper { node: node.clone() };
    let state = tempfile::tempdir().unwrap();
    let log = std::env::temp_dir().join(format!("{node}.log"));
    let (url, mut conns) = fake_operator().await;
    let _edge = spawn_edge(&url, &name, state.path(), &log);

    let conn = accept(&mut conns).await;
    conn.send(welcome(&node)).await;
    conn.send(In::PodSet(pb::PodSet {
        pods: vec![pod("u-r", "r", &image, &["sleep", "3600"])],
    }))
    .await;
    let mut conn = conn;
    let s = conn
        .status_where("u-r", "Running", |s| s.phase() == pb::PodPhase::Running)
        .await;
    let id = container_id(&s).unwrap();

    // The operator ends the session (as on an operator restart): the edge dials again.
    conn.to_edge
        .send(Err(Status::unavailable("operator restarting")))
        .await
        .unwrap();
    drop(conn);
    let mut conn = accept(&mut conns).await;
    let hello = conn
        .next("Hello on reconnect", |k| match k {
            Out::Hello(h) => Some(h.clone()),
            _ => None,
        })
        .await;
    assert_eq!(hello.pods.len(), 1);
    assert_eq!(container_id(&hello.pods[0]).as_deref(), Some(id.as_str()));
    assert_eq!(
        docker(&["inspect", "--format", "{{.State.Running}}", &id]),
        "true"
    );
    // An empty desired set on reconnect removes what is no longer ours.
    conn.send(welcome(&node)).await;
    conn.send(In::PodSet(pb::PodSet { pods: vec![] })).await;
    conn.next("PodGone", |k| match k {
        Out::PodGone(g) if g.uid == "u-r" => Some(()),
        _ => None,
    })
    .await;
    assert!(containers_with_label("decloud.dev/pod-uid", "u-r").is_empty());
    let _ = std::fs::remove_file(&log);
}
