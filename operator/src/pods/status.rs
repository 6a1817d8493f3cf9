//! An edge's `PodStatus` report → the Kubernetes pod status the bridge applies.
//!
//! The output is a pure function of the report, the pod as it is in the API and `now`
//! (used only for conditions that change), so applying it twice changes nothing.

use decloud_proto as pb;
use jiff::Timestamp;
use k8s_openapi::api::core::v1::Pod;
use serde_json::{Value, json};

use crate::edge::PodNetwork;
use crate::time::rfc3339;

/// Longest message kept (kubelet's bound on a termination message: 4 KiB).
pub(crate) const MAX_MESSAGE: usize = 4096;
/// Longest reason kept (a reason is a CamelCase word).
pub(crate) const MAX_REASON: usize = 128;
/// Longest image reference or image id kept.
pub(crate) const MAX_IMAGE: usize = 512;
/// Longest container id kept (`docker://` and 64 hex digits fit many times over).
pub(crate) const MAX_CONTAINER_ID: usize = 256;

/// `s` cut to at most `max` bytes (at a character boundary).
fn cut(s: &str, max: usize) -> &str {
    let mut end = s.len().min(max);
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    &s[..end]
}

/// Whether `ip` may be published as the pod's address: inside the pod network the edge
/// announced, and no special-purpose address (loopback, link-local such as the metadata
/// service 169.254.169.254, unspecified, multicast, broadcast) nor the node's own address,
/// which a pod IP would otherwise make Services and probes reach.
pub(crate) fn acceptable_pod_ip(
    ip: std::net::IpAddr,
    network: Option<&PodNetwork>,
    node: std::net::IpAddr,
) -> bool {
    use std::net::IpAddr::{V4, V6};
    let special = match ip {
        V4(a) => {
            a.is_loopback()
                || a.is_link_local()
                || a.is_unspecified()
                || a.is_multicast()
                || a.is_broadcast()
        }
        V6(a) => {
            a.is_loopback()
                || a.is_unspecified()
                || a.is_multicast()
                || a.is_unicast_link_local()
                || a.to_ipv4_mapped().is_some()
        }
    };
    !special && ip != node && network.is_some_and(|n| n.contains(ip))
}

fn millis_to_time(ms: i64) -> Option<String> {
    (ms > 0)
        .then(|| Timestamp::from_millisecond(ms).ok())
        .flatten()
        .map(rfc3339)
}

/// Kubernetes phase name of a reported phase.
pub(crate) fn phase_name(phase: i32) -> &'static str {
    match pb::PodPhase::try_from(phase).unwrap_or(pb::PodPhase::Unspecified) {
        pb::PodPhase::Unspecified | pb::PodPhase::Pending => "Pending",
        pb::PodPhase::Running => "Running",
        pb::PodPhase::Succeeded => "Succeeded",
        pb::PodPhase::Failed => "Failed",
    }
}

/// `docker://<id>`-style container id; ids that already carry a scheme are kept.
fn container_id(runtime: &str, id: &str) -> Option<String> {
    let id = cut(id, MAX_CONTAINER_ID);
    if id.is_empty() {
        None
    } else if id.contains("://") {
        Some(id.to_string())
    } else {
        Some(format!("{runtime}://{id}"))
    }
}

fn state(runtime: &str, container: &str, s: Option<&pb::ContainerState>) -> Value {
    use pb::container_state::State;
    match s.and_then(|s| s.state.as_ref()) {
        None => json!({}),
        Some(State::Waiting(w)) => {
            let mut v = json!({"reason": non_empty(cut(&w.reason, MAX_REASON))});
            put(&mut v, "message", non_empty(cut(&w.message, MAX_MESSAGE)));
            json!({"waiting": v})
        }
        Some(State::Running(r)) => {
            let mut v = json!({});
            put(&mut v, "startedAt", millis_to_time(r.started_unix_millis));
            json!({"running": v})
        }
        Some(State::Terminated(t)) => {
            let mut v = json!({"exitCode": t.exit_code});
            put(&mut v, "reason", non_empty(cut(&t.reason, MAX_REASON)));
            put(&mut v, "message", non_empty(cut(&t.message, MAX_MESSAGE)));
            put(&mut v, "startedAt", millis_to_time(t.started_unix_millis));
            put(&mut v, "finishedAt", millis_to_time(t.finished_unix_millis));
            put(&mut v, "containerID", container_id(runtime, container));
            json!({"terminated": v})
        }
    }
}

fn non_empty(s: &str) -> Option<String> {
    (!s.is_empty()).then(|| s.to_string())
}

fn put(v: &mut Value, key: &str, value: Option<String>) {
    if let (Some(obj), Some(value)) = (v.as_object_mut(), value) {
        obj.insert(key.to_string(), Value::String(value));
    }
}

fn bool_status(b: bool) -> &'static str {
    if b { "True" } else { "False" }
}

/// A pod condition that keeps its `lastTransitionTime` from `pod` while its status is unchanged.
fn condition(pod: &Pod, type_: &str, status: &str, reason: Option<&str>, now: &str) -> Value {
    let old = pod
        .status
        .as_ref()
        .and_then(|s| s.conditions.as_ref())
        .and_then(|cs| cs.iter().find(|c| c.type_ == type_));
    let since = match old {
        Some(c) if c.status == status => c
            .last_transition_time
            .as_ref()
            .map(|t| rfc3339(t.0))
            .unwrap_or_else(|| now.to_string()),
        _ => now.to_string(),
    };
    let mut v = json!({"type": type_, "status": status, "lastTransitionTime": since});
    put(&mut v, "reason", reason.map(str::to_string));
    v
}

/// The pod status to apply for `report` about `pod`.
///
/// `runtime` prefixes container ids (`docker://…`); `host_ip` is the operator's own address
/// (never the provider's); `network` is the pod network the edge announced (a pod IP outside
/// it is not written). Every string the edge sent is cut to kubelet's bounds.
pub(crate) fn pod_status(
    pod: &Pod,
    report: &pb::PodStatus,
    runtime: &str,
    host_ip: std::net::IpAddr,
    network: Option<&PodNetwork>,
    now: Timestamp,
) -> Value {
    let host_ip_text = host_ip.to_string();
    let host_ip_value = host_ip_text.as_str();
    let now = rfc3339(now);
    let phase = phase_name(report.phase);
    let terminal = matches!(phase, "Succeeded" | "Failed");
    let ready = report.ready && !terminal;
    let containers_ready = report.containers_ready && !terminal;
    let not_ready_reason = (!containers_ready).then_some("ContainersNotReady");
    let spec_containers: Vec<(&str, &str)> = pod
        .spec
        .iter()
        .flat_map(|s| s.containers.iter())
        .map(|c| (c.name.as_str(), c.image.as_deref().unwrap_or_default()))
        .collect();
    // One status per spec container, in spec order; containers the edge has not reported yet
    // are waiting to be created.
    let statuses: Vec<Value> = spec_containers
        .iter()
        .map(
            |(name, image)| match report.containers.iter().find(|c| c.name == *name) {
                Some(c) => {
                    let mut v = json!({
                        "name": name,
                        "image": if c.image.is_empty() { image } else { cut(&c.image, MAX_IMAGE) },
                        "imageID": cut(&c.image_id, MAX_IMAGE),
                        "restartCount": c.restart_count,
                        "ready": c.ready && !terminal,
                        "started": c.started,
                        "state": state(runtime, &c.container_id, c.state.as_ref()),
                        "lastState": state(runtime, &c.container_id, c.last_state.as_ref()),
                    });
                    put(
                        &mut v,
                        "containerID",
                        container_id(runtime, &c.container_id),
                    );
                    v
                }
                None => json!({
                    "name": name,
                    "image": image,
                    "imageID": "",
                    "restartCount": 0,
                    "ready": false,
                    "started": false,
                    "state": {"waiting": {"reason": "ContainerCreating"}},
                    "lastState": {},
                }),
            },
        )
        .collect();
    let mut status = json!({
        "phase": phase,
        "hostIP": host_ip_value,
        "hostIPs": [{"ip": host_ip_value}],
        "conditions": [
            condition(pod, "PodScheduled", "True", None, &now),
            condition(pod, "Initialized", "True", None, &now),
            condition(pod, "ContainersReady", bool_status(containers_ready), not_ready_reason, &now),
            condition(pod, "Ready", bool_status(ready), not_ready_reason, &now),
        ],
        "containerStatuses": statuses,
    });
    put(
        &mut status,
        "reason",
        non_empty(cut(&report.reason, MAX_REASON)),
    );
    put(
        &mut status,
        "message",
        non_empty(cut(&report.message, MAX_MESSAGE)),
    );
    let start = millis_to_time(report.start_unix_millis).or_else(|| {
        pod.status
            .as_ref()
            .and_then(|s| s.start_time.as_ref())
            .map(|t| rfc3339(t.0))
    });
    put(&mut status, "startTime", start);
    if let Ok(ip) = report.pod_ip.parse::<std::net::IpAddr>()
        && acceptable_pod_ip(ip, network, host_ip)
    {
        status["podIP"] = json!(ip.to_string());
        status["podIPs"] = json!([{"ip": ip.to_string()}]);
    }
    status
}

/// The status of a pod the bridge refuses to run (phase Failed, `reason`, `message`).
pub(crate) fn refused_status(pod: &Pod, reason: &str, message: &str, now: Timestamp) -> Value {
    let now = rfc3339(now);
    json!({
        "phase": "Failed",
        "reason": reason,
        "message": message,
        "conditions": [
            condition(pod, "PodScheduled", "True", None, &now),
            condition(pod, "Ready", "False", Some(reason), &now),
        ],
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use pb::container_state::State;

    fn pod() -> Pod {
        serde_json::from_value(json!({
            "metadata": {"name": "web", "namespace": "default", "uid": "u-1"},
            "spec": {"nodeName": "edge-a", "containers": [
                {"name": "web", "image": "decloud-test/busybox:1"},
                {"name": "side", "image": "decloud-test/busybox:1"},
            ]},
        }))
        .unwrap()
    }

    fn running(ms: i64) -> Option<pb::ContainerState> {
        Some(pb::ContainerState {
            state: Some(State::Running(pb::Running {
                started_unix_millis: ms,
            })),
        })
    }

    const T0: i64 = 1_700_000_000_000;

    fn report() -> pb::PodStatus {
        pb::PodStatus {
            uid: "u-1".into(),
            namespace: "default".into(),
            name: "web".into(),
            phase: pb::PodPhase::Running as i32,
            pod_ip: "172.17.0.5".into(),
            start_unix_millis: T0,
            ready: true,
            containers_ready: true,
            containers: vec![pb::ContainerStatus {
                name: "web".into(),
                container_id: "abc123".into(),
                image: "decloud-test/busybox:1".into(),
                image_id: "sha256:feed".into(),
                restart_count: 2,
                ready: true,
                started: true,
                state: running(T0),
                last_state: Some(pb::ContainerState {
                    state: Some(State::Terminated(pb::Terminated {
                        exit_code: 137,
                        reason: "Error".into(),
                        message: "killed".into(),
                        started_unix_millis: T0 - 5000,
                        finished_unix_millis: T0 - 1000,
                    })),
                }),
            }],
            ..Default::default()
        }
    }

    fn host() -> std::net::IpAddr {
        "10.0.0.1".parse().unwrap()
    }

    fn net() -> Option<&'static PodNetwork> {
        static NET: std::sync::OnceLock<PodNetwork> = std::sync::OnceLock::new();
        Some(NET.get_or_init(|| PodNetwork::parse("172.17.0.0/16").unwrap()))
    }

    fn now() -> Timestamp {
        Timestamp::from_millisecond(T0 + 60_000).unwrap()
    }

    #[test]
    fn maps_a_running_pod() {
        let s = pod_status(&pod(), &report(), "docker", host(), net(), now());
        assert_eq!(s["phase"], "Running");
        assert_eq!(s["podIP"], "172.17.0.5");
        assert_eq!(s["hostIP"], "10.0.0.1");
        assert_eq!(s["startTime"], "2023-11-14T22:13:20Z");
        let web = &s["containerStatuses"][0];
        assert_eq!(web["containerID"], "docker://abc123");
        assert_eq!(web["imageID"], "sha256:feed");
        assert_eq!(web["restartCount"], 2);
        assert_eq!(web["state"]["running"]["startedAt"], "2023-11-14T22:13:20Z");
        assert_eq!(web["lastState"]["terminated"]["exitCode"], 137);
        assert_eq!(web["lastState"]["terminated"]["reason"], "Error");
        assert_eq!(
            web["lastState"]["terminated"]["containerID"],
            "docker://abc123"
        );
        // The unreported container waits to be created.
        let side = &s["containerStatuses"][1];
        assert_eq!(side["state"]["waiting"]["reason"], "ContainerCreating");
        let conds: Vec<(&str, &str)> = s["conditions"]
            .as_array()
            .unwrap()
            .iter()
            .map(|c| (c["type"].as_str().unwrap(), c["status"].as_str().unwrap()))
            .collect();
        assert_eq!(
            conds,
            vec![
                ("PodScheduled", "True"),
                ("Initialized", "True"),
                ("ContainersReady", "True"),
                ("Ready", "True")
            ]
        );
    }

    #[test]
    fn phases_and_readiness() {
        let cases = [
            (pb::PodPhase::Unspecified, true, "Pending", "True"),
            (pb::PodPhase::Pending, false, "Pending", "False"),
            (pb::PodPhase::Running, false, "Running", "False"),
            (pb::PodPhase::Succeeded, true, "Succeeded", "False"),
            (pb::PodPhase::Failed, true, "Failed", "False"),
        ];
        for (phase, ready, want_phase, want_ready) in cases {
            let mut r = report();
            r.phase = phase as i32;
            r.ready = ready;
            r.containers_ready = ready;
            let s = pod_status(&pod(), &r, "docker", host(), net(), now());
            assert_eq!(s["phase"], want_phase, "{phase:?}");
            assert_eq!(s["conditions"][3]["status"], want_ready, "{phase:?}");
        }
    }

    #[test]
    fn is_stable_and_keeps_transition_times() {
        let first = pod_status(&pod(), &report(), "docker", host(), net(), now());
        let mut p = pod();
        p.status = Some(serde_json::from_value(first.clone()).unwrap());
        let later = Timestamp::from_millisecond(T0 + 120_000).unwrap();
        let second = pod_status(&p, &report(), "docker", host(), net(), later);
        assert_eq!(first, second);
        let mut r = report();
        r.ready = false;
        let third = pod_status(&p, &r, "docker", host(), net(), later);
        assert_eq!(third["conditions"][3]["lastTransitionTime"], rfc3339(later));
        assert_eq!(
            third["conditions"][0]["lastTransitionTime"],
            first["conditions"][0]["lastTransitionTime"]
        );
    }

    #[test]
    fn ignores_a_bogus_pod_ip() {
        let mut r = report();
        r.pod_ip = "not an ip".into();
        let s = pod_status(&pod(), &r, "docker", host(), net(), now());
        assert!(s.get("podIP").is_none());
    }

    #[test]
    fn only_pod_network_addresses_are_published() {
        let wide = PodNetwork::parse("10.0.0.0/8").unwrap();
        let v6 = PodNetwork::parse("fd00::/64").unwrap();
        // (reported podIP, network announced, published?)
        let cases = [
            ("172.17.0.5", net(), true),
            ("172.17.255.254", net(), true),
            ("172.18.0.5", net(), false),
            ("172.17.0.5", None, false),
            ("169.254.169.254", net(), false),
            ("127.0.0.1", net(), false),
            ("0.0.0.0", net(), false),
            ("255.255.255.255", net(), false),
            ("224.0.0.1", net(), false),
            ("10.0.0.1", Some(&wide), false),
            ("10.0.0.2", Some(&wide), true),
            ("127.0.0.1", Some(&wide), false),
            ("fd00::5", Some(&v6), true),
            ("fe80::1", Some(&v6), false),
            ("::1", Some(&v6), false),
            ("::", Some(&v6), false),
            ("ff02::1", Some(&v6), false),
            ("::ffff:172.17.0.5", net(), false),
            ("not an ip", net(), false),
        ];
        for (ip, network, published) in cases {
            let mut r = report();
            r.pod_ip = ip.into();
            let s = pod_status(&pod(), &r, "docker", host(), network, now());
            assert_eq!(s.get("podIP").is_some(), published, "{ip} in {network:?}");
            if published {
                assert_eq!(s["podIPs"][0]["ip"], ip);
            }
        }
    }

    #[test]
    fn edge_strings_are_bounded() {
        let huge = "x".repeat(1 << 20);
        let mut r = report();
        r.message = huge.clone();
        r.reason = huge.clone();
        r.containers[0].image = huge.clone();
        r.containers[0].image_id = huge.clone();
        r.containers[0].container_id = huge.clone();
        r.containers[0].state = Some(pb::ContainerState {
            state: Some(State::Waiting(pb::Waiting {
                reason: huge.clone(),
                message: format!("é{huge}"),
            })),
        });
        r.containers[0].last_state = Some(pb::ContainerState {
            state: Some(State::Terminated(pb::Terminated {
                reason: huge.clone(),
                message: huge.clone(),
                ..Default::default()
            })),
        });
        let s = pod_status(&pod(), &r, "docker", host(), net(), now());
        let len = |v: &Value| v.as_str().unwrap().len();
        let c = &s["containerStatuses"][0];
        // (field, its bound)
        let cases = [
            (&s["message"], MAX_MESSAGE),
            (&s["reason"], MAX_REASON),
            (&c["image"], MAX_IMAGE),
            (&c["imageID"], MAX_IMAGE),
            (&c["containerID"], MAX_CONTAINER_ID + "docker://".len()),
            (&c["state"]["waiting"]["reason"], MAX_REASON),
            (&c["state"]["waiting"]["message"], MAX_MESSAGE),
            (&c["lastState"]["terminated"]["reason"], MAX_REASON),
            (&c["lastState"]["terminated"]["message"], MAX_MESSAGE),
        ];
        for (i, (v, max)) in cases.iter().enumerate() {
            assert!(
                len(v) <= *max && len(v) > *max / 2,
                "case {i}: {} > {max}",
                len(v)
            );
        }
        assert!(s.to_string().len() < 64 << 10);
    }

    #[test]
    fn refused_pods_fail() {
        let s = refused_status(&pod(), "Forbidden", "privileged", now());
        assert_eq!(s["phase"], "Failed");
        assert_eq!(s["reason"], "Forbidden");
        assert_eq!(s["conditions"][1]["reason"], "Forbidden");
    }
}
