//! The Windows service glue: registers with the service control manager, turns its
//! notifications into [`Input`]s for the [`Supervisor`], and carries out its [`Action`]s,
//! starting the recording agent as LocalSystem inside the console session (a copy of the
//! service's own token with that session's id, on the `winsta0\default` desktop) with a pipe as
//! its standard input. Closing that pipe is how the agent is told to finish: it ends its session
//! (last chunk committed) and exits.

#![allow(unsafe_code)]

use std::ffi::OsString;
use std::sync::mpsc::{self, RecvTimeoutError};
use std::time::{Duration, Instant};

use windows_service::service::{
    ServiceControl, ServiceControlAccept, ServiceExitCode, ServiceState, ServiceStatus,
    ServiceType, SessionChangeReason,
};
use windows_service::service_control_handler::{self, ServiceControlHandlerResult};
use windows_service::{define_windows_service, service_dispatcher};
use windows_sys::Win32::Foundation::{
    CloseHandle, HANDLE, HANDLE_FLAG_INHERIT, SetHandleInformation, WAIT_OBJECT_0,
};
use windows_sys::Win32::Security::{
    DuplicateTokenEx, SECURITY_ATTRIBUTES, SecurityImpersonation, SetTokenInformation,
    TOKEN_ALL_ACCESS, TokenPrimary, TokenSessionId,
};
use windows_sys::Win32::System::Pipes::CreatePipe;
use windows_sys::Win32::System::RemoteDesktop::WTSGetActiveConsoleSessionId;
use windows_sys::Win32::System::Threading::{
    CREATE_NO_WINDOW, CreateProcessAsUserW, GetCurrentProcess, GetExitCodeProcess,
    OpenProcessToken, PROCESS_INFORMATION, STARTF_USESTDHANDLES, STARTUPINFOW, TerminateProcess,
    WaitForSingleObject,
};

use super::supervisor::{Action, Input, Reported, Supervisor};
use super::wide::to_wide;

/// The service's name in the service control manager.
pub const SERVICE_NAME: &str = "jitrec-recorder";
/// Where the service and its agents log.
pub const LOG_FILE: &str = r"C:\ProgramData\jitrec\recorder.log";

/// Runs as the service (call from `main` when started by the service control manager): blocks
/// until the service stops. `agent_args` are the arguments the agent is started with; `log`
/// becomes the agent's stderr.
pub fn run_service(agent_args: Vec<String>, log: std::fs::File) -> windows_service::Result<()> {
    AGENT
        .set((agent_args, log))
        .map_err(|_| windows_service::Error::LaunchArgumentsNotSupported)?;
    service_dispatcher::start(SERVICE_NAME, ffi_service_main)
}

/// What the agent is started with: its arguments and the log file for its stderr.
static AGENT: std::sync::OnceLock<(Vec<String>, std::fs::File)> = std::sync::OnceLock::new();

define_windows_service!(ffi_service_main, service_main);

fn service_main(_args: Vec<OsString>) {
    if let Err(e) = supervise() {
        tracing::error!(error = %e, "the recorder service failed; nothing is recorded until it is restarted");
    }
}

/// An agent process and the write end of its stdin.
struct AgentProcess {
    process: HANDLE,
    stdin: HANDLE,
}

fn close(h: &mut HANDLE) {
    if !h.is_null() {
        // SAFETY: a handle we own, closed once.
        unsafe { CloseHandle(*h) };
        *h = std::ptr::null_mut();
    }
}

fn supervise() -> windows_service::Result<()> {
    let (tx, rx) = mpsc::channel::<Input>();
    let handler = move |control| -> ServiceControlHandlerResult {
        let input = match control {
            ServiceControl::Stop | ServiceControl::Shutdown | ServiceControl::Preshutdown => {
                Some(Input::Stop)
            }
            ServiceControl::SessionChange(p) => {
                let s = p.notification.session_id;
                match p.reason {
                    SessionChangeReason::SessionLogon => Some(Input::Logon(s)),
                    SessionChangeReason::SessionLogoff => Some(Input::Logoff(s)),
                    SessionChangeReason::ConsoleConnect => Some(Input::ConsoleConnect(s)),
                    SessionChangeReason::ConsoleDisconnect => Some(Input::ConsoleDisconnect(s)),
                    _ => None,
                }
            }
            ServiceControl::Interrogate => return ServiceControlHandlerResult::NoError,
            _ => return ServiceControlHandlerResult::NotImplemented,
        };
        if let Some(i) = input {
            let _ = tx.send(i);
        }
        ServiceControlHandlerResult::NoError
    };
    let status = service_control_handler::register(SERVICE_NAME, handler)?;
    let report = |r: Reported| {
        let (state, hint) = match r {
            Reported::Running => (ServiceState::Running, Duration::ZERO),
            Reported::StopPending(h) => (ServiceState::StopPending, h),
            Reported::Stopped => (ServiceState::Stopped, Duration::ZERO),
        };
        let _ = status.set_service_status(ServiceStatus {
            service_type: ServiceType::OWN_PROCESS,
            current_state: state,
            controls_accepted: if state == ServiceState::Running {
                ServiceControlAccept::STOP
                    | ServiceControlAccept::PRESHUTDOWN
                    | ServiceControlAccept::SESSION_CHANGE
            } else {
                ServiceControlAccept::empty()
            },
            exit_code: ServiceExitCode::Win32(0),
            checkpoint: 0,
            wait_hint: hint,
            process_id: None,
        });
    };
    let mut sup = Supervisor::new();
    let mut agent: Option<(u32, AgentProcess)> = None;
    // SAFETY: no arguments.
    let console = unsafe { WTSGetActiveConsoleSessionId() };
    let mut input = Some(Input::Started {
        console: (console != u32::MAX && console != 0).then_some(console),
    });
    loop {
        let now = Instant::now();
        let actions = sup.handle(input.take().unwrap_or(Input::Tick), now);
        for a in actions {
            match a {
                Action::Report(r) => report(r),
                Action::StartAgent(session) => match start_agent(session) {
                    Ok(p) => agent = Some((session, p)),
                    Err(e) => {
                        tracing::error!(session, error = %e, "cannot start the recording agent; nothing is recorded in this session");
                        input = Some(Input::AgentExited { session, code: 1 });
                    }
                },
                Action::StopAgent(session) => {
                    if let Some((s, p)) = agent.as_mut()
                        && *s == session
                    {
                        close(&mut p.stdin);
                    }
                }
                Action::KillAgent(session) => {
                    if let Some((_, mut p)) = agent.take_if(|(s, _)| *s == session) {
                        tracing::error!(
                            session,
                            "the recording agent did not finish in time; killed (its last chunk may be lost; the spool recovers the session as interrupted)"
                        );
                        // SAFETY: our child's process handle.
                        unsafe { TerminateProcess(p.process, 1) };
                        close(&mut p.stdin);
                        close(&mut p.process);
                    }
                }
            }
        }
        if sup.is_stopped() {
            return Ok(());
        }
        if input.is_some() {
            continue;
        }
        // An agent's exit, else the next notification, else a tick.
        if let Some((s, p)) = agent.as_mut() {
            // SAFETY: our child's process handle.
            if unsafe { WaitForSingleObject(p.process, 0) } == WAIT_OBJECT_0 {
                let mut code = 0u32;
                // SAFETY: as above; out-pointer to a local.
                unsafe { GetExitCodeProcess(p.process, &mut code) };
                let session = *s;
                if let Some((_, mut p)) = agent.take() {
                    close(&mut p.stdin);
                    close(&mut p.process);
                }
                input = Some(Input::AgentExited { session, code });
                continue;
            }
        }
        match rx.recv_timeout(Duration::from_millis(250)) {
            Ok(i) => input = Some(i),
            Err(RecvTimeoutError::Timeout) => {}
            Err(RecvTimeoutError::Disconnected) => input = Some(Input::Stop),
        }
    }
}

/// Starts the agent as LocalSystem in `session`, its stdin a pipe whose write end we keep.
fn start_agent(session: u32) -> std::io::Result<AgentProcess> {
    let last = std::io::Error::last_os_error;
    let exe = std::env::current_exe()?;
    let mut line = format!("\"{}\"", exe.display());
    let (args, log) = AGENT
        .get()
        .ok_or_else(|| std::io::Error::other("the service was not given the agent's arguments"))?;
    for a in args {
        line.push(' ');
        line.push_str(&quote_arg(a));
    }
    let mut wline = to_wide(&line);
    let mut desktop = to_wide("winsta0\\default");
    // SAFETY: every call below gets out-pointers to locals and handles we own; each handle is
    // closed on every path (the child's ends after CreateProcessAsUserW).
    unsafe {
        let mut own: HANDLE = std::ptr::null_mut();
        if OpenProcessToken(GetCurrentProcess(), TOKEN_ALL_ACCESS, &mut own) == 0 {
            return Err(last());
        }
        let mut token: HANDLE = std::ptr::null_mut();
        let dup = DuplicateTokenEx(
            own,
            TOKEN_ALL_ACCESS,
            std::ptr::null(),
            SecurityImpersonation,
            TokenPrimary,
            &mut token,
        );
        CloseHandle(own);
        if dup == 0 {
            return Err(last());
        }
        let mut sid = session;
        if SetTokenInformation(
            token,
            TokenSessionId,
            (&mut sid as *mut u32).cast(),
            std::mem::size_of::<u32>() as u32,
        ) == 0
        {
            let e = last();
            CloseHandle(token);
            return Err(e);
        }
        let sa = SECURITY_ATTRIBUTES {
            nLength: std::mem::size_of::<SECURITY_ATTRIBUTES>() as u32,
            lpSecurityDescriptor: std::ptr::null_mut(),
            bInheritHandle: 1,
        };
        let (mut read, mut write): (HANDLE, HANDLE) = (std::ptr::null_mut(), std::ptr::null_mut());
        if CreatePipe(&mut read, &mut write, &sa, 0) == 0 {
            let e = last();
            CloseHandle(token);
            return Err(e);
        }
        // Only the read end goes to the child.
        SetHandleInformation(write, HANDLE_FLAG_INHERIT, 0);
        let mut si: STARTUPINFOW = std::mem::zeroed();
        si.cb = std::mem::size_of::<STARTUPINFOW>() as u32;
        si.lpDesktop = desktop.as_mut_ptr();
        si.dwFlags = STARTF_USESTDHANDLES;
        si.hStdInput = read;
        // The log file, inheritable for this child (CreateProcessAsUserW duplicates it).
        let log_handle = {
            use std::os::windows::io::AsRawHandle;
            log.as_raw_handle()
        };
        SetHandleInformation(log_handle, HANDLE_FLAG_INHERIT, HANDLE_FLAG_INHERIT);
        si.hStdOutput = log_handle;
        si.hStdError = log_handle;
        let mut pi: PROCESS_INFORMATION = std::mem::zeroed();
        let ok = CreateProcessAsUserW(
            token,
            std::ptr::null(),
            wline.as_mut_ptr(),
            std::ptr::null(),
            std::ptr::null(),
            1,
            CREATE_NO_WINDOW,
            std::ptr::null(),
            std::ptr::null(),
            &si,
            &mut pi,
        );
        let e = last();
        CloseHandle(read);
        CloseHandle(token);
        if ok == 0 {
            CloseHandle(write);
            return Err(e);
        }
        CloseHandle(pi.hThread);
        tracing::info!(session, pid = pi.dwProcessId, "recording agent started");
        Ok(AgentProcess {
            process: pi.hProcess,
            stdin: write,
        })
    }
}

/// One argument quoted for a Windows command line (the rules CommandLineToArgvW reads).
pub fn quote_arg(a: &str) -> String {
    if !a.is_empty() && !a.contains([' ', '\t', '"']) {
        return a.to_owned();
    }
    let mut out = String::from("\"");
    let mut backslashes = 0;
    for c in a.chars() {
        match c {
            '\\' => backslashes += 1,
            '"' => {
                out.push_str(&"\\".repeat(backslashes * 2 + 1));
                out.push('"');
                backslashes = 0;
            }
            _ => {
                out.push_str(&"\\".repeat(backslashes));
                out.push(c);
                backslashes = 0;
            }
        }
    }
    out.push_str(&"\\".repeat(backslashes * 2));
    out.push('"');
    out
}

#[cfg(test)]
mod tests {
    use super::quote_arg;

    #[test]
    fn arguments_are_quoted_as_windows_reads_them() {
        assert_eq!(quote_arg("run"), "run");
        assert_eq!(
            quote_arg(r"C:\Program Files\jitrec\recorder.toml"),
            r#""C:\Program Files\jitrec\recorder.toml""#
        );
        assert_eq!(quote_arg(""), r#""""#);
        assert_eq!(quote_arg(r#"say "hi""#), r#""say \"hi\"""#);
        assert_eq!(quote_arg(r"C:\dir with space\"), r#""C:\dir with space\\""#);
    }
}
