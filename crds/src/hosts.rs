//! Who may serve a public host: the one rule the Workload controller (status, events) and the
//! gateway (routing) both apply, so that what a Workload's status says is what the gateway does.
//!
//! - Under the base domain, a namespace may use only `*.<namespace>.<base-domain>` (any number of
//!   labels before it); a Workload's default host `<name>.<namespace>.<base-domain>` is so.
//! - Any other (custom) host must be granted to the namespace by the platform team, with the
//!   Namespace annotation [`ALLOWED_HOSTS_ANNOTATION`]: comma-separated host names or
//!   `*.<domain>` patterns, where `*` stands for exactly one label. Tenants cannot edit their
//!   Namespace under ordinary RBAC, so they cannot grant themselves a host.
//! - Of the Workloads allowed to claim one host, the oldest (`metadata.creationTimestamp`, ties
//!   broken by namespace, then name) owns it; the others are refused with `HostConflict`. A
//!   Workload being deleted claims nothing, so the next one takes over at once.

use k8s_openapi::api::core::v1::Namespace;
use kube::{
    ResourceExt,
    runtime::reflector::{ObjectRef, Store},
};

use crate::Workload;

/// On a Namespace, set by the platform team: the custom hosts (outside the base domain) its
/// Workloads may serve, comma-separated; `*.example.net` grants every `<label>.example.net`.
pub const ALLOWED_HOSTS_ANNOTATION: &str = "decloud.dev/allowed-hosts";

/// The hosts granted to `namespace`: its [`ALLOWED_HOSTS_ANNOTATION`] in `namespaces` (a
/// cache of Namespaces), if any.
pub fn granted_hosts(namespaces: &Store<Namespace>, namespace: &str) -> Option<String> {
    namespaces
        .get(&ObjectRef::new(namespace))?
        .annotations()
        .get(ALLOWED_HOSTS_ANNOTATION)
        .cloned()
}

/// Longest host name (RFC 1123).
const MAX_HOST: usize = 253;
/// Longest label of a host name.
const MAX_LABEL: usize = 63;

/// Whether `host` is a lower-case RFC 1123 host name of at most 253 characters.
pub fn is_valid_host(host: &str) -> bool {
    host.len() <= MAX_HOST
        && !host.is_empty()
        && host.split('.').all(|label| {
            let b = label.as_bytes();
            !b.is_empty()
                && b.len() <= MAX_LABEL
                && b.iter()
                    .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || *c == b'-')
                && b[0] != b'-'
                && b[b.len() - 1] != b'-'
        })
}

/// Whether `pattern` (a host name or `*.<domain>`, any case) covers `host`. The wildcard stands
/// for exactly one label: `*.example.net` covers `a.example.net`, neither `a.b.example.net` nor
/// `example.net`.
pub fn pattern_matches(pattern: &str, host: &str) -> bool {
    let pattern = pattern.trim().to_ascii_lowercase();
    match pattern.strip_prefix("*.") {
        Some(domain) => host
            .strip_suffix(domain)
            .and_then(|rest| rest.strip_suffix('.'))
            .is_some_and(|label| !label.is_empty() && !label.contains('.')),
        None => !pattern.is_empty() && pattern == host,
    }
}

/// Why a Workload may not serve a host; the message is meant for its status.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct NotAllowed(pub String);

/// Whether a Workload in `namespace` may serve `host` at all, whoever else claims it. `grants`
/// is the namespace's [`ALLOWED_HOSTS_ANNOTATION`], if any.
pub fn admit_host(
    host: &str,
    namespace: &str,
    base_domain: &str,
    grants: Option<&str>,
) -> Result<(), NotAllowed> {
    if !is_valid_host(host) {
        return Err(NotAllowed(format!(
            "host {host:?} is not a valid lower-case DNS name of at most {MAX_HOST} characters"
        )));
    }
    let base = base_domain.trim_end_matches('.').to_ascii_lowercase();
    if host == base || host.ends_with(&format!(".{base}")) {
        let zone = format!(".{namespace}.{base}");
        return if host.len() > zone.len() && host.ends_with(&zone) {
            Ok(())
        } else {
            Err(NotAllowed(format!(
                "host {host} is under the base domain {base}, where namespace {namespace} may \
                 only use *.{namespace}.{base}"
            )))
        };
    }
    if grants.is_some_and(|g| g.split(',').any(|p| pattern_matches(p, host))) {
        Ok(())
    } else {
        Err(NotAllowed(format!(
            "custom host {host} is not granted to namespace {namespace} (the platform team \
             grants hosts with the Namespace annotation {ALLOWED_HOSTS_ANNOTATION})"
        )))
    }
}

/// The host `wl` claims, lower-cased: `None` when it exposes nothing or is being deleted.
pub fn claimed_host(wl: &Workload, base_domain: &str) -> Option<String> {
    // A TCP Workload is reached by port, not host: it claims none.
    if wl.spec.expose.as_ref().is_none_or(|e| e.is_tcp())
        || wl.metadata.deletion_timestamp.is_some()
    {
        return None;
    }
    Some(wl.public_host(base_domain).to_ascii_lowercase())
}

/// Whether `wl` claims `host` and may serve it. `grants` answers a namespace's
/// [`ALLOWED_HOSTS_ANNOTATION`].
fn may_claim(
    wl: &Workload,
    host: &str,
    base_domain: &str,
    grants: &dyn Fn(&str) -> Option<String>,
) -> bool {
    claimed_host(wl, base_domain).as_deref() == Some(host) && {
        let ns = wl.namespace().unwrap_or_default();
        admit_host(host, &ns, base_domain, grants(&ns).as_deref()).is_ok()
    }
}

/// The order of ownership: oldest first (a Workload without a creation time last), then by
/// namespace, then by name.
pub(crate) fn seniority(
    wl: &Workload,
) -> (bool, Option<k8s_openapi::jiff::Timestamp>, String, String) {
    let created = wl.metadata.creation_timestamp.as_ref().map(|t| t.0);
    (
        created.is_none(),
        created,
        wl.namespace().unwrap_or_default(),
        wl.name_any(),
    )
}

/// The one Workload that serves `host` (lower-case): the oldest of those that claim it and may
/// serve it. `grants` answers a namespace's [`ALLOWED_HOSTS_ANNOTATION`].
pub fn host_owner<'a>(
    workloads: impl IntoIterator<Item = &'a Workload>,
    host: &str,
    base_domain: &str,
    grants: &dyn Fn(&str) -> Option<String>,
) -> Option<ObjectRef<Workload>> {
    workloads
        .into_iter()
        .filter(|wl| may_claim(wl, host, base_domain, grants))
        .min_by_key(|wl| seniority(wl))
        .map(ObjectRef::from_obj)
}

/// What one Workload's claim comes to.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum HostClaim {
    /// It exposes nothing (or is being deleted): no host, no URL.
    None,
    /// It serves its host.
    Owner(String),
    /// It may serve the host, but an older Workload does.
    Conflict {
        /// The host.
        host: String,
        /// The Workload that serves it.
        owner: ObjectRef<Workload>,
    },
    /// It may not serve the host.
    NotAllowed(String, NotAllowed),
}

/// What `wl`'s claim comes to among `workloads` (which may include `wl`).
pub fn host_claim<'a>(
    wl: &'a Workload,
    workloads: impl IntoIterator<Item = &'a Workload>,
    base_domain: &str,
    grants: &dyn Fn(&str) -> Option<String>,
) -> HostClaim {
    let Some(host) = claimed_host(wl, base_domain) else {
        return HostClaim::None;
    };
    let ns = wl.namespace().unwrap_or_default();
    if let Err(e) = admit_host(&host, &ns, base_domain, grants(&ns).as_deref()) {
        return HostClaim::NotAllowed(host, e);
    }
    let me = ObjectRef::from_obj(wl);
    // `wl` itself may be fresher than the cache: count it as given, not as cached.
    let others = workloads
        .into_iter()
        .filter(|o| ObjectRef::from_obj(*o) != me);
    match host_owner(others.chain([wl]), &host, base_domain, grants) {
        Some(owner) if owner != me => HostClaim::Conflict { host, owner },
        _ => HostClaim::Owner(host),
    }
}

#[cfg(test)]
mod tests;
