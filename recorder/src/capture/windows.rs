//! Screen capture on Windows, behind the same [`CaptureSource`] as X11: everything after the
//! grab (change detection, conversion, encoding, chunking) is shared.
//!
//! [`WgcSource`] uses Windows Graphics Capture (the `windows-capture` crate): one capture per
//! monitor, the cursor included, each delivering frames on its own thread into a slot; a grab
//! composes the latest frame of every monitor side by side, left to right in the order Windows
//! enumerates them. Where Graphics Capture cannot start (Windows 10 before 1903, no D3D11
//! device, some remote sessions), [`GdiSource`] copies the whole virtual screen (every monitor
//! at its real position) with GDI and draws the cursor. [`open`] picks the first that works; if
//! neither does, the recorder reports a capture error event and keeps trying.

#![allow(unsafe_code)]

use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use windows_capture::capture::{Context, GraphicsCaptureApiHandler};
use windows_capture::frame::Frame as WgcFrame;
use windows_capture::graphics_capture_api::InternalCaptureControl;
use windows_capture::monitor::Monitor;
use windows_capture::settings::{
    ColorFormat, CursorCaptureSettings, DirtyRegionSettings, DrawBorderSettings,
    MinimumUpdateIntervalSettings, SecondaryWindowSettings, Settings,
};
use windows_sys::Win32::Foundation::HWND;
use windows_sys::Win32::Graphics::Gdi::{
    BI_RGB, BITMAPINFO, BITMAPINFOHEADER, BitBlt, CAPTUREBLT, CreateCompatibleBitmap,
    CreateCompatibleDC, DIB_RGB_COLORS, DeleteDC, DeleteObject, GetDC, GetDIBits, HBITMAP, HDC,
    HGDIOBJ, ReleaseDC, SRCCOPY, SelectObject,
};
use windows_sys::Win32::UI::WindowsAndMessaging::{
    CURSOR_SHOWING, CURSORINFO, DI_NORMAL, DrawIconEx, GetCursorInfo, GetSystemMetrics,
    SM_CXVIRTUALSCREEN, SM_CYVIRTUALSCREEN, SM_XVIRTUALSCREEN, SM_YVIRTUALSCREEN,
};

use crate::capture::Frame;
use crate::capture::{CaptureError, CaptureSource, Grab};

/// The first capture that starts: Graphics Capture, else GDI.
pub fn open() -> Result<Box<dyn CaptureSource>, CaptureError> {
    match WgcSource::open() {
        Ok(s) => Ok(Box::new(s)),
        Err(wgc) => {
            tracing::warn!(error = %wgc, "Windows Graphics Capture unavailable; capturing with GDI");
            GdiSource::open()
                .map(|s| Box::new(s) as Box<dyn CaptureSource>)
                .map_err(|gdi| {
                    CaptureError(format!(
                        "no screen capture works: Graphics Capture: {wgc}; GDI: {gdi}"
                    ))
                })
        }
    }
}

impl CaptureSource for Box<dyn CaptureSource> {
    fn grab(&mut self) -> Result<Grab, CaptureError> {
        (**self).grab()
    }

    fn reuse(&mut self, buffer: Vec<u8>) {
        (**self).reuse(buffer);
    }
}

/// The latest frame of one monitor, shared with its capture thread.
type Slot = Arc<Mutex<Option<Frame>>>;

struct Handler {
    slot: Slot,
    scratch: Vec<u8>,
}

impl GraphicsCaptureApiHandler for Handler {
    type Flags = Slot;
    type Error = String;

    fn new(ctx: Context<Self::Flags>) -> Result<Self, Self::Error> {
        Ok(Self {
            slot: ctx.flags,
            scratch: Vec::new(),
        })
    }

    fn on_frame_arrived(
        &mut self,
        frame: &mut WgcFrame,
        _control: InternalCaptureControl,
    ) -> Result<(), Self::Error> {
        let (width, height) = (frame.width(), frame.height());
        let buffer = frame.buffer().map_err(|e| e.to_string())?;
        let data = buffer.as_nopadding_buffer(&mut self.scratch).to_vec();
        *self.slot.lock().unwrap_or_else(PoisonError::into_inner) = Some(Frame {
            width,
            height,
            stride: width as usize * 4,
            data,
        });
        Ok(())
    }
}

/// Windows Graphics Capture of every monitor.
pub struct WgcSource {
    slots: Vec<Slot>,
    controls: Vec<windows_capture::capture::CaptureControl<Handler, String>>,
    opened: Instant,
}

/// How long after opening a monitor may still have delivered no frame before that counts as a
/// capture failure. Graphics Capture delivers its first frame asynchronously; until then a tick
/// simply has nothing new.
const FIRST_FRAME_GRACE: Duration = Duration::from_secs(2);

impl WgcSource {
    pub fn open() -> Result<WgcSource, CaptureError> {
        let monitors = Monitor::enumerate().map_err(|e| CaptureError(e.to_string()))?;
        if monitors.is_empty() {
            return Err(CaptureError("no monitors".into()));
        }
        let mut slots = Vec::new();
        let mut controls = Vec::new();
        for m in monitors {
            let slot: Slot = Arc::new(Mutex::new(None));
            let settings = Settings::new(
                m,
                CursorCaptureSettings::WithCursor,
                DrawBorderSettings::WithoutBorder,
                SecondaryWindowSettings::Default,
                MinimumUpdateIntervalSettings::Default,
                DirtyRegionSettings::Default,
                ColorFormat::Bgra8,
                Arc::clone(&slot),
            );
            let control = Handler::start_free_threaded(settings)
                .map_err(|e| CaptureError(format!("Graphics Capture: {e}")))?;
            slots.push(slot);
            controls.push(control);
        }
        Ok(WgcSource {
            slots,
            controls,
            opened: Instant::now(),
        })
    }
}

impl Drop for WgcSource {
    fn drop(&mut self) {
        for c in self.controls.drain(..) {
            let _ = c.stop();
        }
    }
}

impl CaptureSource for WgcSource {
    fn grab(&mut self) -> Result<Grab, CaptureError> {
        if self.controls.iter().any(|c| c.is_finished()) {
            return Err(CaptureError(
                "a monitor's capture ended (display change?)".into(),
            ));
        }
        let frames: Option<Vec<Frame>> = self
            .slots
            .iter()
            .map(|s| s.lock().unwrap_or_else(PoisonError::into_inner).clone())
            .collect();
        match frames {
            Some(frames) => Ok(Grab::Frame(side_by_side(&frames))),
            None if self.opened.elapsed() < FIRST_FRAME_GRACE => Ok(Grab::Unchanged),
            None => Err(CaptureError(format!(
                "a monitor delivered no frame within {} s of starting Graphics Capture",
                FIRST_FRAME_GRACE.as_secs()
            ))),
        }
    }
}

/// Monitors next to each other, top-aligned, black below the shorter ones; even dimensions
/// (4:2:0 video needs them).
fn side_by_side(frames: &[Frame]) -> Frame {
    let width = frames
        .iter()
        .map(|f| f.width)
        .sum::<u32>()
        .next_multiple_of(2);
    let height = frames
        .iter()
        .map(|f| f.height)
        .max()
        .unwrap_or(0)
        .next_multiple_of(2);
    let mut out = Frame::solid(width, height, [0, 0, 0, 255]);
    let mut x0 = 0usize;
    for f in frames {
        let row_bytes = f.width as usize * 4;
        for y in 0..f.height as usize {
            let src = &f.data[y * f.stride..y * f.stride + row_bytes];
            let at = y * out.stride + x0 * 4;
            out.data[at..at + row_bytes].copy_from_slice(src);
        }
        x0 += f.width as usize;
    }
    out
}

/// GDI copy of the virtual screen (all monitors at their positions), with the cursor.
pub struct GdiSource {
    screen: HDC,
    memory: HDC,
    bitmap: HBITMAP,
    old: HGDIOBJ,
    x: i32,
    y: i32,
    width: i32,
    height: i32,
}

impl GdiSource {
    pub fn open() -> Result<GdiSource, CaptureError> {
        // SAFETY: plain metric queries.
        let (x, y, width, height) = unsafe {
            (
                GetSystemMetrics(SM_XVIRTUALSCREEN),
                GetSystemMetrics(SM_YVIRTUALSCREEN),
                GetSystemMetrics(SM_CXVIRTUALSCREEN) & !1,
                GetSystemMetrics(SM_CYVIRTUALSCREEN) & !1,
            )
        };
        if width <= 0 || height <= 0 {
            return Err(CaptureError("no desktop to capture (session 0?)".into()));
        }
        // SAFETY: the screen DC of this session's desktop; released in Drop.
        let screen = unsafe { GetDC(std::ptr::null_mut::<core::ffi::c_void>() as HWND) };
        if screen.is_null() {
            return Err(CaptureError("GetDC(NULL) failed".into()));
        }
        // SAFETY: compatible DC and bitmap for `screen`, released in Drop.
        let (memory, bitmap) = unsafe {
            (
                CreateCompatibleDC(screen),
                CreateCompatibleBitmap(screen, width, height),
            )
        };
        if memory.is_null() || bitmap.is_null() {
            // SAFETY: releasing what was obtained above.
            unsafe {
                if !memory.is_null() {
                    DeleteDC(memory);
                }
                if !bitmap.is_null() {
                    DeleteObject(bitmap);
                }
                ReleaseDC(std::ptr::null_mut(), screen);
            }
            return Err(CaptureError("cannot create a GDI bitmap".into()));
        }
        // SAFETY: both handles are valid.
        let old = unsafe { SelectObject(memory, bitmap) };
        Ok(GdiSource {
            screen,
            memory,
            bitmap,
            old,
            x,
            y,
            width,
            height,
        })
    }
}

impl Drop for GdiSource {
    fn drop(&mut self) {
        // SAFETY: handles created in `open`, released once.
        unsafe {
            SelectObject(self.memory, self.old);
            DeleteObject(self.bitmap);
            DeleteDC(self.memory);
            ReleaseDC(std::ptr::null_mut(), self.screen);
        }
    }
}

impl CaptureSource for GdiSource {
    fn grab(&mut self) -> Result<Grab, CaptureError> {
        // SAFETY: valid DCs; the copy fits the bitmap made for this size.
        let copied = unsafe {
            BitBlt(
                self.memory,
                0,
                0,
                self.width,
                self.height,
                self.screen,
                self.x,
                self.y,
                SRCCOPY | CAPTUREBLT,
            )
        };
        if copied == 0 {
            return Err(CaptureError(format!(
                "BitBlt: {}",
                std::io::Error::last_os_error()
            )));
        }
        let mut cursor = CURSORINFO {
            cbSize: std::mem::size_of::<CURSORINFO>() as u32,
            flags: 0,
            hCursor: std::ptr::null_mut(),
            ptScreenPos: windows_sys::Win32::Foundation::POINT { x: 0, y: 0 },
        };
        // SAFETY: `cursor` is sized as the API requires; drawing into our own DC.
        unsafe {
            if GetCursorInfo(&mut cursor) != 0 && cursor.flags & CURSOR_SHOWING != 0 {
                DrawIconEx(
                    self.memory,
                    cursor.ptScreenPos.x - self.x,
                    cursor.ptScreenPos.y - self.y,
                    cursor.hCursor,
                    0,
                    0,
                    0,
                    std::ptr::null_mut(),
                    DI_NORMAL,
                );
            }
        }
        let (w, h) = (self.width as u32, self.height as u32);
        let mut info = BITMAPINFO {
            bmiHeader: BITMAPINFOHEADER {
                biSize: std::mem::size_of::<BITMAPINFOHEADER>() as u32,
                biWidth: self.width,
                biHeight: -self.height, // top-down rows
                biPlanes: 1,
                biBitCount: 32,
                biCompression: BI_RGB,
                biSizeImage: 0,
                biXPelsPerMeter: 0,
                biYPelsPerMeter: 0,
                biClrUsed: 0,
                biClrImportant: 0,
            },
            bmiColors: [windows_sys::Win32::Graphics::Gdi::RGBQUAD {
                rgbBlue: 0,
                rgbGreen: 0,
                rgbRed: 0,
                rgbReserved: 0,
            }],
        };
        let mut data = vec![0u8; w as usize * h as usize * 4];
        // SAFETY: `data` holds exactly width x height 32-bit pixels as described by `info`.
        let rows = unsafe {
            GetDIBits(
                self.memory,
                self.bitmap,
                0,
                h,
                data.as_mut_ptr().cast(),
                &mut info,
                DIB_RGB_COLORS,
            )
        };
        if rows != self.height {
            return Err(CaptureError("GetDIBits returned fewer rows".into()));
        }
        Ok(Grab::Frame(Frame {
            width: w,
            height: h,
            stride: w as usize * 4,
            data,
        }))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn monitors_are_composed_left_to_right() {
        let a = Frame::solid(4, 2, [1, 1, 1, 255]);
        let b = Frame::solid(3, 4, [2, 2, 2, 255]);
        let f = side_by_side(&[a, b]);
        assert_eq!((f.width, f.height), (8, 4), "7 wide rounded up to even");
        let px = |x: usize, y: usize| f.data[y * f.stride + x * 4];
        assert_eq!(px(0, 0), 1);
        assert_eq!(px(3, 1), 1);
        assert_eq!(px(0, 3), 0, "black below the shorter monitor");
        assert_eq!(px(4, 3), 2);
        assert_eq!(px(7, 0), 0, "the padding column");
    }

    /// Under wine GDI has a virtual desktop: the fallback captures real pixels there, so this
    /// runs the whole GDI path (Graphics Capture itself cannot run under wine).
    #[test]
    fn gdi_capture_returns_a_full_frame() {
        let mut s = GdiSource::open().expect("GDI capture opens");
        match s.grab().expect("a frame") {
            Grab::Frame(f) => {
                assert!(f.width > 0 && f.height > 0);
                assert_eq!(f.data.len(), f.width as usize * f.height as usize * 4);
            }
            other => panic!("unexpected {other:?}"),
        }
    }
}
