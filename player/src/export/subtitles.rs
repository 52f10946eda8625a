//! The subtitle track of an export: what the session's events say, as text over the picture at
//! the moment it happened, so that an MP4 passed on without the player still shows which
//! commands ran, which windows had focus, what the ledger saw change and what the detection
//! rules flagged.
//!
//! The track is 3GPP timed text (`mov_text`, sample entry `tx3g`), the subtitle format MP4
//! players (QuickTime, VLC, mpv, ffmpeg) read. A sample is a 16-bit length and UTF-8 text; the
//! track is one run of samples from 0 to the part's end, an empty sample where nothing is shown.
//! The samples are written here, not by libavcodec's `mov_text` encoder: that encoder takes only
//! ASS input and an ASS header that ffmpeg-next cannot hand it, and the format is small enough to
//! write whole. What libavformat needs besides is the sample description (`extradata`), which
//! ffmpeg-next has no setter for: [`parameters`] is this crate's one use of `unsafe` for it.
//!
//! Events come from the endpoint, so their text is hostile: control, line- and paragraph-
//! separator and bidirectional-override characters are replaced (a title cannot reorder or hide
//! the text after it), every line is bounded, and a session of a million events yields at most
//! [`MAX_LINES`] lines (flags first), saying how many were left out.

use ffmpeg_next as ffmpeg;
use jitrec_format::{Event, EventKind};

use crate::rules::FlagRow;

/// How long a line stays on the screen (unless the part ends first).
pub const HOLD_US: u64 = 4_000_000;
/// Lines shown at once: the newest; the count of the others is said.
pub const MAX_SHOWN: usize = 6;
/// Of those, flags at most: the rest is left to the newest commands and events.
pub const MAX_FLAGS_SHOWN: usize = 4;
/// Characters of one line (a command line keeps its start and its end).
pub const MAX_LINE_CHARS: usize = 160;
/// Lines of a whole export.
pub const MAX_LINES: usize = 20_000;

/// Ranks of [`Line`]s that are not flags.
const ELEVATION: u8 = 5;
const COMMAND: u8 = 6;
const WINDOW: u8 = 7;

impl Line {
    fn is_flag(&self) -> bool {
        self.rank < ELEVATION
    }
}

/// One line of text, from `at_us` (session media time) for [`HOLD_US`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Line {
    pub at_us: u64,
    /// What is kept first when there are too many: flags, the most severe first (0 critical
    /// to 4 info), then 5 the elevation's own events (JIT, gaps, the ledger), 6 commands,
    /// 7 windows.
    rank: u8,
    pub text: String,
}

/// One sample of the track, in milliseconds of the part.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Cue {
    pub start_ms: i64,
    pub end_ms: i64,
    /// Empty where nothing is shown.
    pub text: String,
}

/// `s` fit for one line of a subtitle: characters that break lines, control a terminal or
/// reorder text become spaces, and it is cut to [`MAX_LINE_CHARS`] (start and end kept).
fn clean(s: &str) -> String {
    let plain: String = s
        .chars()
        .map(|c| match c {
            // What players that render timed text as ASS (mpv, libass, ffmpeg's own decoder)
            // read as override tags and line breaks (`{\\alpha&HFF&}`, `\\N`) is shown as
            // look-alikes, never obeyed.
            '{' => '\u{ff5b}',
            '}' => '\u{ff5d}',
            '\\' => '\u{29f5}',
            c if c.is_control() || crate::auth::hides_text(c) => ' ',
            c => c,
        })
        .collect();
    crate::auth::bounded_ends(plain.trim(), MAX_LINE_CHARS)
}

/// The lines of a session's events and its flags. `events` are `(chunk seq, events of the
/// chunk)`; a process of the rest of the machine (`in_session: false`) is left out unless a
/// rule flagged it, as the report view's default timeline does.
pub fn lines(chunks: &[(u64, Vec<Event>)], flags: &[FlagRow]) -> Vec<Line> {
    let flagged: std::collections::HashSet<(u64, u32)> =
        flags.iter().map(|f| (f.seq, f.idx)).collect();
    let mut out = Vec::new();
    for (seq, events) in chunks {
        for (idx, e) in events.iter().enumerate() {
            let at_us = e.media_us.as_micros();
            let is_flagged = u32::try_from(idx).is_ok_and(|i| flagged.contains(&(*seq, i)));
            let line = match &e.event {
                EventKind::ProcessStart(p) if p.in_session != Some(false) || is_flagged => {
                    Some((COMMAND, format!("$ {}", clean(&p.command_line))))
                }
                EventKind::WindowFocus(w) => {
                    Some((WINDOW, format!("[window] {}", clean(&w.title))))
                }
                EventKind::JitStart {
                    user,
                    authorized_by,
                    ..
                } => Some((
                    ELEVATION,
                    format!(
                        "[JIT began for {}{}]",
                        clean(user),
                        authorized_by
                            .as_deref()
                            .map(|a| format!(", authorised by {}", clean(a)))
                            .unwrap_or_default()
                    ),
                )),
                EventKind::JitStop { .. } => Some((1, "[JIT ended]".to_owned())),
                EventKind::Gap { reason, .. } => Some((
                    1,
                    format!("[screen not recorded before this: {}]", clean(reason)),
                )),
                EventKind::Change {
                    area,
                    action,
                    subject,
                    ..
                } => Some((
                    ELEVATION,
                    format!(
                        "[changed] {}: {} {}",
                        clean(area),
                        clean(&action.replace('_', " ")),
                        clean(subject)
                    ),
                )),
                _ => None,
            };
            if let Some((rank, text)) = line {
                out.push(Line { at_us, rank, text });
            }
        }
    }
    for f in flags {
        out.push(Line {
            at_us: f.media_us,
            rank: u8::try_from(4 - f.severity.rank().clamp(0, 4)).unwrap_or(0),
            // The flagged event's own text in it, so it is on the screen as long as the flag.
            text: clean(&format!(
                "! {} {}: {} - {}",
                f.severity.as_str().to_uppercase(),
                f.rule,
                f.text,
                f.sentence
            )),
        });
    }
    // Time order, and at one moment an event before the flag it raised.
    out.sort_by_key(|l| (l.at_us, l.is_flag()));
    if out.len() > MAX_LINES {
        let total = out.len();
        let mut keep: Vec<usize> = (0..total).collect();
        keep.sort_by_key(|&i| (out[i].rank, out[i].at_us));
        keep.truncate(MAX_LINES - 1);
        keep.sort_unstable();
        let first = out.first().map_or(0, |l| l.at_us);
        let mut kept: Vec<Line> = keep.into_iter().map(|i| out[i].clone()).collect();
        kept.insert(
            0,
            Line {
                at_us: first,
                rank: 0,
                text: format!(
                    "[{} of {total} lines left out of these subtitles: the events export has them all]",
                    total - (MAX_LINES - 1)
                ),
            },
        );
        out = kept;
    }
    out
}

/// The cues of the part that starts at session time `from_us` and lasts `duration_us`: one
/// run from 0 to its end, each cue showing the lines of the last [`HOLD_US`] (the newest
/// [`MAX_SHOWN`], flags first), an empty cue where there are none.
pub fn cues(lines: &[Line], from_us: u64, duration_us: u64) -> Vec<Cue> {
    let end = duration_us;
    // The part's lines, on its clock; sorted by start, and with one hold each also by end.
    let mine: Vec<(u64, u64, &str, u8)> = lines
        .iter()
        .filter(|l| l.at_us >= from_us && l.at_us - from_us < end)
        .map(|l| {
            let s = l.at_us - from_us;
            (s, (s + HOLD_US).min(end), l.text.as_str(), l.rank)
        })
        .collect();
    let mut bounds: Vec<u64> = mine.iter().flat_map(|&(s, e, _, _)| [s, e]).collect();
    bounds.push(0);
    bounds.push(end);
    bounds.sort_unstable();
    bounds.dedup();
    let ms = |us: u64| i64::try_from(us / 1000).unwrap_or(i64::MAX);
    let mut out: Vec<Cue> = Vec::new();
    let (mut lo, mut hi) = (0, 0);
    for w in bounds.windows(2) {
        let (t0, t1) = (w[0], w[1]);
        while hi < mine.len() && mine[hi].0 <= t0 {
            hi += 1;
        }
        while lo < hi && mine[lo].1 <= t0 {
            lo += 1;
        }
        let active = &mine[lo..hi];
        // What starts now is shown now (at most MAX_SHOWN of it, the newest): every command
        // and flag is on the screen at its own moment. Of what started before, flags stay for
        // their whole hold however many commands came after them (a burst of commands must not
        // push the one a rule flagged off the screen): up to MAX_FLAGS_SHOWN, the most severe
        // first, then the newest; the newest of the rest fill what room is left.
        let fresh: Vec<usize> = (0..active.len()).filter(|&i| active[i].0 == t0).collect();
        let fresh = &fresh[fresh.len().saturating_sub(MAX_SHOWN)..];
        let room = MAX_SHOWN - fresh.len();
        let mut flags: Vec<usize> = (0..active.len())
            .filter(|&i| active[i].0 < t0 && active[i].3 < ELEVATION)
            .collect();
        flags.sort_by_key(|&i| (active[i].3, std::cmp::Reverse(i)));
        flags.truncate(MAX_FLAGS_SHOWN.min(room));
        let room = room - flags.len();
        let rest: Vec<usize> = (0..active.len())
            .filter(|&i| active[i].0 < t0 && active[i].3 >= ELEVATION)
            .collect();
        let rest = &rest[rest.len().saturating_sub(room)..];
        let flags: Vec<usize> = fresh.iter().chain(&flags).copied().collect();
        let mut shown: Vec<usize> = flags.iter().chain(rest).copied().collect();
        shown.sort_unstable();
        let mut text = String::new();
        if active.len() > shown.len() {
            text.push_str(&format!("(+{} more)\n", active.len() - shown.len()));
        }
        text.push_str(
            &shown
                .iter()
                .map(|&i| active[i].2)
                .collect::<Vec<_>>()
                .join("\n"),
        );
        let (start_ms, end_ms) = (ms(t0), ms(t1));
        if end_ms <= start_ms {
            continue;
        }
        match out.last_mut() {
            Some(prev) if prev.text == text && prev.end_ms == start_ms => prev.end_ms = end_ms,
            _ => out.push(Cue {
                start_ms,
                end_ms,
                text,
            }),
        }
    }
    out
}

/// A `mov_text` sample: the text's length (16 bits, big-endian), then the text. Cues are
/// bounded well below 64 KiB ([`MAX_SHOWN`] lines of [`MAX_LINE_CHARS`]); a longer one would be
/// cut at a character boundary.
pub fn sample(text: &str) -> Vec<u8> {
    let mut end = text.len().min(usize::from(u16::MAX));
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    let mut out = Vec::with_capacity(2 + end);
    out.extend_from_slice(&u16::try_from(end).unwrap_or(u16::MAX).to_be_bytes());
    out.extend_from_slice(&text.as_bytes()[..end]);
    out
}

/// The `tx3g` sample description after its generic header (3GPP TS 26.245 5.16): left- and
/// bottom-justified white text on a translucent black box over the whole picture, one font.
pub fn description(width: u32, height: u32) -> Vec<u8> {
    let clamp = |v: u32| i16::try_from(v).unwrap_or(i16::MAX);
    let font_size = u8::try_from((height / 30).clamp(12, 72)).unwrap_or(18);
    let font = b"Monospace";
    let mut d = Vec::with_capacity(64);
    d.extend_from_slice(&0u32.to_be_bytes()); // display flags
    d.push(0); // horizontal justification: left
    d.push(0xff); // vertical justification: bottom (-1)
    d.extend_from_slice(&[0, 0, 0, 0xc0]); // background colour, RGBA
    // Default text box: top, left, bottom, right.
    for v in [0, 0, clamp(height), clamp(width)] {
        d.extend_from_slice(&v.to_be_bytes());
    }
    // Default style: start and end character, font id, face (plain), size, colour RGBA.
    d.extend_from_slice(&0u16.to_be_bytes());
    d.extend_from_slice(&0u16.to_be_bytes());
    d.extend_from_slice(&1u16.to_be_bytes());
    d.push(0);
    d.push(font_size);
    d.extend_from_slice(&[0xff, 0xff, 0xff, 0xff]);
    // Font table: one entry, font 1.
    let ftab_len = 8 + 2 + 2 + 1 + font.len();
    d.extend_from_slice(&u32::try_from(ftab_len).unwrap_or(0).to_be_bytes());
    d.extend_from_slice(b"ftab");
    d.extend_from_slice(&1u16.to_be_bytes());
    d.extend_from_slice(&1u16.to_be_bytes());
    d.push(u8::try_from(font.len()).unwrap_or(0));
    d.extend_from_slice(font);
    d
}

/// The codec parameters of a `mov_text` track over a `width` x `height` picture, its sample
/// description included.
#[allow(unsafe_code)]
pub fn parameters(width: u32, height: u32) -> Result<ffmpeg::codec::Parameters, ffmpeg::Error> {
    let mut p = ffmpeg::codec::Parameters::new();
    p.set_medium(ffmpeg::media::Type::Subtitle);
    p.set_id(ffmpeg::codec::Id::MOV_TEXT);
    let d = description(width, height);
    let padding = ffmpeg::ffi::AV_INPUT_BUFFER_PADDING_SIZE as usize;
    let size = i32::try_from(d.len()).map_err(|_| ffmpeg::Error::InvalidData)?;
    // SAFETY: `p` owns a valid AVCodecParameters (allocated by `Parameters::new`, freed by its
    // Drop with `avcodec_parameters_free`, which frees `extradata` with `av_free`). The buffer
    // is allocated with `av_mallocz` as libav requires of extradata, with the zeroed padding
    // its readers may read past the end, and `d.len()` bytes are copied into it, no more than
    // were allocated. Nothing else holds the pointer until `p` is copied or dropped.
    unsafe {
        let raw = p.as_mut_ptr();
        if raw.is_null() {
            return Err(ffmpeg::Error::Unknown);
        }
        let buf = ffmpeg::ffi::av_mallocz(d.len() + padding).cast::<u8>();
        if buf.is_null() {
            return Err(ffmpeg::Error::Unknown);
        }
        std::ptr::copy_nonoverlapping(d.as_ptr(), buf, d.len());
        (*raw).extradata = buf;
        (*raw).extradata_size = size;
        (*raw).width = i32::try_from(width).unwrap_or(0);
        (*raw).height = i32::try_from(height).unwrap_or(0);
    }
    Ok(p)
}

#[cfg(test)]
mod tests {
    use chrono::DateTime;
    use jitrec_format::{MediaTime, ProcessStart, UserRef, WindowInfo};

    use super::*;
    use crate::rules::Severity;

    fn at(us: u64, event: EventKind) -> Event {
        Event {
            media_us: MediaTime::from_micros(us),
            utc: DateTime::from_timestamp(1_700_000_000, 0).unwrap_or_default(),
            event,
        }
    }

    fn process(us: u64, command_line: &str, in_session: Option<bool>) -> Event {
        at(
            us,
            EventKind::ProcessStart(ProcessStart {
                pid: 7,
                ppid: 1,
                user: UserRef {
                    name: "eve".into(),
                    id: "1000".into(),
                },
                exe: "/usr/sbin/useradd".into(),
                command_line: command_line.into(),
                elevated: true,
                in_session,
            }),
        )
    }

    fn flag(seq: u64, idx: u32, us: u64) -> FlagRow {
        FlagRow {
            seq,
            idx,
            media_us: us,
            utc: DateTime::from_timestamp(1_700_000_000, 0).unwrap_or_default(),
            rule: "account.create".into(),
            severity: Severity::High,
            sentence: "A local account was created.".into(),
            text: "useradd x".into(),
        }
    }

    #[test]
    fn the_sessions_commands_and_flags_are_lines_the_machines_are_not() {
        let chunks = vec![
            (
                0,
                vec![
                    process(1_000_000, "useradd -m mallory", Some(true)),
                    process(1_500_000, "cron job of another user", Some(false)),
                ],
            ),
            (
                1,
                vec![
                    process(2_000_000, "flagged but not the session's", Some(false)),
                    at(
                        2_500_000,
                        EventKind::WindowFocus(WindowInfo {
                            window: "0x1".into(),
                            title: "vi /etc/sudoers".into(),
                            pid: None,
                        }),
                    ),
                ],
            ),
        ];
        let l = lines(&chunks, &[flag(0, 0, 1_000_000), flag(1, 0, 2_000_000)]);
        let texts: Vec<&str> = l.iter().map(|l| l.text.as_str()).collect();
        assert_eq!(
            texts,
            [
                "$ useradd -m mallory",
                "! HIGH account.create: useradd x - A local account was created.",
                "$ flagged but not the session's",
                "! HIGH account.create: useradd x - A local account was created.",
                "[window] vi /etc/sudoers",
            ]
        );
    }

    #[test]
    fn hostile_text_cannot_break_lines_reorder_or_grow() {
        let evil = format!(
            "ls\n00:00:00.000 --> 99:00:00.000\r\u{2028}\u{202e}gnp.exe\u{1b}[2J{}",
            "x".repeat(10_000)
        );
        let l = lines(&[(0, vec![process(0, &evil, None)])], &[]);
        assert_eq!(l.len(), 1);
        let t = &l[0].text;
        assert!(
            !t.contains(['\n', '\r', '\u{2028}', '\u{202e}', '\u{1b}']),
            "{t}"
        );
        assert!(t.chars().count() < MAX_LINE_CHARS + 60, "{}", t.len());
        assert!(t.starts_with("$ ls "), "{t}");
    }

    #[test]
    fn a_flood_is_cut_to_the_bound_flags_first_and_says_so() {
        let events: Vec<Event> = (0..MAX_LINES as u64 + 500)
            .map(|i| process(i * 1000, "true", Some(true)))
            .collect();
        let l = lines(&[(0, events)], &[flag(0, 30_000, 99_000_000)]);
        assert_eq!(l.len(), MAX_LINES);
        assert!(
            l[0].text.contains("502 of 20501 lines left out"),
            "{}",
            l[0].text
        );
        assert!(
            l.iter().any(|l| l.text.starts_with("! HIGH")),
            "the flag is kept"
        );
    }

    #[test]
    fn cues_cover_the_part_and_hold_each_line() {
        let line = |us: u64, text: &str| Line {
            at_us: us,
            rank: COMMAND,
            text: text.into(),
        };
        let l = [
            line(1_000_000, "a"),
            line(3_000_000, "b"),
            line(20_000_000, "c"),
        ];
        let c = cues(&l, 0, 10_000_000);
        let cue = |s: i64, e: i64, t: &str| Cue {
            start_ms: s,
            end_ms: e,
            text: t.into(),
        };
        assert_eq!(
            c,
            [
                cue(0, 1000, ""),
                cue(1000, 3000, "a"),
                cue(3000, 5000, "a\nb"),
                cue(5000, 7000, "b"),
                cue(7000, 10_000, ""),
            ]
        );
        // A later part: its own clock, the line before it left out.
        let c = cues(&l, 2_000_000, 4_000_000);
        assert_eq!(c, [cue(0, 1000, ""), cue(1000, 4000, "b")]);
    }

    #[test]
    fn only_the_newest_lines_show_with_a_count_of_the_rest() {
        let l: Vec<Line> = (0..10)
            .map(|i| Line {
                at_us: 1_000_000,
                rank: COMMAND,
                text: format!("cmd {i}"),
            })
            .collect();
        let c = cues(&l, 0, 2_000_000);
        assert_eq!(
            c[1].text,
            "(+4 more)\ncmd 4\ncmd 5\ncmd 6\ncmd 7\ncmd 8\ncmd 9"
        );
    }

    #[test]
    fn a_burst_of_commands_cannot_push_a_flag_off_the_screen() {
        let mut l = vec![Line {
            at_us: 1_000_000,
            rank: 1,
            text: "! HIGH evil".into(),
        }];
        l.extend((0..20).map(|i| Line {
            at_us: 1_000_100 + i,
            rank: COMMAND,
            text: format!("$ true {i}"),
        }));
        let c = cues(&l, 0, 10_000_000);
        let shown: Vec<&Cue> = c
            .iter()
            .filter(|c| c.text.contains("! HIGH evil"))
            .collect();
        let from = shown.first().unwrap().start_ms;
        let until = shown.last().unwrap().end_ms;
        assert_eq!(
            (from, until),
            (1000, 5000),
            "shown for its whole hold: {c:#?}"
        );
        // And the newest commands still show beside the flags.
        assert!(
            c.iter()
                .any(|c| c.text.contains("! HIGH evil") && c.text.contains("$ true 19"))
        );
        // A flood of flags leaves room for commands too, the most severe flags kept.
        let mut l: Vec<Line> = (0..10)
            .map(|i| Line {
                at_us: 1_000_000 + i,
                rank: 3,
                text: format!("! LOW {i}"),
            })
            .collect();
        l.insert(
            0,
            Line {
                at_us: 999_999,
                rank: 0,
                text: "! CRITICAL first".into(),
            },
        );
        l.push(Line {
            at_us: 1_000_100,
            rank: COMMAND,
            text: "$ ls".into(),
        });
        let c = cues(&l, 0, 10_000_000);
        let busiest = c.iter().find(|c| c.text.contains("$ ls")).unwrap();
        assert!(busiest.text.contains("! CRITICAL first"), "{busiest:?}");
        assert_eq!(
            busiest.text.lines().filter(|l| l.starts_with('!')).count(),
            MAX_FLAGS_SHOWN
        );
    }

    #[test]
    fn override_tags_are_shown_not_obeyed() {
        let t = clean("{\\alpha&HFF&}x\\N[JIT ended]");
        assert!(!t.contains(['{', '}', '\\']), "{t}");
    }

    #[test]
    fn samples_and_the_description_are_as_3gpp_says() {
        assert_eq!(sample("ab"), [0, 2, b'a', b'b']);
        assert_eq!(sample(""), [0, 0]);
        let d = description(640, 400);
        // 4 + 1 + 1 + 4 (colour) + 8 (box) + 12 (style), then the font table box.
        assert_eq!(&d[30..34], &(8u32 + 2 + 2 + 1 + 9).to_be_bytes());
        assert_eq!(&d[34..38], b"ftab");
        assert_eq!(d.len(), 30 + 22);
        assert_eq!(&d[14..18], &[1, 144, 2, 128], "box bottom 400, right 640");
    }
}
