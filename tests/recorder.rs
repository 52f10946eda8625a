//! The recorder's encoder and chunker on a scripted screen: real libx264, real spool, decoded by
//! Debian's `ffprobe` and `ffmpeg`.

use std::path::Path;
use std::process::Command;
use std::time::Duration;

use jitrec_format::{ChainVerifier, ChunkManifest, EndReason, MediaTime, SessionId, fixtures};
use jitrec_recorder::capture::SyntheticScreen;
use jitrec_recorder::encode::EncoderConfig;
use jitrec_recorder::pipeline::record_scripted;
use jitrec_spool::{Entry, SpoolConfig, SpoolReader, SpoolWriter};

const W: u32 = 320;
const H: u32 = 240;
const GRAY: [u8; 4] = [64, 64, 64, 255];
const RED: [u8; 4] = [0, 0, 255, 255];
const GREEN: [u8; 4] = [0, 255, 0, 255];

/// Decoded frames: (pts in seconds, RGB24 bytes).
fn decode(file: &Path) -> Vec<(f64, Vec<u8>)> {
    let probe = Command::new("ffprobe")
        .args([
            "-v",
            "error",
            "-select_streams",
            "v",
            "-show_entries",
            "frame=pts_time",
            "-of",
            "json",
        ])
        .arg(file)
        .output()
        .expect("run ffprobe (Debian package ffmpeg)");
    assert!(
        probe.status.success(),
        "ffprobe: {}",
        String::from_utf8_lossy(&probe.stderr)
    );
    let json: serde_json::Value = serde_json::from_slice(&probe.stdout).unwrap();
    let times: Vec<f64> = json["frames"]
        .as_array()
        .unwrap()
        .iter()
        .map(|f| f["pts_time"].as_str().unwrap().parse().unwrap())
        .collect();
    let raw = Command::new("ffmpeg")
        .args(["-v", "error", "-i"])
        .arg(file)
        .args([
            "-fps_mode",
            "passthrough",
            "-f",
            "rawvideo",
            "-pix_fmt",
            "rgb24",
            "-",
        ])
        .output()
        .expect("run ffmpeg");
    assert!(
        raw.status.success(),
        "ffmpeg: {}",
        String::from_utf8_lossy(&raw.stderr)
    );
    let size = (W * H * 3) as usize;
    assert_eq!(
        raw.stdout.len(),
        size * times.len(),
        "ffmpeg and ffprobe disagree on the frame count"
    );
    times
        .into_iter()
        .zip(raw.stdout.chunks(size).map(<[u8]>::to_vec))
        .collect()
}

/// The RGB pixel at (x, y) of the frame on screen at `t` seconds.
fn shown_at(frames: &[(f64, Vec<u8>)], t: f64, x: u32, y: u32) -> [u8; 3] {
    let (_, img) = frames
        .iter()
        .rev()
        .find(|(pts, _)| *pts <= t + 1e-6)
        .unwrap_or_else(|| panic!("no frame on screen at {t}"));
    let at = ((y * W + x) * 3) as usize;
    [img[at], img[at + 1], img[at + 2]]
}

fn is_colour(px: [u8; 3], rgb: [u8; 3]) -> bool {
    px.iter().zip(rgb).all(|(a, b)| a.abs_diff(b) < 40)
}

#[test]
fn a_scripted_screen_records_into_chunks_that_ffmpeg_decodes_at_the_right_times() {
    let tmp = tempfile::tempdir().unwrap();
    let (spool, _) = SpoolWriter::open(tmp.path().join("spool"), SpoolConfig::default()).unwrap();
    let sid = SessionId::new();
    let screen = SyntheticScreen {
        width: W,
        height: H,
        background: GRAY,
        paints: vec![
            (3_000_000, 40, 40, 120, 80, RED),
            (7_300_000, 200, 120, 80, 80, GREEN),
        ],
    };
    let rec = record_scripted(
        &spool,
        &fixtures::header(sid),
        &screen,
        Duration::from_secs(12),
        5,
        Duration::from_secs(2),
        EncoderConfig::default(),
    )
    .unwrap();
    // Three distinct images; everything else was idle and cost nothing but a repeat per chunk.
    assert_eq!(rec.changed_frames, 3, "{rec:?}");
    assert!(rec.repeated_frames >= 3, "{rec:?}");
    assert_eq!(rec.chunks, 6, "{rec:?}");
    drop(spool);

    // The spool holds a verifiable session: chain, payloads, contiguous chunks.
    let reader = SpoolReader::open(tmp.path().join("spool"), SpoolConfig::default()).unwrap();
    let mut chain = None;
    let mut mp4 = Vec::new();
    let mut manifests: Vec<ChunkManifest> = Vec::new();
    let mut close = None;
    for e in reader.pending(sid).unwrap() {
        match reader.read(&e).unwrap() {
            Entry::Header { bytes, .. } => chain = Some(ChainVerifier::new(&bytes).unwrap()),
            Entry::Init { bytes, .. } => mp4.extend_from_slice(&bytes),
            Entry::Chunk {
                manifest_bytes,
                manifest,
                video,
                events,
            } => {
                chain.as_mut().unwrap().push(&manifest_bytes).unwrap();
                manifest.verify_video(&video).unwrap();
                manifest.verify_events(&events).unwrap();
                mp4.extend_from_slice(&video);
                manifests.push(manifest);
            }
            Entry::Close { bytes, .. } => close = Some(bytes),
        }
    }
    let close = chain.unwrap().finish(&close.unwrap()).unwrap();
    assert_eq!(close.end_reason, EndReason::JitEnded);
    assert_eq!(close.media_end_us, MediaTime::from_micros(12_000_000));
    assert_eq!(manifests[0].media_start_us, MediaTime::ZERO);
    for pair in manifests.windows(2) {
        assert_eq!(
            pair[0].media_end_us, pair[1].media_start_us,
            "chunks must be contiguous"
        );
    }
    assert!(manifests[0].starts_with_keyframe);
    assert_eq!(manifests[0].init.width, W);
    assert!(
        manifests[0].init.codec.starts_with("avc1."),
        "{}",
        manifests[0].init.codec
    );

    // ffmpeg decodes init + every chunk; frame times are the media times the manifests state.
    let file = tmp.path().join("session.mp4");
    std::fs::write(&file, &mp4).unwrap();
    let frames = decode(&file);
    let total: u32 = manifests.iter().map(|m| m.frames).sum();
    assert_eq!(frames.len() as u32, total);
    assert!(
        frames.windows(2).all(|w| w[0].0 < w[1].0),
        "frame times must increase"
    );
    let mut i = 0;
    for m in &manifests {
        for _ in 0..m.frames {
            let t = frames[i].0;
            let (s, e) = (
                m.media_start_us.as_micros() as f64 / 1e6,
                m.media_end_us.as_micros() as f64 / 1e6,
            );
            assert!(
                t >= s - 1e-6 && t < e,
                "frame at {t} outside its chunk [{s}, {e})"
            );
            i += 1;
        }
    }

    // What was on the screen is what is decoded, at the right time.
    assert!(is_colour(shown_at(&frames, 2.9, 100, 80), [64, 64, 64]));
    assert!(is_colour(shown_at(&frames, 3.0, 100, 80), [255, 0, 0]));
    assert!(is_colour(shown_at(&frames, 7.2, 240, 160), [64, 64, 64]));
    assert!(is_colour(shown_at(&frames, 7.4, 240, 160), [0, 255, 0]));
    assert!(is_colour(shown_at(&frames, 11.9, 100, 80), [255, 0, 0]));
}
