//! The one retry policy: exponential backoff with full jitter, and how many attempts.
//!
//! Writes (the uploader) retry for as long as it takes: a laptop can be offline for a week, and
//! its recordings must arrive when it is back ([`RetryPolicy::unbounded`]). Reads, listings and
//! deletions (the player) are bounded ([`RetryPolicy::reads`]): a reviewer waiting on a media
//! request or an index pass must get an answer, and a store that is down for longer is reported
//! and tried again on the next pass. Whether an error is worth another attempt is
//! [`crate::BucketError::is_retryable`]'s decision alone.

use std::time::Duration;

use crate::BucketError;

/// Exponential backoff with full jitter: attempt *n* waits a uniformly random time in
/// `[0, min(cap, base * 2^n)]`. Full jitter spreads the retries of many endpoints hitting the
/// same recovering server, instead of having them return in lockstep.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Backoff {
    pub base: Duration,
    pub cap: Duration,
}

impl Default for Backoff {
    /// 200 ms doubles past the 1 s latency goal quickly only when the store is failing, and a
    /// 30 s cap keeps a recovering store from waiting minutes for an endpoint's next try.
    fn default() -> Self {
        Self {
            base: Duration::from_millis(200),
            cap: Duration::from_secs(30),
        }
    }
}

impl Backoff {
    /// The upper bound of the wait before retry number `attempt` (0-based).
    pub fn ceiling(&self, attempt: u32) -> Duration {
        let factor = 1u32.checked_shl(attempt.min(31)).unwrap_or(u32::MAX);
        self.base.saturating_mul(factor).min(self.cap)
    }

    /// A random wait before retry number `attempt`.
    pub fn delay(&self, attempt: u32) -> Duration {
        let ceiling = self.ceiling(attempt);
        ceiling.mul_f64(rand::random::<f64>())
    }
}

/// Backoff plus a bound on attempts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RetryPolicy {
    pub backoff: Backoff,
    /// Attempts in all, the first included; `None` for no bound.
    pub max_attempts: Option<u32>,
}

/// Attempts of a read, listing or deletion: the first and three retries, within about 1.5 s
/// at most of waiting, so a media request answers within a few seconds even when the store is
/// failing, and rides over the brief 503s and resets of a store under load.
pub const READ_ATTEMPTS: u32 = 4;

impl RetryPolicy {
    /// The player's policy for reads, listings, deletions and holds.
    pub fn reads() -> Self {
        Self {
            backoff: Backoff {
                base: Duration::from_millis(100),
                cap: Duration::from_secs(2),
            },
            max_attempts: Some(READ_ATTEMPTS),
        }
    }

    /// The uploader's policy for writes: no bound.
    pub fn unbounded(backoff: Backoff) -> Self {
        Self {
            backoff,
            max_attempts: None,
        }
    }

    /// Runs `op` until it succeeds, fails with an error that is not retryable, or the attempts
    /// are used up (the last error is returned). Blocking: for plain threads and
    /// `spawn_blocking`, where the player's bucket calls run.
    pub fn run_blocking<T>(
        &self,
        mut op: impl FnMut() -> Result<T, BucketError>,
    ) -> Result<T, BucketError> {
        let mut attempt = 0u32;
        loop {
            match op() {
                Ok(v) => return Ok(v),
                Err(e) if e.is_retryable() && self.max_attempts.is_none_or(|m| attempt + 1 < m) => {
                    let wait = self.backoff.delay(attempt);
                    tracing::debug!(op = e.op, key = %e.key, error = %e, attempt, ?wait,
                        "bucket call failed; retrying");
                    std::thread::sleep(wait);
                    attempt += 1;
                }
                Err(e) => return Err(e),
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ErrorKind;

    #[test]
    fn backoff_grows_to_the_cap_with_jitter_below_the_ceiling() {
        let b = Backoff {
            base: Duration::from_millis(100),
            cap: Duration::from_secs(5),
        };
        assert_eq!(b.ceiling(0), Duration::from_millis(100));
        assert_eq!(b.ceiling(3), Duration::from_millis(800));
        assert_eq!(b.ceiling(10), Duration::from_secs(5));
        assert_eq!(b.ceiling(200), Duration::from_secs(5));
        let samples: Vec<Duration> = (0..200).map(|_| b.delay(4)).collect();
        assert!(samples.iter().all(|d| *d <= Duration::from_millis(1600)));
        // Full jitter: the waits are spread, not all at the ceiling.
        assert!(samples.iter().any(|d| *d < Duration::from_millis(800)));
        assert!(samples.iter().any(|d| *d > Duration::from_millis(800)));
    }

    fn quick(max: u32) -> RetryPolicy {
        RetryPolicy {
            backoff: Backoff {
                base: Duration::from_millis(1),
                cap: Duration::from_millis(1),
            },
            max_attempts: Some(max),
        }
    }

    #[test]
    fn a_bounded_policy_retries_transient_errors_up_to_its_bound_only() {
        let mut calls = 0;
        let r: Result<(), _> = quick(4).run_blocking(|| {
            calls += 1;
            Err(BucketError::new("read", "k", ErrorKind::Server(503), ""))
        });
        assert_eq!(r.unwrap_err().kind, ErrorKind::Server(503));
        assert_eq!(calls, 4);

        let mut calls = 0;
        let r = quick(4).run_blocking(|| {
            calls += 1;
            if calls < 3 {
                Err(BucketError::new("read", "k", ErrorKind::Connection, ""))
            } else {
                Ok(calls)
            }
        });
        assert_eq!(r.unwrap(), 3);

        let mut calls = 0;
        let r: Result<(), _> = quick(4).run_blocking(|| {
            calls += 1;
            Err(BucketError::new("read", "k", ErrorKind::Auth(403), ""))
        });
        assert!(r.is_err());
        assert_eq!(calls, 1, "a permission error is not retried");
    }
}
