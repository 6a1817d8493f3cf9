//! The three things the `edge-kubelet` binary does, wired from their parts: `run`, `join`
//! and `status`.

use std::path::Path;
use std::sync::Arc;

use tokio_util::sync::CancellationToken;

use crate::cli::{ConsoleListen, JoinArgs, RunArgs, RuntimeKind, UninstallArgs};
use crate::control::{self, Availability, IdleRule, Schedule};
use crate::error::{Error, Result};
use crate::host::{
    self, Ceiling, CgroupLayout, EgressPolicy, Family, PERSISTENT_VOLUMES_DIR, VolumeStore,
};
use crate::images::{ImagePolicy, PulledImages, RegistryGuard, check_patterns};
use crate::join::{self, EdgeCredential, JoinRequest};
use crate::local::{self, EdgeReport, StateFile};
use crate::metrics::{self, Metrics};
use crate::pod::{PodSupervisor, PodWorkerConfig};
use crate::runtime::{
    ContainerRuntime, DockerRuntime, ImageRules, ResourceCeiling, SimulatedRuntime,
    SimulatedTimings, storage_quota_supported,
};
use crate::session::{self, SessionConfig};
use crate::{capacity, console, offer, platform};

/// Runs the edge described by `args` until `shutdown` is cancelled. On shutdown the pods'
/// containers keep running; the next start re-adopts them.
pub async fn run(args: RunArgs, shutdown: CancellationToken) -> Result<()> {
    let availability = Availability::new(Some(&args.state_dir()));
    run_with(args, shutdown, availability).await
}

/// [`run`], with `availability` the handle that pauses, drains and resumes this edge (the
/// control socket, SIGTERM and the local console all hold a clone).
pub async fn run_with(
    args: RunArgs,
    shutdown: CancellationToken,
    availability: Availability,
) -> Result<()> {
    let node = args.node_name();
    // A schedule that does not parse stops the edge before anything starts.
    let schedule = args
        .schedule
        .as_deref()
        .map(|s| Schedule::parse(s, &args.timezone))
        .transpose()
        .map_err(|e| Error::InvalidInput(e.to_string()))?;
    // First: an edge that cannot prove who it is starts nothing.
    let credential = credential_for_run(&args, &args.state_dir(), &shutdown).await?;
    let mut capacity = capacity::detect();
    let mut offered = capacity::offered(&capacity, args.cpu, args.memory, args.max_pods);
    let saved_offer = offer::load(&args.state_dir());
    if let Some(saved) = saved_offer {
        offer::apply_saved(&mut offered, &capacity, saved);
        tracing::info!(
            ?saved,
            "the offer set in the console (offer.json in the state folder) replaces --cpu, --memory and --max-pods; delete that file to use the flags"
        );
    }
    let console_listen = match args.console_listen {
        ConsoleListen::At(addr) => {
            console::check_listen(addr, args.unsafe_console_any_address)?;
            Some(addr)
        }
        ConsoleListen::Off => None,
    };
    let mut safety = HostSafety::default();
    let runtime: Arc<dyn ContainerRuntime> = match args.runtime {
        RuntimeKind::Docker => {
            let (docker, s) = secure_docker(&args, &node, &mut capacity, &mut offered).await?;
            safety = s;
            if let Some(saved) = saved_offer {
                offer::apply_saved_storage(&mut offered, &capacity, saved);
            }
            Arc::new(docker)
        }
        RuntimeKind::Simulated => {
            capacity.storage_bytes = args.storage.unwrap_or(0);
            offered.storage_bytes = capacity.storage_bytes;
            tracing::warn!("using the SIMULATED runtime: no container really runs");
            safety.egress = "not applicable (simulated runtime)".into();
            Arc::new(SimulatedRuntime::new(&node, SimulatedTimings::default()))
        }
    };
    let state_dir = args.state_dir();
    let state_file = StateFile::new(&state_dir, &node);
    tracing::info!(%node, state_file = %state_file.path().display(), runtime = runtime.name(), "starting edge-kubelet");
    let runtime_version = runtime.version().await.unwrap_or_else(|e| {
        tracing::warn!(error = %e, "cannot tell the container runtime's version");
        format!("{}://", runtime.name())
    });
    check_patterns("--allowed-images", &args.allowed_images)?;
    // Persistent volumes are loop-mounted filesystems: real ones only with a real runtime.
    let persistent_volumes = match args.runtime {
        RuntimeKind::Docker => {
            let store = VolumeStore::new(state_dir.join(PERSISTENT_VOLUMES_DIR));
            store.create_root()?;
            Some(store)
        }
        RuntimeKind::Simulated => None,
    };
    let worker_config = PodWorkerConfig {
        allowed_images: ImagePolicy::new(args.allowed_images.iter().cloned()),
        max_pods: usize::try_from(offered.pods).unwrap_or(usize::MAX),
        offered_cpu_millis: offered.cpu_millis,
        offered_memory_bytes: offered.memory_bytes,
        offered_storage_bytes: offered.storage_bytes,
        default_pod_storage_bytes: capacity::default_pod_storage(
            offered.storage_bytes,
            offered.pods,
        ),
        config_dir: crate::pod::prepare_config_dir(&args.config_dir()),
        volume_dir: Some(state_dir.join("volumes")),
        persistent_volumes,
        ..PodWorkerConfig::default()
    };
    let pods = PodSupervisor::start(runtime, Some(state_file), worker_config).await?;
    tracing::info!(storage_bytes = offered.storage_bytes, enforcement = %safety.storage, "ephemeral storage offered");
    let metrics = Arc::new(Metrics::default());
    if let Some(addr) = args.metrics_listen {
        let (m, b, s) = (metrics.clone(), pods.board().clone(), shutdown.clone());
        tokio::spawn(async move {
            if let Err(e) = metrics::serve(addr, m, b, s).await {
                tracing::error!(%addr, error = %e, "metrics listener failed");
            }
        });
    }
    let (offer_tx, offer_rx) = tokio::sync::watch::channel(offered);
    let services = safety
        .services
        .take()
        .map(|l| (l, Arc::new(session::ServiceLink::default())));
    let link = services.as_ref().map(|(_, link)| link.clone());
    let service_proxy =
        services.map(|(l, link)| tokio::spawn(session::serve_services(l, link, pods.clone())));
    let cfg = SessionConfig {
        services: link,
        operator: args.operator.clone(),
        provider_name: args.name.clone(),
        owner: args.owner.clone(),
        labels: args.label_map(),
        capacity,
        offered: offer_rx.clone(),
        heartbeat_interval: args.heartbeat_interval,
        stats_interval: args.stats_interval,
        max_backoff: args.max_reconnect_backoff,
        credential,
        platform: platform::detect(runtime_version),
        isolation: safety.hello(),
        availability: availability.clone(),
    };
    let report = EdgeReport {
        pid: std::process::id(),
        provider: args.name.clone(),
        operator: args.operator.clone(),
        runtime: format!("{:?}", args.runtime).to_lowercase(),
        offered_cpu_millis: offered.cpu_millis,
        offered_memory_bytes: offered.memory_bytes,
        offered_pods: offered.pods,
        offered_storage_bytes: offered.storage_bytes,
        storage_enforcement: safety.storage.clone(),
        allowed_images: args.allowed_images.clone(),
        egress: safety.egress.clone(),
        egress_rules: safety.rules.clone(),
        cgroup_parent: safety.cgroup_parent.clone(),
        userns_remap: safety.userns_remap,
        lent_images: args.lend_local_image.clone(),
        allowed_registries: args.allow_registry.clone(),
        ..Default::default()
    };
    if let Some(installed) = safety.installed.clone() {
        tokio::spawn(keep_egress_in_force(installed, shutdown.clone()));
    }
    start_availability(
        &args,
        &availability,
        schedule,
        &pods,
        &safety.cgroup_parent,
        &shutdown,
    )?;
    let latest = Arc::new(parking_lot::Mutex::new(EdgeReport::default()));
    let mut report = report;
    if let Some(addr) = console_listen {
        match console::bind(addr).await {
            Ok((listener, url)) => {
                tracing::info!(%url, "console listening (edge-kubelet console-url prints it with its token)");
                report.console_url = url;
                let actions = Arc::new(offer::AgentActions {
                    state_dir: state_dir.clone(),
                    node: node.clone(),
                    capacity,
                    offer: offer_tx,
                    pods: pods.clone(),
                    ceiling: safety.layout,
                    changing: tokio::sync::Mutex::new(()),
                    availability: availability.clone(),
                });
                let (dir, l, s) = (state_dir.clone(), latest.clone(), shutdown.clone());
                tokio::spawn(async move {
                    if let Err(e) = console::serve(listener, dir, l, actions, s).await {
                        tracing::error!(error = %e, "the console stopped");
                    }
                });
            }
            Err(e) => tracing::warn!(error = %e, "no console: its address cannot be used"),
        }
    }
    let (board, connected, sup, offer_now) = (
        pods.board().clone(),
        metrics.clone(),
        pods.clone(),
        offer_rx,
    );
    let reporter = tokio::spawn(local::keep_writing(
        state_dir,
        report,
        move || local::Live {
            connected: connected.is_connected(),
            pods: board.all(),
            apps: sup.apps(),
            offered: *offer_now.borrow(),
        },
        latest,
        shutdown.clone(),
    ));
    session::run(cfg, pods, metrics, shutdown.clone()).await;
    if let Some(t) = service_proxy {
        t.abort();
    }
    shutdown.cancel();
    let _ = reporter.await;
    Ok(())
}

/// Starts what feeds `availability`: the control socket in the state folder, the pod count,
/// the schedule's clock and the idle measure.
fn start_availability(
    args: &RunArgs,
    availability: &Availability,
    schedule: Option<Schedule>,
    pods: &Arc<PodSupervisor>,
    cgroup_parent: &str,
    shutdown: &CancellationToken,
) -> Result<()> {
    let state_dir = args.state_dir();
    std::fs::create_dir_all(&state_dir).map_err(|e| Error::StateFile {
        path: state_dir.display().to_string(),
        message: e.to_string(),
    })?;
    let (a, s) = (availability.clone(), shutdown.clone());
    tokio::spawn(async move {
        if let Err(e) = control::serve(&state_dir, a, s).await {
            tracing::error!(error = %e, "control socket failed: pause, drain and resume need it");
        }
    });
    let (a, board, s) = (availability.clone(), pods.board().clone(), shutdown.clone());
    tokio::spawn(async move {
        let mut updates = board.subscribe();
        loop {
            a.set_pods(board.all().len());
            tokio::select! {
                _ = s.cancelled() => return,
                u = updates.recv() => if matches!(u, Err(tokio::sync::broadcast::error::RecvError::Closed)) {
                    return;
                },
            }
        }
    });
    if let Some(schedule) = schedule {
        let (a, s, margin) = (availability.clone(), shutdown.clone(), args.schedule_margin);
        tracing::info!(schedule = %schedule.describe(), ?margin, "lending only within the schedule");
        tokio::spawn(async move {
            loop {
                let (open, next) = schedule.at(crate::clock::now(), margin);
                a.set_schedule(Some(schedule.describe()), Some(open), next);
                // Look again at the next change, and at least every 30 s (clock jumps, suspend).
                let wait = next
                    .and_then(|t| {
                        std::time::Duration::try_from(t.duration_since(crate::clock::now())).ok()
                    })
                    .unwrap_or(std::time::Duration::from_secs(30))
                    .clamp(
                        std::time::Duration::from_millis(200),
                        std::time::Duration::from_secs(30),
                    );
                tokio::select! {
                    _ = s.cancelled() => return,
                    _ = tokio::time::sleep(wait) => {}
                }
            }
        });
    }
    if args.when_idle {
        let rule = IdleRule {
            threshold_percent: args.idle_threshold,
            idle_for: args.idle_for,
            every: std::time::Duration::from_secs(5),
            decloud_usage: control::cpu_usage_file(cgroup_parent)
                .filter(|_| !cgroup_parent.is_empty()),
        };
        tracing::info!(threshold = rule.threshold_percent, idle_for = ?rule.idle_for, usage = ?rule.decloud_usage, "lending only while the machine is idle");
        tokio::spawn(rule.run(availability.clone(), shutdown.clone()));
    }
    Ok(())
}

/// What the edge did to keep the machine safe, for the report and the Hello.
#[derive(Debug, Clone, Default)]
struct HostSafety {
    egress: String,
    rules: Vec<String>,
    cgroup_parent: String,
    /// How writable layers are bounded: by measurement and eviction, plus the driver's quota.
    storage: String,
    userns_remap: Option<bool>,
    /// The rules in force, re-checked while the edge runs.
    installed: Option<Vec<host::FamilyRules>>,
    /// The ceiling cgroup's layout, to change its limits with the offer.
    layout: Option<CgroupLayout>,
    /// The service proxy's listener, bound on the bridge gateway (service names on).
    services: Option<Arc<tokio::net::TcpListener>>,
}

impl HostSafety {
    /// The Hello's account of it (None for the simulated runtime).
    fn hello(&self) -> Option<decloud_proto::HostIsolation> {
        let userns_remap = self.userns_remap?;
        Some(decloud_proto::HostIsolation {
            userns_remap,
            egress_policy: if self.installed.is_some() {
                "Enforced"
            } else {
                "Disabled"
            }
            .into(),
        })
    }
}

/// Connects to Docker and makes the machine safe to lend before any pod runs: the ceiling
/// cgroup with the offer as its limits, the edge's network (no inter-container traffic), the
/// egress policy (installed, then verified), the image rules. Fails, so nothing runs, when
/// the ceiling or the policy cannot be put in force (the policy: unless
/// `--unsafe-no-egress-policy`).
async fn secure_docker(
    args: &RunArgs,
    node: &str,
    capacity: &mut decloud_proto::Resources,
    offered: &mut decloud_proto::Resources,
) -> Result<(DockerRuntime, HostSafety)> {
    let docker =
        DockerRuntime::connect_to(args.docker_host.as_deref(), node, &args.docker_network).await?;
    let facts = docker.engine_facts().await?;
    let data_root = std::path::PathBuf::from(if facts.data_root.is_empty() {
        "/var/lib/docker"
    } else {
        &facts.data_root
    });
    let disk = capacity::disk_of(&data_root);
    capacity.storage_bytes = disk.map_or(0, |(total, _)| total);
    offered.storage_bytes = capacity::storage_offer(args.storage, disk);
    let mounts = std::fs::read_to_string("/proc/mounts").unwrap_or_default();
    let quota = storage_quota_supported(
        &facts.storage_driver,
        &facts.backing_filesystem,
        &crate::runtime::mount_options_of(&mounts, &data_root.to_string_lossy()),
    );
    let storage = if quota {
        format!(
            "evicted above their limits; writable layers also capped by the {} driver (--storage-opt size)",
            facts.storage_driver
        )
    } else {
        format!(
            "evicted above their limits (measured every poll); the {} driver on {} cannot cap writable layers (--storage-opt size needs overlay2 on xfs with pquota, btrfs or zfs)",
            facts.storage_driver,
            if facts.backing_filesystem.is_empty() {
                "this filesystem"
            } else {
                &facts.backing_filesystem
            }
        )
    };
    if facts.userns_remap {
        tracing::info!(
            "the engine runs with userns-remap: root in a container is unprivileged here"
        );
    } else {
        tracing::info!("the engine runs without userns-remap (see the README's provider section)");
    }
    let layout = CgroupLayout::of(&facts.cgroup_driver, &facts.cgroup_version)?;
    let ceiling = Ceiling::new(
        layout,
        node,
        offered.cpu_millis,
        offered.memory_bytes,
        offered.pods,
    );
    ceiling.install().map_err(|e| {
        Error::Runtime(format!(
            "cannot cap DeCloud's containers at the offer (cgroup {}): {e}",
            ceiling.parent
        ))
    })?;
    tracing::info!(cgroup_parent = %ceiling.parent, cpu_millis = ceiling.cpu_millis, memory_bytes = ceiling.memory_bytes, "every container runs under the offer's ceiling");
    let policy = EgressPolicy {
        allow: args.allow_egress.clone(),
        deny: args.deny_egress.clone(),
    };
    policy.check()?;
    check_patterns("--lend-local-image", &args.lend_local_image)?;
    let images = ImageRules {
        lent: ImagePolicy::new(args.lend_local_image.iter().cloned()),
        registries: RegistryGuard::new(&args.allow_registry, policy.clone())?,
        pulled: Arc::new(PulledImages::open(Some(&args.state_dir()))),
    };
    let docker = docker
        .with_image_rules(images)
        .with_ceiling(ResourceCeiling {
            cgroup_parent: Some(ceiling.parent.clone()),
            cpu_millis: offered.cpu_millis,
            memory_bytes: offered.memory_bytes,
            storage_quota_default: quota
                .then(|| capacity::default_pod_storage(offered.storage_bytes, offered.pods))
                .filter(|d| *d > 0),
        });
    docker.prepare().await?;
    let bridge = docker.bridge_interface().await?;
    let mut safety = HostSafety {
        layout: Some(layout),
        cgroup_parent: ceiling.parent.clone(),
        storage,
        userns_remap: Some(facts.userns_remap),
        ..Default::default()
    };
    let chains = host::Chains::of(node);
    if args.unsafe_no_egress_policy {
        tracing::warn!(
            "--unsafe-no-egress-policy: containers can reach this host, its networks and the metadata address"
        );
        let node = node.to_string();
        tokio::task::spawn_blocking(move || host::uninstall(&node))
            .await
            .map_err(|e| Error::Runtime(e.to_string()))??;
        safety.egress =
            "OFF (--unsafe-no-egress-policy): containers reach this host and its networks".into();
        return Ok((docker, safety));
    }
    let (redirect, services) = bind_service_proxy(args, &docker).await;
    let node_owned = node.to_string();
    let installed = tokio::task::spawn_blocking(move || {
        install_egress(&node_owned, &bridge, &policy, redirect)
    })
    .await
    .map_err(|e| Error::Runtime(e.to_string()))?
    .map_err(|e| {
        Error::Runtime(format!(
            "{e}. The edge runs no pod without its egress policy (it needs root and \
                 iptables); start it with --unsafe-no-egress-policy to run pods anyway, \
                 unprotected"
        ))
    })?;
    safety.rules = [Family::V4, Family::V6]
        .into_iter()
        .flat_map(|f| host::listing(f, &chains))
        .collect();
    tracing::info!(chains = ?chains, rules = safety.rules.len(), "egress policy installed and verified");
    safety.egress = "enforced".into();
    safety.installed = Some(installed);
    safety.services = services;
    Ok((docker, safety))
}

/// Binds the service proxy on the bridge's gateway address (`--service-proxy-port`); none,
/// with a warning, if it cannot (another edge on the same Docker network serves it: give
/// each edge its own `--docker-network`).
async fn bind_service_proxy(
    args: &RunArgs,
    docker: &DockerRuntime,
) -> (
    Option<host::ServiceRedirect>,
    Option<Arc<tokio::net::TcpListener>>,
) {
    if args.service_proxy_port == 0 {
        return (None, None);
    }
    let gateway = match docker.bridge_gateway().await {
        Ok(g) => g,
        Err(e) => {
            tracing::warn!(error = %e, "service names off: no bridge gateway");
            return (None, None);
        }
    };
    match tokio::net::TcpListener::bind((gateway, args.service_proxy_port)).await {
        Ok(l) => {
            tracing::info!(%gateway, port = args.service_proxy_port, "service proxy listening");
            let redirect = host::ServiceRedirect {
                range: decloud_crds::services::SERVICE_CIDR,
                gateway,
                port: args.service_proxy_port,
            };
            (Some(redirect), Some(Arc::new(l)))
        }
        Err(e) => {
            tracing::warn!(%gateway, port = args.service_proxy_port, error = %e, "service names off: cannot bind the service proxy (another edge on this Docker network? give each its own --docker-network)");
            (None, None)
        }
    }
}

/// Builds, installs and verifies the rules of both families. IPv6 is skipped only where the
/// kernel has no IPv6 at all.
fn install_egress(
    node: &str,
    bridge: &str,
    policy: &EgressPolicy,
    redirect: Option<host::ServiceRedirect>,
) -> Result<Vec<host::FamilyRules>> {
    let resolvers =
        host::nameservers(&std::fs::read_to_string("/etc/resolv.conf").unwrap_or_default());
    let mut out = Vec::new();
    for family in [Family::V4, Family::V6] {
        if family == Family::V6 && !Path::new("/proc/net/if_inet6").exists() {
            continue;
        }
        let rules = host::build(
            family,
            node,
            &[bridge.to_string()],
            host::forward_hook(family),
            policy,
            &resolvers,
        );
        let rules = match redirect {
            Some(r) => host::with_service_redirect(rules, &[bridge.to_string()], r),
            None => rules,
        };
        // A Docker engine starting on the machine rewrites FORWARD and the nat chains for a
        // moment (its jumps deleted and inserted again): what fails to verify then is
        // installed again, a few times, before the edge gives up.
        let mut attempt = 1;
        loop {
            match host::install(&rules).and_then(|()| host::verify(&rules)) {
                Ok(()) => break,
                Err(e) if attempt < EGRESS_ATTEMPTS => {
                    tracing::warn!(attempt, error = %e, "egress rules not in force yet; installing them again");
                    std::thread::sleep(EGRESS_RETRY);
                    attempt += 1;
                }
                Err(e) => return Err(e),
            }
        }
        out.push(rules);
    }
    Ok(out)
}

/// How many times the edge installs and verifies its egress rules at start before it gives up
/// (a starting dockerd deletes and re-inserts its FORWARD jumps; 5 s covers a slow start).
const EGRESS_ATTEMPTS: u32 = 10;
/// The pause between two of those attempts.
const EGRESS_RETRY: std::time::Duration = std::time::Duration::from_millis(500);

/// Re-checks the rules every 30 s and puts them back if something (an engine restart, a
/// firewall reload) removed them.
async fn keep_egress_in_force(rules: Vec<host::FamilyRules>, shutdown: CancellationToken) {
    let mut tick = tokio::time::interval(std::time::Duration::from_secs(30));
    tick.tick().await;
    loop {
        tokio::select! {
            _ = shutdown.cancelled() => return,
            _ = tick.tick() => {}
        }
        let rules = rules.clone();
        let res = tokio::task::spawn_blocking(move || {
            for r in &rules {
                if let Err(e) = host::verify(r) {
                    tracing::warn!(error = %e, "egress policy changed under the edge; reinstalling");
                    host::install(r)?;
                    host::verify(r)?;
                }
            }
            Ok::<(), Error>(())
        })
        .await;
        if let Ok(Err(e)) = res {
            tracing::error!(error = %e, "cannot put the egress policy back");
        }
    }
}

/// `edge-kubelet uninstall`: stops the agent the install script started, then removes the
/// edge's egress rules, its containers, its network (once empty), its ceiling cgroup, its
/// volumes (once confirmed: `--yes` or an answer on stdin), what the script installed and the
/// state folder. Refuses while an agent it did not start still runs.
pub async fn uninstall(args: &UninstallArgs) -> Result<String> {
    use crate::local::install_record as record;
    let node = args.node_name();
    let state_dir = args.state_dir();
    let installed = record::InstallRecord::load(&state_dir);
    let mut done = match &installed {
        Some(r) => record::stop_agent(&state_dir, r),
        None => Vec::new(),
    };
    if let Ok(r) = local::read_report(&state_dir)
        && r.connected
        && Path::new(&format!("/proc/{}", r.pid)).exists()
    {
        return Err(Error::InvalidInput(format!(
            "edge-kubelet {} still runs (pid {}): stop it first",
            args.name, r.pid
        )));
    }
    let n = node.clone();
    tokio::task::spawn_blocking(move || host::uninstall(&n))
        .await
        .map_err(|e| Error::Runtime(e.to_string()))??;
    done.push("egress rules removed".to_string());
    let docker =
        DockerRuntime::connect_to(args.docker_host.as_deref(), &node, &args.docker_network).await?;
    let containers = docker.list_containers().await?;
    for c in &containers {
        docker
            .stop_container(&c.id, std::time::Duration::from_secs(5))
            .await?;
        docker.remove_container(&c.id).await?;
    }
    done.push(format!("{} containers removed", containers.len()));
    match docker.remove_network().await {
        Ok(()) => done.push(format!("network {} removed", args.docker_network)),
        Err(e) => done.push(format!(
            "network {} kept (another edge's containers use it?): {e}",
            args.docker_network
        )),
    }
    let facts = docker.engine_facts().await?;
    if let Ok(layout) = CgroupLayout::of(&facts.cgroup_driver, &facts.cgroup_version) {
        Ceiling::new(layout, &node, 0, 0, 0).remove();
        done.push("ceiling cgroup removed".to_string());
    }
    let mut volumes = docker.own_volumes().await?;
    // The persistent volumes (tenants' data too): under the same confirmation.
    let store = VolumeStore::new(state_dir.join(PERSISTENT_VOLUMES_DIR));
    let s = store.clone();
    let persistent = tokio::task::spawn_blocking(move || s.list())
        .await
        .map_err(|e| Error::Runtime(e.to_string()))??;
    let docker_volumes = volumes.len();
    volumes.extend(persistent.iter().map(|v| format!("persistent {}", v.id)));
    let mut volumes_kept = false;
    if !volumes.is_empty() {
        if args.yes
            || confirm(&format!(
                "remove the edge's {} volumes ({}) and the tenants' data in them? [y/N] ",
                volumes.len(),
                volumes.join(", ")
            ))
        {
            for v in &volumes[..docker_volumes] {
                docker.remove_volume(v).await?;
            }
            for v in persistent {
                let s = store.clone();
                tokio::task::spawn_blocking(move || s.delete(&v.id))
                    .await
                    .map_err(|e| Error::Runtime(e.to_string()))??;
            }
            done.push(format!("{} volumes removed", volumes.len()));
        } else {
            volumes_kept = true;
            done.push(format!(
                "{} volumes kept ({}); run again with --yes to remove them",
                volumes.len(),
                volumes.join(", ")
            ));
        }
    }
    if let Some(r) = &installed {
        done.extend(record::remove_installed(r));
    }
    if volumes_kept {
        done.push(format!(
            "state folder {} kept with the volumes",
            state_dir.display()
        ));
    } else {
        done.push(record::remove_state_dir(&state_dir));
    }
    Ok(done.join("\n") + "\n")
}

/// Asks `question` on the terminal; anything but y/yes (or no terminal) is no.
fn confirm(question: &str) -> bool {
    use std::io::{BufRead, IsTerminal, Write};
    if !std::io::stdin().is_terminal() {
        return false;
    }
    eprint!("{question}");
    let _ = std::io::stderr().flush();
    let mut answer = String::new();
    let _ = std::io::stdin().lock().read_line(&mut answer);
    matches!(answer.trim().to_ascii_lowercase().as_str(), "y" | "yes")
}

/// `edge-kubelet status`: the report of the agent using `state_dir`, rendered, and the
/// persistent volumes held on the machine (id, size, mounted).
pub fn status(state_dir: &Path) -> Result<String> {
    let mut out = local::status_text(state_dir)?;
    let volumes = VolumeStore::new(state_dir.join(PERSISTENT_VOLUMES_DIR)).list()?;
    out.push_str(&local::render_volumes(&volumes));
    Ok(out)
}

/// Joins the cluster at `args.operator` with `args.token` once: checks the operator's CA
/// against `--ca-hash`, registers, and stores the credential in the state directory.
pub async fn join(args: &JoinArgs) -> Result<()> {
    let state_dir = args.state_dir();
    join::join(&JoinRequest {
        operator: &args.operator,
        token: &args.token,
        ca_hash: args.ca_hash.as_deref(),
        name: &args.name,
        owner: &args.owner,
        labels: args.labels.iter().cloned().collect(),
        state_dir: &state_dir,
    })
    .await
    .map(drop)
}

/// The stored credential, or (with `--token`) one from joining now, retrying while the
/// operator is unreachable or a standby.
async fn credential_for_run(
    args: &RunArgs,
    state_dir: &Path,
    shutdown: &CancellationToken,
) -> Result<EdgeCredential> {
    if let Some(c) = EdgeCredential::load(state_dir)? {
        return Ok(c);
    }
    let Some(token) = &args.token else {
        return Err(Error::InvalidInput(format!(
            "this edge has not joined a cluster (no credential in {}): run `edge-kubelet join \
             --operator … --token … --ca-hash … --name {}` first, or pass --token and --ca-hash \
             to `run`",
            state_dir.display(),
            args.name
        )));
    };
    let req = JoinRequest {
        operator: &args.operator,
        token,
        ca_hash: args.ca_hash.as_deref(),
        name: &args.name,
        owner: &args.owner,
        labels: args.labels.iter().cloned().collect(),
        state_dir,
    };
    join::join_retrying(&req, args.max_reconnect_backoff, shutdown).await
}
