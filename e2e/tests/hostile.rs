//! Hostile tenants and hostile providers (issue 14): nothing one of them does reaches another
//! tenant or stalls the cluster. Each item is one `#[tokio::test]` against the real parts (a
//! real kube-apiserver, and where the item needs them the real operator, edges and Docker).
//!
//! Layout: shared helpers first, then one section per item (`// === item N: ... ===`).

use std::time::{Duration, Instant};

use anyhow::{Context as _, bail, ensure};
use decloud_e2e::TestEnv;
use serde_json::{Value, json};

// === shared helpers ===

const NS: &str = "default";

/// How long one `kubectl apply` may take. The API server answers a refusal in milliseconds; a
/// pathological value that reached a quantity parser used to keep it busy for minutes.
const APPLY_PATIENCE: Duration = Duration::from_secs(15);

/// `kubectl apply` server-side: a client-side apply would copy a document at (or past) the
/// bounds into its `last-applied-configuration` annotation, which is refused first for its size.
const SERVER_SIDE_APPLY: &[&str] = &["apply", "--server-side", "-f", "-"];

/// A valid Workload, the base every hostile variant changes in one place.
fn workload(name: &str) -> Value {
    json!({
        "apiVersion": "decloud.dev/v1alpha1",
        "kind": "Workload",
        "metadata": {"name": name, "namespace": NS},
        "spec": {
            "replicas": 1,
            "template": {"spec": {"containers": [{
                "name": "web",
                "image": "decloud-test/busybox:1",
                "ports": [{"containerPort": 8080}],
                "resources": {
                    "requests": {"cpu": "100m", "memory": "32Mi"},
                    "limits": {"cpu": "500m", "memory": "64Mi"}
                }
            }]}},
            "expose": {"port": 8080}
        }
    })
}

/// A valid Provider (cluster-scoped).
fn provider(name: &str) -> Value {
    json!({
        "apiVersion": "decloud.dev/v1alpha1",
        "kind": "Provider",
        "metadata": {"name": name},
        "spec": {"offered": {"cpu": "2", "memory": "4Gi", "pods": 10}}
    })
}

/// Sets `value` at the JSON pointer `path`, creating objects on the way.
fn set(doc: &mut Value, path: &str, value: Value) {
    let mut cur = doc;
    for part in path.trim_start_matches('/').split('/') {
        cur = match cur {
            Value::Array(items) => &mut items[part.parse::<usize>().expect("array index")],
            Value::Object(map) => map.entry(part.to_string()).or_insert_with(|| json!({})),
            _ => panic!("{path}: not a container"),
        };
    }
    *cur = value;
}

/// `doc` with `value` at `path`.
fn with(mut doc: Value, path: &str, value: Value) -> Value {
    set(&mut doc, path, value);
    doc
}

/// Runs kubectl with `input` on stdin, bounded by [`APPLY_PATIENCE`] on the server side too;
/// the outcome and how long it took.
fn kubectl_timed(env: &TestEnv, args: &[&str], input: &str) -> (anyhow::Result<String>, Duration) {
    let timeout = format!("--request-timeout={}s", APPLY_PATIENCE.as_secs());
    let mut full = vec![timeout.as_str()];
    full.extend_from_slice(args);
    let started = Instant::now();
    let out = env.kubectl_stdin(&full, input);
    (out, started.elapsed())
}

/// One hostile input: what it is, the document, and the field the refusal must name.
struct Hostile {
    what: String,
    doc: Value,
    field: &'static str,
}

impl Hostile {
    fn new(what: impl Into<String>, doc: Value, field: &'static str) -> Self {
        Self {
            what: what.into(),
            doc,
            field,
        }
    }
}

/// Applies each hostile document; every one must be refused, quickly, with a message naming
/// its field. Returns the list of what went wrong (empty when all were refused properly).
fn expect_refused(env: &TestEnv, cases: &[Hostile]) -> Vec<String> {
    let mut failures = Vec::new();
    for case in cases {
        let (out, took) = kubectl_timed(env, SERVER_SIDE_APPLY, &case.doc.to_string());
        let what = &case.what;
        if took > APPLY_PATIENCE {
            failures.push(format!("{what}: the API server took {took:?}"));
        }
        match out {
            Ok(out) => failures.push(format!("{what}: accepted ({})", out.trim())),
            Err(e) => {
                let msg = e.to_string();
                match msg.lines().find(|l| l.contains(case.field)) {
                    Some(line) => {
                        let line: String = line.trim().chars().take(300).collect();
                        println!("refused {what} in {took:?}: {line}");
                    }
                    None => failures.push(format!(
                        "{what}: message does not name {}: {}",
                        case.field,
                        msg.chars().take(600).collect::<String>()
                    )),
                }
            }
        }
    }
    failures
}

/// Applies `doc`, which must be accepted.
fn expect_accepted(env: &TestEnv, what: &str, doc: &Value) -> anyhow::Result<()> {
    let (out, took) = kubectl_timed(
        env,
        &["apply", "--server-side", "-f", "-"],
        &doc.to_string(),
    );
    out.with_context(|| format!("{what} was refused"))?;
    ensure!(
        took <= APPLY_PATIENCE,
        "{what}: the API server took {took:?}"
    );
    println!("accepted {what} in {took:?}");
    Ok(())
}

/// The API server still answers promptly.
async fn check_apiserver_responsive(env: &TestEnv) -> anyhow::Result<()> {
    let started = Instant::now();
    let req = http::Request::get("/readyz").body(Vec::new())?;
    let text = tokio::time::timeout(Duration::from_secs(5), env.client().request_text(req))
        .await
        .context("kube-apiserver /readyz did not answer within 5 s")??;
    if text.trim() != "ok" {
        bail!("kube-apiserver /readyz: {text}");
    }
    println!("kube-apiserver /readyz ok in {:?}", started.elapsed());
    Ok(())
}

// === item 1: a Workload is never the lever that makes the API server do unbounded work ===

const CONTAINER: &str = "/spec/template/spec/containers/0";

/// Pathological quantities, over-long strings and oversized lists are refused by `kubectl
/// apply` naming the field, in well under [`APPLY_PATIENCE`], before any quantity parser (the
/// CRD's CEL rules, the operator's, a Pod's) sees them; the borderline-valid are accepted.
#[tokio::test(flavor = "multi_thread")]
async fn pathological_quantities_are_refused_at_apply() -> anyhow::Result<()> {
    let env = TestEnv::start().await?;
    let req_cpu = "spec.template.spec.containers[0].resources.requests.cpu";
    let req_mem = "spec.template.spec.containers[0].resources.requests.memory";
    let lim_cpu = "spec.template.spec.containers[0].resources.limits.cpu";
    let lim_mem = "spec.template.spec.containers[0].resources.limits.memory";
    let quantity = |what: &str, field: &'static str, value: &str| {
        let leaf = field.rsplit('.').next().expect("a leaf");
        let list = if field.contains("requests") {
            "requests"
        } else {
            "limits"
        };
        Hostile::new(
            format!("{what} {leaf} {value:.40}"),
            with(
                workload("hostile-q"),
                &format!("{CONTAINER}/resources/{list}/{leaf}"),
                json!(value),
            ),
            field,
        )
    };
    let digits_1000 = "9".repeat(1000);
    let mut cases = vec![
        // What stalled the cluster, and its relatives: refused by the pattern.
        quantity("zero with a huge exponent:", req_mem, "0e2147483647"),
        quantity("one with a huge exponent:", req_cpu, "1e2147483647"),
        quantity("three-digit exponent:", req_cpu, "1e999"),
        quantity("1000 digits:", lim_mem, &digits_1000),
        quantity("16 integer digits:", lim_mem, "9999999999999999"),
        quantity("10 fraction digits:", req_cpu, "0.0000000001"),
        quantity("negative exponent:", req_cpu, "1e-3"),
        // Well-formed but out of bounds: refused by the magnitude rules.
        quantity("2000 cores:", req_cpu, "2000"),
        quantity("1025 cores:", lim_cpu, "1025"),
        quantity("1e4 cores:", req_cpu, "1e4"),
        quantity("1025000m cores:", req_cpu, "1025000m"),
        quantity("100Pi memory:", req_mem, "100Pi"),
        quantity("65Ti memory:", lim_mem, "65Ti"),
        quantity("1e99 memory:", req_mem, "1e99"),
    ];
    let provider_cpu = "spec.offered.cpu";
    let provider_mem = "spec.offered.memory";
    for (value, field) in [
        ("0e2147483647", provider_mem),
        ("1e999", provider_cpu),
        ("2000", provider_cpu),
        ("100Pi", provider_mem),
    ] {
        cases.push(Hostile::new(
            format!("Provider offering {value}"),
            with(
                provider("hostile-p"),
                &format!("/spec/offered/{}", field.rsplit('.').next().expect("leaf")),
                json!(value),
            ),
            field,
        ));
    }

    // Everything else a tenant writes is bounded too.
    let env_vars = |n: usize, len: usize| {
        (0..n)
            .map(|i| json!({"name": format!("V{i}"), "value": "x".repeat(len)}))
            .collect::<Vec<_>>()
    };
    let args = |n: usize, len: usize| vec![json!("a".repeat(len)); n];
    let labels = |n: usize| {
        (0..n)
            .map(|i| (format!("k{i}"), json!("v")))
            .collect::<serde_json::Map<_, _>>()
    };
    cases.extend([
        Hostile::new(
            "129 env vars",
            with(
                workload("hostile-s"),
                &format!("{CONTAINER}/env"),
                json!(env_vars(129, 1)),
            ),
            "spec.template.spec.containers[0].env",
        ),
        Hostile::new(
            "an env value of 32769 characters",
            with(
                workload("hostile-s"),
                &format!("{CONTAINER}/env"),
                json!(env_vars(1, 32769)),
            ),
            "spec.template.spec.containers[0].env[0].value",
        ),
        Hostile::new(
            "env values of 300000 characters in all",
            with(
                workload("hostile-s"),
                &format!("{CONTAINER}/env"),
                json!(env_vars(10, 30000)),
            ),
            "spec.template.spec.containers[0].env",
        ),
        Hostile::new(
            "257 args",
            with(
                workload("hostile-s"),
                &format!("{CONTAINER}/args"),
                json!(args(257, 1)),
            ),
            "spec.template.spec.containers[0].args",
        ),
        Hostile::new(
            "an arg of 32769 characters",
            with(
                workload("hostile-s"),
                &format!("{CONTAINER}/args"),
                json!(args(1, 32769)),
            ),
            "spec.template.spec.containers[0].args[0]",
        ),
        Hostile::new(
            "args of 90000 characters in all",
            with(
                workload("hostile-s"),
                &format!("{CONTAINER}/args"),
                json!(args(3, 30000)),
            ),
            "spec.template.spec.containers[0].args",
        ),
        Hostile::new(
            "65 command items",
            with(
                workload("hostile-s"),
                &format!("{CONTAINER}/command"),
                json!(args(65, 1)),
            ),
            "spec.template.spec.containers[0].command",
        ),
        Hostile::new(
            "an image of 513 characters",
            with(
                workload("hostile-s"),
                &format!("{CONTAINER}/image"),
                json!("i".repeat(513)),
            ),
            "spec.template.spec.containers[0].image",
        ),
        Hostile::new(
            "a working dir of 1025 characters",
            with(
                workload("hostile-s"),
                &format!("{CONTAINER}/workingDir"),
                json!(format!("/{}", "d".repeat(1024))),
            ),
            "spec.template.spec.containers[0].workingDir",
        ),
        Hostile::new(
            "an exec probe item of 32769 characters",
            with(
                workload("hostile-s"),
                &format!("{CONTAINER}/readinessProbe"),
                json!({"exec": {"command": ["a".repeat(32769)]}}),
            ),
            "spec.template.spec.containers[0].readinessProbe.exec.command[0]",
        ),
        Hostile::new(
            "65 labels",
            with(
                workload("hostile-s"),
                "/spec/template/metadata/labels",
                json!(labels(65)),
            ),
            "spec.template.metadata.labels",
        ),
        Hostile::new(
            "a label value of 64 characters",
            with(
                workload("hostile-s"),
                "/spec/template/metadata/labels",
                json!({"app": "v".repeat(64)}),
            ),
            "spec.template.metadata.labels.app",
        ),
        Hostile::new(
            "a label key with a 64-character name",
            with(
                workload("hostile-s"),
                "/spec/template/metadata/labels",
                json!(serde_json::Map::from_iter([("k".repeat(64), json!("v"))])),
            ),
            "spec.template.metadata.labels",
        ),
        Hostile::new(
            "a label key that is not a key",
            with(
                workload("hostile-s"),
                "/spec/template/metadata/labels",
                json!({"no spaces/in keys": "v"}),
            ),
            "spec.template.metadata.labels",
        ),
        Hostile::new(
            "an annotation value of 4097 characters",
            with(
                workload("hostile-s"),
                "/spec/template/metadata/annotations",
                json!({"note": "n".repeat(4097)}),
            ),
            "spec.template.metadata.annotations.note",
        ),
        Hostile::new(
            "33 annotations",
            with(
                workload("hostile-s"),
                "/spec/template/metadata/annotations",
                json!(labels(33)),
            ),
            "spec.template.metadata.annotations",
        ),
        Hostile::new(
            "a selector with 65 values",
            with(
                workload("hostile-s"),
                "/spec/placement/providerSelector/matchExpressions",
                json!([{"key": "zone", "operator": "In", "values": vec!["z"; 65]}]),
            ),
            "spec.placement.providerSelector.matchExpressions[0].values",
        ),
        Hostile::new(
            "a selector with 17 expressions",
            with(
                workload("hostile-s"),
                "/spec/placement/providerSelector/matchExpressions",
                json!(vec![json!({"key": "zone", "operator": "Exists"}); 17]),
            ),
            "spec.placement.providerSelector.matchExpressions",
        ),
        Hostile::new(
            "a host of 254 characters",
            with(
                workload("hostile-s"),
                "/spec/expose/host",
                json!(format!("{}.example", "h".repeat(246))),
            ),
            "spec.expose.host",
        ),
        Hostile::new(
            "a Workload name of 64 characters",
            with(
                workload("hostile-s"),
                "/metadata/name",
                json!("w".repeat(64)),
            ),
            "metadata.name",
        ),
        Hostile::new(
            "a Workload name that is not a DNS label",
            with(
                workload("hostile-s"),
                "/metadata/name",
                json!("web.other-tenant"),
            ),
            "metadata.name",
        ),
    ]);
    let mut failures = expect_refused(&env, &cases);
    // Nothing above kept the API server busy.
    check_apiserver_responsive(&env).await?;

    // Provider status is bounded the same way (an edge's claims go there).
    expect_accepted(&env, "a valid Provider", &provider("hostile-p"))?;
    for (what, patch, field) in [
        (
            "capacity 0e2147483647",
            json!({"status": {"capacity": {"memory": "0e2147483647"}}}),
            "status.capacity.memory",
        ),
        (
            "capacity 2000 cores",
            json!({"status": {"capacity": {"cpu": "2000"}}}),
            "status.capacity.cpu",
        ),
        (
            "an agent version of 257 characters",
            json!({"status": {"agentVersion": "v".repeat(257)}}),
            "status.agentVersion",
        ),
    ] {
        let (out, took) = kubectl_timed(
            &env,
            &[
                "patch",
                "provider",
                "hostile-p",
                "--subresource=status",
                "--type=merge",
                "-p",
                &patch.to_string(),
            ],
            "",
        );
        match out {
            Ok(out) => failures.push(format!("Provider status {what}: accepted ({})", out.trim())),
            Err(e) if e.to_string().contains(field) && took <= APPLY_PATIENCE => {
                println!("refused Provider status {what} in {took:?}");
            }
            Err(e) => failures.push(format!("Provider status {what} ({took:?}): {e}")),
        }
    }

    // The borderline-valid: exactly at every bound.
    let max_labels = (0..64)
        .map(|i| (format!("example.com/k{i}"), json!("v".repeat(63))))
        .collect::<serde_json::Map<_, _>>();
    let mut edge = workload(&"w".repeat(63));
    set(
        &mut edge,
        &format!("{CONTAINER}/resources"),
        json!({
            "requests": {"cpu": "0.000000001", "memory": "999999999999999m"},
            "limits": {"cpu": "1024", "memory": "64Ti"}
        }),
    );
    set(
        &mut edge,
        &format!("{CONTAINER}/env"),
        json!(env_vars(128, 2000)),
    );
    set(
        &mut edge,
        &format!("{CONTAINER}/args"),
        json!(args(256, 256)),
    );
    set(
        &mut edge,
        &format!("{CONTAINER}/image"),
        json!("i".repeat(512)),
    );
    set(
        &mut edge,
        "/spec/template/metadata/labels",
        json!(max_labels),
    );
    expect_accepted(&env, "a Workload at every bound", &edge)?;
    for (cpu, memory) in [
        ("1024000m", "70368744177664"),
        ("1.024k", "0.0625Pi"),
        ("999999999999n", "64Ti"),
        ("1e3", "1e13"),
        (".5", "123456789012345.123456789m"),
    ] {
        let doc = with(
            workload("borderline"),
            &format!("{CONTAINER}/resources/limits"),
            json!({"cpu": cpu, "memory": memory}),
        );
        expect_accepted(&env, &format!("cpu {cpu}, memory {memory}"), &doc)?;
    }
    expect_accepted(&env, "Provider offering 1024 cores and 64Ti", &{
        let mut p = provider("borderline-p");
        set(
            &mut p,
            "/spec/offered",
            json!({"cpu": "1024", "memory": "64Ti"}),
        );
        p
    })?;
    check_apiserver_responsive(&env).await?;
    assert!(failures.is_empty(), "{}", failures.join("\n"));
    Ok(())
}
