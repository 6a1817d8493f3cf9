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

/// An `httpGet` probe: passes on a status in 200..400 within `timeout`; else says why, in
/// kubelet's words ("HTTP probe failed with statuscode: 503").
pub(super) async fn http_get(
    pod_ip: &str,
    h: &pb::HttpGetAction,
    timeout: Duration,
) -> Result<(), String> {
    match tokio::time::timeout(timeout, get_status(pod_ip, h.port, &h.path)).await {
        Ok(Ok(code)) if (200..400).contains(&code) => Ok(()),
        Ok(Ok(code)) => Err(format!("HTTP probe failed with statuscode: {code}")),
        Ok(Err(e)) => Err(format!("Get \"{}\": {e}", url(pod_ip, h.port, &h.path))),
        Err(_) => Err(format!(
            "Get \"{}\": context deadline exceeded (Client.Timeout exceeded while awaiting headers)",
            url(pod_ip, h.port, &h.path)
        )),
    }
}

/// A `tcpSocket` probe: passes when the port accepts a connection within `timeout`.
pub(super) async fn tcp_connect(
    pod_ip: &str,
    t: &pb::TcpSocketAction,
    timeout: Duration,
) -> Result<(), String> {
    let addr = format!("{}:{}", host_of(pod_ip), port_u16(t.port));
    match tokio::time::timeout(timeout, TcpStream::connect((pod_ip, port_u16(t.port)))).await {
        Ok(Ok(_)) => Ok(()),
        Ok(Err(e)) => Err(format!("dial tcp {addr}: connect: {}", io_words(&e))),
        Err(_) => Err(format!("dial tcp {addr}: i/o timeout")),
    }
}

/// Go's words for the common connect errors, as kubelet's messages carry them.
fn io_words(e: &std::io::Error) -> String {
    match e.kind() {
        std::io::ErrorKind::ConnectionRefused => "connection refused".into(),
        _ => e.to_string(),
    }
}

fn host_of(ip: &str) -> String {
    if ip.contains(':') {
        format!("[{ip}]")
    } else {
        ip.to_string()
    }
}

fn url(ip: &str, port: u32, path: &str) -> String {
    let path = if path.starts_with('/') {
        path.to_string()
    } else {
        format!("/{path}")
    };
    format!("http://{}:{}{path}", host_of(ip), port_u16(port))
}

fn port_u16(p: u32) -> u16 {
    u16::try_from(p).unwrap_or(0)
}

/// GET `path` on `ip:port` and the status it answered (redirects are not followed; the
/// caller decides, as Kubernetes does, that 200..400 passes).
async fn get_status(ip: &str, port: u32, path: &str) -> Result<u16, String> {
    let uri = url(ip, port, path)
        .parse::<hyper::Uri>()
        .map_err(|e| e.to_string())?;
    let request = hyper::Request::get(uri)
        .header(header::USER_AGENT, "decloud-edge-probe")
        .header(header::ACCEPT, "*/*")
        .body(Empty::<Bytes>::new())
        .map_err(|e| e.to_string())?;
    let mut http = HttpConnector::new();
    http.set_nodelay(true);
    // Like kubelet's prober: one connection per probe, none left open in the pod.
    let client = Client::builder(TokioExecutor::new())
        .pool_max_idle_per_host(0)
        .build(http);
    match client.request(request).await {
        Ok(r) => Ok(r.status().as_u16()),
        Err(e) => {
            // hyper's connect errors carry the io error as their source.
            let mut source: Option<&(dyn std::error::Error + 'static)> = Some(&e);
            while let Some(s) = source {
                if let Some(io) = s.downcast_ref::<std::io::Error>() {
                    return Err(format!(
                        "dial tcp {}:{}: connect: {}",
                        host_of(ip),
                        port_u16(port),
                        io_words(io)
                    ));
                }
                source = s.source();
            }
            Err(e.to_string())
        }
    }
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
        let probe = |port: u16| pb::HttpGetAction {
            path: "/".into(),
            port: port.into(),
        };
        let t = Duration::from_secs(5);
        assert_eq!(http_get("127.0.0.1", &probe(ok), t).await, Ok(()));
        assert_eq!(http_get("127.0.0.1", &probe(redirect), t).await, Ok(()));
        assert_eq!(
            http_get("127.0.0.1", &probe(bad), t).await,
            Err("HTTP probe failed with statuscode: 503".into())
        );
        // Nothing listens on a just-freed port.
        let closed = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = closed.local_addr().unwrap().port();
        drop(closed);
        assert_eq!(
            http_get("127.0.0.1", &probe(port), t).await,
            Err(format!(
                "Get \"http://127.0.0.1:{port}/\": dial tcp 127.0.0.1:{port}: connect: connection refused"
            ))
        );
        assert_eq!(
            tcp_connect("127.0.0.1", &pb::TcpSocketAction { port: port.into() }, t).await,
            Err(format!(
                "dial tcp 127.0.0.1:{port}: connect: connection refused"
            ))
        );
    }
}
