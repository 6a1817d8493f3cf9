//! Kubernetes resource quantities: the one implementation lives in `decloud_crds::quantity`.

pub use decloud_crds::quantity::*;
