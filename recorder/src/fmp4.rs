//! Fragmented MP4 for one H.264 track, written by hand: an init segment (`ftyp` + `moov`) and
//! media segments (`styp` + `moof` + `mdat`), the shapes Media Source Extensions and `ffprobe`
//! read.
//!
//! Writing the boxes here rather than through libavformat's muxer gives the chunker exact control
//! over what it needs: a segment ends exactly at a chunk boundary, every sample's duration is the
//! real time until the next frame (variable frame rate, long durations over idle stretches), and
//! each segment's `tfdt` continues the timeline without gaps. The box layouts follow ISO/IEC
//! 14496-12 (ISOBMFF) and 14496-15 (`avcC`).

/// One encoded frame as it goes into a segment.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Sample {
    /// In track timescale units.
    pub duration: u32,
    pub keyframe: bool,
    /// NAL units, each prefixed with its 4-byte big-endian length.
    pub data: Vec<u8>,
}

/// Splits an Annex B byte stream (start codes `00 00 01` / `00 00 00 01`) into NAL units.
pub fn annexb_nals(stream: &[u8]) -> Vec<&[u8]> {
    let mut starts = Vec::new();
    let mut i = 0;
    while i + 3 <= stream.len() {
        if stream[i] == 0 && stream[i + 1] == 0 && stream[i + 2] == 1 {
            starts.push(i + 3);
            i += 3;
        } else {
            i += 1;
        }
    }
    let mut nals = Vec::with_capacity(starts.len());
    for (k, &s) in starts.iter().enumerate() {
        let mut end = starts.get(k + 1).map_or(stream.len(), |&n| n - 3);
        // A 4-byte start code leaves a zero byte behind the previous NAL.
        while end > s && stream[end - 1] == 0 && k + 1 < starts.len() {
            end -= 1;
        }
        if end > s {
            nals.push(&stream[s..end]);
        }
    }
    nals
}

/// NAL unit types the sample data must not carry (they live in `avcC`, or mean nothing in MP4).
const NAL_SPS: u8 = 7;
const NAL_PPS: u8 = 8;
const NAL_AUD: u8 = 9;

/// Parameter sets found in an access unit, if any.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct ParameterSets {
    pub sps: Vec<u8>,
    /// The encoder's PPS, and the recorder's own for skip pictures when there is one
    /// (`crate::encode::h264`).
    pub pps: Vec<Vec<u8>>,
}

/// Converts one Annex B access unit to length-prefixed sample data, returning the parameter sets
/// it carried (x264 repeats them in-band on keyframes).
pub fn to_sample_data(access_unit: &[u8]) -> (Vec<u8>, Option<ParameterSets>) {
    let mut data = Vec::with_capacity(access_unit.len() + 16);
    let mut ps = ParameterSets::default();
    for nal in annexb_nals(access_unit) {
        match nal[0] & 0x1f {
            NAL_SPS => ps.sps = nal.to_vec(),
            NAL_PPS => ps.pps.push(nal.to_vec()),
            NAL_AUD => {}
            _ => {
                data.extend_from_slice(&(nal.len() as u32).to_be_bytes());
                data.extend_from_slice(nal);
            }
        }
    }
    let found = (!ps.sps.is_empty() && !ps.pps.is_empty()).then_some(ps);
    (data, found)
}

/// The RFC 6381 codec string (`avc1.PPCCLL`) of a stream with this SPS.
pub fn codec_string(sps: &[u8]) -> String {
    match sps {
        [_, profile, compat, level, ..] => format!("avc1.{profile:02x}{compat:02x}{level:02x}"),
        _ => "avc1.42e01e".into(),
    }
}

fn write_box(out: &mut Vec<u8>, kind: &[u8; 4], body: impl FnOnce(&mut Vec<u8>)) {
    let start = out.len();
    out.extend_from_slice(&[0, 0, 0, 0]);
    out.extend_from_slice(kind);
    body(out);
    let size = (out.len() - start) as u32;
    out[start..start + 4].copy_from_slice(&size.to_be_bytes());
}

fn write_full_box(
    out: &mut Vec<u8>,
    kind: &[u8; 4],
    version: u8,
    flags: u32,
    body: impl FnOnce(&mut Vec<u8>),
) {
    write_box(out, kind, |b| {
        b.push(version);
        b.extend_from_slice(&flags.to_be_bytes()[1..]);
        body(b);
    });
}

fn u16s(out: &mut Vec<u8>, v: &[u16]) {
    for x in v {
        out.extend_from_slice(&x.to_be_bytes());
    }
}

fn u32s(out: &mut Vec<u8>, v: &[u32]) {
    for x in v {
        out.extend_from_slice(&x.to_be_bytes());
    }
}

const MATRIX: [u32; 9] = [0x0001_0000, 0, 0, 0, 0x0001_0000, 0, 0, 0, 0x4000_0000];

/// The track id of the single video track.
const TRACK: u32 = 1;

/// An init segment for an H.264 track of `width` x `height` with timestamps in `timescale`.
pub fn init_segment(ps: &ParameterSets, width: u16, height: u16, timescale: u32) -> Vec<u8> {
    let mut out = Vec::with_capacity(800);
    write_box(&mut out, b"ftyp", |b| {
        b.extend_from_slice(b"isom");
        u32s(b, &[0x200]);
        for brand in [b"isom", b"iso5", b"iso6", b"avc1", b"mp41"] {
            b.extend_from_slice(brand);
        }
    });
    write_box(&mut out, b"moov", |b| {
        write_full_box(b, b"mvhd", 0, 0, |b| {
            u32s(b, &[0, 0, 1000, 0, 0x0001_0000]);
            u16s(b, &[0x0100, 0]);
            u32s(b, &[0, 0]);
            u32s(b, &MATRIX);
            u32s(b, &[0; 6]);
            u32s(b, &[TRACK + 1]);
        });
        write_box(b, b"trak", |b| {
            write_full_box(b, b"tkhd", 0, 0x3, |b| {
                u32s(b, &[0, 0, TRACK, 0, 0, 0, 0]);
                u16s(b, &[0, 0, 0, 0]);
                u32s(b, &MATRIX);
                u32s(b, &[u32::from(width) << 16, u32::from(height) << 16]);
            });
            write_box(b, b"mdia", |b| {
                write_full_box(b, b"mdhd", 0, 0, |b| {
                    u32s(b, &[0, 0, timescale, 0]);
                    // Language "und", packed ISO-639-2.
                    u16s(b, &[0x55c4, 0]);
                });
                write_full_box(b, b"hdlr", 0, 0, |b| {
                    u32s(b, &[0]);
                    b.extend_from_slice(b"vide");
                    u32s(b, &[0, 0, 0]);
                    b.extend_from_slice(b"jitrec screen\0");
                });
                write_box(b, b"minf", |b| {
                    write_full_box(b, b"vmhd", 0, 1, |b| u16s(b, &[0, 0, 0, 0]));
                    write_box(b, b"dinf", |b| {
                        write_full_box(b, b"dref", 0, 0, |b| {
                            u32s(b, &[1]);
                            write_full_box(b, b"url ", 0, 1, |_| {});
                        });
                    });
                    write_box(b, b"stbl", |b| {
                        write_full_box(b, b"stsd", 0, 0, |b| {
                            u32s(b, &[1]);
                            write_avc1(b, ps, width, height);
                        });
                        write_full_box(b, b"stts", 0, 0, |b| u32s(b, &[0]));
                        write_full_box(b, b"stsc", 0, 0, |b| u32s(b, &[0]));
                        write_full_box(b, b"stsz", 0, 0, |b| u32s(b, &[0, 0]));
                        write_full_box(b, b"stco", 0, 0, |b| u32s(b, &[0]));
                    });
                });
            });
        });
        write_box(b, b"mvex", |b| {
            write_full_box(b, b"trex", 0, 0, |b| u32s(b, &[TRACK, 1, 0, 0, 0]));
        });
    });
    out
}

fn write_avc1(out: &mut Vec<u8>, ps: &ParameterSets, width: u16, height: u16) {
    write_box(out, b"avc1", |b| {
        b.extend_from_slice(&[0; 6]);
        u16s(b, &[1, 0, 0]);
        u32s(b, &[0, 0, 0]);
        u16s(b, &[width, height]);
        u32s(b, &[0x0048_0000, 0x0048_0000, 0]);
        u16s(b, &[1]);
        b.extend_from_slice(&[0; 32]);
        u16s(b, &[0x0018, 0xffff]);
        write_box(b, b"avcC", |b| {
            let sps = &ps.sps;
            let (profile, compat, level) = match sps.as_slice() {
                [_, p, c, l, ..] => (*p, *c, *l),
                _ => (0x42, 0xe0, 0x1e),
            };
            // Version 1; 4-byte NAL lengths; one SPS, then the PPSs (at most 255; an
            // access unit carries one or two).
            b.extend_from_slice(&[1, profile, compat, level, 0xff, 0xe1]);
            u16s(b, &[sps.len() as u16]);
            b.extend_from_slice(sps);
            let ppss = &ps.pps[..ps.pps.len().min(255)];
            b.push(ppss.len() as u8);
            for pps in ppss {
                u16s(b, &[pps.len() as u16]);
                b.extend_from_slice(pps);
            }
            if !matches!(profile, 66 | 77 | 88) {
                // High profiles: chroma 4:2:0, 8-bit luma and chroma, no SPS extensions.
                b.extend_from_slice(&[0xfc | 1, 0xf8, 0xf8, 0]);
            }
        });
    });
}

/// A media segment: fragment number `sequence` (from 1), starting at `decode_time` (timescale
/// units since the start of the track).
pub fn media_segment(sequence: u32, decode_time: u64, samples: &[Sample]) -> Vec<u8> {
    let data_len: usize = samples.iter().map(|s| s.data.len()).sum();
    let mut out = Vec::with_capacity(data_len + 120 + samples.len() * 12);
    write_box(&mut out, b"styp", |b| {
        b.extend_from_slice(b"msdh");
        u32s(b, &[0]);
        b.extend_from_slice(b"msdh");
        b.extend_from_slice(b"msix");
    });
    let moof_start = out.len();
    let mut data_offset_at = 0;
    write_box(&mut out, b"moof", |b| {
        write_full_box(b, b"mfhd", 0, 0, |b| u32s(b, &[sequence]));
        write_box(b, b"traf", |b| {
            // default-base-is-moof: data offsets count from this moof.
            write_full_box(b, b"tfhd", 0, 0x02_0000, |b| u32s(b, &[TRACK]));
            write_full_box(b, b"tfdt", 1, 0, |b| {
                b.extend_from_slice(&decode_time.to_be_bytes())
            });
            // data-offset, sample-duration, sample-size, sample-flags present.
            write_full_box(b, b"trun", 0, 0x0701, |b| {
                u32s(b, &[samples.len() as u32]);
                data_offset_at = b.len();
                u32s(b, &[0]);
                for s in samples {
                    let flags = if s.keyframe { 0x0200_0000 } else { 0x0101_0000 };
                    u32s(b, &[s.duration, s.data.len() as u32, flags]);
                }
            });
        });
    });
    let moof_len = out.len() - moof_start;
    // Sample data begins after the moof and the 8-byte mdat header.
    let offset = (moof_len + 8) as u32;
    out[data_offset_at..data_offset_at + 4].copy_from_slice(&offset.to_be_bytes());
    write_box(&mut out, b"mdat", |b| {
        for s in samples {
            b.extend_from_slice(&s.data);
        }
    });
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn splits_annexb_and_strips_parameter_sets() {
        let au = [
            0, 0, 0, 1, 0x09, 0xf0, // AUD
            0, 0, 0, 1, 0x67, 0x64, 0x00, 0x1f, 0xac, // SPS
            0, 0, 1, 0x68, 0xee, 0x3c, // PPS
            0, 0, 1, 0x65, 0x88, 0x84, 0x00, // IDR slice (ends in a zero byte that is data)
        ];
        let nals = annexb_nals(&au);
        assert_eq!(nals.len(), 4);
        let (data, ps) = to_sample_data(&au);
        let ps = ps.unwrap();
        assert_eq!(ps.sps, vec![0x67, 0x64, 0x00, 0x1f, 0xac]);
        assert_eq!(ps.pps, vec![vec![0x68, 0xee, 0x3c]]);
        assert_eq!(data, vec![0, 0, 0, 4, 0x65, 0x88, 0x84, 0x00]);
        assert_eq!(codec_string(&ps.sps), "avc1.64001f");
    }

    #[test]
    fn media_segment_offsets_point_at_the_sample_data() {
        let samples = vec![
            Sample {
                duration: 3000,
                keyframe: true,
                data: vec![0, 0, 0, 2, 0x65, 1],
            },
            Sample {
                duration: 90000,
                keyframe: false,
                data: vec![0, 0, 0, 1, 0x41],
            },
        ];
        let seg = media_segment(7, 123_456, &samples);
        let moof = seg.windows(4).position(|w| w == b"moof").unwrap() - 4;
        let trun = seg.windows(4).position(|w| w == b"trun").unwrap() + 4;
        let offset = u32::from_be_bytes(seg[trun + 8..trun + 12].try_into().unwrap()) as usize;
        assert_eq!(&seg[moof + offset..moof + offset + 6], &samples[0].data[..]);
        assert!(seg.ends_with(&[0, 0, 0, 2, 0x65, 1, 0, 0, 0, 1, 0x41]));
    }
}
