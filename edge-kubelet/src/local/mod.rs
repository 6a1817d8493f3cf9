//! What the edge keeps on its own disk: the assigned pod set (`state_file`), so a restart
//! without the operator changes nothing, and the status report `edge-kubelet status` reads
//! (`report`).

mod given;
pub(crate) mod install_record;
mod report;
mod state_file;

pub use given::Given;
pub use report::{EdgeReport, PodLine, read as read_report};
pub(crate) use report::{Live, keep_writing, render_volumes, status_text};
pub use state_file::StateFile;
