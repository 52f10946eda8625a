//! The machine's stable id on Windows: `MachineGuid` under
//! `HKLM\SOFTWARE\Microsoft\Cryptography`, set when Windows is installed (the counterpart of
//! `/etc/machine-id`; a cloned image keeps it unless sysprepped).

#![allow(unsafe_code)]

use windows_sys::Win32::Foundation::ERROR_SUCCESS;
use windows_sys::Win32::System::Registry::{HKEY_LOCAL_MACHINE, RRF_RT_REG_SZ, RegGetValueW};

use super::wide::{from_wide, to_wide};

/// The machine GUID, if it can be read.
pub fn machine_guid() -> Option<String> {
    let key = to_wide(r"SOFTWARE\Microsoft\Cryptography");
    let value = to_wide("MachineGuid");
    let mut buf = [0u16; 128];
    let mut bytes = std::mem::size_of_val(&buf) as u32;
    // SAFETY: NUL-terminated names; `buf` with its size in bytes.
    let status = unsafe {
        RegGetValueW(
            HKEY_LOCAL_MACHINE,
            key.as_ptr(),
            value.as_ptr(),
            RRF_RT_REG_SZ,
            std::ptr::null_mut(),
            buf.as_mut_ptr().cast(),
            &mut bytes,
        )
    };
    let guid = from_wide(&buf);
    (status == ERROR_SUCCESS && !guid.is_empty()).then_some(guid)
}

#[cfg(test)]
mod tests {
    /// wine creates the value in a new prefix, as Windows setup does.
    #[test]
    fn the_machine_guid_is_read() {
        let guid = super::machine_guid().expect("MachineGuid");
        assert_eq!(guid.len(), 36, "{guid}");
        assert_eq!(guid.matches('-').count(), 4, "{guid}");
    }
}
