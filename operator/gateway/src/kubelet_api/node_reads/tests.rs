use super::*;
use crate::LogError;
use crate::kubelet_api::{Access, AccessReview, KubeletAuth, ReviewError, User, router};
use crate::seams::{LogQuery, LogSource, LogStream};
use axum::body::Body;
use futures::{FutureExt, future::BoxFuture};
use std::sync::Mutex;
use tower::ServiceExt;

struct NoLogs;

impl LogSource for NoLogs {
    fn logs(&self, _q: LogQuery) -> BoxFuture<'static, Result<LogStream, LogError>> {
        async { Err(LogError::NotFound("no".into())) }.boxed()
    }
}

struct Readings;

impl NodeReadings for Readings {
    fn pods(&self, node: &str) -> Vec<u8> {
        format!("{{\"kind\":\"PodList\",\"node\":\"{node}\"}}").into_bytes()
    }
    fn stats_summary(&self, node: &str) -> Option<Vec<u8>> {
        (node == "edge-a").then(|| b"{\"node\":{}}".to_vec())
    }
    fn resource_metrics(&self, node: &str) -> Option<String> {
        (node == "edge-a").then(|| "scrape_error 0\n".into())
    }
}

/// Allows `metrics` and `stats` on edge-a to "scraper"; records every access asked.
#[derive(Default)]
struct Review(Mutex<Vec<(String, String)>>);

impl AccessReview for Review {
    fn authenticate(&self, token: &str) -> BoxFuture<'static, Result<Option<User>, ReviewError>> {
        let user = User {
            name: token.to_string(),
            ..Default::default()
        };
        async move { Ok(Some(user)) }.boxed()
    }
    fn authorize(
        &self,
        user: &User,
        access: &Access,
    ) -> BoxFuture<'static, Result<bool, ReviewError>> {
        self.0
            .lock()
            .expect("lock")
            .push((access.subresource.to_string(), access.node.clone()));
        let ok = user.name == "scraper"
            && access.node == "edge-a"
            && ["metrics", "stats"].contains(&access.subresource);
        async move { Ok(ok) }.boxed()
    }
}

async fn call(app: &axum::Router, path: &str, token: &str) -> (StatusCode, String) {
    let req = http::Request::get(path)
        .header("authorization", format!("Bearer {token}"))
        .body(Body::empty())
        .expect("request");
    let res = app.clone().oneshot(req).await.expect("response");
    let status = res.status();
    let body = axum::body::to_bytes(res.into_body(), 1 << 20)
        .await
        .expect("body");
    (status, String::from_utf8_lossy(&body).into_owned())
}

#[tokio::test]
async fn node_reads_are_authorized_on_the_serving_node_and_need_one() {
    let review = Arc::new(Review::default());
    let shared = router(
        Arc::new(NoLogs),
        Arc::new(crate::kubelet_api::tests::NoStreams),
        KubeletAuth::new(review.clone()),
    );
    let node = |name: &str| {
        shared.clone().layer(Extension(ServingNode {
            node: name.into(),
            readings: Arc::new(Readings),
        }))
    };
    let a = node("edge-a");
    let (status, body) = call(&a, "/metrics/resource", "scraper").await;
    assert_eq!(
        (status, body.as_str()),
        (StatusCode::OK, "scrape_error 0\n")
    );
    assert_eq!(
        call(&a, "/stats/summary", "scraper").await.0,
        StatusCode::OK
    );
    // /pods needs nodes/proxy, which the scraper lacks.
    assert_eq!(call(&a, "/pods", "scraper").await.0, StatusCode::FORBIDDEN);
    assert_eq!(call(&a, "/pods", "admin").await.0, StatusCode::FORBIDDEN);
    // Another node's port: reviewed against that node.
    let b = node("edge-b");
    assert_eq!(
        call(&b, "/metrics/resource", "scraper").await.0,
        StatusCode::FORBIDDEN
    );
    let asked = review.0.lock().expect("lock").clone();
    assert!(
        asked.contains(&("metrics".into(), "edge-a".into())),
        "{asked:?}"
    );
    assert!(
        asked.contains(&("metrics".into(), "edge-b".into())),
        "{asked:?}"
    );
    assert!(asked.iter().all(|(_, n)| !n.is_empty()), "{asked:?}");
    // The shared port does not know which node a node-level read is about.
    assert_eq!(
        call(&shared, "/metrics/resource", "scraper").await.0,
        StatusCode::FORBIDDEN
    );
}

#[tokio::test]
async fn no_fresh_statistics_is_503() {
    let review = Arc::new(Review::default());
    let app = router(
        Arc::new(NoLogs),
        Arc::new(crate::kubelet_api::tests::NoStreams),
        KubeletAuth::new(review),
    )
    .layer(Extension(ServingNode {
        node: "edge-c".into(),
        readings: Arc::new(Readings),
    }));
    // edge-c has no statistics; the scraper has no right there either, so ask as if allowed
    // by checking the handler directly.
    let res = stats_summary(Some(Extension(ServingNode {
        node: "edge-c".into(),
        readings: Arc::new(Readings),
    })))
    .await;
    assert_eq!(res.status(), StatusCode::SERVICE_UNAVAILABLE);
    let res = node_pods(None).await;
    assert_eq!(res.status(), StatusCode::NOT_FOUND);
    assert_eq!(
        call(&app, "/pods", "scraper").await.0,
        StatusCode::FORBIDDEN
    );
}
