//! Secret redaction for command lines and window titles, applied before anything is written.
//!
//! A recording is kept for years and read by many reviewers; a password typed on a command line
//! must not live on in it. Three kinds of rule, all documented in docs/recorder.md and
//! configurable under `[events.redaction]`:
//!
//! - **secret options** of any program: `--password=V` and `--password V` lose `V`;
//! - **program rules**, for tools with their own conventions, applied to the words after the
//!   program's name wherever it appears (so `sudo mysql -pX` and `sh -c "mysql -pX"` are caught
//!   too): `attached` prefixes (`-pSECRET`), `separate` options (`-p SECRET`), and patterns;
//! - **patterns**: regular expressions over the whole text; the group named `secret` (or the
//!   whole match when there is none) is replaced.
//!
//! Words are found by splitting every argument on whitespace, because shells pass scripts as one
//! argument. Redaction errs towards hiding: an over-redacted word costs a reviewer a little
//! context, an under-redacted one leaks a credential into an archive.

use regex::Regex;
use serde::Deserialize;

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

const BUILTIN_SECRET_OPTIONS: &[&str] = &[
    "--password",
    "--passwd",
    "--pass",
    "--token",
    "--secret",
    "--api-key",
    "--apikey",
    "--access-key",
    "--secret-key",
    "--client-secret",
    "--auth-token",
];

/// (names, attached, separate, patterns)
type BuiltinProgram = (
    &'static [&'static str],
    &'static [&'static str],
    &'static [&'static str],
    &'static [&'static str],
);

const BUILTIN_PROGRAMS: &[BuiltinProgram] = &[
    // MySQL/MariaDB clients: `-pSECRET`; a bare `-p` prompts, and its next word is a database.
    (
        &[
            "mysql",
            "mysqladmin",
            "mysqldump",
            "mysqlimport",
            "mysqlcheck",
            "mysqlshow",
            "mariadb",
            "mariadb-admin",
            "mariadb-dump",
        ],
        &["-p"],
        &[],
        &[],
    ),
    (&["sshpass"], &["-p"], &["-p"], &[]),
    // `-u user:password` / `--user user:password`.
    (
        &["curl"],
        &[],
        &[],
        &[r"(?:^|\s)(?:-u|--user)(?:\s+|=)?[^\s:]*:(?P<secret>\S+)"],
    ),
    // `-U user%password`.
    (
        &["smbclient", "rpcclient", "smbcacls", "net"],
        &[],
        &[],
        &[r"(?:^|\s)(?:-U|--user)(?:\s+|=)?[^\s%]*%(?P<secret>\S+)"],
    ),
    // `htpasswd -b file user password`: the last word.
    (
        &["htpasswd"],
        &[],
        &[],
        &[r"\s-\w*b\w*\s+\S+\s+\S+\s+(?P<secret>\S+)"],
    ),
    // `-pass pass:X`, `-passin pass:X`, `-passout pass:X`, `-k X`.
    (
        &["openssl"],
        &[],
        &["-k"],
        &[r"(?:^|\s)-pass(?:in|out)?\s+(?:pass|env):(?P<secret>\S+)"],
    ),
    // `chpasswd`/`usermod -p HASH`: a crypt hash is still a secret worth not spreading.
    (&["usermod", "useradd"], &[], &["-p", "--password"], &[]),
];

const BUILTIN_PATTERNS: &[&str] = &[
    // Credentials in URLs: scheme://user:secret@host.
    r"[A-Za-z][A-Za-z0-9+.-]*://[^\s:/@]+:(?P<secret>[^\s@/]+)@",
    // Environment-style assignments: DB_PASSWORD=..., GITHUB_TOKEN=..., api_key=...
    r"(?i)\b[A-Z0-9_]*(?:PASSWORD|PASSWD|SECRET|TOKEN|API_?KEY)[A-Z0-9_]*=(?P<secret>\S+)",
    // HTTP authorisation headers passed on the command line.
    r"(?i)authorization:\s*(?:basic|bearer|token)\s+(?P<secret>[^\s'\x22]+)",
];

#[derive(Debug)]
struct Program {
    names: Vec<String>,
    attached: Vec<String>,
    separate: Vec<String>,
    patterns: Vec<Regex>,
}

/// Compiled redaction rules.
#[derive(Debug)]
pub struct Redactor {
    options: Vec<String>,
    programs: Vec<Program>,
    patterns: Vec<Regex>,
}

fn compile(pattern: &str) -> Result<Regex, RedactError> {
    Regex::new(pattern).map_err(|e| RedactError::Pattern {
        pattern: pattern.to_owned(),
        source: Box::new(e),
    })
}

fn owned(v: &[&str]) -> Vec<String> {
    v.iter().map(|s| (*s).to_owned()).collect()
}

/// A word of the text: which argument it is in, and where.
#[derive(Debug, Clone, Copy)]
struct Word {
    arg: usize,
    start: usize,
    end: usize,
}

impl Redactor {
    /// Compiles `config` (with the built-in rules when it says so).
    pub fn new(config: &RedactionConfig) -> Result<Self, RedactError> {
        let mut options = config.secret_options.clone();
        let mut programs = Vec::new();
        let mut patterns = Vec::new();
        if config.builtin {
            options.extend(owned(BUILTIN_SECRET_OPTIONS));
            for (names, attached, separate, pats) in BUILTIN_PROGRAMS {
                programs.push(Program {
                    names: owned(names),
                    attached: owned(attached),
                    separate: owned(separate),
                    patterns: pats.iter().map(|p| compile(p)).collect::<Result<_, _>>()?,
                });
            }
            for p in BUILTIN_PATTERNS {
                patterns.push(compile(p)?);
            }
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
            programs.push(Program {
                names: r.names.clone(),
                attached: r.attached.clone(),
                separate: r.separate.clone(),
                patterns: r
                    .patterns
                    .iter()
                    .map(|p| compile(p))
                    .collect::<Result<_, _>>()?,
            });
        }
        for p in &config.patterns {
            patterns.push(compile(p)?);
        }
        Ok(Self {
            options,
            programs,
            patterns,
        })
    }

    /// The command line of `argv` as one displayable line, secrets replaced by [`REDACTED`].
    ///
    /// Arguments are separated by spaces; one that is empty or holds whitespace, quotes or
    /// backslashes is single-quoted, and control characters are escaped (`\n`, `\x1b`), so the
    /// line reads like what was typed and cannot forge lines of its own.
    pub fn command_line(&self, argv: &[String]) -> String {
        let hidden = self.hidden(argv);
        let mut line = String::new();
        for (i, arg) in argv.iter().enumerate() {
            if i > 0 {
                line.push(' ');
            }
            let text = apply_ranges(arg, hidden.iter().filter(|w| w.arg == i));
            line.push_str(&quote(&text));
        }
        line
    }

    /// Free text (a window title) with secrets replaced; control characters are escaped.
    pub fn text(&self, text: &str) -> String {
        let argv = [text.to_owned()];
        let hidden = self.hidden(&argv);
        escape_controls(&apply_ranges(text, hidden.iter()))
    }

    /// Every range of `argv` that a rule hides.
    fn hidden(&self, argv: &[String]) -> Vec<Word> {
        let mut hidden = self.word_rules(argv);
        hidden.extend(self.pattern_rules(argv));
        hidden
    }

    /// Ranges hidden by option and program rules.
    fn word_rules(&self, argv: &[String]) -> Vec<Word> {
        let words: Vec<Word> = argv
            .iter()
            .enumerate()
            .flat_map(|(arg, a)| split_words(a).map(move |(start, end)| Word { arg, start, end }))
            .collect();
        let text = |w: &Word| &argv[w.arg][w.start..w.end];
        let mut hidden = Vec::new();
        let mut active: Vec<&Program> = Vec::new();
        for (i, w) in words.iter().enumerate() {
            let word = text(w);
            let next = words.get(i + 1);
            for o in &self.options {
                if word == o {
                    hidden.extend(next.copied());
                } else if let Some(rest) = word.strip_prefix(o.as_str())
                    && let Some(value) = rest.strip_prefix('=')
                    && !value.is_empty()
                {
                    hidden.push(Word {
                        start: w.end - value.len(),
                        ..*w
                    });
                }
            }
            for p in &active {
                if p.separate.iter().any(|o| o == word) {
                    hidden.extend(next.copied());
                }
                for prefix in &p.attached {
                    if let Some(rest) = word.strip_prefix(prefix.as_str())
                        && !rest.is_empty()
                    {
                        hidden.push(Word {
                            start: w.end - rest.len(),
                            ..*w
                        });
                    }
                }
            }
            let base = word.rsplit('/').next().unwrap_or(word);
            for p in &self.programs {
                if p.names.iter().any(|n| n == base) && !active.iter().any(|a| std::ptr::eq(*a, p))
                {
                    active.push(p);
                }
            }
        }
        hidden
    }

    /// Ranges matched by patterns over the arguments joined by single spaces (so a pattern can
    /// span `-u` and its value), mapped back onto the arguments.
    fn pattern_rules(&self, argv: &[String]) -> Vec<Word> {
        let present = |p: &Program| {
            argv.iter()
                .flat_map(|a| split_words(a).map(move |(s, e)| &a[s..e]))
                .any(|w| {
                    let base = w.rsplit('/').next().unwrap_or(w);
                    p.names.iter().any(|n| n == base)
                })
        };
        let joined = argv.join(" ");
        let mut starts = Vec::with_capacity(argv.len());
        let mut at = 0;
        for a in argv {
            starts.push(at);
            at += a.len() + 1;
        }
        let scoped = self
            .programs
            .iter()
            .filter(|p| !p.patterns.is_empty() && present(p))
            .flat_map(|p| &p.patterns);
        let mut hidden = Vec::new();
        for re in scoped.chain(&self.patterns) {
            for caps in re.captures_iter(&joined) {
                let Some(m) = caps.name("secret").or_else(|| caps.get(0)) else {
                    continue;
                };
                for (arg, (&s, a)) in starts.iter().zip(argv).enumerate() {
                    let (start, end) = (m.start().max(s), m.end().min(s + a.len()));
                    if start < end {
                        hidden.push(Word {
                            arg,
                            start: start - s,
                            end: end - s,
                        });
                    }
                }
            }
        }
        hidden
    }
}

/// Byte ranges of the whitespace-separated words of `s`.
fn split_words(s: &str) -> impl Iterator<Item = (usize, usize)> + '_ {
    let mut start = None;
    s.char_indices()
        .chain(std::iter::once((s.len(), ' ')))
        .filter_map(move |(i, c)| match (c.is_whitespace(), start) {
            (false, None) => {
                start = Some(i);
                None
            }
            (true, Some(st)) => {
                start = None;
                Some((st, i))
            }
            _ => None,
        })
}

/// `s` with the ranges replaced by [`REDACTED`] (overlapping ranges merge).
fn apply_ranges<'a>(s: &str, ranges: impl Iterator<Item = &'a Word>) -> String {
    let mut r: Vec<(usize, usize)> = ranges.map(|w| (w.start, w.end)).collect();
    r.sort_unstable();
    let mut out = String::with_capacity(s.len());
    let mut at = 0;
    for (start, end) in r {
        if end <= at {
            continue;
        }
        let start = start.max(at);
        out.push_str(&s[at..start]);
        out.push_str(REDACTED);
        at = end;
    }
    out.push_str(&s[at..]);
    out
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
mod tests {
    use super::*;

    fn argv(s: &[&str]) -> Vec<String> {
        s.iter().map(|a| (*a).to_owned()).collect()
    }

    fn builtin() -> Redactor {
        Redactor::new(&RedactionConfig::default()).unwrap()
    }

    fn line(r: &Redactor, a: &[&str]) -> String {
        r.command_line(&argv(a))
    }

    #[test]
    fn secret_options_of_any_program() {
        let r = builtin();
        assert_eq!(
            line(&r, &["tool", "--password=hunter2", "-v"]),
            "tool --password=[REDACTED] -v"
        );
        assert_eq!(
            line(&r, &["tool", "--token", "abc.def", "next"]),
            "tool --token [REDACTED] next"
        );
        assert_eq!(
            line(&r, &["vault", "login", "--secret-key=s3cr3t"]),
            "vault login --secret-key=[REDACTED]"
        );
    }

    #[test]
    fn program_rules_apply_wherever_the_program_appears() {
        let r = builtin();
        assert_eq!(
            line(&r, &["mysql", "-uroot", "-phunter2", "db"]),
            "mysql -uroot -p[REDACTED] db"
        );
        assert_eq!(
            line(&r, &["/usr/bin/sudo", "/usr/bin/mysqldump", "-ps3", "db"]),
            "/usr/bin/sudo /usr/bin/mysqldump -p[REDACTED] db"
        );
        // A script passed to a shell as one argument.
        assert_eq!(
            line(&r, &["sh", "-c", "mysql -uroot -phunter2 < dump.sql"]),
            "sh -c 'mysql -uroot -p[REDACTED] < dump.sql'"
        );
        assert_eq!(
            line(&r, &["sshpass", "-p", "pw", "ssh", "host"]),
            "sshpass -p [REDACTED] ssh host"
        );
        assert_eq!(
            line(&r, &["curl", "-u", "admin:pw", "https://h/"]),
            "curl -u admin:[REDACTED] https://h/"
        );
        assert_eq!(
            line(&r, &["smbclient", "//srv/c$", "-U", "DOM\\admin%pw"]),
            "smbclient //srv/c$ -U 'DOM\\admin%[REDACTED]'"
        );
        assert_eq!(
            line(&r, &["htpasswd", "-b", "/etc/htpasswd", "bob", "pw"]),
            "htpasswd -b /etc/htpasswd bob [REDACTED]"
        );
        assert_eq!(
            line(&r, &["openssl", "enc", "-pass", "pass:pw", "-in", "f"]),
            "openssl enc -pass pass:[REDACTED] -in f"
        );
    }

    #[test]
    fn patterns_hide_urls_assignments_and_headers() {
        let r = builtin();
        assert_eq!(
            line(&r, &["git", "clone", "https://bob:tok3n@git.example/x.git"]),
            "git clone https://bob:[REDACTED]@git.example/x.git"
        );
        assert_eq!(
            line(&r, &["env", "DB_PASSWORD=pw", "GITHUB_TOKEN=ghp_x", "app"]),
            "env DB_PASSWORD=[REDACTED] GITHUB_TOKEN=[REDACTED] app"
        );
        assert_eq!(
            line(
                &r,
                &["curl", "-H", "Authorization: Bearer eyJabc", "https://h/"]
            ),
            "curl -H 'Authorization: Bearer [REDACTED]' https://h/"
        );
    }

    #[test]
    fn ordinary_command_lines_are_left_alone() {
        let r = builtin();
        for a in [
            &["ls", "-p", "/tmp"][..],
            &["grep", "-r", "password", "/etc/ssh"],
            &["git", "commit", "-m", "rotate the password policy"],
            &["mysql", "-p", "payroll"],
            &["passwd", "alice"],
            &["app", "--password-file=/run/secrets/db"],
            &["net", "user", "alice", "/domain"],
            &["docker", "run", "-u", "1000:1000", "img"],
            &["curl", "https://example.com/a:b@c"],
        ] {
            let want: Vec<String> = a.iter().map(|s| quote(s)).collect();
            assert_eq!(line(&r, a), want.join(" "), "{a:?} was altered");
        }
    }

    #[test]
    fn quoting_and_control_characters() {
        let r = builtin();
        assert_eq!(
            line(&r, &["echo", "it's", "", "a\nb", "\u{1b}[2J"]),
            "echo 'it'\\''s' '' 'a\\nb' '\\x1b[2J'"
        );
        assert_eq!(r.text("vim /etc/sudoers\r\n"), "vim /etc/sudoers\\r\\n");
        assert_eq!(
            r.text("root@ws: mysql -uroot -phunter2"),
            "root@ws: mysql -uroot -p[REDACTED]"
        );
    }

    #[test]
    fn configured_rules_and_turning_builtins_off() {
        let cfg: RedactionConfig = toml::from_str(
            r#"
            builtin = false
            secret_options = ["--vault-pass"]
            patterns = ['pin=(?P<secret>\d+)']
            [[programs]]
            names = ["acmectl"]
            attached = ["-K"]
            separate = ["--key"]
            "#,
        )
        .unwrap();
        let r = Redactor::new(&cfg).unwrap();
        assert_eq!(
            line(&r, &["acmectl", "-Kabc", "--key", "def", "pin=1234"]),
            "acmectl -K[REDACTED] --key [REDACTED] pin=[REDACTED]"
        );
        assert_eq!(
            line(&r, &["x", "--vault-pass=v"]),
            "x --vault-pass=[REDACTED]"
        );
        // Built-ins are off: mysql's -p is kept.
        assert_eq!(line(&r, &["mysql", "-pX"]), "mysql -pX");
        // Program rules only after the program's name.
        assert_eq!(line(&r, &["other", "-Kabc"]), "other -Kabc");
    }

    #[test]
    fn bad_rules_are_refused() {
        let bad_regex = RedactionConfig {
            patterns: vec!["(unclosed".into()],
            ..RedactionConfig::default()
        };
        assert!(matches!(
            Redactor::new(&bad_regex),
            Err(RedactError::Pattern { .. })
        ));
        let bad_program = RedactionConfig {
            programs: vec![ProgramRule {
                names: vec!["/usr/bin/x".into()],
                attached: vec![],
                separate: vec![],
                patterns: vec![],
            }],
            ..RedactionConfig::default()
        };
        assert!(matches!(
            Redactor::new(&bad_program),
            Err(RedactError::Invalid(_))
        ));
    }
}
