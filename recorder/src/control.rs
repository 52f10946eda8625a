//! The local control socket: how a JIT controller says who authorised an elevation, and how it
//! makes sure the recording is safe before it logs the user off.
//!
//! One JSON request per connection, one JSON response:
//! `{"cmd":"start","user":"alice","authorized_by":"bob","reason":"INC-1"}` answers once the
//! session exists; `{"cmd":"stop"}` answers only after the session's last chunk and close record
//! are committed (fsynced), so a log-off or reboot right after loses nothing;
//! `{"cmd":"status"}` says whether a session is being recorded.
//!
//! On Linux it is a Unix socket: only root, the recorder's own user, and members of the
//! configured control group may use it. Peers are identified by the kernel (SO_PEERCRED),
//! whatever the socket file's mode; a refused peer is logged, since an attempt to stop a
//! recording is a security event. On Windows the same requests travel over a named pipe whose
//! access list admits only LocalSystem and elevated Administrators
//! ([`crate::windows::pipe`]). [`respond`] is the protocol, shared by both.

use std::io::{BufRead, BufReader, Read, Write};
#[cfg(unix)]
use std::os::unix::net::{UnixListener, UnixStream};
#[cfg(unix)]
use std::path::{Path, PathBuf};
#[cfg(unix)]
use std::sync::Arc;
use std::sync::mpsc::Sender;
use std::sync::{Condvar, Mutex, PoisonError};
use std::time::{Duration, Instant};

use jitrec_format::{SessionId, StopBy, StopCause, StopPeer, Trigger};
use serde::{Deserialize, Serialize};

use crate::jit::JitEvent;
use crate::service::{RecorderEvent, SessionDone};

/// A request to the recorder.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "cmd", rename_all = "snake_case", deny_unknown_fields)]
pub enum Request {
    Start {
        user: String,
        #[serde(default)]
        authorized_by: Option<String>,
        #[serde(default)]
        reason: Option<String>,
    },
    Stop,
    Status,
}

/// The recorder's answer.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Response {
    pub ok: bool,
    pub message: String,
    #[serde(default)]
    pub session: Option<SessionId>,
    #[serde(default)]
    pub chunks: Option<u64>,
}

/// How long `start` waits for the session to exist.
const START_WAIT: Duration = Duration::from_secs(10);
/// How long `stop` waits for the close record (the last chunk's encode and fsync).
const STOP_WAIT: Duration = Duration::from_secs(60);
/// Largest request accepted.
pub(crate) const MAX_REQUEST: u64 = 64 * 1024;
/// How long a peer may take to send its request.
#[cfg(unix)]
const READ_TIMEOUT: Duration = Duration::from_secs(5);

#[derive(Debug, Default)]
struct Status {
    current: Option<SessionId>,
    /// Recently closed sessions, newest last.
    done: Vec<SessionDone>,
}

/// What the socket handlers know of the recorder, fed by its observer.
#[derive(Debug, Default)]
pub struct Shared {
    status: Mutex<Status>,
    changed: Condvar,
}

impl Shared {
    /// Feeds a recorder event (pass this to `Recorder::run`).
    pub fn observe(&self, ev: RecorderEvent) {
        let mut st = self.status.lock().unwrap_or_else(PoisonError::into_inner);
        match ev {
            RecorderEvent::Started(s) => st.current = Some(s),
            RecorderEvent::Done(d) => {
                st.current = None;
                st.done.push(d);
                let excess = st.done.len().saturating_sub(16);
                st.done.drain(..excess);
            }
        }
        self.changed.notify_all();
    }

    fn current(&self) -> Option<SessionId> {
        self.status
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .current
    }

    fn wait<T>(&self, limit: Duration, mut f: impl FnMut(&Status) -> Option<T>) -> Option<T> {
        let deadline = Instant::now() + limit;
        let mut st = self.status.lock().unwrap_or_else(PoisonError::into_inner);
        loop {
            if let Some(v) = f(&st) {
                return Some(v);
            }
            let left = deadline.checked_duration_since(Instant::now())?;
            st = self
                .changed
                .wait_timeout(st, left)
                .unwrap_or_else(PoisonError::into_inner)
                .0;
        }
    }
}

/// Who may use the socket besides root and the recorder's own user.
#[cfg(unix)]
#[derive(Debug, Clone)]
pub struct Access {
    pub group: Option<String>,
    pub group_file: PathBuf,
    pub passwd_file: PathBuf,
}

/// The gid and members of group `name` in a group file.
#[cfg(unix)]
pub fn lookup_group(group_file: &Path, name: &str) -> Option<(u32, Vec<String>)> {
    let text = std::fs::read_to_string(group_file).ok()?;
    text.lines().find_map(|l| {
        let f: Vec<&str> = l.split(':').collect();
        (f.len() >= 4 && f[0] == name).then(|| {
            let gid = f[2].parse().ok()?;
            Some((gid, f[3].split(',').map(|m| m.trim().to_owned()).collect()))
        })?
    })
}

/// The name of `uid` in a passwd file.
#[cfg(unix)]
pub fn user_name(passwd_file: &Path, uid: u32) -> Option<String> {
    let text = std::fs::read_to_string(passwd_file).ok()?;
    text.lines().find_map(|l| {
        let f: Vec<&str> = l.split(':').collect();
        (f.len() >= 3 && f[2].parse() == Ok(uid)).then(|| f[0].to_owned())
    })
}

/// The uid of user `name` in a passwd file.
#[cfg(unix)]
pub fn user_id(passwd_file: &Path, name: &str) -> Option<u32> {
    let text = std::fs::read_to_string(passwd_file).ok()?;
    text.lines().find_map(|l| {
        let f: Vec<&str> = l.split(':').collect();
        (f.len() >= 3 && f[0] == name)
            .then(|| f[2].parse().ok())
            .flatten()
    })
}

#[cfg(unix)]
impl Access {
    fn allows(&self, uid: u32, gid: u32) -> bool {
        if uid == 0 || uid == rustix::process::geteuid().as_raw() {
            return true;
        }
        let Some(group) = &self.group else {
            return false;
        };
        let Some((group_gid, members)) = lookup_group(&self.group_file, group) else {
            return false;
        };
        gid == group_gid || user_name(&self.passwd_file, uid).is_some_and(|n| members.contains(&n))
    }

    /// The gid of the control group, for the socket file's group.
    pub fn gid(&self) -> Option<u32> {
        lookup_group(&self.group_file, self.group.as_deref()?).map(|(g, _)| g)
    }
}

/// Binds the socket: removes a stale one, creates the directory, sets mode and group.
#[cfg(unix)]
pub fn bind(path: &Path, mode: u32, group_gid: Option<u32>) -> std::io::Result<UnixListener> {
    use std::os::unix::fs::{FileTypeExt, PermissionsExt};
    if let Ok(meta) = std::fs::symlink_metadata(path) {
        if meta.file_type().is_socket() {
            std::fs::remove_file(path)?;
        } else {
            return Err(std::io::Error::new(
                std::io::ErrorKind::AlreadyExists,
                format!("{} exists and is not a socket", path.display()),
            ));
        }
    }
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir)?;
    }
    let listener = UnixListener::bind(path)?;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode))?;
    if let Some(gid) = group_gid {
        std::os::unix::fs::chown(path, None, Some(gid))?;
    }
    Ok(listener)
}

/// Serves the socket forever (run it on its own thread).
#[cfg(unix)]
pub fn serve(listener: UnixListener, jit: Sender<JitEvent>, shared: Arc<Shared>, access: Access) {
    for conn in listener.incoming() {
        match conn {
            Ok(stream) => {
                let (jit, shared, access) = (jit.clone(), Arc::clone(&shared), access.clone());
                std::thread::spawn(move || handle(stream, &jit, &shared, &access));
            }
            Err(e) => tracing::warn!(error = %e, "control socket accept failed"),
        }
    }
}

pub(crate) fn reply(stream: &mut impl Write, r: &Response) {
    if let Ok(mut text) = serde_json::to_vec(r) {
        text.push(b'\n');
        let _ = stream.write_all(&text);
    }
}

fn answer(ok: bool, message: impl Into<String>) -> Response {
    Response {
        ok,
        message: message.into(),
        session: None,
        chunks: None,
    }
}

#[cfg(unix)]
fn handle(mut stream: UnixStream, jit: &Sender<JitEvent>, shared: &Shared, access: &Access) {
    let cred = match rustix::net::sockopt::socket_peercred(&stream) {
        Ok(c) => c,
        Err(e) => {
            tracing::warn!(error = %e, "cannot identify a control socket peer; refused");
            return;
        }
    };
    let (uid, gid, pid) = (
        cred.uid.as_raw(),
        cred.gid.as_raw(),
        cred.pid.as_raw_nonzero(),
    );
    // Read the request before answering, even a refusal: a client whose request is cut off
    // sees a broken pipe instead of the reason. Bounded in size and time.
    let _ = stream.set_read_timeout(Some(READ_TIMEOUT));
    let mut line = String::new();
    let read = BufReader::new((&stream).take(MAX_REQUEST)).read_line(&mut line);
    if !access.allows(uid, gid) {
        tracing::warn!(
            uid,
            gid,
            pid,
            "control socket request refused: peer not authorised"
        );
        reply(
            &mut stream,
            &answer(
                false,
                format!("permission denied: uid {uid} may not control jitrec-recorder"),
            ),
        );
        return;
    }
    let req: Request = match read
        .map_err(|e| e.to_string())
        .and_then(|_| serde_json::from_str(&line).map_err(|e| e.to_string()))
    {
        Ok(r) => r,
        Err(e) => {
            reply(&mut stream, &answer(false, format!("bad request: {e}")));
            return;
        }
    };
    tracing::info!(uid, pid, request = ?req, "control request");
    let peer = peer_of(uid, u32::try_from(pid.get()).ok(), &access.passwd_file);
    let resp = respond(req, peer, jit, shared);
    reply(&mut stream, &resp);
}

/// The process behind a control connection, as evidence: its account, executable and the
/// account that logged in to its session (the audit login uid, unchanged by `sudo` and `su`, so
/// a recorded admin who runs `sudo jitrec-recorder jit stop` is still named).
#[cfg(unix)]
pub fn peer_of(uid: u32, pid: Option<u32>, passwd_file: &Path) -> StopPeer {
    let user = |uid: u32| jitrec_format::UserRef {
        name: user_name(passwd_file, uid).unwrap_or_else(|| format!("uid {uid}")),
        id: uid.to_string(),
    };
    let proc_dir = pid.map(|p| PathBuf::from(format!("/proc/{p}")));
    let exe = proc_dir
        .as_ref()
        .and_then(|d| std::fs::read_link(d.join("exe")).ok())
        .map(|p| p.to_string_lossy().into_owned());
    // 4294967295 is "no login uid" (a daemon, or a kernel without audit).
    let login_user = proc_dir
        .as_ref()
        .and_then(|d| std::fs::read_to_string(d.join("loginuid")).ok())
        .and_then(|t| t.trim().parse::<u32>().ok())
        .filter(|&l| l != u32::MAX)
        .map(user);
    StopPeer {
        user: user(uid),
        pid,
        exe,
        login_user,
    }
}

/// Carries out one request from `peer` (named in logs and, for a stop, in the recording).
pub fn respond(req: Request, peer: StopPeer, jit: &Sender<JitEvent>, shared: &Shared) -> Response {
    match req {
        Request::Status => match shared.current() {
            Some(s) => Response {
                session: Some(s),
                ..answer(true, format!("recording session {s}"))
            },
            None => answer(true, "idle"),
        },
        Request::Start {
            user,
            authorized_by,
            reason,
        } => {
            if let Some(s) = shared.current() {
                Response {
                    session: Some(s),
                    ..answer(false, format!("already recording session {s}"))
                }
            } else if jit
                .send(JitEvent::Start {
                    user,
                    trigger: Trigger::ControlCommand,
                    authorized_by,
                    reason,
                })
                .is_err()
            {
                answer(false, "the recorder is shutting down")
            } else {
                match shared.wait(START_WAIT, |st| st.current) {
                    Some(s) => Response {
                        session: Some(s),
                        ..answer(true, format!("recording session {s}"))
                    },
                    None => answer(
                        false,
                        "the session did not start in time; see the recorder's log",
                    ),
                }
            }
        }
        Request::Stop => {
            // Sent even when no session exists yet: it also cancels a start still waiting for
            // the screen to become capturable (the idle recorder ignores it otherwise).
            let current = shared.current();
            let detail = format!(
                "`jit stop` on the control socket by {} (pid {}, {})",
                peer.user.name,
                peer.pid
                    .map_or_else(|| "unknown".to_owned(), |p| p.to_string()),
                peer.exe.as_deref().unwrap_or("executable unknown"),
            );
            let sent = jit.send(JitEvent::Stop {
                cause: StopCause {
                    by: StopBy::ControlCommand,
                    peer: Some(peer),
                    // The recorder, which knows the session's user, decides.
                    recorded_user: None,
                    detail,
                },
            });
            match (current, sent) {
                (_, Err(_)) => answer(false, "the recorder is shutting down"),
                (None, Ok(())) => answer(false, "not recording"),
                (Some(s), Ok(())) => match shared.wait(STOP_WAIT, |st| {
                    st.done.iter().find(|d| d.session == s).cloned()
                }) {
                    Some(d) => Response {
                        session: Some(s),
                        chunks: Some(d.chunks),
                        ..answer(
                            true,
                            format!("session {s} closed and committed ({} chunks)", d.chunks),
                        )
                    },
                    None => answer(
                        false,
                        format!("session {s} did not close in time; see the recorder's log"),
                    ),
                },
            }
        }
    }
}

/// Sends one request and returns the answer (the `jitrec-recorder jit ...` client).
#[cfg(unix)]
pub fn request(socket: &Path, req: &Request) -> std::io::Result<Response> {
    exchange(UnixStream::connect(socket)?, req)
}

/// Writes `req` on `stream` and reads the answer.
pub(crate) fn exchange(mut stream: impl Read + Write, req: &Request) -> std::io::Result<Response> {
    let mut text = serde_json::to_vec(req).map_err(std::io::Error::other)?;
    text.push(b'\n');
    stream.write_all(&text)?;
    let mut line = String::new();
    BufReader::new(stream.take(MAX_REQUEST)).read_line(&mut line)?;
    serde_json::from_str(&line).map_err(|e| {
        std::io::Error::new(
            std::io::ErrorKind::InvalidData,
            format!("bad answer {line:?}: {e}"),
        )
    })
}
