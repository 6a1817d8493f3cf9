//! DeCloud gateway: carries public HTTP to Workload replicas through tunnels that the replicas'
//! edges open over their own outbound connections, and serves the kubelet API (`kubectl logs`)
//! on behalf of every virtual node.
//!
//! The crate knows nothing of edge sessions: the operator supplies a [`TunnelDialer`] and a
//! [`LogSource`] backed by its session registry. Providers never open an inbound port, and no
//! provider address passes through here.
#![forbid(unsafe_code)]

mod activity;
mod error;
mod h2;
mod kubelet_api;
mod limits;
mod proxy;
mod routes;
mod seams;
mod tcp;
mod tls;

pub use error::{DialError, Error, LogError, Result, StreamError};
pub use kubelet_api::{
    Access, AccessReview, KubeAccessReview, KubeletAuth, REVIEW_CACHE_ENTRIES, REVIEW_TTL,
    ReviewError, ServingNode, User, self_signed_tls, serve_kubelet_api, serve_node_kubelet_api,
};
pub use limits::GatewayLimits;
pub use proxy::{Https, serve_gateway, serve_gateway_with_tcp};
pub use routes::{Backend, Route, Routes, ready_backends, workload_host};
pub use seams::{
    ContainerStreams, ExecInput, ExecIo, ExecOutput, ExecRequest, LogQuery, LogSource, LogStream,
    NodeReadings, TunnelDialer, TunnelIo,
};
pub use tcp::TcpExposure;
pub use tls::{
    ACME_CHALLENGE_PATH, CertError, CertStore, Http01Challenges, LoadedCert, MAX_CHAIN,
    MAX_CHALLENGES, MAX_PEM_BYTES, TLS_SECRET_TYPE, load_tls_secret,
};
