//! The words that redaction rules read, and the way back from a word to the text it came from.
//!
//! A command line is read twice. As **argv**, each argument is one word whatever it holds, so
//! `--password=correct horse battery` is one option with one value. As a **shell script**, each
//! argument (and a window title) is split the way `sh` would split it: on unquoted whitespace
//! and operators, with `'...'`, `"..."`, `$'...'` and backslashes removed, so the script of
//! `sh -c "gpg --passphrase 'a b c'"` has the three-word passphrase as one word. Rules match a
//! word's unquoted value; what they hide is mapped back onto the argument's own bytes, quotes
//! included when the whole quoted part is hidden, so the line still reads as typed.

use std::borrow::Cow;

/// How many unterminated quotes are read as plain characters before a text is read with every
/// quote a character: one stray apostrophe in a title (`Bob's notes`) must not hide the words
/// after it from the rules, and a crafted text must not make the lexer run for long.
const MAX_RELEX: usize = 4;

/// A word (or a shell operator) of an argument.
#[derive(Debug, Clone)]
pub(super) struct Word<'a> {
    /// The argument it is in (0 for a title).
    pub arg: usize,
    /// What the program sees: quotes and escapes removed.
    pub value: Cow<'a, str>,
    /// Its bytes in the argument, quotes included.
    pub src: (usize, usize),
    /// Runs of `value` copied from the argument: (start in value, start in argument, length).
    runs: Vec<(usize, usize, usize)>,
    /// Quoted parts: (opening quote, closing quote or end, length of the opening: 1 or 2).
    quotes: Vec<(usize, usize, usize)>,
    /// A shell operator (`;`, `&&`, `|`, a newline...): it ends a command.
    pub op: bool,
    /// An argv argument that a shell runs as a script (after `sh -c`): in the argv reading it
    /// is only a position, not a value (its words are read in the shell reading).
    pub script: bool,
}

impl Word<'_> {
    /// The range of the argument that shows `value[a..b]`: the whole word when all of it is
    /// meant, and a quoted part whole when all of its content is.
    pub(super) fn source(&self, a: usize, b: usize) -> (usize, usize) {
        if a == 0 && b >= self.value.len() {
            return self.src;
        }
        // Runs and quoted parts are in text order: binary searches keep a word with many
        // quotes and many hidden parts linear, whatever a crafted command line holds.
        let start = self.runs.get(self.runs.partition_point(|r| r.0 + r.2 <= a));
        let end = self.runs.get(self.runs.partition_point(|r| r.0 + r.2 < b));
        let (Some(&(vs, ss, _)), Some(&(ve, se, _))) = (start, end) else {
            // Not mapped (cannot happen for ranges of `value`): hide the whole word.
            return self.src;
        };
        let (mut s, mut e) = (ss + a.saturating_sub(vs), se + b.saturating_sub(ve));
        // A quoted part whose content is all hidden goes whole, quotes included.
        let first = self.quotes.partition_point(|q| q.0 + q.2 < s);
        for &(open, close, len) in &self.quotes[first..] {
            if open >= e {
                break;
            }
            if s <= open + len && e >= close {
                s = s.min(open);
                e = e.max((close + 1).min(self.src.1));
            }
        }
        (s, e)
    }
}

/// Each argument of `argv` as one word; the argument after a shell's `-c` is marked as a script.
pub(super) fn argv_words(argv: &[String]) -> Vec<Word<'_>> {
    let mut shell = false;
    let mut script_next = false;
    argv.iter()
        .enumerate()
        .map(|(arg, a)| {
            let script = std::mem::take(&mut script_next);
            if !script {
                if SHELLS.contains(&super::rules::program_name(a)) {
                    shell = true;
                } else if shell && is_command_flag(a) {
                    script_next = true;
                }
            }
            Word {
                arg,
                value: Cow::Borrowed(a.as_str()),
                src: (0, a.len()),
                runs: vec![(0, 0, a.len())],
                quotes: Vec::new(),
                op: false,
                script,
            }
        })
        .collect()
}

/// Programs whose `-c` (or `--command`) argument is a shell script.
const SHELLS: &[&str] = &[
    "sh", "bash", "dash", "zsh", "ksh", "mksh", "ash", "busybox", "fish", "csh", "tcsh", "su",
    "runuser",
];

/// `-c`, `--command`, or a cluster of short flags with `c` in it (`-ec`, `-lc`).
fn is_command_flag(a: &str) -> bool {
    a == "--command"
        || a.strip_prefix('-').is_some_and(|f| {
            !f.starts_with('-') && f.contains('c') && f.chars().all(|c| c.is_ascii_alphabetic())
        })
}

/// The words of `text` read as a shell script (argument `arg` of a command line, or a title).
pub(super) fn shell_words(arg: usize, text: &str) -> Vec<Word<'static>> {
    let mut literal = Vec::new();
    for _ in 0..MAX_RELEX {
        match lex(arg, text, true, &literal) {
            Ok(words) => return words,
            Err(open) => literal.push(open),
        }
    }
    lex(arg, text, false, &[]).unwrap_or_default()
}

/// A word being read.
#[derive(Default)]
struct Building {
    start: Option<usize>,
    end: usize,
    value: String,
    runs: Vec<(usize, usize, usize)>,
    quotes: Vec<(usize, usize, usize)>,
}

impl Building {
    fn begin(&mut self, at: usize) {
        self.start.get_or_insert(at);
    }

    /// Appends `c`, found at `at` in the text.
    fn push(&mut self, c: char, at: usize) {
        self.begin(at);
        let v = self.value.len();
        match self.runs.last_mut() {
            Some(r) if r.0 + r.2 == v && r.1 + r.2 == at => r.2 += c.len_utf8(),
            _ => self.runs.push((v, at, c.len_utf8())),
        }
        self.value.push(c);
        self.end = at + c.len_utf8();
    }

    fn finish(&mut self, arg: usize, out: &mut Vec<Word<'static>>) {
        let b = std::mem::take(self);
        if let Some(start) = b.start {
            out.push(Word {
                arg,
                value: Cow::Owned(b.value),
                src: (start, b.end),
                runs: b.runs,
                quotes: b.quotes,
                op: false,
                script: false,
            });
        }
    }
}

fn is_operator(c: char) -> bool {
    matches!(c, ';' | '&' | '|' | '(' | ')' | '<' | '>' | '\n')
}

/// Splits `text` into words and operators as `sh` does; `quotes` off reads every quote as a
/// character, and so do the quotes at the positions in `literal`. An unterminated quote is an
/// error naming where it opened.
fn lex(
    arg: usize,
    text: &str,
    quotes: bool,
    literal: &[usize],
) -> Result<Vec<Word<'static>>, usize> {
    #[derive(PartialEq)]
    enum In {
        Plain,
        Single,
        Double,
        Ansi,
    }
    let mut out = Vec::new();
    let mut w = Building::default();
    let mut state = In::Plain;
    let mut open = 0;
    let mut chars = text.char_indices().peekable();
    while let Some((i, c)) = chars.next() {
        match state {
            In::Single | In::Ansi if c == '\'' => {
                w.quotes
                    .push((open, i, if state == In::Ansi { 2 } else { 1 }));
                w.end = i + 1;
                state = In::Plain;
            }
            In::Double if c == '"' => {
                w.quotes.push((open, i, 1));
                w.end = i + 1;
                state = In::Plain;
            }
            In::Ansi | In::Double if c == '\\' => match chars.peek() {
                Some(&(j, n))
                    if state == In::Ansi || matches!(n, '"' | '\\' | '$' | '`' | '\n') =>
                {
                    chars.next();
                    w.push(n, j);
                }
                _ => w.push(c, i),
            },
            In::Single | In::Double | In::Ansi => w.push(c, i),
            In::Plain if c.is_whitespace() && c != '\n' => w.finish(arg, &mut out),
            In::Plain if is_operator(c) => {
                w.finish(arg, &mut out);
                let mut end = i + c.len_utf8();
                while let Some(&(j, n)) = chars.peek() {
                    if !is_operator(n) || n == '\n' || c == '\n' {
                        break;
                    }
                    chars.next();
                    end = j + n.len_utf8();
                }
                out.push(Word {
                    arg,
                    value: Cow::Owned(text[i..end].to_owned()),
                    src: (i, end),
                    runs: vec![(0, i, end - i)],
                    quotes: Vec::new(),
                    op: true,
                    script: false,
                });
            }
            In::Plain if !quotes || literal.contains(&i) => w.push(c, i),
            In::Plain if c == '\'' || c == '"' => {
                w.begin(i);
                open = i;
                state = if c == '\'' { In::Single } else { In::Double };
            }
            In::Plain if c == '$' && chars.peek().is_some_and(|&(_, n)| n == '\'') => {
                w.begin(i);
                open = i;
                chars.next();
                state = In::Ansi;
            }
            In::Plain if c == '\\' => match chars.next() {
                Some((j, n)) => {
                    w.begin(i);
                    w.push(n, j);
                }
                None => w.push(c, i),
            },
            In::Plain => w.push(c, i),
        }
    }
    if state != In::Plain {
        return Err(open);
    }
    w.finish(arg, &mut out);
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn values(text: &str) -> Vec<String> {
        shell_words(0, text)
            .into_iter()
            .map(|w| w.value.into_owned())
            .collect()
    }

    #[test]
    fn words_as_the_shell_reads_them() {
        assert_eq!(
            values("gpg --passphrase 'a b c' -d f"),
            ["gpg", "--passphrase", "a b c", "-d", "f"]
        );
        assert_eq!(
            values(r#"X="a \"q\" b" y\ z $'c\'d'"#),
            ["X=a \"q\" b", "y z", "c'd"]
        );
        assert_eq!(
            values("mysql -pX;ls|wc && echo >f\nnext"),
            [
                "mysql", "-pX", ";", "ls", "|", "wc", "&&", "echo", ">", "f", "\n", "next"
            ]
        );
        // A stray apostrophe is a character; the words after it are still words.
        assert_eq!(
            values("Bob's mysql --password x"),
            ["Bob's", "mysql", "--password", "x"]
        );
    }

    #[test]
    fn ranges_map_back_to_the_text_with_whole_quoted_parts() {
        let text = "MYSQL_PWD='a b' x \"--password=c d\"";
        let w = shell_words(0, text);
        // The value of the assignment: its quotes go with it.
        let (s, e) = w[0].source(10, 13);
        assert_eq!(&text[s..e], "'a b'");
        // Part of a quoted word: the quotes stay, balanced.
        let (s, e) = w[2].source(11, 14);
        assert_eq!(&text[s..e], "c d");
        let (s, e) = w[2].source(0, w[2].value.len());
        assert_eq!(&text[s..e], "\"--password=c d\"");
    }

    #[test]
    fn the_argument_after_a_shells_dash_c_is_a_script() {
        let argv: Vec<String> = ["sudo", "bash", "-ec", "x y", "z"]
            .iter()
            .map(|s| (*s).to_owned())
            .collect();
        let w = argv_words(&argv);
        let scripts: Vec<bool> = w.iter().map(|w| w.script).collect();
        assert_eq!(scripts, [false, false, false, true, false]);
    }
}
