//! libx264 through its own API, for what FFmpeg's wrapper (in Debian's FFmpeg 5.1) cannot pass
//! on: which macroblocks did not change (`mb_info` with `X264_MBINFO_CONSTANT`). With it, x264
//! codes an unchanged macroblock as a skip without analysing it, so a picture in which a few
//! characters changed costs what those characters cost, not a whole-frame analysis.
//!
//! The binding is generated from `x264.h` at build time (`build.rs`), so its structures have
//! the linked library's layout. Everything `unsafe` is here, each call with its `SAFETY`
//! reason; the rest of the recorder sees [`X264`].
#![allow(unsafe_code)]

use std::ffi::{CString, c_int};
use std::ptr::NonNull;

#[allow(
    non_camel_case_types,
    non_upper_case_globals,
    non_snake_case,
    dead_code,
    unreachable_pub,
    clippy::all,
    clippy::pedantic
)]
mod ffi {
    include!(concat!(env!("OUT_DIR"), "/x264.rs"));
}

/// A picture in, in I420: the three planes and their strides.
pub struct Picture<'a> {
    pub planes: [&'a [u8]; 3],
    pub strides: [usize; 3],
    /// In timescale units.
    pub pts: i64,
    pub keyframe: bool,
    /// One byte per macroblock, row by row: nonzero where the macroblock is the same as in the
    /// picture given before (`None`: anything may have changed).
    pub unchanged: Option<&'a [u8]>,
}

/// One encoded picture.
pub struct Coded {
    /// Annex B NAL units.
    pub access_unit: Vec<u8>,
    pub pts: i64,
    pub keyframe: bool,
}

/// An open libx264 encoder.
pub struct X264 {
    enc: NonNull<ffi::x264_t>,
    width: u32,
    height: u32,
    /// The `mb_info` array handed to x264 with each picture.
    mb_info: Vec<u8>,
}

// SAFETY: an x264 encoder has no thread affinity; this handle is owned by one `Encoder` and used
// by one thread at a time (`&mut self`), as libx264 requires of an encoder without threads.
unsafe impl Send for X264 {}

impl std::fmt::Debug for X264 {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("X264")
            .field("width", &self.width)
            .field("height", &self.height)
            .finish_non_exhaustive()
    }
}

fn cstr(s: &str) -> Result<CString, String> {
    CString::new(s).map_err(|_| format!("{s:?} has a NUL byte"))
}

impl X264 {
    /// Opens an encoder for `width` x `height` I420 pictures, timestamps in `1/timescale`
    /// seconds, with `preset` and `tune=zerolatency` (no B-frames, no lookahead, one picture out
    /// per picture in), then `params` (x264's own option names, as `x264 --fullhelp` has them).
    pub fn open(
        width: u32,
        height: u32,
        timescale: u32,
        fps: u32,
        preset: &str,
        params: &[(String, String)],
    ) -> Result<Self, String> {
        let mut p = std::mem::MaybeUninit::<ffi::x264_param_t>::zeroed();
        let (preset_c, tune) = (cstr(preset)?, cstr("zerolatency")?);
        // SAFETY: `p` is writable memory of the parameter structure's size (the binding is
        // generated from the linked library's header); the strings are NUL-terminated and
        // outlive the call, which fills in every field.
        if unsafe {
            ffi::x264_param_default_preset(p.as_mut_ptr(), preset_c.as_ptr(), tune.as_ptr())
        } < 0
        {
            return Err(format!("libx264 has no preset {preset:?}"));
        }
        // SAFETY: initialised by x264_param_default_preset above.
        let mut p = unsafe { p.assume_init() };
        p.i_width = width as c_int;
        p.i_height = height as c_int;
        p.i_csp = ffi::X264_CSP_I420 as c_int;
        p.i_fps_num = fps.max(1);
        p.i_fps_den = 1;
        p.i_timebase_num = 1;
        p.i_timebase_den = timescale;
        // Rate control as if at the nominal rate: with variable-rate input libx264 waits for
        // the next picture's time to know this one's duration, a picture of delay.
        // Timestamps still go through as given.
        p.b_vfr_input = 0;
        // Keyframes are forced by media time; x264 adds none of its own.
        p.i_keyint_max = ffi::X264_KEYINT_MAX_INFINITE as c_int;
        p.i_bframe = 0;
        // Two reference frames in the stream, of which libx264 predicts from one: the other
        // holds the recorder's hand-made pictures (`h264.rs`), which libx264 knows nothing of.
        // One whatever the preset says (`fast` and slower say more): libx264's second would be
        // a picture the stream's buffer no longer holds.
        p.i_dpb_size = 2;
        p.i_frame_reference = 1;
        p.b_annexb = 1;
        p.b_repeat_headers = 1;
        // One thread in all: with threads of its own (a lookahead thread, sliced threads),
        // libx264 would keep pictures back and share the machine's two cores with itself.
        p.i_threads = 1;
        p.i_lookahead_threads = 1;
        p.b_sliced_threads = 0;
        p.i_log_level = ffi::X264_LOG_WARNING as c_int;
        p.analyse.b_mb_info = 1;
        for (name, value) in params {
            let (n, v) = (cstr(name)?, cstr(value)?);
            // SAFETY: `p` is an initialised parameter structure; both strings are
            // NUL-terminated and outlive the call.
            let r = unsafe { ffi::x264_param_parse(&mut p, n.as_ptr(), v.as_ptr()) };
            if r != 0 {
                return Err(format!("libx264 refused {name}={value} ({r})"));
            }
        }
        let high = cstr("high")?;
        // SAFETY: as above.
        if unsafe { ffi::x264_param_apply_profile(&mut p, high.as_ptr()) } < 0 {
            return Err("libx264 cannot apply the high profile to these settings".into());
        }
        // SAFETY: `p` is a complete parameter structure; x264 copies what it keeps.
        let enc = NonNull::new(unsafe { ffi::x264_encoder_open(&mut p) })
            .ok_or_else(|| "libx264 could not open an encoder with these settings".to_owned())?;
        let mbs = (width.div_ceil(16) * height.div_ceil(16)) as usize;
        Ok(Self {
            enc,
            width,
            height,
            mb_info: vec![0; mbs],
        })
    }

    /// Macroblocks per row and rows of macroblocks.
    pub fn macroblocks(&self) -> (usize, usize) {
        (
            self.width.div_ceil(16) as usize,
            self.height.div_ceil(16) as usize,
        )
    }

    /// Encodes one picture; returns what came out (with zerolatency, that picture).
    pub fn encode(&mut self, pic: &Picture<'_>) -> Result<Option<Coded>, String> {
        let (w, h) = (self.width as usize, self.height as usize);
        for (i, (plane, stride)) in pic.planes.iter().zip(pic.strides).enumerate() {
            let (pw, ph) = if i == 0 { (w, h) } else { (w / 2, h / 2) };
            if stride < pw || plane.len() < stride * (ph - 1) + pw {
                return Err(format!("plane {i} is too small for a {w}x{h} picture"));
            }
        }
        let mut input = std::mem::MaybeUninit::<ffi::x264_picture_t>::zeroed();
        // SAFETY: writable memory of the picture structure's size; the call initialises it.
        unsafe { ffi::x264_picture_init(input.as_mut_ptr()) };
        // SAFETY: initialised by x264_picture_init.
        let mut input = unsafe { input.assume_init() };
        input.img.i_csp = ffi::X264_CSP_I420 as c_int;
        input.img.i_plane = 3;
        for i in 0..3 {
            // x264 only reads the planes (it copies the picture in); the pointer is mutable
            // by the C declaration alone.
            input.img.plane[i] = pic.planes[i].as_ptr().cast_mut();
            input.img.i_stride[i] = pic.strides[i] as c_int;
        }
        input.i_pts = pic.pts;
        input.i_type = if pic.keyframe {
            ffi::X264_TYPE_IDR as c_int
        } else {
            ffi::X264_TYPE_AUTO as c_int
        };
        if let Some(unchanged) = pic.unchanged {
            if unchanged.len() != self.mb_info.len() {
                return Err("the unchanged-macroblock map has the wrong size".into());
            }
            for (info, &same) in self.mb_info.iter_mut().zip(unchanged) {
                *info = if same != 0 {
                    ffi::X264_MBINFO_CONSTANT as u8
                } else {
                    0
                };
            }
            input.prop.mb_info = self.mb_info.as_mut_ptr();
        }
        let mut output = std::mem::MaybeUninit::<ffi::x264_picture_t>::zeroed();
        let mut nals: *mut ffi::x264_nal_t = std::ptr::null_mut();
        let mut n: c_int = 0;
        // SAFETY: the encoder is open; `input`'s planes are valid for the sizes checked above
        // and are only read; `mb_info` (one byte per macroblock) lives in `self` and is not
        // touched until the next call, by when x264 is done with it (zerolatency: no frame
        // stays in the encoder, checked below); `output`, `nals` and `n` are written by the call.
        let size = unsafe {
            ffi::x264_encoder_encode(
                self.enc.as_ptr(),
                &mut nals,
                &mut n,
                &mut input,
                output.as_mut_ptr(),
            )
        };
        self.take(size, nals, n, &output)
    }

    /// Copies out what `x264_encoder_encode` returned.
    fn take(
        &mut self,
        size: c_int,
        nals: *mut ffi::x264_nal_t,
        n: c_int,
        output: &std::mem::MaybeUninit<ffi::x264_picture_t>,
    ) -> Result<Option<Coded>, String> {
        if size < 0 {
            return Err(format!("libx264 failed to encode a picture ({size})"));
        }
        if size == 0 || nals.is_null() || n <= 0 {
            // SAFETY: the encoder is open.
            let delayed = unsafe { ffi::x264_encoder_delayed_frames(self.enc.as_ptr()) };
            return Err(format!(
                "libx264 kept a picture back ({delayed} delayed; its settings are not zero-latency)"
            ));
        }
        // SAFETY: a positive return means `output` was filled in, and `nals` points to `n` NAL
        // descriptions whose payloads lie one after another in memory, `size` bytes in all
        // (x264.h), valid until the next call on this encoder.
        let (out, first) = unsafe { (output.assume_init_ref(), &*nals) };
        // SAFETY: as above: `size` bytes from the first payload.
        let bytes = unsafe { std::slice::from_raw_parts(first.p_payload, size as usize) };
        Ok(Some(Coded {
            access_unit: bytes.to_vec(),
            pts: out.i_pts,
            keyframe: out.b_keyframe != 0,
        }))
    }
}

impl Drop for X264 {
    fn drop(&mut self) {
        // SAFETY: the encoder was opened by x264_encoder_open and is closed once.
        unsafe { ffi::x264_encoder_close(self.enc.as_ptr()) };
    }
}
