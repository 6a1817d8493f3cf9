//! Kubelet's events for pods on edges, the checks: an edge's `PodEvent` must be about a pod
//! bound to the edge's node, its reason a CamelCase word, its message bounded, and each pod
//! gets events at the rate client-go's spam filter grants kubelet. The writer
//! (`event_writer`) records what passes.

use std::collections::HashMap;
use std::time::Instant;

use decloud_crds::contracts::node_name;
use decloud_proto as pb;
use k8s_openapi::api::core::v1::{ObjectReference, Pod};
use kube::ResourceExt;
use parking_lot::Mutex;

/// Events waiting for the writer, across all edges; more are dropped (and counted).
pub(crate) const EVENT_QUEUE: usize = 1024;

/// Pods whose rate limit is remembered; past it, buckets that are full again are forgotten.
const MAX_BUCKETS: usize = 100_000;

/// Why an edge's event was not recorded (a metric label).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Refusal {
    /// The pod is not bound to the edge's node (or does not exist).
    NotBound,
    /// The reason is empty, too long or not a CamelCase word.
    BadReason,
    /// The container is not one of the pod's.
    UnknownContainer,
    /// The pod used up its events for now.
    RateLimited,
    /// The writer's queue is full.
    QueueFull,
}

impl Refusal {
    /// The metric label.
    pub(crate) fn metric_label(self) -> &'static str {
        match self {
            Self::NotBound => "not_bound",
            Self::BadReason => "bad_reason",
            Self::UnknownContainer => "unknown_container",
            Self::RateLimited => "rate_limited",
            Self::QueueFull => "queue_full",
        }
    }
}

/// An event accepted for recording.
#[derive(Clone, Debug)]
pub(crate) struct PodEventRecord {
    /// The node it happened on (the reporting instance).
    pub(crate) node: String,
    /// The pod (and container) it is about.
    pub(crate) regarding: ObjectReference,
    /// `Warning` or `Normal`.
    pub(crate) warning: bool,
    /// Kubelet's reason.
    pub(crate) reason: String,
    /// Kubelet's message, cut to [`pb::MAX_EVENT_MESSAGE`].
    pub(crate) message: String,
}

/// One pod's token bucket: [`pb::POD_EVENT_BURST`] events, then one per
/// [`pb::POD_EVENT_REFILL_SECONDS`].
#[derive(Clone, Copy, Debug)]
struct Bucket {
    tokens: f64,
    at: Instant,
}

impl Bucket {
    fn full(now: Instant) -> Self {
        Bucket {
            tokens: f64::from(pb::POD_EVENT_BURST),
            at: now,
        }
    }

    fn refill(&mut self, now: Instant) {
        let per_second = 1.0 / pb::POD_EVENT_REFILL_SECONDS as f64;
        let gained = now.saturating_duration_since(self.at).as_secs_f64() * per_second;
        self.tokens = (self.tokens + gained).min(f64::from(pb::POD_EVENT_BURST));
        self.at = now;
    }
}

/// Per-pod rate limits of recorded events (by pod uid).
#[derive(Debug, Default)]
pub(crate) struct EventLimiter {
    buckets: Mutex<HashMap<String, Bucket>>,
}

impl EventLimiter {
    /// Takes one event's token for pod `uid`; false when it has none left.
    pub(crate) fn take(&self, uid: &str, now: Instant) -> bool {
        let mut buckets = self.buckets.lock();
        if buckets.len() >= MAX_BUCKETS && !buckets.contains_key(uid) {
            buckets.retain(|_, b| {
                b.refill(now);
                b.tokens < f64::from(pb::POD_EVENT_BURST)
            });
            if buckets.len() >= MAX_BUCKETS {
                return false;
            }
        }
        let b = buckets
            .entry(uid.to_string())
            .or_insert_with(|| Bucket::full(now));
        b.refill(now);
        if b.tokens >= 1.0 {
            b.tokens -= 1.0;
            true
        } else {
            false
        }
    }

    /// Forgets pod `uid` (it is gone).
    pub(crate) fn forget(&self, uid: &str) {
        self.buckets.lock().remove(uid);
    }
}

/// Whether `reason` is what kubelet's reasons are: a CamelCase word of ASCII letters and
/// digits, starting with a capital, at most [`pb::MAX_EVENT_REASON`] bytes.
pub(crate) fn valid_reason(reason: &str) -> bool {
    reason.len() <= pb::MAX_EVENT_REASON
        && reason.starts_with(|c: char| c.is_ascii_uppercase())
        && reason.chars().all(|c| c.is_ascii_alphanumeric())
}

/// `s` cut to at most `max` bytes, at a character boundary.
fn cut(s: &str, max: usize) -> &str {
    let mut end = s.len().min(max);
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    &s[..end]
}

/// Checks one edge event against the pod as the API has it. Pure but for the limiter.
pub(crate) fn check(
    pod: Option<&Pod>,
    provider: &str,
    ev: &pb::PodEvent,
    limiter: &EventLimiter,
    now: Instant,
) -> Result<PodEventRecord, Refusal> {
    let node = node_name(provider);
    let pod = pod
        .filter(|p| p.uid().as_deref() == Some(ev.uid.as_str()))
        .filter(|p| p.spec.as_ref().and_then(|s| s.node_name.as_deref()) == Some(node.as_str()))
        .ok_or(Refusal::NotBound)?;
    if !valid_reason(&ev.reason) {
        return Err(Refusal::BadReason);
    }
    let field_path = if ev.container.is_empty() {
        None
    } else {
        let containers = pod.spec.as_ref().map(|s| s.containers.as_slice());
        if !containers
            .unwrap_or_default()
            .iter()
            .any(|c| c.name == ev.container)
        {
            return Err(Refusal::UnknownContainer);
        }
        // As kubelet's container references name it, shown by `kubectl describe`.
        Some(format!("spec.containers{{{}}}", ev.container))
    };
    if !limiter.take(&ev.uid, now) {
        return Err(Refusal::RateLimited);
    }
    Ok(PodEventRecord {
        node,
        regarding: ObjectReference {
            api_version: Some("v1".into()),
            kind: Some("Pod".into()),
            namespace: pod.namespace(),
            name: Some(pod.name_any()),
            uid: pod.uid(),
            field_path,
            ..Default::default()
        },
        warning: ev.warning,
        reason: ev.reason.clone(),
        message: cut(&ev.message, pb::MAX_EVENT_MESSAGE).to_string(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use k8s_openapi::api::core::v1::{Container, PodSpec};
    use kube::api::ObjectMeta;
    use std::time::Duration;

    fn pod(node: &str) -> Pod {
        Pod {
            metadata: ObjectMeta {
                name: Some("web".into()),
                namespace: Some("default".into()),
                uid: Some("u1".into()),
                ..Default::default()
            },
            spec: Some(PodSpec {
                node_name: Some(node.into()),
                containers: vec![Container {
                    name: "app".into(),
                    ..Default::default()
                }],
                ..Default::default()
            }),
            ..Default::default()
        }
    }

    fn event(reason: &str, container: &str, message: &str) -> pb::PodEvent {
        pb::PodEvent {
            uid: "u1".into(),
            namespace: "default".into(),
            name: "web".into(),
            container: container.into(),
            warning: true,
            reason: reason.into(),
            message: message.into(),
        }
    }

    #[test]
    fn only_events_on_own_pods_with_kubelet_shaped_reasons_pass() {
        let l = EventLimiter::default();
        let now = Instant::now();
        let mine = pod("edge-alice");
        let ok = check(Some(&mine), "alice", &event("BackOff", "app", "m"), &l, now).unwrap();
        assert_eq!(ok.node, "edge-alice");
        assert_eq!(
            ok.regarding.field_path.as_deref(),
            Some("spec.containers{app}")
        );
        let cases = [
            (
                Some(pod("edge-bob")),
                event("BackOff", "app", "m"),
                Refusal::NotBound,
            ),
            (None, event("BackOff", "app", "m"), Refusal::NotBound),
            (
                Some(mine.clone()),
                event("back off", "app", "m"),
                Refusal::BadReason,
            ),
            (
                Some(mine.clone()),
                event("", "app", "m"),
                Refusal::BadReason,
            ),
            (
                Some(mine.clone()),
                event(&"A".repeat(129), "app", "m"),
                Refusal::BadReason,
            ),
            (
                Some(mine.clone()),
                event("Failed", "other", "m"),
                Refusal::UnknownContainer,
            ),
        ];
        for (pod, ev, want) in cases {
            assert_eq!(
                check(pod.as_ref(), "alice", &ev, &l, now).unwrap_err(),
                want,
                "{ev:?}"
            );
        }
        let mut other_uid = mine.clone();
        other_uid.metadata.uid = Some("u2".into());
        assert_eq!(
            check(
                Some(&other_uid),
                "alice",
                &event("Failed", "", "m"),
                &l,
                now
            )
            .unwrap_err(),
            Refusal::NotBound
        );
        let long = check(
            Some(&mine),
            "alice",
            &event("Failed", "", &"é".repeat(2000)),
            &l,
            now,
        )
        .unwrap();
        assert!(long.message.len() <= pb::MAX_EVENT_MESSAGE);
        assert_eq!(long.regarding.field_path, None);
    }

    #[test]
    fn a_flood_is_cut_to_the_burst_then_one_per_refill() {
        let l = EventLimiter::default();
        let t0 = Instant::now();
        let passed = (0..1000).filter(|_| l.take("u1", t0)).count();
        assert_eq!(passed, pb::POD_EVENT_BURST as usize);
        assert!(l.take("u2", t0), "other pods have their own budget");
        let later = t0 + Duration::from_secs(pb::POD_EVENT_REFILL_SECONDS);
        assert!(l.take("u1", later));
        assert!(!l.take("u1", later));
        l.forget("u1");
        assert!(l.take("u1", later));
    }
}
