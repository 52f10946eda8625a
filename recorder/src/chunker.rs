//! Cutting the encoded stream into chunks and committing them to the spool.
//!
//! A chunk covers `[start, end)` of media time and holds every frame encoded in it. Each sample's
//! duration runs to the next frame (or to the chunk's end), so the timeline is continuous: a
//! frame shown for ten idle seconds is one sample ten seconds long, and the next chunk's `tfdt`
//! is exactly where this one stopped. A new init segment (first keyframe, or a screen-size
//! change) always starts a new chunk, because a chunk names exactly one init segment.
//!
//! A full spool (its size bound, or the disk itself) is an outage, not the end of the session
//! ([`SpoolOutage`]): the frames of a chunk that cannot be committed are dropped, its events are
//! kept in memory (at most [`MAX_KEPT_EVENTS`] process and window events; the rest counted), and
//! the commit is tried again at each chunk boundary with a chunk that starts with a keyframe.
//! The first chunk that fits starts where the last committed one ended, so its events keep
//! their own times, and carries a `gap` from there to its first frame, with the reason.

use std::time::Duration;

use chrono::{DateTime, Utc};
use jitrec_format::{
    ChunkManifest, Event, EventKind, EventsRef, FORMAT_V1, InitRef, MediaTime, PayloadRef,
    SessionClose, Sha256Digest, StopCause, encode_events,
};
use jitrec_spool::{SessionWriter, SpoolError};

use crate::cost::{self, Stage};
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

/// Process and window events kept in memory while the spool is full, beyond which they are only
/// counted (in an `events_summarised` event of the first chunk that fits). At the default
/// rate bound (2,000 a second) this is at least 25 s of a flood and hours of ordinary use, at
/// a few hundred bytes each: tens of MB at most.
pub const MAX_KEPT_EVENTS: usize = 50_000;

/// A stretch the spool had no room for, while it lasts.
#[derive(Debug)]
struct SpoolOutage {
    /// The first media time not committed (the end of the last committed chunk): where the
    /// `gap` begins, and where the first chunk that fits starts.
    from: MediaTime,
    /// The spool's error, for the gap's reason.
    error: String,
    /// Encoded frames not kept.
    frames_dropped: u64,
    /// Process and window events beyond [`MAX_KEPT_EVENTS`], counted only.
    events_dropped: u64,
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
    /// Events waiting for the chunk whose interval contains them, with their journal ids.
    events: Vec<(Option<u64>, Event)>,
    /// The session's events journal (`None`: a resumed session, or no journal).
    journal: Option<std::sync::Arc<jitrec_spool::Journal>>,
    /// Events that arrived after their chunk was committed (placed at the next chunk's start).
    late_events: u64,
    /// Encrypts every payload before it is committed (the session header names the recipients).
    sealer: Option<std::sync::Arc<crate::seal::Sealer>>,
    /// Set while the spool has no room (`None`: every chunk so far was committed).
    outage: Option<SpoolOutage>,
    /// Frames were dropped: the next chunk must start with a keyframe, and frames before one
    /// are dropped too (they depend on the dropped ones).
    want_keyframe: bool,
    /// CPU time spent in spool commits, for the cost counters.
    spooled: Duration,
}

impl Chunker {
    pub fn new(writer: SessionWriter, chunk_len: Duration, timescale: u32) -> Self {
        let journal = writer.journal();
        Self {
            journal,
            writer,
            chunk_len_us: chunk_len.as_micros().max(1) as u64,
            timescale,
            init: None,
            spooled: Duration::ZERO,
            open: None,
            events: Vec::new(),
            late_events: 0,
            sealer: None,
            outage: None,
            want_keyframe: false,
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

    /// Whether `e` is beyond what a full spool lets this session keep in memory (and is
    /// counted instead). Status events (capture errors, gaps, JIT stop) are few and always kept.
    fn over_outage_bound(&mut self, e: &Event) -> bool {
        if let Some(o) = &mut self.outage
            && self.events.len() >= MAX_KEPT_EVENTS
            && matches!(
                e.event,
                EventKind::ProcessStart(_)
                    | EventKind::ProcessExit(_)
                    | EventKind::WindowFocus(_)
                    | EventKind::WindowTitle(_)
            )
        {
            o.events_dropped += 1;
            return true;
        }
        false
    }

    /// Queues an event for the chunk that contains its media time, journalling it first.
    pub fn push_event(&mut self, e: Event) {
        if self.over_outage_bound(&e) {
            return;
        }
        let id = self.journal.as_ref().and_then(|j| match j.append(&e) {
            Ok(id) => Some(id),
            Err(err) => {
                tracing::warn!(error = %err, "could not journal an event");
                None
            }
        });
        self.events.push((id, e));
    }

    /// Queues an event a source has already journalled (bounded like [`Chunker::push_event`]).
    pub fn push_seen(&mut self, s: crate::events::Seen) {
        if self.over_outage_bound(&s.event) {
            return;
        }
        self.events.push((s.journal_id, s.event));
    }

    /// Syncs the journal to the disk when its interval is due (see `jitrec_spool::Journal`).
    pub fn sync_journal(&self) {
        if let Some(j) = &self.journal
            && let Err(e) = j.sync(false)
        {
            tracing::warn!(error = %e, "could not sync the events journal");
        }
    }

    /// When the events journal is due to be synced ([`Chunker::sync_journal`]), if it holds
    /// anything unsynced.
    pub fn journal_sync_due(&self) -> Option<std::time::Instant> {
        self.journal.as_ref().and_then(|j| j.sync_due())
    }

    /// Whether frames were dropped (a full spool) and the encoder must make the next frame a
    /// keyframe; until one comes, frames are dropped. The caller also encodes a frame at the
    /// next tick even if the screen is idle, so the retry does not wait for a change.
    pub fn wants_keyframe(&self) -> bool {
        self.want_keyframe
    }

    /// Whether the spool is full and video is not being kept.
    pub fn spool_full(&self) -> bool {
        self.outage.is_some()
    }

    /// Since when (media time) nothing could be committed, while the spool is full.
    pub fn spool_full_since(&self) -> Option<MediaTime> {
        self.outage.as_ref().map(|o| o.from)
    }

    /// Starts (or continues) an outage after `e`, a commit the spool had no room for, which
    /// dropped `frames`.
    fn spool_refused(&mut self, e: &SpoolError, frames: u64) {
        self.want_keyframe = true;
        match &mut self.outage {
            Some(o) => {
                o.frames_dropped += frames;
                tracing::debug!(session = %self.writer.session_id(), error = %e, "the spool is still full");
            }
            None => {
                let from = self
                    .writer
                    .last_chunk()
                    .map_or(MediaTime::ZERO, |m| m.media_end_us);
                tracing::error!(
                    session = %self.writer.session_id(),
                    error = %e,
                    from_us = from.as_micros(),
                    "spool full: video is not kept until space returns (events are kept in memory); retrying at each chunk boundary"
                );
                self.outage = Some(SpoolOutage {
                    from,
                    error: e.to_string(),
                    frames_dropped: frames,
                    events_dropped: 0,
                });
            }
        }
    }

    /// Adds an encoded frame of a `width` x `height` stream.
    pub fn push(&mut self, f: EncodedFrame, width: u32, height: u32) -> Result<(), ChunkError> {
        let (data, ps) = cost::measure(Stage::Mux, || fmp4::to_sample_data(&f.access_unit));
        let new_init = ps.filter(|ps| {
            self.init
                .as_ref()
                .is_none_or(|i| i.ps != *ps || i.width != width || i.height != height)
        });
        if self.boundary_due(f.pts) || (new_init.is_some() && self.open.is_some()) {
            self.cut(f.pts)?;
        }
        if self.open.is_none() && self.want_keyframe {
            if !f.keyframe {
                // Depends on frames that were dropped: it would not decode.
                if let Some(o) = &mut self.outage {
                    o.frames_dropped += 1;
                }
                return Ok(());
            }
            self.want_keyframe = false;
        }
        if let Some(ps) = new_init {
            match self.commit_init(ps, width, height) {
                Err(ChunkError::Spool(e)) if e.is_out_of_space() => {
                    self.spool_refused(&e, 1);
                    return Ok(());
                }
                other => other?,
            }
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
    /// Cuts the open chunk at `end` and commits it. Its CPU time is counted as muxing
    /// (`crate::cost`), but for the spool's commit, counted as spool time.
    fn cut(&mut self, end: MediaTime) -> Result<(), ChunkError> {
        let started = cost::thread_time();
        let spooled = self.spooled;
        let out = self.cut_open(end);
        let spent = cost::thread_time().saturating_sub(started);
        cost::add(
            Stage::Mux,
            spent.saturating_sub(self.spooled.saturating_sub(spooled)),
        );
        out
    }

    fn cut_open(&mut self, end: MediaTime) -> Result<(), ChunkError> {
        let Some(open) = self.open.take() else {
            return Ok(());
        };
        let Some(init) = &self.init else {
            return Err(ChunkError::NoInit);
        };
        // After a full spool, the chunk that fits starts where the last committed one ended, so
        // the events of the stretch keep their times (its video starts at its first frame).
        let start = self.outage.as_ref().map_or(open.start, |o| o.from);
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
        let (taken, rest): (Vec<_>, Vec<_>) =
            self.events.drain(..).partition(|(_, e)| e.media_us <= end);
        self.events = rest;
        let ids: Vec<u64> = taken.iter().filter_map(|(id, _)| *id).collect();
        let mut mine: Vec<Event> = taken.iter().map(|(_, e)| e.clone()).collect();
        for e in &mut mine {
            if e.media_us < start {
                self.late_events += 1;
                e.media_us = start;
            }
        }
        mine.sort_by_key(|e| e.media_us);
        let (plain, count) = match &self.outage {
            None => (encode_events(&mine)?, mine.len()),
            Some(o) => {
                let mut all = mine.clone();
                all.extend(self.outage_events(o, first_pts));
                all.sort_by_key(|e| e.media_us);
                (encode_events(&all)?, all.len())
            }
        };
        let events = self.stored(plain)?;
        let segment = self.stored(segment)?;
        let manifest = ChunkManifest {
            version: self.writer.header().version,
            session_id: self.writer.session_id(),
            seq,
            media_start_us: start,
            media_end_us: end,
            utc_start: self.utc(start),
            utc_end: self.utc(end),
            starts_with_keyframe: samples.first().is_some_and(|s| s.keyframe),
            frames: samples.len() as u32,
            init: init.r#ref.clone(),
            video: PayloadRef::of(&segment),
            events: EventsRef {
                size: events.len() as u64,
                sha256: Sha256Digest::of(&events),
                count: count as u32,
            },
            prev: self.writer.head(),
        };
        // The marker goes first: a crash between it and the commit leaves a marker the next
        // run ignores, never a committed chunk whose events it would fold a second time. The
        // journal is scratch: when it cannot be written (a full disk), the recording goes on
        // and a crash could only fold some events twice.
        if let Some(j) = &self.journal
            && let Err(e) = j.mark_chunk(seq, &ids)
        {
            tracing::warn!(error = %e, "could not mark a chunk in the events journal");
        }
        let committing = cost::thread_time();
        let committed = self.writer.commit_chunk(&manifest, &segment, &events);
        let spent = cost::thread_time().saturating_sub(committing);
        self.spooled += spent;
        cost::add(Stage::Spool, spent);
        match committed {
            Ok(_) => {}
            Err(e) if e.is_out_of_space() => {
                // Nothing was written and the chain head is unchanged (the spool's contract):
                // the frames go, the events (with their journal ids) wait for the next chunk
                // that fits, whose marker names them again.
                let mut back = taken;
                back.append(&mut self.events);
                self.events = back;
                self.spool_refused(&e, samples.len() as u64);
                return Ok(());
            }
            Err(e) => return Err(e.into()),
        }
        if let Some(j) = &self.journal
            && let Err(e) = j.chunk_committed(seq)
        {
            tracing::warn!(error = %e, "could not compact the events journal");
        }
        if let Some(o) = self.outage.take() {
            tracing::warn!(
                session = %manifest.session_id,
                seconds = (first_pts.as_micros() - o.from.as_micros()) as f64 / 1e6,
                frames_dropped = o.frames_dropped,
                events_dropped = o.events_dropped,
                "the spool has room again; recording resumed (a gap covers the stretch)"
            );
        }
        tracing::debug!(session = %manifest.session_id, seq, frames = samples.len(), bytes = segment.len(), "chunk committed");
        Ok(())
    }

    /// The events the first chunk after a full spool carries: the `gap` from the first
    /// uncommitted time to its first frame, and the count of events not kept.
    fn outage_events(&self, o: &SpoolOutage, resume: MediaTime) -> Vec<Event> {
        let at = |t: MediaTime, event| Event {
            media_us: t,
            utc: self.utc(t),
            event,
        };
        let mut out = vec![at(
            resume,
            EventKind::Gap {
                from_us: o.from,
                to_us: resume,
                reason: format!(
                    "the spool was full ({}): {} frames of video were not kept; the events of the stretch were",
                    o.error, o.frames_dropped
                ),
            },
        )];
        if o.events_dropped > 0 {
            out.push(at(
                resume,
                EventKind::EventsSummarised {
                    count: o.events_dropped,
                    what: format!(
                        "recorder: {} process and window events while the spool was full exceeded the {MAX_KEPT_EVENTS} kept in memory and are only counted",
                        o.events_dropped
                    ),
                },
            ));
        }
        out
    }

    /// Commits the last chunk (ending at `end`) and the close record.
    /// `cause` says who or what ended the session: its `by` gives the end reason, and a version 2
    /// close record carries it whole.
    pub fn finish(self, end: MediaTime, cause: &StopCause) -> Result<u64, ChunkError> {
        self.finish_with_note(end, cause, None)
    }

    /// [`Chunker::finish`], with the close record's `note`.
    pub fn finish_with_note(
        mut self,
        end: MediaTime,
        cause: &StopCause,
        note: Option<String>,
    ) -> Result<u64, ChunkError> {
        self.cut(end)?;
        // Still full at the stop: the close record (which may use the spool's reserve) says
        // what was lost, since no chunk can carry the gap.
        let outage_note = self.outage.as_ref().map(|o| {
            tracing::error!(
                session = %self.writer.session_id(),
                frames_dropped = o.frames_dropped,
                events = self.events.len() as u64 + o.events_dropped,
                "JIT ended while the spool was full: the end of the session was not recorded"
            );
            format!(
                "the spool was full from {:.3} s to the end ({}): {} frames and {} events were not recorded",
                o.from.as_micros() as f64 / 1e6,
                o.error,
                o.frames_dropped,
                self.events.len() as u64 + o.events_dropped
            )
        });
        if outage_note.is_some() {
            self.events.clear();
        }
        let note = match (note, outage_note) {
            (Some(a), Some(b)) => Some(format!("{a}; {b}")),
            (a, b) => a.or(b),
        };
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
        // The journal's handle goes before the close removes the file (Windows removes no file
        // that is open).
        self.journal = None;
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
            note,
            stopped_by: (version != FORMAT_V1).then(|| cause.clone()),
        };
        w.close(&close)?;
        Ok(chunks)
    }
}
