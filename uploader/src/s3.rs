//! The S3 store: any S3-compatible server through `aws-sdk-s3`.
//!
//! Only `PutObject` is used, plus the multipart calls for objects above
//! [`S3Config::multipart_threshold`] (`CreateMultipartUpload`, `UploadPart`,
//! `CompleteMultipartUpload`, and `AbortMultipartUpload` on failure, best effort). The SDK's own
//! retries are disabled: [`crate::retry`] is the one place that retries, so backoff, counting
//! and reporting happen once.

use std::time::Duration;

use aws_sdk_s3::Client;
use aws_sdk_s3::config::retry::RetryConfig;
use aws_sdk_s3::config::timeout::TimeoutConfig;
use aws_sdk_s3::config::{BehaviorVersion, Credentials, Region};
use aws_sdk_s3::error::{ProvideErrorMetadata, SdkError};
use aws_sdk_s3::primitives::ByteStream;
use aws_sdk_s3::types::{CompletedMultipartUpload, CompletedPart};
use bytes::Bytes;

use crate::store::{ErrorKind, ObjectStore, StoreError};

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

/// A bucket on an S3-compatible server.
#[derive(Debug, Clone)]
pub struct S3Store {
    client: Client,
    config: S3Config,
}

impl S3Store {
    /// Builds the client. Makes no request: least privilege means there is nothing the uploader
    /// may read to check its settings; the first put reports them.
    pub fn new(config: S3Config) -> Self {
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
                "jitrec-uploader",
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
        }
    }

    /// The SDK client, for tools and tests that need more than `put` (the uploader itself never
    /// uses anything else).
    pub fn client(&self) -> &Client {
        &self.client
    }

    fn full_key(&self, key: &str) -> String {
        format!("{}{key}", self.config.prefix)
    }

    async fn put_multipart(
        &self,
        key: &str,
        full: &str,
        body: Bytes,
        content_type: &'static str,
    ) -> Result<(), StoreError> {
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
            .map_err(|e| classify(key, e))?;
        let upload_id = created.upload_id().unwrap_or_default().to_owned();
        let result = async {
            let mut parts = Vec::new();
            for (i, start) in (0..body.len()).step_by(self.config.part_size).enumerate() {
                let end = (start + self.config.part_size).min(body.len());
                let number = i32::try_from(i + 1).map_err(|_| StoreError {
                    key: key.to_owned(),
                    kind: ErrorKind::Client(400),
                    message: "too many parts".into(),
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
                    .map_err(|e| classify(key, e))?;
                parts.push(
                    CompletedPart::builder()
                        .part_number(number)
                        .set_e_tag(out.e_tag().map(str::to_owned))
                        .build(),
                );
            }
            self.client
                .complete_multipart_upload()
                .bucket(bucket)
                .key(full)
                .upload_id(&upload_id)
                .multipart_upload(
                    CompletedMultipartUpload::builder()
                        .set_parts(Some(parts))
                        .build(),
                )
                .send()
                .await
                .map_err(|e| classify(key, e))?;
            Ok(())
        }
        .await;
        if result.is_err() {
            // Best effort: the uploader's key may lack AbortMultipartUpload, and a lifecycle
            // rule should clean up incomplete uploads anyway (see docs/deploy-s3.md).
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
}

impl ObjectStore for S3Store {
    async fn put(
        &self,
        key: &str,
        body: Bytes,
        content_type: &'static str,
    ) -> Result<(), StoreError> {
        let full = self.full_key(key);
        if body.len() > self.config.multipart_threshold {
            return self.put_multipart(key, &full, body, content_type).await;
        }
        let len = i64::try_from(body.len()).unwrap_or(i64::MAX);
        self.client
            .put_object()
            .bucket(&self.config.bucket)
            .key(&full)
            .content_type(content_type)
            .content_length(len)
            .set_object_lock_mode(self.config.object_lock.map(|l| l.mode()))
            .set_object_lock_retain_until_date(self.config.object_lock.map(|l| l.until()))
            .body(ByteStream::from(body))
            .send()
            .await
            .map(|_| ())
            .map_err(|e| classify(key, e))
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

/// Maps an SDK error onto [`ErrorKind`], keeping the server's code and message for the operator.
fn classify<E, R>(key: &str, e: SdkError<E, R>) -> StoreError
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
            (kind, format!("{:?}", d))
        }
        SdkError::ResponseError(_) => (ErrorKind::Connection, "broken response".to_owned()),
        SdkError::ConstructionFailure(_) => {
            (ErrorKind::Other, "could not build the request".to_owned())
        }
        SdkError::ServiceError(s) => {
            let err = s.err();
            let code = err.code().unwrap_or("").to_owned();
            let message = format!("{code}: {}", err.message().unwrap_or(""));
            let status = status.unwrap_or(0);
            let kind = match (status, code.as_str()) {
                (_, "SlowDown") | (429, _) | (503, _) => ErrorKind::Throttled,
                (408, _) | (_, "RequestTimeout") => ErrorKind::Timeout,
                (401 | 403, _) => ErrorKind::Auth(status),
                (500..=599, _) => ErrorKind::Server(status),
                (400..=499, _) => ErrorKind::Client(status),
                _ => ErrorKind::Other,
            };
            (kind, message)
        }
        _ => (ErrorKind::Other, "unknown SDK error".to_owned()),
    };
    StoreError {
        key: key.to_owned(),
        kind,
        message,
    }
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
