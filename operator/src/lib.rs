//! DeCloud operator.
#![forbid(unsafe_code)]
