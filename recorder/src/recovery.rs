//! Closing sessions that a dead recorder left open.
//!
//! A session without a close record in the spool means the recorder that wrote it stopped
//! without ending it (killed, crashed, power lost). It must not be continued as if nothing
//! happened, and it must not stay open forever: it is closed as `interrupted`, linked to the last
//! chunk the spool still holds, with `closed_at` now, so the stretch nobody recorded is stated in
//! the recording itself.
//!
//! What the dead recorder saw after its last chunk is not lost with it: its sources journalled
//! every event as it arrived (`jitrec_spool::Journal`). Those events are **folded** into one last
//! chunk, from the end of the last committed one to the last journalled event, whose picture is
//! the plain placeholder (the video of those seconds died with the recorder) and which carries a
//! `gap` saying so, and what the service manager said about the death (`jitrec-recorder
//! note-exit`, run as the unit's `ExecStopPost`). `ended_at` is then the last moment anything was
//! recorded. The folded chunk is signed now, by this run: the events in it were journalled
//! unsigned, which the `gap` states.

use std::time::Duration;

use chrono::{DateTime, Utc};
use jitrec_format::{
    EndReason, Event, EventKind, FORMAT_V1, MediaTime, SessionClose, SessionId, StopBy, StopCause,
};
use jitrec_spool::{SessionWriter, SpoolError, SpoolWriter};

use crate::capture::Frame;
use crate::chunker::Chunker;
use crate::encode::{Encoder, EncoderConfig};
use crate::session::{PLACEHOLDER, PLACEHOLDER_SIZE};

/// The largest side of the last picture the placeholder chunk copies (above 8K, which is
/// 7680 x 4320); past it the placeholder has [`PLACEHOLDER_SIZE`].
const MAX_FOLDED_SIDE: u32 = 8192;

/// One session closed by [`close_interrupted`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Interrupted {
    pub session: SessionId,
    pub chunks: u64,
    /// End of the last committed material.
    pub ended_at: DateTime<Utc>,
    /// When the close record was written.
    pub closed_at: DateTime<Utc>,
    /// Events recovered from the journal into a last chunk.
    pub folded_events: usize,
}

/// What [`close_interrupted`] did.
#[derive(Debug, Default)]
pub struct Outcome {
    pub closed: Vec<Interrupted>,
    /// Sessions that could not be closed (no readable header), with why.
    pub failed: Vec<(SessionId, SpoolError)>,
}

/// Closes every open session in the spool as interrupted, folding in what its journal kept.
/// `exit` is what the service manager said about the last run's end, if anything (see
/// [`crate::exit`]). A session that cannot be closed is reported in [`Outcome::failed`] and the
/// others are still closed.
pub fn close_interrupted(
    writer: &SpoolWriter,
    now: DateTime<Utc>,
    exit: Option<&str>,
) -> Result<Outcome, SpoolError> {
    let mut closed = Vec::new();
    let mut failed = Vec::new();
    for session in writer.open_sessions()? {
        match close_one(writer, session, now, exit) {
            Ok(c) => closed.push(c),
            Err(e) => {
                tracing::error!(%session, error = %e, "cannot close an interrupted session");
                failed.push((session, e));
            }
        }
    }
    Ok(Outcome { closed, failed })
}

fn close_one(
    writer: &SpoolWriter,
    session: SessionId,
    now: DateTime<Utc>,
    exit: Option<&str>,
) -> Result<Interrupted, SpoolError> {
    let w = writer.resume_session(session)?;
    let journalled = match w.journalled() {
        Ok(j) => j,
        Err(e) => {
            tracing::error!(%session, error = %e, "cannot read the session's events journal; the events of its last seconds are lost");
            Default::default()
        }
    };
    // Always folded, journal or not: the last chunk is where the `gap` states the hole. A fold
    // that fails still leaves a session that can be closed as if there were no journal (an
    // init segment it committed is one no chunk names, which is harmless).
    // A panic in the fold (a bug, or input nobody thought of) must not keep the next run from
    // closing the session and recording: it too falls back to the plain close.
    let folded = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
        fold(w, &journalled, now, exit)
    }));
    let why = match folded {
        Ok(Ok(done)) => return Ok(done),
        Ok(Err(FoldError::Committing(e))) => e.to_string(),
        Ok(Err(FoldError::Preparing(e))) => e,
        Err(_) => "the fold panicked".to_owned(),
    };
    tracing::error!(%session, error = why, events = journalled.events.len(), "cannot fold the journal into the session; closing it without the events of its last seconds");
    close_plain(writer.resume_session(session)?, now, exit)
}

fn crash_detail(now: DateTime<Utc>, exit: Option<&str>) -> String {
    let mut d = format!(
        "the recorder died during the session (killed, crashed or the machine lost power); a later run found it open at {now} and closed it"
    );
    if let Some(exit) = exit {
        d.push_str("; the service manager reported: ");
        d.push_str(exit);
    }
    crate::events::truncate_text(&d)
}

fn close_plain(
    w: SessionWriter,
    now: DateTime<Utc>,
    exit: Option<&str>,
) -> Result<Interrupted, SpoolError> {
    let session = w.session_id();
    let (ended_at, media_end) = match w.last_chunk() {
        Some(m) => (m.utc_end, m.media_end_us),
        None => (w.header().started_at, Default::default()),
    };
    // A clock that went backwards must not produce an invalid record (closed before ended).
    let closed_at = now.max(ended_at);
    let chunks = w.next_seq();
    let version = w.header().version;
    let close = SessionClose {
        version,
        session_id: session,
        end_reason: EndReason::Interrupted,
        ended_at,
        closed_at,
        chunk_count: chunks,
        media_end_us: media_end,
        prev: w.head(),
        note: Some(format!(
            "the recorder stopped unexpectedly; nothing was recorded after {ended_at}"
        )),
        stopped_by: (version != FORMAT_V1).then(|| StopCause {
            by: StopBy::RecorderCrash,
            peer: None,
            recorded_user: None,
            detail: crash_detail(now, exit),
        }),
    };
    w.close(&close)?;
    tracing::warn!(
        %session,
        chunks,
        %ended_at,
        %closed_at,
        "closed a session a previous recorder run left open as interrupted"
    );
    Ok(Interrupted {
        session,
        chunks,
        ended_at,
        closed_at,
        folded_events: 0,
    })
}

/// Why a fold failed: before anything was committed (the session can still be closed without
/// it), or while committing (the spool said no; the session stays open for the next run).
enum FoldError {
    Preparing(String),
    Committing(SpoolError),
}

/// Commits the journalled events as one last chunk (placeholder picture, `gap`), then the close.
fn fold(
    w: SessionWriter,
    journalled: &jitrec_spool::Journalled,
    now: DateTime<Utc>,
    exit: Option<&str>,
) -> Result<Interrupted, FoldError> {
    let session = w.session_id();
    let header = w.header().clone();
    let from = w.last_chunk().map_or(MediaTime::ZERO, |m| m.media_end_us);
    // The placeholder keeps the last picture's size (no size change for the player), unless
    // the spool says a size no screen has: it is the endpoint's root's to edit, and a picture of
    // 65535 x 65535 would cost the next run gigabytes before the encoder refused it.
    let (width, height) = w
        .last_chunk()
        .map(|m| (m.init.width, m.init.height))
        .filter(|&(w, h)| w <= MAX_FOLDED_SIDE && h <= MAX_FOLDED_SIDE)
        .unwrap_or(PLACEHOLDER_SIZE);
    // The journal is the endpoint's root's to edit: only what a recorder could have written is
    // folded (valid by the format, and not dated after now, give or take a minute of clock
    // skew), the rest counted. Nothing in it may make the arithmetic below overflow (an early
    // event is placed at the chunk's start, as a late one always is).
    let session_age_us = now
        .signed_duration_since(header.started_at)
        .num_microseconds()
        .map_or(0, |us| us.max(0) as u64);
    let plausible = |e: &&Event| {
        jitrec_format::check_event(header.version, e).is_ok()
            && e.media_us.as_micros() <= session_age_us.saturating_add(60_000_000)
    };
    let usable: Vec<&Event> = journalled.events.iter().filter(plausible).collect();
    let refused = journalled.events.len() - usable.len();
    let last_event = usable
        .iter()
        .map(|e| e.media_us)
        .max()
        .unwrap_or(from)
        .max(from);
    // The encoder keeps time in ticks of the session's timescale, rounding down: the picture
    // goes one tick and a microsecond after `from`, so the chunk never starts before the last.
    let tick_us = 1_000_000u64.div_ceil(u64::from(header.codec.timescale.max(1)));
    let start = MediaTime::from_micros(from.as_micros().saturating_add(tick_us + 1));
    // At least one millisecond, so the chunk has a length.
    let end = last_event.max(MediaTime::from_micros(
        start.as_micros().saturating_add(1_000),
    ));
    // No more than a chunk of this length may hold (the player refuses more); the newest are
    // kept (the moments before the death), what is over is counted in the gap.
    let span = end.as_micros().saturating_sub(start.as_micros());
    let room = (jitrec_format::max_events(span) as usize).saturating_sub(64);
    let mut events: Vec<Event> = usable
        .iter()
        .skip(usable.len().saturating_sub(room))
        .map(|e| (*e).clone())
        .collect();
    let kept = events.len();
    let over = usable.len() - kept;
    let utc = |t: MediaTime| {
        i64::try_from(t.as_micros())
            .ok()
            .map(chrono::Duration::microseconds)
            .and_then(|d| header.started_at.checked_add_signed(d))
            .unwrap_or(header.started_at)
    };
    let mut reason = format!(
        "the recorder died; no video was committed after {}; {} events it had seen by {} were recovered from its journal (written unsigned as they happened, signed when the next run folded them in at {now})",
        utc(from),
        events.len(),
        utc(last_event),
    );
    if refused > 0 {
        reason.push_str(&format!(
            "; {refused} journal entries were not events a recorder writes (invalid, or dated after the recovery) and were left out"
        ));
    }
    if over > 0 {
        reason.push_str(&format!(
            "; {over} more journalled events were over the bound of one chunk and are only counted"
        ));
    }
    if journalled.truncated {
        reason.push_str(&format!(
            "; the journal was larger than {} MiB (no recorder writes one that large) and only its start was read",
            jitrec_spool::JOURNAL_MAX_READ / (1024 * 1024)
        ));
    }
    if journalled.unreadable > 0 {
        reason.push_str(&format!(
            "; {} journal lines were unreadable (torn by the crash, or altered)",
            journalled.unreadable
        ));
    }
    if let Some(exit) = exit {
        reason.push_str("; the service manager reported: ");
        reason.push_str(exit);
    }
    events.push(Event {
        media_us: end,
        utc: utc(end),
        event: EventKind::Gap {
            from_us: from,
            to_us: end,
            reason: crate::events::truncate_text(&reason),
        },
    });
    let sealer = match &header.encryption {
        Some(e) => match crate::seal::Sealer::new(&e.recipients) {
            Ok(s) => s.map(std::sync::Arc::new),
            Err(why) => {
                return Err(FoldError::Preparing(format!(
                    "the header's encryption recipients: {why}"
                )));
            }
        },
        None => None,
    };
    let encoder = EncoderConfig {
        crf: header.codec.crf,
        timescale: header.codec.timescale,
        ..EncoderConfig::default()
    };
    let chunk_len = Duration::from_millis(u64::from(header.codec.chunk_target_ms.max(1)));
    let mut enc =
        Encoder::new(width, height, encoder).map_err(|e| FoldError::Preparing(e.to_string()))?;
    let frames = enc
        .encode(&Frame::solid(width, height, PLACEHOLDER), start)
        .map_err(|e| FoldError::Preparing(e.to_string()))?;
    let mut chunker = Chunker::new(w, chunk_len, header.codec.timescale).with_sealer(sealer);
    for e in events {
        chunker.push_event(e);
    }
    let committed = |e: crate::chunker::ChunkError| {
        FoldError::Committing(match e {
            crate::chunker::ChunkError::Spool(e) => e,
            other => SpoolError::InvalidCommit {
                session,
                reason: other.to_string(),
            },
        })
    };
    for f in frames {
        chunker.push(f, width, height).map_err(committed)?;
    }
    let cause = StopCause {
        by: StopBy::RecorderCrash,
        peer: None,
        recorded_user: None,
        detail: crash_detail(now, exit),
    };
    let note = format!(
        "the recorder stopped unexpectedly; video until {}, events until {} (from its journal)",
        utc(from),
        utc(end)
    );
    let chunks = chunker
        .finish_with_note(end, &cause, Some(note))
        .map_err(committed)?;
    let ended_at = utc(end);
    tracing::warn!(
        %session,
        chunks,
        %ended_at,
        folded = kept,
        "closed a session a previous recorder run left open as interrupted, with the events its journal kept"
    );
    Ok(Interrupted {
        session,
        chunks,
        ended_at,
        closed_at: now.max(ended_at),
        folded_events: kept,
    })
}

#[cfg(test)]
mod tests {
    use chrono::Duration;
    use jitrec_format::{ChainVerifier, encode_events, fixtures};
    use jitrec_spool::{Entry, EntryName, SpoolConfig, SpoolReader};

    use super::*;

    #[test]
    fn closes_a_dead_recorders_session_with_what_its_journal_kept() {
        let tmp = tempfile::tempdir().unwrap();
        let sid = fixtures::session_id(1);
        let late = Event {
            media_us: MediaTime::from_micros(4_500_000),
            utc: fixtures::t0() + Duration::milliseconds(4_500),
            event: EventKind::CaptureError {
                message: "the kill command".into(),
            },
        };
        {
            let (w, _) = SpoolWriter::open(tmp.path(), SpoolConfig::default()).unwrap();
            let mut s = w.create_session(&fixtures::header(sid)).unwrap();
            let journal = s.journal().expect("a new session has a journal");
            s.commit_init(0, &fixtures::init_bytes(0)).unwrap();
            for seq in 0..2 {
                let events = fixtures::events(seq);
                let ids: Vec<u64> = events.iter().map(|e| journal.append(e).unwrap()).collect();
                let ev = encode_events(&events).unwrap();
                let m = fixtures::manifest(sid, seq, s.head(), b"video", &ev, 1);
                journal.mark_chunk(seq, &ids).unwrap();
                s.commit_chunk(&m, b"video", &ev).unwrap();
            }
            // Seen after the last cut, and then the recorder "dies": its writers are dropped
            // without a close record.
            journal.append(&late).unwrap();
        }
        // The uploader shipped init segment 0 meanwhile: it is gone from the spool, and its
        // number is still taken.
        let r = SpoolReader::open(tmp.path(), SpoolConfig::default()).unwrap();
        r.ack(&jitrec_spool::EntryRef {
            session: sid,
            name: EntryName::Init(0),
        })
        .unwrap();
        drop(r);
        let (w, recovery) = SpoolWriter::open(tmp.path(), SpoolConfig::default()).unwrap();
        assert_eq!(recovery.open_sessions, vec![sid]);
        let now = fixtures::t0() + Duration::hours(1);
        let out = close_interrupted(&w, now, Some("result signal, killed KILL")).unwrap();
        assert!(out.failed.is_empty());
        assert_eq!(out.closed.len(), 1);
        let c = &out.closed[0];
        assert_eq!((c.session, c.chunks, c.folded_events), (sid, 3, 1));
        assert_eq!(c.ended_at, late.utc);
        assert_eq!(c.closed_at, now);
        assert!(w.open_sessions().unwrap().is_empty());
        // Running it again finds nothing to do.
        assert!(close_interrupted(&w, now, None).unwrap().closed.is_empty());

        // The close record links to the chain the spool holds, and the last chunk holds the
        // journalled event and the `gap` saying what happened.
        let r = SpoolReader::open(tmp.path(), SpoolConfig::default()).unwrap();
        let mut chain = None;
        let mut close = None;
        let mut last_events = Vec::new();
        for e in r.pending(sid).unwrap() {
            match r.read(&e).unwrap() {
                Entry::Header { bytes, .. } => chain = Some(ChainVerifier::new(&bytes).unwrap()),
                Entry::Chunk {
                    manifest_bytes,
                    manifest,
                    events,
                    ..
                } => {
                    chain.as_mut().unwrap().push(&manifest_bytes).unwrap();
                    if manifest.seq == 2 {
                        assert_eq!(manifest.init.id, 1, "init 0 is taken in the bucket");
                        last_events = jitrec_format::decode_events(&events).unwrap();
                    }
                }
                Entry::Close { bytes, .. } => close = Some(bytes),
                Entry::Init { .. } => assert_eq!(e.name, EntryName::Init(1)),
            }
        }
        assert_eq!(last_events.first(), Some(&late));
        match &last_events.last().unwrap().event {
            EventKind::Gap { reason, .. } => {
                assert!(reason.contains("the recorder died"), "{reason}");
                assert!(reason.contains("killed KILL"), "{reason}");
            }
            other => panic!("not a gap: {other:?}"),
        }
        let close = chain.unwrap().finish(&close.unwrap()).unwrap();
        assert_eq!(close.end_reason, EndReason::Interrupted);
        assert!(close.note.unwrap().contains("stopped unexpectedly"));
    }

    /// A session of one chunk that a recorder "died" in (no close record).
    fn left_open_with_one_chunk(root: &std::path::Path, sid: SessionId) {
        let (w, _) = SpoolWriter::open(root, SpoolConfig::default()).unwrap();
        let mut s = w.create_session(&fixtures::header(sid)).unwrap();
        s.commit_init(0, &fixtures::init_bytes(0)).unwrap();
        let ev = encode_events(&fixtures::events(0)).unwrap();
        let m = fixtures::manifest(sid, 0, s.head(), b"video", &ev, 1);
        s.commit_chunk(&m, b"video", &ev).unwrap();
    }

    /// The journal is the endpoint's root's to edit: a huge or garbled one must not keep the
    /// next run from closing the session (and from recording).
    #[test]
    fn a_hostile_journal_cannot_stop_recovery() {
        let tmp = tempfile::tempdir().unwrap();
        let sid = fixtures::session_id(2);
        left_open_with_one_chunk(tmp.path(), sid);
        let journal = tmp.path().join("journal").join(format!("{sid}.jsonl"));
        let real = Event {
            media_us: MediaTime::from_micros(2_500_000),
            utc: fixtures::t0() + Duration::milliseconds(2_500),
            event: EventKind::CaptureError {
                message: "kept".into(),
            },
        };
        let mut text = serde_json::to_string(&serde_json::json!({"id": 0, "event": real})).unwrap();
        text.push('\n');
        text.push_str("{\"id\": 1, \"event\": not json}\n");
        // Events no recorder writes: a time that would overflow the clock, a text with a
        // control character, a gap that ends before it starts.
        let mut odd = real.clone();
        odd.media_us = MediaTime::from_micros(9_000_000_000_000_000_000);
        text.push_str(&serde_json::to_string(&serde_json::json!({"id": 2, "event": odd})).unwrap());
        text.push('\n');
        let mut odd = real.clone();
        odd.event = EventKind::CaptureError {
            message: "line\u{1b}[2Jforged".into(),
        };
        text.push_str(&serde_json::to_string(&serde_json::json!({"id": 3, "event": odd})).unwrap());
        text.push('\n');
        text.push_str(&format!("{{\"init\": {}}}\n", u64::MAX));
        text.push_str(&"x".repeat(2 * 1024 * 1024));
        text.push('\n');
        let filler = "{\"chunk\": 99, \"ids\": [[0, 1]]}\n";
        while (text.len() as u64) <= jitrec_spool::JOURNAL_MAX_READ + 1024 {
            text.push_str(filler);
        }
        std::fs::write(&journal, text).unwrap();

        let (w, _) = SpoolWriter::open(tmp.path(), SpoolConfig::default()).unwrap();
        let out = close_interrupted(&w, fixtures::t0() + Duration::hours(1), None).unwrap();
        assert!(out.failed.is_empty(), "{:?}", out.failed);
        assert_eq!(out.closed[0].folded_events, 1);
        assert!(w.open_sessions().unwrap().is_empty());
        assert!(!journal.exists(), "the journal goes with the close");
        let r = SpoolReader::open(tmp.path(), SpoolConfig::default()).unwrap();
        let mut gap = None;
        for e in r.pending(sid).unwrap() {
            if let Entry::Chunk {
                manifest, events, ..
            } = r.read(&e).unwrap()
                && manifest.seq == 1
            {
                let events = jitrec_format::decode_events(&events).unwrap();
                assert_eq!(events[0], real);
                gap = events.into_iter().find_map(|e| match e.event {
                    EventKind::Gap { reason, .. } => Some(reason),
                    _ => None,
                });
            }
        }
        let gap = gap.expect("the folded chunk states the hole");
        assert!(gap.contains("journal lines were unreadable"), "{gap}");
        assert!(gap.contains("2 journal entries were not events"), "{gap}");
        assert!(gap.contains("only its start was read"), "{gap}");
    }

    /// A last chunk claiming a picture of 65535 x 65535 (the spool is root's to edit) gets a
    /// placeholder of the usual size, not one of 16 GiB.
    #[test]
    fn an_impossible_picture_size_in_the_spool_gets_the_usual_placeholder() {
        let tmp = tempfile::tempdir().unwrap();
        let sid = fixtures::session_id(4);
        {
            let (w, _) = SpoolWriter::open(tmp.path(), SpoolConfig::default()).unwrap();
            let mut s = w.create_session(&fixtures::header(sid)).unwrap();
            s.commit_init(0, &fixtures::init_bytes(0)).unwrap();
            let ev = encode_events(&fixtures::events(0)).unwrap();
            let mut m = fixtures::manifest(sid, 0, s.head(), b"video", &ev, 1);
            (m.init.width, m.init.height) = (65535, 65535);
            s.commit_chunk(&m, b"video", &ev).unwrap();
        }
        let (w, _) = SpoolWriter::open(tmp.path(), SpoolConfig::default()).unwrap();
        let out = close_interrupted(&w, fixtures::t0() + Duration::hours(1), None).unwrap();
        assert!(out.failed.is_empty(), "{:?}", out.failed);
        assert_eq!(
            out.closed[0].chunks, 2,
            "the placeholder chunk was committed"
        );
        let r = SpoolReader::open(tmp.path(), SpoolConfig::default()).unwrap();
        let sizes: Vec<(u32, u32)> = r
            .pending(sid)
            .unwrap()
            .iter()
            .filter_map(|e| match r.read(e).unwrap() {
                Entry::Chunk { manifest, .. } => Some((manifest.init.width, manifest.init.height)),
                _ => None,
            })
            .collect();
        assert_eq!(sizes, vec![(65535, 65535), PLACEHOLDER_SIZE]);
    }

    /// Things in the journal and state folders that are not plain files (a FIFO would block a
    /// read for ever, a folder cannot be removed) are passed over: the spool opens, the session
    /// closes, the next session records.
    #[cfg(unix)]
    #[test]
    fn odd_files_in_the_journal_folder_cannot_stop_the_recorder() {
        let tmp = tempfile::tempdir().unwrap();
        let sid = fixtures::session_id(3);
        left_open_with_one_chunk(tmp.path(), sid);
        let journals = tmp.path().join("journal");
        let journal = journals.join(format!("{sid}.jsonl"));
        std::fs::remove_file(&journal).unwrap();
        let fifo = std::process::Command::new("mkfifo")
            .arg(&journal)
            .status()
            .unwrap();
        assert!(fifo.success());
        std::fs::create_dir_all(journals.join("not-a-journal")).unwrap();
        std::fs::create_dir_all(tmp.path().join("state").join("jit.json")).unwrap();

        let (w, _) = SpoolWriter::open(tmp.path(), SpoolConfig::default()).unwrap();
        assert_eq!(w.load_state(jitrec_spool::StateRecord::Jit).unwrap(), None);
        let out = close_interrupted(&w, fixtures::t0() + Duration::hours(1), None).unwrap();
        assert!(out.failed.is_empty(), "{:?}", out.failed);
        assert_eq!(out.closed[0].folded_events, 0);
        assert!(w.open_sessions().unwrap().is_empty());
        let next = w
            .create_session(&fixtures::header(fixtures::session_id(4)))
            .unwrap();
        assert!(next.journal().is_some());
    }
}
