//! Leader election with a `coordination.k8s.io` Lease (crate `kube-lease-manager`): only one
//! replica acts.
//!
//! Edge sessions live in the leader's memory, so the operator is single-active: a standby
//! refuses edges (gRPC `Unavailable`) and reports not-ready until it holds the Lease. A leader
//! whose renewal fails stops the process rather than risk two active replicas.
//!
//! Timing, for `--lease-duration` D (whole seconds, at least 2): the leader renews when a third
//! of D is left (the crate's "grace"), and every Lease request gives up after half of that
//! third, so a failed or hung renewal ends the process before the Lease could expire in others'
//! eyes. A standby checks the Lease every retry period; the crate's own standby would sleep until
//! the holder's Lease expires, which would make a released Lease (SIGTERM) wait up to D for its
//! successor, so each check is a fresh [`LeaseManager`] that reads the Lease anew.

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use kube::Client;
use kube_lease_manager::{LeaseManager, LeaseManagerBuilder, LeaseManagerError, LeaseParams};
use parking_lot::Mutex;
use tracing::{debug, info, warn};

use crate::health::Readiness;
use crate::{Error, Result};

/// How long releasing the Lease on shutdown may take.
const RELEASE_TIMEOUT: Duration = Duration::from_secs(2);

/// Settings of the election.
#[derive(Clone, Debug)]
pub(crate) struct LeaderConfig {
    /// Lease name.
    pub(crate) name: String,
    /// Lease namespace.
    pub(crate) namespace: String,
    /// This replica's identity (holderIdentity).
    pub(crate) identity: String,
    /// How long a Lease is valid without renewal.
    pub(crate) lease_duration: Duration,
    /// How often a standby checks whether the Lease is free.
    pub(crate) retry_period: Duration,
}

impl LeaderConfig {
    /// Lease duration and renewal grace in whole seconds, as the crate takes them
    /// (0 < grace < duration, or it panics).
    fn seconds(&self) -> (u64, u64) {
        let duration = self.lease_duration.as_secs().max(2);
        (duration, (duration / 3).max(1))
    }

    fn params(&self) -> LeaseParams {
        let (duration, grace) = self.seconds();
        LeaseParams::new(self.identity.clone(), duration, grace)
    }

    /// Bound on each phase (connect, write, read) of a Lease request: half the grace, so a
    /// renewal that fails does so while the Lease is still ours.
    fn request_timeout(&self) -> Duration {
        Duration::from_secs(self.seconds().1) / 2
    }

    fn key(&self) -> String {
        format!("{}/{}", self.namespace, self.name)
    }
}

/// This replica's side of the election.
pub(crate) struct Elector {
    /// A client of its own, with request timeouts (the shared one has none).
    client: Client,
    cfg: LeaderConfig,
    /// The manager holding the Lease, once this replica leads.
    held: Mutex<Option<Arc<LeaseManager>>>,
}

impl Elector {
    /// Prepares the election; contacts nobody yet.
    pub(crate) async fn new(cfg: LeaderConfig) -> Result<Self> {
        let mut config = kube::Config::infer().await.map_err(|e| {
            Error::Config(format!(
                "loading the Kubernetes configuration for leader election: {e}"
            ))
        })?;
        let timeout = Some(cfg.request_timeout());
        config.connect_timeout = timeout;
        config.read_timeout = timeout;
        config.write_timeout = timeout;
        // Count the read timeout from each request, not from when a pooled connection went idle.
        config.reset_reader_on_write = true;
        Ok(Self {
            client: Client::try_from(config)?,
            cfg,
            held: Mutex::new(None),
        })
    }

    /// One standby check: a fresh manager reads the Lease (creating it if missing) and takes it
    /// if it is free, expired or already ours. `None`: someone else holds it.
    async fn try_lead(&self) -> Result<Option<LeaseManager>, LeaseManagerError> {
        let manager = LeaseManagerBuilder::new(self.client.clone(), &self.cfg.name)
            .with_namespace(&self.cfg.namespace)
            .with_parameters(self.cfg.params())
            .build()
            .await?;
        // `changed()` returns once this manager holds the Lease (it starts as not holding);
        // against a live Lease it would sleep until that expires, so we cut it short.
        match tokio::time::timeout(self.cfg.retry_period, manager.changed()).await {
            Ok(Ok(true)) => Ok(Some(manager)),
            Ok(Ok(false)) | Err(_) => Ok(None),
            Ok(Err(e)) => Err(e),
        }
    }

    /// Waits until this replica leads, then keeps renewing; returns only when leadership is
    /// lost (always [`Error::LostLeadership`]). Sends on `led` once, when leadership is won.
    ///
    /// `readiness.leader` is true exactly while we hold the Lease.
    pub(crate) async fn run(
        &self,
        readiness: &Readiness,
        led: tokio::sync::oneshot::Sender<()>,
    ) -> Result<()> {
        let key = self.cfg.key();
        let manager = loop {
            match self.try_lead().await {
                Ok(Some(manager)) => break Arc::new(manager),
                Ok(None) => debug!(lease = %key, "standby"),
                Err(e) => {
                    warn!(lease = %key, error = %e, "leader election round failed");
                    tokio::time::sleep(self.cfg.retry_period).await;
                }
            }
        };
        *self.held.lock() = Some(manager.clone());
        info!(lease = %key, identity = %self.cfg.identity, "became the leader");
        readiness.leader.store(true, Ordering::Relaxed);
        let _ = led.send(());
        // Renews until the Lease is someone else's (`Ok(false)`) or a renewal fails.
        let why = match manager.changed().await {
            Ok(_) => "now held by another replica".to_string(),
            Err(e) => format!("renewal failed: {e}"),
        };
        readiness.leader.store(false, Ordering::Relaxed);
        self.held.lock().take();
        Err(Error::LostLeadership(format!("{key} ({why})")))
    }

    /// Gives the Lease up if this replica holds it, so a successor (a rolling update's new pod)
    /// takes over at once instead of after the Lease expires. Best effort, bounded to 2 s. Call
    /// it after [`Self::run`]'s future is dropped (it would otherwise keep renewing).
    pub(crate) async fn release(&self, readiness: &Readiness) {
        let Some(manager) = self.held.lock().take() else {
            return;
        };
        readiness.leader.store(false, Ordering::Relaxed);
        match tokio::time::timeout(RELEASE_TIMEOUT, manager.release()).await {
            Ok(Ok(())) => info!(lease = %self.cfg.key(), "released the leader Lease"),
            Ok(Err(e)) => warn!(error = %e, "could not release the leader Lease"),
            Err(_) => warn!("releasing the leader Lease timed out"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cfg(lease_duration: Duration) -> LeaderConfig {
        LeaderConfig {
            name: "l".into(),
            namespace: "ns".into(),
            identity: "me".into(),
            lease_duration,
            retry_period: Duration::from_secs(1),
        }
    }

    #[test]
    fn any_lease_duration_makes_valid_params() {
        // The crate panics unless 0 < grace < duration (whole seconds).
        for ms in [0, 999, 1_000, 1_500, 2_000, 3_000, 15_000, 3_600_000] {
            let c = cfg(Duration::from_millis(ms));
            let (duration, grace) = c.seconds();
            assert!(0 < grace && grace < duration, "{ms} ms: {duration}/{grace}");
            let _ = c.params();
        }
    }

    #[test]
    fn the_leader_renews_with_a_third_left_and_requests_give_up_before_it_runs_out() {
        let c = cfg(Duration::from_secs(15));
        assert_eq!(c.seconds(), (15, 5));
        assert_eq!(c.request_timeout(), Duration::from_millis(2_500));
        for secs in [2, 3, 10, 15, 60] {
            let c = cfg(Duration::from_secs(secs));
            let grace = Duration::from_secs(c.seconds().1);
            assert!(c.request_timeout() < grace, "{secs} s");
            assert!(!c.request_timeout().is_zero(), "{secs} s");
        }
    }
}
