//! The durable write, in one place: temp file, write, fsync, rename, fsync the directory.
//!
//! After `write_entry` returns `Ok`, the entry survives a process crash and (on a disk that honours
//! fsync) a power cut, and it is never visible half-written: readers only ever see names that a
//! rename published. On any error the temp file is removed and the destination is left absent,
//! so a failed commit (a full disk: `ENOSPC` can come from the write, the fsync or even the
//! rename, which may need a new directory block) leaves nothing the writer's chain does not
//! know, and the same entry can be committed again later.

#[cfg(unix)]
use std::fs::File;
use std::fs::{self, OpenOptions};
use std::io::{self, Write};
use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};

use crate::SpoolError;

static TMP_COUNTER: AtomicU64 = AtomicU64::new(0);

/// The steps of a durable write, for tests that make one of them fail.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Step {
    Create,
    Write,
    Fsync,
    Rename,
    SyncDir,
}

/// The step the next durable write of the named thread fails at, with "no space left on
/// device" (a plain static with the thread's id rather than a `thread_local!`, which clippy
/// versions disagree about).
#[cfg(test)]
pub(crate) static FAIL_AT: std::sync::Mutex<Option<(std::thread::ThreadId, Step)>> =
    std::sync::Mutex::new(None);

/// Makes the calling thread's next durable write fail at `step`.
#[cfg(test)]
pub(crate) fn fail_at(step: Step) {
    *FAIL_AT
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner) =
        Some((std::thread::current().id(), step));
}

/// Fails like a full disk if a test asked for it at `step` (never outside tests).
#[cfg(test)]
fn injected(step: Step) -> io::Result<()> {
    let mut f = FAIL_AT
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner);
    if *f == Some((std::thread::current().id(), step)) {
        *f = None;
        return Err(io::Error::from(io::ErrorKind::StorageFull));
    }
    Ok(())
}

#[cfg(not(test))]
#[inline]
fn injected(_step: Step) -> io::Result<()> {
    Ok(())
}

/// Writes `chunks` (concatenated) durably to `dest`, staging in `tmp_dir`, which must be on the
/// same filesystem.
pub(crate) fn write_file(tmp_dir: &Path, dest: &Path, chunks: &[&[u8]]) -> Result<(), SpoolError> {
    let base = dest
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    let tmp = tmp_dir.join(format!(
        "{}-{}-{base}.tmp",
        std::process::id(),
        TMP_COUNTER.fetch_add(1, Ordering::Relaxed)
    ));
    let mut renamed = false;
    let result = (|| {
        let mut f = injected(Step::Create)
            .and_then(|()| private_file().create_new(true).open(&tmp))
            .map_err(SpoolError::io("create temp file", &tmp))?;
        for c in chunks {
            injected(Step::Write)
                .and_then(|()| f.write_all(c))
                .map_err(SpoolError::io("write", &tmp))?;
        }
        injected(Step::Fsync)
            .and_then(|()| f.sync_all())
            .map_err(SpoolError::io("fsync", &tmp))?;
        drop(f);
        injected(Step::Rename)
            .and_then(|()| rename(&tmp, dest))
            .map_err(SpoolError::io("rename into place", dest))?;
        renamed = true;
        let synced = injected(Step::SyncDir)
            .map_err(SpoolError::io("fsync directory", dest))
            .and_then(|()| sync_parent(dest));
        match synced {
            // The directory vanished between our rename and its fsync: the reader uploaded,
            // acknowledged and removed the entry (a close record removes its whole session
            // directory) in that instant. There is nothing left to make durable.
            Err(SpoolError::Io { source, .. }) if source.kind() == std::io::ErrorKind::NotFound => {
                Ok(())
            }
            other => other,
        }
    })();
    if result.is_err() {
        // Best effort: the temp name is ours alone; if this fails too, the next writer start-up
        // removes it.
        let _ = fs::remove_file(&tmp);
        if renamed {
            // Published but not known durable: withdrawn, so the name never denotes an entry
            // the caller was told failed (its chain head did not advance, and it may commit
            // this name again with other bytes). A reader that copied it in this instant
            // would hold an entry that is committed again later with other bytes; that needs a
            // directory fsync failing, i.e. a disk failing, not merely full.
            let _ = fs::remove_file(dest);
            let _ = sync_parent(dest);
        }
    }
    result
}

/// Options for a file of the spool: writable, and readable by its owner only (0600; the
/// recorder and uploader run as the same privileged user, and the spool holds the recording).
pub(crate) fn private_file() -> OpenOptions {
    let mut o = OpenOptions::new();
    o.write(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt;
        o.mode(0o600);
    }
    o
}

/// Creates `path` and its missing parents, each folder created 0700.
pub(crate) fn create_private_dir_all(path: &Path) -> std::io::Result<()> {
    private_dir_builder(true).create(path)
}

/// Creates the folder `path` (0700); fails if it exists.
pub(crate) fn create_private_dir(path: &Path) -> std::io::Result<()> {
    private_dir_builder(false).create(path)
}

fn private_dir_builder(recursive: bool) -> fs::DirBuilder {
    let mut b = fs::DirBuilder::new();
    b.recursive(recursive);
    #[cfg(unix)]
    {
        use std::os::unix::fs::DirBuilderExt;
        b.mode(0o700);
    }
    b
}

/// Makes a rename, creation or removal inside `path`'s parent directory durable.
pub(crate) fn sync_parent(path: &Path) -> Result<(), SpoolError> {
    match path.parent() {
        Some(dir) => sync_dir(dir),
        None => Ok(()),
    }
}

/// fsyncs a directory so the entries it names survive a power cut.
#[cfg(unix)]
pub(crate) fn sync_dir(dir: &Path) -> Result<(), SpoolError> {
    File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(SpoolError::io("fsync directory", dir))
}

/// Windows cannot fsync a directory through `std::fs::File`; the rename itself is made durable
/// instead ([`rename`] with MOVEFILE_WRITE_THROUGH).
#[cfg(not(unix))]
pub(crate) fn sync_dir(_dir: &Path) -> Result<(), SpoolError> {
    Ok(())
}

/// Renames over an existing file, atomically. On Unix the caller fsyncs the directory after.
#[cfg(not(windows))]
fn rename(from: &Path, to: &Path) -> io::Result<()> {
    fs::rename(from, to)
}

/// Renames over an existing file, atomically, and returns only once the rename is on disk:
/// `MoveFileExW` with MOVEFILE_WRITE_THROUGH (what `std::fs::rename` calls, without that flag).
#[cfg(windows)]
#[allow(unsafe_code)]
fn rename(from: &Path, to: &Path) -> io::Result<()> {
    use std::os::windows::ffi::OsStrExt;
    use windows_sys::Win32::Storage::FileSystem::{
        MOVEFILE_REPLACE_EXISTING, MOVEFILE_WRITE_THROUGH, MoveFileExW,
    };
    let wide = |p: &Path| -> Vec<u16> { p.as_os_str().encode_wide().chain(Some(0)).collect() };
    let (f, t) = (wide(from), wide(to));
    // SAFETY: two NUL-terminated UTF-16 paths that outlive the call.
    let ok = unsafe {
        MoveFileExW(
            f.as_ptr(),
            t.as_ptr(),
            MOVEFILE_REPLACE_EXISTING | MOVEFILE_WRITE_THROUGH,
        )
    };
    if ok == 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

/// Removes a file; a file that is already gone is not an error (removal is idempotent).
pub(crate) fn remove_file(path: &Path) -> Result<bool, SpoolError> {
    match fs::remove_file(path) {
        Ok(()) => Ok(true),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(false),
        Err(e) => Err(SpoolError::Io {
            op: "remove",
            path: path.to_owned(),
            source: e,
        }),
    }
}
