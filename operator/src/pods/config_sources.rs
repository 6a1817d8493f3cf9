//! The cache of the ConfigMaps and Secrets bound pods refer to: what each holds (as its
//! watch last said) and which pods use it. Its watches are started and stopped through
//! [`ConfigSources::track`]; `super::config` runs them and resolves pods' configurations.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::{Arc, Mutex};

use k8s_openapi::api::core::v1::Pod;
use kube::ResourceExt;
use kube::runtime::reflector::ObjectRef;
use tokio::task::AbortHandle;
use tracing::debug;

/// Kind of a referenced object.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub(crate) enum Kind {
    /// A ConfigMap.
    ConfigMap,
    /// A Secret.
    Secret,
}

impl Kind {
    /// How kubelet names it in "not found" messages.
    pub(crate) fn lower(self) -> &'static str {
        match self {
            Kind::ConfigMap => "configmap",
            Kind::Secret => "secret",
        }
    }

    pub(crate) fn title(self) -> &'static str {
        match self {
            Kind::ConfigMap => "ConfigMap",
            Kind::Secret => "Secret",
        }
    }
}

/// One object a pod refers to.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub(crate) struct ConfigRef {
    pub(crate) kind: Kind,
    pub(crate) namespace: String,
    pub(crate) name: String,
}

/// What the cache knows of one object.
#[derive(Clone, Debug)]
pub(crate) enum Lookup {
    /// Not read yet: the pod's configuration waits.
    Unknown,
    /// It does not exist.
    Missing,
    /// It is larger than an edge takes (its size).
    TooLarge(usize),
    /// Its keys and values.
    Present(Arc<BTreeMap<String, Vec<u8>>>),
}

/// The objects read for bound pods, and which pods use each.
#[derive(Default)]
pub(crate) struct ConfigSources {
    inner: Mutex<Inner>,
}

#[derive(Default)]
struct Inner {
    objects: HashMap<ConfigRef, Entry>,
    /// Pod uid → (namespace/name, the objects it refers to).
    pods: HashMap<String, (ObjectRef<Pod>, Vec<ConfigRef>)>,
}

struct Entry {
    state: Lookup,
    users: HashSet<String>,
    task: AbortHandle,
}

impl Drop for Entry {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl ConfigSources {
    /// What the cache holds of `r` now.
    pub(crate) fn lookup(&self, r: &ConfigRef) -> Lookup {
        let inner = self.inner.lock().unwrap_or_else(|e| e.into_inner());
        inner
            .objects
            .get(r)
            .map_or(Lookup::Unknown, |e| e.state.clone())
    }

    /// `pod` refers to `refs` now (empty: it is gone): starts the watches it needs and stops
    /// those no pod needs any more.
    /// `watch` starts the watch of one object (and gives the handle that stops it).
    pub(crate) fn track(
        &self,
        pod: &Pod,
        refs: Vec<ConfigRef>,
        watch: impl Fn(ConfigRef) -> AbortHandle,
    ) {
        let uid = pod.uid().unwrap_or_default();
        let mut inner = self.inner.lock().unwrap_or_else(|e| e.into_inner());
        let old = if refs.is_empty() {
            inner.pods.remove(&uid).map(|(_, r)| r)
        } else {
            let key = ObjectRef::from_obj(pod);
            inner
                .pods
                .insert(uid.clone(), (key, refs.clone()))
                .map(|(_, r)| r)
        }
        .unwrap_or_default();
        if old == refs {
            return;
        }
        for r in &old {
            if !refs.contains(r)
                && let Some(e) = inner.objects.get_mut(r)
            {
                e.users.remove(&uid);
                if e.users.is_empty() {
                    debug!(kind = r.kind.title(), namespace = %r.namespace, name = %r.name, "stop watching");
                    inner.objects.remove(r);
                }
            }
        }
        for r in refs {
            match inner.objects.get_mut(&r) {
                Some(e) => {
                    e.users.insert(uid.clone());
                }
                None => {
                    let task = watch(r.clone());
                    inner.objects.insert(
                        r,
                        Entry {
                            state: Lookup::Unknown,
                            users: HashSet::from([uid.clone()]),
                            task,
                        },
                    );
                }
            }
        }
    }

    /// Records what `r` holds now; returns the pods that use it when that changed.
    pub(crate) fn set(&self, r: &ConfigRef, state: Lookup) -> Vec<ObjectRef<Pod>> {
        let mut inner = self.inner.lock().unwrap_or_else(|e| e.into_inner());
        let Some(e) = inner.objects.get_mut(r) else {
            return Vec::new();
        };
        e.state = state;
        let users: Vec<String> = e.users.iter().cloned().collect();
        users
            .iter()
            .filter_map(|u| inner.pods.get(u).map(|(k, _)| k.clone()))
            .collect()
    }
}
