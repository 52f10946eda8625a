//! The Unix trigger: JIT is active exactly while the user is a member of the admin group.
//!
//! [`GroupWatcher`] reads the group database file (`/etc/group` by default; tests point it at
//! their own) with `crate::accounts`, the one reader of account files, and reports membership
//! changes as [`JitEvent`]s. It watches the file's directory with inotify (through `notify`)
//! because tools like `usermod` and `gpasswd` replace the file by rename, which a watch on the
//! file itself would miss; a poll every second covers platforms or filesystems where
//! notification fails.
//!
//! Membership means being listed in the group's member field; primary-group membership (the gid
//! in `/etc/passwd`) is not how JIT tools grant admin rights and is not considered.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc::{self, Receiver, RecvTimeoutError, Sender};
use std::time::Duration;

use notify::{RecursiveMode, Watcher};

use super::JitEvent;
use crate::accounts::is_member;

/// Default fallback poll: the detection bound where inotify is unavailable.
pub const DEFAULT_POLL: Duration = Duration::from_secs(1);

/// Watches a group file for one user's membership of one group.
#[derive(Debug, Clone)]
pub struct GroupWatcher {
    pub path: PathBuf,
    pub group: String,
    pub user: String,
    pub poll: Duration,
}

impl GroupWatcher {
    /// Current membership; `None` if the file cannot be read (mid-replacement, say), in which
    /// case the caller keeps the last known state rather than flap.
    fn member_now(&self) -> Option<bool> {
        match std::fs::read_to_string(&self.path) {
            Ok(text) => Some(is_member(&text, &self.group, &self.user)),
            Err(e) => {
                tracing::debug!(path = %self.path.display(), error = %e, "cannot read the group file");
                None
            }
        }
    }

    /// Runs until `stop` is set, sending a `Start` when the user joins the group and a `Stop`
    /// when they leave. If the user is a member at start-up, that is a `Start` too.
    pub fn run(self, events: Sender<JitEvent>, stop: Arc<AtomicBool>) {
        let (wake_tx, wake_rx): (Sender<()>, Receiver<()>) = mpsc::channel();
        let dir = self
            .path
            .parent()
            .map(Path::to_owned)
            .unwrap_or_else(|| ".".into());
        let watched = self.path.clone();
        let watcher = notify::recommended_watcher(move |res: notify::Result<notify::Event>| {
            // Errors wake us too: better a needless re-read than a missed change.
            if res
                .as_ref()
                .map_or(true, |e| e.paths.iter().any(|p| p == &watched))
            {
                let _ = wake_tx.send(());
            }
        })
        .and_then(|mut w| w.watch(&dir, RecursiveMode::NonRecursive).map(|()| w));
        if let Err(e) = &watcher {
            tracing::warn!(error = %e, poll = ?self.poll, "cannot watch the group file; polling it");
        }
        let mut member = false;
        while !stop.load(Ordering::SeqCst) {
            let now = self.member_now().unwrap_or(member);
            if now != member {
                member = now;
                let ev = if now {
                    JitEvent::Start {
                        user: self.user.clone(),
                        trigger: jitrec_format::Trigger::GroupMembership,
                        authorized_by: None,
                        reason: None,
                    }
                } else {
                    JitEvent::Stop {
                        cause: jitrec_format::StopCause {
                            by: jitrec_format::StopBy::GroupChange,
                            peer: None,
                            // Who changed the group is not in the group file; the process
                            // events of the session show the command, if there was one.
                            recorded_user: None,
                            detail: format!("{} left group {}", self.user, self.group),
                        },
                        reply: None,
                    }
                };
                tracing::info!(user = %self.user, group = %self.group, member, "admin group membership changed");
                if events.send(ev).is_err() {
                    return;
                }
            }
            match wake_rx.recv_timeout(self.poll) {
                Ok(()) | Err(RecvTimeoutError::Timeout) => {}
                Err(RecvTimeoutError::Disconnected) => std::thread::sleep(self.poll),
            }
        }
        drop(watcher);
    }
}
