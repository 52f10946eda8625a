//! The one strict path from bytes to a format document, shared by every document type.
//!
//! Order matters: size first (so a huge object costs nothing), then the `version` alone (so a
//! future-version document gets "unknown version", not a confusing "unknown field"), then the full
//! typed parse with unknown fields denied, then the document's own semantic checks.

use serde::Serialize;
use serde::de::DeserializeOwned;

use crate::{FORMAT_VERSION, FormatError, MAX_DOCUMENT_BYTES};

/// A document type of the format.
pub(crate) trait Document: Serialize + DeserializeOwned {
    /// Human name used in errors ("chunk manifest").
    const WHAT: &'static str;

    /// Rules serde cannot express (ranges, non-empty strings, ordering).
    fn validate(&self) -> Result<(), String>;
}

#[derive(serde::Deserialize)]
struct VersionProbe {
    version: Option<serde_json::Value>,
}

pub(crate) fn parse<T: Document>(bytes: &[u8]) -> Result<T, FormatError> {
    let what = T::WHAT;
    if bytes.len() > MAX_DOCUMENT_BYTES {
        return Err(FormatError::TooLarge {
            what,
            size: bytes.len(),
            limit: MAX_DOCUMENT_BYTES,
        });
    }
    let probe: VersionProbe =
        serde_json::from_slice(bytes).map_err(|source| FormatError::Json { what, source })?;
    let version = probe
        .version
        .and_then(|v| v.as_u64())
        .ok_or(FormatError::MissingVersion { what })?;
    if version != u64::from(FORMAT_VERSION) {
        return Err(FormatError::UnknownVersion {
            what,
            found: version,
            supported: FORMAT_VERSION,
        });
    }
    let doc: T =
        serde_json::from_slice(bytes).map_err(|source| FormatError::Json { what, source })?;
    doc.validate()
        .map_err(|reason| FormatError::Invalid { what, reason })?;
    Ok(doc)
}

/// Serialises a document to the exact bytes that are stored and hashed.
///
/// Validation runs here too: writing an invalid document would only move the error to every
/// reader, long after the recorder could have done something about it.
pub(crate) fn encode<T: Document>(doc: &T) -> Result<Vec<u8>, FormatError> {
    doc.validate().map_err(|reason| FormatError::Invalid {
        what: T::WHAT,
        reason,
    })?;
    let bytes = serde_json::to_vec(doc).map_err(|source| FormatError::Json {
        what: T::WHAT,
        source,
    })?;
    if bytes.len() > MAX_DOCUMENT_BYTES {
        return Err(FormatError::TooLarge {
            what: T::WHAT,
            size: bytes.len(),
            limit: MAX_DOCUMENT_BYTES,
        });
    }
    Ok(bytes)
}

/// `Err(reason)` unless `cond`.
pub(crate) fn check(cond: bool, reason: impl FnOnce() -> String) -> Result<(), String> {
    if cond { Ok(()) } else { Err(reason()) }
}

/// Free text fields are bounded so a document stays small and displayable.
pub const MAX_TEXT_CHARS: usize = 4096;

/// A required text field: non-empty, bounded, no control characters except tab.
pub(crate) fn check_text(field: &str, value: &str) -> Result<(), String> {
    check(!value.is_empty(), || format!("`{field}` is empty"))?;
    check_optional_text(field, Some(value))
}

/// An optional text field: when present, bounded and free of control characters except tab.
pub(crate) fn check_optional_text(field: &str, value: Option<&str>) -> Result<(), String> {
    let Some(value) = value else { return Ok(()) };
    check(value.chars().count() <= MAX_TEXT_CHARS, || {
        format!("`{field}` is longer than {MAX_TEXT_CHARS} characters")
    })?;
    check(!value.chars().any(|c| c.is_control() && c != '\t'), || {
        format!("`{field}` contains control characters")
    })
}
