//! One delivery thread per target: sends the target's queued alerts in order, marks each one
//! done only once the receiver took it (or refused it for good), and backs off while the
//! receiver fails.

use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::index::Index;
use crate::indexer::IndexerHandle;

use super::store::{self, Outgoing};
use super::{TargetSpec, Wake, syslog, webhook};

/// Alerts read from the outbox at a time.
const BATCH: i64 = 50;

/// Backoff while a receiver fails: attempt *n* waits between half and all of
/// `min(CAP, BASE * 2^n)` (equal jitter: spread, as full jitter is, but never a retry at
/// once). The 10 s cap bounds how late alerts arrive after a receiver is back (one connection
/// attempt per 10 s costs a receiver nothing); the 500 ms base rides over a restart.
pub(crate) const BACKOFF_BASE: Duration = Duration::from_millis(500);
pub(crate) const BACKOFF_CAP: Duration = Duration::from_secs(10);

/// The wait before retry number `attempt` (0-based).
pub(crate) fn backoff(attempt: u32) -> Duration {
    let factor = 1u32.checked_shl(attempt.min(31)).unwrap_or(u32::MAX);
    let ceiling = BACKOFF_BASE.saturating_mul(factor).min(BACKOFF_CAP);
    ceiling / 2 + (ceiling / 2).mul_f64(rand::random::<f64>())
}

enum Sender {
    Webhook(webhook::WebhookTarget, tokio::runtime::Handle),
    Syslog(Box<syslog::Sender>),
}

/// What one attempt came to, whichever the target.
enum Outcome {
    Delivered,
    Refused(String),
    Retry {
        error: String,
        after: Option<Duration>,
        requeue: Vec<String>,
    },
}

impl Sender {
    fn send(&mut self, o: &Outgoing) -> Result<Outcome, super::AlertError> {
        Ok(match self {
            Sender::Webhook(t, rt) => match webhook::send(t, rt, &o.id, &o.payload) {
                webhook::Outcome::Delivered => Outcome::Delivered,
                webhook::Outcome::Refused(e) => Outcome::Refused(e),
                webhook::Outcome::Retry(error, after) => Outcome::Retry {
                    error,
                    after,
                    requeue: Vec::new(),
                },
            },
            Sender::Syslog(s) => match s.send(&o.id, &o.payload)? {
                syslog::Outcome::Delivered => Outcome::Delivered,
                syslog::Outcome::Retry { error, requeue } => Outcome::Retry {
                    error,
                    after: None,
                    requeue,
                },
            },
        })
    }

    fn idle(&mut self) {
        if let Sender::Syslog(s) = self {
            s.close();
        }
    }
}

/// The delivery thread of one target.
pub(crate) struct Worker {
    name: String,
    sender: Sender,
    index: Arc<dyn Index>,
    lead: IndexerHandle,
    wake: Arc<Wake>,
    /// Consecutive failed attempts (the backoff's exponent).
    failures: u32,
    /// No attempt before this.
    backoff_until: Option<Instant>,
    /// When the current outage began (logged once, and its end).
    outage: Option<Instant>,
}

impl Worker {
    pub(crate) fn new(
        target: TargetSpec,
        index: Arc<dyn Index>,
        lead: IndexerHandle,
        wake: Arc<Wake>,
        rt: tokio::runtime::Handle,
    ) -> Self {
        let name = target.name();
        let sender = match target {
            TargetSpec::Webhook(w) => Sender::Webhook(w, rt),
            TargetSpec::Syslog(s) => Sender::Syslog(Box::new(syslog::Sender::new(s))),
        };
        Self {
            name,
            sender,
            index,
            lead,
            wake,
            failures: 0,
            backoff_until: None,
            outage: None,
        }
    }

    pub(crate) fn run(mut self) {
        let mut failing_index = false;
        loop {
            if self.wake.stopped() {
                return;
            }
            let generation = self.wake.generation();
            if !self.lead.leads() {
                self.sender.idle();
                if self.wake.wait(super::POLL, None) {
                    return;
                }
                continue;
            }
            if let Some(until) = self.backoff_until {
                let left = until.saturating_duration_since(Instant::now());
                if !left.is_zero() {
                    if self.wake.wait(left, None) {
                        return;
                    }
                    continue;
                }
                self.backoff_until = None;
            }
            match self.round() {
                Ok(sent) => {
                    failing_index = false;
                    if sent {
                        continue;
                    }
                }
                Err(e) => {
                    if !failing_index {
                        tracing::warn!(target_name = %self.name, error = %e,
                            "alerts: could not read or update the outbox; trying again");
                    }
                    failing_index = true;
                }
            }
            // Nothing due: until alerts are queued, or a poll (rows whose backoff a previous
            // run stored come due).
            if self.wake.wait(super::POLL, Some(generation)) {
                return;
            }
        }
    }

    /// Sends what is due; returns whether it sent anything (then it looks again at once).
    fn round(&mut self) -> Result<bool, super::AlertError> {
        let index = self.index.as_ref();
        let due = store::due(index, &self.name, store::now_us(), BATCH)?;
        let mut sent = false;
        for o in &due {
            if self.wake.stopped() || !self.lead.leads() {
                break;
            }
            match self.sender.send(o)? {
                Outcome::Delivered => {
                    store::finish(
                        index,
                        &self.name,
                        &o.id,
                        store::DELIVERED,
                        "",
                        store::now_us(),
                    )?;
                    sent = true;
                    self.failures = 0;
                    if let Some(since) = self.outage.take() {
                        tracing::info!(target_name = %self.name, down_for = ?since.elapsed(),
                            "alerts: the receiver takes alerts again");
                    }
                    tracing::debug!(target_name = %self.name, id = %o.id, kind = %o.kind, "alerts: delivered");
                }
                Outcome::Refused(e) => {
                    store::finish(
                        index,
                        &self.name,
                        &o.id,
                        store::REFUSED,
                        &e,
                        store::now_us(),
                    )?;
                    sent = true;
                    tracing::error!(target_name = %self.name, id = %o.id, kind = %o.kind, error = %e,
                        "alerts: the receiver refused the alert for good; it will not be sent again");
                }
                Outcome::Retry {
                    error,
                    after,
                    requeue,
                } => {
                    store::requeue(index, &self.name, &requeue)?;
                    let wait = after.unwrap_or_else(|| backoff(self.failures));
                    self.failures = self.failures.saturating_add(1);
                    let next =
                        store::now_us() + i64::try_from(wait.as_micros()).unwrap_or(i64::MAX);
                    store::retry_later(index, &self.name, &o.id, next, &error)?;
                    self.backoff_until = Some(Instant::now() + wait);
                    if self.outage.is_none() {
                        self.outage = Some(Instant::now());
                        tracing::warn!(target_name = %self.name, error = %error, resent = requeue.len(),
                            "alerts: the receiver does not take alerts; they stay queued and are retried");
                    } else {
                        tracing::debug!(target_name = %self.name, error = %error, ?wait,
                            attempts = o.attempts + 1, "alerts: still failing");
                    }
                    return Ok(false);
                }
            }
        }
        Ok(sent)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_grows_to_its_cap_and_never_retries_at_once() {
        for attempt in 0..40 {
            let ceiling = BACKOFF_BASE
                .saturating_mul(1u32.checked_shl(attempt.min(31)).unwrap_or(u32::MAX))
                .min(BACKOFF_CAP);
            for _ in 0..20 {
                let d = backoff(attempt);
                assert!(d >= ceiling / 2 && d <= ceiling, "{attempt}: {d:?}");
            }
        }
        assert!(backoff(100) >= BACKOFF_CAP / 2);
    }
}
