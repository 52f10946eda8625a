//! Writes the fuzz targets' seed corpus (`fuzz/corpus/<target>/seed-*`) from the format's
//! fixtures: valid sessions of both versions, every event kind, a verified evidence bundle, and
//! a few Range headers. Seeds start each run inside the valid shapes, where a fuzzer would take
//! long to get on its own (signatures, hash links, tar checksums).
//!
//! The seeds are committed; run this again after a format change:
//! `cargo run --manifest-path fuzz/Cargo.toml --example seeds`. It refuses to write a bundle
//! seed `jitrec-verify` does not call verified.

use std::path::{Path, PathBuf};

use base64::Engine as _;
use jitrec_format::bundle::{
    BUNDLE_ENROLMENT, BUNDLE_EVENTS, BUNDLE_INFO, BUNDLE_KEY, BUNDLE_PLAYER_KEY, BUNDLE_ROOT,
    BUNDLE_SESSION, BUNDLE_SIG, BUNDLE_SIGNED_KIND, BUNDLE_SUMS, BUNDLE_WITNESS, BundleInfo,
    EnrolmentEntry, WitnessEntry, WitnessFile, key_to_pem, sums_line,
};
use jitrec_format::fixtures::{self, StoredSession};
use jitrec_format::{
    Event, EventKind, MediaTime, ObjectKey, ProcessExit, SessionHeader, Sha256Digest, SourceState,
    StopBy, StopCause, StopPeer, UserRef, WindowInfo, encode_events,
};

type Result<T> = std::result::Result<T, Box<dyn std::error::Error>>;

fn main() -> Result<()> {
    let corpus = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("corpus");
    documents(&corpus.join("document"))?;
    events(&corpus.join("events"))?;
    range(&corpus.join("range"))?;
    bundle(&corpus.join("bundle"))?;
    Ok(())
}

fn write(dir: &Path, name: &str, bytes: &[u8]) -> Result<()> {
    std::fs::create_dir_all(dir)?;
    std::fs::write(dir.join(format!("seed-{name}")), bytes)?;
    Ok(())
}

/// A mode byte (see the target), then the session's documents, one a line.
fn session_input(mode: u8, s: &StoredSession) -> Vec<u8> {
    let mut out = vec![mode];
    out.extend_from_slice(&s.header);
    for (m, _, _) in &s.chunks {
        out.push(b'\n');
        out.extend_from_slice(m);
    }
    out.push(b'\n');
    out.extend_from_slice(&s.close);
    out
}

fn documents(dir: &Path) -> Result<()> {
    let v1 = fixtures::stored_session(fixtures::session_id(1), 2);
    let v2 = fixtures::stored_session_v2(fixtures::session_id(2), 1, &fixtures::signer(0));
    write(dir, "v1-session", &session_input(0, &v1))?;
    write(dir, "v1-session-relink", &session_input(3, &v1))?;
    write(dir, "v2-session-relink", &session_input(1, &v2))?;
    let key = ObjectKey::ChunkEvents(
        fixtures::header_v2(fixtures::session_id(2), &fixtures::signer(0)).session_key(),
        7,
    );
    let key_text = format!("\0{key}\n{}", fixtures::signer(0).public());
    write(dir, "object-key", key_text.as_bytes())?;
    Ok(())
}

/// One event of every kind, inside a chunk starting at 0.
fn all_kinds() -> Vec<Event> {
    let t = fixtures::t0();
    let user = UserRef {
        name: "alice".into(),
        id: "1000".into(),
    };
    let window = WindowInfo {
        window: "0x3a00004".into(),
        title: "Terminal".into(),
        pid: Some(4001),
    };
    let kinds = vec![
        EventKind::JitStart {
            user: "alice".into(),
            machine: "ws-0421".into(),
            authorized_by: Some("bob@example.com".into()),
            reason: Some("INC-4711".into()),
        },
        EventKind::RecorderStarted,
        EventKind::EventSource {
            source: "processes".into(),
            state: SourceState::Partial,
            detail: "polling /proc".into(),
        },
        fixtures::events(0).remove(0).event,
        EventKind::ProcessExit(ProcessExit {
            pid: 4000,
            exit_code: Some(0),
            signal: None,
        }),
        EventKind::WindowFocus(window.clone()),
        EventKind::WindowTitle(window),
        EventKind::FramesDropped { count: 3 },
        EventKind::EventsSummarised {
            count: 500,
            what: "process starts".into(),
        },
        EventKind::CaptureError {
            message: "XShmGetImage failed".into(),
        },
        EventKind::Gap {
            from_us: MediaTime::from_micros(100),
            to_us: MediaTime::from_micros(200),
            reason: "screen locked".into(),
        },
        EventKind::NoticeShown {
            text: "This session is being recorded.".into(),
            display: ":0".into(),
            require_ack: true,
            display_seconds: None,
        },
        EventKind::NoticeAcknowledged,
        EventKind::NoticeFailed {
            message: "X11 connect: no display".into(),
        },
        EventKind::FailClosed {
            reason: "the spool was full for 10 s".into(),
            action: "removed alice from group sudo in /etc/group".into(),
        },
        EventKind::JitStop {
            user: "alice".into(),
            machine: "ws-0421".into(),
            reason: None,
            stopped_by: Some(Box::new(StopCause {
                by: StopBy::ControlCommand,
                peer: Some(StopPeer {
                    user: user.clone(),
                    pid: Some(4242),
                    exe: Some("/usr/bin/jit".into()),
                    login_user: Some(user),
                }),
                recorded_user: Some(true),
                detail: "jit stop".into(),
            })),
        },
        EventKind::RecorderStopped,
    ];
    kinds
        .into_iter()
        .enumerate()
        .map(|(i, event)| Event {
            media_us: MediaTime::from_micros(200 + i as u64),
            utc: t,
            event,
        })
        .collect()
}

fn events(dir: &Path) -> Result<()> {
    // Mode 0: a payload as the recorder stores it.
    let mut stored = vec![0u8];
    stored.extend_from_slice(&encode_events(&fixtures::events(0))?);
    write(dir, "payload", &stored)?;
    // Mode 3: plaintext lines, v2 manifest.
    let mut plain = vec![3u8];
    for e in all_kinds() {
        serde_json::to_writer(&mut plain, &e)?;
        plain.push(b'\n');
    }
    write(dir, "all-kinds-plain", &plain)?;
    Ok(())
}

fn range(dir: &Path) -> Result<()> {
    for (name, len, h) in [
        ("part", 1000u64, "bytes=0-99"),
        ("open", 1000, "bytes=500-"),
        ("suffix", 1000, "bytes=-200"),
        ("empty-object", 0, "bytes=0-0"),
        ("several", 1000, "bytes=0-1, 5-6"),
    ] {
        let mut input = len.to_le_bytes().to_vec();
        input.extend_from_slice(h.as_bytes());
        write(dir, name, &input)?;
    }
    Ok(())
}

/// A verified bundle of a one-chunk v2 session, as `jitrec-player export --bundle` writes it
/// (player/src/bundle.rs), without the remuxed MP4 and the WebVTT track, which nothing checks
/// but `SHA256SUMS`.
fn bundle(dir: &Path) -> Result<()> {
    let endpoint = fixtures::signer(0);
    let player = fixtures::signer(9);
    let header: SessionHeader = fixtures::header_v2(fixtures::session_id(3), &endpoint);
    let s = fixtures::stored_session_v2_from(header.clone(), 1, &endpoint);
    let at = header.session_key();
    let prefix = at.prefix();
    let t = fixtures::t0();

    let mut objects: Vec<(ObjectKey, Vec<u8>)> = vec![
        (ObjectKey::SessionHeader(at), s.header.clone()),
        (ObjectKey::Init(at, 0), fixtures::init_bytes(0)),
    ];
    let mut events = Vec::new();
    for (seq, (m, video, ev)) in s.chunks.iter().enumerate() {
        let seq = seq as u64;
        objects.push((ObjectKey::ChunkManifest(at, seq), m.clone()));
        objects.push((ObjectKey::ChunkVideo(at, seq), video.clone()));
        objects.push((ObjectKey::ChunkEvents(at, seq), ev.clone()));
        events.extend(fixtures::events(seq));
    }
    objects.push((ObjectKey::SessionClosed(at), s.close.clone()));

    let mut files: Vec<(String, Vec<u8>)> = vec![(
        format!("{BUNDLE_ROOT}README.md"),
        b"A jitrec evidence bundle (fuzz seed).\n".to_vec(),
    )];
    let mut witnessed = Vec::new();
    for (k, bytes) in &objects {
        let key = k.to_string();
        let rel = key
            .strip_prefix(&prefix)
            .ok_or("an object outside its session")?;
        witnessed.push(WitnessEntry {
            key: key.clone(),
            size: bytes.len() as u64,
            sha256: Sha256Digest::of(bytes),
            seen_at: t,
        });
        files.push((format!("{BUNDLE_SESSION}{rel}"), bytes.clone()));
    }
    files.push((BUNDLE_EVENTS.into(), serde_json::to_vec_pretty(&events)?));
    files.push((
        BUNDLE_KEY.into(),
        key_to_pem(&endpoint.public()).into_bytes(),
    ));
    let enrolment = vec![EnrolmentEntry {
        machine_id: header.machine.id.clone(),
        hostname: header.machine.hostname.clone(),
        fingerprint: endpoint.public().fingerprint().to_string(),
        public_key: endpoint.public().to_string(),
        state: "approved".into(),
        decided_by: "carol".into(),
        decided_at: Some(t),
        reason: "enrolled at deployment".into(),
    }];
    files.push((
        BUNDLE_ENROLMENT.into(),
        serde_json::to_vec_pretty(&enrolment)?,
    ));
    let witness = WitnessFile {
        entries: witnessed,
        head: None,
    };
    files.push((BUNDLE_WITNESS.into(), serde_json::to_vec_pretty(&witness)?));
    let info = BundleInfo {
        version: 1,
        session_id: header.session_id,
        source_prefix: prefix.clone(),
        machine_id: header.machine.id.clone(),
        hostname: header.machine.hostname.clone(),
        endpoint_key: Some(endpoint.public()),
        exported_at: t,
        exported_by: "jitrec-fuzz seeds".into(),
        player_report: "verified".into(),
        authenticity: Some(serde_json::json!({ "state": "verified" })),
    };
    files.push((BUNDLE_INFO.into(), serde_json::to_vec_pretty(&info)?));
    files.push((
        BUNDLE_PLAYER_KEY.into(),
        key_to_pem(&player.public()).into_bytes(),
    ));
    let mut sums = String::new();
    for (path, bytes) in &files {
        sums.push_str(&sums_line(path, &Sha256Digest::of(bytes)));
    }
    let sig = base64::engine::general_purpose::STANDARD
        .encode(player.sign_as(BUNDLE_SIGNED_KIND, sums.as_bytes()));
    files.push((BUNDLE_SUMS.into(), sums.into_bytes()));
    files.push((BUNDLE_SIG.into(), format!("{sig}\n").into_bytes()));

    let mut tar = tar::Builder::new(Vec::new());
    for (path, bytes) in &files {
        let mut h = tar::Header::new_gnu();
        h.set_mode(0o644);
        h.set_mtime(t.timestamp() as u64);
        h.set_size(bytes.len() as u64);
        tar.append_data(&mut h, path, bytes.as_slice())?;
    }
    let archive = tar.into_inner()?;

    let fp = player.public().fingerprint().to_string();
    let r = jitrec_verify::check(archive.as_slice(), Some(&fp))?;
    if !r.verified() {
        return Err(format!("the seed bundle does not verify:\n{r}").into());
    }
    write(dir, "verified-v2", &archive)?;
    Ok(())
}
