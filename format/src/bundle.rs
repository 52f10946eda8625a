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
//! jitrec-bundle/player/public-key.pem     the exporting player's key
//! jitrec-bundle/SHA256SUMS                SHA-256 of every other file (`sha256sum -c` reads it)
//! jitrec-bundle/SHA256SUMS.sig            the player's signature of SHA256SUMS (base64)
//! ```
//!
//! What proves what: the endpoint's signatures on the documents (which commit every payload)
//! prove the recording is unchanged since the endpoint made it, and nothing more: the endpoint's
//! root holds that key. That the key is the machine's, and that nothing was replaced or deleted
//! after the player received it, is the player's word (`enrolment.json`, `witness.json`), and
//! the player's signature of `SHA256SUMS` is what binds that word, and every other file, to the
//! player. An auditor pins the player's key from outside the bundle; without that, a bundle is
//! only self-consistent, which anyone can make.

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
/// The player's own public key, PEM: the key an auditor pins (`jitrec-verify --player-key`).
pub const BUNDLE_PLAYER_KEY: &str = "jitrec-bundle/player/public-key.pem";
/// The player's Ed25519 signature of `SHA256SUMS`, base64: what anchors every file of the
/// bundle, the player's own records (enrolment, witness, verdict) included, to the player.
pub const BUNDLE_SIG: &str = "jitrec-bundle/SHA256SUMS.sig";
/// The document kind of the signed message over `SHA256SUMS` (`signed_message`).
pub const BUNDLE_SIGNED_KIND: &str = "bundle_sums";

/// Whether `path` is a file a bundle may hold: the fixed files, `session.mp4` and its
/// `session.partN.mp4`, and under `session/` exactly the canonical names of the bucket layout.
/// Anything else (another name, `.` or `..`, an absolute path, a second spelling of a name) is
/// not part of a bundle.
pub fn allowed_name(path: &str) -> bool {
    const FIXED: [&str; 10] = [
        "jitrec-bundle/README.md",
        BUNDLE_INFO,
        BUNDLE_SUMS,
        BUNDLE_SIG,
        BUNDLE_EVENTS,
        "jitrec-bundle/events.vtt",
        BUNDLE_KEY,
        BUNDLE_ENROLMENT,
        BUNDLE_WITNESS,
        BUNDLE_PLAYER_KEY,
    ];
    if FIXED.contains(&path) || path == "jitrec-bundle/session.mp4" {
        return true;
    }
    if let Some(n) = path
        .strip_prefix("jitrec-bundle/session.part")
        .and_then(|r| r.strip_suffix(".mp4"))
    {
        return !n.is_empty()
            && !n.starts_with('0')
            && n.len() <= 6
            && n.bytes().all(|b| b.is_ascii_digit());
    }
    let Some(rel) = path.strip_prefix(BUNDLE_SESSION) else {
        return false;
    };
    // The layout's own parser decides, on a stand-in session prefix: one spelling per object.
    let probe = format!(
        "{}{rel}",
        crate::SessionKey::from(SessionId::from_parts(0, [0; 10])).prefix()
    );
    crate::ObjectKey::parse(&probe).is_ok()
}

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

#[cfg(test)]
mod names {
    use super::allowed_name;

    #[test]
    fn only_the_layouts_names_are_allowed() {
        for ok in [
            "jitrec-bundle/session/session.json",
            "jitrec-bundle/session/chunks/0000000001.m4s",
            "jitrec-bundle/session/init/0000000000.mp4",
            "jitrec-bundle/session.part2.mp4",
            "jitrec-bundle/SHA256SUMS.sig",
        ] {
            assert!(allowed_name(ok), "{ok}");
        }
        for bad in [
            "jitrec-bundle/session/./chunks/0000000001.m4s",
            "jitrec-bundle/session/chunks/1.m4s",
            "jitrec-bundle/../../evil",
            "/etc/passwd",
            "jitrec-bundle/session/notes.txt",
            "jitrec-bundle/session.part02.mp4",
            "jitrec-bundle/extra",
        ] {
            assert!(!allowed_name(bad), "{bad}");
        }
    }
}
