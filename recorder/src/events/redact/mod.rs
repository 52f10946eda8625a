//! Secret redaction for command lines and window titles, applied before anything is written.
//!
//! A recording is kept for years and read by many reviewers; a password typed on a command line
//! must not live on in it. The rules, all listed in docs/recorder.md and configurable under
//! `[events.redaction]`:
//!
//! - the **generic option rule**: an option whose name ends in a secret word (`--password`,
//!   `--admin-password`, `-storepass`, `--api-key`, `--client-secret`; `rules.rs` says exactly
//!   which) loses its value, in `--opt=V` and `--opt V`; configured `secret_options` likewise;
//! - **value rules**, wherever the word stands: secret assignments (`MYSQL_PWD=V`), URL
//!   credentials (`https://TOKEN@host`, `https://user:V@host`), credential headers
//!   (`X-Api-Key: V`, any `Authorization:` value) and JSON fields (`"password":"V"`);
//! - **program rules**, for tools with their own conventions, applied to the words after the
//!   program's name wherever it appears (so `sudo mysql -pX` and `sh -c "mysql -pX"` are caught
//!   too): `attached` prefixes (`-pSECRET`), `separate` options (`-p SECRET`), and a few shapes
//!   of their own (`curl -u user:V`, `vault login TOKEN`, `htpasswd -b file user V`);
//! - **patterns** (configured): regular expressions over the whole text; the group named
//!   `secret` (or the whole match when there is none) is replaced.
//!
//! A command line is read twice (`words.rs`): as argv, each argument one word, so a quoted
//! value with spaces is hidden whole; and as shell scripts, each argument split as `sh` would,
//! because shells pass scripts as one argument (`sh -c "gpg --passphrase 'a b c'"`). What
//! either reading hides is hidden. A window title is read as a script. Redaction errs towards
//! hiding: an over-redacted word costs a reviewer a little context, an under-redacted one leaks
//! a credential into an archive.

mod rules;
mod words;

use regex::Regex;
use serde::Deserialize;

use words::Word;

/// What replaces a secret.
pub const REDACTED: &str = "[REDACTED]";

/// The `[events.redaction]` configuration.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RedactionConfig {
    /// Apply the built-in rules (docs/recorder.md lists them) besides the ones below.
    pub builtin: bool,
    /// Options whose value is secret, for every program.
    pub secret_options: Vec<String>,
    /// Rules for particular programs.
    pub programs: Vec<ProgramRule>,
    /// Regular expressions over the whole command line or title.
    pub patterns: Vec<String>,
}

impl Default for RedactionConfig {
    fn default() -> Self {
        Self {
            builtin: true,
            secret_options: Vec::new(),
            programs: Vec::new(),
            patterns: Vec::new(),
        }
    }
}

/// Rules for the words that follow a program's name.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ProgramRule {
    /// Program names (the file name, without directory), e.g. `mysql`.
    pub names: Vec<String>,
    /// Option prefixes whose attached rest is secret: `-p` hides `X` in `-pX` (not a bare `-p`).
    #[serde(default)]
    pub attached: Vec<String>,
    /// Options whose next word is secret: `-p` hides `X` in `-p X`.
    #[serde(default)]
    pub separate: Vec<String>,
    /// Patterns applied only when one of `names` appears.
    #[serde(default)]
    pub patterns: Vec<String>,
}

/// A rule that cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum RedactError {
    #[error("redaction pattern {pattern:?}: {source}")]
    Pattern {
        pattern: String,
        #[source]
        source: Box<regex::Error>,
    },
    #[error("redaction rule: {0}")]
    Invalid(String),
}

/// Compiled redaction rules.
#[derive(Debug)]
pub struct Redactor {
    /// Configured secret options (exact names).
    options: Vec<String>,
    /// Built-in and configured program rules.
    programs: Vec<rules::Program>,
    /// The generic option rule and the value rules, when built-ins are on.
    values: Option<rules::ValueRules>,
    /// Configured patterns over the whole text.
    patterns: Vec<Regex>,
}

fn compile(pattern: &str) -> Result<Regex, RedactError> {
    Regex::new(pattern).map_err(|e| RedactError::Pattern {
        pattern: pattern.to_owned(),
        source: Box::new(e),
    })
}

/// A range of argument `arg` to hide.
#[derive(Debug, Clone, Copy)]
struct Span {
    arg: usize,
    start: usize,
    end: usize,
}

impl Redactor {
    /// Compiles `config` (with the built-in rules when it says so).
    pub fn new(config: &RedactionConfig) -> Result<Self, RedactError> {
        let options = config.secret_options.clone();
        let mut programs = Vec::new();
        let mut values = None;
        if config.builtin {
            programs = rules::builtin_programs();
            values = Some(rules::ValueRules::new()?);
        }
        for o in &options {
            if o.is_empty() || o.chars().any(char::is_whitespace) {
                return Err(RedactError::Invalid(format!(
                    "secret option {o:?} must be one word"
                )));
            }
        }
        for r in &config.programs {
            if r.names.is_empty() || r.names.iter().any(|n| n.is_empty() || n.contains('/')) {
                return Err(RedactError::Invalid(format!(
                    "program rule {:?} needs program names without directories",
                    r.names
                )));
            }
            if r.attached.iter().chain(&r.separate).any(|o| o.is_empty()) {
                return Err(RedactError::Invalid(format!(
                    "program rule {:?} has an empty option",
                    r.names
                )));
            }
            programs.push(rules::Program {
                names: r.names.clone(),
                attached: r.attached.clone(),
                separate: r.separate.clone(),
                patterns: r
                    .patterns
                    .iter()
                    .map(|p| compile(p))
                    .collect::<Result<_, _>>()?,
                ..rules::Program::default()
            });
        }
        let patterns = config
            .patterns
            .iter()
            .map(|p| compile(p))
            .collect::<Result<_, _>>()?;
        Ok(Self {
            options,
            programs,
            values,
            patterns,
        })
    }

    /// The command line of `argv` as one displayable line, secrets replaced by [`REDACTED`].
    ///
    /// Arguments are separated by spaces; one that is empty or holds whitespace, quotes or
    /// backslashes is single-quoted, and control characters are escaped (`\n`, `\x1b`), so the
    /// line reads like what was typed and cannot forge lines of its own.
    pub fn command_line(&self, argv: &[String]) -> String {
        let mut hidden = Vec::new();
        self.hide(&words::argv_words(argv), &mut hidden);
        let script: Vec<Word<'_>> = argv
            .iter()
            .enumerate()
            .flat_map(|(i, a)| words::shell_words(i, a))
            .collect();
        self.hide(&script, &mut hidden);
        self.pattern_rules(argv, &mut hidden);
        // Spans by argument, once: filtering all of them for each argument would cost
        // arguments x spans on a crafted command line of a million words.
        hidden.sort_unstable_by_key(|w| w.arg);
        let mut line = String::new();
        let mut rest = &hidden[..];
        for (i, arg) in argv.iter().enumerate() {
            if i > 0 {
                line.push(' ');
            }
            let n = rest.iter().take_while(|w| w.arg == i).count();
            let (mine, after) = rest.split_at(n);
            rest = after;
            let text = apply_ranges(arg, mine.iter());
            line.push_str(&quote(&text));
        }
        line
    }

    /// Free text (a window title) with secrets replaced; control characters are escaped.
    ///
    /// A title is read as a shell script only: terminals title themselves with the command
    /// being run, as typed.
    pub fn text(&self, text: &str) -> String {
        let mut hidden = Vec::new();
        self.hide(&words::shell_words(0, text), &mut hidden);
        self.pattern_rules(&[text.to_owned()], &mut hidden);
        escape_controls(&apply_ranges(text, hidden.iter()))
    }

    /// Adds what the word rules hide in one reading of a text.
    fn hide(&self, words: &[Word<'_>], out: &mut Vec<Span>) {
        let rules = rules::Rules {
            options: &self.options,
            programs: &self.programs,
            builtin: self.values.as_ref(),
        };
        for (i, a, b) in rules.scan(words) {
            let w = &words[i];
            let (start, end) = w.source(a, b);
            out.push(Span {
                arg: w.arg,
                start,
                end,
            });
        }
    }

    /// Ranges matched by configured patterns over the arguments joined by single spaces (so a
    /// pattern can span an option and its value), mapped back onto the arguments.
    fn pattern_rules(&self, argv: &[String], hidden: &mut Vec<Span>) {
        let present = |p: &rules::Program| {
            argv.iter().flat_map(|a| a.split_whitespace()).any(|w| {
                let base = w.rsplit('/').next().unwrap_or(w);
                p.names.iter().any(|n| n == base)
            })
        };
        let scoped: Vec<&Regex> = self
            .programs
            .iter()
            .filter(|p| !p.patterns.is_empty() && present(p))
            .flat_map(|p| &p.patterns)
            .collect();
        if scoped.is_empty() && self.patterns.is_empty() {
            return;
        }
        let joined = argv.join(" ");
        let mut starts = Vec::with_capacity(argv.len());
        let mut at = 0;
        for a in argv {
            starts.push(at);
            at += a.len() + 1;
        }
        for re in scoped.into_iter().chain(&self.patterns) {
            for caps in re.captures_iter(&joined) {
                let Some(m) = caps.name("secret").or_else(|| caps.get(0)) else {
                    continue;
                };
                for (arg, (&s, a)) in starts.iter().zip(argv).enumerate() {
                    let (start, end) = (m.start().max(s), m.end().min(s + a.len()));
                    if start < end {
                        hidden.push(Span {
                            arg,
                            start: start - s,
                            end: end - s,
                        });
                    }
                }
            }
        }
    }
}

/// `s` with the ranges replaced by [`REDACTED`]. Ranges that overlap or touch merge into one:
/// two readings often hide neighbouring parts of one secret, and `[REDACTED][REDACTED]` would
/// only say that they did.
fn apply_ranges<'a>(s: &str, ranges: impl Iterator<Item = &'a Span>) -> String {
    let mut r: Vec<(usize, usize)> = ranges
        .map(|w| (w.start, w.end.min(s.len())))
        .filter(|(a, b)| a < b)
        .collect();
    r.sort_unstable();
    let mut merged: Vec<(usize, usize)> = Vec::with_capacity(r.len());
    for (start, end) in r {
        match merged.last_mut() {
            Some(last) if start <= last.1 => last.1 = last.1.max(end),
            _ => merged.push((start, end)),
        }
    }
    let mut out = String::with_capacity(s.len());
    let mut at = 0;
    for (start, end) in merged {
        // Ranges come from the rules at character boundaries; one that is not (a bug) widens
        // to the enclosing characters rather than panic or show half a secret.
        let start = floor_boundary(s, start).max(at);
        let end = ceil_boundary(s, end);
        out.push_str(&s[at..start]);
        out.push_str(REDACTED);
        at = end;
    }
    out.push_str(&s[at..]);
    out
}

fn floor_boundary(s: &str, mut i: usize) -> usize {
    while !s.is_char_boundary(i) {
        i -= 1;
    }
    i
}

fn ceil_boundary(s: &str, mut i: usize) -> usize {
    while !s.is_char_boundary(i) {
        i += 1;
    }
    i
}

/// `s` with control characters escaped (`\\n`, `\\r`, `\\x1b`; tab kept), so text taken from
/// the system cannot forge lines or terminal sequences in a review.
pub(crate) fn escape_controls(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        match c {
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            '\t' => out.push('\t'),
            c if c.is_control() => out.push_str(&format!("\\x{:02x}", u32::from(c))),
            c => out.push(c),
        }
    }
    out
}

fn quote(arg: &str) -> String {
    let plain = !arg.is_empty()
        && !arg
            .chars()
            .any(|c| c.is_whitespace() || c.is_control() || matches!(c, '\'' | '"' | '\\'));
    if plain {
        return arg.to_owned();
    }
    let mut out = String::with_capacity(arg.len() + 2);
    out.push('\'');
    for c in escape_controls(arg).chars() {
        if c == '\'' {
            out.push_str("'\\''");
        } else {
            out.push(c);
        }
    }
    out.push('\'');
    out
}

#[cfg(test)]
mod tests;
