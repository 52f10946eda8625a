//! The endpoint against its own administrator (issue 18): the real recorder program on Xvfb,
//! killed with `kill -9` by a command run on the recorded machine, restarted as systemd would.
//! What the kill did must be in the recording: the `kill` command itself (journalled before the
//! recorder died, folded in by the next run), the interrupted session closed with a `gap`, and a
//! new session started at once, without a new `jit start`, that names the one it continues.

use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use jitrec_format::{
    ChainVerifier, EndReason, Event, EventKind, SessionClose, SessionHeader, SessionId, StopBy,
    Trigger, decode_events,
};
use jitrec_spool::{Entry, SpoolConfig, SpoolReader};
use jitrec_tests::child::Reaped;
use jitrec_tests::xvfb::Xvfb;

use crate::recorder_process::{chunk_count, jit, sessions, wait_until};

const RECORDER: &str = env!("CARGO_BIN_EXE_jitrec-test-recorder");

/// Starts `jitrec-recorder run`, its log appended to `recorder.log` beside the config.
fn start_recorder(config: &Path) -> Reaped {
    let log = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(config.with_file_name("recorder.log"))
        .unwrap();
    Command::new(RECORDER)
        .args(["run", "--config", config.to_str().unwrap()])
        .env("RUST_LOG", "warn")
        .stdout(Stdio::null())
        .stderr(log)
        .spawn()
        .unwrap()
        .into()
}

fn log(config: &Path) -> String {
    std::fs::read_to_string(config.with_file_name("recorder.log")).unwrap_or_default()
}

/// A recorder configuration in `dir` for a control-socket JIT of alice (the group file lists
/// nobody): its spool, socket and config file.
fn control_jit_config(
    dir: &Path,
    display: &str,
    chunk_ms: u64,
) -> (std::path::PathBuf, std::path::PathBuf, std::path::PathBuf) {
    let spool = dir.join("spool");
    let socket = dir.join("recorder.sock");
    let group = dir.join("group");
    std::fs::write(&group, "root:x:0:\nsudo:x:27:\n").unwrap();
    let config = dir.join("recorder.toml");
    std::fs::write(
        &config,
        format!(
            "spool = {spool:?}\n\n[jit]\nuser = \"alice\"\ngroup = \"sudo\"\ngroup_file = {group:?}\n\n\
             [control]\nsocket = {socket:?}\n\n[capture]\ndisplay = \"{display}\"\nfps = 5\n\n\
             [encoder]\nchunk_ms = {chunk_ms}\n"
        ),
    )
    .unwrap();
    (spool, socket, config)
}

/// A session as the spool holds it, chain verified: header, every event, close record,
/// chunk count.
pub(crate) struct Spooled {
    pub(crate) header: SessionHeader,
    pub(crate) events: Vec<Event>,
    pub(crate) close: Option<SessionClose>,
    pub(crate) chunks: u64,
}

pub(crate) fn read_session(spool: &Path, s: SessionId) -> Spooled {
    let r = SpoolReader::open(spool, SpoolConfig::default()).unwrap();
    let (mut chain, mut header, mut close, mut chunks) = (None, None, None, 0);
    let mut events = Vec::new();
    for e in r.pending(s).unwrap() {
        match r.read(&e).unwrap() {
            Entry::Header { bytes, header: h } => {
                chain = Some(ChainVerifier::new(&bytes).unwrap());
                header = Some(h);
            }
            Entry::Chunk {
                manifest_bytes,
                events: ev,
                ..
            } => {
                chain.as_mut().unwrap().push(&manifest_bytes).unwrap();
                events.extend(decode_events(&ev).unwrap());
                chunks += 1;
            }
            Entry::Close { bytes, .. } => close = Some(bytes),
            Entry::Init { .. } => {}
        }
    }
    let close = close.map(|c| chain.unwrap().finish(&c).unwrap());
    Spooled {
        header: header.unwrap(),
        events,
        close,
        chunks,
    }
}

/// Whether `events` hold the exec of `kill -9 PID`.
fn has_kill(events: &[Event], pid: u32) -> bool {
    let words = format!("kill -9 {pid}");
    events.iter().any(|e| match &e.event {
        EventKind::ProcessStart(p) => p.command_line.contains(&words),
        _ => false,
    })
}

/// Ten times: a control-socket JIT is recording, a root shell on the machine runs
/// `/usr/bin/kill -9 <recorder>`, the service manager (here the test) starts the recorder again.
/// Each time the killed session is closed `interrupted` with a `gap`, a new session starts
/// within 2 s without a new `jit start` and names it, and the `kill` command is in the killed
/// session (the figure is printed; at least 9 of 10 are required).
#[test]
fn kill_minus_9_leaves_the_kill_in_the_recording_and_recording_resumes_at_once() {
    const RUNS: usize = 10;
    let x = Xvfb::start(320, 240).unwrap();
    let tmp = tempfile::tempdir().unwrap();
    let (spool, socket, config) = control_jit_config(tmp.path(), &x.display, 2000);

    let mut rec = start_recorder(&config);
    wait_until("the control socket", || socket.exists());
    let out = jit(
        &socket,
        &[
            "start",
            "--user",
            "alice",
            "--authorized-by",
            "jit-controller",
            "--reason",
            "CHG-18",
        ],
    );
    assert!(out.status.success(), "{out:?}");
    let mut current = sessions(&spool)[0];
    let mut caught = 0;
    let mut resume_times = Vec::new();
    for run in 0..RUNS {
        // A chunk is committed, so the kill lands between two cuts (in the journal only).
        let c = chunk_count(&spool, current);
        wait_until("a chunk", || chunk_count(&spool, current) > c);
        let pid = rec.id();
        let kill = Command::new("/usr/bin/kill")
            .args(["-9", &pid.to_string()])
            .status()
            .unwrap();
        assert!(kill.success());
        use std::os::unix::process::ExitStatusExt;
        assert_eq!(rec.wait().unwrap().signal(), Some(9));
        drop(rec);
        // As systemd's ExecStopPost would, with the variables systemd sets for it.
        let note = Command::new(RECORDER)
            .args(["note-exit", "--config", config.to_str().unwrap()])
            .env("SERVICE_RESULT", "signal")
            .env("EXIT_CODE", "killed")
            .env("EXIT_STATUS", "KILL")
            .output()
            .unwrap();
        assert!(note.status.success(), "{note:?}");
        let restarted = Instant::now();
        rec = start_recorder(&config);
        let before = current;
        wait_until("the new session", || sessions(&spool).len() == run + 2);
        resume_times.push(restarted.elapsed());
        current = *sessions(&spool).last().unwrap();
        assert_ne!(current, before);
        wait_until("its header", || {
            SpoolReader::open(&spool, SpoolConfig::default())
                .and_then(|r| r.pending(current))
                .is_ok_and(|p| p.iter().any(|e| e.name == jitrec_spool::EntryName::Header))
        });
        let killed = read_session(&spool, before);
        let close = killed
            .close
            .as_ref()
            .unwrap_or_else(|| panic!("not closed by the restarted recorder: {}", log(&config)));
        assert_eq!(close.end_reason, EndReason::Interrupted);
        let cause = close.stopped_by.as_ref().unwrap();
        assert_eq!(cause.by, StopBy::RecorderCrash);
        assert!(cause.detail.contains("killed KILL"), "{cause:?}");
        assert!(
            killed.events.iter().any(|e| matches!(&e.event,
                EventKind::Gap { reason, .. } if reason.contains("the recorder died")
                    && reason.contains("signal, killed KILL"))),
            "the killed session states its hole and what systemd saw: {:?}",
            killed.events.last()
        );
        assert_eq!(killed.header.authorization.trigger, Trigger::ControlCommand);
        if has_kill(&killed.events, pid) {
            caught += 1;
        } else {
            eprintln!(
                "run {run}: the kill of pid {pid} is not in the killed session; its last events: {:#?}",
                &killed.events[killed.events.len().saturating_sub(5)..]
            );
        }
        let new = read_session(&spool, current).header;
        assert_eq!(new.continues, Some(before), "run {run}");
        assert_eq!(new.authorization.trigger, Trigger::ControlCommand);
        assert_eq!(
            new.authorization.authorized_by.as_deref(),
            Some("jit-controller"),
            "the resumed session keeps who authorised the elevation"
        );
        assert_eq!(new.authorization.reason.as_deref(), Some("CHG-18"));
    }
    let slowest = resume_times.iter().max().unwrap();
    eprintln!(
        "kill -9 of the recorder: the kill command was in the recording in {caught} of {RUNS} runs; \
         a new session started {:.2} s after the restart at the slowest (times: {:?})",
        slowest.as_secs_f64(),
        resume_times
    );
    assert!(
        caught >= 9,
        "the kill was recorded in only {caught} of {RUNS} runs"
    );
    assert!(
        *slowest < Duration::from_secs(2),
        "a restarted recorder took {slowest:?} to record again"
    );

    // The controller's stop ends the elevation: the state is gone, a restart records nothing.
    let out = jit(&socket, &["stop"]);
    assert!(
        out.status.success(),
        "{out:?}\nthe recorder's log:\n{}",
        log(&config)
    );
    let last = read_session(&spool, current);
    assert_eq!(last.close.unwrap().end_reason, EndReason::ControlStop);
    assert!(last.chunks >= 1);
    let n = sessions(&spool).len();
    let pid = rec.id();
    assert!(
        Command::new("/usr/bin/kill")
            .args(["-TERM", &pid.to_string()])
            .status()
            .unwrap()
            .success()
    );
    assert!(rec.wait().unwrap().success());
    drop(rec);
    let rec = start_recorder(&config);
    wait_until("the control socket", || socket.exists());
    let out = jit(&socket, &["status"]);
    assert_eq!(String::from_utf8_lossy(&out.stdout).trim(), "idle");
    assert_eq!(
        sessions(&spool).len(),
        n,
        "nothing is recorded after JIT ended"
    );
    drop(rec);
}

/// SIGTERM from the recorded admin's shell is evidence: the close record names the sender.
#[test]
fn a_sigterm_names_its_sender_in_the_close_record() {
    let x = Xvfb::start(320, 240).unwrap();
    let tmp = tempfile::tempdir().unwrap();
    let (spool, socket, config) = control_jit_config(tmp.path(), &x.display, 1000);
    let mut rec = start_recorder(&config);
    wait_until("the control socket", || socket.exists());
    assert!(jit(&socket, &["start", "--user", "alice"]).status.success());
    let s = sessions(&spool)[0];
    // A shell that stays alive a moment after its kill, so its command line can be read.
    let sh = Command::new("sh")
        .args([
            "-c",
            &format!("kill -TERM {}; sleep 2; echo stopped-it", rec.id()),
        ])
        .stdout(Stdio::null())
        .spawn()
        .unwrap();
    let shell_pid = sh.id();
    assert!(rec.wait().unwrap().success());
    let close = read_session(&spool, s).close.unwrap();
    assert_eq!(close.end_reason, EndReason::RecorderShutdown);
    let cause = close.stopped_by.unwrap();
    assert!(
        cause
            .detail
            .contains(&format!("SIGTERM from pid {shell_pid}")),
        "{cause:?}"
    );
    assert!(
        cause.detail.contains("stopped-it"),
        "the sender's command line: {cause:?}"
    );
    let peer = cause.peer.expect("the sender is named");
    assert_eq!(peer.user.id, "0");
    let mut sh: Reaped = sh.into();
    let _ = sh.wait();
}

/// The whole path: a recorder killed with `kill -9` mid-JIT, restarted as systemd would, the
/// uploader and the player running throughout. In the player, the killed session is
/// `interrupted`, holds the `kill` command (searchable) and the `gap`, verifies intact, and is
/// linked to the session that continues the elevation.
#[test]
fn a_killed_recorder_is_evidence_in_the_player() {
    use jitrec_tests::pipeline::{Pipeline, PipelineConfig, Programs, Store};
    let config = PipelineConfig {
        programs: Programs {
            recorder: env!("CARGO_BIN_EXE_jitrec-test-recorder").into(),
            uploader: env!("CARGO_BIN_EXE_jitrec-test-uploader").into(),
            player: env!("CARGO_BIN_EXE_jitrec-test-player").into(),
        },
        store: Store::DirBucket,
        width: 320,
        height: 240,
        fps: 5,
        chunk_ms: 1000,
        index: None,
        encrypt: false,
        player_args: Vec::new(),
        recorder_toml: String::new(),
    };
    let mut p = Pipeline::start(&config).unwrap();
    let id = p.jit_start("alice", "jit-controller", "CHG-18").unwrap();
    p.wait_for("two chunks in the player", |p| {
        Ok(p.detail(id)?
            .is_some_and(|d| d["chunks"].as_array().is_some_and(|c| c.len() >= 2)))
    })
    .unwrap();
    let pid = p.recorder_pid().unwrap();
    // The kill goes through a shell that waits a moment first, so the command line that names
    // the kill (`sh -c '...kill -9 <pid>'`) is in the recording whatever the scheduler does:
    // this test is about that evidence reaching the player. Whether the recorder journals a bare
    // `/usr/bin/kill` before its signal lands is a race the recorder usually wins, measured over
    // ten kills by `kill_minus_9_leaves_the_kill_in_the_recording_and_recording_resumes_at_once`.
    let words = format!("kill -9 {pid}");
    let kill = Command::new("/bin/sh")
        .args(["-c", &format!("sleep 0.3; /usr/bin/{words}")])
        .status()
        .unwrap();
    assert!(kill.success());
    let killed_at = Instant::now();
    // Before anything restarts it, the player flags the silence on its own clock.
    // (Polled here: the pipeline's own wait fails once a program, here the recorder, is dead.)
    while !p
        .detail(id)
        .unwrap()
        .is_some_and(|d| d["session"]["status"] == "silent")
    {
        assert!(
            killed_at.elapsed() < Duration::from_secs(15),
            "not silent 15 s after the kill: {}",
            p.detail(id).unwrap().unwrap()["session"]
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    eprintln!(
        "the player showed the killed recorder's session silent {:.1} s after the kill",
        killed_at.elapsed().as_secs_f64()
    );
    use std::os::unix::process::ExitStatusExt;
    assert_eq!(p.restart_recorder().unwrap().signal(), Some(9));

    p.wait_for("the killed session to be interrupted in the player", |p| {
        Ok(p.detail(id)?.is_some_and(|d| {
            d["session"]["status"] == "interrupted" && d["session"]["closed"] == true
        }))
    })
    .unwrap();
    let d = p.detail(id).unwrap().unwrap();
    let events = d["events"].as_array().unwrap();
    assert!(
        events
            .iter()
            .any(|e| e["kind"] == "process_start" && e["text"].as_str().unwrap().contains(&words)),
        "the kill command is in the killed session: {:?}",
        &events[events.len().saturating_sub(5)..]
    );
    assert!(
        events.iter().any(
            |e| e["kind"] == "gap" && e["text"].as_str().unwrap().contains("the recorder died")
        ),
        "the hole is stated"
    );
    let verdict = p.post_json(&format!("/api/sessions/{id}/verify")).unwrap();
    assert_eq!(verdict["verdict"], "intact", "{verdict}");
    let hits = p
        .get_json(&format!("/api/sessions?q={}", urlencode(&words)))
        .unwrap();
    assert!(
        hits["sessions"]
            .as_array()
            .unwrap()
            .iter()
            .any(|h| h["id"] == id.to_string()),
        "a search for the kill finds the session: {hits}"
    );

    // The elevation goes on in a new session that names the killed one, and the player links
    // them both ways.
    let mut next = None;
    p.wait_for("the continuing session in the player", |p| {
        let list = p.get_json("/api/sessions")?;
        next = list["sessions"]
            .as_array()
            .into_iter()
            .flatten()
            .find(|s| s["continues"] == id.to_string())
            .and_then(|s| s["id"].as_str())
            .map(str::to_owned);
        Ok(next.is_some())
    })
    .unwrap();
    let next: SessionId = next.unwrap().parse().unwrap();
    let d = p.detail(id).unwrap().unwrap();
    assert_eq!(
        d["elevation"]["continued_by"],
        serde_json::json!([next.to_string()])
    );
    let n = p.detail(next).unwrap().unwrap();
    assert_eq!(n["elevation"]["continues"], id.to_string());
    assert_eq!(n["session"]["authorized_by"], "jit-controller");
    p.jit_stop().unwrap();
    p.wait_for("the continuing session to close", |p| {
        Ok(p.detail(next)?
            .is_some_and(|d| d["session"]["closed"] == true))
    })
    .unwrap();
    let verdict = p
        .post_json(&format!("/api/sessions/{next}/verify"))
        .unwrap();
    assert_eq!(verdict["verdict"], "intact", "{verdict}");
}

fn urlencode(s: &str) -> String {
    s.bytes()
        .map(|b| match b {
            b'a'..=b'z' | b'A'..=b'Z' | b'0'..=b'9' | b'-' | b'_' | b'.' => (b as char).to_string(),
            _ => format!("%{b:02X}"),
        })
        .collect()
}

/// `[fail_closed]` on: a spool that stays full ends the user's membership of the admin group
/// (the group file is rewritten, everything else in it kept), and the session says why, in its
/// close record (all a full spool lets through). The recorder itself keeps running.
#[test]
fn fail_closed_ends_the_elevation_when_the_spool_stays_full() {
    let x = Xvfb::start(320, 240).unwrap();
    let tmp = tempfile::tempdir().unwrap();
    let spool = tmp.path().join("spool");
    let socket = tmp.path().join("recorder.sock");
    let group = tmp.path().join("group");
    let others = "root:x:0:\nadm:x:4:alice\n";
    std::fs::write(&group, format!("{others}sudo:x:27:bob\n")).unwrap();
    let config = tmp.path().join("recorder.toml");
    const LIMIT_BYTES: u64 = 8 * 1024 * 1024;
    std::fs::write(
        &config,
        format!(
            "spool = {spool:?}\nspool_max_bytes = {LIMIT_BYTES}\n\n[jit]\nuser = \"alice\"\ngroup = \"sudo\"\ngroup_file = {group:?}\n\n\
             [control]\nsocket = {socket:?}\n\n[capture]\ndisplay = \"{}\"\nfps = 5\n\n\
             [encoder]\nchunk_ms = 500\n\n[notice]\nenabled = false\n\n\
             [fail_closed]\nenabled = true\nspool_full_seconds = 1\n",
            x.display
        ),
    )
    .unwrap();
    // A first run creates the spool; before the second, something else has taken all but a
    // few KiB of its bound (here a file in its quarantine, which counts).
    let mut rec = start_recorder(&config);
    wait_until("the control socket", || socket.exists());
    let pid = rec.id();
    assert!(
        Command::new("/usr/bin/kill")
            .args(["-TERM", &pid.to_string()])
            .status()
            .unwrap()
            .success()
    );
    assert!(rec.wait().unwrap().success());
    drop(rec);
    let filler = spool.join("quarantine").join(SessionId::new().to_string());
    std::fs::create_dir_all(&filler).unwrap();
    std::fs::write(
        filler.join("chunk-0000000000.jrs"),
        vec![0u8; (LIMIT_BYTES - 16 * 1024) as usize],
    )
    .unwrap();
    let mut rec = start_recorder(&config);
    wait_until("the control socket", || socket.exists());

    std::fs::write(&group, format!("{others}sudo:x:27:bob,alice\n")).unwrap();
    wait_until("a session", || !sessions(&spool).is_empty());
    let s = sessions(&spool)[0];
    let took = wait_until("alice to lose her membership", || {
        !jitrec_recorder::accounts::is_member(
            &std::fs::read_to_string(&group).unwrap(),
            "sudo",
            "alice",
        )
    });
    eprintln!(
        "fail closed: alice left the admin group {:.1} s after JIT start",
        took.as_secs_f64()
    );
    assert_eq!(
        std::fs::read_to_string(&group).unwrap(),
        format!("{others}sudo:x:27:bob\n"),
        "only alice's sudo membership went"
    );
    wait_until("the session to close", || {
        read_session(&spool, s).close.is_some()
    });
    let close = read_session(&spool, s).close.unwrap();
    let cause = close.stopped_by.unwrap();
    assert_eq!(cause.by, StopBy::GroupChange);
    assert!(
        cause.detail.contains("fail closed") && cause.detail.contains("the spool was full"),
        "{cause:?}"
    );
    assert!(
        cause.detail.contains("removed alice from group sudo"),
        "{cause:?}"
    );
    assert!(
        rec.try_wait().unwrap().is_none(),
        "the recorder keeps running"
    );
    assert!(log(&config).contains("fail closed"), "{}", log(&config));
}

/// A real full disk: the spool on a small tmpfs that something else fills. The real recorder
/// keeps running and recording resumes once space is freed; the session carries a `gap` over
/// the stretch with the disk's error, and every committed chunk verifies.
#[test]
fn a_full_disk_is_an_outage_the_recording_survives() {
    let x = Xvfb::start(320, 240).unwrap();
    let tmp = tempfile::tempdir().unwrap();
    let disk = tmp.path().join("disk");
    std::fs::create_dir_all(&disk).unwrap();
    let mounted = Command::new("mount")
        .args(["-t", "tmpfs", "-o", "size=16m,mode=0700", "tmpfs"])
        .arg(&disk)
        .status()
        .unwrap();
    assert!(mounted.success(), "mount a tmpfs (the tests run as root)");
    struct Unmount(std::path::PathBuf);
    impl Drop for Unmount {
        fn drop(&mut self) {
            let _ = Command::new("umount").arg("-l").arg(&self.0).status();
        }
    }
    let _unmount = Unmount(disk.clone());
    let spool = disk.join("spool");
    let socket = tmp.path().join("recorder.sock");
    let group = tmp.path().join("group");
    std::fs::write(&group, "root:x:0:\nsudo:x:27:\n").unwrap();
    let config = tmp.path().join("recorder.toml");
    std::fs::write(
        &config,
        format!(
            "spool = {spool:?}\nkey_file = {key:?}\n\n[jit]\ngroup_file = {group:?}\n\n\
             [control]\nsocket = {socket:?}\n\n[capture]\ndisplay = \"{}\"\nfps = 5\n\n\
             [encoder]\nchunk_ms = 500\n\n[notice]\nenabled = false\n",
            x.display,
            key = tmp.path().join("endpoint.key"),
        ),
    )
    .unwrap();
    let mut rec = start_recorder(&config);
    wait_until("the control socket", || socket.exists());
    assert!(jit(&socket, &["start", "--user", "alice"]).status.success());
    let s = sessions(&spool)[0];
    wait_until("a chunk", || chunk_count(&spool, s) >= 1);
    // Something else takes the disk: all of it.
    let filler = disk.join("filler");
    {
        use std::io::Write;
        let mut f = std::fs::File::create(&filler).unwrap();
        let block = vec![0u8; 64 * 1024];
        while f.write_all(&block).is_ok() {}
        let _ = f.sync_all();
    }
    let stuck = chunk_count(&spool, s);
    // The recorder notices at its next cuts and keeps running; nothing commits meanwhile.
    wait_until("the recorder to report the full disk", || {
        log(&config).contains("spool full")
    });
    assert!(
        rec.try_wait().unwrap().is_none(),
        "the recorder keeps running"
    );
    assert!(chunk_count(&spool, s) <= stuck + 1);
    std::fs::remove_file(&filler).unwrap();
    wait_until("recording to resume", || chunk_count(&spool, s) > stuck + 1);
    assert!(jit(&socket, &["stop"]).status.success());
    let done = read_session(&spool, s);
    let close = done.close.expect("closed");
    assert_eq!(close.chunk_count, done.chunks);
    let gap = done
        .events
        .iter()
        .find_map(|e| match &e.event {
            EventKind::Gap { reason, .. } if reason.contains("spool was full") => Some(reason),
            _ => None,
        })
        .unwrap_or_else(|| panic!("no gap for the full disk: {:?}", done.events));
    assert!(
        gap.to_lowercase().contains("space"),
        "the disk's error: {gap}"
    );
    assert!(rec.try_wait().unwrap().is_none());
    drop(rec);
}
