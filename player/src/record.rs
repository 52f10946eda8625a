//! The player's records: what it knows that the bucket cannot give back.
//!
//! Accounts, sign-ins and the audit log ([`crate::auth`]), retention policies, holds,
//! acknowledgements and the deletion log ([`crate::retention`]), machine enrolment
//! ([`crate::enroll`]), the witness record ([`crate::witness`]) and the bundle key
//! ([`crate::bundle`]) are records: `reindex` never touches them and a lost copy cannot be
//! rebuilt from the bucket, so they are backed up (docs/deploy.md). The session, chunk and
//! event tables are the cache ([`crate::index`]), rebuilt from the bucket at will.
//!
//! A record's tables change only by forward migrations, numbered per component in the
//! `record_schema` table: a step runs once, in order, and a database written by a newer player
//! is refused rather than written to by an older one.

use crate::index::{Index, IndexError, SqlValue};

/// Why the records could not be prepared.
#[derive(Debug, thiserror::Error)]
pub enum RecordError {
    #[error(transparent)]
    Index(#[from] IndexError),
    #[error("{0} is unreadable")]
    Unreadable(String),
    #[error(
        "the {component} tables are at schema version {version}, newer than this program knows \
         ({known}): upgrade jitrec-player"
    )]
    Newer {
        component: String,
        version: i64,
        known: i64,
    },
}

fn text(s: &str) -> SqlValue {
    SqlValue::Text(s.to_owned())
}

/// Runs the steps of `migrations` that `component`'s recorded schema version has not seen,
/// recording each version as it is reached (a failed step is retried at the next start).
/// `first_table` is a table of the component's first version: if it exists but no version is
/// recorded, the tables predate versioning and are at version 1.
/// A database newer than this program is refused rather than written to.
pub fn migrate(
    index: &dyn Index,
    component: &str,
    first_table: &str,
    migrations: &[&[&str]],
) -> Result<(), RecordError> {
    index.exec(
        "CREATE TABLE IF NOT EXISTS record_schema (component TEXT PRIMARY KEY, \
         version BIGINT NOT NULL)",
        &[],
    )?;
    let rows = index.query(
        "SELECT version FROM record_schema WHERE component = $1",
        &[text(component)],
    )?;
    let mut version = match rows.first() {
        None => 0,
        Some(r) => r.first().and_then(SqlValue::int).ok_or_else(|| {
            RecordError::Unreadable(format!("the record_schema row of {component}"))
        })?,
    };
    // Tables made before versions were recorded already have v1's shape.
    if version == 0 && table_exists(index, first_table) {
        version = 1;
    }
    if version < 0 {
        return Err(RecordError::Unreadable(format!(
            "the record_schema row of {component} (version {version})"
        )));
    }
    let known = migrations.len() as i64;
    if version > known {
        return Err(RecordError::Newer {
            component: component.to_owned(),
            version,
            known,
        });
    }
    for (n, steps) in migrations.iter().enumerate().skip(version as usize) {
        for step in *steps {
            index.exec(step, &[])?;
        }
        index.exec(
            "INSERT INTO record_schema (component, version) VALUES ($1, $2) \
             ON CONFLICT (component) DO UPDATE SET version = excluded.version",
            &[text(component), SqlValue::Int(n as i64 + 1)],
        )?;
    }
    Ok(())
}

fn table_exists(index: &dyn Index, table: &str) -> bool {
    // Both backends answer a query on a missing table with an error, an existing one with rows
    // or none.
    index
        .query(&format!("SELECT 1 FROM {table} LIMIT 1"), &[])
        .is_ok()
}

/// The record tables, in the order a restore writes them. Sign-ins (`logins`) are left out on
/// purpose: a restored database starts with everyone signed out. The order is chosen for a
/// restore that fails half-way (it is not one transaction): legal holds, the deletion log and
/// the witness come before anything that could act on their absence, accounts before nothing
/// can sign in, and retention policies last, so a partial restore deletes nothing.
pub const TABLES: &[&str] = &[
    "record_schema",
    "legal_holds",
    "deletions",
    "retention_acks",
    "witness",
    "machine_keys",
    "session_keys",
    "session_locations",
    "player_keys",
    "audit",
    "reviews",
    "alert_state",
    "alert_sessions",
    "alert_flags",
    "alert_outbox",
    "users",
    "retention_policies",
];

/// Creates every record table (idempotent), as a running player would.
pub fn init_all(index: &dyn Index) -> Result<(), RecordError> {
    let other = |e: String| RecordError::Index(IndexError::Other(e));
    crate::auth::init(index).map_err(|e| other(e.to_string()))?;
    crate::retention::init(index).map_err(|e| other(e.to_string()))?;
    crate::witness::init(index).map_err(|e| other(e.to_string()))?;
    crate::enroll::init(index).map_err(|e| other(e.to_string()))?;
    crate::locate::init(index)?;
    crate::review::init(index).map_err(|e| other(e.to_string()))?;
    crate::alerts::store::init(index).map_err(|e| other(e.to_string()))?;
    index.exec(
        "CREATE TABLE IF NOT EXISTS player_keys (name TEXT PRIMARY KEY, seed TEXT NOT NULL, \
         created_at BIGINT NOT NULL)",
        &[],
    )?;
    Ok(())
}

/// The first line of a backup.
#[derive(Debug, serde::Serialize, serde::Deserialize)]
struct BackupHead {
    jitrec_record_backup: u32,
    created_at: chrono::DateTime<chrono::Utc>,
    backend: String,
    tables: Vec<String>,
}

/// One row of a backup: its table and values (null, integer or text).
#[derive(Debug, serde::Serialize, serde::Deserialize)]
struct BackupRow {
    t: String,
    v: Vec<serde_json::Value>,
}

fn to_json(v: &SqlValue) -> serde_json::Value {
    match v {
        SqlValue::Null => serde_json::Value::Null,
        SqlValue::Int(i) => (*i).into(),
        SqlValue::Text(s) => s.clone().into(),
    }
}

fn from_json(v: &serde_json::Value) -> Option<SqlValue> {
    match v {
        serde_json::Value::Null => Some(SqlValue::Null),
        serde_json::Value::Number(n) => n.as_i64().map(SqlValue::Int),
        serde_json::Value::String(s) => Some(SqlValue::Text(s.clone())),
        _ => None,
    }
}

fn json_line<T: serde::Serialize>(v: &T) -> Result<String, RecordError> {
    serde_json::to_string(v).map_err(|e| RecordError::Unreadable(format!("a backup line: {e}")))
}

/// What a backup or restore did.
#[derive(Debug, Default, Clone, serde::Serialize)]
pub struct Copied {
    pub tables: usize,
    pub rows: u64,
}

/// Writes every record table to `out` as JSON lines: a head, then one line per row. Portable
/// between the backends (a SQLite backup restores into PostgreSQL and back). It holds the
/// password hashes and the player's bundle signing key: keep it as secret as the database.
pub fn backup(index: &dyn Index, out: &mut dyn std::io::Write) -> Result<Copied, RecordError> {
    init_all(index)?;
    let head = BackupHead {
        jitrec_record_backup: 1,
        created_at: chrono::Utc::now(),
        backend: index.backend().to_owned(),
        tables: TABLES.iter().map(|t| (*t).to_owned()).collect(),
    };
    let io = |e: std::io::Error| RecordError::Unreadable(format!("writing the backup: {e}"));
    writeln!(out, "{}", json_line(&head)?).map_err(io)?;
    let mut copied = Copied::default();
    for table in TABLES {
        for row in index.query(&format!("SELECT * FROM {table}"), &[])? {
            let r = BackupRow {
                t: (*table).to_owned(),
                v: row.iter().map(to_json).collect(),
            };
            writeln!(out, "{}", json_line(&r)?).map_err(io)?;
            copied.rows += 1;
        }
        copied.tables += 1;
    }
    out.flush().map_err(io)?;
    Ok(copied)
}

/// Restores a backup into a database whose record tables are empty (a new database: a restore
/// never merges into or overwrites records). The record schema versions must be this
/// program's: restore with the version that made the backup, then upgrade.
pub fn restore(index: &dyn Index, input: impl std::io::BufRead) -> Result<Copied, RecordError> {
    init_all(index)?;
    let bad = |what: String| RecordError::Unreadable(format!("the backup: {what}"));
    for table in TABLES.iter().filter(|t| **t != "record_schema") {
        if !index
            .query(&format!("SELECT 1 FROM {table} LIMIT 1"), &[])?
            .is_empty()
        {
            return Err(bad(format!(
                "the database already holds records ({table} is not empty): restore into a new database"
            )));
        }
    }
    let mut lines = input.lines();
    let head: BackupHead = lines
        .next()
        .ok_or_else(|| bad("it is empty".into()))?
        .map_err(|e| bad(e.to_string()))
        .and_then(|l| serde_json::from_str(&l).map_err(|e| bad(format!("its first line: {e}"))))?;
    if head.jitrec_record_backup != 1 {
        return Err(bad(format!(
            "format {} is not one this program reads",
            head.jitrec_record_backup
        )));
    }
    let versions = |rows: &[Vec<SqlValue>]| {
        let mut v: Vec<(String, i64)> = rows
            .iter()
            .filter_map(|r| Some((r.first()?.text()?.to_owned(), r.get(1)?.int()?)))
            .collect();
        v.sort();
        v
    };
    let mine = versions(&index.query("SELECT component, version FROM record_schema", &[])?);
    // The backup's versions come first (record_schema is its first table): checked before a
    // row is written.
    let mut theirs = Vec::new();
    let mut checked = false;
    let check = |theirs: &[Vec<SqlValue>]| -> Result<(), RecordError> {
        if versions(theirs) != mine {
            return Err(bad(format!(
                "its record schema versions {:?} are not this program's {:?}: restore with the \
                 version that made it, then upgrade",
                versions(theirs),
                mine
            )));
        }
        Ok(())
    };
    let mut copied = Copied::default();
    for (n, l) in lines.enumerate() {
        let l = l.map_err(|e| bad(e.to_string()))?;
        let row: BackupRow =
            serde_json::from_str(&l).map_err(|e| bad(format!("line {}: {e}", n + 2)))?;
        if !TABLES.contains(&row.t.as_str()) {
            return Err(bad(format!(
                "line {}: {:?} is not a record table",
                n + 2,
                row.t
            )));
        }
        let values = row
            .v
            .iter()
            .map(from_json)
            .collect::<Option<Vec<_>>>()
            .ok_or_else(|| {
                bad(format!(
                    "line {}: a value is not null, an integer or text",
                    n + 2
                ))
            })?;
        if row.t == "record_schema" {
            if checked {
                return Err(bad(format!(
                    "line {}: record_schema after other tables",
                    n + 2
                )));
            }
            theirs.push(values);
            continue;
        }
        if !checked {
            check(&theirs)?;
            checked = true;
        }
        let marks: Vec<String> = (1..=values.len()).map(|i| format!("${i}")).collect();
        index.exec(
            &format!("INSERT INTO {} VALUES ({})", row.t, marks.join(", ")),
            &values,
        )?;
        copied.rows += 1;
    }
    if !checked {
        check(&theirs)?;
    }
    copied.tables = head.tables.len();
    Ok(copied)
}
