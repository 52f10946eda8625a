//! Decoding the NT kernel logger's process events (the MOF class `Process`, event types Start,
//! End, DCStart, DCEnd, Defunct) from their raw payload bytes.
//!
//! The kernel logger is the ETW source that carries what an audit needs in one event: the
//! command line and the user's SID (the manifest-based Microsoft-Windows-Kernel-Process provider
//! has neither). Decoding is portable and separate from the live session ([`super::etw`]) so it
//! is tested on every platform, against payloads recorded from real Windows machines.
//!
//! Layout (little-endian; "ptr" is 8 bytes in a 64-bit trace, 4 in a 32-bit one), by event
//! version:
//!
//! ```text
//! v2:  ptr UniqueProcessKey, u32 ProcessId, u32 ParentId, u32 SessionId, i32 ExitStatus,
//!      Sid UserSID, ansi ImageFileName, utf16 CommandLine
//! v3:  as v2 with ptr DirectoryTableBase after ExitStatus
//! v4+: as v3 with u32 Flags after DirectoryTableBase, then utf16 PackageFullName and utf16
//!      ApplicationId after CommandLine (later versions append more; it is ignored)
//! Sid: u32 0 when absent (4 bytes), else a TOKEN_USER (2 ptr) followed by the SID itself
//! ```

use crate::windows::sid::Sid;

/// Which process event the kernel reported (the event's opcode).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ProcessOp {
    /// A process was created.
    Start,
    /// A process exited.
    End,
    /// A process that was running when the trace began (rundown).
    DcStart,
    /// A process still running when the trace ended (rundown).
    DcEnd,
    /// A process object that outlived its process.
    Defunct,
}

impl ProcessOp {
    /// The opcode's meaning, `None` for opcodes that carry other payloads (performance
    /// counters, terminate notifications).
    pub fn from_opcode(opcode: u8) -> Option<ProcessOp> {
        match opcode {
            1 => Some(ProcessOp::Start),
            2 => Some(ProcessOp::End),
            3 => Some(ProcessOp::DcStart),
            4 => Some(ProcessOp::DcEnd),
            39 => Some(ProcessOp::Defunct),
            _ => None,
        }
    }
}

/// One decoded process event.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KernelProcess {
    pub op: ProcessOp,
    pub pid: u32,
    pub ppid: u32,
    /// Terminal Services session (1 and up are interactive logons; 0 is services).
    pub session_id: u32,
    /// The exit status (End); 259 (STILL_ACTIVE) on Start.
    pub exit_status: i32,
    /// Process flags (v4 and later): bit 0x10 is set for a process in a package (UWP).
    pub flags: Option<u32>,
    /// The user the process runs as, when the kernel reported one.
    pub user: Option<Sid>,
    /// The image file name (the executable's name, without its directory).
    pub image: String,
    /// The full command line as the process was given it.
    pub command_line: String,
}

/// Why a payload could not be decoded.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DecodeError {
    #[error("process event version {0} is older than any Windows 10/11 writes (2 and up)")]
    Version(u8),
    #[error("pointer size {0} (a trace is 32- or 64-bit)")]
    PointerSize(usize),
    #[error("payload ends inside {field} (at byte {at} of {len})")]
    Truncated {
        field: &'static str,
        at: usize,
        len: usize,
    },
    #[error("user SID: {0}")]
    Sid(#[from] crate::windows::sid::SidError),
}

/// Decodes a process event's payload. `pointer_size` is 8 for a 64-bit trace (the event
/// header's 64-bit flag), 4 otherwise.
pub fn decode_process(
    op: ProcessOp,
    version: u8,
    pointer_size: usize,
    payload: &[u8],
) -> Result<KernelProcess, DecodeError> {
    if version < 2 {
        return Err(DecodeError::Version(version));
    }
    if pointer_size != 4 && pointer_size != 8 {
        return Err(DecodeError::PointerSize(pointer_size));
    }
    let mut r = Reader {
        buf: payload,
        at: 0,
    };
    r.skip(pointer_size, "UniqueProcessKey")?;
    let pid = r.u32("ProcessId")?;
    let ppid = r.u32("ParentId")?;
    let session_id = r.u32("SessionId")?;
    let exit_status = r.u32("ExitStatus")? as i32;
    if version >= 3 {
        r.skip(pointer_size, "DirectoryTableBase")?;
    }
    let flags = if version >= 4 {
        Some(r.u32("Flags")?)
    } else {
        None
    };
    let user = r.sid(pointer_size)?;
    let image = r.ansi("ImageFileName")?;
    let command_line = r.utf16("CommandLine")?;
    Ok(KernelProcess {
        op,
        pid,
        ppid,
        session_id,
        exit_status,
        flags,
        user,
        image,
        command_line,
    })
}

struct Reader<'a> {
    buf: &'a [u8],
    at: usize,
}

impl Reader<'_> {
    fn take(&mut self, n: usize, field: &'static str) -> Result<&[u8], DecodeError> {
        let end = self
            .at
            .checked_add(n)
            .filter(|&e| e <= self.buf.len())
            .ok_or(DecodeError::Truncated {
                field,
                at: self.at,
                len: self.buf.len(),
            })?;
        let out = &self.buf[self.at..end];
        self.at = end;
        Ok(out)
    }

    fn skip(&mut self, n: usize, field: &'static str) -> Result<(), DecodeError> {
        self.take(n, field).map(|_| ())
    }

    fn u32(&mut self, field: &'static str) -> Result<u32, DecodeError> {
        let b = self.take(4, field)?;
        Ok(u32::from_le_bytes([b[0], b[1], b[2], b[3]]))
    }

    fn sid(&mut self, pointer_size: usize) -> Result<Option<Sid>, DecodeError> {
        let at = self.at;
        if self.u32("UserSID")? == 0 {
            return Ok(None);
        }
        // Not absent: back to the field's start and past the TOKEN_USER header, whose contents
        // (a pointer into the kernel, attributes, padding) mean nothing in a trace.
        self.at = at;
        self.skip(2 * pointer_size, "UserSID")?;
        let (sid, used) = Sid::from_bytes(&self.buf[self.at..])?;
        self.at += used;
        Ok(Some(sid))
    }

    /// A NUL-terminated string in the system's ANSI code page. Image names are ASCII in
    /// practice; anything else is kept, with bytes that are not UTF-8 replaced.
    fn ansi(&mut self, field: &'static str) -> Result<String, DecodeError> {
        let rest = &self.buf[self.at..];
        let len = rest
            .iter()
            .position(|&b| b == 0)
            .ok_or(DecodeError::Truncated {
                field,
                at: self.at,
                len: self.buf.len(),
            })?;
        let text = String::from_utf8_lossy(&rest[..len]).into_owned();
        self.at += len + 1;
        Ok(text)
    }

    /// A NUL-terminated UTF-16LE string; a payload that ends without the terminator keeps what
    /// it has (the kernel truncates very long command lines this way).
    fn utf16(&mut self, field: &'static str) -> Result<String, DecodeError> {
        let rest = &self.buf[self.at..];
        if rest.len() < 2 {
            return Err(DecodeError::Truncated {
                field,
                at: self.at,
                len: self.buf.len(),
            });
        }
        let units: Vec<u16> = rest
            .chunks_exact(2)
            .map(|c| u16::from_le_bytes([c[0], c[1]]))
            .take_while(|&u| u != 0)
            .collect();
        self.at += (units.len() + 1).min(rest.len() / 2) * 2;
        Ok(String::from_utf16_lossy(&units))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    // Process event payloads recorded by the NT kernel logger on 64-bit Windows, as published in
    // the test data of the libtrace project (github.com/TracingTools/libtrace, file
    // src/parser/etw/etw_raw_kernel_payload_decoder_unittest.cc; the SIDs' domain parts were
    // scrubbed there). See testdata/README.md.
    /// Start, version 3 (Windows 7): `xperf  -d out.etl`.
    const START_V3: &[u8] = include_bytes!("testdata/start_v3.bin");
    /// Start, version 4 (Windows 8 and later): `xperf  -stop`, user RID 1001.
    const START_V4: &[u8] = include_bytes!("testdata/start_v4.bin");
    /// End, version 3, with a long command line.
    const END_V3: &[u8] = include_bytes!("testdata/end_v3.bin");
    /// DCEnd, version 4: the Idle process, with junk in the TOKEN_USER's padding.
    const DC_END_V4: &[u8] = include_bytes!("testdata/dc_end_v4.bin");
    /// Defunct, version 5: a field appended after ApplicationId (an exit FILETIME).
    const DEFUNCT_V5: &[u8] = include_bytes!("testdata/defunct_v5.bin");

    fn domain_user(sub: &[u32]) -> Sid {
        Sid::new(5, sub).unwrap()
    }

    #[test]
    fn start_v3_recorded_on_windows_7() {
        let p = decode_process(ProcessOp::Start, 3, 8, START_V3).unwrap();
        assert_eq!(p.pid, 0x1A00);
        assert_eq!(p.ppid, 0x1CA0);
        assert_eq!(p.session_id, 1);
        assert_eq!(p.exit_status, 259, "STILL_ACTIVE on start");
        assert_eq!(p.flags, None);
        assert_eq!(
            p.user,
            Some(domain_user(&[
                21,
                0x0201_0302,
                0x0605_0403,
                0x0A09_0807,
                0x0C0B
            ]))
        );
        assert_eq!(p.image, "xperf.exe");
        assert_eq!(p.command_line, "xperf  -d out.etl");
    }

    #[test]
    fn start_v4_recorded_on_windows_8_and_later() {
        let p = decode_process(ProcessOp::Start, 4, 8, START_V4).unwrap();
        assert_eq!((p.pid, p.ppid, p.session_id), (2700, 5896, 5));
        assert_eq!(p.flags, Some(0));
        let user = p.user.unwrap();
        assert_eq!(user.rid(), Some(1001));
        assert_eq!(
            user.to_string(),
            "S-1-5-21-67305985-134678021-101386761-1001"
        );
        assert_eq!(p.image, "xperf.exe");
        assert_eq!(p.command_line, "xperf  -stop");
    }

    #[test]
    fn end_v3_with_a_long_command_line() {
        let p = decode_process(ProcessOp::End, 3, 8, END_V3).unwrap();
        assert_eq!((p.pid, p.ppid, p.exit_status), (0x202C, 0x1CA0, 0));
        assert_eq!(p.user.and_then(|u| u.rid()), Some(0x030D));
        assert_eq!(
            p.command_line,
            "xperf  -on PROC_THREAD+LOADER+CSWITCH -stackwalk ImageLoad+ImageUnload"
        );
    }

    #[test]
    fn command_line_cut_short_keeps_what_is_there() {
        // The kernel cuts very long command lines without a terminator; the decoder keeps
        // the part it has rather than dropping the event.
        let cut = &END_V3[..END_V3.len() - 20];
        let p = decode_process(ProcessOp::End, 3, 8, cut).unwrap();
        assert_eq!(
            p.command_line,
            "xperf  -on PROC_THREAD+LOADER+CSWITCH -stackwalk ImageLoad+Im"
        );
    }

    #[test]
    fn rundown_of_idle_ignores_token_padding() {
        let p = decode_process(ProcessOp::DcEnd, 4, 8, DC_END_V4).unwrap();
        assert_eq!((p.pid, p.ppid, p.session_id), (0, 0, u32::MAX));
        assert_eq!(p.user.unwrap().to_string(), "S-1-5-16");
        assert_eq!(p.image, "Idle");
        assert_eq!(p.command_line, "");
    }

    #[test]
    fn later_versions_keep_the_v4_prefix() {
        let p = decode_process(ProcessOp::Defunct, 5, 8, DEFUNCT_V5).unwrap();
        assert_eq!((p.pid, p.ppid, p.session_id), (0x1948, 0x0810, 1));
        assert_eq!(p.flags, Some(0));
        assert_eq!(p.image, "chrome.exe");
        assert_eq!(p.user.and_then(|u| u.rid()), Some(0x03D4));
    }

    #[test]
    fn reading_v4_as_v3_goes_wrong_visibly() {
        // The version decides the layout; the wrong one must not pass for a right answer.
        let wrong = decode_process(ProcessOp::Start, 3, 8, START_V4);
        assert!(
            wrong
                .as_ref()
                .map_or(true, |p| p.command_line != "xperf  -stop"),
            "{wrong:?}"
        );
    }

    #[test]
    fn absent_sid_takes_four_bytes() {
        let mut p = Vec::new();
        p.extend_from_slice(&[0u8; 8]); // key
        for v in [4u32, 0, 0, 259] {
            p.extend_from_slice(&v.to_le_bytes());
        }
        p.extend_from_slice(&[0u8; 8]); // directory table base
        p.extend_from_slice(&[0u8; 4]); // no SID
        p.extend_from_slice(b"System\0");
        p.extend_from_slice(&[0, 0]);
        let k = decode_process(ProcessOp::DcStart, 3, 8, &p).unwrap();
        assert_eq!((k.pid, k.user, k.image.as_str()), (4, None, "System"));
    }

    #[test]
    fn truncation_before_the_command_line_is_an_error_never_a_panic() {
        for (version, full, image) in [
            (3, START_V3, "xperf.exe"),
            (4, START_V4, "xperf.exe"),
            (4, DC_END_V4, "Idle"),
        ] {
            let name_at = full
                .windows(image.len())
                .position(|w| w == image.as_bytes())
                .expect("the image name is in the payload");
            // Cut anywhere up to the first byte of the command line: a typed error.
            for cut in 0..=name_at + image.len() + 2 {
                let r = decode_process(ProcessOp::Start, version, 8, &full[..cut]);
                assert!(r.is_err(), "v{version} cut at {cut} decoded as {r:?}");
            }
        }
        assert!(matches!(
            decode_process(ProcessOp::Start, 1, 8, &[]),
            Err(DecodeError::Version(1))
        ));
        assert!(matches!(
            decode_process(ProcessOp::Start, 4, 2, &[]),
            Err(DecodeError::PointerSize(2))
        ));
    }

    #[test]
    fn opcodes() {
        assert_eq!(ProcessOp::from_opcode(1), Some(ProcessOp::Start));
        assert_eq!(ProcessOp::from_opcode(2), Some(ProcessOp::End));
        assert_eq!(ProcessOp::from_opcode(39), Some(ProcessOp::Defunct));
        assert_eq!(ProcessOp::from_opcode(11), None, "terminate notifications");
        assert_eq!(ProcessOp::from_opcode(32), None, "performance counters");
    }
}
