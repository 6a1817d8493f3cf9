//! The node's statistics for the kubelet API's `/stats/summary` and `/metrics/resource`: every
//! few seconds, the engine's real measurements of this edge's running DeCloud containers,
//! grouped by pod, sent to the operator as one `NodeStats`.

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::sync::mpsc;

use decloud_proto as pb;
use pb::edge_message::Kind as Out;

use crate::clock::now_millis;
use crate::runtime::{ContainerInfo, ContainerMeasurements, ContainerRuntime};

/// Measurements kept between two collections, for rates and the node's monotonic counter.
#[derive(Debug, Default)]
pub(crate) struct StatsCollector {
    /// Last CPU counter (ns) and when it was read, per container instance.
    last: HashMap<String, (u64, Instant)>,
    /// CPU (ns) of instances that are gone, so the node's counter never goes back.
    retired_cpu_nanos: u64,
    /// The node's last CPU counter and when it was read.
    node_last: Option<(u64, Instant)>,
}

/// `(now - before) / elapsed` in nanocores, 0 without an earlier reading.
fn nano_cores(before: Option<(u64, Instant)>, now: u64, at: Instant) -> u64 {
    let Some((was, then)) = before else { return 0 };
    let elapsed = at.saturating_duration_since(then).as_secs_f64();
    if elapsed <= 0.0 {
        return 0;
    }
    (now.saturating_sub(was) as f64 / elapsed) as u64
}

impl StatsCollector {
    /// Builds the node's statistics from `measured` (a running container and what the engine
    /// says of it), read at `at`. Pure but for the kept readings.
    pub(crate) fn build(
        &mut self,
        measured: Vec<(ContainerInfo, ContainerMeasurements)>,
        at: Instant,
        unix_millis: i64,
    ) -> pb::NodeStats {
        let ids: std::collections::HashSet<&str> =
            measured.iter().map(|(c, _)| c.id.as_str()).collect();
        let gone: Vec<String> = self
            .last
            .keys()
            .filter(|id| !ids.contains(id.as_str()))
            .cloned()
            .collect();
        for id in gone {
            if let Some((cpu, _)) = self.last.remove(&id) {
                self.retired_cpu_nanos = self.retired_cpu_nanos.saturating_add(cpu);
            }
        }
        let mut pods: BTreeMap<String, pb::PodStats> = BTreeMap::new();
        let mut node_mem = pb::MemoryStats::default();
        let mut node_net = pb::NetworkStats::default();
        let mut node_fs = pb::FsStats::default();
        let mut live_cpu = 0u64;
        for (c, m) in measured {
            let before = self.last.insert(c.id.clone(), (m.cpu_nanos, at));
            let cpu = pb::CpuStats {
                usage_nano_cores: nano_cores(before, m.cpu_nanos, at),
                usage_core_nano_seconds: m.cpu_nanos,
            };
            live_cpu = live_cpu.saturating_add(m.cpu_nanos);
            let memory = pb::MemoryStats {
                working_set_bytes: m.working_set_bytes,
                usage_bytes: m.usage_bytes,
                rss_bytes: m.rss_bytes,
                available_bytes: m.limit_bytes.saturating_sub(m.working_set_bytes),
            };
            let pod = pods
                .entry(c.pod_uid.clone())
                .or_insert_with(|| pb::PodStats {
                    uid: c.pod_uid.clone(),
                    namespace: c.pod_namespace.clone(),
                    name: c.pod_name.clone(),
                    start_unix_millis: c.started_unix_millis,
                    cpu: Some(pb::CpuStats::default()),
                    memory: Some(pb::MemoryStats::default()),
                    network: Some(pb::NetworkStats::default()),
                    containers: Vec::new(),
                });
            pod.start_unix_millis = pod.start_unix_millis.min(c.started_unix_millis);
            if let Some(p) = pod.cpu.as_mut() {
                p.usage_nano_cores += cpu.usage_nano_cores;
                p.usage_core_nano_seconds += cpu.usage_core_nano_seconds;
            }
            if let Some(p) = pod.memory.as_mut() {
                p.working_set_bytes += memory.working_set_bytes;
                p.usage_bytes += memory.usage_bytes;
                p.rss_bytes += memory.rss_bytes;
            }
            // The pod's containers share one network namespace: its counters, not a sum.
            if let Some(n) = pod.network.as_mut()
                && m.rx_bytes + m.tx_bytes > n.rx_bytes + n.tx_bytes
            {
                *n = pb::NetworkStats {
                    rx_bytes: m.rx_bytes,
                    tx_bytes: m.tx_bytes,
                    rx_errors: m.rx_errors,
                    tx_errors: m.tx_errors,
                };
            }
            node_mem.working_set_bytes += memory.working_set_bytes;
            node_mem.usage_bytes += memory.usage_bytes;
            node_mem.rss_bytes += memory.rss_bytes;
            node_fs.used_bytes += m.rootfs_used_bytes;
            if pod.containers.len() < pb::MAX_STATS_CONTAINERS {
                pod.containers.push(pb::ContainerStats {
                    name: c.container_name.clone(),
                    start_unix_millis: c.started_unix_millis,
                    cpu: Some(cpu),
                    memory: Some(memory),
                    rootfs: Some(pb::FsStats {
                        used_bytes: m.rootfs_used_bytes,
                        ..Default::default()
                    }),
                });
            }
        }
        for p in pods.values() {
            if let Some(n) = &p.network {
                node_net.rx_bytes += n.rx_bytes;
                node_net.tx_bytes += n.tx_bytes;
                node_net.rx_errors += n.rx_errors;
                node_net.tx_errors += n.tx_errors;
            }
        }
        let node_cpu = self.retired_cpu_nanos.saturating_add(live_cpu);
        let node_before = self.node_last.replace((node_cpu, at));
        pb::NodeStats {
            unix_millis,
            cpu: Some(pb::CpuStats {
                usage_nano_cores: nano_cores(node_before, node_cpu, at),
                usage_core_nano_seconds: node_cpu,
            }),
            memory: Some(node_mem),
            network: Some(node_net),
            fs: Some(node_fs),
            pods: pods.into_values().take(pb::MAX_STATS_PODS).collect(),
        }
    }

    /// Measures every running container of this edge now.
    pub(crate) async fn collect(&mut self, runtime: &dyn ContainerRuntime) -> pb::NodeStats {
        let mut measured = Vec::new();
        match runtime.list_containers().await {
            Ok(list) => {
                for c in list.into_iter().filter(|c| c.running) {
                    match runtime.measure(&c.id).await {
                        Ok(Some(m)) => measured.push((c, m)),
                        Ok(None) => {}
                        Err(e) => {
                            tracing::debug!(container_id = %c.id, error = %e, "cannot measure")
                        }
                    }
                }
            }
            Err(e) => tracing::debug!(error = %e, "cannot list containers for stats"),
        }
        self.build(measured, Instant::now(), now_millis())
    }
}

/// Sends the node's statistics every `interval` until the session's channel closes.
pub(crate) async fn report_periodically(
    runtime: Arc<dyn ContainerRuntime>,
    tx: mpsc::Sender<pb::EdgeMessage>,
    interval: Duration,
) {
    let mut collector = StatsCollector::default();
    let mut tick = tokio::time::interval(interval);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        let stats = collector.collect(runtime.as_ref()).await;
        let m = pb::EdgeMessage {
            kind: Some(Out::NodeStats(stats)),
        };
        if tx.send(m).await.is_err() {
            return;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn container(id: &str, pod: &str, name: &str) -> ContainerInfo {
        ContainerInfo {
            id: id.into(),
            pod_uid: pod.into(),
            pod_namespace: "default".into(),
            pod_name: format!("pod-{pod}"),
            container_name: name.into(),
            running: true,
            started_unix_millis: 1000,
            ..Default::default()
        }
    }

    fn measured(cpu: u64, ws: u64, rx: u64) -> ContainerMeasurements {
        ContainerMeasurements {
            cpu_nanos: cpu,
            usage_bytes: ws + 10,
            working_set_bytes: ws,
            rx_bytes: rx,
            ..Default::default()
        }
    }

    #[test]
    fn pods_sum_their_containers_and_the_node_counter_never_goes_back() {
        let mut c = StatsCollector::default();
        let t0 = Instant::now();
        let first = c.build(
            vec![
                (
                    container("a", "p1", "web"),
                    measured(1_000_000_000, 100, 50),
                ),
                (container("b", "p1", "side"), measured(500_000_000, 20, 0)),
                (container("c", "p2", "app"), measured(2_000_000_000, 7, 9)),
            ],
            t0,
            1,
        );
        assert_eq!(first.pods.len(), 2);
        let p1 = &first.pods[0];
        assert_eq!(p1.containers.len(), 2);
        assert_eq!(p1.cpu.unwrap().usage_core_nano_seconds, 1_500_000_000);
        assert_eq!(p1.memory.unwrap().working_set_bytes, 120);
        assert_eq!(p1.network.unwrap().rx_bytes, 50, "shared netns, not summed");
        assert_eq!(first.cpu.unwrap().usage_core_nano_seconds, 3_500_000_000);
        assert_eq!(
            first.cpu.unwrap().usage_nano_cores,
            0,
            "no rate from one reading"
        );
        assert_eq!(first.memory.unwrap().working_set_bytes, 127);
        assert_eq!(first.network.unwrap().rx_bytes, 59);

        // One second later, p2's container is gone and a's used half a core.
        let second = c.build(
            vec![
                (
                    container("a", "p1", "web"),
                    measured(1_500_000_000, 100, 60),
                ),
                (container("b", "p1", "side"), measured(500_000_000, 20, 0)),
            ],
            t0 + Duration::from_secs(1),
            2,
        );
        assert_eq!(second.pods.len(), 1);
        let web = &second.pods[0].containers[0];
        assert_eq!(web.cpu.unwrap().usage_nano_cores, 500_000_000);
        assert_eq!(
            second.cpu.unwrap().usage_core_nano_seconds,
            4_000_000_000,
            "what gone containers used stays counted"
        );
        assert_eq!(second.cpu.unwrap().usage_nano_cores, 500_000_000);
    }
}
