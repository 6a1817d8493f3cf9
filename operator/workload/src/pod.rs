//! The pods a Workload's replicas run as: construction, template hash, and what is read back.

use std::collections::BTreeMap;

use decloud_crds::{
    Container, PodSpec, PodTemplate, Probe, ResourceList, Workload,
    contracts::{EDGE_TAINT, TEMPLATE_HASH_LABEL, WORKLOAD_LABEL},
    persistence::{claim_name, replica_pod_name},
    pods::pod_requests,
};
use k8s_openapi::{
    api::core::v1 as core,
    apimachinery::pkg::{api::resource::Quantity, util::intstr::IntOrString},
};
use kube::{Resource, ResourceExt, api::ObjectMeta};
use sha2::{Digest, Sha256};

use crate::{Error, Result, placement::Resources};

/// A stable hash of a pod template (16 hex digits): equal templates, equal hashes.
pub(crate) fn template_hash(template: &PodTemplate) -> String {
    // Struct fields serialize in declaration order and maps are BTreeMaps, so the JSON is
    // canonical for a given template.
    let json = serde_json::to_vec(template).unwrap_or_default();
    let digest = Sha256::digest(&json);
    digest.iter().take(8).map(|b| format!("{b:02x}")).collect()
}

/// What one replica of `spec` requests: the requests of the pod [`build_pod`] makes of it.
pub(crate) fn replica_requests(spec: &PodSpec) -> Resources {
    requests_of(&core::Pod {
        spec: Some(core::PodSpec {
            containers: spec.containers.iter().map(container).collect(),
            ..Default::default()
        }),
        ..Default::default()
    })
}

/// What a pod (of any origin) requests; limits stand in for missing requests.
pub(crate) fn requests_of(pod: &core::Pod) -> Resources {
    Resources::from(pod_requests(pod))
}

fn phase_of(pod: &core::Pod) -> &str {
    pod.status
        .as_ref()
        .and_then(|s| s.phase.as_deref())
        .unwrap_or("Pending")
}

/// The pod for one new replica of `workload` on node `node`: named `<workload>-<ordinal>`
/// and mounting its claims when `ordinal` is given (a stateful replica), else with a generated
/// name.
pub(crate) fn build_pod(
    workload: &Workload,
    hash: &str,
    node: &str,
    ordinal: Option<u32>,
) -> Result<core::Pod> {
    let name = workload.name_any();
    let identity = ordinal.map(|n| replica_pod_name(&name, n));
    let owner = workload
        .controller_owner_ref(&())
        .ok_or_else(|| Error::InvalidWorkload("the Workload has no uid yet".into()))?;
    let template = &workload.spec.template;
    let meta = template.metadata.clone().unwrap_or_default();
    let mut labels = meta.labels;
    labels.insert(WORKLOAD_LABEL.into(), name.clone());
    labels.insert(TEMPLATE_HASH_LABEL.into(), hash.into());
    let spec = &template.spec;
    Ok(core::Pod {
        metadata: ObjectMeta {
            generate_name: identity
                .is_none()
                .then(|| format!("{name}-{}-", &hash[..hash.len().min(8)])),
            name: identity.clone(),
            namespace: workload.namespace(),
            labels: Some(labels),
            annotations: (!meta.annotations.is_empty()).then_some(meta.annotations),
            owner_references: Some(vec![owner]),
            ..Default::default()
        },
        spec: Some(core::PodSpec {
            node_name: Some(node.into()),
            node_selector: (!spec.node_selector.is_empty()).then(|| spec.node_selector.clone()),
            tolerations: Some(vec![core::Toleration {
                key: Some(EDGE_TAINT.into()),
                operator: Some("Exists".into()),
                effect: Some("NoSchedule".into()),
                ..Default::default()
            }]),
            restart_policy: Some(spec.restart_policy.as_str().into()),
            termination_grace_period_seconds: Some(spec.termination_grace_period_seconds),
            // A volunteer's machine must never see cluster credentials.
            automount_service_account_token: Some(false),
            enable_service_links: Some(false),
            containers: spec.containers.iter().map(container).collect(),
            volumes: {
                let mut volumes: Vec<core::Volume> = spec.volumes.iter().map(volume).collect();
                if let Some(pod) = &identity {
                    volumes.extend(workload.spec.volume_claim_templates.iter().map(|t| {
                        core::Volume {
                            name: t.name().to_string(),
                            persistent_volume_claim: Some(
                                core::PersistentVolumeClaimVolumeSource {
                                    claim_name: claim_name(t.name(), pod),
                                    read_only: None,
                                },
                            ),
                            ..Default::default()
                        }
                    }));
                }
                (!volumes.is_empty()).then_some(volumes)
            },
            image_pull_secrets: (!spec.image_pull_secrets.is_empty()).then(|| {
                spec.image_pull_secrets
                    .iter()
                    .map(|s| core::LocalObjectReference {
                        name: s.name.clone(),
                    })
                    .collect()
            }),
            security_context: spec
                .security_context
                .as_ref()
                .map(|s| core::PodSecurityContext {
                    run_as_user: s.run_as_user,
                    run_as_group: s.run_as_group,
                    run_as_non_root: s.run_as_non_root,
                    ..Default::default()
                }),
            ..Default::default()
        }),
        status: None,
    })
}

fn container(c: &Container) -> core::Container {
    let list = |l: &Option<ResourceList>| {
        l.as_ref()
            .map(|l| {
                let mut m = BTreeMap::new();
                if let Some(cpu) = &l.cpu {
                    m.insert("cpu".to_string(), Quantity(cpu.clone()));
                }
                if let Some(mem) = &l.memory {
                    m.insert("memory".to_string(), Quantity(mem.clone()));
                }
                m
            })
            .filter(|m| !m.is_empty())
    };
    core::Container {
        name: c.name.clone(),
        image: Some(c.image.clone()),
        image_pull_policy: Some(c.image_pull_policy.as_str().into()),
        command: (!c.command.is_empty()).then(|| c.command.clone()),
        args: (!c.args.is_empty()).then(|| c.args.clone()),
        working_dir: c.working_dir.clone(),
        env: (!c.env.is_empty()).then(|| {
            c.env
                .iter()
                .map(|e| core::EnvVar {
                    name: e.name.clone(),
                    value: e.value_from.is_none().then(|| e.value.clone()),
                    value_from: e.value_from.as_ref().map(|f| core::EnvVarSource {
                        config_map_key_ref: f.config_map_key_ref.as_ref().map(|r| {
                            core::ConfigMapKeySelector {
                                name: r.name.clone(),
                                key: r.key.clone(),
                                optional: r.optional,
                            }
                        }),
                        secret_key_ref: f.secret_key_ref.as_ref().map(|r| {
                            core::SecretKeySelector {
                                name: r.name.clone(),
                                key: r.key.clone(),
                                optional: r.optional,
                            }
                        }),
                        ..Default::default()
                    }),
                })
                .collect()
        }),
        env_from: (!c.env_from.is_empty()).then(|| {
            c.env_from
                .iter()
                .map(|f| core::EnvFromSource {
                    prefix: f.prefix.clone(),
                    config_map_ref: f.config_map_ref.as_ref().map(|r| core::ConfigMapEnvSource {
                        name: r.name.clone(),
                        optional: r.optional,
                    }),
                    secret_ref: f.secret_ref.as_ref().map(|r| core::SecretEnvSource {
                        name: r.name.clone(),
                        optional: r.optional,
                    }),
                })
                .collect()
        }),
        volume_mounts: (!c.volume_mounts.is_empty()).then(|| {
            c.volume_mounts
                .iter()
                .map(|m| core::VolumeMount {
                    name: m.name.clone(),
                    mount_path: m.mount_path.clone(),
                    sub_path: m.sub_path.clone(),
                    read_only: m.read_only,
                    ..Default::default()
                })
                .collect()
        }),
        ports: (!c.ports.is_empty()).then(|| {
            c.ports
                .iter()
                .map(|p| core::ContainerPort {
                    name: p.name.clone(),
                    container_port: p.container_port,
                    protocol: Some(
                        match p.protocol {
                            decloud_crds::Protocol::Tcp => "TCP",
                            decloud_crds::Protocol::Udp => "UDP",
                        }
                        .into(),
                    ),
                    ..Default::default()
                })
                .collect()
        }),
        resources: c.resources.as_ref().map(|r| core::ResourceRequirements {
            requests: list(&r.requests),
            limits: list(&r.limits),
            ..Default::default()
        }),
        readiness_probe: c.readiness_probe.as_ref().map(probe),
        liveness_probe: c.liveness_probe.as_ref().map(probe),
        startup_probe: c.startup_probe.as_ref().map(probe),
        security_context: c.security_context.as_ref().map(|s| core::SecurityContext {
            run_as_user: s.run_as_user,
            run_as_group: s.run_as_group,
            run_as_non_root: s.run_as_non_root,
            read_only_root_filesystem: s.read_only_root_filesystem,
            ..Default::default()
        }),
        ..Default::default()
    }
}

fn key_to_path(items: &[decloud_crds::KeyToPath]) -> Option<Vec<core::KeyToPath>> {
    (!items.is_empty()).then(|| {
        items
            .iter()
            .map(|i| core::KeyToPath {
                key: i.key.clone(),
                path: i.path.clone(),
                mode: i.mode,
            })
            .collect()
    })
}

fn volume(v: &decloud_crds::Volume) -> core::Volume {
    core::Volume {
        name: v.name.clone(),
        config_map: v.config_map.as_ref().map(|c| core::ConfigMapVolumeSource {
            name: c.name.clone(),
            items: key_to_path(&c.items),
            default_mode: c.default_mode,
            optional: c.optional,
        }),
        secret: v.secret.as_ref().map(|s| core::SecretVolumeSource {
            secret_name: Some(s.secret_name.clone()),
            items: key_to_path(&s.items),
            default_mode: s.default_mode,
            optional: s.optional,
        }),
        empty_dir: v.empty_dir.as_ref().map(|e| core::EmptyDirVolumeSource {
            medium: e.medium.clone(),
            size_limit: e.size_limit.clone().map(Quantity),
        }),
        ..Default::default()
    }
}

fn probe(p: &Probe) -> core::Probe {
    core::Probe {
        http_get: p.http_get.as_ref().map(|h| core::HTTPGetAction {
            path: Some(h.path.clone()),
            port: IntOrString::Int(h.port),
            ..Default::default()
        }),
        tcp_socket: p.tcp_socket.as_ref().map(|t| core::TCPSocketAction {
            port: IntOrString::Int(t.port),
            ..Default::default()
        }),
        exec: p.exec.as_ref().map(|e| core::ExecAction {
            command: Some(e.command.clone()),
        }),
        initial_delay_seconds: p.initial_delay_seconds,
        period_seconds: p.period_seconds,
        timeout_seconds: p.timeout_seconds,
        success_threshold: p.success_threshold,
        failure_threshold: p.failure_threshold,
        ..Default::default()
    }
}

/// A replica's pod as the controller reads it back.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct Replica {
    /// Pod name.
    pub name: String,
    /// `spec.nodeName`, if bound.
    pub node: Option<String>,
    /// The template hash label.
    pub hash: String,
    /// `status.phase` (`Pending` when unset).
    pub phase: String,
    /// The pod's Ready condition is True.
    pub ready: bool,
    /// Deletion has begun.
    pub terminating: bool,
}

impl Replica {
    /// Reads a pod.
    pub(crate) fn from_pod(pod: &core::Pod) -> Self {
        let ready = pod
            .status
            .as_ref()
            .and_then(|s| s.conditions.as_ref())
            .and_then(|cs| cs.iter().find(|c| c.type_ == "Ready"))
            .is_some_and(|c| c.status == "True");
        Self {
            name: pod.name_any(),
            node: pod.spec.as_ref().and_then(|s| s.node_name.clone()),
            hash: pod
                .labels()
                .get(TEMPLATE_HASH_LABEL)
                .cloned()
                .unwrap_or_default(),
            phase: phase_of(pod).to_string(),
            ready,
            terminating: pod.metadata.deletion_timestamp.is_some(),
        }
    }
}

#[cfg(test)]
mod tests;
