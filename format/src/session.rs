//! The session's two bookend documents: the header (written when JIT starts) and the close
//! record (written last, when it ends or when a restarted recorder finds it interrupted).
//!
//! The header says who was elevated, on which machine, authorised by whom, under which labels
//! (the levels retention policies are set at) and with which encoder settings. Its SHA-256 is the
//! first link of the session's hash chain. The close record states how the session ended, how
//! many chunks it has, and links to the last one, so truncating a session is as visible as
//! altering it.

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

use crate::parse::{self, Document, check, check_optional_text, check_text, check_v2_field};
use crate::{EndpointSigner, FormatError, MediaTime, SessionId, Sha256Digest};

/// The first document of a session (`session.json`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SessionHeader {
    /// 1 or 2 ([`crate::FORMAT_VERSION`] is what this crate writes).
    pub version: u32,
    pub session_id: SessionId,
    pub machine: Machine,
    /// The account that was elevated.
    pub user: crate::UserRef,
    pub authorization: Authorization,
    pub labels: Labels,
    /// When JIT began (UTC). Media time 0 of the session.
    pub started_at: DateTime<Utc>,
    pub agent: Agent,
    pub codec: CodecParams,
    /// Version 2: the endpoint's public key, which signs every document of the session. Whether
    /// it is the enrolled key of `machine` is for the player to say.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub endpoint_key: Option<crate::EndpointKey>,
    /// Version 2, optional: the payloads (init segments, video segments, events) are encrypted
    /// to these recipients, and the manifests' sizes and digests are of the ciphertext.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub encryption: Option<Encryption>,
    /// Version 2, optional: the session that recorded the same elevation before the recorder
    /// died and was restarted (it ended `interrupted`). The two are one elevation with a hole,
    /// which the player shows as such.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub continues: Option<SessionId>,
}

/// How a session's payloads are encrypted.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Encryption {
    pub scheme: EncryptionScheme,
    /// The recipients' public keys (`age1...`), each able to decrypt every payload.
    pub recipients: Vec<String>,
}

/// Encryption schemes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum EncryptionScheme {
    /// One age file (age-encryption.org/v1, X25519 recipients) per payload.
    Age,
}

/// The most recipients a session may name.
pub const MAX_RECIPIENTS: usize = 16;

/// The endpoint a session was recorded on.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Machine {
    /// A stable machine identity (`/etc/machine-id` on Linux, the MachineGuid on Windows).
    pub id: String,
    pub hostname: String,
}

/// Who authorised the elevation and how the recorder learned of it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Authorization {
    pub trigger: Trigger,
    /// Who approved the elevation, when a JIT controller said so; `None` means unknown.
    #[serde(default)]
    pub authorized_by: Option<String>,
    /// The stated reason, when known.
    #[serde(default)]
    pub reason: Option<String>,
}

/// How JIT start was detected.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Trigger {
    /// The user entered the admin group (observed by the recorder).
    GroupMembership,
    /// A JIT controller called the recorder's control command.
    ControlCommand,
}

/// The labels retention policies are set at (most specific wins: computer, location, company).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Labels {
    #[serde(default)]
    pub company: Option<String>,
    #[serde(default)]
    pub location: Option<String>,
    #[serde(default)]
    pub computer: Option<String>,
}

/// The software that wrote the recording.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Agent {
    pub name: String,
    pub version: String,
}

/// Encoder settings for the whole session. Frame size is per init segment (see
/// [`crate::InitRef`]) because it may change mid-session.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CodecParams {
    pub codec: Codec,
    /// Constant rate factor the encoder was given (lower is better quality).
    pub crf: u8,
    /// Maximum distance between keyframes.
    pub keyframe_interval_ms: u32,
    /// Target chunk length: the most a crash can lose.
    pub chunk_target_ms: u32,
    /// Units per second of the video track's timestamps.
    pub timescale: u32,
    /// Number of B-frames. Format v1 requires 0: Chromium's MSE ignores the edit list, so B-frame
    /// streams play offset from their events.
    pub b_frames: u8,
}

/// Video codecs of format v1.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Codec {
    /// H.264 / AVC in fragmented MP4: plays in every browser.
    H264,
}

/// The last document of a session (`closed.json`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SessionClose {
    /// 1 or 2 ([`crate::FORMAT_VERSION`] is what this crate writes).
    pub version: u32,
    pub session_id: SessionId,
    pub end_reason: EndReason,
    /// The end of the recorded material (UTC): JIT end for a normal close, the end of the last
    /// committed chunk for an interrupted one.
    pub ended_at: DateTime<Utc>,
    /// When this record was written. For an interrupted session, `ended_at..closed_at` is the
    /// stretch nobody recorded.
    pub closed_at: DateTime<Utc>,
    /// How many chunks the session has (they are numbered `0..chunk_count`).
    pub chunk_count: u64,
    /// Media time of the end of the last chunk (zero when there are none).
    pub media_end_us: MediaTime,
    /// SHA-256 of the last chunk manifest's bytes, or of the header's when there are no chunks.
    pub prev: Sha256Digest,
    /// Free text for a reviewer, e.g. why a session was interrupted.
    #[serde(default)]
    pub note: Option<String>,
    /// Version 2: who or what ended the recording.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub stopped_by: Option<StopCause>,
}

/// Who or what ended a recording (format v2): evidence in its own right, since the person
/// recorded may be the one who stopped it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct StopCause {
    pub by: StopBy,
    /// The process that asked, for a control command (from the socket's peer credentials).
    #[serde(default)]
    pub peer: Option<StopPeer>,
    /// Whether the recorded user themselves caused it (their account, or their login session
    /// behind `sudo`); `None` when the recorder cannot tell.
    #[serde(default)]
    pub recorded_user: Option<bool>,
    /// In words, for a reviewer.
    pub detail: String,
}

/// What ended a recording.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum StopBy {
    /// The recorder saw the account leave the administrators group.
    GroupChange,
    /// `jit stop` on the recorder's control socket.
    ControlCommand,
    /// The recorder service was stopped (service stop, shutdown) during JIT.
    ServiceStop,
    /// The recorder died; a later run found the session open and closed it.
    RecorderCrash,
}

impl StopBy {
    /// The end reason this cause goes with.
    pub fn end_reason(self) -> EndReason {
        match self {
            StopBy::GroupChange => EndReason::JitEnded,
            StopBy::ControlCommand => EndReason::ControlStop,
            StopBy::ServiceStop => EndReason::RecorderShutdown,
            StopBy::RecorderCrash => EndReason::Interrupted,
        }
    }
}

/// The local process behind a control command.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct StopPeer {
    /// The account the process ran as.
    pub user: crate::UserRef,
    #[serde(default)]
    pub pid: Option<u32>,
    /// Its executable, when it could be read.
    #[serde(default)]
    pub exe: Option<String>,
    /// The account that logged in to start the process's session (Linux: the audit login uid,
    /// which `sudo` and `su` do not change), when known.
    #[serde(default)]
    pub login_user: Option<crate::UserRef>,
}

impl StopCause {
    pub(crate) fn validate(&self, field: &str) -> Result<(), String> {
        check_text(&format!("{field}.detail"), &self.detail)?;
        if let Some(p) = &self.peer {
            p.user.validate(&format!("{field}.peer.user"))?;
            check_optional_text(&format!("{field}.peer.exe"), p.exe.as_deref())?;
            if let Some(u) = &p.login_user {
                u.validate(&format!("{field}.peer.login_user"))?;
            }
        }
        Ok(())
    }
}

/// Why a session ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum EndReason {
    /// The user left the admin group.
    JitEnded,
    /// A JIT controller called `jit stop`.
    ControlStop,
    /// The recorder was stopped (service stop, shutdown) while JIT was active.
    RecorderShutdown,
    /// The recorder died; a later run closed the session from what the spool held.
    Interrupted,
}

impl SessionHeader {
    /// Where the session lives in the bucket: layout v1 for a version 1 header, its machine's
    /// prefix (layout v2) for a version 2 one.
    pub fn session_key(&self) -> crate::SessionKey {
        match (self.version, self.machine.id.parse::<crate::MachineId>()) {
            (2, Ok(m)) => crate::SessionKey::v2(m, self.session_id),
            _ => self.session_id.into(),
        }
    }

    /// Parses and validates a stored header.
    pub fn from_bytes(bytes: &[u8]) -> Result<Self, FormatError> {
        parse::parse(bytes)
    }

    /// The exact bytes to store (version 1); the chain's first link is their SHA-256.
    pub fn to_bytes(&self) -> Result<Vec<u8>, FormatError> {
        parse::encode(self)
    }

    /// The exact bytes to store (version 2): the header in an envelope signed by `signer`.
    pub fn to_signed_bytes(&self, signer: &EndpointSigner) -> Result<Vec<u8>, FormatError> {
        parse::encode_signed(self, signer)
    }

    /// The stored bytes of this header's version: signed by `signer` for version 2.
    pub fn to_stored_bytes(&self, signer: Option<&EndpointSigner>) -> Result<Vec<u8>, FormatError> {
        parse::encode_stored(self, signer)
    }
}

impl Document for SessionHeader {
    const WHAT: &'static str = "session header";
    const KIND: &'static str = "session_header";

    fn version(&self) -> u32 {
        self.version
    }

    fn validate(&self) -> Result<(), String> {
        check_v2_field(self.version, "endpoint_key", self.endpoint_key.as_ref())?;
        check(self.version >= 2 || self.continues.is_none(), || {
            "`continues` is a version 2 field, in a version 1 document".into()
        })?;
        check(self.continues != Some(self.session_id), || {
            "`continues` names the session itself".into()
        })?;
        if let Some(e) = &self.encryption {
            check(self.version >= 2, || {
                "`encryption` is a version 2 field, in a version 1 document".into()
            })?;
            check(
                !e.recipients.is_empty() && e.recipients.len() <= MAX_RECIPIENTS,
                || format!("`encryption.recipients` must name 1 to {MAX_RECIPIENTS} recipients"),
            )?;
            for r in &e.recipients {
                check(
                    r.starts_with("age1")
                        && r.len() <= 128
                        && r.bytes()
                            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit()),
                    || format!("`encryption.recipients`: {r:?} is not an age recipient"),
                )?;
            }
        }
        if self.version == 2 {
            // Version 2 sessions live under their machine's prefix: the id must be one.
            self.machine
                .id
                .parse::<crate::MachineId>()
                .map_err(|e| format!("`machine.id`: {e}"))?;
        }
        check_text("machine.id", &self.machine.id)?;
        check_text("machine.hostname", &self.machine.hostname)?;
        self.user.validate("user")?;
        check_optional_text(
            "authorization.authorized_by",
            self.authorization.authorized_by.as_deref(),
        )?;
        check_optional_text("authorization.reason", self.authorization.reason.as_deref())?;
        for (field, v) in [
            ("labels.company", &self.labels.company),
            ("labels.location", &self.labels.location),
            ("labels.computer", &self.labels.computer),
        ] {
            if let Some(v) = v {
                check_text(field, v)?;
            }
        }
        check_text("agent.name", &self.agent.name)?;
        check_text("agent.version", &self.agent.version)?;
        let c = &self.codec;
        check(c.keyframe_interval_ms > 0, || {
            "`codec.keyframe_interval_ms` is 0".into()
        })?;
        check(c.chunk_target_ms > 0, || {
            "`codec.chunk_target_ms` is 0".into()
        })?;
        check(c.timescale > 0, || "`codec.timescale` is 0".into())?;
        check(c.crf <= 51, || format!("`codec.crf` {} is above 51", c.crf))?;
        check(c.b_frames == 0, || {
            format!("`codec.b_frames` is {}; the format requires 0", c.b_frames)
        })
    }
}

impl SessionClose {
    /// Parses and validates a stored close record.
    pub fn from_bytes(bytes: &[u8]) -> Result<Self, FormatError> {
        parse::parse(bytes)
    }

    /// The exact bytes to store (version 1).
    pub fn to_bytes(&self) -> Result<Vec<u8>, FormatError> {
        parse::encode(self)
    }

    /// The exact bytes to store (version 2), signed by `signer`.
    pub fn to_signed_bytes(&self, signer: &EndpointSigner) -> Result<Vec<u8>, FormatError> {
        parse::encode_signed(self, signer)
    }

    /// The stored bytes of this record's version: signed by `signer` for version 2.
    pub fn to_stored_bytes(&self, signer: Option<&EndpointSigner>) -> Result<Vec<u8>, FormatError> {
        parse::encode_stored(self, signer)
    }
}

impl Document for SessionClose {
    const WHAT: &'static str = "close record";
    const KIND: &'static str = "close_record";

    fn version(&self) -> u32 {
        self.version
    }

    fn validate(&self) -> Result<(), String> {
        check_v2_field(self.version, "stopped_by", self.stopped_by.as_ref())?;
        if let Some(c) = &self.stopped_by {
            c.validate("stopped_by")?;
            check(c.by.end_reason() == self.end_reason, || {
                format!(
                    "`stopped_by.by` {:?} does not go with `end_reason` {:?}",
                    c.by, self.end_reason
                )
            })?;
        }
        check(self.closed_at >= self.ended_at, || {
            format!(
                "`closed_at` {} is before `ended_at` {}",
                self.closed_at, self.ended_at
            )
        })?;
        check(self.chunk_count <= crate::MAX_SEQ + 1, || {
            format!("`chunk_count` {} is out of range", self.chunk_count)
        })?;
        check_optional_text("note", self.note.as_deref())
    }
}
