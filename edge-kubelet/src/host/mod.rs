//! What the edge does to the volunteer's machine so that lending it stays safe: the egress
//! policy (what containers may reach, `egress`), the ceiling cgroup (never more than the
//! offer, `cgroup`), the IP ranges both speak of (`cidr`) and the persistent volumes with a
//! hard size (`volumes`).

mod cgroup;
mod cidr;
mod egress;
mod volumes;

pub(crate) use cgroup::{Ceiling, CgroupLayout, MIN_MEMORY_BYTES};
pub use cidr::Cidr;
pub use egress::EgressPolicy;
pub(crate) use egress::{
    Chains, Family, FamilyRules, ServiceRedirect, build, forward_hook, install, listing,
    nameservers, uninstall, verify, with_service_redirect,
};
pub use volumes::{
    MAX_VOLUME_BYTES, MIN_VOLUME_BYTES, PERSISTENT_VOLUMES_DIR, Volume, VolumeStore,
};
