//! `kubectl exec`, `attach` and `port-forward`, end to end: the stock pinned kubectl against
//! a real kube-apiserver, the real `decloud-operator` (its kubelet API) and a real
//! `edge-kubelet` on a Docker engine of its own per edge. The API server speaks SPDY/3.1 to the kubelet API
//! (the operator logs the negotiated protocols; the test prints them); the streams ride on the
//! edge's own outbound connection. Traffic goes only to 127.0.0.1 and the suite's containers.
//!
//! Needs `cargo build --workspace --bins` first.

use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};
use std::time::Duration;

use anyhow::{Context as _, bail, ensure};
use decloud_crds::contracts::node_name;
use decloud_e2e::cluster::{
    ContainerSweeper, EdgeProcess, OperatorProcess, busybox_image, http_get_reply, pod_ready,
    wait_providers_ready, workload_pods,
};
use decloud_e2e::{TestEnv, eventually, free_port};
use kube::ResourceExt;

const NS: &str = "default";
const WL: &str = "streams";

/// One replica that serves `/` ("streams ok") and a 2 MiB `/big` on 8080, and prints a
/// numbered tick every second (for `kubectl attach`).
fn workload() -> String {
    // The test registry's reference (built and pushed once per process).
    let image = busybox_image().expect("the busybox test image");
    let script = "echo 'streams ok' > /www/index.html; \
        dd if=/dev/zero of=/www/big bs=1048576 count=2 2>/dev/null; \
        (i=0; while true; do echo tick $i; i=$((i+1)); sleep 1; done) & \
        exec httpd -f -p 8080 -h /www";
    format!(
        r#"apiVersion: decloud.dev/v1alpha1
kind: Workload
metadata: {{name: {WL}, namespace: {NS}}}
spec:
  replicas: 1
  template:
    metadata: {{labels: {{app: {WL}}}}}
    spec:
      terminationGracePeriodSeconds: 1
      containers:
        - name: web
          image: {image}
          command: ["/bin/sh", "-c", {script:?}]
          ports: [{{containerPort: 8080}}]
          resources: {{requests: {{cpu: 50m, memory: 16Mi}}, limits: {{cpu: 500m, memory: 64Mi}}}}
          readinessProbe: {{httpGet: {{path: /, port: 8080}}, periodSeconds: 1}}
  expose: {{port: 8080}}
"#
    )
}

/// `line` without terminal colour codes.
fn strip_ansi(line: &str) -> String {
    let mut out = String::new();
    let mut chars = line.chars();
    while let Some(c) = chars.next() {
        if c == '\u{1b}' {
            for c in chars.by_ref() {
                if c.is_ascii_alphabetic() {
                    break;
                }
            }
        } else {
            out.push(c);
        }
    }
    out
}

/// What one kubectl run gave.
struct Run {
    code: Option<i32>,
    stdout: String,
    stderr: String,
}

/// Runs the pinned kubectl with `args` and `stdin`, for at most `limit`.
fn kubectl(env: &TestEnv, args: &[&str], stdin: &[u8], limit: Duration) -> anyhow::Result<Run> {
    let mut child = Command::new("timeout")
        .arg(format!("{}s", limit.as_secs()))
        .arg(env.bin_dir().join("kubectl"))
        .args(args)
        .env("KUBECONFIG", env.kubeconfig())
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .context("running kubectl")?;
    let mut input = child.stdin.take().context("stdin")?;
    let data = stdin.to_vec();
    let feeder = std::thread::spawn(move || {
        use std::io::Write;
        let _ = input.write_all(&data);
    });
    let out = child.wait_with_output()?;
    let _ = feeder.join();
    Ok(Run {
        code: out.status.code(),
        stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
    })
}

struct Scenario {
    env: TestEnv,
    operator: OperatorProcess,
    _edge: EdgeProcess,
    sweeper: ContainerSweeper,
    pod: String,
}

async fn start() -> anyhow::Result<Scenario> {
    let env = TestEnv::start().await?;
    busybox_image()?;
    let name = format!("streams-{}", std::process::id());
    let sweeper = ContainerSweeper::new(&env, &[node_name(&name)]);
    let gateway_listen = format!("127.0.0.1:{}", free_port()?);
    let operator = OperatorProcess::start(
        &env,
        &[
            "--gateway-listen",
            &gateway_listen,
            "--identity",
            "e2e-streams",
        ],
    )
    .await?;
    let edge = EdgeProcess::start(&env, &operator, &name, &[])?;
    let client = env.client();
    wait_providers_ready(&client, &operator, std::slice::from_ref(&name)).await?;
    env.kubectl_stdin(&["apply", "-f", "-"], &workload())?;
    let pod = eventually(Duration::from_secs(90), || async {
        let pods = workload_pods(&client, NS, WL).await?;
        let Some(p) = pods.iter().find(|p| pod_ready(p)) else {
            bail!("{WL} not ready");
        };
        Ok(p.name_any())
    })
    .await
    .with_context(|| format!("operator log:\n{}", operator.child.log_tail(30)))?;
    Ok(Scenario {
        env,
        operator,
        _edge: edge,
        sweeper,
        pod,
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn kubectl_exec_attach_and_port_forward_work_through_the_api_server() -> anyhow::Result<()> {
    let s = start().await?;
    exec_gives_outputs_apart_and_the_exit_code(&s)?;
    exec_carries_stdin_to_its_end(&s)?;
    exec_with_a_terminal_gets_a_tty_and_its_size(&s)?;
    attach_streams_the_main_process(&s)?;
    port_forward_carries_concurrent_connections(&s).await?;
    exec_needs_the_right(&s).await?;

    let log = std::fs::read_to_string(s.operator.child.log_path()).unwrap_or_default();
    let negotiated: Vec<&str> = log
        .lines()
        .filter(|l| l.contains("negotiated over SPDY/3.1"))
        .collect();
    ensure!(
        negotiated.iter().any(|l| l.contains("v4.channel.k8s.io"))
            && negotiated.iter().any(|l| l.contains("portforward.k8s.io")),
        "negotiated protocols: {negotiated:#?}"
    );
    println!("the API server negotiated, towards the kubelet API:");
    for l in negotiated.iter().take(8) {
        println!("  {}", strip_ansi(l));
    }
    s.env.kubectl(&["delete", "wl", WL, "--wait=false"])?;
    if s.operator.warnings().iter().any(|w| w.contains("panicked")) {
        bail!("the operator panicked");
    }
    s.sweeper.sweep();
    Ok(())
}

/// `kubectl exec pod -- sh -c 'echo out; echo err >&2; exit 3'`: stdout and stderr arrive
/// apart, and kubectl exits with 3.
fn exec_gives_outputs_apart_and_the_exit_code(s: &Scenario) -> anyhow::Result<()> {
    let r = kubectl(
        &s.env,
        &[
            "exec",
            &s.pod,
            "--",
            "sh",
            "-c",
            "echo out; echo err >&2; exit 3",
        ],
        b"",
        Duration::from_secs(30),
    )?;
    ensure!(
        r.code == Some(3) && r.stdout == "out\n" && r.stderr.contains("err\n"),
        "exec: code {:?}, stdout {:?}, stderr {:?}",
        r.code,
        r.stdout,
        r.stderr
    );
    let ok = kubectl(
        &s.env,
        &["exec", &s.pod, "--", "cat", "/www/index.html"],
        b"",
        Duration::from_secs(30),
    )?;
    ensure!(
        ok.code == Some(0) && ok.stdout == "streams ok\n",
        "exec cat: {:?} {:?} {:?}",
        ok.code,
        ok.stdout,
        ok.stderr
    );
    // The command runs inside the container: its hostname is the pod's, not this machine's.
    let host = kubectl(
        &s.env,
        &["exec", &s.pod, "--", "cat", "/proc/1/cmdline"],
        b"",
        Duration::from_secs(30),
    )?;
    ensure!(
        host.stdout.contains("httpd") || host.stdout.contains("/bin/sh"),
        "pid 1 in the exec's namespace should be the container's: {:?}",
        host.stdout
    );
    println!(
        "kubectl exec: stdout {:?}, stderr {:?}, exit code {:?}",
        r.stdout,
        r.stderr.lines().next().unwrap_or_default(),
        r.code
    );
    Ok(())
}

/// `echo data | kubectl exec -i pod -- cat` round-trips, and 1 MiB of stdin reaches `wc -c`
/// whole: stdin's end reaches the process (else `cat`/`wc` would never end).
fn exec_carries_stdin_to_its_end(s: &Scenario) -> anyhow::Result<()> {
    let r = kubectl(
        &s.env,
        &["exec", "-i", &s.pod, "--", "cat"],
        b"data\n",
        Duration::from_secs(30),
    )?;
    ensure!(
        r.code == Some(0) && r.stdout == "data\n",
        "exec -i cat: {:?} {:?} {:?}",
        r.code,
        r.stdout,
        r.stderr
    );
    let big = vec![b'x'; 1024 * 1024];
    let r = kubectl(
        &s.env,
        &["exec", "-i", &s.pod, "--", "wc", "-c"],
        &big,
        Duration::from_secs(60),
    )?;
    ensure!(
        r.code == Some(0) && r.stdout.trim() == "1048576",
        "exec -i wc -c: {:?} {:?} {:?}",
        r.code,
        r.stdout,
        r.stderr
    );
    println!("kubectl exec -i: 'data' round-tripped; 1 MiB of stdin counted whole");
    Ok(())
}

/// `kubectl exec -it` under a pseudo-terminal (`script`) sized 123×45: the command gets a
/// `/dev/pts/N` terminal of that size (sent on the resize stream).
fn exec_with_a_terminal_gets_a_tty_and_its_size(s: &Scenario) -> anyhow::Result<()> {
    let kubectl = s.env.bin_dir().join("kubectl");
    let inner = format!(
        "stty cols 123 rows 45; KUBECONFIG={} {} exec -it {} -- sh -c 'sleep 1; tty; stty size'",
        s.env.kubeconfig().display(),
        kubectl.display(),
        s.pod
    );
    let out = Command::new("timeout")
        .args(["60s", "script", "-qec", &inner, "/dev/null"])
        .stdin(Stdio::null())
        .output()
        .context("running script")?;
    let text = String::from_utf8_lossy(&out.stdout).replace('\r', "");
    ensure!(
        out.status.success() && text.contains("/dev/pts/") && text.contains("45 123"),
        "exec -it: {:?} {text:?} {}",
        out.status.code(),
        String::from_utf8_lossy(&out.stderr)
    );
    println!(
        "kubectl exec -it: {:?}",
        text.lines()
            .filter(|l| !l.trim().is_empty())
            .collect::<Vec<_>>()
    );
    Ok(())
}

/// `kubectl attach` streams the container's main process output (its ticks).
fn attach_streams_the_main_process(s: &Scenario) -> anyhow::Result<()> {
    let r = kubectl(
        &s.env,
        &["attach", &s.pod, "-c", "web"],
        b"",
        Duration::from_secs(6),
    )?;
    let ticks: Vec<u64> = r
        .stdout
        .lines()
        .filter_map(|l| l.strip_prefix("tick ")?.trim().parse().ok())
        .collect();
    ensure!(
        ticks.len() >= 2 && ticks.windows(2).all(|w| w[1] == w[0] + 1),
        "kubectl attach for 6 s: {:?} {:?}",
        r.stdout,
        r.stderr
    );
    println!("kubectl attach followed ticks {ticks:?}");
    Ok(())
}

/// A running `kubectl port-forward`, killed on drop.
struct PortForward(std::process::Child);

impl Drop for PortForward {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// `kubectl port-forward pod/x LOCAL:8080`, once it says it forwards.
fn port_forward(s: &Scenario, local: u16, remote: u16) -> anyhow::Result<(PortForward, String)> {
    let mut child = Command::new(s.env.bin_dir().join("kubectl"))
        .args([
            "port-forward",
            &format!("pod/{}", s.pod),
            &format!("{local}:{remote}"),
        ])
        .env("KUBECONFIG", s.env.kubeconfig())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .context("kubectl port-forward")?;
    let stdout = child.stdout.take().context("stdout")?;
    let stderr_path = s.env.dir().join(format!("port-forward-{local}.err"));
    let mut stderr = child.stderr.take().context("stderr")?;
    let path = stderr_path.clone();
    std::thread::spawn(move || {
        if let Ok(mut f) = std::fs::File::create(&path) {
            let _ = std::io::copy(&mut stderr, &mut f);
        }
    });
    let guard = PortForward(child);
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines().map_while(Result::ok) {
            let _ = tx.send(line);
        }
    });
    let first = rx
        .recv_timeout(Duration::from_secs(30))
        .context("kubectl port-forward said nothing")?;
    ensure!(first.contains("Forwarding from"), "port-forward: {first}");
    Ok((guard, stderr_path.to_string_lossy().into_owned()))
}

/// `kubectl port-forward pod/x L:8080` carries 3 connections at once (2 MiB each) and a
/// fourth small one; forwarding to a closed port reports kubelet's error.
async fn port_forward_carries_concurrent_connections(s: &Scenario) -> anyhow::Result<()> {
    let local = free_port()?;
    let (_pf, _) = port_forward(s, local, 8080)?;
    let gets = (0..3).map(|_| http_get_reply(local, "localhost", "/big", Duration::from_secs(30)));
    let replies = futures::future::join_all(gets).await;
    for r in &replies {
        let r = r.as_ref().map_err(|e| anyhow::anyhow!("{e:#}"))?;
        ensure!(
            r.code == 200 && r.body.len() == 2 * 1024 * 1024,
            "port-forwarded GET /big: {} ({} bytes)",
            r.head,
            r.body.len()
        );
    }
    let r = http_get_reply(local, "localhost", "/", Duration::from_secs(10)).await?;
    ensure!(
        r.code == 200 && r.text().contains("streams ok"),
        "{}",
        r.head
    );
    println!("kubectl port-forward {local}:8080: 3 concurrent 2 MiB GETs and one more, all 200");

    let closed = free_port()?;
    let (_pf2, err_path) = port_forward(s, closed, 8081)?;
    let failed = http_get_reply(closed, "localhost", "/", Duration::from_secs(10)).await;
    ensure!(
        failed.as_ref().map_or(true, |r| r.code != 200),
        "a closed port answered"
    );
    let said = eventually(Duration::from_secs(10), || async {
        let err = std::fs::read_to_string(&err_path).unwrap_or_default();
        ensure!(
            err.contains("error forwarding port 8081 to pod"),
            "kubectl port-forward stderr: {err:?}"
        );
        Ok(err)
    })
    .await?;
    println!(
        "port-forward to a closed port: {}",
        said.lines()
            .find(|l| l.contains("error forwarding"))
            .unwrap_or_default()
            .trim()
    );
    Ok(())
}

/// A ServiceAccount that may read pods but not `pods/exec` is refused by the API server (403
/// Forbidden, `pods/exec`); once granted it, its exec runs. Straight to the kubelet API its
/// token lacks `nodes/proxy`: 403 there too.
async fn exec_needs_the_right(s: &Scenario) -> anyhow::Result<()> {
    let env = &s.env;
    env.kubectl(&["create", "serviceaccount", "stream-snoop", "-n", NS])?;
    let role = |resources: &str| {
        format!(
            r#"apiVersion: rbac.authorization.k8s.io/v1
kind: Role
metadata: {{name: stream-exec, namespace: {NS}}}
rules:
  - apiGroups: [""]
    resources: [{resources}]
    verbs: [get, create]
---
apiVersion: rbac.authorization.k8s.io/v1
kind: RoleBinding
metadata: {{name: stream-exec, namespace: {NS}}}
roleRef: {{apiGroup: rbac.authorization.k8s.io, kind: Role, name: stream-exec}}
subjects: [{{kind: ServiceAccount, name: stream-snoop, namespace: {NS}}}]
"#
        )
    };
    env.kubectl_stdin(&["apply", "-f", "-"], &role("pods"))?;
    let who = format!("--as=system:serviceaccount:{NS}:stream-snoop");
    let denied = eventually(Duration::from_secs(20), || async {
        let r = kubectl(
            env,
            &[&who, "exec", &s.pod, "--", "echo", "pwned"],
            b"",
            Duration::from_secs(30),
        )?;
        ensure!(
            r.code != Some(0)
                && !r.stdout.contains("pwned")
                && r.stderr.contains("forbidden")
                && r.stderr.contains("pods/exec"),
            "unauthorized exec: {:?} {:?} {:?}",
            r.code,
            r.stdout,
            r.stderr
        );
        Ok(r)
    })
    .await?;
    env.kubectl_stdin(&["apply", "-f", "-"], &role("pods, pods/exec"))?;
    eventually(Duration::from_secs(20), || async {
        let r = kubectl(
            env,
            &[&who, "exec", &s.pod, "--", "echo", "granted"],
            b"",
            Duration::from_secs(30),
        )?;
        ensure!(
            r.code == Some(0) && r.stdout == "granted\n",
            "granted exec: {:?} {:?} {:?}",
            r.code,
            r.stdout,
            r.stderr
        );
        Ok(())
    })
    .await?;
    let token = env
        .kubectl(&["create", "token", "stream-snoop", "-n", NS])?
        .trim()
        .to_string();
    let out = Command::new("curl")
        .args([
            "-sk",
            "--max-time",
            "10",
            "-o",
            "/dev/null",
            "-w",
            "%{http_code}",
        ])
        .args([
            "-X",
            "POST",
            "-H",
            &format!("Authorization: Bearer {token}"),
        ])
        .arg(format!(
            "https://127.0.0.1:{}/exec/{NS}/{}/web?command=true&output=1",
            s.operator.kubelet_port, s.pod
        ))
        .output()
        .context("curl")?;
    let code = String::from_utf8_lossy(&out.stdout).trim().to_string();
    ensure!(
        code == "403",
        "exec straight to the kubelet API without nodes/proxy: {code}"
    );
    println!(
        "exec without pods/exec: refused ({}); with it: ran; straight to the kubelet API without nodes/proxy: {code}",
        denied.stderr.trim()
    );
    Ok(())
}
