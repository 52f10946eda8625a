//! Process events on Windows: a private real-time ETW session of the kernel's process events
//! (a "system logger" session, Windows 8 and later, so it does not take over the single
//! NT Kernel Logger other tools use), decoded by [`super::etw_decode`].
//!
//! ETW delivers events from its buffers about once a second (the flush timer); a wake from the
//! intake asks for a flush and reports caught up to the time of the request once what arrived
//! is passed on. An event that ETW delivers later still carries its own time, and goes into the
//! next chunk. Needs administrator rights (the recorder runs as LocalSystem).

#![allow(unsafe_code)]

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc::{self, Receiver, SyncSender, TrySendError};
use std::time::Duration;

use chrono::{DateTime, Utc};
use jitrec_format::{EventKind, ProcessExit, ProcessStart, SourceState, UserRef};
use windows_sys::Win32::Foundation::{CloseHandle, ERROR_ALREADY_EXISTS, ERROR_SUCCESS, HANDLE};
use windows_sys::Win32::Security::{
    GetTokenInformation, LookupAccountSidW, SID_NAME_USE, TOKEN_ELEVATION, TOKEN_QUERY,
    TokenElevation,
};
use windows_sys::Win32::System::Diagnostics::Etw::{
    CONTROLTRACE_HANDLE, CloseTrace, ControlTraceW, EVENT_HEADER_FLAG_64_BIT_HEADER, EVENT_RECORD,
    EVENT_TRACE_CONTROL_FLUSH, EVENT_TRACE_CONTROL_STOP, EVENT_TRACE_FLAG_PROCESS,
    EVENT_TRACE_LOGFILEW, EVENT_TRACE_PROPERTIES, EVENT_TRACE_REAL_TIME_MODE,
    EVENT_TRACE_SYSTEM_LOGGER_MODE, OpenTraceW, PROCESS_TRACE_MODE_EVENT_RECORD,
    PROCESS_TRACE_MODE_REAL_TIME, PROCESSTRACE_HANDLE, ProcessTrace, StartTraceW,
    WNODE_FLAG_TRACED_GUID,
};
use windows_sys::Win32::System::Threading::{
    OpenProcess, OpenProcessToken, PROCESS_QUERY_LIMITED_INFORMATION,
};
use windows_sys::core::GUID;

use super::etw_decode::{KernelProcess, ProcessOp, decode_process};
use crate::events::redact::Redactor;
use crate::events::{EventSink, EventSource, IDLE_WAIT};
use crate::windows::sid::Sid;
use crate::windows::wide::{from_wide, to_wide};

/// The kernel's process event class: {3d6fa8d0-fe05-11d0-9dda-00c04fd7ba7c}.
const PROCESS_CLASS: GUID = GUID::from_u128(0x3d6fa8d0_fe05_11d0_9dda_00c04fd7ba7c);
/// The session's name (visible in `logman query -ets`).
const SESSION_NAME: &str = "jitrec-processes";
/// Decoded events waiting for the source's thread. Full policy: **drop and count** (the callback
/// must not block ETW's delivery thread); the count is reported as a partial-source event.
const QUEUE: usize = 4096;

struct Raw {
    op: ProcessOp,
    version: u8,
    pointer_size: usize,
    utc: DateTime<Utc>,
    payload: Vec<u8>,
}

struct Context {
    tx: SyncSender<Raw>,
    dropped: std::sync::atomic::AtomicU64,
}

/// Converts a FILETIME (100 ns since 1601) to UTC.
fn filetime_utc(ft: i64) -> Option<DateTime<Utc>> {
    const UNIX_EPOCH_AS_FILETIME: i64 = 116_444_736_000_000_000;
    let since_unix = ft.checked_sub(UNIX_EPOCH_AS_FILETIME).filter(|&d| d >= 0)?;
    DateTime::from_timestamp(
        since_unix / 10_000_000,
        ((since_unix % 10_000_000) * 100) as u32,
    )
}

fn same_guid(a: &GUID, b: &GUID) -> bool {
    (a.data1, a.data2, a.data3, a.data4) == (b.data1, b.data2, b.data3, b.data4)
}

unsafe extern "system" fn on_event(record: *mut EVENT_RECORD) {
    // SAFETY: ETW passes a valid record for the duration of the callback.
    let Some(r) = (unsafe { record.as_ref() }) else {
        return;
    };
    // SAFETY: UserContext is the `Context` set in `open`, alive until ProcessTrace returns.
    let Some(ctx) = (unsafe { (r.UserContext as *const Context).as_ref() }) else {
        return;
    };
    let h = &r.EventHeader;
    if !same_guid(&h.ProviderId, &PROCESS_CLASS) {
        return;
    }
    let Some(op) = ProcessOp::from_opcode(h.EventDescriptor.Opcode) else {
        return;
    };
    let pointer_size = if u32::from(h.Flags) & EVENT_HEADER_FLAG_64_BIT_HEADER != 0 {
        8
    } else {
        4
    };
    let payload = if r.UserData.is_null() {
        Vec::new()
    } else {
        // SAFETY: UserData holds UserDataLength bytes for the callback's duration.
        unsafe { std::slice::from_raw_parts(r.UserData as *const u8, r.UserDataLength.into()) }
            .to_vec()
    };
    let Some(utc) = filetime_utc(h.TimeStamp) else {
        return;
    };
    let raw = Raw {
        op,
        version: h.EventDescriptor.Version,
        pointer_size,
        utc,
        payload,
    };
    if let Err(TrySendError::Full(_)) = ctx.tx.try_send(raw) {
        ctx.dropped.fetch_add(1, Ordering::Relaxed);
    }
}

/// EVENT_TRACE_PROPERTIES followed by room for the session name, as the API wants them.
#[repr(C)]
struct Properties {
    props: EVENT_TRACE_PROPERTIES,
    name: [u16; 64],
}

fn properties() -> Box<Properties> {
    // SAFETY: all-zero is a valid EVENT_TRACE_PROPERTIES (plain data).
    let mut p: Box<Properties> = Box::new(unsafe { std::mem::zeroed() });
    p.props.Wnode.BufferSize = std::mem::size_of::<Properties>() as u32;
    p.props.Wnode.Flags = WNODE_FLAG_TRACED_GUID;
    // System time stamps (FILETIME), so events map to UTC without converting QPC ticks.
    p.props.Wnode.ClientContext = 2;
    p.props.LogFileMode = EVENT_TRACE_REAL_TIME_MODE | EVENT_TRACE_SYSTEM_LOGGER_MODE;
    p.props.EnableFlags = EVENT_TRACE_FLAG_PROCESS;
    p.props.FlushTimer = 1;
    p.props.LoggerNameOffset = std::mem::size_of::<EVENT_TRACE_PROPERTIES>() as u32;
    p
}

/// The live kernel session; stopped on drop.
struct Session {
    name: Vec<u16>,
}

impl Session {
    fn start() -> std::io::Result<Session> {
        let name = to_wide(SESSION_NAME);
        for attempt in 0..2 {
            let mut props = properties();
            let mut handle = CONTROLTRACE_HANDLE { Value: 0 };
            // SAFETY: `props` is sized as declared in BufferSize; `name` is NUL-terminated.
            let status = unsafe { StartTraceW(&mut handle, name.as_ptr(), &mut props.props) };
            if status == ERROR_SUCCESS {
                return Ok(Session { name });
            }
            if status == ERROR_ALREADY_EXISTS && attempt == 0 {
                // Ours, left by a recorder that died: stop it and start afresh.
                stop_session(&name);
                continue;
            }
            return Err(std::io::Error::from_raw_os_error(status as i32));
        }
        Err(std::io::Error::other(
            "the ETW session exists and cannot be replaced",
        ))
    }

    fn flush(&self) {
        let mut props = properties();
        // SAFETY: as in `start`.
        unsafe {
            ControlTraceW(
                CONTROLTRACE_HANDLE { Value: 0 },
                self.name.as_ptr(),
                &mut props.props,
                EVENT_TRACE_CONTROL_FLUSH,
            )
        };
    }
}

fn stop_session(name: &[u16]) {
    let mut props = properties();
    // SAFETY: as in `Session::start`.
    unsafe {
        ControlTraceW(
            CONTROLTRACE_HANDLE { Value: 0 },
            name.as_ptr(),
            &mut props.props,
            EVENT_TRACE_CONTROL_STOP,
        )
    };
}

impl Drop for Session {
    fn drop(&mut self) {
        stop_session(&self.name);
    }
}

/// Consumes the session on its own thread until the session stops.
fn consume(ctx: Arc<Context>) -> std::io::Result<std::thread::JoinHandle<()>> {
    let mut name = to_wide(SESSION_NAME);
    // SAFETY: all-zero is a valid EVENT_TRACE_LOGFILEW.
    let mut logfile: EVENT_TRACE_LOGFILEW = unsafe { std::mem::zeroed() };
    logfile.LoggerName = name.as_mut_ptr();
    logfile.Anonymous1.ProcessTraceMode =
        PROCESS_TRACE_MODE_REAL_TIME | PROCESS_TRACE_MODE_EVENT_RECORD;
    logfile.Anonymous2.EventRecordCallback = Some(on_event);
    logfile.Context = Arc::as_ptr(&ctx) as *mut _;
    // SAFETY: `logfile` is filled in as OpenTraceW requires; the context outlives the trace (the
    // thread below holds the Arc until ProcessTrace returns).
    let handle: PROCESSTRACE_HANDLE = unsafe { OpenTraceW(&mut logfile) };
    if handle.Value == u64::MAX {
        return Err(std::io::Error::last_os_error());
    }
    std::thread::Builder::new()
        .name("etw-processes".into())
        .spawn(move || {
            // SAFETY: an open trace handle; returns when the session stops.
            let status = unsafe { ProcessTrace(&handle, 1, std::ptr::null(), std::ptr::null()) };
            if status != ERROR_SUCCESS {
                tracing::warn!(status, "ETW ProcessTrace ended with an error");
            }
            // SAFETY: the handle from OpenTraceW.
            unsafe { CloseTrace(handle) };
            drop(ctx);
        })
}

/// Whether `pid` runs with an elevated token (`None` when it cannot be asked: it has exited,
/// or is protected).
fn elevated(pid: u32) -> Option<bool> {
    // SAFETY: plain calls with out-pointers to locals; handles closed below.
    unsafe {
        let process: HANDLE = OpenProcess(PROCESS_QUERY_LIMITED_INFORMATION, 0, pid);
        if process.is_null() {
            return None;
        }
        let mut token: HANDLE = std::ptr::null_mut();
        let opened = OpenProcessToken(process, TOKEN_QUERY, &mut token);
        CloseHandle(process);
        if opened == 0 {
            return None;
        }
        let mut e = TOKEN_ELEVATION { TokenIsElevated: 0 };
        let mut len = 0u32;
        let ok = GetTokenInformation(
            token,
            TokenElevation,
            (&mut e as *mut TOKEN_ELEVATION).cast(),
            std::mem::size_of::<TOKEN_ELEVATION>() as u32,
            &mut len,
        );
        CloseHandle(token);
        (ok != 0).then_some(e.TokenIsElevated != 0)
    }
}

/// `DOMAIN\name` of a SID, or the SID as text when it cannot be resolved.
fn account_name(sid: &Sid) -> String {
    let bytes = sid.to_bytes();
    let mut name = [0u16; 256];
    let mut name_len = name.len() as u32;
    let mut domain = [0u16; 256];
    let mut domain_len = domain.len() as u32;
    let mut kind: SID_NAME_USE = 0;
    // SAFETY: `bytes` is a well-formed SID; buffers with their lengths.
    let ok = unsafe {
        LookupAccountSidW(
            std::ptr::null(),
            bytes.as_ptr() as *mut _,
            name.as_mut_ptr(),
            &mut name_len,
            domain.as_mut_ptr(),
            &mut domain_len,
            &mut kind,
        )
    };
    if ok == 0 {
        return sid.to_string();
    }
    let (name, domain) = (from_wide(&name), from_wide(&domain));
    if domain.is_empty() {
        name
    } else {
        format!("{domain}\\{name}")
    }
}

/// The process event source on Windows.
pub struct EtwProcessSource {
    pub redactor: Arc<Redactor>,
}

impl EtwProcessSource {
    fn event(&self, k: KernelProcess, names: &mut HashMap<Sid, String>) -> Option<EventKind> {
        match k.op {
            ProcessOp::Start => {
                let user = match &k.user {
                    Some(sid) => UserRef {
                        name: names
                            .entry(sid.clone())
                            .or_insert_with(|| account_name(sid))
                            .clone(),
                        id: sid.to_string(),
                    },
                    None => UserRef {
                        name: "unknown".into(),
                        id: "unknown".into(),
                    },
                };
                // LocalSystem and an elevated token both count; a process gone before it could
                // be asked is reported as not elevated unless it ran as LocalSystem.
                let system = k.user.as_ref() == Some(&Sid::local_system());
                Some(EventKind::ProcessStart(ProcessStart {
                    pid: k.pid,
                    ppid: k.ppid,
                    user,
                    exe: crate::events::truncate_text(&k.image),
                    command_line: self.redactor.text(&k.command_line),
                    elevated: system || elevated(k.pid).unwrap_or(false),
                    // Not decided yet on Windows (docs/windows.md: the session id and token are the way).
                    in_session: None,
                }))
            }
            ProcessOp::End => Some(EventKind::ProcessExit(ProcessExit {
                pid: k.pid,
                exit_code: Some(k.exit_status),
                signal: None,
            })),
            // Rundown and defunct records describe processes, not things that happened.
            ProcessOp::DcStart | ProcessOp::DcEnd | ProcessOp::Defunct => None,
        }
    }

    fn pass_on(&self, raw: Raw, sink: &mut EventSink, names: &mut HashMap<Sid, String>) {
        let Some(t) = sink.clock().from_utc(raw.utc) else {
            return; // before JIT began: not ours to record
        };
        match decode_process(raw.op, raw.version, raw.pointer_size, &raw.payload) {
            Ok(k) => {
                if let Some(kind) = self.event(k, names) {
                    sink.emit(t, kind);
                }
            }
            Err(e) => {
                tracing::warn!(error = %e, version = raw.version, "undecodable ETW process event")
            }
        }
    }
}

impl EventSource for EtwProcessSource {
    fn name(&self) -> &'static str {
        "processes"
    }

    fn run(self: Box<Self>, mut sink: EventSink, stop: Arc<AtomicBool>) {
        let (tx, rx): (SyncSender<Raw>, Receiver<Raw>) = mpsc::sync_channel(QUEUE);
        let ctx = Arc::new(Context {
            tx,
            dropped: std::sync::atomic::AtomicU64::new(0),
        });
        let started = Session::start().and_then(|s| consume(Arc::clone(&ctx)).map(|t| (s, t)));
        let (session, consumer) = match started {
            Ok(v) => v,
            Err(e) => {
                let t = sink.clock().now();
                sink.status(
                    t,
                    EventKind::EventSource {
                        source: "processes".into(),
                        state: SourceState::Unavailable,
                        detail: format!("cannot start the ETW kernel process session: {e}"),
                    },
                );
                while !stop.load(Ordering::SeqCst) {
                    if sink.wake().take() {
                        let t = sink.clock().now();
                        sink.caught_up(t);
                    }
                    std::thread::sleep(Duration::from_millis(20));
                }
                return;
            }
        };
        let t = sink.clock().now();
        sink.status(
            t,
            EventKind::EventSource {
                source: "processes".into(),
                state: SourceState::Complete,
                detail: "ETW kernel process events: every process start and exit, with command line and user".into(),
            },
        );
        let mut names = HashMap::new();
        let mut reported_drops = 0;
        while !stop.load(Ordering::SeqCst) {
            if sink.wake().take() {
                let asked = sink.clock().now();
                session.flush();
                // What the flush delivers arrives within moments; take it, then report.
                while let Ok(raw) = rx.recv_timeout(Duration::from_millis(30)) {
                    self.pass_on(raw, &mut sink, &mut names);
                }
                sink.caught_up(asked);
                continue;
            }
            match rx.recv_timeout(Duration::from_millis(20).min(IDLE_WAIT)) {
                Ok(raw) => self.pass_on(raw, &mut sink, &mut names),
                Err(mpsc::RecvTimeoutError::Timeout) => {}
                Err(mpsc::RecvTimeoutError::Disconnected) => break,
            }
            let dropped = ctx.dropped.load(Ordering::Relaxed);
            if dropped > reported_drops {
                let t = sink.clock().now();
                sink.status(
                    t,
                    EventKind::EventSource {
                        source: "processes".into(),
                        state: SourceState::Partial,
                        detail: format!(
                            "{} process events were dropped here: the recorder fell behind ETW",
                            dropped - reported_drops
                        ),
                    },
                );
                reported_drops = dropped;
            }
        }
        drop(session); // stops the trace, which ends ProcessTrace
        let _ = consumer.join();
        while let Ok(raw) = rx.try_recv() {
            self.pass_on(raw, &mut sink, &mut names);
        }
        let t = sink.clock().now();
        sink.caught_up(t);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn filetime_conversion() {
        // The exit time recorded in testdata/defunct_v5.bin.
        let utc = filetime_utc(0x01CE_FAEC_F9A2_498D).unwrap();
        assert_eq!(
            utc.format("%Y-%m-%d %H:%M:%S%.6f").to_string(),
            "2013-12-17 05:58:14.771137"
        );
        assert_eq!(
            filetime_utc(116_444_736_000_000_000).unwrap().timestamp(),
            0
        );
        assert_eq!(filetime_utc(0), None, "before 1970: not a real event time");
    }
}
