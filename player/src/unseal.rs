//! Reading the payloads of encrypted sessions (format v2 `encryption`): the player's age
//! identities (`--age-identity FILE`, never stored in the bucket or the index).
//!
//! An endpoint configured with age recipients encrypts every payload before it reaches its
//! spool. The player verifies the ciphertext exactly as any other payload (sizes, digests,
//! signatures, witness: all of ciphertext), and decrypts only to index the events (which the
//! index then holds in the clear, for search), to serve media to a signed-in reviewer, and to
//! export. Several identities may be given (one per line), so sessions encrypted to an older
//! recipient stay readable after a rotation.

use std::path::Path;
use std::str::FromStr as _;

/// The player's age identities.
pub struct Keyring(Vec<age::x25519::Identity>);

impl std::fmt::Debug for Keyring {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Keyring({} identities)", self.0.len())
    }
}

impl Keyring {
    /// Reads an age identity file: `AGE-SECRET-KEY-1...` lines; `#` comments and blank lines
    /// are skipped.
    pub fn from_file(path: &Path) -> Result<Self, String> {
        let text = std::fs::read_to_string(path)
            .map_err(|e| format!("reading {}: {e}", path.display()))?;
        let ids = text
            .lines()
            .map(str::trim)
            .filter(|l| !l.is_empty() && !l.starts_with('#'))
            .map(|l| {
                age::x25519::Identity::from_str(l)
                    .map_err(|e| format!("{}: not an age X25519 identity: {e}", path.display()))
            })
            .collect::<Result<Vec<_>, _>>()?;
        if ids.is_empty() {
            return Err(format!("{}: no age identity in it", path.display()));
        }
        Ok(Self(ids))
    }

    /// `sealed`, decrypted with whichever identity it was encrypted to.
    pub fn open(&self, sealed: &[u8]) -> Result<Vec<u8>, String> {
        let d = age::Decryptor::new_buffered(sealed).map_err(|e| e.to_string())?;
        let mut r = d
            .decrypt(self.0.iter().map(|i| i as &dyn age::Identity))
            .map_err(|e| e.to_string())?;
        let mut out = Vec::with_capacity(sealed.len());
        std::io::Read::read_to_end(&mut r, &mut out).map_err(|e| e.to_string())?;
        Ok(out)
    }
}
