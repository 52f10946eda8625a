//! `jitrec-verify --player-key FP BUNDLE.tar`: checks an evidence bundle on its own (see the
//! library). Exits 0 when it is verified, 1 when anything in it is broken, 3 when it is intact
//! but not vouched for (no pinned player key, unsigned, its key not approved for the machine, or
//! the player did not judge it verified), 2 when it cannot be read.

use std::path::PathBuf;

use anyhow::{Context as _, Result};
use clap::Parser;

/// Check a jitrec evidence bundle (from `jitrec-player export --bundle`) without the player.
#[derive(Parser)]
#[command(version, about)]
struct Cli {
    /// The bundle (a tar file; `-` reads standard input).
    bundle: PathBuf,
    /// The fingerprint of the player you trust (`jitrec-player bundle-key` on that player, got
    /// from its operators, not from the bundle). Without it nothing in the bundle is anchored
    /// and the verdict is at best "not vouched for".
    #[arg(long, value_name = "SHA256")]
    player_key: Option<String>,
}

pub(crate) fn main() -> Result<()> {
    let cli = Cli::parse();
    let report = if cli.bundle.as_os_str() == "-" {
        jitrec_verify::check(std::io::stdin().lock(), cli.player_key.as_deref())
    } else {
        jitrec_verify::check_file(&cli.bundle, cli.player_key.as_deref())
    }
    .with_context(|| format!("reading {}", cli.bundle.display()))
    .unwrap_or_else(|e| {
        // An archive that cannot even be read (a header whose checksum fails) is reported, as
        // broken as it gets.
        println!(
            "{}: BROKEN: cannot be read as a bundle: {e:#}",
            cli.bundle.display()
        );
        std::process::exit(2)
    });
    print!("{report}");
    if !report.intact() {
        std::process::exit(1);
    }
    if !report.verified() {
        std::process::exit(3);
    }
    Ok(())
}
