//! Entry names: which file in a session directory is which entry, and in which state.
//!
//! A committed entry ends in `.jrs` (pending upload). An acknowledged entry that must stay as
//! evidence of the session's chain head ends in `.sent`. Temp files never live in session
//! directories (they are in `tmp/`), so every name here is a committed, complete entry.

use std::fmt;

use jitrec_format::{MachineId, ObjectKey, SessionId, SessionKey};

use crate::container::Kind;

/// One entry of a session. The derived order is upload order: header, init segments, chunks,
/// close record.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum EntryName {
    Header,
    Init(u64),
    Chunk(u64),
    Close,
}

/// An entry of a specific session.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct EntryRef {
    pub session: SessionId,
    pub name: EntryName,
}

/// Whether an entry still waits for upload.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum State {
    Pending,
    Sent,
}

const PENDING_EXT: &str = "jrs";
const SENT_EXT: &str = "sent";

impl EntryName {
    pub(crate) fn kind(self) -> Kind {
        match self {
            EntryName::Header => Kind::Header,
            EntryName::Init(_) => Kind::Init,
            EntryName::Chunk(_) => Kind::Chunk,
            EntryName::Close => Kind::Close,
        }
    }

    pub(crate) fn file_name(self, state: State) -> String {
        let ext = match state {
            State::Pending => PENDING_EXT,
            State::Sent => SENT_EXT,
        };
        match self {
            EntryName::Header => format!("session.{ext}"),
            EntryName::Init(n) => format!("init-{n:010}.{ext}"),
            EntryName::Chunk(n) => format!("chunk-{n:010}.{ext}"),
            EntryName::Close => format!("closed.{ext}"),
        }
    }

    /// Parses a file name; `None` for anything the spool did not write.
    pub(crate) fn parse(file: &str) -> Option<(EntryName, State)> {
        let (stem, ext) = file.rsplit_once('.')?;
        let state = match ext {
            PENDING_EXT => State::Pending,
            SENT_EXT => State::Sent,
            _ => return None,
        };
        let num = |s: &str| {
            (s.len() == 10 && s.bytes().all(|b| b.is_ascii_digit()))
                .then(|| s.parse().ok())
                .flatten()
        };
        let name = match stem {
            "session" => EntryName::Header,
            "closed" => EntryName::Close,
            _ => {
                if let Some(n) = stem.strip_prefix("init-") {
                    EntryName::Init(num(n)?)
                } else {
                    EntryName::Chunk(num(stem.strip_prefix("chunk-")?)?)
                }
            }
        };
        Some((name, state))
    }
}

impl EntryRef {
    /// The bucket objects this entry becomes, in the order they must be uploaded (payloads before
    /// the manifest that commits them), for a session living under `machine`'s prefix (layout
    /// v2; `None`: layout v1). [`crate::SpoolReader::session_key`] says which.
    pub fn object_keys(&self, machine: Option<MachineId>) -> Vec<ObjectKey> {
        let s = SessionKey {
            machine,
            id: self.session,
        };
        match self.name {
            EntryName::Header => vec![ObjectKey::SessionHeader(s)],
            EntryName::Init(n) => vec![ObjectKey::Init(s, n)],
            EntryName::Chunk(n) => vec![
                ObjectKey::ChunkVideo(s, n),
                ObjectKey::ChunkEvents(s, n),
                ObjectKey::ChunkManifest(s, n),
            ],
            EntryName::Close => vec![ObjectKey::SessionClosed(s)],
        }
    }
}

impl fmt::Display for EntryRef {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.name {
            EntryName::Header => write!(f, "session {} header", self.session),
            EntryName::Init(n) => write!(f, "session {} init segment {n}", self.session),
            EntryName::Chunk(n) => write!(f, "session {} chunk {n}", self.session),
            EntryName::Close => write!(f, "session {} close record", self.session),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_round_trip_and_sort_in_upload_order() {
        let names = [
            EntryName::Header,
            EntryName::Init(0),
            EntryName::Init(3),
            EntryName::Chunk(0),
            EntryName::Chunk(12),
            EntryName::Close,
        ];
        assert!(names.windows(2).all(|w| w[0] < w[1]));
        for n in names {
            for st in [State::Pending, State::Sent] {
                assert_eq!(EntryName::parse(&n.file_name(st)), Some((n, st)));
            }
        }
        for junk in [
            "chunk-1.jrs",
            "chunk-0000000001.tmp",
            "x.jrs",
            "session",
            ".jrs",
            "init-00000000x1.jrs",
        ] {
            assert_eq!(EntryName::parse(junk), None, "{junk}");
        }
    }
}
