//! The one strict path from bytes to a format document, shared by every document type.
//!
//! Order matters: size first (so a huge object costs nothing), then the `version` alone (so a
//! future-version document gets "unknown version", not a confusing "unknown field"), then, for
//! version 2, the envelope, then the full typed parse with unknown fields denied, then the
//! document's own semantic checks.

use serde::Serialize;
use serde::de::DeserializeOwned;

pub(crate) use crate::signed::Opened;
use crate::signed::{self, EndpointSigner};
use crate::{FORMAT_V1, FORMAT_VERSION, FormatError, MAX_DOCUMENT_BYTES};

/// A document type of the format.
pub(crate) trait Document: Serialize + DeserializeOwned {
    /// Human name used in errors ("chunk manifest").
    const WHAT: &'static str;

    /// The kind named in a v2 envelope and in the signed message (`chunk_manifest`).
    const KIND: &'static str;

    /// The document's own `version` field.
    fn version(&self) -> u32;

    /// Rules serde cannot express (ranges, non-empty strings, ordering, the fields a version
    /// requires or forbids).
    fn validate(&self) -> Result<(), String>;
}

#[derive(serde::Deserialize)]
struct VersionProbe {
    version: Option<serde_json::Value>,
}

/// Parses stored document bytes of either version. A v2 envelope is opened and its document
/// parsed; the signature is returned unchecked (checking it needs the session's key: see
/// [`crate::ChainVerifier`]).
pub(crate) fn parse_stored<T: Document>(bytes: &[u8]) -> Result<(T, Option<Opened>), FormatError> {
    let what = T::WHAT;
    match probe_version::<T>(bytes)? {
        1 => Ok((parse_body(bytes, 1)?, None)),
        2 => {
            let opened = signed::open(what, T::KIND, bytes)?;
            let doc = parse_body(&opened.body, 2)?;
            Ok((doc, Some(opened)))
        }
        found => Err(FormatError::UnknownVersion {
            what,
            found,
            supported: FORMAT_VERSION,
        }),
    }
}

pub(crate) fn parse<T: Document>(bytes: &[u8]) -> Result<T, FormatError> {
    parse_stored(bytes).map(|(doc, _)| doc)
}

/// Size first, then the `version` alone.
fn probe_version<T: Document>(bytes: &[u8]) -> Result<u64, FormatError> {
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
    probe
        .version
        .and_then(|v| v.as_u64())
        .ok_or(FormatError::MissingVersion { what })
}

/// The document itself (v1: the stored bytes; v2: what the envelope holds), which must be of
/// `version`.
fn parse_body<T: Document>(bytes: &[u8], version: u64) -> Result<T, FormatError> {
    let what = T::WHAT;
    let found = probe_version::<T>(bytes)?;
    if found != version {
        return Err(FormatError::Invalid {
            what,
            reason: format!("a version {version} envelope holds a version {found} document"),
        });
    }
    let doc: T =
        serde_json::from_slice(bytes).map_err(|source| FormatError::Json { what, source })?;
    doc.validate()
        .map_err(|reason| FormatError::Invalid { what, reason })?;
    Ok(doc)
}

/// Serialises a version 1 document to the exact bytes that are stored and hashed.
///
/// Validation runs here too: writing an invalid document would only move the error to every
/// reader, long after the recorder could have done something about it.
pub(crate) fn encode<T: Document>(doc: &T) -> Result<Vec<u8>, FormatError> {
    if doc.version() != FORMAT_V1 {
        return Err(FormatError::Invalid {
            what: T::WHAT,
            reason: format!(
                "a version {} document is stored signed (to_signed_bytes)",
                doc.version()
            ),
        });
    }
    body(doc)
}

/// Serialises a version 2 document and seals it in an envelope signed by `signer`.
pub(crate) fn encode_signed<T: Document>(
    doc: &T,
    signer: &EndpointSigner,
) -> Result<Vec<u8>, FormatError> {
    if doc.version() != 2 {
        return Err(FormatError::Invalid {
            what: T::WHAT,
            reason: format!("only version 2 documents are signed, not {}", doc.version()),
        });
    }
    let bytes = signed::seal(T::WHAT, T::KIND, &body(doc)?, signer)?;
    check_size::<T>(bytes.len())?;
    Ok(bytes)
}

/// The stored bytes of a document of either version (version 2 needs `signer`).
pub(crate) fn encode_stored<T: Document>(
    doc: &T,
    signer: Option<&EndpointSigner>,
) -> Result<Vec<u8>, FormatError> {
    match (doc.version(), signer) {
        (2, Some(signer)) => encode_signed(doc, signer),
        (2, None) => Err(FormatError::Invalid {
            what: T::WHAT,
            reason: "a version 2 document needs the endpoint key to sign it".into(),
        }),
        _ => encode(doc),
    }
}

fn body<T: Document>(doc: &T) -> Result<Vec<u8>, FormatError> {
    doc.validate().map_err(|reason| FormatError::Invalid {
        what: T::WHAT,
        reason,
    })?;
    let bytes = serde_json::to_vec(doc).map_err(|source| FormatError::Json {
        what: T::WHAT,
        source,
    })?;
    check_size::<T>(bytes.len())?;
    Ok(bytes)
}

fn check_size<T: Document>(size: usize) -> Result<(), FormatError> {
    if size > MAX_DOCUMENT_BYTES {
        return Err(FormatError::TooLarge {
            what: T::WHAT,
            size,
            limit: MAX_DOCUMENT_BYTES,
        });
    }
    Ok(())
}

/// The rule for a field version 2 added: required in v2 documents, absent from v1 ones.
pub(crate) fn check_v2_field<T>(
    version: u32,
    field: &str,
    value: Option<&T>,
) -> Result<(), String> {
    match (version, value) {
        (1, None) | (2, Some(_)) => Ok(()),
        (1, Some(_)) => Err(format!(
            "`{field}` is a version 2 field, in a version 1 document"
        )),
        (2, None) => Err(format!("`{field}` is required in version 2")),
        (v, _) => Err(format!("unknown version {v}")),
    }
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
