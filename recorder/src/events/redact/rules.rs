//! The word rules: which words of a command line or title are secret.
//!
//! [`Rules::scan`] walks one reading of the text (argv, or shell words; `words.rs`) and
//! collects what to hide. The built-in rules are here as tables and predicates, so
//! docs/recorder.md can list exactly what they match:
//!
//! - the **generic option rule** ([`secret_option_name`]): an option whose name ends in a
//!   secret word hides its value (`--api-key V`, `--client-secret=V`, `-storepass V`);
//! - **value rules**, for a word wherever it stands: secret assignments (`MYSQL_PWD=V`,
//!   `?token=V`), URL credentials (`https://TOKEN@host`), credential headers
//!   (`X-Api-Key: V`, `Authorization: Digest ...`) and JSON fields (`"password": "V"`);
//! - **program rules** ([`builtin_programs`]) for tools whose secret options have other names
//!   (`mysql -pV`, `redis-cli -a V`, `docker login -p V`, `vault login TOKEN`).

use regex::Regex;

/// A rule for the words after a program's name.
#[derive(Debug, Default)]
pub(super) struct Program {
    /// Program names (file names, without directory).
    pub names: Vec<String>,
    /// The rule applies only once this word follows the name (`docker login`, not `docker run`).
    pub subcommand: Option<String>,
    /// Option prefixes whose attached rest is secret (`-p` in `-pV`).
    pub attached: Vec<String>,
    /// Options whose next word is secret.
    pub separate: Vec<String>,
    /// Options whose value is `user<sep>password` (`-u user:V`): the password is hidden, or
    /// the user part when the password is empty (`curl -u KEY:` sends an API key as the user).
    pub user_secret: Vec<(String, char)>,
    /// Options whose value is a pass-phrase argument, `pass:V` or `env:V` (openssl).
    pub pass_arg: Vec<String>,
    /// Every operand after the subcommand is secret (`vault login TOKEN`); `k=v` words are
    /// left to the assignment rule (`username=bob password=V`).
    pub operands: bool,
    /// With a flag cluster holding this letter (`htpasswd -b`), the last operand of the
    /// command is the password.
    pub batch_last: Option<char>,
    /// Options of the program that take no value, though the generic option rule would read
    /// their names as secret (`keytool -storepasswd` is a command, not a password option).
    pub flags: Vec<String>,
    /// Configured patterns over the whole text, applied when one of `names` appears.
    pub patterns: Vec<Regex>,
}

impl Program {
    fn new(names: &[&str]) -> Self {
        Self {
            names: owned(names),
            ..Self::default()
        }
    }
    fn after(mut self, subcommand: &str) -> Self {
        self.subcommand = Some(subcommand.to_owned());
        self
    }
    fn attached(mut self, o: &[&str]) -> Self {
        self.attached = owned(o);
        self
    }
    fn separate(mut self, o: &[&str]) -> Self {
        self.separate = owned(o);
        self
    }
    fn user_secret(mut self, o: &[&str], sep: char) -> Self {
        self.user_secret = o.iter().map(|o| ((*o).to_owned(), sep)).collect();
        self
    }
    fn pass_arg(mut self, o: &[&str]) -> Self {
        self.pass_arg = owned(o);
        self
    }
    fn flags(mut self, o: &[&str]) -> Self {
        self.flags = owned(o);
        self
    }
    fn operands(mut self) -> Self {
        self.operands = true;
        self
    }
    fn batch_last(mut self, flag: char) -> Self {
        self.batch_last = Some(flag);
        self
    }
}

pub(super) fn owned(v: &[&str]) -> Vec<String> {
    v.iter().map(|s| (*s).to_owned()).collect()
}

/// The built-in program rules (docs/recorder.md has them as a table). Tools whose secret
/// options the generic option rule already covers (`gpg --passphrase`, `wget --http-password`,
/// `keytool -storepass`, `--admin-password`) need no entry.
pub(super) fn builtin_programs() -> Vec<Program> {
    vec![
        // MySQL/MariaDB clients: `-pSECRET`; a bare `-p` prompts, and its next word is a database.
        Program::new(&[
            "mysql",
            "mysqladmin",
            "mysqldump",
            "mysqlimport",
            "mysqlcheck",
            "mysqlshow",
            "mariadb",
            "mariadb-admin",
            "mariadb-dump",
        ])
        .attached(&["-p"]),
        Program::new(&["sshpass"])
            .attached(&["-p"])
            .separate(&["-p"]),
        Program::new(&["curl"])
            .user_secret(&["-u", "--user", "-U", "--proxy-user"], ':')
            .separate(&["--oauth2-bearer"]),
        Program::new(&["smbclient", "rpcclient", "smbcacls", "smbget", "net"])
            .user_secret(&["-U", "--user"], '%'),
        Program::new(&["htpasswd"]).batch_last('b'),
        // `-k` and `-K` are enc's pass phrase and raw key.
        Program::new(&["openssl"])
            .pass_arg(&["-pass", "-passin", "-passout", "-password"])
            .separate(&["-k", "-K"]),
        // A crypt hash is still a secret worth not spreading.
        Program::new(&["usermod", "useradd"]).separate(&["-p"]),
        Program::new(&["redis-cli"]).separate(&["-a"]),
        // Only after `login`: `docker run -p 8080:80` publishes a port.
        Program::new(&[
            "docker", "podman", "nerdctl", "buildah", "skopeo", "helm", "oras",
        ])
        .after("login")
        .attached(&["-p"])
        .separate(&["-p"]),
        Program::new(&[
            "ldapsearch",
            "ldapadd",
            "ldapmodify",
            "ldapdelete",
            "ldapmodrdn",
            "ldapcompare",
            "ldapwhoami",
            "ldapexop",
            "ldapurl",
        ])
        .attached(&["-w"])
        .separate(&["-w"]),
        // The bind password, the old and the new password.
        Program::new(&["ldappasswd"])
            .attached(&["-w", "-a", "-s"])
            .separate(&["-w", "-a", "-s"]),
        Program::new(&["sqlcmd", "bcp", "osql"])
            .attached(&["-P"])
            .separate(&["-P"]),
        // `keytool -storepasswd -new NEW`; its `-*pass` options are generic.
        Program::new(&["keytool"])
            .separate(&["-new"])
            .flags(&["-storepasswd", "-keypasswd"]),
        Program::new(&["7z", "7za", "7zr", "7zz"]).attached(&["-p"]),
        Program::new(&["zip", "unzip", "zipcloak"])
            .attached(&["-P"])
            .separate(&["-P"]),
        Program::new(&["vault", "bao"]).after("login").operands(),
        Program::new(&[
            "mongo",
            "mongosh",
            "mongodump",
            "mongorestore",
            "mongoexport",
            "mongoimport",
            "mongostat",
            "mongotop",
            "mongofiles",
        ])
        .attached(&["-p"])
        .separate(&["-p"]),
        // The new and the old pass phrase; `-f FILE` is only where the key goes.
        Program::new(&["ssh-keygen"]).separate(&["-N", "-P"]),
        Program::new(&["az"]).after("login").separate(&["-p"]),
    ]
}

/// The program a word names: its file name, without a directory (`/`, or `\` on Windows) or a
/// Windows `.exe`, so `/usr/bin/mysql` and `C:\Program Files\MySQL\bin\mysql.exe` are `mysql`.
pub(super) fn program_name(word: &str) -> &str {
    let base = word.rsplit(['/', '\\']).next().unwrap_or(word);
    match base.len().checked_sub(4) {
        Some(cut) if base.is_char_boundary(cut) && base[cut..].eq_ignore_ascii_case(".exe") => {
            &base[..cut]
        }
        _ => base,
    }
}

/// Whether an option named `name` (without its dashes) takes a secret value.
///
/// Its name, lowercased and cut into parts at `-`, `_` and `.`, is secret when the **last**
/// part ends in `pass`, `passwd`, `password`, `passphrase`, `secret` or `token`
/// (`--admin-password`, `-storepass`, `--client-secret`, `--authToken`), or is `pw`, `pwd`,
/// `key`, `apikey`, `accesskey`, `secretkey`, `privatekey` or `authkey` (`--api-key`,
/// `--apiKey`). Not secret: a name whose last part says where the secret is or how it is
/// asked for (`--password-file`, `--password-stdin`, `--passphrase-fd`, `--token-ttl`), one
/// that only contains `key` (`--keyring`, `--keyserver`, `--list-keys`), a negation or prompt
/// flag (`--no-password`, `--ask-become-pass`, `--askpass`), and `--bypass`.
pub(super) fn secret_option_name(name: &str) -> bool {
    let name = name.to_ascii_lowercase();
    let mut parts = name.split(['-', '_', '.']).filter(|p| !p.is_empty());
    let Some(first) = parts.clone().next() else {
        return false;
    };
    let Some(last) = parts.next_back() else {
        return false;
    };
    if first == "no" && last != "no" || first.starts_with("ask") {
        return false;
    }
    const ENDINGS: &[&str] = &[
        "pass",
        "passwd",
        "password",
        "passphrase",
        "secret",
        "token",
    ];
    const WHOLE: &[&str] = &[
        "pw",
        "pwd",
        "key",
        "apikey",
        "accesskey",
        "secretkey",
        "privatekey",
        "authkey",
    ];
    (ENDINGS.iter().any(|e| last.ends_with(e)) && last != "bypass") || WHOLE.contains(&last)
}

/// An option word split into its name (dashes removed) and the value attached with `=`;
/// `None` when the word is not an option (`-`, `--`, `-1`, a word not starting with `-`).
pub(super) fn option_parts(word: &str) -> Option<(&str, Option<&str>)> {
    let rest = word.strip_prefix('-')?;
    let rest = rest.strip_prefix('-').unwrap_or(rest);
    if !rest.starts_with(|c: char| c.is_ascii_alphabetic()) {
        return None;
    }
    Some(match rest.split_once('=') {
        Some((name, value)) => (name, Some(value)),
        None => (rest, None),
    })
}

/// Names of secret assignments (`NAME=V`), matched without regard to case: a name containing
/// `password`, `passwd`, `passphrase`, `secret`, `token`, `apikey` or `api_key`, or ending in
/// `_pwd`, `_pw`, `_pass` or `_key`, or `pass` itself. `PWD=` (the working directory) is not
/// one; names ending in `_file`, `_path`, `_dir` or `_fd` are left alone (they say where the
/// secret is: `MYSQL_PASSWORD_FILE=/run/secrets/db`).
const ASSIGNED: &str = r"[a-z0-9_]*(?:password|passwd|passphrase|secret|token|api_?key)[a-z0-9_]*|[a-z0-9_]*_(?:pwd|pw|pass|key)|pass";

/// Header names whose value is a credential: ending in `token`, `key`, `auth`, `secret` or
/// `password`, and `Authorization`, `Proxy-Authorization` and `Cookie`.
const HEADER: &str =
    r"[a-z0-9-]*(?:token|key|auth|secret|passwd|password)|(?:proxy-)?authorization|cookie";

/// Schemes of `Authorization` values, kept in front of the hidden credential.
const AUTH_SCHEMES: &str = r"basic|bearer|digest|token|negotiate|ntlm|hoba|mutual|aws4-hmac-sha256";

/// URL schemes whose user part alone (`ssh://git@host`) is a login name, not a credential.
const LOGIN_SCHEMES: &[&str] = &[
    "ssh", "sftp", "scp", "git+ssh", "ssh+git", "svn+ssh", "rsync", "telnet",
];

/// The compiled value rules.
#[derive(Debug)]
pub(super) struct ValueRules {
    /// `NAME=V` at the start of a word or after a separator: `V` to the end of the word.
    assignment: Regex,
    /// `?NAME=V` or `&NAME=V` (a query string, form data): `V` up to the next `&` or `#`.
    query: Regex,
    /// `scheme://USERINFO@`.
    url: Regex,
    /// `Name: V` inside a word (a `-H` argument): `V` to the end of the word.
    header: Regex,
    /// A word that is only `Name:` (a title or script with the header unquoted).
    header_word: Regex,
    /// An `Authorization` scheme word.
    scheme: Regex,
    /// `"name": "V"`.
    json: Regex,
}

/// `Regex::new` for the built-in patterns, which are constants: a failure is a bug, and the
/// recorder refuses to start (through [`super::RedactError`]) rather than record unredacted.
fn re(p: &str) -> Result<Regex, super::RedactError> {
    super::compile(p)
}

impl ValueRules {
    pub(super) fn new() -> Result<Self, super::RedactError> {
        Ok(Self {
            assignment: re(&format!(
                r"(?is)(?:^|[^a-z0-9_?&])(?P<name>{ASSIGNED})=(?P<secret>.+)"
            ))?,
            query: re(&format!(r"(?i)[?&](?P<name>{ASSIGNED})=(?P<secret>[^&#]+)"))?,
            url: re(r"(?i)(?P<scheme>[a-z][a-z0-9+.-]*)://(?P<info>[^\s/?#]*)@")?,
            header: re(&format!(
                r#"(?is)(?:^|[\s'"=])(?:{HEADER})[ \t]*:[ \t]*(?:(?:{AUTH_SCHEMES})[ \t]+)?(?P<secret>\S.*)"#
            ))?,
            header_word: re(&format!(r"(?i)^(?:{HEADER}):$"))?,
            scheme: re(&format!(r"(?i)^(?:{AUTH_SCHEMES})$"))?,
            json: re(
                r#"(?i)"[a-z0-9_.-]*(?:password|passwd|passphrase|secret|token|api_?key)"\s*:\s*"(?P<secret>(?:[^"\\]|\\.)+)""#,
            )?,
        })
    }

    /// Ranges of `value` hidden by the value rules.
    fn ranges(&self, value: &str, out: &mut Vec<(usize, usize)>) {
        for re in [&self.assignment, &self.query] {
            for c in re.captures_iter(value) {
                if let (Some(name), Some(s)) = (c.name("name"), c.name("secret")) {
                    let name = name.as_str().to_ascii_lowercase();
                    let locator = ["_file", "_path", "_dir", "_fd"]
                        .iter()
                        .any(|x| name.ends_with(x));
                    if !locator {
                        out.push((s.start(), s.end()));
                    }
                }
            }
        }
        for c in self.url.captures_iter(value) {
            let (Some(scheme), Some(info)) = (c.name("scheme"), c.name("info")) else {
                continue;
            };
            let text = info.as_str();
            match text.split_once(':') {
                Some((_, pw)) if !pw.is_empty() => out.push((info.end() - pw.len(), info.end())),
                Some((user, _)) if !user.is_empty() => {
                    out.push((info.start(), info.start() + user.len()))
                }
                Some(_) => {}
                None if text.is_empty()
                    || LOGIN_SCHEMES.contains(&scheme.as_str().to_ascii_lowercase().as_str()) => {}
                None => out.push((info.start(), info.end())),
            }
        }
        for re in [&self.header, &self.json] {
            for c in re.captures_iter(value) {
                if let Some(s) = c.name("secret") {
                    out.push((s.start(), s.end()));
                }
            }
        }
    }
}

/// Where a program rule stands in the words being scanned.
struct Active<'p> {
    program: &'p Program,
    /// Its subcommand has been seen (or it has none).
    on: bool,
    /// `htpasswd -b` seen.
    batch: bool,
    /// The last operand since (for `batch_last`).
    last_operand: Option<usize>,
}

/// Everything the scan applies.
pub(super) struct Rules<'r> {
    /// Configured secret options (exact names).
    pub options: &'r [String],
    pub programs: &'r [Program],
    /// The generic option rule and the value rules; `None` when built-ins are off.
    pub builtin: Option<&'r ValueRules>,
}

/// A part of a word to hide: (word index, start, end) in the word's value.
pub(super) type Hide = (usize, usize, usize);

impl Rules<'_> {
    /// What the rules hide in `words`, one reading of a text.
    pub(super) fn scan(&self, words: &[super::words::Word<'_>]) -> Vec<Hide> {
        let mut hide: Vec<Hide> = Vec::new();
        let mut active: Vec<Active<'_>> = Vec::new();
        let whole = |i: usize| (i, 0, words[i].value.len());
        // The next word, when it is a word and not an operator.
        let next = |i: usize| words.get(i + 1).filter(|w| !w.op).map(|_| whole(i + 1));
        let mut header_from: Option<usize> = None;
        for (i, w) in words.iter().enumerate() {
            let word: &str = &w.value;
            if w.op {
                finish_commands(&mut active, words, &mut hide);
                header_from = None;
                continue;
            }
            let tail = |rest: &str| (i, word.len() - rest.len(), word.len());

            // A header split over words: `Authorization:`, [scheme,] value[,] [value...].
            if let Some(from) = header_from {
                let scheme = self.builtin.is_some_and(|v| v.scheme.is_match(word));
                if !(from == i && scheme) {
                    hide.push(whole(i));
                    header_from = word.ends_with(',').then_some(i + 1);
                } else {
                    header_from = Some(i + 1);
                }
            }

            for o in self.options {
                if word == o {
                    hide.extend(next(i));
                } else if let Some(v) = word
                    .strip_prefix(o.as_str())
                    .and_then(|r| r.strip_prefix('='))
                    && !v.is_empty()
                {
                    hide.push(tail(v));
                }
            }

            if let Some(values) = self.builtin {
                let flag = active
                    .iter()
                    .any(|a| a.on && a.program.flags.iter().any(|f| f == word));
                if let Some((name, value)) = option_parts(word)
                    && secret_option_name(name)
                    && !flag
                {
                    match value {
                        // openssl's form, `-password pass:V`: `pass:` says nothing secret.
                        Some(v) => {
                            let v = v.strip_prefix("pass:").unwrap_or(v);
                            if !v.is_empty() {
                                hide.push(tail(v));
                            }
                        }
                        None => {
                            if let Some(n) = words.get(i + 1).filter(|n| !n.op) {
                                let v: &str = &n.value;
                                let at = if v.starts_with("pass:") { 5 } else { 0 };
                                if at < v.len() {
                                    hide.push((i + 1, at, v.len()));
                                }
                            }
                        }
                    }
                }
                if !w.script {
                    let mut ranges = Vec::new();
                    values.ranges(word, &mut ranges);
                    hide.extend(ranges.into_iter().map(|(s, e)| (i, s, e)));
                }
                if header_from.is_none() && values.header_word.is_match(word) {
                    header_from = Some(i + 1);
                }
            }

            for a in active.iter_mut().filter(|a| a.on) {
                let p = a.program;
                if p.separate.iter().any(|o| o == word) {
                    hide.extend(next(i));
                }
                for prefix in &p.attached {
                    if let Some(rest) = word.strip_prefix(prefix.as_str())
                        && !rest.is_empty()
                    {
                        hide.push(tail(rest));
                    }
                }
                for (o, sep) in &p.user_secret {
                    let value = if word == o {
                        words
                            .get(i + 1)
                            .filter(|n| !n.op)
                            .map(|n| (i + 1, &*n.value))
                    } else if let Some(v) = word.strip_prefix(o.as_str()) {
                        let long = o.starts_with("--");
                        match v.strip_prefix('=') {
                            Some(v) if long => Some((i, v)),
                            _ if !long && !v.is_empty() => Some((i, v)),
                            _ => None,
                        }
                    } else {
                        None
                    };
                    if let Some((at, v)) = value {
                        let off = words[at].value.len() - v.len();
                        match v.split_once(*sep) {
                            Some((_, pw)) if !pw.is_empty() => {
                                hide.push((at, off + v.len() - pw.len(), off + v.len()))
                            }
                            Some((user, _)) if !user.is_empty() => {
                                hide.push((at, off, off + user.len()))
                            }
                            _ => {}
                        }
                    }
                }
                if p.pass_arg.iter().any(|o| o == word)
                    && let Some(n) = words.get(i + 1).filter(|n| !n.op)
                {
                    let v: &str = &n.value;
                    if let Some(rest) = v.strip_prefix("pass:").or_else(|| v.strip_prefix("env:"))
                        && !rest.is_empty()
                    {
                        hide.push((i + 1, v.len() - rest.len(), v.len()));
                    }
                }
                if p.operands && !word.starts_with('-') && !word.contains('=') {
                    hide.push(whole(i));
                }
                if let Some(flag) = p.batch_last {
                    match word.strip_prefix('-') {
                        Some(f) if f.chars().all(|c| c.is_ascii_alphabetic()) => {
                            a.batch |= f.contains(flag);
                        }
                        Some(_) => {}
                        None => a.last_operand = Some(i),
                    }
                }
            }

            // Programs named here apply to the words after.
            let base = program_name(word);
            for a in active.iter_mut().filter(|a| !a.on) {
                if a.program.subcommand.as_deref() == Some(word) {
                    a.on = true;
                }
            }
            for p in self.programs {
                if p.names.iter().any(|n| n == base)
                    && !active.iter().any(|a| std::ptr::eq(a.program, p))
                {
                    active.push(Active {
                        program: p,
                        on: p.subcommand.is_none(),
                        batch: false,
                        last_operand: None,
                    });
                }
            }
        }
        finish_commands(&mut active, words, &mut hide);
        hide
    }
}

/// A command ends (an operator, or the end of the text): rules that wait for its end apply,
/// and no program rule reaches into the next command.
fn finish_commands(
    active: &mut Vec<Active<'_>>,
    words: &[super::words::Word<'_>],
    hide: &mut Vec<Hide>,
) {
    for a in active.drain(..) {
        if a.batch
            && let Some(i) = a.last_operand
        {
            hide.push((i, 0, words[i].value.len()));
        }
    }
}
