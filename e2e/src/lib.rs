//! DeCloud end-to-end environment.
#![forbid(unsafe_code)]
