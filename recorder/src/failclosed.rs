//! Failing closed: when recording cannot run, end the elevation instead of letting it go on
//! unrecorded.
//!
//! Off by default, because it takes rights away from someone in the middle of their work (a
//! full disk would end an administrator's emergency fix). Where the rule is "no recording, no
//! elevation", `[fail_closed]` turns it on: once the spool has been full, or the screen
//! unreadable, for longer than its bound, the recorder removes the user from the admin group in
//! the group file (as a JIT controller's end would; the group watcher then ends the session as
//! usual) and runs the configured lock command, and records that it did (a `fail_closed` event,
//! and the close record's `stopped_by`). Both happen at most once per session.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::time::Duration;

/// How long the lock command may run before it is killed.
pub const LOCK_COMMAND_LIMIT: Duration = Duration::from_secs(5);

/// The `[fail_closed]` settings, resolved.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FailClosed {
    /// How long the spool may stay full before the elevation is ended.
    pub spool_full: Duration,
    /// How long the screen may stay unreadable before the elevation is ended.
    pub capture_lost: Duration,
    /// The group file and the admin group the user is removed from.
    pub group_file: PathBuf,
    pub group: String,
    /// A command run as well (e.g. `loginctl lock-sessions`); empty: none.
    pub lock_command: Vec<String>,
}

impl FailClosed {
    /// Ends `user`'s elevation; says what it did, and what failed, for the record.
    pub fn end_elevation(&self, user: &str) -> String {
        let mut done = match remove_member(&self.group_file, &self.group, user) {
            Ok(true) => format!(
                "removed {user} from group {} in {}",
                self.group,
                self.group_file.display()
            ),
            Ok(false) => format!(
                "{user} was not a member of group {} in {}",
                self.group,
                self.group_file.display()
            ),
            Err(e) => format!(
                "could NOT remove {user} from group {} in {}: {e}",
                self.group,
                self.group_file.display()
            ),
        };
        if let Some((program, args)) = self.lock_command.split_first() {
            let shown = self.lock_command.join(" ");
            match std::process::Command::new(program)
                .args(args)
                .stdin(std::process::Stdio::null())
                .spawn()
            {
                Ok(mut child) => {
                    // Bounded: a lock command that hangs must not hold up the recording.
                    let started = std::time::Instant::now();
                    let status = loop {
                        match child.try_wait() {
                            Ok(Some(s)) => break Some(s),
                            Ok(None) if started.elapsed() < LOCK_COMMAND_LIMIT => {
                                std::thread::sleep(Duration::from_millis(20));
                            }
                            _ => {
                                let _ = child.kill();
                                let _ = child.wait();
                                break None;
                            }
                        }
                    };
                    match status {
                        Some(s) if s.success() => done.push_str(&format!("; ran `{shown}`")),
                        Some(s) => done.push_str(&format!("; `{shown}` failed ({s})")),
                        None => done.push_str(&format!(
                            "; `{shown}` did not finish within {} s and was killed",
                            LOCK_COMMAND_LIMIT.as_secs()
                        )),
                    }
                }
                Err(e) => done.push_str(&format!("; could NOT run `{program}`: {e}")),
            }
        }
        done
    }
}

/// Removes `user` from the member list of `group` in the group file at `path`, keeping every
/// other byte, by writing a new file beside it and renaming it over (as `gpasswd` does), with the
/// old file's mode. Returns whether the user was a member.
pub fn remove_member(path: &Path, group: &str, user: &str) -> std::io::Result<bool> {
    let text = std::fs::read_to_string(path)?;
    let mut removed = false;
    let mut out = String::with_capacity(text.len());
    for line in text.split_inclusive('\n') {
        let (body, end) = match line.strip_suffix('\n') {
            Some(b) => (b, "\n"),
            None => (line, ""),
        };
        // The group's line as every reader of the file sees it (`crate::accounts`); its
        // other fields are kept byte for byte.
        let fields: Vec<&str> = body.split(':').collect();
        if crate::accounts::Group::parse(body).is_some_and(|g| g.name == group) {
            let members: Vec<&str> = fields[3]
                .split(',')
                .filter(|m| !m.is_empty())
                .filter(|m| {
                    let me = m.trim() == user;
                    removed |= me;
                    !me
                })
                .collect();
            let rest: String = fields[4..].iter().map(|f| format!(":{f}")).collect();
            out.push_str(&format!(
                "{}:{}:{}:{}{rest}{end}",
                fields[0],
                fields[1],
                fields[2],
                members.join(",")
            ));
        } else {
            out.push_str(line);
        }
    }
    if !removed {
        return Ok(false);
    }
    let dir = path.parent().unwrap_or(Path::new("."));
    let name = path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_else(|| "group".into());
    let tmp = dir.join(format!(".{name}.jitrec-{}", std::process::id()));
    let meta = std::fs::metadata(path)?;
    let result = (|| {
        // A new file (never one that is there, or a link planted under this name).
        let mut f = std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .open(&tmp)?;
        f.write_all(out.as_bytes())?;
        f.set_permissions(meta.permissions())?;
        #[cfg(unix)]
        {
            use std::os::unix::fs::MetadataExt;
            std::os::unix::fs::fchown(&f, Some(meta.uid()), Some(meta.gid()))?;
        }
        f.sync_all()?;
        std::fs::rename(&tmp, path)
    })();
    if result.is_err() {
        let _ = std::fs::remove_file(&tmp);
    }
    result.map(|()| true)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_the_user_leaves_only_the_group() {
        let tmp = tempfile::tempdir().unwrap();
        let g = tmp.path().join("group");
        let before =
            "# comment sudo:x:27:alice\nroot:x:0:\nsudo:x:27:bob,alice,carol\nadm:x:4:alice\n";
        std::fs::write(&g, before).unwrap();
        assert!(remove_member(&g, "sudo", "alice").unwrap());
        assert_eq!(
            std::fs::read_to_string(&g).unwrap(),
            "# comment sudo:x:27:alice\nroot:x:0:\nsudo:x:27:bob,carol\nadm:x:4:alice\n"
        );
        assert!(
            !remove_member(&g, "sudo", "alice").unwrap(),
            "no longer a member"
        );
        assert!(!crate::accounts::is_member(
            &std::fs::read_to_string(&g).unwrap(),
            "sudo",
            "alice"
        ));
    }
}
