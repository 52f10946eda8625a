//! Fuzzes the events payload (`chunks/<seq>.events.zst`): `decode_events` on zstd bytes from the
//! bucket, its decompression bound, and `validate_events` against a manifest.
//!
//! Input: one mode byte, then the payload. Mode bit 1 = the rest is the plaintext (JSON lines),
//! compressed here first, so mutations reach the event parser instead of mostly breaking the zstd
//! framing; bit 2 = validate against a version 2 manifest (v1 otherwise).

#![no_main]

use std::io::Read as _;

use jitrec_format::{
    ChunkManifest, EventKind, EventsError, EventsRef, FORMAT_V1, FORMAT_VERSION,
    MAX_DECODED_EVENTS_BYTES, MediaTime, Sha256Digest, decode_events, encode_events, fixtures,
    validate_events,
};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Some((&mode, rest)) = data.split_first() else {
        return;
    };
    let compressed;
    let payload = if mode & 1 != 0 {
        // Level 1: the fastest; what is tested is the decoder, not the ratio.
        compressed = zstd::bulk::compress(rest, 1).expect("compressing in memory cannot fail");
        &compressed[..]
    } else {
        rest
    };
    let decoded = decode_events(payload);

    // The bound, checked against an independent decompression of the same bytes (itself
    // bounded one byte past the cap, which is all it takes to tell).
    let mut plain = Vec::new();
    let whole = zstd::stream::read::Decoder::new(payload)
        .and_then(|d| d.take(MAX_DECODED_EVENTS_BYTES + 1).read_to_end(&mut plain))
        .is_ok();
    match &decoded {
        Ok(events) => {
            assert!(whole, "decode_events accepted a payload zstd refuses");
            assert!(
                plain.len() as u64 <= MAX_DECODED_EVENTS_BYTES,
                "decode_events accepted {} decompressed bytes, over the cap",
                plain.len()
            );
            assert_eq!(
                events.len(),
                plain.split_inclusive(|&b| b == b'\n').count(),
                "not one event per line"
            );
        }
        Err(EventsError::TooLarge) => assert!(
            plain.len() as u64 > MAX_DECODED_EVENTS_BYTES,
            "refused as too large at {} bytes",
            plain.len()
        ),
        Err(_) => {}
    }
    let Ok(events) = decoded else { return };
    // A bomb up to the cap is legitimate (5.7 KB of zstd can hold 64 MiB of events, which the
    // decoder takes about 10 s for under ASan); re-encoding it finds nothing a small payload
    // would not, and would make it a false timeout.
    if plain.len() > 1 << 20 {
        return;
    }

    // What the player decoded, the recorder could have written: it encodes and decodes to the
    // same events (the player re-serialises them into its index and the bundle's events.json).
    let again = encode_events(&events).expect("decoded events re-encode");
    let back = decode_events(&again).expect("re-encoded events decode");
    assert_eq!(back, events, "events changed through encode and decode");

    let version = if mode & 2 != 0 {
        FORMAT_VERSION
    } else {
        FORMAT_V1
    };
    let session = fixtures::session_id(1);
    let m = fixtures::manifest(session, 0, Sha256Digest::of(b""), b"video", payload, 0);
    let m = ChunkManifest {
        version,
        media_start_us: MediaTime::ZERO,
        media_end_us: MediaTime::from_micros(u64::MAX),
        events: EventsRef {
            count: u32::try_from(events.len()).unwrap_or(u32::MAX),
            ..m.events
        },
        ..m
    };
    if validate_events(&m, &events).is_ok() {
        assert!(
            events.windows(2).all(|w| w[0].media_us <= w[1].media_us),
            "validated events are not sorted"
        );
        for e in &events {
            if let EventKind::Gap { from_us, to_us, .. } = &e.event {
                assert!(from_us <= to_us, "a validated gap ends before it starts");
            }
            if let EventKind::JitStop { stopped_by, .. } = &e.event {
                assert!(
                    stopped_by.is_none() || version == FORMAT_VERSION,
                    "a v1 chunk validated a v2 field"
                );
            }
        }
    }
});
