//! The indexer against a bucket an endpoint poisoned and an index that fails, on SQLite and on
//! a real PostgreSQL: a directory where a manifest belongs, a truncated manifest and (on
//! SeaweedFS) an object the store will not serve each stay their own session's problem, and a
//! session recorded after them is listed within seconds; a 1.6 MB command line is indexed,
//! capped, and found; an index write that fails (injected with a trigger) loses nothing: the
//! next pass writes the whole session.

use std::sync::Arc;
use std::time::{Duration, Instant};

use jitrec_bucket::{BucketReader, DirBucket, S3Bucket};
use jitrec_format::fixtures::{self, StoredSession};
use jitrec_format::{ObjectKey, SessionHeader, SessionId};
use jitrec_player::index::sqlite::SqliteIndex;
use jitrec_player::index::{EVENT_TEXT_MAX, Index, Query};
use jitrec_player::indexer::{Indexer, IndexerConfig};
use jitrec_tests::faultproxy::{Fault, FaultProxy, Plan};
use jitrec_tests::{TestBucket, http, postgres, seaweed, session_objects};

use crate::player::Player;

const LIMIT: Duration = Duration::from_secs(120);
/// How soon a session uploaded to an indexed bucket must be listed ("the usual second", with
/// room for a loaded 2-core machine).
const LISTED_WITHIN: Duration = Duration::from_secs(10);

fn session(n: u64) -> StoredSession {
    fixtures::stored_session(fixtures::session_id(n), 3)
}

fn id(s: &StoredSession) -> SessionId {
    SessionHeader::from_bytes(&s.header).unwrap().session_id
}

fn put(b: &TestBucket, s: &StoredSession) {
    for (k, v) in session_objects(s) {
        b.put(&k, &v).unwrap();
    }
}

fn sqlite(dir: &std::path::Path) -> Arc<dyn Index> {
    Arc::new(SqliteIndex::open(&dir.join("index.sqlite3")).unwrap())
}

fn pg() -> Arc<dyn Index> {
    Arc::from(
        jitrec_player::index::open(&postgres::new_database("jitrec_poison").unwrap()).unwrap(),
    )
}

/// Waits until the API lists `s` with `status`; returns how long that took.
fn wait_status(p: &Player, s: SessionId, status: &str) -> Duration {
    wait_status_in(p, s, &[status])
}

/// Waits until the API lists `s` with one of `statuses`; returns how long that took.
fn wait_status_in(p: &Player, s: SessionId, statuses: &[&str]) -> Duration {
    let started = Instant::now();
    loop {
        let r = p.get(&format!("/api/sessions/{s}"));
        if r.status == 200
            && statuses
                .iter()
                .any(|st| r.json().unwrap()["session"]["status"] == *st)
        {
            return started.elapsed();
        }
        assert!(
            started.elapsed() < LIMIT,
            "session {s} never {statuses:?}: {} {}",
            r.status,
            r.text()
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// A poisoned directory bucket: one session with a directory where chunk 1's manifest belongs,
/// one with chunk 0's manifest cut in half. Both are reported as their own problem; a session
/// uploaded afterwards is listed within seconds.
fn poisoned_objects_stay_their_sessions_problem(index: Arc<dyn Index>) {
    let tmp = tempfile::tempdir().unwrap();
    let root = tmp.path().join("bucket");
    let b = TestBucket::new(&root);
    let (dir_victim, cut_victim, before) = (session(1), session(2), session(3));
    for s in [&dir_victim, &cut_victim, &before] {
        put(&b, s);
    }
    let manifest =
        |s: &StoredSession, n| root.join(ObjectKey::ChunkManifest(id(s).into(), n).to_string());
    std::fs::remove_file(manifest(&dir_victim, 1)).unwrap();
    std::fs::create_dir(manifest(&dir_victim, 1)).unwrap();
    let (m0, _, _) = &cut_victim.chunks[0];
    std::fs::write(manifest(&cut_victim, 0), &m0[..m0.len() / 2]).unwrap();

    let src: Arc<dyn BucketReader> = Arc::new(DirBucket::new(&root));
    let p = Player::start(src, Arc::clone(&index));
    wait_status(&p, id(&before), "complete");
    for s in [&dir_victim, &cut_victim] {
        // A directory is not an object: the manifest is missing (a gap); half a manifest does
        // not parse (tampered).
        wait_status_in(&p, id(s), &["gap", "tampered"]);
        let d = p.get(&format!("/api/sessions/{}", id(s))).json().unwrap();
        assert!(
            !d["session"]["problems"].as_array().unwrap().is_empty(),
            "{d}"
        );
    }
    // Recorded after the poison: listed as soon as it is uploaded.
    let after = session(50);
    put(&b, &after);
    let took = wait_status(&p, id(&after), "complete");
    eprintln!("a session uploaded after the poisoned ones was listed in {took:?}");
    assert!(took < LISTED_WITHIN, "{took:?}");
}

#[test]
fn poisoned_objects_stay_their_sessions_problem_on_sqlite() {
    let tmp = tempfile::tempdir().unwrap();
    poisoned_objects_stay_their_sessions_problem(sqlite(tmp.path()));
}

#[test]
fn poisoned_objects_stay_their_sessions_problem_on_postgresql() {
    poisoned_objects_stay_their_sessions_problem(pg());
}

/// On SeaweedFS, through a proxy that answers every read of one object with a 500: the session
/// is marked (an `unindexed` problem naming the failure), and every other session, one uploaded
/// afterwards too, is listed as usual; once the store serves the object, the session completes.
async fn an_unreadable_object_stays_its_sessions_problem(index: Arc<dyn Index>) {
    let srv = seaweed::server();
    let bucket = seaweed::new_bucket("poison").await.unwrap();
    let direct = S3Bucket::new(
        seaweed::config(&srv.endpoint, &bucket),
        tokio::runtime::Handle::current(),
    );
    let upload = |s: StoredSession| {
        let direct = direct.clone();
        async move {
            for (k, v) in session_objects(&s) {
                use jitrec_bucket::BucketWriter;
                direct
                    .put(&k.to_string(), v.into(), k.content_type())
                    .await
                    .unwrap();
            }
        }
    };
    let (victim, bystander) = (session(1), session(2));
    upload(session(1)).await;
    upload(session(2)).await;
    let proxy = FaultProxy::start(srv.s3_addr, Plan::default())
        .await
        .unwrap();
    // Every GET of the victim's chunk 1 manifest fails (far more than the reader's retries).
    let key = ObjectKey::ChunkManifest(id(&victim).into(), 1).to_string();
    let pattern = format!("GET /{bucket}/{key}");
    proxy.script(&vec![(pattern.as_str(), Fault::ServerError); 100_000]);
    let reader = S3Bucket::new(
        seaweed::config(&proxy.endpoint(), &bucket),
        tokio::runtime::Handle::current(),
    );
    let src: Arc<dyn BucketReader> = Arc::new(reader);
    let p = tokio::task::block_in_place(|| Player::start(src, Arc::clone(&index)));
    tokio::task::block_in_place(|| wait_status(&p, id(&bystander), "complete"));
    // The victim is listed with its failure in words, and not as complete.
    let started = Instant::now();
    let detail = loop {
        let r = tokio::task::block_in_place(|| p.get(&format!("/api/sessions/{}", id(&victim))));
        if r.status == 200 {
            let d = r.json().unwrap();
            if d["session"]["problems"]
                .as_array()
                .unwrap()
                .iter()
                .any(|p| p["kind"] == "unindexed")
            {
                break d;
            }
        }
        assert!(
            started.elapsed() < LIMIT,
            "the victim was never marked: {}",
            r.text()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    assert_ne!(detail["session"]["status"], "complete", "{detail}");
    assert!(detail["chunks"].as_array().unwrap().len() < 3, "{detail}");

    upload(session(50)).await;
    let took =
        tokio::task::block_in_place(|| wait_status(&p, fixtures::session_id(50), "complete"));
    eprintln!("a session uploaded beside an unreadable object was listed in {took:?}");
    assert!(took < LISTED_WITHIN, "{took:?}");

    // The store serves the object again: the victim completes, whole.
    proxy.script(&[]);
    tokio::task::block_in_place(|| wait_status(&p, id(&victim), "complete"));
    let d = tokio::task::block_in_place(|| p.get(&format!("/api/sessions/{}", id(&victim))))
        .json()
        .unwrap();
    assert_eq!(d["chunks"].as_array().unwrap().len(), 3, "{d}");
    assert!(
        d["session"]["problems"].as_array().unwrap().is_empty(),
        "{d}"
    );
    // The index's connections are blocking clients: closed off the async workers.
    tokio::task::block_in_place(move || drop((p, index)));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unreadable_object_stays_its_sessions_problem_on_sqlite() {
    let tmp = tempfile::tempdir().unwrap();
    an_unreadable_object_stays_its_sessions_problem(sqlite(tmp.path())).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unreadable_object_stays_its_sessions_problem_on_postgresql() {
    an_unreadable_object_stays_its_sessions_problem(tokio::task::block_in_place(pg)).await;
}

/// A session whose chunk 1 carries a process start with a 1.6 MB command line.
fn long_command_line(n: u64) -> (StoredSession, String) {
    let head = "useradd --comment";
    // A command behind 1.6 MB of padding, as a recorded admin would hide one.
    let line = format!("{head} {}; passwd hidden", "x".repeat(1_600_000));
    let l = line.clone();
    let s =
        fixtures::stored_session_with(fixtures::header(fixtures::session_id(n)), 3, move |seq| {
            let mut e = fixtures::events(seq);
            if seq == 1
                && let jitrec_format::EventKind::ProcessStart(p) = &mut e[0].event
            {
                p.command_line = l.clone();
            }
            e
        });
    (s, line)
}

/// Installs a trigger that makes every insert of an event fail while `inject_failure` has a row.
fn inject(index: &dyn Index, backend: &str) {
    index
        .exec("CREATE TABLE inject_failure (on_ BIGINT)", &[])
        .unwrap();
    if backend == "sqlite" {
        index
            .exec(
                "CREATE TRIGGER inject_failure BEFORE INSERT ON events \
                 WHEN EXISTS (SELECT 1 FROM inject_failure) \
                 BEGIN SELECT RAISE(ABORT, 'injected failure'); END",
                &[],
            )
            .unwrap();
    } else {
        index
            .exec(
                "CREATE FUNCTION inject_failure() RETURNS trigger AS \
                 'BEGIN IF EXISTS (SELECT 1 FROM inject_failure) THEN \
                 RAISE EXCEPTION ''injected failure''; END IF; RETURN NEW; END' \
                 LANGUAGE plpgsql",
                &[],
            )
            .unwrap();
        index
            .exec(
                "CREATE TRIGGER inject_failure BEFORE INSERT ON events FOR EACH ROW \
                 EXECUTE FUNCTION inject_failure()",
                &[],
            )
            .unwrap();
    }
    index
        .exec("INSERT INTO inject_failure (on_) VALUES (1)", &[])
        .unwrap();
}

/// A long command line is indexed (capped) and found; a failed write loses nothing.
fn writes_that_fail_lose_nothing(index: Arc<dyn Index>, backend: &str) {
    let tmp = tempfile::tempdir().unwrap();
    let b = TestBucket::new(tmp.path());
    let (long, line) = long_command_line(1);
    put(&b, &long);
    let src: Arc<dyn BucketReader> = Arc::new(DirBucket::new(tmp.path()));
    let config = IndexerConfig {
        stale_after: Duration::from_secs(3600),
        ..IndexerConfig::default()
    };
    let mut ix = Indexer::new(Arc::clone(&src), Arc::clone(&index), config.clone()).unwrap();
    ix.pass().unwrap();
    let row = index.session(id(&long)).unwrap().unwrap();
    assert_eq!(
        (row.status.as_str(), row.chunks),
        ("complete", 3),
        "{row:?}"
    );
    let events = index.events(id(&long)).unwrap();
    let big = events.iter().find(|e| e.seq == 1).unwrap();
    assert!(big.text.starts_with(&line[..100]), "{}", &big.text[..100]);
    assert!(
        big.text.len() < EVENT_TEXT_MAX + 200,
        "{} bytes kept",
        big.text.len()
    );
    assert!(
        big.text.contains("1600033 bytes in all"),
        "{}",
        &big.text[big.text.len() - 80..]
    );
    let found = index
        .list(&Query {
            text: Some("comment".into()),
            ..Query::default()
        })
        .unwrap();
    assert_eq!(
        found
            .sessions
            .iter()
            .map(|s| s.session.id)
            .collect::<Vec<_>>(),
        [id(&long)]
    );
    let behind = index
        .list(&Query {
            text: Some("passwd hidden".into()),
            ..Query::default()
        })
        .unwrap();
    assert_eq!(
        behind.sessions.len(),
        1,
        "the command after the padding is found"
    );

    // Writes of events fail from now on: the next session is not written, and nothing of it is
    // taken as indexed. A session beside it without events is still indexed.
    inject(index.as_ref(), backend);
    // Longer than one batch (64 chunks), so the batches and their restore are exercised.
    let victim = fixtures::stored_session(fixtures::session_id(2), 150);
    put(&b, &victim);
    let quiet =
        fixtures::stored_session_with(fixtures::header(fixtures::session_id(3)), 2, |_| Vec::new());
    put(&b, &quiet);
    let failed = ix.pass();
    assert!(failed.is_err(), "the injected failure is reported");
    assert_eq!(index.session(id(&quiet)).unwrap().unwrap().chunks, 2);
    let marked = index.session(id(&victim)).unwrap();
    assert!(
        marked.as_ref().is_some_and(|r| r.chunks == 0
            && r.problems
                .iter()
                .any(|p| p.kind == jitrec_player::scan::ProblemKind::Unindexed
                    && p.message.contains("injected failure"))),
        "the session is listed with its failure: {marked:?}"
    );
    assert!(index.events(id(&victim)).unwrap().is_empty());
    // A second failing pass changes nothing either.
    assert!(ix.pass().is_err());

    // The index takes writes again: the next pass writes the whole session.
    index.exec("DELETE FROM inject_failure", &[]).unwrap();
    ix.pass().unwrap();
    // 150 chunks: up to 16 batches of 64 a pass, so this pass writes them all.
    let row = index.session(id(&victim)).unwrap().unwrap();
    assert_eq!(
        (row.status.as_str(), row.chunks),
        ("complete", 150),
        "{row:?}"
    );
    assert!(row.problems.is_empty(), "{row:?}");
    assert_eq!(index.events(id(&victim)).unwrap().len(), 150);

    // The same failure during a reindex: every session keeps what it had.
    index
        .exec("INSERT INTO inject_failure (on_) VALUES (1)", &[])
        .unwrap();
    let before = index.list(&Query::default()).unwrap().sessions.len();
    let mut again = Indexer::new(Arc::clone(&src), Arc::clone(&index), config).unwrap();
    let report = again.reindex().unwrap();
    assert!(!report.failed.is_empty(), "{report:?}");
    assert_eq!(
        index.list(&Query::default()).unwrap().sessions.len(),
        before
    );
    for (s, n) in [(id(&long), 3), (id(&victim), 150)] {
        let row = index.session(s).unwrap().unwrap();
        assert_eq!(
            (row.status.as_str(), row.closed, row.chunks),
            ("complete", true, n),
            "{row:?}"
        );
        assert_eq!(index.events(s).unwrap().len() as u64, n);
    }
}

#[test]
fn writes_that_fail_lose_nothing_on_sqlite() {
    let tmp = tempfile::tempdir().unwrap();
    writes_that_fail_lose_nothing(sqlite(tmp.path()), "sqlite");
}

#[test]
fn writes_that_fail_lose_nothing_on_postgresql() {
    writes_that_fail_lose_nothing(pg(), "postgresql");
}

/// The real `jitrec-player serve` over a bucket holding an events bomb (700,000 tiny events in
/// one chunk's 5 MB payload), a chunk at the recorder's event bound (95,000), a 60 MB chunk
/// fetched by 16 concurrent small ranges, and a 300 MB one: the bomb is refused unread, the busy
/// chunk is indexed and paged, the ranges are served, the 300 MB chunk is refused, and the
/// player's peak resident memory stays under 200 MB.
fn memory_stays_bounded(backend: &str) {
    use crate::door::{ADMIN, Client, add_user, index_spec, peak_kib, serve};
    use jitrec_format::{Event, EventKind, MediaTime, ProcessExit};
    let tmp = tempfile::tempdir().unwrap();
    let root = tmp.path().join("bucket");
    let b = TestBucket::new(&root);
    // Chunk 1 (2 s) of session `n` with `count` process exits spread over it.
    let flood = |n: u64, count: u64| {
        fixtures::stored_session_with(fixtures::header(fixtures::session_id(n)), 3, move |seq| {
            if seq != 1 {
                return fixtures::events(seq);
            }
            (0..count)
                .map(|i| {
                    let us = 2_000_000 + i * 1_999_999 / count;
                    Event {
                        media_us: MediaTime::from_micros(us),
                        utc: fixtures::t0() + chrono::Duration::microseconds(us as i64),
                        event: EventKind::ProcessExit(ProcessExit {
                            pid: i as u32,
                            exit_code: Some(0),
                            signal: None,
                        }),
                    }
                })
                .collect()
        })
    };
    let bomb = flood(1, 700_000);
    let (_, _, payload) = &bomb.chunks[1];
    eprintln!("the bomb's events payload: {} bytes", payload.len());
    put(&b, &bomb);
    let busy = flood(2, 95_000);
    put(&b, &busy);
    let big = |n: u64, mib: usize| {
        let video: Vec<u8> = (0..mib * 1024 * 1024).map(|i| (i % 251) as u8).collect();
        fixtures::stored_session_with_video(fixtures::header(fixtures::session_id(n)), video)
    };
    let sixty = big(3, 60);
    put(&b, &sixty);
    let huge = big(4, 300);
    put(&b, &huge);

    let index = index_spec(backend, tmp.path());
    add_user(&index, ADMIN, "admin");
    let (child, addr) = serve(&root, &index);
    let admin = Client::sign_in(addr, ADMIN);
    let detail = |s: SessionId| {
        let started = Instant::now();
        loop {
            let r = admin.get(&format!("/api/sessions/{s}"));
            if r.status == 200 {
                let d = r.json().unwrap();
                if d["session"]["closed"] == true {
                    return d;
                }
            }
            assert!(
                started.elapsed() < LIMIT,
                "{s} was not indexed: {}",
                r.text()
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    };
    let d = detail(id(&bomb));
    assert_eq!(d["session"]["status"], "tampered", "{}", d["session"]);
    assert!(
        d["session"]["problems"]
            .to_string()
            .contains("more than a recorder writes"),
        "{}",
        d["session"]
    );
    assert!(d["events"].as_array().unwrap().len() < 10);

    // At the bound: indexed whole, and paged.
    let d = detail(id(&busy));
    assert_eq!(d["session"]["status"], "complete", "{}", d["session"]);
    let first = d["events"].as_array().unwrap();
    assert_eq!(first.len(), 1_000);
    assert_eq!(d["events_more"], true);
    let mut total = first.len();
    let mut last = (
        first[999]["seq"].as_u64().unwrap(),
        first[999]["idx"].as_u64().unwrap(),
    );
    loop {
        let r = admin.get(&format!(
            "/api/sessions/{}/events?after_seq={}&after_idx={}",
            id(&busy),
            last.0,
            last.1
        ));
        assert_eq!(r.status, 200, "{}", r.text());
        let page = r.json().unwrap();
        let events = page["events"].as_array().unwrap();
        assert!(events.len() <= 1_000);
        total += events.len();
        if let Some(e) = events.last() {
            last = (e["seq"].as_u64().unwrap(), e["idx"].as_u64().unwrap());
        }
        if page["more"] != true {
            break;
        }
    }
    assert_eq!(total, 95_000 + 2, "every event, once");
    eprintln!(
        "{backend}: peak after indexing and paging the events: {} MB",
        peak_kib(&child) / 1024
    );

    // 16 concurrent small ranges of the 60 MB chunk: all served, from the checked bytes.
    detail(id(&sixty));
    let (_, video, _) = &sixty.chunks[0];
    let url = format!("/api/sessions/{}/chunks/0.m4s", id(&sixty));
    std::thread::scope(|s| {
        let workers: Vec<_> = (0..16)
            .map(|i| {
                let (url, cookie) = (&url, &admin.cookie);
                s.spawn(move || {
                    let from = i * 1_000_003;
                    let range = format!("bytes={from}-{}", from + 99);
                    let r = http::request(
                        addr,
                        "GET",
                        url,
                        &[("Cookie", cookie), ("Range", &range)],
                        &[],
                    )
                    .unwrap();
                    (from, r)
                })
            })
            .collect();
        for w in workers {
            let (from, r) = w.join().unwrap();
            assert_eq!(r.status, 206, "{}", r.text());
            assert_eq!(r.body, video[from..from + 100]);
        }
    });
    // The 300 MB chunk is refused, not read into memory.
    detail(id(&huge));
    let r = admin.get(&format!("/api/sessions/{}/chunks/0.m4s", id(&huge)));
    assert_eq!(r.status, 502, "{}", r.text());

    let peak = peak_kib(&child);
    eprintln!(
        "{backend}: the player's peak resident memory: {} MB",
        peak / 1024
    );
    assert!(peak < 200 * 1024, "{peak} KiB");
    drop(child);
}

#[test]
fn memory_stays_bounded_on_sqlite() {
    memory_stays_bounded("sqlite");
}

#[test]
fn memory_stays_bounded_on_postgresql() {
    memory_stays_bounded("postgresql");
}

/// A session whose id (the endpoint's clock) says 3 hours ahead, in layout v1 beside everyone
/// else's: sessions recorded now are still listed within seconds, before and after the player
/// restarts (the real `serve`, on SQLite and PostgreSQL).
fn a_session_from_the_future_hides_nothing(backend: &str) {
    use crate::door::{ADMIN, Client, add_user, index_spec, serve};
    let tmp = tempfile::tempdir().unwrap();
    let root = tmp.path().join("bucket");
    let b = TestBucket::new(&root);
    let at = |t: chrono::DateTime<chrono::Utc>, tail: u8| {
        let id = SessionId::from_parts(t.timestamp_millis() as u64, [tail; 10]);
        let mut h = fixtures::header(id);
        h.started_at = t;
        (id, fixtures::stored_session_with(h, 2, |_| Vec::new()))
    };
    let (ahead, future) = at(chrono::Utc::now() + chrono::Duration::hours(3), 1);
    put(&b, &future);
    let index = index_spec(backend, tmp.path());
    add_user(&index, ADMIN, "admin");
    let listed_within = |addr, id: SessionId| {
        let admin = Client::sign_in(addr, ADMIN);
        let started = Instant::now();
        while admin.get(&format!("/api/sessions/{id}")).status != 200 {
            assert!(started.elapsed() < LIMIT, "{id} was never listed");
            std::thread::sleep(Duration::from_millis(50));
        }
        started.elapsed()
    };
    let (child, addr) = serve(&root, &index);
    listed_within(addr, ahead);
    let (now1, s1) = at(chrono::Utc::now(), 2);
    put(&b, &s1);
    let took = listed_within(addr, now1);
    eprintln!("{backend}: beside a session 3 h ahead, a session of now was listed in {took:?}");
    assert!(took < LISTED_WITHIN, "{took:?}");
    drop(child);
    // The index now holds the future id as its newest: a restarted player still lists now.
    let (child, addr) = serve(&root, &index);
    let (now2, s2) = at(chrono::Utc::now(), 3);
    put(&b, &s2);
    let took = listed_within(addr, now2);
    eprintln!("{backend}: after a restart, a session of now was listed in {took:?}");
    assert!(took < LISTED_WITHIN, "{took:?}");
    drop(child);
}

#[test]
fn a_session_from_the_future_hides_nothing_on_sqlite() {
    a_session_from_the_future_hides_nothing("sqlite");
}

#[test]
fn a_session_from_the_future_hides_nothing_on_postgresql() {
    a_session_from_the_future_hides_nothing("postgresql");
}
