//! A small HTTP/1.1 load generator on hyper-util's client: one connection per request
//! (`Connection: close`, as busybox httpd answers anyway), bounded in count and time.

use std::{
    convert::Infallible,
    net::SocketAddr,
    sync::{
        Arc,
        atomic::{AtomicU64, Ordering},
    },
    time::{Duration, Instant},
};

use anyhow::{Context as _, bail};
use bytes::Bytes;
use http_body::Frame;
use http_body_util::{BodyExt, Either, Empty, StreamBody};
use hyper_util::{
    client::legacy::{Client, connect::HttpConnector},
    rt::TokioExecutor,
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

/// Size of the zero-filled chunks an upload is sent in.
const UPLOAD_CHUNK: usize = 256 * 1024;

/// A request body: none, or `n` zero bytes streamed in [`UPLOAD_CHUNK`]s.
type UploadBody = Either<
    Empty<Bytes>,
    StreamBody<futures::stream::Iter<std::vec::IntoIter<Result<Frame<Bytes>, Infallible>>>>,
>;

fn zeros(len: u64) -> UploadBody {
    let chunk = Bytes::from(vec![0u8; UPLOAD_CHUNK]);
    let mut frames = Vec::new();
    let mut left = len;
    while left > 0 {
        let n = left.min(UPLOAD_CHUNK as u64) as usize;
        frames.push(Ok(Frame::data(chunk.slice(..n))));
        left -= n as u64;
    }
    Either::Right(StreamBody::new(futures::stream::iter(frames)))
}

/// One finished request.
#[derive(Debug, Clone, Copy)]
pub struct Response {
    /// HTTP status code.
    pub status: u16,
    /// Body bytes received (after de-chunking).
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
        let mut connector = HttpConnector::new();
        connector.set_nodelay(true);
        let client: Client<HttpConnector, UploadBody> = Client::builder(TokioExecutor::new())
            .pool_max_idle_per_host(0)
            .build(connector);
        let mut request = http::Request::builder()
            .method(method)
            .uri(format!("http://{}{path}", self.addr))
            .header(http::header::HOST, &self.host)
            .header(http::header::CONNECTION, "close")
            .header(http::header::USER_AGENT, "decloud-bench");
        let body = if body_len > 0 || method == "POST" {
            request = request
                .header(http::header::CONTENT_LENGTH, body_len)
                .header(http::header::CONTENT_TYPE, "application/octet-stream");
            zeros(body_len)
        } else {
            Either::Left(Empty::new())
        };
        let response = client.request(request.body(body)?).await?;
        let status = response.status().as_u16();
        let mut body = response.into_body();
        let mut body_bytes = 0u64;
        // Counted as it arrives: bulk downloads are not kept.
        while let Some(frame) = body.frame().await {
            if let Some(data) = frame?.data_ref() {
                body_bytes += data.len() as u64;
            }
        }
        Ok(Response { status, body_bytes })
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
