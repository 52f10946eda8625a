//! `recorder-idle`: what recording an idle (or, with `--typing`, a typing) screen costs, against
//! ffmpeg on the same screen.
//!
//! One Xvfb at 1920x1080 with a few static windows. First the release `jitrec-recorder run`
//! (default settings: 5 fps, CRF 28, keyframes every 10 s, process and window events on) records
//! a JIT session started and stopped over its control socket; then `ffmpeg -f x11grab` with
//! libx264 at the same rate, CRF, keyframe interval, preset and tune records the same screen for
//! the same time. For each: CPU seconds (user + sys from `/proc/<pid>/stat`) of the recorder and
//! of the X server over the measured interval, per minute, and bytes written per minute.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use clap::Args;
use jitrec_recorder::control::{self, Request};
use jitrec_recorder::encode::EncoderConfig;
use jitrec_tests::xvfb::Xvfb;
use x11rb::connection::Connection;
use x11rb::protocol::xproto::ConnectionExt as _;

#[derive(Args, Clone)]
pub(crate) struct IdleArgs {
    /// Seconds each recorder records.
    #[arg(long, default_value_t = 60)]
    seconds: u64,
    /// Record video only (no process and window events), to see what the events cost.
    #[arg(long)]
    no_events: bool,
    /// Instead of an idle screen, a typing-like workload: a 9x16 "character" drawn every
    /// 100 ms, advancing along a line, a new line every 80 characters.
    #[arg(long)]
    typing: bool,
}

/// Draws "characters" on its own X connection until dropped.
struct Typist {
    stop: std::sync::Arc<std::sync::atomic::AtomicBool>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Typist {
    fn start(display: &str) -> Result<Self> {
        let (conn, win) =
            jitrec_tests::xvfb::map_window(display, (100, 100, 1200, 800), 0x0010_1010)?;
        let gc = conn.generate_id()?;
        conn.create_gc(gc, win, &x11rb::protocol::xproto::CreateGCAux::new())?;
        let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
        let flag = std::sync::Arc::clone(&stop);
        let thread = std::thread::spawn(move || {
            let mut n: u32 = 0;
            while !flag.load(std::sync::atomic::Ordering::Relaxed) {
                let (col, line) = (n % 80, (n / 80) % 45);
                let colour = 0x0040_c040 + (n * 0x0001_0203) % 0x0040_4040;
                let _ = conn.change_gc(
                    gc,
                    &x11rb::protocol::xproto::ChangeGCAux::new().foreground(colour),
                );
                let _ = conn.poly_fill_rectangle(
                    win,
                    gc,
                    &[x11rb::protocol::xproto::Rectangle {
                        x: 10 + (col * 14) as i16,
                        y: 10 + (line * 17) as i16,
                        width: 9,
                        height: 16,
                    }],
                );
                let _ = conn.flush();
                n += 1;
                std::thread::sleep(Duration::from_millis(100));
            }
        });
        Ok(Self {
            stop,
            thread: Some(thread),
        })
    }
}

impl Drop for Typist {
    fn drop(&mut self) {
        self.stop.store(true, std::sync::atomic::Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
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

struct Measured {
    name: &'static str,
    own: f64,
    x: f64,
    bytes: u64,
    secs: f64,
}

impl Measured {
    fn per_min(&self, v: f64) -> f64 {
        v * 60.0 / self.secs
    }

    fn total(&self) -> f64 {
        self.per_min(self.own + self.x)
    }
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

struct Killed(Child);

impl Drop for Killed {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn jitrec(x: &Xvfb, secs: u64, events: bool, tmp: &Path) -> Result<Measured> {
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
    let child = Killed(
        Command::new(&exe)
            .args(["run", "--config"])
            .arg(&config)
            .env("RUST_LOG", "warn")
            .stdin(Stdio::null())
            .spawn()
            .with_context(|| format!("starting {}", exe.display()))?,
    );
    wait_for("the control socket", || socket.exists())?;
    let start = Request::Start {
        user: "bench".into(),
        authorized_by: None,
        reason: None,
    };
    let r = control::request(&socket, &start)?;
    if !r.ok {
        bail!("jit start: {}", r.message);
    }
    let pid = child.0.id();
    let (own0, x0, t0) = (cpu_secs(pid)?, cpu_secs(x.pid())?, Instant::now());
    std::thread::sleep(Duration::from_secs(secs));
    let (own1, x1, t1) = (cpu_secs(pid)?, cpu_secs(x.pid())?, Instant::now());
    let r = control::request(&socket, &Request::Stop)?;
    if !r.ok {
        bail!("jit stop: {}", r.message);
    }
    Ok(Measured {
        name: if events {
            "jitrec-recorder"
        } else {
            "jitrec-recorder, no events"
        },
        own: own1 - own0,
        x: x1 - x0,
        bytes: dir_bytes(&spool),
        secs: (t1 - t0).as_secs_f64(),
    })
}

fn ffmpeg(x: &Xvfb, secs: u64, tmp: &Path) -> Result<Measured> {
    let e = EncoderConfig::default();
    let out = tmp.join("ffmpeg.mp4");
    let fps = e.nominal_fps.to_string();
    let gop = (u64::from(e.nominal_fps) * e.keyframe_interval.as_secs()).to_string();
    let child = Killed(
        Command::new("ffmpeg")
            .args(["-nostdin", "-loglevel", "error", "-f", "x11grab"])
            .args([
                "-framerate",
                &fps,
                "-video_size",
                "1920x1080",
                "-draw_mouse",
                "1",
            ])
            .args(["-i", &x.display])
            .args([
                "-c:v",
                "libx264",
                "-preset",
                &e.preset,
                "-tune",
                "zerolatency",
            ])
            .args(["-crf", &e.crf.to_string(), "-g", &gop, "-bf", "0"])
            .args(["-t", &(secs + 2).to_string(), "-y"])
            .arg(&out)
            .stdin(Stdio::null())
            .spawn()
            .context("starting ffmpeg (Debian package ffmpeg)")?,
    );
    let pid = child.0.id();
    // Let it open the display and the encoder, as the recorder had before `jit start`.
    wait_for("ffmpeg's first output", || out.exists())?;
    let (own0, x0, t0) = (cpu_secs(pid)?, cpu_secs(x.pid())?, Instant::now());
    std::thread::sleep(Duration::from_secs(secs));
    let (own1, x1, t1) = (cpu_secs(pid)?, cpu_secs(x.pid())?, Instant::now());
    let mut child = child;
    let status = child.0.wait()?;
    if !status.success() {
        bail!("ffmpeg failed: {status}");
    }
    Ok(Measured {
        name: "ffmpeg x11grab + libx264",
        own: own1 - own0,
        x: x1 - x0,
        bytes: std::fs::metadata(&out)?.len(),
        secs: (t1 - t0).as_secs_f64(),
    })
}

pub(crate) fn idle(args: IdleArgs) -> Result<()> {
    let x = Xvfb::start(1920, 1080)?;
    let _windows = furnish(&x.display)?;
    let _typist = args.typing.then(|| Typist::start(&x.display)).transpose()?;
    let tmp = tempfile::tempdir()?;
    println!(
        "{} 1920x1080 Xvfb screen, {} s each, 5 fps, CRF 28, keyframe every 10 s",
        if args.typing { "typing on a" } else { "idle" },
        args.seconds
    );
    let ours = jitrec(&x, args.seconds, !args.no_events, tmp.path())?;
    let reference = ffmpeg(&x, args.seconds, tmp.path())?;
    println!(
        "{:<36} {:>12} {:>12} {:>12} {:>10}",
        "", "CPU-s/min", "of it: own", "of it: X", "KB/min"
    );
    for m in [&reference, &ours] {
        println!(
            "{:<36} {:>12.3} {:>12.3} {:>12.3} {:>10.0}",
            m.name,
            m.total(),
            m.per_min(m.own),
            m.per_min(m.x),
            m.bytes as f64 / 1e3 * 60.0 / m.secs
        );
    }
    if args.typing {
        println!(
            "jitrec / ffmpeg CPU: {:.3}x   (goal for active screens: at most 0.25x)",
            ours.total() / reference.total()
        );
    } else {
        println!(
            "jitrec / ffmpeg CPU: {:.3}x   (goal: at most 0.1 CPU-s per idle minute; measured {:.3})",
            ours.total() / reference.total(),
            ours.total()
        );
    }
    Ok(())
}
