//! Cutting the encoded stream into chunks and committing them to the spool.
//!
//! A chunk covers `[start, end)` of media time and holds every frame encoded in it. Each sample's
//! duration runs to the next frame (or to the chunk's end), so the timeline is continuous: a
//! frame shown for ten idle seconds is one sample ten seconds long, and the next chunk's `tfdt`
//! is exactly where this one stopped. A new init segment (first keyframe, or a screen-size
//! change) always starts a new chunk, because a chunk names exactly one init segment.

use std::time::Duration;

use chrono::{DateTime, Utc};
use jitrec_format::{
    ChunkManifest, Event, EventsRef, FORMAT_V1, InitRef, MediaTime, PayloadRef, SessionClose,
    Sha256Digest, StopCause, encode_events,
};
use jitrec_spool::{SessionWriter, SpoolError};

use crate::encode::EncodedFrame;
use crate::fmp4::{self, ParameterSets, Sample};

/// Why a chunk could not be committed.
#[derive(Debug, thiserror::Error)]
pub enum ChunkError {
    #[error(transparent)]
    Spool(#[from] SpoolError),
    #[error(transparent)]
    Format(#[from] jitrec_format::FormatError),
    #[error(transparent)]
    Events(#[from] jitrec_format::EventsError),
    #[error("the encoder produced a frame before any keyframe with parameter sets")]
    NoInit,
    #[error(transparent)]
    Seal(#[from] crate::seal::SealError),
}

#[derive(Debug, Clone)]
struct Init {
    ps: ParameterSets,
    width: u32,
    height: u32,
    r#ref: InitRef,
}

#[derive(Debug)]
struct OpenChunk {
    start: MediaTime,
    frames: Vec<(MediaTime, bool, Vec<u8>)>,
}

/// Turns encoded frames and events into committed chunks of one session.
#[derive(Debug)]
pub struct Chunker {
    writer: SessionWriter,
    chunk_len_us: u64,
    timescale: u32,
    init: Option<Init>,
    open: Option<OpenChunk>,
    /// Events waiting for the chunk whose interval contains them.
    events: Vec<Event>,
    /// Events that arrived after their chunk was committed (placed at the next chunk's start).
    late_events: u64,
    /// Encrypts every payload before it is committed (the session header names the recipients).
    sealer: Option<std::sync::Arc<crate::seal::Sealer>>,
}

impl Chunker {
    pub fn new(writer: SessionWriter, chunk_len: Duration, timescale: u32) -> Self {
        Self {
            writer,
            chunk_len_us: chunk_len.as_micros().max(1) as u64,
            timescale,
            init: None,
            open: None,
            events: Vec::new(),
            late_events: 0,
            sealer: None,
        }
    }

    /// Encrypts every payload with `sealer` (its recipients must be in the session's header).
    pub fn with_sealer(mut self, sealer: Option<std::sync::Arc<crate::seal::Sealer>>) -> Self {
        self.sealer = sealer;
        self
    }

    /// The payload as stored: encrypted when the session is.
    fn stored(&self, plain: Vec<u8>) -> Result<Vec<u8>, ChunkError> {
        match &self.sealer {
            Some(s) => Ok(s.seal(&plain)?),
            None => Ok(plain),
        }
    }

    fn started_at(&self) -> DateTime<Utc> {
        self.writer.header().started_at
    }

    fn utc(&self, t: MediaTime) -> DateTime<Utc> {
        self.started_at() + chrono::Duration::microseconds(t.as_micros() as i64)
    }

    fn ticks(&self, t: MediaTime) -> u64 {
        (u128::from(t.as_micros()) * u128::from(self.timescale) / 1_000_000) as u64
    }

    /// Whether a frame at `t` would end the open chunk (the caller then supplies one, repeating
    /// the last image if the screen is idle, so the new chunk is not empty).
    pub fn boundary_due(&self, t: MediaTime) -> bool {
        self.open
            .as_ref()
            .is_some_and(|o| t.as_micros() >= o.start.as_micros() + self.chunk_len_us)
    }

    /// Queues an event for the chunk that contains its media time.
    pub fn push_event(&mut self, e: Event) {
        self.events.push(e);
    }

    /// Adds an encoded frame of a `width` x `height` stream.
    pub fn push(&mut self, f: EncodedFrame, width: u32, height: u32) -> Result<(), ChunkError> {
        let (data, ps) = fmp4::to_sample_data(&f.access_unit);
        let new_init = ps.filter(|ps| {
            self.init
                .as_ref()
                .is_none_or(|i| i.ps != *ps || i.width != width || i.height != height)
        });
        if self.boundary_due(f.pts) || (new_init.is_some() && self.open.is_some()) {
            self.cut(f.pts)?;
        }
        if let Some(ps) = new_init {
            self.commit_init(ps, width, height)?;
        }
        if self.init.is_none() {
            return Err(ChunkError::NoInit);
        }
        let start = if self.writer.next_seq() == 0 {
            // The first chunk starts at JIT start, so events from before the first frame (JIT
            // start itself) have a chunk to live in.
            MediaTime::ZERO
        } else {
            f.pts
        };
        self.open
            .get_or_insert_with(|| OpenChunk {
                start,
                frames: Vec::new(),
            })
            .frames
            .push((f.pts, f.keyframe, data));
        Ok(())
    }

    fn commit_init(
        &mut self,
        ps: ParameterSets,
        width: u32,
        height: u32,
    ) -> Result<(), ChunkError> {
        let bytes = fmp4::init_segment(&ps, width as u16, height as u16, self.timescale);
        let id = self.writer.next_init();
        let bytes = self.stored(bytes)?;
        self.writer.commit_init(id, &bytes)?;
        self.init = Some(Init {
            r#ref: InitRef {
                id,
                size: bytes.len() as u64,
                sha256: Sha256Digest::of(&bytes),
                width,
                height,
                codec: fmp4::codec_string(&ps.sps),
            },
            ps,
            width,
            height,
        });
        Ok(())
    }

    /// Commits the open chunk as `[start, end)`.
    fn cut(&mut self, end: MediaTime) -> Result<(), ChunkError> {
        let Some(open) = self.open.take() else {
            return Ok(());
        };
        let Some(init) = &self.init else {
            return Err(ChunkError::NoInit);
        };
        let end = end.max(open.frames.last().map_or(open.start, |f| f.0));
        let mut samples = Vec::with_capacity(open.frames.len());
        for (i, (pts, keyframe, data)) in open.frames.iter().enumerate() {
            let next = open.frames.get(i + 1).map_or(end, |f| f.0);
            let duration = self.ticks(next).saturating_sub(self.ticks(*pts)).max(1);
            samples.push(Sample {
                duration: u32::try_from(duration).unwrap_or(u32::MAX),
                keyframe: *keyframe,
                data: data.clone(),
            });
        }
        let seq = self.writer.next_seq();
        let first_pts = open.frames.first().map_or(open.start, |f| f.0);
        let segment = fmp4::media_segment(seq as u32 + 1, self.ticks(first_pts), &samples);
        // Events of this interval; older ones missed their chunk and are placed at its start.
        let (mut mine, rest): (Vec<Event>, Vec<Event>) =
            self.events.drain(..).partition(|e| e.media_us <= end);
        self.events = rest;
        for e in &mut mine {
            if e.media_us < open.start {
                self.late_events += 1;
                e.media_us = open.start;
            }
        }
        mine.sort_by_key(|e| e.media_us);
        let events = self.stored(encode_events(&mine)?)?;
        let segment = self.stored(segment)?;
        let manifest = ChunkManifest {
            version: self.writer.header().version,
            session_id: self.writer.session_id(),
            seq,
            media_start_us: open.start,
            media_end_us: end,
            utc_start: self.utc(open.start),
            utc_end: self.utc(end),
            starts_with_keyframe: samples.first().is_some_and(|s| s.keyframe),
            frames: samples.len() as u32,
            init: init.r#ref.clone(),
            video: PayloadRef::of(&segment),
            events: EventsRef {
                size: events.len() as u64,
                sha256: Sha256Digest::of(&events),
                count: mine.len() as u32,
            },
            prev: self.writer.head(),
        };
        self.writer.commit_chunk(&manifest, &segment, &events)?;
        tracing::debug!(session = %manifest.session_id, seq, frames = samples.len(), bytes = segment.len(), "chunk committed");
        Ok(())
    }

    /// Commits the last chunk (ending at `end`) and the close record.
    /// `cause` says who or what ended the session: its `by` gives the end reason, and a version 2
    /// close record carries it whole.
    pub fn finish(mut self, end: MediaTime, cause: &StopCause) -> Result<u64, ChunkError> {
        self.cut(end)?;
        if !self.events.is_empty() {
            tracing::warn!(
                count = self.events.len(),
                "events after the last frame were not recorded"
            );
        }
        if self.late_events > 0 {
            tracing::warn!(
                count = self.late_events,
                "events arrived after their chunk was committed and were placed at the next chunk's start"
            );
        }
        let w = self.writer;
        let media_end = w.last_chunk().map(|m| m.media_end_us).unwrap_or_default();
        let ended_at =
            w.header().started_at + chrono::Duration::microseconds(media_end.as_micros() as i64);
        let chunks = w.next_seq();
        let version = w.header().version;
        let close = SessionClose {
            version,
            session_id: w.session_id(),
            end_reason: cause.by.end_reason(),
            ended_at,
            closed_at: Utc::now().max(ended_at),
            chunk_count: chunks,
            media_end_us: media_end,
            prev: w.head(),
            note: None,
            stopped_by: (version != FORMAT_V1).then(|| cause.clone()),
        };
        w.close(&close)?;
        Ok(chunks)
    }
}
