//! Errors of the format crate: one enum for "this document is not valid v1", one for "this payload
//! is not the one the manifest describes". Both name *what* was being read so a message in a log
//! or in `verify` output can be acted on without a debugger.

use crate::Sha256Digest;

/// A document (session header, chunk manifest, close record) is not a valid document of the
/// format.
#[derive(Debug, thiserror::Error)]
pub enum FormatError {
    /// The document is larger than [`crate::MAX_DOCUMENT_BYTES`].
    #[error("{what}: document is {size} bytes, more than the {limit}-byte limit")]
    TooLarge {
        what: &'static str,
        size: usize,
        limit: usize,
    },
    /// The document has no `version` field (or it is not a number).
    #[error("{what}: no numeric `version` field")]
    MissingVersion { what: &'static str },
    /// The document declares a version this build does not read.
    #[error("{what}: unknown format version {found} (this build reads versions 1 to {supported})")]
    UnknownVersion {
        what: &'static str,
        found: u64,
        supported: u32,
    },
    /// The JSON is malformed, or a field is missing, unknown, or of the wrong type.
    #[error("{what}: {source}")]
    Json {
        what: &'static str,
        #[source]
        source: serde_json::Error,
    },
    /// The JSON is well formed but a value breaks a rule of the format.
    #[error("{what}: {reason}")]
    Invalid { what: &'static str, reason: String },
}

/// A payload (video segment, init segment, events) does not match its manifest.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum PayloadError {
    /// The payload's length differs from the manifest's `size`.
    #[error("{what}: size is {actual} bytes, manifest says {expected}")]
    Size {
        what: &'static str,
        expected: u64,
        actual: u64,
    },
    /// The payload's SHA-256 differs from the manifest's `sha256`.
    #[error("{what}: SHA-256 is {actual}, manifest says {expected}")]
    Hash {
        what: &'static str,
        expected: Sha256Digest,
        actual: Sha256Digest,
    },
}
