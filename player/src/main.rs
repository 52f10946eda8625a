//! `jitrec-player`: command-line entry point. Parses arguments and calls the library.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, Result};
use clap::{Args, Parser, Subcommand};
use jitrec_format::SessionId;
use jitrec_player::export::{self, ExportOptions};
use jitrec_player::index::{self, Index};
use jitrec_player::indexer::{Indexer, IndexerConfig};
use jitrec_player::store::{LocalDir, ObjectSource, S3Source};
use jitrec_player::verify::{self, Verdict};
use jitrec_uploader::S3Args;

/// Indexes recorded JIT sessions in the bucket, serves them over HTTP, verifies and exports them.
#[derive(Parser)]
#[command(version, about)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

/// Where the recordings are.
#[derive(Args, Clone)]
struct BucketArgs {
    /// A bucket kept as a local directory (jitrec's embedded default store).
    #[arg(
        long,
        value_name = "DIR",
        conflicts_with = "s3_bucket",
        default_value = "/var/lib/jitrec/bucket"
    )]
    bucket_dir: PathBuf,
    /// Read an S3 bucket instead (the key needs s3:GetObject and s3:ListBucket).
    #[command(flatten)]
    s3: S3Args,
}

/// Where the index is.
#[derive(Args, Clone)]
struct IndexArgs {
    /// A SQLite file, or a postgresql://user:password@host:port/db URL.
    #[arg(
        long,
        value_name = "PATH|URL",
        default_value = "/var/lib/jitrec/index.sqlite3"
    )]
    index: String,
}

#[derive(Subcommand)]
enum Command {
    /// Index the bucket continuously and serve the HTTP API.
    Serve {
        #[command(flatten)]
        bucket: BucketArgs,
        #[command(flatten)]
        index: IndexArgs,
        /// Address to listen on. Serve plain HTTP only on loopback; put a TLS-terminating proxy in
        /// front (and pass --cookie-secure) for anything else.
        #[arg(long, default_value = "127.0.0.1:8480")]
        listen: SocketAddr,
        /// Mark the sign-in cookie Secure (when reached over HTTPS).
        #[arg(long)]
        cookie_secure: bool,
        /// Seconds between index passes (a POST to /api/notify starts one at once).
        #[arg(long, default_value_t = 1.0)]
        interval: f64,
        /// An unclosed session with nothing new for this many seconds is interrupted.
        #[arg(long, default_value_t = 600)]
        stale_after: u64,
    },
    /// Manage the report view's local accounts.
    User {
        #[command(subcommand)]
        command: UserCommand,
    },
    /// Empty the index and rebuild it from the bucket.
    Reindex {
        #[command(flatten)]
        bucket: BucketArgs,
        #[command(flatten)]
        index: IndexArgs,
    },
    /// Show sessions per status in the index.
    Status {
        #[command(flatten)]
        index: IndexArgs,
    },
    /// Verify sessions' hash chains and payload hashes. Exits 1 if any session is broken.
    /// With --record, also updates the sessions' status in the index.
    Verify {
        #[command(flatten)]
        bucket: BucketArgs,
        /// Record the result in this index (SQLite path or PostgreSQL URL).
        #[arg(long, value_name = "PATH|URL")]
        record: Option<String>,
        /// Sessions to verify (default: every session in the bucket).
        sessions: Vec<SessionId>,
    },
    /// Export a session to MP4 (remuxed, not re-encoded).
    Export {
        #[command(flatten)]
        bucket: BucketArgs,
        session: SessionId,
        /// The MP4 to write; a screen-size change continues in NAME.part2.mp4, ...
        #[arg(short, long, value_name = "FILE")]
        output: PathBuf,
        /// Also write the events as JSON.
        #[arg(long, value_name = "FILE")]
        events: Option<PathBuf>,
        /// Also write WebVTT chapters from window titles (for the first part).
        #[arg(long, value_name = "FILE")]
        chapters: Option<PathBuf>,
        /// Export even if the session does not verify.
        #[arg(long)]
        allow_unverified: bool,
    },
}

#[derive(Subcommand)]
enum UserCommand {
    /// Create an account or replace its password and role (ends its sign-ins). The password is
    /// read from the first line of standard input, at least 12 characters.
    Add {
        name: String,
        /// `reviewer` (view, search, export) or `admin` (also users and the audit log).
        #[arg(long, default_value = "reviewer")]
        role: String,
        #[command(flatten)]
        index: IndexArgs,
    },
    /// List accounts and roles.
    List {
        #[command(flatten)]
        index: IndexArgs,
    },
}

fn open_bucket(b: &BucketArgs, rt: &tokio::runtime::Runtime) -> Result<Arc<dyn ObjectSource>> {
    Ok(match b.s3.config()? {
        Some(c) => Arc::new(S3Source::new(c, rt.handle().clone())),
        None => {
            anyhow::ensure!(
                b.bucket_dir.is_dir(),
                "bucket directory {} does not exist",
                b.bucket_dir.display()
            );
            Arc::new(LocalDir::new(&b.bucket_dir))
        }
    })
}

fn open_index(spec: &str) -> Result<Arc<dyn Index>> {
    Ok(Arc::from(
        index::open(spec).with_context(|| format!("opening the index {spec}"))?,
    ))
}

fn main() -> Result<()> {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info")),
        )
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .init();
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .context("starting the async runtime")?;
    match Cli::parse().command {
        Command::Serve {
            bucket,
            index,
            listen,
            cookie_secure,
            interval,
            stale_after,
        } => {
            let src = open_bucket(&bucket, &rt)?;
            let idx = open_index(&index.index)?;
            jitrec_player::auth::init(idx.as_ref()).context("preparing the account tables")?;
            if jitrec_player::auth::users(idx.as_ref())?.is_empty() {
                tracing::warn!(
                    "no accounts yet: create one with `jitrec-player user add NAME --role admin`"
                );
            }
            let config = IndexerConfig {
                interval: Duration::from_secs_f64(interval.clamp(0.05, 3600.0)),
                stale_after: Duration::from_secs(stale_after),
                ..IndexerConfig::default()
            };
            let indexer = Indexer::new(Arc::clone(&src), Arc::clone(&idx), config)
                .context("starting the indexer")?;
            let handle = indexer.handle();
            let thread = std::thread::Builder::new()
                .name("indexer".into())
                .spawn(move || indexer.run())
                .context("starting the indexer thread")?;
            let app = jitrec_player::web::app(
                jitrec_player::api::AppState {
                    index: idx,
                    src: Arc::clone(&src),
                    indexer: handle.clone(),
                },
                jitrec_player::web::WebConfig {
                    secure_cookies: cookie_secure,
                },
            );
            rt.block_on(async {
                let listener = tokio::net::TcpListener::bind(listen)
                    .await
                    .with_context(|| format!("listening on {listen}"))?;
                tracing::info!(%listen, bucket = %src.describe(), "serving");
                axum::serve(listener, app)
                    .with_graceful_shutdown(async {
                        let _ = tokio::signal::ctrl_c().await;
                    })
                    .await
                    .context("serving HTTP")
            })?;
            handle.stop();
            thread
                .join()
                .map_err(|_| anyhow::anyhow!("the indexer thread panicked"))?;
            Ok(())
        }
        Command::Reindex { bucket, index } => {
            let src = open_bucket(&bucket, &rt)?;
            let idx = open_index(&index.index)?;
            let mut indexer = Indexer::new(src, Arc::clone(&idx), IndexerConfig::default())?;
            let n = indexer.reindex().context("reindexing")?;
            println!("{n} sessions indexed");
            print_counts(idx.as_ref())
        }
        Command::Status { index } => print_counts(open_index(&index.index)?.as_ref()),
        Command::User { command } => {
            let spec = match &command {
                UserCommand::Add { index, .. } | UserCommand::List { index } => index.index.clone(),
            };
            let idx = open_index(&spec)?;
            jitrec_player::auth::init(idx.as_ref())?;
            match command {
                UserCommand::Add { name, role, .. } => {
                    let role = jitrec_player::auth::Role::parse(&role)
                        .with_context(|| format!("role {role:?}: use reviewer or admin"))?;
                    let mut password = String::new();
                    std::io::stdin()
                        .read_line(&mut password)
                        .context("reading the password from standard input")?;
                    let password = password.trim_end_matches(['\r', '\n']);
                    jitrec_player::auth::add_user(idx.as_ref(), &name, role, password)?;
                    jitrec_player::auth::audit(
                        idx.as_ref(),
                        "(command line)",
                        "user_add",
                        &name,
                        role.as_str(),
                    )?;
                    println!("account {name} ({}) saved", role.as_str());
                }
                UserCommand::List { .. } => {
                    for (name, role) in jitrec_player::auth::users(idx.as_ref())? {
                        println!("{name}\t{}", role.as_str());
                    }
                }
            }
            Ok(())
        }
        Command::Verify {
            bucket,
            record,
            sessions,
        } => {
            let src = open_bucket(&bucket, &rt)?;
            let idx = record.as_deref().map(open_index).transpose()?;
            let sessions = if sessions.is_empty() {
                verify::sessions(src.as_ref()).context("listing the bucket")?
            } else {
                sessions
            };
            let mut broken = 0;
            for s in &sessions {
                let report = match &idx {
                    Some(i) => verify::verify_and_record(src.as_ref(), i.as_ref(), *s)?,
                    None => verify::verify_session(src.as_ref(), *s)?,
                };
                println!("{report}");
                broken += usize::from(report.verdict == Verdict::Broken);
            }
            println!("{} sessions verified, {broken} broken", sessions.len());
            if broken > 0 {
                std::process::exit(1);
            }
            Ok(())
        }
        Command::Export {
            bucket,
            session,
            output,
            events,
            chapters,
            allow_unverified,
        } => {
            let src = open_bucket(&bucket, &rt)?;
            let done = export::export(
                src.as_ref(),
                session,
                &output,
                &ExportOptions { allow_unverified },
            )?;
            println!("{}", done.report);
            for p in &done.parts {
                println!(
                    "wrote {}: {}x{}, {} frames, {:.3} s, from session time {:.3} s",
                    p.path.display(),
                    p.width,
                    p.height,
                    p.frames,
                    p.duration_us as f64 / 1e6,
                    p.starts_at_us as f64 / 1e6
                );
            }
            if let Some(path) = events {
                export::write_events_json(&done.events, &path)?;
                println!("wrote {} ({} events)", path.display(), done.events.len());
            }
            if let (Some(path), Some(first)) = (chapters, done.parts.first()) {
                let vtt = export::webvtt_chapters(
                    &done.events,
                    first.starts_at_us,
                    first.starts_at_us + first.duration_us,
                );
                std::fs::write(&path, vtt)
                    .with_context(|| format!("writing {}", path.display()))?;
                println!("wrote {}", path.display());
            }
            Ok(())
        }
    }
}

fn print_counts(idx: &dyn Index) -> Result<()> {
    let counts = idx.counts()?;
    let total: u64 = counts.iter().map(|(_, n)| n).sum();
    println!("index ({}): {total} sessions", idx.backend());
    for (s, n) in counts {
        println!("  {s:<12} {n}");
    }
    Ok(())
}
