//! The jitrec recording format, versions 1 and 2: the vocabulary every other crate speaks.
//!
//! This crate owns the *shapes* of a recording and nothing else: session ids, the session header,
//! chunk manifests, the close record, the event schema, and the bucket's object-key layout, plus
//! the checks that make a recording evidence (payload hashes, the hash chain and, from version 2,
//! the endpoint's signature on every document). It does no I/O
//! and knows nothing of spools, buckets or ffmpeg, so the recorder, uploader and player can all
//! depend on it without pulling in each other's stacks.
//!
//! The normative text is `docs/format.md`; where this code and that document disagree, that is
//! a bug in one of them.
//!
//! Parsing is strict on purpose: a recording is read by an auditor long after it was written, and a
//! silently "fixed up" manifest would defeat the point. Every document carries a `version`; an
//! unknown version, a missing or unknown field, or a value outside its range is a typed
//! [`FormatError`], never a panic and never a default.

pub mod bundle;
mod chain;
mod chunk;
mod digest;
mod error;
mod events;
mod id;
mod layout;
mod parse;
mod session;
mod signed;
mod time;

#[cfg(any(test, feature = "testing"))]
pub mod fixtures;
#[cfg(test)]
mod tests;

pub use chain::{CLOSE_TIME_TOLERANCE, ChainError, ChainVerifier};
pub use chunk::{ChunkManifest, EventsRef, InitRef, PayloadRef};
pub use digest::Sha256Digest;
pub use error::{FormatError, PayloadError};
pub use events::{
    Event, EventKind, EventsError, MAX_DECODED_EVENTS_BYTES, MAX_EVENTS_PER_CHUNK, ProcessExit,
    ProcessStart, SourceState, UserRef, WindowInfo, check_event, decode_events,
    decode_events_bounded, encode_events, max_events, validate_events,
};
pub use id::{IdError, SessionId};
pub use layout::{
    LAYOUT_PREFIX, LayoutError, MACHINES_PREFIX, MAX_MACHINE_ID, MAX_SEQ, MachineId, ObjectKey,
    SessionKey, machine_sessions_prefix,
};
pub use parse::MAX_TEXT_CHARS;
pub use session::{
    Agent, Authorization, Codec, CodecParams, Encryption, EncryptionScheme, EndReason, Labels,
    MAX_RECIPIENTS, Machine, SessionClose, SessionHeader, StopBy, StopCause, StopPeer, Trigger,
};
pub use signed::{EndpointKey, EndpointSigner, SIGNATURE_DOMAIN, signed_message};
pub use time::MediaTime;

/// The format version this crate writes: 2, signed documents.
///
/// Every JSON document (session header, chunk manifest, close record) carries its version in
/// `version`. This crate reads versions 1 (unsigned) and 2; a reader that meets another value
/// refuses the document with [`FormatError::UnknownVersion`] rather than guessing at fields it
/// does not know. All documents of one session have the same version.
pub const FORMAT_VERSION: u32 = 2;

/// Format version 1: the same documents, stored as plain JSON, unsigned. Still read, so sessions
/// recorded before version 2 stay playable; they are labelled *unsigned* wherever they appear.
pub const FORMAT_V1: u32 = 1;

/// Upper bound on the size of any JSON document of the format (header, manifest, close record).
///
/// Real documents are well under 4 KiB; the bound keeps a hostile object in the bucket from making
/// a reader allocate without limit before it has even checked the version.
pub const MAX_DOCUMENT_BYTES: usize = 64 * 1024;
