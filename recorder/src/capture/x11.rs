//! Screen capture on X11: the whole root window (every monitor), with the cursor drawn in.
//!
//! Frames come from `GetImage` of the root window in ZPixmap format (32 bits per pixel, BGRX in
//! memory), and the cursor from XFixes `GetCursorImage`, alpha-blended on top: X servers never
//! include the cursor in images. A screen-size change (RandR) simply yields frames of the new
//! size, which the recorder turns into a new init segment. Odd sizes are cropped by one pixel,
//! since H.264 4:2:0 needs even ones.
//!
//! An idle tick asks the server nothing: it says when something changed instead of being
//! asked. The root's size is read again when the root reports a `ConfigureNotify` (and at least
//! every [`GEOMETRY_EVERY`]); the damage region is fetched only after a `DamageNotify` (sent
//! when it stops being empty); the cursor's image only after an XFixes `CursorNotify` (sent
//! when its shape changes); where the pointer is (`QueryPointer`) only after an XInput 2
//! `RawMotion` (sent for every move of a pointing device, an XTest one included, whichever
//! client's window it is over) and at least every [`POINTER_EVERY`], because a pointer warped
//! by a program (`XWarpPointer`) makes no raw event. Without XInput 2 the pointer is asked for
//! every tick, as it was before 2026-12-04.
//!
//! With the DAMAGE extension (every current X server has it) the server tells us which
//! rectangles changed since the last tick: only those are copied into a persistent image of the
//! screen, and a tick where neither the screen nor the cursor changed copies, compares and
//! encodes nothing ([`Grab::Unchanged`]). That is what makes an idle screen nearly free. Without
//! DAMAGE every tick copies the whole screen and the recorder compares it with the last one.
//!
//! Images travel through MIT-SHM when the server offers it (1.2, a memfd passed to the server):
//! the server writes into shared memory and we `pread` it, instead of pushing megabytes through
//! the socket. Reading with `pread` rather than mapping the segment keeps this crate free of
//! `unsafe` at the cost of one memory copy. Without MIT-SHM, `GetImage` is used.

use x11rb::connection::Connection;
use x11rb::protocol::Event;
use x11rb::protocol::damage::{ConnectionExt as _, ReportLevel};
use x11rb::protocol::shm::ConnectionExt as _;
use x11rb::protocol::xfixes::{ConnectionExt as _, CursorNotifyMask, GetCursorImageReply};
use x11rb::protocol::xproto::{
    ChangeWindowAttributesAux, ConnectionExt as _, EventMask, ImageFormat, Rectangle, Window,
};
use x11rb::rust_connection::RustConnection;

use crate::capture::{CaptureError, CaptureSource, Grab};
use crate::capture::{Frame, Rect};
use crate::cost::{self, Stage};

/// Damage rectangles beyond this many are copied as their bounding box (fewer round trips).
const MAX_RECTS: usize = 32;

/// How often the root's size is read even without a `ConfigureNotify`.
const GEOMETRY_EVERY: std::time::Duration = std::time::Duration::from_secs(2);

/// How often the pointer's position is read even without a raw motion event: how late a
/// pointer warped by a program (which makes none) can be drawn where it is.
pub const POINTER_EVERY: std::time::Duration = std::time::Duration::from_secs(1);

/// The server-side objects that track what changed.
#[derive(Debug, Clone, Copy)]
struct Tracker {
    damage: u32,
    /// An XFixes region the damage is moved into on each tick.
    region: u32,
}

/// A MIT-SHM segment the X server writes images into: a memfd passed to the server (SHM 1.2
/// `AttachFd`), read back with `pread`.
#[derive(Debug)]
struct Shm {
    seg: u32,
    fd: std::os::fd::OwnedFd,
    size: usize,
}

impl Shm {
    /// A segment of `size` bytes attached to the server.
    fn attach(conn: &RustConnection, size: usize) -> Result<Self, CaptureError> {
        let x = |e: Box<dyn std::error::Error>| err("shm")(e);
        let v = conn
            .shm_query_version()
            .map_err(|e| x(e.into()))?
            .reply()
            .map_err(|e| x(e.into()))?;
        if (v.major_version, v.minor_version) < (1, 2) {
            return Err(CaptureError(format!(
                "X11 MIT-SHM {}.{} cannot take a file descriptor (needs 1.2)",
                v.major_version, v.minor_version
            )));
        }
        let fd = rustix::fs::memfd_create("jitrec-capture", rustix::fs::MemfdFlags::CLOEXEC)
            .map_err(|e| x(e.into()))?;
        rustix::fs::ftruncate(&fd, size as u64).map_err(|e| x(e.into()))?;
        let seg = conn.generate_id().map_err(|e| x(e.into()))?;
        let for_server = fd.try_clone().map_err(|e| x(e.into()))?;
        conn.shm_attach_fd(seg, for_server, false)
            .map_err(|e| x(e.into()))?
            .check()
            .map_err(|e| x(e.into()))?;
        Ok(Self { seg, fd, size })
    }

    /// Reads the segment's image of a rectangle `rows` high and `row` bytes wide (packed, as
    /// the server writes it) straight into its place in `dest`: rows `stride` apart from
    /// `first` on. One `preadv` per 1,024 rows (the kernel's bound on its vector), and no
    /// copy in between.
    fn read_rows_into(
        &self,
        dest: &mut [u8],
        first: usize,
        stride: usize,
        row: usize,
        rows: usize,
    ) -> Result<(), CaptureError> {
        /// `IOV_MAX` on Linux.
        const BATCH: usize = 1024;
        let short = || CaptureError("the shared image is shorter than expected".into());
        let mut lines: Vec<std::io::IoSliceMut<'_>> = dest
            .get_mut(first..)
            .ok_or_else(short)?
            .chunks_mut(stride)
            .take(rows)
            .filter_map(|line| line.get_mut(..row).map(std::io::IoSliceMut::new))
            .collect();
        if lines.len() != rows {
            return Err(CaptureError(
                "a damaged rectangle reaches past the screen image".into(),
            ));
        }
        for (b, batch) in lines.chunks_mut(BATCH).enumerate() {
            let mut offset = (b * BATCH * row) as u64;
            let mut bufs = batch;
            while !bufs.is_empty() {
                let n = rustix::io::preadv(&self.fd, bufs, offset)
                    .map_err(|e| CaptureError(format!("reading the shared image: {e}")))?;
                if n == 0 {
                    return Err(short());
                }
                offset += n as u64;
                std::io::IoSliceMut::advance_slices(&mut bufs, n);
            }
        }
        Ok(())
    }

    fn read_into(&self, buf: &mut [u8]) -> Result<(), CaptureError> {
        let mut done = 0;
        while done < buf.len() {
            let n = rustix::io::pread(&self.fd, &mut buf[done..], done as u64)
                .map_err(|e| CaptureError(format!("reading the shared image: {e}")))?;
            if n == 0 {
                return Err(CaptureError(
                    "the shared image is shorter than expected".into(),
                ));
            }
            done += n;
        }
        Ok(())
    }
}

/// Captures the root window of an X display.
#[derive(Debug)]
pub struct X11Source {
    conn: RustConnection,
    root: Window,
    cursor: bool,
    tracker: Option<Tracker>,
    /// The screen without the cursor as of the last grab, full (uncropped) size.
    screen: Option<Frame>,
    /// Position and serial of the cursor in the last frame.
    last_cursor: Option<(i16, i16, u32)>,
    /// Where the cursor was drawn in the last frame.
    last_cursor_rect: Option<Rect>,
    /// Shared memory for images (`None`: copy through the socket).
    shm: Option<Shm>,
    /// Whether MIT-SHM failed once (then the socket is used for the rest of the session).
    shm_failed: bool,
    /// The root's size as last read, and when (`None`: to be read).
    size: Option<(u16, u16, std::time::Instant)>,
    /// Whether the server has reported damage since the region was last fetched.
    damaged: bool,
    /// The cursor's image as last read (`None`: to be read, after a `CursorNotify`).
    cursor_image: Option<GetCursorImageReply>,
    /// The pixels of the pictures handed over.
    handover: Handover,
    /// Whether the server sends raw motion events (XInput 2), so the pointer need not be asked
    /// for every tick.
    pointer_told: bool,
    /// Whether the pointer moved (a raw motion event) since its position was last read.
    pointer_moved: bool,
    /// When the pointer's position was last read.
    pointer_read: Option<std::time::Instant>,
}

/// Pictures handed over, newest last: where each one's pixels are, and what changed on the
/// screen (cursor included) between the one before it and it (`None`: anything may have).
#[derive(Debug, Default)]
struct Handover {
    handed: std::collections::VecDeque<(usize, Option<Vec<Rect>>)>,
    /// A buffer of a picture the encoding side is done with.
    spare: Option<Vec<u8>>,
}

/// Pictures remembered in [`Handover`]: the tick queue and the encoding side's last picture
/// hold three at most, so a buffer comes back within a few.
const HANDED: usize = 8;

impl Handover {
    /// The pixels of the picture to hand over now: `screen` (without the cursor), of which
    /// `changed` changed since the last picture handed over.
    ///
    /// A spent buffer holds an earlier picture handed over (the encoding side never writes into
    /// a picture), so only what changed since that one is copied into it. It is found by its
    /// address among the pictures handed over, newest first: an allocation lives from its
    /// handover until it comes back, so no later handover can have had its address, and an
    /// earlier one that did only makes more be copied. Otherwise, and when much changed, all
    /// of the screen is copied.
    fn pixels(&mut self, screen: &Frame, changed: Option<&[Rect]>) -> Vec<u8> {
        let spare = self.spare.take().filter(|b| b.len() == screen.data.len());
        let since = spare.as_ref().and_then(|b| {
            let at = b.as_ptr() as usize;
            self.handed.iter().rposition(|(addr, _)| *addr == at)
        });
        let data = match (spare, since) {
            (Some(mut buffer), Some(i)) => {
                let mut rects = Vec::new();
                let mut all = changed.is_none();
                for (_, c) in self.handed.iter().skip(i + 1) {
                    match c {
                        Some(c) => rects.extend_from_slice(c),
                        None => all = true,
                    }
                }
                rects.extend_from_slice(changed.unwrap_or_default());
                if all {
                    buffer.copy_from_slice(&screen.data);
                } else {
                    copy_union(screen, &mut buffer, &rects);
                }
                buffer
            }
            (Some(mut buffer), None) => {
                buffer.copy_from_slice(&screen.data);
                buffer
            }
            (None, _) => screen.data.clone(),
        };
        self.handed
            .push_back((data.as_ptr() as usize, changed.map(<[Rect]>::to_vec)));
        if self.handed.len() > HANDED {
            self.handed.pop_front();
        }
        data
    }
}

/// Side of the square tiles [`copy_union`] marks: a row of one is a few cache lines, and a
/// 1080p screen has 60 x 34 of them.
const TILE: u32 = 32;

/// Copies from `screen` into `into` every pixel that `rects` touch, each once, rounded out to
/// [`TILE`]s; all of it when three quarters of the tiles are touched (one copy is quicker).
///
/// The rectangles of the pictures since a spent buffer's overlap: a terminal scrolling
/// changes the same area in each, and their sum passed a third of the screen long before
/// their union did (until 2026-12-04 that copied the whole screen, 8 MB at 1080p, each
/// picture of a scroll: most of the capture thread's time in the recorder benchmark).
fn copy_union(screen: &Frame, into: &mut [u8], rects: &[Rect]) {
    let (tw, th) = (
        screen.width.div_ceil(TILE) as usize,
        screen.height.div_ceil(TILE) as usize,
    );
    let mut touched = vec![false; tw * th];
    let mut count = 0usize;
    for r in rects {
        let x1 = r.x.saturating_add(r.w).min(screen.width);
        let y1 = r.y.saturating_add(r.h).min(screen.height);
        if r.x >= x1 || r.y >= y1 {
            continue;
        }
        for ty in (r.y / TILE) as usize..y1.div_ceil(TILE) as usize {
            for t in
                &mut touched[ty * tw + (r.x / TILE) as usize..ty * tw + x1.div_ceil(TILE) as usize]
            {
                count += usize::from(!*t);
                *t = true;
            }
        }
    }
    if count * 4 >= tw * th * 3 {
        into.copy_from_slice(&screen.data);
        return;
    }
    for (ty, row) in touched.chunks(tw).enumerate() {
        let mut tx = 0;
        while tx < tw {
            if !row[tx] {
                tx += 1;
                continue;
            }
            let from = tx;
            while tx < tw && row[tx] {
                tx += 1;
            }
            copy_rows(
                screen,
                into,
                Rect {
                    x: from as u32 * TILE,
                    y: ty as u32 * TILE,
                    w: (tx - from) as u32 * TILE,
                    h: TILE,
                },
            );
        }
    }
}

/// Copies rectangle `r` (clipped to the screen) of `screen`'s pixels into `into`, a buffer
/// laid out as `screen`'s.
fn copy_rows(screen: &Frame, into: &mut [u8], r: Rect) {
    let x1 = r.x.saturating_add(r.w).min(screen.width) as usize;
    let y1 = r.y.saturating_add(r.h).min(screen.height) as usize;
    let x0 = (r.x as usize).min(x1);
    for y in (r.y as usize).min(y1)..y1 {
        let row = y * screen.stride + x0 * 4..y * screen.stride + x1 * 4;
        into[row.clone()].copy_from_slice(&screen.data[row]);
    }
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
        // Told, not asked: the root's size changes and the cursor's shape changes come as
        // events (a failure only means asking every tick).
        let _ = conn.change_window_attributes(
            root,
            &ChangeWindowAttributesAux::new().event_mask(EventMask::STRUCTURE_NOTIFY),
        );
        if cursor {
            let _ = conn.xfixes_select_cursor_input(root, CursorNotifyMask::DISPLAY_CURSOR);
        }
        let pointer_told = cursor
            && Self::tell_pointer(&conn, root)
                .map_err(|e| tracing::info!(error = %e, "no XInput 2 raw motion; the pointer is asked for every tick"))
                .is_ok();
        let tracker = if cursor {
            Self::track(&conn, root)
                .map_err(|e| tracing::warn!(error = %e, "no X DAMAGE tracking; every tick copies the whole screen"))
                .ok()
        } else {
            None
        };
        Ok(Self {
            conn,
            root,
            cursor,
            tracker,
            screen: None,
            last_cursor: None,
            last_cursor_rect: None,
            shm: None,
            shm_failed: false,
            size: None,
            damaged: true,
            cursor_image: None,
            handover: Handover::default(),
            pointer_told,
            pointer_moved: true,
            pointer_read: None,
        })
    }

    /// Asks for XInput 2 raw motion events on the root window, which the server sends for every
    /// device's moves whichever client's window the pointer is over (XI 2.1: during grabs too).
    fn tell_pointer(conn: &RustConnection, root: Window) -> Result<(), CaptureError> {
        use x11rb::protocol::xinput::{self, ConnectionExt as _};
        let x = |e: Box<dyn std::error::Error>| err("xinput")(e);
        // The version must be asked before any other XInput 2 request is accepted.
        let v = conn
            .xinput_xi_query_version(2, 1)
            .map_err(|e| x(e.into()))?
            .reply()
            .map_err(|e| x(e.into()))?;
        if v.major_version < 2 {
            return Err(CaptureError(format!(
                "X server has XInput {}.{}, not 2",
                v.major_version, v.minor_version
            )));
        }
        conn.xinput_xi_select_events(
            root,
            &[xinput::EventMask {
                deviceid: xinput::Device::ALL.into(),
                mask: vec![xinput::XIEventMask::RAW_MOTION],
            }],
        )
        .map_err(|e| x(e.into()))?
        .check()
        .map_err(|e| x(e.into()))?;
        Ok(())
    }

    /// Whether images come through MIT-SHM (known after the first grab).
    pub fn shared_memory(&self) -> bool {
        self.shm.is_some()
    }

    /// Whether the server reports the pointer's moves (XInput 2), so unchanged ticks ask it
    /// nothing.
    pub fn pointer_events(&self) -> bool {
        self.pointer_told
    }

    /// Whether the server reports damage, so unchanged ticks cost no copy.
    pub fn damage_tracking(&self) -> bool {
        self.tracker.is_some()
    }

    /// Starts damage tracking of the root window (needs DAMAGE 1.1 and XFixes regions).
    fn track(conn: &RustConnection, root: Window) -> Result<Tracker, CaptureError> {
        let x = |e: Box<dyn std::error::Error>| err("damage")(e);
        conn.damage_query_version(1, 1)
            .map_err(|e| x(e.into()))?
            .reply()
            .map_err(|e| x(e.into()))?;
        let damage = conn.generate_id().map_err(|e| x(e.into()))?;
        conn.damage_create(damage, root, ReportLevel::NON_EMPTY)
            .map_err(|e| x(e.into()))?
            .check()
            .map_err(|e| x(e.into()))?;
        let region = conn.generate_id().map_err(|e| x(e.into()))?;
        conn.xfixes_create_region(region, &[])
            .map_err(|e| x(e.into()))?
            .check()
            .map_err(|e| x(e.into()))?;
        Ok(Tracker { damage, region })
    }

    /// Copies `r` of the root window into `screen`: through shared memory when the segment is
    /// there, else through the socket. Without damage tracking the padding byte is made opaque
    /// as well (see below).
    fn copy_rect(&mut self, screen: &mut Frame, r: Rectangle) -> Result<(), CaptureError> {
        let row = usize::from(r.width) * 4;
        let len = row * usize::from(r.height);
        let whole_rows = r.x == 0 && row == screen.stride;
        let at = |i: usize| (r.y as usize + i) * screen.stride + r.x as usize * 4;
        if let Some(shm) = self.shm.as_mut().filter(|s| s.size >= len) {
            self.conn
                .shm_get_image(
                    self.root,
                    r.x,
                    r.y,
                    r.width,
                    r.height,
                    !0,
                    ImageFormat::Z_PIXMAP.into(),
                    shm.seg,
                    0,
                )
                .map_err(|e| err("shm get image")(e.into()))?
                .reply()
                .map_err(|e| err("shm get image")(e.into()))?;
            // Read the segment with pread rather than mapping it: no `unsafe`, and one copy
            // where GetImage costs the server a socket write and us a read. A rectangle
            // narrower than the screen is read row by row into place (one vectored read).
            if whole_rows {
                let start = at(0);
                shm.read_into(&mut screen.data[start..start + len])?;
            } else {
                let stride = screen.stride;
                shm.read_rows_into(&mut screen.data, at(0), stride, row, usize::from(r.height))?;
            }
        } else {
            let img = self
                .conn
                .get_image(
                    ImageFormat::Z_PIXMAP,
                    self.root,
                    r.x,
                    r.y,
                    r.width,
                    r.height,
                    !0,
                )
                .map_err(|e| err("get image")(e.into()))?
                .reply()
                .map_err(|e| err("get image")(e.into()))?;
            if img.data.len() < len {
                return Err(CaptureError(format!(
                    "X11 image is {} bytes, expected {len}",
                    img.data.len()
                )));
            }
            for (i, src) in img
                .data
                .chunks_exact(row)
                .take(usize::from(r.height))
                .enumerate()
            {
                screen.data[at(i)..at(i) + row].copy_from_slice(src);
            }
        }
        // X leaves the padding byte undefined. Only frames without damage tracking are
        // compared whole with the one before (the recorder's idle test), so only those are
        // made opaque, that identical screens compare equal; with damage nothing reads the
        // byte (conversion and the cursor's blending use colour alone), and the pass would
        // cost as much as the copy itself.
        if self.tracker.is_some() {
            return Ok(());
        }
        for i in 0..usize::from(r.height) {
            for px in screen.data[at(i)..at(i) + row].chunks_exact_mut(4) {
                px[3] = 0xff;
            }
        }
        Ok(())
    }

    /// The rectangles damaged since the last call, clipped to `w` x `h`, and clears them.
    fn take_damage(&self, t: Tracker, w: u16, h: u16) -> Result<Vec<Rectangle>, CaptureError> {
        self.conn
            .damage_subtract(t.damage, x11rb::NONE, t.region)
            .map_err(|e| err("damage")(e.into()))?;
        let reply = self
            .conn
            .xfixes_fetch_region(t.region)
            .map_err(|e| err("damage")(e.into()))?
            .reply()
            .map_err(|e| err("damage")(e.into()))?;
        let clip = |r: &Rectangle| {
            let x0 = r.x.max(0) as u16;
            let y0 = r.y.max(0) as u16;
            let x1 = (i32::from(r.x) + i32::from(r.width)).clamp(0, i32::from(w)) as u16;
            let y1 = (i32::from(r.y) + i32::from(r.height)).clamp(0, i32::from(h)) as u16;
            (x1 > x0 && y1 > y0).then(|| Rectangle {
                x: x0 as i16,
                y: y0 as i16,
                width: x1 - x0,
                height: y1 - y0,
            })
        };
        let mut rects: Vec<Rectangle> = reply.rectangles.iter().filter_map(clip).collect();
        if rects.len() > MAX_RECTS {
            let x0 = rects.iter().map(|r| r.x).min().unwrap_or(0);
            let y0 = rects.iter().map(|r| r.y).min().unwrap_or(0);
            let x1 = rects
                .iter()
                .map(|r| r.x as u16 + r.width)
                .max()
                .unwrap_or(0);
            let y1 = rects
                .iter()
                .map(|r| r.y as u16 + r.height)
                .max()
                .unwrap_or(0);
            rects = vec![Rectangle {
                x: x0,
                y: y0,
                width: x1 - x0 as u16,
                height: y1 - y0 as u16,
            }];
        }
        Ok(rects)
    }

    /// Brings [`X11Source::cursor_image`] up to date: its position from where the pointer is
    /// now (read after it moved, or [`POINTER_EVERY`]), its image read again only after a
    /// `CursorNotify` dropped it.
    fn refresh_cursor(&mut self) -> Result<(), CaptureError> {
        match &mut self.cursor_image {
            Some(image) => {
                let now = std::time::Instant::now();
                if self.pointer_told
                    && !self.pointer_moved
                    && self
                        .pointer_read
                        .is_some_and(|at| now.duration_since(at) < POINTER_EVERY)
                {
                    return Ok(());
                }
                // Cleared before the read: a move after it comes as an event for next tick.
                self.pointer_moved = false;
                self.pointer_read = Some(now);
                let p = self
                    .conn
                    .query_pointer(self.root)
                    .map_err(|e| err("pointer")(e.into()))?
                    .reply()
                    .map_err(|e| err("pointer")(e.into()))?;
                (image.x, image.y) = (p.root_x, p.root_y);
            }
            None => {
                let image = self
                    .conn
                    .xfixes_get_cursor_image()
                    .map_err(|e| err("cursor")(e.into()))?
                    .reply()
                    .map_err(|e| err("cursor")(e.into()))?;
                self.cursor_image = Some(image);
            }
        }
        Ok(())
    }

    fn draw_cursor(frame: &mut Frame, c: &GetCursorImageReply) {
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
    }
}

impl CaptureSource for X11Source {
    fn reuse(&mut self, buffer: Vec<u8>) {
        // One is enough (one picture is handed over per tick); the newest needs least copying.
        self.handover.spare = Some(buffer);
    }

    fn grab(&mut self) -> Result<Grab, CaptureError> {
        let started = cost::thread_time();
        // What the server told us since the last tick.
        while let Some(event) = self
            .conn
            .poll_for_event()
            .map_err(|e| err("events")(e.into()))?
        {
            match event {
                Event::DamageNotify(_) => self.damaged = true,
                Event::ConfigureNotify(c) if c.window == self.root => self.size = None,
                Event::XfixesCursorNotify(_) => self.cursor_image = None,
                Event::XinputRawMotion(_) => self.pointer_moved = true,
                _ => {}
            }
        }
        let (w, h) = match self.size {
            Some((w, h, at)) if at.elapsed() < GEOMETRY_EVERY => (w, h),
            _ => {
                let geom = self
                    .conn
                    .get_geometry(self.root)
                    .map_err(|e| err("geometry")(e.into()))?
                    .reply()
                    .map_err(|e| err("geometry")(e.into()))?;
                self.size = Some((geom.width, geom.height, std::time::Instant::now()));
                (geom.width, geom.height)
            }
        };
        let same_size = self
            .screen
            .as_ref()
            .is_some_and(|s| s.width == u32::from(w) && s.height == u32::from(h));
        let mut screen = match self.screen.take() {
            Some(s) if same_size => s,
            _ => Frame::solid(u32::from(w), u32::from(h), [0, 0, 0, 0xff]),
        };
        let full = Rectangle {
            x: 0,
            y: 0,
            width: w,
            height: h,
        };
        let bytes = usize::from(w) * usize::from(h) * 4;
        if !self.shm_failed && self.shm.as_ref().is_none_or(|s| s.size != bytes) {
            if let Some(old) = self.shm.take() {
                let _ = self.conn.shm_detach(old.seg);
            }
            match Shm::attach(&self.conn, bytes) {
                Ok(s) => self.shm = Some(s),
                Err(e) => {
                    tracing::warn!(error = %e, "no MIT-SHM; images are copied through the X socket");
                    self.shm_failed = true;
                }
            }
        }
        // What changed: `Some(rects)` when damage says exactly where, `None` for "anything".
        let rects = match self.tracker {
            Some(_) if same_size && !self.damaged => Some(Vec::new()),
            Some(t) => {
                self.damaged = false;
                let rects = self.take_damage(t, w, h)?;
                // New size (or first grab): the damage is cleared first, so whatever changes
                // after the whole copy below is reported next tick.
                same_size.then_some(rects)
            }
            None => None,
        };
        cost::add(Stage::Damage, cost::thread_time().saturating_sub(started));
        let started = cost::thread_time();
        let damaged: Option<Vec<Rect>> = match rects {
            Some(rects) => {
                for r in &rects {
                    self.copy_rect(&mut screen, *r)?;
                }
                Some(
                    rects
                        .iter()
                        .map(|r| Rect {
                            x: r.x as u32,
                            y: r.y as u32,
                            w: u32::from(r.width),
                            h: u32::from(r.height),
                        })
                        .collect(),
                )
            }
            None => {
                self.copy_rect(&mut screen, full)?;
                None
            }
        };
        cost::add(Stage::Grab, cost::thread_time().saturating_sub(started));
        let started = cost::thread_time();
        if self.cursor {
            self.refresh_cursor()?;
        }
        // Taken for this grab and put back before it returns (no copy of its pixels per tick).
        let cursor = self.cursor_image.take();
        cost::add(Stage::Cursor, cost::thread_time().saturating_sub(started));
        let cursor_key = cursor.as_ref().map(|c| (c.x, c.y, c.cursor_serial));
        let cursor_moved = cursor_key != self.last_cursor;
        self.last_cursor = cursor_key;
        if damaged.as_ref().is_some_and(Vec::is_empty) && !cursor_moved {
            self.screen = Some(screen);
            self.cursor_image = cursor;
            return Ok(Grab::Unchanged);
        }
        let cursor_rect = cursor.as_ref().map(|c| Rect {
            x: (i32::from(c.x) - i32::from(c.xhot)).max(0) as u32,
            y: (i32::from(c.y) - i32::from(c.yhot)).max(0) as u32,
            w: u32::from(c.width),
            h: u32::from(c.height),
        });
        let last_cursor_rect = std::mem::replace(&mut self.last_cursor_rect, cursor_rect);
        // The cursor is drawn by us, not the server: where it was and where it is now changed
        // too.
        let changed = damaged.map(|mut rects| {
            rects.extend(last_cursor_rect);
            rects.extend(cursor_rect);
            rects
        });
        // The picture handed over is a copy: the screen image goes on being updated in place
        // and carries no cursor.
        let mut frame = cost::measure(Stage::Grab, || Frame {
            width: u32::from(w) & !1,
            height: u32::from(h) & !1,
            stride: screen.stride,
            data: self.handover.pixels(&screen, changed.as_deref()),
        });
        self.screen = Some(screen);
        if let Some(c) = &cursor {
            Self::draw_cursor(&mut frame, c);
        }
        self.cursor_image = cursor;
        Ok(match changed {
            Some(rects) => Grab::Partial(frame, rects),
            None => Grab::Frame(frame),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A rectangle narrower than the screen is read from the segment straight into its rows,
    /// in batches of the kernel's vector bound (1,100 rows: two), and nothing else changes.
    #[test]
    fn a_narrow_rectangle_is_read_into_its_rows_in_place() {
        let (stride, x, y, row, rows) = (64usize, 12usize, 3usize, 20usize, 1_100usize);
        let packed: Vec<u8> = (0..row * rows).map(|i| (i % 251) as u8).collect();
        let fd = rustix::fs::memfd_create("jitrec-test", rustix::fs::MemfdFlags::CLOEXEC).unwrap();
        rustix::io::write(&fd, &packed).unwrap();
        let shm = Shm {
            seg: 0,
            fd,
            size: packed.len(),
        };
        let mut screen = vec![7u8; stride * (y + rows + 2)];
        shm.read_rows_into(&mut screen, y * stride + x, stride, row, rows)
            .unwrap();
        for (i, line) in screen.chunks(stride).enumerate() {
            for (j, &b) in line.iter().enumerate() {
                let inside = (y..y + rows).contains(&i) && (x..x + row).contains(&j);
                let want = if inside {
                    packed[(i - y) * row + j - x]
                } else {
                    7
                };
                assert_eq!(b, want, "row {i}, byte {j}");
            }
        }
        // A rectangle past the image's end is refused, not read short.
        assert!(
            shm.read_rows_into(&mut screen, (y + 10) * stride + x, stride, row, rows)
                .is_err()
        );
    }

    /// A screen that changes in `rects` to colour `c`.
    fn paint(screen: &mut Frame, rects: &[Rect], c: u8) {
        for r in rects {
            screen.fill(r.x, r.y, r.w, r.h, [c, c.wrapping_mul(3), 255 - c, 255]);
        }
    }

    /// Overlapping rectangles (a terminal's area changed in each of three pictures, whose sum
    /// is past a third of the screen), one reaching past its edge: everything they touch is
    /// copied, nothing beyond the tiles they touch is (the rest of the buffer keeps its own
    /// pixels), and at three quarters of the tiles the whole screen is.
    #[test]
    fn the_union_of_overlapping_rectangles_is_copied_once_and_no_more() {
        let (w, h) = (200, 100);
        let mut screen = Frame::solid(w, h, [1, 2, 3, 255]);
        for (i, px) in screen.data.iter_mut().enumerate() {
            *px = (i % 251) as u8;
        }
        let pane = Rect {
            x: 40,
            y: 10,
            w: 90,
            h: 50,
        };
        let edge = Rect {
            x: 190,
            y: 90,
            w: 30,
            h: 30,
        };
        let rects = [pane, pane, pane, edge];
        assert!(rects.iter().map(Rect::area).sum::<u64>() * 3 >= u64::from(w * h));
        let mut into = vec![0u8; screen.data.len()];
        copy_union(&screen, &mut into, &rects);
        let tiled = |x: u32, y: u32, r: &Rect| {
            let t = |v: u32| v / TILE;
            t(x) >= t(r.x)
                && t(x) <= t((r.x + r.w - 1).min(w - 1))
                && t(y) >= t(r.y)
                && t(y) <= t((r.y + r.h - 1).min(h - 1))
        };
        let (mut inside, mut outside) = (0, 0);
        for y in 0..h {
            for x in 0..w {
                let at = (y * w + x) as usize * 4;
                let copied = into[at..at + 4] == screen.data[at..at + 4];
                let touched = rects
                    .iter()
                    .any(|r| x >= r.x && x < r.x + r.w && y >= r.y && y < r.y + r.h);
                if touched {
                    assert!(copied, "({x}, {y}) is in a rectangle and was not copied");
                    inside += 1;
                } else if !rects.iter().any(|r| tiled(x, y, r)) {
                    assert_eq!(
                        into[at..at + 4],
                        [0; 4],
                        "({x}, {y}) is past every rectangle's tiles and was copied"
                    );
                    outside += 1;
                }
            }
        }
        assert!(inside > 0 && outside > 0);
        let mut into = vec![0u8; screen.data.len()];
        copy_union(
            &screen,
            &mut into,
            &[Rect {
                x: 0,
                y: 0,
                w,
                h: 80,
            }],
        );
        assert!(
            into == screen.data,
            "three quarters of the tiles or more: all of the screen"
        );
    }

    /// Every picture handed over shows the screen as it is, whether its pixels were copied
    /// afresh, into a spent buffer all over, or into a spent buffer only where the screen
    /// changed since that buffer's picture: over small and whole-screen changes, a "cursor"
    /// drawn into each picture after its handover (as the grab does), buffers that come back
    /// late or never (freed, so their addresses may be taken by later pictures), and one that
    /// comes back long after its picture left the handover's memory.
    #[test]
    fn pictures_handed_over_in_spent_buffers_show_the_screen_as_it_is() {
        let (w, h) = (96, 50);
        let mut screen = Frame::solid(w, h, [10, 20, 30, 255]);
        let mut handover = Handover::default();
        let mut held: std::collections::VecDeque<Vec<u8>> = Default::default();
        let mut partial_copies = 0;
        let mut last_cursor: Option<Rect> = None;
        let mut ancient: Option<Vec<u8>> = None;
        for step in 0u32..60 {
            let mut changed = vec![Rect {
                x: (step * 7) % (w - 9),
                y: (step * 5) % (h - 3),
                w: 9,
                h: 3,
            }];
            if step % 13 == 5 {
                changed.push(Rect { x: 0, y: 0, w, h });
            }
            paint(&mut screen, &changed, step as u8);
            let cursor = Rect {
                x: (step * 11) % w,
                y: (step * 3) % h,
                w: 6,
                h: 6,
            };
            changed.extend(last_cursor);
            changed.push(cursor);
            last_cursor = Some(cursor);
            let all = step % 17 == 3;
            if step == 40 {
                // Handed over at step 2, 38 pictures ago: copied all over.
                handover.spare = ancient.take();
            } else if let Some(back) = held.pop_front() {
                handover.spare = Some(back);
            }
            let before = handover.spare.as_ref().map(|b| b.as_ptr());
            let mut data = handover.pixels(&screen, (!all).then_some(&changed[..]));
            if step != 40 && before == Some(data.as_ptr()) && !all {
                partial_copies += 1;
            }
            assert!(
                data == screen.data,
                "step {step}: the picture is not the screen"
            );
            // The grab draws the cursor into the picture it hands over.
            let mut shown = Frame {
                width: w,
                height: h,
                stride: screen.stride,
                data: std::mem::take(&mut data),
            };
            shown.fill(cursor.x, cursor.y, cursor.w, cursor.h, [1, 2, 3, 255]);
            // The encoding side gives buffers back one or two pictures late; some never.
            if step == 2 {
                ancient = Some(shown.data);
            } else if step % 9 != 7 {
                held.push_back(shown.data);
            }
            if held.len() > 2 {
                held.pop_front();
            }
        }
        assert!(partial_copies > 20, "{partial_copies}");
    }
}
