//! The crate's one error type.

use kube::runtime::finalizer;

/// Everything that can go wrong in the Workload controller.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// A Kubernetes API call failed.
    #[error("Kubernetes API call failed: {0}")]
    Kube(#[source] kube::Error),
    /// Adding or removing the finalizer failed, or the wrapped step did.
    #[error("{0}")]
    Finalizer(#[source] Box<finalizer::Error<Error>>),
    /// The Workload cannot be acted on as it stands.
    #[error("invalid Workload: {0}")]
    InvalidWorkload(String),
    /// Cleanup is waiting for pods to go away; the finalizer stays until they have.
    #[error("waiting for {0} pod(s) to terminate")]
    PodsRemaining(usize),
    /// The Workload or Provider CRD is not installed.
    #[error(
        "the {0} CRD is not installed ({1}); install it with `kubectl apply -f charts/decloud/crds/` \
         or `cargo run -p decloud-crds --bin crdgen | kubectl apply -f -`"
    )]
    CrdMissing(&'static str, #[source] kube::Error),
}

impl Error {
    /// Short label for metrics and logs.
    pub fn metric_label(&self) -> &'static str {
        match self {
            Self::Kube(_) => "kube",
            Self::Finalizer(e) => match e.as_ref() {
                finalizer::Error::ApplyFailed(e) | finalizer::Error::CleanupFailed(e) => {
                    e.metric_label()
                }
                _ => "finalizer",
            },
            Self::InvalidWorkload(_) => "invalid_workload",
            Self::PodsRemaining(_) => "pods_remaining",
            Self::CrdMissing(..) => "crd_missing",
        }
    }

    /// The innermost error of this crate, looking through the finalizer wrapper.
    pub fn inner(&self) -> &Self {
        match self {
            Self::Finalizer(e) => match e.as_ref() {
                finalizer::Error::ApplyFailed(e) | finalizer::Error::CleanupFailed(e) => e.inner(),
                _ => self,
            },
            _ => self,
        }
    }
}

impl From<kube::Error> for Error {
    fn from(e: kube::Error) -> Self {
        Self::Kube(e)
    }
}

/// Result with [`Error`].
pub type Result<T, E = Error> = std::result::Result<T, E>;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn labels_look_through_the_finalizer() {
        let e = Error::Finalizer(Box::new(finalizer::Error::CleanupFailed(
            Error::PodsRemaining(2),
        )));
        assert_eq!(e.metric_label(), "pods_remaining");
        assert!(matches!(e.inner(), Error::PodsRemaining(2)));
        let e = Error::Finalizer(Box::new(finalizer::Error::UnnamedObject));
        assert_eq!(e.metric_label(), "finalizer");
    }
}
