//! The player as witness: what it read from the bucket, when, and what it hashed to.
//!
//! Signatures prove who wrote a document, not that it was not rewritten later by someone who
//! holds the same key (the recorded admin can read their endpoint's key). The player is the one
//! party the endpoint does not control, so it records, for every document and payload it reads,
//! the object key, size, SHA-256 and the time it first saw it, on its own clock. A later read
//! that finds other bytes under a witnessed key is tampering, however well signed the new bytes
//! are; `verify`, the indexer and the media routes all compare against this record.
//!
//! The record is append-only and hash-chained: entry *n* commits to entry *n - 1*, so rewriting
//! or deleting an entry (by someone with the index's database) breaks the chain at that entry.
//! `jitrec-player witness head` prints the chain's head (count and hash); an operator anchors
//! it outside the player (a ticket, a log shipped off the machine, a write-once bucket) so even
//! a rewrite of the whole chain is caught by comparing heads (`docs/player.md`, "Witness").
//!
//! The tables live beside the index, like the accounts and the audit log, and are not touched
//! by `reindex`: the index is a cache of the bucket, the witness is evidence about it.

use chrono::{DateTime, Utc};
use jitrec_format::{ObjectKey, SessionId, Sha256Digest};

use crate::index::{Index, IndexError, SqlValue};

const SCHEMA: [&str; 2] = [
    "CREATE TABLE IF NOT EXISTS witness (n BIGINT PRIMARY KEY, \
     object_key TEXT NOT NULL UNIQUE, session_id TEXT NOT NULL, size BIGINT NOT NULL, \
     sha256 TEXT NOT NULL, seen_at BIGINT NOT NULL, prev TEXT NOT NULL, entry TEXT NOT NULL)",
    "CREATE INDEX IF NOT EXISTS witness_session ON witness (session_id, object_key)",
];

/// The chain's start: the `prev` of entry 1.
const GENESIS: &str = "0000000000000000000000000000000000000000000000000000000000000000";

/// Why the witness record could not answer, or is not what it was.
#[derive(Debug, thiserror::Error)]
pub enum WitnessError {
    #[error(transparent)]
    Index(#[from] IndexError),
    #[error("witness record holds a value it cannot read: {0}")]
    Corrupt(String),
    /// Entry `n` does not chain to the one before it, or does not hash to what it says.
    #[error("witness record is broken at entry {n}: {reason}")]
    Broken { n: i64, reason: String },
}

/// What the witness has on record for one object.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Witnessed {
    pub size: u64,
    pub sha256: Sha256Digest,
    pub seen_at: DateTime<Utc>,
}

/// What observing an object found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Seen {
    /// First sight: now on record.
    New(DateTime<Utc>),
    /// The same bytes as first seen then.
    Same(DateTime<Utc>),
    /// Other bytes than the witness recorded: replaced after the player first read it.
    Replaced(Witnessed),
}

/// The head of the chain: how many entries, and the last entry's hash.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Head {
    pub entries: i64,
    pub hash: String,
}

/// Creates the table.
pub fn init(index: &dyn Index) -> Result<(), WitnessError> {
    for s in SCHEMA {
        index.exec(s, &[])?;
    }
    Ok(())
}

/// The hash of entry `n` (its fields and the previous entry's hash).
fn entry_hash(n: i64, key: &str, size: u64, sha: &str, seen_us: i64, prev: &str) -> String {
    Sha256Digest::of(
        format!("jitrec-witness\n{n}\n{key}\n{size}\n{sha}\n{seen_us}\n{prev}").as_bytes(),
    )
    .to_string()
}

/// What the witness recorded for `key`, if anything.
pub fn lookup(index: &dyn Index, key: &str) -> Result<Option<Witnessed>, WitnessError> {
    let rows = index.query(
        "SELECT size, sha256, seen_at FROM witness WHERE object_key = $1",
        &[SqlValue::Text(key.to_owned())],
    )?;
    let Some(r) = rows.first() else {
        return Ok(None);
    };
    let bad = || WitnessError::Corrupt(format!("entry for {key}"));
    Ok(Some(Witnessed {
        size: r.first().and_then(SqlValue::int).ok_or_else(bad)? as u64,
        sha256: r
            .get(1)
            .and_then(SqlValue::text)
            .and_then(|t| t.parse().ok())
            .ok_or_else(bad)?,
        seen_at: r
            .get(2)
            .and_then(SqlValue::int)
            .and_then(DateTime::from_timestamp_micros)
            .ok_or_else(bad)?,
    }))
}

/// Every object key witnessed for `session`, with when it was first seen: what a full listing
/// of the session must still show (a witnessed object that is gone was deleted).
pub fn keys_of(
    index: &dyn Index,
    session: SessionId,
) -> Result<Vec<(String, DateTime<Utc>)>, WitnessError> {
    Ok(index
        .query(
            "SELECT object_key, seen_at FROM witness WHERE session_id = $1 ORDER BY object_key",
            &[SqlValue::Text(session.to_string())],
        )?
        .iter()
        .filter_map(|r| {
            Some((
                r.first()?.text()?.to_owned(),
                DateTime::from_timestamp_micros(r.get(1)?.int()?)?,
            ))
        })
        .collect())
}

/// Records `key` with `size` and `sha256` at first sight, or compares with the record.
pub fn observe(
    index: &dyn Index,
    object: ObjectKey,
    size: u64,
    sha256: &Sha256Digest,
    now: DateTime<Utc>,
) -> Result<Seen, WitnessError> {
    let key = &object.to_string();
    // Two writers (the indexer and a `verify --record`) may append at once: the loser of the
    // race on `n` or `object_key` looks again.
    for _ in 0..5 {
        if let Some(w) = lookup(index, key)? {
            return Ok(if w.size == size && w.sha256 == *sha256 {
                Seen::Same(w.seen_at)
            } else {
                Seen::Replaced(w)
            });
        }
        let head = head(index)?;
        let n = head.entries + 1;
        let seen_us = now.timestamp_micros();
        let sha = sha256.to_string();
        let entry = entry_hash(n, key, size, &sha, seen_us, &head.hash);
        let inserted = index.exec(
            "INSERT INTO witness (n, object_key, session_id, size, sha256, seen_at, prev, entry) \
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8) ON CONFLICT DO NOTHING",
            &[
                SqlValue::Int(n),
                SqlValue::Text(key.to_owned()),
                SqlValue::Text(object.session().to_string()),
                SqlValue::Int(size as i64),
                SqlValue::Text(sha),
                SqlValue::Int(seen_us),
                SqlValue::Text(head.hash),
                SqlValue::Text(entry),
            ],
        )?;
        if inserted == 1 {
            return Ok(Seen::New(now));
        }
    }
    Err(WitnessError::Corrupt(format!(
        "could not append {key}: the record keeps changing under this writer"
    )))
}

/// The chain's head, as stored (not re-verified: see [`check`]).
pub fn head(index: &dyn Index) -> Result<Head, WitnessError> {
    let rows = index.query("SELECT n, entry FROM witness ORDER BY n DESC LIMIT 1", &[])?;
    match rows.first() {
        None => Ok(Head {
            entries: 0,
            hash: GENESIS.into(),
        }),
        Some(r) => Ok(Head {
            entries: r
                .first()
                .and_then(SqlValue::int)
                .ok_or_else(|| WitnessError::Corrupt("head entry number".into()))?,
            hash: r
                .get(1)
                .and_then(SqlValue::text)
                .ok_or_else(|| WitnessError::Corrupt("head entry hash".into()))?
                .to_owned(),
        }),
    }
}

/// The stored hash of entry `n` (to compare with an anchored head).
pub fn entry_hash_at(index: &dyn Index, n: i64) -> Result<Option<String>, WitnessError> {
    Ok(index
        .query(
            "SELECT entry FROM witness WHERE n = $1",
            &[SqlValue::Int(n)],
        )?
        .first()
        .and_then(|r| r.first())
        .and_then(SqlValue::text)
        .map(str::to_owned))
}

/// Re-hashes the whole chain from its start; returns the head it arrives at.
pub fn check(index: &dyn Index) -> Result<Head, WitnessError> {
    let mut prev = GENESIS.to_owned();
    let mut expect = 1i64;
    // In pages, so a long record is not held whole.
    loop {
        let rows = index.query(
            "SELECT n, object_key, size, sha256, seen_at, prev, entry FROM witness \
             WHERE n >= $1 ORDER BY n LIMIT 10000",
            &[SqlValue::Int(expect)],
        )?;
        if rows.is_empty() {
            break;
        }
        for r in &rows {
            let int = |i: usize| r.get(i).and_then(SqlValue::int);
            let text = |i: usize| r.get(i).and_then(SqlValue::text).unwrap_or_default();
            let n = int(0).unwrap_or(-1);
            let broken = |reason: String| WitnessError::Broken { n, reason };
            if n != expect {
                return Err(WitnessError::Broken {
                    n: expect,
                    reason: format!("entry {expect} is missing (next is {n})"),
                });
            }
            if text(5) != prev {
                return Err(broken("its `prev` is not the previous entry's hash".into()));
            }
            let size = int(2).unwrap_or(-1) as u64;
            let computed = entry_hash(n, text(1), size, text(3), int(4).unwrap_or(0), &prev);
            if computed != text(6) {
                return Err(broken("its fields do not hash to its recorded hash".into()));
            }
            prev = computed;
            expect += 1;
        }
    }
    Ok(Head {
        entries: expect - 1,
        hash: prev,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::index::sqlite::SqliteIndex;

    #[test]
    fn the_record_notices_replaced_bytes_and_its_own_rewriting() {
        let t = tempfile::tempdir().unwrap();
        let idx = SqliteIndex::open(&t.path().join("i.sqlite3")).unwrap();
        init(&idx).unwrap();
        let t0 = DateTime::from_timestamp(1_700_000_000, 0).unwrap();
        let a = Sha256Digest::of(b"a");
        let b = Sha256Digest::of(b"b");
        let s = jitrec_format::fixtures::session_id(1);
        let k1 = ObjectKey::ChunkVideo(s.into(), 0);
        let k2 = ObjectKey::ChunkVideo(s.into(), 1);
        assert_eq!(observe(&idx, k1, 1, &a, t0).unwrap(), Seen::New(t0));
        let later = t0 + chrono::Duration::hours(1);
        assert_eq!(observe(&idx, k1, 1, &a, later).unwrap(), Seen::Same(t0));
        assert_eq!(observe(&idx, k2, 1, &b, later).unwrap(), Seen::New(later));
        match observe(&idx, k1, 1, &b, later).unwrap() {
            Seen::Replaced(w) => {
                assert_eq!(w.sha256, a);
                assert_eq!(w.seen_at, t0);
            }
            other => panic!("{other:?}"),
        }
        let h = check(&idx).unwrap();
        assert_eq!(h, head(&idx).unwrap());
        let keys: Vec<String> = keys_of(&idx, s)
            .unwrap()
            .into_iter()
            .map(|(k, _)| k)
            .collect();
        assert_eq!(keys, [k1.to_string(), k2.to_string()]);
        assert_eq!(h.entries, 2);

        // Someone with the database rewrites the first entry's digest to match new bytes.
        idx.exec(
            "UPDATE witness SET sha256 = $1 WHERE n = 1",
            &[SqlValue::Text(b.to_string())],
        )
        .unwrap();
        let err = check(&idx).unwrap_err();
        assert!(matches!(err, WitnessError::Broken { n: 1, .. }), "{err}");
        // Deleting an entry is found too.
        idx.exec("DELETE FROM witness WHERE n = 1", &[]).unwrap();
        assert!(matches!(
            check(&idx).unwrap_err(),
            WitnessError::Broken { n: 1, .. }
        ));
    }
}
