//! `retention`: how long the retention job takes to expire many sessions from the
//! local-directory store and a SQLite index.
//!
//! Each synthetic session has the object shape of a short real one (header, init segment, one
//! chunk's three objects, close record: 6 objects) and a session row, chunk row and event rows in
//! the index; all have expired under a global policy. The job's own work is timed: listing each
//! session's objects, deleting them, removing the index rows, writing the deletion log.

use std::time::Instant;

use crate::summary::Line;
use anyhow::Result;
use clap::Args;
use jitrec_bucket::DirBucket;
use jitrec_format::fixtures;
use jitrec_format::{ObjectKey, SessionId};
use jitrec_player::index::{Batch, ChunkRow, EventRow, Index, SessionRow, sqlite};
use jitrec_player::retention::{self, Level, RunOptions};
use jitrec_player::scan::Status;
use jitrec_tests::TestBucket;

#[derive(Args, Clone)]
pub(crate) struct RetentionArgs {
    /// Expired sessions to delete.
    #[arg(long, default_value_t = 100_000)]
    pub(crate) sessions: u64,
}

pub(crate) fn run(args: &RetentionArgs) -> Result<Vec<Line>> {
    let tmp = tempfile::tempdir()?;
    let bucket = TestBucket::new(tmp.path().join("bucket"));
    let index = sqlite::SqliteIndex::open(&tmp.path().join("index.sqlite3"))?;
    let t0 = fixtures::t0();
    let setup = Instant::now();
    let mut batch = Batch::default();
    for n in 0..args.sessions {
        let id = SessionId::from_parts(t0.timestamp_millis() as u64 + n, [7; 10]);
        let stored = fixtures::stored_session(id, 1);
        bucket.put(&ObjectKey::SessionHeader(id.into()), &stored.header)?;
        bucket.put(&ObjectKey::Init(id.into(), 0), &fixtures::init_bytes(0))?;
        let (m, v, e) = &stored.chunks[0];
        bucket.put(&ObjectKey::ChunkVideo(id.into(), 0), v)?;
        bucket.put(&ObjectKey::ChunkEvents(id.into(), 0), e)?;
        bucket.put(&ObjectKey::ChunkManifest(id.into(), 0), m)?;
        bucket.put(&ObjectKey::SessionClosed(id.into()), &stored.close)?;
        let mut row = SessionRow::unknown(id, t0);
        row.started_at = t0;
        row.ended_at = Some(t0);
        row.status = Status::Complete;
        row.closed = true;
        row.chunks = 1;
        let m = jitrec_format::ChunkManifest::from_bytes(m)?;
        let events = fixtures::events(0)
            .iter()
            .enumerate()
            .map(|(i, e)| EventRow::new(0, i as u32, e))
            .collect();
        batch.chunks.push((
            id,
            ChunkRow {
                seq: 0,
                init_id: 0,
                media_start_us: m.media_start_us.as_micros(),
                media_end_us: m.media_end_us.as_micros(),
                utc_start: m.utc_start,
                utc_end: m.utc_end,
                keyframe: true,
                frames: m.frames,
                video_bytes: m.video.size,
                events_bytes: m.events.size,
                events: m.events.count,
                verified: true,
            },
            events,
        ));
        batch.sessions.push(row);
        if batch.sessions.len() == 5_000 {
            index.apply(&batch)?;
            batch = Batch::default();
        }
    }
    index.apply(&batch)?;
    index.maintain()?;
    eprintln!(
        "set up {} sessions ({} objects) in {:.0} s",
        args.sessions,
        args.sessions * 6,
        setup.elapsed().as_secs_f64()
    );
    retention::init(&index)?;
    retention::set_policy(&index, Level::Global, "", Some(30), "bench")?;
    let dir = DirBucket::new(tmp.path().join("bucket"));
    let now = t0 + chrono::Duration::days(31);
    let started = Instant::now();
    let report = retention::run(&index, &dir, &RunOptions::default(), now)?;
    let took = started.elapsed().as_secs_f64();
    anyhow::ensure!(
        report.expired.len() as u64 == args.sessions && report.failed.is_empty(),
        "the job deleted {} of {} sessions ({} failed)",
        report.expired.len(),
        args.sessions,
        report.failed.len()
    );
    println!(
        "retention job: expired {} sessions ({} objects, local directory store, SQLite index) in {took:.1} s: {:.0} sessions/s, {:.0} objects/s",
        report.expired.len(),
        report.objects_deleted,
        report.expired.len() as f64 / took,
        report.objects_deleted as f64 / took
    );
    Ok(vec![Line::new(
        "retention",
        format!("seconds to expire {} sessions", report.expired.len()),
        format!("{took:.1}"),
        "-",
        format!("{:.0} sessions/s", report.expired.len() as f64 / took),
    )])
}
