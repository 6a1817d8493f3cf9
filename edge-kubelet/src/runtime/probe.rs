//! The network checks of readiness probes (`httpGet`, `tcpSocket`), aimed at the pod IP from
//! the edge host as the kubelet aims them. `exec` probes go through the runtime
//! (`ContainerRuntime::probe`, which calls the checks here); when to probe is the pod side's business.

use std::time::Duration;

use bytes::Bytes;
use http_body_util::Empty;
use hyper::header;
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;
use tokio::net::TcpStream;

use decloud_proto as pb;

/// How long one attempt of `probe` may take.
pub(super) fn attempt_timeout(probe: &pb::Probe) -> Duration {
    Duration::from_secs(u64::from(probe.timeout_seconds.max(1)))
}

/// An `httpGet` probe: passes on a status in 200..400 within `timeout`.
pub(super) async fn http_get(pod_ip: &str, h: &pb::HttpGetAction, timeout: Duration) -> bool {
    tokio::time::timeout(timeout, get_status_ok(pod_ip, h.port, &h.path))
        .await
        .unwrap_or(false)
}

/// A `tcpSocket` probe: passes when the port accepts a connection within `timeout`.
pub(super) async fn tcp_connect(pod_ip: &str, t: &pb::TcpSocketAction, timeout: Duration) -> bool {
    tokio::time::timeout(timeout, TcpStream::connect((pod_ip, port_u16(t.port))))
        .await
        .is_ok_and(|r| r.is_ok())
}

fn port_u16(p: u32) -> u16 {
    u16::try_from(p).unwrap_or(0)
}

/// GET `path` on `ip:port`: success is a status in 200..400, as in Kubernetes (redirects are
/// not followed; a 3xx passes).
async fn get_status_ok(ip: &str, port: u32, path: &str) -> bool {
    let host = if ip.contains(':') {
        format!("[{ip}]")
    } else {
        ip.to_string()
    };
    let path = if path.starts_with('/') {
        path.to_string()
    } else {
        format!("/{path}")
    };
    let Ok(uri) = format!("http://{host}:{}{path}", port_u16(port)).parse::<hyper::Uri>() else {
        return false;
    };
    let Ok(request) = hyper::Request::get(uri)
        .header(header::USER_AGENT, "decloud-edge-probe")
        .header(header::ACCEPT, "*/*")
        .body(Empty::<Bytes>::new())
    else {
        return false;
    };
    let mut http = HttpConnector::new();
    http.set_nodelay(true);
    // Like kubelet's prober: one connection per probe, none left open in the pod.
    let client = Client::builder(TokioExecutor::new())
        .pool_max_idle_per_host(0)
        .build(http);
    client
        .request(request)
        .await
        .is_ok_and(|r| (200..400).contains(&r.status().as_u16()))
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    use tokio::net::TcpListener;

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
        assert!(get_status_ok("127.0.0.1", ok.into(), "/").await);
        assert!(get_status_ok("127.0.0.1", redirect.into(), "/").await);
        assert!(!get_status_ok("127.0.0.1", bad.into(), "/").await);
        // Nothing listens on a just-freed port.
        let closed = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = closed.local_addr().unwrap().port();
        drop(closed);
        assert!(!get_status_ok("127.0.0.1", port.into(), "/").await);
    }
}
