//! Which gateway port each `expose.protocol: TCP` Workload gets: the one rule the Workload
//! controller (`status.tcpPort`, condition `TcpPortAssigned`) and the gateway (which ports it
//! listens on, and for whom) both apply, over the same Workloads, so that they agree.
//!
//! - Ports come only from the platform's range ([`TcpPortRange`]); nothing a tenant writes makes
//!   the gateway listen outside it.
//! - One owner per port. A port a Workload already holds (`status.tcpPort`, written only by the
//!   operator) stays its own: first the recorded holders keep their ports, oldest first
//!   (`creationTimestamp`, then namespace/name), so a conflict always goes to the older one.
//!   Then the others, oldest first, get the port they request (`spec.expose.tcpPort`) if it is
//!   in range and free (else `PortOutOfRange` / `PortTaken`), or the lowest free port (else
//!   `NoPortAvailable`).
//! - At most `per_namespace` ports per namespace (else `PortQuotaExceeded`), so that one tenant
//!   cannot exhaust the range.
//! - A Workload being deleted holds nothing: its port is free at once.
//! - No grant per namespace, unlike custom hosts: a host name means something outside the
//!   platform (DNS points it at someone), a port of the platform's own range does not, so any
//!   namespace may take ports up to the cap. (A Namespace annotation limiting a namespace to
//!   some ports could be added on top if the platform team needs fixed ports per tenant.)
//!
//! Because the assignment is a function of the Workloads alone (with the ports recorded in
//! their status), an operator that restarts rebuilds the same allocation.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;
use std::str::FromStr;

use kube::ResourceExt;

use crate::{Workload, hosts::seniority};

/// The gateway's TCP ports, inclusive.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct TcpPortRange {
    /// First port.
    pub first: u16,
    /// Last port (inclusive).
    pub last: u16,
}

/// Most ports one range may hold (the gateway binds each).
pub const MAX_RANGE_PORTS: u32 = 4096;

impl TcpPortRange {
    /// Whether `port` is in the range.
    pub fn contains(&self, port: i32) -> bool {
        (i32::from(self.first)..=i32::from(self.last)).contains(&port)
    }
}

impl fmt::Display for TcpPortRange {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}-{}", self.first, self.last)
    }
}

impl FromStr for TcpPortRange {
    type Err = String;

    /// `FIRST-LAST` (or one port), within 1..=65535, at most [`MAX_RANGE_PORTS`] ports.
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let (a, b) = s.split_once('-').unwrap_or((s, s));
        let parse = |v: &str| {
            v.trim()
                .parse::<u16>()
                .ok()
                .filter(|p| *p > 0)
                .ok_or_else(|| format!("{v:?} is not a port (1-65535)"))
        };
        let (first, last) = (parse(a)?, parse(b)?);
        if first > last {
            return Err(format!("range {s:?} ends before it starts"));
        }
        if u32::from(last - first) + 1 > MAX_RANGE_PORTS {
            return Err(format!(
                "range {s:?} holds more than {MAX_RANGE_PORTS} ports"
            ));
        }
        Ok(Self { first, last })
    }
}

/// `(namespace, name)` of a Workload.
pub type WorkloadKey = (String, String);

/// The [`WorkloadKey`] of `wl`.
pub fn key_of(wl: &Workload) -> WorkloadKey {
    (wl.namespace().unwrap_or_default(), wl.name_any())
}

/// What a TCP Workload's claim comes to.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum PortClaim {
    /// The Workload holds this port.
    Assigned(u16),
    /// It gets none; `reason` is the condition reason, `message` says why.
    Refused {
        /// `PortTaken`, `PortOutOfRange`, `NoPortAvailable`, `PortQuotaExceeded`, `TcpDisabled`.
        reason: &'static str,
        /// For the user.
        message: String,
    },
}

/// Whether `wl` asks for a gateway port now (TCP exposure, not being deleted).
pub fn wants_port(wl: &Workload) -> bool {
    wl.metadata.deletion_timestamp.is_none() && wl.spec.expose.as_ref().is_some_and(|e| e.is_tcp())
}

/// The claim of every TCP Workload in `workloads`, by the rule above. `range` `None`: TCP
/// exposure is off, every claim is refused.
pub fn assign_ports<'a>(
    workloads: impl IntoIterator<Item = &'a Workload>,
    range: Option<TcpPortRange>,
    per_namespace: usize,
) -> BTreeMap<WorkloadKey, PortClaim> {
    let mut claimants: Vec<&Workload> = workloads.into_iter().filter(|w| wants_port(w)).collect();
    claimants.sort_by_key(|w| seniority(w));
    let mut out = BTreeMap::new();
    let Some(range) = range else {
        for wl in claimants {
            out.insert(
                key_of(wl),
                PortClaim::Refused {
                    reason: "TcpDisabled",
                    message: "this platform exposes no TCP ports (the operator runs without \
                              --tcp-port-range)"
                        .into(),
                },
            );
        }
        return out;
    };
    let mut taken: BTreeSet<u16> = BTreeSet::new();
    let mut per_ns: BTreeMap<String, usize> = BTreeMap::new();
    let requested = |wl: &Workload| wl.spec.expose.as_ref().and_then(|e| e.tcp_port);
    // Pass 1: recorded holders keep their port (unless they now request another one).
    for wl in &claimants {
        let Some(held) = wl.status.as_ref().and_then(|s| s.tcp_port) else {
            continue;
        };
        if requested(wl).is_some_and(|r| r != held) || !range.contains(held) {
            continue;
        }
        let port = held as u16;
        let ns = per_ns
            .entry(wl.namespace().unwrap_or_default())
            .or_default();
        if taken.contains(&port) || *ns >= per_namespace {
            continue;
        }
        *ns += 1;
        taken.insert(port);
        out.insert(key_of(wl), PortClaim::Assigned(port));
    }
    // Pass 2: the others, oldest first.
    for wl in &claimants {
        let key = key_of(wl);
        if out.contains_key(&key) {
            continue;
        }
        let ns_name = wl.namespace().unwrap_or_default();
        let count = per_ns.get(&ns_name).copied().unwrap_or_default();
        let refuse = |reason, message| PortClaim::Refused { reason, message };
        let claim = if count >= per_namespace {
            refuse(
                "PortQuotaExceeded",
                format!("namespace {ns_name} already holds {per_namespace} TCP port(s), its limit"),
            )
        } else {
            match requested(wl) {
                Some(p) if !range.contains(p) => refuse(
                    "PortOutOfRange",
                    format!("port {p} is outside the gateway's TCP port range {range}"),
                ),
                Some(p) if taken.contains(&(p as u16)) => refuse(
                    "PortTaken",
                    format!("port {p} is already held by another Workload"),
                ),
                Some(p) => PortClaim::Assigned(p as u16),
                None => match (range.first..=range.last).find(|p| !taken.contains(p)) {
                    Some(p) => PortClaim::Assigned(p),
                    None => refuse(
                        "NoPortAvailable",
                        format!("every port of the gateway's TCP port range {range} is held"),
                    ),
                },
            }
        };
        if let PortClaim::Assigned(p) = claim {
            taken.insert(p);
            *per_ns.entry(ns_name).or_default() += 1;
        }
        out.insert(key, claim);
    }
    out
}

#[cfg(test)]
mod tests;
