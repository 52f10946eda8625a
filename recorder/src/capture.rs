//! Screen frames and where they come from.
//!
//! A [`Frame`] is one BGRA image of the whole screen. Sources (X11, Windows Graphics Capture,
//! and the scripted [`SyntheticScreen`] used by tests and benchmarks) all produce the same type,
//! so everything after capture is shared.

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
