//! `jitrec-recorder`: command-line entry point. Parses arguments and calls the library.

use std::path::PathBuf;

use anyhow::{Context, Result};
use clap::{Parser, Subcommand};
use jitrec_spool::{SpoolConfig, SpoolWriter};

/// Records the screen and process/window events of Just-in-Time admin sessions into a local
/// spool, for jitrec-uploader to ship.
#[derive(Parser)]
#[command(version, about)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Recover the spool after a crash: remove partial writes and close every session a previous
    /// run left open as "interrupted". Refuses to run while a recorder holds the spool.
    Recover {
        /// The spool directory.
        #[arg(long, value_name = "DIR")]
        spool: PathBuf,
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
        Command::Recover { spool } => {
            let (writer, recovery) = SpoolWriter::open(&spool, SpoolConfig::default())
                .with_context(|| format!("opening spool {}", spool.display()))?;
            let jitrec_recorder::recovery::Outcome { closed, failed } =
                jitrec_recorder::recovery::close_interrupted(&writer, chrono::Utc::now())?;
            println!("partial writes removed: {}", recovery.temp_files_removed);
            println!("sessions closed as interrupted: {}", closed.len());
            for c in &closed {
                println!(
                    "  {} ({} chunks, recorded until {}, closed {})",
                    c.session, c.chunks, c.ended_at, c.closed_at
                );
            }
            if !failed.is_empty() {
                for (s, e) in &failed {
                    println!("  {s}: NOT closed: {e}");
                }
                anyhow::bail!("{} sessions could not be closed", failed.len());
            }
            Ok(())
        }
    }
}
