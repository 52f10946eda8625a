//! Wakes the uploader when the recorder commits something, so a chunk starts uploading within
//! milliseconds of its commit instead of at the next poll.
//!
//! Commits are renames into `sessions/<id>/` (and new session directories), which inotify (or
//! the platform's equivalent, through `notify`) reports. The uploader also rescans on a slow
//! timer, so a lost notification (or a platform without one) delays an upload; it never loses
//! it.

use std::path::Path;

use notify::event::{ModifyKind, RenameMode};
use notify::{Event, EventKind, RecommendedWatcher, RecursiveMode, Watcher};
use tokio::sync::mpsc;

/// Watches `dir` recursively; every commit-like event sends a wake-up on `wake`. The channel's
/// full policy is drop: a wake-up already pending covers this one. Keep the watcher alive.
pub(crate) fn watch(dir: &Path, wake: mpsc::Sender<()>) -> notify::Result<RecommendedWatcher> {
    let mut watcher = notify::recommended_watcher(move |res: notify::Result<Event>| match res {
        Ok(ev) if is_commit(&ev) => {
            let _ = wake.try_send(());
        }
        Ok(_) => {}
        Err(e) => {
            tracing::warn!(error = %e, "spool watcher error; relying on the periodic rescan");
            let _ = wake.try_send(());
        }
    })?;
    watcher.watch(dir, RecursiveMode::Recursive)?;
    Ok(watcher)
}

/// Whether an event may be a commit (a `.jrs` entry or a session directory appearing). The
/// uploader's own acknowledgements (renames to `.sent`, deletions) are not, so they do not wake
/// it in a loop.
fn is_commit(ev: &Event) -> bool {
    let lands_entry = || {
        ev.paths
            .last()
            .is_some_and(|p| p.extension().is_some_and(|e| e == "jrs"))
    };
    match ev.kind {
        EventKind::Create(_) => true,
        EventKind::Modify(ModifyKind::Name(RenameMode::To | RenameMode::Both)) => lands_entry(),
        EventKind::Modify(ModifyKind::Name(RenameMode::Any | RenameMode::Other)) => true,
        EventKind::Any | EventKind::Other => true,
        _ => false,
    }
}
