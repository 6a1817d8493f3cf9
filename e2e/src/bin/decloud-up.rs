//! `decloud-up`: brings up a working local DeCloud and runs its demo.
//!
//! With no cluster given it starts a real etcd and kube-apiserver on loopback (the e2e control
//! plane), installs the CRDs, starts the operator and `--edges` edge-kubelet providers, each on
//! a Docker engine of its own (a `dockerd` this program starts and stops), pulling the demo
//! image from a loopback registry it runs, applies the demo Workload and waits until it is
//! ready. It then prints the kubeconfig to use and keeps everything running until Ctrl-C,
//! which stops the engines, sweeps what they ran and removes their folders; an engine that
//! already ran on the machine is never touched.

use std::{
    path::{Path, PathBuf},
    process::Command,
    time::{Duration, Instant},
};

use anyhow::{Context, bail};
use clap::Parser;
use decloud_e2e::engine::Engines;
use decloud_e2e::{ChildGuard, TestEnv, binary, eventually, free_port, repo_root};

/// Bring up a local DeCloud: control plane, operator, providers and a demo Workload.
#[derive(Parser, Debug)]
#[command(version, about, long_about = None)]
struct Args {
    /// Use this cluster instead of starting a local control plane (CRDs are applied to it).
    #[arg(long, env = "DECLOUD_KUBECONFIG")]
    kubeconfig: Option<PathBuf>,
    /// Number of edge-kubelet providers to start, each on a Docker engine of its own.
    #[arg(long, default_value_t = 2, value_parser = clap::value_parser!(u16).range(1..=20))]
    edges: u16,
    /// Workload manifest to apply as the demo.
    #[arg(long, default_value = "examples/hello-workload.yaml")]
    workload: PathBuf,
    /// Skip the demo Workload.
    #[arg(long)]
    no_demo: bool,
    /// Tear everything down once the demo is ready instead of waiting for Ctrl-C (for tests).
    #[arg(long)]
    exit_when_ready: bool,
    /// Port of the public HTTP gateway on 127.0.0.1 (0: any free port).
    #[arg(long, default_value_t = 8080)]
    gateway_port: u16,
    /// How long to wait for the demo to become ready.
    #[arg(long, default_value = "120s", value_parser = humantime_secs)]
    timeout: Duration,
}

fn humantime_secs(s: &str) -> Result<Duration, String> {
    let n = s.trim_end_matches('s');
    n.parse::<u64>()
        .map(Duration::from_secs)
        .map_err(|_| format!("{s:?} is not a number of seconds such as 120s"))
}

struct Step {
    n: usize,
    of: usize,
    started: Instant,
}

impl Step {
    fn next(&mut self, what: &str) {
        self.n += 1;
        eprintln!(
            "[{}/{}] {what} (t+{:.1}s)",
            self.n,
            self.of,
            self.started.elapsed().as_secs_f64()
        );
    }
}

fn kubectl(bin: &Path, kubeconfig: &Path, args: &[&str]) -> anyhow::Result<String> {
    let out = Command::new(bin)
        .env("KUBECONFIG", kubeconfig)
        .args(args)
        .output()
        .context("running kubectl")?;
    if !out.status.success() {
        bail!(
            "kubectl {}: {}",
            args.join(" "),
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    // Outside `up`: a Ctrl-C at any step still stops the engines and removes their roots.
    let engines = std::sync::Arc::new(Engines::default());
    let res = tokio::select! {
        res = up(args, &engines) => res,
        _ = tokio::signal::ctrl_c() => {
            eprintln!("interrupted: tearing down");
            Ok(())
        }
    };
    let n = engines.all().len();
    engines.stop_all();
    eprintln!("stopped {n} Docker engines of our own and removed their folders");
    res
}

async fn up(args: Args, engines: &std::sync::Arc<Engines>) -> anyhow::Result<()> {
    let mut step = Step {
        n: 0,
        of: if args.no_demo { 4 } else { 6 },
        started: Instant::now(),
    };
    let root = repo_root();

    step.next("control plane");
    let (env, kubeconfig, kubectl_bin, scratch) = match &args.kubeconfig {
        Some(kc) => {
            let kubectl_bin = decloud_e2e::k8s_bin_dir()?.join("kubectl");
            let crds = root.join("crds/decloud.yaml");
            kubectl(
                &kubectl_bin,
                kc,
                &["apply", "--server-side", "-f", &crds.to_string_lossy()],
            )?;
            let scratch = tempfile::Builder::new()
                .prefix("decloud-up-")
                .tempdir()?
                .keep();
            eprintln!("      using the cluster of {}", kc.display());
            (None, kc.clone(), kubectl_bin, scratch)
        }
        None => {
            let env = TestEnv::start().await?;
            eprintln!(
                "      etcd + kube-apiserver {} on https://127.0.0.1:{}; CRDs installed",
                kubectl(
                    &env.bin_dir().join("kubectl"),
                    env.kubeconfig(),
                    &["version", "-o", "yaml"]
                )
                .ok()
                .and_then(|v| v
                    .lines()
                    .skip_while(|l| !l.starts_with("serverVersion"))
                    .find(|l| l.contains("gitVersion"))
                    .map(|l| l
                        .trim()
                        .trim_start_matches("gitVersion:")
                        .trim()
                        .to_string()))
                .unwrap_or_default(),
                env.api_port()
            );
            let kc = env.kubeconfig().to_path_buf();
            let kubectl_bin = env.bin_dir().join("kubectl");
            let scratch = env.dir().to_path_buf();
            (Some(env), kc, kubectl_bin, scratch)
        }
    };

    step.next("operator (edge gRPC over TLS) and a join token");
    // Also makes the operator's CA (kept in the cluster), which the operator then serves with.
    let (join_token, ca_hash) = decloud_e2e::cluster::create_join_token(&kubeconfig, "24h")
        .context("creating a join token")?;
    let edge_port = free_port()?;
    let metrics_port = free_port()?;
    let kubelet_port = free_port()?;
    let gateway_port = match args.gateway_port {
        0 => free_port()?,
        p if std::net::TcpListener::bind(("127.0.0.1", p)).is_ok() => p,
        p => {
            let free = free_port()?;
            eprintln!("      port {p} is taken; the gateway uses {free} instead");
            free
        }
    };
    let node_address = match decloud_e2e::node_address() {
        Ok(a) => a,
        Err(e) => {
            eprintln!("      {e:#}; nodes are advertised at 127.0.0.1 (no node proxy)");
            std::net::IpAddr::from([127, 0, 0, 1])
        }
    };
    let mut op = Command::new(binary("decloud-operator")?);
    op.env("KUBECONFIG", &kubeconfig)
        .env(
            "RUST_LOG",
            std::env::var("RUST_LOG").unwrap_or("info".into()),
        )
        .args(["run", "--edge-listen", &format!("127.0.0.1:{edge_port}")])
        .args(["--metrics-listen", &format!("127.0.0.1:{metrics_port}")])
        .args(["--kubelet-port", &kubelet_port.to_string()])
        // Nodes at a routable address: `kubectl get --raw /api/v1/nodes/<node>/proxy/pods`
        // works (the API server refuses to proxy to loopback).
        .args(["--node-address", &node_address.to_string()])
        .args(["--gateway-listen", &format!("127.0.0.1:{gateway_port}")])
        .args(["--url-template", &format!("http://{{host}}:{gateway_port}")]);
    // The local API server's kubelet client certificate is signed by this CA.
    if let Some(env) = &env {
        op.arg("--kubelet-client-ca").arg(env.kubelet_client_ca());
    }
    let mut operator = ChildGuard::spawn("decloud-operator", op, &scratch.join("operator.log"))?;
    eventually(Duration::from_secs(30), || {
        let running = operator.check_running();
        async move {
            running?;
            std::net::TcpStream::connect(("127.0.0.1", edge_port))?;
            Ok(())
        }
    })
    .await
    .context("the operator did not start listening for edges")?;
    let edge_url = format!("https://127.0.0.1:{edge_port}");
    eprintln!("      edges dial {edge_url}; metrics on http://127.0.0.1:{metrics_port}/metrics");
    eprintln!(
        "      join another provider: edge-kubelet run --operator {edge_url} --token {join_token} --ca-hash {ca_hash} --name <machine-name>"
    );

    step.next(&format!(
        "{} edge-kubelet providers, each on a Docker engine of its own",
        args.edges
    ));
    // Built with the machine's engine, pushed to our loopback registry; the edges pull it.
    let image = decloud_e2e::cluster::busybox_image().context("the demo image")?;
    let registry = decloud_e2e::registry::registry()?;
    eprintln!(
        "      registry http://{} (storage {}); demo image {image}",
        registry.host(),
        registry.dir().display()
    );
    let allowed = decloud_e2e::registry::allowed_registries()?;
    let mut edges = Vec::new();
    for i in 1..=args.edges {
        let name = format!("local-{i}");
        let state = scratch.join(format!("edge-{name}"));
        std::fs::create_dir_all(&state)?;
        let engine = engines.get(&name)?;
        eprintln!(
            "      {name}: dockerd on {} (pool {})",
            engine.host(),
            engine.pool_range()
        );
        let mut cmd = Command::new(binary("edge-kubelet")?);
        cmd.env(
            "RUST_LOG",
            std::env::var("RUST_LOG").unwrap_or("info".into()),
        )
        .args(["run", "--operator", &edge_url])
        .args(["--token", &join_token, "--ca-hash", &ca_hash])
        .args(["--name", &name])
        .args(["--label", "topology.kubernetes.io/region=local"])
        .args(["--docker-host", &engine.host()])
        .args(["--allow-registry", &allowed])
        .args(["--state-dir", &state.to_string_lossy()]);
        edges.push(ChildGuard::spawn(
            &name,
            cmd,
            &scratch.join(format!("{name}.log")),
        )?);
    }
    eventually(Duration::from_secs(60), || {
        let out = kubectl(
            &kubectl_bin,
            &kubeconfig,
            &["get", "prov", "-o", "jsonpath={.items[*].status.phase}"],
        );
        let want = args.edges as usize;
        async move {
            let out = out?;
            let ready = out.split_whitespace().filter(|p| *p == "Ready").count();
            if ready < want {
                bail!("{ready}/{want} providers Ready");
            }
            Ok(())
        }
    })
    .await
    .context("providers did not become Ready")?;
    eprintln!("      {} providers Ready", args.edges);

    let mut curl_lines = Vec::new();
    if !args.no_demo {
        step.next(&format!("demo Workload {}", args.workload.display()));
        // The example names the test image as built locally; here it comes from our registry.
        let text = std::fs::read_to_string(root.join(&args.workload))
            .with_context(|| format!("reading {}", args.workload.display()))?;
        let manifest = scratch.join("demo-workload.yaml");
        std::fs::write(&manifest, text.replace("decloud-test/busybox:1", &image))?;
        kubectl(
            &kubectl_bin,
            &kubeconfig,
            &["apply", "-f", &manifest.to_string_lossy()],
        )?;

        step.next("waiting for every replica to be ready");
        let last = eventually(args.timeout, || {
            let out = kubectl(
                &kubectl_bin,
                &kubeconfig,
                &[
                    "get",
                    "wl",
                    "-o",
                    "jsonpath={range .items[*]}{.metadata.name} {.spec.replicas} {.status.readyReplicas} {.status.url}{\"\\n\"}{end}",
                ],
            );
            async move {
                let out = out?;
                for line in out.lines() {
                    let f: Vec<&str> = line.split_whitespace().collect();
                    if f.len() < 3 || f[1] != f[2] {
                        bail!("not ready yet: {line}");
                    }
                }
                Ok(out)
            }
        })
        .await
        .context("the demo Workload did not become ready")?;
        for line in last.lines() {
            let f: Vec<&str> = line.split_whitespace().collect();
            if let Some(url) = f.get(3) {
                eprintln!("      {} is ready: {url}", f[0]);
                // Prove it the way a user would: through the gateway, by host name.
                let host = url
                    .trim_start_matches("http://")
                    .split([':', '/'])
                    .next()
                    .unwrap_or_default()
                    .to_string();
                let (code, body) = eventually(Duration::from_secs(20), || {
                    let host = host.clone();
                    async move {
                        let (code, body) =
                            decloud_e2e::cluster::http_get_host(gateway_port, &host, "/").await?;
                        if code != 200 {
                            bail!("gateway answered {code}: {body}");
                        }
                        Ok((code, body))
                    }
                })
                .await
                .with_context(|| format!("{url} did not answer through the gateway"))?;
                eprintln!(
                    "      curl {url}  ->  {code} {:?}",
                    body.lines().next().unwrap_or_default()
                );
                curl_lines.push(format!("curl {url}"));
            }
        }
    }

    step.next("DeCloud is up");
    let table = kubectl(
        &kubectl_bin,
        &kubeconfig,
        &["get", "wl,prov,nodes,pods", "-o", "wide"],
    )?;
    println!("{table}");
    println!("export KUBECONFIG={}", kubeconfig.display());
    for line in &curl_lines {
        println!("{line}");
    }
    println!("kubectl get wl,prov,nodes,pods -o wide");
    if !node_address.is_loopback() {
        println!(
            "kubectl get --raw /api/v1/nodes/edge-<provider>/proxy/stats/summary   # kubelet's reads, via node proxy"
        );
    }
    println!("logs: {}", scratch.display());

    if args.exit_when_ready {
        operator.check_running()?;
    } else {
        eprintln!("Press Ctrl-C to tear everything down.");
        tokio::signal::ctrl_c().await?;
    }
    // Edges keep their containers when they stop (offline autonomy), so the demo is deleted
    // through the API first and whatever is left on the demo's nodes is swept after.
    eprintln!("tearing down: deleting the demo Workloads");
    let _ = kubectl(
        &kubectl_bin,
        &kubeconfig,
        &["delete", "wl", "--all", "--wait=false"],
    );
    let _ = eventually(Duration::from_secs(20), || {
        let out = kubectl(
            &kubectl_bin,
            &kubeconfig,
            &["get", "pods", "-A", "-o", "name"],
        );
        async move {
            let out = out?;
            if !out.trim().is_empty() {
                bail!("pods remain: {out}");
            }
            Ok(())
        }
    })
    .await;
    let nodes: Vec<String> = (1..=args.edges)
        .map(|i| format!("edge-local-{i}"))
        .collect();
    let sweeper = decloud_e2e::cluster::ContainerSweeper::with_engines(engines.clone(), &nodes);
    drop(edges);
    drop(operator);
    sweeper.sweep();
    drop(env);
    eprintln!("torn down");
    Ok(())
}
