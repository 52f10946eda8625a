//! The spool file container: one file holds one entry (header, init segment, chunk, close
//! record) as length-prefixed parts with a SHA-256 trailer.
//!
//! ```text
//! magic    8 bytes  "JITRECSP"
//! version  u16 LE   1
//! kind     u8       1 header, 2 init, 3 chunk, 4 close
//! parts    u8       number of parts (1, or 3 for a chunk: manifest, video, events)
//! lengths  u64 LE   one per part
//! parts             the part bytes, back to back
//! trailer  32 bytes SHA-256 of everything above
//! ```
//!
//! One file per entry is what makes a commit atomic: a single rename publishes manifest, video
//! and events together. The trailer lets a reader tell a damaged file from a good one without
//! knowing anything about the parts, so damage is quarantined rather than uploaded.

use jitrec_format::Sha256Digest;

const MAGIC: &[u8; 8] = b"JITRECSP";
const VERSION: u16 = 1;
const TRAILER: usize = 32;

/// What an entry file holds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Kind {
    Header = 1,
    Init = 2,
    Chunk = 3,
    Close = 4,
}

impl Kind {
    fn parts(self) -> usize {
        match self {
            Kind::Chunk => 3,
            _ => 1,
        }
    }
}

/// The fixed-size prefix for `parts` (magic through lengths).
pub(crate) fn prefix(kind: Kind, parts: &[&[u8]]) -> Vec<u8> {
    let mut out = Vec::with_capacity(12 + 8 * parts.len());
    out.extend_from_slice(MAGIC);
    out.extend_from_slice(&VERSION.to_le_bytes());
    out.push(kind as u8);
    // Kinds have at most 3 parts (see `Kind::parts`), so this cannot truncate.
    out.push(parts.len() as u8);
    for p in parts {
        out.extend_from_slice(&(p.len() as u64).to_le_bytes());
    }
    out
}

/// The trailer over `prefix` and `parts`.
pub(crate) fn trailer(prefix: &[u8], parts: &[&[u8]]) -> [u8; 32] {
    let mut all: Vec<&[u8]> = Vec::with_capacity(parts.len() + 1);
    all.push(prefix);
    all.extend_from_slice(parts);
    *Sha256Digest::of_parts(&all).as_bytes()
}

/// Total file size of an entry with parts of these lengths.
pub fn framed_len(part_lens: &[usize]) -> u64 {
    (12 + 8 * part_lens.len() + part_lens.iter().sum::<usize>() + TRAILER) as u64
}

/// Splits a file into its parts, checking framing and trailer. Errors are human-readable reasons.
pub(crate) fn decode(bytes: &[u8], kind: Kind) -> Result<Vec<&[u8]>, String> {
    let n = kind.parts();
    let head = 12 + 8 * n;
    if bytes.len() < head + TRAILER {
        return Err(format!(
            "file is {} bytes, too short for its framing",
            bytes.len()
        ));
    }
    if &bytes[..8] != MAGIC {
        return Err("bad magic: not a spool entry".into());
    }
    let version = u16::from_le_bytes([bytes[8], bytes[9]]);
    if version != VERSION {
        return Err(format!(
            "entry framing version {version}, expected {VERSION}"
        ));
    }
    if bytes[10] != kind as u8 {
        return Err(format!(
            "entry kind {} does not match its file name ({kind:?})",
            bytes[10]
        ));
    }
    if bytes[11] as usize != n {
        return Err(format!("entry has {} parts, expected {n}", bytes[11]));
    }
    let body_end = bytes.len() - TRAILER;
    let expected = Sha256Digest::of(&bytes[..body_end]);
    if expected.as_bytes()[..] != bytes[body_end..] {
        return Err("trailer checksum mismatch (torn or damaged file)".into());
    }
    let mut parts = Vec::with_capacity(n);
    let mut at = head;
    for i in 0..n {
        let off = 12 + 8 * i;
        let mut len = [0u8; 8];
        len.copy_from_slice(&bytes[off..off + 8]);
        let len = usize::try_from(u64::from_le_bytes(len)).map_err(|_| "part length overflows")?;
        let end = at
            .checked_add(len)
            .filter(|&e| e <= body_end)
            .ok_or_else(|| format!("part {i} runs past the end of the file"))?;
        parts.push(&bytes[at..end]);
        at = end;
    }
    if at != body_end {
        return Err(format!("{} stray bytes after the last part", body_end - at));
    }
    Ok(parts)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn encode(kind: Kind, parts: &[&[u8]]) -> Vec<u8> {
        let p = prefix(kind, parts);
        let t = trailer(&p, parts);
        let mut out = p;
        for part in parts {
            out.extend_from_slice(part);
        }
        out.extend_from_slice(&t);
        out
    }

    #[test]
    fn round_trips_and_detects_damage() {
        let parts: [&[u8]; 3] = [b"manifest", b"", b"events!"];
        let bytes = encode(Kind::Chunk, &parts);
        assert_eq!(bytes.len() as u64, framed_len(&[8, 0, 7]));
        assert_eq!(decode(&bytes, Kind::Chunk).unwrap(), parts.to_vec());
        assert!(decode(&bytes, Kind::Header).is_err());
        for i in 0..bytes.len() {
            let mut damaged = bytes.clone();
            damaged[i] ^= 0x40;
            assert!(
                decode(&damaged, Kind::Chunk).is_err(),
                "flip at {i} undetected"
            );
        }
        for len in 0..bytes.len() {
            assert!(
                decode(&bytes[..len], Kind::Chunk).is_err(),
                "truncation to {len} undetected"
            );
        }
    }
}
