//! `player-index`: how the index answers at scale. Fills each backend with synthetic sessions
//! (with events) through the same `Index::apply` the indexer uses, then times a filtered,
//! paginated list query (first and second page) and a text search, printing p50/p99 per backend.
//!
//! The data is deterministic (seeded): 2,000 users, 5,000 machines, 20 companies, 60 locations,
//! statuses skewed towards complete, and per session a few process events whose command lines
//! mix common admin commands with a rarer argument, so searches hit tens to hundreds of sessions
//! among millions of events, as a reviewer's search would.

use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::summary::Line;
use anyhow::{Context, Result};
use clap::Args;
use jitrec_format::SessionId;
use jitrec_player::index::{Batch, ChunkRow, EventRow, Index, Query, SessionRow, sqlite};
use jitrec_player::scan::Status;
use jitrec_uploader::metrics::quantile;
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

#[derive(Args, Clone)]
pub(crate) struct PlayerIndexArgs {
    /// Sessions to index.
    #[arg(long, default_value_t = 1_000_000)]
    pub(crate) sessions: u64,
    /// Process events per session.
    #[arg(long, default_value_t = 4)]
    pub(crate) events: u32,
    /// Queries of each kind timed.
    #[arg(long, default_value_t = 300)]
    pub(crate) queries: usize,
    /// `sqlite`, `postgresql` or `both`.
    #[arg(long, default_value = "both")]
    pub(crate) backend: String,
}

const USERS: u64 = 2_000;
const MACHINES: u64 = 5_000;
const COMMANDS: [&str; 12] = [
    "systemctl restart nginx",
    "apt-get install -y",
    "vim /etc/hosts",
    "useradd -m",
    "passwd",
    "journalctl -u sshd",
    "chmod 600",
    "tail -f /var/log/syslog",
    "docker ps",
    "ip addr show",
    "cat /etc/shadow",
    "reboot",
];
/// Rarer words appended to commands: a search for one finds ~1 session in RARE / events.
const RARE: u64 = 20_000;

fn session(
    rng: &mut StdRng,
    n: u64,
    events: u32,
    t0: i64,
) -> (SessionRow, ChunkRow, Vec<EventRow>) {
    let started_ms = t0 + (n as i64) * 30_000;
    let mut random = [0u8; 10];
    rng.fill(&mut random);
    let id = SessionId::from_parts(started_ms as u64, random);
    let started = chrono::DateTime::from_timestamp_millis(started_ms).unwrap_or_default();
    let mut row = SessionRow::unknown(id, started);
    row.started_at = started;
    row.ended_at = Some(started + chrono::Duration::minutes(20));
    row.user_name = format!("user{:04}", rng.random_range(0..USERS));
    row.user_id = "1000".into();
    let m = rng.random_range(0..MACHINES);
    row.machine_id = format!("machine-{m:05}");
    row.hostname = format!("ws-{m:05}");
    row.company = Some(format!("company{:02}", m % 20));
    row.location = Some(format!("location{:02}", m % 60));
    row.computer = Some(row.hostname.clone());
    row.trigger = "group_membership".into();
    row.end_reason = Some("jit_ended".into());
    row.chunks = 600;
    row.bytes = 30_000_000;
    row.duration_us = 1_200_000_000;
    row.status = match rng.random_range(0..100) {
        0..=89 => Status::Complete,
        90..=94 => Status::Interrupted,
        95..=97 => Status::Gap,
        98 => Status::Recording,
        _ => Status::Tampered,
    };
    row.closed = row.status != Status::Recording;
    let chunk = ChunkRow {
        seq: 0,
        init_id: 0,
        media_start_us: 0,
        media_end_us: 2_000_000,
        utc_start: started,
        utc_end: started + chrono::Duration::seconds(2),
        keyframe: true,
        frames: 10,
        video_bytes: 50_000,
        events_bytes: 500,
        events,
        verified: true,
    };
    let rows = (0..events)
        .map(|i| {
            let at = u64::from(i) * 300_000;
            let command = format!(
                "{} arg{}",
                COMMANDS[rng.random_range(0..COMMANDS.len())],
                rng.random_range(0..RARE)
            );
            let data = jitrec_player::index::EventData::from_json(
                serde_json::json!({"type": "process_start", "command_line": command}).to_string(),
            )
            .expect("serde_json writes JSON");
            EventRow {
                seq: 0,
                idx: i,
                media_us: at,
                utc: started + chrono::Duration::microseconds(at as i64),
                kind: "process_start".into(),
                text: format!("{command} (user {}, pid {})", row.user_name, 1000 + i),
                data,
            }
        })
        .collect();
    (row, chunk, rows)
}

fn fill(index: &dyn Index, args: &PlayerIndexArgs) -> Result<Duration> {
    let mut rng = StdRng::seed_from_u64(7);
    let t0 = 1_767_225_600_000; // 2026-01-01
    let start = Instant::now();
    let mut batch = Batch::default();
    for n in 0..args.sessions {
        let (row, chunk, events) = session(&mut rng, n, args.events, t0);
        batch.chunks.push((row.id, chunk, events));
        batch.sessions.push(row);
        if batch.sessions.len() == 5_000 {
            index.apply(&batch)?;
            batch = Batch::default();
            if (n + 1) % 100_000 == 0 {
                eprintln!(
                    "  {} sessions in {:.0} s",
                    n + 1,
                    start.elapsed().as_secs_f64()
                );
            }
        }
    }
    index.apply(&batch)?;
    // What the indexer does every few minutes of a running service (planner statistics).
    index.maintain()?;
    Ok(start.elapsed())
}

/// Runs `f(i)` for `i` in `0..n`; returns the sorted latencies and the mean rows returned.
fn time(mut f: impl FnMut(usize) -> Result<usize>, n: usize) -> Result<(Vec<Duration>, f64)> {
    let mut took = Vec::with_capacity(n);
    let mut rows = 0;
    for i in 0..n {
        let t = Instant::now();
        rows += f(i)?;
        took.push(t.elapsed());
    }
    took.sort();
    Ok((took, rows as f64 / n.max(1) as f64))
}

/// The `q` quantile in milliseconds.
fn ms(sorted: &[Duration], q: f64) -> f64 {
    quantile(sorted, q).map_or(f64::NAN, |d| d.as_secs_f64() * 1e3)
}

fn measure(name: &str, index: &dyn Index, args: &PlayerIndexArgs) -> Result<Vec<Line>> {
    eprintln!(
        "{name}: indexing {} sessions with {} events each",
        args.sessions, args.events
    );
    let took = fill(index, args)?;
    let mut rng = StdRng::seed_from_u64(11);
    let users: Vec<String> = (0..args.queries)
        .map(|_| format!("user{:04}", rng.random_range(0..USERS)))
        .collect();
    // Filtered and paginated: one user's complete sessions, page 1 then page 2 (keyset).
    let (list, list_rows) = time(
        |i| {
            let q = Query {
                user: Some(users[i].clone()),
                status: Some(Status::Complete),
                limit: 50,
                ..Query::default()
            };
            let p1 = index.list(&q)?;
            let mut n = p1.sessions.len();
            if let Some(after) = p1.next {
                n += index
                    .list(&Query {
                        after: Some(after),
                        ..q
                    })?
                    .sessions
                    .len();
            }
            Ok(n)
        },
        args.queries,
    )?;
    let words: Vec<String> = (0..args.queries)
        .map(|_| {
            let c = COMMANDS[rng.random_range(0..COMMANDS.len())];
            let first = c.split(' ').next().unwrap_or(c).trim_start_matches('/');
            format!("{first} arg{}", rng.random_range(0..RARE))
        })
        .collect();
    let (search, search_rows) = time(
        |i| {
            Ok(index
                .list(&Query {
                    text: Some(words[i].clone()),
                    limit: 50,
                    ..Query::default()
                })?
                .sessions
                .len())
        },
        args.queries,
    )?;
    println!(
        "{name:<10} {:>9} sessions, filled in {:>5.0} s | list (user+status, 2 pages): p50 {:>7.2} ms  p99 {:>7.2} ms  ({:.0} rows) | text search: p50 {:>7.2} ms  p99 {:>7.2} ms  ({:.1} sessions)",
        args.sessions,
        took.as_secs_f64(),
        ms(&list, 0.5),
        ms(&list, 0.99),
        list_rows,
        ms(&search, 0.5),
        ms(&search, 0.99),
        search_rows,
    );
    Ok(vec![
        Line::new(
            "player index",
            format!("{name}: list, 2 pages, p50 / p99 ms"),
            format!("{:.2} / {:.2}", ms(&list, 0.5), ms(&list, 0.99)),
            "-",
            format!("{} sessions", args.sessions),
        ),
        Line::new(
            "player index",
            format!("{name}: text search, p50 / p99 ms"),
            format!("{:.2} / {:.2}", ms(&search, 0.5), ms(&search, 0.99)),
            "-",
            format!("{} sessions", args.sessions),
        ),
        Line::new(
            "player index",
            format!("{name}: seconds to index"),
            format!("{:.0}", took.as_secs_f64()),
            "-",
            format!("{} sessions x {} events", args.sessions, args.events),
        ),
    ])
}

pub(crate) fn run(args: &PlayerIndexArgs) -> Result<Vec<Line>> {
    let tmp = tempfile::tempdir()?;
    let mut lines = Vec::new();
    if matches!(args.backend.as_str(), "sqlite" | "both") {
        let idx = sqlite::SqliteIndex::open(&tmp.path().join("index.sqlite3"))?;
        lines.extend(measure("sqlite", &idx, args)?);
    }
    if matches!(args.backend.as_str(), "postgresql" | "both") {
        let url = jitrec_tests::postgres::new_database("jitrec_bench")
            .context("starting PostgreSQL (apt-get install postgresql-15)")?;
        let idx: Arc<dyn Index> = Arc::from(jitrec_player::index::open(&url)?);
        lines.extend(measure("postgresql", idx.as_ref(), args)?);
    }
    Ok(lines)
}
