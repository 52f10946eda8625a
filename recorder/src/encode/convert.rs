//! Colour conversion: the screen's BGRA into the YUV 4:2:0 picture the encoder codes, one 2x2
//! block at a time.
//!
//! Written here rather than taken from swscale for two reasons, both measured or tested:
//! - A 2x2 block's luma and chroma depend on that block's four pixels alone (chroma is their
//!   mean), so converting only the changed rectangles gives exactly the picture a whole-frame
//!   conversion gives, with no margin, and a macroblock no change touches is exactly unchanged.
//!   swscale's chroma filter reaches past its block, which made the encoder convert margins and
//!   mark macroblocks next to every change as changed.
//! - It is faster: a 1920x1080 frame took 10.1 ms in swscale (`SWS_BILINEAR`, Debian's
//!   FFmpeg 5.1) and 3.2 ms here with AVX2 (7-8 ms without), on the build machine, and the
//!   pixels are read where capture left them instead of being copied into an FFmpeg frame
//!   first.
//!
//! The matrix is BT.601 with limited range (luma 16-235), what swscale uses by default; the
//! stream says so in its colour description (`COLOUR` in `encode/mod.rs`), because players
//! guess differently without one. The 8-bit integer coefficients are the usual approximation
//! of the matrix, within one step of the exact values.

use crate::capture::{Frame, Rect};

/// A YUV 4:2:0 picture: a luma plane of `width` x `height` and two chroma planes of half that
/// in each direction, each plane stored without padding.
#[derive(Debug, Clone)]
pub struct Yuv420 {
    width: usize,
    height: usize,
    planes: [Vec<u8>; 3],
}

impl Yuv420 {
    /// A black picture of `width` x `height` (both even).
    pub fn new(width: u32, height: u32) -> Self {
        let (w, h) = (width as usize, height as usize);
        let chroma = (w / 2) * (h / 2);
        Self {
            width: w,
            height: h,
            planes: [vec![16; w * h], vec![128; chroma], vec![128; chroma]],
        }
    }

    /// Plane `p` (0 luma, 1 Cb, 2 Cr).
    pub fn data(&self, p: usize) -> &[u8] {
        &self.planes[p]
    }

    /// Bytes from one row of plane `p` to the next.
    pub fn stride(&self, p: usize) -> usize {
        if p == 0 { self.width } else { self.width / 2 }
    }

    /// Converts all of `f`, which has this picture's size.
    pub fn convert_whole(&mut self, f: &Frame) {
        let all = Rect {
            x: 0,
            y: 0,
            w: self.width as u32,
            h: self.height as u32,
        };
        self.convert(f, all);
    }

    /// Converts rectangle `r` of `f` into the picture; `r` must have even corners and lie
    /// within both (what [`Rect::even_within`] gives). Outside `r` nothing changes.
    pub fn convert(&mut self, f: &Frame, r: Rect) {
        debug_assert!([r.x, r.y, r.w, r.h].iter().all(|v| v.is_multiple_of(2)));
        debug_assert!((r.x + r.w) as usize <= self.width && (r.y + r.h) as usize <= self.height);
        let (x, w) = (r.x as usize, r.w as usize);
        let [luma, cb, cr] = &mut self.planes;
        let (lw, cw) = (self.width, self.width / 2);
        for pair in (r.y as usize / 2)..((r.y + r.h) as usize / 2) {
            let top = &f.data[2 * pair * f.stride + 4 * x..][..4 * w];
            let bottom = &f.data[(2 * pair + 1) * f.stride + 4 * x..][..4 * w];
            let (y0, y1) = luma[2 * pair * lw..(2 * pair + 2) * lw].split_at_mut(lw);
            let rows = Rows {
                top,
                bottom,
                y0: &mut y0[x..x + w],
                y1: &mut y1[x..x + w],
                cb: &mut cb[pair * cw + x / 2..][..w / 2],
                cr: &mut cr[pair * cw + x / 2..][..w / 2],
            };
            rows.convert();
        }
    }
}

/// Two rows of pixels and the rows of the three planes they become.
struct Rows<'a> {
    top: &'a [u8],
    bottom: &'a [u8],
    y0: &'a mut [u8],
    y1: &'a mut [u8],
    cb: &'a mut [u8],
    cr: &'a mut [u8],
}

impl Rows<'_> {
    // The one unsafe call: a function compiled for AVX2, made only after the CPU says it has it.
    #[allow(unsafe_code)]
    fn convert(self) {
        #[cfg(target_arch = "x86_64")]
        if std::arch::is_x86_feature_detected!("avx2") {
            // SAFETY: `convert_avx2` only needs the CPU to have AVX2, which was just checked.
            unsafe { self.convert_avx2() };
            return;
        }
        self.convert_portable();
    }

    /// The same code compiled for AVX2, which the compiler vectorises about twice as well as
    /// for the baseline x86-64 instruction set.
    #[cfg(target_arch = "x86_64")]
    #[target_feature(enable = "avx2")]
    fn convert_avx2(self) {
        self.convert_portable();
    }

    #[inline(always)]
    fn convert_portable(self) {
        luma_row(self.top, self.y0);
        luma_row(self.bottom, self.y1);
        for (((t, b), cb), cr) in self
            .top
            .chunks_exact(8)
            .zip(self.bottom.chunks_exact(8))
            .zip(self.cb.iter_mut())
            .zip(self.cr.iter_mut())
        {
            let mean = |c: usize| {
                (i16::from(t[c]) + i16::from(t[c + 4]) + i16::from(b[c]) + i16::from(b[c + 4]) + 2)
                    >> 2
            };
            let (b, g, r) = (mean(0), mean(1), mean(2));
            *cb = (((-38 * r - 74 * g + 112 * b + 128) >> 8) + 128) as u8;
            *cr = (((112 * r - 94 * g - 18 * b + 128) >> 8) + 128) as u8;
        }
    }
}

#[inline(always)]
fn luma_row(pixels: &[u8], luma: &mut [u8]) {
    for (px, y) in pixels.chunks_exact(4).zip(luma.iter_mut()) {
        let (b, g, r) = (u16::from(px[0]), u16::from(px[1]), u16::from(px[2]));
        // At most (66 + 129 + 25) * 255 + 128 = 56228: no overflow in 16 bits.
        *y = (((66 * r + 129 * g + 25 * b + 128) >> 8) + 16) as u8;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The exact BT.601 limited-range values, in floating point.
    fn exact(r: f64, g: f64, b: f64) -> [f64; 3] {
        [
            16.0 + 0.256788 * r + 0.504129 * g + 0.097906 * b,
            128.0 - 0.148223 * r - 0.290993 * g + 0.439216 * b,
            128.0 + 0.439216 * r - 0.367788 * g - 0.071427 * b,
        ]
    }

    fn at(p: &Yuv420, plane: usize, x: usize, y: usize) -> u8 {
        p.data(plane)[y * p.stride(plane) + x]
    }

    /// Every colour of a coarse grid converts within one step of the exact matrix, black and
    /// white to the ends of the limited range.
    #[test]
    fn colours_convert_to_bt601_limited_range() {
        let mut worst = 0.0f64;
        for r in (0..=255).step_by(15) {
            for g in (0..=255).step_by(15) {
                for b in (0..=255).step_by(15) {
                    let f = Frame::solid(2, 2, [b as u8, g as u8, r as u8, 255]);
                    let mut p = Yuv420::new(2, 2);
                    p.convert_whole(&f);
                    let want = exact(f64::from(r), f64::from(g), f64::from(b));
                    for (plane, want) in want.iter().enumerate() {
                        let got = f64::from(at(&p, plane, 0, 0));
                        worst = worst.max((got - want).abs());
                    }
                }
            }
        }
        assert!(worst <= 1.0, "off by {worst} from BT.601");
        let mut p = Yuv420::new(2, 2);
        p.convert_whole(&Frame::solid(2, 2, [0, 0, 0, 255]));
        assert_eq!(
            [at(&p, 0, 0, 0), at(&p, 1, 0, 0), at(&p, 2, 0, 0)],
            [16, 128, 128]
        );
        p.convert_whole(&Frame::solid(2, 2, [255, 255, 255, 255]));
        assert_eq!(
            [at(&p, 0, 0, 0), at(&p, 1, 0, 0), at(&p, 2, 0, 0)],
            [235, 128, 128]
        );
    }

    /// Chroma is the mean of its block: a block of two colours gets their average, and luma
    /// keeps each pixel.
    #[test]
    fn chroma_is_the_mean_of_its_block_and_luma_is_per_pixel() {
        let mut f = Frame::solid(4, 2, [0, 0, 255, 255]);
        f.fill(1, 0, 1, 2, [255, 0, 0, 255]);
        let mut p = Yuv420::new(4, 2);
        p.convert_whole(&f);
        let red = exact(255.0, 0.0, 0.0);
        let blue = exact(0.0, 0.0, 255.0);
        assert!((f64::from(at(&p, 0, 0, 0)) - red[0]).abs() <= 1.0);
        assert!((f64::from(at(&p, 0, 1, 1)) - blue[0]).abs() <= 1.0);
        for plane in 1..3 {
            let mixed = (red[plane] + blue[plane]) / 2.0;
            assert!(
                (f64::from(at(&p, plane, 0, 0)) - mixed).abs() <= 1.0,
                "plane {plane}: {} against {mixed}",
                at(&p, plane, 0, 0)
            );
            assert!((f64::from(at(&p, plane, 1, 0)) - red[plane]).abs() <= 1.0);
        }
    }

    /// Converting a rectangle changes that rectangle and nothing else.
    #[test]
    fn a_rectangle_converts_that_rectangle_alone() {
        let mut p = Yuv420::new(64, 32);
        let before = p.clone();
        let f = Frame::solid(64, 32, [0, 255, 0, 255]);
        let r = Rect {
            x: 10,
            y: 4,
            w: 20,
            h: 6,
        };
        p.convert(&f, r);
        for plane in 0..3 {
            let shift = usize::from(plane > 0);
            for y in 0..32 >> shift {
                for x in 0..64 >> shift {
                    let inside = (x << shift) >= 10
                        && (x << shift) < 30
                        && (y << shift) >= 4
                        && (y << shift) < 10;
                    assert_eq!(
                        at(&p, plane, x, y) != at(&before, plane, x, y),
                        inside,
                        "plane {plane} ({x}, {y})"
                    );
                }
            }
        }
    }
}
