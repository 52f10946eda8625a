//! Where objects go: one trait, implemented by the S3 store ([`crate::s3::S3Store`]) and the
//! local-directory store ([`crate::local::LocalDirStore`], the embedded default).
//!
//! A store only ever *writes*. The uploader needs no list, read or delete permission on the
//! bucket, so a compromised endpoint cannot read or destroy other endpoints' recordings.

use std::fmt;
use std::future::Future;

use bytes::Bytes;

/// An object store the uploader can put objects into.
pub trait ObjectStore: Send + Sync + 'static {
    /// Stores `body` under `key` (a bucket-layout key; the store adds its own prefix), replacing
    /// any object already there. Resolves only once the store has confirmed the object durably.
    fn put(
        &self,
        key: &str,
        body: Bytes,
        content_type: &'static str,
    ) -> impl Future<Output = Result<(), StoreError>> + Send;

    /// Where objects go, for logs ("s3://bucket/prefix at http://...", "dir /var/...").
    fn describe(&self) -> String;
}

/// Why a put failed, classified by what went wrong (not by what to do about it: that is
/// [`crate::retry::is_retryable`]'s decision alone).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ErrorKind {
    /// The attempt took longer than the configured timeout.
    Timeout,
    /// Could not connect, or the connection broke (reset, closed, truncated response).
    Connection,
    /// The server asked us to slow down (503 SlowDown, 429).
    Throttled,
    /// The server failed (5xx other than throttling).
    Server(u16),
    /// The credentials are wrong or lack permission (401, 403).
    Auth(u16),
    /// The request was refused as invalid (other 4xx: no such bucket, bad request).
    Client(u16),
    /// A local filesystem error.
    Io(std::io::ErrorKind),
    /// Anything else (an unparsable response, a bug in a client library).
    Other,
}

impl fmt::Display for ErrorKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ErrorKind::Timeout => f.write_str("timed out"),
            ErrorKind::Connection => f.write_str("connection failed"),
            ErrorKind::Throttled => f.write_str("throttled by the server"),
            ErrorKind::Server(s) => write!(f, "server error {s}"),
            ErrorKind::Auth(s) => write!(f, "not authorised ({s})"),
            ErrorKind::Client(s) => write!(f, "request refused ({s})"),
            ErrorKind::Io(k) => write!(f, "I/O error ({k})"),
            ErrorKind::Other => f.write_str("error"),
        }
    }
}

/// A failed put.
#[derive(Debug, Clone, thiserror::Error)]
#[error("put {key}: {kind}: {message}")]
pub struct StoreError {
    pub key: String,
    pub kind: ErrorKind,
    /// The store's own words (S3 error code and message, OS error), for the operator.
    pub message: String,
}
