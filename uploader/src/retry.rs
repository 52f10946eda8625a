//! The one place that decides whether a failed put is worth retrying, and how long to wait.
//!
//! Transient failures (timeouts, broken connections, throttling, 5xx, a full local disk) are
//! retried for as long as it takes: a laptop can be offline for a week, and its recordings must
//! arrive when it is back. Failures that waiting will not fix (wrong credentials, missing
//! permission, no such bucket) stop the session and are reported at ERROR, with the data kept in
//! the spool, because an operator has to act.

use std::time::Duration;

use crate::store::{ErrorKind, StoreError};

/// Whether retrying `e` can succeed without anyone changing anything.
pub fn is_retryable(e: &StoreError) -> bool {
    match &e.kind {
        ErrorKind::Timeout
        | ErrorKind::Connection
        | ErrorKind::Throttled
        | ErrorKind::Server(_)
        | ErrorKind::Other => true,
        ErrorKind::Auth(_) | ErrorKind::Client(_) => false,
        ErrorKind::Io(k) => !matches!(
            k,
            std::io::ErrorKind::PermissionDenied
                | std::io::ErrorKind::ReadOnlyFilesystem
                | std::io::ErrorKind::NotFound
                | std::io::ErrorKind::InvalidInput
        ),
    }
}

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

#[cfg(test)]
mod tests {
    use super::*;

    fn err(kind: ErrorKind) -> StoreError {
        StoreError {
            key: "k".into(),
            kind,
            message: String::new(),
        }
    }

    #[test]
    fn classification() {
        for k in [
            ErrorKind::Timeout,
            ErrorKind::Connection,
            ErrorKind::Throttled,
            ErrorKind::Server(500),
            ErrorKind::Server(503),
            ErrorKind::Io(std::io::ErrorKind::StorageFull),
        ] {
            assert!(is_retryable(&err(k.clone())), "{k}");
        }
        for k in [
            ErrorKind::Auth(403),
            ErrorKind::Client(400),
            ErrorKind::Client(404),
            ErrorKind::Io(std::io::ErrorKind::PermissionDenied),
        ] {
            assert!(!is_retryable(&err(k.clone())), "{k}");
        }
    }

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
}
