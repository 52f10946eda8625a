//! Redaction through the real recorder (issue 18): the secret-bearing command lines run as real
//! processes under the real process source (the kernel's connector; the tests run as root),
//! and secret window titles under a real EWMH window manager (openbox) on Xvfb. Nothing
//! secret may reach the spool, and what is not secret must.
//!
//! The command lines are the table `redact.rs`'s unit tests use (`ISSUE_18_CASES`), each run
//! twice: with exactly its argv, and typed into `sh -c` as a terminal would pass it on. Every
//! secret holds `S3cret`, so one search of every recorded event finds any that got through.

use std::collections::HashSet;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use jitrec_format::{Event, EventKind, SourceState};
use jitrec_recorder::events::linux::process::ProcessSource;
use jitrec_recorder::events::linux::window::WindowSource;
use jitrec_recorder::events::redact::{REDACTED, RedactionConfig, Redactor};
use jitrec_recorder::events::{EventLimits, EventSource, SourceFactory};
use jitrec_spool::{Entry, SpoolConfig, SpoolReader};
use jitrec_tests::xvfb::{EwmhClient, Openbox, Xvfb};

use crate::events::{process_config, read_recorded, record_into};

include!("../recorder/src/events/redact/cases.rs");

/// Generous for a loaded 2-core machine.
const LIMIT: Duration = Duration::from_secs(60);

/// The mark every test secret carries.
const SECRET: &str = "S3cret";

/// Secrets with spaces: one argv argument, and one quoted word of a script.
const SPACED_ARGV: &[&str] = &["mysql", "--password=S3cretA S3cretB S3cretC", "shop"];
const SPACED_SCRIPT: &str = "gpg --batch --passphrase 'S3cretD S3cretE' -d backup.gpg; MYSQL_PWD=\"S3cretF S3cretG\" mysql -u root shop";

/// A stand-in for each tool: it lives until its standard input closes, so the recorder reads
/// its command line from `/proc` however loaded the machine is, and the test ends it when the
/// recorder has written it down.
const STUB: &str = "#!/bin/sh\n# jitrec test stand-in: waits for its standard input to close.\nread -r _ || true\n";

/// `s` as one shell word (single-quoted unless plainly safe).
fn sh_quote(s: &str) -> String {
    if !s.is_empty()
        && s.chars()
            .all(|c| c.is_ascii_alphanumeric() || "-_./:=,@%+".contains(c))
    {
        return s.to_owned();
    }
    format!("'{}'", s.replace('\'', "'\\''"))
}

/// Every event committed so far to the spool's one session.
fn committed_events(spool: &Path) -> Vec<Event> {
    let Ok(reader) = SpoolReader::open(spool, SpoolConfig::default()) else {
        return Vec::new();
    };
    let mut events = Vec::new();
    for s in reader.sessions().unwrap_or_default() {
        for e in reader.pending(s).unwrap_or_default() {
            if let Ok(Entry::Chunk { events: ev, .. }) = reader.read(&e) {
                events.extend(jitrec_format::decode_events(&ev).unwrap_or_default());
            }
        }
    }
    events
}

/// Waits (up to [`LIMIT`]) until the committed events satisfy `done`.
fn wait_for_events(spool: &Path, what: &str, mut done: impl FnMut(&[Event]) -> bool) {
    let started = Instant::now();
    while !done(&committed_events(spool)) {
        assert!(started.elapsed() < LIMIT, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// A running command line: the process, and its standard input (closing it ends it).
struct Running {
    child: Child,
    /// Dropped to end the process.
    stdin: Option<std::process::ChildStdin>,
    /// What it was: argv as run, or the script given to `sh -c`.
    what: String,
}

fn run(mut cmd: Command, what: String) -> Running {
    let mut child = cmd
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .spawn()
        .unwrap();
    let stdin = child.stdin.take();
    Running { child, stdin, what }
}

#[test]
fn secrets_on_command_lines_never_reach_the_spool() {
    let x = Xvfb::start(320, 240).unwrap();
    let stubs = tempfile::tempdir().unwrap();
    let mut tools: HashSet<&str> = ISSUE_18_CASES.iter().map(|(a, _, _)| a[0]).collect();
    tools.extend(["mysql", "gpg"]);
    for t in &tools {
        let path = stubs.path().join(t);
        std::fs::write(&path, STUB).unwrap();
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o755)).unwrap();
    }
    let path = format!(
        "{}:{}",
        stubs.path().display(),
        std::env::var("PATH").unwrap_or_default()
    );
    let sh_script = |script: &str| {
        // `read` last, so the shell itself stays (a shell may exec its last command).
        let mut c = Command::new("/bin/sh");
        c.args(["-c", &format!("{script}; read -r _ || true")])
            .env("PATH", &path);
        c
    };

    let tmp = tempfile::tempdir().unwrap();
    let spool = tmp.path().join("spool");
    let factory: SourceFactory = Box::new(|_| {
        vec![Box::new(ProcessSource::open(process_config(false))) as Box<dyn EventSource>]
    });
    let mut argv_runs: Vec<(u32, &RedactionCase)> = Vec::new();
    let mut script_runs: Vec<(u32, &RedactionCase)> = Vec::new();
    let mut spaced: Vec<u32> = Vec::new();
    let session = record_into(&spool, &x, factory, EventLimits::default(), || {
        let mut running = Vec::new();
        for case in ISSUE_18_CASES {
            let argv = case.0;
            // Exactly this argv after the interpreter, as the kernel runs a script: `/bin/sh
            // STUBS/gpg --batch ...`.
            let mut c = Command::new("/bin/sh");
            c.arg(stubs.path().join(argv[0])).args(&argv[1..]);
            let r = run(c, format!("{argv:?}"));
            argv_runs.push((r.child.id(), case));
            running.push(r);
            // Typed: `sh -c 'gpg --batch ...'`, the tool found on PATH.
            let script = argv
                .iter()
                .map(|a| sh_quote(a))
                .collect::<Vec<_>>()
                .join(" ");
            let r = run(sh_script(&script), script);
            script_runs.push((r.child.id(), case));
            running.push(r);
        }
        let mut c = Command::new("/bin/sh");
        c.arg(stubs.path().join(SPACED_ARGV[0]))
            .args(&SPACED_ARGV[1..]);
        let r = run(c, format!("{SPACED_ARGV:?}"));
        spaced.push(r.child.id());
        running.push(r);
        let r = run(sh_script(SPACED_SCRIPT), SPACED_SCRIPT.to_owned());
        spaced.push(r.child.id());
        running.push(r);

        // Every process, and each script's tool, recorded with its command line.
        let pids: Vec<u32> = running.iter().map(|r| r.child.id()).collect();
        let shells: Vec<u32> = script_runs.iter().map(|(p, _)| *p).collect();
        wait_for_events(&spool, "every command line to be recorded", |events| {
            let starts: Vec<_> = events
                .iter()
                .filter_map(|e| match &e.event {
                    EventKind::ProcessStart(p) if !p.command_line.is_empty() => Some(p),
                    _ => None,
                })
                .collect();
            pids.iter().all(|pid| starts.iter().any(|p| p.pid == *pid))
                && shells
                    .iter()
                    .all(|pid| starts.iter().any(|p| p.ppid == *pid))
        });
        for mut r in running {
            drop(r.stdin.take());
            let status = r.child.wait().unwrap();
            assert!(status.success(), "{}: {status}", r.what);
        }
    });
    let rec = read_recorded(&spool, session);
    assert_eq!(rec.source_state("processes"), [SourceState::Complete]);

    // No secret anywhere in what was recorded.
    let mut leaked = Vec::new();
    for e in &rec.events {
        let json = serde_json::to_string(e).unwrap();
        if json.contains(SECRET) {
            leaked.push(json);
        }
    }
    assert!(
        leaked.is_empty(),
        "secrets recorded:\n{}",
        leaked.join("\n")
    );

    let line_of = |pid: u32| -> &str {
        rec.starts()
            .find(|(_, p)| p.pid == pid)
            .map(|(_, p)| p.command_line.as_str())
            .unwrap_or_else(|| panic!("no start of {pid}"))
    };
    // With exactly their argv: what the unit table says, behind the interpreter and the stub's
    // directory.
    for (pid, (argv, shown, _)) in &argv_runs {
        assert_eq!(
            line_of(*pid),
            format!("/bin/sh {}/{shown}", stubs.path().display()),
            "{argv:?}"
        );
    }
    // Typed into a shell: the same words readable, and the shell's own command line redacted
    // (the tool it ran is a process of its own, checked above with every event).
    let mut hidden = 0;
    for (pid, (argv, shown, _)) in &script_runs {
        let line = line_of(*pid);
        assert!(line.starts_with("/bin/sh -c '"), "{line}");
        hidden += line.matches(REDACTED).count();
        for part in shown.split(REDACTED).flat_map(|p| p.split(['\'', ' '])) {
            assert!(
                line.contains(part),
                "{part:?} of {argv:?} missing from {line}"
            );
        }
    }
    assert!(
        hidden >= ISSUE_18_CASES.len(),
        "{hidden} secrets hidden in scripts"
    );
    assert_eq!(
        line_of(spaced[0]),
        format!(
            "/bin/sh {}/mysql --password=[REDACTED] shop",
            stubs.path().display()
        )
    );
    assert_eq!(
        line_of(spaced[1]),
        "/bin/sh -c 'gpg --batch --passphrase [REDACTED] -d backup.gpg; \
         MYSQL_PWD=[REDACTED] mysql -u root shop; read -r _ || true'"
    );
    eprintln!(
        "{} command lines run ({} as argv, {} typed into sh -c, 2 with spaces), {} process \
         starts recorded, no secret in any of {} events",
        argv_runs.len() + script_runs.len() + 2,
        argv_runs.len(),
        script_runs.len(),
        rec.starts().count(),
        rec.events.len()
    );
}

#[test]
fn secret_window_titles_under_openbox_are_redacted() {
    let x = Xvfb::start(320, 240).unwrap();
    let _wm = Openbox::start(&x.display).unwrap();
    let client = EwmhClient::new(&x.display).unwrap();
    let display = x.display.clone();
    let factory: SourceFactory = Box::new(move |_| {
        let redactor = std::sync::Arc::new(Redactor::new(&RedactionConfig::default()).unwrap());
        vec![Box::new(WindowSource::open(Some(&display), redactor)) as Box<dyn EventSource>]
    });
    // Titles as a shell's prompt sets them to the command being run.
    let first = "root@db1: mysql -u root -pS3cretTitleOne shop";
    let second =
        "root@db1: curl -H 'Authorization: Bearer S3cretTitleTwo' https://api.example.com/";
    // A desktop has an active window before JIT starts. (openbox names none until one is
    // focused, and the window source reads a missing `_NET_ACTIVE_WINDOW` as "no EWMH window
    // manager": `partial`.)
    let desktop = client
        .window("desktop", (0, 0, 320, 240), 0x0020_2020)
        .unwrap();
    client.activate_and_wait(desktop, LIMIT).unwrap();
    let tmp = tempfile::tempdir().unwrap();
    let spool = tmp.path().join("spool");
    let mut win = 0;
    let session = record_into(&spool, &x, factory, EventLimits::default(), || {
        win = client
            .window(first, (10, 10, 100, 80), 0x0000_80ff)
            .unwrap();
        // openbox makes it the active window when asked, as a task bar asks.
        client.activate_and_wait(win, LIMIT).unwrap();
        client.retitle(win, second).unwrap();
        let hex = format!("0x{win:x}");
        wait_for_events(&spool, "the new title to be recorded", |events| {
            events
                .iter()
                .any(|e| matches!(&e.event, EventKind::WindowTitle(w) if w.window == hex))
        });
    });
    let rec = read_recorded(&spool, session);
    assert_eq!(rec.source_state("windows"), [SourceState::Complete]);
    for e in &rec.events {
        let json = serde_json::to_string(e).unwrap();
        assert!(
            !json.contains(SECRET),
            "a secret title was recorded: {json}"
        );
    }
    let hex = format!("0x{win:x}");
    let (_, focus) = rec.window_event(&hex, true);
    assert_eq!(focus.title, "root@db1: mysql -u root -p[REDACTED] shop");
    assert_eq!(focus.pid, Some(std::process::id()));
    let (_, title) = rec.window_event(&hex, false);
    assert_eq!(
        title.title,
        "root@db1: curl -H 'Authorization: Bearer [REDACTED]' https://api.example.com/"
    );
}
