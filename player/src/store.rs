//! Read access to a bucket. One trait so verification, the indexer and the media endpoints run
//! the same against S3 ([`S3Source`]) and against the local-directory store that is jitrec's
//! embedded default ([`LocalDir`]).
//!
//! The trait is synchronous: its callers are the indexer's thread, command-line tools and
//! `spawn_blocking` tasks of the HTTP server. The S3 implementation drives the async SDK on a
//! runtime handle it is given.

use std::fs;
use std::io;
use std::path::{Path, PathBuf};

use jitrec_format::{LAYOUT_PREFIX, ObjectKey};

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
pub trait ObjectSource: Send + Sync {
    /// The object's bytes, `None` if there is no such object.
    fn get(&self, key: &ObjectKey) -> Result<Option<Vec<u8>>, StoreError>;
    /// Every key under `prefix` that sorts after `start_after`, sorted.
    fn list_after(
        &self,
        prefix: &str,
        start_after: Option<&str>,
    ) -> Result<Vec<String>, StoreError>;
    /// The names one level below [`LAYOUT_PREFIX`] (one per session, normally a session id) that
    /// sort after `start_after`, sorted. One entry per session, not per object, so discovering
    /// new sessions costs one listing entry each.
    fn list_sessions(&self, start_after: Option<&str>) -> Result<Vec<String>, StoreError>;
    /// Where the objects come from, for logs.
    fn describe(&self) -> String;

    /// Every key under `prefix`, sorted.
    fn list(&self, prefix: &str) -> Result<Vec<String>, StoreError> {
        self.list_after(prefix, None)
    }
}

/// A bucket the player may also delete from (the retention job; `s3:DeleteObject` on S3).
/// Deleting a key that does not exist is not an error, so a resumed deletion can repeat itself.
pub trait ObjectDeleter: ObjectSource {
    /// Deletes `keys` (at most 1,000, as one DeleteObjects request).
    fn delete_many(&self, keys: &[String]) -> Result<(), StoreError>;

    /// Sets or clears the S3 object legal hold on `keys` (current versions). Returns `false`
    /// when the bucket cannot hold objects (no Object Lock), so the hold is the job's alone.
    fn set_legal_hold(&self, _keys: &[String], _on: bool) -> Result<bool, StoreError> {
        Ok(false)
    }

    /// Tidies up after every object under `prefix` was deleted (a directory store removes the
    /// folders left empty, also when an earlier, interrupted deletion removed the objects).
    fn tidy(&self, _prefix: &str) -> Result<(), StoreError> {
        Ok(())
    }
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

    fn list_after(
        &self,
        prefix: &str,
        start_after: Option<&str>,
    ) -> Result<Vec<String>, StoreError> {
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
        out.retain(|k| k.starts_with(prefix) && start_after.is_none_or(|a| k.as_str() > a));
        out.sort();
        Ok(out)
    }

    fn list_sessions(&self, start_after: Option<&str>) -> Result<Vec<String>, StoreError> {
        let dir = self.root.join(LAYOUT_PREFIX);
        let err = |source| StoreError {
            op: "list",
            key: LAYOUT_PREFIX.to_owned(),
            source,
        };
        let entries = match fs::read_dir(&dir) {
            Ok(e) => e,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(Vec::new()),
            Err(e) => return Err(err(e)),
        };
        let mut out = Vec::new();
        for e in entries {
            let name = e.map_err(err)?.file_name().to_string_lossy().into_owned();
            if !name.starts_with('.') && start_after.is_none_or(|a| name.as_str() > a) {
                out.push(name);
            }
        }
        out.sort();
        Ok(out)
    }

    fn describe(&self) -> String {
        format!("directory {}", self.root.display())
    }
}

impl ObjectDeleter for LocalDir {
    fn delete_many(&self, keys: &[String]) -> Result<(), StoreError> {
        let mut dirs = std::collections::BTreeSet::new();
        for key in keys {
            // Keys come from `list`, which only yields paths below the root.
            if key.split('/').any(|p| p == ".." || p.is_empty()) {
                continue;
            }
            let path = self.root.join(key);
            match fs::remove_file(&path) {
                Ok(()) => {}
                Err(e) if e.kind() == io::ErrorKind::NotFound => {}
                Err(source) => {
                    return Err(StoreError {
                        op: "delete",
                        key: key.clone(),
                        source,
                    });
                }
            }
            let mut dir = path.parent();
            while let Some(d) = dir
                && d != self.root
            {
                dirs.insert(d.to_owned());
                dir = d.parent();
            }
        }
        // Remove folders left empty, deepest first (a session's `chunks/`, `init/`, itself).
        for d in dirs.iter().rev() {
            let _ = fs::remove_dir(d);
        }
        Ok(())
    }

    fn tidy(&self, prefix: &str) -> Result<(), StoreError> {
        let dir = self.root.join(prefix.trim_end_matches('/'));
        for sub in ["chunks", "init", ""] {
            match fs::remove_dir(dir.join(sub)) {
                Ok(()) => {}
                Err(e)
                    if matches!(
                        e.kind(),
                        io::ErrorKind::NotFound | io::ErrorKind::DirectoryNotEmpty
                    ) => {}
                Err(source) => {
                    return Err(StoreError {
                        op: "delete",
                        key: prefix.to_owned(),
                        source,
                    });
                }
            }
        }
        Ok(())
    }
}

/// A bucket on an S3-compatible server, read with `GetObject` and `ListObjectsV2` (the player's
/// credentials need `s3:GetObject` and `s3:ListBucket`, nothing more).
#[derive(Debug, Clone)]
pub struct S3Source {
    client: aws_sdk_s3::Client,
    bucket: String,
    prefix: String,
    runtime: tokio::runtime::Handle,
}

impl S3Source {
    /// Reads the bucket `config` names, with the same client settings (TLS, timeouts, no SDK
    /// retries) the uploader uses. Calls are driven on `runtime`; they must not be made from one
    /// of its async tasks (use `spawn_blocking` or a plain thread).
    pub fn new(config: jitrec_uploader::S3Config, runtime: tokio::runtime::Handle) -> Self {
        let bucket = config.bucket.clone();
        let prefix = config.prefix.clone();
        let store = jitrec_uploader::S3Store::new(config);
        Self {
            client: store.client().clone(),
            bucket,
            prefix,
            runtime,
        }
    }

    fn error(op: &'static str, key: &str, e: impl std::fmt::Display) -> StoreError {
        StoreError {
            op,
            key: key.to_owned(),
            source: io::Error::other(e.to_string()),
        }
    }

    /// One `ListObjectsV2` walk with continuation tokens: keys (and, with a delimiter, common
    /// prefixes) under `prefix` after `start_after`, both without the operator prefix.
    fn list_v2(
        &self,
        prefix: &str,
        start_after: Option<&str>,
        delimiter: Option<&str>,
    ) -> Result<(Vec<String>, Vec<String>), StoreError> {
        use aws_sdk_s3::error::ProvideErrorMetadata;
        let full = format!("{}{prefix}", self.prefix);
        let strip = |k: &str| k.strip_prefix(self.prefix.as_str()).map(str::to_owned);
        self.runtime.block_on(async {
            let (mut keys, mut prefixes) = (Vec::new(), Vec::new());
            let mut token = None;
            loop {
                let mut req = self
                    .client
                    .list_objects_v2()
                    .bucket(&self.bucket)
                    .prefix(&full)
                    .set_continuation_token(token.take());
                if let Some(a) = start_after {
                    req = req.start_after(format!("{}{a}", self.prefix));
                }
                if let Some(d) = delimiter {
                    req = req.delimiter(d);
                }
                let out = req.send().await.map_err(|e| {
                    let msg = match (e.code(), e.message()) {
                        (Some(c), Some(m)) => format!("{c}: {m}"),
                        (Some(c), None) => c.to_owned(),
                        _ => aws_sdk_s3::error::DisplayErrorContext(&e).to_string(),
                    };
                    Self::error("list", &full, msg)
                })?;
                keys.extend(
                    out.contents()
                        .iter()
                        .filter_map(|o| o.key().and_then(strip)),
                );
                prefixes.extend(
                    out.common_prefixes()
                        .iter()
                        .filter_map(|p| p.prefix().and_then(strip)),
                );
                match out.next_continuation_token() {
                    Some(t) if out.is_truncated() == Some(true) => token = Some(t.to_owned()),
                    _ => break,
                }
            }
            Ok((keys, prefixes))
        })
    }
}

impl ObjectSource for S3Source {
    fn get(&self, key: &ObjectKey) -> Result<Option<Vec<u8>>, StoreError> {
        use aws_sdk_s3::error::SdkError;
        let key = key.to_string();
        let full = format!("{}{key}", self.prefix);
        self.runtime.block_on(async {
            match self
                .client
                .get_object()
                .bucket(&self.bucket)
                .key(&full)
                .send()
                .await
            {
                Ok(out) => {
                    let body = out
                        .body
                        .collect()
                        .await
                        .map_err(|e| Self::error("read", &key, e))?;
                    Ok(Some(body.into_bytes().to_vec()))
                }
                Err(SdkError::ServiceError(e)) if e.err().is_no_such_key() => Ok(None),
                Err(e) => Err(Self::error(
                    "read",
                    &key,
                    aws_sdk_s3::error::DisplayErrorContext(&e),
                )),
            }
        })
    }

    fn list_after(
        &self,
        prefix: &str,
        start_after: Option<&str>,
    ) -> Result<Vec<String>, StoreError> {
        Ok(self.list_v2(prefix, start_after, None)?.0)
    }

    fn list_sessions(&self, start_after: Option<&str>) -> Result<Vec<String>, StoreError> {
        // `~` sorts after every character of the layout's object names, so this skips every
        // object of the session named `start_after` itself.
        let after = start_after.map(|a| format!("{LAYOUT_PREFIX}{a}/~"));
        let (keys, prefixes) = self.list_v2(LAYOUT_PREFIX, after.as_deref(), Some("/"))?;
        let mut out: Vec<String> = prefixes
            .iter()
            .filter_map(|p| p.strip_prefix(LAYOUT_PREFIX)?.strip_suffix('/'))
            // Objects directly under the layout prefix (not in a session) are reported by their
            // name, as a session name would be, so the indexer flags them as outside the layout.
            .chain(keys.iter().filter_map(|k| k.strip_prefix(LAYOUT_PREFIX)))
            .filter(|n| start_after.is_none_or(|a| *n > a))
            .map(str::to_owned)
            .collect();
        out.sort();
        out.dedup();
        Ok(out)
    }

    fn describe(&self) -> String {
        format!("s3://{}/{}", self.bucket, self.prefix)
    }
}

impl ObjectDeleter for S3Source {
    fn set_legal_hold(&self, keys: &[String], on: bool) -> Result<bool, StoreError> {
        use aws_sdk_s3::error::ProvideErrorMetadata;
        use aws_sdk_s3::types::{ObjectLockLegalHold, ObjectLockLegalHoldStatus};
        let status = if on {
            ObjectLockLegalHoldStatus::On
        } else {
            ObjectLockLegalHoldStatus::Off
        };
        self.runtime.block_on(async {
            for k in keys {
                let r = self
                    .client
                    .put_object_legal_hold()
                    .bucket(&self.bucket)
                    .key(format!("{}{k}", self.prefix))
                    .legal_hold(
                        ObjectLockLegalHold::builder()
                            .status(status.clone())
                            .build(),
                    )
                    .send()
                    .await;
                if let Err(e) = r {
                    // A bucket without Object Lock refuses the request as invalid.
                    if e.code() == Some("InvalidRequest") {
                        return Ok(false);
                    }
                    return Err(Self::error(
                        "legal hold",
                        k,
                        aws_sdk_s3::error::DisplayErrorContext(&e),
                    ));
                }
            }
            Ok(true)
        })
    }

    fn delete_many(&self, keys: &[String]) -> Result<(), StoreError> {
        use aws_sdk_s3::types::{Delete, ObjectIdentifier};
        if keys.is_empty() {
            return Ok(());
        }
        let first = keys[0].clone();
        let objects = keys
            .iter()
            .map(|k| {
                ObjectIdentifier::builder()
                    .key(format!("{}{k}", self.prefix))
                    .build()
                    .map_err(|e| Self::error("delete", k, e))
            })
            .collect::<Result<Vec<_>, _>>()?;
        let delete = Delete::builder()
            .set_objects(Some(objects))
            .quiet(true)
            .build()
            .map_err(|e| Self::error("delete", &first, e))?;
        self.runtime.block_on(async {
            let out = self
                .client
                .delete_objects()
                .bucket(&self.bucket)
                .delete(delete)
                .send()
                .await
                .map_err(|e| {
                    Self::error("delete", &first, aws_sdk_s3::error::DisplayErrorContext(&e))
                })?;
            match out.errors().first() {
                None => Ok(()),
                Some(e) => Err(Self::error(
                    "delete",
                    e.key().unwrap_or(&first),
                    format!(
                        "{} ({} of {} keys refused)",
                        e.message().or(e.code()).unwrap_or("refused"),
                        out.errors().len(),
                        keys.len()
                    ),
                )),
            }
        })
    }
}
