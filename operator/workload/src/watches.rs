//! The operator's one watch per kind: how it is started ([`SharedWatch`]) and what the Workload
//! controller takes of it ([`Watches`]).

use std::{
    fmt::Debug,
    hash::Hash,
    pin::Pin,
    sync::{
        Arc,
        atomic::{AtomicBool, Ordering},
    },
    task::{Context, Poll, Wake, Waker},
};

use decloud_crds::{Provider, Workload};
use futures::{Stream, StreamExt, channel::mpsc};
use k8s_openapi::api::core::v1::{Namespace, Pod};
use kube::{
    Api, Resource,
    runtime::{
        WatchStreamExt,
        reflector::{self, ReflectHandle, Store, store::Writer},
        watcher,
    },
};
use serde::de::DeserializeOwned;
use tracing::debug;

/// The operator's one watch per kind, shared by every controller in the process.
///
/// Every `*_events` handle must be read (the Workload controller reads its own): an unread
/// subscriber holds the watch back once its buffer is full.
pub struct Watches {
    /// Every Workload.
    pub workloads: Store<Workload>,
    /// Workload changes.
    pub workload_events: ReflectHandle<Workload>,
    /// Workload changes again: each is mapped to the other Workloads claiming the same host.
    pub workload_claims: ReflectHandle<Workload>,
    /// Workloads the watch saw deleted: the next claimant of their host takes over.
    pub deleted_workloads: mpsc::Receiver<Arc<Workload>>,
    /// Every Namespace: which custom hosts the platform team granted each.
    pub namespaces: Store<Namespace>,
    /// Namespace changes (a grant given or taken).
    pub namespace_events: ReflectHandle<Namespace>,
    /// Every Provider.
    pub providers: Store<Provider>,
    /// Provider changes.
    pub provider_events: ReflectHandle<Provider>,
    /// Every pod.
    pub pods: Store<Pod>,
    /// Pod changes.
    pub pod_events: ReflectHandle<Pod>,
    /// Providers the watch saw deleted (shared streams carry no deletions, kube-rs#1590).
    pub deleted_providers: mpsc::Receiver<Arc<Provider>>,
    /// Pods the watch saw deleted: a replica force-deleted by someone else must be replaced now,
    /// not at the next periodic look.
    pub deleted_pods: mpsc::Receiver<Arc<Pod>>,
}

// === impl SharedWatch ===

/// One watch of kind `K`, before it starts: hand out its store, subscribers and deletion
/// receivers, then [`run`](Self::run) it. (kube-runtime 5 cannot subscribe to a running one.)
pub struct SharedWatch<K>
where
    K: Resource + Clone + 'static,
    K::DynamicType: Eq + Hash + Clone,
{
    writer: Writer<K>,
    deleted: Vec<mpsc::Sender<Arc<K>>>,
    buffer: usize,
}

impl<K> SharedWatch<K>
where
    K: Resource + Clone + DeserializeOwned + Debug + Send + Sync + 'static,
    K::DynamicType: Eq + Hash + Clone + Default,
{
    /// A watch whose subscribers may each lag `buffer` changes behind before it waits for them.
    pub fn new(buffer: usize) -> Self {
        let (_, writer) = reflector::store_shared(buffer);
        Self {
            writer,
            deleted: Vec::new(),
            buffer,
        }
    }

    /// The cache the watch keeps.
    pub fn store(&self) -> Store<K> {
        self.writer.as_reader()
    }

    /// A stream of the objects the watch sees change. Must be read.
    pub fn subscribe(&self) -> ReflectHandle<K> {
        self.writer
            .subscribe()
            .expect("a writer made by store_shared can be subscribed to")
    }

    /// A stream of the objects the watch sees deleted. A full receiver misses notices rather than
    /// holding the watch back.
    pub fn deletions(&mut self) -> mpsc::Receiver<Arc<K>> {
        let (tx, rx) = mpsc::channel(self.buffer);
        self.deleted.push(tx);
        rx
    }

    /// Watches `api` (with `config`) until the process ends, retrying with backoff.
    pub async fn run(self, api: Api<K>, config: watcher::Config) {
        self.events(api, config)
            .for_each(|event| {
                if let Err(e) = event {
                    debug!(error = %e, kind = %K::kind(&Default::default()), "watch failed; retrying");
                }
                futures::future::ready(())
            })
            .await;
    }

    /// Watches `api` (with `config`), retrying with backoff: every event, after it was applied
    /// to the store, handed to the subscribers and (deletions) to the deletion receivers. For
    /// the one owner that needs the raw events (the pod bridge: deletions, re-lists); it must
    /// poll the stream for the watch to advance.
    pub fn events(
        self,
        api: Api<K>,
        config: watcher::Config,
    ) -> impl Stream<Item = watcher::Result<watcher::Event<K>>> + Send + 'static {
        self.reflect(watcher(api, config).default_backoff())
    }

    /// Applies `events` to the store and subscribers, and hands deletions on.
    fn reflect(
        self,
        events: impl Stream<Item = watcher::Result<watcher::Event<K>>> + Send + 'static,
    ) -> impl Stream<Item = watcher::Result<watcher::Event<K>>> + Send + 'static {
        let Self {
            writer,
            mut deleted,
            ..
        } = self;
        events.reflect_shared(writer).inspect(move |event| {
            if let Ok(watcher::Event::Delete(obj)) = event {
                let obj = Arc::new(obj.clone());
                for tx in &mut deleted {
                    let _ = tx.try_send(obj.clone());
                }
            }
        })
    }
}

// === impl Resumed ===

/// A shared-stream reader that does not stall.
///
/// kube-runtime 5's `ReflectHandle` answers `Pending`, without arranging to be woken, when the
/// object it was told about has left the store before it was read (created, then deleted soon
/// after). Its reader would never be polled again and, once the buffer filled, the whole watch
/// would stop. This polls it again whenever it gives up that way.
///
/// Wrap every `ReflectHandle` a `Controller` reads in it.
pub struct Resumed<S>(Pin<Box<S>>);

impl<S: Stream> Resumed<S> {
    /// Wraps `stream`.
    pub fn new(stream: S) -> Self {
        Self(Box::pin(stream))
    }
}

/// A waker that tells whether the stream kept it (or used it) to be woken later.
struct Probe {
    waker: Waker,
    woken: AtomicBool,
}

impl Wake for Probe {
    fn wake(self: Arc<Self>) {
        self.wake_by_ref();
    }

    fn wake_by_ref(self: &Arc<Self>) {
        self.woken.store(true, Ordering::Release);
        self.waker.wake_by_ref();
    }
}

impl<S: Stream> Stream for Resumed<S> {
    type Item = S::Item;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<S::Item>> {
        loop {
            let probe = Arc::new(Probe {
                waker: cx.waker().clone(),
                woken: AtomicBool::new(false),
            });
            let waker = Waker::from(probe.clone());
            let polled = self.0.as_mut().poll_next(&mut Context::from_waker(&waker));
            drop(waker);
            match polled {
                Poll::Ready(item) => return Poll::Ready(item),
                // Kept (strong count above ours) or woken: someone will wake the task.
                Poll::Pending
                    if Arc::strong_count(&probe) > 1 || probe.woken.load(Ordering::Acquire) =>
                {
                    return Poll::Pending;
                }
                Poll::Pending => {}
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;
    use kube::api::ObjectMeta;

    fn pod(name: &str) -> Pod {
        Pod {
            metadata: ObjectMeta {
                name: Some(name.into()),
                namespace: Some("default".into()),
                ..Default::default()
            },
            ..Default::default()
        }
    }

    /// A watch that saw `a` listed, then `b` created and deleted at once, then `c` created; and
    /// a reader that subscribed before it ran and reads only after.
    async fn reader_after_churn() -> ReflectHandle<Pod> {
        let (_, writer) = reflector::store_shared::<Pod>(16);
        let reader = writer.subscribe().expect("shared");
        let events = [
            watcher::Event::Init,
            watcher::Event::InitApply(pod("a")),
            watcher::Event::InitDone,
            watcher::Event::Apply(pod("b")),
            watcher::Event::Delete(pod("b")),
            watcher::Event::Apply(pod("c")),
        ];
        futures::stream::iter(events.map(Ok))
            .reflect_shared(writer)
            .for_each(|_| async {})
            .await;
        reader
    }

    fn names(pods: Vec<Arc<Pod>>) -> Vec<String> {
        pods.iter()
            .map(|p| p.metadata.name.clone().unwrap_or_default())
            .collect()
    }

    /// Polls `stream` once; also says whether, on `Pending`, anything can wake the task.
    fn poll_once<S: Stream>(stream: Pin<&mut S>) -> (Poll<Option<S::Item>>, bool) {
        let probe = Arc::new(Probe {
            waker: futures::task::noop_waker(),
            woken: AtomicBool::new(false),
        });
        let waker = Waker::from(probe.clone());
        let polled = stream.poll_next(&mut Context::from_waker(&waker));
        drop(waker);
        let wakeable = Arc::strong_count(&probe) > 1 || probe.woken.load(Ordering::Acquire);
        (polled, wakeable)
    }

    fn name(polled: Poll<Option<Arc<Pod>>>) -> Option<String> {
        match polled {
            Poll::Ready(Some(p)) => p.metadata.name.clone(),
            other => panic!("expected a pod, got {:?}", other.map(|p| p.is_some())),
        }
    }

    #[tokio::test]
    async fn a_deleted_object_does_not_stall_the_reader() {
        let mut reader = std::pin::pin!(Resumed::new(reader_after_churn().await));
        assert_eq!(name(poll_once(reader.as_mut()).0).as_deref(), Some("a"));
        assert_eq!(name(poll_once(reader.as_mut()).0).as_deref(), Some("c"));
        assert!(matches!(poll_once(reader.as_mut()).0, Poll::Ready(None)));
    }

    /// The upstream behaviour `Resumed` works around; when this fails, kube-runtime has fixed it
    /// and `Resumed` can go.
    #[tokio::test]
    async fn the_bare_handle_stalls_on_a_deleted_object() {
        let mut reader = std::pin::pin!(reader_after_churn().await);
        assert_eq!(name(poll_once(reader.as_mut()).0).as_deref(), Some("a"));
        let (polled, wakeable) = poll_once(reader.as_mut());
        assert!(
            polled.is_pending() && !wakeable,
            "pending, and nothing will wake it"
        );
    }

    #[tokio::test]
    async fn deletions_reach_every_receiver_and_a_full_one_does_not_block() {
        let mut watch = SharedWatch::<Pod>::new(1);
        let mut first = watch.deletions();
        let mut second = watch.deletions();
        let store = watch.store();
        let mut events = vec![watcher::Event::Init, watcher::Event::InitDone];
        for name in ["a", "b", "c"] {
            events.push(watcher::Event::Apply(pod(name)));
            events.push(watcher::Event::Delete(pod(name)));
        }
        events.push(watcher::Event::Apply(pod("d")));
        let run = watch
            .reflect(futures::stream::iter(events.into_iter().map(Ok)))
            .for_each(|_| futures::future::ready(()));
        tokio::time::timeout(Duration::from_secs(5), run)
            .await
            .expect("unread receivers do not hold the watch back");
        assert_eq!(names(store.state()), ["d"]);
        // Room for two each (buffer 1 + one sender); the third notice is dropped.
        assert_eq!(names(first.by_ref().collect().await), ["a", "b"]);
        assert_eq!(names(second.by_ref().collect().await), ["a", "b"]);
    }
}
