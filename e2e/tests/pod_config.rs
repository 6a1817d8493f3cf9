//! Configuration from ConfigMaps and Secrets, end to end (issue 16): env (`valueFrom`,
//! `envFrom`), `configMap`/`secret` volumes with `items`, `defaultMode` and `subPath`, in plain
//! Pods on a virtual node and in a Workload — against a real kube-apiserver, the real operator
//! (with the chart's RBAC) and a real edge-kubelet on the real Docker engine. Containers are
//! looked at as a user does: `kubectl exec`, pod status. Proves kubelet's behaviour (a
//! missing mandatory reference: `CreateContainerConfigError` naming it, then running once it
//! exists; a missing optional one: runs), live updates of mounted files within seconds, that a
//! Secret's value never reaches the edge's state folder or logs and its tmpfs files go with the
//! pod, and the refusals of hostile input.
//!
//! Needs `cargo build --workspace --bins` first.

use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{Context as _, bail, ensure};
use decloud_crds::contracts::{EDGE_TAINT, node_name};
use decloud_e2e::cluster::{
    ContainerSweeper, EdgeProcess, OperatorProcess, busybox_image, pod_ready, wait_providers_ready,
    workload_pods,
};
use decloud_e2e::{TestEnv, eventually, free_port};
use k8s_openapi::api::core::v1::Pod;
use kube::{Api, ResourceExt};

const NS: &str = "default";

struct Scenario {
    env: TestEnv,
    operator: OperatorProcess,
    edge: EdgeProcess,
    _sweeper: ContainerSweeper,
    node: String,
    /// The Secret's value: must show up in containers only.
    secret: String,
}

impl Scenario {
    /// Applies `yaml`, its test image (`decloud-test/busybox:1`) as the registry holds it:
    /// the edge's own engine pulls it (no `Never`: nothing is on a fresh engine).
    fn apply(&self, yaml: &str) -> anyhow::Result<String> {
        let yaml = yaml
            .replace("decloud-test/busybox:1", &busybox_image()?)
            .replace("imagePullPolicy: Never", "imagePullPolicy: IfNotPresent");
        self.env.kubectl_stdin(&["apply", "-f", "-"], &yaml)
    }

    fn exec(&self, pod: &str, script: &str) -> anyhow::Result<String> {
        self.env
            .kubectl(&["exec", pod, "--", "sh", "-c", script])
            .map(|s| s.trim_end().to_string())
    }

    async fn pod(&self, name: &str) -> anyhow::Result<Pod> {
        Ok(Api::<Pod>::namespaced(self.env.client(), NS)
            .get(name)
            .await?)
    }

    async fn wait_ready(&self, name: &str) -> anyhow::Result<()> {
        eventually(Duration::from_secs(60), || async {
            let p = self.pod(name).await?;
            ensure!(pod_ready(&p), "{name} not ready: {:?}", p.status);
            Ok(())
        })
        .await
        .with_context(|| format!("edge log:\n{}", self.edge.child.log_tail(30)))
    }

    /// Waits until `name`'s first container waits with `reason`; its message.
    async fn wait_waiting(&self, name: &str, reason: &str) -> anyhow::Result<String> {
        eventually(Duration::from_secs(60), || async {
            let p = self.pod(name).await?;
            let waiting = p
                .status
                .as_ref()
                .and_then(|s| s.container_statuses.as_ref())
                .and_then(|c| c.first())
                .and_then(|c| c.state.as_ref())
                .and_then(|s| s.waiting.as_ref())
                .cloned();
            match waiting {
                Some(w) if w.reason.as_deref() == Some(reason) => Ok(w.message.unwrap_or_default()),
                other => bail!("{name}: waiting {other:?}"),
            }
        })
        .await
    }

    /// The folder where the edge keeps pods' config files (its tmpfs).
    fn config_dir(&self) -> PathBuf {
        PathBuf::from("/dev/shm/decloud-edge").join(&self.edge.name)
    }

    fn plain_pod(&self, name: &str, spec: &str) -> String {
        format!(
            r#"apiVersion: v1
kind: Pod
metadata: {{name: {name}, namespace: {NS}}}
spec:
  nodeName: {node}
  automountServiceAccountToken: false
  terminationGracePeriodSeconds: 1
  tolerations: [{{key: {EDGE_TAINT}, operator: Exists, effect: NoSchedule}}]
{spec}"#,
            node = self.node
        )
    }
}

/// A container that idles until told to stop, with `extra` (YAML, indented 4) added.
fn idle_container(extra: &str) -> String {
    format!(
        r#"  containers:
  - name: main
    image: decloud-test/busybox:1
    imagePullPolicy: Never
    command: ["/bin/sh", "-c", "trap 'exit 0' TERM; while true; do sleep 1; done"]
    resources: {{limits: {{cpu: 200m, memory: 32Mi}}}}
{extra}"#
    )
}

async fn start() -> anyhow::Result<Scenario> {
    let env = TestEnv::start().await?;
    busybox_image()?;
    let name = format!("cfg-{}", std::process::id());
    let node = node_name(&name);
    let sweeper = ContainerSweeper::new(&env, std::slice::from_ref(&node));
    let gateway_listen = format!("127.0.0.1:{}", free_port()?);
    let operator = OperatorProcess::start(
        &env,
        &["--gateway-listen", &gateway_listen, "--identity", "e2e-cfg"],
    )
    .await?;
    let edge = EdgeProcess::start(&env, &operator, &name, &[])?;
    wait_providers_ready(&env.client(), &operator, std::slice::from_ref(&name)).await?;
    let secret = format!("s3cr3t-{}-{:08x}", std::process::id(), rand_u32());
    Ok(Scenario {
        env,
        operator,
        edge,
        _sweeper: sweeper,
        node,
        secret,
    })
}

fn rand_u32() -> u32 {
    let t = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap_or_default();
    t.subsec_nanos() ^ (t.as_secs() as u32)
}

/// Whether any file under `dir` contains `needle`.
fn found_in(dir: &Path, needle: &[u8]) -> Vec<PathBuf> {
    let mut out = Vec::new();
    let Ok(entries) = std::fs::read_dir(dir) else {
        return out;
    };
    for e in entries.flatten() {
        let path = e.path();
        let Ok(meta) = std::fs::symlink_metadata(&path) else {
            continue;
        };
        if meta.is_dir() {
            out.extend(found_in(&path, needle));
        } else if meta.is_file()
            && let Ok(data) = std::fs::read(&path)
            && data.windows(needle.len()).any(|w| w == needle)
        {
            out.push(path);
        }
    }
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn pods_get_configuration_from_config_maps_and_secrets() -> anyhow::Result<()> {
    let s = start().await?;
    s.apply(&format!(
        r#"apiVersion: v1
kind: ConfigMap
metadata: {{name: app-config, namespace: {NS}}}
data: {{greeting: hello, app.conf: "mode=one"}}
---
apiVersion: v1
kind: Secret
metadata: {{name: app-secret, namespace: {NS}}}
stringData: {{password: {secret}, token: tok}}
"#,
        secret = s.secret
    ))?;

    plain_pod_reads_env_and_files(&s).await?;
    live_updates_reach_the_files(&s).await?;
    missing_mandatory_waits_then_runs(&s).await?;
    workload_template_carries_configuration(&s).await?;
    hostile_input_is_refused(&s).await?;
    empty_dirs_are_shared_and_bounded(&s).await?;
    liveness_failures_restart_the_container(&s).await?;
    startup_probe_gates_liveness_and_readiness(&s).await?;
    security_context_subset_applies(&s).await?;
    secret_stays_out_of_the_edge_state_and_logs(&s).await?;
    files_go_with_the_pod(&s).await?;

    if s.operator.warnings().iter().any(|w| w.contains("panicked")) {
        bail!("the operator panicked");
    }
    Ok(())
}

async fn plain_pod_reads_env_and_files(s: &Scenario) -> anyhow::Result<()> {
    let mounts = r#"    env:
    - {name: GREETING, valueFrom: {configMapKeyRef: {name: app-config, key: greeting}}}
    - {name: PASSWORD, valueFrom: {secretKeyRef: {name: app-secret, key: password}}}
    - {name: MAYBE, valueFrom: {secretKeyRef: {name: absent, key: k, optional: true}}}
    - {name: LITERAL, value: lit}
    envFrom:
    - {configMapRef: {name: app-config}, prefix: CM_}
    - {secretRef: {name: also-absent, optional: true}}
    volumeMounts:
    - {name: conf, mountPath: /etc/app}
    - {name: sec, mountPath: /etc/secret, readOnly: true}
    - {name: conf, mountPath: /etc/single.conf, subPath: sub/app.conf}
    - {name: opt, mountPath: /etc/opt-absent}"#;
    let spec = format!(
        r#"  volumes:
  - {{name: conf, configMap: {{name: app-config, items: [{{key: app.conf, path: sub/app.conf, mode: 0600}}, {{key: greeting, path: greeting}}]}}}}
  - {{name: sec, secret: {{secretName: app-secret, defaultMode: 0400}}}}
  - {{name: opt, configMap: {{name: absent-config, optional: true}}}}
{}"#,
        idle_container(mounts)
    );
    s.apply(&s.plain_pod("cfg-plain", &spec))?;
    s.wait_ready("cfg-plain").await?;
    let env = s.exec(
        "cfg-plain",
        "echo \"$GREETING|$PASSWORD|$CM_greeting|${MAYBE-unset}|$LITERAL\"",
    )?;
    ensure!(
        env == format!("hello|{}|hello|unset|lit", s.secret),
        "env: {env:?}"
    );
    let files = s.exec(
        "cfg-plain",
        "cat /etc/app/sub/app.conf; echo; stat -L -c %a /etc/app/sub/app.conf; \
         cat /etc/app/greeting; echo; stat -L -c %a /etc/app/greeting; \
         cat /etc/secret/password; echo; stat -L -c %a /etc/secret/password; \
         cat /etc/single.conf; echo; ls /etc/opt-absent | wc -l",
    )?;
    let want = format!("mode=one\n600\nhello\n644\n{}\n400\nmode=one\n0", s.secret);
    ensure!(files == want, "files:\n{files}\nwant:\n{want}");
    // configMap and secret volumes are read-only, as with kubelet.
    let write = s.exec(
        "cfg-plain",
        "if echo x > /etc/app/new 2>/dev/null; then echo wrote; else echo refused; fi",
    )?;
    ensure!(write == "refused", "write into a configMap volume: {write}");
    println!("plain pod: env from ConfigMap/Secret/envFrom, items, modes, subPath: ok");
    Ok(())
}

async fn live_updates_reach_the_files(s: &Scenario) -> anyhow::Result<()> {
    s.env.kubectl(&[
        "patch",
        "configmap",
        "app-config",
        "--type",
        "merge",
        "-p",
        r#"{"data":{"app.conf":"mode=two"}}"#,
    ])?;
    let started = std::time::Instant::now();
    eventually(Duration::from_secs(20), || async {
        let now = s.exec("cfg-plain", "cat /etc/app/sub/app.conf")?;
        ensure!(now == "mode=two", "still {now:?}");
        Ok(())
    })
    .await
    .context("the ConfigMap edit never reached the mounted file")?;
    println!(
        "ConfigMap edit visible in the running container after {:?}",
        started.elapsed()
    );
    // A subPath mount is a copy, as in kubelet: it does not follow.
    let single = s.exec("cfg-plain", "cat /etc/single.conf")?;
    ensure!(
        single == "mode=one",
        "subPath followed the update: {single}"
    );
    Ok(())
}

async fn missing_mandatory_waits_then_runs(s: &Scenario) -> anyhow::Result<()> {
    let extra = r#"    env:
    - {name: LATER, valueFrom: {secretKeyRef: {name: later-secret, key: k}}}"#;
    s.apply(&s.plain_pod("cfg-missing", &idle_container(extra)))?;
    let message = s
        .wait_waiting("cfg-missing", "CreateContainerConfigError")
        .await?;
    ensure!(
        message.contains("secret \"later-secret\" not found"),
        "message: {message}"
    );
    let events = s.env.kubectl(&[
        "get",
        "events",
        "--field-selector",
        "involvedObject.name=cfg-missing",
        "-o",
        "jsonpath={range .items[*]}{.reason}: {.message}{\"\\n\"}{end}",
    ])?;
    println!("cfg-missing: {message}; events:\n{events}");
    // A key missing in an existing Secret names the key.
    s.apply(&format!(
        "apiVersion: v1\nkind: Secret\nmetadata: {{name: later-secret, namespace: {NS}}}\nstringData: {{other: x}}\n"
    ))?;
    let message = eventually(Duration::from_secs(30), || async {
        let m = s
            .wait_waiting("cfg-missing", "CreateContainerConfigError")
            .await?;
        ensure!(m.contains("couldn't find key k"), "{m}");
        Ok(m)
    })
    .await?;
    println!("cfg-missing: {message}");
    s.apply(&format!(
        "apiVersion: v1\nkind: Secret\nmetadata: {{name: later-secret, namespace: {NS}}}\nstringData: {{k: now-here}}\n"
    ))?;
    s.wait_ready("cfg-missing").await?;
    let v = s.exec("cfg-missing", "echo $LATER")?;
    ensure!(v == "now-here", "LATER={v}");
    s.env
        .kubectl(&["delete", "pod", "cfg-missing", "--wait=false"])?;
    Ok(())
}

async fn workload_template_carries_configuration(s: &Scenario) -> anyhow::Result<()> {
    s.apply(&format!(
        r#"apiVersion: decloud.dev/v1alpha1
kind: Workload
metadata: {{name: cfg-wl, namespace: {NS}}}
spec:
  replicas: 1
  template:
    spec:
      terminationGracePeriodSeconds: 1
      volumes:
      - {{name: conf, configMap: {{name: app-config, defaultMode: 0640}}}}
      - {{name: sec, secret: {{secretName: app-secret, items: [{{key: token, path: t/token}}]}}}}
      containers:
      - name: main
        image: decloud-test/busybox:1
        imagePullPolicy: Never
        command: ["/bin/sh", "-c", "trap 'exit 0' TERM; while true; do sleep 1; done"]
        resources: {{limits: {{cpu: 200m, memory: 32Mi}}}}
        env:
        - {{name: PASSWORD, valueFrom: {{secretKeyRef: {{name: app-secret, key: password}}}}}}
        envFrom:
        - {{secretRef: {{name: app-secret}}, prefix: S_}}
        volumeMounts:
        - {{name: conf, mountPath: /etc/app}}
        - {{name: sec, mountPath: /etc/sec}}
        - {{name: conf, mountPath: /greeting.txt, subPath: greeting}}
"#
    ))?;
    let client = s.env.client();
    let pod = eventually(Duration::from_secs(60), || async {
        let pods = workload_pods(&client, NS, "cfg-wl").await?;
        let Some(p) = pods.iter().find(|p| pod_ready(p)) else {
            bail!("cfg-wl not ready");
        };
        Ok(p.name_any())
    })
    .await
    .with_context(|| format!("edge log:\n{}", s.edge.child.log_tail(30)))?;
    let out = s.exec(
        &pod,
        "echo \"$PASSWORD|$S_token\"; cat /etc/app/greeting; echo; stat -L -c %a /etc/app/greeting; \
         cat /etc/sec/t/token; echo; cat /greeting.txt",
    )?;
    let want = format!("{}|tok\nhello\n640\ntok\nhello", s.secret);
    ensure!(out == want, "workload pod:\n{out}\nwant:\n{want}");
    println!("Workload template: env, envFrom, volumes, items, defaultMode, subPath: ok");
    s.env.kubectl(&["delete", "wl", "cfg-wl", "--wait=false"])?;
    Ok(())
}

async fn hostile_input_is_refused(s: &Scenario) -> anyhow::Result<()> {
    // At `kubectl apply` time, by the Workload schema.
    let wl = |volumes: &str, mounts: &str| {
        format!(
            r#"apiVersion: decloud.dev/v1alpha1
kind: Workload
metadata: {{name: cfg-hostile, namespace: {NS}}}
spec:
  template:
    spec:
      volumes: {volumes}
      containers:
      - name: main
        image: decloud-test/busybox:1
        volumeMounts: {mounts}
"#
        )
    };
    let many: Vec<String> = (0..33)
        .map(|i| format!("{{name: v{i}, emptyDir: {{}}}}"))
        .collect();
    let cases = [
        (
            wl(
                "[{name: c, configMap: {name: app-config, items: [{key: greeting, path: ../../etc/passwd}]}}]",
                "[]",
            ),
            "must be a relative path without '..'",
        ),
        (
            wl(
                "[{name: c, configMap: {name: app-config}}]",
                "[{name: c, mountPath: /x, subPath: ../../..}]",
            ),
            "must be a relative path without '..'",
        ),
        (
            wl(
                "[{name: c, configMap: {name: app-config, defaultMode: 4095}}]",
                "[]",
            ),
            "defaultMode",
        ),
        (wl("[{name: h, hostPath: {path: /}}]", "[]"), "hostPath"),
        (wl(&format!("[{}]", many.join(", ")), "[]"), "32"),
        (
            wl("[]", "[{name: nope, mountPath: /x}]"),
            "every volumeMount must name one of the pod's volumes",
        ),
    ];
    for (yaml, want) in cases {
        match s.apply(&yaml) {
            Ok(out) => bail!("accepted a hostile Workload ({want}): {out}"),
            Err(e) => ensure!(format!("{e:#}").contains(want), "{e:#} lacks {want:?}"),
        }
    }
    // Plain pods the API server accepts but an edge must not take: more objects than an edge
    // serves, refused by the operator.
    let vols: Vec<String> = (0..33)
        .map(|i| format!("  - {{name: v{i}, configMap: {{name: cm{i}, optional: true}}}}"))
        .collect();
    s.apply(&s.plain_pod(
        "cfg-many",
        &format!("  volumes:\n{}\n{}", vols.join("\n"), idle_container("")),
    ))?;
    let status = eventually(Duration::from_secs(30), || async {
        let p = s.pod("cfg-many").await?;
        let st = p.status.unwrap_or_default();
        ensure!(st.phase.as_deref() == Some("Failed"), "{st:?}");
        Ok(st)
    })
    .await?;
    ensure!(
        status.reason.as_deref() == Some("Unsupported")
            && status
                .message
                .as_deref()
                .unwrap_or_default()
                .contains("at most 32"),
        "{status:?}"
    );
    // Configuration larger than an edge takes (three Secrets of 700 KiB each): the container
    // waits with CreateContainerConfigError saying so; nothing is sent.
    let big = "A".repeat(700 * 1024);
    for i in 0..3 {
        // `create`, not `apply`: apply would copy it into an annotation (at most 256 KiB).
        s.env.kubectl_stdin(
            &["create", "-f", "-"],
            &format!(
                "apiVersion: v1\nkind: Secret\nmetadata: {{name: big-{i}, namespace: {NS}}}\nstringData: {{v: {big}}}\n"
            ),
        )?;
    }
    let spec = format!(
        "  volumes:\n  - {{name: a, secret: {{secretName: big-0}}}}\n  - {{name: b, secret: {{secretName: big-1}}}}\n  - {{name: c, secret: {{secretName: big-2}}}}\n{}",
        idle_container(
            "    volumeMounts: [{name: a, mountPath: /a}, {name: b, mountPath: /b}, {name: c, mountPath: /c}]"
        )
    );
    s.apply(&s.plain_pod("cfg-big", &spec))?;
    let message = s
        .wait_waiting("cfg-big", "CreateContainerConfigError")
        .await?;
    ensure!(message.contains("an edge takes at most"), "{message}");
    println!("hostile input refused (schema, operator, size): ok; cfg-big: {message}");
    s.env
        .kubectl(&["delete", "pod", "cfg-many", "cfg-big", "--wait=false"])?;
    Ok(())
}

async fn empty_dirs_are_shared_and_bounded(s: &Scenario) -> anyhow::Result<()> {
    let idle = "trap 'exit 0' TERM; while true; do sleep 1; done";
    let spec = format!(
        r#"  volumes:
  - {{name: scratch, emptyDir: {{sizeLimit: 1Mi}}}}
  - {{name: ram, emptyDir: {{medium: Memory, sizeLimit: 4Mi}}}}
  containers:
  - name: a
    image: decloud-test/busybox:1
    imagePullPolicy: Never
    command: ["/bin/sh", "-c", "{idle}"]
    resources: {{limits: {{cpu: 200m, memory: 32Mi}}}}
    volumeMounts: [{{name: scratch, mountPath: /scratch}}, {{name: ram, mountPath: /ram}}]
  - name: b
    image: decloud-test/busybox:1
    imagePullPolicy: Never
    command: ["/bin/sh", "-c", "{idle}"]
    resources: {{limits: {{cpu: 200m, memory: 32Mi}}}}
    volumeMounts: [{{name: scratch, mountPath: /data, subPath: shared}}, {{name: ram, mountPath: /ram, readOnly: true}}]
"#
    );
    s.apply(&s.plain_pod("cfg-empty", &spec))?;
    s.wait_ready("cfg-empty").await?;
    let exec_in = |container: &str, script: &str| {
        s.env
            .kubectl(&[
                "exec",
                "cfg-empty",
                "-c",
                container,
                "--",
                "sh",
                "-c",
                script,
            ])
            .map(|o| o.trim_end().to_string())
    };
    exec_in("a", "echo from-a > /scratch/shared/note; echo mem > /ram/m")?;
    let seen = exec_in(
        "b",
        "cat /data/note /ram/m; if echo x > /ram/x 2>/dev/null; then echo wrote; else echo ro; fi",
    )?;
    ensure!(
        seen == "from-a
mem
ro",
        "container b sees: {seen:?}"
    );
    // Past its sizeLimit: evicted as kubelet does it.
    exec_in(
        "a",
        "dd if=/dev/zero of=/scratch/big bs=1024 count=2048 2>/dev/null; sync; echo done",
    )?;
    let status = eventually(Duration::from_secs(60), || async {
        let st = s.pod("cfg-empty").await?.status.unwrap_or_default();
        ensure!(
            st.phase.as_deref() == Some("Failed"),
            "{:?} {:?}",
            st.phase,
            st.reason
        );
        Ok(st)
    })
    .await?;
    let message = status.message.clone().unwrap_or_default();
    ensure!(
        status.reason.as_deref() == Some("Evicted")
            && message.contains("Usage of EmptyDir volume \"scratch\" exceeds the limit \"1Mi\""),
        "{status:?}"
    );
    println!(
        "emptyDir shared between containers, read-only mount, evicted past sizeLimit: {message}"
    );
    s.env
        .kubectl(&["delete", "pod", "cfg-empty", "--wait=false"])?;
    Ok(())
}

fn container_status(p: &Pod) -> Option<k8s_openapi::api::core::v1::ContainerStatus> {
    p.status
        .as_ref()?
        .container_statuses
        .as_ref()?
        .first()
        .cloned()
}

fn events_of(s: &Scenario, pod: &str) -> anyhow::Result<String> {
    s.env.kubectl(&[
        "get",
        "events",
        "--field-selector",
        &format!("involvedObject.name={pod}"),
        "-o",
        "jsonpath={range .items[*]}{.reason}: {.message}{\"\\n\"}{end}",
    ])
}

async fn liveness_failures_restart_the_container(s: &Scenario) -> anyhow::Result<()> {
    // Healthy for 3 s after each start, then not: killed and restarted, again and again.
    let extra = r#"    livenessProbe: {exec: {command: [cat, /tmp/healthy]}, periodSeconds: 1, failureThreshold: 2}"#;
    let spec = idle_container(extra).replace(
        "trap 'exit 0' TERM; while true; do sleep 1; done",
        "touch /tmp/healthy; (sleep 3; rm -f /tmp/healthy) & trap 'exit 0' TERM; while true; do sleep 1; done",
    );
    s.apply(&s.plain_pod("cfg-live", &spec))?;
    let status = eventually(Duration::from_secs(90), || async {
        let p = s.pod("cfg-live").await?;
        let c = container_status(&p).context("no container status")?;
        ensure!(c.restart_count >= 1, "restartCount {}", c.restart_count);
        ensure!(
            c.last_state
                .as_ref()
                .and_then(|l| l.terminated.as_ref())
                .is_some(),
            "no lastState: {:?}",
            c.last_state
        );
        Ok(c)
    })
    .await
    .with_context(|| format!("edge log:\n{}", s.edge.child.log_tail(30)))?;
    let events = eventually(Duration::from_secs(30), || async {
        let e = events_of(s, "cfg-live")?;
        ensure!(
            e.contains("Unhealthy: Liveness probe failed")
                && e.contains("Killing: Container main failed liveness probe, will be restarted"),
            "events:\n{e}"
        );
        Ok(e)
    })
    .await?;
    println!(
        "liveness: restartCount {}, lastState {:?}; events:\n{events}",
        status.restart_count,
        status
            .last_state
            .and_then(|l| l.terminated)
            .map(|t| (t.exit_code, t.reason))
    );
    s.env
        .kubectl(&["delete", "pod", "cfg-live", "--wait=false"])?;
    Ok(())
}

async fn startup_probe_gates_liveness_and_readiness(s: &Scenario) -> anyhow::Result<()> {
    // Up only after 5 s. A liveness probe that would kill it at once must wait for the startup
    // probe, and so must readiness.
    let extra = r#"    startupProbe: {exec: {command: [test, -f, /tmp/up]}, periodSeconds: 1, failureThreshold: 30}
    livenessProbe: {exec: {command: [test, -f, /tmp/up]}, periodSeconds: 1, failureThreshold: 1}
    readinessProbe: {exec: {command: ["true"]}, periodSeconds: 1}"#;
    let spec = idle_container(extra).replace(
        "trap 'exit 0' TERM; while true; do sleep 1; done",
        "(sleep 5; touch /tmp/up) & trap 'exit 0' TERM; while true; do sleep 1; done",
    );
    s.apply(&s.plain_pod("cfg-startup", &spec))?;
    // Running but not started, nor ready, for a while.
    eventually(Duration::from_secs(30), || async {
        let p = s.pod("cfg-startup").await?;
        let c = container_status(&p).context("no container status")?;
        ensure!(
            c.state
                .as_ref()
                .and_then(|st| st.running.as_ref())
                .is_some(),
            "not running yet"
        );
        ensure!(
            c.started == Some(false) && !c.ready,
            "started {:?} ready {}",
            c.started,
            c.ready
        );
        Ok(())
    })
    .await?;
    s.wait_ready("cfg-startup").await?;
    let p = s.pod("cfg-startup").await?;
    let c = container_status(&p).context("no container status")?;
    ensure!(
        c.started == Some(true) && c.restart_count == 0,
        "started {:?}, restartCount {} (liveness ran before startup passed?)",
        c.started,
        c.restart_count
    );
    println!("startup probe gated readiness and liveness: started, ready, no restart");
    s.env
        .kubectl(&["delete", "pod", "cfg-startup", "--wait=false"])?;
    Ok(())
}

async fn security_context_subset_applies(s: &Scenario) -> anyhow::Result<()> {
    let spec = format!(
        "  securityContext: {{runAsUser: 1000, runAsGroup: 3000}}\n  volumes: [{{name: tmp, emptyDir: {{}}}}]\n{}",
        idle_container(
            "    securityContext: {readOnlyRootFilesystem: true, runAsNonRoot: true}\n    volumeMounts: [{name: tmp, mountPath: /tmp}]"
        )
    );
    s.apply(&s.plain_pod("cfg-user", &spec))?;
    s.wait_ready("cfg-user").await?;
    let out = s.exec(
        "cfg-user",
        "id -u; id -g; if touch /x 2>/dev/null; then echo wrote; else echo ro; fi; touch /tmp/ok && echo tmp-ok",
    )?;
    ensure!(out == "1000\n3000\nro\ntmp-ok", "cfg-user:\n{out}");
    // runAsNonRoot with an image that runs as root: refused before it starts, as kubelet does.
    let extra = "    securityContext: {runAsNonRoot: true}";
    s.apply(&s.plain_pod("cfg-nonroot", &idle_container(extra)))?;
    let message = s
        .wait_waiting("cfg-nonroot", "CreateContainerConfigError")
        .await?;
    ensure!(
        message.contains("container has runAsNonRoot and image will run as root"),
        "{message}"
    );
    // Ids beyond Kubernetes' range are the API server's to refuse; the Workload schema too.
    let wl = format!(
        "apiVersion: decloud.dev/v1alpha1\nkind: Workload\nmetadata: {{name: cfg-bad-id, namespace: {NS}}}\nspec:\n  template:\n    spec:\n      containers:\n      - {{name: main, image: decloud-test/busybox:1, securityContext: {{runAsUser: 4294967296}}}}\n"
    );
    ensure!(
        s.apply(&wl).is_err(),
        "a Workload with runAsUser 2^32 was accepted"
    );
    let wl = wl.replace("runAsUser: 4294967296", "privileged: true");
    ensure!(
        s.apply(&wl).is_err(),
        "a Workload asking for privileged was accepted"
    );
    println!(
        "securityContext: runAsUser/runAsGroup, readOnlyRootFilesystem, runAsNonRoot: {message}"
    );
    s.env
        .kubectl(&["delete", "pod", "cfg-user", "cfg-nonroot", "--wait=false"])?;
    Ok(())
}

async fn secret_stays_out_of_the_edge_state_and_logs(s: &Scenario) -> anyhow::Result<()> {
    let needle = s.secret.as_bytes();
    let in_state = found_in(&s.edge.state_dir, needle);
    ensure!(
        in_state.is_empty(),
        "the Secret's value is in the edge's state folder: {in_state:?}"
    );
    let log = std::fs::read(s.edge.log()).unwrap_or_default();
    ensure!(
        !log.windows(needle.len()).any(|w| w == needle),
        "the Secret's value is in the edge's log"
    );
    let log = std::fs::read(s.operator.child.log_path()).unwrap_or_default();
    ensure!(
        !log.windows(needle.len()).any(|w| w == needle),
        "the Secret's value is in the operator's log"
    );
    // It is on the edge's tmpfs, and only there.
    let on_tmpfs = found_in(&s.config_dir(), needle);
    ensure!(
        !on_tmpfs.is_empty(),
        "the Secret volume's file is not under {}",
        s.config_dir().display()
    );
    println!(
        "the Secret's value: not in the state folder, edge log or operator log; on tmpfs at {:?}",
        on_tmpfs
    );
    Ok(())
}

async fn files_go_with_the_pod(s: &Scenario) -> anyhow::Result<()> {
    let uid = s.pod("cfg-plain").await?.uid().unwrap_or_default();
    let dir = s.config_dir().join(&uid);
    ensure!(dir.exists(), "{} missing while the pod runs", dir.display());
    s.env
        .kubectl(&["delete", "pod", "cfg-plain", "--wait=true"])?;
    eventually(Duration::from_secs(30), || async {
        ensure!(!dir.exists(), "{} still there", dir.display());
        Ok(())
    })
    .await?;
    println!("the pod's config files went with it");
    Ok(())
}
