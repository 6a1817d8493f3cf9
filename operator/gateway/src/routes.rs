//! Which replicas serve which host, from the operator's shared caches of Workloads and pods.

use std::{
    collections::{BTreeMap, HashMap},
    sync::{Arc, Mutex},
};

use decloud_crds::{
    Workload,
    contracts::{WORKLOAD_LABEL, provider_of_node},
    hosts::{granted_hosts, host_owner},
    tcp_ports::{PortClaim, TcpPortRange, WorkloadKey, assign_ports, wants_port},
};
use k8s_openapi::api::core::v1::{Namespace, Pod};
use kube::{
    ResourceExt,
    runtime::reflector::{self, ObjectRef},
};

/// One ready replica's exposed port.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Backend {
    /// Pod namespace.
    pub namespace: String,
    /// Pod name.
    pub pod: String,
    /// Pod uid, which the edge knows the pod by.
    pub pod_uid: String,
    /// Provider (edge) running the pod.
    pub provider: String,
    /// Container port.
    pub port: u16,
}

/// What a host resolves to.
#[derive(Debug, PartialEq, Eq)]
pub enum Route {
    /// No Workload is exposed under this host.
    Unknown,
    /// The Workload exists but none of its replicas is ready.
    NoReady {
        /// `namespace/name`.
        workload: String,
        /// Desired replicas.
        desired: i32,
    },
    /// Ready replicas, in the order to try them.
    Backends {
        /// `namespace/name`.
        workload: String,
        /// Ready replicas, rotated for round-robin.
        backends: Vec<Backend>,
    },
}

/// The public host of a Workload: its own `spec.expose.host`, else
/// `<name>.<namespace>.<base_domain>`.
pub fn workload_host(wl: &Workload, base_domain: &str) -> String {
    wl.public_host(base_domain)
}

/// Host → replicas, answered from in-memory watch caches.
///
/// A host resolves only to the Workload that owns it by `decloud_crds::hosts` (the one the
/// Workload controller gives the URL): never to another claimant, also while the owner has no
/// ready replica, and never to a Workload that may not serve the host.
#[derive(Clone)]
pub struct Routes {
    workloads: reflector::Store<Workload>,
    pods: reflector::Store<Pod>,
    namespaces: reflector::Store<Namespace>,
    base_domain: String,
    next: Arc<Mutex<HashMap<String, usize>>>,
}

impl Routes {
    /// Routes over the given caches (the operator's shared watches; pods of every kind may be in
    /// `pods`, only replicas carrying the workload label are routed to; `namespaces` say which
    /// custom hosts each namespace was granted).
    pub fn new(
        workloads: reflector::Store<Workload>,
        pods: reflector::Store<Pod>,
        namespaces: reflector::Store<Namespace>,
        base_domain: impl Into<String>,
    ) -> Self {
        Self {
            workloads,
            pods,
            namespaces,
            base_domain: base_domain.into(),
            next: Arc::default(),
        }
    }

    /// The Workload that owns `host` (lower-case, without port), if any.
    pub(crate) fn owner_workload(&self, host: &str) -> Option<Arc<Workload>> {
        let host = host.to_ascii_lowercase();
        let grants = |ns: &str| granted_hosts(&self.namespaces, ns);
        let workloads = self.workloads.state();
        let owner = host_owner(
            workloads.iter().map(AsRef::as_ref),
            &host,
            &self.base_domain,
            &grants,
        )?;
        workloads
            .into_iter()
            .find(|wl| ObjectRef::from_obj(wl.as_ref()) == owner)
    }

    /// `namespace/name` of the Workload that owns `host`, if any.
    pub(crate) fn owner(&self, host: &str) -> Option<String> {
        let wl = self.owner_workload(host)?;
        Some(format!(
            "{}/{}",
            wl.namespace().unwrap_or_default(),
            wl.name_any()
        ))
    }

    /// Resolves `host` (lower-case, without port).
    pub fn resolve(&self, host: &str) -> Route {
        let Some(wl) = self.owner_workload(host) else {
            return Route::Unknown;
        };
        self.resolve_workload(&wl)
    }

    /// Which Workload holds each gateway TCP port, by `decloud_crds::tcp_ports` (the rule the
    /// Workload controller writes `status.tcpPort` by).
    pub fn tcp_owners(
        &self,
        range: TcpPortRange,
        per_namespace: usize,
    ) -> BTreeMap<u16, WorkloadKey> {
        let workloads = self.workloads.state();
        assign_ports(
            workloads.iter().map(AsRef::as_ref),
            Some(range),
            per_namespace,
        )
        .into_iter()
        .filter_map(|(key, claim)| match claim {
            PortClaim::Assigned(port) => Some((port, key)),
            PortClaim::Refused { .. } => None,
        })
        .collect()
    }

    /// Resolves Workload `namespace/name` (still exposed over TCP) to its ready replicas.
    pub fn resolve_tcp(&self, key: &WorkloadKey) -> Route {
        match self.workloads.get(&ObjectRef::new(&key.1).within(&key.0)) {
            Some(wl) if wants_port(&wl) => self.resolve_workload(&wl),
            _ => Route::Unknown,
        }
    }

    fn resolve_workload(&self, wl: &Workload) -> Route {
        let ns = wl.namespace().unwrap_or_default();
        let name = wl.name_any();
        let key = format!("{ns}/{name}");
        let port = wl.spec.expose.as_ref().map(|e| e.port).unwrap_or_default() as u16;
        let mut backends = ready_backends(&self.pods, wl, port);
        if backends.is_empty() {
            return Route::NoReady {
                workload: key,
                desired: wl.spec.replicas,
            };
        }
        let start = {
            let mut next = self.next.lock().expect("round-robin lock");
            let n = next.entry(key.clone()).or_default();
            *n = n.wrapping_add(1);
            *n
        };
        let len = backends.len();
        backends.rotate_left(start % len);
        Route::Backends {
            workload: key,
            backends,
        }
    }
}

/// The ready replicas of `wl` (not being deleted, on a virtual node), by pod name, each as a
/// backend on `port`.
pub fn ready_backends(pods: &reflector::Store<Pod>, wl: &Workload, port: u16) -> Vec<Backend> {
    let ns = wl.namespace().unwrap_or_default();
    let name = wl.name_any();
    let mut out: Vec<Backend> = pods
        .state()
        .into_iter()
        .filter(|p| {
            p.namespace().as_deref() == Some(ns.as_str())
                && p.labels().get(WORKLOAD_LABEL) == Some(&name)
                && p.metadata.deletion_timestamp.is_none()
                && is_ready(p)
        })
        .filter_map(|p| {
            let node = p.spec.as_ref()?.node_name.clone()?;
            Some(Backend {
                namespace: ns.clone(),
                pod: p.name_any(),
                pod_uid: p.uid()?,
                provider: provider_of_node(&node)?.to_string(),
                port,
            })
        })
        .collect();
    out.sort_by(|a, b| a.pod.cmp(&b.pod));
    out
}

fn is_ready(pod: &Pod) -> bool {
    pod.status
        .as_ref()
        .and_then(|s| s.conditions.as_ref())
        .is_some_and(|cs| cs.iter().any(|c| c.type_ == "Ready" && c.status == "True"))
}

/// A Host header's host, lower-cased and without port or trailing dot.
pub(crate) fn bare_host(raw: &str) -> String {
    let host = raw.trim().to_ascii_lowercase();
    let host = match host.rsplit_once(':') {
        Some((h, port)) if port.chars().all(|c| c.is_ascii_digit()) => h.to_string(),
        _ => host,
    };
    host.trim_end_matches('.').to_string()
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use k8s_openapi::api::core::v1::{PodCondition, PodSpec, PodStatus};
    use kube::runtime::watcher::Event;

    pub(crate) fn workload(name: &str, port: i32, host: Option<&str>) -> Workload {
        workload_in("default", name, port, host, "2026-01-01T00:00:00Z")
    }

    fn workload_in(ns: &str, name: &str, port: i32, host: Option<&str>, created: &str) -> Workload {
        let mut wl: Workload = serde_json::from_value(serde_json::json!({
            "apiVersion": "decloud.dev/v1alpha1", "kind": "Workload",
            "metadata": {"name": name, "namespace": ns, "creationTimestamp": created},
            "spec": {"replicas": 2, "template": {"spec": {"containers": [
                {"name": "web", "image": "x", "ports": [{"containerPort": port}]}]}},
                "expose": {"port": port}}
        }))
        .expect("valid workload");
        if let Some(h) = host {
            wl.spec.expose.as_mut().expect("expose").host = Some(h.into());
        }
        wl
    }

    pub(crate) fn pod(name: &str, wl: &str, provider: &str, ready: bool) -> Pod {
        pod_in("default", name, wl, provider, ready)
    }

    fn pod_in(ns: &str, name: &str, wl: &str, provider: &str, ready: bool) -> Pod {
        let mut p = Pod::default();
        p.metadata.name = Some(name.into());
        p.metadata.namespace = Some(ns.into());
        p.metadata.uid = Some(format!("uid-{name}"));
        p.metadata.labels = Some([(WORKLOAD_LABEL.to_string(), wl.to_string())].into());
        p.spec = Some(PodSpec {
            node_name: Some(format!("edge-{provider}")),
            ..Default::default()
        });
        p.status = Some(PodStatus {
            conditions: Some(vec![PodCondition {
                type_: "Ready".into(),
                status: if ready { "True" } else { "False" }.into(),
                ..Default::default()
            }]),
            ..Default::default()
        });
        p
    }

    /// Namespaces `default`, `team-a` and `team-b`, each granted `shop.example.org`.
    fn namespaces() -> Vec<Namespace> {
        ["default", "team-a", "team-b"]
            .into_iter()
            .map(|name| {
                let mut ns = Namespace::default();
                ns.metadata.name = Some(name.into());
                ns.metadata.annotations = Some(
                    [(
                        decloud_crds::hosts::ALLOWED_HOSTS_ANNOTATION.to_string(),
                        "shop.example.org".to_string(),
                    )]
                    .into(),
                );
                ns
            })
            .collect()
    }

    pub(crate) fn routes(wls: Vec<Workload>, pods: Vec<Pod>) -> Routes {
        routes_with(wls, pods, namespaces())
    }

    fn routes_with(wls: Vec<Workload>, pods: Vec<Pod>, namespaces: Vec<Namespace>) -> Routes {
        let (wl_store, mut wl_writer) = reflector::store();
        let (pod_store, mut pod_writer) = reflector::store();
        let (ns_store, mut ns_writer) = reflector::store();
        for wl in wls {
            wl_writer.apply_watcher_event(&Event::Apply(wl));
        }
        for p in pods {
            pod_writer.apply_watcher_event(&Event::Apply(p));
        }
        for ns in namespaces {
            ns_writer.apply_watcher_event(&Event::Apply(ns));
        }
        Routes::new(wl_store, pod_store, ns_store, "decloud.localhost")
    }

    #[test]
    fn a_host_routes_only_to_its_owner_also_while_the_owner_has_no_ready_replica() {
        let wls = || {
            vec![
                workload_in(
                    "team-b",
                    "shop",
                    80,
                    Some("shop.example.org"),
                    "2026-01-02T00:00:00Z",
                ),
                workload_in(
                    "team-a",
                    "shop",
                    80,
                    Some("shop.example.org"),
                    "2026-01-01T00:00:00Z",
                ),
            ]
        };
        let b_ready = pod_in("team-b", "shop-b", "shop", "p2", true);
        let r = routes(
            wls(),
            vec![
                pod_in("team-a", "shop-a", "shop", "p1", true),
                b_ready.clone(),
            ],
        );
        for _ in 0..4 {
            let Route::Backends { workload, backends } = r.resolve("Shop.Example.org") else {
                panic!("the owner should route");
            };
            assert_eq!(workload, "team-a/shop");
            assert!(
                backends.iter().all(|b| b.namespace == "team-a"),
                "{backends:?}"
            );
        }
        let r = routes(
            wls(),
            vec![pod_in("team-a", "shop-a", "shop", "p1", false), b_ready],
        );
        assert_eq!(
            r.resolve("shop.example.org"),
            Route::NoReady {
                workload: "team-a/shop".into(),
                desired: 2
            },
            "the owner has no ready replica: 503, not the other claimant's app"
        );
    }

    #[test]
    fn a_host_a_namespace_may_not_serve_is_not_routed() {
        let wls = vec![
            workload_in(
                "team-a",
                "x",
                80,
                Some("x.team-b.decloud.localhost"),
                "2026-01-01T00:00:00Z",
            ),
            workload_in(
                "team-a",
                "shop",
                80,
                Some("shop.example.org"),
                "2026-01-01T00:00:00Z",
            ),
        ];
        let pods = vec![
            pod_in("team-a", "x-1", "x", "p1", true),
            pod_in("team-a", "shop-1", "shop", "p1", true),
        ];
        let r = routes_with(wls, pods, vec![]);
        assert_eq!(r.resolve("x.team-b.decloud.localhost"), Route::Unknown);
        assert_eq!(r.resolve("shop.example.org"), Route::Unknown, "not granted");
    }

    #[test]
    fn resolves_default_and_custom_hosts_to_ready_replicas_in_rotation() {
        let r = routes(
            vec![
                workload("hello", 8080, None),
                workload("shop", 80, Some("shop.example.org")),
            ],
            vec![
                pod("hello-a", "hello", "p1", true),
                pod("hello-b", "hello", "p2", true),
                pod("hello-c", "hello", "p3", false),
                pod("shop-a", "shop", "p1", false),
            ],
        );
        let Route::Backends {
            backends: first, ..
        } = r.resolve("hello.default.decloud.localhost")
        else {
            panic!("hello should route");
        };
        assert_eq!(first.len(), 2, "the unready replica is not a backend");
        assert_eq!(first[0].port, 8080);
        let Route::Backends {
            backends: second, ..
        } = r.resolve("hello.default.decloud.localhost")
        else {
            panic!("hello should route");
        };
        assert_ne!(first[0].pod, second[0].pod, "round-robin rotates");
        assert_eq!(
            r.resolve("shop.example.org"),
            Route::NoReady {
                workload: "default/shop".into(),
                desired: 2
            }
        );
        assert_eq!(r.resolve("nope.default.decloud.localhost"), Route::Unknown);
        assert_eq!(r.resolve("shop.default.decloud.localhost"), Route::Unknown);
    }
}
