//! The spool's error type: one enum, each variant saying what the caller can do about it.
//!
//! `Full` and `Quarantined` are expected operating conditions (a long network outage, a bad disk
//! sector) that the recorder and uploader handle and report; `Io` is the disk failing under us;
//! `InvalidCommit` and `AckOrder` are bugs in the caller, refused before they can corrupt the
//! spool.

use std::io;
use std::path::PathBuf;

use jitrec_format::{FormatError, SessionId};

use crate::EntryRef;

/// Everything that can go wrong in the spool.
#[derive(Debug, thiserror::Error)]
pub enum SpoolError {
    /// An operating-system call failed.
    #[error("spool: {op} {}: {source}", path.display())]
    Io {
        op: &'static str,
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    /// The directory exists, is not empty, and is not a spool: refusing to take it over.
    #[error("{} is not a jitrec spool: it has no spool.version marker (a new spool is only created in an empty directory)", path.display())]
    NotASpool { path: PathBuf },
    /// The spool was written by a version of jitrec with another spool layout.
    #[error("{}: spool layout {found:?} is not the one this build uses ({expected:?})", path.display())]
    UnsupportedVersion {
        path: PathBuf,
        found: String,
        expected: &'static str,
    },
    /// Another process already holds this role (two recorders, or two uploaders, on one spool).
    #[error("spool {}: another {role} holds {}", path.display(), path.join(format!("{role}.lock")).display())]
    Locked { path: PathBuf, role: &'static str },
    /// Committing would exceed the spool's size bound. Nothing was written.
    #[error("spool full: {used} bytes used, {needed} more needed, limit {limit}")]
    Full { used: u64, needed: u64, limit: u64 },
    /// The writer was asked to commit something that would break the session (wrong sequence
    /// number, broken chain link, payload not matching its manifest). Nothing was written.
    #[error("session {session}: refused commit: {reason}")]
    InvalidCommit { session: SessionId, reason: String },
    /// `create_session` for an id the spool already holds.
    #[error("session {0} already exists in the spool")]
    SessionExists(SessionId),
    /// No such session directory.
    #[error("session {0} is not in the spool")]
    UnknownSession(SessionId),
    /// An open session whose header is missing or unreadable cannot be resumed.
    #[error("session {0} has no readable header in the spool")]
    NoHeader(SessionId),
    /// The entry is no longer in the spool (acknowledged or quarantined meanwhile).
    #[error("{0} is not in the spool")]
    NotFound(EntryRef),
    /// The entry was unreadable or inconsistent and has been moved to the quarantine folder.
    #[error("{entry} was corrupt and has been quarantined: {reason}")]
    Quarantined { entry: EntryRef, reason: String },
    /// The close record was acknowledged while other entries of its session were still pending.
    #[error(
        "session {session}: close record acknowledged while {pending} other entries are pending"
    )]
    AckOrder { session: SessionId, pending: usize },
    /// A document the caller passed in does not encode.
    #[error(transparent)]
    Format(#[from] FormatError),
}

impl SpoolError {
    /// Whether the spool or its disk has no room for the commit: the size bound (`Full`) or the
    /// operating system's "no space" or "quota exceeded". Nothing was committed and the writer
    /// is unchanged, so the same commit may succeed once space is freed (docs/spool.md, "Size
    /// bound"). The one place that decides it, for the recorder's outage handling.
    pub fn is_out_of_space(&self) -> bool {
        match self {
            SpoolError::Full { .. } => true,
            SpoolError::Io { source, .. } => {
                matches!(
                    source.kind(),
                    io::ErrorKind::StorageFull | io::ErrorKind::QuotaExceeded
                )
            }
            _ => false,
        }
    }

    pub(crate) fn io(op: &'static str, path: impl Into<PathBuf>) -> impl FnOnce(io::Error) -> Self {
        let path = path.into();
        move |source| SpoolError::Io { op, path, source }
    }
}
