//! A small SPDY/3.1 server, for the streams the Kubernetes API server opens to a kubelet.
//!
//! Why it exists: for `kubectl exec`, `attach` and `port-forward` the API server (v1.34) talks
//! to the kubelet in SPDY/3.1 only. It translates kubectl's WebSocket (`v5.channel.k8s.io`)
//! into a SPDY connection offering `v5`…`v1.channel.k8s.io` (client-go's
//! `remotecommand.NewSPDYExecutorRejectRedirects`, `apiserver/pkg/util/proxy/streamtranslator.go`),
//! and for port-forward it tunnels kubectl's own SPDY connection (`portforward.k8s.io`)
//! through to the kubelet unchanged (`streamtunnel.go`). No maintained Rust SPDY crate exists
//! (the old `spdy` crate predates async Rust and speaks draft 2/3 without 3.1's framing
//! checks), and the subset needed is small: the server side of SPDY/3.1 as
//! `github.com/moby/spdystream` speaks it, which has no flow control and no server push.
//!
//! [`frame`] is the wire format, [`conn`] one connection. Everything a client controls is
//! bounded: frame sizes, inflated header blocks (zip bombs), headers per block, streams per
//! connection, the time a connection may stay silent.

mod conn;
mod dictionary;
mod frame;

pub(crate) use conn::{Acceptor, Connection, Limits, MAX_WRITE, SpdyStream, StreamWriter};
#[cfg(test)]
pub(crate) use frame::{Frame, FrameDecoder, FrameEncoder};
pub(crate) use frame::{Headers, header};

/// The `Upgrade` token of SPDY/3.1.
pub(crate) const UPGRADE_TOKEN: &str = "SPDY/3.1";

#[cfg(test)]
mod tests;
