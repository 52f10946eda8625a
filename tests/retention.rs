//! Retention: level precedence, expiry, legal hold, dry run and the deletion log on both index
//! backends; the real `jitrec-player retention run` SIGKILLed half-way and run again (nothing
//! orphaned in bucket or index); deletion from SeaweedFS.

use std::path::Path;
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use chrono::{DateTime, Duration as Span, Utc};
use jitrec_format::fixtures::{self, StoredSession};
use jitrec_format::{ObjectKey, SessionHeader, SessionId};
use jitrec_player::index::Index;
use jitrec_player::index::sqlite::SqliteIndex;
use jitrec_player::indexer::{Indexer, IndexerConfig};
use jitrec_player::retention::{self, Level, RunOptions};
use jitrec_player::store::{LocalDir, ObjectDeleter, ObjectSource, S3Source};
use jitrec_tests::{DirBucket, postgres, seaweed};

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

fn put(b: &DirBucket, s: &StoredSession, close: bool) {
    let id = id(s);
    b.put(&ObjectKey::SessionHeader(id), &s.header).unwrap();
    b.put(&ObjectKey::Init(id, 0), &fixtures::init_bytes(0))
        .unwrap();
    for (seq, (m, v, e)) in s.chunks.iter().enumerate() {
        b.put(&ObjectKey::ChunkVideo(id, seq as u64), v).unwrap();
        b.put(&ObjectKey::ChunkEvents(id, seq as u64), e).unwrap();
        b.put(&ObjectKey::ChunkManifest(id, seq as u64), m).unwrap();
    }
    if close {
        b.put(&ObjectKey::SessionClosed(id), &s.close).unwrap();
    }
}

fn index_all(src: &Arc<dyn ObjectSource>, index: &Arc<dyn Index>) {
    let mut ix =
        Indexer::new(Arc::clone(src), Arc::clone(index), IndexerConfig::default()).unwrap();
    ix.pass().unwrap();
}

/// The fixture sessions end 6 s after they start, `n` minutes after t0.
fn day(d: i64) -> DateTime<Utc> {
    fixtures::t0() + Span::days(d) + Span::hours(1)
}

fn retention_suite(index: Arc<dyn Index>) {
    let tmp = tempfile::tempdir().unwrap();
    let b = DirBucket::new(tmp.path());
    let dir = LocalDir::new(tmp.path());
    let src: Arc<dyn ObjectSource> = Arc::new(dir.clone());
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
    retention::hold(idx, id(&held), "litigation LIT-7", "legal@example.com").unwrap();

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
    assert!(retention::release(idx, id(&held)).unwrap());
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
    let b = DirBucket::new(&bucket);
    let sessions: Vec<StoredSession> = (1..=40)
        .map(|n| session(n, "acme", "berlin", "ws-1"))
        .collect();
    for s in &sessions {
        put(&b, s, true);
    }
    let index: Arc<dyn Index> = Arc::new(SqliteIndex::open(&index_path).unwrap());
    let src: Arc<dyn ObjectSource> = Arc::new(LocalDir::new(&bucket));
    index_all(&src, &index);
    retention::init(index.as_ref()).unwrap();
    retention::set_policy(index.as_ref(), Level::Global, "", Some(1), "t").unwrap();

    // 480 objects at 150 per second: about 3 s of work, killed somewhere in the middle.
    let mut job = player(
        &["retention", "run", "--max-objects-per-sec", "150"],
        &bucket,
        &index_path,
    )
    .stdout(Stdio::null())
    .spawn()
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
    let dir = LocalDir::new(&bucket);
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
    let store = jitrec_uploader::S3Store::new(config.clone());
    let keep = session(1, "acme", "berlin", "ws-keep");
    let expire = session(2, "acme", "berlin", "ws-old");
    for (s, close) in [(&keep, true), (&expire, true)] {
        let id = id(s);
        let mut objects = vec![
            (ObjectKey::SessionHeader(id), s.header.clone()),
            (ObjectKey::Init(id, 0), fixtures::init_bytes(0)),
        ];
        for (seq, (m, v, e)) in s.chunks.iter().enumerate() {
            objects.push((ObjectKey::ChunkVideo(id, seq as u64), v.clone()));
            objects.push((ObjectKey::ChunkEvents(id, seq as u64), e.clone()));
            objects.push((ObjectKey::ChunkManifest(id, seq as u64), m.clone()));
        }
        if close {
            objects.push((ObjectKey::SessionClosed(id), s.close.clone()));
        }
        for (k, v) in objects {
            use jitrec_uploader::ObjectStore;
            store
                .put(&k.to_string(), v.into(), k.content_type())
                .await
                .unwrap();
        }
    }
    let s3 = Arc::new(S3Source::new(config, tokio::runtime::Handle::current()));
    let src: Arc<dyn ObjectSource> = s3.clone();
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
            s3.as_ref() as &dyn ObjectDeleter,
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
) -> (String, jitrec_uploader::S3Config, jitrec_uploader::S3Store) {
    let srv = seaweed::server();
    let name = format!("{prefix}-{}-{}", std::process::id(), rand::random::<u32>());
    let config = seaweed::config(&srv.endpoint, &name);
    let admin = jitrec_uploader::S3Store::new(config.clone());
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
    config.object_lock = Some(jitrec_uploader::ObjectLock {
        compliance: true,
        days: 1,
    });
    let store = jitrec_uploader::S3Store::new(config);
    let s = session(1, "acme", "berlin", "ws-locked");
    let key = ObjectKey::SessionHeader(id(&s)).to_string();
    {
        use jitrec_uploader::ObjectStore;
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

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_legal_hold_also_holds_the_objects_in_an_object_lock_bucket() {
    let srv = seaweed::server();
    let (name, config, admin) = object_lock_bucket("held").await;
    // Uploaded without a retention period: only the legal hold protects it.
    let s = session(1, "acme", "berlin", "ws-held");
    let key = ObjectKey::SessionHeader(id(&s)).to_string();
    {
        use jitrec_uploader::ObjectStore;
        admin
            .put(&key, s.header.clone().into(), "application/json")
            .await
            .unwrap();
    }
    let version = admin
        .client()
        .head_object()
        .bucket(&name)
        .key(&key)
        .send()
        .await
        .unwrap()
        .version_id()
        .unwrap()
        .to_owned();
    let s3 = S3Source::new(config, tokio::runtime::Handle::current());
    let held = tokio::task::block_in_place(|| retention::hold_objects(&s3, id(&s), true)).unwrap();
    assert!(held, "the bucket has Object Lock: the objects must be held");
    let delete = || {
        admin
            .client()
            .delete_object()
            .bucket(&name)
            .key(&key)
            .version_id(&version)
            .send()
    };
    assert!(delete().await.is_err(), "a held version was deleted");
    let released =
        tokio::task::block_in_place(|| retention::hold_objects(&s3, id(&s), false)).unwrap();
    assert!(released);
    delete().await.expect("a released version can be deleted");

    // A bucket without Object Lock says so instead of failing: the job alone enforces holds.
    let plain = seaweed::new_bucket("plain").await.unwrap();
    let plain_store = jitrec_uploader::S3Store::new(seaweed::config(&srv.endpoint, &plain));
    {
        use jitrec_uploader::ObjectStore;
        plain_store
            .put(&key, s.header.clone().into(), "application/json")
            .await
            .unwrap();
    }
    let s3 = S3Source::new(
        seaweed::config(&srv.endpoint, &plain),
        tokio::runtime::Handle::current(),
    );
    let held = tokio::task::block_in_place(|| retention::hold_objects(&s3, id(&s), true)).unwrap();
    assert!(!held);
}
