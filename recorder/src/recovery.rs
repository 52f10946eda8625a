//! Closing sessions that a dead recorder left open.
//!
//! A session without a close record in the spool means the recorder that wrote it stopped
//! without ending it (killed, crashed, power lost). It must not be continued as if nothing
//! happened, and it must not stay open forever: it is closed as `interrupted`, linked to the last
//! chunk the spool still holds, with `ended_at` at the end of that chunk and `closed_at` now, so
//! the stretch nobody recorded is stated in the recording itself.

use chrono::{DateTime, Utc};
use jitrec_format::{EndReason, FORMAT_V1, SessionClose, SessionId, StopBy, StopCause};
use jitrec_spool::{SpoolError, SpoolWriter};

/// One session closed by [`close_interrupted`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Interrupted {
    pub session: SessionId,
    pub chunks: u64,
    /// End of the last committed material.
    pub ended_at: DateTime<Utc>,
    /// When the close record was written.
    pub closed_at: DateTime<Utc>,
}

/// What [`close_interrupted`] did.
#[derive(Debug, Default)]
pub struct Outcome {
    pub closed: Vec<Interrupted>,
    /// Sessions that could not be closed (no readable header), with why.
    pub failed: Vec<(SessionId, SpoolError)>,
}

/// Closes every open session in the spool as interrupted. A session that cannot be closed is
/// reported in [`Outcome::failed`] and the others are still closed.
pub fn close_interrupted(writer: &SpoolWriter, now: DateTime<Utc>) -> Result<Outcome, SpoolError> {
    let mut closed = Vec::new();
    let mut failed = Vec::new();
    for session in writer.open_sessions()? {
        match close_one(writer, session, now) {
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
) -> Result<Interrupted, SpoolError> {
    let w = writer.resume_session(session)?;
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
            detail: format!(
                "the recorder died during the session (killed, crashed or the machine lost power); a later run found it open at {now} and closed it"
            ),
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
    })
}

#[cfg(test)]
mod tests {
    use chrono::Duration;
    use jitrec_format::{ChainVerifier, encode_events, fixtures};
    use jitrec_spool::{Entry, EntryName, SpoolConfig, SpoolReader};

    use super::*;

    #[test]
    fn closes_a_dead_recorders_session_linked_to_its_last_chunk() {
        let tmp = tempfile::tempdir().unwrap();
        let sid = fixtures::session_id(1);
        {
            let (w, _) = SpoolWriter::open(tmp.path(), SpoolConfig::default()).unwrap();
            let mut s = w.create_session(&fixtures::header(sid)).unwrap();
            s.commit_init(0, &fixtures::init_bytes(0)).unwrap();
            for seq in 0..2 {
                let ev = encode_events(&fixtures::events(seq)).unwrap();
                let m = fixtures::manifest(sid, seq, s.head(), b"video", &ev, 1);
                s.commit_chunk(&m, b"video", &ev).unwrap();
            }
            // The recorder "dies": its writers are dropped without a close record.
        }
        let (w, recovery) = SpoolWriter::open(tmp.path(), SpoolConfig::default()).unwrap();
        assert_eq!(recovery.open_sessions, vec![sid]);
        let now = fixtures::t0() + Duration::hours(1);
        let out = close_interrupted(&w, now).unwrap();
        assert!(out.failed.is_empty());
        assert_eq!(out.closed.len(), 1);
        let c = &out.closed[0];
        assert_eq!((c.session, c.chunks), (sid, 2));
        assert_eq!(c.ended_at, fixtures::t0() + Duration::seconds(4));
        assert_eq!(c.closed_at, now);
        assert!(w.open_sessions().unwrap().is_empty());
        // Running it again finds nothing to do.
        assert!(close_interrupted(&w, now).unwrap().closed.is_empty());

        // The close record links to the chain the spool holds.
        let r = SpoolReader::open(tmp.path(), SpoolConfig::default()).unwrap();
        let mut chain = None;
        let mut close = None;
        for e in r.pending(sid).unwrap() {
            match r.read(&e).unwrap() {
                Entry::Header { bytes, .. } => chain = Some(ChainVerifier::new(&bytes).unwrap()),
                Entry::Chunk { manifest_bytes, .. } => {
                    chain.as_mut().unwrap().push(&manifest_bytes).unwrap();
                }
                Entry::Close { bytes, .. } => close = Some(bytes),
                Entry::Init { .. } => assert_eq!(e.name, EntryName::Init(0)),
            }
        }
        let close = chain.unwrap().finish(&close.unwrap()).unwrap();
        assert_eq!(close.end_reason, EndReason::Interrupted);
        assert!(close.note.unwrap().contains("stopped unexpectedly"));
    }
}
