//! Where each session lives in the bucket: layout v1 (`v1/sessions/<id>/`) or its machine's
//! prefix in layout v2 (`v2/machines/<machine>/sessions/<id>/`).
//!
//! The player knows a session by its id (the index, the URLs), but reads it under a prefix. The
//! first prefix discovery finds a session id under is recorded here and kept: a second copy of
//! the same id under another machine's prefix (an endpoint copying another's session into its
//! own prefix) is reported, never indexed over the first. Like the witness record it lives
//! beside the index and `reindex` does not empty it, so a rebuild cannot be raced either.

use chrono::Utc;
use jitrec_bucket::{BucketError, BucketReader};
use jitrec_format::{MACHINES_PREFIX, MachineId, SessionId, SessionKey};

use crate::index::{Index, IndexError, SqlValue};

const SCHEMA: &str = "CREATE TABLE IF NOT EXISTS session_locations (session_id TEXT PRIMARY KEY, \
     machine TEXT NOT NULL, first_seen BIGINT NOT NULL)";

pub fn init(index: &dyn Index) -> Result<(), IndexError> {
    index.exec(SCHEMA, &[])?;
    Ok(())
}

fn machine_text(key: &SessionKey) -> String {
    key.machine.map(|m| m.to_string()).unwrap_or_default()
}

fn parse(id: SessionId, machine: &str) -> Result<SessionKey, IndexError> {
    if machine.is_empty() {
        return Ok(id.into());
    }
    let m: MachineId = machine
        .parse()
        .map_err(|e| IndexError::Corrupt(format!("session location of {id}: {e}")))?;
    Ok(SessionKey::v2(m, id))
}

/// Records where `key` lives. Returns `Some(first)` when the id is already on record under
/// another prefix (this copy is then not the session).
pub fn record(index: &dyn Index, key: SessionKey) -> Result<Option<SessionKey>, IndexError> {
    index.exec(
        "INSERT INTO session_locations (session_id, machine, first_seen) VALUES ($1, $2, $3) \
         ON CONFLICT (session_id) DO NOTHING",
        &[
            SqlValue::Text(key.id.to_string()),
            SqlValue::Text(machine_text(&key)),
            SqlValue::Int(Utc::now().timestamp_micros()),
        ],
    )?;
    let first = lookup(index, key.id)?.unwrap_or(key);
    Ok((first != key).then_some(first))
}

/// Where the session with `id` lives, if discovery has found it.
pub fn lookup(index: &dyn Index, id: SessionId) -> Result<Option<SessionKey>, IndexError> {
    let rows = index.query(
        "SELECT machine FROM session_locations WHERE session_id = $1",
        &[SqlValue::Text(id.to_string())],
    )?;
    rows.first()
        .map(|r| parse(id, r.first().and_then(SqlValue::text).unwrap_or_default()))
        .transpose()
}

/// Where the session with `id` lives; layout v1 when nothing is on record (sessions indexed
/// before layout v2 existed).
pub fn key_of(index: &dyn Index, id: SessionId) -> Result<SessionKey, IndexError> {
    Ok(lookup(index, id)?.unwrap_or_else(|| id.into()))
}

/// The newest session id on record per machine (where discovery resumes after a restart).
pub fn newest_per_machine(index: &dyn Index) -> Result<Vec<(MachineId, SessionId)>, IndexError> {
    let rows = index.query(
        "SELECT machine, MAX(session_id) FROM session_locations WHERE machine <> '' \
         GROUP BY machine",
        &[],
    )?;
    Ok(rows
        .iter()
        .filter_map(|r| {
            Some((
                r.first()?.text()?.parse().ok()?,
                r.get(1)?.text()?.parse().ok()?,
            ))
        })
        .collect())
}

/// Every prefix of the bucket that holds objects of a session with `id`: layout v1 and every
/// machine's. More than one is a copy planted somewhere (or a collision), for the caller to
/// report rather than to pick from.
pub fn find_all(src: &dyn BucketReader, id: SessionId) -> Result<Vec<SessionKey>, BucketError> {
    let mut out = Vec::new();
    let v1 = SessionKey::from(id);
    if !src.list(&v1.prefix())?.is_empty() {
        out.push(v1);
    }
    for name in src.list_names(MACHINES_PREFIX, None)? {
        let Ok(m) = name.parse::<MachineId>() else {
            continue;
        };
        let key = SessionKey::v2(m, id);
        if !src.list(&key.prefix())?.is_empty() {
            out.push(key);
        }
    }
    Ok(out)
}

/// Finds a session in the bucket by its id alone (where there is no location on record): its
/// only prefix; `None` when it is nowhere, or under several (see [`find_all`]).
pub fn find(src: &dyn BucketReader, id: SessionId) -> Result<Option<SessionKey>, BucketError> {
    let all = find_all(src, id)?;
    if all.len() > 1 {
        tracing::warn!(session = %id, prefixes = ?all.iter().map(SessionKey::prefix).collect::<Vec<_>>(), "a session id is under several prefixes; not picking one");
        return Ok(None);
    }
    Ok(all.into_iter().next())
}
