//! Enrolment: which public key is the key of which machine, decided by an administrator.
//!
//! A signature says a document was made with some key; only the player can say whether that is
//! the key of the machine the session claims. Every key the indexer meets in a session header is
//! put on record for its machine id as *pending*, with its fingerprint and the session that
//! announced it. An administrator approves it (CLI, API, report view), revokes it (compromised:
//! no session signed by it is shown as verified, before or after), or replaces a machine's key
//! with another (the old one is *retired*: sessions the player witnessed before the replacement
//! stay verified). Every decision is audited.
//!
//! The policy is the operator's choice (`--enrolment`): `approve` (the default) requires an
//! administrator before any session counts as verified; `tofu` trusts the first key seen for a
//! machine id and flags any other key for it as pending. A session is *verified* only when it is
//! signed, its chain is intact, and its key is the approved key of the machine it claims.

use chrono::{DateTime, Utc};
use jitrec_format::{EndpointKey, SessionId};
use serde::Serialize;

use crate::auth;
use crate::index::{Index, IndexError, SqlValue};

const SCHEMA: [&str; 2] = [
    "CREATE TABLE IF NOT EXISTS machine_keys (machine_id TEXT NOT NULL, \
     fingerprint TEXT NOT NULL, public_key TEXT NOT NULL, hostname TEXT NOT NULL, \
     state TEXT NOT NULL, first_seen BIGINT NOT NULL, first_session TEXT NOT NULL, \
     decided_by TEXT NOT NULL, decided_at BIGINT NOT NULL, reason TEXT NOT NULL, \
     PRIMARY KEY (machine_id, fingerprint))",
    // Per session: its format version, the key it is signed with, and who stopped it; from the
    // bucket (rebuilt by reindex), kept beside the index so a decision on a key applies to
    // every session at once, without rewriting session rows.
    "CREATE TABLE IF NOT EXISTS session_keys (session_id TEXT PRIMARY KEY, \
     format_version BIGINT NOT NULL, machine_id TEXT NOT NULL, hostname TEXT NOT NULL, \
     endpoint_key TEXT NOT NULL, stopped_by TEXT NOT NULL, encrypted BIGINT NOT NULL)",
];

/// Why an enrolment request failed.
#[derive(Debug, thiserror::Error)]
pub enum EnrolError {
    #[error(transparent)]
    Index(#[from] IndexError),
    #[error(transparent)]
    Audit(#[from] auth::AuthError),
    #[error("machine {machine} has no key with fingerprint {fingerprint} on record")]
    UnknownKey {
        machine: String,
        fingerprint: String,
    },
    #[error(
        "machine {machine} already has an approved key ({current}); use `replace` to change it"
    )]
    AlreadyEnrolled { machine: String, current: String },
    #[error("a reason is required")]
    NoReason,
    #[error("the key on record is revoked; a revoked key cannot be approved again")]
    Revoked,
    #[error(
        "machine {machine}, key {fingerprint}: refused (revoked, or another key of the machine was approved meanwhile); list the keys again"
    )]
    Raced {
        machine: String,
        fingerprint: String,
    },
}

/// The operator's choice of when a key counts.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, clap::ValueEnum, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Policy {
    /// An administrator approves every machine's key.
    #[default]
    Approve,
    /// The first key seen for a machine id is trusted; any other is pending.
    Tofu,
}

/// The state of one key.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum KeyState {
    Pending,
    Approved,
    /// Replaced by another key: sessions witnessed before `decided_at` stay verified.
    Retired,
    /// Compromised: nothing signed by it is verified.
    Revoked,
}

impl KeyState {
    fn as_str(self) -> &'static str {
        match self {
            KeyState::Pending => "pending",
            KeyState::Approved => "approved",
            KeyState::Retired => "retired",
            KeyState::Revoked => "revoked",
        }
    }

    fn parse(s: &str) -> Option<Self> {
        [
            KeyState::Pending,
            KeyState::Approved,
            KeyState::Retired,
            KeyState::Revoked,
        ]
        .into_iter()
        .find(|k| k.as_str() == s)
    }
}

/// One key on record for a machine.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct MachineKey {
    pub machine_id: String,
    pub hostname: String,
    pub fingerprint: String,
    pub public_key: String,
    pub state: KeyState,
    pub first_seen: DateTime<Utc>,
    pub first_session: String,
    pub decided_by: String,
    pub decided_at: Option<DateTime<Utc>>,
    pub reason: String,
}

/// How far a session's signature can be trusted.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case", tag = "state")]
pub enum Authenticity {
    /// Format v1: no signature. The chain shows consistency, not who wrote it.
    Unsigned,
    /// Signed by the machine's approved key (or by its retired key, before the replacement).
    Verified { fingerprint: String },
    /// Signed by a key nobody has approved for this machine yet.
    Pending { fingerprint: String },
    /// Signed by a key that is not (or no longer) the machine's: another machine's, a forger's,
    /// a revoked or retired one.
    NotEnrolled { fingerprint: String, why: String },
    /// Signed by the machine's key, but the session is broken (tampered, or chunks missing):
    /// a signature vouches for nothing once the chain does not hold.
    Broken { fingerprint: String },
    /// The header could not be read, so nothing is known.
    Unknown,
}

impl Authenticity {
    /// One word for lists and the command line.
    pub fn label(&self) -> &'static str {
        match self {
            Authenticity::Unsigned => "unsigned",
            Authenticity::Verified { .. } => "verified",
            Authenticity::Pending { .. } => "key pending approval",
            Authenticity::NotEnrolled { .. } => "not the machine's key",
            Authenticity::Broken { .. } => "signed, but broken",
            Authenticity::Unknown => "unknown",
        }
    }

    pub fn is_verified(&self) -> bool {
        matches!(self, Authenticity::Verified { .. })
    }

    /// What may be shown for a session of `status`: "verified" only while the chain holds.
    pub fn given(self, status: crate::scan::Status) -> Self {
        use crate::scan::Status;
        match self {
            Authenticity::Verified { fingerprint }
                if matches!(status, Status::Tampered | Status::Gap) =>
            {
                Authenticity::Broken { fingerprint }
            }
            other => other,
        }
    }
}

pub fn init(index: &dyn Index) -> Result<(), EnrolError> {
    for s in SCHEMA {
        index.exec(s, &[])?;
    }
    Ok(())
}

fn text(s: &str) -> SqlValue {
    SqlValue::Text(s.to_owned())
}

/// Notes what a session's header said (the indexer calls it for each header read), and puts a
/// key not seen before for its machine on record. Under `tofu`, the first key of a machine is
/// approved at once (audited as `trust on first use`).
pub fn seen_header(
    index: &dyn Index,
    session: SessionId,
    header: &jitrec_format::SessionHeader,
    policy: Policy,
    now: DateTime<Utc>,
) -> Result<(), EnrolError> {
    let (machine_id, hostname) = (header.machine.id.as_str(), header.machine.hostname.as_str());
    let (version, key) = (header.version, header.endpoint_key.as_ref());
    index.exec(
        "INSERT INTO session_keys (session_id, format_version, machine_id, hostname, \
         endpoint_key, stopped_by, encrypted) VALUES ($1, $2, $3, $4, $5, '', $6) \
         ON CONFLICT (session_id) DO UPDATE SET format_version = excluded.format_version, \
         machine_id = excluded.machine_id, hostname = excluded.hostname, \
         endpoint_key = excluded.endpoint_key, encrypted = excluded.encrypted",
        &[
            text(&session.to_string()),
            SqlValue::Int(i64::from(version)),
            text(machine_id),
            text(hostname),
            text(&key.map(|k| k.to_string()).unwrap_or_default()),
            SqlValue::Int(i64::from(header.encryption.is_some())),
        ],
    )?;
    let Some(key) = key else { return Ok(()) };
    let fingerprint = key.fingerprint().to_string();
    let known = keys_of(index, machine_id)?;
    if known.iter().any(|k| k.fingerprint == fingerprint) {
        return Ok(());
    }
    let first_key = known.is_empty();
    let (state, by, decided) = if policy == Policy::Tofu && first_key {
        (
            KeyState::Approved,
            "trust on first use",
            now.timestamp_micros(),
        )
    } else {
        (KeyState::Pending, "", -1)
    };
    let inserted = index.exec(
        "INSERT INTO machine_keys (machine_id, fingerprint, public_key, hostname, state, \
         first_seen, first_session, decided_by, decided_at, reason) VALUES ($1, $2, $3, $4, \
         $5, $6, $7, $8, $9, '') ON CONFLICT DO NOTHING",
        &[
            text(machine_id),
            text(&fingerprint),
            text(&key.to_string()),
            text(hostname),
            text(state.as_str()),
            SqlValue::Int(now.timestamp_micros()),
            text(&session.to_string()),
            text(by),
            SqlValue::Int(decided),
        ],
    )?;
    if inserted == 1 {
        if state == KeyState::Approved {
            auth::audit(
                index,
                "(indexer)",
                "machine_approve",
                machine_id,
                &format!("key {fingerprint} approved by trust on first use"),
            )?;
        } else if !first_key {
            tracing::warn!(machine = machine_id, %fingerprint, %session, "a session announces a key this machine has not had before; it is pending approval");
        } else {
            tracing::info!(machine = machine_id, %fingerprint, "a new machine's key is pending approval");
        }
    }
    Ok(())
}

/// Notes who or what stopped a session (from its close record).
pub fn seen_close(
    index: &dyn Index,
    session: SessionId,
    stopped_by: Option<&jitrec_format::StopCause>,
) -> Result<(), EnrolError> {
    let Some(c) = stopped_by else { return Ok(()) };
    let json = serde_json::to_string(c).unwrap_or_default();
    index.exec(
        "UPDATE session_keys SET stopped_by = $2 WHERE session_id = $1",
        &[text(&session.to_string()), text(&json)],
    )?;
    Ok(())
}

/// What the index noted about a session's signing.
#[derive(Debug, Clone)]
pub struct SessionSigning {
    pub version: u32,
    pub machine_id: String,
    pub hostname: String,
    /// The key's text form; empty for version 1.
    pub endpoint_key: String,
    pub stopped_by: Option<jitrec_format::StopCause>,
    /// The payloads are encrypted (the header names recipients).
    pub encrypted: bool,
}

/// What a session claims about its origin (its header), to judge against the enrolment record.
#[derive(Debug, Clone)]
pub struct Claim {
    pub version: u32,
    pub machine_id: String,
    pub hostname: String,
    pub key: Option<EndpointKey>,
}

impl Claim {
    pub fn of(h: &jitrec_format::SessionHeader) -> Self {
        Self {
            version: h.version,
            machine_id: h.machine.id.clone(),
            hostname: h.machine.hostname.clone(),
            key: h.endpoint_key,
        }
    }
}

/// When the player first saw a session's header and close record (its witness record).
#[derive(Debug, Clone, Copy, Default)]
pub struct Seen {
    pub header: Option<DateTime<Utc>>,
    pub close: Option<DateTime<Utc>>,
}

/// What the index noted about a session's signing, if its header was read.
pub fn session_key(
    index: &dyn Index,
    session: SessionId,
) -> Result<Option<SessionSigning>, EnrolError> {
    let rows = index.query(
        "SELECT format_version, machine_id, hostname, endpoint_key, stopped_by, encrypted \
         FROM session_keys WHERE session_id = $1",
        &[text(&session.to_string())],
    )?;
    Ok(rows.first().map(|r| {
        let t = |i: usize| {
            r.get(i)
                .and_then(SqlValue::text)
                .unwrap_or_default()
                .to_owned()
        };
        SessionSigning {
            version: r.first().and_then(SqlValue::int).unwrap_or(0) as u32,
            machine_id: t(1),
            hostname: t(2),
            endpoint_key: t(3),
            stopped_by: serde_json::from_str(&t(4)).ok(),
            encrypted: r.get(5).and_then(SqlValue::int).unwrap_or(0) != 0,
        }
    }))
}

/// How far `session` can be trusted, from what the indexer noted of its header.
pub fn authenticity(
    index: &dyn Index,
    session: SessionId,
    seen: Seen,
) -> Result<Authenticity, EnrolError> {
    let Some(s) = session_key(index, session)? else {
        return Ok(Authenticity::Unknown);
    };
    let key = if s.endpoint_key.is_empty() {
        None
    } else {
        match s.endpoint_key.parse::<EndpointKey>() {
            Ok(k) => Some(k),
            Err(_) => return Ok(Authenticity::Unknown),
        }
    };
    let claim = Claim {
        version: s.version,
        machine_id: s.machine_id,
        hostname: s.hostname,
        key,
    };
    judge(index, &claim, seen)
}

/// How far a session claiming `claim` can be trusted, given when the player saw it.
pub fn judge(index: &dyn Index, claim: &Claim, seen: Seen) -> Result<Authenticity, EnrolError> {
    let keys = keys_of(index, &claim.machine_id)?;
    let approved = keys.iter().find(|k| k.state == KeyState::Approved);
    let Some(key) = claim.key.filter(|_| claim.version >= 2) else {
        // Unsigned. From a machine that has a key, it is a downgrade, not an old recording.
        return Ok(match approved {
            Some(a) => Authenticity::NotEnrolled {
                fingerprint: String::new(),
                why: format!(
                    "the session is unsigned (format v1), but machine {} signs its sessions with key {}",
                    claim.machine_id, a.fingerprint
                ),
            },
            None => Authenticity::Unsigned,
        });
    };
    let fingerprint = key.fingerprint().to_string();
    let Some(k) = keys.iter().find(|k| k.fingerprint == fingerprint) else {
        return Ok(Authenticity::Pending { fingerprint });
    };
    // The key is the machine's, and so is the host it was approved for: an enrolled endpoint
    // cannot sign sessions in another host's name.
    let host_differs = |k: &MachineKey| {
        (k.hostname != claim.hostname).then(|| {
            format!(
                "the key was approved for host {:?}; this session names host {:?}",
                k.hostname, claim.hostname
            )
        })
    };
    Ok(match k.state {
        KeyState::Approved => match host_differs(k) {
            Some(why) => Authenticity::NotEnrolled { fingerprint, why },
            None => Authenticity::Verified { fingerprint },
        },
        KeyState::Pending => match approved {
            Some(o) => Authenticity::NotEnrolled {
                fingerprint,
                why: format!(
                    "machine {}'s approved key is {}",
                    claim.machine_id, o.fingerprint
                ),
            },
            None => Authenticity::Pending { fingerprint },
        },
        KeyState::Revoked => Authenticity::NotEnrolled {
            fingerprint,
            why: format!("the key was revoked: {}", k.reason),
        },
        // A retired key vouches only for what the player saw whole before the replacement: the
        // close record (every object of the session is seen before it) first seen before then.
        KeyState::Retired => match (seen.close, k.decided_at, host_differs(k)) {
            (Some(closed), Some(retired), None) if closed < retired => {
                Authenticity::Verified { fingerprint }
            }
            _ => Authenticity::NotEnrolled {
                fingerprint,
                why: format!(
                    "the key was replaced{}; this session was not seen closed before that",
                    k.decided_at.map(|t| format!(" at {t}")).unwrap_or_default()
                ),
            },
        },
    })
}

/// Every key on record, pending first, then by machine.
pub fn list(index: &dyn Index) -> Result<Vec<MachineKey>, EnrolError> {
    let mut all = read_keys(index, "", &[])?;
    all.sort_by_key(|k| {
        (
            k.state != KeyState::Pending,
            k.machine_id.clone(),
            k.first_seen,
        )
    });
    Ok(all)
}

fn keys_of(index: &dyn Index, machine: &str) -> Result<Vec<MachineKey>, EnrolError> {
    read_keys(index, "WHERE machine_id = $1", &[text(machine)])
}

fn read_keys(
    index: &dyn Index,
    filter: &str,
    params: &[SqlValue],
) -> Result<Vec<MachineKey>, EnrolError> {
    let rows = index.query(
        &format!(
            "SELECT machine_id, hostname, fingerprint, public_key, state, first_seen, \
             first_session, decided_by, decided_at, reason FROM machine_keys {filter} \
             ORDER BY first_seen"
        ),
        params,
    )?;
    Ok(rows
        .iter()
        .filter_map(|r| {
            let t = |i: usize| r.get(i).and_then(SqlValue::text).map(str::to_owned);
            let int = |i: usize| r.get(i).and_then(SqlValue::int);
            Some(MachineKey {
                machine_id: t(0)?,
                hostname: t(1)?,
                fingerprint: t(2)?,
                public_key: t(3)?,
                state: KeyState::parse(&t(4)?)?,
                first_seen: DateTime::from_timestamp_micros(int(5)?)?,
                first_session: t(6)?,
                decided_by: t(7)?,
                decided_at: int(8)
                    .filter(|&v| v >= 0)
                    .and_then(DateTime::from_timestamp_micros),
                reason: t(9)?,
            })
        })
        .collect())
}

fn set_state(
    index: &dyn Index,
    machine: &str,
    fingerprint: &str,
    state: KeyState,
    actor: &str,
    reason: &str,
) -> Result<(), EnrolError> {
    // One statement that re-checks what the caller checked: a revocation (or another
    // approval) landing between the caller's read and this write is not overwritten. Nothing
    // leaves `revoked`, and a key becomes approved only while no other key of the machine is.
    let changed = index.exec(
        "UPDATE machine_keys SET state = $3, decided_by = $4, decided_at = $5, reason = $6 \
         WHERE machine_id = $1 AND fingerprint = $2 AND state <> 'revoked' \
         AND ($3 <> 'approved' OR NOT EXISTS (SELECT 1 FROM machine_keys o \
         WHERE o.machine_id = $1 AND o.fingerprint <> $2 AND o.state = 'approved'))",
        &[
            text(machine),
            text(fingerprint),
            text(state.as_str()),
            text(actor),
            SqlValue::Int(Utc::now().timestamp_micros()),
            text(reason),
        ],
    )?;
    if changed == 0 {
        return Err(EnrolError::Raced {
            machine: machine.into(),
            fingerprint: fingerprint.into(),
        });
    }
    Ok(())
}

fn find(index: &dyn Index, machine: &str, fingerprint: &str) -> Result<MachineKey, EnrolError> {
    keys_of(index, machine)?
        .into_iter()
        .find(|k| k.fingerprint == fingerprint)
        .ok_or_else(|| EnrolError::UnknownKey {
            machine: machine.into(),
            fingerprint: fingerprint.into(),
        })
}

/// Approves a pending key as the machine's key (the machine must have no approved key).
pub fn approve(
    index: &dyn Index,
    machine: &str,
    fingerprint: &str,
    actor: &str,
    reason: &str,
) -> Result<(), EnrolError> {
    let k = find(index, machine, fingerprint)?;
    if k.state == KeyState::Revoked {
        return Err(EnrolError::Revoked);
    }
    if let Some(current) = keys_of(index, machine)?
        .into_iter()
        .find(|o| o.state == KeyState::Approved && o.fingerprint != fingerprint)
    {
        return Err(EnrolError::AlreadyEnrolled {
            machine: machine.into(),
            current: current.fingerprint,
        });
    }
    set_state(
        index,
        machine,
        fingerprint,
        KeyState::Approved,
        actor,
        reason,
    )?;
    auth::audit(
        index,
        actor,
        "machine_approve",
        machine,
        &format!("key {fingerprint} approved: {reason}"),
    )?;
    Ok(())
}

/// Revokes a key: nothing signed by it is verified any more.
pub fn revoke(
    index: &dyn Index,
    machine: &str,
    fingerprint: &str,
    actor: &str,
    reason: &str,
) -> Result<(), EnrolError> {
    if reason.trim().is_empty() {
        return Err(EnrolError::NoReason);
    }
    find(index, machine, fingerprint)?;
    set_state(
        index,
        machine,
        fingerprint,
        KeyState::Revoked,
        actor,
        reason,
    )?;
    auth::audit(
        index,
        actor,
        "machine_revoke",
        machine,
        &format!("key {fingerprint} revoked: {reason}"),
    )?;
    Ok(())
}

/// Makes `fingerprint` the machine's key, retiring the approved one (if any).
pub fn replace(
    index: &dyn Index,
    machine: &str,
    fingerprint: &str,
    actor: &str,
    reason: &str,
) -> Result<(), EnrolError> {
    if reason.trim().is_empty() {
        return Err(EnrolError::NoReason);
    }
    let k = find(index, machine, fingerprint)?;
    if k.state == KeyState::Revoked {
        return Err(EnrolError::Revoked);
    }
    let mut retired = Vec::new();
    for old in keys_of(index, machine)? {
        if old.state == KeyState::Approved && old.fingerprint != fingerprint {
            set_state(
                index,
                machine,
                &old.fingerprint,
                KeyState::Retired,
                actor,
                reason,
            )?;
            retired.push(old.fingerprint);
        }
    }
    set_state(
        index,
        machine,
        fingerprint,
        KeyState::Approved,
        actor,
        reason,
    )?;
    auth::audit(
        index,
        actor,
        "machine_replace",
        machine,
        &format!(
            "key {fingerprint} approved, replacing {}: {reason}",
            if retired.is_empty() {
                "no key".to_owned()
            } else {
                retired.join(", ")
            }
        ),
    )?;
    Ok(())
}
