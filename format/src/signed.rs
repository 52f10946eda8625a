//! Format v2's authenticity: the endpoint's Ed25519 key, and the signed envelope every v2
//! document (header, chunk manifest, close record) is stored in.
//!
//! Hashes alone prove nothing against someone who can write the bucket: they recompute them. A
//! v2 document is therefore stored as an envelope holding the document's exact bytes and an
//! Ed25519 signature over them, made with a key that never leaves the endpoint. The signature
//! covers the stored document bytes (which commit the payloads through their digests), prefixed
//! with a domain string naming the document kind, so a signature made for one kind of document
//! can never be replayed as another, nor as anything else the key might sign one day:
//!
//! ```text
//! message = "jitrec/2 " <document kind> "\n" <document bytes>
//! ```
//!
//! There is no canonical JSON to agree on: the verifier checks the bytes exactly as stored, and
//! the chain's `prev` links hash the whole stored envelope, so the signatures are committed too.
//! Whether a key is *the* key of the machine it claims is not this crate's question: the player
//! answers it from its enrolment records.

use std::fmt;
use std::str::FromStr;

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as B64;
use ed25519_dalek::{Signature, Signer as _, SigningKey, VerifyingKey};
use serde::{Deserialize, Deserializer, Serialize, Serializer};

use crate::{FormatError, Sha256Digest};

/// Prefix of every signed message (see the module documentation).
pub const SIGNATURE_DOMAIN: &str = "jitrec/2";

/// How a public key is spelled in documents: this prefix, then the 32 key bytes in base64.
const KEY_PREFIX: &str = "ed25519:";

/// An endpoint's public key (Ed25519), as announced in every v2 session header.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct EndpointKey([u8; 32]);

impl EndpointKey {
    /// Wraps raw public-key bytes, refusing those that are not a usable Ed25519 point (invalid
    /// encodings and the small-order "weak" keys under which forged signatures verify).
    pub fn from_bytes(bytes: [u8; 32]) -> Result<Self, String> {
        let key = VerifyingKey::from_bytes(&bytes)
            .map_err(|_| "not a valid Ed25519 public key".to_string())?;
        if key.is_weak() {
            return Err("a small-order (weak) Ed25519 public key".into());
        }
        Ok(Self(bytes))
    }

    /// The raw 32 bytes.
    pub fn as_bytes(&self) -> &[u8; 32] {
        &self.0
    }

    /// SHA-256 of the raw key bytes: how people compare keys (enrolment pages, the CLI, the
    /// evidence bundle).
    pub fn fingerprint(&self) -> Sha256Digest {
        Sha256Digest::of(&self.0)
    }

    /// Whether `signature` is this key's signature of `message` (strict verification: no
    /// malleable or non-canonical signature is accepted).
    pub fn verifies(&self, message: &[u8], signature: &[u8; 64]) -> bool {
        let Ok(key) = VerifyingKey::from_bytes(&self.0) else {
            return false;
        };
        key.verify_strict(message, &Signature::from_bytes(signature))
            .is_ok()
    }
}

impl fmt::Display for EndpointKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{KEY_PREFIX}{}", B64.encode(self.0))
    }
}

impl fmt::Debug for EndpointKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "EndpointKey({self})")
    }
}

impl FromStr for EndpointKey {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, String> {
        let b64 = s
            .strip_prefix(KEY_PREFIX)
            .ok_or_else(|| format!("a public key must start with {KEY_PREFIX:?}"))?;
        let bytes: [u8; 32] = strict_b64(b64)?
            .try_into()
            .map_err(|_| "an Ed25519 public key is 32 bytes".to_string())?;
        Self::from_bytes(bytes)
    }
}

impl Serialize for EndpointKey {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

impl<'de> Deserialize<'de> for EndpointKey {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        s.parse().map_err(serde::de::Error::custom)
    }
}

/// The endpoint's private key. It signs documents and never leaves the endpoint: not uploaded,
/// not logged (its `Debug` shows only the public half).
pub struct EndpointSigner(SigningKey);

impl EndpointSigner {
    /// The key whose secret seed is `seed` (32 bytes from the operating system's random source,
    /// kept in a root-only file by the recorder).
    pub fn from_seed(seed: [u8; 32]) -> Self {
        Self(SigningKey::from_bytes(&seed))
    }

    /// The secret seed, for the recorder to store.
    pub fn seed(&self) -> [u8; 32] {
        self.0.to_bytes()
    }

    /// The public half.
    pub fn public(&self) -> EndpointKey {
        EndpointKey(self.0.verifying_key().to_bytes())
    }

    fn sign(&self, message: &[u8]) -> [u8; 64] {
        self.0.sign(message).to_bytes()
    }

    /// Signs `body` as a document of `kind` (the message is [`signed_message`]'s, so a
    /// signature of one kind is never one of another).
    pub fn sign_as(&self, kind: &str, body: &[u8]) -> [u8; 64] {
        self.sign(&signed_message(kind, body))
    }
}

impl fmt::Debug for EndpointSigner {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "EndpointSigner(public {})", self.public())
    }
}

/// The stored form of a v2 document.
#[derive(Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct Envelope {
    version: u32,
    /// `session_header`, `chunk_manifest` or `close_record`.
    document: String,
    /// The document's bytes, base64.
    payload: String,
    /// Ed25519 signature of [`message`], base64.
    signature: String,
}

/// A v2 envelope, opened but not yet checked against any key.
pub(crate) struct Opened {
    pub(crate) body: Vec<u8>,
    signature: [u8; 64],
    kind: &'static str,
}

/// The bytes a signature covers.
pub fn signed_message(kind: &str, body: &[u8]) -> Vec<u8> {
    let mut m = Vec::with_capacity(SIGNATURE_DOMAIN.len() + kind.len() + 2 + body.len());
    m.extend_from_slice(SIGNATURE_DOMAIN.as_bytes());
    m.push(b' ');
    m.extend_from_slice(kind.as_bytes());
    m.push(b'\n');
    m.extend_from_slice(body);
    m
}

/// Wraps a document's bytes in a signed envelope.
pub(crate) fn seal(
    what: &'static str,
    kind: &'static str,
    body: &[u8],
    signer: &EndpointSigner,
) -> Result<Vec<u8>, FormatError> {
    let env = Envelope {
        version: 2,
        document: kind.to_owned(),
        payload: B64.encode(body),
        signature: B64.encode(signer.sign(&signed_message(kind, body))),
    };
    serde_json::to_vec(&env).map_err(|source| FormatError::Json { what, source })
}

/// Opens an envelope that must hold a document of `kind`.
pub(crate) fn open(
    what: &'static str,
    kind: &'static str,
    bytes: &[u8],
) -> Result<Opened, FormatError> {
    let env: Envelope =
        serde_json::from_slice(bytes).map_err(|source| FormatError::Json { what, source })?;
    let invalid = |reason: String| FormatError::Invalid { what, reason };
    if env.document != kind {
        return Err(invalid(format!(
            "the envelope holds a {:?}, not a {kind:?}",
            env.document.chars().take(64).collect::<String>()
        )));
    }
    let body = strict_b64(&env.payload).map_err(|e| invalid(format!("`payload`: {e}")))?;
    let signature: [u8; 64] = strict_b64(&env.signature)
        .map_err(|e| invalid(format!("`signature`: {e}")))?
        .try_into()
        .map_err(|_| invalid("`signature` is not 64 bytes".into()))?;
    Ok(Opened {
        body,
        signature,
        kind,
    })
}

impl Opened {
    /// Whether the envelope's signature is `key`'s, over the document it holds.
    pub(crate) fn signed_by(&self, key: &EndpointKey) -> bool {
        key.verifies(&signed_message(self.kind, &self.body), &self.signature)
    }
}

/// Base64 with exactly one spelling per value: standard alphabet, padding, no stray bits.
fn strict_b64(s: &str) -> Result<Vec<u8>, String> {
    let bytes = B64.decode(s).map_err(|e| format!("not base64 ({e})"))?;
    if B64.encode(&bytes) != s {
        return Err("not the canonical base64 spelling".into());
    }
    Ok(bytes)
}
