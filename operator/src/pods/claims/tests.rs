use std::sync::Arc;

use decloud_crds::persistence::{PersistentReplica, VolumeClaimTemplate};
use decloud_crds::{Container, PodSpec, PodTemplate, Workload, WorkloadSpec, WorkloadStatus};
use k8s_openapi::api::core::v1::Pod;
use kube::runtime::reflector::{self, Store};
use kube::runtime::watcher::Event;
use serde_json::json;

use super::*;

const UID: &str = "0f8fad5b-d9cb-469f-a165-70867728950e";

fn workload(bound: &[(&str, &str)]) -> Workload {
    let mut w = Workload::new(
        "redis",
        WorkloadSpec {
            replicas: 2,
            template: PodTemplate {
                metadata: None,
                spec: PodSpec {
                    containers: vec![Container {
                        name: "redis".into(),
                        image: "redis:7".into(),
                        ..Default::default()
                    }],
                    ..Default::default()
                },
            },
            placement: None,
            expose: None,
            failover: None,
            service_access: None,
            volume_claim_templates: vec![VolumeClaimTemplate::new("data", "64Mi")],
            persistence: None,
        },
    );
    w.metadata.namespace = Some("tenant-a".into());
    w.metadata.uid = Some(UID.into());
    w.status = Some(WorkloadStatus {
        persistent_replicas: bound
            .iter()
            .map(|(name, provider)| PersistentReplica {
                name: (*name).into(),
                provider: (*provider).into(),
                state: "Running".into(),
                message: String::new(),
            })
            .collect(),
        ..Default::default()
    });
    w
}

/// A store holding `workloads`, complete (its initial list done) unless `ready` is false.
fn store(workloads: Vec<Workload>, ready: bool) -> Store<Workload> {
    let (store, mut writer) = reflector::store();
    writer.apply_watcher_event(&Event::Init);
    for w in workloads {
        writer.apply_watcher_event(&Event::InitApply(w));
    }
    if ready {
        writer.apply_watcher_event(&Event::InitDone);
    }
    // The writer may go: the store keeps what it was given.
    std::mem::forget(writer);
    store
}

fn pod(name: &str, ns: &str, owner_uid: Option<&str>, claim: &str, node: &str) -> Pod {
    let mut p: Pod = serde_json::from_value(json!({
        "metadata": {"name": name, "namespace": ns, "uid": "pod-uid"},
        "spec": {
            "nodeName": node,
            "containers": [{"name": "redis", "image": "redis:7",
                            "volumeMounts": [{"name": "data", "mountPath": "/data"}]}],
            "volumes": [{"name": "data", "persistentVolumeClaim": {"claimName": claim}}],
        },
    }))
    .unwrap();
    if let Some(uid) = owner_uid {
        p.metadata.owner_references = Some(vec![
            serde_json::from_value(json!({
                "apiVersion": "decloud.dev/v1alpha1", "kind": "Workload", "name": "redis",
                "uid": uid, "controller": true,
            }))
            .unwrap(),
        ]);
    }
    p
}

fn bound(p: &Pod, workloads: Option<&Store<Workload>>) -> (Binding, pb::PodSpec) {
    let mut spec = super::super::translate::pod_spec(p).unwrap();
    (bind(&mut spec, p, workloads), spec)
}

fn persistent(spec: &pb::PodSpec) -> pb::PersistentVolume {
    match &spec.volumes[0].source {
        Some(pb::volume::Source::Persistent(p)) => p.clone(),
        other => panic!("not a persistent volume: {other:?}"),
    }
}

#[test]
fn a_replica_gets_its_workloads_volume() {
    let s = store(vec![workload(&[])], true);
    let p = pod(
        "redis-1",
        "tenant-a",
        Some(UID),
        "data-redis-1",
        "edge-alice",
    );
    let (binding, spec) = bound(&p, Some(&s));
    assert_eq!(binding, Binding::Bound);
    let v = persistent(&spec);
    assert_eq!(v.id, format!("{UID}-data-1"));
    assert_eq!(v.size_bytes, 64 << 20);
    assert_eq!(v.claim_name, "data-redis-1");
}

#[test]
fn forged_claims_are_refused() {
    let s = store(vec![workload(&[])], true);
    let cases = [
        // No Workload as controller: a plain pod naming a claim.
        (
            pod("redis-0", "tenant-a", None, "data-redis-0", "edge-a"),
            "no Workload",
        ),
        // Another Workload's uid (one deleted and created again, or made up).
        (
            pod(
                "redis-0",
                "tenant-a",
                Some("1111"),
                "data-redis-0",
                "edge-a",
            ),
            "not that Workload's",
        ),
        // Not a replica identity.
        (
            pod("redis-x", "tenant-a", Some(UID), "data-redis-x", "edge-a"),
            "not a replica identity",
        ),
        // Another replica's claim.
        (
            pod("redis-0", "tenant-a", Some(UID), "data-redis-1", "edge-a"),
            "none of Workload",
        ),
    ];
    for (p, want) in cases {
        match bound(&p, Some(&s)).0 {
            Binding::Refused(why) => assert!(why.contains(want), "{why} lacks {want:?}"),
            other => panic!("{:?}: {other:?}", p.metadata.name),
        }
    }
    // Another namespace's pod naming this Workload (uid and all) does not find it.
    let other_ns = pod("redis-0", "tenant-b", Some(UID), "data-redis-0", "edge-a");
    assert!(matches!(bound(&other_ns, Some(&s)).0, Binding::NotYet(_)));
}

#[test]
fn nothing_is_bound_before_the_cache_is_complete() {
    let p = pod("redis-0", "tenant-a", Some(UID), "data-redis-0", "edge-a");
    let not_ready = store(vec![workload(&[])], false);
    assert!(matches!(bound(&p, Some(&not_ready)).0, Binding::NotYet(_)));
    assert!(matches!(bound(&p, None).0, Binding::NotYet(_)));
    assert_eq!(volume_sets(Some(&not_ready), &[]), None);
    assert_eq!(volume_sets(None, &[]), None);
}

#[test]
fn each_edge_keeps_its_replicas_volumes() {
    // redis-0 bound to alice in status; redis-1's pod on bob before its status is written.
    let s = store(vec![workload(&[("redis-0", "alice")])], true);
    let pods = vec![Arc::new(pod(
        "redis-1",
        "tenant-a",
        Some(UID),
        "data-redis-1",
        "edge-bob",
    ))];
    let sets = volume_sets(Some(&s), &pods).unwrap();
    assert_eq!(sets.get("alice"), Some(&vec![format!("{UID}-data-0")]));
    assert_eq!(sets.get("bob"), Some(&vec![format!("{UID}-data-1")]));
    assert_eq!(sets.get("carol"), None);
    // The Workload gone (deleted): no edge keeps its volumes.
    let gone = store(Vec::new(), true);
    assert!(volume_sets(Some(&gone), &pods).unwrap().is_empty());
}
