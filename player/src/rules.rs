//! Detection rules: which recorded events a reviewer should look at, how serious each is, and why.
//!
//! A rule set is the built-in rules (`player/rules/builtin.toml`, versioned) plus an operator's
//! file (`--rules FILE`: rules of its own, and built-ins it disables). The indexer evaluates it on
//! every event it writes, in the same transaction ([`crate::index::Batch::flags`]), so a session is
//! never listed without its flags; `jitrec-player rules apply` evaluates the rule set again over
//! what the index holds, for old sessions after the rules changed. A match is a **flag**: the rule,
//! its severity and sentence, at the event's media time. A session's **risk** is its most severe
//! flag.
//!
//! Rules see every process of the session, the elevated user's own and the rest of the
//! machine's alike (`in_session` is a condition a rule may set, not a filter before them): a
//! command handed to a daemon (`systemd-run`, cron) runs outside the user's process tree and
//! must still be flagged.
//!
//! Everything a rule is matched against was written by the endpoint, so possibly by the person
//! recorded: patterns are `regex` expressions (linear time whatever the input, compiled size
//! bounded), matched against the index's bounded copy of the event (the same bytes whether
//! evaluated at indexing or again later), and the rule file itself is bounded in size and count.

use std::collections::{HashMap, HashSet};
use std::path::Path;

use chrono::{DateTime, Utc};
use jitrec_format::{EventKind, SessionId};
use serde::{Deserialize, Serialize};

use crate::index::{EventRow, Index, IndexError};

/// The built-in rules, compiled into the player.
pub const BUILTIN: &str = include_str!("../rules/builtin.toml");

/// The largest rule file read.
pub const MAX_RULES_FILE: u64 = 1 << 20;

/// The most rules a set may hold.
pub const MAX_RULES: usize = 1_000;

/// The largest compiled regex of one rule's pattern.
const REGEX_SIZE_LIMIT: usize = 1 << 20;

/// The largest compiled set of every rule's command pattern.
const SET_SIZE_LIMIT: usize = 64 << 20;

/// The most processes of one session whose program names are kept to match `parent` (a fork
/// bomb forgets the oldest at once rather than growing without bound).
const MAX_TRACKED_PROCESSES: usize = 65_536;

/// Why a rule set could not be made.
#[derive(Debug, thiserror::Error)]
pub enum RulesError {
    #[error("reading {path}: {source}")]
    Read {
        path: String,
        source: std::io::Error,
    },
    #[error("{path}: larger than {MAX_RULES_FILE} bytes")]
    TooLarge { path: String },
    #[error("{origin}: {message}")]
    Invalid { origin: String, message: String },
    #[error(transparent)]
    Index(#[from] IndexError),
}

/// How serious a flag is, least first.
#[derive(
    Debug,
    Clone,
    Copy,
    Default,
    PartialEq,
    Eq,
    PartialOrd,
    Ord,
    Hash,
    Serialize,
    Deserialize,
    clap::ValueEnum,
)]
#[serde(rename_all = "snake_case")]
pub enum Severity {
    #[default]
    Info,
    Low,
    Medium,
    High,
    Critical,
}

impl Severity {
    pub const ALL: [Severity; 5] = [
        Severity::Info,
        Severity::Low,
        Severity::Medium,
        Severity::High,
        Severity::Critical,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Severity::Info => "info",
            Severity::Low => "low",
            Severity::Medium => "medium",
            Severity::High => "high",
            Severity::Critical => "critical",
        }
    }

    /// 0 (info) to 4 (critical): the order the index compares.
    pub fn rank(self) -> i64 {
        self as i64
    }

    pub fn from_rank(rank: i64) -> Option<Severity> {
        Severity::ALL.get(usize::try_from(rank).ok()?).copied()
    }

    /// The severity of `rank`, out-of-range ranks taken as the nearest end.
    pub fn clamped(rank: i64) -> Severity {
        Severity::ALL[rank.clamp(0, 4) as usize]
    }

    pub fn parse(s: &str) -> Option<Severity> {
        Severity::ALL.into_iter().find(|v| v.as_str() == s)
    }
}

/// What a rule file says, before it is checked.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RuleFile {
    /// The file's own version of its rules, recorded with the set's.
    #[serde(default)]
    version: Option<u32>,
    #[serde(default, rename = "rule")]
    rules: Vec<RuleSpec>,
    /// Ids of built-in rules to switch off.
    #[serde(default)]
    disable: Vec<String>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RuleSpec {
    id: String,
    severity: Severity,
    sentence: String,
    #[serde(default)]
    on: On,
    #[serde(default)]
    program: Vec<String>,
    #[serde(default)]
    command: Option<String>,
    #[serde(default)]
    unless: Option<String>,
    #[serde(default)]
    user: Vec<String>,
    #[serde(default)]
    parent: Vec<String>,
    #[serde(default)]
    in_session: Option<bool>,
    #[serde(default)]
    title: Option<String>,
    #[serde(default)]
    area: Vec<String>,
    #[serde(default)]
    action: Vec<String>,
    #[serde(default)]
    cut: Option<bool>,
}

/// Which events a rule looks at.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum On {
    #[default]
    Process,
    Window,
    /// An entry of the change ledger (`change` events): matched on `area`, `action`, and
    /// `command` against its subject and detail.
    Change,
}

/// One checked rule.
#[derive(Debug, Clone)]
pub struct Rule {
    pub id: String,
    pub severity: Severity,
    pub sentence: String,
    pub on: On,
    /// `builtin` or the operator's file.
    pub origin: String,
    programs: HashSet<String>,
    command: Option<regex::Regex>,
    unless: Option<regex::Regex>,
    users: HashSet<String>,
    parents: HashSet<String>,
    in_session: Option<bool>,
    title: Option<regex::Regex>,
    areas: HashSet<String>,
    actions: HashSet<String>,
    /// Whether the event is one the index keeps cut (too large to keep whole).
    cut: Option<bool>,
}

/// A rule as listed (`jitrec-player rules list`, `/api/rules`).
#[derive(Debug, Clone, Serialize)]
pub struct RuleInfo {
    pub id: String,
    pub severity: Severity,
    pub sentence: String,
    pub on: On,
    pub origin: String,
    pub enabled: bool,
}

/// The rules in force: built-ins not disabled, then the operator's.
#[derive(Debug, Clone)]
pub struct RuleSet {
    rules: Vec<Rule>,
    disabled: Vec<RuleInfo>,
    /// Every rule's `command` pattern in one set, so a command line is scanned once however
    /// many rules look at it; `command_of[i]` is rule i's pattern in it.
    commands: regex::RegexSet,
    command_of: Vec<Option<usize>>,
    /// `builtin-2`, or `builtin-2+<file's version or digest>`: which rules flagged what.
    pub version: String,
}

/// A rule's match on one event.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct FlagRow {
    pub seq: u64,
    pub idx: u32,
    pub media_us: u64,
    pub utc: DateTime<Utc>,
    pub rule: String,
    pub severity: Severity,
    pub sentence: String,
    /// The event's text (command line or title, as the index keeps it).
    pub text: String,
}

/// The facts of an event rules match on.
#[derive(Debug, Default)]
struct Subject<'a> {
    on: Option<On>,
    programs: Vec<String>,
    command: &'a str,
    user: &'a str,
    parent: Option<&'a str>,
    in_session: Option<bool>,
    title: &'a str,
    area: &'a str,
    action: &'a str,
    /// A change's subject and detail, which `command` is matched against.
    change_text: String,
    /// The index keeps the event cut ([`EventRow::is_cut`]).
    cut: bool,
}

/// A program's name as rules name it: the last path component (`/` or `\`), lower-cased,
/// without `.exe`.
pub fn program_name(path: &str) -> String {
    let base = path
        .rsplit(['/', '\\'])
        .next()
        .unwrap_or(path)
        .trim_matches('"');
    let lower = base.to_lowercase();
    lower
        .strip_suffix(".exe")
        .map(str::to_owned)
        .unwrap_or(lower)
}

/// The first word of a command line as the redactor quotes it.
fn argv0(command_line: &str) -> &str {
    let s = command_line.trim_start();
    if let Some(rest) = s.strip_prefix('\'') {
        return rest.split('\'').next().unwrap_or("");
    }
    if let Some(rest) = s.strip_prefix('"') {
        return rest.split('"').next().unwrap_or("");
    }
    s.split_whitespace().next().unwrap_or("")
}

fn compile(origin: &str, id: &str, what: &str, pattern: &str) -> Result<regex::Regex, RulesError> {
    regex::RegexBuilder::new(&ascii_boundaries(pattern))
        .size_limit(REGEX_SIZE_LIMIT)
        .build()
        .map_err(|e| RulesError::Invalid {
            origin: origin.to_owned(),
            message: format!("rule {id}: {what}: {e}"),
        })
}

/// `pattern` with its word boundaries (`\b`, `\B`) made ASCII ones (`(?-u:\b)`). A Unicode
/// word boundary makes the regex crate leave its fast automaton for a slow one on any text that
/// is not ASCII: measured, 2 MiB of accented letters took 1.4 s to match against the built-in
/// rules, which an endpoint could repeat in every chunk to stall indexing. An ASCII boundary
/// treats a non-ASCII letter as a non-word character, which command lines do not depend on.
fn ascii_boundaries(pattern: &str) -> String {
    let mut out = String::with_capacity(pattern.len());
    let mut chars = pattern.chars();
    while let Some(c) = chars.next() {
        if c != '\\' {
            out.push(c);
            continue;
        }
        match chars.next() {
            Some('b') => out.push_str("(?-u:\\b)"),
            Some('B') => out.push_str("(?-u:\\B)"),
            Some(next) => {
                out.push('\\');
                out.push(next);
            }
            None => out.push('\\'),
        }
    }
    out
}

fn valid_id(id: &str) -> bool {
    !id.is_empty()
        && id.len() <= 64
        && id
            .chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || "._-".contains(c))
}

impl Rule {
    fn from_spec(spec: RuleSpec, origin: &str) -> Result<Rule, RulesError> {
        let bad = |message: String| RulesError::Invalid {
            origin: origin.to_owned(),
            message,
        };
        if !valid_id(&spec.id) {
            return Err(bad(format!(
                "rule id {:?}: use 1-64 of a-z, 0-9, '.', '_', '-'",
                crate::auth::bounded(&spec.id, 80)
            )));
        }
        let id = spec.id;
        if spec.sentence.trim().is_empty() || spec.sentence.chars().count() > 300 {
            return Err(bad(format!("rule {id}: a sentence of 1-300 characters")));
        }
        let re = |what: &str, p: &Option<String>| {
            p.as_deref()
                .map(|p| compile(origin, &id, what, p))
                .transpose()
        };
        let rule = Rule {
            severity: spec.severity,
            sentence: spec.sentence,
            on: spec.on,
            origin: origin.to_owned(),
            programs: spec.program.iter().map(|p| program_name(p)).collect(),
            command: re("command", &spec.command)?,
            unless: re("unless", &spec.unless)?,
            users: spec.user.into_iter().collect(),
            parents: spec.parent.iter().map(|p| program_name(p)).collect(),
            in_session: spec.in_session,
            title: re("title", &spec.title)?,
            areas: spec.area.into_iter().collect(),
            actions: spec.action.into_iter().collect(),
            cut: spec.cut,
            id,
        };
        match rule.on {
            On::Process
                if rule.programs.is_empty() && rule.command.is_none() && rule.cut != Some(true) =>
            {
                Err(bad(format!(
                    "rule {}: a process rule needs `program`, `command` or `cut = true` (it would match every process)",
                    rule.id
                )))
            }
            On::Window if rule.title.is_none() => Err(bad(format!(
                "rule {}: a window rule needs `title`",
                rule.id
            ))),
            On::Window if !rule.programs.is_empty() || rule.command.is_some() => Err(bad(format!(
                "rule {}: `program` and `command` are for process rules",
                rule.id
            ))),
            On::Change if rule.areas.is_empty() => Err(bad(format!(
                "rule {}: a change rule needs `area` (accounts, sudo, cron, services, packages, files)",
                rule.id
            ))),
            On::Change
                if !rule.programs.is_empty()
                    || !rule.parents.is_empty()
                    || rule.title.is_some()
                    || rule.in_session.is_some() =>
            {
                Err(bad(format!(
                    "rule {}: a change rule matches `area`, `action` and `command` only",
                    rule.id
                )))
            }
            _ if rule.on != On::Change && (!rule.areas.is_empty() || !rule.actions.is_empty()) => {
                Err(bad(format!(
                    "rule {}: `area` and `action` are for change rules (on = \"change\")",
                    rule.id
                )))
            }
            _ => Ok(rule),
        }
    }

    /// Whether the rule matches `s`; `command_hit` says whether its command pattern matched
    /// (computed once for every rule, [`RuleSet::commands`]).
    fn matches(&self, s: &Subject<'_>, command_hit: bool) -> bool {
        if s.on != Some(self.on) {
            return false;
        }
        if !self.programs.is_empty() && !s.programs.iter().any(|p| self.programs.contains(p)) {
            return false;
        }
        if self.command.is_some() && !command_hit {
            return false;
        }
        // What `unless` is matched against: a change's text, a window's title, a command line.
        let text = match s.on {
            Some(On::Change) => s.change_text.as_str(),
            Some(On::Window) => s.title,
            _ => s.command,
        };
        if let Some(re) = &self.unless
            && re.is_match(text)
        {
            return false;
        }
        if !self.users.is_empty() && !self.users.contains(s.user) {
            return false;
        }
        if !self.parents.is_empty() && !s.parent.is_some_and(|p| self.parents.contains(p)) {
            return false;
        }
        if let Some(want) = self.in_session
            && s.in_session != Some(want)
        {
            return false;
        }
        if let Some(re) = &self.title
            && !re.is_match(s.title)
        {
            return false;
        }
        if !self.areas.is_empty() && !self.areas.contains(s.area) {
            return false;
        }
        if !self.actions.is_empty() && !self.actions.contains(s.action) {
            return false;
        }
        if let Some(want) = self.cut
            && s.cut != want
        {
            return false;
        }
        true
    }

    fn info(&self, enabled: bool) -> RuleInfo {
        RuleInfo {
            id: self.id.clone(),
            severity: self.severity,
            sentence: self.sentence.clone(),
            on: self.on,
            origin: self.origin.clone(),
            enabled,
        }
    }
}

fn parse_file(text: &str, origin: &str) -> Result<RuleFile, RulesError> {
    toml::from_str(text).map_err(|e| RulesError::Invalid {
        origin: origin.to_owned(),
        message: e.to_string(),
    })
}

impl RuleSet {
    /// The built-in rules alone.
    pub fn builtin() -> RuleSet {
        // The built-in file is part of the program and tested (`the_builtin_rules_load`).
        RuleSet::with_file_text(None).expect("the built-in rules are valid")
    }

    /// The built-ins with the operator's rule file at `path`, if any.
    pub fn load(path: Option<&Path>) -> Result<RuleSet, RulesError> {
        let Some(path) = path else {
            return Ok(RuleSet::builtin());
        };
        let shown = path.display().to_string();
        let read_err = |source| RulesError::Read {
            path: shown.clone(),
            source,
        };
        let file = std::fs::File::open(path).map_err(read_err)?;
        let mut text = String::new();
        std::io::Read::read_to_string(
            &mut std::io::Read::take(file, MAX_RULES_FILE + 1),
            &mut text,
        )
        .map_err(read_err)?;
        if text.len() as u64 > MAX_RULES_FILE {
            return Err(RulesError::TooLarge { path: shown });
        }
        RuleSet::with_file_text(Some((&text, &shown)))
    }

    fn with_file_text(file: Option<(&str, &str)>) -> Result<RuleSet, RulesError> {
        let builtin = parse_file(BUILTIN, "builtin")?;
        let mut version = format!("builtin-{}", builtin.version.unwrap_or(0));
        let mut rules = builtin
            .rules
            .into_iter()
            .map(|r| Rule::from_spec(r, "builtin"))
            .collect::<Result<Vec<_>, _>>()?;
        let mut disabled = Vec::new();
        if let Some((text, origin)) = file {
            let own = parse_file(text, origin)?;
            let bad = |message: String| RulesError::Invalid {
                origin: origin.to_owned(),
                message,
            };
            for id in &own.disable {
                let Some(at) = rules.iter().position(|r| &r.id == id) else {
                    return Err(bad(format!(
                        "`disable` names {:?}, which is not a built-in rule (`jitrec-player rules list`)",
                        crate::auth::bounded(id, 80)
                    )));
                };
                disabled.push(rules.remove(at).info(false));
            }
            for spec in own.rules {
                let rule = Rule::from_spec(spec, origin)?;
                if rules.iter().any(|r| r.id == rule.id) || disabled.iter().any(|r| r.id == rule.id)
                {
                    return Err(bad(format!(
                        "rule {} is defined twice (to change a built-in one, disable it and add yours under another id)",
                        rule.id
                    )));
                }
                rules.push(rule);
            }
            if rules.len() > MAX_RULES {
                return Err(bad(format!("more than {MAX_RULES} rules")));
            }
            // The file's own version when it gives one; otherwise a digest of it, so a changed
            // file is a changed set either way.
            let digest = jitrec_format::Sha256Digest::of(text.as_bytes()).to_string();
            match own.version {
                Some(v) => version.push_str(&format!("+file-{v}-{}", &digest[..12])),
                None => version.push_str(&format!("+file-{}", &digest[..12])),
            }
        }
        let mut patterns = Vec::new();
        let command_of = rules
            .iter()
            .map(|r| {
                r.command.as_ref().map(|re| {
                    patterns.push(re.as_str().to_owned());
                    patterns.len() - 1
                })
            })
            .collect();
        let commands = regex::RegexSetBuilder::new(&patterns)
            .size_limit(SET_SIZE_LIMIT)
            .build()
            .map_err(|e| RulesError::Invalid {
                origin: file.map_or("builtin", |(_, o)| o).to_owned(),
                message: format!("the rules' command patterns together: {e}"),
            })?;
        Ok(RuleSet {
            rules,
            disabled,
            commands,
            command_of,
            version,
        })
    }

    /// Every rule, enabled or not, as listed.
    pub fn list(&self) -> Vec<RuleInfo> {
        let mut out: Vec<RuleInfo> = self.rules.iter().map(|r| r.info(true)).collect();
        out.extend(self.disabled.iter().cloned());
        out
    }

    /// The flags of `events` (one session's, in order, as the index holds them), with `procs`
    /// carrying the session's processes from one call to the next (for `parent`).
    pub fn evaluate(&self, events: &[EventRow], procs: &mut Processes) -> Vec<FlagRow> {
        let mut out = Vec::new();
        for e in events {
            let parsed: Option<EventKind> = serde_json::from_str(e.data.as_str()).ok();
            self.evaluate_one(e, parsed.as_ref(), procs, &mut out);
        }
        out
    }

    /// The flags of `rows` matched against the whole events they were made of (`whole[i]` is
    /// `rows[i]`'s event), as the indexer has them: a command hidden in the middle of a command
    /// line padded on both sides, past what the index keeps, is still found. What else a rule
    /// sees of the row (whether it is cut) is the row's, as [`RuleSet::evaluate`] sees it.
    pub fn evaluate_whole(
        &self,
        rows: &[EventRow],
        whole: &[jitrec_format::Event],
        procs: &mut Processes,
    ) -> Vec<FlagRow> {
        let mut out = Vec::new();
        for (i, e) in rows.iter().enumerate() {
            match whole.get(i) {
                Some(w) => match within_whole_bound(&w.event) {
                    Some(cut) => self.evaluate_one(e, Some(&cut), procs, &mut out),
                    None => self.evaluate_one(e, Some(&w.event), procs, &mut out),
                },
                None => {
                    let parsed: Option<EventKind> = serde_json::from_str(e.data.as_str()).ok();
                    self.evaluate_one(e, parsed.as_ref(), procs, &mut out);
                }
            }
        }
        out
    }

    /// The flags of one event, `parsed` being its content (`None`: its kept copy did not
    /// parse, so its bounded text is matched).
    fn evaluate_one(
        &self,
        e: &EventRow,
        parsed: Option<&EventKind>,
        procs: &mut Processes,
        out: &mut Vec<FlagRow>,
    ) {
        {
            let mut s = Subject::default();
            match parsed {
                Some(EventKind::ProcessStart(p)) => {
                    let mut programs = vec![program_name(&p.exe)];
                    let first = program_name(argv0(&p.command_line));
                    if first != programs[0] {
                        programs.push(first);
                    }
                    procs.started(p.pid, programs[0].clone());
                    s = Subject {
                        on: Some(On::Process),
                        parent: procs.program(p.ppid),
                        programs,
                        command: &p.command_line,
                        user: &p.user.name,
                        in_session: p.in_session,
                        ..Subject::default()
                    };
                }
                Some(EventKind::WindowFocus(w) | EventKind::WindowTitle(w)) => {
                    s.on = Some(On::Window);
                    s.title = &w.title;
                }
                Some(EventKind::Change {
                    area,
                    action,
                    subject,
                    detail,
                }) => {
                    s.on = Some(On::Change);
                    s.area = area;
                    s.action = action;
                    s.change_text = match detail {
                        Some(d) => format!("{subject} {d}"),
                        None => subject.clone(),
                    };
                }
                // An event too large for the index kept whole: its (bounded) text is what is
                // left to match, as a command line of a process whose program is its first word.
                None if e.kind == "process_start" => {
                    s.on = Some(On::Process);
                    s.programs = vec![program_name(argv0(&e.text))];
                    s.command = &e.text;
                }
                None if e.kind == "window_focus" || e.kind == "window_title" => {
                    s.on = Some(On::Window);
                    s.title = &e.text;
                }
                _ => {}
            }
            if s.on.is_none() {
                return;
            }
            s.cut = e.is_cut();
            let hits = self.commands.matches(if s.on == Some(On::Change) {
                &s.change_text
            } else {
                s.command
            });
            let matching = self
                .rules
                .iter()
                .zip(&self.command_of)
                .filter(|(r, at)| r.matches(&s, at.is_some_and(|i| hits.matched(i))))
                .map(|(r, _)| r);
            for r in matching {
                out.push(FlagRow {
                    seq: e.seq,
                    idx: e.idx,
                    media_us: e.media_us,
                    utc: e.utc,
                    rule: r.id.clone(),
                    severity: r.severity,
                    sentence: r.sentence.clone(),
                    text: crate::auth::bounded(&e.text, 1024),
                });
            }
        }
    }
}

/// Characters of a command line or title the indexer matches whole; a longer one (up to the
/// 64 MiB an events payload may hold) is matched on its first and last half of this, and is
/// flagged as cut besides: a regex scan costs time linear in what it reads, and an endpoint
/// must not make every chunk's indexing take seconds.
pub const WHOLE_MAX: usize = 1 << 20;

/// `e` cut to [`WHOLE_MAX`] when its command line or title is longer; `None` when it is not.
fn within_whole_bound(e: &EventKind) -> Option<EventKind> {
    use crate::auth::bounded_ends;
    match e {
        EventKind::ProcessStart(p) if p.command_line.len() > WHOLE_MAX => {
            let mut p = p.clone();
            p.command_line = bounded_ends(&p.command_line, WHOLE_MAX);
            Some(EventKind::ProcessStart(p))
        }
        EventKind::WindowFocus(w) if w.title.len() > WHOLE_MAX => {
            let mut w = w.clone();
            w.title = bounded_ends(&w.title, WHOLE_MAX);
            Some(EventKind::WindowFocus(w))
        }
        EventKind::WindowTitle(w) if w.title.len() > WHOLE_MAX => {
            let mut w = w.clone();
            w.title = bounded_ends(&w.title, WHOLE_MAX);
            Some(EventKind::WindowTitle(w))
        }
        _ => None,
    }
}

/// The program names of a session's processes by pid, for rules on the parent.
#[derive(Debug, Default, Clone)]
pub struct Processes {
    by_pid: HashMap<u32, String>,
}

impl Processes {
    fn started(&mut self, pid: u32, program: String) {
        if self.by_pid.len() >= MAX_TRACKED_PROCESSES {
            self.by_pid.clear();
        }
        self.by_pid.insert(pid, program);
    }

    fn program(&self, pid: u32) -> Option<&str> {
        self.by_pid.get(&pid).map(String::as_str)
    }
}

/// What `rules apply` did.
#[derive(Debug, Default, Serialize)]
pub struct ApplyReport {
    pub sessions: u64,
    pub flags: u64,
    /// Sessions whose flags changed.
    pub changed: u64,
}

/// Evaluates `rules` again over the events the index holds for `sessions` (every session when
/// `None`) and replaces their flags, one session per transaction.
pub fn apply(
    index: &dyn Index,
    rules: &RuleSet,
    sessions: Option<&[SessionId]>,
) -> Result<ApplyReport, RulesError> {
    let ids = match sessions {
        Some(ids) => ids.to_vec(),
        None => all_sessions(index)?,
    };
    let mut report = ApplyReport::default();
    for id in ids {
        let chunks = index.chunks(id)?;
        let mut procs = Processes::default();
        // Page by page: a session's events are never all in memory at once.
        let mut flags = Vec::new();
        let mut cut: HashSet<(u64, u32)> = HashSet::new();
        let mut after = None;
        loop {
            let page = index.events_page(id, after, crate::index::MAX_EVENTS_PAGE)?;
            flags.extend(rules.evaluate(&page, &mut procs));
            // The indexer matched the whole events; of one the index keeps cut, only the kept
            // copy is here to match. A flag found on the whole event cannot be disproved by the
            // copy, so it stays (below), as long as its rule is still in force.
            cut.extend(page.iter().filter(|e| e.is_cut()).map(|e| (e.seq, e.idx)));
            if page.len() < crate::index::MAX_EVENTS_PAGE as usize {
                break;
            }
            after = page.last().map(|e| (e.seq, e.idx));
        }
        let before = index.flags(id)?;
        if !cut.is_empty() {
            let in_force: HashSet<&str> = rules.rules.iter().map(|r| r.id.as_str()).collect();
            let found: HashSet<(u64, u32, String)> = flags
                .iter()
                .map(|f| (f.seq, f.idx, f.rule.clone()))
                .collect();
            flags.extend(
                before
                    .iter()
                    .filter(|f| {
                        cut.contains(&(f.seq, f.idx))
                            && in_force.contains(f.rule.as_str())
                            && !found.contains(&(f.seq, f.idx, f.rule.clone()))
                    })
                    .cloned(),
            );
            flags.sort_by(|a, b| (a.seq, a.idx, &a.rule).cmp(&(b.seq, b.idx, &b.rule)));
        }
        if before != flags {
            report.changed += 1;
        }
        report.sessions += 1;
        report.flags += flags.len() as u64;
        let mut batch = crate::index::Batch::default();
        // Every chunk's flags are replaced, those of chunks that now have none too.
        let mut by_seq: std::collections::BTreeMap<u64, Vec<FlagRow>> =
            chunks.iter().map(|c| (c.seq, Vec::new())).collect();
        for f in flags {
            by_seq.entry(f.seq).or_default().push(f);
        }
        batch
            .flags
            .extend(by_seq.into_iter().map(|(seq, f)| (id, seq, f)));
        index.apply(&batch)?;
    }
    Ok(report)
}

fn all_sessions(index: &dyn Index) -> Result<Vec<SessionId>, IndexError> {
    let rows = index.query("SELECT id FROM sessions ORDER BY id", &[])?;
    Ok(rows
        .iter()
        .filter_map(|r| r.first().and_then(|v| v.text()))
        .filter_map(|t| t.parse().ok())
        .collect())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::index::EventRow;
    use jitrec_format::{Event, MediaTime, ProcessStart, UserRef, WindowInfo};

    fn process(pid: u32, ppid: u32, exe: &str, command_line: &str, user: &str) -> Event {
        Event {
            media_us: MediaTime::from_micros(u64::from(pid) * 1000),
            utc: DateTime::from_timestamp(1_700_000_000, 0).unwrap(),
            event: EventKind::ProcessStart(ProcessStart {
                pid,
                ppid,
                user: UserRef {
                    name: user.into(),
                    id: "0".into(),
                },
                exe: exe.into(),
                command_line: command_line.into(),
                elevated: true,
                in_session: Some(true),
            }),
        }
    }

    fn rows(events: &[Event]) -> Vec<EventRow> {
        events
            .iter()
            .enumerate()
            .map(|(i, e)| EventRow::new(0, i as u32, e))
            .collect()
    }

    fn flagged(rules: &RuleSet, exe: &str, command_line: &str) -> Vec<String> {
        let e = [process(10, 1, exe, command_line, "root")];
        rules
            .evaluate(&rows(&e), &mut Processes::default())
            .into_iter()
            .map(|f| f.rule)
            .collect()
    }

    #[test]
    fn the_builtin_rules_load() {
        let r = RuleSet::builtin();
        assert!(r.list().len() >= 25, "{}", r.list().len());
        assert_eq!(r.version, "builtin-2");
    }

    #[test]
    fn builtin_rules_flag_what_matters_and_not_the_rest() {
        let r = RuleSet::builtin();
        let cases: &[(&str, &str, &[&str])] = &[
            ("/usr/sbin/useradd", "useradd -m eve", &["account.create"]),
            (
                "/usr/sbin/usermod",
                "usermod -aG sudo eve",
                &["account.group_add", "account.modify"],
            ),
            (
                "/usr/sbin/usermod",
                "usermod -s /bin/zsh eve",
                &["account.modify"],
            ),
            ("/usr/bin/passwd", "passwd eve", &["account.password"]),
            (
                "/usr/bin/systemctl",
                "systemctl stop cron",
                &["service.change"],
            ),
            ("/usr/bin/systemctl", "systemctl status cron", &[]),
            (
                "/usr/bin/crontab",
                "crontab /tmp/tab",
                &["persistence.cron"],
            ),
            ("/usr/bin/crontab", "crontab -l", &[]),
            (
                "/usr/bin/apt-get",
                "apt-get install -y ./hello.deb",
                &["package.change"],
            ),
            ("/usr/bin/apt-get", "apt-get update", &[]),
            ("/usr/bin/dpkg", "dpkg -i hello.deb", &["package.change"]),
            (
                "/usr/bin/bash",
                "bash -c 'history -c; ls'",
                &["history.clear"],
            ),
            ("/usr/bin/chmod", "chmod u+s /tmp/sh", &["file.setuid"]),
            ("/usr/bin/chmod", "chmod 4755 /tmp/sh", &["file.setuid"]),
            ("/usr/bin/chmod", "chmod 755 /tmp/sh", &[]),
            ("/usr/sbin/iptables", "iptables -F", &["firewall.open"]),
            ("/usr/bin/rm", "rm -rf /var/log/auth.log", &["logs.delete"]),
            (
                "/usr/bin/truncate",
                "truncate -s0 /var/log/syslog",
                &["logs.delete"],
            ),
            (
                "/usr/bin/pkill",
                "pkill -9 jitrec-recorder",
                &["jitrec.touched"],
            ),
            (
                "C:\\Windows\\System32\\NET.EXE",
                "net user eve P@ss /add",
                &["account.windows_user_add"],
            ),
            (
                "C:\\Windows\\System32\\net.exe",
                "net localgroup administrators eve /add",
                &["account.windows_admins_add"],
            ),
            (
                "C:\\Windows\\System32\\wevtutil.exe",
                "wevtutil cl Security",
                &["logs.clear_windows"],
            ),
            (
                "C:\\Windows\\System32\\WindowsPowerShell\\v1.0\\powershell.exe",
                "powershell Set-MpPreference -DisableRealtimeMonitoring $true",
                &["security.defender_off"],
            ),
            (
                "C:\\Windows\\System32\\schtasks.exe",
                "schtasks /create /tn x /tr c:\\x.exe /sc onlogon",
                &["persistence.windows_task"],
            ),
            (
                "/usr/bin/systemctl",
                "systemctl stop auditd",
                &["service.change", "security.audit_off"],
            ),
            (
                "/usr/bin/systemctl",
                "systemctl stop jitrec-recorder",
                &["service.change", "jitrec.touched"],
            ),
            (
                "/usr/bin/rm",
                "rm -rf /var/lib/jitrec/spool",
                &["jitrec.touched"],
            ),
            // A name that merely contains the word is not jitrec.
            (
                "/usr/sbin/useradd",
                "useradd jitrec-fan",
                &["account.create"],
            ),
            ("/usr/bin/ls", "ls -l /etc", &[]),
            ("/usr/bin/vi", "vi notes.txt", &[]),
        ];
        for (exe, cmd, want) in cases {
            let mut got = flagged(&r, exe, cmd);
            got.sort();
            let mut want: Vec<String> = want.iter().map(|s| (*s).to_owned()).collect();
            want.sort();
            assert_eq!(got, want, "{cmd}");
        }
    }

    #[test]
    fn ledger_entries_are_flagged_by_change_rules() {
        use jitrec_format::MediaTime;
        let change = |area: &str, action: &str, subject: &str, detail: Option<&str>| Event {
            media_us: MediaTime::from_micros(1),
            utc: DateTime::from_timestamp(1_700_000_000, 0).unwrap(),
            event: EventKind::Change {
                area: area.into(),
                action: action.into(),
                subject: subject.into(),
                detail: detail.map(str::to_owned),
            },
        };
        let cases: &[(Event, &[&str])] = &[
            (
                change("accounts", "member_added", "eve", Some("group sudo")),
                &["change.admin_member"],
            ),
            (
                change("accounts", "member_added", "eve", Some("group audio")),
                &[],
            ),
            (
                change("accounts", "user_added", "eve", Some("uid 1001")),
                &["change.account"],
            ),
            (
                change(
                    "sudo",
                    "line_added",
                    "/etc/sudoers.d/eve",
                    Some("eve ALL=(ALL) NOPASSWD: ALL"),
                ),
                &["change.sudo_nopasswd", "change.sudo_rule"],
            ),
            (
                change("files", "modified", "/root/.ssh/authorized_keys", None),
                &["change.ssh_keys"],
            ),
            (
                change(
                    "files",
                    "attributes",
                    "/tmp/sh",
                    Some("mode 4755, owner 0:0"),
                ),
                &["change.setuid_file"],
            ),
            (
                change(
                    "files",
                    "attributes",
                    "/tmp/sh",
                    Some("mode 755, owner 0:0"),
                ),
                &[],
            ),
            (
                change("files", "modified", "/root/.bash_history", None),
                &["change.shell_history"],
            ),
            (change("files", "modified", "/etc/hosts", None), &[]),
            (
                change(
                    "packages",
                    "installed",
                    "hello:amd64",
                    Some("version 2.10-3"),
                ),
                &["change.package"],
            ),
        ];
        let r = RuleSet::builtin();
        for (e, want) in cases {
            let mut got: Vec<String> = r
                .evaluate(&rows(std::slice::from_ref(e)), &mut Processes::default())
                .into_iter()
                .map(|f| f.rule)
                .collect();
            got.sort();
            assert_eq!(got, *want, "{:?}", e.event);
        }
    }

    #[test]
    fn a_ledger_entry_too_large_for_the_index_is_still_matched() {
        // Over the index's 8 KiB of JSON (emoji are 4 bytes and escaped): kept cut, not
        // dropped to a marker, so the change rules still see it.
        let detail = format!("eve ALL=(ALL) NOPASSWD: ALL # {}", "\u{1F600}".repeat(2000));
        let e = Event {
            media_us: jitrec_format::MediaTime::from_micros(1),
            utc: DateTime::from_timestamp(1_700_000_000, 0).unwrap(),
            event: EventKind::Change {
                area: "sudo".into(),
                action: "line_added".into(),
                subject: "/etc/sudoers.d/x".into(),
                detail: Some(detail),
            },
        };
        let mut got: Vec<String> = RuleSet::builtin()
            .evaluate(&rows(&[e]), &mut Processes::default())
            .into_iter()
            .map(|f| f.rule)
            .collect();
        got.sort();
        assert_eq!(got, ["change.sudo_nopasswd", "change.sudo_rule"]);
    }

    #[test]
    fn a_process_gone_before_it_was_read_is_matched_by_its_command_line() {
        // No exe (the recorder found /proc empty): argv[0] names the program.
        assert_eq!(
            flagged(&RuleSet::builtin(), "", "useradd eve"),
            ["account.create"]
        );
    }

    #[test]
    fn operator_rules_add_disable_and_match_parents_users_and_titles() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("rules.toml");
        std::fs::write(
            &path,
            r#"
version = 7
disable = ["remote.download"]
[[rule]]
id = "site.shell_from_web"
severity = "critical"
sentence = "A shell was started by the web server."
program = ["sh", "bash"]
parent = ["nginx"]
[[rule]]
id = "site.as_backup"
severity = "info"
sentence = "The backup account ran something."
command = "."
user = ["backup"]
[[rule]]
id = "site.secret_window"
on = "window"
severity = "medium"
sentence = "The vault was opened."
title = "(?i)vault"
"#,
        )
        .unwrap();
        let r = RuleSet::load(Some(&path)).unwrap();
        assert!(r.version.starts_with("builtin-2+file-7-"), "{}", r.version);
        let listed = r.list();
        assert!(
            listed
                .iter()
                .any(|i| i.id == "remote.download" && !i.enabled)
        );
        let mut events = vec![
            process(100, 1, "/usr/sbin/nginx", "nginx", "www-data"),
            process(101, 100, "/usr/bin/bash", "bash -i", "www-data"),
            process(102, 1, "/usr/bin/bash", "bash -i", "root"),
            process(103, 1, "/usr/bin/curl", "curl http://x", "backup"),
        ];
        events.push(Event {
            media_us: MediaTime::from_micros(200_000),
            utc: DateTime::from_timestamp(1_700_000_000, 0).unwrap(),
            event: EventKind::WindowTitle(WindowInfo {
                window: "0x1".into(),
                title: "Vault - passwords".into(),
                pid: None,
            }),
        });
        let flags = r.evaluate(&rows(&events), &mut Processes::default());
        let got: Vec<(u32, &str)> = flags.iter().map(|f| (f.idx, f.rule.as_str())).collect();
        assert_eq!(
            got,
            [
                (1, "site.shell_from_web"),
                (3, "site.as_backup"),
                (4, "site.secret_window")
            ]
        );
    }

    #[test]
    fn bad_rule_files_are_refused_with_a_reason() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("rules.toml");
        for (text, says) in [
            (
                "[[rule]]\nid = \"x\"\nseverity = \"high\"\nsentence = \"s\"\n",
                "match every process",
            ),
            (
                "[[rule]]\nid = \"x\"\nseverity = \"severe\"\nsentence = \"s\"\nprogram = [\"a\"]\n",
                "severe",
            ),
            (
                "[[rule]]\nid = \"x\"\nseverity = \"high\"\nsentence = \"s\"\ncommand = \"(\"\n",
                "command",
            ),
            (
                "[[rule]]\nid = \"Bad Id\"\nseverity = \"high\"\nsentence = \"s\"\nprogram = [\"a\"]\n",
                "rule id",
            ),
            ("disable = [\"no.such\"]\n", "not a built-in"),
            (
                "[[rule]]\nid = \"account.create\"\nseverity = \"high\"\nsentence = \"s\"\nprogram = [\"a\"]\n",
                "twice",
            ),
            (
                "[[rule]]\nid = \"x\"\nseverity = \"high\"\nsentence = \"s\"\nprogram = [\"a\"]\ncolour = 1\n",
                "colour",
            ),
            // A pattern whose compiled form is huge is refused, not built.
            (
                "[[rule]]\nid = \"x\"\nseverity = \"high\"\nsentence = \"s\"\ncommand = \"(\\\\w{1000}){1000}\"\n",
                "command",
            ),
        ] {
            std::fs::write(&path, text).unwrap();
            let e = RuleSet::load(Some(&path)).unwrap_err().to_string();
            assert!(e.contains(says), "{text:?}: {e}");
        }
        std::fs::write(&path, vec![b'#'; (MAX_RULES_FILE + 1) as usize]).unwrap();
        assert!(matches!(
            RuleSet::load(Some(&path)),
            Err(RulesError::TooLarge { .. })
        ));
    }

    #[test]
    fn program_names_are_file_names_without_exe() {
        assert_eq!(program_name("/usr/sbin/useradd"), "useradd");
        assert_eq!(program_name("C:\\Windows\\System32\\NET.EXE"), "net");
        assert_eq!(program_name("\"C:\\x\\schtasks.exe\""), "schtasks");
        assert_eq!(program_name(""), "");
        assert_eq!(argv0("'/opt/my tool/x' -a"), "/opt/my tool/x");
    }

    #[test]
    fn a_huge_hostile_command_line_costs_only_its_bounded_copy() {
        let long = format!("useradd {}", "a".repeat(2_000_000));
        let e = [process(10, 1, "/usr/sbin/useradd", &long, "root")];
        let rows = rows(&e);
        let flags = RuleSet::builtin().evaluate(&rows, &mut Processes::default());
        let ids: Vec<&str> = flags.iter().map(|f| f.rule.as_str()).collect();
        assert_eq!(ids, ["account.create", "evasion.cut_command"]);
        assert!(flags.iter().all(|f| f.text.len() < 2048));
    }

    #[test]
    fn a_window_rules_unless_is_matched_against_the_title() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("rules.toml");
        std::fs::write(
            &path,
            "[[rule]]\nid = \"site.vault\"\non = \"window\"\nseverity = \"medium\"\n\
             sentence = \"The vault was opened.\"\ntitle = \"(?i)vault\"\nunless = \"(?i)locked\"\n",
        )
        .unwrap();
        let rules = RuleSet::load(Some(&path)).unwrap();
        let window = |title: &str| Event {
            media_us: MediaTime::from_micros(1000),
            utc: DateTime::from_timestamp(1_700_000_000, 0).unwrap(),
            event: EventKind::WindowFocus(WindowInfo {
                window: "0x1".into(),
                title: title.into(),
                pid: None,
            }),
        };
        let hits = |title: &str| {
            rules
                .evaluate(&rows(&[window(title)]), &mut Processes::default())
                .into_iter()
                .filter(|f| f.rule == "site.vault")
                .count()
        };
        assert_eq!(hits("Vault - secrets"), 1);
        assert_eq!(hits("Vault (locked)"), 0, "`unless` sees the title");
    }

    #[test]
    fn a_command_padded_on_both_sides_is_found_whole_and_the_cut_is_flagged() {
        let pad = ": ".to_owned() + &"x".repeat(100_000);
        let hidden = format!("{pad}; history -c; {pad}");
        let e = [process(
            10,
            1,
            "/bin/bash",
            &format!("bash -c {hidden}"),
            "root",
        )];
        let padded = rows(&e);
        assert!(padded[0].is_cut(), "the index keeps it cut");
        let ids = |f: &[FlagRow]| -> Vec<String> { f.iter().map(|f| f.rule.clone()).collect() };
        let rules = RuleSet::builtin();
        // The indexer matches the whole event: the middle is seen.
        let whole = rules.evaluate_whole(&padded, &e, &mut Processes::default());
        assert_eq!(ids(&whole), ["history.clear", "evasion.cut_command"]);
        // The kept copy alone (what `rules apply` has) still says it was cut.
        let copy = rules.evaluate(&padded, &mut Processes::default());
        assert_eq!(ids(&copy), ["evasion.cut_command"]);
        // A short command is neither cut nor flagged as such.
        let short = [process(11, 1, "/bin/ls", "ls -l", "root")];
        assert!(!rows(&short)[0].is_cut());
        assert!(
            rules
                .evaluate_whole(&rows(&short), &short, &mut Processes::default())
                .is_empty()
        );
    }
}

#[cfg(test)]
mod cost {
    use super::*;
    use crate::index::EventRow;
    use jitrec_format::{Event, MediaTime, ProcessStart, UserRef};

    /// What matching the largest whole command line costs (a measurement, not a check: run with
    /// `cargo test -p jitrec-player --release --lib rules::cost -- --ignored --nocapture`).
    #[test]
    #[ignore = "a measurement; prints its figures"]
    #[allow(clippy::print_stderr, reason = "its figures are its output")]
    fn matching_a_64_mib_command_line() {
        for (what, unit) in [("ASCII", "a b "), ("non-ASCII", "é ü ")] {
            let line = format!("bash -c {}", unit.repeat(64 << 20 >> 3));
            let e = [Event {
                media_us: MediaTime::from_micros(0),
                utc: DateTime::from_timestamp(1_700_000_000, 0).unwrap(),
                event: EventKind::ProcessStart(ProcessStart {
                    pid: 1,
                    ppid: 0,
                    user: UserRef {
                        name: "root".into(),
                        id: "0".into(),
                    },
                    exe: "/bin/bash".into(),
                    command_line: line,
                    elevated: true,
                    in_session: Some(true),
                }),
            }];
            let rows: Vec<EventRow> = e.iter().map(|e| EventRow::new(0, 0, e)).collect();
            let t = std::time::Instant::now();
            let f = RuleSet::builtin().evaluate_whole(&rows, &e, &mut Processes::default());
            eprintln!(
                "{what}: {} MiB command line matched in {:?} ({} flags)",
                e.len() * 64,
                t.elapsed(),
                f.len()
            );
        }
    }
}
