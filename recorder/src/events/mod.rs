//! Process and window events during JIT, on the video's clock.
//!
//! Each [`EventSource`] (the kernel's process events, the X server's active window) runs on its
//! own thread for the length of one session and writes through an [`EventSink`]; the encoding
//! thread reads them through the session's [`Intake`] and hands them to the chunker.
//!
//! Three things this module guarantees:
//!
//! - **One clock.** [`SessionClock`] ties media time 0 to the monotonic and boot clocks at JIT
//!   start, so a kernel timestamp becomes the media time of the frame that shows its effect.
//! - **Events land in their chunk.** Before a chunk is cut at `t`, the intake wakes every source
//!   ([`Wake`]) and waits (bounded) until each has reported reading everything up to `t`
//!   ([`SourceMsg::Caught`]), so an event is not pushed into a later chunk by thread scheduling.
//!   Sources otherwise sleep until the system gives them something, so an idle session costs
//!   no periodic wake-ups.
//! - **Bounded, never silently.** A sink passes at most `burst` events at once and `rate` per
//!   second after that, and the queue to the intake is bounded; whatever is not passed is counted
//!   and written as one `events_summarised` event naming what was summarised (per executable), as
//!   soon as there is room again. A fork bomb costs a line per flush, not the recorder.
//! - **Journalled at once.** A sink appends every event it passes to the session's spool journal
//!   (`jitrec_spool::Journal`, one `write(2)`) before it sends it on, so a recorder killed
//!   seconds before its next chunk still leaves those events behind for the next run to fold
//!   into the session. The journal id travels with the event ([`Seen`]) so the chunker can say
//!   which chunk holds it.

#[cfg(target_os = "linux")]
pub mod linux;
pub mod redact;
pub mod windows;

use std::collections::BTreeMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc::{Receiver, RecvTimeoutError, SyncSender, TryRecvError, TrySendError};
use std::time::{Duration, Instant};

use chrono::{DateTime, Utc};
use jitrec_format::{Event, EventKind, MediaTime};

use crate::doorbell::Doorbell;

/// `s` made fit for a text field of the format: control characters escaped, at most
/// [`jitrec_format::MAX_TEXT_CHARS`] characters (the end marked with `…` when cut).
pub fn truncate_text(s: &str) -> String {
    let escaped = redact::escape_controls(s);
    if escaped.chars().count() <= jitrec_format::MAX_TEXT_CHARS {
        return escaped;
    }
    let mut out: String = escaped
        .chars()
        .take(jitrec_format::MAX_TEXT_CHARS - 1)
        .collect();
    out.push('…');
    out
}

/// The clock of one session: media time 0 is JIT start.
#[derive(Debug, Clone, Copy)]
pub struct SessionClock {
    origin: Instant,
    started_at: DateTime<Utc>,
    /// `CLOCK_MONOTONIC` at `origin`, in ns (kernel process events are stamped with it).
    monotonic_ns: u64,
    /// `CLOCK_BOOTTIME` at `origin`, in ns (`/proc/<pid>/stat` start times count from boot).
    boottime_ns: u64,
}

#[cfg(target_os = "linux")]
fn clock_ns(id: rustix::time::ClockId) -> u64 {
    let t = rustix::time::clock_gettime(id);
    (t.tv_sec as u64)
        .saturating_mul(1_000_000_000)
        .saturating_add(t.tv_nsec as u64)
}

impl SessionClock {
    /// Starts a session's clock now.
    pub fn start() -> Self {
        let origin = Instant::now();
        #[cfg(target_os = "linux")]
        let (monotonic_ns, boottime_ns) = (
            clock_ns(rustix::time::ClockId::Monotonic),
            clock_ns(rustix::time::ClockId::Boottime),
        );
        #[cfg(not(target_os = "linux"))]
        let (monotonic_ns, boottime_ns) = (0, 0);
        Self {
            origin,
            started_at: Utc::now(),
            monotonic_ns,
            boottime_ns,
        }
    }

    /// UTC at media time 0.
    pub fn started_at(&self) -> DateTime<Utc> {
        self.started_at
    }

    pub fn origin(&self) -> Instant {
        self.origin
    }

    /// Media time now.
    pub fn now(&self) -> MediaTime {
        MediaTime::from_duration(self.origin.elapsed())
    }

    /// Media time of a `CLOCK_MONOTONIC` reading; `None` before the session began.
    pub fn from_monotonic_ns(&self, ns: u64) -> Option<MediaTime> {
        ns.checked_sub(self.monotonic_ns)
            .map(|d| MediaTime::from_micros(d / 1000))
    }

    /// Media time of a `CLOCK_BOOTTIME` reading; `None` before the session began.
    pub fn from_boottime_ns(&self, ns: u64) -> Option<MediaTime> {
        ns.checked_sub(self.boottime_ns)
            .map(|d| MediaTime::from_micros(d / 1000))
    }

    /// Media time of a UTC instant (Windows ETW events carry system time); `None` before the
    /// session began.
    pub fn from_utc(&self, utc: DateTime<Utc>) -> Option<MediaTime> {
        let d = utc
            .signed_duration_since(self.started_at)
            .num_microseconds()?;
        u64::try_from(d).ok().map(MediaTime::from_micros)
    }

    /// UTC of a media time.
    pub fn utc(&self, t: MediaTime) -> DateTime<Utc> {
        self.started_at + chrono::Duration::microseconds(t.as_micros() as i64)
    }

    /// An event at media time `t`.
    pub fn event(&self, t: MediaTime, kind: EventKind) -> Event {
        Event {
            media_us: t,
            utc: self.utc(t),
            event: kind,
        }
    }
}

/// An event as the intake hands it over: with its id in the session's journal (`None`: it could
/// not be journalled, or there is no journal).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Seen {
    pub event: Event,
    pub journal_id: Option<u64>,
}

/// What a source sends to the intake.
#[derive(Debug)]
pub enum SourceMsg {
    Event(Seen),
    /// Source `source` has delivered every event up to `upto`.
    Caught {
        source: usize,
        upto: MediaTime,
    },
    /// Source `source` has stopped and sends nothing more.
    Ended {
        source: usize,
    },
}

/// Something that watches the system during a session and reports events.
pub trait EventSource: Send + 'static {
    /// Short name for logs and `event_source` events (`processes`, `windows`).
    fn name(&self) -> &'static str;
    /// Reports events until `stop` is set. Whenever [`EventSink::wake`] is signalled, the source
    /// must read everything pending and then call [`EventSink::caught_up`] with a time taken
    /// before that last read; `stop` is signalled through the same wake.
    fn run(self: Box<Self>, sink: EventSink, stop: Arc<AtomicBool>);
}

/// Makes the event sources of a session when it starts, given the elevated account's name (the
/// process source tells that account's activity from the rest of the machine's).
pub type SourceFactory = Box<dyn FnMut(&str) -> Vec<Box<dyn EventSource>> + Send>;

/// How long a source may sleep without being woken; only bounds how long a lost wake-up could
/// delay a stop.
pub const IDLE_WAIT: Duration = Duration::from_secs(1);

/// The intake's way to ask a source to report (or stop): a flag plus, on Linux, an eventfd a
/// source can wait on beside its own file descriptors.
#[derive(Debug)]
pub struct Wake {
    flag: AtomicBool,
    #[cfg(target_os = "linux")]
    fd: std::os::fd::OwnedFd,
}

impl Wake {
    fn new() -> std::io::Result<Self> {
        Ok(Self {
            flag: AtomicBool::new(false),
            #[cfg(target_os = "linux")]
            fd: rustix::event::eventfd(
                0,
                rustix::event::EventfdFlags::CLOEXEC | rustix::event::EventfdFlags::NONBLOCK,
            )?,
        })
    }

    fn signal(&self) {
        self.flag.store(true, Ordering::SeqCst);
        #[cfg(target_os = "linux")]
        {
            // An eventfd counter only overflows after 2^64 - 1 wake-ups; a failed write leaves
            // the flag, which the source also reads on its next wake-up.
            let _ = rustix::io::write(&self.fd, &1u64.to_ne_bytes());
        }
    }

    /// Whether the intake asked since the last call (and resets it).
    pub fn take(&self) -> bool {
        #[cfg(target_os = "linux")]
        {
            let mut buf = [0u8; 8];
            let _ = rustix::io::read(&self.fd, &mut buf);
        }
        self.flag.swap(false, Ordering::SeqCst)
    }

    /// The descriptor to wait on (readable when signalled).
    #[cfg(target_os = "linux")]
    pub fn fd(&self) -> std::os::fd::BorrowedFd<'_> {
        use std::os::fd::AsFd;
        self.fd.as_fd()
    }

    /// Waits until signalled, `fds` are ready, or `timeout` passes. Returns whether `fds[i]`
    /// became readable, per descriptor.
    #[cfg(target_os = "linux")]
    pub fn wait_with(&self, fds: &[std::os::fd::BorrowedFd<'_>], timeout: Duration) -> Vec<bool> {
        use rustix::event::{PollFd, PollFlags, poll};
        let mut set: Vec<PollFd<'_>> = fds.iter().map(|f| PollFd::new(f, PollFlags::IN)).collect();
        set.push(PollFd::new(&self.fd, PollFlags::IN));
        let timeout = rustix::time::Timespec::try_from(timeout).ok();
        let _ = poll(&mut set, timeout.as_ref());
        set.iter()
            .take(fds.len())
            .map(|p| !p.revents().is_empty())
            .collect()
    }
}

/// Bounds on the events of a session.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct EventLimits {
    /// Events a source may write in a burst.
    pub burst: u32,
    /// Events per second a source may write once its burst is spent.
    pub rate: u32,
    /// Messages that may wait between the sources and the encoding thread.
    pub queue: usize,
}

impl Default for EventLimits {
    /// A 2 s chunk at the sustained rate holds ~4,000 events (~0.5 MB of JSON before zstd); the
    /// burst lets a build of 10,000 processes through whole.
    fn default() -> Self {
        Self {
            burst: 20_000,
            rate: 2_000,
            queue: 16_384,
        }
    }
}

/// Events a sink could not pass, waiting to be written as one `events_summarised`.
#[derive(Debug, Default)]
struct Summary {
    count: u64,
    first: Option<MediaTime>,
    last: MediaTime,
    by_what: BTreeMap<String, u64>,
}

impl Summary {
    fn add(&mut self, t: MediaTime, e: &EventKind) {
        self.count += 1;
        self.first.get_or_insert(t);
        self.last = self.last.max(t);
        let what = match e {
            EventKind::ProcessStart(p) => {
                let name = p.exe.rsplit('/').next().unwrap_or_default();
                format!("process_start {}", if name.is_empty() { "?" } else { name })
            }
            EventKind::ProcessExit(_) => "process_exit".to_owned(),
            EventKind::WindowFocus(_) => "window_focus".to_owned(),
            EventKind::WindowTitle(_) => "window_title".to_owned(),
            _ => "other".to_owned(),
        };
        *self.by_what.entry(what).or_default() += 1;
    }

    /// "source: N events between 1.200 s and 3.450 s: process_start true 4000, process_exit 3990"
    fn describe(&self, source: &str) -> String {
        let mut parts: Vec<(&String, &u64)> = self.by_what.iter().collect();
        parts.sort_by(|a, b| b.1.cmp(a.1).then(a.0.cmp(b.0)));
        let shown: Vec<String> = parts
            .iter()
            .take(8)
            .map(|(w, n)| format!("{w} {n}"))
            .collect();
        let more = parts.len().saturating_sub(shown.len());
        let secs = |t: MediaTime| t.as_micros() as f64 / 1e6;
        format!(
            "{source}: {} events between {:.3} s and {:.3} s exceeded the event bound and are only counted: {}{}",
            self.count,
            secs(self.first.unwrap_or_default()),
            secs(self.last),
            shown.join(", "),
            if more > 0 {
                format!(" and {more} more kinds")
            } else {
                String::new()
            }
        )
    }
}

/// A source's way to the intake: rate-bounded, queue-bounded, summarising what does not fit.
#[derive(Debug)]
pub struct EventSink {
    index: usize,
    name: &'static str,
    tx: SyncSender<SourceMsg>,
    clock: SessionClock,
    wake: Arc<Wake>,
    limits: EventLimits,
    tokens: f64,
    refilled: Instant,
    summary: Summary,
    journal: Option<Arc<jitrec_spool::Journal>>,
    /// Whether a failed journal append was already logged (once per sink, not per event).
    journal_failed: bool,
    /// Rung after each event passed, so the encoding thread takes it (and syncs the journal)
    /// without polling (`crate::doorbell`).
    bell: Option<Arc<Doorbell>>,
}

impl EventSink {
    /// Journals `event` (see the module's doc) and wraps it for the intake.
    fn seen(&mut self, event: Event) -> SourceMsg {
        let journal_id = self.journal.as_ref().and_then(|j| match j.append(&event) {
            Ok(id) => Some(id),
            Err(e) => {
                if !self.journal_failed {
                    self.journal_failed = true;
                    tracing::error!(source = self.name, error = %e, "cannot journal events; those of the last seconds before a crash would be lost");
                }
                None
            }
        });
        SourceMsg::Event(Seen { event, journal_id })
    }

    pub fn clock(&self) -> &SessionClock {
        &self.clock
    }

    fn ring(&self) {
        if let Some(bell) = &self.bell {
            bell.ring();
        }
    }

    pub fn name(&self) -> &'static str {
        self.name
    }

    /// Signalled when the intake wants a report, or the session stops.
    pub fn wake(&self) -> &Wake {
        &self.wake
    }

    fn take_token(&mut self) -> bool {
        let now = Instant::now();
        let refill = now.duration_since(self.refilled).as_secs_f64() * f64::from(self.limits.rate);
        self.tokens = (self.tokens + refill).min(f64::from(self.limits.burst));
        self.refilled = now;
        if self.tokens >= 1.0 {
            self.tokens -= 1.0;
            true
        } else {
            false
        }
    }

    /// Writes an event at media time `t`, or counts it into the pending summary when a bound is
    /// hit.
    pub fn emit(&mut self, t: MediaTime, kind: EventKind) {
        self.flush_summary();
        if self.summary.count > 0 || !self.take_token() {
            // Keep order: once summarising, everything goes into the summary until it is out.
            self.summary.add(t, &kind);
            return;
        }
        let event = self.clock.event(t, kind);
        let msg = self.seen(event);
        match self.tx.try_send(msg) {
            Ok(()) => self.ring(),
            // Journalled but not passed: after a crash in the next seconds it is both counted
            // and folded, which errs on the side of showing it.
            Err(TrySendError::Full(SourceMsg::Event(e))) => {
                self.summary.add(e.event.media_us, &e.event.event);
            }
            Err(_) => {}
        }
    }

    /// Writes a status event that must not be summarised (source state changes). Blocks while
    /// the queue is full; the intake drains it continuously.
    pub fn status(&mut self, t: MediaTime, kind: EventKind) {
        self.flush_summary();
        let msg = self.seen(self.clock.event(t, kind));
        if self.tx.send(msg).is_ok() {
            self.ring();
        }
    }

    fn flush_summary(&mut self) {
        if self.summary.count == 0 {
            return;
        }
        // Wait for the rate to allow events again, so the summary covers the whole flood.
        if self.tokens < f64::from(self.limits.burst) / 2.0 && !self.refill_to_half() {
            return;
        }
        // Stamped at the last event it counts, not when the flood was seen to be over: that
        // time can lie past a cut the intake is catching up to, even past JIT stop, and the
        // count would then miss its chunk, or the session. An early time is safe: a chunk
        // already cut places it at the next one's start.
        let at = self.summary.last;
        let kind = EventKind::EventsSummarised {
            count: self.summary.count,
            what: self.summary.describe(self.name),
        };
        let msg = self.seen(self.clock.event(at, kind));
        if self.tx.try_send(msg).is_ok() {
            self.ring();
            tracing::warn!(
                source = self.name,
                count = self.summary.count,
                "events over the bound were summarised"
            );
            self.summary = Summary::default();
        }
    }

    fn refill_to_half(&mut self) -> bool {
        let now = Instant::now();
        let refill = now.duration_since(self.refilled).as_secs_f64() * f64::from(self.limits.rate);
        self.tokens = (self.tokens + refill).min(f64::from(self.limits.burst));
        self.refilled = now;
        self.tokens >= f64::from(self.limits.burst) / 2.0
    }

    /// Says every event up to `upto` has been written (and flushes a pending summary if the
    /// flood is over).
    pub fn caught_up(&mut self, upto: MediaTime) {
        self.flush_summary();
        let _ = self.tx.try_send(SourceMsg::Caught {
            source: self.index,
            upto,
        });
    }
}

impl Drop for EventSink {
    fn drop(&mut self) {
        if self.summary.count > 0 {
            // The session is ending: the summary goes out whatever the rate.
            let at = self.summary.last;
            let kind = EventKind::EventsSummarised {
                count: self.summary.count,
                what: self.summary.describe(self.name),
            };
            let msg = self.seen(self.clock.event(at, kind));
            let _ = self.tx.send(msg);
        }
        let _ = self.tx.send(SourceMsg::Ended { source: self.index });
        self.ring();
    }
}

/// How long [`Intake::stop`] waits for all sources to end: part of the bound on a JIT stop
/// (`docs/recorder.md`). A source wakes within milliseconds of being told, so only a stuck one
/// takes this long.
pub const SOURCE_STOP_LIMIT: Duration = Duration::from_secs(1);

/// The encoding thread's side: events in order of arrival, and how far each source has got.
#[derive(Debug)]
pub struct Intake {
    rx: Receiver<SourceMsg>,
    /// Per source: how far it has caught up (`None`: ended).
    marks: Vec<Option<MediaTime>>,
    /// Per source, aligned with `marks`.
    wakes: Vec<Option<Arc<Wake>>>,
    threads: Vec<(&'static str, std::thread::JoinHandle<()>)>,
    stop: Arc<AtomicBool>,
}

impl Intake {
    /// Starts `sources` for a session on `clock`. Each runs on its own thread until
    /// [`Intake::stop`], and rings `bell` (if any) after each event it passes.
    pub fn start(
        clock: SessionClock,
        sources: Vec<Box<dyn EventSource>>,
        limits: EventLimits,
        journal: Option<Arc<jitrec_spool::Journal>>,
        bell: Option<Arc<Doorbell>>,
    ) -> Self {
        // Full policy of this queue: a sink never blocks on it for ordinary events; what does
        // not fit is counted into its summary (EventSink::emit).
        let (tx, rx) = std::sync::mpsc::sync_channel(limits.queue.max(16));
        let stop = Arc::new(AtomicBool::new(false));
        let mut threads = Vec::new();
        let mut marks = Vec::new();
        let mut wakes = Vec::new();
        for (index, source) in sources.into_iter().enumerate() {
            let name = source.name();
            let wake = match Wake::new() {
                Ok(w) => Arc::new(w),
                Err(e) => {
                    tracing::error!(source = name, error = %e, "could not start an event source; its events are not recorded");
                    marks.push(None);
                    wakes.push(None);
                    continue;
                }
            };
            wakes.push(Some(Arc::clone(&wake)));
            let sink = EventSink {
                index,
                name,
                tx: tx.clone(),
                clock,
                wake,
                limits,
                tokens: f64::from(limits.burst),
                refilled: Instant::now(),
                summary: Summary::default(),
                journal: journal.clone(),
                journal_failed: false,
                bell: bell.clone(),
            };
            let stop = Arc::clone(&stop);
            match std::thread::Builder::new()
                .name(format!("jitrec-events-{name}"))
                .spawn(move || source.run(sink, stop))
            {
                Ok(h) => {
                    threads.push((name, h));
                    marks.push(Some(MediaTime::ZERO));
                }
                Err(e) => {
                    tracing::error!(source = name, error = %e, "could not start an event source; its events are not recorded");
                    marks.push(None);
                }
            }
        }
        Self {
            rx,
            marks,
            wakes,
            threads,
            stop,
        }
    }

    fn wake_all(&self) {
        for w in self.wakes.iter().flatten() {
            w.signal();
        }
    }

    fn accept(&mut self, msg: SourceMsg, out: &mut dyn FnMut(Seen)) {
        match msg {
            SourceMsg::Event(e) => out(e),
            SourceMsg::Caught { source, upto } => {
                if let Some(Some(m)) = self.marks.get_mut(source) {
                    *m = (*m).max(upto);
                }
            }
            SourceMsg::Ended { source } => {
                if let Some(m) = self.marks.get_mut(source) {
                    *m = None;
                }
            }
        }
    }

    /// Takes whatever has arrived, without waiting.
    pub fn drain(&mut self, out: &mut dyn FnMut(Seen)) {
        loop {
            match self.rx.try_recv() {
                Ok(msg) => self.accept(msg, out),
                Err(TryRecvError::Empty | TryRecvError::Disconnected) => return,
            }
        }
    }

    fn behind(&self, t: MediaTime) -> bool {
        self.marks.iter().any(|m| m.is_some_and(|m| m < t))
    }

    /// Takes events until every running source has caught up to `t`, waiting at most `limit`.
    /// Returns whether they all did.
    pub fn catch_up(&mut self, t: MediaTime, limit: Duration, out: &mut dyn FnMut(Seen)) -> bool {
        /// Sources still behind are asked again this often (a report may predate `t`).
        const ASK_AGAIN: Duration = Duration::from_millis(20);
        let deadline = Instant::now() + limit;
        self.drain(out);
        while self.behind(t) {
            self.wake_behind(t);
            let Some(left) = deadline.checked_duration_since(Instant::now()) else {
                tracing::warn!(
                    media_us = t.as_micros(),
                    "an event source is behind; its late events go into the next chunk"
                );
                return false;
            };
            match self.rx.recv_timeout(left.min(ASK_AGAIN)) {
                Ok(msg) => {
                    self.accept(msg, out);
                    self.drain(out);
                }
                Err(RecvTimeoutError::Timeout) => {}
                Err(RecvTimeoutError::Disconnected) => return !self.behind(t),
            }
        }
        true
    }

    fn wake_behind(&self, t: MediaTime) {
        for (m, w) in self.marks.iter().zip(&self.wakes) {
            if let (Some(m), Some(w)) = (m, w)
                && *m < t
            {
                w.signal();
            }
        }
    }

    /// Stops the sources and takes everything they sent before they ended. Waits at most
    /// [`SOURCE_STOP_LIMIT`] for all of them: a source stuck in a call that does not return (an
    /// X request to a frozen server) is logged at ERROR and detached, which is safe for the
    /// reasons `crate::join` gives (it holds only its own source and a sender whose receiver
    /// this drops; when its call returns it sees the stop flag and ends).
    pub fn stop(mut self, out: &mut dyn FnMut(Seen)) {
        self.stop.store(true, Ordering::SeqCst);
        self.wake_all();
        let deadline = Instant::now() + SOURCE_STOP_LIMIT;
        for (name, h) in std::mem::take(&mut self.threads) {
            // Drain while joining so a source blocked on a full queue can finish.
            while !h.is_finished() && Instant::now() < deadline {
                if let Ok(msg) = self.rx.recv_timeout(Duration::from_millis(20)) {
                    self.accept(msg, out);
                }
            }
            if !h.is_finished() {
                // Dropping the handle detaches the thread; whatever it sends later is
                // after the stop and would not be recorded anyway.
                tracing::error!(source = name, limit = ?SOURCE_STOP_LIMIT, "an event source did not stop in time; left behind");
                continue;
            }
            if h.join().is_err() {
                tracing::error!("an event source panicked; its later events are lost");
            }
        }
        self.drain(out);
    }
}

impl Drop for Intake {
    fn drop(&mut self) {
        // Sources of a session that ended abnormally must not outlive it.
        self.stop.store(true, Ordering::SeqCst);
        self.wake_all();
    }
}

/// A source that only sends what a test scripts, at the media times given (tests, benchmarks).
#[derive(Debug)]
pub struct ScriptedEvents {
    pub name: &'static str,
    /// (delay after session start, event)
    pub events: Vec<(Duration, EventKind)>,
}

impl EventSource for ScriptedEvents {
    fn name(&self) -> &'static str {
        self.name
    }

    fn run(self: Box<Self>, mut sink: EventSink, stop: Arc<AtomicBool>) {
        let mut pending = self.events.into_iter().peekable();
        let clock = *sink.clock();
        while !stop.load(Ordering::SeqCst) {
            let _ = sink.wake().take();
            let now = clock.now();
            while let Some((at, _)) = pending.peek() {
                let t = MediaTime::from_duration(*at);
                if t > now {
                    break;
                }
                if let Some((_, kind)) = pending.next() {
                    sink.emit(t, kind);
                }
            }
            sink.caught_up(now);
            let next = pending.peek().map_or(IDLE_WAIT, |(at, _)| {
                at.saturating_sub(clock.origin().elapsed()).min(IDLE_WAIT)
            });
            #[cfg(target_os = "linux")]
            sink.wake().wait_with(&[], next);
            #[cfg(not(target_os = "linux"))]
            std::thread::sleep(next.min(Duration::from_millis(10)));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use jitrec_format::{ProcessExit, ProcessStart, UserRef};

    fn start(pid: u32) -> EventKind {
        EventKind::ProcessStart(ProcessStart {
            pid,
            ppid: 1,
            user: UserRef {
                name: "root".into(),
                id: "0".into(),
            },
            exe: "/usr/bin/true".into(),
            command_line: "true".into(),
            elevated: true,
            in_session: None,
        })
    }

    struct Flood(u32);

    impl EventSource for Flood {
        fn name(&self) -> &'static str {
            "processes"
        }
        fn run(self: Box<Self>, mut sink: EventSink, _stop: Arc<AtomicBool>) {
            let t = sink.clock().now();
            for pid in 0..self.0 {
                sink.emit(t, start(pid));
                sink.emit(
                    t,
                    EventKind::ProcessExit(ProcessExit {
                        pid,
                        exit_code: Some(0),
                        signal: None,
                    }),
                );
            }
            sink.caught_up(t);
        }
    }

    fn collect(limits: EventLimits, n: u32) -> Vec<Event> {
        let intake = Intake::start(
            SessionClock::start(),
            vec![Box::new(Flood(n))],
            limits,
            None,
            None,
        );
        let mut got = Vec::new();
        intake.stop(&mut |e| got.push(e.event));
        got
    }

    #[test]
    fn under_the_bound_every_event_passes() {
        let got = collect(EventLimits::default(), 1000);
        assert_eq!(got.len(), 2000);
        assert!(
            !got.iter()
                .any(|e| matches!(e.event, EventKind::EventsSummarised { .. }))
        );
    }

    #[test]
    fn a_flood_is_summarised_and_counted_not_dropped() {
        let limits = EventLimits {
            burst: 100,
            rate: 10,
            queue: 64,
        };
        let got = collect(limits, 5000);
        let individual = got
            .iter()
            .filter(|e| !matches!(e.event, EventKind::EventsSummarised { .. }))
            .count() as u64;
        let summarised: u64 = got
            .iter()
            .filter_map(|e| match &e.event {
                EventKind::EventsSummarised { count, what } => {
                    assert!(what.contains("process_start true"), "{what}");
                    Some(*count)
                }
                _ => None,
            })
            .sum();
        assert!(summarised > 0, "nothing was summarised");
        assert_eq!(individual + summarised, 10_000, "events were lost");
        assert!(individual <= 100 + 64, "the bound let {individual} through");
    }

    /// A flood at 1 ms, then a report of having read up to 10 s.
    struct FloodThenCaughtUp;

    impl EventSource for FloodThenCaughtUp {
        fn name(&self) -> &'static str {
            "processes"
        }
        fn run(self: Box<Self>, mut sink: EventSink, _stop: Arc<AtomicBool>) {
            let t = MediaTime::from_micros(1_000);
            for pid in 0..1000 {
                sink.emit(t, start(pid));
            }
            // Long enough for the rate to allow events again, so the summary is flushed here.
            std::thread::sleep(Duration::from_millis(50));
            sink.caught_up(MediaTime::from_micros(10_000_000));
        }
    }

    #[test]
    fn a_summary_is_stamped_at_the_last_event_it_counts_not_when_it_is_flushed() {
        let limits = EventLimits {
            burst: 10,
            rate: 1000,
            queue: 64,
        };
        let intake = Intake::start(
            SessionClock::start(),
            vec![Box::new(FloodThenCaughtUp)],
            limits,
            None,
            None,
        );
        let mut got = Vec::new();
        intake.stop(&mut |e| got.push(e.event));
        let summaries: Vec<&Event> = got
            .iter()
            .filter(|e| matches!(e.event, EventKind::EventsSummarised { .. }))
            .collect();
        assert!(!summaries.is_empty(), "nothing was summarised");
        for s in summaries {
            assert_eq!(s.media_us, MediaTime::from_micros(1_000), "{s:?}");
        }
    }

    #[test]
    fn catch_up_waits_for_every_source() {
        let clock = SessionClock::start();
        let source = ScriptedEvents {
            name: "windows",
            events: vec![(Duration::from_millis(150), EventKind::RecorderStarted)],
        };
        let mut intake = Intake::start(
            clock,
            vec![Box::new(source)],
            EventLimits::default(),
            None,
            None,
        );
        let mut got = Vec::new();
        let t = MediaTime::from_micros(200_000);
        assert!(intake.catch_up(t, Duration::from_secs(30), &mut |e| got.push(e.event)));
        assert_eq!(got.len(), 1, "the event before the cut was not delivered");
        assert!(clock.now() >= t);
        intake.stop(&mut |e| got.push(e.event));
    }

    #[test]
    fn utc_conversion() {
        let c = SessionClock::start();
        let later = c.started_at() + chrono::Duration::microseconds(2_500);
        assert_eq!(c.from_utc(later), Some(MediaTime::from_micros(2_500)));
        assert_eq!(
            c.from_utc(c.started_at() - chrono::Duration::microseconds(1)),
            None
        );
    }

    #[cfg(target_os = "linux")]
    #[test]
    fn clock_conversions() {
        let c = SessionClock::start();
        assert_eq!(
            c.from_monotonic_ns(c.monotonic_ns + 1_500_000),
            Some(MediaTime::from_micros(1500))
        );
        assert_eq!(c.from_monotonic_ns(c.monotonic_ns.saturating_sub(1)), None);
        assert_eq!(
            c.from_boottime_ns(c.boottime_ns + 2_000),
            Some(MediaTime::from_micros(2))
        );
        assert_eq!(
            c.utc(MediaTime::from_micros(1_000_000)) - c.started_at(),
            chrono::Duration::seconds(1)
        );
    }
}
