//! The node side of the edge: the long-lived `Session` stream to the operator
//! (`session_loop`), and what the operator asks for over it: container logs (`logs`),
//! tunnels to container ports (`tunnel`) and exec/attach sessions (`exec`).

mod exec;
mod logs;
mod services;
mod session_loop;
mod stats;
mod tunnel;

pub(crate) use services::{ServiceLink, serve as serve_services};
pub(crate) use session_loop::{SessionConfig, run};
