//! Walking a session's hash chain: header -> chunk 0 -> chunk 1 -> ... -> close record.
//!
//! [`ChainVerifier`] is fed the stored bytes in order and says precisely where the chain breaks:
//! a missing sequence number, a manifest from another session, a `prev` that does not match, time
//! going backwards, or a close record that disagrees with the chunks seen. The player's `verify`
//! and the session status both come from here, so there is one definition of "intact".

use crate::{ChunkManifest, FormatError, MediaTime, SessionClose, SessionHeader, Sha256Digest};

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
}

/// Incremental hash-chain check of one session.
#[derive(Debug)]
pub struct ChainVerifier {
    header: SessionHeader,
    head: Sha256Digest,
    next_seq: u64,
    last_end: MediaTime,
}

impl ChainVerifier {
    /// Starts a chain at the stored header bytes.
    pub fn new(header_bytes: &[u8]) -> Result<Self, ChainError> {
        let header = SessionHeader::from_bytes(header_bytes)?;
        Ok(Self {
            header,
            head: Sha256Digest::of(header_bytes),
            next_seq: 0,
            last_end: MediaTime::ZERO,
        })
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
        let m = ChunkManifest::from_bytes(manifest_bytes)?;
        if m.session_id != self.header.session_id {
            return Err(ChainError::WrongSession {
                what: format!("chunk {}", m.seq),
                expected: self.header.session_id,
                found: m.session_id,
            });
        }
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

    /// Ends the chain at the stored close record's bytes.
    pub fn finish(self, close_bytes: &[u8]) -> Result<SessionClose, ChainError> {
        let c = SessionClose::from_bytes(close_bytes)?;
        if c.session_id != self.header.session_id {
            return Err(ChainError::WrongSession {
                what: "close record".into(),
                expected: self.header.session_id,
                found: c.session_id,
            });
        }
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
        Ok(c)
    }
}
