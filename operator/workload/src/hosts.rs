//! Which Workloads a change matters to for host ownership (`decloud_crds::hosts`): a Workload
//! that starts, stops or changes claiming a host, or goes, may hand the host to another claimant
//! or take it from one; a Namespace whose grants change may do so for every claimant of the
//! hosts its Workloads claim.

use std::{
    collections::{BTreeSet, HashMap},
    sync::{Mutex, PoisonError},
};

use decloud_crds::{Workload, hosts::claimed_host};
use k8s_openapi::api::core::v1::Namespace;
use kube::{
    ResourceExt,
    runtime::reflector::{ObjectRef, Store},
};

/// Remembers the host each Workload claimed when last seen, so that a Workload moving from host
/// `x` to `y` (or going) wakes the claimants of `x` too.
pub(crate) struct ClaimIndex {
    base_domain: String,
    last: Mutex<HashMap<ObjectRef<Workload>, String>>,
}

impl ClaimIndex {
    /// An empty index (at start-up every Workload is reconciled anyway).
    pub(crate) fn new(base_domain: impl Into<String>) -> Self {
        Self {
            base_domain: base_domain.into(),
            last: Mutex::default(),
        }
    }

    /// The other Workloads in `workloads` whose host ownership a change of `changed` may alter:
    /// the claimants of the host it claims now and of the one it claimed before. `gone` says the
    /// change was a deletion.
    pub(crate) fn affected_by(
        &self,
        changed: &Workload,
        gone: bool,
        workloads: &Store<Workload>,
    ) -> Vec<ObjectRef<Workload>> {
        let me = ObjectRef::from_obj(changed);
        let now = if gone {
            None
        } else {
            claimed_host(changed, &self.base_domain)
        };
        let before = {
            let mut last = self.last.lock().unwrap_or_else(PoisonError::into_inner);
            match &now {
                Some(host) => last.insert(me.clone(), host.clone()),
                None => last.remove(&me),
            }
        };
        let hosts: BTreeSet<String> = now.into_iter().chain(before).collect();
        self.claimants(&hosts, workloads, Some(&me))
    }

    /// The Workloads whose ownership a change of `namespace` (its grants) may alter: every
    /// claimant of a host that a Workload in it claims.
    pub(crate) fn affected_by_namespace(
        &self,
        namespace: &Namespace,
        workloads: &Store<Workload>,
    ) -> Vec<ObjectRef<Workload>> {
        let ns = namespace.name_any();
        let hosts: BTreeSet<String> = workloads
            .state()
            .iter()
            .filter(|wl| wl.namespace().as_deref() == Some(ns.as_str()))
            .filter_map(|wl| claimed_host(wl, &self.base_domain))
            .collect();
        self.claimants(&hosts, workloads, None)
    }

    fn claimants(
        &self,
        hosts: &BTreeSet<String>,
        workloads: &Store<Workload>,
        except: Option<&ObjectRef<Workload>>,
    ) -> Vec<ObjectRef<Workload>> {
        if hosts.is_empty() {
            return Vec::new();
        }
        workloads
            .state()
            .iter()
            .filter(|wl| {
                claimed_host(wl, &self.base_domain).is_some_and(|h| hosts.contains(&h))
                    // A Workload being deleted claims nothing, but still shows what it gave up.
                    || wl.metadata.deletion_timestamp.is_some()
                        && wl.spec.expose.is_some()
                        && hosts.contains(&wl.public_host(&self.base_domain).to_ascii_lowercase())
            })
            .map(|wl| ObjectRef::from_obj(wl.as_ref()))
            .filter(|r| Some(r) != except)
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use kube::runtime::{reflector::store::Writer, watcher::Event};

    fn wl(ns: &str, name: &str, host: &str) -> Workload {
        serde_json::from_value(serde_json::json!({
            "apiVersion": "decloud.dev/v1alpha1", "kind": "Workload",
            "metadata": {"name": name, "namespace": ns},
            "spec": {"template": {"spec": {"containers": [
                {"name": "web", "image": "x", "ports": [{"containerPort": 80}]}]}},
                "expose": {"port": 80, "host": host}}
        }))
        .expect("valid workload")
    }

    fn names(refs: Vec<ObjectRef<Workload>>) -> Vec<String> {
        let mut v: Vec<String> = refs
            .into_iter()
            .map(|r| format!("{}/{}", r.namespace.unwrap_or_default(), r.name))
            .collect();
        v.sort();
        v
    }

    #[test]
    fn a_change_wakes_the_claimants_of_the_old_and_the_new_host() {
        let mut writer: Writer<Workload> = Writer::new(());
        let a = wl("team-a", "shop", "shop.example.org");
        let b = wl("team-b", "shop", "shop.example.org");
        let c = wl("team-c", "web", "web.example.org");
        for w in [&a, &b, &c] {
            writer.apply_watcher_event(&Event::Apply(w.clone()));
        }
        let store = writer.as_reader();
        let index = ClaimIndex::new("decloud.localhost");
        assert_eq!(names(index.affected_by(&a, false, &store)), ["team-b/shop"]);
        // `a` moves to c's host: b may now own its host, c may lose its own.
        let moved = wl("team-a", "shop", "web.example.org");
        writer.apply_watcher_event(&Event::Apply(moved.clone()));
        assert_eq!(
            names(index.affected_by(&moved, false, &store)),
            ["team-b/shop", "team-c/web"]
        );
        writer.apply_watcher_event(&Event::Delete(moved.clone()));
        assert_eq!(
            names(index.affected_by(&moved, true, &store)),
            ["team-c/web"]
        );
        assert!(
            index.affected_by(&moved, true, &store).is_empty(),
            "forgotten"
        );
    }
}
