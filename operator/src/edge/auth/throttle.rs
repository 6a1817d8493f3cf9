//! Throttling of refused authentication per source address.
//!
//! An unauthenticated caller must not be able to make the operator work for it without bound:
//! each refused join token costs a LIST of the token Secrets, each unknown credential a GET of
//! a Provider. Refusals are counted per source address in a token bucket (`governor`); an
//! address that runs out is refused up front, without any API call, until its bucket refills.
//! Accepted calls cost nothing, so thousands of edges joining from one address are fine.

use std::collections::HashMap;
use std::net::IpAddr;
use std::num::NonZeroU32;
use std::time::{Duration, Instant};

use governor::clock::{Clock, DefaultClock};
use governor::{DefaultKeyedRateLimiter, Quota, RateLimiter};
use parking_lot::Mutex;
use tonic::Status;

/// Tracked addresses beyond which idle ones are forgotten.
const PRUNE_ABOVE: usize = 10_000;

/// Refused authentications per source address: a burst, then a steady rate.
pub(crate) struct FailedAuthThrottle {
    limiter: Option<DefaultKeyedRateLimiter<IpAddr>>,
    /// Addresses out of budget, until when.
    blocked: Mutex<HashMap<IpAddr, Instant>>,
}

impl std::fmt::Debug for FailedAuthThrottle {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("FailedAuthThrottle")
            .field("enabled", &self.limiter.is_some())
            .finish_non_exhaustive()
    }
}

impl FailedAuthThrottle {
    /// Allows `burst` refusals per address, refilled at `per_minute`; `burst == 0` disables.
    pub(crate) fn new(burst: u32, per_minute: u32) -> Self {
        let limiter = NonZeroU32::new(burst).map(|burst| {
            let rate = NonZeroU32::new(per_minute).unwrap_or(NonZeroU32::MIN);
            RateLimiter::keyed(Quota::per_minute(rate).allow_burst(burst))
        });
        Self {
            limiter,
            blocked: Mutex::default(),
        }
    }

    fn blocked(&self) -> parking_lot::MutexGuard<'_, HashMap<IpAddr, Instant>> {
        self.blocked.lock()
    }

    /// Refuses `peer` up front while it is out of budget. Call before any work.
    pub(crate) fn admit(&self, peer: Option<IpAddr>) -> Result<(), Status> {
        let Some(peer) = peer else { return Ok(()) };
        let mut blocked = self.blocked();
        match blocked.get(&peer) {
            Some(until) if *until > Instant::now() => {
                let wait = until.saturating_duration_since(Instant::now());
                Err(Status::resource_exhausted(format!(
                    "too many refused authentication attempts from {peer}; retry in {} s",
                    wait.as_secs().max(1)
                )))
            }
            Some(_) => {
                blocked.remove(&peer);
                Ok(())
            }
            None => Ok(()),
        }
    }

    /// Counts one refusal from `peer`; true if that used up its budget (it is now blocked).
    pub(crate) fn refused(&self, peer: Option<IpAddr>) -> bool {
        let (Some(peer), Some(limiter)) = (peer, &self.limiter) else {
            return false;
        };
        let Err(not_until) = limiter.check_key(&peer) else {
            return false;
        };
        let wait: Duration = not_until.wait_time_from(DefaultClock::default().now());
        let mut blocked = self.blocked();
        if blocked.len() >= PRUNE_ABOVE {
            let now = Instant::now();
            blocked.retain(|_, until| *until > now);
            limiter.retain_recent();
        }
        blocked.insert(peer, Instant::now() + wait);
        tracing::warn!(%peer, retry_in = ?wait, "too many refused authentication attempts; refusing this address for a while");
        true
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn refusals_beyond_the_burst_block_the_address_only() {
        let t = FailedAuthThrottle::new(3, 60);
        let a = Some(IpAddr::from([192, 0, 2, 1]));
        let b = Some(IpAddr::from([192, 0, 2, 2]));
        for _ in 0..3 {
            assert!(t.admit(a).is_ok());
            assert!(!t.refused(a));
        }
        assert!(t.admit(a).is_ok(), "not blocked before the budget is spent");
        assert!(t.refused(a), "the 4th refusal spends the budget");
        let err = t.admit(a).unwrap_err();
        assert_eq!(err.code(), tonic::Code::ResourceExhausted);
        assert!(err.message().contains("retry in 1 s"), "{}", err.message());
        assert!(t.admit(b).is_ok(), "another address is not affected");
        assert!(t.admit(None).is_ok(), "unknown peers are not throttled");
        // 60/min refills one per second.
        std::thread::sleep(Duration::from_millis(1100));
        assert!(t.admit(a).is_ok(), "admitted again once refilled");
    }

    #[test]
    fn zero_burst_disables() {
        let t = FailedAuthThrottle::new(0, 10);
        let a = Some(IpAddr::from([192, 0, 2, 1]));
        for _ in 0..100 {
            assert!(!t.refused(a));
        }
        assert!(t.admit(a).is_ok());
    }
}
