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
