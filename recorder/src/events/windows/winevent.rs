//! Window events on Windows: the foreground window and its title, through WinEvent hooks
//! (`EVENT_SYSTEM_FOREGROUND`, `EVENT_OBJECT_NAMECHANGE`), out of context so nothing is injected
//! into other processes. The hooks call back on this source's thread while it pumps messages,
//! which is also where it answers the intake's wake-ups; the callback only queues the window
//! handle, and titles are read outside it.

#![allow(unsafe_code)]

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use jitrec_format::{EventKind, SourceState, WindowInfo};
use windows_sys::Win32::Foundation::HWND;
use windows_sys::Win32::UI::Accessibility::{HWINEVENTHOOK, SetWinEventHook, UnhookWinEvent};
use windows_sys::Win32::UI::WindowsAndMessaging::{
    DispatchMessageW, EVENT_OBJECT_NAMECHANGE, EVENT_SYSTEM_FOREGROUND, GetForegroundWindow,
    GetWindowTextW, GetWindowThreadProcessId, MSG, MsgWaitForMultipleObjects, OBJID_WINDOW,
    PM_REMOVE, PeekMessageW, QS_ALLINPUT, TranslateMessage, WINEVENT_OUTOFCONTEXT,
};

use crate::events::redact::Redactor;
use crate::events::{EventSink, EventSource};

// Already a const initializer; clippy 1.96 flags it regardless.
#[allow(clippy::missing_const_for_thread_local)]
mod queue {
    use std::cell::RefCell;

    thread_local! {
        /// (event, window) pairs queued by the hook callback for this thread's loop.
        pub(super) static QUEUED: RefCell<Vec<(u32, usize)>> = const { RefCell::new(Vec::new()) };
    }
}
use queue::QUEUED;

unsafe extern "system" fn on_winevent(
    _hook: HWINEVENTHOOK,
    event: u32,
    hwnd: HWND,
    id_object: i32,
    id_child: i32,
    _thread: u32,
    _time: u32,
) {
    // Title changes of the window itself only (not of its controls or caret).
    if event == EVENT_OBJECT_NAMECHANGE && (id_object != OBJID_WINDOW || id_child != 0) {
        return;
    }
    QUEUED.with(|q| q.borrow_mut().push((event, hwnd as usize)));
}

/// The window event source on Windows.
pub struct WinEventSource {
    pub redactor: Arc<Redactor>,
}

impl WinEventSource {
    fn info(&self, hwnd: usize) -> WindowInfo {
        let mut buf = [0u16; 512];
        // SAFETY: `buf` and its length; a window that is gone yields 0.
        let n = unsafe { GetWindowTextW(hwnd as HWND, buf.as_mut_ptr(), buf.len() as i32) };
        let title = String::from_utf16_lossy(&buf[..n.max(0) as usize]);
        let mut pid = 0u32;
        // SAFETY: out-pointer to a local.
        unsafe { GetWindowThreadProcessId(hwnd as HWND, &mut pid) };
        WindowInfo {
            window: format!("0x{hwnd:x}"),
            title: crate::events::truncate_text(&self.redactor.text(&title)),
            pid: (pid != 0).then_some(pid),
        }
    }
}

impl EventSource for WinEventSource {
    fn name(&self) -> &'static str {
        "windows"
    }

    fn run(self: Box<Self>, mut sink: EventSink, stop: Arc<AtomicBool>) {
        // SAFETY: out-of-context hooks for all processes, calling back on this thread.
        let hooks: Vec<HWINEVENTHOOK> = [EVENT_SYSTEM_FOREGROUND, EVENT_OBJECT_NAMECHANGE]
            .into_iter()
            .map(|e| unsafe {
                SetWinEventHook(
                    e,
                    e,
                    std::ptr::null_mut(),
                    Some(on_winevent),
                    0,
                    0,
                    WINEVENT_OUTOFCONTEXT,
                )
            })
            .collect();
        let t = sink.clock().now();
        if hooks.iter().any(|h| h.is_null()) {
            sink.status(
                t,
                EventKind::EventSource {
                    source: "windows".into(),
                    state: SourceState::Unavailable,
                    detail: "cannot hook window events (no interactive desktop?)".into(),
                },
            );
        } else {
            sink.status(
                t,
                EventKind::EventSource {
                    source: "windows".into(),
                    state: SourceState::Complete,
                    detail: "WinEvent hooks: foreground window and title changes".into(),
                },
            );
        }
        // The window in front when the session starts.
        // SAFETY: no arguments.
        let mut active = unsafe { GetForegroundWindow() } as usize;
        if active != 0 {
            let t = sink.clock().now();
            sink.emit(t, EventKind::WindowFocus(self.info(active)));
        }
        let mut last_title = String::new();
        while !stop.load(Ordering::SeqCst) {
            // SAFETY: waits for messages or 20 ms; nothing else.
            unsafe { MsgWaitForMultipleObjects(0, std::ptr::null(), 0, 20, QS_ALLINPUT) };
            let asked = sink.wake().take().then(|| sink.clock().now());
            // SAFETY: a zeroed MSG is valid; dispatching runs the hook callbacks.
            let mut msg: MSG = unsafe { std::mem::zeroed() };
            while unsafe { PeekMessageW(&mut msg, std::ptr::null_mut(), 0, 0, PM_REMOVE) } != 0 {
                // SAFETY: a message just taken from this thread's queue.
                unsafe {
                    TranslateMessage(&msg);
                    DispatchMessageW(&msg);
                }
            }
            let queued = QUEUED.with(|q| std::mem::take(&mut *q.borrow_mut()));
            for (event, hwnd) in queued {
                let t = sink.clock().now();
                if event == EVENT_SYSTEM_FOREGROUND {
                    active = hwnd;
                    let info = self.info(hwnd);
                    last_title = info.title.clone();
                    sink.emit(t, EventKind::WindowFocus(info));
                } else if hwnd == active {
                    let info = self.info(hwnd);
                    if info.title != last_title {
                        last_title = info.title.clone();
                        sink.emit(t, EventKind::WindowTitle(info));
                    }
                }
            }
            if let Some(t) = asked {
                sink.caught_up(t);
            }
        }
        for h in hooks.into_iter().filter(|h| !h.is_null()) {
            // SAFETY: hooks set above on this thread.
            unsafe { UnhookWinEvent(h) };
        }
        let t = sink.clock().now();
        sink.caught_up(t);
    }
}
