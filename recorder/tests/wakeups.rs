//! The recorder's encoding thread sleeps until something happens: it is woken by capture ticks,
//! events, JIT events and a shutdown (`jitrec_recorder::doorbell`), not by a timer of its own.
//! Counted as the thread's voluntary context switches (`/proc/thread-self/status`, so Linux
//! only) while an unchanging screen is recorded at a low frame rate, and while no session runs.
//! A loop that polls (the recorder polled every 50 ms for a JIT stop until this test was
//! written) shows many times more.

#![cfg(target_os = "linux")]
#![allow(clippy::unwrap_used)]

use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use jitrec_format::{EndReason, Trigger};
use jitrec_recorder::capture::{ScriptedSource, SyntheticScreen};
use jitrec_recorder::doorbell::Doorbell;
use jitrec_recorder::encode::EncoderConfig;
use jitrec_recorder::service::{Recorder, RecorderConfig, RecorderEvent};
use jitrec_recorder::trigger::JitEvent;
use jitrec_spool::{SpoolConfig, SpoolWriter};

/// Voluntary context switches of the thread whose `/proc/<pid>/task/<tid>` is `task`.
fn switches(task: &std::path::Path) -> u64 {
    let status = std::fs::read_to_string(task.join("status")).unwrap();
    status
        .lines()
        .find_map(|l| l.strip_prefix("voluntary_ctxt_switches:"))
        .unwrap()
        .trim()
        .parse()
        .unwrap()
}

#[test]
fn the_encoding_thread_wakes_for_ticks_and_jit_events_not_on_a_timer() {
    const FPS: u32 = 2;
    const WATCH: Duration = Duration::from_secs(4);
    let tmp = tempfile::tempdir().unwrap();
    let (spool, _) = SpoolWriter::open(tmp.path().join("spool"), SpoolConfig::default()).unwrap();
    let config = RecorderConfig {
        fps: FPS,
        // No chunk is cut while the thread is watched: a cut syncs files, which sleeps.
        chunk_len: Duration::from_secs(60),
        encoder: EncoderConfig::default(),
        machine: jitrec_format::Machine {
            id: "test-machine".into(),
            hostname: "ws-test".into(),
        },
        labels: jitrec_format::Labels::default(),
        queue: 2,
        events: jitrec_recorder::events::EventLimits::default(),
    };
    let screen = SyntheticScreen {
        width: 64,
        height: 48,
        background: [64, 64, 64, 255],
        paints: Vec::new(),
    };
    let origin = Instant::now();
    let stop = Arc::new(AtomicBool::new(false));
    let bell = Arc::new(Doorbell::new());
    let (jit_tx, jit_rx) = mpsc::channel();
    let (ev_tx, ev_rx) = mpsc::channel();
    let (task_tx, task_rx) = mpsc::channel::<PathBuf>();
    let recorder = {
        let (stop, bell) = (Arc::clone(&stop), Arc::clone(&bell));
        std::thread::spawn(move || {
            let task = std::fs::canonicalize("/proc/thread-self").unwrap();
            task_tx.send(task).unwrap();
            Recorder::new(spool, config, move || {
                Ok(ScriptedSource {
                    screen: screen.clone(),
                    origin,
                })
            })
            .with_doorbell(bell)
            .run(jit_rx, stop, move |ev| ev_tx.send(ev).unwrap())
        })
    };
    let task = task_rx.recv().unwrap();

    // Between sessions: nothing rings but the fallback look at the shutdown flag (1 s).
    std::thread::sleep(Duration::from_millis(300));
    let before = switches(&task);
    std::thread::sleep(WATCH);
    let idle = switches(&task) - before;
    // 4 looks at the flag, with room for a loaded machine; a 200 ms poll gives 20.
    assert!(idle <= 10, "{idle} wake-ups in {WATCH:?} between sessions");

    jit_tx
        .send(JitEvent::Start {
            user: "alice".into(),
            trigger: Trigger::ControlCommand,
            authorized_by: None,
            reason: None,
        })
        .unwrap();
    assert!(matches!(
        ev_rx.recv_timeout(Duration::from_secs(60)).unwrap(),
        RecorderEvent::Started(_)
    ));
    // Past the first picture (libx264's start-up) and its keyframe.
    std::thread::sleep(Duration::from_secs(1));
    let before = switches(&task);
    std::thread::sleep(WATCH);
    let recording = switches(&task) - before;
    // 8 ticks; a tick may cost a wake-up or two (the ring, a lock). A 50 ms poll gives 80 more.
    let ticks = u64::from(FPS) * WATCH.as_secs();
    assert!(
        recording <= ticks * 3 + 6,
        "{recording} wake-ups in {WATCH:?} of an idle session at {FPS} fps"
    );

    // A JIT stop still ends the session promptly: it rings too.
    let (reply, replied) = jitrec_recorder::trigger::StopReply::new();
    jit_tx
        .send(JitEvent::Stop {
            cause: jitrec_format::StopCause {
                by: jitrec_format::StopBy::ControlCommand,
                peer: None,
                recorded_user: None,
                detail: "test".into(),
            },
            reply: Some(reply),
        })
        .unwrap();
    let done = replied
        .recv_timeout(Duration::from_secs(30))
        .unwrap()
        .expect("the session was closed");
    assert_eq!(done.reason, EndReason::ControlStop);

    // And a shutdown rung on the bell is seen without waiting for the fallback look.
    stop.store(true, Ordering::SeqCst);
    bell.ring();
    recorder.join().unwrap().unwrap();
}
