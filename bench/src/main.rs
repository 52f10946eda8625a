//! `jitrec-bench`: benchmarks that print figures (run them with `bench/run.sh`).
//!
//! Each figure is measured beside a reference in the same run, because these machines are
//! shared and noisy: a ratio to the reference means more than an absolute number.
//!
//! `uploader`: backlog throughput of `jitrec-uploader` into SeaweedFS on 127.0.0.1 against raw
//! `PutObject` calls of the same objects at the same concurrency (the SDK and server alone, no
//! spool reads, fsyncs or acknowledgements), the same into the local-directory store, and the
//! latency from a chunk's commit to the spool to its manifest being stored while chunks arrive
//! live.
//!
//! `recorder`: CPU, bytes and SSIM of recording a scripted admin workload, and the CPU of an
//! idle screen, against ffmpeg's x11grab on the same screen (see `recorder.rs`).
//!
//! `player-index`: list and text-search latency of the player's index (SQLite and PostgreSQL)
//! filled with a million synthetic sessions (see `player.rs`).
//!
//! `playable`: from `jit stop` to the session being playable through the player's API, and the
//! live view's delay, through the deployed programs (see `playable.rs`).
//!
//! `retention`: how long the retention job takes to expire 100,000 sessions (see
//! `retention.rs`).
//!
//! `fleet`: N simulated endpoints (default 100 to 2,000) uploading sessions at real time through
//! the real uploader into SeaweedFS, one or two players indexing into PostgreSQL: live delay,
//! time to playable and index pass time against N, and where it saturates (see `fleet.rs`; not
//! part of `all`: it takes about 15 minutes).
//!
//! `all`: each of these in turn, then one table of their headline figures (`summary.rs`).

// A benchmark prints its figures; that is its whole output.
#![allow(clippy::print_stdout, clippy::print_stderr)]

use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Result;
use bytes::Bytes;
use clap::{Args, Parser, Subcommand};
use jitrec_bucket::{BucketWriter, DirBucket, S3Bucket};
use jitrec_spool::{SpoolConfig, SpoolReader, SpoolWriter};
use jitrec_tests::{close_session, commit_chunk, drain, open_session, record_session, seaweed};
use jitrec_uploader::metrics::quantile;
use jitrec_uploader::{Uploader, UploaderConfig};
use tokio::sync::Semaphore;
use tokio_util::sync::CancellationToken;

mod fleet;
mod playable;
mod player;
mod recorder;
mod retention;
mod summary;

use summary::Line;

#[derive(Parser)]
#[command(about = "jitrec benchmarks")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Every benchmark below, then one table of their figures.
    All {
        /// Smaller sizes (100k sessions for the index, 10k for retention, 20 s idle runs,
        /// 5 sessions per store for time to playable): a table in about 10 minutes.
        #[arg(long)]
        quick: bool,
    },
    /// Upload throughput and commit-to-visible latency.
    Uploader(UploaderArgs),
    /// CPU, bytes and SSIM of recording a scripted admin workload and an idle screen, against
    /// ffmpeg.
    Recorder(recorder::RecorderArgs),
    /// List and text-search latency of the player's index with many sessions, per backend.
    PlayerIndex(player::PlayerIndexArgs),
    /// How long the retention job takes to expire many sessions.
    Retention(retention::RetentionArgs),
    /// Time from `jit stop` to playable, and live delay, through the deployed pipeline.
    Playable(playable::PlayableArgs),
    /// Many endpoints uploading at once into one bucket, one or two players indexing into
    /// PostgreSQL: live delay, time to playable and index pass time against N.
    Fleet(fleet::FleetArgs),
}

#[derive(Args, Clone)]
struct UploaderArgs {
    /// Chunks in the backlog to drain (10 per session).
    #[arg(long, default_value_t = 600)]
    chunks: u64,
    /// Largest video payload per chunk in KiB (sizes are spread evenly up to it).
    #[arg(long, default_value_t = 512)]
    max_chunk_kib: usize,
    /// Chunks committed live for the latency figure.
    #[arg(long, default_value_t = 200)]
    live_chunks: u64,
    /// Time between live commits, in milliseconds.
    #[arg(long, default_value_t = 100)]
    live_interval_ms: u64,
    /// Sessions uploaded at once (the uploader's default).
    #[arg(long, default_value_t = jitrec_uploader::DEFAULT_CONCURRENCY)]
    concurrency: usize,
}

const LIMIT: Duration = Duration::from_secs(1800);

#[tokio::main]
async fn main() -> Result<()> {
    match Cli::parse().command {
        Command::All { quick } => all(quick).await,
        Command::Uploader(args) => uploader(args).await.map(drop),
        Command::Recorder(args) => blocking(move || recorder::run(&args)).await.map(drop),
        Command::PlayerIndex(args) => blocking(move || player::run(&args)).await.map(drop),
        Command::Retention(args) => blocking(move || retention::run(&args)).await.map(drop),
        Command::Playable(args) => blocking(move || playable::run(&args)).await.map(drop),
        // A plain thread, not the blocking pool: the benchmark runs a runtime of its own for
        // the simulated endpoints, which cannot be started inside this one's context.
        Command::Fleet(args) => {
            let run = std::thread::spawn(move || fleet::run(&args));
            blocking(move || {
                run.join()
                    .map_err(|_| anyhow::anyhow!("the fleet benchmark panicked"))?
            })
            .await
            .map(drop)
        }
    }
}

/// Runs a benchmark that blocks (processes, X, SQLite) off the async workers.
async fn blocking<T: Send + 'static>(f: impl FnOnce() -> Result<T> + Send + 'static) -> Result<T> {
    tokio::task::spawn_blocking(f).await?
}

/// Every benchmark in turn, one after another (never two at once: they would measure each
/// other), then the table.
async fn all(quick: bool) -> Result<()> {
    let started = Instant::now();
    let mut lines = Vec::new();
    println!("== uploader");
    lines.extend(
        uploader(UploaderArgs {
            chunks: if quick { 200 } else { 600 },
            max_chunk_kib: 512,
            live_chunks: if quick { 50 } else { 200 },
            live_interval_ms: 100,
            concurrency: jitrec_uploader::DEFAULT_CONCURRENCY,
        })
        .await?,
    );
    println!("\n== recorder");
    let rec = recorder::RecorderArgs {
        idle_seconds: if quick { 20 } else { 60 },
        no_workload: false,
        no_events: false,
    };
    lines.extend(blocking(move || recorder::run(&rec)).await?);
    println!("\n== time to playable");
    let pl = playable::PlayableArgs {
        runs: if quick { 5 } else { 15 },
        seconds: 5,
    };
    lines.extend(blocking(move || playable::run(&pl)).await?);
    println!("\n== player index");
    let idx = player::PlayerIndexArgs {
        sessions: if quick { 100_000 } else { 1_000_000 },
        events: 4,
        queries: 300,
        backend: "both".into(),
    };
    lines.extend(blocking(move || player::run(&idx)).await?);
    println!("\n== retention");
    let ret = retention::RetentionArgs {
        sessions: if quick { 10_000 } else { 100_000 },
    };
    lines.extend(blocking(move || retention::run(&ret)).await?);
    println!(
        "\n== summary ({}; {:.0} min)",
        if quick { "--quick sizes" } else { "full sizes" },
        started.elapsed().as_secs_f64() / 60.0
    );
    summary::print(&lines);
    Ok(())
}

struct Row {
    name: String,
    chunks: u64,
    bytes: u64,
    secs: f64,
}

impl Row {
    fn print(&self, reference: Option<&Row>) {
        let mb = self.bytes as f64 / 1e6;
        let ratio = reference
            .map(|r| {
                format!(
                    "  {:.2}x the reference's MB/s",
                    (mb / self.secs) / (r.bytes as f64 / 1e6 / r.secs)
                )
            })
            .unwrap_or_default();
        println!(
            "{:<38} {:>7} {:>9.1} {:>8.2} {:>9.1} {:>8.1}{ratio}",
            self.name,
            self.chunks,
            mb,
            self.secs,
            self.chunks as f64 / self.secs,
            mb / self.secs
        );
    }
}

/// Fills a spool with `chunks` chunks in sessions of 10.
fn fill(spool: &Path, chunks: u64, max_video: usize) -> Result<()> {
    let (w, _) = SpoolWriter::open(spool, SpoolConfig::default())?;
    for _ in 0..chunks.div_ceil(10) {
        record_session(&w, 10, max_video, |_, _, _| {})?;
    }
    Ok(())
}

/// One object: key, body, content type.
type Object = (String, Bytes, &'static str);

/// Every object the spool would become, per session, in upload order.
fn objects(spool: &Path) -> Result<Vec<Vec<Object>>> {
    let r = SpoolReader::open(spool, SpoolConfig::default())?;
    let mut out = Vec::new();
    for s in r.sessions()? {
        let mut objs = Vec::new();
        let at = r.session_key(s)?;
        for e in r.pending(s)? {
            for (k, b) in r.read(&e)?.into_objects(&e, at) {
                objs.push((k.to_string(), Bytes::from(b), k.content_type()));
            }
        }
        out.push(objs);
    }
    Ok(out)
}

/// The reference: the same objects with plain `PutObject`, sessions in parallel up to
/// `concurrency`, each session's objects one after another.
async fn raw_puts(
    store: Arc<S3Bucket>,
    sessions: Vec<Vec<Object>>,
    concurrency: usize,
) -> Result<()> {
    let slots = Arc::new(Semaphore::new(concurrency));
    let mut tasks = tokio::task::JoinSet::new();
    for objs in sessions {
        let store = Arc::clone(&store);
        let slots = Arc::clone(&slots);
        tasks.spawn(async move {
            let _slot = slots.acquire().await?;
            for (k, b, ct) in objs {
                store.put(&k, b, ct).await?;
            }
            anyhow::Ok(())
        });
    }
    while let Some(r) = tasks.join_next().await {
        r??;
    }
    Ok(())
}

async fn timed_drain<S: BucketWriter>(
    store: S,
    spool: &Path,
    concurrency: usize,
) -> Result<(f64, u64, u64)> {
    let mut config = UploaderConfig::new(spool);
    config.concurrency = concurrency;
    let t = Instant::now();
    let m = drain(store, config, LIMIT).await?;
    let secs = t.elapsed().as_secs_f64();
    let get = |c: &std::sync::atomic::AtomicU64| c.load(std::sync::atomic::Ordering::Relaxed);
    Ok((secs, get(&m.chunks_acked), get(&m.bytes_uploaded)))
}

/// Commits chunks one by one at a steady pace while an uploader runs; returns the latencies.
async fn live<S: BucketWriter>(
    store: S,
    spool: &Path,
    args: &UploaderArgs,
) -> Result<Vec<Duration>> {
    let (w, _) = SpoolWriter::open(spool, SpoolConfig::default())?;
    let up = Uploader::new(store, UploaderConfig::new(spool))?;
    let metrics = up.metrics();
    let stop = CancellationToken::new();
    let task = tokio::spawn(up.run(stop.clone()));
    let max_video = args.max_chunk_kib * 1024;
    let (n, pace) = (
        args.live_chunks,
        Duration::from_millis(args.live_interval_ms),
    );
    let writer = tokio::task::spawn_blocking(move || -> Result<()> {
        let mut s = open_session(&w)?;
        for _ in 0..n {
            commit_chunk(&mut s, max_video)?;
            std::thread::sleep(pace);
        }
        close_session(s, jitrec_format::EndReason::JitEnded)
    });
    writer.await??;
    jitrec_tests::wait_drained(spool, LIMIT).await?;
    stop.cancel();
    task.await??;
    let mut l = metrics.latencies();
    l.sort();
    Ok(l)
}

async fn uploader(args: UploaderArgs) -> Result<Vec<Line>> {
    if cfg!(debug_assertions) {
        eprintln!(
            "warning: this is a debug build; the S3 SDK costs ~30x more CPU in debug. Use bench/run.sh."
        );
    }
    let srv = seaweed::server();
    let max_video = args.max_chunk_kib * 1024;
    let tmp = tempfile::tempdir()?;
    println!(
        "uploader benchmark: {} chunks (payloads up to {} KiB, incompressible), {} sessions at once, SeaweedFS 4.48 on {}",
        args.chunks, args.max_chunk_kib, args.concurrency, srv.endpoint
    );
    println!(
        "{:<38} {:>7} {:>9} {:>8} {:>9} {:>8}",
        "", "chunks", "MB", "seconds", "chunks/s", "MB/s"
    );
    // Two interleaved rounds, so a burst of load from elsewhere hits both sides alike.
    let mut rows = Vec::new();
    for round in 1..=2 {
        let spool = tmp.path().join(format!("spool-s3-{round}"));
        fill(&spool, args.chunks, max_video)?;
        let sessions = objects(&spool)?;
        let bytes: u64 = sessions
            .iter()
            .flatten()
            .map(|(_, b, _)| b.len() as u64)
            .sum();
        let ref_bucket = seaweed::new_bucket("bench-ref").await?;
        let ref_store = Arc::new(S3Bucket::new(
            seaweed::config(&srv.endpoint, &ref_bucket),
            tokio::runtime::Handle::current(),
        ));
        let t = Instant::now();
        raw_puts(ref_store, sessions, args.concurrency).await?;
        let reference = Row {
            name: format!("reference: raw PutObject (round {round})"),
            chunks: args.chunks,
            bytes,
            secs: t.elapsed().as_secs_f64(),
        };
        reference.print(None);
        let bucket = seaweed::new_bucket("bench-up").await?;
        let store = S3Bucket::new(
            seaweed::config(&srv.endpoint, &bucket),
            tokio::runtime::Handle::current(),
        );
        let (secs, chunks, up_bytes) = timed_drain(store, &spool, args.concurrency).await?;
        let row = Row {
            name: format!("jitrec-uploader -> S3 (round {round})"),
            chunks,
            bytes: up_bytes,
            secs,
        };
        row.print(Some(&reference));
        rows.push((reference, row));
    }
    let spool = tmp.path().join("spool-local");
    fill(&spool, args.chunks, max_video)?;
    let (secs, chunks, bytes) = timed_drain(
        DirBucket::new(tmp.path().join("bucket-local")),
        &spool,
        args.concurrency,
    )
    .await?;
    Row {
        name: "jitrec-uploader -> local directory".into(),
        chunks,
        bytes,
        secs,
    }
    .print(None);

    println!();
    println!(
        "commit -> visible latency, {} chunks committed live every {} ms:",
        args.live_chunks, args.live_interval_ms
    );
    let bucket = seaweed::new_bucket("bench-live").await?;
    let s3 = live(
        S3Bucket::new(
            seaweed::config(&srv.endpoint, &bucket),
            tokio::runtime::Handle::current(),
        ),
        &tmp.path().join("spool-live-s3"),
        &args,
    )
    .await?;
    let local = live(
        DirBucket::new(tmp.path().join("bucket-live")),
        &tmp.path().join("spool-live-local"),
        &args,
    )
    .await?;
    let mut lines = Vec::new();
    let rate = |r: &Row| r.bytes as f64 / 1e6 / r.secs;
    let (ours, reference) = (
        rows.iter().map(|(_, r)| rate(r)).sum::<f64>() / rows.len() as f64,
        rows.iter().map(|(r, _)| rate(r)).sum::<f64>() / rows.len() as f64,
    );
    lines.push(Line::new(
        "uploader",
        "backlog throughput into S3, MB/s",
        format!("{ours:.1}"),
        format!("{reference:.1}"),
        format!("{:.2}x raw PutObject", ours / reference),
    ));
    for (name, l) in [("S3 (SeaweedFS)", &s3), ("local directory", &local)] {
        let ms = |q| quantile(l, q).map_or(f64::NAN, |d| d.as_secs_f64() * 1e3);
        println!(
            "  {name:<18} median {:>7.1} ms   p99 {:>7.1} ms   max {:>7.1} ms   ({} samples)",
            ms(0.5),
            ms(0.99),
            ms(1.0),
            l.len()
        );
        lines.push(Line::new(
            "uploader",
            format!("commit -> stored, {name}, p50 / p99 ms"),
            format!("{:.0} / {:.0}", ms(0.5), ms(0.99)),
            "-",
            if ms(0.99) < 1000.0 {
                "met (starts within 1 s)"
            } else {
                "NOT met (starts within 1 s)"
            },
        ));
    }
    Ok(lines)
}
