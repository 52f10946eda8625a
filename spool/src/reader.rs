//! The uploader's side of the spool: list what waits for upload, read it verified, and
//! acknowledge it once the bucket has confirmed it.
//!
//! Acknowledging is the only way anything leaves the spool. An acknowledged chunk is deleted,
//! except the newest chunk of a session that is still open: that one is kept (renamed to
//! `.sent`) because it is the chain head a restarted recorder needs to close the session. The
//! session header is likewise kept until the close record is acknowledged, which removes the
//! whole session directory.

use std::fs::{self, File};
use std::path::Path;
use std::time::SystemTime;

use jitrec_format::{SessionId, SessionKey};

use crate::dir::SpoolDir;
use crate::durable;
use crate::names::{EntryName, EntryRef, State};
use crate::{Entry, SpoolConfig, SpoolError};

/// The uploader's handle on a spool. Holds the reader lock: one uploader per spool.
#[derive(Debug)]
pub struct SpoolReader {
    dir: SpoolDir,
    /// Held for the life of the reader; dropping it releases the `reader.lock` flock.
    _lock: File,
}

/// What waits for upload.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Backlog {
    /// Sessions with at least one pending entry.
    pub sessions: usize,
    /// Pending entries.
    pub entries: usize,
    /// Bytes of pending entries.
    pub bytes: u64,
    /// Commit time of the oldest pending entry.
    pub oldest: Option<SystemTime>,
    /// Entries set aside as corrupt.
    pub quarantined: usize,
    /// Bytes the whole spool occupies (pending, retained, quarantined, temp).
    pub used_bytes: u64,
}

impl SpoolReader {
    /// Opens (creating if needed) the spool at `root` as its reader.
    pub fn open(root: impl AsRef<Path>, config: SpoolConfig) -> Result<Self, SpoolError> {
        let (dir, lock) = SpoolDir::open(root.as_ref(), config, "reader")?;
        Ok(SpoolReader { dir, _lock: lock })
    }

    /// The spool's root directory.
    pub fn root(&self) -> &Path {
        &self.dir.root
    }

    /// Sessions present in the spool, oldest first.
    pub fn sessions(&self) -> Result<Vec<SessionId>, SpoolError> {
        self.dir.sessions()
    }

    /// Entries of `session` waiting for upload, in upload order (header, init segments, chunks,
    /// close record). A listing is a snapshot: an entry committed while it was taken may be
    /// missing from it and appear in the next.
    pub fn pending(&self, session: SessionId) -> Result<Vec<EntryRef>, SpoolError> {
        let mut out: Vec<EntryRef> = self
            .dir
            .list(session)?
            .into_iter()
            .filter(|l| l.state == State::Pending)
            .map(|l| EntryRef {
                session,
                name: l.name,
            })
            .collect();
        out.dedup();
        Ok(out)
    }

    /// Reads a pending entry, verifying framing, trailer, document and payload hashes. A corrupt
    /// entry is quarantined and reported as [`SpoolError::Quarantined`]; the caller goes on with
    /// the next one.
    pub fn read(&self, entry: &EntryRef) -> Result<Entry, SpoolError> {
        self.dir
            .read(entry, &self.dir.entry_path(entry, State::Pending))
    }

    /// Where the session's objects go in the bucket (its header says: layout v1, or its
    /// machine's prefix for a version 2 session). The header stays in the spool, pending or
    /// sent, until the whole session is acknowledged, so this answers for every entry still to
    /// upload.
    pub fn session_key(&self, session: SessionId) -> Result<SessionKey, SpoolError> {
        let e = EntryRef {
            session,
            name: EntryName::Header,
        };
        let read = match self.dir.read(&e, &self.dir.entry_path(&e, State::Pending)) {
            Err(SpoolError::NotFound(_)) => {
                self.dir.read(&e, &self.dir.entry_path(&e, State::Sent))
            }
            other => other,
        };
        match read? {
            Entry::Header { header, .. } => Ok(header.session_key()),
            _ => Err(SpoolError::NoHeader(session)),
        }
    }

    /// Records that the bucket confirmed `entry`. Idempotent: acknowledging an entry that is
    /// already gone succeeds. Refuses to acknowledge a close record while other entries of its
    /// session are pending (the close record must be the last object uploaded).
    pub fn ack(&self, entry: &EntryRef) -> Result<(), SpoolError> {
        let dir = &self.dir;
        let s = entry.session;
        let pending = dir.entry_path(entry, State::Pending);
        match entry.name {
            EntryName::Header => {
                rename_if_present(&pending, &dir.entry_path(entry, State::Sent))?;
            }
            EntryName::Init(_) => {
                durable::remove_file(&pending)?;
            }
            EntryName::Chunk(n) => {
                let listed = dir.list(s)?;
                let highest = SpoolDir::highest_chunk(&listed);
                let closed = listed.iter().any(|l| l.name == EntryName::Close);
                if highest == Some(n) && !closed {
                    rename_if_present(&pending, &dir.entry_path(entry, State::Sent))?;
                } else {
                    durable::remove_file(&pending)?;
                }
                // Older retained heads are nobody's chain head any more.
                for l in &listed {
                    if let EntryName::Chunk(m) = l.name
                        && l.state == State::Sent
                        && Some(m) < highest
                        && m != n
                    {
                        durable::remove_file(&l.path)?;
                    }
                }
            }
            EntryName::Close => return self.ack_close(s),
        }
        match durable::sync_dir(&dir.session_dir(s)) {
            // The whole session was acknowledged and removed already: nothing left to make durable.
            Err(SpoolError::Io { source, .. }) if source.kind() == std::io::ErrorKind::NotFound => {
                Ok(())
            }
            other => other,
        }
    }

    fn ack_close(&self, s: SessionId) -> Result<(), SpoolError> {
        let dir = &self.dir;
        let listed = dir.list(s)?;
        if listed.is_empty() {
            // Acknowledged before: the session directory is gone.
            return Ok(());
        }
        let pending = listed
            .iter()
            .filter(|l| l.state == State::Pending && l.name != EntryName::Close)
            .count();
        if pending > 0 {
            return Err(SpoolError::AckOrder {
                session: s,
                pending,
            });
        }
        // The close record goes last: if we crash half-way, the session still reads as closed
        // (with its close record pending, re-uploaded idempotently) and never as open, which
        // would make a restarted recorder close it a second time as "interrupted".
        for l in listed.iter().filter(|l| l.name != EntryName::Close) {
            durable::remove_file(&l.path)?;
        }
        let sdir = dir.session_dir(s);
        durable::sync_dir(&sdir)?;
        for l in listed.iter().filter(|l| l.name == EntryName::Close) {
            durable::remove_file(&l.path)?;
        }
        match fs::remove_dir(&sdir) {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => tracing::warn!(
                path = %sdir.display(),
                error = %e,
                "session fully uploaded but its directory could not be removed"
            ),
        }
        durable::sync_dir(&dir.sessions_dir())
    }

    /// What waits for upload, for status output and metrics.
    pub fn backlog(&self) -> Result<Backlog, SpoolError> {
        backlog(&self.dir)
    }

    /// When `entry` was committed (its file's modification time): the start of its upload
    /// latency.
    pub fn committed_at(&self, entry: &EntryRef) -> Result<SystemTime, SpoolError> {
        let path = self.dir.entry_path(entry, State::Pending);
        fs::metadata(&path)
            .and_then(|m| m.modified())
            .map_err(|e| match e.kind() {
                std::io::ErrorKind::NotFound => SpoolError::NotFound(*entry),
                _ => SpoolError::Io {
                    op: "stat",
                    path,
                    source: e,
                },
            })
    }
}

/// A read-only view of a spool that takes no lock, for status tools that run beside the
/// recorder and the uploader. It never creates, moves or deletes anything.
#[derive(Debug)]
pub struct SpoolInspector {
    dir: SpoolDir,
}

impl SpoolInspector {
    /// Opens an existing spool; fails if `root` is not one.
    pub fn open(root: impl AsRef<Path>) -> Result<Self, SpoolError> {
        Ok(Self {
            dir: SpoolDir::open_existing(root.as_ref())?,
        })
    }

    /// What waits for upload.
    pub fn backlog(&self) -> Result<Backlog, SpoolError> {
        backlog(&self.dir)
    }
}

fn backlog(dir: &SpoolDir) -> Result<Backlog, SpoolError> {
    let mut b = Backlog::default();
    for s in dir.sessions()? {
        let mut any = false;
        for l in dir.list(s)? {
            if l.state != State::Pending {
                continue;
            }
            let Ok(meta) = fs::metadata(&l.path) else {
                continue;
            };
            any = true;
            b.entries += 1;
            b.bytes += meta.len();
            if let Ok(m) = meta.modified() {
                b.oldest = Some(b.oldest.map_or(m, |o| o.min(m)));
            }
        }
        b.sessions += usize::from(any);
    }
    b.quarantined = dir.quarantine_count()?;
    b.used_bytes = dir.scan_usage()?;
    Ok(b)
}

fn rename_if_present(from: &Path, to: &Path) -> Result<(), SpoolError> {
    match fs::rename(from, to) {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(SpoolError::Io {
            op: "rename",
            path: from.to_owned(),
            source: e,
        }),
    }
}
