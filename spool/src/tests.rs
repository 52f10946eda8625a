//! Behavioural tests of the spool through its public API, on a real temporary directory.

use std::fs;

use jitrec_format::fixtures::{self, session_id};
use jitrec_format::{
    EndReason, FORMAT_V1, MediaTime, SessionClose, SessionId, Sha256Digest, encode_events,
};

use crate::*;

fn open(dir: &std::path::Path) -> (SpoolWriter, SpoolReader) {
    let (w, _) = SpoolWriter::open(dir, SpoolConfig::default()).unwrap();
    let r = SpoolReader::open(dir, SpoolConfig::default()).unwrap();
    (w, r)
}

/// Commits chunk `seq` of fixture content and returns its (video, events).
fn commit_chunk(w: &mut SessionWriter, video_len: usize) -> (Vec<u8>, Vec<u8>) {
    let seq = w.next_seq();
    let video: Vec<u8> = (0..video_len)
        .map(|i| (i as u64 * 31 + seq) as u8)
        .collect();
    let ev = fixtures::events(seq);
    let events = encode_events(&ev).unwrap();
    let m = fixtures::manifest(
        w.session_id(),
        seq,
        w.head(),
        &video,
        &events,
        ev.len() as u32,
    );
    w.commit_chunk(&m, &video, &events).unwrap();
    (video, events)
}

fn close_record(w: &SessionWriter, reason: EndReason) -> SessionClose {
    SessionClose {
        version: FORMAT_V1,
        session_id: w.session_id(),
        end_reason: reason,
        ended_at: fixtures::t0(),
        closed_at: fixtures::t0(),
        chunk_count: w.next_seq(),
        media_end_us: w.last_chunk().map_or(MediaTime::ZERO, |m| m.media_end_us),
        prev: w.head(),
        note: None,
        stopped_by: None,
    }
}

fn start(w: &SpoolWriter, n: u64) -> SessionWriter {
    let mut s = w.create_session(&fixtures::header(session_id(n))).unwrap();
    s.commit_init(0, &fixtures::init_bytes(0)).unwrap();
    s
}

#[test]
fn lifecycle_commit_read_ack_removes_session() {
    let tmp = tempfile::tempdir().unwrap();
    let (w, r) = open(tmp.path());
    let mut s = start(&w, 1);
    let sid = s.session_id();
    let payloads: Vec<_> = (0..3).map(|_| commit_chunk(&mut s, 1000)).collect();
    let close = close_record(&s, EndReason::JitEnded);
    s.close(&close).unwrap();

    let pending = r.pending(sid).unwrap();
    let names: Vec<_> = pending.iter().map(|e| e.name).collect();
    assert_eq!(
        names,
        vec![
            EntryName::Header,
            EntryName::Init(0),
            EntryName::Chunk(0),
            EntryName::Chunk(1),
            EntryName::Chunk(2),
            EntryName::Close
        ]
    );
    for e in &pending {
        match (r.read(e).unwrap(), e.name) {
            (
                Entry::Chunk {
                    video,
                    events,
                    manifest,
                    ..
                },
                EntryName::Chunk(n),
            ) => {
                assert_eq!(manifest.seq, n);
                assert_eq!((video, events), payloads[n as usize]);
            }
            (Entry::Init { bytes, .. }, _) => assert_eq!(bytes, fixtures::init_bytes(0)),
            (Entry::Close { close: c, .. }, _) => assert_eq!(c, close),
            (Entry::Header { header, .. }, _) => assert_eq!(header.session_id, sid),
            (other, name) => panic!("{name:?} read as {other:?}"),
        }
    }
    // The close record cannot overtake the chunks.
    assert!(matches!(
        r.ack(pending.last().unwrap()),
        Err(SpoolError::AckOrder { pending: 5, .. })
    ));
    for e in &pending {
        r.ack(e).unwrap();
        // Acknowledging twice is harmless.
        r.ack(e).unwrap();
    }
    assert!(r.sessions().unwrap().is_empty());
    assert!(!tmp.path().join("sessions").join(sid.to_string()).exists());
    assert_eq!(r.backlog().unwrap().entries, 0);
}

#[test]
fn newest_chunk_is_retained_as_chain_head_until_superseded() {
    let tmp = tempfile::tempdir().unwrap();
    let (w, r) = open(tmp.path());
    let mut s = start(&w, 2);
    let sid = s.session_id();
    commit_chunk(&mut s, 100);
    commit_chunk(&mut s, 100);
    let head = s.head();
    drop(s);
    for e in r.pending(sid).unwrap() {
        r.ack(&e).unwrap();
    }
    assert!(r.pending(sid).unwrap().is_empty());
    let files: Vec<String> = fs::read_dir(tmp.path().join("sessions").join(sid.to_string()))
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .collect::<std::collections::BTreeSet<_>>()
        .into_iter()
        .collect();
    assert_eq!(files, vec!["chunk-0000000001.sent", "session.sent"]);

    // A restarted recorder can still close the session with the right link.
    drop(w);
    let (w, rec) = SpoolWriter::open(tmp.path(), SpoolConfig::default()).unwrap();
    assert_eq!(rec.open_sessions, vec![sid]);
    let resumed = w.resume_session(sid).unwrap();
    assert!(resumed.is_resumed());
    assert_eq!(resumed.head(), head);
    assert_eq!(resumed.next_seq(), 2);
    let close = close_record(&resumed, EndReason::Interrupted);
    resumed.close(&close).unwrap();
    for e in r.pending(sid).unwrap() {
        r.ack(&e).unwrap();
    }
    assert!(r.sessions().unwrap().is_empty());
}

#[test]
fn bad_commits_are_refused_and_write_nothing() {
    let tmp = tempfile::tempdir().unwrap();
    let (w, r) = open(tmp.path());
    let mut s = start(&w, 3);
    let sid = s.session_id();
    commit_chunk(&mut s, 10);
    let video = b"video".to_vec();
    let events = encode_events(&[]).unwrap();
    let good = fixtures::manifest(sid, 1, s.head(), &video, &events, 0);

    let mut wrong_seq = good.clone();
    wrong_seq.seq = 2;
    let mut wrong_prev = good.clone();
    wrong_prev.prev = Sha256Digest::of(b"elsewhere");
    let mut unknown_init = good.clone();
    unknown_init.init.id = 1;
    let mut reversed = good.clone();
    reversed.media_start_us = MediaTime::from_micros(1);
    let mut other_session = good.clone();
    other_session.session_id = session_id(99);
    for (name, m, v) in [
        ("seq", &wrong_seq, &video[..]),
        ("prev", &wrong_prev, &video[..]),
        ("init", &unknown_init, &video[..]),
        ("time", &reversed, &video[..]),
        ("session", &other_session, &video[..]),
        ("payload", &good, &b"videO"[..]),
    ] {
        let err = s.commit_chunk(m, v, &events).expect_err(name);
        assert!(
            matches!(err, SpoolError::InvalidCommit { .. }),
            "{name}: {err}"
        );
    }
    assert!(s.commit_init(5, b"x").is_err());
    assert_eq!(
        r.pending(sid).unwrap().len(),
        3,
        "header, init, chunk 0 only"
    );
    s.commit_chunk(&good, &video, &events).unwrap();
    let mut bad_close = close_record(&s, EndReason::JitEnded);
    bad_close.chunk_count = 1;
    // While a writer holds the session, resuming it from the same process is refused.
    assert!(matches!(
        w.resume_session(sid),
        Err(SpoolError::InvalidCommit { .. })
    ));
    let err = s.close(&bad_close).unwrap_err();
    assert!(matches!(err, SpoolError::InvalidCommit { .. }), "{err}");
    assert!(matches!(
        w.create_session(&fixtures::header(sid)),
        Err(SpoolError::SessionExists(_))
    ));
}

#[test]
fn roles_are_exclusive_and_foreign_directories_refused() {
    let tmp = tempfile::tempdir().unwrap();
    let (w, r) = open(tmp.path());
    assert!(matches!(
        SpoolWriter::open(tmp.path(), SpoolConfig::default()),
        Err(SpoolError::Locked { role: "writer", .. })
    ));
    assert!(matches!(
        SpoolReader::open(tmp.path(), SpoolConfig::default()),
        Err(SpoolError::Locked { role: "reader", .. })
    ));
    drop((w, r));
    SpoolWriter::open(tmp.path(), SpoolConfig::default()).unwrap();

    let foreign = tempfile::tempdir().unwrap();
    fs::write(foreign.path().join("thesis.odt"), b"precious").unwrap();
    assert!(matches!(
        SpoolWriter::open(foreign.path(), SpoolConfig::default()),
        Err(SpoolError::NotASpool { .. })
    ));
    assert!(foreign.path().join("thesis.odt").exists());

    let future = tempfile::tempdir().unwrap();
    fs::write(future.path().join("spool.version"), "jitrec-spool 9\n").unwrap();
    assert!(matches!(
        SpoolReader::open(future.path(), SpoolConfig::default()),
        Err(SpoolError::UnsupportedVersion { .. })
    ));
}

/// A process that reopens its spool while another of its threads spawns children must get the
/// lock back: each child shares the flock's file description from fork until exec. (Unix only:
/// Windows has no fork, and its children do not inherit the lock.)
#[cfg(unix)]
#[test]
fn reopening_while_the_process_spawns_children_is_not_refused() {
    let tmp = tempfile::tempdir().unwrap();
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let spawner = {
        let stop = stop.clone();
        std::thread::spawn(move || {
            let mut spawned = 0u32;
            while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                std::process::Command::new("true").status().unwrap();
                spawned += 1;
            }
            spawned
        })
    };
    for _ in 0..300 {
        let (w, _) = SpoolWriter::open(tmp.path(), SpoolConfig::default()).unwrap();
        drop(w);
    }
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    assert!(
        spawner.join().unwrap() > 0,
        "no child was spawned during the reopens"
    );
}

#[test]
fn full_spool_refuses_chunks_but_can_still_close_and_recovers_space() {
    let tmp = tempfile::tempdir().unwrap();
    let config = SpoolConfig { max_bytes: 20_000 };
    let (w, _) = SpoolWriter::open(tmp.path(), config).unwrap();
    let r = SpoolReader::open(tmp.path(), config).unwrap();
    let mut s = start(&w, 4);
    let sid = s.session_id();
    commit_chunk(&mut s, 8_000);
    commit_chunk(&mut s, 8_000);
    let video = vec![7u8; 8_000];
    let events = encode_events(&[]).unwrap();
    let m = fixtures::manifest(sid, 2, s.head(), &video, &events, 0);
    let err = s.commit_chunk(&m, &video, &events).unwrap_err();
    assert!(
        matches!(err, SpoolError::Full { limit: 20_000, .. }),
        "{err}"
    );
    assert!(w.usage().unwrap() <= 20_000);
    assert_eq!(
        s.next_seq(),
        2,
        "a refused commit does not advance the session"
    );

    // The uploader frees space; the same commit now fits.
    for e in r.pending(sid).unwrap().into_iter().take(3) {
        r.ack(&e).unwrap();
    }
    s.commit_chunk(&m, &video, &events).unwrap();

    // Fill it again; the close record still fits in the reserve.
    let full = {
        let v = vec![1u8; 8_000];
        let m = fixtures::manifest(sid, 3, s.head(), &v, &events, 0);
        s.commit_chunk(&m, &v, &events)
    };
    assert!(matches!(full, Err(SpoolError::Full { .. })));
    let close = close_record(&s, EndReason::JitEnded);
    s.close(&close).unwrap();
}

/// A commit the disk fails at any step (as ENOSPC does: the write, the fsync, the rename, even
/// the directory fsync) leaves no temp file and no entry, keeps the chain head and sequence
/// number, counts no bytes, and the writer commits the same chunk once the disk allows.
#[test]
fn a_commit_that_fails_half_way_leaves_the_session_writer_usable() {
    use crate::durable::{Step, fail_at};
    let tmp = tempfile::tempdir().unwrap();
    let (w, r) = open(tmp.path());
    let mut s = start(&w, 6);
    let sid = s.session_id();
    commit_chunk(&mut s, 500);
    let video = vec![9u8; 700];
    let events = encode_events(&fixtures::events(1)).unwrap();
    for step in [
        Step::Create,
        Step::Write,
        Step::Fsync,
        Step::Rename,
        Step::SyncDir,
    ] {
        let (head, seq, used) = (s.head(), s.next_seq(), w.usage().unwrap());
        let m = fixtures::manifest(sid, seq, head, &video, &events, 10);
        fail_at(step);
        let err = s.commit_chunk(&m, &video, &events).unwrap_err();
        assert!(err.is_out_of_space(), "{step:?}: {err}");
        assert_eq!((s.head(), s.next_seq()), (head, seq), "{step:?}");
        assert_eq!(w.usage().unwrap(), used, "{step:?}: bytes left behind");
        assert_eq!(
            fs::read_dir(tmp.path().join("tmp")).unwrap().count(),
            0,
            "{step:?}: temp file left behind"
        );
        let names: Vec<_> = r
            .pending(sid)
            .unwrap()
            .into_iter()
            .map(|e| e.name)
            .collect();
        assert!(
            !names.contains(&EntryName::Chunk(seq)),
            "{step:?}: {names:?}"
        );
    }
    // The disk has room again: the same chunk commits, and the session reads back whole.
    let m = fixtures::manifest(sid, 1, s.head(), &video, &events, 10);
    s.commit_chunk(&m, &video, &events).unwrap();
    let close = close_record(&s, EndReason::JitEnded);
    s.close(&close).unwrap();
    let pending = r.pending(sid).unwrap();
    assert_eq!(pending.len(), 5, "{pending:?}");
    for e in &pending {
        r.read(e).unwrap();
    }
}

#[test]
fn corrupt_entries_are_quarantined_without_blocking_others() {
    let tmp = tempfile::tempdir().unwrap();
    let (w, r) = open(tmp.path());
    let mut s = start(&w, 5);
    let sid = s.session_id();
    for _ in 0..3 {
        commit_chunk(&mut s, 500);
    }
    let path = tmp
        .path()
        .join("sessions")
        .join(sid.to_string())
        .join("chunk-0000000001.jrs");
    let mut bytes = fs::read(&path).unwrap();
    let mid = bytes.len() / 2;
    bytes[mid] ^= 0xff;
    fs::write(&path, bytes).unwrap();

    let mut ok = 0;
    for e in r.pending(sid).unwrap() {
        match r.read(&e) {
            Ok(_) => {
                ok += 1;
                r.ack(&e).unwrap();
            }
            Err(SpoolError::Quarantined { entry, reason }) => {
                assert_eq!(entry.name, EntryName::Chunk(1));
                assert!(reason.contains("checksum"), "{reason}");
            }
            Err(other) => panic!("{other}"),
        }
    }
    assert_eq!(ok, 4);
    let q = tmp.path().join("quarantine").join(sid.to_string());
    assert!(q.join("chunk-0000000001.jrs").exists());
    let reason = fs::read_to_string(q.join("chunk-0000000001.jrs.reason")).unwrap();
    assert!(reason.contains("checksum"));
    assert_eq!(r.backlog().unwrap().quarantined, 1);
    assert!(r.pending(sid).unwrap().is_empty());
}

#[test]
fn startup_removes_temp_files_and_empty_sessions() {
    let tmp = tempfile::tempdir().unwrap();
    let (w, _) = SpoolWriter::open(tmp.path(), SpoolConfig::default()).unwrap();
    drop(w);
    fs::write(
        tmp.path()
            .join("tmp")
            .join("123-0-chunk-0000000004.jrs.tmp"),
        b"half",
    )
    .unwrap();
    fs::write(tmp.path().join("tmp").join("123-1-session.jrs.tmp"), b"").unwrap();
    let empty: SessionId = session_id(6);
    fs::create_dir(tmp.path().join("sessions").join(empty.to_string())).unwrap();
    let (_w, rec) = SpoolWriter::open(tmp.path(), SpoolConfig::default()).unwrap();
    assert_eq!(rec.temp_files_removed, 2);
    assert_eq!(rec.empty_sessions_removed, 1);
    assert!(rec.open_sessions.is_empty());
    assert_eq!(fs::read_dir(tmp.path().join("tmp")).unwrap().count(), 0);
}

#[test]
fn a_session_whose_close_ack_was_interrupted_is_not_reopened() {
    let tmp = tempfile::tempdir().unwrap();
    let (w, r) = open(tmp.path());
    let mut s = start(&w, 7);
    let sid = s.session_id();
    commit_chunk(&mut s, 10);
    let close = close_record(&s, EndReason::JitEnded);
    s.close(&close).unwrap();
    // Simulate a crash inside ack_close after the other files were removed.
    let dir = tmp.path().join("sessions").join(sid.to_string());
    for f in ["session.jrs", "init-0000000000.jrs", "chunk-0000000000.jrs"] {
        fs::remove_file(dir.join(f)).unwrap();
    }
    drop((w, r));
    let (w, rec) = SpoolWriter::open(tmp.path(), SpoolConfig::default()).unwrap();
    assert!(rec.open_sessions.is_empty());
    assert!(w.open_sessions().unwrap().is_empty());
    let r = SpoolReader::open(tmp.path(), SpoolConfig::default()).unwrap();
    let pending = r.pending(sid).unwrap();
    assert_eq!(pending.len(), 1);
    r.ack(&pending[0]).unwrap();
    assert!(r.sessions().unwrap().is_empty());
}
