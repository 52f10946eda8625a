//! The recording notice on X11: an override-redirect window (no window manager moves, hides or
//! decorates it) on the recorded display, drawn with the core protocol's built-in `fixed` font,
//! which every X server has, so no font library or toolkit is needed.
//!
//! The window is centred on the primary monitor (RandR 1.5; the whole root without it), raised
//! again (at most once a second) whenever another window covers it, and taken down when it is
//! clicked, when its time is up (without `require_ack`) or when the session stops. `notice_shown` is stamped only after
//! the window was exposed, drawn, and a round trip confirmed the server has drawn it: every
//! frame captured from then on holds the notice.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use jitrec_format::EventKind;
use std::os::fd::AsFd;
use x11rb::connection::Connection;
use x11rb::errors::{ConnectError, ConnectionError, ReplyError, ReplyOrIdError};
use x11rb::protocol::Event;
use x11rb::protocol::randr::ConnectionExt as _;
use x11rb::protocol::xproto::{
    AtomEnum, ConfigureWindowAux, ConnectionExt as _, CreateGCAux, CreateWindowAux, EventMask,
    Gcontext, PropMode, Rectangle, StackMode, Visibility, Window, WindowClass,
};
use x11rb::rust_connection::RustConnection;
use x11rb::wrapper::ConnectionExt as _;

use super::{BACKGROUND, NoticeConfig, WINDOW_TITLE, latin1, wrap};
use crate::events::{EventSink, EventSource, IDLE_WAIT, truncate_text};

/// How long the server may take to expose a mapped window before the notice counts as not
/// shown: a round trip is milliseconds; only a stuck server takes seconds.
const EXPOSE_LIMIT: Duration = Duration::from_secs(5);

/// Space between the border and the text, and between text and button, in pixels.
const PAD: u16 = 16;

/// The widest line, in characters: longer lines are hard to read.
const MAX_COLS: u16 = 80;

/// The least time between two raises of a covered notice: another always-on-top window (a
/// screen locker) raising itself in turn must not make the two flicker at the X server's speed.
const RAISE_INTERVAL: Duration = Duration::from_secs(1);

/// The button's label.
const BUTTON: &[u8] = b"OK";

/// Why the notice window could not be put up or kept.
#[derive(Debug, thiserror::Error)]
pub enum NoticeError {
    #[error("X11 connect: {0}")]
    Connect(#[from] ConnectError),
    #[error("X11: {0}")]
    Connection(#[from] ConnectionError),
    #[error("X11: {0}")]
    Reply(#[from] ReplyError),
    #[error("X11: {0}")]
    ReplyOrId(#[from] ReplyOrIdError),
    #[error("the X server did not expose the notice window within {0:?}")]
    NotExposed(Duration),
}

/// The notice of one session on X11.
#[derive(Debug)]
pub struct X11Notice {
    config: NoticeConfig,
    /// The text with the session's values filled in.
    text: String,
}

impl X11Notice {
    pub fn new(config: NoticeConfig, text: String) -> Self {
        Self { config, text }
    }
}

/// How the notice left the screen.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Outcome {
    Acknowledged,
    TimedOut,
    Stopped,
    /// Another client destroyed or unmapped it.
    Removed,
}

/// Where things are in the window.
#[derive(Debug, Clone)]
struct Layout {
    x: i16,
    y: i16,
    width: u16,
    height: u16,
    lines: Vec<Vec<u8>>,
    line_height: u16,
    ascent: u16,
    button: Rectangle,
    char_width: u16,
}

/// Lays `text` out in a window centred on `monitor` (x, y, width, height), in a font of
/// `char_width` x (`ascent` + `descent`) pixels.
fn layout(
    text: &str,
    (mx, my, mw, mh): (i16, i16, u16, u16),
    char_width: u16,
    ascent: u16,
    descent: u16,
) -> Layout {
    let char_width = char_width.max(1);
    let line_height = ascent + descent + 2;
    // Three fifths of the monitor's width reads as a dialog, not a banner.
    let cols = ((u32::from(mw) * 3 / 5).saturating_sub(2 * u32::from(PAD)) / u32::from(char_width))
        .clamp(16, u32::from(MAX_COLS)) as u16;
    let button_h = line_height + 8;
    let button_w = (BUTTON.len() as u16 + 6) * char_width;
    let room = (u32::from(mh) * 4 / 5).saturating_sub(u32::from(3 * PAD + button_h));
    let max_lines = (room / u32::from(line_height)).max(1) as usize;
    let lines: Vec<Vec<u8>> = wrap(text, usize::from(cols), max_lines)
        .iter()
        .map(|l| latin1(l))
        .collect();
    let widest = lines.iter().map(Vec::len).max().unwrap_or(0) as u16;
    let width = (widest * char_width).max(button_w) + 2 * PAD;
    let height = PAD + lines.len() as u16 * line_height + PAD + button_h + PAD;
    let button = Rectangle {
        x: ((width - button_w) / 2) as i16,
        y: (height - PAD - button_h) as i16,
        width: button_w,
        height: button_h,
    };
    Layout {
        x: mx.saturating_add(((i32::from(mw) - i32::from(width)) / 2).max(0) as i16),
        y: my.saturating_add(((i32::from(mh) - i32::from(height)) / 2).max(0) as i16),
        width,
        height,
        lines,
        line_height,
        ascent,
        button,
        char_width,
    }
}

/// The notice's window and what draws it.
struct NoticeWindow {
    conn: RustConnection,
    window: Window,
    text_gc: Gcontext,
    button_gc: Gcontext,
    label_gc: Gcontext,
    layout: Layout,
}

impl NoticeWindow {
    /// Connects to `display`, creates the window and maps it (it is shown once exposed).
    fn open(display: Option<&str>, text: &str) -> Result<Self, NoticeError> {
        let (conn, screen_no) = x11rb::connect(display)?;
        let screen = conn.setup().roots[screen_no].clone();
        let colour = |[r, g, b]: [u8; 3]| -> Result<u32, NoticeError> {
            // Any visual: the colormap gives the pixel value.
            let c = conn
                .alloc_color(
                    screen.default_colormap,
                    u16::from(r) * 257,
                    u16::from(g) * 257,
                    u16::from(b) * 257,
                )?
                .reply()?;
            Ok(c.pixel)
        };
        let background = colour(BACKGROUND)?;
        let black = colour([0, 0, 0])?;
        let font = conn.generate_id()?;
        // `fixed` is one of the two fonts built into every X server.
        conn.open_font(font, b"fixed")?.check()?;
        let metrics = conn.query_font(font)?.reply()?;
        let monitor = primary_monitor(&conn, screen.root).unwrap_or((
            0,
            0,
            screen.width_in_pixels,
            screen.height_in_pixels,
        ));
        let layout = layout(
            text,
            monitor,
            metrics.max_bounds.character_width.max(1) as u16,
            metrics.font_ascent.max(1) as u16,
            metrics.font_descent.max(0) as u16,
        );
        let window = conn.generate_id()?;
        conn.create_window(
            x11rb::COPY_DEPTH_FROM_PARENT,
            window,
            screen.root,
            layout.x,
            layout.y,
            layout.width,
            layout.height,
            2,
            WindowClass::INPUT_OUTPUT,
            x11rb::COPY_FROM_PARENT,
            &CreateWindowAux::new()
                .background_pixel(background)
                .border_pixel(black)
                .override_redirect(1)
                .event_mask(
                    EventMask::EXPOSURE
                        | EventMask::BUTTON_PRESS
                        | EventMask::VISIBILITY_CHANGE
                        | EventMask::STRUCTURE_NOTIFY,
                ),
        )?
        .check()?;
        conn.change_property8(
            PropMode::REPLACE,
            window,
            AtomEnum::WM_NAME,
            AtomEnum::STRING,
            WINDOW_TITLE.as_bytes(),
        )?;
        conn.change_property8(
            PropMode::REPLACE,
            window,
            AtomEnum::WM_CLASS,
            AtomEnum::STRING,
            b"jitrec-notice\0jitrec\0",
        )?;
        // For compositors and panels that read EWMH even of unmanaged windows.
        let atom = |name: &[u8]| -> Result<u32, NoticeError> {
            Ok(conn.intern_atom(false, name)?.reply()?.atom)
        };
        let (window_type, notification) = (
            atom(b"_NET_WM_WINDOW_TYPE")?,
            atom(b"_NET_WM_WINDOW_TYPE_NOTIFICATION")?,
        );
        conn.change_property32(
            PropMode::REPLACE,
            window,
            window_type,
            AtomEnum::ATOM,
            &[notification],
        )?;
        let gc = |fg: u32, bg: u32| -> Result<Gcontext, NoticeError> {
            let gc = conn.generate_id()?;
            conn.create_gc(
                gc,
                window,
                &CreateGCAux::new()
                    .foreground(fg)
                    .background(bg)
                    .font(font)
                    .graphics_exposures(0),
            )?;
            Ok(gc)
        };
        let text_gc = gc(black, background)?;
        let button_gc = gc(black, background)?;
        let label_gc = gc(background, black)?;
        conn.close_font(font)?;
        conn.map_window(window)?;
        conn.flush()?;
        Ok(Self {
            conn,
            window,
            text_gc,
            button_gc,
            label_gc,
            layout,
        })
    }

    /// Draws text and button, and waits until the server has done so.
    fn draw(&self) -> Result<(), NoticeError> {
        let l = &self.layout;
        for (i, line) in l.lines.iter().enumerate() {
            if line.is_empty() {
                continue;
            }
            let y = PAD + i as u16 * l.line_height + l.ascent;
            // ImageText8 takes at most 255 bytes; lines are at most MAX_COLS.
            self.conn
                .image_text8(self.window, self.text_gc, PAD as i16, y as i16, line)?;
        }
        self.conn
            .poly_fill_rectangle(self.window, self.button_gc, &[l.button])?;
        let label_x =
            l.button.x + ((l.button.width - BUTTON.len() as u16 * l.char_width) / 2) as i16;
        let label_y = l.button.y + ((l.button.height - l.line_height) / 2 + l.ascent) as i16 + 1;
        self.conn
            .image_text8(self.window, self.label_gc, label_x, label_y, BUTTON)?;
        self.sync()
    }

    /// A round trip: once answered, the server has executed every request before it.
    fn sync(&self) -> Result<(), NoticeError> {
        self.conn.get_input_focus()?.reply()?;
        Ok(())
    }

    fn raise(&self) -> Result<(), NoticeError> {
        self.conn.configure_window(
            self.window,
            &ConfigureWindowAux::new().stack_mode(StackMode::ABOVE),
        )?;
        self.conn.flush()?;
        Ok(())
    }

    fn close(self) {
        // The window goes with the connection anyway; destroying it first and waiting makes
        // sure it is off the screen when the source reports it ended.
        let _ = self.conn.destroy_window(self.window);
        let _ = self.sync();
    }
}

/// The primary monitor (else the first), by RandR 1.5; `None` without it.
fn primary_monitor(conn: &RustConnection, root: Window) -> Option<(i16, i16, u16, u16)> {
    conn.randr_query_version(1, 5).ok()?.reply().ok()?;
    let monitors = conn
        .randr_get_monitors(root, true)
        .ok()?
        .reply()
        .ok()?
        .monitors;
    let m = monitors
        .iter()
        .find(|m| m.primary)
        .or_else(|| monitors.first())?;
    (m.width > 0 && m.height > 0).then_some((m.x, m.y, m.width, m.height))
}

impl EventSource for X11Notice {
    fn name(&self) -> &'static str {
        "notice"
    }

    fn run(self: Box<Self>, mut sink: EventSink, stop: Arc<AtomicBool>) {
        let display_name = self
            .config
            .display
            .clone()
            .or_else(|| std::env::var("DISPLAY").ok())
            .filter(|d| !d.is_empty())
            .unwrap_or_else(|| "default".into());
        let failed = |sink: &mut EventSink, e: &NoticeError| {
            tracing::warn!(error = %e, display = %display_name, "the recording notice could not be shown");
            let t = sink.clock().now();
            sink.status(
                t,
                EventKind::NoticeFailed {
                    message: truncate_text(&e.to_string()),
                },
            );
        };
        let window = match NoticeWindow::open(self.config.display.as_deref(), &self.text) {
            Ok(w) => w,
            Err(e) => return failed(&mut sink, &e),
        };
        let opened = Instant::now();
        let mut shown: Option<Instant> = None;
        let mut raised: Option<Instant> = None;
        let outcome = loop {
            if stop.load(Ordering::SeqCst) {
                break Ok(Outcome::Stopped);
            }
            // As the other sources: report only when asked, with a time taken before the read
            // that found nothing more.
            let asked = sink.wake().take();
            let step = (|| -> Result<Option<Outcome>, NoticeError> {
                loop {
                    let now = sink.clock().now();
                    let Some(ev) = window.conn.poll_for_event()? else {
                        if asked {
                            sink.caught_up(now);
                        }
                        return Ok(None);
                    };
                    match ev {
                        Event::Expose(e) if e.count == 0 => {
                            window.draw()?;
                            if shown.is_none() {
                                // Drawn and synced: the screen holds it from now on.
                                let t = sink.clock().now();
                                sink.status(t, self.config.shown(&self.text, &display_name));
                                tracing::info!(display = %display_name, require_ack = self.config.require_ack, "recording notice shown");
                                shown = Some(Instant::now());
                            }
                        }
                        Event::ButtonPress(_) if shown.is_some() => {
                            sink.status(now, EventKind::NoticeAcknowledged);
                            tracing::info!("recording notice acknowledged");
                            return Ok(Some(Outcome::Acknowledged));
                        }
                        Event::VisibilityNotify(v)
                            if v.state != Visibility::UNOBSCURED
                                && raised.is_none_or(|at| at.elapsed() >= RAISE_INTERVAL) =>
                        {
                            window.raise()?;
                            raised = Some(Instant::now());
                        }
                        Event::UnmapNotify(_) | Event::DestroyNotify(_) => {
                            return Ok(Some(Outcome::Removed));
                        }
                        _ => {}
                    }
                }
            })();
            match step {
                Ok(Some(outcome)) => break Ok(outcome),
                Ok(None) => {}
                Err(e) => break Err(e),
            }
            let wait = match shown {
                None if opened.elapsed() >= EXPOSE_LIMIT => {
                    break Err(NoticeError::NotExposed(EXPOSE_LIMIT));
                }
                None => EXPOSE_LIMIT.saturating_sub(opened.elapsed()),
                Some(_) if self.config.require_ack => IDLE_WAIT,
                Some(at) => match self.config.display_for.checked_sub(at.elapsed()) {
                    Some(left) if !left.is_zero() => left,
                    _ => break Ok(Outcome::TimedOut),
                },
            };
            if let Err(e) = window.conn.flush() {
                break Err(e.into());
            }
            sink.wake()
                .wait_with(&[window.conn.stream().as_fd()], wait.min(IDLE_WAIT));
        };
        match outcome {
            Ok(outcome) => tracing::debug!(?outcome, "recording notice taken down"),
            Err(e) if shown.is_none() => failed(&mut sink, &e),
            // Shown, then the X server went away (the capture says so too).
            Err(e) => tracing::warn!(error = %e, "lost the recording notice's X connection"),
        }
        window.close();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_notice_is_centred_on_its_monitor_and_fits_it() {
        let text = super::super::DEFAULT_TEXT;
        let l = layout(text, (1920, 0, 1280, 1024), 6, 11, 2);
        assert!(l.width <= 1280 && l.height <= 1024, "{l:?}");
        assert_eq!(i32::from(l.x) - 1920, (1280 - i32::from(l.width)) / 2);
        assert!(
            l.lines
                .iter()
                .all(|line| line.len() <= usize::from(MAX_COLS))
        );
        // A tiny screen still gets a notice that starts on it, with its last line cut.
        let small = layout(&"word ".repeat(200), (0, 0, 320, 240), 6, 11, 2);
        assert!(small.x >= 0 && small.y >= 0);
        assert!(
            small.lines.last().is_some_and(|l| l.ends_with(b"...")),
            "{small:?}"
        );
        assert!(i32::from(small.height) <= 240, "{small:?}");
        // The button lies inside the window.
        assert!(
            i32::from(small.button.x) + i32::from(small.button.width) <= i32::from(small.width)
        );
        assert!(
            i32::from(small.button.y) + i32::from(small.button.height) <= i32::from(small.height)
        );
    }
}
