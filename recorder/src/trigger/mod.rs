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
#[derive(Debug, Clone)]
pub enum JitEvent {
    Start {
        user: String,
        trigger: jitrec_format::Trigger,
        authorized_by: Option<String>,
        reason: Option<String>,
    },
    /// JIT ended, and who or what ended it (recorded in `jit_stop` and the close record; the
    /// end reason follows from `cause.by`). `reply`, when given, hears what the stop did.
    Stop {
        cause: jitrec_format::StopCause,
        reply: Option<StopReply>,
    },
}

/// Where the recorder says what a stop did: the session it closed, once that session's close
/// record is committed, or `None` when nothing was being recorded when the stop was taken.
///
/// The answer comes from whoever takes the stop off the JIT channel, so it cannot be wrong
/// about a session that was starting while the stop was on its way. A sender dropped without
/// an answer means the stop was never carried out (the recorder stopped first, or the session
/// could not be closed).
#[derive(Debug, Clone)]
pub struct StopReply(std::sync::mpsc::SyncSender<Option<crate::service::SessionDone>>);

impl StopReply {
    /// A reply and the receiver its answer arrives on.
    pub fn new() -> (
        Self,
        std::sync::mpsc::Receiver<Option<crate::service::SessionDone>>,
    ) {
        let (tx, rx) = std::sync::mpsc::sync_channel(1);
        (Self(tx), rx)
    }

    /// Answers; a receiver that stopped waiting is no one's loss.
    pub fn send(self, done: Option<crate::service::SessionDone>) {
        let _ = self.0.send(done);
    }
}
