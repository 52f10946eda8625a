//! The evidence bundle: one archive an outsider can check without the player.
//!
//! `jitrec-player export --bundle` writes it and `jitrec-verify` checks it; both take the
//! names and shapes from here so they cannot drift apart. The bundle is a plain tar whose files
//! all sit under [`BUNDLE_ROOT`]:
//!
//! ```text
//! jitrec-bundle/README.md                 what each file is and how to check it with common tools
//! jitrec-bundle/BUNDLE.json               BundleInfo: which session, from where, as judged at export
//! jitrec-bundle/session/...               every stored object of the session, byte for byte as in
//!                                         the bucket (session.json, init/, chunks/, closed.json)
//! jitrec-bundle/session.mp4               the video, remuxed (session.partN.mp4 after a size change)
//! jitrec-bundle/events.json               every event, decoded from the events payloads
//! jitrec-bundle/events.vtt                commands and window titles as a WebVTT track
//! jitrec-bundle/machine/public-key.pem    the endpoint key the documents are signed with
//! jitrec-bundle/machine/enrolment.json    the player's enrolment record of that machine's keys
//! jitrec-bundle/witness.json              the player's witness entries for the session's objects
//! jitrec-bundle/SHA256SUMS                SHA-256 of every other file (`sha256sum -c` reads it)
//! ```
//!
//! What proves what: the signed documents and the payloads they name are the evidence (the
//! endpoint's key signed them; the chain commits every payload). `session.mp4`, `events.json`
//! and `events.vtt` are derived for convenience; the verifier re-derives `events.json` and checks
//! the MP4 only through `SHA256SUMS`. `SHA256SUMS` makes any flipped byte anywhere visible;
//! someone rewriting the bundle on purpose must still forge the endpoint's signatures, and the
//! enrolment and witness records say what the player knew.

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

use crate::{EndpointKey, SessionId};

/// The folder every file of a bundle is in.
pub const BUNDLE_ROOT: &str = "jitrec-bundle/";
/// The bundle's description.
pub const BUNDLE_INFO: &str = "jitrec-bundle/BUNDLE.json";
/// The checksums of every other file.
pub const BUNDLE_SUMS: &str = "jitrec-bundle/SHA256SUMS";
/// Where the session's stored objects are (their names below it are those of the bucket layout
/// below the session's prefix: `session.json`, `chunks/0000000000.json`, ...).
pub const BUNDLE_SESSION: &str = "jitrec-bundle/session/";
/// The derived events.
pub const BUNDLE_EVENTS: &str = "jitrec-bundle/events.json";
/// The endpoint's public key, PEM (SubjectPublicKeyInfo), for OpenSSL.
pub const BUNDLE_KEY: &str = "jitrec-bundle/machine/public-key.pem";
/// The enrolment record.
pub const BUNDLE_ENROLMENT: &str = "jitrec-bundle/machine/enrolment.json";
/// The witness entries.
pub const BUNDLE_WITNESS: &str = "jitrec-bundle/witness.json";

/// `BUNDLE.json`.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BundleInfo {
    /// 1.
    pub version: u32,
    pub session_id: SessionId,
    /// The bucket prefix the session was read from.
    pub source_prefix: String,
    pub machine_id: String,
    pub hostname: String,
    /// The key the documents are signed with (`None`: an unsigned format v1 session).
    pub endpoint_key: Option<EndpointKey>,
    pub exported_at: DateTime<Utc>,
    /// The program that wrote the bundle.
    pub exported_by: String,
    /// The player's verdict at export, in words (`verify`'s report).
    pub player_report: String,
    /// The player's authenticity at export (`verified`, `pending`, ...), or `null` when the
    /// export had no index to judge by.
    pub authenticity: Option<serde_json::Value>,
}

/// One entry of `witness.json`: what the player recorded when it first read an object.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct WitnessEntry {
    /// The object's key in the bucket.
    pub key: String,
    pub size: u64,
    pub sha256: crate::Sha256Digest,
    pub seen_at: DateTime<Utc>,
}

/// `witness.json`.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct WitnessFile {
    pub entries: Vec<WitnessEntry>,
    /// The witness chain's head at export (`ENTRIES:HASH`, as `jitrec-player witness head`
    /// prints it), to compare with an anchored copy.
    pub head: Option<String>,
}

/// One key of `enrolment.json`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct EnrolmentEntry {
    pub machine_id: String,
    pub hostname: String,
    pub fingerprint: String,
    pub public_key: String,
    /// `pending`, `approved`, `retired` or `revoked`.
    pub state: String,
    pub decided_by: String,
    pub decided_at: Option<DateTime<Utc>>,
    pub reason: String,
}

/// The DER prefix of an Ed25519 SubjectPublicKeyInfo (RFC 8410): the 32 key bytes follow.
const ED25519_SPKI_PREFIX: [u8; 12] = [
    0x30, 0x2a, 0x30, 0x05, 0x06, 0x03, 0x2b, 0x65, 0x70, 0x03, 0x21, 0x00,
];

/// `key` in PEM, as `openssl pkeyutl -pubin -inkey` reads it.
pub fn key_to_pem(key: &EndpointKey) -> String {
    use base64::Engine as _;
    let mut der = ED25519_SPKI_PREFIX.to_vec();
    der.extend_from_slice(key.as_bytes());
    format!(
        "-----BEGIN PUBLIC KEY-----\n{}\n-----END PUBLIC KEY-----\n",
        base64::engine::general_purpose::STANDARD.encode(der)
    )
}

/// The key in a PEM written by [`key_to_pem`].
pub fn key_from_pem(pem: &str) -> Result<EndpointKey, String> {
    use base64::Engine as _;
    let b64: String = pem
        .lines()
        .filter(|l| !l.starts_with("-----"))
        .map(str::trim)
        .collect();
    let der = base64::engine::general_purpose::STANDARD
        .decode(b64)
        .map_err(|e| format!("not PEM: {e}"))?;
    let key = der
        .strip_prefix(&ED25519_SPKI_PREFIX[..])
        .ok_or("not an Ed25519 public key")?;
    let bytes: [u8; 32] = key.try_into().map_err(|_| "not 32 key bytes".to_string())?;
    EndpointKey::from_bytes(bytes)
}

/// The `SHA256SUMS` line of a file: the `sha256sum` format (digest, two spaces, path relative
/// to the bundle's folder).
pub fn sums_line(path: &str, sha256: &crate::Sha256Digest) -> String {
    let rel = path.strip_prefix(BUNDLE_ROOT).unwrap_or(path);
    format!("{sha256}  {rel}\n")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_round_trip_through_pem() {
        let k = crate::fixtures::signer(3).public();
        let pem = key_to_pem(&k);
        assert!(
            pem.starts_with("-----BEGIN PUBLIC KEY-----\nMCowBQYDK2VwAyEA"),
            "{pem}"
        );
        assert_eq!(key_from_pem(&pem).unwrap(), k);
    }
}
