//! The recorder's encoder and chunker on a scripted screen: real libx264, real spool, decoded by
//! Debian's `ffprobe` and `ffmpeg`.

use std::path::Path;
use std::process::Command;
use std::time::Duration;

use jitrec_format::{ChainVerifier, ChunkManifest, EndReason, MediaTime, SessionId, fixtures};
use jitrec_recorder::capture::SyntheticScreen;
use jitrec_recorder::encode::EncoderConfig;
use jitrec_recorder::scripted::record_scripted;
use jitrec_spool::{Entry, SpoolConfig, SpoolReader, SpoolWriter};

const W: u32 = 320;
const H: u32 = 240;
const GRAY: [u8; 4] = [64, 64, 64, 255];
const RED: [u8; 4] = [0, 0, 255, 255];
const GREEN: [u8; 4] = [0, 255, 0, 255];

/// Recorder settings of these tests: 10 fps, 1 s chunks.
pub(crate) fn recorder_config() -> jitrec_recorder::service::RecorderConfig {
    jitrec_recorder::service::RecorderConfig {
        fps: 10,
        chunk_len: Duration::from_secs(1),
        encoder: EncoderConfig::default(),
        machine: jitrec_format::Machine {
            id: "test-machine".into(),
            hostname: "ws-test".into(),
        },
        labels: jitrec_format::Labels::default(),
        queue: 2,
        events: jitrec_recorder::events::EventLimits::default(),
    }
}

/// Decoded frames of a `W` x `H` recording: (pts in seconds, RGB24 bytes).
fn decode(file: &Path) -> Vec<(f64, Vec<u8>)> {
    decode_sized(file, W, H)
}

/// Decoded frames of a `width` x `height` recording.
pub(crate) fn decode_sized(file: &Path, width: u32, height: u32) -> Vec<(f64, Vec<u8>)> {
    let probe = Command::new("ffprobe")
        .args([
            "-v",
            "error",
            "-select_streams",
            "v",
            "-show_entries",
            "frame=pts_time",
            "-of",
            "json",
        ])
        .arg(file)
        .output()
        .expect("run ffprobe (Debian package ffmpeg)");
    assert!(
        probe.status.success(),
        "ffprobe: {}",
        String::from_utf8_lossy(&probe.stderr)
    );
    let json: serde_json::Value = serde_json::from_slice(&probe.stdout).unwrap();
    let times: Vec<f64> = json["frames"]
        .as_array()
        .unwrap()
        .iter()
        .map(|f| f["pts_time"].as_str().unwrap().parse().unwrap())
        .collect();
    let raw = Command::new("ffmpeg")
        .args(["-v", "error", "-i"])
        .arg(file)
        .args([
            "-fps_mode",
            "passthrough",
            "-f",
            "rawvideo",
            "-pix_fmt",
            "rgb24",
            "-",
        ])
        .output()
        .expect("run ffmpeg");
    assert!(
        raw.status.success(),
        "ffmpeg: {}",
        String::from_utf8_lossy(&raw.stderr)
    );
    let size = (width * height * 3) as usize;
    assert_eq!(
        raw.stdout.len(),
        size * times.len(),
        "ffmpeg and ffprobe disagree on the frame count"
    );
    times
        .into_iter()
        .zip(raw.stdout.chunks(size).map(<[u8]>::to_vec))
        .collect()
}

/// The RGB pixel at (x, y) of the `W`-wide frame on screen at `t` seconds.
fn shown_at(frames: &[(f64, Vec<u8>)], t: f64, x: u32, y: u32) -> [u8; 3] {
    shown_at_sized(frames, W, t, x, y)
}

/// The RGB pixel at (x, y) of the `width`-wide frame on screen at `t` seconds.
fn shown_at_sized(frames: &[(f64, Vec<u8>)], width: u32, t: f64, x: u32, y: u32) -> [u8; 3] {
    let (_, img) = frames
        .iter()
        .rev()
        .find(|(pts, _)| *pts <= t + 1e-6)
        .unwrap_or_else(|| panic!("no frame on screen at {t}"));
    let at = ((y * width + x) * 3) as usize;
    [img[at], img[at + 1], img[at + 2]]
}

fn is_colour(px: [u8; 3], rgb: [u8; 3]) -> bool {
    px.iter().zip(rgb).all(|(a, b)| a.abs_diff(b) < 40)
}

#[test]
fn a_scripted_screen_records_into_chunks_that_ffmpeg_decodes_at_the_right_times() {
    let tmp = tempfile::tempdir().unwrap();
    let (spool, _) = SpoolWriter::open(tmp.path().join("spool"), SpoolConfig::default()).unwrap();
    let sid = SessionId::new();
    let screen = SyntheticScreen {
        width: W,
        height: H,
        background: GRAY,
        paints: vec![
            (3_000_000, 40, 40, 120, 80, RED),
            (7_300_000, 200, 120, 80, 80, GREEN),
        ],
    };
    let rec = record_scripted(
        &spool,
        &fixtures::header(sid),
        &screen,
        Duration::from_secs(12),
        5,
        Duration::from_secs(2),
        EncoderConfig::default(),
    )
    .unwrap();
    // Three distinct images; everything else was idle and cost nothing but a repeat per chunk.
    assert_eq!(rec.ticks.changed, 3, "{rec:?}");
    assert!(rec.ticks.repeated >= 3, "{rec:?}");
    assert_eq!(rec.chunks, 6, "{rec:?}");
    drop(spool);

    // The spool holds a verifiable session: chain, payloads, contiguous chunks.
    let reader = SpoolReader::open(tmp.path().join("spool"), SpoolConfig::default()).unwrap();
    let mut chain = None;
    let mut mp4 = Vec::new();
    let mut manifests: Vec<ChunkManifest> = Vec::new();
    let mut close = None;
    for e in reader.pending(sid).unwrap() {
        match reader.read(&e).unwrap() {
            Entry::Header { bytes, .. } => chain = Some(ChainVerifier::new(&bytes).unwrap()),
            Entry::Init { bytes, .. } => mp4.extend_from_slice(&bytes),
            Entry::Chunk {
                manifest_bytes,
                manifest,
                video,
                events,
            } => {
                chain.as_mut().unwrap().push(&manifest_bytes).unwrap();
                manifest.verify_video(&video).unwrap();
                manifest.verify_events(&events).unwrap();
                mp4.extend_from_slice(&video);
                manifests.push(manifest);
            }
            Entry::Close { bytes, .. } => close = Some(bytes),
        }
    }
    let close = chain.unwrap().finish(&close.unwrap()).unwrap();
    assert_eq!(close.end_reason, EndReason::JitEnded);
    assert_eq!(close.media_end_us, MediaTime::from_micros(12_000_000));
    assert_eq!(manifests[0].media_start_us, MediaTime::ZERO);
    for pair in manifests.windows(2) {
        assert_eq!(
            pair[0].media_end_us, pair[1].media_start_us,
            "chunks must be contiguous"
        );
    }
    assert!(manifests[0].starts_with_keyframe);
    assert_eq!(manifests[0].init.width, W);
    assert!(
        manifests[0].init.codec.starts_with("avc1."),
        "{}",
        manifests[0].init.codec
    );

    // ffmpeg decodes init + every chunk; frame times are the media times the manifests state.
    let file = tmp.path().join("session.mp4");
    std::fs::write(&file, &mp4).unwrap();
    let frames = decode(&file);
    let total: u32 = manifests.iter().map(|m| m.frames).sum();
    assert_eq!(frames.len() as u32, total);
    assert!(
        frames.windows(2).all(|w| w[0].0 < w[1].0),
        "frame times must increase"
    );
    let mut i = 0;
    for m in &manifests {
        for _ in 0..m.frames {
            let t = frames[i].0;
            let (s, e) = (
                m.media_start_us.as_micros() as f64 / 1e6,
                m.media_end_us.as_micros() as f64 / 1e6,
            );
            assert!(
                t >= s - 1e-6 && t < e,
                "frame at {t} outside its chunk [{s}, {e})"
            );
            i += 1;
        }
    }

    // The stream says how its colours are coded (BT.601, limited range), so a player need
    // not guess: Chromium, guessing BT.709, showed a pure green screen as (0, 214, 3).
    let probe = Command::new("ffprobe")
        .args([
            "-v",
            "error",
            "-select_streams",
            "v",
            "-show_entries",
            "stream=color_space,color_range,color_primaries,color_transfer",
            "-of",
            "json",
        ])
        .arg(&file)
        .output()
        .unwrap();
    let json: serde_json::Value = serde_json::from_slice(&probe.stdout).unwrap();
    let stream = &json["streams"][0];
    for (key, want) in [
        ("color_space", "smpte170m"),
        ("color_primaries", "smpte170m"),
        ("color_transfer", "smpte170m"),
        ("color_range", "tv"),
    ] {
        assert_eq!(stream[key].as_str(), Some(want), "{key} in {stream}");
    }

    // What was on the screen is what is decoded, at the right time.
    assert!(is_colour(shown_at(&frames, 2.9, 100, 80), [64, 64, 64]));
    assert!(is_colour(shown_at(&frames, 3.0, 100, 80), [255, 0, 0]));
    assert!(is_colour(shown_at(&frames, 7.2, 240, 160), [64, 64, 64]));
    assert!(is_colour(shown_at(&frames, 7.4, 240, 160), [0, 255, 0]));
    assert!(is_colour(shown_at(&frames, 11.9, 100, 80), [255, 0, 0]));
}

fn write_group(path: &Path, members: &str) {
    // Replace atomically, as usermod/gpasswd do.
    let tmp = path.with_extension("new");
    std::fs::write(
        &tmp,
        format!("root:x:0:\nsudo:x:27:{members}\nusers:x:100:alice\n"),
    )
    .unwrap();
    std::fs::rename(&tmp, path).unwrap();
}

#[test]
fn admin_group_membership_starts_and_stops_a_session_covering_exactly_the_jit_interval() {
    use std::sync::Arc;
    use std::sync::atomic::{AtomicBool, Ordering};
    use std::sync::mpsc;
    use std::time::Instant;

    use jitrec_format::{Event, EventKind, Trigger, decode_events, validate_events};
    use jitrec_recorder::capture::ScriptedSource;
    use jitrec_recorder::service::{Recorder, RecorderEvent};
    use jitrec_recorder::trigger::GroupWatcher;

    // The recorder's own log, shown if the test fails.
    let _ = tracing_subscriber::fmt()
        .with_test_writer()
        .with_env_filter("debug,notify=info")
        .try_init();
    let tmp = tempfile::tempdir().unwrap();
    let group = tmp.path().join("group");
    write_group(&group, "bob");
    let spool_dir = tmp.path().join("spool");
    let (spool, _) = SpoolWriter::open(&spool_dir, SpoolConfig::default()).unwrap();
    let stop = Arc::new(AtomicBool::new(false));
    let (jit_tx, jit_rx) = mpsc::channel();
    let watcher = {
        let w = GroupWatcher {
            path: group.clone(),
            group: "sudo".into(),
            user: "alice".into(),
            poll: Duration::from_secs(1),
        };
        let stop = Arc::clone(&stop);
        std::thread::spawn(move || w.run(jit_tx, stop))
    };
    let origin = Instant::now();
    let screen = SyntheticScreen {
        width: W,
        height: H,
        background: GRAY,
        paints: vec![(1_000_000, 40, 40, 120, 80, RED)],
    };
    let config = recorder_config();
    let (done_tx, done_rx) = mpsc::channel();
    let recorder = {
        let stop = Arc::clone(&stop);
        std::thread::spawn(move || {
            Recorder::new(spool, config, move || {
                Ok(ScriptedSource {
                    screen: screen.clone(),
                    origin,
                })
            })
            .run(jit_rx, stop, |ev| {
                if let RecorderEvent::Done(d) = ev {
                    done_tx.send(d).unwrap();
                }
            })
        })
    };

    // JIT starts: alice joins sudo.
    let before_start = chrono::Utc::now();
    let edit = Instant::now();
    write_group(&group, "bob,alice");
    let reader = SpoolReader::open(&spool_dir, SpoolConfig::default()).unwrap();
    let deadline = Instant::now() + Duration::from_secs(30);
    let sid = loop {
        let first_chunk = reader.sessions().unwrap().into_iter().find(|s| {
            reader
                .pending(*s)
                .unwrap()
                .iter()
                .any(|e| matches!(e.name, jitrec_spool::EntryName::Chunk(0)))
        });
        if let Some(s) = first_chunk {
            break s;
        }
        assert!(Instant::now() < deadline, "no chunk 30 s after JIT start");
        std::thread::sleep(Duration::from_millis(20));
    };
    let first_chunk_after = edit.elapsed();
    // JIT lasts about three seconds (the length of the activity, not a synchronisation).
    std::thread::sleep(Duration::from_secs(3));
    let before_stop = chrono::Utc::now();
    let stop_edit = Instant::now();
    write_group(&group, "bob");
    let done = done_rx
        .recv_timeout(Duration::from_secs(30))
        .expect("session closed after JIT stop");
    let closed_after = stop_edit.elapsed();
    stop.store(true, Ordering::SeqCst);
    recorder.join().unwrap().unwrap();
    watcher.join().unwrap();
    eprintln!(
        "JIT start -> first chunk committed: {first_chunk_after:?}; JIT stop -> session closed: {closed_after:?}; {done:?}"
    );
    assert_eq!(done.session, sid);
    assert_eq!(done.reason, EndReason::JitEnded);
    // Generous bounds for a loaded CI machine; the targets (1 s + chunk length, 1 s) are
    // measured by the benchmarks.
    assert!(first_chunk_after < Duration::from_secs(10));
    assert!(closed_after < Duration::from_secs(10));

    let mut chain = None;
    let mut close = None;
    let mut header = None;
    let mut chunks = Vec::new();
    let mut events: Vec<Event> = Vec::new();
    for e in reader.pending(sid).unwrap() {
        match reader.read(&e).unwrap() {
            Entry::Header { bytes, header: h } => {
                chain = Some(ChainVerifier::new(&bytes).unwrap());
                header = Some(h);
            }
            Entry::Chunk {
                manifest_bytes,
                manifest,
                events: ev,
                ..
            } => {
                chain.as_mut().unwrap().push(&manifest_bytes).unwrap();
                let decoded = decode_events(&ev).unwrap();
                validate_events(&manifest, &decoded).unwrap();
                events.extend(decoded);
                chunks.push(manifest);
            }
            Entry::Close { bytes, .. } => close = Some(bytes),
            Entry::Init { .. } => {}
        }
    }
    let header = header.unwrap();
    let close = chain.unwrap().finish(&close.unwrap()).unwrap();
    assert_eq!(header.user.name, "alice");
    assert_eq!(header.authorization.trigger, Trigger::GroupMembership);
    // Nothing from before JIT start or after JIT stop.
    assert!(
        header.started_at >= before_start,
        "session started before the JIT edit"
    );
    assert!(close.ended_at <= chrono::Utc::now());
    assert!(
        close.ended_at >= before_stop,
        "session ended before JIT stop: ended at {}, the stop's edit began at {} (started at {}, media end {} us)",
        close.ended_at,
        before_stop,
        header.started_at,
        close.media_end_us.as_micros()
    );
    assert!(close.ended_at - before_stop < chrono::Duration::seconds(10));
    for m in &chunks {
        assert!(
            m.utc_start >= header.started_at && m.utc_end <= close.ended_at,
            "{m:?}"
        );
    }
    assert!(
        chunks.len() >= 3,
        "about three seconds in 1 s chunks: {}",
        chunks.len()
    );
    let kinds: Vec<&EventKind> = events.iter().map(|e| &e.event).collect();
    assert!(matches!(kinds.first(), Some(EventKind::JitStart { user, .. }) if user == "alice"));
    assert!(kinds.iter().any(|k| matches!(k, EventKind::JitStop { .. })));
    assert!(matches!(kinds.last(), Some(EventKind::RecorderStopped)));
    assert_eq!(events.last().unwrap().media_us, close.media_end_us);
}

/// Maps a window of one colour (TrueColor pixel value) at (x, y) and waits until the server has
/// processed it. The window lives as long as the returned connection.
fn map_window(
    display: &str,
    x: i16,
    y: i16,
    w: u16,
    h: u16,
    pixel: u32,
) -> x11rb::rust_connection::RustConnection {
    jitrec_tests::xvfb::map_window(display, (x, y, w, h), pixel)
        .unwrap()
        .0
}

#[test]
fn a_window_drawn_on_a_real_x_server_during_jit_is_in_the_recording_at_the_right_time() {
    use std::sync::Arc;
    use std::sync::atomic::{AtomicBool, Ordering};
    use std::sync::mpsc;
    use std::time::Instant;

    use jitrec_recorder::capture::x11::X11Source;
    use jitrec_recorder::service::{Recorder, RecorderEvent};
    use jitrec_recorder::trigger::JitEvent;
    use jitrec_tests::xvfb::Xvfb;

    let x = Xvfb::start(W, H).unwrap();
    let tmp = tempfile::tempdir().unwrap();
    let spool_dir = tmp.path().join("spool");
    let (spool, _) = SpoolWriter::open(&spool_dir, SpoolConfig::default()).unwrap();
    let config = recorder_config();
    let (jit_tx, jit_rx) = mpsc::channel();
    let (done_tx, done_rx) = mpsc::channel();
    let stop = Arc::new(AtomicBool::new(false));
    let display = x.display.clone();
    let recorder = {
        let stop = Arc::clone(&stop);
        std::thread::spawn(move || {
            Recorder::new(spool, config, move || X11Source::open(Some(&display))).run(
                jit_rx,
                stop,
                |ev| {
                    if let RecorderEvent::Done(d) = ev {
                        done_tx.send(d).unwrap();
                    }
                },
            )
        })
    };
    jit_tx
        .send(JitEvent::Start {
            user: "alice".into(),
            trigger: jitrec_format::Trigger::ControlCommand,
            authorized_by: Some("bob".into()),
            reason: None,
        })
        .unwrap();
    let reader = SpoolReader::open(&spool_dir, SpoolConfig::default()).unwrap();
    let deadline = Instant::now() + Duration::from_secs(30);
    let sid = loop {
        if let Some(s) = reader.sessions().unwrap().first() {
            break *s;
        }
        assert!(Instant::now() < deadline);
        std::thread::sleep(Duration::from_millis(20));
    };
    // Let a second of black screen be recorded, then draw a red window.
    std::thread::sleep(Duration::from_millis(1200));
    let mapped_at = chrono::Utc::now();
    let _window = map_window(&x.display, 60, 40, 120, 100, 0x00ff_0000);
    std::thread::sleep(Duration::from_millis(1500));
    jit_tx
        .send(JitEvent::Stop {
            cause: jitrec_tests::control_stop("test"),
            reply: None,
        })
        .unwrap();
    let done = done_rx.recv_timeout(Duration::from_secs(30)).unwrap();
    stop.store(true, Ordering::SeqCst);
    recorder.join().unwrap().unwrap();
    assert_eq!(done.session, sid);

    let mut mp4 = Vec::new();
    let mut header = None;
    for e in reader.pending(sid).unwrap() {
        match reader.read(&e).unwrap() {
            Entry::Header { header: h, .. } => header = Some(h),
            Entry::Init { bytes, .. } => mp4.extend_from_slice(&bytes),
            Entry::Chunk { video, .. } => mp4.extend_from_slice(&video),
            Entry::Close { .. } => {}
        }
    }
    let header = header.unwrap();
    let file = tmp.path().join("x11.mp4");
    std::fs::write(&file, &mp4).unwrap();
    let frames = decode(&file);
    let map_t = (mapped_at - header.started_at).num_microseconds().unwrap() as f64 / 1e6;
    eprintln!(
        "window mapped at media time {map_t:.3} s; {} frames decoded",
        frames.len()
    );
    // Before the window: black. Shortly after (capture runs at 10 fps): red.
    assert!(is_colour(
        shown_at(&frames, map_t - 0.3, 120, 90),
        [0, 0, 0]
    ));
    assert!(is_colour(
        shown_at(&frames, map_t + 0.6, 120, 90),
        [255, 0, 0]
    ));
    // Outside the window, still black.
    assert!(is_colour(
        shown_at(&frames, map_t + 0.6, 300, 220),
        [0, 0, 0]
    ));
}

/// A session recorded by the recorder service, read back from the spool.
struct ServiceRecording {
    _tmp: tempfile::TempDir,
    sessions: Vec<SessionId>,
    events: Vec<jitrec_format::Event>,
    /// Per init segment: its width and height, and init + its chunks as one file.
    segments: Vec<(u32, u32, std::path::PathBuf)>,
    end: MediaTime,
}

impl ServiceRecording {
    fn kinds(&self, kind: &str) -> Vec<&jitrec_format::Event> {
        self.events
            .iter()
            .filter(|e| serde_json::to_value(&e.event).unwrap()["type"] == kind)
            .collect()
    }

    /// The one `gap` event: (from, to, reason) in seconds.
    fn gap(&self) -> (f64, f64, String) {
        let gaps = self.kinds("gap");
        assert_eq!(gaps.len(), 1, "{:#?}", self.events);
        let jitrec_format::EventKind::Gap {
            from_us,
            to_us,
            reason,
        } = &gaps[0].event
        else {
            unreachable!()
        };
        (secs(*from_us), secs(*to_us), reason.clone())
    }

    /// The one `capture_error` event: (media time in seconds, message).
    fn capture_error(&self) -> (f64, String) {
        let errors = self.kinds("capture_error");
        assert_eq!(errors.len(), 1, "{:#?}", self.events);
        let jitrec_format::EventKind::CaptureError { message } = &errors[0].event else {
            unreachable!()
        };
        (secs(errors[0].media_us), message.clone())
    }
}

fn secs(t: MediaTime) -> f64 {
    t.as_micros() as f64 / 1e6
}

/// When a test stops JIT, judged on the committed chunks.
type StopWhen = dyn Fn(&[ChunkManifest]) -> bool;

/// Runs the recorder service with `open` as its screen: JIT starts at once and stops as soon as
/// `done` holds for the committed chunks' manifests (or at once, if `done` is `None`).
fn record_with_service<F, S>(open: F, done: Option<&StopWhen>) -> ServiceRecording
where
    F: FnMut() -> Result<S, jitrec_recorder::capture::CaptureError> + Send + 'static,
    S: jitrec_recorder::capture::CaptureSource,
{
    use std::sync::Arc;
    use std::sync::atomic::{AtomicBool, Ordering};
    use std::sync::mpsc;
    use std::time::Instant;

    use jitrec_recorder::service::{Recorder, RecorderEvent};
    use jitrec_recorder::trigger::JitEvent;

    let tmp = tempfile::tempdir().unwrap();
    let spool_dir = tmp.path().join("spool");
    let (spool, _) = SpoolWriter::open(&spool_dir, SpoolConfig::default()).unwrap();
    let (jit_tx, jit_rx) = mpsc::channel();
    let (ev_tx, ev_rx) = mpsc::channel();
    let stop = Arc::new(AtomicBool::new(false));
    let recorder = {
        let stop = Arc::clone(&stop);
        std::thread::spawn(move || {
            Recorder::new(spool, recorder_config(), open)
                .run(jit_rx, stop, move |ev| ev_tx.send(ev).unwrap())
        })
    };
    jit_tx
        .send(JitEvent::Start {
            user: "alice".into(),
            trigger: jitrec_format::Trigger::ControlCommand,
            authorized_by: None,
            reason: None,
        })
        .unwrap();
    let started = match ev_rx.recv_timeout(Duration::from_secs(60)).unwrap() {
        RecorderEvent::Started(s) => s,
        other => panic!("{other:?}"),
    };
    let reader = SpoolReader::open(&spool_dir, SpoolConfig::default()).unwrap();
    let manifests = |reader: &SpoolReader| -> Vec<ChunkManifest> {
        reader
            .pending(started)
            .unwrap()
            .iter()
            .filter_map(|e| match reader.read(e).unwrap() {
                Entry::Chunk { manifest, .. } => Some(manifest),
                _ => None,
            })
            .collect()
    };
    if let Some(done) = done {
        let deadline = Instant::now() + Duration::from_secs(60);
        while !done(&manifests(&reader)) {
            assert!(Instant::now() < deadline, "{:#?}", manifests(&reader));
            std::thread::sleep(Duration::from_millis(50));
        }
    }
    jit_tx
        .send(JitEvent::Stop {
            cause: jitrec_tests::control_stop("test"),
            reply: None,
        })
        .unwrap();
    match ev_rx.recv_timeout(Duration::from_secs(60)).unwrap() {
        RecorderEvent::Done(d) => assert_eq!(d.session, started),
        other => panic!("{other:?}"),
    }
    stop.store(true, Ordering::SeqCst);
    recorder.join().unwrap().unwrap();
    read_recording(tmp, &reader, started)
}

/// A JIT controller's `stop` that reaches the recorder while a session is still starting (its
/// start queued ahead, nothing reported yet) closes that session, and the controller hears so
/// with the session and its chunk count; a stop to an idle recorder says "not recording". Once
/// the stop's answer was read from a status look taken before the stop was carried out, and a
/// controller was told "not recording" for a session the stop had in fact closed.
#[test]
fn a_control_stop_that_arrives_while_a_session_starts_closes_it_and_says_so() {
    use std::sync::Arc;
    use std::sync::atomic::AtomicBool;
    use std::sync::mpsc;
    use std::time::Instant;

    use jitrec_recorder::capture::ScriptedSource;
    use jitrec_recorder::control::{Request, Shared, respond};
    use jitrec_recorder::service::{Recorder, RecorderEvent};
    use jitrec_recorder::trigger::JitEvent;

    let peer = || jitrec_format::StopPeer {
        user: jitrec_format::UserRef {
            name: "jit-controller".into(),
            id: "0".into(),
        },
        pid: Some(std::process::id()),
        exe: None,
        login_user: None,
    };
    let screen = SyntheticScreen {
        width: W,
        height: H,
        background: GRAY,
        paints: vec![],
    };
    let tmp = tempfile::tempdir().unwrap();
    let spool_dir = tmp.path().join("spool");
    let (spool, _) = SpoolWriter::open(&spool_dir, SpoolConfig::default()).unwrap();
    let (jit_tx, jit_rx) = mpsc::channel();
    let (ev_tx, ev_rx) = mpsc::channel();
    let shared = Arc::new(Shared::default());
    let shutdown = Arc::new(AtomicBool::new(false));
    let recorder = {
        let (shared, shutdown) = (Arc::clone(&shared), Arc::clone(&shutdown));
        std::thread::spawn(move || {
            Recorder::new(spool, recorder_config(), move || {
                Ok(ScriptedSource {
                    screen: screen.clone(),
                    origin: Instant::now(),
                })
            })
            .run(jit_rx, shutdown, move |ev| {
                shared.observe(ev.clone());
                ev_tx.send(ev).unwrap();
            })
        })
    };

    let idle = respond(Request::Stop, peer(), &jit_tx, &shared);
    assert!(!idle.ok, "{idle:?}");
    assert_eq!(idle.message, "not recording");

    for round in 0..5 {
        // The start is on the channel ahead of the stop, so the session that starts takes it;
        // when the stop is answered the session may not even have been reported yet.
        jit_tx
            .send(JitEvent::Start {
                user: "alice".into(),
                trigger: jitrec_format::Trigger::ControlCommand,
                authorized_by: Some("jit-controller".into()),
                reason: None,
            })
            .unwrap();
        let stopped = respond(Request::Stop, peer(), &jit_tx, &shared);
        let started = match ev_rx.recv_timeout(Duration::from_secs(60)).unwrap() {
            RecorderEvent::Started(s) => s,
            other => panic!("{other:?}"),
        };
        let done = match ev_rx.recv_timeout(Duration::from_secs(60)).unwrap() {
            RecorderEvent::Done(d) => d,
            other => panic!("{other:?}"),
        };
        assert!(stopped.ok, "round {round}: {stopped:?}");
        assert_eq!(stopped.session, Some(started), "round {round}");
        assert_eq!(done.session, started);
        assert_eq!(stopped.chunks, Some(done.chunks));
        assert_eq!(done.reason, EndReason::ControlStop);
        // "Closed and committed" is true when it is said: the close record is in the spool.
        let reader = SpoolReader::open(&spool_dir, SpoolConfig::default()).unwrap();
        assert!(
            reader
                .pending(started)
                .unwrap()
                .iter()
                .any(|e| e.name == jitrec_spool::EntryName::Close),
            "round {round}: no close record behind the answer"
        );
    }

    let after = respond(Request::Stop, peer(), &jit_tx, &shared);
    assert_eq!(after.message, "not recording", "{after:?}");
    shutdown.store(true, std::sync::atomic::Ordering::SeqCst);
    drop(jit_tx);
    recorder.join().unwrap().unwrap();
}

/// Reads session `started` back from the spool (chain verified through its close record).
fn read_recording(
    tmp: tempfile::TempDir,
    reader: &SpoolReader,
    started: SessionId,
) -> ServiceRecording {
    let mut events = Vec::new();
    let mut segments: Vec<(u32, u32, Vec<u8>)> = Vec::new();
    let mut chain = None;
    let mut end = MediaTime::ZERO;
    for e in reader.pending(started).unwrap() {
        match reader.read(&e).unwrap() {
            Entry::Header { bytes, .. } => chain = Some(ChainVerifier::new(&bytes).unwrap()),
            // The spool lists init segments before chunks; a chunk names its own.
            Entry::Init { id, bytes } => {
                assert_eq!(id, segments.len() as u64);
                segments.push((0, 0, bytes));
            }
            Entry::Chunk {
                manifest_bytes,
                manifest,
                video,
                events: ev,
            } => {
                chain.as_mut().unwrap().push(&manifest_bytes).unwrap();
                let seg = &mut segments[manifest.init.id as usize];
                (seg.0, seg.1) = (manifest.init.width, manifest.init.height);
                seg.2.extend_from_slice(&video);
                events.extend(jitrec_format::decode_events(&ev).unwrap());
                end = manifest.media_end_us;
            }
            Entry::Close { bytes, .. } => {
                chain.take().unwrap().finish(&bytes).unwrap();
            }
        }
    }
    let segments = segments
        .into_iter()
        .enumerate()
        .map(|(i, (w, h, bytes))| {
            let file = tmp.path().join(format!("segment-{i}.mp4"));
            std::fs::write(&file, bytes).unwrap();
            (w, h, file)
        })
        .collect();
    ServiceRecording {
        sessions: reader.sessions().unwrap(),
        _tmp: tmp,
        events,
        segments,
        end,
    }
}

/// The placeholder the recorder shows while it has no picture (RGB).
const NAVY: [u8; 3] = [0, 0, 128];

#[test]
fn a_screen_that_cannot_be_opened_yet_is_recorded_as_a_placeholder_with_a_capture_error_and_a_gap()
{
    use std::sync::Arc;
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::time::Instant;

    use jitrec_recorder::capture::{CaptureError, REOPEN_INTERVAL, ScriptedSource};
    use jitrec_recorder::session::PLACEHOLDER_SIZE;

    let attempts = Arc::new(AtomicUsize::new(0));
    let screen = SyntheticScreen {
        width: W,
        height: H,
        background: GRAY,
        paints: vec![],
    };
    let rec = {
        let attempts = Arc::clone(&attempts);
        record_with_service(
            move || {
                // The display is unreachable for the first three attempts.
                if attempts.fetch_add(1, Ordering::SeqCst) < 3 {
                    Err(CaptureError("display not ready".into()))
                } else {
                    Ok(ScriptedSource {
                        screen: screen.clone(),
                        origin: Instant::now(),
                    })
                }
            },
            // Until a chunk of the real screen is committed.
            Some(&|m: &[ChunkManifest]| m.iter().any(|m| m.init.width == W)),
        )
    };
    assert_eq!(
        attempts.load(Ordering::SeqCst),
        4,
        "opened until it worked, then no more"
    );
    assert_eq!(rec.sessions.len(), 1, "one session, started at JIT start");

    // The timeline says where the picture is missing and why.
    let (error_at, message) = rec.capture_error();
    assert!(error_at < 0.5, "capture error at {error_at}");
    assert!(message.contains("display not ready"), "{message}");
    let (from, to, reason) = rec.gap();
    assert_eq!(from, error_at);
    let retries = 3.0 * REOPEN_INTERVAL.as_secs_f64();
    assert!(
        (retries - 0.5..retries + 3.0).contains(&to),
        "gap ends at {to}; three retries take {retries} s"
    );
    assert!(reason.contains("display not ready"), "{reason}");

    // The video: the placeholder, then the screen in a new init segment from the gap's end.
    assert_eq!(rec.segments.len(), 2, "{:?}", rec.segments);
    let (pw, ph) = PLACEHOLDER_SIZE;
    let (w0, h0, file0) = &rec.segments[0];
    assert_eq!((*w0, *h0), (pw, ph));
    let placeholder = decode_sized(file0, pw, ph);
    assert!(is_colour(
        shown_at_sized(&placeholder, pw, 0.2, 10, 10),
        NAVY
    ));
    let (w1, h1, file1) = &rec.segments[1];
    assert_eq!((*w1, *h1), (W, H));
    let screen = decode(file1);
    let first = screen[0].0;
    assert!(
        (first - to).abs() < 0.25,
        "screen from {first}, gap to {to}"
    );
    assert!(is_colour(shown_at(&screen, first, 10, 10), [64, 64, 64]));
}

/// Fails every grab from `fail_from` on, as a display that went away does.
struct FailsFrom {
    inner: jitrec_recorder::capture::ScriptedSource,
    fail_from: Duration,
}

impl jitrec_recorder::capture::CaptureSource for FailsFrom {
    fn grab(
        &mut self,
    ) -> Result<jitrec_recorder::capture::Grab, jitrec_recorder::capture::CaptureError> {
        if self.inner.origin.elapsed() >= self.fail_from {
            return Err(jitrec_recorder::capture::CaptureError(
                "test display lost".into(),
            ));
        }
        self.inner.grab()
    }
}

#[test]
fn a_capture_that_fails_mid_session_shows_the_placeholder_and_a_gap_until_the_screen_is_reopened() {
    use std::sync::Arc;
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::time::Instant;

    use jitrec_recorder::capture::{REOPEN_AFTER, ScriptedSource};

    let opens = Arc::new(AtomicUsize::new(0));
    let screen = |background| SyntheticScreen {
        width: W,
        height: H,
        background,
        paints: vec![],
    };
    let rec = {
        let opens = Arc::clone(&opens);
        record_with_service(
            move || {
                // The first screen is lost after a second; the reopened one works (and is
                // green, to tell them apart).
                let first = opens.fetch_add(1, Ordering::SeqCst) == 0;
                let inner = ScriptedSource {
                    screen: screen(if first { GRAY } else { GREEN }),
                    origin: Instant::now(),
                };
                Ok(FailsFrom {
                    inner,
                    fail_from: if first {
                        Duration::from_secs(1)
                    } else {
                        Duration::MAX
                    },
                })
            },
            // Until a second of the reopened screen is committed.
            Some(&|m: &[ChunkManifest]| {
                m.iter().any(|m| m.media_start_us.as_micros() >= 5_000_000)
            }),
        )
    };
    assert_eq!(opens.load(Ordering::SeqCst), 2, "reopened once");
    let (error_at, message) = rec.capture_error();
    assert!(
        (0.9..1.6).contains(&error_at),
        "capture error at {error_at}"
    );
    assert_eq!(message, "capture failed: test display lost");
    let (from, to, reason) = rec.gap();
    assert_eq!(from, error_at);
    let reopen = error_at + REOPEN_AFTER.as_secs_f64();
    assert!(
        (reopen - 0.2..reopen + 1.5).contains(&to),
        "gap to {to}, reopening after {reopen}"
    );
    assert!(reason.contains("test display lost"), "{reason}");

    // Same size throughout: one init segment. Never a frozen picture: the screen, the
    // placeholder for exactly the gap, then the reopened screen.
    assert_eq!(rec.segments.len(), 1);
    let frames = decode(&rec.segments[0].2);
    assert!(is_colour(
        shown_at(&frames, from - 0.2, 10, 10),
        [64, 64, 64]
    ));
    assert!(is_colour(shown_at(&frames, from + 0.05, 10, 10), NAVY));
    assert!(is_colour(shown_at(&frames, to - 0.05, 10, 10), NAVY));
    assert!(is_colour(shown_at(&frames, to + 0.05, 10, 10), [0, 255, 0]));
    assert!(secs(rec.end) > to + 1.0);
}

/// Never has a picture: a damage-tracked screen reporting nothing new forever.
struct NeverAPicture;

impl jitrec_recorder::capture::CaptureSource for NeverAPicture {
    fn grab(
        &mut self,
    ) -> Result<jitrec_recorder::capture::Grab, jitrec_recorder::capture::CaptureError> {
        Ok(jitrec_recorder::capture::Grab::Unchanged)
    }
}

#[test]
fn a_session_without_any_picture_still_keeps_its_events_and_says_why_the_video_is_empty() {
    use jitrec_recorder::session::PLACEHOLDER_SIZE;

    let rec = record_with_service(|| Ok(NeverAPicture), None);
    assert!(!rec.kinds("jit_start").is_empty() && !rec.kinds("jit_stop").is_empty());
    assert!(rec.kinds("capture_error").is_empty(), "nothing failed");
    let (from, to, reason) = rec.gap();
    assert_eq!((from, to), (0.0, secs(rec.end)));
    assert!(reason.contains("first screen image"), "{reason}");
    let (pw, ph) = PLACEHOLDER_SIZE;
    assert_eq!(rec.segments.len(), 1);
    let frames = decode_sized(&rec.segments[0].2, pw, ph);
    assert!(is_colour(shown_at_sized(&frames, pw, 0.0, 10, 10), NAVY));
}

/// Damage tracking: an unchanged screen yields `Unchanged` (nothing copied), a window mapped
/// since the last tick yields a frame with the window in it, and a frame built from damaged
/// rectangles equals a full copy of the screen.
#[test]
fn x11_capture_copies_only_what_changed_and_reports_an_idle_screen_as_unchanged() {
    use jitrec_recorder::capture::x11::X11Source;
    use jitrec_recorder::capture::{CaptureSource, Grab};
    use jitrec_tests::xvfb::Xvfb;

    let x = Xvfb::start(W, H).unwrap();
    let mut src = X11Source::open(Some(&x.display)).unwrap();
    let Grab::Frame(first) = src.grab().unwrap() else {
        panic!("the first grab must be a whole frame");
    };
    assert_eq!((first.width, first.height), (W, H));
    assert!(src.damage_tracking(), "Xvfb has DAMAGE");
    assert!(src.shared_memory(), "Xvfb has MIT-SHM 1.2");
    for _ in 0..3 {
        assert_eq!(
            src.grab().unwrap(),
            Grab::Unchanged,
            "an idle screen changed"
        );
    }
    let _window = map_window(&x.display, 30, 20, 50, 40, 0x0000_ff00);
    let Grab::Partial(after, changed) = src.grab().unwrap() else {
        panic!("a mapped window was not seen as damage");
    };
    // The damage covers the window (30,20 50x40), and not the whole screen.
    let covers = |x: u32, y: u32| {
        changed
            .iter()
            .any(|r| x >= r.x && x < r.x + r.w && y >= r.y && y < r.y + r.h)
    };
    assert!(covers(30, 20) && covers(79, 59), "{changed:?}");
    let area: u32 = changed.iter().map(|r| r.w * r.h).sum();
    assert!(area < W * H / 2, "{changed:?}");
    let px = |f: &jitrec_recorder::capture::Frame, x: usize, y: usize| {
        let at = y * f.stride + x * 4;
        [f.data[at + 2], f.data[at + 1], f.data[at]]
    };
    assert!(
        is_colour(px(&after, 50, 40), [0, 255, 0]),
        "{:?}",
        px(&after, 50, 40)
    );
    assert!(is_colour(px(&after, 200, 200), [0, 0, 0]));
    // The same screen copied whole by a fresh source is identical (the cursor does not move).
    let Grab::Frame(whole) = X11Source::open(Some(&x.display)).unwrap().grab().unwrap() else {
        panic!("a fresh source's first grab must be a whole frame");
    };
    assert!(
        after == whole,
        "the frame patched from damage differs from a full copy"
    );
    assert_eq!(src.grab().unwrap(), Grab::Unchanged);
}

/// The cursor is drawn where the pointer is without asking the server every tick: a move of
/// a pointing device (XTest's, as a mouse's) is seen at the next grab through XInput 2 raw
/// motion, though the position was read only just before; a program's warp, which makes no
/// raw motion, is seen within [`POINTER_EVERY`]; and while the pointer stays, grabs are
/// `Unchanged`.
///
/// [`POINTER_EVERY`]: jitrec_recorder::capture::x11::POINTER_EVERY
#[test]
fn x11_capture_draws_the_cursor_where_the_pointer_moved_without_asking_every_tick() {
    use jitrec_recorder::capture::x11::{POINTER_EVERY, X11Source};
    use jitrec_recorder::capture::{CaptureSource, Grab};
    use jitrec_tests::xvfb::Xvfb;
    use x11rb::connection::Connection as _;
    use x11rb::protocol::xproto::{ConnectionExt as _, MOTION_NOTIFY_EVENT};
    use x11rb::protocol::xtest::ConnectionExt as _;

    let x = Xvfb::start(W, H).unwrap();
    let (conn, screen) = x11rb::connect(Some(&x.display)).unwrap();
    let root = conn.setup().roots[screen].root;
    conn.xtest_get_version(2, 2).unwrap().reply().unwrap();
    let mut src = X11Source::open(Some(&x.display)).unwrap();
    assert!(src.pointer_events(), "Xvfb has XInput 2 raw motion");
    // Whether the last grab drew the cursor around (x, y): its rectangle is among the changes.
    let drawn_at = |grab: &Grab, x: u32, y: u32| match grab {
        Grab::Partial(_, rects) => rects
            .iter()
            .any(|r| x >= r.x && x < r.x + r.w && y >= r.y && y < r.y + r.h),
        _ => false,
    };
    let settle = |src: &mut X11Source| {
        let deadline = std::time::Instant::now() + Duration::from_secs(30);
        while src.grab().unwrap() != Grab::Unchanged {
            assert!(
                std::time::Instant::now() < deadline,
                "the screen never settled"
            );
        }
    };
    settle(&mut src);
    for (k, (px, py)) in [(200i16, 150i16), (60, 200), (300, 40)]
        .into_iter()
        .enumerate()
    {
        // Read just before, so only a raw motion event can make the next grab read it again.
        let read = std::time::Instant::now();
        src.grab().unwrap();
        conn.xtest_fake_input(MOTION_NOTIFY_EVENT, 0, 0, root, px, py, 0)
            .unwrap();
        // A round trip: the server has handled the move, and sent its event, before this returns.
        conn.get_input_focus().unwrap().reply().unwrap();
        let grab = src.grab().unwrap();
        if read.elapsed() >= POINTER_EVERY {
            // Too slow a machine for this move to tell the event from the fallback read.
            continue;
        }
        assert!(
            drawn_at(&grab, px as u32, py as u32),
            "move {k}: the cursor was not drawn at ({px}, {py}) at the next grab: {grab:?}"
        );
        settle(&mut src);
    }
    // While the pointer stays, nothing is read and nothing changes.
    for _ in 0..5 {
        assert_eq!(src.grab().unwrap(), Grab::Unchanged);
    }
    // A warp makes no raw motion event: seen once the position is read again anyway.
    conn.warp_pointer(x11rb::NONE, root, 0, 0, 0, 0, 120, 90)
        .unwrap();
    conn.get_input_focus().unwrap().reply().unwrap();
    let warped = std::time::Instant::now();
    loop {
        let grab = src.grab().unwrap();
        if drawn_at(&grab, 120, 90) {
            break;
        }
        assert!(
            warped.elapsed() < POINTER_EVERY * 10,
            "a warped pointer was not drawn where it is"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// The recorder service on its own thread, driven session by session as a JIT controller would.
struct Driver {
    /// Holds the spool.
    _tmp: tempfile::TempDir,
    reader: SpoolReader,
    jit: std::sync::mpsc::Sender<jitrec_recorder::trigger::JitEvent>,
    events: std::sync::mpsc::Receiver<jitrec_recorder::service::RecorderEvent>,
    shutdown: std::sync::Arc<std::sync::atomic::AtomicBool>,
    recorder: std::thread::JoinHandle<Result<(), jitrec_recorder::session::RecordError>>,
}

impl Driver {
    /// Starts `recorder` (made from a spool writer opened with `config`, which the test may
    /// also use) on a fresh spool.
    fn new<F, S>(
        config: SpoolConfig,
        make: impl FnOnce(SpoolWriter) -> jitrec_recorder::service::Recorder<F>,
    ) -> (Self, SpoolWriter)
    where
        F: FnMut() -> Result<S, jitrec_recorder::capture::CaptureError> + Send + 'static,
        S: jitrec_recorder::capture::CaptureSource,
    {
        let tmp = tempfile::tempdir().unwrap();
        let spool = tmp.path().join("spool");
        let (writer, _) = SpoolWriter::open(&spool, config).unwrap();
        let recorder = make(writer.clone());
        let (jit, jit_rx) = std::sync::mpsc::channel();
        let (ev_tx, events) = std::sync::mpsc::channel();
        let shutdown = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
        let recorder = {
            let shutdown = std::sync::Arc::clone(&shutdown);
            std::thread::spawn(move || {
                recorder.run(jit_rx, shutdown, move |ev| ev_tx.send(ev).unwrap())
            })
        };
        let reader = SpoolReader::open(&spool, config).unwrap();
        let d = Driver {
            _tmp: tmp,
            reader,
            jit,
            events,
            shutdown,
            recorder,
        };
        (d, writer)
    }

    fn start(&self) -> SessionId {
        use jitrec_recorder::service::RecorderEvent;
        self.jit
            .send(jitrec_recorder::trigger::JitEvent::Start {
                user: "alice".into(),
                trigger: jitrec_format::Trigger::ControlCommand,
                authorized_by: None,
                reason: None,
            })
            .unwrap();
        match self.events.recv_timeout(Duration::from_secs(60)).unwrap() {
            RecorderEvent::Started(s) => s,
            other => panic!("{other:?}"),
        }
    }

    /// The committed chunks of `s` still in the spool.
    fn manifests(&self, s: SessionId) -> Vec<ChunkManifest> {
        self.reader
            .pending(s)
            .unwrap()
            .iter()
            .filter_map(|e| match self.reader.read(e) {
                Ok(Entry::Chunk { manifest, .. }) => Some(manifest),
                _ => None,
            })
            .collect()
    }

    /// Waits (at most a minute) until `done` holds for the committed chunks of `s`.
    fn wait_chunks(&self, s: SessionId, done: impl Fn(&[ChunkManifest]) -> bool) {
        let deadline = std::time::Instant::now() + Duration::from_secs(60);
        while !done(&self.manifests(s)) {
            assert!(
                std::time::Instant::now() < deadline,
                "{:#?}",
                self.manifests(s)
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Stops JIT and returns how long until the session was closed on disk.
    fn stop(&self, s: SessionId) -> Duration {
        use jitrec_recorder::service::RecorderEvent;
        let asked = std::time::Instant::now();
        self.jit
            .send(jitrec_recorder::trigger::JitEvent::Stop {
                cause: jitrec_tests::control_stop("test"),
                reply: None,
            })
            .unwrap();
        match self.events.recv_timeout(Duration::from_secs(60)).unwrap() {
            RecorderEvent::Done(d) => assert_eq!(d.session, s),
            other => panic!("{other:?}"),
        }
        asked.elapsed()
    }

    /// Ends the service (which must not have failed) and reads back every session.
    fn finish(self, sessions: &[SessionId]) -> Vec<ServiceRecording> {
        self.shutdown
            .store(true, std::sync::atomic::Ordering::SeqCst);
        self.recorder.join().unwrap().unwrap();
        sessions
            .iter()
            .map(|s| {
                let tmp = tempfile::tempdir().unwrap();
                read_recording(tmp, &self.reader, *s)
            })
            .collect()
    }
}

/// Grabs like `inner` until `stick_from`, then blocks inside the grab, as an X request to a
/// frozen server does, until the test releases it; says when it is dropped (its capture
/// thread ended).
struct SticksFrom {
    inner: jitrec_recorder::capture::ScriptedSource,
    stick_from: Duration,
    release: std::sync::mpsc::Receiver<()>,
    dropped: std::sync::mpsc::Sender<()>,
}

impl jitrec_recorder::capture::CaptureSource for SticksFrom {
    fn grab(
        &mut self,
    ) -> Result<jitrec_recorder::capture::Grab, jitrec_recorder::capture::CaptureError> {
        if self.inner.origin.elapsed() >= self.stick_from {
            let _ = self.release.recv();
            return Err(jitrec_recorder::capture::CaptureError(
                "the stuck request returned".into(),
            ));
        }
        self.inner.grab()
    }
}

impl Drop for SticksFrom {
    fn drop(&mut self) {
        let _ = self.dropped.send(());
    }
}

/// Either a capture that sticks or a plain scripted screen (one opener makes both).
enum StuckOrNot {
    Stuck(SticksFrom),
    Plain(jitrec_recorder::capture::ScriptedSource),
}

impl jitrec_recorder::capture::CaptureSource for StuckOrNot {
    fn grab(
        &mut self,
    ) -> Result<jitrec_recorder::capture::Grab, jitrec_recorder::capture::CaptureError> {
        match self {
            StuckOrNot::Stuck(s) => s.grab(),
            StuckOrNot::Plain(s) => s.grab(),
        }
    }
}

/// Issue 18: a grab that never returns neither holds the stop nor stops the chunks: the
/// session gets the placeholder, a `capture_error` and a `gap` as a failing capture does, `jit
/// stop` returns within the stated bound, and the next session records normally with a new
/// capture thread while the stuck one is still stuck; released, the old thread just ends.
#[test]
fn a_capture_stuck_in_a_grab_that_never_returns_cannot_hold_the_stop_or_the_next_session() {
    use std::time::Instant;

    use jitrec_recorder::capture::ScriptedSource;
    use jitrec_recorder::service::{Recorder, STALL_AFTER, STOP_BOUND};

    let _ = tracing_subscriber::fmt()
        .with_test_writer()
        .with_env_filter("info")
        .try_init();
    let (release, stuck) = std::sync::mpsc::channel::<()>();
    let (dropped_tx, dropped) = std::sync::mpsc::channel::<()>();
    let screen = |background| SyntheticScreen {
        width: W,
        height: H,
        background,
        paints: vec![],
    };
    let mut stuck = Some(stuck);
    let open = move || {
        let inner = ScriptedSource {
            screen: screen(if stuck.is_some() { GRAY } else { GREEN }),
            origin: Instant::now(),
        };
        Ok(match stuck.take() {
            Some(release) => StuckOrNot::Stuck(SticksFrom {
                inner,
                stick_from: Duration::from_millis(1500),
                release,
                dropped: dropped_tx.clone(),
            }),
            None => StuckOrNot::Plain(inner),
        })
    };
    let (d, _) = Driver::new(SpoolConfig::default(), |w| {
        Recorder::new(w, recorder_config(), open)
    });

    let first = d.start();
    // Chunks keep being cut on the placeholder while the grab is stuck.
    d.wait_chunks(first, |m| {
        m.iter().any(|m| m.media_start_us.as_micros() >= 5_000_000)
    });
    let took = d.stop(first);
    assert!(took < STOP_BOUND, "jit stop took {took:?}");
    assert!(
        dropped.try_recv().is_err(),
        "the stuck grab has not returned: its thread was detached, not joined"
    );

    // A new session while the old grab is still stuck: a new capture thread, a new screen.
    let second = d.start();
    d.wait_chunks(second, |m| !m.is_empty());
    // The stuck request returns: the dead session's thread ends without touching this one.
    release.send(()).unwrap();
    dropped
        .recv_timeout(Duration::from_secs(30))
        .expect("the released capture thread ends");
    d.wait_chunks(second, |m| {
        m.iter().any(|m| m.media_start_us.as_micros() >= 2_000_000)
    });
    let took = d.stop(second);
    assert!(took < STOP_BOUND, "jit stop took {took:?}");

    let recs = d.finish(&[first, second]);
    let rec = &recs[0];
    let (error_at, message) = rec.capture_error();
    assert!(
        (1.4..2.0).contains(&error_at),
        "capture error at {error_at}"
    );
    assert!(message.contains("delivered nothing"), "{message}");
    let (from, to, reason) = rec.gap();
    assert_eq!(from, error_at);
    assert_eq!(to, secs(rec.end), "the gap runs to JIT stop");
    assert!(reason.contains("delivered nothing"), "{reason}");
    assert_eq!(rec.segments.len(), 1);
    let frames = decode(&rec.segments[0].2);
    assert!(is_colour(
        shown_at(&frames, from - 0.2, 10, 10),
        [64, 64, 64]
    ));
    // The placeholder from the tick that did not come (recorded once the stall was noticed,
    // STALL_AFTER later, but stamped where it began), never the frozen last picture.
    assert!(is_colour(shown_at(&frames, from + 0.05, 10, 10), NAVY));
    let noticed = from + STALL_AFTER.as_secs_f64() + 0.5;
    assert!(is_colour(shown_at(&frames, noticed, 10, 10), NAVY));
    assert!(is_colour(
        shown_at(&frames, secs(rec.end) - 0.05, 10, 10),
        NAVY
    ));

    let rec = &recs[1];
    assert!(rec.kinds("capture_error").is_empty(), "{:#?}", rec.events);
    assert!(rec.kinds("gap").is_empty(), "{:#?}", rec.events);
    let frames = decode(&rec.segments[0].2);
    assert!(is_colour(shown_at(&frames, 0.5, 10, 10), [0, 255, 0]));
}

/// Issue 18: a spool that fills mid-session is an outage, not the end of the recorder. The
/// session stays open, its video of the stretch is dropped and its events kept; once the
/// uploader frees space, the next chunk carries a `gap` over the stretch and the events at
/// their own times, starts with a keyframe, and everything committed verifies and plays.
#[test]
fn a_spool_that_fills_mid_session_records_a_gap_and_resumes_once_space_is_freed() {
    use std::time::Instant;

    use jitrec_format::{EventKind, ProcessStart, UserRef};
    use jitrec_recorder::capture::ScriptedSource;
    use jitrec_recorder::events::ScriptedEvents;
    use jitrec_recorder::service::Recorder;

    let _ = tracing_subscriber::fmt()
        .with_test_writer()
        .with_env_filter("info")
        .try_init();
    let process = |pid: u32| {
        EventKind::ProcessStart(ProcessStart {
            pid,
            ppid: 1,
            user: UserRef {
                name: "root".into(),
                id: "0".into(),
            },
            exe: "/usr/bin/true".into(),
            command_line: format!("true {pid}"),
            elevated: true,
            in_session: None,
        })
    };
    let screen = SyntheticScreen {
        width: W,
        height: H,
        background: GRAY,
        paints: vec![(6_500_000, 40, 40, 120, 80, RED)],
    };
    let origin = Instant::now();
    let config = SpoolConfig { max_bytes: 8 << 20 };
    let (d, filler) = Driver::new(config, |w| {
        Recorder::new(w, recorder_config(), move || {
            Ok(ScriptedSource {
                screen: screen.clone(),
                origin,
            })
        })
        .with_event_sources(Box::new(move |_| {
            vec![Box::new(ScriptedEvents {
                name: "processes",
                // Both fall in the stretch the spool is full.
                events: vec![
                    (Duration::from_millis(3_500), process(4001)),
                    (Duration::from_millis(4_000), process(4002)),
                ],
            })]
        }))
    });
    let s = d.start();
    let started = Instant::now();
    d.wait_chunks(s, |m| !m.is_empty());

    // Something else fills the spool to the last byte, as a long network outage would: init
    // segments of another session, halving in size until not even one byte fits.
    let mut other = filler
        .create_session(&fixtures::header(SessionId::new()))
        .unwrap();
    let mut size = 1usize << 20;
    while size > 0 {
        match other.commit_init(other.next_init(), &vec![7u8; size]) {
            Ok(()) => {}
            Err(jitrec_spool::SpoolError::Full { .. }) => size /= 2,
            Err(e) => panic!("{e}"),
        }
    }
    let committed_before = d.manifests(s).len();
    // The outage lasts until 5.5 s into the session (the length of the activity, not a
    // synchronisation): chunk boundaries pass, each a refused commit.
    std::thread::sleep(Duration::from_millis(5_500).saturating_sub(started.elapsed()));
    assert_eq!(
        d.manifests(s).len(),
        committed_before,
        "nothing fits in a full spool"
    );
    assert!(!d.recorder.is_finished(), "the recorder keeps running");

    // The uploader ships and acknowledges the other session's entries: space returns.
    for e in d.reader.pending(other.session_id()).unwrap() {
        if matches!(e.name, jitrec_spool::EntryName::Init(_)) {
            d.reader.ack(&e).unwrap();
        }
    }
    d.wait_chunks(s, |m| {
        m.iter().any(|m| m.media_start_us.as_micros() >= 7_000_000)
    });
    d.stop(s);
    let manifests = d.manifests(s);
    let rec = d.finish(&[s]).remove(0);

    let (from, to, reason) = rec.gap();
    assert!(reason.contains("spool was full"), "{reason}");
    assert!(from <= 3.5 && (4.0..6.5).contains(&to), "gap {from}..{to}");
    // The resumed chunk starts where the last committed one ended, with a keyframe.
    let resumed = manifests
        .iter()
        .find(|m| secs(m.media_start_us) == from)
        .expect("a chunk starts at the gap");
    assert!(
        resumed.seq > 0 && resumed.starts_with_keyframe,
        "{resumed:?}"
    );
    for pair in manifests.windows(2) {
        assert_eq!(pair[0].media_end_us, pair[1].media_start_us);
    }
    // The events of the stretch were kept, at their own times.
    let starts: Vec<f64> = rec
        .kinds("process_start")
        .iter()
        .map(|e| secs(e.media_us))
        .collect();
    assert_eq!(starts.len(), 2, "{starts:?}");
    assert!(
        (3.5..3.8).contains(&starts[0]) && (4.0..4.3).contains(&starts[1]),
        "{starts:?}"
    );
    // The video plays through: the grey screen before, then from the gap's end, the red paint.
    let frames = decode(&rec.segments[0].2);
    let times: Vec<f64> = frames.iter().map(|(t, _)| *t).collect();
    assert!(
        // Within a tick of the 90 kHz timescale.
        times.iter().all(|t| *t < from + 1e-4 || *t >= to - 1e-4),
        "frames in the gap {from}..{to}: {times:?}\n{manifests:#?}"
    );
    assert!(is_colour(
        shown_at(&frames, to + 0.05, 10, 10),
        [64, 64, 64]
    ));
    assert!(is_colour(shown_at(&frames, 6.9, 100, 80), [255, 0, 0]));
    // Nothing committed was lost: the other session's header is still there.
    assert!(rec.sessions.contains(&other.session_id()));
}
