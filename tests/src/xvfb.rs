//! A real X server for tests: Xvfb on a display of its own, with a black root (`-br`) and no
//! TCP listener. Stopped when dropped.

use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};

/// Generous: Xvfb starts in ~100 ms, CI machines are loaded.
const READY_LIMIT: Duration = Duration::from_secs(30);

static NEXT: AtomicU32 = AtomicU32::new(0);

/// A running Xvfb.
#[derive(Debug)]
pub struct Xvfb {
    child: Child,
    /// `:N`, for `DISPLAY` or `x11rb::connect`.
    pub display: String,
}

impl Drop for Xvfb {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Xvfb {
    /// The X server's process id (for CPU accounting in benchmarks).
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Starts a `width` x `height` 24-bit screen on a free display number.
    pub fn start(width: u32, height: u32) -> Result<Self> {
        for _ in 0..50 {
            // Spread test processes apart, then step within one.
            let n = 100 + (std::process::id() % 400) * 10 + NEXT.fetch_add(1, Ordering::Relaxed);
            if Path::new(&format!("/tmp/.X{n}-lock")).exists() {
                continue;
            }
            let display = format!(":{n}");
            let mut child = Command::new("Xvfb")
                .args([&display, "-screen", "0", &format!("{width}x{height}x24")])
                .args(["-br", "-nolisten", "tcp", "-noreset"])
                .stdin(Stdio::null())
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .spawn()
                .context("start Xvfb (Debian package xvfb)")?;
            let started = Instant::now();
            loop {
                if x11rb::connect(Some(&display)).is_ok() {
                    return Ok(Self { child, display });
                }
                if child.try_wait()?.is_some() {
                    break; // display taken; try the next number
                }
                if started.elapsed() > READY_LIMIT {
                    let _ = child.kill();
                    bail!("Xvfb {display} not ready after {READY_LIMIT:?}");
                }
                std::thread::sleep(Duration::from_millis(20));
            }
        }
        bail!("no free X display number")
    }
}

/// Maps a plain `pixel`-coloured window at (`x`, `y`), `w` x `h`, on `display`, outside any
/// window manager's control; returns once the server has drawn it, with the window's id. The
/// window lives as long as the returned connection.
pub fn map_window(
    display: &str,
    (x, y, w, h): (i16, i16, u16, u16),
    pixel: u32,
) -> Result<(x11rb::rust_connection::RustConnection, u32)> {
    use x11rb::connection::Connection;
    use x11rb::protocol::xproto::{ConnectionExt as _, CreateWindowAux, WindowClass};
    let (conn, screen) = x11rb::connect(Some(display))?;
    let root = conn.setup().roots[screen].root;
    let win = conn.generate_id()?;
    conn.create_window(
        x11rb::COPY_DEPTH_FROM_PARENT,
        win,
        root,
        x,
        y,
        w,
        h,
        0,
        WindowClass::INPUT_OUTPUT,
        x11rb::COPY_FROM_PARENT,
        &CreateWindowAux::new()
            .background_pixel(pixel)
            .override_redirect(1),
    )?;
    conn.map_window(win)?;
    // A round trip: once answered, the server has processed the map.
    conn.get_input_focus()?.reply()?;
    Ok((conn, win))
}
