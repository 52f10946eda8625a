//! The active window and its title, from the X server (EWMH).
//!
//! The window manager names the active window in the root's `_NET_ACTIVE_WINDOW`; clients name
//! themselves in `_NET_WM_NAME` (UTF-8) or `WM_NAME`, and their process in `_NET_WM_PID`. This
//! source asks for `PropertyNotify` on the root and on the active window, so it learns of every
//! focus and title change when it happens, without polling the server. Events are stamped when
//! they arrive (the server's own timestamps are on a clock we cannot map reliably); the delay
//! is the X round trip, well under a frame.
//!
//! Without an EWMH window manager nobody sets `_NET_ACTIVE_WINDOW`: the source says so in an
//! `event_source` event and records focus once a window manager appears.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use jitrec_format::{EventKind, MediaTime, SourceState, WindowInfo};
use std::os::fd::AsFd;
use x11rb::connection::Connection;
use x11rb::protocol::Event;
use x11rb::protocol::xproto::{
    AtomEnum, ChangeWindowAttributesAux, ConnectionExt as _, EventMask, Window,
};
use x11rb::rust_connection::RustConnection;

use crate::events::redact::Redactor;
use crate::events::{EventSink, EventSource, IDLE_WAIT, truncate_text};

/// The window source.
pub struct WindowSource {
    /// Connected and listening when the source is made; the error says why it cannot be.
    watch: Result<Watch, String>,
}

impl std::fmt::Debug for WindowSource {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("WindowSource")
            .field("connected", &self.watch.is_ok())
            .finish()
    }
}

impl WindowSource {
    /// Connects to `display` (`None`: `$DISPLAY`) and starts listening for property changes.
    pub fn open(display: Option<&str>, redactor: Arc<Redactor>) -> Self {
        Self {
            watch: Watch::open(display, redactor).map_err(|e| e.to_string()),
        }
    }
}

#[derive(Debug, Clone, Copy)]
struct Atoms {
    active: u32,
    net_name: u32,
    pid: u32,
    utf8: u32,
}

type XResult<T> = Result<T, Box<dyn std::error::Error>>;

struct Watch {
    conn: RustConnection,
    root: Window,
    atoms: Atoms,
    redactor: Arc<Redactor>,
    active: Option<Window>,
    title: String,
}

impl Watch {
    fn open(display: Option<&str>, redactor: Arc<Redactor>) -> XResult<Self> {
        let (conn, screen) = x11rb::connect(display)?;
        let root = conn.setup().roots[screen].root;
        let intern =
            |name: &[u8]| -> XResult<u32> { Ok(conn.intern_atom(false, name)?.reply()?.atom) };
        let atoms = Atoms {
            active: intern(b"_NET_ACTIVE_WINDOW")?,
            net_name: intern(b"_NET_WM_NAME")?,
            pid: intern(b"_NET_WM_PID")?,
            utf8: intern(b"UTF8_STRING")?,
        };
        conn.change_window_attributes(
            root,
            &ChangeWindowAttributesAux::new().event_mask(EventMask::PROPERTY_CHANGE),
        )?
        .check()?;
        Ok(Self {
            conn,
            root,
            atoms,
            redactor,
            active: None,
            title: String::new(),
        })
    }

    /// The active window per EWMH: `Ok(None)` if the property is absent, `Some(None)` if set
    /// to no window.
    fn active_window(&self) -> XResult<Option<Option<Window>>> {
        let r = self
            .conn
            .get_property(false, self.root, self.atoms.active, AtomEnum::WINDOW, 0, 1)?
            .reply()?;
        if r.type_ == u32::from(AtomEnum::NONE) {
            return Ok(None);
        }
        Ok(Some(
            r.value32().and_then(|mut v| v.next()).filter(|w| *w != 0),
        ))
    }

    fn title_of(&self, w: Window) -> String {
        let get = |atom: u32| {
            self.conn
                .get_property(false, w, atom, AtomEnum::ANY, 0, 4096)
                .ok()?
                .reply()
                .ok()
        };
        let text = match get(self.atoms.net_name).filter(|r| !r.value.is_empty()) {
            Some(r) if r.type_ == self.atoms.utf8 => String::from_utf8_lossy(&r.value).into_owned(),
            _ => match get(AtomEnum::WM_NAME.into()) {
                Some(r) if r.type_ == self.atoms.utf8 => {
                    String::from_utf8_lossy(&r.value).into_owned()
                }
                // STRING is ISO 8859-1.
                Some(r) => r.value.iter().map(|b| char::from(*b)).collect(),
                None => String::new(),
            },
        };
        truncate_text(&self.redactor.text(&text))
    }

    fn pid_of(&self, w: Window) -> Option<u32> {
        self.conn
            .get_property(false, w, self.atoms.pid, AtomEnum::CARDINAL, 0, 1)
            .ok()?
            .reply()
            .ok()?
            .value32()?
            .next()
    }

    fn info(&self, w: Window, title: String) -> WindowInfo {
        WindowInfo {
            window: format!("0x{w:x}"),
            title,
            pid: self.pid_of(w),
        }
    }

    /// Follows a new active window: watch its properties and report focus.
    fn focus(&mut self, w: Option<Window>, t: MediaTime, sink: &mut EventSink) {
        if w == self.active {
            return;
        }
        self.active = w;
        let Some(w) = w else {
            return;
        };
        // The window may already be gone (BadWindow arrives as an error event and is ignored).
        let _ = self.conn.change_window_attributes(
            w,
            &ChangeWindowAttributesAux::new().event_mask(EventMask::PROPERTY_CHANGE),
        );
        self.title = self.title_of(w);
        let info = self.info(w, self.title.clone());
        sink.emit(t, EventKind::WindowFocus(info));
    }

    fn handle(&mut self, ev: Event, t: MediaTime, sink: &mut EventSink) -> XResult<()> {
        let Event::PropertyNotify(p) = ev else {
            return Ok(());
        };
        if p.window == self.root && p.atom == self.atoms.active {
            let w = self.active_window()?.flatten();
            self.focus(w, t, sink);
        } else if Some(p.window) == self.active
            && (p.atom == self.atoms.net_name || p.atom == u32::from(AtomEnum::WM_NAME))
        {
            let title = self.title_of(p.window);
            if title != self.title {
                self.title = title.clone();
                let info = self.info(p.window, title);
                sink.emit(t, EventKind::WindowTitle(info));
            }
        }
        Ok(())
    }
}

fn status(sink: &mut EventSink, state: SourceState, detail: String) {
    let t = sink.clock().now();
    sink.status(
        t,
        EventKind::EventSource {
            source: "windows".into(),
            state,
            detail,
        },
    );
}

impl EventSource for WindowSource {
    fn name(&self) -> &'static str {
        "windows"
    }

    fn run(self: Box<Self>, mut sink: EventSink, stop: Arc<AtomicBool>) {
        let mut watch = match self.watch {
            Ok(w) => w,
            Err(e) => {
                tracing::error!(error = %e, "window events unavailable");
                status(
                    &mut sink,
                    SourceState::Unavailable,
                    format!("cannot watch the X server's windows: {e}"),
                );
                return;
            }
        };
        match watch.active_window() {
            Ok(Some(w)) => {
                status(
                    &mut sink,
                    SourceState::Complete,
                    "X11 EWMH: _NET_ACTIVE_WINDOW and window names, by PropertyNotify".into(),
                );
                let t = sink.clock().now();
                watch.focus(w, t, &mut sink);
            }
            Ok(None) => status(
                &mut sink,
                SourceState::Partial,
                "no EWMH window manager has set _NET_ACTIVE_WINDOW: focus and titles are recorded once one does".into(),
            ),
            Err(e) => {
                status(&mut sink, SourceState::Unavailable, format!("X11: {e}"));
                return;
            }
        }
        while !stop.load(Ordering::SeqCst) {
            // As in the process source: report only when asked, with a time taken before the
            // read that found nothing more.
            let asked = sink.wake().take();
            let result = (|| -> XResult<()> {
                loop {
                    let now = sink.clock().now();
                    match watch.conn.poll_for_event()? {
                        Some(ev) => watch.handle(ev, now, &mut sink)?,
                        None => {
                            if asked {
                                sink.caught_up(now);
                            }
                            return Ok(());
                        }
                    }
                }
            })();
            if let Err(e) = result {
                tracing::error!(error = %e, "lost the X server; window events stop here");
                status(
                    &mut sink,
                    SourceState::Unavailable,
                    format!("lost the X server: {e}"),
                );
                return;
            }
            let _ = watch.conn.flush();
            sink.wake()
                .wait_with(&[watch.conn.stream().as_fd()], IDLE_WAIT);
        }
    }
}
