//! The JIT trigger: what starts and stops a recording.
//!
//! Every trigger sends the same [`JitEvent`]s to the recorder: the group watcher of a Unix
//! endpoint ([`group`]: JIT is active exactly while the user is a member of the admin group),
//! the Administrators watcher of a Windows endpoint ([`windows`]), and the control socket or
//! pipe of a JIT controller (`crate::control`).

pub mod group;
pub mod windows;

pub use group::{DEFAULT_POLL, GroupWatcher};

/// How JIT starts and stops reach the recorder.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum JitEvent {
    Start {
        user: String,
        trigger: jitrec_format::Trigger,
        authorized_by: Option<String>,
        reason: Option<String>,
    },
    /// JIT ended, and who or what ended it (recorded in `jit_stop` and the close record; the
    /// end reason follows from `cause.by`).
    Stop { cause: jitrec_format::StopCause },
}
