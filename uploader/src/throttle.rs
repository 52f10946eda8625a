//! The optional bandwidth cap: a pacing gate every put passes before it sends its bytes, so a
//! backlog draining after an outage does not saturate a user's uplink.

use std::time::Duration;

use tokio::sync::Mutex;
use tokio::time::Instant;

#[derive(Debug)]
pub(crate) struct Throttle {
    bytes_per_sec: u64,
    /// When the link is free again, as far as the cap is concerned.
    next: Mutex<Instant>,
}

impl Throttle {
    pub(crate) fn new(bytes_per_sec: u64) -> Self {
        Self {
            bytes_per_sec: bytes_per_sec.max(1),
            next: Mutex::new(Instant::now()),
        }
    }

    /// Waits until `bytes` may be sent without exceeding the cap on average.
    pub(crate) async fn take(&self, bytes: usize) {
        let start = {
            let mut next = self.next.lock().await;
            let start = (*next).max(Instant::now());
            *next = start + Duration::from_secs_f64(bytes as f64 / self.bytes_per_sec as f64);
            start
        };
        tokio::time::sleep_until(start).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(start_paused = true)]
    async fn paces_to_the_cap() {
        let t = Throttle::new(1000);
        let begin = Instant::now();
        for _ in 0..5 {
            t.take(500).await;
        }
        // Five sends of 500 B at 1000 B/s: the fifth may start 2 s after the first.
        assert_eq!(begin.elapsed(), Duration::from_secs(2));
    }
}
