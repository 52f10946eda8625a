//! The spool directory itself, shared by both roles: layout, version marker, role locks, listing,
//! verified reads, quarantine and size accounting.
//!
//! ```text
//! <root>/spool.version                  "jitrec-spool 1"
//! <root>/writer.lock, reader.lock       held (flock) by the recorder / uploader while open
//! <root>/tmp/                           temp files of in-flight commits (writer only)
//! <root>/sessions/<session-id>/         committed entries of one session
//! <root>/quarantine/<session-id>/       entries found corrupt, each with a `.reason` file
//! ```

use std::collections::BTreeMap;
use std::fs::{self, File};
use std::io;
use std::path::{Path, PathBuf};
use std::thread;
use std::time::{Duration, Instant, SystemTime};

use jitrec_format::{ChunkManifest, SessionClose, SessionHeader, SessionId};

use crate::container;
use crate::durable;
use crate::names::{EntryName, EntryRef, State};
use crate::{Entry, SpoolConfig, SpoolError};

const VERSION_FILE: &str = "spool.version";
const VERSION_TEXT: &str = "jitrec-spool 1";
const SESSIONS: &str = "sessions";
const TMP: &str = "tmp";
const QUARANTINE: &str = "quarantine";
const REASON_EXT: &str = "reason";
/// How long `open` keeps trying a lock that looks held before it reports `Locked`.
const LOCK_WAIT: Duration = Duration::from_secs(2);
const LOCK_RETRY: Duration = Duration::from_millis(10);

/// A committed file found in a session directory.
#[derive(Debug, Clone)]
pub(crate) struct Listed {
    pub(crate) name: EntryName,
    pub(crate) state: State,
    pub(crate) path: PathBuf,
}

#[derive(Debug)]
pub(crate) struct SpoolDir {
    pub(crate) root: PathBuf,
    pub(crate) config: SpoolConfig,
}

impl SpoolDir {
    /// Opens (creating if needed) the spool at `root` and takes the `role` lock.
    pub(crate) fn open(
        root: &Path,
        config: SpoolConfig,
        role: &'static str,
    ) -> Result<(Self, File), SpoolError> {
        crate::durable::create_private_dir_all(root)
            .map_err(SpoolError::io("create spool directory", root))?;
        let lock_path = root.join(format!("{role}.lock"));
        let lock = crate::durable::private_file()
            .create(true)
            .truncate(false)
            .open(&lock_path)
            .map_err(SpoolError::io("open lock file", &lock_path))?;
        // A flock belongs to the open file description, and a child forked by any thread of
        // this process shares that description until it execs. So a lock we just released can
        // look held for a moment while the process spawns something; a holder that is really
        // running keeps it far longer than this bounded wait.
        let deadline = Instant::now() + LOCK_WAIT;
        loop {
            match lock.try_lock() {
                Ok(()) => break,
                Err(fs::TryLockError::WouldBlock) if Instant::now() < deadline => {
                    thread::sleep(LOCK_RETRY);
                }
                Err(fs::TryLockError::WouldBlock) => {
                    return Err(SpoolError::Locked {
                        path: root.to_owned(),
                        role,
                    });
                }
                Err(fs::TryLockError::Error(e)) => {
                    return Err(SpoolError::Io {
                        op: "lock",
                        path: lock_path,
                        source: e,
                    });
                }
            }
        }
        let dir = SpoolDir {
            root: root.to_owned(),
            config,
        };
        dir.check_or_init_version()?;
        Ok((dir, lock))
    }

    /// Opens an existing spool without a lock and without creating anything (for read-only
    /// inspection beside running writers and readers).
    pub(crate) fn open_existing(root: &Path) -> Result<Self, SpoolError> {
        let marker = root.join(VERSION_FILE);
        let text = match fs::read_to_string(&marker) {
            Ok(t) => t,
            Err(e) if e.kind() == io::ErrorKind::NotFound => {
                return Err(SpoolError::NotASpool {
                    path: root.to_owned(),
                });
            }
            Err(e) => {
                return Err(SpoolError::Io {
                    op: "read",
                    path: marker,
                    source: e,
                });
            }
        };
        if text.trim_end() != VERSION_TEXT {
            return Err(SpoolError::UnsupportedVersion {
                path: root.to_owned(),
                found: text.chars().take(64).collect(),
                expected: VERSION_TEXT,
            });
        }
        Ok(SpoolDir {
            root: root.to_owned(),
            config: SpoolConfig::default(),
        })
    }

    fn check_or_init_version(&self) -> Result<(), SpoolError> {
        let marker = self.root.join(VERSION_FILE);
        match fs::read_to_string(&marker) {
            Ok(text) => {
                if text.trim_end() != VERSION_TEXT {
                    return Err(SpoolError::UnsupportedVersion {
                        path: self.root.clone(),
                        found: text.chars().take(64).collect(),
                        expected: VERSION_TEXT,
                    });
                }
            }
            Err(e) if e.kind() == io::ErrorKind::NotFound => {
                // Only take over an empty directory (or one holding just our own lock files and
                // subdirectories): pointing the spool at /home by mistake must not make it ours.
                let entries =
                    fs::read_dir(&self.root).map_err(SpoolError::io("list", &self.root))?;
                for e in entries {
                    let e = e.map_err(SpoolError::io("list", &self.root))?;
                    let name = e.file_name();
                    let name = name.to_string_lossy();
                    let ours = matches!(
                        name.as_ref(),
                        "writer.lock" | "reader.lock" | SESSIONS | TMP | QUARANTINE
                    );
                    if !ours {
                        return Err(SpoolError::NotASpool {
                            path: self.root.clone(),
                        });
                    }
                }
                for sub in [TMP, SESSIONS, QUARANTINE] {
                    let p = self.root.join(sub);
                    crate::durable::create_private_dir_all(&p)
                        .map_err(SpoolError::io("create directory", &p))?;
                }
                durable::write_file(
                    &self.tmp_dir(),
                    &marker,
                    &[format!("{VERSION_TEXT}\n").as_bytes()],
                )?;
            }
            Err(e) => {
                return Err(SpoolError::Io {
                    op: "read",
                    path: marker,
                    source: e,
                });
            }
        }
        for sub in [TMP, SESSIONS, QUARANTINE] {
            let p = self.root.join(sub);
            crate::durable::create_private_dir_all(&p)
                .map_err(SpoolError::io("create directory", &p))?;
        }
        durable::sync_dir(&self.root)
    }

    pub(crate) fn tmp_dir(&self) -> PathBuf {
        self.root.join(TMP)
    }

    pub(crate) fn sessions_dir(&self) -> PathBuf {
        self.root.join(SESSIONS)
    }

    pub(crate) fn session_dir(&self, s: SessionId) -> PathBuf {
        self.sessions_dir().join(s.to_string())
    }

    pub(crate) fn quarantine_dir(&self, s: SessionId) -> PathBuf {
        self.root.join(QUARANTINE).join(s.to_string())
    }

    pub(crate) fn entry_path(&self, e: &EntryRef, state: State) -> PathBuf {
        self.session_dir(e.session).join(e.name.file_name(state))
    }

    /// Sessions with a directory in the spool, oldest first.
    pub(crate) fn sessions(&self) -> Result<Vec<SessionId>, SpoolError> {
        let dir = self.sessions_dir();
        let mut out = Vec::new();
        for e in fs::read_dir(&dir).map_err(SpoolError::io("list", &dir))? {
            let e = e.map_err(SpoolError::io("list", &dir))?;
            match e.file_name().to_str().map(str::parse::<SessionId>) {
                Some(Ok(id)) => out.push(id),
                _ => {
                    tracing::warn!(path = %e.path().display(), "ignoring a foreign entry in the spool's sessions directory")
                }
            }
        }
        out.sort();
        Ok(out)
    }

    /// Committed files of a session, in upload order. A session directory that vanished (its close
    /// record was acknowledged meanwhile) lists as empty.
    pub(crate) fn list(&self, s: SessionId) -> Result<Vec<Listed>, SpoolError> {
        let dir = self.session_dir(s);
        let Some(entries) = read_dir_if_exists(&dir)? else {
            return Ok(Vec::new());
        };
        let mut out = Vec::new();
        for e in entries {
            let e = e.map_err(SpoolError::io("list", &dir))?;
            let file = e.file_name();
            match file.to_str().and_then(EntryName::parse) {
                Some((name, state)) => out.push(Listed {
                    name,
                    state,
                    path: e.path(),
                }),
                None => {
                    tracing::warn!(path = %e.path().display(), "ignoring a file the spool did not write")
                }
            }
        }
        out.sort_by_key(|l| (l.name, l.state == State::Sent));
        Ok(out)
    }

    /// Reads and fully verifies one committed file. A damaged or inconsistent file is moved to
    /// quarantine and reported as [`SpoolError::Quarantined`]; an I/O error is not (the disk may
    /// recover, and quarantine is for content we know is bad).
    pub(crate) fn read(&self, entry: &EntryRef, path: &Path) -> Result<Entry, SpoolError> {
        let bytes = match fs::read(path) {
            Ok(b) => b,
            Err(e) if e.kind() == io::ErrorKind::NotFound => {
                return Err(SpoolError::NotFound(*entry));
            }
            Err(e) => {
                return Err(SpoolError::Io {
                    op: "read",
                    path: path.to_owned(),
                    source: e,
                });
            }
        };
        match decode_entry(entry, &bytes) {
            Ok(e) => Ok(e),
            Err(reason) => {
                self.quarantine(entry, path, &reason)?;
                Err(SpoolError::Quarantined {
                    entry: *entry,
                    reason,
                })
            }
        }
    }

    /// Moves a file to `quarantine/<session>/` beside a `.reason` file. The file is kept, not
    /// deleted: it is evidence, and an operator may be able to recover it.
    pub(crate) fn quarantine(
        &self,
        entry: &EntryRef,
        path: &Path,
        reason: &str,
    ) -> Result<(), SpoolError> {
        let qdir = self.quarantine_dir(entry.session);
        crate::durable::create_private_dir_all(&qdir)
            .map_err(SpoolError::io("create directory", &qdir))?;
        let file = path
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_else(|| "entry".into());
        let mut dest = qdir.join(&file);
        if dest.exists() {
            let nanos = SystemTime::now()
                .duration_since(SystemTime::UNIX_EPOCH)
                .map(|d| d.as_nanos())
                .unwrap_or(0);
            dest = qdir.join(format!("{file}.{nanos}"));
        }
        match fs::rename(path, &dest) {
            Ok(()) => {}
            // Someone else (the other role) quarantined or acknowledged it first.
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(()),
            Err(e) => {
                return Err(SpoolError::Io {
                    op: "move to quarantine",
                    path: path.to_owned(),
                    source: e,
                });
            }
        }
        let reason_path = PathBuf::from(format!("{}.{REASON_EXT}", dest.display()));
        durable::write_file(
            &self.tmp_dir(),
            &reason_path,
            &[format!("{reason}\n").as_bytes()],
        )?;
        durable::sync_parent(path)?;
        tracing::error!(
            entry = %entry,
            path = %dest.display(),
            reason,
            "spool entry is corrupt and was quarantined; it will not be uploaded"
        );
        Ok(())
    }

    /// Sequence numbers of quarantined chunks of a session.
    pub(crate) fn quarantined_chunks(&self, s: SessionId) -> Result<Vec<u64>, SpoolError> {
        let dir = self.quarantine_dir(s);
        let Some(entries) = read_dir_if_exists(&dir)? else {
            return Ok(Vec::new());
        };
        let mut out = Vec::new();
        for e in entries {
            let e = e.map_err(SpoolError::io("list", &dir))?;
            let name = e.file_name();
            // Quarantined names are the original name, possibly with a `.<nanos>` suffix.
            let name = name.to_string_lossy();
            let base = name.split('.').take(2).collect::<Vec<_>>().join(".");
            if let Some((EntryName::Chunk(n), _)) = EntryName::parse(&base)
                && !name.ends_with(REASON_EXT)
            {
                out.push(n);
            }
        }
        Ok(out)
    }

    /// Counts quarantined entries (not their reason files).
    pub(crate) fn quarantine_count(&self) -> Result<usize, SpoolError> {
        let root = self.root.join(QUARANTINE);
        let mut n = 0;
        for sess in fs::read_dir(&root).map_err(SpoolError::io("list", &root))? {
            let sess = sess.map_err(SpoolError::io("list", &root))?.path();
            if let Ok(files) = fs::read_dir(&sess) {
                n += files
                    .filter_map(Result::ok)
                    .filter(|f| !f.file_name().to_string_lossy().ends_with(REASON_EXT))
                    .count();
            }
        }
        Ok(n)
    }

    /// Bytes used by every file the spool holds (sessions, quarantine and temp files).
    ///
    /// Quarantined files count: they occupy the same disk the bound protects.
    pub(crate) fn scan_usage(&self) -> Result<u64, SpoolError> {
        fn walk(dir: &Path, depth: u32) -> Result<u64, SpoolError> {
            let Some(entries) = read_dir_if_exists(dir)? else {
                return Ok(0);
            };
            let mut total = 0;
            for e in entries {
                let Ok(e) = e else { continue };
                // Entries may vanish while we walk (the other role acknowledges them).
                let Ok(meta) = e.metadata() else { continue };
                if meta.is_dir() {
                    if depth > 0 {
                        total += walk(&e.path(), depth - 1)?;
                    }
                } else {
                    total += meta.len();
                }
            }
            Ok(total)
        }
        Ok(walk(&self.sessions_dir(), 1)?
            + walk(&self.root.join(QUARANTINE), 1)?
            + walk(&self.tmp_dir(), 0)?
            + walk(&self.root.join(crate::journal::JOURNAL_DIR), 0)?)
    }

    /// Removes everything in `tmp/`: leftovers of commits that a crash interrupted. Only the writer
    /// may call this (a reader would delete an in-flight commit's temp file).
    pub(crate) fn clear_tmp(&self) -> Result<usize, SpoolError> {
        let dir = self.tmp_dir();
        let mut removed = 0;
        for e in fs::read_dir(&dir).map_err(SpoolError::io("list", &dir))? {
            let e = e.map_err(SpoolError::io("list", &dir))?;
            if durable::remove_file(&e.path())? {
                removed += 1;
            }
        }
        if removed > 0 {
            durable::sync_dir(&dir)?;
        }
        Ok(removed)
    }

    /// Highest chunk sequence number present (pending or sent) in a listing.
    pub(crate) fn highest_chunk(listed: &[Listed]) -> Option<u64> {
        listed
            .iter()
            .filter_map(|l| match l.name {
                EntryName::Chunk(n) => Some(n),
                _ => None,
            })
            .max()
    }

    /// Groups a listing by name (an entry can momentarily exist in both states during an ack).
    pub(crate) fn by_name(listed: &[Listed]) -> BTreeMap<EntryName, &Listed> {
        listed.iter().map(|l| (l.name, l)).collect()
    }
}

/// Lists a directory; `None` if it does not exist (a session acknowledged meanwhile, a session
/// with nothing quarantined).
fn read_dir_if_exists(dir: &Path) -> Result<Option<fs::ReadDir>, SpoolError> {
    match fs::read_dir(dir) {
        Ok(e) => Ok(Some(e)),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(SpoolError::Io {
            op: "list",
            path: dir.to_owned(),
            source: e,
        }),
    }
}

/// Decodes a verified entry, or says in words why it is not one.
fn decode_entry(entry: &EntryRef, bytes: &[u8]) -> Result<Entry, String> {
    let parts = container::decode(bytes, entry.name.kind())?;
    let wrong_session = |found: SessionId| {
        format!(
            "document belongs to session {found}, but is filed under {}",
            entry.session
        )
    };
    match entry.name {
        EntryName::Header => {
            let bytes = parts[0].to_vec();
            let header = SessionHeader::from_bytes(&bytes).map_err(|e| e.to_string())?;
            if header.session_id != entry.session {
                return Err(wrong_session(header.session_id));
            }
            Ok(Entry::Header { bytes, header })
        }
        EntryName::Init(id) => {
            if parts[0].is_empty() {
                return Err("init segment is empty".into());
            }
            Ok(Entry::Init {
                id,
                bytes: parts[0].to_vec(),
            })
        }
        EntryName::Chunk(seq) => {
            let manifest_bytes = parts[0].to_vec();
            let manifest = ChunkManifest::from_bytes(&manifest_bytes).map_err(|e| e.to_string())?;
            if manifest.session_id != entry.session {
                return Err(wrong_session(manifest.session_id));
            }
            if manifest.seq != seq {
                return Err(format!(
                    "manifest says chunk {}, file name says {seq}",
                    manifest.seq
                ));
            }
            manifest.verify_video(parts[1]).map_err(|e| e.to_string())?;
            manifest
                .verify_events(parts[2])
                .map_err(|e| e.to_string())?;
            Ok(Entry::Chunk {
                manifest_bytes,
                manifest,
                video: parts[1].to_vec(),
                events: parts[2].to_vec(),
            })
        }
        EntryName::Close => {
            let bytes = parts[0].to_vec();
            let close = SessionClose::from_bytes(&bytes).map_err(|e| e.to_string())?;
            if close.session_id != entry.session {
                return Err(wrong_session(close.session_id));
            }
            Ok(Entry::Close { bytes, close })
        }
    }
}
