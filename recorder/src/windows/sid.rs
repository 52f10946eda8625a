//! Windows security identifiers (SIDs), as values: parsed from and printed as `S-1-5-32-544`, and
//! read from and written as the binary layout Windows APIs and ETW payloads use.
//!
//! Portable on purpose: the recorder identifies the local Administrators group by its well-known
//! SID, never by its name (which Windows localises: "Administratoren", "Administrateurs"), and ETW
//! payloads carry SIDs as bytes; both are plain data and are tested on every platform.

use std::fmt;
use std::str::FromStr;

/// Most sub-authorities a SID may have (`SID_MAX_SUB_AUTHORITIES`).
pub const MAX_SUB_AUTHORITIES: usize = 15;

/// A security identifier: revision 1, a 48-bit identifier authority, up to 15 sub-authorities.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Sid {
    authority: u64,
    sub: Vec<u32>,
}

/// Why bytes or text are not a SID.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SidError {
    #[error("SID text {0:?} does not have the form S-1-<authority>-<sub>...")]
    Text(String),
    #[error("SID bytes are {got} long; the header says {need}")]
    Length { got: usize, need: usize },
    #[error("SID revision {0} (only 1 exists)")]
    Revision(u8),
    #[error("SID has {0} sub-authorities (at most 15)")]
    TooManySubAuthorities(usize),
}

impl Sid {
    /// `S-1-5-32-544`: BUILTIN\Administrators, the group JIT elevation adds the user to.
    pub fn builtin_administrators() -> Sid {
        Sid {
            authority: 5,
            sub: vec![32, 544],
        }
    }

    /// `S-1-5-18`: LocalSystem, the account the recorder's service runs as.
    pub fn local_system() -> Sid {
        Sid {
            authority: 5,
            sub: vec![18],
        }
    }

    /// A SID from its parts.
    pub fn new(authority: u64, sub: &[u32]) -> Result<Sid, SidError> {
        if sub.len() > MAX_SUB_AUTHORITIES {
            return Err(SidError::TooManySubAuthorities(sub.len()));
        }
        if authority >= 1 << 48 {
            return Err(SidError::Text(format!("authority {authority}")));
        }
        Ok(Sid {
            authority,
            sub: sub.to_vec(),
        })
    }

    pub fn authority(&self) -> u64 {
        self.authority
    }

    pub fn sub_authorities(&self) -> &[u32] {
        &self.sub
    }

    /// The relative identifier: the last sub-authority (500 for a machine's built-in
    /// Administrator account, say).
    pub fn rid(&self) -> Option<u32> {
        self.sub.last().copied()
    }

    /// Length of the binary form.
    pub fn byte_len(&self) -> usize {
        8 + 4 * self.sub.len()
    }

    /// Reads a binary SID from the start of `bytes`; returns it and the bytes it took. Layout:
    /// revision (1 byte), sub-authority count (1), authority (6, big-endian), then each
    /// sub-authority as a little-endian u32.
    pub fn from_bytes(bytes: &[u8]) -> Result<(Sid, usize), SidError> {
        if bytes.len() < 8 {
            return Err(SidError::Length {
                got: bytes.len(),
                need: 8,
            });
        }
        if bytes[0] != 1 {
            return Err(SidError::Revision(bytes[0]));
        }
        let count = usize::from(bytes[1]);
        if count > MAX_SUB_AUTHORITIES {
            return Err(SidError::TooManySubAuthorities(count));
        }
        let need = 8 + 4 * count;
        if bytes.len() < need {
            return Err(SidError::Length {
                got: bytes.len(),
                need,
            });
        }
        let authority = bytes[2..8]
            .iter()
            .fold(0u64, |acc, &b| (acc << 8) | u64::from(b));
        let sub = bytes[8..need]
            .chunks_exact(4)
            .map(|c| u32::from_le_bytes([c[0], c[1], c[2], c[3]]))
            .collect();
        Ok((Sid { authority, sub }, need))
    }

    /// The binary form (what `ConvertStringSidToSid` would produce).
    pub fn to_bytes(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(self.byte_len());
        out.push(1);
        // At most 15, checked on construction.
        out.push(self.sub.len() as u8);
        out.extend_from_slice(&self.authority.to_be_bytes()[2..]);
        for s in &self.sub {
            out.extend_from_slice(&s.to_le_bytes());
        }
        out
    }
}

impl fmt::Display for Sid {
    /// `S-1-5-32-544`; an authority of 2^32 or more is printed in hex, as Windows does.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.authority >= 1 << 32 {
            write!(f, "S-1-0x{:012X}", self.authority)?;
        } else {
            write!(f, "S-1-{}", self.authority)?;
        }
        for s in &self.sub {
            write!(f, "-{s}")?;
        }
        Ok(())
    }
}

impl FromStr for Sid {
    type Err = SidError;

    fn from_str(text: &str) -> Result<Sid, SidError> {
        let bad = || SidError::Text(text.to_owned());
        let mut parts = text.split('-');
        if !parts.next().is_some_and(|p| p.eq_ignore_ascii_case("S")) || parts.next() != Some("1") {
            return Err(bad());
        }
        let authority = match parts.next() {
            Some(a) if a.starts_with("0x") || a.starts_with("0X") => {
                u64::from_str_radix(&a[2..], 16).map_err(|_| bad())?
            }
            Some(a) if !a.is_empty() && a.bytes().all(|b| b.is_ascii_digit()) => {
                a.parse().map_err(|_| bad())?
            }
            _ => return Err(bad()),
        };
        let sub = parts
            .map(|p| {
                if p.is_empty() || !p.bytes().all(|b| b.is_ascii_digit()) {
                    return Err(bad());
                }
                p.parse::<u32>().map_err(|_| bad())
            })
            .collect::<Result<Vec<_>, _>>()?;
        Sid::new(authority, &sub).map_err(|e| match e {
            SidError::TooManySubAuthorities(n) => SidError::TooManySubAuthorities(n),
            _ => bad(),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn well_known_sids_print_and_parse() {
        assert_eq!(Sid::builtin_administrators().to_string(), "S-1-5-32-544");
        assert_eq!(Sid::local_system().to_string(), "S-1-5-18");
        let s: Sid = "S-1-5-21-3623811015-3361044348-30300820-1013"
            .parse()
            .unwrap();
        assert_eq!(s.authority(), 5);
        assert_eq!(s.rid(), Some(1013));
        assert_eq!(
            s.to_string(),
            "S-1-5-21-3623811015-3361044348-30300820-1013"
        );
        assert_eq!(
            "s-1-5-32-544".parse::<Sid>().unwrap(),
            Sid::builtin_administrators()
        );
        // S-1-0 (the null authority) with no sub-authorities is a valid SID.
        assert_eq!(
            "S-1-0".parse::<Sid>().unwrap().sub_authorities(),
            &[] as &[u32]
        );
    }

    #[test]
    fn malformed_text_is_refused() {
        for bad in [
            "",
            "S",
            "S-1",
            "S-2-5-32-544",
            "X-1-5-32",
            "S-1--32",
            "S-1-5-32-",
            "S-1-5-+32",
            "S-1-5-4294967296",
            "S-1-281474976710656",
            "S-1-5-1-2-3-4-5-6-7-8-9-10-11-12-13-14-15-16",
            "S-1-5- 32",
        ] {
            assert!(bad.parse::<Sid>().is_err(), "{bad:?} parsed");
        }
    }

    #[test]
    fn binary_form_round_trips_and_matches_windows_layout() {
        // BUILTIN\Administrators as Windows stores it (revision 1, 2 sub-authorities,
        // authority 5 big-endian, 32 and 544 little-endian).
        let bytes = [
            1, 2, 0, 0, 0, 0, 0, 5, 0x20, 0, 0, 0, 0x20, 0x02, 0, 0, /* trailing */ 0xAA,
        ];
        let (sid, used) = Sid::from_bytes(&bytes).unwrap();
        assert_eq!(used, 16);
        assert_eq!(sid, Sid::builtin_administrators());
        assert_eq!(sid.to_bytes(), bytes[..16]);
        let big: Sid = "S-1-0x123456789ABC-7".parse().unwrap();
        assert_eq!(big.to_string(), "S-1-0x123456789ABC-7");
        assert_eq!(Sid::from_bytes(&big.to_bytes()).unwrap().0, big);
    }

    #[test]
    fn malformed_bytes_are_refused() {
        assert!(matches!(
            Sid::from_bytes(&[1, 2, 0, 0, 0, 0, 0, 5, 32, 0, 0, 0]),
            Err(SidError::Length { got: 12, need: 16 })
        ));
        assert!(matches!(
            Sid::from_bytes(&[2, 0, 0, 0, 0, 0, 0, 5]),
            Err(SidError::Revision(2))
        ));
        assert!(matches!(
            Sid::from_bytes(&[1, 16, 0, 0, 0, 0, 0, 5]),
            Err(SidError::TooManySubAuthorities(16))
        ));
        assert!(Sid::from_bytes(&[1, 0, 0]).is_err());
    }
}
