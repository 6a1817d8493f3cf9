use std::sync::Arc;

use axum::body::Body;
use axum::http::{Request, StatusCode, header};
use tower::ServiceExt as _;

use super::*;

struct Recording(Mutex<Vec<String>>);

#[async_trait::async_trait]
impl ConsoleActions for Recording {
    async fn pause(&self) -> std::result::Result<String, String> {
        self.0.lock().push("pause".into());
        Ok("paused".into())
    }
    async fn resume(&self) -> std::result::Result<String, String> {
        Ok("resumed".into())
    }
    async fn drain(&self) -> std::result::Result<String, String> {
        Err("no".into())
    }
    fn availability(&self) -> LendingState {
        LendingState::default()
    }
    async fn set_offer(&self, form: OfferForm) -> std::result::Result<String, String> {
        self.0.lock().push(format!("offer {}", form.cpu));
        Ok("ok".into())
    }
}

fn console() -> (Arc<Console>, Arc<Recording>) {
    let actions = Arc::new(Recording(Mutex::new(Vec::new())));
    let c = Arc::new(Console {
        token: "t".repeat(64),
        csrf: "c".repeat(64),
        latest: Arc::new(Mutex::new(EdgeReport::default())),
        actions: actions.clone(),
        flash: Mutex::new(None),
        in_flight: Semaphore::new(4),
    });
    (c, actions)
}

async fn call(c: &Arc<Console>, req: Request<Body>) -> (StatusCode, axum::http::HeaderMap) {
    let res = router(c.clone()).oneshot(req).await.unwrap();
    (res.status(), res.headers().clone())
}

fn get(uri: &str, host: &str, cookie: Option<&str>) -> Request<Body> {
    let mut b = Request::get(uri).header(header::HOST, host);
    if let Some(c) = cookie {
        b = b.header(header::COOKIE, format!("{COOKIE}={c}"));
    }
    b.body(Body::empty()).unwrap()
}

fn post(uri: &str, cookie: &str, body: &str) -> Request<Body> {
    Request::post(uri)
        .header(header::HOST, "127.0.0.1:7171")
        .header(header::COOKIE, format!("{COOKIE}={cookie}"))
        .header(header::CONTENT_TYPE, "application/x-www-form-urlencoded")
        .body(Body::from(body.to_string()))
        .unwrap()
}

#[tokio::test]
async fn the_token_signs_in_once_and_everything_else_is_refused() {
    let (c, actions) = console();
    let token = "t".repeat(64);
    let host = "127.0.0.1:7171";
    // Without a token or with a wrong one: refused.
    assert_eq!(
        call(&c, get("/", host, None)).await.0,
        StatusCode::UNAUTHORIZED
    );
    let wrong = format!("/?token={}", "x".repeat(64));
    assert_eq!(
        call(&c, get(&wrong, host, None)).await.0,
        StatusCode::UNAUTHORIZED
    );
    assert_eq!(
        call(&c, get("/live", host, Some("nope"))).await.0,
        StatusCode::UNAUTHORIZED
    );
    // The token: a cookie, and away from the URL.
    let (s, h) = call(&c, get(&format!("/?token={token}"), host, None)).await;
    assert_eq!(s, StatusCode::SEE_OTHER);
    let cookie = h
        .get(header::SET_COOKIE)
        .unwrap()
        .to_str()
        .unwrap()
        .to_string();
    assert!(
        cookie.contains("HttpOnly") && cookie.contains("SameSite=Strict"),
        "{cookie}"
    );
    assert_eq!(
        call(&c, get("/", host, Some(&token))).await.0,
        StatusCode::OK
    );
    assert_eq!(
        call(&c, get("/", "[::1]:7171", Some(&token))).await.0,
        StatusCode::OK
    );
    // DNS rebinding: the right cookie, but a Host that is not loopback.
    assert_eq!(
        call(&c, get("/", "evil.example:7171", Some(&token)))
            .await
            .0,
        StatusCode::FORBIDDEN
    );
    // POSTs need the CSRF token.
    let (s, _) = call(&c, post("/pause", &token, "")).await;
    assert_eq!(s, StatusCode::FORBIDDEN);
    let (s, _) = call(
        &c,
        post("/pause", &token, &format!("csrf={}", "d".repeat(64))),
    )
    .await;
    assert_eq!(s, StatusCode::FORBIDDEN);
    assert!(actions.0.lock().is_empty());
    let (s, _) = call(
        &c,
        post("/pause", &token, &format!("csrf={}", "c".repeat(64))),
    )
    .await;
    assert_eq!(s, StatusCode::SEE_OTHER);
    let body = format!("csrf={}&cpu=1500m&memory=1Gi", "c".repeat(64));
    assert_eq!(
        call(&c, post("/offer", &token, &body)).await.0,
        StatusCode::SEE_OTHER
    );
    assert_eq!(*actions.0.lock(), ["pause", "offer 1500m"]);
    // A cross-origin POST, even with the cookie and the token.
    let mut req = post("/pause", &token, &format!("csrf={}", "c".repeat(64)));
    req.headers_mut()
        .insert(header::ORIGIN, "http://evil.example".parse().unwrap());
    assert_eq!(call(&c, req).await.0, StatusCode::FORBIDDEN);
    // Bodies are bounded.
    let big = format!("csrf={}&cpu={}", "c".repeat(64), "1".repeat(8000));
    assert_eq!(
        call(&c, post("/offer", &token, &big)).await.0,
        StatusCode::PAYLOAD_TOO_LARGE
    );
    // Methods.
    let (s, _) = call(&c, post("/", &token, "")).await;
    assert!(
        s == StatusCode::METHOD_NOT_ALLOWED || s == StatusCode::FORBIDDEN,
        "{s}"
    );
}

#[test]
fn loopback_hosts_and_listen_addresses() {
    for ok in ["127.0.0.1:7171", "localhost:80", "[::1]:7171", "127.0.0.2"] {
        assert!(loopback_host(ok), "{ok}");
    }
    for bad in [
        "",
        "evil.example",
        "10.0.0.1:7171",
        "127.0.0.1.nip.io:7171",
        "[::2]:1",
    ] {
        assert!(!loopback_host(bad), "{bad}");
    }
    assert!(check_listen("127.0.0.1:7171".parse().unwrap(), false).is_ok());
    assert!(check_listen("0.0.0.0:7171".parse().unwrap(), false).is_err());
    assert!(check_listen("0.0.0.0:7171".parse().unwrap(), true).is_ok());
}

#[test]
fn the_token_file_is_private_and_kept() {
    use std::os::unix::fs::PermissionsExt;
    let dir = tempfile::tempdir().unwrap();
    let t = token(dir.path()).unwrap();
    assert_eq!(t.len(), 64);
    let mode = std::fs::metadata(dir.path().join(TOKEN_FILE))
        .unwrap()
        .permissions()
        .mode();
    assert_eq!(mode & 0o777, 0o600);
    assert_eq!(token(dir.path()).unwrap(), t);
    assert_eq!(decode("a%2Fb+c").as_deref(), Some("a/b c"));
    assert_eq!(decode("%zz"), None);
}
