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
//! PostgreSQL alike.

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

const SCHEMA: [&str; 4] = [
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

/// Creates the tables (idempotent).
pub fn init(index: &dyn Index) -> Result<(), AuthError> {
    for s in SCHEMA {
        index.exec(s, &[])?;
    }
    Ok(())
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
    let valid = !name.is_empty()
        && name.len() <= 64
        && name
            .chars()
            .all(|c| c.is_alphanumeric() || matches!(c, '.' | '_' | '-' | '@'));
    if !valid {
        return Err(AuthError::Invalid(format!(
            "user name {name:?}: use 1-64 letters, digits, '.', '_', '-' or '@'"
        )));
    }
    if password.chars().count() < 12 {
        return Err(AuthError::Invalid(
            "the password must have at least 12 characters".into(),
        ));
    }
    let hash = hash_password(password)?;
    index.exec(
        "INSERT INTO users (name, role, password_hash, created_at) VALUES ($1, $2, $3, $4) \
         ON CONFLICT (name) DO UPDATE SET role = excluded.role, \
         password_hash = excluded.password_hash",
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

/// Accounts and their roles.
pub fn users(index: &dyn Index) -> Result<Vec<(String, Role)>, AuthError> {
    Ok(index
        .query("SELECT name, role FROM users ORDER BY name", &[])?
        .into_iter()
        .filter_map(|r| {
            Some((
                r.first()?.text()?.to_owned(),
                Role::parse(r.get(1)?.text()?)?,
            ))
        })
        .collect())
}

/// Checks a password; on success starts a sign-in and returns its token and [`Login`].
/// A wrong name and a wrong password take the same time and give the same answer.
pub fn sign_in(
    index: &dyn Index,
    name: &str,
    password: &str,
) -> Result<Option<(String, Login)>, AuthError> {
    let row = index.query(
        "SELECT role, password_hash FROM users WHERE name = $1",
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
    Ok(Some((token, login)))
}

/// An Argon2id hash of a random password nobody knows, for [`sign_in`]'s constant-time path.
fn dummy_hash() -> &'static str {
    static HASH: std::sync::OnceLock<String> = std::sync::OnceLock::new();
    HASH.get_or_init(|| hash_password(&random_token()).unwrap_or_default())
}

/// The sign-in a token belongs to, if it exists and has not expired.
pub fn login(index: &dyn Index, token: &str) -> Result<Option<Login>, AuthError> {
    let rows = index.query(
        "SELECT user_name, role, csrf, expires_at FROM logins WHERE token_sha256 = $1",
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

/// Appends to the audit log.
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
            text(user),
            text(action),
            text(target),
            text(detail),
        ],
    )?;
    Ok(())
}

/// The newest `limit` audit records, newest first.
pub fn audit_log(index: &dyn Index, limit: u32) -> Result<Vec<AuditEntry>, AuthError> {
    Ok(index
        .query(
            "SELECT at, user_name, action, target, detail FROM audit ORDER BY at DESC LIMIT $1",
            &[SqlValue::Int(i64::from(limit))],
        )?
        .into_iter()
        .filter_map(|r| {
            Some(AuditEntry {
                at: DateTime::from_timestamp_micros(r.first()?.int()?)?,
                user: r.get(1)?.text()?.to_owned(),
                action: r.get(2)?.text()?.to_owned(),
                target: r.get(3)?.text()?.to_owned(),
                detail: r.get(4)?.text()?.to_owned(),
            })
        })
        .collect())
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
        let log = audit_log(&idx, 10).unwrap();
        assert_eq!(log.len(), 2);
        assert_eq!(users(&idx).unwrap(), [("eve".to_owned(), Role::Admin)]);
    }
}
