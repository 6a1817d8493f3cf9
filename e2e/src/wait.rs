//! Bounded patience for asynchronous conditions.

use std::{future::Future, time::Duration};

use tokio::time::{Instant, sleep};

/// Retries `check` every 100 ms until it returns `Ok`, or fails with its last error once
/// `timeout` has passed. The `assert_eventually!` of these suites.
pub async fn eventually<T, F, Fut>(timeout: Duration, mut check: F) -> anyhow::Result<T>
where
    F: FnMut() -> Fut,
    Fut: Future<Output = anyhow::Result<T>>,
{
    let deadline = Instant::now() + timeout;
    loop {
        match check().await {
            Ok(v) => return Ok(v),
            Err(e) if Instant::now() >= deadline => {
                return Err(e.context(format!("still failing after {timeout:?}")));
            }
            Err(_) => sleep(Duration::from_millis(100)).await,
        }
    }
}
