//! [`ContainerRuntime`] on the local Docker engine (bollard).
//!
//! Pod network design: the edge owns one user-defined bridge network (default `decloud`).
//! A pod's first container is attached to it and owns the pod's network namespace; its address
//! on the bridge is the pod IP. Every further container of the pod joins that namespace
//! (`network_mode: container:<first>`), so all containers of a pod share `localhost` and the
//! pod IP, as in Kubernetes. There is no separate pause container (there is no registry to fetch
//! one from), so when the first container is recreated, the pod worker restarts the others so
//! they join the new namespace.
//!
//! Isolation: no privileged mode, no host namespaces, no host paths; all capabilities dropped
//! except [`ALLOWED_CAPABILITIES`]; `no-new-privileges`; a pids limit always
//! ([`PIDS_LIMIT`]); CPU and memory limits from the pod's resources, or [`DEFAULT_CPU_LIMIT_MILLIS`]
//! and [`DEFAULT_MEMORY_LIMIT`] when it sets none; swap limited to memory; Docker's default
//! seccomp profile (never `unconfined`); only the edge's own bridge network.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use bollard::Docker;
use bollard::errors::Error as DockerError;
use bollard::models::{
    ContainerCreateBody, ContainerInspectResponse, ExecConfig, HostConfig, HostConfigLogConfig,
    Mount, MountType, NetworkCreateRequest,
};
use bollard::query_parameters::{
    CreateContainerOptionsBuilder, CreateImageOptionsBuilder, EventsOptionsBuilder,
    InspectContainerOptions, InspectContainerOptionsBuilder, ListContainersOptionsBuilder,
    LogsOptionsBuilder, RemoveContainerOptionsBuilder, StatsOptionsBuilder,
    StopContainerOptionsBuilder,
};
use bytes::Bytes;
use futures::StreamExt;
use futures::stream::BoxStream;
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;

use decloud_proto as pb;

use decloud_crds::contracts::container_labels as labels;

use super::container_runtime::ContainerRuntime;
use super::types::{
    ContainerInfo, ContainerMeasurements, ContainerStream, ContainerUsage, CreateRequest,
    LogOptions, PodNetwork, RuntimeEvent, StreamChunk, StreamHandle, StreamSpec,
};
use crate::error::{Error, Result};
use crate::host::MIN_MEMORY_BYTES;
use crate::images::{ImagePolicy, PulledImages, RegistryGuard};

/// Capabilities a pod's containers keep; everything else is dropped. Enough for common images
/// that start as root and drop to a user (nginx, httpd), bind low ports, and chown their files.
pub(crate) const ALLOWED_CAPABILITIES: &[&str] = &[
    "CHOWN",
    "DAC_OVERRIDE",
    "FOWNER",
    "SETUID",
    "SETGID",
    "NET_BIND_SERVICE",
    "KILL",
];

/// Maximum number of processes in one container (fork bombs stop here).
pub(crate) const PIDS_LIMIT: i64 = 256;
/// Memory limit of a container whose pod sets none (bytes): no container is ever unbounded.
pub(crate) const DEFAULT_MEMORY_LIMIT: i64 = 512 << 20;
/// CPU limit of a container whose pod sets none (millicores).
pub(crate) const DEFAULT_CPU_LIMIT_MILLIS: i64 = 1000;
/// A container's log file is rotated at this size (json-file `max-size`, bytes) ...
pub(crate) const LOG_MAX_BYTES: i64 = 10 << 20;
/// ... and this many files are kept (json-file `max-file`): at most 20 MiB of logs each,
/// counted in the pod's ephemeral-storage use.
pub(crate) const LOG_MAX_FILES: u32 = 2;

/// Whether the engine's storage driver enforces `--storage-opt size=` on this machine:
/// btrfs and zfs do; overlay2 only on xfs mounted with project quotas (`prjquota`/`pquota`);
/// the others (overlay2 on ext4, vfs, ...) refuse it, and the edge bounds writable layers by
/// measuring and evicting alone. `mount_options`: those of the filesystem holding the engine's
/// data root.
pub(crate) fn storage_quota_supported(
    driver: &str,
    backing_filesystem: &str,
    mount_options: &str,
) -> bool {
    match driver {
        "btrfs" | "zfs" => true,
        "overlay2" => {
            backing_filesystem == "xfs"
                && mount_options
                    .split(',')
                    .any(|o| matches!(o, "prjquota" | "pquota"))
        }
        _ => false,
    }
}

/// The options of the mount holding `path`, from `/proc/mounts` text (the longest mount point
/// that is a prefix of `path`).
pub(crate) fn mount_options_of(mounts: &str, path: &str) -> String {
    let within = |mount: &str| {
        mount == "/"
            || path == mount
            || path
                .strip_prefix(mount)
                .is_some_and(|rest| rest.starts_with('/'))
    };
    mounts
        .lines()
        .take(10_000)
        .filter_map(|l| {
            let mut f = l.split_whitespace();
            let (_dev, mount, _fs, opts) = (f.next()?, f.next()?, f.next()?, f.next()?);
            within(mount).then(|| (mount.len(), opts.to_string()))
        })
        .max_by_key(|(len, _)| *len)
        .map(|(_, o)| o)
        .unwrap_or_default()
}

/// Which images an edge may use for tenants, and from where it may pull.
#[derive(Debug, Clone, Default)]
pub struct ImageRules {
    /// Local images the volunteer lends (`--lend-local-image`); none by default.
    pub lent: ImagePolicy,
    /// Registry hosts a pull may go to.
    pub registries: RegistryGuard,
    /// What this edge pulled (only those are reused, besides the lent ones).
    pub pulled: Arc<PulledImages>,
}

/// The offer as the engine enforces it: the cgroup parent every container runs under and
/// the defaults of containers that set no limits.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ResourceCeiling {
    /// `HostConfig.CgroupParent` of every container (`None`: the engine's default).
    pub cgroup_parent: Option<String>,
    /// Offered CPU (millicores); container defaults never exceed it. 0: unknown.
    pub cpu_millis: i64,
    /// Offered memory (bytes); container defaults never exceed it. 0: unknown.
    pub memory_bytes: i64,
    /// When the storage driver enforces `--storage-opt size=`: each container's writable
    /// layer is capped there at its `ephemeral-storage` limit, else at this (bytes) — the
    /// per-pod default share. `None`: the driver cannot (eviction alone bounds it).
    pub storage_quota_default: Option<i64>,
}

/// What `docker info` says about the engine that matters for safety.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct EngineFacts {
    /// `cgroupfs` or `systemd`.
    pub cgroup_driver: String,
    /// `1` or `2`.
    pub cgroup_version: String,
    /// The daemon runs with `userns-remap`: root in a container is an unprivileged user on
    /// the host.
    pub userns_remap: bool,
    /// Storage driver (`overlay2`, …).
    pub storage_driver: String,
    /// The filesystem under it (`Backing Filesystem`: `extfs`, `xfs`, …), if reported.
    pub backing_filesystem: String,
    /// The engine's data root (`/var/lib/docker`).
    pub data_root: String,
    /// `SecurityOptions` as reported (`name=seccomp,profile=default`, `name=userns`, …).
    pub security_options: Vec<String>,
}

/// The Docker engine, as one edge uses it.
#[derive(Clone)]
pub struct DockerRuntime {
    docker: Docker,
    node: String,
    network: String,
    images: ImageRules,
    ceiling: ResourceCeiling,
}

impl std::fmt::Debug for DockerRuntime {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DockerRuntime")
            .field("node", &self.node)
            .field("network", &self.network)
            .finish()
    }
}

fn map_err(e: DockerError) -> Error {
    match e {
        DockerError::DockerResponseServerError {
            status_code: 404,
            message,
        } => Error::NotFound(message),
        DockerError::DockerResponseServerError { message, .. } => Error::Runtime(message),
        DockerError::DockerStreamError { error } => Error::Runtime(error),
        other => Error::Runtime(other.to_string()),
    }
}

/// The engine's own words for a failed request (no "Docker responded with status code" prefix).
fn engine_message(e: DockerError) -> String {
    match e {
        DockerError::DockerResponseServerError { message, .. } => message,
        DockerError::DockerStreamError { error } => error,
        other => other.to_string(),
    }
}

/// RFC 3339 to Unix ms; Docker's zero time (`0001-01-01…`) becomes 0.
fn parse_time(s: Option<&str>) -> i64 {
    s.and_then(|s| s.parse::<jiff::Timestamp>().ok())
        .map(|t| t.as_millisecond().max(0))
        .unwrap_or(0)
}

/// Splits `repo[:tag]` for the pull API; no tag means `latest` (Docker would pull every tag).
fn split_image(image: &str) -> (&str, &str) {
    if image.contains('@') {
        return (image, "");
    }
    let last_slash = image.rfind('/').map_or(0, |i| i + 1);
    match image[last_slash..].rfind(':') {
        Some(i) => (&image[..last_slash + i], &image[last_slash + i + 1..]),
        None => (image, "latest"),
    }
}

/// Docker names allow `[a-zA-Z0-9][a-zA-Z0-9_.-]*`.
fn sanitize(s: &str) -> String {
    s.chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || c == '.' || c == '-' {
                c
            } else {
                '-'
            }
        })
        .collect()
}

/// Docker's option naming a bridge network's host interface.
const BRIDGE_NAME_OPTION: &str = "com.docker.network.bridge.name";
/// Docker's option switching inter-container traffic on a bridge network.
const ICC_OPTION: &str = "com.docker.network.bridge.enable_icc";

/// The limits a container runs with: its own, or defaults no larger than the offer; never
/// below Docker's 6 MiB minimum (a smaller request, valid in Kubernetes, is raised to it).
/// (memory limit, memory reservation, CPU limit in millicores)
pub(crate) fn effective_limits(
    res: &pb::ResourceSpec,
    ceiling: &ResourceCeiling,
) -> (i64, Option<i64>, i64) {
    let cap = |default: i64, offer: i64| {
        if offer > 0 {
            default.min(offer)
        } else {
            default
        }
    };
    let memory = if res.memory_limit_bytes > 0 {
        res.memory_limit_bytes
    } else {
        cap(DEFAULT_MEMORY_LIMIT, ceiling.memory_bytes).max(res.memory_request_bytes)
    }
    .max(MIN_MEMORY_BYTES);
    let reservation = (res.memory_request_bytes > 0)
        .then(|| res.memory_request_bytes.clamp(MIN_MEMORY_BYTES, memory));
    let cpu = if res.cpu_limit_millis > 0 {
        res.cpu_limit_millis
    } else {
        cap(DEFAULT_CPU_LIMIT_MILLIS, ceiling.cpu_millis).max(res.cpu_request_millis)
    }
    .max(10);
    (memory, reservation, cpu)
}

// Serialises network creation inside one process: Engine 20.10 allows duplicate network names
// when asked through the API, and several edges may share one process in tests.
static NETWORK_LOCK: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

impl DockerRuntime {
    /// Connects to the engine named by `DOCKER_HOST` (or the local socket) and negotiates the
    /// API version. `node` is the node name written to and filtered on in labels.
    pub async fn connect(node: &str, network: &str) -> Result<Self> {
        Self::connect_to(None, node, network).await
    }

    /// As [`DockerRuntime::connect`], to the engine at `host` (`unix://PATH`, `tcp://…`) when
    /// given: an engine of the edge's own.
    pub async fn connect_to(host: Option<&str>, node: &str, network: &str) -> Result<Self> {
        let docker = match host {
            Some(h) => Docker::connect_with_host(h),
            None => Docker::connect_with_defaults(),
        }
        .map_err(|e| Error::Runtime(format!("cannot reach the Docker engine: {e}")))?
        .negotiate_version()
        .await
        .map_err(|e| {
            Error::Runtime(format!(
                "cannot reach the Docker engine (is it running? DOCKER_HOST?): {e}"
            ))
        })?;
        Ok(DockerRuntime {
            docker,
            node: node.to_string(),
            network: network.to_string(),
            images: ImageRules::default(),
            ceiling: ResourceCeiling::default(),
        })
    }

    /// Uses `rules` for images: lent local images, registries, the pull ledger.
    pub fn with_image_rules(mut self, rules: ImageRules) -> Self {
        self.images = rules;
        self
    }

    /// Runs every container under `ceiling`.
    pub fn with_ceiling(mut self, ceiling: ResourceCeiling) -> Self {
        self.ceiling = ceiling;
        self
    }

    /// The safety-relevant facts of the engine (`docker info`).
    pub async fn engine_facts(&self) -> Result<EngineFacts> {
        let info = self.docker.info().await.map_err(map_err)?;
        let security_options = info.security_options.unwrap_or_default();
        Ok(EngineFacts {
            cgroup_driver: info
                .cgroup_driver
                .map(|d| d.to_string())
                .unwrap_or_default(),
            cgroup_version: info
                .cgroup_version
                .map(|v| v.to_string())
                .unwrap_or_default(),
            userns_remap: security_options
                .iter()
                .any(|o| o.split(',').any(|kv| kv == "name=userns")),
            storage_driver: info.driver.unwrap_or_default(),
            backing_filesystem: info
                .driver_status
                .unwrap_or_default()
                .into_iter()
                .find(|kv| kv.first().is_some_and(|k| k == "Backing Filesystem"))
                .and_then(|kv| kv.get(1).cloned())
                .unwrap_or_default(),
            data_root: info.docker_root_dir.unwrap_or_default(),
            security_options,
        })
    }

    /// The host interface of the edge's network (its bridge), after [`ContainerRuntime::prepare`].
    pub async fn bridge_interface(&self) -> Result<String> {
        let net = self
            .docker
            .inspect_network(&self.network, None)
            .await
            .map_err(map_err)?;
        if net.driver.as_deref() != Some("bridge") {
            return Err(Error::Unsupported(format!(
                "network {:?} is not a bridge network",
                self.network
            )));
        }
        let named = net
            .options
            .as_ref()
            .and_then(|o| o.get(BRIDGE_NAME_OPTION))
            .filter(|n| !n.is_empty())
            .cloned();
        let id = net.id.unwrap_or_default();
        Ok(named.unwrap_or_else(|| format!("br-{}", id.chars().take(12).collect::<String>())))
    }

    /// The IPv4 gateway of the edge's network: the host's address on its bridge.
    pub async fn bridge_gateway(&self) -> Result<std::net::Ipv4Addr> {
        let net = self
            .docker
            .inspect_network(&self.network, None)
            .await
            .map_err(map_err)?;
        net.ipam
            .and_then(|i| i.config)
            .unwrap_or_default()
            .into_iter()
            .filter_map(|c| c.gateway)
            .find_map(|g| g.parse().ok())
            .ok_or_else(|| {
                Error::Unsupported(format!("network {:?} has no IPv4 gateway", self.network))
            })
    }

    /// Removes the edge's network if no container is attached any more (`uninstall`).
    pub async fn remove_network(&self) -> Result<()> {
        match self.docker.remove_network(&self.network).await {
            Ok(()) => Ok(()),
            Err(DockerError::DockerResponseServerError {
                status_code: 404, ..
            }) => Ok(()),
            Err(e) => Err(map_err(e)),
        }
    }

    /// The Docker volumes labelled as this edge's (`uninstall` removes them once confirmed).
    pub async fn own_volumes(&self) -> Result<Vec<String>> {
        let opts = bollard::query_parameters::ListVolumesOptionsBuilder::default()
            .filters(&self.own_filters())
            .build();
        let list = self
            .docker
            .list_volumes(Some(opts))
            .await
            .map_err(map_err)?;
        Ok(list
            .volumes
            .unwrap_or_default()
            .into_iter()
            .filter(|v| self.is_own(&v.labels))
            .map(|v| v.name)
            .collect())
    }

    /// Removes volume `name` (`uninstall`).
    pub async fn remove_volume(&self, name: &str) -> Result<()> {
        match self
            .docker
            .remove_volume(name, None::<bollard::query_parameters::RemoveVolumeOptions>)
            .await
        {
            Ok(()) => Ok(()),
            Err(DockerError::DockerResponseServerError {
                status_code: 404, ..
            }) => Ok(()),
            Err(e) => Err(map_err(e)),
        }
    }

    fn own_filters(&self) -> HashMap<String, Vec<String>> {
        HashMap::from([(
            "label".to_string(),
            vec![
                format!("{}={}", labels::MANAGED_BY, labels::MANAGED_BY_VALUE),
                format!("{}={}", labels::NODE, self.node),
            ],
        )])
    }

    fn is_own(&self, l: &HashMap<String, String>) -> bool {
        l.get(labels::MANAGED_BY).map(String::as_str) == Some(labels::MANAGED_BY_VALUE)
            && l.get(labels::NODE) == Some(&self.node)
    }

    /// The engine accepts duplicate network names through the API, so two edges starting at
    /// once (in separate processes) may both create one. Every edge keeps the same one (the
    /// smallest id) and removes the others while they are still empty.
    async fn dedupe_network(&self) -> Result<()> {
        let filters = HashMap::from([("name".to_string(), vec![self.network.clone()])]);
        let opts = bollard::query_parameters::ListNetworksOptionsBuilder::default()
            .filters(&filters)
            .build();
        let mut ids: Vec<String> = self
            .docker
            .list_networks(Some(opts))
            .await
            .map_err(map_err)?
            .into_iter()
            .filter(|n| n.name.as_deref() == Some(self.network.as_str()))
            .filter_map(|n| n.id)
            .collect();
        ids.sort();
        for extra in ids.iter().skip(1) {
            tracing::info!(network = %self.network, id = %extra, "removing a duplicate network");
            let _ = self.docker.remove_network(extra).await;
        }
        Ok(())
    }

    async fn pull(&self, image: &str, auth: Option<&pb::RegistryAuth>) -> Result<()> {
        let (repo, tag) = split_image(image);
        let mut opts = CreateImageOptionsBuilder::default().from_image(repo);
        if !tag.is_empty() {
            opts = opts.tag(tag);
        }
        // The pod's pull credential, for this one request (never logged, never stored).
        let credentials = auth.map(|a| bollard::auth::DockerCredentials {
            username: Some(a.username.clone()),
            password: Some(a.password.clone()),
            serveraddress: Some(a.server.clone()),
            ..Default::default()
        });
        let mut progress = self
            .docker
            .create_image(Some(opts.build()), None, credentials);
        while let Some(item) = progress.next().await {
            if let Err(e) = item {
                return Err(Error::ImagePull {
                    reason: "ErrImagePull",
                    message: engine_message(e),
                });
            }
        }
        Ok(())
    }

    fn container_body(&self, req: CreateRequest<'_>) -> ContainerCreateBody {
        let (pod, c) = (req.pod, req.container);
        let labels = HashMap::from([
            (
                labels::MANAGED_BY.to_string(),
                labels::MANAGED_BY_VALUE.to_string(),
            ),
            (labels::NODE.to_string(), self.node.clone()),
            (labels::POD_UID.to_string(), pod.uid.clone()),
            (labels::POD_NAMESPACE.to_string(), pod.namespace.clone()),
            (labels::POD_NAME.to_string(), pod.name.clone()),
            (labels::CONTAINER.to_string(), c.name.clone()),
            (
                labels::RESTART_COUNT.to_string(),
                req.restart_count.to_string(),
            ),
            (labels::SPEC_HASH.to_string(), pod.spec_hash.clone()),
        ]);
        let res = c.resources.unwrap_or_default();
        // Limits always: the pod's, else a default (never below its request).
        let (memory_limit, memory_reservation, cpu_limit_millis) =
            effective_limits(&res, &self.ceiling);
        let own_net = matches!(req.network, PodNetwork::Own);
        let host_config = HostConfig {
            network_mode: Some(match req.network {
                PodNetwork::Own => self.network.clone(),
                PodNetwork::JoinContainer(id) => format!("container:{id}"),
            }),
            privileged: Some(false),
            cap_drop: Some(vec!["ALL".to_string()]),
            cap_add: Some(ALLOWED_CAPABILITIES.iter().map(|s| s.to_string()).collect()),
            security_opt: Some(vec!["no-new-privileges".to_string()]),
            pids_limit: Some(PIDS_LIMIT),
            memory: Some(memory_limit),
            memory_swap: Some(memory_limit),
            memory_reservation,
            cgroup_parent: self.ceiling.cgroup_parent.clone(),
            nano_cpus: Some(cpu_limit_millis * 1_000_000),
            cpu_shares: (res.cpu_request_millis > 0)
                .then_some((res.cpu_request_millis * 1024 / 1000).max(2)),
            // json-file so `docker logs` (and LogRequest) always works, bounded on disk.
            log_config: Some(HostConfigLogConfig {
                typ: Some("json-file".to_string()),
                config: Some(HashMap::from([
                    ("max-size".to_string(), LOG_MAX_BYTES.to_string()),
                    ("max-file".to_string(), LOG_MAX_FILES.to_string()),
                ])),
            }),
            // Service names (the operator's hostAliases): the pod's own /etc/hosts, never
            // the volunteer's resolver. Joined containers share the owner's file.
            extra_hosts: (own_net && !pod.host_aliases.is_empty()).then(|| extra_hosts(pod)),
            // The pod's volumes the edge prepared (config files on its tmpfs): bind mounts of
            // paths the edge made, never a path the pod named.
            mounts: (!req.mounts.is_empty()).then(|| {
                req.mounts
                    .iter()
                    .map(|m| Mount {
                        target: Some(m.target.clone()),
                        source: Some(m.source.clone()),
                        typ: Some(MountType::BIND),
                        read_only: Some(m.read_only),
                        ..Default::default()
                    })
                    .collect()
            }),
            readonly_rootfs: c
                .security_context
                .as_ref()
                .map(|s| s.read_only_root_filesystem)
                .filter(|r| *r),
            storage_opt: self.ceiling.storage_quota_default.map(|default| {
                let size = if res.ephemeral_storage_limit_bytes > 0 {
                    res.ephemeral_storage_limit_bytes
                } else {
                    default
                };
                HashMap::from([("size".to_string(), size.to_string())])
            }),
            ..Default::default()
        };
        // Kubernetes semantics: `command` replaces the ENTRYPOINT (and drops the image's CMD),
        // `args` replaces the CMD.
        let entrypoint = (!c.command.is_empty()).then(|| c.command.clone());
        let cmd = (!c.args.is_empty()).then(|| c.args.clone());
        ContainerCreateBody {
            image: Some(c.image.clone()),
            entrypoint,
            cmd,
            env: Some(
                req.env
                    .unwrap_or(&c.env)
                    .iter()
                    .map(|e| format!("{}={}", e.name, e.value))
                    .collect(),
            ),
            working_dir: (!c.working_dir.is_empty()).then(|| c.working_dir.clone()),
            // runAsUser/runAsGroup (checked against runAsNonRoot by the pod worker).
            user: c
                .security_context
                .as_ref()
                .and_then(|s| match (s.run_as_user, s.run_as_group) {
                    (Some(u), Some(g)) => Some(format!("{u}:{g}")),
                    (Some(u), None) => Some(u.to_string()),
                    (None, Some(g)) => Some(format!(
                        "{}:{g}",
                        req.image_user.filter(|u| !u.is_empty()).unwrap_or("0")
                    )),
                    (None, None) => None,
                }),
            labels: Some(labels),
            // Joined containers inherit hostname and ports from the namespace owner.
            hostname: own_net.then(|| pod.name.chars().take(63).collect()),
            exposed_ports: own_net.then(|| {
                c.ports
                    .iter()
                    .map(|p| {
                        let proto = if p.protocol.is_empty() {
                            "tcp"
                        } else {
                            &p.protocol
                        };
                        format!("{}/{}", p.container_port, proto.to_ascii_lowercase())
                    })
                    .collect()
            }),
            host_config: Some(host_config),
            ..Default::default()
        }
    }

    fn info_from(&self, r: ContainerInspectResponse) -> ContainerInfo {
        let config = r.config.unwrap_or_default();
        let l = config.labels.unwrap_or_default();
        let label = |k: &str| l.get(k).cloned().unwrap_or_default();
        let state = r.state.unwrap_or_default();
        let ip = r
            .network_settings
            .and_then(|n| n.networks)
            .and_then(|mut n| n.remove(&self.network))
            .and_then(|e| e.ip_address)
            .filter(|ip| !ip.is_empty());
        ContainerInfo {
            id: r.id.unwrap_or_default(),
            pod_uid: label(labels::POD_UID),
            pod_namespace: label(labels::POD_NAMESPACE),
            pod_name: label(labels::POD_NAME),
            container_name: label(labels::CONTAINER),
            restart_count: label(labels::RESTART_COUNT).parse().unwrap_or(0),
            spec_hash: label(labels::SPEC_HASH),
            image: config.image.unwrap_or_default(),
            image_id: r.image.unwrap_or_default(),
            running: state.running.unwrap_or(false),
            exit_code: state.exit_code.unwrap_or(0) as i32,
            oom_killed: state.oom_killed.unwrap_or(false),
            error: state.error.unwrap_or_default(),
            created_unix_millis: parse_time(r.created.as_deref()),
            started_unix_millis: parse_time(state.started_at.as_deref()),
            finished_unix_millis: parse_time(state.finished_at.as_deref()),
            ip,
        }
    }
}

/// `hostAliases` as Docker's `ExtraHosts` (`name:ip`), bounded as the operator bounds them.
fn extra_hosts(pod: &pb::PodSpec) -> Vec<String> {
    pod.host_aliases
        .iter()
        .take(pb::MAX_HOST_ALIASES)
        .filter(|a| a.ip.parse::<std::net::IpAddr>().is_ok())
        .flat_map(|a| {
            a.hostnames
                .iter()
                .take(pb::MAX_ALIAS_NAMES)
                .filter(|n| {
                    !n.is_empty()
                        && n.len() <= 253
                        && n.bytes()
                            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'.')
                })
                .map(move |n| format!("{n}:{}", a.ip))
        })
        .collect()
}

#[async_trait]
impl ContainerRuntime for DockerRuntime {
    fn name(&self) -> &'static str {
        "docker"
    }

    async fn version(&self) -> Result<String> {
        let v = self.docker.version().await.map_err(map_err)?;
        Ok(format!("docker://{}", v.version.unwrap_or_default()))
    }

    async fn pod_cidr(&self) -> Option<String> {
        let net = self
            .docker
            .inspect_network(&self.network, None)
            .await
            .ok()?;
        let configs = net.ipam?.config?;
        // The first IPv4 subnet: pods get their address from it.
        configs
            .into_iter()
            .filter_map(|c| c.subnet)
            .find(|s| s.contains('.'))
    }

    async fn prepare(&self) -> Result<()> {
        self.docker.ping().await.map_err(map_err)?;
        let _guard = NETWORK_LOCK.lock().await;
        if self
            .docker
            .inspect_network(&self.network, None)
            .await
            .is_ok()
        {
            return self.dedupe_network().await;
        }
        // Missing (or ambiguous: duplicates are resolved below).
        if self.network.is_empty() {
            return Err(Error::InvalidInput("empty Docker network name".into()));
        }
        let req = NetworkCreateRequest {
            name: self.network.clone(),
            driver: Some("bridge".to_string()),
            labels: Some(HashMap::from([(
                labels::MANAGED_BY.to_string(),
                labels::MANAGED_BY_VALUE.to_string(),
            )])),
            // Pods do not reach each other (the egress policy drops bridged traffic too).
            options: Some(HashMap::from([(
                ICC_OPTION.to_string(),
                "false".to_string(),
            )])),
            ..Default::default()
        };
        match self.docker.create_network(req).await {
            Ok(_) => {
                tracing::info!(network = %self.network, "created the edge's container network")
            }
            // Another process created it meanwhile.
            Err(DockerError::DockerResponseServerError {
                status_code: 409, ..
            }) => {}
            Err(e) => return Err(map_err(e)),
        }
        self.dedupe_network().await
    }

    async fn ensure_image(&self, image: &str, policy: pb::PullPolicy) -> Result<()> {
        self.ensure_image_with(image, policy, None).await
    }

    async fn ensure_image_with(
        &self,
        image: &str,
        policy: pb::PullPolicy,
        auth: Option<&pb::RegistryAuth>,
    ) -> Result<()> {
        let present = match self.docker.inspect_image(image).await {
            Ok(i) => Some(i.id.unwrap_or_default()),
            Err(DockerError::DockerResponseServerError {
                status_code: 404, ..
            }) => None,
            Err(e) => return Err(map_err(e)),
        };
        // A local image is used for a tenant only if this edge pulled it (same id) or the
        // volunteer lends it; anything else on the machine is the volunteer's own.
        let usable = present.as_deref().is_some_and(|id| {
            self.images.lent.matches(image) || self.images.pulled.is_ours(image, id)
        });
        match policy {
            pb::PullPolicy::IfNotPresent | pb::PullPolicy::Never if usable => Ok(()),
            pb::PullPolicy::Never => Err(Error::ImagePull {
                reason: "ErrImageNeverPull",
                message: if present.is_some() {
                    format!(
                        "Container image \"{image}\" is not present with pull policy of Never \
                         (a local image this edge did not pull and the provider does not lend)"
                    )
                } else {
                    format!("Container image \"{image}\" is not present with pull policy of Never")
                },
            }),
            pb::PullPolicy::IfNotPresent | pb::PullPolicy::Always => {
                // Checked before the engine is asked: the engine dials what the image names.
                self.images.registries.check(image).await?;
                self.pull(image, auth).await?;
                let id = self
                    .docker
                    .inspect_image(image)
                    .await
                    .map_err(map_err)?
                    .id
                    .unwrap_or_default();
                self.images.pulled.record(image, &id);
                Ok(())
            }
        }
    }

    async fn image_user(&self, image: &str) -> Option<String> {
        let i = self.docker.inspect_image(image).await.ok()?;
        Some(i.config.and_then(|c| c.user).unwrap_or_default())
    }

    async fn image_size(&self, image: &str) -> Option<u64> {
        let i = self.docker.inspect_image(image).await.ok()?;
        Some(i.size.and_then(|s| u64::try_from(s).ok()).unwrap_or(0))
    }

    async fn create_container(&self, req: CreateRequest<'_>) -> Result<String> {
        let suffix: u16 = rand::random();
        let name = format!(
            "dc_{}_{}_{}_{}_{}_{:04x}",
            sanitize(&self.node),
            sanitize(&req.pod.namespace),
            sanitize(&req.pod.name),
            sanitize(&req.container.name),
            req.restart_count,
            suffix
        );
        let opts = CreateContainerOptionsBuilder::default().name(&name).build();
        let body = self.container_body(req);
        self.docker
            .create_container(Some(opts), body)
            .await
            .map(|r| r.id)
            .map_err(|e| Error::CreateContainer(engine_message(e)))
    }

    async fn start_container(&self, id: &str) -> Result<()> {
        self.docker
            .start_container(id, None)
            .await
            .map_err(|e| Error::CreateContainer(engine_message(e)))
    }

    async fn inspect_container(&self, id: &str) -> Result<ContainerInfo> {
        let r = self
            .docker
            .inspect_container(id, None)
            .await
            .map_err(map_err)?;
        let l = r
            .config
            .as_ref()
            .and_then(|c| c.labels.clone())
            .unwrap_or_default();
        if !self.is_own(&l) {
            return Err(Error::NotFound(format!(
                "{id} is not this edge's container"
            )));
        }
        Ok(self.info_from(r))
    }

    async fn usage(&self, id: &str) -> Result<Option<ContainerUsage>> {
        let opts = StatsOptionsBuilder::default()
            .stream(false)
            .one_shot(true)
            .build();
        let Some(stats) = self.docker.stats(id, Some(opts)).next().await else {
            return Ok(None);
        };
        let stats = stats.map_err(map_err)?;
        let cpu_ns = stats
            .cpu_stats
            .and_then(|c| c.cpu_usage)
            .and_then(|u| u.total_usage);
        let memory = stats.memory_stats.and_then(|m| m.usage);
        Ok(cpu_ns.map(|ns| ContainerUsage {
            cpu_seconds: ns as f64 / 1e9,
            memory_bytes: memory.unwrap_or_default(),
        }))
    }

    async fn measure(&self, id: &str) -> Result<Option<ContainerMeasurements>> {
        let opts = StatsOptionsBuilder::default()
            .stream(false)
            .one_shot(true)
            .build();
        let Some(stats) = self.docker.stats(id, Some(opts)).next().await else {
            return Ok(None);
        };
        let stats = stats.map_err(map_err)?;
        let Some(cpu_nanos) = stats
            .cpu_stats
            .and_then(|c| c.cpu_usage)
            .and_then(|u| u.total_usage)
        else {
            return Ok(None);
        };
        let memory = stats.memory_stats.unwrap_or_default();
        let usage_bytes = memory.usage.unwrap_or_default();
        let counters = memory.stats.unwrap_or_default();
        let counter = |keys: &[&str]| keys.iter().find_map(|k| counters.get(*k).copied());
        // As kubelet (cAdvisor) computes it: usage less inactive file pages (cgroup v2 names
        // first, then v1's).
        let inactive = counter(&["inactive_file", "total_inactive_file"]).unwrap_or(0);
        let rss = counter(&["anon", "total_rss", "rss"]).unwrap_or(0);
        // Docker reports a huge number for "no limit".
        let limit = memory.limit.filter(|l| *l < (1 << 62)).unwrap_or(0);
        let mut m = ContainerMeasurements {
            cpu_nanos,
            usage_bytes,
            working_set_bytes: usage_bytes.saturating_sub(inactive),
            rss_bytes: rss,
            limit_bytes: limit,
            ..Default::default()
        };
        for n in stats.networks.unwrap_or_default().values() {
            m.rx_bytes += n.rx_bytes.unwrap_or_default();
            m.tx_bytes += n.tx_bytes.unwrap_or_default();
            m.rx_errors += n.rx_errors.unwrap_or_default();
            m.tx_errors += n.tx_errors.unwrap_or_default();
        }
        let sized = InspectContainerOptionsBuilder::default().size(true).build();
        if let Ok(r) = self.docker.inspect_container(id, Some(sized)).await {
            m.rootfs_used_bytes = r.size_rw.and_then(|s| u64::try_from(s).ok()).unwrap_or(0);
        }
        Ok(Some(m))
    }

    async fn disk_usage(&self, id: &str) -> Result<Option<i64>> {
        let r = self
            .docker
            .inspect_container(id, Some(InspectContainerOptions { size: true }))
            .await
            .map_err(map_err)?;
        let own = r
            .config
            .as_ref()
            .and_then(|c| c.labels.as_ref())
            .is_some_and(|l| self.is_own(l));
        if !own {
            return Err(Error::NotFound(format!(
                "{id} is not this edge's container"
            )));
        }
        let Some(layer) = r.size_rw else {
            return Ok(None);
        };
        // The log file and its rotated predecessors (`…-json.log.1`, …), on this machine.
        let logs = match r.log_path.as_deref().filter(|p| !p.is_empty()) {
            Some(path) => {
                let path = path.to_string();
                tokio::task::spawn_blocking(move || {
                    let size = |p: &str| std::fs::metadata(p).map_or(0, |m| m.len());
                    (1..=LOG_MAX_FILES)
                        .map(|i| format!("{path}.{i}"))
                        .fold(size(&path), |a, p| a.saturating_add(size(&p)))
                })
                .await
                .unwrap_or(0)
            }
            None => 0,
        };
        Ok(Some(
            layer
                .max(0)
                .saturating_add(i64::try_from(logs).unwrap_or(i64::MAX)),
        ))
    }

    async fn list_containers(&self) -> Result<Vec<ContainerInfo>> {
        let filters = self.own_filters();
        let opts = ListContainersOptionsBuilder::default()
            .all(true)
            .filters(&filters)
            .build();
        let list = self
            .docker
            .list_containers(Some(opts))
            .await
            .map_err(map_err)?;
        let mut out = Vec::with_capacity(list.len());
        for summary in list {
            let Some(id) = summary.id else { continue };
            // The label filter is the engine's; check again before ever touching a container.
            if !self.is_own(&summary.labels.unwrap_or_default()) {
                continue;
            }
            match self.inspect_container(&id).await {
                Ok(info) => out.push(info),
                Err(Error::NotFound(_)) => {}
                Err(e) => return Err(e),
            }
        }
        Ok(out)
    }

    async fn stop_container(&self, id: &str, grace: Duration) -> Result<()> {
        let secs = grace.as_secs() + u64::from(grace.subsec_nanos() > 0);
        let opts = StopContainerOptionsBuilder::default()
            .t(i32::try_from(secs).unwrap_or(i32::MAX))
            .build();
        // The stop call returns only after the grace period; give the request that long.
        let docker = self
            .docker
            .clone()
            .with_timeout(Duration::from_secs(secs + 60));
        match docker.stop_container(id, Some(opts)).await {
            Ok(()) => Ok(()),
            Err(DockerError::DockerResponseServerError {
                status_code: 304 | 404,
                ..
            }) => Ok(()),
            Err(e) => Err(map_err(e)),
        }
    }

    async fn remove_container(&self, id: &str) -> Result<()> {
        let opts = RemoveContainerOptionsBuilder::default()
            .force(true)
            .v(true)
            .build();
        match self.docker.remove_container(id, Some(opts)).await {
            Ok(()) => Ok(()),
            // Gone already, or its removal is under way.
            Err(DockerError::DockerResponseServerError {
                status_code: 404 | 409,
                ..
            }) => Ok(()),
            Err(e) => Err(map_err(e)),
        }
    }

    fn events(&self) -> BoxStream<'static, RuntimeEvent> {
        let docker = self.docker.clone();
        let mut filters = self.own_filters();
        filters.insert("type".to_string(), vec!["container".to_string()]);
        filters.insert(
            "event".to_string(),
            vec!["start".to_string(), "die".to_string()],
        );
        let (tx, rx) = mpsc::channel(1024);
        tokio::spawn(async move {
            loop {
                let opts = EventsOptionsBuilder::default().filters(&filters).build();
                let mut stream = docker.events(Some(opts));
                // Whatever happened before this stream opened is picked up by re-inspection.
                if tx.send(RuntimeEvent::Resync).await.is_err() {
                    return;
                }
                loop {
                    let item = tokio::select! {
                        _ = tx.closed() => return,
                        item = stream.next() => item,
                    };
                    let ev = match item {
                        Some(Ok(ev)) => ev,
                        Some(Err(e)) => {
                            tracing::warn!(error = %e, "docker event stream broke; reconnecting");
                            break;
                        }
                        None => break,
                    };
                    let actor = ev.actor.unwrap_or_default();
                    let attrs = actor.attributes.unwrap_or_default();
                    let pod_uid = attrs.get(labels::POD_UID).cloned().unwrap_or_default();
                    let container_id = actor.id.unwrap_or_default();
                    let event = match ev.action.as_deref() {
                        Some("start") => RuntimeEvent::Started {
                            pod_uid,
                            container_id,
                        },
                        Some("die") => RuntimeEvent::Died {
                            pod_uid,
                            container_id,
                        },
                        _ => continue,
                    };
                    if tx.send(event).await.is_err() {
                        return;
                    }
                }
                tokio::time::sleep(Duration::from_secs(1)).await;
            }
        });
        ReceiverStream::new(rx).boxed()
    }

    async fn exec(&self, id: &str, cmd: &[String], timeout: Duration) -> Result<i64> {
        let run = async {
            let exec = self
                .docker
                .create_exec(
                    id,
                    ExecConfig {
                        cmd: Some(cmd.to_vec()),
                        attach_stdout: Some(true),
                        attach_stderr: Some(true),
                        ..Default::default()
                    },
                )
                .await
                .map_err(map_err)?;
            if let bollard::exec::StartExecResults::Attached { mut output, .. } = self
                .docker
                .start_exec(&exec.id, None)
                .await
                .map_err(map_err)?
            {
                while output.next().await.is_some() {}
            }
            let inspect = self.docker.inspect_exec(&exec.id).await.map_err(map_err)?;
            Ok(inspect.exit_code.unwrap_or(-1))
        };
        tokio::time::timeout(timeout, run)
            .await
            .map_err(|_| Error::Timeout(timeout))?
    }

    async fn open_stream(&self, id: &str, spec: StreamSpec<'_>) -> Result<ContainerStream> {
        // Only this edge's containers, and only while they run.
        let info = self.inspect_container(id).await?;
        if !info.running {
            return Err(Error::NotFound(format!("container {id} is not running")));
        }
        let map_output = |o: std::result::Result<bollard::container::LogOutput, DockerError>| {
            use bollard::container::LogOutput as L;
            match o {
                Ok(L::StdErr { message }) => Some(Ok(StreamChunk::Stderr(message))),
                Ok(L::StdOut { message } | L::Console { message }) => {
                    Some(Ok(StreamChunk::Stdout(message)))
                }
                Ok(L::StdIn { .. }) => None,
                Err(e) => Some(Err(map_err(e))),
            }
        };
        match spec.command {
            Some(cmd) => {
                let exec = self
                    .docker
                    .create_exec(
                        id,
                        ExecConfig {
                            cmd: Some(cmd.to_vec()),
                            attach_stdin: Some(spec.stdin),
                            attach_stdout: Some(spec.stdout),
                            attach_stderr: Some(spec.stderr),
                            tty: Some(spec.tty),
                            ..Default::default()
                        },
                    )
                    .await
                    .map_err(map_err)?;
                let started = self
                    .docker
                    .start_exec(
                        &exec.id,
                        Some(bollard::exec::StartExecOptions {
                            detach: false,
                            tty: spec.tty,
                            output_capacity: Some(64 * 1024),
                        }),
                    )
                    .await
                    .map_err(map_err)?;
                let bollard::exec::StartExecResults::Attached { output, input } = started else {
                    return Err(Error::Runtime("the engine detached the exec".into()));
                };
                Ok(ContainerStream {
                    output: output
                        .filter_map(move |o| async move { map_output(o) })
                        .boxed(),
                    input,
                    handle: StreamHandle::Exec(exec.id),
                })
            }
            None => {
                let opts = bollard::query_parameters::AttachContainerOptionsBuilder::default()
                    .stream(true)
                    .logs(false)
                    .stdin(spec.stdin)
                    .stdout(spec.stdout)
                    .stderr(spec.stderr)
                    .build();
                let attached = self
                    .docker
                    .attach_container(id, Some(opts))
                    .await
                    .map_err(map_err)?;
                Ok(ContainerStream {
                    output: attached
                        .output
                        .filter_map(move |o| async move { map_output(o) })
                        .boxed(),
                    input: attached.input,
                    handle: StreamHandle::Attach(id.to_string()),
                })
            }
        }
    }

    async fn resize_stream(&self, handle: &StreamHandle, width: u16, height: u16) -> Result<()> {
        match handle {
            StreamHandle::Exec(exec) => self
                .docker
                .resize_exec(exec, bollard::exec::ResizeExecOptions { height, width })
                .await
                .map_err(map_err),
            StreamHandle::Attach(id) => self
                .docker
                .resize_container_tty(
                    id,
                    bollard::query_parameters::ResizeContainerTTYOptionsBuilder::default()
                        .w(i32::from(width))
                        .h(i32::from(height))
                        .build(),
                )
                .await
                .map_err(map_err),
        }
    }

    async fn stream_exit_code(&self, handle: &StreamHandle) -> Result<Option<i64>> {
        let StreamHandle::Exec(exec) = handle else {
            return Ok(None);
        };
        // The output can end a moment before the engine records the exit.
        for _ in 0..50 {
            let inspect = self.docker.inspect_exec(exec).await.map_err(map_err)?;
            if inspect.running != Some(true) {
                return Ok(inspect.exit_code);
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        Ok(None)
    }

    fn logs(&self, id: &str, opts: LogOptions) -> BoxStream<'static, Result<Bytes>> {
        let tail = opts
            .tail_lines
            .map_or_else(|| "all".to_string(), |n| n.to_string());
        let o = LogsOptionsBuilder::default()
            .follow(opts.follow)
            .stdout(true)
            .stderr(true)
            .timestamps(opts.timestamps)
            .tail(&tail)
            .build();
        self.docker
            .logs(id, Some(o))
            .map(|r| r.map(|l| l.into_bytes()).map_err(map_err))
            .boxed()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn host_aliases_become_extra_hosts_and_nothing_else() {
        let pod = pb::PodSpec {
            host_aliases: vec![
                pb::HostAlias {
                    ip: "100.64.0.9".into(),
                    hostnames: vec!["db".into(), "db.shop.svc.decloud".into()],
                },
                pb::HostAlias {
                    ip: "bogus".into(),
                    hostnames: vec!["x".into()],
                },
                pb::HostAlias {
                    ip: "100.64.0.10".into(),
                    hostnames: vec!["ok".into(), "bad name".into(), "x\n1.2.3.4".into()],
                },
            ],
            ..Default::default()
        };
        assert_eq!(
            extra_hosts(&pod),
            [
                "db:100.64.0.9",
                "db.shop.svc.decloud:100.64.0.9",
                "ok:100.64.0.10"
            ]
        );
    }

    #[test]
    fn image_references_split_for_pull() {
        let table = [
            ("busybox", ("busybox", "latest")),
            ("busybox:1", ("busybox", "1")),
            ("decloud-test/busybox:1", ("decloud-test/busybox", "1")),
            ("127.0.0.1:5000/x/y", ("127.0.0.1:5000/x/y", "latest")),
            ("127.0.0.1:5000/x/y:2", ("127.0.0.1:5000/x/y", "2")),
            ("x@sha256:abc", ("x@sha256:abc", "")),
        ];
        for (image, want) in table {
            assert_eq!(split_image(image), want, "{image}");
        }
    }

    #[test]
    fn times_parse_and_zero_time_is_zero() {
        assert_eq!(parse_time(Some("0001-01-01T00:00:00Z")), 0);
        assert_eq!(parse_time(Some("1970-01-01T00:00:01.5Z")), 1500);
        assert_eq!(parse_time(None), 0);
        assert_eq!(parse_time(Some("nonsense")), 0);
    }

    #[test]
    fn storage_quota_only_where_the_driver_enforces_it() {
        let table = [
            ("overlay2", "extfs", "rw,relatime", false),
            (
                "overlay2",
                "xfs",
                "rw,relatime,attr2,inode64,noquota",
                false,
            ),
            (
                "overlay2",
                "xfs",
                "rw,relatime,attr2,inode64,prjquota",
                true,
            ),
            ("overlay2", "xfs", "rw,pquota", true),
            ("btrfs", "btrfs", "rw", true),
            ("zfs", "", "rw", true),
            ("vfs", "extfs", "rw,prjquota", false),
            ("fuse-overlayfs", "xfs", "prjquota", false),
        ];
        for (driver, fs, opts, want) in table {
            assert_eq!(
                storage_quota_supported(driver, fs, opts),
                want,
                "{driver} {fs} {opts}"
            );
        }
        let mounts = "/dev/vda / ext4 rw,relatime 0 0\n\
                      /dev/vdb /var/lib/docker xfs rw,prjquota 0 0\n\
                      /dev/vdc /var/lib/dockerx xfs rw,noquota 0 0\n\
                      garbage\n";
        assert_eq!(mount_options_of(mounts, "/var/lib/docker"), "rw,prjquota");
        assert_eq!(
            mount_options_of(mounts, "/var/lib/docker/overlay2"),
            "rw,prjquota"
        );
        assert_eq!(mount_options_of(mounts, "/var/lib/dockerx"), "rw,noquota");
        assert_eq!(mount_options_of(mounts, "/srv/docker"), "rw,relatime");
        assert_eq!(mount_options_of("", "/var/lib/docker"), "");
    }

    #[test]
    fn limits_default_below_the_offer_and_never_under_docker_minimum() {
        const MI: i64 = 1 << 20;
        let res = |cr, cl, mr, ml| pb::ResourceSpec {
            cpu_request_millis: cr,
            cpu_limit_millis: cl,
            memory_request_bytes: mr,
            memory_limit_bytes: ml,
            ..Default::default()
        };
        let offer = ResourceCeiling {
            cgroup_parent: Some("/decloud-x".into()),
            cpu_millis: 500,
            memory_bytes: 256 * MI,
            storage_quota_default: None,
        };
        // (resources, ceiling, (memory limit, reservation, cpu limit))
        let table = [
            (
                res(0, 0, 0, 0),
                ResourceCeiling::default(),
                (512 * MI, None, 1000),
            ),
            (res(0, 0, 0, 0), offer.clone(), (256 * MI, None, 500)),
            (
                res(0, 0, 4 * MI, 4 * MI),
                offer.clone(),
                (6 * MI, Some(6 * MI), 500),
            ),
            (
                res(0, 0, MI, 0),
                offer.clone(),
                (256 * MI, Some(6 * MI), 500),
            ),
            (
                res(100, 200, 32 * MI, 64 * MI),
                offer.clone(),
                (64 * MI, Some(32 * MI), 200),
            ),
            (
                res(2000, 0, 300 * MI, 0),
                offer.clone(),
                (300 * MI, Some(300 * MI), 2000),
            ),
            (res(0, 1, 0, 1), offer, (6 * MI, None, 10)),
        ];
        for (r, c, want) in table {
            assert_eq!(effective_limits(&r, &c), want, "{r:?} {c:?}");
        }
    }

    #[test]
    fn names_are_docker_safe() {
        assert_eq!(sanitize("edge-a_b/c:d"), "edge-a-b-c-d");
    }
}
