//! The index: a queryable cache of what the bucket holds (sessions, chunks, init segments,
//! events), behind one trait with two backends: SQLite ([`sqlite::SqliteIndex`], embedded, one
//! file, WAL; the default) and PostgreSQL ([`postgres::PgIndex`], when one machine is not enough).
//!
//! The bucket is the source of truth: everything here is rebuilt by `jitrec-player reindex`, so
//! the schema can change by dropping and rebuilding. Both backends run the same SQL (written
//! with `$n` placeholders; SQLite reads them as `?n`) except for full-text search, which is FTS5
//! on SQLite and a `tsvector` with a GIN index on PostgreSQL. Event text is split into words the
//! same way for both ([`words`]), so a search finds the same events on either.
//!
//! Writes come as a [`Batch`] applied in one transaction, and every write is an upsert keyed by
//! (session, sequence number), so re-reading a session after a crash or a reindex converges on
//! the same rows.

pub mod postgres;
pub mod sqlite;

use std::collections::HashMap;

use chrono::{DateTime, Utc};
use jitrec_format::{Event, EventKind, ObjectKey, SessionId};
use serde::Serialize;

use crate::rules::{FlagRow, Severity};
use crate::scan::{Problem, Status};

/// Why the index could not answer.
#[derive(Debug, thiserror::Error)]
pub enum IndexError {
    #[error("SQLite index: {0}")]
    Sqlite(#[from] rusqlite::Error),
    #[error("PostgreSQL index: {}", pg_text(.0))]
    Postgres(#[from] ::postgres::Error),
    #[error("index holds a value it cannot read: {0}")]
    Corrupt(String),
    #[error("index: {0}")]
    Other(String),
}

/// A PostgreSQL error in words: the server's own message (the client's `Display` says only
/// "db error"), so the operator reading the log sees what failed.
fn pg_text(e: &::postgres::Error) -> String {
    match e.as_db_error() {
        Some(db) => format!("{}: {} ({})", db.severity(), db.message(), db.code().code()),
        None => e.to_string(),
    }
}

/// One session as the index lists it.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct SessionRow {
    pub id: SessionId,
    pub started_at: DateTime<Utc>,
    /// From the close record; `None` while recording.
    pub ended_at: Option<DateTime<Utc>>,
    pub user_name: String,
    pub user_id: String,
    pub machine_id: String,
    pub hostname: String,
    pub company: Option<String>,
    pub location: Option<String>,
    pub computer: Option<String>,
    pub authorized_by: Option<String>,
    pub reason: Option<String>,
    /// How JIT start was detected (`group_membership`, `control_command`); empty when the header
    /// could not be read.
    pub trigger: String,
    pub end_reason: Option<String>,
    pub chunks: u64,
    /// Video and events bytes of the indexed chunks.
    pub bytes: u64,
    /// Media time covered by the indexed chunks.
    pub duration_us: u64,
    pub status: Status,
    pub problems: Vec<Problem>,
    /// When the indexer last found something new for this session.
    pub last_change: DateTime<Utc>,
    /// The close record has been read: nothing more will arrive.
    pub closed: bool,
    /// The interrupted session of the same elevation that this one continues (the header's
    /// `continues`: the recorder died and was restarted).
    pub continues: Option<SessionId>,
}

impl SessionRow {
    /// A row for a session whose header has not been read (or could not be).
    pub fn unknown(id: SessionId, now: DateTime<Utc>) -> Self {
        let started_at = DateTime::from_timestamp_millis(id.unix_ms() as i64).unwrap_or(now);
        Self {
            id,
            started_at,
            ended_at: None,
            user_name: String::new(),
            user_id: String::new(),
            machine_id: String::new(),
            hostname: String::new(),
            company: None,
            location: None,
            computer: None,
            authorized_by: None,
            reason: None,
            trigger: String::new(),
            end_reason: None,
            chunks: 0,
            bytes: 0,
            duration_us: 0,
            status: Status::Recording,
            problems: Vec::new(),
            last_change: now,
            closed: false,
            continues: None,
        }
    }
}

/// One chunk of a session.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct ChunkRow {
    pub seq: u64,
    pub init_id: u64,
    pub media_start_us: u64,
    pub media_end_us: u64,
    pub utc_start: DateTime<Utc>,
    pub utc_end: DateTime<Utc>,
    pub keyframe: bool,
    pub frames: u32,
    pub video_bytes: u64,
    pub events_bytes: u64,
    pub events: u32,
    /// Linked into an unbroken chain with every payload matching.
    pub verified: bool,
}

/// One init segment of a session (a screen size).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct InitRow {
    pub id: u64,
    pub width: u32,
    pub height: u32,
    /// RFC 6381 codec string, for `MediaSource.addSourceBuffer`.
    pub codec: String,
    pub bytes: u64,
}

/// One event of a session.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct EventRow {
    /// The chunk it came in.
    pub seq: u64,
    /// Its position in the chunk.
    pub idx: u32,
    pub media_us: u64,
    pub utc: DateTime<Utc>,
    /// The event type (`process_start`, `window_title`, ...).
    pub kind: String,
    /// What a reviewer reads and searches: the command line, the window title, ...
    pub text: String,
    /// The whole event as stored (JSON).
    pub data: EventData,
}

/// An event as JSON text, sent as JSON as it is: not a parsed tree, which costs several times
/// its size per event.
#[derive(Debug, Clone, Serialize)]
#[serde(transparent)]
pub struct EventData(Box<serde_json::value::RawValue>);

impl PartialEq for EventData {
    fn eq(&self, other: &Self) -> bool {
        self.0.get() == other.0.get()
    }
}

impl EventData {
    /// From JSON text; refused if it is not JSON.
    pub fn from_json(text: String) -> Result<Self, serde_json::Error> {
        serde_json::value::RawValue::from_string(text).map(EventData)
    }

    pub fn as_str(&self) -> &str {
        self.0.get()
    }

    /// Parsed, for callers that look inside.
    pub fn value(&self) -> serde_json::Value {
        serde_json::from_str(self.0.get()).unwrap_or(serde_json::Value::Null)
    }
}

/// The most characters of an event's text the index keeps and searches (a command line or a
/// window title longer than this is cut, and says how long it was). Both backends: PostgreSQL's
/// `tsvector` refuses more than 1 MB, and a reviewer's page must not carry megabytes per event.
/// The whole event stays in the bucket (and in an export's `events.json`).
pub const EVENT_TEXT_MAX: usize = 8 * 1024;

/// The largest event the index keeps whole as `data`; a larger one is kept as its kind and
/// size only (its text, bounded, still says what it was).
pub const EVENT_DATA_MAX: usize = 8 * 1024;

impl EventRow {
    /// The row of event `idx` of chunk `seq`.
    pub fn new(seq: u64, idx: u32, e: &Event) -> Self {
        let (kind, text) = describe(&e.event);
        let text = crate::auth::bounded(&text, EVENT_TEXT_MAX);
        let mut json = serde_json::to_string(&e.event).unwrap_or_else(|_| "null".into());
        if json.len() > EVENT_DATA_MAX {
            // Kept as the same event with its long texts cut (start and end), so what it was
            // (executable, user, parent) is still there for the timeline and the detection rules:
            // padding a command line must not hide the program it runs.
            json = cut_event(&e.event)
                .and_then(|c| serde_json::to_string(&c).ok())
                .filter(|j| j.len() <= EVENT_DATA_MAX)
                .unwrap_or_else(|| {
                    serde_json::json!({ "kind": kind, "truncated": true, "bytes": json.len() })
                        .to_string()
                });
        }
        // Serialised by serde_json just above: JSON by construction.
        let data = EventData::from_json(json).expect("serde_json writes JSON");
        Self {
            seq,
            idx,
            media_us: e.media_us.as_micros(),
            utc: e.utc,
            kind: kind.to_owned(),
            text,
            data,
        }
    }

    /// Whether the index keeps this event cut: too large to keep whole, its long texts were
    /// shortened (start and end kept) or it is kept as its kind and size only.
    pub fn is_cut(&self) -> bool {
        let d = self.data.as_str();
        d.contains(" bytes in all) ... ") || d.contains("\"truncated\":true")
    }
}

/// `e` with its long texts cut to fit [`EVENT_DATA_MAX`]; `None` for kinds that have none.
fn cut_event(e: &EventKind) -> Option<EventKind> {
    use crate::auth::{bounded, bounded_ends};
    // A quarter of the bound for the command line or title, and 512 characters for the rest: with
    // JSON escaping at most doubling them, the whole stays within the bound.
    let long = EVENT_DATA_MAX / 8;
    match e {
        EventKind::ProcessStart(p) => {
            let mut p = p.clone();
            p.command_line = bounded_ends(&p.command_line, long);
            p.exe = bounded_ends(&p.exe, 512);
            p.user.name = bounded(&p.user.name, 256);
            p.user.id = bounded(&p.user.id, 256);
            Some(EventKind::ProcessStart(p))
        }
        EventKind::WindowFocus(w) | EventKind::WindowTitle(w) => {
            let mut w = w.clone();
            w.title = bounded_ends(&w.title, long);
            w.window = bounded(&w.window, 256);
            Some(match e {
                EventKind::WindowFocus(_) => EventKind::WindowFocus(w),
                _ => EventKind::WindowTitle(w),
            })
        }
        EventKind::Change {
            area,
            action,
            subject,
            detail,
        } => Some(EventKind::Change {
            area: bounded(area, 64),
            action: bounded(action, 64),
            subject: bounded_ends(subject, 512),
            detail: detail.as_deref().map(|d| bounded_ends(d, long)),
        }),
        _ => None,
    }
}

/// The type name and the searchable text of an event.
pub fn describe(e: &EventKind) -> (&'static str, String) {
    match e {
        EventKind::ProcessStart(p) => (
            "process_start",
            format!(
                "{} (user {}, pid {})",
                // Room left for the rest, so the whole text stays within the bound; start and
                // end kept, so a command behind padding is still found.
                crate::auth::bounded_ends(&p.command_line, EVENT_TEXT_MAX - 256),
                p.user.name,
                p.pid
            ),
        ),
        EventKind::ProcessExit(p) => (
            "process_exit",
            match (p.exit_code, p.signal) {
                (_, Some(s)) => format!("pid {} killed by signal {s}", p.pid),
                (Some(c), None) => format!("pid {} exited with {c}", p.pid),
                (None, None) => format!("pid {} exited", p.pid),
            },
        ),
        EventKind::WindowFocus(w) => ("window_focus", w.title.clone()),
        EventKind::WindowTitle(w) => ("window_title", w.title.clone()),
        EventKind::JitStart {
            user,
            machine,
            authorized_by,
            reason,
        } => (
            "jit_start",
            format!(
                "JIT start: {user} on {machine}, authorised by {}, reason {}",
                authorized_by.as_deref().unwrap_or("unknown"),
                reason.as_deref().unwrap_or("unknown")
            ),
        ),
        EventKind::JitStop {
            user,
            machine,
            reason,
            stopped_by,
        } => (
            "jit_stop",
            match (stopped_by, reason.as_deref().filter(|r| !r.is_empty())) {
                (Some(c), _) if c.recorded_user == Some(true) => format!(
                    "JIT stop: {user} on {machine}: STOPPED BY THE RECORDED USER: {}",
                    c.detail
                ),
                (Some(c), _) => format!("JIT stop: {user} on {machine}: {}", c.detail),
                (None, Some(r)) => format!("JIT stop: {user} on {machine}: {r}"),
                (None, None) => format!("JIT stop: {user} on {machine}"),
            },
        ),
        EventKind::RecorderStarted => ("recorder_started", "recorder started".into()),
        EventKind::RecorderStopped => ("recorder_stopped", "recorder stopped".into()),
        EventKind::FramesDropped { count } => ("frames_dropped", format!("{count} frames dropped")),
        EventKind::EventsSummarised { count, what } => (
            "events_summarised",
            format!("{count} events summarised: {what}"),
        ),
        EventKind::CaptureError { message } => ("capture_error", message.clone()),
        EventKind::EventSource {
            source,
            state,
            detail,
        } => (
            "event_source",
            format!("{source}: {state:?}: {detail}").to_lowercase(),
        ),
        EventKind::Gap {
            from_us,
            to_us,
            reason,
        } => (
            "gap",
            format!("no screen picture from {from_us} to {to_us}: {reason}"),
        ),
        EventKind::NoticeShown {
            text,
            display,
            require_ack,
            display_seconds,
        } => (
            "notice_shown",
            match (require_ack, display_seconds) {
                (true, _) => {
                    format!("recording notice shown on {display}, to be acknowledged: {text}")
                }
                (false, Some(s)) => {
                    format!("recording notice shown on {display} for {s} s: {text}")
                }
                (false, None) => format!("recording notice shown on {display}: {text}"),
            },
        ),
        EventKind::NoticeAcknowledged => (
            "notice_acknowledged",
            "the user acknowledged the recording notice".into(),
        ),
        EventKind::NoticeFailed { message } => (
            "notice_failed",
            format!("the recording notice could not be shown: {message}"),
        ),
        EventKind::Change {
            area,
            action,
            subject,
            detail,
        } => (
            "change",
            match detail {
                Some(d) => format!("{area}: {} {subject}: {d}", action.replace('_', " ")),
                None => format!("{area}: {} {subject}", action.replace('_', " ")),
            },
        ),
        EventKind::FailClosed { reason, action } => (
            "fail_closed",
            format!("the recorder ended the elevation ({reason}): {action}"),
        ),
    }
}

/// The words of `text` as search matches them: runs of letters and digits, lower-cased.
/// `/usr/sbin/useradd -m eve` is `usr sbin useradd m eve`, so a search for `useradd` finds it on
/// both backends (PostgreSQL's own parser would keep the path as one token).
pub fn words(text: &str) -> Vec<String> {
    text.split(|c: char| !c.is_alphanumeric())
        .filter(|w| !w.is_empty())
        .map(str::to_lowercase)
        .collect()
}

/// The largest page of events one request reads: with each event's text and data bounded
/// ([`EVENT_TEXT_MAX`], [`EVENT_DATA_MAX`]), a page is at most about 16 MiB.
pub const MAX_EVENTS_PAGE: u32 = 1_000;

/// The bind values of an events page: session, after (chunk, position), limit.
pub(crate) fn events_page_bounds(after: Option<(u64, u32)>, limit: u32) -> (i64, i64, i64) {
    let (seq, idx) = after.map_or((-1, -1), |(s, i)| (to_i64(s), i64::from(i)));
    (seq, idx, i64::from(limit.clamp(1, MAX_EVENTS_PAGE)))
}

/// A session's flags as one answer carries them ([`Index::flags_bounded`]).
#[derive(Debug, Clone, Default, Serialize)]
pub struct BoundedFlags {
    /// The first matches of each rule, in order.
    pub flags: Vec<FlagRow>,
    /// Every rule that matched: how often, and how severe.
    pub counts: Vec<FlagCount>,
}

/// How often one rule matched in a session.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct FlagCount {
    pub rule: String,
    pub severity: Severity,
    pub count: u64,
}

/// Writes applied together in one transaction.
#[derive(Debug, Default)]
pub struct Batch {
    pub sessions: Vec<SessionRow>,
    pub inits: Vec<(SessionId, InitRow)>,
    /// A chunk with all its events; replaces the chunk and its events if already indexed.
    pub chunks: Vec<(SessionId, ChunkRow, Vec<EventRow>)>,
    /// The detection rules' flags of a chunk (session, seq); replaces the chunk's flags.
    pub flags: Vec<(SessionId, u64, Vec<FlagRow>)>,
}

impl Batch {
    pub fn is_empty(&self) -> bool {
        self.sessions.is_empty()
            && self.inits.is_empty()
            && self.chunks.is_empty()
            && self.flags.is_empty()
    }
}

/// A filtered, paginated list of sessions, newest first (or oldest first).
#[derive(Debug, Clone, Default)]
pub struct Query {
    /// The elevated user's name (exact).
    pub user: Option<String>,
    /// The machine's hostname or id (exact).
    pub machine: Option<String>,
    pub company: Option<String>,
    pub location: Option<String>,
    pub computer: Option<String>,
    /// Sessions that started at or after this.
    pub from: Option<DateTime<Utc>>,
    /// Sessions that started before this.
    pub to: Option<DateTime<Utc>>,
    pub status: Option<Status>,
    /// Words that must all occur in one event of the session (commands, window titles, ...).
    pub text: Option<String>,
    /// Sessions with a flag at least this severe.
    pub risk: Option<Severity>,
    /// The page after this session (the previous page's `next`).
    pub after: Option<SessionId>,
    /// Oldest first instead of newest first.
    pub oldest_first: bool,
    /// Page size, at most [`MAX_PAGE`].
    pub limit: u32,
}

/// Largest page a list query returns.
pub const MAX_PAGE: u32 = 200;

/// Events shown per session as search hits.
pub const HITS_PER_SESSION: u32 = 5;

/// One page of sessions.
#[derive(Debug, Clone, Serialize)]
pub struct Page {
    pub sessions: Vec<Listed>,
    /// Pass as `after` for the next page; `None` on the last page.
    pub next: Option<SessionId>,
}

/// A session in a list, with the events that matched a text search.
#[derive(Debug, Clone, Serialize)]
pub struct Listed {
    #[serde(flatten)]
    pub session: SessionRow,
    pub hits: Vec<Hit>,
}

/// An event that matched a text search: where to jump to.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Hit {
    pub media_us: u64,
    pub kind: String,
    pub text: String,
}

/// Number of sessions per status.
pub type StatusCounts = Vec<(Status, u64)>;

/// The lead, held by one player of those sharing an index until it is dropped or lost.
pub trait Lease: Send {
    /// Whether the lead is still this player's (asked before each pass and each retention
    /// run). Once it says no, the lease is lost for good: take a new one.
    fn held(&mut self) -> bool;
}

/// The index, whichever backend holds it.
pub trait Index: Send + Sync {
    /// `sqlite` or `postgresql`.
    fn backend(&self) -> &'static str;
    /// Applies `batch` in one transaction.
    fn apply(&self, batch: &Batch) -> Result<(), IndexError>;
    fn session(&self, id: SessionId) -> Result<Option<SessionRow>, IndexError>;
    fn chunks(&self, id: SessionId) -> Result<Vec<ChunkRow>, IndexError>;
    fn inits(&self, id: SessionId) -> Result<Vec<InitRow>, IndexError>;
    /// Up to `limit` events of the session in order, after event `after` (chunk, position)
    /// when given: one page.
    fn events_page(
        &self,
        id: SessionId,
        after: Option<(u64, u32)>,
        limit: u32,
    ) -> Result<Vec<EventRow>, IndexError>;
    /// Every event of the session, in order (page by page; for callers that need them all).
    fn events(&self, id: SessionId) -> Result<Vec<EventRow>, IndexError> {
        let mut all: Vec<EventRow> = Vec::new();
        loop {
            let after = all.last().map(|e| (e.seq, e.idx));
            let page = self.events_page(id, after, MAX_EVENTS_PAGE)?;
            let done = page.len() < MAX_EVENTS_PAGE as usize;
            all.extend(page);
            if done {
                return Ok(all);
            }
        }
    }
    /// The detection rules' flags of a session, in order.
    fn flags(&self, id: SessionId) -> Result<Vec<FlagRow>, IndexError> {
        let rows = self.query(
            "SELECT seq, idx, media_us, utc, rule, rank, sentence, text FROM flags \
             WHERE session_id = $1 ORDER BY seq, idx, rule",
            &[SqlValue::Text(id.to_string())],
        )?;
        rows.iter().map(|r| flag_row(r)).collect()
    }
    /// A session's flags bounded for one answer: the first `per_rule` matches of each rule, in
    /// order, and every rule's count and severity (a rule matching a million times costs the
    /// answer `per_rule` rows).
    fn flags_bounded(&self, id: SessionId, per_rule: u32) -> Result<BoundedFlags, IndexError> {
        let sid = SqlValue::Text(id.to_string());
        let rows = self.query(
            "SELECT seq, idx, media_us, utc, rule, rank, sentence, text FROM ( \
               SELECT seq, idx, media_us, utc, rule, rank, sentence, text, \
               ROW_NUMBER() OVER (PARTITION BY rule ORDER BY seq, idx) AS n \
               FROM flags WHERE session_id = $1) AS f \
             WHERE n <= $2 ORDER BY seq, idx, rule",
            &[sid.clone(), SqlValue::Int(i64::from(per_rule))],
        )?;
        let flags = rows.iter().map(|r| flag_row(r)).collect::<Result<_, _>>()?;
        let rows = self.query(
            "SELECT rule, MAX(rank), COUNT(*) FROM flags WHERE session_id = $1 \
             GROUP BY rule ORDER BY rule",
            &[sid],
        )?;
        let bad = || IndexError::Other("a flag count of the wrong shape".into());
        let counts = rows
            .iter()
            .map(|r| {
                Ok(FlagCount {
                    rule: r
                        .first()
                        .and_then(SqlValue::text)
                        .ok_or_else(bad)?
                        .to_owned(),
                    severity: r
                        .get(1)
                        .and_then(SqlValue::int)
                        .map(Severity::clamped)
                        .ok_or_else(bad)?,
                    count: r
                        .get(2)
                        .and_then(SqlValue::int)
                        .and_then(|n| u64::try_from(n).ok())
                        .ok_or_else(bad)?,
                })
            })
            .collect::<Result<_, IndexError>>()?;
        Ok(BoundedFlags { flags, counts })
    }
    /// Up to `limit` flags of `rule` in `id` after the event `after`, in order (the pages
    /// behind [`Index::flags_bounded`]).
    fn flags_page(
        &self,
        id: SessionId,
        rule: &str,
        after: Option<(u64, u32)>,
        limit: u32,
    ) -> Result<Vec<FlagRow>, IndexError> {
        let (seq, idx, limit) = events_page_bounds(after, limit);
        let rows = self.query(
            "SELECT seq, idx, media_us, utc, rule, rank, sentence, text FROM flags \
             WHERE session_id = $1 AND rule = $2 AND (seq > $3 OR (seq = $3 AND idx > $4)) \
             ORDER BY seq, idx LIMIT $5",
            &[
                SqlValue::Text(id.to_string()),
                SqlValue::Text(rule.to_owned()),
                SqlValue::Int(seq),
                SqlValue::Int(idx),
                SqlValue::Int(limit),
            ],
        )?;
        rows.iter().map(|r| flag_row(r)).collect()
    }
    /// The risk (most severe flag) of each of `ids` that has a flag.
    fn risks(&self, ids: &[SessionId]) -> Result<HashMap<SessionId, Severity>, IndexError> {
        let mut out = HashMap::new();
        for chunk in ids.chunks(100) {
            let marks = placeholders(chunk.len());
            let params: Vec<SqlValue> = chunk
                .iter()
                .map(|i| SqlValue::Text(i.to_string()))
                .collect();
            let rows = self.query(
                &format!(
                    "SELECT session_id, MAX(rank) FROM flags WHERE session_id IN ({marks}) \
                     GROUP BY session_id"
                ),
                &params,
            )?;
            for r in rows {
                if let (Some(id), Some(rank)) = (
                    r.first()
                        .and_then(|v| v.text())
                        .and_then(|t| t.parse().ok()),
                    r.get(1).and_then(|v| v.int()).and_then(Severity::from_rank),
                ) {
                    out.insert(id, rank);
                }
            }
        }
        Ok(out)
    }
    /// Whether the index knows this init segment or media segment (the API serves no others).
    fn knows(&self, key: ObjectKey) -> Result<bool, IndexError>;
    fn list(&self, q: &Query) -> Result<Page, IndexError>;
    /// Sessions whose close record has not been read, oldest first.
    fn unfinished(&self) -> Result<Vec<SessionId>, IndexError>;
    /// The most recently started session indexed.
    fn newest(&self) -> Result<Option<SessionId>, IndexError>;
    fn counts(&self) -> Result<StatusCounts, IndexError>;
    /// Empties the index (before a rebuild).
    fn clear(&self) -> Result<(), IndexError>;
    /// Runs a statement of the portable SQL (`$n` placeholders) that [`crate::auth`] and other
    /// modules keep beside the index; returns the rows changed.
    fn exec(&self, sql: &str, params: &[SqlValue]) -> Result<u64, IndexError>;
    /// Runs a query of the portable SQL; returns its rows.
    fn query(&self, sql: &str, params: &[SqlValue]) -> Result<Vec<Vec<SqlValue>>, IndexError>;
    /// Refreshes the query planner's statistics. The indexer calls it every
    /// [`crate::indexer::MAINTAIN_EVERY`]; without statistics SQLite can pick an index that
    /// avoids sorting over one that filters, and a list query reads every session.
    fn maintain(&self) -> Result<(), IndexError> {
        Ok(())
    }
    /// Takes the lead among the players sharing this index, unless another player holds it:
    /// indexing and retention are the leader's alone, every player serves the API. `None`:
    /// another player leads.
    fn try_lead(&self) -> Result<Option<Box<dyn Lease>>, IndexError>;
}

/// Opens the index `spec` names: a `postgres://` or `postgresql://` URL, or a SQLite file path.
pub fn open(spec: &str) -> Result<Box<dyn Index>, IndexError> {
    let index: Box<dyn Index> =
        if spec.starts_with("postgres://") || spec.starts_with("postgresql://") {
            Box::new(postgres::PgIndex::connect(spec)?)
        } else {
            Box::new(sqlite::SqliteIndex::open(std::path::Path::new(spec))?)
        };
    // The evidence kept beside the index: what the player witnessed, and which key is whose.
    crate::witness::init(index.as_ref()).map_err(|e| IndexError::Other(e.to_string()))?;
    crate::enroll::init(index.as_ref()).map_err(|e| IndexError::Other(e.to_string()))?;
    crate::locate::init(index.as_ref())?;
    Ok(index)
}

/// A value passed to or read from [`Index::exec`] and [`Index::query`]. Booleans are integers,
/// times are microseconds since the Unix epoch: what both backends store alike.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SqlValue {
    Null,
    Int(i64),
    Text(String),
}

impl SqlValue {
    pub fn text(&self) -> Option<&str> {
        match self {
            SqlValue::Text(s) => Some(s),
            _ => None,
        }
    }

    pub fn int(&self) -> Option<i64> {
        match self {
            SqlValue::Int(i) => Some(*i),
            _ => None,
        }
    }
}

/// A value bound to a query, whichever backend runs it.
#[derive(Debug, Clone)]
pub(crate) enum Param {
    Text(String),
    Int(i64),
}

/// Schema and queries both backends run. `$n` placeholders; `{TEXT_MATCH}` is where a
/// backend's full-text condition goes.
pub(crate) mod sql {
    pub(crate) const SESSION_COLUMNS: &str = "id, started_at, ended_at, user_name, user_id, machine_id, \
        hostname, company, location, computer, authorized_by, reason, trigger_kind, end_reason, \
        chunks, bytes, duration_us, status, problems, last_change, closed, continues";

    /// Indexes both backends create after their tables: one per list filter, each ending in
    /// `id` so a filtered page is read in order without a sort.
    pub(crate) const INDEXES: &str = "
CREATE INDEX IF NOT EXISTS sessions_user ON sessions (user_name, id);
CREATE INDEX IF NOT EXISTS sessions_host ON sessions (hostname, id);
CREATE INDEX IF NOT EXISTS sessions_machine ON sessions (machine_id, id);
CREATE INDEX IF NOT EXISTS sessions_status ON sessions (status, id);
CREATE INDEX IF NOT EXISTS sessions_company ON sessions (company, id);
CREATE INDEX IF NOT EXISTS sessions_location ON sessions (location, id);
CREATE INDEX IF NOT EXISTS sessions_computer ON sessions (computer, id);
CREATE INDEX IF NOT EXISTS sessions_started ON sessions (started_at);
CREATE INDEX IF NOT EXISTS sessions_open ON sessions (closed, id);
CREATE UNIQUE INDEX IF NOT EXISTS events_key ON events (session_id, seq, idx);
CREATE INDEX IF NOT EXISTS sessions_continues ON sessions (continues);
CREATE INDEX IF NOT EXISTS sessions_last_change ON sessions (last_change);
";

    /// The column sessions gained with `continues` (an older SQLite index gets it added).
    pub(crate) const ADD_CONTINUES: &str =
        "ALTER TABLE sessions ADD COLUMN continues TEXT NOT NULL DEFAULT ''";

    pub(crate) const UPSERT_SESSION: &str = "INSERT INTO sessions (id, started_at, ended_at, user_name, \
        user_id, machine_id, hostname, company, location, computer, authorized_by, reason, \
        trigger_kind, end_reason, chunks, bytes, duration_us, status, problems, last_change, \
        closed, continues) VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14, \
        $15, $16, $17, $18, $19, $20, $21, $22) ON CONFLICT (id) DO UPDATE SET started_at = excluded.started_at, \
        ended_at = excluded.ended_at, user_name = excluded.user_name, user_id = excluded.user_id, \
        machine_id = excluded.machine_id, hostname = excluded.hostname, \
        company = excluded.company, location = excluded.location, computer = excluded.computer, \
        authorized_by = excluded.authorized_by, reason = excluded.reason, \
        trigger_kind = excluded.trigger_kind, end_reason = excluded.end_reason, \
        chunks = excluded.chunks, bytes = excluded.bytes, duration_us = excluded.duration_us, \
        status = excluded.status, problems = excluded.problems, \
        last_change = excluded.last_change, closed = excluded.closed, \
        continues = excluded.continues";

    pub(crate) const UPSERT_INIT: &str = "INSERT INTO inits (session_id, id, width, height, codec, \
        bytes) VALUES ($1, $2, $3, $4, $5, $6) ON CONFLICT (session_id, id) DO UPDATE SET \
        width = excluded.width, height = excluded.height, codec = excluded.codec, \
        bytes = excluded.bytes";

    pub(crate) const UPSERT_CHUNK: &str = "INSERT INTO chunks (session_id, seq, init_id, media_start_us, \
        media_end_us, utc_start, utc_end, keyframe, frames, video_bytes, events_bytes, events, \
        verified) VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13) \
        ON CONFLICT (session_id, seq) DO UPDATE SET init_id = excluded.init_id, \
        media_start_us = excluded.media_start_us, media_end_us = excluded.media_end_us, \
        utc_start = excluded.utc_start, utc_end = excluded.utc_end, \
        keyframe = excluded.keyframe, frames = excluded.frames, \
        video_bytes = excluded.video_bytes, events_bytes = excluded.events_bytes, \
        events = excluded.events, verified = excluded.verified";

    pub(crate) const DELETE_CHUNK_EVENTS: &str =
        "DELETE FROM events WHERE session_id = $1 AND seq = $2";

    pub(crate) const SELECT_SESSION: &str = "SELECT {COLS} FROM sessions WHERE id = $1";

    pub(crate) const SELECT_CHUNKS: &str = "SELECT seq, init_id, media_start_us, media_end_us, \
        utc_start, utc_end, keyframe, frames, video_bytes, events_bytes, events, verified \
        FROM chunks WHERE session_id = $1 ORDER BY seq";

    pub(crate) const SELECT_INITS: &str = "SELECT id, width, height, codec, bytes FROM inits \
        WHERE session_id = $1 ORDER BY id";

    pub(crate) const SELECT_EVENTS: &str = "SELECT seq, idx, media_us, utc, kind, text, data FROM events \
        WHERE session_id = $1 AND (seq > $2 OR (seq = $2 AND idx > $3)) ORDER BY seq, idx LIMIT $4";

    pub(crate) const KNOWS_INIT: &str = "SELECT 1 FROM inits WHERE session_id = $1 AND id = $2";

    pub(crate) const KNOWS_CHUNK: &str = "SELECT 1 FROM chunks WHERE session_id = $1 AND seq = $2";

    pub(crate) const SELECT_UNFINISHED: &str =
        "SELECT id FROM sessions WHERE closed = 0 ORDER BY id";

    pub(crate) const SELECT_NEWEST: &str = "SELECT id FROM sessions ORDER BY id DESC LIMIT 1";

    pub(crate) const SELECT_COUNTS: &str = "SELECT status, COUNT(*) FROM sessions GROUP BY status";

    /// The detection rules' flags (`crate::rules`): cache, rebuilt with the events.
    pub(crate) const FLAGS: &str = "
CREATE TABLE IF NOT EXISTS flags (
    session_id TEXT NOT NULL, seq BIGINT NOT NULL, idx BIGINT NOT NULL,
    media_us BIGINT NOT NULL, utc BIGINT NOT NULL, rule TEXT NOT NULL,
    severity TEXT NOT NULL, rank BIGINT NOT NULL, sentence TEXT NOT NULL, text TEXT NOT NULL,
    PRIMARY KEY (session_id, seq, idx, rule)
);
CREATE INDEX IF NOT EXISTS flags_rank ON flags (rank, session_id);
";

    pub(crate) const DELETE_CHUNK_FLAGS: &str =
        "DELETE FROM flags WHERE session_id = $1 AND seq = $2";

    pub(crate) const INSERT_FLAG: &str = "INSERT INTO flags (session_id, seq, idx, media_us, utc, \
        rule, severity, rank, sentence, text) VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10) \
        ON CONFLICT (session_id, seq, idx, rule) DO NOTHING";

    pub(crate) const CLEAR: [&str; 5] = [
        "DELETE FROM flags",
        "DELETE FROM events",
        "DELETE FROM chunks",
        "DELETE FROM inits",
        "DELETE FROM sessions",
    ];
}

/// The WHERE clause and parameters of a list query, in `$n` form. `text_match(n)` renders the
/// backend's condition "session `s.id` has an event matching parameter `$n`".
pub(crate) fn list_sql(
    q: &Query,
    text_param: Option<Param>,
    text_match: impl Fn(usize) -> String,
) -> (String, Vec<Param>) {
    let mut conds: Vec<String> = Vec::new();
    let mut params: Vec<Param> = Vec::new();
    let bind = |p: Param, params: &mut Vec<Param>| {
        params.push(p);
        params.len()
    };
    for (col, v) in [
        ("s.user_name", &q.user),
        ("s.company", &q.company),
        ("s.location", &q.location),
        ("s.computer", &q.computer),
    ] {
        if let Some(v) = v {
            let n = bind(Param::Text(v.clone()), &mut params);
            conds.push(format!("{col} = ${n}"));
        }
    }
    if let Some(m) = &q.machine {
        let n = bind(Param::Text(m.clone()), &mut params);
        conds.push(format!("(s.hostname = ${n} OR s.machine_id = ${n})"));
    }
    if let Some(t) = q.from {
        let n = bind(Param::Int(t.timestamp_micros()), &mut params);
        conds.push(format!("s.started_at >= ${n}"));
    }
    if let Some(t) = q.to {
        let n = bind(Param::Int(t.timestamp_micros()), &mut params);
        conds.push(format!("s.started_at < ${n}"));
    }
    if let Some(st) = q.status {
        let n = bind(Param::Text(st.as_str().into()), &mut params);
        conds.push(format!("s.status = ${n}"));
    }
    if let Some(r) = q.risk {
        let n = bind(Param::Int(r.rank()), &mut params);
        conds.push(format!(
            "EXISTS (SELECT 1 FROM flags f WHERE f.session_id = s.id AND f.rank >= ${n})"
        ));
    }
    if let Some(a) = q.after {
        let n = bind(Param::Text(a.to_string()), &mut params);
        let op = if q.oldest_first { ">" } else { "<" };
        conds.push(format!("s.id {op} ${n}"));
    }
    if let Some(p) = text_param {
        let n = bind(p, &mut params);
        conds.push(text_match(n));
    }
    let limit = q.limit.clamp(1, MAX_PAGE);
    // One more than the page, to know whether there is a next page.
    let n = bind(Param::Int(i64::from(limit) + 1), &mut params);
    let wher = if conds.is_empty() {
        String::new()
    } else {
        format!("WHERE {}", conds.join(" AND "))
    };
    (
        format!(
            "SELECT {} FROM sessions s {wher} ORDER BY s.id {} LIMIT ${n}",
            sql::SESSION_COLUMNS
                .split(", ")
                .map(|c| format!("s.{c}"))
                .collect::<Vec<_>>()
                .join(", "),
            if q.oldest_first { "ASC" } else { "DESC" }
        ),
        params,
    )
}

/// The query and parameters answering [`Index::knows`] for `key`; `None` for objects the API
/// never serves.
pub(crate) fn knows_sql(key: ObjectKey) -> Option<(&'static str, String, i64)> {
    match key {
        ObjectKey::Init(s, n) => Some((sql::KNOWS_INIT, s.id.to_string(), to_i64(n))),
        ObjectKey::ChunkVideo(s, n) => Some((sql::KNOWS_CHUNK, s.id.to_string(), to_i64(n))),
        _ => None,
    }
}

/// `$1, $2, ..., $n`: the placeholders of an `IN (...)` list of `n` values.
pub(crate) fn placeholders(n: usize) -> String {
    (1..=n)
        .map(|i| format!("${i}"))
        .collect::<Vec<_>>()
        .join(", ")
}

fn flag_row(r: &[SqlValue]) -> Result<FlagRow, IndexError> {
    let bad = || IndexError::Other("a flags row of the wrong shape".into());
    let int = |i: usize| r.get(i).and_then(SqlValue::int).ok_or_else(bad);
    let text = |i: usize| {
        r.get(i)
            .and_then(SqlValue::text)
            .map(str::to_owned)
            .ok_or_else(bad)
    };
    Ok(FlagRow {
        seq: to_u64(int(0)?),
        idx: u32::try_from(int(1)?).map_err(|_| bad())?,
        media_us: to_u64(int(2)?),
        utc: from_micros(int(3)?)?,
        rule: text(4)?,
        severity: Severity::from_rank(int(5)?).ok_or_else(bad)?,
        sentence: text(6)?,
        text: text(7)?,
    })
}

/// The bind values of a flag row of chunk `seq` of session `sid`, in [`sql::INSERT_FLAG`]'s
/// order.
pub(crate) fn flag_params(sid: &str, seq: u64, f: &FlagRow) -> Vec<Param> {
    vec![
        Param::Text(sid.to_owned()),
        Param::Int(to_i64(seq)),
        Param::Int(i64::from(f.idx)),
        Param::Int(to_i64(f.media_us)),
        Param::Int(micros(f.utc)),
        Param::Text(f.rule.clone()),
        Param::Text(f.severity.as_str().into()),
        Param::Int(f.severity.rank()),
        Param::Text(f.sentence.clone()),
        Param::Text(f.text.clone()),
    ]
}

/// Splits a fetched page (one row more than asked) into the page and its `next` cursor.
pub(crate) fn paginate(
    mut rows: Vec<SessionRow>,
    limit: u32,
) -> (Vec<SessionRow>, Option<SessionId>) {
    let limit = limit.clamp(1, MAX_PAGE) as usize;
    if rows.len() > limit {
        rows.truncate(limit);
        let next = rows.last().map(|r| r.id);
        (rows, next)
    } else {
        (rows, None)
    }
}

pub(crate) fn micros(t: DateTime<Utc>) -> i64 {
    t.timestamp_micros()
}

pub(crate) fn from_micros(us: i64) -> Result<DateTime<Utc>, IndexError> {
    DateTime::from_timestamp_micros(us)
        .ok_or_else(|| IndexError::Corrupt(format!("timestamp {us} out of range")))
}

pub(crate) fn to_i64(v: u64) -> i64 {
    i64::try_from(v).unwrap_or(i64::MAX)
}

pub(crate) fn to_u64(v: i64) -> u64 {
    u64::try_from(v).unwrap_or(0)
}

pub(crate) fn parse_id(s: &str) -> Result<SessionId, IndexError> {
    s.parse()
        .map_err(|e| IndexError::Corrupt(format!("session id {s:?}: {e}")))
}

pub(crate) fn parse_status(s: &str) -> Result<Status, IndexError> {
    Status::parse(s).ok_or_else(|| IndexError::Corrupt(format!("status {s:?}")))
}

pub(crate) fn parse_problems(s: &str) -> Result<Vec<Problem>, IndexError> {
    serde_json::from_str(s).map_err(|e| IndexError::Corrupt(format!("problems: {e}")))
}

pub(crate) fn parse_event_data(s: &str) -> Result<EventData, IndexError> {
    EventData::from_json(s.to_owned()).map_err(|e| IndexError::Corrupt(format!("event data: {e}")))
}

pub(crate) fn problems_json(p: &[Problem]) -> String {
    serde_json::to_string(p).unwrap_or_else(|_| "[]".into())
}

/// The parameters of [`sql::UPSERT_SESSION`] for `r`.
pub(crate) fn session_params(r: &SessionRow) -> Vec<Param> {
    vec![
        Param::Text(r.id.to_string()),
        Param::Int(micros(r.started_at)),
        Param::Int(r.ended_at.map_or(-1, micros)),
        Param::Text(r.user_name.clone()),
        Param::Text(r.user_id.clone()),
        Param::Text(r.machine_id.clone()),
        Param::Text(r.hostname.clone()),
        Param::Text(r.company.clone().unwrap_or_default()),
        Param::Text(r.location.clone().unwrap_or_default()),
        Param::Text(r.computer.clone().unwrap_or_default()),
        Param::Text(r.authorized_by.clone().unwrap_or_default()),
        Param::Text(r.reason.clone().unwrap_or_default()),
        Param::Text(r.trigger.clone()),
        Param::Text(r.end_reason.clone().unwrap_or_default()),
        Param::Int(to_i64(r.chunks)),
        Param::Int(to_i64(r.bytes)),
        Param::Int(to_i64(r.duration_us)),
        Param::Text(r.status.as_str().into()),
        Param::Text(problems_json(&r.problems)),
        Param::Int(micros(r.last_change)),
        Param::Int(i64::from(r.closed)),
        Param::Text(r.continues.map(|c| c.to_string()).unwrap_or_default()),
    ]
}

/// Reads a session row in the column order of [`sql::SESSION_COLUMNS`] through a backend's
/// typed getters.
pub(crate) fn read_session<E>(
    text: impl Fn(usize) -> Result<String, E>,
    int: impl Fn(usize) -> Result<i64, E>,
) -> Result<Result<SessionRow, IndexError>, E> {
    let raw = RawSession {
        texts: [
            text(0)?,
            text(3)?,
            text(4)?,
            text(5)?,
            text(6)?,
            text(7)?,
            text(8)?,
            text(9)?,
            text(10)?,
            text(11)?,
            text(12)?,
            text(13)?,
            text(17)?,
            text(18)?,
            text(21)?,
        ],
        ints: [int(1)?, int(2)?, int(14)?, int(15)?, int(16)?, int(19)?],
    };
    let closed = int(20)? != 0;
    Ok(raw.into_row(closed))
}

/// Raw column values of a session row, read by a backend, turned into a [`SessionRow`].
pub(crate) struct RawSession {
    pub(crate) texts: [String; 15],
    pub(crate) ints: [i64; 6],
}

impl RawSession {
    /// `texts`: id, user_name, user_id, machine_id, hostname, company, location, computer,
    /// authorized_by, reason, trigger_kind, end_reason, status, problems, continues;
    /// `ints`: started_at, ended_at, chunks, bytes, duration_us, last_change. Empty optional
    /// texts and an `ended_at` of -1 mean "none".
    pub(crate) fn into_row(self, closed: bool) -> Result<SessionRow, IndexError> {
        let [
            id,
            user_name,
            user_id,
            machine_id,
            hostname,
            company,
            location,
            computer,
            authorized_by,
            reason,
            trigger,
            end_reason,
            status,
            problems,
            continues,
        ] = self.texts;
        let [
            started_at,
            ended_at,
            chunks,
            bytes,
            duration_us,
            last_change,
        ] = self.ints;
        let opt = |s: String| (!s.is_empty()).then_some(s);
        Ok(SessionRow {
            id: parse_id(&id)?,
            started_at: from_micros(started_at)?,
            ended_at: if ended_at < 0 {
                None
            } else {
                Some(from_micros(ended_at)?)
            },
            user_name,
            user_id,
            machine_id,
            hostname,
            company: opt(company),
            location: opt(location),
            computer: opt(computer),
            authorized_by: opt(authorized_by),
            reason: opt(reason),
            trigger,
            end_reason: opt(end_reason),
            chunks: to_u64(chunks),
            bytes: to_u64(bytes),
            duration_us: to_u64(duration_us),
            status: parse_status(&status)?,
            problems: parse_problems(&problems)?,
            last_change: from_micros(last_change)?,
            closed,
            continues: opt(continues).map(|c| parse_id(&c)).transpose()?,
        })
    }
}

/// A few connections shared by threads: SQLite connections and PostgreSQL clients are used by
/// one thread at a time, and a handful lets readers (WAL) and the indexer's writer overlap.
pub(crate) struct Pool<C> {
    conns: Vec<std::sync::Mutex<C>>,
    next: std::sync::atomic::AtomicUsize,
}

impl<C> Pool<C> {
    pub(crate) fn new(conns: Vec<C>) -> Self {
        Self {
            conns: conns.into_iter().map(std::sync::Mutex::new).collect(),
            next: std::sync::atomic::AtomicUsize::new(0),
        }
    }

    /// Runs `f` on a free connection, or waits for one (round robin) if all are busy.
    pub(crate) fn with<R>(&self, f: impl FnOnce(&mut C) -> R) -> R {
        for c in &self.conns {
            if let Ok(mut g) = c.try_lock() {
                return f(&mut g);
            }
        }
        let i = self.next.fetch_add(1, std::sync::atomic::Ordering::Relaxed) % self.conns.len();
        // A poisoned connection only means another thread panicked mid-query; the database
        // rolled that transaction back, so the connection itself is still usable.
        let mut g = self.conns[i]
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        f(&mut g)
    }
}
