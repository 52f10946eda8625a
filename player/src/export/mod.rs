//! Export of a session to standard MP4, remuxed with libavformat (no re-encode), with the index
//! (`moov`) at the front (`faststart`) so browsers, VLC and `ffprobe` open it and can seek at once.
//!
//! The chunks of a session are fragmented MP4 whose `tfdt` continues one timeline, so the init
//! segment followed by its chunks is one valid fragmented file; libavformat reads it and writes a
//! progressive MP4. The concatenation is staged in a temporary file beside the output (never in
//! memory: there is no size cap). An MP4 track has one sample description, so a screen-size
//! change (a new init segment) starts a new file: `out.mp4`, `out.part2.mp4`, ..., each starting
//! at time 0 and reported with the session time it begins at.
//!
//! The session is verified while it is read; an export of a session that does not verify is
//! refused unless the caller allows it, and then says so.
//!
//! Each file carries, beside the video, a subtitle track of the session's commands, windows,
//! ledger entries and flags at their times ([`subtitles`]), so that the evidence still says what
//! happened when it travels without the player.

pub mod subtitles;

use std::fs::File;
use std::io::{BufWriter, Write};
use std::path::{Path, PathBuf};

use ffmpeg_next as ffmpeg;
use jitrec_format::{ChunkManifest, Event, EventKind, ObjectKey, SessionId, SessionKey};

use crate::scan::{Found, SessionScan};
use crate::verify::{Report, Verdict, report};
use jitrec_bucket::{BucketError, BucketReader};

/// Why an export failed.
#[derive(Debug, thiserror::Error)]
pub enum ExportError {
    #[error(transparent)]
    Store(#[from] BucketError),
    #[error("session {0} has no chunks in the bucket")]
    Empty(SessionId),
    #[error(
        "session {session} does not verify; export refused (allow it explicitly to export anyway):\n{report}"
    )]
    NotIntact {
        session: SessionId,
        report: Box<Report>,
    },
    #[error("{0} is missing from the bucket")]
    Missing(String),
    /// A segment is not the size its manifest states (changed since it was verified, or an
    /// unverified export of a session whose segment was altered): never exported as it is.
    #[error("{0}")]
    Changed(String),
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("reading the session's flags from the index: {0}")]
    Index(String),
    #[error("remuxing {what}: {source}")]
    Ffmpeg {
        what: String,
        #[source]
        source: ffmpeg::Error,
    },
}

/// One file written.
#[derive(Debug, Clone)]
pub struct Part {
    pub path: PathBuf,
    /// Session media time the file's time 0 corresponds to.
    pub starts_at_us: u64,
    pub width: u32,
    pub height: u32,
    pub frames: u64,
    /// Media time the file covers.
    pub duration_us: u64,
    /// Samples of its subtitle track that show text.
    pub cues: usize,
}

/// What was exported.
#[derive(Debug)]
pub struct Exported {
    pub parts: Vec<Part>,
    /// The verification of what was exported.
    pub report: Report,
    pub events: Vec<Event>,
    /// The flags shown in the subtitle track.
    pub flags: Vec<crate::rules::FlagRow>,
}

/// Options of an export.
#[derive(Clone, Default)]
pub struct ExportOptions {
    /// Export even if the session does not verify.
    pub allow_unverified: bool,
    /// The player's index, whose witness record the session is checked against (bytes
    /// replaced after the player saw them are then a break) and whose enrolment record says
    /// whether its key is the machine's. Without it the export is checked against the chain
    /// and signatures only, and its report says so.
    pub witness: Option<std::sync::Arc<dyn crate::index::Index>>,
    /// The player's age identities, for an encrypted session.
    pub keyring: Option<std::sync::Arc<crate::unseal::Keyring>>,
    /// The detection rules whose flags the subtitle track shows when there is no index (with
    /// one, the flags the index holds, which the report view shows); the built-in rules when
    /// `None`.
    pub rules: Option<std::sync::Arc<crate::rules::RuleSet>>,
}

impl std::fmt::Debug for ExportOptions {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ExportOptions")
            .field("allow_unverified", &self.allow_unverified)
            .field("witness", &self.witness.as_ref().map(|i| i.backend()))
            .field("rules", &self.rules.as_ref().map(|r| r.version.clone()))
            .finish()
    }
}

fn io(path: &Path) -> impl FnOnce(std::io::Error) -> ExportError + '_ {
    move |source| ExportError::Io {
        path: path.to_owned(),
        source,
    }
}

fn ff(what: impl Into<String>) -> impl FnOnce(ffmpeg::Error) -> ExportError {
    move |source| ExportError::Ffmpeg {
        what: what.into(),
        source,
    }
}

/// The file name of part `n` (from 1) of an export to `out`.
pub fn part_path(out: &Path, n: usize) -> PathBuf {
    if n <= 1 {
        return out.to_owned();
    }
    let stem = out
        .file_stem()
        .map_or_else(|| "export".into(), |s| s.to_string_lossy().into_owned());
    out.with_file_name(format!("{stem}.part{n}.mp4"))
}

/// The name an export of `session` (part `part`, from 1) is handed out under. One the player
/// cannot vouch for (broken, or not signed by the machine's approved key) says so in its
/// name, so that a copy passed on without its report is not mistaken for verified evidence.
pub fn file_name(session: SessionId, part: usize, verified: bool) -> String {
    format!(
        "jitrec-{session}{}{}.mp4",
        if part > 1 {
            format!("-part{part}")
        } else {
            String::new()
        },
        if verified { "" } else { "-UNVERIFIED" }
    )
}

/// `path` with `-UNVERIFIED` before its extension, unless its name already says so.
pub fn unverified_path(path: &Path) -> PathBuf {
    let name = path
        .file_name()
        .map_or_else(|| "export.mp4".into(), |n| n.to_string_lossy().into_owned());
    if name.contains("UNVERIFIED") {
        return path.to_owned();
    }
    let marked = match name.rsplit_once('.') {
        Some((stem, ext)) => format!("{stem}-UNVERIFIED.{ext}"),
        None => format!("{name}-UNVERIFIED"),
    };
    path.with_file_name(marked)
}

/// Exports `session` from `src` to `out` (and `out.partN.mp4` after screen-size changes).
pub fn export(
    src: &dyn BucketReader,
    at: SessionKey,
    out: &Path,
    opts: &ExportOptions,
) -> Result<Exported, ExportError> {
    let session = at.id;
    let mut scan = SessionScan::new(at).with_keyring(opts.keyring.clone());
    let mut found = Vec::new();
    let witness = opts.witness.as_deref();
    scan.advance_witnessed(src, witness, true, &mut found)?;
    let mut report = report(&scan);
    if let Some(index) = witness {
        report.authenticity = scan
            .claim()
            .and_then(|c| crate::enroll::judge(index, &c, scan.seen()).ok())
            .map(|a| a.given(report.status));
    }
    if report.verdict == Verdict::Broken && !opts.allow_unverified {
        return Err(ExportError::NotIntact {
            session,
            report: Box::new(report),
        });
    }
    let mut chunks: Vec<ChunkManifest> = Vec::new();
    let mut events: Vec<(u64, Vec<Event>)> = Vec::new();
    for f in found {
        if let Found::Chunk {
            manifest,
            events: e,
            ..
        } = f
        {
            events.push((manifest.seq, e));
            chunks.push(*manifest);
        }
    }
    if chunks.is_empty() {
        return Err(ExportError::Empty(session));
    }
    let flags = flags_of(session, &events, opts)?;
    let lines = subtitles::lines(&events, &flags);
    ffmpeg::init().map_err(ff("initialising libav"))?;
    ffmpeg::util::log::set_level(ffmpeg::util::log::Level::Error);

    // An encrypted session's payloads are decrypted as they are copied (after their digests,
    // of the ciphertext, were checked).
    let unseal = if scan.encrypted() {
        Some(opts.keyring.as_deref().ok_or_else(|| {
            ExportError::Changed(
                "the session is encrypted: give the player's age identity (--age-identity)".into(),
            )
        })?)
    } else {
        None
    };
    let mut parts = Vec::new();
    for run in chunks.chunk_by(|a, b| a.init.id == b.init.id) {
        let path = part_path(out, parts.len() + 1);
        parts.push(remux_run(src, at, run, unseal, &lines, &path)?);
    }
    Ok(Exported {
        parts,
        report,
        events: events.into_iter().flat_map(|(_, e)| e).collect(),
        flags,
    })
}

/// Matches of one rule the subtitle track shows, from the index.
const FLAGS_PER_RULE: u32 = 2_000;

/// The flags the subtitle track shows: the index's when there is one (what the report view
/// shows), else those of `opts.rules` (or the built-in rules) over the events, matched as the
/// indexer matches them.
fn flags_of(
    session: SessionId,
    events: &[(u64, Vec<Event>)],
    opts: &ExportOptions,
) -> Result<Vec<crate::rules::FlagRow>, ExportError> {
    if let Some(index) = &opts.witness {
        // Bounded per rule: a rule matching a million times must not cost the export a
        // million rows (the subtitles show at most `MAX_LINES` lines anyway).
        return index
            .flags_bounded(session, FLAGS_PER_RULE)
            .map(|b| b.flags)
            .map_err(|e| ExportError::Index(e.to_string()));
    }
    let builtin;
    let rules = match &opts.rules {
        Some(r) => r.as_ref(),
        None => {
            builtin = crate::rules::RuleSet::builtin();
            &builtin
        }
    };
    let mut procs = crate::rules::Processes::default();
    let mut flags = Vec::new();
    for (seq, chunk) in events {
        let rows: Vec<crate::index::EventRow> = chunk
            .iter()
            .enumerate()
            .map(|(i, e)| {
                crate::index::EventRow::new(*seq, u32::try_from(i).unwrap_or(u32::MAX), e)
            })
            .collect();
        flags.extend(rules.evaluate_whole(&rows, chunk, &mut procs));
    }
    Ok(flags)
}

/// Appends object `key` to `w`, piece by piece, refusing it unless it is exactly the `size` bytes
/// its manifest states (an export never holds a whole segment in memory, nor copies more than
/// the manifest vouched for).
fn copy_object(
    src: &dyn BucketReader,
    key: ObjectKey,
    size: u64,
    sha256: &jitrec_format::Sha256Digest,
    unseal: Option<&crate::unseal::Keyring>,
    w: &mut impl Write,
    path: &Path,
) -> Result<(), ExportError> {
    if let Some(k) = unseal {
        // An age file is decrypted whole: read within the manifest's size, checked, then
        // decrypted (segments are small; the stored size bounds the plaintext).
        let sealed = src
            .get(&key, size)?
            .ok_or_else(|| ExportError::Missing(key.to_string()))?;
        if jitrec_format::Sha256Digest::of(&sealed) != *sha256 {
            return Err(ExportError::Changed(format!(
                "{key}: the bytes read for the export are not the ones the manifest names"
            )));
        }
        let plain = k
            .open(&sealed)
            .map_err(|e| ExportError::Changed(format!("{key}: cannot be decrypted: {e}")))?;
        return w.write_all(&plain).map_err(io(path));
    }
    use sha2::Digest as _;
    // Hashed as it is copied: the bytes written are the ones the manifest (checked by the scan,
    // and against the witness) vouches for, even if the object changed since the scan read it.
    let mut hasher = sha2::Sha256::new();
    let mut at = 0;
    loop {
        let piece = src
            .get_range(&key, at, jitrec_bucket::READ_PIECE)?
            .ok_or_else(|| ExportError::Missing(key.to_string()))?;
        if piece.total != size {
            return Err(ExportError::Changed(format!(
                "{key}: {} bytes stored, the manifest says {size}",
                piece.total
            )));
        }
        if piece.bytes.is_empty() {
            break;
        }
        at += piece.bytes.len() as u64;
        hasher.update(&piece.bytes);
        w.write_all(&piece.bytes).map_err(io(path))?;
        if at >= size {
            break;
        }
    }
    if jitrec_format::Sha256Digest::from_bytes(hasher.finalize().into()) != *sha256 {
        return Err(ExportError::Changed(format!(
            "{key}: the bytes read for the export are not the ones the manifest names"
        )));
    }
    Ok(())
}

/// Writes the chunks of one init segment as one MP4.
fn remux_run(
    src: &dyn BucketReader,
    at: SessionKey,
    run: &[ChunkManifest],
    unseal: Option<&crate::unseal::Keyring>,
    lines: &[subtitles::Line],
    out: &Path,
) -> Result<Part, ExportError> {
    let first = &run[0];
    let dir = out
        .parent()
        .filter(|d| !d.as_os_str().is_empty())
        .unwrap_or(Path::new("."));
    let staged = tempfile::Builder::new()
        .prefix(".jitrec-export-")
        .suffix(".mp4")
        .tempfile_in(dir)
        .map_err(io(dir))?;
    {
        let mut w = BufWriter::new(staged.as_file());
        copy_object(
            src,
            ObjectKey::Init(at, first.init.id),
            first.init.size,
            &first.init.sha256,
            unseal,
            &mut w,
            staged.path(),
        )?;
        for c in run {
            copy_object(
                src,
                ObjectKey::ChunkVideo(at, c.seq),
                c.video.size,
                &c.video.sha256,
                unseal,
                &mut w,
                staged.path(),
            )?;
        }
        w.flush().map_err(io(staged.path()))?;
    }

    let what = out.display().to_string();
    let mut input = ffmpeg::format::input(&staged.path()).map_err(ff(what.clone()))?;
    let (in_index, in_tb, params) = {
        let s = input
            .streams()
            .best(ffmpeg::media::Type::Video)
            .ok_or(ExportError::Ffmpeg {
                what: what.clone(),
                source: ffmpeg::Error::StreamNotFound,
            })?;
        (s.index(), s.time_base(), s.parameters())
    };
    let mut output = ffmpeg::format::output_as(&out, "mp4").map_err(ff(what.clone()))?;
    {
        let mut os = output
            .add_stream(ffmpeg::encoder::find(ffmpeg::codec::Id::None))
            .map_err(ff(what.clone()))?;
        // The input's codec tag is `avc1`, which MP4 takes as is.
        os.set_parameters(params);
        os.set_time_base(in_tb);
    }
    let from_us = first.media_start_us.as_micros();
    let last = &run[run.len() - 1];
    let duration_us = last.media_end_us.as_micros().saturating_sub(from_us);
    let cues = subtitles::cues(lines, from_us, duration_us);
    let ms = ffmpeg::Rational(1, 1000);
    {
        let mut ss = output
            .add_stream(ffmpeg::encoder::find(ffmpeg::codec::Id::None))
            .map_err(ff(what.clone()))?;
        ss.set_parameters(
            subtitles::parameters(first.init.width, first.init.height).map_err(ff(what.clone()))?,
        );
        ss.set_time_base(ms);
        let mut meta = ffmpeg::Dictionary::new();
        meta.set("handler_name", "jitrec events");
        meta.set("title", "jitrec events");
        ss.set_metadata(meta);
    }
    let mut opts = ffmpeg::Dictionary::new();
    opts.set("movflags", "+faststart");
    output.write_header_with(opts).map_err(ff(what.clone()))?;
    let out_tb = output.stream(0).map(|s| s.time_base()).unwrap_or(in_tb);
    let sub_tb = output.stream(1).map(|s| s.time_base()).unwrap_or(ms);
    // The part's time 0 is its first chunk's start on the session clock; its end is the last
    // chunk's end. libavformat reports a nominal duration for fragmented samples, so the last
    // packet (held back one step) gets its true duration from the manifests.
    let micros = ffmpeg::Rational(1, 1_000_000);
    let base = rescale(first.media_start_us.as_micros(), micros, in_tb);
    let end = rescale(last.media_end_us.as_micros(), micros, in_tb) - base;
    let mut held: Option<ffmpeg::Packet> = None;
    let mut frames = 0u64;
    let write = |mut p: ffmpeg::Packet, output: &mut ffmpeg::format::context::Output| {
        p.rescale_ts(in_tb, out_tb);
        p.set_stream(0);
        p.set_position(-1);
        p.write_interleaved(output).map_err(ff(what.clone()))
    };
    // Cues go out in time order among the video packets (the muxer interleaves by time).
    let mut pending = cues.iter().peekable();
    let write_cue = |c: &subtitles::Cue, output: &mut ffmpeg::format::context::Output| {
        let mut p = ffmpeg::Packet::copy(&subtitles::sample(&c.text));
        p.set_pts(Some(c.start_ms));
        p.set_dts(Some(c.start_ms));
        p.set_duration(c.end_ms - c.start_ms);
        p.rescale_ts(ms, sub_tb);
        p.set_stream(1);
        p.set_position(-1);
        p.write_interleaved(output).map_err(ff(what.clone()))
    };
    for (stream, mut packet) in input.packets() {
        if stream.index() != in_index {
            continue;
        }
        let t_ms = packet
            .dts()
            .map_or(0, |t| rescale_signed(t - base, in_tb, ms));
        while let Some(c) = pending.next_if(|c| c.start_ms <= t_ms) {
            write_cue(c, &mut output)?;
        }
        packet.set_pts(packet.pts().map(|t| t - base));
        packet.set_dts(packet.dts().map(|t| t - base));
        if let Some(prev) = held.replace(packet) {
            write(prev, &mut output)?;
        }
        frames += 1;
    }
    if let Some(mut p) = held {
        if let Some(t) = p.pts()
            && end > t
        {
            p.set_duration(end - t);
        }
        write(p, &mut output)?;
    }
    for c in pending {
        write_cue(c, &mut output)?;
    }
    output
        .write_trailer()
        .map_err(ff(out.display().to_string()))?;
    Ok(Part {
        path: out.to_owned(),
        starts_at_us: first.media_start_us.as_micros(),
        width: first.init.width,
        height: first.init.height,
        frames,
        duration_us: last.media_end_us.as_micros() - first.media_start_us.as_micros(),
        cues: cues.iter().filter(|c| !c.text.is_empty()).count(),
    })
}

/// `t` in time base `from`, in time base `to` (rounded down).
fn rescale(t: u64, from: ffmpeg::Rational, to: ffmpeg::Rational) -> i64 {
    let num = i128::from(t) * i128::from(from.numerator()) * i128::from(to.denominator());
    let den = i128::from(from.denominator()) * i128::from(to.numerator());
    if den == 0 {
        return 0;
    }
    i64::try_from(num / den).unwrap_or(i64::MAX)
}

/// `t` (which may be negative) in time base `from`, in time base `to`.
fn rescale_signed(t: i64, from: ffmpeg::Rational, to: ffmpeg::Rational) -> i64 {
    let sign = if t < 0 { -1 } else { 1 };
    sign * rescale(t.unsigned_abs(), from, to)
}

/// Writes the events as a JSON array (one object per event, as stored).
pub fn write_events_json(events: &[Event], path: &Path) -> Result<(), ExportError> {
    let f = File::create(path).map_err(io(path))?;
    let mut w = BufWriter::new(f);
    serde_json::to_writer_pretty(&mut w, events).map_err(|e| ExportError::Io {
        path: path.to_owned(),
        source: std::io::Error::other(e),
    })?;
    w.flush().map_err(io(path))
}

/// A WebVTT cue time (`HH:MM:SS.mmm`) for `us` microseconds.
pub fn vtt_time(us: u64) -> String {
    let ms = us / 1000;
    format!(
        "{:02}:{:02}:{:02}.{:03}",
        ms / 3_600_000,
        ms / 60_000 % 60,
        ms / 1000 % 60,
        ms % 1000
    )
}

/// WebVTT chapters from window focus and title events: each cue runs until the next one (the
/// last until `end_us`). Times are session media time minus `offset_us` (the part's start).
pub fn webvtt_chapters(events: &[Event], offset_us: u64, end_us: u64) -> String {
    let titles: Vec<(u64, &str)> = events
        .iter()
        .filter_map(|e| match &e.event {
            EventKind::WindowFocus(w) | EventKind::WindowTitle(w) => {
                Some((e.media_us.as_micros(), w.title.as_str()))
            }
            _ => None,
        })
        .filter(|(t, _)| *t >= offset_us && *t < end_us)
        .collect();
    let stamp = |us: u64| vtt_time(us - offset_us);
    let mut out = String::from("WEBVTT\n");
    for (i, (t, title)) in titles.iter().enumerate() {
        let until = titles.get(i + 1).map_or(end_us, |n| n.0);
        if until <= *t {
            continue;
        }
        // A cue's text may not contain "-->" or a blank line.
        let text = title.replace("-->", "->").replace('\n', " ");
        out.push_str(&format!(
            "\n{}\n{} --> {}\n{}\n",
            i + 1,
            stamp(*t),
            stamp(until),
            text
        ));
    }
    out
}

#[cfg(test)]
mod tests {
    use jitrec_format::{MediaTime, WindowInfo};

    use super::*;

    #[test]
    fn unverified_exports_say_so_in_their_names() {
        let id: SessionId = "0190a0b0-0000-7000-8000-000000000001".parse().unwrap();
        assert_eq!(
            file_name(id, 1, true),
            "jitrec-0190a0b0-0000-7000-8000-000000000001.mp4"
        );
        assert_eq!(
            file_name(id, 2, false),
            "jitrec-0190a0b0-0000-7000-8000-000000000001-part2-UNVERIFIED.mp4"
        );
        assert_eq!(
            unverified_path(Path::new("/x/s.part2.mp4")),
            Path::new("/x/s.part2-UNVERIFIED.mp4")
        );
        assert_eq!(
            unverified_path(Path::new("/x/s-UNVERIFIED.mp4")),
            Path::new("/x/s-UNVERIFIED.mp4")
        );
    }

    #[test]
    fn part_names() {
        assert_eq!(part_path(Path::new("/x/a.mp4"), 1), Path::new("/x/a.mp4"));
        assert_eq!(
            part_path(Path::new("/x/a.mp4"), 2),
            Path::new("/x/a.part2.mp4")
        );
    }

    #[test]
    fn chapters_run_from_title_to_title() {
        let t = chrono::DateTime::from_timestamp(1_700_000_000, 0).unwrap_or_default();
        let w = |us: u64, title: &str| Event {
            media_us: MediaTime::from_micros(us),
            utc: t,
            event: EventKind::WindowTitle(WindowInfo {
                window: "0x1".into(),
                title: title.into(),
                pid: None,
            }),
        };
        let vtt = webvtt_chapters(
            &[w(500_000, "vi --> x"), w(61_250_000, "top")],
            0,
            70_000_000,
        );
        assert_eq!(
            vtt,
            "WEBVTT\n\n1\n00:00:00.500 --> 00:01:01.250\nvi -> x\n\n2\n00:01:01.250 --> 00:01:10.000\ntop\n"
        );
    }
}
