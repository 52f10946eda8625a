//! The bucket's one error type and its one classification.
//!
//! [`ErrorKind`] says what went wrong; [`BucketError::is_retryable`] alone decides whether
//! waiting can fix it, for the uploader's writes and the player's reads alike. Two kinds are
//! not failures of the store but verdicts on what an endpoint put in it: an object over its
//! reader's bound ([`ErrorKind::TooLarge`]) and something that is not an object where one belongs
//! ([`ErrorKind::NotAnObject`]). Callers treat those as evidence about the session, not as an
//! outage: they are never retried.

use std::fmt;

/// What went wrong, classified by cause (not by what to do about it).
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
    /// The object is larger than the reader allows; nothing past the limit was read.
    TooLarge {
        limit: u64,
        /// The size the store reported, where it reported one before the read.
        size: Option<u64>,
    },
    /// Where an object belongs there is something else (a symbolic link, a FIFO, a directory,
    /// a path that leaves the bucket): refused, never followed.
    NotAnObject(&'static str),
    /// A write-once key already holds different bytes. The stored object was left as it is.
    Conflict,
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
            ErrorKind::TooLarge {
                limit,
                size: Some(s),
            } => write!(f, "object of {s} bytes is over the limit of {limit}"),
            ErrorKind::TooLarge { limit, size: None } => {
                write!(f, "object is over the limit of {limit} bytes")
            }
            ErrorKind::NotAnObject(what) => write!(f, "not an object: {what}"),
            ErrorKind::Conflict => f.write_str(
                "a different object is already stored under this key (write-once: left as it is)",
            ),
            ErrorKind::Other => f.write_str("error"),
        }
    }
}

/// A failed bucket operation.
#[derive(Debug, Clone, thiserror::Error)]
#[error("bucket: {op} {key}: {kind}: {message}")]
pub struct BucketError {
    /// What was being done (`put`, `read`, `list`, `delete`, `legal hold`).
    pub op: &'static str,
    /// The object key (without the operator's prefix), or the listed prefix.
    pub key: String,
    pub kind: ErrorKind,
    /// The store's own words (S3 error code and message, OS error), for the operator.
    pub message: String,
}

impl BucketError {
    pub fn new(
        op: &'static str,
        key: impl Into<String>,
        kind: ErrorKind,
        message: impl Into<String>,
    ) -> Self {
        Self {
            op,
            key: key.into(),
            kind,
            message: message.into(),
        }
    }

    pub(crate) fn io(op: &'static str, key: &str, e: &std::io::Error) -> Self {
        Self::new(op, key, ErrorKind::Io(e.kind()), e.to_string())
    }

    /// Whether retrying can succeed without anyone changing anything.
    ///
    /// Transient failures (timeouts, broken connections, throttling, 5xx, a full local disk)
    /// are; failures that waiting will not fix (credentials, permissions, no such bucket, a key
    /// that already holds other bytes, an object refused for what it is) are not.
    pub fn is_retryable(&self) -> bool {
        match &self.kind {
            ErrorKind::Timeout
            | ErrorKind::Connection
            | ErrorKind::Throttled
            | ErrorKind::Server(_)
            | ErrorKind::Other => true,
            ErrorKind::Auth(_)
            | ErrorKind::Client(_)
            | ErrorKind::TooLarge { .. }
            | ErrorKind::NotAnObject(_)
            | ErrorKind::Conflict => false,
            ErrorKind::Io(k) => !matches!(
                k,
                std::io::ErrorKind::PermissionDenied
                    | std::io::ErrorKind::ReadOnlyFilesystem
                    | std::io::ErrorKind::NotFound
                    | std::io::ErrorKind::InvalidInput
            ),
        }
    }

    /// Whether the error is a verdict on the object an endpoint stored (over its bound, not an
    /// object, or different bytes under a write-once key) rather than a failure to reach the
    /// store: evidence about that session, which must not stop work on any other.
    pub fn is_refused_object(&self) -> bool {
        matches!(
            self.kind,
            ErrorKind::TooLarge { .. } | ErrorKind::NotAnObject(_) | ErrorKind::Conflict
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn err(kind: ErrorKind) -> BucketError {
        BucketError::new("put", "k", kind, "")
    }

    #[test]
    fn classification() {
        for k in [
            ErrorKind::Timeout,
            ErrorKind::Connection,
            ErrorKind::Throttled,
            ErrorKind::Server(500),
            ErrorKind::Server(503),
            ErrorKind::Io(std::io::ErrorKind::StorageFull),
        ] {
            assert!(err(k.clone()).is_retryable(), "{k}");
            assert!(!err(k.clone()).is_refused_object(), "{k}");
        }
        for k in [
            ErrorKind::Auth(403),
            ErrorKind::Client(400),
            ErrorKind::Client(404),
            ErrorKind::Io(std::io::ErrorKind::PermissionDenied),
        ] {
            assert!(!err(k.clone()).is_retryable(), "{k}");
            assert!(!err(k.clone()).is_refused_object(), "{k}");
        }
        for k in [
            ErrorKind::Conflict,
            ErrorKind::NotAnObject("symbolic link"),
            ErrorKind::TooLarge {
                limit: 1,
                size: None,
            },
        ] {
            assert!(!err(k.clone()).is_retryable(), "{k}");
            assert!(err(k.clone()).is_refused_object(), "{k}");
        }
    }
}
