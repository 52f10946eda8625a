//! Where the recorder's time goes: CPU time per stage of the recording, counted as it is spent,
//! so the benchmark (`bash bench/run.sh recorder`) and an operator can see what a session cost
//! without a profiler.
//!
//! Each stage's time is the calling thread's CPU time (`CLOCK_THREAD_CPUTIME_ID`; wall time on
//! platforms without it) around the stage's code, added to process-wide counters. A session
//! takes a [`Snapshot`] at its start and logs the difference at its end, at INFO on the target
//! `jitrec_recorder::cost`. Reading the clock costs well under a microsecond, a few times per
//! capture tick.

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

/// A stage of the recording.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Stage {
    /// Asking the display what changed (damage region, geometry, pending events).
    Damage,
    /// Copying pixels from the display.
    Grab,
    /// Reading and drawing the cursor.
    Cursor,
    /// Colour conversion (BGRA to YUV 4:2:0), of changed tiles or whole frames.
    Convert,
    /// The H.264 encoder.
    Encode,
    /// Building fragmented-MP4 chunks (and sealing them, when encryption is on).
    Mux,
    /// Committing chunks to the spool (writes, fsyncs).
    Spool,
    /// Taking events from the sources into chunks.
    Events,
    /// Everything the capture thread did (the stages above it are part of this).
    CaptureThread,
    /// Everything the encoding thread did in capture ticks (the stages from `Convert` on are
    /// part of this).
    EncodeThread,
}

const STAGES: [Stage; 10] = [
    Stage::Damage,
    Stage::Grab,
    Stage::Cursor,
    Stage::Convert,
    Stage::Encode,
    Stage::Mux,
    Stage::Spool,
    Stage::Events,
    Stage::CaptureThread,
    Stage::EncodeThread,
];

impl Stage {
    /// The stage's name in the log line (`<name>_ms=`).
    pub fn name(self) -> &'static str {
        match self {
            Stage::Damage => "damage",
            Stage::Grab => "grab",
            Stage::Cursor => "cursor",
            Stage::Convert => "convert",
            Stage::Encode => "encode",
            Stage::Mux => "mux",
            Stage::Spool => "spool",
            Stage::Events => "events",
            Stage::CaptureThread => "capture_thread",
            Stage::EncodeThread => "encode_thread",
        }
    }

    fn index(self) -> usize {
        self as usize
    }
}

static SPENT_NS: [AtomicU64; 10] = [const { AtomicU64::new(0) }; 10];

/// The calling thread's CPU time so far.
pub fn thread_time() -> Duration {
    #[cfg(unix)]
    {
        let t = rustix::time::clock_gettime(rustix::time::ClockId::ThreadCPUTime);
        Duration::new(
            t.tv_sec.max(0) as u64,
            t.tv_nsec.clamp(0, 999_999_999) as u32,
        )
    }
    #[cfg(not(unix))]
    {
        use std::sync::OnceLock;
        static ORIGIN: OnceLock<std::time::Instant> = OnceLock::new();
        ORIGIN.get_or_init(std::time::Instant::now).elapsed()
    }
}

/// Adds `d` to `stage`.
pub fn add(stage: Stage, d: Duration) {
    SPENT_NS[stage.index()].fetch_add(d.as_nanos() as u64, Ordering::Relaxed);
}

/// Runs `f`, counting the CPU time it took to `stage`.
pub fn measure<T>(stage: Stage, f: impl FnOnce() -> T) -> T {
    let start = thread_time();
    let out = f();
    add(stage, thread_time().saturating_sub(start));
    out
}

/// Who coded a picture of the stream.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Coder {
    /// libx264.
    X264,
    /// Written by hand (`encode/h264.rs`): skip pictures and small changes.
    ByHand,
}

/// Pictures and their bytes, per [`Coder`]: `[x264, by hand] x [pictures, bytes]`.
static PICTURES: [[AtomicU64; 2]; 2] = [const { [const { AtomicU64::new(0) }; 2] }; 2];

/// Counts one picture of `bytes` coded by `coder`.
pub fn picture(coder: Coder, bytes: usize) {
    let c = &PICTURES[coder as usize];
    c[0].fetch_add(1, Ordering::Relaxed);
    c[1].fetch_add(bytes as u64, Ordering::Relaxed);
}

/// The counters at one moment.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Snapshot([u64; 10], [[u64; 2]; 2]);

impl Snapshot {
    pub fn now() -> Self {
        Self(
            std::array::from_fn(|i| SPENT_NS[i].load(Ordering::Relaxed)),
            std::array::from_fn(|c| {
                std::array::from_fn(|k| PICTURES[c][k].load(Ordering::Relaxed))
            }),
        )
    }

    /// Pictures coded since `self` and their bytes, per [`Coder`].
    pub fn pictures_since(&self, coder: Coder) -> (u64, u64) {
        let now = Self::now();
        let c = coder as usize;
        (
            now.1[c][0].saturating_sub(self.1[c][0]),
            now.1[c][1].saturating_sub(self.1[c][1]),
        )
    }

    /// What was spent per stage since `self`, as `(name, milliseconds)`.
    pub fn since(&self) -> Vec<(&'static str, f64)> {
        let now = Self::now();
        STAGES
            .iter()
            .map(|s| {
                let ns = now.0[s.index()].saturating_sub(self.0[s.index()]);
                (s.name(), ns as f64 / 1e6)
            })
            .collect()
    }

    /// Logs what was spent since `self` (one INFO line, `<stage>_ms=` fields).
    pub fn log(
        &self,
        session: &jitrec_format::SessionId,
        media: Duration,
        ticks: crate::session::TickStats,
    ) {
        let spent: String = self
            .since()
            .iter()
            .map(|(name, ms)| format!(" {name}_ms={ms:.1}"))
            .collect();
        let (x264, x264_bytes) = self.pictures_since(Coder::X264);
        let (by_hand, by_hand_bytes) = self.pictures_since(Coder::ByHand);
        tracing::info!(
            target: "jitrec_recorder::cost",
            %session,
            media_s = media.as_secs_f64(),
            changed = ticks.changed,
            repeated = ticks.repeated,
            skipped = ticks.skipped,
            x264_pictures = x264,
            x264_bytes,
            by_hand_pictures = by_hand,
            by_hand_bytes,
            "where the recording's time went:{spent}"
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_measured_stage_counts_the_cpu_time_it_spent() {
        let before = Snapshot::now();
        let v = measure(Stage::Convert, || {
            // 20 ms of this thread's CPU time (not of the clock: on a loaded machine the
            // thread gets less than the wall time) in work the optimiser cannot remove.
            let start = thread_time();
            let mut x = 1u64;
            while thread_time().saturating_sub(start) < Duration::from_millis(20) {
                x = std::hint::black_box(x.wrapping_mul(6364136223846793005).wrapping_add(1));
            }
            x
        });
        std::hint::black_box(v);
        picture(Coder::ByHand, 300);
        picture(Coder::ByHand, 20);
        // Other tests may code pictures at the same time: at least these two are counted.
        let (n, bytes) = before.pictures_since(Coder::ByHand);
        assert!(n >= 2 && bytes >= 320, "{n} pictures, {bytes} bytes");
        let spent = before.since();
        let convert = spent.iter().find(|(n, _)| *n == "convert").unwrap().1;
        // Other tests may convert at the same time: at least this one's 20 ms is there.
        assert!(convert >= 19.0, "{spent:?}");
    }
}
