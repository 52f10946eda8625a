//! The directory store: the bucket is a directory, the object `a/b/c` the file `<root>/a/b/c`.
//! jitrec's embedded default (one machine, no S3), with the promises S3 keeps and the ones this
//! crate adds:
//!
//! - a reader never sees a half-written object: a put writes a temp file (name starting with
//!   `.`, skipped by listings), fsyncs it, links it to its key, and fsyncs the directory;
//! - write-once: the link fails if the key exists (`link(2)` never replaces), and then the bytes
//!   stored are compared with the ones offered;
//! - reads never leave the root and read regular files only: each component of a key is opened
//!   beneath the one before with `O_NOFOLLOW` (the root itself is the operator's path and may be
//!   a link), and the object is `fstat`ed before a byte is read, so a symbolic link, a FIFO (opened
//!   without blocking), a directory or a device where an object belongs is refused;
//! - private: folders are created 0700 and objects 0600.
//!
//! The writer side also builds on Windows (the uploader's embedded default there); the reader's
//! guarantees are those of the Unix build, where the player runs.

use std::fs::{self, File, OpenOptions};
use std::io::{self, Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use bytes::Bytes;
use jitrec_format::{ObjectKey, Sha256Digest};
use sha2::Digest as _;

use crate::{
    BucketAdmin, BucketError, BucketReader, BucketWriter, ErrorKind, HoldEnforcement, Range,
    is_plain_key,
};

/// Files hashed or compared are read in pieces of this size.
const BLOCK: usize = 64 * 1024;

/// A bucket kept as a local directory.
#[derive(Debug, Clone)]
pub struct DirBucket {
    root: Arc<PathBuf>,
    counter: Arc<AtomicU64>,
}

impl DirBucket {
    /// A bucket rooted at `root` (created on the first put if missing).
    pub fn new(root: impl Into<PathBuf>) -> Self {
        Self {
            root: Arc::new(root.into()),
            counter: Arc::new(AtomicU64::new(0)),
        }
    }

    pub fn root(&self) -> &Path {
        &self.root
    }

    /// [`BucketWriter::put`] on the calling thread (tools and tests without a runtime).
    pub fn put_blocking(&self, key: &str, body: &[u8]) -> Result<(), BucketError> {
        if !is_plain_key(key) {
            return Err(BucketError::new(
                "put",
                key,
                ErrorKind::Io(io::ErrorKind::InvalidInput),
                "not a relative object key",
            ));
        }
        let dest = self.root.join(key);
        let dir = dest.parent().unwrap_or(&self.root);
        create_private_dirs(dir).map_err(|e| BucketError::io("put", key, &e))?;
        let tmp = dir.join(format!(
            ".tmp-{}-{}",
            std::process::id(),
            self.counter.fetch_add(1, Ordering::Relaxed)
        ));
        let fail = |what: &str, e: io::Error| {
            BucketError::new("put", key, ErrorKind::Io(e.kind()), format!("{what}: {e}"))
        };
        let result = (|| {
            let mut f = private_file().open(&tmp).map_err(|e| fail("create", e))?;
            f.write_all(body).map_err(|e| fail("write", e))?;
            f.sync_all().map_err(|e| fail("fsync", e))?;
            drop(f);
            match fs::hard_link(&tmp, &dest) {
                Ok(()) => Ok(()),
                Err(e) if e.kind() == io::ErrorKind::AlreadyExists => self.same_bytes(key, body),
                Err(e) => Err(fail("link", e)),
            }
        })();
        let _ = fs::remove_file(&tmp);
        result?;
        sync_dir(dir).map_err(|e| fail("fsync directory", e))
    }

    /// Success if `key` already holds exactly `body`, [`ErrorKind::Conflict`] if it holds
    /// anything else (read no further than one byte past `body`'s length).
    fn same_bytes(&self, key: &str, body: &[u8]) -> Result<(), BucketError> {
        let limit = body.len() as u64;
        let Some((mut f, size)) = open_object(&self.root, key, "put")? else {
            // Deleted between the link and now: what was there is gone, and a retry will link.
            return Err(BucketError::new(
                "put",
                key,
                ErrorKind::Io(io::ErrorKind::NotFound),
                "the object vanished while comparing it",
            ));
        };
        let conflict = || {
            tracing::error!(
                key,
                "a different object is already stored under this write-once key; \
                it is left as it is (tampering, or two writers for one key)"
            );
            BucketError::new(
                "put",
                key,
                ErrorKind::Conflict,
                format!("{size} bytes stored, {limit} offered"),
            )
        };
        if size != limit {
            return Err(conflict());
        }
        let mut buf = vec![0u8; BLOCK];
        let mut at = 0usize;
        loop {
            let n = f
                .read(&mut buf)
                .map_err(|e| BucketError::io("put", key, &e))?;
            if n == 0 {
                break;
            }
            if at + n > body.len() || buf[..n] != body[at..at + n] {
                return Err(conflict());
            }
            at += n;
        }
        if at == body.len() {
            Ok(())
        } else {
            Err(conflict())
        }
    }

    fn open(&self, key: &ObjectKey, op: &'static str) -> Result<Option<(File, u64)>, BucketError> {
        open_object(&self.root, &key.to_string(), op)
    }
}

/// Files the stores create: new (never an existing one), readable by their owner only.
fn private_file() -> OpenOptions {
    let mut o = OpenOptions::new();
    o.write(true).create_new(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt;
        o.mode(0o600);
    }
    o
}

/// `create_dir_all`, with every folder it creates 0700.
fn create_private_dirs(dir: &Path) -> io::Result<()> {
    let mut b = fs::DirBuilder::new();
    b.recursive(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::DirBuilderExt;
        b.mode(0o700);
    }
    b.create(dir)
}

#[cfg(unix)]
fn sync_dir(dir: &Path) -> io::Result<()> {
    File::open(dir)?.sync_all()
}

/// See `jitrec_spool`'s durable writer: std cannot open a directory on Windows, and NTFS journals
/// the link.
#[cfg(not(unix))]
fn sync_dir(_dir: &Path) -> io::Result<()> {
    Ok(())
}

fn not_an_object(op: &'static str, key: &str, what: &'static str) -> BucketError {
    BucketError::new(
        op,
        key,
        ErrorKind::NotAnObject(what),
        "refused, not followed",
    )
}

/// Opens the regular file that is object `key` beneath `root`, with its size; `None` if there is
/// none. Nothing is followed: see the module's documentation.
#[cfg(unix)]
fn open_object(
    root: &Path,
    key: &str,
    op: &'static str,
) -> Result<Option<(File, u64)>, BucketError> {
    use rustix::fs::{CWD, FileType, Mode, OFlags, fstat, openat};
    use rustix::io::Errno;
    if !is_plain_key(key) {
        return Err(not_an_object(op, key, "a path outside the bucket's layout"));
    }
    let io_err = |e: Errno| BucketError::io(op, key, &io::Error::from(e));
    let dir_flags = OFlags::RDONLY | OFlags::DIRECTORY | OFlags::CLOEXEC;
    let mut dir = match openat(CWD, root, dir_flags, Mode::empty()) {
        Ok(fd) => fd,
        Err(Errno::NOENT) => return Ok(None),
        Err(e) => return Err(io_err(e)),
    };
    let mut parts = key.split('/').peekable();
    while let Some(part) = parts.next() {
        if parts.peek().is_some() {
            dir = match openat(&dir, part, dir_flags | OFlags::NOFOLLOW, Mode::empty()) {
                Ok(fd) => fd,
                Err(Errno::NOENT) => return Ok(None),
                Err(Errno::LOOP | Errno::NOTDIR) => {
                    return Err(not_an_object(
                        op,
                        key,
                        "a folder on its path is a link or a file",
                    ));
                }
                Err(e) => return Err(io_err(e)),
            };
            continue;
        }
        // NONBLOCK: opening a FIFO for reading would otherwise wait for a writer.
        let flags =
            OFlags::RDONLY | OFlags::NOFOLLOW | OFlags::NONBLOCK | OFlags::NOCTTY | OFlags::CLOEXEC;
        let fd = match openat(&dir, part, flags, Mode::empty()) {
            Ok(fd) => fd,
            Err(Errno::NOENT) => return Ok(None),
            Err(Errno::LOOP) => return Err(not_an_object(op, key, "a symbolic link")),
            Err(e) => return Err(io_err(e)),
        };
        let st = fstat(&fd).map_err(io_err)?;
        return match FileType::from_raw_mode(st.st_mode) {
            FileType::RegularFile => Ok(Some((
                File::from(fd),
                u64::try_from(st.st_size).unwrap_or(0),
            ))),
            FileType::Directory => Err(not_an_object(op, key, "a directory")),
            FileType::Fifo => Err(not_an_object(op, key, "a FIFO")),
            FileType::Symlink => Err(not_an_object(op, key, "a symbolic link")),
            _ => Err(not_an_object(op, key, "a device or socket")),
        };
    }
    Err(not_an_object(op, key, "an empty key"))
}

/// The same checks without `openat` (Windows, where only the uploader writes through this store;
/// the player runs on Unix).
#[cfg(not(unix))]
fn open_object(
    root: &Path,
    key: &str,
    op: &'static str,
) -> Result<Option<(File, u64)>, BucketError> {
    if !is_plain_key(key) {
        return Err(not_an_object(op, key, "a path outside the bucket's layout"));
    }
    let mut path = root.to_path_buf();
    for part in key.split('/') {
        path.push(part);
        match fs::symlink_metadata(&path) {
            Ok(m) if m.file_type().is_symlink() => {
                return Err(not_an_object(op, key, "a symbolic link"));
            }
            Ok(_) => {}
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
            Err(e) => return Err(BucketError::io(op, key, &e)),
        }
    }
    let f = File::open(&path).map_err(|e| BucketError::io(op, key, &e))?;
    let m = f.metadata().map_err(|e| BucketError::io(op, key, &e))?;
    if !m.is_file() {
        return Err(not_an_object(op, key, "not a regular file"));
    }
    Ok(Some((f, m.len())))
}

/// Whether every folder of `rel` (a relative path of plain components) below `root` is a real
/// folder, not a link: `Ok(false)` if one is a link or not a folder, `Ok(true)` also when the
/// path ends early (nothing there to list or delete). Listings and deletions check it first, so
/// neither ever reaches outside the root through a linked folder an endpoint planted.
fn folders_are_real(root: &Path, rel: &str) -> io::Result<bool> {
    let mut path = root.to_path_buf();
    for part in rel.split('/').filter(|p| !p.is_empty()) {
        path.push(part);
        match fs::symlink_metadata(&path) {
            Ok(m) if m.file_type().is_symlink() || !m.is_dir() => return Ok(false),
            Ok(_) => {}
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(true),
            Err(e) => return Err(e),
        }
    }
    Ok(true)
}

fn too_large(op: &'static str, key: &str, limit: u64, size: Option<u64>) -> BucketError {
    BucketError::new(
        op,
        key,
        ErrorKind::TooLarge { limit, size },
        "refused before reading",
    )
}

impl BucketWriter for DirBucket {
    async fn put(
        &self,
        key: &str,
        body: Bytes,
        _content_type: &'static str,
    ) -> Result<(), BucketError> {
        let this = self.clone();
        let owned_key = key.to_owned();
        tokio::task::spawn_blocking(move || this.put_blocking(&owned_key, &body))
            .await
            .map_err(|e| {
                BucketError::new(
                    "put",
                    key,
                    ErrorKind::Other,
                    format!("put task failed: {e}"),
                )
            })?
    }

    fn describe(&self) -> String {
        format!("directory {}", self.root.display())
    }
}

impl BucketReader for DirBucket {
    fn get(&self, key: &ObjectKey, limit: u64) -> Result<Option<Vec<u8>>, BucketError> {
        let Some((f, size)) = self.open(key, "read")? else {
            return Ok(None);
        };
        let k = key.to_string();
        if size > limit {
            return Err(too_large("read", &k, limit, Some(size)));
        }
        // The file may grow after the fstat: read one byte past the limit at most to know.
        let mut out = Vec::with_capacity(usize::try_from(size).unwrap_or(0));
        f.take(limit.saturating_add(1))
            .read_to_end(&mut out)
            .map_err(|e| BucketError::io("read", &k, &e))?;
        if out.len() as u64 > limit {
            return Err(too_large("read", &k, limit, None));
        }
        Ok(Some(out))
    }

    fn size(&self, key: &ObjectKey) -> Result<Option<u64>, BucketError> {
        Ok(self.open(key, "read")?.map(|(_, size)| size))
    }

    fn get_range(
        &self,
        key: &ObjectKey,
        start: u64,
        len: u64,
    ) -> Result<Option<Range>, BucketError> {
        let Some((mut f, total)) = self.open(key, "read")? else {
            return Ok(None);
        };
        let k = key.to_string();
        let want = len.min(total.saturating_sub(start));
        let mut bytes = Vec::with_capacity(usize::try_from(want).unwrap_or(0));
        if want > 0 {
            f.seek(SeekFrom::Start(start))
                .map_err(|e| BucketError::io("read", &k, &e))?;
            f.take(want)
                .read_to_end(&mut bytes)
                .map_err(|e| BucketError::io("read", &k, &e))?;
        }
        Ok(Some(Range { bytes, total }))
    }

    fn digest(
        &self,
        key: &ObjectKey,
        limit: u64,
    ) -> Result<Option<(u64, Sha256Digest)>, BucketError> {
        let Some((f, size)) = self.open(key, "read")? else {
            return Ok(None);
        };
        let k = key.to_string();
        if size > limit {
            return Err(too_large("read", &k, limit, Some(size)));
        }
        let mut r = f.take(limit.saturating_add(1));
        let mut h = sha2::Sha256::new();
        let mut buf = vec![0u8; BLOCK];
        let mut n_total = 0u64;
        loop {
            let n = r
                .read(&mut buf)
                .map_err(|e| BucketError::io("read", &k, &e))?;
            if n == 0 {
                break;
            }
            n_total += n as u64;
            h.update(&buf[..n]);
        }
        if n_total > limit {
            return Err(too_large("read", &k, limit, None));
        }
        Ok(Some((
            n_total,
            Sha256Digest::from_bytes(h.finalize().into()),
        )))
    }

    fn list_after(
        &self,
        prefix: &str,
        start_after: Option<&str>,
    ) -> Result<Vec<String>, BucketError> {
        fn walk(dir: &Path, rel: &str, out: &mut Vec<String>) -> Result<(), BucketError> {
            let entries = match fs::read_dir(dir) {
                Ok(e) => e,
                Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(()),
                Err(e) => return Err(BucketError::io("list", rel, &e)),
            };
            for e in entries {
                let e = e.map_err(|e| BucketError::io("list", rel, &e))?;
                let name = e.file_name().to_string_lossy().into_owned();
                if name.starts_with('.') {
                    continue;
                }
                let key = format!("{rel}{name}");
                // The entry's own type: a link to a directory is listed as a key (which a read
                // then refuses), never walked into.
                if e.file_type().map(|t| t.is_dir()).unwrap_or(false) {
                    walk(&e.path(), &format!("{key}/"), out)?;
                } else {
                    out.push(key);
                }
            }
            Ok(())
        }
        // List from the deepest directory the prefix names, then filter by the full prefix.
        let dir_part = prefix.rsplit_once('/').map_or("", |(d, _)| d);
        if !dir_part.is_empty() && !is_plain_key(dir_part) {
            return Err(not_an_object(
                "list",
                prefix,
                "a path outside the bucket's layout",
            ));
        }
        if !folders_are_real(&self.root, dir_part)
            .map_err(|e| BucketError::io("list", prefix, &e))?
        {
            // A linked folder (say, a session's) is not walked: it lists as empty, so what it
            // should hold is reported missing, and nothing behind the link is read or deleted.
            tracing::warn!(
                prefix,
                "a folder of the bucket is a link or not a folder; not listed"
            );
            return Ok(Vec::new());
        }
        let mut out = Vec::new();
        let rel = if dir_part.is_empty() {
            String::new()
        } else {
            format!("{dir_part}/")
        };
        walk(&self.root.join(dir_part), &rel, &mut out)?;
        out.retain(|k| k.starts_with(prefix) && start_after.is_none_or(|a| k.as_str() > a));
        out.sort();
        Ok(out)
    }

    fn list_names(
        &self,
        prefix: &str,
        start_after: Option<&str>,
    ) -> Result<Vec<String>, BucketError> {
        let rel = prefix.trim_end_matches('/');
        if !is_plain_key(rel)
            || !folders_are_real(&self.root, rel)
                .map_err(|e| BucketError::io("list", prefix, &e))?
        {
            // A link (or a file) where a folder of the layout belongs is never walked into.
            return Err(BucketError::new(
                "list",
                prefix,
                ErrorKind::NotAnObject("a link or a file where a folder belongs"),
                "refused",
            ));
        }
        let dir = self.root.join(rel);
        let entries = match fs::read_dir(&dir) {
            Ok(e) => e,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(Vec::new()),
            Err(e) => return Err(BucketError::io("list", prefix, &e)),
        };
        let mut out = Vec::new();
        for e in entries {
            let e = e.map_err(|e| BucketError::io("list", prefix, &e))?;
            let name = e.file_name().to_string_lossy().into_owned();
            if !name.starts_with('.') && start_after.is_none_or(|a| name.as_str() > a) {
                out.push(name);
            }
        }
        out.sort();
        Ok(out)
    }

    fn describe(&self) -> String {
        format!("directory {}", self.root.display())
    }
}

impl BucketAdmin for DirBucket {
    fn delete_many(&self, keys: &[String]) -> Result<(), BucketError> {
        let mut dirs = std::collections::BTreeSet::new();
        for key in keys {
            if !is_plain_key(key) {
                continue;
            }
            let parent = key.rsplit_once('/').map_or("", |(d, _)| d);
            if !folders_are_real(&self.root, parent)
                .map_err(|e| BucketError::io("delete", key, &e))?
            {
                tracing::warn!(
                    key,
                    "not deleted: a folder on its path is a link or not a folder"
                );
                continue;
            }
            // `remove_file` removes a link itself, never its target.
            let path = self.root.join(key);
            match fs::remove_file(&path) {
                Ok(()) => {}
                Err(e) if e.kind() == io::ErrorKind::NotFound => {}
                Err(e) => return Err(BucketError::io("delete", key, &e)),
            }
            let mut dir = path.parent();
            while let Some(d) = dir
                && d != self.root.as_path()
            {
                dirs.insert(d.to_owned());
                dir = d.parent();
            }
        }
        // Remove folders left empty, deepest first (a session's `chunks/`, `init/`, itself).
        for d in dirs.iter().rev() {
            let _ = fs::remove_dir(d);
        }
        Ok(())
    }

    fn set_legal_hold(&self, _keys: &[String], _on: bool) -> Result<HoldEnforcement, BucketError> {
        Ok(HoldEnforcement::RetentionJobOnly)
    }

    fn tidy(&self, prefix: &str) -> Result<(), BucketError> {
        let trimmed = prefix.trim_end_matches('/');
        if !is_plain_key(trimmed) {
            return Err(not_an_object(
                "delete",
                prefix,
                "a path outside the bucket's layout",
            ));
        }
        if !folders_are_real(&self.root, trimmed)
            .map_err(|e| BucketError::io("delete", prefix, &e))?
        {
            return Ok(());
        }
        let dir = self.root.join(trimmed);
        for sub in ["chunks", "init", ""] {
            match fs::remove_dir(dir.join(sub)) {
                Ok(()) => {}
                // Not a folder: a link an endpoint put where the session's folder was; it is
                // left (and reported by the listing), never followed.
                Err(e)
                    if matches!(
                        e.kind(),
                        io::ErrorKind::NotFound
                            | io::ErrorKind::DirectoryNotEmpty
                            | io::ErrorKind::NotADirectory
                    ) => {}
                Err(e) => return Err(BucketError::io("delete", prefix, &e)),
            }
        }
        Ok(())
    }
}

#[cfg(all(test, unix))]
mod tests {
    use std::os::unix::fs::PermissionsExt;

    use jitrec_format::SessionId;

    use super::*;

    fn key() -> ObjectKey {
        ObjectKey::ChunkVideo((SessionId::new()).into(), 0)
    }

    #[test]
    fn write_once_same_bytes_succeed_other_bytes_conflict_and_leave_the_first() {
        let tmp = tempfile::tempdir().unwrap();
        let b = DirBucket::new(tmp.path().join("bucket"));
        let k = key();
        b.put_blocking(&k.to_string(), b"first").unwrap();
        b.put_blocking(&k.to_string(), b"first").unwrap();
        for other in [&b"firsT"[..], b"first and more", b"fir", b""] {
            let e = b.put_blocking(&k.to_string(), other).unwrap_err();
            assert_eq!(e.kind, ErrorKind::Conflict, "{e}");
        }
        assert_eq!(b.get(&k, 100).unwrap().unwrap(), b"first");
        // No temp file is left beside it.
        let dir = tmp
            .path()
            .join("bucket")
            .join(k.to_string())
            .parent()
            .unwrap()
            .to_owned();
        assert_eq!(fs::read_dir(&dir).unwrap().count(), 1);
    }

    #[test]
    fn objects_are_0600_and_folders_0700() {
        let tmp = tempfile::tempdir().unwrap();
        let b = DirBucket::new(tmp.path().join("bucket"));
        let k = key();
        b.put_blocking(&k.to_string(), b"x").unwrap();
        let mut p = tmp.path().join("bucket").join(k.to_string());
        assert_eq!(
            fs::metadata(&p).unwrap().permissions().mode() & 0o777,
            0o600
        );
        while p.pop() && p != tmp.path() {
            assert_eq!(
                fs::metadata(&p).unwrap().permissions().mode() & 0o777,
                0o700,
                "{}",
                p.display()
            );
        }
    }

    #[test]
    fn reads_are_bounded_before_reading() {
        let tmp = tempfile::tempdir().unwrap();
        let b = DirBucket::new(tmp.path());
        let k = key();
        b.put_blocking(&k.to_string(), &[7u8; 1000]).unwrap();
        assert_eq!(b.get(&k, 1000).unwrap().unwrap().len(), 1000);
        let e = b.get(&k, 999).unwrap_err();
        assert_eq!(
            e.kind,
            ErrorKind::TooLarge {
                limit: 999,
                size: Some(1000)
            }
        );
        assert!(b.digest(&k, 999).is_err());
        let (n, d) = b.digest(&k, 1000).unwrap().unwrap();
        assert_eq!((n, d), (1000, Sha256Digest::of(&[7u8; 1000])));
        let r = b.get_range(&k, 998, 10).unwrap().unwrap();
        assert_eq!((r.bytes.len(), r.total), (2, 1000));
        assert!(b.get_range(&k, 5000, 10).unwrap().unwrap().bytes.is_empty());
        assert_eq!(b.get(&key(), 10).unwrap(), None);
    }

    #[test]
    fn links_fifos_and_directories_where_an_object_belongs_are_refused() {
        let tmp = tempfile::tempdir().unwrap();
        let root = tmp.path().join("bucket");
        let b = DirBucket::new(&root);
        let secret = tmp.path().join("secret");
        fs::write(&secret, b"host secret").unwrap();
        let s = SessionId::new();
        let place = |seq: u64| {
            let k = ObjectKey::ChunkVideo(s.into(), seq);
            let p = root.join(k.to_string());
            fs::create_dir_all(p.parent().unwrap()).unwrap();
            (k, p)
        };
        let (link, p) = place(0);
        std::os::unix::fs::symlink(&secret, &p).unwrap();
        let (fifo, p) = place(1);
        rustix::fs::mkfifoat(rustix::fs::CWD, &p, rustix::fs::Mode::from_raw_mode(0o600)).unwrap();
        let (dir, p) = place(2);
        fs::create_dir(&p).unwrap();
        for k in [&link, &fifo, &dir] {
            for r in [
                b.get(k, 1 << 20).map(|_| ()),
                b.size(k).map(|_| ()),
                b.get_range(k, 0, 10).map(|_| ()),
                b.digest(k, 1 << 20).map(|_| ()),
            ] {
                let e = r.unwrap_err();
                assert!(matches!(e.kind, ErrorKind::NotAnObject(_)), "{k}: {e}");
                assert!(e.is_refused_object());
            }
        }
        // A linked folder on the way is refused too.
        let other = tmp.path().join("elsewhere");
        fs::create_dir_all(other.join("chunks")).unwrap();
        fs::write(other.join("chunks").join("0000000000.m4s"), b"host file").unwrap();
        let s2 = SessionId::new();
        let sess = root.join(ObjectKey::session_prefix(s2).trim_end_matches('/'));
        std::os::unix::fs::symlink(&other, &sess).unwrap();
        let e = b
            .get(&ObjectKey::ChunkVideo(s2.into(), 0), 1 << 20)
            .unwrap_err();
        assert!(matches!(e.kind, ErrorKind::NotAnObject(_)), "{e}");
        // Listing and deleting do not go through the linked folder either.
        let prefix = ObjectKey::session_prefix(s2);
        assert!(b.list(&prefix).unwrap().is_empty());
        let through = format!("{prefix}chunks/0000000000.m4s");
        b.delete_many(&[through]).unwrap();
        fs::create_dir(other.join("init")).unwrap();
        b.tidy(&prefix).unwrap();
        assert_eq!(
            fs::read(other.join("chunks").join("0000000000.m4s")).unwrap(),
            b"host file"
        );
        assert!(
            other.join("init").is_dir(),
            "an empty folder behind the link is left alone"
        );
        // The write side refuses to replace the link with its own object, and the secret is intact.
        assert!(b.put_blocking(&link.to_string(), b"x").is_err());
        assert_eq!(fs::read(&secret).unwrap(), b"host secret");
    }
}
