//! The uploader: ships what the spool holds to object storage and only then lets the spool
//! forget it.
//!
//! [`Uploader`] is the service: it watches the spool, uploads each session's entries in order
//! (header, init segments, each chunk's payloads then its manifest, close record last) to a
//! [`BucketWriter`] (the `jitrec-bucket` crate: S3 or a directory) under the format's
//! deterministic keys, retries what can be retried (the bucket's one classification,
//! [`BucketError::is_retryable`], with no bound on attempts), and acknowledges each entry to
//! the spool only after the store confirmed it. It runs as the `jitrec-uploader` program or as
//! a task inside another process.
//!
//! Invariant: the uploader never links ffmpeg and never decodes video; it moves bytes. It never
//! lists or deletes in the bucket, and reads only to compare a write-once key it found taken
//! with the bytes it offered.

pub mod metrics;
mod service;
pub mod status;
mod throttle;
mod watch;

pub use jitrec_bucket::{BucketError, BucketWriter};
pub use metrics::Metrics;
pub use service::{
    DEFAULT_BLOCKED_RETRY, DEFAULT_CONCURRENCY, DEFAULT_RESCAN_INTERVAL, UploadError, Uploader,
    UploaderConfig,
};
