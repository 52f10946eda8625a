//! `fleet`: many endpoints at once against one bucket and one or two players, to see where the
//! player side saturates (issue 21's load test).
//!
//! Per step of N endpoints: a fresh SeaweedFS bucket on 127.0.0.1 and a fresh PostgreSQL
//! database; one or two release `jitrec-player serve` processes on it (the second follows, as
//! in a deployment behind a load balancer); and N simulated endpoints in this process, each
//! with a spool of its own and the real uploader (`jitrec_uploader::Uploader`, the code the
//! `jitrec-uploader` program runs) shipping it. Each endpoint records one session: a chunk of
//! `--chunk-kib` every 2 s (the recorder's default chunk length), at real time, starts spread
//! over the first 2 s, for `--seconds`, then closes it. What is not real: the chunks are the
//! test fixtures' (v1 layout, unsigned, small synthetic payloads, not H.264 from a screen), and
//! all N endpoints share this machine's two cores with SeaweedFS, PostgreSQL and the players.
//!
//! Figures per N:
//! - *live delay*: for probe endpoints (up to 20), from a chunk's commit to its spool to the
//!   chunk showing in the session's detail through the API (polled every 250 ms);
//! - *time to playable*: for the same probes, from the close record's commit to the session
//!   listed `complete`;
//! - *index pass time* against *open sessions*, read from the leader's `/metrics` every second;
//! - whether the step *kept up*: every session complete within 60 s of the last close, and the
//!   live delay's p99 under three chunk lengths (6 s). The first N that does not is where it
//!   saturates.

use std::collections::BTreeMap;
use std::io::Write as _;
use std::net::SocketAddr;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use clap::Args;
use jitrec_format::{EndReason, SessionId};
use jitrec_spool::{SpoolConfig, SpoolWriter};
use jitrec_tests::{close_session, commit_chunk, http, open_session, seaweed};
use jitrec_uploader::metrics::quantile;
use jitrec_uploader::{Uploader, UploaderConfig};
use tokio_util::sync::CancellationToken;

use crate::summary::Line;

#[derive(Args, Clone)]
pub(crate) struct FleetArgs {
    /// Endpoint counts to run, one step each, in order.
    #[arg(long, value_delimiter = ',', default_values_t = [100, 500, 1000, 2000])]
    pub(crate) endpoints: Vec<usize>,
    /// Seconds each endpoint records.
    #[arg(long, default_value_t = 60)]
    pub(crate) seconds: u64,
    /// Size of each chunk's video payload, KiB (a 2 s chunk of the scripted admin desktop is
    /// about 80 KiB; smaller keeps the bucket's disk out of the figures).
    #[arg(long, default_value_t = 16)]
    pub(crate) chunk_kib: usize,
    /// Players serving the index (1 or 2; the second follows).
    #[arg(long, default_value_t = 2)]
    pub(crate) players: usize,
}

const CHUNK: Duration = Duration::from_secs(2);
const PROBES: usize = 20;
const USER: (&str, &str) = ("bench", "bench password 1");

/// One step's figures.
struct Step {
    endpoints: usize,
    live: Vec<f64>,
    to_playable: Vec<f64>,
    /// (open sessions, last pass seconds) seen on the leader.
    passes: Vec<(u64, f64)>,
    all_complete_after: Option<f64>,
}

impl Step {
    fn kept_up(&self) -> bool {
        let p99 = q(&self.live, 0.99);
        self.all_complete_after.is_some_and(|t| t < 60.0) && p99.is_some_and(|p| p < 6.0)
    }
}

fn q(v: &[f64], p: f64) -> Option<f64> {
    let mut d: Vec<Duration> = v.iter().map(|s| Duration::from_secs_f64(*s)).collect();
    d.sort();
    quantile(&d, p).map(|d| d.as_secs_f64())
}

fn fmt(v: Option<f64>) -> String {
    v.map_or_else(|| "-".into(), |s| format!("{s:.2}"))
}

pub(crate) fn run(args: &FleetArgs) -> Result<Vec<Line>> {
    anyhow::ensure!((1..=2).contains(&args.players), "--players is 1 or 2");
    let largest = args.endpoints.iter().copied().max().unwrap_or(0);
    raise_limits(largest)?;
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()?;
    let srv = seaweed::server();
    println!(
        "{} endpoint(s) per step, each one session of {} s in 2 s chunks of {} KiB, through the \
         real uploader into SeaweedFS on {}; {} player(s) on one PostgreSQL",
        args.endpoints
            .iter()
            .map(usize::to_string)
            .collect::<Vec<_>>()
            .join(", "),
        args.seconds,
        args.chunk_kib,
        srv.endpoint,
        args.players
    );
    let mut steps = Vec::new();
    for &n in &args.endpoints {
        let s = step(&rt, n, args)?;
        let kept = s.kept_up();
        steps.push(s);
        if !kept {
            println!("  saturated at {n} endpoints: the larger steps are not run");
            break;
        }
    }
    println!();
    println!(
        "{:>9} {:>11} {:>11} {:>12} {:>12} {:>14} {:>13} {:>10}",
        "endpoints",
        "live p50 s",
        "live p99 s",
        "playable p50",
        "playable p99",
        "max open sess.",
        "pass p50 / max",
        "kept up"
    );
    for s in &steps {
        let pass: Vec<f64> = s.passes.iter().map(|p| p.1).collect();
        println!(
            "{:>9} {:>11} {:>11} {:>12} {:>12} {:>14} {:>13} {:>10}",
            s.endpoints,
            fmt(q(&s.live, 0.5)),
            fmt(q(&s.live, 0.99)),
            fmt(q(&s.to_playable, 0.5)),
            fmt(q(&s.to_playable, 0.99)),
            s.passes.iter().map(|p| p.0).max().unwrap_or(0),
            format!(
                "{} / {}",
                fmt(q(&pass, 0.5)),
                fmt(pass.iter().copied().reduce(f64::max))
            ),
            if s.kept_up() { "yes" } else { "NO" }
        );
    }
    let sustained = steps
        .iter()
        .filter(|s| s.kept_up())
        .map(|s| s.endpoints)
        .max();
    println!(
        "largest step this machine kept up with: {}",
        sustained.map_or_else(|| "none".into(), |n| format!("{n} endpoints"))
    );
    let mut lines = Vec::new();
    for s in &steps {
        lines.push(Line::new(
            "fleet",
            format!("{} endpoints: live delay p50 / p99", s.endpoints),
            format!("{} / {} s", fmt(q(&s.live, 0.5)), fmt(q(&s.live, 0.99))),
            "-",
            if s.kept_up() { "kept up" } else { "saturated" },
        ));
    }
    Ok(lines)
}

/// Endpoints' spools each hold an inotify instance and several files: the defaults (128
/// instances, 1024 open files) stop far below a fleet. Raised for this process, and said.
fn raise_limits(endpoints: usize) -> Result<()> {
    let want = (endpoints * 4 + 4096) as u64;
    let (_, hard) = rustix_nofile()?;
    let soft = want.min(hard);
    set_nofile(soft, hard)?;
    let path = "/proc/sys/fs/inotify/max_user_instances";
    let now: u64 = std::fs::read_to_string(path)
        .ok()
        .and_then(|s| s.trim().parse().ok())
        .unwrap_or(0);
    let need = (endpoints + 1024) as u64;
    if now < need {
        std::fs::write(path, need.to_string())
            .with_context(|| format!("raising {path} to {need} (run as root)"))?;
        println!("raised {path} from {now} to {need} (one inotify instance per simulated spool)");
    }
    Ok(())
}

fn rustix_nofile() -> Result<(u64, u64)> {
    let l = rustix::process::getrlimit(rustix::process::Resource::Nofile);
    Ok((l.current.unwrap_or(u64::MAX), l.maximum.unwrap_or(u64::MAX)))
}

fn set_nofile(soft: u64, hard: u64) -> Result<()> {
    rustix::process::setrlimit(
        rustix::process::Resource::Nofile,
        rustix::process::Rlimit {
            current: Some(soft),
            maximum: Some(hard),
        },
    )
    .context("raising the open-file limit")
}

/// A running `serve`, killed when dropped.
struct Served {
    child: Child,
    addr: SocketAddr,
    metrics: SocketAddr,
}

impl Drop for Served {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn free_port() -> Result<SocketAddr> {
    Ok(std::net::TcpListener::bind("127.0.0.1:0")?.local_addr()?)
}

fn serve(player: &Path, bucket: &str, index: &str, log: &Path) -> Result<Served> {
    let (addr, metrics) = (free_port()?, free_port()?);
    let child = Command::new(player)
        .args(["serve", "--listen", &addr.to_string()])
        .args(["--metrics-listen", &metrics.to_string()])
        .args(["--retention-every", "0", "--index", index])
        .args([
            "--s3-bucket",
            bucket,
            "--s3-endpoint",
            &seaweed::server().endpoint,
        ])
        .env("AWS_ACCESS_KEY_ID", seaweed::ACCESS_KEY)
        .env("AWS_SECRET_ACCESS_KEY", seaweed::SECRET_KEY)
        .env("RUST_LOG", "warn")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(log)?)
        .spawn()?;
    let s = Served {
        child,
        addr,
        metrics,
    };
    let t = Instant::now();
    while !http::get(addr, "/login").is_ok_and(|r| r.status == 200) {
        if t.elapsed() > Duration::from_secs(60) {
            bail!(
                "the player did not answer on {addr}: {}",
                std::fs::read_to_string(log).unwrap_or_default()
            );
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    Ok(s)
}

fn sign_in(addr: SocketAddr) -> Result<String> {
    let r = http::request(
        addr,
        "POST",
        "/api/login",
        &[("Content-Type", "application/json")],
        serde_json::json!({"user": USER.0, "password": USER.1})
            .to_string()
            .as_bytes(),
    )?;
    anyhow::ensure!(r.status == 200, "sign-in: {} {}", r.status, r.text());
    r.header("set-cookie")
        .and_then(|c| c.split(';').next())
        .map(str::to_owned)
        .context("no sign-in cookie")
}

/// The leader's (open sessions, last pass seconds), from its metrics.
fn pass_figures(metrics: SocketAddr) -> Option<(u64, f64, bool)> {
    let text = http::get(metrics, "/metrics").ok()?.text();
    let value = |name: &str| {
        text.lines()
            .find_map(|l| l.strip_prefix(name)?.strip_prefix(' ')?.parse::<f64>().ok())
    };
    Some((
        value("jitrec_player_index_open_sessions")? as u64,
        value("jitrec_player_index_last_pass_seconds")?,
        value("jitrec_player_leader")? > 0.5,
    ))
}

/// What a probe endpoint's writer saw: when each chunk and the close were committed.
#[derive(Default)]
struct Probe {
    session: Option<SessionId>,
    commits: BTreeMap<u64, Instant>,
    closed: Option<Instant>,
}

fn step(rt: &tokio::runtime::Runtime, n: usize, args: &FleetArgs) -> Result<Step> {
    println!("\n-- {n} endpoints");
    let tmp = tempfile::tempdir()?;
    let bucket = rt.block_on(seaweed::new_bucket("fleet"))?;
    let index = jitrec_tests::postgres::new_database("fleet")?;
    let player = crate::playable::programs()?.player;
    let mut add = Command::new(&player)
        .args(["user", "add", USER.0, "--role", "admin", "--index", &index])
        .env("RUST_LOG", "warn")
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .spawn()?;
    writeln!(add.stdin.take().context("stdin")?, "{}", USER.1)?;
    anyhow::ensure!(add.wait()?.success(), "user add failed");
    let mut players = Vec::new();
    for i in 0..args.players {
        players.push(serve(
            &player,
            &bucket,
            &index,
            &tmp.path().join(format!("player{i}.log")),
        )?);
    }
    // The leader is whichever took the lead first; its metrics say.
    let t = Instant::now();
    let leader = loop {
        if let Some(p) = players
            .iter()
            .find(|p| pass_figures(p.metrics).is_some_and(|f| f.2))
        {
            break p.metrics;
        }
        anyhow::ensure!(t.elapsed() < Duration::from_secs(60), "no player leads");
        std::thread::sleep(Duration::from_millis(100));
    };
    // Probes are read through the last player (the follower when there are two): what a
    // reviewer behind a load balancer may be served by.
    let reader = players.last().context("a player")?.addr;
    let cookie = sign_in(reader)?;

    let store = jitrec_bucket::S3Bucket::new(
        seaweed::config(&seaweed::server().endpoint, &bucket),
        rt.handle().clone(),
    );
    let stop = CancellationToken::new();
    let mut uploaders = Vec::new();
    let mut writers = Vec::new();
    for i in 0..n {
        let spool = tmp.path().join(format!("spool{i}"));
        let (w, _) = SpoolWriter::open(&spool, SpoolConfig::default())?;
        writers.push(w);
        let up = {
            let _guard = rt.enter();
            Uploader::new(store.clone(), UploaderConfig::new(&spool))?
        };
        uploaders.push(rt.spawn(up.run(stop.clone())));
    }
    let probes: Vec<Arc<Mutex<Probe>>> = (0..n.min(PROBES))
        .map(|_| Arc::new(Mutex::new(Probe::default())))
        .collect();
    // Writers: a few threads, each holding its share of the endpoints, committing each one's
    // chunk at its own phase of the 2 s period.
    let started = Instant::now();
    let chunks = args.seconds.div_ceil(CHUNK.as_secs()).max(1);
    let max_video = args.chunk_kib * 1024;
    let threads = 4.min(n.max(1));
    let mut handles = Vec::new();
    let mut shares: Vec<Vec<(usize, SpoolWriter)>> = (0..threads).map(|_| Vec::new()).collect();
    for (i, w) in writers.into_iter().enumerate() {
        shares[i % threads].push((i, w));
    }
    let behind = Arc::new(Mutex::new(Duration::ZERO));
    for share in shares {
        let probes = probes.clone();
        let behind = Arc::clone(&behind);
        handles.push(std::thread::spawn(move || -> Result<()> {
            let mut sessions = Vec::new();
            for (i, w) in &share {
                let s = open_session(w)?;
                if let Some(p) = probes.get(*i) {
                    p.lock().map_err(|_| anyhow::anyhow!("poisoned"))?.session =
                        Some(s.session_id());
                }
                sessions.push((*i, s));
            }
            let phase = |i: usize| CHUNK.mul_f64(i as f64 / n as f64);
            for seq in 0..chunks {
                for (i, s) in &mut sessions {
                    let due = started + phase(*i) + CHUNK * (seq as u32 + 1);
                    let now = Instant::now();
                    if due > now {
                        std::thread::sleep(due - now);
                    } else if let Ok(mut b) = behind.lock() {
                        *b = (*b).max(now - due);
                    }
                    commit_chunk(s, max_video)?;
                    if let Some(p) = probes.get(*i) {
                        p.lock()
                            .map_err(|_| anyhow::anyhow!("poisoned"))?
                            .commits
                            .insert(seq, Instant::now());
                    }
                }
            }
            for (i, s) in sessions {
                close_session(s, EndReason::JitEnded)?;
                if let Some(p) = probes.get(i) {
                    p.lock().map_err(|_| anyhow::anyhow!("poisoned"))?.closed =
                        Some(Instant::now());
                }
            }
            Ok(())
        }));
    }

    // Poll the probes and the leader until every session is complete (or a bound passes).
    let mut seen: Vec<BTreeMap<u64, Instant>> = vec![BTreeMap::new(); probes.len()];
    let mut complete: Vec<Option<Instant>> = vec![None; probes.len()];
    let mut passes = Vec::new();
    let mut last_metrics = Instant::now() - Duration::from_secs(1);
    let mut writers_done_at = None;
    let mut all_complete_after = None;
    let bound = Duration::from_secs(args.seconds + 180);
    loop {
        for (k, p) in probes.iter().enumerate() {
            let Some(id) = p.lock().ok().and_then(|p| p.session) else {
                continue;
            };
            if complete[k].is_some() {
                continue;
            }
            let Ok(r) = http::request(
                reader,
                "GET",
                &format!("/api/sessions/{id}"),
                &[("Cookie", cookie.as_str())],
                b"",
            ) else {
                continue;
            };
            if r.status != 200 {
                continue;
            }
            let Ok(d) = r.json() else { continue };
            let shown = d["chunks"].as_array().map_or(0, Vec::len) as u64;
            let now = Instant::now();
            for seq in 0..shown {
                seen[k].entry(seq).or_insert(now);
            }
            if d["session"]["status"] == "complete" {
                complete[k] = Some(now);
            }
        }
        if last_metrics.elapsed() >= Duration::from_secs(1) {
            last_metrics = Instant::now();
            if let Some((open, pass, _)) = pass_figures(leader) {
                passes.push((open, pass));
            }
        }
        if writers_done_at.is_none() && handles.iter().all(std::thread::JoinHandle::is_finished) {
            writers_done_at = Some(Instant::now());
        }
        if let Some(done) = writers_done_at {
            let counts: serde_json::Value = http::request(
                reader,
                "GET",
                "/api/status",
                &[("Cookie", cookie.as_str())],
                b"",
            )
            .ok()
            .and_then(|r| r.json().ok())
            .unwrap_or_default();
            let n_complete = counts["sessions"]["complete"].as_u64().unwrap_or(0);
            if n_complete as usize >= n && complete.iter().all(Option::is_some) {
                all_complete_after = Some(done.elapsed().as_secs_f64());
                break;
            }
            if done.elapsed() > Duration::from_secs(60) && started.elapsed() > bound {
                println!(
                    "  only {n_complete} of {n} sessions complete {:.0} s after the last close",
                    done.elapsed().as_secs_f64()
                );
                break;
            }
        }
        std::thread::sleep(Duration::from_millis(250));
    }
    for h in handles {
        h.join()
            .map_err(|_| anyhow::anyhow!("a writer thread panicked"))??;
    }
    stop.cancel();
    for u in uploaders {
        let _ = rt.block_on(u);
    }
    let writers_behind = behind.lock().map(|b| *b).unwrap_or_default();
    if writers_behind > Duration::from_millis(500) {
        println!(
            "  note: the writers fell up to {:.1} s behind real time (this machine's cores are shared)",
            writers_behind.as_secs_f64()
        );
    }
    let mut live = Vec::new();
    let mut to_playable = Vec::new();
    for (k, p) in probes.iter().enumerate() {
        let p = p.lock().map_err(|_| anyhow::anyhow!("poisoned"))?;
        for (seq, at) in &p.commits {
            if let Some(shown) = seen[k].get(seq) {
                live.push(shown.saturating_duration_since(*at).as_secs_f64());
            }
        }
        if let (Some(c), Some(done)) = (p.closed, complete[k]) {
            to_playable.push(done.saturating_duration_since(c).as_secs_f64());
        }
    }
    drop(players);
    let s = Step {
        endpoints: n,
        live,
        to_playable,
        passes,
        all_complete_after,
    };
    println!(
        "  live delay p50 {} s, p99 {} s; time to playable p50 {} s, p99 {} s; all {} complete {} s after the last close",
        fmt(q(&s.live, 0.5)),
        fmt(q(&s.live, 0.99)),
        fmt(q(&s.to_playable, 0.5)),
        fmt(q(&s.to_playable, 0.99)),
        n,
        fmt(s.all_complete_after)
    );
    Ok(s)
}
