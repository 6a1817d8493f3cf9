//! Entry points that feed hostile bytes through the operator's input handling, shared by the
//! cargo-fuzz targets in `fuzz/` and by the seeded property tests below (which run in every
//! `cargo test`, so the suite exercises them even where no nightly toolchain is installed).
//!
//! Each must return normally for every input: a panic is a bug.

use decloud_proto as pb;
use jiff::Timestamp;
use k8s_openapi::api::core::v1::Pod;
use pb::edge_message::Kind;
use prost::Message;

use crate::edge::HelloInfo;
use crate::pods::{Disposition, disposition};

fn sample_pod() -> Pod {
    serde_json::from_value(serde_json::json!({
        "metadata": {"name": "p", "namespace": "default", "uid": "u1"},
        "spec": {"nodeName": "edge-a", "containers": [
            {"name": "main", "image": "busybox"},
            {"name": "side", "image": "busybox"}
        ]}
    }))
    .unwrap_or_default()
}

/// Decodes `data` as an `EdgeMessage` and runs what the operator does with each kind before
/// touching the API (name validation, Hello digest, report → pod status translation).
pub fn edge_message(data: &[u8]) {
    let Ok(msg) = pb::EdgeMessage::decode(data) else {
        return;
    };
    match msg.kind {
        Some(Kind::Hello(h)) => {
            let _ = crate::provider::valid_provider_name(&h.provider_name);
            let _ = HelloInfo::from_hello(&h);
            let now = Timestamp::from_second(1_700_000_000).unwrap();
            for report in &h.pods {
                let _ = crate::pods::pod_status(
                    &sample_pod(),
                    report,
                    "docker",
                    std::net::Ipv4Addr::LOCALHOST.into(),
                    None,
                    now,
                );
            }
        }
        Some(Kind::PodStatus(report)) => {
            let now = Timestamp::from_second(1_700_000_000).unwrap();
            let _ = crate::pods::pod_status(
                &sample_pod(),
                &report,
                "docker",
                std::net::Ipv4Addr::LOCALHOST.into(),
                None,
                now,
            );
        }
        Some(Kind::Availability(a)) => {
            let _ = crate::edge::EdgeAvailability::from_proto(&a).state(1);
        }
        Some(
            Kind::Heartbeat(_)
            | Kind::PodGone(_)
            | Kind::LogChunk(_)
            | Kind::PodEvent(_)
            | Kind::NodeStats(_),
        )
        | None => {}
    }
}

/// Parses `data` as a Pod (JSON) and runs the pod bridge's decision on it: the forbidden-pod
/// checks and the translation into the edge's `PodSpec`, which must survive a protobuf round
/// trip.
pub fn pod_spec(data: &[u8]) {
    let Ok(pod) = serde_json::from_slice::<Pod>(data) else {
        return;
    };
    if let Disposition::Run(spec) = disposition(&pod, false, None, None) {
        let bytes = spec.encode_to_vec();
        let back = pb::PodSpec::decode(bytes.as_slice()).expect("own encoding decodes");
        assert_eq!(back, spec);
        let _ = crate::pods::spec_hash(&spec);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::rngs::StdRng;
    use rand::{Rng, SeedableRng};

    const ITERATIONS: usize = 20_000;

    fn mutate(rng: &mut StdRng, seed: &[u8]) -> Vec<u8> {
        let mut v = seed.to_vec();
        for _ in 0..rng.random_range(1..8) {
            match rng.random_range(0..4) {
                0 if !v.is_empty() => {
                    let i = rng.random_range(0..v.len());
                    v[i] = rng.random();
                }
                1 if !v.is_empty() => {
                    let i = rng.random_range(0..v.len());
                    v.truncate(i);
                }
                2 => {
                    let i = rng.random_range(0..=v.len());
                    let junk: Vec<u8> =
                        (0..rng.random_range(1..16)).map(|_| rng.random()).collect();
                    v.splice(i..i, junk);
                }
                _ => {
                    // Duplicate a slice (repeated fields, nested lengths).
                    if !v.is_empty() {
                        let a = rng.random_range(0..v.len());
                        let b = rng.random_range(a..v.len().min(a + 64) + 1).min(v.len());
                        let copy = v[a..b].to_vec();
                        v.extend(copy);
                    }
                }
            }
        }
        v
    }

    fn edge_seeds() -> Vec<Vec<u8>> {
        let report = pb::PodStatus {
            uid: "u1".into(),
            namespace: "default".into(),
            name: "p".into(),
            phase: 2,
            containers: vec![pb::ContainerStatus {
                name: "main".into(),
                state: Some(pb::ContainerState {
                    state: Some(pb::container_state::State::Terminated(pb::Terminated {
                        exit_code: 1,
                        started_unix_millis: i64::MAX,
                        finished_unix_millis: i64::MIN,
                        ..Default::default()
                    })),
                }),
                ..Default::default()
            }],
            start_unix_millis: -1,
            ..Default::default()
        };
        [
            Kind::Hello(pb::Hello {
                provider_name: "alice".into(),
                pods: vec![report.clone()],
                ..Default::default()
            }),
            Kind::PodStatus(report),
            Kind::Heartbeat(pb::Heartbeat {
                seq: 1,
                sent_unix_millis: 2,
            }),
        ]
        .into_iter()
        .map(|k| pb::EdgeMessage { kind: Some(k) }.encode_to_vec())
        .collect()
    }

    #[test]
    fn edge_messages_never_panic_the_operator() {
        let mut rng = StdRng::seed_from_u64(0xdec10d);
        let seeds = edge_seeds();
        for seed in &seeds {
            edge_message(seed);
        }
        for i in 0..ITERATIONS {
            let input = if i % 4 == 0 {
                (0..rng.random_range(0..256))
                    .map(|_| rng.random())
                    .collect()
            } else {
                mutate(&mut rng, &seeds[i % seeds.len()])
            };
            edge_message(&input);
        }
    }

    #[test]
    fn pod_specs_never_panic_the_bridge() {
        let mut rng = StdRng::seed_from_u64(0x90d5);
        let seed = serde_json::json!({
            "metadata": {"name": "p", "namespace": "default", "uid": "u1"},
            "spec": {"nodeName": "edge-a", "restartPolicy": "OnFailure",
                "terminationGracePeriodSeconds": 5,
                "containers": [{"name": "main", "image": "busybox", "command": ["sh"],
                    "env": [{"name": "A", "value": "1"}],
                    "ports": [{"containerPort": 8080}],
                    "resources": {"limits": {"cpu": "500m", "memory": "64Mi"}},
                    "readinessProbe": {"httpGet": {"path": "/", "port": 8080}}}]}
        })
        .to_string()
        .into_bytes();
        pod_spec(&seed);
        for _ in 0..ITERATIONS / 4 {
            pod_spec(&mutate(&mut rng, &seed));
        }
    }
}
