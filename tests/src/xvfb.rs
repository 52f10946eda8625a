//! A real X server for tests: Xvfb on a display of its own, with a black root (`-br`) and no
//! TCP listener. Stopped when dropped. Beside it: X clients that map and title windows, a fake
//! window manager that only names the active window, and a real one (openbox).

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
            let Some(display) = unused_display() else {
                continue;
            };
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

/// A display number no X server holds now (`:N`), for a program that starts its own server;
/// `None` if the next candidate is taken (call again for another).
pub fn unused_display() -> Option<String> {
    // Spread test processes apart, then step within one.
    let n = 100 + (std::process::id() % 400) * 10 + NEXT.fetch_add(1, Ordering::Relaxed);
    (!Path::new(&format!("/tmp/.X{n}-lock")).exists()).then(|| format!(":{n}"))
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

/// An ordinary X client: it maps windows titled with `_NET_WM_NAME` and owned by this process
/// (`_NET_WM_PID`), which is what the recorder's window source reads, retitles them, and asks a
/// real window manager to activate one as a pager or task bar would (EWMH).
pub struct EwmhClient {
    conn: x11rb::rust_connection::RustConnection,
    root: u32,
    active: u32,
    name: u32,
    utf8: u32,
    pid: u32,
}

impl EwmhClient {
    /// Connects to `display`.
    pub fn new(display: &str) -> Result<Self> {
        use x11rb::connection::Connection;
        use x11rb::protocol::xproto::ConnectionExt as _;
        let (conn, screen) = x11rb::connect(Some(display))?;
        let root = conn.setup().roots[screen].root;
        let atom = |n: &[u8]| -> Result<u32> { Ok(conn.intern_atom(false, n)?.reply()?.atom) };
        let (active, name, utf8, pid) = (
            atom(b"_NET_ACTIVE_WINDOW")?,
            atom(b"_NET_WM_NAME")?,
            atom(b"UTF8_STRING")?,
            atom(b"_NET_WM_PID")?,
        );
        Ok(Self {
            conn,
            root,
            active,
            name,
            utf8,
            pid,
        })
    }

    /// Waits until the server has processed everything sent so far.
    fn sync(&self) -> Result<()> {
        use x11rb::protocol::xproto::ConnectionExt as _;
        self.conn.get_input_focus()?.reply()?;
        Ok(())
    }

    /// Maps a `pixel`-coloured window titled `title` (owned by this process), not yet active.
    pub fn window(
        &self,
        title: &str,
        (x, y, w, h): (i16, i16, u16, u16),
        pixel: u32,
    ) -> Result<u32> {
        use x11rb::connection::Connection;
        use x11rb::protocol::xproto::{
            AtomEnum, ConnectionExt as _, CreateWindowAux, PropMode, WindowClass,
        };
        use x11rb::wrapper::ConnectionExt as _;
        let win = self.conn.generate_id()?;
        self.conn.create_window(
            x11rb::COPY_DEPTH_FROM_PARENT,
            win,
            self.root,
            x,
            y,
            w,
            h,
            0,
            WindowClass::INPUT_OUTPUT,
            x11rb::COPY_FROM_PARENT,
            &CreateWindowAux::new().background_pixel(pixel),
        )?;
        self.conn.change_property32(
            PropMode::REPLACE,
            win,
            self.pid,
            AtomEnum::CARDINAL,
            &[std::process::id()],
        )?;
        // ICCCM: the window takes the input focus when given it (flags: InputHint; input:
        // true), so a real window manager activates it.
        self.conn.change_property32(
            PropMode::REPLACE,
            win,
            AtomEnum::WM_HINTS,
            AtomEnum::WM_HINTS,
            &[1, 1, 0, 0, 0, 0, 0, 0, 0],
        )?;
        self.retitle(win, title)?;
        self.conn.map_window(win)?;
        self.sync()?;
        Ok(win)
    }

    /// Sets the window's title.
    pub fn retitle(&self, win: u32, title: &str) -> Result<()> {
        use x11rb::protocol::xproto::PropMode;
        use x11rb::wrapper::ConnectionExt as _;
        self.conn.change_property8(
            PropMode::REPLACE,
            win,
            self.name,
            self.utf8,
            title.as_bytes(),
        )?;
        self.sync()
    }

    /// The window the window manager names active (`_NET_ACTIVE_WINDOW`), if any.
    pub fn active_window(&self) -> Result<Option<u32>> {
        use x11rb::protocol::xproto::{AtomEnum, ConnectionExt as _};
        let r = self
            .conn
            .get_property(false, self.root, self.active, AtomEnum::WINDOW, 0, 1)?
            .reply()?;
        Ok(r.value32().and_then(|mut v| v.next()).filter(|w| *w != 0))
    }

    /// Asks the window manager to activate `win` (a `_NET_ACTIVE_WINDOW` client message from a
    /// pager, which EWMH window managers obey) and waits, up to `limit`, until it has.
    ///
    /// The request is sent again every [`REQUEST_EVERY`] until the window is active: a window
    /// manager ignores a request for a window it has not finished managing yet, and a just
    /// mapped window may be one.
    pub fn activate_and_wait(&self, win: u32, limit: Duration) -> Result<()> {
        use x11rb::protocol::xproto::{ClientMessageEvent, ConnectionExt as _, EventMask};
        let started = Instant::now();
        let mut sent: Option<Instant> = None;
        while self.active_window()? != Some(win) {
            if started.elapsed() > limit {
                bail!("window 0x{win:x} not active after {limit:?}");
            }
            if sent.is_none_or(|t| t.elapsed() >= REQUEST_EVERY) {
                // Source indication 2: a pager, acting for the user; timestamp 0: now.
                let msg = ClientMessageEvent::new(32, win, self.active, [2, 0, 0, 0, 0]);
                self.conn.send_event(
                    false,
                    self.root,
                    EventMask::SUBSTRUCTURE_REDIRECT | EventMask::SUBSTRUCTURE_NOTIFY,
                    msg,
                )?;
                self.sync()?;
                sent = Some(Instant::now());
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        Ok(())
    }
}

/// How often [`EwmhClient::activate_and_wait`] repeats its request.
const REQUEST_EVERY: Duration = Duration::from_millis(200);

/// An X client acting as an EWMH window manager would: it names the active window on the root
/// (`_NET_ACTIVE_WINDOW`) besides mapping and titling windows as an [`EwmhClient`]. Bare Xvfb has
/// no window manager to do it; [`Openbox`] is a real one.
pub struct FakeWm {
    client: EwmhClient,
}

impl FakeWm {
    /// Connects to `display` and marks no window active.
    pub fn new(display: &str) -> Result<Self> {
        let wm = Self {
            client: EwmhClient::new(display)?,
        };
        wm.activate(0)?;
        Ok(wm)
    }

    /// Maps a `pixel`-coloured window titled `title` (owned by this process), not yet active.
    pub fn window(&self, title: &str, geometry: (i16, i16, u16, u16), pixel: u32) -> Result<u32> {
        self.client.window(title, geometry, pixel)
    }

    /// Sets the window's title.
    pub fn retitle(&self, win: u32, title: &str) -> Result<()> {
        self.client.retitle(win, title)
    }

    /// Names `win` as the active window (0: none).
    pub fn activate(&self, win: u32) -> Result<()> {
        use x11rb::protocol::xproto::{AtomEnum, PropMode};
        use x11rb::wrapper::ConnectionExt as _;
        let c = &self.client;
        c.conn.change_property32(
            PropMode::REPLACE,
            c.root,
            c.active,
            AtomEnum::WINDOW,
            &[win],
        )?;
        c.sync()
    }
}

/// Debian's openbox as the display's window manager (the package `openbox`, default
/// configuration): a real EWMH window manager, which sets `_NET_ACTIVE_WINDOW` itself as
/// windows are mapped and activated. Killed when dropped.
pub struct Openbox {
    _child: crate::child::Reaped,
}

impl Openbox {
    /// Starts openbox on `display`; returns once it manages the screen (it has announced
    /// itself with `_NET_SUPPORTING_WM_CHECK`, which an EWMH window manager sets when ready).
    pub fn start(display: &str) -> Result<Self> {
        use x11rb::connection::Connection;
        use x11rb::protocol::xproto::{AtomEnum, ConnectionExt as _};
        let mut child: crate::child::Reaped = Command::new("openbox")
            .arg("--sm-disable")
            .env("DISPLAY", display)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .context("start openbox (Debian package openbox)")?
            .into();
        let (conn, screen) = x11rb::connect(Some(display))?;
        let root = conn.setup().roots[screen].root;
        let check = conn
            .intern_atom(false, b"_NET_SUPPORTING_WM_CHECK")?
            .reply()?
            .atom;
        let started = Instant::now();
        loop {
            let r = conn
                .get_property(false, root, check, AtomEnum::WINDOW, 0, 1)?
                .reply()?;
            if r.value32()
                .and_then(|mut v| v.next())
                .is_some_and(|w| w != 0)
            {
                return Ok(Self { _child: child });
            }
            if let Some(status) = child.try_wait()? {
                bail!("openbox exited before managing {display}: {status}");
            }
            if started.elapsed() > READY_LIMIT {
                bail!("openbox not managing {display} after {READY_LIMIT:?}");
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

/// Waits (up to `limit`) for a top-level window titled `title` (`WM_NAME`) to be mapped on
/// `display`, as an X client started by a test creates it; returns its id.
pub fn find_window(display: &str, title: &str, limit: Duration) -> Result<u32> {
    use x11rb::connection::Connection;
    use x11rb::protocol::xproto::{AtomEnum, ConnectionExt as _, MapState};
    let (conn, screen) = x11rb::connect(Some(display))?;
    let root = conn.setup().roots[screen].root;
    let started = Instant::now();
    loop {
        for w in conn.query_tree(root)?.reply()?.children {
            let name = conn
                .get_property(false, w, AtomEnum::WM_NAME, AtomEnum::STRING, 0, 1024)?
                .reply()?;
            if name.value == title.as_bytes()
                && conn.get_window_attributes(w)?.reply()?.map_state == MapState::VIEWABLE
            {
                return Ok(w);
            }
        }
        if started.elapsed() > limit {
            bail!("no window titled {title:?} on {display} after {limit:?}");
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}
