//! The SQLite index: one file, WAL (readers never wait for the indexer), FTS5 over event text.
//!
//! The FTS table is an external-content table over `events`, kept in step by triggers, so event
//! text is stored once and deleting a chunk's events removes them from the search too.

use std::path::Path;
use std::time::Duration;

use jitrec_format::{ObjectKey, SessionId};
use rusqlite::{Connection, OptionalExtension, params_from_iter};

use super::{
    Batch, ChunkRow, EventRow, Hit, Index, IndexError, InitRow, Listed, Page, Param, Pool, Query,
    SessionRow, SqlValue, StatusCounts, from_micros, list_sql, micros, paginate, parse_id,
    parse_status, sql, to_i64, to_u64, words,
};

/// Connections kept open: the indexer's writes plus a few concurrent API reads.
const CONNECTIONS: usize = 4;

/// How long a write waits for another writer's transaction before failing.
const BUSY_TIMEOUT: Duration = Duration::from_secs(10);

const SCHEMA: &str = "
CREATE TABLE IF NOT EXISTS sessions (
    id TEXT PRIMARY KEY, started_at INTEGER NOT NULL, ended_at INTEGER NOT NULL,
    user_name TEXT NOT NULL, user_id TEXT NOT NULL, machine_id TEXT NOT NULL,
    hostname TEXT NOT NULL, company TEXT NOT NULL, location TEXT NOT NULL,
    computer TEXT NOT NULL, authorized_by TEXT NOT NULL, reason TEXT NOT NULL,
    trigger_kind TEXT NOT NULL, end_reason TEXT NOT NULL, chunks INTEGER NOT NULL,
    bytes INTEGER NOT NULL, duration_us INTEGER NOT NULL, status TEXT NOT NULL,
    problems TEXT NOT NULL, last_change INTEGER NOT NULL, closed INTEGER NOT NULL,
    continues TEXT NOT NULL DEFAULT ''
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS inits (
    session_id TEXT NOT NULL, id INTEGER NOT NULL, width INTEGER NOT NULL,
    height INTEGER NOT NULL, codec TEXT NOT NULL, bytes INTEGER NOT NULL,
    PRIMARY KEY (session_id, id)
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS chunks (
    session_id TEXT NOT NULL, seq INTEGER NOT NULL, init_id INTEGER NOT NULL,
    media_start_us INTEGER NOT NULL, media_end_us INTEGER NOT NULL,
    utc_start INTEGER NOT NULL, utc_end INTEGER NOT NULL, keyframe INTEGER NOT NULL,
    frames INTEGER NOT NULL, video_bytes INTEGER NOT NULL, events_bytes INTEGER NOT NULL,
    events INTEGER NOT NULL, verified INTEGER NOT NULL,
    PRIMARY KEY (session_id, seq)
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS events (
    rid INTEGER PRIMARY KEY, session_id TEXT NOT NULL, seq INTEGER NOT NULL,
    idx INTEGER NOT NULL, media_us INTEGER NOT NULL, utc INTEGER NOT NULL,
    kind TEXT NOT NULL, text TEXT NOT NULL, data TEXT NOT NULL
);
CREATE VIRTUAL TABLE IF NOT EXISTS events_fts USING fts5 (
    text, content = 'events', content_rowid = 'rid'
);
CREATE TRIGGER IF NOT EXISTS events_ai AFTER INSERT ON events BEGIN
    INSERT INTO events_fts (rowid, text) VALUES (new.rid, new.text);
END;
CREATE TRIGGER IF NOT EXISTS events_ad AFTER DELETE ON events BEGIN
    INSERT INTO events_fts (events_fts, rowid, text) VALUES ('delete', old.rid, old.text);
END;
";

/// The SQLite index.
pub struct SqliteIndex {
    pool: Pool<Connection>,
    /// `<index>.lead`, whose lock is the lead ([`Index::try_lead`]).
    lead_file: std::path::PathBuf,
}

/// The lead on a SQLite index: an exclusive lock on a file beside it, which the kernel lets go
/// of when the process ends however it ends.
struct FileLease {
    _file: std::fs::File,
}

impl super::Lease for FileLease {
    fn held(&mut self) -> bool {
        true
    }
}

fn sqlite_sql(s: &str) -> String {
    s.replace('$', "?")
}

fn to_sqlite(v: &SqlValue) -> rusqlite::types::Value {
    match v {
        SqlValue::Null => rusqlite::types::Value::Null,
        SqlValue::Int(i) => rusqlite::types::Value::Integer(*i),
        SqlValue::Text(s) => rusqlite::types::Value::Text(s.clone()),
    }
}

fn bind(params: &[Param]) -> Vec<rusqlite::types::Value> {
    params
        .iter()
        .map(|p| match p {
            Param::Text(s) => rusqlite::types::Value::Text(s.clone()),
            Param::Int(i) => rusqlite::types::Value::Integer(*i),
        })
        .collect()
}

/// An FTS5 query: every word must occur (each quoted, so no user input is read as syntax).
fn fts_query(text: &str) -> Option<String> {
    let w = words(text);
    (!w.is_empty()).then(|| {
        w.iter()
            .map(|w| format!("\"{w}\""))
            .collect::<Vec<_>>()
            .join(" ")
    })
}

fn session_row(r: &rusqlite::Row<'_>) -> rusqlite::Result<Result<SessionRow, IndexError>> {
    super::read_session(|i| r.get::<_, String>(i), |i| r.get::<_, i64>(i))
}

impl SqliteIndex {
    /// Opens (creating if needed) the index file at `path`.
    pub fn open(path: &Path) -> Result<Self, IndexError> {
        if let Some(dir) = path.parent()
            && !dir.as_os_str().is_empty()
        {
            std::fs::create_dir_all(dir)
                .map_err(|e| IndexError::Other(format!("creating {}: {e}", dir.display())))?;
        }
        let mut conns = Vec::new();
        for i in 0..CONNECTIONS {
            let c = Connection::open(path)?;
            c.busy_timeout(BUSY_TIMEOUT)?;
            c.pragma_update(None, "journal_mode", "WAL")?;
            // WAL with synchronous=NORMAL loses at most the last transactions on power loss,
            // never consistency; the index is a cache the bucket can rebuild.
            c.pragma_update(None, "synchronous", "NORMAL")?;
            c.pragma_update(None, "foreign_keys", "OFF")?;
            if i == 0 {
                c.execute_batch(SCHEMA)?;
                // An index made before sessions could continue one another.
                if c.prepare("SELECT continues FROM sessions LIMIT 0").is_err() {
                    c.execute_batch(sql::ADD_CONTINUES)?;
                }
                c.execute_batch(sql::FLAGS)?;
                c.execute_batch(sql::INDEXES)?;
            }
            conns.push(c);
        }
        let mut lead_file = path.as_os_str().to_owned();
        lead_file.push(".lead");
        Ok(Self {
            pool: Pool::new(conns),
            lead_file: lead_file.into(),
        })
    }

    fn hits(
        c: &Connection,
        fts: &str,
        ids: &[SessionId],
    ) -> Result<Vec<(SessionId, Hit)>, IndexError> {
        if ids.is_empty() {
            return Ok(Vec::new());
        }
        let marks = (0..ids.len())
            .map(|i| format!("?{}", i + 2))
            .collect::<Vec<_>>()
            .join(", ");
        let q = format!(
            "SELECT e.session_id, e.media_us, e.kind, e.text FROM events e \
             WHERE e.rid IN (SELECT rowid FROM events_fts WHERE events_fts MATCH ?1) \
             AND e.session_id IN ({marks}) ORDER BY e.session_id, e.seq, e.idx"
        );
        let mut params = vec![rusqlite::types::Value::Text(fts.to_owned())];
        params.extend(
            ids.iter()
                .map(|i| rusqlite::types::Value::Text(i.to_string())),
        );
        let mut st = c.prepare_cached(&q)?;
        let rows = st.query_map(params_from_iter(params), |r| {
            Ok((
                r.get::<_, String>(0)?,
                r.get::<_, i64>(1)?,
                r.get::<_, String>(2)?,
                r.get::<_, String>(3)?,
            ))
        })?;
        let mut out = Vec::new();
        for row in rows {
            let (id, media_us, kind, text) = row?;
            out.push((
                parse_id(&id)?,
                Hit {
                    media_us: to_u64(media_us),
                    kind,
                    text,
                },
            ));
        }
        Ok(out)
    }
}

impl Index for SqliteIndex {
    fn backend(&self) -> &'static str {
        "sqlite"
    }

    fn apply(&self, batch: &Batch) -> Result<(), IndexError> {
        if batch.is_empty() {
            return Ok(());
        }
        self.pool.with(|c| {
            let tx = c.transaction()?;
            {
                let mut up = tx.prepare_cached(&sqlite_sql(sql::UPSERT_SESSION))?;
                for s in &batch.sessions {
                    up.execute(params_from_iter(bind(&super::session_params(s))))?;
                }
                let mut up = tx.prepare_cached(&sqlite_sql(sql::UPSERT_INIT))?;
                for (s, i) in &batch.inits {
                    up.execute(rusqlite::params![
                        s.to_string(),
                        to_i64(i.id),
                        i.width,
                        i.height,
                        i.codec,
                        to_i64(i.bytes)
                    ])?;
                }
                let mut chunk = tx.prepare_cached(&sqlite_sql(sql::UPSERT_CHUNK))?;
                let mut del = tx.prepare_cached(&sqlite_sql(sql::DELETE_CHUNK_EVENTS))?;
                let mut ev = tx.prepare_cached(
                    "INSERT INTO events (session_id, seq, idx, media_us, utc, kind, text, data) \
                     VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8)",
                )?;
                for (s, k, events) in &batch.chunks {
                    let sid = s.to_string();
                    chunk.execute(rusqlite::params![
                        sid,
                        to_i64(k.seq),
                        to_i64(k.init_id),
                        to_i64(k.media_start_us),
                        to_i64(k.media_end_us),
                        micros(k.utc_start),
                        micros(k.utc_end),
                        k.keyframe,
                        k.frames,
                        to_i64(k.video_bytes),
                        to_i64(k.events_bytes),
                        k.events,
                        k.verified
                    ])?;
                    del.execute(rusqlite::params![sid, to_i64(k.seq)])?;
                    for e in events {
                        ev.execute(rusqlite::params![
                            sid,
                            to_i64(e.seq),
                            e.idx,
                            to_i64(e.media_us),
                            micros(e.utc),
                            e.kind,
                            e.text,
                            e.data.as_str()
                        ])?;
                    }
                }
                let mut del = tx.prepare_cached(&sqlite_sql(sql::DELETE_CHUNK_FLAGS))?;
                let mut ins = tx.prepare_cached(&sqlite_sql(sql::INSERT_FLAG))?;
                for (s, seq, flags) in &batch.flags {
                    let sid = s.to_string();
                    del.execute(rusqlite::params![sid, to_i64(*seq)])?;
                    for f in flags {
                        ins.execute(params_from_iter(bind(&super::flag_params(&sid, *seq, f))))?;
                    }
                }
            }
            tx.commit()?;
            Ok(())
        })
    }

    fn session(&self, id: SessionId) -> Result<Option<SessionRow>, IndexError> {
        self.pool.with(|c| {
            let q = sqlite_sql(&sql::SELECT_SESSION.replace("{COLS}", sql::SESSION_COLUMNS));
            c.prepare_cached(&q)?
                .query_row([id.to_string()], session_row)
                .optional()?
                .transpose()
        })
    }

    fn chunks(&self, id: SessionId) -> Result<Vec<ChunkRow>, IndexError> {
        self.pool.with(|c| {
            let mut st = c.prepare_cached(&sqlite_sql(sql::SELECT_CHUNKS))?;
            let rows = st.query_map([id.to_string()], |r| {
                Ok((
                    [
                        r.get::<_, i64>(0)?,
                        r.get(1)?,
                        r.get(2)?,
                        r.get(3)?,
                        r.get(4)?,
                        r.get(5)?,
                        r.get(8)?,
                        r.get(9)?,
                    ],
                    r.get::<_, bool>(6)?,
                    r.get::<_, u32>(7)?,
                    r.get::<_, u32>(10)?,
                    r.get::<_, bool>(11)?,
                ))
            })?;
            let mut out = Vec::new();
            for row in rows {
                let (i, keyframe, frames, events, verified) = row?;
                out.push(ChunkRow {
                    seq: to_u64(i[0]),
                    init_id: to_u64(i[1]),
                    media_start_us: to_u64(i[2]),
                    media_end_us: to_u64(i[3]),
                    utc_start: from_micros(i[4])?,
                    utc_end: from_micros(i[5])?,
                    keyframe,
                    frames,
                    video_bytes: to_u64(i[6]),
                    events_bytes: to_u64(i[7]),
                    events,
                    verified,
                });
            }
            Ok(out)
        })
    }

    fn inits(&self, id: SessionId) -> Result<Vec<InitRow>, IndexError> {
        self.pool.with(|c| {
            let mut st = c.prepare_cached(&sqlite_sql(sql::SELECT_INITS))?;
            let rows = st.query_map([id.to_string()], |r| {
                Ok(InitRow {
                    id: to_u64(r.get(0)?),
                    width: r.get(1)?,
                    height: r.get(2)?,
                    codec: r.get(3)?,
                    bytes: to_u64(r.get(4)?),
                })
            })?;
            Ok(rows.collect::<Result<_, _>>()?)
        })
    }

    fn events_page(
        &self,
        id: SessionId,
        after: Option<(u64, u32)>,
        limit: u32,
    ) -> Result<Vec<EventRow>, IndexError> {
        let (seq, idx, limit) = super::events_page_bounds(after, limit);
        self.pool.with(|c| {
            let mut st = c.prepare_cached(&sqlite_sql(sql::SELECT_EVENTS))?;
            let rows = st.query_map(rusqlite::params![id.to_string(), seq, idx, limit], |r| {
                Ok((
                    r.get::<_, i64>(0)?,
                    r.get::<_, u32>(1)?,
                    r.get::<_, i64>(2)?,
                    r.get::<_, i64>(3)?,
                    r.get::<_, String>(4)?,
                    r.get::<_, String>(5)?,
                    r.get::<_, String>(6)?,
                ))
            })?;
            let mut out = Vec::new();
            for row in rows {
                let (seq, idx, media_us, utc, kind, text, data) = row?;
                out.push(EventRow {
                    seq: to_u64(seq),
                    idx,
                    media_us: to_u64(media_us),
                    utc: from_micros(utc)?,
                    kind,
                    text,
                    data: super::parse_event_data(&data)?,
                });
            }
            Ok(out)
        })
    }

    fn knows(&self, key: ObjectKey) -> Result<bool, IndexError> {
        let Some((q, id, n)) = super::knows_sql(key) else {
            return Ok(false);
        };
        self.pool.with(|c| {
            Ok(c.prepare_cached(&sqlite_sql(q))?
                .query_row(rusqlite::params![id, n], |_| Ok(()))
                .optional()?
                .is_some())
        })
    }

    fn list(&self, q: &Query) -> Result<Page, IndexError> {
        let fts = q.text.as_deref().and_then(fts_query);
        if q.text.is_some() && fts.is_none() {
            // A search with no words in it matches nothing rather than everything.
            return Ok(Page {
                sessions: Vec::new(),
                next: None,
            });
        }
        let (query, params) = list_sql(q, fts.clone().map(Param::Text), |n| {
            format!(
                "s.id IN (SELECT e.session_id FROM events e WHERE e.rid IN \
                 (SELECT rowid FROM events_fts WHERE events_fts MATCH ${n}))"
            )
        });
        self.pool.with(|c| {
            let mut st = c.prepare_cached(&sqlite_sql(&query))?;
            let rows = st.query_map(params_from_iter(bind(&params)), session_row)?;
            let mut all = Vec::new();
            for r in rows {
                all.push(r??);
            }
            let (rows, next) = paginate(all, q.limit);
            let hits = match &fts {
                Some(f) => Self::hits(c, f, &rows.iter().map(|r| r.id).collect::<Vec<_>>())?,
                None => Vec::new(),
            };
            let sessions = rows
                .into_iter()
                .map(|session| {
                    let mine: Vec<Hit> = hits
                        .iter()
                        .filter(|(s, _)| *s == session.id)
                        .take(super::HITS_PER_SESSION as usize)
                        .map(|(_, h)| h.clone())
                        .collect();
                    Listed {
                        session,
                        hits: mine,
                    }
                })
                .collect();
            Ok(Page { sessions, next })
        })
    }

    fn unfinished(&self) -> Result<Vec<SessionId>, IndexError> {
        self.pool.with(|c| {
            let mut st = c.prepare_cached(sql::SELECT_UNFINISHED)?;
            let ids = st.query_map([], |r| r.get::<_, String>(0))?;
            let mut out = Vec::new();
            for id in ids {
                out.push(parse_id(&id?)?);
            }
            Ok(out)
        })
    }

    fn newest(&self) -> Result<Option<SessionId>, IndexError> {
        self.pool.with(|c| {
            c.query_row(sql::SELECT_NEWEST, [], |r| r.get::<_, String>(0))
                .optional()?
                .map(|s| parse_id(&s))
                .transpose()
        })
    }

    fn counts(&self) -> Result<StatusCounts, IndexError> {
        self.pool.with(|c| {
            let mut st = c.prepare_cached(sql::SELECT_COUNTS)?;
            let rows = st.query_map([], |r| Ok((r.get::<_, String>(0)?, r.get::<_, i64>(1)?)))?;
            let mut out = Vec::new();
            for r in rows {
                let (s, n) = r?;
                out.push((parse_status(&s)?, to_u64(n)));
            }
            Ok(out)
        })
    }

    fn exec(&self, sql: &str, params: &[SqlValue]) -> Result<u64, IndexError> {
        self.pool.with(|c| {
            let n = c
                .prepare_cached(&sqlite_sql(sql))?
                .execute(params_from_iter(params.iter().map(to_sqlite)))?;
            Ok(n as u64)
        })
    }

    fn query(&self, sql: &str, params: &[SqlValue]) -> Result<Vec<Vec<SqlValue>>, IndexError> {
        self.pool.with(|c| {
            let mut st = c.prepare_cached(&sqlite_sql(sql))?;
            let cols = st.column_count();
            let rows = st.query_map(params_from_iter(params.iter().map(to_sqlite)), |r| {
                (0..cols)
                    .map(|i| {
                        Ok(match r.get::<_, rusqlite::types::Value>(i)? {
                            rusqlite::types::Value::Integer(n) => SqlValue::Int(n),
                            rusqlite::types::Value::Text(t) => SqlValue::Text(t),
                            _ => SqlValue::Null,
                        })
                    })
                    .collect::<rusqlite::Result<Vec<_>>>()
            })?;
            Ok(rows.collect::<Result<_, _>>()?)
        })
    }

    fn try_lead(&self) -> Result<Option<Box<dyn super::Lease>>, IndexError> {
        let err = |e: std::io::Error| {
            IndexError::Other(format!("the lead file {}: {e}", self.lead_file.display()))
        };
        let file = std::fs::OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(&self.lead_file)
            .map_err(err)?;
        match file.try_lock() {
            Ok(()) => Ok(Some(Box::new(FileLease { _file: file }))),
            Err(std::fs::TryLockError::WouldBlock) => Ok(None),
            Err(std::fs::TryLockError::Error(e)) => Err(err(e)),
        }
    }

    fn maintain(&self) -> Result<(), IndexError> {
        // 0x10002: analyse every table that needs it, not only those this connection used.
        self.pool
            .with(|c| c.execute_batch("PRAGMA optimize = 0x10002"))?;
        Ok(())
    }

    fn clear(&self) -> Result<(), IndexError> {
        self.pool.with(|c| {
            let tx = c.transaction()?;
            for q in sql::CLEAR {
                tx.execute(q, [])?;
            }
            tx.commit()?;
            Ok(())
        })
    }
}
