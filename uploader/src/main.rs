//! `jitrec-uploader`: command-line entry point. Parses arguments and wires the library.
//!
//! `main` is `pub(crate)` so the test package can compile this very file into a helper binary it
//! starts and kills (cargo gives a package's tests only that package's own binaries).

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use anyhow::{Context, Result};
use clap::{Args, Parser, Subcommand};
use jitrec_bucket::{BucketWriter, DirBucket, ObjectLock, S3Args, S3Bucket};
use jitrec_spool::SpoolInspector;
use jitrec_uploader::{DEFAULT_CONCURRENCY, Uploader, UploaderConfig};
use tokio_util::sync::CancellationToken;

/// Ships recorded JIT sessions from the local spool to object storage.
#[derive(Parser)]
#[command(version, about)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Upload everything the spool holds, and every new commit, until stopped (SIGINT/SIGTERM).
    Run(Box<RunArgs>),
    /// Show what waits in the spool: pending entries and bytes, the oldest entry's age,
    /// quarantined entries. Safe to run beside a running recorder and uploader.
    Status {
        /// The spool directory.
        #[arg(long, value_name = "DIR")]
        spool: PathBuf,
    },
}

#[derive(Args)]
struct RunArgs {
    /// The spool directory (shared with jitrec-recorder).
    #[arg(long, value_name = "DIR")]
    spool: PathBuf,
    /// Store objects in this local directory (the embedded default store).
    #[arg(
        long,
        value_name = "DIR",
        required_unless_present = "s3_bucket",
        conflicts_with = "s3_bucket"
    )]
    local_dir: Option<PathBuf>,
    #[command(flatten)]
    s3: S3Args,
    /// Lock every uploaded object with S3 Object Lock for this many days (the bucket must have
    /// Object Lock enabled); match the retention policy of this endpoint's sessions.
    #[arg(long, value_name = "DAYS", requires = "s3_bucket")]
    object_lock_days: Option<u32>,
    /// Object Lock mode: `compliance` (nobody can delete early) or `governance`.
    #[arg(long, default_value = "compliance", requires = "object_lock_days")]
    object_lock_mode: String,
    /// Abandon and retry an S3 request attempt after this many seconds.
    #[arg(long, default_value_t = 60, value_name = "SECONDS")]
    attempt_timeout: u64,
    /// Sessions uploaded at once.
    #[arg(long, default_value_t = DEFAULT_CONCURRENCY)]
    concurrency: usize,
    /// Cap upload bandwidth at this many bytes per second.
    #[arg(long, value_name = "BYTES_PER_SEC")]
    bandwidth_limit: Option<u64>,
    /// Serve Prometheus metrics on http://ADDR/metrics (e.g. 127.0.0.1:9464).
    #[arg(long, value_name = "ADDR")]
    metrics_listen: Option<SocketAddr>,
}

#[tokio::main]
pub(crate) async fn main() -> Result<()> {
    // Everything this program creates (spool entries and folders, logs, the index, bucket
    // objects, exports) is private to its user: 0600 files, 0700 folders. The recording is
    // evidence about a person and must not be readable by other local users.
    #[cfg(unix)]
    rustix::process::umask(rustix::fs::Mode::from_raw_mode(0o077));
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info")),
        )
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .init();
    match Cli::parse().command {
        Command::Status { spool } => {
            let inspector = SpoolInspector::open(&spool)
                .with_context(|| format!("opening spool {}", spool.display()))?;
            let backlog = inspector.backlog()?;
            print!(
                "{}",
                jitrec_uploader::status::render(&backlog, std::time::SystemTime::now())
            );
            Ok(())
        }
        Command::Run(args) => match (&args.local_dir, args.s3.config()?) {
            (Some(dir), _) => run(DirBucket::new(dir), &args).await,
            (None, Some(mut config)) => {
                config.attempt_timeout = Duration::from_secs(args.attempt_timeout.max(1));
                if let Some(days) = args.object_lock_days {
                    let compliance = match args.object_lock_mode.as_str() {
                        "compliance" => true,
                        "governance" => false,
                        m => {
                            anyhow::bail!("--object-lock-mode {m:?}: use compliance or governance")
                        }
                    };
                    config.object_lock = Some(ObjectLock { compliance, days });
                }
                run(
                    S3Bucket::new(config, tokio::runtime::Handle::current()),
                    &args,
                )
                .await
            }
            (None, None) => anyhow::bail!("give --local-dir or --s3-bucket"),
        },
    }
}

async fn run<S: BucketWriter>(store: S, args: &RunArgs) -> Result<()> {
    let mut config = UploaderConfig::new(&args.spool);
    config.concurrency = args.concurrency;
    config.bandwidth = args.bandwidth_limit;
    let uploader = Uploader::new(store, config)
        .with_context(|| format!("opening spool {}", args.spool.display()))?;
    let shutdown = CancellationToken::new();
    tokio::spawn(stop_on_signal(shutdown.clone()));
    if let Some(addr) = args.metrics_listen {
        let listener = tokio::net::TcpListener::bind(addr)
            .await
            .with_context(|| format!("binding the metrics endpoint to {addr}"))?;
        tokio::spawn(jitrec_uploader::metrics::serve(
            listener,
            uploader.clone(),
            shutdown.clone(),
        ));
    }
    uploader.run(shutdown).await?;
    Ok(())
}

async fn stop_on_signal(shutdown: CancellationToken) {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{SignalKind, signal};
        match signal(SignalKind::terminate()) {
            Ok(mut term) => {
                tokio::select! {
                    _ = tokio::signal::ctrl_c() => {}
                    _ = term.recv() => {}
                }
            }
            Err(_) => {
                let _ = tokio::signal::ctrl_c().await;
            }
        }
    }
    #[cfg(not(unix))]
    {
        let _ = tokio::signal::ctrl_c().await;
    }
    tracing::info!("stopping");
    shutdown.cancel();
}
