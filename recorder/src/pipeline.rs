//! A single-threaded recording driver for scripted screens: capture ticks at a fixed rate,
//! change detection, encoding, chunking. Tests and benchmarks use it to record deterministic
//! sessions through the real encoder and chunker.
//!
//! Only changed frames are converted and encoded. When the screen has been idle for a whole
//! chunk, the last image is encoded once more at the boundary (x264 codes it as skips), so every
//! chunk has a frame and playback never stalls, at the cost of one tiny frame per chunk.

use std::time::Duration;

use jitrec_format::{MediaTime, SessionHeader, SessionId};
use jitrec_spool::SpoolWriter;

use crate::capture::{Frame, SyntheticScreen};
use crate::chunker::{ChunkError, Chunker};
use crate::encode::{EncodeError, Encoder, EncoderConfig};

/// Why a recording failed.
#[derive(Debug, thiserror::Error)]
pub enum RecordError {
    #[error(transparent)]
    Encode(#[from] EncodeError),
    #[error(transparent)]
    Chunk(#[from] ChunkError),
    #[error(transparent)]
    Spool(#[from] jitrec_spool::SpoolError),
    #[error("capture: {0}")]
    Capture(String),
}

/// What a scripted recording did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Recorded {
    pub session: SessionId,
    pub chunks: u64,
    /// Frames converted and encoded because the screen changed.
    pub changed_frames: u64,
    /// Frames re-encoded to keep an idle chunk non-empty.
    pub repeated_frames: u64,
    /// Capture ticks where nothing changed and nothing was encoded.
    pub skipped_ticks: u64,
}

/// Records `screen` for `duration` at `fps` into a new session of `header`.
pub fn record_scripted(
    spool: &SpoolWriter,
    header: &SessionHeader,
    screen: &SyntheticScreen,
    duration: Duration,
    fps: u32,
    chunk_len: Duration,
    config: EncoderConfig,
) -> Result<Recorded, RecordError> {
    let writer = spool.create_session(header)?;
    let mut enc = Encoder::new(screen.width, screen.height, config)?;
    let mut chunker = Chunker::new(writer, chunk_len, enc.timescale());
    let mut last: Option<Frame> = None;
    let mut r = Recorded {
        session: header.session_id,
        chunks: 0,
        changed_frames: 0,
        repeated_frames: 0,
        skipped_ticks: 0,
    };
    let tick_us = 1_000_000 / u64::from(fps.max(1));
    let end = MediaTime::from_duration(duration);
    let mut t = MediaTime::ZERO;
    while t < end {
        let frame = screen.render(t.as_micros());
        let encoded = if last.as_ref() != Some(&frame) {
            r.changed_frames += 1;
            let out = enc.encode(&frame, t)?;
            last = Some(frame);
            out
        } else if chunker.boundary_due(t) {
            r.repeated_frames += 1;
            enc.repeat(t)?
        } else {
            r.skipped_ticks += 1;
            Vec::new()
        };
        for f in encoded {
            chunker.push(f, enc.width(), enc.height())?;
        }
        t = MediaTime::from_micros(t.as_micros() + tick_us);
    }
    for f in enc.flush()? {
        chunker.push(f, enc.width(), enc.height())?;
    }
    let cause = jitrec_format::StopCause {
        by: jitrec_format::StopBy::GroupChange,
        peer: None,
        recorded_user: None,
        detail: "the synthetic session ended".into(),
    };
    r.chunks = chunker.finish(end, &cause)?;
    Ok(r)
}
