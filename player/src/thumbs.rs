//! The filmstrip: a small picture of the first frame of each chunk that starts with a keyframe,
//! shown along the session page's seek bar so a reviewer sees where the screen changed before
//! playing.
//!
//! This is the one place the player decodes video, and the video is endpoint-written (the
//! browser decodes what it plays; the player only remuxes). A decoder fed hostile H.264 is an
//! attack surface the player does not take into its own address space: each picture is made by
//! a child process (`jitrec-player thumbnail FILE`, [`render`]) that first gives itself limits
//! ([`confine`]: 1 GiB of address space, 3 s of CPU, no file grown, no core, no new process, few
//! descriptors, no new privileges), then opens its input with the MP4 demuxer, the file protocol
//! and the H.264 decoder alone (whatever the bytes claim to be), decodes on one thread, and
//! writes a PNG to its standard output. Its input is an in-memory file (`memfd`) on its standard
//! input, so a decrypted frame never touches a disk; it starts with an empty environment and is
//! killed after [`TIMEOUT`]. What this does not do yet: a system-call filter, and another
//! account than the player's (a decoder exploit runs with the player's rights, less the limits).
//!
//! The player hands the child only bytes its witness record vouches for (the same check as
//! media it serves), of chunks at most [`MAX_INPUT`] (real ones are well under 1 MiB), and keeps
//! what it made in a cache bounded in bytes: a chunk's bytes never change once witnessed, so
//! neither does its picture, nor the decoder's failure to make one (a hostile chunk costs its CPU
//! once; a child killed for time is tried again).
//! At most [`CONCURRENT`] children run at once; a request that cannot get one within
//! [`QUEUE_WAIT`] is answered 503.

use std::collections::HashMap;
use std::path::Path;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use ffmpeg_next as ffmpeg;
use jitrec_format::SessionId;

/// Width of a picture, in pixels (its height keeps the screen's proportions, at most twice the
/// width).
pub const WIDTH: u32 = 192;
/// The largest picture accepted from the child (192 x 384 of noise is about 220 KiB).
pub const MAX_PICTURE_BYTES: usize = 512 * 1024;
/// The largest chunk (and init segment) a picture is made of.
pub const MAX_INPUT: u64 = 8 * 1024 * 1024;
/// How long a child may take before it is killed.
pub const TIMEOUT: Duration = Duration::from_secs(15);
/// Children at once, across all requests (decoding is CPU work on the player's machine).
pub const CONCURRENT: usize = 2;
/// How long a request waits for a child before it is answered 503.
pub const QUEUE_WAIT: Duration = Duration::from_secs(20);
/// Bytes of pictures (and failures) kept in memory; when full, the cache starts again.
pub const CACHE_BYTES: usize = 64 * 1024 * 1024;
/// The largest screen a picture is made of (the format allows no larger).
const MAX_SIDE: u32 = 8192;
/// Packets read looking for the first frame.
const MAX_PACKETS: usize = 600;

/// Why no picture was made.
#[derive(Debug, thiserror::Error)]
pub enum ThumbError {
    #[error("decoding: {0}")]
    Ffmpeg(#[from] ffmpeg::Error),
    #[error("the chunk has no frame that decodes")]
    NoFrame,
    #[error("a {0}x{1} frame is not a screen")]
    Size(u32, u32),
    #[error("the segment is not H.264")]
    NotH264,
    #[error("{0}")]
    Io(#[from] std::io::Error),
    #[error("the thumbnail process failed: {0}")]
    Child(String),
    #[error("the thumbnail process took longer than {0:?} and was killed")]
    TimedOut(Duration),
}

/// In the child, before it reads a byte: the limits it decodes under. The address-space limit
/// bounds what a bomb can allocate, the CPU limit what a decoder loop can burn (SIGXCPU, then
/// SIGKILL), the file-size limit makes every write that would grow a file fail (the picture
/// goes to a pipe), the process limit keeps it from forking or starting threads (for an account
/// other than root), and no new privileges means nothing it could exec gains any.
pub fn confine() -> Result<(), ThumbError> {
    use rustix::process::{Resource, Rlimit, setrlimit};
    let limit = |r: Resource, v: u64| {
        setrlimit(
            r,
            Rlimit {
                current: Some(v),
                maximum: Some(v),
            },
        )
        .map_err(std::io::Error::from)
    };
    limit(Resource::As, 1 << 30)?;
    limit(Resource::Cpu, 3)?;
    limit(Resource::Fsize, 0)?;
    limit(Resource::Core, 0)?;
    limit(Resource::Nofile, 32)?;
    // No new process or thread (the decoder runs on this one; root is not held to it).
    limit(Resource::Nproc, 0)?;
    rustix::thread::set_no_new_privs(true).map_err(std::io::Error::from)?;
    Ok(())
}

/// In the child: the picture (PNG, [`WIDTH`] wide) of the first frame of `input`, an init
/// segment followed by one chunk that starts with a keyframe.
pub fn render(input: &Path) -> Result<Vec<u8>, ThumbError> {
    ffmpeg::init()?;
    ffmpeg::util::log::set_level(ffmpeg::util::log::Level::Fatal);
    // Whatever the bytes claim to be, they are read as MP4 from a file and decoded as H.264:
    // no other demuxer, protocol or decoder of libav is reachable from them.
    let mut only = ffmpeg::Dictionary::new();
    only.set("format_whitelist", "mov,mp4,m4a,3gp,3g2,mj2");
    only.set("protocol_whitelist", "file");
    only.set("codec_whitelist", "h264");
    let mut ictx = ffmpeg::format::input_with_dictionary(&input, only)?;
    let (index, params) = {
        let s = ictx
            .streams()
            .best(ffmpeg::media::Type::Video)
            .ok_or(ThumbError::NoFrame)?;
        (s.index(), s.parameters())
    };
    if params.id() != ffmpeg::codec::Id::H264 {
        return Err(ThumbError::NotH264);
    }
    let mut ctx = ffmpeg::codec::context::Context::from_parameters(params)?;
    ctx.set_threading(ffmpeg::threading::Config {
        kind: ffmpeg::threading::Type::None,
        count: 1,
        ..Default::default()
    });
    let mut decoder = ctx.decoder().video()?;
    let mut frame = ffmpeg::frame::Video::empty();
    let mut got = false;
    for (stream, packet) in ictx.packets().take(MAX_PACKETS) {
        if stream.index() != index {
            continue;
        }
        // A packet the decoder refuses is skipped: the next may still give the frame.
        if decoder.send_packet(&packet).is_err() {
            continue;
        }
        if decoder.receive_frame(&mut frame).is_ok() {
            got = true;
            break;
        }
    }
    if !got {
        decoder.send_eof()?;
        got = decoder.receive_frame(&mut frame).is_ok();
    }
    if !got {
        return Err(ThumbError::NoFrame);
    }
    let (w, h) = (frame.width(), frame.height());
    if w == 0 || h == 0 || w > MAX_SIDE || h > MAX_SIDE {
        return Err(ThumbError::Size(w, h));
    }
    // Even, at least 2: what the scaler and the encoder take.
    let th = ((u64::from(h) * u64::from(WIDTH) / u64::from(w)) as u32 / 2 * 2).clamp(2, WIDTH * 2);
    let mut scaler = ffmpeg::software::scaling::Context::get(
        frame.format(),
        w,
        h,
        ffmpeg::format::Pixel::RGB24,
        WIDTH,
        th,
        ffmpeg::software::scaling::Flags::AREA,
    )?;
    let mut rgb = ffmpeg::frame::Video::empty();
    scaler.run(&frame, &mut rgb)?;
    let codec = ffmpeg::encoder::find(ffmpeg::codec::Id::PNG).ok_or(ThumbError::NoFrame)?;
    let mut enc = ffmpeg::codec::context::Context::new_with_codec(codec)
        .encoder()
        .video()?;
    enc.set_width(WIDTH);
    enc.set_height(th);
    enc.set_format(ffmpeg::format::Pixel::RGB24);
    enc.set_time_base((1, 1));
    let mut enc = enc.open_as(codec)?;
    rgb.set_pts(Some(0));
    enc.send_frame(&rgb)?;
    enc.send_eof()?;
    let mut packet = ffmpeg::Packet::empty();
    enc.receive_packet(&mut packet)?;
    Ok(packet.data().unwrap_or_default().to_vec())
}

/// In the player: the picture of `init` + `chunk`, made by `exe thumbnail` (this program) in a
/// confined child process.
pub async fn render_confined(exe: &Path, init: &[u8], chunk: &[u8]) -> Result<Vec<u8>, ThumbError> {
    use std::io::Write as _;
    use tokio::io::AsyncReadExt as _;
    // The two segments in an in-memory file, handed over as the child's standard input and
    // opened by it as /proc/self/fd/0 (seekable, unlike a pipe; on no disk).
    let fd = rustix::fs::memfd_create("jitrec-thumb", rustix::fs::MemfdFlags::CLOEXEC)
        .map_err(std::io::Error::from)?;
    let mut input = std::fs::File::from(fd);
    input.write_all(init)?;
    input.write_all(chunk)?;
    let mut child = tokio::process::Command::new(exe)
        .arg("thumbnail")
        .arg("/proc/self/fd/0")
        .env_clear()
        .stdin(std::process::Stdio::from(input))
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .kill_on_drop(true)
        .spawn()?;
    let (Some(stdout), Some(stderr)) = (child.stdout.take(), child.stderr.take()) else {
        return Err(ThumbError::Child("no pipes to the child".into()));
    };
    let work = async {
        let mut out = Vec::new();
        let mut err = Vec::new();
        let limit = u64::try_from(MAX_PICTURE_BYTES).unwrap_or(u64::MAX) + 1;
        let (mut stdout, mut stderr) = (stdout.take(limit), stderr.take(4096));
        let (o, e) = tokio::join!(stdout.read_to_end(&mut out), stderr.read_to_end(&mut err));
        o?;
        e?;
        let status = child.wait().await?;
        Ok::<_, std::io::Error>((status, out, err))
    };
    let (status, out, err) = tokio::time::timeout(TIMEOUT, work)
        .await
        .map_err(|_| ThumbError::TimedOut(TIMEOUT))??;
    if !status.success() {
        let said = String::from_utf8_lossy(&err);
        return Err(ThumbError::Child(format!(
            "{status}: {}",
            crate::auth::bounded(said.trim(), 300)
        )));
    }
    if out.len() > MAX_PICTURE_BYTES {
        return Err(ThumbError::Child(format!(
            "its picture is over {MAX_PICTURE_BYTES} bytes"
        )));
    }
    if !out.starts_with(b"\x89PNG\r\n\x1a\n") {
        return Err(ThumbError::Child("its output is not a PNG".into()));
    }
    Ok(out)
}

/// A picture, or why none could be made of the chunk, shared between the cache and the
/// responses.
pub type Made = Arc<Result<Vec<u8>, String>>;

#[derive(Debug, Default)]
struct Kept {
    made: HashMap<(SessionId, u64), Made>,
    bytes: usize,
}

/// What was made, by session and chunk, bounded in bytes.
#[derive(Debug)]
pub struct Cache {
    kept: Mutex<Kept>,
    /// At most [`CONCURRENT`] children at once.
    pub children: tokio::sync::Semaphore,
}

impl Cache {
    pub fn new() -> Self {
        Self {
            kept: Mutex::default(),
            children: tokio::sync::Semaphore::new(CONCURRENT),
        }
    }

    pub fn get(&self, id: SessionId, seq: u64) -> Option<Made> {
        self.kept
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .made
            .get(&(id, seq))
            .cloned()
    }

    pub fn put(&self, id: SessionId, seq: u64, made: Made) {
        let size = match made.as_ref() {
            Ok(p) => p.len(),
            Err(e) => e.len(),
        } + 64;
        let mut k = self.kept.lock().unwrap_or_else(PoisonError::into_inner);
        if k.bytes + size > CACHE_BYTES {
            k.made.clear();
            k.bytes = 0;
        }
        if k.made.insert((id, seq), made).is_none() {
            k.bytes += size;
        }
    }
}

impl Default for Cache {
    fn default() -> Self {
        Self::new()
    }
}

/// The filmstrip of one player: the program run as its decoder and what it made.
#[derive(Debug)]
pub struct Filmstrip {
    /// Run as `PROGRAM thumbnail FILE`: the player itself.
    pub program: std::path::PathBuf,
    pub cache: Cache,
}

impl Filmstrip {
    pub fn new(program: std::path::PathBuf) -> Self {
        Self {
            program,
            cache: Cache::new(),
        }
    }
}
