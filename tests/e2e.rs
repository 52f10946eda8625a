//! End to end, as deployed: the real `jitrec-recorder`, `jitrec-uploader` and `jitrec-player`
//! programs as separate processes (the harness's [`Pipeline`]); JIT switched on and off over the
//! recorder's control socket; a scripted admin session on Xvfb (a window, a terminal running a
//! command, a retitle); the bucket in SeaweedFS or in
//! the local store; and Debian's Chromium playing the result in the report view. One chain per
//! store, asserting what a reviewer relies on at each step: who and why, the picture, the
//! process run during the session and the window it ran in, JIT start and stop on the timeline.

use std::process::Command;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant};

use jitrec_tests::pipeline::{Pipeline, PipelineConfig, Programs, REVIEWER, Store};
use jitrec_tests::seaweed;
use jitrec_tests::webdriver::Browser;
use jitrec_tests::xvfb::{FakeWm, find_window};
use serde_json::json;

use crate::report_view::{artifacts, close_to, pixel, seek, sign_in, state_when};

/// Generous: a whole pipeline on a loaded 2-core machine.
const LIMIT: Duration = Duration::from_secs(120);
const GREEN: u32 = 0x0000_ff00;
/// Where the admin's window is drawn (x, y, w, h) on the 1024x600 screen (the terminal goes
/// to its right).
const WINDOW: (i16, i16, u16, u16) = (40, 30, 300, 200);

static RUN: AtomicU32 = AtomicU32::new(0);

/// A process killed when dropped.
fn programs() -> Programs {
    Programs {
        recorder: env!("CARGO_BIN_EXE_jitrec-test-recorder").into(),
        uploader: env!("CARGO_BIN_EXE_jitrec-test-uploader").into(),
        player: env!("CARGO_BIN_EXE_jitrec-test-player").into(),
    }
}

fn config(store: Store) -> PipelineConfig {
    PipelineConfig {
        programs: programs(),
        store,
        width: 1024,
        height: 600,
        fps: 10,
        chunk_ms: 1000,
        index: None,
        encrypt: false,
        player_args: Vec::new(),
        recorder_toml: String::new(),
    }
}

/// The chain for one store: record, upload, index, play.
fn whole_path(store: Store, name: &str) {
    let store_is_dir = matches!(store, Store::DirBucket);
    let mut p = Pipeline::start(&config(store)).unwrap();
    let wm = FakeWm::new(&p.x.display).unwrap();
    let marker = format!(
        "jitrec-e2e-{}-{}",
        std::process::id(),
        RUN.fetch_add(1, Ordering::Relaxed)
    );

    // Nothing is recorded outside JIT: this command runs before it starts.
    let before = format!("{marker}-before-jit");
    assert!(
        Command::new("/bin/sh")
            .args(["-c", &format!("echo {before} >/dev/null")])
            .status()
            .unwrap()
            .success()
    );

    let id = p.jit_start("alice", "bob@example.com", "CHG-42").unwrap();
    // About a second of black screen first, so the picture before the window is known. This
    // is recorded content, not synchronisation.
    std::thread::sleep(Duration::from_millis(1000));
    let win = wm
        .window(&format!("Printers \u{2014} {marker}"), WINDOW, GREEN)
        .unwrap();
    wm.activate(win).unwrap();
    // A terminal where the admin runs a command (the shell lives on, so its command line is
    // read and the text stays on screen).
    // No `exec`: the shell must stay the process its pid names, or a late read of its command
    // line would find the program it became.
    let shell = format!("echo '# systemctl restart cups'; echo {marker} ok; sleep 600");
    let term_title = format!("root@ws: {marker}");
    let _xterm = jitrec_tests::child::Reaped(
        Command::new("xterm")
            .args(["-display", &p.x.display, "-geometry", "70x16+380+40"])
            .args(["-fa", "Monospace", "-fs", "10", "-T", &term_title])
            .args(["-e", "sh", "-c", &shell])
            .spawn()
            .expect("xterm (Debian package xterm)"),
    );
    let term = find_window(&p.x.display, &term_title, LIMIT).unwrap();
    wm.activate(term).unwrap();
    // Half a second for the shell to print, then the title changes as an editor would set it.
    std::thread::sleep(Duration::from_millis(500));
    wm.retitle(term, &format!("vim /etc/sudoers {marker}"))
        .unwrap();
    std::thread::sleep(Duration::from_millis(1500));
    p.jit_stop().unwrap();
    let stopped = Instant::now();

    // The player: complete, every chunk fetchable, within seconds of JIT stop.
    p.wait_for_within("the session to be playable", LIMIT, |p| p.playable(id))
        .unwrap();
    eprintln!("{name}: playable {:?} after jit stop", stopped.elapsed());
    let d = p.detail(id).unwrap().unwrap();
    let s = &d["session"];
    assert_eq!(s["status"], "complete", "{d}");
    assert_eq!(s["user_name"], "alice");
    assert_eq!(s["authorized_by"], "bob@example.com");
    assert_eq!(s["reason"], "CHG-42");
    assert_eq!(s["company"], "e2e-company");
    assert_eq!(s["computer"], "e2e-computer");
    assert_eq!(s["end_reason"], "control_stop", "{s}");
    let chunks = d["chunks"].as_array().unwrap();
    assert!(
        chunks.len() >= 3,
        "about 3 s at 1 s chunks: {}",
        chunks.len()
    );
    assert!(chunks.iter().all(|c| c["verified"] == true), "{d}");
    let verdict = p.post_json(&format!("/api/sessions/{id}/verify")).unwrap();
    assert_eq!(verdict["verdict"], "intact", "{verdict}");
    assert_eq!(verdict["chunks_verified"], chunks.len(), "{verdict}");
    assert_private(&p, store_is_dir);

    // The events, in order on the video clock: JIT start, the window, the command, the
    // retitle, JIT stop; nothing from before JIT.
    let events = d["events"].as_array().unwrap();
    let at = |kind: &str, text: &str| -> u64 {
        events
            .iter()
            .find(|e| e["kind"] == kind && e["text"].as_str().unwrap().contains(text))
            .unwrap_or_else(|| panic!("no {kind} event with {text:?} in {events:#?}"))["media_us"]
            .as_u64()
            .unwrap()
    };
    let jit_start = at("jit_start", "authorised by bob@example.com, reason CHG-42");
    let focus = at("window_focus", &format!("Printers \u{2014} {marker}"));
    // The terminal's shell (the xterm's own command line names the marker too).
    let command = events
        .iter()
        .find(|e| {
            let t = e["text"].as_str().unwrap();
            e["kind"] == "process_start" && t.starts_with("sh -c") && t.contains(&marker)
        })
        .unwrap_or_else(|| panic!("no process_start of the terminal's shell in {events:#?}"));
    assert!(
        command["text"]
            .as_str()
            .unwrap()
            .contains("(user root, pid "),
        "{command}"
    );
    let process = command["media_us"].as_u64().unwrap();
    let term_focus = at("window_focus", &term_title);
    let retitle = at("window_title", &format!("vim /etc/sudoers {marker}"));
    let jit_stop = at("jit_stop", "alice");
    // The shell starts around when its window maps (xterm decides which comes first); both
    // come after the first window's focus and before the retitle, half a second later.
    assert!(
        jit_start <= focus
            && focus <= process.min(term_focus)
            && process.max(term_focus) <= retitle
            && retitle <= jit_stop,
        "{jit_start} {focus} {process} {term_focus} {retitle} {jit_stop}"
    );
    assert!(
        !events
            .iter()
            .any(|e| e["text"].as_str().unwrap().contains(&before)),
        "a command from before JIT was recorded"
    );
    // The search a reviewer would type finds the session.
    let hits = p.get_json(&format!("/api/sessions?q={marker}")).unwrap();
    assert!(
        hits["sessions"]
            .as_array()
            .unwrap()
            .iter()
            .any(|h| h["id"] == id.to_string()),
        "{hits}"
    );

    // The browser: sign in, open the session, it plays; the timeline shows the path; clicking
    // the command seeks to it, where the admin's window is on screen.
    let b = Browser::start(1280, 1000).unwrap();
    sign_in(&b, &p.base(), REVIEWER);
    b.goto(&format!("{}/session/{id}", p.base())).unwrap();
    let st = state_when(&b, "s.readyState >= 2 && s.chunks > 0", "the first frame");
    assert!(st["error"].is_null(), "{st}");
    b.eval("document.querySelector('#video').play();", json!([]))
        .unwrap();
    state_when(&b, "s.currentTime > 0.5", "playback to advance");
    let timeline: Vec<(String, String)> = serde_json::from_value(
        b.eval(
            "return [...document.querySelectorAll('#events li')].map((li) => [li.className.replace(' current', ''), li.textContent]);",
            json!([]),
        )
        .unwrap(),
    )
    .unwrap();
    for (kind, text) in [
        ("jit_start", "bob@example.com"),
        ("window_focus", "Printers"),
        ("process_start", marker.as_str()),
        ("window_focus", term_title.as_str()),
        ("window_title", "vim /etc/sudoers"),
        ("jit_stop", "alice"),
    ] {
        assert!(
            timeline.iter().any(|(k, t)| k == kind && t.contains(text)),
            "{kind} with {text:?} not on the timeline: {timeline:?}"
        );
    }
    let media_us = b
        .eval(
            "const li = document.querySelector(`#events li.process_start[data-media-us='${arguments[0]}']`); li.id = 'e2e-command'; return Number(li.dataset.mediaUs);",
            json!([process]),
        )
        .unwrap()
        .as_u64()
        .unwrap();
    assert_eq!(media_us, process);
    b.eval("document.querySelector('#video').pause();", json!([]))
        .unwrap();
    b.click(&b.find("#e2e-command").unwrap()).unwrap();
    let t = media_us as f64 / 1e6;
    state_when(
        &b,
        &format!("Math.abs(s.currentTime - {t}) < 0.05 && s.current === {media_us}"),
        "the timeline click to seek to the command",
    );
    // Half a second after the retitle (at least 0.8 s after the window was mapped, so the
    // capture has certainly drawn it) the window is on screen; half a second before it was
    // mapped, the screen is black.
    seek(&b, retitle as f64 / 1e6 + 0.5);
    let inside = pixel(&b, 190, 130);
    assert!(close_to(inside, [0, 255, 0]), "with the window: {inside:?}");
    // In the right colours, not just near them: decoded with the wrong matrix (BT.709, what
    // Chromium assumes for a stream that does not say) the green is 214.
    assert!(
        inside[1] >= 240 && inside[0] <= 16 && inside[2] <= 16,
        "the window's green shows as {inside:?}"
    );
    b.screenshot(&artifacts().join(format!("e2e-{name}.png")))
        .unwrap();
    seek(&b, (focus as f64 / 1e6 - 0.5).max(0.0));
    let earlier = pixel(&b, 190, 130);
    assert!(
        close_to(earlier, [0, 0, 0]),
        "before the window: {earlier:?}"
    );
}

/// Everything the three programs made in this run is private to their user: the recorder's
/// spool (every entry and folder), the uploader's objects and folders in a
/// directory bucket (the bucket's root is the operator's, made by the harness), and the
/// player's index files: 0600 files, 0700 folders.
fn assert_private(p: &Pipeline, with_dir_bucket: bool) {
    use std::os::unix::fs::PermissionsExt;
    fn walk(path: &std::path::Path, found: &mut Vec<(std::path::PathBuf, u32, bool)>) {
        let m = std::fs::symlink_metadata(path).unwrap();
        found.push((path.to_owned(), m.permissions().mode() & 0o777, m.is_dir()));
        if m.is_dir() {
            for e in std::fs::read_dir(path).unwrap() {
                walk(&e.unwrap().path(), found);
            }
        }
    }
    let mut found = Vec::new();
    walk(&p.spool(), &mut found);
    if with_dir_bucket {
        for e in std::fs::read_dir(p.bucket_dir()).unwrap() {
            walk(&e.unwrap().path(), &mut found);
        }
    }
    for e in std::fs::read_dir(p.path()).unwrap() {
        let path = e.unwrap().path();
        let name = path.file_name().unwrap().to_string_lossy().into_owned();
        if name.starts_with("index.sqlite3") {
            walk(&path, &mut found);
        }
    }
    assert!(
        found
            .iter()
            .any(|(p, _, _)| p.to_string_lossy().contains("index.sqlite3")),
        "{found:?}"
    );
    let loose: Vec<_> = found
        .iter()
        .filter(|(_, mode, dir)| *mode != if *dir { 0o700 } else { 0o600 })
        .collect();
    assert!(loose.is_empty(), "not private: {loose:?}");
}

#[test]
fn recorder_to_browser_through_the_local_store() {
    whole_path(Store::DirBucket, "local");
}

#[test]
fn recorder_to_browser_through_seaweedfs() {
    let srv = seaweed::server();
    let bucket = tokio::runtime::Runtime::new()
        .unwrap()
        .block_on(seaweed::new_bucket("e2e"))
        .unwrap();
    whole_path(
        Store::S3 {
            endpoint: srv.endpoint.clone(),
            bucket,
            access_key: seaweed::ACCESS_KEY.into(),
            secret_key: seaweed::SECRET_KEY.into(),
        },
        "seaweedfs",
    );
}
