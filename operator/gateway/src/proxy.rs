//! The public HTTP listener: reads a request head to learn the Host, picks a ready replica and
//! splices the client connection with a tunnel to it.
//!
//! Past the first request head the gateway copies bytes, so keep-alive, chunked and large
//! bodies, and upgraded connections (WebSocket) pass untouched. A connection stays with the
//! replica it was given, as with any layer-4 balancer after routing.

use std::{sync::Arc, time::Duration};

use tokio::{
    io::{AsyncReadExt, AsyncWriteExt},
    net::{TcpListener, TcpStream},
};

use crate::{Route, Routes, TunnelDialer};

/// Largest request head the gateway reads before routing.
const MAX_HEAD: usize = 64 * 1024;
/// Splice buffer per direction: one tunnel frame's worth, so bulk data moves in big frames.
const COPY_BUFFER: usize = 64 * 1024;
/// How long a client may take to send its request head.
const HEAD_TIMEOUT: Duration = Duration::from_secs(10);

/// Serves the gateway on `listener` until the task is dropped.
pub async fn serve_gateway(listener: TcpListener, routes: Routes, dialer: Arc<dyn TunnelDialer>) {
    loop {
        let (conn, peer) = match listener.accept().await {
            Ok(c) => c,
            Err(e) => {
                tracing::warn!(error = %e, "gateway accept failed");
                tokio::time::sleep(Duration::from_millis(50)).await;
                continue;
            }
        };
        let _ = conn.set_nodelay(true);
        let routes = routes.clone();
        let dialer = dialer.clone();
        tokio::spawn(async move {
            if let Err(e) = handle(conn, &routes, dialer.as_ref()).await {
                tracing::debug!(%peer, error = %e, "gateway connection ended with an error");
            }
        });
    }
}

async fn handle(
    mut conn: TcpStream,
    routes: &Routes,
    dialer: &dyn TunnelDialer,
) -> std::io::Result<()> {
    let head = match tokio::time::timeout(HEAD_TIMEOUT, read_head(&mut conn)).await {
        Ok(Ok(Some(head))) => head,
        Ok(Ok(None)) => return Ok(()),
        Ok(Err(e)) => return Err(e),
        Err(_) => return respond(&mut conn, 408, "request head not received in time\n").await,
    };
    let host = match host_of(&head) {
        Ok(h) => h,
        Err(msg) => return respond(&mut conn, 400, &format!("{msg}\n")).await,
    };
    match routes.resolve(&host) {
        Route::Unknown => {
            respond(
                &mut conn,
                404,
                &format!("no DeCloud workload is exposed as {host}\n"),
            )
            .await
        }
        Route::NoReady { workload, desired } => respond(
            &mut conn,
            503,
            &format!(
                "workload {workload} has no ready replica (0/{desired} ready); try again shortly\n"
            ),
        )
        .await,
        Route::Backends { workload, backends } => {
            let mut last_error = String::new();
            for backend in &backends {
                match dialer.dial(backend).await {
                    Ok(mut tunnel) => {
                        tracing::debug!(%workload, pod = %backend.pod, "gateway connection routed");
                        tunnel.write_all(&head).await?;
                        tokio::io::copy_bidirectional_with_sizes(
                            &mut conn,
                            &mut tunnel,
                            COPY_BUFFER,
                            COPY_BUFFER,
                        )
                        .await?;
                        return Ok(());
                    }
                    Err(e) => {
                        tracing::warn!(%workload, pod = %backend.pod, error = %e, "replica unreachable; trying the next");
                        last_error = e.to_string();
                    }
                }
            }
            respond(
                &mut conn,
                503,
                &format!(
                    "no replica of workload {workload} could be reached ({} tried; last error: {last_error})\n",
                    backends.len()
                ),
            )
            .await
        }
    }
}

/// Reads until the end of the first request head; `None` if the client closed first.
async fn read_head(conn: &mut TcpStream) -> std::io::Result<Option<Vec<u8>>> {
    let mut buf = Vec::with_capacity(1024);
    let mut chunk = [0u8; 4096];
    loop {
        let n = conn.read(&mut chunk).await?;
        if n == 0 {
            return Ok(None);
        }
        buf.extend_from_slice(&chunk[..n]);
        if buf.windows(4).any(|w| w == b"\r\n\r\n") {
            return Ok(Some(buf));
        }
        if buf.len() > MAX_HEAD {
            return Err(std::io::Error::new(
                std::io::ErrorKind::InvalidData,
                "request head too large",
            ));
        }
    }
}

/// The Host of a request head, lower-cased and without port.
fn host_of(head: &[u8]) -> Result<String, &'static str> {
    let mut headers = [httparse::EMPTY_HEADER; 64];
    let mut req = httparse::Request::new(&mut headers);
    match req.parse(head) {
        Ok(httparse::Status::Complete(_)) => {}
        Ok(httparse::Status::Partial) | Err(_) => return Err("malformed HTTP request"),
    }
    let host = req
        .headers
        .iter()
        .find(|h| h.name.eq_ignore_ascii_case("host"))
        .map(|h| String::from_utf8_lossy(h.value).trim().to_ascii_lowercase())
        .ok_or("the request has no Host header")?;
    let host = match host.rsplit_once(':') {
        Some((h, port)) if port.chars().all(|c| c.is_ascii_digit()) => h.to_string(),
        _ => host,
    };
    Ok(host.trim_end_matches('.').to_string())
}

async fn respond(conn: &mut TcpStream, status: u16, body: &str) -> std::io::Result<()> {
    let reason = match status {
        400 => "Bad Request",
        404 => "Not Found",
        408 => "Request Timeout",
        _ => "Service Unavailable",
    };
    let msg = format!(
        "HTTP/1.1 {status} {reason}\r\ncontent-type: text/plain; charset=utf-8\r\ncontent-length: {}\r\nconnection: close\r\nserver: decloud-gateway\r\n\r\n{body}",
        body.len()
    );
    conn.write_all(msg.as_bytes()).await?;
    conn.shutdown().await
}

#[cfg(test)]
mod tests;
