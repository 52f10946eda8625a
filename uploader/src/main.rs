//! `jitrec-uploader`: command-line entry point. Parses arguments and calls the library.

use std::path::PathBuf;

use anyhow::{Context, Result};
use clap::{Parser, Subcommand};
use jitrec_spool::{SpoolConfig, SpoolReader};

/// Ships recorded JIT sessions from the local spool to object storage.
#[derive(Parser)]
#[command(version, about)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Show what waits in the spool: pending entries and bytes, the oldest entry's age,
    /// quarantined entries. Takes the uploader's lock, so it cannot run beside an uploader.
    Status {
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
        Command::Status { spool } => {
            let reader = SpoolReader::open(&spool, SpoolConfig::default())
                .with_context(|| format!("opening spool {}", spool.display()))?;
            let backlog = reader.backlog()?;
            print!(
                "{}",
                jitrec_uploader::status::render(&backlog, std::time::SystemTime::now())
            );
            Ok(())
        }
    }
}
