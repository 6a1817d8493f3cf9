//! The Helm chart: `helm lint` is clean, and what `helm template` renders is accepted by a real
//! kube-apiserver (server-side dry run), with every Service type the values allow.

use std::process::Command;

use anyhow::{Context, bail};
use decloud_e2e::{TestEnv, repo_root};

fn helm() -> anyhow::Result<String> {
    Ok(decloud_e2e::helm_binary()?.to_string_lossy().into_owned())
}

fn run(cmd: &mut Command) -> anyhow::Result<String> {
    let out = cmd.output().with_context(|| format!("running {cmd:?}"))?;
    if !out.status.success() {
        bail!(
            "{cmd:?} failed:\n{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

#[tokio::test(flavor = "multi_thread")]
async fn chart_lints_and_renders_manifests_the_apiserver_accepts() -> anyhow::Result<()> {
    let helm = helm()?;
    let chart = repo_root().join("charts/decloud");
    let lint = run(Command::new(&helm).args(["lint", "--strict"]).arg(&chart))?;
    println!("{}", lint.trim());

    // Bad values are refused by values.schema.json with the field named.
    let bad = Command::new(&helm)
        .args(["template", "x"])
        .arg(&chart)
        .args(["--set", "edge.service.type=Bogus"])
        .output()?;
    let stderr = String::from_utf8_lossy(&bad.stderr);
    assert!(
        !bad.status.success(),
        "helm accepted edge.service.type=Bogus"
    );
    assert!(
        stderr.contains("edge") && stderr.contains("type"),
        "unclear error: {stderr}"
    );
    // The disruption guard's share is in (0, 1], whether a number (values file) or a string
    // (`--set` leaves decimals as strings).
    for bad in ["1.5", "0", "abc"] {
        let out = Command::new(&helm)
            .args(["template", "x"])
            .arg(&chart)
            .args(["--set", &format!("heartbeat.unhealthyThreshold={bad}")])
            .output()?;
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(
            !out.status.success() && stderr.contains("unhealthyThreshold"),
            "heartbeat.unhealthyThreshold={bad}: {stderr}"
        );
    }
    let rendered = run(Command::new(&helm)
        .args(["template", "x"])
        .arg(&chart)
        .args(["--set", "heartbeat.unhealthyThreshold=0.6"])
        .args(["--set", "heartbeat.largeClusterSize=200"]))?;
    for arg in [
        "--unhealthy-threshold=0.6",
        "--large-cluster-size=200",
        "--disruption-hold=20s",
    ] {
        assert!(rendered.contains(arg), "{arg} not rendered:\n{rendered}");
    }

    let env = TestEnv::start().await?;
    env.kubectl(&["create", "namespace", "decloud-system"])?;
    for svc_type in ["LoadBalancer", "NodePort", "ClusterIP"] {
        let rendered = run(Command::new(&helm)
            .args(["template", "decloud"])
            .arg(&chart)
            .args(["--namespace", "decloud-system", "--include-crds"])
            .args(["--set", &format!("edge.service.type={svc_type}")])
            .args(["--set", "joinToken.create=true"]))?;
        let out = env.kubectl_stdin(
            &["apply", "--dry-run=server", "--server-side", "-f", "-"],
            &rendered,
        )?;
        for kind in [
            "deployment.apps/decloud",
            "clusterrole.rbac.authorization.k8s.io/decloud",
            "service/decloud-edge",
        ] {
            assert!(
                out.contains(kind),
                "{kind} missing from the dry run:\n{out}"
            );
        }
        println!(
            "server-side dry run with edge Service {svc_type}: {} objects",
            out.lines().count()
        );
    }
    Ok(())
}
