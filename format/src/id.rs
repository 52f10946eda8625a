//! Session identifiers: UUID version 7, written in canonical lowercase hyphenated form.
//!
//! UUIDv7 starts with a 48-bit Unix millisecond timestamp, so ids sort by session start both as
//! bytes and as strings. That makes bucket keys (`v1/sessions/<id>/...`) list in start order, which
//! the player's incremental indexer relies on, and it needs no coordination between endpoints.
//! Parsing accepts only the canonical text form: an id appears inside object keys, and one session
//! must never have two spellings (and therefore two key prefixes).

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Deserializer, Serialize, Serializer};
use uuid::Uuid;

/// The unique, time-sortable id of one recorded JIT session.
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct SessionId(Uuid);

/// Why a string is not a session id.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum IdError {
    /// Not a UUID at all.
    #[error("session id {0:?} is not a UUID")]
    Syntax(String),
    /// A UUID, but not version 7.
    #[error("session id {0:?} is not a version-7 UUID")]
    NotV7(String),
    /// A v7 UUID in a non-canonical spelling (upper case, braces, no hyphens, URN).
    #[error("session id {0:?} is not in canonical lowercase hyphenated form")]
    NotCanonical(String),
}

impl SessionId {
    /// A fresh id for a session starting now.
    pub fn new() -> Self {
        Self(Uuid::now_v7())
    }

    /// A deterministic id from a Unix time in milliseconds and 10 random bytes (tests, fixtures).
    pub fn from_parts(unix_ms: u64, random: [u8; 10]) -> Self {
        Self(uuid::Builder::from_unix_timestamp_millis(unix_ms, &random).into_uuid())
    }

    /// The Unix time in milliseconds embedded in the id (when the session started).
    pub fn unix_ms(&self) -> u64 {
        // Every SessionId is a v7 UUID (enforced by construction and parsing), and v7 UUIDs
        // always carry a timestamp; the fallback is unreachable but keeps this total.
        self.0
            .get_timestamp()
            .map(|t| {
                let (secs, nanos) = t.to_unix();
                secs * 1000 + u64::from(nanos) / 1_000_000
            })
            .unwrap_or(0)
    }

    /// The underlying UUID.
    pub fn as_uuid(&self) -> &Uuid {
        &self.0
    }
}

impl Default for SessionId {
    fn default() -> Self {
        Self::new()
    }
}

impl FromStr for SessionId {
    type Err = IdError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let short = || s.chars().take(80).collect::<String>();
        let u = Uuid::parse_str(s).map_err(|_| IdError::Syntax(short()))?;
        if u.get_version_num() != 7 {
            return Err(IdError::NotV7(short()));
        }
        if u.hyphenated().to_string() != s {
            return Err(IdError::NotCanonical(short()));
        }
        Ok(Self(u))
    }
}

impl fmt::Display for SessionId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(&self.0.hyphenated(), f)
    }
}

impl fmt::Debug for SessionId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "SessionId({})", self.0.hyphenated())
    }
}

impl Serialize for SessionId {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

impl<'de> Deserialize<'de> for SessionId {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = <std::borrow::Cow<'de, str>>::deserialize(d)?;
        s.parse().map_err(serde::de::Error::custom)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trips_and_sorts_by_time() {
        let a = SessionId::from_parts(1_700_000_000_000, [9; 10]);
        let b = SessionId::from_parts(1_700_000_000_001, [0; 10]);
        assert!(a < b);
        assert!(a.to_string() < b.to_string());
        assert_eq!(a.unix_ms(), 1_700_000_000_000);
        assert_eq!(a.to_string().parse::<SessionId>().unwrap(), a);
        let json = serde_json::to_string(&a).unwrap();
        assert_eq!(serde_json::from_str::<SessionId>(&json).unwrap(), a);
        let now = SessionId::new();
        assert_eq!(now.to_string().parse::<SessionId>().unwrap(), now);
    }

    #[test]
    fn rejects_other_spellings_and_versions() {
        let a = SessionId::from_parts(1_700_000_000_000, [7; 10]).to_string();
        assert!(matches!(
            a.to_uppercase().parse::<SessionId>(),
            Err(IdError::NotCanonical(_))
        ));
        assert!(matches!(
            a.replace('-', "").parse::<SessionId>(),
            Err(IdError::NotCanonical(_))
        ));
        assert!(matches!(
            format!("{{{a}}}").parse::<SessionId>(),
            Err(IdError::NotCanonical(_))
        ));
        // A valid v4 UUID.
        assert!(matches!(
            "67e55044-10b1-426f-9247-bb680e5fe0c8".parse::<SessionId>(),
            Err(IdError::NotV7(_))
        ));
        assert!(matches!(
            "../../etc/passwd".parse::<SessionId>(),
            Err(IdError::Syntax(_))
        ));
    }
}
