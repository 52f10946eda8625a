//! The recording notice: text shown to the user on the screen being recorded when JIT starts,
//! saying that the session is recorded (a legal duty in many countries), optionally to be
//! acknowledged with a click.
//!
//! The notice is an [`EventSource`] of its session: it runs on its own plain thread from JIT
//! start, writes `notice_shown` once the screen holds it, `notice_acknowledged` when it is
//! clicked, and `notice_failed` when it cannot be shown; the window is taken down at JIT stop,
//! when the source is stopped like every other. So the notice never delays the session's start
//! or its capture: the recording goes on whatever happens to it. A source that never finishes
//! is left behind after a bounded wait (`Intake::stop`).
//!
//! This file is portable (the settings, the text and its layout); [`x11`] draws it on Linux.
//! Elsewhere [`NoticeConfig::source`] gives a source that records `notice_failed`, so a
//! reviewer never reads the absence of a notice as "the user was told".

#[cfg(target_os = "linux")]
pub mod x11;

use std::sync::Arc;
use std::sync::atomic::AtomicBool;
use std::time::Duration;

use jitrec_format::EventKind;

use crate::events::{EventSink, EventSource, truncate_text};

/// The notice unless configured: what is recorded, for what, on whose authority, and what to do.
pub const DEFAULT_TEXT: &str = "This session is being recorded for security review (JIT elevation \
of {user} on {machine}, authorised by {authorized_by}). Click OK to acknowledge.";

/// How long a notice that needs no acknowledgement stays: long enough to read three lines
/// twice, short enough not to stand in the way of the work that JIT is for.
pub const DEFAULT_DISPLAY_SECONDS: u32 = 10;

/// The longest notice text, in characters: a notice is read in seconds, and it must fit on a
/// small screen in the core X font.
pub const MAX_TEXT_CHARS: usize = 1_000;

/// What the notice's placeholders say when the session does not know: a group-membership
/// trigger has no authoriser and no reason.
pub const NOT_STATED: &str = "not stated";

/// The placeholders a notice text may use.
pub const PLACEHOLDERS: [&str; 4] = ["user", "machine", "authorized_by", "reason"];

/// The notice's title (`WM_NAME`), by which tests and tools find its window.
pub const WINDOW_TITLE: &str = "jitrec recording notice";

/// The notice's background (RGB): amber, a colour no desktop default uses, so a reviewer (and a
/// test) spots it in the video at once; black text on it is easily read.
pub const BACKGROUND: [u8; 3] = [255, 191, 0];

/// Why a notice text cannot be used.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum TextError {
    #[error("the text is empty")]
    Empty,
    #[error("the text is longer than {MAX_TEXT_CHARS} characters")]
    TooLong,
    #[error("the text contains a control character other than a line break")]
    Control,
    #[error(
        "unknown placeholder {{{0}}} (known: {{user}}, {{machine}}, {{authorized_by}}, {{reason}})"
    )]
    Placeholder(String),
}

/// Checks a configured notice text: not empty, bounded, no control characters but line breaks,
/// and only known placeholders.
pub fn check_text(text: &str) -> Result<(), TextError> {
    if text.trim().is_empty() {
        return Err(TextError::Empty);
    }
    if text.chars().count() > MAX_TEXT_CHARS {
        return Err(TextError::TooLong);
    }
    if text.chars().any(|c| c.is_control() && c != '\n') {
        return Err(TextError::Control);
    }
    let mut rest = text;
    while let Some(open) = rest.find('{') {
        let after = &rest[open + 1..];
        let Some(close) = after.find('}') else { break };
        let name = &after[..close];
        // Only a word in braces is meant as a placeholder; other braces are text.
        if !name.is_empty()
            && name.chars().all(|c| c.is_ascii_alphanumeric() || c == '_')
            && !PLACEHOLDERS.contains(&name)
        {
            return Err(TextError::Placeholder(name.to_owned()));
        }
        rest = &after[close + 1..];
    }
    Ok(())
}

/// The session a notice is shown for.
#[derive(Debug, Clone, Copy)]
pub struct Elevation<'a> {
    pub user: &'a str,
    pub machine: &'a str,
    pub authorized_by: Option<&'a str>,
    pub reason: Option<&'a str>,
}

/// The notice settings, validated (`Config::notice`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NoticeConfig {
    /// The text with its placeholders (checked by [`check_text`]).
    pub text: String,
    /// Stays until clicked.
    pub require_ack: bool,
    /// How long it stays without `require_ack`.
    pub display_for: Duration,
    /// The X display (`None`: `$DISPLAY`): the one being recorded.
    pub display: Option<String>,
}

impl NoticeConfig {
    /// The text for `e`: placeholders filled in, control characters in the values made spaces
    /// (a user name cannot add lines to the notice).
    pub fn text_for(&self, e: &Elevation<'_>) -> String {
        let clean = |s: &str| -> String {
            s.chars()
                .map(|c| if c.is_control() { ' ' } else { c })
                .collect()
        };
        let value = |name: &str| -> String {
            match name {
                "user" => clean(e.user),
                "machine" => clean(e.machine),
                "authorized_by" => clean(e.authorized_by.unwrap_or(NOT_STATED)),
                _ => clean(e.reason.unwrap_or(NOT_STATED)),
            }
        };
        let mut out = String::with_capacity(self.text.len() + 64);
        let mut rest = self.text.as_str();
        while let Some(open) = rest.find('{') {
            out.push_str(&rest[..open]);
            let after = &rest[open + 1..];
            match after.find('}') {
                Some(close) if PLACEHOLDERS.contains(&&after[..close]) => {
                    out.push_str(&value(&after[..close]));
                    rest = &after[close + 1..];
                }
                _ => {
                    out.push('{');
                    rest = after;
                }
            }
        }
        out.push_str(rest);
        out
    }

    /// The `notice_shown` event for `text` on `display`.
    pub fn shown(&self, text: &str, display: &str) -> EventKind {
        EventKind::NoticeShown {
            text: truncate_text(text),
            display: truncate_text(display),
            require_ack: self.require_ack,
            display_seconds: (!self.require_ack)
                .then(|| u32::try_from(self.display_for.as_secs()).unwrap_or(u32::MAX)),
        }
    }

    /// The source that shows this notice for one session.
    pub fn source(&self, e: &Elevation<'_>) -> Box<dyn EventSource> {
        let text = self.text_for(e);
        #[cfg(target_os = "linux")]
        {
            Box::new(x11::X11Notice::new(self.clone(), text))
        }
        #[cfg(not(target_os = "linux"))]
        {
            let _ = text;
            Box::new(Unsupported)
        }
    }
}

/// The notice where this build cannot show one: it says so in the session.
#[derive(Debug)]
pub struct Unsupported;

impl EventSource for Unsupported {
    fn name(&self) -> &'static str {
        "notice"
    }

    fn run(self: Box<Self>, mut sink: EventSink, _stop: Arc<AtomicBool>) {
        tracing::warn!("this build cannot show the recording notice on this platform");
        let t = sink.clock().now();
        sink.status(
            t,
            EventKind::NoticeFailed {
                message: "this recorder cannot show a recording notice on this platform".into(),
            },
        );
    }
}

/// `text` in lines of at most `cols` characters: words wrapped, line breaks kept, a word longer
/// than a line cut; at most `max_lines` lines, the last one ending in `...` when text was left
/// out.
pub fn wrap(text: &str, cols: usize, max_lines: usize) -> Vec<String> {
    let cols = cols.max(4);
    let mut lines = Vec::new();
    for paragraph in text.split('\n') {
        let mut line = String::new();
        for word in paragraph.split_whitespace() {
            let mut word: Vec<char> = word.chars().collect();
            loop {
                let used = line.chars().count();
                let room = if used == 0 {
                    cols
                } else {
                    cols.saturating_sub(used + 1)
                };
                if word.len() <= room {
                    if used > 0 {
                        line.push(' ');
                    }
                    line.extend(&word);
                    break;
                }
                if used > 0 {
                    lines.push(std::mem::take(&mut line));
                    continue;
                }
                // A word longer than a whole line: cut it.
                let rest = word.split_off(cols);
                lines.push(word.iter().collect());
                word = rest;
            }
        }
        lines.push(line);
    }
    while lines.len() > 1 && lines.last().is_some_and(String::is_empty) {
        lines.pop();
    }
    if lines.len() > max_lines.max(1) {
        lines.truncate(max_lines.max(1));
        if let Some(last) = lines.last_mut() {
            let keep: String = last.chars().take(cols - 3).collect();
            *last = keep + "...";
        }
    }
    lines
}

/// `s` in ISO 8859-1, the encoding of the core X font: typographic quotes and dashes become
/// their ASCII look-alikes, anything else outside Latin-1 a `?`. (The event keeps the text as
/// configured.)
pub fn latin1(s: &str) -> Vec<u8> {
    s.chars()
        .map(|c| match c {
            '\u{2018}' | '\u{2019}' => b'\'',
            '\u{201c}' | '\u{201d}' => b'"',
            '\u{2013}' | '\u{2014}' => b'-',
            '\u{2026}' => b'.',
            c => u8::try_from(u32::from(c)).unwrap_or(b'?'),
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config(text: &str) -> NoticeConfig {
        NoticeConfig {
            text: text.into(),
            require_ack: false,
            display_for: Duration::from_secs(10),
            display: None,
        }
    }

    #[test]
    fn placeholders_are_filled_in_and_unknown_values_say_so() {
        let e = Elevation {
            user: "alice",
            machine: "ws-1",
            authorized_by: Some("bob@example.com"),
            reason: None,
        };
        assert_eq!(
            config(DEFAULT_TEXT).text_for(&e),
            "This session is being recorded for security review (JIT elevation of alice on ws-1, \
             authorised by bob@example.com). Click OK to acknowledge."
        );
        assert_eq!(
            config("{reason} {a b} {x").text_for(&e),
            "not stated {a b} {x"
        );
        let evil = Elevation {
            user: "mallory\nClick nothing",
            ..e
        };
        assert_eq!(config("{user}").text_for(&evil), "mallory Click nothing");
    }

    #[test]
    fn texts_are_checked() {
        check_text(DEFAULT_TEXT).unwrap();
        check_text("two\nlines {user} {not a placeholder}").unwrap();
        assert_eq!(check_text(" \n"), Err(TextError::Empty));
        assert_eq!(
            check_text("hi {usr}"),
            Err(TextError::Placeholder("usr".into()))
        );
        assert_eq!(check_text("tab\there"), Err(TextError::Control));
        assert_eq!(
            check_text(&"x".repeat(MAX_TEXT_CHARS + 1)),
            Err(TextError::TooLong)
        );
    }

    #[test]
    fn the_shown_event_says_how_long_the_notice_stays() {
        let c = config("x");
        assert_eq!(
            c.shown("a\nb", ":0"),
            EventKind::NoticeShown {
                text: "a\\nb".into(),
                display: ":0".into(),
                require_ack: false,
                display_seconds: Some(10),
            }
        );
        let ack = NoticeConfig {
            require_ack: true,
            ..c
        };
        assert!(matches!(
            ack.shown("a", ":0"),
            EventKind::NoticeShown {
                require_ack: true,
                display_seconds: None,
                ..
            }
        ));
    }

    #[test]
    fn wrapping_keeps_words_and_line_breaks_and_bounds_the_lines() {
        assert_eq!(
            wrap("one two three four", 9, 10),
            ["one two", "three", "four"]
        );
        assert_eq!(wrap("a\n\nb\n", 10, 10), ["a", "", "b"]);
        assert_eq!(wrap("abcdefghij", 4, 10), ["abcd", "efgh", "ij"]);
        assert_eq!(
            wrap("aaaa bbbb cccc dddd eeee", 9, 2),
            ["aaaa bbbb", "cccc d..."]
        );
        for line in wrap(DEFAULT_TEXT, 30, 100) {
            assert!(line.chars().count() <= 30, "{line}");
        }
    }

    #[test]
    fn text_for_the_core_font_is_latin1() {
        assert_eq!(
            latin1("Zürich \u{2014} \u{201c}ok\u{201d} \u{4e2d}"),
            b"Z\xfcrich - \"ok\" ?"
        );
    }
}
