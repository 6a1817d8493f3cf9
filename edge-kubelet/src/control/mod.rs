//! Whether this machine takes work: the owner's pause / drain / resume, the `--schedule`
//! windows and the `--when-idle` rule, combined into one state the session reports.
//!
//! [`Availability`] is the in-process handle (the local console's buttons, the control socket
//! and SIGTERM all use it); the command line reaches it through [`socket`], a Unix socket in
//! the state folder that only the machine's owner can open.

mod availability;
mod idle;
mod schedule;
mod socket;

pub use availability::{Availability, AvailabilityStatus, State};
pub use idle::{IdleRule, cpu_usage_file};
pub use schedule::{Schedule, ScheduleError};
pub use socket::{CONTROL_SOCKET, request, serve};
