//! The spool under SIGKILL: a writer process (recorder + uploader stand-in) is killed at random
//! points, again and again. After every kill, everything the process reported as committed must
//! still be in the spool (read back verified and byte-identical) or already in the bucket; no
//! partial entry may ever be listed; and the next start must recover. At the end every session
//! must be in the bucket with an intact hash chain, closed as interrupted where a kill cut it.
//!
//! Reproduce a failure with the seed it prints: `JITREC_CRASH_SEED=<n> cargo test -p
//! jitrec-tests spool_crash`. `JITREC_CRASH_KILLS` sets the number of kills (default 60).

use std::collections::{BTreeMap, BTreeSet};
use std::io::Read;
use std::os::unix::process::ExitStatusExt;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use jitrec_format::{EndReason, ObjectKey, SessionId, Sha256Digest};
use jitrec_spool::{Entry, SpoolConfig, SpoolError, SpoolReader};
use jitrec_tests::child::Reaped;
use jitrec_tests::{
    CHUNKS_PER_SESSION, CRASH_MAX_VIDEO, TestBucket, WriterLine, count_files, payload,
};
use rand::{Rng, SeedableRng, rngs::StdRng};

const WRITER: &str = env!("CARGO_BIN_EXE_jitrec-test-spool-writer");

/// Generous: the finishing run uploads at most a few sessions, but CI machines are loaded.
const FINISH_LIMIT: Duration = Duration::from_secs(120);

fn spawn(mode: &str, spool: &Path, bucket: &Path) -> Reaped {
    Command::new(WRITER)
        .args([mode, spool.to_str().unwrap(), bucket.to_str().unwrap()])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("start the spool writer")
        .into()
}

fn output(child: &mut Child) -> (Vec<WriterLine>, String) {
    let mut out = String::new();
    child
        .stdout
        .take()
        .unwrap()
        .read_to_string(&mut out)
        .unwrap();
    let mut err = String::new();
    child
        .stderr
        .take()
        .unwrap()
        .read_to_string(&mut err)
        .unwrap();
    // A kill can cut the last line mid-write; only complete lines were reported.
    let complete = match out.rfind('\n') {
        Some(i) => &out[..=i],
        None => "",
    };
    let lines = complete
        .lines()
        .map(|l| WriterLine::parse(l).unwrap())
        .collect();
    (lines, err)
}

/// Every pending entry of the spool reads back verified; returns the committed chunks found.
fn check_spool(spool: &Path) -> BTreeMap<(SessionId, u64), Sha256Digest> {
    let reader = SpoolReader::open(spool, SpoolConfig::default()).unwrap();
    let mut chunks = BTreeMap::new();
    for s in reader.sessions().unwrap() {
        for e in reader.pending(s).unwrap() {
            match reader.read(&e) {
                Ok(Entry::Chunk {
                    manifest_bytes,
                    video,
                    manifest,
                    ..
                }) => {
                    assert_eq!(
                        video,
                        payload(s, manifest.seq, 0, CRASH_MAX_VIDEO),
                        "{e}: video is not the bytes that were written"
                    );
                    chunks.insert((s, manifest.seq), Sha256Digest::of(&manifest_bytes));
                }
                Ok(_) => {}
                Err(SpoolError::Quarantined { entry, reason }) => {
                    panic!("a kill left a corrupt entry listed as committed: {entry}: {reason}")
                }
                Err(other) => panic!("{e}: {other}"),
            }
        }
    }
    assert!(
        reader.pending(SessionId::new()).unwrap().is_empty(),
        "an unknown session lists nothing"
    );
    chunks
}

fn manifest_digest(bucket: &TestBucket, s: SessionId, seq: u64) -> Option<Sha256Digest> {
    bucket
        .get(&ObjectKey::ChunkManifest(s.into(), seq))
        .unwrap()
        .map(|b| Sha256Digest::of(&b))
}

#[test]
fn sigkill_at_random_points_loses_no_committed_chunk() {
    let seed: u64 = std::env::var("JITREC_CRASH_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(rand::random);
    let kills: usize = std::env::var("JITREC_CRASH_KILLS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(60);
    eprintln!("spool crash test: JITREC_CRASH_SEED={seed} JITREC_CRASH_KILLS={kills}");
    let mut rng = StdRng::seed_from_u64(seed);
    let tmp = tempfile::tempdir().unwrap();
    let spool = tmp.path().join("spool");
    let bucket_dir = tmp.path().join("bucket");
    let bucket = TestBucket::new(&bucket_dir);

    let mut committed: BTreeMap<(SessionId, u64), Sha256Digest> = BTreeMap::new();
    let mut closed_normally: BTreeMap<SessionId, u64> = BTreeMap::new();
    let mut temp_files_recovered = 0;
    for round in 0..kills {
        let leftover_temps = count_files(&spool.join("tmp"));
        let mut child = spawn("run", &spool, &bucket_dir);
        // Mostly mid-stream, sometimes during start-up and recovery.
        let delay = if rng.random_bool(0.15) {
            rng.random_range(0..15)
        } else {
            rng.random_range(20..400)
        };
        std::thread::sleep(Duration::from_millis(delay));
        child.kill().unwrap();
        let status = child.wait().unwrap();
        let (lines, stderr) = output(&mut child);
        assert_eq!(
            status.signal(),
            Some(9),
            "round {round}: the writer exited on its own ({status}) instead of being killed: {stderr}"
        );
        for line in lines {
            match line {
                WriterLine::Recovered { temp_removed, .. } => {
                    assert_eq!(
                        temp_removed, leftover_temps,
                        "round {round}: recovery must remove exactly the temp files the kill left"
                    );
                    temp_files_recovered += temp_removed;
                }
                WriterLine::Committed {
                    session,
                    seq,
                    digest,
                } => {
                    committed.insert((session, seq), digest);
                }
                WriterLine::Closed { session, chunks } => {
                    closed_normally.insert(session, chunks);
                }
            }
        }

        // Durability: everything reported committed is in the spool or already in the bucket.
        let in_spool = check_spool(&spool);
        for (&(s, seq), &digest) in &committed {
            let found = in_spool
                .get(&(s, seq))
                .copied()
                .or_else(|| manifest_digest(&bucket, s, seq));
            assert_eq!(
                found,
                Some(digest),
                "round {round}: committed chunk {seq} of {s} is neither in the spool nor in the bucket"
            );
        }
    }

    let mut finish = spawn("finish", &spool, &bucket_dir);
    let start = Instant::now();
    let status = loop {
        if let Some(st) = finish.try_wait().unwrap() {
            break st;
        }
        assert!(start.elapsed() < FINISH_LIMIT, "the finishing run hangs");
        std::thread::sleep(Duration::from_millis(50));
    };
    let (_, stderr) = output(&mut finish);
    assert!(status.success(), "finishing run failed: {stderr}");

    // Everything was uploaded and the spool is empty again.
    let reader = SpoolReader::open(&spool, SpoolConfig::default()).unwrap();
    assert_eq!(reader.sessions().unwrap(), Vec::<SessionId>::new());
    assert_eq!(count_files(&spool.join("tmp")), 0);
    assert_eq!(count_files(&spool.join("quarantine")), 0);

    // Every session in the bucket is complete and intact; kills show as interrupted sessions.
    let sessions = bucket.sessions().unwrap();
    let mut interrupted = 0;
    for &s in &sessions {
        let close = bucket
            .verify_intact(s)
            .unwrap_or_else(|e| panic!("session {s}: {e:#}"));
        for seq in 0..close.chunk_count {
            let video = bucket.get(&ObjectKey::ChunkVideo(s.into(), seq)).unwrap();
            assert_eq!(
                video,
                Some(payload(s, seq, 0, CRASH_MAX_VIDEO)),
                "{s} chunk {seq}"
            );
        }
        match closed_normally.get(&s) {
            Some(&n) => {
                assert_eq!(close.end_reason, EndReason::JitEnded, "{s}");
                assert_eq!(close.chunk_count, n, "{s}");
            }
            // No "closed" line: killed mid-session (interrupted), or between a normal close
            // returning and its line being printed (then the session is whole).
            None => match close.end_reason {
                EndReason::Interrupted => interrupted += 1,
                EndReason::JitEnded => assert_eq!(close.chunk_count, CHUNKS_PER_SESSION, "{s}"),
                other => panic!("session {s} ended as {other:?}"),
            },
        }
    }
    let known: BTreeSet<SessionId> = sessions.iter().copied().collect();
    for (&(s, seq), &digest) in &committed {
        assert!(known.contains(&s), "session {s} never reached the bucket");
        assert_eq!(
            manifest_digest(&bucket, s, seq),
            Some(digest),
            "{s} chunk {seq}"
        );
    }
    for s in closed_normally.keys() {
        assert!(
            known.contains(s),
            "closed session {s} never reached the bucket"
        );
    }
    eprintln!(
        "spool crash test: {kills} kills, {} sessions ({interrupted} interrupted), {} chunks committed, {temp_files_recovered} temp files recovered",
        sessions.len(),
        committed.len()
    );
    // The test must have exercised what it claims to: kills inside sessions and real traffic.
    assert!(
        interrupted >= kills / 3,
        "only {interrupted} of {kills} kills landed inside a session"
    );
    assert!(
        committed.len() >= kills,
        "only {} chunks committed",
        committed.len()
    );
}
