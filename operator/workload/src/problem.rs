//! Why a Workload's certificate is not served (shared by the Secret and ACME paths).

/// Why a Workload's certificate is not served. `reason` is the `CertificateReady` reason.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CertificateProblem {
    /// `SecretNotFound`, `InvalidCertificate`, `HostNotCovered`, `Expired`, …
    pub reason: String,
    /// For the condition's message and the event.
    pub message: String,
}
