//! Fuzzes the HTTP `Range` header parser that cuts media responses (`player/src/range.rs`).
//!
//! Input: 8 bytes of object length (little endian), then the header value. Besides arbitrary
//! headers, the same bytes drive a well-formed `bytes=a-b` / `bytes=a-` / `bytes=-n` whose answer
//! RFC 9110 fixes, so the parser is checked against the RFC, not only for not panicking.

#![no_main]

// Included by path, not as a dependency: the player crate pulls FFmpeg, the databases and the
// AWS SDK, which an instrumented build would compile for nothing. range.rs has no dependencies
// for this reason.
#[path = "../../player/src/range.rs"]
mod range;

use libfuzzer_sys::fuzz_target;
use range::{RangeAnswer, parse_range};

fuzz_target!(|data: &[u8]| {
    if data.len() < 8 {
        return;
    }
    let (len_bytes, rest) = data.split_at(8);
    let raw_len = u64::from_le_bytes(len_bytes.try_into().expect("split at 8"));
    // Small lengths too, where the edge cases (0, 1, a range ending at the last byte) are.
    for len in [raw_len, raw_len % 16] {
        if let Ok(h) = std::str::from_utf8(rest) {
            sound(h, len, parse_range(h, len));
        }
        rfc(rest, len);
    }
});

/// Whatever the header, a `Part` is a non-empty range inside the object.
fn sound(h: &str, len: u64, answer: RangeAnswer) {
    if let RangeAnswer::Part(a, b) = answer {
        assert!(len > 0, "{h:?} on an empty object gave Part({a}, {b})");
        assert!(
            a <= b && b < len,
            "{h:?} on {len} bytes gave Part({a}, {b})"
        );
    }
}

/// Well-formed single ranges built from the input, against RFC 9110 §14.1.2 and §15.5.17.
fn rfc(rest: &[u8], len: u64) {
    let num = |i: usize| -> u64 {
        let mut b = [0u8; 8];
        for (j, x) in rest.iter().skip(i * 8).take(8).enumerate() {
            b[j] = *x;
        }
        let n = u64::from_le_bytes(b);
        // Half the time small, so numbers meet the length.
        if rest.first().is_some_and(|f| f & 1 == 0) {
            n % 32
        } else {
            n
        }
    };
    let (a, b) = (num(0), num(1));
    let last = len.saturating_sub(1);

    let expected = if b < a {
        // An invalid range-spec: the header is ignored.
        RangeAnswer::Whole
    } else if a >= len {
        RangeAnswer::Unsatisfiable
    } else {
        RangeAnswer::Part(a, b.min(last))
    };
    let h = format!("bytes={a}-{b}");
    assert_eq!(parse_range(&h, len), expected, "{h:?} on {len} bytes");

    let expected = if a >= len {
        RangeAnswer::Unsatisfiable
    } else {
        RangeAnswer::Part(a, last)
    };
    let h = format!("bytes={a}-");
    assert_eq!(parse_range(&h, len), expected, "{h:?} on {len} bytes");

    let n = b;
    let expected = if n == 0 || len == 0 {
        RangeAnswer::Unsatisfiable
    } else {
        RangeAnswer::Part(len - n.min(len), last)
    };
    let h = format!("bytes=-{n}");
    assert_eq!(parse_range(&h, len), expected, "{h:?} on {len} bytes");
}
