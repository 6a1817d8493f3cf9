//! Reconnect back-off, shared by the session loop and joining.

use std::time::Duration;

use rand::Rng;

/// Reconnect back-off: doubles from 100 ms up to `max`, each wait jittered to 50–100 %.
#[derive(Debug, Clone)]
pub(crate) struct ReconnectBackoff {
    next: Duration,
    max: Duration,
}

impl ReconnectBackoff {
    pub(crate) const INITIAL: Duration = Duration::from_millis(100);

    /// A fresh back-off capped at `max`.
    pub(crate) fn new(max: Duration) -> Self {
        ReconnectBackoff {
            next: Self::INITIAL.min(max),
            max,
        }
    }

    /// The next wait (jittered), advancing the back-off.
    pub(crate) fn next_delay(&mut self) -> Duration {
        let base = self.next;
        self.next = (self.next * 2).min(self.max);
        let factor: f64 = rand::rng().random_range(0.5..=1.0);
        base.mul_f64(factor)
    }

    /// After a session that got as far as `Welcome`: start again from the bottom.
    pub(crate) fn reset(&mut self) {
        self.next = Self::INITIAL.min(self.max);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_doubles_jitters_caps_and_resets() {
        let mut b = ReconnectBackoff::new(Duration::from_secs(5));
        let mut last_base = Duration::ZERO;
        for i in 0..10 {
            let base = (ReconnectBackoff::INITIAL * 2u32.pow(i)).min(Duration::from_secs(5));
            let d = b.next_delay();
            assert!(
                d >= base / 2 && d <= base,
                "{i}: {d:?} not in [{:?}, {base:?}]",
                base / 2
            );
            last_base = base;
        }
        assert_eq!(last_base, Duration::from_secs(5));
        b.reset();
        assert!(b.next_delay() <= ReconnectBackoff::INITIAL);
    }
}
