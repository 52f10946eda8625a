//! The player: the indexer and both index backends over buckets with good and bad sessions, and
//! a real session recorded on Xvfb, uploaded to SeaweedFS and to the local store, served over
//! the HTTP API and exported to MP4.

use std::net::SocketAddr;
use std::path::Path;
use std::process::Command;
use std::sync::Arc;
use std::time::{Duration, Instant};

use chrono::Duration as Span;
use jitrec_bucket::{BucketReader, DirBucket, S3Bucket};
use jitrec_format::fixtures::{self, StoredSession};
use jitrec_format::{
    EndReason, Event, EventKind, MediaTime, ObjectKey, ProcessStart, SessionClose, SessionHeader,
    SessionId, UserRef,
};
use jitrec_player::index::{Index, Query, sqlite::SqliteIndex};
use jitrec_player::indexer::{Indexer, IndexerConfig, IndexerHandle};
use jitrec_player::scan::Status;
use jitrec_tests::{TestBucket, http, postgres, seaweed};

/// Generous limits for conditions awaited on a loaded CI machine.
const LIMIT: Duration = Duration::from_secs(120);

/// What a test session looks like: who, where, which command its events carry.
struct Spec {
    n: u64,
    user: &'static str,
    host: &'static str,
    company: &'static str,
    location: &'static str,
    command: &'static str,
    chunks: u64,
}

fn build(spec: &Spec) -> StoredSession {
    let id = fixtures::session_id(spec.n);
    let mut h: SessionHeader = fixtures::header(id);
    h.user.name = spec.user.into();
    h.machine.hostname = spec.host.into();
    h.labels.company = Some(spec.company.into());
    h.labels.location = Some(spec.location.into());
    h.labels.computer = Some(spec.host.into());
    // One session per minute from t0, so time filters can pick ranges.
    h.started_at = fixtures::t0() + Span::minutes(spec.n as i64);
    let (user, command, started) = (spec.user, spec.command, h.started_at);
    fixtures::stored_session_with(h, spec.chunks, move |seq| {
        let at = seq * 2_000_000 + 500_000;
        vec![Event {
            media_us: MediaTime::from_micros(at),
            utc: started + Span::microseconds(at as i64),
            event: EventKind::ProcessStart(ProcessStart {
                pid: 100 + seq as u32,
                ppid: 1,
                user: UserRef {
                    name: user.into(),
                    id: "1000".into(),
                },
                exe: "/usr/bin/sh".into(),
                command_line: format!("{command} {seq}"),
                elevated: true,
                in_session: None,
            }),
        }]
    })
}

/// Writes `s` to the bucket: header, init, the chunks `chunks`, and the close record if asked.
fn put(b: &TestBucket, s: &StoredSession, chunks: std::ops::Range<u64>, close: bool) {
    let id = SessionHeader::from_bytes(&s.header).unwrap().session_id;
    b.put(&ObjectKey::SessionHeader(id.into()), &s.header)
        .unwrap();
    b.put(&ObjectKey::Init(id.into(), 0), &fixtures::init_bytes(0))
        .unwrap();
    for seq in chunks {
        let (m, v, e) = &s.chunks[seq as usize];
        b.put(&ObjectKey::ChunkVideo(id.into(), seq), v).unwrap();
        b.put(&ObjectKey::ChunkEvents(id.into(), seq), e).unwrap();
        b.put(&ObjectKey::ChunkManifest(id.into(), seq), m).unwrap();
    }
    if close {
        b.put(&ObjectKey::SessionClosed(id.into()), &s.close)
            .unwrap();
    }
}

fn path(root: &Path, k: ObjectKey) -> std::path::PathBuf {
    root.join(k.to_string())
}

fn ids(page: &jitrec_player::index::Page) -> Vec<SessionId> {
    page.sessions.iter().map(|l| l.session.id).collect()
}

fn query() -> Query {
    Query {
        limit: 50,
        ..Query::default()
    }
}

/// Every check of the indexer and the index, run against a fresh index of each backend.
fn index_suite(open: &dyn Fn() -> Arc<dyn Index>) {
    let tmp = tempfile::tempdir().unwrap();
    let root = tmp.path();
    let b = TestBucket::new(root);
    let spec = |n, user, host, company, location, command, chunks| Spec {
        n,
        user,
        host,
        company,
        location,
        command,
        chunks,
    };
    let complete = build(&spec(
        1,
        "alice",
        "ws-0421",
        "acme",
        "berlin",
        "useradd temp",
        3,
    ));
    let other = build(&spec(
        2,
        "bob",
        "ws-0007",
        "acme",
        "paris",
        "systemctl restart nginx",
        2,
    ));
    let recording = build(&spec(
        3,
        "carol",
        "ws-0421",
        "globex",
        "oslo",
        "vim /etc/hosts",
        4,
    ));
    let flipped = build(&spec(
        4,
        "alice",
        "ws-0421",
        "acme",
        "berlin",
        "passwd eve",
        3,
    ));
    let missing = build(&spec(
        5,
        "alice",
        "ws-0421",
        "acme",
        "berlin",
        "chmod 600",
        4,
    ));
    let reordered = build(&spec(
        6,
        "alice",
        "ws-0421",
        "acme",
        "berlin",
        "chown root",
        3,
    ));
    let foreign = build(&spec(
        7, "dave", "ws-0099", "initech", "austin", "ls -la", 2,
    ));
    let garbage = build(&spec(
        8, "dave", "ws-0099", "initech", "austin", "cat log", 2,
    ));
    for s in [
        &complete, &other, &flipped, &missing, &reordered, &foreign, &garbage,
    ] {
        put(&b, s, 0..s.chunks.len() as u64, true);
    }
    put(&b, &recording, 0..2, false);
    let id = |s: &StoredSession| SessionHeader::from_bytes(&s.header).unwrap().session_id;
    // Tampering and damage, each in its own session.
    let v = path(root, ObjectKey::ChunkVideo((id(&flipped)).into(), 1));
    let mut bytes = std::fs::read(&v).unwrap();
    bytes[3] ^= 0x20;
    std::fs::write(&v, bytes).unwrap();
    for k in [
        ObjectKey::ChunkVideo((id(&missing)).into(), 2),
        ObjectKey::ChunkEvents((id(&missing)).into(), 2),
        ObjectKey::ChunkManifest((id(&missing)).into(), 2),
    ] {
        std::fs::remove_file(path(root, k)).unwrap();
    }
    let (m0, m1) = (
        path(root, ObjectKey::ChunkManifest((id(&reordered)).into(), 0)),
        path(root, ObjectKey::ChunkManifest((id(&reordered)).into(), 1)),
    );
    let (a, c) = (std::fs::read(&m0).unwrap(), std::fs::read(&m1).unwrap());
    std::fs::write(&m0, c).unwrap();
    std::fs::write(&m1, a).unwrap();
    std::fs::write(
        root.join(format!(
            "{}notes.txt",
            ObjectKey::session_prefix(id(&foreign))
        )),
        b"left by someone",
    )
    .unwrap();
    std::fs::write(
        path(root, ObjectKey::ChunkManifest((id(&garbage)).into(), 1)),
        b"{\"version\": 1, \"garbage",
    )
    .unwrap();
    // A manifest from a future format version, and one whose `prev` link was forged.
    let future = build(&spec(
        11, "frank", "ws-0600", "umbrella", "lima", "whoami", 2,
    ));
    let forged = build(&spec(
        12, "frank", "ws-0600", "umbrella", "lima", "id -u", 3,
    ));
    for s in [&future, &forged] {
        put(&b, s, 0..s.chunks.len() as u64, true);
    }
    let rewrite = |k: ObjectKey, edit: &dyn Fn(&mut serde_json::Value)| {
        let p = path(root, k);
        let mut v: serde_json::Value = serde_json::from_slice(&std::fs::read(&p).unwrap()).unwrap();
        edit(&mut v);
        std::fs::write(&p, serde_json::to_vec(&v).unwrap()).unwrap();
    };
    rewrite(ObjectKey::ChunkManifest((id(&future)).into(), 1), &|v| {
        v["version"] = 3.into()
    });
    rewrite(ObjectKey::ChunkManifest((id(&forged)).into(), 2), &|v| {
        v["prev"] = "00".repeat(32).into();
    });
    std::fs::create_dir_all(root.join("v1/sessions/not-a-session")).unwrap();
    std::fs::write(root.join("v1/sessions/not-a-session/x"), b"x").unwrap();

    let index = open();
    let src: Arc<dyn BucketReader> = Arc::new(DirBucket::new(root));
    let config = IndexerConfig {
        stale_after: Duration::from_secs(3600 * 24 * 365 * 100),
        ..IndexerConfig::default()
    };
    let mut indexer = Indexer::new(Arc::clone(&src), Arc::clone(&index), config.clone()).unwrap();
    indexer.pass().unwrap();

    // Statuses, with the precise problem behind each.
    let row = |s: &StoredSession| index.session(id(s)).unwrap().unwrap();
    let r = row(&complete);
    assert_eq!(r.status, Status::Complete, "{r:?}");
    assert_eq!((r.chunks, r.duration_us), (3, 6_000_000));
    assert_eq!(r.user_name, "alice");
    assert_eq!(r.hostname, "ws-0421");
    assert_eq!(r.company.as_deref(), Some("acme"));
    assert_eq!(r.authorized_by.as_deref(), Some("bob@example.com"));
    assert_eq!(r.end_reason.as_deref(), Some("jit_ended"));
    assert_eq!(r.started_at, fixtures::t0() + Span::minutes(1));
    assert!(r.problems.is_empty());
    assert_eq!(row(&recording).status, Status::Recording);
    let problem = |s: &StoredSession| {
        let r = row(s);
        (
            r.status,
            r.problems
                .first()
                .map(|p| p.message.clone())
                .unwrap_or_default(),
        )
    };
    let (st, msg) = problem(&flipped);
    assert_eq!(st, Status::Tampered);
    assert!(msg.starts_with("chunk 1: video segment: SHA-256"), "{msg}");
    let (st, msg) = problem(&missing);
    assert_eq!(st, Status::Gap);
    assert!(msg.contains("expected chunk 2, found chunk 3"), "{msg}");
    let (st, msg) = problem(&reordered);
    assert_eq!(st, Status::Tampered);
    assert!(
        msg.contains("chunk 0: the manifest stored for it is chunk 1"),
        "{msg}"
    );
    let (st, msg) = problem(&foreign);
    assert_eq!(st, Status::Tampered);
    assert!(
        msg.contains("notes.txt") && msg.contains("outside the bucket layout"),
        "{msg}"
    );
    let (st, msg) = problem(&garbage);
    assert_eq!(st, Status::Tampered);
    assert!(msg.starts_with("chunk 1: "), "{msg}");
    let (st, msg) = problem(&future);
    assert_eq!(st, Status::Tampered);
    assert!(
        msg.contains("chunk 1: chunk manifest: unknown format version 3"),
        "{msg}"
    );
    let (st, msg) = problem(&forged);
    assert_eq!(st, Status::Tampered);
    assert!(msg.starts_with("chunk 2: `prev` is 0000"), "{msg}");
    // The session after a gap is still indexed for playback (chunks 0, 1, 3).
    let seqs: Vec<u64> = index
        .chunks(id(&missing))
        .unwrap()
        .iter()
        .map(|c| c.seq)
        .collect();
    assert_eq!(seqs, [0, 1, 3]);
    let anomalies = indexer.handle().stats().anomalies;
    assert!(
        anomalies.iter().any(|a| a.contains("not-a-session")),
        "{anomalies:?}"
    );

    // Filters, newest first.
    let list = |q: Query| index.list(&q).unwrap();
    let alice = list(Query {
        user: Some("alice".into()),
        ..query()
    });
    assert_eq!(
        ids(&alice),
        [&reordered, &missing, &flipped, &complete].map(id)
    );
    let by_host = list(Query {
        machine: Some("ws-0007".into()),
        ..query()
    });
    assert_eq!(ids(&by_host), [id(&other)]);
    let by_machine_id = list(Query {
        machine: Some("4c4c4544-0042-3510-8048-b4c04f565831".into()),
        ..query()
    });
    assert_eq!(by_machine_id.sessions.len(), 10);
    let labels = list(Query {
        company: Some("acme".into()),
        location: Some("paris".into()),
        ..query()
    });
    assert_eq!(ids(&labels), [id(&other)]);
    let computer = list(Query {
        computer: Some("ws-0099".into()),
        ..query()
    });
    assert_eq!(ids(&computer), [&garbage, &foreign].map(id));
    let window = list(Query {
        from: Some(fixtures::t0() + Span::minutes(3)),
        to: Some(fixtures::t0() + Span::minutes(5)),
        ..query()
    });
    assert_eq!(ids(&window), [&flipped, &recording].map(id));
    let tampered = list(Query {
        status: Some(Status::Tampered),
        ..query()
    });
    assert_eq!(
        ids(&tampered),
        [&forged, &future, &garbage, &foreign, &reordered, &flipped].map(id)
    );

    // Text search over events, with the moment to jump to.
    let found = list(Query {
        text: Some("systemctl restart".into()),
        ..query()
    });
    assert_eq!(ids(&found), [id(&other)]);
    let hits = &found.sessions[0].hits;
    assert_eq!(hits.len(), 2, "{hits:?}");
    assert_eq!(hits[0].media_us, 500_000);
    assert_eq!(hits[1].media_us, 2_500_000);
    assert!(
        hits[0].text.starts_with("systemctl restart nginx 0"),
        "{hits:?}"
    );
    // Words anywhere in a path match; every word must occur; punctuation is not syntax.
    let hosts = list(Query {
        text: Some("/etc/hosts".into()),
        ..query()
    });
    assert_eq!(ids(&hosts), [id(&recording)]);
    let both = list(Query {
        text: Some("useradd 2".into()),
        ..query()
    });
    assert_eq!(ids(&both), [id(&complete)]);
    assert_eq!(both.sessions[0].hits[0].media_us, 4_500_000);
    let none = list(Query {
        text: Some("useradd \"OR\" 9".into()),
        ..query()
    });
    assert!(none.sessions.is_empty());
    let combined = list(Query {
        text: Some("useradd".into()),
        user: Some("bob".into()),
        ..query()
    });
    assert!(combined.sessions.is_empty());

    // Pagination: pages of 3 cover every session once, newest first.
    let mut all = Vec::new();
    let mut after = None;
    loop {
        let p = list(Query {
            limit: 3,
            after,
            ..query()
        });
        assert!(p.sessions.len() <= 3);
        all.extend(ids(&p));
        match p.next {
            Some(n) => after = Some(n),
            None => break,
        }
    }
    let mut expected: Vec<SessionId> = [
        &complete, &other, &recording, &flipped, &missing, &reordered, &foreign, &garbage, &future,
        &forged,
    ]
    .map(id)
    .to_vec();
    expected.sort();
    expected.reverse();
    assert_eq!(all, expected);

    // One session's detail.
    let chunks = index.chunks(id(&complete)).unwrap();
    assert_eq!(chunks.len(), 3);
    assert!(
        chunks
            .iter()
            .all(|c| c.verified && c.init_id == 0 && c.frames == 10)
    );
    let flipped_chunks = index.chunks(id(&flipped)).unwrap();
    assert_eq!(
        flipped_chunks
            .iter()
            .map(|c| c.verified)
            .collect::<Vec<_>>(),
        [true, false, true]
    );
    let knows = |k| index.knows(k).unwrap();
    assert!(knows(ObjectKey::ChunkVideo((id(&complete)).into(), 2)));
    assert!(knows(ObjectKey::Init((id(&complete)).into(), 0)));
    assert!(!knows(ObjectKey::ChunkVideo((id(&complete)).into(), 3)));
    assert!(!knows(ObjectKey::Init((id(&complete)).into(), 1)));
    assert!(!knows(ObjectKey::SessionHeader((id(&complete)).into())));
    let inits = index.inits(id(&complete)).unwrap();
    assert_eq!(
        (inits.len(), inits[0].width, inits[0].codec.as_str()),
        (1, 1920, "avc1.640028")
    );
    let events = index.events(id(&complete)).unwrap();
    assert_eq!(events.len(), 3);
    assert_eq!(events[1].kind, "process_start");
    assert_eq!(events[1].data.value()["command_line"], "useradd temp 1");

    // The recording session goes on: new chunks and the close record are picked up from where
    // the indexer left off, and it becomes complete.
    put(&b, &recording, 2..4, true);
    indexer.pass().unwrap();
    let r = row(&recording);
    assert_eq!((r.status, r.chunks), (Status::Complete, 4), "{r:?}");
    let counts = index.counts().unwrap();
    let count = |s| counts.iter().find(|(x, _)| *x == s).map_or(0, |(_, n)| *n);
    assert_eq!(
        (
            count(Status::Complete),
            count(Status::Gap),
            count(Status::Tampered)
        ),
        (3, 1, 6)
    );

    // Tampering after indexing is found by verify, which records it.
    let v = path(root, ObjectKey::ChunkEvents((id(&complete)).into(), 0));
    let mut bytes = std::fs::read(&v).unwrap();
    let last = bytes.len() - 1;
    bytes[last] ^= 1;
    std::fs::write(&v, bytes).unwrap();
    let report =
        jitrec_player::verify::verify_and_record(src.as_ref(), index.as_ref(), id(&complete))
            .unwrap();
    // Named twice: the bytes are not the ones the player witnessed, and not the manifest's.
    assert!(
        report.problems[0].contains("events.zst: replaced after the player first read it"),
        "{report}"
    );
    assert!(
        report.problems[1].starts_with("chunk 0: events: SHA-256"),
        "{report}"
    );
    let (st, msg) = problem(&complete);
    assert_eq!(st, Status::Tampered);
    assert!(
        msg.contains("replaced after the player first read it"),
        "{msg}"
    );

    // A session without a close record and nothing new for longer than the timeout is
    // interrupted; one closed as interrupted by the recorder is too.
    let quiet = build(&spec(13, "erin", "ws-0500", "acme", "rome", "top", 2));
    put(&b, &quiet, 0..2, false);
    let mut cut = build(&spec(14, "erin", "ws-0500", "acme", "rome", "df -h", 2));
    let mut close = SessionClose::from_bytes(&cut.close).unwrap();
    close.end_reason = EndReason::Interrupted;
    cut.close = close.to_bytes().unwrap();
    put(&b, &cut, 0..2, true);
    let mut impatient = Indexer::new(
        Arc::clone(&src),
        Arc::clone(&index),
        IndexerConfig {
            stale_after: Duration::ZERO,
            ..config.clone()
        },
    )
    .unwrap();
    impatient.pass().unwrap();
    assert_eq!(row(&quiet).status, Status::Interrupted);
    assert_eq!(row(&cut).status, Status::Interrupted);
    assert_eq!(index.unfinished().unwrap(), [id(&quiet)]);

    // Reindexing from the bucket converges on the same rows.
    let before: Vec<_> = index
        .list(&query())
        .unwrap()
        .sessions
        .into_iter()
        .map(|l| (l.session.id, l.session.status, l.session.chunks))
        .collect();
    let mut again = Indexer::new(
        Arc::clone(&src),
        Arc::clone(&index),
        IndexerConfig {
            stale_after: Duration::ZERO,
            ..config
        },
    )
    .unwrap();
    let r = again.reindex().unwrap();
    assert_eq!(r.sessions, 12);
    assert!(r.failed.is_empty() && r.missing.is_empty(), "{r:?}");
    let after: Vec<_> = index
        .list(&query())
        .unwrap()
        .sessions
        .into_iter()
        .map(|l| (l.session.id, l.session.status, l.session.chunks))
        .collect();
    assert_eq!(after, before);

    // Accounts, sign-ins and the audit log live beside the index, through its portable SQL,
    // and survive a reindex.
    use jitrec_player::auth;
    auth::init(index.as_ref()).unwrap();
    auth::add_user(
        index.as_ref(),
        "rita",
        auth::Role::Reviewer,
        "a long password",
    )
    .unwrap();
    let (token, login) = auth::sign_in(index.as_ref(), "rita", "a long password")
        .unwrap()
        .unwrap();
    assert_eq!(login.role, auth::Role::Reviewer);
    assert!(
        auth::sign_in(index.as_ref(), "rita", "wrong")
            .unwrap()
            .is_none()
    );
    auth::audit(
        index.as_ref(),
        "rita",
        "view",
        &id(&complete).to_string(),
        "",
    )
    .unwrap();
    again.reindex().unwrap();
    assert_eq!(
        auth::login(index.as_ref(), &token).unwrap().unwrap().user,
        "rita"
    );
    let log = auth::audit_log(index.as_ref(), 10, None).unwrap();
    assert_eq!((log[0].action.as_str(), log.len()), ("view", 1));
}

#[test]
fn the_sqlite_index_passes_the_index_suite() {
    let tmp = tempfile::tempdir().unwrap();
    let n = std::sync::atomic::AtomicU32::new(0);
    index_suite(&|| {
        let i = n.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        Arc::new(SqliteIndex::open(&tmp.path().join(format!("index-{i}.sqlite3"))).unwrap())
    });
}

#[test]
fn the_postgresql_index_passes_the_index_suite() {
    index_suite(&|| {
        let url = postgres::new_database("jitrec_suite").unwrap();
        Arc::from(jitrec_player::index::open(&url).unwrap())
    });
}

/// The player as `serve` runs it, in this process: the indexer on its thread and the API on a
/// runtime of its own, on a free loopback port.
pub(crate) struct Player {
    pub(crate) addr: SocketAddr,
    indexer: IndexerHandle,
    thread: Option<std::thread::JoinHandle<()>>,
    rt: Option<tokio::runtime::Runtime>,
    /// Kept until the runtime is gone: the PostgreSQL client's connections must not be closed
    /// last on one of its worker threads (the blocking client cannot run inside a runtime).
    _index: Arc<dyn Index>,
}

impl Player {
    /// The API alone, without sign-in, and without admin access to the bucket.
    pub(crate) fn start(src: Arc<dyn BucketReader>, index: Arc<dyn Index>) -> Player {
        Self::start_inner(src, None, index, false, IndexerConfig::default())
    }

    /// The API alone, its indexer configured by `config`.
    pub(crate) fn start_configured(
        src: Arc<dyn BucketReader>,
        index: Arc<dyn Index>,
        config: IndexerConfig,
    ) -> Player {
        Self::start_inner(src, None, index, false, config)
    }

    /// With `web`, the whole report view behind sign-in, as `serve` runs it, holding the
    /// bucket's admin handle for legal holds as `serve` does.
    pub(crate) fn start_with(
        bucket: Arc<dyn jitrec_bucket::BucketAdmin>,
        index: Arc<dyn Index>,
        web: bool,
    ) -> Player {
        let src: Arc<dyn BucketReader> = bucket.clone();
        Self::start_inner(src, Some(bucket), index, web, IndexerConfig::default())
    }

    fn start_inner(
        src: Arc<dyn BucketReader>,
        bucket_admin: Option<Arc<dyn jitrec_bucket::BucketAdmin>>,
        index: Arc<dyn Index>,
        web: bool,
        config: IndexerConfig,
    ) -> Player {
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
            .unwrap();
        let indexer = Indexer::new(Arc::clone(&src), Arc::clone(&index), config).unwrap();
        let handle = indexer.handle();
        let thread = std::thread::spawn(move || indexer.run());
        let keep = Arc::clone(&index);
        let state = jitrec_player::api::AppState {
            index,
            src,
            indexer: handle.clone(),
            bucket_admin,
            keyring: None,
            retention: None,
            review: Default::default(),
            // The real program's `thumbnail` command, as `serve` runs it.
            filmstrip: Some(Arc::new(jitrec_player::thumbs::Filmstrip::new(
                env!("CARGO_BIN_EXE_jitrec-test-player").into(),
            ))),
        };
        let app = if web {
            jitrec_player::auth::init(state.index.as_ref()).unwrap();
            jitrec_player::web::app(
                state,
                jitrec_player::web::WebConfig {
                    plain_http_cookies: true,
                    ..Default::default()
                },
            )
        } else {
            jitrec_player::api::router(state)
        };
        let listener = rt
            .block_on(tokio::net::TcpListener::bind("127.0.0.1:0"))
            .unwrap();
        let addr = listener.local_addr().unwrap();
        rt.spawn(async move {
            axum::serve(
                listener,
                app.into_make_service_with_connect_info::<SocketAddr>(),
            )
            .await
        });
        Player {
            addr,
            indexer: handle,
            thread: Some(thread),
            rt: Some(rt),
            _index: keep,
        }
    }

    pub(crate) fn get(&self, path: &str) -> http::Response {
        http::get(self.addr, path).unwrap()
    }
}

impl Drop for Player {
    fn drop(&mut self) {
        self.indexer.stop();
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
        if let Some(rt) = self.rt.take() {
            // Waits for the workers, so every task (and its handle on the index) is dropped
            // before `_index` is; on a thread of its own, since tests drop a player from inside
            // their own runtime, where a runtime cannot be shut down waiting.
            let _ = std::thread::spawn(move || rt.shutdown_timeout(Duration::from_secs(30))).join();
        }
    }
}

/// A session recorded on a real X server with process events, with a marker command to find.
pub(crate) struct RealSession {
    pub(crate) spool: tempfile::TempDir,
    pub(crate) id: SessionId,
    pub(crate) marker: String,
    /// When a green window appeared on the (black) screen.
    pub(crate) mapped_at: chrono::DateTime<chrono::Utc>,
}

/// Records one session: 1.2 s of black screen, then a green 200x150 window at (40, 30), 0.4 s
/// later a red 12x12 one at (264, 204) (four macroblocks: a small change, which the recorder
/// writes as a hand-made picture of intra macroblocks), the marker command, 1.5 s more.
pub(crate) fn record_real_session() -> RealSession {
    use jitrec_recorder::events::linux::process::ProcessSource;
    use jitrec_recorder::events::{EventLimits, EventSource, SourceFactory};
    let x = jitrec_tests::xvfb::Xvfb::start(320, 240).unwrap();
    let spool = tempfile::tempdir().unwrap();
    let factory: SourceFactory = Box::new(|_| {
        vec![
            Box::new(ProcessSource::open(crate::events::process_config(false)))
                as Box<dyn EventSource>,
        ]
    });
    let marker = format!("jitrec-player-marker-{}", std::process::id());
    let display = x.display.clone();
    let mut mapped_at = chrono::Utc::now();
    let id = crate::events::record_into(spool.path(), &x, factory, EventLimits::default(), || {
        std::thread::sleep(Duration::from_millis(1200));
        mapped_at = chrono::Utc::now();
        let _w = jitrec_tests::xvfb::map_window(&display, (40, 30, 200, 150), 0x0000_ff00).unwrap();
        // Two ticks apart at least, so the small window is a change of its own.
        std::thread::sleep(Duration::from_millis(400));
        let _small =
            jitrec_tests::xvfb::map_window(&display, (264, 204, 12, 12), 0x00ff_0000).unwrap();
        // A command that lives long enough for its command line to be read.
        let ok = Command::new("/bin/sh")
            .args(["-c", &format!("sleep 0.3; echo {marker} >/dev/null")])
            .status()
            .unwrap()
            .success();
        assert!(ok);
        std::thread::sleep(Duration::from_millis(1500));
    });
    RealSession {
        spool,
        id,
        marker: marker.clone(),
        mapped_at,
    }
}

/// Copies a spool so the same recording can be uploaded twice (each upload empties its spool).
fn copy_spool(from: &Path, to: &Path) {
    let ok = Command::new("cp")
        .arg("-a")
        .arg(from)
        .arg(to)
        .status()
        .unwrap()
        .success();
    assert!(ok);
}

/// The API over a real session (the player already running while it was uploaded): listed with
/// its metadata and status within 5 s of the upload finishing, media served with Range,
/// playlist, search, verify; then exported and probed.
fn check_served(
    player: &Player,
    src: Arc<dyn BucketReader>,
    rec: &RealSession,
    uploaded_at: Instant,
    work: &Path,
) {
    let path = format!("/api/sessions/{}", rec.id);
    let listed = loop {
        let r = player.get("/api/sessions?user=alice");
        assert_eq!(r.status, 200, "{}", r.text());
        let j = r.json().unwrap();
        let s = j["sessions"]
            .as_array()
            .unwrap()
            .iter()
            .find(|s| s["id"] == rec.id.to_string() && s["status"] == "complete")
            .cloned();
        if let Some(s) = s {
            break s;
        }
        assert!(
            uploaded_at.elapsed() < LIMIT,
            "never listed as complete: {j}"
        );
        std::thread::sleep(Duration::from_millis(50));
    };
    let delay = uploaded_at.elapsed();
    eprintln!("listed as complete {delay:?} after the upload finished");
    assert!(delay < Duration::from_secs(5), "listed after {delay:?}");
    assert_eq!(listed["hostname"], "ws-test");
    assert_eq!(listed["authorized_by"], "bob");
    assert_eq!(listed["reason"], "CHG-1");
    assert_eq!(listed["end_reason"], "control_stop");

    let d = player.get(&path).json().unwrap();
    let chunks = d["chunks"].as_array().unwrap();
    assert!(chunks.len() >= 3, "{d}");
    assert!(chunks.iter().all(|c| c["verified"] == true));
    assert_eq!(d["inits"][0]["width"], 320);
    let codec = d["inits"][0]["codec"].as_str().unwrap();
    assert!(codec.starts_with("avc1."), "{codec}");

    // Media: whole, and by range, byte-identical to the bucket.
    let init = src
        .get(&ObjectKey::Init((rec.id).into(), 0), 1 << 30)
        .unwrap()
        .unwrap();
    let r = player.get(&format!("{path}/init/0.mp4"));
    assert_eq!(
        (r.status, r.header("content-type")),
        (200, Some("video/mp4"))
    );
    assert_eq!(r.body, init);
    let r = http::request(
        player.addr,
        "GET",
        &format!("{path}/chunks/1.m4s"),
        &[("Range", "bytes=8-107")],
        &[],
    )
    .unwrap();
    let chunk1 = src
        .get(&ObjectKey::ChunkVideo((rec.id).into(), 1), 1 << 30)
        .unwrap()
        .unwrap();
    assert_eq!(r.status, 206);
    assert_eq!(
        r.header("content-range"),
        Some(format!("bytes 8-107/{}", chunk1.len()).as_str())
    );
    assert_eq!(r.body, chunk1[8..108]);
    assert_eq!(player.get(&format!("{path}/chunks/999.m4s")).status, 404);
    assert_eq!(player.get("/api/sessions/not-an-id").status, 400);

    // HLS: every chunk, and the end.
    let p = player.get(&format!("{path}/playlist.m3u8")).text();
    assert_eq!(p.matches(".m4s").count(), chunks.len(), "{p}");
    assert!(p.contains("#EXT-X-MAP:URI=\"init/0.mp4\"") && p.ends_with("#EXT-X-ENDLIST\n"));
    // Another player (ffmpeg's HLS demuxer) plays it over HTTP: every frame.
    let hls = Command::new("ffprobe")
        .args(["-v", "error", "-count_frames", "-select_streams", "v:0"])
        .args(["-show_entries", "stream=nb_read_frames", "-of", "csv=p=0"])
        .arg(format!("http://{}{path}/playlist.m3u8", player.addr))
        .output()
        .unwrap();
    assert!(
        hls.status.success(),
        "{}",
        String::from_utf8_lossy(&hls.stderr)
    );
    let hls_out = String::from_utf8_lossy(&hls.stdout).into_owned();
    // The HLS demuxer lists the stream once per program and once on its own.
    let hls_frames: u64 = hls_out
        .split_whitespace()
        .next()
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("ffprobe said {hls_out:?}"));

    // The command run during the session is found, with the moment to jump to.
    let r = player.get(&format!("/api/sessions?q={}", rec.marker));
    let j = r.json().unwrap();
    assert_eq!(j["sessions"][0]["id"], rec.id.to_string(), "{j}");
    let hit = &j["sessions"][0]["hits"][0];
    assert!(hit["text"].as_str().unwrap().contains(&rec.marker), "{hit}");
    let at = hit["media_us"].as_u64().unwrap();
    assert!((1_000_000..10_000_000).contains(&at), "{hit}");

    let v = http::request(player.addr, "POST", &format!("{path}/verify"), &[], &[]).unwrap();
    let v = v.json().unwrap();
    assert_eq!(
        (v["verdict"].as_str(), v["status"].as_str()),
        (Some("intact"), Some("complete"))
    );
    let status = player.get("/api/status").json().unwrap();
    assert_eq!(status["sessions"]["complete"], 1, "{status}");
    assert_eq!(
        http::request(
            player.addr,
            "POST",
            "/api/notify",
            &[],
            b"{\"session\": \"x\"}"
        )
        .unwrap()
        .status,
        400
    );
    assert_eq!(
        http::request(player.addr, "POST", "/api/notify", &[], b"")
            .unwrap()
            .status,
        202
    );

    // Export: one MP4 that ffprobe reads, with the session's duration and every frame.
    let out = work.join("export.mp4");
    let done = jitrec_player::export::export(
        src.as_ref(),
        jitrec_player::locate::find(src.as_ref(), rec.id)
            .unwrap()
            .unwrap(),
        &out,
        &jitrec_player::export::ExportOptions::default(),
    )
    .unwrap();
    assert_eq!(done.parts.len(), 1);
    let frames: u64 = chunks.iter().map(|c| c["frames"].as_u64().unwrap()).sum();
    let expected_s = (chunks.last().unwrap()["media_end_us"].as_u64().unwrap()
        - chunks[0]["media_start_us"].as_u64().unwrap()) as f64
        / 1e6;
    let probe = Command::new("ffprobe")
        .args(["-v", "error", "-count_frames", "-select_streams", "v:0"])
        .args([
            "-show_entries",
            "stream=nb_read_frames,width,height:format=duration,format_name",
        ])
        .args(["-of", "json"])
        .arg(&out)
        .output()
        .unwrap();
    assert!(
        probe.status.success(),
        "{}",
        String::from_utf8_lossy(&probe.stderr)
    );
    let j: serde_json::Value = serde_json::from_slice(&probe.stdout).unwrap();
    let probed_frames: u64 = j["streams"][0]["nb_read_frames"]
        .as_str()
        .unwrap()
        .parse()
        .unwrap();
    let duration: f64 = j["format"]["duration"].as_str().unwrap().parse().unwrap();
    eprintln!(
        "export: {probed_frames} frames, {duration:.3} s; manifests: {frames} frames, {expected_s:.3} s"
    );
    assert_eq!(probed_frames, frames);
    assert_eq!(hls_frames, frames);
    // Within one frame interval (10 fps).
    assert!(
        (duration - expected_s).abs() <= 0.1 + 1e-6,
        "{duration} vs {expected_s}"
    );
    assert_eq!(j["streams"][0]["width"], 320);
    // Faststart: the index (moov) comes before the media (mdat).
    let bytes = std::fs::read(&out).unwrap();
    let find = |tag: &[u8]| bytes.windows(4).position(|w| w == tag).unwrap();
    assert!(find(b"moov") < find(b"mdat"));
}

pub(crate) fn start_player(src: &Arc<dyn BucketReader>, work: &Path) -> Player {
    let index: Arc<dyn Index> = Arc::new(SqliteIndex::open(&work.join("index.sqlite3")).unwrap());
    Player::start(Arc::clone(src), index)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_real_session_in_the_local_store_and_in_seaweedfs_is_indexed_served_and_exported() {
    let rec = tokio::task::spawn_blocking(record_real_session)
        .await
        .unwrap();
    let work = tempfile::tempdir().unwrap();
    let second_spool = work.path().join("spool-s3");
    copy_spool(rec.spool.path(), &second_spool);

    // The local directory store, with the player watching it from before the upload.
    let dir = work.path().join("bucket");
    let local_work = work.path().join("local");
    std::fs::create_dir_all(&local_work).unwrap();
    let src: Arc<dyn BucketReader> = Arc::new(DirBucket::new(&dir));
    let player = tokio::task::block_in_place(|| start_player(&src, &local_work));
    let mut config = jitrec_uploader::UploaderConfig::new(rec.spool.path());
    config.concurrency = 2;
    jitrec_tests::drain(DirBucket::new(&dir), config, LIMIT)
        .await
        .unwrap();
    let uploaded = Instant::now();
    tokio::task::block_in_place(|| check_served(&player, src, &rec, uploaded, &local_work));
    drop(player);

    // SeaweedFS, likewise.
    let bucket = seaweed::new_bucket("player").await.unwrap();
    let srv = seaweed::server();
    let s3_work = work.path().join("s3");
    std::fs::create_dir_all(&s3_work).unwrap();
    let src: Arc<dyn BucketReader> = Arc::new(S3Bucket::new(
        seaweed::config(&srv.endpoint, &bucket),
        tokio::runtime::Handle::current(),
    ));
    let player = tokio::task::block_in_place(|| start_player(&src, &s3_work));
    let store = S3Bucket::new(
        seaweed::config(&srv.endpoint, &bucket),
        tokio::runtime::Handle::current(),
    );
    jitrec_tests::drain(
        store,
        jitrec_uploader::UploaderConfig::new(&second_spool),
        LIMIT,
    )
    .await
    .unwrap();
    let uploaded = Instant::now();
    tokio::task::block_in_place(|| check_served(&player, src, &rec, uploaded, &s3_work));
}
