//! TCP exposure over real loopback sockets, with a dialer that connects straight to local
//! echo "containers" instead of through an edge.

use std::collections::HashMap;

use futures::{FutureExt, future::BoxFuture};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use super::*;
use crate::{
    Backend, DialError, TunnelIo,
    routes::tests::{pod, routes, workload},
};

/// Dials `pod uid → local port`; unknown pods are refused, like a dead edge.
struct DirectDialer(HashMap<String, u16>);

impl TunnelDialer for DirectDialer {
    fn dial(&self, b: &Backend) -> BoxFuture<'static, Result<Box<dyn TunnelIo>, DialError>> {
        let port = self.0.get(&b.pod_uid).copied();
        let provider = b.provider.clone();
        async move {
            let port = port.ok_or(DialError::NotConnected(provider))?;
            let s = TcpStream::connect(("127.0.0.1", port))
                .await
                .map_err(|e| DialError::Refused(e.to_string()))?;
            Ok(Box::new(s) as Box<dyn TunnelIo>)
        }
        .boxed()
    }
}

/// An echo server on loopback; its port.
async fn echo_container() -> u16 {
    let l = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let port = l.local_addr().expect("addr").port();
    tokio::spawn(async move {
        while let Ok((s, _)) = l.accept().await {
            tokio::spawn(async move {
                let (mut r, mut w) = s.into_split();
                let _ = tokio::io::copy(&mut r, &mut w).await;
            });
        }
    });
    port
}

/// `n` consecutive free loopback ports.
fn free_ports(n: u16) -> u16 {
    for _ in 0..200 {
        let base = std::net::TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .expect("port")
            .port();
        if base < 65000
            && (base..base + n).all(|p| std::net::TcpListener::bind(("127.0.0.1", p)).is_ok())
        {
            return base;
        }
    }
    panic!("no {n} consecutive free ports");
}

fn tcp_workload(name: &str, request: Option<i32>) -> decloud_crds::Workload {
    let mut wl = workload(name, 7000, None);
    let e = wl.spec.expose.as_mut().expect("expose");
    e.protocol = Some(decloud_crds::ExposeProtocol::Tcp);
    e.tcp_port = request;
    wl
}

async fn round_trip(port: u16, payload: &[u8]) -> std::io::Result<Vec<u8>> {
    let mut s = TcpStream::connect(("127.0.0.1", port)).await?;
    s.write_all(payload).await?;
    s.shutdown().await?;
    let mut got = Vec::new();
    tokio::time::timeout(Duration::from_secs(5), s.read_to_end(&mut got))
        .await
        .map_err(|_| std::io::Error::other("timed out"))??;
    Ok(got)
}

#[tokio::test]
async fn assigned_ports_carry_bytes_with_failover_and_nothing_binds_outside_the_range() {
    let base = free_ports(3);
    let range = TcpPortRange {
        first: base,
        last: base + 1,
    };
    let live = echo_container().await;
    // Replica "a" sits on a dead edge (refused), "b" answers: every connection must reach b.
    let dialer = Arc::new(DirectDialer([("uid-echo-b".to_string(), live)].into()));
    let r = routes(
        vec![
            tcp_workload("echo", Some(i32::from(base) + 1)),
            tcp_workload("outside", Some(i32::from(base) + 2)),
        ],
        vec![
            pod("echo-a", "echo", "p1", true),
            pod("echo-b", "echo", "p2", true),
        ],
    );
    let tcp = TcpExposure {
        bind: IpAddr::from([127, 0, 0, 1]),
        range,
        per_namespace: 4,
    };
    let slots = Arc::new(Semaphore::new(16));
    let server = tokio::spawn(serve_tcp(
        tcp,
        r,
        dialer,
        GatewayLimits::default(),
        slots.clone(),
    ));
    let port = base + 1;
    let mut up = false;
    for _ in 0..50 {
        if TcpStream::connect(("127.0.0.1", port)).await.is_ok() {
            up = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(up, "the assigned port is listened on");
    let big: Vec<u8> = (0..(3 << 20)).map(|i: u32| (i % 251) as u8).collect();
    for _ in 0..4 {
        assert_eq!(
            round_trip(port, b"\x00\x01 not http").await.expect("echo"),
            b"\x00\x01 not http"
        );
    }
    assert_eq!(round_trip(port, &big).await.expect("3 MiB"), big);
    assert!(
        TcpStream::connect(("127.0.0.1", base + 2)).await.is_err(),
        "a port outside the range is never bound"
    );
    assert!(
        TcpStream::connect(("127.0.0.1", base)).await.is_err(),
        "a port nobody holds is not listened on"
    );
    // At the connection cap a client is closed without an answer.
    let _all = slots.clone().acquire_many_owned(16).await.expect("slots");
    assert_eq!(round_trip(port, b"x").await.unwrap_or_default(), b"");
    server.abort();
}
