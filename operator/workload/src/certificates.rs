//! The certificate a Workload names (`spec.expose.tls.secretName`): read by name from the
//! Workload's own namespace, handed to the gateway's certificate store, and reported as the
//! `CertificateReady` condition.
//!
//! Secrets are read with one `get` per TLS Workload and reconcile (rechecked every
//! [`RECHECK_READY`], sooner while not ready), not with a watch: a watch (or list) of Secrets
//! would cache every Secret of the cluster, every tenant's keys and tokens, in the operator's
//! memory, where a label or field selector would still cache every TLS Secret. A `get` reads
//! only what a Workload names, in its namespace, and the operator's RBAC needs only `get`.
//! The price is that a rotated Secret is served within a minute rather than at once.

use std::{sync::Arc, time::Duration};

use decloud_crds::{Workload, hosts::HostClaim};
use k8s_openapi::api::core::v1::Secret;
use kube::{Api, ResourceExt};

use crate::{
    Result,
    acme::{Acme, AcmeVerdict},
};

/// How often a served certificate's Secret is read again (rotation, expiry).
pub(crate) const RECHECK_READY: Duration = Duration::from_secs(60);
/// How often a Secret that could not be used is read again.
pub(crate) const RECHECK_NOT_READY: Duration = Duration::from_secs(20);

pub use crate::problem::CertificateProblem;

/// The gateway's side of user-supplied certificates.
///
/// Called from reconciles, concurrently for different Workloads: must not block.
pub trait Certificates: Send + Sync {
    /// Checks `secret` for `host` and, if it is usable, serves it for `host` on behalf of
    /// Workload `owner` (`namespace/name`) in place of whatever `owner` had before; if it is
    /// not, stops serving `owner`'s certificate and says why.
    fn install(
        &self,
        owner: &str,
        host: &str,
        secret: &Secret,
    ) -> std::result::Result<(), CertificateProblem>;
    /// Stops serving what `owner` installed (the Workload is gone, or no longer owns its host
    /// or names a Secret).
    fn remove(&self, owner: &str);
    /// The Workload's URL while its certificate is served.
    fn https_url(&self, host: &str) -> String;
    /// The ACME issuer for Workloads that name no Secret, if the gateway has one.
    fn acme(&self) -> Option<Arc<Acme>> {
        None
    }
}

/// The certificate verdict for `wl`: `None` when it names no Secret, else the URL to show
/// or why no certificate is served. Installs or removes the certificate on the way.
pub(crate) async fn reconcile_certificate(
    wl: &Workload,
    client: &kube::Client,
    certificates: &SharedCertificates,
    host: &HostClaim,
    base_domain: &str,
) -> Result<Option<std::result::Result<String, CertificateProblem>>> {
    let ns = wl.namespace().unwrap_or_default();
    let owner = format!("{ns}/{}", wl.name_any());
    let tls = wl.spec.expose.as_ref().and_then(|e| e.tls.as_ref());
    let certs = certificates.as_ref();
    let Some(tls) = tls else {
        return reconcile_acme(wl, certs, host, base_domain, &owner).await;
    };
    let problem = |reason: &str, message: String| {
        Ok(Some(Err(CertificateProblem {
            reason: reason.into(),
            message,
        })))
    };
    let Some(certs) = certs else {
        return problem(
            "HttpsDisabled",
            "the gateway serves no HTTPS (the operator runs without --https-listen)".into(),
        );
    };
    let HostClaim::Owner(host) = host else {
        certs.remove(&owner);
        return problem(
            "HostNotAccepted",
            "the Workload does not serve its host (see condition HostAccepted)".into(),
        );
    };
    // By name, in the Workload's own namespace: no other namespace's Secret can be reached.
    let secret = Api::<Secret>::namespaced(client.clone(), &ns)
        .get_opt(&tls.secret_name)
        .await?;
    let Some(secret) = secret else {
        certs.remove(&owner);
        return problem(
            "SecretNotFound",
            format!("Secret {} not found in namespace {ns}", tls.secret_name),
        );
    };
    Ok(Some(match certs.install(&owner, host, &secret) {
        Ok(()) => Ok(certs.https_url(host)),
        Err(p) => Err(CertificateProblem {
            message: format!("Secret {}: {}", tls.secret_name, p.message),
            ..p
        }),
    }))
}

/// The verdict for a Workload naming no Secret: an ACME certificate if the gateway has an
/// issuer that covers its host, else none.
async fn reconcile_acme(
    wl: &Workload,
    certs: Option<&Arc<dyn Certificates>>,
    host: &HostClaim,
    base_domain: &str,
    owner: &str,
) -> Result<Option<std::result::Result<String, CertificateProblem>>> {
    let Some(certs) = certs else {
        return Ok(None);
    };
    let acme = certs.acme();
    let claimed = decloud_crds::hosts::claimed_host(wl, base_domain);
    let (Some(acme), Some(claimed)) = (acme, claimed) else {
        certs.remove(owner);
        return Ok(None);
    };
    if !acme.covers(&claimed, base_domain) {
        certs.remove(owner);
        return Ok(None);
    }
    let HostClaim::Owner(host) = host else {
        // Never ordered: the Workload does not own the host (not granted, or another's).
        certs.remove(owner);
        return Ok(Some(Err(CertificateProblem {
            reason: "HostNotAccepted".into(),
            message: format!(
                "no certificate is ordered for {claimed}: the Workload does not serve it (see condition HostAccepted)"
            ),
        })));
    };
    let ns = wl.namespace().unwrap_or_default();
    Ok(Some(match acme.certificate(&ns, host).await? {
        AcmeVerdict::Serve(secret) => match certs.install(owner, host, &secret) {
            Ok(()) => Ok(certs.https_url(host)),
            Err(p) => Err(CertificateProblem {
                message: format!("the ACME certificate: {}", p.message),
                ..p
            }),
        },
        AcmeVerdict::Problem(p) => {
            certs.remove(owner);
            Err(p)
        }
    }))
}

/// Shared handle to the gateway's certificates, if it serves HTTPS.
pub(crate) type SharedCertificates = Option<Arc<dyn Certificates>>;
