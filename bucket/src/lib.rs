//! The bucket: where recordings are kept (an S3-compatible bucket, or a local directory, the
//! embedded default), and the only contract between the uploader and the player.
//!
//! The bucket is written by endpoints, and on an endpoint the person being recorded is root: every
//! byte in it may come from an adversary. This crate is the first line of that trust boundary
//! (`docs/bucket.md` is its specification):
//!
//! - **Privilege split.** [`BucketWriter`] (put only: the uploader), [`BucketReader`] (get and
//!   list: the indexer, the API, verify, export) and [`BucketAdmin`] (delete and legal hold: the
//!   retention job). A program holds only the trait it needs, so a legal hold or a deletion can
//!   only be reached through an admin handle.
//! - **Write-once.** An object, once stored, is never silently replaced: the same bytes again
//!   succeed (a retried upload), different bytes fail with [`ErrorKind::Conflict`] and leave the
//!   first object as it was.
//! - **Bounded reads.** Every read is given its limit before it reads; an object over it is
//!   refused ([`ErrorKind::TooLarge`]) without reading past the limit. Hashing and ranges read
//!   only what they need, piece by piece.
//! - **Nothing but objects.** The directory store never leaves its root and reads only regular
//!   files: a symbolic link, FIFO or directory where an object belongs is refused
//!   ([`ErrorKind::NotAnObject`]), never followed.
//! - **One error, one retry policy.** [`BucketError::is_retryable`] classifies; [`RetryPolicy`]
//!   retries (bounded for reads, unbounded for the uploader's writes).

mod dir;
mod error;
pub mod retry;
pub mod s3;

use std::future::Future;

use bytes::Bytes;
use jitrec_format::{ObjectKey, Sha256Digest};

pub use dir::DirBucket;
pub use error::{BucketError, ErrorKind};
pub use retry::{Backoff, RetryPolicy};
pub use s3::{ObjectLock, S3Args, S3Bucket, S3Config, StaticCredentials};

/// How much a piece of a streamed read holds: large enough that per-request overhead is small
/// against S3, small enough that many concurrent readers stay within a few MiB each.
pub const READ_PIECE: u64 = 1024 * 1024;

/// What a program that only writes holds (the uploader: `s3:PutObject` alone).
pub trait BucketWriter: Send + Sync + 'static {
    /// Stores `body` under `key` (a bucket-layout key; the store adds its own prefix), once.
    /// Resolves only once the store has confirmed the object durably. If the key already holds
    /// exactly these bytes (a retry of a put whose answer was lost), that is success; if it holds
    /// other bytes, the result is [`ErrorKind::Conflict`] and the stored object is untouched.
    fn put(
        &self,
        key: &str,
        body: Bytes,
        content_type: &'static str,
    ) -> impl Future<Output = Result<(), BucketError>> + Send;

    /// Where objects go, for logs ("s3://bucket/prefix at http://...", "directory /var/...").
    fn describe(&self) -> String;
}

/// Part of an object: `bytes` from `start`, and the object's whole size.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Range {
    pub bytes: Vec<u8>,
    pub total: u64,
}

/// What a program that reads holds (the player's indexer, API, verify and export:
/// `s3:GetObject` and `s3:ListBucket`).
///
/// Synchronous: its callers are the indexer's thread, command-line tools and `spawn_blocking`
/// tasks of the HTTP server. Reads are retried within [`RetryPolicy::reads`].
pub trait BucketReader: Send + Sync {
    /// The object's bytes, `None` if there is no such object; [`ErrorKind::TooLarge`] if it has
    /// more than `limit` bytes (nothing past `limit` is read).
    fn get(&self, key: &ObjectKey, limit: u64) -> Result<Option<Vec<u8>>, BucketError>;

    /// The object's size, `None` if there is no such object.
    fn size(&self, key: &ObjectKey) -> Result<Option<u64>, BucketError>;

    /// At most `len` bytes of the object from `start` (fewer at its end; none from or past its
    /// end), `None` if there is no such object.
    fn get_range(
        &self,
        key: &ObjectKey,
        start: u64,
        len: u64,
    ) -> Result<Option<Range>, BucketError>;

    /// Size and SHA-256 of the object, read piece by piece; [`ErrorKind::TooLarge`] past `limit`.
    fn digest(
        &self,
        key: &ObjectKey,
        limit: u64,
    ) -> Result<Option<(u64, Sha256Digest)>, BucketError>;

    /// Every key under `prefix` that sorts after `start_after`, sorted.
    fn list_after(
        &self,
        prefix: &str,
        start_after: Option<&str>,
    ) -> Result<Vec<String>, BucketError>;

    /// The names one level below `prefix` (which ends in `/`) that sort after `start_after`,
    /// sorted: one entry per "folder" (a session, a machine), not per object, so discovering new
    /// sessions costs one listing entry each. An object directly under `prefix` is listed by its
    /// name too, so what does not belong there is seen.
    fn list_names(
        &self,
        prefix: &str,
        start_after: Option<&str>,
    ) -> Result<Vec<String>, BucketError>;

    /// At most `max` of the names [`list_names`](Self::list_names) gives, the first ones after
    /// `start_after`: one page of a listing that may be too long to hold (a million sessions),
    /// resumed after the last name of the page before, until a page says there is no more. On
    /// S3 a page is one request of at most `max` entries (1000 at most); the default lists
    /// everything and keeps the page.
    fn list_names_page(
        &self,
        prefix: &str,
        start_after: Option<&str>,
        max: usize,
    ) -> Result<NamesPage, BucketError> {
        let mut names = self.list_names(prefix, start_after)?;
        let more = names.len() > max;
        names.truncate(max);
        Ok(NamesPage { names, more })
    }

    /// The names one level below [`jitrec_format::LAYOUT_PREFIX`] (one per layout v1 session,
    /// normally a session id) that sort after `start_after`, sorted.
    fn list_sessions(&self, start_after: Option<&str>) -> Result<Vec<String>, BucketError> {
        self.list_names(jitrec_format::LAYOUT_PREFIX, start_after)
    }

    /// Where the objects come from, for logs.
    fn describe(&self) -> String;

    /// Every key under `prefix`, sorted.
    fn list(&self, prefix: &str) -> Result<Vec<String>, BucketError> {
        self.list_after(prefix, None)
    }
}

/// One page of [`BucketReader::list_names_page`].
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct NamesPage {
    /// Sorted.
    pub names: Vec<String>,
    /// Whether the listing goes on after the last name. (Whether a page is the last is said,
    /// not guessed from its length: what the bucket holds decides how many of a page's entries
    /// are names, and must not end a listing early.)
    pub more: bool,
}

/// Whether the bucket itself enforces a legal hold.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum HoldEnforcement {
    /// The store holds the objects (S3 Object Lock legal hold): nobody can delete them, not
    /// even with the bucket's own keys, until the hold is released.
    Bucket,
    /// The store cannot hold objects (no Object Lock, or a directory): only the player's
    /// retention job, which skips held sessions, enforces the hold.
    RetentionJobOnly,
}

impl HoldEnforcement {
    /// In words, for the command line and the report view.
    pub fn describe(&self) -> &'static str {
        match self {
            HoldEnforcement::Bucket => {
                "every object of the session is under S3 legal hold in the bucket (Object Lock)"
            }
            HoldEnforcement::RetentionJobOnly => {
                "the bucket cannot hold objects (no Object Lock), so only the player's retention \
                 job enforces this hold"
            }
        }
    }
}

/// What the retention job holds (`s3:DeleteObject`, `s3:PutObjectLegalHold`). Deleting a key
/// that does not exist is not an error, so a resumed deletion can repeat itself.
pub trait BucketAdmin: BucketReader {
    /// Deletes `keys` (at most 1,000, as one DeleteObjects request).
    fn delete_many(&self, keys: &[String]) -> Result<(), BucketError>;

    /// Sets or clears the S3 object legal hold on `keys` (current versions).
    fn set_legal_hold(&self, keys: &[String], on: bool) -> Result<HoldEnforcement, BucketError>;

    /// Tidies up after every object under `prefix` was deleted (a directory store removes the
    /// folders left empty, also when an earlier, interrupted deletion removed the objects).
    fn tidy(&self, prefix: &str) -> Result<(), BucketError>;
}

/// Whether `key` is a relative object key that stays where it is put: no empty, `.` or `..`
/// component, no leading `/`, no backslash (a separator on Windows).
pub(crate) fn is_plain_key(key: &str) -> bool {
    !key.is_empty()
        && !key.contains('\\')
        && key
            .split('/')
            .all(|c| !c.is_empty() && c != "." && c != "..")
}
