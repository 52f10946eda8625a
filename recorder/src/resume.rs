//! Picking up an elevation across the recorder's own restarts.
//!
//! An administrator who kills the recorder must not end their recording by it: the service
//! manager restarts the recorder, and if the elevation is still on, recording starts again at
//! once, in a new session that names the interrupted one (`continues` in its header), so the
//! player shows one elevation with a hole. The group trigger says by itself whether the user is
//! still elevated; a JIT controller's `jit start` does not repeat itself, so the recorder keeps
//! the elevation it is recording, with who authorised it, as a spool state record
//! ([`jitrec_spool::StateRecord::Jit`]) from its start to its stop, and a restarted recorder
//! resumes it without a new `jit start`.

use std::time::{Duration, Instant};

use jitrec_format::{SessionId, Trigger};
use jitrec_spool::{SpoolWriter, StateRecord};
use serde::{Deserialize, Serialize};

/// A start this long after the recorder's own start still continues the interrupted session
/// (the group watcher reports a membership it finds at start-up within a poll).
pub const RESUME_WINDOW: Duration = Duration::from_secs(10);

/// The elevation being recorded, as kept in the spool.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SavedJit {
    pub user: String,
    pub trigger: Trigger,
    pub authorized_by: Option<String>,
    pub reason: Option<String>,
    /// The session recording it.
    pub session: SessionId,
    /// The kernel's boot id when it was saved: an elevation is not resumed across a reboot (a
    /// controller's stop may have been missed, and nothing is captured outside JIT).
    #[serde(default)]
    pub boot_id: Option<String>,
}

/// This boot's id (Linux: `/proc/sys/kernel/random/boot_id`; `None` elsewhere).
pub fn boot_id() -> Option<String> {
    std::fs::read_to_string("/proc/sys/kernel/random/boot_id")
        .ok()
        .map(|s| s.trim().to_owned())
        .filter(|s| !s.is_empty())
}

/// What a restarted recorder picks up: the elevation that was being recorded when the last run
/// died, and when this run began.
#[derive(Debug, Clone)]
pub struct Resume {
    pub saved: SavedJit,
    pub since: Instant,
}

impl Resume {
    /// Whether a start of `user` now continues the saved elevation.
    pub fn continues(&self, user: &str) -> bool {
        self.saved.user == user && self.since.elapsed() <= RESUME_WINDOW
    }
}

/// Saves the elevation `saved` (a failure is logged: the recording goes on, only a restart
/// would not resume it).
pub fn save(spool: &SpoolWriter, saved: &SavedJit) {
    let result = serde_json::to_vec(saved)
        .map_err(|e| e.to_string())
        .and_then(|b| {
            spool
                .save_state(StateRecord::Jit, &b)
                .map_err(|e| e.to_string())
        });
    if let Err(e) = result {
        tracing::error!(error = %e, "cannot save the JIT state; a restarted recorder would not resume this elevation");
    }
}

/// Forgets the saved elevation (it ended).
pub fn clear(spool: &SpoolWriter) {
    if let Err(e) = spool.clear_state(StateRecord::Jit) {
        tracing::warn!(error = %e, "cannot remove the saved JIT state");
    }
}

/// The elevation the last run was recording, if it left one during this boot.
pub fn load(spool: &SpoolWriter) -> Option<SavedJit> {
    match spool.load_state(StateRecord::Jit) {
        Ok(Some(bytes)) => match serde_json::from_slice::<SavedJit>(&bytes) {
            Ok(s) if s.boot_id.is_some() && s.boot_id != boot_id() => {
                tracing::warn!(user = %s.user, session = %s.session, "the saved JIT is from before a reboot; not resuming it");
                clear(spool);
                None
            }
            Ok(s) => Some(s),
            Err(e) => {
                tracing::error!(error = %e, "the saved JIT state is unreadable; not resuming it");
                None
            }
        },
        Ok(None) => None,
        Err(e) => {
            tracing::error!(error = %e, "cannot read the saved JIT state; not resuming it");
            None
        }
    }
}
