//! The real `jitrec-recorder run` program on Xvfb: the control socket (authorisation, start,
//! stop that returns only after the close record is on disk), the admin-group trigger, SIGKILL
//! mid-session and the interrupted session a restart closes, and a clean SIGTERM.

use std::os::unix::process::{CommandExt, ExitStatusExt};
use std::path::Path;
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

use jitrec_format::{EndReason, SessionClose, SessionHeader, SessionId, Trigger};
use jitrec_spool::{Entry, EntryName, SpoolConfig, SpoolReader};
use jitrec_tests::child::Reaped;
use jitrec_tests::xvfb::Xvfb;

const RECORDER: &str = env!("CARGO_BIN_EXE_jitrec-test-recorder");
const LIMIT: Duration = Duration::from_secs(60);

/// Waits for `cond` (within the tests' generous limit); how long it took.
pub(crate) fn wait_until(what: &str, mut cond: impl FnMut() -> bool) -> Duration {
    let start = Instant::now();
    while !cond() {
        assert!(start.elapsed() < LIMIT, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(10));
    }
    start.elapsed()
}

fn write_group(path: &Path, members: &str) {
    let tmp = path.with_extension("new");
    std::fs::write(&tmp, format!("root:x:0:\nsudo:x:27:{members}\n")).unwrap();
    std::fs::rename(&tmp, path).unwrap();
}

fn start_recorder(config: &Path) -> Reaped {
    Command::new(RECORDER)
        .args(["run", "--config", config.to_str().unwrap()])
        .env("RUST_LOG", "warn")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap()
        .into()
}

pub(crate) fn jit(socket: &Path, args: &[&str]) -> Output {
    Command::new(RECORDER)
        .args(["jit", "--socket", socket.to_str().unwrap()])
        .args(args)
        .output()
        .unwrap()
}

/// Header, close record and chunk count of a session in the spool, chain verified.
fn read_session(spool: &Path, s: SessionId) -> (SessionHeader, Option<SessionClose>, u64) {
    let spooled = crate::endpoint::read_session(spool, s);
    (spooled.header, spooled.close, spooled.chunks)
}

pub(crate) fn sessions(spool: &Path) -> Vec<SessionId> {
    SpoolReader::open(spool, SpoolConfig::default())
        .and_then(|r| r.sessions())
        .unwrap_or_default()
}

pub(crate) fn chunk_count(spool: &Path, s: SessionId) -> usize {
    SpoolReader::open(spool, SpoolConfig::default())
        .and_then(|r| r.pending(s))
        .map(|p| {
            p.iter()
                .filter(|e| matches!(e.name, EntryName::Chunk(_)))
                .count()
        })
        .unwrap_or(0)
}

/// A copy of `program` in a fresh folder under /tmp that any user may enter and run, whatever
/// the permissions of the folders the build lives in.
fn unprivileged_copy(program: &Path) -> tempfile::TempDir {
    use std::os::unix::fs::PermissionsExt;
    let dir = tempfile::Builder::new()
        .prefix("jitrec-unprivileged-")
        .tempdir_in("/tmp")
        .unwrap();
    std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
    let copy = dir.path().join("jitrec-recorder");
    std::fs::copy(program, &copy).unwrap();
    std::fs::set_permissions(&copy, std::fs::Permissions::from_mode(0o755)).unwrap();
    dir
}

#[test]
fn the_recorder_program_is_driven_by_its_socket_and_the_admin_group_and_survives_sigkill() {
    use std::os::unix::fs::PermissionsExt;
    let x = Xvfb::start(320, 240).unwrap();
    // Under /tmp (whatever TMPDIR says), so an unprivileged test client can reach the socket
    // and the recorder's own check is what is tested.
    let tmp = tempfile::Builder::new().tempdir_in("/tmp").unwrap();
    std::fs::set_permissions(tmp.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
    let spool = tmp.path().join("spool");
    let group = tmp.path().join("group");
    let socket = tmp.path().join("recorder.sock");
    write_group(&group, "bob");
    let config = tmp.path().join("recorder.toml");
    std::fs::write(
        &config,
        format!(
            "spool = {spool:?}\n\n[jit]\nuser = \"alice\"\ngroup = \"sudo\"\ngroup_file = {group:?}\n\n\
             [control]\nsocket = {socket:?}\nmode = 0o666\n\n[capture]\ndisplay = \"{}\"\nfps = 10\n\n\
             [encoder]\nchunk_ms = 1000\n\n[labels]\ncompany = \"acme\"\n",
            x.display
        ),
    )
    .unwrap();

    let mut rec = start_recorder(&config);
    wait_until("the control socket", || socket.exists());
    let out = jit(&socket, &["status"]);
    assert!(out.status.success());
    assert_eq!(String::from_utf8_lossy(&out.stdout).trim(), "idle");

    // An unauthorised peer is refused by the recorder itself (the socket file would let it in).
    // The unprivileged client runs a copy of the program from a folder it can reach, so the
    // test does not depend on where the checkout is (a clone under /root is closed to uid
    // 65534); the refusal must come back from the recorder as its answer on stdout, which a
    // file-system refusal (an error on stderr) would not give.
    let client = unprivileged_copy(Path::new(RECORDER));
    let out = Command::new(client.path().join("jitrec-recorder"))
        .args(["jit", "--socket", socket.to_str().unwrap(), "stop"])
        .uid(65534)
        .gid(65534)
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(
        String::from_utf8_lossy(&out.stdout).contains("permission denied"),
        "{out:?}"
    );

    // A JIT controller starts and stops a session; stop returns only after the close record is
    // on disk.
    let out = jit(
        &socket,
        &[
            "start",
            "--user",
            "alice",
            "--authorized-by",
            "bob@example.com",
            "--reason",
            "INC-7",
        ],
    );
    assert!(out.status.success(), "{out:?}");
    let sid: SessionId = sessions(&spool)[0];
    assert!(String::from_utf8_lossy(&out.stdout).contains(&sid.to_string()));
    let out = jit(&socket, &["start", "--user", "alice"]);
    assert!(
        !out.status.success(),
        "a second start while recording is refused"
    );
    wait_until("a first chunk", || chunk_count(&spool, sid) >= 1);
    let out = jit(&socket, &["stop"]);
    assert!(out.status.success(), "{out:?}");
    let (header, close, chunks) = read_session(&spool, sid);
    let close = close.expect("the close record is committed when `jit stop` returns");
    assert_eq!(close.end_reason, EndReason::ControlStop);
    assert_eq!(close.chunk_count, chunks);
    // Signed (format v2) with the key the recorder created beside its spool, and who stopped
    // it is part of the record: the `jit stop` client, by account, pid and executable.
    assert_eq!(header.version, 2);
    let key = header.endpoint_key.expect("a v2 header announces its key");
    let (signer, _) =
        jitrec_recorder::identity::load_or_create(&tmp.path().join("key/endpoint.key")).unwrap();
    assert_eq!(signer.public(), key);
    let cause = close
        .stopped_by
        .expect("a v2 close record says who stopped it");
    assert_eq!(cause.by, jitrec_format::StopBy::ControlCommand);
    let peer = cause.peer.expect("the control client is named");
    assert_eq!(peer.user.id, "0", "{peer:?}");
    assert!(
        peer.exe
            .as_deref()
            .is_some_and(|e| e.ends_with("jitrec-test-recorder")),
        "{peer:?}"
    );
    assert_eq!(cause.recorded_user, Some(false), "root is not alice");
    assert_eq!(header.authorization.trigger, Trigger::ControlCommand);
    assert_eq!(
        header.authorization.authorized_by.as_deref(),
        Some("bob@example.com")
    );
    assert_eq!(header.authorization.reason.as_deref(), Some("INC-7"));
    assert_eq!(header.labels.company.as_deref(), Some("acme"));

    // The admin group starts a session; the recorder is killed in the middle of it.
    write_group(&group, "bob,alice");
    wait_until("a group-triggered session", || sessions(&spool).len() == 2);
    let killed = *sessions(&spool).iter().find(|s| **s != sid).unwrap();
    wait_until("two chunks of it", || chunk_count(&spool, killed) >= 2);
    rec.kill().unwrap();
    assert_eq!(rec.wait().unwrap().signal(), Some(9));
    let committed = chunk_count(&spool, killed) as u64;

    // Restarted, the recorder closes the dead session as interrupted, linked to its last chunk,
    // and, JIT still being on, starts a new one.
    let mut rec = start_recorder(&config);
    wait_until("the interrupted session's close record", || {
        read_session(&spool, killed).1.is_some()
    });
    let (h, close, chunks) = read_session(&spool, killed);
    let close = close.unwrap();
    assert_eq!(h.authorization.trigger, Trigger::GroupMembership);
    assert_eq!(close.end_reason, EndReason::Interrupted);
    assert_eq!(
        close.stopped_by.map(|c| c.by),
        Some(jitrec_format::StopBy::RecorderCrash)
    );
    // Every committed chunk survived the kill, and one more holds what the journal kept and
    // the `gap` over the hole.
    assert_eq!(
        chunks,
        committed + 1,
        "every committed chunk survived the kill"
    );
    assert_eq!(close.chunk_count, committed + 1);
    assert!(
        close.closed_at > close.ended_at,
        "the unrecorded stretch is stated"
    );
    wait_until("a new session while JIT is still on", || {
        sessions(&spool).len() == 3
    });
    let resumed = *sessions(&spool)
        .iter()
        .find(|s| **s != sid && **s != killed)
        .unwrap();
    wait_until("a chunk of it", || chunk_count(&spool, resumed) >= 1);
    assert_eq!(
        read_session(&spool, resumed).0.continues,
        Some(killed),
        "the new session names the one it continues"
    );

    // JIT ends: the session closes; SIGTERM then stops the service cleanly.
    write_group(&group, "bob");
    wait_until("the session to close", || {
        read_session(&spool, resumed).1.is_some()
    });
    let close = read_session(&spool, resumed).1.unwrap();
    assert_eq!(close.end_reason, EndReason::JitEnded);
    let cause = close.stopped_by.expect("who stopped it");
    assert_eq!(cause.by, jitrec_format::StopBy::GroupChange);
    assert!(cause.detail.contains("alice left group sudo"), "{cause:?}");
    assert!(
        Command::new("kill")
            .args(["-TERM", &rec.id().to_string()])
            .status()
            .unwrap()
            .success()
    );
    let status = rec.wait().unwrap();
    assert!(status.success(), "{status}");
    assert!(!socket.exists(), "the socket is removed on exit");
}

/// The events of a session still in the spool, in order.
fn session_events(spool: &Path, s: SessionId) -> Vec<jitrec_format::Event> {
    let r = SpoolReader::open(spool, SpoolConfig::default()).unwrap();
    let mut out = Vec::new();
    for e in r.pending(s).unwrap() {
        if let Entry::Chunk { events, .. } = r.read(&e).unwrap() {
            out.extend(jitrec_format::decode_events(&events).unwrap());
        }
    }
    out
}

/// Issue 18: an X server that stops answering (SIGSTOP: every X request of the capture and
/// of the window source blocks) neither holds `jit stop` nor stops the chunks. The session is
/// closed with a `capture_error` and a `gap`; once the server runs again, the next session
/// records normally.
#[test]
fn a_frozen_x_server_cannot_hold_jit_stop() {
    let x = Xvfb::start(320, 240).unwrap();
    let tmp = tempfile::Builder::new().tempdir_in("/tmp").unwrap();
    let spool = tmp.path().join("spool");
    let group = tmp.path().join("group");
    let socket = tmp.path().join("recorder.sock");
    write_group(&group, "bob");
    let config = tmp.path().join("recorder.toml");
    std::fs::write(
        &config,
        format!(
            "spool = {spool:?}\n\n[jit]\ngroup = \"sudo\"\ngroup_file = {group:?}\n\n\
             [control]\nsocket = {socket:?}\n\n[capture]\ndisplay = \"{}\"\nfps = 10\n\n\
             [encoder]\nchunk_ms = 1000\n",
            x.display
        ),
    )
    .unwrap();
    let mut rec = start_recorder(&config);
    wait_until("the control socket", || socket.exists());
    let out = jit(&socket, &["start", "--user", "alice"]);
    assert!(out.status.success(), "{out:?}");
    let sid = sessions(&spool)[0];
    wait_until("a first chunk", || chunk_count(&spool, sid) >= 1);

    let signal = |sig: &str| {
        assert!(
            Command::new("kill")
                .args([sig, &x.pid().to_string()])
                .status()
                .unwrap()
                .success()
        );
    };
    signal("-STOP");
    // Chunks keep being cut on the placeholder once the stall is noticed.
    let frozen_at = chunk_count(&spool, sid);
    wait_until("chunks while the X server is frozen", || {
        chunk_count(&spool, sid) >= frozen_at + 3
    });
    let asked = Instant::now();
    let out = jit(&socket, &["stop"]);
    let took = asked.elapsed();
    signal("-CONT");
    assert!(out.status.success(), "{out:?}");
    assert!(
        took < jitrec_recorder::service::STOP_BOUND,
        "jit stop took {took:?}"
    );
    let (_, close, chunks) = read_session(&spool, sid);
    let close = close.expect("closed when `jit stop` returned");
    assert_eq!(close.chunk_count, chunks);
    let events = session_events(&spool, sid);
    let kind = |k: &str| {
        events
            .iter()
            .filter(|e| serde_json::to_value(&e.event).unwrap()["type"] == k)
            .count()
    };
    assert_eq!(kind("capture_error"), 1, "{events:#?}");
    assert_eq!(kind("gap"), 1, "{events:#?}");

    // The server answers again: a new session records its screen, with no gap.
    let out = jit(&socket, &["start", "--user", "alice"]);
    assert!(out.status.success(), "{out:?}");
    let next = *sessions(&spool).iter().find(|s| **s != sid).unwrap();
    wait_until("chunks of the next session", || {
        chunk_count(&spool, next) >= 2
    });
    let out = jit(&socket, &["stop"]);
    assert!(out.status.success(), "{out:?}");
    let (_, close, _) = read_session(&spool, next);
    assert!(close.is_some());
    let events = session_events(&spool, next);
    assert!(
        !events
            .iter()
            .any(|e| serde_json::to_value(&e.event).unwrap()["type"] == "gap"),
        "{events:#?}"
    );
    assert!(
        Command::new("kill")
            .args(["-TERM", &rec.id().to_string()])
            .status()
            .unwrap()
            .success()
    );
    assert!(rec.wait().unwrap().success());
}
