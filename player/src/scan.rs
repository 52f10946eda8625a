//! Reading one session out of the bucket, incrementally, checking everything it reads.
//!
//! [`SessionScan`] is the one place that decides whether a stored session is intact: the
//! indexer keeps one per session that is still arriving and calls [`SessionScan::advance`] when
//! new objects may have landed; `verify` runs a fresh one over the whole session. So the status
//! shown in the report view and the verdict `verify` prints come from the same code.
//!
//! What it checks, in upload order: the header starts the hash chain; each chunk manifest must
//! sit under its own key, link to the previous document and name payloads (video, events, init
//! segment) whose sizes and SHA-256 match; the close record must count the chunks and link to the
//! last one. Problems are classified for the status: a **gap** is chunks that are missing as a
//! whole (the chain is re-anchored after them, so the rest is still checked); everything else
//! that does not match (altered bytes, a moved manifest, a forged link, a payload missing under a
//! manifest, a key outside the layout, an unreadable document) is **tampering**. After tampering
//! the chain cannot vouch for anything later, so later chunks are still indexed for playback but
//! marked unverified.

use std::collections::{BTreeMap, BTreeSet};

use chrono::{DateTime, Utc};
use jitrec_bucket::{BucketError, BucketReader};
use jitrec_format::{
    ChainError, ChainVerifier, ChunkManifest, EndReason, EndpointKey, Event, InitRef,
    MAX_DECODED_EVENTS_BYTES, MAX_DOCUMENT_BYTES, ObjectKey, SessionClose, SessionHeader,
    SessionId, SessionKey, Sha256Digest, decode_events_bounded, max_events, validate_events,
};

use crate::index::Index;
use crate::silence::{LastChunk, Silence};
use crate::witness::{self, Seen};

/// The largest document (header, manifest, close record) read: the format's own bound, so a
/// larger object is refused before it is read.
const DOCUMENT_LIMIT: u64 = MAX_DOCUMENT_BYTES as u64;

/// The largest compressed events payload read whole: it may not decode to more than
/// [`MAX_DECODED_EVENTS_BYTES`], and zstd never makes data larger by more than a few bytes per
/// block, so a manifest stating a larger payload names one that cannot be valid.
const EVENTS_LIMIT: u64 = MAX_DECODED_EVENTS_BYTES;

/// What a bounded read of one object found.
enum Read<T> {
    Got(T),
    Missing,
    /// Not read: over its bound, or not an object (a link, a FIFO, a directory). Evidence about
    /// this session, not a failure of the bucket, so it never stops the scan of any other.
    Refused(BucketError),
}

/// Sorts a read's result into [`Read`]; only a failure to reach the bucket stays an `Err`.
fn read<T>(r: Result<Option<T>, BucketError>) -> Result<Read<T>, BucketError> {
    match r {
        Ok(Some(v)) => Ok(Read::Got(v)),
        Ok(None) => Ok(Read::Missing),
        Err(e) if e.is_refused_object() => Ok(Read::Refused(e)),
        Err(e) => Err(e),
    }
}

/// How bad a problem is for the session's status.
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, serde::Serialize, serde::Deserialize,
)]
#[serde(rename_all = "snake_case")]
pub enum ProblemKind {
    /// Whole chunks are missing.
    Gap,
    /// Something stored does not match what the chain vouches for.
    Tampered,
    /// The player could not read part of the session from the store or write it to the index
    /// (it retries); says nothing of the recording itself, so it does not change the status.
    Unindexed,
    /// Nothing new has arrived of an open session for longer than its chunk length allows
    /// ([`crate::silence`]): a flag for reviewers, never evidence of tampering or an end. Put on
    /// the row by the indexer, never by a scan, and gone as soon as something arrives.
    Silent,
}

/// One problem, in words a reviewer can act on.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Problem {
    pub kind: ProblemKind,
    pub message: String,
    /// For [`ProblemKind::Silent`]: what arrived last and the rule applied, for the API and the
    /// report view. Absent from every other kind (and from rows written before it existed).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub silence: Option<Silence>,
}

impl Problem {
    /// The problem of a silent session.
    pub fn silent(s: Silence) -> Self {
        Self {
            kind: ProblemKind::Silent,
            message: s.message(),
            silence: Some(s),
        }
    }
}

/// The status of a session, derived from its scan (see `docs/player.md`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Status {
    /// No close record yet and objects still arriving.
    Recording,
    /// No close record yet, and nothing new for three chunk lengths and a slack
    /// ([`crate::silence`]): the recorder, its uploader or its network has gone quiet. A flag,
    /// not an end: back to recording when chunks arrive, interrupted after the stale timeout.
    Silent,
    /// Closed, chain intact, gapless.
    Complete,
    /// Chunks are missing.
    Gap,
    /// The recorder died: closed as interrupted, or no close record and nothing new for longer
    /// than the indexer's timeout.
    Interrupted,
    /// The hash chain is broken or a payload does not match.
    Tampered,
}

impl Status {
    pub const ALL: [Status; 6] = [
        Status::Recording,
        Status::Silent,
        Status::Complete,
        Status::Gap,
        Status::Interrupted,
        Status::Tampered,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Status::Recording => "recording",
            Status::Silent => "silent",
            Status::Complete => "complete",
            Status::Gap => "gap",
            Status::Interrupted => "interrupted",
            Status::Tampered => "tampered",
        }
    }

    pub fn parse(s: &str) -> Option<Status> {
        Status::ALL.into_iter().find(|x| x.as_str() == s)
    }
}

impl std::fmt::Display for Status {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Something the scan read and accepted, for the index.
#[derive(Debug, Clone)]
pub enum Found {
    Header(Box<SessionHeader>),
    /// An init segment, the first time a chunk referring to it was checked against it.
    Init(InitRef),
    Chunk {
        manifest: Box<ChunkManifest>,
        events: Vec<Event>,
        /// Linked into an unbroken chain and every payload matched.
        verified: bool,
    },
    Close(SessionClose),
}

/// The incremental check of one session. Cloned by the indexer before each advance, so that a
/// failed index write puts the scan back where the index is and the next pass reads again.
#[derive(Debug, Clone)]
pub struct SessionScan {
    session: SessionKey,
    /// `None` before the header has been read, and after the chain broke.
    chain: Option<ChainVerifier>,
    header_read: bool,
    /// The chain broke: nothing after this point is vouched for.
    broken: bool,
    next_seq: u64,
    /// Init segments already fetched: id -> digest of the stored bytes (`None`: missing).
    inits: BTreeMap<u64, Option<(u64, Sha256Digest)>>,
    close: Option<SessionClose>,
    problems: Vec<Problem>,
    bad_keys: BTreeSet<String>,
    chunks_verified: u64,
    /// When the player's witness record first saw the header (player clock).
    header_seen: Option<DateTime<Utc>>,
    /// When it first saw the close record.
    close_seen: Option<DateTime<Utc>>,
    /// The key the session's documents are signed with (version 2), once the header is read.
    key: Option<EndpointKey>,
    /// The header, once read and accepted.
    header: Option<Box<SessionHeader>>,
    /// Decrypts the events of an encrypted session, to index them.
    keyring: Option<std::sync::Arc<crate::unseal::Keyring>>,
    /// Chunks read per advance at most (the indexer writes each advance's in one batch).
    chunk_budget: u64,
    /// The last advance stopped at its budget with chunks left to read.
    more: bool,
    /// Decoded event bytes read by the current advance.
    batch_bytes: u64,
    /// When the player last saw anything new of this session, on its own clock: the latest
    /// first-seen time of an object in the witness record, or when a chunk it cannot read yet
    /// (waiting for an earlier one) was first listed. Decides silence; `None` without a witness.
    last_arrival: Option<DateTime<Utc>>,
    /// The newest chunk read, and when its manifest was first seen.
    last_chunk: Option<LastChunk>,
    /// The highest chunk listed but not read yet (waiting for a missing one): a higher one
    /// listed later is something new arriving.
    pending_seq: Option<u64>,
}

/// Decoded event bytes after which an advance stops before its next chunk (with one chunk at
/// most [`jitrec_format::MAX_DECODED_EVENTS_BYTES`] beyond it): what one advance holds.
pub const EVENT_BYTES_PER_ADVANCE: u64 = 32 * 1024 * 1024;

impl SessionScan {
    /// A scan of the session at `session` (a bare id is a layout v1 session).
    pub fn new(session: impl Into<SessionKey>) -> Self {
        Self {
            session: session.into(),
            chain: None,
            header_read: false,
            broken: false,
            next_seq: 0,
            inits: BTreeMap::new(),
            close: None,
            problems: Vec::new(),
            bad_keys: BTreeSet::new(),
            chunks_verified: 0,
            header_seen: None,
            close_seen: None,
            key: None,
            header: None,
            keyring: None,
            chunk_budget: u64::MAX,
            more: false,
            batch_bytes: 0,
            last_arrival: None,
            last_chunk: None,
            pending_seq: None,
        }
    }

    /// Reads at most `chunks` chunks per advance; [`SessionScan::has_more`] says when an advance
    /// stopped there. Bounds what one advance holds in memory and one index write carries.
    pub fn with_chunk_budget(mut self, chunks: u64) -> Self {
        self.chunk_budget = chunks.max(1);
        self
    }

    /// Whether the last advance stopped at its chunk budget with chunks left to read.
    pub fn has_more(&self) -> bool {
        self.more
    }

    /// Decrypts an encrypted session's events with `keyring` (without one, an encrypted
    /// session's chain and payloads are still checked, but its events are not read).
    pub fn with_keyring(mut self, keyring: Option<std::sync::Arc<crate::unseal::Keyring>>) -> Self {
        self.keyring = keyring;
        self
    }

    /// The events payload as plaintext: decrypted for an encrypted session; `None` when it cannot
    /// be (no identity, or not one of the session's recipients), which is not tampering.
    fn events_plaintext(&self, stored: Vec<u8>, seq: u64) -> Option<Vec<u8>> {
        let encrypted = self.header.as_ref().is_some_and(|h| h.encryption.is_some());
        if !encrypted {
            return Some(stored);
        }
        let Some(k) = &self.keyring else {
            tracing::debug!(session = %self.session, seq, "encrypted events not read: this player has no age identity");
            return None;
        };
        match k.open(&stored) {
            Ok(p) => Some(p),
            Err(e) => {
                tracing::warn!(session = %self.session, seq, error = %e, "encrypted events could not be decrypted with this player's identities");
                None
            }
        }
    }

    /// Whether the header says the payloads are encrypted.
    pub fn encrypted(&self) -> bool {
        self.header.as_ref().is_some_and(|h| h.encryption.is_some())
    }

    /// What the session's header claims about its origin, once read and accepted.
    pub fn claim(&self) -> Option<crate::enroll::Claim> {
        self.header.as_deref().map(crate::enroll::Claim::of)
    }

    /// When the witness record first saw the header and the close record.
    pub fn seen(&self) -> crate::enroll::Seen {
        crate::enroll::Seen {
            header: self.header_seen,
            close: self.close_seen,
        }
    }

    /// When the witness record first saw the header (`None` without a witness, or before).
    pub fn header_seen(&self) -> Option<DateTime<Utc>> {
        self.header_seen
    }

    /// When the witness record first saw the close record.
    pub fn close_seen(&self) -> Option<DateTime<Utc>> {
        self.close_seen
    }

    /// The key the session is signed with; `None` for an unsigned (v1) session or before its
    /// header was read.
    pub fn key(&self) -> Option<&EndpointKey> {
        self.key.as_ref()
    }

    /// Compares what was just read under `key` with the witness record (recording it at first
    /// sight). Returns the time it was first seen, and reports bytes that differ from what was
    /// first seen as tampering: whatever signs the new bytes, they are not what arrived.
    fn witness(
        &mut self,
        w: Option<&dyn Index>,
        key: ObjectKey,
        size: u64,
        sha: &Sha256Digest,
    ) -> Result<Option<DateTime<Utc>>, BucketError> {
        let Some(w) = w else { return Ok(None) };
        let k = key.to_string();
        let seen = witness::observe(w, key, size, sha, Utc::now());
        if let Ok(Seen::New(t) | Seen::Same(t)) = &seen {
            self.arrived(*t);
        }
        match seen {
            Ok(Seen::New(t) | Seen::Same(t)) => Ok(Some(t)),
            Ok(Seen::Replaced(was)) => {
                self.tampered(format!(
                    "{k}: replaced after the player first read it at {}: then {} bytes with SHA-256 {}, now {size} bytes with {sha}",
                    was.seen_at, was.size, was.sha256
                ));
                Ok(Some(was.seen_at))
            }
            Err(e) => Err(BucketError::new(
                "witness",
                k,
                jitrec_bucket::ErrorKind::Io(std::io::ErrorKind::Other),
                e.to_string(),
            )),
        }
    }

    pub fn session(&self) -> SessionId {
        self.session.id
    }

    /// Where the session lives in the bucket.
    pub fn session_key(&self) -> SessionKey {
        self.session
    }

    pub fn problems(&self) -> &[Problem] {
        &self.problems
    }

    pub fn close(&self) -> Option<&SessionClose> {
        self.close.as_ref()
    }

    /// Chunks read so far (the next expected sequence number).
    pub fn chunks_read(&self) -> u64 {
        self.next_seq
    }

    /// Chunks linked into an unbroken chain with every payload matching.
    pub fn chunks_verified(&self) -> u64 {
        self.chunks_verified
    }

    /// Whether nothing more is expected: the close record has been read.
    pub fn is_closed(&self) -> bool {
        self.close.is_some()
    }

    /// Something of this session was first seen at `t` (player clock).
    fn arrived(&mut self, t: DateTime<Utc>) {
        if self.last_arrival.is_none_or(|a| t > a) {
            self.last_arrival = Some(t);
        }
    }

    /// When the player last saw anything new of this session (its own clock; `None` when it
    /// read it without a witness record).
    pub fn last_arrival(&self) -> Option<DateTime<Utc>> {
        self.last_arrival
    }

    /// The newest chunk read and when it arrived.
    pub fn last_chunk(&self) -> Option<&LastChunk> {
        self.last_chunk.as_ref()
    }

    /// The chunk length the header claims (unbounded: [`crate::silence`] bounds it).
    pub fn chunk_target_ms(&self) -> Option<u32> {
        self.header.as_ref().map(|h| h.codec.chunk_target_ms)
    }

    /// Whether silence can apply at all: open, caught up with what is listed (a scan still
    /// reading a backlog is behind, not silent), and seen through the witness record.
    fn may_be_silent(&self) -> bool {
        self.close.is_none() && !self.more && self.last_arrival.is_some()
    }

    /// When this session becomes silent if nothing new arrives (`None`: it cannot now).
    pub fn silent_at(&self, slack: std::time::Duration) -> Option<DateTime<Utc>> {
        if !self.may_be_silent() {
            return None;
        }
        crate::silence::silent_at(self.last_arrival, self.chunk_target_ms(), slack)
    }

    /// The session's silence at `now` (player clock), or `None` while it is still heard from
    /// or cannot be silent (closed, behind, never witnessed).
    pub fn silence(&self, now: DateTime<Utc>, slack: std::time::Duration) -> Option<Silence> {
        if !self.may_be_silent() {
            return None;
        }
        crate::silence::judge(
            now,
            self.last_arrival,
            self.last_chunk.as_ref(),
            self.chunk_target_ms(),
            slack,
        )
    }

    /// The status; `stale` says nothing new has arrived for longer than the indexer waits.
    /// Without a clock (a one-shot `verify`) an open session is never silent.
    pub fn status(&self, stale: bool) -> Status {
        self.status_with(stale, false)
    }

    /// The status, with `silent` from [`SessionScan::silence`]: it only ever replaces
    /// `recording` (a closed, tampered, gapped or stale session shows that instead).
    pub fn status_with(&self, stale: bool, silent: bool) -> Status {
        if self
            .problems
            .iter()
            .any(|p| p.kind == ProblemKind::Tampered)
        {
            Status::Tampered
        } else if self.problems.iter().any(|p| p.kind == ProblemKind::Gap) {
            Status::Gap
        } else {
            match &self.close {
                Some(c) if c.end_reason == EndReason::Interrupted => Status::Interrupted,
                Some(_) => Status::Complete,
                None if stale => Status::Interrupted,
                None if silent => Status::Silent,
                None => Status::Recording,
            }
        }
    }

    fn problem(&mut self, kind: ProblemKind, message: impl Into<String>) {
        let message = message.into();
        if !self.problems.iter().any(|p| p.message == message) {
            self.problems.push(Problem {
                kind,
                message,
                silence: None,
            });
        }
    }

    fn tampered(&mut self, message: impl Into<String>) {
        self.problem(ProblemKind::Tampered, message);
    }

    /// Reads what is new in the bucket for this session and appends what it accepted to `found`.
    ///
    /// `give_up_waiting` says chunks that are still missing will not come (the indexer's timeout
    /// passed, or a one-shot `verify`): they are reported as a gap, as is a missing header. A
    /// close record implies it. Returns whether anything new was read. Only a failure to read the
    /// bucket is an `Err`; the scan can be advanced again after one.
    pub fn advance(
        &mut self,
        src: &dyn BucketReader,
        give_up_waiting: bool,
        found: &mut Vec<Found>,
    ) -> Result<bool, BucketError> {
        self.advance_witnessed(src, None, give_up_waiting, found)
    }

    /// [`SessionScan::advance`], comparing every object read with the witness record kept in
    /// `witness` (and adding to it what is seen for the first time).
    pub fn advance_witnessed(
        &mut self,
        src: &dyn BucketReader,
        w: Option<&dyn Index>,
        give_up_waiting: bool,
        found: &mut Vec<Found>,
    ) -> Result<bool, BucketError> {
        let s = self.session;
        // Keys sort chunk by chunk (`.events.zst` < `.json` < `.m4s`), then `closed.json`,
        // `init/`, `session.json`: resuming after the last read chunk's video re-lists only the
        // few objects that are not chunks.
        let resume = self
            .next_seq
            .checked_sub(1)
            .map(|seq| ObjectKey::ChunkVideo(s, seq).to_string());
        let mut manifests = BTreeSet::new();
        let (mut has_header, mut has_close) = (false, false);
        let listed = src.list_after(&ObjectKey::session_prefix(s), resume.as_deref())?;
        if resume.is_none()
            && let Some(w) = w
        {
            // A full listing: everything the player ever saw of this session must still be
            // there. Deleting chunks (and re-closing the session before them) leaves a chain
            // that links, signed by the machine's key; only the witness knows what was there.
            let have: BTreeSet<&str> = listed.iter().map(String::as_str).collect();
            let was = witness::keys_of(w, s.id).map_err(|e| {
                BucketError::new(
                    "witness",
                    s.prefix(),
                    jitrec_bucket::ErrorKind::Io(std::io::ErrorKind::Other),
                    e.to_string(),
                )
            })?;
            // Only what was seen under this prefix: a copy of the id elsewhere is another
            // object, not this session's.
            let prefix = s.prefix();
            for (k, seen) in was.into_iter().filter(|(k, _)| k.starts_with(&prefix)) {
                if !have.contains(k.as_str()) {
                    self.tampered(format!(
                        "{k}: deleted after the player first read it at {seen}"
                    ));
                }
            }
        }
        for key in listed {
            match ObjectKey::parse(&key) {
                Ok(ObjectKey::ChunkManifest(_, n)) => {
                    manifests.insert(n);
                }
                Ok(ObjectKey::SessionHeader(_)) => has_header = true,
                Ok(ObjectKey::SessionClosed(_)) => has_close = true,
                Ok(_) => {}
                Err(e) => {
                    if self.bad_keys.insert(key) {
                        self.tampered(e.to_string());
                    }
                }
            }
        }
        let before = found.len();
        let give_up = give_up_waiting || has_close;

        if !self.header_read {
            if !has_header {
                if give_up {
                    self.tampered("the session header is missing");
                }
                return Ok(found.len() > before);
            }
            // Marked read only once it was: a failed read (the store, the witness) is tried
            // again at the next advance, never skipped with the chain unchecked.
            match read(src.get(&ObjectKey::SessionHeader(s), DOCUMENT_LIMIT))? {
                Read::Missing => self.tampered("the session header vanished while reading it"),
                Read::Refused(e) => {
                    self.tampered(format!("session header: {}", e.kind));
                    self.broken = true;
                }
                Read::Got(bytes) => self.read_header(w, &bytes, found)?,
            }
            self.header_read = true;
        }

        let from = self.next_seq;
        self.more = false;
        self.batch_bytes = 0;
        let newest_listed = manifests.last().copied();
        let mut waiting = false;
        for (read_now, seq) in manifests.into_iter().filter(|&n| n >= from).enumerate() {
            // A budget of chunks and of decoded events per advance, when one is set: the caller
            // writes each advance's reading before asking for more.
            if read_now as u64 >= self.chunk_budget
                || (self.chunk_budget != u64::MAX && self.batch_bytes >= EVENT_BYTES_PER_ADVANCE)
            {
                self.more = true;
                break;
            }
            let gap = seq != self.next_seq;
            if gap {
                if !give_up {
                    // Chunks of one session may land out of order; wait for the missing ones.
                    waiting = true;
                    break;
                }
                let msg = ChainError::SeqGap {
                    expected: self.next_seq,
                    found: seq,
                }
                .to_string();
                self.problem(ProblemKind::Gap, msg);
            }
            self.read_chunk(src, w, seq, gap, found)?;
            self.next_seq = seq + 1;
        }
        // A chunk listed but not read because it waits for an earlier one has arrived all the
        // same: without this, a session whose chunk 5 is lost would look silent while 6, 7, 8
        // land. (Not a chunk left for the next batch: that is a backlog, already witnessed or
        // about to be, and must not make a dead session look alive.)
        if waiting
            && let Some(newest) = newest_listed
            && w.is_some()
            && self.pending_seq.is_none_or(|p| newest > p)
        {
            self.pending_seq = Some(newest);
            self.arrived(Utc::now());
        }

        // The close record only once every chunk before it is read (it is checked against the
        // last one).
        if has_close && self.close.is_none() && !self.more {
            match read(src.get(&ObjectKey::SessionClosed(s), DOCUMENT_LIMIT))? {
                Read::Missing => self.tampered("the close record vanished while reading it"),
                Read::Refused(e) => self.tampered(format!("close record: {}", e.kind)),
                Read::Got(bytes) => {
                    self.close_seen = self.witness(
                        w,
                        ObjectKey::SessionClosed(s),
                        bytes.len() as u64,
                        &Sha256Digest::of(&bytes),
                    )?;
                    self.read_close(&bytes, found)
                }
            }
        }
        Ok(found.len() > before)
    }

    fn read_header(
        &mut self,
        w: Option<&dyn Index>,
        bytes: &[u8],
        found: &mut Vec<Found>,
    ) -> Result<(), BucketError> {
        let s = self.session;
        let chain = ChainVerifier::new(bytes);
        // Witnessed only as this session's header if it is one: a header planted under a
        // prefix it does not belong to is reported below, and recorded nowhere as this
        // session's.
        if chain
            .as_ref()
            .is_ok_and(|c| c.header().session_key() == s && c.header().session_id == s.id)
        {
            self.header_seen = self.witness(
                w,
                ObjectKey::SessionHeader(s),
                bytes.len() as u64,
                &Sha256Digest::of(bytes),
            )?;
        }
        match chain {
            Ok(c) if c.header().session_id != s.id => {
                self.tampered(format!(
                    "the session header belongs to session {}",
                    c.header().session_id
                ));
                self.broken = true;
            }
            // Each layout holds its own version, and a machine's prefix only that machine's
            // sessions: a session copied under another machine's prefix, or a signed session
            // moved out of its machine's prefix, is not what its endpoint uploaded.
            Ok(c) if c.header().session_key() != s => {
                let h = c.header();
                self.tampered(format!(
                    "the session header (format version {}, machine {:?}) does not belong under {}",
                    h.version,
                    h.machine.id,
                    s.prefix()
                ));
                self.broken = true;
            }
            Ok(c) => {
                found.push(Found::Header(Box::new(c.header().clone())));
                self.key = c.key().copied();
                self.header = Some(Box::new(c.header().clone()));
                self.chain = Some(c);
            }
            Err(e) => {
                self.tampered(format!("session header: {e}"));
                self.broken = true;
            }
        }
        Ok(())
    }

    fn read_chunk(
        &mut self,
        src: &dyn BucketReader,
        w: Option<&dyn Index>,
        seq: u64,
        after_gap: bool,
        found: &mut Vec<Found>,
    ) -> Result<(), BucketError> {
        let s = self.session;
        let bytes = match read(src.get(&ObjectKey::ChunkManifest(s, seq), DOCUMENT_LIMIT))? {
            Read::Got(b) => b,
            Read::Missing => {
                self.tampered(format!("chunk {seq}: manifest vanished while reading it"));
                return Ok(());
            }
            Read::Refused(e) => {
                self.tampered(format!("chunk {seq}: manifest: {}", e.kind));
                self.break_chain();
                return Ok(());
            }
        };
        let replaced = self.problems.len();
        let manifest_seen = self.witness(
            w,
            ObjectKey::ChunkManifest(s, seq),
            bytes.len() as u64,
            &Sha256Digest::of(&bytes),
        )?;
        let manifest_replaced = self.problems.len() > replaced;
        let manifest = match ChunkManifest::from_bytes(&bytes) {
            Ok(m) => m,
            Err(e) => {
                self.tampered(format!("chunk {seq}: {e}"));
                self.break_chain();
                return Ok(());
            }
        };
        if manifest.seq != seq || manifest.session_id != s.id {
            self.tampered(format!(
                "chunk {seq}: the manifest stored for it is chunk {} of session {} (moved, reordered or copied)",
                manifest.seq, manifest.session_id
            ));
            self.break_chain();
            return Ok(());
        }
        if let Some(arrived_at) = manifest_seen {
            self.last_chunk = Some(LastChunk {
                seq,
                media_end_us: manifest.media_end_us.as_micros(),
                // To the microsecond, as the index keeps the chunk's: one value in both places.
                utc_end: chrono::SubsecRound::trunc_subsecs(manifest.utc_end, 6),
                arrived_at,
            });
        }
        let mut ok = !self.broken && !manifest_replaced;
        let mut events = Vec::new();
        // Payloads are bounded by the sizes their (already parsed) manifest states: a larger
        // object cannot match it, so nothing past that size is read. The video is hashed piece by
        // piece, never held whole.
        match read(src.digest(&ObjectKey::ChunkVideo(s, seq), manifest.video.size))? {
            Read::Missing => {
                self.tampered(format!("chunk {seq}: video segment is missing"));
                ok = false;
            }
            Read::Refused(e) => {
                self.tampered(format!("chunk {seq}: video segment: {}", e.kind));
                ok = false;
            }
            Read::Got((size, sha)) => {
                let before = self.problems.len();
                self.witness(w, ObjectKey::ChunkVideo(s, seq), size, &sha)?;
                ok &= self.problems.len() == before;
                if let Err(e) = manifest.verify_video_digest(size, &sha) {
                    self.tampered(format!("chunk {seq}: {e}"));
                    ok = false;
                }
            }
        }
        // More events than a recorder can write in the chunk's time is refused before a byte of
        // the payload is decompressed (a 5 KB payload can hold 700,000 tiny events).
        let duration = manifest
            .media_end_us
            .as_micros()
            .saturating_sub(manifest.media_start_us.as_micros());
        let allowed = max_events(duration);
        let events_limit = manifest.events.size.min(EVENTS_LIMIT);
        let got = if manifest.events.count > allowed {
            self.tampered(format!(
                "chunk {seq}: its manifest claims {} events in {:.1} s, more than a recorder writes \
                 (at most {allowed}); the events are not read",
                manifest.events.count,
                duration as f64 / 1e6
            ));
            ok = false;
            None
        } else {
            Some(read(
                src.get(&ObjectKey::ChunkEvents(s, seq), events_limit),
            )?)
        };
        if let Some(Read::Got(b)) = &got {
            let before = self.problems.len();
            self.witness(
                w,
                ObjectKey::ChunkEvents(s, seq),
                b.len() as u64,
                &Sha256Digest::of(b),
            )?;
            ok &= self.problems.len() == before;
        }
        match got {
            None => {}
            Some(Read::Missing) => {
                self.tampered(format!("chunk {seq}: events are missing"));
                ok = false;
            }
            Some(Read::Refused(e)) => {
                self.tampered(format!("chunk {seq}: events: {}", e.kind));
                ok = false;
            }
            Some(Read::Got(b)) => match manifest.verify_events(&b) {
                Err(e) => {
                    self.tampered(format!("chunk {seq}: {e}"));
                    ok = false;
                }
                Ok(()) => match self.events_plaintext(b, seq) {
                    None => {}
                    Some(plain) => {
                        match decode_events_bounded(&plain, manifest.events.count as usize)
                            .and_then(|(ev, n)| validate_events(&manifest, &ev).map(|()| (ev, n)))
                        {
                            Ok((ev, n)) => {
                                self.batch_bytes = self.batch_bytes.saturating_add(n);
                                events = ev
                            }
                            Err(e) => {
                                self.tampered(format!("chunk {seq}: events: {e}"));
                                ok = false;
                            }
                        }
                    }
                },
            },
        }
        let init_id = manifest.init.id;
        if let std::collections::btree_map::Entry::Vacant(slot) = self.inits.entry(init_id) {
            // Over the manifest's size, an init segment cannot match: refused like a missing one.
            let digest = match read(src.digest(&ObjectKey::Init(s, init_id), manifest.init.size))? {
                Read::Got(d) => Some(d),
                Read::Missing | Read::Refused(_) => None,
            };
            slot.insert(digest);
            if let Some((size, sha)) = digest {
                let before = self.problems.len();
                self.witness(w, ObjectKey::Init(s, init_id), size, &sha)?;
                ok &= self.problems.len() == before;
            }
            if let Some((size, sha)) = digest
                && size == manifest.init.size
                && sha == manifest.init.sha256
            {
                found.push(Found::Init(manifest.init.clone()));
            }
        }
        match self.inits.get(&init_id).copied().flatten() {
            None => {
                self.tampered(format!("chunk {seq}: init segment {init_id} is missing"));
                ok = false;
            }
            Some((size, sha)) => {
                if size != manifest.init.size || sha != manifest.init.sha256 {
                    self.tampered(format!(
                        "chunk {seq}: init segment {init_id}: stored {size} bytes with SHA-256 {sha}, the manifest says {} bytes with {}",
                        manifest.init.size, manifest.init.sha256
                    ));
                    ok = false;
                }
            }
        }
        // Linked last: a read above that failed (the store, the witness) leaves the chain where
        // it was, so the retry at the next advance links this manifest again instead of
        // finding it "already linked" and reporting a break that is not there.
        if let Some(chain) = self.chain.as_mut() {
            let linked = if after_gap {
                chain.resync(&bytes)
            } else {
                chain.push(&bytes)
            };
            if let Err(e) = linked {
                self.tampered(e.to_string());
                self.break_chain();
                ok = false;
            }
        }
        if ok {
            self.chunks_verified += 1;
        }
        found.push(Found::Chunk {
            manifest: Box::new(manifest),
            events,
            verified: ok,
        });
        Ok(())
    }

    fn read_close(&mut self, bytes: &[u8], found: &mut Vec<Found>) {
        let close = match SessionClose::from_bytes(bytes) {
            Ok(c) => c,
            Err(e) => {
                self.tampered(format!("close record: {e}"));
                return;
            }
        };
        // A close record that is not the session key's (or not the session's) does not end the
        // session: it is reported, and what arrives after it is still read.
        if let Some(chain) = &self.chain
            && let Err(e) = chain.check_close(bytes)
        {
            self.tampered(e.to_string());
            return;
        }
        if close.chunk_count > self.next_seq {
            let msg = ChainError::SeqGap {
                expected: self.next_seq,
                found: close.chunk_count,
            }
            .to_string();
            self.problem(
                ProblemKind::Gap,
                format!("close record: {msg} (the last chunks never arrived)"),
            );
        } else if let Some(chain) = self.chain.take()
            && !self.broken
            && let Err(e) = chain.finish(bytes)
        {
            self.tampered(e.to_string());
        }
        self.broken = true;
        found.push(Found::Close(close.clone()));
        self.close = Some(close);
    }

    fn break_chain(&mut self) {
        self.broken = true;
        self.chain = None;
    }
}
