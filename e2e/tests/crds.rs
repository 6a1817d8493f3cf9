//! The CRDs against a real kube-apiserver: examples apply, invalid input is rejected at apply
//! time with a message naming the field, and the printer columns are served.

use decloud_e2e::{TestEnv, repo_root};
use serde_json::{Value, json};

fn valid_workload(name: &str) -> Value {
    json!({
        "apiVersion": "decloud.dev/v1alpha1",
        "kind": "Workload",
        "metadata": {"name": name, "namespace": "default"},
        "spec": {
            "replicas": 2,
            "template": {"spec": {"containers": [{
                "name": "web",
                "image": "decloud-test/busybox:1",
                "ports": [{"containerPort": 8080}],
                "resources": {"requests": {"cpu": "100m", "memory": "32Mi"}}
            }]}},
            "expose": {"port": 8080}
        }
    })
}

/// Sets `value` at the JSON pointer `path` (creating objects on the way).
fn set(doc: &mut Value, path: &str, value: Value) {
    let mut cur = doc;
    let parts: Vec<&str> = path.trim_start_matches('/').split('/').collect();
    for (i, part) in parts.iter().enumerate() {
        let last = i == parts.len() - 1;
        cur = match cur {
            Value::Array(items) => &mut items[part.parse::<usize>().expect("array index")],
            Value::Object(map) => {
                if last {
                    map.insert(part.to_string(), value);
                    return;
                }
                map.entry(part.to_string()).or_insert_with(|| json!({}))
            }
            _ => panic!("{path}: not a container"),
        };
        if last {
            *cur = value;
            return;
        }
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn crds_validate_at_apply_time_against_a_real_apiserver() -> anyhow::Result<()> {
    let env = TestEnv::start().await?;
    let version = env.kubectl(&["version", "-o", "json"])?;
    let server: Value = serde_json::from_str(&version)?;
    println!(
        "real kube-apiserver {} on 127.0.0.1:{}",
        server["serverVersion"]["gitVersion"],
        env.api_port()
    );

    // Every example applies cleanly, the apps' folders (examples/apps/<app>/) too.
    let examples = repo_root().join("examples");
    let mut files = Vec::new();
    for entry in std::fs::read_dir(&examples)? {
        files.push(entry?.path());
    }
    if let Ok(apps) = std::fs::read_dir(examples.join("apps")) {
        for app in apps {
            for entry in std::fs::read_dir(app?.path())? {
                files.push(entry?.path());
            }
        }
    }
    files.sort();
    let mut applied = 0;
    for path in files {
        if path.extension().is_some_and(|e| e == "yaml") {
            env.kubectl(&["apply", "-f", &path.to_string_lossy()])?;
            applied += 1;
        }
    }
    assert!(
        applied >= 3,
        "expected the examples folder to hold examples"
    );
    println!("applied {applied} examples");

    // Each invalid Workload is refused, and the message names the offending field.
    let cases: Vec<(&str, &str, Value, &str)> = vec![
        (
            "negative replicas",
            "/spec/replicas",
            json!(-1),
            "spec.replicas",
        ),
        (
            "too many replicas",
            "/spec/replicas",
            json!(5000),
            "spec.replicas",
        ),
        (
            "empty image",
            "/spec/template/spec/containers/0/image",
            json!(""),
            "spec.template.spec.containers[0].image",
        ),
        (
            "port 0",
            "/spec/template/spec/containers/0/ports/0/containerPort",
            json!(0),
            "spec.template.spec.containers[0].ports[0].containerPort",
        ),
        (
            "port 70000",
            "/spec/template/spec/containers/0/ports/0/containerPort",
            json!(70000),
            "spec.template.spec.containers[0].ports[0].containerPort",
        ),
        (
            "exposed port not a container port",
            "/spec/expose/port",
            json!(9090),
            "spec.expose.port",
        ),
        (
            "unknown placement mode",
            "/spec/placement",
            json!({"spread": "Sometimes"}),
            "spec.placement.spread",
        ),
        (
            "absurd cpu request",
            "/spec/template/spec/containers/0/resources/requests/cpu",
            json!("lots"),
            "spec.template.spec.containers[0].resources.requests.cpu",
        ),
        (
            "absurd memory limit",
            "/spec/template/spec/containers/0/resources/limits",
            json!({"memory": "-5Gi"}),
            "spec.template.spec.containers[0].resources.limits.memory",
        ),
        (
            "a quantity with an unbounded exponent",
            "/spec/template/spec/containers/0/resources/requests/memory",
            json!("0e2147483647"),
            "spec.template.spec.containers[0].resources.requests.memory",
        ),
        (
            "more than 1024 cores",
            "/spec/template/spec/containers/0/resources/requests/cpu",
            json!("2000"),
            "spec.template.spec.containers[0].resources.requests.cpu",
        ),
        (
            "unknown restart policy",
            "/spec/template/spec/restartPolicy",
            json!("Sometimes"),
            "spec.template.spec.restartPolicy",
        ),
        (
            "container name not a DNS label",
            "/spec/template/spec/containers/0/name",
            json!("Web_Server"),
            "spec.template.spec.containers[0].name",
        ),
        (
            "privileged is not in the schema",
            "/spec/template/spec/containers/0/securityContext",
            json!({"privileged": true}),
            "securityContext",
        ),
        (
            "hostNetwork is not in the schema",
            "/spec/template/spec/hostNetwork",
            json!(true),
            "hostNetwork",
        ),
        (
            "no containers",
            "/spec/template/spec/containers",
            json!([]),
            "spec.template.spec.containers",
        ),
    ];
    let mut failures = Vec::new();
    for (i, (what, path, value, field)) in cases.iter().enumerate() {
        let mut doc = valid_workload(&format!("invalid-{i}"));
        set(&mut doc, path, value.clone());
        match env.kubectl_stdin(&["apply", "-f", "-"], &doc.to_string()) {
            Ok(out) => failures.push(format!("{what}: accepted ({})", out.trim())),
            Err(e) => {
                let msg = e.to_string();
                if let Some(line) = msg.lines().find(|l| l.contains(field)) {
                    println!("rejected {what}: {}", line.trim());
                } else {
                    failures.push(format!("{what}: message does not name {field}: {msg}"));
                }
            }
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));

    // The valid base itself is accepted, so the rejections above are about the one field.
    env.kubectl_stdin(&["apply", "-f", "-"], &valid_workload("valid").to_string())?;

    // Printer columns.
    let wl = env.kubectl(&["get", "wl"])?;
    let header = wl.lines().next().unwrap_or_default();
    for col in ["NAME", "IMAGE", "DESIRED", "READY", "URL", "AGE"] {
        assert!(header.contains(col), "kubectl get wl lacks {col}: {header}");
    }
    assert!(
        wl.contains("decloud-test/busybox:1"),
        "image column empty:\n{wl}"
    );
    let prov = env.kubectl(&["get", "prov"])?;
    let header = prov.lines().next().unwrap_or_default();
    for col in [
        "NAME",
        "READY",
        "CPU",
        "MEMORY",
        "PODS",
        "RELIABILITY",
        "LAST-SEEN",
    ] {
        assert!(
            header.contains(col),
            "kubectl get prov lacks {col}: {header}"
        );
    }
    println!("{wl}{prov}");
    Ok(())
}
