//! The one-line install: `/install.sh`, the operator's CA (`/ca.crt`) and the edge-kubelet
//! binaries with their SHA-256, served on the edge listener beside the gRPC service (the one
//! address every provider already reaches, over the TLS whose CA the join command pins).
//!
//! Trust: the script itself is fetched with `curl -k` (the machine does not trust the CA yet);
//! it then fetches `/ca.crt` and refuses to go on unless its hash is the `--ca-hash` of the
//! join command, and from then on speaks to the operator only with `curl --cacert` that CA, so
//! the binary and its checksum come from a server holding a key the pinned CA certified. What
//! `-k` leaves open, an attacker on the path swapping the script itself, is closed by the
//! "verified" form `token create` also prints: the script's own SHA-256, checked before it
//! runs. See the README's provider section.
//!
//! Everything here answers anyone who can reach the edge port: GET and HEAD only, no request
//! bodies, a request budget per source address, a cap on binary downloads at once, and a clear
//! 404 naming the platforms served when a client asks for another.

use std::collections::BTreeMap;
use std::net::IpAddr;
use std::num::NonZeroU32;
use std::path::PathBuf;
use std::sync::Arc;

use axum::Router;
use axum::body::Body;
use axum::extract::{Path, Request, State};
use axum::http::{HeaderValue, StatusCode, header};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use governor::{DefaultKeyedRateLimiter, Quota, RateLimiter};
use sha2::{Digest, Sha256};
use tokio::sync::Semaphore;
use tonic::transport::server::{TcpConnectInfo, TlsConnectInfo};

use crate::{Error, Result};

/// The script `curl … | sh` runs (POSIX sh).
pub(crate) const SCRIPT: &str = include_str!("../../edge-kubelet/packaging/install.sh");
/// Requests one source address may make to these endpoints: a burst, then per minute.
const BURST: u32 = 30;
const PER_MINUTE: u32 = 30;
/// Binary downloads served at once (each streams tens of MB).
const MAX_DOWNLOADS: usize = 8;
/// Longest `os` or `arch` path segment accepted.
const MAX_PLATFORM_PART: usize = 16;

/// The SHA-256 of [`SCRIPT`], hex: what the verified form of the join command checks.
pub(crate) fn script_sha256() -> String {
    hex::encode(Sha256::digest(SCRIPT.as_bytes()))
}

/// One `--edge-binary [OS/ARCH=]PATH`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct EdgeBinarySpec {
    /// `os/arch`, Go-style (`linux/amd64`).
    pub(crate) platform: String,
    /// The file served.
    pub(crate) path: PathBuf,
}

impl std::str::FromStr for EdgeBinarySpec {
    type Err = String;

    fn from_str(s: &str) -> std::result::Result<Self, String> {
        let (platform, path) = match s.split_once('=') {
            Some((platform, path)) => (platform.to_string(), path),
            None => (own_platform(), s),
        };
        let ok = platform
            .split_once('/')
            .is_some_and(|(os, arch)| valid_platform_part(os) && valid_platform_part(arch));
        if !ok {
            return Err(format!(
                "--edge-binary {s:?}: expected [OS/ARCH=]PATH, e.g. linux/amd64=/opt/edge-kubelet \
                 (OS and ARCH: 1-{MAX_PLATFORM_PART} lowercase letters, digits or '_')"
            ));
        }
        if path.is_empty() {
            return Err(format!("--edge-binary {s:?}: no PATH"));
        }
        Ok(Self {
            platform,
            path: PathBuf::from(path),
        })
    }
}

fn valid_platform_part(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= MAX_PLATFORM_PART
        && s.bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_')
}

/// This process's platform, Go-style (`linux/amd64`): the default of `--edge-binary PATH`.
pub(crate) fn own_platform() -> String {
    let arch = match std::env::consts::ARCH {
        "x86_64" => "amd64",
        "aarch64" => "arm64",
        "x86" => "386",
        "powerpc64" => "ppc64le",
        other => other,
    };
    format!("{}/{arch}", std::env::consts::OS)
}

/// A binary as served: its length and hash taken when the operator started.
#[derive(Debug)]
struct EdgeBinary {
    path: PathBuf,
    len: u64,
    sha256: String,
}

/// What the install endpoints serve.
pub(crate) struct InstallFiles {
    ca_pem: Option<String>,
    binaries: BTreeMap<String, EdgeBinary>,
    limiter: DefaultKeyedRateLimiter<IpAddr>,
    downloads: Arc<Semaphore>,
}

impl std::fmt::Debug for InstallFiles {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("InstallFiles")
            .field("platforms", &self.binaries.keys().collect::<Vec<_>>())
            .finish_non_exhaustive()
    }
}

impl InstallFiles {
    /// Reads and hashes every binary of `specs` (once, now); `ca_pem` is the CA edges pin
    /// (None: the operator runs without TLS, and `/ca.crt` says so).
    pub(crate) async fn load(specs: &[EdgeBinarySpec], ca_pem: Option<String>) -> Result<Self> {
        let mut binaries = BTreeMap::new();
        for spec in specs {
            let path = spec.path.clone();
            let (len, sha256) = tokio::task::spawn_blocking(move || hash_file(&path))
                .await
                .map_err(|e| Error::Config(format!("hashing --edge-binary: {e}")))?
                .map_err(|e| {
                    Error::Config(format!("--edge-binary {}: {e}", spec.path.display()))
                })?;
            if binaries
                .insert(
                    spec.platform.clone(),
                    EdgeBinary {
                        path: spec.path.clone(),
                        len,
                        sha256,
                    },
                )
                .is_some()
            {
                return Err(Error::Config(format!(
                    "--edge-binary: {} given twice",
                    spec.platform
                )));
            }
        }
        let per_minute = NonZeroU32::new(PER_MINUTE).unwrap_or(NonZeroU32::MIN);
        let burst = NonZeroU32::new(BURST).unwrap_or(NonZeroU32::MIN);
        Ok(Self {
            ca_pem,
            binaries,
            limiter: RateLimiter::keyed(Quota::per_minute(per_minute).allow_burst(burst)),
            downloads: Arc::new(Semaphore::new(MAX_DOWNLOADS)),
        })
    }

    /// The platforms served, for the log.
    pub(crate) fn platforms(&self) -> Vec<String> {
        self.binaries.keys().cloned().collect()
    }

    fn served(&self) -> String {
        if self.binaries.is_empty() {
            "none (the operator was started without --edge-binary)".into()
        } else {
            self.platforms().join(", ")
        }
    }
}

fn hash_file(path: &std::path::Path) -> std::io::Result<(u64, String)> {
    use std::io::Read;
    let mut f = std::fs::File::open(path)?;
    if !f.metadata()?.is_file() {
        return Err(std::io::Error::other("not a regular file"));
    }
    let mut hasher = Sha256::new();
    let mut buf = vec![0u8; 1 << 16];
    let mut len = 0u64;
    loop {
        let n = f.read(&mut buf)?;
        if n == 0 {
            break;
        }
        len += n as u64;
        hasher.update(&buf[..n]);
    }
    Ok((len, hex::encode(hasher.finalize())))
}

/// The install endpoints as routes to merge with the gRPC service's.
pub(crate) fn router(files: Arc<InstallFiles>) -> Router {
    Router::new()
        .route("/install.sh", get(script))
        .route("/ca.crt", get(ca))
        .route("/edge-kubelet", get(platforms))
        .route("/edge-kubelet/{os}/{arch}", get(binary))
        .route("/edge-kubelet/{os}/{arch}/sha256", get(checksum))
        .route("/edge-kubelet/{os}", get(unknown))
        .route("/edge-kubelet/{os}/{arch}/{other}", get(unknown))
        .layer(middleware::from_fn_with_state(files.clone(), guard))
        .with_state(files)
}

fn text(status: StatusCode, body: String) -> Response {
    (
        status,
        [(header::CONTENT_TYPE, "text/plain; charset=utf-8")],
        body,
    )
        .into_response()
}

fn peer(req: &Request) -> Option<IpAddr> {
    let ext = req.extensions();
    ext.get::<TlsConnectInfo<TcpConnectInfo>>()
        .and_then(|i| i.get_ref().remote_addr())
        .or_else(|| ext.get::<TcpConnectInfo>().and_then(|i| i.remote_addr()))
        .map(|a| a.ip())
}

/// No bodies, and a request budget per address (checked before any handler runs).
async fn guard(State(files): State<Arc<InstallFiles>>, req: Request, next: Next) -> Response {
    let has_body = req
        .headers()
        .get(header::CONTENT_LENGTH)
        .is_some_and(|v| v.as_bytes() != b"0")
        || req.headers().contains_key(header::TRANSFER_ENCODING);
    if has_body {
        return text(
            StatusCode::PAYLOAD_TOO_LARGE,
            "the install endpoints take no request body\n".into(),
        );
    }
    if let Some(ip) = peer(&req)
        && files.limiter.check_key(&ip).is_err()
    {
        let mut r = text(
            StatusCode::TOO_MANY_REQUESTS,
            format!(
                "too many install requests from {ip}: at most {BURST} at once, then {PER_MINUTE} a minute\n"
            ),
        );
        r.headers_mut()
            .insert(header::RETRY_AFTER, HeaderValue::from_static("10"));
        return r;
    }
    next.run(req).await
}

async fn script() -> Response {
    (
        StatusCode::OK,
        [
            (header::CONTENT_TYPE, "text/x-shellscript; charset=utf-8"),
            (header::CACHE_CONTROL, "no-store"),
        ],
        SCRIPT,
    )
        .into_response()
}

async fn ca(State(files): State<Arc<InstallFiles>>) -> Response {
    match &files.ca_pem {
        Some(pem) => (
            StatusCode::OK,
            [(header::CONTENT_TYPE, "application/x-pem-file")],
            pem.clone(),
        )
            .into_response(),
        None => text(
            StatusCode::NOT_FOUND,
            "no CA: this operator serves edges WITHOUT TLS (--insecure-plaintext)\n".into(),
        ),
    }
}

async fn platforms(State(files): State<Arc<InstallFiles>>) -> Response {
    let mut out = String::new();
    for (platform, b) in &files.binaries {
        out.push_str(&format!("{platform} {} {}\n", b.sha256, b.len));
    }
    text(StatusCode::OK, out)
}

fn lookup<'a>(
    files: &'a InstallFiles,
    os: &str,
    arch: &str,
) -> std::result::Result<&'a EdgeBinary, Box<Response>> {
    if !valid_platform_part(os) || !valid_platform_part(arch) {
        return Err(Box::new(text(
            StatusCode::BAD_REQUEST,
            format!(
                "OS and ARCH are 1-{MAX_PLATFORM_PART} lowercase letters, digits or '_' (e.g. /edge-kubelet/linux/amd64)\n"
            ),
        )));
    }
    files.binaries.get(&format!("{os}/{arch}")).ok_or_else(|| {
        Box::new(text(
            StatusCode::NOT_FOUND,
            format!(
                "no edge-kubelet binary for {os}/{arch} here; this operator serves: {}\n",
                files.served()
            ),
        ))
    })
}

async fn checksum(
    State(files): State<Arc<InstallFiles>>,
    Path((os, arch)): Path<(String, String)>,
) -> Response {
    match lookup(&files, &os, &arch) {
        Ok(b) => text(StatusCode::OK, format!("{}  edge-kubelet\n", b.sha256)),
        Err(r) => *r,
    }
}

async fn binary(
    State(files): State<Arc<InstallFiles>>,
    Path((os, arch)): Path<(String, String)>,
) -> Response {
    let b = match lookup(&files, &os, &arch) {
        Ok(b) => b,
        Err(r) => return *r,
    };
    let Ok(slot) = files.downloads.clone().try_acquire_owned() else {
        let mut r = text(
            StatusCode::SERVICE_UNAVAILABLE,
            format!("{MAX_DOWNLOADS} downloads already in progress; retry shortly\n"),
        );
        r.headers_mut()
            .insert(header::RETRY_AFTER, HeaderValue::from_static("5"));
        return r;
    };
    let file = match tokio::fs::File::open(&b.path).await {
        Ok(f) => f,
        Err(e) => {
            tracing::warn!(path = %b.path.display(), error = %e, "cannot open the edge binary");
            return text(
                StatusCode::INTERNAL_SERVER_ERROR,
                "the edge binary cannot be read on the operator\n".into(),
            );
        }
    };
    // Exactly the length hashed at start; the slot is held until the stream ends.
    let stream = tokio_util::io::ReaderStream::new(tokio::io::AsyncReadExt::take(file, b.len));
    let stream = futures::StreamExt::map(stream, move |chunk| {
        let _held = &slot;
        chunk
    });
    (
        StatusCode::OK,
        [
            (header::CONTENT_TYPE, "application/octet-stream".to_string()),
            (header::CONTENT_LENGTH, b.len.to_string()),
            (
                header::HeaderName::from_static("x-checksum-sha256"),
                b.sha256.clone(),
            ),
        ],
        Body::from_stream(stream),
    )
        .into_response()
}

async fn unknown(State(files): State<Arc<InstallFiles>>) -> Response {
    text(
        StatusCode::NOT_FOUND,
        format!(
            "not an install path: use /edge-kubelet/OS/ARCH and /edge-kubelet/OS/ARCH/sha256; this operator serves: {}\n",
            files.served()
        ),
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use axum::http::Request as HttpRequest;
    use tower::ServiceExt as _;

    async fn call(router: &Router, method: &str, uri: &str, body: &str) -> (StatusCode, String) {
        let req = HttpRequest::builder()
            .method(method)
            .uri(uri)
            .header(header::CONTENT_LENGTH, body.len())
            .body(Body::from(body.to_string()))
            .unwrap();
        let res = router.clone().oneshot(req).await.unwrap();
        let status = res.status();
        let bytes = axum::body::to_bytes(res.into_body(), 1 << 20)
            .await
            .unwrap();
        (status, String::from_utf8_lossy(&bytes).into_owned())
    }

    #[tokio::test]
    async fn serves_the_script_the_ca_and_binaries_and_refuses_the_rest() {
        let dir = tempfile::tempdir().unwrap();
        let bin = dir.path().join("edge-kubelet");
        std::fs::write(&bin, b"#!binary").unwrap();
        let spec: EdgeBinarySpec = format!("linux/amd64={}", bin.display()).parse().unwrap();
        let files = InstallFiles::load(&[spec], Some("PEM".into()))
            .await
            .unwrap();
        let router = router(Arc::new(files));
        let (s, body) = call(&router, "GET", "/install.sh", "").await;
        assert_eq!((s, body.as_str()), (StatusCode::OK, SCRIPT));
        assert_eq!(
            call(&router, "GET", "/ca.crt", "").await,
            (StatusCode::OK, "PEM".into())
        );
        assert_eq!(
            call(&router, "GET", "/edge-kubelet/linux/amd64", "").await,
            (StatusCode::OK, "#!binary".into())
        );
        let sum = hex::encode(Sha256::digest(b"#!binary"));
        assert_eq!(
            call(&router, "GET", "/edge-kubelet/linux/amd64/sha256", "").await,
            (StatusCode::OK, format!("{sum}  edge-kubelet\n"))
        );
        let (s, body) = call(&router, "GET", "/edge-kubelet/linux/riscv64", "").await;
        assert_eq!(s, StatusCode::NOT_FOUND);
        assert!(body.contains("this operator serves: linux/amd64"), "{body}");
        let (s, _) = call(&router, "GET", "/edge-kubelet/LINUX/amd64", "").await;
        assert_eq!(s, StatusCode::BAD_REQUEST);
        let (s, _) = call(&router, "GET", "/edge-kubelet/a/b/c", "").await;
        assert_eq!(s, StatusCode::NOT_FOUND);
        let (s, _) = call(&router, "POST", "/install.sh", "").await;
        assert_eq!(s, StatusCode::METHOD_NOT_ALLOWED);
        let (s, _) = call(&router, "GET", "/install.sh", "x=1").await;
        assert_eq!(s, StatusCode::PAYLOAD_TOO_LARGE);
        let (s, body) = call(&router, "GET", "/edge-kubelet", "").await;
        assert_eq!(s, StatusCode::OK);
        assert!(body.starts_with(&format!("linux/amd64 {sum} 8")), "{body}");

        let plain = router_without_tls().await;
        let (s, body) = call(&plain, "GET", "/ca.crt", "").await;
        assert_eq!(s, StatusCode::NOT_FOUND);
        assert!(body.contains("--insecure-plaintext"), "{body}");
        let (s, body) = call(&plain, "GET", "/edge-kubelet/linux/amd64", "").await;
        assert_eq!(s, StatusCode::NOT_FOUND);
        assert!(body.contains("without --edge-binary"), "{body}");
    }

    async fn router_without_tls() -> Router {
        router(Arc::new(InstallFiles::load(&[], None).await.unwrap()))
    }

    #[tokio::test]
    async fn one_address_gets_a_bounded_number_of_requests() {
        let router = router_without_tls().await;
        let from = |ip: [u8; 4]| {
            let mut req = HttpRequest::get("/install.sh").body(Body::empty()).unwrap();
            req.extensions_mut().insert(TcpConnectInfo {
                local_addr: None,
                remote_addr: Some((ip, 40000).into()),
            });
            req
        };
        for _ in 0..BURST {
            let res = router.clone().oneshot(from([192, 0, 2, 1])).await.unwrap();
            assert_eq!(res.status(), StatusCode::OK);
        }
        let res = router.clone().oneshot(from([192, 0, 2, 1])).await.unwrap();
        assert_eq!(res.status(), StatusCode::TOO_MANY_REQUESTS);
        assert!(res.headers().contains_key(header::RETRY_AFTER));
        // Another address is not held back.
        let res = router.clone().oneshot(from([192, 0, 2, 2])).await.unwrap();
        assert_eq!(res.status(), StatusCode::OK);
    }

    #[test]
    fn edge_binary_flags() {
        let s: EdgeBinarySpec = "linux/arm64=/opt/e".parse().unwrap();
        assert_eq!(
            (s.platform.as_str(), s.path.to_str()),
            ("linux/arm64", Some("/opt/e"))
        );
        let own: EdgeBinarySpec = "/opt/e".parse().unwrap();
        assert_eq!(own.platform, own_platform());
        for bad in [
            "linux=/x",
            "Linux/amd64=/x",
            "linux/amd64=",
            "/amd64=/x",
            "linux/a b=/x",
        ] {
            assert!(bad.parse::<EdgeBinarySpec>().is_err(), "{bad}");
        }
    }

    #[test]
    fn the_script_is_posix_sh_that_checks_the_pin_and_the_checksum() {
        // The served script must keep the steps its trust argument rests on.
        for needle in ["--cacert", "sha256sum", "ca.crt", "--ca-hash"] {
            assert!(SCRIPT.contains(needle), "install.sh lost {needle}");
        }
        assert!(SCRIPT.starts_with("#!/bin/sh"));
    }
}
