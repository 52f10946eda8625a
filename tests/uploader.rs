//! The uploader against real stores: SeaweedFS on 127.0.0.1 (started by the harness) and the
//! local-directory store, through faults, an outage, SIGKILLs and corrupt spool entries.

use std::collections::BTreeMap;
use std::path::Path;
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use jitrec_bucket::{Backoff, BucketWriter, DirBucket, ErrorKind, S3Bucket};
use jitrec_format::{ObjectKey, SessionId, Sha256Digest};
use jitrec_player::verify::{self, Verdict};
use jitrec_spool::{SpoolConfig, SpoolInspector, SpoolWriter};
use jitrec_tests::child::Reaped;
use jitrec_tests::faultproxy::{FaultProxy, Plan};
use jitrec_tests::{
    TestBucket, backlog_entries, close_session, commit_chunk, expected_keys, list_keys, mirror,
    open_session, payload, record_session, seaweed, wait_drained, wait_for,
};
use jitrec_uploader::{Metrics, Uploader, UploaderConfig};
use rand::Rng;
use tokio_util::sync::CancellationToken;

/// Generous limits: these wait for conditions, and CI machines are loaded.
const DRAIN_LIMIT: Duration = Duration::from_secs(180);
const MAX_VIDEO: usize = 256 * 1024;

/// Test settings: fast retries so faults cost seconds, not minutes.
fn test_config(spool: &Path) -> UploaderConfig {
    let mut c = UploaderConfig::new(spool);
    c.backoff = Backoff {
        base: Duration::from_millis(20),
        cap: Duration::from_millis(500),
    };
    c
}

/// Runs an uploader with the test settings until the spool has nothing pending.
async fn drain<S: BucketWriter>(store: S, spool: &Path) -> Arc<Metrics> {
    match jitrec_tests::drain(store, test_config(spool), DRAIN_LIMIT).await {
        Ok(m) => m,
        Err(e) => panic!(
            "{e:#}\nlast lines of the SeaweedFS log:\n{}",
            seaweed::log_tail()
        ),
    }
}

/// Records `n` closed sessions of `chunks` chunks and one open session (no close record).
fn record(spool: &Path, n: usize, chunks: u64) -> (Vec<SessionId>, SessionId) {
    let (w, _) = SpoolWriter::open(spool, SpoolConfig::default()).unwrap();
    let closed = (0..n)
        .map(|_| record_session(&w, chunks, MAX_VIDEO, |_, _, _| {}).unwrap())
        .collect();
    let mut open = open_session(&w).unwrap();
    for _ in 0..2 {
        commit_chunk(&mut open, MAX_VIDEO).unwrap();
    }
    (closed, open.session_id())
}

/// Checks a bucket (as a directory) holds exactly the recorded sessions, intact and
/// byte-identical.
fn check_bucket(
    bucket: &TestBucket,
    root: &Path,
    closed: &[SessionId],
    chunks: u64,
    open: SessionId,
) {
    for &s in closed {
        let c = bucket.verify_intact(s).unwrap();
        assert_eq!(c.chunk_count, chunks);
        for seq in 0..chunks {
            let video = bucket.get(&ObjectKey::ChunkVideo(s.into(), seq)).unwrap();
            assert_eq!(video, Some(payload(s, seq, 0, MAX_VIDEO)));
        }
    }
    // The open session is in the bucket up to its last chunk, awaiting its close record.
    let report = verify::verify_session(&DirBucket::new(root), open).unwrap();
    assert_eq!(report.verdict, Verdict::Open, "{report}");
    assert_eq!(report.chunks_verified, 2);
}

fn all_expected(closed: &[SessionId], chunks: u64, open: SessionId) -> Vec<String> {
    let mut keys: Vec<String> = closed
        .iter()
        .flat_map(|&s| expected_keys(s, chunks, true))
        .chain(expected_keys(open, 2, false))
        .collect();
    keys.sort();
    keys
}

fn local_keys(root: &Path) -> Vec<String> {
    use jitrec_bucket::BucketReader;
    DirBucket::new(root).list("").unwrap()
}

/// What both stores must do: create, nest and take large objects, and keep every object
/// write-once: the same bytes again succeed (a retried put), different bytes fail with a typed
/// error and leave the first object as it was, for small and multipart objects alike.
async fn store_contract<S: BucketWriter>(store: &S, read: impl AsyncFn(&str) -> Option<Vec<u8>>) {
    let key = "v1/contract/a/b/object.bin";
    let put = async |key: &str, bytes: Vec<u8>| {
        store
            .put(key, Bytes::from(bytes), "application/octet-stream")
            .await
    };
    put(key, b"first".to_vec()).await.unwrap();
    assert_eq!(read(key).await.as_deref(), Some(&b"first"[..]));
    put(key, b"first".to_vec())
        .await
        .expect("the same bytes again are a retried put: success");
    for other in [&b"second version"[..], b"firsT", b"fir", b""] {
        let err = put(key, other.to_vec()).await.unwrap_err();
        assert_eq!(err.kind, ErrorKind::Conflict, "{err}");
        assert!(!err.is_retryable());
    }
    assert_eq!(
        read(key).await.as_deref(),
        Some(&b"first"[..]),
        "a refused put leaves the first object intact"
    );
    let big: Vec<u8> = (0..12 * 1024 * 1024 + 7).map(|i| (i % 251) as u8).collect();
    put("v1/contract/big", big.clone()).await.unwrap();
    assert_eq!(read("v1/contract/big").await.as_ref(), Some(&big));
    put("v1/contract/big", big.clone()).await.unwrap();
    let mut altered = big.clone();
    altered[7 * 1024 * 1024] ^= 1;
    let err = put("v1/contract/big", altered).await.unwrap_err();
    assert_eq!(err.kind, ErrorKind::Conflict, "{err}");
    assert_eq!(read("v1/contract/big").await, Some(big));
    assert_eq!(read("v1/contract/missing").await, None);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn local_store_contract() {
    let tmp = tempfile::tempdir().unwrap();
    let store = DirBucket::new(tmp.path());
    let root = tmp.path().to_owned();
    store_contract(&store, async |k| std::fs::read(root.join(k)).ok()).await;
    // No temp file is left behind, and none is visible as an object.
    assert_eq!(local_keys(tmp.path()).len(), 2);
    let err = store
        .put("../escape", Bytes::from_static(b"x"), "text/plain")
        .await
        .unwrap_err();
    assert_eq!(err.kind, ErrorKind::Io(std::io::ErrorKind::InvalidInput));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn s3_store_contract() {
    let bucket = seaweed::new_bucket("contract").await.unwrap();
    let mut config = seaweed::config(&seaweed::server().endpoint, &bucket);
    // Small parts so the 12 MiB object goes up as a multipart upload.
    config.multipart_threshold = 6 * 1024 * 1024;
    config.part_size = 5 * 1024 * 1024;
    config.prefix = "tenant-a/".into();
    let store = S3Bucket::new(config, tokio::runtime::Handle::current());
    let client = store.client().clone();
    let b = bucket.clone();
    store_contract(&store, async |k| {
        let got = client
            .get_object()
            .bucket(&b)
            .key(format!("tenant-a/{k}"))
            .send()
            .await
            .ok()?;
        Some(got.body.collect().await.ok()?.into_bytes().to_vec())
    })
    .await;
    let keys = list_keys(store.client(), &bucket).await.unwrap();
    assert_eq!(
        keys,
        vec![
            "tenant-a/v1/contract/a/b/object.bin",
            "tenant-a/v1/contract/big"
        ]
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn uploads_every_session_to_the_local_store() {
    let tmp = tempfile::tempdir().unwrap();
    let spool = tmp.path().join("spool");
    let root = tmp.path().join("bucket");
    let (closed, open) = record(&spool, 3, 4);
    let metrics = drain(DirBucket::new(&root), &spool).await;
    assert_eq!(local_keys(&root), all_expected(&closed, 4, open));
    check_bucket(&TestBucket::new(&root), &root, &closed, 4, open);
    assert_eq!(
        metrics
            .chunks_acked
            .load(std::sync::atomic::Ordering::Relaxed),
        14
    );
    assert_eq!(
        metrics.failures.load(std::sync::atomic::Ordering::Relaxed),
        0
    );
    // Only the open session remains in the spool (its head retained), nothing pending.
    let (w, rec) = SpoolWriter::open(&spool, SpoolConfig::default()).unwrap();
    assert_eq!(rec.open_sessions, vec![open]);
    assert_eq!(w.resume_session(open).unwrap().next_seq(), 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn uploads_every_session_to_s3_byte_identical() {
    let tmp = tempfile::tempdir().unwrap();
    let spool = tmp.path().join("spool");
    let (closed, open) = record(&spool, 3, 4);
    let bucket = seaweed::new_bucket("e2e").await.unwrap();
    let store = S3Bucket::new(
        seaweed::config(&seaweed::server().endpoint, &bucket),
        tokio::runtime::Handle::current(),
    );
    let client = store.client().clone();
    drain(store, &spool).await;
    assert_eq!(
        list_keys(&client, &bucket).await.unwrap(),
        all_expected(&closed, 4, open)
    );
    let root = tmp.path().join("mirror");
    let dir = mirror(&client, &bucket, &root).await.unwrap();
    check_bucket(&dir, &root, &closed, 4, open);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn wrong_credentials_stop_the_session_clearly_and_lose_nothing() {
    let tmp = tempfile::tempdir().unwrap();
    let spool = tmp.path().join("spool");
    let (_, _) = record(&spool, 1, 2);
    let before = backlog_entries(&spool);
    let bucket = seaweed::new_bucket("creds").await.unwrap();
    let mut config = seaweed::config(&seaweed::server().endpoint, &bucket);
    config.credentials.secret_access_key = "not-the-secret".into();
    let store = S3Bucket::new(config.clone(), tokio::runtime::Handle::current());

    let err = store
        .put("v1/probe", Bytes::from_static(b"x"), "text/plain")
        .await
        .unwrap_err();
    assert!(matches!(err.kind, ErrorKind::Auth(403)), "{err}");
    assert!(err.message.contains("SignatureDoesNotMatch"), "{err}");
    assert!(!err.is_retryable());

    let up = Uploader::new(
        S3Bucket::new(config, tokio::runtime::Handle::current()),
        test_config(&spool),
    )
    .unwrap();
    let metrics = up.metrics();
    let stop = CancellationToken::new();
    let task = tokio::spawn(up.run(stop.clone()));
    let m = Arc::clone(&metrics);
    wait_for(DRAIN_LIMIT, "the upload to fail", || {
        let m = Arc::clone(&m);
        async move { m.failures.load(std::sync::atomic::Ordering::Relaxed) >= 2 }
    })
    .await
    .unwrap();
    stop.cancel();
    task.await.unwrap().unwrap();
    assert_eq!(
        metrics.retries.load(std::sync::atomic::Ordering::Relaxed),
        0,
        "403 is not retried"
    );
    assert_eq!(backlog_entries(&spool), before, "nothing left the spool");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_commit_is_uploaded_on_notification_not_at_the_next_rescan() {
    let tmp = tempfile::tempdir().unwrap();
    let spool = tmp.path().join("spool");
    let root = tmp.path().join("bucket");
    let (w, _) = SpoolWriter::open(&spool, SpoolConfig::default()).unwrap();
    let mut config = test_config(&spool);
    // Only the first tick (at start) rescans; after that, only notifications can wake it.
    config.rescan_interval = Duration::from_secs(3600);
    let up = Uploader::new(DirBucket::new(&root), config).unwrap();
    let stop = CancellationToken::new();
    let task = tokio::spawn(up.run(stop.clone()));
    let mut s = open_session(&w).unwrap();
    for _ in 0..3 {
        let (seq, _) = commit_chunk(&mut s, MAX_VIDEO).unwrap();
        let key = root.join(ObjectKey::ChunkManifest((s.session_id()).into(), seq).to_string());
        wait_for(Duration::from_secs(60), "the chunk to be uploaded", || {
            let key = key.clone();
            async move { key.exists() }
        })
        .await
        .unwrap();
    }
    close_session(s, jitrec_format::EndReason::JitEnded).unwrap();
    wait_drained(&spool, DRAIN_LIMIT).await.unwrap();
    stop.cancel();
    task.await.unwrap().unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_corrupt_chunk_is_quarantined_and_does_not_block_the_session() {
    let tmp = tempfile::tempdir().unwrap();
    let spool = tmp.path().join("spool");
    let root = tmp.path().join("bucket");
    let (closed, _open) = record(&spool, 2, 4);
    let victim = closed[0];
    let file = spool
        .join("sessions")
        .join(victim.to_string())
        .join("chunk-0000000001.jrs");
    let mut bytes = std::fs::read(&file).unwrap();
    let n = bytes.len();
    bytes[n / 2] ^= 0x20;
    std::fs::write(&file, bytes).unwrap();

    let metrics = drain(DirBucket::new(&root), &spool).await;
    assert_eq!(
        metrics
            .quarantined
            .load(std::sync::atomic::Ordering::Relaxed),
        1
    );
    let dir = TestBucket::new(&root);
    dir.verify_intact(closed[1]).unwrap();
    // The damaged session arrived except for the quarantined chunk, and says so precisely.
    let report = verify::verify_session(&DirBucket::new(&root), victim).unwrap();
    assert_eq!(report.verdict, Verdict::Broken);
    assert!(
        report.problems[0].contains("expected chunk 1, found chunk 2"),
        "{report}"
    );
    assert!(
        dir.get(&ObjectKey::SessionClosed(victim.into()))
            .unwrap()
            .is_some()
    );
    assert!(
        SpoolInspector::open(&spool)
            .unwrap()
            .backlog()
            .unwrap()
            .quarantined
            == 1
    );
}

/// Commits sessions in a background thread until told to stop; returns every committed chunk.
/// Returns once the spool exists, so an uploader can open it.
fn background_recorder(
    spool: &Path,
    stop: Arc<std::sync::atomic::AtomicBool>,
    pace: Duration,
) -> std::thread::JoinHandle<BTreeMap<(SessionId, u64), Sha256Digest>> {
    let spool = spool.to_owned();
    let (ready_tx, ready_rx) = std::sync::mpsc::channel();
    let handle = std::thread::spawn(move || {
        let (w, _) = SpoolWriter::open(&spool, SpoolConfig::default()).unwrap();
        ready_tx.send(()).unwrap();
        let mut committed = BTreeMap::new();
        while !stop.load(std::sync::atomic::Ordering::Relaxed) {
            let mut s = open_session(&w).unwrap();
            for _ in 0..4 {
                let (seq, d) = commit_chunk(&mut s, MAX_VIDEO).unwrap();
                committed.insert((s.session_id(), seq), d);
                // Pacing of a recorder producing chunks; not synchronisation.
                std::thread::sleep(pace);
            }
            close_session(s, jitrec_format::EndReason::JitEnded).unwrap();
        }
        committed
    });
    ready_rx
        .recv()
        .expect("the recorder thread opened the spool");
    handle
}

async fn check_committed_in_s3(
    client: &aws_sdk_s3::Client,
    bucket: &str,
    root: &Path,
    committed: &BTreeMap<(SessionId, u64), Sha256Digest>,
) {
    let dir = mirror(client, bucket, root).await.unwrap();
    let mut sessions: Vec<SessionId> = committed.keys().map(|(s, _)| *s).collect();
    sessions.dedup();
    let mut expected = Vec::new();
    for &s in &sessions {
        let close = dir.verify_intact(s).unwrap();
        expected.extend(expected_keys(s, close.chunk_count, true));
    }
    for (&(s, seq), &digest) in committed {
        let m = dir
            .get(&ObjectKey::ChunkManifest(s.into(), seq))
            .unwrap()
            .expect("manifest stored");
        assert_eq!(Sha256Digest::of(&m), digest, "{s} chunk {seq}");
        assert_eq!(
            dir.get(&ObjectKey::ChunkVideo(s.into(), seq)).unwrap(),
            Some(payload(s, seq, 0, MAX_VIDEO))
        );
    }
    expected.sort();
    // Every object exactly once: no key outside the recorded sessions, none missing.
    assert_eq!(list_keys(client, bucket).await.unwrap(), expected);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn survives_resets_throttling_errors_stalls_and_an_outage() {
    let tmp = tempfile::tempdir().unwrap();
    let spool = tmp.path().join("spool");
    let bucket = seaweed::new_bucket("faults").await.unwrap();
    let proxy = FaultProxy::start(
        seaweed::server().s3_addr,
        Plan {
            reset: 0.08,
            slow_down: 0.08,
            server_error: 0.08,
            stall: 0.04,
            cut_after: Some(Duration::from_millis(1500)),
            lead_with_each: true,
        },
    )
    .await
    .unwrap();
    let mut config = seaweed::config(&proxy.endpoint(), &bucket);
    config.attempt_timeout = Duration::from_secs(2);
    config.connect_timeout = Duration::from_secs(2);
    let store = S3Bucket::new(config, tokio::runtime::Handle::current());

    let stop_rec = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let recorder = background_recorder(&spool, Arc::clone(&stop_rec), Duration::from_millis(100));
    let up = Uploader::new(store, test_config(&spool)).unwrap();
    let metrics = up.metrics();
    let stop = CancellationToken::new();
    let task = tokio::spawn(up.run(stop.clone()));

    tokio::time::sleep(Duration::from_secs(5)).await;
    proxy.outage(Duration::from_secs(30));
    tokio::time::sleep(Duration::from_secs(35)).await;
    stop_rec.store(true, std::sync::atomic::Ordering::Relaxed);
    let committed = recorder.join().unwrap();
    // Everything committed before, during and after the outage drains once the faults stop
    // being the only thing the store says.
    wait_drained(&spool, DRAIN_LIMIT).await.unwrap();
    stop.cancel();
    task.await.unwrap().unwrap();

    let st = proxy.stats();
    let get = |c: &std::sync::atomic::AtomicU64| c.load(std::sync::atomic::Ordering::Relaxed);
    eprintln!(
        "faults: {} resets, {} SlowDown, {} 500, {} stalls, {} refused in the outage, {} connections cut; {} passed; uploader retries {}; {} chunks",
        get(&st.resets),
        get(&st.slow_downs),
        get(&st.server_errors),
        get(&st.stalls),
        get(&st.refused),
        get(&st.cut),
        get(&st.passed),
        get(&metrics.retries),
        committed.len()
    );
    for (name, c) in [
        ("resets", &st.resets),
        ("SlowDown", &st.slow_downs),
        ("500s", &st.server_errors),
        ("stalls", &st.stalls),
        ("outage refusals", &st.refused),
    ] {
        assert!(get(c) > 0, "the test injected no {name}");
    }
    assert!(get(&metrics.retries) > 0);
    assert_eq!(
        get(&metrics.failures),
        0,
        "no fault here is a reason to give up"
    );
    let sessions_left = SpoolWriter::open(&spool, SpoolConfig::default())
        .unwrap()
        .1
        .open_sessions;
    assert!(sessions_left.is_empty());
    let root = tmp.path().join("mirror");
    check_committed_in_s3(
        S3Bucket::new(
            seaweed::config(&seaweed::server().endpoint, &bucket),
            tokio::runtime::Handle::current(),
        )
        .client(),
        &bucket,
        &root,
        &committed,
    )
    .await;
}

const UPLOADER: &str = env!("CARGO_BIN_EXE_jitrec-test-uploader");

fn spawn_uploader(spool: &Path, bucket: &str) -> Reaped {
    Command::new(UPLOADER)
        .args([
            "run",
            "--spool",
            spool.to_str().unwrap(),
            "--s3-bucket",
            bucket,
        ])
        .args(["--s3-endpoint", &seaweed::server().endpoint])
        .env("AWS_ACCESS_KEY_ID", seaweed::ACCESS_KEY)
        .env("AWS_SECRET_ACCESS_KEY", seaweed::SECRET_KEY)
        .env("RUST_LOG", "warn")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("start the uploader")
        .into()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigkill_of_the_uploader_loses_nothing() {
    let tmp = tempfile::tempdir().unwrap();
    let spool = tmp.path().join("spool");
    let bucket = seaweed::new_bucket("kill").await.unwrap();
    let stop_rec = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let recorder = background_recorder(&spool, Arc::clone(&stop_rec), Duration::from_millis(20));
    let mut rng = rand::rng();
    for round in 0..20 {
        let mut child = spawn_uploader(&spool, &bucket);
        tokio::time::sleep(Duration::from_millis(rng.random_range(50..600))).await;
        child.kill().unwrap();
        let status = child.wait().unwrap();
        use std::os::unix::process::ExitStatusExt;
        assert_eq!(
            status.signal(),
            Some(9),
            "round {round}: the uploader died on its own: {status}"
        );
    }
    stop_rec.store(true, std::sync::atomic::Ordering::Relaxed);
    let committed = recorder.join().unwrap();
    // A last, uninterrupted run drains the spool; SIGTERM then stops it cleanly.
    let mut child = spawn_uploader(&spool, &bucket);
    wait_drained(&spool, DRAIN_LIMIT).await.unwrap();
    let pid = child.id().to_string();
    assert!(
        Command::new("kill")
            .args(["-TERM", &pid])
            .status()
            .unwrap()
            .success()
    );
    let status = child.wait().unwrap();
    assert!(
        status.success(),
        "the uploader did not stop cleanly on SIGTERM: {status}"
    );
    eprintln!(
        "sigkill test: 20 kills, {} chunks committed",
        committed.len()
    );
    assert!(committed.len() >= 20);
    let root = tmp.path().join("mirror");
    let store = S3Bucket::new(
        seaweed::config(&seaweed::server().endpoint, &bucket),
        tokio::runtime::Handle::current(),
    );
    check_committed_in_s3(store.client(), &bucket, &root, &committed).await;
}
