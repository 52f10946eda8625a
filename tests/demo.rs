//! The README's first command, as a newcomer runs it: `bash scripts/demo.sh` (its own package
//! check, release build, Xvfb, scripted admin session, recorder, uploader, player), then the
//! URL and sign-in it prints, opened in Debian's Chromium: the recording is listed complete,
//! plays, and the search it suggests jumps into it. Ctrl-C (SIGINT to its process group) stops
//! everything it started.
//!
//! The demo runs with the programs the test build made (the test package's copies of the three
//! `main.rs`, under their own names, through `JITREC_DEMO_BIN`), so the suite compiles the
//! workspace once; everything after the build is the script as a newcomer runs it.

use std::io::{BufRead, BufReader};
use std::net::TcpListener;
use std::process::{Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use jitrec_tests::webdriver::Browser;
use jitrec_tests::xvfb::unused_display;
use serde_json::json;

use crate::report_view::{sign_in, state_when};

/// The demo records a scripted session of about 20 s; generous for a loaded 2-core machine.
const LIMIT: Duration = Duration::from_secs(300);

/// The demo's process group, interrupted (as Ctrl-C would) and reaped on drop.
struct Demo(std::process::Child);

impl Demo {
    fn interrupt(&self) {
        let pgid = rustix::process::Pid::from_raw(self.0.id() as i32).expect("pids are positive");
        let _ = rustix::process::kill_process_group(pgid, rustix::process::Signal::INT);
    }
}

impl Drop for Demo {
    fn drop(&mut self) {
        self.interrupt();
        let started = Instant::now();
        while started.elapsed() < Duration::from_secs(30) {
            if matches!(self.0.try_wait(), Ok(Some(_))) {
                return;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        let pgid = rustix::process::Pid::from_raw(self.0.id() as i32).expect("pids are positive");
        let _ = rustix::process::kill_process_group(pgid, rustix::process::Signal::KILL);
        let _ = self.0.wait();
    }
}

#[test]
fn the_demo_command_prints_a_url_where_the_recording_plays() {
    let dir = tempfile::tempdir().unwrap();
    let listen = TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap();
    let display = (0..50).find_map(|_| unused_display()).unwrap();
    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/../scripts/demo.sh");
    // The programs under the names the demo runs them by.
    let bin = dir.path().join("bin");
    std::fs::create_dir(&bin).unwrap();
    for (name, program) in [
        (
            "jitrec-recorder",
            env!("CARGO_BIN_EXE_jitrec-test-recorder"),
        ),
        (
            "jitrec-uploader",
            env!("CARGO_BIN_EXE_jitrec-test-uploader"),
        ),
        ("jitrec-player", env!("CARGO_BIN_EXE_jitrec-test-player")),
    ] {
        std::os::unix::fs::symlink(program, bin.join(name)).unwrap();
    }
    let mut cmd = Command::new("bash");
    cmd.arg(script)
        .env("JITREC_DEMO_BIN", &bin)
        .env("JITREC_DEMO_DIR", dir.path().join("demo"))
        .env("JITREC_DEMO_DISPLAY", &display)
        .env("JITREC_DEMO_LISTEN", listen.to_string())
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit());
    // Its own process group, so an interrupt reaches the demo and everything it started, as
    // Ctrl-C in a terminal would.
    std::os::unix::process::CommandExt::process_group(&mut cmd, 0);
    let mut demo = Demo(cmd.spawn().unwrap());

    // Its output, line by line, until it says where to go.
    let (tx, rx) = mpsc::channel();
    let stdout = demo.0.stdout.take().unwrap();
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines().map_while(Result::ok) {
            if tx.send(line).is_err() {
                break;
            }
        }
    });
    let started = Instant::now();
    let (mut url, mut login) = (None, None);
    let mut printed = Vec::new();
    while url.is_none() || login.is_none() {
        let left = LIMIT.saturating_sub(started.elapsed());
        let line = rx.recv_timeout(left).unwrap_or_else(|e| {
            panic!("the demo stopped or hung ({e}); it printed:\n{printed:#?}")
        });
        if let Some(u) = line.trim().strip_prefix("report view:") {
            url = Some(u.trim().trim_end_matches('/').to_owned());
        }
        if let Some(s) = line.trim().strip_prefix("sign in as:") {
            let (user, password) = s.trim().split_once(" / ").unwrap();
            login = Some((user.to_owned(), password.to_owned()));
        }
        printed.push(line);
    }
    let (url, (user, password)) = (url.unwrap(), login.unwrap());
    assert_eq!(url, format!("http://{listen}"));

    let b = Browser::start(1280, 1000).unwrap();
    sign_in(&b, &url, (&user, &password));
    // The list: the demo's one session, complete (the demo waits for that before printing).
    let rows = b
        .wait_for(
            "(() => { const r = [...document.querySelectorAll('tr.session')]; return r.length ? r.map((x) => [x.dataset.id, x.querySelector('.badge').textContent]) : null; })()",
            Duration::from_secs(60),
            "the session list",
        )
        .unwrap();
    let rows: Vec<(String, String)> = serde_json::from_value(rows).unwrap();
    assert_eq!(rows.len(), 1, "{rows:?}");
    assert_eq!(rows[0].1, "complete", "{rows:?}");
    let id = &rows[0].0;
    // Signed by the endpoint's key, which the demo approved as an administrator would.
    let trust = b
        .wait_for(
            "(() => { const r = document.querySelector('tr.session'); const t = r && r.querySelectorAll('.badge')[1]; return t ? t.textContent : null; })()",
            Duration::from_secs(10),
            "the session's authenticity",
        )
        .unwrap();
    assert_eq!(trust, "verified");

    // The search the demo suggests lists it with a hit that opens the player at the moment.
    b.goto(&format!("{url}/?q=useradd")).unwrap();
    let row = format!("tr.session[data-id='{id}']");
    // The terminal's own command line names the scripted commands too: the hit wanted is the
    // command itself.
    b.wait_for(
        &format!("(() => {{ const a = [...document.querySelectorAll(\"{row} a.hit\")].find((a) => a.textContent.includes('useradd -m demo-temp-user (user')); if (a) a.id = 'useradd-hit'; return a ? a.textContent : null; }})()"),
        Duration::from_secs(60),
        "the search hit for the useradd command",
    )
    .unwrap();
    b.click(&b.find("#useradd-hit").unwrap()).unwrap();
    let s = state_when(
        &b,
        "s.readyState >= 2 && s.chunks > 0",
        "the recording at the hit",
    );
    assert!(s["error"].is_null(), "{s}");
    let at = s["currentTime"].as_f64().unwrap();
    assert!(
        at > 1.0,
        "the hit opens the player at the command, not at 0: {s}"
    );
    // It plays from there.
    b.eval("document.querySelector('#video').play();", json!([]))
        .unwrap();
    let s = state_when(
        &b,
        &format!("s.currentTime > {} && !s.paused", at + 0.5),
        "playback to advance",
    );
    assert!(s["error"].is_null(), "{s}");
    // The timeline holds the scripted session: JIT start and the command the search found.
    let timeline = b
        .eval(
            "return [...document.querySelectorAll('#events li')].map((li) => li.textContent).join('\\n');",
            json!([]),
        )
        .unwrap();
    let timeline = timeline.as_str().unwrap();
    assert!(timeline.contains("JIT start: demo-admin"), "{timeline}");
    assert!(timeline.contains("useradd -m demo-temp-user"), "{timeline}");
    drop(b);

    // Ctrl-C stops it all: the player's port closes.
    demo.interrupt();
    let stopped = Instant::now();
    while std::net::TcpStream::connect(listen).is_ok() {
        assert!(
            stopped.elapsed() < Duration::from_secs(60),
            "the player still answers after Ctrl-C"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}
