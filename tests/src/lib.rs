//! The test harness shared by jitrec's integration tests and their helper processes.
//!
//! It holds what more than one test (or a test and the process it kills) must agree on:
//! deterministic chunk content, so a byte read back can be compared with the byte that was meant
//! to be written, and a directory "bucket" in the format's object layout, so a test can check a
//! session end to end with the format's own chain verifier.

pub mod child;
pub mod faultproxy;
pub mod http;
pub mod oidc;
pub mod pipeline;
pub mod postgres;
pub mod seaweed;
pub mod syslog;
pub mod webdriver;
pub mod webhook;
pub mod xvfb;

use std::fs;
use std::path::{Path, PathBuf};

use std::time::Duration;

use anyhow::{Context, Result, bail};
use jitrec_bucket::{BucketReader, BucketWriter};
use jitrec_format::{
    EndReason, FORMAT_V1, ObjectKey, SessionClose, SessionId, Sha256Digest, fixtures,
};
use jitrec_player::verify::{self, Verdict};
use jitrec_spool::{SessionWriter, SpoolInspector, SpoolWriter};
use jitrec_uploader::{Metrics, Uploader, UploaderConfig};
use std::sync::Arc;
use tokio_util::sync::CancellationToken;

/// Deterministic bytes for `(session, seq, part)`: splitmix64 over a seed derived from the three.
///
/// Sizes vary from 1 KiB to `max_len` so commits take long enough for a kill to land mid-write.
pub fn payload(session: SessionId, seq: u64, part: u8, max_len: usize) -> Vec<u8> {
    let id = session.as_uuid().as_u128();
    let mut state = (id as u64)
        ^ ((id >> 64) as u64)
        ^ seq.wrapping_mul(0x9e37_79b9_7f4a_7c15)
        ^ u64::from(part) << 56;
    let mut next = || {
        state = state.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = state;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    };
    let len = 1024 + (next() as usize % max_len.saturating_sub(1024).max(1));
    let mut out = Vec::with_capacity(len + 8);
    while out.len() < len {
        out.extend_from_slice(&next().to_le_bytes());
    }
    out.truncate(len);
    out
}

/// Chunks per session the crash writer writes: enough that most kills land inside a session.
pub const CHUNKS_PER_SESSION: u64 = 5;

/// The largest video payload the crash writer produces.
pub const CRASH_MAX_VIDEO: usize = 384 * 1024;

/// The events payload of chunk `seq` (the fixture events, zstd JSON lines) and its count.
pub fn chunk_events(seq: u64) -> (Vec<u8>, u32) {
    let ev = fixtures::events(seq);
    let bytes = jitrec_format::encode_events(&ev).expect("fixture events always encode");
    (bytes, ev.len() as u32)
}

/// Records a whole session into the spool as the recorder would: header, init segment 0,
/// `chunks` chunks of deterministic content (see [`payload`]), and a close record. Calls
/// `on_commit(seq, manifest digest)` after each chunk's commit returned.
pub fn record_session(
    writer: &SpoolWriter,
    chunks: u64,
    max_video: usize,
    mut on_commit: impl FnMut(SessionId, u64, Sha256Digest),
) -> Result<SessionId> {
    let mut w = open_session(writer)?;
    let sid = w.session_id();
    for _ in 0..chunks {
        let (seq, digest) = commit_chunk(&mut w, max_video)?;
        on_commit(sid, seq, digest);
    }
    close_session(w, EndReason::JitEnded)?;
    Ok(sid)
}

/// Starts a session (header and init segment 0 committed).
pub fn open_session(writer: &SpoolWriter) -> Result<SessionWriter> {
    let sid = SessionId::new();
    let mut w = writer.create_session(&fixtures::header(sid))?;
    w.commit_init(0, &fixtures::init_bytes(0))?;
    Ok(w)
}

/// Commits the session's next chunk of deterministic content; returns its seq and digest.
pub fn commit_chunk(w: &mut SessionWriter, max_video: usize) -> Result<(u64, Sha256Digest)> {
    let sid = w.session_id();
    let seq = w.next_seq();
    let video = payload(sid, seq, 0, max_video);
    let (events, count) = chunk_events(seq);
    let m = fixtures::manifest(sid, seq, w.head(), &video, &events, count);
    Ok((seq, w.commit_chunk(&m, &video, &events)?))
}

/// Closes a session with a record consistent with what the writer holds.
pub fn close_session(w: SessionWriter, reason: EndReason) -> Result<()> {
    let ended_at = w.last_chunk().map_or(w.header().started_at, |m| m.utc_end);
    let close = SessionClose {
        version: FORMAT_V1,
        session_id: w.session_id(),
        end_reason: reason,
        ended_at,
        closed_at: chrono::Utc::now().max(ended_at),
        chunk_count: w.next_seq(),
        media_end_us: w.last_chunk().map(|m| m.media_end_us).unwrap_or_default(),
        prev: w.head(),
        note: None,
        stopped_by: None,
    };
    Ok(w.close(&close)?)
}

/// Every object of a closed fixture session, keyed as the uploader stores them (its header says
/// where: layout v1, or its machine's prefix for a version 2 session), in upload order.
pub fn session_objects(s: &fixtures::StoredSession) -> Vec<(ObjectKey, Vec<u8>)> {
    let at = jitrec_format::SessionHeader::from_bytes(&s.header)
        .expect("fixture headers parse")
        .session_key();
    session_objects_at(s, at)
}

/// Every object of a closed fixture session, keyed under `at` (wherever an attacker puts it).
pub fn session_objects_at(
    s: &fixtures::StoredSession,
    at: jitrec_format::SessionKey,
) -> Vec<(ObjectKey, Vec<u8>)> {
    let mut out = vec![
        (ObjectKey::SessionHeader(at), s.header.clone()),
        (ObjectKey::Init(at, 0), fixtures::init_bytes(0)),
    ];
    for (seq, (m, v, e)) in s.chunks.iter().enumerate() {
        out.push((ObjectKey::ChunkVideo(at, seq as u64), v.clone()));
        out.push((ObjectKey::ChunkEvents(at, seq as u64), e.clone()));
        out.push((ObjectKey::ChunkManifest(at, seq as u64), m.clone()));
    }
    out.push((ObjectKey::SessionClosed(at), s.close.clone()));
    out
}

/// Every object key a closed session of `chunks` chunks has in the bucket.
pub fn expected_keys(s: SessionId, chunks: u64, closed: bool) -> Vec<String> {
    let mut keys = vec![
        ObjectKey::SessionHeader(s.into()).to_string(),
        ObjectKey::Init(s.into(), 0).to_string(),
    ];
    for seq in 0..chunks {
        keys.push(ObjectKey::ChunkVideo(s.into(), seq).to_string());
        keys.push(ObjectKey::ChunkEvents(s.into(), seq).to_string());
        keys.push(ObjectKey::ChunkManifest(s.into(), seq).to_string());
    }
    if closed {
        keys.push(ObjectKey::SessionClosed(s.into()).to_string());
    }
    keys.sort();
    keys
}

/// Every key in an S3 bucket, sorted.
pub async fn list_keys(client: &aws_sdk_s3::Client, bucket: &str) -> Result<Vec<String>> {
    let mut keys = Vec::new();
    let mut pages = client
        .list_objects_v2()
        .bucket(bucket)
        .into_paginator()
        .send();
    while let Some(page) = pages.next().await {
        for o in page?.contents() {
            keys.extend(o.key().map(str::to_owned));
        }
    }
    keys.sort();
    Ok(keys)
}

/// Copies every object of an S3 bucket into a directory bucket, for verification with the
/// player's code.
pub async fn mirror(client: &aws_sdk_s3::Client, bucket: &str, into: &Path) -> Result<TestBucket> {
    let dir = TestBucket::new(into);
    for key in list_keys(client, bucket).await? {
        let obj = client.get_object().bucket(bucket).key(&key).send().await?;
        let bytes = obj.body.collect().await?.into_bytes();
        let parsed = ObjectKey::parse(&key)?;
        dir.put(&parsed, &bytes)?;
    }
    Ok(dir)
}

/// Polls `cond` until it holds or `limit` passes (then fails with `what`). For conditions
/// another process or task brings about, where there is nothing to await directly.
pub async fn wait_for<F, Fut>(limit: Duration, what: &str, mut cond: F) -> Result<()>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let start = std::time::Instant::now();
    while !cond().await {
        if start.elapsed() > limit {
            bail!("timed out after {limit:?} waiting for {what}");
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    Ok(())
}

/// Pending entries in a spool (`usize::MAX` if it cannot be read), without taking a lock.
pub fn backlog_entries(spool: &Path) -> usize {
    SpoolInspector::open(spool)
        .and_then(|i| i.backlog())
        .map(|b| b.entries)
        .unwrap_or(usize::MAX)
}

/// Waits until the spool at `spool` has nothing pending.
pub async fn wait_drained(spool: &Path, limit: Duration) -> Result<()> {
    wait_for(limit, "the spool to drain", || {
        let p = spool.to_owned();
        async move { backlog_entries(&p) == 0 }
    })
    .await
}

/// Runs an uploader until its spool has nothing pending (or `limit` passes), then stops it;
/// returns its metrics.
pub async fn drain<S: BucketWriter>(
    store: S,
    config: UploaderConfig,
    limit: Duration,
) -> Result<Arc<Metrics>> {
    let spool = config.spool.clone();
    let up = Uploader::new(store, config)?;
    let metrics = up.metrics();
    let stop = CancellationToken::new();
    let task = tokio::spawn(up.run(stop.clone()));
    wait_drained(&spool, limit).await?;
    stop.cancel();
    task.await??;
    Ok(metrics)
}

/// A directory bucket for tests, built on the bucket crate's own [`jitrec_bucket::DirBucket`]:
/// writes go through its write-once put, reads through its bounded reader. What a hostile
/// endpoint would do to the directory (replace an object's bytes) is [`TestBucket::tamper`],
/// which writes the file directly, as an attacker with access to the folder would.
#[derive(Debug, Clone)]
pub struct TestBucket {
    store: jitrec_bucket::DirBucket,
}

/// The largest object the tests read back whole.
const TEST_READ_LIMIT: u64 = 1 << 30;

impl TestBucket {
    pub fn new(root: impl Into<PathBuf>) -> Self {
        Self {
            store: jitrec_bucket::DirBucket::new(root),
        }
    }

    /// The bucket crate's store under it.
    pub fn store(&self) -> &jitrec_bucket::DirBucket {
        &self.store
    }

    /// Stores an object through the store's write-once put.
    pub fn put(&self, key: &ObjectKey, bytes: &[u8]) -> Result<()> {
        Ok(self.store.put_blocking(&key.to_string(), bytes)?)
    }

    /// Replaces (or creates) an object's bytes behind the store's back, as someone with write
    /// access to the folder would.
    pub fn tamper(&self, key: &ObjectKey, bytes: &[u8]) -> Result<()> {
        let dest = self.store.root().join(key.to_string());
        let parent = dest.parent().context("object path has a parent")?;
        fs::create_dir_all(parent)?;
        fs::write(&dest, bytes)?;
        Ok(())
    }

    /// Reads an object, `None` if absent.
    pub fn get(&self, key: &ObjectKey) -> Result<Option<Vec<u8>>> {
        Ok(self.store.get(key, TEST_READ_LIMIT)?)
    }

    /// Sessions present, oldest first.
    pub fn sessions(&self) -> Result<Vec<SessionId>> {
        Ok(verify::sessions(&self.store)?
            .into_iter()
            .map(|k| k.id)
            .collect())
    }

    /// Where the session with `id` is in the bucket (either layout).
    pub fn locate(&self, id: SessionId) -> Result<jitrec_format::SessionKey> {
        jitrec_player::locate::find(&self.store, id)?.context("the session is in the bucket")
    }

    /// Verifies a whole session with the player's verifier and requires it intact.
    pub fn verify_intact(&self, s: SessionId) -> Result<SessionClose> {
        let report = verify::verify_session(&self.store, s)?;
        match (report.verdict, &report.close) {
            (Verdict::Intact, Some(close)) => Ok(close.clone()),
            _ => bail!("{report}"),
        }
    }
}

/// A line the crash writer prints after an operation returned (so it is known to be done).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum WriterLine {
    /// `recovered <temp files removed> <sessions closed as interrupted>`
    Recovered { temp_removed: usize, closed: usize },
    /// `committed <session> <seq> <manifest sha256>`
    Committed {
        session: SessionId,
        seq: u64,
        digest: Sha256Digest,
    },
    /// `closed <session> <chunk count>`
    Closed { session: SessionId, chunks: u64 },
}

impl WriterLine {
    pub fn parse(line: &str) -> Result<Self> {
        let f: Vec<&str> = line.split_whitespace().collect();
        Ok(match f.as_slice() {
            ["recovered", t, c] => WriterLine::Recovered {
                temp_removed: t.parse()?,
                closed: c.parse()?,
            },
            ["committed", s, n, d] => WriterLine::Committed {
                session: s.parse()?,
                seq: n.parse()?,
                digest: d.parse()?,
            },
            ["closed", s, n] => WriterLine::Closed {
                session: s.parse()?,
                chunks: n.parse()?,
            },
            _ => bail!("unparsable writer line {line:?}"),
        })
    }
}

/// Counts files in a directory (0 if it does not exist).
pub fn count_files(dir: &Path) -> usize {
    fs::read_dir(dir).map(|d| d.count()).unwrap_or(0)
}

/// The cause a test's `JitEvent::Stop` carries: a control command from this test process.
pub fn control_stop(detail: &str) -> jitrec_format::StopCause {
    jitrec_format::StopCause {
        by: jitrec_format::StopBy::ControlCommand,
        peer: None,
        recorded_user: None,
        detail: detail.into(),
    }
}

/// Records a closed, signed (format v2) session of machine `machine` into the spool at `spool`,
/// as the recorder would with that endpoint's key `signer`: header, init segment, `chunks`
/// chunks, close record. Returns its id.
pub fn record_v2_session(
    spool: &Path,
    machine: &str,
    signer: jitrec_format::EndpointSigner,
    chunks: u64,
) -> Result<SessionId> {
    let (writer, _) = SpoolWriter::open_signed(
        spool,
        jitrec_spool::SpoolConfig::default(),
        Some(std::sync::Arc::new(signer)),
    )?;
    let key = writer.endpoint_key().context("the writer signs")?;
    let sid = SessionId::new();
    let mut header = fixtures::header(sid);
    header.version = jitrec_format::FORMAT_VERSION;
    header.endpoint_key = Some(key);
    header.machine.id = machine.into();
    let mut w = writer.create_session(&header)?;
    w.commit_init(0, &fixtures::init_bytes(0))?;
    for _ in 0..chunks {
        let seq = w.next_seq();
        let video = payload(sid, seq, 0, 4096);
        let (events, count) = chunk_events(seq);
        let m = jitrec_format::ChunkManifest {
            version: jitrec_format::FORMAT_VERSION,
            ..fixtures::manifest(sid, seq, w.head(), &video, &events, count)
        };
        w.commit_chunk(&m, &video, &events)?;
    }
    let last = w.last_chunk().cloned();
    let ended_at = last.as_ref().map_or(header.started_at, |m| m.utc_end);
    let close = SessionClose {
        version: jitrec_format::FORMAT_VERSION,
        session_id: sid,
        end_reason: EndReason::JitEnded,
        ended_at,
        closed_at: chrono::Utc::now().max(ended_at),
        chunk_count: w.next_seq(),
        media_end_us: last.map(|m| m.media_end_us).unwrap_or_default(),
        prev: w.head(),
        note: None,
        stopped_by: Some(jitrec_format::StopCause {
            by: jitrec_format::StopBy::GroupChange,
            peer: None,
            recorded_user: None,
            detail: "alice left group sudo".into(),
        }),
    };
    w.close(&close)?;
    Ok(sid)
}
