//! H.264 encoding with libx264 through `ffmpeg-next`: BGRA frames in, Annex B access units out.
//!
//! Settings follow what was measured on these machines (`shared/research.md`): `veryfast` with
//! `tune=zerolatency` (no B-frames, no lookahead, one packet per frame), CRF rate control, one
//! thread. No B-frames is a format rule: Chromium's MSE ignores edit lists, so B-frames would put
//! video and events out of step. Keyframes are forced by media time (the stream is variable
//! frame rate, so a frame-count GOP would mean nothing), which bounds seek cost and sets the main
//! storage lever, the keyframe interval.
//!
//! Runs on a plain thread: ffmpeg calls block.

use std::time::Duration;

use ffmpeg::software::scaling;
use ffmpeg::util::format::Pixel;
use ffmpeg::util::frame;
use ffmpeg::{Dictionary, Packet, Rational, codec, encoder, picture};
use ffmpeg_next as ffmpeg;
use jitrec_format::MediaTime;

use crate::capture::{Frame, Rect};

/// Encoder settings.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EncoderConfig {
    /// x264 constant rate factor (lower is better; 28 measured SSIM 0.9989 on admin workloads).
    pub crf: u8,
    /// x264 preset.
    pub preset: String,
    /// Longest distance between keyframes (10 s halves storage against 2 s, research.md).
    pub keyframe_interval: Duration,
    /// Track timescale (90 kHz, the MPEG convention, exact for common frame rates).
    pub timescale: u32,
    /// Nominal capture rate, a hint for rate control (timestamps are what count).
    pub nominal_fps: u32,
}

impl EncoderConfig {
    /// Longest distance between keyframes while the screen is idle: six normal intervals, at
    /// least a minute. Seeking into a long idle stretch then starts at most this far back, over
    /// chunks of a few hundred bytes each.
    pub fn idle_keyframe_interval(&self) -> Duration {
        (self.keyframe_interval * 6).max(Duration::from_secs(60))
    }
}

impl Default for EncoderConfig {
    fn default() -> Self {
        Self {
            crf: 28,
            preset: "veryfast".into(),
            keyframe_interval: Duration::from_secs(10),
            timescale: 90_000,
            nominal_fps: 5,
        }
    }
}

/// Why encoding failed.
#[derive(Debug, thiserror::Error)]
pub enum EncodeError {
    #[error("ffmpeg: {context}: {source}")]
    Ffmpeg {
        context: &'static str,
        #[source]
        source: ffmpeg::Error,
    },
    #[error("no libx264 encoder in this ffmpeg build")]
    NoEncoder,
    #[error("frame is {got_w}x{got_h}, encoder is {want_w}x{want_h}")]
    SizeMismatch {
        got_w: u32,
        got_h: u32,
        want_w: u32,
        want_h: u32,
    },
    #[error("frame size {0}x{1} is not encodable (H.264 4:2:0 needs even sizes of at least 16)")]
    BadSize(u32, u32),
}

fn ff(context: &'static str) -> impl FnOnce(ffmpeg::Error) -> EncodeError {
    move |source| EncodeError::Ffmpeg { context, source }
}

/// One encoded frame.
#[derive(Debug, Clone)]
pub struct EncodedFrame {
    pub pts: MediaTime,
    pub keyframe: bool,
    /// Annex B access unit as x264 produced it (with SPS/PPS in-band on keyframes).
    pub access_unit: Vec<u8>,
}

/// An open H.264 encoder for one frame size.
pub struct Encoder {
    config: EncoderConfig,
    width: u32,
    height: u32,
    enc: encoder::Video,
    scaler: scaling::Context,
    bgra: frame::Video,
    /// The last converted frame, kept to repeat it over idle stretches without converting again.
    yuv: frame::Video,
    have_frame: bool,
    last_key: Option<MediaTime>,
    /// Tile converters by tile size, for [`Encoder::encode_changed`].
    tiles: std::collections::HashMap<(u32, u32), Tile>,
}

/// A swscale context with its frames, for tiles of one size.
struct Tile {
    bgra: frame::Video,
    yuv: frame::Video,
    scaler: scaling::Context,
}

/// Pixels converted around a changed rectangle and thrown away, so the tile's edges (where
/// swscale's filters see no neighbours) stay outside what is copied back.
pub const TILE_MARGIN: u32 = 16;
/// How far outside a changed rectangle the converted picture changes (swscale's chroma filter
/// reaches one chroma sample, two pixels, past its block; four is tested to be enough).
const TILE_REACH: u32 = 4;
/// Tile sizes are rounded up to this, so a few swscale contexts serve most rectangles.
const TILE_ROUND: u32 = 64;
/// Distinct tile sizes kept; beyond this the cache starts afresh.
const MAX_TILE_SIZES: usize = 32;

impl std::fmt::Debug for Encoder {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Encoder")
            .field("width", &self.width)
            .field("height", &self.height)
            .field("config", &self.config)
            .finish_non_exhaustive()
    }
}

impl Encoder {
    /// Opens libx264 for `width` x `height` frames.
    pub fn new(width: u32, height: u32, config: EncoderConfig) -> Result<Self, EncodeError> {
        if width < 16 || height < 16 || width % 2 == 1 || height % 2 == 1 {
            return Err(EncodeError::BadSize(width, height));
        }
        ffmpeg::init().map_err(ff("init"))?;
        // libx264 reports per-session statistics at info level on stderr; a service keeps to
        // warnings and errors.
        ffmpeg::util::log::set_level(ffmpeg::util::log::Level::Warning);
        let codec = encoder::find_by_name("libx264").ok_or(EncodeError::NoEncoder)?;
        let mut enc = codec::context::Context::new_with_codec(codec)
            .encoder()
            .video()
            .map_err(ff("video encoder context"))?;
        enc.set_width(width);
        enc.set_height(height);
        enc.set_format(Pixel::YUV420P);
        enc.set_time_base(Rational(1, config.timescale as i32));
        enc.set_frame_rate(Some(Rational(config.nominal_fps as i32, 1)));
        enc.set_max_b_frames(0);
        // Keyframes are forced by media time; this only keeps x264 from adding its own.
        enc.set_gop(1_000_000);
        let mut opts = Dictionary::new();
        opts.set("preset", &config.preset);
        opts.set("tune", "zerolatency");
        opts.set("crf", &config.crf.to_string());
        opts.set("forced-idr", "1");
        opts.set("threads", "1");
        let enc = enc.open_with(opts).map_err(ff("open libx264"))?;
        let scaler = scaling::Context::get(
            Pixel::BGRA,
            width,
            height,
            Pixel::YUV420P,
            width,
            height,
            scaling::Flags::BILINEAR,
        )
        .map_err(ff("swscale context"))?;
        Ok(Self {
            bgra: frame::Video::new(Pixel::BGRA, width, height),
            yuv: frame::Video::new(Pixel::YUV420P, width, height),
            config,
            width,
            height,
            enc,
            scaler,
            have_frame: false,
            last_key: None,
            tiles: std::collections::HashMap::new(),
        })
    }

    pub fn width(&self) -> u32 {
        self.width
    }

    pub fn height(&self) -> u32 {
        self.height
    }

    pub fn timescale(&self) -> u32 {
        self.config.timescale
    }

    /// Media time in track timescale units.
    pub fn ticks(&self, t: MediaTime) -> i64 {
        (u128::from(t.as_micros()) * u128::from(self.config.timescale) / 1_000_000) as i64
    }

    /// Converts and encodes a new screen image shown from `pts` on.
    pub fn encode(&mut self, f: &Frame, pts: MediaTime) -> Result<Vec<EncodedFrame>, EncodeError> {
        if f.width != self.width || f.height != self.height {
            return Err(EncodeError::SizeMismatch {
                got_w: f.width,
                got_h: f.height,
                want_w: self.width,
                want_h: self.height,
            });
        }
        let row = self.width as usize * 4;
        let stride = self.bgra.stride(0);
        let dst = self.bgra.data_mut(0);
        for y in 0..self.height as usize {
            dst[y * stride..y * stride + row]
                .copy_from_slice(&f.data[y * f.stride..y * f.stride + row]);
        }
        self.scaler
            .run(&self.bgra, &mut self.yuv)
            .map_err(ff("convert BGRA to YUV"))?;
        self.have_frame = true;
        self.submit(pts, self.config.keyframe_interval)
    }

    /// Encodes a new screen image of which only `changed` differs from the last one encoded:
    /// only those rectangles are converted into the persistent YUV picture. Falls back to the
    /// whole-frame conversion when nothing was encoded yet or a third or more of the screen
    /// changed.
    ///
    /// Each rectangle is converted by swscale as a tile with a margin of [`TILE_MARGIN`]
    /// pixels, and only the rectangle itself is copied back: swscale's chroma filter reaches
    /// past a pixel's neighbours, and the margin keeps the tile's edges from showing, so the
    /// picture is the same as a whole-frame conversion (tested).
    pub fn encode_changed(
        &mut self,
        f: &Frame,
        changed: &[Rect],
        pts: MediaTime,
    ) -> Result<Vec<EncodedFrame>, EncodeError> {
        let rects: Vec<Rect> = changed
            .iter()
            .filter_map(|r| r.even_within(self.width, self.height))
            .collect();
        let area: u64 = rects.iter().map(Rect::area).sum();
        let whole = u64::from(self.width) * u64::from(self.height);
        if !self.have_frame || area * 3 >= whole || f.width != self.width || f.height != self.height
        {
            return self.encode(f, pts);
        }
        for r in rects {
            self.convert_tile(f, r)?;
        }
        self.submit(pts, self.config.keyframe_interval)
    }

    /// Converts rectangle `r` (even) of `f` into the persistent YUV picture.
    fn convert_tile(&mut self, f: &Frame, r: Rect) -> Result<(), EncodeError> {
        let round_up = |v: u32| v.div_ceil(TILE_ROUND) * TILE_ROUND;
        let x0 = r.x.saturating_sub(TILE_MARGIN) & !15;
        let y0 = r.y.saturating_sub(TILE_MARGIN) & !15;
        let tw = round_up(r.x + r.w + TILE_MARGIN - x0).min(self.width - x0);
        let th = round_up(r.y + r.h + TILE_MARGIN - y0).min(self.height - y0);
        if self.tiles.len() >= MAX_TILE_SIZES && !self.tiles.contains_key(&(tw, th)) {
            self.tiles.clear();
        }
        let tile = match self.tiles.entry((tw, th)) {
            std::collections::hash_map::Entry::Occupied(e) => e.into_mut(),
            std::collections::hash_map::Entry::Vacant(e) => e.insert(Tile {
                bgra: frame::Video::new(Pixel::BGRA, tw, th),
                yuv: frame::Video::new(Pixel::YUV420P, tw, th),
                scaler: scaling::Context::get(
                    Pixel::BGRA,
                    tw,
                    th,
                    Pixel::YUV420P,
                    tw,
                    th,
                    scaling::Flags::BILINEAR,
                )
                .map_err(ff("swscale tile context"))?,
            }),
        };
        let row = tw as usize * 4;
        let stride = tile.bgra.stride(0);
        let dst = tile.bgra.data_mut(0);
        for y in 0..th as usize {
            let src = (y0 as usize + y) * f.stride + x0 as usize * 4;
            dst[y * stride..y * stride + row].copy_from_slice(&f.data[src..src + row]);
        }
        tile.scaler
            .run(&tile.bgra, &mut tile.yuv)
            .map_err(ff("convert a tile to YUV"))?;
        // Copy back `r` grown by TILE_REACH: a chroma sample's filter takes in the rows and
        // columns next to its 2x2 block, so chroma just outside a change changes too. Per
        // plane (chroma planes at half resolution).
        let r = Rect {
            x: r.x.saturating_sub(TILE_REACH).max(x0),
            y: r.y.saturating_sub(TILE_REACH).max(y0),
            w: 0,
            h: 0,
        }
        .spanning(
            (r.x + r.w + TILE_REACH).min(x0 + tw),
            (r.y + r.h + TILE_REACH).min(y0 + th),
        );
        for (plane, shift) in [(0usize, 0u32), (1, 1), (2, 1)] {
            let (src_stride, dst_stride) = (tile.yuv.stride(plane), self.yuv.stride(plane));
            let (cx, cy) = ((r.x - x0) >> shift, (r.y - y0) >> shift);
            let (w, h) = ((r.w >> shift) as usize, (r.h >> shift) as usize);
            let src = tile.yuv.data(plane);
            let dst = self.yuv.data_mut(plane);
            for y in 0..h {
                let s = (cy as usize + y) * src_stride + cx as usize;
                let d = ((r.y >> shift) as usize + y) * dst_stride + (r.x >> shift) as usize;
                dst[d..d + w].copy_from_slice(&src[s..s + w]);
            }
        }
        Ok(())
    }

    /// Encodes the last image again at `pts` (an unchanged screen: x264 codes it as skips, a few
    /// bytes, with no colour conversion). Returns nothing if no frame was ever encoded.
    ///
    /// An idle screen gets a keyframe only every [`EncoderConfig::idle_keyframe_interval`]: a
    /// keyframe of an unchanged picture costs a full-frame encode (most of an idle recorder's
    /// CPU) and tens of KB, and buys only faster seeking into the idle stretch. The first
    /// changed frame after the normal interval is the keyframe instead.
    pub fn repeat(&mut self, pts: MediaTime) -> Result<Vec<EncodedFrame>, EncodeError> {
        if !self.have_frame {
            return Ok(Vec::new());
        }
        self.submit(pts, self.config.idle_keyframe_interval())
    }

    /// Makes the next frame a keyframe (an IDR picture), whatever the interval says: after
    /// frames were dropped (a full spool), the next committed chunk must decode on its own.
    pub fn force_keyframe(&mut self) {
        self.last_key = None;
    }

    fn submit(
        &mut self,
        pts: MediaTime,
        interval: Duration,
    ) -> Result<Vec<EncodedFrame>, EncodeError> {
        let due = self.last_key.is_none_or(|k| {
            pts.as_micros().saturating_sub(k.as_micros()) >= interval.as_micros() as u64
        });
        self.yuv.set_kind(if due {
            picture::Type::I
        } else {
            picture::Type::None
        });
        let ticks = self.ticks(pts);
        self.yuv.set_pts(Some(ticks));
        self.enc.send_frame(&self.yuv).map_err(ff("send frame"))?;
        self.drain()
    }

    /// Flushes frames the encoder still holds (none with zerolatency, but the API allows it).
    pub fn flush(&mut self) -> Result<Vec<EncodedFrame>, EncodeError> {
        self.enc.send_eof().map_err(ff("send eof"))?;
        self.drain()
    }

    fn drain(&mut self) -> Result<Vec<EncodedFrame>, EncodeError> {
        let mut out = Vec::new();
        loop {
            // A fresh packet per frame: reusing one leaks buffers (research.md).
            let mut pkt = Packet::empty();
            match self.enc.receive_packet(&mut pkt) {
                Ok(()) => {
                    let ticks = pkt.pts().unwrap_or(0).max(0) as u128;
                    let us = ticks * 1_000_000 / u128::from(self.config.timescale);
                    let pts = MediaTime::from_micros(us as u64);
                    let keyframe = pkt.is_key();
                    if keyframe {
                        self.last_key = Some(pts);
                    }
                    out.push(EncodedFrame {
                        pts,
                        keyframe,
                        access_unit: pkt.data().unwrap_or_default().to_vec(),
                    });
                }
                Err(ffmpeg::Error::Other { errno }) if errno == ffmpeg::util::error::EAGAIN => {
                    break;
                }
                Err(ffmpeg::Error::Eof) => break,
                Err(e) => return Err(ff("receive packet")(e)),
            }
        }
        Ok(out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A screen-like image: flat areas, thin coloured strokes, a gradient.
    fn busy(w: u32, h: u32, seed: u32) -> Frame {
        let mut f = Frame::solid(w, h, [240, 240, 240, 255]);
        for i in 0..300u32 {
            let k = i + seed;
            let c = [(k * 37) as u8, (k * 91) as u8, (k * 53) as u8, 255];
            f.fill((k * 71) % w, (k * 29) % h, 1 + k % 40, 1 + k % 9, c);
        }
        for x in 0..w {
            f.fill(
                x,
                h - 40,
                1,
                40,
                [(x % 256) as u8, 128, (255 - x % 256) as u8, 255],
            );
        }
        f
    }

    fn planes(e: &Encoder) -> Vec<Vec<u8>> {
        (0..3)
            .map(|p| {
                let (w, h) = if p == 0 {
                    (e.width as usize, e.height as usize)
                } else {
                    (e.width as usize / 2, e.height as usize / 2)
                };
                let s = e.yuv.stride(p);
                (0..h)
                    .flat_map(|y| e.yuv.data(p)[y * s..y * s + w].to_vec())
                    .collect()
            })
            .collect()
    }

    /// Converting only the changed tiles gives exactly the picture a whole-frame conversion
    /// gives, including rectangles at odd positions, at the screen's edges, and overlapping.
    #[test]
    fn tile_conversion_equals_whole_frame_conversion() {
        let (w, h) = (640, 360);
        let a = busy(w, h, 0);
        let mut b = a.clone();
        let changed = [
            Rect {
                x: 3,
                y: 7,
                w: 31,
                h: 13,
            },
            Rect {
                x: 600,
                y: 340,
                w: 40,
                h: 20,
            },
            Rect {
                x: 0,
                y: 100,
                w: 9,
                h: 1,
            },
            Rect {
                x: 20,
                y: 10,
                w: 30,
                h: 30,
            },
            Rect {
                x: 301,
                y: 177,
                w: 120,
                h: 60,
            },
        ];
        // Different content: the busy screen with its colours inverted.
        let mut other = busy(w, h, 7);
        for px in other.data.chunks_exact_mut(4) {
            for c in &mut px[..3] {
                *c = 255 - *c;
            }
        }
        for r in changed {
            for y in r.y..r.y + r.h {
                let at = (y * w * 4 + r.x * 4) as usize;
                let len = (r.w * 4) as usize;
                b.data[at..at + len].copy_from_slice(&other.data[at..at + len]);
            }
        }
        let mut partial = Encoder::new(w, h, EncoderConfig::default()).unwrap();
        partial.encode(&a, MediaTime::ZERO).unwrap();
        partial
            .encode_changed(&b, &changed, MediaTime::from_micros(200_000))
            .unwrap();
        let mut whole = Encoder::new(w, h, EncoderConfig::default()).unwrap();
        whole.encode(&b, MediaTime::ZERO).unwrap();
        for (i, (p, q)) in planes(&partial).iter().zip(planes(&whole)).enumerate() {
            let worst = p.iter().zip(&q).map(|(x, y)| x.abs_diff(*y)).max().unwrap();

            assert_eq!(worst, 0, "plane {i} differs from a whole-frame conversion");
        }
        // And the old picture differs, so the check can fail.
        let mut stale = Encoder::new(w, h, EncoderConfig::default()).unwrap();
        stale.encode(&a, MediaTime::ZERO).unwrap();
        let changed_bytes = planes(&stale)
            .iter()
            .flatten()
            .zip(planes(&whole).iter().flatten())
            .filter(|(x, y)| x != y)
            .count();
        assert!(changed_bytes > 1000, "only {changed_bytes} bytes changed");
    }
}
