//! The recorder's configuration file (TOML). Every field has a documented default, so a minimal
//! file names only the user to watch; unknown keys are errors, so a typo is reported instead of
//! silently ignored. Read raw, then validated into the typed settings the service takes.

use std::path::{Path, PathBuf};
use std::time::Duration;

use jitrec_format::Labels;
use serde::Deserialize;

use crate::encode::EncoderConfig;
use crate::events::EventLimits;
use crate::events::redact::{RedactionConfig, Redactor};

/// The whole file.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Config {
    /// The spool directory, shared with jitrec-uploader.
    pub spool: PathBuf,
    /// The spool's size bound in bytes (see docs/spool.md).
    pub spool_max_bytes: u64,
    /// Where the machine's stable id is read from.
    pub machine_id_file: PathBuf,
    /// The endpoint's signing key (created on first run, mode 0600; see docs/recorder.md).
    /// Unset: `key/endpoint.key` beside the spool directory (not in it: nothing but the
    /// recorder reads the key).
    pub key_file: Option<PathBuf>,
    /// Retention labels stamped on every session.
    pub labels: Labels,
    pub jit: JitConfig,
    pub control: ControlConfig,
    pub capture: CaptureConfig,
    pub encoder: EncoderToml,
    pub events: EventsToml,
    pub encryption: EncryptionToml,
    pub notice: NoticeToml,
    pub fail_closed: FailClosedToml,
}

/// `[fail_closed]`: end the elevation when recording cannot run (docs/recorder.md, "Failing
/// closed"). Off by default.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct FailClosedToml {
    pub enabled: bool,
    /// Seconds the spool may stay full.
    pub spool_full_seconds: u64,
    /// Seconds the screen may stay unreadable.
    pub capture_lost_seconds: u64,
    /// A command to run as well (program and arguments), e.g. `["loginctl", "lock-sessions"]`.
    pub lock_command: Vec<String>,
}

impl Default for FailClosedToml {
    fn default() -> Self {
        Self {
            enabled: false,
            spool_full_seconds: 30,
            capture_lost_seconds: 60,
            lock_command: Vec::new(),
        }
    }
}

/// The recording notice shown to the user at JIT start (docs/recorder.md, "Recording notice").
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct NoticeToml {
    /// Show it. On by default: telling people they are recorded is a legal duty in many places,
    /// and a notice nobody configured is better than none.
    pub enabled: bool,
    /// The text; `{user}`, `{machine}`, `{authorized_by}` and `{reason}` are filled in.
    pub text: String,
    /// Keep it on the screen until the user clicks it (else it goes after `display_seconds`).
    pub require_ack: bool,
    /// How long it stays without `require_ack` (a click dismisses it earlier).
    pub display_seconds: u32,
}

impl Default for NoticeToml {
    fn default() -> Self {
        Self {
            enabled: true,
            text: crate::notice::DEFAULT_TEXT.into(),
            require_ack: false,
            display_seconds: crate::notice::DEFAULT_DISPLAY_SECONDS,
        }
    }
}

/// Client-side encryption of payloads (off unless recipients are given; docs/recorder.md).
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct EncryptionToml {
    /// age X25519 public keys (`age1...`) to encrypt every payload to.
    pub recipients: Vec<String>,
}

/// Process and window events (docs/recorder.md).
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct EventsToml {
    /// Record process starts and exits.
    pub processes: bool,
    /// How processes are watched: `auto` (the kernel connector, `/proc` polling if it cannot be
    /// used) or `poll` (always poll).
    pub process_source: ProcessMode,
    /// Interval of `/proc` polling, in milliseconds.
    pub poll_ms: u64,
    /// Record the active window and its title.
    pub windows: bool,
    /// Events a source may write at once before the rate bound applies.
    pub burst: u32,
    /// Events per second a source may write after its burst; the rest are summarised.
    pub rate: u32,
    /// Where user names of process owners come from.
    pub passwd_file: PathBuf,
    /// Record the change ledger: what the elevation changed on the machine (accounts, sudo,
    /// cron, systemd units, packages, files under /etc, /usr/local and /root).
    pub changes: bool,
    /// Where the machine's files are for the change ledger: `/` (a test points it at a copy).
    pub changes_root: PathBuf,
    pub redaction: RedactionConfig,
}

/// See [`EventsToml::process_source`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ProcessMode {
    Auto,
    Poll,
}

/// How JIT is detected.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct JitConfig {
    /// The interactive user whose admin-group membership means JIT. Without it, only the control
    /// socket starts and stops recordings.
    pub user: Option<String>,
    /// The admin group.
    pub group: String,
    /// The group database.
    pub group_file: PathBuf,
    /// Fallback poll of the group file when inotify is unavailable, in milliseconds.
    pub poll_ms: u64,
}

/// The local control socket (`jitrec-recorder jit start|stop|status`).
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ControlConfig {
    pub socket: PathBuf,
    /// A group whose members may use the socket besides root.
    pub group: Option<String>,
    /// File mode of the socket. Peers are checked (SO_PEERCRED) whatever the mode.
    pub mode: u32,
}

/// What is captured.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct CaptureConfig {
    /// The X display (default: `$DISPLAY`).
    pub display: Option<String>,
    /// Capture rate. 5 fps follows typing and scrolling; CPU grows with it, size barely.
    pub fps: u32,
}

/// Encoder and chunking settings.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct EncoderToml {
    pub crf: u8,
    pub preset: String,
    pub keyframe_interval_ms: u64,
    /// Chunk length: the most a crash can lose, and the live view's delay.
    pub chunk_ms: u64,
}

/// Where the spool lives unless configured.
#[cfg(not(windows))]
pub const DEFAULT_SPOOL: &str = "/var/lib/jitrec/spool";
/// Where the spool lives unless configured (ProgramData is writable by LocalSystem and
/// Administrators only, by default).
#[cfg(windows)]
pub const DEFAULT_SPOOL: &str = r"C:\ProgramData\jitrec\spool";

/// Where the endpoint key of a spool lives unless configured: `key/endpoint.key` beside it
/// (`/var/lib/jitrec/key/endpoint.key` for the default spool).
pub fn default_key_file(spool: &Path) -> PathBuf {
    spool
        .parent()
        .unwrap_or(Path::new("."))
        .join("key")
        .join("endpoint.key")
}

impl Config {
    /// The endpoint key file in use.
    pub fn key_path(&self) -> PathBuf {
        self.key_file
            .clone()
            .unwrap_or_else(|| default_key_file(&self.spool))
    }
}

impl Default for Config {
    fn default() -> Self {
        Self {
            spool: DEFAULT_SPOOL.into(),
            spool_max_bytes: jitrec_spool::DEFAULT_MAX_BYTES,
            machine_id_file: "/etc/machine-id".into(),
            key_file: None,
            labels: Labels::default(),
            jit: JitConfig::default(),
            control: ControlConfig::default(),
            capture: CaptureConfig::default(),
            encoder: EncoderToml::default(),
            events: EventsToml::default(),
            encryption: EncryptionToml::default(),
            notice: NoticeToml::default(),
            fail_closed: FailClosedToml::default(),
        }
    }
}

impl Default for EventsToml {
    fn default() -> Self {
        let limits = EventLimits::default();
        Self {
            processes: true,
            process_source: ProcessMode::Auto,
            poll_ms: 100,
            windows: true,
            burst: limits.burst,
            rate: limits.rate,
            passwd_file: "/etc/passwd".into(),
            changes: true,
            changes_root: "/".into(),
            redaction: RedactionConfig::default(),
        }
    }
}

impl Default for JitConfig {
    fn default() -> Self {
        Self {
            user: None,
            group: "sudo".into(),
            group_file: "/etc/group".into(),
            poll_ms: crate::trigger::DEFAULT_POLL.as_millis() as u64,
        }
    }
}

impl Default for ControlConfig {
    fn default() -> Self {
        Self {
            socket: "/run/jitrec/recorder.sock".into(),
            group: None,
            mode: 0o660,
        }
    }
}

impl Default for CaptureConfig {
    fn default() -> Self {
        Self {
            display: None,
            fps: 5,
        }
    }
}

impl Default for EncoderToml {
    fn default() -> Self {
        let e = EncoderConfig::default();
        Self {
            crf: e.crf,
            preset: e.preset,
            keyframe_interval_ms: e.keyframe_interval.as_millis() as u64,
            chunk_ms: 2000,
        }
    }
}

/// A configuration that cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("reading {path}: {source}")]
    Read {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("{path}: {source}")]
    Parse {
        path: PathBuf,
        #[source]
        source: toml::de::Error,
    },
    #[error("{0}")]
    Invalid(String),
}

impl Config {
    /// Reads and validates a configuration file.
    pub fn load(path: &Path) -> Result<Self, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
            path: path.to_owned(),
            source,
        })?;
        Self::parse(&text).map_err(|e| match e {
            ConfigError::Parse { source, .. } => ConfigError::Parse {
                path: path.to_owned(),
                source,
            },
            other => other,
        })
    }

    /// Parses and validates configuration text.
    pub fn parse(text: &str) -> Result<Self, ConfigError> {
        let c: Config = toml::from_str(text).map_err(|source| ConfigError::Parse {
            path: PathBuf::new(),
            source,
        })?;
        let bad = |m: String| Err(ConfigError::Invalid(m));
        if !(1..=60).contains(&c.capture.fps) {
            return bad(format!("capture.fps = {} is outside 1..=60", c.capture.fps));
        }
        if !(250..=60_000).contains(&c.encoder.chunk_ms) {
            return bad(format!(
                "encoder.chunk_ms = {} is outside 250..=60000",
                c.encoder.chunk_ms
            ));
        }
        if c.encoder.keyframe_interval_ms < 250 {
            return bad("encoder.keyframe_interval_ms must be at least 250".into());
        }
        if c.encoder.crf > 51 {
            return bad(format!("encoder.crf = {} is above 51", c.encoder.crf));
        }
        if !(10..=10_000).contains(&c.events.poll_ms) {
            return bad(format!(
                "events.poll_ms = {} is outside 10..=10000",
                c.events.poll_ms
            ));
        }
        if c.events.rate == 0 || c.events.burst == 0 {
            return bad("events.rate and events.burst must be at least 1".into());
        }
        Redactor::new(&c.events.redaction).map_err(|e| ConfigError::Invalid(e.to_string()))?;
        if !(1..=3600).contains(&c.notice.display_seconds) {
            return bad(format!(
                "notice.display_seconds = {} is outside 1..=3600",
                c.notice.display_seconds
            ));
        }
        crate::notice::check_text(&c.notice.text)
            .map_err(|e| ConfigError::Invalid(format!("notice.text: {e}")))?;
        Ok(c)
    }

    /// The recording notice to show at each JIT start (`None`: none).
    /// The fail-closed settings when `[fail_closed] enabled`.
    pub fn fail_closed(&self) -> Option<crate::failclosed::FailClosed> {
        let f = &self.fail_closed;
        f.enabled.then(|| crate::failclosed::FailClosed {
            spool_full: std::time::Duration::from_secs(f.spool_full_seconds),
            capture_lost: std::time::Duration::from_secs(f.capture_lost_seconds),
            group_file: self.jit.group_file.clone(),
            group: self.jit.group.clone(),
            lock_command: f.lock_command.clone(),
        })
    }

    pub fn notice(&self) -> Option<crate::notice::NoticeConfig> {
        self.notice.enabled.then(|| crate::notice::NoticeConfig {
            text: self.notice.text.clone(),
            require_ack: self.notice.require_ack,
            display_for: std::time::Duration::from_secs(u64::from(self.notice.display_seconds)),
            display: self.capture.display.clone(),
        })
    }

    /// The bounds on events.
    pub fn event_limits(&self) -> EventLimits {
        EventLimits {
            burst: self.events.burst,
            rate: self.events.rate,
            ..EventLimits::default()
        }
    }

    /// The encoder settings.
    pub fn encoder(&self) -> EncoderConfig {
        EncoderConfig {
            crf: self.encoder.crf,
            preset: self.encoder.preset.clone(),
            keyframe_interval: Duration::from_millis(self.encoder.keyframe_interval_ms),
            nominal_fps: self.capture.fps,
            ..EncoderConfig::default()
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The example in docs/recorder.md is a valid configuration, so the documentation cannot
    /// drift from the parser.
    #[test]
    fn documented_example_parses() {
        let doc = include_str!("../../docs/recorder.md");
        let start = doc.find("```toml\n").expect("a toml block") + "```toml\n".len();
        let len = doc[start..].find("```").expect("end of the toml block");
        let c = Config::parse(&doc[start..start + len]).unwrap();
        assert_eq!(c.jit.user.as_deref(), Some("alice"));
        assert_eq!(c.events.redaction.programs[0].names, ["acmectl"]);
        Redactor::new(&c.events.redaction).unwrap();
    }

    #[test]
    fn defaults_and_validation() {
        let c = Config::parse("[jit]\nuser = \"alice\"\n").unwrap();
        assert_eq!(c.jit.user.as_deref(), Some("alice"));
        assert_eq!(c.jit.group, "sudo");
        assert_eq!(c.capture.fps, 5);
        assert_eq!(c.encoder.chunk_ms, 2000);
        assert_eq!(c.encoder().keyframe_interval, Duration::from_secs(10));
        assert!(matches!(
            Config::parse("[jit]\nusr = \"alice\"\n"),
            Err(ConfigError::Parse { .. })
        ));
        assert!(matches!(
            Config::parse("[capture]\nfps = 0\n"),
            Err(ConfigError::Invalid(_))
        ));
        assert!(matches!(
            Config::parse("[encoder]\nchunk_ms = 10\n"),
            Err(ConfigError::Invalid(_))
        ));
        assert!(c.events.processes && c.events.windows);
        assert_eq!(c.events.process_source, ProcessMode::Auto);
        assert!(c.events.redaction.builtin);
        assert!(matches!(
            Config::parse("[events.redaction]\npatterns = [\"(\"]\n"),
            Err(ConfigError::Invalid(_))
        ));
        let e = Config::parse(
            "[events]\nprocess_source = \"poll\"\n[[events.redaction.programs]]\nnames = [\"acme\"]\nattached = [\"-K\"]\n",
        )
        .unwrap();
        assert_eq!(e.events.process_source, ProcessMode::Poll);
        assert_eq!(e.events.redaction.programs[0].names, ["acme"]);
        let l = Config::parse("[labels]\ncompany = \"acme\"\n").unwrap();
        assert_eq!(l.labels.company.as_deref(), Some("acme"));
    }

    #[test]
    fn the_notice_is_on_by_default_and_its_settings_are_checked() {
        let n = Config::parse("").unwrap().notice().expect("on by default");
        assert!(!n.require_ack);
        assert_eq!(n.display_for, Duration::from_secs(10));
        assert!(n.text.contains("{user}"), "{}", n.text);
        assert!(
            Config::parse("[notice]\nenabled = false\n")
                .unwrap()
                .notice()
                .is_none()
        );
        let n = Config::parse("[notice]\ntext = \"Recorded, {user}.\"\nrequire_ack = true\n")
            .unwrap()
            .notice()
            .unwrap();
        assert!(n.require_ack);
        assert_eq!(n.text, "Recorded, {user}.");
        for bad in [
            "[notice]\ndisplay_seconds = 0\n",
            "[notice]\ntext = \"\"\n",
            "[notice]\ntext = \"hello {usr}\"\n",
            "[notice]\ntext = \"bell \\u0007\"\n",
        ] {
            assert!(
                matches!(Config::parse(bad), Err(ConfigError::Invalid(_))),
                "{bad}"
            );
        }
    }
}
