//! Just enough of the H.264 bitstream (ITU-T H.264 section 7) to write the pictures that need no
//! analysis by hand: an unchanged picture, and a small change (a clock's second, a typed
//! character). Either costs microseconds, where asking the encoder costs a pass over every
//! macroblock of the frame (about 2 ms at 1080p with libx264 even when it is told nothing
//! changed; 9 ms when it is not told).
//!
//! A hand-made picture is a P picture coded through a parameter set of our own ([`Extra`],
//! CAVLC, no weighted prediction, added to the stream's `avcC` beside the encoder's) that
//! predicts from the picture before it: its unchanged macroblocks are `P_Skip` (no macroblock
//! in it has motion, so each takes motion vector zero: the picture before, exactly), its
//! changed ones intra macroblocks that the intra coder (`intra.rs`) coded alone in a slice of
//! their own, each again the first of a slice of its own here ([`Numbering::intra_picture`]),
//! or, without the intra coder, `I_PCM`, their samples as they are (lossless, 384 bytes a
//! macroblock; [`Numbering::pcm_picture`]). It is a reference picture, so the next hand-made
//! picture builds on it and a run of them (a clock ticking for minutes) needs nothing from the
//! encoder.
//!
//! The encoder knows nothing of them, so the stream keeps two reference frames (the encoder is
//! opened with a decoded-picture buffer of two and uses one): the encoder's own last picture,
//! which its next picture predicts from, and the last hand-made one, which the next hand-made
//! one predicts from. The first hand-made picture of a run makes the encoder's last picture a
//! long-term reference (memory management operations 4 and 3) and removes the older short-term
//! frame if there is one (operation 1); each one after it removes the one before it
//! (operation 1, one back). So the buffer always holds the encoder's picture, by a number that
//! does not depend on `frame_num`, and a run can be as long as the keyframe interval lets it:
//! `frame_num` wraps in its range as it may. The encoder's next picture is rewritten on its way
//! into the stream ([`Numbering::renumber`]): its `frame_num` moved on past the hand-made
//! pictures, a reference list modification that points at the long-term picture (where the
//! default list would start at the newest hand-made one), and memory management that returns
//! that picture to nothing once it is decoded (operation 2), so the buffer is as the encoder
//! thinks it is: its own two last pictures, the hand-made one standing in for the older. The
//! encoder is told which macroblocks the hand-made pictures changed, so it codes them again.
//!
//! The stream must have `pic_order_cnt_type` 2 (the picture order follows `frame_num`, as
//! libx264's without B-frames does), two reference frames, frame macroblocks only, no scaling
//! matrices, one slice group, no weighted prediction and no redundant pictures;
//! [`Extra::for_stream`] says `None` otherwise, and the encoder then codes every picture
//! itself. Tested by decoding with FFmpeg's decoder set to fail on any error, bit for bit
//! against the same stream without hand-made pictures.

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

    /// The first `len` bits of `data` (most significant first), as they are.
    fn bits_of(&mut self, data: &[u8], len: usize) {
        for i in 0..len {
            self.bit(u32::from(data[i / 8] >> (7 - i % 8)));
        }
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

/// What the hand-made pictures and the renumbering need of the encoder's sequence parameter set.
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

/// Reference frames the stream must have: the encoder's last picture and the last hand-made one.
const REFERENCE_FRAMES: u32 = 2;

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
    if refs != REFERENCE_FRAMES || !frame_mbs_only || log2_max_frame_num > 16 {
        return None;
    }
    Some(Sps {
        id,
        log2_max_frame_num,
        macroblocks: width.checked_mul(height)?,
        width_mbs: width,
    })
}

/// What rewriting a slice header needs of one of the encoder's picture parameter sets.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Pps {
    id: u32,
    sps_id: u32,
    /// CABAC: the slice header ends in a `cabac_init_idc` and the slice data starts on a byte.
    cabac: bool,
    /// Slice headers say how the loop filter runs.
    deblocking_control: bool,
    /// `26 + pic_init_qp_minus26`: the quantiser a slice's `slice_qp_delta` is added to.
    init_qp: i32,
    /// `chroma_qp_index_offset`, and the second one (the same unless the High profile's
    /// extension says otherwise).
    chroma_qp_offsets: [i32; 2],
    /// The High profile's extension asks for the 8x8 transform or scaling matrices, either of
    /// which changes what a macroblock's bits mean.
    high_tools: bool,
}

/// Bit position of an RBSP's stop bit (its last one bit).
fn stop_bit(rbsp: &[u8]) -> Option<usize> {
    let (i, &last) = rbsp.iter().enumerate().rev().find(|(_, b)| **b != 0)?;
    Some(i * 8 + 7 - last.trailing_zeros() as usize)
}

fn parse_pps(nal: &[u8]) -> Option<Pps> {
    let rbsp = unescape(nal.get(1..)?);
    let mut r = BitReader::new(&rbsp);
    let id = r.ue()?;
    let sps_id = r.ue()?;
    let cabac = r.bit()? == 1;
    r.bit()?; // bottom field pic order in frame present
    if r.ue()? != 0 {
        return None; // slice groups
    }
    if r.ue()? != 0 {
        return None; // more than one reference by default: the encoder's list is not one long
    }
    r.ue()?; // list 1 (B slices)
    if r.bit()? == 1 {
        return None; // weighted prediction: a prediction weight table in P slice headers
    }
    r.u(2)?; // weighted bi-prediction
    let init_qp = 26 + r.se()?;
    r.se()?; // pic_init_qs (SP and SI slices)
    let chroma_qp_offset = r.se()?;
    let deblocking_control = r.bit()? == 1;
    r.bit()?; // constrained intra prediction
    if r.bit()? == 1 {
        return None; // redundant pictures
    }
    let mut chroma_qp_offsets = [chroma_qp_offset; 2];
    let mut high_tools = false;
    if r.pos < stop_bit(&rbsp)? {
        high_tools |= r.bit()? == 1; // transform_8x8_mode_flag
        high_tools |= r.bit()? == 1; // pic_scaling_matrix_present_flag (its lists follow)
        if !high_tools {
            chroma_qp_offsets[1] = r.se()?;
        }
    }
    Some(Pps {
        id,
        sps_id,
        cabac,
        deblocking_control,
        init_qp,
        chroma_qp_offsets,
        high_tools,
    })
}

/// The first SPS among `nals`, read.
fn first_sps(nals: &[&[u8]]) -> Option<Sps> {
    nals.iter()
        .find(|n| n[0] & 0x1f == NAL_SPS)
        .and_then(|n| parse_sps(n))
}

const NAL_SLICE: u8 = 1;
const NAL_IDR: u8 = 5;
const NAL_SPS: u8 = 7;
const NAL_PPS: u8 = 8;

/// The parameter set of our own that hand-made pictures are coded with, for one stream, and
/// what rewriting the encoder's slice headers needs to know of the stream.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Extra {
    sps: Sps,
    /// The encoder's picture parameter sets.
    ppss: Vec<Pps>,
    pps_id: u32,
    /// The PPS NAL unit (header byte included), to go into the stream's `avcC`.
    pub pps_nal: Vec<u8>,
}

impl Extra {
    /// Our parameter set for the stream whose keyframe access unit (Annex B) is `au`, or `None`
    /// when the stream's structure does not allow hand-made pictures (see the module's doc).
    pub fn for_stream(au: &[u8]) -> Option<Self> {
        let nals = crate::fmp4::annexb_nals(au);
        let sps = first_sps(&nals)?;
        let pps_nals: Vec<&[u8]> = nals
            .iter()
            .filter(|n| n[0] & 0x1f == NAL_PPS)
            .copied()
            .collect();
        let ppss: Vec<Pps> = pps_nals.iter().filter_map(|n| parse_pps(n)).collect();
        if ppss.is_empty()
            || ppss.len() != pps_nals.len()
            || ppss.iter().any(|p| p.sps_id != sps.id)
        {
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
        w.se(HAND_MADE_QP - 26); // pic_init_qp
        w.se(0);
        w.se(0); // chroma qp offset (the intra coder's must be the same)
        w.bit(1); // deblocking control present (hand-made pictures turn it off)
        w.bit(0); // no constrained intra prediction
        w.bit(0); // no redundant picture count
        let mut pps_nal = vec![0x68];
        pps_nal.extend(escape(&w.trailing()));
        Some(Self {
            sps,
            ppss,
            pps_id,
            pps_nal,
        })
    }

    fn max_frame_num(&self) -> u32 {
        1 << self.sps.log2_max_frame_num
    }
}

/// The quantiser of our parameter set (its `pic_init_qp`); each slice says its own.
const HAND_MADE_QP: i32 = 26;

/// One intra macroblock the intra coder (`encode/intra.rs`) coded alone in a slice of its own,
/// ready to be put into a hand-made picture ([`Numbering::intra_picture`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct IntraMb {
    /// `mb_type` as an I slice numbers it (0 to 24; a P slice adds 5).
    mb_type: u32,
    /// The rest of its `macroblock_layer`, `len` bits, most significant first.
    bits: Vec<u8>,
    len: usize,
    /// The quantiser of its slice, which its `mb_qp_delta` is relative to.
    qp: i32,
}

/// The intra coder's stream, as far as moving its macroblocks into hand-made pictures needs it.
#[derive(Debug, Clone)]
pub struct IntraStream {
    sps: Sps,
    pps: Pps,
}

impl IntraStream {
    /// From an access unit (Annex B) of the intra coder that carries its parameter sets, or
    /// `None` unless its macroblocks mean the same in a hand-made picture: CAVLC, no 8x8
    /// transform or scaling matrices, the chroma quantiser offsets of our parameter set (0),
    /// and slices with the loop filter off.
    pub fn from_headers(au: &[u8]) -> Option<Self> {
        let nals = crate::fmp4::annexb_nals(au);
        let sps = first_sps(&nals)?;
        let pps = nals
            .iter()
            .find(|n| n[0] & 0x1f == NAL_PPS)
            .and_then(|n| parse_pps(n))?;
        let plain = !pps.cabac
            && !pps.high_tools
            && pps.chroma_qp_offsets == [0, 0]
            && pps.deblocking_control
            && pps.sps_id == sps.id;
        plain.then_some(Self { sps, pps })
    }

    /// The macroblocks of an access unit of the intra coder, whose slices each hold one intra
    /// macroblock, in order: `None` if any is not such a slice (an `I_PCM` macroblock too: its
    /// bits are aligned to bytes of its own slice).
    pub fn macroblocks(&self, au: &[u8]) -> Option<Vec<IntraMb>> {
        let mut out = Vec::new();
        for nal in crate::fmp4::annexb_nals(au) {
            if nal[0] & 0x1f != NAL_IDR {
                if nal[0] & 0x1f == NAL_SLICE {
                    return None; // the intra coder makes IDR pictures alone
                }
                continue;
            }
            let rbsp = unescape(nal.get(1..)?);
            let mut r = BitReader::new(&rbsp);
            if r.ue()? as usize != out.len() || r.ue()? % 5 != 2 || r.ue()? != self.pps.id {
                return None; // not the next macroblock, not an I slice, another parameter set
            }
            r.u(self.sps.log2_max_frame_num)?;
            r.ue()?; // idr_pic_id (pic_order_cnt_type 2: no order count follows)
            if nal[0] & 0x60 != 0 {
                r.u(2)?; // no_output_of_prior_pics, long_term_reference
            }
            let qp = self.pps.init_qp + r.se()?;
            if r.ue()? != 1 {
                return None; // the loop filter is on
            }
            let mb_type = r.ue()?;
            let end = stop_bit(&rbsp)?;
            if mb_type > 24 || end < r.pos {
                return None;
            }
            let len = end - r.pos;
            let mut w = BitWriter::default();
            for _ in 0..len {
                w.bit(r.bit()?);
            }
            out.push(IntraMb {
                mb_type,
                bits: w.out,
                len,
                qp,
            });
        }
        Some(out)
    }
}

/// The reference numbering of one encoded stream, from its last IDR picture on, and how far the
/// hand-made pictures put in have moved the encoder's own.
#[derive(Debug, Clone, Default)]
pub struct Numbering {
    /// `frame_num` of the last reference picture in the stream (after renumbering).
    frame_num: u32,
    /// Hand-made pictures put in since the last IDR picture.
    inserted: u32,
    /// Hand-made pictures put in since the encoder's last picture (while more than none, the
    /// encoder's last picture is the stream's long-term reference).
    run: u32,
    /// Reference frames in the decoder's buffer: 1 after an IDR picture, 2 from the picture
    /// after it on.
    frames: u32,
}

/// The YUV 4:2:0 picture a hand-made picture takes the samples of its changed macroblocks from.
pub struct Planes<'a> {
    pub data: [&'a [u8]; 3],
    pub strides: [usize; 3],
    /// Columns of luma (the last macroblock column may reach past them, as the last row may
    /// past `height`: its samples there repeat the last column's, which the decoder crops away).
    pub width: usize,
    /// Rows of luma (the last macroblock row may reach past them: its rows there repeat the
    /// last one, which the decoder crops away).
    pub height: usize,
}

impl Planes<'_> {
    /// Row `y` (0 to 15 of luma, 0 to 7 of chroma) of plane `p` of the macroblock at column
    /// `mx`, row `my`, into `out` (16 or 8 samples), repeating the last column and row where
    /// the macroblock reaches past the picture.
    pub fn macroblock_row(&self, p: usize, mx: usize, my: usize, y: usize, out: &mut [u8]) {
        let size = out.len();
        let (cols, rows) = if p == 0 {
            (self.width, self.height)
        } else {
            (self.width / 2, self.height / 2)
        };
        let row = (my * size + y).min(rows.saturating_sub(1));
        let line = &self.data[p][row * self.strides[p]..][..cols];
        let x0 = mx * size;
        let inside = cols.saturating_sub(x0).min(size);
        out[..inside].copy_from_slice(&line[x0..x0 + inside]);
        let last = line[cols.saturating_sub(1)];
        out[inside..].fill(last);
    }
}

impl Numbering {
    /// Renumbers an access unit (Annex B) of the encoder for the hand-made pictures put in
    /// before it, and notes its numbering. Returns the rewritten access unit; `None` if a slice
    /// header could not be read or rewritten (the caller must then stop putting in hand-made
    /// pictures and start afresh at a keyframe: the stream would not decode).
    /// On a keyframe, our parameter set goes in after the encoder's.
    pub fn renumber(&mut self, extra: &Extra, au: &[u8], keyframe: bool) -> Option<Vec<u8>> {
        let mut out = Vec::with_capacity(au.len() + 16);
        let nals = crate::fmp4::annexb_nals(au);
        let last_pps = nals.iter().rposition(|n| n[0] & 0x1f == NAL_PPS);
        let mut reference = None;
        for (i, nal) in nals.into_iter().enumerate() {
            let kind = nal[0] & 0x1f;
            let nal = match kind {
                NAL_IDR => {
                    self.inserted = 0;
                    self.run = 0;
                    // Every other reference frame is gone; the next picture's sliding window
                    // adds to this one.
                    self.frames = 0;
                    reference = Some(read_frame_num(extra, nal)?);
                    nal.to_vec()
                }
                NAL_SLICE => {
                    // With hand-made pictures since the encoder's last one, the default list
                    // would start at the newest of them: point it at the encoder's, which the
                    // run made long-term.
                    let rewritten = rewrite_slice(extra, nal, self.inserted, self.run > 0)?;
                    if nal[0] & 0x60 != 0 {
                        reference = Some(read_frame_num(extra, &rewritten)?);
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
        if let Some(frame_num) = reference {
            self.frame_num = frame_num;
            if self.run == 0 {
                // Marked by the sliding window, which keeps the two newest frames.
                self.frames = (self.frames + 1).min(2);
            }
            self.run = 0;
        }
        Some(out)
    }

    /// An access unit (Annex B) holding one all-skip P picture: the last picture again.
    pub fn skip_picture(&mut self, extra: &Extra) -> Vec<u8> {
        self.next_hand_made(extra);
        let w = self.hand_made_header(extra, 0, 0);
        self.hand_made_end(extra, w, 0)
    }

    /// An access unit (Annex B) holding one P picture: the picture before with the macroblocks
    /// `mbs` (indices, row by row, ascending) replaced by their samples in `planes`, sent as
    /// they are (`I_PCM`: lossless, 384 bytes a macroblock, no analysis).
    pub fn pcm_picture(&mut self, extra: &Extra, planes: &Planes<'_>, mbs: &[usize]) -> Vec<u8> {
        let sps = &extra.sps;
        self.next_hand_made(extra);
        let mut w = self.hand_made_header(extra, 0, 0);
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
            let mut samples = [0u8; 16];
            for (plane, size) in [(0usize, 16usize), (1, 8), (2, 8)] {
                for y in 0..size {
                    planes.macroblock_row(plane, mx, my, y, &mut samples[..size]);
                    for &v in &samples[..size] {
                        // A sample of 0 is kept out of the stream (older decoders refuse it);
                        // limited-range YUV never has one.
                        w.u(8, u32::from(v.max(1)));
                    }
                }
            }
            next = mb + 1;
        }
        self.hand_made_end(extra, w, next)
    }

    /// An access unit (Annex B) holding one P picture: the picture before with the macroblocks
    /// `mbs` (indices, row by row, ascending) replaced by their intra coding (lossy, from
    /// [`IntraStream::macroblocks`]). Each is the first macroblock of a slice of its own, so,
    /// as in the intra coder's picture, where it was alone in its slice too, nothing around it
    /// is available to predict from: it decodes to exactly what it decoded to there. The
    /// macroblocks after it in its slice are skipped, up to the next one's slice.
    pub fn intra_picture(&mut self, extra: &Extra, mbs: &[(usize, &IntraMb)]) -> Vec<u8> {
        let total = extra.sps.macroblocks as usize;
        let mut slices: Vec<(usize, Option<&IntraMb>)> = Vec::with_capacity(mbs.len() + 1);
        for &(mb, coded) in mbs {
            if mb < total && slices.last().is_none_or(|(last, _)| mb > *last) {
                slices.push((mb, Some(coded)));
            }
        }
        if slices.first().is_none_or(|(first, _)| *first > 0) {
            slices.insert(0, (0, None));
        }
        self.next_hand_made(extra);
        let mut au = Vec::new();
        for (i, &(first, coded)) in slices.iter().enumerate() {
            let end = slices.get(i + 1).map_or(total, |s| s.0);
            let qp_delta = coded.map_or(0, |c| c.qp - HAND_MADE_QP);
            let mut w = self.hand_made_header(extra, first as u32, qp_delta);
            let mut next = first;
            if let Some(c) = coded {
                w.ue(0); // nothing skipped before it
                w.ue(c.mb_type + 5); // an intra type in a P slice
                w.bits_of(&c.bits, c.len);
                next += 1;
            }
            if next < end {
                w.ue((end - next) as u32); // skipped after it
            }
            au.extend_from_slice(&[0, 0, 0, 1, 0x41]);
            au.extend(escape(&w.trailing()));
        }
        self.end_hand_made();
        au
    }

    /// Moves `frame_num` on for the next hand-made picture.
    fn next_hand_made(&mut self, extra: &Extra) {
        self.frame_num = (self.frame_num + 1) % extra.max_frame_num();
    }

    /// A slice header of a hand-made reference picture (the one [`Numbering::next_hand_made`]
    /// numbered), which predicts from the newest reference picture (the default list's first:
    /// the one before it in the stream), its quantiser `qp_delta` from [`HAND_MADE_QP`].
    /// Every slice of the picture has the same but for its first macroblock and quantiser, as
    /// the standard requires of the reference marking.
    fn hand_made_header(&self, extra: &Extra, first_mb: u32, qp_delta: i32) -> BitWriter {
        let sps = &extra.sps;
        let mut w = BitWriter::default();
        w.ue(first_mb);
        w.ue(5); // P, all slices of the picture P
        w.ue(extra.pps_id);
        w.u(sps.log2_max_frame_num, self.frame_num);
        w.bit(0); // no num_ref_idx override
        w.bit(0); // no reference list modification
        w.bit(1); // adaptive reference picture marking
        if self.run == 0 {
            // The first since the encoder's picture. The older of the two frames goes (two
            // picture numbers back), and the encoder's last (one back) becomes long-term
            // frame 0, so no run is too long for the encoder's next picture to name it.
            if self.frames >= 2 {
                w.ue(1);
                w.ue(1);
            }
            w.ue(4);
            w.ue(1); // long-term frame indices 0 to 0
            w.ue(3);
            w.ue(0);
            w.ue(0); // long-term frame index 0
        } else {
            // The hand-made picture before this one is not needed again: out of the buffer
            // with it (operation 1, one picture number back), so the encoder's stays.
            w.ue(1);
            w.ue(0);
        }
        w.ue(0); // end of operations
        w.se(qp_delta);
        w.ue(1); // no deblocking
        w
    }

    /// Closes a hand-made picture of one slice whose macroblocks from `next` on are skipped.
    fn hand_made_end(&mut self, extra: &Extra, mut w: BitWriter, next: usize) -> Vec<u8> {
        let macroblocks = extra.sps.macroblocks as usize;
        if next < macroblocks {
            w.ue((macroblocks - next) as u32); // skipped after the last
        }
        self.end_hand_made();
        let mut au = vec![0, 0, 0, 1, 0x41];
        au.extend(escape(&w.trailing()));
        au
    }

    /// Notes that a hand-made picture went in.
    fn end_hand_made(&mut self) {
        self.inserted += 1;
        self.run += 1;
        self.frames = 2;
    }
}

/// Where a slice header's `frame_num` is (its bit offset in the RBSP), what it says, the slice
/// type and the picture parameter set.
fn locate<'e>(extra: &'e Extra, rbsp: &[u8]) -> Option<(usize, u32, u32, &'e Pps)> {
    let mut r = BitReader::new(rbsp);
    r.ue()?; // first macroblock
    let slice_type = r.ue()?;
    let pps_id = r.ue()?;
    let pps = extra.ppss.iter().find(|p| p.id == pps_id)?;
    let at = r.pos;
    Some((at, r.u(extra.sps.log2_max_frame_num)?, slice_type, pps))
}

fn read_frame_num(extra: &Extra, nal: &[u8]) -> Option<u32> {
    let rbsp = unescape(nal.get(1..)?);
    Some(locate(extra, &rbsp)?.1)
}

/// `nal` (a non-IDR slice of the encoder's) with `frame_num` moved on by `by`, modulo its
/// range, and, with `long_term`, predicting from long-term frame 0 (`ref_pic_list_modification`
/// by long-term picture number) and marking it unused once decoded (memory management
/// operation 2). `frame_num` is a fixed-width field, rewritten in place when that is all; the
/// list modification and the marking make the header longer, so the header is written again
/// and the slice data follows it. `None` for a P slice that predicts from more than one
/// picture, modifies its list or marks pictures itself (those speak of the encoder's
/// numbering, which the hand-made pictures have moved), or, with `long_term`, is an I slice
/// or not a reference picture (it would not release the long-term frame).
fn rewrite_slice(extra: &Extra, nal: &[u8], by: u32, long_term: bool) -> Option<Vec<u8>> {
    let rbsp = unescape(nal.get(1..)?);
    let (at, frame_num, slice_type, pps) = locate(extra, &rbsp)?;
    let n = extra.sps.log2_max_frame_num;
    let max = extra.max_frame_num();
    let frame_num = (frame_num + by % max) % max;
    let in_place = |mut rbsp: Vec<u8>| {
        put_bits(&mut rbsp, at, n, frame_num);
        let mut out = vec![nal[0]];
        out.extend(escape(&rbsp));
        out
    };
    // I slices have no reference list; after a run, though, one would have to release the
    // long-term frame, which this does not write (libx264 makes none but IDR pictures here).
    if slice_type % 5 != 0 {
        return (!long_term).then(|| in_place(rbsp));
    }
    let mut r = BitReader::new(&rbsp);
    r.pos = at + n as usize;
    if r.bit()? == 1 && r.ue()? != 0 {
        // The encoder predicts from more than one picture: its second would not be in the
        // stream's buffer, where the hand-made picture is.
        return None;
    }
    let modification_at = r.pos;
    if r.bit()? == 1 {
        // The encoder modifies its list itself, in a numbering that knows nothing of ours.
        return None;
    }
    let marking_at = r.pos;
    let reference = nal[0] & 0x60 != 0;
    if reference && r.bit()? == 1 {
        // The encoder's own memory management operations: in its numbering too.
        return None;
    }
    if !long_term {
        return Some(in_place(rbsp));
    }
    if !reference {
        return None;
    }
    let rest = r.pos;
    if pps.cabac {
        r.ue()?; // cabac_init_idc
    }
    r.ue()?; // slice_qp_delta (a signed code, as long as the unsigned one)
    if pps.deblocking_control && r.ue()? != 1 {
        r.ue()?; // alpha and beta offsets
        r.ue()?;
    }
    let header_end = r.pos;
    let mut w = BitWriter::default();
    copy_bits(&mut w, &rbsp, 0, at)?;
    w.u(n, frame_num);
    copy_bits(&mut w, &rbsp, at + n as usize, modification_at)?;
    w.bit(1);
    w.ue(2); // a long-term picture
    w.ue(0); // long-term picture number 0
    w.ue(3); // end of the modification
    copy_bits(&mut w, &rbsp, modification_at + 1, marking_at)?;
    w.bit(1); // adaptive marking
    w.ue(2); // long-term picture 0 is not needed again
    w.ue(0);
    w.ue(0); // end of operations
    copy_bits(&mut w, &rbsp, rest, header_end)?;
    let rbsp = if pps.cabac {
        // The slice data starts on a byte, after `cabac_alignment_one_bit`s.
        while !w.bits.is_multiple_of(8) {
            w.bit(1);
        }
        let mut out = w.out;
        out.extend_from_slice(rbsp.get(header_end.div_ceil(8)..)?);
        out
    } else {
        // CAVLC: the slice data follows bit for bit, up to its stop bit.
        let last = rbsp.iter().rposition(|&b| b != 0)?;
        let stop = last * 8 + 7 - rbsp[last].trailing_zeros() as usize;
        copy_bits(&mut w, &rbsp, header_end, stop)?;
        w.trailing()
    };
    let mut out = vec![nal[0]];
    out.extend(escape(&rbsp));
    Some(out)
}

/// Appends bits `from..to` of `data` to `w`.
fn copy_bits(w: &mut BitWriter, data: &[u8], from: usize, to: usize) -> Option<()> {
    let mut r = BitReader::new(data);
    r.pos = from;
    for _ in from..to {
        w.bit(r.bit()?);
    }
    Some(())
}

fn put_bits(data: &mut [u8], at: usize, n: u32, v: u32) {
    for i in 0..n as usize {
        let bit = (v >> (n as usize - 1 - i)) & 1;
        let (byte, shift) = ((at + i) / 8, 7 - (at + i) % 8);
        data[byte] = (data[byte] & !(1 << shift)) | ((bit as u8) << shift);
    }
}

#[cfg(test)]
impl Extra {
    /// Whether `au` (Annex B) is a hand-made picture: its slices are coded with our parameter
    /// set.
    pub(crate) fn made_by_hand(&self, au: &[u8]) -> bool {
        crate::fmp4::annexb_nals(au)
            .iter()
            .filter(|n| matches!(n[0] & 0x1f, NAL_SLICE | NAL_IDR))
            .any(|n| {
                let rbsp = unescape(&n[1..]);
                let mut r = BitReader::new(&rbsp);
                r.ue();
                r.ue();
                r.ue() == Some(self.pps_id)
            })
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

    /// The memory management operations of a hand-made picture's header, read back.
    fn operations(au: &[u8], extra: &Extra) -> Vec<u32> {
        let nal = &crate::fmp4::annexb_nals(au)[0];
        let rbsp = unescape(&nal[1..]);
        let mut r = BitReader::new(&rbsp);
        r.ue().unwrap(); // first macroblock
        assert_eq!(r.ue(), Some(5), "P");
        assert_eq!(r.ue(), Some(extra.pps_id));
        r.u(extra.sps.log2_max_frame_num).unwrap();
        assert_eq!(r.bit(), Some(0), "no num_ref_idx override");
        assert_eq!(r.bit(), Some(0), "no list modification");
        assert_eq!(r.bit(), Some(1), "adaptive marking");
        let mut ops = Vec::new();
        loop {
            let op = r.ue().unwrap();
            if op == 0 {
                return ops;
            }
            ops.push(op);
            // Each operation's arguments: 1 and 2 and 4 one, 3 two, 6 one.
            let args = if op == 3 { 2 } else { 1 };
            for _ in 0..args {
                r.ue().unwrap();
            }
        }
    }

    /// A run's first picture makes the encoder's last one long-term (4, then 3) and removes
    /// the older frame only when the buffer holds one (1): after an IDR picture it does not.
    /// The rest of the run remove the picture before them (1), and the run wraps `frame_num`.
    #[test]
    fn a_run_keeps_the_encoders_picture_as_long_term_and_wraps_frame_num() {
        let extra = Extra {
            sps: Sps {
                id: 0,
                log2_max_frame_num: 4,
                macroblocks: 20,
                width_mbs: 5,
            },
            ppss: vec![Pps {
                id: 0,
                sps_id: 0,
                cabac: true,
                deblocking_control: true,
                init_qp: 26,
                chroma_qp_offsets: [0, 0],
                high_tools: true,
            }],
            pps_id: 1,
            pps_nal: Vec::new(),
        };
        let mut after_idr = Numbering {
            frames: 1,
            ..Numbering::default()
        };
        assert_eq!(operations(&after_idr.skip_picture(&extra), &extra), [4, 3]);
        for _ in 0..40 {
            let au = after_idr.skip_picture(&extra);
            assert!(extra.made_by_hand(&au));
            assert_eq!(operations(&au, &extra), [1]);
        }
        assert_eq!(after_idr.frame_num, 41 % 16);
        let mut full = Numbering {
            frames: 2,
            ..Numbering::default()
        };
        assert_eq!(operations(&full.skip_picture(&extra), &extra), [1, 4, 3]);
    }

    /// The stop bit is the RBSP's last one bit, wherever in its byte it is.
    #[test]
    fn the_stop_bit_is_the_last_one_bit() {
        assert_eq!(stop_bit(&[0x80]), Some(0));
        // 0x34 is 0011 0100: its last one is its bit 5, bit 13 of the two bytes.
        assert_eq!(stop_bit(&[0x12, 0x34, 0x00]), Some(13));
        assert_eq!(stop_bit(&[0x01]), Some(7));
        assert_eq!(stop_bit(&[0, 0]), None);
    }

    /// A picture parameter set's quantisers are read, and the High profile's extension when
    /// there is one: its 8x8 transform is a tool the intra coder's macroblocks must not use,
    /// its second chroma offset is read.
    #[test]
    fn a_pps_says_its_quantisers_and_its_high_profile_tools() {
        let pps = |ext: Option<(u32, i32)>| {
            let mut w = BitWriter::default();
            w.ue(3);
            w.ue(0);
            w.bit(0); // CAVLC
            w.bit(0);
            w.ue(0);
            w.ue(0);
            w.ue(0);
            w.bit(0);
            w.u(2, 0);
            w.se(-4); // pic_init_qp 22
            w.se(0);
            w.se(-2); // chroma offset
            w.bit(1);
            w.bit(0);
            w.bit(0);
            if let Some((transform_8x8, second)) = ext {
                w.bit(transform_8x8);
                w.bit(0); // no scaling matrices
                w.se(second);
            }
            let mut nal = vec![0x68];
            nal.extend(escape(&w.trailing()));
            parse_pps(&nal).unwrap()
        };
        let plain = pps(None);
        assert_eq!(
            (
                plain.id,
                plain.init_qp,
                plain.chroma_qp_offsets,
                plain.high_tools
            ),
            (3, 22, [-2, -2], false)
        );
        let second = pps(Some((0, 3)));
        assert_eq!(
            (second.chroma_qp_offsets, second.high_tools),
            ([-2, 3], false)
        );
        assert!(pps(Some((1, 0))).high_tools);
    }

    #[test]
    fn a_bits_rewrite_changes_only_its_field() {
        let mut data = vec![0xff, 0x00, 0xff];
        put_bits(&mut data, 6, 5, 0b01010);
        assert_eq!(data, vec![0b1111_1101, 0b0100_0000, 0xff]);
    }
}
