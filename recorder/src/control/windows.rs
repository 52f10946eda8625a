//! The control channel on Windows: a named pipe carrying the same one-line JSON requests as the
//! Linux control socket ([`crate::control::respond`]).
//!
//! Who may connect is decided by the pipe's own access list, set when it is created: a
//! protected DACL granting access to LocalSystem and BUILTIN\Administrators only (an
//! administrator's process must be elevated, since UAC's filtered token has the group as
//! deny-only). The first instance is created with FILE_FLAG_FIRST_PIPE_INSTANCE, so if another
//! process already owns the name (squatting it to impersonate the recorder) the recorder refuses
//! to start instead of sharing it; remote clients are rejected. Each request is logged with the
//! client's process id.

#![allow(unsafe_code)]

use std::fs::File;
use std::io::{BufRead, BufReader, Read};
use std::os::windows::io::{AsRawHandle, FromRawHandle, OwnedHandle};
use std::sync::Arc;
use std::sync::mpsc::Sender;

use windows_sys::Win32::Foundation::{
    ERROR_PIPE_CONNECTED, GetLastError, INVALID_HANDLE_VALUE, LocalFree,
};
use windows_sys::Win32::Security::Authorization::{
    ConvertStringSecurityDescriptorToSecurityDescriptorW, SDDL_REVISION_1,
};
use windows_sys::Win32::Security::{PSECURITY_DESCRIPTOR, SECURITY_ATTRIBUTES};
use windows_sys::Win32::Storage::FileSystem::{FILE_FLAG_FIRST_PIPE_INSTANCE, PIPE_ACCESS_DUPLEX};
use windows_sys::Win32::System::Pipes::{
    ConnectNamedPipe, CreateNamedPipeW, GetNamedPipeClientProcessId, PIPE_READMODE_BYTE,
    PIPE_REJECT_REMOTE_CLIENTS, PIPE_TYPE_BYTE, PIPE_UNLIMITED_INSTANCES, PIPE_WAIT,
};

use crate::control::{self, MAX_REQUEST, Request, Response, Shared};
use crate::trigger::JitEvent;
use crate::windows::wide::to_wide;

/// The pipe's default name.
pub const DEFAULT_PIPE: &str = r"\\.\pipe\jitrec-recorder";

/// Protected DACL: generic-all for LocalSystem (SY) and BUILTIN\Administrators (BA), nothing
/// inherited, nobody else.
pub const PIPE_SDDL: &str = "D:P(A;;GA;;;SY)(A;;GA;;;BA)";

/// A security descriptor made from SDDL, freed on drop.
struct Descriptor(PSECURITY_DESCRIPTOR);

impl Descriptor {
    fn from_sddl(sddl: &str) -> std::io::Result<Self> {
        let text = to_wide(sddl);
        let mut sd: PSECURITY_DESCRIPTOR = std::ptr::null_mut();
        // SAFETY: NUL-terminated input; on success `sd` is LocalAlloc'd, freed in Drop.
        let ok = unsafe {
            ConvertStringSecurityDescriptorToSecurityDescriptorW(
                text.as_ptr(),
                SDDL_REVISION_1,
                &mut sd,
                std::ptr::null_mut(),
            )
        };
        if ok == 0 {
            return Err(std::io::Error::last_os_error());
        }
        Ok(Self(sd))
    }
}

impl Drop for Descriptor {
    fn drop(&mut self) {
        // SAFETY: allocated by ConvertStringSecurityDescriptorToSecurityDescriptorW.
        unsafe { LocalFree(self.0) };
    }
}

/// Creates one instance of the pipe.
fn create(name: &[u16], sd: &Descriptor, first: bool) -> std::io::Result<OwnedHandle> {
    let sa = SECURITY_ATTRIBUTES {
        nLength: std::mem::size_of::<SECURITY_ATTRIBUTES>() as u32,
        lpSecurityDescriptor: sd.0,
        bInheritHandle: 0,
    };
    let open_mode = PIPE_ACCESS_DUPLEX
        | if first {
            FILE_FLAG_FIRST_PIPE_INSTANCE
        } else {
            0
        };
    // SAFETY: NUL-terminated name; `sa` and the descriptor outlive the call.
    let h = unsafe {
        CreateNamedPipeW(
            name.as_ptr(),
            open_mode,
            PIPE_TYPE_BYTE | PIPE_READMODE_BYTE | PIPE_WAIT | PIPE_REJECT_REMOTE_CLIENTS,
            PIPE_UNLIMITED_INSTANCES,
            4096,
            4096,
            0,
            &sa,
        )
    };
    if h == INVALID_HANDLE_VALUE {
        return Err(std::io::Error::last_os_error());
    }
    // SAFETY: a fresh handle we own.
    Ok(unsafe { OwnedHandle::from_raw_handle(h) })
}

/// Creates the pipe's first instance: fails if the name is taken. Call before reporting the
/// recorder as started, then hand the result to [`serve`].
pub fn bind(name: &str) -> std::io::Result<(Vec<u16>, OwnedHandle)> {
    let wname = to_wide(name);
    let sd = Descriptor::from_sddl(PIPE_SDDL)?;
    let first = create(&wname, &sd, true).map_err(|e| {
        std::io::Error::new(
            e.kind(),
            format!("cannot create the control pipe {name} (is another recorder, or something posing as one, running?): {e}"),
        )
    })?;
    Ok((wname, first))
}

/// Serves the pipe forever (run it on its own thread).
pub fn serve(bound: (Vec<u16>, OwnedHandle), jit: Sender<JitEvent>, shared: Arc<Shared>) {
    let (name, mut next) = bound;
    loop {
        let h = next;
        // SAFETY: a pipe handle we own; blocks until a client connects.
        let ok = unsafe { ConnectNamedPipe(h.as_raw_handle(), std::ptr::null_mut()) };
        // SAFETY: no arguments.
        if ok == 0 && unsafe { GetLastError() } != ERROR_PIPE_CONNECTED {
            tracing::warn!(error = %std::io::Error::last_os_error(), "control pipe connect failed");
        } else {
            let (jit, shared) = (jit.clone(), Arc::clone(&shared));
            std::thread::spawn(move || handle(File::from(h), &jit, &shared));
        }
        // The next instance, for the next client.
        next = match Descriptor::from_sddl(PIPE_SDDL).and_then(|sd| create(&name, &sd, false)) {
            Ok(h) => h,
            Err(e) => {
                tracing::error!(error = %e, "cannot create a control pipe instance; control requests are refused until restart");
                return;
            }
        };
    }
}

fn handle(mut pipe: File, jit: &Sender<JitEvent>, shared: &Shared) {
    let mut pid = 0u32;
    // SAFETY: a connected pipe handle; `pid` is a local.
    unsafe { GetNamedPipeClientProcessId(pipe.as_raw_handle(), &mut pid) };
    let mut line = String::new();
    let read = BufReader::new((&pipe).take(MAX_REQUEST)).read_line(&mut line);
    let req: Request = match read
        .map_err(|e| e.to_string())
        .and_then(|_| serde_json::from_str(&line).map_err(|e| e.to_string()))
    {
        Ok(r) => r,
        Err(e) => {
            control::reply(
                &mut pipe,
                &Response {
                    ok: false,
                    message: format!("bad request: {e}"),
                    session: None,
                    chunks: None,
                },
            );
            return;
        }
    };
    tracing::info!(client_pid = pid, request = ?req, "control request");
    // The pipe admits only administrators and SYSTEM; which account the client runs as is not
    // looked up yet (its token), so the peer is named by process id alone.
    let peer = jitrec_format::StopPeer {
        user: jitrec_format::UserRef {
            name: "an administrator or SYSTEM (account not identified)".into(),
            id: "unknown".into(),
        },
        pid: (pid != 0).then_some(pid),
        exe: None,
        login_user: None,
    };
    let resp = control::respond(req, peer, jit, shared);
    control::reply(&mut pipe, &resp);
    let _ = pipe.sync_all(); // FlushFileBuffers: the client has read the answer
}

/// Sends one request over the pipe and returns the answer.
pub fn request(name: &str, req: &Request) -> std::io::Result<Response> {
    let pipe = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open(name)?;
    control::exchange(pipe, req)
}
