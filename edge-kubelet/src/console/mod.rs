//! The volunteer's console: a local web page served by the agent on a loopback address.
//!
//! It shows what the machine lends (connected or not, which apps run, CPU, memory and disk
//! used against the offer, resource-hours given, reliability, availability and schedule) and
//! lets the volunteer pause, resume, drain and change the offer. What the buttons do sits
//! behind [`ConsoleActions`].
//!
//! Who may use it: whoever holds the token in the state folder (`console-token`, mode 0600,
//! readable by root and the agent only), given once in the URL (`/?token=…`, as Jupyter does)
//! and then kept in an HttpOnly, SameSite=Strict cookie. Every POST also carries a per-process
//! CSRF token (form field or `X-CSRF-Token`), and a request whose `Host` is not a loopback
//! address is refused, so a web page the volunteer visits can neither post to the console
//! nor read it through DNS rebinding. Tokens are compared in constant time; bodies are capped
//! at 4 KiB and requests in flight at 16.

mod page;

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use axum::Router;
use axum::extract::{DefaultBodyLimit, Query, Request, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use parking_lot::Mutex;
use serde::Deserialize;
use subtle::ConstantTimeEq;
use tokio::sync::Semaphore;
use tokio_util::sync::CancellationToken;

use crate::error::{Error, Result};
use crate::local::EdgeReport;

/// File holding the console's access token, in the state folder.
pub(crate) const TOKEN_FILE: &str = "console-token";
/// Name of the session cookie.
const COOKIE: &str = "decloud_console";
/// Largest request body accepted (the offer form is a few dozen bytes).
const MAX_BODY: usize = 4096;
/// Requests served at once.
const MAX_IN_FLIGHT: usize = 16;
/// Longest value of one offer field.
const MAX_FIELD: usize = 32;

/// A new offer as typed into the console's form (validated by the implementation).
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize)]
pub struct OfferForm {
    /// CPU, e.g. `2`, `1.5`, `500m`.
    #[serde(default)]
    pub cpu: String,
    /// Memory, e.g. `4Gi`.
    #[serde(default)]
    pub memory: String,
    /// Ephemeral storage, e.g. `20Gi`.
    #[serde(default)]
    pub storage: String,
    /// Most pods at once.
    #[serde(default)]
    pub pods: String,
}

/// Where the agent stands, as the console shows it.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct LendingState {
    /// e.g. `available`, `paused`, `draining`.
    pub state: String,
    /// The lending schedule in words, if one is set.
    pub schedule: Option<String>,
}

/// What the console's buttons and form do. Implementations must answer quickly (start the
/// work, do not wait for a drain to finish) and may be called concurrently; the `Ok` text is
/// shown to the volunteer, as is the `Err` text (so say what to do about it).
#[async_trait::async_trait]
pub trait ConsoleActions: Send + Sync + 'static {
    /// Stop taking new work; running pods stay.
    async fn pause(&self) -> std::result::Result<String, String>;
    /// Take work again.
    async fn resume(&self) -> std::result::Result<String, String>;
    /// Move this machine's pods elsewhere (make-before-break), then stop taking work.
    async fn drain(&self) -> std::result::Result<String, String>;
    /// Where the agent stands now.
    fn availability(&self) -> LendingState;
    /// Applies a new offer to the running agent and reports it to the operator.
    async fn set_offer(&self, form: OfferForm) -> std::result::Result<String, String>;
}

/// What the console reads and acts on.
struct Console {
    token: String,
    csrf: String,
    latest: Arc<Mutex<EdgeReport>>,
    actions: Arc<dyn ConsoleActions>,
    /// The last action's outcome, shown above the page: (ok, text).
    flash: Mutex<Option<(bool, String)>>,
    in_flight: Semaphore,
}

/// The access token of the console of `state_dir`, made (random, mode 0600) if missing.
pub(crate) fn token(state_dir: &Path) -> Result<String> {
    let path = state_dir.join(TOKEN_FILE);
    if let Ok(t) = std::fs::read_to_string(&path) {
        let t = t.trim().to_string();
        if t.len() == 64 && t.bytes().all(|b| b.is_ascii_hexdigit()) {
            return Ok(t);
        }
    }
    let t = random_hex();
    write_private(&path, &t).map_err(|e| Error::StateFile {
        path: path.display().to_string(),
        message: format!("cannot write the console token: {e}"),
    })?;
    Ok(t)
}

/// The console URL with its token, for `edge-kubelet console-url`.
pub fn url_with_token(state_dir: &Path) -> Result<String> {
    let report = crate::local::read_report(state_dir)?;
    if report.console_url.is_empty() {
        return Err(Error::InvalidInput(format!(
            "the agent using {} serves no console (started with --console-listen off?)",
            state_dir.display()
        )));
    }
    let t = std::fs::read_to_string(state_dir.join(TOKEN_FILE)).map_err(|e| {
        Error::InvalidInput(format!(
            "cannot read {}: {e} (run as the user the agent runs as, e.g. root)",
            state_dir.join(TOKEN_FILE).display()
        ))
    })?;
    Ok(format!("{}?token={}", report.console_url, t.trim()))
}

fn random_hex() -> String {
    let bytes: [u8; 32] = rand::random();
    hex::encode(bytes)
}

fn write_private(path: &Path, text: &str) -> std::io::Result<()> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    let tmp = path.with_extension("tmp");
    let mut f = std::fs::OpenOptions::new()
        .create(true)
        .truncate(true)
        .write(true)
        .mode(0o600)
        .open(&tmp)?;
    f.write_all(text.as_bytes())?;
    std::fs::rename(&tmp, path)
}

fn same(a: &str, b: &str) -> bool {
    a.len() == b.len() && bool::from(a.as_bytes().ct_eq(b.as_bytes()))
}

/// Whether `addr` may serve the console without `--unsafe-console-any-address`.
pub(crate) fn check_listen(addr: SocketAddr, unsafe_any: bool) -> Result<()> {
    if addr.ip().is_loopback() || unsafe_any {
        return Ok(());
    }
    Err(Error::InvalidInput(format!(
        "--console-listen {addr}: the console controls this machine's lending and serves on \
         a loopback address only (127.0.0.1, ::1); reach it remotely through an SSH tunnel, or \
         pass --unsafe-console-any-address to expose it (token-protected, but plain HTTP)"
    )))
}

/// Binds the console's listener; its URL (without token).
pub(crate) async fn bind(addr: SocketAddr) -> Result<(tokio::net::TcpListener, String)> {
    let listener = tokio::net::TcpListener::bind(addr)
        .await
        .map_err(|e| Error::InvalidInput(format!("--console-listen {addr}: {e}")))?;
    let local = listener
        .local_addr()
        .map_err(|e| Error::InvalidInput(format!("--console-listen {addr}: {e}")))?;
    Ok((listener, format!("http://{local}/")))
}

/// Serves the console on `listener` until `shutdown`.
pub(crate) async fn serve(
    listener: tokio::net::TcpListener,
    state_dir: PathBuf,
    latest: Arc<Mutex<EdgeReport>>,
    actions: Arc<dyn ConsoleActions>,
    shutdown: CancellationToken,
) -> Result<()> {
    let console = Arc::new(Console {
        token: token(&state_dir)?,
        csrf: random_hex(),
        latest,
        actions,
        flash: Mutex::new(None),
        in_flight: Semaphore::new(MAX_IN_FLIGHT),
    });
    axum::serve(listener, router(console))
        .with_graceful_shutdown(async move { shutdown.cancelled().await })
        .await
        .map_err(|e| Error::Runtime(format!("console: {e}")))
}

fn router(console: Arc<Console>) -> Router {
    Router::new()
        .route("/", get(index))
        .route("/live", get(live))
        .route("/pause", post(pause))
        .route("/resume", post(resume))
        .route("/drain", post(drain))
        .route("/offer", post(offer))
        .layer(middleware::from_fn_with_state(console.clone(), guard))
        .layer(DefaultBodyLimit::max(MAX_BODY))
        .with_state(console)
}

fn plain(status: StatusCode, text: &str) -> Response {
    (
        status,
        [
            (header::CONTENT_TYPE, "text/plain; charset=utf-8"),
            (header::CACHE_CONTROL, "no-store"),
        ],
        format!("{text}\n"),
    )
        .into_response()
}

fn cookie_token(headers: &HeaderMap) -> Option<String> {
    headers
        .get_all(header::COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .find_map(|kv| {
            let (k, v) = kv.trim().split_once('=')?;
            (k == COOKIE).then(|| v.to_string())
        })
}

/// Whether `host` (the Host header) names a loopback address: the browser was pointed at
/// this machine, not at a name an attacker's DNS resolves here (rebinding).
fn loopback_host(host: &str) -> bool {
    let name = match host.rsplit_once(':') {
        Some((name, port)) if port.bytes().all(|b| b.is_ascii_digit()) => name,
        _ => host,
    };
    let name = name.trim_start_matches('[').trim_end_matches(']');
    name == "localhost"
        || name
            .parse::<std::net::IpAddr>()
            .is_ok_and(|ip| ip.is_loopback())
}

/// Loopback Host, a slot, and (but for the token exchange) the session cookie; POSTs also
/// the CSRF token and, when the browser sends one, a same-origin `Origin`.
async fn guard(State(c): State<Arc<Console>>, req: Request, next: Next) -> Response {
    let Ok(_slot) = c.in_flight.try_acquire() else {
        return plain(
            StatusCode::SERVICE_UNAVAILABLE,
            "too many console requests at once",
        );
    };
    let headers = req.headers();
    let host = headers
        .get(header::HOST)
        .and_then(|h| h.to_str().ok())
        .unwrap_or("");
    if !loopback_host(host) {
        return plain(
            StatusCode::FORBIDDEN,
            "the console answers only at a loopback address (http://127.0.0.1:PORT/)",
        );
    }
    let authed = cookie_token(headers).is_some_and(|t| same(&t, &c.token));
    if !authed {
        // Only the page itself may be reached without the cookie, to exchange the URL's token.
        if req.method() == axum::http::Method::GET && req.uri().path() == "/" {
            return next.run(req).await;
        }
        return plain(
            StatusCode::UNAUTHORIZED,
            "not signed in: open the URL `edge-kubelet console-url` prints (it carries the token)",
        );
    }
    if req.method() == axum::http::Method::POST {
        if let Some(origin) = headers.get(header::ORIGIN).and_then(|o| o.to_str().ok())
            && origin != format!("http://{host}")
        {
            return plain(StatusCode::FORBIDDEN, "cross-origin request refused");
        }
        let header_ok = headers
            .get("x-csrf-token")
            .and_then(|v| v.to_str().ok())
            .is_some_and(|t| same(t, &c.csrf));
        if !header_ok {
            // The token is then in the form body: read it (bounded) and hand the body on.
            let (parts, body) = req.into_parts();
            let Ok(bytes) = axum::body::to_bytes(body, MAX_BODY).await else {
                return plain(StatusCode::PAYLOAD_TOO_LARGE, "request body over 4 KiB");
            };
            let form_ok = form_field(&bytes, "csrf").is_some_and(|t| same(&t, &c.csrf));
            if !form_ok {
                return plain(
                    StatusCode::FORBIDDEN,
                    "missing or wrong CSRF token: reload the console page and try again",
                );
            }
            let req = Request::from_parts(parts, axum::body::Body::from(bytes));
            return next.run(req).await;
        }
    }
    next.run(req).await
}

fn form_field(body: &[u8], name: &str) -> Option<String> {
    serde_urlencoded_pairs(body)
        .into_iter()
        .find_map(|(k, v)| (k == name).then_some(v))
}

/// `a=b&c=d` (URL-encoded) as pairs; at most 16.
fn serde_urlencoded_pairs(body: &[u8]) -> Vec<(String, String)> {
    let text = String::from_utf8_lossy(body);
    text.split('&')
        .take(16)
        .filter_map(|kv| {
            let (k, v) = kv.split_once('=')?;
            Some((decode(k)?, decode(v)?))
        })
        .collect()
}

fn decode(s: &str) -> Option<String> {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        match bytes[i] {
            b'+' => out.push(b' '),
            b'%' => {
                let hex = s.get(i + 1..i + 3)?;
                out.push(u8::from_str_radix(hex, 16).ok()?);
                i += 2;
            }
            b => out.push(b),
        }
        i += 1;
    }
    String::from_utf8(out).ok()
}

#[derive(Debug, Deserialize)]
struct TokenQuery {
    token: Option<String>,
}

async fn index(
    State(c): State<Arc<Console>>,
    headers: HeaderMap,
    Query(q): Query<TokenQuery>,
) -> Response {
    let authed = cookie_token(&headers).is_some_and(|t| same(&t, &c.token));
    if let Some(t) = q.token {
        if !same(&t, &c.token) {
            return plain(
                StatusCode::UNAUTHORIZED,
                "wrong console token: open the URL `edge-kubelet console-url` prints",
            );
        }
        // Token in a cookie from now on, and out of the address bar (and history).
        let mut r = (StatusCode::SEE_OTHER, [(header::LOCATION, "/")]).into_response();
        if let Ok(v) = HeaderValue::from_str(&format!(
            "{COOKIE}={}; HttpOnly; SameSite=Strict; Path=/",
            c.token
        )) {
            r.headers_mut().insert(header::SET_COOKIE, v);
        }
        return r;
    }
    if !authed {
        return plain(
            StatusCode::UNAUTHORIZED,
            "not signed in: open the URL `edge-kubelet console-url` prints (it carries the token)",
        );
    }
    let report = c.latest.lock().clone();
    let flash = c.flash.lock().take();
    html(page::full(
        &report,
        &c.actions.availability(),
        &c.csrf,
        flash.as_ref(),
    ))
}

async fn live(State(c): State<Arc<Console>>) -> Response {
    let report = c.latest.lock().clone();
    html(page::live(&report, &c.actions.availability()))
}

fn html(body: String) -> Response {
    (
        StatusCode::OK,
        [
            (header::CONTENT_TYPE, "text/html; charset=utf-8"),
            (header::CACHE_CONTROL, "no-store"),
            (
                header::CONTENT_SECURITY_POLICY,
                "default-src 'none'; script-src 'self' 'unsafe-inline'; style-src 'unsafe-inline'; connect-src 'self'; form-action 'self'; frame-ancestors 'none'",
            ),
            (header::X_FRAME_OPTIONS, "DENY"),
        ],
        body,
    )
        .into_response()
}

fn done(c: &Console, outcome: std::result::Result<String, String>) -> Response {
    *c.flash.lock() = Some(match outcome {
        Ok(t) => (true, t),
        Err(t) => (false, t),
    });
    (StatusCode::SEE_OTHER, [(header::LOCATION, "/")]).into_response()
}

async fn pause(State(c): State<Arc<Console>>) -> Response {
    let r = c.actions.pause().await;
    done(&c, r)
}

async fn resume(State(c): State<Arc<Console>>) -> Response {
    let r = c.actions.resume().await;
    done(&c, r)
}

async fn drain(State(c): State<Arc<Console>>) -> Response {
    let r = c.actions.drain().await;
    done(&c, r)
}

async fn offer(State(c): State<Arc<Console>>, body: axum::body::Bytes) -> Response {
    let mut form = OfferForm::default();
    for (k, v) in serde_urlencoded_pairs(&body) {
        if k != "csrf" && v.len() > MAX_FIELD {
            return done(&c, Err(format!("{k}: at most {MAX_FIELD} characters")));
        }
        match k.as_str() {
            "cpu" => form.cpu = v,
            "memory" => form.memory = v,
            "storage" => form.storage = v,
            "pods" => form.pods = v,
            _ => {}
        }
    }
    let r = c.actions.set_offer(form).await;
    done(&c, r)
}

#[cfg(test)]
mod tests;
