//! DeCloud edge-kubelet.
#![forbid(unsafe_code)]
