//! Service names: how a Workload is reached by other Workloads, the rule the Workload
//! controller (each replica's `/etc/hosts`), the operator (which connection goes where) and
//! the docs share.
//!
//! - A Workload with container ports is a service: `<name>` inside its own namespace and
//!   `<name>.<namespace>.svc.decloud` everywhere, at its *service address*, an IPv4 address of
//!   [`SERVICE_CIDR`] derived from `namespace/name` alone ([`service_ip`]), so every party
//!   computes it without a table. Nothing listens there: each edge redirects container
//!   connections to that range to its own service proxy, which asks the operator to carry
//!   them to a ready replica.
//! - Names are not secrets (as in Kubernetes DNS, where any Service name resolves); who may
//!   connect is: the Workload's own namespace, and namespaces listed in
//!   `spec.serviceAccess.allowedNamespaces` ([`may_connect`]). Default deny.
//! - Two Workloads one pod may see could hash to one address (about one chance in 4 million
//!   per pair): the operator then refuses connections to it as ambiguous rather than guess, and
//!   [`host_aliases`] lists only the first of them (own namespace first, then by name).

use std::collections::BTreeMap;
use std::net::Ipv4Addr;

use k8s_openapi::api::core::v1::HostAlias;
use kube::ResourceExt;

use crate::Workload;

/// The DNS suffix of service names: `<name>.<namespace>.svc.decloud`.
pub const SERVICE_DOMAIN: &str = "svc.decloud";

/// The range service addresses are taken from: the shared address space of RFC 6598, which
/// the edges' egress policy denies to containers anyway, so redirecting it takes nothing away.
pub const SERVICE_CIDR: (Ipv4Addr, u8) = (Ipv4Addr::new(100, 64, 0, 0), 10);

/// Most `/etc/hosts` entries a pod gets (its own namespace's Workloads first).
pub const MAX_HOST_ALIASES: usize = 512;

/// Whether `ip` is in [`SERVICE_CIDR`].
pub fn is_service_ip(ip: Ipv4Addr) -> bool {
    let (base, bits) = SERVICE_CIDR;
    let mask = u32::MAX << (32 - bits);
    u32::from(ip) & mask == u32::from(base)
}

/// The service address of Workload `namespace/name`: FNV-1a of `namespace/name` in the host
/// bits of [`SERVICE_CIDR`] (never its first or last address).
pub fn service_ip(namespace: &str, name: &str) -> Ipv4Addr {
    let mut h: u32 = 0x811c_9dc5;
    for b in namespace.bytes().chain(*b"/").chain(name.bytes()) {
        h ^= u32::from(b);
        h = h.wrapping_mul(0x0100_0193);
    }
    let (base, bits) = SERVICE_CIDR;
    let hosts = (1u32 << (32 - bits)) - 2;
    Ipv4Addr::from(u32::from(base) + 1 + h % hosts)
}

/// `<name>.<namespace>.svc.decloud`.
pub fn service_fqdn(name: &str, namespace: &str) -> String {
    format!("{name}.{namespace}.{SERVICE_DOMAIN}")
}

/// The ports a Workload serves: its containers' declared TCP ports.
pub fn service_ports(wl: &Workload) -> Vec<u16> {
    let mut ports: Vec<u16> = wl
        .spec
        .template
        .spec
        .containers
        .iter()
        .flat_map(|c| &c.ports)
        .filter(|p| p.protocol == crate::Protocol::Tcp)
        .filter_map(|p| u16::try_from(p.container_port).ok())
        .filter(|p| *p > 0)
        .collect();
    ports.sort_unstable();
    ports.dedup();
    ports
}

/// Whether Workloads of namespace `source` may connect to `target` by service name.
pub fn may_connect(target: &Workload, source: &str) -> bool {
    target.namespace().as_deref() == Some(source)
        || target
            .spec
            .service_access
            .as_ref()
            .is_some_and(|a| a.allowed_namespaces.iter().any(|n| n == source))
}

/// The Workloads a pod of namespace `source` might mean by service address `ip`: those at
/// that address that are services (have ports), not being deleted. More than one: ambiguous.
pub fn workloads_at<'a>(
    workloads: impl IntoIterator<Item = &'a Workload>,
    ip: Ipv4Addr,
) -> Vec<&'a Workload> {
    workloads
        .into_iter()
        .filter(|wl| wl.metadata.deletion_timestamp.is_none())
        .filter(|wl| !service_ports(wl).is_empty())
        .filter(|wl| service_ip(&wl.namespace().unwrap_or_default(), &wl.name_any()) == ip)
        .collect()
}

/// The `/etc/hosts` entries of a pod in namespace `source`: `<name>` and its full name for
/// each service of `source`, the full name for every other namespace's service (names are not
/// secrets; connecting is what [`may_connect`] decides). Own namespace first, then by name; at
/// most [`MAX_HOST_ALIASES`]; of two services at one address only the first is listed.
pub fn host_aliases<'a>(
    workloads: impl IntoIterator<Item = &'a Workload>,
    source: &str,
) -> Vec<HostAlias> {
    let mut services: Vec<(bool, String, String)> = workloads
        .into_iter()
        .filter(|wl| wl.metadata.deletion_timestamp.is_none())
        .filter(|wl| !service_ports(wl).is_empty())
        .map(|wl| {
            let ns = wl.namespace().unwrap_or_default();
            (ns != source, ns, wl.name_any())
        })
        .collect();
    services.sort();
    let mut taken: BTreeMap<Ipv4Addr, ()> = BTreeMap::new();
    let mut out = Vec::new();
    for (foreign, ns, name) in services {
        if out.len() >= MAX_HOST_ALIASES {
            break;
        }
        let ip = service_ip(&ns, &name);
        if taken.insert(ip, ()).is_some() {
            continue;
        }
        let mut hostnames = Vec::with_capacity(2);
        if !foreign {
            hostnames.push(name.clone());
        }
        hostnames.push(service_fqdn(&name, &ns));
        out.push(HostAlias {
            ip: ip.to_string(),
            hostnames: Some(hostnames),
        });
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{Container, ContainerPort, PodTemplate, ServiceAccess, WorkloadSpec};

    fn wl(ns: &str, name: &str, ports: &[i32], allowed: &[&str]) -> Workload {
        let mut w = Workload::new(
            name,
            WorkloadSpec {
                replicas: 1,
                template: PodTemplate {
                    metadata: None,
                    spec: crate::PodSpec {
                        containers: vec![Container {
                            name: "c".into(),
                            image: "busybox".into(),
                            ports: ports
                                .iter()
                                .map(|p| ContainerPort {
                                    container_port: *p,
                                    ..Default::default()
                                })
                                .collect(),
                            ..Default::default()
                        }],
                        ..Default::default()
                    },
                },
                placement: None,
                expose: None,
                failover: None,
                volume_claim_templates: Vec::new(),
                persistence: None,
                service_access: (!allowed.is_empty()).then(|| ServiceAccess {
                    allowed_namespaces: allowed.iter().map(|s| s.to_string()).collect(),
                }),
            },
        );
        w.metadata.namespace = Some(ns.into());
        w
    }

    #[test]
    fn addresses_are_stable_in_range_and_distinct() {
        let a = service_ip("shop", "db");
        assert_eq!(a, service_ip("shop", "db"));
        assert!(is_service_ip(a), "{a}");
        assert_ne!(a, service_ip("shop", "web"));
        assert_ne!(a, service_ip("sho", "p/db"), "the separator counts");
        assert!(!is_service_ip(Ipv4Addr::new(100, 128, 0, 1)));
        assert!(!is_service_ip(Ipv4Addr::new(172, 17, 0, 1)));
    }

    #[test]
    fn default_deny_across_namespaces() {
        let db = wl("shop", "db", &[5432], &[]);
        assert!(may_connect(&db, "shop"));
        assert!(!may_connect(&db, "other"));
        let open = wl("shop", "db", &[5432], &["other"]);
        assert!(may_connect(&open, "other"));
        assert!(!may_connect(&open, "third"));
    }

    #[test]
    fn hosts_list_own_names_short_and_others_full_only_services() {
        let all = [
            wl("b", "zed", &[80], &[]),
            wl("a", "db", &[5432], &[]),
            wl("a", "batch", &[], &[]),
        ];
        let h = host_aliases(all.iter(), "a");
        assert_eq!(h.len(), 2, "{h:?}");
        assert_eq!(
            h[0].hostnames.as_deref().unwrap(),
            ["db".to_string(), "db.a.svc.decloud".into()]
        );
        assert_eq!(h[0].ip, service_ip("a", "db").to_string());
        assert_eq!(
            h[1].hostnames.as_deref().unwrap(),
            ["zed.b.svc.decloud".to_string()]
        );
        assert_eq!(workloads_at(all.iter(), service_ip("a", "db")).len(), 1);
        assert!(workloads_at(all.iter(), service_ip("a", "batch")).is_empty());
    }

    #[test]
    fn hosts_are_bounded() {
        let many: Vec<Workload> = (0..MAX_HOST_ALIASES + 10)
            .map(|i| wl("a", &format!("s{i}"), &[80], &[]))
            .collect();
        assert!(host_aliases(many.iter(), "a").len() <= MAX_HOST_ALIASES);
    }
}
