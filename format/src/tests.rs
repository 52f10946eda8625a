//! Round-trip and rejection tests for every document type of format v1.

use crate::fixtures::{self, session_id, stored_session};
use crate::*;

fn json_with(bytes: &[u8], f: impl FnOnce(&mut serde_json::Value)) -> Vec<u8> {
    let mut v: serde_json::Value = serde_json::from_slice(bytes).unwrap();
    f(&mut v);
    serde_json::to_vec(&v).unwrap()
}

#[test]
fn header_round_trips() {
    let h = fixtures::header(session_id(1));
    let bytes = h.to_bytes().unwrap();
    assert_eq!(SessionHeader::from_bytes(&bytes).unwrap(), h);
    // Optional fields may be omitted or null and mean "unknown".
    let sparse = json_with(&bytes, |v| {
        v["authorization"]
            .as_object_mut()
            .unwrap()
            .remove("authorized_by");
        v["labels"] = serde_json::json!({});
    });
    let parsed = SessionHeader::from_bytes(&sparse).unwrap();
    assert_eq!(parsed.authorization.authorized_by, None);
    assert_eq!(parsed.labels, Labels::default());
}

#[test]
fn header_rejections() {
    let bytes = fixtures::header(session_id(1)).to_bytes().unwrap();
    let cases: Vec<(&str, Vec<u8>)> = vec![
        (
            "future version",
            json_with(&bytes, |v| v["version"] = 3.into()),
        ),
        (
            "no version",
            json_with(&bytes, |v| {
                v.as_object_mut().unwrap().remove("version");
            }),
        ),
        (
            "missing field",
            json_with(&bytes, |v| {
                v.as_object_mut().unwrap().remove("started_at");
            }),
        ),
        (
            "unknown field",
            json_with(&bytes, |v| v["extra"] = 1.into()),
        ),
        (
            "unknown nested field",
            json_with(&bytes, |v| v["machine"]["serial"] = "x".into()),
        ),
        (
            "b-frames",
            json_with(&bytes, |v| v["codec"]["b_frames"] = 2.into()),
        ),
        (
            "unknown codec",
            json_with(&bytes, |v| v["codec"]["codec"] = "hevc".into()),
        ),
        (
            "empty hostname",
            json_with(&bytes, |v| v["machine"]["hostname"] = "".into()),
        ),
        (
            "control chars",
            json_with(&bytes, |v| v["user"]["name"] = "al\nice".into()),
        ),
        (
            "bad session id",
            json_with(&bytes, |v| {
                v["session_id"] = "67e55044-10b1-426f-9247-bb680e5fe0c8".into()
            }),
        ),
        ("not json", b"\x00\x01garbage".to_vec()),
        ("truncated", bytes[..bytes.len() / 2].to_vec()),
    ];
    for (name, case) in cases {
        let err = SessionHeader::from_bytes(&case).expect_err(name);
        // Every rejection names the document, so a log line is actionable on its own.
        assert!(err.to_string().contains("session header"), "{name}: {err}");
    }
    let err =
        SessionHeader::from_bytes(&json_with(&bytes, |v| v["version"] = 3.into())).unwrap_err();
    assert!(
        matches!(err, FormatError::UnknownVersion { found: 3, .. }),
        "{err}"
    );
    let err = SessionHeader::from_bytes(&json_with(&bytes, |v| {
        v.as_object_mut().unwrap().remove("version");
    }))
    .unwrap_err();
    assert!(matches!(err, FormatError::MissingVersion { .. }), "{err}");
    let huge = vec![b' '; MAX_DOCUMENT_BYTES + 1];
    assert!(matches!(
        SessionHeader::from_bytes(&huge),
        Err(FormatError::TooLarge { .. })
    ));
    // Writing an invalid document is refused too, not deferred to the reader.
    let mut bad = fixtures::header(session_id(1));
    bad.codec.b_frames = 1;
    assert!(matches!(bad.to_bytes(), Err(FormatError::Invalid { .. })));
}

#[test]
fn manifest_round_trips_and_verifies_payloads() {
    let s = stored_session(session_id(2), 2);
    let (mbytes, video, events) = &s.chunks[1];
    let m = ChunkManifest::from_bytes(mbytes).unwrap();
    assert_eq!(m.to_bytes().unwrap(), *mbytes);
    assert_eq!(m.seq, 1);
    m.verify_video(video).unwrap();
    m.verify_events(events).unwrap();
    m.verify_init(&fixtures::init_bytes(0)).unwrap();

    let mut flipped = video.clone();
    flipped[0] ^= 1;
    assert!(matches!(
        m.verify_video(&flipped),
        Err(PayloadError::Hash { .. })
    ));
    assert!(matches!(
        m.verify_video(&video[1..]),
        Err(PayloadError::Size { expected, actual, .. }) if expected == actual + 1
    ));
    assert!(m.verify_events(video).is_err());
    assert!(m.verify_init(b"other").is_err());
}

#[test]
fn manifest_rejections() {
    let s = stored_session(session_id(3), 1);
    let bytes = &s.chunks[0].0;
    let cases: Vec<(&str, Vec<u8>)> = vec![
        (
            "future version",
            json_with(bytes, |v| v["version"] = 7.into()),
        ),
        (
            "missing prev",
            json_with(bytes, |v| {
                v.as_object_mut().unwrap().remove("prev");
            }),
        ),
        (
            "unknown field",
            json_with(bytes, |v| v["video"]["crc"] = 1.into()),
        ),
        (
            "end before start",
            json_with(bytes, |v| v["media_start_us"] = 5_000_000.into()),
        ),
        (
            "utc end before start",
            json_with(bytes, |v| v["utc_end"] = "2020-01-01T00:00:00Z".into()),
        ),
        ("no frames", json_with(bytes, |v| v["frames"] = 0.into())),
        (
            "empty video",
            json_with(bytes, |v| v["video"]["size"] = 0.into()),
        ),
        (
            "zero width",
            json_with(bytes, |v| v["init"]["width"] = 0.into()),
        ),
        (
            "bad codec string",
            json_with(bytes, |v| v["init"]["codec"] = "avc1; drop".into()),
        ),
        ("bad hash", json_with(bytes, |v| v["prev"] = "ABCD".into())),
        (
            "seq too large",
            json_with(bytes, |v| v["seq"] = (MAX_SEQ + 1).into()),
        ),
        (
            "negative time",
            json_with(bytes, |v| v["media_start_us"] = (-1).into()),
        ),
    ];
    for (name, case) in cases {
        let err = ChunkManifest::from_bytes(&case).expect_err(name);
        assert!(err.to_string().contains("chunk manifest"), "{name}: {err}");
    }
}

#[test]
fn close_round_trips_and_rejects() {
    let s = stored_session(session_id(4), 3);
    let c = SessionClose::from_bytes(&s.close).unwrap();
    assert_eq!(c.chunk_count, 3);
    assert_eq!(c.to_bytes().unwrap(), s.close);
    for (name, case) in [
        (
            "future version",
            json_with(&s.close, |v| v["version"] = 2.into()),
        ),
        (
            "closed before ended",
            json_with(&s.close, |v| v["closed_at"] = "2020-01-01T00:00:00Z".into()),
        ),
        (
            "unknown reason",
            json_with(&s.close, |v| v["end_reason"] = "vanished".into()),
        ),
        (
            "missing count",
            json_with(&s.close, |v| {
                v.as_object_mut().unwrap().remove("chunk_count");
            }),
        ),
    ] {
        let err = SessionClose::from_bytes(&case).expect_err(name);
        assert!(err.to_string().contains("close record"), "{name}: {err}");
    }
}

fn every_event_kind() -> Vec<Event> {
    let t = fixtures::t0();
    let at = |us: u64| {
        (
            MediaTime::from_micros(us),
            t + chrono::Duration::microseconds(us as i64),
        )
    };
    let kinds = vec![
        EventKind::JitStart {
            user: "alice".into(),
            machine: "ws-0421".into(),
            authorized_by: Some("bob".into()),
            reason: None,
        },
        EventKind::RecorderStarted,
        fixtures::events(0).remove(0).event,
        EventKind::ProcessExit(ProcessExit {
            pid: 4000,
            exit_code: Some(0),
            signal: None,
        }),
        EventKind::ProcessExit(ProcessExit {
            pid: 4001,
            exit_code: None,
            signal: Some(9),
        }),
        EventKind::EventSource {
            source: "processes".into(),
            state: SourceState::Partial,
            detail: "polling /proc every 100 ms".into(),
        },
        EventKind::WindowFocus(WindowInfo {
            window: "0x3a00007".into(),
            title: "root@ws-0421: ~".into(),
            pid: Some(3999),
        }),
        EventKind::WindowTitle(WindowInfo {
            window: "0x3a00007".into(),
            title: "vi /etc/sudoers \u{2014} ünïcode".into(),
            pid: None,
        }),
        EventKind::FramesDropped { count: 3 },
        EventKind::EventsSummarised {
            count: 9000,
            what: "process_start of /bin/true".into(),
        },
        EventKind::CaptureError {
            message: "XShmGetImage failed".into(),
        },
        EventKind::Gap {
            from_us: MediaTime::from_micros(100),
            to_us: MediaTime::from_micros(200),
            reason: "spool full".into(),
        },
        EventKind::NoticeShown {
            text: "This session is being recorded for security review.".into(),
            display: ":0".into(),
            require_ack: false,
            display_seconds: Some(10),
        },
        EventKind::NoticeAcknowledged,
        EventKind::NoticeFailed {
            message: "X11 connect: no display".into(),
        },
        EventKind::FailClosed {
            reason: "the spool was full for 10 s".into(),
            action: "removed alice from group sudo in /etc/group".into(),
        },
        EventKind::Change {
            area: "accounts".into(),
            action: "member_added".into(),
            subject: "eve".into(),
            detail: Some("group sudo".into()),
        },
        EventKind::Change {
            area: "files".into(),
            action: "modified".into(),
            subject: "/etc/hosts".into(),
            detail: None,
        },
        EventKind::JitStop {
            user: "alice".into(),
            machine: "ws-0421".into(),
            reason: Some("expired".into()),
            stopped_by: None,
        },
        EventKind::RecorderStopped,
    ];
    kinds
        .into_iter()
        .enumerate()
        .map(|(i, event)| {
            let (media_us, utc) = at(i as u64 * 1000);
            Event {
                media_us,
                utc,
                event,
            }
        })
        .collect()
}

fn manifest_for(events: &[Event], payload: &[u8]) -> ChunkManifest {
    let sid = session_id(5);
    let mut m = fixtures::manifest(
        sid,
        0,
        Sha256Digest::of(b"h"),
        b"v",
        payload,
        events.len() as u32,
    );
    m.media_start_us = MediaTime::ZERO;
    m.media_end_us = MediaTime::from_micros(1_000_000);
    m
}

#[test]
fn events_round_trip_every_kind() {
    let events = every_event_kind();
    let payload = encode_events(&events).unwrap();
    let decoded = decode_events(&payload).unwrap();
    assert_eq!(decoded, events);
    validate_events(&manifest_for(&events, &payload), &decoded).unwrap();
    // An empty chunk's payload is a valid, empty zstd stream.
    assert!(
        decode_events(&encode_events(&[]).unwrap())
            .unwrap()
            .is_empty()
    );
}

#[test]
fn events_rejections() {
    let events = every_event_kind();
    let payload = encode_events(&events).unwrap();
    let m = manifest_for(&events, &payload);

    assert!(matches!(
        decode_events(b"not zstd"),
        Err(EventsError::Zstd(_))
    ));
    assert!(matches!(
        decode_events(&payload[..payload.len() - 4]),
        Err(EventsError::Zstd(_))
    ));

    let bad_line = zstd::bulk::compress(b"{\"media_us\":1,\"utc\":\"2026-01-01T00:00:00Z\",\"event\":{\"type\":\"recorder_started\"}}\n{\"media_us\":2}\n", 3).unwrap();
    match decode_events(&bad_line) {
        Err(EventsError::Line { line: 2, .. }) => {}
        other => panic!("expected a line-2 error, got {other:?}"),
    }
    let unknown_type = zstd::bulk::compress(
        b"{\"media_us\":1,\"utc\":\"2026-01-01T00:00:00Z\",\"event\":{\"type\":\"keylogger\"}}\n",
        3,
    )
    .unwrap();
    assert!(matches!(
        decode_events(&unknown_type),
        Err(EventsError::Line { line: 1, .. })
    ));
    let unknown_field = zstd::bulk::compress(b"{\"media_us\":1,\"utc\":\"2026-01-01T00:00:00Z\",\"event\":{\"type\":\"process_exit\",\"pid\":1,\"core\":true}}\n", 3).unwrap();
    assert!(matches!(
        decode_events(&unknown_field),
        Err(EventsError::Line { line: 1, .. })
    ));

    // A decompression bomb is refused, not buffered.
    let bomb =
        zstd::bulk::compress(&vec![b' '; (MAX_DECODED_EVENTS_BYTES + 10) as usize], 3).unwrap();
    assert!(bomb.len() < 1 << 20);
    assert!(matches!(decode_events(&bomb), Err(EventsError::TooLarge)));

    let mut outside = events.clone();
    outside[3].media_us = MediaTime::from_micros(5_000_000);
    assert!(matches!(
        validate_events(&m, &outside),
        Err(EventsError::Invalid { index: 3, .. })
    ));
    let mut unsorted = events.clone();
    unsorted.swap(1, 2);
    assert!(matches!(
        validate_events(&m, &unsorted),
        Err(EventsError::Invalid { index: 2, .. })
    ));
    assert!(matches!(
        validate_events(&m, &events[1..]),
        Err(EventsError::Count { .. })
    ));
    let mut bad_gap = events.clone();
    bad_gap[9].event = EventKind::Gap {
        from_us: MediaTime::from_micros(9),
        to_us: MediaTime::from_micros(1),
        reason: "x".into(),
    };
    assert!(matches!(
        validate_events(&m, &bad_gap),
        Err(EventsError::Invalid { index: 9, .. })
    ));
}

#[test]
fn more_events_than_a_recorder_writes_are_refused_before_they_are_held() {
    // Two sources, each a 20,000 burst and 2,000/s, twice over, plus the recorder's own.
    assert_eq!(max_events(2_000_000), 96_064);
    assert_eq!(max_events(1), 88_064);
    assert_eq!(max_events(3_600_000_000), MAX_EVENTS_PER_CHUNK);
    assert_eq!(max_events(u64::MAX), MAX_EVENTS_PER_CHUNK);
    let events: Vec<Event> = (0..10).map(|seq| fixtures::events(seq).remove(0)).collect();
    let payload = encode_events(&events).unwrap();
    let (all, bytes) = decode_events_bounded(&payload, 10).unwrap();
    assert_eq!(all.len(), 10);
    assert!(bytes > 10 * 50, "{bytes}");
    assert!(matches!(
        decode_events_bounded(&payload, 9),
        Err(EventsError::TooMany { max: 9 })
    ));
}

#[test]
fn object_keys_round_trip() {
    let s = session_id(6);
    let keys = [
        ObjectKey::SessionHeader(s.into()),
        ObjectKey::Init(s.into(), 0),
        ObjectKey::Init(s.into(), 12),
        ObjectKey::ChunkVideo(s.into(), 0),
        ObjectKey::ChunkEvents(s.into(), 41),
        ObjectKey::ChunkManifest(s.into(), MAX_SEQ),
        ObjectKey::SessionClosed(s.into()),
    ];
    for k in keys {
        let text = k.to_string();
        assert!(text.starts_with(&ObjectKey::session_prefix(s)));
        assert_eq!(ObjectKey::parse(&text).unwrap(), k, "{text}");
        assert_eq!(k.session(), s);
    }
    assert_eq!(
        ObjectKey::ChunkManifest(s.into(), 7).to_string(),
        format!("v1/sessions/{s}/chunks/0000000007.json")
    );
    // Within a session, keys sort by sequence number.
    assert!(
        ObjectKey::ChunkManifest(s.into(), 9).to_string()
            < ObjectKey::ChunkManifest(s.into(), 10).to_string()
    );
}

#[test]
fn object_key_rejections() {
    let s = session_id(7);
    let upper = s.to_string().to_uppercase();
    let bad = [
        "".to_string(),
        "v2/sessions/x/session.json".to_string(),
        format!("v1/sessions/{s}"),
        format!("v1/sessions/{s}/"),
        format!("v1/sessions/{upper}/session.json"),
        format!("v1/sessions/{s}/chunks/7.json"),
        format!("v1/sessions/{s}/chunks/00000000007.json"),
        format!("v1/sessions/{s}/chunks/+000000007.json"),
        format!("v1/sessions/{s}/chunks/0000000007.mp4"),
        format!("v1/sessions/{s}/chunks/0000000007"),
        format!("v1/sessions/{s}/init/0000000000.m4s"),
        format!("v1/sessions/{s}/../{s}/session.json"),
        format!("v1/sessions/{s}/session.json/x"),
        format!("v1/sessions/{s}/notes.txt"),
    ];
    for k in bad {
        assert!(ObjectKey::parse(&k).is_err(), "accepted {k:?}");
    }
}

fn verify_all(s: &fixtures::StoredSession) -> Result<SessionClose, ChainError> {
    let mut v = ChainVerifier::new(&s.header)?;
    for (m, _, _) in &s.chunks {
        v.push(m)?;
    }
    v.finish(&s.close)
}

#[test]
fn intact_chain_verifies() {
    let s = stored_session(session_id(8), 5);
    let close = verify_all(&s).unwrap();
    assert_eq!(close.chunk_count, 5);
    // A session with no chunks chains its close record straight to the header.
    let empty = stored_session(session_id(9), 0);
    verify_all(&empty).unwrap();
}

#[test]
fn tampered_chains_are_pinpointed() {
    let base = stored_session(session_id(10), 4);

    // Altering chunk 1's manifest (valid JSON, one value changed) breaks chunk 2's link.
    let mut altered = stored_session(session_id(10), 4);
    altered.chunks[1].0 = json_with(&altered.chunks[1].0, |v| v["frames"] = 11.into());
    match verify_all(&altered) {
        Err(ChainError::BrokenLink { seq: 2, .. }) => {}
        other => panic!("expected broken link at 2, got {other:?}"),
    }

    // A deleted chunk is a gap.
    let mut deleted = stored_session(session_id(10), 4);
    deleted.chunks.remove(2);
    match verify_all(&deleted) {
        Err(ChainError::SeqGap {
            expected: 2,
            found: 3,
        }) => {}
        other => panic!("expected a gap at 2, got {other:?}"),
    }

    // Two manifests swapped.
    let mut swapped = stored_session(session_id(10), 4);
    swapped.chunks.swap(1, 2);
    assert!(matches!(
        verify_all(&swapped),
        Err(ChainError::SeqGap {
            expected: 1,
            found: 2
        })
    ));

    // A forged chunk renumbered to fill a hole still fails on its link.
    let mut forged = stored_session(session_id(10), 4);
    forged.chunks[2].0 = json_with(&base.chunks[3].0, |v| v["seq"] = 2.into());
    assert!(matches!(
        verify_all(&forged),
        Err(ChainError::BrokenLink { seq: 2, .. })
    ));

    // Truncation: the last chunk dropped, the close record kept.
    let mut truncated = stored_session(session_id(10), 4);
    truncated.chunks.pop();
    assert!(matches!(
        verify_all(&truncated),
        Err(ChainError::CloseCount {
            claimed: 4,
            seen: 3
        })
    ));

    // A close record rewritten to match the truncation still does not link.
    truncated.close = json_with(&truncated.close, |v| v["chunk_count"] = 3.into());
    assert!(matches!(
        verify_all(&truncated),
        Err(ChainError::CloseLink { .. })
    ));

    // A chunk from another session.
    let other = stored_session(session_id(11), 4);
    let mut mixed = stored_session(session_id(10), 4);
    mixed.chunks[1] = other.chunks[1].clone();
    assert!(matches!(
        verify_all(&mixed),
        Err(ChainError::WrongSession { .. })
    ));

    // A header altered after the fact breaks chunk 0's link.
    let mut header = stored_session(session_id(10), 4);
    header.header = json_with(&header.header, |v| v["user"]["name"] = "mallory".into());
    assert!(matches!(
        verify_all(&header),
        Err(ChainError::BrokenLink { seq: 0, .. })
    ));

    // An unknown version inside the chain is a format error, not a pass.
    let mut future = stored_session(session_id(10), 4);
    future.chunks[0].0 = json_with(&future.chunks[0].0, |v| v["version"] = 3.into());
    assert!(matches!(
        verify_all(&future),
        Err(ChainError::Format(FormatError::UnknownVersion { .. }))
    ));
}

#[test]
fn time_going_backwards_is_rejected() {
    let sid = session_id(12);
    let header = fixtures::header(sid).to_bytes().unwrap();
    let mut v = ChainVerifier::new(&header).unwrap();
    let m0 = fixtures::manifest(sid, 0, Sha256Digest::of(&header), b"v", b"e", 0);
    let m0b = m0.to_bytes().unwrap();
    v.push(&m0b).unwrap();
    let mut m1 = fixtures::manifest(sid, 1, Sha256Digest::of(&m0b), b"v", b"e", 0);
    m1.media_start_us = MediaTime::from_micros(1_000_000);
    assert!(matches!(
        v.push(&m1.to_bytes().unwrap()),
        Err(ChainError::TimeReversed { seq: 1, .. })
    ));
}

mod v2 {
    //! Format version 2: signatures, and what an attacker holding the bucket key can and cannot
    //! make a verifier accept.

    use super::json_with;
    use crate::fixtures::{self, session_id, signer, stored_session, stored_session_v2};
    use crate::*;
    use base64::Engine as _;
    use base64::engine::general_purpose::STANDARD as B64;

    fn verify_all(s: &fixtures::StoredSession) -> Result<ChainVerifier, ChainError> {
        let mut v = ChainVerifier::new(&s.header)?;
        for (m, _, _) in &s.chunks {
            v.push(m)?;
        }
        Ok(v)
    }

    fn finish(s: &fixtures::StoredSession) -> Result<SessionClose, ChainError> {
        verify_all(s)?.finish(&s.close)
    }

    /// The document inside a stored envelope.
    fn body(stored: &[u8]) -> serde_json::Value {
        let env: serde_json::Value = serde_json::from_slice(stored).unwrap();
        serde_json::from_slice(&B64.decode(env["payload"].as_str().unwrap()).unwrap()).unwrap()
    }

    /// An envelope around `doc`, signed by `key` (what an attacker with a key of their own does).
    fn reseal(kind: &str, doc: &serde_json::Value, key: &EndpointSigner) -> Vec<u8> {
        let body = serde_json::to_vec(doc).unwrap();
        let sig = sign(key, &signed_message(kind, &body));
        serde_json::to_vec(&serde_json::json!({
            "version": 2, "document": kind,
            "payload": B64.encode(&body), "signature": B64.encode(sig),
        }))
        .unwrap()
    }

    fn sign(key: &EndpointSigner, msg: &[u8]) -> [u8; 64] {
        use ed25519_dalek::Signer as _;
        ed25519_dalek::SigningKey::from_bytes(&key.seed())
            .sign(msg)
            .to_bytes()
    }

    #[test]
    fn a_signed_session_verifies_and_names_its_key() {
        let k = signer(1);
        let s = stored_session_v2(session_id(1), 3, &k);
        let v = verify_all(&s).unwrap();
        assert_eq!(v.key(), Some(&k.public()));
        assert_eq!(v.header().version, 2);
        let close = v.finish(&s.close).unwrap();
        assert_eq!(close.stopped_by.unwrap().by, StopBy::GroupChange);
        // Every document is an envelope, parseable on its own.
        assert_eq!(ChunkManifest::from_bytes(&s.chunks[1].0).unwrap().seq, 1);
        // The announced key's text form round-trips.
        let text = k.public().to_string();
        assert!(text.starts_with("ed25519:"), "{text}");
        assert_eq!(text.parse::<EndpointKey>().unwrap(), k.public());
    }

    #[test]
    fn a_rechained_session_does_not_verify_without_the_key() {
        // The attack of the issue: drop a chunk's events, recompute digests and links. Without
        // the endpoint's key the attacker can only sign with a key of their own.
        let k = signer(1);
        let mallory = signer(9);
        let mut s = stored_session_v2(session_id(2), 3, &k);
        let mut m1 = body(&s.chunks[1].0);
        let empty = encode_events(&[]).unwrap();
        m1["events"]["size"] = (empty.len() as u64).into();
        m1["events"]["sha256"] = Sha256Digest::of(&empty).to_string().into();
        m1["events"]["count"] = 0.into();
        s.chunks[1].0 = reseal("chunk_manifest", &m1, &mallory);
        let err = verify_all(&s).unwrap_err();
        assert!(
            matches!(&err, ChainError::BadSignature { what, .. } if what == "chunk 1"),
            "{err}"
        );

        // Changing the payload bytes but keeping the signature fails too.
        let mut s = stored_session_v2(session_id(2), 3, &k);
        let mut env: serde_json::Value = serde_json::from_slice(&s.chunks[2].0).unwrap();
        let mut m2 = body(&s.chunks[2].0);
        m2["frames"] = 11.into();
        env["payload"] = B64.encode(serde_json::to_vec(&m2).unwrap()).into();
        s.chunks[2].0 = serde_json::to_vec(&env).unwrap();
        assert!(matches!(
            verify_all(&s),
            Err(ChainError::BadSignature { .. })
        ));
    }

    #[test]
    fn a_session_built_from_nothing_verifies_only_under_its_own_key() {
        // A whole session forged with another key is self-consistent: the chain verifies, but
        // under the forger's key, which is what the player's enrolment check then refuses.
        let forged = stored_session_v2(session_id(3), 2, &signer(9));
        let v = verify_all(&forged).unwrap();
        assert_ne!(v.key(), Some(&signer(1).public()));
        assert_eq!(v.key(), Some(&signer(9).public()));

        // Swapping only the announced key in a real header breaks the header's own signature.
        let s = stored_session_v2(session_id(3), 2, &signer(1));
        let mut h = body(&s.header);
        h["endpoint_key"] = signer(9).public().to_string().into();
        let env: serde_json::Value = serde_json::from_slice(&s.header).unwrap();
        let mut env = env;
        env["payload"] = B64.encode(serde_json::to_vec(&h).unwrap()).into();
        let err = ChainVerifier::new(&serde_json::to_vec(&env).unwrap()).unwrap_err();
        assert!(matches!(err, ChainError::BadSignature { .. }), "{err}");
    }

    #[test]
    fn versions_do_not_mix_within_a_session() {
        // Downgrading one manifest to unsigned v1 inside a signed session is refused.
        let k = signer(1);
        let mut s = stored_session_v2(session_id(4), 3, &k);
        let mut m1 = body(&s.chunks[1].0);
        m1["version"] = 1.into();
        s.chunks[1].0 = serde_json::to_vec(&m1).unwrap();
        let err = verify_all(&s).unwrap_err();
        assert!(
            matches!(
                err,
                ChainError::MixedVersion {
                    found: 1,
                    header: 2,
                    ..
                }
            ),
            "{err}"
        );
        // And a v2 envelope holding a v1 document is not a v2 document.
        let mut h = body(&s.header);
        h["version"] = 1.into();
        h.as_object_mut().unwrap().remove("endpoint_key");
        let stored = reseal("session_header", &h, &k);
        let err = SessionHeader::from_bytes(&stored).unwrap_err();
        assert!(
            err.to_string()
                .contains("version 2 envelope holds a version 1"),
            "{err}"
        );
    }

    #[test]
    fn envelopes_are_strict() {
        let k = signer(1);
        let s = stored_session_v2(session_id(5), 1, &k);
        // A header's envelope stored where a manifest belongs is not a manifest.
        let err = ChunkManifest::from_bytes(&s.header).unwrap_err();
        assert!(
            err.to_string().contains("not a \"chunk_manifest\""),
            "{err}"
        );
        let cases: Vec<(&str, Vec<u8>)> = vec![
            (
                "unknown envelope field",
                json_with(&s.chunks[0].0, |v| v["extra"] = 1.into()),
            ),
            (
                "non-canonical base64",
                json_with(&s.chunks[0].0, |v| {
                    let p = v["payload"]
                        .as_str()
                        .unwrap()
                        .trim_end_matches('=')
                        .to_owned();
                    v["payload"] = p.into();
                }),
            ),
            (
                "short signature",
                json_with(&s.chunks[0].0, |v| {
                    v["signature"] = B64.encode([0u8; 32]).into()
                }),
            ),
        ];
        for (name, case) in cases {
            assert!(ChunkManifest::from_bytes(&case).is_err(), "{name} accepted");
        }
        // A weak (small-order) key is not a key: the identity point.
        let mut weak = [0u8; 32];
        weak[0] = 1;
        assert!(EndpointKey::from_bytes(weak).is_err());
    }

    #[test]
    fn version_2_fields_are_required_there_and_refused_in_version_1() {
        let k = signer(1);
        let h = fixtures::header_v2(session_id(6), &k);
        let no_key = SessionHeader {
            endpoint_key: None,
            ..h.clone()
        };
        assert!(no_key.to_signed_bytes(&k).is_err());
        let v1_with_key = SessionHeader {
            version: 1,
            ..h.clone()
        };
        assert!(v1_with_key.to_bytes().is_err());
        assert!(
            h.to_bytes().is_err(),
            "a v2 header must not be stored unsigned"
        );

        // A v1 session's jit_stop may not carry the v2 `stopped_by`.
        let stop = Event {
            media_us: MediaTime::from_micros(2_000_000),
            utc: fixtures::t0(),
            event: EventKind::JitStop {
                user: "alice".into(),
                machine: "ws".into(),
                reason: None,
                stopped_by: Some(Box::new(StopCause {
                    by: StopBy::ControlCommand,
                    peer: None,
                    recorded_user: Some(true),
                    detail: "jit stop".into(),
                })),
            },
        };
        let ev = encode_events(std::slice::from_ref(&stop)).unwrap();
        let m = fixtures::manifest(session_id(6), 0, Sha256Digest::of(b"h"), b"v", &ev, 1);
        let err = validate_events(&m, std::slice::from_ref(&stop)).unwrap_err();
        assert!(err.to_string().contains("version 2 field"), "{err}");
        let m2 = ChunkManifest { version: 2, ..m };
        validate_events(&m2, &[stop]).unwrap();

        // The cause must go with the end reason.
        let s = stored_session_v2(session_id(6), 1, &k);
        let mut c = SessionClose::from_bytes(&s.close).unwrap();
        c.end_reason = EndReason::ControlStop;
        assert!(c.to_signed_bytes(&k).is_err());
    }

    #[test]
    fn a_close_record_that_disagrees_with_its_chain_is_refused() {
        // Signed or not: a forged end date is caught by the chain, whatever retention would do
        // with it.
        let k = signer(1);
        for signed in [false, true] {
            let s = if signed {
                stored_session_v2(session_id(7), 2, &k)
            } else {
                stored_session(session_id(7), 2)
            };
            let mut close = SessionClose::from_bytes(&s.close).unwrap();
            let store = |c: &SessionClose| {
                if signed {
                    c.to_signed_bytes(&k).unwrap()
                } else {
                    c.to_bytes().unwrap()
                }
            };
            let mut forged = fixtures::StoredSession {
                header: s.header.clone(),
                chunks: s.chunks.clone(),
                close: Vec::new(),
            };
            close.ended_at = chrono::DateTime::from_timestamp(0, 0).unwrap();
            forged.close = store(&close);
            let err = finish(&forged).unwrap_err();
            assert!(matches!(err, ChainError::CloseInconsistent(_)), "{err}");

            let mut late = SessionClose::from_bytes(&s.close).unwrap();
            late.ended_at += chrono::Duration::hours(2);
            late.closed_at = late.ended_at;
            forged.close = store(&late);
            assert!(matches!(
                finish(&forged),
                Err(ChainError::CloseInconsistent(_))
            ));

            let mut media = SessionClose::from_bytes(&s.close).unwrap();
            media.media_end_us = MediaTime::from_micros(1);
            forged.close = store(&media);
            assert!(matches!(
                finish(&forged),
                Err(ChainError::CloseInconsistent(_))
            ));
            forged.close = s.close.clone();
            finish(&forged).unwrap();
        }
    }
}
