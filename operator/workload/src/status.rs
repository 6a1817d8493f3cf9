//! The Workload's status, computed from one step's outcome. Pure and idempotent: the same
//! inputs give the same status, and conditions keep their transition times while unchanged.

use decloud_crds::{
    Condition, ReplicaPlacement, WorkloadStatus, hosts::HostClaim, persistence::PersistentReplica,
    set_condition, tcp_ports::PortClaim,
};

/// Replicas named in one `WaitingForProvider` message; the rest are counted.
const WAITING_NAMED: usize = 4;

use crate::certificates::CertificateProblem;

/// Input of [`compute_status`].
#[derive(Clone, Debug)]
pub(crate) struct StatusInput<'a> {
    /// `metadata.generation`.
    pub generation: Option<i64>,
    /// `spec.replicas`.
    pub desired: usize,
    /// Label selector of the Workload's pods, for the scale subresource.
    pub selector: String,
    /// Public URL, if the Workload serves its host (or exposes nothing).
    pub url: Option<String>,
    /// What the Workload's claim on its public host comes to.
    pub host: HostClaim,
    /// Whether the certificate the Workload names is served; `None` when it names none.
    pub certificate: Option<Result<(), CertificateProblem>>,
    /// The gateway port of a `TCP` Workload; `None` for others.
    pub tcp: Option<PortClaim>,
    /// Replicas that exist after this step (any order).
    pub placements: Vec<ReplicaPlacement>,
    /// How many of them run the current template.
    pub updated: usize,
    /// The `Degraded` message when replicas lack a provider.
    pub shortage: Option<String>,
    /// `(pod, provider)` of replicas waiting out their provider's failover grace.
    pub unreachable: Vec<(String, String)>,
    /// Failover grace in seconds, for messages.
    pub grace_seconds: i64,
    /// Stateful replicas that cannot run where their data is, one line each.
    pub waiting: Vec<String>,
    /// A stateful Workload's replicas: `status.persistentReplicas`.
    pub persistent_replicas: Vec<PersistentReplica>,
    /// The status as last written, for condition transition times.
    pub previous: Option<&'a WorkloadStatus>,
    /// The time to stamp on conditions that change now (RFC 3339).
    pub now: &'a str,
}

/// Condition type: enough replicas are ready.
pub(crate) const AVAILABLE: &str = "Available";
/// Condition type: replicas are being created, replaced or removed.
pub(crate) const PROGRESSING: &str = "Progressing";
/// Condition type: some replicas lack a provider or sit on an unreachable one.
pub(crate) const DEGRADED: &str = "Degraded";
/// Condition type: the gateway serves the Workload's public host for it (only on Workloads
/// that expose one).
pub(crate) const HOST_ACCEPTED: &str = "HostAccepted";
/// Condition type: the gateway serves HTTPS for the host with the certificate the Workload
/// names (only on Workloads that name one).
pub(crate) const CERTIFICATE_READY: &str = "CertificateReady";
/// Condition type: the gateway holds a TCP port for the Workload (only on `TCP` Workloads).
pub(crate) const TCP_PORT_ASSIGNED: &str = "TcpPortAssigned";

/// Computes the status to write.
pub(crate) fn compute_status(input: StatusInput<'_>) -> WorkloadStatus {
    let mut placements = input.placements;
    placements.sort_by(|a, b| a.pod.cmp(&b.pod));
    let replicas = placements.len();
    let ready = placements.iter().filter(|p| p.ready).count();
    let desired = input.desired;

    let cond = |type_: &str, ok: bool, reason: &str, message: String| Condition {
        type_: type_.into(),
        status: if ok { "True" } else { "False" }.into(),
        reason: reason.into(),
        message,
        last_transition_time: Some(input.now.to_string()),
        observed_generation: input.generation,
    };

    let available = if ready >= desired {
        cond(
            AVAILABLE,
            true,
            "MinimumReplicasAvailable",
            format!("{}/{desired} replicas ready", ready.min(desired)),
        )
    } else {
        cond(
            AVAILABLE,
            false,
            "MinimumReplicasUnavailable",
            format!("{ready}/{desired} replicas ready"),
        )
    };

    let progress = format!(
        "{}/{desired} replicas updated, {ready} ready",
        input.updated.min(desired)
    );
    let progressing = if let Some(shortage) = &input.shortage {
        cond(PROGRESSING, false, "InsufficientCapacity", shortage.clone())
    } else if input.updated < replicas {
        cond(PROGRESSING, true, "RollingUpdate", progress)
    } else if replicas < desired {
        cond(PROGRESSING, true, "ScalingUp", progress)
    } else if replicas > desired {
        cond(PROGRESSING, true, "ScalingDown", progress)
    } else if ready < desired {
        cond(PROGRESSING, true, "WaitingForReady", progress)
    } else {
        cond(
            PROGRESSING,
            false,
            "Complete",
            format!("{desired} replicas up to date and ready"),
        )
    };

    let degraded = if let Some(shortage) = &input.shortage {
        cond(DEGRADED, true, "InsufficientCapacity", shortage.clone())
    } else if !input.waiting.is_empty() {
        let mut lines: Vec<String> = input.waiting.iter().take(WAITING_NAMED).cloned().collect();
        if input.waiting.len() > WAITING_NAMED {
            lines.push(format!("and {} more", input.waiting.len() - WAITING_NAMED));
        }
        cond(
            DEGRADED,
            true,
            "WaitingForProvider",
            format!(
                "{} replica(s) wait for the provider holding their data: {}",
                input.waiting.len(),
                lines.join("; ")
            ),
        )
    } else if !input.unreachable.is_empty() {
        let names: Vec<String> = input
            .unreachable
            .iter()
            .map(|(pod, provider)| format!("{pod} on {provider}"))
            .collect();
        cond(
            DEGRADED,
            true,
            "ProviderNotReady",
            format!(
                "{} replica(s) on a NotReady provider ({}); replaced after {}s",
                names.len(),
                names.join(", "),
                input.grace_seconds
            ),
        )
    } else {
        cond(
            DEGRADED,
            false,
            "ReplicasPlaced",
            format!("{}/{desired} replicas placed", replicas.min(desired)),
        )
    };

    let host = match &input.host {
        HostClaim::None => None,
        HostClaim::Owner(host) => Some(cond(
            HOST_ACCEPTED,
            true,
            "HostAccepted",
            format!("serving host {host}"),
        )),
        // The owner's namespace and no more: its name and spec are another tenant's business.
        HostClaim::Conflict { host, owner } => Some(cond(
            HOST_ACCEPTED,
            false,
            "HostConflict",
            format!(
                "host {host} is already served by a Workload in namespace {}",
                owner.namespace.as_deref().unwrap_or_default()
            ),
        )),
        HostClaim::NotAllowed(_, why) => {
            Some(cond(HOST_ACCEPTED, false, "HostNotAllowed", why.0.clone()))
        }
    };

    let certificate = input.certificate.as_ref().map(|c| match c {
        Ok(()) => cond(
            CERTIFICATE_READY,
            true,
            "CertificateServed",
            "the gateway serves HTTPS for the host with the Workload's certificate".into(),
        ),
        Err(p) => cond(CERTIFICATE_READY, false, &p.reason, p.message.clone()),
    });

    let tcp = input.tcp.as_ref().map(|c| match c {
        PortClaim::Assigned(port) => cond(
            TCP_PORT_ASSIGNED,
            true,
            "PortAssigned",
            format!("the gateway serves TCP port {port} for the Workload"),
        ),
        PortClaim::Refused { reason, message } => {
            cond(TCP_PORT_ASSIGNED, false, reason, message.clone())
        }
    });

    let mut conditions = input
        .previous
        .map(|s| s.conditions.clone())
        .unwrap_or_default();
    conditions.retain(|c| c.type_ != HOST_ACCEPTED || host.is_some());
    conditions.retain(|c| c.type_ != CERTIFICATE_READY || certificate.is_some());
    conditions.retain(|c| c.type_ != TCP_PORT_ASSIGNED || tcp.is_some());
    for c in [available, progressing, degraded]
        .into_iter()
        .chain(host)
        .chain(certificate)
        .chain(tcp)
    {
        set_condition(&mut conditions, c);
    }
    conditions.sort_by(|a, b| a.type_.cmp(&b.type_));

    WorkloadStatus {
        observed_generation: input.generation,
        replicas: replicas as i32,
        ready_replicas: ready as i32,
        label_selector: Some(input.selector),
        url: input.url,
        tcp_port: match input.tcp {
            Some(PortClaim::Assigned(port)) => Some(i32::from(port)),
            _ => None,
        },
        placements,
        persistent_replicas: input.persistent_replicas,
        conditions,
        // Written by the operator's accounting, not here.
        usage: None,
    }
}

#[cfg(test)]
mod tests;
