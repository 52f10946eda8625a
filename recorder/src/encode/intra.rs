//! The intra coder: lossy intra macroblocks for the hand-made pictures of small changes.
//!
//! A hand-made picture (`h264.rs`) carried its changed macroblocks as `I_PCM` until
//! 2026-12-04: lossless, no analysis, but 384 bytes a macroblock, which made a clock ticking on
//! an idle screen cost 25 MB an hour where ffmpeg's whole stream cost 3. Coding them properly
//! (a prediction, a transform, quantised coefficients in CAVLC) is what an encoder does, so a
//! second libx264 does it: a small one, [`SLOTS`] macroblocks wide and one high, into which
//! the changed macroblocks are copied side by side, coded as an IDR picture with one
//! macroblock per slice (`slice-max-mbs=1`), CAVLC, no 8x8 transform, no loop filter and the
//! main encoder's quantiser. Alone in its slice, a macroblock predicts from nothing around it
//! (the standard makes other slices' macroblocks unavailable), so its bits mean the same in
//! a hand-made picture, where it again starts a slice of its own: it decodes there to exactly
//! what it decoded to in the small picture (tested, bit for bit). [`h264::IntraStream`] reads
//! the bits out, [`h264::Numbering::intra_picture`] writes them in.
//!
//! Measured on the build machine (release build, Debian's libx264 0.164, `veryfast`, quantiser
//! 28, 64 slots, a loop in a test): coding 1 macroblock of dense synthetic text took 82 us, 4
//! took 95, 16 took 205 and 64 took 630; with 16 slots a clock digit's whole hand-made picture
//! at 1080p took 60 us and about 60 bytes. In the recorder benchmark a hand-made picture of the
//! idle clock went from 4,570 bytes (`I_PCM`) to 1,009; with 64 slots rather than 16 more of
//! the workload's small changes are hand-made (docs/recorder.md has the runs).

use super::h264::{self, IntraMb, IntraStream};
use super::x264::{Picture, X264};

/// Macroblocks the intra coder's picture holds, so the most a hand-made picture carries: a
/// typed word or a short line, where libx264 would spend its whole-frame loop (about 2 ms at
/// 1080p even for a few macroblocks) on each. Slots left over are coded too, flat (about a
/// microsecond each).
pub const SLOTS: usize = 64;

/// A libx264 encoder for [`SLOTS`] intra macroblocks at a time, and its stream's parameters.
pub struct IntraCoder {
    x264: X264,
    stream: IntraStream,
    /// The small picture's planes (luma [`SLOTS`] macroblocks of 16 x 16 side by side, chroma
    /// 8 x 8).
    planes: [Vec<u8>; 3],
    pts: i64,
    /// Whether a picture failed already (said at WARN once, then at DEBUG).
    failed: bool,
    /// The last access unit coded and which macroblocks it held (tests decode it: what the
    /// hand-made picture's macroblocks must decode to).
    #[cfg(test)]
    pub(super) last: Option<(Vec<u8>, Vec<usize>)>,
}

impl std::fmt::Debug for IntraCoder {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("IntraCoder").finish_non_exhaustive()
    }
}

/// Bytes per row of plane `p` of the small picture.
fn stride(p: usize) -> usize {
    if p == 0 { SLOTS * 16 } else { SLOTS * 8 }
}

impl IntraCoder {
    /// Opens the coder with libx264's `preset` at quantiser `qp`, and checks on a first
    /// picture that its macroblocks can go into hand-made pictures (`Err`: why not; the
    /// hand-made pictures then carry `I_PCM`).
    pub fn open(preset: &str, qp: u8) -> Result<Self, String> {
        let params: Vec<(String, String)> = [
            ("qp", qp.to_string()),
            ("slice-max-mbs", "1".to_owned()),
            ("cabac", "0".to_owned()),
            ("8x8dct", "0".to_owned()),
            ("nf", "1".to_owned()),
            // Nothing to weigh in I pictures, but the flag would be in the parameter set.
            ("weightp", "0".to_owned()),
            // Psychovisual tuning moves the chroma quantiser (an offset in the picture
            // parameter set, which ours does not have) and adaptive quantisation the
            // macroblock's; neither is wanted here.
            ("psy", "0".to_owned()),
            ("aq-mode", "0".to_owned()),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_owned(), v))
        .collect();
        let mut x264 = X264::open((SLOTS * 16) as u32, 16, 90_000, 5, preset, &params)?;
        let planes = [
            vec![128; SLOTS * 256],
            vec![128; SLOTS * 64],
            vec![128; SLOTS * 64],
        ];
        let au = encode(&mut x264, &planes, 0)?;
        let stream = IntraStream::from_headers(&au)
            .ok_or("libx264's intra stream has settings a hand-made picture cannot carry")?;
        if stream.macroblocks(&au).map(|m| m.len()) != Some(SLOTS) {
            return Err("libx264's intra picture is not one macroblock per slice".to_owned());
        }
        Ok(Self {
            x264,
            stream,
            planes,
            pts: 0,
            failed: false,
            #[cfg(test)]
            last: None,
        })
    }

    /// Codes macroblocks `mbs` (indices, row by row) of `planes`, a picture `width_mbs`
    /// macroblocks wide; `None` when there are more than [`SLOTS`], or libx264 failed or made
    /// a picture whose macroblocks cannot be moved (the caller then sends them as `I_PCM`, or
    /// gives a larger change to the main encoder).
    pub fn code(
        &mut self,
        planes: &h264::Planes<'_>,
        width_mbs: usize,
        mbs: &[usize],
    ) -> Option<Vec<IntraMb>> {
        if mbs.len() > SLOTS {
            return None;
        }
        for (slot, &mb) in mbs.iter().enumerate() {
            let (mx, my) = (mb % width_mbs, mb / width_mbs);
            for (p, size) in [(0usize, 16usize), (1, 8), (2, 8)] {
                for y in 0..size {
                    let to = &mut self.planes[p][y * stride(p) + slot * size..][..size];
                    planes.macroblock_row(p, mx, my, y, to);
                }
            }
        }
        // Slots left over are flat: libx264 codes them too (cheaply), and they are dropped.
        for slot in mbs.len()..SLOTS {
            for (p, size) in [(0usize, 16usize), (1, 8), (2, 8)] {
                for y in 0..size {
                    self.planes[p][y * stride(p) + slot * size..][..size].fill(128);
                }
            }
        }
        self.pts += 1;
        let coded = encode(&mut self.x264, &self.planes, self.pts).and_then(|au| {
            let mbs = self
                .stream
                .macroblocks(&au)
                .filter(|m| m.len() == SLOTS)
                .ok_or("its picture is not one intra macroblock per slice")?;
            Ok((au, mbs))
        });
        let (au, mut coded) = match coded {
            Ok(c) => c,
            Err(e) => {
                if std::mem::replace(&mut self.failed, true) {
                    tracing::debug!(error = %e, "the intra coder failed again");
                } else {
                    tracing::warn!(error = %e, "the intra coder failed; this change goes in without it (as I_PCM, or to libx264 if larger)");
                }
                return None;
            }
        };
        coded.truncate(mbs.len());
        #[cfg(test)]
        {
            self.last = Some((au, mbs.to_vec()));
        }
        #[cfg(not(test))]
        drop(au);
        Some(coded)
    }
}

/// Codes the small picture `planes` as an IDR picture.
fn encode(x264: &mut X264, planes: &[Vec<u8>; 3], pts: i64) -> Result<Vec<u8>, String> {
    let pic = Picture {
        planes: [&planes[0], &planes[1], &planes[2]],
        strides: [stride(0), stride(1), stride(2)],
        pts,
        keyframe: true,
        unchanged: None,
    };
    let coded = x264
        .encode(&pic)?
        .ok_or("libx264 kept the intra picture back")?;
    Ok(coded.access_unit)
}
