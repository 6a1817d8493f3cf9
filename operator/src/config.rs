//! Settings shared by every part of the operator.

use std::net::IpAddr;
use std::time::Duration;

use crate::edge::liveness::{DisruptionPolicy, LivenessTimings};

/// Run-time settings, built once from the command line.
#[derive(Clone, Debug)]
pub(crate) struct Config {
    /// How often edges send a heartbeat (told to them in `Welcome`).
    pub(crate) heartbeat_interval: Duration,
    /// Heartbeats an edge may miss before it is NotReady.
    pub(crate) missed_heartbeats: u32,
    /// Port of the operator's kubelet API, published as every virtual node's kubelet endpoint.
    pub(crate) kubelet_port: u16,
    /// Address published on virtual nodes and as pods' hostIP: the operator's own, never a
    /// provider's.
    pub(crate) node_address: IpAddr,
    /// How often node Leases in `kube-node-lease` are renewed.
    pub(crate) node_lease_renew: Duration,
    /// How stale a ready Provider's `status.lastHeartbeatTime` (and its Node's) may get: the
    /// only periodic status write per edge. Liveness itself lives in memory and in the Lease.
    pub(crate) status_report_interval: Duration,
    /// The operator's own namespace: join tokens and its TLS Secret live there.
    pub(crate) namespace: String,
    /// Refused authentications (join token or credential) one source address may have in a
    /// burst before it is refused up front; 0: no limit.
    pub(crate) failed_auth_burst: u32,
    /// Refused authentications per minute an address earns back.
    pub(crate) failed_auth_per_minute: u32,
    /// Open edge connections one source address may hold; 0: no limit.
    pub(crate) max_connections_per_address: usize,
    /// Tunnels (asked or open) one edge may carry at once.
    pub(crate) max_tunnels_per_edge: usize,
    /// When many edges falling silent at once is held as a disruption instead of failed over.
    pub(crate) disruption: DisruptionPolicy,
    /// Whether pods owned by DaemonSets are relayed to edges (refused by default).
    pub(crate) allow_daemonsets: bool,
}

impl Config {
    /// How long an edge may stay silent before it is NotReady.
    pub(crate) fn unreachable_after(&self) -> Duration {
        self.heartbeat_interval * self.missed_heartbeats.max(1)
    }

    /// How often liveness is swept: several times per heartbeat interval.
    pub(crate) fn sweep_period(&self) -> Duration {
        (self.heartbeat_interval / 4).clamp(Duration::from_millis(50), Duration::from_secs(1))
    }

    /// What liveness is judged by.
    pub(crate) fn liveness_timings(&self) -> LivenessTimings {
        LivenessTimings {
            heartbeat_interval: self.heartbeat_interval,
            unreachable_after: self.unreachable_after(),
            sweep_period: self.sweep_period(),
        }
    }
}

impl Default for Config {
    fn default() -> Self {
        Self {
            heartbeat_interval: Duration::from_secs(1),
            missed_heartbeats: 3,
            kubelet_port: 10250,
            node_address: IpAddr::from([127, 0, 0, 1]),
            node_lease_renew: Duration::from_secs(10),
            status_report_interval: Duration::from_secs(300),
            namespace: "default".into(),
            failed_auth_burst: 20,
            failed_auth_per_minute: 10,
            max_connections_per_address: 256,
            max_tunnels_per_edge: 256,
            disruption: DisruptionPolicy::default(),
            allow_daemonsets: false,
        }
    }
}
