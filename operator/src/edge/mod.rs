//! The edge side: the gRPC service edges dial, each edge's session loop, the registry of live
//! sessions, liveness from heartbeats, and who is calling (auth).

pub(crate) mod auth;
mod availability;
mod counting;
pub(crate) mod liveness;
mod registry;
mod service;
mod session;
#[cfg(test)]
mod tests;

pub(crate) use auth::CredentialAuthenticator;
#[cfg(test)]
pub(crate) use auth::TrustingAuthenticator;
pub(crate) use availability::EdgeAvailability;
#[cfg(test)]
pub(crate) use registry::SESSION_QUEUE;
pub(crate) use registry::{
    EdgeSession, HelloInfo, PodNetwork, ProviderRegistry, ProviderView, clamp_resources,
};
pub(crate) use service::{EdgeService, bind, serve};
