//! The assigned pod set, kept on disk so an edge restart without the operator changes nothing.
//!
//! A small JSON file (`<state-dir>/assigned-pods.json`): readable metadata per pod plus the
//! pod spec itself as hex-encoded protobuf, so the file never drifts from the protocol's types.
//! Written atomically (temporary file + rename).

use std::path::{Path, PathBuf};

use prost::Message;
use serde::{Deserialize, Serialize};

use decloud_proto as pb;

use crate::error::{Error, Result};

const FILE_NAME: &str = "assigned-pods.json";
/// Pods evicted for their storage use (uid → kubelet's message), kept so that a restarted
/// edge does not start them again.
const EVICTED_FILE_NAME: &str = "evicted-pods.json";
/// Most evictions remembered (one per assigned pod at most; the file is bounded regardless).
const MAX_EVICTED: usize = 10_000;
const VERSION: u32 = 1;

#[derive(Debug, Serialize, Deserialize)]
struct Contents {
    version: u32,
    node: String,
    pods: Vec<StoredPod>,
}

#[derive(Debug, Serialize, Deserialize)]
struct StoredPod {
    uid: String,
    namespace: String,
    name: String,
    spec_hash: String,
    /// `decloud.edge.v1.PodSpec`, protobuf, hex.
    spec: String,
}

/// The state file of one edge.
#[derive(Debug, Clone)]
pub struct StateFile {
    path: PathBuf,
    node: String,
}

impl StateFile {
    /// The state file inside `dir` for node `node`.
    pub fn new(dir: &Path, node: &str) -> Self {
        StateFile {
            path: dir.join(FILE_NAME),
            node: node.to_string(),
        }
    }

    /// Where the file lives.
    pub(crate) fn path(&self) -> &Path {
        &self.path
    }

    fn err(&self, message: impl std::fmt::Display) -> Error {
        Error::StateFile {
            path: self.path.display().to_string(),
            message: message.to_string(),
        }
    }

    /// The saved assigned set; empty when there is no file yet.
    pub(crate) fn load(&self) -> Result<Vec<pb::PodSpec>> {
        let text = match std::fs::read_to_string(&self.path) {
            Ok(t) => t,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
            Err(e) => return Err(self.err(e)),
        };
        let contents: Contents = serde_json::from_str(&text).map_err(|e| self.err(e))?;
        if contents.version != VERSION {
            return Err(self.err(format!("unknown version {}", contents.version)));
        }
        if contents.node != self.node {
            return Err(self.err(format!(
                "belongs to node {:?}, not {:?}; use another --state-dir",
                contents.node, self.node
            )));
        }
        contents
            .pods
            .iter()
            .map(|p| {
                let bytes = hex::decode(&p.spec).map_err(|_| self.err("spec is not hex"))?;
                pb::PodSpec::decode(bytes.as_slice()).map_err(|e| self.err(e))
            })
            .collect()
    }

    fn evicted_path(&self) -> PathBuf {
        self.path.with_file_name(EVICTED_FILE_NAME)
    }

    /// The pods evicted here (uid → message); empty when there is no file. At most
    /// [`MAX_EVICTED`] entries are read.
    pub(crate) fn load_evicted(&self) -> Result<std::collections::BTreeMap<String, String>> {
        let text = match std::fs::read_to_string(self.evicted_path()) {
            Ok(t) => t,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Default::default()),
            Err(e) => return Err(self.err(e)),
        };
        let all: std::collections::BTreeMap<String, String> =
            serde_json::from_str(&text).map_err(|e| self.err(e))?;
        Ok(all.into_iter().take(MAX_EVICTED).collect())
    }

    /// Replaces the saved evictions with `evicted` (at most [`MAX_EVICTED`]).
    pub(crate) fn save_evicted(
        &self,
        evicted: &std::collections::BTreeMap<String, String>,
    ) -> Result<()> {
        let kept: std::collections::BTreeMap<&String, &String> =
            evicted.iter().take(MAX_EVICTED).collect();
        let json = serde_json::to_vec_pretty(&kept).map_err(|e| self.err(e))?;
        if let Some(dir) = self.path.parent() {
            std::fs::create_dir_all(dir).map_err(|e| self.err(e))?;
        }
        let path = self.evicted_path();
        let tmp = path.with_extension("json.tmp");
        std::fs::write(&tmp, json).map_err(|e| self.err(e))?;
        std::fs::rename(&tmp, &path).map_err(|e| self.err(e))
    }

    /// Replaces the saved set with `pods`.
    pub(crate) fn save<'a>(&self, pods: impl IntoIterator<Item = &'a pb::PodSpec>) -> Result<()> {
        let mut stored: Vec<StoredPod> = pods
            .into_iter()
            .map(|p| StoredPod {
                uid: p.uid.clone(),
                namespace: p.namespace.clone(),
                name: p.name.clone(),
                spec_hash: p.spec_hash.clone(),
                spec: hex::encode(p.encode_to_vec()),
            })
            .collect();
        stored.sort_by(|a, b| a.uid.cmp(&b.uid));
        let contents = Contents {
            version: VERSION,
            node: self.node.clone(),
            pods: stored,
        };
        let json = serde_json::to_vec_pretty(&contents).map_err(|e| self.err(e))?;
        if let Some(dir) = self.path.parent() {
            std::fs::create_dir_all(dir).map_err(|e| self.err(e))?;
        }
        let tmp = self.path.with_extension("json.tmp");
        std::fs::write(&tmp, json).map_err(|e| self.err(e))?;
        std::fs::rename(&tmp, &self.path).map_err(|e| self.err(e))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pod(uid: &str) -> pb::PodSpec {
        pb::PodSpec {
            uid: uid.into(),
            namespace: "default".into(),
            name: format!("pod-{uid}"),
            spec_hash: "h1".into(),
            containers: vec![pb::ContainerSpec {
                name: "web".into(),
                image: "decloud-test/busybox:1".into(),
                command: vec!["httpd".into(), "-f".into()],
                ..Default::default()
            }],
            ..Default::default()
        }
    }

    #[test]
    fn round_trips_and_starts_empty() {
        let dir = tempfile::tempdir().unwrap();
        let f = StateFile::new(dir.path(), "edge-a");
        assert!(f.load().unwrap().is_empty());
        let pods = vec![pod("b"), pod("a")];
        f.save(&pods).unwrap();
        let mut back = f.load().unwrap();
        back.sort_by(|a, b| a.uid.cmp(&b.uid));
        assert_eq!(back, vec![pod("a"), pod("b")]);
        f.save(&[]).unwrap();
        assert!(f.load().unwrap().is_empty());
    }

    #[test]
    fn evictions_round_trip() {
        let dir = tempfile::tempdir().unwrap();
        let f = StateFile::new(dir.path(), "edge-a");
        assert!(f.load_evicted().unwrap().is_empty());
        let evicted = std::collections::BTreeMap::from([("u1".to_string(), "m".to_string())]);
        f.save_evicted(&evicted).unwrap();
        assert_eq!(f.load_evicted().unwrap(), evicted);
        assert!(
            f.load().unwrap().is_empty(),
            "the assigned set is its own file"
        );
        std::fs::write(dir.path().join(EVICTED_FILE_NAME), "[").unwrap();
        assert!(f.load_evicted().is_err());
    }

    #[test]
    fn refuses_another_nodes_file_and_garbage() {
        let dir = tempfile::tempdir().unwrap();
        StateFile::new(dir.path(), "edge-a")
            .save(&[pod("a")])
            .unwrap();
        let err = StateFile::new(dir.path(), "edge-b").load().unwrap_err();
        assert_eq!(err.metric_label(), "state_file");
        std::fs::write(dir.path().join(FILE_NAME), "{not json").unwrap();
        assert!(StateFile::new(dir.path(), "edge-a").load().is_err());
    }
}
