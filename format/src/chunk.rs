//! The chunk manifest: what one short slice of a session contains and how it links to the rest.
//!
//! A chunk is a fragmented-MP4 media segment plus the events of the same interval. The manifest
//! names both payloads by size and SHA-256, names the init segment the video needs (by id and
//! hash, so the init segment is covered by the chain too), and carries `prev`, the SHA-256 of the
//! previous manifest's stored bytes (the header's for chunk 0). Change any byte of any of them and
//! some link no longer matches.

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

use crate::parse::{self, Document, check};
use crate::{EndpointSigner, FormatError, MediaTime, PayloadError, SessionId, Sha256Digest};

/// Manifest of one chunk (`chunks/<seq>.json`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ChunkManifest {
    /// 1 or 2; the same as the session header's.
    pub version: u32,
    pub session_id: SessionId,
    /// Position in the session, gapless from 0.
    pub seq: u64,
    /// Media time of the chunk's first frame (inclusive).
    pub media_start_us: MediaTime,
    /// Media time the chunk's last frame stops being shown (exclusive).
    pub media_end_us: MediaTime,
    /// Wall-clock time at `media_start_us`.
    pub utc_start: DateTime<Utc>,
    /// Wall-clock time at `media_end_us`.
    pub utc_end: DateTime<Utc>,
    /// Whether the segment's first frame is a keyframe (decodable without earlier chunks).
    pub starts_with_keyframe: bool,
    /// Number of video frames in the segment (at least 1).
    pub frames: u32,
    /// The init segment this chunk's video needs.
    pub init: InitRef,
    /// The fMP4 media segment (`chunks/<seq>.m4s`).
    pub video: PayloadRef,
    /// The events of `[media_start_us, media_end_us)` (`chunks/<seq>.events.zst`).
    pub events: EventsRef,
    /// SHA-256 of the previous chunk manifest's bytes; of the session header's for chunk 0.
    pub prev: Sha256Digest,
}

/// Reference to an init segment (`init/<id>.mp4`), with what a player needs to configure a decoder.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct InitRef {
    /// Init segment number within the session, from 0; a screen-size change starts the next one.
    pub id: u64,
    pub size: u64,
    pub sha256: Sha256Digest,
    pub width: u32,
    pub height: u32,
    /// RFC 6381 codec string for Media Source Extensions, e.g. `avc1.640028`.
    pub codec: String,
}

/// Size and hash of a payload.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PayloadRef {
    pub size: u64,
    pub sha256: Sha256Digest,
}

/// Size and hash of the events payload, and how many events it holds.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct EventsRef {
    pub size: u64,
    pub sha256: Sha256Digest,
    pub count: u32,
}

impl PayloadRef {
    /// Describes `bytes`.
    pub fn of(bytes: &[u8]) -> Self {
        Self {
            size: bytes.len() as u64,
            sha256: Sha256Digest::of(bytes),
        }
    }
}

/// Checks `bytes` against an expected size and hash.
pub(crate) fn verify_payload(
    what: &'static str,
    size: u64,
    sha256: &Sha256Digest,
    bytes: &[u8],
) -> Result<(), PayloadError> {
    let actual = bytes.len() as u64;
    if actual != size {
        return Err(PayloadError::Size {
            what,
            expected: size,
            actual,
        });
    }
    verify_digest(what, size, sha256, actual, &Sha256Digest::of(bytes))
}

/// Checks a payload's size and hash, computed by whoever read it (piece by piece), against an
/// expected size and hash.
fn verify_digest(
    what: &'static str,
    size: u64,
    sha256: &Sha256Digest,
    actual_size: u64,
    actual: &Sha256Digest,
) -> Result<(), PayloadError> {
    if actual_size != size {
        return Err(PayloadError::Size {
            what,
            expected: size,
            actual: actual_size,
        });
    }
    let actual = *actual;
    if actual != *sha256 {
        return Err(PayloadError::Hash {
            what,
            expected: *sha256,
            actual,
        });
    }
    Ok(())
}

impl ChunkManifest {
    /// Parses and validates stored manifest bytes.
    pub fn from_bytes(bytes: &[u8]) -> Result<Self, FormatError> {
        parse::parse(bytes)
    }

    /// The exact bytes to store (version 1); the next chunk's `prev` is their SHA-256.
    pub fn to_bytes(&self) -> Result<Vec<u8>, FormatError> {
        parse::encode(self)
    }

    /// The exact bytes to store (version 2), signed by `signer`.
    pub fn to_signed_bytes(&self, signer: &EndpointSigner) -> Result<Vec<u8>, FormatError> {
        parse::encode_signed(self, signer)
    }

    /// The stored bytes of this manifest's version: signed by `signer` for version 2.
    pub fn to_stored_bytes(&self, signer: Option<&EndpointSigner>) -> Result<Vec<u8>, FormatError> {
        parse::encode_stored(self, signer)
    }

    /// Checks the video segment against the manifest.
    pub fn verify_video(&self, bytes: &[u8]) -> Result<(), PayloadError> {
        verify_payload("video segment", self.video.size, &self.video.sha256, bytes)
    }

    /// Checks the size and SHA-256 of a video segment, as read piece by piece, against the
    /// manifest.
    pub fn verify_video_digest(
        &self,
        size: u64,
        sha256: &Sha256Digest,
    ) -> Result<(), PayloadError> {
        verify_digest(
            "video segment",
            self.video.size,
            &self.video.sha256,
            size,
            sha256,
        )
    }

    /// Checks the (compressed) events payload against the manifest.
    pub fn verify_events(&self, bytes: &[u8]) -> Result<(), PayloadError> {
        verify_payload("events", self.events.size, &self.events.sha256, bytes)
    }

    /// Checks an init segment against the manifest's reference to it.
    pub fn verify_init(&self, bytes: &[u8]) -> Result<(), PayloadError> {
        verify_payload("init segment", self.init.size, &self.init.sha256, bytes)
    }
}

impl Document for ChunkManifest {
    const WHAT: &'static str = "chunk manifest";
    const KIND: &'static str = "chunk_manifest";

    fn version(&self) -> u32 {
        self.version
    }

    fn validate(&self) -> Result<(), String> {
        check(self.seq <= crate::MAX_SEQ, || {
            format!("`seq` {} is above {}", self.seq, crate::MAX_SEQ)
        })?;
        check(self.media_end_us >= self.media_start_us, || {
            format!(
                "`media_end_us` {} is before `media_start_us` {}",
                self.media_end_us, self.media_start_us
            )
        })?;
        check(self.utc_end >= self.utc_start, || {
            format!(
                "`utc_end` {} is before `utc_start` {}",
                self.utc_end, self.utc_start
            )
        })?;
        check(self.frames >= 1, || "`frames` is 0".into())?;
        check(self.video.size > 0, || "`video.size` is 0".into())?;
        check(self.init.size > 0, || "`init.size` is 0".into())?;
        check(self.init.width > 0 && self.init.height > 0, || {
            format!(
                "init frame size {}x{} is empty",
                self.init.width, self.init.height
            )
        })?;
        let codec_ok = !self.init.codec.is_empty()
            && self.init.codec.len() <= 64
            && self
                .init
                .codec
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'.');
        check(codec_ok, || {
            format!(
                "`init.codec` {:?} is not an RFC 6381 codec string",
                self.init.codec
            )
        })
    }
}
