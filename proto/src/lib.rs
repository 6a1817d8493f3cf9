//! The DeCloud edge protocol (`decloud.edge.v1`), generated at build time from
//! `proto/decloud/edge/v1/edge.proto`.
#![forbid(unsafe_code)]

/// Package `decloud.edge.v1`.
pub mod v1 {
    #![allow(clippy::all, missing_docs, unreachable_pub)]
    tonic::include_proto!("decloud.edge.v1");
}

pub use v1::*;

/// Largest message either side accepts on any RPC (hostile input is cut off here).
pub const MAX_MESSAGE_BYTES: usize = 4 * 1024 * 1024;
