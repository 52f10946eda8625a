//! Deterministic, valid example documents for tests (feature `testing`).
//!
//! Tests across the workspace need realistic sessions without a recorder; building them here,
//! next to the types, keeps every test on the same valid shapes and lets a format change fail in
//! one place.

use chrono::{DateTime, Duration, TimeZone, Utc};

use crate::{
    Agent, Authorization, ChunkManifest, Codec, CodecParams, EndReason, EndpointSigner, Event,
    EventKind, EventsRef, FORMAT_V1, FORMAT_VERSION, InitRef, Labels, Machine, MediaTime,
    PayloadRef, ProcessStart, SessionClose, SessionHeader, SessionId, Sha256Digest, StopBy,
    StopCause, Trigger, UserRef, encode_events,
};

/// A fixed start time: 2026-01-02 03:04:05 UTC.
pub fn t0() -> DateTime<Utc> {
    Utc.with_ymd_and_hms(2026, 1, 2, 3, 4, 5)
        .single()
        .expect("a fixed, valid calendar date")
}

/// A session id derived from `n`.
pub fn session_id(n: u64) -> SessionId {
    let mut random = [0u8; 10];
    random[..8].copy_from_slice(&n.to_be_bytes());
    SessionId::from_parts(t0().timestamp_millis() as u64 + n, random)
}

/// A complete, valid header.
pub fn header(session: SessionId) -> SessionHeader {
    SessionHeader {
        version: FORMAT_VERSION,
        session_id: session,
        machine: Machine {
            id: "4c4c4544-0042-3510-8048-b4c04f565831".into(),
            hostname: "ws-0421".into(),
        },
        user: UserRef {
            name: "alice".into(),
            id: "1000".into(),
        },
        authorization: Authorization {
            trigger: Trigger::ControlCommand,
            authorized_by: Some("bob@example.com".into()),
            reason: Some("INC-4711 printer driver".into()),
        },
        labels: Labels {
            company: Some("acme".into()),
            location: Some("berlin".into()),
            computer: Some("ws-0421".into()),
        },
        started_at: t0(),
        agent: Agent {
            name: "jitrec-recorder".into(),
            version: "0.1.0".into(),
        },
        codec: CodecParams {
            codec: Codec::H264,
            crf: 28,
            keyframe_interval_ms: 10_000,
            chunk_target_ms: 2_000,
            timescale: 90_000,
            b_frames: 0,
        },
        endpoint_key: None,
        encryption: None,
        continues: None,
    }
    .v1()
}

/// A deterministic endpoint key derived from `n` (tests only: a real key's seed comes from the
/// operating system's random source).
pub fn signer(n: u8) -> EndpointSigner {
    EndpointSigner::from_seed([n.wrapping_add(1); 32])
}

/// A complete, valid version 2 header announcing `signer`'s key.
pub fn header_v2(session: SessionId, signer: &EndpointSigner) -> SessionHeader {
    SessionHeader {
        version: FORMAT_VERSION,
        endpoint_key: Some(signer.public()),
        ..header(session)
    }
}

impl SessionHeader {
    fn v1(self) -> Self {
        Self {
            version: FORMAT_V1,
            ..self
        }
    }
}

/// Bytes standing in for an init segment (content is opaque to the format).
pub fn init_bytes(id: u64) -> Vec<u8> {
    format!("ftyp-moov-init-{id}").into_bytes()
}

/// Events of chunk `seq` (2 s per chunk): one process start in the middle.
pub fn events(seq: u64) -> Vec<Event> {
    let start = seq * 2_000_000;
    vec![Event {
        media_us: MediaTime::from_micros(start + 500_000),
        utc: t0() + Duration::microseconds((start + 500_000) as i64),
        event: EventKind::ProcessStart(ProcessStart {
            pid: 4000 + seq as u32,
            ppid: 1,
            user: UserRef {
                name: "alice".into(),
                id: "1000".into(),
            },
            exe: "/usr/sbin/useradd".into(),
            command_line: format!("useradd temp{seq}"),
            elevated: true,
            in_session: None,
        }),
    }]
}

/// A valid manifest for chunk `seq` of 2 s with the given payloads, chained to `prev`.
pub fn manifest(
    session: SessionId,
    seq: u64,
    prev: Sha256Digest,
    video: &[u8],
    events_payload: &[u8],
    event_count: u32,
) -> ChunkManifest {
    let init = init_bytes(0);
    let start = seq * 2_000_000;
    let end = start + 2_000_000;
    ChunkManifest {
        version: FORMAT_V1,
        session_id: session,
        seq,
        media_start_us: MediaTime::from_micros(start),
        media_end_us: MediaTime::from_micros(end),
        utc_start: t0() + Duration::microseconds(start as i64),
        utc_end: t0() + Duration::microseconds(end as i64),
        starts_with_keyframe: seq.is_multiple_of(5),
        frames: 10,
        init: InitRef {
            id: 0,
            size: init.len() as u64,
            sha256: Sha256Digest::of(&init),
            width: 1920,
            height: 1080,
            codec: "avc1.640028".into(),
        },
        video: PayloadRef::of(video),
        events: EventsRef {
            size: events_payload.len() as u64,
            sha256: Sha256Digest::of(events_payload),
            count: event_count,
        },
        prev,
    }
}

/// A whole stored session: header bytes, `n` chunks (manifest bytes, video, events), close bytes.
pub struct StoredSession {
    pub header: Vec<u8>,
    pub chunks: Vec<(Vec<u8>, Vec<u8>, Vec<u8>)>,
    pub close: Vec<u8>,
}

/// Builds a valid, correctly chained session of `n` chunks.
pub fn stored_session(session: SessionId, n: u64) -> StoredSession {
    stored_session_with(header(session), n, events)
}

/// Builds a valid, correctly chained session of `n` chunks from `header`, with the events
/// `events(seq)` gives each chunk (they must fall inside the chunk's 2 s).
pub fn stored_session_with(
    header: SessionHeader,
    n: u64,
    events: impl Fn(u64) -> Vec<Event>,
) -> StoredSession {
    build(header, n, events, None, &default_video)
}

/// Builds a valid, correctly chained session of one chunk whose video segment is `video` (to
/// try large objects).
pub fn stored_session_with_video(header: SessionHeader, video: Vec<u8>) -> StoredSession {
    build(header, 1, events, None, &move |_| video.clone())
}

fn default_video(seq: u64) -> Vec<u8> {
    format!("moof-mdat-{seq}").into_bytes()
}

/// Builds a valid, correctly chained and signed version 2 session of `n` chunks.
pub fn stored_session_v2(session: SessionId, n: u64, signer: &EndpointSigner) -> StoredSession {
    build(
        header_v2(session, signer),
        n,
        events,
        Some(signer),
        &default_video,
    )
}

/// [`stored_session_v2`] from a version 2 `header` (its `endpoint_key` should be `signer`'s for
/// the session to verify under it).
pub fn stored_session_v2_from(
    header: SessionHeader,
    n: u64,
    signer: &EndpointSigner,
) -> StoredSession {
    build(header, n, events, Some(signer), &default_video)
}

/// The jit_stop-free events of [`events`] are valid in both versions.
fn build(
    header: SessionHeader,
    n: u64,
    events: impl Fn(u64) -> Vec<Event>,
    signer: Option<&EndpointSigner>,
    video_of: &dyn Fn(u64) -> Vec<u8>,
) -> StoredSession {
    let session = header.session_id;
    let version = header.version;
    let started = header.started_at;
    let header = header
        .to_stored_bytes(signer)
        .expect("the fixture header is valid");
    let mut prev = Sha256Digest::of(&header);
    let mut chunks = Vec::new();
    for seq in 0..n {
        let video = video_of(seq);
        let ev = events(seq);
        let ev_bytes = encode_events(&ev).expect("fixture events encode");
        let m = manifest(session, seq, prev, &video, &ev_bytes, ev.len() as u32);
        // Wall-clock times follow the header's start (tests move sessions in time).
        let shift = started - t0();
        let m = ChunkManifest {
            version,
            utc_start: m.utc_start + shift,
            utc_end: m.utc_end + shift,
            ..m
        }
        .to_stored_bytes(signer)
        .expect("the fixture manifest is valid");
        prev = Sha256Digest::of(&m);
        chunks.push((m, video, ev_bytes));
    }
    let stopped_by = (version == FORMAT_VERSION).then(|| StopCause {
        by: StopBy::GroupChange,
        peer: None,
        recorded_user: None,
        detail: "alice left the administrators group".into(),
    });
    let close = SessionClose {
        version,
        session_id: session,
        end_reason: EndReason::JitEnded,
        ended_at: started + Duration::seconds(2 * n as i64),
        closed_at: started + Duration::seconds(2 * n as i64),
        chunk_count: n,
        media_end_us: MediaTime::from_micros(n * 2_000_000),
        prev,
        note: None,
        stopped_by,
    }
    .to_stored_bytes(signer)
    .expect("the fixture close record is valid");
    StoredSession {
        header,
        chunks,
        close,
    }
}
