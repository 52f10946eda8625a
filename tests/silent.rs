//! Silence is flagged in seconds (issue 18), through the real `jitrec-player serve` on SQLite and
//! PostgreSQL: sessions written into a directory bucket as an uploader would, one of which stops
//! (its recorder killed after chunk 1, 2 s chunks), are read back through the HTTP API. The
//! stopped one is `silent` within 15 s of its last object's arrival, with what arrived last;
//! its next chunk makes it `recording` again; a closed one is never silent; headers claiming a
//! chunk length of 1 ms or `u32::MAX` ms are bounded (silent after 5.75 s, and not at the 2 s
//! rate); retention, with a 0-day policy, deletes the closed session and leaves the silent ones,
//! and refuses to acknowledge a silence.

use std::collections::BTreeMap;
use std::process::Stdio;
use std::time::{Duration, Instant};

use jitrec_format::{ObjectKey, SessionId, fixtures};
use jitrec_tests::{TestBucket, session_objects, session_objects_at};

use crate::door::{ADMIN, Client, add_user, index_spec, player, serve};
use crate::retention::ok;

const PLAYER: &str = env!("CARGO_BIN_EXE_jitrec-test-player");
/// How long the tests wait for anything at all (a loaded CI machine), never a synchronisation.
const LIMIT: Duration = Duration::from_secs(60);
/// What the issue asks: silent within this long of the last object's arrival (2 s chunks).
const FLAGGED_WITHIN: Duration = Duration::from_secs(15);

/// A 6-chunk session started just now (so the stale timeout, judged on first sight by the
/// recording's own times, does not apply), whose header claims `chunk_ms`.
fn session_now(n: u64, chunk_ms: u32) -> (SessionId, fixtures::StoredSession) {
    let now = chrono::Utc::now();
    let mut random = [0u8; 10];
    random[..8].copy_from_slice(&(0x5e1e_0000 + n).to_be_bytes());
    let id = SessionId::from_parts(now.timestamp_millis() as u64, random);
    let mut h = fixtures::header(id);
    h.started_at = now - chrono::Duration::seconds(4);
    h.codec.chunk_target_ms = chunk_ms;
    (id, fixtures::stored_session_with(h, 6, fixtures::events))
}

/// Puts the header and init segment, then chunks `chunks` (payloads first, manifest last, as the
/// uploader orders them).
fn put_open(
    b: &TestBucket,
    id: SessionId,
    s: &fixtures::StoredSession,
    chunks: std::ops::Range<u64>,
) {
    // Keyed by the id, not by the header (which may be one the format refuses).
    let objects = session_objects_at(s, id.into());
    let wanted = |k: &ObjectKey| match k {
        ObjectKey::SessionHeader(_) | ObjectKey::Init(..) => chunks.start == 0,
        ObjectKey::ChunkVideo(_, n)
        | ObjectKey::ChunkEvents(_, n)
        | ObjectKey::ChunkManifest(_, n) => chunks.contains(n),
        _ => false,
    };
    for (k, v) in objects.iter().filter(|(k, _)| wanted(k)) {
        b.put(k, v).unwrap();
    }
}

/// Every session's status and row, from one listing.
fn statuses(c: &Client) -> BTreeMap<String, serde_json::Value> {
    let r = c.get("/api/sessions?limit=200");
    assert_eq!(r.status, 200, "{}", r.text());
    r.json().unwrap()["sessions"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| (s["id"].as_str().unwrap().to_owned(), s.clone()))
        .collect()
}

fn status_of(rows: &BTreeMap<String, serde_json::Value>, id: SessionId) -> Option<&str> {
    rows.get(&id.to_string()).and_then(|s| s["status"].as_str())
}

/// The `silence` of a session's `silent` problem.
fn silence_of(row: &serde_json::Value) -> Option<serde_json::Value> {
    row["problems"]
        .as_array()?
        .iter()
        .find(|p| p["kind"] == "silent")
        .map(|p| p["silence"].clone())
}

fn silence_is_flagged_in_seconds(backend: &str) {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("bucket");
    std::fs::create_dir_all(&dir).unwrap();
    let bucket = TestBucket::new(&dir);
    let index = index_spec(backend, tmp.path());
    add_user(&index, ADMIN, "admin");
    let (child, addr) = serve(&dir, &index);
    let admin = Client::sign_in(addr, ADMIN);

    // closed: all of it, close record included. tiny: a header claiming 1 ms chunks. huge: one
    // claiming u32::MAX ms. killed: 2 s chunks, the recorder killed after chunk 1.
    let (closed, closed_s) = session_now(1, 2_000);
    let (tiny, tiny_s) = session_now(2, 1);
    let (huge, huge_s) = session_now(3, u32::MAX);
    let (killed, killed_s) = session_now(4, 2_000);
    for (k, v) in session_objects(&closed_s) {
        bucket.put(&k, &v).unwrap();
    }
    put_open(&bucket, tiny, &tiny_s, 0..1);
    put_open(&bucket, huge, &huge_s, 0..1);
    put_open(&bucket, killed, &killed_s, 0..2);
    // zero: a header claiming 0 ms, which the format refuses (so the session is tampered; its
    // chunks are still read, judged at the longest chunk length, never silent at once).
    let (zero, mut zero_s) = session_now(6, 2_000);
    let mut h = jitrec_format::SessionHeader::from_bytes(&zero_s.header).unwrap();
    h.codec.chunk_target_ms = 0;
    zero_s.header = serde_json::to_vec(&h).unwrap();
    put_open(&bucket, zero, &zero_s, 0..2);
    let arrived = Instant::now();

    // Polled, never slept on: each listing shows every session's status at that moment.
    let mut tiny_silent = None;
    let mut seen_recording = false;
    let (rows, killed_at) = loop {
        let rows = statuses(&admin);
        let at = arrived.elapsed();
        assert_ne!(status_of(&rows, closed), Some("silent"), "a closed session");
        assert_ne!(
            status_of(&rows, zero),
            Some("silent"),
            "0 ms chunks: silent at once"
        );
        assert_ne!(
            status_of(&rows, huge),
            Some("silent"),
            "u32::MAX ms chunks read as 60 s: not silent at {at:?}"
        );
        seen_recording |= status_of(&rows, killed) == Some("recording");
        if tiny_silent.is_none() && status_of(&rows, tiny) == Some("silent") {
            tiny_silent = Some(at);
        }
        if status_of(&rows, killed) == Some("silent") {
            break (rows, at);
        }
        assert!(at < LIMIT, "never silent: {rows:#?}");
        std::thread::sleep(Duration::from_millis(100));
    };
    let tiny_at = tiny_silent.expect("the 1 ms session is silent before the 2 s one");
    eprintln!(
        "{backend}: silent {:.1} s after the last object arrived (2 s chunks; 1 ms claimed: {:.1} s)",
        killed_at.as_secs_f64(),
        tiny_at.as_secs_f64()
    );
    assert!(seen_recording, "recording before it fell silent");
    assert!(
        killed_at <= FLAGGED_WITHIN,
        "silent only after {killed_at:?}"
    );
    // The rule, not a fluke: 3 × 2 s + 5 s after the player first saw chunk 1; a 1 ms claim
    // reads as 250 ms (3 × 0.25 s + 5 s), not as "at once".
    assert!(killed_at >= Duration::from_secs(10), "{killed_at:?}");
    assert!(tiny_at >= Duration::from_secs(5), "{tiny_at:?}");
    assert_eq!(status_of(&rows, closed), Some("complete"));
    assert_eq!(status_of(&rows, huge), Some("recording"));
    let zero_row = &rows[&zero.to_string()];
    assert_eq!(zero_row["status"], "tampered", "{zero_row:#}");
    assert!(
        zero_row.to_string().contains("chunk_target_ms` is 0"),
        "{zero_row:#}"
    );

    // What arrived last, on the player's clock, in the detail as in the list.
    let detail = admin.get(&format!("/api/sessions/{killed}"));
    assert_eq!(detail.status, 200);
    let detail = detail.json().unwrap();
    let s = silence_of(&detail["session"]).expect("the silent problem");
    assert_eq!(s, silence_of(&rows[&killed.to_string()]).unwrap());
    assert_eq!(s["chunk_ms"], 2_000);
    assert_eq!(s["silent_after_ms"], 11_000);
    assert_eq!(s["last_chunk"]["seq"], 1);
    assert_eq!(s["last_chunk"]["media_end_us"], 4_000_000);
    let chunk1 = &detail["chunks"][1];
    assert_eq!(s["last_chunk"]["utc_end"], chunk1["utc_end"]);
    let t = |v: &serde_json::Value| {
        chrono::DateTime::parse_from_rfc3339(v.as_str().unwrap())
            .unwrap()
            .with_timezone(&chrono::Utc)
    };
    let (last, since) = (t(&s["last_arrival"]), t(&s["since"]));
    assert_eq!(since - last, chrono::Duration::milliseconds(11_000));
    assert!(t(&s["last_chunk"]["arrived_at"]) <= last);
    let tiny_row = &rows[&tiny.to_string()];
    assert_eq!(silence_of(tiny_row).unwrap()["chunk_ms"], 250);
    assert_eq!(silence_of(tiny_row).unwrap()["silent_after_ms"], 5_750);

    // Filterable, like every status.
    let r = admin.get("/api/sessions?status=silent").json().unwrap();
    let mut listed: Vec<&str> = r["sessions"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| s["id"].as_str().unwrap())
        .collect();
    listed.sort_unstable();
    let mut want = vec![tiny.to_string(), killed.to_string()];
    want.sort_unstable();
    assert_eq!(listed, want);

    // Retention acts on none of it: a 0-day policy deletes the closed session, keeps the silent
    // ones whole, and a silence cannot be acknowledged away.
    ok(player(
        &["retention", "set", "--level", "global", "--keep-days", "0"],
        &index,
    ));
    let mut run = player(&["retention", "run"], &index);
    run.arg("--bucket-dir").arg(&dir);
    let run = ok(run);
    assert!(run.contains(&format!("deleted {closed}")), "{run}");
    for (id, s) in [(tiny, &tiny_s), (killed, &killed_s)] {
        assert!(!run.contains(&id.to_string()), "{run}");
        assert!(
            bucket.get(&ObjectKey::SessionHeader(id.into())).unwrap() == Some(s.header.clone())
        );
    }
    assert!(
        bucket
            .get(&ObjectKey::ChunkManifest(killed.into(), 1))
            .unwrap()
            .is_some()
    );
    let out = player(
        &[
            "retention",
            "ack",
            &killed.to_string(),
            "--status",
            "silent",
            "--note",
            "n",
            "--by",
            "x",
        ],
        &index,
    )
    .output()
    .unwrap();
    assert!(!out.status.success(), "a silence acknowledged");
    assert_eq!(status_of(&statuses(&admin), killed), Some("silent"));

    // The recorder comes back: the next chunk makes it recording, without the silent problem.
    put_open(&bucket, killed, &killed_s, 2..3);
    let back = Instant::now();
    loop {
        let rows = statuses(&admin);
        if status_of(&rows, killed) == Some("recording") {
            assert!(
                silence_of(&rows[&killed.to_string()]).is_none(),
                "{rows:#?}"
            );
            break;
        }
        assert!(back.elapsed() < LIMIT, "still {rows:#?}");
        std::thread::sleep(Duration::from_millis(100));
    }
    eprintln!(
        "{backend}: recording again {:.1} s after the next chunk arrived",
        back.elapsed().as_secs_f64()
    );
    drop(child);
}

#[test]
fn silence_is_flagged_in_seconds_on_sqlite() {
    silence_is_flagged_in_seconds("sqlite");
}

#[test]
fn silence_is_flagged_in_seconds_on_postgresql() {
    silence_is_flagged_in_seconds("postgresql");
}

/// `--silent-after-slack` is what it says: with no slack, 2 s chunks are silent 6 s after the
/// last arrival.
#[test]
fn the_slack_is_a_setting() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("bucket");
    std::fs::create_dir_all(&dir).unwrap();
    let bucket = TestBucket::new(&dir);
    let index = index_spec("sqlite", tmp.path());
    add_user(&index, ADMIN, "admin");
    let mut served = jitrec_tests::child::serve_http(
        |addr| {
            let mut c = std::process::Command::new(PLAYER);
            c.args([
                "serve",
                "--listen",
                &addr.to_string(),
                "--retention-every",
                "0",
            ])
            .args(["--silent-after-slack", "0", "--bucket-dir"])
            .arg(&dir)
            .args(["--index", &index])
            .env("RUST_LOG", "warn")
            .stdin(Stdio::null())
            .stdout(Stdio::null());
            c
        },
        LIMIT,
    );
    served.wait_ok("/login", LIMIT);
    let addr = served.addr;
    let admin = Client::sign_in(addr, ADMIN);
    let (id, s) = session_now(5, 2_000);
    put_open(&bucket, id, &s, 0..1);
    let arrived = Instant::now();
    let row = loop {
        let rows = statuses(&admin);
        if status_of(&rows, id) == Some("silent") {
            break rows[&id.to_string()].clone();
        }
        assert!(arrived.elapsed() < LIMIT, "never silent: {rows:#?}");
        std::thread::sleep(Duration::from_millis(100));
    };
    let at = arrived.elapsed();
    eprintln!(
        "no slack: silent {:.1} s after the last arrival",
        at.as_secs_f64()
    );
    assert_eq!(silence_of(&row).unwrap()["silent_after_ms"], 6_000);
    assert!(
        at >= Duration::from_secs(5) && at < Duration::from_secs(10),
        "{at:?}"
    );
}
