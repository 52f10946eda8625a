//! The endpoint's signing key: created on first run, kept root-only, never uploaded.
//!
//! Every document of a format v2 session is signed with it, and the player approves it per
//! machine (`docs/format.md`, "Signatures"; `docs/player.md`, "Enrolment"). The file holds the
//! 32-byte Ed25519 seed in base64 on one line after a header line, so an operator can tell what
//! the file is; the public key and its fingerprint are printed by `jitrec-recorder identity`
//! and logged at every start, to compare with what the player's enrolment page shows.
//!
//! The file is created with mode 0600 in a 0700 directory and refused if anyone but its owner
//! can read it: a key others could read signs nothing worth believing. A recorded admin is root
//! and can read it anyway; what protects the evidence from them is the player's witness record
//! (bytes replaced after the player saw them are found whatever key signed them) and that a
//! key change shows on the player.

use std::fs;
use std::io::Write as _;
use std::path::{Path, PathBuf};

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as B64;
use jitrec_format::EndpointSigner;
use rand::TryRngCore as _;

/// First line of a key file.
const HEADER: &str =
    "jitrec endpoint key (Ed25519 seed, base64); keep secret, never copy off this machine";

/// Why the key could not be loaded or created.
#[derive(Debug, thiserror::Error)]
pub enum IdentityError {
    #[error("endpoint key {path}: {message}")]
    Invalid { path: PathBuf, message: String },
    #[error("endpoint key {path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("no randomness from the operating system for a new key: {0}")]
    Random(String),
}

/// Loads the key at `path`, creating it (and its directory) on first use. Returns the key and
/// whether it was created now.
pub fn load_or_create(path: &Path) -> Result<(EndpointSigner, bool), IdentityError> {
    let io = |source| IdentityError::Io {
        path: path.to_owned(),
        source,
    };
    match fs::read_to_string(path) {
        Ok(text) => {
            check_private(path)?;
            Ok((parse(path, &text)?, false))
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            let mut seed = [0u8; 32];
            rand::rngs::OsRng
                .try_fill_bytes(&mut seed)
                .map_err(|e| IdentityError::Random(e.to_string()))?;
            let signer = EndpointSigner::from_seed(seed);
            if let Some(dir) = path.parent() {
                create_private_dir(dir).map_err(io)?;
            }
            // create_new: two recorders starting at once must not each write a key.
            let mut f = private_new_file(path).map_err(io)?;
            writeln!(f, "{HEADER}\n{}", B64.encode(seed)).map_err(io)?;
            f.sync_all().map_err(io)?;
            if let Some(dir) = path.parent()
                && let Ok(d) = fs::File::open(dir)
            {
                let _ = d.sync_all();
            }
            Ok((signer, true))
        }
        Err(e) => Err(io(e)),
    }
}

fn parse(path: &Path, text: &str) -> Result<EndpointSigner, IdentityError> {
    let invalid = |message: &str| IdentityError::Invalid {
        path: path.to_owned(),
        message: message.into(),
    };
    let mut lines = text.lines();
    if lines.next() != Some(HEADER) {
        return Err(invalid("not a jitrec endpoint key file"));
    }
    let seed: [u8; 32] = lines
        .next()
        .and_then(|l| B64.decode(l.trim()).ok())
        .and_then(|b| b.try_into().ok())
        .ok_or_else(|| invalid("the key line is not 32 bytes of base64"))?;
    Ok(EndpointSigner::from_seed(seed))
}

/// The machine id a signed session names: the platform's id (`/etc/machine-id`, MachineGuid),
/// lowercased, when it is a valid layout v2 machine id (it is the machine's bucket prefix);
/// otherwise (a host name fallback with dots or capitals, say) 32 hex digits of its SHA-256,
/// which is stable and valid.
pub fn machine_id(raw: &str) -> String {
    let lower = raw.trim().to_ascii_lowercase();
    if lower.parse::<jitrec_format::MachineId>().is_ok() {
        return lower;
    }
    jitrec_format::Sha256Digest::of(raw.trim().as_bytes()).to_string()[..32].to_owned()
}

#[cfg(unix)]
fn check_private(path: &Path) -> Result<(), IdentityError> {
    use std::os::unix::fs::MetadataExt as _;
    let meta = fs::metadata(path).map_err(|source| IdentityError::Io {
        path: path.to_owned(),
        source,
    })?;
    if meta.mode() & 0o077 != 0 {
        return Err(IdentityError::Invalid {
            path: path.to_owned(),
            message: format!(
                "mode {:o} lets others read the key; it must be 0600 (chmod 600, and consider the key exposed: replace it on the player)",
                meta.mode() & 0o777
            ),
        });
    }
    Ok(())
}

#[cfg(not(unix))]
fn check_private(_path: &Path) -> Result<(), IdentityError> {
    // ProgramData\jitrec is created by the service as SYSTEM; a DACL limited to SYSTEM and
    // Administrators is docs/windows.md's install step, not yet checked here.
    Ok(())
}

#[cfg(unix)]
fn private_new_file(path: &Path) -> std::io::Result<fs::File> {
    use std::os::unix::fs::OpenOptionsExt as _;
    fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(path)
}

#[cfg(not(unix))]
fn private_new_file(path: &Path) -> std::io::Result<fs::File> {
    fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .open(path)
}

#[cfg(unix)]
fn create_private_dir(dir: &Path) -> std::io::Result<()> {
    use std::os::unix::fs::DirBuilderExt as _;
    fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(dir)
}

#[cfg(not(unix))]
fn create_private_dir(dir: &Path) -> std::io::Result<()> {
    fs::create_dir_all(dir)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn machine_ids_are_valid_bucket_prefixes() {
        assert_eq!(
            machine_id("E2E0E2E0E2E0E2E0E2E0E2E0E2E0E2E0\n"),
            "e2e0e2e0e2e0e2e0e2e0e2e0e2e0e2e0"
        );
        let fallback = machine_id("WS-0421.corp.example");
        assert_eq!(fallback.len(), 32);
        assert!(fallback.parse::<jitrec_format::MachineId>().is_ok());
        assert_eq!(fallback, machine_id("WS-0421.corp.example"), "stable");
    }

    #[test]
    fn a_key_is_created_once_and_then_reloaded() {
        let t = tempfile::tempdir().unwrap();
        let path = t.path().join("state/endpoint.key");
        let (a, created) = load_or_create(&path).unwrap();
        assert!(created);
        let (b, created) = load_or_create(&path).unwrap();
        assert!(!created);
        assert_eq!(a.public(), b.public());
        #[cfg(unix)]
        {
            use std::os::unix::fs::MetadataExt as _;
            assert_eq!(fs::metadata(&path).unwrap().mode() & 0o777, 0o600);
            assert_eq!(
                fs::metadata(path.parent().unwrap()).unwrap().mode() & 0o777,
                0o700
            );
            // A key others can read is refused, not used.
            use std::os::unix::fs::PermissionsExt as _;
            fs::set_permissions(&path, fs::Permissions::from_mode(0o644)).unwrap();
            let err = load_or_create(&path).unwrap_err().to_string();
            assert!(err.contains("lets others read"), "{err}");
        }
        fs::write(&path, "garbage\n").unwrap();
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt as _;
            fs::set_permissions(&path, fs::Permissions::from_mode(0o600)).unwrap();
        }
        assert!(load_or_create(&path).is_err());
    }
}
