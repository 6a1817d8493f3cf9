//! The README's first command works: `decloud-up` brings up a local DeCloud (real control
//! plane, operator, two edges on the local Docker engine), runs the demo Workload until it is
//! ready, prints what to use, and tears everything down.

use std::process::Command;

use anyhow::{Context, ensure};
use decloud_crds::contracts::{container_labels, node_name};
use decloud_e2e::{binary, cluster::containers_with_label};

#[test]
fn decloud_up_brings_up_the_demo_and_tears_it_down() -> anyhow::Result<()> {
    let out = Command::new(binary("decloud-up")?)
        .args([
            "--exit-when-ready",
            "--edges",
            "2",
            "--timeout",
            "120s",
            "--gateway-port",
            "0",
        ])
        .env_remove("DECLOUD_KUBECONFIG")
        .output()
        .context("running decloud-up")?;
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    println!("{stderr}\n{stdout}");
    ensure!(out.status.success(), "decloud-up failed: {stderr}");
    for want in [
        "[1/",
        "control plane",
        "providers Ready",
        "is ready: http://hello.default.",
    ] {
        ensure!(stderr.contains(want), "progress output lacks {want:?}");
    }
    for want in [
        "workload.decloud.dev/hello",
        "provider.decloud.dev/local-1",
        "node/edge-local-2",
        "export KUBECONFIG=",
    ] {
        ensure!(stdout.contains(want), "final output lacks {want:?}");
    }
    // Torn down: no container of the demo's edges is left.
    for node in ["local-1", "local-2"].map(node_name) {
        let left = containers_with_label(&format!("{}={node}", container_labels::NODE))?;
        ensure!(left.is_empty(), "{node} left containers behind: {left:?}");
    }
    Ok(())
}
