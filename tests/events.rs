//! Process and window events through the real recorder: Xvfb, the kernel's process-events
//! connector (the tests run as root), real processes, the real spool. Each test records one JIT
//! session, reads every chunk back, checks the chunk/event rules of the format, and then looks
//! for what it did during (and before) JIT.

use std::process::{Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc;
use std::time::Duration;

use chrono::{DateTime, Utc};
use jitrec_format::{
    ChunkManifest, Event, EventKind, ProcessStart, SessionHeader, SourceState, WindowInfo,
    validate_events,
};
use jitrec_recorder::capture::x11::X11Source;
use jitrec_recorder::events::linux::process::{ProcessConfig, ProcessSource};
use jitrec_recorder::events::linux::window::WindowSource;
use jitrec_recorder::events::redact::{RedactionConfig, Redactor};
use jitrec_recorder::events::{EventLimits, EventSource, SourceFactory};
use jitrec_recorder::service::{Recorder, RecorderEvent};
use jitrec_recorder::trigger::JitEvent;
use jitrec_spool::{Entry, SpoolConfig, SpoolReader, SpoolWriter};
use jitrec_tests::xvfb::{FakeWm, Xvfb};

/// Generous for a loaded 2-core machine.
const LIMIT: Duration = Duration::from_secs(60);

/// What one recorded session holds.
pub(crate) struct Recorded {
    pub(crate) header: SessionHeader,
    pub(crate) events: Vec<Event>,
}

impl Recorded {
    pub(crate) fn starts(&self) -> impl Iterator<Item = (&Event, &ProcessStart)> {
        self.events.iter().filter_map(|e| match &e.event {
            EventKind::ProcessStart(p) => Some((e, p)),
            _ => None,
        })
    }

    /// The first focus (`focus`) or title event of window `hex`.
    pub(crate) fn window_event(&self, hex: &str, focus: bool) -> (&Event, &WindowInfo) {
        self.events
            .iter()
            .find_map(|e| match &e.event {
                EventKind::WindowFocus(w) if focus && w.window == hex => Some((e, w)),
                EventKind::WindowTitle(w) if !focus && w.window == hex => Some((e, w)),
                _ => None,
            })
            .unwrap_or_else(|| {
                panic!(
                    "no {} event for {hex}",
                    if focus { "focus" } else { "title" }
                )
            })
    }

    pub(crate) fn source_state(&self, source: &str) -> Vec<SourceState> {
        self.events
            .iter()
            .filter_map(|e| match &e.event {
                EventKind::EventSource {
                    source: s, state, ..
                } if s == source => Some(*state),
                _ => None,
            })
            .collect()
    }
}

pub(crate) fn process_config(force_poll: bool) -> ProcessConfig {
    ProcessConfig {
        redactor: Arc::new(Redactor::new(&RedactionConfig::default()).unwrap()),
        admin_gid: jitrec_recorder::accounts::lookup_group("/etc/group".as_ref(), "sudo")
            .map(|(g, _)| g),
        passwd_file: "/etc/passwd".into(),
        proc_root: "/proc".into(),
        poll_interval: Duration::from_millis(100),
        force_poll,
        session_user: None,
    }
}

/// Records one JIT session on `x` with the sources `factory` makes, running `during` while JIT
/// is on; returns its events after checking every chunk against the format's rules.
fn record(
    x: &Xvfb,
    factory: SourceFactory,
    limits: EventLimits,
    during: impl FnOnce(),
) -> Recorded {
    let tmp = tempfile::tempdir().unwrap();
    let spool_dir = tmp.path().join("spool");
    let session = record_into(&spool_dir, x, factory, limits, during);
    read_recorded(&spool_dir, session)
}

/// Records one JIT session (user alice, authorised by bob) into the spool at `spool_dir`,
/// running `during` while JIT is on; returns the session once its close record is committed.
pub(crate) fn record_into(
    spool_dir: &std::path::Path,
    x: &Xvfb,
    factory: SourceFactory,
    limits: EventLimits,
    during: impl FnOnce(),
) -> jitrec_format::SessionId {
    let (spool, _) = SpoolWriter::open(spool_dir, SpoolConfig::default()).unwrap();
    let mut config = crate::recorder::recorder_config();
    config.events = limits;
    let (jit_tx, jit_rx) = mpsc::channel();
    let (obs_tx, obs_rx) = mpsc::channel();
    let stop = Arc::new(AtomicBool::new(false));
    let display = x.display.clone();
    let recorder = {
        let stop = Arc::clone(&stop);
        std::thread::spawn(move || {
            Recorder::new(spool, config, move || X11Source::open(Some(&display)))
                .with_event_sources(factory)
                .run(jit_rx, stop, |ev| {
                    let _ = obs_tx.send(ev);
                })
        })
    };
    jit_tx
        .send(JitEvent::Start {
            user: "alice".into(),
            trigger: jitrec_format::Trigger::ControlCommand,
            authorized_by: Some("bob".into()),
            reason: Some("CHG-1".into()),
        })
        .unwrap();
    let started = obs_rx.recv_timeout(LIMIT).expect("session started");
    assert!(matches!(started, RecorderEvent::Started(_)), "{started:?}");
    during();
    jit_tx
        .send(JitEvent::Stop {
            cause: jitrec_tests::control_stop("test"),
            reply: None,
        })
        .unwrap();
    let done = obs_rx
        .recv_timeout(LIMIT)
        .expect("session closed after JIT stop");
    let RecorderEvent::Done(done) = done else {
        panic!("expected Done, got {done:?}");
    };
    stop.store(true, Ordering::SeqCst);
    recorder.join().unwrap().unwrap();
    done.session
}

pub(crate) fn read_recorded(
    spool_dir: &std::path::Path,
    session: jitrec_format::SessionId,
) -> Recorded {
    let reader = SpoolReader::open(spool_dir, SpoolConfig::default()).unwrap();
    let mut header = None;
    let mut events = Vec::new();
    let mut last_end = None;
    for e in reader.pending(session).unwrap() {
        match reader.read(&e).unwrap() {
            Entry::Header { header: h, .. } => header = Some(h),
            Entry::Chunk {
                manifest,
                events: ev,
                ..
            } => {
                let decoded = jitrec_format::decode_events(&ev).unwrap();
                check_chunk(&manifest, &decoded);
                last_end = Some(manifest.media_end_us);
                events.extend(decoded);
            }
            Entry::Init { .. } | Entry::Close { .. } => {}
        }
    }
    let last_end = last_end.expect("at least one chunk");
    assert!(events.iter().all(|e| e.media_us <= last_end));
    Recorded {
        header: header.expect("session header"),
        events,
    }
}

/// The format's rules for a chunk's events: count, order, inside the chunk's interval.
fn check_chunk(m: &ChunkManifest, events: &[Event]) {
    validate_events(m, events).unwrap_or_else(|e| panic!("chunk {}: {e}", m.seq));
}

/// Runs `/bin/true` 1,000 times from a shell loop; returns the shell's pid once it is done.
fn run_1000_short_processes() -> u32 {
    let mut sh = Command::new("/bin/sh")
        .args([
            "-c",
            "i=0; while [ $i -lt 1000 ]; do /bin/true; i=$((i+1)); done",
        ])
        .spawn()
        .unwrap();
    let pid = sh.id();
    assert!(sh.wait().unwrap().success());
    pid
}

fn within(a: DateTime<Utc>, b: DateTime<Utc>, ms: i64) -> bool {
    (a - b).num_milliseconds().abs() <= ms
}

/// Where the test's windows go, and their colour.
const SMALL: (i16, i16, u16, u16) = (10, 10, 100, 80);
const BLUE: u32 = 0x0000_80ff;

#[test]
fn processes_and_windows_during_jit_are_recorded_on_the_video_clock_and_nothing_before() {
    let x = Xvfb::start(320, 240).unwrap();
    let wm = FakeWm::new(&x.display).unwrap();
    let display = x.display.clone();
    let factory: SourceFactory = Box::new(move |_| {
        let redactor = Arc::new(Redactor::new(&RedactionConfig::default()).unwrap());
        vec![
            Box::new(ProcessSource::open(process_config(false))) as Box<dyn EventSource>,
            Box::new(WindowSource::open(Some(&display), redactor)),
        ]
    });

    // Before JIT: a command that finishes, and one still running when JIT starts.
    Command::new("/bin/echo")
        .arg("jitrec-before-jit")
        .stdout(Stdio::null())
        .status()
        .unwrap();
    let mut straddling = Command::new("/bin/sh")
        .args(["-c", "sleep 1; exit 3"])
        .spawn()
        .unwrap();
    let straddling_pid = straddling.id();
    let before_window = wm.window("before JIT", SMALL, BLUE).unwrap();
    wm.retitle(before_window, "still before JIT").unwrap();

    let mut ran = None;
    let rec = record(&x, factory, EventLimits::default(), || {
        // A window gets focus, then a new title.
        let win = wm
            .window("jitrec test \u{2014} window", SMALL, BLUE)
            .unwrap();
        let focus_at = Utc::now();
        wm.activate(win).unwrap();
        std::thread::sleep(Duration::from_millis(300));
        let title_at = Utc::now();
        wm.retitle(win, "vim /etc/sudoers").unwrap();

        // A command with a secret on its command line, started by this process as a terminal
        // would start it. It lives 100 ms, as most commands typed by an administrator do: the
        // command line of one that ends within a millisecond can be gone before it is read
        // (counted below for the 1,000 short-lived ones).
        let cmd_at = Utc::now();
        let mut sh = Command::new("/bin/sh")
            .args(["-c", "sleep 0.1", "jitrec-during", "--password=hunter2"])
            .spawn()
            .unwrap();
        let sh_pid = sh.id();
        assert!(sh.wait().unwrap().success());
        // A command as an unprivileged user.
        let nobody = Command::new("setpriv")
            .args(["--reuid=65534", "--regid=65534", "--clear-groups"])
            .args(["/bin/sh", "-c", "sleep 0.1", "jitrec-as-nobody"])
            .status()
            .expect("run setpriv (util-linux)");
        assert!(nobody.success());
        // 1,000 short-lived processes.
        let burst_pid = run_1000_short_processes();
        assert_eq!(straddling.wait().unwrap().code(), Some(3));
        ran = Some((win, focus_at, title_at, cmd_at, sh_pid, burst_pid));
    });
    let (win, focus_at, title_at, cmd_at, sh_pid, burst_pid) = ran.unwrap();

    // Every source covered the whole session.
    assert_eq!(rec.source_state("processes"), [SourceState::Complete]);
    assert_eq!(rec.source_state("windows"), [SourceState::Complete]);
    assert!(matches!(rec.events[0].event, EventKind::JitStart { .. }));

    // Nothing from before JIT, not even the exit of a process that straddled its start. Every
    // event kept the media time it was stamped with (an event pushed into a later chunk would
    // have been moved to that chunk's start).
    for e in &rec.events {
        assert_eq!(
            e.utc,
            rec.header.started_at + chrono::Duration::microseconds(e.media_us.as_micros() as i64),
            "{e:?} was moved from its time"
        );
        let json = serde_json::to_string(e).unwrap();
        assert!(
            !json.contains("jitrec-before-jit"),
            "from before JIT: {json}"
        );
        assert!(!json.contains("before JIT"), "from before JIT: {json}");
        assert!(!json.contains("hunter2"), "a secret was recorded: {json}");
        match &e.event {
            EventKind::ProcessStart(p) => assert_ne!(p.pid, straddling_pid, "{json}"),
            EventKind::ProcessExit(p) => assert_ne!(p.pid, straddling_pid, "{json}"),
            _ => {}
        }
    }

    // The command: full (redacted) command line, user, parent, and when.
    let (e, cmd) = rec
        .starts()
        .find(|(_, p)| p.pid == sh_pid)
        .expect("the command run during JIT was recorded");
    assert_eq!(
        cmd.command_line,
        "/bin/sh -c 'sleep 0.1' jitrec-during --password=[REDACTED]"
    );
    assert_eq!(cmd.ppid, std::process::id());
    assert_eq!(
        (cmd.user.name.as_str(), cmd.user.id.as_str()),
        ("root", "0")
    );
    assert!(cmd.elevated);
    assert!(cmd.exe.ends_with("sh"), "{}", cmd.exe);
    let late_ms = (e.utc - cmd_at).num_milliseconds();
    eprintln!("command started {late_ms} ms after the test started it");
    assert!(
        within(e.utc, cmd_at, 100),
        "command at {late_ms} ms from when it was started"
    );
    assert_eq!(
        e.utc,
        rec.header.started_at + chrono::Duration::microseconds(e.media_us.as_micros() as i64)
    );
    let (_, sleep) = rec
        .starts()
        .find(|(_, p)| p.ppid == sh_pid)
        .expect("the command's child");
    assert_eq!(sleep.command_line, "sleep 0.1");
    assert!(rec.events.iter().any(|e| matches!(&e.event,
        EventKind::ProcessExit(x) if x.pid == sh_pid && x.exit_code == Some(0))));

    let (_, nobody) = rec
        .starts()
        .find(|(_, p)| p.command_line == "/bin/sh -c 'sleep 0.1' jitrec-as-nobody")
        .expect("the unprivileged command was recorded");
    assert_eq!(
        (nobody.user.name.as_str(), nobody.user.id.as_str()),
        ("nobody", "65534")
    );
    assert!(!nobody.elevated);

    // All 1,000 short-lived processes, started and ended.
    let children: Vec<&ProcessStart> = rec
        .starts()
        .map(|(_, p)| p)
        .filter(|p| p.ppid == burst_pid)
        .collect();
    let detailed = children
        .iter()
        .filter(|p| p.command_line == "/bin/true")
        .count();
    eprintln!(
        "{} of 1000 short-lived processes recorded, {detailed} with their command line",
        children.len()
    );
    assert_eq!(children.len(), 1000);
    let pids: std::collections::HashSet<u32> = children.iter().map(|p| p.pid).collect();
    let exits = rec
        .events
        .iter()
        .filter(|e| {
            matches!(&e.event,
            EventKind::ProcessExit(x) if pids.contains(&x.pid) && x.exit_code == Some(0))
        })
        .count();
    assert_eq!(exits, 1000);

    // Focus and title, at the right time, with the owning process.
    let hex = format!("0x{win:x}");
    let (focus, w) = rec.window_event(&hex, true);
    assert_eq!(w.title, "jitrec test \u{2014} window");
    assert_eq!(w.pid, Some(std::process::id()));
    assert!(
        within(focus.utc, focus_at, 100),
        "focus {} vs {}",
        focus.utc,
        focus_at
    );
    let (title, w) = rec.window_event(&hex, false);
    assert_eq!(w.title, "vim /etc/sudoers");
    assert!(
        within(title.utc, title_at, 100),
        "title {} vs {}",
        title.utc,
        title_at
    );
}

#[test]
fn without_the_connector_processes_are_polled_and_the_session_says_so() {
    let x = Xvfb::start(320, 240).unwrap();
    let factory: SourceFactory = Box::new(|_| {
        vec![Box::new(ProcessSource::open(process_config(true))) as Box<dyn EventSource>]
    });
    let mut ran = None;
    let rec = record(&x, factory, EventLimits::default(), || {
        let at = Utc::now();
        let mut sleep = Command::new("sleep").arg("0.6").spawn().unwrap();
        let pid = sleep.id();
        assert!(sleep.wait().unwrap().success());
        // Let the poller notice the exit before JIT ends.
        std::thread::sleep(Duration::from_millis(400));
        ran = Some((at, pid));
    });
    let (at, pid) = ran.unwrap();
    assert_eq!(rec.source_state("processes"), [SourceState::Partial]);
    for e in &rec.events {
        eprintln!("{e:?}");
    }
    let (e, p) = rec
        .starts()
        .find(|(_, p)| p.pid == pid)
        .expect("a 600 ms process was seen by polling");
    assert_eq!(p.command_line, "sleep 0.6");
    assert_eq!(p.ppid, std::process::id());
    // Start times come from /proc in 10 ms ticks.
    assert!(within(e.utc, at, 100), "start {} vs {}", e.utc, at);
    assert!(rec.events.iter().any(|e| matches!(&e.event,
        EventKind::ProcessExit(x) if x.pid == pid && x.exit_code.is_none())));
}

#[test]
fn a_flood_of_processes_is_summarised_not_lost() {
    let x = Xvfb::start(320, 240).unwrap();
    let factory: SourceFactory = Box::new(|_| {
        vec![Box::new(ProcessSource::open(process_config(false))) as Box<dyn EventSource>]
    });
    let limits = EventLimits {
        burst: 100,
        rate: 50,
        queue: 16_384,
    };
    let mut burst_pid = 0;
    let rec = record(&x, factory, limits, || {
        burst_pid = run_1000_short_processes();
    });
    let individual = rec.starts().filter(|(_, p)| p.ppid == burst_pid).count();
    let mut summarised_true = 0u64;
    for e in &rec.events {
        if let EventKind::EventsSummarised { what, count } = &e.event {
            eprintln!("summary of {count}: {what}");
            // "...: process_start true 812, process_exit 815, process_start ? 3 and 2 more kinds"
            // (the kinds not listed are the rarest: other processes of a busy machine).
            for part in what.split(", ") {
                let part = match part.rsplit_once(" and ") {
                    Some((head, tail)) if tail.ends_with("more kinds") => head,
                    _ => part,
                };
                if let Some((_, kind)) = part.rsplit_once("process_start ")
                    && let Some((_, n)) = kind.rsplit_once(' ')
                {
                    summarised_true += n.parse::<u64>().unwrap_or_else(|_| panic!("{what}"));
                }
            }
        }
    }
    eprintln!("{individual} starts written one by one, {summarised_true} summarised");
    assert!(individual < 1000, "the bound did not apply");
    assert!(summarised_true > 0, "nothing was summarised");
    // On a machine loaded by other work the kernel can drop connector messages (its receive
    // buffer overflows while this thread waits for a CPU). That loss cannot be counted, but it
    // must not be silent: the session then says so.
    let kernel_dropped = rec.events.iter().any(|e| {
        matches!(&e.event, EventKind::EventSource { source, state: SourceState::Partial, detail }
            if source == "processes" && detail.contains("dropped"))
    });
    let accounted = individual as u64 + summarised_true;
    // What the sources said of themselves, for whoever reads a failure of this test.
    for e in &rec.events {
        if let EventKind::EventSource { .. } = &e.event {
            eprintln!("at {}: {:?}", e.media_us, e.event);
        }
    }
    if kernel_dropped {
        eprintln!("the kernel dropped process events; {accounted} of 1000 starts accounted for");
    } else {
        assert!(
            accounted >= 1000,
            "{accounted} of 1000 starts accounted for, and no loss was reported"
        );
    }
}
