//! Threads of a session, joined with a deadline.
//!
//! A session's threads (the capture thread, the event sources) can be stuck in a call that does
//! not return: an X request to a server that stopped answering (a frozen or suspended X server),
//! a read of a hung device. A JIT stop must not wait for them, so every join of a session has a
//! deadline: [`Bounded::join_within`] waits that long for the thread to end and otherwise logs
//! at ERROR and detaches it.
//!
//! Detaching is safe because a session thread owns nothing the session's close needs. It holds
//! its own source (an X connection, a netlink socket), its session's stop flag, the sending
//! end of a channel whose receiving end the session drops when it stops, and the service's
//! doorbell (`crate::doorbell`). The chunker, the spool writer and the encoder live on the
//! encoding thread, which goes on to close the session. If the stuck call ever returns, the
//! thread finds its stop flag set (or its channel closed) and ends, releasing what it holds; it
//! cannot reach a later session, which has its own flag, channel and thread: its last ring of
//! the doorbell at most wakes a later session's loop for nothing. While stuck it costs only its
//! memory and its hold on its source.

use std::sync::mpsc::{self, Receiver, RecvTimeoutError};
use std::thread::{self, JoinHandle};
use std::time::Duration;

/// A thread whose end can be awaited with a deadline.
#[derive(Debug)]
pub struct Bounded<T> {
    handle: JoinHandle<T>,
    /// Disconnected when the thread's closure has returned or unwound: its sender is dropped
    /// as the closure's last act, so a wait on it is a wait for the thread's end.
    done: Receiver<()>,
    name: String,
}

/// How a bounded join ended.
#[derive(Debug, PartialEq, Eq)]
pub enum Joined<T> {
    /// The thread ended and returned this.
    Finished(T),
    /// The thread panicked (logged at ERROR).
    Panicked,
    /// The thread was still running at the deadline and was left to end by itself (logged at
    /// ERROR).
    Detached,
}

/// Starts `f` on a new thread named `name`.
pub fn spawn<T: Send + 'static>(
    name: &str,
    f: impl FnOnce() -> T + Send + 'static,
) -> std::io::Result<Bounded<T>> {
    let (tx, done) = mpsc::channel::<()>();
    let handle = thread::Builder::new().name(name.into()).spawn(move || {
        // Dropped when `f` returns or unwinds.
        let _ended = tx;
        f()
    })?;
    Ok(Bounded {
        handle,
        done,
        name: name.into(),
    })
}

impl<T> Bounded<T> {
    /// Whether the thread has ended.
    pub fn is_finished(&self) -> bool {
        self.handle.is_finished()
    }

    /// Waits at most `limit` for the thread to end. A thread still running then is detached:
    /// see the module docs for why that is safe.
    pub fn join_within(self, limit: Duration) -> Joined<T> {
        match self.done.recv_timeout(limit) {
            // Nothing is ever sent: the closure has ended, and the join returns at once.
            Ok(()) | Err(RecvTimeoutError::Disconnected) => match self.handle.join() {
                Ok(v) => Joined::Finished(v),
                Err(_) => {
                    tracing::error!(thread = %self.name, "a session thread panicked");
                    Joined::Panicked
                }
            },
            Err(RecvTimeoutError::Timeout) => {
                tracing::error!(
                    thread = %self.name,
                    limit_ms = limit.as_millis() as u64,
                    "a session thread did not end in time (stuck in a call that does not return); \
                     detached, it ends by itself if the call ever returns"
                );
                Joined::Detached
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Instant;

    #[test]
    fn a_thread_that_ends_is_joined_with_its_result() {
        let t = spawn("test-ends", || 7).unwrap();
        assert_eq!(t.join_within(Duration::from_secs(10)), Joined::Finished(7));
    }

    #[test]
    fn a_panicking_thread_is_reported() {
        let t = spawn("test-panics", || -> u8 { panic!("test panic") }).unwrap();
        assert_eq!(t.join_within(Duration::from_secs(10)), Joined::Panicked);
    }

    #[test]
    fn a_stuck_thread_is_detached_at_the_deadline_and_ends_when_its_call_returns() {
        let (release, stuck) = mpsc::channel::<()>();
        let (ended_tx, ended) = mpsc::channel::<()>();
        let t = spawn("test-stuck", move || {
            let _ = stuck.recv();
            let _ = ended_tx.send(());
        })
        .unwrap();
        let started = Instant::now();
        assert_eq!(t.join_within(Duration::from_millis(200)), Joined::Detached);
        let waited = started.elapsed();
        assert!(
            waited >= Duration::from_millis(200) && waited < Duration::from_secs(5),
            "{waited:?}"
        );
        release.send(()).unwrap();
        ended
            .recv_timeout(Duration::from_secs(10))
            .expect("the detached thread ends once its call returns");
    }
}
