//! Walking a session's hash chain: header -> chunk 0 -> chunk 1 -> ... -> close record.
//!
//! [`ChainVerifier`] is fed the stored bytes in order and says precisely where the chain breaks:
//! a missing sequence number, a manifest from another session, a `prev` that does not match, time
//! going backwards, a close record that disagrees with the chunks seen and, for a version 2
//! session, a document not signed by the key its header announces. The player's `verify`
//! and the session status both come from here, so there is one definition of "intact".

use chrono::{DateTime, Utc};

use crate::parse::{self, Opened};
use crate::{
    ChunkManifest, EndpointKey, FormatError, MediaTime, SessionClose, SessionHeader, Sha256Digest,
};

/// Where and how a chain is broken.
#[derive(Debug, thiserror::Error)]
pub enum ChainError {
    /// A document does not parse.
    #[error(transparent)]
    Format(#[from] FormatError),
    /// A document belongs to another session.
    #[error("{what} belongs to session {found}, not {expected}")]
    WrongSession {
        what: String,
        expected: crate::SessionId,
        found: crate::SessionId,
    },
    /// Chunks are missing (or out of order) before `found`.
    #[error(
        "expected chunk {expected}, found chunk {found}: chunks {expected}..{found} are missing or out of order"
    )]
    SeqGap { expected: u64, found: u64 },
    /// A manifest's `prev` does not match the digest of what precedes it.
    #[error(
        "chunk {seq}: `prev` is {found} but the preceding document hashes to {expected} (altered, reordered or replaced)"
    )]
    BrokenLink {
        seq: u64,
        expected: Sha256Digest,
        found: Sha256Digest,
    },
    /// A chunk starts before the previous one ended.
    #[error("chunk {seq}: starts at {start}, before the previous chunk's end {prev_end}")]
    TimeReversed {
        seq: u64,
        start: MediaTime,
        prev_end: MediaTime,
    },
    /// The close record counts a different number of chunks than were seen.
    #[error("close record says {claimed} chunks, the chain has {seen}")]
    CloseCount { claimed: u64, seen: u64 },
    /// The close record's `prev` does not match the last document of the chain.
    #[error("close record: `prev` is {found} but the last chunk hashes to {expected}")]
    CloseLink {
        expected: Sha256Digest,
        found: Sha256Digest,
    },
    /// A version 2 document's signature is not the session key's.
    #[error(
        "{what}: the signature is not made by the session's key {fingerprint} (forged, or re-signed by another key)"
    )]
    BadSignature {
        what: String,
        fingerprint: Sha256Digest,
    },
    /// A document's version differs from the header's (e.g. an unsigned v1 manifest spliced
    /// into a signed v2 session).
    #[error("{what} is format version {found}, the session header version {header}")]
    MixedVersion {
        what: String,
        found: u32,
        header: u32,
    },
    /// The close record's times or media end disagree with the chain it closes.
    #[error("close record: {0}")]
    CloseInconsistent(String),
}

/// How far a close record's `ended_at` may be from the last chunk's `utc_end`. Both come from
/// the same clock mapping in a sound recorder (they are equal there); the slack is for recorders
/// that take the wall clock separately. A close record dated outside it claims an end the chain
/// does not show (the forged 1970 end that would make retention delete a session early).
pub const CLOSE_TIME_TOLERANCE: chrono::Duration = chrono::Duration::seconds(60);

/// Incremental hash-chain check of one session.
#[derive(Debug, Clone)]
pub struct ChainVerifier {
    header: SessionHeader,
    head: Sha256Digest,
    next_seq: u64,
    last_end: MediaTime,
    /// Wall-clock end of the last accepted chunk.
    last_utc_end: Option<DateTime<Utc>>,
}

impl ChainVerifier {
    /// Starts a chain at the stored header bytes.
    ///
    /// A version 2 header must be signed by the key it announces (so the header cannot be
    /// re-signed by another key without also announcing that key); whether that key belongs to
    /// the machine is the caller's question ([`ChainVerifier::key`]).
    pub fn new(header_bytes: &[u8]) -> Result<Self, ChainError> {
        let (header, opened) = parse::parse_stored::<SessionHeader>(header_bytes)?;
        let v = Self {
            header,
            head: Sha256Digest::of(header_bytes),
            next_seq: 0,
            last_end: MediaTime::ZERO,
            last_utc_end: None,
        };
        v.check_signature("session header", opened.as_ref())?;
        Ok(v)
    }

    /// The key every document of this session must be signed by; `None` for a version 1
    /// (unsigned) session.
    pub fn key(&self) -> Option<&EndpointKey> {
        self.header.endpoint_key.as_ref()
    }

    /// Checks a document's signature against the session key (nothing to check for v1, where
    /// `opened` is `None` and the version check has already matched the header's).
    fn check_signature(&self, what: &str, opened: Option<&Opened>) -> Result<(), ChainError> {
        match (self.key(), opened) {
            (None, None) => Ok(()),
            (Some(key), Some(o)) if o.signed_by(key) => Ok(()),
            (Some(key), _) => Err(ChainError::BadSignature {
                what: what.to_owned(),
                fingerprint: key.fingerprint(),
            }),
            // A v1 header validates without a key, and a v1 document has no envelope: the
            // version check before this call has refused the mix.
            (None, Some(_)) => Err(ChainError::MixedVersion {
                what: what.to_owned(),
                found: 2,
                header: self.header.version,
            }),
        }
    }

    fn check_version(&self, what: &str, found: u32) -> Result<(), ChainError> {
        if found != self.header.version {
            return Err(ChainError::MixedVersion {
                what: what.to_owned(),
                found,
                header: self.header.version,
            });
        }
        Ok(())
    }

    /// The parsed header.
    pub fn header(&self) -> &SessionHeader {
        &self.header
    }

    /// Digest of the last document accepted (what the next `prev` must be).
    pub fn head(&self) -> Sha256Digest {
        self.head
    }

    /// How many chunks have been accepted.
    pub fn chunks_seen(&self) -> u64 {
        self.next_seq
    }

    /// Accepts the next chunk manifest's stored bytes.
    pub fn push(&mut self, manifest_bytes: &[u8]) -> Result<ChunkManifest, ChainError> {
        let m = self.parse_own(manifest_bytes)?;
        if m.seq != self.next_seq {
            return Err(ChainError::SeqGap {
                expected: self.next_seq,
                found: m.seq,
            });
        }
        if m.prev != self.head {
            return Err(ChainError::BrokenLink {
                seq: m.seq,
                expected: self.head,
                found: m.prev,
            });
        }
        self.accept(m, manifest_bytes)
    }

    /// Parses a manifest and checks it belongs to this session.
    fn parse_own(&self, manifest_bytes: &[u8]) -> Result<ChunkManifest, ChainError> {
        let (m, opened) = parse::parse_stored::<ChunkManifest>(manifest_bytes)?;
        let what = format!("chunk {}", m.seq);
        if m.session_id != self.header.session_id {
            return Err(ChainError::WrongSession {
                what,
                expected: self.header.session_id,
                found: m.session_id,
            });
        }
        self.check_version(&what, m.version)?;
        self.check_signature(&what, opened.as_ref())?;
        Ok(m)
    }

    /// Makes `m` the chain's head, if it does not start before the previous chunk ended.
    fn accept(
        &mut self,
        m: ChunkManifest,
        manifest_bytes: &[u8],
    ) -> Result<ChunkManifest, ChainError> {
        if m.media_start_us < self.last_end {
            return Err(ChainError::TimeReversed {
                seq: m.seq,
                start: m.media_start_us,
                prev_end: self.last_end,
            });
        }
        self.head = Sha256Digest::of(manifest_bytes);
        self.next_seq = m.seq + 1;
        self.last_end = m.media_end_us;
        self.last_utc_end = Some(m.utc_end);
        Ok(m)
    }

    /// Re-anchors the chain at a manifest after a reported gap, so what follows the gap is still
    /// linked chunk to chunk and the close record still checked. The manifest itself is only
    /// checked for its session and for coming after the chunks already accepted: nothing can
    /// vouch for its `prev`, which is why the caller must already have reported the gap.
    pub fn resync(&mut self, manifest_bytes: &[u8]) -> Result<ChunkManifest, ChainError> {
        let m = self.parse_own(manifest_bytes)?;
        if m.seq < self.next_seq {
            return Err(ChainError::SeqGap {
                expected: self.next_seq,
                found: m.seq,
            });
        }
        self.accept(m, manifest_bytes)
    }

    /// Checks only that a close record is this session's and signed by its key (for a close
    /// record that cannot be linked yet, e.g. one counting chunks that never arrived): a close
    /// record anyone could write must not end the session.
    pub fn check_close(&self, close_bytes: &[u8]) -> Result<SessionClose, ChainError> {
        let (c, opened) = parse::parse_stored::<SessionClose>(close_bytes)?;
        if c.session_id != self.header.session_id {
            return Err(ChainError::WrongSession {
                what: "close record".into(),
                expected: self.header.session_id,
                found: c.session_id,
            });
        }
        self.check_version("close record", c.version)?;
        self.check_signature("close record", opened.as_ref())?;
        Ok(c)
    }

    /// Ends the chain at the stored close record's bytes.
    ///
    /// Besides the count and the link, the close record must agree with the chain it closes:
    /// its media end is the last chunk's, it ends after the session started, and `ended_at` is
    /// within [`CLOSE_TIME_TOLERANCE`] of the last chunk's `utc_end`.
    pub fn finish(self, close_bytes: &[u8]) -> Result<SessionClose, ChainError> {
        let c = self.check_close(close_bytes)?;
        if c.chunk_count != self.next_seq {
            return Err(ChainError::CloseCount {
                claimed: c.chunk_count,
                seen: self.next_seq,
            });
        }
        if c.prev != self.head {
            return Err(ChainError::CloseLink {
                expected: self.head,
                found: c.prev,
            });
        }
        self.check_close_times(&c)?;
        Ok(c)
    }

    fn check_close_times(&self, c: &SessionClose) -> Result<(), ChainError> {
        let bad = |m: String| Err(ChainError::CloseInconsistent(m));
        if c.media_end_us != self.last_end {
            return bad(format!(
                "`media_end_us` is {}, the last chunk ends at {}",
                c.media_end_us, self.last_end
            ));
        }
        if c.ended_at < self.header.started_at {
            return bad(format!(
                "`ended_at` {} is before the session started at {}",
                c.ended_at, self.header.started_at
            ));
        }
        if let Some(end) = self.last_utc_end
            && (c.ended_at - end).abs() > CLOSE_TIME_TOLERANCE
        {
            return bad(format!(
                "`ended_at` {} is more than {} s from the last chunk's end {end}",
                c.ended_at,
                CLOSE_TIME_TOLERANCE.num_seconds()
            ));
        }
        Ok(())
    }
}
