//! Readiness probes (`httpGet`, `tcpSocket`, `exec`), run by the edge like the kubelet runs them.

use std::sync::Arc;
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::sync::mpsc;

use decloud_proto as pb;
use pb::probe::Handler;

use crate::runtime::{ContainerRuntime, ProbeTarget};

/// Runs one probe attempt; true when it passed.
pub async fn run_once<R: ContainerRuntime + ?Sized>(
    runtime: &R,
    target: ProbeTarget<'_>,
    probe: &pb::Probe,
) -> bool {
    let timeout = Duration::from_secs(u64::from(probe.timeout_seconds.max(1)));
    match &probe.handler {
        Some(Handler::HttpGet(h)) => {
            tokio::time::timeout(timeout, http_get(target.pod_ip, h.port, &h.path))
                .await
                .unwrap_or(false)
        }
        Some(Handler::TcpSocket(t)) => tokio::time::timeout(
            timeout,
            TcpStream::connect((target.pod_ip, port_u16(t.port))),
        )
        .await
        .is_ok_and(|r| r.is_ok()),
        Some(Handler::Exec(e)) => runtime
            .exec(target.container_id, &e.command, timeout)
            .await
            .is_ok_and(|code| code == 0),
        // A probe without a handler cannot fail.
        None => true,
    }
}

fn port_u16(p: u32) -> u16 {
    u16::try_from(p).unwrap_or(0)
}

/// A minimal HTTP/1.0 GET: success is a status in 200..400, as in Kubernetes.
async fn http_get(ip: &str, port: u32, path: &str) -> bool {
    let Ok(mut s) = TcpStream::connect((ip, port_u16(port))).await else {
        return false;
    };
    let path = if path.is_empty() { "/" } else { path };
    let req = format!(
        "GET {path} HTTP/1.0\r\nHost: {ip}:{port}\r\nUser-Agent: decloud-edge-probe\r\nAccept: */*\r\n\r\n"
    );
    if s.write_all(req.as_bytes()).await.is_err() {
        return false;
    }
    let mut buf = [0u8; 64];
    let mut n = 0;
    while n < 12 {
        match s.read(&mut buf[n..]).await {
            Ok(0) | Err(_) => break,
            Ok(k) => n += k,
        }
    }
    parse_status(&buf[..n]).is_some_and(|code| (200..400).contains(&code))
}

fn parse_status(head: &[u8]) -> Option<u16> {
    let line = std::str::from_utf8(head).ok()?;
    let mut parts = line.split_whitespace();
    let version = parts.next()?;
    if !version.starts_with("HTTP/") {
        return None;
    }
    parts.next()?.get(..3)?.parse().ok()
}

/// Result of a probe loop: container `slot` of the pod is now (not) ready.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ReadinessChange {
    /// Index of the container in the pod spec.
    pub slot: usize,
    /// Container id the probe ran against (stale results are ignored).
    pub container_id: String,
    /// New readiness.
    pub ready: bool,
}

/// Probes forever with the probe's period and thresholds and reports only changes.
/// Starts not ready; the caller aborts the task when the container stops.
pub async fn readiness_loop(
    runtime: Arc<dyn ContainerRuntime>,
    slot: usize,
    container_id: String,
    pod_ip: String,
    probe: pb::Probe,
    changes: mpsc::UnboundedSender<ReadinessChange>,
) {
    let period = Duration::from_secs(u64::from(probe.period_seconds.max(1)));
    let success_threshold = probe.success_threshold.max(1);
    let failure_threshold = probe.failure_threshold.max(1);
    tokio::time::sleep(Duration::from_secs(u64::from(probe.initial_delay_seconds))).await;
    let (mut ready, mut successes, mut failures) = (false, 0u32, 0u32);
    let mut attempts = 0u32;
    loop {
        let target = ProbeTarget {
            container_id: &container_id,
            pod_ip: &pod_ip,
        };
        if runtime.probe(target, &probe).await {
            successes += 1;
            failures = 0;
        } else {
            failures += 1;
            successes = 0;
        }
        let next = if successes >= success_threshold {
            true
        } else if failures >= failure_threshold {
            false
        } else {
            ready
        };
        if next != ready {
            ready = next;
            let change = ReadinessChange {
                slot,
                container_id: container_id.clone(),
                ready,
            };
            if changes.send(change).is_err() {
                return;
            }
        }
        tokio::time::sleep(next_wait(ready, attempts, period)).await;
        attempts = attempts.saturating_add(1);
    }
}

/// The pause before the next readiness probe. Once ready: the probe's period. Until then a
/// short, doubling interval (100 ms, 200 ms, … up to the period, at most 1 s): a server that
/// is up 150 ms after its container starts is seen ~50 ms later, not a whole period later.
/// Every replacement placed at failover waits on this first success.
fn next_wait(ready: bool, attempt: u32, period: Duration) -> Duration {
    if ready {
        return period;
    }
    Duration::from_millis(100)
        .saturating_mul(1u32 << attempt.min(10))
        .min(period)
        .min(Duration::from_secs(1))
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::net::TcpListener;

    #[test]
    fn probes_fast_until_first_ready_then_every_period() {
        let ms = Duration::from_millis;
        let ten_s = Duration::from_secs(10);
        let waits: Vec<_> = (0..7).map(|a| next_wait(false, a, ten_s)).collect();
        assert_eq!(
            waits,
            [
                ms(100),
                ms(200),
                ms(400),
                ms(800),
                ms(1000),
                ms(1000),
                ms(1000)
            ]
        );
        assert_eq!(next_wait(true, 0, ten_s), ten_s);
        assert_eq!(next_wait(true, 9, ten_s), ten_s);
        // A period shorter than the ramp caps it.
        assert_eq!(next_wait(false, 3, ms(500)), ms(500));
        assert_eq!(next_wait(false, u32::MAX, ten_s), ms(1000));
    }

    #[test]
    fn status_lines() {
        assert_eq!(parse_status(b"HTTP/1.0 200 OK\r\n"), Some(200));
        assert_eq!(parse_status(b"HTTP/1.1 404 Not Found"), Some(404));
        assert_eq!(parse_status(b"garbage"), None);
        assert_eq!(parse_status(b""), None);
    }

    async fn serve_once(reply: &'static str) -> u16 {
        let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = l.local_addr().unwrap().port();
        tokio::spawn(async move {
            while let Ok((mut s, _)) = l.accept().await {
                let mut buf = [0u8; 512];
                let _ = s.read(&mut buf).await;
                let _ = s.write_all(reply.as_bytes()).await;
            }
        });
        port
    }

    #[tokio::test]
    async fn http_get_accepts_2xx_3xx_only() {
        let ok = serve_once("HTTP/1.0 200 OK\r\n\r\nhi").await;
        let redirect = serve_once("HTTP/1.0 302 Found\r\n\r\n").await;
        let bad = serve_once("HTTP/1.0 503 Unavailable\r\n\r\n").await;
        assert!(http_get("127.0.0.1", ok.into(), "/").await);
        assert!(http_get("127.0.0.1", redirect.into(), "/").await);
        assert!(!http_get("127.0.0.1", bad.into(), "/").await);
        // Nothing listens on a just-freed port.
        let closed = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = closed.local_addr().unwrap().port();
        drop(closed);
        assert!(!http_get("127.0.0.1", port.into(), "/").await);
    }
}
