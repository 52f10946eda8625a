//! The bucket as untrusted input (`docs/bucket.md`), tried as an endpoint with write access to it
//! would: links, FIFOs and directories where objects belong, a 1 GiB object where a manifest
//! belongs, and a store that answers 503 or resets connections. Each test shows the product
//! refuses or survives it, and that the other sessions are not harmed.

use std::os::unix::fs::symlink;
use std::path::Path;
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use jitrec_bucket::{BucketAdmin, BucketReader, DirBucket, RetryPolicy, S3Bucket};
use jitrec_format::fixtures::{self, StoredSession};
use jitrec_format::{ObjectKey, SessionHeader, SessionId};
use jitrec_player::index::Index;
use jitrec_player::index::sqlite::SqliteIndex;
use jitrec_tests::faultproxy::{Fault, FaultProxy, Plan};
use jitrec_tests::{TestBucket, seaweed, session_objects};

use crate::player::Player;

const PLAYER: &str = env!("CARGO_BIN_EXE_jitrec-test-player");
/// Generous limits for conditions awaited on a loaded CI machine.
const LIMIT: Duration = Duration::from_secs(120);

fn session(n: u64) -> StoredSession {
    fixtures::stored_session(fixtures::session_id(n), 3)
}

fn id(s: &StoredSession) -> SessionId {
    SessionHeader::from_bytes(&s.header).unwrap().session_id
}

fn put_dir(b: &TestBucket, s: &StoredSession) {
    for (k, v) in session_objects(s) {
        b.put(&k, &v).unwrap();
    }
}

/// Waits until the player's API lists `s` with `status`.
fn wait_listed(p: &Player, s: SessionId, status: &str) {
    let started = Instant::now();
    loop {
        let r = p.get(&format!("/api/sessions/{s}"));
        if r.status == 200 && r.json().unwrap()["session"]["status"] == status {
            return;
        }
        assert!(
            started.elapsed() < LIMIT,
            "session {s} never {status}: {} {}",
            r.status,
            r.text()
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

#[test]
fn links_fifos_and_directories_where_chunks_belong_are_refused_not_served() {
    let tmp = tempfile::tempdir().unwrap();
    let root = tmp.path().join("bucket");
    let b = TestBucket::new(&root);
    let (victim, bystander) = (session(1), session(2));
    put_dir(&b, &victim);
    put_dir(&b, &bystander);
    let secret = tmp.path().join("host-secret");
    std::fs::write(&secret, b"TOP-SECRET file of the player's host").unwrap();

    let index: Arc<dyn Index> =
        Arc::new(SqliteIndex::open(&tmp.path().join("index.sqlite3")).unwrap());
    let src: Arc<dyn BucketReader> = Arc::new(DirBucket::new(&root));
    let p = Player::start(Arc::clone(&src), index);
    wait_listed(&p, id(&victim), "complete");
    wait_listed(&p, id(&bystander), "complete");

    // After indexing, as an endpoint with write access to the folder would, objects of the
    // victim are swapped for a link to a host file, a link to the process environment, a FIFO
    // (a reader that opened it would wait forever) and a directory.
    let path = |k: ObjectKey| root.join(k.to_string());
    let v = id(&victim);
    let swap = |k: ObjectKey| {
        std::fs::remove_file(path(k)).unwrap();
        path(k)
    };
    symlink(&secret, swap(ObjectKey::ChunkVideo(v.into(), 0))).unwrap();
    symlink("/proc/self/environ", swap(ObjectKey::Init(v.into(), 0))).unwrap();
    rustix::fs::mkfifoat(
        rustix::fs::CWD,
        swap(ObjectKey::ChunkVideo(v.into(), 1)),
        rustix::fs::Mode::from_raw_mode(0o600),
    )
    .unwrap();
    std::fs::create_dir(swap(ObjectKey::ChunkVideo(v.into(), 2))).unwrap();

    for (what, url) in [
        (
            "a link to a host file",
            format!("/api/sessions/{v}/chunks/0.m4s"),
        ),
        (
            "a link to /proc/self/environ",
            format!("/api/sessions/{v}/init/0.mp4"),
        ),
        ("a FIFO", format!("/api/sessions/{v}/chunks/1.m4s")),
        ("a directory", format!("/api/sessions/{v}/chunks/2.m4s")),
    ] {
        let r = p.get(&url);
        assert_eq!(r.status, 502, "{what}: {} {}", r.status, r.text());
        let text = r.text();
        assert!(text.contains("not an object"), "{what}: {text}");
        assert!(
            !text.contains("TOP-SECRET") && !text.contains("PATH="),
            "{what}: {text}"
        );
    }
    // The bystander plays as before.
    let (_, video, _) = &bystander.chunks[0];
    let r = p.get(&format!("/api/sessions/{}/chunks/0.m4s", id(&bystander)));
    assert_eq!((r.status, &r.body), (200, video));

    // Verification says what was found, and the secret was never read as the victim's video.
    let report = jitrec_player::verify::verify_session(src.as_ref(), v).unwrap();
    let problems = report.problems.join("\n");
    assert!(problems.contains("a symbolic link"), "{report}");
    assert!(problems.contains("a FIFO"), "{report}");
    assert!(problems.contains("a directory"), "{report}");
    let report = jitrec_player::verify::verify_session(src.as_ref(), id(&bystander)).unwrap();
    assert_eq!(
        report.verdict,
        jitrec_player::verify::Verdict::Intact,
        "{report}"
    );
}

/// The largest resident set (`VmHWM`) of process `pid`, in bytes.
fn peak_rss(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    let kb: u64 = status
        .lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap();
    kb * 1024
}

fn status_counts(index: &Path) -> String {
    let out = Command::new(PLAYER)
        .args(["status", "--index"])
        .arg(index)
        .env("RUST_LOG", "warn")
        .output()
        .unwrap();
    String::from_utf8_lossy(&out.stdout).into_owned()
}

#[test]
fn a_one_gib_object_where_a_manifest_belongs_is_refused_unread() {
    let tmp = tempfile::tempdir().unwrap();
    let root = tmp.path().join("bucket");
    let b = TestBucket::new(&root);
    let (poisoned, bystander) = (session(1), session(2));
    put_dir(&b, &poisoned);
    put_dir(&b, &bystander);
    // 1 GiB where chunk 1's manifest belongs (sparse: it costs no disk, only reading it would
    // cost memory).
    let manifest = root.join(ObjectKey::ChunkManifest((id(&poisoned)).into(), 1).to_string());
    std::fs::File::create(&manifest)
        .unwrap()
        .set_len(1 << 30)
        .unwrap();

    let index = tmp.path().join("index.sqlite3");
    let mut serve = jitrec_tests::child::serve_http(
        |listen| {
            let mut c = Command::new(PLAYER);
            c.args([
                "serve",
                "--retention-every",
                "0",
                "--listen",
                &listen.to_string(),
            ])
            .arg("--bucket-dir")
            .arg(&root)
            .arg("--index")
            .arg(&index)
            .env("RUST_LOG", "warn")
            .stdin(Stdio::null())
            .stdout(Stdio::null());
            c
        },
        LIMIT,
    );
    let started = Instant::now();
    let counts = loop {
        let c = status_counts(&index);
        if c.contains("tampered") && c.contains("complete") {
            break c;
        }
        let exited = serve.child.try_wait().unwrap();
        assert!(
            exited.is_none() && started.elapsed() < LIMIT,
            "not indexed: {c} (player: {exited:?}, stderr:\n{})",
            serve.stderr()
        );
        std::thread::sleep(Duration::from_millis(100));
    };
    let peak = peak_rss(serve.child.id());
    eprintln!(
        "player peak RSS {} MiB after indexing: {counts}",
        peak >> 20
    );
    assert!(peak < 100 << 20, "peak RSS {} MiB", peak >> 20);
    drop(serve);

    let out = Command::new(PLAYER)
        .args(["verify", "--bucket-dir"])
        .arg(&root)
        .arg(id(&poisoned).to_string())
        .arg(id(&bystander).to_string())
        .env("RUST_LOG", "warn")
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(!out.status.success(), "{text}");
    assert!(
        text.contains("over the limit of 65536"),
        "the refusal names the bound: {text}"
    );
}

/// A SeaweedFS bucket with a fixture session, and a reader of it through a fault proxy.
async fn proxied(prefix: &str) -> (String, StoredSession, FaultProxy, S3Bucket) {
    let srv = seaweed::server();
    let bucket = seaweed::new_bucket(prefix).await.unwrap();
    let direct = S3Bucket::new(
        seaweed::config(&srv.endpoint, &bucket),
        tokio::runtime::Handle::current(),
    );
    let s = session(1);
    for (k, v) in session_objects(&s) {
        use jitrec_bucket::BucketWriter;
        direct
            .put(&k.to_string(), v.into(), k.content_type())
            .await
            .unwrap();
    }
    let proxy = FaultProxy::start(srv.s3_addr, Plan::default())
        .await
        .unwrap();
    let reader = S3Bucket::new(
        seaweed::config(&proxy.endpoint(), &bucket),
        tokio::runtime::Handle::current(),
    );
    (bucket, s, proxy, reader)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn media_requests_ride_over_503s_and_resets_and_fail_clearly_past_the_retry_bound() {
    let (_bucket, s, proxy, reader) = proxied("media-retry").await;
    let v = id(&s);
    let tmp = tempfile::tempdir().unwrap();
    let index: Arc<dyn Index> =
        Arc::new(SqliteIndex::open(&tmp.path().join("index.sqlite3")).unwrap());
    let src: Arc<dyn BucketReader> = Arc::new(reader);
    let p = tokio::task::block_in_place(|| Player::start(src, index));
    tokio::task::block_in_place(|| wait_listed(&p, v, "complete"));
    let (_, video, _) = &s.chunks[1];
    let url = format!("/api/sessions/{v}/chunks/1.m4s");

    // Two 503s, then the object.
    proxy.script(&[(".m4s", Fault::SlowDown), (".m4s", Fault::SlowDown)]);
    let r = tokio::task::block_in_place(|| p.get(&url));
    assert_eq!((r.status, &r.body), (200, video), "{}", r.text());
    assert_eq!(proxy.script_left(), 0);
    assert_eq!(
        proxy
            .stats()
            .slow_downs
            .load(std::sync::atomic::Ordering::Relaxed),
        2
    );

    // A reset and a 500, then a ranged read.
    proxy.script(&[(".m4s", Fault::Reset), (".m4s", Fault::ServerError)]);
    let r = tokio::task::block_in_place(|| {
        jitrec_tests::http::request(p.addr, "GET", &url, &[("Range", "bytes=4-9")], &[])
    })
    .unwrap();
    assert_eq!(
        (r.status, &r.body[..]),
        (206, &video[4..10]),
        "{}",
        r.text()
    );
    assert_eq!(proxy.script_left(), 0);

    // Past the bound (every attempt refused): a clear error, not a hang and not bytes.
    let bound = RetryPolicy::reads().max_attempts.unwrap() as usize;
    proxy.script(&vec![(".m4s", Fault::SlowDown); bound]);
    let started = Instant::now();
    let r = tokio::task::block_in_place(|| p.get(&url));
    assert_eq!(r.status, 500, "{}", r.text());
    assert!(r.text().contains("throttled by the server"), "{}", r.text());
    assert!(r.text().contains("HTTP 503"), "{}", r.text());
    assert_eq!(proxy.script_left(), 0, "every attempt was made");
    assert!(
        started.elapsed() < Duration::from_secs(30),
        "{:?}",
        started.elapsed()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn listing_reads_and_retention_deletions_ride_over_503s_and_resets() {
    let (_bucket, s, proxy, reader) = proxied("admin-retry").await;
    let v = id(&s);
    // Verification lists the session and reads every object: faults on both.
    proxy.script(&[
        ("list-type=2", Fault::Reset),
        ("list-type=2", Fault::SlowDown),
        ("session.json", Fault::ServerError),
        (".events.zst", Fault::Reset),
        (".m4s", Fault::SlowDown),
    ]);
    let report =
        tokio::task::block_in_place(|| jitrec_player::verify::verify_session(&reader, v)).unwrap();
    assert_eq!(
        report.verdict,
        jitrec_player::verify::Verdict::Intact,
        "{report}"
    );
    assert_eq!(proxy.script_left(), 0, "every scripted fault was met");

    // The retention job deletes it through a reset and a 503 on DeleteObjects.
    let tmp = tempfile::tempdir().unwrap();
    tokio::task::block_in_place(|| {
        use jitrec_player::retention::{self, Level, RunOptions};
        let src: Arc<dyn BucketReader> = Arc::new(reader.clone());
        let index: Arc<dyn Index> =
            Arc::new(SqliteIndex::open(&tmp.path().join("index.sqlite3")).unwrap());
        crate::retention::index_all(&src, &index);
        retention::init(index.as_ref()).unwrap();
        retention::set_policy(index.as_ref(), Level::Global, "", Some(1), "t").unwrap();
        proxy.script(&[("delete", Fault::Reset), ("delete", Fault::SlowDown)]);
        // Counted from when the player first saw the close record, i.e. during this test.
        let when = chrono::Utc::now() + chrono::Duration::days(30);
        let r = retention::run(
            index.as_ref(),
            &reader as &dyn BucketAdmin,
            &RunOptions::default(),
            when,
        )
        .unwrap();
        assert_eq!(r.expired.len(), 1, "{r:?}");
        assert!(r.failed.is_empty(), "{r:?}");
        assert_eq!(proxy.script_left(), 0, "every scripted fault was met");
        assert!(
            reader
                .list(&ObjectKey::session_prefix(v))
                .unwrap()
                .is_empty()
        );
    });
}
