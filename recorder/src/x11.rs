//! Screen capture on X11: the whole root window (every monitor), with the cursor drawn in.
//!
//! Frames come from `GetImage` of the root window in ZPixmap format (32 bits per pixel, BGRX in
//! memory), and the cursor from XFixes `GetCursorImage`, alpha-blended on top: X servers never
//! include the cursor in images. The root's size is read on every grab, so a screen-size change
//! (RandR) simply yields frames of the new size, which the recorder turns into a new init
//! segment. Odd sizes are cropped by one pixel, since H.264 4:2:0 needs even ones.
//!
//! `GetImage` copies each frame through the X socket; MIT-SHM (shared memory, no copy) is the
//! planned next step and the reason capture is behind the [`CaptureSource`] trait.

use x11rb::connection::Connection;
use x11rb::protocol::xfixes::ConnectionExt as _;
use x11rb::protocol::xproto::{ConnectionExt as _, ImageFormat, Window};
use x11rb::rust_connection::RustConnection;

use crate::capture::Frame;
use crate::service::{CaptureError, CaptureSource};

/// Captures the root window of an X display.
#[derive(Debug)]
pub struct X11Source {
    conn: RustConnection,
    root: Window,
    cursor: bool,
}

fn err(context: &str) -> impl FnOnce(Box<dyn std::error::Error>) -> CaptureError + '_ {
    move |e| CaptureError(format!("X11 {context}: {e}"))
}

impl X11Source {
    /// Connects to `display` (`None`: `$DISPLAY`).
    pub fn open(display: Option<&str>) -> Result<Self, CaptureError> {
        let (conn, screen) = x11rb::connect(display).map_err(|e| err("connect")(e.into()))?;
        let root = conn.setup().roots[screen].root;
        let depth = conn.setup().roots[screen].root_depth;
        let bpp = conn
            .setup()
            .pixmap_formats
            .iter()
            .find(|f| f.depth == depth)
            .map(|f| f.bits_per_pixel);
        if !(depth == 24 || depth == 32) || bpp != Some(32) {
            return Err(CaptureError(format!(
                "X11 root has depth {depth} at {bpp:?} bits per pixel; only 24/32-bit TrueColor at 32 bpp is supported"
            )));
        }
        // XFixes 4 has GetCursorImage; without it frames have no cursor (and we say so once).
        let cursor = conn
            .xfixes_query_version(4, 0)
            .map_err(|e| err("xfixes")(e.into()))
            .and_then(|c| c.reply().map_err(|e| err("xfixes")(e.into())))
            .is_ok();
        if !cursor {
            tracing::warn!("X server has no XFixes; the cursor will not be drawn");
        }
        Ok(Self { conn, root, cursor })
    }

    fn draw_cursor(&self, frame: &mut Frame) -> Result<(), CaptureError> {
        let c = self
            .conn
            .xfixes_get_cursor_image()
            .map_err(|e| err("cursor")(e.into()))?
            .reply()
            .map_err(|e| err("cursor")(e.into()))?;
        let (left, top) = (
            i32::from(c.x) - i32::from(c.xhot),
            i32::from(c.y) - i32::from(c.yhot),
        );
        for cy in 0..i32::from(c.height) {
            for cx in 0..i32::from(c.width) {
                let (x, y) = (left + cx, top + cy);
                if x < 0 || y < 0 || x >= frame.width as i32 || y >= frame.height as i32 {
                    continue;
                }
                // Premultiplied ARGB.
                let argb = c.cursor_image[(cy * i32::from(c.width) + cx) as usize];
                let a = argb >> 24;
                if a == 0 {
                    continue;
                }
                let at = y as usize * frame.stride + x as usize * 4;
                for (i, shift) in [(0, 0), (1, 8), (2, 16)] {
                    let src = (argb >> shift) & 0xff;
                    let dst = u32::from(frame.data[at + i]);
                    frame.data[at + i] = (src + dst * (255 - a) / 255).min(255) as u8;
                }
            }
        }
        Ok(())
    }
}

impl CaptureSource for X11Source {
    fn grab(&mut self) -> Result<Frame, CaptureError> {
        let geom = self
            .conn
            .get_geometry(self.root)
            .map_err(|e| err("geometry")(e.into()))?
            .reply()
            .map_err(|e| err("geometry")(e.into()))?;
        let img = self
            .conn
            .get_image(
                ImageFormat::Z_PIXMAP,
                self.root,
                0,
                0,
                geom.width,
                geom.height,
                !0,
            )
            .map_err(|e| err("get image")(e.into()))?
            .reply()
            .map_err(|e| err("get image")(e.into()))?;
        let stride = usize::from(geom.width) * 4;
        if img.data.len() < stride * usize::from(geom.height) {
            return Err(CaptureError(format!(
                "X11 image is {} bytes, expected {}",
                img.data.len(),
                stride * usize::from(geom.height)
            )));
        }
        let mut frame = Frame {
            width: u32::from(geom.width) & !1,
            height: u32::from(geom.height) & !1,
            stride,
            data: img.data,
        };
        // X leaves the padding byte undefined; make it opaque so identical screens compare equal.
        for px in frame.data.chunks_exact_mut(4) {
            px[3] = 0xff;
        }
        if self.cursor {
            self.draw_cursor(&mut frame)?;
        }
        Ok(frame)
    }
}
