//! The S3 store: any S3-compatible server through `aws-sdk-s3` (endpoint, region, path-style or
//! virtual-hosted addressing, static credentials from the environment, TLS through rustls,
//! connect and attempt timeouts).
//!
//! What each role calls, and so what its key needs:
//! - writer (the uploader): `PutObject` with `If-None-Match: *`, and for objects above
//!   [`S3Config::multipart_threshold`] the multipart calls (`CompleteMultipartUpload` with
//!   `If-None-Match: *`). After a 412 (the key exists) the same put is sent once more with
//!   `If-Match: <the ETag these bytes have>`: it succeeds only if the stored object is exactly
//!   these bytes (a retry whose first answer was lost), and otherwise fails with 412 again, which
//!   is [`ErrorKind::Conflict`]. So the writer compares without reading: its key needs
//!   `s3:PutObject` alone.
//! - reader (the player): `GetObject` (ranged where only part is needed), `HeadObject`,
//!   `ListObjectsV2`.
//! - admin (the retention job): `DeleteObjects`, `PutObjectLegalHold`.
//!
//! The SDK's own retries are disabled: [`crate::RetryPolicy`] is the one place that retries.
//! Reads are retried here within [`crate::RetryPolicy::reads`]; the uploader retries its puts
//! itself, unbounded, so it can count and report each retry.

use std::time::Duration;

use aws_sdk_s3::Client;
use aws_sdk_s3::config::retry::RetryConfig;
use aws_sdk_s3::config::timeout::TimeoutConfig;
use aws_sdk_s3::config::{BehaviorVersion, Credentials, Region};
use aws_sdk_s3::error::{ProvideErrorMetadata, SdkError};
use aws_sdk_s3::primitives::ByteStream;
use aws_sdk_s3::types::{CompletedMultipartUpload, CompletedPart};
use bytes::Bytes;
use jitrec_format::{ObjectKey, Sha256Digest};
use sha2::Digest as _;

use crate::{
    BucketAdmin, BucketError, BucketReader, BucketWriter, ErrorKind, HoldEnforcement, NamesPage,
    Range, RetryPolicy,
};

/// Objects above this size go up in parts. Chunks are a few hundred KB; only unusual ones (a
/// long chunk of a 4K screen) come near it.
pub const DEFAULT_MULTIPART_THRESHOLD: usize = 16 * 1024 * 1024;

/// Part size for multipart uploads (S3's minimum is 5 MiB for all but the last part).
pub const DEFAULT_PART_SIZE: usize = 8 * 1024 * 1024;

/// One attempt may take this long before it is abandoned and retried. Generous for a 16 MiB put
/// on a slow uplink, short enough that a stalled connection does not hold a chunk for minutes.
pub const DEFAULT_ATTEMPT_TIMEOUT: Duration = Duration::from_secs(60);

/// Connecting may take this long.
pub const DEFAULT_CONNECT_TIMEOUT: Duration = Duration::from_secs(5);

/// Static credentials (the uploader's least-privilege key pair).
#[derive(Clone)]
pub struct StaticCredentials {
    pub access_key_id: String,
    pub secret_access_key: String,
    pub session_token: Option<String>,
}

impl std::fmt::Debug for StaticCredentials {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Never print the secret.
        f.debug_struct("StaticCredentials")
            .field("access_key_id", &self.access_key_id)
            .finish_non_exhaustive()
    }
}

impl StaticCredentials {
    /// From `AWS_ACCESS_KEY_ID`, `AWS_SECRET_ACCESS_KEY` and optionally `AWS_SESSION_TOKEN`.
    pub fn from_env() -> Option<Self> {
        Some(Self {
            access_key_id: std::env::var("AWS_ACCESS_KEY_ID").ok()?,
            secret_access_key: std::env::var("AWS_SECRET_ACCESS_KEY").ok()?,
            session_token: std::env::var("AWS_SESSION_TOKEN").ok(),
        })
    }
}

/// Settings of the S3 store.
#[derive(Debug, Clone)]
pub struct S3Config {
    /// Endpoint URL (`https://s3.example.com`, `http://127.0.0.1:8333`); `None` for AWS itself.
    pub endpoint: Option<String>,
    pub region: String,
    pub bucket: String,
    /// Prepended to every key (e.g. `jitrec/`); empty for none.
    pub prefix: String,
    /// Path-style addressing (`endpoint/bucket/key`), needed by most self-hosted servers.
    pub path_style: bool,
    pub credentials: StaticCredentials,
    pub attempt_timeout: Duration,
    pub connect_timeout: Duration,
    pub multipart_threshold: usize,
    pub part_size: usize,
    /// S3 Object Lock on every object uploaded, when the retention policy of this endpoint's
    /// sessions asks for it (the bucket must have Object Lock enabled).
    pub object_lock: Option<ObjectLock>,
}

/// Object Lock settings: every object is locked for `days` from its upload.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ObjectLock {
    /// Compliance: nobody, not even the bucket's owner, can delete a version early.
    /// Governance: principals with `s3:BypassGovernanceRetention` can.
    pub compliance: bool,
    pub days: u32,
}

impl ObjectLock {
    fn mode(&self) -> aws_sdk_s3::types::ObjectLockMode {
        if self.compliance {
            aws_sdk_s3::types::ObjectLockMode::Compliance
        } else {
            aws_sdk_s3::types::ObjectLockMode::Governance
        }
    }

    fn until(&self) -> aws_sdk_s3::primitives::DateTime {
        let secs = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_secs())
            + u64::from(self.days) * 86_400;
        aws_sdk_s3::primitives::DateTime::from_secs(i64::try_from(secs).unwrap_or(i64::MAX))
    }
}

impl S3Config {
    /// Settings with the documented defaults for everything but where and who.
    pub fn new(bucket: impl Into<String>, credentials: StaticCredentials) -> Self {
        Self {
            endpoint: None,
            region: "us-east-1".into(),
            bucket: bucket.into(),
            prefix: String::new(),
            path_style: true,
            credentials,
            attempt_timeout: DEFAULT_ATTEMPT_TIMEOUT,
            connect_timeout: DEFAULT_CONNECT_TIMEOUT,
            multipart_threshold: DEFAULT_MULTIPART_THRESHOLD,
            part_size: DEFAULT_PART_SIZE,
            object_lock: None,
        }
    }
}

/// Command-line options naming an S3 bucket, shared by `jitrec-uploader` and `jitrec-player`
/// so both spell them alike. Credentials come from the environment, never from arguments
/// (which other local users can read in the process list).
#[derive(Debug, Clone, clap::Args)]
pub struct S3Args {
    /// Use this S3 bucket. Credentials come from AWS_ACCESS_KEY_ID, AWS_SECRET_ACCESS_KEY (and
    /// AWS_SESSION_TOKEN).
    #[arg(long, value_name = "BUCKET")]
    pub s3_bucket: Option<String>,
    /// S3 endpoint URL, e.g. https://s3.example.com (default: AWS).
    #[arg(long, value_name = "URL", requires = "s3_bucket")]
    pub s3_endpoint: Option<String>,
    /// S3 region.
    #[arg(long, default_value = "us-east-1", requires = "s3_bucket")]
    pub s3_region: String,
    /// Prefix for every object key, e.g. "jitrec/".
    #[arg(long, default_value = "", requires = "s3_bucket")]
    pub s3_prefix: String,
    /// Use virtual-hosted-style addressing (bucket.endpoint) instead of path style.
    #[arg(long, requires = "s3_bucket")]
    pub s3_virtual_hosted: bool,
}

/// Why [`S3Args::config`] could not build settings.
#[derive(Debug, thiserror::Error)]
#[error("S3 credentials missing: set AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY")]
pub struct MissingCredentials;

impl S3Args {
    /// The settings these options name with credentials from the environment; `None` when no
    /// bucket was given.
    pub fn config(&self) -> Result<Option<S3Config>, MissingCredentials> {
        let Some(bucket) = &self.s3_bucket else {
            return Ok(None);
        };
        let credentials = StaticCredentials::from_env().ok_or(MissingCredentials)?;
        let mut c = S3Config::new(bucket, credentials);
        c.endpoint = self.s3_endpoint.clone();
        c.region = self.s3_region.clone();
        c.prefix = self.s3_prefix.clone();
        c.path_style = !self.s3_virtual_hosted;
        Ok(Some(c))
    }
}

/// A bucket on an S3-compatible server, for all three roles (a program is handed it as the
/// trait its role needs).
#[derive(Debug, Clone)]
pub struct S3Bucket {
    client: Client,
    config: S3Config,
    /// Where the synchronous reader and admin calls drive the SDK. They must not be made from
    /// one of this runtime's async tasks (use `spawn_blocking` or a plain thread).
    runtime: tokio::runtime::Handle,
    reads: RetryPolicy,
}

impl S3Bucket {
    /// Builds the client. Makes no request: least privilege means there may be nothing the
    /// program can read to check its settings; the first call reports them.
    pub fn new(config: S3Config, runtime: tokio::runtime::Handle) -> Self {
        use aws_smithy_http_client::tls::{Provider, rustls_provider::CryptoMode};
        let http = aws_smithy_http_client::Builder::new()
            .tls_provider(Provider::Rustls(CryptoMode::Ring))
            .build_https();
        let c = &config.credentials;
        let mut b = aws_sdk_s3::Config::builder()
            .behavior_version(BehaviorVersion::latest())
            .region(Region::new(config.region.clone()))
            .force_path_style(config.path_style)
            .credentials_provider(Credentials::new(
                c.access_key_id.clone(),
                c.secret_access_key.clone(),
                c.session_token.clone(),
                None,
                "jitrec",
            ))
            .http_client(http)
            .retry_config(RetryConfig::disabled())
            .timeout_config(
                TimeoutConfig::builder()
                    .connect_timeout(config.connect_timeout)
                    .operation_attempt_timeout(config.attempt_timeout)
                    .build(),
            );
        if let Some(e) = &config.endpoint {
            b = b.endpoint_url(e);
        }
        Self {
            client: Client::from_conf(b.build()),
            config,
            runtime,
            reads: RetryPolicy::reads(),
        }
    }

    /// The SDK client, for tools and tests that need more than the traits (creating a bucket,
    /// reading a legal hold back). The programs use only the traits.
    pub fn client(&self) -> &Client {
        &self.client
    }

    /// The same bucket with another retry policy for reads, listings, deletions and holds.
    pub fn with_read_policy(mut self, reads: RetryPolicy) -> Self {
        self.reads = reads;
        self
    }

    fn full_key(&self, key: &str) -> String {
        format!("{}{key}", self.config.prefix)
    }

    /// `bytes=start-(start+len-1)` of `key`, with the object's total size; `None` if there is no
    /// such object. One attempt. `len` must be at least 1.
    async fn get_range_once(
        &self,
        key: &str,
        start: u64,
        len: u64,
    ) -> Result<Option<Range>, BucketError> {
        let end = start.saturating_add(len - 1);
        let r = self
            .client
            .get_object()
            .bucket(&self.config.bucket)
            .key(self.full_key(key))
            .range(format!("bytes={start}-{end}"))
            .send()
            .await;
        let out = match r {
            Ok(out) => out,
            Err(SdkError::ServiceError(e)) if e.err().is_no_such_key() => return Ok(None),
            // Past the end: S3 answers 416 and says nothing of the size; ask for it.
            Err(e) if e.code() == Some("InvalidRange") => {
                return Ok(self.head_once(key).await?.map(|total| Range {
                    bytes: Vec::new(),
                    total,
                }));
            }
            Err(e) => return Err(classify("read", key, e)),
        };
        let total = out
            .content_range()
            .and_then(|r| r.rsplit_once('/'))
            .and_then(|(_, t)| t.parse::<u64>().ok())
            .or_else(|| out.content_length().and_then(|l| u64::try_from(l).ok()));
        let Some(total) = total else {
            return Err(BucketError::new(
                "read",
                key,
                ErrorKind::Other,
                "no size in the response",
            ));
        };
        let bytes = collect_bounded("read", key, out.body, len, false).await?;
        Ok(Some(Range { bytes, total }))
    }

    async fn head_once(&self, key: &str) -> Result<Option<u64>, BucketError> {
        match self
            .client
            .head_object()
            .bucket(&self.config.bucket)
            .key(self.full_key(key))
            .send()
            .await
        {
            Ok(out) => Ok(Some(
                out.content_length()
                    .and_then(|l| u64::try_from(l).ok())
                    .unwrap_or(0),
            )),
            Err(SdkError::ServiceError(e)) if e.err().is_not_found() => Ok(None),
            Err(e) => Err(classify("read", key, e)),
        }
    }

    /// The ETag S3 gives an object stored from `body` by this store (an MD5, not a security
    /// digest: it only names which bytes a conditional put expects): the MD5 of the bytes for a
    /// single put, or for a multipart upload in parts of `part_size` the MD5 of the parts' MD5s
    /// and the part count. Buckets with SSE-KMS or SSE-C compute other ETags; there a retried put
    /// of the same bytes is reported as a conflict (docs/bucket.md).
    fn etag_of(&self, body: &[u8]) -> String {
        use md5::{Digest, Md5};
        if body.len() <= self.config.multipart_threshold {
            return format!("\"{:x}\"", Md5::digest(body));
        }
        let mut parts = Md5::new();
        let mut n = 0;
        for part in body.chunks(self.config.part_size) {
            parts.update(Md5::digest(part));
            n += 1;
        }
        format!("\"{:x}-{n}\"", parts.finalize())
    }

    /// One put of `body` under the write-once condition `cond`.
    async fn put_once(
        &self,
        key: &str,
        body: &Bytes,
        content_type: &'static str,
        cond: &Condition,
    ) -> Result<(), BucketError> {
        let full = self.full_key(key);
        if body.len() > self.config.multipart_threshold {
            return self
                .put_multipart(key, &full, body.clone(), content_type, cond)
                .await;
        }
        let len = i64::try_from(body.len()).unwrap_or(i64::MAX);
        let req = self
            .client
            .put_object()
            .bucket(&self.config.bucket)
            .key(&full)
            .content_type(content_type)
            .content_length(len)
            .set_object_lock_mode(self.config.object_lock.map(|l| l.mode()))
            .set_object_lock_retain_until_date(self.config.object_lock.map(|l| l.until()))
            .body(ByteStream::from(body.clone()));
        let req = match cond {
            Condition::Absent => req.if_none_match("*"),
            Condition::Same(etag) => req.if_match(etag),
        };
        req.send()
            .await
            .map(|_| ())
            .map_err(|e| classify("put", key, e))
    }

    async fn put_multipart(
        &self,
        key: &str,
        full: &str,
        body: Bytes,
        content_type: &'static str,
        cond: &Condition,
    ) -> Result<(), BucketError> {
        let bucket = &self.config.bucket;
        let created = self
            .client
            .create_multipart_upload()
            .bucket(bucket)
            .key(full)
            .content_type(content_type)
            .set_object_lock_mode(self.config.object_lock.map(|l| l.mode()))
            .set_object_lock_retain_until_date(self.config.object_lock.map(|l| l.until()))
            .send()
            .await
            .map_err(|e| classify("put", key, e))?;
        let upload_id = created.upload_id().unwrap_or_default().to_owned();
        let result = async {
            let mut parts = Vec::new();
            for (i, start) in (0..body.len()).step_by(self.config.part_size).enumerate() {
                let end = (start + self.config.part_size).min(body.len());
                let number = i32::try_from(i + 1).map_err(|_| {
                    BucketError::new("put", key, ErrorKind::Client(400), "too many parts")
                })?;
                let out = self
                    .client
                    .upload_part()
                    .bucket(bucket)
                    .key(full)
                    .upload_id(&upload_id)
                    .part_number(number)
                    .body(ByteStream::from(body.slice(start..end)))
                    .send()
                    .await
                    .map_err(|e| classify("put", key, e))?;
                parts.push(
                    CompletedPart::builder()
                        .part_number(number)
                        .set_e_tag(out.e_tag().map(str::to_owned))
                        .build(),
                );
            }
            let complete = self
                .client
                .complete_multipart_upload()
                .bucket(bucket)
                .key(full)
                .upload_id(&upload_id);
            let complete = match cond {
                Condition::Absent => complete.if_none_match("*"),
                Condition::Same(etag) => complete.if_match(etag),
            };
            complete
                .multipart_upload(
                    CompletedMultipartUpload::builder()
                        .set_parts(Some(parts))
                        .build(),
                )
                .send()
                .await
                .map_err(|e| classify("put", key, e))?;
            Ok(())
        }
        .await;
        if result.is_err() {
            // Best effort: the uploader's key may lack AbortMultipartUpload, and a lifecycle
            // rule should clean up incomplete uploads anyway (docs/bucket.md).
            let _ = self
                .client
                .abort_multipart_upload()
                .bucket(bucket)
                .key(full)
                .upload_id(&upload_id)
                .send()
                .await;
        }
        result
    }

    /// One `ListObjectsV2` walk with continuation tokens: keys (and, with a delimiter, common
    /// prefixes) under `prefix` after `start_after`, both without the operator prefix. Each page
    /// is retried on its own, so a failure late in a long listing does not restart it.
    fn list_v2(
        &self,
        prefix: &str,
        start_after: Option<&str>,
        delimiter: Option<&str>,
        max: Option<usize>,
    ) -> Result<(Vec<String>, Vec<String>, bool), BucketError> {
        let full = self.full_key(prefix);
        let strip = |k: &str| {
            k.strip_prefix(self.config.prefix.as_str())
                .map(str::to_owned)
        };
        let (mut keys, mut prefixes) = (Vec::new(), Vec::new());
        let mut token: Option<String> = None;
        loop {
            let out = self.reads.run_blocking(|| {
                self.runtime.block_on(async {
                    let mut req = self
                        .client
                        .list_objects_v2()
                        .bucket(&self.config.bucket)
                        .prefix(&full)
                        .set_continuation_token(token.clone());
                    if let Some(a) = start_after {
                        req = req.start_after(self.full_key(a));
                    }
                    if let Some(d) = delimiter {
                        req = req.delimiter(d);
                    }
                    if let Some(m) = max {
                        // S3 answers at most 1000 entries a request whatever is asked.
                        let left = m.saturating_sub(keys.len() + prefixes.len()).clamp(1, 1000);
                        req = req.max_keys(i32::try_from(left).unwrap_or(1000));
                    }
                    req.send().await.map_err(|e| classify("list", prefix, e))
                })
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
                Some(t) if out.is_truncated() == Some(true) => {
                    if max.is_some_and(|m| keys.len() + prefixes.len() >= m) {
                        return Ok((keys, prefixes, true));
                    }
                    token = Some(t.to_owned())
                }
                _ => break,
            }
        }
        Ok((keys, prefixes, false))
    }
}

/// Reads `body` whole, refusing it past `limit` bytes ([`ErrorKind::TooLarge`], or for a range
/// that the server answered with more than was asked, [`ErrorKind::Other`]).
async fn collect_bounded(
    op: &'static str,
    key: &str,
    mut body: ByteStream,
    limit: u64,
    whole: bool,
) -> Result<Vec<u8>, BucketError> {
    let mut out = Vec::new();
    while let Some(piece) = body.next().await {
        let piece = piece.map_err(|e| {
            BucketError::new(
                op,
                key,
                ErrorKind::Connection,
                format!("reading the body: {e}"),
            )
        })?;
        if (out.len() + piece.len()) as u64 > limit {
            let kind = if whole {
                ErrorKind::TooLarge { limit, size: None }
            } else {
                ErrorKind::Other
            };
            return Err(BucketError::new(op, key, kind, "more bytes than allowed"));
        }
        out.extend_from_slice(&piece);
    }
    Ok(out)
}

/// The write-once condition of a put.
enum Condition {
    /// `If-None-Match: *`: only if the key holds nothing.
    Absent,
    /// `If-Match: ETAG`: only if the key holds exactly the bytes with this ETag.
    Same(String),
}

impl BucketWriter for S3Bucket {
    async fn put(
        &self,
        key: &str,
        body: Bytes,
        content_type: &'static str,
    ) -> Result<(), BucketError> {
        match self
            .put_once(key, &body, content_type, &Condition::Absent)
            .await
        {
            // The key exists: our own earlier attempt whose answer was lost (same bytes), or
            // someone else's object (different bytes). Ask the store which, without reading.
            Err(e) if e.kind == ErrorKind::Client(412) => {}
            other => return other,
        }
        let etag = self.etag_of(&body);
        match self
            .put_once(key, &body, content_type, &Condition::Same(etag))
            .await
        {
            Err(e) if e.kind == ErrorKind::Client(412) => {
                tracing::error!(
                    key,
                    bytes = body.len(),
                    "a different object is already stored under this write-once key; it is left \
                     as it is (tampering, or two writers for one key)"
                );
                Err(BucketError::new(
                    "put",
                    key,
                    ErrorKind::Conflict,
                    format!("the stored object is not the {} bytes offered", body.len()),
                ))
            }
            // Gone between the two puts (a lifecycle rule, an operator): the next attempt stores it.
            Err(e) if e.kind == ErrorKind::Client(404) => Err(BucketError::new(
                "put",
                key,
                ErrorKind::Other,
                "the object vanished between the two conditional puts",
            )),
            other => other,
        }
    }

    fn describe(&self) -> String {
        format!(
            "s3://{}/{} at {}",
            self.config.bucket,
            self.config.prefix,
            self.config.endpoint.as_deref().unwrap_or("AWS")
        )
    }
}

impl S3Bucket {
    /// The body of `key`, `None` if there is no such object; refused on its stated size before a
    /// byte of it is read (a body longer than it said is refused as it streams, by the caller).
    /// One attempt.
    async fn body_within(&self, key: &str, limit: u64) -> Result<Option<ByteStream>, BucketError> {
        let r = self
            .client
            .get_object()
            .bucket(&self.config.bucket)
            .key(self.full_key(key))
            .send()
            .await;
        let out = match r {
            Ok(out) => out,
            Err(SdkError::ServiceError(e)) if e.err().is_no_such_key() => return Ok(None),
            Err(e) => return Err(classify("read", key, e)),
        };
        if let Some(size) = out.content_length().and_then(|l| u64::try_from(l).ok())
            && size > limit
        {
            return Err(BucketError::new(
                "read",
                key,
                ErrorKind::TooLarge {
                    limit,
                    size: Some(size),
                },
                "refused before reading",
            ));
        }
        Ok(Some(out.body))
    }
}

impl BucketReader for S3Bucket {
    fn get(&self, key: &ObjectKey, limit: u64) -> Result<Option<Vec<u8>>, BucketError> {
        let key = key.to_string();
        self.reads.run_blocking(|| {
            self.runtime.block_on(async {
                match self.body_within(&key, limit).await? {
                    None => Ok(None),
                    Some(body) => collect_bounded("read", &key, body, limit, true)
                        .await
                        .map(Some),
                }
            })
        })
    }

    fn size(&self, key: &ObjectKey) -> Result<Option<u64>, BucketError> {
        let key = key.to_string();
        self.reads
            .run_blocking(|| self.runtime.block_on(self.head_once(&key)))
    }

    fn get_range(
        &self,
        key: &ObjectKey,
        start: u64,
        len: u64,
    ) -> Result<Option<Range>, BucketError> {
        if len == 0 {
            return Ok(self.size(key)?.map(|total| Range {
                bytes: Vec::new(),
                total,
            }));
        }
        let key = key.to_string();
        self.reads
            .run_blocking(|| self.runtime.block_on(self.get_range_once(&key, start, len)))
    }

    fn digest(
        &self,
        key: &ObjectKey,
        limit: u64,
    ) -> Result<Option<(u64, Sha256Digest)>, BucketError> {
        let key = key.to_string();
        self.reads.run_blocking(|| {
            self.runtime.block_on(async {
                let Some(mut body) = self.body_within(&key, limit).await? else {
                    return Ok(None);
                };
                let mut h = sha2::Sha256::new();
                let mut n = 0u64;
                while let Some(piece) = body.next().await {
                    let piece = piece.map_err(|e| {
                        BucketError::new(
                            "read",
                            &key,
                            ErrorKind::Connection,
                            format!("reading the body: {e}"),
                        )
                    })?;
                    n += piece.len() as u64;
                    if n > limit {
                        return Err(BucketError::new(
                            "read",
                            &key,
                            ErrorKind::TooLarge { limit, size: None },
                            "refused before reading past the limit",
                        ));
                    }
                    h.update(&piece);
                }
                Ok(Some((n, Sha256Digest::from_bytes(h.finalize().into()))))
            })
        })
    }

    fn list_after(
        &self,
        prefix: &str,
        start_after: Option<&str>,
    ) -> Result<Vec<String>, BucketError> {
        Ok(self.list_v2(prefix, start_after, None, None)?.0)
    }

    fn list_names(
        &self,
        prefix: &str,
        start_after: Option<&str>,
    ) -> Result<Vec<String>, BucketError> {
        Ok(self.names(prefix, start_after, None)?.names)
    }

    fn list_names_page(
        &self,
        prefix: &str,
        start_after: Option<&str>,
        max: usize,
    ) -> Result<NamesPage, BucketError> {
        let mut page = self.names(prefix, start_after, Some(max.max(1)))?;
        if page.names.len() > max {
            page.names.truncate(max);
            page.more = true;
        }
        Ok(page)
    }

    fn describe(&self) -> String {
        format!("s3://{}/{}", self.config.bucket, self.config.prefix)
    }
}

impl S3Bucket {
    /// The names one level below `prefix` after `start_after`, at most about `max` of them
    /// (a page: what the requests up to `max` entries gave).
    fn names(
        &self,
        prefix: &str,
        start_after: Option<&str>,
        max: Option<usize>,
    ) -> Result<NamesPage, BucketError> {
        // `~` sorts after every character of the layout's names, so this skips every object
        // below the name `start_after` itself.
        let after = start_after.map(|a| format!("{prefix}{a}/~"));
        let (keys, prefixes, more) = self.list_v2(prefix, after.as_deref(), Some("/"), max)?;
        let mut out: Vec<String> = prefixes
            .iter()
            .filter_map(|p| p.strip_prefix(prefix)?.strip_suffix('/'))
            // Objects directly under the prefix (not in a folder) are reported by their name, as
            // a folder's would be, so the indexer flags them as outside the layout.
            .chain(keys.iter().filter_map(|k| k.strip_prefix(prefix)))
            .filter(|n| start_after.is_none_or(|a| *n > a))
            .map(str::to_owned)
            .collect();
        out.sort();
        out.dedup();
        Ok(NamesPage { names: out, more })
    }
}

impl BucketAdmin for S3Bucket {
    fn set_legal_hold(&self, keys: &[String], on: bool) -> Result<HoldEnforcement, BucketError> {
        use aws_sdk_s3::types::{ObjectLockLegalHold, ObjectLockLegalHoldStatus};
        let status = if on {
            ObjectLockLegalHoldStatus::On
        } else {
            ObjectLockLegalHoldStatus::Off
        };
        for k in keys {
            let r = self.reads.run_blocking(|| {
                self.runtime.block_on(async {
                    self.client
                        .put_object_legal_hold()
                        .bucket(&self.config.bucket)
                        .key(self.full_key(k))
                        .legal_hold(
                            ObjectLockLegalHold::builder()
                                .status(status.clone())
                                .build(),
                        )
                        .send()
                        .await
                        .map(|_| ())
                        .map_err(|e| {
                            // A bucket without Object Lock refuses the request as invalid.
                            if e.code() == Some("InvalidRequest") {
                                BucketError::new(
                                    "legal hold",
                                    k,
                                    ErrorKind::Client(400),
                                    "InvalidRequest",
                                )
                            } else {
                                classify("legal hold", k, e)
                            }
                        })
                })
            });
            match r {
                Ok(()) => {}
                Err(e) if e.message == "InvalidRequest" => {
                    return Ok(HoldEnforcement::RetentionJobOnly);
                }
                Err(e) => return Err(e),
            }
        }
        Ok(HoldEnforcement::Bucket)
    }

    fn delete_many(&self, keys: &[String]) -> Result<(), BucketError> {
        use aws_sdk_s3::types::{Delete, ObjectIdentifier};
        let Some(first) = keys.first() else {
            return Ok(());
        };
        let objects = keys
            .iter()
            .map(|k| {
                ObjectIdentifier::builder()
                    .key(self.full_key(k))
                    .build()
                    .map_err(|e| BucketError::new("delete", k, ErrorKind::Other, e.to_string()))
            })
            .collect::<Result<Vec<_>, _>>()?;
        let delete = Delete::builder()
            .set_objects(Some(objects))
            .quiet(true)
            .build()
            .map_err(|e| BucketError::new("delete", first, ErrorKind::Other, e.to_string()))?;
        let out = self.reads.run_blocking(|| {
            self.runtime.block_on(async {
                self.client
                    .delete_objects()
                    .bucket(&self.config.bucket)
                    .delete(delete.clone())
                    .send()
                    .await
                    .map_err(|e| classify("delete", first, e))
            })
        })?;
        match out.errors().first() {
            None => Ok(()),
            Some(e) => Err(BucketError::new(
                "delete",
                e.key().unwrap_or(first),
                // A held or locked version is refused with AccessDenied per key.
                ErrorKind::Auth(403),
                format!(
                    "{} ({} of {} keys refused)",
                    e.message().or(e.code()).unwrap_or("refused"),
                    out.errors().len(),
                    keys.len()
                ),
            )),
        }
    }

    fn tidy(&self, _prefix: &str) -> Result<(), BucketError> {
        Ok(())
    }
}

/// Maps an SDK error onto [`ErrorKind`], keeping the server's code and message for the operator.
fn classify<E, R>(op: &'static str, key: &str, e: SdkError<E, R>) -> BucketError
where
    E: ProvideErrorMetadata + std::error::Error + 'static,
    R: std::fmt::Debug,
    SdkError<E, R>: HasStatus,
{
    let status = e.status();
    let (kind, message) = match &e {
        SdkError::TimeoutError(_) => (ErrorKind::Timeout, "attempt timed out".to_owned()),
        SdkError::DispatchFailure(d) => {
            let kind = if d.is_timeout() {
                ErrorKind::Timeout
            } else {
                ErrorKind::Connection
            };
            (kind, format!("{d:?}"))
        }
        SdkError::ResponseError(_) => (ErrorKind::Connection, "broken response".to_owned()),
        SdkError::ConstructionFailure(_) => {
            (ErrorKind::Other, "could not build the request".to_owned())
        }
        SdkError::ServiceError(s) => {
            let err = s.err();
            let code = err.code().unwrap_or("").to_owned();
            let status = status.unwrap_or(0);
            // A HEAD answer has no body, so no code: the status is then all there is to say.
            let message = match (code.as_str(), err.message()) {
                ("", None | Some("")) => format!("HTTP {status}"),
                (c, None | Some("")) => format!("{c} (HTTP {status})"),
                (c, Some(m)) => format!("{c}: {m} (HTTP {status})"),
            };
            let kind = match (status, code.as_str()) {
                (_, "SlowDown") | (429, _) | (503, _) => ErrorKind::Throttled,
                (408, _) | (_, "RequestTimeout") => ErrorKind::Timeout,
                // A concurrent conditional write to the same key: worth another attempt.
                (409, "ConditionalRequestConflict") => ErrorKind::Server(409),
                (401 | 403, _) => ErrorKind::Auth(status),
                (500..=599, _) => ErrorKind::Server(status),
                (400..=499, _) => ErrorKind::Client(status),
                _ => ErrorKind::Other,
            };
            (kind, message)
        }
        _ => (ErrorKind::Other, "unknown SDK error".to_owned()),
    };
    BucketError::new(op, key, kind, message)
}

/// The HTTP status of an SDK error's response, where there was one.
trait HasStatus {
    fn status(&self) -> Option<u16>;
}

impl<E> HasStatus for SdkError<E, aws_sdk_s3::config::http::HttpResponse> {
    fn status(&self) -> Option<u16> {
        self.raw_response().map(|r| r.status().as_u16())
    }
}
