//! The crate's one error type.

use std::time::Duration;

/// Everything that can go wrong inside edge-kubelet.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The container engine could not be reached or answered with an error.
    #[error("container runtime: {0}")]
    Runtime(String),
    /// A container, image or network the caller named does not exist.
    #[error("not found: {0}")]
    NotFound(String),
    /// The image could not be pulled (or is missing under `Never`); the message is the engine's.
    #[error("image pull failed: {message}")]
    ImagePull {
        /// Kubernetes waiting reason: `ErrImagePull` or `ErrImageNeverPull`.
        reason: &'static str,
        /// The engine's own message.
        message: String,
    },
    /// A container could not be created or started; the message is the engine's.
    #[error("cannot create container: {0}")]
    CreateContainer(String),
    /// The container's configuration forbids starting it (kubelet's
    /// `CreateContainerConfigError`, e.g. runAsNonRoot with a root image).
    #[error("{0}")]
    CreateContainerConfig(String),
    /// Input from the operator or the command line that cannot be used.
    #[error("invalid input: {0}")]
    InvalidInput(String),
    /// Asked for something this edge does not support (yet).
    #[error("unsupported: {0}")]
    Unsupported(String),
    /// The local state file could not be read or written.
    #[error("state file {path}: {message}")]
    StateFile {
        /// Path of the state file.
        path: String,
        /// What went wrong.
        message: String,
    },
    /// The session with the operator could not be opened or broke.
    #[error("session: {0}")]
    Session(String),
    /// The operator refused `Register`, or the call failed on the way.
    #[error("join refused: {code:?}: {message}")]
    JoinRefused {
        /// The gRPC status code.
        code: tonic::Code,
        /// The operator's (or transport's) message.
        message: String,
    },
    /// An operation did not finish in time.
    #[error("timed out after {0:?}")]
    Timeout(Duration),
    /// The control socket (`pause`, `drain`, `resume`) could not be served or reached.
    #[error("{0}")]
    Control(String),
}

/// Result with the crate's [`Error`].
pub type Result<T, E = Error> = std::result::Result<T, E>;

impl Error {
    /// A short, stable label for Prometheus (`edge_errors_total{error="…"}`).
    pub fn metric_label(&self) -> &'static str {
        match self {
            Error::Runtime(_) => "runtime",
            Error::NotFound(_) => "not_found",
            Error::ImagePull { .. } => "image_pull",
            Error::CreateContainer(_) => "create_container",
            Error::CreateContainerConfig(_) => "container_config",
            Error::InvalidInput(_) => "invalid_input",
            Error::Unsupported(_) => "unsupported",
            Error::StateFile { .. } => "state_file",
            Error::Session(_) => "session",
            Error::JoinRefused { .. } => "join_refused",
            Error::Timeout(_) => "timeout",
            Error::Control(_) => "control",
        }
    }
}

impl From<tonic::transport::Error> for Error {
    fn from(e: tonic::transport::Error) -> Self {
        // The transport error's Display is terse; its source says why (refused, DNS, …).
        let mut msg = e.to_string();
        let mut src = std::error::Error::source(&e);
        while let Some(s) = src {
            msg.push_str(": ");
            msg.push_str(&s.to_string());
            src = s.source();
        }
        Error::Session(msg)
    }
}

impl From<tonic::Status> for Error {
    fn from(s: tonic::Status) -> Self {
        Error::Session(format!("{:?}: {}", s.code(), s.message()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn metric_labels_are_short_and_distinct() {
        let all = [
            Error::Runtime(String::new()),
            Error::NotFound(String::new()),
            Error::ImagePull {
                reason: "ErrImagePull",
                message: String::new(),
            },
            Error::CreateContainer(String::new()),
            Error::CreateContainerConfig(String::new()),
            Error::InvalidInput(String::new()),
            Error::Unsupported(String::new()),
            Error::StateFile {
                path: String::new(),
                message: String::new(),
            },
            Error::Session(String::new()),
            Error::Timeout(Duration::from_secs(1)),
        ];
        let labels: std::collections::HashSet<_> = all.iter().map(Error::metric_label).collect();
        assert_eq!(labels.len(), all.len());
        assert!(labels.iter().all(|l| l.len() < 20 && !l.contains(' ')));
    }
}
