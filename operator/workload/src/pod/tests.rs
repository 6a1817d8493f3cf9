use super::*;
use decloud_crds::{
    ContainerPort, EnvVar, HttpGetAction, PullPolicy, ResourceRequirements, RestartPolicy,
    TemplateMetadata, WorkloadSpec,
};

fn workload() -> Workload {
    let mut wl = Workload::new(
        "hello",
        WorkloadSpec {
            replicas: 2,
            template: PodTemplate {
                metadata: Some(TemplateMetadata {
                    labels: BTreeMap::from([("app".into(), "hello".into())]),
                    annotations: BTreeMap::from([("note".into(), "hi".into())]),
                }),
                spec: PodSpec {
                    restart_policy: RestartPolicy::OnFailure,
                    termination_grace_period_seconds: 7,
                    containers: vec![Container {
                        name: "web".into(),
                        image: "decloud-demo/hello:1".into(),
                        image_pull_policy: PullPolicy::Never,
                        command: vec!["/bin/httpd".into()],
                        args: vec!["-f".into(), "-p".into(), "8080".into()],
                        env: vec![EnvVar {
                            name: "GREETING".into(),
                            value: "hi".into(),
                            ..Default::default()
                        }],
                        ports: vec![ContainerPort {
                            name: Some("http".into()),
                            container_port: 8080,
                            ..Default::default()
                        }],
                        resources: Some(ResourceRequirements {
                            requests: Some(ResourceList {
                                cpu: Some("100m".into()),
                                memory: None,
                            }),
                            limits: Some(ResourceList {
                                cpu: Some("500m".into()),
                                memory: Some("128Mi".into()),
                            }),
                        }),
                        readiness_probe: Some(Probe {
                            http_get: Some(HttpGetAction {
                                path: "/".into(),
                                port: 8080,
                            }),
                            period_seconds: Some(2),
                            ..Default::default()
                        }),
                        ..Default::default()
                    }],
                    ..Default::default()
                },
            },
            placement: None,
            expose: None,
            failover: None,
            service_access: None,
            volume_claim_templates: Vec::new(),
            persistence: None,
        },
    );
    wl.metadata.namespace = Some("default".into());
    wl.metadata.uid = Some("uid-1".into());
    wl
}

#[test]
fn builds_the_replica_pod() {
    let wl = workload();
    let hash = template_hash(&wl.spec.template);
    let pod = build_pod(&wl, &hash, "edge-alice", None).expect("pod");
    let meta = &pod.metadata;
    assert_eq!(
        meta.generate_name.as_deref(),
        Some(format!("hello-{}-", &hash[..8]).as_str())
    );
    assert_eq!(meta.namespace.as_deref(), Some("default"));
    let labels = meta.labels.as_ref().expect("labels");
    assert_eq!(labels["app"], "hello");
    assert_eq!(labels[WORKLOAD_LABEL], "hello");
    assert_eq!(labels[TEMPLATE_HASH_LABEL], hash);
    assert_eq!(
        meta.annotations.as_ref().expect("annotations")["note"],
        "hi"
    );
    let owner = &meta.owner_references.as_ref().expect("owner")[0];
    assert_eq!(
        (owner.kind.as_str(), owner.name.as_str(), owner.uid.as_str()),
        ("Workload", "hello", "uid-1")
    );
    assert_eq!(owner.controller, Some(true));

    let spec = pod.spec.as_ref().expect("spec");
    assert_eq!(spec.node_name.as_deref(), Some("edge-alice"));
    let tol = &spec.tolerations.as_ref().expect("tolerations")[0];
    assert_eq!(tol.key.as_deref(), Some(EDGE_TAINT));
    assert_eq!(tol.operator.as_deref(), Some("Exists"));
    assert_eq!(tol.effect.as_deref(), Some("NoSchedule"));
    assert_eq!(spec.restart_policy.as_deref(), Some("OnFailure"));
    assert_eq!(spec.termination_grace_period_seconds, Some(7));
    assert_eq!(spec.automount_service_account_token, Some(false));

    let c = &spec.containers[0];
    assert_eq!(c.name, "web");
    assert_eq!(c.image.as_deref(), Some("decloud-demo/hello:1"));
    assert_eq!(c.image_pull_policy.as_deref(), Some("Never"));
    assert_eq!(c.command.as_deref(), Some(&["/bin/httpd".to_string()][..]));
    assert_eq!(c.args.as_ref().map(Vec::len), Some(3));
    let env = &c.env.as_ref().expect("env")[0];
    assert_eq!(
        (env.name.as_str(), env.value.as_deref()),
        ("GREETING", Some("hi"))
    );
    let port = &c.ports.as_ref().expect("ports")[0];
    assert_eq!(
        (
            port.name.as_deref(),
            port.container_port,
            port.protocol.as_deref()
        ),
        (Some("http"), 8080, Some("TCP"))
    );
    let res = c.resources.as_ref().expect("resources");
    assert_eq!(res.requests.as_ref().expect("requests")["cpu"].0, "100m");
    assert!(
        !res.requests
            .as_ref()
            .expect("requests")
            .contains_key("memory")
    );
    assert_eq!(res.limits.as_ref().expect("limits")["memory"].0, "128Mi");
    let probe = c.readiness_probe.as_ref().expect("probe");
    let get = probe.http_get.as_ref().expect("httpGet");
    assert_eq!(
        (get.path.as_deref(), &get.port),
        (Some("/"), &IntOrString::Int(8080))
    );
    assert_eq!(probe.period_seconds, Some(2));
}

#[test]
fn pod_needs_a_workload_uid() {
    let mut wl = workload();
    wl.metadata.uid = None;
    assert!(matches!(
        build_pod(&wl, "abc", "edge-a", None),
        Err(Error::InvalidWorkload(_))
    ));
}

#[test]
fn template_hash_is_stable_and_sensitive() {
    let wl = workload();
    let h = template_hash(&wl.spec.template);
    assert_eq!(h.len(), 16);
    assert!(h.chars().all(|c| c.is_ascii_hexdigit()));
    assert_eq!(h, template_hash(&wl.clone().spec.template));
    let mut changed = wl.spec.template.clone();
    changed.spec.containers[0].image = "decloud-demo/hello:2".into();
    assert_ne!(h, template_hash(&changed));
}

#[test]
fn requests_fall_back_to_limits() {
    let wl = workload();
    // cpu from the request, memory from the limit.
    assert_eq!(
        replica_requests(&wl.spec.template.spec),
        Resources {
            cpu_millis: 100,
            memory_bytes: 128 << 20,
            pods: 1,
            storage_bytes: 0,
        }
    );
    let pod = build_pod(&wl, "abc", "edge-a", None).expect("pod");
    assert_eq!(requests_of(&pod), replica_requests(&wl.spec.template.spec));
}

#[test]
fn reads_a_replica_back() {
    let wl = workload();
    let mut pod = build_pod(&wl, "abc", "edge-a", None).expect("pod");
    pod.metadata.name = Some("hello-abc-xyz".into());
    let r = Replica::from_pod(&pod);
    assert_eq!(
        r,
        Replica {
            name: "hello-abc-xyz".into(),
            node: Some("edge-a".into()),
            hash: "abc".into(),
            phase: "Pending".into(),
            ready: false,
            terminating: false,
        }
    );
    pod.status = Some(core::PodStatus {
        phase: Some("Running".into()),
        conditions: Some(vec![core::PodCondition {
            type_: "Ready".into(),
            status: "True".into(),
            ..Default::default()
        }]),
        ..Default::default()
    });
    let r = Replica::from_pod(&pod);
    assert!(r.ready);
    assert_eq!(r.phase, "Running");
    assert!(!decloud_crds::pods::is_terminal(&pod));
}

#[test]
fn the_node_selector_is_copied_onto_the_pod() {
    let mut wl = workload();
    let pod = build_pod(&wl, "abc", "edge-a", None).expect("pod");
    assert_eq!(pod.spec.expect("spec").node_selector, None);
    wl.spec.template.spec.node_selector =
        BTreeMap::from([("kubernetes.io/arch".into(), "arm64".into())]);
    let pod = build_pod(&wl, "abc", "edge-a", None).expect("pod");
    assert_eq!(
        pod.spec.expect("spec").node_selector,
        Some(BTreeMap::from([(
            "kubernetes.io/arch".into(),
            "arm64".into()
        )]))
    );
}

#[test]
fn configuration_and_volumes_carry_over_as_core_v1() {
    let template: decloud_crds::PodTemplate = serde_json::from_value(serde_json::json!({
        "spec": {
            "volumes": [
                {"name": "cfg", "configMap": {"name": "app", "items": [{"key": "k", "path": "a/k.conf", "mode": 0o600}], "defaultMode": 0o640}},
                {"name": "sec", "secret": {"secretName": "creds", "optional": true}},
                {"name": "tmp", "emptyDir": {"medium": "Memory", "sizeLimit": "16Mi"}},
            ],
            "containers": [{
                "name": "c", "image": "i:1",
                "env": [{"name": "P", "valueFrom": {"secretKeyRef": {"name": "creds", "key": "password"}}}],
                "envFrom": [{"configMapRef": {"name": "app"}, "prefix": "APP_"}],
                "volumeMounts": [{"name": "cfg", "mountPath": "/etc/app", "readOnly": true}, {"name": "sec", "mountPath": "/s/p", "subPath": "password"}],
            }],
        }
    }))
    .unwrap();
    let want = serde_json::json!({
        "volumes": [
            {"name": "cfg", "configMap": {"name": "app", "items": [{"key": "k", "path": "a/k.conf", "mode": 0o600}], "defaultMode": 0o640}},
            {"name": "sec", "secret": {"secretName": "creds", "optional": true}},
            {"name": "tmp", "emptyDir": {"medium": "Memory", "sizeLimit": "16Mi"}},
        ],
        "env": [{"name": "P", "valueFrom": {"secretKeyRef": {"name": "creds", "key": "password"}}}],
        "envFrom": [{"configMapRef": {"name": "app"}, "prefix": "APP_"}],
        "volumeMounts": [{"name": "cfg", "mountPath": "/etc/app", "readOnly": true}, {"name": "sec", "mountPath": "/s/p", "subPath": "password"}],
    });
    let spec = core::PodSpec {
        volumes: Some(template.spec.volumes.iter().map(volume).collect()),
        containers: template.spec.containers.iter().map(container).collect(),
        ..Default::default()
    };
    let got = serde_json::to_value(&spec).unwrap();
    assert_eq!(got["volumes"], want["volumes"]);
    let c = &got["containers"][0];
    assert_eq!(c["env"], want["env"]);
    assert_eq!(c["envFrom"], want["envFrom"]);
    assert_eq!(c["volumeMounts"], want["volumeMounts"]);
}

#[test]
fn a_stateful_replica_is_named_by_its_ordinal_and_mounts_its_claims() {
    let mut wl = workload();
    wl.spec.volume_claim_templates = vec![decloud_crds::persistence::VolumeClaimTemplate::new(
        "data", "64Mi",
    )];
    let pod = build_pod(&wl, "abc", "edge-a", Some(3)).expect("pod");
    assert_eq!(pod.metadata.name.as_deref(), Some("hello-3"));
    assert_eq!(pod.metadata.generate_name, None);
    let volumes = pod
        .spec
        .as_ref()
        .and_then(|s| s.volumes.clone())
        .expect("volumes");
    let claims: Vec<(&str, &str)> = volumes
        .iter()
        .filter_map(|v| {
            let c = v.persistent_volume_claim.as_ref()?;
            Some((v.name.as_str(), c.claim_name.as_str()))
        })
        .collect();
    assert_eq!(claims, [("data", "data-hello-3")]);
    // A stateless replica of the same Workload carries no claim and a generated name.
    let pod = build_pod(&wl, "abc", "edge-a", None).expect("pod");
    assert!(pod.metadata.name.is_none());
    assert!(pod.spec.and_then(|s| s.volumes).is_none());
}
