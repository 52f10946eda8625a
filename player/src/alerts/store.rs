//! The alerter's record tables: what it has alerted, and the outbox of what it still has to
//! deliver. Records, not cache ([`crate::record`]): `reindex` never touches them, so a rebuilt
//! index does not alert everything again, and an alert queued before a restart is still sent.
//!
//! - `alert_state`: named values; `baseline_at` is when the alerter first ran against this
//!   index (everything found then was taken as already alerted).
//! - `alert_sessions`: per session, the status and `closed` last alerted, how many status
//!   changes were alerted (part of their ids), and whether the session was already closed at
//!   the baseline (then its rule matches are not alerted either).
//! - `alert_flags`: the keys of the rule matches alerted (a flag deleted and written again by
//!   rules applied again is not alerted twice).
//! - `alert_outbox`: one row per alert and target, `pending` until `delivered`, `refused`
//!   (the receiver said it never will take it) or `dropped` (the outbox was full). `seq`
//!   orders a target's rows; `next_try` holds the target's backoff across restarts; `keep`
//!   marks the rows a full outbox never drops.
//!
//! The portable SQL of [`Index::exec`] runs one statement at a time (no transaction across
//! them), so the order of writes is what keeps a crash harmless: an alert is queued (an
//! insert that does nothing for an id already queued) before the record of what was alerted
//! moves on; a crash between the two derives the same alerts again, with the same ids.

use crate::index::{Index, IndexError, SqlValue};

use super::AlertError;

/// The forward migrations of the alert tables ([`crate::record::migrate`]).
const MIGRATIONS: &[&[&str]] = &[
    &[
        "CREATE TABLE IF NOT EXISTS alert_state (name TEXT PRIMARY KEY, value BIGINT NOT NULL)",
        "CREATE TABLE IF NOT EXISTS alert_sessions (session_id TEXT PRIMARY KEY, \
     status TEXT NOT NULL, closed BIGINT NOT NULL, changes BIGINT NOT NULL, \
     baseline BIGINT NOT NULL, seen_at BIGINT NOT NULL)",
        "CREATE TABLE IF NOT EXISTS alert_flags (session_id TEXT NOT NULL, seq BIGINT NOT NULL, \
     idx BIGINT NOT NULL, rule TEXT NOT NULL, alerted_at BIGINT NOT NULL, \
     PRIMARY KEY (session_id, seq, idx, rule))",
        "CREATE TABLE IF NOT EXISTS alert_outbox (id TEXT NOT NULL, target TEXT NOT NULL, \
     kind TEXT NOT NULL, seq BIGINT NOT NULL, created_at BIGINT NOT NULL, \
     payload TEXT NOT NULL, state TEXT NOT NULL, attempts BIGINT NOT NULL, \
     next_try BIGINT NOT NULL, last_error TEXT NOT NULL, done_at BIGINT NOT NULL, \
     PRIMARY KEY (id, target))",
        "CREATE INDEX IF NOT EXISTS alert_outbox_due ON alert_outbox (target, state, seq)",
    ],
    // v2: which rows a full outbox may drop (`keep` 0: matches of rules below high severity) and
    // which it never drops (session start and end, status changes, high and critical matches).
    &[
        "ALTER TABLE alert_outbox ADD COLUMN keep BIGINT NOT NULL DEFAULT 0",
        // Rows queued before: all but rule matches are kept (a match's severity is in its
        // payload only; those stay droppable).
        "UPDATE alert_outbox SET keep = 1 WHERE kind <> 'rule_match'",
    ],
];

/// The tables of this module (for an operator's backup of the records).
pub const TABLES: &[&str] = &[
    "alert_state",
    "alert_sessions",
    "alert_flags",
    "alert_outbox",
];

/// The states of an outbox row besides `pending`.
pub const DELIVERED: &str = "delivered";
pub const REFUSED: &str = "refused";
pub const DROPPED: &str = "dropped";

/// Creates the tables or brings them to the current version (idempotent).
pub fn init(index: &dyn Index) -> Result<(), AlertError> {
    crate::record::migrate(index, "alerts", "alert_outbox", MIGRATIONS).map_err(|e| match e {
        crate::record::RecordError::Index(e) => AlertError::Index(e),
        e => AlertError::Record(e.to_string()),
    })?;
    Ok(())
}

pub(crate) fn text(s: &str) -> SqlValue {
    SqlValue::Text(s.to_owned())
}

pub(crate) fn now_us() -> i64 {
    chrono::Utc::now().timestamp_micros()
}

/// Whether table `name` exists (both backends answer a query on a missing table with an
/// error).
pub(crate) fn table_exists(index: &dyn Index, name: &str) -> bool {
    index
        .query(&format!("SELECT 1 FROM {name} LIMIT 1"), &[])
        .is_ok()
}

/// When the alerter first ran against this index, if it has.
pub(crate) fn baseline_at(index: &dyn Index) -> Result<Option<i64>, AlertError> {
    let rows = index.query(
        "SELECT value FROM alert_state WHERE name = 'baseline_at'",
        &[],
    )?;
    match rows.first() {
        None => Ok(None),
        Some(r) => r
            .first()
            .and_then(SqlValue::int)
            .map(Some)
            .ok_or_else(|| AlertError::Corrupt("alert_state baseline_at".into())),
    }
}

/// Takes everything in the index now as alerted: every session with its status (those
/// already closed marked as baseline sessions, whose rule matches are never alerted) and every
/// flag. Idempotent; `baseline_at` is written last, so a crash half-way runs it again.
pub(crate) fn baseline(index: &dyn Index, now: i64) -> Result<(), AlertError> {
    // CAST: PostgreSQL cannot infer a parameter's type in a SELECT list.
    index.exec(
        "INSERT INTO alert_sessions (session_id, status, closed, changes, baseline, seen_at) \
         SELECT id, status, closed, 0, closed, CAST($1 AS BIGINT) FROM sessions WHERE true \
         ON CONFLICT (session_id) DO NOTHING",
        &[SqlValue::Int(now)],
    )?;
    if table_exists(index, "flags") {
        index.exec(
            "INSERT INTO alert_flags (session_id, seq, idx, rule, alerted_at) \
             SELECT session_id, seq, idx, rule, CAST($1 AS BIGINT) FROM flags WHERE true \
             ON CONFLICT (session_id, seq, idx, rule) DO NOTHING",
            &[SqlValue::Int(now)],
        )?;
    }
    index.exec(
        "INSERT INTO alert_state (name, value) VALUES ('baseline_at', $1) \
         ON CONFLICT (name) DO NOTHING",
        &[SqlValue::Int(now)],
    )?;
    Ok(())
}

/// The highest `seq` in the outbox (new rows go after it).
pub(crate) fn last_seq(index: &dyn Index) -> Result<i64, AlertError> {
    let rows = index.query("SELECT MAX(seq) FROM alert_outbox", &[])?;
    Ok(rows
        .first()
        .and_then(|r| r.first())
        .and_then(SqlValue::int)
        .unwrap_or(0))
}

/// One alert to queue for a target.
pub(crate) struct Queued<'a> {
    pub(crate) id: &'a str,
    pub(crate) kind: &'a str,
    pub(crate) target: &'a str,
    pub(crate) seq: i64,
    pub(crate) payload: &'a str,
    /// Never dropped by a full outbox.
    pub(crate) keep: bool,
}

/// Queues an alert for its target; nothing if already queued.
pub(crate) fn enqueue(index: &dyn Index, q: &Queued<'_>, now: i64) -> Result<(), AlertError> {
    index.exec(
        "INSERT INTO alert_outbox (id, target, kind, seq, created_at, payload, state, attempts, \
         next_try, last_error, done_at, keep) \
         VALUES ($1, $2, $3, $4, $5, $6, 'pending', 0, 0, '', 0, $7) \
         ON CONFLICT (id, target) DO NOTHING",
        &[
            text(q.id),
            text(q.target),
            text(q.kind),
            SqlValue::Int(q.seq),
            SqlValue::Int(now),
            text(q.payload),
            SqlValue::Int(i64::from(q.keep)),
        ],
    )?;
    Ok(())
}

/// How many matches of `rule` in `session` are recorded as alerted (or seen at the baseline).
pub(crate) fn flags_alerted(
    index: &dyn Index,
    session: &str,
    rule: &str,
) -> Result<i64, AlertError> {
    Ok(index
        .query(
            "SELECT COUNT(*) FROM alert_flags WHERE session_id = $1 AND rule = $2",
            &[text(session), text(rule)],
        )?
        .first()
        .and_then(|r| r.first())
        .and_then(SqlValue::int)
        .unwrap_or(0))
}

/// Records what was alerted of a session.
pub(crate) fn save_session(
    index: &dyn Index,
    session: &str,
    status: &str,
    closed: bool,
    changes: i64,
    now: i64,
) -> Result<(), AlertError> {
    index.exec(
        "INSERT INTO alert_sessions (session_id, status, closed, changes, baseline, seen_at) \
         VALUES ($1, $2, $3, $4, 0, $5) ON CONFLICT (session_id) DO UPDATE SET \
         status = excluded.status, closed = excluded.closed, changes = excluded.changes",
        &[
            text(session),
            text(status),
            SqlValue::Int(i64::from(closed)),
            SqlValue::Int(changes),
            SqlValue::Int(now),
        ],
    )?;
    Ok(())
}

/// Records a flag as alerted (or as below the severity alerted).
pub(crate) fn save_flag(
    index: &dyn Index,
    session: &str,
    seq: i64,
    idx: i64,
    rule: &str,
    now: i64,
) -> Result<(), AlertError> {
    index.exec(
        "INSERT INTO alert_flags (session_id, seq, idx, rule, alerted_at) \
         VALUES ($1, $2, $3, $4, $5) ON CONFLICT (session_id, seq, idx, rule) DO NOTHING",
        &[
            text(session),
            SqlValue::Int(seq),
            SqlValue::Int(idx),
            text(rule),
            SqlValue::Int(now),
        ],
    )?;
    Ok(())
}

/// A queued alert, as a delivery thread sends it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Outgoing {
    pub(crate) id: String,
    pub(crate) kind: String,
    pub(crate) payload: String,
    pub(crate) attempts: i64,
}

/// Up to `limit` of `target`'s pending alerts due at `now`, oldest first.
pub(crate) fn due(
    index: &dyn Index,
    target: &str,
    now: i64,
    limit: i64,
) -> Result<Vec<Outgoing>, AlertError> {
    index
        .query(
            "SELECT id, kind, payload, attempts FROM alert_outbox \
             WHERE target = $1 AND state = 'pending' AND next_try <= $2 \
             ORDER BY seq, id LIMIT $3",
            &[text(target), SqlValue::Int(now), SqlValue::Int(limit)],
        )?
        .into_iter()
        .map(|r| match r.as_slice() {
            [
                SqlValue::Text(id),
                SqlValue::Text(kind),
                SqlValue::Text(payload),
                attempts,
            ] => Ok(Outgoing {
                id: id.clone(),
                kind: kind.clone(),
                payload: payload.clone(),
                attempts: attempts.int().unwrap_or(0),
            }),
            _ => Err(AlertError::Corrupt(format!("an alert_outbox row: {r:?}"))),
        })
        .collect()
}

/// Marks a row done: `state` is delivered, refused or dropped.
pub(crate) fn finish(
    index: &dyn Index,
    target: &str,
    id: &str,
    state: &str,
    error: &str,
    now: i64,
) -> Result<(), AlertError> {
    index.exec(
        "UPDATE alert_outbox SET state = $3, done_at = $4, last_error = $5, \
         attempts = attempts + 1 WHERE id = $1 AND target = $2",
        &[
            text(id),
            text(target),
            text(state),
            SqlValue::Int(now),
            text(&super::bounded_bytes(error, super::FIELD_MAX)),
        ],
    )?;
    Ok(())
}

/// A failed attempt of row `id`: counted, and the whole target backed off until `next_try`
/// (its later rows wait behind it, so the order holds and a down receiver costs one attempt
/// per backoff, not one per alert).
pub(crate) fn retry_later(
    index: &dyn Index,
    target: &str,
    id: &str,
    next_try: i64,
    error: &str,
) -> Result<(), AlertError> {
    index.exec(
        "UPDATE alert_outbox SET attempts = attempts + 1, last_error = $3 \
         WHERE id = $1 AND target = $2",
        &[
            text(id),
            text(target),
            text(&super::bounded_bytes(error, super::FIELD_MAX)),
        ],
    )?;
    index.exec(
        "UPDATE alert_outbox SET next_try = $2 WHERE target = $1 AND state = 'pending' \
         AND next_try < $2",
        &[text(target), SqlValue::Int(next_try)],
    )?;
    Ok(())
}

/// Puts delivered rows back to pending (written to a syslog connection that then broke).
pub(crate) fn requeue(index: &dyn Index, target: &str, ids: &[String]) -> Result<(), AlertError> {
    for id in ids {
        index.exec(
            "UPDATE alert_outbox SET state = 'pending', done_at = 0 \
             WHERE id = $1 AND target = $2 AND state = 'delivered'",
            &[text(id), text(target)],
        )?;
    }
    Ok(())
}

/// What [`bound`] did.
#[derive(Debug, Default, PartialEq, Eq)]
pub(crate) struct Bounded {
    /// Rows dropped (matches below high severity, oldest first).
    pub(crate) dropped: u64,
    /// Pending rows left beyond `max`: all of them rows never dropped.
    pub(crate) over: u64,
}

/// Brings `target`'s pending rows down to `max` by dropping the oldest of those a full outbox
/// may drop; the rows it never drops (`keep`) stay, however many.
pub(crate) fn bound(
    index: &dyn Index,
    target: &str,
    max: u64,
    now: i64,
) -> Result<Bounded, AlertError> {
    let count = |sql: &str| -> Result<u64, AlertError> {
        Ok(index
            .query(sql, &[text(target)])?
            .first()
            .and_then(|r| r.first())
            .and_then(SqlValue::int)
            .and_then(|n| u64::try_from(n).ok())
            .unwrap_or(0))
    };
    let pending =
        count("SELECT COUNT(*) FROM alert_outbox WHERE target = $1 AND state = 'pending'")?;
    if pending <= max {
        return Ok(Bounded::default());
    }
    let excess = pending - max;
    // The seq of the newest droppable row that goes: every droppable row at or before it is
    // dropped (all of them when there are fewer than the excess).
    let cut = index.query(
        "SELECT seq FROM alert_outbox WHERE target = $1 AND state = 'pending' AND keep = 0 \
         ORDER BY seq ASC LIMIT 1 OFFSET $2",
        &[
            text(target),
            SqlValue::Int(i64::try_from(excess - 1).unwrap_or(i64::MAX)),
        ],
    )?;
    let cut = cut
        .first()
        .and_then(|r| r.first())
        .and_then(SqlValue::int)
        .unwrap_or(i64::MAX);
    let dropped = index.exec(
        "UPDATE alert_outbox SET state = 'dropped', done_at = $3, \
         last_error = 'the outbox was full' \
         WHERE target = $1 AND state = 'pending' AND keep = 0 AND seq <= $2",
        &[text(target), SqlValue::Int(cut), SqlValue::Int(now)],
    )?;
    Ok(Bounded {
        dropped,
        over: excess.saturating_sub(dropped),
    })
}

/// Pending rows of targets no longer configured: dropped (they would wait forever, and count
/// against nothing). Returns how many.
pub(crate) fn drop_unconfigured(
    index: &dyn Index,
    targets: &[String],
    now: i64,
) -> Result<u64, AlertError> {
    let rows = index.query(
        "SELECT DISTINCT target FROM alert_outbox WHERE state = 'pending'",
        &[],
    )?;
    let mut dropped = 0;
    for t in rows.iter().filter_map(|r| r.first()?.text()) {
        if targets.iter().any(|c| c == t) {
            continue;
        }
        dropped += index.exec(
            "UPDATE alert_outbox SET state = 'dropped', done_at = $2, \
             last_error = 'the target is no longer configured' \
             WHERE target = $1 AND state = 'pending'",
            &[text(t), SqlValue::Int(now)],
        )?;
    }
    Ok(dropped)
}

/// Deletes rows done before `before`.
pub(crate) fn prune(index: &dyn Index, before: i64) -> Result<u64, AlertError> {
    Ok(index.exec(
        "DELETE FROM alert_outbox WHERE state <> 'pending' AND done_at < $1",
        &[SqlValue::Int(before)],
    )?)
}

/// How many rows of `target` are in `state` (for tests and status).
pub fn count(index: &dyn Index, target: &str, state: &str) -> Result<u64, IndexError> {
    let n = index
        .query(
            "SELECT COUNT(*) FROM alert_outbox WHERE target = $1 AND state = $2",
            &[text(target), text(state)],
        )?
        .first()
        .and_then(|r| r.first())
        .and_then(SqlValue::int)
        .unwrap_or(0);
    Ok(u64::try_from(n).unwrap_or(0))
}
