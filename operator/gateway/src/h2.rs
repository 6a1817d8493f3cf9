//! HTTP/2 on the HTTPS listener: a client that picks `h2` by ALPN is served by hyper's HTTP/2
//! server, and each of its requests is carried as HTTP/1.1 over a tunnel of its own to a ready
//! replica (apps speak HTTP/1; WebSockets keep using `http/1.1`, which the listener offers too).
//!
//! The same rules as the HTTP/1 path: the `:authority` (or `Host`) picks the Workload, the
//! gateway sets `X-Forwarded-For`/`-Proto`/`-Host` and drops what the client sent under those
//! names, no answer names a provider; a request for another host than the connection's SNI
//! gets 421. Bounded by [`MAX_STREAMS`] concurrent streams per
//! connection, a header list of at most the gateway's header limit, and keep-alive pings that
//! close a connection whose peer stopped answering.

use std::{convert::Infallible, net::SocketAddr, sync::Arc, time::Duration};

use bytes::Bytes;
use http::{HeaderName, HeaderValue, Request, Response, StatusCode, header};
use http_body_util::{BodyExt, Full, combinators::BoxBody};
use hyper::body::Incoming;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use tokio::io::{AsyncRead, AsyncWrite};

use crate::limits::GatewayLimits;
use crate::routes::{Route, Routes, bare_host};
use crate::seams::TunnelDialer;

/// What HTTP/2 connections share with the rest of the gateway.
pub(crate) struct H2 {
    pub(crate) routes: Routes,
    pub(crate) dialer: Arc<dyn TunnelDialer>,
    pub(crate) limits: GatewayLimits,
}

/// Concurrent streams one HTTP/2 connection may have open.
pub(crate) const MAX_STREAMS: u32 = 100;
/// How long a replica may take to send its response head.
const RESPONSE_HEAD_TIMEOUT: Duration = Duration::from_secs(60);

type Body = BoxBody<Bytes, hyper::Error>;

fn text(status: StatusCode, msg: String, retry_after: Option<u64>) -> Response<Body> {
    let mut rsp = Response::new(
        Full::new(Bytes::from(msg))
            .map_err(|never: Infallible| match never {})
            .boxed(),
    );
    *rsp.status_mut() = status;
    let h = rsp.headers_mut();
    h.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/plain; charset=utf-8"),
    );
    h.insert(header::SERVER, HeaderValue::from_static("decloud-gateway"));
    if let Some(s) = retry_after {
        h.insert(header::RETRY_AFTER, HeaderValue::from(s));
    }
    rsp
}

/// Serves one HTTP/2 connection (TLS already done) until it ends.
pub(crate) async fn serve_h2<S>(
    conn: S,
    peer: SocketAddr,
    sni: Option<String>,
    shared: Arc<H2>,
) -> std::io::Result<()>
where
    S: AsyncRead + AsyncWrite + Send + Unpin + 'static,
{
    let header_limit = u32::try_from(shared.limits.max_header_bytes).unwrap_or(u32::MAX);
    let service = hyper::service::service_fn(move |req: Request<Incoming>| {
        let (shared, sni) = (shared.clone(), sni.clone());
        async move { Ok::<_, Infallible>(forward(req, peer, sni.as_deref(), &shared).await) }
    });
    hyper::server::conn::http2::Builder::new(TokioExecutor::new())
        .timer(TokioTimer::new())
        .max_concurrent_streams(MAX_STREAMS)
        .max_header_list_size(header_limit)
        .keep_alive_interval(Some(Duration::from_secs(30)))
        .keep_alive_timeout(Duration::from_secs(20))
        .serve_connection(TokioIo::new(conn), service)
        .await
        .map_err(std::io::Error::other)
}

/// The host a request is for: `:authority`, else `Host`, lower-cased, without port or
/// trailing dot.
fn host_of(req: &Request<Incoming>) -> Option<(String, String)> {
    let raw = match req.uri().authority() {
        Some(a) => a.as_str().to_string(),
        None => req.headers().get(header::HOST)?.to_str().ok()?.to_string(),
    };
    Some((bare_host(&raw), raw))
}

async fn forward(
    mut req: Request<Incoming>,
    peer: SocketAddr,
    sni: Option<&str>,
    shared: &H2,
) -> Response<Body> {
    let retry = Some(shared.limits.retry_after_secs());
    let Some((host, raw_host)) = host_of(&req) else {
        return text(
            StatusCode::BAD_REQUEST,
            "the request names no host\n".into(),
            None,
        );
    };
    // A connection carries the requests of the host it was opened (and its certificate
    // checked) for, as on HTTP/1; others are told to connect anew (RFC 9110 421).
    if sni.map(|s| s.trim_end_matches('.')) != Some(host.as_str()) {
        return text(
            StatusCode::MISDIRECTED_REQUEST,
            format!("this connection serves another host than {host}\n"),
            None,
        );
    }
    let (workload, backends) = match shared.routes.resolve(&host) {
        Route::Unknown => {
            return text(
                StatusCode::NOT_FOUND,
                format!("no DeCloud workload is exposed as {host}\n"),
                None,
            );
        }
        Route::NoReady { workload, desired } => {
            return text(
                StatusCode::SERVICE_UNAVAILABLE,
                format!(
                    "workload {workload} has no ready replica (0/{desired} ready); try again shortly\n"
                ),
                retry,
            );
        }
        Route::Backends { workload, backends } => (workload, backends),
    };
    let mut tunnel = None;
    for backend in &backends {
        match shared.dialer.dial(backend).await {
            Ok(t) => {
                tunnel = Some(t);
                break;
            }
            Err(e) => {
                tracing::warn!(%workload, pod = %backend.pod, error = %e, reason = e.metric_label(), "replica unreachable; trying the next");
            }
        }
    }
    let Some(tunnel) = tunnel else {
        return text(
            StatusCode::SERVICE_UNAVAILABLE,
            format!(
                "no replica of workload {workload} could be reached ({} tried); try again shortly\n",
                backends.len()
            ),
            retry,
        );
    };
    let unavailable = || {
        text(
            StatusCode::BAD_GATEWAY,
            format!("workload {workload} did not answer\n"),
            None,
        )
    };
    let Ok((mut sender, conn)) = hyper::client::conn::http1::handshake(TokioIo::new(tunnel)).await
    else {
        return unavailable();
    };
    tokio::spawn(async move {
        let _ = conn.await;
    });
    // As HTTP/1.1 to the app: origin-form target, Host, the gateway's forwarding headers.
    let target = req
        .uri()
        .path_and_query()
        .map_or("/".to_string(), |p| p.as_str().to_string());
    *req.uri_mut() = match target.parse() {
        Ok(u) => u,
        Err(_) => {
            return text(
                StatusCode::BAD_REQUEST,
                "malformed request target\n".into(),
                None,
            );
        }
    };
    *req.version_mut() = http::Version::HTTP_11;
    let headers = req.headers_mut();
    for name in [
        "x-forwarded-for",
        "x-forwarded-proto",
        "x-forwarded-host",
        "forwarded",
    ] {
        headers.remove(name);
    }
    let Ok(host_value) = HeaderValue::from_str(&raw_host) else {
        return text(StatusCode::BAD_REQUEST, "malformed host\n".into(), None);
    };
    headers.insert(header::HOST, host_value.clone());
    headers.insert(
        "x-forwarded-for",
        HeaderValue::from_str(&peer.ip().to_canonical().to_string())
            .unwrap_or(HeaderValue::from_static("unknown")),
    );
    headers.insert("x-forwarded-proto", HeaderValue::from_static("https"));
    headers.insert("x-forwarded-host", host_value);
    match tokio::time::timeout(RESPONSE_HEAD_TIMEOUT, sender.send_request(req)).await {
        Ok(Ok(rsp)) => {
            let (mut parts, body) = rsp.into_parts();
            // Connection-specific headers do not exist in HTTP/2.
            for name in [
                header::CONNECTION,
                header::TRANSFER_ENCODING,
                header::UPGRADE,
                HeaderName::from_static("keep-alive"),
                HeaderName::from_static("proxy-connection"),
            ] {
                parts.headers.remove(name);
            }
            Response::from_parts(parts, body.boxed())
        }
        _ => unavailable(),
    }
}
