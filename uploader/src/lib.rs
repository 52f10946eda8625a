//! The uploader: ships what the spool holds to object storage and only then lets the spool
//! forget it.
//!
//! [`Uploader`] is the service: it watches the spool, uploads each session's entries in order
//! (header, init segments, each chunk's payloads then its manifest, close record last) to an
//! [`ObjectStore`] under the format's deterministic keys, retries what can be retried
//! ([`retry`]), and acknowledges each entry to the spool only after the store confirmed it. It
//! runs as the `jitrec-uploader` program or as a task inside another process.
//!
//! Invariant: the uploader never links ffmpeg and never decodes video; it moves bytes. It never
//! lists, reads or deletes in the bucket.

pub mod local;
pub mod metrics;
pub mod retry;
pub mod s3;
mod service;
pub mod status;
pub mod store;
mod throttle;
mod watch;

pub use local::LocalDirStore;
pub use metrics::Metrics;
pub use s3::{MissingCredentials, ObjectLock, S3Args, S3Config, S3Store, StaticCredentials};
pub use service::{
    DEFAULT_BLOCKED_RETRY, DEFAULT_CONCURRENCY, DEFAULT_RESCAN_INTERVAL, UploadError, Uploader,
    UploaderConfig,
};
pub use store::{ErrorKind, ObjectStore, StoreError};
