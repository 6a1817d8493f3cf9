//! Leader election with a `coordination.k8s.io` Lease: only one replica acts.
//!
//! Edge sessions live in the leader's memory, so the operator is single-active: a standby
//! refuses edges (gRPC `Unavailable`) and reports not-ready until it holds the Lease. A leader
//! that cannot renew in time stops the process rather than risk two active replicas.

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use chrono::{SecondsFormat, Utc};
use k8s_openapi::api::coordination::v1::Lease;
use kube::Client;
use kube::api::{Api, PostParams};
use serde_json::json;
use tracing::{debug, info, warn};

use crate::health::Readiness;
use crate::{Error, Result};

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
    /// How often the holder renews, and standbys retry.
    pub(crate) retry_period: Duration,
}

/// What one election round decided.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum Round {
    /// We hold the Lease.
    Leader,
    /// Someone else holds a live Lease.
    Standby(String),
}

fn now_micro() -> String {
    Utc::now().to_rfc3339_opts(SecondsFormat::Micros, true)
}

/// Whether a Lease held by someone else has expired at `now`.
pub(crate) fn expired(lease: &Lease, now: chrono::DateTime<Utc>) -> bool {
    let Some(spec) = &lease.spec else {
        return true;
    };
    let Some(renewed) = spec.renew_time.as_ref().or(spec.acquire_time.as_ref()) else {
        return true;
    };
    let renewed = chrono::DateTime::<Utc>::from(std::time::SystemTime::from(renewed.0));
    let duration = chrono::Duration::seconds(i64::from(spec.lease_duration_seconds.unwrap_or(15)));
    renewed + duration < now
}

/// One try to acquire or renew the Lease.
pub(crate) async fn try_acquire(api: &Api<Lease>, cfg: &LeaderConfig) -> Result<Round> {
    let secs = cfg.lease_duration.as_secs().max(1) as i32;
    let existing = api.get_opt(&cfg.name).await?;
    let Some(mut lease) = existing else {
        let lease: Lease = serde_json::from_value(json!({
            "metadata": {"name": cfg.name, "namespace": cfg.namespace},
            "spec": {
                "holderIdentity": cfg.identity,
                "leaseDurationSeconds": secs,
                "acquireTime": now_micro(),
                "renewTime": now_micro(),
                "leaseTransitions": 0,
            },
        }))?;
        return match api.create(&PostParams::default(), &lease).await {
            Ok(_) => Ok(Round::Leader),
            Err(kube::Error::Api(e)) if e.code == 409 => Ok(Round::Standby("(racing)".into())),
            Err(e) => Err(e.into()),
        };
    };
    let spec = lease.spec.get_or_insert_with(Default::default);
    let holder = spec.holder_identity.clone().unwrap_or_default();
    let ours = holder == cfg.identity;
    if !ours && !holder.is_empty() && !expired(&lease, Utc::now()) {
        return Ok(Round::Standby(holder));
    }
    let micro: k8s_openapi::apimachinery::pkg::apis::meta::v1::MicroTime =
        serde_json::from_value(json!(now_micro()))?;
    let spec = lease.spec.get_or_insert_with(Default::default);
    if !ours {
        spec.holder_identity = Some(cfg.identity.clone());
        spec.acquire_time = Some(micro.clone());
        spec.lease_transitions = Some(spec.lease_transitions.unwrap_or(0) + 1);
    }
    spec.renew_time = Some(micro);
    spec.lease_duration_seconds = Some(secs);
    // `replace` carries the resourceVersion we read: a concurrent change makes this a 409.
    match api.replace(&cfg.name, &PostParams::default(), &lease).await {
        Ok(_) => Ok(Round::Leader),
        Err(kube::Error::Api(e)) if e.code == 409 => Ok(Round::Standby(holder)),
        Err(e) => Err(e.into()),
    }
}

/// Gives the Lease up if this replica holds it, so a successor (a rolling update's new pod)
/// takes over at once instead of after the Lease expires. Best effort, bounded to 2 s.
pub(crate) async fn release(client: &Client, cfg: &LeaderConfig) {
    let api: Api<Lease> = Api::namespaced(client.clone(), &cfg.namespace);
    let attempt = async {
        let Some(mut lease) = api.get_opt(&cfg.name).await? else {
            return Ok::<bool, kube::Error>(false);
        };
        let spec = lease.spec.get_or_insert_with(Default::default);
        if spec.holder_identity.as_deref() != Some(cfg.identity.as_str()) {
            return Ok(false);
        }
        spec.holder_identity = None;
        spec.lease_duration_seconds = Some(1);
        // `replace` carries the resourceVersion read: never clears a successor's Lease.
        api.replace(&cfg.name, &PostParams::default(), &lease)
            .await?;
        Ok(true)
    };
    match tokio::time::timeout(Duration::from_secs(2), attempt).await {
        Ok(Ok(true)) => info!(lease = %cfg.name, "released the leader Lease"),
        Ok(Ok(false)) => {}
        Ok(Err(e)) => warn!(error = %e, "could not release the leader Lease"),
        Err(_) => warn!("releasing the leader Lease timed out"),
    }
}

/// Waits until this replica leads, then keeps renewing; returns only when leadership is lost.
///
/// `readiness.leader` is true exactly while we hold the Lease.
pub(crate) async fn run(
    client: Client,
    cfg: LeaderConfig,
    readiness: Arc<Readiness>,
    led: tokio::sync::oneshot::Sender<()>,
) -> Result<()> {
    let api: Api<Lease> = Api::namespaced(client, &cfg.namespace);
    let mut led = Some(led);
    let mut last_renew: Option<Instant> = None;
    let key = format!("{}/{}", cfg.namespace, cfg.name);
    loop {
        match try_acquire(&api, &cfg).await {
            Ok(Round::Leader) => {
                if last_renew.is_none() {
                    info!(lease = %key, identity = %cfg.identity, "became the leader");
                }
                last_renew = Some(Instant::now());
                readiness.leader.store(true, Ordering::Relaxed);
                if let Some(tx) = led.take() {
                    let _ = tx.send(());
                }
            }
            Ok(Round::Standby(holder)) => {
                if last_renew.is_some() {
                    readiness.leader.store(false, Ordering::Relaxed);
                    return Err(Error::LostLeadership(format!(
                        "{key} (now held by {holder})"
                    )));
                }
                debug!(lease = %key, %holder, "standby");
            }
            Err(e) => warn!(lease = %key, error = %e, "leader election round failed"),
        }
        // Step down before the Lease could expire in others' eyes.
        if let Some(t) = last_renew
            && t.elapsed() > cfg.lease_duration * 2 / 3
        {
            readiness.leader.store(false, Ordering::Relaxed);
            return Err(Error::LostLeadership(format!("{key} (renewal failed)")));
        }
        tokio::time::sleep(cfg.retry_period).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn lease(renew: Option<&str>, secs: i32) -> Lease {
        serde_json::from_value(json!({
            "metadata": {"name": "l"},
            "spec": {"holderIdentity": "a", "leaseDurationSeconds": secs, "renewTime": renew},
        }))
        .unwrap()
    }

    #[test]
    fn expiry() {
        let now = chrono::DateTime::parse_from_rfc3339("2026-01-01T00:00:20Z")
            .unwrap()
            .with_timezone(&Utc);
        assert!(!expired(
            &lease(Some("2026-01-01T00:00:10.000000Z"), 15),
            now
        ));
        assert!(expired(
            &lease(Some("2026-01-01T00:00:04.000000Z"), 15),
            now
        ));
        assert!(expired(&lease(None, 15), now));
    }
}
