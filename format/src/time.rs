//! Media time: the one clock shared by video frames and events within a session.
//!
//! Media time is microseconds since the session's start (its `started_at`). The recorder stamps
//! video frames and events from the same monotonic clock, so an event at media time *t* is shown
//! at the frame presented at *t*. It is an integer so that it survives JSON exactly.

use std::fmt;
use std::time::Duration;

use serde::{Deserialize, Serialize};

/// Microseconds since the start of the session, on the session's monotonic clock.
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Default, Serialize, Deserialize)]
#[serde(transparent)]
pub struct MediaTime(u64);

impl MediaTime {
    /// The start of the session.
    pub const ZERO: MediaTime = MediaTime(0);

    /// From microseconds since session start.
    pub const fn from_micros(us: u64) -> Self {
        Self(us)
    }

    /// Microseconds since session start.
    pub const fn as_micros(self) -> u64 {
        self.0
    }

    /// From a duration since session start, saturating at `u64::MAX` microseconds.
    pub fn from_duration(d: Duration) -> Self {
        Self(u64::try_from(d.as_micros()).unwrap_or(u64::MAX))
    }

    /// As a duration since session start.
    pub const fn as_duration(self) -> Duration {
        Duration::from_micros(self.0)
    }
}

impl fmt::Display for MediaTime {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}.{:06}s", self.0 / 1_000_000, self.0 % 1_000_000)
    }
}

impl fmt::Debug for MediaTime {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "MediaTime({self})")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn displays_and_converts() {
        let t = MediaTime::from_duration(Duration::from_millis(1500));
        assert_eq!(t.as_micros(), 1_500_000);
        assert_eq!(t.to_string(), "1.500000s");
        assert_eq!(t.as_duration(), Duration::from_millis(1500));
        assert_eq!(serde_json::to_string(&t).unwrap(), "1500000");
        assert!(serde_json::from_str::<MediaTime>("-1").is_err());
    }
}
