//! Screen capture: frames, where they come from, and the capture stage that grabs them.
//!
//! A [`Frame`] is one BGRA image of the whole screen. Sources behind [`CaptureSource`] (X11 in
//! [`x11`], Windows Graphics Capture in `windows`, and the scripted [`SyntheticScreen`] used by
//! tests and benchmarks) all produce the same type, so everything after capture is shared.
//!
//! [`Capture`] is the capture stage of one session, on a plain thread of its own: it opens the
//! source (retrying every [`REOPEN_INTERVAL`], and reopening one that has failed for
//! [`REOPEN_AFTER`]), grabs at a fixed rate, stamps each grab with the media time at which its
//! pixels were read, and hands it to the encoding side through a bounded queue whose full policy
//! is **drop the newest picture and count it**; what changed in a dropped picture travels with
//! the next one that gets through ([`HeldBack`]), so the video still converges to the screen.

#[cfg(windows)]
pub mod windows;
#[cfg(unix)]
pub mod x11;

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::mpsc::{Receiver, SyncSender, TrySendError};
use std::sync::{Arc, Mutex, TryLockError};
use std::thread;
use std::time::{Duration, Instant};

use jitrec_format::MediaTime;

use crate::cost::{self, Stage};
use crate::doorbell::Doorbell;

/// A rectangle of a frame, in pixels.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Rect {
    pub x: u32,
    pub y: u32,
    pub w: u32,
    pub h: u32,
}

impl Rect {
    /// Grown to even coordinates and sizes (4:2:0 chroma covers 2x2 pixels) and clipped to a
    /// `width` x `height` frame (both even).
    pub fn even_within(self, width: u32, height: u32) -> Option<Rect> {
        let (x0, y0) = (self.x & !1, self.y & !1);
        let x1 = (self.x.saturating_add(self.w).saturating_add(1) & !1).min(width);
        let y1 = (self.y.saturating_add(self.h).saturating_add(1) & !1).min(height);
        (x1 > x0 && y1 > y0).then(|| Rect {
            x: x0,
            y: y0,
            w: x1 - x0,
            h: y1 - y0,
        })
    }

    /// This rectangle's origin with its far corner moved to (`x1`, `y1`).
    pub fn spanning(self, x1: u32, y1: u32) -> Rect {
        Rect {
            w: x1.saturating_sub(self.x),
            h: y1.saturating_sub(self.y),
            ..self
        }
    }

    pub fn area(&self) -> u64 {
        u64::from(self.w) * u64::from(self.h)
    }
}

/// One BGRA screen image. Alpha is opaque, except in frames of an X11 source with damage
/// tracking, where it is whatever the server left in its padding byte: nothing reads it there
/// (conversion and cursor blending use colour alone, and such frames are not compared whole
/// to find an idle screen; a spurious difference would only cost an encode).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Frame {
    pub width: u32,
    pub height: u32,
    /// Bytes per row (at least `width * 4`).
    pub stride: usize,
    pub data: Vec<u8>,
}

impl Frame {
    /// A frame of one colour, `[b, g, r, a]`.
    pub fn solid(width: u32, height: u32, bgra: [u8; 4]) -> Self {
        let stride = width as usize * 4;
        let mut data = Vec::with_capacity(stride * height as usize);
        for _ in 0..(width as usize * height as usize) {
            data.extend_from_slice(&bgra);
        }
        Self {
            width,
            height,
            stride,
            data,
        }
    }

    /// Paints a rectangle (clipped to the frame).
    pub fn fill(&mut self, x: u32, y: u32, w: u32, h: u32, bgra: [u8; 4]) {
        for row in y..(y + h).min(self.height) {
            for col in x..(x + w).min(self.width) {
                let at = row as usize * self.stride + col as usize * 4;
                self.data[at..at + 4].copy_from_slice(&bgra);
            }
        }
    }
}

/// A scripted screen: a background, and rectangles painted at given media times. Deterministic,
/// so tests can say exactly what a decoded frame at time *t* must show.
#[derive(Debug, Clone)]
pub struct SyntheticScreen {
    pub width: u32,
    pub height: u32,
    pub background: [u8; 4],
    /// (from media time in microseconds, x, y, w, h, colour), applied in order.
    pub paints: Vec<(u64, u32, u32, u32, u32, [u8; 4])>,
}

impl SyntheticScreen {
    /// The screen as it looks at `t_us`.
    pub fn render(&self, t_us: u64) -> Frame {
        let mut f = Frame::solid(self.width, self.height, self.background);
        for &(from, x, y, w, h, c) in &self.paints {
            if t_us >= from {
                f.fill(x, y, w, h, c);
            }
        }
        f
    }
}

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

    /// The pixel buffer of a picture the encoding side is done with, for a later grab to fill
    /// instead of allocating: a fresh 1080p buffer is 8 MB of new pages, a page fault per 4 KB
    /// the first time each is written, and an unmap when it is freed. A source that does not
    /// reuse buffers drops it.
    fn reuse(&mut self, _buffer: Vec<u8>) {}
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

/// What the capture thread hands the encoding side each tick.
#[derive(Debug)]
pub enum Tick {
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

/// The capture stage of one session. [`Capture::run`] is its thread's body; it ends when `stop`
/// is set or the encoding side has dropped its end of `ticks`.
pub struct Capture<F> {
    /// Opens the source, on this thread only. Shared with the capture threads of earlier
    /// sessions, one of which may still be stuck inside it (`crate::join`).
    pub open: Arc<Mutex<F>>,
    /// Media time 0 of the session.
    pub origin: Instant,
    /// Time between grabs.
    pub period: Duration,
    /// To the encoding side. Full: the newest picture is dropped, counted in `dropped`, and its
    /// changes held back for the next grab that gets through.
    pub ticks: SyncSender<(MediaTime, Tick)>,
    /// Rung after each tick is queued, and when this stage ends (however it ends), so the
    /// encoding side sleeps until there is something for it.
    pub bell: Arc<Doorbell>,
    pub stop: Arc<AtomicBool>,
    /// Pictures the full queue had no room for.
    pub dropped: Arc<AtomicU64>,
    /// Pixel buffers the encoding side is done with, handed to the source
    /// ([`CaptureSource::reuse`]).
    pub spent: Receiver<Vec<u8>>,
}

/// The capture stage's end of the tick queue. It rings the bell after each tick it queues, and
/// once more after it closes the queue (a panic included), so the encoding side finds the
/// queue disconnected instead of waiting for a tick that will not come.
struct TickOut {
    tx: Option<SyncSender<(MediaTime, Tick)>>,
    bell: Arc<Doorbell>,
}

impl TickOut {
    fn try_send(&self, tick: (MediaTime, Tick)) -> Result<(), TrySendError<(MediaTime, Tick)>> {
        let tx = self
            .tx
            .as_ref()
            .expect("the sender is taken only when this is dropped");
        tx.try_send(tick).inspect(|()| self.bell.ring())
    }
}

impl Drop for TickOut {
    fn drop(&mut self) {
        drop(self.tx.take());
        self.bell.ring();
    }
}

impl<F, S> Capture<F>
where
    F: FnMut() -> Result<S, CaptureError>,
    S: CaptureSource,
{
    /// Grabs until stopped.
    pub fn run(self) {
        let Capture {
            open,
            origin,
            period,
            ticks: tx,
            bell,
            stop,
            dropped,
            spent,
        } = self;
        let tx = TickOut { tx: Some(tx), bell };
        let mut source: Option<S> = None;
        // Why there is no source (an open that failed), for the `capture_error` event.
        let mut why = String::from("the screen has not been opened yet");
        let mut last_open: Option<Instant> = None;
        let mut failing_since: Option<Instant> = None;
        let mut reopens = 0u32;
        let mut held = HeldBack::default();
        let mut next = origin;
        while !stop.load(Ordering::SeqCst) {
            let started = cost::thread_time();
            if source.is_none() && last_open.is_none_or(|at| at.elapsed() >= REOPEN_INTERVAL) {
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
            if let Some(s) = source.as_mut() {
                while let Ok(buffer) = spent.try_recv() {
                    s.reuse(buffer);
                }
            }
            let grabbed = source.as_mut().map(CaptureSource::grab);
            // Stamped when its pixels have been read (the grab's last request has returned),
            // not when the tick began: a stamp taken before a grab that takes a while would
            // show the picture early.
            let t = MediaTime::from_duration(origin.elapsed());
            cost::add(
                Stage::CaptureThread,
                cost::thread_time().saturating_sub(started),
            );
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
