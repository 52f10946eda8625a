//! One recorded session, from its header to its close record: [`SessionRecorder`].
//!
//! The session recorder is the encoding side of a session and knows nothing of where its
//! pictures come from: [`SessionRecorder::start`] commits the header's first events and starts
//! the event intake; each [`SessionRecorder::tick`] takes one capture tick (a picture, a picture
//! of which only some rectangles changed, "unchanged", or a failure) at its media time and
//! detects changes, encodes, and cuts chunks; [`SessionRecorder::housekeep`] takes the events
//! in between; [`SessionRecorder::finish`] cuts the last chunk at the stop time and commits the
//! close record. The recorder service (`crate::service`) drives it from the capture thread's
//! ticks in real time, the scripted driver (`crate::scripted`) from a synthetic screen on a
//! virtual clock: both record through this one struct.
//!
//! While the screen cannot be captured the video shows a plain [`PLACEHOLDER`] picture, a
//! `capture_error` event marks where that began and a `gap` event covers the whole stretch, so a
//! reviewer never mistakes a frozen or missing picture for an idle screen. Events keep being
//! recorded throughout. A full spool is an outage too, handled by the chunker: video of the
//! stretch dropped, events kept, a `gap` once there is room.
//!
//! Only what changed is worked on: a tick whose rectangles are known converts only those, a
//! picture equal to the last is not encoded, and an idle screen costs one repeated frame per
//! chunk (so no chunk is empty and playback never stalls).

use std::sync::Arc;
use std::sync::mpsc::SyncSender;
use std::time::Duration;

use jitrec_format::{EventKind, FORMAT_VERSION, MediaTime, SessionHeader, SessionId, StopCause};
use jitrec_spool::SessionWriter;

use crate::capture::{Frame, Grab, Tick};
use crate::chunker::{ChunkError, Chunker};
use crate::cost::{self, Stage};
use crate::encode::{EncodeError, Encoder, EncoderConfig};
use crate::events::{EventLimits, EventSource, Intake, SessionClock};
use crate::service::SessionDone;

/// Why a recording failed.
#[derive(Debug, thiserror::Error)]
pub enum RecordError {
    #[error(transparent)]
    Encode(#[from] EncodeError),
    #[error(transparent)]
    Chunk(#[from] ChunkError),
    #[error(transparent)]
    Spool(#[from] jitrec_spool::SpoolError),
    #[error("starting the {0} thread: {1}")]
    Spawn(&'static str, std::io::Error),
}

/// The picture recorded while the screen cannot be captured: plain navy (RGB 0, 0, 128), which
/// no idle desktop is mistaken for. Same size as the last picture, or [`PLACEHOLDER_SIZE`] when
/// there was none.
pub const PLACEHOLDER: [u8; 4] = [128, 0, 0, 255];

/// Width and height of the placeholder when no picture was captured yet in the session.
pub const PLACEHOLDER_SIZE: (u32, u32) = (640, 360);

/// How long a chunk cut waits for event sources to catch up to it. Sources report every 50 ms
/// (the `/proc` poller every poll), so this is only reached when one is stuck; its late events
/// then go into the next chunk.
const CATCH_UP_LIMIT: Duration = Duration::from_millis(250);

/// What a session is recorded with besides its header.
#[derive(Debug, Clone)]
pub struct SessionOptions {
    pub chunk_len: Duration,
    pub encoder: EncoderConfig,
    pub events: EventLimits,
    /// Encrypts the payloads (the header names its recipients).
    pub sealer: Option<Arc<crate::seal::Sealer>>,
    /// End the elevation when recording cannot run.
    pub fail_closed: Option<crate::failclosed::FailClosed>,
    /// Rung by the event sources after each event (`None`: whoever drives the session calls
    /// [`SessionRecorder::housekeep`] often enough without being told).
    pub bell: Option<Arc<crate::doorbell::Doorbell>>,
}

/// What a session's ticks did, so far.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct TickStats {
    /// Pictures converted and encoded because the screen changed.
    pub changed: u64,
    /// Pictures encoded again to keep an idle chunk non-empty (or to give a keyframe).
    pub repeated: u64,
    /// Ticks where nothing changed and nothing was encoded.
    pub skipped: u64,
}

/// A stretch without a picture, while it lasts.
struct Outage {
    from: MediaTime,
    message: String,
    /// The last real picture before it: a damage-tracked source that recovers with "unchanged"
    /// means this one.
    before: Option<Frame>,
}

/// The encoding side of one session.
pub struct SessionRecorder {
    session: SessionId,
    user: String,
    hostname: String,
    version: u32,
    clock: SessionClock,
    intake: Intake,
    chunker: Chunker,
    encoder_config: EncoderConfig,
    encoder: Option<Encoder>,
    /// The last picture encoded (compared against when a tick does not say what changed).
    last: Option<Frame>,
    outage: Option<Outage>,
    /// Media time of the last tick taken.
    last_t: Option<MediaTime>,
    fail_closed: Option<crate::failclosed::FailClosed>,
    /// What fail-closed did, once it did (at most once per session).
    failed_closed: Option<String>,
    stats: TickStats,
    costs: cost::Snapshot,
    /// Where the pixel buffers of pictures done with go back to capture (`with_spent`).
    spent: Option<SyncSender<Vec<u8>>>,
    /// Whether `last` is a picture capture handed over (not the placeholder), whose buffer
    /// may go back to it: capture takes a buffer it gets back for one of its own pictures.
    last_from_capture: bool,
}

impl std::fmt::Debug for SessionRecorder {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SessionRecorder")
            .field("session", &self.session)
            .field("stats", &self.stats)
            .finish_non_exhaustive()
    }
}

impl SessionRecorder {
    /// Starts recording into `writer` (the session of `header`, whose header is committed):
    /// the event intake with `sources`, and the JIT start and recorder start events at media
    /// time 0 of `clock`.
    pub fn start(
        writer: SessionWriter,
        header: &SessionHeader,
        clock: SessionClock,
        options: SessionOptions,
        sources: Vec<Box<dyn EventSource>>,
    ) -> Self {
        let intake = Intake::start(
            clock,
            sources,
            options.events,
            writer.journal(),
            options.bell.clone(),
        );
        let sealer = header.encryption.as_ref().and(options.sealer);
        let chunker =
            Chunker::new(writer, options.chunk_len, options.encoder.timescale).with_sealer(sealer);
        let mut me = Self {
            session: header.session_id,
            user: header.user.name.clone(),
            hostname: header.machine.hostname.clone(),
            version: header.version,
            clock,
            intake,
            chunker,
            encoder_config: options.encoder,
            encoder: None,
            last: None,
            outage: None,
            last_t: None,
            fail_closed: options.fail_closed,
            failed_closed: None,
            stats: TickStats::default(),
            costs: cost::Snapshot::now(),
            spent: None,
            last_from_capture: false,
        };
        me.push(
            MediaTime::ZERO,
            EventKind::JitStart {
                user: me.user.clone(),
                machine: me.hostname.clone(),
                authorized_by: header.authorization.authorized_by.clone(),
                reason: header.authorization.reason.clone(),
            },
        );
        me.push(MediaTime::ZERO, EventKind::RecorderStarted);
        me
    }

    /// Sends the pixel buffers of pictures this recorder is done with to `spent`, for capture
    /// to fill again ([`crate::capture::CaptureSource::reuse`]). Full policy of that queue: the
    /// buffer is freed.
    pub fn with_spent(mut self, spent: SyncSender<Vec<u8>>) -> Self {
        self.spent = Some(spent);
        self
    }

    pub fn session(&self) -> SessionId {
        self.session
    }

    pub fn stats(&self) -> TickStats {
        self.stats
    }

    fn push(&mut self, t: MediaTime, e: EventKind) {
        self.chunker.push_event(self.clock.event(t, e));
    }

    /// Takes the events the sources have sent, makes the journal durable, and ends the
    /// elevation if recording has been unable to run for too long (fail closed).
    pub fn housekeep(&mut self) {
        let chunker = &mut self.chunker;
        cost::measure(Stage::Events, || {
            self.intake.drain(&mut |e| chunker.push_seen(e));
            chunker.sync_journal();
        });
        if self.failed_closed.is_some() {
            return;
        }
        let Some(fc) = &self.fail_closed else {
            return;
        };
        let now = self.clock.now();
        let over = |from: MediaTime, bound: Duration| {
            u128::from(now.as_micros().saturating_sub(from.as_micros())) >= bound.as_micros()
        };
        let why = match (self.chunker.spool_full_since(), self.outage.as_ref()) {
            (Some(f), _) if over(f, fc.spool_full) => Some(format!(
                "the spool was full for more than {} s",
                fc.spool_full.as_secs()
            )),
            (_, Some(o)) if over(o.from, fc.capture_lost) => Some(format!(
                "the screen could not be captured for more than {} s ({})",
                fc.capture_lost.as_secs(),
                o.message
            )),
            _ => None,
        };
        if let Some(reason) = why {
            let action = fc.end_elevation(&self.user);
            tracing::error!(session = %self.session, reason, action, "recording cannot run: the elevation was ended (fail closed)");
            self.push(
                now,
                EventKind::FailClosed {
                    reason: crate::events::truncate_text(&reason),
                    action: crate::events::truncate_text(&action),
                },
            );
            self.failed_closed = Some(format!("{reason}: {action}"));
        }
    }

    /// When [`SessionRecorder::housekeep`] must run next at the latest: when the events
    /// journalled since its last sync are due to be synced (`None`: nothing waits for it).
    pub fn housekeep_by(&self) -> Option<std::time::Instant> {
        self.chunker.journal_sync_due()
    }

    /// The media time to give a tick that did not come (the capture is stuck): one `period`
    /// after the last tick, or now when the outage is already recorded.
    pub fn missing_tick_at(&self, period: Duration) -> MediaTime {
        match (&self.outage, self.last_t) {
            (None, Some(l)) => MediaTime::from_micros(l.as_micros() + period.as_micros() as u64),
            (None, None) => MediaTime::ZERO,
            (Some(_), _) => self.clock.now(),
        }
    }

    /// Takes one capture tick at media time `t`. A tick not later than the last one taken (a
    /// grab that was stuck has returned, after this side recorded an outage meanwhile) is
    /// ignored.
    pub fn tick(&mut self, t: MediaTime, tick: Tick) -> Result<(), RecordError> {
        if self.last_t.is_some_and(|l| t <= l) {
            return Ok(());
        }
        let started = cost::thread_time();
        let out = self.take(t, tick);
        cost::add(
            Stage::EncodeThread,
            cost::thread_time().saturating_sub(started),
        );
        out
    }

    fn take(&mut self, t: MediaTime, tick: Tick) -> Result<(), RecordError> {
        self.last_t = Some(t);
        let session = self.session;
        let from_capture = matches!(tick, Tick::Grab(_));
        let grab = match tick {
            Tick::Failed(_) if self.outage.is_some() => Grab::Unchanged,
            Tick::Failed(message) => {
                tracing::error!(%session, error = %message, "screen capture failed; recording a placeholder picture until it recovers");
                self.push(
                    t,
                    EventKind::CaptureError {
                        message: message.clone(),
                    },
                );
                let (w, h) = self
                    .encoder
                    .as_ref()
                    .map_or(PLACEHOLDER_SIZE, |e| (e.width(), e.height()));
                self.outage = Some(Outage {
                    from: t,
                    message,
                    before: self.last.take(),
                });
                Grab::Frame(Frame::solid(w, h, PLACEHOLDER))
            }
            Tick::Grab(grab) => match self.outage.take() {
                None => grab,
                Some(o) => {
                    tracing::warn!(%session, seconds = (t.as_micros() - o.from.as_micros()) as f64 / 1e6, "screen capture recovered");
                    self.push(t, capture_gap(&o, t));
                    // The encoder's picture is the placeholder: what follows must be whole.
                    match grab {
                        Grab::Partial(f, _) => Grab::Frame(f),
                        Grab::Unchanged => o.before.map_or(Grab::Unchanged, Grab::Frame),
                        grab => grab,
                    }
                }
            },
        };
        let (frame, changed) = match grab {
            Grab::Frame(f) => (Some(f), None),
            Grab::Partial(f, rects) => (Some(f), Some(rects)),
            Grab::Unchanged => (None, None),
        };
        if let Some(frame) = &frame {
            let resized = self
                .encoder
                .as_ref()
                .is_some_and(|e| e.width() != frame.width || e.height() != frame.height);
            if self.encoder.is_none() || resized {
                // A new size starts a new encoder, whose first keyframe starts a new init
                // segment.
                self.encoder = Some(Encoder::new(
                    frame.width,
                    frame.height,
                    self.encoder_config.clone(),
                )?);
                self.last = None;
            }
        }
        let Some(enc) = self.encoder.as_mut() else {
            return Ok(());
        };
        if self.chunker.wants_keyframe() {
            // The spool refused a chunk and its frames were dropped: what is committed next
            // must decode on its own.
            enc.force_keyframe();
        }
        let out = match (frame, changed) {
            // When the source says what changed, only that is converted and the full compare
            // is skipped (`changed` is tested first); otherwise a frame equal to the last one
            // is idle.
            (Some(frame), changed) if changed.is_some() || self.last.as_ref() != Some(&frame) => {
                self.stats.changed += 1;
                let out = match changed {
                    Some(rects) if self.last.is_some() => enc.encode_changed(&frame, &rects, t)?,
                    _ => enc.encode(&frame, t)?,
                };
                keep(
                    &mut self.last,
                    &mut self.last_from_capture,
                    self.spent.as_ref(),
                    (frame, from_capture),
                );
                out
            }
            // Idle: one repeated frame at a chunk boundary, so no chunk is empty; and the
            // keyframe a retry after a full spool needs, without waiting for a change.
            _ if self.chunker.boundary_due(t) || self.chunker.wants_keyframe() => {
                self.stats.repeated += 1;
                enc.repeat(t)?
            }
            _ => {
                self.stats.skipped += 1;
                Vec::new()
            }
        };
        for f in out {
            if self.chunker.boundary_due(f.pts) {
                // Events up to the cut belong to the chunk being cut.
                let chunker = &mut self.chunker;
                let intake = &mut self.intake;
                cost::measure(Stage::Events, || {
                    intake.catch_up(f.pts, CATCH_UP_LIMIT, &mut |e| chunker.push_seen(e));
                });
            }
            self.chunker.push(f, enc.width(), enc.height())?;
        }
        Ok(())
    }

    /// Ends the session at media time `end`: closes an open outage, keeps the events up to
    /// `end` (and none after), records `frames_dropped`, the JIT stop and recorder stop
    /// events, cuts the last chunk and commits the close record naming `cause`.
    pub fn finish(
        mut self,
        end: MediaTime,
        cause: StopCause,
        frames_dropped: u64,
    ) -> Result<SessionDone, RecordError> {
        let session = self.session;
        if let Some(o) = self.outage.take() {
            tracing::warn!(%session, "JIT ended while the screen could not be captured");
            self.push(end, capture_gap(&o, end));
        }
        if self.encoder.is_none() {
            // Not one picture arrived (JIT ended within the first tick, or the source never
            // produced an image): a placeholder keeps the session's events, and says so.
            tracing::warn!(%session, "JIT ended before the first screen image; recording a placeholder");
            let (w, h) = PLACEHOLDER_SIZE;
            let mut enc = Encoder::new(w, h, self.encoder_config.clone())?;
            for f in enc.encode(&Frame::solid(w, h, PLACEHOLDER), MediaTime::ZERO)? {
                self.chunker.push(f, w, h)?;
            }
            self.push(
                end,
                EventKind::Gap {
                    from_us: MediaTime::ZERO,
                    to_us: end,
                    reason: "JIT ended before the first screen image was captured".into(),
                },
            );
        }
        // Everything up to JIT stop is recorded; nothing after it.
        let mut after_end = 0u64;
        let clock = self.clock;
        let chunker = &mut self.chunker;
        let mut keep = |seen: crate::events::Seen| {
            if seen.event.media_us <= end {
                chunker.push_seen(seen);
            } else if let EventKind::EventsSummarised { .. } | EventKind::EventSource { .. } =
                seen.event.event
            {
                // A count or a loss notice stamped after the stop may still cover events
                // before it (a flood whose summary also took in events of the first moments
                // after the stop): kept at the stop rather than lost.
                chunker.push_event(clock.event(end, seen.event.event));
            } else {
                after_end += 1;
            }
        };
        self.intake.catch_up(end, CATCH_UP_LIMIT, &mut keep);
        self.intake.stop(&mut keep);
        if after_end > 0 {
            tracing::debug!(count = after_end, "events after JIT stop were not recorded");
        }
        if frames_dropped > 0 {
            self.chunker.push_event(clock.event(
                end,
                EventKind::FramesDropped {
                    count: frames_dropped,
                },
            ));
        }
        let mut cause = attribute(cause, &self.user);
        if let Some(f) = &self.failed_closed {
            // The close record may be all that a full spool lets through: it says why.
            cause.detail = crate::events::truncate_text(&format!(
                "{}; the recorder had ended the elevation itself (fail closed): {f}",
                cause.detail
            ));
        }
        if cause.recorded_user == Some(true) {
            tracing::warn!(%session, user = self.user, detail = %cause.detail, "the recorded user ended their own recording");
        }
        self.chunker.push_event(clock.event(
            end,
            EventKind::JitStop {
                user: self.user.clone(),
                machine: self.hostname.clone(),
                reason: Some(cause.detail.clone()),
                stopped_by: (self.version == FORMAT_VERSION).then(|| Box::new(cause.clone())),
            },
        ));
        self.chunker
            .push_event(clock.event(end, EventKind::RecorderStopped));
        let reason = cause.by.end_reason();
        let chunks = self.chunker.finish(end, &cause)?;
        self.costs
            .log(&session, Duration::from_micros(end.as_micros()), self.stats);
        Ok(SessionDone {
            session,
            chunks,
            reason,
            frames_dropped,
        })
    }
}

/// Says whether a control command came from the recorded user: their own account, or a
/// process of their login session (`sudo` keeps the login uid).
fn attribute(mut cause: StopCause, user: &str) -> StopCause {
    if let Some(p) = &cause.peer {
        let by_user = p.user.name == user
            || p.user.id == user
            || p.login_user
                .as_ref()
                .is_some_and(|l| l.name == user || l.id == user);
        cause.recorded_user = Some(by_user);
        if by_user {
            cause.detail = format!("{} (the recorded user {user})", cause.detail);
        }
    }
    cause
}

/// Keeps `new` (a picture, and whether capture handed it over) as the last picture encoded;
/// the pixels of the one it replaces go back to capture through `spent` if capture handed it
/// over.
fn keep(
    last: &mut Option<Frame>,
    last_from_capture: &mut bool,
    spent: Option<&SyncSender<Vec<u8>>>,
    new: (Frame, bool),
) {
    let old = last.replace(new.0);
    let old_from_capture = std::mem::replace(last_from_capture, new.1);
    if let (Some(old), Some(spent), true) = (old, spent, old_from_capture) {
        let _ = spent.try_send(old.data);
    }
}

/// The `gap` event closing outage `o` at `to`.
fn capture_gap(o: &Outage, to: MediaTime) -> EventKind {
    EventKind::Gap {
        from_us: o.from,
        to_us: to,
        reason: format!("screen capture failed: {}", o.message),
    }
}
