//! The local control socket: how a JIT controller says who authorised an elevation, and how it
//! makes sure the recording is safe before it logs the user off.
//!
//! One JSON request per connection, one JSON response:
//! `{"cmd":"start","user":"alice","authorized_by":"bob","reason":"INC-1"}` answers once the
//! session exists; `{"cmd":"stop"}` answers only after the session's last chunk and close record
//! are committed (fsynced), so a log-off or reboot right after loses nothing;
//! `{"cmd":"status"}` says whether a session is being recorded.
//!
//! [`respond`] is the protocol, shared by both backends: on Unix a socket that only root, the
//! recorder's own user and members of the configured control group may use (`unix`); on
//! Windows a named pipe whose access list admits only LocalSystem and elevated Administrators
//! (`windows`).

#[cfg(unix)]
mod unix;
#[cfg(windows)]
pub mod windows;

use std::io::{BufRead, BufReader, Read, Write};
use std::sync::mpsc::{RecvTimeoutError, Sender};
use std::sync::{Condvar, Mutex, PoisonError};
use std::time::{Duration, Instant};

use jitrec_format::{SessionId, StopBy, StopCause, StopPeer, Trigger};
use serde::{Deserialize, Serialize};

use crate::service::RecorderEvent;
use crate::trigger::{JitEvent, StopReply};
#[cfg(unix)]
pub use unix::{Access, bind, peer_of, request, serve};

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

#[derive(Debug, Default)]
struct Status {
    current: Option<SessionId>,
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
            RecorderEvent::Done(_) => st.current = None,
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

pub(crate) fn reply(stream: &mut impl Write, r: &Response) {
    if let Ok(mut text) = serde_json::to_vec(r) {
        text.push(b'\n');
        let _ = stream.write_all(&text);
    }
}

pub(crate) fn answer(ok: bool, message: impl Into<String>) -> Response {
    Response {
        ok,
        message: message.into(),
        session: None,
        chunks: None,
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
            let detail = format!(
                "`jit stop` on the control socket by {} (pid {}, {})",
                peer.user.name,
                peer.pid
                    .map_or_else(|| "unknown".to_owned(), |p| p.to_string()),
                peer.exe.as_deref().unwrap_or("executable unknown"),
            );
            // The answer comes from the recorder loop that takes the stop, not from a look at
            // the status first: a session whose start is under way when the stop arrives takes
            // it and is closed, and the controller must hear that, not "not recording".
            let (reply, answered) = StopReply::new();
            let sent = jit.send(JitEvent::Stop {
                cause: StopCause {
                    by: StopBy::ControlCommand,
                    peer: Some(peer),
                    // The recorder, which knows the session's user, decides.
                    recorded_user: None,
                    detail,
                },
                reply: Some(reply),
            });
            if sent.is_err() {
                return answer(false, "the recorder is shutting down");
            }
            match answered.recv_timeout(STOP_WAIT) {
                Ok(Some(d)) => Response {
                    session: Some(d.session),
                    chunks: Some(d.chunks),
                    ..answer(
                        true,
                        format!(
                            "session {} closed and committed ({} chunks)",
                            d.session, d.chunks
                        ),
                    )
                },
                Ok(None) => answer(false, "not recording"),
                Err(RecvTimeoutError::Timeout) => {
                    let message = match shared.current() {
                        Some(s) => {
                            format!("session {s} did not close in time; see the recorder's log")
                        }
                        None => "the stop was not carried out in time; see the recorder's log"
                            .to_owned(),
                    };
                    Response {
                        session: shared.current(),
                        ..answer(false, message)
                    }
                }
                Err(RecvTimeoutError::Disconnected) => answer(
                    false,
                    "the recorder stopped, or failed to close the session, before it could confirm the stop; see the recorder's log",
                ),
            }
        }
    }
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
