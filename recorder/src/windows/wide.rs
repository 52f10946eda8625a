//! UTF-16 strings at the Win32 boundary.

/// `s` as a NUL-terminated UTF-16 string.
pub(crate) fn to_wide(s: &str) -> Vec<u16> {
    s.encode_utf16().chain(std::iter::once(0)).collect()
}

/// The NUL-terminated UTF-16 string at `p` (lossy).
///
/// # Safety
/// `p` must point to a NUL-terminated UTF-16 string that stays valid during the call.
#[allow(unsafe_code)]
pub(crate) unsafe fn from_wide_ptr(p: *const u16) -> String {
    let mut len = 0;
    // SAFETY: the caller promises a terminator; reading stops there.
    while unsafe { *p.add(len) } != 0 {
        len += 1;
    }
    // SAFETY: `len` units were just read.
    String::from_utf16_lossy(unsafe { std::slice::from_raw_parts(p, len) })
}

/// The UTF-16 units of `buf` up to the first NUL (or all of them).
pub(crate) fn from_wide(buf: &[u16]) -> String {
    let end = buf.iter().position(|&u| u == 0).unwrap_or(buf.len());
    String::from_utf16_lossy(&buf[..end])
}
