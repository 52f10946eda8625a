//! The events journal: a session's events on disk moments after they were seen, long before the
//! chunk that will hold them is cut.
//!
//! A chunk is committed every few seconds. Without the journal, an administrator who kills the
//! recorder takes the events of those last seconds with it, including the command that did it.
//! So every event is appended to `<root>/journal/<session-id>.jsonl` as it arrives, with one
//! `write(2)` (in the kernel's page cache at once, which a killed process cannot take back) and
//! an `fdatasync` at most [`SYNC_EVERY`] later (against power loss). Before a chunk is committed,
//! a marker line names the events it holds; a recorder that finds the session open at its next
//! start folds what the journal has beyond the committed chunks into the interrupted session
//! (`SessionWriter::journalled`), and the uploader ships it as any chunk.
//!
//! The journal is the recorder's scratch, not evidence by itself: it is unsigned until folded,
//! never uploaded as such, removed when the session's close record is committed, and kept out of
//! the session directories the uploader reads. Lines are JSON, one per record:
//!
//! ```text
//! {"id":7,"event":{...}}               an event, ids counting from 0 in the session
//! {"chunk":3,"ids":[[0,6],[9,9]]}      chunk 3 is about to be committed with these ids
//! {"init":1}                          init segment 1 is about to be committed
//! ```
//!
//! The init line exists because init segments leave the spool once uploaded: without it a
//! restarted recorder could not know which init numbers are taken in the bucket.
//!
//! A marker is written (and synced) *before* its chunk's commit, so each crash leaves a journal
//! that says the truth: a marker whose chunk never became durable is ignored (its chunk number is
//! not below the session's chunk count), and an event appears in at most one committed chunk.
//! A torn last line (a crash mid-write) is skipped and counted.

use std::collections::BTreeSet;
use std::fs::{self, File, OpenOptions};
use std::io::{self, BufRead, BufReader, Read as _, Write};
use std::path::{Path, PathBuf};
use std::sync::{Mutex, PoisonError};
use std::time::{Duration, Instant};

use jitrec_format::{Event, SessionId};
use serde::{Deserialize, Serialize};

use crate::SpoolError;

/// Where journals live, beside (not in) the session directories.
pub(crate) const JOURNAL_DIR: &str = "journal";

/// How long an appended event may stay in the page cache before it is synced to the disk. The
/// window against a killed process is the time to one `write(2)`; this one is against power
/// loss.
pub const SYNC_EVERY: Duration = Duration::from_millis(250);

/// Past this size, the journal is rewritten after a chunk commit with only what no committed
/// chunk holds, so a long session's journal stays small.
const COMPACT_AFTER: u64 = 4 * 1024 * 1024;

/// A longer line is not read back (a journal line is one event, and events are bounded far
/// below this).
const MAX_LINE: usize = 1024 * 1024;

/// At most this much of a journal is read back. A journal is compacted at [`COMPACT_AFTER`], so
/// one the recorder wrote stays far below; a larger one was grown by someone else, and reading
/// it all could keep a restarted recorder from ever starting.
pub const MAX_READ: u64 = 32 * 1024 * 1024;

#[derive(Serialize, Deserialize)]
#[serde(untagged)]
enum Line {
    Event { id: u64, event: Event },
    Chunk { chunk: u64, ids: Vec<(u64, u64)> },
    Init { init: u64 },
}

/// An open session's journal. Shared by every thread that sees events (`&self` methods).
#[derive(Debug)]
pub struct Journal {
    path: PathBuf,
    inner: Mutex<Inner>,
}

#[derive(Debug)]
struct Inner {
    file: File,
    /// The same file, for syncing without holding the lock (appends must never wait for a
    /// sync: an event that waits is one a kill can still take).
    sync_file: std::sync::Arc<File>,
    next_id: u64,
    /// Bytes written since the file was created or compacted.
    len: u64,
    /// Appended since the last sync.
    dirty: bool,
    synced: Instant,
    /// Events appended and not yet in a committed chunk, in id order (kept to compact).
    pending: Vec<(u64, Event)>,
    /// The last marker written, until its chunk is committed.
    marked: Option<(u64, BTreeSet<u64>)>,
    /// The highest init segment marked (kept through compaction).
    max_init: Option<u64>,
    /// A write failed part-way (a full disk): the next line starts on a line of its own.
    torn: bool,
}

/// What a journal holds beyond a session's committed chunks.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Journalled {
    /// Events that no committed chunk holds, in the order they were journalled.
    pub events: Vec<Event>,
    /// Lines that could not be read (a torn last line after a crash, or damage).
    pub unreadable: u64,
    /// The highest init segment number the session used (or was about to).
    pub max_init: Option<u64>,
    /// The journal was longer than [`MAX_READ`]; only its start was read.
    pub truncated: bool,
}

fn io_err<'a>(op: &'static str, path: &'a Path) -> impl FnOnce(io::Error) -> SpoolError + 'a {
    move |source| SpoolError::Io {
        op,
        path: path.to_owned(),
        source,
    }
}

pub(crate) fn path(root: &Path, s: SessionId) -> PathBuf {
    root.join(JOURNAL_DIR).join(format!("{s}.jsonl"))
}

impl Journal {
    /// Opens (creating) the journal of a new session.
    pub(crate) fn create(root: &Path, s: SessionId) -> Result<Self, SpoolError> {
        let dir = root.join(JOURNAL_DIR);
        crate::durable::create_private_dir_all(&dir).map_err(io_err("create", &dir))?;
        let path = path(root, s);
        let file = open_append(&path, true)?;
        let sync_file = std::sync::Arc::new(file.try_clone().map_err(io_err("open", &path))?);
        crate::durable::sync_dir(&dir)?;
        Ok(Self {
            path,
            inner: Mutex::new(Inner {
                file,
                sync_file,
                next_id: 0,
                len: 0,
                dirty: false,
                synced: Instant::now(),
                pending: Vec::new(),
                marked: None,
                max_init: None,
                torn: false,
            }),
        })
    }

    /// Appends `event` and returns its id. One `write(2)`: once this returns, a kill of the
    /// process no longer loses it.
    pub fn append(&self, event: &Event) -> Result<u64, SpoolError> {
        let mut inner = self.inner.lock().unwrap_or_else(PoisonError::into_inner);
        let id = inner.next_id;
        let line = serialize(&Line::Event {
            id,
            event: event.clone(),
        })?;
        inner.write_line(line, &self.path)?;
        inner.next_id += 1;
        inner.dirty = true;
        inner.pending.push((id, event.clone()));
        Ok(id)
    }

    /// When [`Journal::sync`] should next be called to keep the [`SYNC_EVERY`] promise: `None`
    /// while everything appended is synced.
    pub fn sync_due(&self) -> Option<Instant> {
        let inner = self.inner.lock().unwrap_or_else(PoisonError::into_inner);
        inner.dirty.then(|| inner.synced + SYNC_EVERY)
    }

    /// Syncs appended events to the disk if the last sync is [`SYNC_EVERY`] old (or `force`).
    pub fn sync(&self, force: bool) -> Result<(), SpoolError> {
        let file = {
            let mut inner = self.inner.lock().unwrap_or_else(PoisonError::into_inner);
            if !(inner.dirty && (force || inner.synced.elapsed() >= SYNC_EVERY)) {
                return Ok(());
            }
            inner.dirty = false;
            inner.synced = Instant::now();
            std::sync::Arc::clone(&inner.sync_file)
        };
        file.sync_data().map_err(io_err("sync", &self.path))
    }

    /// Says, durably, that chunk `seq` is about to be committed holding the events `ids`. Call
    /// it before the commit: a marker whose commit failed is ignored when the journal is read.
    pub fn mark_chunk(&self, seq: u64, ids: &[u64]) -> Result<(), SpoolError> {
        let line = Line::Chunk {
            chunk: seq,
            ids: ranges(ids),
        };
        self.mark(&line, |inner| {
            // The sync below covers every event appended before the marker too.
            inner.dirty = false;
            inner.synced = Instant::now();
            inner.marked = Some((seq, ids.iter().copied().collect()));
        })
    }

    /// Says chunk `seq`, marked by [`Journal::mark_chunk`], is committed: its events need not be
    /// kept any more, and a journal grown past its bound is compacted.
    pub fn chunk_committed(&self, seq: u64) -> Result<(), SpoolError> {
        let mut inner = self.inner.lock().unwrap_or_else(PoisonError::into_inner);
        if let Some((marked, ids)) = inner.marked.take() {
            if marked == seq {
                inner.pending.retain(|(id, _)| !ids.contains(id));
            } else {
                inner.marked = Some((marked, ids));
            }
        }
        if inner.len > COMPACT_AFTER {
            self.compact(&mut inner)?;
        }
        Ok(())
    }

    /// Says, durably, that init segment `id` is about to be committed.
    pub(crate) fn mark_init(&self, id: u64) -> Result<(), SpoolError> {
        self.mark(&Line::Init { init: id }, |inner| {
            inner.max_init = Some(inner.max_init.map_or(id, |m| m.max(id)));
        })
    }

    /// Appends a marker line, notes it in `inner` with `noted`, and syncs it (outside the lock,
    /// so appends do not wait for the disk).
    fn mark(&self, line: &Line, noted: impl FnOnce(&mut Inner)) -> Result<(), SpoolError> {
        let line = serialize(line)?;
        let file = {
            let mut inner = self.inner.lock().unwrap_or_else(PoisonError::into_inner);
            inner.write_line(line, &self.path)?;
            noted(&mut inner);
            std::sync::Arc::clone(&inner.sync_file)
        };
        file.sync_data().map_err(io_err("sync", &self.path))
    }

    /// Rewrites the journal with only the events no committed chunk holds (so never between a
    /// marker and its commit: a commit that then failed would have lost them).
    fn compact(&self, inner: &mut Inner) -> Result<(), SpoolError> {
        let tmp = self.path.with_extension("jsonl.tmp");
        let mut bytes = Vec::new();
        if let Some(init) = inner.max_init {
            bytes.extend(serialize(&Line::Init { init })?);
        }
        for (id, event) in &inner.pending {
            bytes.extend(serialize(&Line::Event {
                id: *id,
                event: event.clone(),
            })?);
        }
        let mut f = open_append(&tmp, true)?;
        f.set_len(0).map_err(io_err("truncate", &tmp))?;
        f.write_all(&bytes).map_err(io_err("write", &tmp))?;
        f.sync_all().map_err(io_err("sync", &tmp))?;
        let sync_file = std::sync::Arc::new(f.try_clone().map_err(io_err("open", &tmp))?);
        // The appender moves to the new file before the rename: Windows cannot replace a file
        // that is open, and the handle follows the file to its new name.
        let old = std::mem::replace(&mut inner.file, f);
        let old_sync = std::mem::replace(&mut inner.sync_file, sync_file);
        drop((old, old_sync));
        if let Err(e) = fs::rename(&tmp, &self.path) {
            // Keep appending to the journal's own name, uncompacted.
            inner.file = open_append(&self.path, false)?;
            inner.sync_file =
                std::sync::Arc::new(inner.file.try_clone().map_err(io_err("open", &self.path))?);
            let _ = fs::remove_file(&tmp);
            return Err(io_err("rename", &tmp)(e));
        }
        if let Some(dir) = self.path.parent() {
            crate::durable::sync_dir(dir)?;
        }
        inner.len = bytes.len() as u64;
        inner.torn = false;
        Ok(())
    }
}

impl Inner {
    /// Appends one line in one `write(2)`. After a write that failed part-way (a full disk) the
    /// next line, an event's or a marker's, starts with a newline, so the torn line cannot
    /// swallow it.
    fn write_line(&mut self, mut line: Vec<u8>, path: &Path) -> Result<(), SpoolError> {
        if self.torn {
            line.insert(0, b'\n');
        }
        if let Err(e) = self.file.write_all(&line) {
            self.torn = true;
            return Err(io_err("append to", path)(e));
        }
        self.torn = false;
        self.len += line.len() as u64;
        Ok(())
    }
}

fn serialize(line: &Line) -> Result<Vec<u8>, SpoolError> {
    let mut v = serde_json::to_vec(line).map_err(|e| SpoolError::Io {
        op: "encode a journal line",
        path: PathBuf::new(),
        source: io::Error::other(e),
    })?;
    v.push(b'\n');
    Ok(v)
}

fn open_append(path: &Path, create: bool) -> Result<File, SpoolError> {
    let mut o = OpenOptions::new();
    o.append(true).create(create);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt;
        o.mode(0o600);
    }
    o.open(path).map_err(io_err("open", path))
}

/// `ids` (ascending or not) as inclusive ranges.
fn ranges(ids: &[u64]) -> Vec<(u64, u64)> {
    let mut sorted = ids.to_vec();
    sorted.sort_unstable();
    sorted.dedup();
    let mut out: Vec<(u64, u64)> = Vec::new();
    for id in sorted {
        match out.last_mut() {
            Some((_, end)) if *end + 1 == id => *end = id,
            _ => out.push((id, id)),
        }
    }
    out
}

/// Reads the journal of session `s`: the events that no chunk below `chunk_count` holds.
pub(crate) fn read(root: &Path, s: SessionId, chunk_count: u64) -> Result<Journalled, SpoolError> {
    let path = path(root, s);
    if !is_plain_file(&path) {
        return Ok(Journalled::default());
    }
    let file = match File::open(&path) {
        Ok(f) => f,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(Journalled::default()),
        Err(e) => return Err(io_err("open", &path)(e)),
    };
    let mut events = Vec::new();
    // Per chunk, its last marker: a commit refused (a full spool) is tried again under the
    // same number, and the marker of the try that succeeded is the one that counts.
    let mut markers: std::collections::BTreeMap<u64, Vec<(u64, u64)>> = Default::default();
    let mut unreadable = 0;
    let mut max_init: Option<u64> = None;
    let truncated = file.metadata().map_err(io_err("stat", &path))?.len() > MAX_READ;
    let mut reader = BufReader::new(file.take(MAX_READ));
    let mut line = Vec::new();
    loop {
        line.clear();
        let n = (&mut reader)
            .take(MAX_LINE as u64 + 1)
            .read_until(b'\n', &mut line)
            .map_err(io_err("read", &path))?;
        if n == 0 {
            break;
        }
        if n > MAX_LINE || line.last() != Some(&b'\n') {
            unreadable += 1;
            if n > MAX_LINE {
                // Skip the rest of an overlong line.
                let mut rest = Vec::new();
                reader
                    .read_until(b'\n', &mut rest)
                    .map_err(io_err("read", &path))?;
            }
            continue;
        }
        match serde_json::from_slice::<Line>(&line) {
            Ok(Line::Event { id, event }) => events.push((id, event)),
            Ok(Line::Chunk { chunk, ids }) if chunk < chunk_count => {
                markers.insert(chunk, ids);
            }
            Ok(Line::Chunk { .. }) => {}
            Ok(Line::Init { init }) => max_init = Some(max_init.map_or(init, |m| m.max(init))),
            Err(_) => unreadable += 1,
        }
    }
    // Merged and sorted, so each event is one binary search (a crafted journal of many markers
    // and events stays n log n).
    let mut committed: Vec<(u64, u64)> = markers.into_values().flatten().collect();
    committed.sort_unstable();
    let mut merged: Vec<(u64, u64)> = Vec::with_capacity(committed.len());
    for (a, b) in committed {
        match merged.last_mut() {
            Some(last) if a <= last.1.saturating_add(1) => last.1 = last.1.max(b),
            _ => merged.push((a, b)),
        }
    }
    let held = |id: u64| {
        let i = merged.partition_point(|(a, _)| *a <= id);
        i > 0 && merged[i - 1].1 >= id
    };
    let mut seen = BTreeSet::new();
    let events = events
        .into_iter()
        .filter(|(id, _)| !held(*id) && seen.insert(*id))
        .map(|(_, e)| e)
        .collect();
    Ok(Journalled {
        events,
        unreadable,
        max_init,
        truncated,
    })
}

/// Whether `path` is a regular file (not a link, a FIFO that would block a read, a device or a
/// directory). The spool's directories are root's, and root is who the recording is about.
pub(crate) fn is_plain_file(path: &Path) -> bool {
    match fs::symlink_metadata(path) {
        Ok(m) if m.file_type().is_file() => true,
        Ok(_) => {
            tracing::warn!(path = %path.display(), "ignoring something in the spool that is not a plain file");
            false
        }
        Err(_) => false,
    }
}

/// Removes the journals of every session but `open` ones (left behind by a crash between a close
/// and its journal's removal). Best effort: what cannot be removed is logged and left.
pub(crate) fn remove_all_but(root: &Path, open: &[SessionId]) {
    let dir = root.join(JOURNAL_DIR);
    let entries = match fs::read_dir(&dir) {
        Ok(e) => e,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return,
        Err(e) => {
            tracing::warn!(path = %dir.display(), error = %e, "cannot list the spool's journals");
            return;
        }
    };
    for e in entries.flatten() {
        let keep = e
            .file_name()
            .to_str()
            .and_then(|n| n.strip_suffix(".jsonl"))
            .and_then(|n| n.parse::<SessionId>().ok())
            .is_some_and(|s| open.contains(&s));
        if !keep {
            let p = e.path();
            if let Err(err) = fs::remove_file(&p) {
                tracing::warn!(path = %p.display(), error = %err, "cannot remove a journal no open session needs");
            }
        }
    }
}

/// Removes session `s`'s journal (its close record is committed).
pub(crate) fn remove(root: &Path, s: SessionId) -> Result<(), SpoolError> {
    let path = path(root, s);
    match fs::remove_file(&path) {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(io_err("remove", &path)(e)),
    }
}

#[cfg(test)]
mod tests {
    use jitrec_format::{EventKind, MediaTime, fixtures};

    use super::*;

    fn event(n: u64) -> Event {
        Event {
            media_us: MediaTime::from_micros(n * 1000),
            utc: fixtures::t0(),
            event: EventKind::CaptureError {
                message: format!("event {n}"),
            },
        }
    }

    #[test]
    fn what_no_committed_chunk_holds_is_read_back() {
        let tmp = tempfile::tempdir().unwrap();
        let s = fixtures::session_id(1);
        let j = Journal::create(tmp.path(), s).unwrap();
        let ids: Vec<u64> = (0..6).map(|n| j.append(&event(n)).unwrap()).collect();
        assert_eq!(ids, vec![0, 1, 2, 3, 4, 5]);
        // Chunk 0 holds 0, 1 and 3; chunk 1's marker was written but its commit never happened.
        j.mark_chunk(0, &[3, 0, 1]).unwrap();
        j.chunk_committed(0).unwrap();
        j.mark_chunk(1, &[2, 4]).unwrap();
        j.sync(true).unwrap();
        j.mark_init(0).unwrap();
        j.mark_init(1).unwrap();
        let r = read(tmp.path(), s, 1).unwrap();
        assert_eq!(r.events, vec![event(2), event(4), event(5)]);
        assert_eq!(r.unreadable, 0);
        assert_eq!(r.max_init, Some(1));
        // Had chunk 1 been committed, only 5 is left.
        assert_eq!(read(tmp.path(), s, 2).unwrap().events, vec![event(5)]);
        // Closed first, as a session's journal is when its close record is committed (Windows
        // does not remove a file that is open).
        drop(j);
        remove(tmp.path(), s).unwrap();
        assert_eq!(read(tmp.path(), s, 0).unwrap(), Journalled::default());
    }

    #[test]
    fn a_torn_last_line_is_skipped_and_counted() {
        let tmp = tempfile::tempdir().unwrap();
        let s = fixtures::session_id(2);
        let j = Journal::create(tmp.path(), s).unwrap();
        j.append(&event(0)).unwrap();
        j.append(&event(1)).unwrap();
        drop(j);
        let p = path(tmp.path(), s);
        let bytes = fs::read(&p).unwrap();
        fs::write(&p, &bytes[..bytes.len() - 7]).unwrap();
        let r = read(tmp.path(), s, 0).unwrap();
        assert_eq!(r.events, vec![event(0)]);
        assert_eq!(r.unreadable, 1);
    }

    #[test]
    fn a_marker_after_a_torn_write_starts_a_line_of_its_own() {
        let tmp = tempfile::tempdir().unwrap();
        let s = fixtures::session_id(4);
        let j = Journal::create(tmp.path(), s).unwrap();
        let a = j.append(&event(0)).unwrap();
        {
            // What an append that failed part-way leaves (a full disk): half a line.
            let mut inner = j.inner.lock().unwrap();
            inner.file.write_all(br#"{"id":1,"ev"#).unwrap();
            inner.torn = true;
        }
        j.mark_chunk(0, &[a]).unwrap();
        j.mark_init(3).unwrap();
        drop(j);
        // Chunk 0 committed: its marker was read, so event 0 is not folded a second time.
        let r = read(tmp.path(), s, 1).unwrap();
        assert_eq!(r.events, Vec::<Event>::new());
        assert_eq!(r.unreadable, 1);
        assert_eq!(r.max_init, Some(3));
    }

    #[test]
    fn compaction_keeps_only_unmarked_events() {
        let tmp = tempfile::tempdir().unwrap();
        let s = fixtures::session_id(3);
        let j = Journal::create(tmp.path(), s).unwrap();
        let big = |n: u64| Event {
            event: EventKind::CaptureError {
                message: format!("{n} {}", "x".repeat(64 * 1024)),
            },
            ..event(n)
        };
        let mut prev = None;
        let mut last = 0;
        for seq in 0..80u64 {
            let a = j.append(&big(seq * 2)).unwrap();
            last = j.append(&big(seq * 2 + 1)).unwrap();
            // Each chunk holds its first event and the one left over from the chunk before.
            let ids: Vec<u64> = std::iter::once(a).chain(prev).collect();
            j.mark_chunk(seq, &ids).unwrap();
            j.chunk_committed(seq).unwrap();
            prev = Some(last);
        }
        let seq = 80;
        let size = fs::metadata(path(tmp.path(), s)).unwrap().len();
        assert!(size < COMPACT_AFTER + 256 * 1024, "journal of {size} bytes");
        let r = read(tmp.path(), s, seq).unwrap();
        assert_eq!(
            r.events,
            vec![big(last)],
            "only the last event is in no chunk"
        );
    }
}
