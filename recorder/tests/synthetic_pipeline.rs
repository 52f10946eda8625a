//! The recording pipeline end to end, fed by a synthetic screen, on whatever platform the tests
//! run: Linux, and Windows under wine (scripts/windows.sh), where it is the one check that the
//! real encoder, chunker and spool work together in a Windows build. JIT comes from the Windows
//! trigger's decision ([`AdminTrigger`]) fed with scripted membership readings.
//!
//! Asserted: one session, closed because JIT ended, its hash chain intact, events from JIT start
//! to recorder stop, chunks covering the interval, and the decoded video showing what the
//! synthetic screen showed (a red rectangle painted one second in).

#![allow(clippy::unwrap_used)]

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use ffmpeg_next as ffmpeg;
use jitrec_format::{ChainVerifier, EndReason, Event, EventKind, Trigger, decode_events};
use jitrec_recorder::capture::ScriptedSource;
use jitrec_recorder::capture::SyntheticScreen;
use jitrec_recorder::encode::EncoderConfig;
use jitrec_recorder::service::{Recorder, RecorderConfig, RecorderEvent};
use jitrec_recorder::trigger::windows::{AdminTrigger, InteractiveUser, Observation};
use jitrec_recorder::windows::sid::Sid;
use jitrec_spool::{Entry, SpoolConfig, SpoolReader, SpoolWriter};

const W: u32 = 320;
const H: u32 = 240;

#[test]
fn a_synthetic_screen_is_recorded_from_jit_start_to_jit_stop() {
    let tmp = tempfile::tempdir().unwrap();
    let spool_dir = tmp.path().join("spool");
    let (spool, _) = SpoolWriter::open(&spool_dir, SpoolConfig::default()).unwrap();
    let config = RecorderConfig {
        fps: 10,
        chunk_len: Duration::from_secs(1),
        encoder: EncoderConfig::default(),
        machine: jitrec_format::Machine {
            id: "test-machine".into(),
            hostname: "WS-TEST".into(),
        },
        labels: jitrec_format::Labels::default(),
        queue: 2,
        events: jitrec_recorder::events::EventLimits::default(),
    };
    let origin = Instant::now();
    let screen = SyntheticScreen {
        width: W,
        height: H,
        background: [64, 64, 64, 255],
        paints: vec![(1_000_000, 40, 40, 120, 80, [0, 0, 255, 255])],
    };
    let stop = Arc::new(AtomicBool::new(false));
    let (jit_tx, jit_rx) = mpsc::channel();
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
                    let _ = done_tx.send(d);
                }
            })
        })
    };

    // Alice signs in, then is added to Administrators: JIT starts.
    let alice = InteractiveUser {
        name: r"CORP\alice".into(),
        sid: "S-1-5-21-1-2-3-1104".parse::<Sid>().unwrap(),
    };
    let builtin_admin: Sid = "S-1-5-21-1-2-3-500".parse().unwrap();
    let mut trigger = AdminTrigger::new();
    let mut observe = |admins: Vec<Sid>| {
        for ev in trigger.observe(Observation::User {
            user: alice.clone(),
            admins,
        }) {
            jit_tx.send(ev).unwrap();
        }
    };
    observe(vec![builtin_admin.clone()]);
    observe(vec![builtin_admin.clone(), alice.sid.clone()]);
    let reader = SpoolReader::open(&spool_dir, SpoolConfig::default()).unwrap();
    let deadline = Instant::now() + Duration::from_secs(60);
    let sid = loop {
        if let Some(s) = reader.sessions().unwrap().into_iter().next() {
            break s;
        }
        assert!(Instant::now() < deadline, "no session 60 s after JIT start");
        std::thread::sleep(Duration::from_millis(20));
    };
    // JIT lasts about three seconds (the length of the activity, not a synchronisation).
    std::thread::sleep(Duration::from_secs(3));
    observe(vec![builtin_admin]);
    let done = done_rx
        .recv_timeout(Duration::from_secs(60))
        .expect("session closed after JIT stop");
    stop.store(true, Ordering::SeqCst);
    recorder.join().unwrap().unwrap();
    assert_eq!(done.session, sid);
    assert_eq!(done.reason, EndReason::JitEnded);

    let mut chain = None;
    let mut header = None;
    let mut close = None;
    let mut chunks = 0;
    let mut events: Vec<Event> = Vec::new();
    let mut media = Vec::new();
    for e in reader.pending(sid).unwrap() {
        match reader.read(&e).unwrap() {
            Entry::Header { bytes, header: h } => {
                chain = Some(ChainVerifier::new(&bytes).unwrap());
                header = Some(h);
            }
            Entry::Init { bytes, .. } => media.extend_from_slice(&bytes),
            Entry::Chunk {
                manifest_bytes,
                video,
                events: ev,
                ..
            } => {
                chain.as_mut().unwrap().push(&manifest_bytes).unwrap();
                events.extend(decode_events(&ev).unwrap());
                media.extend_from_slice(&video);
                chunks += 1;
            }
            Entry::Close { bytes, .. } => close = Some(bytes),
        }
    }
    let header = header.expect("a session header");
    chain
        .expect("a chain")
        .finish(&close.expect("a close record"))
        .expect("the hash chain verifies");
    assert_eq!(header.user.name, r"CORP\alice");
    assert_eq!(header.authorization.trigger, Trigger::GroupMembership);
    assert!(chunks >= 3, "about three seconds in 1 s chunks: {chunks}");
    assert!(
        matches!(events.first().map(|e| &e.event), Some(EventKind::JitStart { user, .. }) if user == r"CORP\alice")
    );
    assert!(
        events
            .iter()
            .any(|e| matches!(e.event, EventKind::JitStop { .. }))
    );
    assert!(matches!(
        events.last().map(|e| &e.event),
        Some(EventKind::RecorderStopped)
    ));

    // The video: what the screen showed at the end (red rectangle on gray).
    let path = tmp.path().join("session.mp4");
    std::fs::write(&path, &media).unwrap();
    let (v_inside, v_outside) = last_frame_chroma(&path, (80, 80), (250, 200));
    assert!(v_inside > 200, "red has a high V (Cr): {v_inside}");
    assert!(
        (118..=138).contains(&v_outside),
        "gray has V near 128: {v_outside}"
    );
}

/// Decodes `file` with FFmpeg's own H.264 decoder and returns the V (Cr) sample at two pixel
/// positions of the last frame.
fn last_frame_chroma(file: &std::path::Path, a: (usize, usize), b: (usize, usize)) -> (u8, u8) {
    ffmpeg::init().unwrap();
    let mut input = ffmpeg::format::input(file).expect("FFmpeg opens the recording");
    let stream = input
        .streams()
        .best(ffmpeg::media::Type::Video)
        .expect("a video stream");
    let index = stream.index();
    let ctx = ffmpeg::codec::context::Context::from_parameters(stream.parameters()).unwrap();
    let mut decoder = ctx.decoder().video().unwrap();
    let mut last = None;
    let mut frame = ffmpeg::util::frame::Video::empty();
    let mut take = |d: &mut ffmpeg::decoder::Video,
                    last: &mut Option<ffmpeg::util::frame::Video>| {
        while d.receive_frame(&mut frame).is_ok() {
            *last = Some(frame.clone());
        }
    };
    for (s, packet) in input.packets() {
        if s.index() == index {
            decoder.send_packet(&packet).unwrap();
            take(&mut decoder, &mut last);
        }
    }
    decoder.send_eof().unwrap();
    take(&mut decoder, &mut last);
    let f = last.expect("at least one decoded frame");
    assert_eq!((f.width(), f.height()), (W, H));
    assert_eq!(f.format(), ffmpeg::format::Pixel::YUV420P);
    let (v, stride) = (f.data(2), f.stride(2));
    let at = |(x, y): (usize, usize)| v[(y / 2) * stride + x / 2];
    (at(a), at(b))
}
