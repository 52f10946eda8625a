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

/// `jitrec-player verify` of one session in `bucket`, without the index (signatures only).
fn verify_alone(bucket: &Path, id: SessionId) -> (i32, String) {
    let out = Command::new(PLAYER)
        .args(["verify", "--bucket-dir"])
        .arg(bucket)
        .arg(id.to_string())
        .env("RUST_LOG", "warn")
        .output()
        .unwrap();
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
    )
}

fn verify_recorded(p: &Pipeline, id: SessionId) -> (i32, String) {
    let out = Command::new(PLAYER)
        .args(["verify", "--bucket-dir"])
        .arg(p.bucket_dir())
        .arg("--record")
        .arg(p.path().join("index.sqlite3"))
        .arg(id.to_string())
        .env("RUST_LOG", "warn")
        .output()
        .unwrap();
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
    )
}

/// A session's stored documents, as an attacker reads them from the bucket.
struct Stored {
    root: PathBuf,
    id: SessionId,
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
            SessionClose::from_bytes(&self.read(ObjectKey::SessionClosed(self.id))).unwrap();
        (0..close.chunk_count)
            .map(|seq| {
                ChunkManifest::from_bytes(&self.read(ObjectKey::ChunkManifest(self.id, seq)))
                    .unwrap()
            })
            .collect()
    }

    /// Re-links every manifest from `from` on, and the close record, to what precedes it,
    /// signing each with `key`: the attacker's "recompute the digests and `prev` links".
    fn rechain(&self, from: u64, key: &EndpointSigner) {
        let mut prev = if from == 0 {
            Sha256Digest::of(&self.read(ObjectKey::SessionHeader(self.id)))
        } else {
            Sha256Digest::of(&self.read(ObjectKey::ChunkManifest(self.id, from - 1)))
        };
        let mut seq = from;
        while self.path(ObjectKey::ChunkManifest(self.id, seq)).exists() {
            let mut m =
                ChunkManifest::from_bytes(&self.read(ObjectKey::ChunkManifest(self.id, seq)))
                    .unwrap();
            m.prev = prev;
            let bytes = m.to_signed_bytes(key).unwrap();
            prev = Sha256Digest::of(&bytes);
            self.write(ObjectKey::ChunkManifest(self.id, seq), &bytes);
            seq += 1;
        }
        let mut c =
            SessionClose::from_bytes(&self.read(ObjectKey::SessionClosed(self.id))).unwrap();
        c.prev = prev;
        c.chunk_count = seq;
        self.write(
            ObjectKey::SessionClosed(self.id),
            &c.to_signed_bytes(key).unwrap(),
        );
    }

    /// Removes the events whose text mentions `marker` from every chunk, fixing each manifest's
    /// events reference (signed with `key`), then re-chains.
    fn drop_events(&self, marker: &str, key: &EndpointSigner) -> usize {
        let mut dropped = 0;
        let mut first = None;
        for m in self.manifests() {
            let ek = ObjectKey::ChunkEvents(self.id, m.seq);
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
                ObjectKey::ChunkManifest(self.id, m.seq),
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
                ObjectKey::ChunkVideo(self.id, s),
                ObjectKey::ChunkEvents(self.id, s),
                ObjectKey::ChunkManifest(self.id, s),
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
                    _ => ObjectKey::ChunkManifest(self.id, s - 1),
                };
                self.write(to, &moved);
            }
        }
        self.rechain(seq, key);
        // The media end must match the new last chunk, or the close record gives it away.
        let last = self.manifests().pop().unwrap();
        let mut c =
            SessionClose::from_bytes(&self.read(ObjectKey::SessionClosed(self.id))).unwrap();
        c.media_end_us = last.media_end_us;
        c.ended_at = last.utc_end;
        c.closed_at = c.closed_at.max(c.ended_at);
        self.write(
            ObjectKey::SessionClosed(self.id),
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
    let audit = p.get_json("/api/audit").unwrap().to_string();
    assert!(
        audit.contains("machine_approve") && audit.contains(&fingerprint),
        "{audit}"
    );

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
        id,
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
        id,
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
        id,
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
        ChunkManifest::from_bytes(&live.read(ObjectKey::ChunkManifest(id, 1))).unwrap();
    let mut video = live.read(ObjectKey::ChunkVideo(id, 1));
    let last = video.len() - 1;
    video[last] ^= 0x55;
    manifest.video.sha256 = Sha256Digest::of(&video);
    live.write(ObjectKey::ChunkVideo(id, 1), &video);
    live.write(
        ObjectKey::ChunkManifest(id, 1),
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
