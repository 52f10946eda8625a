//! The change ledger on Windows, the part kept in the registry: programs started at sign-in or
//! boot (the `Run` and `RunOnce` keys), services (installed, removed, their program or start
//! type changed) and installed software (the `Uninstall` keys), as `change` events like the
//! Linux ledger's (`docs/windows.md`).
//!
//! At JIT start the source reads those keys (on its own thread), and every round (each chunk
//! cut, and at least every [`ROUND`]) it reads them again and writes what differs. The state and
//! its diff are plain data, compiled and tested on every platform; reading the registry is
//! Windows-only and tested under wine, which has a registry of its own. Local accounts and
//! groups, scheduled tasks and the event logs are not read yet (wine has none of substance to
//! test them against).
//!
//! Everything read is bounded: at most [`MAX_KEYS`] subkeys and [`MAX_VALUES`] values per key,
//! [`MAX_DATA`] bytes of a value; an autostart command is redacted like a command line.

use std::collections::BTreeMap;
use std::time::Duration;

use jitrec_format::EventKind;

/// Subkeys of one key read in a round (a Windows machine has about 600 services).
pub const MAX_KEYS: usize = 4096;
/// Values of one key read in a round.
pub const MAX_VALUES: usize = 256;
/// Bytes of one value read (a longer one is cut).
pub const MAX_DATA: usize = 8 * 1024;
/// The longest wait between two rounds.
pub const ROUND: Duration = Duration::from_secs(2);

/// A service as its key says.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Service {
    /// `ImagePath`: the program (or driver) it runs.
    pub image: String,
    /// `Start`: 0 boot, 1 system, 2 automatic, 3 manual, 4 disabled.
    pub start: Option<u32>,
}

/// What the watched keys held at one round.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct RegistryState {
    /// `key\value name` of each autostart entry, and its command.
    pub autostart: BTreeMap<String, String>,
    /// Service name, and its key's values.
    pub services: BTreeMap<String, Service>,
    /// Installed software by display name, and its version.
    pub software: BTreeMap<String, String>,
}

/// A start type in words.
fn start_type(start: Option<u32>) -> &'static str {
    match start {
        Some(0) => "boot",
        Some(1) => "system",
        Some(2) => "automatic",
        Some(3) => "manual",
        Some(4) => "disabled",
        _ => "unknown",
    }
}

fn change(area: &str, action: &str, subject: &str, detail: Option<String>) -> EventKind {
    EventKind::Change {
        area: area.to_owned(),
        action: action.to_owned(),
        subject: crate::events::truncate_text(subject),
        detail: detail.map(|d| crate::events::truncate_text(&d)),
    }
}

/// What differs from `old` to `new`, as ledger entries; `redact` is applied to autostart
/// commands (they are command lines, and may carry a secret).
pub fn diff(
    old: &RegistryState,
    new: &RegistryState,
    redact: &dyn Fn(&str) -> String,
) -> Vec<EventKind> {
    let mut out = Vec::new();
    for (name, command) in &new.autostart {
        match old.autostart.get(name) {
            None => out.push(change(
                "autostart",
                "entry_added",
                name,
                Some(redact(command)),
            )),
            Some(was) if was != command => out.push(change(
                "autostart",
                "entry_changed",
                name,
                Some(redact(command)),
            )),
            Some(_) => {}
        }
    }
    for name in old
        .autostart
        .keys()
        .filter(|k| !new.autostart.contains_key(*k))
    {
        out.push(change("autostart", "entry_removed", name, None));
    }
    for (name, s) in &new.services {
        match old.services.get(name) {
            None => out.push(change(
                "services",
                "service_added",
                name,
                Some(format!("{}, start {}", s.image, start_type(s.start))),
            )),
            Some(was) => {
                if was.image != s.image {
                    out.push(change(
                        "services",
                        "image_changed",
                        name,
                        Some(format!("{} -> {}", was.image, s.image)),
                    ));
                }
                if was.start != s.start {
                    out.push(change(
                        "services",
                        "start_changed",
                        name,
                        Some(format!(
                            "{} -> {}",
                            start_type(was.start),
                            start_type(s.start)
                        )),
                    ));
                }
            }
        }
    }
    for name in old
        .services
        .keys()
        .filter(|k| !new.services.contains_key(*k))
    {
        out.push(change("services", "service_removed", name, None));
    }
    for (name, version) in &new.software {
        match old.software.get(name) {
            None => out.push(change(
                "packages",
                "installed",
                name,
                (!version.is_empty()).then(|| version.clone()),
            )),
            Some(was) if was != version => out.push(change(
                "packages",
                "upgraded",
                name,
                Some(format!("{was} -> {version}")),
            )),
            Some(_) => {}
        }
    }
    for name in old
        .software
        .keys()
        .filter(|k| !new.software.contains_key(*k))
    {
        out.push(change("packages", "removed", name, None));
    }
    out
}

/// Where the watched keys are: HKLM paths, and (for tests) another root.
#[derive(Debug, Clone)]
pub struct Roots {
    /// Keys whose values are autostart commands.
    pub autostart: Vec<String>,
    /// The key whose subkeys are services.
    pub services: String,
    /// Keys whose subkeys are installed software.
    pub uninstall: Vec<String>,
    /// Under the current user's hive instead of the machine's (tests).
    pub current_user: bool,
}

impl Default for Roots {
    fn default() -> Self {
        let cv = r"SOFTWARE\Microsoft\Windows\CurrentVersion";
        let wow = r"SOFTWARE\WOW6432Node\Microsoft\Windows\CurrentVersion";
        Self {
            autostart: vec![
                format!(r"{cv}\Run"),
                format!(r"{cv}\RunOnce"),
                format!(r"{wow}\Run"),
                format!(r"{wow}\RunOnce"),
            ],
            services: r"SYSTEM\CurrentControlSet\Services".into(),
            uninstall: vec![format!(r"{cv}\Uninstall"), format!(r"{wow}\Uninstall")],
            current_user: false,
        }
    }
}

#[cfg(windows)]
pub use read::{RegistryLedger, read};

#[cfg(windows)]
#[allow(unsafe_code)]
mod read {
    use std::sync::Arc;
    use std::sync::atomic::{AtomicBool, Ordering};

    use jitrec_format::{EventKind, SourceState};
    use windows_sys::Win32::Foundation::{ERROR_SUCCESS, WIN32_ERROR};
    use windows_sys::Win32::System::Registry::{
        HKEY, HKEY_CURRENT_USER, HKEY_LOCAL_MACHINE, KEY_READ, REG_DWORD, REG_EXPAND_SZ, REG_SZ,
        RegCloseKey, RegEnumKeyExW, RegEnumValueW, RegOpenKeyExW, RegQueryValueExW,
    };

    use super::{MAX_DATA, MAX_KEYS, MAX_VALUES, ROUND, RegistryState, Roots, Service};
    use crate::events::redact::Redactor;
    use crate::events::{EventSink, EventSource};
    use crate::windows::wide::{from_wide, to_wide};

    /// An open registry key, closed when dropped.
    struct Key(HKEY);

    impl Key {
        fn open(root: HKEY, path: &str) -> Option<Key> {
            let p = to_wide(path);
            let mut k: HKEY = std::ptr::null_mut();
            // SAFETY: a NUL-terminated path and a place for the handle.
            let status: WIN32_ERROR =
                unsafe { RegOpenKeyExW(root, p.as_ptr(), 0, KEY_READ, &mut k) };
            (status == ERROR_SUCCESS).then_some(Key(k))
        }

        fn sub(&self, name: &str) -> Option<Key> {
            Key::open(self.0, name)
        }

        /// The names of its subkeys, at most [`MAX_KEYS`].
        fn subkeys(&self) -> Vec<String> {
            let mut out = Vec::new();
            let mut name = [0u16; 256];
            for i in 0..MAX_KEYS {
                let mut len = name.len() as u32;
                // SAFETY: `name` with its length in characters; the rest may be null.
                let status = unsafe {
                    RegEnumKeyExW(
                        self.0,
                        i as u32,
                        name.as_mut_ptr(),
                        &mut len,
                        std::ptr::null(),
                        std::ptr::null_mut(),
                        std::ptr::null_mut(),
                        std::ptr::null_mut(),
                    )
                };
                if status != ERROR_SUCCESS {
                    break;
                }
                out.push(from_wide(&name[..(len as usize).min(name.len())]));
            }
            out
        }

        /// Its string values (`REG_SZ`, `REG_EXPAND_SZ`, unexpanded) by name, at most
        /// [`MAX_VALUES`], each at most [`MAX_DATA`] bytes.
        fn strings(&self) -> Vec<(String, String)> {
            let mut out = Vec::new();
            let mut name = [0u16; 256];
            let mut data = vec![0u16; MAX_DATA / 2];
            for i in 0..MAX_VALUES {
                let mut name_len = name.len() as u32;
                let mut data_len = (data.len() * 2) as u32;
                let mut kind = 0u32;
                // SAFETY: both buffers with their lengths (characters for the name, bytes for
                // the data); a value larger than `data` fails with ERROR_MORE_DATA and is
                // skipped.
                let status = unsafe {
                    RegEnumValueW(
                        self.0,
                        i as u32,
                        name.as_mut_ptr(),
                        &mut name_len,
                        std::ptr::null(),
                        &mut kind,
                        data.as_mut_ptr().cast(),
                        &mut data_len,
                    )
                };
                if status == windows_sys::Win32::Foundation::ERROR_NO_MORE_ITEMS {
                    break;
                }
                if status != ERROR_SUCCESS || !(kind == REG_SZ || kind == REG_EXPAND_SZ) {
                    continue;
                }
                let units = (data_len as usize / 2).min(data.len());
                out.push((
                    from_wide(&name[..(name_len as usize).min(name.len())]),
                    from_wide(&data[..units]),
                ));
            }
            out
        }

        /// One value: a string, or a DWORD in decimal.
        fn value(&self, name: &str) -> Option<String> {
            let n = to_wide(name);
            let mut data = vec![0u16; MAX_DATA / 2];
            let mut len = (data.len() * 2) as u32;
            let mut kind = 0u32;
            // SAFETY: a NUL-terminated name, `data` with its size in bytes.
            let status = unsafe {
                RegQueryValueExW(
                    self.0,
                    n.as_ptr(),
                    std::ptr::null(),
                    &mut kind,
                    data.as_mut_ptr().cast(),
                    &mut len,
                )
            };
            if status != ERROR_SUCCESS {
                return None;
            }
            if kind == REG_DWORD && len >= 4 {
                let lo = u32::from(data[0]);
                let hi = u32::from(data[1]);
                return Some((lo | (hi << 16)).to_string());
            }
            (kind == REG_SZ || kind == REG_EXPAND_SZ)
                .then(|| from_wide(&data[..(len as usize / 2).min(data.len())]))
        }
    }

    impl Drop for Key {
        fn drop(&mut self) {
            // SAFETY: a handle this value opened and owns.
            unsafe { RegCloseKey(self.0) };
        }
    }

    /// The watched keys now.
    pub fn read(roots: &Roots) -> RegistryState {
        let hive = if roots.current_user {
            HKEY_CURRENT_USER
        } else {
            HKEY_LOCAL_MACHINE
        };
        let mut s = RegistryState::default();
        for path in &roots.autostart {
            if let Some(k) = Key::open(hive, path) {
                for (name, command) in k.strings() {
                    s.autostart.insert(format!(r"{path}\{name}"), command);
                }
            }
        }
        if let Some(k) = Key::open(hive, &roots.services) {
            for name in k.subkeys() {
                let Some(sub) = k.sub(&name) else { continue };
                s.services.insert(
                    name,
                    Service {
                        image: sub.value("ImagePath").unwrap_or_default(),
                        start: sub.value("Start").and_then(|v| v.parse().ok()),
                    },
                );
            }
        }
        for path in &roots.uninstall {
            let Some(k) = Key::open(hive, path) else {
                continue;
            };
            for name in k.subkeys() {
                let Some(sub) = k.sub(&name) else { continue };
                // Entries without a display name are components, not what Programs lists.
                if let Some(shown) = sub.value("DisplayName").filter(|n| !n.is_empty()) {
                    s.software
                        .insert(shown, sub.value("DisplayVersion").unwrap_or_default());
                }
            }
        }
        s
    }

    /// The registry part of the change ledger, as an event source of its own.
    pub struct RegistryLedger {
        pub roots: Roots,
        pub redactor: Arc<Redactor>,
    }

    impl EventSource for RegistryLedger {
        fn name(&self) -> &'static str {
            "changes"
        }

        fn run(self: Box<Self>, mut sink: EventSink, stop: Arc<AtomicBool>) {
            let mut state = read(&self.roots);
            let t = sink.clock().now();
            sink.status(
                t,
                EventKind::EventSource {
                    source: "changes".into(),
                    state: SourceState::Partial,
                    detail: "the registry's Run and RunOnce keys, services and installed software, each round; local accounts and groups, scheduled tasks and files are not watched on Windows yet".into(),
                },
            );
            let redact = |s: &str| self.redactor.text(s);
            let mut waited = std::time::Instant::now();
            loop {
                let stopping = stop.load(Ordering::SeqCst);
                let asked = sink.wake().take();
                if asked || stopping || waited.elapsed() >= ROUND {
                    let now = sink.clock().now();
                    let next = read(&self.roots);
                    for c in super::diff(&state, &next, &redact) {
                        sink.emit(now, c);
                    }
                    state = next;
                    waited = std::time::Instant::now();
                    if asked || stopping {
                        sink.caught_up(now);
                    }
                }
                if stopping {
                    return;
                }
                std::thread::sleep(std::time::Duration::from_millis(20));
            }
        }
    }

    #[cfg(test)]
    mod tests {
        use windows_sys::Win32::System::Registry::{
            HKEY, HKEY_CURRENT_USER, KEY_ALL_ACCESS, REG_OPTION_NON_VOLATILE, RegCreateKeyExW,
            RegDeleteTreeW, RegSetValueExW,
        };

        use super::super::{RegistryState, Roots, diff};
        use super::read;
        use crate::windows::wide::to_wide;

        fn set(path: &str, name: &str, kind: u32, data: &[u8]) {
            let p = to_wide(path);
            let n = to_wide(name);
            let mut k: HKEY = std::ptr::null_mut();
            // SAFETY: NUL-terminated strings, a place for the handle, `data` with its length.
            unsafe {
                assert_eq!(
                    RegCreateKeyExW(
                        HKEY_CURRENT_USER,
                        p.as_ptr(),
                        0,
                        std::ptr::null(),
                        REG_OPTION_NON_VOLATILE,
                        KEY_ALL_ACCESS,
                        std::ptr::null(),
                        &mut k,
                        std::ptr::null_mut(),
                    ),
                    0
                );
                assert_eq!(
                    RegSetValueExW(k, n.as_ptr(), 0, kind, data.as_ptr(), data.len() as u32),
                    0
                );
                windows_sys::Win32::System::Registry::RegCloseKey(k);
            }
        }

        fn text(s: &str) -> Vec<u8> {
            to_wide(s).iter().flat_map(|u| u.to_le_bytes()).collect()
        }

        /// Under wine's registry: a test hive of its own under the current user, the same
        /// reads and diff as the machine's keys get.
        #[test]
        fn run_keys_services_and_software_changes_are_in_the_ledger() {
            let base = format!(r"Software\jitrec-ledger-test-{}", std::process::id());
            let roots = Roots {
                autostart: vec![format!(r"{base}\Run")],
                services: format!(r"{base}\Services"),
                uninstall: vec![format!(r"{base}\Uninstall")],
                current_user: true,
            };
            set(
                &format!(r"{base}\Run"),
                "OneDrive",
                1,
                &text(r"C:\od.exe /background"),
            );
            set(
                &format!(r"{base}\Services\Spooler"),
                "ImagePath",
                2,
                &text(r"C:\spoolsv.exe"),
            );
            set(
                &format!(r"{base}\Services\Spooler"),
                "Start",
                4,
                &2u32.to_le_bytes(),
            );
            let before = read(&roots);
            assert_eq!(before.services.len(), 1, "{before:?}");
            assert_eq!(diff(&before, &read(&roots), &|s| s.to_owned()), []);

            set(
                &format!(r"{base}\Run"),
                "Updater",
                1,
                &text(r"C:\Users\Public\u.exe --token=s3cr3t"),
            );
            set(
                &format!(r"{base}\Services\Backdoor"),
                "ImagePath",
                2,
                &text(r"C:\b.exe"),
            );
            set(
                &format!(r"{base}\Services\Backdoor"),
                "Start",
                4,
                &2u32.to_le_bytes(),
            );
            set(
                &format!(r"{base}\Services\Spooler"),
                "Start",
                4,
                &4u32.to_le_bytes(),
            );
            set(
                &format!(r"{base}\Uninstall\{{1234}}"),
                "DisplayName",
                1,
                &text("PuTTY release 0.81"),
            );
            set(
                &format!(r"{base}\Uninstall\{{1234}}"),
                "DisplayVersion",
                1,
                &text("0.81"),
            );
            let redact = |s: &str| s.replace("s3cr3t", "[redacted]");
            let got = super::super::tests::described(&diff(&before, &read(&roots), &redact));
            let run = format!(r"{base}\Run\Updater");
            for want in [
                format!(r"autostart entry_added {run} C:\Users\Public\u.exe --token=[redacted]"),
                r"services service_added Backdoor C:\b.exe, start automatic".to_owned(),
                "services start_changed Spooler automatic -> disabled".to_owned(),
                "packages installed PuTTY release 0.81 0.81".to_owned(),
            ] {
                assert!(got.contains(&want), "missing {want:?} in {got:#?}");
            }
            assert_eq!(got.len(), 4, "{got:#?}");
            let empty = RegistryState::default();
            assert!(!diff(&empty, &before, &|s| s.to_owned()).is_empty());
            let b = to_wide(&base);
            // SAFETY: a NUL-terminated path under the current user's hive this test made.
            unsafe { RegDeleteTreeW(HKEY_CURRENT_USER, b.as_ptr()) };
        }
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    /// Ledger entries as `area action subject detail` lines (also for the wine test's reads).
    pub(crate) fn described(e: &[EventKind]) -> Vec<String> {
        e.iter()
            .map(|e| match e {
                EventKind::Change {
                    area,
                    action,
                    subject,
                    detail,
                } => format!(
                    "{area} {action} {subject} {}",
                    detail.as_deref().unwrap_or("")
                ),
                other => format!("{other:?}"),
            })
            .collect()
    }

    #[test]
    fn what_changed_in_the_watched_keys_is_listed_and_nothing_else() {
        let mut old = RegistryState::default();
        old.autostart
            .insert(r"Run\OneDrive".into(), "od.exe".into());
        old.autostart.insert(r"Run\Gone".into(), "gone.exe".into());
        old.services.insert(
            "Spooler".into(),
            Service {
                image: "spoolsv.exe".into(),
                start: Some(2),
            },
        );
        old.software.insert("7-Zip".into(), "23.01".into());
        let mut new = old.clone();
        new.autostart.remove(r"Run\Gone");
        new.autostart
            .insert(r"Run\Evil".into(), "evil.exe --key=abc".into());
        new.services.get_mut("Spooler").unwrap().start = Some(4);
        new.services.insert(
            "WinDefend".into(),
            Service {
                image: "MsMpEng.exe".into(),
                start: None,
            },
        );
        new.software.insert("7-Zip".into(), "24.08".into());
        let got = described(&diff(&old, &new, &|s| s.replace("abc", "***")));
        assert_eq!(
            got,
            [
                r"autostart entry_added Run\Evil evil.exe --key=***",
                r"autostart entry_removed Run\Gone ",
                "services start_changed Spooler automatic -> disabled",
                "services service_added WinDefend MsMpEng.exe, start unknown",
                "packages upgraded 7-Zip 23.01 -> 24.08",
            ]
        );
        assert!(diff(&new, &new, &|s| s.to_owned()).is_empty());
    }
}
