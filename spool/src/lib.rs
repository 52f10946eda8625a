//! The spool: a local directory that is the only interface between the recorder and the
//! uploader, and the only code that creates, renames or deletes files in it.
//!
//! The recorder ([`SpoolWriter`]) commits a session's header, init segments, chunks and close
//! record; the uploader ([`SpoolReader`]) lists what is pending, reads it back verified, and
//! acknowledges each entry once the object store has confirmed it. The full specification, with
//! its guarantees and the loss window, is `docs/spool.md`. In short:
//!
//! - **Atomic and durable.** An entry is one file, written to `tmp/`, fsynced, renamed into its
//!   session directory, and the directory fsynced. It is either entirely there or not at all;
//!   a name in a session directory always denotes a complete entry.
//! - **Verified.** Every file ends with a SHA-256 of its contents, and chunk payloads are checked
//!   against their manifest on every read. A file that fails is moved to `quarantine/` with the
//!   reason and never blocks the entries after it.
//! - **Nothing leaves before the bucket has it.** Only [`SpoolReader::ack`] removes entries.
//! - **Bounded.** Commits that would take the spool past [`SpoolConfig::max_bytes`] are refused
//!   with [`SpoolError::Full`]; nothing already committed is ever evicted to make room (it is
//!   evidence nobody else has yet). Headers and close records may use a small reserve beyond the
//!   bound so a full spool can still say where a session stopped.
//! - **One writer, one reader.** Each role holds an exclusive lock file while open.

mod container;
mod dir;
mod durable;
mod error;
mod journal;
mod names;
mod reader;
mod writer;

#[cfg(test)]
mod tests;

use jitrec_format::{ChunkManifest, ObjectKey, SessionClose, SessionHeader, SessionKey};

pub use container::framed_len;
pub use error::SpoolError;
pub use journal::{
    Journal, Journalled, MAX_READ as JOURNAL_MAX_READ, SYNC_EVERY as JOURNAL_SYNC_EVERY,
};
pub use names::{EntryName, EntryRef};
pub use reader::{Backlog, SpoolInspector, SpoolReader};
pub use writer::{Recovery, SessionWriter, SpoolWriter, StateRecord};

/// Default size bound: 2 GiB.
///
/// The measured cost of an active 1080p screen is ~220 MB/hour (`shared/research.md`), so this
/// holds about nine hours of continuous recording while the network is down, and is small next to
/// any workstation disk.
pub const DEFAULT_MAX_BYTES: u64 = 2 * 1024 * 1024 * 1024;

/// How far headers and close records may exceed the bound (1 MiB: each is under 64 KiB).
pub const CONTROL_RESERVE_BYTES: u64 = 1024 * 1024;

/// Spool settings.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SpoolConfig {
    /// Size bound in bytes for everything the spool holds; see [`DEFAULT_MAX_BYTES`].
    pub max_bytes: u64,
}

impl Default for SpoolConfig {
    fn default() -> Self {
        Self {
            max_bytes: DEFAULT_MAX_BYTES,
        }
    }
}

/// A committed entry, read back and verified.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Entry {
    Header {
        /// The exact stored bytes (what the chain hashes).
        bytes: Vec<u8>,
        header: SessionHeader,
    },
    Init {
        id: u64,
        bytes: Vec<u8>,
    },
    Chunk {
        /// The exact stored manifest bytes (what the chain hashes).
        manifest_bytes: Vec<u8>,
        manifest: ChunkManifest,
        video: Vec<u8>,
        events: Vec<u8>,
    },
    Close {
        bytes: Vec<u8>,
        close: SessionClose,
    },
}

impl Entry {
    /// Turns the entry into the objects it becomes in the bucket, in upload order (a chunk's
    /// payloads before the manifest that commits them). Consumes the entry so the bytes move
    /// rather than copy.
    pub fn into_objects(self, entry: &EntryRef, at: SessionKey) -> Vec<(ObjectKey, Vec<u8>)> {
        let keys = entry.object_keys(at.machine);
        let bodies = match self {
            Entry::Header { bytes, .. }
            | Entry::Init { bytes, .. }
            | Entry::Close { bytes, .. } => {
                vec![bytes]
            }
            Entry::Chunk {
                manifest_bytes,
                video,
                events,
                ..
            } => vec![video, events, manifest_bytes],
        };
        keys.into_iter().zip(bodies).collect()
    }
}
