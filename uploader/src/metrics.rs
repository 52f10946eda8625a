//! Counters of everything the uploader does, for logs, the `/metrics` endpoint (Prometheus text
//! format) and benchmarks. Every internal event that matters to an operator (a retry, a failure,
//! a quarantined entry) is counted here.

use std::collections::VecDeque;
use std::fmt::Write as _;
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, SystemTime};

use jitrec_spool::Backlog;

/// How many recent commit-to-visible latencies are kept for quantiles (a bounded window, so a
/// long-running service does not grow).
const LATENCY_WINDOW: usize = 4096;

/// The uploader's counters. All monotonic except the latency window.
#[derive(Debug, Default)]
pub struct Metrics {
    /// Objects the store confirmed.
    pub objects_uploaded: AtomicU64,
    /// Bytes of those objects.
    pub bytes_uploaded: AtomicU64,
    /// Spool entries acknowledged (all their objects confirmed).
    pub entries_acked: AtomicU64,
    /// Chunks acknowledged.
    pub chunks_acked: AtomicU64,
    /// Failed attempts that were retried.
    pub retries: AtomicU64,
    /// Failures that stopped a session (not retryable).
    pub failures: AtomicU64,
    /// Spool entries found corrupt and quarantined.
    pub quarantined: AtomicU64,
    latencies: Mutex<VecDeque<Duration>>,
}

impl Metrics {
    pub(crate) fn add(counter: &AtomicU64, n: u64) {
        counter.fetch_add(n, Ordering::Relaxed);
    }

    /// Records how long a chunk took from its commit to the spool to its manifest being stored.
    pub(crate) fn record_latency(&self, committed_at: SystemTime) {
        let d = SystemTime::now()
            .duration_since(committed_at)
            .unwrap_or_default();
        let mut l = self
            .latencies
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        if l.len() == LATENCY_WINDOW {
            l.pop_front();
        }
        l.push_back(d);
    }

    /// The recent commit-to-visible latencies, oldest first.
    pub fn latencies(&self) -> Vec<Duration> {
        self.latencies
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .iter()
            .copied()
            .collect()
    }

    /// Renders the counters (and the spool backlog, if given) in Prometheus text format.
    pub fn render_prometheus(&self, backlog: Option<&Backlog>) -> String {
        let mut out = String::new();
        let mut counter = |name: &str, help: &str, v: &AtomicU64| {
            // Writing to a String cannot fail.
            let _ = writeln!(out, "# HELP jitrec_uploader_{name} {help}");
            let _ = writeln!(out, "# TYPE jitrec_uploader_{name} counter");
            let _ = writeln!(out, "jitrec_uploader_{name} {}", v.load(Ordering::Relaxed));
        };
        counter(
            "objects_uploaded_total",
            "Objects the store confirmed.",
            &self.objects_uploaded,
        );
        counter(
            "bytes_uploaded_total",
            "Bytes of confirmed objects.",
            &self.bytes_uploaded,
        );
        counter(
            "entries_acked_total",
            "Spool entries acknowledged after upload.",
            &self.entries_acked,
        );
        counter(
            "chunks_acked_total",
            "Chunks acknowledged after upload.",
            &self.chunks_acked,
        );
        counter(
            "retries_total",
            "Failed attempts that were retried.",
            &self.retries,
        );
        counter(
            "failures_total",
            "Failures that stopped a session until an operator acts.",
            &self.failures,
        );
        counter(
            "quarantined_total",
            "Corrupt spool entries set aside.",
            &self.quarantined,
        );
        let mut lat = self.latencies();
        lat.sort();
        let _ = writeln!(
            out,
            "# HELP jitrec_uploader_commit_to_visible_seconds Time from a chunk's commit to the spool to its manifest being stored (last {LATENCY_WINDOW} chunks)."
        );
        let _ = writeln!(
            out,
            "# TYPE jitrec_uploader_commit_to_visible_seconds summary"
        );
        for q in [0.5, 0.99] {
            if let Some(d) = quantile(&lat, q) {
                let _ = writeln!(
                    out,
                    "jitrec_uploader_commit_to_visible_seconds{{quantile=\"{q}\"}} {:.6}",
                    d.as_secs_f64()
                );
            }
        }
        let _ = writeln!(
            out,
            "jitrec_uploader_commit_to_visible_seconds_count {}",
            lat.len()
        );
        if let Some(b) = backlog {
            let age = b
                .oldest
                .and_then(|t| SystemTime::now().duration_since(t).ok())
                .map_or(0.0, |d| d.as_secs_f64());
            for (name, help, v) in [
                (
                    "backlog_entries",
                    "Spool entries waiting for upload.",
                    b.entries as f64,
                ),
                ("backlog_bytes", "Bytes waiting for upload.", b.bytes as f64),
                (
                    "backlog_oldest_age_seconds",
                    "Age of the oldest entry waiting.",
                    age,
                ),
                (
                    "spool_quarantined_entries",
                    "Entries in the spool's quarantine.",
                    b.quarantined as f64,
                ),
                (
                    "spool_used_bytes",
                    "Bytes the spool occupies.",
                    b.used_bytes as f64,
                ),
            ] {
                let _ = writeln!(out, "# HELP jitrec_uploader_{name} {help}");
                let _ = writeln!(out, "# TYPE jitrec_uploader_{name} gauge");
                let _ = writeln!(out, "jitrec_uploader_{name} {v}");
            }
        }
        out
    }
}

/// Serves `GET /metrics` (Prometheus text format, counters plus the spool backlog) on `listener`
/// until `shutdown`. Failures are logged: metrics must never stop uploads.
pub async fn serve<S: jitrec_bucket::BucketWriter>(
    listener: tokio::net::TcpListener,
    uploader: crate::Uploader<S>,
    shutdown: tokio_util::sync::CancellationToken,
) {
    let app = axum::Router::new().route(
        "/metrics",
        axum::routing::get(move || {
            let u = uploader.clone();
            async move {
                let backlog = u.backlog().await.ok();
                u.metrics().render_prometheus(backlog.as_ref())
            }
        }),
    );
    let served = axum::serve(listener, app)
        .with_graceful_shutdown(shutdown.cancelled_owned())
        .await;
    if let Err(e) = served {
        tracing::error!(error = %e, "metrics endpoint failed");
    }
}

/// The `q` quantile (nearest rank) of sorted samples.
pub fn quantile(sorted: &[Duration], q: f64) -> Option<Duration> {
    if sorted.is_empty() {
        return None;
    }
    let rank = ((q * sorted.len() as f64).ceil() as usize).clamp(1, sorted.len());
    Some(sorted[rank - 1])
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn quantiles_and_rendering() {
        let s: Vec<Duration> = (1..=100).map(Duration::from_millis).collect();
        assert_eq!(quantile(&s, 0.5), Some(Duration::from_millis(50)));
        assert_eq!(quantile(&s, 0.99), Some(Duration::from_millis(99)));
        assert_eq!(quantile(&[], 0.5), None);
        let m = Metrics::default();
        Metrics::add(&m.retries, 3);
        m.record_latency(SystemTime::now() - Duration::from_millis(250));
        let text = m.render_prometheus(Some(&Backlog::default()));
        assert!(text.contains("jitrec_uploader_retries_total 3"), "{text}");
        assert!(
            text.contains("commit_to_visible_seconds{quantile=\"0.5\"} 0.2"),
            "{text}"
        );
        assert!(text.contains("jitrec_uploader_backlog_entries 0"), "{text}");
    }
}
