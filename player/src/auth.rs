//! Sign-in, roles and the audit log of the report view.
//!
//! Local accounts with Argon2id password hashes (created with `jitrec-player user add`); a
//! sign-in makes a random 256-bit token, kept by the browser in an `HttpOnly`, `SameSite=Strict`
//! cookie and by the index only as its SHA-256 (a copy of the database does not let anyone sign
//! in). Every state-changing request must also carry the sign-in's CSRF token in
//! `X-CSRF-Token`. Two roles: **reviewer** (view, search, export) and **admin** (also users and
//! the audit log). Who viewed, searched or exported what is written to the audit log, in the
//! same database as the index but in tables `reindex` never clears.
//!
//! Room for OIDC later: a [`Login`] only says who and which role, not how they proved it.
//!
//! The tables use the index's portable SQL ([`Index::exec`]), so they live in SQLite or
//! PostgreSQL alike. They are records, not cache: their schema carries a version
//! (`record_schema`, see [`crate::record`]) and changes only by the forward migrations in
//! [`MIGRATIONS`].
//!
//! Everything a client sends is bounded before it costs anything: a user name is checked as
//! [`valid_user_name`] accepts it before a password is hashed or a line is audited, and every
//! audit field is cut to [`AUDIT_FIELD_MAX`] characters. Throttling of sign-in attempts lives
//! in [`crate::throttle`].

use std::time::Duration;

use argon2::Argon2;
use argon2::password_hash::{PasswordHash, PasswordHasher, PasswordVerifier, SaltString};
use chrono::{DateTime, Utc};
use serde::Serialize;
use sha2::{Digest, Sha256};

use crate::index::{Index, IndexError, SqlValue};

/// How long a sign-in lasts.
pub const LOGIN_TTL: Duration = Duration::from_secs(12 * 3600);

/// The cookie holding the sign-in token.
pub const COOKIE: &str = "jitrec_session";

/// The longest audit field kept; longer text is cut and says how long it was.
pub const AUDIT_FIELD_MAX: usize = 512;

/// The longest password considered (longer ones are refused before hashing).
pub const PASSWORD_MAX: usize = 1024;

/// The account tables' forward migrations, in order: version N is reached by running
/// `MIGRATIONS[N - 1]`. Never edit a released step; append one.
const MIGRATIONS: &[&[&str]] = &[
    &SCHEMA_V1,
    // v2: accounts can be disabled (sign-ins end, the account stays for the audit log).
    &["ALTER TABLE users ADD COLUMN disabled_at BIGINT"],
];

const SCHEMA_V1: [&str; 4] = [
    "CREATE TABLE IF NOT EXISTS users (name TEXT PRIMARY KEY, role TEXT NOT NULL, \
     password_hash TEXT NOT NULL, created_at BIGINT NOT NULL)",
    "CREATE TABLE IF NOT EXISTS logins (token_sha256 TEXT PRIMARY KEY, user_name TEXT NOT NULL, \
     role TEXT NOT NULL, csrf TEXT NOT NULL, expires_at BIGINT NOT NULL)",
    "CREATE TABLE IF NOT EXISTS audit (at BIGINT NOT NULL, user_name TEXT NOT NULL, \
     action TEXT NOT NULL, target TEXT NOT NULL, detail TEXT NOT NULL)",
    "CREATE INDEX IF NOT EXISTS audit_at ON audit (at)",
];

/// Why an account operation failed.
#[derive(Debug, thiserror::Error)]
pub enum AuthError {
    #[error(transparent)]
    Index(#[from] IndexError),
    #[error("password hashing: {0}")]
    Hash(String),
    #[error("{0}")]
    Invalid(String),
}

/// What an account may do.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Role {
    /// View, search and export recordings.
    Reviewer,
    /// Also manage users and read the audit log.
    Admin,
}

impl Role {
    pub fn as_str(self) -> &'static str {
        match self {
            Role::Reviewer => "reviewer",
            Role::Admin => "admin",
        }
    }

    pub fn parse(s: &str) -> Option<Role> {
        match s {
            "reviewer" => Some(Role::Reviewer),
            "admin" => Some(Role::Admin),
            _ => None,
        }
    }
}

/// A signed-in user, as handlers see it.
#[derive(Debug, Clone, Serialize)]
pub struct Login {
    pub user: String,
    pub role: Role,
    /// Must come back in `X-CSRF-Token` on every state-changing request.
    pub csrf: String,
    pub expires_at: DateTime<Utc>,
}

/// One audit record.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct AuditEntry {
    pub at: DateTime<Utc>,
    pub user: String,
    /// `sign_in`, `view`, `search`, `export`, `verify`, `user_add`, ...
    pub action: String,
    /// A session id, a search text, a user name.
    pub target: String,
    pub detail: String,
}

/// Creates the tables, or brings them to the current version (idempotent).
pub fn init(index: &dyn Index) -> Result<(), AuthError> {
    crate::record::migrate(index, "accounts", "users", MIGRATIONS).map_err(|e| match e {
        crate::record::RecordError::Index(e) => AuthError::Index(e),
        e => AuthError::Invalid(e.to_string()),
    })
}

/// Whether `name` is a user name `user add` accepts: 1-64 letters, digits, `.`, `_`, `-`, `@`.
pub fn valid_user_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 64
        && name
            .chars()
            .all(|c| c.is_alphanumeric() || matches!(c, '.' | '_' | '-' | '@'))
}

/// Whether `c` can hide or reorder the text around it when shown: line and paragraph
/// separators, bidirectional embeddings, overrides and isolates, zero-width characters and the
/// byte-order mark. Text from the endpoint shown to people (subtitles, alerts) replaces them.
pub fn hides_text(c: char) -> bool {
    matches!(
        c,
        '\u{200b}'..='\u{200f}'
            | '\u{2028}'..='\u{202e}'
            | '\u{2060}'..='\u{2069}'
            | '\u{feff}'
            | '\u{061c}'
    )
}

/// `s` cut to about `max` characters, keeping its start and its end (what an attacker would
/// hide behind padding is at one of them, where search still finds it), saying how long it was.
pub fn bounded_ends(s: &str, max: usize) -> String {
    let n = s.chars().count();
    if n <= max {
        return s.to_owned();
    }
    let half = max / 2;
    let head: String = s.chars().take(half).collect();
    let tail: String = s.chars().skip(n - half).collect();
    format!("{head} ... ({} bytes in all) ... {tail}", s.len())
}

/// `s` cut to `max` characters, saying how long it was when cut.
pub fn bounded(s: &str, max: usize) -> String {
    match s.char_indices().nth(max) {
        None => s.to_owned(),
        Some((at, _)) => format!("{}... ({} bytes in all)", &s[..at], s.len()),
    }
}

fn hash_password(password: &str) -> Result<String, AuthError> {
    let bytes: [u8; 16] = rand::random();
    let salt = SaltString::encode_b64(&bytes).map_err(|e| AuthError::Hash(e.to_string()))?;
    Argon2::default()
        .hash_password(password.as_bytes(), &salt)
        .map(|h| h.to_string())
        .map_err(|e| AuthError::Hash(e.to_string()))
}

fn password_matches(password: &str, stored: &str) -> bool {
    PasswordHash::new(stored)
        .map(|h| {
            Argon2::default()
                .verify_password(password.as_bytes(), &h)
                .is_ok()
        })
        .unwrap_or(false)
}

fn token_digest(token: &str) -> String {
    hex::encode(Sha256::digest(token.as_bytes()))
}

fn random_token() -> String {
    let bytes: [u8; 32] = rand::random();
    hex::encode(bytes)
}

fn text(s: &str) -> SqlValue {
    SqlValue::Text(s.to_owned())
}

/// Creates or replaces an account.
pub fn add_user(
    index: &dyn Index,
    name: &str,
    role: Role,
    password: &str,
) -> Result<(), AuthError> {
    if !valid_user_name(name) {
        return Err(AuthError::Invalid(format!(
            "user name {name:?}: use 1-64 letters, digits, '.', '_', '-' or '@'"
        )));
    }
    if password.chars().count() < 12 || password.len() > PASSWORD_MAX {
        return Err(AuthError::Invalid(format!(
            "the password must have at least 12 characters and at most {PASSWORD_MAX} bytes"
        )));
    }
    let hash = hash_password(password)?;
    // Saving an account also enables it again.
    index.exec(
        "INSERT INTO users (name, role, password_hash, created_at) VALUES ($1, $2, $3, $4) \
         ON CONFLICT (name) DO UPDATE SET role = excluded.role, \
         password_hash = excluded.password_hash, disabled_at = NULL",
        &[
            text(name),
            text(role.as_str()),
            SqlValue::Text(hash),
            SqlValue::Int(Utc::now().timestamp_micros()),
        ],
    )?;
    // A changed password or role ends the account's sign-ins.
    index.exec("DELETE FROM logins WHERE user_name = $1", &[text(name)])?;
    Ok(())
}

/// Accounts and their roles (disabled ones too: see [`accounts`]).
pub fn users(index: &dyn Index) -> Result<Vec<(String, Role)>, AuthError> {
    Ok(accounts(index)?
        .into_iter()
        .map(|a| (a.name, a.role))
        .collect())
}

/// One account as `user list` shows it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Account {
    pub name: String,
    pub role: Role,
    /// Since when sign-in is refused, if it is.
    pub disabled_at: Option<DateTime<Utc>>,
}

/// Every account. A row this program cannot read is an error, not left out: an account list
/// that hides an account would mislead the admin reading it.
pub fn accounts(index: &dyn Index) -> Result<Vec<Account>, AuthError> {
    index
        .query(
            "SELECT name, role, disabled_at FROM users ORDER BY name",
            &[],
        )?
        .into_iter()
        .map(|r| {
            let name = r.first().and_then(SqlValue::text);
            let role = r.get(1).and_then(SqlValue::text).and_then(Role::parse);
            let disabled_at = match r.get(2) {
                Some(SqlValue::Int(t)) => DateTime::from_timestamp_micros(*t).map(Some),
                Some(SqlValue::Null) | None => Some(None),
                _ => None,
            };
            match (name, role, disabled_at) {
                (Some(n), Some(role), Some(disabled_at)) => Ok(Account {
                    name: n.to_owned(),
                    role,
                    disabled_at,
                }),
                _ => Err(AuthError::Invalid(format!(
                    "an account row is unreadable: {r:?}"
                ))),
            }
        })
        .collect()
}

/// Refuses the account's sign-in from now on and ends its sign-ins at once; `false` if there is
/// no such account.
pub fn disable_user(index: &dyn Index, name: &str) -> Result<bool, AuthError> {
    let n = index.exec(
        "UPDATE users SET disabled_at = $2 WHERE name = $1",
        &[text(name), SqlValue::Int(Utc::now().timestamp_micros())],
    )?;
    index.exec("DELETE FROM logins WHERE user_name = $1", &[text(name)])?;
    Ok(n > 0)
}

/// Lets a disabled account sign in again; `false` if there is no such account.
pub fn enable_user(index: &dyn Index, name: &str) -> Result<bool, AuthError> {
    let n = index.exec(
        "UPDATE users SET disabled_at = NULL WHERE name = $1",
        &[text(name)],
    )?;
    Ok(n > 0)
}

/// Removes the account and ends its sign-ins (its audit records stay); `false` if there was
/// no such account.
pub fn remove_user(index: &dyn Index, name: &str) -> Result<bool, AuthError> {
    index.exec("DELETE FROM logins WHERE user_name = $1", &[text(name)])?;
    let n = index.exec("DELETE FROM users WHERE name = $1", &[text(name)])?;
    Ok(n > 0)
}

/// Checks a password; on success starts a sign-in and returns its token and [`Login`].
/// A wrong name and a wrong password take the same time and give the same answer.
pub fn sign_in(
    index: &dyn Index,
    name: &str,
    password: &str,
) -> Result<Option<(String, Login)>, AuthError> {
    if !valid_user_name(name) || password.len() > PASSWORD_MAX {
        // No account can have this name or password: nothing to hash.
        return Ok(None);
    }
    let row = index.query(
        "SELECT role, password_hash FROM users WHERE name = $1 AND disabled_at IS NULL",
        &[text(name)],
    )?;
    let stored = row.first().and_then(|r| {
        Some((
            Role::parse(r.first()?.text()?)?,
            r.get(1)?.text()?.to_owned(),
        ))
    });
    let Some((role, hash)) = stored else {
        // Spend the time a real check takes, so timing does not tell which names exist.
        let _ = password_matches(password, dummy_hash());
        return Ok(None);
    };
    if !password_matches(password, &hash) {
        return Ok(None);
    }
    start_login(index, name, role).map(Some)
}

/// The password hash of accounts that have none (signed in through an OpenID provider): not
/// a PHC string, so no password ever matches it.
const NO_PASSWORD: &str = "!external";

/// Starts a sign-in for `account` (`oidc:...`), vouched for by an OpenID provider with `role`:
/// the account is made or given that role (a disabled one stays disabled and is refused:
/// `None`). Its earlier sign-ins end when its role changes.
pub fn sign_in_external(
    index: &dyn Index,
    account: &str,
    role: Role,
) -> Result<Option<(String, Login)>, AuthError> {
    if !account.starts_with("oidc:") || account.len() > 69 {
        return Err(AuthError::Invalid(format!(
            "{account:?} is not an external account name"
        )));
    }
    let before = index.query(
        "SELECT role, disabled_at FROM users WHERE name = $1",
        &[text(account)],
    )?;
    if let Some(r) = before.first() {
        if !matches!(r.get(1), Some(SqlValue::Null) | None) {
            return Ok(None);
        }
        if r.first().and_then(SqlValue::text) != Some(role.as_str()) {
            index.exec(
                "UPDATE users SET role = $2 WHERE name = $1",
                &[text(account), text(role.as_str())],
            )?;
            index.exec("DELETE FROM logins WHERE user_name = $1", &[text(account)])?;
        }
    } else {
        index.exec(
            "INSERT INTO users (name, role, password_hash, created_at) VALUES ($1, $2, $3, $4) \
             ON CONFLICT (name) DO NOTHING",
            &[
                text(account),
                text(role.as_str()),
                text(NO_PASSWORD),
                SqlValue::Int(Utc::now().timestamp_micros()),
            ],
        )?;
    }
    start_login(index, account, role).map(Some)
}

/// Records a new sign-in of `name` with `role`: its token and [`Login`].
fn start_login(index: &dyn Index, name: &str, role: Role) -> Result<(String, Login), AuthError> {
    let token = random_token();
    let login = Login {
        user: name.to_owned(),
        role,
        csrf: random_token(),
        expires_at: Utc::now()
            + chrono::Duration::from_std(LOGIN_TTL).unwrap_or(chrono::Duration::hours(12)),
    };
    index.exec(
        "INSERT INTO logins (token_sha256, user_name, role, csrf, expires_at) \
         VALUES ($1, $2, $3, $4, $5)",
        &[
            SqlValue::Text(token_digest(&token)),
            text(name),
            text(role.as_str()),
            text(&login.csrf),
            SqlValue::Int(login.expires_at.timestamp_micros()),
        ],
    )?;
    index.exec(
        "DELETE FROM logins WHERE expires_at < $1",
        &[SqlValue::Int(Utc::now().timestamp_micros())],
    )?;
    Ok((token, login))
}

/// An Argon2id hash of a random password nobody knows, for [`sign_in`]'s constant-time path.
fn dummy_hash() -> &'static str {
    static HASH: std::sync::OnceLock<String> = std::sync::OnceLock::new();
    HASH.get_or_init(|| hash_password(&random_token()).unwrap_or_default())
}

/// The sign-in a token belongs to, if it exists and has not expired.
pub fn login(index: &dyn Index, token: &str) -> Result<Option<Login>, AuthError> {
    // Only while the account exists and is enabled: a sign-in that raced a `user disable` or
    // `user remove` (its insert landing after their delete) is not honoured either.
    let rows = index.query(
        "SELECT l.user_name, l.role, l.csrf, l.expires_at FROM logins l \
         JOIN users u ON u.name = l.user_name \
         WHERE l.token_sha256 = $1 AND u.disabled_at IS NULL",
        &[SqlValue::Text(token_digest(token))],
    )?;
    let Some(r) = rows.first() else {
        return Ok(None);
    };
    let parsed = (|| {
        Some(Login {
            user: r.first()?.text()?.to_owned(),
            role: Role::parse(r.get(1)?.text()?)?,
            csrf: r.get(2)?.text()?.to_owned(),
            expires_at: DateTime::from_timestamp_micros(r.get(3)?.int()?)?,
        })
    })();
    Ok(parsed.filter(|l| l.expires_at > Utc::now()))
}

/// Ends a sign-in.
pub fn sign_out(index: &dyn Index, token: &str) -> Result<(), AuthError> {
    index.exec(
        "DELETE FROM logins WHERE token_sha256 = $1",
        &[SqlValue::Text(token_digest(token))],
    )?;
    Ok(())
}

/// Appends to the audit log, each field cut to [`AUDIT_FIELD_MAX`] characters.
pub fn audit(
    index: &dyn Index,
    user: &str,
    action: &str,
    target: &str,
    detail: &str,
) -> Result<(), AuthError> {
    index.exec(
        "INSERT INTO audit (at, user_name, action, target, detail) VALUES ($1, $2, $3, $4, $5)",
        &[
            SqlValue::Int(Utc::now().timestamp_micros()),
            SqlValue::Text(bounded(user, AUDIT_FIELD_MAX)),
            SqlValue::Text(bounded(action, AUDIT_FIELD_MAX)),
            SqlValue::Text(bounded(target, AUDIT_FIELD_MAX)),
            SqlValue::Text(bounded(detail, AUDIT_FIELD_MAX)),
        ],
    )?;
    Ok(())
}

/// The largest page of the audit log.
pub const AUDIT_PAGE_MAX: u32 = 500;

/// Up to `limit` (at most [`AUDIT_PAGE_MAX`]) audit records, newest first, older than `before`
/// when given (the `at` of the last record of the previous page).
pub fn audit_log(
    index: &dyn Index,
    limit: u32,
    before: Option<DateTime<Utc>>,
) -> Result<Vec<AuditEntry>, AuthError> {
    let before = before.map_or(i64::MAX, |t| t.timestamp_micros());
    index
        .query(
            "SELECT at, user_name, action, target, detail FROM audit WHERE at < $1 \
             ORDER BY at DESC LIMIT $2",
            &[
                SqlValue::Int(before),
                SqlValue::Int(i64::from(limit.clamp(1, AUDIT_PAGE_MAX))),
            ],
        )?
        .into_iter()
        .map(|r| {
            (|| {
                Some(AuditEntry {
                    at: DateTime::from_timestamp_micros(r.first()?.int()?)?,
                    user: r.get(1)?.text()?.to_owned(),
                    action: r.get(2)?.text()?.to_owned(),
                    target: r.get(3)?.text()?.to_owned(),
                    detail: r.get(4)?.text()?.to_owned(),
                })
            })()
            .ok_or_else(|| AuthError::Invalid(format!("an audit row is unreadable: {r:?}")))
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::index::sqlite::SqliteIndex;

    #[test]
    fn accounts_sign_in_and_audit() {
        let tmp = tempfile::tempdir().unwrap();
        let idx = SqliteIndex::open(&tmp.path().join("i.sqlite3")).unwrap();
        init(&idx).unwrap();
        assert!(add_user(&idx, "eve", Role::Reviewer, "short").is_err());
        assert!(add_user(&idx, "bad name", Role::Reviewer, "long enough password").is_err());
        add_user(&idx, "eve", Role::Reviewer, "correct horse battery").unwrap();
        assert!(
            sign_in(&idx, "eve", "wrong horse battery")
                .unwrap()
                .is_none()
        );
        assert!(
            sign_in(&idx, "mallory", "correct horse battery")
                .unwrap()
                .is_none()
        );
        let (token, l) = sign_in(&idx, "eve", "correct horse battery")
            .unwrap()
            .unwrap();
        assert_eq!((l.user.as_str(), l.role), ("eve", Role::Reviewer));
        let again = login(&idx, &token).unwrap().unwrap();
        assert_eq!(again.csrf, l.csrf);
        assert!(login(&idx, "not-a-token").unwrap().is_none());
        // The database holds only the token's digest.
        let stored = idx.query("SELECT token_sha256 FROM logins", &[]).unwrap();
        assert_ne!(stored[0][0].text(), Some(token.as_str()));
        // A new password ends existing sign-ins.
        add_user(&idx, "eve", Role::Admin, "another long password").unwrap();
        assert!(login(&idx, &token).unwrap().is_none());
        let (token, l) = sign_in(&idx, "eve", "another long password")
            .unwrap()
            .unwrap();
        assert_eq!(l.role, Role::Admin);
        sign_out(&idx, &token).unwrap();
        assert!(login(&idx, &token).unwrap().is_none());
        audit(&idx, "eve", "view", "s1", "").unwrap();
        audit(&idx, "eve", "search", "useradd", "3 sessions").unwrap();
        let log = audit_log(&idx, 10, None).unwrap();
        assert_eq!(log.len(), 2);
        assert_eq!(users(&idx).unwrap(), [("eve".to_owned(), Role::Admin)]);
    }
}
