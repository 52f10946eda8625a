//! Process starts and exits on Linux.
//!
//! The primary source is the kernel's process-events connector (netlink, `NETLINK_CONNECTOR`,
//! group `CN_IDX_PROC`; needs root): the kernel sends a message for every fork, exec and exit,
//! stamped with `CLOCK_MONOTONIC`, so no process is missed however short it lives, and its media
//! time is exact. Details (command line, executable, user, groups) are read from
//! `/proc/<pid>` as soon as the exec message arrives; a process that is gone by then (a 5 ms
//! `true` under load) is still reported, with its pid, parent (from the fork message) and start
//! time, and with empty `exe`/`command_line` and user `unknown`.
//!
//! When the connector cannot be used (not root, a kernel without `CONFIG_PROC_EVENTS`, a
//! container), the source says so in an `event_source` event and polls `/proc` instead: a
//! process that starts and ends between two polls is missed, start times have the kernel's
//! 10 ms resolution, and exit codes are unknown.
//!
//! Only processes started during the session are reported, and exits only of those: a session
//! shows what was run during JIT, not what was already running.

use std::collections::{HashMap, HashSet};
use std::os::fd::{AsFd, OwnedFd};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use jitrec_format::{EventKind, MediaTime, ProcessExit, ProcessStart, SourceState, UserRef};
use rustix::io::Errno;
use rustix::net::{
    AddressFamily, RecvFlags, SendFlags, SocketFlags, SocketType, bind, netlink, recv, send,
    socket_with,
};

use crate::events::redact::Redactor;
use crate::events::{EventSink, EventSource, IDLE_WAIT};

const CN_IDX_PROC: u32 = 1;
const CN_VAL_PROC: u32 = 1;
const PROC_CN_MCAST_LISTEN: u32 = 1;
const NLMSG_DONE: u16 = 3;
const NLMSG_HDR: usize = 16;
const CN_MSG_HDR: usize = 20;

const PROC_EVENT_FORK: u32 = 0x0000_0001;
const PROC_EVENT_EXEC: u32 = 0x0000_0002;
const PROC_EVENT_EXIT: u32 = 0x8000_0000;

/// Receive buffer asked for (root may exceed `rmem_max`): the kernel accounts ~1 KiB per
/// message, so 8 MiB holds a burst of ~8,000 processes while the thread reads `/proc`.
const RECV_BUFFER: usize = 8 << 20;

/// Settings of the process source.
#[derive(Debug, Clone)]
pub struct ProcessConfig {
    pub redactor: Arc<Redactor>,
    /// The admin group's gid: a member's process counts as elevated.
    pub admin_gid: Option<u32>,
    /// Where user names come from.
    pub passwd_file: PathBuf,
    /// Normally `/proc`.
    pub proc_root: PathBuf,
    /// Interval of the `/proc` polling fallback.
    pub poll_interval: Duration,
    /// Use the fallback even when netlink works (tests of the fallback).
    pub force_poll: bool,
    /// The elevated account's name: its uid is looked up in `passwd_file` on the source's own
    /// thread (a passwd file on a hung network or FUSE mount must not hold up JIT start), and
    /// each process start then says whether it is that account's activity (`in_session`).
    /// `None`, or an account the file does not know: unknown, not said.
    pub session_user: Option<String>,
}

/// A message of the process-events connector.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ProcEvent {
    Fork {
        parent_tgid: u32,
        child_pid: u32,
        child_tgid: u32,
        ns: u64,
    },
    Exec {
        tgid: u32,
        ns: u64,
    },
    Exit {
        pid: u32,
        tgid: u32,
        /// The kernel's `exit_code`: a wait status.
        status: u32,
        ns: u64,
    },
}

fn u32_at(b: &[u8], at: usize) -> Option<u32> {
    Some(u32::from_ne_bytes(b.get(at..at + 4)?.try_into().ok()?))
}

fn u64_at(b: &[u8], at: usize) -> Option<u64> {
    Some(u64::from_ne_bytes(b.get(at..at + 8)?.try_into().ok()?))
}

/// The process events in one datagram (which may hold several netlink messages).
pub fn parse_datagram(buf: &[u8]) -> Vec<ProcEvent> {
    let mut out = Vec::new();
    let mut off = 0usize;
    while off + NLMSG_HDR <= buf.len() {
        let Some(len) = u32_at(buf, off).map(|l| l as usize) else {
            break;
        };
        if len < NLMSG_HDR || off + len > buf.len() {
            break;
        }
        let cn = &buf[off + NLMSG_HDR..off + len];
        if let (Some(CN_IDX_PROC), Some(CN_VAL_PROC)) = (u32_at(cn, 0), u32_at(cn, 4))
            && let Some(ev) = cn.get(CN_MSG_HDR..).and_then(parse_proc_event)
        {
            out.push(ev);
        }
        off += (len + 3) & !3;
    }
    out
}

fn parse_proc_event(p: &[u8]) -> Option<ProcEvent> {
    let what = u32_at(p, 0)?;
    let ns = u64_at(p, 8)?;
    let d = 16;
    Some(match what {
        PROC_EVENT_FORK => ProcEvent::Fork {
            parent_tgid: u32_at(p, d + 4)?,
            child_pid: u32_at(p, d + 8)?,
            child_tgid: u32_at(p, d + 12)?,
            ns,
        },
        PROC_EVENT_EXEC => ProcEvent::Exec {
            tgid: u32_at(p, d + 4)?,
            ns,
        },
        PROC_EVENT_EXIT => ProcEvent::Exit {
            pid: u32_at(p, d)?,
            tgid: u32_at(p, d + 4)?,
            status: u32_at(p, d + 8)?,
            ns,
        },
        _ => return None,
    })
}

/// (exit code, signal) of a wait status.
pub fn decode_status(status: u32) -> (Option<i32>, Option<i32>) {
    let sig = (status & 0x7f) as i32;
    if sig == 0 {
        (Some(((status >> 8) & 0xff) as i32), None)
    } else {
        (None, Some(sig))
    }
}

/// What `/proc/<pid>` says about a process.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ProcInfo {
    pub ppid: Option<u32>,
    pub uid: Option<u32>,
    pub euid: Option<u32>,
    pub groups: Vec<u32>,
    pub exe: String,
    pub argv: Vec<String>,
    /// Start time in clock ticks since boot (`/proc/<pid>/stat` field 22).
    pub start_ticks: Option<u64>,
    /// The audit login uid (`/proc/<pid>/loginuid`): whose login the process descends from,
    /// kept across `sudo` and `su`; `None` when unset (no PAM login) or unreadable.
    pub login_uid: Option<u32>,
}

/// Reads what is still readable of `/proc/<pid>`; `None` if the process is gone.
///
/// The command line and executable go first: the kernel drops them early in `exit`, while
/// `status` lasts until the process is reaped, so a process that ends while this runs keeps the
/// most important details.
pub fn read_proc(proc_root: &Path, pid: u32, with_start: bool) -> Option<ProcInfo> {
    let dir = proc_root.join(pid.to_string());
    let mut info = ProcInfo::default();
    let cmdline = std::fs::read(dir.join("cmdline"));
    if let Ok(raw) = &cmdline {
        let raw = raw.strip_suffix(b"\0").unwrap_or(raw);
        if !raw.is_empty() {
            info.argv = raw
                .split(|b| *b == 0)
                .map(|a| String::from_utf8_lossy(a).into_owned())
                .collect();
        }
    }
    if let Ok(p) = std::fs::read_link(dir.join("exe")) {
        info.exe = p.to_string_lossy().into_owned();
    }
    let Ok(status) = std::fs::read_to_string(dir.join("status")) else {
        return (cmdline.is_ok() && !info.argv.is_empty()).then_some(info);
    };
    for line in status.lines() {
        let mut f = line.split_whitespace();
        match f.next() {
            Some("PPid:") => info.ppid = f.next().and_then(|v| v.parse().ok()),
            Some("Uid:") => {
                info.uid = f.next().and_then(|v| v.parse().ok());
                info.euid = f.next().and_then(|v| v.parse().ok());
            }
            Some("Groups:") => info.groups = f.filter_map(|g| g.parse().ok()).collect(),
            _ => {}
        }
    }
    info.login_uid = read_login_uid(&dir);
    if with_start && let Ok(stat) = std::fs::read_to_string(dir.join("stat")) {
        // The name (field 2) is in parentheses and may hold spaces; fields count from after it.
        info.start_ticks = stat
            .rsplit_once(')')
            .and_then(|(_, rest)| rest.split_whitespace().nth(19))
            .and_then(|v| v.parse().ok());
    }
    Some(info)
}

/// `(uid_t)-1`: the login uid of a process that no login session set.
const LOGIN_UID_UNSET: u32 = u32::MAX;

fn read_login_uid(dir: &Path) -> Option<u32> {
    std::fs::read_to_string(dir.join("loginuid"))
        .ok()?
        .trim()
        .parse()
        .ok()
        .filter(|u| *u != LOGIN_UID_UNSET)
}

/// How many ancestors are looked at to tell whose a process is (a login shell is a few levels
/// above what it runs; a deeper chain is judged by the levels read).
const MAX_ANCESTRY: usize = 32;

/// The most verdicts kept by pid before they are forgotten at once (a fork bomb must not grow
/// the map without bound; a forgotten verdict is found again from `/proc`).
const MAX_VERDICTS: usize = 65_536;

/// Tells the elevated account's processes from the rest of the machine's: a process is the
/// account's if it runs as it (real or effective uid: `sudo` itself runs with the caller's real
/// uid), carries its login uid, or descends from such a process. Ancestors are read from
/// `/proc` once and their verdicts kept, so a busy session costs one `/proc` read per new process.
///
/// What it cannot see: a command the account hands to a daemon (`systemd-run`, `at`, a cron
/// entry) runs as the daemon's child, and is judged the machine's. Detection rules see every
/// process whatever its verdict (docs/player.md), so such a hand-off is still flagged.
#[derive(Debug)]
struct Ownership {
    uid: u32,
    proc_root: PathBuf,
    verdicts: HashMap<u32, bool>,
}

impl Ownership {
    fn of_info(&self, info: &ProcInfo) -> bool {
        info.uid == Some(self.uid)
            || info.euid == Some(self.uid)
            || info.login_uid == Some(self.uid)
    }

    /// Whether `pid` (whose `/proc` details are `info`, parent `ppid`) is the account's.
    fn judge(&mut self, pid: u32, ppid: u32, info: &ProcInfo) -> bool {
        let own = self.of_info(info) || self.ancestor_is_own(ppid);
        self.remember(pid, own);
        own
    }

    fn ancestor_is_own(&mut self, mut pid: u32) -> bool {
        let mut chain = Vec::new();
        let mut own = false;
        for _ in 0..MAX_ANCESTRY {
            if pid <= 1 {
                break;
            }
            if let Some(v) = self.verdicts.get(&pid) {
                own = *v;
                break;
            }
            let Some(info) = read_proc(&self.proc_root, pid, false) else {
                break;
            };
            chain.push(pid);
            if self.of_info(&info) {
                own = true;
                break;
            }
            match info.ppid {
                Some(p) if p != pid => pid = p,
                _ => break,
            }
        }
        // Every process on the way has the verdict of the first one that decided it.
        for p in chain {
            self.remember(p, own);
        }
        own
    }

    fn remember(&mut self, pid: u32, own: bool) {
        if self.verdicts.len() >= MAX_VERDICTS {
            self.verdicts.clear();
        }
        self.verdicts.insert(pid, own);
    }

    /// A process ended: its pid may be reused by someone else's.
    fn forget(&mut self, pid: u32) {
        self.verdicts.remove(&pid);
    }
}

/// User names by uid, from the passwd file, cached.
#[derive(Debug)]
struct UserNames {
    passwd_file: PathBuf,
    cache: HashMap<u32, String>,
}

impl UserNames {
    fn name(&mut self, uid: u32) -> String {
        if let Some(n) = self.cache.get(&uid) {
            return n.clone();
        }
        let name =
            crate::accounts::user_name(&self.passwd_file, uid).unwrap_or_else(|| uid.to_string());
        self.cache.insert(uid, name.clone());
        name
    }
}

/// Builds process events from `/proc` details.
#[derive(Debug)]
struct Describer {
    config: ProcessConfig,
    names: UserNames,
    ownership: Option<Ownership>,
}

impl Describer {
    fn new(config: ProcessConfig) -> Self {
        let names = UserNames {
            passwd_file: config.passwd_file.clone(),
            cache: HashMap::new(),
        };
        let uid = config.session_user.as_deref().and_then(|user| {
            let uid = crate::accounts::user_id(&config.passwd_file, user);
            if uid.is_none() {
                tracing::warn!(
                    user,
                    "the elevated account is not in the passwd file; whose activity each process is stays unknown"
                );
            }
            uid
        });
        let ownership = uid.map(|uid| Ownership {
            uid,
            proc_root: config.proc_root.clone(),
            verdicts: HashMap::new(),
        });
        Self {
            config,
            names,
            ownership,
        }
    }

    fn start(&mut self, pid: u32, ppid_hint: Option<u32>, info: Option<ProcInfo>) -> EventKind {
        let info = info.unwrap_or_default();
        // The effective uid: who the process acts as (sudo's child runs as root).
        let user = match info.euid.or(info.uid) {
            Some(uid) => UserRef {
                name: self.names.name(uid),
                id: uid.to_string(),
            },
            None => UserRef {
                name: "unknown".into(),
                id: "unknown".into(),
            },
        };
        let elevated = info.euid == Some(0)
            || info.uid == Some(0)
            || self
                .config
                .admin_gid
                .is_some_and(|g| info.groups.contains(&g));
        let command_line = self.config.redactor.command_line(&info.argv);
        // The parent from the fork message first: it is who created the process, while `/proc`
        // shows the current parent, and 0 while the process is being reaped.
        let ppid = ppid_hint.or(info.ppid.filter(|p| *p != 0)).unwrap_or(0);
        let in_session = self.ownership.as_mut().map(|o| o.judge(pid, ppid, &info));
        EventKind::ProcessStart(ProcessStart {
            pid,
            ppid,
            user,
            exe: crate::events::truncate_text(&info.exe),
            command_line,
            elevated,
            in_session,
        })
    }

    fn exited(&mut self, pid: u32) {
        if let Some(o) = &mut self.ownership {
            o.forget(pid);
        }
    }
}

/// The process source: netlink when it can, `/proc` polling when not.
#[derive(Debug)]
pub struct ProcessSource {
    config: ProcessConfig,
    /// Subscribed when the source is made, so processes started as soon as the session exists
    /// are seen; the error says why the connector cannot be used.
    connector: Result<OwnedFd, String>,
    /// Without the connector: the processes running when the source was made (not reported).
    baseline: Option<Baseline>,
}

/// Processes (pid, start ticks) already running when polling began.
type Baseline = HashMap<u32, Option<u64>>;

fn baseline(proc_root: &Path) -> Baseline {
    list_pids(proc_root)
        .into_iter()
        .filter_map(|p| read_proc(proc_root, p, true).map(|i| (p, i.start_ticks)))
        .collect()
}

impl ProcessSource {
    /// Subscribes to the kernel's process events now (unless polling is forced).
    pub fn open(config: ProcessConfig) -> Self {
        let connector = if config.force_poll {
            Err("polling was configured".to_owned())
        } else {
            open_connector()
                .map_err(|e| format!("the kernel's process-events connector cannot be used ({e})"))
        };
        let baseline = connector.is_err().then(|| baseline(&config.proc_root));
        Self {
            config,
            connector,
            baseline,
        }
    }
}

impl EventSource for ProcessSource {
    fn name(&self) -> &'static str {
        "processes"
    }

    fn run(self: Box<Self>, mut sink: EventSink, stop: Arc<AtomicBool>) {
        let poll_interval = self.config.poll_interval;
        let mut d = Describer::new(self.config);
        match self.connector {
            Ok(fd) => {
                sink.status(
                    sink.clock().now(),
                    EventKind::EventSource {
                        source: "processes".into(),
                        state: SourceState::Complete,
                        detail: "kernel process-events connector (netlink): every exec and exit"
                            .into(),
                    },
                );
                if let Err(e) = run_connector(&fd, &mut d, &mut sink, &stop) {
                    tracing::error!(error = %e, "process events failed; falling back to polling /proc");
                    let known = baseline(&d.config.proc_root);
                    let why = format!("the process-events connector failed ({e})");
                    fallback(&mut d, &mut sink, &stop, poll_interval, &why, known);
                }
            }
            Err(why) => {
                tracing::warn!(reason = %why, "process events: polling /proc");
                let known = self.baseline.unwrap_or_default();
                fallback(&mut d, &mut sink, &stop, poll_interval, &why, known);
            }
        }
    }
}

fn fallback(
    d: &mut Describer,
    sink: &mut EventSink,
    stop: &AtomicBool,
    interval: Duration,
    why: &str,
    known: Baseline,
) {
    sink.status(
        sink.clock().now(),
        EventKind::EventSource {
            source: "processes".into(),
            state: SourceState::Partial,
            detail: format!(
                "{why}; polling /proc every {} ms: processes that start and end between two polls are missed, exit codes are unknown",
                interval.as_millis()
            ),
        },
    );
    run_poller(d, sink, stop, interval, known);
}

fn open_connector() -> rustix::io::Result<OwnedFd> {
    let fd = socket_with(
        AddressFamily::NETLINK,
        SocketType::DGRAM,
        SocketFlags::CLOEXEC,
        Some(netlink::CONNECTOR),
    )?;
    if rustix::net::sockopt::set_socket_recv_buffer_size_force(&fd, RECV_BUFFER).is_err() {
        let _ = rustix::net::sockopt::set_socket_recv_buffer_size(&fd, RECV_BUFFER);
    }
    bind(&fd, &netlink::SocketAddrNetlink::new(0, CN_IDX_PROC))?;
    let mut msg = Vec::with_capacity(NLMSG_HDR + CN_MSG_HDR + 4);
    let total = (NLMSG_HDR + CN_MSG_HDR + 4) as u32;
    msg.extend_from_slice(&total.to_ne_bytes());
    msg.extend_from_slice(&NLMSG_DONE.to_ne_bytes());
    msg.extend_from_slice(&0u16.to_ne_bytes()); // flags
    msg.extend_from_slice(&0u32.to_ne_bytes()); // seq
    msg.extend_from_slice(
        &rustix::process::getpid()
            .as_raw_nonzero()
            .get()
            .cast_unsigned()
            .to_ne_bytes(),
    );
    msg.extend_from_slice(&CN_IDX_PROC.to_ne_bytes());
    msg.extend_from_slice(&CN_VAL_PROC.to_ne_bytes());
    msg.extend_from_slice(&0u32.to_ne_bytes()); // seq
    msg.extend_from_slice(&0u32.to_ne_bytes()); // ack
    msg.extend_from_slice(&4u16.to_ne_bytes()); // len
    msg.extend_from_slice(&0u16.to_ne_bytes()); // flags
    msg.extend_from_slice(&PROC_CN_MCAST_LISTEN.to_ne_bytes());
    send(&fd, &msg, SendFlags::empty())?;
    Ok(fd)
}

/// Processes whose start was reported, and parents known from fork messages.
#[derive(Debug, Default)]
struct Tracked {
    started: HashSet<u32>,
    parent: HashMap<u32, u32>,
}

/// Parents remembered for forked processes that have not exec'd or exited yet; a bound keeps a
/// fork-only flood from growing the map without limit (the parent is then read from `/proc`).
const MAX_PARENTS: usize = 65_536;

fn run_connector(
    fd: &OwnedFd,
    d: &mut Describer,
    sink: &mut EventSink,
    stop: &AtomicBool,
) -> rustix::io::Result<()> {
    let mut buf = vec![0u8; 64 * 1024];
    let mut tracked = Tracked::default();
    let mut overflow_reported: Option<MediaTime> = None;
    // This thread races each new process to its `/proc` entry, and an administrator's
    // `kill -9` of the recorder to the journal: it must run the moment the kernel reports an
    // exec, ahead of the work it records (builds, loops, the `kill` itself). So it runs at the
    // lowest real-time priority when it may (root), else at nice -10. It only runs while
    // messages arrive, and a flood is bounded by the sink's rate (the kernel keeps 5 % of every
    // second for other work in any case).
    raise_priority();
    while !stop.load(Ordering::SeqCst) {
        // Read everything queued; if the intake asked (before this read began), say how far we
        // got: `now` taken before the read that found the queue empty bounds every event
        // delivered so far.
        let asked = sink.wake().take();
        loop {
            let now = sink.clock().now();
            match recv(fd, &mut buf[..], RecvFlags::DONTWAIT) {
                Ok((n, _)) => {
                    for ev in parse_datagram(&buf[..n]) {
                        handle(ev, d, sink, &mut tracked);
                    }
                }
                Err(Errno::AGAIN) => {
                    if asked {
                        sink.caught_up(now);
                    }
                    break;
                }
                Err(Errno::INTR) => {}
                Err(Errno::NOBUFS) => {
                    // The kernel dropped messages: say so once a second at most.
                    if overflow_reported.is_none_or(|t| now.as_micros() > t.as_micros() + 1_000_000)
                    {
                        overflow_reported = Some(now);
                        tracing::error!("the kernel dropped process events (receive buffer full)");
                        sink.status(
                            now,
                            EventKind::EventSource {
                                source: "processes".into(),
                                state: SourceState::Partial,
                                detail: "the kernel dropped an unknown number of process events here: the receive buffer overflowed".into(),
                            },
                        );
                    }
                }
                Err(e) => return Err(e),
            }
        }
        // Sleep until the kernel has a message or the intake asks.
        sink.wake().wait_with(&[fd.as_fd()], IDLE_WAIT);
    }
    Ok(())
}

/// See `run_connector`. Best effort: says at DEBUG what it could not do.
fn raise_priority() {
    use thread_priority::{
        RealtimeThreadSchedulePolicy, ScheduleParams, ThreadPriority, ThreadSchedulePolicy,
        set_thread_priority_and_policy, thread_native_id,
    };
    let fifo = ThreadSchedulePolicy::Realtime(RealtimeThreadSchedulePolicy::Fifo);
    let lowest = ThreadPriority::from_posix(ScheduleParams { sched_priority: 1 });
    let Err(e) = set_thread_priority_and_policy(thread_native_id(), lowest, fifo) else {
        return;
    };
    tracing::debug!(error = ?e, "no real-time priority for the process-events thread");
    let tid = rustix::thread::gettid();
    if let Err(e) = rustix::process::setpriority_process(Some(tid), -10) {
        tracing::debug!(error = %e, "could not raise the process-events thread's priority");
    }
}

fn handle(ev: ProcEvent, d: &mut Describer, sink: &mut EventSink, tracked: &mut Tracked) {
    let clock = *sink.clock();
    match ev {
        ProcEvent::Fork {
            parent_tgid,
            child_pid,
            child_tgid,
            ..
        } => {
            if child_pid == child_tgid {
                if tracked.parent.len() >= MAX_PARENTS {
                    tracked.parent.clear();
                }
                tracked.parent.insert(child_tgid, parent_tgid);
            }
        }
        ProcEvent::Exec { tgid, ns } => {
            let Some(t) = clock.from_monotonic_ns(ns) else {
                return;
            };
            let info = read_proc(&d.config.proc_root, tgid, false);
            let kind = d.start(tgid, tracked.parent.get(&tgid).copied(), info);
            tracked.started.insert(tgid);
            sink.emit(t, kind);
        }
        ProcEvent::Exit {
            pid,
            tgid,
            status,
            ns,
        } => {
            if pid != tgid {
                return; // a thread
            }
            tracked.parent.remove(&tgid);
            d.exited(tgid);
            if !tracked.started.remove(&tgid) {
                return;
            }
            let Some(t) = clock.from_monotonic_ns(ns) else {
                return;
            };
            let (exit_code, signal) = decode_status(status);
            sink.emit(
                t,
                EventKind::ProcessExit(ProcessExit {
                    pid: tgid,
                    exit_code,
                    signal,
                }),
            );
        }
    }
}

/// Ticks per second of `/proc/<pid>/stat` times (`USER_HZ`, 100 on every Linux architecture).
const USER_HZ: u64 = 100;

fn list_pids(proc_root: &Path) -> Vec<u32> {
    std::fs::read_dir(proc_root)
        .map(|rd| {
            rd.filter_map(|e| e.ok()?.file_name().to_str()?.parse().ok())
                .collect()
        })
        .unwrap_or_default()
}

fn run_poller(
    d: &mut Describer,
    sink: &mut EventSink,
    stop: &AtomicBool,
    interval: Duration,
    // What ran before the session: not reported, nor its exit.
    mut known: Baseline,
) {
    let proc_root = d.config.proc_root.clone();
    let mut started: HashSet<(u32, Option<u64>)> = HashSet::new();
    while !stop.load(Ordering::SeqCst) {
        let now = sink.clock().now();
        let pids = list_pids(&proc_root);
        let alive: HashSet<u32> = pids.iter().copied().collect();
        for pid in pids {
            let Some(info) = read_proc(&proc_root, pid, true) else {
                continue;
            };
            if known.get(&pid) == Some(&info.start_ticks) {
                continue;
            }
            if let Some(old) = known.insert(pid, info.start_ticks)
                && started.remove(&(pid, old))
            {
                // The pid was reused: the old process ended.
                d.exited(pid);
                sink.emit(now, exit_unknown(pid));
            }
            let t = info
                .start_ticks
                .and_then(|ticks| {
                    sink.clock()
                        .from_boottime_ns(ticks * (1_000_000_000 / USER_HZ))
                })
                .map_or(now, |t| t.min(now));
            started.insert((pid, info.start_ticks));
            let kind = d.start(pid, None, Some(info));
            sink.emit(t, kind);
        }
        known.retain(|pid, ticks| {
            let keep = alive.contains(pid);
            if !keep {
                d.exited(*pid);
            }
            if !keep && started.remove(&(*pid, *ticks)) {
                sink.emit(now, exit_unknown(*pid));
            }
            keep
        });
        sink.caught_up(now);
        // Until the next poll, unless the intake asks for a report (a chunk is being cut) or
        // the session stops: then scan at once.
        sink.wake().wait_with(&[], interval);
        let _ = sink.wake().take();
    }
}

fn exit_unknown(pid: u32) -> EventKind {
    EventKind::ProcessExit(ProcessExit {
        pid,
        exit_code: None,
        signal: None,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn message(what: u32, ns: u64, data: &[u32]) -> Vec<u8> {
        let mut ev = Vec::new();
        ev.extend_from_slice(&what.to_ne_bytes());
        ev.extend_from_slice(&0u32.to_ne_bytes());
        ev.extend_from_slice(&ns.to_ne_bytes());
        for v in data {
            ev.extend_from_slice(&v.to_ne_bytes());
        }
        ev.resize(40, 0);
        let mut cn = Vec::new();
        for v in [CN_IDX_PROC, CN_VAL_PROC, 0, 0] {
            cn.extend_from_slice(&v.to_ne_bytes());
        }
        cn.extend_from_slice(&(ev.len() as u16).to_ne_bytes());
        cn.extend_from_slice(&0u16.to_ne_bytes());
        cn.extend_from_slice(&ev);
        let mut m = Vec::new();
        m.extend_from_slice(&((NLMSG_HDR + cn.len()) as u32).to_ne_bytes());
        m.extend_from_slice(&NLMSG_DONE.to_ne_bytes());
        m.extend_from_slice(&[0u8; 10]);
        m.extend_from_slice(&cn);
        m
    }

    /// A `/proc` of `(pid, ppid, uid, euid, loginuid)` processes.
    fn fake_proc(procs: &[(u32, u32, u32, u32, Option<u32>)]) -> tempfile::TempDir {
        let dir = tempfile::tempdir().unwrap();
        for (pid, ppid, uid, euid, login) in procs {
            let d = dir.path().join(pid.to_string());
            std::fs::create_dir(&d).unwrap();
            std::fs::write(d.join("cmdline"), b"x\0").unwrap();
            std::fs::write(
                d.join("status"),
                format!("Name:\tx\nPPid:\t{ppid}\nUid:\t{uid}\t{euid}\t{euid}\t{euid}\n"),
            )
            .unwrap();
            let login = login.unwrap_or(LOGIN_UID_UNSET);
            std::fs::write(d.join("loginuid"), login.to_string()).unwrap();
        }
        dir
    }

    fn ownership(root: &Path, uid: u32) -> Ownership {
        Ownership {
            uid,
            proc_root: root.to_owned(),
            verdicts: HashMap::new(),
        }
    }

    #[test]
    fn the_accounts_processes_are_told_from_the_machines() {
        // 1 init; 100 sshd (root); 200 alice's bash; 300 sudo (real uid alice, effective root);
        // 400 useradd under sudo (root); 500 cron (root), 600 its job as bob; 700 a root process
        // carrying alice's login uid (sudo -i, su - after a PAM login).
        let root = fake_proc(&[
            (1, 0, 0, 0, None),
            (100, 1, 0, 0, None),
            (200, 100, 1000, 1000, None),
            (300, 200, 1000, 0, None),
            (400, 300, 0, 0, None),
            (500, 1, 0, 0, None),
            (600, 500, 1001, 1001, None),
            (700, 1, 0, 0, Some(1000)),
        ]);
        let mut o = ownership(root.path(), 1000);
        let info = |pid: u32| read_proc(root.path(), pid, false).unwrap();
        assert!(o.judge(400, 300, &info(400)), "sudo's child is alice's");
        assert!(
            o.judge(300, 200, &info(300)),
            "sudo runs with alice's real uid"
        );
        assert!(
            !o.judge(600, 500, &info(600)),
            "bob's cron job is not alice's"
        );
        assert!(!o.judge(500, 1, &info(500)));
        assert!(o.judge(700, 1, &info(700)), "alice's login uid");
        // A process already gone: only its parent is known.
        assert!(o.judge(800, 400, &ProcInfo::default()));
        assert!(!o.judge(801, 100, &ProcInfo::default()));
        // Another account's view of the same machine.
        let mut bob = ownership(root.path(), 1001);
        assert!(bob.judge(600, 500, &info(600)));
        assert!(!bob.judge(400, 300, &info(400)));
    }

    #[test]
    fn a_reused_pid_is_judged_again() {
        let root = fake_proc(&[(1, 0, 0, 0, None), (200, 1, 1000, 1000, None)]);
        let mut o = ownership(root.path(), 1000);
        assert!(o.judge(300, 200, &ProcInfo::default()));
        o.forget(200);
        // pid 200 now belongs to a root daemon.
        std::fs::write(
            root.path().join("200/status"),
            "PPid:\t1\nUid:\t0\t0\t0\t0\n",
        )
        .unwrap();
        assert!(!o.judge(301, 200, &ProcInfo::default()));
    }

    #[test]
    fn connector_messages_parse() {
        let mut dgram = message(PROC_EVENT_FORK, 5, &[100, 100, 200, 200]);
        dgram.extend(message(PROC_EVENT_EXEC, 6, &[200, 200]));
        dgram.extend(message(PROC_EVENT_EXIT, 7, &[200, 200, 3 << 8, 17]));
        dgram.extend(message(0x200, 8, &[1, 1])); // COMM: ignored
        dgram.extend(message(0, 0, &[]));
        assert_eq!(
            parse_datagram(&dgram),
            vec![
                ProcEvent::Fork {
                    parent_tgid: 100,
                    child_pid: 200,
                    child_tgid: 200,
                    ns: 5
                },
                ProcEvent::Exec { tgid: 200, ns: 6 },
                ProcEvent::Exit {
                    pid: 200,
                    tgid: 200,
                    status: 3 << 8,
                    ns: 7
                },
            ]
        );
        // Truncated input yields what is whole and no panic.
        assert_eq!(parse_datagram(&dgram[..90]).len(), 1);
        assert!(parse_datagram(&[1, 2, 3]).is_empty());
    }

    #[test]
    fn wait_status_decodes() {
        assert_eq!(decode_status(0), (Some(0), None));
        assert_eq!(decode_status(3 << 8), (Some(3), None));
        assert_eq!(decode_status(9), (None, Some(9)));
        assert_eq!(decode_status(0x80 | 11), (None, Some(11)));
    }

    #[test]
    fn proc_of_this_process_reads() {
        let me = std::process::id();
        let info = read_proc(Path::new("/proc"), me, true).unwrap();
        assert!(info.ppid.is_some());
        assert_eq!(info.euid, Some(rustix::process::geteuid().as_raw()));
        assert!(!info.argv.is_empty());
        assert!(!info.exe.is_empty());
        assert!(info.start_ticks.is_some());
        assert!(read_proc(Path::new("/proc"), u32::MAX, true).is_none());
    }
}
