//! The PostgreSQL index, for deployments where one machine's SQLite file is not enough (several
//! player instances, very many sessions). Same tables and queries as SQLite; full-text search is
//! a stored `tsvector` over the event's words (see [`super::words`]) with a GIN index.
//!
//! Uses the synchronous `postgres` client: the index is driven from the indexer's thread and
//! from `spawn_blocking`, like the SQLite backend, so one trait serves both.
//!
//! **Credentials and transport.** The password comes from the file named by
//! `JITREC_INDEX_PASSWORD_FILE` (first line) or from `PGPASSWORD`, not the command line, where
//! every local user can read it in the process list (a password in the URL still works, with a
//! warning). `sslmode` in the URL decides TLS (rustls): `require` refuses a server without TLS,
//! `prefer` (the default) uses TLS where the server offers it, `disable` never does. The server's
//! certificate is checked against the CA in `JITREC_INDEX_CA_FILE` (PEM) or, without it, the
//! system's roots; a certificate that does not check is a failed connection, never a plain one.

use jitrec_format::{ObjectKey, SessionId};
use postgres::config::SslMode;
use postgres::types::ToSql;
use postgres::{Client, Config, NoTls, Row};
use std::time::Duration;

use super::{
    Batch, ChunkRow, EventRow, Hit, Index, IndexError, InitRow, Listed, Page, Param, Pool, Query,
    SessionRow, SqlValue, StatusCounts, from_micros, list_sql, micros, paginate, parse_id,
    parse_status, sql, to_i64, to_u64, words,
};

/// Clients kept open: the indexer's writes plus a few concurrent API reads.
const CONNECTIONS: usize = 4;

const SCHEMA: &str = "
CREATE TABLE IF NOT EXISTS sessions (
    id TEXT PRIMARY KEY, started_at BIGINT NOT NULL, ended_at BIGINT NOT NULL,
    user_name TEXT NOT NULL, user_id TEXT NOT NULL, machine_id TEXT NOT NULL,
    hostname TEXT NOT NULL, company TEXT NOT NULL, location TEXT NOT NULL,
    computer TEXT NOT NULL, authorized_by TEXT NOT NULL, reason TEXT NOT NULL,
    trigger_kind TEXT NOT NULL, end_reason TEXT NOT NULL, chunks BIGINT NOT NULL,
    bytes BIGINT NOT NULL, duration_us BIGINT NOT NULL, status TEXT NOT NULL,
    problems TEXT NOT NULL, last_change BIGINT NOT NULL, closed BIGINT NOT NULL,
    continues TEXT NOT NULL DEFAULT ''
);
CREATE TABLE IF NOT EXISTS inits (
    session_id TEXT NOT NULL, id BIGINT NOT NULL, width BIGINT NOT NULL,
    height BIGINT NOT NULL, codec TEXT NOT NULL, bytes BIGINT NOT NULL,
    PRIMARY KEY (session_id, id)
);
CREATE TABLE IF NOT EXISTS chunks (
    session_id TEXT NOT NULL, seq BIGINT NOT NULL, init_id BIGINT NOT NULL,
    media_start_us BIGINT NOT NULL, media_end_us BIGINT NOT NULL,
    utc_start BIGINT NOT NULL, utc_end BIGINT NOT NULL, keyframe BOOLEAN NOT NULL,
    frames BIGINT NOT NULL, video_bytes BIGINT NOT NULL, events_bytes BIGINT NOT NULL,
    events BIGINT NOT NULL, verified BOOLEAN NOT NULL,
    PRIMARY KEY (session_id, seq)
);
CREATE TABLE IF NOT EXISTS events (
    rid BIGSERIAL PRIMARY KEY, session_id TEXT NOT NULL, seq BIGINT NOT NULL,
    idx BIGINT NOT NULL, media_us BIGINT NOT NULL, utc BIGINT NOT NULL,
    kind TEXT NOT NULL, text TEXT NOT NULL, data TEXT NOT NULL, words TEXT NOT NULL,
    tsv tsvector GENERATED ALWAYS AS (to_tsvector('simple', words)) STORED
);
CREATE INDEX IF NOT EXISTS events_tsv ON events USING GIN (tsv);
";

/// SQL NULL for a parameter of any type (a `None` of one Rust type binds only to columns of
/// that type).
#[derive(Debug)]
struct Null;

impl ToSql for Null {
    fn to_sql(
        &self,
        _: &postgres::types::Type,
        _: &mut bytes::BytesMut,
    ) -> Result<postgres::types::IsNull, Box<dyn std::error::Error + Sync + Send>> {
        Ok(postgres::types::IsNull::Yes)
    }

    fn accepts(_: &postgres::types::Type) -> bool {
        true
    }

    postgres::types::to_sql_checked!();
}

/// The PostgreSQL index.
pub struct PgIndex {
    pool: Pool<Client>,
    /// How to open the lead's own connection ([`Index::try_lead`]).
    config: Config,
    tls: Option<tokio_postgres_rustls::MakeRustlsConnect>,
}

/// The advisory lock that is the lead among players sharing the database (7413 serialises
/// schema creation).
const LEAD_LOCK: i64 = 7414;

/// How long a lead's connection may go unanswered before the lead counts as lost, on both
/// sides: the server lets go of the lock of a player whose host died (keepalives: idle, then
/// probes), and a player cut off from the server stops leading. A player that exits, however
/// it exits, closes the connection and the lock goes at once.
const LEAD_KEEPALIVE_IDLE: Duration = Duration::from_secs(5);
const LEAD_KEEPALIVE_INTERVAL: Duration = Duration::from_secs(2);
const LEAD_KEEPALIVE_COUNT: u32 = 3;
const LEAD_TIMEOUT: Duration = Duration::from_secs(10);

/// The lead on PostgreSQL: a session advisory lock held on a connection of its own.
struct PgLease {
    client: Client,
}

impl super::Lease for PgLease {
    fn held(&mut self) -> bool {
        if self.client.is_closed() {
            return false;
        }
        // Still ours on this very session: a session the server ended (keepalives, or an
        // operator's pg_terminate_backend) fails the query or no longer holds the lock.
        // A bigint key is (classid, objid) = (high, low 32 bits), objsubid 1.
        let sql = format!(
            "SELECT count(*) FROM pg_locks WHERE locktype = 'advisory' AND granted \
             AND pid = pg_backend_pid() AND classid = 0 AND objid = {LEAD_LOCK} AND objsubid = 1"
        );
        match self.client.query_one(sql.as_str(), &[]) {
            Ok(r) => r.try_get::<_, i64>(0).is_ok_and(|n| n > 0),
            Err(e) => {
                tracing::warn!(error = %super::pg_text(&e), "the lead's connection to the index failed");
                false
            }
        }
    }
}

fn bind(params: &[Param]) -> Vec<Box<dyn ToSql + Sync>> {
    params
        .iter()
        .map(|p| -> Box<dyn ToSql + Sync> {
            match p {
                Param::Text(s) => Box::new(s.clone()),
                Param::Int(i) => Box::new(*i),
            }
        })
        .collect()
}

fn bind_values(params: &[SqlValue]) -> Vec<Box<dyn ToSql + Sync>> {
    params
        .iter()
        .map(|p| -> Box<dyn ToSql + Sync> {
            match p {
                SqlValue::Null => Box::new(Null),
                SqlValue::Int(i) => Box::new(*i),
                SqlValue::Text(s) => Box::new(s.clone()),
            }
        })
        .collect()
}

fn refs(b: &[Box<dyn ToSql + Sync>]) -> Vec<&(dyn ToSql + Sync)> {
    b.iter().map(|p| p.as_ref()).collect()
}

fn session_row(r: &Row) -> Result<SessionRow, IndexError> {
    super::read_session(|i| r.try_get::<_, String>(i), |i| r.try_get::<_, i64>(i))?
}

/// The words of a search as one string for `plainto_tsquery` (every word must occur).
fn ts_words(text: &str) -> Option<String> {
    let w = words(text);
    (!w.is_empty()).then(|| w.join(" "))
}

impl PgIndex {
    /// Connects to `url` (`postgresql://user:password@host:port/db`) and creates the schema.
    pub fn connect(url: &str) -> Result<Self, IndexError> {
        let (config, tls) = connection(url)?;
        let mut conns = Vec::new();
        for i in 0..CONNECTIONS {
            let mut c = match &tls {
                Some(t) => config.connect(t.clone())?,
                None => config.connect(NoTls)?,
            };
            if i == 0 {
                // Two players starting at once would race on CREATE ... IF NOT EXISTS; an
                // advisory lock serialises them.
                c.batch_execute("SELECT pg_advisory_lock(7413)")?;
                let r = c
                    .batch_execute(SCHEMA)
                    .and_then(|()| {
                        // An index made before sessions could continue one another.
                        c.batch_execute(
                            "ALTER TABLE sessions ADD COLUMN IF NOT EXISTS continues TEXT NOT NULL DEFAULT ''",
                        )
                    })
                    .and_then(|()| c.batch_execute(sql::FLAGS))
                    .and_then(|()| c.batch_execute(sql::INDEXES));
                c.batch_execute("SELECT pg_advisory_unlock(7413)")?;
                r?;
            }
            conns.push(c);
        }
        Ok(Self {
            pool: Pool::new(conns),
            config,
            tls,
        })
    }
}

/// The connection settings of `url` with the password and TLS settings from the environment
/// (see the module's documentation).
fn connection(
    url: &str,
) -> Result<(Config, Option<tokio_postgres_rustls::MakeRustlsConnect>), IndexError> {
    let mut config: Config = url
        .parse()
        .map_err(|e| IndexError::Other(format!("the PostgreSQL URL: {e}")))?;
    if config.get_password().is_some() {
        tracing::warn!(
            "the PostgreSQL password is in the index URL, which other local users can read in \
             the process list: put it in a file named by JITREC_INDEX_PASSWORD_FILE instead"
        );
    } else if let Some(file) = std::env::var_os("JITREC_INDEX_PASSWORD_FILE") {
        let text = std::fs::read_to_string(&file).map_err(|e| {
            IndexError::Other(format!(
                "reading the PostgreSQL password from {}: {e}",
                std::path::Path::new(&file).display()
            ))
        })?;
        config.password(text.lines().next().unwrap_or_default());
    } else if let Some(p) = std::env::var_os("PGPASSWORD") {
        config.password(p.to_string_lossy().as_bytes());
    }
    let loopback = config.get_hosts().iter().all(|h| match h {
        postgres::config::Host::Tcp(name) => {
            name == "localhost"
                || name
                    .parse::<std::net::IpAddr>()
                    .is_ok_and(|ip| ip.is_loopback())
        }
        #[cfg(unix)]
        postgres::config::Host::Unix(_) => true,
    });
    if !loopback && config.get_ssl_mode() != SslMode::Require {
        tracing::warn!(
            "the index is reached over the network without sslmode=require: a server without \
             TLS would be accepted"
        );
    }
    if config.get_ssl_mode() == SslMode::Disable {
        return Ok((config, None));
    }
    Ok((config, Some(tls_connector()?)))
}

/// rustls, trusting the CA in `JITREC_INDEX_CA_FILE` or else the system's roots.
fn tls_connector() -> Result<tokio_postgres_rustls::MakeRustlsConnect, IndexError> {
    use rustls::pki_types::CertificateDer;
    use rustls::pki_types::pem::PemObject;
    let tls_err = |what: String| IndexError::Other(format!("PostgreSQL TLS: {what}"));
    let mut roots = rustls::RootCertStore::empty();
    match std::env::var_os("JITREC_INDEX_CA_FILE") {
        Some(file) => {
            let path = std::path::PathBuf::from(file);
            let certs = CertificateDer::pem_file_iter(&path)
                .map_err(|e| tls_err(format!("{}: {e}", path.display())))?
                .collect::<Result<Vec<_>, _>>()
                .map_err(|e| tls_err(format!("{}: {e}", path.display())))?;
            if certs.is_empty() {
                return Err(tls_err(format!("{} holds no certificate", path.display())));
            }
            for c in certs {
                roots
                    .add(c)
                    .map_err(|e| tls_err(format!("{}: {e}", path.display())))?;
            }
        }
        None => {
            let found = rustls_native_certs::load_native_certs();
            for c in found.certs {
                // A system root this rustls cannot use is skipped, as the system's own tools do.
                let _ = roots.add(c);
            }
        }
    }
    let provider = std::sync::Arc::new(rustls::crypto::ring::default_provider());
    let config = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| tls_err(e.to_string()))?
        .with_root_certificates(roots)
        .with_no_client_auth();
    Ok(tokio_postgres_rustls::MakeRustlsConnect::new(config))
}

impl Index for PgIndex {
    fn backend(&self) -> &'static str {
        "postgresql"
    }

    fn apply(&self, batch: &Batch) -> Result<(), IndexError> {
        if batch.is_empty() {
            return Ok(());
        }
        self.pool.with(|c| {
            let mut tx = c.transaction()?;
            let up = tx.prepare(sql::UPSERT_SESSION)?;
            for s in &batch.sessions {
                let b = bind(&super::session_params(s));
                tx.execute(&up, &refs(&b))?;
            }
            let up = tx.prepare(sql::UPSERT_INIT)?;
            for (s, i) in &batch.inits {
                tx.execute(
                    &up,
                    &[
                        &s.to_string(),
                        &to_i64(i.id),
                        &i64::from(i.width),
                        &i64::from(i.height),
                        &i.codec,
                        &to_i64(i.bytes),
                    ],
                )?;
            }
            let chunk = tx.prepare(sql::UPSERT_CHUNK)?;
            let del = tx.prepare(sql::DELETE_CHUNK_EVENTS)?;
            let ev = tx.prepare(
                "INSERT INTO events (session_id, seq, idx, media_us, utc, kind, text, data, words) \
                 VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9)",
            )?;
            for (s, k, events) in &batch.chunks {
                let sid = s.to_string();
                tx.execute(
                    &chunk,
                    &[
                        &sid,
                        &to_i64(k.seq),
                        &to_i64(k.init_id),
                        &to_i64(k.media_start_us),
                        &to_i64(k.media_end_us),
                        &micros(k.utc_start),
                        &micros(k.utc_end),
                        &k.keyframe,
                        &i64::from(k.frames),
                        &to_i64(k.video_bytes),
                        &to_i64(k.events_bytes),
                        &i64::from(k.events),
                        &k.verified,
                    ],
                )?;
                tx.execute(&del, &[&sid, &to_i64(k.seq)])?;
                for e in events {
                    tx.execute(
                        &ev,
                        &[
                            &sid,
                            &to_i64(e.seq),
                            &i64::from(e.idx),
                            &to_i64(e.media_us),
                            &micros(e.utc),
                            &e.kind,
                            &e.text,
                            &e.data.as_str(),
                            &words(&e.text).join(" "),
                        ],
                    )?;
                }
            }
            let del = tx.prepare(sql::DELETE_CHUNK_FLAGS)?;
            let ins = tx.prepare(sql::INSERT_FLAG)?;
            for (s, seq, flags) in &batch.flags {
                let sid = s.to_string();
                tx.execute(&del, &[&sid, &to_i64(*seq)])?;
                for f in flags {
                    let b = bind(&super::flag_params(&sid, *seq, f));
                    tx.execute(&ins, &refs(&b))?;
                }
            }
            tx.commit()?;
            Ok(())
        })
    }

    fn session(&self, id: SessionId) -> Result<Option<SessionRow>, IndexError> {
        self.pool.with(|c| {
            let q = sql::SELECT_SESSION.replace("{COLS}", sql::SESSION_COLUMNS);
            c.query_opt(&q, &[&id.to_string()])?
                .map(|r| session_row(&r))
                .transpose()
        })
    }

    fn chunks(&self, id: SessionId) -> Result<Vec<ChunkRow>, IndexError> {
        self.pool.with(|c| {
            let mut out = Vec::new();
            for r in c.query(sql::SELECT_CHUNKS, &[&id.to_string()])? {
                let i = |n: usize| r.try_get::<_, i64>(n);
                out.push(ChunkRow {
                    seq: to_u64(i(0)?),
                    init_id: to_u64(i(1)?),
                    media_start_us: to_u64(i(2)?),
                    media_end_us: to_u64(i(3)?),
                    utc_start: from_micros(i(4)?)?,
                    utc_end: from_micros(i(5)?)?,
                    keyframe: r.try_get(6)?,
                    frames: u32::try_from(i(7)?).unwrap_or(0),
                    video_bytes: to_u64(i(8)?),
                    events_bytes: to_u64(i(9)?),
                    events: u32::try_from(i(10)?).unwrap_or(0),
                    verified: r.try_get(11)?,
                });
            }
            Ok(out)
        })
    }

    fn inits(&self, id: SessionId) -> Result<Vec<InitRow>, IndexError> {
        self.pool.with(|c| {
            let mut out = Vec::new();
            for r in c.query(sql::SELECT_INITS, &[&id.to_string()])? {
                let i = |n: usize| r.try_get::<_, i64>(n);
                out.push(InitRow {
                    id: to_u64(i(0)?),
                    width: u32::try_from(i(1)?).unwrap_or(0),
                    height: u32::try_from(i(2)?).unwrap_or(0),
                    codec: r.try_get(3)?,
                    bytes: to_u64(i(4)?),
                });
            }
            Ok(out)
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
            let mut out = Vec::new();
            for r in c.query(sql::SELECT_EVENTS, &[&id.to_string(), &seq, &idx, &limit])? {
                let i = |n: usize| r.try_get::<_, i64>(n);
                let data: String = r.try_get(6)?;
                out.push(EventRow {
                    seq: to_u64(i(0)?),
                    idx: u32::try_from(i(1)?).unwrap_or(0),
                    media_us: to_u64(i(2)?),
                    utc: from_micros(i(3)?)?,
                    kind: r.try_get(4)?,
                    text: r.try_get(5)?,
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
        self.pool
            .with(|c| Ok(c.query_opt(q, &[&id, &n])?.is_some()))
    }

    fn list(&self, q: &Query) -> Result<Page, IndexError> {
        let ts = q.text.as_deref().and_then(ts_words);
        if q.text.is_some() && ts.is_none() {
            return Ok(Page {
                sessions: Vec::new(),
                next: None,
            });
        }
        let (query, params) = list_sql(q, ts.clone().map(Param::Text), |n| {
            format!(
                "EXISTS (SELECT 1 FROM events e WHERE e.session_id = s.id \
                 AND e.tsv @@ plainto_tsquery('simple', ${n}))"
            )
        });
        self.pool.with(|c| {
            let b = bind(&params);
            let mut all = Vec::new();
            for r in c.query(&query, &refs(&b))? {
                all.push(session_row(&r)?);
            }
            let (rows, next) = paginate(all, q.limit);
            let mut hits: Vec<(SessionId, Hit)> = Vec::new();
            if let Some(ts) = &ts
                && !rows.is_empty()
            {
                let ids: Vec<String> = rows.iter().map(|r| r.id.to_string()).collect();
                for r in c.query(
                    "SELECT session_id, media_us, kind, text FROM ( \
                       SELECT e.*, row_number() OVER (PARTITION BY e.session_id \
                         ORDER BY e.seq, e.idx) AS n \
                       FROM events e WHERE e.session_id = ANY($1) \
                       AND e.tsv @@ plainto_tsquery('simple', $2)) h \
                     WHERE n <= $3 ORDER BY session_id, seq, idx",
                    &[&ids, ts, &i64::from(super::HITS_PER_SESSION)],
                )? {
                    let id: String = r.try_get(0)?;
                    hits.push((
                        parse_id(&id)?,
                        Hit {
                            media_us: to_u64(r.try_get(1)?),
                            kind: r.try_get(2)?,
                            text: r.try_get(3)?,
                        },
                    ));
                }
            }
            let sessions = rows
                .into_iter()
                .map(|session| Listed {
                    hits: hits
                        .iter()
                        .filter(|(s, _)| *s == session.id)
                        .map(|(_, h)| h.clone())
                        .collect(),
                    session,
                })
                .collect();
            Ok(Page { sessions, next })
        })
    }

    fn unfinished(&self) -> Result<Vec<SessionId>, IndexError> {
        self.pool.with(|c| {
            c.query(sql::SELECT_UNFINISHED, &[])?
                .iter()
                .map(|r| parse_id(&r.try_get::<_, String>(0)?))
                .collect()
        })
    }

    fn newest(&self) -> Result<Option<SessionId>, IndexError> {
        self.pool.with(|c| {
            c.query_opt(sql::SELECT_NEWEST, &[])?
                .map(|r| parse_id(&r.try_get::<_, String>(0)?))
                .transpose()
        })
    }

    fn counts(&self) -> Result<StatusCounts, IndexError> {
        self.pool.with(|c| {
            c.query(sql::SELECT_COUNTS, &[])?
                .iter()
                .map(|r| {
                    Ok((
                        parse_status(&r.try_get::<_, String>(0)?)?,
                        to_u64(r.try_get(1)?),
                    ))
                })
                .collect()
        })
    }

    fn exec(&self, sql: &str, params: &[SqlValue]) -> Result<u64, IndexError> {
        let b = bind_values(params);
        self.pool.with(|c| Ok(c.execute(sql, &refs(&b))?))
    }

    fn query(&self, sql: &str, params: &[SqlValue]) -> Result<Vec<Vec<SqlValue>>, IndexError> {
        use postgres::types::Type;
        let b = bind_values(params);
        self.pool.with(|c| {
            let mut out = Vec::new();
            for r in c.query(sql, &refs(&b))? {
                let mut row = Vec::with_capacity(r.len());
                for (i, col) in r.columns().iter().enumerate() {
                    let t = col.type_();
                    row.push(if *t == Type::INT8 {
                        r.try_get::<_, Option<i64>>(i)?
                            .map_or(SqlValue::Null, SqlValue::Int)
                    } else if *t == Type::INT4 {
                        r.try_get::<_, Option<i32>>(i)?
                            .map_or(SqlValue::Null, |v| SqlValue::Int(v.into()))
                    } else if *t == Type::BOOL {
                        r.try_get::<_, Option<bool>>(i)?
                            .map_or(SqlValue::Null, |v| SqlValue::Int(v.into()))
                    } else {
                        r.try_get::<_, Option<String>>(i)?
                            .map_or(SqlValue::Null, SqlValue::Text)
                    });
                }
                out.push(row);
            }
            Ok(out)
        })
    }

    fn try_lead(&self) -> Result<Option<Box<dyn super::Lease>>, IndexError> {
        let mut config = self.config.clone();
        config
            .connect_timeout(LEAD_TIMEOUT)
            .tcp_user_timeout(LEAD_TIMEOUT)
            .keepalives(true)
            .keepalives_idle(LEAD_KEEPALIVE_IDLE)
            .keepalives_interval(LEAD_KEEPALIVE_INTERVAL)
            .keepalives_retries(LEAD_KEEPALIVE_COUNT);
        let mut client = match &self.tls {
            Some(t) => config.connect(t.clone())?,
            None => config.connect(NoTls)?,
        };
        // The server's side of the same bound (these are per-session settings any user may
        // make), so a dead host's lock is let go of and another player can lead.
        client.batch_execute(&format!(
            "SET tcp_keepalives_idle = {}; SET tcp_keepalives_interval = {}; \
             SET tcp_keepalives_count = {LEAD_KEEPALIVE_COUNT}; SET tcp_user_timeout = {}",
            LEAD_KEEPALIVE_IDLE.as_secs(),
            LEAD_KEEPALIVE_INTERVAL.as_secs(),
            LEAD_TIMEOUT.as_millis()
        ))?;
        let got: bool = client
            .query_one("SELECT pg_try_advisory_lock($1)", &[&LEAD_LOCK])?
            .try_get(0)?;
        Ok(got.then(|| Box::new(PgLease { client }) as Box<dyn super::Lease>))
    }

    fn maintain(&self) -> Result<(), IndexError> {
        // Autovacuum analyses too, but only after its thresholds; after a bulk load (reindex,
        // the benchmark) the planner should not wait for it.
        self.pool
            .with(|c| c.batch_execute("ANALYZE sessions; ANALYZE events"))?;
        Ok(())
    }

    fn clear(&self) -> Result<(), IndexError> {
        self.pool.with(|c| {
            let mut tx = c.transaction()?;
            for q in sql::CLEAR {
                tx.execute(q, &[])?;
            }
            tx.commit()?;
            Ok(())
        })
    }
}
