//! One thread sleeping until any of several others has something for it: [`Doorbell`].
//!
//! The recorder's encoding loop waits for capture ticks, JIT events and a shutdown at once. Each
//! arrives on a channel of its own, with its own full-policy (ticks are dropped when the queue
//! is full, JIT events never are), and std's channels cannot be waited on together. Polling
//! them in turn cost an idle session twenty wake-ups a second and about 80 ms of CPU a minute
//! (docs/recorder.md, "What an idle session costs"). Instead, whoever puts something on one of
//! those channels rings the bell after the send, and the loop sleeps on the bell, then takes
//! whatever every channel holds.
//!
//! Rings coalesce: a bell is rung or not. That is safe because the waiter always empties every
//! channel after it wakes: a ring that comes while it is emptying them leaves the bell rung, so
//! its next wait returns at once. Nothing can be missed, at worst a wake-up finds nothing new.

use std::sync::{Condvar, Mutex, PoisonError};
use std::time::Duration;

/// A coalescing wake-up for one waiting thread. Shared as `Arc<Doorbell>`.
#[derive(Debug, Default)]
pub struct Doorbell {
    rung: Mutex<bool>,
    woken: Condvar,
}

impl Doorbell {
    pub fn new() -> Self {
        Self::default()
    }

    /// Wakes the waiter, or makes its next wait return at once. Call it after the send it
    /// announces, so the waiter finds what it was woken for.
    pub fn ring(&self) {
        // A panic elsewhere while holding the lock leaves only a bool behind: still usable.
        *self.rung.lock().unwrap_or_else(PoisonError::into_inner) = true;
        self.woken.notify_one();
    }

    /// Sleeps until the bell is rung or `timeout` has passed, and unrings it. Returns whether
    /// it was rung.
    pub fn wait(&self, timeout: Duration) -> bool {
        let rung = self.rung.lock().unwrap_or_else(PoisonError::into_inner);
        let (mut rung, _) = self
            .woken
            .wait_timeout_while(rung, timeout, |rung| !*rung)
            .unwrap_or_else(PoisonError::into_inner);
        std::mem::replace(&mut *rung, false)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;
    use std::time::Instant;

    #[test]
    fn a_ring_before_the_wait_is_not_lost() {
        let bell = Doorbell::new();
        bell.ring();
        bell.ring();
        let started = Instant::now();
        assert!(bell.wait(Duration::from_secs(30)), "the ring was lost");
        assert!(started.elapsed() < Duration::from_secs(10));
        // Coalesced: two rings are one wake-up.
        assert!(!bell.wait(Duration::from_millis(20)));
    }

    #[test]
    fn a_ring_wakes_a_sleeping_waiter() {
        let bell = Arc::new(Doorbell::new());
        let (tx, rx) = std::sync::mpsc::channel();
        let waiter = {
            let bell = Arc::clone(&bell);
            std::thread::spawn(move || {
                tx.send(()).unwrap();
                bell.wait(Duration::from_secs(60))
            })
        };
        rx.recv().unwrap();
        let started = Instant::now();
        bell.ring();
        assert!(waiter.join().unwrap(), "the waiter timed out instead");
        // Far below the 60 s timeout even on a loaded machine: it was the ring that woke it.
        assert!(started.elapsed() < Duration::from_secs(20));
    }

    #[test]
    fn an_unrung_wait_ends_at_its_timeout() {
        let bell = Doorbell::new();
        let started = Instant::now();
        assert!(!bell.wait(Duration::from_millis(50)));
        assert!(started.elapsed() >= Duration::from_millis(50));
    }
}
