//! Requests the operator asked of edges and is waiting on (tunnels to open, log streams to
//! feed), by id. Each may be answered only by the provider it was asked of: an edge naming
//! another edge's request id is refused, and the request keeps waiting for the right one.

use std::collections::HashMap;
use std::io;
use std::sync::atomic::{AtomicU64, Ordering};

use bytes::Bytes;
use decloud_gateway::{DialError, TunnelIo};
use parking_lot::Mutex;
use tokio::sync::{mpsc, oneshot};

/// What a tunnel dial ends with: the byte stream, or why there is none.
pub(crate) type Opened = Result<Box<dyn TunnelIo>, DialError>;

/// Tunnels asked of edges and not yet opened, by tunnel id: where each edge's answer goes.
pub(crate) type PendingTunnels = PendingRequests<oneshot::Sender<Opened>>;

/// The two halves of an exec or attach `Tunnel` RPC: the edge's frames, and where the
/// operator's go.
pub(crate) type ExecRpc = (
    tonic::Streaming<decloud_proto::TunnelFrame>,
    mpsc::Sender<Result<decloud_proto::TunnelFrame, tonic::Status>>,
);

/// Exec and attach sessions asked of edges and not yet opened, by tunnel id.
pub(crate) type PendingExecs = PendingRequests<oneshot::Sender<ExecRpc>>;

/// Log requests in flight, by request id: where each one's chunks go.
pub(crate) type PendingLogs = PendingRequests<mpsc::Sender<io::Result<Bytes>>>;

/// Why an answer was not taken.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Unclaimed {
    /// No such request is waiting (it ended, timed out, or never existed).
    Unknown,
    /// The request was asked of another provider.
    NotAskedOf,
}

struct Entry<T> {
    provider: String,
    value: T,
}

/// Requests waiting on edges, each holding a `T` (where its answer goes).
pub(crate) struct PendingRequests<T> {
    next: AtomicU64,
    waiting: Mutex<HashMap<u64, Entry<T>>>,
}

impl<T> Default for PendingRequests<T> {
    fn default() -> Self {
        Self {
            next: AtomicU64::new(0),
            waiting: Mutex::new(HashMap::new()),
        }
    }
}

impl<T> std::fmt::Debug for PendingRequests<T> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PendingRequests")
            .field("waiting", &self.len())
            .finish()
    }
}

impl<T> PendingRequests<T> {
    /// Registers a request that only `provider` may answer; returns its new id (never 0).
    pub(crate) fn register(&self, provider: &str, value: T) -> u64 {
        let id = self.next.fetch_add(1, Ordering::Relaxed) + 1;
        self.waiting.lock().insert(
            id,
            Entry {
                provider: provider.to_string(),
                value,
            },
        );
        id
    }

    /// Forgets request `id`; what it held, if it was still waiting.
    pub(crate) fn forget(&self, id: u64) -> Option<T> {
        self.waiting.lock().remove(&id).map(|e| e.value)
    }

    /// Takes request `id` out if `provider` may answer it.
    pub(crate) fn claim(&self, id: u64, provider: &str) -> Result<T, Unclaimed> {
        let mut waiting = self.waiting.lock();
        match waiting.get(&id) {
            None => Err(Unclaimed::Unknown),
            Some(e) if e.provider != provider => Err(Unclaimed::NotAskedOf),
            Some(_) => Ok(waiting.remove(&id).map(|e| e.value).expect("present")),
        }
    }

    /// Lets `provider` answer request `id` in place: `f` gets what it holds and says whether
    /// the request is done (then it is removed and returned). Must not block: runs under the
    /// table's lock.
    pub(crate) fn answer<R>(
        &self,
        id: u64,
        provider: &str,
        f: impl FnOnce(&T) -> (R, bool),
    ) -> Result<(R, Option<T>), Unclaimed> {
        let mut waiting = self.waiting.lock();
        let entry = waiting.get(&id).ok_or(Unclaimed::Unknown)?;
        if entry.provider != provider {
            return Err(Unclaimed::NotAskedOf);
        }
        let (r, done) = f(&entry.value);
        let removed = done.then(|| waiting.remove(&id).map(|e| e.value)).flatten();
        Ok((r, removed))
    }

    /// Requests waiting right now.
    pub(crate) fn len(&self) -> usize {
        self.waiting.lock().len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_the_asked_provider_answers() {
        let table = PendingRequests::default();
        let id = table.register("a", 7);
        assert_eq!(table.claim(id, "b"), Err(Unclaimed::NotAskedOf));
        assert_eq!(table.len(), 1, "a wrong claim leaves it waiting");
        assert_eq!(table.claim(id, "a"), Ok(7));
        assert_eq!(table.claim(id, "a"), Err(Unclaimed::Unknown));
        assert_eq!(table.len(), 0);
    }

    #[test]
    fn answers_in_place_until_done() {
        let table = PendingRequests::default();
        let id = table.register("a", 1);
        assert_eq!(
            table.answer(id, "b", |_| ((), false)),
            Err(Unclaimed::NotAskedOf)
        );
        assert_eq!(table.answer(id, "a", |v| (*v + 1, false)), Ok((2, None)));
        assert_eq!(table.answer(id, "a", |_| ((), true)), Ok(((), Some(1))));
        assert_eq!(table.forget(id), None);
        let other = table.register("a", 5);
        assert_ne!(other, id);
        assert_eq!(table.forget(other), Some(5));
    }
}
