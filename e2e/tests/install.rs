//! The one-line install, end to end: a real kube-apiserver, the real `decloud-operator`
//! serving `/install.sh` and the edge-kubelet binary (`--edge-binary`), and the script fetched
//! with curl from it and run as root, as `decloud-operator token create` prints it.
//!
//! - A wrong `--ca-hash` is refused before anything is downloaded or installed.
//! - A binary that does not match the operator's checksum is refused, nothing installed.
//! - The right command installs into the test's own folders (`--prefix`, `--state-dir`,
//!   `--unit-dir`, `--config`: this machine's /usr/local and systemd are never touched), finds
//!   no systemd (none runs here), starts the agent in the background
//!   (`--start-without-systemd`), and ends with the Provider Ready and a pod running on it.
//!   The time from `curl | sh` to Ready is printed (docs/benchmarks.md).
//! - A second run changes nothing: same binary, same join, same files, the same agent.
//! - `edge-kubelet uninstall --yes` stops the agent and removes everything the script added.
//!
//! Needs root, curl and `cargo build --workspace --bins`.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::time::{Duration, Instant};

use anyhow::{Context as _, ensure};
use decloud_crds::contracts::{EDGE_TAINT, node_name};
use decloud_crds::{Provider, ProviderPhase};
use decloud_e2e::cluster::{ContainerSweeper, OperatorProcess, busybox_image};
use decloud_e2e::{TestEnv, binary, eventually};
use k8s_openapi::api::core::v1::Pod;
use kube::api::{Api, PostParams};

/// What the script put in the test's folders, swept on drop: the background agent (by the
/// pid file the script wrote) and its egress rules.
struct Installed {
    root: PathBuf,
    node: String,
}

impl Installed {
    fn pid(&self) -> Option<u32> {
        std::fs::read_to_string(self.root.join("state/edge-kubelet.pid"))
            .ok()?
            .trim()
            .parse()
            .ok()
    }
}

impl Drop for Installed {
    fn drop(&mut self) {
        if let Some(pid) = self.pid() {
            let _ = Command::new("kill").arg(pid.to_string()).status();
            std::thread::sleep(Duration::from_secs(2));
            let _ = Command::new("kill").args(["-9", &pid.to_string()]).status();
        }
        let _ = edge_kubelet::remove_egress_policy(&self.node);
    }
}

fn sh(command: &str) -> anyhow::Result<Output> {
    Command::new("sh")
        .args(["-c", command])
        .output()
        .context("running sh")
}

fn text(o: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    )
}

fn flip_byte(path: &Path, at: u64) -> anyhow::Result<()> {
    use std::io::{Read, Seek, SeekFrom, Write};
    let mut f = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open(path)?;
    f.seek(SeekFrom::Start(at))?;
    let mut b = [0u8; 1];
    f.read_exact(&mut b)?;
    f.seek(SeekFrom::Start(at))?;
    f.write_all(&[b[0] ^ 0xff])?;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn curl_pipe_sh_installs_a_provider_that_runs_a_pod() -> anyhow::Result<()> {
    let root = Command::new("id")
        .arg("-u")
        .output()
        .is_ok_and(|o| String::from_utf8_lossy(&o.stdout).trim() == "0");
    ensure!(root, "this suite needs root (the script installs as root)");
    let env = TestEnv::start().await?;
    let image = busybox_image()?;
    // The operator serves a copy of the built binary (the test corrupts it once).
    let served = env.dir().join("served-edge-kubelet");
    std::fs::copy(binary("edge-kubelet")?, &served)?;
    let operator = OperatorProcess::start(
        &env,
        &[
            "--heartbeat-interval",
            "1s",
            "--edge-binary",
            &served.to_string_lossy(),
        ],
    )
    .await?;
    let url = operator.edge_url();

    // The command as token create prints it.
    let out = Command::new(binary("decloud-operator")?)
        .env("KUBECONFIG", env.kubeconfig())
        .args(["token", "create", "--ttl", "1h", "--operator-url", &url])
        .output()?;
    ensure!(out.status.success(), "token create: {}", text(&out));
    let printed = String::from_utf8_lossy(&out.stdout).into_owned();
    println!("token create:\n{printed}");
    let one_liner = printed
        .lines()
        .map(str::trim)
        .find(|l| l.starts_with("curl -fsSLk ") && l.contains("| sh -s --"))
        .context("no curl | sh line")?
        .to_string();
    ensure!(
        one_liner.starts_with(&format!(
            "curl -fsSLk {url}/install.sh | sh -s -- --operator {url} --token "
        )),
        "{one_liner}"
    );
    let verified = printed
        .lines()
        .map(str::trim)
        .find(|l| l.contains("sha256sum -c"))
        .context("no verified form")?;

    let pid = std::process::id();
    let name = format!("inst-{pid}");
    let node = node_name(&name);
    let dir = env.dir().join("installed");
    let installed = Installed {
        root: dir.clone(),
        node: node.clone(),
    };
    // The provider's own Docker engine, as a volunteer's machine has one.
    let engine = env.engine(&name)?;
    let _sweeper = ContainerSweeper::new(&env, std::slice::from_ref(&node));
    let layout = format!(
        "--prefix {d}/usr --state-dir {d}/state --unit-dir {d}/systemd --config {d}/etc/edge-kubelet --start-without-systemd \
         -- --docker-network inst{pid} --heartbeat-interval 1s --docker-host {host} --allow-registry {registries} --console-listen 127.0.0.1:0",
        d = dir.display(),
        host = engine.host(),
        registries = decloud_e2e::registry::allowed_registries()?,
    );
    let command = one_liner.replace("<machine-name>", &name) + " " + &layout;
    let bin = dir.join("usr/bin/edge-kubelet");

    // A wrong pin: refused, nothing installed.
    let wrong = command.replace(&operator.ca_hash, &format!("sha256:{}", "0".repeat(64)));
    let o = sh(&wrong)?;
    println!("wrong --ca-hash:\n{}", text(&o));
    ensure!(!o.status.success(), "a wrong pin was accepted");
    ensure!(
        text(&o).contains("REFUSED: the operator at"),
        "{}",
        text(&o)
    );
    ensure!(
        !bin.exists() && !dir.join("state").exists(),
        "installed despite a wrong pin"
    );

    // A corrupted binary (same length, one byte flipped after the operator hashed it).
    let at = std::fs::metadata(&served)?.len() / 2;
    flip_byte(&served, at)?;
    let o = sh(&command)?;
    println!("corrupted binary:\n{}", text(&o));
    ensure!(!o.status.success(), "a corrupted binary was accepted");
    ensure!(
        text(&o).contains("REFUSED: the downloaded edge-kubelet has SHA-256"),
        "{}",
        text(&o)
    );
    ensure!(!bin.exists(), "a corrupted binary was installed");
    flip_byte(&served, at)?;

    // The verified form checks the script itself before running it.
    let check = verified
        .split(" && sh ")
        .next()
        .context("verified form")?
        .replace(
            "decloud-install.sh",
            &env.dir().join("install.sh").to_string_lossy(),
        );
    let o = sh(&check)?;
    ensure!(
        o.status.success(),
        "the script's printed SHA-256 does not match: {}",
        text(&o)
    );

    // The real thing: curl | sh to Ready.
    let started = Instant::now();
    let o = sh(&command)?;
    let script_took = started.elapsed();
    println!("install:\n{}", text(&o));
    ensure!(o.status.success(), "install failed: {}", text(&o));
    let out = text(&o);
    ensure!(out.contains("operator CA matches the pin"), "{out}");
    ensure!(out.contains("SHA-256") && out.contains("verified"), "{out}");
    ensure!(
        out.contains("no systemd here: edge-kubelet started in the background"),
        "{out}"
    );
    let providers: Api<Provider> = Api::all(env.client());
    let edge_log = dir.join("state/edge-kubelet.log");
    eventually(Duration::from_secs(90), || async {
        let p = providers.get(&name).await?;
        let phase = p.status.map(|s| s.phase);
        ensure!(phase == Some(ProviderPhase::Ready), "{name}: {phase:?}");
        Ok(())
    })
    .await
    .with_context(|| {
        format!(
            "the installed edge is not Ready; its log:\n{}",
            std::fs::read_to_string(&edge_log).unwrap_or_default()
        )
    })?;
    let to_ready = started.elapsed();
    println!(
        "FIGURE install: curl | sh to Provider Ready in {:.1} s (the script itself {:.1} s)",
        to_ready.as_secs_f64(),
        script_took.as_secs_f64()
    );
    for f in [
        "usr/bin/edge-kubelet",
        "systemd/edge-kubelet.service",
        "etc/edge-kubelet",
        "state/credential",
    ] {
        ensure!(dir.join(f).exists(), "the script did not write {f}");
    }
    let unit = std::fs::read_to_string(dir.join("systemd/edge-kubelet.service"))?;
    ensure!(
        unit.contains(&format!(
            "ExecStart={} run $EDGE_KUBELET_ARGS",
            bin.display()
        )),
        "{unit}"
    );

    // A pod runs on it.
    let pods: Api<Pod> = Api::namespaced(env.client(), "default");
    let pod: Pod = serde_json::from_value(serde_json::json!({
        "apiVersion": "v1", "kind": "Pod",
        "metadata": {"name": format!("inst-pod-{pid}"), "namespace": "default"},
        "spec": {
            "nodeName": node,
            "tolerations": [{"key": EDGE_TAINT, "operator": "Exists"}],
            "containers": [{"name": "main", "image": image, "imagePullPolicy": "IfNotPresent",
                            "command": ["sleep", "3600"]}],
        }
    }))?;
    pods.create(&PostParams::default(), &pod).await?;
    eventually(Duration::from_secs(60), || async {
        let p = pods.get(&format!("inst-pod-{pid}")).await?;
        let phase = p.status.and_then(|s| s.phase);
        ensure!(phase.as_deref() == Some("Running"), "pod: {phase:?}");
        Ok(())
    })
    .await
    .with_context(|| std::fs::read_to_string(&edge_log).unwrap_or_default())?;

    // Again: nothing changes.
    let agent = installed.pid().context("no pid file")?;
    let o = sh(&command)?;
    let again = text(&o);
    println!("second run:\n{again}");
    ensure!(o.status.success(), "second run failed: {again}");
    for needle in [
        "is already this version",
        "already joined",
        "etc/edge-kubelet unchanged",
        "edge-kubelet.service unchanged",
        &format!("edge-kubelet already runs (pid {agent})"),
    ] {
        ensure!(
            again.contains(needle),
            "second run: no {needle:?}:\n{again}"
        );
    }
    ensure!(
        installed.pid() == Some(agent),
        "the second run restarted the agent"
    );
    tokio::time::sleep(Duration::from_secs(3)).await;
    let p = providers.get(&name).await?;
    ensure!(
        p.status.map(|s| s.phase) == Some(ProviderPhase::Ready),
        "not Ready after the second run"
    );
    pods.delete(&format!("inst-pod-{pid}"), &Default::default())
        .await?;

    // Uninstall takes everything away.
    let o = Command::new(&bin)
        .args(["uninstall", "--name", &name, "--yes"])
        .args(["--docker-network", &format!("inst{pid}")])
        .args(["--docker-host", &engine.host()])
        .arg("--state-dir")
        .arg(dir.join("state"))
        .output()?;
    println!("uninstall:\n{}", text(&o));
    ensure!(o.status.success(), "uninstall: {}", text(&o));
    ensure!(
        !Path::new(&format!("/proc/{agent}")).exists(),
        "the agent still runs after uninstall"
    );
    for f in [
        "usr/bin/edge-kubelet",
        "systemd/edge-kubelet.service",
        "etc/edge-kubelet",
        "state",
    ] {
        ensure!(!dir.join(f).exists(), "uninstall left {f}");
    }
    drop(installed);
    Ok(())
}
