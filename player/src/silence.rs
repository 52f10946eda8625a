//! When an open session's recorder has gone quiet: the *silent* status.
//!
//! A recorder commits a chunk every chunk interval whether or not the screen changed (the
//! header's `codec.chunk_target_ms`), and the uploader ships each within a second or so. So an
//! open session from which nothing new has arrived for a few chunk intervals has a recorder
//! that was killed, an uploader that stopped, or a network that went away. The player cannot
//! tell which; it can say, within seconds, that it has heard nothing, and that is what a
//! reviewer needs to know while the recorded admin is still at the keyboard.
//!
//! The rule, one function ([`silent_after`]):
//!
//! ```text
//! silent once  now >= last_arrival + 3 * clamp(chunk_target_ms, 250 ms, 60 s) + slack
//! ```
//!
//! - `last_arrival` is the player's own clock: the latest first-seen time, in the witness record,
//!   of any object of the session (or the moment the player first listed a chunk it is still
//!   waiting to read). No endpoint-written time (`utc_start`, `utc_end`, the id's timestamp)
//!   enters it, so a recorder cannot postpone its silence by dating its chunks ahead.
//! - three chunk intervals: one late chunk, or two, is jitter on a loaded endpoint, not silence.
//! - `slack` (`serve --silent-after-slack`, default [`DEFAULT_SLACK`]) covers the upload latency
//!   and the indexer's pass interval.
//! - `chunk_target_ms` is written by the endpoint, so it is bounded to the range the recorder's
//!   own configuration accepts: a header claiming 0 ms (refused by the format anyway), 1 ms or
//!   `u32::MAX` ms is read as 250 ms or 60 s, never as "silent at once" or "never silent".
//!
//! Silence is a flag for reviewers and nothing more: it never closes a session, never counts as
//! an end for retention, and goes away by itself when chunks arrive again. An open session with
//! nothing new for `--stale-after` (default 600 s, for endpoints offline by design) is
//! *interrupted* instead, as before.

use std::time::Duration;

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

/// The shortest chunk length believed from a header: the recorder's configuration refuses a
/// shorter one (`encoder.chunk_ms`, 250..=60000), so a shorter claim is not a recorder's.
pub const MIN_CHUNK: Duration = Duration::from_millis(250);

/// The longest chunk length believed from a header (the recorder's own upper bound): a longer
/// claim would let a session never become silent.
pub const MAX_CHUNK: Duration = Duration::from_secs(60);

/// Chunk intervals without anything new before a session is silent: one or two late chunks are
/// an endpoint under load, three are not.
pub const CHUNKS_BEFORE_SILENT: u32 = 3;

/// Default slack on top of the chunk intervals: the upload latency (about a second: inotify and
/// one PUT), the indexer's pass interval (1 s by default) and a pass's own time, with room for
/// a loaded machine. With 2 s chunks a session is flagged 11 s after its last object was first
/// seen, so within about 13 s of its last upload (the pass interval on either side), inside
/// the 15 s the brief asks for.
pub const DEFAULT_SLACK: Duration = Duration::from_secs(5);

/// The header's chunk length, bounded to [`MIN_CHUNK`]..=[`MAX_CHUNK`]. `None` (no header read):
/// the longest, so a session is never flagged early on no information.
pub fn chunk_length(chunk_target_ms: Option<u32>) -> Duration {
    chunk_target_ms
        .map_or(MAX_CHUNK, |ms| Duration::from_millis(u64::from(ms)))
        .clamp(MIN_CHUNK, MAX_CHUNK)
}

/// How long nothing may arrive before an open session is silent.
pub fn silent_after(chunk_target_ms: Option<u32>, slack: Duration) -> Duration {
    chunk_length(chunk_target_ms) * CHUNKS_BEFORE_SILENT + slack
}

/// The newest chunk the player read of a session, and when it arrived.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct LastChunk {
    pub seq: u64,
    /// Where it ends in the recording (media time, microseconds).
    pub media_end_us: u64,
    /// Where it ends on the endpoint's clock (endpoint-written: shown, never used to decide).
    pub utc_end: DateTime<Utc>,
    /// When the player first saw its manifest (its own clock, from the witness record).
    pub arrived_at: DateTime<Utc>,
}

/// Why a session is silent: what arrived last, and the rule it was judged by.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Silence {
    /// When the player last saw anything new of the session (its own clock).
    pub last_arrival: DateTime<Utc>,
    /// The last chunk that arrived; `None` when only the header did.
    pub last_chunk: Option<LastChunk>,
    /// The chunk length used (the header's, bounded).
    pub chunk_ms: u64,
    /// Nothing new for this long makes a session silent: 3 chunk lengths plus the slack.
    pub silent_after_ms: u64,
    /// When it became silent: `last_arrival + silent_after_ms`.
    pub since: DateTime<Utc>,
}

impl Silence {
    /// The problem a silent session carries on its row, for reviewers.
    pub fn message(&self) -> String {
        let last = match &self.last_chunk {
            Some(c) => format!(
                "the last chunk to arrive was chunk {} (up to {:.1} s of the recording, {} on \
                 the endpoint's clock), first seen at {}",
                c.seq,
                c.media_end_us as f64 / 1e6,
                c.utc_end
                    .to_rfc3339_opts(chrono::SecondsFormat::Millis, true),
                c.arrived_at
                    .to_rfc3339_opts(chrono::SecondsFormat::Millis, true)
            ),
            None => "no chunk has arrived, only the session header".to_owned(),
        };
        format!(
            "the recorder is silent: nothing new since {} (player clock), {:.1} s after which a \
             session committing a chunk every {:.1} s is flagged; {last}",
            self.last_arrival
                .to_rfc3339_opts(chrono::SecondsFormat::Millis, true),
            self.silent_after_ms as f64 / 1e3,
            self.chunk_ms as f64 / 1e3,
        )
    }
}

/// When a session last heard from at `last_arrival` becomes silent (`None`: it cannot, the
/// player never saw any of it).
pub fn silent_at(
    last_arrival: Option<DateTime<Utc>>,
    chunk_target_ms: Option<u32>,
    slack: Duration,
) -> Option<DateTime<Utc>> {
    let after = chrono::Duration::from_std(silent_after(chunk_target_ms, slack)).ok()?;
    last_arrival?.checked_add_signed(after)
}

/// The silence of an open session at `now`, or `None` while it is still heard from.
pub fn judge(
    now: DateTime<Utc>,
    last_arrival: Option<DateTime<Utc>>,
    last_chunk: Option<&LastChunk>,
    chunk_target_ms: Option<u32>,
    slack: Duration,
) -> Option<Silence> {
    let since = silent_at(last_arrival, chunk_target_ms, slack)?;
    (now >= since).then(|| Silence {
        last_arrival: last_arrival.unwrap_or(since),
        last_chunk: last_chunk.cloned(),
        chunk_ms: chunk_length(chunk_target_ms).as_millis() as u64,
        silent_after_ms: silent_after(chunk_target_ms, slack).as_millis() as u64,
        since,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn t(s: i64) -> DateTime<Utc> {
        DateTime::from_timestamp(1_800_000_000 + s, 0).unwrap()
    }

    #[test]
    fn a_two_second_session_is_silent_after_eleven_seconds() {
        let after = silent_after(Some(2_000), DEFAULT_SLACK);
        assert_eq!(after, Duration::from_secs(11));
        assert!(judge(t(10), Some(t(0)), None, Some(2_000), DEFAULT_SLACK).is_none());
        let s = judge(t(11), Some(t(0)), None, Some(2_000), DEFAULT_SLACK).unwrap();
        assert_eq!(s.since, t(11));
        assert_eq!(s.chunk_ms, 2_000);
        assert_eq!(s.silent_after_ms, 11_000);
        assert!(
            s.message().contains("only the session header"),
            "{}",
            s.message()
        );
    }

    #[test]
    fn the_header_chunk_length_is_bounded() {
        // 0 and 1 ms (an attacker's "silent at once") read as the recorder's shortest.
        assert_eq!(chunk_length(Some(0)), MIN_CHUNK);
        assert_eq!(chunk_length(Some(1)), MIN_CHUNK);
        assert_eq!(
            silent_after(Some(1), DEFAULT_SLACK),
            Duration::from_millis(5_750)
        );
        // u32::MAX ms (49 days: "never silent") reads as the recorder's longest.
        assert_eq!(chunk_length(Some(u32::MAX)), MAX_CHUNK);
        assert_eq!(
            silent_after(Some(u32::MAX), DEFAULT_SLACK),
            Duration::from_secs(185)
        );
        assert!(judge(t(184), Some(t(0)), None, Some(u32::MAX), DEFAULT_SLACK).is_none());
        assert!(judge(t(185), Some(t(0)), None, Some(u32::MAX), DEFAULT_SLACK).is_some());
        // No header read: the longest, never early.
        assert_eq!(chunk_length(None), MAX_CHUNK);
        assert_eq!(chunk_length(Some(4_000)), Duration::from_secs(4));
    }

    #[test]
    fn nothing_seen_is_never_silent() {
        assert!(judge(t(10_000), None, None, Some(2_000), Duration::ZERO).is_none());
    }

    #[test]
    fn the_message_names_the_last_chunk() {
        let c = LastChunk {
            seq: 7,
            media_end_us: 16_000_000,
            utc_end: t(-5),
            arrived_at: t(0),
        };
        let s = judge(t(12), Some(t(0)), Some(&c), Some(2_000), DEFAULT_SLACK).unwrap();
        let m = s.message();
        assert!(m.contains("chunk 7"), "{m}");
        assert!(m.contains("16.0 s"), "{m}");
        assert!(m.contains("11.0 s"), "{m}");
        assert_eq!(s.last_chunk, Some(c));
    }
}

/// The derivation through a real scan: a directory bucket, the witness record in SQLite.
#[cfg(test)]
mod scan_tests {
    use std::fs;
    use std::path::Path;

    use jitrec_bucket::DirBucket;
    use jitrec_format::fixtures::{self, session_id};
    use jitrec_format::{ObjectKey, SessionId};

    use super::*;
    use crate::index::sqlite::SqliteIndex;
    use crate::scan::{SessionScan, Status};

    fn put(root: &Path, k: ObjectKey, b: &[u8]) {
        let p = root.join(k.to_string());
        fs::create_dir_all(p.parent().unwrap()).unwrap();
        fs::write(p, b).unwrap();
    }

    /// A bucket holding the header and `chunks` (by sequence number) of a 6-chunk session whose
    /// header claims `chunk_ms`, and an index with the witness record.
    fn setup(
        n: u64,
        chunk_ms: u32,
    ) -> (
        tempfile::TempDir,
        SessionId,
        fixtures::StoredSession,
        SqliteIndex,
    ) {
        let tmp = tempfile::tempdir().unwrap();
        let s = session_id(n);
        let mut h = fixtures::header(s);
        h.codec.chunk_target_ms = chunk_ms;
        let stored = fixtures::stored_session_with(h, 6, fixtures::events);
        fs::create_dir(tmp.path().join("bucket")).unwrap();
        put(
            &tmp.path().join("bucket"),
            ObjectKey::SessionHeader(s.into()),
            &stored.header,
        );
        put(
            &tmp.path().join("bucket"),
            ObjectKey::Init(s.into(), 0),
            &fixtures::init_bytes(0),
        );
        let index = SqliteIndex::open(&tmp.path().join("index.sqlite3")).unwrap();
        crate::witness::init(&index).unwrap();
        (tmp, s, stored, index)
    }

    fn chunk(tmp: &tempfile::TempDir, s: SessionId, stored: &fixtures::StoredSession, seq: u64) {
        let root = tmp.path().join("bucket");
        let (m, v, e) = &stored.chunks[seq as usize];
        put(&root, ObjectKey::ChunkVideo(s.into(), seq), v);
        put(&root, ObjectKey::ChunkEvents(s.into(), seq), e);
        put(&root, ObjectKey::ChunkManifest(s.into(), seq), m);
    }

    fn advance(tmp: &tempfile::TempDir, scan: &mut SessionScan, index: &SqliteIndex) {
        let dir = DirBucket::new(tmp.path().join("bucket"));
        scan.advance_witnessed(&dir, Some(index), false, &mut Vec::new())
            .unwrap();
    }

    #[test]
    fn an_open_session_is_silent_three_chunks_and_the_slack_after_its_last_arrival() {
        let (tmp, s, stored, index) = setup(1, 2_000);
        chunk(&tmp, s, &stored, 0);
        chunk(&tmp, s, &stored, 1);
        let mut scan = SessionScan::new(s);
        advance(&tmp, &mut scan, &index);
        let last = scan.last_arrival().expect("witnessed");
        assert!(last <= Utc::now());
        let at = |secs: i64| last + chrono::Duration::seconds(secs);
        assert_eq!(scan.silent_at(DEFAULT_SLACK), Some(at(11)));
        assert!(scan.silence(at(10), DEFAULT_SLACK).is_none());
        let silence = scan.silence(at(11), DEFAULT_SLACK).expect("silent at 11 s");
        assert_eq!(silence.last_arrival, last);
        let c = silence.last_chunk.as_ref().expect("a chunk arrived");
        assert_eq!((c.seq, c.media_end_us), (1, 4_000_000));
        assert!(c.arrived_at <= last);
        assert_eq!(scan.status_with(false, true), Status::Silent);
        // Without the indexer's clock (a one-shot verify) it is recording; stale wins.
        assert_eq!(scan.status(false), Status::Recording);
        assert_eq!(scan.status_with(true, true), Status::Interrupted);

        // The next chunk arrives: heard from again, the deadline moves on.
        let before = Utc::now();
        chunk(&tmp, s, &stored, 2);
        advance(&tmp, &mut scan, &index);
        assert!(scan.last_arrival().unwrap() >= before);
        assert_eq!(scan.last_chunk().unwrap().seq, 2);
        assert!(scan.silence(at(11), DEFAULT_SLACK).is_none());
    }

    #[test]
    fn a_chunk_waiting_for_a_missing_one_counts_as_arrived() {
        let (tmp, s, stored, index) = setup(2, 2_000);
        chunk(&tmp, s, &stored, 0);
        let mut scan = SessionScan::new(s);
        advance(&tmp, &mut scan, &index);
        let before = Utc::now();
        // Chunk 1 is lost on the way; 2 arrives and waits for it.
        chunk(&tmp, s, &stored, 2);
        advance(&tmp, &mut scan, &index);
        assert_eq!(scan.chunks_read(), 1);
        assert!(scan.last_arrival().unwrap() >= before);
        // Listed again with nothing newer: not a new arrival.
        let again = scan.last_arrival();
        advance(&tmp, &mut scan, &index);
        assert_eq!(scan.last_arrival(), again);
    }

    #[test]
    fn a_closed_session_is_never_silent() {
        let (tmp, s, stored, index) = setup(3, 2_000);
        for seq in 0..6 {
            chunk(&tmp, s, &stored, seq);
        }
        put(
            &tmp.path().join("bucket"),
            ObjectKey::SessionClosed(s.into()),
            &stored.close,
        );
        let mut scan = SessionScan::new(s);
        advance(&tmp, &mut scan, &index);
        assert!(scan.is_closed());
        let far = Utc::now() + chrono::Duration::days(365);
        assert!(scan.silence(far, Duration::ZERO).is_none());
        assert_eq!(scan.silent_at(Duration::ZERO), None);
        assert_eq!(scan.status_with(false, true), Status::Complete);
    }

    #[test]
    fn the_header_chunk_length_is_clamped_in_the_scan() {
        for (n, claimed, after) in [(4, 1, 5_750), (5, u32::MAX, 185_000)] {
            let (tmp, s, stored, index) = setup(n, claimed);
            chunk(&tmp, s, &stored, 0);
            let mut scan = SessionScan::new(s);
            advance(&tmp, &mut scan, &index);
            let last = scan.last_arrival().unwrap();
            assert_eq!(
                scan.silent_at(DEFAULT_SLACK),
                Some(last + chrono::Duration::milliseconds(after)),
                "chunk_target_ms {claimed}"
            );
        }
    }

    #[test]
    fn without_a_witness_nothing_is_silent() {
        let (tmp, s, stored, _index) = setup(6, 2_000);
        chunk(&tmp, s, &stored, 0);
        let mut scan = SessionScan::new(s);
        let dir = DirBucket::new(tmp.path().join("bucket"));
        scan.advance(&dir, false, &mut Vec::new()).unwrap();
        assert_eq!(scan.last_arrival(), None);
        let far = Utc::now() + chrono::Duration::days(1);
        assert!(scan.silence(far, Duration::ZERO).is_none());
    }
}
