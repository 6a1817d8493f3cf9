use super::*;
use serde_json::json;

fn pod(spec: serde_json::Value) -> Pod {
    serde_json::from_value(json!({
        "metadata": {"name": "p", "namespace": "ns", "uid": "u1"},
        "spec": spec,
    }))
    .unwrap()
}

/// (kind, name, keys and values) of a stored object.
type Object<'a> = (Kind, &'a str, &'a [(&'a str, &'a str)]);

fn store(objects: &[Object<'_>]) -> impl Fn(&ConfigRef) -> Lookup {
    let map: HashMap<ConfigRef, Lookup> = objects
        .iter()
        .map(|(kind, name, data)| {
            let data = data
                .iter()
                .map(|(k, v)| (k.to_string(), v.as_bytes().to_vec()))
                .collect();
            (
                ConfigRef {
                    kind: *kind,
                    namespace: "ns".into(),
                    name: name.to_string(),
                },
                Lookup::Present(Arc::new(data)),
            )
        })
        .collect();
    move |r| map.get(r).cloned().unwrap_or(Lookup::Missing)
}

fn resolved(p: &Pod, lookup: impl Fn(&ConfigRef) -> Lookup) -> pb::PodConfig {
    let spec = translate::pod_spec(p).unwrap();
    resolve(p, &spec, lookup).unwrap()
}

#[test]
fn env_in_kubelet_order_later_wins() {
    let p = pod(json!({"containers": [{"name": "c", "image": "b:1",
    "envFrom": [{"configMapRef": {"name": "cm"}, "prefix": "CM_"}, {"secretRef": {"name": "s"}}],
    "env": [
        {"name": "A", "value": "lit"},
        {"name": "PASS", "valueFrom": {"secretKeyRef": {"name": "s", "key": "password"}}},
        {"name": "CM_x", "value": "override"},
    ]}]}));
    let cfg = resolved(
        &p,
        store(&[
            (Kind::ConfigMap, "cm", &[("x", "1"), ("y", "2")]),
            (
                Kind::Secret,
                "s",
                &[("password", "hunter2"), ("bad key", "v")],
            ),
        ]),
    );
    let env: Vec<(String, String)> = cfg.containers[0]
        .env
        .iter()
        .map(|e| (e.name.clone(), e.value.clone()))
        .collect();
    let want: Vec<(String, String)> = [
        ("CM_x", "override"),
        ("CM_y", "2"),
        ("password", "hunter2"),
        ("A", "lit"),
        ("PASS", "hunter2"),
    ]
    .iter()
    .map(|(a, b)| (a.to_string(), b.to_string()))
    .collect();
    assert_eq!(env, want);
    assert!(cfg.containers[0].error.is_empty());
}

#[test]
fn missing_mandatory_names_it_missing_optional_runs() {
    let p = pod(json!({"containers": [{"name": "c", "image": "b:1", "env": [
        {"name": "A", "valueFrom": {"configMapKeyRef": {"name": "gone", "key": "k"}}}]}]}));
    let cfg = resolved(&p, store(&[]));
    assert_eq!(cfg.containers[0].error, "configmap \"gone\" not found");
    let p = pod(json!({"containers": [{"name": "c", "image": "b:1", "env": [
        {"name": "A", "valueFrom": {"secretKeyRef": {"name": "s", "key": "nokey"}}}]}]}));
    let cfg = resolved(&p, store(&[(Kind::Secret, "s", &[("k", "v")])]));
    assert_eq!(
        cfg.containers[0].error,
        "couldn't find key nokey in Secret ns/s"
    );
    let p = pod(json!({"containers": [{"name": "c", "image": "b:1", "env": [
        {"name": "A", "valueFrom": {"configMapKeyRef": {"name": "gone", "key": "k", "optional": true}}}],
        "envFrom": [{"secretRef": {"name": "gone", "optional": true}}]}]}));
    let cfg = resolved(&p, store(&[]));
    assert!(cfg.containers[0].error.is_empty());
    assert!(cfg.containers[0].env.is_empty());
}

#[test]
fn unknown_objects_wait() {
    let p = pod(json!({"containers": [{"name": "c", "image": "b:1", "env": [
        {"name": "A", "valueFrom": {"configMapKeyRef": {"name": "cm", "key": "k"}}}]}]}));
    let spec = translate::pod_spec(&p).unwrap();
    assert!(spec.needs_config);
    assert!(resolve(&p, &spec, |_| Lookup::Unknown).is_none());
}

#[test]
fn volume_files_items_modes_and_missing_keys() {
    let p = pod(json!({
    "volumes": [
        {"name": "all", "configMap": {"name": "cm", "defaultMode": 0o600}},
        {"name": "some", "secret": {"secretName": "s", "items": [{"key": "a", "path": "dir/a.txt", "mode": 0o400}]}},
        {"name": "broken", "configMap": {"name": "cm", "items": [{"key": "zz", "path": "z"}]}},
    ],
    "containers": [
        {"name": "ok", "image": "b:1", "volumeMounts": [{"name": "all", "mountPath": "/all"}, {"name": "some", "mountPath": "/some"}]},
        {"name": "bad", "image": "b:1", "volumeMounts": [{"name": "broken", "mountPath": "/b"}]},
    ]}));
    let cfg = resolved(
        &p,
        store(&[
            (Kind::ConfigMap, "cm", &[("x", "1"), ("y", "2")]),
            (Kind::Secret, "s", &[("a", "A"), ("b", "B")]),
        ]),
    );
    let all = &cfg.volumes[0];
    assert_eq!(
        all.files
            .iter()
            .map(|f| (f.path.as_str(), f.mode))
            .collect::<Vec<_>>(),
        [("x", 0o600), ("y", 0o600)]
    );
    let some = &cfg.volumes[1];
    assert_eq!(some.files.len(), 1);
    assert_eq!(
        (some.files[0].path.as_str(), some.files[0].mode),
        ("dir/a.txt", 0o400)
    );
    assert_eq!(some.files[0].data, b"A");
    assert!(cfg.containers[0].error.is_empty());
    assert!(
        cfg.containers[1]
            .error
            .contains("configmap references non-existent config key: zz"),
        "{}",
        cfg.containers[1].error
    );
}

#[test]
fn oversized_configuration_is_refused_for_every_container() {
    let p = pod(
        json!({"volumes": [{"name": "v", "secret": {"secretName": "s"}}],
        "containers": [{"name": "c", "image": "b:1", "volumeMounts": [{"name": "v", "mountPath": "/v"}]}]}),
    );
    let big = "x".repeat(pb::MAX_CONFIG_OBJECT_BYTES / 2 + 1);
    let lookup = |_: &ConfigRef| {
        let data: BTreeMap<String, Vec<u8>> = (0..3)
            .map(|i| (format!("k{i}"), big.clone().into_bytes()))
            .collect();
        state_of(data)
    };
    let cfg = resolved(&p, lookup);
    assert!(
        cfg.containers[0].error.contains("holds"),
        "{}",
        cfg.containers[0].error
    );
    assert!(cfg.volumes.iter().all(|v| v.files.is_empty()));
}

#[test]
fn refs_are_distinct_and_bounded() {
    let vols: Vec<_> = (0..40)
        .map(|i| json!({"name": format!("v{i}"), "configMap": {"name": format!("cm{i}")}}))
        .collect();
    let p = pod(json!({"volumes": vols, "containers": [{"name": "c", "image": "b:1"}]}));
    assert_eq!(pod_refs(&p).len(), 40);
    assert!(refs_problem(&p).unwrap().contains("at most 32"));
}

#[test]
fn pull_secrets_resolve_per_container_image() {
    let p = pod(
        json!({"imagePullSecrets": [{"name": "gone"}, {"name": "regcred"}],
        "containers": [{"name": "a", "image": "localhost:5000/app:1"}, {"name": "b", "image": "busybox:1"}]}),
    );
    let spec = translate::pod_spec(&p).unwrap();
    assert!(spec.needs_config);
    assert!(
        pod_refs(&p)
            .iter()
            .any(|r| r.name == "regcred" && r.kind == Kind::Secret)
    );
    let cfg = resolved(
        &p,
        store(&[(
            Kind::Secret,
            "regcred",
            &[(
                ".dockerconfigjson",
                r#"{"auths":{"localhost:5000":{"username":"u","password":"p"}}}"#,
            )],
        )]),
    );
    let a = cfg.containers[0].pull_auth.as_ref().unwrap();
    assert_eq!(
        (a.server.as_str(), a.username.as_str()),
        ("localhost:5000", "u")
    );
    assert!(cfg.containers[1].pull_auth.is_none());
    // A missing pull secret does not stop the pod (kubelet pulls without it).
    assert!(cfg.containers.iter().all(|c| c.error.is_empty()));
}
