//! Kubernetes resource quantities: the one implementation lives in `decloud_crds::quantity`.

pub use decloud_crds::quantity::{
    cpu_millis, format_bytes as format_memory, format_millis as format_cpu, memory_bytes,
};
