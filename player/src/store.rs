//! Read access to a bucket. One trait so verification (and later the indexer) runs the same
//! against S3 and against the local-directory store that is jitrec's embedded default.

use std::fs;
use std::io;
use std::path::{Path, PathBuf};

use jitrec_format::ObjectKey;

/// Why an object could not be read.
#[derive(Debug, thiserror::Error)]
#[error("bucket: {op} {key}: {source}")]
pub struct StoreError {
    pub op: &'static str,
    pub key: String,
    #[source]
    pub source: io::Error,
}

/// Read-only view of a bucket.
pub trait ObjectSource {
    /// The object's bytes, `None` if there is no such object.
    fn get(&self, key: &ObjectKey) -> Result<Option<Vec<u8>>, StoreError>;
    /// Every key under `prefix`, sorted.
    fn list(&self, prefix: &str) -> Result<Vec<String>, StoreError>;
}

/// A bucket kept as a directory: the object `a/b/c` is the file `<root>/a/b/c`. Names starting
/// with `.` are a writer's in-flight temp files, not objects.
#[derive(Debug, Clone)]
pub struct LocalDir {
    root: PathBuf,
}

impl LocalDir {
    pub fn new(root: impl Into<PathBuf>) -> Self {
        Self { root: root.into() }
    }

    pub fn root(&self) -> &Path {
        &self.root
    }
}

impl ObjectSource for LocalDir {
    fn get(&self, key: &ObjectKey) -> Result<Option<Vec<u8>>, StoreError> {
        // An `ObjectKey` renders only layout keys (no `..`, no absolute paths), so joining it
        // cannot escape the root.
        let key = key.to_string();
        match fs::read(self.root.join(&key)) {
            Ok(b) => Ok(Some(b)),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(None),
            Err(source) => Err(StoreError {
                op: "read",
                key,
                source,
            }),
        }
    }

    fn list(&self, prefix: &str) -> Result<Vec<String>, StoreError> {
        fn walk(dir: &Path, rel: &str, out: &mut Vec<String>) -> Result<(), StoreError> {
            let entries = match fs::read_dir(dir) {
                Ok(e) => e,
                Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(()),
                Err(source) => {
                    return Err(StoreError {
                        op: "list",
                        key: rel.to_owned(),
                        source,
                    });
                }
            };
            for e in entries {
                let e = e.map_err(|source| StoreError {
                    op: "list",
                    key: rel.to_owned(),
                    source,
                })?;
                let name = e.file_name().to_string_lossy().into_owned();
                if name.starts_with('.') {
                    continue;
                }
                let key = format!("{rel}{name}");
                if e.file_type().map(|t| t.is_dir()).unwrap_or(false) {
                    walk(&e.path(), &format!("{key}/"), out)?;
                } else {
                    out.push(key);
                }
            }
            Ok(())
        }
        // List from the deepest directory the prefix names, then filter by the full prefix.
        let dir_part = prefix.rsplit_once('/').map_or("", |(d, _)| d);
        let mut out = Vec::new();
        let rel = if dir_part.is_empty() {
            String::new()
        } else {
            format!("{dir_part}/")
        };
        walk(&self.root.join(dir_part), &rel, &mut out)?;
        out.retain(|k| k.starts_with(prefix));
        out.sort();
        Ok(out)
    }
}
