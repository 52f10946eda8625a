//! The recording notice with the real `jitrec-recorder run` program on Xvfb: drawn on the
//! recorded screen at JIT start and therefore in the recorded video, its display and a click on
//! it (XTest, as a user's) in the session's events, gone after `display_seconds` when no
//! acknowledgement is required, nothing drawn when it is disabled, and a notice that cannot be
//! shown recorded as such without holding up the recording.

use std::path::PathBuf;
use std::process::{Command, Stdio};

use jitrec_format::{ChunkManifest, Event, EventKind, MediaTime, SessionId};
use jitrec_recorder::notice::{BACKGROUND, WINDOW_TITLE};
use jitrec_spool::{Entry, SpoolConfig, SpoolReader};
use jitrec_tests::child::Reaped;
use jitrec_tests::xvfb::Xvfb;
use x11rb::connection::Connection;
use x11rb::protocol::xproto::{AtomEnum, ConnectionExt as _, MapState};

use crate::recorder::decode_sized;
use crate::recorder_process::{jit, sessions, wait_until};

const RECORDER: &str = env!("CARGO_BIN_EXE_jitrec-test-recorder");
const W: u32 = 640;
const H: u32 = 480;

/// A recorder program on its own Xvfb, with `notice` as its `[notice]` section.
struct Recording {
    x: Xvfb,
    tmp: tempfile::TempDir,
    spool: PathBuf,
    socket: PathBuf,
    _recorder: Reaped,
}

impl Recording {
    /// `capture_display`: the display to record (`None`: the Xvfb's).
    fn start(notice: &str, capture_display: Option<&str>) -> Self {
        let x = Xvfb::start(W, H).unwrap();
        let tmp = tempfile::tempdir().unwrap();
        let spool = tmp.path().join("spool");
        let socket = tmp.path().join("recorder.sock");
        let config = tmp.path().join("recorder.toml");
        // Events off: only the notice's own events matter here, and the process source would
        // cost the CPU the capture needs.
        std::fs::write(
            &config,
            format!(
                "spool = {spool:?}\n\n[control]\nsocket = {socket:?}\n\n\
                 [capture]\ndisplay = {:?}\nfps = 10\n\n[encoder]\nchunk_ms = 500\n\n\
                 [events]\nprocesses = false\nwindows = false\n\n[notice]\n{notice}\n",
                capture_display.unwrap_or(&x.display)
            ),
        )
        .unwrap();
        let log = std::fs::File::create(tmp.path().join("recorder.log")).unwrap();
        let recorder = Command::new(RECORDER)
            .args(["run", "--config", config.to_str().unwrap()])
            .env("RUST_LOG", "info")
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .unwrap()
            .into();
        wait_until("the control socket", || socket.exists());
        Self {
            x,
            tmp,
            spool,
            socket,
            _recorder: recorder,
        }
    }

    /// Starts JIT for alice, authorised by bob; returns the session.
    fn jit_start(&self) -> SessionId {
        let out = jit(
            &self.socket,
            &[
                "start",
                "--user",
                "alice",
                "--authorized-by",
                "bob@example.com",
            ],
        );
        assert!(out.status.success(), "{out:?}");
        sessions(&self.spool)[0]
    }

    fn jit_stop(&self) {
        let out = jit(&self.socket, &["stop"]);
        assert!(out.status.success(), "{out:?}");
    }

    /// What the spool holds of session `s` so far.
    fn committed(&self, s: SessionId) -> Committed {
        let r = SpoolReader::open(&self.spool, SpoolConfig::default()).unwrap();
        let mut c = Committed::default();
        for e in r.pending(s).unwrap() {
            match r.read(&e).unwrap() {
                Entry::Init { bytes, .. } => c.mp4.extend_from_slice(&bytes),
                Entry::Chunk {
                    manifest,
                    video,
                    events,
                    ..
                } => {
                    c.mp4.extend_from_slice(&video);
                    c.events
                        .extend(jitrec_format::decode_events(&events).unwrap());
                    c.chunks.push(manifest);
                }
                Entry::Header { .. } => {}
                Entry::Close { .. } => c.closed = true,
            }
        }
        c
    }

    /// The recorded video's frames: (media time in seconds, RGB24).
    fn frames(&self, c: &Committed) -> Vec<(f64, Vec<u8>)> {
        assert!(
            c.chunks.iter().all(|m| m.init.id == 0),
            "one screen size, one init segment"
        );
        let file = self.tmp.path().join("session.mp4");
        std::fs::write(&file, &c.mp4).unwrap();
        decode_sized(&file, W, H)
    }

    fn log(&self) -> String {
        std::fs::read_to_string(self.tmp.path().join("recorder.log")).unwrap_or_default()
    }
}

#[derive(Default)]
struct Committed {
    chunks: Vec<ChunkManifest>,
    events: Vec<Event>,
    mp4: Vec<u8>,
    closed: bool,
}

impl Committed {
    fn of(&self, kind: &str) -> Vec<&Event> {
        self.events
            .iter()
            .filter(|e| serde_json::to_value(&e.event).unwrap()["type"] == kind)
            .collect()
    }

    fn notice_events(&self) -> Vec<&Event> {
        self.events
            .iter()
            .filter(|e| {
                serde_json::to_value(&e.event).unwrap()["type"]
                    .as_str()
                    .is_some_and(|k| k.starts_with("notice_"))
            })
            .collect()
    }

    /// Media time the committed chunks reach.
    fn end(&self) -> f64 {
        self.chunks.last().map_or(0.0, |m| secs(m.media_end_us))
    }
}

fn secs(t: MediaTime) -> f64 {
    t.as_micros() as f64 / 1e6
}

/// The notice's window on `display` while it is mapped: (x, y, width, height).
fn notice_window(display: &str) -> Option<(i16, i16, u16, u16)> {
    let (conn, screen) = x11rb::connect(Some(display)).unwrap();
    let root = conn.setup().roots[screen].root;
    for w in conn.query_tree(root).unwrap().reply().unwrap().children {
        let Ok(name) = conn
            .get_property(false, w, AtomEnum::WM_NAME, AtomEnum::STRING, 0, 64)
            .unwrap()
            .reply()
        else {
            continue;
        };
        if name.value != WINDOW_TITLE.as_bytes() {
            continue;
        }
        let Ok(attrs) = conn.get_window_attributes(w).unwrap().reply() else {
            continue;
        };
        if attrs.map_state != MapState::VIEWABLE {
            continue;
        }
        let Ok(g) = conn.get_geometry(w).unwrap().reply() else {
            continue;
        };
        return Some((g.x, g.y, g.width, g.height));
    }
    None
}

/// A left click at (x, y) through XTest, as the user's mouse would make it.
fn click(display: &str, x: i16, y: i16) {
    use x11rb::protocol::xproto::{BUTTON_PRESS_EVENT, BUTTON_RELEASE_EVENT, MOTION_NOTIFY_EVENT};
    use x11rb::protocol::xtest::ConnectionExt as _;
    let (conn, screen) = x11rb::connect(Some(display)).unwrap();
    let root = conn.setup().roots[screen].root;
    conn.xtest_get_version(2, 2).unwrap().reply().unwrap();
    conn.xtest_fake_input(MOTION_NOTIFY_EVENT, 0, 0, root, x, y, 0)
        .unwrap();
    conn.xtest_fake_input(BUTTON_PRESS_EVENT, 1, 0, root, 0, 0, 0)
        .unwrap();
    conn.xtest_fake_input(BUTTON_RELEASE_EVENT, 1, 0, root, 0, 0, 0)
        .unwrap();
    conn.get_input_focus().unwrap().reply().unwrap();
}

fn is_amber(rgb: &[u8]) -> bool {
    rgb.iter().zip(BACKGROUND).all(|(a, b)| a.abs_diff(b) < 40)
}

/// Amber pixels of a frame: how many, and their bounding box (x0, y0, x1, y1).
fn amber(frame: &[u8]) -> (usize, (u32, u32, u32, u32)) {
    let mut n = 0;
    let mut bbox = (u32::MAX, u32::MAX, 0, 0);
    for (i, px) in frame.chunks(3).enumerate() {
        if is_amber(px) {
            let (x, y) = (i as u32 % W, i as u32 / W);
            n += 1;
            bbox = (bbox.0.min(x), bbox.1.min(y), bbox.2.max(x), bbox.3.max(y));
        }
    }
    (n, bbox)
}

/// The frame on screen at `t` seconds.
fn on_screen_at(frames: &[(f64, Vec<u8>)], t: f64) -> &[u8] {
    &frames
        .iter()
        .rev()
        .find(|(pts, _)| *pts <= t + 1e-6)
        .unwrap_or_else(|| panic!("no frame on screen at {t}"))
        .1
}

/// The one event of `kind`.
fn one<'a>(c: &'a Committed, kind: &str) -> &'a Event {
    let found = c.of(kind);
    assert_eq!(found.len(), 1, "{kind}: {:#?}", c.events);
    found[0]
}

#[test]
fn the_notice_is_in_the_recorded_video_from_notice_shown_stays_until_clicked_and_the_click_is_recorded()
 {
    // require_ack with a display time that would long be over: it must stay anyway.
    let r = Recording::start("require_ack = true\ndisplay_seconds = 1", None);
    let sid = r.jit_start();
    wait_until("the notice window", || {
        notice_window(&r.x.display).is_some()
    });
    let mut shown = 0.0;
    wait_until("notice_shown in a committed chunk", || {
        let c = r.committed(sid);
        c.of("notice_shown")
            .first()
            .map(|e| shown = secs(e.media_us))
            .is_some()
    });
    // Two seconds past its display time (judged by the recording, not a sleep), it is still up.
    wait_until("a second chunk past the display time", || {
        r.committed(sid).end() > shown + 2.0
    });
    let (x, y, w, h) = notice_window(&r.x.display).expect("the notice stays until clicked");
    click(&r.x.display, x + w as i16 / 2, y + h as i16 / 3);
    wait_until("the notice to go on the click", || {
        notice_window(&r.x.display).is_none()
    });
    let mut acked = 0.0;
    wait_until("notice_acknowledged and a second of video after it", || {
        let c = r.committed(sid);
        if let Some(e) = c.of("notice_acknowledged").first() {
            acked = secs(e.media_us);
        }
        acked > 0.0 && c.end() > acked + 1.0
    });
    r.jit_stop();
    let c = r.committed(sid);
    assert!(c.closed);

    let EventKind::NoticeShown {
        text,
        display,
        require_ack,
        display_seconds,
    } = &one(&c, "notice_shown").event
    else {
        unreachable!()
    };
    assert!(
        text.contains("being recorded")
            && text.contains("alice")
            && text.contains("bob@example.com"),
        "{text}"
    );
    assert_eq!(display, &r.x.display);
    assert!(*require_ack);
    assert_eq!(*display_seconds, None);
    one(&c, "notice_acknowledged");
    assert_eq!(c.notice_events().len(), 2, "{:#?}", c.notice_events());
    assert!(
        acked > shown + 2.0,
        "shown at {shown}, acknowledged at {acked}"
    );

    // The video: every frame from notice_shown until the click holds the notice, where X
    // says the window is (with its 2-pixel border); half a second after the click it is gone.
    let frames = r.frames(&c);
    let during: Vec<_> = frames
        .iter()
        .filter(|(t, _)| *t >= shown && *t < acked)
        .collect();
    assert!(!during.is_empty());
    let (bx0, by0) = (x as u32, y as u32);
    let (bx1, by1) = (bx0 + w as u32 + 4, by0 + h as u32 + 4);
    for (t, frame) in &during {
        let (n, (x0, y0, x1, y1)) = amber(frame);
        assert!(
            n as u32 > w as u32 * h as u32 / 4,
            "at {t}: only {n} notice pixels"
        );
        assert!(
            x0 >= bx0 && y0 >= by0 && x1 <= bx1 && y1 <= by1,
            "at {t}: notice pixels in {:?}, window at {:?}",
            (x0, y0, x1, y1),
            (bx0, by0, bx1, by1)
        );
    }
    let (n, _) = amber(on_screen_at(&frames, acked + 0.5));
    assert_eq!(n, 0, "the notice is still in the video after the click");
    eprintln!(
        "notice shown at {shown:.3} s, acknowledged at {acked:.3} s, {} frames with it",
        during.len()
    );
}

#[test]
fn without_acknowledgement_the_notice_goes_after_its_display_time_and_is_not_acknowledged() {
    let r = Recording::start("display_seconds = 1", None);
    let sid = r.jit_start();
    wait_until("the notice window", || {
        notice_window(&r.x.display).is_some()
    });
    wait_until("the notice to go by itself", || {
        notice_window(&r.x.display).is_none()
    });
    wait_until("a second of video after it went", || {
        let c = r.committed(sid);
        c.of("notice_shown")
            .first()
            .is_some_and(|e| c.end() > secs(e.media_us) + 2.0)
    });
    r.jit_stop();
    let c = r.committed(sid);
    let shown = one(&c, "notice_shown");
    let EventKind::NoticeShown {
        require_ack,
        display_seconds,
        ..
    } = &shown.event
    else {
        unreachable!()
    };
    assert!(!*require_ack);
    assert_eq!(*display_seconds, Some(1));
    assert_eq!(c.notice_events().len(), 1, "{:#?}", c.notice_events());
    let shown = secs(shown.media_us);
    let frames = r.frames(&c);
    assert!(amber(on_screen_at(&frames, shown + 0.5)).0 > 1000);
    assert_eq!(amber(on_screen_at(&frames, shown + 1.8)).0, 0);
}

#[test]
fn a_disabled_notice_draws_nothing_and_records_nothing() {
    let r = Recording::start("enabled = false", None);
    let sid = r.jit_start();
    wait_until("two seconds of video", || r.committed(sid).end() > 2.0);
    assert!(notice_window(&r.x.display).is_none());
    r.jit_stop();
    let c = r.committed(sid);
    assert!(c.notice_events().is_empty(), "{:#?}", c.notice_events());
    let frames = r.frames(&c);
    assert!(frames.len() >= 2);
    for (t, frame) in &frames {
        assert_eq!(amber(frame).0, 0, "notice pixels at {t}");
    }
}

#[test]
fn a_notice_that_cannot_be_shown_is_recorded_as_failed_and_the_session_is_recorded_all_the_same() {
    // A display nobody serves (and whose TCP port, 6000 + 59000, fits in a u16): neither
    // capture nor notice can open it.
    let r = Recording::start("require_ack = true", Some(":59000"));
    let sid = r.jit_start();
    wait_until("notice_failed in a committed chunk", || {
        !r.committed(sid).of("notice_failed").is_empty()
    });
    wait_until("a second of (placeholder) video", || {
        r.committed(sid).end() > 1.0
    });
    r.jit_stop();
    let c = r.committed(sid);
    assert!(c.closed);
    let EventKind::NoticeFailed { message } = &one(&c, "notice_failed").event else {
        unreachable!()
    };
    assert!(message.contains("X11"), "{message}");
    assert_eq!(c.notice_events().len(), 1);
    assert!(!c.of("capture_error").is_empty(), "{}", r.log());
}
