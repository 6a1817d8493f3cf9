//! The images edge-kubelet pulled for DeCloud pods, by reference and image id, kept in the
//! state folder (`pulled-images.json`). Only these (and what the volunteer lends with
//! `--lend-local-image`) are ever reused for a tenant under `IfNotPresent` or `Never`: an
//! image the volunteer has on the machine for their own use is never handed to a stranger,
//! and a tag retagged locally after the pull (another id) counts as not pulled.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use parking_lot::Mutex;

use super::policy::normalise;

/// File name of the ledger in the state folder.
pub(crate) const FILE: &str = "pulled-images.json";
/// Most references remembered; the oldest entries beyond go (they are pulled again).
const MAX_ENTRIES: usize = 4096;

/// Reference → image id of every pull.
#[derive(Debug, Default)]
pub struct PulledImages {
    path: Option<PathBuf>,
    by_ref: Mutex<BTreeMap<String, String>>,
}

impl PulledImages {
    /// The ledger in `state_dir` (loaded if present; unreadable starts empty), or in memory
    /// only with `None`.
    pub fn open(state_dir: Option<&Path>) -> Self {
        let path = state_dir.map(|d| d.join(FILE));
        let by_ref = path
            .as_ref()
            .and_then(|p| std::fs::read(p).ok())
            .and_then(|b| serde_json::from_slice::<BTreeMap<String, String>>(&b).ok())
            .unwrap_or_default();
        Self {
            path,
            by_ref: Mutex::new(by_ref),
        }
    }

    /// Whether `image` was pulled here and still has the id it had then.
    pub(crate) fn is_ours(&self, image: &str, id: &str) -> bool {
        self.by_ref
            .lock()
            .get(&normalise(image))
            .is_some_and(|i| i == id)
    }

    /// Remembers a pull.
    pub(crate) fn record(&self, image: &str, id: &str) {
        let snapshot = {
            let mut m = self.by_ref.lock();
            m.insert(normalise(image), id.to_string());
            while m.len() > MAX_ENTRIES {
                let Some(k) = m.keys().next().cloned() else {
                    break;
                };
                m.remove(&k);
            }
            m.clone()
        };
        let Some(path) = &self.path else { return };
        let tmp = path.with_extension("json.tmp");
        let written = serde_json::to_vec_pretty(&snapshot)
            .map_err(std::io::Error::other)
            .and_then(|b| std::fs::write(&tmp, b))
            .and_then(|()| std::fs::rename(&tmp, path));
        if let Err(e) = written {
            tracing::warn!(path = %path.display(), error = %e, "cannot save the pulled-images ledger");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn remembers_by_normalised_reference_and_id_across_restarts() {
        let dir = tempfile::tempdir().unwrap();
        let l = PulledImages::open(Some(dir.path()));
        assert!(!l.is_ours("busybox", "sha256:a"));
        l.record("busybox", "sha256:a");
        assert!(l.is_ours("docker.io/library/busybox:latest", "sha256:a"));
        assert!(!l.is_ours("busybox", "sha256:b"), "retagged locally");
        let again = PulledImages::open(Some(dir.path()));
        assert!(again.is_ours("busybox:latest", "sha256:a"));
        assert!(!PulledImages::open(None).is_ours("busybox", "sha256:a"));
    }
}
