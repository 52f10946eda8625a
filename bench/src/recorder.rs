//! `recorder`: what recording costs and how good it looks, against the ffmpeg CLI on the same
//! screen.
//!
//! Every run gets a fresh 1920x1080 Xvfb. The *workload* is a scripted admin session driven
//! through tmux in an xterm (typing at 8 keys/s, scrolling output, `top`, `less` paging, `vi`
//! with typing, a second window dragged across the screen, then idle), about 70 s. The same
//! script runs four times:
//!
//! - A: the release `jitrec-recorder run` alone (default settings: 5 fps, CRF 28, keyframes
//!   every 10 s, preset veryfast, tune zerolatency; events on), JIT started and stopped over its
//!   control socket. Measured: CPU seconds (user + sys from `/proc/<pid>/stat`, every thread) of
//!   the recorder and of the X server over the workload, and bytes in the spool.
//! - B: `ffmpeg -f x11grab` + libx264 alone, with the same fps, CRF, keyframe interval, preset
//!   and tune. Same figures (bytes of its MP4).
//! - C: jitrec-recorder again, beside a lossless ffmpeg capture of the screen at 25 fps
//!   (libx264rgb, QP 0, its own process). SSIM of jitrec's export against the reference.
//! - D: ffmpeg as in B, beside the same kind of lossless reference; SSIM likewise.
//!
//! SSIM is ffmpeg's `ssim` filter on YUV 4:2:0 (its `All` figure), each recorded frame against
//! the latest reference frame at or before it (up to 40 ms older: the same for both, and it
//! lowers both on fast-changing content such as scrolling). Timelines are aligned on the wall
//! clock (x11grab stamps frames with it; jitrec's media time 0 is the session's `started_at`),
//! then each side gets its best constant shift within +-100 ms, so neither is punished for a
//! capture latency. Both runs record the same script but not the same pixels (`top` shows
//! other numbers), so small differences are noise.
//!
//! The *idle* runs record a screen with three static windows and a clock ticking every second
//! (a small xterm printing the time, as a panel clock would) for `--idle-seconds` each, jitrec
//! then ffmpeg.
//!
//! Beside the figures: where jitrec's time went, per stage (the recorder's own counters,
//! `jitrec_recorder::cost`, logged at the end of each session and read from its log), per
//! thread (`/proc/<pid>/task/*/schedstat`, read at JIT start and just before JIT stop, so it
//! shows the event sources and housekeeping the stages do not count), and its peak resident
//! memory (`VmHWM`) over the workload run.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use clap::Args;
use jitrec_bucket::{BucketReader, DirBucket};
use jitrec_format::{ObjectKey, SessionHeader, SessionId};
use jitrec_recorder::control::{self, Request};
use jitrec_recorder::encode::EncoderConfig;
use jitrec_tests::xvfb::{Xvfb, find_window};
use x11rb::connection::Connection;
use x11rb::protocol::xproto::{ConfigureWindowAux, ConnectionExt as _};

use crate::summary::Line;

const WIDTH: u32 = 1920;
const HEIGHT: u32 = 1080;
/// Frame rate of the lossless reference beside jitrec (run C).
const REFERENCE_FPS: u32 = 25;

#[derive(Args, Clone)]
pub(crate) struct RecorderArgs {
    /// Seconds of each idle recording (0: no idle runs).
    #[arg(long, default_value_t = 60)]
    pub(crate) idle_seconds: u64,
    /// Skip the scripted workload (idle runs only).
    #[arg(long)]
    pub(crate) no_workload: bool,
    /// Record video only (no process and window events), to see what the events cost.
    #[arg(long)]
    pub(crate) no_events: bool,
}

/// Clock ticks per second of `/proc/<pid>/stat` (USER_HZ).
const USER_HZ: f64 = 100.0;

/// user + sys CPU seconds of `pid` so far (all its threads).
fn cpu_secs(pid: u32) -> Result<f64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .with_context(|| format!("reading /proc/{pid}/stat"))?;
    let rest = stat
        .rsplit_once(')')
        .map(|(_, r)| r)
        .context("malformed stat")?;
    let f: Vec<&str> = rest.split_whitespace().collect();
    // Fields 14 and 15 (utime, stime) are 11 and 12 after the name.
    let ticks: u64 = f[11].parse::<u64>()? + f[12].parse::<u64>()?;
    Ok(ticks as f64 / USER_HZ)
}

/// CPU milliseconds each thread of `pid` has used so far, summed by thread name: the first
/// field of `/proc/<pid>/task/<tid>/schedstat` (nanoseconds on a CPU, not rounded to clock
/// ticks as `stat` is) and the thread's `comm`. A thread that ends in between is not seen.
fn thread_cpu_ms(pid: u32) -> BTreeMap<String, f64> {
    let mut by_name = BTreeMap::new();
    let Ok(tasks) = std::fs::read_dir(format!("/proc/{pid}/task")) else {
        return by_name;
    };
    for task in tasks.flatten() {
        let dir = task.path();
        let (Ok(name), Ok(stat)) = (
            std::fs::read_to_string(dir.join("comm")),
            std::fs::read_to_string(dir.join("schedstat")),
        ) else {
            continue;
        };
        let Some(ns) = stat
            .split_whitespace()
            .next()
            .and_then(|v| v.parse::<u64>().ok())
        else {
            continue;
        };
        *by_name.entry(name.trim().to_owned()).or_insert(0.0) += ns as f64 / 1e6;
    }
    by_name
}

/// What each thread name used between two [`thread_cpu_ms`] readings, most first.
fn thread_cpu_between(
    before: &BTreeMap<String, f64>,
    after: BTreeMap<String, f64>,
) -> Vec<(String, f64)> {
    let mut used: Vec<(String, f64)> = after
        .into_iter()
        .map(|(name, ms)| {
            let was = before.get(&name).copied().unwrap_or(0.0);
            (name, (ms - was).max(0.0))
        })
        .collect();
    used.sort_by(|a, b| b.1.total_cmp(&a.1));
    used
}

/// Peak resident memory (`VmHWM`) of `pid`, in kB.
fn peak_rss_kb(pid: u32) -> Option<u64> {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .ok()?
        .lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))?
        .trim()
        .trim_end_matches("kB")
        .trim()
        .parse()
        .ok()
}

fn dir_bytes(dir: &Path) -> u64 {
    let mut total = 0;
    let mut stack = vec![dir.to_owned()];
    while let Some(d) = stack.pop() {
        let Ok(rd) = std::fs::read_dir(&d) else {
            continue;
        };
        for e in rd.flatten() {
            match e.metadata() {
                Ok(m) if m.is_dir() => stack.push(e.path()),
                Ok(m) => total += m.len(),
                Err(_) => {}
            }
        }
    }
    total
}

/// A clock ticking every second in a small xterm at the top right, as a panel clock would.
fn clock(display: &str) -> Result<Killed> {
    Ok(Killed(
        Command::new("xterm")
            .args(["-display", display, "-fa", "Monospace", "-fs", "11"])
            .args([
                "-geometry",
                "10x1+1800+0",
                "-T",
                "jitrec-bench-clock",
                "-e",
                "bash",
                "-c",
            ])
            // Builtins only (`printf %()T`, `read -t` on the idle terminal as the second's
            // wait), so the clock starts no process a second, as a panel's clock does not:
            // what is measured is the screen, not process events.
            .arg("while :; do printf '\\r%(%T)T' -1; read -rs -t 1 -n 1; done")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .context("starting xterm (Debian package xterm)")?,
    ))
}

/// Static windows, so the screen is not a uniform colour (kept while the connections live).
fn furnish(display: &str) -> Result<Vec<x11rb::rust_connection::RustConnection>> {
    [
        ((40, 40, 900, 600), 0x00f0_f0f0),
        ((700, 300, 800, 500), 0x0020_3040),
        ((200, 700, 1200, 300), 0x0080_a0c0),
    ]
    .into_iter()
    .map(|(at, px)| jitrec_tests::xvfb::map_window(display, at, px).map(|(conn, _)| conn))
    .collect()
}

fn wait_for(what: &str, mut ok: impl FnMut() -> bool) -> Result<()> {
    let deadline = Instant::now() + Duration::from_secs(60);
    while !ok() {
        if Instant::now() > deadline {
            bail!("{what} did not happen within 60 s");
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    Ok(())
}

/// A child process killed when dropped.
struct Killed(Child);

impl Drop for Killed {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

impl Killed {
    /// Asks ffmpeg to finish (`q` on its standard input: it writes its files' trailers and exits
    /// 0; a signal would make it exit 255) and waits; fails unless it exits 0.
    fn finish(mut self) -> Result<()> {
        use std::io::Write;
        let mut stdin = self.0.stdin.take().context("ffmpeg's stdin is piped")?;
        stdin.write_all(b"q")?;
        drop(stdin);
        let status = self.0.wait()?;
        if !status.success() {
            bail!("ffmpeg failed: {status}");
        }
        Ok(())
    }
}

/// CPU of one recorder and of the X server over a measured interval, and what it stored.
struct Measured {
    own: f64,
    x: f64,
    bytes: u64,
    secs: f64,
    /// jitrec only: CPU milliseconds per stage over the session (`<stage>_ms` of its cost log).
    stages: Vec<(String, f64)>,
    /// jitrec only: CPU milliseconds per thread name over the session, most first.
    threads: Vec<(String, f64)>,
    /// jitrec only: peak resident memory of the process so far, in kB.
    peak_rss_kb: Option<u64>,
    /// Idle runs: CPU seconds (process + X server) per minute after the run settled.
    steady: Option<f64>,
}

impl Measured {
    fn per_min(&self, v: f64) -> f64 {
        v * 60.0 / self.secs
    }

    /// CPU seconds (recorder + X server) per recorded minute.
    fn cpu(&self) -> f64 {
        self.per_min(self.own + self.x)
    }

    fn mb_per_hour(&self) -> f64 {
        self.bytes as f64 / 1e6 * 3600.0 / self.secs
    }
}

/// Runs `during` and returns the CPU `pids` used meanwhile, and how long it took.
fn cpu_during(pids: [u32; 2], during: impl FnOnce() -> Result<()>) -> Result<(f64, f64, f64)> {
    let (a0, b0, t0) = (cpu_secs(pids[0])?, cpu_secs(pids[1])?, Instant::now());
    during()?;
    let (a1, b1) = (cpu_secs(pids[0])?, cpu_secs(pids[1])?);
    Ok((a1 - a0, b1 - b0, t0.elapsed().as_secs_f64()))
}

/// A running `jitrec-recorder run`.
struct Jitrec {
    child: Killed,
    socket: PathBuf,
    spool: PathBuf,
    /// The recorder's log (its standard error).
    log: PathBuf,
}

impl Jitrec {
    fn start(x: &Xvfb, events: bool, tmp: &Path) -> Result<Self> {
        let exe: PathBuf = std::env::current_exe()?
            .parent()
            .context("bench binary directory")?
            .join("jitrec-recorder");
        let spool = tmp.join("spool");
        let socket = tmp.join("recorder.sock");
        let config = tmp.join("recorder.toml");
        std::fs::write(
            &config,
            format!(
                "spool = {spool:?}\nmachine_id_file = \"/etc/machine-id\"\n[control]\nsocket = {socket:?}\n[capture]\ndisplay = {:?}\n[events]\nprocesses = {events}\nwindows = {events}\n",
                x.display
            ),
        )?;
        let log = tmp.join("recorder.log");
        let child = Killed(
            Command::new(&exe)
                .args(["run", "--config"])
                .arg(&config)
                .env("RUST_LOG", "warn,jitrec_recorder::cost=info")
                .stdin(Stdio::null())
                .stderr(std::fs::File::create(&log)?)
                .spawn()
                .with_context(|| format!("starting {}", exe.display()))?,
        );
        wait_for("the control socket", || socket.exists())?;
        Ok(Self {
            child,
            socket,
            spool,
            log,
        })
    }

    fn jit_start(&self) -> Result<SessionId> {
        let r = control::request(
            &self.socket,
            &Request::Start {
                user: "bench".into(),
                authorized_by: None,
                reason: None,
            },
        )?;
        if !r.ok {
            bail!("jit start: {}", r.message);
        }
        r.session.context("jit start names the session")
    }

    fn jit_stop(&self) -> Result<()> {
        let r = control::request(&self.socket, &Request::Stop)?;
        if !r.ok {
            bail!("jit stop: {}", r.message);
        }
        Ok(())
    }

    /// Records `during`; returns the figures and the session.
    fn record(
        &self,
        x: &Xvfb,
        during: impl FnOnce() -> Result<()>,
    ) -> Result<(Measured, SessionId)> {
        let id = self.jit_start()?;
        let before = thread_cpu_ms(self.child.0.id());
        let (own, xs, secs) = cpu_during([self.child.0.id(), x.pid()], during)?;
        // Read before the stop, while the session's threads are still there.
        let threads = thread_cpu_between(&before, thread_cpu_ms(self.child.0.id()));
        self.jit_stop()?;
        Ok((
            Measured {
                own,
                x: xs,
                bytes: dir_bytes(&self.spool),
                secs,
                stages: self.stages(id)?,
                threads,
                peak_rss_kb: peak_rss_kb(self.child.0.id()),
                steady: None,
            },
            id,
        ))
    }

    /// The session's cost line from the recorder's log: `(stage, CPU ms)`.
    fn stages(&self, id: SessionId) -> Result<Vec<(String, f64)>> {
        let log = std::fs::read_to_string(&self.log)?;
        let line = log
            .lines()
            .rev()
            .find(|l| l.contains("where the recording's time went") && l.contains(&id.to_string()))
            .with_context(|| format!("no cost line for session {id} in {}", self.log.display()))?;
        // Stage times (`<stage>_ms=`) and picture counts (`<coder>_pictures=`, `<coder>_bytes=`).
        Ok(line
            .split_whitespace()
            .filter_map(|w| {
                let (k, v) = w.split_once('=')?;
                let counted = k.ends_with("_pictures") || k.ends_with("_bytes");
                Some((k.strip_suffix("_ms").or(counted.then_some(k))?, v))
            })
            .filter_map(|(k, v)| Some((k.to_owned(), v.parse().ok()?)))
            .collect())
    }

    /// Ships the spool into a local bucket and exports the session to one MP4; returns the
    /// file and the wall-clock time (Unix seconds) of its time 0.
    fn export(&self, id: SessionId, tmp: &Path) -> Result<(PathBuf, f64)> {
        let bucket = tmp.join("bucket");
        tokio::runtime::Handle::current().block_on(jitrec_tests::drain(
            jitrec_bucket::DirBucket::new(&bucket),
            jitrec_uploader::UploaderConfig::new(&self.spool),
            Duration::from_secs(600),
        ))?;
        let src: Arc<dyn BucketReader> = Arc::new(DirBucket::new(&bucket));
        let at = jitrec_player::locate::find(src.as_ref(), id)?
            .context("the session is in the bucket")?;
        let header = src
            .get(
                &ObjectKey::SessionHeader(at),
                jitrec_format::MAX_DOCUMENT_BYTES as u64,
            )?
            .context("the session header is in the bucket")?;
        let started = SessionHeader::from_bytes(&header)?.started_at;
        let out = tmp.join("jitrec.mp4");
        let exported = jitrec_player::export::export(
            src.as_ref(),
            at,
            &out,
            &jitrec_player::export::ExportOptions::default(),
        )?;
        let part = exported.parts.first().context("the export wrote a file")?;
        if exported.parts.len() != 1 {
            bail!("the screen size changed during the run");
        }
        let zero = started.timestamp_micros() as f64 / 1e6 + part.starts_at_us as f64 / 1e6;
        Ok((part.path.clone(), zero))
    }
}

/// What one ffmpeg capture writes.
enum Output {
    /// libx264 with jitrec's encoder settings.
    Crf(PathBuf),
    /// libx264rgb at QP 0: the lossless reference.
    Lossless(PathBuf),
}

/// Starts `ffmpeg -f x11grab` at `fps` writing `outputs`; frames keep x11grab's wall-clock
/// stamps minus `base` (Unix seconds), so separate captures share one timeline.
fn ffmpeg(x: &Xvfb, fps: u32, outputs: &[Output], base: i64) -> Result<Killed> {
    let e = EncoderConfig::default();
    let gop = (u64::from(e.nominal_fps) * e.keyframe_interval.as_secs()).to_string();
    let mut cmd = Command::new("ffmpeg");
    cmd.args(["-loglevel", "error", "-f", "x11grab"])
        .args(["-framerate", &fps.to_string()])
        .args([
            "-video_size",
            &format!("{WIDTH}x{HEIGHT}"),
            "-draw_mouse",
            "1",
        ])
        .args(["-i", &x.display])
        .arg("-copyts");
    for o in outputs {
        // An output option: every output needs its own.
        cmd.args(["-output_ts_offset", &format!("-{base}")]);
        match o {
            Output::Crf(path) => cmd
                .args(["-map", "0:v", "-c:v", "libx264", "-preset", &e.preset])
                .args(["-tune", "zerolatency", "-crf", &e.crf.to_string()])
                .args(["-g", &gop, "-bf", "0", "-pix_fmt", "yuv420p", "-y"])
                .arg(path),
            Output::Lossless(path) => cmd
                .args(["-map", "0:v", "-c:v", "libx264rgb", "-preset", "ultrafast"])
                .args(["-qp", "0", "-y"])
                .arg(path),
        };
    }
    let child = Killed(
        cmd.stdin(Stdio::piped())
            .spawn()
            .context("starting ffmpeg (Debian package ffmpeg)")?,
    );
    // Recording once an output has its first bytes: ffmpeg opens the grabber and every encoder
    // before writing any (a small output can sit in the muxer's buffer for a long time).
    let paths: Vec<&PathBuf> = outputs
        .iter()
        .map(|o| match o {
            Output::Crf(p) | Output::Lossless(p) => p,
        })
        .collect();
    wait_for("ffmpeg's first output", || {
        paths
            .iter()
            .any(|p| std::fs::metadata(p).is_ok_and(|m| m.len() > 0))
    })?;
    Ok(child)
}

/// ffmpeg's SSIM (`All`, YUV 4:2:0) of `encoded` against `reference` over `[from, to]` seconds
/// of the shared timeline; `encoded`'s time 0 is at `offset` on it.
fn ssim(encoded: &Path, offset: f64, reference: &Path, from: f64, to: f64) -> Result<f64> {
    let graph = format!(
        "[0:v]trim=start={from}:end={to},format=yuv420p[a];[1:v]trim=start={from}:end={to},format=yuv420p[b];[a][b]ssim"
    );
    let out = Command::new("ffmpeg")
        .args(["-nostdin", "-hide_banner", "-copyts"])
        .args(["-itsoffset", &format!("{offset:.6}"), "-i"])
        .arg(encoded)
        .arg("-i")
        .arg(reference)
        .args(["-lavfi", &graph, "-f", "null", "-"])
        .output()
        .context("running ffmpeg's ssim filter")?;
    let text = String::from_utf8_lossy(&out.stderr);
    let all = text
        .lines()
        .rev()
        .find_map(|l| l.split("All:").nth(1))
        .and_then(|r| r.split_whitespace().next())
        .and_then(|v| v.parse::<f64>().ok());
    match all {
        Some(v) if out.status.success() => Ok(v),
        _ => bail!("no SSIM from ffmpeg ({}):\n{text}", out.status),
    }
}

/// [`ssim`] at the best of the offsets `offset` - 100 ms ..= `offset` + 100 ms in 20 ms steps:
/// clocks and capture latencies differ a little between capturers, and a comparison should not
/// punish either for a constant shift. Returns the SSIM and the shift in seconds.
fn best_ssim(
    encoded: &Path,
    offset: f64,
    reference: &Path,
    from: f64,
    to: f64,
) -> Result<(f64, f64)> {
    let mut best = (f64::MIN, 0.0);
    for step in -5..=5 {
        let shift = f64::from(step) * 0.02;
        let v = ssim(encoded, offset + shift, reference, from, to)?;
        if v > best.0 {
            best = (v, shift);
        }
    }
    Ok(best)
}

/// The scripted admin session: two xterms, one running a tmux session the script types into,
/// the other dragged around. Set up before recording starts; [`Desk::play`] runs the script.
struct Desk {
    tmux: PathBuf,
    _xterms: Vec<Killed>,
    conn: x11rb::rust_connection::RustConnection,
    mover: u32,
    scratch: PathBuf,
}

impl Desk {
    fn set_up(display: &str, tmp: &Path) -> Result<Self> {
        let tmux = tmp.join("tmux.sock");
        let scratch = tmp.join("notes.txt");
        let xterm = |args: &[&str]| -> Result<Killed> {
            Ok(Killed(
                Command::new("xterm")
                    .args(["-display", display, "-fa", "Monospace", "-fs", "11"])
                    .args(args)
                    .env("TERM", "xterm")
                    .stdin(Stdio::null())
                    .stdout(Stdio::null())
                    .stderr(Stdio::null())
                    .spawn()
                    .context("starting xterm (Debian package xterm)")?,
            ))
        };
        let tmux_cmd = format!(
            "tmux -S {} -f /dev/null new-session -s bench \"env PS1='root@ws:~# ' bash --norc --noprofile\"",
            tmux.display()
        );
        let main = xterm(&[
            "-geometry",
            "150x45+10+10",
            "-T",
            "jitrec-bench-main",
            "-e",
            "sh",
            "-c",
            &tmux_cmd,
        ])?;
        let side = xterm(&[
            "-geometry",
            "70x12+1100+650",
            "-T",
            "jitrec-bench-move",
            "-e",
            "sh",
            "-c",
            "cat /etc/os-release; exec sleep 100000",
        ])?;
        let (conn, _) = x11rb::connect(Some(display))?;
        let mover = find_window(display, "jitrec-bench-move", Duration::from_secs(60))?;
        wait_for("the tmux session", || {
            Command::new("tmux")
                .arg("-S")
                .arg(&tmux)
                .args(["has-session", "-t", "bench"])
                .stderr(Stdio::null())
                .status()
                .is_ok_and(|s| s.success())
        })?;
        let desk = Self {
            tmux,
            _xterms: vec![main, side],
            conn,
            mover,
            scratch,
        };
        desk.keys(&["clear", "Enter"])?;
        // Let the shell and both terminals settle before anything is measured.
        std::thread::sleep(Duration::from_secs(2));
        Ok(desk)
    }

    fn keys(&self, keys: &[&str]) -> Result<()> {
        let ok = Command::new("tmux")
            .arg("-S")
            .arg(&self.tmux)
            .args(["send-keys", "-t", "bench"])
            .args(keys)
            .status()?
            .success();
        if !ok {
            bail!("tmux send-keys {keys:?} failed");
        }
        Ok(())
    }

    /// Types `text` one key at a time, `per_second` keys a second.
    fn type_slowly(&self, text: &str, per_second: f64) -> Result<()> {
        let gap = Duration::from_secs_f64(1.0 / per_second);
        for c in text.chars() {
            // tmux reads an argument ending in ';' as a command separator.
            let key = if c == ';' {
                "\\;".to_owned()
            } else {
                c.to_string()
            };
            self.keys(&["-l", &key])?;
            std::thread::sleep(gap);
        }
        Ok(())
    }

    /// The script (about 70 s). Its sleeps are its pace, not synchronisation.
    fn play(&self) -> Result<()> {
        let s = Duration::from_secs;
        // Typing at a shell.
        self.type_slowly("cat /etc/os-release; ls -la /etc | head -40", 8.0)?;
        self.keys(&["Enter"])?;
        std::thread::sleep(s(2));
        self.type_slowly("df -h; free -m; uptime", 8.0)?;
        self.keys(&["Enter"])?;
        std::thread::sleep(s(2));
        // Output scrolling by at ~100 lines a second.
        self.keys(&[
            "find /usr/share/doc | head -800 | perl -pe 'select(undef, undef, undef, 0.01)'",
            "Enter",
        ])?;
        std::thread::sleep(s(9));
        // top, refreshing every second.
        self.keys(&["top -d 1", "Enter"])?;
        std::thread::sleep(s(10));
        self.keys(&["q"])?;
        // A pager, a page a second.
        self.keys(&["less /usr/share/common-licenses/GPL-3", "Enter"])?;
        for _ in 0..10 {
            std::thread::sleep(s(1));
            self.keys(&["Space"])?;
        }
        self.keys(&["q"])?;
        // An editor, typing.
        self.keys(&[&format!("vi {}", self.scratch.display()), "Enter"])?;
        std::thread::sleep(s(1));
        self.keys(&["i"])?;
        self.type_slowly(
            "Restarted the print spooler; driver 4.2 installed for HP-7;\nticket CHG-1042.",
            8.0,
        )?;
        self.keys(&["Escape", ":q!", "Enter"])?;
        // The side window dragged across the screen.
        for i in 0..25i32 {
            self.conn.configure_window(
                self.mover,
                &ConfigureWindowAux::new().x(1100 - i * 36).y(650 - i * 20),
            )?;
            self.conn.flush()?;
            std::thread::sleep(Duration::from_millis(200));
        }
        // Reading: nothing moves.
        std::thread::sleep(s(10));
        Ok(())
    }
}

/// With `JITREC_BENCH_KEEP=DIR`, copies `files` (a run's recording and its lossless reference)
/// into `DIR/<run>/` with a note of how they line up, to look at frame by frame.
fn keep(files: &[&Path], note: &str) -> Result<()> {
    let Some(dir) = std::env::var_os("JITREC_BENCH_KEEP") else {
        return Ok(());
    };
    let run = note.split_whitespace().next().unwrap_or("run");
    let dir = PathBuf::from(dir).join(run);
    std::fs::create_dir_all(&dir)?;
    for f in files {
        std::fs::copy(f, dir.join(f.file_name().context("a file name")?))?;
    }
    std::fs::write(dir.join("note.txt"), note)?;
    Ok(())
}

/// Seconds since the Unix epoch, now.
fn unix_now() -> f64 {
    chrono::Utc::now().timestamp_micros() as f64 / 1e6
}

/// Figures of the workload runs.
struct Workload {
    jitrec: Measured,
    ffmpeg: Measured,
    jitrec_ssim: f64,
    ffmpeg_ssim: f64,
}

fn workload(events: bool) -> Result<Workload> {
    let run = |name: &str| -> Result<(Xvfb, tempfile::TempDir, Desk)> {
        eprintln!("recorder: workload run {name}");
        let x = Xvfb::start(WIDTH, HEIGHT)?;
        let tmp = tempfile::tempdir()?;
        let desk = Desk::set_up(&x.display, tmp.path())?;
        Ok((x, tmp, desk))
    };

    // A: jitrec alone.
    let (x, tmp, desk) = run("A (jitrec-recorder)")?;
    let j = Jitrec::start(&x, events, tmp.path())?;
    let (jitrec, _) = j.record(&x, || desk.play())?;
    drop((j, desk, x, tmp));

    // B: ffmpeg alone.
    let (x, tmp, desk) = run("B (ffmpeg)")?;
    let out = tmp.path().join("ffmpeg.mp4");
    let base = chrono::Utc::now().timestamp();
    let f = ffmpeg(
        &x,
        EncoderConfig::default().nominal_fps,
        &[Output::Crf(out.clone())],
        base,
    )?;
    let (own, xs, secs) = cpu_during([f.0.id(), x.pid()], || desk.play())?;
    f.finish()?;
    let ffmpeg_cost = Measured {
        own,
        x: xs,
        bytes: std::fs::metadata(&out)?.len(),
        secs,
        stages: Vec::new(),
        threads: Vec::new(),
        peak_rss_kb: None,
        steady: None,
    };
    drop((desk, x, tmp));

    // C: jitrec beside the lossless reference.
    let (x, tmp, desk) = run("C (jitrec-recorder + lossless reference)")?;
    let base = chrono::Utc::now().timestamp();
    let reference = tmp.path().join("reference.mkv");
    let lossless = ffmpeg(
        &x,
        REFERENCE_FPS,
        &[Output::Lossless(reference.clone())],
        base,
    )?;
    let j = Jitrec::start(&x, events, tmp.path())?;
    let mut span = (0.0, 0.0);
    let (_, id) = j.record(&x, || {
        span.0 = unix_now() - base as f64;
        desk.play()?;
        span.1 = unix_now() - base as f64;
        Ok(())
    })?;
    lossless.finish()?;
    let (mp4, zero) = j.export(id, tmp.path())?;
    let (jitrec_ssim, shift) = best_ssim(&mp4, zero - base as f64, &reference, span.0, span.1)?;
    keep(
        &[&mp4, &reference],
        &format!(
            "C offset {} from {} to {}",
            zero - base as f64 + shift,
            span.0,
            span.1
        ),
    )?;
    eprintln!(
        "recorder: jitrec SSIM {jitrec_ssim:.4} (best shift {:+.0} ms)",
        shift * 1e3
    );
    drop((j, desk, x, tmp));

    // D: ffmpeg as in B, beside the same lossless reference as in C.
    let (x, tmp, desk) = run("D (ffmpeg + lossless reference)")?;
    let base = chrono::Utc::now().timestamp();
    let (enc, reference) = (
        tmp.path().join("ffmpeg.mp4"),
        tmp.path().join("reference.mkv"),
    );
    let lossless = ffmpeg(
        &x,
        REFERENCE_FPS,
        &[Output::Lossless(reference.clone())],
        base,
    )?;
    let f = ffmpeg(
        &x,
        EncoderConfig::default().nominal_fps,
        &[Output::Crf(enc.clone())],
        base,
    )?;
    let from = unix_now() - base as f64;
    desk.play()?;
    let to = unix_now() - base as f64;
    f.finish()?;
    lossless.finish()?;
    let (ffmpeg_ssim, shift) = best_ssim(&enc, 0.0, &reference, from, to)?;
    keep(
        &[&enc, &reference],
        &format!("D offset {shift} from {from} to {to}"),
    )?;
    eprintln!(
        "recorder: ffmpeg SSIM {ffmpeg_ssim:.4} (best shift {:+.0} ms)",
        shift * 1e3
    );

    Ok(Workload {
        jitrec,
        ffmpeg: ffmpeg_cost,
        jitrec_ssim,
        ffmpeg_ssim,
    })
}

/// The idle runs: jitrec's, ffmpeg's, and the X server's CPU per minute with nothing
/// recording ([`x_alone`]).
fn idle(events: bool, seconds: u64) -> Result<(Measured, Measured, f64)> {
    eprintln!("recorder: idle runs, {seconds} s each");
    let x = Xvfb::start(WIDTH, HEIGHT)?;
    let _windows = furnish(&x.display)?;
    let _clock = clock(&x.display)?;
    find_window(&x.display, "jitrec-bench-clock", Duration::from_secs(60))?;
    // Let the clock's terminal settle before anything is measured.
    std::thread::sleep(Duration::from_secs(2));
    let x_alone = x_alone(&x, Duration::from_secs((seconds / 2).clamp(1, 30)));
    let tmp = tempfile::tempdir()?;
    let j = Jitrec::start(&x, events, tmp.path())?;
    let pids = [j.child.0.id(), x.pid()];
    let mut steady = 0.0;
    let (mut ours, _) = j.record(&x, || {
        steady = settled(pids, seconds)?;
        Ok(())
    })?;
    ours.steady = Some(steady);
    drop(j);
    let out = tmp.path().join("ffmpeg.mp4");
    let f = ffmpeg(
        &x,
        EncoderConfig::default().nominal_fps,
        &[Output::Crf(out.clone())],
        chrono::Utc::now().timestamp(),
    )?;
    let pids = [f.0.id(), x.pid()];
    let mut steady = 0.0;
    let (own, xs, secs) = cpu_during(pids, || {
        steady = settled(pids, seconds)?;
        Ok(())
    })?;
    f.finish()?;
    let reference = Measured {
        own,
        x: xs,
        bytes: std::fs::metadata(&out)?.len(),
        secs,
        stages: Vec::new(),
        threads: Vec::new(),
        peak_rss_kb: None,
        steady: Some(steady),
    };
    Ok((ours, reference, x_alone))
}

/// CPU seconds per minute the X server uses over `during` with nothing recording it: what the
/// clock's drawing costs by itself, the floor under both recorders' idle figures (which count
/// the X server). From `schedstat` (nanoseconds; `stat`'s 10 ms ticks are too coarse for the
/// few milliseconds a second this is).
fn x_alone(x: &Xvfb, during: Duration) -> f64 {
    let ms = |m: BTreeMap<String, f64>| m.values().sum::<f64>();
    let (before, t) = (ms(thread_cpu_ms(x.pid())), Instant::now());
    std::thread::sleep(during);
    (ms(thread_cpu_ms(x.pid())) - before) / 1000.0 * 60.0 / t.elapsed().as_secs_f64()
}

/// How much of an idle run of `seconds` [`settled`] leaves out: the session's set-up, which
/// includes the recording notice (on by default, taken down after
/// [`jitrec_recorder::notice::DEFAULT_DISPLAY_SECONDS`]: a change of the screen that the
/// session makes itself, once), and 5 s after it; at most half the run.
fn settle_secs(seconds: u64) -> u64 {
    (u64::from(jitrec_recorder::notice::DEFAULT_DISPLAY_SECONDS) + 5).min(seconds / 2)
}

/// Waits `seconds` and returns the CPU seconds per minute `pids` used after the first
/// [`settle_secs`]: the steady state of an idle recording, without what starting it cost (a
/// session's set-up: its event sources' first scans, the change ledger's snapshot).
fn settled(pids: [u32; 2], seconds: u64) -> Result<f64> {
    let settle = Duration::from_secs(settle_secs(seconds));
    std::thread::sleep(settle);
    let (a, b, t) = (cpu_secs(pids[0])?, cpu_secs(pids[1])?, Instant::now());
    std::thread::sleep(Duration::from_secs(seconds).saturating_sub(settle));
    let used = cpu_secs(pids[0])? - a + cpu_secs(pids[1])? - b;
    Ok(used * 60.0 / t.elapsed().as_secs_f64())
}

fn row(name: &str, m: &Measured, ssim: Option<f64>) {
    println!(
        "  {name:<28} {:>10.2} {:>10.2} {:>10.2} {:>10.1} {:>8}",
        m.cpu(),
        m.per_min(m.own),
        m.per_min(m.x),
        m.mb_per_hour(),
        ssim.map_or("-".into(), |s| format!("{s:.4}"))
    );
}

fn header() {
    println!(
        "  {:<28} {:>10} {:>10} {:>10} {:>10} {:>8}",
        "", "CPU-s/min", "of it: own", "of it: X", "MB/hour", "SSIM"
    );
}

/// Where jitrec's time went: CPU ms per recorded minute for each stage the recorder counts,
/// with what the process spent besides its capture and encoding threads (event sources, the
/// control socket, start-up) and the X server's share.
fn breakdown(m: &Measured) {
    let per_min = |ms: f64| ms * 60.0 / m.secs;
    let get = |k: &str| {
        m.stages
            .iter()
            .find(|(n, _)| n == k)
            .map_or(0.0, |(_, v)| *v)
    };
    let capture = get("capture_thread");
    let encode = get("encode_thread");
    let captured = get("damage") + get("grab") + get("cursor");
    let encoded = get("convert") + get("encode") + get("mux") + get("spool") + get("events");
    let (x264, by_hand) = (get("x264_pictures"), get("by_hand_pictures"));
    println!(
        "  pictures: {x264:.0} by libx264 ({:.0} bytes and {:.2} ms of the encode stage each), {by_hand:.0} by hand ({:.0} bytes each)",
        get("x264_bytes") / x264.max(1.0),
        get("encode") / x264.max(1.0),
        get("by_hand_bytes") / by_hand.max(1.0),
    );
    println!("  where jitrec's time went (CPU ms per recorded minute):");
    for (name, ms) in [
        ("capture: damage bookkeeping", get("damage")),
        ("capture: pixels (copy + hand-over)", get("grab")),
        ("capture: cursor", get("cursor")),
        ("capture: rest of the thread", (capture - captured).max(0.0)),
        ("colour conversion", get("convert")),
        ("encode (libx264, hand-made pictures)", get("encode")),
        ("mux (fMP4)", get("mux")),
        ("spool (commits)", get("spool")),
        ("events (intake)", get("events")),
        ("encoding thread: rest", (encode - encoded).max(0.0)),
        (
            "process: the rest (sources, housekeeping)",
            (m.own * 1e3 - capture - encode).max(0.0),
        ),
        ("X server", m.x * 1e3),
    ] {
        println!("    {name:<38} {:>9.1}", per_min(ms));
    }
    println!(
        "  by thread of the recorder (CPU ms per recorded minute; threads that ended before the stop not seen):"
    );
    for (name, ms) in m.threads.iter().filter(|(_, ms)| *ms > 0.0) {
        println!("    {name:<38} {:>9.1}", per_min(*ms));
    }
}

pub(crate) fn run(args: &RecorderArgs) -> Result<Vec<Line>> {
    let mut lines = Vec::new();
    let events = !args.no_events;
    if !args.no_workload {
        let w = workload(events)?;
        println!(
            "recorder, scripted admin workload on 1920x1080 Xvfb (~{:.0} s; 5 fps, CRF 28, keyframe every 10 s, veryfast, zerolatency):",
            w.jitrec.secs
        );
        header();
        row("ffmpeg x11grab + libx264", &w.ffmpeg, Some(w.ffmpeg_ssim));
        row("jitrec-recorder", &w.jitrec, Some(w.jitrec_ssim));
        let cpu = w.jitrec.cpu() / w.ffmpeg.cpu();
        let bytes = w.jitrec.mb_per_hour() / w.ffmpeg.mb_per_hour();
        let rss_mb = w.jitrec.peak_rss_kb.map_or(f64::NAN, |k| k as f64 / 1024.0);
        let met = |ok: bool| if ok { "met" } else { "NOT met" };
        println!(
            "  jitrec / ffmpeg: CPU {cpu:.2}x (goal <= 0.25x: {}), bytes {bytes:.2}x (goal <= 0.5x: {}), SSIM {:.4} vs {:.4} (goal >=: {}), peak resident memory {rss_mb:.0} MB (goal <= 100: {})",
            met(cpu <= 0.25),
            met(bytes <= 0.5),
            w.jitrec_ssim,
            w.ffmpeg_ssim,
            met(w.jitrec_ssim >= w.ffmpeg_ssim),
            met(rss_mb <= 100.0),
        );
        breakdown(&w.jitrec);
        lines.push(Line::new(
            "recorder, workload",
            "CPU-s per recorded minute (process + X)",
            format!("{:.2}", w.jitrec.cpu()),
            format!("{:.2}", w.ffmpeg.cpu()),
            Line::goal(cpu, cpu <= 0.25, "<= 0.25x"),
        ));
        lines.push(Line::new(
            "recorder, workload",
            "MB per hour",
            format!("{:.1}", w.jitrec.mb_per_hour()),
            format!("{:.1}", w.ffmpeg.mb_per_hour()),
            Line::goal(bytes, bytes <= 0.5, "<= 0.5x"),
        ));
        lines.push(Line::new(
            "recorder, workload",
            "peak resident memory, MB",
            format!("{rss_mb:.0}"),
            String::new(),
            if rss_mb <= 100.0 {
                "met (<= 100 MB)".to_owned()
            } else {
                "NOT met (<= 100 MB)".to_owned()
            },
        ));
        lines.push(Line::new(
            "recorder, workload",
            "SSIM against lossless",
            format!("{:.4}", w.jitrec_ssim),
            format!("{:.4}", w.ffmpeg_ssim),
            Line::goal(
                w.jitrec_ssim / w.ffmpeg_ssim,
                w.jitrec_ssim >= w.ffmpeg_ssim,
                ">= ffmpeg's",
            ),
        ));
    }
    if args.idle_seconds > 0 {
        let (ours, reference, x_alone) = idle(events, args.idle_seconds)?;
        println!(
            "recorder, idle 1920x1080 screen with three static windows and a clock ticking every second, {} s each:",
            args.idle_seconds
        );
        header();
        row("ffmpeg x11grab + libx264", &reference, None);
        row("jitrec-recorder", &ours, None);
        println!(
            "  jitrec idle: {:.3} CPU-s per minute over the whole run (goal <= 0.1: {})",
            ours.cpu(),
            if ours.cpu() <= 0.1 { "met" } else { "NOT met" }
        );
        println!(
            "  after the first {} s (the session's set-up left out): jitrec {:.3} CPU-s per minute, ffmpeg {:.3}",
            settle_secs(args.idle_seconds),
            ours.steady.unwrap_or(f64::NAN),
            reference.steady.unwrap_or(f64::NAN),
        );
        println!(
            "  the X server with nothing recording (the clock's own drawing, measured before both runs): {x_alone:.3} CPU-s per minute, in both figures above"
        );
        breakdown(&ours);
        lines.push(Line::new(
            "recorder, idle",
            "CPU-s per recorded minute (process + X)",
            format!("{:.2}", ours.cpu()),
            format!("{:.2}", reference.cpu()),
            Line::goal(
                ours.cpu() / reference.cpu(),
                ours.cpu() <= 0.1,
                "<= 0.1 CPU-s per minute",
            ),
        ));
        let (steady, steady_ref) = (
            ours.steady.unwrap_or(f64::NAN),
            reference.steady.unwrap_or(f64::NAN),
        );
        lines.push(Line::new(
            "recorder, idle",
            "CPU-s per minute once settled (set-up left out)",
            format!("{steady:.2}"),
            format!("{steady_ref:.2}"),
            Line::goal(
                steady / steady_ref,
                steady <= 0.1,
                "<= 0.1 CPU-s per minute",
            ),
        ));
        lines.push(Line::new(
            "recorder, idle",
            "X server alone, CPU-s per minute (in both figures)",
            format!("{x_alone:.2}"),
            String::new(),
            String::new(),
        ));
        lines.push(Line::new(
            "recorder, idle",
            "MB per hour",
            format!("{:.1}", ours.mb_per_hour()),
            format!("{:.1}", reference.mb_per_hour()),
            format!("{:.2}x", ours.mb_per_hour() / reference.mb_per_hour()),
        ));
    }
    Ok(lines)
}
