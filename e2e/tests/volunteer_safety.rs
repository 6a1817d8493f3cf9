//! The volunteer's machine stays the volunteer's, end to end: a real kube-apiserver, the real
//! `decloud-operator`, real `edge-kubelet` processes each on a Docker engine of its own, and targets
//! the test builds on this machine only (network namespaces with veth pairs, each serving
//! HTTP with busybox): a "LAN host" at a private 192.168.x.2, the cloud metadata address
//! 169.254.169.254, a listener on the edge bridge's gateway address on the host, and another
//! pod's IP. From the host they all answer; from a DeCloud container none does, while the
//! pod's second container answers on localhost. The control: an edge started with
//! `--unsafe-no-egress-policy` reaches the same targets. No traffic ever goes to a public
//! address: that the internet stays open is read from the installed rules.
//!
//! Also: a pod asking more than the offer is refused (`OutOfmemory`), a memory hog is
//! OOM-killed at its limit under the edge's ceiling cgroup, registries that are IP literals
//! never see a connection (`ImageNotAllowed`), a local image the edge did not pull is not
//! used, and `edge-kubelet uninstall` takes it all away.
//!
//! Needs root (ip netns, iptables), `busybox` on the host and `cargo build --workspace --bins`.

use std::process::{Child, Command, Stdio};
use std::time::Duration;

use anyhow::{Context as _, bail, ensure};
use decloud_crds::contracts::{EDGE_TAINT, container_labels, node_name};
use decloud_crds::{EgressPolicyState, Provider};
use std::sync::Arc;

use decloud_e2e::cluster::{
    ContainerSweeper, EdgeProcess, OperatorProcess, busybox_image, running_containers,
};
use decloud_e2e::engine::DockerEngine;
use decloud_e2e::{TestEnv, binary, eventually, free_port};
use k8s_openapi::api::core::v1::Pod;
use kube::ResourceExt;
use kube::api::{Api, PostParams};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

const NS: &str = "default";
const MI: i64 = 1 << 20;

/// Runs `cmd args…`, failing with its stderr; stdout.
fn run(cmd: &str, args: &[&str]) -> anyhow::Result<String> {
    let out = Command::new(cmd)
        .args(args)
        .output()
        .with_context(|| format!("running {cmd}"))?;
    if !out.status.success() {
        bail!(
            "{cmd} {}: {}",
            args.join(" "),
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok(String::from_utf8_lossy(&out.stdout).trim().to_string())
}

// === the targets: network namespaces, veths and HTTP servers the test makes ===

/// Everything the test adds to the machine's network, removed on drop (even on failure).
#[derive(Default)]
struct Targets {
    netns: Vec<String>,
    host_links: Vec<String>,
    /// `ip rule` selectors added (`to IP/32 priority P`), deleted on drop.
    rules: Vec<(String, String)>,
    servers: Vec<Child>,
    www: Vec<tempfile::TempDir>,
}

impl Targets {
    /// A folder whose index.html says `marker`.
    fn www(&mut self, marker: &str) -> anyhow::Result<String> {
        let dir = tempfile::tempdir()?;
        std::fs::write(dir.path().join("index.html"), format!("{marker}\n"))?;
        let path = dir.path().to_string_lossy().into_owned();
        self.www.push(dir);
        Ok(path)
    }

    /// `busybox httpd` in the foreground on `addr` (`IP:PORT`), inside netns `ns` if given.
    fn serve(&mut self, ns: Option<&str>, addr: &str, marker: &str) -> anyhow::Result<()> {
        let www = self.www(marker)?;
        let mut cmd = match ns {
            Some(ns) => {
                let mut c = Command::new("ip");
                c.args(["netns", "exec", ns, "busybox"]);
                c
            }
            None => Command::new("busybox"),
        };
        cmd.args(["httpd", "-f", "-p", addr, "-h", &www])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null());
        self.servers.push(
            cmd.spawn()
                .context("busybox httpd (is busybox installed?)")?,
        );
        Ok(())
    }

    /// A namespace `ns` joined to the host by a veth pair: the host side gets `host_cidr`,
    /// the namespace side `ns_cidr`; it serves HTTP on port 80 saying `marker`.
    fn netns(
        &mut self,
        ns: &str,
        link: &str,
        host_cidr: &str,
        ns_cidr: &str,
        marker: &str,
    ) -> anyhow::Result<()> {
        let (host_link, ns_link) = (format!("{link}h"), format!("{link}n"));
        run("ip", &["netns", "add", ns])?;
        self.netns.push(ns.to_string());
        run(
            "ip",
            &[
                "link", "add", &host_link, "type", "veth", "peer", "name", &ns_link,
            ],
        )?;
        self.host_links.push(host_link.clone());
        run("ip", &["link", "set", &ns_link, "netns", ns])?;
        run("ip", &["addr", "add", host_cidr, "dev", &host_link])?;
        run("ip", &["link", "set", &host_link, "up"])?;
        let inside = |args: &[&str]| {
            let mut all = vec!["netns", "exec", ns, "ip"];
            all.extend_from_slice(args);
            run("ip", &all)
        };
        inside(&["addr", "add", ns_cidr, "dev", &ns_link])?;
        inside(&["link", "set", &ns_link, "up"])?;
        inside(&["link", "set", "lo", "up"])?;
        let ip = ns_cidr.split('/').next().unwrap_or_default();
        self.route_to(ip, &host_link)?;
        self.serve(Some(ns), &format!("{ip}:80"), marker)
    }

    /// Makes `ip` go to `host_link` whatever the machine's own routes say (a cloud VM has a
    /// host route to its metadata service, 169.254.169.254/32, more specific than any link
    /// route the test adds): a rule ahead of the main table pointing at a table of the
    /// test's own. Then checks the kernel's answer for `ip`, host-originated and forwarded
    /// alike, so not one packet of the test leaves for a machine it did not make.
    fn route_to(&mut self, ip: &str, host_link: &str) -> anyhow::Result<()> {
        // One table and priority per target, unique to this process and link.
        let slot = std::process::id() % 1000 * 8 + self.host_links.len() as u32;
        let (table, priority) = (
            (20_000 + slot).to_string(),
            (9_000 + slot % 1000).to_string(),
        );
        let to = format!("{ip}/32");
        run(
            "ip",
            &["route", "add", &to, "dev", host_link, "table", &table],
        )?;
        run(
            "ip",
            &[
                "rule", "add", "to", &to, "priority", &priority, "lookup", &table,
            ],
        )?;
        self.rules.push((to, priority));
        let got = run("ip", &["route", "get", ip])?;
        ensure!(
            got.split_whitespace().skip_while(|w| *w != "dev").nth(1) == Some(host_link),
            "{ip} would not go to the test's {host_link} but: {got}; nothing was sent"
        );
        Ok(())
    }
}

impl Drop for Targets {
    fn drop(&mut self) {
        for s in &mut self.servers {
            let _ = s.kill();
            let _ = s.wait();
        }
        for (to, priority) in &self.rules {
            let _ = run("ip", &["rule", "del", "to", to, "priority", priority]);
        }
        for l in &self.host_links {
            let _ = run("ip", &["link", "del", l]);
        }
        for ns in &self.netns {
            let _ = run("ip", &["netns", "del", ns]);
        }
    }
}

/// Removes, on drop, what the suite's edges put on the machine: `edge-kubelet uninstall`
/// per edge (rules, containers, network, cgroup), run after the edges are stopped.
struct Uninstall {
    edges: Vec<(String, String, String, Arc<DockerEngine>)>,
}

impl Uninstall {
    fn run_one(
        name: &str,
        network: &str,
        state_dir: &str,
        engine: &DockerEngine,
    ) -> anyhow::Result<String> {
        let out = Command::new(binary("edge-kubelet")?)
            .args(["uninstall", "--name", name, "--docker-network", network])
            .args(["--docker-host", &engine.host()])
            .args(["--state-dir", state_dir])
            .output()?;
        ensure!(
            out.status.success(),
            "uninstall {name}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    }
}

impl Drop for Uninstall {
    fn drop(&mut self) {
        for (name, network, state, engine) in &self.edges {
            if let Err(e) = Self::run_one(name, network, state, engine) {
                eprintln!("{e:#}");
            }
            let _ = engine.docker(&["network", "rm", network]);
        }
    }
}

/// GET `http://addr/` from the host: the body.
async fn fetch(addr: &str) -> anyhow::Result<String> {
    let go = async {
        let mut s = tokio::net::TcpStream::connect(addr).await?;
        s.write_all(b"GET / HTTP/1.0\r\n\r\n").await?;
        let mut body = String::new();
        s.read_to_string(&mut body).await?;
        anyhow::Ok(body)
    };
    tokio::time::timeout(Duration::from_secs(5), go)
        .await
        .with_context(|| format!("GET {addr} timed out"))?
        .with_context(|| format!("GET {addr}"))
}

/// Whether container `id` gets `marker` from `http://addr/` (`nc -w 2`, inside it; the test
/// image's busybox `wget` crashes without NSS files).
fn reaches(engine: &DockerEngine, id: &str, addr: &str, marker: &str) -> bool {
    let Some((ip, port)) = addr.rsplit_once(':') else {
        return false;
    };
    let script = format!("printf 'GET / HTTP/1.0\\r\\n\\r\\n' | nc -w 2 {ip} {port}");
    let out = engine
        .command()
        .args(["exec", id, "sh", "-c", &script])
        .output();
    matches!(out, Ok(o) if String::from_utf8_lossy(&o.stdout).contains(marker))
}

/// The id of container `container` of pod `uid`.
fn container_of(engine: &DockerEngine, uid: &str, container: &str) -> anyhow::Result<String> {
    running_containers(engine, uid, container)?
        .into_iter()
        .next()
        .with_context(|| format!("no running container {container} of pod {uid}"))
}

/// The gateway address of Docker network `net`.
fn gateway_of(engine: &DockerEngine, net: &str) -> anyhow::Result<String> {
    engine.docker(&[
        "network",
        "inspect",
        net,
        "-f",
        "{{(index .IPAM.Config 0).Gateway}}",
    ])
}

struct Lab {
    pods: Api<Pod>,
    image: String,
    operator: OperatorProcess,
    env: TestEnv,
}

impl Lab {
    /// Creates pod `name` on `node` with `containers` (JSON) and `restart` policy.
    async fn pod(
        &self,
        name: &str,
        node: &str,
        containers: serde_json::Value,
        restart: &str,
    ) -> anyhow::Result<()> {
        let pod: Pod = serde_json::from_value(serde_json::json!({
            "apiVersion": "v1", "kind": "Pod",
            "metadata": {"name": name, "namespace": NS, "labels": {"app": name}},
            "spec": {
                "nodeName": node,
                "restartPolicy": restart,
                "tolerations": [{"key": EDGE_TAINT, "operator": "Exists"}],
                "containers": containers,
            }
        }))?;
        self.pods.create(&PostParams::default(), &pod).await?;
        Ok(())
    }

    /// A container running `script` in the test image.
    fn container(
        &self,
        name: &str,
        script: &str,
        resources: serde_json::Value,
    ) -> serde_json::Value {
        serde_json::json!({
            "name": name, "image": self.image, "imagePullPolicy": "IfNotPresent",
            "command": ["sh", "-c", script], "resources": resources,
        })
    }

    /// Waits until pod `name` runs with every container ready or running: (uid, pod IP).
    async fn running(&self, name: &str, edge: &EdgeProcess) -> anyhow::Result<(String, String)> {
        eventually(Duration::from_secs(90), || async {
            let p = self.pods.get(name).await?;
            let s = p.status.clone().context("no status")?;
            ensure!(
                s.phase.as_deref() == Some("Running"),
                "{name}: {:?}",
                s.phase
            );
            let all = s.container_statuses.clone().unwrap_or_default();
            let spec_n = p.spec.as_ref().map_or(0, |s| s.containers.len());
            ensure!(
                all.len() == spec_n
                    && all.iter().all(|c| c
                        .state
                        .as_ref()
                        .and_then(|s| s.running.as_ref())
                        .is_some()),
                "{name}: not all containers running"
            );
            let ip = s.pod_ip.clone().context("no pod IP")?;
            Ok((p.uid().unwrap_or_default(), ip))
        })
        .await
        .with_context(|| format!("edge log:\n{}", edge.child.log_tail(40)))
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_lent_machine_stays_the_volunteers() -> anyhow::Result<()> {
    ensure!(
        nix_is_root(),
        "this suite needs root (network namespaces, iptables)"
    );
    let env = TestEnv::start().await?;
    let image = busybox_image()?;
    let operator = OperatorProcess::start(&env, &["--heartbeat-interval", "1s"]).await?;
    let lab = Lab {
        pods: Api::namespaced(env.client(), NS),
        image,
        operator,
        env,
    };
    let pid = std::process::id();
    let k = pid % 25;
    let (safe, open) = (format!("vsafe-{pid}-a"), format!("vsafe-{pid}-u"));
    let (safe_net, open_net) = (format!("vsafe{pid}a"), format!("vsafe{pid}u"));
    let (safe_node, open_node) = (node_name(&safe), node_name(&open));
    let _sweeper = ContainerSweeper::new(&lab.env, &[safe_node.clone(), open_node.clone()]);
    let mut targets = Targets::default();
    // Networks made as an older edge made them (inter-container traffic on): what keeps pods
    // apart is the edge's own rule, which the control does not have.
    // Each edge's own engine; the refused edge's too (it must not touch the host's).
    let (safe_engine, open_engine) = (lab.env.engine(&safe)?, lab.env.engine(&open)?);
    let refused = format!("vsafe-{pid}-r");
    let refused_engine = lab.env.engine(&refused)?;
    for (engine, net) in [(&safe_engine, &safe_net), (&open_engine, &open_net)] {
        engine.docker(&[
            "network",
            "create",
            "--label",
            "decloud.dev/managed-by=edge-kubelet",
            net,
        ])?;
    }
    let mut uninstall = Uninstall { edges: Vec::new() };
    for (name, net, engine) in [
        (&safe, &safe_net, &safe_engine),
        (&open, &open_net, &open_engine),
        (&refused, &safe_net, &refused_engine),
    ] {
        let state = EdgeProcess::state_dir_of(&lab.env, name);
        uninstall.edges.push((
            name.clone(),
            net.clone(),
            state.to_string_lossy().into_owned(),
            engine.clone(),
        ));
    }

    // The targets.
    let lan = format!("192.168.{}.2", 200 + k);
    let lan_allowed = format!("192.168.{}.2", 225 + k);
    targets.netns(
        &format!("vsafe{pid}lan"),
        &format!("vs{pid}l"),
        &format!("192.168.{}.1/24", 200 + k),
        &format!("{lan}/24"),
        "lan-host",
    )?;
    targets.netns(
        &format!("vsafe{pid}ok"),
        &format!("vs{pid}o"),
        &format!("192.168.{}.1/24", 225 + k),
        &format!("{lan_allowed}/24"),
        "lent-lan-host",
    )?;
    targets.netns(
        &format!("vsafe{pid}md"),
        &format!("vs{pid}m"),
        "169.254.169.1/24",
        "169.254.169.254/24",
        "metadata",
    )?;
    let gw_port = free_port()?;
    let (safe_gw, open_gw) = (
        gateway_of(&safe_engine, &safe_net)?,
        gateway_of(&open_engine, &open_net)?,
    );
    targets.serve(None, &format!("{safe_gw}:{gw_port}"), "host-service")?;
    targets.serve(None, &format!("{open_gw}:{gw_port}"), "host-service")?;
    // A listener standing for the engine's TCP API: no pull may ever reach it.
    let engine_api = tokio::net::TcpListener::bind("127.0.0.1:2375")
        .await
        .context("127.0.0.1:2375 is taken; the registry check needs it free")?;

    an_edge_without_its_rules_runs_nothing(&lab, &refused, &safe_net, &refused_engine).await?;

    // The edges: one with the policy (offering 256Mi), the control without.
    let mut connect = lab.operator.edge_args();
    connect.extend(
        [
            "--docker-network",
            &safe_net,
            "--memory",
            "256Mi",
            "--cpu",
            "1",
            "--allow-egress",
            &format!("{lan_allowed}/32"),
        ]
        .map(String::from),
    );
    let mut safe_edge = EdgeProcess::start_with(&lab.env, &safe, &[], &connect)?;
    let mut connect = lab.operator.edge_args();
    connect.extend(["--docker-network", &open_net, "--unsafe-no-egress-policy"].map(String::from));
    let mut open_edge = EdgeProcess::start_with(&lab.env, &open, &[], &connect)?;

    let none = serde_json::json!({});
    for (pod, node) in [("probe", &safe_node), ("probe-u", &open_node)] {
        lab.pod(
            pod,
            node,
            serde_json::json!([
                lab.container("main", "sleep 3600", none.clone()),
                lab.container("side", "mkdir -p /s && echo sidecar >/s/index.html && exec httpd -f -p 127.0.0.1:9090 -h /s", none.clone()),
            ]),
            "Always",
        )
        .await?;
    }
    for (pod, node) in [("other", &safe_node), ("other-u", &open_node)] {
        lab.pod(
            pod,
            node,
            serde_json::json!([lab.container(
                "web",
                "mkdir -p /w && echo other-pod >/w/index.html && exec httpd -f -p 8080 -h /w",
                none.clone()
            )]),
            "Always",
        )
        .await?;
    }
    let (probe_uid, _) = lab.running("probe", &safe_edge).await?;
    let (_, other_ip) = lab.running("other", &safe_edge).await?;
    let (probe_u_uid, _) = lab.running("probe-u", &open_edge).await?;
    let (_, other_u_ip) = lab.running("other-u", &open_edge).await?;

    let cases = |gw: &str, other: &str| {
        vec![
            ("the LAN host", format!("{lan}:80"), "lan-host"),
            (
                "the metadata address",
                "169.254.169.254:80".to_string(),
                "metadata",
            ),
            (
                "the host's bridge gateway",
                format!("{gw}:{gw_port}"),
                "host-service",
            ),
            ("another pod", format!("{other}:8080"), "other-pod"),
        ]
    };
    // From the host, every target answers.
    for (what, addr, marker) in cases(&safe_gw, &other_ip)
        .into_iter()
        .chain(cases(&open_gw, &other_u_ip))
    {
        let body = fetch(&addr)
            .await
            .with_context(|| format!("{what} from the host"))?;
        ensure!(body.contains(marker), "{what} from the host: {body}");
    }
    // From a container on the protected edge, none does; localhost and the lent LAN host do.
    let probe = container_of(&safe_engine, &probe_uid, "main")?;
    for (what, addr, marker) in cases(&safe_gw, &other_ip) {
        ensure!(
            !reaches(&safe_engine, &probe, &addr, marker),
            "a DeCloud container reached {what} at {addr}"
        );
        println!("protected edge: {what} ({addr}) unreachable");
    }
    ensure!(
        reaches(&safe_engine, &probe, "127.0.0.1:9090", "sidecar"),
        "the pod's second container does not answer on localhost"
    );
    ensure!(
        reaches(
            &safe_engine,
            &probe,
            &format!("{lan_allowed}:80"),
            "lent-lan-host"
        ),
        "--allow-egress {lan_allowed}/32 did not open it"
    );
    // The control: without the policy the same probes connect, so the test can fail.
    let probe_u = container_of(&open_engine, &probe_u_uid, "main")?;
    for (what, addr, marker) in cases(&open_gw, &other_u_ip) {
        ensure!(
            reaches(&open_engine, &probe_u, &addr, marker),
            "control: without the policy a container should reach {what} at {addr}"
        );
        println!("unprotected edge (control): {what} ({addr}) reached");
    }

    // The internet stays open: read from the rules, never dialled.
    let rules = egress_rules_are_as_documented(&safe_edge, &safe_net).await?;
    let status = edge_status(&safe_edge)?;
    ensure!(status.contains("egress:     enforced"), "{status}");
    for r in &rules {
        ensure!(status.contains(r.as_str()), "status lacks {r}:\n{status}");
    }
    let open_status = edge_status(&open_edge)?;
    ensure!(open_status.contains("egress:     OFF"), "{open_status}");
    println!("--- edge-kubelet status (protected edge) ---\n{status}");

    // Rules removed under a running edge (a firewall reload) come back within its 30 s check.
    let (fwd, _) = edge_kubelet::egress_chains(&safe_node);
    let bridge_id = safe_engine.docker(&["network", "inspect", &safe_net, "-f", "{{.Id}}"])?;
    let jump = format!("-i br-{} -j {fwd}", &bridge_id[..12]);
    let jump_args: Vec<&str> = jump.split(' ').collect();
    run(
        "iptables",
        &[&["-w", "-D", "DOCKER-USER"][..], &jump_args].concat(),
    )?;
    ensure!(
        reaches(&safe_engine, &probe, &format!("{lan}:80"), "lan-host"),
        "with its jump removed the policy should be off (the check would prove nothing)"
    );
    eventually(Duration::from_secs(45), || async {
        let hook = run("iptables", &["-S", "DOCKER-USER"])?;
        ensure!(hook.contains(&jump), "not back yet:\n{hook}");
        Ok(())
    })
    .await
    .context("the edge did not put its rules back")?;
    ensure!(
        !reaches(&safe_engine, &probe, &format!("{lan}:80"), "lan-host"),
        "the LAN host is reachable again after the rules came back"
    );
    println!("protected edge: a removed jump was put back");

    // The Provider says so too (and whether the engine remaps users).
    let userns = safe_engine
        .docker(&["info", "-f", "{{json .SecurityOptions}}"])?
        .contains("name=userns");
    for (name, want) in [
        (&safe, EgressPolicyState::Enforced),
        (&open, EgressPolicyState::Disabled),
    ] {
        let iso = eventually(Duration::from_secs(30), || async {
            let p = Api::<Provider>::all(lab.env.client()).get(name).await?;
            p.status
                .and_then(|s| s.isolation)
                .context("no isolation in the Provider status")
        })
        .await?;
        println!("provider {name}: {iso:?}");
        ensure!(iso.egress_policy == Some(want), "{name}: {iso:?}");
        ensure!(
            iso.userns_remap == userns,
            "{name}: {iso:?}, docker says userns={userns}"
        );
    }

    offer_is_a_ceiling(&lab, &safe_edge, &safe_node).await?;
    images_are_safe_for_the_host(&lab, &safe_node, &safe_engine, &engine_api).await?;

    // Taking the machine back: stop the edges, uninstall, nothing of theirs is left.
    // Uninstall refuses while the agent runs.
    let (name, net, state, engine) = uninstall.edges[0].clone();
    let early = Uninstall::run_one(&name, &net, &state, &engine);
    ensure!(
        early
            .as_ref()
            .is_err_and(|e| e.to_string().contains("still runs")),
        "uninstall under a running edge: {early:?}"
    );
    // Killed, not dropped: a dropped EdgeProcess sweeps its rules itself.
    safe_edge.child.kill();
    open_edge.child.kill();
    let chains = iptables_chains_of_edges(&[&safe_node, &open_node])?;
    ensure!(
        !chains.is_empty(),
        "the protected edge's chains are missing before uninstall"
    );
    for (name, net, state, engine) in std::mem::take(&mut uninstall.edges) {
        let out = Uninstall::run_one(&name, &net, &state, &engine)?;
        println!("uninstall {name}:\n{out}");
    }
    let left = iptables_chains_of_edges(&[&safe_node, &open_node])?;
    ensure!(left.is_empty(), "uninstall left rules: {left:?}");
    for (engine, net) in [(&safe_engine, &safe_net), (&open_engine, &open_net)] {
        ensure!(
            engine.docker(&["network", "inspect", net]).is_err(),
            "uninstall left network {net}"
        );
    }
    for (engine, node) in [(&safe_engine, &safe_node), (&open_engine, &open_node)] {
        let ids = engine.docker(&[
            "ps",
            "-aq",
            "--filter",
            &format!("label={}={node}", container_labels::NODE),
        ])?;
        ensure!(ids.is_empty(), "uninstall left containers of {node}: {ids}");
    }
    drop(targets);
    Ok(())
}

/// An edge that cannot install its rules (no iptables on its PATH) exits before running
/// anything, and says how to run unprotected.
async fn an_edge_without_its_rules_runs_nothing(
    lab: &Lab,
    name: &str,
    net: &str,
    engine: &DockerEngine,
) -> anyhow::Result<()> {
    let state = EdgeProcess::state_dir_of(&lab.env, name);
    std::fs::create_dir_all(&state)?;
    let mut child = Command::new(binary("edge-kubelet")?)
        .env("PATH", "/nonexistent")
        .env("RUST_LOG", "warn")
        .arg("run")
        .args(lab.operator.edge_args())
        .args(["--name", name, "--docker-network", net])
        .args(["--docker-host", &engine.host()])
        .arg("--state-dir")
        .arg(&state)
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()?;
    let status = eventually(Duration::from_secs(60), || {
        let done = child.try_wait();
        async move { done?.context("still running") }
    })
    .await;
    if status.is_err() {
        let _ = child.kill();
    }
    let status = status?;
    let mut stderr = String::new();
    std::io::Read::read_to_string(&mut child.stderr.take().context("stderr")?, &mut stderr)?;
    println!("edge without iptables: {status}: {}", stderr.trim());
    ensure!(!status.success(), "the edge ran without its rules");
    ensure!(
        stderr.contains("runs no pod without its egress policy")
            && stderr.contains("--unsafe-no-egress-policy"),
        "{stderr}"
    );
    Ok(())
}

fn nix_is_root() -> bool {
    run("id", &["-u"]).is_ok_and(|u| u == "0")
}

/// `edge-kubelet status` of `edge`.
fn edge_status(edge: &EdgeProcess) -> anyhow::Result<String> {
    run(
        &binary("edge-kubelet")?.to_string_lossy(),
        &[
            "status",
            "--name",
            &edge.name,
            "--state-dir",
            &edge.state_dir.to_string_lossy(),
        ],
    )
}

/// Lines of `iptables -S` / `ip6tables -S` naming a chain of `nodes`' edges.
fn iptables_chains_of_edges(nodes: &[&str]) -> anyhow::Result<Vec<String>> {
    let mut out = Vec::new();
    for tool in ["iptables", "ip6tables"] {
        let all = run(tool, &["-S"])?;
        for node in nodes {
            let tag = edge_chain_tag(node);
            out.extend(
                all.lines()
                    .filter(|l| l.contains(&tag))
                    .map(|l| format!("{tool}: {l}")),
            );
        }
    }
    Ok(out)
}

/// The common prefix of the chain names edge-kubelet gives `node` (`DECLOUD-<hash>-`).
fn edge_chain_tag(node: &str) -> String {
    let (fwd, _) = edge_kubelet::egress_chains(node);
    fwd.trim_end_matches("FWD").to_string()
}

/// The protected edge's rules, read with iptables: the forward chain refuses only listed
/// ranges (so any public address passes), the input chain refuses everything but replies, and
/// both are hooked for the edge's bridge. Returns them as `iptables -S` prints them.
async fn egress_rules_are_as_documented(
    edge: &EdgeProcess,
    net: &str,
) -> anyhow::Result<Vec<String>> {
    let id = edge.docker(&["network", "inspect", net, "-f", "{{.Id}}"])?;
    let bridge = format!("br-{}", &id[..12]);
    let (fwd, inp) = edge_kubelet::egress_chains(&edge.node());
    let mut all = Vec::new();
    for tool in ["iptables", "ip6tables"] {
        let f = run(tool, &["-S", &fwd])?;
        let i = run(tool, &["-S", &inp])?;
        println!("--- {tool} -S {fwd} ---\n{f}\n--- {tool} -S {inp} ---\n{i}");
        for line in f.lines().filter(|l| l.starts_with("-A ")) {
            let refuses = line.contains("-j REJECT") || line.contains("-j DROP");
            ensure!(
                !refuses || line.contains(" -d ") || line.contains(&format!("-o {bridge}")),
                "{tool}: a refusing rule without a destination range would close the internet: {line}"
            );
        }
        for range in if tool == "iptables" {
            &[
                "10.0.0.0/8",
                "172.16.0.0/12",
                "192.168.0.0/16",
                "169.254.0.0/16",
                "100.64.0.0/10",
                "127.0.0.0/8",
                "224.0.0.0/4",
            ][..]
        } else {
            &["fc00::/7", "fe80::/10", "::1/128"][..]
        } {
            ensure!(
                f.lines()
                    .any(|l| l.contains(&format!("-d {range} ")) && l.contains("REJECT")),
                "{tool}: {range} not refused:\n{f}"
            );
        }
        ensure!(
            i.lines()
                .last()
                .is_some_and(|l| l.contains("-j REJECT") && !l.contains(" -d ")),
            "{tool}: the host is not closed:\n{i}"
        );
        let hook = if tool == "iptables" {
            "DOCKER-USER"
        } else {
            "FORWARD"
        };
        let hooks = run(tool, &["-S", hook])? + "\n" + &run(tool, &["-S", "INPUT"])?;
        println!("--- {tool} -S {hook}; {tool} -S INPUT ---\n{hooks}");
        for want in [
            format!("-i {bridge} -j {fwd}"),
            format!("-i {bridge} -j {inp}"),
        ] {
            ensure!(
                hooks.contains(&want),
                "{tool}: no `{want}` in {hook}/INPUT:\n{hooks}"
            );
        }
        all.extend(f.lines().chain(i.lines()).map(|l| format!("{tool}: {l}")));
    }
    Ok(all)
}

/// 512Mi on a 256Mi offer is refused as kubelet would; a hog is OOM-killed at its limit under
/// the ceiling cgroup, which carries the offer.
async fn offer_is_a_ceiling(lab: &Lab, edge: &EdgeProcess, node: &str) -> anyhow::Result<()> {
    lab.pod(
        "big",
        node,
        serde_json::json!([lab.container(
            "main",
            "sleep 3600",
            serde_json::json!({"limits": {"memory": "512Mi"}})
        )]),
        "Always",
    )
    .await?;
    let (reason, message) = eventually(Duration::from_secs(30), || async {
        let s = lab.pods.get("big").await?.status.context("no status")?;
        ensure!(s.phase.as_deref() == Some("Failed"), "big: {:?}", s.phase);
        Ok((s.reason.unwrap_or_default(), s.message.unwrap_or_default()))
    })
    .await?;
    println!("512Mi on a 256Mi offer: {reason}: {message}");
    ensure!(reason == "OutOfmemory", "{reason}: {message}");
    ensure!(
        message.contains("Node didn't have enough resource: memory"),
        "{message}"
    );

    // Below Docker's 6 MiB minimum: Kubernetes accepts it, so it must run (raised to 6 MiB).
    lab.pod(
        "tiny",
        node,
        serde_json::json!([lab.container(
            "main",
            "sleep 3600",
            serde_json::json!({"limits": {"memory": "4Mi"}})
        )]),
        "Always",
    )
    .await?;
    let (tiny_uid, _) = lab.running("tiny", edge).await?;
    let tiny = container_of(edge.engine()?, &tiny_uid, "main")?;
    let memory = edge.docker(&["inspect", "-f", "{{.HostConfig.Memory}}", &tiny])?;
    ensure!(
        memory == (6 * MI).to_string(),
        "a 4Mi limit became {memory}"
    );

    lab.pod(
        "hog",
        node,
        serde_json::json!([lab.container(
            "main",
            "exec dd if=/dev/zero of=/dev/null bs=100M count=1",
            serde_json::json!({"limits": {"memory": "32Mi", "cpu": "500m"}}),
        )]),
        "Never",
    )
    .await?;
    let (terminated, uid) = eventually(Duration::from_secs(60), || async {
        let p = lab.pods.get("hog").await?;
        let t = p
            .status
            .as_ref()
            .and_then(|s| s.container_statuses.as_ref())
            .and_then(|c| c.first())
            .and_then(|c| c.state.as_ref())
            .and_then(|s| s.terminated.clone())
            .context("hog not terminated yet")?;
        Ok((t, p.uid().unwrap_or_default()))
    })
    .await
    .with_context(|| format!("edge log:\n{}", edge.child.log_tail(30)))?;
    println!("hog: {:?} exit {}", terminated.reason, terminated.exit_code);
    ensure!(
        terminated.reason.as_deref() == Some("OOMKilled"),
        "the hog ended with {:?}",
        terminated.reason
    );
    let id = edge.docker(&[
        "ps",
        "-aq",
        "--no-trunc",
        "--filter",
        &format!("label={}={uid}", container_labels::POD_UID),
    ])?;
    let id = id.lines().next().context("no hog container")?;
    let inspect = edge.docker(&[
        "inspect",
        "-f",
        "{{.HostConfig.CgroupParent}} {{.HostConfig.Memory}} {{.State.OOMKilled}}",
        id,
    ])?;
    println!("docker inspect hog: {inspect}");
    let parent = inspect.split(' ').next().unwrap_or_default().to_string();
    ensure!(
        parent.starts_with("/decloud-"),
        "no ceiling cgroup parent: {inspect}"
    );
    ensure!(inspect.ends_with(&format!("{} true", 32 * MI)), "{inspect}");
    let limit = std::fs::read_to_string(format!(
        "/sys/fs/cgroup/memory{parent}/memory.limit_in_bytes"
    ))
    .or_else(|_| std::fs::read_to_string(format!("/sys/fs/cgroup{parent}/memory.max")))
    .context("the ceiling cgroup's memory limit")?;
    println!("ceiling {parent}: memory limit {}", limit.trim());
    ensure!(
        limit.trim() == (256 * MI).to_string(),
        "ceiling memory limit {limit}"
    );
    Ok(())
}

/// IP-literal registries end in ImageNotAllowed with no connection to a listener on
/// 127.0.0.1:2375; a local image the edge did not pull (and nobody lends) is not used.
async fn images_are_safe_for_the_host(
    lab: &Lab,
    node: &str,
    engine: &Arc<DockerEngine>,
    engine_api: &tokio::net::TcpListener,
) -> anyhow::Result<()> {
    // On the edge's own engine (which pulled lab.image), under a name it never pulled.
    let private = format!("vsafe-private/busybox:{}", std::process::id());
    engine.docker(&["tag", &lab.image, &private])?;
    let _untag = scopeguard(engine.clone(), private.clone());
    for (pod, image, policy) in [
        ("reg-lo", "127.0.0.1:2375/x:1", "IfNotPresent"),
        ("reg-ip", "10.1.2.3/x:1", "Always"),
        ("not-lent", private.as_str(), "Never"),
    ] {
        lab.pod(
            pod,
            node,
            serde_json::json!([{"name": "main", "image": image, "imagePullPolicy": policy}]),
            "Always",
        )
        .await?;
    }
    for (pod, want, says) in [
        ("reg-lo", "ImageNotAllowed", "is an IP address"),
        ("reg-ip", "ImageNotAllowed", "is an IP address"),
        ("not-lent", "ErrImageNeverPull", "did not pull"),
    ] {
        let message = eventually(Duration::from_secs(30), || async {
            let w = lab
                .pods
                .get(pod)
                .await?
                .status
                .and_then(|s| s.container_statuses)
                .and_then(|c| c.first().cloned())
                .and_then(|c| c.state)
                .and_then(|s| s.waiting)
                .context("not waiting")?;
            ensure!(w.reason.as_deref() == Some(want), "{pod}: {:?}", w.reason);
            Ok(w.message.unwrap_or_default())
        })
        .await?;
        println!("{pod}: {want}: {message}");
        ensure!(message.contains(says), "{pod}: {message}");
    }
    let dialled = tokio::time::timeout(Duration::from_millis(200), engine_api.accept()).await;
    ensure!(
        dialled.is_err(),
        "something connected to 127.0.0.1:2375: {dialled:?}"
    );
    Ok(())
}

/// Removes image tag `0` on drop.
struct Untag(Arc<DockerEngine>, String);

impl Drop for Untag {
    fn drop(&mut self) {
        let _ = self.0.docker(&["rmi", &self.1]);
    }
}

fn scopeguard(engine: Arc<DockerEngine>, tag: String) -> Untag {
    Untag(engine, tag)
}
