//! A small HTTP/1.1 load generator on raw tokio sockets: one connection per request
//! (`Connection: close`, as busybox httpd answers anyway), bounded in count and time.

use std::{
    net::SocketAddr,
    sync::{
        Arc,
        atomic::{AtomicU64, Ordering},
    },
    time::{Duration, Instant},
};

use anyhow::{Context as _, bail};
use tokio::{
    io::{AsyncReadExt, AsyncWriteExt},
    net::TcpStream,
};

use super::stats::Summary;

const REQUEST_TIMEOUT: Duration = Duration::from_secs(30);

/// Where requests go: an address and the Host header to send.
#[derive(Debug, Clone)]
pub struct Target {
    /// Address to connect to (only 127.0.0.1 or our own containers).
    pub addr: SocketAddr,
    /// Host header.
    pub host: String,
}

fn find(haystack: &[u8], needle: &[u8]) -> Option<usize> {
    haystack.windows(needle.len()).position(|w| w == needle)
}

/// One finished request.
#[derive(Debug, Clone, Copy)]
pub struct Response {
    /// HTTP status code.
    pub status: u16,
    /// Bytes received after the header.
    pub body_bytes: u64,
}

impl Target {
    /// `GET path`, reading the whole response.
    pub async fn get(&self, path: &str) -> anyhow::Result<Response> {
        self.request("GET", path, 0).await
    }

    /// `method path` with a body of `body_len` zero bytes, reading the whole response.
    pub async fn request(
        &self,
        method: &str,
        path: &str,
        body_len: u64,
    ) -> anyhow::Result<Response> {
        tokio::time::timeout(REQUEST_TIMEOUT, self.request_inner(method, path, body_len))
            .await
            .context("request timed out")?
    }

    async fn request_inner(
        &self,
        method: &str,
        path: &str,
        body_len: u64,
    ) -> anyhow::Result<Response> {
        let mut s = TcpStream::connect(self.addr).await?;
        s.set_nodelay(true)?;
        let mut head = format!(
            "{method} {path} HTTP/1.1\r\nHost: {}\r\nConnection: close\r\nUser-Agent: decloud-bench\r\n",
            self.host
        );
        if body_len > 0 || method == "POST" {
            head.push_str(&format!(
                "Content-Length: {body_len}\r\nContent-Type: application/octet-stream\r\n"
            ));
        }
        head.push_str("\r\n");
        s.write_all(head.as_bytes()).await?;
        if body_len > 0 {
            let chunk = vec![0u8; 256 * 1024];
            let mut left = body_len;
            while left > 0 {
                let n = left.min(chunk.len() as u64) as usize;
                s.write_all(&chunk[..n]).await?;
                left -= n as u64;
            }
        }
        let mut buf = vec![0u8; 256 * 1024];
        let mut header = Vec::new();
        let mut status = None;
        let mut body_bytes = 0u64;
        loop {
            let n = s.read(&mut buf).await?;
            if n == 0 {
                break;
            }
            if status.is_none() {
                header.extend_from_slice(&buf[..n]);
                // CGI answers may end their header with bare LFs.
                let end = find(&header, b"\r\n\r\n")
                    .map(|i| i + 4)
                    .or_else(|| find(&header, b"\n\n").map(|i| i + 2));
                if let Some(end) = end {
                    let text = String::from_utf8_lossy(&header[..end]);
                    status = text
                        .split_whitespace()
                        .nth(1)
                        .and_then(|c| c.parse::<u16>().ok());
                    if status.is_none() {
                        bail!("no HTTP status in {text:?}");
                    }
                    body_bytes += (header.len() - end) as u64;
                }
            } else {
                body_bytes += n as u64;
            }
        }
        Ok(Response {
            status: status.context("connection closed before a response")?,
            body_bytes,
        })
    }

    /// `count` sequential `GET path` requests: their latencies (failures are errors).
    pub async fn latencies(&self, path: &str, count: usize) -> anyhow::Result<Summary> {
        let mut samples = Vec::with_capacity(count);
        for _ in 0..count {
            let t = Instant::now();
            let r = self.get(path).await?;
            if r.status != 200 {
                bail!("GET {path} via {}: {}", self.addr, r.status);
            }
            samples.push(t.elapsed());
        }
        Ok(Summary::of(&samples))
    }

    /// `concurrency` workers issuing `GET path` for `window`: successful requests per second
    /// and the number of failures.
    pub async fn rate(&self, path: &str, concurrency: usize, window: Duration) -> (f64, u64) {
        let ok = Arc::new(AtomicU64::new(0));
        let failed = Arc::new(AtomicU64::new(0));
        let start = Instant::now();
        let deadline = start + window;
        let mut tasks = Vec::new();
        for _ in 0..concurrency {
            let (t, path, ok, failed) =
                (self.clone(), path.to_string(), ok.clone(), failed.clone());
            tasks.push(tokio::spawn(async move {
                while Instant::now() < deadline {
                    match t.get(&path).await {
                        Ok(r) if r.status == 200 => ok.fetch_add(1, Ordering::Relaxed),
                        _ => failed.fetch_add(1, Ordering::Relaxed),
                    };
                }
            }));
        }
        for t in tasks {
            let _ = t.await;
        }
        let secs = start.elapsed().as_secs_f64();
        (
            ok.load(Ordering::Relaxed) as f64 / secs,
            failed.load(Ordering::Relaxed),
        )
    }

    /// Download `path` `times` times; the best rate in Gbit/s.
    pub async fn download_gbps(&self, path: &str, times: usize) -> anyhow::Result<f64> {
        let mut best: f64 = 0.0;
        for _ in 0..times {
            let t = Instant::now();
            let r = self.get(path).await?;
            if r.status != 200 {
                bail!("GET {path}: {}", r.status);
            }
            best = best.max(r.body_bytes as f64 * 8.0 / t.elapsed().as_secs_f64() / 1e9);
        }
        Ok(best)
    }

    /// Upload `bytes` to `path` `times` times; the best rate in Gbit/s.
    pub async fn upload_gbps(&self, path: &str, bytes: u64, times: usize) -> anyhow::Result<f64> {
        let mut best: f64 = 0.0;
        for _ in 0..times {
            let t = Instant::now();
            let r = self.request("POST", path, bytes).await?;
            if r.status != 200 {
                bail!("POST {path}: {}", r.status);
            }
            best = best.max(bytes as f64 * 8.0 / t.elapsed().as_secs_f64() / 1e9);
        }
        Ok(best)
    }
}
