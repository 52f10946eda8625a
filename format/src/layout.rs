//! The bucket layout, versions 1 and 2: which object key holds which part of a session.
//!
//! Keys are a pure function of (machine, session id, kind, number), so an upload that is
//! retried, or repeated after a crash, overwrites the very same object instead of creating a
//! duplicate. Keys sort by session start (ids are UUIDv7) and, within a session, by number
//! (zero-padded), which lets the player list incrementally with `start-after`. Parsing is the
//! exact inverse of formatting and rejects every other spelling, so each object has exactly one
//! key and a key outside the layout is reported, not guessed at.
//!
//! Version 2 puts each machine's sessions under a prefix of its own, so an operator can give
//! each endpoint a bucket key that can write only there (`docs/bucket.md`):
//!
//! ```text
//! v1/sessions/<session-id>/...                         format v1 sessions
//! v2/machines/<machine>/sessions/<session-id>/...      format v2 sessions
//!
//!   .../session.json                 session header      (first)
//!   .../init/<id:010>.mp4            init segment        (before its chunks)
//!   .../chunks/<seq:010>.m4s         video segment       (before its manifest)
//!   .../chunks/<seq:010>.events.zst  events              (before its manifest)
//!   .../chunks/<seq:010>.json        chunk manifest      (commits the chunk)
//!   .../closed.json                  close record        (last)
//! ```

use std::fmt;
use std::str::FromStr;

use crate::SessionId;

/// Prefix of every object of layout v1 (relative to any operator-chosen bucket prefix).
pub const LAYOUT_PREFIX: &str = "v1/sessions/";

/// Prefix of every machine of layout v2.
pub const MACHINES_PREFIX: &str = "v2/machines/";

/// Largest chunk sequence number and init id: ten decimal digits.
///
/// At the default 2 s chunk length that is over 600 years of one session.
pub const MAX_SEQ: u64 = 9_999_999_999;

const NUM_WIDTH: usize = 10;

/// Longest machine id of layout v2.
pub const MAX_MACHINE_ID: usize = 64;

/// A machine's name in layout v2: 1 to 64 characters of `a-z`, `0-9` and `-`, starting with a
/// letter or digit (a Linux `/etc/machine-id`, a lowercase Windows MachineGuid). One path
/// segment with one spelling, so a bucket policy can name a machine's prefix exactly and no
/// machine's prefix is another's with something appended (`v2/machines/<id>/` ends in `/`).
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct MachineId {
    len: u8,
    bytes: [u8; MAX_MACHINE_ID],
}

impl MachineId {
    pub fn as_str(&self) -> &str {
        // Only ASCII is ever stored (see `from_str`).
        std::str::from_utf8(&self.bytes[..usize::from(self.len)]).unwrap_or_default()
    }
}

impl FromStr for MachineId {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, String> {
        let ok = !s.is_empty()
            && s.len() <= MAX_MACHINE_ID
            && s.bytes()
                .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
            && !s.starts_with('-');
        if !ok {
            return Err(format!(
                "machine id {:?} is not 1 to {MAX_MACHINE_ID} characters of a-z, 0-9 and '-' (not starting with '-')",
                s.chars().take(80).collect::<String>()
            ));
        }
        let mut bytes = [0u8; MAX_MACHINE_ID];
        bytes[..s.len()].copy_from_slice(s.as_bytes());
        Ok(Self {
            // At most MAX_MACHINE_ID (64), checked above.
            len: s.len() as u8,
            bytes,
        })
    }
}

impl fmt::Display for MachineId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl fmt::Debug for MachineId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "MachineId({})", self.as_str())
    }
}

/// Where a session lives: under layout v1 (no machine) or under its machine's prefix (v2).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct SessionKey {
    /// `None`: layout v1.
    pub machine: Option<MachineId>,
    pub id: SessionId,
}

impl SessionKey {
    /// A session of layout v2, under `machine`'s prefix.
    pub fn v2(machine: MachineId, id: SessionId) -> Self {
        Self {
            machine: Some(machine),
            id,
        }
    }

    /// The prefix under which all objects of the session live (for listing one session).
    pub fn prefix(&self) -> String {
        match self.machine {
            None => format!("{LAYOUT_PREFIX}{}/", self.id),
            Some(m) => format!("{MACHINES_PREFIX}{m}/sessions/{}/", self.id),
        }
    }
}

impl From<SessionId> for SessionKey {
    /// A session of layout v1.
    fn from(id: SessionId) -> Self {
        Self { machine: None, id }
    }
}

impl fmt::Display for SessionKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.machine {
            None => write!(f, "{}", self.id),
            Some(m) => write!(f, "{} (machine {m})", self.id),
        }
    }
}

/// The prefix of one machine's sessions in layout v2.
pub fn machine_sessions_prefix(machine: MachineId) -> String {
    format!("{MACHINES_PREFIX}{machine}/sessions/")
}

/// One object of a session in the bucket.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum ObjectKey {
    /// `session.json`.
    SessionHeader(SessionKey),
    /// `init/<id>.mp4`.
    Init(SessionKey, u64),
    /// `chunks/<seq>.m4s`.
    ChunkVideo(SessionKey, u64),
    /// `chunks/<seq>.events.zst`.
    ChunkEvents(SessionKey, u64),
    /// `chunks/<seq>.json`.
    ChunkManifest(SessionKey, u64),
    /// `closed.json`.
    SessionClosed(SessionKey),
}

/// A key that is not part of the layout.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[error("object key {key:?} is outside the bucket layout: {reason}")]
pub struct LayoutError {
    pub key: String,
    pub reason: &'static str,
}

impl ObjectKey {
    /// The session the object belongs to.
    pub fn session(&self) -> SessionId {
        self.session_key().id
    }

    /// Where the session lives.
    pub fn session_key(&self) -> SessionKey {
        match *self {
            ObjectKey::SessionHeader(s)
            | ObjectKey::Init(s, _)
            | ObjectKey::ChunkVideo(s, _)
            | ObjectKey::ChunkEvents(s, _)
            | ObjectKey::ChunkManifest(s, _)
            | ObjectKey::SessionClosed(s) => s,
        }
    }

    /// The prefix under which all objects of `session` live (for listing one session).
    pub fn session_prefix(session: impl Into<SessionKey>) -> String {
        session.into().prefix()
    }

    /// The MIME type to store the object with, so a browser fetching it directly behaves.
    pub fn content_type(&self) -> &'static str {
        match self {
            ObjectKey::SessionHeader(_)
            | ObjectKey::ChunkManifest(..)
            | ObjectKey::SessionClosed(_) => "application/json",
            ObjectKey::Init(..) => "video/mp4",
            ObjectKey::ChunkVideo(..) => "video/iso.segment",
            ObjectKey::ChunkEvents(..) => "application/zstd",
        }
    }

    /// Parses a key (without any operator prefix).
    pub fn parse(key: &str) -> Result<Self, LayoutError> {
        let err = |reason| LayoutError {
            key: key.chars().take(200).collect(),
            reason,
        };
        let (machine, rest) = if let Some(rest) = key.strip_prefix(LAYOUT_PREFIX) {
            (None, rest)
        } else if let Some(rest) = key.strip_prefix(MACHINES_PREFIX) {
            let (m, rest) = rest
                .split_once('/')
                .ok_or_else(|| err("no sessions after the machine id"))?;
            let m: MachineId = m.parse().map_err(|_| err("invalid machine id"))?;
            let rest = rest
                .strip_prefix("sessions/")
                .ok_or_else(|| err("a machine's prefix holds only sessions/"))?;
            (Some(m), rest)
        } else {
            return Err(err("does not start with v1/sessions/ or v2/machines/"));
        };
        let (sid, rest) = rest
            .split_once('/')
            .ok_or_else(|| err("no object name after the session id"))?;
        let id: SessionId = sid.parse().map_err(|_| err("invalid session id"))?;
        let session = SessionKey { machine, id };
        let parsed = match rest {
            "session.json" => ObjectKey::SessionHeader(session),
            "closed.json" => ObjectKey::SessionClosed(session),
            _ => {
                if let Some(n) = rest
                    .strip_prefix("init/")
                    .and_then(|r| r.strip_suffix(".mp4"))
                {
                    ObjectKey::Init(session, parse_num(n).ok_or_else(|| err("bad init id"))?)
                } else if let Some(r) = rest.strip_prefix("chunks/") {
                    let (n, kind) = r
                        .split_once('.')
                        .ok_or_else(|| err("chunk object has no extension"))?;
                    let seq = parse_num(n).ok_or_else(|| err("bad chunk sequence number"))?;
                    match kind {
                        "json" => ObjectKey::ChunkManifest(session, seq),
                        "m4s" => ObjectKey::ChunkVideo(session, seq),
                        "events.zst" => ObjectKey::ChunkEvents(session, seq),
                        _ => return Err(err("unknown chunk object kind")),
                    }
                } else {
                    return Err(err("unknown object name"));
                }
            }
        };
        // The parse above is strict field by field; this makes "one object, one key" hold by
        // construction even if a future edit loosens one of them.
        if parsed.to_string() != key {
            return Err(err("not the canonical spelling"));
        }
        Ok(parsed)
    }
}

fn parse_num(s: &str) -> Option<u64> {
    if s.len() != NUM_WIDTH || !s.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    s.parse().ok()
}

impl fmt::Display for ObjectKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let p = self.session_key().prefix();
        match *self {
            ObjectKey::SessionHeader(_) => write!(f, "{p}session.json"),
            ObjectKey::Init(_, n) => write!(f, "{p}init/{n:010}.mp4"),
            ObjectKey::ChunkVideo(_, n) => write!(f, "{p}chunks/{n:010}.m4s"),
            ObjectKey::ChunkEvents(_, n) => write!(f, "{p}chunks/{n:010}.events.zst"),
            ObjectKey::ChunkManifest(_, n) => write!(f, "{p}chunks/{n:010}.json"),
            ObjectKey::SessionClosed(_) => write!(f, "{p}closed.json"),
        }
    }
}
