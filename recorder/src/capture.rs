//! Screen frames and where they come from.
//!
//! A [`Frame`] is one BGRA image of the whole screen. Sources (X11, Windows Graphics Capture,
//! and the scripted [`SyntheticScreen`] used by tests and benchmarks) all produce the same type,
//! so everything after capture is shared.

/// A rectangle of a frame, in pixels.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Rect {
    pub x: u32,
    pub y: u32,
    pub w: u32,
    pub h: u32,
}

impl Rect {
    /// Grown to even coordinates and sizes (4:2:0 chroma covers 2x2 pixels) and clipped to a
    /// `width` x `height` frame (both even).
    pub fn even_within(self, width: u32, height: u32) -> Option<Rect> {
        let (x0, y0) = (self.x & !1, self.y & !1);
        let x1 = (self.x.saturating_add(self.w).saturating_add(1) & !1).min(width);
        let y1 = (self.y.saturating_add(self.h).saturating_add(1) & !1).min(height);
        (x1 > x0 && y1 > y0).then(|| Rect {
            x: x0,
            y: y0,
            w: x1 - x0,
            h: y1 - y0,
        })
    }

    /// This rectangle's origin with its far corner moved to (`x1`, `y1`).
    pub fn spanning(self, x1: u32, y1: u32) -> Rect {
        Rect {
            w: x1.saturating_sub(self.x),
            h: y1.saturating_sub(self.y),
            ..self
        }
    }

    pub fn area(&self) -> u64 {
        u64::from(self.w) * u64::from(self.h)
    }
}

/// One BGRA screen image.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Frame {
    pub width: u32,
    pub height: u32,
    /// Bytes per row (at least `width * 4`).
    pub stride: usize,
    pub data: Vec<u8>,
}

impl Frame {
    /// A frame of one colour, `[b, g, r, a]`.
    pub fn solid(width: u32, height: u32, bgra: [u8; 4]) -> Self {
        let stride = width as usize * 4;
        let mut data = Vec::with_capacity(stride * height as usize);
        for _ in 0..(width as usize * height as usize) {
            data.extend_from_slice(&bgra);
        }
        Self {
            width,
            height,
            stride,
            data,
        }
    }

    /// Paints a rectangle (clipped to the frame).
    pub fn fill(&mut self, x: u32, y: u32, w: u32, h: u32, bgra: [u8; 4]) {
        for row in y..(y + h).min(self.height) {
            for col in x..(x + w).min(self.width) {
                let at = row as usize * self.stride + col as usize * 4;
                self.data[at..at + 4].copy_from_slice(&bgra);
            }
        }
    }
}

/// A scripted screen: a background, and rectangles painted at given media times. Deterministic,
/// so tests can say exactly what a decoded frame at time *t* must show.
#[derive(Debug, Clone)]
pub struct SyntheticScreen {
    pub width: u32,
    pub height: u32,
    pub background: [u8; 4],
    /// (from media time in microseconds, x, y, w, h, colour), applied in order.
    pub paints: Vec<(u64, u32, u32, u32, u32, [u8; 4])>,
}

impl SyntheticScreen {
    /// The screen as it looks at `t_us`.
    pub fn render(&self, t_us: u64) -> Frame {
        let mut f = Frame::solid(self.width, self.height, self.background);
        for &(from, x, y, w, h, c) in &self.paints {
            if t_us >= from {
                f.fill(x, y, w, h, c);
            }
        }
        f
    }
}
