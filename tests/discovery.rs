//! Discovery that never misses a session (issue 21): whatever the endpoint's clock says, a
//! session that lands in the bucket is listed within a bounded time, through the sweep behind
//! discovery's cursor (`player/src/sweep.rs`). Tried as an endpoint would: a session dated
//! hours before the newest one, in both layouts, found by a running `serve` with no restart,
//! notify or reindex; and the paged listing the sweep walks, on both stores, with objects an
//! endpoint wrote to make pages look short.

use std::time::{Duration, Instant};

use jitrec_bucket::{BucketReader, BucketWriter, DirBucket, NamesPage, S3Bucket};
use jitrec_format::fixtures;
use jitrec_format::{LAYOUT_PREFIX, MachineId, SessionId, SessionKey};
use jitrec_tests::{http, seaweed, session_objects_at};

/// Generous limits for conditions awaited on a loaded CI machine.
const LIMIT: Duration = Duration::from_secs(120);

/// Pages through `prefix` `max` names at a time; every page but the last says there is more.
fn all_pages(b: &dyn BucketReader, prefix: &str, max: usize) -> (Vec<String>, usize) {
    let mut names = Vec::new();
    let mut after: Option<String> = None;
    let mut pages = 0;
    loop {
        let NamesPage { names: page, more } =
            b.list_names_page(prefix, after.as_deref(), max).unwrap();
        pages += 1;
        assert!(
            page.len() <= max,
            "a page of {} names, asked for {max}",
            page.len()
        );
        assert!(
            page.windows(2).all(|w| w[0] < w[1]),
            "a page is sorted: {page:?}"
        );
        if let (Some(a), Some(first)) = (&after, page.first()) {
            assert!(first > a, "a page starts after the name it resumes from");
        }
        names.extend(page.iter().cloned());
        match page.last() {
            Some(last) if more => after = Some(last.clone()),
            _ => break,
        }
        assert!(pages < 1000, "the listing never ends");
    }
    (names, pages)
}

/// What the layout v1 listing holds in both stores: 23 sessions (one with 12 objects below
/// it, as many as a page), and objects an endpoint put where session folders belong.
fn hostile_listing() -> (Vec<(String, Vec<u8>)>, Vec<String>) {
    let mut objects = Vec::new();
    let mut expected = Vec::new();
    for n in 1..=23 {
        let id = fixtures::session_id(n);
        let s = fixtures::stored_session(id, if n == 7 { 5 } else { 1 });
        for (k, v) in session_objects_at(&s, id.into()) {
            objects.push((k.to_string(), v));
        }
        expected.push(id.to_string());
    }
    // Names that sort among the sessions' and between a folder and its objects: each is one
    // name of the listing, not a way to end it.
    for junk in ["0-junk", "zz-junk", "~tilde"] {
        objects.push((format!("{LAYOUT_PREFIX}{junk}"), b"x".to_vec()));
        expected.push(junk.to_owned());
    }
    expected.sort();
    (objects, expected)
}

fn check_pages(b: &dyn BucketReader, expected: &[String]) {
    let whole = b.list_names(LAYOUT_PREFIX, None).unwrap();
    assert_eq!(whole, expected, "{}", b.describe());
    for max in [1, 2, 5, 26, 1000] {
        let (paged, pages) = all_pages(b, LAYOUT_PREFIX, max);
        assert_eq!(
            paged,
            expected,
            "{} in pages of {max}: the pages are the listing",
            b.describe()
        );
        assert!(
            pages >= expected.len().div_ceil(max),
            "{pages} pages of {max}"
        );
    }
    // A page resumed after a name lists only what follows it.
    let page = b
        .list_names_page(LAYOUT_PREFIX, Some(&expected[10]), 1000)
        .unwrap();
    assert!(!page.more);
    assert_eq!(page.names, expected[11..]);
}

#[test]
fn a_page_of_names_is_a_page_of_the_whole_listing_in_the_directory_store() {
    let tmp = tempfile::tempdir().unwrap();
    let root = tmp.path().join("bucket");
    let (objects, expected) = hostile_listing();
    for (k, v) in &objects {
        let path = root.join(k);
        std::fs::create_dir_all(path.parent().unwrap()).unwrap();
        std::fs::write(path, v).unwrap();
    }
    check_pages(&DirBucket::new(root), &expected);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_page_of_names_is_a_page_of_the_whole_listing_on_s3() {
    let srv = seaweed::server();
    let name = seaweed::new_bucket("pages").await.unwrap();
    let s3 = S3Bucket::new(
        seaweed::config(&srv.endpoint, &name),
        tokio::runtime::Handle::current(),
    );
    let (objects, expected) = hostile_listing();
    for (k, v) in objects {
        s3.put(&k, v.into(), "application/octet-stream")
            .await
            .unwrap();
    }
    tokio::task::block_in_place(|| check_pages(&s3, &expected));
}

/// Puts `s` at `at` in the S3 bucket.
async fn upload_at(s3: &S3Bucket, s: &fixtures::StoredSession, at: SessionKey) {
    for (k, v) in session_objects_at(s, at) {
        let ct = k.content_type();
        s3.put(&k.to_string(), v.into(), ct).await.unwrap();
    }
}

/// A session id dated `ago` before now.
fn id_dated(ago: chrono::Duration, tag: u8) -> SessionId {
    SessionId::from_parts(
        (chrono::Utc::now() - ago).timestamp_millis() as u64,
        [tag; 10],
    )
}

/// A session whose id is three hours older than the newest session in the bucket (an endpoint
/// whose clock is behind), in layout v2 under a machine discovery already follows and in
/// layout v1, lands while `serve` runs: both appear in the API within the sweep's bound (two
/// rounds of one page per listing, plus slack for a loaded machine), with no restart, notify
/// or reindex; `/api/status` says the sweep found them.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_session_dated_hours_before_the_newest_appears_without_notify_or_restart() {
    let srv = seaweed::server();
    let name = seaweed::new_bucket("sweep").await.unwrap();
    let s3 = S3Bucket::new(
        seaweed::config(&srv.endpoint, &name),
        tokio::runtime::Handle::current(),
    );
    let key = fixtures::signer(21);
    let m: MachineId = "dddd0000dddd0000dddd0000dddd0000".parse().unwrap();
    let v2 = |id: SessionId| {
        let mut h = fixtures::header_v2(id, &key);
        h.machine.id = m.to_string();
        fixtures::stored_session_v2_from(h, 1, &key)
    };
    let newest = id_dated(chrono::Duration::zero(), 1);
    upload_at(&s3, &v2(newest), SessionKey::v2(m, newest)).await;
    let v1_newest = id_dated(chrono::Duration::zero(), 2);
    upload_at(
        &s3,
        &fixtures::stored_session(v1_newest, 1),
        v1_newest.into(),
    )
    .await;

    let tmp = tempfile::tempdir().unwrap();
    let index = tmp.path().join("index.sqlite3");
    let every = jitrec_player::indexer::DEFAULT_SWEEP_EVERY;
    let (_serve, addr, cookie, _csrf) =
        tokio::task::block_in_place(|| crate::retention::serve_signed_in(&name, &index, &[]));
    let get =
        |path: &str| http::request(addr, "GET", path, &[("Cookie", cookie.as_str())], b"").unwrap();
    let wait_for = |what: &str, ok: &dyn Fn() -> bool| {
        let t = Instant::now();
        while !ok() {
            assert!(t.elapsed() < LIMIT, "{what}: not within {LIMIT:?}");
            std::thread::sleep(Duration::from_millis(50));
        }
        t.elapsed()
    };
    tokio::task::block_in_place(|| {
        wait_for("the newest sessions listed", &|| {
            get(&format!("/api/sessions/{newest}")).status == 200
                && get(&format!("/api/sessions/{v1_newest}")).status == 200
        })
    });

    let old_v2 = id_dated(chrono::Duration::hours(3), 3);
    let old_v1 = id_dated(chrono::Duration::hours(3), 4);
    upload_at(&s3, &v2(old_v2), SessionKey::v2(m, old_v2)).await;
    upload_at(&s3, &fixtures::stored_session(old_v1, 1), old_v1.into()).await;
    let took = tokio::task::block_in_place(|| {
        wait_for("the sessions dated 3 h back", &|| {
            get(&format!("/api/sessions/{old_v2}")).status == 200
                && get(&format!("/api/sessions/{old_v1}")).status == 200
        })
    });
    let status: serde_json::Value =
        tokio::task::block_in_place(|| get("/api/status").json().unwrap());
    let sweep = &status["indexer"]["sweep"];
    eprintln!(
        "sessions dated 3 h before the newest appeared {:.1} s after upload (sweep: {sweep})",
        took.as_secs_f64()
    );
    assert!(
        sweep["found"].as_u64().unwrap() >= 2,
        "the sweep, not discovery's cursor, found them: {status}"
    );
    // One page per listing (v1, one machine) a round; a session is found within the round
    // after it lands (at most two rounds from any moment), and read by the pass after.
    let pages_per_round = 2;
    let bound = every * pages_per_round * 2 + Duration::from_secs(10);
    assert!(
        took < bound,
        "found after {took:?}; the sweep's bound here is {:?} (+10 s of slack)",
        every * pages_per_round * 2
    );
}
