//! The node's statistics as kubelet renders them: the `stats/v1alpha1` Summary of
//! `/stats/summary`, the Prometheus text of `/metrics/resource`, and the v1 PodList of `/pods`.

use std::fmt::Write as _;
use std::sync::Arc;

use decloud_proto as pb;
use jiff::Timestamp;
use k8s_openapi::api::core::v1::Pod;
use kube::ResourceExt;
use kube::runtime::reflector::Store;
use serde_json::{Value, json};

use crate::time::rfc3339;

fn time_of(millis: i64) -> String {
    Timestamp::from_millisecond(millis)
        .map(rfc3339)
        .unwrap_or_else(|_| rfc3339(Timestamp::UNIX_EPOCH))
}

fn cpu(c: Option<&pb::CpuStats>, time: &str) -> Value {
    let c = c.cloned().unwrap_or_default();
    json!({"time": time, "usageNanoCores": c.usage_nano_cores,
        "usageCoreNanoSeconds": c.usage_core_nano_seconds})
}

fn memory(m: Option<&pb::MemoryStats>, time: &str) -> Value {
    let m = m.cloned().unwrap_or_default();
    let mut v = json!({"time": time, "usageBytes": m.usage_bytes,
        "workingSetBytes": m.working_set_bytes, "rssBytes": m.rss_bytes,
        "pageFaults": 0, "majorPageFaults": 0});
    if m.available_bytes > 0 {
        v["availableBytes"] = json!(m.available_bytes);
    }
    v
}

fn network(n: Option<&pb::NetworkStats>, time: &str) -> Value {
    let n = n.cloned().unwrap_or_default();
    let eth0 = json!({"name": "eth0", "rxBytes": n.rx_bytes, "rxErrors": n.rx_errors,
        "txBytes": n.tx_bytes, "txErrors": n.tx_errors});
    let mut v = eth0.clone();
    v["time"] = json!(time);
    v["interfaces"] = json!([eth0]);
    v
}

fn fs(f: Option<&pb::FsStats>, time: &str) -> Value {
    let f = f.cloned().unwrap_or_default();
    let mut v = json!({"time": time, "usedBytes": f.used_bytes});
    if f.capacity_bytes > 0 {
        v["capacityBytes"] = json!(f.capacity_bytes);
        v["availableBytes"] = json!(f.available_bytes);
    }
    v
}

/// kubelet's `/stats/summary` (`stats/v1alpha1` Summary) of `node`.
pub(crate) fn summary(node: &str, start: Option<&str>, s: &pb::NodeStats) -> Value {
    let time = time_of(s.unix_millis);
    let pods: Vec<Value> = s
        .pods
        .iter()
        .map(|p| {
            let containers: Vec<Value> = p
                .containers
                .iter()
                .map(|c| {
                    json!({
                        "name": c.name,
                        "startTime": time_of(c.start_unix_millis),
                        "cpu": cpu(c.cpu.as_ref(), &time),
                        "memory": memory(c.memory.as_ref(), &time),
                        "rootfs": fs(c.rootfs.as_ref(), &time),
                    })
                })
                .collect();
            json!({
                "podRef": {"name": p.name, "namespace": p.namespace, "uid": p.uid},
                "startTime": time_of(p.start_unix_millis),
                "containers": containers,
                "cpu": cpu(p.cpu.as_ref(), &time),
                "memory": memory(p.memory.as_ref(), &time),
                "network": network(p.network.as_ref(), &time),
            })
        })
        .collect();
    json!({
        "node": {
            "nodeName": node,
            "startTime": start.unwrap_or(&time),
            "cpu": cpu(s.cpu.as_ref(), &time),
            "memory": memory(s.memory.as_ref(), &time),
            "network": network(s.network.as_ref(), &time),
            "fs": fs(s.fs.as_ref(), &time),
            "systemContainers": [],
        },
        "pods": pods,
    })
}

/// `x` as Go's Prometheus text writer prints a float (`strconv` 'g', shortest): plain up to
/// exponent 5, else `1.234567e+06`.
fn go_float(x: f64) -> String {
    if x == 0.0 {
        return "0".into();
    }
    if !x.is_finite() {
        return if x.is_nan() {
            "NaN".into()
        } else if x > 0.0 {
            "+Inf".into()
        } else {
            "-Inf".into()
        };
    }
    let sci = format!("{x:e}");
    let (mantissa, exp) = sci.split_once('e').unwrap_or((&sci, "0"));
    let exp: i32 = exp.parse().unwrap_or(0);
    if !(-4..6).contains(&exp) {
        let sign = if exp < 0 { '-' } else { '+' };
        format!("{mantissa}e{sign}{:02}", exp.abs())
    } else {
        format!("{x}")
    }
}

/// Escapes a Prometheus label value.
fn label(v: &str) -> String {
    v.replace('\\', r"\\")
        .replace('"', "\\\"")
        .replace('\n', "\\n")
}

/// kubelet's `/metrics/resource` (Prometheus text, names, help, order and timestamps as kubelet
/// serves them) of one node's statistics.
pub(crate) fn resource_metrics(s: &pb::NodeStats) -> String {
    let ts = s.unix_millis;
    let secs = |ns: u64| ns as f64 / 1e9;
    let mut out = String::new();
    let mut family = |name: &str, help: &str, kind: &str, samples: Vec<(String, String)>| {
        let _ = writeln!(out, "# HELP {name} {help}");
        let _ = writeln!(out, "# TYPE {name} {kind}");
        for (labels, value) in samples {
            let _ = writeln!(out, "{name}{labels} {value}");
        }
    };
    let mut containers: Vec<(&pb::PodStats, &pb::ContainerStats)> = s
        .pods
        .iter()
        .flat_map(|p| p.containers.iter().map(move |c| (p, c)))
        .collect();
    containers.sort_by(|(p, c), (q, d)| {
        (&c.name, &p.namespace, &p.name).cmp(&(&d.name, &q.namespace, &q.name))
    });
    let clabels = |p: &pb::PodStats, c: &pb::ContainerStats| {
        format!(
            "{{container=\"{}\",namespace=\"{}\",pod=\"{}\"}}",
            label(&c.name),
            label(&p.namespace),
            label(&p.name)
        )
    };
    family(
        "container_cpu_usage_seconds_total",
        "[STABLE] Cumulative cpu time consumed by the container in core-seconds",
        "counter",
        containers
            .iter()
            .map(|(p, c)| {
                let ns = c.cpu.as_ref().map_or(0, |c| c.usage_core_nano_seconds);
                (clabels(p, c), format!("{} {ts}", go_float(secs(ns))))
            })
            .collect(),
    );
    family(
        "container_memory_working_set_bytes",
        "[STABLE] Current working set of the container in bytes",
        "gauge",
        containers
            .iter()
            .map(|(p, c)| {
                let ws = c.memory.as_ref().map_or(0, |m| m.working_set_bytes);
                (clabels(p, c), format!("{} {ts}", go_float(ws as f64)))
            })
            .collect(),
    );
    family(
        "container_start_time_seconds",
        "[STABLE] Start time of the container since unix epoch in seconds",
        "gauge",
        containers
            .iter()
            .filter(|(_, c)| c.start_unix_millis > 0)
            .map(|(p, c)| {
                let start = c.start_unix_millis as f64 / 1000.0;
                (clabels(p, c), go_float(start))
            })
            .collect(),
    );
    let node_cpu = s.cpu.as_ref().map_or(0, |c| c.usage_core_nano_seconds);
    family(
        "node_cpu_usage_seconds_total",
        "[STABLE] Cumulative cpu time consumed by the node in core-seconds",
        "counter",
        vec![(String::new(), format!("{} {ts}", go_float(secs(node_cpu))))],
    );
    let node_ws = s.memory.as_ref().map_or(0, |m| m.working_set_bytes);
    family(
        "node_memory_working_set_bytes",
        "[STABLE] Current working set of the node in bytes",
        "gauge",
        vec![(String::new(), format!("{} {ts}", go_float(node_ws as f64)))],
    );
    let mut pods: Vec<&pb::PodStats> = s.pods.iter().collect();
    pods.sort_by(|p, q| (&p.namespace, &p.name).cmp(&(&q.namespace, &q.name)));
    let plabels = |p: &pb::PodStats| {
        format!(
            "{{namespace=\"{}\",pod=\"{}\"}}",
            label(&p.namespace),
            label(&p.name)
        )
    };
    family(
        "pod_cpu_usage_seconds_total",
        "[STABLE] Cumulative cpu time consumed by the pod in core-seconds",
        "counter",
        pods.iter()
            .map(|p| {
                let ns = p.cpu.as_ref().map_or(0, |c| c.usage_core_nano_seconds);
                (plabels(p), format!("{} {ts}", go_float(secs(ns))))
            })
            .collect(),
    );
    family(
        "pod_memory_working_set_bytes",
        "[STABLE] Current working set of the pod in bytes",
        "gauge",
        pods.iter()
            .map(|p| {
                let ws = p.memory.as_ref().map_or(0, |m| m.working_set_bytes);
                (plabels(p), format!("{} {ts}", go_float(ws as f64)))
            })
            .collect(),
    );
    family(
        "resource_scrape_error",
        "[STABLE] 1 if there was an error while getting container metrics, 0 otherwise",
        "gauge",
        vec![(String::new(), "0".into())],
    );
    family(
        "scrape_error",
        "[ALPHA] 1 if there was an error while getting container metrics, 0 otherwise",
        "gauge",
        vec![(String::new(), "0".into())],
    );
    out
}

/// The pods bound to `node`, as kubelet's `/pods` lists them (a v1 PodList).
pub(crate) fn pod_list(pods: &Store<Pod>, node: &str) -> Value {
    let mut items: Vec<Arc<Pod>> = pods
        .state()
        .into_iter()
        .filter(|p| p.spec.as_ref().and_then(|s| s.node_name.as_deref()) == Some(node))
        .collect();
    items.sort_by_key(|p| (p.namespace(), p.name_any()));
    let items: Vec<Value> = items
        .iter()
        .map(|p| {
            let mut v = serde_json::to_value(p.as_ref()).unwrap_or(Value::Null);
            v["apiVersion"] = json!("v1");
            v["kind"] = json!("Pod");
            v
        })
        .collect();
    json!({"kind": "PodList", "apiVersion": "v1", "metadata": {}, "items": items})
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::stats::store::own_figures;
    use k8s_openapi::api::core::v1::{Container, PodSpec};
    use kube::api::ObjectMeta;

    fn pod(name: &str, uid: &str, node: &str) -> Arc<Pod> {
        Arc::new(Pod {
            metadata: ObjectMeta {
                name: Some(name.into()),
                namespace: Some("default".into()),
                uid: Some(uid.into()),
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
        })
    }

    fn stats() -> pb::NodeStats {
        let container = |name: &str| pb::ContainerStats {
            name: name.into(),
            start_unix_millis: 1_700_000_000_000,
            cpu: Some(pb::CpuStats {
                usage_nano_cores: 1_000_000,
                usage_core_nano_seconds: 2_500_000_000,
            }),
            memory: Some(pb::MemoryStats {
                working_set_bytes: 12_345_678,
                usage_bytes: 20_000_000,
                ..Default::default()
            }),
            rootfs: None,
        };
        let p = |name: &str, uid: &str| pb::PodStats {
            uid: uid.into(),
            namespace: "default".into(),
            name: name.into(),
            start_unix_millis: 1_700_000_000_000,
            cpu: Some(pb::CpuStats {
                usage_nano_cores: 1_000_000,
                usage_core_nano_seconds: 2_500_000_000,
            }),
            memory: Some(pb::MemoryStats {
                working_set_bytes: 12_345_678,
                ..Default::default()
            }),
            network: None,
            containers: vec![container("app"), container("smuggled")],
        };
        pb::NodeStats {
            unix_millis: 1_700_000_010_000,
            cpu: Some(pb::CpuStats {
                usage_nano_cores: 1_000_000,
                usage_core_nano_seconds: 2_500_000_000,
            }),
            memory: Some(pb::MemoryStats {
                working_set_bytes: 12_345_678,
                ..Default::default()
            }),
            network: None,
            fs: None,
            pods: vec![p("mine", "u1"), p("theirs", "u2"), p("mine", "forged-uid")],
        }
    }

    #[test]
    fn only_own_pods_and_their_containers_are_kept() {
        let pods = [pod("mine", "u1", "edge-a"), pod("theirs", "u2", "edge-b")];
        let (kept, dropped) = own_figures(stats(), "edge-a", |_, name| {
            pods.iter().find(|p| p.name_any() == name).cloned()
        });
        assert_eq!(dropped, 2);
        assert_eq!(kept.pods.len(), 1);
        assert_eq!(kept.pods[0].uid, "u1");
        let names: Vec<&str> = kept.pods[0]
            .containers
            .iter()
            .map(|c| c.name.as_str())
            .collect();
        assert_eq!(names, ["app"]);
    }

    #[test]
    fn resource_metrics_read_as_kubelets() {
        let pods = [pod("mine", "u1", "edge-a")];
        let (kept, _) = own_figures(stats(), "edge-a", |_, _| Some(pods[0].clone()));
        let text = resource_metrics(&kept);
        let want = "\
# HELP container_cpu_usage_seconds_total [STABLE] Cumulative cpu time consumed by the container in core-seconds
# TYPE container_cpu_usage_seconds_total counter
container_cpu_usage_seconds_total{container=\"app\",namespace=\"default\",pod=\"mine\"} 2.5 1700000010000
# HELP container_memory_working_set_bytes [STABLE] Current working set of the container in bytes
# TYPE container_memory_working_set_bytes gauge
container_memory_working_set_bytes{container=\"app\",namespace=\"default\",pod=\"mine\"} 1.2345678e+07 1700000010000
# HELP container_start_time_seconds [STABLE] Start time of the container since unix epoch in seconds
# TYPE container_start_time_seconds gauge
container_start_time_seconds{container=\"app\",namespace=\"default\",pod=\"mine\"} 1.7e+09
# HELP node_cpu_usage_seconds_total [STABLE] Cumulative cpu time consumed by the node in core-seconds
# TYPE node_cpu_usage_seconds_total counter
node_cpu_usage_seconds_total 2.5 1700000010000
# HELP node_memory_working_set_bytes [STABLE] Current working set of the node in bytes
# TYPE node_memory_working_set_bytes gauge
node_memory_working_set_bytes 1.2345678e+07 1700000010000
# HELP pod_cpu_usage_seconds_total [STABLE] Cumulative cpu time consumed by the pod in core-seconds
# TYPE pod_cpu_usage_seconds_total counter
pod_cpu_usage_seconds_total{namespace=\"default\",pod=\"mine\"} 2.5 1700000010000
# HELP pod_memory_working_set_bytes [STABLE] Current working set of the pod in bytes
# TYPE pod_memory_working_set_bytes gauge
pod_memory_working_set_bytes{namespace=\"default\",pod=\"mine\"} 1.2345678e+07 1700000010000
# HELP resource_scrape_error [STABLE] 1 if there was an error while getting container metrics, 0 otherwise
# TYPE resource_scrape_error gauge
resource_scrape_error 0
# HELP scrape_error [ALPHA] 1 if there was an error while getting container metrics, 0 otherwise
# TYPE scrape_error gauge
scrape_error 0
";
        assert_eq!(text, want);
    }

    #[test]
    fn floats_print_as_go_prints_them() {
        for (x, s) in [
            (0.0, "0"),
            (2.5, "2.5"),
            (123456.0, "123456"),
            (1234567.0, "1.234567e+06"),
            (0.0001, "0.0001"),
            (0.00001, "1e-05"),
        ] {
            assert_eq!(go_float(x), s);
        }
    }

    #[test]
    fn summary_has_kubelets_shape() {
        let v = summary("edge-a", None, &stats());
        assert_eq!(v["node"]["nodeName"], "edge-a");
        assert_eq!(v["node"]["cpu"]["usageCoreNanoSeconds"], 2_500_000_000u64);
        assert_eq!(v["pods"][0]["podRef"]["uid"], "u1");
        assert_eq!(
            v["pods"][0]["containers"][0]["memory"]["workingSetBytes"],
            12_345_678
        );
        assert_eq!(v["node"]["network"]["interfaces"][0]["name"], "eth0");
    }
}
