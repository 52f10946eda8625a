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
//!
//! A session starts when JIT starts whether or not the screen can be captured: an elevation must
//! leave evidence even when the display cannot be read. The capture thread opens the source
//! itself (retrying every [`REOPEN_INTERVAL`], and reopening a source that has failed for
//! [`REOPEN_AFTER`]); while it has no picture the video shows a plain [`PLACEHOLDER`] picture, a
//! `capture_error` event marks where that began and a `gap` event covers the whole stretch, so a
//! reviewer never mistakes a frozen or missing picture for an idle screen. Events keep being
//! recorded throughout.
//!
//! Nothing here waits without a bound ([`STOP_BOUND`]): a capture that delivers no tick for
//! [`STALL_AFTER`] (a grab or open stuck in the display) is the same outage, with ticks of the
//! encoding side's own so chunks keep being cut, and the capture thread is joined with a
//! deadline and detached if stuck (`crate::join` says why that is safe). A full spool is an
//! outage too, handled by the chunker: video of the stretch dropped, events kept, a `gap` once
//! there is room.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::mpsc::{self, Receiver, RecvTimeoutError, TryRecvError, TrySendError};
use std::sync::{Arc, Mutex, PoisonError, TryLockError};
use std::thread;
use std::time::{Duration, Instant};

use jitrec_format::{
    Agent, Authorization, Codec, CodecParams, EndReason, EventKind, FORMAT_V1, FORMAT_VERSION,
    Labels, Machine, MediaTime, SessionHeader, SessionId, StopBy, StopCause, UserRef,
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

/// Something that produces screen frames (X11, Windows Graphics Capture, a script). It is opened
/// and used on the capture thread only.
pub trait CaptureSource: 'static {
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

/// How often a screen that cannot be opened is tried again.
pub const REOPEN_INTERVAL: Duration = Duration::from_secs(1);

/// How long grabs may fail in a row before the source is dropped and opened afresh (a lost X
/// connection or a Graphics Capture session ended by a display change do not come back by
/// themselves).
pub const REOPEN_AFTER: Duration = Duration::from_secs(2);

/// How long the capture may deliver no tick at all before the encoding side treats it as an
/// outage (placeholder, `capture_error`, `gap`). Aligned with [`REOPEN_AFTER`]: a source failing
/// for that long is reopened; one stuck for that long cannot even fail.
pub const STALL_AFTER: Duration = REOPEN_AFTER;

/// How long a stop waits for the capture thread to end before detaching it (`crate::join`).
/// A healthy one ends within one capture period.
pub const CAPTURE_STOP_LIMIT: Duration = Duration::from_secs(1);

/// What a JIT stop takes at most, whatever the X server does (given a disk that answers):
/// noticing it (`STOP_CHECK`), the capture thread's join ([`CAPTURE_STOP_LIMIT`]), the event
/// sources' catch-up (`CATCH_UP_LIMIT`) and join ([`crate::events::SOURCE_STOP_LIMIT`]), and
/// the last chunk's encode and commit. Stated in `docs/recorder.md`; tested with a grab that
/// never returns and with a suspended Xvfb.
pub const STOP_BOUND: Duration = Duration::from_secs(5);

/// The picture recorded while the screen cannot be captured: plain navy (RGB 0, 0, 128), which
/// no idle desktop is mistaken for. Same size as the last picture, or [`PLACEHOLDER_SIZE`] when
/// there was none.
pub const PLACEHOLDER: [u8; 4] = [128, 0, 0, 255];

/// Width and height of the placeholder when no picture was captured yet in the session.
pub const PLACEHOLDER_SIZE: (u32, u32) = (640, 360);

/// What the capture thread hands the encoding side each tick.
#[derive(Debug)]
enum Tick {
    Grab(Grab),
    /// No picture this tick; why.
    Failed(String),
}

/// A damage-tracked source reports only what changed since *its* last grab, so a grab the full
/// queue had no room for must travel with the next one that gets through; otherwise its changes
/// would stay out of the video until that part of the screen changed again.
#[derive(Debug, Default)]
struct HeldBack {
    /// The newest picture not handed over, and what changed in it since the last one handed
    /// over (`None`: anything may have).
    grab: Option<(Frame, Option<Vec<Rect>>)>,
}

/// Beyond this many held-back rectangles, the whole picture is converted instead.
const MAX_HELD_RECTS: usize = 64;

impl HeldBack {
    /// What to hand over for this tick's `grab`, including anything held back.
    fn merge(&mut self, grab: Grab) -> Grab {
        let Some((held, held_rects)) = self.grab.take() else {
            return grab;
        };
        match (grab, held_rects) {
            (Grab::Frame(f), _) => Grab::Frame(f),
            (Grab::Partial(f, mut rects), Some(held_rects)) => {
                rects.extend(held_rects);
                if rects.len() > MAX_HELD_RECTS {
                    Grab::Frame(f)
                } else {
                    Grab::Partial(f, rects)
                }
            }
            (Grab::Partial(f, _), None) => Grab::Frame(f),
            (Grab::Unchanged, Some(rects)) => Grab::Partial(held, rects),
            (Grab::Unchanged, None) => Grab::Frame(held),
        }
    }

    /// Keeps a (merged) grab the queue had no room for.
    fn hold(&mut self, grab: Grab) {
        self.grab = match grab {
            Grab::Frame(f) => Some((f, None)),
            Grab::Partial(f, rects) => Some((f, Some(rects))),
            Grab::Unchanged => None,
        };
    }
}

/// A stretch without a picture, while it lasts.
struct Outage {
    from: MediaTime,
    message: String,
    /// The last real picture before it: a damage-tracked source that recovers with "unchanged"
    /// means this one.
    before: Option<Frame>,
}

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
    /// Opens the capture source, on the capture thread, while a session records (and only
    /// then). Shared with that thread; no one else calls it.
    open_source: Arc<Mutex<F>>,
    /// Makes the event sources of each session (none: video and JIT events only).
    event_sources: Option<SourceFactory>,
    /// Encrypts the payloads of signed sessions (`None`: stored in the clear, the default).
    sealer: Option<Arc<crate::seal::Sealer>>,
    /// The elevation a previous run was recording when it died (`crate::resume`).
    resume: Option<crate::resume::Resume>,
    /// Who asked for the shutdown, when the signal said (its sender), for the stop cause.
    shutdown_cause: Arc<Mutex<Option<StopCause>>>,
    /// The recording notice shown at each JIT start (`None`: none), an event source of the
    /// session beside the others.
    notice: Option<crate::notice::NoticeConfig>,
    /// End the elevation when recording cannot run (`None`: never, the default).
    fail_closed: Option<crate::failclosed::FailClosed>,
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
    F: FnMut() -> Result<S, CaptureError> + Send + 'static,
    S: CaptureSource,
{
    pub fn new(spool: SpoolWriter, config: RecorderConfig, open_source: F) -> Self {
        Self {
            spool,
            config,
            open_source: Arc::new(Mutex::new(open_source)),
            event_sources: None,
            sealer: None,
            resume: None,
            shutdown_cause: Arc::default(),
            notice: None,
            fail_closed: None,
        }
    }

    /// Continues the elevation a dead run was recording: a control-socket JIT is started again
    /// at once, and the first session of the same user (by either trigger) names the
    /// interrupted one as the session it continues.
    pub fn with_resume(mut self, resume: Option<crate::resume::Resume>) -> Self {
        self.resume = resume;
        self
    }

    /// Where the shutdown's requester is written (by the signal handler) before `shutdown` is
    /// set, so the close record names who stopped the recorder.
    pub fn with_shutdown_cause(mut self, cause: Arc<Mutex<Option<StopCause>>>) -> Self {
        self.shutdown_cause = cause;
        self
    }

    /// Ends the elevation when recording cannot run (docs/recorder.md, "Failing closed").
    pub fn with_fail_closed(mut self, f: Option<crate::failclosed::FailClosed>) -> Self {
        self.fail_closed = f;
        self
    }

    /// Shows `notice` to the user at each JIT start (docs/recorder.md, "Recording notice").
    pub fn with_notice(mut self, notice: Option<crate::notice::NoticeConfig>) -> Self {
        self.notice = notice;
        self
    }

    /// Encrypts the payloads of every (signed, format v2) session to `sealer`'s recipients.
    pub fn with_sealer(mut self, sealer: Option<Arc<crate::seal::Sealer>>) -> Self {
        self.sealer = sealer;
        self
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
        // A JIT controller's elevation outlives the recorder: start it again without waiting
        // for a `jit start` that will not come.
        if let Some(r) = &self.resume
            && r.saved.trigger == jitrec_format::Trigger::ControlCommand
        {
            tracing::warn!(user = %r.saved.user, interrupted = %r.saved.session, "resuming the JIT a JIT controller started before the recorder died");
            let auth = Authorization {
                trigger: r.saved.trigger,
                authorized_by: r.saved.authorized_by.clone(),
                reason: r.saved.reason.clone(),
            };
            let user = r.saved.user.clone();
            match self.record(&user, auth, &jit, &shutdown, &mut observe) {
                Ok(done) => observe(RecorderEvent::Done(done)),
                // Not the end of the service: the triggers may still start a session.
                Err(e) => {
                    tracing::error!(error = %e, "could not resume the saved JIT; waiting for the next start")
                }
            }
        }
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
                    let done = self.record(&user, auth, &jit, &shutdown, &mut observe)?;
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
        user: &str,
        authorization: Authorization,
        jit: &Receiver<JitEvent>,
        shutdown: &AtomicBool,
        observe: &mut impl FnMut(RecorderEvent),
    ) -> Result<SessionDone, RecordError> {
        let clock = SessionClock::start();
        let origin = clock.origin();
        let continues = self
            .resume
            .take()
            .filter(|r| r.continues(user))
            .map(|r| r.saved.session);
        let header = SessionHeader {
            // Signed version 2 whenever the spool has the endpoint key (the recorder always
            // gives it one; only tests write unsigned sessions).
            version: if self.spool.endpoint_key().is_some() {
                FORMAT_VERSION
            } else {
                FORMAT_V1
            },
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
            endpoint_key: self.spool.endpoint_key(),
            // Encryption is a version 2 feature: its recipients are named in the signed header.
            encryption: self
                .sealer
                .as_ref()
                .filter(|_| self.spool.endpoint_key().is_some())
                .map(|s| s.header_field()),
            // A version 2 field: who continues what is signed.
            continues: continues.filter(|_| self.spool.endpoint_key().is_some()),
        };
        let session = header.session_id;
        let writer = self.spool.create_session(&header)?;
        crate::resume::save(
            &self.spool,
            &crate::resume::SavedJit {
                user: user.to_owned(),
                trigger: authorization.trigger,
                authorized_by: authorization.authorized_by.clone(),
                reason: authorization.reason.clone(),
                session,
                boot_id: crate::resume::boot_id(),
            },
        );
        if let Some(c) = continues {
            tracing::warn!(%session, interrupted = %c, "recording again after the recorder restarted; this session continues the interrupted one");
        }
        tracing::info!(%session, user, "JIT started; recording");
        // Sources subscribe as they are made, so once `Started` is reported (and `jit start`
        // returns) every process and window change is seen.
        let mut sources = self
            .event_sources
            .as_mut()
            .map(|f| f(user))
            .unwrap_or_default();
        if let Some(notice) = &self.notice {
            // On its own thread like the other sources: it never holds up start or capture.
            sources.push(notice.source(&crate::notice::Elevation {
                user,
                machine: &self.config.machine.hostname,
                authorized_by: authorization.authorized_by.as_deref(),
                reason: authorization.reason.as_deref(),
            }));
        }
        let mut intake = Intake::start(clock, sources, self.config.events, writer.journal());
        observe(RecorderEvent::Started(session));
        let sealer = header.encryption.as_ref().and_then(|_| self.sealer.clone());
        let mut chunker =
            Chunker::new(writer, self.config.chunk_len, self.config.encoder.timescale)
                .with_sealer(sealer);
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

        // Capture thread. Full policy of the queue: drop the newest tick; a dropped picture is
        // counted (`frames_dropped`) and what changed in it travels with the next one that gets
        // through (`HeldBack`), so the video still converges to the real screen.
        let (tx, rx) = mpsc::sync_channel::<(MediaTime, Tick)>(self.config.queue.max(1));
        let stop_capture = Arc::new(AtomicBool::new(false));
        let dropped = Arc::new(AtomicU64::new(0));
        let period = Duration::from_micros(1_000_000 / u64::from(self.config.fps.max(1)));
        let capture = {
            let stop = Arc::clone(&stop_capture);
            let dropped = Arc::clone(&dropped);
            let open = Arc::clone(&self.open_source);
            crate::join::spawn("jitrec-capture", move || {
                    let mut source: Option<S> = None;
                    // Why there is no source (an open that failed), for the `capture_error` event.
                    let mut why = String::from("the screen has not been opened yet");
                    let mut last_open: Option<Instant> = None;
                    let mut failing_since: Option<Instant> = None;
                    let mut reopens = 0u32;
                    let mut held = HeldBack::default();
                    let mut next = origin;
                    while !stop.load(Ordering::SeqCst) {
                        let t = MediaTime::from_duration(origin.elapsed());
                        if source.is_none()
                            && last_open.is_none_or(|at| at.elapsed() >= REOPEN_INTERVAL)
                        {
                            last_open = Some(Instant::now());
                            // Never wait for the opener: a capture thread of an earlier session
                            // may be stuck inside it (an open to a frozen X server), and this
                            // session must not hang behind it. It is tried again in a second.
                            let opened = match open.try_lock() {
                                Ok(mut f) => f(),
                                Err(TryLockError::Poisoned(p)) => (p.into_inner())(),
                                Err(TryLockError::WouldBlock) => Err(CaptureError(
                                    "the screen cannot be opened: an earlier session's capture is still stuck opening it".into(),
                                )),
                            };
                            match opened {
                                Ok(s) => source = Some(s),
                                Err(e) => why = e.to_string(),
                            }
                        }
                        let grabbed = source.as_mut().map(CaptureSource::grab);
                        // A call that was stuck may return long after its session ended: this
                        // thread then belongs to a dead session and only ends.
                        if stop.load(Ordering::SeqCst) {
                            break;
                        }
                        let tick = match grabbed {
                            Some(Ok(grab)) => {
                                failing_since = None;
                                reopens = 0;
                                Tick::Grab(held.merge(grab))
                            }
                            Some(Err(e)) => {
                                let since = *failing_since.get_or_insert_with(Instant::now);
                                if since.elapsed() >= REOPEN_AFTER {
                                    // Once per outage at WARN (the encoding side has logged
                                    // the outage itself); each further attempt at DEBUG.
                                    if reopens == 0 {
                                        tracing::warn!(error = %e, "screen capture keeps failing; opening the screen again");
                                    } else {
                                        tracing::debug!(error = %e, reopens, "opening the screen again");
                                    }
                                    reopens += 1;
                                    source = None;
                                }
                                Tick::Failed(e.to_string())
                            }
                            None => Tick::Failed(why.clone()),
                        };
                        match tx.try_send((t, tick)) {
                            Ok(()) => {}
                            // A failed tick carries no picture; the next one says the same.
                            Err(TrySendError::Full((_, Tick::Failed(_)))) => {}
                            Err(TrySendError::Full((_, Tick::Grab(grab)))) => {
                                // An unchanged tick carries no picture: nothing is lost.
                                if grab != Grab::Unchanged {
                                    dropped.fetch_add(1, Ordering::Relaxed);
                                }
                                held.hold(grab);
                            }
                            Err(TrySendError::Disconnected(_)) => break,
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
        let mut outage: Option<Outage> = None;
        // When a tick last arrived, and the media time of the last one handled: a capture that
        // delivers nothing for STALL_AFTER is stuck, and this side keeps the timeline itself.
        let mut tick_at = Instant::now();
        let mut last_t: Option<MediaTime> = None;
        // What fail-closed did, once it did (at most once per session).
        let mut failed_closed: Option<String> = None;
        let (cause, end) = loop {
            match jit.try_recv() {
                Ok(JitEvent::Stop { cause }) => break (cause, origin.elapsed()),
                Ok(JitEvent::Start { .. }) | Err(TryRecvError::Empty) => {}
                Err(TryRecvError::Disconnected) => {
                    break (
                        service_stop("the recorder's JIT watcher ended"),
                        origin.elapsed(),
                    );
                }
            }
            if shutdown.load(Ordering::SeqCst) {
                let cause = self
                    .shutdown_cause
                    .lock()
                    .unwrap_or_else(PoisonError::into_inner)
                    .take()
                    .unwrap_or_else(|| {
                        service_stop("the recorder service was stopped (shutdown or service stop)")
                    });
                break (cause, origin.elapsed());
            }
            intake.drain(&mut |e| chunker.push_seen(e));
            chunker.sync_journal();
            if failed_closed.is_none()
                && let Some(fc) = &self.fail_closed
            {
                let now = MediaTime::from_duration(origin.elapsed());
                let over = |from: MediaTime, bound: Duration| {
                    u128::from(now.as_micros().saturating_sub(from.as_micros()))
                        >= bound.as_micros()
                };
                let why = match (chunker.spool_full_since(), outage.as_ref()) {
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
                    let action = fc.end_elevation(user);
                    tracing::error!(%session, reason, action, "recording cannot run: the elevation was ended (fail closed)");
                    chunker.push_event(event(
                        now,
                        EventKind::FailClosed {
                            reason: crate::events::truncate_text(&reason),
                            action: crate::events::truncate_text(&action),
                        },
                    ));
                    failed_closed = Some(format!("{reason}: {action}"));
                }
            }
            let (t, tick) = match rx.recv_timeout(STOP_CHECK) {
                Ok((t, tick)) => {
                    tick_at = Instant::now();
                    if last_t.is_some_and(|l| t <= l) {
                        // A grab that was stuck has returned: it is stamped when it began,
                        // before the placeholder this side recorded meanwhile.
                        continue;
                    }
                    (t, tick)
                }
                Err(RecvTimeoutError::Timeout) if tick_at.elapsed() >= STALL_AFTER => {
                    // Capture is stuck (a grab or an open that does not return): the same
                    // outage as a failing capture, from the tick that did not come, and ticks
                    // of our own so chunks keep being cut on the placeholder.
                    let t = match (&outage, last_t) {
                        (None, Some(l)) => {
                            MediaTime::from_micros(l.as_micros() + period.as_micros() as u64)
                        }
                        (None, None) => MediaTime::ZERO,
                        (Some(_), _) => MediaTime::from_duration(origin.elapsed()),
                    };
                    let message = format!(
                        "screen capture delivered nothing for {} s (a call to the display does not return)",
                        STALL_AFTER.as_secs_f64()
                    );
                    (t, Tick::Failed(message))
                }
                Err(RecvTimeoutError::Timeout) => continue,
                Err(RecvTimeoutError::Disconnected) => {
                    break (
                        service_stop("the capture thread ended unexpectedly"),
                        origin.elapsed(),
                    );
                }
            };
            last_t = Some(t);
            let grab = match tick {
                Tick::Failed(_) if outage.is_some() => Grab::Unchanged,
                Tick::Failed(message) => {
                    tracing::error!(%session, error = %message, "screen capture failed; recording a placeholder picture until it recovers");
                    chunker.push_event(event(
                        t,
                        EventKind::CaptureError {
                            message: message.clone(),
                        },
                    ));
                    let (w, h) = encoder
                        .as_ref()
                        .map_or(PLACEHOLDER_SIZE, |e| (e.width(), e.height()));
                    outage = Some(Outage {
                        from: t,
                        message,
                        before: last.take(),
                    });
                    Grab::Frame(Frame::solid(w, h, PLACEHOLDER))
                }
                Tick::Grab(grab) => match outage.take() {
                    None => grab,
                    Some(o) => {
                        tracing::warn!(%session, seconds = (t.as_micros() - o.from.as_micros()) as f64 / 1e6, "screen capture recovered");
                        chunker.push_event(event(t, capture_gap(&o, t)));
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
            if chunker.wants_keyframe() {
                // The spool refused a chunk and its frames were dropped: what is committed
                // next must decode on its own.
                enc.force_keyframe();
            }
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
                // Idle: one repeated frame at a chunk boundary, so no chunk is empty; and the
                // keyframe a retry after a full spool needs, without waiting for a change.
                _ if chunker.boundary_due(t) || chunker.wants_keyframe() => enc.repeat(t)?,
                _ => Vec::new(),
            };
            for f in out {
                if chunker.boundary_due(f.pts) {
                    // Events up to the cut belong to the chunk being cut.
                    intake.catch_up(f.pts, CATCH_UP_LIMIT, &mut |e| chunker.push_seen(e));
                }
                chunker.push(f, enc.width(), enc.height())?;
            }
        };
        stop_capture.store(true, Ordering::SeqCst);
        drop(rx);
        // Bounded: a capture stuck in the display must not hold the stop (`crate::join`).
        capture.join_within(CAPTURE_STOP_LIMIT);
        let end = MediaTime::from_duration(end);
        if let Some(o) = outage.take() {
            tracing::warn!(%session, "JIT ended while the screen could not be captured");
            chunker.push_event(event(end, capture_gap(&o, end)));
        }
        if encoder.is_none() {
            // Not one picture arrived (JIT ended within the first tick, or the source never
            // produced an image): a placeholder keeps the session's events, and says so.
            tracing::warn!(%session, "JIT ended before the first screen image; recording a placeholder");
            let (w, h) = PLACEHOLDER_SIZE;
            let mut enc = Encoder::new(w, h, self.config.encoder.clone())?;
            for f in enc.encode(&Frame::solid(w, h, PLACEHOLDER), MediaTime::ZERO)? {
                chunker.push(f, w, h)?;
            }
            chunker.push_event(event(
                end,
                EventKind::Gap {
                    from_us: MediaTime::ZERO,
                    to_us: end,
                    reason: "JIT ended before the first screen image was captured".into(),
                },
            ));
        }
        // Everything up to JIT stop is recorded; nothing after it.
        let mut after_end = 0u64;
        let mut keep = |seen: crate::events::Seen| {
            if seen.event.media_us <= end {
                chunker.push_seen(seen);
            } else if let EventKind::EventsSummarised { .. } | EventKind::EventSource { .. } =
                seen.event.event
            {
                // A count or a loss notice stamped after the stop may still cover events
                // before it (a flood whose summary also took in events of the first moments
                // after the stop): kept at the stop rather than lost.
                chunker.push_event(event(end, seen.event.event));
            } else {
                after_end += 1;
            }
        };
        intake.catch_up(end, CATCH_UP_LIMIT, &mut keep);
        intake.stop(&mut keep);
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
        let mut cause = attribute(cause, user);
        if let Some(f) = &failed_closed {
            // The close record may be all that a full spool lets through: it says why.
            cause.detail = crate::events::truncate_text(&format!(
                "{}; the recorder had ended the elevation itself (fail closed): {f}",
                cause.detail
            ));
        }
        if cause.recorded_user == Some(true) {
            tracing::warn!(%session, user, detail = %cause.detail, "the recorded user ended their own recording");
        }
        let version = self
            .spool
            .endpoint_key()
            .map_or(FORMAT_V1, |_| FORMAT_VERSION);
        chunker.push_event(event(
            end,
            EventKind::JitStop {
                user: user.to_owned(),
                machine: self.config.machine.hostname.clone(),
                reason: Some(cause.detail.clone()),
                stopped_by: (version == FORMAT_VERSION).then(|| Box::new(cause.clone())),
            },
        ));
        chunker.push_event(event(end, EventKind::RecorderStopped));
        let reason = cause.by.end_reason();
        let chunks = chunker.finish(end, &cause)?;
        // The elevation ended (JIT stop, group change): nothing to resume. A service stop is
        // not the end of the elevation; a restarted recorder takes it up again.
        if cause.by != StopBy::ServiceStop {
            crate::resume::clear(&self.spool);
        }
        Ok(SessionDone {
            session,
            chunks,
            reason,
            frames_dropped,
        })
    }
}

/// A stop the recorder itself decided (service stop, a dead watcher or capture thread).
fn service_stop(detail: &str) -> StopCause {
    StopCause {
        by: StopBy::ServiceStop,
        peer: None,
        recorded_user: None,
        detail: detail.into(),
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

/// The `gap` event closing outage `o` at `to`.
fn capture_gap(o: &Outage, to: MediaTime) -> EventKind {
    EventKind::Gap {
        from_us: o.from,
        to_us: to,
        reason: format!("screen capture failed: {}", o.message),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn frame(v: u8) -> Frame {
        Frame::solid(4, 4, [v, v, v, 255])
    }

    fn rect(x: u32) -> Rect {
        Rect {
            x,
            y: 0,
            w: 2,
            h: 2,
        }
    }

    #[test]
    fn nothing_held_passes_every_grab_through() {
        let mut h = HeldBack::default();
        for g in [
            Grab::Unchanged,
            Grab::Frame(frame(1)),
            Grab::Partial(frame(2), vec![rect(0)]),
        ] {
            assert_eq!(h.merge(g.clone()), g);
        }
    }

    #[test]
    fn changes_of_a_dropped_grab_travel_with_the_next_one() {
        let mut h = HeldBack::default();
        // Dropped: a partial grab whose change at x=0 the encoder never saw.
        let first = h.merge(Grab::Partial(frame(1), vec![rect(0)]));
        h.hold(first);
        // The next partial grab covers its own change and the held one.
        assert_eq!(
            h.merge(Grab::Partial(frame(2), vec![rect(2)])),
            Grab::Partial(frame(2), vec![rect(2), rect(0)])
        );
        // Handed over: nothing is held any more.
        assert_eq!(h.merge(Grab::Unchanged), Grab::Unchanged);
    }

    #[test]
    fn an_unchanged_tick_after_a_dropped_grab_hands_over_the_held_picture() {
        let mut h = HeldBack::default();
        h.hold(Grab::Partial(frame(1), vec![rect(0)]));
        assert_eq!(
            h.merge(Grab::Unchanged),
            Grab::Partial(frame(1), vec![rect(0)])
        );
        h.hold(Grab::Frame(frame(3)));
        assert_eq!(h.merge(Grab::Unchanged), Grab::Frame(frame(3)));
    }

    #[test]
    fn a_dropped_whole_frame_makes_the_next_partial_grab_whole() {
        let mut h = HeldBack::default();
        h.hold(Grab::Frame(frame(1)));
        assert_eq!(
            h.merge(Grab::Partial(frame(2), vec![rect(0)])),
            Grab::Frame(frame(2))
        );
    }

    #[test]
    fn too_many_held_rectangles_become_a_whole_frame() {
        let mut h = HeldBack::default();
        h.hold(Grab::Partial(
            frame(1),
            (0..MAX_HELD_RECTS as u32).map(rect).collect(),
        ));
        assert_eq!(
            h.merge(Grab::Partial(frame(2), vec![rect(0)])),
            Grab::Frame(frame(2))
        );
    }
}
