//! The upload service: one [`Uploader`] whose `run` loop watches the spool and starts one task
//! per session with pending entries, at most [`UploaderConfig::concurrency`] at a time.
//!
//! Order within a session is what the bucket layout promises readers: the header and the init
//! segment a chunk needs before the chunk; a chunk's video and events before its manifest; chunks
//! in sequence; the close record last, and only when a fresh listing shows nothing else pending.
//! An entry is acknowledged to the spool only after every one of its objects is confirmed, so a
//! crash at any point means the entry is uploaded again, to the same keys, on the next start.

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant, SystemTime};

use bytes::Bytes;
use jitrec_format::{ObjectKey, SessionId};
use jitrec_spool::{Backlog, Entry, EntryName, EntryRef, SpoolConfig, SpoolError, SpoolReader};
use tokio::sync::{Semaphore, mpsc};
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;

use crate::metrics::Metrics;
use crate::throttle::Throttle;
use crate::watch;
use jitrec_bucket::{Backoff, BucketError, BucketWriter};

/// Sessions uploaded at once. Within a session, entries go one after another (the layout's
/// order); across sessions, four keep a backlog after an outage moving without flooding the link.
pub const DEFAULT_CONCURRENCY: usize = 4;

/// The fallback rescan when no notification arrives (or the platform cannot watch).
pub const DEFAULT_RESCAN_INTERVAL: Duration = Duration::from_secs(10);

/// How long a session stopped by a non-retryable error (wrong credentials, no permission) waits
/// before it is tried again, so fixing the bucket policy needs no restart of every endpoint.
pub const DEFAULT_BLOCKED_RETRY: Duration = Duration::from_secs(300);

/// How long shutdown waits for session tasks to reach a point between entries.
const SHUTDOWN_GRACE: Duration = Duration::from_secs(10);

/// Settings of the upload service.
#[derive(Debug, Clone)]
pub struct UploaderConfig {
    pub spool: PathBuf,
    pub spool_config: SpoolConfig,
    pub concurrency: usize,
    pub backoff: Backoff,
    pub rescan_interval: Duration,
    pub blocked_retry: Duration,
    /// Optional cap on upload bandwidth, bytes per second.
    pub bandwidth: Option<u64>,
}

impl UploaderConfig {
    /// The documented defaults for the spool at `spool`.
    pub fn new(spool: impl Into<PathBuf>) -> Self {
        Self {
            spool: spool.into(),
            spool_config: SpoolConfig::default(),
            concurrency: DEFAULT_CONCURRENCY,
            backoff: Backoff::default(),
            rescan_interval: DEFAULT_RESCAN_INTERVAL,
            blocked_retry: DEFAULT_BLOCKED_RETRY,
            bandwidth: None,
        }
    }
}

/// Why the uploader (or one session's upload) stopped.
#[derive(Debug, thiserror::Error)]
pub enum UploadError {
    #[error(transparent)]
    Spool(#[from] SpoolError),
    #[error("cannot watch the spool: {0}")]
    Watch(#[from] notify::Error),
    /// A put failed in a way retrying will not fix.
    #[error(transparent)]
    Store(#[from] BucketError),
    #[error("a spool task failed: {0}")]
    Join(String),
    /// Shutdown was requested.
    #[error("cancelled")]
    Cancelled,
}

/// The upload service. Cheap to clone (shared state).
pub struct Uploader<S> {
    inner: Arc<Inner<S>>,
}

impl<S> Clone for Uploader<S> {
    fn clone(&self) -> Self {
        Self {
            inner: Arc::clone(&self.inner),
        }
    }
}

struct Inner<S> {
    store: S,
    spool: SpoolReader,
    config: UploaderConfig,
    metrics: Arc<Metrics>,
    throttle: Option<Throttle>,
    /// Sessions with a running task, each with a "look again" flag the run loop sets when new
    /// work may have arrived while the task was busy.
    active: Mutex<HashMap<SessionId, Arc<AtomicBool>>>,
    slots: Semaphore,
}

impl<S: BucketWriter> Uploader<S> {
    /// Opens the spool (as its one reader) and prepares the service.
    pub fn new(store: S, config: UploaderConfig) -> Result<Self, UploadError> {
        let spool = SpoolReader::open(&config.spool, config.spool_config)?;
        Ok(Self {
            inner: Arc::new(Inner {
                store,
                spool,
                throttle: config.bandwidth.map(Throttle::new),
                slots: Semaphore::new(config.concurrency.max(1)),
                config,
                metrics: Arc::new(Metrics::default()),
                active: Mutex::new(HashMap::new()),
            }),
        })
    }

    /// The service's counters.
    pub fn metrics(&self) -> Arc<Metrics> {
        Arc::clone(&self.inner.metrics)
    }

    /// What waits in the spool.
    pub async fn backlog(&self) -> Result<Backlog, UploadError> {
        self.blocking(|sp| sp.backlog()).await
    }

    /// Runs until `shutdown` is cancelled. Errors of single sessions are logged and retried
    /// later; only failing to watch or list the spool at all ends the run early.
    pub async fn run(self, shutdown: CancellationToken) -> Result<(), UploadError> {
        // Full policy: drop. One pending wake-up already makes the loop rescan everything.
        let (wake_tx, mut wake_rx) = mpsc::channel::<()>(1);
        let sessions_dir = self.inner.config.spool.join("sessions");
        let _watcher = match watch::watch(&sessions_dir, wake_tx) {
            Ok(w) => Some(w),
            Err(e) => {
                tracing::warn!(error = %e, interval = ?self.inner.config.rescan_interval,
                    "cannot watch the spool; uploads start at the next rescan instead");
                None
            }
        };
        let mut rescan = tokio::time::interval(self.inner.config.rescan_interval);
        rescan.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut tasks: JoinSet<(SessionId, Result<(), UploadError>)> = JoinSet::new();
        let mut blocked: HashMap<SessionId, Instant> = HashMap::new();
        let stop_tasks = shutdown.child_token();
        tracing::info!(
            store = %self.inner.store.describe(),
            spool = %self.inner.config.spool.display(),
            "uploader started"
        );
        loop {
            tokio::select! {
                _ = shutdown.cancelled() => break,
                Some(joined) = tasks.join_next(), if !tasks.is_empty() => {
                    match joined {
                        Ok((s, Err(e))) => {
                            tracing::error!(session = %s, error = %e, retry_in = ?self.inner.config.blocked_retry,
                                "upload of this session stopped; its entries stay in the spool");
                            blocked.insert(s, Instant::now());
                        }
                        Ok((_, Ok(()))) => {}
                        Err(e) => tracing::error!(error = %e, "a session upload task panicked"),
                    }
                    continue;
                }
                _ = wake_rx.recv() => {}
                _ = rescan.tick() => {}
            }
            let retry_after = self.inner.config.blocked_retry;
            blocked.retain(|_, since| since.elapsed() < retry_after);
            let sessions = match self.blocking(|sp| sp.sessions()).await {
                Ok(s) => s,
                Err(e) => {
                    tracing::error!(error = %e, "cannot list the spool");
                    continue;
                }
            };
            for s in sessions {
                if blocked.contains_key(&s) {
                    continue;
                }
                let flag = {
                    let mut active = self.active();
                    if let Some(flag) = active.get(&s) {
                        flag.store(true, Ordering::SeqCst);
                        continue;
                    }
                    let flag = Arc::new(AtomicBool::new(true));
                    active.insert(s, Arc::clone(&flag));
                    flag
                };
                let this = self.clone();
                let token = stop_tasks.clone();
                tasks.spawn(async move { (s, this.upload_session(s, flag, token).await) });
            }
        }
        // Session tasks stop between entries; an entry cut off mid-put is simply uploaded
        // again (same keys) on the next start.
        stop_tasks.cancel();
        let drained = tokio::time::timeout(SHUTDOWN_GRACE, async {
            while tasks.join_next().await.is_some() {}
        })
        .await;
        if drained.is_err() {
            tracing::warn!("session tasks did not stop in time; aborting them");
            tasks.abort_all();
        }
        tracing::info!("uploader stopped");
        Ok(())
    }

    fn active(&self) -> std::sync::MutexGuard<'_, HashMap<SessionId, Arc<AtomicBool>>> {
        self.inner
            .active
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
    }

    async fn upload_session(
        &self,
        s: SessionId,
        flag: Arc<AtomicBool>,
        token: CancellationToken,
    ) -> Result<(), UploadError> {
        // Removes this task's entry from `active` however the task ends (an error, a panic,
        // cancellation). Only its own entry: a newer task may have been started for the session.
        struct Active<'a, S: BucketWriter>(&'a Uploader<S>, SessionId, Arc<AtomicBool>);
        impl<S: BucketWriter> Drop for Active<'_, S> {
            fn drop(&mut self) {
                let mut active = self.0.active();
                if active.get(&self.1).is_some_and(|f| Arc::ptr_eq(f, &self.2)) {
                    active.remove(&self.1);
                }
            }
        }
        let _active = Active(self, s, Arc::clone(&flag));
        let _slot = tokio::select! {
            slot = self.inner.slots.acquire() => slot.map_err(|e| UploadError::Join(e.to_string()))?,
            _ = token.cancelled() => return Ok(()),
        };
        loop {
            flag.store(false, Ordering::SeqCst);
            let pending = self.blocking(move |sp| sp.pending(s)).await?;
            if pending.is_empty() {
                // Leave only if nothing arrived since we listed. The check and the removal happen
                // under the lock the run loop holds when it decides between flagging this task
                // and starting a new one, so no wake-up falls between them.
                let mut active = self.active();
                if !flag.load(Ordering::SeqCst) {
                    active.remove(&s);
                    return Ok(());
                }
                continue;
            }
            for e in pending {
                match self.upload_entry(e, &token).await {
                    Ok(()) => {}
                    Err(UploadError::Cancelled) => return Ok(()),
                    Err(err) => return Err(err),
                }
            }
        }
    }

    /// Uploads one entry (and, first, the header or init segment it depends on if those are
    /// still pending), then acknowledges it.
    async fn upload_entry(
        &self,
        e: EntryRef,
        token: &CancellationToken,
    ) -> Result<(), UploadError> {
        if token.is_cancelled() {
            return Err(UploadError::Cancelled);
        }
        let s = e.session;
        if e.name == EntryName::Close {
            let fresh = self.blocking(move |sp| sp.pending(s)).await?;
            if fresh.iter().any(|x| x.name != EntryName::Close) {
                // Entries committed before the close record that our listing missed: they go
                // first, on the session loop's next pass.
                return Ok(());
            }
        }
        let Some((entry, committed_at)) = self.read(e).await? else {
            return Ok(());
        };
        if let Entry::Chunk { manifest, .. } = &entry {
            let deps = [EntryName::Header, EntryName::Init(manifest.init.id)];
            let fresh = self.blocking(move |sp| sp.pending(s)).await?;
            for name in deps {
                let dep = EntryRef { session: s, name };
                if fresh.contains(&dep)
                    && let Some((dep_entry, at)) = self.read(dep).await?
                {
                    self.ship(dep, dep_entry, at, token).await?;
                }
            }
        }
        self.ship(e, entry, committed_at, token).await
    }

    /// Reads an entry; `None` if it is gone or was quarantined (counted and logged by the spool).
    async fn read(&self, e: EntryRef) -> Result<Option<(Entry, SystemTime)>, UploadError> {
        let result = self
            .blocking(move |sp| {
                let at = sp.committed_at(&e)?;
                Ok((sp.read(&e)?, at))
            })
            .await;
        match result {
            Ok(x) => Ok(Some(x)),
            Err(UploadError::Spool(SpoolError::NotFound(_))) => Ok(None),
            Err(UploadError::Spool(SpoolError::Quarantined { .. })) => {
                Metrics::add(&self.inner.metrics.quarantined, 1);
                Ok(None)
            }
            Err(other) => Err(other),
        }
    }

    /// Puts every object of an entry, then acknowledges it.
    async fn ship(
        &self,
        e: EntryRef,
        entry: Entry,
        committed_at: SystemTime,
        token: &CancellationToken,
    ) -> Result<(), UploadError> {
        // Where the session's objects go: its machine's prefix for a version 2 session (the
        // bucket key of this endpoint may write nowhere else), layout v1 for an older one.
        let at = match &entry {
            Entry::Header { header, .. } => header.session_key(),
            _ => {
                let s = e.session;
                match self.blocking(move |sp| sp.session_key(s)).await {
                    Ok(at) => at,
                    // The header leaves the spool only while the close record is acknowledged,
                    // which happens only once the close record is stored: a close record still
                    // pending without its header is one a crash interrupted there, already in
                    // the bucket, and is acknowledged again.
                    Err(UploadError::Spool(SpoolError::NotFound(_) | SpoolError::NoHeader(_)))
                        if e.name == EntryName::Close =>
                    {
                        self.blocking(move |sp| sp.ack(&e)).await?;
                        return Ok(());
                    }
                    // Another task finished this session meanwhile, and this entry with it.
                    Err(UploadError::Spool(SpoolError::NotFound(_) | SpoolError::NoHeader(_)))
                        if self.blocking(move |sp| sp.pending(s)).await?.is_empty() =>
                    {
                        return Ok(());
                    }
                    Err(err) => return Err(err),
                }
            }
        };
        let objects: Vec<(ObjectKey, Bytes)> = entry
            .into_objects(&e, at)
            .into_iter()
            .map(|(k, b)| (k, Bytes::from(b)))
            .collect();
        let is_chunk = matches!(e.name, EntryName::Chunk(_));
        match <[(ObjectKey, Bytes); 3]>::try_from(objects) {
            // A chunk: video and events side by side; the manifest, which commits the chunk for
            // readers, only after both are stored.
            Ok([(vk, vb), (ek, eb), (mk, mb)]) => {
                tokio::try_join!(self.put(vk, vb, token), self.put(ek, eb, token))?;
                self.put(mk, mb, token).await?;
            }
            Err(objects) => {
                for (k, b) in objects {
                    self.put(k, b, token).await?;
                }
            }
        }
        self.blocking(move |sp| sp.ack(&e)).await?;
        let m = &self.inner.metrics;
        Metrics::add(&m.entries_acked, 1);
        if is_chunk {
            Metrics::add(&m.chunks_acked, 1);
            m.record_latency(committed_at);
        }
        tracing::debug!(entry = %e, "uploaded");
        Ok(())
    }

    /// One object, retried for as long as the failure is transient.
    async fn put(
        &self,
        key: ObjectKey,
        body: Bytes,
        token: &CancellationToken,
    ) -> Result<(), UploadError> {
        let key_text = key.to_string();
        let m = &self.inner.metrics;
        let mut attempt: u32 = 0;
        loop {
            if let Some(t) = &self.inner.throttle {
                t.take(body.len()).await;
            }
            let result = tokio::select! {
                r = self.inner.store.put(&key_text, body.clone(), key.content_type()) => r,
                _ = token.cancelled() => return Err(UploadError::Cancelled),
            };
            match result {
                Ok(()) => {
                    Metrics::add(&m.objects_uploaded, 1);
                    Metrics::add(&m.bytes_uploaded, body.len() as u64);
                    if attempt > 0 {
                        tracing::info!(key = %key_text, attempts = attempt + 1, "stored after retrying");
                    }
                    return Ok(());
                }
                Err(err) if err.is_retryable() => {
                    Metrics::add(&m.retries, 1);
                    let wait = self.inner.config.backoff.delay(attempt);
                    // The first failure and every tenth: an hour-long outage should not bury the
                    // log, nor go unmentioned.
                    if attempt.is_multiple_of(10) {
                        tracing::warn!(error = %err, attempt = attempt + 1, ?wait, "upload failed; retrying");
                    }
                    attempt = attempt.saturating_add(1);
                    tokio::select! {
                        _ = tokio::time::sleep(wait) => {}
                        _ = token.cancelled() => return Err(UploadError::Cancelled),
                    }
                }
                Err(err) => {
                    Metrics::add(&m.failures, 1);
                    return Err(UploadError::Store(err));
                }
            }
        }
    }

    async fn blocking<T: Send + 'static>(
        &self,
        f: impl FnOnce(&SpoolReader) -> Result<T, SpoolError> + Send + 'static,
    ) -> Result<T, UploadError> {
        let inner = Arc::clone(&self.inner);
        tokio::task::spawn_blocking(move || f(&inner.spool))
            .await
            .map_err(|e| UploadError::Join(e.to_string()))?
            .map_err(UploadError::from)
    }
}
