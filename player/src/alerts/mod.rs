//! Alerts out to the rest of the security stack: webhooks (signed JSON) and syslog (RFC 5424
//! over TCP or TLS) for a session's start and end, its status changes and its rule matches.
//!
//! **What owns what.** The alerter is a stage of its own, decoupled from the indexer: it reads
//! the index (sessions, and the rules' `flags` table) and compares it with what it has already
//! alerted, which it keeps in record tables of its own ([`store`]: `reindex` never touches
//! them). It never writes the cache. Only the leading player derives and delivers
//! ([`IndexerHandle::leads`]): players sharing an index share one outbox and one record of what
//! was alerted, so a change is alerted once whichever player leads.
//!
//! **Derivation** ([`derive`]), every [`POLL`]: sessions open or changed lately, and every
//! [`FULL_EVERY`] all sessions (a status that `verify --record` changed on a closed session).
//! A session first seen gives `session_start`; a status other than what was last alerted gives
//! `status_change` (except recording → complete, the normal end, which `session_end` says);
//! `closed` becoming true gives `session_end`; a row of `flags` not alerted before gives
//! `rule_match`. On its first run against an index the alerter alerts nothing of what is
//! already there: it takes what it finds as alerted (a baseline), so an existing deployment is
//! not flooded; sessions already closed then never give a rule match (rules applied again to
//! old sessions stay quiet).
//!
//! **Delivery** ([`deliver`]): every alert is written to a durable outbox, one row per target,
//! before the record of what was alerted moves on, so a crash, a restart or a receiver that is
//! down loses nothing; each target has its own thread, retries with exponential backoff and
//! jitter, and marks a row delivered only when the receiver took it (webhook: a 2xx answer;
//! syslog: written to the connection, see [`syslog`] for that loss window). Delivery is
//! at-least-once: every alert carries a stable `id` (the same for every target and every
//! retry), by which a receiver drops duplicates. An outbox past [`MAX_PENDING`] undelivered
//! alerts per target drops the oldest, logged as an ERROR (data loss).
//!
//! **Untrusted content.** User names, hostnames, reasons and command lines come from the
//! bucket, which the recorded admin can write: every text field is bounded in bytes
//! ([`bounded_bytes`]) and control characters are replaced, so a payload has a bounded size and
//! a syslog message stays one line.
//!
//! The payload (its fields, bounds and ids) is `payload.rs`; payloads and their verification
//! are documented in `docs/alerts.md`.

mod deliver;
mod derive;
mod payload;
pub mod store;
pub mod syslog;
pub mod webhook;

pub use payload::*;
pub use webhook::{ID_HEADER, SIGNATURE_HEADER, TIMESTAMP_HEADER, sign, verify_signature};

use std::path::PathBuf;
use std::sync::{Arc, Condvar, Mutex, PoisonError};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use crate::index::{Index, IndexError};
use crate::indexer::IndexerHandle;

/// How often the alerter looks at the index: alerts leave within about this of the index
/// changing (the indexer's own default pass interval).
pub const POLL: Duration = Duration::from_secs(1);

/// How often every session is compared, not only the open and recently changed ones: a closed
/// session's status changed by `verify --record` (which leaves `last_change` alone) is alerted
/// within this.
pub const FULL_EVERY: Duration = Duration::from_secs(300);

/// Undelivered alerts kept per target: a receiver down for days must not grow the index
/// without bound. Past it the oldest are dropped (ERROR). At a few KiB each, at most a few
/// tens of MiB per target.
pub const MAX_PENDING: u64 = 10_000;

/// How long delivered, refused and dropped alerts stay in the outbox (for an operator asking
/// what was sent) before they are deleted.
pub const KEEP_DONE: Duration = Duration::from_secs(7 * 24 * 3600);

/// Why the alerts could not be set up or a pass failed.
#[derive(Debug, thiserror::Error)]
pub enum AlertError {
    #[error(transparent)]
    Index(#[from] IndexError),
    #[error("alerts: {0}")]
    Config(String),
    #[error("alert tables: {0}")]
    Record(String),
    #[error("the index holds an alert row it cannot read: {0}")]
    Corrupt(String),
}

/// The `serve` options of the alerts (docs/alerts.md).
#[derive(Debug, Clone, Default, clap::Args)]
pub struct AlertArgs {
    /// POST every alert as signed JSON to this URL (repeatable). https://, or http:// to a
    /// loopback address (see --webhook-allow-plain-http). Needs --webhook-secret-file.
    #[arg(long = "webhook", value_name = "URL")]
    pub webhook: Vec<String>,
    /// A file whose first line is the webhook signing secret (at least 16 bytes; e.g. the
    /// output of `openssl rand -hex 32`). Never on the command line, where `ps` shows it.
    #[arg(long, value_name = "FILE")]
    pub webhook_secret_file: Option<PathBuf>,
    /// Trust only the CA certificates in this PEM file for https:// webhooks (default: the
    /// system's roots and the web's).
    #[arg(long, value_name = "FILE")]
    pub webhook_ca: Option<PathBuf>,
    /// Allow http:// webhooks to addresses other than loopback (the alerts then cross the
    /// network unencrypted, and can be read and delayed on the way; the signature still
    /// shows a change).
    #[arg(long)]
    pub webhook_allow_plain_http: bool,
    /// Send every alert to this syslog receiver as RFC 5424 (repeatable): tcp://HOST:PORT, or
    /// tls://HOST:PORT (RFC 5425; the receiver's certificate checked against --syslog-ca or
    /// the system's roots).
    #[arg(long = "syslog", value_name = "URL")]
    pub syslog: Vec<String>,
    /// Trust only the CA certificates in this PEM file for tls:// syslog receivers.
    #[arg(long, value_name = "FILE")]
    pub syslog_ca: Option<PathBuf>,
    /// How syslog messages are framed on the connection: octet-counting (RFC 6587 3.4.1, what
    /// RFC 5425 requires over TLS) or lf (one message per line, for receivers that want it).
    #[arg(long, value_enum, default_value_t = syslog::Framing::OctetCounting)]
    pub syslog_framing: syslog::Framing,
    /// The syslog facility: a name (auth, authpriv, daemon, local0 ... local7, ...) or 0-23.
    #[arg(long, default_value = "authpriv")]
    pub syslog_facility: String,
    /// Rule matches below this severity are not alerted.
    #[arg(long, value_enum, default_value_t = Severity::Info)]
    pub alert_min_severity: Severity,
    /// The report view's address as its users reach it (e.g. https://jitrec.example.com):
    /// alerts then carry a link to the session's page.
    #[arg(long, value_name = "URL")]
    pub public_url: Option<String>,
}

/// One place alerts go.
#[derive(Debug, Clone)]
pub(crate) enum TargetSpec {
    Webhook(webhook::WebhookTarget),
    Syslog(syslog::SyslogTarget),
}

impl TargetSpec {
    /// The target's name in the outbox and the logs: stable across restarts with the same
    /// configuration, and without the URL's path or credentials (a webhook URL may carry a
    /// token).
    pub(crate) fn name(&self) -> String {
        match self {
            TargetSpec::Webhook(w) => w.name.clone(),
            TargetSpec::Syslog(s) => s.name.clone(),
        }
    }
}

/// The alerts' settings, checked.
#[derive(Debug, Clone)]
pub struct AlertConfig {
    pub(crate) targets: Vec<TargetSpec>,
    pub(crate) min_severity: Severity,
    pub(crate) public_url: Option<String>,
    pub(crate) poll: Duration,
    pub(crate) full_every: Duration,
}

impl AlertConfig {
    /// The names of the targets (as the outbox and the logs say them).
    pub fn target_names(&self) -> Vec<String> {
        self.targets.iter().map(TargetSpec::name).collect()
    }
}

impl AlertArgs {
    /// The checked settings; `None` when no target is configured (no alerter runs).
    pub fn config(&self) -> Result<Option<AlertConfig>, AlertError> {
        let bad = |s: String| AlertError::Config(s);
        if self.webhook.is_empty() && self.syslog.is_empty() {
            for (given, flag) in [
                (self.webhook_secret_file.is_some(), "--webhook-secret-file"),
                (self.webhook_ca.is_some(), "--webhook-ca"),
                (self.syslog_ca.is_some(), "--syslog-ca"),
            ] {
                if given {
                    return Err(bad(format!(
                        "{flag} is given but no --webhook or --syslog target"
                    )));
                }
            }
            return Ok(None);
        }
        let mut targets = Vec::new();
        if !self.webhook.is_empty() {
            let file = self.webhook_secret_file.as_ref().ok_or_else(|| {
                bad("--webhook needs --webhook-secret-file (the signing secret, in a file)".into())
            })?;
            let secret = read_secret(file)?;
            let client = webhook::client(self.webhook_ca.as_deref())?;
            for url in &self.webhook {
                targets.push(TargetSpec::Webhook(webhook::WebhookTarget::parse(
                    url,
                    self.webhook_allow_plain_http,
                    secret.clone(),
                    client.clone(),
                )?));
            }
        } else if self.webhook_secret_file.is_some() || self.webhook_ca.is_some() {
            return Err(bad(
                "--webhook-secret-file and --webhook-ca need a --webhook".into(),
            ));
        }
        let facility = syslog::parse_facility(&self.syslog_facility)?;
        let tls = if self.syslog.iter().any(|s| s.starts_with("tls://")) {
            Some(syslog::tls_config(self.syslog_ca.as_deref())?)
        } else {
            if self.syslog_ca.is_some() {
                return Err(bad("--syslog-ca needs a tls:// --syslog".into()));
            }
            None
        };
        for url in &self.syslog {
            targets.push(TargetSpec::Syslog(syslog::SyslogTarget::parse(
                url,
                self.syslog_framing,
                facility,
                tls.clone(),
            )?));
        }
        let mut names: Vec<String> = targets.iter().map(TargetSpec::name).collect();
        names.sort();
        if names.windows(2).any(|w| w[0] == w[1]) {
            return Err(bad("the same target is given twice".into()));
        }
        let public_url = match &self.public_url {
            None => None,
            Some(u) => {
                let parsed =
                    reqwest::Url::parse(u).map_err(|e| bad(format!("--public-url {u:?}: {e}")))?;
                if !matches!(parsed.scheme(), "http" | "https") {
                    return Err(bad(format!("--public-url {u:?}: not http(s)")));
                }
                Some(u.trim_end_matches('/').to_owned())
            }
        };
        Ok(Some(AlertConfig {
            targets,
            min_severity: self.alert_min_severity,
            public_url,
            poll: POLL,
            full_every: FULL_EVERY,
        }))
    }

    /// Sets up the alerts (their tables included) and starts them on threads of their own:
    /// `None` when no target is configured. `rt` runs the webhook client.
    pub fn start(
        &self,
        index: Arc<dyn Index>,
        lead: IndexerHandle,
        rt: tokio::runtime::Handle,
    ) -> Result<Option<Running>, AlertError> {
        let Some(config) = self.config()? else {
            return Ok(None);
        };
        Alerter::new(config, index, lead, rt)?.spawn().map(Some)
    }
}

/// The first line of `file`, which must be at least [`MIN_SECRET`] bytes.
fn read_secret(file: &std::path::Path) -> Result<Arc<[u8]>, AlertError> {
    let text = std::fs::read_to_string(file).map_err(|e| {
        AlertError::Config(format!(
            "reading the webhook secret from {}: {e}",
            file.display()
        ))
    })?;
    #[cfg(unix)]
    if let Ok(m) = std::fs::metadata(file) {
        use std::os::unix::fs::PermissionsExt;
        if m.permissions().mode() & 0o077 != 0 {
            tracing::warn!(file = %file.display(),
                "the webhook secret file is readable by other users: chmod 600 it");
        }
    }
    let line = text.lines().next().unwrap_or_default().trim_end();
    if line.len() < MIN_SECRET {
        return Err(AlertError::Config(format!(
            "the webhook secret in {} is shorter than {MIN_SECRET} bytes (make one with \
             `openssl rand -hex 32`)",
            file.display()
        )));
    }
    Ok(Arc::from(line.as_bytes()))
}

#[derive(Debug, Default)]
struct WakeState {
    stop: bool,
    /// Bumped when alerts were queued, so delivery does not wait out its poll.
    queued: u64,
}

/// Stop and wake-up, shared by the alerter's threads.
#[derive(Debug, Default)]
pub(crate) struct Wake {
    state: Mutex<WakeState>,
    cv: Condvar,
}

impl Wake {
    pub(crate) fn stopped(&self) -> bool {
        self.state
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .stop
    }

    fn stop(&self) {
        self.state
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .stop = true;
        self.cv.notify_all();
    }

    pub(crate) fn queued(&self) {
        self.state
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .queued += 1;
        self.cv.notify_all();
    }

    /// The current count of queue events, to wait for the next one.
    pub(crate) fn generation(&self) -> u64 {
        self.state
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .queued
    }

    /// Waits up to `timeout`, or until stopped, or (with `since`) until alerts were queued
    /// after generation `since`. Returns whether it was stopped.
    pub(crate) fn wait(&self, timeout: Duration, since: Option<u64>) -> bool {
        let deadline = Instant::now() + timeout;
        let mut st = self.state.lock().unwrap_or_else(PoisonError::into_inner);
        loop {
            if st.stop || since.is_some_and(|g| st.queued != g) {
                return st.stop;
            }
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return false;
            }
            st = self
                .cv
                .wait_timeout(st, left)
                .unwrap_or_else(PoisonError::into_inner)
                .0;
        }
    }
}

/// The alerter: derives alerts from the index and hands them to one delivery thread per
/// target through the outbox.
pub struct Alerter {
    config: Arc<AlertConfig>,
    index: Arc<dyn Index>,
    lead: IndexerHandle,
    rt: tokio::runtime::Handle,
    wake: Arc<Wake>,
}

impl Alerter {
    /// Prepares the alert tables (idempotent migrations).
    pub fn new(
        config: AlertConfig,
        index: Arc<dyn Index>,
        lead: IndexerHandle,
        rt: tokio::runtime::Handle,
    ) -> Result<Self, AlertError> {
        store::init(index.as_ref())?;
        Ok(Self {
            config: Arc::new(config),
            index,
            lead,
            rt,
            wake: Arc::new(Wake::default()),
        })
    }

    /// Starts the derivation thread and one delivery thread per target.
    pub fn spawn(self) -> Result<Running, AlertError> {
        let names = self.config.target_names();
        tracing::info!(targets = ?names, "alerts: sending to these targets while this player leads");
        let mut threads = Vec::new();
        let spawn_err = |e: std::io::Error| AlertError::Config(format!("starting a thread: {e}"));
        for t in &self.config.targets {
            let worker = deliver::Worker::new(
                t.clone(),
                Arc::clone(&self.index),
                self.lead.clone(),
                Arc::clone(&self.wake),
                self.rt.clone(),
            );
            threads.push(
                std::thread::Builder::new()
                    .name("alerts-send".into())
                    .spawn(move || worker.run())
                    .map_err(spawn_err)?,
            );
        }
        let wake = Arc::clone(&self.wake);
        threads.push(
            std::thread::Builder::new()
                .name("alerts".into())
                .spawn(move || self.run())
                .map_err(spawn_err)?,
        );
        Ok(Running { wake, threads })
    }

    /// The derivation loop: a pass every poll while this player leads, until stopped.
    pub fn run(self) {
        let mut deriver = derive::Deriver::new(Arc::clone(&self.config));
        let mut last_full: Option<Instant> = None;
        let mut failing = false;
        loop {
            if self.wake.stopped() {
                return;
            }
            if self.lead.leads() {
                let full = last_full.is_none_or(|t| t.elapsed() >= self.config.full_every);
                match deriver.pass(self.index.as_ref(), full) {
                    Ok(queued) => {
                        if full {
                            last_full = Some(Instant::now());
                        }
                        if failing {
                            tracing::info!("alerts: reading the index works again");
                            failing = false;
                        }
                        if queued > 0 {
                            self.wake.queued();
                        }
                    }
                    Err(e) => {
                        if !failing {
                            tracing::warn!(error = %e, "alerts: a pass failed; trying again every poll");
                        }
                        failing = true;
                    }
                }
            } else {
                // Another player leads: what it alerted is in the shared tables; this one
                // starts again from them when it leads.
                deriver.forget();
            }
            if self.wake.wait(self.config.poll, None) {
                return;
            }
        }
    }
}

/// The running alerter's threads.
pub struct Running {
    wake: Arc<Wake>,
    threads: Vec<JoinHandle<()>>,
}

impl Running {
    /// Stops every thread and waits up to `limit` for them; a thread still busy then (a
    /// receiver that does not answer within its timeout) is left to end on its own: what it
    /// was sending stays in the outbox, undelivered, and is sent at the next start.
    pub fn stop(self, limit: Duration) {
        self.wake.stop();
        let deadline = Instant::now() + limit;
        let mut left: Vec<JoinHandle<()>> = self.threads;
        while !left.is_empty() && Instant::now() < deadline {
            let (done, busy): (Vec<_>, Vec<_>) = left.into_iter().partition(|t| t.is_finished());
            for t in done {
                if t.join().is_err() {
                    tracing::error!("alerts: a thread panicked");
                }
            }
            left = busy;
            if !left.is_empty() {
                std::thread::sleep(Duration::from_millis(20));
            }
        }
        if !left.is_empty() {
            tracing::warn!(
                threads = left.len(),
                ?limit,
                "alerts: stopping without waiting longer for a delivery in flight (it stays queued)"
            );
        }
    }
}

/// The smallest webhook secret accepted, in bytes (128 bits).
pub const MIN_SECRET: usize = 16;
