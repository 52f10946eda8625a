//! `playable`: how soon a reviewer can play what was recorded, through the whole deployed
//! pipeline (the release `jitrec-recorder`, `jitrec-uploader` and `jitrec-player serve` as
//! processes, joined by the spool, the bucket and the control socket; the harness's
//! `Pipeline`).
//!
//! Per run: JIT starts over the control socket, a window is drawn into for a few seconds, JIT
//! stops. Two figures:
//! - *time to playable*: from sending `jit stop` to the player's API listing the session as
//!   complete with its last chunk fetchable (polled every 20 ms, so figures carry up to 20 ms of
//!   polling);
//! - *live delay*: for every chunk while recording, from the wall-clock end of the chunk (the
//!   capture time of its last frame) to the chunk first showing in the session's detail from the
//!   API. The live view runs behind real time by this plus up to one chunk length (2 s by
//!   default), since a chunk is only shipped once it is cut.
//!
//! The reference is the embedded default (local directory store) beside SeaweedFS on loopback.

use std::collections::BTreeSet;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use crate::summary::Line;
use anyhow::{Context, Result};
use clap::Args;
use jitrec_tests::pipeline::{Pipeline, PipelineConfig, Programs, Store};
use jitrec_tests::seaweed;
use jitrec_tests::xvfb::map_window;
use x11rb::connection::Connection;
use x11rb::protocol::xproto::ConnectionExt as _;

#[derive(Args, Clone)]
pub(crate) struct PlayableArgs {
    /// Sessions recorded per store.
    #[arg(long, default_value_t = 15)]
    pub(crate) runs: usize,
    /// Seconds each session records.
    #[arg(long, default_value_t = 5)]
    pub(crate) seconds: u64,
}

/// One store's figures, in seconds.
pub(crate) struct Figures {
    pub(crate) store: &'static str,
    pub(crate) to_playable: Vec<f64>,
    pub(crate) live: Vec<f64>,
}

/// The program files beside the bench binary (`bench/run.sh` builds them in release).
pub(crate) fn programs() -> Result<Programs> {
    let dir: PathBuf = std::env::current_exe()?
        .parent()
        .context("bench binary directory")?
        .to_owned();
    Ok(Programs {
        recorder: dir.join("jitrec-recorder"),
        uploader: dir.join("jitrec-uploader"),
        player: dir.join("jitrec-player"),
    })
}

fn one_store(store: Store, name: &'static str, args: &PlayableArgs) -> Result<Figures> {
    let p = Pipeline::start(&PipelineConfig {
        programs: programs()?,
        store,
        width: 1280,
        height: 800,
        fps: 5,
        chunk_ms: 2000,
        index: None,
        encrypt: false,
        player_args: Vec::new(),
        recorder_toml: String::new(),
    })?;
    let mut f = Figures {
        store: name,
        to_playable: Vec::new(),
        live: Vec::new(),
    };
    for run in 0..args.runs {
        let id = p.jit_start("bench", "bench", &format!("run {run}"))?;
        // Something to record: a window filled with a new shade every 100 ms.
        let (conn, win) = map_window(&p.x.display, (100, 100, 600, 400), 0x0030_3030)?;
        let started = Instant::now();
        let mut seen = BTreeSet::new();
        let mut shade: u32 = 0;
        while started.elapsed() < Duration::from_secs(args.seconds) {
            shade = (shade + 0x0003_0507) & 0x00ff_ffff;
            conn.change_window_attributes(
                win,
                &x11rb::protocol::xproto::ChangeWindowAttributesAux::new().background_pixel(shade),
            )?;
            conn.clear_area(false, win, 0, 0, 0, 0)?;
            conn.flush()?;
            if let Some(d) = p.detail(id)? {
                let now = chrono::Utc::now();
                for c in d["chunks"].as_array().into_iter().flatten() {
                    let seq = c["seq"].as_u64().context("chunk seq")?;
                    if seen.insert(seq) {
                        let end: chrono::DateTime<chrono::Utc> =
                            serde_json::from_value(c["utc_end"].clone())?;
                        f.live
                            .push((now - end).num_microseconds().unwrap_or(0) as f64 / 1e6);
                    }
                }
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        drop(conn);
        let stop = Instant::now();
        p.jit_stop()?;
        loop {
            if p.playable(id)? {
                break;
            }
            if stop.elapsed() > Duration::from_secs(120) {
                anyhow::bail!("session {id} not playable after 120 s\n{}", p.logs());
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        f.to_playable.push(stop.elapsed().as_secs_f64());
        eprintln!(
            "{name}: run {run}: playable {:.2} s after jit stop",
            stop.elapsed().as_secs_f64()
        );
    }
    Ok(f)
}

/// Quantile `q` of `v` (nearest rank); `NaN` for no samples.
pub(crate) fn q(v: &[f64], q: f64) -> f64 {
    if v.is_empty() {
        return f64::NAN;
    }
    let mut s = v.to_vec();
    s.sort_by(f64::total_cmp);
    let rank = ((q * s.len() as f64).ceil() as usize).clamp(1, s.len());
    s[rank - 1]
}

/// Measures both stores.
pub(crate) fn measure(args: &PlayableArgs) -> Result<Vec<Figures>> {
    let local = one_store(Store::DirBucket, "local directory", args)?;
    let srv = seaweed::server();
    let bucket = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?
        .block_on(seaweed::new_bucket("bench-playable"))?;
    let s3 = one_store(
        Store::S3 {
            endpoint: srv.endpoint.clone(),
            bucket,
            access_key: seaweed::ACCESS_KEY.into(),
            secret_key: seaweed::SECRET_KEY.into(),
        },
        "SeaweedFS (S3)",
        args,
    )?;
    Ok(vec![local, s3])
}

pub(crate) fn run(args: &PlayableArgs) -> Result<Vec<Line>> {
    let figures = measure(args)?;
    println!(
        "{} sessions of {} s per store, 1280x800 at 5 fps, 2 s chunks; seconds",
        args.runs, args.seconds
    );
    println!(
        "{:<18} {:>14} {:>14} {:>12} {:>12} {:>8}",
        "store", "playable p50", "playable p99", "live p50", "live p99", "chunks"
    );
    for f in &figures {
        println!(
            "{:<18} {:>14.2} {:>14.2} {:>12.2} {:>12.2} {:>8}",
            f.store,
            q(&f.to_playable, 0.5),
            q(&f.to_playable, 0.99),
            q(&f.live, 0.5),
            q(&f.live, 0.99),
            f.live.len()
        );
    }
    println!("(goal: playable under 10 s after jit stop; live view within 5 s of real time)");
    let mut lines = Vec::new();
    for f in &figures {
        let p99 = q(&f.to_playable, 0.99);
        lines.push(Line::new(
            "time to playable",
            format!("jit stop -> playable, {}, p50 / p99 s", f.store),
            format!("{:.2} / {p99:.2}", q(&f.to_playable, 0.5)),
            "-",
            if p99 < 10.0 {
                "met (< 10 s)"
            } else {
                "NOT met (< 10 s)"
            },
        ));
        // The live view's lag: the chunk's own length (it ships once cut) plus this.
        let lag = q(&f.live, 0.99) + 2.0;
        lines.push(Line::new(
            "time to playable",
            format!("live: chunk end -> listed, {}, p50 / p99 s", f.store),
            format!("{:.2} / {:.2}", q(&f.live, 0.5), q(&f.live, 0.99)),
            "-",
            format!(
                "{} (behind real time <= {lag:.1} s with 2 s chunks; < 5 s)",
                if lag < 5.0 { "met" } else { "NOT met" }
            ),
        ));
    }
    Ok(lines)
}
