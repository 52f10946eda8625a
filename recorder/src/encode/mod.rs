//! H.264 encoding: BGRA frames in, Annex B access units out, each picture coded the cheapest
//! way that is exact.
//!
//! Colour conversion ([`convert`]) converts only the changed rectangles. Large changes go to libx264,
//! through the recorder's own binding ([`x264`]), told which macroblocks did not change so it
//! skips them unanalysed: `veryfast` with `tune=zerolatency` (no B-frames, no lookahead, one
//! picture out per picture in), a constant quantiser, one thread, and the screen settings of
//! `SCREEN_TUNING` (docs/recorder.md, "Encoder settings"). Unchanged pictures and small
//! changes are not given to libx264: [`h264`] writes them by hand (microseconds, where libx264
//! spends a whole-frame loop), as P pictures that repeat the picture before except for the
//! changed macroblocks, sent as lossless `I_PCM`; a run of them builds on itself, and libx264's
//! later pictures are renumbered and pointed back at libx264's own last picture. No B-frames is
//! a format rule: Chromium's MSE ignores edit lists, so B-frames would put video and events out
//! of step. Keyframes are forced by media time (the stream is
//! variable frame rate, so a frame-count GOP would mean nothing), which bounds seek cost and sets
//! the main storage lever, the keyframe interval.
//!
//! Runs on a plain thread: libx264 calls block.

pub mod convert;
pub mod h264;
pub mod intra;
pub mod x264;

use std::time::Duration;

#[cfg(test)]
use ffmpeg::{Dictionary, Packet, codec, util::frame};
#[cfg(test)]
use ffmpeg_next as ffmpeg;
use jitrec_format::MediaTime;

use crate::capture::{Frame, Rect};
use crate::cost::{self, Stage};

/// Encoder settings.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EncoderConfig {
    /// Quality: the quantiser libx264 codes every picture at (lower is better; the name is the
    /// one the header's `codec.crf` has had since the recorder used rate factors).
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
    /// Longest distance between keyframes while the screen is idle or changes only a little
    /// (what a hand-made picture can carry: a clock, typing): six normal intervals, at
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
    #[error("libx264: {0}")]
    X264(String),
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
    enc: x264::X264,
    /// One byte per macroblock: nonzero where the picture about to be encoded is the same as the
    /// last one encoded. Filled in by [`Encoder::encode_changed`], which knows what changed.
    unchanged: Vec<u8>,
    /// Whether `unchanged` holds for the picture about to be encoded.
    hinted: bool,
    /// One byte per macroblock: nonzero where the picture differs from the last one given to
    /// libx264 (what hand-made pictures have shown since).
    since_x264: Vec<u8>,
    /// Macroblocks the picture about to be encoded changed since the last one put in the
    /// stream (indices, ascending), filled in with `unchanged`.
    changed_now: Vec<usize>,
    /// Most macroblocks a hand-made picture carries ([`HAND_MADE_MAX_MBS`]; tests lower it).
    hand_made_max_mbs: usize,
    /// The last converted frame, kept to repeat it over idle stretches without converting again.
    yuv: convert::Yuv420,
    have_frame: bool,
    last_key: Option<MediaTime>,
    /// The parameter set skip pictures are coded with (`None`: libx264 codes repeats, until
    /// the first keyframe shows the stream allows them, or for good if it does not).
    skip: Option<h264::Extra>,
    /// Whether the first keyframe has been looked at for [`Encoder::skip`].
    skip_checked: bool,
    numbering: h264::Numbering,
    /// Codes the changed macroblocks of hand-made pictures (`None`: it could not be opened,
    /// and they go in as `I_PCM`).
    intra: Option<intra::IntraCoder>,
    /// Every access unit libx264 returned, as it returned it (tests: decoded alone, they give
    /// libx264's own reconstruction, which the stream must decode to).
    #[cfg(test)]
    raw: Vec<Vec<u8>>,
}

/// Most macroblocks a hand-made picture carries (what the intra coder's picture holds); a
/// larger change goes to libx264, which codes a whole frame's worth of macroblocks in one
/// picture and can predict them from one another and from its reference.
const HAND_MADE_MAX_MBS: usize = intra::SLOTS;

/// Most macroblocks a hand-made picture sends as `I_PCM` (384 bytes each, 6 KB in all), when
/// the intra coder is not there or failed: beyond, libx264 codes the change in fewer bytes.
const PCM_MAX_MBS: usize = 16;

/// libx264 settings for screen content, on top of the preset (`veryfast`), `tune=zerolatency`
/// and a constant quantiser, chosen by measurement (docs/recorder.md, "Encoder settings"):
/// weighted prediction off, which libx264's fast path for unchanged macroblocks needs, and no
/// loop filter, which would otherwise turn that fast path off next to every changed
/// macroblock; no scene-cut detection (keyframes are forced by media time); whole-pixel motion
/// search in a small diamond (screen content moves by whole pixels).
const SCREEN_TUNING: &[(&str, &str)] = &[
    ("weightp", "0"),
    ("scenecut", "0"),
    ("nf", "1"),
    ("subme", "0"),
    ("me", "dia"),
];

/// The colour description the stream carries (its SPS's VUI): BT.601 in limited range, what
/// [`convert`] produces. Without it each player guesses: FFmpeg takes BT.601, Chromium BT.709,
/// which shows a pure green screen as (0, 214, 3).
const COLOUR: &[(&str, &str)] = &[
    ("colorprim", "smpte170m"),
    ("transfer", "smpte170m"),
    ("colormatrix", "smpte170m"),
    ("fullrange", "off"),
];

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
        // Constant quantiser, at the configured quality: every changed picture is coded once
        // and never refined by later ones (unchanged pictures are not given to libx264), and
        // without rate control libx264 builds no low-resolution copy of each picture.
        let mut params = vec![("qp".to_owned(), config.crf.to_string())];
        params.extend(
            SCREEN_TUNING
                .iter()
                .chain(COLOUR)
                .map(|(k, v)| ((*k).to_owned(), (*v).to_owned())),
        );
        let enc = x264::X264::open(
            width,
            height,
            config.timescale,
            config.nominal_fps,
            &config.preset,
            &params,
        )
        .map_err(EncodeError::X264)?;
        let intra = intra::IntraCoder::open(&config.preset, config.crf)
            .map_err(|e| {
                tracing::warn!(error = %e, "no intra coder: small changes go in as lossless I_PCM, 384 bytes a macroblock");
            })
            .ok();
        Ok(Self {
            yuv: convert::Yuv420::new(width, height),
            config,
            width,
            height,
            unchanged: vec![0; enc.macroblocks().0 * enc.macroblocks().1],
            hinted: false,
            since_x264: vec![0; enc.macroblocks().0 * enc.macroblocks().1],
            changed_now: Vec::new(),
            hand_made_max_mbs: HAND_MADE_MAX_MBS,
            enc,
            have_frame: false,
            last_key: None,
            skip: None,
            skip_checked: false,
            numbering: h264::Numbering::default(),
            intra,
            #[cfg(test)]
            raw: Vec::new(),
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
        self.convert_whole(f)?;
        self.hinted = false;
        self.submit(pts, self.config.keyframe_interval)
    }

    /// Converts all of `f` into the persistent YUV picture.
    fn convert_whole(&mut self, f: &Frame) -> Result<(), EncodeError> {
        if f.width != self.width || f.height != self.height {
            return Err(EncodeError::SizeMismatch {
                got_w: f.width,
                got_h: f.height,
                want_w: self.width,
                want_h: self.height,
            });
        }
        cost::measure(Stage::Convert, || self.yuv.convert_whole(f));
        self.have_frame = true;
        Ok(())
    }

    /// Encodes a new screen image of which only `changed` differs from the last one encoded:
    /// only those rectangles are converted into the persistent YUV picture (the whole picture
    /// when three quarters or more of the screen changed), and libx264 is told which
    /// macroblocks are unchanged, so it codes them as skips without analysing them. Falls back
    /// to [`Encoder::encode`] when nothing was encoded yet.
    ///
    /// A 2x2 block converts from its own four pixels alone ([`convert`]), so the picture is the
    /// same as a whole-frame conversion (tested), and a macroblock is unchanged when no changed
    /// rectangle (rounded out to even corners) touches it.
    pub fn encode_changed(
        &mut self,
        f: &Frame,
        changed: &[Rect],
        pts: MediaTime,
    ) -> Result<Vec<EncodedFrame>, EncodeError> {
        if !self.have_frame || f.width != self.width || f.height != self.height {
            return self.encode(f, pts);
        }
        let rects: Vec<Rect> = changed
            .iter()
            .filter_map(|r| r.even_within(self.width, self.height))
            .collect();
        let area: u64 = rects.iter().map(Rect::area).sum();
        let whole = u64::from(self.width) * u64::from(self.height);
        // A rectangle converts at the whole frame's speed per pixel (the same rows, cut
        // shorter), so only a change of most of the screen is converted whole (until
        // 2026-12-04 a third did: a scrolling terminal of half a 1080p screen cost a whole
        // frame's conversion each picture).
        if area * 4 >= whole * 3 {
            self.convert_whole(f)?;
        } else {
            cost::measure(Stage::Convert, || {
                for r in &rects {
                    self.yuv.convert(f, *r);
                }
            });
        }
        self.mark_unchanged(&rects);
        // A small change waits for a keyframe as an idle screen does: a keyframe of a screen
        // where only a clock or a typed line moves costs a whole-frame encode, every ten
        // seconds, for faster seeking alone. A large change is libx264's anyway.
        if let Some(out) = self.small_change(pts, self.config.idle_keyframe_interval()) {
            return Ok(out);
        }
        // So does a change of less than a third of the screen (a notice taken down, a window
        // opened, a pane redrawn): libx264 codes its macroblocks alone against the picture
        // before, where a keyframe would code all 8,160 of a 1080p screen (about 100 KB of
        // text) again, for seeking alone. A change of a third or more costs a keyframe's work
        // anyway, so it is the keyframe when one is due at the normal interval.
        let (mbw, mbh) = self.enc.macroblocks();
        let interval = if self.changed_now.len() * 3 < mbw * mbh {
            self.config.idle_keyframe_interval()
        } else {
            self.config.keyframe_interval
        };
        self.submit(pts, interval)
    }

    /// A small change (at most [`HAND_MADE_MAX_MBS`] macroblocks since the last picture) as a
    /// hand-made picture: the picture before with those macroblocks coded by the intra coder
    /// ([`h264::Numbering::intra_picture`]), or, without one, sent as they are
    /// ([`h264::Numbering::pcm_picture`], at most [`PCM_MAX_MBS`] of them). `None` when libx264
    /// is to code it: a larger change, a keyframe due, or a stream that does not allow hand-made
    /// pictures. A run of them (a clock ticking) builds on itself; libx264 is told at its next
    /// picture that they changed.
    fn small_change(&mut self, pts: MediaTime, interval: Duration) -> Option<Vec<EncodedFrame>> {
        let extra = self.skip.as_ref()?;
        if self.changed_now.len() > self.hand_made_max_mbs || self.keyframe_due(pts, interval) {
            return None;
        }
        let started = cost::thread_time();
        let planes = h264::Planes {
            data: [self.yuv.data(0), self.yuv.data(1), self.yuv.data(2)],
            strides: [self.yuv.stride(0), self.yuv.stride(1), self.yuv.stride(2)],
            width: self.width as usize,
            height: self.height as usize,
        };
        let width_mbs = self.width.div_ceil(16) as usize;
        let coded = self
            .intra
            .as_mut()
            .and_then(|c| c.code(&planes, width_mbs, &self.changed_now));
        if coded.is_none() && self.changed_now.len() > PCM_MAX_MBS {
            cost::add(Stage::Encode, cost::thread_time().saturating_sub(started));
            return None;
        }
        let access_unit = match coded {
            Some(coded) => {
                let mbs: Vec<(usize, &h264::IntraMb)> =
                    self.changed_now.iter().copied().zip(&coded).collect();
                self.numbering.intra_picture(extra, &mbs)
            }
            None => self
                .numbering
                .pcm_picture(extra, &planes, &self.changed_now),
        };
        for &mb in &self.changed_now {
            self.since_x264[mb] = 1;
        }
        self.hinted = false;
        cost::add(Stage::Encode, cost::thread_time().saturating_sub(started));
        cost::picture(cost::Coder::ByHand, access_unit.len());
        Some(vec![EncodedFrame {
            pts,
            keyframe: false,
            access_unit,
        }])
    }

    /// Fills in which macroblocks `changed` touches (`changed_now`) and the map of those
    /// libx264 may take as unchanged since its last picture (`unchanged`): neither touched now
    /// nor changed by hand-made pictures since, which libx264's reference does not have.
    fn mark_unchanged(&mut self, changed: &[Rect]) {
        let (mbw, mbh) = self.enc.macroblocks();
        let mut now = vec![false; mbw * mbh];
        for r in changed {
            let (x0, y0) = (r.x / 16, r.y / 16);
            let x1 = ((r.x + r.w).div_ceil(16) as usize).min(mbw);
            let y1 = ((r.y + r.h).div_ceil(16) as usize).min(mbh);
            for y in y0 as usize..y1 {
                now[y * mbw + x0 as usize..y * mbw + x1].fill(true);
            }
        }
        self.changed_now.clear();
        self.changed_now
            .extend(now.iter().enumerate().filter(|(_, c)| **c).map(|(i, _)| i));
        for ((u, since), now) in self.unchanged.iter_mut().zip(&self.since_x264).zip(&now) {
            *u = u8::from(*since == 0 && !now);
        }
        self.hinted = true;
    }

    /// Encodes the last image again at `pts` (an unchanged screen): as a hand-made skip picture
    /// where the stream allows it, else by libx264 (as skips, a few bytes, with no colour
    /// conversion). Returns nothing if no frame was ever encoded.
    ///
    /// An idle screen gets a keyframe only every [`EncoderConfig::idle_keyframe_interval`]: a
    /// keyframe of an unchanged picture costs a full-frame encode (most of an idle recorder's
    /// CPU) and tens of KB, and buys only faster seeking into the idle stretch. The first
    /// changed frame after the normal interval is the keyframe instead.
    pub fn repeat(&mut self, pts: MediaTime) -> Result<Vec<EncodedFrame>, EncodeError> {
        if !self.have_frame {
            return Ok(Vec::new());
        }
        let interval = self.config.idle_keyframe_interval();
        if let Some(extra) = &self.skip
            && !self.keyframe_due(pts, interval)
        {
            let access_unit = cost::measure(Stage::Encode, || self.numbering.skip_picture(extra));
            cost::picture(cost::Coder::ByHand, access_unit.len());
            return Ok(vec![EncodedFrame {
                pts,
                keyframe: false,
                access_unit,
            }]);
        }
        // libx264 codes the screen, told what hand-made pictures changed since its last one.
        self.mark_unchanged(&[]);
        self.submit(pts, interval)
    }

    fn keyframe_due(&self, pts: MediaTime, interval: Duration) -> bool {
        self.last_key.is_none_or(|k| {
            pts.as_micros().saturating_sub(k.as_micros()) >= interval.as_micros() as u64
        })
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
        let keyframe = self.keyframe_due(pts, interval);
        let ticks = self.ticks(pts);
        let hinted = std::mem::take(&mut self.hinted);
        let coded = cost::measure(Stage::Encode, || {
            let pic = x264::Picture {
                planes: [self.yuv.data(0), self.yuv.data(1), self.yuv.data(2)],
                strides: [self.yuv.stride(0), self.yuv.stride(1), self.yuv.stride(2)],
                pts: ticks,
                keyframe,
                unchanged: hinted.then_some(&self.unchanged[..]),
            };
            self.enc.encode(&pic)
        })
        .map_err(EncodeError::X264)?;
        // libx264's reference is the picture now: nothing hand-made over it.
        self.since_x264.fill(0);
        let Some(coded) = coded else {
            return Ok(Vec::new());
        };
        let ticks = coded.pts.max(0) as u128;
        let us = ticks * 1_000_000 / u128::from(self.config.timescale);
        let pts = MediaTime::from_micros(us as u64);
        if coded.keyframe {
            self.last_key = Some(pts);
        }
        cost::picture(cost::Coder::X264, coded.access_unit.len());
        #[cfg(test)]
        self.raw.push(coded.access_unit.clone());
        let access_unit = self.numbered(coded.keyframe, &coded.access_unit);
        Ok(vec![EncodedFrame {
            pts,
            keyframe: coded.keyframe,
            access_unit,
        }])
    }
}

impl Encoder {
    /// Appends the luma plane of the picture last given to the encoder (tests).
    #[cfg(test)]
    fn yuv_luma_into(&self, out: &mut Vec<Vec<u8>>) {
        let (w, h, s) = (
            self.width as usize,
            self.height as usize,
            self.yuv.stride(0),
        );
        out.push(
            (0..h)
                .flat_map(|y| self.yuv.data(0)[y * s..y * s + w].to_vec())
                .collect(),
        );
    }

    /// libx264's access unit `au` as it goes into the stream: with the skip pictures' parameter
    /// set beside libx264's on keyframes, and renumbered for the skip pictures put in before it.
    fn numbered(&mut self, keyframe: bool, au: &[u8]) -> Vec<u8> {
        if keyframe && !self.skip_checked {
            self.skip_checked = true;
            self.skip = h264::Extra::for_stream(au);
            if self.skip.is_none() {
                tracing::info!(
                    "this encoder's stream does not allow hand-made skip pictures; libx264 codes unchanged pictures"
                );
            }
        }
        let Some(extra) = &self.skip else {
            return au.to_vec();
        };
        match self.numbering.renumber(extra, au, keyframe) {
            Some(au) => au,
            None => {
                // Cannot happen with a stream whose keyframe was read; if it does, the
                // pictures since the last keyframe may not decode: start afresh.
                tracing::error!(
                    "could not renumber an encoded picture; pictures up to the next keyframe may not decode, and unchanged pictures are coded by libx264 from now on"
                );
                self.skip = None;
                self.last_key = None;
                au.to_vec()
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A screen-like image: flat areas, thin coloured strokes, a gradient.
    pub(super) fn busy(w: u32, h: u32, seed: u32) -> Frame {
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

    /// Converting only the changed rectangles gives exactly the picture a whole-frame
    /// conversion gives, including rectangles at odd positions, at the screen's edges, and
    /// overlapping.
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

    /// Decodes Annex B access units one by one with FFmpeg's H.264 decoder; returns each
    /// picture's luma plane, and fails on any decoding error.
    pub(super) fn decode(aus: &[Vec<u8>], w: usize, h: usize) -> Vec<Vec<u8>> {
        let codec = ffmpeg::decoder::find(codec::Id::H264).unwrap();
        // Damage is an error ("explode"), not concealed.
        let mut opts = Dictionary::new();
        opts.set("err_detect", "crccheck+bitstream+buffer+explode");
        let mut dec = codec::context::Context::new_with_codec(codec)
            .decoder()
            .open_as_with(codec, opts)
            .unwrap()
            .video()
            .unwrap();
        let mut out = Vec::new();
        let mut pic = frame::Video::empty();
        for au in aus {
            dec.send_packet(&Packet::copy(au)).unwrap();
            while dec.receive_frame(&mut pic).is_ok() {
                assert!(
                    !pic.is_corrupt(),
                    "picture {} decoded as corrupt",
                    out.len()
                );
                let s = pic.stride(0);
                out.push(
                    (0..h)
                        .flat_map(|y| pic.data(0)[y * s..y * s + w].to_vec())
                        .collect(),
                );
            }
        }
        out
    }

    /// `show` (the luma of a picture `w` wide) with the macroblocks the intra coder coded last
    /// replaced by what they decode to in its own small picture: what a hand-made picture that
    /// carries them must show there, bit for bit. Each must also be near the samples it
    /// replaces (quantiser 28), so a macroblock coded from the wrong place fails. Returns the
    /// picture and the macroblocks.
    fn with_intra(enc: &Encoder, mut show: Vec<u8>, w: usize) -> (Vec<u8>, Vec<usize>) {
        let (au, mbs) = enc
            .intra
            .as_ref()
            .expect("an intra coder")
            .last
            .clone()
            .expect("the intra coder coded a picture");
        let small = decode(&[au], intra::SLOTS * 16, 16).remove(0);
        let mbw = w / 16;
        for (slot, &mb) in mbs.iter().enumerate() {
            let (mx, my) = (mb % mbw, mb / mbw);
            let mut off = 0.0;
            for y in 0..16 {
                let at = (my * 16 + y) * w + mx * 16;
                let coded = &small[y * intra::SLOTS * 16 + slot * 16..][..16];
                off += mean_diff(&show[at..at + 16], coded) / 16.0;
                show[at..at + 16].copy_from_slice(coded);
            }
            assert!(
                off < 8.0,
                "macroblock {mb} decodes {off:.2} off its samples"
            );
        }
        (show, mbs)
    }

    fn mean_diff(a: &[u8], b: &[u8]) -> f64 {
        a.iter()
            .zip(b)
            .map(|(x, y)| f64::from(x.abs_diff(*y)))
            .sum::<f64>()
            / a.len() as f64
    }

    /// Encodes four pictures with 3, 2, 4 and 0 repeats after them (none when
    /// `repeats` is false: only the changes, at the same times); returns the access units, the
    /// luma of what each one was to show, and the encoder.
    fn sequence(repeats: bool) -> (Vec<Vec<u8>>, Vec<Vec<u8>>, Encoder) {
        let (w, h) = (320, 240);
        let mut enc = Encoder::new(w, h, EncoderConfig::default()).unwrap();
        // Each picture far from the one before (light, dark, light, dark), so one decoded
        // from the wrong reference shows.
        let inverted = |mut f: Frame| {
            for px in f.data.chunks_exact_mut(4) {
                for c in &mut px[..3] {
                    *c = 255 - *c;
                }
            }
            f
        };
        let (a, b) = (busy(w, h, 0), inverted(busy(w, h, 5)));
        let (c, d) = (busy(w, h, 9), inverted(busy(w, h, 0)));
        let (mut aus, mut sources) = (Vec::new(), Vec::new());
        let mut t = 0u64;
        for (frame, n) in [(&a, 3), (&b, 2), (&c, 4), (&d, 0)] {
            t += 200_000;
            for f in enc.encode(frame, MediaTime::from_micros(t)).unwrap() {
                aus.push(f.access_unit);
            }
            enc.yuv_luma_into(&mut sources);
            for _ in 0..n {
                t += 2_000_000;
                if repeats {
                    let out = enc.repeat(MediaTime::from_micros(t)).unwrap();
                    assert_eq!(out.len(), 1);
                    assert!(!out[0].keyframe);
                    aus.push(out[0].access_unit.clone());
                    enc.yuv_luma_into(&mut sources);
                }
            }
        }
        (aus, sources, enc)
    }

    /// Unchanged pictures go in as hand-made skip pictures, and the stream still decodes:
    /// each skip picture shows exactly the picture before it, and libx264's pictures after
    /// them (renumbered) decode to exactly what they decode to in a stream without the skip
    /// pictures, not to pictures predicted from the wrong frame.
    #[test]
    fn skip_pictures_decode_as_the_last_picture_and_what_follows_them_decodes_right() {
        let (aus, sources, enc) = sequence(true);
        assert!(enc.skip.is_some(), "libx264's stream allows skip pictures");
        let small: Vec<usize> = aus.iter().map(Vec::len).filter(|&n| n < 64).collect();
        // Nine repeats of a few bytes each: nothing was analysed.
        assert_eq!(small.len(), 9, "{small:?}");
        let (plain_aus, _, plain) = sequence(false);
        assert!(plain.skip.is_some());
        assert_eq!(plain_aus.len(), 4);
        let decoded = decode(&aus, 320, 240);
        let plain_decoded = decode(&plain_aus, 320, 240);
        assert_eq!(decoded.len(), sources.len());
        let mut i = 0;
        for (k, repeats) in [3usize, 2, 4, 0].into_iter().enumerate() {
            assert!(
                decoded[i] == plain_decoded[k],
                "picture {i} (change {k}) decodes otherwise than without skip pictures"
            );
            // It shows its source (CRF 28), far closer than the picture before it would: a
            // picture decoded from the wrong reference would show; the check can fail.
            let d = mean_diff(&decoded[i], &sources[i]);
            assert!(d < 4.0, "picture {i} is {d:.2} off its source");
            if i > 0 {
                let change = mean_diff(&sources[i], &sources[i - 1]);
                assert!(change > 10.0 * d, "{change:.2} against {d:.2}");
            }
            for r in 1..=repeats {
                assert!(
                    decoded[i + r] == decoded[i],
                    "skip picture {r} after change {k} is not the picture before it"
                );
            }
            i += 1 + repeats;
        }
    }

    /// With libx264 told which macroblocks are unchanged, what did change still reaches the
    /// stream, up to the edges of each changed rectangle (thin ones, ones that straddle
    /// macroblock boundaries), and what did not change decodes as the picture before.
    #[test]
    fn unchanged_macroblocks_are_skipped_and_changed_ones_are_coded() {
        small_changes_reach_the_stream(Coder::X264);
    }

    /// The same change, small enough for a hand-made picture: its macroblocks are coded by the
    /// intra coder, each alone in a slice, and decode bit for bit to what they decode to in the
    /// intra coder's own picture, in fewer bytes than sent as they are.
    #[test]
    fn a_small_change_goes_in_as_a_hand_made_picture_of_intra_macroblocks() {
        small_changes_reach_the_stream(Coder::Intra);
    }

    /// Without the intra coder, a small change's macroblocks are sent as they are (`I_PCM`),
    /// so they decode to exactly the converted picture.
    #[test]
    fn without_the_intra_coder_a_small_change_goes_in_losslessly() {
        small_changes_reach_the_stream(Coder::Pcm);
    }

    /// A change of 20 macroblocks (a row of them) is hand-made with the intra coder, and
    /// libx264's without it: as `I_PCM` it would be 7.5 KB.
    #[test]
    fn without_the_intra_coder_a_larger_change_goes_to_libx264() {
        let (w, h) = (320, 240);
        let row = Rect {
            x: 0,
            y: 100,
            w,
            h: 8,
        };
        for intra in [true, false] {
            let (enc, aus) = busy_then_black(w, h, row, intra);
            let extra = enc.skip.as_ref().unwrap();
            assert_eq!(extra.made_by_hand(&aus[1]), intra, "intra coder: {intra}");
        }
    }

    /// A `w` x `h` busy screen, then `change` painted black, encoded with the intra coder or
    /// without it: the encoder and the two access units.
    fn busy_then_black(w: u32, h: u32, change: Rect, intra: bool) -> (Encoder, Vec<Vec<u8>>) {
        let mut enc = Encoder::new(w, h, EncoderConfig::default()).unwrap();
        if !intra {
            enc.intra = None;
        }
        let mut f = busy(w, h, 0);
        let mut aus: Vec<Vec<u8>> = enc_out(enc.encode(&f, MediaTime::ZERO))
            .into_iter()
            .map(|f| f.access_unit)
            .collect();
        f.fill(change.x, change.y, change.w, change.h, [0, 0, 0, 255]);
        let out = enc_out(enc.encode_changed(&f, &[change], MediaTime::from_micros(200_000)));
        assert_eq!(out.len(), 1);
        aus.extend(out.into_iter().map(|f| f.access_unit));
        assert_eq!(aus.len(), 2);
        (enc, aus)
    }

    /// A screen whose width and height are not whole macroblocks (1366 x 768 and the like): a
    /// small change in the last, partial macroblock column and row goes in by hand, intra-coded
    /// or as `I_PCM`, and the stream decodes with the change shown there.
    #[test]
    fn a_small_change_at_the_edge_of_a_screen_of_partial_macroblocks_decodes() {
        let (w, h) = (326, 234);
        let corner = Rect {
            x: 318,
            y: 226,
            w: 8,
            h: 8,
        };
        for intra in [true, false] {
            let (enc, aus) = busy_then_black(w, h, corner, intra);
            assert!(enc.skip.as_ref().unwrap().made_by_hand(&aus[1]));
            let mut sources = Vec::new();
            enc.yuv_luma_into(&mut sources);
            let decoded = decode(&aus, w as usize, h as usize);
            assert_eq!(decoded.len(), 2);
            let at = ((h - 2) * w + (w - 2)) as usize;
            assert!(
                decoded[1][at].abs_diff(sources[0][at]) < 24,
                "intra coder {intra}: the corner shows {} for {}",
                decoded[1][at],
                sources[0][at]
            );
        }
    }

    /// Who codes a change in [`small_changes_reach_the_stream`].
    #[derive(Debug, Clone, Copy, PartialEq, Eq)]
    enum Coder {
        X264,
        Intra,
        Pcm,
    }

    fn small_changes_reach_the_stream(coder: Coder) {
        let by_hand = coder != Coder::X264;
        let (w, h) = (320, 240);
        let a = busy(w, h, 0);
        let mut b = a.clone();
        let changed = [
            Rect {
                x: 61,
                y: 45,
                w: 3,
                h: 20,
            },
            Rect {
                x: 200,
                y: 15,
                w: 1,
                h: 1,
            },
            Rect {
                x: 128,
                y: 160,
                w: 20,
                h: 10,
            },
        ];
        for r in changed {
            b.fill(r.x, r.y, r.w, r.h, [0, 0, 0, 255]);
        }
        let mut enc = Encoder::new(w, h, EncoderConfig::default()).unwrap();
        assert!(enc.intra.is_some(), "the intra coder opens");
        if coder == Coder::Pcm {
            enc.intra = None;
        }
        let mut aus: Vec<Vec<u8>> = Vec::new();
        let mut sources = Vec::new();
        aus.extend(
            enc.encode(&a, MediaTime::ZERO)
                .unwrap()
                .into_iter()
                .map(|f| f.access_unit),
        );
        enc.yuv_luma_into(&mut sources);
        if !by_hand {
            // Too large for a hand-made picture: libx264 codes the change.
            enc.hand_made_max_mbs = 0;
        }
        let out = enc
            .encode_changed(&b, &changed, MediaTime::from_micros(200_000))
            .unwrap();
        assert_eq!(out.len(), 1);
        let extra = enc
            .skip
            .as_ref()
            .expect("the stream allows hand-made pictures");
        assert_eq!(extra.made_by_hand(&out[0].access_unit), by_hand);
        let size = out[0].access_unit.len();
        aus.extend(out.into_iter().map(|f| f.access_unit));
        enc.yuv_luma_into(&mut sources);
        let decoded = decode(&aus, w as usize, h as usize);
        let at = |y: u32, x: u32| (y * w + x) as usize;
        assert_eq!(decoded.len(), 2);
        match coder {
            Coder::X264 => {}
            Coder::Pcm => {
                for r in changed {
                    for y in r.y..r.y + r.h {
                        let row = at(y, r.x)..at(y, r.x + r.w);
                        assert_eq!(decoded[1][row.clone()], sources[1][row], "row {y} of {r:?}");
                    }
                }
            }
            Coder::Intra => {
                let (want, mbs) = with_intra(&enc, sources[1].clone(), w as usize);
                let mut carried: Vec<usize> =
                    changed.iter().flat_map(|r| touched(*r, w, h)).collect();
                carried.sort_unstable();
                carried.dedup();
                assert_eq!(
                    mbs, carried,
                    "the intra coder coded the changed macroblocks"
                );
                for &mb in &mbs {
                    let (mx, my) = (mb as u32 % (w / 16), mb as u32 / (w / 16));
                    for y in my * 16..my * 16 + 16 {
                        let row = at(y, mx * 16)..at(y, mx * 16 + 16);
                        assert_eq!(
                            decoded[1][row.clone()],
                            want[row],
                            "row {y} of macroblock {mb}"
                        );
                    }
                }
                assert!(
                    size < mbs.len() * 384 / 2,
                    "{size} bytes for {} macroblocks: not much less than I_PCM",
                    mbs.len()
                );
            }
        }
        let mut shown = 0;
        for r in changed {
            // Every pixel the change made much darker shows it (a lone pixel is smoothed by the
            // coding, so "shows it" is: nearer what it became than what it was, by far).
            for y in r.y..r.y + r.h {
                for x in r.x..r.x + r.w {
                    let (got, want, before) = (
                        decoded[1][at(y, x)],
                        sources[1][at(y, x)],
                        sources[0][at(y, x)],
                    );
                    if before.abs_diff(want) > 48 {
                        shown += 1;
                        assert!(
                            u32::from(got.abs_diff(want)) * 4 < u32::from(before.abs_diff(want)),
                            "pixel ({x}, {y}) shows {got}, should be {want} (was {before})"
                        );
                    }
                }
            }
        }
        assert!(shown > 200, "{shown}");
        // Macroblocks no change reaches are exactly the picture before, those next to a coded
        // one aside (the loop filter may change three pixels on each side of their edge).
        let near = 16;
        let reach = |mx: u32, my: u32| {
            changed.iter().any(|r| {
                let (x0, y0) = (mx * 16, my * 16);
                r.x < x0 + 16 + near
                    && x0 < r.x + r.w + near
                    && r.y < y0 + 16 + near
                    && y0 < r.y + r.h + near
            })
        };
        let mut untouched = 0;
        for my in 0..h / 16 {
            for mx in 0..w / 16 {
                if reach(mx, my) {
                    continue;
                }
                untouched += 1;
                for y in my * 16..my * 16 + 16 {
                    let row = at(y, mx * 16)..at(y, mx * 16 + 16);
                    assert_eq!(
                        decoded[1][row.clone()],
                        decoded[0][row],
                        "macroblock ({mx}, {my})"
                    );
                }
            }
        }
        assert!(untouched > 200, "{untouched}");
    }

    /// The map of unchanged macroblocks leaves out every macroblock a changed rectangle touches,
    /// and only those.
    #[test]
    fn the_unchanged_map_leaves_out_every_macroblock_a_change_reaches() {
        let (w, h) = (320, 240);
        let mut enc = Encoder::new(w, h, EncoderConfig::default()).unwrap();
        let changed = [
            Rect {
                x: 61,
                y: 45,
                w: 3,
                h: 20,
            },
            Rect {
                x: 0,
                y: 0,
                w: 2,
                h: 2,
            },
            Rect {
                x: 318,
                y: 238,
                w: 2,
                h: 2,
            },
            Rect {
                x: 100,
                y: 12,
                w: 1,
                h: 1,
            },
        ];
        enc.mark_unchanged(&changed);
        let mbw = (w / 16) as usize;
        let mut reached = vec![false; enc.unchanged.len()];
        for r in changed {
            for y in r.y..(r.y + r.h).min(h) {
                for x in r.x..(r.x + r.w).min(w) {
                    let mb = (y / 16) as usize * mbw + (x / 16) as usize;
                    reached[mb] = true;
                    assert_eq!(
                        enc.unchanged[mb], 0,
                        "pixel ({x}, {y}) is in an unchanged macroblock"
                    );
                }
            }
        }
        for (mb, r) in reached.iter().enumerate() {
            assert_eq!(enc.unchanged[mb] == 0, *r, "macroblock {mb}");
        }
    }

    /// A picture put in: its access unit, what it was to show, and (hand-made ones) which
    /// macroblocks it carries.
    type Picture = (Vec<u8>, Vec<u8>, Option<Vec<usize>>);

    /// The macroblocks (row by row) that a rectangle touches once its corners are rounded out to
    /// even coordinates, worked out pixel by pixel.
    fn touched(r: Rect, w: u32, h: u32) -> Vec<usize> {
        let mbw = w.div_ceil(16) as usize;
        let (x0, y0) = (r.x & !1, r.y & !1);
        let (x1, y1) = ((r.x + r.w + 1) & !1, (r.y + r.h + 1) & !1);
        let mut mbs: Vec<usize> = (y0..y1.min(h))
            .flat_map(|y| (x0..x1.min(w)).map(move |x| (y / 16) as usize * mbw + (x / 16) as usize))
            .collect();
        mbs.sort_unstable();
        mbs.dedup();
        mbs
    }

    /// A run of small changes (a clock's seconds, 40 of them) goes in as hand-made pictures,
    /// each building on the one before: it shows the picture before with exactly the macroblocks
    /// its change touched replaced by their converted samples; an idle repeat in the run is a
    /// skip picture. A run is longer than `frame_num`'s range (libx264 numbers in 4 bits:
    /// 16), and libx264 codes one tick in the middle (second 30, 31 pictures after its last)
    /// and the large change at the end (11 after). libx264's pictures after a run decode right
    /// (their reference is libx264's own last picture, kept as the long-term reference, and
    /// libx264 was told which macroblocks the run changed, so the clock shows), so does a
    /// second one of libx264's right after, and a run after those builds on them.
    #[test]
    fn a_run_of_small_changes_builds_on_itself_and_libx264_takes_over_right() {
        run_of_small_changes("veryfast", true);
    }

    /// The same run with the hand-made pictures' macroblocks sent as they are (`I_PCM`, as
    /// when no intra coder could be opened).
    #[test]
    fn a_run_of_lossless_small_changes_builds_on_itself_too() {
        run_of_small_changes("veryfast", false);
    }

    /// The same with a preset that asks libx264 for more than one reference (`fast`: two):
    /// libx264 is held to one, else its second would be a picture the stream no longer holds.
    #[test]
    fn a_preset_with_more_references_still_decodes_right() {
        run_of_small_changes("fast", true);
    }

    fn run_of_small_changes(preset: &str, intra: bool) {
        let (w, h) = (320, 240);
        let base = busy(w, h, 0);
        let config = EncoderConfig {
            preset: preset.into(),
            ..EncoderConfig::default()
        };
        let mut enc = Encoder::new(w, h, config).unwrap();
        if !intra {
            enc.intra = None;
        }
        let mut pics: Vec<Picture> = Vec::new();
        let put = |pics: &mut Vec<Picture>,
                   enc: &Encoder,
                   out: Vec<EncodedFrame>,
                   carried: Vec<usize>| {
            assert_eq!(out.len(), 1);
            let au = out.into_iter().next().unwrap().access_unit;
            let hand = enc.skip.as_ref().unwrap().made_by_hand(&au);
            let mut show = Vec::new();
            enc.yuv_luma_into(&mut show);
            let mut show = show.remove(0);
            if hand && intra && !carried.is_empty() {
                // What its macroblocks decode to in the intra coder's picture, which must be
                // these very macroblocks.
                let (want, mbs) = with_intra(enc, show, w as usize);
                assert_eq!(
                    mbs, carried,
                    "the intra coder coded the changed macroblocks"
                );
                show = want;
            }
            pics.push((au, show, hand.then_some(carried)));
        };
        let out = enc_out(enc.encode(&base, MediaTime::ZERO));
        put(&mut pics, &enc, out, Vec::new());
        let mut screen = base.clone();
        // Five pictures a second, so the run stays within the keyframe interval.
        let mut t = 0u64;
        let tick = |pics: &mut Vec<Picture>,
                    enc: &mut Encoder,
                    screen: &mut Frame,
                    t: &mut u64,
                    second: u32| {
            *t += 200_000;
            // A digit of a clock at the top right, its two places in turn.
            let r = Rect {
                x: 279 + 9 * (second % 2),
                y: 4,
                w: 7,
                h: 12,
            };
            screen.fill(r.x, r.y, r.w, r.h, [(second * 40) as u8, 0, 0, 255]);
            let mut rects = vec![r];
            if second == 10 {
                // Two macroblocks of the picture moved 4 pixels to the right, which libx264
                // codes from its own reference by a motion vector: decoded from any other
                // picture, they would show moved twice.
                let m = Rect {
                    x: 32,
                    y: 208,
                    w: 32,
                    h: 16,
                };
                for y in m.y..m.y + m.h {
                    for x in (m.x..m.x + m.w).rev() {
                        let from = y as usize * screen.stride + (x - 4) as usize * 4;
                        let px: [u8; 4] = screen.data[from..from + 4].try_into().unwrap();
                        screen.fill(x, y, 1, 1, px);
                    }
                }
                rects.push(m);
            }
            if second == 30 {
                // One tick of the clock coded by libx264, 30 pictures after its last: its
                // small change is predicted from its reference, so the wrong one would show.
                enc.hand_made_max_mbs = 0;
            }
            let out = enc_out(enc.encode_changed(screen, &rects, MediaTime::from_micros(*t)));
            enc.hand_made_max_mbs = HAND_MADE_MAX_MBS;
            let mut carried: Vec<usize> = rects.iter().flat_map(|r| touched(*r, w, h)).collect();
            carried.sort_unstable();
            carried.dedup();
            put(pics, enc, out, carried);
            if second == 20 {
                // Idle in the middle of the run: a skip picture.
                *t += 100_000;
                let out = enc_out(enc.repeat(MediaTime::from_micros(*t)));
                assert!(out[0].access_unit.len() < 64);
                put(pics, enc, out, Vec::new());
            }
        };
        for second in 0..40 {
            tick(&mut pics, &mut enc, &mut screen, &mut t, second);
        }
        // A large change (a window drawn over the left half): libx264's.
        let window = Rect {
            x: 0,
            y: 40,
            w: 160,
            h: 160,
        };
        screen.fill(window.x, window.y, window.w, window.h, [20, 120, 200, 255]);
        t += 200_000;
        let out = enc_out(enc.encode_changed(&screen, &[window], MediaTime::from_micros(t)));
        put(&mut pics, &enc, out, Vec::new());
        assert!(enc.since_x264.iter().all(|&c| c == 0));
        // And another over it: libx264 after libx264, with the run's last picture still in
        // the buffer beside its own.
        screen.fill(window.x, window.y, window.w, window.h, [200, 120, 20, 255]);
        t += 200_000;
        let out = enc_out(enc.encode_changed(&screen, &[window], MediaTime::from_micros(t)));
        put(&mut pics, &enc, out, Vec::new());
        // All 41 small and unchanged pictures are hand-made, but for second 30's (the skip
        // picture after second 20 is the 22nd).
        let mut want = vec![false];
        want.extend([true; 41]);
        want[32] = false;
        want.extend([false; 2]);
        let mut hand: Vec<bool> = pics.iter().map(|p| p.2.is_some()).collect();
        assert_eq!(
            hand, want,
            "the run is hand-made, the large changes libx264's"
        );
        // A second run, over libx264's new pictures.
        for second in 40..43 {
            tick(&mut pics, &mut enc, &mut screen, &mut t, second);
        }
        hand = pics.iter().map(|p| p.2.is_some()).collect();
        want.extend([true; 3]);
        assert_eq!(hand, want);
        check_pictures(&pics, &enc.raw, w, h);
    }

    /// Decodes the pictures and checks each: a hand-made one shows the macroblocks it carries
    /// exactly as it was to (as converted, or as the intra coder's picture decodes) and the
    /// rest exactly as the picture before; libx264's is bit for
    /// bit what libx264's own pictures decode to alone (`raw`), and shows the whole screen
    /// within coding error, the clock's corner too.
    fn check_pictures(pics: &[Picture], raw: &[Vec<u8>], w: u32, h: u32) {
        let aus: Vec<Vec<u8>> = pics.iter().map(|p| p.0.clone()).collect();
        let decoded = decode(&aus, w as usize, h as usize);
        assert_eq!(decoded.len(), pics.len());
        let alone = decode(raw, w as usize, h as usize);
        let by_x264: Vec<usize> = (0..pics.len()).filter(|&k| pics[k].2.is_none()).collect();
        assert_eq!(by_x264.len(), alone.len());
        for (&k, alone) in by_x264.iter().zip(&alone) {
            assert!(
                decoded[k] == *alone,
                "libx264's picture {k} decodes otherwise than libx264's pictures alone"
            );
        }
        let (mbw, row) = ((w / 16) as usize, w as usize);
        for (k, (_, show, carried)) in pics.iter().enumerate() {
            match carried {
                Some(carried) => {
                    for mb in 0..mbw * (h as usize / 16) {
                        let (mx, my) = (mb % mbw, mb / mbw);
                        let want = if carried.contains(&mb) {
                            show
                        } else {
                            &decoded[k - 1]
                        };
                        for y in my * 16..my * 16 + 16 {
                            let r = y * row + mx * 16..y * row + mx * 16 + 16;
                            assert!(
                                decoded[k][r.clone()] == want[r],
                                "picture {k}, macroblock ({mx}, {my})"
                            );
                        }
                    }
                }
                None => {
                    let d = mean_diff(&decoded[k], show);
                    assert!(d < 3.0, "picture {k} is {d:.2} off");
                    let off = (4..16)
                        .flat_map(|y| (279..295).map(move |x| y * row + x))
                        .map(|i| u32::from(decoded[k][i].abs_diff(show[i])))
                        .max()
                        .unwrap();
                    assert!(off < 40, "the clock is {off} off in picture {k}");
                }
            }
        }
    }

    /// A screen where only a clock ticks gets a keyframe only at the idle interval (a
    /// minute), not at the normal one (10 s); past the normal interval since, a change too
    /// large for a hand-made picture but under a third of the screen is still no keyframe,
    /// and the first change of a third or more is.
    #[test]
    fn small_changes_wait_for_the_idle_keyframe_interval_a_large_change_does_not() {
        let (w, h) = (320, 240);
        let config = EncoderConfig::default();
        let idle = config.idle_keyframe_interval();
        assert!(idle >= config.keyframe_interval * 2);
        let mut enc = Encoder::new(w, h, config.clone()).unwrap();
        let mut screen = busy(w, h, 0);
        let first = enc_out(enc.encode(&screen, MediaTime::ZERO));
        assert!(first[0].keyframe);
        let digit = Rect {
            x: 280,
            y: 4,
            w: 7,
            h: 12,
        };
        let mut keyframes = Vec::new();
        let mut t = MediaTime::ZERO;
        // A tick a second, to past the idle interval.
        for second in 1..=idle.as_secs() + 1 {
            t = MediaTime::from_micros(second * 1_000_000);
            screen.fill(
                digit.x,
                digit.y,
                digit.w,
                digit.h,
                [(second * 40) as u8, 0, 0, 255],
            );
            for f in enc_out(enc.encode_changed(&screen, &[digit], t)) {
                if f.keyframe {
                    keyframes.push(f.pts.as_micros() / 1_000_000);
                }
            }
        }
        assert_eq!(keyframes, [idle.as_secs()], "keyframes of a ticking clock");
        // Past the normal interval since that keyframe: a medium change (77 of the screen's
        // 300 macroblocks, more than a hand-made picture holds) goes to libx264 and is no
        // keyframe...
        t = MediaTime::from_micros(t.as_micros() + config.keyframe_interval.as_micros() as u64);
        let pane = Rect {
            x: 144,
            y: 112,
            w: 176,
            h: 112,
        };
        const { assert!(11 * 7 > HAND_MADE_MAX_MBS && 11 * 7 * 3 < 20 * 15) };
        screen.fill(pane.x, pane.y, pane.w, pane.h, [200, 180, 20, 255]);
        let x264_before = enc.raw.len();
        let out = enc_out(enc.encode_changed(&screen, &[pane], t));
        assert_eq!(
            enc.raw.len(),
            x264_before + 1,
            "libx264 codes the medium change"
        );
        assert!(
            !out[0].keyframe,
            "a medium change after the normal interval"
        );
        // ...and a large one (110 macroblocks) is.
        t = MediaTime::from_micros(t.as_micros() + 200_000);
        let window = Rect {
            x: 0,
            y: 40,
            w: 160,
            h: 160,
        };
        screen.fill(window.x, window.y, window.w, window.h, [20, 120, 200, 255]);
        let out = enc_out(enc.encode_changed(&screen, &[window], t));
        assert!(out[0].keyframe, "a large change after the normal interval");
    }

    fn enc_out(r: Result<Vec<EncodedFrame>, EncodeError>) -> Vec<EncodedFrame> {
        r.unwrap()
    }
}
