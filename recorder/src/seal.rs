//! Client-side encryption of a session's payloads (optional; off unless recipients are given).
//!
//! With age (X25519) recipients configured, every payload (init segments, video segments,
//! events) is encrypted on the endpoint before it reaches the spool, one age file per payload, so
//! the spool and the bucket hold only ciphertext; the manifests name the ciphertext's sizes and
//! digests, so the chain and the signatures cover exactly what is stored. Only holders of a
//! recipient's identity (the player, `--age-identity`) can read the recording. A new recipient
//! list applies from the next session; sessions already recorded stay readable with the
//! identities they were encrypted to.

use std::io::Write as _;

use jitrec_format::{Encryption, EncryptionScheme, MAX_RECIPIENTS};

/// Encrypts payloads to a session's recipients.
pub struct Sealer {
    recipients: Vec<age::x25519::Recipient>,
    texts: Vec<String>,
}

impl std::fmt::Debug for Sealer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Sealer")
            .field("recipients", &self.texts)
            .finish()
    }
}

/// Why a payload could not be encrypted.
#[derive(Debug, thiserror::Error)]
#[error("encrypting a payload: {0}")]
pub struct SealError(String);

impl Sealer {
    /// The sealer for `recipients` (`age1...` public keys); `None` when there are none.
    pub fn new(recipients: &[String]) -> Result<Option<Self>, String> {
        if recipients.is_empty() {
            return Ok(None);
        }
        if recipients.len() > MAX_RECIPIENTS {
            return Err(format!("at most {MAX_RECIPIENTS} encryption recipients"));
        }
        let parsed = recipients
            .iter()
            .map(|r| {
                r.parse::<age::x25519::Recipient>()
                    .map_err(|e| format!("encryption recipient {r:?}: {e}"))
            })
            .collect::<Result<Vec<_>, _>>()?;
        Ok(Some(Self {
            // The canonical spelling, as the header will name them.
            texts: parsed.iter().map(ToString::to_string).collect(),
            recipients: parsed,
        }))
    }

    /// What the session header says about the encryption.
    pub fn header_field(&self) -> Encryption {
        Encryption {
            scheme: EncryptionScheme::Age,
            recipients: self.texts.clone(),
        }
    }

    /// `plain`, encrypted to every recipient.
    pub fn seal(&self, plain: &[u8]) -> Result<Vec<u8>, SealError> {
        let e = age::Encryptor::with_recipients(
            self.recipients.iter().map(|r| r as &dyn age::Recipient),
        )
        .map_err(|e| SealError(e.to_string()))?;
        let mut out = Vec::with_capacity(plain.len() + 256);
        let mut w = e
            .wrap_output(&mut out)
            .map_err(|e| SealError(e.to_string()))?;
        w.write_all(plain).map_err(|e| SealError(e.to_string()))?;
        w.finish().map_err(|e| SealError(e.to_string()))?;
        Ok(out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sealed_payloads_open_only_with_a_recipients_identity() {
        let id = age::x25519::Identity::generate();
        let other = age::x25519::Identity::generate();
        let s = Sealer::new(&[id.to_public().to_string()]).unwrap().unwrap();
        let sealed = s.seal(b"moof-mdat").unwrap();
        assert!(!sealed.windows(9).any(|w| w == b"moof-mdat"));
        assert_eq!(age::decrypt(&id, &sealed).unwrap(), b"moof-mdat");
        assert!(age::decrypt(&other, &sealed).is_err());
        assert!(Sealer::new(&["age1nope".into()]).is_err());
        assert!(Sealer::new(&[]).unwrap().is_none());
    }
}
