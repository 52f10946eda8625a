//! The scripted driver: records a [`SyntheticScreen`] on a virtual clock through the same
//! [`SessionRecorder`] the recorder service uses, without a capture thread or event sources, so
//! tests and benchmarks get deterministic sessions through the real encoder and chunker.
//!
//! Each tick at `fps` renders the screen at its media time and hands it over as a whole
//! picture; the session recorder finds the changes, so an idle stretch costs one repeated frame
//! per chunk, as it does live.

use std::time::Duration;

use jitrec_format::{MediaTime, SessionHeader, SessionId, StopBy, StopCause};
use jitrec_spool::SpoolWriter;

use crate::capture::{Grab, SyntheticScreen, Tick};
use crate::encode::EncoderConfig;
use crate::events::{EventLimits, SessionClock};
use crate::session::{RecordError, SessionOptions, SessionRecorder, TickStats};

/// What a scripted recording did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Recorded {
    pub session: SessionId,
    pub chunks: u64,
    /// What its ticks did.
    pub ticks: TickStats,
}

/// Records `screen` for `duration` at `fps` into a new session of `header`, closed as if JIT
/// had ended at `duration`.
pub fn record_scripted(
    spool: &SpoolWriter,
    header: &SessionHeader,
    screen: &SyntheticScreen,
    duration: Duration,
    fps: u32,
    chunk_len: Duration,
    encoder: EncoderConfig,
) -> Result<Recorded, RecordError> {
    let writer = spool.create_session(header)?;
    let options = SessionOptions {
        chunk_len,
        encoder,
        events: EventLimits::default(),
        sealer: None,
        fail_closed: None,
        bell: None,
    };
    let mut rec =
        SessionRecorder::start(writer, header, SessionClock::start(), options, Vec::new());
    let tick_us = 1_000_000 / u64::from(fps.max(1));
    let end = MediaTime::from_duration(duration);
    let mut t = MediaTime::ZERO;
    while t < end {
        let frame = screen.render(t.as_micros());
        rec.tick(t, Tick::Grab(Grab::Frame(frame)))?;
        t = MediaTime::from_micros(t.as_micros() + tick_us);
    }
    let ticks = rec.stats();
    let cause = StopCause {
        by: StopBy::GroupChange,
        peer: None,
        recorded_user: None,
        detail: "the synthetic session ended".into(),
    };
    let done = rec.finish(end, cause, 0)?;
    Ok(Recorded {
        session: done.session,
        chunks: done.chunks,
        ticks,
    })
}
