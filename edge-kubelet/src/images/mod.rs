//! Images and the volunteer's machine: which images a provider accepts (`policy`,
//! `--allowed-images`), which registries a pull may go to (`registry`), which local images
//! may be used for tenants (`ledger`: what the edge pulled; plus `--lend-local-image`).

mod ledger;
mod policy;
mod registry;

pub use ledger::PulledImages;
pub use policy::ImagePolicy;
pub(crate) use policy::check_patterns;
pub use registry::RegistryGuard;
