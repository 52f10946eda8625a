//! The filmstrip's decoder against the people recorded: video in the bucket is endpoint-written,
//! so the player decodes it only in a confined child process. Hostile video costs its own
//! picture (502, and once: the failure is kept), a chunk too large for a screen is refused
//! before it is read, bytes replaced after the player witnessed them never reach the decoder
//! (409, the session marked tampered), and the child really runs under its limits (read from
//! the kernel's view of it, `/proc/PID/limits` and `status`). The pictures of a real
//! recording are checked in `review.rs`.

use std::sync::Arc;
use std::time::{Duration, Instant};

use jitrec_bucket::{BucketReader, DirBucket};
use jitrec_format::fixtures;
use jitrec_format::{ObjectKey, SessionHeader, SessionId};
use jitrec_player::index::Index;
use jitrec_player::index::sqlite::SqliteIndex;
use jitrec_tests::{TestBucket, session_objects};

use crate::player::Player;

const LIMIT: Duration = Duration::from_secs(120);
const PLAYER: &str = env!("CARGO_BIN_EXE_jitrec-test-player");

fn wait_until(what: &str, mut ok: impl FnMut() -> bool) {
    let started = Instant::now();
    while !ok() {
        assert!(started.elapsed() < LIMIT, "{what}: not within {LIMIT:?}");
        std::thread::sleep(Duration::from_millis(50));
    }
}

#[test]
fn hostile_video_costs_its_own_picture_and_replaced_bytes_are_never_decoded() {
    let tmp = tempfile::tempdir().unwrap();
    let root = tmp.path().join("bucket");
    let b = TestBucket::new(&root);
    // A signed-off session whose keyframe chunk is no video at all (what a root on the
    // endpoint can upload under a valid manifest), beside an ordinary one.
    let mut hostile_video = b"\0\0\0\x18ftypisom".to_vec();
    hostile_video.extend((0..200_000u32).map(|i| (i.wrapping_mul(2_654_435_761) >> 13) as u8));
    let hostile = fixtures::stored_session_with_video(
        fixtures::header(fixtures::session_id(1)),
        hostile_video,
    );
    let plain = fixtures::stored_session(fixtures::session_id(2), 3);
    // A keyframe chunk larger than any screen's (9 MiB): refused before it is read.
    let huge = fixtures::stored_session_with_video(
        fixtures::header(fixtures::session_id(3)),
        vec![0; 9 << 20],
    );
    for s in [&hostile, &plain, &huge] {
        for (k, v) in session_objects(s) {
            b.put(&k, &v).unwrap();
        }
    }
    let id = |s: &fixtures::StoredSession| SessionHeader::from_bytes(&s.header).unwrap().session_id;
    let src: Arc<dyn BucketReader> = Arc::new(DirBucket::new(&root));
    let index: Arc<dyn Index> =
        Arc::new(SqliteIndex::open(&tmp.path().join("index.sqlite3")).unwrap());
    let p = Player::start(src, index);
    let status = |s: SessionId| {
        let r = p.get(&format!("/api/sessions/{s}"));
        (r.status == 200).then(|| r.json().unwrap()["session"]["status"].clone())
    };
    for s in [id(&hostile), id(&plain), id(&huge)] {
        wait_until("the sessions indexed", || {
            status(s).is_some_and(|v| v == "complete")
        });
    }

    // The decoder fails on it, in its own process: that picture is refused, and the player
    // answers the next request as before.
    for _ in 0..2 {
        let r = p.get(&format!("/api/sessions/{}/thumbs/0.png", id(&hostile)));
        assert_eq!(r.status, 502, "{}", r.text());
        assert!(r.text().contains("thumbnail process"), "{}", r.text());
    }
    assert_eq!(p.get("/api/status").status, 200);
    let r = p.get(&format!("/api/sessions/{}/thumbs/0.png", id(&huge)));
    assert_eq!(r.status, 502, "{}", r.text());
    assert!(r.text().contains("larger than"), "{}", r.text());
    assert_eq!(
        status(id(&hostile)).unwrap(),
        "complete",
        "a picture that cannot be made says nothing against the recording"
    );
    // Only keyframe chunks have pictures (fixture chunk 1 does not start with one).
    let r = p.get(&format!("/api/sessions/{}/thumbs/1.png", id(&plain)));
    assert_eq!(r.status, 404, "{}", r.text());

    // Bytes replaced after the player witnessed them are refused before any decoding.
    let key = ObjectKey::ChunkVideo(id(&plain).into(), 0);
    let path = root.join(key.to_string());
    let size = std::fs::metadata(&path).unwrap().len() as usize;
    std::fs::write(&path, vec![b'X'; size]).unwrap();
    let r = p.get(&format!("/api/sessions/{}/thumbs/0.png", id(&plain)));
    assert_eq!(r.status, 409, "{}", r.text());
    wait_until("the session marked tampered", || {
        status(id(&plain)).is_some_and(|v| v == "tampered")
    });
    assert_eq!(status(id(&hostile)).unwrap(), "complete");
}

#[test]
fn the_decoder_runs_under_its_limits() {
    let tmp = tempfile::tempdir().unwrap();
    // A FIFO nobody writes: the child confines itself first, then blocks opening it, which
    // leaves time to read its limits.
    let fifo = tmp.path().join("segment.mp4");
    rustix::fs::mkfifoat(
        rustix::fs::CWD,
        &fifo,
        rustix::fs::Mode::from_raw_mode(0o600),
    )
    .unwrap();
    let mut child = std::process::Command::new(PLAYER)
        .arg("thumbnail")
        .arg(&fifo)
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let proc_dir = std::path::PathBuf::from(format!("/proc/{}", child.id()));
    let limit = |name: &str| -> Option<String> {
        let limits = std::fs::read_to_string(proc_dir.join("limits")).ok()?;
        let line = limits.lines().find(|l| l.starts_with(name))?;
        Some(
            line[name.len()..]
                .split_whitespace()
                .take(2)
                .collect::<Vec<_>>()
                .join(" "),
        )
    };
    wait_until("the child confined", || {
        limit("Max file size").as_deref() == Some("0 0")
    });
    assert_eq!(
        limit("Max address space").as_deref(),
        Some("1073741824 1073741824")
    );
    assert_eq!(limit("Max cpu time").as_deref(), Some("3 3"));
    assert_eq!(limit("Max processes").as_deref(), Some("0 0"));
    assert_eq!(limit("Max open files").as_deref(), Some("32 32"));
    assert_eq!(limit("Max core file size").as_deref(), Some("0 0"));
    let status = std::fs::read_to_string(proc_dir.join("status")).unwrap();
    assert!(
        status
            .lines()
            .any(|l| l.split_whitespace().eq(["NoNewPrivs:", "1"])),
        "{status}"
    );
    child.kill().unwrap();
    child.wait().unwrap();
}
