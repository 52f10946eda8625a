//! Retention: how long recordings are kept, legal holds, and the job that deletes what expired.
//!
//! **Policies** are set at four levels, as JIT settings are: global, company, location and
//! computer, matched against the session's labels; the most specific policy that matches wins.
//! Each keeps sessions N days after they ended (or forever). A session no policy matches is never
//! deleted: an unresolvable policy must not be read as "delete".
//!
//! **Legal hold** on a session overrides every deletion until it is released.
//!
//! **Evidence of trouble is kept.** A session the player found tampered, gapped or interrupted
//! is never deleted on schedule: it waits until an administrator acknowledges it
//! ([`acknowledge`], audited), for the status it has then. If it gets worse afterwards (a gap
//! later found tampered) the acknowledgement no longer covers it.
//!
//! **Only what the player witnessed counts.** Expiry runs from when the player itself first saw
//! the close record (its witness record), never from an `ended_at` the endpoint wrote. A policy
//! keeps at most [`MAX_KEEP_DAYS`] (longer is refused when set: "forever" says it), all date
//! arithmetic is checked, and a policy row this program cannot read stops the job rather than
//! letting a broader, possibly shorter policy govern.
//!
//! **The job** ([`run`]) deletes every object of each expired session from the bucket, then its
//! index rows, and logs the deletion. It never touches a session that is still recording (no
//! close record), under hold, or whose policy cannot be resolved. It is resumable: a session's
//! deletion is first written to the deletion log as *deleting*, and the next run finishes every
//! *deleting* entry before looking for new work, so a crash half-way leaves nothing the next run
//! does not finish. The indexer does not index a session the log says is being or was deleted.
//! Objects go in batches (DeleteObjects, at most 1,000 keys) at a bounded rate.
//!
//! Policies, holds and the deletion log live in the index database, in tables `reindex` never
//! clears, written through the index's portable SQL; the deletion log survives the deletions.

use std::collections::HashMap;
use std::fmt;
use std::time::{Duration, Instant};

use chrono::{DateTime, Utc};
use jitrec_format::{ObjectKey, SessionId};
use serde::Serialize;

use crate::index::{Index, IndexError, SqlValue};
use crate::scan::Status;
use jitrec_bucket::{BucketAdmin, BucketError, HoldEnforcement};

/// The longest policy, in days (100 years); keeping longer is "forever".
pub const MAX_KEEP_DAYS: u32 = 36_500;

/// The retention tables' forward migrations (see [`crate::record`]).
const MIGRATIONS: &[&[&str]] = &[
    &SCHEMA_V1,
    // v2: acknowledgements of sessions kept for their trouble.
    &[
        "CREATE TABLE IF NOT EXISTS retention_acks (session_id TEXT PRIMARY KEY, \
       status TEXT NOT NULL, note TEXT NOT NULL, acked_by TEXT NOT NULL, acked_at BIGINT NOT NULL)",
    ],
];

const SCHEMA_V1: [&str; 3] = [
    "CREATE TABLE IF NOT EXISTS retention_policies (level TEXT NOT NULL, name TEXT NOT NULL, \
     keep_days BIGINT NOT NULL, set_by TEXT NOT NULL, set_at BIGINT NOT NULL, \
     PRIMARY KEY (level, name))",
    "CREATE TABLE IF NOT EXISTS legal_holds (session_id TEXT PRIMARY KEY, reason TEXT NOT NULL, \
     set_by TEXT NOT NULL, set_at BIGINT NOT NULL)",
    "CREATE TABLE IF NOT EXISTS deletions (session_id TEXT PRIMARY KEY, state TEXT NOT NULL, \
     policy TEXT NOT NULL, actor TEXT NOT NULL, started_at BIGINT NOT NULL, \
     finished_at BIGINT NOT NULL, objects BIGINT NOT NULL)",
];

/// Most keys one DeleteObjects request may carry.
pub const MAX_BATCH: usize = 1000;

/// Why a retention operation failed.
#[derive(Debug, thiserror::Error)]
pub enum RetentionError {
    #[error(transparent)]
    Index(#[from] IndexError),
    #[error(transparent)]
    Store(#[from] BucketError),
    #[error("{0}")]
    Invalid(String),
}

/// The levels a policy is set at, least specific first.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Level {
    Global,
    Company,
    Location,
    Computer,
}

impl Level {
    pub fn as_str(self) -> &'static str {
        match self {
            Level::Global => "global",
            Level::Company => "company",
            Level::Location => "location",
            Level::Computer => "computer",
        }
    }

    pub fn parse(s: &str) -> Option<Level> {
        [
            Level::Global,
            Level::Company,
            Level::Location,
            Level::Computer,
        ]
        .into_iter()
        .find(|l| l.as_str() == s)
    }
}

/// One policy.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Policy {
    pub level: Level,
    /// The label value it applies to (empty for global).
    pub name: String,
    /// Days to keep a session after it ended; `None` keeps it forever.
    pub keep_days: Option<u32>,
    pub set_by: String,
}

impl fmt::Display for Policy {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.level {
            Level::Global => f.write_str("global")?,
            l => write!(f, "{} {}", l.as_str(), self.name)?,
        }
        match self.keep_days {
            Some(d) => write!(f, ": keep {d} days"),
            None => f.write_str(": keep forever"),
        }
    }
}

/// All policies, for resolving many sessions.
#[derive(Debug, Default, Clone)]
pub struct Policies {
    by_level: HashMap<(Level, String), Policy>,
}

impl Policies {
    pub fn new(list: impl IntoIterator<Item = Policy>) -> Self {
        Self {
            by_level: list
                .into_iter()
                .map(|p| ((p.level, p.name.clone()), p))
                .collect(),
        }
    }

    /// The policy governing a session with these labels: computer, then location, then company,
    /// then global. `None` if nothing matches.
    pub fn resolve(
        &self,
        company: Option<&str>,
        location: Option<&str>,
        computer: Option<&str>,
    ) -> Option<&Policy> {
        let get = |l: Level, n: Option<&str>| {
            n.filter(|n| !n.is_empty())
                .and_then(|n| self.by_level.get(&(l, n.to_owned())))
        };
        get(Level::Computer, computer)
            .or_else(|| get(Level::Location, location))
            .or_else(|| get(Level::Company, company))
            .or_else(|| self.by_level.get(&(Level::Global, String::new())))
    }

    pub fn list(&self) -> Vec<&Policy> {
        let mut v: Vec<&Policy> = self.by_level.values().collect();
        v.sort_by(|a, b| (a.level, &a.name).cmp(&(b.level, &b.name)));
        v
    }
}

/// Creates the tables, or brings them to the current version (idempotent).
pub fn init(index: &dyn Index) -> Result<(), RetentionError> {
    crate::record::migrate(index, "retention", "retention_policies", MIGRATIONS).map_err(
        |e| match e {
            crate::record::RecordError::Index(e) => RetentionError::Index(e),
            e => RetentionError::Invalid(e.to_string()),
        },
    )
}

fn text(s: &str) -> SqlValue {
    SqlValue::Text(s.to_owned())
}

fn now_us() -> i64 {
    Utc::now().timestamp_micros()
}

/// Sets (or replaces) the policy at `level` for label value `name` (empty for global).
pub fn set_policy(
    index: &dyn Index,
    level: Level,
    name: &str,
    keep_days: Option<u32>,
    set_by: &str,
) -> Result<(), RetentionError> {
    if (level == Level::Global) != name.is_empty() {
        return Err(RetentionError::Invalid(
            "a global policy has no name; a company, location or computer policy needs one".into(),
        ));
    }
    if let Some(d) = keep_days.filter(|d| *d > MAX_KEEP_DAYS) {
        return Err(RetentionError::Invalid(format!(
            "keep_days {d} is more than {MAX_KEEP_DAYS} (100 years): to keep sessions forever, \
             say so (--forever, or keep_days null)"
        )));
    }
    index.exec(
        "INSERT INTO retention_policies (level, name, keep_days, set_by, set_at) \
         VALUES ($1, $2, $3, $4, $5) ON CONFLICT (level, name) DO UPDATE SET \
         keep_days = excluded.keep_days, set_by = excluded.set_by, set_at = excluded.set_at",
        &[
            text(level.as_str()),
            text(name),
            SqlValue::Int(keep_days.map_or(-1, i64::from)),
            text(set_by),
            SqlValue::Int(now_us()),
        ],
    )?;
    Ok(())
}

/// Removes a policy; returns whether there was one.
pub fn unset_policy(index: &dyn Index, level: Level, name: &str) -> Result<bool, RetentionError> {
    Ok(index.exec(
        "DELETE FROM retention_policies WHERE level = $1 AND name = $2",
        &[text(level.as_str()), text(name)],
    )? > 0)
}

/// Every policy. A row this program cannot read is an error: left out, it would let a broader
/// (possibly shorter) policy govern the sessions it was set for.
pub fn policies(index: &dyn Index) -> Result<Policies, RetentionError> {
    let rows = index.query(
        "SELECT level, name, keep_days, set_by FROM retention_policies",
        &[],
    )?;
    let list = rows
        .into_iter()
        .map(|r| {
            (|| {
                let days = r.get(2)?.int()?;
                Some(Policy {
                    level: Level::parse(r.first()?.text()?)?,
                    name: r.get(1)?.text()?.to_owned(),
                    // -1 is "forever"; anything else must be a bound this program accepts.
                    keep_days: match days {
                        -1 => None,
                        d => Some(u32::try_from(d).ok().filter(|d| *d <= MAX_KEEP_DAYS)?),
                    },
                    set_by: r.get(3)?.text()?.to_owned(),
                })
            })()
            .ok_or_else(|| {
                RetentionError::Invalid(format!(
                    "a retention policy row is unreadable ({r:?}): the job deletes nothing until \
                     it is set again"
                ))
            })
        })
        .collect::<Result<Vec<_>, _>>()?;
    Ok(Policies::new(list))
}

/// Statuses that keep a session until an administrator acknowledges it.
pub fn needs_review(status: Status) -> bool {
    matches!(status, Status::Tampered | Status::Gap | Status::Interrupted)
}

/// An administrator's acknowledgement of a session kept for its trouble.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Ack {
    pub session: SessionId,
    /// The status acknowledged; a worse one later is not covered.
    pub status: Status,
    pub note: String,
    pub acked_by: String,
    pub acked_at: DateTime<Utc>,
}

/// Acknowledges the session's current trouble, so that its policy may expire it. Refused for a
/// session with no trouble to acknowledge.
pub fn acknowledge(
    index: &dyn Index,
    session: SessionId,
    reviewed: Status,
    note: &str,
    by: &str,
) -> Result<Ack, RetentionError> {
    init(index)?;
    let row = index
        .session(session)?
        .ok_or_else(|| RetentionError::Invalid(format!("no session {session} in the index")))?;
    // What the admin saw is what is acknowledged: a session that got worse since (a gap found
    // tampered) is not covered by a look at the gap.
    if row.status != reviewed {
        return Err(RetentionError::Invalid(format!(
            "{session} is {} now, not {}: look at it again",
            row.status.as_str(),
            reviewed.as_str()
        )));
    }
    if !needs_review(row.status) {
        return Err(RetentionError::Invalid(format!(
            "{session} is {}: only tampered, gap and interrupted sessions are kept for review",
            row.status.as_str()
        )));
    }
    let ack = Ack {
        session,
        status: row.status,
        note: crate::auth::bounded(note, crate::auth::AUDIT_FIELD_MAX),
        acked_by: by.to_owned(),
        acked_at: Utc::now(),
    };
    index.exec(
        "INSERT INTO retention_acks (session_id, status, note, acked_by, acked_at) \
         VALUES ($1, $2, $3, $4, $5) ON CONFLICT (session_id) DO UPDATE SET \
         status = excluded.status, note = excluded.note, acked_by = excluded.acked_by, \
         acked_at = excluded.acked_at",
        &[
            text(&session.to_string()),
            text(ack.status.as_str()),
            text(&ack.note),
            text(by),
            SqlValue::Int(ack.acked_at.timestamp_micros()),
        ],
    )?;
    Ok(ack)
}

/// The status a session's trouble was acknowledged at, if it was.
fn acked_status(index: &dyn Index, session: SessionId) -> Result<Option<Status>, RetentionError> {
    let rows = index.query(
        "SELECT status FROM retention_acks WHERE session_id = $1",
        &[text(&session.to_string())],
    )?;
    Ok(rows
        .first()
        .and_then(|r| r.first())
        .and_then(SqlValue::text)
        .and_then(Status::parse))
}

/// Sessions kept for their trouble and not (or no longer) acknowledged, oldest first, at most
/// `limit`.
pub fn awaiting_review(
    index: &dyn Index,
    limit: usize,
) -> Result<Vec<(SessionId, Status)>, RetentionError> {
    init(index)?;
    // One query, bounded: the sessions with trouble that no acknowledgement of their current
    // status covers.
    let rows = index.query(
        "SELECT s.id, s.status FROM sessions s \
         LEFT JOIN retention_acks a ON a.session_id = s.id AND a.status = s.status \
         WHERE s.status IN ('tampered', 'gap', 'interrupted') AND a.session_id IS NULL \
         ORDER BY s.id LIMIT $1",
        &[SqlValue::Int(i64::try_from(limit).unwrap_or(i64::MAX))],
    )?;
    Ok(rows
        .into_iter()
        .filter_map(|r| {
            Some((
                r.first()?.text()?.parse::<SessionId>().ok()?,
                Status::parse(r.get(1)?.text()?)?,
            ))
        })
        .collect())
}

/// A legal hold.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Hold {
    pub session: SessionId,
    pub reason: String,
    pub set_by: String,
    pub set_at: DateTime<Utc>,
}

/// Puts `session` under legal hold: recorded in the index (so the retention job skips it from
/// this moment), then set on every object of the session in the bucket where the bucket can
/// hold objects (S3 Object Lock), so not even a direct delete in the bucket removes them.
/// Returns who enforces the hold. Placing it again is harmless (the record is replaced, the
/// objects held again), so a hold whose bucket part failed is completed by repeating it.
///
/// Only this function records a hold, and it needs the bucket's admin handle: a hold cannot be
/// placed without the bucket being asked to enforce it.
pub fn hold(
    index: &dyn Index,
    bucket: &dyn BucketAdmin,
    session: SessionId,
    reason: &str,
    by: &str,
) -> Result<HoldEnforcement, RetentionError> {
    if reason.trim().is_empty() {
        return Err(RetentionError::Invalid(
            "a legal hold needs a reason".into(),
        ));
    }
    index.exec(
        "INSERT INTO legal_holds (session_id, reason, set_by, set_at) VALUES ($1, $2, $3, $4) \
         ON CONFLICT (session_id) DO UPDATE SET reason = excluded.reason, \
         set_by = excluded.set_by, set_at = excluded.set_at",
        &[
            text(&session.to_string()),
            text(reason),
            text(by),
            SqlValue::Int(now_us()),
        ],
    )?;
    hold_objects(bucket, session, true)
}

/// Sets (or clears) the S3 object legal hold on every object of `session`, where the bucket has
/// Object Lock. Objects uploaded after the hold was placed (a session still recording) are held
/// by the job alone until the hold is placed again.
fn hold_objects(
    bucket: &dyn BucketAdmin,
    session: SessionId,
    on: bool,
) -> Result<HoldEnforcement, RetentionError> {
    let keys = bucket.list(&ObjectKey::session_prefix(session))?;
    Ok(bucket.set_legal_hold(&keys, on)?)
}

/// Releases a hold: first in the bucket (a failure there leaves the session held, recorded and
/// in the bucket, rather than recorded as released with objects still held), then in the index.
/// Returns `None` if there was no hold, else who had enforced it.
pub fn release(
    index: &dyn Index,
    bucket: &dyn BucketAdmin,
    session: SessionId,
) -> Result<Option<HoldEnforcement>, RetentionError> {
    if hold_of(index, session)?.is_none() {
        return Ok(None);
    }
    let enforced = hold_objects(bucket, session, false)?;
    index.exec(
        "DELETE FROM legal_holds WHERE session_id = $1",
        &[text(&session.to_string())],
    )?;
    Ok(Some(enforced))
}

/// The hold on `session`, if any.
pub fn hold_of(index: &dyn Index, session: SessionId) -> Result<Option<Hold>, RetentionError> {
    let rows = index.query(
        "SELECT reason, set_by, set_at FROM legal_holds WHERE session_id = $1",
        &[text(&session.to_string())],
    )?;
    Ok(rows.first().and_then(|r| {
        Some(Hold {
            session,
            reason: r.first()?.text()?.to_owned(),
            set_by: r.get(1)?.text()?.to_owned(),
            set_at: DateTime::from_timestamp_micros(r.get(2)?.int()?)?,
        })
    }))
}

/// Every hold.
pub fn holds(index: &dyn Index) -> Result<Vec<Hold>, RetentionError> {
    let rows = index.query(
        "SELECT session_id, reason, set_by, set_at FROM legal_holds ORDER BY session_id",
        &[],
    )?;
    Ok(rows
        .into_iter()
        .filter_map(|r| {
            Some(Hold {
                session: r.first()?.text()?.parse().ok()?,
                reason: r.get(1)?.text()?.to_owned(),
                set_by: r.get(2)?.text()?.to_owned(),
                set_at: DateTime::from_timestamp_micros(r.get(3)?.int()?)?,
            })
        })
        .collect())
}

/// One entry of the deletion log.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Deletion {
    pub session: SessionId,
    /// `deleting` (begun, not finished) or `deleted`.
    pub state: String,
    /// The policy that expired it, in words.
    pub policy: String,
    /// Who or which job.
    pub actor: String,
    pub started_at: DateTime<Utc>,
    pub finished_at: Option<DateTime<Utc>>,
    pub objects: u64,
}

/// The deletion log, newest first.
pub fn deletion_log(index: &dyn Index, limit: u32) -> Result<Vec<Deletion>, RetentionError> {
    let rows = index.query(
        "SELECT session_id, state, policy, actor, started_at, finished_at, objects \
         FROM deletions ORDER BY started_at DESC LIMIT $1",
        &[SqlValue::Int(i64::from(limit))],
    )?;
    Ok(rows
        .into_iter()
        .filter_map(|r| {
            Some(Deletion {
                session: r.first()?.text()?.parse().ok()?,
                state: r.get(1)?.text()?.to_owned(),
                policy: r.get(2)?.text()?.to_owned(),
                actor: r.get(3)?.text()?.to_owned(),
                started_at: DateTime::from_timestamp_micros(r.get(4)?.int()?)?,
                finished_at: r
                    .get(5)?
                    .int()
                    .filter(|t| *t >= 0)
                    .and_then(DateTime::from_timestamp_micros),
                // -1 until the deletion first listed the session's objects.
                objects: u64::try_from(r.get(6)?.int()?).unwrap_or(0),
            })
        })
        .collect())
}

/// Whether the deletion log has `session` (being deleted or deleted): the indexer must not
/// bring it back from objects a crashed deletion left behind.
pub fn is_deleted(index: &dyn Index, session: SessionId) -> Result<bool, RetentionError> {
    Ok(!index
        .query(
            "SELECT 1 FROM deletions WHERE session_id = $1",
            &[text(&session.to_string())],
        )?
        .is_empty())
}

/// What the job decided about one session.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Planned {
    pub session: SessionId,
    pub policy: String,
    pub ended_at: DateTime<Utc>,
    pub expired_at: DateTime<Utc>,
}

/// Settings of a run.
#[derive(Debug, Clone)]
pub struct RunOptions {
    /// Only say what would go.
    pub dry_run: bool,
    /// Keys per DeleteObjects request (at most [`MAX_BATCH`]).
    pub batch: usize,
    /// At most this many objects deleted per second (0: no bound).
    pub max_objects_per_sec: u32,
    /// Who runs it, for the deletion log (`retention job`, a user name).
    pub actor: String,
    /// Stop after this many sessions (0: no bound); the rest waits for the next run.
    pub max_sessions: usize,
}

impl Default for RunOptions {
    fn default() -> Self {
        Self {
            dry_run: false,
            batch: MAX_BATCH,
            max_objects_per_sec: 0,
            actor: "retention job".into(),
            max_sessions: 0,
        }
    }
}

/// What a run did (or, dry, would do).
#[derive(Debug, Default, Clone, Serialize)]
pub struct RunReport {
    /// Expired sessions, deleted (or to be deleted, in a dry run).
    pub expired: Vec<Planned>,
    /// Unfinished deletions from an earlier run that this run finished.
    pub resumed: usize,
    pub objects_deleted: u64,
    /// Sessions kept by a legal hold although their policy expired them.
    pub held: usize,
    /// Sessions without a close record (never deleted).
    pub recording: usize,
    /// Sessions no policy matches (never deleted).
    pub unresolved: usize,
    /// Expired sessions kept because they are tampered, gapped or interrupted and no
    /// administrator has acknowledged it.
    pub awaiting_review: usize,
    /// Closed sessions whose close record the player's witness record has not seen (indexed
    /// before the witness existed; `reindex` records them): never deleted until it has.
    pub unwitnessed: usize,
    /// Sessions whose deletion failed this time (they stay `deleting` and are retried).
    pub failed: Vec<(SessionId, String)>,
}

struct RateLimit {
    per_sec: u32,
    started: Instant,
    done: u64,
}

impl RateLimit {
    fn wait(&mut self, n: usize) {
        self.done += n as u64;
        if self.per_sec == 0 {
            return;
        }
        let due = Duration::from_secs_f64(self.done as f64 / f64::from(self.per_sec));
        if let Some(ahead) = due.checked_sub(self.started.elapsed()) {
            std::thread::sleep(ahead);
        }
    }
}

/// Runs the retention job once.
pub fn run(
    index: &dyn Index,
    bucket: &dyn BucketAdmin,
    opts: &RunOptions,
    now: DateTime<Utc>,
) -> Result<RunReport, RetentionError> {
    init(index)?;
    let mut report = RunReport::default();
    let mut rate = RateLimit {
        per_sec: opts.max_objects_per_sec,
        started: Instant::now(),
        done: 0,
    };
    let batch = opts.batch.clamp(1, MAX_BATCH);

    // First finish what a crashed run began.
    if !opts.dry_run {
        for d in deletion_log(index, u32::MAX)?
            .into_iter()
            .filter(|d| d.state == "deleting")
        {
            match delete_session(index, bucket, d.session, batch, &mut rate) {
                Ok(n) => {
                    finish(index, d.session)?;
                    report.objects_deleted += n;
                    report.resumed += 1;
                }
                Err(e) => report.failed.push((d.session, e.to_string())),
            }
        }
    }

    let policies = policies(index)?;
    let held: std::collections::HashSet<SessionId> =
        holds(index)?.into_iter().map(|h| h.session).collect();
    let rows = index.query(
        "SELECT id, started_at, ended_at, closed, status, company, location, computer \
         FROM sessions ORDER BY id",
        &[],
    )?;
    for r in rows {
        let parsed = (|| {
            Some((
                r.first()?.text()?.parse::<SessionId>().ok()?,
                r.get(1)?.int()?,
                r.get(2)?.int()?,
                r.get(3)?.int()? != 0,
                Status::parse(r.get(4)?.text()?)?,
                r.get(5)?.text()?.to_owned(),
                r.get(6)?.text()?.to_owned(),
                r.get(7)?.text()?.to_owned(),
            ))
        })();
        let Some((id, started, ended, closed, status, company, location, computer)) = parsed else {
            continue;
        };
        if !closed || status == Status::Recording {
            report.recording += 1;
            continue;
        }
        let Some(policy) = policies.resolve(Some(&company), Some(&location), Some(&computer))
        else {
            report.unresolved += 1;
            continue;
        };
        let Some(days) = policy.keep_days else {
            continue;
        };
        let _ = (started, ended);
        // The end that counts is when the player itself first saw the close record (its own
        // clock, from the witness record): never earlier than the real end, whatever date an
        // endpoint wrote into `ended_at`. A session whose close record the witness has not
        // seen is not expired on the strength of an endpoint's claim.
        let at = crate::locate::key_of(index, id)?;
        let close_key = jitrec_format::ObjectKey::SessionClosed(at).to_string();
        let ended_at = match crate::witness::lookup(index, &close_key) {
            Ok(Some(w)) => w.seen_at,
            Ok(None) => {
                report.unwitnessed += 1;
                continue;
            }
            Err(e) => {
                report.failed.push((id, e.to_string()));
                continue;
            }
        };
        let Some(expired_at) = chrono::Duration::try_days(i64::from(days))
            .and_then(|d| ended_at.checked_add_signed(d))
        else {
            // A policy longer than the calendar can hold never expires.
            continue;
        };
        if expired_at > now {
            continue;
        }
        if held.contains(&id) {
            report.held += 1;
            continue;
        }
        if needs_review(status) && acked_status(index, id)? != Some(status) {
            report.awaiting_review += 1;
            continue;
        }
        if opts.max_sessions > 0 && report.expired.len() >= opts.max_sessions {
            break;
        }
        let planned = Planned {
            session: id,
            policy: policy.to_string(),
            ended_at,
            expired_at,
        };
        if !opts.dry_run {
            begin(index, id, &planned.policy, &opts.actor)?;
            match delete_session(index, bucket, id, batch, &mut rate) {
                Ok(n) => {
                    finish(index, id)?;
                    report.objects_deleted += n;
                }
                Err(e) => {
                    tracing::error!(session = %id, error = %e, "deleting an expired session failed; the next run retries");
                    report.failed.push((id, e.to_string()));
                }
            }
        }
        report.expired.push(planned);
    }
    Ok(report)
}

/// What `serve`'s retention schedule has done, for `/api/status` and the Retention page.
#[derive(Debug, Default, Clone, Serialize)]
pub struct JobState {
    /// Runs started since the player started.
    pub runs: u64,
    pub last_started: Option<DateTime<Utc>>,
    pub last_finished: Option<DateTime<Utc>>,
    /// The last run's outcome in words: what it deleted and kept, or why it failed.
    pub last_outcome: Option<String>,
    /// The last failure (an error or a panic), kept until a run succeeds.
    pub last_error: Option<String>,
    /// Runs that panicked (each caught; the schedule goes on).
    pub panics: u64,
}

/// The retention schedule's supervisor: runs the job, catches its failures (errors and panics
/// alike) so the schedule outlives any one run, and keeps their record.
#[derive(Debug, Default)]
pub struct Supervisor(std::sync::Mutex<JobState>);

impl Supervisor {
    pub fn state(&self) -> JobState {
        self.lock().clone()
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, JobState> {
        // The state is a record of outcomes; one a panicking run left is still worth showing.
        self.0
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// Runs the job once under supervision.
    pub fn run_once(
        &self,
        index: &dyn Index,
        bucket: &dyn BucketAdmin,
        opts: &RunOptions,
        now: DateTime<Utc>,
    ) -> Result<RunReport, String> {
        {
            let mut st = self.lock();
            st.runs += 1;
            st.last_started = Some(Utc::now());
        }
        let outcome = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
            run(index, bucket, opts, now)
        }));
        let mut st = self.lock();
        st.last_finished = Some(Utc::now());
        match outcome {
            Ok(Ok(r)) => {
                st.last_outcome = Some(format!(
                    "deleted {} sessions ({} objects); kept {} under legal hold, {} awaiting review; {} failed",
                    r.expired.len(),
                    r.objects_deleted,
                    r.held,
                    r.awaiting_review,
                    r.failed.len()
                ));
                if r.failed.is_empty() {
                    st.last_error = None;
                } else {
                    st.last_error = Some(format!(
                        "{} deletions failed (retried next run)",
                        r.failed.len()
                    ));
                }
                Ok(r)
            }
            Ok(Err(e)) => {
                st.last_outcome = Some(format!("failed: {e}"));
                st.last_error = Some(e.to_string());
                Err(e.to_string())
            }
            Err(panic) => {
                st.panics += 1;
                let what = panic
                    .downcast_ref::<String>()
                    .cloned()
                    .or_else(|| panic.downcast_ref::<&str>().map(|s| (*s).to_owned()))
                    .unwrap_or_else(|| "a panic".into());
                st.last_outcome = Some(format!("panicked: {what}"));
                st.last_error = Some(format!("panicked: {what}"));
                Err(format!("the retention job panicked: {what}"))
            }
        }
    }
}

fn begin(
    index: &dyn Index,
    id: SessionId,
    policy: &str,
    actor: &str,
) -> Result<(), RetentionError> {
    index.exec(
        "INSERT INTO deletions (session_id, state, policy, actor, started_at, finished_at, \
         objects) VALUES ($1, 'deleting', $2, $3, $4, -1, -1) ON CONFLICT (session_id) DO NOTHING",
        &[
            text(&id.to_string()),
            text(policy),
            text(actor),
            SqlValue::Int(now_us()),
        ],
    )?;
    Ok(())
}

fn finish(index: &dyn Index, id: SessionId) -> Result<(), RetentionError> {
    index.exec(
        "UPDATE deletions SET state = 'deleted', finished_at = $2 WHERE session_id = $1",
        &[text(&id.to_string()), SqlValue::Int(now_us())],
    )?;
    Ok(())
}

/// Deletes every object of `id` (in batches), then its index rows. Returns objects deleted.
///
/// The log's object count is the number of objects the session had when its deletion first
/// listed them, written before anything is deleted, so a deletion resumed after a crash neither
/// loses nor double-counts objects.
fn delete_session(
    index: &dyn Index,
    bucket: &dyn BucketAdmin,
    id: SessionId,
    batch: usize,
    rate: &mut RateLimit,
) -> Result<u64, RetentionError> {
    let prefix = crate::locate::key_of(index, id)?.prefix();
    let keys = bucket.list(&prefix)?;
    index.exec(
        "UPDATE deletions SET objects = $2 WHERE session_id = $1 AND objects < 0",
        &[
            text(&id.to_string()),
            SqlValue::Int(i64::try_from(keys.len()).unwrap_or(i64::MAX)),
        ],
    )?;
    let mut n = 0u64;
    for part in keys.chunks(batch) {
        bucket.delete_many(part)?;
        n += part.len() as u64;
        rate.wait(part.len());
    }
    bucket.tidy(&prefix)?;
    for q in [
        "DELETE FROM events WHERE session_id = $1",
        "DELETE FROM chunks WHERE session_id = $1",
        "DELETE FROM inits WHERE session_id = $1",
        "DELETE FROM sessions WHERE id = $1",
    ] {
        index.exec(q, &[text(&id.to_string())])?;
    }
    Ok(n)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn p(level: Level, name: &str, days: u32) -> Policy {
        Policy {
            level,
            name: name.into(),
            keep_days: Some(days),
            set_by: "t".into(),
        }
    }

    #[test]
    fn the_most_specific_policy_wins() {
        let all = Policies::new([
            p(Level::Global, "", 365),
            p(Level::Company, "acme", 90),
            p(Level::Location, "berlin", 30),
            p(Level::Computer, "ws-1", 7),
        ]);
        let days = |c, l, m| all.resolve(c, l, m).and_then(|p| p.keep_days);
        assert_eq!(days(Some("acme"), Some("berlin"), Some("ws-1")), Some(7));
        assert_eq!(days(Some("acme"), Some("berlin"), Some("ws-2")), Some(30));
        assert_eq!(days(Some("acme"), Some("paris"), Some("ws-2")), Some(90));
        assert_eq!(days(Some("globex"), Some("paris"), Some("ws-2")), Some(365));
        assert_eq!(days(None, None, None), Some(365));
        // A computer policy applies whatever the company; empty labels match nothing.
        assert_eq!(days(Some("globex"), None, Some("ws-1")), Some(7));
        assert_eq!(days(Some(""), Some(""), Some("")), Some(365));
        let none = Policies::new([p(Level::Company, "acme", 90)]);
        assert!(none.resolve(Some("globex"), None, None).is_none());
    }
}
