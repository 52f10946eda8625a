//! The local-directory store: the bucket is a directory, the object `a/b/c` the file
//! `<root>/a/b/c`. It is jitrec's embedded default (one machine, no S3), and it keeps the same
//! promises as S3: a reader never sees a half-written object (temp file, fsync, rename, fsync the
//! directory), and a put resolves only once the object is durable.
//!
//! Temp files start with `.`, the convention the player's directory reader skips.

use std::fs::{self, OpenOptions};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use bytes::Bytes;

use crate::store::{ErrorKind, ObjectStore, StoreError};

/// A bucket kept as a local directory.
#[derive(Debug, Clone)]
pub struct LocalDirStore {
    root: Arc<PathBuf>,
    counter: Arc<AtomicU64>,
}

impl LocalDirStore {
    /// A store rooted at `root` (created on the first put if missing).
    pub fn new(root: impl Into<PathBuf>) -> Self {
        Self {
            root: Arc::new(root.into()),
            counter: Arc::new(AtomicU64::new(0)),
        }
    }

    fn put_blocking(&self, key: &str, body: &[u8]) -> Result<(), StoreError> {
        let fail = |op: &str, e: std::io::Error| StoreError {
            key: key.to_owned(),
            kind: ErrorKind::Io(e.kind()),
            message: format!("{op}: {e}"),
        };
        // Keys come from `ObjectKey` (no `..`, no leading `/`); refuse anything else rather than
        // write outside the root.
        if key.starts_with('/')
            || key
                .split('/')
                .any(|c| c.is_empty() || c == ".." || c == ".")
        {
            return Err(StoreError {
                key: key.to_owned(),
                kind: ErrorKind::Io(std::io::ErrorKind::InvalidInput),
                message: "not a relative object key".into(),
            });
        }
        let dest = self.root.join(key);
        let dir = dest.parent().unwrap_or(&self.root);
        fs::create_dir_all(dir).map_err(|e| fail("create directory", e))?;
        let tmp = dir.join(format!(
            ".tmp-{}-{}",
            std::process::id(),
            self.counter.fetch_add(1, Ordering::Relaxed)
        ));
        let result = (|| {
            let mut f = OpenOptions::new()
                .write(true)
                .create_new(true)
                .open(&tmp)
                .map_err(|e| fail("create", e))?;
            f.write_all(body).map_err(|e| fail("write", e))?;
            f.sync_all().map_err(|e| fail("fsync", e))?;
            drop(f);
            fs::rename(&tmp, &dest).map_err(|e| fail("rename", e))?;
            sync_dir(dir).map_err(|e| fail("fsync directory", e))
        })();
        if result.is_err() {
            let _ = fs::remove_file(&tmp);
        }
        result
    }
}

#[cfg(unix)]
fn sync_dir(dir: &Path) -> std::io::Result<()> {
    fs::File::open(dir)?.sync_all()
}

/// See `jitrec_spool`'s durable writer: std cannot open a directory on Windows, and NTFS journals
/// the rename.
#[cfg(not(unix))]
fn sync_dir(_dir: &Path) -> std::io::Result<()> {
    Ok(())
}

impl ObjectStore for LocalDirStore {
    async fn put(
        &self,
        key: &str,
        body: Bytes,
        _content_type: &'static str,
    ) -> Result<(), StoreError> {
        let this = self.clone();
        let owned_key = key.to_owned();
        tokio::task::spawn_blocking(move || this.put_blocking(&owned_key, &body))
            .await
            .map_err(|e| StoreError {
                key: key.to_owned(),
                kind: ErrorKind::Other,
                message: format!("put task failed: {e}"),
            })?
    }

    fn describe(&self) -> String {
        format!("directory {}", self.root.display())
    }
}
