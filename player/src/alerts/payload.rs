//! The alert as sent: its fields, their bounds and its stable id (docs/alerts.md, "The
//! payload"). The webhook's body is its JSON; the syslog message is made from the same fields.

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use sha2::Digest;

/// The version of the payload's shape (`version` in every alert).
pub const PAYLOAD_VERSION: u32 = 1;

/// Bounds, in bytes, of the text fields of a payload (see [`bounded_bytes`]). With these a
/// whole syslog message stays under 8 KiB, the default message size of rsyslog and syslog-ng.
pub const FIELD_MAX: usize = 256;
/// The bound of a rule's sentence and of an alert's `message`.
pub const SENTENCE_MAX: usize = 512;
/// The bound of an event's text (a command line) in a rule match.
pub const TEXT_MAX: usize = 2048;

/// What happened.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Kind {
    SessionStart,
    SessionEnd,
    StatusChange,
    RuleMatch,
}

impl Kind {
    pub fn as_str(self) -> &'static str {
        match self {
            Kind::SessionStart => "session_start",
            Kind::SessionEnd => "session_end",
            Kind::StatusChange => "status_change",
            Kind::RuleMatch => "rule_match",
        }
    }
}

/// A rule's severity: the rules' own ([`crate::rules::Severity`], `rank` 0 to 4 in `flags`).
pub use crate::rules::Severity;

/// One alert, as sent: the webhook's JSON body, and the fields of the syslog message.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Alert {
    /// [`PAYLOAD_VERSION`].
    pub version: u32,
    /// Stable: the same for every target and every retry, and derived from what happened (a
    /// restart that derives the alert again gives it the same id). Receivers dedupe by it.
    pub id: String,
    #[serde(rename = "type")]
    pub kind: Kind,
    /// When the player derived it (the player's clock).
    pub at: DateTime<Utc>,
    /// A sentence saying what happened, for a human reader (the syslog MSG).
    pub message: String,
    pub session: SessionInfo,
    /// `status_change` only.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub status: Option<StatusChange>,
    /// `rule_match` only.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub flag: Option<FlagInfo>,
    /// The session's page in the report view, when `--public-url` is given.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub url: Option<String>,
}

/// The session an alert is about, as the index has it when the alert is derived.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SessionInfo {
    pub id: String,
    /// The elevated user (from the session header: written by the endpoint).
    pub user: String,
    pub machine: Machine,
    pub authorized_by: Option<String>,
    pub reason: Option<String>,
    /// Its status now (`recording`, `silent`, `complete`, `gap`, `interrupted`, `tampered`).
    pub status: String,
    /// From the header (the endpoint's clock).
    pub started_at: DateTime<Utc>,
    /// From the close record (the endpoint's clock); `None` while open.
    pub ended_at: Option<DateTime<Utc>>,
    /// The close record has been read.
    pub closed: bool,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Machine {
    pub hostname: String,
    pub id: String,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct StatusChange {
    pub from: String,
    pub to: String,
}

/// A rule's match on one event of the session.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct FlagInfo {
    pub rule: String,
    pub severity: Severity,
    pub sentence: String,
    /// The event: its chunk, its position in the chunk, its media time (seek the player there).
    pub seq: u64,
    pub idx: u64,
    pub media_us: u64,
    /// The event's time (the endpoint's clock).
    pub utc: Option<DateTime<Utc>>,
    /// The event's text (a command line, a window title), bounded.
    pub text: String,
}

/// The stable id of an alert: 32 hex digits of the SHA-256 of what it is about. `what`
/// distinguishes alerts of one kind on one session (a flag's key, a status change's ordinal).
pub fn alert_id(kind: Kind, session: &str, what: &str) -> String {
    let mut h = sha2::Sha256::new();
    h.update(b"jitrec-alert/1\n");
    h.update(kind.as_str().as_bytes());
    h.update(b"\n");
    h.update(session.as_bytes());
    h.update(b"\n");
    h.update(what.as_bytes());
    let mut id = hex::encode(h.finalize());
    id.truncate(32);
    id
}

/// `s` with control characters replaced by U+FFFD and cut to at most `max` bytes (on a
/// character boundary, ending in `…` when cut). The alert's fields come from the bucket,
/// written by the recorded admin: bounded, a payload cannot be made large, and without
/// control characters it cannot break a syslog line or a terminal.
pub fn bounded_bytes(s: &str, max: usize) -> String {
    const CUT: &str = "…";
    let clean: String = s
        .chars()
        .map(|c| {
            if c.is_control() || crate::auth::hides_text(c) {
                '\u{fffd}'
            } else {
                c
            }
        })
        .collect();
    if clean.len() <= max {
        return clean;
    }
    let mut end = max.saturating_sub(CUT.len());
    while !clean.is_char_boundary(end) {
        end -= 1;
    }
    format!("{}{CUT}", &clean[..end])
}

impl Alert {
    /// The JSON text sent (and stored in the outbox: the webhook signs these very bytes).
    pub fn to_json(&self) -> String {
        // Strings, numbers and enums only: serialisation cannot fail.
        serde_json::to_string(self).expect("an alert serialises to JSON")
    }
}

/// The RFC 5424 severity of an alert's syslog message: trouble (tampered, a gap, an
/// interruption, silence, a severe rule) ranks above the routine start and end, so a
/// receiver can filter on PRI alone (docs/alerts.md, "Syslog").
pub(crate) fn syslog_severity(a: &Alert) -> u8 {
    match a.kind {
        Kind::SessionStart | Kind::SessionEnd => match a.session.status.as_str() {
            "tampered" => 3,
            "gap" | "interrupted" | "silent" => 4,
            _ => 6,
        },
        Kind::StatusChange => match a.status.as_ref().map(|s| s.to.as_str()) {
            Some("tampered") => 3,
            Some("gap" | "interrupted" | "silent") => 4,
            _ => 5,
        },
        Kind::RuleMatch => match a.flag.as_ref().map(|f| f.severity) {
            Some(Severity::Critical) => 2,
            Some(Severity::High) => 3,
            Some(Severity::Medium) => 4,
            Some(Severity::Low) => 5,
            _ => 6,
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_are_stable_and_distinct() {
        let a = alert_id(Kind::SessionStart, "s1", "");
        assert_eq!(a, alert_id(Kind::SessionStart, "s1", ""));
        assert_eq!(a.len(), 32);
        assert_ne!(a, alert_id(Kind::SessionEnd, "s1", ""));
        assert_ne!(a, alert_id(Kind::SessionStart, "s2", ""));
        assert_ne!(
            alert_id(Kind::RuleMatch, "s1", "1/0/a"),
            alert_id(Kind::RuleMatch, "s1", "1/0/b")
        );
    }

    #[test]
    fn bounded_bytes_cuts_on_a_character_and_replaces_controls() {
        assert_eq!(bounded_bytes("abc", 10), "abc");
        assert_eq!(
            bounded_bytes("a\nb\u{1b}[31m", 64),
            "a\u{fffd}b\u{fffd}[31m"
        );
        assert_eq!(
            bounded_bytes("ok\u{2028}\u{202e}txt.exe", 64),
            "ok\u{fffd}\u{fffd}txt.exe",
            "separators and overrides cannot split or reorder a line"
        );
        let long = "é".repeat(100);
        let cut = bounded_bytes(&long, 51);
        assert!(cut.len() <= 51, "{}", cut.len());
        assert!(cut.ends_with('…'));
        assert!(cut.starts_with("éé"));
        assert_eq!(bounded_bytes(&"x".repeat(10), 10), "x".repeat(10));
    }

    #[test]
    fn severity_ranks_round_trip() {
        for s in [
            Severity::Info,
            Severity::Low,
            Severity::Medium,
            Severity::High,
            Severity::Critical,
        ] {
            assert_eq!(Severity::clamped(s.rank()), s);
            assert_eq!(Severity::parse(s.as_str()), Some(s));
        }
        assert_eq!(Severity::clamped(-3), Severity::Info);
        assert_eq!(Severity::clamped(99), Severity::Critical);
    }
}
