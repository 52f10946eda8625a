//! The recorder's side of the spool: create sessions, commit init segments, chunks and close
//! records durably, and recover after a crash.
//!
//! The writer checks every commit against the session it is building (sequence numbers gapless,
//! `prev` equal to the current chain head, payloads matching their manifest, time not going
//! backwards) and refuses a bad one before anything touches the disk: a recorder bug must not
//! become a broken recording.

use std::collections::{BTreeMap, BTreeSet};
use std::fs::{self, File};
use std::path::Path;
use std::sync::{Arc, Mutex, PoisonError};

use jitrec_format::{
    ChunkManifest, EndpointSigner, SessionClose, SessionHeader, SessionId, Sha256Digest,
};

use crate::container::{self, Kind};
use crate::dir::SpoolDir;
use crate::durable;
use crate::journal::{self, Journal, Journalled};
use crate::names::{EntryName, EntryRef, State};
use crate::{CONTROL_RESERVE_BYTES, Entry, SpoolConfig, SpoolError};

/// The recorder's handle on a spool. Holds the writer lock: one recorder per spool.
#[derive(Clone, Debug)]
pub struct SpoolWriter {
    shared: Arc<Shared>,
}

#[derive(Debug)]
struct Shared {
    dir: SpoolDir,
    /// Held for the life of the writer; dropping it releases the `writer.lock` flock.
    _lock: File,
    /// Bytes the spool uses, as of the last scan plus what this writer committed since. The
    /// uploader only ever frees space, so this is an over-estimate: a commit that fits by it
    /// fits for real, and one that does not triggers a rescan before being refused.
    /// The mutex is held across each commit, so two sessions cannot both claim the last bytes.
    used: Mutex<u64>,
    /// Sessions with a live `SessionWriter`, so one session never has two writers.
    active: Mutex<BTreeSet<SessionId>>,
    /// The endpoint key that signs version 2 documents; `None` writes version 1 only.
    signer: Option<Arc<EndpointSigner>>,
}

/// What start-up recovery found and did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Recovery {
    /// Temp files of interrupted commits, removed.
    pub temp_files_removed: usize,
    /// Session directories a crash left without even a header, removed.
    pub empty_sessions_removed: usize,
    /// Sessions with a header but no close record: the recorder that wrote them died, and they
    /// should be closed as interrupted ([`SpoolWriter::resume_session`]).
    pub open_sessions: Vec<SessionId>,
}

impl SpoolWriter {
    /// Opens (creating if needed) the spool at `root` as its writer and recovers it: removes temp
    /// files of interrupted commits and empty session directories, and reports sessions left open.
    pub fn open(
        root: impl AsRef<Path>,
        config: SpoolConfig,
    ) -> Result<(Self, Recovery), SpoolError> {
        Self::open_signed(root, config, None)
    }

    /// [`SpoolWriter::open`], with the endpoint key that signs the version 2 documents (header,
    /// manifests, close record) committed through this writer. The spool stores documents
    /// exactly as they will be uploaded, so a document is signed once, when it is committed.
    pub fn open_signed(
        root: impl AsRef<Path>,
        config: SpoolConfig,
        signer: Option<Arc<EndpointSigner>>,
    ) -> Result<(Self, Recovery), SpoolError> {
        let (dir, lock) = SpoolDir::open(root.as_ref(), config, "writer")?;
        let temp_files_removed = dir.clear_tmp()?;
        let mut empty_sessions_removed = 0;
        for s in dir.sessions()? {
            if dir.list(s)?.is_empty() && fs::remove_dir(dir.session_dir(s)).is_ok() {
                empty_sessions_removed += 1;
            }
        }
        if empty_sessions_removed > 0 {
            durable::sync_dir(&dir.sessions_dir())?;
        }
        let used = dir.scan_usage()?;
        let writer = SpoolWriter {
            shared: Arc::new(Shared {
                dir,
                _lock: lock,
                used: Mutex::new(used),
                active: Mutex::new(BTreeSet::new()),
                signer,
            }),
        };
        let open_sessions = writer.open_sessions()?;
        // Best effort: leftovers the spool cannot remove must not keep the recorder from
        // starting (and recording).
        journal::remove_all_but(&writer.shared.dir.root, &open_sessions);
        let recovery = Recovery {
            temp_files_removed,
            empty_sessions_removed,
            open_sessions,
        };
        tracing::info!(
            spool = %writer.shared.dir.root.display(),
            used_bytes = used,
            temp_files_removed,
            empty_sessions_removed,
            open_sessions = recovery.open_sessions.len(),
            "spool opened for writing"
        );
        Ok((writer, recovery))
    }

    /// The public key this writer signs with: what a version 2 header announces. `None`: this
    /// writer writes version 1 documents only.
    pub fn endpoint_key(&self) -> Option<jitrec_format::EndpointKey> {
        self.shared.signer.as_ref().map(|s| s.public())
    }

    /// The spool's root directory.
    pub fn root(&self) -> &Path {
        &self.shared.dir.root
    }

    /// Sessions that have a header but no close record.
    pub fn open_sessions(&self) -> Result<Vec<SessionId>, SpoolError> {
        let dir = &self.shared.dir;
        let mut out = Vec::new();
        for s in dir.sessions()? {
            let listed = dir.list(s)?;
            let names = SpoolDir::by_name(&listed);
            if names.contains_key(&EntryName::Header) && !names.contains_key(&EntryName::Close) {
                out.push(s);
            }
        }
        Ok(out)
    }

    /// Saves a small record the recorder keeps across its own restarts (durably, replacing the
    /// last one).
    pub fn save_state(&self, record: StateRecord, bytes: &[u8]) -> Result<(), SpoolError> {
        if bytes.len() > MAX_STATE_BYTES {
            return Err(SpoolError::Io {
                op: "save",
                path: record.path(&self.shared.dir.root),
                source: std::io::Error::other(format!(
                    "a state record of {} bytes (at most {MAX_STATE_BYTES})",
                    bytes.len()
                )),
            });
        }
        let dir = self.shared.dir.root.join(STATE_DIR);
        durable::create_private_dir_all(&dir).map_err(SpoolError::io("create", &dir))?;
        durable::write_file(
            &self.shared.dir.tmp_dir(),
            &record.path(&self.shared.dir.root),
            &[bytes],
        )
    }

    /// The record last saved, if any (a larger file than any record is refused unread).
    pub fn load_state(&self, record: StateRecord) -> Result<Option<Vec<u8>>, SpoolError> {
        use std::io::Read;
        let path = record.path(&self.shared.dir.root);
        if !journal::is_plain_file(&path) {
            return Ok(None);
        }
        let f = match File::open(&path) {
            Ok(f) => f,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
            Err(e) => return Err(SpoolError::io("open", &path)(e)),
        };
        let mut bytes = Vec::new();
        f.take(MAX_STATE_BYTES as u64 + 1)
            .read_to_end(&mut bytes)
            .map_err(SpoolError::io("read", &path))?;
        if bytes.len() > MAX_STATE_BYTES {
            tracing::warn!(path = %path.display(), "ignoring an oversized state record");
            return Ok(None);
        }
        Ok(Some(bytes))
    }

    /// Removes a saved record (no error if there is none).
    pub fn clear_state(&self, record: StateRecord) -> Result<(), SpoolError> {
        let path = record.path(&self.shared.dir.root);
        match fs::remove_file(&path) {
            Ok(()) => durable::sync_dir(&self.shared.dir.root.join(STATE_DIR)),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
            Err(e) => Err(SpoolError::io("remove", &path)(e)),
        }
    }

    /// Bytes the spool uses now (a fresh scan).
    pub fn usage(&self) -> Result<u64, SpoolError> {
        let used = self.shared.dir.scan_usage()?;
        *self
            .shared
            .used
            .lock()
            .unwrap_or_else(PoisonError::into_inner) = used;
        Ok(used)
    }

    /// Starts a session: creates its directory and commits its header durably.
    pub fn create_session(&self, header: &SessionHeader) -> Result<SessionWriter, SpoolError> {
        let s = header.session_id;
        let bytes = header.to_stored_bytes(self.shared.signer.as_deref())?;
        self.claim(s)?;
        let mut w = SessionWriter {
            shared: Arc::clone(&self.shared),
            header: header.clone(),
            head: Sha256Digest::of(&bytes),
            next_seq: 0,
            next_init: 0,
            inits: BTreeMap::new(),
            last: None,
            resumed: false,
            journal: None,
        };
        let dir = self.shared.dir.session_dir(s);
        match crate::durable::create_private_dir(&dir) {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {
                return Err(SpoolError::SessionExists(s));
            }
            Err(e) => {
                return Err(SpoolError::Io {
                    op: "create session directory",
                    path: dir,
                    source: e,
                });
            }
        }
        durable::sync_dir(&self.shared.dir.sessions_dir())?;
        // The journal is scratch: a session records without one (then a crash loses the
        // seconds since the last chunk, as before journals).
        w.journal = match Journal::create(&self.shared.dir.root, s) {
            Ok(j) => Some(Arc::new(j)),
            Err(e) => {
                tracing::error!(session = %s, error = %e, "cannot create the session's events journal; recording without it (a crash would lose the events since the last chunk)");
                None
            }
        };
        w.commit(
            EntryName::Header,
            Kind::Header,
            &[&bytes],
            CONTROL_RESERVE_BYTES,
        )?;
        Ok(w)
    }

    /// Reopens a session a previous run left open, so it can be closed with the chain head and
    /// sequence number the spool still holds. A resumed session is only folded and closed: what
    /// its journal kept ([`SessionWriter::journalled`]) may be committed as a last chunk, and
    /// then the close record; a recorder
    /// that died must not continue a session as if nothing had happened.
    ///
    /// If the newest chunk is unreadable (quarantined), the head is the newest readable chunk and
    /// the close record will not link to the missing one: the player then reports the session's
    /// tail as broken, which is the truth.
    pub fn resume_session(&self, s: SessionId) -> Result<SessionWriter, SpoolError> {
        let dir = &self.shared.dir;
        let listed = dir.list(s)?;
        if listed.is_empty() {
            return Err(SpoolError::UnknownSession(s));
        }
        let names = SpoolDir::by_name(&listed);
        if names.contains_key(&EntryName::Close) {
            return Err(SpoolError::InvalidCommit {
                session: s,
                reason: "session is already closed".into(),
            });
        }
        self.claim(s)?;
        let (header, header_bytes) = match self.read_any_state(EntryRef {
            session: s,
            name: EntryName::Header,
        }) {
            Ok(Entry::Header { header, bytes }) => (header, bytes),
            Ok(_) | Err(SpoolError::NotFound(_)) | Err(SpoolError::Quarantined { .. }) => {
                self.release(s);
                return Err(SpoolError::NoHeader(s));
            }
            Err(e) => {
                self.release(s);
                return Err(e);
            }
        };
        let mut chunks: Vec<u64> = listed
            .iter()
            .filter_map(|l| match l.name {
                EntryName::Chunk(n) => Some(n),
                _ => None,
            })
            .collect();
        chunks.sort_unstable();
        chunks.dedup();
        let quarantined = dir.quarantined_chunks(s)?;
        let next_seq = chunks
            .iter()
            .chain(quarantined.iter())
            .max()
            .map_or(0, |n| n + 1);
        let mut head = Sha256Digest::of(&header_bytes);
        let mut last = None;
        for &n in chunks.iter().rev() {
            match self.read_any_state(EntryRef {
                session: s,
                name: EntryName::Chunk(n),
            }) {
                Ok(Entry::Chunk {
                    manifest_bytes,
                    manifest,
                    ..
                }) => {
                    head = Sha256Digest::of(&manifest_bytes);
                    last = Some(manifest);
                    break;
                }
                Ok(_) | Err(SpoolError::NotFound(_)) | Err(SpoolError::Quarantined { .. }) => {
                    continue;
                }
                Err(e) => {
                    self.release(s);
                    return Err(e);
                }
            }
        }
        if last.as_ref().map_or(0, |m| m.seq + 1) != next_seq {
            tracing::error!(
                session = %s,
                next_seq,
                "the newest chunks of an interrupted session are unreadable; its close record cannot link to them"
            );
        }
        // Init numbers already used: those still here, the last chunk's, and what the
        // journal says (uploaded ones are gone from the spool); a new one must not reuse them.
        let journal_init = match journal::read(&dir.root, s, next_seq) {
            Ok(j) => j.max_init,
            Err(e) => {
                tracing::warn!(session = %s, error = %e, "cannot read the session's journal for its init numbers");
                None
            }
        };
        let known = listed
            .iter()
            .filter_map(|l| match l.name {
                EntryName::Init(n) => Some(n),
                _ => None,
            })
            .chain(last.as_ref().map(|m: &ChunkManifest| m.init.id))
            .max();
        let mut next_init = known.map_or(0, |n| n.saturating_add(1));
        // Only the init segment right after the known ones can be gone from the spool (each is
        // followed by its chunk; one committed and uploaded just before a crash is not): the
        // journal is believed about that one, and nothing else it says about numbers.
        if journal_init == Some(next_init) {
            next_init = next_init.saturating_add(1);
        }
        Ok(SessionWriter {
            shared: Arc::clone(&self.shared),
            header,
            head,
            next_seq,
            next_init,
            inits: BTreeMap::new(),
            last,
            resumed: true,
            journal: None,
        })
    }

    fn read_any_state(&self, e: EntryRef) -> Result<Entry, SpoolError> {
        let dir = &self.shared.dir;
        // The uploader may rename pending -> sent between our listing and our read; a rename is
        // atomic, so if the pending name is gone the sent one exists (unless it was deleted).
        match dir.read(&e, &dir.entry_path(&e, State::Pending)) {
            Err(SpoolError::NotFound(_)) => dir.read(&e, &dir.entry_path(&e, State::Sent)),
            other => other,
        }
    }

    fn claim(&self, s: SessionId) -> Result<(), SpoolError> {
        let mut active = self
            .shared
            .active
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        if !active.insert(s) {
            return Err(SpoolError::InvalidCommit {
                session: s,
                reason: "another SessionWriter of this process holds the session".into(),
            });
        }
        Ok(())
    }

    fn release(&self, s: SessionId) {
        self.shared.release(s);
    }
}

impl Shared {
    fn release(&self, s: SessionId) {
        self.active
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .remove(&s);
    }
}

/// Where the recorder's state records live: `<root>/state/`.
const STATE_DIR: &str = "state";

/// A state record is a few hundred bytes; this bounds what a damaged one can cost to read.
const MAX_STATE_BYTES: usize = 64 * 1024;

/// Small records the recorder keeps across its own restarts, beside the sessions (never
/// uploaded).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StateRecord {
    /// The JIT a controller started over the control socket and has not stopped, so a
    /// restarted recorder records again at once.
    Jit,
    /// What the service manager said about the last run's end (`jitrec-recorder note-exit`).
    Exit,
}

impl StateRecord {
    fn path(self, root: &Path) -> std::path::PathBuf {
        root.join(STATE_DIR).join(match self {
            StateRecord::Jit => "jit.json",
            StateRecord::Exit => "exit.json",
        })
    }
}

/// Writes one session. Obtained from [`SpoolWriter::create_session`] or
/// [`SpoolWriter::resume_session`].
#[derive(Debug)]
pub struct SessionWriter {
    shared: Arc<Shared>,
    header: SessionHeader,
    /// SHA-256 of the last committed document: the `prev` of the next one.
    head: Sha256Digest,
    next_seq: u64,
    next_init: u64,
    inits: BTreeMap<u64, Sha256Digest>,
    last: Option<ChunkManifest>,
    resumed: bool,
    /// The events journal of a session this run records (`None` once resumed: a dead
    /// recorder's journal is only read, by [`SessionWriter::journalled`]).
    journal: Option<Arc<Journal>>,
}

impl SessionWriter {
    pub fn session_id(&self) -> SessionId {
        self.header.session_id
    }

    pub fn header(&self) -> &SessionHeader {
        &self.header
    }

    /// What the next manifest's (or the close record's) `prev` must be.
    pub fn head(&self) -> Sha256Digest {
        self.head
    }

    /// The sequence number the next chunk must have (the chunk count so far).
    pub fn next_seq(&self) -> u64 {
        self.next_seq
    }

    /// The id the next init segment must have.
    pub fn next_init(&self) -> u64 {
        self.next_init
    }

    /// The last committed chunk's manifest, if any.
    pub fn last_chunk(&self) -> Option<&ChunkManifest> {
        self.last.as_ref()
    }

    /// Whether this writer was reopened after a crash (and may only close).
    pub fn is_resumed(&self) -> bool {
        self.resumed
    }

    /// The events journal of a session this run records (`None` for a resumed one).
    pub fn journal(&self) -> Option<Arc<Journal>> {
        self.journal.clone()
    }

    /// What the journal holds that no committed chunk does: for a resumed session, the events
    /// its dead recorder saw after its last chunk.
    pub fn journalled(&self) -> Result<Journalled, SpoolError> {
        journal::read(&self.shared.dir.root, self.session_id(), self.next_seq)
    }

    fn refuse(&self, reason: String) -> SpoolError {
        SpoolError::InvalidCommit {
            session: self.session_id(),
            reason,
        }
    }

    /// Commits init segment `id` (which must be [`Self::next_init`]).
    pub fn commit_init(&mut self, id: u64, bytes: &[u8]) -> Result<(), SpoolError> {
        if id != self.next_init {
            return Err(self.refuse(format!("init segment {id}, expected {}", self.next_init)));
        }
        if bytes.is_empty() {
            return Err(self.refuse("init segment is empty".into()));
        }
        // Init segments leave the spool once uploaded; the journal remembers which numbers
        // are taken, for a recorder that resumes this session after a crash.
        if let Some(j) = &self.journal
            && let Err(e) = j.mark_init(id)
        {
            tracing::warn!(session = %self.session_id(), error = %e, "could not note an init segment in the journal");
        }
        self.commit(EntryName::Init(id), Kind::Init, &[bytes], 0)?;
        self.inits.insert(id, Sha256Digest::of(bytes));
        self.next_init = self.next_init.saturating_add(1);
        Ok(())
    }

    /// Commits a chunk and returns the SHA-256 of its stored manifest (the new chain head).
    pub fn commit_chunk(
        &mut self,
        manifest: &ChunkManifest,
        video: &[u8],
        events: &[u8],
    ) -> Result<Sha256Digest, SpoolError> {
        if manifest.session_id != self.session_id() {
            return Err(self.refuse(format!(
                "manifest belongs to session {}",
                manifest.session_id
            )));
        }
        if manifest.version != self.header.version {
            return Err(self.refuse(format!(
                "manifest is format version {}, the session {}",
                manifest.version, self.header.version
            )));
        }
        if manifest.seq != self.next_seq {
            return Err(self.refuse(format!(
                "chunk {}, expected {}",
                manifest.seq, self.next_seq
            )));
        }
        if manifest.prev != self.head {
            return Err(self.refuse(format!(
                "chunk {}: prev {} is not the chain head {}",
                manifest.seq, manifest.prev, self.head
            )));
        }
        match self.inits.get(&manifest.init.id) {
            Some(d) if *d == manifest.init.sha256 => {}
            Some(_) => {
                return Err(self.refuse(format!(
                    "chunk {}: init segment {} hash differs from the committed one",
                    manifest.seq, manifest.init.id
                )));
            }
            None => {
                return Err(self.refuse(format!(
                    "chunk {}: init segment {} was never committed",
                    manifest.seq, manifest.init.id
                )));
            }
        }
        if let Some(last) = &self.last
            && manifest.media_start_us < last.media_end_us
        {
            return Err(self.refuse(format!(
                "chunk {} starts at {}, before chunk {} ends at {}",
                manifest.seq, manifest.media_start_us, last.seq, last.media_end_us
            )));
        }
        manifest
            .verify_video(video)
            .and_then(|()| manifest.verify_events(events))
            .map_err(|e| self.refuse(format!("chunk {}: {e}", manifest.seq)))?;
        let manifest_bytes = manifest.to_stored_bytes(self.shared.signer.as_deref())?;
        self.commit(
            EntryName::Chunk(manifest.seq),
            Kind::Chunk,
            &[&manifest_bytes, video, events],
            0,
        )?;
        self.head = Sha256Digest::of(&manifest_bytes);
        self.next_seq += 1;
        self.last = Some(manifest.clone());
        Ok(self.head)
    }

    /// Commits the close record, ending the session. Close records may use a small reserve beyond
    /// the size bound, so even a full spool can say where a session ended.
    pub fn close(mut self, close: &SessionClose) -> Result<(), SpoolError> {
        if close.session_id != self.session_id() {
            return Err(self.refuse(format!(
                "close record belongs to session {}",
                close.session_id
            )));
        }
        if close.version != self.header.version {
            return Err(self.refuse(format!(
                "close record is format version {}, the session {}",
                close.version, self.header.version
            )));
        }
        if close.chunk_count != self.next_seq {
            return Err(self.refuse(format!(
                "close record counts {} chunks, the session has {}",
                close.chunk_count, self.next_seq
            )));
        }
        if close.prev != self.head {
            return Err(self.refuse(format!(
                "close record prev {} is not the chain head {}",
                close.prev, self.head
            )));
        }
        let bytes = close.to_stored_bytes(self.shared.signer.as_deref())?;
        self.commit(
            EntryName::Close,
            Kind::Close,
            &[&bytes],
            CONTROL_RESERVE_BYTES,
        )?;
        // Every event the session kept is in a committed chunk now; the journal was scratch.
        self.journal = None;
        if let Err(e) = journal::remove(&self.shared.dir.root, self.session_id()) {
            tracing::warn!(session = %self.session_id(), error = %e, "could not remove a closed session's journal");
        }
        Ok(())
    }

    /// Frames `parts` and writes them durably under the session, within the size bound (plus
    /// `headroom` for control records).
    fn commit(
        &mut self,
        name: EntryName,
        kind: Kind,
        parts: &[&[u8]],
        headroom: u64,
    ) -> Result<(), SpoolError> {
        let shared = &self.shared;
        let dir = &shared.dir;
        let lens: Vec<usize> = parts.iter().map(|p| p.len()).collect();
        let needed = container::framed_len(&lens);
        let limit = dir.config.max_bytes;
        let mut used = shared.used.lock().unwrap_or_else(PoisonError::into_inner);
        if *used + needed > limit + headroom {
            *used = dir.scan_usage()?;
            if *used + needed > limit + headroom {
                return Err(SpoolError::Full {
                    used: *used,
                    needed,
                    limit,
                });
            }
        }
        let prefix = container::prefix(kind, parts);
        let trailer = container::trailer(&prefix, parts);
        let mut all: Vec<&[u8]> = Vec::with_capacity(parts.len() + 2);
        all.push(&prefix);
        all.extend_from_slice(parts);
        all.push(&trailer);
        let entry = EntryRef {
            session: self.header.session_id,
            name,
        };
        durable::write_file(
            &dir.tmp_dir(),
            &dir.entry_path(&entry, State::Pending),
            &all,
        )?;
        *used += needed;
        Ok(())
    }
}

impl Drop for SessionWriter {
    fn drop(&mut self) {
        self.shared.release(self.header.session_id);
    }
}
