//! The JIT trigger on Windows: JIT is active exactly while the interactive (console) user is a
//! direct member of the local Administrators group, identified by its well-known SID
//! `S-1-5-32-544` (its name is localised, so it is looked up from the SID, never written down).
//!
//! [`AdminTrigger`] is the decision, kept apart from how membership is read so it is tested on
//! every platform: it turns a stream of [`Observation`]s (taken every [`POLL`] by
//! [`AdminWatcher`] on Windows) into JIT starts and stops, the same [`JitEvent`]s the Linux group
//! watcher sends. A failed read keeps the last known state instead of flapping; a log-off or a
//! different user at the console ends the elevation of the one who was there.
//!
//! Membership through a nested group (a domain group inside Administrators) is not seen: JIT
//! tools add the user account itself, and the logon token, which would show nesting, does not
//! change when membership does.

use crate::trigger::JitEvent;
use crate::windows::sid::Sid;

/// How often membership is read: detection within one second needs no slower than this.
pub const POLL: std::time::Duration = std::time::Duration::from_millis(500);

/// The user signed in at the console.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct InteractiveUser {
    /// `DOMAIN\name` (or `COMPUTER\name` for a local account).
    pub name: String,
    pub sid: Sid,
}

/// One reading of the system.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Observation {
    /// Nobody is signed in at the console.
    NoUser,
    /// `user` is at the console; `admins` are the direct members of Administrators.
    User {
        user: InteractiveUser,
        admins: Vec<Sid>,
    },
    /// The reading failed (the reason is for the log).
    Failed(String),
}

/// Turns observations into JIT starts and stops.
#[derive(Debug, Default)]
pub struct AdminTrigger {
    elevated: Option<InteractiveUser>,
    failures: u32,
}

impl AdminTrigger {
    pub fn new() -> Self {
        Self::default()
    }

    /// Who is elevated now, as far as the trigger knows.
    pub fn elevated(&self) -> Option<&InteractiveUser> {
        self.elevated.as_ref()
    }

    /// Consecutive failed readings (the caller reports a long run of them).
    pub fn failures(&self) -> u32 {
        self.failures
    }

    /// Feeds one reading; returns what changed, in order (a stop before a start when one user
    /// replaces another).
    pub fn observe(&mut self, obs: Observation) -> Vec<JitEvent> {
        let now = match obs {
            Observation::Failed(_) => {
                self.failures = self.failures.saturating_add(1);
                return Vec::new();
            }
            Observation::NoUser => None,
            Observation::User { user, admins } => admins.contains(&user.sid).then_some(user),
        };
        self.failures = 0;
        let mut out = Vec::new();
        match (&self.elevated, &now) {
            (Some(was), Some(is)) if was.sid == is.sid => return out,
            (None, None) => return out,
            _ => {}
        }
        if let Some(was) = self.elevated.take() {
            let reason = match &now {
                Some(_) => format!("{} is no longer the console user", was.name),
                None => format!("{} left Administrators or signed out", was.name),
            };
            out.push(JitEvent::Stop {
                cause: jitrec_format::StopCause {
                    by: jitrec_format::StopBy::GroupChange,
                    peer: None,
                    recorded_user: None,
                    detail: reason,
                },
                reply: None,
            });
        }
        if let Some(is) = now {
            out.push(JitEvent::Start {
                user: is.name.clone(),
                trigger: jitrec_format::Trigger::GroupMembership,
                authorized_by: None,
                reason: None,
            });
            self.elevated = Some(is);
        }
        out
    }
}

#[cfg(windows)]
pub use live::{AdminWatcher, observe};

#[cfg(windows)]
#[allow(unsafe_code)]
mod live {
    //! Reading the console user and the Administrators group through Win32.

    use std::sync::Arc;
    use std::sync::atomic::{AtomicBool, Ordering};
    use std::sync::mpsc::Sender;

    use windows_sys::Win32::Foundation::{ERROR_MORE_DATA, ERROR_SUCCESS, LocalFree};
    use windows_sys::Win32::NetworkManagement::NetManagement::{
        LOCALGROUP_MEMBERS_INFO_0, MAX_PREFERRED_LENGTH, NetApiBufferFree, NetLocalGroupGetMembers,
    };
    use windows_sys::Win32::Security::Authorization::ConvertStringSidToSidW;
    use windows_sys::Win32::Security::{
        GetLengthSid, IsValidSid, LookupAccountNameW, LookupAccountSidW, PSID, SID_NAME_USE,
    };
    use windows_sys::Win32::System::RemoteDesktop::{
        WTS_CURRENT_SERVER_HANDLE, WTSDomainName, WTSFreeMemory, WTSGetActiveConsoleSessionId,
        WTSQuerySessionInformationW, WTSUserName,
    };

    use super::{AdminTrigger, InteractiveUser, Observation, POLL};
    use crate::trigger::JitEvent;
    use crate::windows::sid::Sid;
    use crate::windows::wide::{from_wide_ptr, to_wide};

    /// Polls membership and sends JIT events until `stop` is set.
    #[derive(Debug, Default)]
    pub struct AdminWatcher;

    impl AdminWatcher {
        pub fn run(self, events: Sender<JitEvent>, stop: Arc<AtomicBool>) {
            let mut trigger = AdminTrigger::new();
            while !stop.load(Ordering::SeqCst) {
                let obs = observe();
                if let Observation::Failed(why) = &obs {
                    // Every 2 minutes of failures: the trigger is blind and an operator should
                    // know (recording continues or stays off as it was).
                    if trigger.failures() % 240 == 239 {
                        tracing::error!(error = %why, "cannot read Administrators membership; JIT detection is blind");
                    } else {
                        tracing::debug!(error = %why, "membership reading failed");
                    }
                }
                for ev in trigger.observe(obs) {
                    tracing::info!(event = ?ev, "Administrators membership changed");
                    if events.send(ev).is_err() {
                        return;
                    }
                }
                std::thread::sleep(POLL);
            }
        }
    }

    /// Reads the console user and the direct members of Administrators.
    pub fn observe() -> Observation {
        match console_user() {
            Ok(None) => Observation::NoUser,
            Ok(Some(user)) => match administrators() {
                Ok(admins) => Observation::User { user, admins },
                Err(e) => Observation::Failed(e),
            },
            Err(e) => Observation::Failed(e),
        }
    }

    fn session_string(session: u32, class: i32) -> Result<String, String> {
        let mut buf: *mut u16 = std::ptr::null_mut();
        let mut bytes = 0u32;
        // SAFETY: out-pointers to locals; on success `buf` is a NUL-terminated string allocated
        // by WTS, freed below with WTSFreeMemory.
        let ok = unsafe {
            WTSQuerySessionInformationW(
                WTS_CURRENT_SERVER_HANDLE,
                session,
                class,
                &mut buf,
                &mut bytes,
            )
        };
        if ok == 0 || buf.is_null() {
            return Err(format!(
                "WTSQuerySessionInformation: {}",
                std::io::Error::last_os_error()
            ));
        }
        // SAFETY: `buf` is the NUL-terminated string WTS returned.
        let text = unsafe { from_wide_ptr(buf) };
        // SAFETY: allocated by WTSQuerySessionInformationW.
        unsafe { WTSFreeMemory(buf.cast()) };
        Ok(text)
    }

    fn console_user() -> Result<Option<InteractiveUser>, String> {
        // SAFETY: no arguments.
        let session = unsafe { WTSGetActiveConsoleSessionId() };
        if session == u32::MAX {
            return Ok(None); // the console is being attached or detached
        }
        let user = session_string(session, WTSUserName)?;
        if user.is_empty() {
            return Ok(None);
        }
        let domain = session_string(session, WTSDomainName)?;
        let name = if domain.is_empty() {
            user
        } else {
            format!("{domain}\\{user}")
        };
        let sid = account_sid(&name)?;
        Ok(Some(InteractiveUser { name, sid }))
    }

    fn account_sid(name: &str) -> Result<Sid, String> {
        let wname = to_wide(name);
        let mut sid = vec![0u8; 68];
        let mut sid_len = sid.len() as u32;
        let mut domain = vec![0u16; 256];
        let mut domain_len = domain.len() as u32;
        let mut kind: SID_NAME_USE = 0;
        // SAFETY: buffers with their lengths; LookupAccountNameW writes at most those.
        let ok = unsafe {
            LookupAccountNameW(
                std::ptr::null(),
                wname.as_ptr(),
                sid.as_mut_ptr().cast(),
                &mut sid_len,
                domain.as_mut_ptr(),
                &mut domain_len,
                &mut kind,
            )
        };
        if ok == 0 {
            return Err(format!(
                "LookupAccountName({name}): {}",
                std::io::Error::last_os_error()
            ));
        }
        Sid::from_bytes(&sid[..sid_len as usize])
            .map(|(s, _)| s)
            .map_err(|e| e.to_string())
    }

    /// Copies a SID that Windows owns into a [`Sid`].
    ///
    /// # Safety
    /// `psid` must point to a valid SID for the duration of the call.
    unsafe fn sid_from_psid(psid: PSID) -> Result<Sid, String> {
        // SAFETY: caller's contract.
        if unsafe { IsValidSid(psid) } == 0 {
            return Err("invalid SID".into());
        }
        // SAFETY: valid SID (checked); GetLengthSid bounds the slice.
        let bytes =
            unsafe { std::slice::from_raw_parts(psid as *const u8, GetLengthSid(psid) as usize) };
        Sid::from_bytes(bytes)
            .map(|(s, _)| s)
            .map_err(|e| e.to_string())
    }

    /// The local name of BUILTIN\Administrators on this machine (localised).
    fn administrators_name() -> Result<Vec<u16>, String> {
        let text = to_wide(&Sid::builtin_administrators().to_string());
        let mut psid: PSID = std::ptr::null_mut();
        // SAFETY: NUL-terminated input; on success `psid` is LocalAlloc'd and freed below.
        if unsafe { ConvertStringSidToSidW(text.as_ptr(), &mut psid) } == 0 {
            return Err(format!(
                "ConvertStringSidToSid: {}",
                std::io::Error::last_os_error()
            ));
        }
        let mut name = vec![0u16; 256];
        let mut name_len = name.len() as u32;
        let mut domain = vec![0u16; 256];
        let mut domain_len = domain.len() as u32;
        let mut kind: SID_NAME_USE = 0;
        // SAFETY: `psid` is valid; buffers with their lengths.
        let ok = unsafe {
            LookupAccountSidW(
                std::ptr::null(),
                psid,
                name.as_mut_ptr(),
                &mut name_len,
                domain.as_mut_ptr(),
                &mut domain_len,
                &mut kind,
            )
        };
        let err = std::io::Error::last_os_error();
        // SAFETY: allocated by ConvertStringSidToSidW.
        unsafe { LocalFree(psid) };
        if ok == 0 {
            return Err(format!("LookupAccountSid(S-1-5-32-544): {err}"));
        }
        name.truncate(name_len as usize);
        name.push(0);
        Ok(name)
    }

    fn administrators() -> Result<Vec<Sid>, String> {
        let group = administrators_name()?;
        let mut members = Vec::new();
        let mut resume: usize = 0;
        loop {
            let mut buf: *mut u8 = std::ptr::null_mut();
            let (mut read, mut total) = (0u32, 0u32);
            // SAFETY: out-pointers to locals; `buf` is freed with NetApiBufferFree below.
            let status = unsafe {
                NetLocalGroupGetMembers(
                    std::ptr::null(),
                    group.as_ptr(),
                    0,
                    &mut buf,
                    MAX_PREFERRED_LENGTH,
                    &mut read,
                    &mut total,
                    &mut resume,
                )
            };
            if status != ERROR_SUCCESS && status != ERROR_MORE_DATA {
                return Err(format!("NetLocalGroupGetMembers: error {status}"));
            }
            if !buf.is_null() {
                // SAFETY: level 0 returns `read` LOCALGROUP_MEMBERS_INFO_0 records.
                let infos = unsafe {
                    std::slice::from_raw_parts(
                        buf as *const LOCALGROUP_MEMBERS_INFO_0,
                        read as usize,
                    )
                };
                for info in infos {
                    // SAFETY: each record's SID lives in `buf` until it is freed.
                    match unsafe { sid_from_psid(info.lgrmi0_sid) } {
                        Ok(s) => members.push(s),
                        Err(e) => tracing::warn!(error = %e, "skipping an Administrators member"),
                    }
                }
                // SAFETY: allocated by NetLocalGroupGetMembers.
                unsafe { NetApiBufferFree(buf.cast()) };
            }
            if status == ERROR_SUCCESS {
                return Ok(members);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn user(name: &str, rid: u32) -> InteractiveUser {
        InteractiveUser {
            name: format!("CORP\\{name}"),
            sid: Sid::new(5, &[21, 1, 2, 3, rid]).unwrap(),
        }
    }

    fn at_console(u: &InteractiveUser, admins: &[&InteractiveUser]) -> Observation {
        Observation::User {
            user: u.clone(),
            admins: std::iter::once(Sid::new(5, &[21, 1, 2, 3, 500]).unwrap())
                .chain(admins.iter().map(|a| a.sid.clone()))
                .collect(),
        }
    }

    fn kinds(evs: &[JitEvent]) -> Vec<&'static str> {
        evs.iter()
            .map(|e| match e {
                JitEvent::Start { .. } => "start",
                JitEvent::Stop { .. } => "stop",
            })
            .collect()
    }

    #[test]
    fn joining_and_leaving_administrators_starts_and_stops() {
        let alice = user("alice", 1104);
        let mut t = AdminTrigger::new();
        assert!(t.observe(at_console(&alice, &[])).is_empty());
        let evs = t.observe(at_console(&alice, &[&alice]));
        assert_eq!(kinds(&evs), ["start"]);
        assert!(
            matches!(&evs[0], JitEvent::Start { user, trigger: jitrec_format::Trigger::GroupMembership, .. } if user == "CORP\\alice")
        );
        assert!(
            t.observe(at_console(&alice, &[&alice])).is_empty(),
            "no repeat"
        );
        let evs = t.observe(at_console(&alice, &[]));
        assert_eq!(kinds(&evs), ["stop"]);
        assert!(matches!(
            &evs[0],
            JitEvent::Stop {
                cause: jitrec_format::StopCause {
                    by: jitrec_format::StopBy::GroupChange,
                    ..
                },
                ..
            }
        ));
        assert_eq!(t.elevated(), None);
    }

    #[test]
    fn membership_is_by_sid_not_by_name() {
        let alice = user("alice", 1104);
        // Another account with the same display name but another SID is in the group.
        let impostor = InteractiveUser {
            name: alice.name.clone(),
            sid: Sid::new(5, &[21, 9, 9, 9, 1104]).unwrap(),
        };
        let mut t = AdminTrigger::new();
        assert!(t.observe(at_console(&alice, &[&impostor])).is_empty());
    }

    #[test]
    fn failed_readings_keep_the_state() {
        let alice = user("alice", 1104);
        let mut t = AdminTrigger::new();
        assert_eq!(kinds(&t.observe(at_console(&alice, &[&alice]))), ["start"]);
        for i in 1..=5 {
            assert!(t.observe(Observation::Failed("RPC down".into())).is_empty());
            assert_eq!(t.failures(), i);
        }
        assert_eq!(t.elevated(), Some(&alice));
        assert!(t.observe(at_console(&alice, &[&alice])).is_empty());
        assert_eq!(t.failures(), 0);
    }

    #[test]
    fn sign_out_or_another_user_ends_the_elevation() {
        let (alice, bob) = (user("alice", 1104), user("bob", 1105));
        let mut t = AdminTrigger::new();
        t.observe(at_console(&alice, &[&alice]));
        assert_eq!(kinds(&t.observe(Observation::NoUser)), ["stop"]);
        t.observe(at_console(&alice, &[&alice]));
        // Fast user switching to bob, who is also an admin: alice's session ends, bob's begins.
        let evs = t.observe(at_console(&bob, &[&alice, &bob]));
        assert_eq!(kinds(&evs), ["stop", "start"]);
        assert!(matches!(&evs[1], JitEvent::Start { user, .. } if user == "CORP\\bob"));
        // Bob at the console but not an admin: stop only.
        let evs = t.observe(at_console(&bob, &[&alice]));
        assert_eq!(kinds(&evs), ["stop"]);
        assert!(t.observe(Observation::NoUser).is_empty());
    }
}
