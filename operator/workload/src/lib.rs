//! DeCloud Workload controller.
#![forbid(unsafe_code)]
