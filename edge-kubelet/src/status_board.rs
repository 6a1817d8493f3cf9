//! The latest status of every pod on this edge, and the stream of changes the session pushes.

use std::collections::HashMap;
use std::sync::Mutex;

use tokio::sync::broadcast;

use decloud_proto as pb;

/// A change the operator must hear about.
#[derive(Debug, Clone, PartialEq)]
pub enum PodUpdate {
    /// A pod's status changed (the full new status).
    Status(pb::PodStatus),
    /// A pod's containers are all removed.
    Gone(String),
}

/// Latest pod statuses plus a broadcast of changes. Shared by the pod workers (writers) and
/// the session (reader).
#[derive(Debug)]
pub struct StatusBoard {
    statuses: Mutex<HashMap<String, pb::PodStatus>>,
    updates: broadcast::Sender<PodUpdate>,
}

impl Default for StatusBoard {
    fn default() -> Self {
        StatusBoard {
            statuses: Mutex::default(),
            updates: broadcast::channel(4096).0,
        }
    }
}

impl StatusBoard {
    fn map(&self) -> std::sync::MutexGuard<'_, HashMap<String, pb::PodStatus>> {
        self.statuses.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Records `status`; broadcasts it if it differs from the last one.
    pub fn publish(&self, status: pb::PodStatus) {
        let mut map = self.map();
        if map.get(&status.uid) == Some(&status) {
            return;
        }
        map.insert(status.uid.clone(), status.clone());
        // No receiver (no session right now) is fine: the board keeps the latest anyway.
        let _ = self.updates.send(PodUpdate::Status(status));
    }

    /// Forgets pod `uid` and announces that it is gone.
    pub fn gone(&self, uid: &str) {
        self.map().remove(uid);
        let _ = self.updates.send(PodUpdate::Gone(uid.to_string()));
    }

    /// The latest status of every pod, sorted by uid.
    pub fn all(&self) -> Vec<pb::PodStatus> {
        let mut v: Vec<_> = self.map().values().cloned().collect();
        v.sort_by(|a, b| a.uid.cmp(&b.uid));
        v
    }

    /// The latest status of pod `uid`.
    pub fn get(&self, uid: &str) -> Option<pb::PodStatus> {
        self.map().get(uid).cloned()
    }

    /// Changes from now on. A lagging receiver should re-read [`StatusBoard::all`].
    pub fn subscribe(&self) -> broadcast::Receiver<PodUpdate> {
        self.updates.subscribe()
    }
}
