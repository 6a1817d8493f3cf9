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

    /// The refusal to answer `peer`'s failures with while it is out of budget. Consulting it
    /// spends nothing: only [`Self::refused`] does.
    pub(crate) fn check(&self, peer: Option<IpAddr>) -> Option<Status> {
        let peer = budget_key(peer?);
        let mut blocked = self.blocked();
        match blocked.get(&peer) {
            Some(until) if *until > Instant::now() => {
                let wait = until.saturating_duration_since(Instant::now());
                Some(Status::resource_exhausted(format!(
                    "too many refused authentication attempts from {peer}; retry in {} s",
                    wait.as_secs().max(1)
                )))
            }
            Some(_) => {
                blocked.remove(&peer);
                None
            }
            None => None,
        }
    }

    /// Counts one refusal from `peer`; true if that used up its budget (it is now blocked).
    pub(crate) fn refused(&self, peer: Option<IpAddr>) -> bool {
        let (Some(peer), Some(limiter)) = (peer, &self.limiter) else {
            return false;
        };
        let mut key = budget_key(peer);
        if limiter.len() >= PRUNE_ABOVE {
            limiter.retain_recent();
            limiter.shrink_to_fit();
        }
        // Memory stays bounded: past the cap, new addresses share one budget.
        if limiter.len() >= PRUNE_ABOVE && !self.blocked().contains_key(&key) {
            key = OVERFLOW;
        }
        let Err(not_until) = limiter.check_key(&key) else {
            return false;
        };
        let wait: Duration = not_until.wait_time_from(DefaultClock::default().now());
        let mut blocked = self.blocked();
        if blocked.len() >= PRUNE_ABOVE {
            let now = Instant::now();
            blocked.retain(|_, until| *until > now);
        }
        if blocked.len() >= PRUNE_ABOVE {
            key = OVERFLOW;
        }
        blocked.insert(key, Instant::now() + wait);
        tracing::warn!(peer = %key, retry_in = ?wait, "too many refused authentication attempts; refusing this address for a while");
        true
    }
}

/// Where the refusals of addresses beyond the tracked maximum are counted.
const OVERFLOW: IpAddr = IpAddr::V6(std::net::Ipv6Addr::UNSPECIFIED);

/// The budget an address draws on: its own for IPv4, its /64 for IPv6 (one subscriber's
/// prefix: an attacker holding a /64 must not get 2^64 budgets).
fn budget_key(peer: IpAddr) -> IpAddr {
    match peer {
        IpAddr::V4(_) => peer,
        IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
            Some(v4) => IpAddr::V4(v4),
            None => {
                let s = v6.segments();
                IpAddr::V6(std::net::Ipv6Addr::new(s[0], s[1], s[2], s[3], 0, 0, 0, 0))
            }
        },
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
            assert!(t.check(a).is_none());
            assert!(!t.refused(a));
        }
        assert!(
            t.check(a).is_none(),
            "not blocked before the budget is spent"
        );
        assert!(t.refused(a), "the 4th refusal spends the budget");
        let err = t.check(a).unwrap();
        assert_eq!(err.code(), tonic::Code::ResourceExhausted);
        assert!(err.message().contains("retry in 1 s"), "{}", err.message());
        assert!(t.check(b).is_none(), "another address is not affected");
        assert!(t.check(None).is_none(), "unknown peers are not throttled");
        // 60/min refills one per second.
        std::thread::sleep(Duration::from_millis(1100));
        assert!(t.check(a).is_none(), "admitted again once refilled");
    }

    #[test]
    fn zero_burst_disables() {
        let t = FailedAuthThrottle::new(0, 10);
        let a = Some(IpAddr::from([192, 0, 2, 1]));
        for _ in 0..100 {
            assert!(!t.refused(a));
        }
        assert!(t.check(a).is_none());
    }

    #[test]
    fn an_ipv6_prefix_shares_one_budget() {
        let t = FailedAuthThrottle::new(2, 1);
        let addr = |last: u16| Some(IpAddr::from([0x2001, 0xdb8, 1, 2, 0, 0, 0, last]));
        assert!(!t.refused(addr(1)));
        assert!(!t.refused(addr(2)));
        assert!(
            t.refused(addr(3)),
            "the third address of the /64 spends the budget"
        );
        assert!(t.check(addr(4)).is_some());
        let other = Some(IpAddr::from([0x2001, 0xdb8, 1, 3, 0, 0, 0, 1]));
        assert!(t.check(other).is_none(), "another /64 is not affected");
    }

    #[test]
    fn memory_stays_bounded_under_a_flood_of_addresses() {
        let t = FailedAuthThrottle::new(1, 1);
        for i in 0..(PRUNE_ABOVE as u32 + 500) {
            t.refused(Some(IpAddr::from(i.to_be_bytes())));
            t.refused(Some(IpAddr::from(i.to_be_bytes())));
        }
        let tracked = t.limiter.as_ref().unwrap().len();
        assert!(tracked <= PRUNE_ABOVE + 1, "{tracked} addresses tracked");
        assert!(
            t.blocked().len() <= PRUNE_ABOVE + 1,
            "{} blocked",
            t.blocked().len()
        );
    }
}
