//! The operator's error type.

/// Everything that can go wrong inside the operator.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// A Kubernetes API call failed.
    #[error("kubernetes API: {0}")]
    Kube(#[from] kube::Error),
    /// The finalizer helper failed (adding/removing the finalizer or the inner reconcile).
    #[error("finalizer: {0}")]
    Finalizer(#[source] Box<kube::runtime::finalizer::Error<Error>>),
    /// JSON (de)serialisation of an object failed.
    #[error("serialisation: {0}")]
    Serde(#[from] serde_json::Error),
    /// A resource quantity could not be parsed.
    #[error("{0}")]
    Quantity(#[from] decloud_crds::quantity::QuantityError),
    /// A pod asks for something the edge cannot run.
    #[error("unsupported pod: {0}")]
    Unsupported(String),
    /// The CRDs are not installed in the cluster.
    #[error(
        "the DeCloud CRDs are not installed ({0}); install them with `kubectl apply -f crds/decloud.yaml`"
    )]
    CrdsMissing(String),
    /// A listener could not be bound or served.
    #[error("serving {what}: {source}")]
    Serve {
        /// Which listener.
        what: &'static str,
        /// The I/O error.
        #[source]
        source: std::io::Error,
    },
    /// The gRPC server failed.
    #[error("gRPC server: {0}")]
    Grpc(#[from] tonic::transport::Error),
    /// The operator's CA or serving certificate could not be made or loaded.
    #[error("TLS: {0}")]
    Tls(String),
    /// A setting or command-line value is unusable, or a command cannot be carried out.
    #[error("{0}")]
    Config(String),
    /// This replica lost the leader Lease; it must stop so that two replicas never both act.
    #[error("lost leadership of Lease {0}")]
    LostLeadership(String),
}

impl Error {
    /// A short label for the `error` dimension of metrics.
    pub fn metric_label(&self) -> &'static str {
        match self {
            Error::Kube(kube::Error::Api(e)) if e.code == 409 => "conflict",
            Error::Kube(kube::Error::Api(e)) if e.code == 404 => "not_found",
            Error::Kube(_) => "kube",
            Error::Finalizer(e) => match e.as_ref() {
                kube::runtime::finalizer::Error::ApplyFailed(inner)
                | kube::runtime::finalizer::Error::CleanupFailed(inner) => inner.metric_label(),
                _ => "finalizer",
            },
            Error::Serde(_) => "serde",
            Error::Quantity(_) => "quantity",
            Error::Unsupported(_) => "unsupported",
            Error::CrdsMissing(_) => "crds_missing",
            Error::Serve { .. } => "serve",
            Error::Grpc(_) => "grpc",
            Error::LostLeadership(_) => "lost_leadership",
            Error::Tls(_) => "tls",
            Error::Config(_) => "config",
        }
    }
}

/// The operator's result type.
pub type Result<T, E = Error> = std::result::Result<T, E>;
