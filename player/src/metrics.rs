//! The player's metrics in Prometheus text format, on a listener of their own
//! (`serve --metrics-listen`): requests by route and status, sign-ins by outcome, and the
//! indexer's and retention's state, so an operator can alert on a player that stopped indexing
//! or on a burst of failed sign-ins without signing in.
//!
//! Routes are counted by their template (`/api/sessions/{id}`), never by the path sent, and
//! requests no route matched by one label, so what a client sends cannot grow the set of series.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};

use axum::extract::{MatchedPath, Request, State};
use axum::middleware::Next;
use axum::response::Response;
use chrono::Utc;

use crate::indexer::{IndexerHandle, Role};
use crate::retention::Supervisor;

/// Counters the HTTP side updates.
#[derive(Debug, Default)]
pub struct Metrics {
    /// (route template, method, status) → requests.
    requests: Mutex<BTreeMap<(String, String, u16), u64>>,
    pub sign_ins: AtomicU64,
    pub sign_in_failures: AtomicU64,
    /// Sign-ins refused by the back-off or the bound on password checks (429).
    pub sign_ins_throttled: AtomicU64,
}

impl Metrics {
    pub fn count(counter: &AtomicU64) {
        counter.fetch_add(1, Ordering::Relaxed);
    }

    fn request(&self, route: String, method: String, status: u16) {
        *self
            .requests
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .entry((route, method, status))
            .or_default() += 1;
    }

    /// The whole exposition: these counters and the state of `indexer` and `retention`.
    pub fn render(&self, indexer: &IndexerHandle, retention: Option<&Supervisor>) -> String {
        let mut out = String::new();
        family(
            &mut out,
            "http_requests_total",
            "counter",
            "HTTP requests answered, by route template, method and status.",
        );
        for ((route, method, status), n) in self
            .requests
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .iter()
        {
            let _ = writeln!(
                out,
                "jitrec_player_http_requests_total{{route=\"{}\",method=\"{}\",status=\"{status}\"}} {n}",
                escape(route),
                escape(method)
            );
        }
        let st = indexer.stats();
        let now = Utc::now();
        let lag = st
            .last_pass
            .map(|t| (now - t).num_milliseconds().max(0) as f64 / 1000.0);
        let sweep = st.sweep.clone().unwrap_or_default();
        let retention = retention.map(Supervisor::state);
        let values: Vec<(&str, &str, &str, Option<f64>)> = vec![
            (
                "sign_ins_total",
                "counter",
                "Sign-ins that succeeded.",
                Some(self.sign_ins.load(Ordering::Relaxed) as f64),
            ),
            (
                "sign_in_failures_total",
                "counter",
                "Sign-ins refused for a wrong name or password.",
                Some(self.sign_in_failures.load(Ordering::Relaxed) as f64),
            ),
            (
                "sign_ins_throttled_total",
                "counter",
                "Sign-ins refused by the back-off or the bound on password checks.",
                Some(self.sign_ins_throttled.load(Ordering::Relaxed) as f64),
            ),
            (
                "leader",
                "gauge",
                "1 while this player leads (indexes and runs retention), else 0.",
                Some(f64::from(u8::from(st.role == Role::Leader))),
            ),
            (
                "index_passes_total",
                "counter",
                "Index passes completed.",
                Some(st.passes as f64),
            ),
            (
                "index_failed_passes_total",
                "counter",
                "Index passes that failed (retried).",
                Some(st.failed_passes as f64),
            ),
            (
                "index_last_pass_seconds",
                "gauge",
                "How long the last completed pass took.",
                Some(st.last_pass_ms as f64 / 1000.0),
            ),
            (
                "index_lag_seconds",
                "gauge",
                "Seconds since the last completed pass (absent before the first).",
                lag,
            ),
            (
                "index_open_sessions",
                "gauge",
                "Sessions whose close record has not been read.",
                Some(st.open_sessions as f64),
            ),
            (
                "sweep_rounds_total",
                "counter",
                "Complete rounds of the sweep behind discovery's cursor.",
                Some(sweep.rounds as f64),
            ),
            (
                "sweep_last_round_seconds",
                "gauge",
                "How long the last complete sweep round took: the bound on finding any session.",
                sweep.last_round_secs,
            ),
            (
                "sweep_found_total",
                "counter",
                "Sessions only the sweep found (dated before discovery's window).",
                Some(sweep.found as f64),
            ),
            (
                "retention_runs_total",
                "counter",
                "Retention runs started on this player.",
                retention.as_ref().map(|r| r.runs as f64),
            ),
            (
                "retention_panics_total",
                "counter",
                "Retention runs that panicked (caught).",
                retention.as_ref().map(|r| r.panics as f64),
            ),
        ];
        for (name, kind, help, v) in values {
            let Some(v) = v else { continue };
            family(&mut out, name, kind, help);
            let _ = writeln!(out, "jitrec_player_{name} {v}");
        }
        out
    }
}

/// The HELP and TYPE lines of a family. (Writing to a String cannot fail.)
fn family(out: &mut String, name: &str, kind: &str, help: &str) {
    let _ = writeln!(out, "# HELP jitrec_player_{name} {help}");
    let _ = writeln!(out, "# TYPE jitrec_player_{name} {kind}");
}

/// A label value as the text format wants it.
fn escape(v: &str) -> String {
    v.replace('\\', "\\\\")
        .replace('"', "\\\"")
        .replace('\n', "\\n")
}

/// Middleware counting every response by route template, method and status.
pub async fn track(State(m): State<Arc<Metrics>>, req: Request, next: Next) -> Response {
    let route = req
        .extensions()
        .get::<MatchedPath>()
        .map_or_else(|| "unmatched".to_owned(), |p| p.as_str().to_owned());
    // Only the methods the player answers keep their name: any other is one label.
    let method = match req.method().as_str() {
        m @ ("GET" | "HEAD" | "POST" | "PUT" | "DELETE") => m.to_owned(),
        _ => "other".to_owned(),
    };
    let resp = next.run(req).await;
    m.request(route, method, resp.status().as_u16());
    resp
}

/// Serves `GET /metrics` on `listener` until the process ends. Failures are logged: metrics
/// must never stop the player.
pub async fn serve(
    listener: tokio::net::TcpListener,
    metrics: Arc<Metrics>,
    indexer: IndexerHandle,
    retention: Option<Arc<Supervisor>>,
) {
    let app = axum::Router::new().route(
        "/metrics",
        axum::routing::get(move || {
            let (m, ix, r) = (Arc::clone(&metrics), indexer.clone(), retention.clone());
            async move { m.render(&ix, r.as_deref()) }
        }),
    );
    if let Err(e) = axum::serve(listener, app).await {
        tracing::error!(error = %e, "the metrics endpoint failed");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counters_render_with_bounded_escaped_labels() {
        let m = Metrics::default();
        m.request("/api/sessions/{id}".into(), "GET".into(), 200);
        m.request("/api/sessions/{id}".into(), "GET".into(), 200);
        m.request("a\"b".into(), "GET".into(), 404);
        Metrics::count(&m.sign_in_failures);
        let text = m.render(&IndexerHandle::default(), None);
        assert!(
            text.contains(
                "jitrec_player_http_requests_total{route=\"/api/sessions/{id}\",method=\"GET\",status=\"200\"} 2"
            ),
            "{text}"
        );
        assert!(text.contains("route=\"a\\\"b\""), "{text}");
        assert!(
            text.contains("jitrec_player_sign_in_failures_total 1"),
            "{text}"
        );
        assert!(text.contains("jitrec_player_leader 0"), "{text}");
        assert!(
            !text.contains("index_lag_seconds "),
            "no lag before a pass: {text}"
        );
        assert!(!text.contains("retention_runs_total"), "{text}");
    }
}
