//! Retention: level precedence, expiry, legal hold, dry run and the deletion log on both index
//! backends; the real `jitrec-player retention run` SIGKILLed half-way and run again (nothing
//! orphaned in bucket or index); deletion from SeaweedFS.

use std::path::Path;
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use chrono::{DateTime, Duration as Span, Utc};
use jitrec_bucket::{BucketAdmin, BucketReader, DirBucket, S3Bucket};
use jitrec_format::fixtures::{self, StoredSession};
use jitrec_format::{ObjectKey, SessionHeader, SessionId};
use jitrec_player::index::Index;
use jitrec_player::index::sqlite::SqliteIndex;
use jitrec_player::indexer::{Indexer, IndexerConfig};
use jitrec_player::retention::{self, Level, RunOptions};
use jitrec_tests::{TestBucket, postgres, seaweed, session_objects};

const PLAYER: &str = env!("CARGO_BIN_EXE_jitrec-test-player");
const LIMIT: Duration = Duration::from_secs(120);

/// A closed session of 3 chunks (12 objects) with these labels, ended at `t0 + n minutes + 6 s`.
fn session(n: u64, company: &str, location: &str, computer: &str) -> StoredSession {
    let id = fixtures::session_id(n);
    let mut h = fixtures::header(id);
    h.labels.company = Some(company.into());
    h.labels.location = Some(location.into());
    h.labels.computer = Some(computer.into());
    h.started_at = fixtures::t0() + Span::minutes(n as i64);
    fixtures::stored_session_with(h, 3, |_| Vec::new())
}

fn id(s: &StoredSession) -> SessionId {
    SessionHeader::from_bytes(&s.header).unwrap().session_id
}

const OBJECTS: u64 = 1 + 1 + 3 * 3 + 1;

fn put(b: &TestBucket, s: &StoredSession, close: bool) {
    let id = id(s);
    b.put(&ObjectKey::SessionHeader(id.into()), &s.header)
        .unwrap();
    b.put(&ObjectKey::Init(id.into(), 0), &fixtures::init_bytes(0))
        .unwrap();
    for (seq, (m, v, e)) in s.chunks.iter().enumerate() {
        b.put(&ObjectKey::ChunkVideo(id.into(), seq as u64), v)
            .unwrap();
        b.put(&ObjectKey::ChunkEvents(id.into(), seq as u64), e)
            .unwrap();
        b.put(&ObjectKey::ChunkManifest(id.into(), seq as u64), m)
            .unwrap();
    }
    if close {
        b.put(&ObjectKey::SessionClosed(id.into()), &s.close)
            .unwrap();
    }
}

pub(crate) fn index_all(src: &Arc<dyn BucketReader>, index: &Arc<dyn Index>) {
    let mut ix =
        Indexer::new(Arc::clone(src), Arc::clone(index), IndexerConfig::default()).unwrap();
    ix.pass().unwrap();
}

/// `d` days after the sessions ended, as the retention job counts: from when the player first
/// saw their close records (its witness record, during this test run), not from the dates the
/// fixtures carry. The hour covers the time between indexing and the first call.
fn day(d: i64) -> DateTime<Utc> {
    static BASE: std::sync::LazyLock<DateTime<Utc>> = std::sync::LazyLock::new(Utc::now);
    *BASE + Span::days(d) + Span::hours(1)
}

fn retention_suite(index: Arc<dyn Index>) {
    let tmp = tempfile::tempdir().unwrap();
    let b = TestBucket::new(tmp.path());
    let dir = DirBucket::new(tmp.path());
    let src: Arc<dyn BucketReader> = Arc::new(dir.clone());
    let computer = session(1, "acme", "berlin", "ws-0421");
    let location = session(2, "acme", "berlin", "ws-0007");
    let company = session(3, "acme", "paris", "ws-0008");
    let global = session(4, "globex", "oslo", "ws-0009");
    let held = session(5, "acme", "berlin", "ws-0421");
    let recording = session(6, "acme", "berlin", "ws-0421");
    for s in [&computer, &location, &company, &global, &held] {
        put(&b, s, true);
    }
    put(&b, &recording, false);
    index_all(&src, &index);
    let idx = index.as_ref();
    retention::init(idx).unwrap();

    // Without any policy nothing is ever deleted.
    let r = retention::run(idx, &dir, &RunOptions::default(), day(10_000)).unwrap();
    assert!(r.expired.is_empty());
    assert_eq!(r.unresolved, 5, "{r:?}");

    retention::set_policy(idx, Level::Global, "", Some(365), "t").unwrap();
    retention::set_policy(idx, Level::Company, "acme", Some(90), "t").unwrap();
    retention::set_policy(idx, Level::Location, "berlin", Some(30), "t").unwrap();
    retention::set_policy(idx, Level::Computer, "ws-0421", Some(7), "t").unwrap();
    assert!(retention::set_policy(idx, Level::Company, "", Some(1), "t").is_err());
    let enforced = retention::hold(
        idx,
        &dir,
        id(&held),
        "litigation LIT-7",
        "legal@example.com",
    )
    .unwrap();
    assert_eq!(
        enforced,
        jitrec_bucket::HoldEnforcement::RetentionJobOnly,
        "a directory cannot hold objects: the job alone enforces the hold"
    );

    // Day 6: nothing has expired.
    let r = retention::run(idx, &dir, &RunOptions::default(), day(6)).unwrap();
    assert!(r.expired.is_empty(), "{r:?}");

    // Day 8, dry run: exactly the computer-level session, nothing touched.
    let dry = RunOptions {
        dry_run: true,
        ..RunOptions::default()
    };
    let r = retention::run(idx, &dir, &dry, day(8)).unwrap();
    assert_eq!(
        r.expired.iter().map(|p| p.session).collect::<Vec<_>>(),
        [id(&computer)]
    );
    assert_eq!(r.expired[0].policy, "computer ws-0421: keep 7 days");
    assert_eq!((r.held, r.recording), (1, 1), "{r:?}");
    assert_eq!(
        dir.list(&ObjectKey::session_prefix(id(&computer)))
            .unwrap()
            .len() as u64,
        OBJECTS
    );
    assert!(idx.session(id(&computer)).unwrap().is_some());

    // Day 8 for real: the computer-level session goes from bucket and index; the held one and
    // the recording one (same computer, same policy) stay.
    let r = retention::run(idx, &dir, &RunOptions::default(), day(8)).unwrap();
    assert_eq!(r.expired.len(), 1);
    assert_eq!(r.objects_deleted, OBJECTS);
    let gone = |s: &StoredSession| {
        dir.list(&ObjectKey::session_prefix(id(s)))
            .unwrap()
            .is_empty()
            && idx.session(id(s)).unwrap().is_none()
            && idx.chunks(id(s)).unwrap().is_empty()
            && idx.events(id(s)).unwrap().is_empty()
    };
    assert!(gone(&computer));
    assert!(!gone(&held) && !gone(&recording) && !gone(&location));
    // The session's folder itself is gone too.
    assert!(
        !tmp.path()
            .join(ObjectKey::session_prefix(id(&computer)))
            .exists()
    );
    let log = retention::deletion_log(idx, 10).unwrap();
    assert_eq!(log.len(), 1);
    assert_eq!(
        (log[0].session, log[0].state.as_str(), log[0].objects),
        (id(&computer), "deleted", OBJECTS)
    );
    assert_eq!(log[0].policy, "computer ws-0421: keep 7 days");
    assert_eq!(log[0].actor, "retention job");
    assert!(log[0].finished_at.is_some());
    // Idempotent: the same run again does nothing.
    let r = retention::run(idx, &dir, &RunOptions::default(), day(8)).unwrap();
    assert!(r.expired.is_empty() && r.resumed == 0, "{r:?}");
    // The indexer does not bring a deleted session back (even if its objects reappeared).
    put(&b, &computer, true);
    index_all(&src, &index);
    assert!(idx.session(id(&computer)).unwrap().is_none());

    // Location (30 days), company (90), global (365), each at its own expiry.
    for (d, s) in [(31, &location), (91, &company), (366, &global)] {
        let r = retention::run(idx, &dir, &RunOptions::default(), day(d)).unwrap();
        assert_eq!(
            r.expired.iter().map(|p| p.session).collect::<Vec<_>>(),
            [id(s)],
            "day {d}"
        );
        assert!(gone(s), "day {d}");
    }
    assert!(!gone(&held) && !gone(&recording));

    // Releasing the hold lets the next run delete it; the recording session is never deleted.
    assert!(retention::release(idx, &dir, id(&held)).unwrap().is_some());
    assert!(retention::release(idx, &dir, id(&held)).unwrap().is_none());
    let r = retention::run(idx, &dir, &RunOptions::default(), day(400)).unwrap();
    assert_eq!(
        r.expired.iter().map(|p| p.session).collect::<Vec<_>>(),
        [id(&held)]
    );
    assert!(gone(&held) && !gone(&recording));
    assert_eq!(retention::deletion_log(idx, 10).unwrap().len(), 5);

    // "Forever" keeps.
    retention::set_policy(idx, Level::Computer, "ws-0421", None, "t").unwrap();
    let forever = session(7, "acme", "berlin", "ws-0421");
    put(&b, &forever, true);
    index_all(&src, &index);
    let r = retention::run(idx, &dir, &RunOptions::default(), day(100_000)).unwrap();
    assert!(r.expired.is_empty(), "{r:?}");
}

#[test]
fn retention_on_sqlite() {
    let tmp = tempfile::tempdir().unwrap();
    retention_suite(Arc::new(
        SqliteIndex::open(&tmp.path().join("index.sqlite3")).unwrap(),
    ));
}

#[test]
fn retention_on_postgresql() {
    let url = postgres::new_database("jitrec_retention").unwrap();
    retention_suite(Arc::from(jitrec_player::index::open(&url).unwrap()));
}

fn player(args: &[&str], bucket: &Path, index: &Path) -> Command {
    let mut c = Command::new(PLAYER);
    c.args(args)
        .arg("--bucket-dir")
        .arg(bucket)
        .arg("--index")
        .arg(index)
        .env("RUST_LOG", "warn")
        .stdin(Stdio::null());
    c
}

#[test]
fn a_retention_job_killed_half_way_leaves_nothing_the_next_run_does_not_finish() {
    let tmp = tempfile::tempdir().unwrap();
    let bucket = tmp.path().join("bucket");
    let index_path = tmp.path().join("index.sqlite3");
    let b = TestBucket::new(&bucket);
    let sessions: Vec<StoredSession> = (1..=40)
        .map(|n| session(n, "acme", "berlin", "ws-1"))
        .collect();
    for s in &sessions {
        put(&b, s, true);
    }
    let index: Arc<dyn Index> = Arc::new(SqliteIndex::open(&index_path).unwrap());
    let src: Arc<dyn BucketReader> = Arc::new(DirBucket::new(&bucket));
    index_all(&src, &index);
    retention::init(index.as_ref()).unwrap();
    // 0 days: expired as soon as the player has seen them closed (the job runs on the real clock).
    retention::set_policy(index.as_ref(), Level::Global, "", Some(0), "t").unwrap();

    // 480 objects at 150 per second: about 3 s of work, killed somewhere in the middle.
    let mut job = player(
        &["retention", "run", "--max-objects-per-sec", "150"],
        &bucket,
        &index_path,
    )
    .stdout(Stdio::null())
    .spawn()
    .map(jitrec_tests::child::Reaped)
    .unwrap();
    let started = Instant::now();
    let kill_after = 3 + rand::random::<u64>() % 10;
    loop {
        let n = retention::deletion_log(index.as_ref(), 100).unwrap().len() as u64;
        if n >= kill_after {
            break;
        }
        assert!(started.elapsed() < LIMIT, "the job made no progress");
        assert!(
            job.try_wait().unwrap().is_none(),
            "the job ended before it was killed"
        );
        std::thread::sleep(Duration::from_millis(5));
    }
    rustix::process::kill_process(
        rustix::process::Pid::from_raw(job.id() as i32).unwrap(),
        rustix::process::Signal::KILL,
    )
    .unwrap();
    job.wait().unwrap();
    let log = retention::deletion_log(index.as_ref(), 100).unwrap();
    let deleting = log.iter().filter(|d| d.state == "deleting").count();
    eprintln!(
        "killed with {} sessions logged, {deleting} of them unfinished",
        log.len()
    );
    assert!(log.len() < 40, "the job finished before it was killed");

    // The indexer running meanwhile does not resurrect a half-deleted session.
    index_all(&src, &index);

    // The next run finishes everything: nothing orphaned in bucket or index.
    let out = player(&["retention", "run"], &bucket, &index_path)
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{text}");
    eprintln!("{text}");
    let dir = DirBucket::new(&bucket);
    assert!(
        dir.list_sessions(None).unwrap().is_empty(),
        "objects left behind"
    );
    assert_eq!(
        index.counts().unwrap().iter().map(|(_, n)| n).sum::<u64>(),
        0
    );
    let log = retention::deletion_log(index.as_ref(), 100).unwrap();
    assert_eq!(log.len(), 40);
    assert!(log.iter().all(|d| d.state == "deleted"), "{log:?}");
    // Objects of a session whose deletion was resumed are counted once, as first listed.
    assert_eq!(log.iter().map(|d| d.objects).sum::<u64>(), 40 * OBJECTS);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn expired_sessions_are_deleted_from_seaweedfs() {
    let bucket = seaweed::new_bucket("retention").await.unwrap();
    let srv = seaweed::server();
    let config = seaweed::config(&srv.endpoint, &bucket);
    let store = S3Bucket::new(config.clone(), tokio::runtime::Handle::current());
    let keep = session(1, "acme", "berlin", "ws-keep");
    let expire = session(2, "acme", "berlin", "ws-old");
    for s in [&keep, &expire] {
        upload(&store, s).await;
    }
    let s3 = Arc::new(S3Bucket::new(config, tokio::runtime::Handle::current()));
    let src: Arc<dyn BucketReader> = s3.clone();
    let tmp = tempfile::tempdir().unwrap();
    let index: Arc<dyn Index> =
        Arc::new(SqliteIndex::open(&tmp.path().join("index.sqlite3")).unwrap());
    tokio::task::block_in_place(|| {
        index_all(&src, &index);
        retention::init(index.as_ref()).unwrap();
        retention::set_policy(index.as_ref(), Level::Global, "", None, "t").unwrap();
        retention::set_policy(index.as_ref(), Level::Computer, "ws-old", Some(3), "t").unwrap();
        let r = retention::run(
            index.as_ref(),
            s3.as_ref() as &dyn BucketAdmin,
            &RunOptions {
                batch: 5,
                ..RunOptions::default()
            },
            day(4),
        )
        .unwrap();
        assert_eq!(r.expired.len(), 1, "{r:?}");
        assert_eq!(r.objects_deleted, OBJECTS);
        assert!(
            s3.list(&ObjectKey::session_prefix(id(&expire)))
                .unwrap()
                .is_empty()
        );
        assert_eq!(
            s3.list(&ObjectKey::session_prefix(id(&keep)))
                .unwrap()
                .len() as u64,
            OBJECTS
        );
        assert!(index.session(id(&expire)).unwrap().is_none());
        assert!(index.session(id(&keep)).unwrap().is_some());
    });
}

/// A fresh SeaweedFS bucket with Object Lock enabled: its name, settings, and a store with the
/// owner's credentials.
async fn object_lock_bucket(
    prefix: &str,
) -> (String, jitrec_bucket::S3Config, jitrec_bucket::S3Bucket) {
    let srv = seaweed::server();
    let name = format!("{prefix}-{}-{}", std::process::id(), rand::random::<u32>());
    let config = seaweed::config(&srv.endpoint, &name);
    let admin = S3Bucket::new(config.clone(), tokio::runtime::Handle::current());
    admin
        .client()
        .create_bucket()
        .bucket(&name)
        .object_lock_enabled_for_bucket(true)
        .send()
        .await
        .unwrap();
    (name, config, admin)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_object_lock_a_locked_version_cannot_be_deleted_even_by_the_bucket_owner() {
    let (name, mut config, admin) = object_lock_bucket("locked").await;
    config.object_lock = Some(jitrec_bucket::ObjectLock {
        compliance: true,
        days: 1,
    });
    let store = S3Bucket::new(config, tokio::runtime::Handle::current());
    let s = session(1, "acme", "berlin", "ws-locked");
    let key = ObjectKey::SessionHeader((id(&s)).into()).to_string();
    {
        use jitrec_bucket::BucketWriter;
        store
            .put(&key, s.header.clone().into(), "application/json")
            .await
            .unwrap();
    }
    let head = admin
        .client()
        .head_object()
        .bucket(&name)
        .key(&key)
        .send()
        .await
        .unwrap();
    assert_eq!(
        head.object_lock_mode(),
        Some(&aws_sdk_s3::types::ObjectLockMode::Compliance)
    );
    let until = head.object_lock_retain_until_date().unwrap().secs();
    let in_a_day = Utc::now().timestamp() + 86_400;
    assert!((until - in_a_day).abs() < 600, "retain until {until}");
    let version = head.version_id().unwrap().to_owned();
    // The bucket's owner (the admin credentials) asks the server to delete that version.
    let refused = admin
        .client()
        .delete_object()
        .bucket(&name)
        .key(&key)
        .version_id(&version)
        .send()
        .await;
    assert!(
        refused.is_err(),
        "a locked version was deleted: {refused:?}"
    );
    // It is still there.
    let got = admin
        .client()
        .get_object()
        .bucket(&name)
        .key(&key)
        .version_id(&version)
        .send()
        .await
        .unwrap();
    let body = got.body.collect().await.unwrap().into_bytes();
    assert_eq!(body.as_ref(), s.header.as_slice());
}

async fn upload(store: &S3Bucket, s: &StoredSession) {
    use jitrec_bucket::BucketWriter;
    for (k, v) in session_objects(s) {
        store
            .put(&k.to_string(), v.into(), k.content_type())
            .await
            .unwrap();
    }
}

/// The S3 legal hold status of every object of `s`, read back with GetObjectLegalHold (`None`:
/// the server reports no hold at all).
async fn hold_statuses(admin: &S3Bucket, bucket: &str, s: &StoredSession) -> Vec<Option<String>> {
    let mut out = Vec::new();
    for (k, _) in session_objects(s) {
        let r = admin
            .client()
            .get_object_legal_hold()
            .bucket(bucket)
            .key(k.to_string())
            .send()
            .await;
        out.push(match r {
            Ok(o) => o
                .legal_hold()
                .and_then(|h| h.status())
                .map(|s| s.as_str().to_owned()),
            Err(_) => None,
        });
    }
    out
}

/// A direct DeleteObject of the current version of `key`, with the bucket owner's credentials.
async fn delete_version(admin: &S3Bucket, bucket: &str, key: &ObjectKey) -> bool {
    let version = admin
        .client()
        .head_object()
        .bucket(bucket)
        .key(key.to_string())
        .send()
        .await
        .unwrap()
        .version_id()
        .unwrap()
        .to_owned();
    admin
        .client()
        .delete_object()
        .bucket(bucket)
        .key(key.to_string())
        .version_id(version)
        .send()
        .await
        .is_ok()
}

/// `jitrec-player ARGS --s3-bucket BUCKET --index INDEX` against the test server.
pub(crate) fn player_s3(args: &[&str], bucket: &str, index: &Path) -> Command {
    let mut c = Command::new(PLAYER);
    c.args(args)
        .args([
            "--s3-bucket",
            bucket,
            "--s3-endpoint",
            &seaweed::server().endpoint,
        ])
        .arg("--index")
        .arg(index)
        .env("AWS_ACCESS_KEY_ID", seaweed::ACCESS_KEY)
        .env("AWS_SECRET_ACCESS_KEY", seaweed::SECRET_KEY)
        .env("RUST_LOG", "warn")
        .stdin(Stdio::null());
    c
}

/// `jitrec-player ARGS --index INDEX` (commands that do not read the bucket).
fn player_index(args: &[&str], index: &Path) -> Command {
    let mut c = Command::new(PLAYER);
    c.args(args)
        .arg("--index")
        .arg(index)
        .env("RUST_LOG", "warn")
        .stdin(Stdio::null());
    c
}

/// Runs `c`; its output, which must be a success.
pub(crate) fn ok(mut c: Command) -> String {
    let out = c.output().unwrap();
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(out.status.success(), "{c:?}: {text}");
    text
}

/// `jitrec-player serve` on the bucket (with `extra` arguments), with a signed-in admin: its
/// address, cookie and CSRF token. The process is killed when the guard drops.
pub(crate) fn serve_signed_in(
    bucket: &str,
    index: &Path,
    extra: &[&str],
) -> (
    jitrec_tests::child::Reaped,
    std::net::SocketAddr,
    String,
    String,
) {
    use jitrec_tests::http;
    use std::io::Write;
    let (user, password) = ("holder", "correct horse battery");
    let mut add = player_index(&["user", "add", user, "--role", "admin"], index)
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .spawn()
        .unwrap();
    writeln!(add.stdin.take().unwrap(), "{password}").unwrap();
    assert!(add.wait().unwrap().success());
    let mut served = jitrec_tests::child::serve_http(
        |addr| {
            let listen = addr.to_string();
            let mut args = vec!["serve", "--listen", &listen, "--retention-every", "0"];
            args.extend_from_slice(extra);
            let mut c = player_s3(&args, bucket, index);
            c.stdout(Stdio::null());
            c
        },
        LIMIT,
    );
    served.wait_ok("/login", LIMIT);
    let addr = served.addr;
    let login = http::request(
        addr,
        "POST",
        "/api/login",
        &[("Content-Type", "application/json")],
        serde_json::json!({"user": user, "password": password})
            .to_string()
            .as_bytes(),
    )
    .unwrap();
    assert_eq!(login.status, 200, "{}", login.text());
    let cookie = login
        .header("set-cookie")
        .and_then(|c| c.split(';').next())
        .unwrap()
        .to_owned();
    let csrf = login.json().unwrap()["csrf"].as_str().unwrap().to_owned();
    (served.child, addr, cookie, csrf)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_legal_hold_from_the_command_line_or_the_report_view_holds_every_object_in_the_bucket() {
    let (name, _, admin) = object_lock_bucket("held").await;
    let tmp = tempfile::tempdir().unwrap();
    let index = tmp.path().join("index.sqlite3");
    let on = vec![Some("ON".to_owned()); OBJECTS as usize];
    let off = vec![Some("OFF".to_owned()); OBJECTS as usize];

    // The command line. Uploaded without a retention period: only the legal hold protects it.
    let by_cli = session(1, "acme", "berlin", "ws-held");
    upload(&admin, &by_cli).await;
    let sid = id(&by_cli).to_string();
    let text = tokio::task::block_in_place(|| {
        ok(player_s3(
            &[
                "retention",
                "hold",
                &sid,
                "--reason",
                "LIT-7",
                "--by",
                "legal",
            ],
            &name,
            &index,
        ))
    });
    assert!(text.contains("under S3 legal hold"), "{text}");
    assert_eq!(hold_statuses(&admin, &name, &by_cli).await, on);
    let header = ObjectKey::SessionHeader((id(&by_cli)).into());
    assert!(
        !delete_version(&admin, &name, &header).await,
        "a held version was deleted by the bucket's owner"
    );
    let text = tokio::task::block_in_place(|| {
        ok(player_s3(&["retention", "release", &sid], &name, &index))
    });
    assert!(text.contains("released"), "{text}");
    assert_eq!(hold_statuses(&admin, &name, &by_cli).await, off);
    assert!(
        delete_version(&admin, &name, &header).await,
        "a released version can be deleted"
    );

    // The report view's admin API, as its page calls it.
    let by_web = session(2, "acme", "berlin", "ws-held");
    upload(&admin, &by_web).await;
    let sid = id(&by_web).to_string();
    let (_player, addr, cookie, csrf) =
        tokio::task::block_in_place(|| serve_signed_in(&name, &index, &[]));
    let auth = [
        ("Cookie", cookie.as_str()),
        ("X-CSRF-Token", csrf.as_str()),
        ("Content-Type", "application/json"),
    ];
    let path = format!("/api/sessions/{sid}/hold");
    let r = tokio::task::block_in_place(|| {
        jitrec_tests::http::request(addr, "POST", &path, &auth, br#"{"reason": "LIT-8"}"#)
    })
    .unwrap();
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(r.json().unwrap()["enforced_by"], "bucket", "{}", r.text());
    assert_eq!(hold_statuses(&admin, &name, &by_web).await, on);
    let chunk = ObjectKey::ChunkVideo((id(&by_web)).into(), 1);
    assert!(
        !delete_version(&admin, &name, &chunk).await,
        "a held chunk was deleted"
    );
    let r = tokio::task::block_in_place(|| {
        jitrec_tests::http::request(addr, "DELETE", &path, &auth, b"")
    })
    .unwrap();
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(r.json().unwrap()["released"], true, "{}", r.text());
    assert_eq!(hold_statuses(&admin, &name, &by_web).await, off);
    assert!(delete_version(&admin, &name, &chunk).await);

    // A bucket without Object Lock: the hold is placed, and the answer says the retention job
    // alone enforces it.
    let plain = seaweed::new_bucket("plain").await.unwrap();
    let plain_store = S3Bucket::new(
        seaweed::config(&seaweed::server().endpoint, &plain),
        tokio::runtime::Handle::current(),
    );
    let s = session(3, "acme", "berlin", "ws-plain");
    upload(&plain_store, &s).await;
    let text = tokio::task::block_in_place(|| {
        ok(player_s3(
            &[
                "retention",
                "hold",
                &id(&s).to_string(),
                "--reason",
                "LIT-9",
                "--by",
                "legal",
            ],
            &plain,
            &index,
        ))
    });
    assert!(text.contains("only the player's retention job"), "{text}");
    let listed = tokio::task::block_in_place(|| ok(player_index(&["retention", "list"], &index)));
    assert!(listed.contains("LIT-9"), "{listed}");
}

/// `jitrec-player ARGS --bucket-dir BUCKET --index SPEC` (SPEC: a SQLite path or a URL).
fn player_at(args: &[&str], bucket: &Path, index: &str) -> Command {
    let mut c = Command::new(PLAYER);
    c.args(args)
        .arg("--bucket-dir")
        .arg(bucket)
        .args(["--index", index])
        .env("RUST_LOG", "warn")
        .stdin(Stdio::null());
    c
}

/// Under a 0-day policy, through the real program: a clean session goes at the first run; a
/// tampered one, one with a gap and one whose close record claims it ended in 1970 stay until an
/// admin acknowledges each (audited), and a policy longer than the calendar is refused.
/// `jitrec-player retention ack SESSION --status STATUS --note NOTE --by BY`.
fn ack(index: &str, session: SessionId, status: &str, note: &str, by: &str) -> Command {
    crate::door::player(
        &[
            "retention",
            "ack",
            &session.to_string(),
            "--status",
            status,
            "--note",
            note,
            "--by",
            by,
        ],
        index,
    )
}

fn flagged_sessions_wait_for_review(index: &str) {
    let tmp = tempfile::tempdir().unwrap();
    let b = TestBucket::new(tmp.path());
    let clean = session(11, "acme", "berlin", "ws-1");
    let tampered = session(12, "acme", "berlin", "ws-1");
    let gapped = session(13, "acme", "berlin", "ws-1");
    let mut forged = session(14, "acme", "berlin", "ws-1");
    let mut close: serde_json::Value = serde_json::from_slice(&forged.close).unwrap();
    close["ended_at"] = serde_json::json!("1970-01-01T00:00:00Z");
    forged.close = serde_json::to_vec(&close).unwrap();
    for s in [&clean, &tampered, &forged] {
        put(&b, s, true);
    }
    b.tamper(&ObjectKey::ChunkVideo(id(&tampered).into(), 1), b"replaced")
        .unwrap();
    put(&b, &gapped, true);
    for k in [
        ObjectKey::ChunkVideo(id(&gapped).into(), 1),
        ObjectKey::ChunkEvents(id(&gapped).into(), 1),
        ObjectKey::ChunkManifest(id(&gapped).into(), 1),
    ] {
        std::fs::remove_file(tmp.path().join(k.to_string())).unwrap();
    }
    let bucket = tmp.path();
    ok(player_at(&["reindex"], bucket, index));
    let status = ok(crate::door::player(&["status"], index));
    assert!(
        status.contains("tampered") && status.contains("gap"),
        "{status}"
    );

    // 4294967295 days is refused with a reason; "forever" is how to say it.
    let out = crate::door::player(
        &[
            "retention",
            "set",
            "--level",
            "global",
            "--keep-days",
            "4294967295",
        ],
        index,
    )
    .output()
    .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("more than 36500") && err.contains("forever"),
        "{err}"
    );

    ok(crate::door::player(
        &["retention", "set", "--level", "global", "--keep-days", "0"],
        index,
    ));
    let run = ok(player_at(&["retention", "run"], bucket, index));
    assert!(run.contains(&format!("deleted {}", id(&clean))), "{run}");
    assert!(run.contains("3 awaiting review"), "{run}");
    for s in [&tampered, &gapped, &forged] {
        assert!(!run.contains(&id(s).to_string()), "{run}");
        assert!(
            tmp.path()
                .join(ObjectKey::SessionHeader(id(s).into()).to_string())
                .exists()
        );
    }
    let review = ok(crate::door::player(&["retention", "review"], index));
    for s in [&tampered, &gapped, &forged] {
        assert!(review.contains(&id(s).to_string()), "{review}");
    }
    // A clean session has nothing to acknowledge.
    let out = ack(index, id(&clean), "tampered", "n", "x")
        .output()
        .unwrap();
    assert!(!out.status.success());
    // An acknowledgement names the status reviewed: a look at a "gap" does not cover a session
    // that is tampered, nor the other way round.
    let out = ack(index, id(&gapped), "tampered", "n", "x")
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("look at it again"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );

    // Acknowledged, the tampered one may go; the others stay.
    ok(ack(
        index,
        id(&tampered),
        "tampered",
        "INC-9 closed, copy kept in the case file",
        "alice",
    ));
    let run = ok(player_at(&["retention", "run"], bucket, index));
    assert!(run.contains(&format!("deleted {}", id(&tampered))), "{run}");
    assert!(run.contains("2 awaiting review"), "{run}");
    let review = ok(crate::door::player(&["retention", "review"], index));
    assert!(!review.contains(&id(&tampered).to_string()), "{review}");
    // The other two, acknowledged as what they are, go at the next run.
    for (s, status) in [(&gapped, "gap"), (&forged, "tampered")] {
        ok(ack(index, id(s), status, "reviewed", "alice"));
    }
    let run = ok(player_at(&["retention", "run"], bucket, index));
    assert!(run.contains("0 awaiting review"), "{run}");
    for s in [&gapped, &forged] {
        assert!(run.contains(&format!("deleted {}", id(s))), "{run}");
    }
    let idx = jitrec_player::index::open(index).unwrap();
    let audit = jitrec_player::auth::audit_log(idx.as_ref(), 50, None).unwrap();
    assert!(
        audit.iter().any(|e| e.action == "retention_ack"
            && e.user == "alice"
            && e.target == id(&tampered).to_string()),
        "{audit:?}"
    );
}

#[test]
fn flagged_sessions_wait_for_review_on_sqlite() {
    let tmp = tempfile::tempdir().unwrap();
    flagged_sessions_wait_for_review(&tmp.path().join("index.sqlite3").display().to_string());
}

#[test]
fn flagged_sessions_wait_for_review_on_postgresql() {
    flagged_sessions_wait_for_review(&postgres::new_database("jitrec_review").unwrap());
}

/// `serve`'s retention schedule under supervision: a policy row the program cannot read stops
/// the job (nothing is deleted under a broader policy instead), the failure is in `/api/status`,
/// and the schedule goes on: once the policy is set again, the next run succeeds.
#[test]
fn the_retention_schedule_reports_its_failures_and_goes_on() {
    use jitrec_tests::http;
    let tmp = tempfile::tempdir().unwrap();
    let bucket = tmp.path().join("bucket");
    std::fs::create_dir_all(&bucket).unwrap();
    let index = tmp.path().join("index.sqlite3").display().to_string();
    let b = TestBucket::new(&bucket);
    let s = session(21, "acme", "berlin", "ws-2");
    put(&b, &s, true);
    ok(player_at(&["reindex"], &bucket, &index));
    ok(crate::door::player(
        &["retention", "set", "--level", "global", "--keep-days", "0"],
        &index,
    ));
    ok(crate::door::player(
        &[
            "retention",
            "set",
            "--level",
            "computer",
            "--name",
            "ws-2",
            "--keep-days",
            "3650",
        ],
        &index,
    ));
    // The computer's policy row is damaged (as a bad restore or a hand edit might): read as
    // missing, the global 0-day policy would delete the session.
    jitrec_player::index::open(&index)
        .unwrap()
        .exec(
            "UPDATE retention_policies SET keep_days = 99999999999 WHERE level = 'computer'",
            &[],
        )
        .unwrap();
    let mut add = crate::door::player(&["user", "add", "ops", "--role", "admin"], &index)
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .spawn()
        .unwrap();
    {
        use std::io::Write;
        writeln!(add.stdin.take().unwrap(), "correct horse battery").unwrap();
    }
    assert!(add.wait().unwrap().success());
    let mut served = jitrec_tests::child::serve_http(
        |addr| {
            let mut c = player_at(
                &[
                    "serve",
                    "--listen",
                    &addr.to_string(),
                    "--retention-every",
                    "1",
                ],
                &bucket,
                &index,
            );
            c.stdout(Stdio::null());
            c
        },
        LIMIT,
    );
    served.wait_ok("/login", LIMIT);
    let addr = served.addr;
    let login = http::request(
        addr,
        "POST",
        "/api/login",
        &[("Content-Type", "application/json")],
        br#"{"user": "ops", "password": "correct horse battery"}"#,
    )
    .unwrap();
    assert_eq!(login.status, 200);
    let cookie = login
        .header("set-cookie")
        .and_then(|c| c.split(';').next())
        .unwrap()
        .to_owned();
    let job = || {
        let r = http::request(addr, "GET", "/api/status", &[("Cookie", &cookie)], &[]).unwrap();
        r.json().unwrap()["retention"].clone()
    };
    let started = Instant::now();
    let failed = loop {
        let j = job();
        if j["last_error"].is_string() {
            break j;
        }
        assert!(started.elapsed() < LIMIT, "no failed run reported: {j}");
        std::thread::sleep(Duration::from_millis(100));
    };
    assert!(
        failed["last_error"]
            .as_str()
            .unwrap()
            .contains("unreadable"),
        "{failed}"
    );
    assert!(
        bucket
            .join(ObjectKey::SessionHeader(id(&s).into()).to_string())
            .exists(),
        "nothing is deleted while a policy cannot be read"
    );
    // Set again, the schedule's next run succeeds (and the 10-year policy keeps the session).
    ok(crate::door::player(
        &[
            "retention",
            "set",
            "--level",
            "computer",
            "--name",
            "ws-2",
            "--keep-days",
            "3650",
        ],
        &index,
    ));
    let started = Instant::now();
    loop {
        let j = job();
        if j["last_error"].is_null() && j["runs"].as_u64() > failed["runs"].as_u64() {
            break;
        }
        assert!(
            started.elapsed() < LIMIT,
            "the schedule did not recover: {j}"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    assert!(
        bucket
            .join(ObjectKey::SessionHeader(id(&s).into()).to_string())
            .exists()
    );
}
