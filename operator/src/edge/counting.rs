//! Accounting of the edge connections: the bytes every edge costs on the wire, and how many
//! connections one source address holds.

use std::io;
use std::net::IpAddr;
use std::pin::Pin;
use std::task::{Context, Poll};

use prometheus_client::metrics::counter::Counter;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::TcpStream;
use tonic::transport::server::{Connected, TcpConnectInfo};

use crate::slots::{Slot, Slots};

/// Open edge connections per source address, capped: one address (a botnet node, or a NAT
/// in front of many honest edges: size the cap for that) cannot hold every socket and task.
pub(crate) type ConnectionLimits = Slots<IpAddr>;

/// One open connection of an address; released when dropped.
pub(crate) type ConnectionSlot = Slot<IpAddr>;

/// A TCP connection that adds the bytes it reads and writes (TLS records included, TCP/IP
/// headers not) to two counters.
#[derive(Debug)]
pub(crate) struct CountingStream {
    inner: TcpStream,
    received: Counter,
    sent: Counter,
    _slot: Option<ConnectionSlot>,
}

impl CountingStream {
    /// Wraps `inner`, counting into `received` and `sent`; holds `slot` while open.
    pub(crate) fn new(
        inner: TcpStream,
        received: Counter,
        sent: Counter,
        slot: Option<ConnectionSlot>,
    ) -> Self {
        Self {
            inner,
            received,
            sent,
            _slot: slot,
        }
    }
}

impl Connected for CountingStream {
    type ConnectInfo = TcpConnectInfo;

    fn connect_info(&self) -> Self::ConnectInfo {
        self.inner.connect_info()
    }
}

impl AsyncRead for CountingStream {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let before = buf.filled().len();
        let poll = Pin::new(&mut self.inner).poll_read(cx, buf);
        if let Poll::Ready(Ok(())) = poll {
            self.received.inc_by((buf.filled().len() - before) as u64);
        }
        poll
    }
}

impl AsyncWrite for CountingStream {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let poll = Pin::new(&mut self.inner).poll_write(cx, buf);
        if let Poll::Ready(Ok(n)) = poll {
            self.sent.inc_by(n as u64);
        }
        poll
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        let poll = Pin::new(&mut self.inner).poll_write_vectored(cx, bufs);
        if let Poll::Ready(Ok(n)) = poll {
            self.sent.inc_by(n as u64);
        }
        poll
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    use tokio::net::TcpListener;

    #[tokio::test]
    async fn counts_both_directions_over_a_real_socket() {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let peer = tokio::spawn(async move {
            let mut s = TcpStream::connect(addr).await.unwrap();
            s.write_all(b"hello, operator").await.unwrap();
            let mut back = [0u8; 3];
            s.read_exact(&mut back).await.unwrap();
            back
        });
        let (conn, _) = listener.accept().await.unwrap();
        let (received, sent) = (Counter::default(), Counter::default());
        let mut counted = CountingStream::new(conn, received.clone(), sent.clone(), None);
        let mut buf = [0u8; 15];
        counted.read_exact(&mut buf).await.unwrap();
        counted.write_all(b"ack").await.unwrap();
        assert_eq!(&peer.await.unwrap(), b"ack");
        assert_eq!(received.get(), 15);
        assert_eq!(sent.get(), 3);
        assert_eq!(
            counted.connect_info().remote_addr().map(|a| a.ip()),
            Some(addr.ip())
        );
    }
}
