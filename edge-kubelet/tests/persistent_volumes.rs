//! Per-replica persistent volumes against the real Docker engine and real loop-mounted ext4
//! filesystems: data outlives its pod and an edge restart, the size is a hard cap (ENOSPC in
//! the container), the storage offer counts volumes, and only a `VolumeSet` that leaves a
//! volume out (once no pod mounts it) deletes it.
//!
//! Needs root, losetup and mkfs.ext4 besides the engine; without root the tests say so and
//! pass outside CI, and fail under CI.

mod common;

use std::process::Command;
use std::sync::Arc;
use std::time::Duration;

use common::*;
use decloud_proto as pb;
use edge_kubelet::{
    DockerRuntime, ImagePolicy, ImageRules, OUT_OF_STORAGE, PERSISTENT_VOLUMES_DIR, PodSupervisor,
    PodUpdate, PodWorkerConfig, StateFile, VolumeStore,
};
use pb::container_state::State;

const PATIENCE: Duration = Duration::from_secs(30);
const MI: u64 = 1 << 20;

/// Deletes the test's volumes on drop (after the containers are gone: declared after the
/// container sweeper), so no mount or loop device outlives a test, passed or failed.
struct VolumeSweeper(VolumeStore);

impl Drop for VolumeSweeper {
    fn drop(&mut self) {
        for v in self.0.list().unwrap_or_default() {
            let _ = self.0.delete(&v.id);
        }
    }
}

struct Edge {
    node: String,
    pods: Arc<PodSupervisor>,
    store: VolumeStore,
    _sweeper: ContainerSweeper,
    _volumes: VolumeSweeper,
    state: tempfile::TempDir,
}

/// Whether the test can run (root for loop mounts); panics under CI when it cannot.
fn can_mount() -> bool {
    let is_root = std::fs::read_to_string("/proc/self/status")
        .unwrap()
        .lines()
        .any(|l| l.starts_with("Uid:") && l.split_whitespace().nth(1) == Some("0"));
    if !is_root {
        assert!(
            std::env::var_os("CI").is_none(),
            "persistent volume tests need root (loop mounts) under CI"
        );
        eprintln!("skipped outside CI: not root");
    }
    is_root
}

fn config(store: &VolumeStore, storage_offer: i64) -> PodWorkerConfig {
    PodWorkerConfig {
        persistent_volumes: Some(store.clone()),
        offered_storage_bytes: storage_offer,
        poll_interval: Duration::from_secs(1),
        ..PodWorkerConfig::default()
    }
}

async fn supervisor(
    node: &str,
    state: &std::path::Path,
    cfg: PodWorkerConfig,
) -> Arc<PodSupervisor> {
    let runtime = DockerRuntime::connect(node, "decloud")
        .await
        .expect("docker")
        .with_image_rules(ImageRules {
            lent: ImagePolicy::new(["decloud-test/*".to_string()]),
            ..Default::default()
        });
    PodSupervisor::start(Arc::new(runtime), Some(StateFile::new(state, node)), cfg)
        .await
        .expect("supervisor starts")
}

async fn edge(test: &str, storage_offer: i64) -> Edge {
    require_docker();
    let node = format!("edge-{}", unique_node(test));
    let state = tempfile::tempdir().unwrap();
    let store = VolumeStore::new(state.path().join(PERSISTENT_VOLUMES_DIR));
    let pods = supervisor(&node, state.path(), config(&store, storage_offer)).await;
    Edge {
        _sweeper: ContainerSweeper { node: node.clone() },
        _volumes: VolumeSweeper(store.clone()),
        node,
        pods,
        store,
        state,
    }
}

/// A pod sleeping with persistent volume `id` (`size` bytes) at /data, and at /sub its
/// `sub_path` when given.
fn pv_pod(uid: &str, image: &str, id: &str, size: u64, sub_path: Option<&str>) -> pb::PodSpec {
    let mut p = pod(uid, uid, image, &["sleep", "3600"]);
    p.volumes = vec![pb::Volume {
        name: "data".into(),
        source: Some(pb::volume::Source::Persistent(pb::PersistentVolume {
            id: id.into(),
            size_bytes: size,
            claim_name: format!("data-{uid}"),
        })),
    }];
    let c = &mut p.containers[0];
    c.volume_mounts = vec![pb::VolumeMount {
        name: "data".into(),
        mount_path: "/data".into(),
        ..Default::default()
    }];
    if let Some(sub) = sub_path {
        c.volume_mounts.push(pb::VolumeMount {
            name: "data".into(),
            mount_path: "/sub".into(),
            sub_path: sub.into(),
            read_only: false,
        });
    }
    p
}

async fn running(e: &Edge, uid: &str) -> String {
    let s = eventually(&format!("{uid} Running"), PATIENCE, async || {
        e.pods
            .board()
            .get(uid)
            .filter(|s| s.phase() == pb::PodPhase::Running)
    })
    .await;
    container_id(&s).expect("a container id")
}

/// Deletes pod `uid` and waits until the edge says it is gone.
async fn delete(e: &Edge, uid: &str) {
    let mut updates = e.pods.board().subscribe();
    e.pods.delete(uid, Some(Duration::ZERO));
    eventually(&format!("{uid} gone"), PATIENCE, async || {
        loop {
            match updates.try_recv() {
                Ok(PodUpdate::Gone(u)) if u == uid => return Some(()),
                Ok(_) => continue,
                Err(_) => return None,
            }
        }
    })
    .await;
}

/// `sh -c script` in container `id`: (exit success, stdout, stderr).
fn exec(id: &str, script: &str) -> (bool, String, String) {
    let out = Command::new("docker")
        .args(["exec", id, "sh", "-c", script])
        .output()
        .expect("docker exec");
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).trim().to_string(),
        String::from_utf8_lossy(&out.stderr).trim().to_string(),
    )
}

#[tokio::test]
async fn data_outlives_its_pod_the_size_is_a_hard_cap_and_a_volume_set_deletes_it() {
    if !can_mount() {
        return;
    }
    let image = test_image();
    let e = edge("pv", 0).await;
    let id = "wl1-data-0";
    e.pods
        .upsert(pv_pod("u-pv-a", &image, id, 32 * MI, None))
        .unwrap();
    let a = running(&e, "u-pv-a").await;
    let (ok, _, err) = exec(&a, "echo kept > /data/greeting");
    assert!(ok, "{err}");

    // Writing past the size fails with ENOSPC inside the container.
    let (ok, _, err) = exec(&a, "dd if=/dev/zero of=/data/fill bs=1M count=64");
    assert!(!ok, "64 MiB fit into a 32 MiB volume");
    assert!(err.contains("No space left on device"), "{err}");
    let (ok, _, err) = exec(&a, "rm /data/fill && df -k /data | tail -1");
    assert!(ok, "{err}");
    let held = e.store.list().unwrap();
    assert_eq!(held.len(), 1);
    assert_eq!((held[0].id.as_str(), held[0].size_bytes), (id, 32 * MI));
    assert!(held[0].mounted_at.is_some());

    // The pod goes; the volume and its data stay for the next pod of that identity.
    delete(&e, "u-pv-a").await;
    assert_eq!(
        e.store.list().unwrap().len(),
        1,
        "pod deletion keeps the volume"
    );
    e.pods
        .upsert(pv_pod("u-pv-b", &image, id, 32 * MI, Some("sub/dir")))
        .unwrap();
    let b = running(&e, "u-pv-b").await;
    let (ok, out, err) = exec(&b, "cat /data/greeting");
    assert!(ok, "{err}");
    assert_eq!(out, "kept");
    // The subPath was created inside the volume and is what /sub shows.
    let (ok, _, err) = exec(&b, "echo in-sub > /sub/f");
    assert!(ok, "{err}");
    let (_, out, _) = exec(&b, "cat /data/sub/dir/f");
    assert_eq!(out, "in-sub");

    // A set without it deletes nothing while a pod mounts it.
    let deleted = e.pods.apply_volume_set(Vec::new()).await.unwrap();
    assert!(deleted.is_empty(), "{deleted:?}");
    assert_eq!(e.store.list().unwrap().len(), 1);
    // A garbled set is refused whole.
    assert!(e.pods.apply_volume_set(vec!["../x".into()]).await.is_err());

    // Once the pod is gone, a set that keeps it keeps it, and one without it deletes it.
    delete(&e, "u-pv-b").await;
    let deleted = e.pods.apply_volume_set(vec![id.into()]).await.unwrap();
    assert!(deleted.is_empty(), "{deleted:?}");
    assert_eq!(e.store.list().unwrap().len(), 1);
    let mnt = e.store.root().join(id).join("mnt");
    let deleted = e
        .pods
        .apply_volume_set(vec!["other-data-0".into()])
        .await
        .unwrap();
    assert_eq!(deleted, vec![id.to_string()]);
    assert!(e.store.list().unwrap().is_empty());
    assert!(!mnt.exists(), "the volume's folder is gone");
    let mounts = std::fs::read_to_string("/proc/self/mountinfo").unwrap();
    assert!(
        !mounts.contains(&e.store.root().display().to_string()),
        "nothing of the store stays mounted"
    );
}

#[tokio::test]
async fn a_volume_left_out_while_in_use_goes_when_its_pod_does() {
    if !can_mount() {
        return;
    }
    let image = test_image();
    let e = edge("pvlater", 0).await;
    let id = "wl3-data-0";
    e.pods
        .upsert(pv_pod("u-pv-l", &image, id, 16 * MI, None))
        .unwrap();
    running(&e, "u-pv-l").await;
    // The operator no longer keeps it here (its replica moved) while the stale pod still runs:
    // nothing goes yet, and the operator sends that set only once.
    e.pods.submit_volume_set(Vec::new()).unwrap();
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(e.store.list().unwrap().len(), 1, "a mounted volume stays");
    // The pod goes: the last set applies to its volume, with no new set.
    delete(&e, "u-pv-l").await;
    eventually("the volume deleted", PATIENCE, async || {
        e.store.list().unwrap().is_empty().then_some(())
    })
    .await;
}

#[tokio::test]
async fn data_survives_an_edge_restart_even_when_the_machines_mount_went_away() {
    if !can_mount() {
        return;
    }
    let image = test_image();
    let e = edge("pvrestart", 0).await;
    let id = "wl2-data-0";
    e.pods
        .upsert(pv_pod("u-pv-r", &image, id, 16 * MI, None))
        .unwrap();
    let c = running(&e, "u-pv-r").await;
    let (ok, _, err) = exec(&c, "echo before > /data/f");
    assert!(ok, "{err}");

    // The edge stops (containers keep running) and the machine's mount is undone.
    let Edge {
        node,
        pods,
        store,
        _sweeper,
        _volumes,
        state,
    } = e;
    drop(pods);
    let mnt = store.root().join(id).join("mnt");
    let out = Command::new("umount").arg(&mnt).output().unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(!mnt.join("f").exists());

    let pods = supervisor(&node, state.path(), config(&store, 0)).await;
    let e = Edge {
        node,
        pods,
        store,
        _sweeper,
        _volumes,
        state,
    };
    let again = running(&e, "u-pv-r").await;
    assert_eq!(again, c, "the running container was re-adopted");
    // Mounted again, the same filesystem the container writes to.
    eventually("the volume mounted again", PATIENCE, async || {
        e.store.list().unwrap().first()?.mounted_at.clone()
    })
    .await;
    assert_eq!(std::fs::read_to_string(mnt.join("f")).unwrap(), "before\n");
    let (ok, _, err) = exec(&c, "echo after > /data/g");
    assert!(ok, "{err}");
    assert_eq!(std::fs::read_to_string(mnt.join("g")).unwrap(), "after\n");
}

#[tokio::test]
async fn volumes_count_against_the_storage_offer_and_bad_ones_fail_the_container() {
    if !can_mount() {
        return;
    }
    let image = test_image();
    let e = edge("pvoffer", (48 * MI) as i64).await;
    e.pods
        .upsert(pv_pod("u-pv-1", &image, "wl3-data-0", 32 * MI, None))
        .unwrap();
    running(&e, "u-pv-1").await;
    // A second 32 MiB volume does not fit a 48 MiB offer next to the first.
    e.pods
        .upsert(pv_pod("u-pv-2", &image, "wl3-data-1", 32 * MI, None))
        .unwrap();
    let s = e.pods.board().get("u-pv-2").expect("a status at once");
    assert_eq!(s.phase(), pb::PodPhase::Failed);
    assert_eq!(s.reason, OUT_OF_STORAGE);
    assert!(
        s.message
            .starts_with("Pod was rejected: Node didn't have enough resource: storage, "),
        "{}",
        s.message
    );
    assert!(containers_with_label("decloud.dev/pod-uid", "u-pv-2").is_empty());
    // The volume held already does not count twice.
    delete(&e, "u-pv-1").await;
    e.pods
        .upsert(pv_pod("u-pv-3", &image, "wl3-data-0", 32 * MI, None))
        .unwrap();
    running(&e, "u-pv-3").await;

    // An id the protocol forbids: the container is not created, with a clear reason.
    e.pods
        .upsert(pv_pod("u-pv-bad", &image, "Not_An_Id", 16 * MI, None))
        .unwrap();
    let s = eventually("CreateContainerConfigError", PATIENCE, async || {
        let s = e.pods.board().get("u-pv-bad")?;
        match s.containers.first()?.state.as_ref()?.state.as_ref()? {
            State::Waiting(w) if w.reason == "CreateContainerConfigError" => {
                Some(w.message.clone())
            }
            _ => None,
        }
    })
    .await;
    assert!(s.contains("persistent volume \"data-u-pv-bad\": id"), "{s}");
    assert_eq!(e.store.list().unwrap().len(), 1, "nothing made of a bad id");
}
