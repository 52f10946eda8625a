//! A child process that cannot outlive its test.
//!
//! A test that fails panics, and a panic unwinds past every `kill` the test meant to do later:
//! without a guard, the recorder or uploader it started goes on running after the suite ends
//! (and holds its spool, socket or port for the next run). [`Reaped`] kills and waits for its
//! process on drop, whatever the test's outcome.

use std::ops::{Deref, DerefMut};
use std::process::Child;

/// A [`Child`] killed (SIGKILL) and reaped when dropped, unless it has already exited.
#[derive(Debug)]
pub struct Reaped(pub Child);

impl Deref for Reaped {
    type Target = Child;
    fn deref(&self) -> &Child {
        &self.0
    }
}

impl DerefMut for Reaped {
    fn deref_mut(&mut self) -> &mut Child {
        &mut self.0
    }
}

impl Drop for Reaped {
    fn drop(&mut self) {
        if matches!(self.0.try_wait(), Ok(None)) {
            let _ = self.0.kill();
        }
        let _ = self.0.wait();
    }
}

impl From<Child> for Reaped {
    fn from(c: Child) -> Self {
        Reaped(c)
    }
}

/// A server program started by [`serve_http`]: the process, where it listens, and what it has
/// written to stderr so far (for a failing test's message).
#[derive(Debug)]
pub struct Served {
    pub child: Reaped,
    pub addr: std::net::SocketAddr,
    log: tempfile::NamedTempFile,
}

impl Served {
    /// What the program has written to stderr.
    pub fn stderr(&self) -> String {
        std::fs::read_to_string(self.log.path()).unwrap_or_default()
    }
}

/// Starts a server on a free loopback port (`command` makes the command line for a port) and
/// returns once the port accepts connections.
///
/// The port is found by binding port 0 and letting it go, so another process of a busy suite
/// can take it before the server binds it (a test once saw its player never start, and said
/// only "not indexed"): a server that exits saying it could not listen is started again on
/// another port (as is one that says a port it was given is in use). Any other early exit, or a server that does not listen within `limit`, fails
/// the test with the server's stderr.
pub fn serve_http(
    mut command: impl FnMut(std::net::SocketAddr) -> std::process::Command,
    limit: std::time::Duration,
) -> Served {
    use std::time::{Duration, Instant};
    const ATTEMPTS: usize = 5;
    for attempt in 1..=ATTEMPTS {
        let addr = std::net::TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .expect("a free loopback port");
        let log = tempfile::NamedTempFile::new().expect("a file for the server's stderr");
        let mut cmd = command(addr);
        cmd.stderr(log.reopen().expect("the stderr file opened again"));
        let mut served = Served {
            child: Reaped(cmd.spawn().expect("the server program starts")),
            addr,
            log,
        };
        let started = Instant::now();
        loop {
            if std::net::TcpStream::connect_timeout(&addr, Duration::from_secs(1)).is_ok() {
                return served;
            }
            if let Some(status) = served.child.try_wait().expect("the server's status") {
                let err = served.stderr();
                // EADDRINUSE on a second port the command line names (a metrics listener).
                let port_taken = err.contains("listening on")
                    || err.contains("os error 98")
                    || err.contains("EADDRINUSE");
                if port_taken && attempt < ATTEMPTS {
                    break;
                }
                panic!("the server exited ({status}) before listening on {addr}:\n{err}");
            }
            assert!(
                started.elapsed() < limit,
                "the server did not listen on {addr} within {limit:?}:\n{}",
                served.stderr()
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }
    unreachable!("the last attempt returns or panics")
}

impl Served {
    /// Waits until `GET path` answers 200, failing the test with the server's stderr when the
    /// server exits first (another process that took the port answers nothing of ours for
    /// long) or does not answer within `limit`.
    pub fn wait_ok(&mut self, path: &str, limit: std::time::Duration) {
        let started = std::time::Instant::now();
        while !crate::http::get(self.addr, path).is_ok_and(|r| r.status == 200) {
            let exited = self.child.try_wait().expect("the server's status");
            assert!(
                exited.is_none() && started.elapsed() < limit,
                "the server did not answer GET {path} on {} ({exited:?}):\n{}",
                self.addr,
                self.stderr()
            );
            std::thread::sleep(std::time::Duration::from_millis(50));
        }
    }
}
