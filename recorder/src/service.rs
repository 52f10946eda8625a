//! The recorder service: JIT events in, sessions in the spool out.
//!
//! [`Recorder::run`] waits for a JIT start, then records one session until JIT stops, from
//! three parts: the capture stage (`crate::capture::Capture`, a plain thread that grabs the
//! screen at a fixed rate and opens it itself), the session recorder
//! (`crate::session::SessionRecorder`, on this thread: libx264 blocks) that encodes and commits
//! chunks, and the event sources. When JIT stops, the last chunk is cut at the stop time and
//! the session closed before the call returns, so a log-off or reboot right after loses nothing.
//! Nothing is captured outside JIT: the capture thread exists only between the start and stop
//! events.
//!
//! A session starts when JIT starts whether or not the screen can be captured: an elevation must
//! leave evidence even when the display cannot be read (the session recorder records the
//! outage). Nothing here waits without a bound ([`STOP_BOUND`]): a capture that delivers no
//! tick for [`STALL_AFTER`] (a grab or open stuck in the display) is the same outage as a
//! failing one, with ticks of this side's own so chunks keep being cut, and the capture thread
//! is joined with a deadline and detached if stuck (`crate::join` says why that is safe).
//!
//! This thread never polls. It sleeps on one [`Doorbell`] that the capture stage rings after each
//! tick, the event sources after each event, a forwarding thread after each JIT event, and the
//! signal handler after setting the shutdown flag; awake, it empties every channel, then sleeps
//! again until the next ring or its next own deadline (a stuck capture, the journal's sync).

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::mpsc::{self, Receiver, TryRecvError};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use jitrec_format::{
    Agent, Authorization, Codec, CodecParams, EndReason, FORMAT_V1, FORMAT_VERSION, Labels,
    Machine, MediaTime, SessionHeader, SessionId, StopBy, StopCause, UserRef,
};
use jitrec_spool::SpoolWriter;

use crate::capture::{Capture, CaptureError, CaptureSource, REOPEN_AFTER, Tick};
use crate::doorbell::Doorbell;
use crate::encode::EncoderConfig;
use crate::events::{EventLimits, SessionClock, SourceFactory};
use crate::session::{RecordError, SessionOptions, SessionRecorder};
use crate::trigger::JitEvent;

/// How long the capture may deliver no tick at all before the encoding side treats it as an
/// outage (placeholder, `capture_error`, `gap`). Aligned with [`REOPEN_AFTER`]: a source failing
/// for that long is reopened; one stuck for that long cannot even fail.
pub const STALL_AFTER: Duration = REOPEN_AFTER;

/// How long a stop waits for the capture thread to end before detaching it (`crate::join`).
/// A healthy one ends within one capture period.
pub const CAPTURE_STOP_LIMIT: Duration = Duration::from_secs(1);

/// What a JIT stop takes at most, whatever the X server does (given a disk that answers):
/// noticing it (at once: the JIT event rings the doorbell), the capture thread's join
/// ([`CAPTURE_STOP_LIMIT`]), the event sources' catch-up and join
/// ([`crate::events::SOURCE_STOP_LIMIT`]), and the last chunk's encode and commit. Stated in
/// `docs/recorder.md`; tested with a grab that never returns and with a suspended Xvfb.
pub const STOP_BOUND: Duration = Duration::from_secs(5);

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
    /// What this thread sleeps on: rung by the JIT forwarder, the capture stage and whoever
    /// sets the shutdown flag (`crate::doorbell`).
    bell: Arc<Doorbell>,
}

impl<F> std::fmt::Debug for Recorder<F> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Recorder")
            .field("config", &self.config)
            .finish_non_exhaustive()
    }
}

/// How often the service looks at its shutdown flag when nothing rings its doorbell: a flag
/// set without a ring (see [`Recorder::with_doorbell`]) is seen this late at most. JIT events and
/// capture ticks ring, so this is the only periodic wake-up between sessions.
const SHUTDOWN_CHECK: Duration = Duration::from_secs(1);

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
            bell: Arc::new(Doorbell::new()),
        }
    }

    /// Sleeps on `bell`, which whoever sets the shutdown flag given to [`Recorder::run`]
    /// rings after setting it: the service then stops at once rather than at its next look at
    /// the flag ([`SHUTDOWN_CHECK`]).
    pub fn with_doorbell(mut self, bell: Arc<Doorbell>) -> Self {
        self.bell = bell;
        self
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
        let jit = forward(jit, Arc::clone(&self.bell))?;
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
            match jit.try_recv() {
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
                // Nothing is being recorded: a stop has nothing to end, and says so.
                Ok(JitEvent::Stop { reply, .. }) => {
                    if let Some(reply) = reply {
                        reply.send(None);
                    }
                }
                Err(TryRecvError::Empty) => {
                    self.bell.wait(SHUTDOWN_CHECK);
                }
                Err(TryRecvError::Disconnected) => break,
            }
        }
        Ok(())
    }

    /// The header of a new session of `user`.
    fn header(
        &self,
        user: &str,
        authorization: &Authorization,
        clock: &SessionClock,
        continues: Option<SessionId>,
    ) -> SessionHeader {
        let signed = self.spool.endpoint_key().is_some();
        SessionHeader {
            // Signed version 2 whenever the spool has the endpoint key (the recorder always
            // gives it one; only tests write unsigned sessions).
            version: if signed { FORMAT_VERSION } else { FORMAT_V1 },
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
            codec: codec_params(&self.config.encoder, self.config.chunk_len),
            endpoint_key: self.spool.endpoint_key(),
            // Encryption is a version 2 feature: its recipients are named in the signed header.
            encryption: self
                .sealer
                .as_ref()
                .filter(|_| signed)
                .map(|s| s.header_field()),
            // A version 2 field: who continues what is signed.
            continues: continues.filter(|_| signed),
        }
    }

    /// The event sources of a new session of `user`, the recording notice among them.
    fn sources(
        &mut self,
        user: &str,
        authorization: &Authorization,
    ) -> Vec<Box<dyn crate::events::EventSource>> {
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
        sources
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
        let header = self.header(user, &authorization, &clock, continues);
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
        let sources = self.sources(user, &authorization);
        let options = SessionOptions {
            chunk_len: self.config.chunk_len,
            encoder: self.config.encoder.clone(),
            events: self.config.events,
            sealer: self.sealer.clone(),
            fail_closed: self.fail_closed.clone(),
            bell: Some(Arc::clone(&self.bell)),
        };
        // Spent pixel buffers back to capture. Full policy: the buffer is freed (capture then
        // allocates one; two are as many as the tick queue can hold pictures in flight).
        let (spent_tx, spent_rx) = mpsc::sync_channel::<Vec<u8>>(2);
        let mut rec =
            SessionRecorder::start(writer, &header, clock, options, sources).with_spent(spent_tx);
        observe(RecorderEvent::Started(session));

        // The capture stage. Full policy of its queue: drop the newest picture; it is counted
        // (`frames_dropped`) and what changed in it travels with the next one that gets
        // through, so the video still converges to the real screen.
        let (tx, rx) = mpsc::sync_channel::<(MediaTime, Tick)>(self.config.queue.max(1));
        let stop_capture = Arc::new(AtomicBool::new(false));
        let dropped = Arc::new(AtomicU64::new(0));
        let period = Duration::from_micros(1_000_000 / u64::from(self.config.fps.max(1)));
        let stage = Capture {
            open: Arc::clone(&self.open_source),
            origin,
            period,
            ticks: tx,
            bell: Arc::clone(&self.bell),
            stop: Arc::clone(&stop_capture),
            dropped: Arc::clone(&dropped),
            spent: spent_rx,
        };
        let capture = crate::join::spawn("jitrec-capture", move || stage.run())
            .map_err(|e| RecordError::Spawn("capture", e))?;

        // When a tick last arrived: a capture that delivers nothing for STALL_AFTER is stuck,
        // and this side keeps the timeline itself, with a tick of its own every period
        // (`own_tick`: when the next one is due).
        let mut tick_at = Instant::now();
        let mut own_tick: Option<Instant> = None;
        // `reply` is answered only once the close record is committed (below).
        let (cause, end, reply) = loop {
            match jit.try_recv() {
                Ok(JitEvent::Stop { cause, reply }) => break (cause, origin.elapsed(), reply),
                Ok(JitEvent::Start { .. }) | Err(TryRecvError::Empty) => {}
                Err(TryRecvError::Disconnected) => {
                    break (
                        service_stop("the recorder's JIT watcher ended"),
                        origin.elapsed(),
                        None,
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
                break (cause, origin.elapsed(), None);
            }
            rec.housekeep();
            let (t, tick) = match rx.try_recv() {
                Ok(got) => {
                    tick_at = Instant::now();
                    own_tick = None;
                    got
                }
                Err(TryRecvError::Empty) => {
                    let now = Instant::now();
                    let due = own_tick.unwrap_or(tick_at + STALL_AFTER);
                    if now < due {
                        // Nothing to do until a tick, an event, a JIT event or a shutdown
                        // rings, or the capture counts as stuck, or the journal is due to be
                        // synced.
                        let wake = rec.housekeep_by().map_or(due, |h| h.min(due));
                        self.bell
                            .wait(wake.saturating_duration_since(now).min(SHUTDOWN_CHECK));
                        continue;
                    }
                    // Capture is stuck (a grab or an open that does not return): the same
                    // outage as a failing capture, from the tick that did not come, and ticks
                    // of our own so chunks keep being cut on the placeholder.
                    own_tick = Some(now + period);
                    let message = format!(
                        "screen capture delivered nothing for {} s (a call to the display does not return)",
                        STALL_AFTER.as_secs_f64()
                    );
                    (rec.missing_tick_at(period), Tick::Failed(message))
                }
                Err(TryRecvError::Disconnected) => {
                    break (
                        service_stop("the capture thread ended unexpectedly"),
                        origin.elapsed(),
                        None,
                    );
                }
            };
            rec.tick(t, tick)?;
        };
        stop_capture.store(true, Ordering::SeqCst);
        drop(rx);
        // Bounded: a capture stuck in the display must not hold the stop (`crate::join`).
        capture.join_within(CAPTURE_STOP_LIMIT);
        let done = rec.finish(
            MediaTime::from_duration(end),
            cause,
            dropped.load(Ordering::Relaxed),
        )?;
        // The elevation ended (JIT stop, group change): nothing to resume. A service stop is
        // not the end of the elevation; a restarted recorder takes it up again.
        if done.reason != EndReason::RecorderShutdown {
            crate::resume::clear(&self.spool);
        }
        // After the resume state is gone: whoever hears "closed" may restart the recorder,
        // which then must not take the elevation up again.
        if let Some(reply) = reply {
            reply.send(Some(done.clone()));
        }
        Ok(done)
    }
}

/// The codec parameters a session's header states.
pub fn codec_params(encoder: &EncoderConfig, chunk_len: Duration) -> CodecParams {
    CodecParams {
        codec: Codec::H264,
        crf: encoder.crf,
        keyframe_interval_ms: encoder.keyframe_interval.as_millis() as u32,
        chunk_target_ms: chunk_len.as_millis() as u32,
        timescale: encoder.timescale,
        b_frames: 0,
    }
}

/// Moves JIT events from the triggers' channel to one this service reads, ringing `bell` after
/// each, so the service can sleep on the bell instead of polling the channel. Unbounded, like
/// the triggers' own: JIT events are few, and none may be dropped or hold up a trigger.
///
/// The forwarding thread is detached: it ends when the triggers' channel closes (the bell is
/// rung once more, after the forwarded channel is closed) or at the first event after the
/// service has returned.
fn forward(
    jit: Receiver<JitEvent>,
    bell: Arc<Doorbell>,
) -> Result<Receiver<JitEvent>, RecordError> {
    let (tx, rx) = mpsc::channel();
    std::thread::Builder::new()
        .name("jitrec-jit".into())
        .spawn(move || {
            for event in jit {
                if tx.send(event).is_err() {
                    return;
                }
                bell.ring();
            }
            drop(tx);
            bell.ring();
        })
        .map_err(|e| RecordError::Spawn("JIT forwarding", e))?;
    Ok(rx)
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
