//! `jitrec-player`: command-line entry point. Parses arguments and calls the library.

use std::path::PathBuf;

use anyhow::{Context, Result};
use clap::{Parser, Subcommand};
use jitrec_format::SessionId;
use jitrec_player::store::LocalDir;
use jitrec_player::verify::{self, Verdict};

/// Reads recorded JIT sessions from the bucket: verifies them (more to come: index, report view,
/// export, retention).
#[derive(Parser)]
#[command(version, about)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Verify sessions' hash chains and payload hashes. Exits 1 if any session is broken.
    Verify {
        /// A bucket kept as a local directory (jitrec's embedded default store).
        #[arg(long, value_name = "DIR")]
        bucket_dir: PathBuf,
        /// Sessions to verify (default: every session in the bucket).
        sessions: Vec<SessionId>,
    },
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
    match Cli::parse().command {
        Command::Verify {
            bucket_dir,
            sessions,
        } => {
            anyhow::ensure!(
                bucket_dir.is_dir(),
                "bucket directory {} does not exist",
                bucket_dir.display()
            );
            let store = LocalDir::new(&bucket_dir);
            let sessions = if sessions.is_empty() {
                verify::sessions(&store).context("listing the bucket")?
            } else {
                sessions
            };
            let mut broken = 0;
            for s in &sessions {
                let report = verify::verify_session(&store, *s)?;
                println!("{report}");
                broken += usize::from(report.verdict == Verdict::Broken);
            }
            println!("{} sessions verified, {broken} broken", sessions.len());
            if broken > 0 {
                std::process::exit(1);
            }
            Ok(())
        }
    }
}
