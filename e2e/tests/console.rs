//! The volunteer's console in a real headless browser: Debian's chromium driven by
//! chromedriver over WebDriver (`fantoccini`), against a real `edge-kubelet` joined to the
//! real operator and running a real pod.
//!
//! - Without the token, or with a wrong one, the page is refused; a POST without the CSRF
//!   token is refused even with the session cookie.
//! - With the token (once, in the URL) the page loads and shows the right numbers: the
//!   connection, the pod (namespace/name and image), the CPU and memory it requests and the
//!   offer, as the Provider's status has them.
//! - The offer form changes what the Provider offers (its `allocatable`), and a bad value is
//!   refused with a message on the page.
//! - The Pause button cordons the machine (the Provider shows `Paused`, the pod stays), Drain
//!   empties it (`Drained`, the plain pod deleted as `kubectl drain` does) and Resume makes it
//!   `Available` again; the page says each.
//!
//! Needs root, `chromium` and `chromium-driver` (e2e/scripts/install-prereqs.sh) and
//! `cargo build --workspace --bins`. Under CI=true a missing browser fails the suite.

use std::process::Command;
use std::time::Duration;

use anyhow::{Context as _, bail, ensure};
use decloud_crds::contracts::{EDGE_TAINT, node_name};
use decloud_crds::{AvailabilityState, Provider, quantity};
use decloud_e2e::cluster::{ContainerSweeper, EdgeProcess, OperatorProcess, busybox_image};
use decloud_e2e::{ChildGuard, TestEnv, binary, eventually, free_port};
use fantoccini::{Client, ClientBuilder, Locator};
use k8s_openapi::api::core::v1::Pod;
use kube::api::{Api, PostParams};

const CHROMEDRIVER: &str = "/usr/bin/chromedriver";
const CHROMIUM: &str = "/usr/bin/chromium";

/// chromedriver on a free loopback port, and a headless chromium session through it.
async fn browser(env: &TestEnv) -> anyhow::Result<Option<(ChildGuard, Client)>> {
    if !std::path::Path::new(CHROMEDRIVER).exists() || !std::path::Path::new(CHROMIUM).exists() {
        let msg = "chromium and chromium-driver are needed (apt-get install chromium chromium-driver, \
                   or e2e/scripts/install-prereqs.sh)";
        if std::env::var("CI").is_ok_and(|v| v == "true") {
            bail!("{msg}");
        }
        eprintln!("SKIPPED (not under CI): {msg}");
        return Ok(None);
    }
    let port = free_port()?;
    let mut cmd = Command::new(CHROMEDRIVER);
    cmd.arg(format!("--port={port}"));
    let driver = ChildGuard::spawn("chromedriver", cmd, &env.dir().join("chromedriver.log"))?;
    let mut caps = serde_json::Map::new();
    caps.insert(
        "goog:chromeOptions".into(),
        serde_json::json!({
            "binary": CHROMIUM,
            "args": ["--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
                     format!("--user-data-dir={}", env.dir().join("chromium").display())],
        }),
    );
    let client = eventually(Duration::from_secs(30), || {
        let caps = caps.clone();
        async move {
            Ok(
                ClientBuilder::new(hyper_util::client::legacy::connect::HttpConnector::new())
                    .capabilities(caps)
                    .connect(&format!("http://127.0.0.1:{port}"))
                    .await?,
            )
        }
    })
    .await
    .context("no WebDriver session with chromium")?;
    Ok(Some((driver, client)))
}

async fn text_of(c: &Client, id: &str) -> anyhow::Result<String> {
    Ok(c.find(Locator::Id(id))
        .await?
        .text()
        .await?
        .trim()
        .to_string())
}

/// The message the page shows after a form was submitted (waits for the new page).
async fn flash(c: &Client, want: &str) -> anyhow::Result<String> {
    eventually(Duration::from_secs(15), || async {
        let t = text_of(c, "flash").await?;
        ensure!(t.contains(want), "flash {t:?}, want {want:?}");
        Ok(t)
    })
    .await
}

async fn body_text(c: &Client) -> anyhow::Result<String> {
    Ok(c.find(Locator::Css("body")).await?.text().await?)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn the_console_shows_the_machine_and_changes_the_offer() -> anyhow::Result<()> {
    let root = Command::new("id")
        .arg("-u")
        .output()
        .is_ok_and(|o| String::from_utf8_lossy(&o.stdout).trim() == "0");
    ensure!(
        root,
        "this suite needs root (the edge's ceiling cgroup and egress rules)"
    );
    let env = TestEnv::start().await?;
    let Some((_driver, browser)) = browser(&env).await? else {
        return Ok(());
    };
    let image = busybox_image()?;
    let operator = OperatorProcess::start(&env, &["--heartbeat-interval", "1s"]).await?;
    let pid = std::process::id();
    let name = format!("inst-console-{pid}");
    let node = node_name(&name);
    let _sweeper = ContainerSweeper::new(&env, std::slice::from_ref(&node));
    let mut connect = operator.edge_args();
    connect.extend(
        [
            "--docker-network",
            &format!("instc{pid}"),
            "--cpu",
            "2",
            "--memory",
            "1Gi",
        ]
        .map(String::from),
    );
    let edge = EdgeProcess::start_with(&env, &name, &[], &connect)?;

    // The URL with its token, as the volunteer gets it.
    let with_token = eventually(Duration::from_secs(60), || async {
        let o = Command::new(binary("edge-kubelet")?)
            .args(["console-url", "--name", &name, "--state-dir"])
            .arg(&edge.state_dir)
            .output()?;
        ensure!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
        Ok(String::from_utf8_lossy(&o.stdout).trim().to_string())
    })
    .await
    .with_context(|| edge.child.log_tail(30))?;
    let (base, token) = with_token
        .split_once("?token=")
        .context("no token in the URL")?;
    ensure!(base.starts_with("http://127.0.0.1:"), "{base}");

    // A pod with known requests.
    let pods: Api<Pod> = Api::namespaced(env.client(), "default");
    let pod_name = format!("inst-console-pod-{pid}");
    let pod: Pod = serde_json::from_value(serde_json::json!({
        "apiVersion": "v1", "kind": "Pod",
        "metadata": {"name": pod_name, "namespace": "default"},
        "spec": {
            "nodeName": node,
            "tolerations": [{"key": EDGE_TAINT, "operator": "Exists"}],
            "containers": [{"name": "main", "image": image, "imagePullPolicy": "IfNotPresent",
                            "command": ["sleep", "3600"],
                            "resources": {"requests": {"cpu": "100m", "memory": "32Mi"},
                                          "limits": {"cpu": "200m", "memory": "64Mi"}}}],
        }
    }))?;
    pods.create(&PostParams::default(), &pod).await?;
    let providers: Api<Provider> = Api::all(env.client());
    let status = eventually(Duration::from_secs(90), || async {
        let p = pods.get(&pod_name).await?;
        let phase = p.status.and_then(|s| s.phase);
        ensure!(phase.as_deref() == Some("Running"), "pod: {phase:?}");
        let s = providers.get(&name).await?.status.context("no status")?;
        let allocated = s.allocated.clone().context("no allocated")?;
        ensure!(allocated.pods == Some(1), "allocated {allocated:?}");
        Ok(s)
    })
    .await
    .with_context(|| edge.child.log_tail(30))?;

    // Refused without the token, or with a wrong one.
    browser.goto(base).await?;
    let refused = body_text(&browser).await?;
    ensure!(
        refused.contains("not signed in"),
        "without a token: {refused}"
    );
    browser
        .goto(&format!("{base}?token={}", "0".repeat(64)))
        .await?;
    let refused = body_text(&browser).await?;
    ensure!(
        refused.contains("wrong console token"),
        "wrong token: {refused}"
    );
    // A POST with the cookie but no CSRF token (what another site's form would send).
    let o = Command::new("curl")
        .args(["-s", "-o", "/dev/null", "-w", "%{http_code}", "-X", "POST"])
        .args(["--cookie", &format!("decloud_console={token}")])
        .arg(format!("{base}offer"))
        .output()?;
    ensure!(
        String::from_utf8_lossy(&o.stdout) == "403",
        "POST without CSRF: {:?}",
        o
    );

    // With the token: the page, and the right numbers.
    browser.goto(&with_token).await?;
    let url = browser.current_url().await?;
    ensure!(
        url.query().is_none(),
        "the token stays in the address bar: {url}"
    );
    ensure!(
        text_of(&browser, "provider").await? == name,
        "provider name"
    );
    let allocated = status.allocated.clone().unwrap_or_default();
    let allocatable = status.allocatable.clone().unwrap_or_default();
    let millis = |q: &Option<String>| q.as_deref().and_then(quantity::cpu_millis).unwrap_or(-1);
    let mib = |q: &Option<String>| {
        q.as_deref()
            .and_then(quantity::memory_bytes)
            .unwrap_or(-1 << 20)
            >> 20
    };
    eventually(Duration::from_secs(30), || async {
        browser.refresh().await?;
        let shown = (
            text_of(&browser, "connection").await?,
            text_of(&browser, "cpu-used").await?,
            text_of(&browser, "memory-used").await?,
            text_of(&browser, "pods-used").await?,
            text_of(&browser, "cpu-offered").await?,
            text_of(&browser, "memory-offered").await?,
        );
        let want = (
            "connected".to_string(),
            millis(&allocated.cpu).to_string(),
            mib(&allocated.memory).to_string(),
            allocated.pods.unwrap_or(-1).to_string(),
            millis(&allocatable.cpu).to_string(),
            mib(&allocatable.memory).to_string(),
        );
        ensure!(shown == want, "page {shown:?}, provider {want:?}");
        Ok(())
    })
    .await?;
    let row = browser
        .find(Locator::Css(&format!(
            "tr.app[data-pod='default/{pod_name}']"
        )))
        .await?
        .text()
        .await?;
    ensure!(row.contains(&image), "the app row shows no image: {row}");
    println!("console shows: {row}");

    // A bad offer is refused on the page.
    let cpu = browser.find(Locator::Id("offer-cpu")).await?;
    cpu.clear().await?;
    cpu.send_keys("lots").await?;
    browser
        .find(Locator::Id("offer-apply"))
        .await?
        .click()
        .await?;
    let shown = flash(&browser, "CPU:").await?;
    println!("a bad offer: {shown}");

    // The offer form changes what the Provider offers.
    let cpu = browser.find(Locator::Id("offer-cpu")).await?;
    cpu.clear().await?;
    cpu.send_keys("1500m").await?;
    let pods_field = browser.find(Locator::Id("offer-pods")).await?;
    pods_field.clear().await?;
    pods_field.send_keys("7").await?;
    browser
        .find(Locator::Id("offer-apply"))
        .await?
        .click()
        .await?;
    let shown = flash(&browser, "offer now: CPU 1500m").await?;
    println!("the offer form: {shown}");
    eventually(Duration::from_secs(30), || async {
        let s = providers.get(&name).await?.status.context("no status")?;
        let a = s.allocatable.context("no allocatable")?;
        ensure!(
            millis(&a.cpu) == 1500 && a.pods == Some(7),
            "allocatable {a:?}"
        );
        Ok(())
    })
    .await
    .with_context(|| edge.child.log_tail(30))?;
    eventually(Duration::from_secs(15), || async {
        browser.refresh().await?;
        ensure!(
            text_of(&browser, "cpu-offered").await? == "1500",
            "page offer"
        );
        ensure!(text_of(&browser, "pods-offered").await? == "7", "page pods");
        Ok(())
    })
    .await?;

    // The buttons: pause cordons the machine (its pod stays), drain empties it (a plain pod
    // is deleted, as `kubectl drain` does), resume takes work again: each as the Provider
    // and the page show it.
    for (button, said, state, page) in [
        ("pause", "paused", AvailabilityState::Paused, "paused"),
        ("drain", "draining", AvailabilityState::Drained, "drained"),
        (
            "resume",
            "resumed",
            AvailabilityState::Available,
            "available",
        ),
    ] {
        browser.find(Locator::Id(button)).await?.click().await?;
        let shown = flash(&browser, said).await?;
        println!("the {button} button: {shown}");
        eventually(Duration::from_secs(60), || async {
            let s = providers.get(&name).await?.status.context("no status")?;
            let now = s.availability.map(|a| a.state).unwrap_or_default();
            ensure!(now == state, "availability {now:?}, want {state:?}");
            Ok(())
        })
        .await
        .with_context(|| edge.child.log_tail(30))?;
        if button == "pause" {
            ensure!(
                pods.get_opt(&pod_name).await?.is_some(),
                "pausing removed the pod"
            );
        }
        if button == "drain" {
            ensure!(
                pods.get_opt(&pod_name).await?.is_none(),
                "the drained machine still carries {pod_name}"
            );
        }
        eventually(Duration::from_secs(15), || async {
            browser.refresh().await?;
            let t = text_of(&browser, "availability").await?;
            ensure!(t.starts_with(page), "page shows {t:?}, want {page:?}");
            Ok(())
        })
        .await?;
    }
    browser.close().await?;
    Ok(())
}
