//! Per-replica persistent volumes on the pod side: what a pod's `persistent` volumes ask for
//! (checked), how they count against the `--storage` offer at admission, how they become bind
//! mounts (through the edge's [`VolumeStore`]), and which held volumes a `VolumeSet` lets go.
//!
//! A persistent volume outlives its pods: container restarts and pod deletion leave it (and
//! its mount) alone, so the next pod of the same replica identity finds its data. Only a
//! `VolumeSet` from the operator that leaves it out, once no pod here mounts it, deletes it.

use std::collections::{BTreeMap, BTreeSet};

use decloud_proto as pb;

use crate::host::VolumeStore;
use crate::runtime::BindMount;

/// Pod-level reason of a pod whose persistent volumes do not fit the edge's storage offer
/// next to the volumes it holds and the pods' ephemeral-storage requests (kubelet's
/// `OutOf<resource>` form; the resource is the `--storage` offer both share).
pub const OUT_OF_STORAGE: &str = "OutOfstorage";

/// Why this edge cannot mount persistent volumes at all (no store configured).
pub(crate) const NO_VOLUME_STORE: &str = "this edge keeps no persistent volumes";

/// One persistent volume mount of a container, checked, still to be ensured on disk.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct PersistentMount {
    /// The volume's id (its folder in the store).
    pub(crate) id: String,
    /// Its size in bytes.
    pub(crate) size_bytes: u64,
    /// The claim's name, for messages.
    pub(crate) claim_name: String,
    /// Relative path inside the volume (empty: the whole volume).
    pub(crate) sub_path: String,
    /// Where it appears in the container.
    pub(crate) target: String,
    /// Mounted read-only.
    pub(crate) read_only: bool,
}

/// Checks volume `p` (id and size) as the protocol bounds it: `Err` with the message the
/// container's `CreateContainerConfigError` carries.
pub(crate) fn check_volume(p: &pb::PersistentVolume) -> Result<(), String> {
    let claim = if p.claim_name.is_empty() {
        p.id.as_str()
    } else {
        p.claim_name.as_str()
    };
    if !pb::valid_volume_id(&p.id) {
        return Err(format!(
            "persistent volume {claim:?}: id {:?} is not 1..={} bytes of [a-z0-9-] not starting with '-'",
            p.id.chars()
                .take(pb::MAX_VOLUME_ID_BYTES)
                .collect::<String>(),
            pb::MAX_VOLUME_ID_BYTES
        ));
    }
    if !(pb::MIN_VOLUME_BYTES..=pb::MAX_VOLUME_BYTES).contains(&p.size_bytes) {
        return Err(format!(
            "persistent volume {claim:?}: size {} bytes is outside {}..={}",
            p.size_bytes,
            pb::MIN_VOLUME_BYTES,
            pb::MAX_VOLUME_BYTES
        ));
    }
    Ok(())
}

/// Checks a mount's `subPath` inside a persistent volume: relative, without `..`, `.` or
/// empty parts (the same rule as the other volumes' subPaths).
pub(crate) fn check_sub_path(claim: &str, sub_path: &str) -> Result<(), String> {
    match super::config_volumes::path_problem(sub_path) {
        Some(problem) => Err(format!(
            "persistent volume {claim:?}: subPath {sub_path:?} {problem}"
        )),
        None => Ok(()),
    }
}

/// The well-formed persistent volumes `spec` uses, by id (the largest size when one is listed
/// twice). Malformed ones are never made (their containers fail), so they hold nothing.
pub(crate) fn pod_volumes(spec: &pb::PodSpec) -> BTreeMap<String, u64> {
    let mut out = BTreeMap::new();
    for v in &spec.volumes {
        if let Some(pb::volume::Source::Persistent(p)) = &v.source
            && check_volume(p).is_ok()
        {
            let size = out.entry(p.id.clone()).or_insert(0u64);
            *size = (*size).max(p.size_bytes);
        }
    }
    out
}

/// Ensures each of `mounts`' volumes in `store` (mounted; created or grown as needed) and
/// returns the bind mounts, subPaths created inside the volume when missing. Blocking: run it
/// off the async threads.
pub(crate) fn resolve(
    store: &VolumeStore,
    mounts: &[PersistentMount],
) -> Result<Vec<BindMount>, String> {
    let mut out = Vec::with_capacity(mounts.len());
    for m in mounts {
        let root = store
            .ensure(&m.id, m.size_bytes)
            .map_err(|e| format!("persistent volume {:?}: {e}", m.claim_name))?;
        let source = if m.sub_path.is_empty() {
            root
        } else {
            super::config_volumes::empty_sub_path(&root, &m.sub_path)
                .map_err(|e| format!("persistent volume {:?}: {e}", m.claim_name))?
        };
        out.push(BindMount {
            source: source.display().to_string(),
            target: m.target.clone(),
            read_only: m.read_only,
        });
    }
    Ok(out)
}

/// Checks a `VolumeSet`: at most [`pb::MAX_HELD_VOLUMES`] ids, each well formed. A set that
/// fails is ignored as a whole (deleting on a garbled set could lose data).
pub(crate) fn check_volume_set(ids: &[String]) -> Result<(), String> {
    if ids.len() > pb::MAX_HELD_VOLUMES {
        return Err(format!(
            "a volume set of {} ids (at most {})",
            ids.len(),
            pb::MAX_HELD_VOLUMES
        ));
    }
    if let Some(bad) = ids.iter().find(|id| !pb::valid_volume_id(id)) {
        return Err(format!(
            "a volume set with the invalid id {:?}",
            bad.chars()
                .take(pb::MAX_VOLUME_ID_BYTES)
                .collect::<String>()
        ));
    }
    Ok(())
}

/// The held volumes a `VolumeSet` lets go: those not in `keep` that no pod here mounts
/// (`in_use`: volumes of the pods the edge runs, is creating or is terminating).
pub(crate) fn volumes_to_delete(
    held: &[String],
    keep: &BTreeSet<String>,
    in_use: &BTreeSet<String>,
) -> Vec<String> {
    held.iter()
        .filter(|id| !keep.contains(*id) && !in_use.contains(*id))
        .cloned()
        .collect()
}

/// Why a pod's persistent volumes cannot be admitted, as kubelet words a misfit: (reason,
/// message), `None` when they fit (or the pod brings no new bytes).
///
/// `wanted`: the pod's volumes (id → size); `held`: the volumes on this edge or reserved by
/// admitted pods (id → size); `ephemeral_request`: the pod's ephemeral-storage requests;
/// `ephemeral_used`: the admitted pods' ones; `offer`: the `--storage` offer (0: no limit).
/// Only what is new counts: a held volume costs nothing more, a larger size its growth. The
/// count of held volumes is bounded by [`pb::MAX_HELD_VOLUMES`] whatever the offer.
pub(crate) fn volume_misfit(
    wanted: &BTreeMap<String, u64>,
    held: &BTreeMap<String, u64>,
    ephemeral_request: i64,
    ephemeral_used: i64,
    offer: i64,
) -> Option<(&'static str, String)> {
    let mut new_ids = Vec::new();
    let mut new_bytes = 0i64;
    for (id, size) in wanted {
        let have = held.get(id).copied().unwrap_or(0);
        if *size > have {
            new_ids.push(id.as_str());
            new_bytes = new_bytes.saturating_add(i64::try_from(size - have).unwrap_or(i64::MAX));
        }
    }
    if new_ids.is_empty() {
        return None;
    }
    let unheld = wanted.keys().filter(|id| !held.contains_key(*id)).count();
    if held.len().saturating_add(unheld) > pb::MAX_HELD_VOLUMES {
        return Some((
            OUT_OF_STORAGE,
            format!(
                "Pod was rejected: Node didn't have enough resource: persistent volumes, requested: {unheld}, used: {}, capacity: {}",
                held.len(),
                pb::MAX_HELD_VOLUMES
            ),
        ));
    }
    if offer <= 0 {
        return None;
    }
    let held_bytes = held.values().fold(0i64, |a, s| {
        a.saturating_add(i64::try_from(*s).unwrap_or(i64::MAX))
    });
    let requested = new_bytes.saturating_add(ephemeral_request.max(0));
    let used = held_bytes.saturating_add(ephemeral_used.max(0));
    if requested.saturating_add(used) > offer {
        return Some((
            OUT_OF_STORAGE,
            format!(
                "Pod was rejected: Node didn't have enough resource: storage, requested: {requested} \
                 (new persistent volumes {new_bytes}: {}; ephemeral-storage {}), used: {used} \
                 (persistent volumes held {held_bytes}; ephemeral-storage {}), capacity: {offer}",
                new_ids.join(", "),
                ephemeral_request.max(0),
                ephemeral_used.max(0),
            ),
        ));
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    const MI: u64 = 1 << 20;

    fn set(ids: &[&str]) -> BTreeSet<String> {
        ids.iter().map(|s| s.to_string()).collect()
    }

    fn held(v: &[(&str, u64)]) -> BTreeMap<String, u64> {
        v.iter().map(|(id, s)| (id.to_string(), *s)).collect()
    }

    #[test]
    fn a_volume_set_deletes_only_what_it_leaves_out_and_no_pod_mounts() {
        let on_disk: Vec<String> = ["a", "b", "c", "d"].map(String::from).to_vec();
        // (keep, in use, deleted)
        let table: &[(&[&str], &[&str], &[&str])] = &[
            (&["a", "b", "c", "d"], &[], &[]),
            (&["a", "b"], &[], &["c", "d"]),
            (&["a", "b"], &["c"], &["d"]),
            (&[], &["a", "b", "c", "d"], &[]),
            (&[], &[], &["a", "b", "c", "d"]),
            // Ids the edge does not hold change nothing.
            (&["x", "a"], &["y"], &["b", "c", "d"]),
        ];
        for (keep, in_use, want) in table {
            let got = volumes_to_delete(&on_disk, &set(keep), &set(in_use));
            assert_eq!(got, want.to_vec(), "keep {keep:?} in use {in_use:?}");
        }
    }

    #[test]
    fn garbled_or_oversized_volume_sets_are_refused() {
        assert!(check_volume_set(&[]).is_ok());
        assert!(check_volume_set(&["uid-data-0".into()]).is_ok());
        for bad in ["", "-x", "A", "a/b", "..", "a.b"] {
            let err = check_volume_set(&["ok".into(), bad.into()]).unwrap_err();
            assert!(err.contains("invalid id"), "{bad:?}: {err}");
        }
        let many: Vec<String> = (0..=pb::MAX_HELD_VOLUMES)
            .map(|i| format!("v{i}"))
            .collect();
        assert!(check_volume_set(&many).unwrap_err().contains("at most"));
        assert!(check_volume_set(&many[1..]).is_ok());
    }

    #[test]
    fn volumes_are_checked_with_the_protocol_bounds() {
        let v = |id: &str, size: u64| pb::PersistentVolume {
            id: id.into(),
            size_bytes: size,
            claim_name: "data-db-0".into(),
        };
        assert!(check_volume(&v("u-data-0", 16 * MI)).is_ok());
        for (id, size, word) in [
            ("", 16 * MI, "id"),
            ("../x", 16 * MI, "id"),
            ("u.data", 16 * MI, "id"),
            ("u-data-0", 16 * MI - 1, "outside"),
            ("u-data-0", 0, "outside"),
            ("u-data-0", pb::MAX_VOLUME_BYTES + 1, "outside"),
        ] {
            let err = check_volume(&v(id, size)).unwrap_err();
            assert!(
                err.contains(word) && err.contains("\"data-db-0\""),
                "{id:?} {size}: {err}"
            );
        }
    }

    #[test]
    fn sub_paths_that_leave_the_volume_are_refused() {
        for bad in ["/abs", "..", "../x", "a/../../x", "a//b", "./a", ""] {
            let err = check_sub_path("data", bad).unwrap_err();
            assert!(err.contains("subPath"), "{bad:?}: {err}");
        }
        for good in ["pgdata", "a/b/c", "x..y"] {
            assert!(check_sub_path("data", good).is_ok(), "{good:?}");
        }
    }

    #[test]
    fn storage_admission_counts_new_volume_bytes_once() {
        let offer = (256 * MI) as i64;
        // (pod's volumes, held, pod's ephemeral request, admitted ephemeral requests, refused)
        type Row = (
            &'static [(&'static str, u64)],
            &'static [(&'static str, u64)],
            i64,
            i64,
            bool,
        );
        let table: &[Row] = &[
            (&[("a", 128 * MI)], &[], 0, 0, false),
            (&[("a", 256 * MI)], &[], 0, 0, false),
            (&[("a", 256 * MI)], &[], 1, 0, true),
            (&[("a", 128 * MI)], &[("b", 128 * MI)], 0, 0, false),
            (&[("a", 128 * MI)], &[("b", 128 * MI)], 0, 1, true),
            (&[("a", 128 * MI)], &[("b", 200 * MI)], 0, 0, true),
            // Held already: it does not count twice, whatever else is used.
            (
                &[("a", 200 * MI)],
                &[("a", 200 * MI), ("b", 56 * MI)],
                0,
                0,
                false,
            ),
            (
                &[("a", 200 * MI)],
                &[("a", 200 * MI)],
                0,
                (100 * MI) as i64,
                false,
            ),
            // Growth counts by what it adds.
            (
                &[("a", 200 * MI)],
                &[("a", 100 * MI), ("b", 56 * MI)],
                0,
                0,
                false,
            ),
            (
                &[("a", 201 * MI)],
                &[("a", 100 * MI), ("b", 56 * MI)],
                0,
                0,
                true,
            ),
            // Two mounts of one volume: one volume.
            (&[("a", 128 * MI), ("b", 128 * MI)], &[], 0, 0, false),
            (
                &[("a", u64::MAX)],
                &[("b", u64::MAX)],
                i64::MAX,
                i64::MAX,
                true,
            ),
        ];
        for (wanted, h, req, used, refused) in table {
            let got = volume_misfit(&held(wanted), &held(h), *req, *used, offer);
            assert_eq!(
                got.as_ref().map(|g| g.0),
                refused.then_some(OUT_OF_STORAGE),
                "{wanted:?} {h:?} {req} {used}: {got:?}"
            );
        }
        assert!(
            volume_misfit(&held(&[("a", u64::MAX)]), &held(&[]), 0, 0, 0).is_none(),
            "no offer, no limit on bytes"
        );
        let (_, msg) = volume_misfit(
            &held(&[("a", 128 * MI)]),
            &held(&[("b", 200 * MI)]),
            5,
            7,
            offer,
        )
        .unwrap();
        assert_eq!(
            msg,
            "Pod was rejected: Node didn't have enough resource: storage, requested: 134217733 \
             (new persistent volumes 134217728: a; ephemeral-storage 5), used: 209715207 \
             (persistent volumes held 209715200; ephemeral-storage 7), capacity: 268435456"
        );
    }

    #[test]
    fn the_count_of_held_volumes_is_bounded() {
        let many: BTreeMap<String, u64> = (0..pb::MAX_HELD_VOLUMES)
            .map(|i| (format!("v{i}"), 16 * MI))
            .collect();
        let got = volume_misfit(&held(&[("new", 16 * MI)]), &many, 0, 0, 0).unwrap();
        assert_eq!(got.0, OUT_OF_STORAGE);
        assert!(got.1.contains("persistent volumes"), "{}", got.1);
        assert!(volume_misfit(&held(&[("v1", 16 * MI)]), &many, 0, 0, 0).is_none());
    }

    #[test]
    fn a_pod_volume_listed_twice_is_one_volume_of_its_largest_size_and_bad_ones_none() {
        let vol = |name: &str, id: &str, size: u64| pb::Volume {
            name: name.into(),
            source: Some(pb::volume::Source::Persistent(pb::PersistentVolume {
                id: id.into(),
                size_bytes: size,
                claim_name: name.into(),
            })),
        };
        let spec = pb::PodSpec {
            volumes: vec![
                vol("a", "x", 16 * MI),
                vol("b", "x", 32 * MI),
                vol("c", "y", 16 * MI),
                vol("d", "Bad", 16 * MI),
                vol("e", "z", 1),
            ],
            ..Default::default()
        };
        assert_eq!(pod_volumes(&spec), held(&[("x", 32 * MI), ("y", 16 * MI)]));
    }
}
