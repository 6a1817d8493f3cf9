//! Kubernetes Pod → the edge protocol's `PodSpec`.
//!
//! Only what an edge runs is carried: containers, their environment, ports, resources,
//! readiness probes, and `configMap`/`secret`/`emptyDir` volumes with their mounts (checked
//! here: counts, paths, modes). Other volumes (hostPath is rejected by [`super::admission`])
//! are not mounted on edges and are ignored with their mounts, so that pods with the usual
//! service-account volume run. What ConfigMaps and Secrets hold is never part of the spec: it
//! travels in a `PodConfig` ([`super::config`]).

use std::collections::BTreeMap;

use decloud_proto as pb;
use k8s_openapi::api::core::v1::{Container, EnvVar, Pod, Probe};
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;
use prost::Message;
use sha2::{Digest, Sha256};

use crate::{Error, Result};
use decloud_crds::quantity;

/// Kubernetes' default grace period when a pod does not say.
const DEFAULT_GRACE_SECONDS: i64 = 30;

/// The edge's view of `pod`, with `spec_hash` set from its content.
pub(crate) fn pod_spec(pod: &Pod) -> Result<pb::PodSpec> {
    let meta = &pod.metadata;
    let spec = pod
        .spec
        .as_ref()
        .ok_or_else(|| Error::Unsupported("pod has no spec".into()))?;
    if spec.init_containers.as_ref().is_some_and(|c| !c.is_empty()) {
        return Err(Error::Unsupported(
            "init containers are not supported on edges".into(),
        ));
    }
    let restart_policy = match spec.restart_policy.as_deref() {
        None | Some("Always") => pb::RestartPolicy::Always,
        Some("OnFailure") => pb::RestartPolicy::OnFailure,
        Some("Never") => pb::RestartPolicy::Never,
        Some(other) => {
            return Err(Error::Unsupported(format!("restartPolicy {other:?}")));
        }
    };
    let grace = spec
        .termination_grace_period_seconds
        .unwrap_or(DEFAULT_GRACE_SECONDS)
        .clamp(0, i64::from(u32::MAX)) as u32;
    let fields = FieldValues {
        name: meta.name.clone().unwrap_or_default(),
        namespace: meta.namespace.clone().unwrap_or_default(),
        uid: meta.uid.clone().unwrap_or_default(),
        node_name: spec.node_name.clone().unwrap_or_default(),
        service_account: spec.service_account_name.clone().unwrap_or_default(),
        labels: meta.labels.clone().unwrap_or_default(),
        annotations: meta.annotations.clone().unwrap_or_default(),
    };
    let volumes = volumes(spec.volumes.as_deref().unwrap_or_default())?;
    let mut containers = spec
        .containers
        .iter()
        .map(|c| container(c, &fields, &volumes))
        .collect::<Result<Vec<_>>>()?;
    for (edge, c) in containers.iter_mut().zip(&spec.containers) {
        edge.security_context = security_context(spec.security_context.as_ref(), c)?;
    }
    let needs_config = volumes
        .iter()
        .any(|v| matches!(v.source, Some(pb::volume::Source::Config(_))))
        || spec
            .image_pull_secrets
            .as_ref()
            .is_some_and(|s| !s.is_empty())
        || spec.containers.iter().any(|c| {
            c.env_from.as_ref().is_some_and(|e| !e.is_empty())
                || c.env.iter().flatten().any(is_config_ref)
        });
    let mut out = pb::PodSpec {
        uid: fields.uid.clone(),
        namespace: fields.namespace.clone(),
        name: fields.name.clone(),
        restart_policy: restart_policy as i32,
        termination_grace_period_seconds: grace,
        containers,
        spec_hash: String::new(),
        host_aliases: host_aliases(spec.host_aliases.as_deref().unwrap_or_default())?,
        volumes,
        needs_config,
    };
    out.spec_hash = spec_hash(&out);
    Ok(out)
}

/// `hostAliases` as the edge writes them into `/etc/hosts`: IPv4 or IPv6 addresses and DNS
/// names only (a hosts line is all an entry can become), at most
/// [`pb::MAX_HOST_ALIASES`] entries of at most [`pb::MAX_ALIAS_NAMES`] names.
fn host_aliases(aliases: &[k8s_openapi::api::core::v1::HostAlias]) -> Result<Vec<pb::HostAlias>> {
    if aliases.len() > pb::MAX_HOST_ALIASES {
        return Err(Error::Unsupported(format!(
            "{} hostAliases; at most {}",
            aliases.len(),
            pb::MAX_HOST_ALIASES
        )));
    }
    aliases
        .iter()
        .map(|a| {
            let ip: std::net::IpAddr =
                a.ip.parse()
                    .map_err(|_| Error::Unsupported(format!("hostAliases ip {:?}", a.ip)))?;
            let names = a.hostnames.clone().unwrap_or_default();
            if names.len() > pb::MAX_ALIAS_NAMES {
                return Err(Error::Unsupported(format!(
                    "hostAliases {ip}: {} names; at most {}",
                    names.len(),
                    pb::MAX_ALIAS_NAMES
                )));
            }
            for n in &names {
                let ok = !n.is_empty()
                    && n.len() <= 253
                    && n.split('.').all(|l| {
                        !l.is_empty()
                            && l.len() <= 63
                            && l.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-')
                    });
                if !ok {
                    return Err(Error::Unsupported(format!("hostAliases name {n:?}")));
                }
            }
            Ok(pb::HostAlias {
                ip: ip.to_string(),
                hostnames: names,
            })
        })
        .collect()
}

/// A short content hash of `spec` (its `spec_hash` field excluded).
pub(crate) fn spec_hash(spec: &pb::PodSpec) -> String {
    let mut unhashed = spec.clone();
    unhashed.spec_hash.clear();
    let digest = Sha256::digest(unhashed.encode_to_vec());
    digest[..8].iter().map(|b| format!("{b:02x}")).collect()
}

/// Pod fields an env var may refer to with `valueFrom.fieldRef`.
struct FieldValues {
    name: String,
    namespace: String,
    uid: String,
    node_name: String,
    service_account: String,
    labels: BTreeMap<String, String>,
    annotations: BTreeMap<String, String>,
}

impl FieldValues {
    fn resolve(&self, path: &str) -> Option<String> {
        let bracketed = |prefix: &str| {
            path.strip_prefix(prefix)?
                .strip_suffix("']")
                .map(str::to_string)
        };
        match path {
            "metadata.name" => Some(self.name.clone()),
            "metadata.namespace" => Some(self.namespace.clone()),
            "metadata.uid" => Some(self.uid.clone()),
            "spec.nodeName" => Some(self.node_name.clone()),
            "spec.serviceAccountName" => Some(self.service_account.clone()),
            _ => {
                if let Some(key) = bracketed("metadata.labels['") {
                    Some(self.labels.get(&key).cloned().unwrap_or_default())
                } else {
                    bracketed("metadata.annotations['")
                        .map(|key| self.annotations.get(&key).cloned().unwrap_or_default())
                }
            }
        }
    }
}

/// Largest user or group id (Kubernetes validates ids as 0..=2147483647).
const MAX_ID: i64 = i32::MAX as i64;

/// Container `c`'s safe securityContext subset, its own fields over the pod's.
fn security_context(
    pod: Option<&k8s_openapi::api::core::v1::PodSecurityContext>,
    c: &Container,
) -> Result<Option<pb::SecurityContext>> {
    let own = c.security_context.as_ref();
    let run_as_user = own
        .and_then(|s| s.run_as_user)
        .or(pod.and_then(|p| p.run_as_user));
    let run_as_group = own
        .and_then(|s| s.run_as_group)
        .or(pod.and_then(|p| p.run_as_group));
    for (what, id) in [("runAsUser", run_as_user), ("runAsGroup", run_as_group)] {
        if id.is_some_and(|id| !(0..=MAX_ID).contains(&id)) {
            return Err(Error::Unsupported(format!(
                "container {:?}: {what} must be within 0..={MAX_ID}",
                c.name
            )));
        }
    }
    let run_as_non_root = own
        .and_then(|s| s.run_as_non_root)
        .or(pod.and_then(|p| p.run_as_non_root))
        .unwrap_or(false);
    let read_only_root_filesystem = own
        .and_then(|s| s.read_only_root_filesystem)
        .unwrap_or(false);
    let out = pb::SecurityContext {
        run_as_user,
        run_as_group,
        run_as_non_root,
        read_only_root_filesystem,
    };
    Ok((out != pb::SecurityContext::default()).then_some(out))
}

/// Whether env var `e` takes its value from a ConfigMap or a Secret.
pub(crate) fn is_config_ref(e: &EnvVar) -> bool {
    e.value_from
        .as_ref()
        .is_some_and(|f| f.config_map_key_ref.is_some() || f.secret_key_ref.is_some())
}

/// Why `path` is not a safe relative path inside a volume (`..`, absolute, empty parts).
pub(crate) fn relative_path_problem(path: &str) -> Option<&'static str> {
    if path.is_empty() {
        Some("must not be empty")
    } else if path.len() > pb::MAX_VOLUME_PATH {
        Some("is too long")
    } else if path.starts_with('/') {
        Some("must be a relative path")
    } else if path.split('/').any(|p| p == "..") {
        Some("must not contain '..'")
    } else if path.contains('\0') {
        Some("must not contain NUL")
    } else if path.split('/').any(|p| p.starts_with("..")) {
        // `..data` and its kin are the atomic writer's own names.
        Some("must not have a part starting with '..'")
    } else {
        None
    }
}

fn mode_ok(mode: Option<i32>) -> bool {
    mode.is_none_or(|m| (0..=0o777).contains(&m))
}

/// The volumes an edge mounts (configMap, secret, emptyDir), checked; others are left out.
fn volumes(list: &[k8s_openapi::api::core::v1::Volume]) -> Result<Vec<pb::Volume>> {
    use pb::volume::Source;
    let mut out: Vec<pb::Volume> = Vec::new();
    for v in list {
        let unsupported = |what: String| Error::Unsupported(format!("volume {:?}: {what}", v.name));
        let (items, default_mode) = if let Some(cm) = &v.config_map {
            (cm.items.as_deref(), cm.default_mode)
        } else if let Some(sec) = &v.secret {
            if sec.secret_name.as_deref().unwrap_or_default().is_empty() {
                return Err(unsupported("secret volumes need a secretName".into()));
            }
            (sec.items.as_deref(), sec.default_mode)
        } else if let Some(ed) = &v.empty_dir {
            let size_limit_bytes = ed
                .size_limit
                .as_ref()
                .map(|q| quantity::to_units(&q.0))
                .transpose()?
                .unwrap_or(0)
                .max(0);
            let memory = match ed.medium.as_deref() {
                None | Some("") => false,
                Some("Memory") => true,
                Some(other) => return Err(unsupported(format!("emptyDir medium {other:?}"))),
            };
            out.push(pb::Volume {
                name: v.name.clone(),
                source: Some(Source::EmptyDir(pb::EmptyDirVolume {
                    size_limit_bytes,
                    memory,
                })),
            });
            continue;
        } else if let Some(pvc) = &v.persistent_volume_claim {
            // Its id and size come from the owning Workload (super::claims::bind).
            if pvc.claim_name.is_empty() || pvc.claim_name.len() > 253 {
                return Err(unsupported(
                    "persistentVolumeClaim needs a claimName".into(),
                ));
            }
            out.push(pb::Volume {
                name: v.name.clone(),
                source: Some(Source::Persistent(pb::PersistentVolume {
                    claim_name: pvc.claim_name.clone(),
                    ..Default::default()
                })),
            });
            continue;
        } else {
            continue;
        };
        if !mode_ok(default_mode) {
            return Err(unsupported("defaultMode must be within 0..=0777".into()));
        }
        let items = items.unwrap_or_default();
        if items.len() > pb::MAX_VOLUME_ITEMS {
            return Err(unsupported(format!(
                "{} items; an edge takes at most {}",
                items.len(),
                pb::MAX_VOLUME_ITEMS
            )));
        }
        for (i, item) in items.iter().enumerate() {
            if let Some(problem) = relative_path_problem(&item.path) {
                return Err(unsupported(format!(
                    "items[{i}].path {:?} {problem}",
                    item.path
                )));
            }
            if !mode_ok(item.mode) {
                return Err(unsupported(format!(
                    "items[{i}].mode must be within 0..=0777"
                )));
            }
        }
        out.push(pb::Volume {
            name: v.name.clone(),
            source: Some(Source::Config(pb::ConfigVolume {})),
        });
    }
    if out.len() > pb::MAX_POD_VOLUMES {
        return Err(Error::Unsupported(format!(
            "{} volumes; an edge mounts at most {}",
            out.len(),
            pb::MAX_POD_VOLUMES
        )));
    }
    Ok(out)
}

/// Container `c`'s mounts of the volumes an edge mounts, checked.
fn mounts(c: &Container, volumes: &[pb::Volume]) -> Result<Vec<pb::VolumeMount>> {
    let mut out: Vec<pb::VolumeMount> = Vec::new();
    for m in c.volume_mounts.iter().flatten() {
        if !volumes.iter().any(|v| v.name == m.name) {
            // A volume the edge does not mount (the service-account token): left out.
            continue;
        }
        let bad = |what: String| {
            Error::Unsupported(format!(
                "container {:?}: volumeMount {:?}: {what}",
                c.name, m.name
            ))
        };
        let path = &m.mount_path;
        if !path.starts_with('/')
            || path.len() > pb::MAX_VOLUME_PATH
            || path.split('/').any(|p| p == "..")
            || path.contains('\0')
        {
            return Err(bad(format!(
                "mountPath {path:?} must be an absolute path without '..'"
            )));
        }
        if m.sub_path_expr.as_ref().is_some_and(|e| !e.is_empty()) {
            return Err(bad("subPathExpr is not supported on edges".into()));
        }
        if m.mount_propagation.as_deref().is_some_and(|p| p != "None") {
            return Err(bad("mount propagation is not allowed".into()));
        }
        let sub_path = m.sub_path.clone().unwrap_or_default();
        if !sub_path.is_empty()
            && let Some(problem) = relative_path_problem(&sub_path)
        {
            return Err(bad(format!("subPath {sub_path:?} {problem}")));
        }
        if out.iter().any(|o| o.mount_path == *path) {
            return Err(bad(format!("mountPath {path:?} is mounted twice")));
        }
        out.push(pb::VolumeMount {
            name: m.name.clone(),
            mount_path: path.clone(),
            sub_path,
            read_only: m.read_only.unwrap_or(false),
        });
    }
    if out.len() > pb::MAX_VOLUME_MOUNTS {
        return Err(Error::Unsupported(format!(
            "container {:?}: {} volume mounts; an edge takes at most {}",
            c.name,
            out.len(),
            pb::MAX_VOLUME_MOUNTS
        )));
    }
    Ok(out)
}

fn container(
    c: &Container,
    fields: &FieldValues,
    volumes: &[pb::Volume],
) -> Result<pb::ContainerSpec> {
    let image = c
        .image
        .clone()
        .filter(|i| !i.is_empty())
        .ok_or_else(|| Error::Unsupported(format!("container {:?} has no image", c.name)))?;
    let pull_policy = match c.image_pull_policy.as_deref() {
        Some("Always") => pb::PullPolicy::Always,
        Some("Never") => pb::PullPolicy::Never,
        Some("IfNotPresent") => pb::PullPolicy::IfNotPresent,
        // The API server defaults this; mirror its rule for objects that skipped defaulting.
        _ if image_tag_is_latest(&image) => pb::PullPolicy::Always,
        _ => pb::PullPolicy::IfNotPresent,
    };
    // Variables from ConfigMaps and Secrets are resolved into the PodConfig, not the spec.
    let env = c
        .env
        .iter()
        .flatten()
        .filter(|e| !is_config_ref(e))
        .map(|e| env_var(&c.name, e, fields))
        .collect::<Result<Vec<_>>>()?;
    if c.env_from
        .as_ref()
        .is_some_and(|e| e.len() > pb::MAX_ENV_FROM)
    {
        return Err(Error::Unsupported(format!(
            "container {:?}: more than {} envFrom sources",
            c.name,
            pb::MAX_ENV_FROM
        )));
    }
    let volume_mounts = mounts(c, volumes)?;
    let ports = c
        .ports
        .iter()
        .flatten()
        .map(|p| pb::ContainerPort {
            name: p.name.clone().unwrap_or_default(),
            container_port: p.container_port.clamp(0, 65535) as u32,
            protocol: p.protocol.clone().unwrap_or_else(|| "TCP".into()),
        })
        .collect::<Vec<_>>();
    let resources = resources(c)?;
    let readiness_probe = c
        .readiness_probe
        .as_ref()
        .map(|p| probe(&c.name, p, &ports))
        .transpose()?;
    let liveness_probe = c
        .liveness_probe
        .as_ref()
        .map(|p| probe(&c.name, p, &ports))
        .transpose()?;
    let startup_probe = c
        .startup_probe
        .as_ref()
        .map(|p| probe(&c.name, p, &ports))
        .transpose()?;
    Ok(pb::ContainerSpec {
        name: c.name.clone(),
        image,
        pull_policy: pull_policy as i32,
        command: c.command.clone().unwrap_or_default(),
        args: c.args.clone().unwrap_or_default(),
        working_dir: c.working_dir.clone().unwrap_or_default(),
        env,
        ports,
        resources: Some(resources),
        readiness_probe,
        volume_mounts,
        liveness_probe,
        startup_probe,
        security_context: None,
    })
}

fn image_tag_is_latest(image: &str) -> bool {
    if image.contains('@') {
        return false;
    }
    let last = image.rsplit('/').next().unwrap_or(image);
    match last.rsplit_once(':') {
        Some((_, tag)) => tag == "latest",
        None => true,
    }
}

fn env_var(container: &str, e: &EnvVar, fields: &FieldValues) -> Result<pb::EnvVar> {
    let value = match (&e.value, &e.value_from) {
        (_, None) => e.value.clone().unwrap_or_default(),
        (_, Some(from)) => {
            let path = from.field_ref.as_ref().map(|f| f.field_path.as_str());
            path.and_then(|p| fields.resolve(p)).ok_or_else(|| {
                Error::Unsupported(format!(
                    "container {container:?}: env {:?} takes its value from a source edges do not \
                     support (only literal values, metadata/spec field references, ConfigMaps \
                     and Secrets)",
                    e.name
                ))
            })?
        }
    };
    Ok(pb::EnvVar {
        name: e.name.clone(),
        value,
    })
}

fn resources(c: &Container) -> Result<pb::ResourceSpec> {
    let Some(res) = &c.resources else {
        return Ok(pb::ResourceSpec::default());
    };
    let get =
        |list: &Option<
            BTreeMap<String, k8s_openapi::apimachinery::pkg::api::resource::Quantity>,
        >,
         key: &str| { list.as_ref().and_then(|l| l.get(key)).map(|q| q.0.clone()) };
    let millis = |q: Option<String>| q.map(|q| quantity::to_millis(&q)).transpose();
    let bytes = |q: Option<String>| q.map(|q| quantity::to_units(&q)).transpose();
    let cpu_limit = millis(get(&res.limits, "cpu"))?;
    let mem_limit = bytes(get(&res.limits, "memory"))?;
    // As in Kubernetes, a missing request defaults to the limit.
    let cpu_request = millis(get(&res.requests, "cpu"))?.or(cpu_limit);
    let mem_request = bytes(get(&res.requests, "memory"))?.or(mem_limit);
    let eph_limit = bytes(get(&res.limits, "ephemeral-storage"))?;
    let eph_request = bytes(get(&res.requests, "ephemeral-storage"))?.or(eph_limit);
    Ok(pb::ResourceSpec {
        cpu_request_millis: cpu_request.unwrap_or(0),
        cpu_limit_millis: cpu_limit.unwrap_or(0),
        memory_request_bytes: mem_request.unwrap_or(0),
        memory_limit_bytes: mem_limit.unwrap_or(0),
        ephemeral_storage_request_bytes: eph_request.unwrap_or(0),
        ephemeral_storage_limit_bytes: eph_limit.unwrap_or(0),
    })
}

fn probe(container: &str, p: &Probe, ports: &[pb::ContainerPort]) -> Result<pb::Probe> {
    let port = |port: &IntOrString| -> Result<u32> {
        match port {
            IntOrString::Int(n) => Ok((*n).clamp(0, 65535) as u32),
            IntOrString::String(name) => ports
                .iter()
                .find(|p| &p.name == name)
                .map(|p| p.container_port)
                .ok_or_else(|| {
                    Error::Unsupported(format!(
                        "container {container:?}: probe port {name:?} names no container port"
                    ))
                }),
        }
    };
    use pb::probe::Handler;
    let handler = if let Some(h) = &p.http_get {
        Handler::HttpGet(pb::HttpGetAction {
            path: h.path.clone().unwrap_or_else(|| "/".into()),
            port: port(&h.port)?,
        })
    } else if let Some(t) = &p.tcp_socket {
        Handler::TcpSocket(pb::TcpSocketAction {
            port: port(&t.port)?,
        })
    } else if let Some(e) = &p.exec {
        Handler::Exec(pb::ExecAction {
            command: e.command.clone().unwrap_or_default(),
        })
    } else {
        return Err(Error::Unsupported(format!(
            "container {container:?}: readiness probe needs httpGet, tcpSocket or exec"
        )));
    };
    let secs = |v: Option<i32>, default: u32| v.map_or(default, |v| v.max(0) as u32);
    Ok(pb::Probe {
        handler: Some(handler),
        initial_delay_seconds: secs(p.initial_delay_seconds, 0),
        period_seconds: secs(p.period_seconds, 10),
        timeout_seconds: secs(p.timeout_seconds, 1),
        success_threshold: secs(p.success_threshold, 1),
        failure_threshold: secs(p.failure_threshold, 3),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn pod(spec: serde_json::Value) -> Pod {
        serde_json::from_value(json!({
            "metadata": {"name": "web", "namespace": "default", "uid": "u-1", "labels": {"app": "hello"}},
            "spec": spec,
        }))
        .unwrap()
    }

    #[test]
    fn translates_a_full_pod() {
        let p = pod(json!({
            "nodeName": "edge-alice",
            "restartPolicy": "OnFailure",
            "terminationGracePeriodSeconds": 5,
            "containers": [{
                "name": "web",
                "image": "decloud-test/busybox:1",
                "command": ["/bin/httpd"],
                "args": ["-f", "-p", "8080"],
                "workingDir": "/www",
                "env": [
                    {"name": "A", "value": "1"},
                    {"name": "POD", "valueFrom": {"fieldRef": {"fieldPath": "metadata.name"}}},
                    {"name": "APP", "valueFrom": {"fieldRef": {"fieldPath": "metadata.labels['app']"}}},
                ],
                "ports": [{"name": "http", "containerPort": 8080}],
                "resources": {"requests": {"cpu": "100m", "memory": "32Mi", "ephemeral-storage": "10Mi"}, "limits": {"cpu": "0.5", "memory": "128Mi", "ephemeral-storage": "20Mi"}},
                "readinessProbe": {"httpGet": {"path": "/", "port": "http"}, "periodSeconds": 2},
            }],
        }));
        let s = pod_spec(&p).unwrap();
        assert_eq!(
            (s.uid.as_str(), s.namespace.as_str(), s.name.as_str()),
            ("u-1", "default", "web")
        );
        assert_eq!(s.restart_policy, pb::RestartPolicy::OnFailure as i32);
        assert_eq!(s.termination_grace_period_seconds, 5);
        let c = &s.containers[0];
        assert_eq!(c.pull_policy, pb::PullPolicy::IfNotPresent as i32);
        assert_eq!(c.command, vec!["/bin/httpd"]);
        assert_eq!(c.working_dir, "/www");
        let env: Vec<_> = c
            .env
            .iter()
            .map(|e| (e.name.as_str(), e.value.as_str()))
            .collect();
        assert_eq!(env, vec![("A", "1"), ("POD", "web"), ("APP", "hello")]);
        assert_eq!(c.ports[0].container_port, 8080);
        assert_eq!(c.ports[0].protocol, "TCP");
        assert_eq!(
            c.resources,
            Some(pb::ResourceSpec {
                cpu_request_millis: 100,
                cpu_limit_millis: 500,
                memory_request_bytes: 32 << 20,
                memory_limit_bytes: 128 << 20,
                ephemeral_storage_request_bytes: 10 << 20,
                ephemeral_storage_limit_bytes: 20 << 20,
            })
        );
        let probe = c.readiness_probe.as_ref().unwrap();
        assert_eq!(
            probe.handler,
            Some(pb::probe::Handler::HttpGet(pb::HttpGetAction {
                path: "/".into(),
                port: 8080
            }))
        );
        assert_eq!(
            (
                probe.period_seconds,
                probe.timeout_seconds,
                probe.failure_threshold
            ),
            (2, 1, 3)
        );
        assert_eq!(s.spec_hash, spec_hash(&s));
        assert_eq!(s.spec_hash.len(), 16);
    }

    #[test]
    fn defaults_and_hash_stability() {
        let p = pod(json!({"containers": [{"name": "c", "image": "busybox"}]}));
        let s = pod_spec(&p).unwrap();
        assert_eq!(s.restart_policy, pb::RestartPolicy::Always as i32);
        assert_eq!(s.termination_grace_period_seconds, 30);
        // No tag means :latest, which Kubernetes pulls always.
        assert_eq!(s.containers[0].pull_policy, pb::PullPolicy::Always as i32);
        assert_eq!(s.containers[0].resources, Some(pb::ResourceSpec::default()));
        assert_eq!(pod_spec(&p).unwrap().spec_hash, s.spec_hash);
        let changed = pod(json!({"containers": [{"name": "c", "image": "busybox:2"}]}));
        assert_ne!(pod_spec(&changed).unwrap().spec_hash, s.spec_hash);
    }

    #[test]
    fn limit_only_sets_request() {
        let p = pod(json!({"containers": [{"name": "c", "image": "b:1",
            "resources": {"limits": {"cpu": "1", "memory": "1Gi"}}}]}));
        let r = pod_spec(&p).unwrap().containers[0].resources.unwrap();
        assert_eq!(
            (r.cpu_request_millis, r.memory_request_bytes),
            (1000, 1 << 30)
        );
        let r = decloud_crds::pods::pod_requests(&p);
        assert_eq!((r.cpu_millis, r.memory_bytes), (1000, 1 << 30));
    }

    #[test]
    fn unsupported_inputs_are_errors() {
        let cases = [
            json!({"containers": [{"name": "c", "image": "b:1", "env": [{"name": "S", "valueFrom": {"resourceFieldRef": {"resource": "limits.cpu"}}}]}]}),
            json!({"containers": [{"name": "c", "image": "b:1", "resources": {"requests": {"cpu": "lots"}}}]}),
            json!({"containers": [{"name": "c", "image": "b:1", "readinessProbe": {"httpGet": {"port": "nope"}}}]}),
            json!({"initContainers": [{"name": "i", "image": "b:1"}], "containers": [{"name": "c", "image": "b:1"}]}),
            json!({"containers": [{"name": "c"}]}),
        ];
        for spec in cases {
            assert!(pod_spec(&pod(spec.clone())).is_err(), "{spec}");
        }
    }

    #[test]
    fn host_aliases_are_carried_and_bounded() {
        let c = json!([{"name": "c", "image": "b:1"}]);
        let ok = pod_spec(&pod(json!({"containers": c, "hostAliases": [
            {"ip": "100.64.0.9", "hostnames": ["db", "db.shop.svc.decloud"]}]})))
        .unwrap();
        assert_eq!(ok.host_aliases.len(), 1);
        assert_eq!(ok.host_aliases[0].hostnames, ["db", "db.shop.svc.decloud"]);
        let too_many: Vec<_> = (0..=pb::MAX_HOST_ALIASES)
            .map(|i| json!({"ip": "100.64.0.9", "hostnames": [format!("s{i}")]}))
            .collect();
        for aliases in [
            json!([{"ip": "not-an-ip", "hostnames": ["db"]}]),
            json!([{"ip": "100.64.0.9", "hostnames": ["db\n1.2.3.4 evil"]}]),
            json!([{"ip": "100.64.0.9", "hostnames": ["a b"]}]),
            json!([{"ip": "100.64.0.9", "hostnames": [""]}]),
            json!([{"ip": "100.64.0.9", "hostnames": ["a", "b", "c", "d", "e"]}]),
            json!(too_many),
        ] {
            let p = pod(json!({"containers": c, "hostAliases": aliases}));
            assert!(pod_spec(&p).is_err(), "{aliases}");
        }
    }

    #[test]
    fn hostile_volumes_are_refused() {
        let with = |volumes: serde_json::Value, mounts: serde_json::Value| {
            pod(json!({"volumes": volumes,
                "containers": [{"name": "c", "image": "b:1", "volumeMounts": mounts}]}))
        };
        let cm = |items: serde_json::Value| json!([{"name": "v", "configMap": {"name": "cm", "items": items}}]);
        let cases = [
            (
                cm(json!([{"key": "k", "path": "../etc/passwd"}])),
                json!([]),
                "must not contain '..'",
            ),
            (
                cm(json!([{"key": "k", "path": "/etc/passwd"}])),
                json!([]),
                "relative path",
            ),
            (
                cm(json!([{"key": "k", "path": "a/..data"}])),
                json!([]),
                "starting with '..'",
            ),
            (
                cm(json!([{"key": "k", "path": "a", "mode": 0o4755}])),
                json!([]),
                "0..=0777",
            ),
            (
                json!([{"name": "v", "secret": {"secretName": "s", "defaultMode": 4096}}]),
                json!([]),
                "0..=0777",
            ),
            (
                cm(json!([])),
                json!([{"name": "v", "mountPath": "/x", "subPath": "../../x"}]),
                "must not contain '..'",
            ),
            (
                cm(json!([])),
                json!([{"name": "v", "mountPath": "/x", "subPath": "/abs"}]),
                "relative path",
            ),
            (
                cm(json!([])),
                json!([{"name": "v", "mountPath": "rel"}]),
                "absolute path",
            ),
            (
                cm(json!([])),
                json!([{"name": "v", "mountPath": "/a/../b"}]),
                "absolute path",
            ),
            (
                cm(json!([])),
                json!([{"name": "v", "mountPath": "/a", "mountPropagation": "Bidirectional"}]),
                "propagation",
            ),
            (
                json!(
                    (0..33)
                        .map(|i| json!({"name": format!("v{i}"), "emptyDir": {}}))
                        .collect::<Vec<_>>()
                ),
                json!([]),
                "at most 32",
            ),
            (
                cm(json!(
                    (0..257)
                        .map(|i| json!({"key": "k", "path": format!("p{i}")}))
                        .collect::<Vec<_>>()
                )),
                json!([]),
                "at most 256",
            ),
            (
                json!([{"name": "v", "emptyDir": {}}]),
                json!(
                    (0..33)
                        .map(|i| json!({"name": "v", "mountPath": format!("/m{i}")}))
                        .collect::<Vec<_>>()
                ),
                "at most 32",
            ),
        ];
        for (volumes, mounts, want) in cases {
            let p = with(volumes.clone(), mounts.clone());
            match pod_spec(&p) {
                Err(e) => assert!(e.to_string().contains(want), "{e} lacks {want:?}"),
                Ok(_) => panic!("accepted {volumes} {mounts}"),
            }
        }
        // The service-account volume (projected) and its mount are left out, not refused.
        let p = with(
            json!([{"name": "kube-api-access", "projected": {"sources": []}}, {"name": "v", "secret": {"secretName": "s"}}]),
            json!([{"name": "kube-api-access", "mountPath": "/var/run/secrets/kubernetes.io/serviceaccount"},
                   {"name": "v", "mountPath": "/etc/s", "readOnly": true, "subPath": "k"}]),
        );
        let spec = pod_spec(&p).unwrap();
        assert_eq!(spec.volumes.len(), 1);
        assert_eq!(spec.containers[0].volume_mounts.len(), 1);
        assert_eq!(spec.containers[0].volume_mounts[0].sub_path, "k");
        assert!(spec.needs_config);
    }

    #[test]
    fn latest_detection() {
        for (image, latest) in [
            ("busybox", true),
            ("busybox:latest", true),
            ("busybox:1", false),
            ("localhost:5000/busybox", true),
            ("localhost:5000/busybox:1", false),
            ("busybox@sha256:abc", false),
        ] {
            assert_eq!(image_tag_is_latest(image), latest, "{image}");
        }
    }
}
