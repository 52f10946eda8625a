//! The recorder service: JIT events in, sessions in the spool out.
//!
//! [`Recorder::run`] waits for a JIT start, then records one session until JIT stops: a capture
//! thread grabs the screen at a fixed rate and hands frames to the encoding side through a bounded
//! queue whose full policy is **drop the newest frame and count it** (a `frames_dropped` event
//! says how many), so a slow encoder can never make capture lag behind the real screen. The
//! encoding side (this thread: ffmpeg blocks) detects changes, encodes, and commits chunks. When
//! JIT stops, the last chunk is cut at the stop time and the session closed before the call
//! returns, so a log-off or reboot right after loses nothing. Nothing is captured outside JIT: the
//! capture thread exists only between the start and stop events.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::mpsc::{self, Receiver, RecvTimeoutError, TryRecvError, TrySendError};
use std::thread;
use std::time::{Duration, Instant};

use jitrec_format::{
    Agent, Authorization, Codec, CodecParams, EndReason, EventKind, FORMAT_VERSION, Labels,
    Machine, MediaTime, SessionHeader, SessionId, UserRef,
};
use jitrec_spool::SpoolWriter;

use crate::capture::{Frame, Rect};
use crate::chunker::Chunker;
use crate::encode::{Encoder, EncoderConfig};
use crate::events::{EventLimits, Intake, SessionClock, SourceFactory};
use crate::jit::JitEvent;
use crate::pipeline::RecordError;

/// Why a frame could not be captured.
#[derive(Debug, thiserror::Error)]
#[error("capture failed: {0}")]
pub struct CaptureError(pub String);

/// What one capture tick found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Grab {
    /// The screen as it is now (it may or may not differ from the last one).
    Frame(Frame),
    /// The screen as it is now, of which only these rectangles differ from the last frame
    /// this source returned (damage tracking): nothing else needs comparing or converting.
    Partial(Frame, Vec<Rect>),
    /// The source knows nothing changed since its last frame (damage tracking): nothing to copy,
    /// compare or encode.
    Unchanged,
}

/// Something that produces screen frames (X11, Windows Graphics Capture, a script).
pub trait CaptureSource: Send + 'static {
    fn grab(&mut self) -> Result<Grab, CaptureError>;
}

/// A scripted screen played in real time from when it was created (tests, benchmarks).
#[derive(Debug, Clone)]
pub struct ScriptedSource {
    pub screen: crate::capture::SyntheticScreen,
    pub origin: Instant,
}

impl CaptureSource for ScriptedSource {
    fn grab(&mut self) -> Result<Grab, CaptureError> {
        Ok(Grab::Frame(
            self.screen.render(self.origin.elapsed().as_micros() as u64),
        ))
    }
}

/// Frames that may wait between capture and encoding. Two absorb a slow frame; more would only
/// delay the picture (and hold memory: a 1080p frame is 8 MB).
pub const DEFAULT_QUEUE: usize = 2;

/// Recorder settings.
#[derive(Debug, Clone)]
pub struct RecorderConfig {
    pub fps: u32,
    pub chunk_len: Duration,
    pub encoder: EncoderConfig,
    pub machine: Machine,
    pub labels: Labels,
    pub queue: usize,
    pub events: EventLimits,
}

/// What the recorder reports to whoever waits on it (the control socket, tests).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RecorderEvent {
    /// A session's header is committed; capture is starting.
    Started(SessionId),
    /// A session's close record is committed.
    Done(SessionDone),
}

/// What ended a recorded session.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SessionDone {
    pub session: SessionId,
    pub chunks: u64,
    pub reason: EndReason,
    pub frames_dropped: u64,
}

/// The recorder service for one endpoint.
pub struct Recorder<F> {
    spool: SpoolWriter,
    config: RecorderConfig,
    /// Opens the capture source when a session starts (and only then).
    open_source: F,
    /// Makes the event sources of each session (none: video and JIT events only).
    event_sources: Option<SourceFactory>,
}

impl<F> std::fmt::Debug for Recorder<F> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Recorder")
            .field("config", &self.config)
            .finish_non_exhaustive()
    }
}

/// How often the encoding side looks for a JIT stop while no frame arrives.
const STOP_CHECK: Duration = Duration::from_millis(50);

/// How long a chunk cut waits for event sources to catch up to it. Sources report every 50 ms
/// (the `/proc` poller every poll), so this is only reached when one is stuck; its late events
/// then go into the next chunk.
const CATCH_UP_LIMIT: Duration = Duration::from_millis(250);

impl<F, S> Recorder<F>
where
    F: FnMut() -> Result<S, CaptureError>,
    S: CaptureSource,
{
    pub fn new(spool: SpoolWriter, config: RecorderConfig, open_source: F) -> Self {
        Self {
            spool,
            config,
            open_source,
            event_sources: None,
        }
    }

    /// Records events from the sources `factory` makes at each session start.
    pub fn with_event_sources(mut self, factory: SourceFactory) -> Self {
        self.event_sources = Some(factory);
        self
    }

    /// Records a session per JIT start until `shutdown` is set or the JIT channel closes;
    /// reports each session's start and its close (after the close record is committed).
    pub fn run(
        mut self,
        jit: Receiver<JitEvent>,
        shutdown: Arc<AtomicBool>,
        mut observe: impl FnMut(RecorderEvent),
    ) -> Result<(), RecordError> {
        while !shutdown.load(Ordering::SeqCst) {
            match jit.recv_timeout(STOP_CHECK * 4) {
                Ok(JitEvent::Start {
                    user,
                    trigger,
                    authorized_by,
                    reason,
                }) => {
                    let auth = Authorization {
                        trigger,
                        authorized_by,
                        reason,
                    };
                    // Open capture before the session exists: a display that cannot be reached
                    // must neither stop the service nor leave empty sessions behind. Retried
                    // every second while JIT lasts.
                    let source = loop {
                        match (self.open_source)() {
                            Ok(src) => break Some(src),
                            Err(e) => {
                                tracing::error!(error = %e, user, "JIT is active but the screen cannot be captured; retrying");
                                match jit.recv_timeout(Duration::from_secs(1)) {
                                    Ok(JitEvent::Stop { .. })
                                    | Err(RecvTimeoutError::Disconnected) => break None,
                                    _ if shutdown.load(Ordering::SeqCst) => break None,
                                    _ => {}
                                }
                            }
                        }
                    };
                    let Some(source) = source else {
                        tracing::error!(
                            user,
                            "JIT ended before the screen could be captured; nothing was recorded"
                        );
                        continue;
                    };
                    let done = self.record(source, &user, auth, &jit, &shutdown, &mut observe)?;
                    tracing::info!(session = %done.session, chunks = done.chunks, reason = ?done.reason, "session recorded");
                    observe(RecorderEvent::Done(done));
                }
                Ok(JitEvent::Stop { .. }) | Err(RecvTimeoutError::Timeout) => {}
                Err(RecvTimeoutError::Disconnected) => break,
            }
        }
        Ok(())
    }

    fn record(
        &mut self,
        mut source: S,
        user: &str,
        authorization: Authorization,
        jit: &Receiver<JitEvent>,
        shutdown: &AtomicBool,
        observe: &mut impl FnMut(RecorderEvent),
    ) -> Result<SessionDone, RecordError> {
        let clock = SessionClock::start();
        let origin = clock.origin();
        let header = SessionHeader {
            version: FORMAT_VERSION,
            session_id: SessionId::new(),
            machine: self.config.machine.clone(),
            user: UserRef {
                name: user.to_owned(),
                id: user.to_owned(),
            },
            authorization: authorization.clone(),
            labels: self.config.labels.clone(),
            started_at: clock.started_at(),
            agent: Agent {
                name: "jitrec-recorder".into(),
                version: env!("CARGO_PKG_VERSION").into(),
            },
            codec: CodecParams {
                codec: Codec::H264,
                crf: self.config.encoder.crf,
                keyframe_interval_ms: self.config.encoder.keyframe_interval.as_millis() as u32,
                chunk_target_ms: self.config.chunk_len.as_millis() as u32,
                timescale: self.config.encoder.timescale,
                b_frames: 0,
            },
        };
        let session = header.session_id;
        let writer = self.spool.create_session(&header)?;
        tracing::info!(%session, user, "JIT started; recording");
        // Sources subscribe as they are made, so once `Started` is reported (and `jit start`
        // returns) every process and window change is seen.
        let sources = self.event_sources.as_mut().map(|f| f()).unwrap_or_default();
        let mut intake = Intake::start(clock, sources, self.config.events);
        observe(RecorderEvent::Started(session));
        let mut chunker =
            Chunker::new(writer, self.config.chunk_len, self.config.encoder.timescale);
        let event = |t: MediaTime, e: EventKind| clock.event(t, e);
        chunker.push_event(event(
            MediaTime::ZERO,
            EventKind::JitStart {
                user: user.to_owned(),
                machine: self.config.machine.hostname.clone(),
                authorized_by: authorization.authorized_by.clone(),
                reason: authorization.reason.clone(),
            },
        ));
        chunker.push_event(event(MediaTime::ZERO, EventKind::RecorderStarted));

        // Capture thread. Full policy of the queue: drop the newest frame, count it.
        let (tx, rx) = mpsc::sync_channel::<(MediaTime, Grab)>(self.config.queue.max(1));
        let stop_capture = Arc::new(AtomicBool::new(false));
        let dropped = Arc::new(AtomicU64::new(0));
        let period = Duration::from_micros(1_000_000 / u64::from(self.config.fps.max(1)));
        let capture = {
            let stop = Arc::clone(&stop_capture);
            let dropped = Arc::clone(&dropped);
            thread::Builder::new()
                .name("jitrec-capture".into())
                .spawn(move || {
                    let mut next = origin;
                    while !stop.load(Ordering::SeqCst) {
                        let t = MediaTime::from_duration(origin.elapsed());
                        match source.grab() {
                            Ok(grab) => match tx.try_send((t, grab)) {
                                Ok(()) => {}
                                // An unchanged tick carries no picture: nothing is lost.
                                Err(TrySendError::Full((_, Grab::Unchanged))) => {}
                                Err(TrySendError::Full(_)) => {
                                    dropped.fetch_add(1, Ordering::Relaxed);
                                }
                                Err(TrySendError::Disconnected(_)) => break,
                            },
                            Err(e) => {
                                tracing::error!(error = %e, "screen capture failed; retrying")
                            }
                        }
                        next += period;
                        // Pacing to the capture rate; a late grab starts the next one at once.
                        if let Some(wait) = next.checked_duration_since(Instant::now()) {
                            thread::sleep(wait);
                        } else {
                            next = Instant::now();
                        }
                    }
                })
                .map_err(|e| RecordError::Capture(e.to_string()))?
        };

        let mut encoder: Option<Encoder> = None;
        let mut last: Option<Frame> = None;
        let (reason, end) = loop {
            match jit.try_recv() {
                Ok(JitEvent::Stop { end, .. }) => break (end, origin.elapsed()),
                Ok(JitEvent::Start { .. }) | Err(TryRecvError::Empty) => {}
                Err(TryRecvError::Disconnected) => {
                    break (EndReason::RecorderShutdown, origin.elapsed());
                }
            }
            if shutdown.load(Ordering::SeqCst) {
                break (EndReason::RecorderShutdown, origin.elapsed());
            }
            intake.drain(&mut |e| chunker.push_event(e));
            let (t, grab) = match rx.recv_timeout(STOP_CHECK) {
                Ok(x) => x,
                Err(RecvTimeoutError::Timeout) => continue,
                Err(RecvTimeoutError::Disconnected) => {
                    break (EndReason::RecorderShutdown, origin.elapsed());
                }
            };
            let (frame, changed) = match grab {
                Grab::Frame(f) => (Some(f), None),
                Grab::Partial(f, rects) => (Some(f), Some(rects)),
                Grab::Unchanged => (None, None),
            };
            if let Some(frame) = &frame {
                let resized = encoder
                    .as_ref()
                    .is_some_and(|e| e.width() != frame.width || e.height() != frame.height);
                if encoder.is_none() || resized {
                    // A new size starts a new encoder, whose first keyframe starts a new init
                    // segment.
                    encoder = Some(Encoder::new(
                        frame.width,
                        frame.height,
                        self.config.encoder.clone(),
                    )?);
                    last = None;
                }
            }
            let Some(enc) = encoder.as_mut() else {
                continue;
            };
            let out = match (frame, changed) {
                // Damage says what changed: convert only that, and skip the full compare.
                (Some(frame), Some(rects)) if last.is_some() => {
                    let out = enc.encode_changed(&frame, &rects, t)?;
                    last = Some(frame);
                    out
                }
                (Some(frame), _) if last.as_ref() != Some(&frame) => {
                    let out = enc.encode(&frame, t)?;
                    last = Some(frame);
                    out
                }
                // Idle: one repeated frame at a chunk boundary, so no chunk is empty.
                _ if chunker.boundary_due(t) => enc.repeat(t)?,
                _ => Vec::new(),
            };
            for f in out {
                if chunker.boundary_due(f.pts) {
                    // Events up to the cut belong to the chunk being cut.
                    intake.catch_up(f.pts, CATCH_UP_LIMIT, &mut |e| chunker.push_event(e));
                }
                chunker.push(f, enc.width(), enc.height())?;
            }
        };
        stop_capture.store(true, Ordering::SeqCst);
        drop(rx);
        if capture.join().is_err() {
            tracing::error!("the capture thread panicked");
        }
        let end = MediaTime::from_duration(end);
        // Everything up to JIT stop is recorded; nothing after it.
        intake.catch_up(end, CATCH_UP_LIMIT, &mut |e| chunker.push_event(e));
        let mut after_end = 0u64;
        intake.stop(&mut |e| {
            if e.media_us <= end {
                chunker.push_event(e);
            } else {
                after_end += 1;
            }
        });
        if after_end > 0 {
            tracing::debug!(count = after_end, "events after JIT stop were not recorded");
        }
        let frames_dropped = dropped.load(Ordering::Relaxed);
        if frames_dropped > 0 {
            chunker.push_event(event(
                end,
                EventKind::FramesDropped {
                    count: frames_dropped,
                },
            ));
        }
        chunker.push_event(event(
            end,
            EventKind::JitStop {
                user: user.to_owned(),
                machine: self.config.machine.hostname.clone(),
                reason: None,
            },
        ));
        chunker.push_event(event(end, EventKind::RecorderStopped));
        let chunks = chunker.finish(end, reason)?;
        Ok(SessionDone {
            session,
            chunks,
            reason,
            frames_dropped,
        })
    }
}
