//! Just enough of the H.264 bitstream (ITU-T H.264 section 7) to write an unchanged picture by
//! hand: an all-skip P picture costs microseconds, where asking the encoder to code the same
//! picture again costs a whole-frame analysis (about 9 ms at 1080p with libx264), most of what an
//! idle screen cost the recorder.
//!
//! A skip picture is a reference picture coded through a parameter set of our own ([`Extra`],
//! CAVLC, no weighted prediction, added to the stream's `avcC` beside the encoder's): every
//! macroblock is `P_Skip`, and since no neighbour has motion, each takes motion vector zero and
//! the decoded picture is exactly the previous one. Being a reference picture, it takes a
//! `frame_num`, so the encoder's later pictures, which know nothing of it, are renumbered
//! ([`Numbering::renumber`]): `frame_num` is a fixed-width field at a fixed place in the slice
//! header, so it is rewritten in place. It is a reference picture because
//! `pic_order_cnt_type` 2 (libx264's without B-frames, where the picture order follows
//! `frame_num`) forbids two non-reference pictures in a row, which a long idle stretch would
//! need.
//!
//! A small change (a clock's second, a typed character) is written by hand too, as a
//! non-reference picture whose changed macroblocks are `I_PCM`, their samples as they are
//! ([`Numbering::pcm_picture`]): lossless, and nothing the encoder predicts from changes.
//!
//! The stream must have `pic_order_cnt_type` 2, one reference frame (with more, the encoder's
//! second reference would be our copy of its first), frame macroblocks only, no scaling
//! matrices and one slice group; [`Extra::for_stream`] says `None` otherwise, and the encoder
//! then codes repeats itself. Tested by decoding with FFmpeg's decoder, bit for bit against the
//! same stream without skip pictures.

/// Reads bits, most significant first, from an RBSP (emulation prevention removed).
struct BitReader<'a> {
    data: &'a [u8],
    pos: usize,
}

impl<'a> BitReader<'a> {
    fn new(data: &'a [u8]) -> Self {
        Self { data, pos: 0 }
    }

    fn bit(&mut self) -> Option<u32> {
        let byte = *self.data.get(self.pos / 8)?;
        let b = (byte >> (7 - self.pos % 8)) & 1;
        self.pos += 1;
        Some(u32::from(b))
    }

    fn u(&mut self, n: u32) -> Option<u32> {
        (0..n).try_fold(0u32, |v, _| Some((v << 1) | self.bit()?))
    }

    fn ue(&mut self) -> Option<u32> {
        let mut zeros = 0;
        while self.bit()? == 0 {
            zeros += 1;
            if zeros > 31 {
                return None;
            }
        }
        ((1u64 << zeros) - 1 + u64::from(self.u(zeros)?))
            .try_into()
            .ok()
    }

    #[cfg(test)]
    fn se(&mut self) -> Option<i32> {
        let k = self.ue()?;
        let v = k.div_ceil(2) as i32;
        Some(if k % 2 == 1 { v } else { -v })
    }
}

/// Writes bits, most significant first.
#[derive(Default)]
struct BitWriter {
    out: Vec<u8>,
    bits: u32,
}

impl BitWriter {
    fn bit(&mut self, b: u32) {
        if self.bits.is_multiple_of(8) {
            self.out.push(0);
        }
        if b & 1 == 1 {
            let last = self.out.len() - 1;
            self.out[last] |= 0x80 >> (self.bits % 8);
        }
        self.bits += 1;
    }

    fn u(&mut self, n: u32, v: u32) {
        for i in (0..n).rev() {
            self.bit(v >> i);
        }
    }

    fn ue(&mut self, v: u32) {
        let x = u64::from(v) + 1;
        let len = 64 - x.leading_zeros();
        self.u(len - 1, 0);
        for i in (0..len).rev() {
            self.bit((x >> i) as u32);
        }
    }

    fn se(&mut self, v: i32) {
        let k = if v > 0 {
            (v as u32) * 2 - 1
        } else {
            v.unsigned_abs() * 2
        };
        self.ue(k);
    }

    /// `rbsp_trailing_bits()`: a one, then zeros to the byte boundary.
    fn trailing(mut self) -> Vec<u8> {
        self.bit(1);
        while !self.bits.is_multiple_of(8) {
            self.bit(0);
        }
        self.out
    }
}

/// The RBSP of a NAL unit's payload (after its header byte): emulation prevention bytes (the
/// `03` of `00 00 03`) removed.
fn unescape(payload: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(payload.len());
    let mut zeros = 0;
    for &b in payload {
        if zeros >= 2 && b == 3 {
            zeros = 0;
            continue;
        }
        zeros = if b == 0 { zeros + 1 } else { 0 };
        out.push(b);
    }
    out
}

/// An RBSP made safe to carry: a `03` after every `00 00` that a byte of 3 or less follows.
fn escape(rbsp: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(rbsp.len() + 8);
    let mut zeros = 0;
    for &b in rbsp {
        if zeros >= 2 && b <= 3 {
            out.push(3);
            zeros = 0;
        }
        zeros = if b == 0 { zeros + 1 } else { 0 };
        out.push(b);
    }
    if out.last() == Some(&0) {
        // A NAL unit may not end in a zero byte (the encoder's `cabac_zero_word`s end in 03).
        out.push(3);
    }
    out
}

/// What the skip picture and the renumbering need of the encoder's sequence parameter set.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Sps {
    id: u32,
    log2_max_frame_num: u32,
    macroblocks: u32,
    /// Macroblocks per row.
    width_mbs: u32,
}

/// Profiles whose SPS carries chroma format, bit depths and scaling matrices (7.3.2.1.1).
const HIGH_PROFILES: [u32; 12] = [100, 110, 122, 244, 44, 83, 86, 118, 128, 138, 139, 134];

fn parse_sps(nal: &[u8]) -> Option<Sps> {
    let rbsp = unescape(nal.get(1..)?);
    let mut r = BitReader::new(&rbsp);
    let profile = r.u(8)?;
    r.u(16)?; // constraint flags, level
    let id = r.ue()?;
    if HIGH_PROFILES.contains(&profile) {
        let chroma_format = r.ue()?;
        if chroma_format == 3 && r.bit()? == 1 {
            return None; // separate colour planes
        }
        r.ue()?; // bit depths
        r.ue()?;
        r.bit()?; // transform bypass
        if r.bit()? == 1 {
            return None; // scaling matrices
        }
    }
    let log2_max_frame_num = r.ue()? + 4;
    if r.ue()? != 2 {
        return None; // the picture order is not frame_num's
    }
    let refs = r.ue()?;
    r.bit()?; // gaps in frame_num allowed
    let width = r.ue()? + 1;
    let height = r.ue()? + 1;
    let frame_mbs_only = r.bit()? == 1;
    if refs != 1 || !frame_mbs_only || log2_max_frame_num > 16 {
        return None;
    }
    Some(Sps {
        id,
        log2_max_frame_num,
        macroblocks: width.checked_mul(height)?,
        width_mbs: width,
    })
}

/// What the renumbering needs of the encoder's picture parameter set.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Pps {
    id: u32,
    sps_id: u32,
}

fn parse_pps(nal: &[u8]) -> Option<Pps> {
    let rbsp = unescape(nal.get(1..)?);
    let mut r = BitReader::new(&rbsp);
    let id = r.ue()?;
    let sps_id = r.ue()?;
    r.bit()?; // entropy coding mode
    r.bit()?; // bottom field pic order in frame present
    if r.ue()? != 0 {
        return None; // slice groups
    }
    Some(Pps { id, sps_id })
}

const NAL_SLICE: u8 = 1;
const NAL_IDR: u8 = 5;
const NAL_SPS: u8 = 7;
const NAL_PPS: u8 = 8;

/// The parameter set of our own that skip pictures are coded with, for one stream.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Extra {
    sps: Sps,
    pps_id: u32,
    /// The PPS NAL unit (header byte included), to go into the stream's `avcC`.
    pub pps_nal: Vec<u8>,
}

impl Extra {
    /// Our parameter set for the stream whose keyframe access unit (Annex B) is `au`, or `None`
    /// when the stream's structure does not allow skip pictures (see the module's doc).
    pub fn for_stream(au: &[u8]) -> Option<Self> {
        let nals = crate::fmp4::annexb_nals(au);
        let sps = nals
            .iter()
            .find(|n| n[0] & 0x1f == NAL_SPS)
            .and_then(|n| parse_sps(n))?;
        let ppss: Vec<Pps> = nals
            .iter()
            .filter(|n| n[0] & 0x1f == NAL_PPS)
            .filter_map(|n| parse_pps(n))
            .collect();
        if ppss.is_empty() || ppss.iter().any(|p| p.sps_id != sps.id) {
            return None;
        }
        let pps_id = ppss.iter().map(|p| p.id).max()? + 1;
        if pps_id > 255 {
            return None;
        }
        let mut w = BitWriter::default();
        w.ue(pps_id);
        w.ue(sps.id);
        w.bit(0); // CAVLC
        w.bit(0); // no bottom field pic order
        w.ue(0); // one slice group
        w.ue(0); // one reference by default
        w.ue(0);
        w.bit(0); // no weighted prediction
        w.u(2, 0);
        w.se(0); // pic_init_qp 26
        w.se(0);
        w.se(0); // chroma qp offset
        w.bit(1); // deblocking control present (skip pictures turn it off)
        w.bit(0); // no constrained intra prediction
        w.bit(0); // no redundant picture count
        let mut pps_nal = vec![0x68];
        pps_nal.extend(escape(&w.trailing()));
        Some(Self {
            sps,
            pps_id,
            pps_nal,
        })
    }
}

/// The reference numbering of one encoded stream, from its last IDR picture on, and how far the
/// skip pictures put in have moved the encoder's own.
#[derive(Debug, Clone, Default)]
pub struct Numbering {
    /// `frame_num` of the last reference picture in the stream (after renumbering).
    frame_num: u32,
    /// Skip pictures put in since the last IDR picture.
    inserted: u32,
}

impl Numbering {
    /// Renumbers an access unit (Annex B) of the encoder for the skip pictures put in before
    /// it, and notes its numbering. Returns the rewritten access unit; `None` if a slice header
    /// could not be read (the caller must then stop putting in skip pictures: the stream
    /// would not decode).
    /// On a keyframe, our parameter set goes in after the encoder's.
    pub fn renumber(&mut self, extra: &Extra, au: &[u8], keyframe: bool) -> Option<Vec<u8>> {
        let mut out = Vec::with_capacity(au.len() + 16);
        let nals = crate::fmp4::annexb_nals(au);
        let last_pps = nals.iter().rposition(|n| n[0] & 0x1f == NAL_PPS);
        for (i, nal) in nals.into_iter().enumerate() {
            let kind = nal[0] & 0x1f;
            let nal = match kind {
                NAL_IDR => {
                    self.inserted = 0;
                    self.frame_num = read_frame_num(&extra.sps, nal)?;
                    nal.to_vec()
                }
                NAL_SLICE => {
                    let rewritten = if self.inserted == 0 {
                        nal.to_vec()
                    } else {
                        shift_frame_num(&extra.sps, nal, self.inserted)?
                    };
                    if nal[0] & 0x60 != 0 {
                        self.frame_num = read_frame_num(&extra.sps, &rewritten)?;
                    }
                    rewritten
                }
                _ => nal.to_vec(),
            };
            out.extend_from_slice(&[0, 0, 0, 1]);
            out.extend_from_slice(&nal);
            if keyframe && Some(i) == last_pps {
                out.extend_from_slice(&[0, 0, 0, 1]);
                out.extend_from_slice(&extra.pps_nal);
            }
        }
        Some(out)
    }

    /// An access unit (Annex B) holding one all-skip P picture: the last picture again.
    pub fn skip_picture(&mut self, extra: &Extra) -> Vec<u8> {
        let sps = &extra.sps;
        self.frame_num = (self.frame_num + 1) % (1 << sps.log2_max_frame_num);
        let mut w = BitWriter::default();
        w.ue(0); // first macroblock
        w.ue(5); // P, all slices of the picture P
        w.ue(extra.pps_id);
        w.u(sps.log2_max_frame_num, self.frame_num);
        w.bit(0); // no num_ref_idx override
        w.bit(0); // no reference list modification
        w.bit(0); // sliding-window reference marking
        w.se(0); // slice qp delta
        w.ue(1); // no deblocking
        w.ue(sps.macroblocks); // every macroblock skipped
        self.inserted += 1;
        let mut au = vec![0, 0, 0, 1, 0x41];
        au.extend(escape(&w.trailing()));
        au
    }
}

/// The YUV 4:2:0 picture a [`Numbering::pcm_picture`] takes its samples from.
pub struct Planes<'a> {
    pub data: [&'a [u8]; 3],
    pub strides: [usize; 3],
    /// Rows of luma (the last macroblock row may reach past them: its rows there repeat the
    /// last one, which the decoder crops away).
    pub height: usize,
}

impl Numbering {
    /// An access unit (Annex B) holding one non-reference P picture: the last reference picture
    /// with the macroblocks `mbs` (indices, row by row, ascending) replaced by their samples in
    /// `planes`, sent as they are (`I_PCM`: lossless, 384 bytes a macroblock, no analysis).
    ///
    /// Being a non-reference picture, it changes nothing the encoder's later pictures predict
    /// from; each one must carry every macroblock that differs from the last reference picture.
    /// Two non-reference pictures may not follow each other (`pic_order_cnt_type` 2): the
    /// caller never puts two in a row.
    pub fn pcm_picture(&self, extra: &Extra, planes: &Planes<'_>, mbs: &[usize]) -> Vec<u8> {
        let sps = &extra.sps;
        let mut w = BitWriter::default();
        w.ue(0); // first macroblock
        w.ue(5); // P, all slices of the picture P
        w.ue(extra.pps_id);
        // A non-reference picture after a reference picture takes the next frame_num.
        w.u(
            sps.log2_max_frame_num,
            (self.frame_num + 1) % (1 << sps.log2_max_frame_num),
        );
        w.bit(0); // no num_ref_idx override
        w.bit(0); // no reference list modification
        // (no reference marking: nal_ref_idc is 0)
        w.se(0); // slice qp delta
        w.ue(1); // no deblocking
        let mut next = 0usize;
        for &mb in mbs {
            if mb < next || mb >= sps.macroblocks as usize {
                continue;
            }
            w.ue((mb - next) as u32); // skipped before it
            w.ue(30); // I_PCM in a P slice (5 + 25)
            while !w.bits.is_multiple_of(8) {
                w.bit(0); // pcm_alignment_zero_bit
            }
            let (mx, my) = (mb % sps.width_mbs as usize, mb / sps.width_mbs as usize);
            for (plane, size) in [(0usize, 16usize), (1, 8), (2, 8)] {
                let (stride, data) = (planes.strides[plane], planes.data[plane]);
                let rows = if plane == 0 {
                    planes.height
                } else {
                    planes.height / 2
                };
                for y in 0..size {
                    let row = (my * size + y).min(rows.saturating_sub(1));
                    let at = row * stride + mx * size;
                    for &v in &data[at..at + size] {
                        // A sample of 0 is kept out of the stream (older decoders refuse it);
                        // limited-range YUV never has one.
                        w.u(8, u32::from(v.max(1)));
                    }
                }
            }
            next = mb + 1;
        }
        if next < sps.macroblocks as usize {
            w.ue(sps.macroblocks - next as u32); // skipped after the last
        }
        let mut au = vec![0, 0, 0, 1, 0x01];
        au.extend(escape(&w.trailing()));
        au
    }
}

/// Where a slice header's `frame_num` is (its bit offset in the RBSP) and what it says.
fn locate(sps: &Sps, rbsp: &[u8]) -> Option<(usize, u32)> {
    let mut r = BitReader::new(rbsp);
    r.ue()?; // first macroblock
    r.ue()?; // slice type
    r.ue()?; // pps id
    let at = r.pos;
    Some((at, r.u(sps.log2_max_frame_num)?))
}

fn read_frame_num(sps: &Sps, nal: &[u8]) -> Option<u32> {
    let rbsp = unescape(nal.get(1..)?);
    Some(locate(sps, &rbsp)?.1)
}

/// `nal` (a non-IDR slice) with `frame_num` moved on by `by`, modulo its range.
fn shift_frame_num(sps: &Sps, nal: &[u8], by: u32) -> Option<Vec<u8>> {
    let mut rbsp = unescape(nal.get(1..)?);
    let (at, frame_num) = locate(sps, &rbsp)?;
    let max = 1u32 << sps.log2_max_frame_num;
    put_bits(
        &mut rbsp,
        at,
        sps.log2_max_frame_num,
        (frame_num + by % max) % max,
    );
    let mut out = vec![nal[0]];
    out.extend(escape(&rbsp));
    Some(out)
}

fn put_bits(data: &mut [u8], at: usize, n: u32, v: u32) {
    for i in 0..n as usize {
        let bit = (v >> (n as usize - 1 - i)) & 1;
        let (byte, shift) = ((at + i) / 8, 7 - (at + i) % 8);
        data[byte] = (data[byte] & !(1 << shift)) | ((bit as u8) << shift);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn exp_golomb_codes_read_back_what_was_written() {
        let mut w = BitWriter::default();
        for v in [0u32, 1, 2, 3, 7, 8, 255, 8160, 65_535] {
            w.ue(v);
        }
        for v in [0i32, 1, -1, 2, -2, 26, -26] {
            w.se(v);
        }
        w.u(13, 0x1abc);
        let bytes = w.trailing();
        let mut r = BitReader::new(&bytes);
        for v in [0u32, 1, 2, 3, 7, 8, 255, 8160, 65_535] {
            assert_eq!(r.ue(), Some(v));
        }
        for v in [0i32, 1, -1, 2, -2, 26, -26] {
            assert_eq!(r.se(), Some(v));
        }
        assert_eq!(r.u(13), Some(0x1abc));
        assert_eq!(r.bit(), Some(1), "the stop bit");
    }

    #[test]
    fn escaping_round_trips_and_leaves_no_start_code() {
        let rbsp = [0u8, 0, 0, 0, 1, 0, 0, 2, 0, 0, 3, 0, 0, 4, 0, 0];
        let escaped = escape(&rbsp);
        assert!(
            !escaped
                .windows(3)
                .any(|w| w[0] == 0 && w[1] == 0 && w[2] <= 2),
            "{escaped:?}"
        );
        assert_eq!(unescape(&escaped), rbsp);
    }

    #[test]
    fn a_bits_rewrite_changes_only_its_field() {
        let mut data = vec![0xff, 0x00, 0xff];
        put_bits(&mut data, 6, 5, 0b01010);
        assert_eq!(data, vec![0b1111_1101, 0b0100_0000, 0xff]);
    }
}
