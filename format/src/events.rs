//! The event schema and the per-chunk events payload (JSON lines, zstd-compressed).
//!
//! Events say what the video cannot: which processes ran with which command line, which window
//! had focus, when JIT began and ended and who authorised it, and what happened to the recorder
//! itself (frames dropped, capture errors, gaps). Each carries the media time it happened at (the
//! video's clock) and UTC. A chunk's events all fall inside its interval and are sorted, so a
//! chunk is self-contained and a player can merge chunks by concatenation.
//!
//! Decoding untrusted payloads is bounded ([`MAX_DECODED_EVENTS_BYTES`]) so a zstd bomb in the
//! bucket cannot exhaust the player's memory.

use std::io::{BufRead, BufReader, Read};

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

use crate::parse::{check, check_optional_text, check_text};
use crate::{ChunkManifest, MediaTime};

/// Largest decompressed events payload a reader accepts.
///
/// A 2 s chunk of a busy build produces well under 1 MiB of JSON; 64 MiB leaves room for a
/// recorder configured with long chunks while still bounding memory.
pub const MAX_DECODED_EVENTS_BYTES: u64 = 64 * 1024 * 1024;

/// The most events a chunk may hold, whatever its length: a sound recorder at its default
/// limits writes at most about 2 x (20,000 + 2,000 per second) in a chunk (two sources, each a
/// burst and a sustained rate), 48,000 in a 2 s chunk. A reader refuses more before decoding.
pub const MAX_EVENTS_PER_CHUNK: u32 = 100_000;

/// The most events a chunk of `duration_us` may hold: each of the recorder's two event sources
/// writes a burst of at most 20,000 and then at most 2,000 per second; twice that, plus a few
/// dozen of the recorder's own (JIT start and stop, gaps, source states), and never more than
/// [`MAX_EVENTS_PER_CHUNK`]. More is not a recording a sound recorder makes.
pub fn max_events(duration_us: u64) -> u32 {
    let secs = duration_us.div_ceil(1_000_000);
    let bound = 2 * 2 * (20_000 + 2_000u64.saturating_mul(secs)) + 64;
    u32::try_from(bound.min(u64::from(MAX_EVENTS_PER_CHUNK))).unwrap_or(MAX_EVENTS_PER_CHUNK)
}

/// zstd level for events: level 3 is zstd's default and compresses JSON lines ~8-10x at a cost
/// that is negligible next to video encoding.
const ZSTD_LEVEL: i32 = 3;

/// One event, as one line of the events payload.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Event {
    /// When it happened, on the video's clock.
    pub media_us: MediaTime,
    /// When it happened, wall clock.
    pub utc: DateTime<Utc>,
    pub event: EventKind,
}

/// What happened.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case", deny_unknown_fields)]
pub enum EventKind {
    /// A process started.
    ProcessStart(ProcessStart),
    /// A process exited.
    ProcessExit(ProcessExit),
    /// Another window became the active one.
    WindowFocus(WindowInfo),
    /// The active window's title changed.
    WindowTitle(WindowInfo),
    /// JIT elevation began (the first event of a session).
    JitStart {
        user: String,
        machine: String,
        #[serde(default)]
        authorized_by: Option<String>,
        #[serde(default)]
        reason: Option<String>,
    },
    /// JIT elevation ended.
    JitStop {
        user: String,
        machine: String,
        #[serde(default)]
        reason: Option<String>,
        /// Version 2: who or what ended it (boxed: rare, and larger than every other event).
        #[serde(default, skip_serializing_if = "Option::is_none")]
        stopped_by: Option<Box<crate::StopCause>>,
    },
    /// The recorder started capturing.
    RecorderStarted,
    /// The recorder stopped capturing.
    RecorderStopped,
    /// Frames captured but not encoded because the encoder fell behind.
    FramesDropped { count: u64 },
    /// Events not written one by one because a bound was hit (e.g. a fork bomb); `count` of them
    /// were summarised into this record.
    EventsSummarised { count: u64, what: String },
    /// Capture failed; `message` says why.
    CaptureError { message: String },
    /// How completely an event source covers the session (stated when the source starts and
    /// whenever that changes), so a reviewer knows what the absence of an event means.
    EventSource {
        /// `processes` or `windows`.
        source: String,
        state: SourceState,
        /// The mechanism in use and what it can miss, or why the source is unavailable.
        detail: String,
    },
    /// The screen was not recorded between `from_us` and `to_us`, for `reason` (other events
    /// were, unless `reason` says otherwise). Stamped at `to_us`.
    Gap {
        from_us: MediaTime,
        to_us: MediaTime,
        reason: String,
    },
    /// The recording notice is on the screen being recorded (stamped once the screen holds it,
    /// so the picture from this time on shows it).
    NoticeShown {
        /// The notice as configured, with the session's user and authoriser filled in.
        text: String,
        /// Where it is shown: the X display (`:0`), or `console` on Windows.
        display: String,
        /// Whether it stays until the user acknowledges it.
        require_ack: bool,
        /// Without `require_ack`: how long it stays unless clicked away earlier.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        display_seconds: Option<u32>,
    },
    /// The user clicked the recording notice (it is gone from the screen from here on).
    NoticeAcknowledged,
    /// The recording notice could not be shown; `message` says why. The session is recorded
    /// regardless.
    NoticeFailed { message: String },
    /// Recording could not run (`reason`), and the endpoint is configured to fail closed: the
    /// recorder ended the elevation itself (`action`: what it did, and what it could not).
    FailClosed { reason: String, action: String },
    /// Something the elevation changed on the machine (the change ledger): in `area`
    /// (`accounts`, `sudo`, `cron`, `services`, `packages`, `files`), what happened (`action`,
    /// e.g. `user_added`, `member_added`, `entry_added`, `unit_enabled`, `installed`,
    /// `modified`), to what (`subject`: an account, a file, a unit, a package), and details.
    Change {
        area: String,
        action: String,
        subject: String,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        detail: Option<String>,
    },
}

/// How completely an event source records what it watches.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum SourceState {
    /// Every event is seen (e.g. the kernel's process-events connector).
    Complete,
    /// Some events can be missed; `detail` says which (e.g. polling `/proc`).
    Partial,
    /// Nothing is recorded from this source from here on; `detail` says why.
    Unavailable,
}

/// A user account: name and platform id (uid on Linux, SID on Windows).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct UserRef {
    pub name: String,
    pub id: String,
}

impl UserRef {
    pub(crate) fn validate(&self, field: &str) -> Result<(), String> {
        check_text(&format!("{field}.name"), &self.name)?;
        check_text(&format!("{field}.id"), &self.id)
    }
}

/// A process start.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ProcessStart {
    pub pid: u32,
    pub ppid: u32,
    pub user: UserRef,
    /// Executable path.
    pub exe: String,
    /// The full command line, after secret redaction.
    pub command_line: String,
    /// Whether it runs elevated (uid 0, the admin group, or an elevated token).
    pub elevated: bool,
    /// Whether it belongs to the elevated user's own activity (runs as the elevated account,
    /// has its login uid, or descends from one of its processes) rather than to the rest of the
    /// machine (services, other users). Absent where the recorder could not tell (an account
    /// it cannot resolve, a recorder older than this field): readers treat that as unknown and
    /// show the event with the session's own.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub in_session: Option<bool>,
}

/// A process exit.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ProcessExit {
    pub pid: u32,
    /// Exit code, where the source reports it and the process exited normally.
    #[serde(default)]
    pub exit_code: Option<i32>,
    /// The signal that ended the process, where the source reports it.
    #[serde(default)]
    pub signal: Option<i32>,
}

/// A window, as focus and title events describe it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct WindowInfo {
    /// Platform window id (X11 window id or HWND), as text.
    pub window: String,
    pub title: String,
    /// The owning process, where the platform tells.
    #[serde(default)]
    pub pid: Option<u32>,
}

/// Why an events payload could not be read.
#[derive(Debug, thiserror::Error)]
pub enum EventsError {
    /// Not a zstd stream, or truncated.
    #[error("events payload is not valid zstd: {0}")]
    Zstd(#[source] std::io::Error),
    /// Decompresses to more than [`MAX_DECODED_EVENTS_BYTES`].
    #[error("events payload decompresses to more than {MAX_DECODED_EVENTS_BYTES} bytes")]
    TooLarge,
    /// A line is not a valid event.
    #[error("events line {line}: {source}")]
    Line {
        line: usize,
        #[source]
        source: serde_json::Error,
    },
    /// An event breaks a rule of the format (bad text, out of order, outside the chunk).
    #[error("event {index}: {reason}")]
    Invalid { index: usize, reason: String },
    /// More event lines than the reader allowed.
    #[error("events payload holds more than the {max} events allowed")]
    TooMany { max: usize },
    /// The number of events differs from the manifest's `events.count`.
    #[error("events payload holds {actual} events, manifest says {expected}")]
    Count { expected: u32, actual: usize },
}

/// Encodes events as zstd-compressed JSON lines.
pub fn encode_events(events: &[Event]) -> Result<Vec<u8>, EventsError> {
    let mut lines = Vec::with_capacity(events.len() * 160);
    for (line, e) in events.iter().enumerate() {
        serde_json::to_writer(&mut lines, e).map_err(|source| EventsError::Line {
            line: line + 1,
            source,
        })?;
        lines.push(b'\n');
    }
    zstd::bulk::compress(&lines, ZSTD_LEVEL).map_err(EventsError::Zstd)
}

/// Decodes an events payload, bounded by [`MAX_DECODED_EVENTS_BYTES`].
pub fn decode_events(payload: &[u8]) -> Result<Vec<Event>, EventsError> {
    decode_events_bounded(payload, usize::MAX).map(|(events, _)| events)
}

/// [`decode_events`], stopping with [`EventsError::TooMany`] at the first line past `max`
/// events (a reader passes the manifest's count: nothing past it is parsed or held). Also
/// returns how many bytes the payload decompressed to, for readers that budget memory.
pub fn decode_events_bounded(payload: &[u8], max: usize) -> Result<(Vec<Event>, u64), EventsError> {
    let decoder = zstd::stream::read::Decoder::new(payload).map_err(EventsError::Zstd)?;
    let mut limited = BufReader::new(decoder.take(MAX_DECODED_EVENTS_BYTES + 1));
    let mut events = Vec::new();
    let mut buf = Vec::new();
    let mut total = 0u64;
    let mut line = 0usize;
    loop {
        buf.clear();
        let n = limited
            .read_until(b'\n', &mut buf)
            .map_err(EventsError::Zstd)?;
        if n == 0 {
            break;
        }
        total += n as u64;
        if total > MAX_DECODED_EVENTS_BYTES {
            return Err(EventsError::TooLarge);
        }
        line += 1;
        if line > max {
            return Err(EventsError::TooMany { max });
        }
        let text = buf.strip_suffix(b"\n").unwrap_or(&buf);
        let event: Event =
            serde_json::from_slice(text).map_err(|source| EventsError::Line { line, source })?;
        events.push(event);
    }
    Ok((events, total))
}

/// Checks decoded events against their chunk: count, text rules, sorted by media time, and every
/// event inside `[media_start_us, media_end_us]`.
///
/// Whether `e` may be stored in a chunk of a session of format `version`: its kind's own checks
/// (text bounds, no control characters, a gap that ends after it starts) and the fields its
/// version allows. Where it lies in time is the chunk's business ([`validate_events`]).
pub fn check_event(version: u32, e: &Event) -> Result<(), String> {
    e.event.validate()?;
    if let EventKind::JitStop { stopped_by, .. } = &e.event {
        crate::parse::check_v2_field(version, "stopped_by", stopped_by.as_deref())?;
    }
    Ok(())
}

/// The end is inclusive: JIT stop and the recorder's final status are stamped at the instant the
/// last chunk ends.
pub fn validate_events(manifest: &ChunkManifest, events: &[Event]) -> Result<(), EventsError> {
    if events.len() != manifest.events.count as usize {
        return Err(EventsError::Count {
            expected: manifest.events.count,
            actual: events.len(),
        });
    }
    let mut last = MediaTime::ZERO;
    for (index, e) in events.iter().enumerate() {
        let invalid = |reason: String| EventsError::Invalid { index, reason };
        e.event.validate().map_err(invalid)?;
        if let EventKind::JitStop { stopped_by, .. } = &e.event {
            crate::parse::check_v2_field(manifest.version, "stopped_by", stopped_by.as_deref())
                .map_err(invalid)?;
        }
        if e.media_us < manifest.media_start_us || e.media_us > manifest.media_end_us {
            return Err(invalid(format!(
                "media time {} is outside the chunk [{}, {}]",
                e.media_us, manifest.media_start_us, manifest.media_end_us
            )));
        }
        if e.media_us < last {
            return Err(invalid(format!(
                "media time {} is before the previous event's {}",
                e.media_us, last
            )));
        }
        last = e.media_us;
    }
    Ok(())
}

impl EventKind {
    fn validate(&self) -> Result<(), String> {
        match self {
            EventKind::ProcessStart(p) => {
                p.user.validate("user")?;
                check_optional_text("exe", Some(&p.exe))?;
                // Command lines may legitimately be long; they are bounded by the document-free
                // payload limit instead, but must still be displayable text.
                check(
                    !p.command_line.chars().any(|c| c.is_control() && c != '\t'),
                    || "`command_line` contains control characters".into(),
                )
            }
            EventKind::ProcessExit(_) => Ok(()),
            EventKind::Change {
                area,
                action,
                subject,
                detail,
            } => {
                check_text("area", area)?;
                check_text("action", action)?;
                check_text("subject", subject)?;
                check_optional_text("detail", detail.as_deref())
            }
            EventKind::WindowFocus(w) | EventKind::WindowTitle(w) => {
                check_text("window", &w.window)?;
                check_optional_text("title", Some(&w.title))
            }
            EventKind::JitStart {
                user,
                machine,
                authorized_by,
                reason,
            } => {
                check_text("user", user)?;
                check_text("machine", machine)?;
                check_optional_text("authorized_by", authorized_by.as_deref())?;
                check_optional_text("reason", reason.as_deref())
            }
            EventKind::JitStop {
                user,
                machine,
                reason,
                stopped_by,
            } => {
                check_text("user", user)?;
                check_text("machine", machine)?;
                if let Some(c) = stopped_by {
                    c.validate("stopped_by")?;
                }
                check_optional_text("reason", reason.as_deref())
            }
            EventKind::RecorderStarted | EventKind::RecorderStopped => Ok(()),
            EventKind::FramesDropped { .. } => Ok(()),
            EventKind::EventsSummarised { what, .. } => check_text("what", what),
            EventKind::CaptureError { message } => check_text("message", message),
            EventKind::EventSource { source, detail, .. } => {
                check_text("source", source)?;
                check_text("detail", detail)
            }
            EventKind::Gap {
                from_us,
                to_us,
                reason,
            } => {
                check(to_us >= from_us, || {
                    format!("gap ends ({to_us}) before it starts ({from_us})")
                })?;
                check_text("reason", reason)
            }
            EventKind::NoticeShown { text, display, .. } => {
                check_text("text", text)?;
                check_text("display", display)
            }
            EventKind::NoticeAcknowledged => Ok(()),
            EventKind::NoticeFailed { message } => check_text("message", message),
            EventKind::FailClosed { reason, action } => {
                check_text("reason", reason)?;
                check_text("action", action)
            }
        }
    }
}
