//! What an edge says about one of its pods, on its way to the status writer, and the queue
//! that carries it there.

use std::collections::HashMap;
use std::time::Instant;

use decloud_proto as pb;
use parking_lot::Mutex;
use tokio::sync::Notify;

/// An edge's report about one of its pods, queued for the status writer.
#[derive(Clone, Debug)]
pub(crate) struct StatusReport {
    /// The reporting provider (already authorised for this pod).
    pub(crate) provider: String,
    /// What the edge said.
    pub(crate) report: pb::PodStatus,
    /// When it arrived, for the bridge latency metric.
    pub(crate) received: Instant,
}

/// Pods with a report waiting at once, across all edges.
pub(crate) const MAX_QUEUED_PODS: usize = 100_000;

/// Reports waiting for the status writer: the newest per pod only.
///
/// Only reports on pods bound to the reporting edge get here (they are authorised first), so
/// one edge holds at most one entry per pod bound to it, and a flood of reports about one pod
/// costs one entry. `cap` bounds the whole; a report on a new pod beyond it is dropped (the
/// edge sends the pod's status again with its next change or resync).
#[derive(Debug)]
pub(crate) struct StatusQueue {
    waiting: Mutex<HashMap<String, StatusReport>>,
    ready: Notify,
    cap: usize,
}

impl Default for StatusQueue {
    fn default() -> Self {
        Self::with_capacity(MAX_QUEUED_PODS)
    }
}

impl StatusQueue {
    /// A queue holding at most `cap` pods.
    pub(crate) fn with_capacity(cap: usize) -> Self {
        Self {
            waiting: Mutex::new(HashMap::new()),
            ready: Notify::new(),
            cap,
        }
    }

    /// Queues `report`, replacing an older one about the same pod. False when it was dropped
    /// because the queue is full. Never blocks.
    pub(crate) fn push(&self, report: StatusReport) -> bool {
        let mut waiting = self.waiting.lock();
        let len = waiting.len();
        match waiting.get_mut(&report.report.uid) {
            Some(old) => {
                // Keep the first arrival time: latency counts from the oldest unwritten report.
                let received = old.received;
                *old = StatusReport { received, ..report };
            }
            None if len >= self.cap => return false,
            None => {
                waiting.insert(report.report.uid.clone(), report);
            }
        }
        drop(waiting);
        self.ready.notify_one();
        true
    }

    /// Every waiting report (at least one), waiting for one if there is none.
    pub(crate) async fn take(&self) -> Vec<StatusReport> {
        loop {
            {
                let mut waiting = self.waiting.lock();
                if !waiting.is_empty() {
                    return waiting.drain().map(|(_, r)| r).collect();
                }
            }
            self.ready.notified().await;
        }
    }

    /// Pods with a report waiting.
    #[cfg(test)]
    pub(crate) fn len(&self) -> usize {
        self.waiting.lock().len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn report(uid: &str, message: &str) -> StatusReport {
        StatusReport {
            provider: "p".into(),
            report: pb::PodStatus {
                uid: uid.into(),
                message: message.into(),
                ..Default::default()
            },
            received: Instant::now(),
        }
    }

    #[tokio::test]
    async fn a_flood_costs_one_entry_per_pod_and_the_newest_wins() {
        let q = StatusQueue::with_capacity(2);
        for i in 0..10_000 {
            assert!(q.push(report("a", &i.to_string())));
        }
        assert_eq!(q.len(), 1);
        assert!(q.push(report("b", "1")));
        // (pushed uid, accepted?): full, so only pods already waiting are taken.
        let cases = [("c", false), ("a", true), ("b", true)];
        for (uid, accepted) in cases {
            assert_eq!(q.push(report(uid, "last")), accepted, "{uid}");
        }
        let mut got: Vec<(String, String)> = q
            .take()
            .await
            .into_iter()
            .map(|r| (r.report.uid, r.report.message))
            .collect();
        got.sort();
        assert_eq!(
            got,
            vec![("a".into(), "last".into()), ("b".into(), "last".into())]
        );
        assert_eq!(q.len(), 0);
        assert!(q.push(report("c", "1")));
    }

    #[tokio::test]
    async fn take_waits_for_a_report() {
        let q = std::sync::Arc::new(StatusQueue::default());
        let waiter = tokio::spawn({
            let q = q.clone();
            async move { q.take().await.len() }
        });
        tokio::task::yield_now().await;
        q.push(report("a", "1"));
        let n = tokio::time::timeout(std::time::Duration::from_secs(5), waiter)
            .await
            .unwrap()
            .unwrap();
        assert_eq!(n, 1);
    }
}
