//! The bucket layout, version 1: which object key holds which part of a session.
//!
//! Keys are a pure function of (session id, kind, number), so an upload that is retried, or
//! repeated after a crash, overwrites the very same object instead of creating a duplicate. Keys
//! sort by session start (ids are UUIDv7) and, within a session, by number (zero-padded), which
//! lets the player list incrementally with `start-after`. Parsing is the exact inverse of
//! formatting and rejects every other spelling, so each object has exactly one key and a key
//! outside the layout is reported, not guessed at.
//!
//! ```text
//! v1/sessions/<session-id>/session.json               session header      (first)
//! v1/sessions/<session-id>/init/<id:010>.mp4          init segment        (before its chunks)
//! v1/sessions/<session-id>/chunks/<seq:010>.m4s       video segment       (before its manifest)
//! v1/sessions/<session-id>/chunks/<seq:010>.events.zst events             (before its manifest)
//! v1/sessions/<session-id>/chunks/<seq:010>.json      chunk manifest      (commits the chunk)
//! v1/sessions/<session-id>/closed.json                close record        (last)
//! ```

use std::fmt;

use crate::SessionId;

/// Prefix of every object of layout v1 (relative to any operator-chosen bucket prefix).
pub const LAYOUT_PREFIX: &str = "v1/sessions/";

/// Largest chunk sequence number and init id: ten decimal digits.
///
/// At the default 2 s chunk length that is over 600 years of one session.
pub const MAX_SEQ: u64 = 9_999_999_999;

const NUM_WIDTH: usize = 10;

/// One object of a session in the bucket.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum ObjectKey {
    /// `session.json`.
    SessionHeader(SessionId),
    /// `init/<id>.mp4`.
    Init(SessionId, u64),
    /// `chunks/<seq>.m4s`.
    ChunkVideo(SessionId, u64),
    /// `chunks/<seq>.events.zst`.
    ChunkEvents(SessionId, u64),
    /// `chunks/<seq>.json`.
    ChunkManifest(SessionId, u64),
    /// `closed.json`.
    SessionClosed(SessionId),
}

/// A key that is not part of layout v1.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[error("object key {key:?} is outside bucket layout v1: {reason}")]
pub struct LayoutError {
    pub key: String,
    pub reason: &'static str,
}

impl ObjectKey {
    /// The session the object belongs to.
    pub fn session(&self) -> SessionId {
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
    pub fn session_prefix(session: SessionId) -> String {
        format!("{LAYOUT_PREFIX}{session}/")
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
        let rest = key
            .strip_prefix(LAYOUT_PREFIX)
            .ok_or_else(|| err("does not start with v1/sessions/"))?;
        let (sid, rest) = rest
            .split_once('/')
            .ok_or_else(|| err("no object name after the session id"))?;
        let session: SessionId = sid.parse().map_err(|_| err("invalid session id"))?;
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
        let s = self.session();
        match *self {
            ObjectKey::SessionHeader(_) => write!(f, "{LAYOUT_PREFIX}{s}/session.json"),
            ObjectKey::Init(_, n) => write!(f, "{LAYOUT_PREFIX}{s}/init/{n:010}.mp4"),
            ObjectKey::ChunkVideo(_, n) => write!(f, "{LAYOUT_PREFIX}{s}/chunks/{n:010}.m4s"),
            ObjectKey::ChunkEvents(_, n) => {
                write!(f, "{LAYOUT_PREFIX}{s}/chunks/{n:010}.events.zst")
            }
            ObjectKey::ChunkManifest(_, n) => write!(f, "{LAYOUT_PREFIX}{s}/chunks/{n:010}.json"),
            ObjectKey::SessionClosed(_) => write!(f, "{LAYOUT_PREFIX}{s}/closed.json"),
        }
    }
}
