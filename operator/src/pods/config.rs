//! ConfigMaps and Secrets of pods on virtual nodes: read one by name, resolved into the
//! `PodConfig` that only the edge running the pod receives.
//!
//! The operator never lists or watches the cluster's Secrets or ConfigMaps: each object a
//! bound pod refers to gets its own watch, restricted to that one name
//! (`fieldSelector=metadata.name=<name>` in the pod's namespace), kept while some pod refers to
//! it and stopped with the last one. A change reaches the pods that use it at once, so the
//! files in their containers follow within seconds (kubelet takes up to a minute).
//!
//! What the objects hold is never logged, never part of a pod's spec or of its hash: it lives
//! in the [`ConfigSources`] cache and in the `PodConfig` messages sent to the pod's own edge.

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;

use decloud_crds::contracts::provider_of_node;
use decloud_proto as pb;
use futures::StreamExt;
use k8s_openapi::api::core::v1::{ConfigMap, Pod, Secret};
use kube::ResourceExt;
use kube::api::Api;
use kube::runtime::WatchStreamExt;
use kube::runtime::watcher::{self, Event};
use tracing::warn;

pub(crate) use super::config_sources::{ConfigRef, Kind, Lookup};
use super::translate::{self, is_config_ref};
use crate::context::Context;

/// Every distinct ConfigMap and Secret `pod` refers to (env, envFrom, volumes), sorted.
pub(crate) fn pod_refs(pod: &Pod) -> Vec<ConfigRef> {
    let namespace = pod.namespace().unwrap_or_default();
    let mut out = Vec::new();
    let mut push = |kind, name: Option<&str>| {
        if let Some(name) = name.filter(|n| !n.is_empty()) {
            out.push(ConfigRef {
                kind,
                namespace: namespace.clone(),
                name: name.to_string(),
            });
        }
    };
    let Some(spec) = &pod.spec else {
        return Vec::new();
    };
    for v in spec.volumes.iter().flatten() {
        if let Some(cm) = &v.config_map {
            push(Kind::ConfigMap, Some(cm.name.as_str()));
        }
        if let Some(s) = &v.secret {
            push(Kind::Secret, s.secret_name.as_deref());
        }
    }
    for s in spec.image_pull_secrets.iter().flatten() {
        push(Kind::Secret, Some(s.name.as_str()));
    }
    for c in &spec.containers {
        for f in c.env_from.iter().flatten() {
            if let Some(cm) = &f.config_map_ref {
                push(Kind::ConfigMap, Some(cm.name.as_str()));
            }
            if let Some(s) = &f.secret_ref {
                push(Kind::Secret, Some(s.name.as_str()));
            }
        }
        for e in c.env.iter().flatten() {
            let Some(from) = &e.value_from else { continue };
            if let Some(r) = &from.config_map_key_ref {
                push(Kind::ConfigMap, Some(r.name.as_str()));
            }
            if let Some(r) = &from.secret_key_ref {
                push(Kind::Secret, Some(r.name.as_str()));
            }
        }
    }
    out.sort();
    out.dedup();
    out
}

/// Why `pod`'s references cannot be served at all (too many objects); checked at admission.
pub(crate) fn refs_problem(pod: &Pod) -> Option<String> {
    let n = pod_refs(pod).len();
    (n > pb::MAX_POD_CONFIG_OBJECTS).then(|| {
        format!(
            "the pod refers to {n} ConfigMaps and Secrets; an edge takes at most {}",
            pb::MAX_POD_CONFIG_OBJECTS
        )
    })
}

/// Keys and values of a ConfigMap (`data` and `binaryData`).
fn config_map_data(cm: ConfigMap) -> BTreeMap<String, Vec<u8>> {
    let mut out: BTreeMap<String, Vec<u8>> = cm
        .data
        .unwrap_or_default()
        .into_iter()
        .map(|(k, v)| (k, v.into_bytes()))
        .collect();
    for (k, v) in cm.binary_data.unwrap_or_default() {
        out.insert(k, v.0);
    }
    out
}

fn secret_data(s: Secret) -> BTreeMap<String, Vec<u8>> {
    s.data
        .unwrap_or_default()
        .into_iter()
        .map(|(k, v)| (k, v.0))
        .collect()
}

fn state_of(data: BTreeMap<String, Vec<u8>>) -> Lookup {
    let size: usize = data.iter().map(|(k, v)| k.len() + v.len()).sum();
    if size > pb::MAX_CONFIG_OBJECT_BYTES {
        Lookup::TooLarge(size)
    } else {
        Lookup::Present(Arc::new(data))
    }
}

/// Watches the one object `r` (by name) until aborted, updating the cache and the pods that
/// use it.
async fn watch_one(ctx: Arc<Context>, r: ConfigRef) {
    let config = watcher::Config::default().fields(&format!("metadata.name={}", r.name));
    match r.kind {
        Kind::ConfigMap => {
            let api: Api<ConfigMap> = Api::namespaced(ctx.client.clone(), &r.namespace);
            follow(
                &ctx,
                &r,
                watcher::watcher(api, config).default_backoff(),
                config_map_data,
            )
            .await;
        }
        Kind::Secret => {
            let api: Api<Secret> = Api::namespaced(ctx.client.clone(), &r.namespace);
            follow(
                &ctx,
                &r,
                watcher::watcher(api, config).default_backoff(),
                secret_data,
            )
            .await;
        }
    }
}

async fn follow<K: kube::Resource + Clone>(
    ctx: &Arc<Context>,
    r: &ConfigRef,
    stream: impl futures::Stream<Item = watcher::Result<Event<K>>>,
    data: fn(K) -> BTreeMap<String, Vec<u8>>,
) {
    let mut stream = std::pin::pin!(stream);
    // During a (re)list: whether the object was seen.
    let mut seen = false;
    while let Some(event) = stream.next().await {
        let state = match event {
            Ok(Event::Init) => {
                seen = false;
                continue;
            }
            Ok(Event::InitApply(obj)) => {
                seen = true;
                state_of(data(obj))
            }
            Ok(Event::InitDone) if seen => continue,
            Ok(Event::InitDone) | Ok(Event::Delete(_)) => Lookup::Missing,
            Ok(Event::Apply(obj)) => state_of(data(obj)),
            Err(e) => {
                warn!(kind = r.kind.title(), namespace = %r.namespace, name = %r.name, error = %e, "watching a pod's configuration");
                continue;
            }
        };
        for pod in ctx.config_sources.set(r, state) {
            if let Some(pod) = ctx.pods.get(&pod) {
                push_config(ctx, &pod);
            }
        }
    }
}

/// Sends `pod`'s edge its current configuration, if it can be resolved yet.
pub(crate) fn push_config(ctx: &Context, pod: &Pod) {
    let node = pod.spec.as_ref().and_then(|s| s.node_name.as_deref());
    let Some(provider) = node.and_then(provider_of_node) else {
        return;
    };
    let Ok(spec) = translate::pod_spec(pod) else {
        return;
    };
    if let Some(config) = resolve(pod, &spec, |r| ctx.config_sources.lookup(r)) {
        ctx.registry
            .with_session(provider, |s| s.send_config(config));
    }
}

/// The configuration of `pod` (whose edge spec is `spec`) from what `lookup` knows; `None`
/// while some object it refers to was not read yet, or when it needs none.
pub(crate) fn resolve(
    pod: &Pod,
    spec: &pb::PodSpec,
    lookup: impl Fn(&ConfigRef) -> Lookup,
) -> Option<pb::PodConfig> {
    if !spec.needs_config {
        return None;
    }
    let namespace = pod.namespace().unwrap_or_default();
    let get = |kind, name: &str| {
        let r = ConfigRef {
            kind,
            namespace: namespace.clone(),
            name: name.to_string(),
        };
        match lookup(&r) {
            Lookup::Unknown => Err(()),
            Lookup::Missing => Ok(Err(format!("{} {:?} not found", kind.lower(), name))),
            Lookup::TooLarge(n) => Ok(Err(format!(
                "{} {:?} holds {n} bytes; an edge takes at most {}",
                kind.lower(),
                name,
                pb::MAX_CONFIG_OBJECT_BYTES
            ))),
            Lookup::Present(d) => Ok(Ok(d)),
        }
    };
    let pod_spec = pod.spec.as_ref()?;
    // Volumes first: a container mounting a volume that cannot be set up cannot start.
    let mut volumes = Vec::new();
    let mut volume_errors: HashMap<String, String> = HashMap::new();
    for v in pod_spec.volumes.iter().flatten() {
        let (kind, name, items, default_mode, optional) = if let Some(cm) = &v.config_map {
            (
                Kind::ConfigMap,
                cm.name.clone(),
                cm.items.clone(),
                cm.default_mode,
                cm.optional,
            )
        } else if let Some(s) = &v.secret {
            (
                Kind::Secret,
                s.secret_name.clone().unwrap_or_default(),
                s.items.clone(),
                s.default_mode,
                s.optional,
            )
        } else {
            continue;
        };
        let optional = optional.unwrap_or(false);
        let default_mode = default_mode.unwrap_or(0o644).clamp(0, 0o777) as u32;
        let mut files = Vec::new();
        let fail = |message: String| {
            format!(
                "MountVolume.SetUp failed for volume {:?} : {message}",
                v.name
            )
        };
        match get(kind, &name).ok()? {
            Err(_) if optional => {}
            Err(message) => {
                volume_errors.insert(v.name.clone(), fail(message));
            }
            Ok(data) => match items {
                None => {
                    for (k, value) in data.iter() {
                        if translate::relative_path_problem(k).is_none() {
                            files.push(pb::VolumeFile {
                                path: k.clone(),
                                data: value.clone(),
                                mode: default_mode,
                            });
                        }
                    }
                }
                Some(items) => {
                    for item in items {
                        match data.get(&item.key) {
                            Some(value) => files.push(pb::VolumeFile {
                                path: item.path.clone(),
                                data: value.clone(),
                                mode: item.mode.map_or(default_mode, |m| m.clamp(0, 0o777) as u32),
                            }),
                            None if optional => {}
                            None => {
                                volume_errors.insert(
                                    v.name.clone(),
                                    fail(format!(
                                        "{} references non-existent config key: {}",
                                        kind.lower(),
                                        item.key
                                    )),
                                );
                                break;
                            }
                        }
                    }
                }
            },
        }
        volumes.push(pb::VolumeFiles {
            name: v.name.clone(),
            files,
        });
    }
    // imagePullSecrets: those that exist, in order (a missing one is skipped, as by kubelet).
    let mut pull_secrets = Vec::new();
    for s in pod_spec.image_pull_secrets.iter().flatten() {
        if let Ok(data) = get(Kind::Secret, &s.name).ok()? {
            pull_secrets.push(data);
        }
    }
    let mut containers = Vec::new();
    for (c, edge) in pod_spec.containers.iter().zip(&spec.containers) {
        let mut env: Vec<pb::EnvVar> = Vec::new();
        let mut error = String::new();
        for from in c.env_from.iter().flatten() {
            let prefix = from.prefix.clone().unwrap_or_default();
            let (kind, name, optional) = if let Some(r) = &from.config_map_ref {
                (Kind::ConfigMap, r.name.clone(), r.optional)
            } else if let Some(r) = &from.secret_ref {
                (Kind::Secret, r.name.clone(), r.optional)
            } else {
                continue;
            };
            match get(kind, &name).ok()? {
                Err(_) if optional.unwrap_or(false) => {}
                Err(message) => {
                    error = message;
                    break;
                }
                Ok(data) => {
                    for (k, v) in data.iter() {
                        let name = format!("{prefix}{k}");
                        // kubelet skips keys that are not valid variable names.
                        if valid_env_name(&name) {
                            set_env(&mut env, name, String::from_utf8_lossy(v).into_owned());
                        }
                    }
                }
            }
        }
        let mut literal = edge.env.iter();
        for e in c.env.iter().flatten() {
            if !error.is_empty() {
                break;
            }
            if !is_config_ref(e) {
                if let Some(l) = literal.next() {
                    set_env(&mut env, l.name.clone(), l.value.clone());
                }
                continue;
            }
            let Some(from) = &e.value_from else { continue };
            let (kind, name, key, optional) = if let Some(r) = &from.config_map_key_ref {
                (Kind::ConfigMap, &r.name, &r.key, r.optional)
            } else if let Some(r) = &from.secret_key_ref {
                (Kind::Secret, &r.name, &r.key, r.optional)
            } else {
                continue;
            };
            let optional = optional.unwrap_or(false);
            match get(kind, name).ok()? {
                Err(_) if optional => {}
                Err(message) => error = message,
                Ok(data) => match data.get(key) {
                    Some(v) => set_env(
                        &mut env,
                        e.name.clone(),
                        String::from_utf8_lossy(v).into_owned(),
                    ),
                    None if optional => {}
                    None => {
                        error = format!(
                            "couldn't find key {key} in {} {namespace}/{name}",
                            kind.title()
                        );
                    }
                },
            }
        }
        if error.is_empty()
            && let Some(m) = edge
                .volume_mounts
                .iter()
                .find_map(|m| volume_errors.get(&m.name))
        {
            error = m.clone();
        }
        if error.is_empty() && env.len() > pb::MAX_POD_CONFIG_ENTRIES {
            error = format!(
                "{} environment variables; an edge takes at most {}",
                env.len(),
                pb::MAX_POD_CONFIG_ENTRIES
            );
        }
        if !error.is_empty() {
            env.clear();
        }
        containers.push(pb::ContainerConfig {
            name: c.name.clone(),
            env,
            error,
            pull_auth: super::pull_secrets::credential_for(&edge.image, &pull_secrets),
        });
    }
    let mut config = pb::PodConfig {
        pod_uid: spec.uid.clone(),
        containers,
        volumes,
    };
    let files: usize = config.volumes.iter().map(|v| v.files.len()).sum();
    let bytes = prost::Message::encoded_len(&config);
    let too_much = if files > pb::MAX_POD_CONFIG_ENTRIES {
        Some(format!(
            "the pod's volumes hold {files} files; an edge takes at most {}",
            pb::MAX_POD_CONFIG_ENTRIES
        ))
    } else if bytes > pb::MAX_POD_CONFIG_BYTES {
        Some(format!(
            "the pod's ConfigMaps and Secrets come to {bytes} bytes; an edge takes at most {}",
            pb::MAX_POD_CONFIG_BYTES
        ))
    } else {
        None
    };
    if let Some(message) = too_much {
        config.volumes.iter_mut().for_each(|v| v.files.clear());
        for c in &mut config.containers {
            c.env.clear();
            c.pull_auth = None;
            c.error = message.clone();
        }
    }
    Some(config)
}

/// Sets `name` (a later definition replaces an earlier one, as in kubelet).
fn set_env(env: &mut Vec<pb::EnvVar>, name: String, value: String) {
    match env.iter_mut().find(|e| e.name == name) {
        Some(e) => e.value = value,
        None => env.push(pb::EnvVar { name, value }),
    }
}

/// A C identifier-ish name as Kubernetes accepts for env vars (`[-._a-zA-Z][-._a-zA-Z0-9]*`).
fn valid_env_name(name: &str) -> bool {
    let mut chars = name.chars();
    chars
        .next()
        .is_some_and(|c| c.is_ascii_alphabetic() || "-._".contains(c))
        && chars.all(|c| c.is_ascii_alphanumeric() || "-._".contains(c))
}

/// `pod` refers to `refs` now (empty: it is gone): starts the watches it needs (each of one
/// object, by name) and stops those no pod needs any more.
pub(crate) fn track(ctx: &Arc<Context>, pod: &Pod, refs: Vec<ConfigRef>) {
    ctx.config_sources.track(pod, refs, |r| {
        tokio::spawn(watch_one(ctx.clone(), r)).abort_handle()
    });
}

#[cfg(test)]
mod tests;
