//! Authentic evidence (format v2), tried as an attacker with the bucket's key would: a real
//! session recorded by the real programs (recorder, uploader, player) into the local store, then
//! re-chained after removing events, re-chained after removing a whole chunk, forged from
//! nothing for the enrolled machine, and replaced after indexing, once re-signed with the
//! machine's own key (read from the endpoint, as its root could). Every check goes through the
//! product's own CLI (`verify`, `machines`) or HTTP API (detail, media, decisions).

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use jitrec_format::{
    ChunkManifest, EndpointSigner, Event, ObjectKey, SessionClose, SessionId, Sha256Digest,
    decode_events, encode_events, fixtures,
};
use jitrec_tests::http;
use jitrec_tests::pipeline::{Pipeline, PipelineConfig, Programs, Store};

const PLAYER: &str = env!("CARGO_BIN_EXE_jitrec-test-player");
const LIMIT: Duration = Duration::from_secs(120);

fn config() -> PipelineConfig {
    PipelineConfig {
        programs: Programs {
            recorder: env!("CARGO_BIN_EXE_jitrec-test-recorder").into(),
            uploader: env!("CARGO_BIN_EXE_jitrec-test-uploader").into(),
            player: env!("CARGO_BIN_EXE_jitrec-test-player").into(),
        },
        store: Store::DirBucket,
        width: 320,
        height: 240,
        fps: 5,
        chunk_ms: 1000,
        index: None,
        encrypt: false,
        player_args: Vec::new(),
        recorder_toml: String::new(),
    }
}

/// `jitrec-player ARGS` against the pipeline's bucket and index: (exit code, stdout).
fn player(p: &Pipeline, args: &[&str], with_bucket: bool) -> (i32, String) {
    let mut c = Command::new(PLAYER);
    c.args(args)
        .arg("--index")
        .arg(p.path().join("index.sqlite3"))
        .env("RUST_LOG", "warn");
    if with_bucket {
        c.arg("--bucket-dir").arg(p.bucket_dir());
    }
    let out = c.output().unwrap();
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
    )
}

/// `jitrec-player verify` of one session in `bucket`, recorded in `index` when given: (exit
/// code, stdout).
fn verify_in(bucket: &Path, index: Option<&Path>, id: SessionId) -> (i32, String) {
    let mut c = Command::new(PLAYER);
    c.args(["verify", "--bucket-dir"]).arg(bucket);
    if let Some(i) = index {
        c.arg("--record").arg(i);
    }
    let out = c
        .arg(id.to_string())
        .env("RUST_LOG", "warn")
        .output()
        .unwrap();
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
    )
}

/// Without the index: chain and signatures only.
fn verify_alone(bucket: &Path, id: SessionId) -> (i32, String) {
    verify_in(bucket, None, id)
}

/// With the pipeline's index: witness and enrolment too, and the result recorded.
fn verify_recorded(p: &Pipeline, id: SessionId) -> (i32, String) {
    verify_in(&p.bucket_dir(), Some(&p.path().join("index.sqlite3")), id)
}

/// A session's stored documents, as an attacker reads them from the bucket.
struct Stored {
    root: PathBuf,
    at: jitrec_format::SessionKey,
}

impl Stored {
    fn path(&self, k: ObjectKey) -> PathBuf {
        self.root.join(k.to_string())
    }
    fn read(&self, k: ObjectKey) -> Vec<u8> {
        std::fs::read(self.path(k)).unwrap()
    }
    fn write(&self, k: ObjectKey, bytes: &[u8]) {
        let p = self.path(k);
        std::fs::create_dir_all(p.parent().unwrap()).unwrap();
        std::fs::write(p, bytes).unwrap();
    }
    fn manifests(&self) -> Vec<ChunkManifest> {
        let close =
            SessionClose::from_bytes(&self.read(ObjectKey::SessionClosed(self.at))).unwrap();
        (0..close.chunk_count)
            .map(|seq| {
                ChunkManifest::from_bytes(&self.read(ObjectKey::ChunkManifest(self.at, seq)))
                    .unwrap()
            })
            .collect()
    }

    /// Re-links every manifest from `from` on, and the close record, to what precedes it,
    /// signing each with `key`: the attacker's "recompute the digests and `prev` links".
    fn rechain(&self, from: u64, key: &EndpointSigner) {
        let mut prev = if from == 0 {
            Sha256Digest::of(&self.read(ObjectKey::SessionHeader(self.at)))
        } else {
            Sha256Digest::of(&self.read(ObjectKey::ChunkManifest(self.at, from - 1)))
        };
        let mut seq = from;
        while self.path(ObjectKey::ChunkManifest(self.at, seq)).exists() {
            let mut m =
                ChunkManifest::from_bytes(&self.read(ObjectKey::ChunkManifest(self.at, seq)))
                    .unwrap();
            m.prev = prev;
            let bytes = m.to_signed_bytes(key).unwrap();
            prev = Sha256Digest::of(&bytes);
            self.write(ObjectKey::ChunkManifest(self.at, seq), &bytes);
            seq += 1;
        }
        let mut c =
            SessionClose::from_bytes(&self.read(ObjectKey::SessionClosed(self.at))).unwrap();
        c.prev = prev;
        c.chunk_count = seq;
        self.write(
            ObjectKey::SessionClosed(self.at),
            &c.to_signed_bytes(key).unwrap(),
        );
    }

    /// Removes the events whose text mentions `marker` from every chunk, fixing each manifest's
    /// events reference (signed with `key`), then re-chains.
    fn drop_events(&self, marker: &str, key: &EndpointSigner) -> usize {
        let mut dropped = 0;
        let mut first = None;
        for m in self.manifests() {
            let ek = ObjectKey::ChunkEvents(self.at, m.seq);
            let events = decode_events(&self.read(ek)).unwrap();
            let kept: Vec<Event> = events
                .iter()
                .filter(|e| !serde_json::to_string(e).unwrap().contains(marker))
                .cloned()
                .collect();
            if kept.len() == events.len() {
                continue;
            }
            dropped += events.len() - kept.len();
            let bytes = encode_events(&kept).unwrap();
            self.write(ek, &bytes);
            let mut m = m;
            m.events.size = bytes.len() as u64;
            m.events.sha256 = Sha256Digest::of(&bytes);
            m.events.count = kept.len() as u32;
            self.write(
                ObjectKey::ChunkManifest(self.at, m.seq),
                &m.to_signed_bytes(key).unwrap(),
            );
            first.get_or_insert(m.seq);
        }
        if let Some(seq) = first {
            self.rechain(seq + 1, key);
        }
        dropped
    }

    /// Removes chunk `seq` and renumbers the later ones down, then re-chains.
    fn drop_chunk(&self, seq: u64, key: &EndpointSigner) {
        let n = self.manifests().len() as u64;
        for s in seq..n {
            for k in [
                ObjectKey::ChunkVideo(self.at, s),
                ObjectKey::ChunkEvents(self.at, s),
                ObjectKey::ChunkManifest(self.at, s),
            ] {
                if s == seq {
                    std::fs::remove_file(self.path(k)).unwrap();
                    continue;
                }
                let bytes = self.read(k);
                std::fs::remove_file(self.path(k)).unwrap();
                let moved = match k {
                    ObjectKey::ChunkManifest(..) => {
                        let mut m = ChunkManifest::from_bytes(&bytes).unwrap();
                        m.seq = s - 1;
                        m.to_signed_bytes(key).unwrap()
                    }
                    _ => bytes,
                };
                let to = match k {
                    ObjectKey::ChunkVideo(i, _) => ObjectKey::ChunkVideo(i, s - 1),
                    ObjectKey::ChunkEvents(i, _) => ObjectKey::ChunkEvents(i, s - 1),
                    _ => ObjectKey::ChunkManifest(self.at, s - 1),
                };
                self.write(to, &moved);
            }
        }
        self.rechain(seq, key);
        // The media end must match the new last chunk, or the close record gives it away.
        let last = self.manifests().pop().unwrap();
        let mut c =
            SessionClose::from_bytes(&self.read(ObjectKey::SessionClosed(self.at))).unwrap();
        c.media_end_us = last.media_end_us;
        c.ended_at = last.utc_end;
        c.closed_at = c.closed_at.max(c.ended_at);
        self.write(
            ObjectKey::SessionClosed(self.at),
            &c.to_signed_bytes(key).unwrap(),
        );
    }
}

fn copy_dir(from: &Path, to: &Path) {
    let status = Command::new("cp")
        .arg("-a")
        .arg(from)
        .arg(to)
        .status()
        .unwrap();
    assert!(status.success());
}

/// Records one session with a marker command; returns its id once the player shows it complete.
fn record(p: &mut Pipeline, marker: &str, stop: impl FnOnce(&Pipeline)) -> SessionId {
    let id = p.jit_start("alice", "bob@example.com", "CHG-7").unwrap();
    std::thread::sleep(Duration::from_millis(600));
    // A shell that lives long enough for its command line to be read however loaded the machine
    // (`docs/recorder.md`: a process gone within a millisecond may be reported without it).
    assert!(
        Command::new("/bin/sh")
            .args(["-c", &format!("sleep 0.5; true {marker}")])
            .status()
            .unwrap()
            .success()
    );
    // Recorded content (a few chunks), not synchronisation.
    std::thread::sleep(Duration::from_millis(3500));
    stop(p);
    p.wait_for_within("the session complete in the player", LIMIT, |p| {
        Ok(p.detail(id)?
            .is_some_and(|d| d["session"]["status"] == "complete"))
    })
    .unwrap();
    id
}

fn decide(p: &Pipeline, action: &str, machine: &str, fingerprint: &str, reason: &str) -> u16 {
    let body = serde_json::json!({
        "action": action, "machine": machine, "fingerprint": fingerprint, "reason": reason,
    })
    .to_string();
    http::request(
        p.player,
        "POST",
        "/api/machines/decide",
        &[
            ("Cookie", p.cookie()),
            ("X-CSRF-Token", p.csrf()),
            ("Content-Type", "application/json"),
        ],
        body.as_bytes(),
    )
    .unwrap()
    .status
}

#[test]
fn recorded_sessions_are_verified_only_under_the_approved_key_and_every_forgery_is_named() {
    let mut p = Pipeline::start(&config()).unwrap();
    let marker = format!("useradd-jitrec-{}", std::process::id());
    let id = record(&mut p, &marker, |p| p.jit_stop().unwrap());

    // The session is signed (format v2) but its key is not approved yet: never "verified".
    let d = p.detail(id).unwrap().unwrap();
    assert_eq!(d["authenticity"]["state"], "pending", "{d}");
    let fingerprint = d["authenticity"]["fingerprint"]
        .as_str()
        .unwrap()
        .to_owned();
    let (code, out) = verify_recorded(&p, id);
    assert_eq!(code, 3, "{out}");
    assert!(out.contains("NOT VERIFIED"), "{out}");

    // Who stopped it: `jit stop` on the control socket, by this test (root), not by alice.
    let stop = &d["stopped_by"];
    assert_eq!(stop["by"], "control_command", "{d}");
    assert_eq!(stop["peer"]["user"]["id"], "0", "{stop}");
    assert_eq!(stop["peer"]["pid"], std::process::id(), "{stop}");
    assert_eq!(stop["recorded_user"], false, "{stop}");
    let stop_event = d["events"]
        .as_array()
        .unwrap()
        .iter()
        .find(|e| e["kind"] == "jit_stop")
        .cloned()
        .unwrap();
    assert_eq!(stop_event["data"]["stopped_by"]["by"], "control_command");

    // The enrolment list shows the machine's key pending, with the fingerprint the recorder's
    // own `identity` command prints on the endpoint.
    let machine = d["session"]["machine_id"].as_str().unwrap().to_owned();
    // Signed sessions are uploaded under their machine's prefix (layout v2).
    let at = jitrec_format::SessionKey::v2(machine.parse().unwrap(), id);
    assert!(
        p.bucket_dir()
            .join(at.prefix())
            .join("closed.json")
            .exists(),
        "the session is under its machine's prefix"
    );
    let (code, list) = player(&p, &["machines", "list"], false);
    assert_eq!(code, 0);
    assert!(
        list.contains(&machine) && list.contains(&fingerprint) && list.contains("Pending"),
        "{list}"
    );
    let ident = Command::new(env!("CARGO_BIN_EXE_jitrec-test-recorder"))
        .args(["identity", "--config"])
        .arg(p.path().join("recorder.toml"))
        .output()
        .unwrap();
    let ident = String::from_utf8_lossy(&ident.stdout);
    assert!(ident.contains(&fingerprint), "{ident}");

    // Approved over the API (audited): verified, by the CLI and the API alike.
    assert_eq!(
        decide(&p, "approve", &machine, &fingerprint, "checked on the desk"),
        200
    );
    let d = p.detail(id).unwrap().unwrap();
    assert_eq!(d["authenticity"]["state"], "verified", "{d}");
    let (code, out) = verify_recorded(&p, id);
    assert_eq!(code, 0, "{out}");
    assert!(out.contains("authenticity: verified"), "{out}");
    // Its export carries the plain name; only what the player cannot vouch for is marked.
    let export = p.get(&format!("/api/sessions/{id}/export.mp4")).unwrap();
    assert_eq!(export.status, 200);
    assert_eq!(
        export.header("content-disposition"),
        Some(format!("attachment; filename=\"jitrec-{id}.mp4\"").as_str())
    );
    let audit = p.get_json("/api/audit").unwrap().to_string();
    assert!(
        audit.contains("machine_approve") && audit.contains(&fingerprint),
        "{audit}"
    );

    check_bundle(&p, id);

    // The key the recorded admin can read on the endpoint (root can).
    let (stolen, created) =
        jitrec_recorder::identity::load_or_create(&p.path().join("key/endpoint.key")).unwrap();
    assert!(!created, "the recorder made its key beside the spool");
    assert_eq!(stolen.public().fingerprint().to_string(), fingerprint);
    let mallory = fixtures::signer(77);

    // 1. Re-chained after removing the marker's events, without the key (the attacker signs
    //    with their own): verify, on a copy the player never saw, names the bad signature.
    let copy = tempfile::tempdir().unwrap();
    copy_dir(&p.bucket_dir(), &copy.path().join("b"));
    let attacked = Stored {
        root: copy.path().join("b"),
        at,
    };
    assert!(
        attacked.drop_events(&marker, &mallory) > 0,
        "the marker was recorded"
    );
    let (code, out) = verify_alone(&attacked.root, id);
    assert_eq!(code, 1, "{out}");
    assert!(out.contains("is not made by the session's key"), "{out}");

    // 2. Re-chained after removing a whole chunk, without the key: the same.
    let copy2 = tempfile::tempdir().unwrap();
    copy_dir(&p.bucket_dir(), &copy2.path().join("b"));
    let attacked = Stored {
        root: copy2.path().join("b"),
        at,
    };
    attacked.drop_chunk(1, &mallory);
    let (code, out) = verify_alone(&attacked.root, id);
    assert_eq!(code, 1, "{out}");
    assert!(out.contains("is not made by the session's key"), "{out}");

    // 3. A session built from nothing for the enrolled machine, under another key: indexed,
    //    but "not the machine's key", and its key is pending, not trusted.
    let forged_id = SessionId::new();
    let mut h = fixtures::header_v2(forged_id, &mallory);
    h.machine.id = machine.clone();
    h.started_at = chrono::Utc::now();
    let forged = fixtures::stored_session_v2_from(h, 2, &mallory);
    let bucket = jitrec_tests::TestBucket::new(p.bucket_dir());
    for (k, bytes) in jitrec_tests::session_objects(&forged) {
        bucket.put(&k, &bytes).unwrap();
    }
    p.wait_for_within("the forged session indexed", LIMIT, |p| {
        Ok(p.detail(forged_id)?
            .is_some_and(|d| d["session"]["status"] == "complete"))
    })
    .unwrap();
    let d = p.detail(forged_id).unwrap().unwrap();
    assert_eq!(d["authenticity"]["state"], "not_enrolled", "{d}");
    let (code, out) = verify_recorded(&p, forged_id);
    assert_eq!(code, 3, "{out}");
    assert!(out.contains("not the machine's key"), "{out}");
    // The list says so too.
    let list = p.get_json("/api/sessions").unwrap();
    let row = list["sessions"]
        .as_array()
        .unwrap()
        .iter()
        .find(|s| s["id"] == forged_id.to_string())
        .cloned()
        .unwrap();
    assert_eq!(row["authenticity"], "not the machine's key", "{row}");

    // 4. The real session's events replaced after indexing, re-chained and re-signed with the
    //    stolen key: everything verifies by signature, but not against the witness record.
    let live = Stored {
        root: p.bucket_dir(),
        at,
    };
    assert!(live.drop_events(&marker, &stolen) > 0);
    let (code, out) = verify_recorded(&p, id);
    assert_eq!(code, 1, "{out}");
    assert!(
        out.contains("replaced after the player first read it"),
        "{out}"
    );
    let d = p.detail(id).unwrap().unwrap();
    assert_eq!(d["session"]["status"], "tampered", "{d}");
    // The index keeps the events it witnessed: the marker is still on the timeline.
    assert!(d["events"].to_string().contains(&marker), "{d}");

    // 5. A chunk's video replaced after indexing (re-signed manifest with the stolen key): the
    //    media route refuses the altered bytes; untouched chunks still play.
    let mut manifest =
        ChunkManifest::from_bytes(&live.read(ObjectKey::ChunkManifest(at, 1))).unwrap();
    let mut video = live.read(ObjectKey::ChunkVideo(at, 1));
    let last = video.len() - 1;
    video[last] ^= 0x55;
    manifest.video.sha256 = Sha256Digest::of(&video);
    live.write(ObjectKey::ChunkVideo(at, 1), &video);
    live.write(
        ObjectKey::ChunkManifest(at, 1),
        &manifest.to_signed_bytes(&stolen).unwrap(),
    );
    let r = p.get(&format!("/api/sessions/{id}/chunks/1.m4s")).unwrap();
    assert_eq!(r.status, 409, "{}", r.text());
    assert!(
        r.text().contains("not the ones the player first saw"),
        "{}",
        r.text()
    );
    let r = p.get(&format!("/api/sessions/{id}/chunks/0.m4s")).unwrap();
    assert_eq!(r.status, 200, "{}", r.text());

    // Revoking the key: the real session is never verified again (it is tampered anyway; the
    // forged one stays unverified), and the decision is audited.
    assert_eq!(
        decide(
            &p,
            "revoke",
            &machine,
            &fingerprint,
            "the endpoint's root was compromised"
        ),
        200
    );
    let d = p.detail(id).unwrap().unwrap();
    assert_eq!(d["authenticity"]["state"], "not_enrolled", "{d}");
    let audit = p.get_json("/api/audit").unwrap().to_string();
    assert!(audit.contains("machine_revoke"), "{audit}");
    // An approval of an unknown key is refused with the reason, not a 500.
    assert_eq!(decide(&p, "approve", &machine, &"0".repeat(64), ""), 400);
}

/// The layout v2 bucket policy (`docs/bucket.md`), on SeaweedFS with two endpoint identities:
/// each endpoint's key writes only under its own machine's prefix. Endpoint A's uploader ships
/// A's session; a session A's root fabricates for machine B is refused (403) and stays in A's
/// spool; the player, with its own key, finds A's session under A's prefix, intact.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn each_endpoint_key_writes_only_under_its_own_machine_prefix_on_seaweedfs() {
    use jitrec_bucket::{BucketReader as _, BucketWriter as _, ErrorKind, S3Bucket};
    use jitrec_tests::{backlog_entries, record_v2_session, seaweed, wait_for};

    let (machine_a, key_a, secret_a) = seaweed::ENDPOINTS[0];
    let (machine_b, ..) = seaweed::ENDPOINTS[1];
    let bucket = seaweed::new_bucket("machines").await.unwrap();
    seaweed::scope_to_machines(&bucket).await.unwrap();
    let endpoint = seaweed::server().endpoint.clone();
    let tmp = tempfile::tempdir().unwrap();
    let spool_a = tmp.path().join("a").join("spool");
    let own = record_v2_session(&spool_a, machine_a, fixtures::signer(1), 2).unwrap();
    let spool_f = tmp.path().join("f").join("spool");
    let forged = record_v2_session(&spool_f, machine_b, fixtures::signer(1), 2).unwrap();

    // Endpoint A's uploader program, with A's key, ships A's session.
    let uploader = |spool: &Path| -> jitrec_tests::child::Reaped {
        Command::new(env!("CARGO_BIN_EXE_jitrec-test-uploader"))
            .args(["run", "--spool"])
            .arg(spool)
            .args(["--s3-bucket", &bucket, "--s3-endpoint", &endpoint])
            .env("AWS_ACCESS_KEY_ID", key_a)
            .env("AWS_SECRET_ACCESS_KEY", secret_a)
            .env("RUST_LOG", "warn")
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
            .unwrap()
            .into()
    };
    let up = uploader(&spool_a);
    let s = spool_a.clone();
    wait_for(LIMIT, "A's session uploaded", || {
        let s = s.clone();
        async move { backlog_entries(&s) == 0 }
    })
    .await
    .unwrap();
    drop(up);
    let admin = S3Bucket::new(
        seaweed::config(&endpoint, &bucket),
        tokio::runtime::Handle::current(),
    );
    let at_a = jitrec_format::SessionKey::v2(machine_a.parse().unwrap(), own);
    let keys = tokio::task::block_in_place(|| admin.list(&at_a.prefix())).unwrap();
    assert_eq!(keys.len(), 1 + 1 + 2 * 3 + 1, "{keys:?}");

    // Under B's prefix, A's key is refused: 403 from the store itself...
    let mut config_a = seaweed::config(&endpoint, &bucket);
    config_a.credentials = jitrec_bucket::StaticCredentials {
        access_key_id: key_a.into(),
        secret_access_key: secret_a.into(),
        session_token: None,
    };
    let store_a = S3Bucket::new(config_a, tokio::runtime::Handle::current());
    let at_b = jitrec_format::SessionKey::v2(machine_b.parse().unwrap(), forged);
    let err = store_a
        .put(
            &ObjectKey::SessionHeader(at_b).to_string(),
            bytes::Bytes::from_static(b"{}"),
            "application/json",
        )
        .await
        .unwrap_err();
    assert!(matches!(err.kind, ErrorKind::Auth(403)), "{err}");
    // ... also for A's own key outside any machine prefix (layout v1) ...
    let err = store_a
        .put(
            &ObjectKey::SessionHeader(forged.into()).to_string(),
            bytes::Bytes::from_static(b"{}"),
            "application/json",
        )
        .await
        .unwrap_err();
    assert!(matches!(err.kind, ErrorKind::Auth(403)), "{err}");
    // Under its own prefix, A's key repeats an upload (a retry whose answer was lost) and is
    // refused different bytes: write-once holds with nothing but PutObject.
    let header_key = ObjectKey::SessionHeader(at_a).to_string();
    let stored =
        tokio::task::block_in_place(|| admin.get(&ObjectKey::SessionHeader(at_a), 1 << 16))
            .unwrap()
            .unwrap();
    store_a
        .put(&header_key, bytes::Bytes::from(stored), "application/json")
        .await
        .unwrap();
    let err = store_a
        .put(
            &header_key,
            bytes::Bytes::from_static(b"{}"),
            "application/json",
        )
        .await
        .unwrap_err();
    assert!(matches!(err.kind, ErrorKind::Conflict), "{err}");
    // ... and the uploader, given the fabricated session with A's key, loses nothing and writes
    // nothing: refused (not retried: 403 does not pass), the session stays in its spool, and
    // B's prefix stays empty.
    let before = backlog_entries(&spool_f);
    let up =
        jitrec_uploader::Uploader::new(store_a, jitrec_uploader::UploaderConfig::new(&spool_f))
            .unwrap();
    let metrics = up.metrics();
    let stop = tokio_util::sync::CancellationToken::new();
    let task = tokio::spawn(up.run(stop.clone()));
    let m = std::sync::Arc::clone(&metrics);
    wait_for(LIMIT, "the refusal", || {
        let m = std::sync::Arc::clone(&m);
        async move { m.failures.load(std::sync::atomic::Ordering::Relaxed) >= 1 }
    })
    .await
    .unwrap();
    stop.cancel();
    task.await.unwrap().unwrap();
    assert_eq!(backlog_entries(&spool_f), before, "nothing left the spool");
    let keys = tokio::task::block_in_place(|| admin.list(&at_b.prefix())).unwrap();
    assert!(keys.is_empty(), "{keys:?}");

    // The player (its own key) finds A's session under A's prefix, intact and signed.
    let out = Command::new(PLAYER)
        .args(["verify", "--s3-bucket", &bucket, "--s3-endpoint", &endpoint])
        .arg(own.to_string())
        .env("AWS_ACCESS_KEY_ID", seaweed::ACCESS_KEY)
        .env("AWS_SECRET_ACCESS_KEY", seaweed::SECRET_KEY)
        .env("RUST_LOG", "warn")
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(text.contains(": intact:"), "{text}");
    assert!(text.contains("NOT CHECKED: signed"), "{text}");
    assert_eq!(
        out.status.code(),
        Some(3),
        "signed, enrolment not checked: {text}"
    );
}

/// Layout v2 in the player: a session is read only under the prefix of the machine its header
/// names; one moved under another machine's prefix, an unsigned one under a machine's prefix,
/// or a signed one outside it, is tampered; a copy of a session id under a second machine's
/// prefix is reported and never indexed over the first; and each machine's sessions are
/// discovered with a cursor of their own.
#[test]
fn sessions_are_read_only_under_their_own_machine_prefix() {
    use jitrec_format::{MachineId, SessionKey};
    use jitrec_player::index::{Index, sqlite::SqliteIndex};
    use jitrec_player::indexer::{Indexer, IndexerConfig};
    use jitrec_player::scan::Status;
    use std::sync::Arc;

    let tmp = tempfile::tempdir().unwrap();
    let b = jitrec_tests::TestBucket::new(tmp.path().join("bucket"));
    let (ka, kb) = (fixtures::signer(1), fixtures::signer(2));
    let ma: MachineId = "aaaa0000aaaa0000aaaa0000aaaa0000".parse().unwrap();
    let mb: MachineId = "bbbb0000bbbb0000bbbb0000bbbb0000".parse().unwrap();
    let session_of = |n: u64, m: MachineId, key: &EndpointSigner| {
        let mut h = fixtures::header_v2(fixtures::session_id(n), key);
        h.machine.id = m.to_string();
        fixtures::stored_session_v2_from(h, 2, key)
    };
    let put_at = |s: &fixtures::StoredSession, at: SessionKey| {
        for (k, bytes) in jitrec_tests::session_objects_at(s, at) {
            b.put(&k, &bytes).unwrap();
        }
    };
    // At home: A's session under A's prefix.
    let home = session_of(1, ma, &ka);
    put_at(&home, SessionKey::v2(ma, fixtures::session_id(1)));
    // Moved: A's session under B's prefix (A's root hiding it among B's, say).
    let moved = session_of(2, ma, &ka);
    put_at(&moved, SessionKey::v2(mb, fixtures::session_id(2)));
    // Unsigned (v1) under a machine's prefix, and signed under layout v1.
    let unsigned = fixtures::stored_session(fixtures::session_id(3), 2);
    put_at(&unsigned, SessionKey::v2(mb, fixtures::session_id(3)));
    let outside = session_of(4, ma, &ka);
    put_at(&outside, fixtures::session_id(4).into());
    // A copy of A's session id under B's prefix, re-made as B's and signed by B's key.
    let copy = session_of(1, mb, &kb);
    put_at(&copy, SessionKey::v2(mb, fixtures::session_id(1)));

    let index: Arc<dyn Index> =
        Arc::new(SqliteIndex::open(&tmp.path().join("index.sqlite3")).unwrap());
    let src: Arc<dyn jitrec_bucket::BucketReader> =
        Arc::new(jitrec_bucket::DirBucket::new(tmp.path().join("bucket")));
    let mut ix = Indexer::new(
        Arc::clone(&src),
        Arc::clone(&index),
        IndexerConfig::default(),
    )
    .unwrap();
    ix.pass().unwrap();
    let row = |n: u64| index.session(fixtures::session_id(n)).unwrap().unwrap();

    let r = row(1);
    assert_eq!(r.status, Status::Complete, "{r:?}");
    assert_eq!(
        r.machine_id,
        ma.to_string(),
        "the first copy found is the session"
    );
    for n in [2, 3, 4] {
        let r = row(n);
        assert_eq!(r.status, Status::Tampered, "session {n}: {r:?}");
        assert!(
            r.problems[0].message.contains("does not belong under"),
            "session {n}: {r:?}"
        );
    }
    let anomalies = ix.handle().stats().anomalies;
    assert!(
        anomalies
            .iter()
            .any(|a| a.contains("second copy of a session id") && a.contains(&mb.to_string())),
        "{anomalies:?}"
    );
    // The first location stays the session's, through a reindex too.
    ix.reindex().unwrap();
    assert_eq!(row(1).machine_id, ma.to_string());
    assert_eq!(
        jitrec_player::locate::key_of(index.as_ref(), fixtures::session_id(1)).unwrap(),
        SessionKey::v2(ma, fixtures::session_id(1))
    );

    // Each machine has its own discovery cursor: a session dated far ahead on B does not hide
    // a later real-time session of A.
    let mut future = fixtures::header_v2(
        jitrec_format::SessionId::from_parts(
            (chrono::Utc::now() + chrono::Duration::days(3)).timestamp_millis() as u64,
            [7; 10],
        ),
        &kb,
    );
    future.machine.id = mb.to_string();
    let future_id = future.session_id;
    let f = fixtures::stored_session_v2_from(future, 1, &kb);
    put_at(&f, SessionKey::v2(mb, future_id));
    ix.pass().unwrap();
    let now_id = jitrec_format::SessionId::new();
    let mut h = fixtures::header_v2(now_id, &ka);
    h.machine.id = ma.to_string();
    let s = fixtures::stored_session_v2_from(h, 1, &ka);
    put_at(&s, SessionKey::v2(ma, now_id));
    ix.pass().unwrap();
    assert!(
        index.session(now_id).unwrap().is_some(),
        "A's new session was discovered"
    );
}

const VERIFY: &str = env!("CARGO_BIN_EXE_jitrec-test-verify");

fn run_verify(bundle: &Path, pin: Option<&str>) -> (i32, String) {
    let mut c = Command::new(VERIFY);
    if let Some(p) = pin {
        c.args(["--player-key", p]);
    }
    let out = c.arg(bundle).output().unwrap();
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
    )
}

/// The evidence bundle of a verified session: `jitrec-verify` says verified; a copy with any one
/// byte flipped (spread over the whole archive: headers, padding, every kind of file) is
/// reported; and the README's own by-hand check (OpenSSL, jq, coreutils) passes on the unpacked
/// bundle and catches a forged document.
fn check_bundle(p: &Pipeline, id: SessionId) {
    let tmp = tempfile::tempdir().unwrap();
    let bundle = tmp.path().join("evidence.tar");
    let out = Command::new(PLAYER)
        .args(["export", "--bundle"])
        .arg(&bundle)
        .arg("--bucket-dir")
        .arg(p.bucket_dir())
        .arg("--index")
        .arg(p.path().join("index.sqlite3"))
        .arg(id.to_string())
        .env("RUST_LOG", "warn")
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    // The auditor pins the player's key, as its operators state it.
    let out = Command::new(PLAYER)
        .args(["bundle-key", "--index"])
        .arg(p.path().join("index.sqlite3"))
        .output()
        .unwrap();
    let key_text = String::from_utf8_lossy(&out.stdout).into_owned();
    let pin = key_text
        .lines()
        .find_map(|l| l.strip_prefix("fingerprint: "))
        .expect("bundle-key prints the fingerprint")
        .to_owned();
    let (code, text) = run_verify(&bundle, Some(&pin));
    assert_eq!(code, 0, "{text}");
    assert!(
        text.contains("VERIFIED") && text.contains("approved for machine"),
        "{text}"
    );
    // Without a pinned player key nothing in a bundle is anchored: never "verified".
    let (code, text) = run_verify(&bundle, None);
    assert_eq!(code, 3, "{text}");
    assert!(text.contains("UNANCHORED"), "{text}");

    let original = std::fs::read(&bundle).unwrap();
    let mut positions: Vec<usize> = (0..96).map(|i| i * (original.len() - 1) / 95).collect();
    positions.extend((0..16).map(|_| rand::random::<u32>() as usize % original.len()));
    let flipped = tmp.path().join("flipped.tar");
    for pos in positions {
        let mut bytes = original.clone();
        bytes[pos] ^= 0x01;
        std::fs::write(&flipped, &bytes).unwrap();
        let (code, text) = run_verify(&flipped, Some(&pin));
        assert!(
            code == 1 || code == 2,
            "byte {pos} of {} flipped and not reported (exit {code}):\n{text}",
            original.len()
        );
    }

    // The README's by-hand signature check, as shipped in the bundle.
    let dir = tmp.path().join("unpacked");
    std::fs::create_dir(&dir).unwrap();
    assert!(
        Command::new("tar")
            .arg("xf")
            .arg(&bundle)
            .arg("-C")
            .arg(&dir)
            .status()
            .unwrap()
            .success()
    );
    let root = dir.join("jitrec-bundle");
    let readme = std::fs::read_to_string(root.join("README.md")).unwrap();
    let block = |marker: &str| {
        readme
            .split("```sh")
            .map(|b| b.split("```").next().unwrap_or_default())
            .find(|b| b.contains(marker))
            .unwrap_or_else(|| panic!("the README shows a check with {marker}"))
            .to_owned()
    };
    let anchor = block("bundle_sums");
    let script = block("for d in session");
    let out = Command::new("bash")
        .arg("-c")
        .arg(format!(
            "set -e\n{anchor}\nsha256sum --quiet -c SHA256SUMS\n{script}"
        ))
        .current_dir(&root)
        .output()
        .unwrap();
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        out.status.success() && !text.contains("BAD SIGNATURE"),
        "{text}"
    );
    assert!(
        text.contains(&pin),
        "the README prints the player key's fingerprint: {text}"
    );
    // A manifest whose document was edited (re-encoded, the old signature kept): the README's
    // check names it.
    let m = root.join("session/chunks/0000000000.json");
    let stored = std::fs::read(&m).unwrap();
    let mut env: serde_json::Value = serde_json::from_slice(&stored).unwrap();
    let body = ChunkManifest::from_bytes(&stored).unwrap();
    let edited = ChunkManifest {
        frames: body.frames + 1,
        ..body
    };
    let forged: serde_json::Value =
        serde_json::from_slice(&edited.to_signed_bytes(&fixtures::signer(77)).unwrap()).unwrap();
    env["payload"] = forged["payload"].clone();
    std::fs::write(&m, serde_json::to_vec(&env).unwrap()).unwrap();
    let out = Command::new("bash")
        .arg("-c")
        .arg(&script)
        .current_dir(&root)
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        text.contains("BAD SIGNATURE: session/chunks/0000000000.json"),
        "{text}"
    );

    // A bundle rebuilt from scratch by someone else (here: the real one with a chunk's
    // manifest re-signed by the endpoint's stolen key, SHA256SUMS recomputed and signed by a
    // player key of the forger's own, a smuggled extra file): refused against the pinned key.
    let (stolen, _) =
        jitrec_recorder::identity::load_or_create(&p.path().join("key/endpoint.key")).unwrap();
    let resigned = edited.to_signed_bytes(&stolen).unwrap();
    std::fs::write(&m, &resigned).unwrap();
    let forger = fixtures::signer(78);
    std::fs::write(
        root.join("player/public-key.pem"),
        jitrec_format::bundle::key_to_pem(&forger.public()),
    )
    .unwrap();
    let sums = Command::new("bash")
        .arg("-c")
        .arg("find . -type f ! -name SHA256SUMS ! -name SHA256SUMS.sig | sed 's|^\\./||' | sort | xargs sha256sum")
        .current_dir(&root)
        .output()
        .unwrap();
    assert!(sums.status.success());
    std::fs::write(root.join("SHA256SUMS"), &sums.stdout).unwrap();
    let sig = forger.sign_as(jitrec_format::bundle::BUNDLE_SIGNED_KIND, &sums.stdout);
    let sig = {
        use base64::Engine as _;
        base64::engine::general_purpose::STANDARD.encode(sig)
    };
    std::fs::write(root.join("SHA256SUMS.sig"), format!("{sig}\n")).unwrap();
    let forged = tmp.path().join("forged.tar");
    assert!(
        Command::new("tar")
            .arg("cf")
            .arg(&forged)
            .arg("-C")
            .arg(&dir)
            .arg("jitrec-bundle")
            .status()
            .unwrap()
            .success()
    );
    let (code, text) = run_verify(&forged, Some(&pin));
    assert_eq!(code, 1, "{text}");
    assert!(text.contains("not by the pinned key"), "{text}");
}

/// `POST /api/notify` naming a session that is not in the bucket makes nothing appear (it used
/// to create a phantom "recording" session that turned "tampered"); naming one that is there, in
/// either layout and outside discovery's window, gets it indexed.
#[test]
fn a_notify_makes_only_sessions_in_the_bucket_appear() {
    use jitrec_format::{MachineId, SessionKey};
    use jitrec_player::index::{Index, sqlite::SqliteIndex};
    use std::sync::Arc;

    let tmp = tempfile::tempdir().unwrap();
    let b = jitrec_tests::TestBucket::new(tmp.path().join("bucket"));
    let index: Arc<dyn Index> =
        Arc::new(SqliteIndex::open(&tmp.path().join("index.sqlite3")).unwrap());
    let src: Arc<dyn jitrec_bucket::BucketReader> =
        Arc::new(jitrec_bucket::DirBucket::new(tmp.path().join("bucket")));
    // A newer session, so discovery's window starts well after the old one below.
    let key = fixtures::signer(5);
    let m: MachineId = "cccc0000cccc0000cccc0000cccc0000".parse().unwrap();
    let newer = jitrec_format::SessionId::new();
    let mut h = fixtures::header_v2(newer, &key);
    h.machine.id = m.to_string();
    for (k, bytes) in jitrec_tests::session_objects(&fixtures::stored_session_v2_from(h, 1, &key)) {
        b.put(&k, &bytes).unwrap();
    }
    // Without the sweep, which would find the old session below on its own
    // (`discovery::a_session_dated_hours_before_the_newest_appears_without_notify_or_restart`).
    let player = crate::player::Player::start_configured(
        Arc::clone(&src),
        Arc::clone(&index),
        jitrec_player::indexer::IndexerConfig {
            sweep_every: None,
            ..Default::default()
        },
    );
    let passes = |p: &crate::player::Player| {
        p.get("/api/status").json().unwrap()["indexer"]["passes"]
            .as_u64()
            .unwrap()
    };
    let wait_passes = |p: &crate::player::Player, n: u64| {
        let start = passes(p);
        let t = std::time::Instant::now();
        while passes(p) < start + n {
            assert!(t.elapsed() < LIMIT, "the indexer made no passes");
            std::thread::sleep(Duration::from_millis(20));
        }
    };
    wait_passes(&player, 1);
    assert_eq!(player.get(&format!("/api/sessions/{newer}")).status, 200);

    let notify = |id: jitrec_format::SessionId| {
        let body = format!("{{\"session\": \"{id}\"}}");
        let r = http::request(player.addr, "POST", "/api/notify", &[], body.as_bytes()).unwrap();
        assert_eq!(r.status, 202, "{}", r.text());
    };
    let phantom = jitrec_format::SessionId::new();
    notify(phantom);
    wait_passes(&player, 2);
    assert_eq!(
        player.get(&format!("/api/sessions/{phantom}")).status,
        404,
        "a notified id that is not in the bucket stays unknown"
    );

    // An old session (a day before the newest: outside discovery's window) under its machine's
    // prefix is found by a notify naming it.
    let old = jitrec_format::SessionId::from_parts(
        (chrono::Utc::now() - chrono::Duration::days(1)).timestamp_millis() as u64,
        [9; 10],
    );
    let mut h = fixtures::header_v2(old, &key);
    h.machine.id = m.to_string();
    let s = fixtures::stored_session_v2_from(h, 1, &key);
    for (k, bytes) in jitrec_tests::session_objects_at(&s, SessionKey::v2(m, old)) {
        b.put(&k, &bytes).unwrap();
    }
    wait_passes(&player, 2);
    assert_eq!(
        player.get(&format!("/api/sessions/{old}")).status,
        404,
        "discovery alone does not look a day back"
    );
    notify(old);
    wait_passes(&player, 2);
    assert_eq!(player.get(&format!("/api/sessions/{old}")).status, 200);
}

/// The report view's Machines page: an administrator sees the pending key with its fingerprint,
/// approves it with a reason, and the session it signed is then listed as verified; the decision
/// is in the audit log under the administrator's name.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_admin_approves_a_machine_key_on_the_machines_page() {
    use jitrec_player::auth::{self, Role};
    use jitrec_player::index::{Index, sqlite::SqliteIndex};
    use jitrec_tests::webdriver::Browser;
    use std::sync::Arc;

    let tmp = tempfile::tempdir().unwrap();
    let b = jitrec_tests::TestBucket::new(tmp.path().join("bucket"));
    let key = fixtures::signer(4);
    let id = jitrec_format::SessionId::new();
    let mut h = fixtures::header_v2(id, &key);
    h.started_at = chrono::Utc::now();
    let s = fixtures::stored_session_v2_from(h, 2, &key);
    for (k, bytes) in jitrec_tests::session_objects(&s) {
        b.put(&k, &bytes).unwrap();
    }
    let index: Arc<dyn Index> =
        Arc::new(SqliteIndex::open(&tmp.path().join("index.sqlite3")).unwrap());
    auth::init(index.as_ref()).unwrap();
    let admin = ("machines-admin", "machines admin password");
    auth::add_user(index.as_ref(), admin.0, Role::Admin, admin.1).unwrap();
    let src: Arc<dyn jitrec_bucket::BucketAdmin> =
        Arc::new(jitrec_bucket::DirBucket::new(tmp.path().join("bucket")));
    let player = tokio::task::block_in_place(|| {
        crate::player::Player::start_with(Arc::clone(&src), Arc::clone(&index), true)
    });
    let base = format!("http://{}", player.addr);
    let fp = key.public().fingerprint().to_string();
    tokio::task::block_in_place(|| {
        let browser = Browser::start(1280, 900).unwrap();
        crate::report_view::sign_in(&browser, &base, admin);
        browser.goto(&format!("{base}/machines")).unwrap();
        let row = format!("tr.machine-key.pending[data-fingerprint='{fp}']");
        browser
            .wait_for(
                &format!("document.querySelector(\"{row}\")"),
                LIMIT,
                "the pending key",
            )
            .unwrap();
        let reason = browser.find(&format!("{row} input.reason")).unwrap();
        browser.type_into(&reason, "compared on the desk").unwrap();
        browser
            .click(
                &browser
                    .find(&format!("{row} button[data-action='approve']"))
                    .unwrap(),
            )
            .unwrap();
        browser
            .wait_for(
                &format!(
                    "document.querySelector(\"tr.machine-key.approved[data-fingerprint='{fp}']\")"
                ),
                LIMIT,
                "the key approved",
            )
            .unwrap();
        browser.goto(&format!("{base}/")).unwrap();
        let trust = browser
            .wait_for(
                &format!("(() => {{ const r = document.querySelector(\"tr.session[data-id='{id}']\"); const t = r && r.querySelectorAll('.badge')[1]; return t ? t.textContent : null; }})()"),
                LIMIT,
                "the session's authenticity in the list",
            )
            .unwrap();
        assert_eq!(trust, "verified");
    });
    let log = auth::audit_log(index.as_ref(), 50, None).unwrap();
    assert!(
        log.iter().any(|e| e.user == admin.0
            && e.action == "machine_approve"
            && e.detail.contains(&fp)
            && e.detail.contains("compared on the desk")),
        "{log:?}"
    );
}

/// Client-side encryption: with an age recipient configured on the endpoint, the bucket holds
/// only ciphertext (ffprobe reads no segment, zstd no events payload), while the player, given
/// the identity, indexes the events (search finds the command), serves playable media, and the
/// report view plays the session in Chromium.
#[test]
fn an_encrypted_session_is_ciphertext_in_the_bucket_and_plays_with_the_players_identity() {
    use jitrec_tests::pipeline::REVIEWER;
    use jitrec_tests::webdriver::Browser;

    let mut p = Pipeline::start(&PipelineConfig {
        encrypt: true,
        ..config()
    })
    .unwrap();
    let marker = format!("encrypted-jitrec-{}", std::process::id());
    let id = record(&mut p, &marker, |p| p.jit_stop().unwrap());
    let d = p.detail(id).unwrap().unwrap();
    let machine = d["session"]["machine_id"].as_str().unwrap().to_owned();
    let at = jitrec_format::SessionKey::v2(machine.parse().unwrap(), id);
    let root = p.bucket_dir().join(at.prefix());

    // In the bucket: nothing a tool can read.
    let mut segments = 0;
    for dir in ["chunks", "init"] {
        for e in std::fs::read_dir(root.join(dir)).unwrap() {
            let path = e.unwrap().path();
            let name = path.to_string_lossy().into_owned();
            if name.ends_with(".m4s") || name.ends_with(".mp4") {
                segments += 1;
                let out = Command::new("ffprobe")
                    .args(["-v", "error", "-show_streams"])
                    .arg(&path)
                    .output()
                    .unwrap();
                assert!(!out.status.success(), "ffprobe read {name}");
            }
            if name.ends_with(".events.zst") {
                let out = Command::new("zstd")
                    .args(["-d", "-c"])
                    .arg(&path)
                    .output()
                    .unwrap();
                assert!(!out.status.success(), "zstd read {name}");
                assert!(!String::from_utf8_lossy(&out.stdout).contains(&marker));
            }
        }
    }
    assert!(segments >= 3, "init and chunks were stored");
    let header = std::fs::read(root.join("session.json")).unwrap();
    let header = jitrec_format::SessionHeader::from_bytes(&header).unwrap();
    assert!(
        header.encryption.is_some(),
        "the signed header names the recipients"
    );
    // Verified as ciphertext, without any identity: intact (its key merely not approved yet).
    let (code, out) = verify_recorded(&p, id);
    assert_eq!(code, 3, "{out}");
    assert!(out.contains(": intact:"), "{out}");

    // The player, with the identity: search finds the command...
    let hits = p.get_json(&format!("/api/sessions?q={marker}")).unwrap();
    assert!(
        hits["sessions"]
            .as_array()
            .unwrap()
            .iter()
            .any(|h| h["id"] == id.to_string()),
        "{hits}"
    );
    // ... media comes out decrypted and decodable ...
    let init = p.get(&format!("/api/sessions/{id}/init/0.mp4")).unwrap();
    let chunk = p.get(&format!("/api/sessions/{id}/chunks/0.m4s")).unwrap();
    assert_eq!((init.status, chunk.status), (200, 200));
    let tmp = tempfile::tempdir().unwrap();
    let joined = tmp.path().join("joined.mp4");
    std::fs::write(&joined, [init.body.clone(), chunk.body.clone()].concat()).unwrap();
    let out = Command::new("ffprobe")
        .args([
            "-v",
            "error",
            "-show_entries",
            "stream=codec_name",
            "-of",
            "csv=p=0",
        ])
        .arg(&joined)
        .output()
        .unwrap();
    assert_eq!(String::from_utf8_lossy(&out.stdout).trim(), "h264");
    // ... and the report view plays it.
    let b = Browser::start(1280, 1000).unwrap();
    crate::report_view::sign_in(&b, &p.base(), REVIEWER);
    b.goto(&format!("{}/session/{id}", p.base())).unwrap();
    let st =
        crate::report_view::state_when(&b, "s.readyState >= 2 && s.chunks > 0", "the first frame");
    assert!(st["error"].is_null(), "{st}");
    b.eval(
        "document.querySelector('#video').play();",
        serde_json::json!([]),
    )
    .unwrap();
    crate::report_view::state_when(&b, "s.currentTime > 0.5", "playback to advance");
}
