//! `jitrec-recorder`: command-line entry point. Parses arguments and wires the library.
//!
//! `main` is `pub(crate)` so the test package can compile this very file into a helper binary it
//! starts and kills (cargo gives a package's tests only that package's own binaries).

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::AtomicBool;
use std::sync::mpsc;
use std::time::Duration;

use anyhow::{Context, Result};
use clap::{Parser, Subcommand};
use jitrec_format::Machine;
use jitrec_recorder::capture::DEFAULT_QUEUE;
#[cfg(unix)]
use jitrec_recorder::capture::x11::X11Source;
use jitrec_recorder::config::Config;
#[cfg(unix)]
use jitrec_recorder::config::ProcessMode;
use jitrec_recorder::control::Request;
#[cfg(unix)]
use jitrec_recorder::control::{self, Access};
use jitrec_recorder::doorbell::Doorbell;
#[cfg(unix)]
use jitrec_recorder::events::linux::process::{ProcessConfig, ProcessSource};
#[cfg(unix)]
use jitrec_recorder::events::linux::window::WindowSource;
use jitrec_recorder::events::redact::Redactor;
use jitrec_recorder::events::{EventSource, SourceFactory};
use jitrec_recorder::resume::Resume;
use jitrec_recorder::service::{Recorder, RecorderConfig};
#[cfg(unix)]
use jitrec_recorder::trigger::GroupWatcher;
use jitrec_spool::{SpoolConfig, SpoolWriter};

/// Records the screen and process/window events of Just-in-Time admin sessions into a local
/// spool, for jitrec-uploader to ship.
#[derive(Parser)]
#[command(version, about)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[cfg(unix)]
const DEFAULT_SOCKET: &str = "/run/jitrec/recorder.sock";
/// On Windows the control channel is a named pipe.
#[cfg(windows)]
const DEFAULT_SOCKET: &str = jitrec_recorder::control::windows::DEFAULT_PIPE;

#[derive(Subcommand)]
enum Command {
    /// Run the recorder: record while JIT is active (admin-group membership or the control
    /// socket), nothing otherwise. Stops cleanly on SIGTERM/SIGINT; on Windows, when its
    /// standard input closes (that is how the service stops its agent).
    Run {
        /// Configuration file (TOML; see docs/recorder.md for every key and default).
        #[arg(long, value_name = "FILE")]
        config: PathBuf,
    },
    /// Windows only: run as the service (the service control manager starts this), which starts
    /// `run --config FILE` as its agent in the console session. See docs/windows.md.
    #[cfg(windows)]
    Service {
        #[arg(long, value_name = "FILE")]
        config: PathBuf,
    },
    /// Tell a running recorder that JIT starts or stops (for JIT controllers).
    Jit {
        /// The recorder's control socket.
        #[arg(long, value_name = "PATH", default_value = DEFAULT_SOCKET, global = true)]
        socket: PathBuf,
        #[command(subcommand)]
        action: JitAction,
    },
    /// Recover the spool after a crash: remove partial writes and close every session a previous
    /// run left open as "interrupted". Refuses to run while a recorder holds the spool.
    Recover {
        /// The spool directory.
        #[arg(long, value_name = "DIR")]
        spool: PathBuf,
        /// The endpoint key that signs the close records of signed (format v2) sessions
        /// [default: key/endpoint.key beside the spool].
        #[arg(long, value_name = "FILE")]
        key: Option<PathBuf>,
    },
    /// Record why the last run ended, as the service manager saw it (systemd runs this as the
    /// unit's ExecStopPost, with $SERVICE_RESULT, $EXIT_CODE and $EXIT_STATUS set). The next
    /// run puts it into the session the dead run left open. A signal no process can catch
    /// (SIGKILL) leaves no other trace of its own.
    NoteExit {
        /// Configuration file (for the spool directory).
        #[arg(long, value_name = "FILE")]
        config: PathBuf,
    },
    /// Print this endpoint's identity: machine id, host name, public key and its fingerprint
    /// (what the player's enrolment page shows for approval). Creates the key if there is none.
    Identity {
        /// Configuration file (for `key_file` and `machine_id_file`); defaults apply without it.
        #[arg(long, value_name = "FILE")]
        config: Option<PathBuf>,
    },
}

#[derive(Subcommand)]
enum JitAction {
    /// JIT started: record a session for USER; returns once the session exists.
    Start {
        #[arg(long)]
        user: String,
        /// Who approved the elevation.
        #[arg(long)]
        authorized_by: Option<String>,
        /// Why (ticket, stated reason).
        #[arg(long)]
        reason: Option<String>,
    },
    /// JIT ended: returns only after the session's last chunk is committed to disk.
    Stop,
    /// Is a session being recorded?
    Status,
}

pub(crate) fn main() -> Result<()> {
    // Everything this program creates (spool entries and folders, logs, the index, bucket
    // objects, exports) is private to its user: 0600 files, 0700 folders. The recording is
    // evidence about a person and must not be readable by other local users.
    #[cfg(unix)]
    rustix::process::umask(rustix::fs::Mode::from_raw_mode(0o077));
    let cli = Cli::parse();
    match &cli.command {
        // A Windows service has no console: `service` logs to a file.
        #[cfg(windows)]
        Command::Service { .. } => {}
        _ => {
            tracing_subscriber::fmt()
                .with_env_filter(log_filter())
                .with_writer(std::io::stderr)
                .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
                .init();
        }
    }
    // No transparent huge pages for this process. libx264 asks for them (madvise) for its
    // picture buffers, and the first touch of each zeroes 2 MB at once (perf: most of the
    // first libx264 pictures' time): with them, a session's first two libx264 pictures took
    // 40 to 170 ms each on the build machine's VM, more than the rest of a minute of idle
    // recording; without, 22 (docs/recorder.md, "What an idle session costs"). Best effort:
    // a kernel without the flag records as before.
    #[cfg(target_os = "linux")]
    if let Err(e) = rustix::thread::disable_transparent_huge_pages(true) {
        tracing::info!(error = %e, "could not turn off transparent huge pages; recording goes on with them");
    }
    match cli.command {
        Command::Run { config } => run(&config),
        #[cfg(windows)]
        Command::Service { config } => service(&config),
        Command::Jit { socket, action } => {
            let req = match action {
                JitAction::Start {
                    user,
                    authorized_by,
                    reason,
                } => Request::Start {
                    user,
                    authorized_by,
                    reason,
                },
                JitAction::Stop => Request::Stop,
                JitAction::Status => Request::Status,
            };
            #[cfg(unix)]
            let resp = control::request(&socket, &req);
            #[cfg(windows)]
            let resp = jitrec_recorder::control::windows::request(&socket.to_string_lossy(), &req);
            let resp =
                resp.with_context(|| format!("talking to the recorder at {}", socket.display()))?;
            println!("{}", resp.message);
            if !resp.ok {
                std::process::exit(1);
            }
            Ok(())
        }
        Command::Identity { config } => {
            let cfg = match config {
                Some(path) => Config::load(&path)?,
                None => Config::default(),
            };
            let signer = endpoint_key(&cfg.key_path())?;
            let m = machine(&cfg.machine_id_file);
            println!("machine id:  {}", m.id);
            println!("host name:   {}", m.hostname);
            println!("public key:  {}", signer.public());
            println!("fingerprint: {}", signer.public().fingerprint());
            Ok(())
        }
        Command::NoteExit { config } => {
            let cfg = Config::load(&config)?;
            let var = |n: &str| std::env::var(n).ok().filter(|v| !v.is_empty());
            let (result, code, status) =
                (var("SERVICE_RESULT"), var("EXIT_CODE"), var("EXIT_STATUS"));
            if result.is_none() && code.is_none() {
                anyhow::bail!(
                    "SERVICE_RESULT and EXIT_CODE are not set: note-exit is meant to run as the service's ExecStopPost"
                );
            }
            let note = format!(
                "at {}: result {}, {} {}",
                chrono::Utc::now(),
                result.as_deref().unwrap_or("unknown"),
                code.as_deref().unwrap_or("exit"),
                status.as_deref().unwrap_or("unknown"),
            );
            let (writer, _) = SpoolWriter::open(
                &cfg.spool,
                SpoolConfig {
                    max_bytes: cfg.spool_max_bytes,
                },
            )
            .with_context(|| format!("opening spool {}", cfg.spool.display()))?;
            writer
                .save_state(jitrec_spool::StateRecord::Exit, note.as_bytes())
                .context("saving the exit note")?;
            println!("noted: {note}");
            Ok(())
        }
        Command::Recover { spool, key } => {
            let key = key.unwrap_or_else(|| jitrec_recorder::config::default_key_file(&spool));
            let signer = endpoint_key(&key)?;
            let (writer, recovery) =
                SpoolWriter::open_signed(&spool, SpoolConfig::default(), Some(Arc::new(signer)))
                    .with_context(|| format!("opening spool {}", spool.display()))?;
            let jitrec_recorder::recovery::Outcome { closed, failed } =
                jitrec_recorder::recovery::close_interrupted(&writer, chrono::Utc::now(), None)?;
            println!("partial writes removed: {}", recovery.temp_files_removed);
            println!("sessions closed as interrupted: {}", closed.len());
            for c in &closed {
                println!(
                    "  {} ({} chunks, recorded until {}, closed {})",
                    c.session, c.chunks, c.ended_at, c.closed_at
                );
            }
            if !failed.is_empty() {
                for (s, e) in &failed {
                    println!("  {s}: NOT closed: {e}");
                }
                anyhow::bail!("{} sessions could not be closed", failed.len());
            }
            Ok(())
        }
    }
}

fn log_filter() -> tracing_subscriber::EnvFilter {
    tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"))
}

/// Runs as the Windows service. It and its agents (which get the file as their stdout and
/// stderr) log to `LOG_FILE`.
#[cfg(windows)]
fn service(config: &Path) -> Result<()> {
    use jitrec_recorder::windows::service::{LOG_FILE, run_service};
    let log_path = Path::new(LOG_FILE);
    if let Some(dir) = log_path.parent() {
        std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    }
    let log = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(log_path)
        .with_context(|| format!("opening the log {LOG_FILE}"))?;
    tracing_subscriber::fmt()
        .with_env_filter(log_filter())
        .with_writer(std::sync::Mutex::new(log.try_clone()?))
        .with_ansi(false)
        .init();
    let args = vec![
        "run".to_owned(),
        "--config".to_owned(),
        config.display().to_string(),
    ];
    run_service(args, log)
        .context("running as a Windows service (start it with `sc.exe start jitrec-recorder`)")
}

#[cfg(unix)]
fn machine(id_file: &Path) -> Machine {
    let hostname = rustix::system::uname()
        .nodename()
        .to_string_lossy()
        .into_owned();
    let id = std::fs::read_to_string(id_file)
        .ok()
        .map(|s| s.trim().to_owned())
        .filter(|s| !s.is_empty())
        .unwrap_or_else(|| {
            tracing::warn!(path = %id_file.display(), "no machine id; using the hostname");
            hostname.clone()
        });
    let id = jitrec_recorder::identity::machine_id(&id);
    Machine { id, hostname }
}

/// On Windows the id is the registry's MachineGuid (`machine_id_file` does not apply).
#[cfg(windows)]
fn machine(_id_file: &Path) -> Machine {
    let hostname = std::env::var("COMPUTERNAME").unwrap_or_else(|_| "unknown".into());
    let id = jitrec_recorder::windows::machine::machine_guid().unwrap_or_else(|| {
        tracing::warn!("no MachineGuid in the registry; using the computer name");
        hostname.clone()
    });
    let id = jitrec_recorder::identity::machine_id(&id);
    Machine { id, hostname }
}

/// The process and window sources the configuration asks for, made afresh for each session.
#[cfg(unix)]
fn event_sources(cfg: &Config) -> Result<SourceFactory> {
    let redactor = Arc::new(Redactor::new(&cfg.events.redaction)?);
    let admin_gid = jitrec_recorder::accounts::lookup_group(&cfg.jit.group_file, &cfg.jit.group)
        .map(|(gid, _)| gid);
    if admin_gid.is_none() {
        tracing::warn!(group = %cfg.jit.group, "admin group not found; only uid 0 counts as elevated");
    }
    let process = cfg.events.processes.then(|| ProcessConfig {
        redactor: Arc::clone(&redactor),
        admin_gid,
        passwd_file: cfg.events.passwd_file.clone(),
        proc_root: "/proc".into(),
        poll_interval: Duration::from_millis(cfg.events.poll_ms),
        force_poll: cfg.events.process_source == ProcessMode::Poll,
        session_user: None,
    });
    let windows = cfg.events.windows.then(|| cfg.capture.display.clone());
    let changes =
        cfg.events
            .changes
            .then(|| jitrec_recorder::events::linux::changes::ChangeConfig {
                root: cfg.events.changes_root.clone(),
                trees: jitrec_recorder::events::linux::changes::ChangeConfig::default_trees(),
                redactor: Arc::clone(&redactor),
            });
    Ok(Box::new(move |user: &str| {
        let mut sources: Vec<Box<dyn EventSource>> = Vec::new();
        if let Some(config) = &process {
            // Its uid is looked up at each start (the account may be new since the recorder
            // started), on the source's own thread.
            sources.push(Box::new(ProcessSource::open(ProcessConfig {
                session_user: Some(user.to_owned()),
                ..config.clone()
            })));
        }
        if let Some(config) = &changes {
            // The snapshot is taken at JIT start, on the source's own thread: what differs from
            // it is the ledger.
            sources.push(Box::new(
                jitrec_recorder::events::linux::changes::ChangeSource::open(config.clone()),
            ));
        }
        if let Some(display) = &windows {
            sources.push(Box::new(WindowSource::open(
                display.as_deref(),
                Arc::clone(&redactor),
            )));
        }
        sources
    }))
}

/// The sources on Windows: ETW (processes), WinEvent hooks (windows) and the registry part of
/// the change ledger.
#[cfg(windows)]
fn event_sources(cfg: &Config) -> Result<SourceFactory> {
    use jitrec_recorder::events::windows::{etw::EtwProcessSource, winevent::WinEventSource};
    let redactor = Arc::new(Redactor::new(&cfg.events.redaction)?);
    let (processes, windows) = (cfg.events.processes, cfg.events.windows);
    let changes = cfg.events.changes;
    Ok(Box::new(move |_user: &str| {
        let mut sources: Vec<Box<dyn EventSource>> = Vec::new();
        if changes {
            // The registry part of the change ledger (docs/windows.md).
            sources.push(Box::new(
                jitrec_recorder::events::windows::ledger::RegistryLedger {
                    roots: jitrec_recorder::events::windows::ledger::Roots::default(),
                    redactor: Arc::clone(&redactor),
                },
            ));
        }
        if processes {
            sources.push(Box::new(EtwProcessSource {
                redactor: Arc::clone(&redactor),
            }));
        }
        if windows {
            sources.push(Box::new(WinEventSource {
                redactor: Arc::clone(&redactor),
            }));
        }
        sources
    }))
}

/// The payload encryption the configuration asks for (none by default).
fn sealer(cfg: &Config) -> Result<Option<Arc<jitrec_recorder::seal::Sealer>>> {
    let s = jitrec_recorder::seal::Sealer::new(&cfg.encryption.recipients)
        .map_err(anyhow::Error::msg)
        .context("[encryption] recipients")?;
    if let Some(s) = &s {
        tracing::info!(recipients = ?s.header_field().recipients, "payloads are encrypted to these age recipients");
    }
    Ok(s.map(Arc::new))
}

/// Loads (or, on first run, creates) the endpoint key, and says which key it is.
fn endpoint_key(path: &Path) -> Result<jitrec_format::EndpointSigner> {
    let (signer, created) = jitrec_recorder::identity::load_or_create(path)?;
    let fingerprint = signer.public().fingerprint();
    if created {
        tracing::warn!(key = %path.display(), %fingerprint, "created this endpoint's signing key; approve it on the player (`jitrec-player machines approve`) so its sessions show as verified");
    } else {
        tracing::info!(key = %path.display(), %fingerprint, "endpoint signing key loaded");
    }
    Ok(signer)
}

/// Opens the spool, closes the sessions a previous run left open (folding in their journals and
/// what the service manager said about the death), and says which elevation to resume.
fn open_spool(cfg: &Config) -> Result<(SpoolWriter, Option<Resume>)> {
    let since = std::time::Instant::now();
    let signer = endpoint_key(&cfg.key_path())?;
    let (spool, recovery) = SpoolWriter::open_signed(
        &cfg.spool,
        SpoolConfig {
            max_bytes: cfg.spool_max_bytes,
        },
        Some(Arc::new(signer)),
    )
    .with_context(|| format!("opening spool {}", cfg.spool.display()))?;
    let exit = match spool.load_state(jitrec_spool::StateRecord::Exit) {
        // Written by note-exit, but in a directory root can write: bounded like any event text.
        Ok(note) => {
            note.map(|b| jitrec_recorder::events::truncate_text(String::from_utf8_lossy(&b).trim()))
        }
        Err(e) => {
            tracing::warn!(error = %e, "cannot read the last run's exit note");
            None
        }
    };
    if !recovery.open_sessions.is_empty() {
        let out = jitrec_recorder::recovery::close_interrupted(
            &spool,
            chrono::Utc::now(),
            exit.as_deref(),
        )?;
        tracing::warn!(
            closed = out.closed.len(),
            failed = out.failed.len(),
            folded_events = out.closed.iter().map(|c| c.folded_events).sum::<usize>(),
            exit = ?exit,
            "closed sessions a previous run left open as interrupted"
        );
    }
    if exit.is_some()
        && let Err(e) = spool.clear_state(jitrec_spool::StateRecord::Exit)
    {
        tracing::warn!(error = %e, "cannot remove the last run's exit note");
    }
    let resume = jitrec_recorder::resume::load(&spool).map(|saved| Resume { saved, since });
    Ok((spool, resume))
}

/// Who sent a stop signal, as the stop cause of the session it ends.
#[cfg(unix)]
fn signal_cause(
    origin: &signal_hook::low_level::siginfo::Origin,
    passwd_file: &Path,
    redactor: &Redactor,
) -> jitrec_format::StopCause {
    let name = match origin.signal {
        signal_hook::consts::SIGTERM => "SIGTERM",
        signal_hook::consts::SIGINT => "SIGINT",
        _ => "a stop signal",
    };
    let (peer, detail) = match &origin.process {
        Some(p) => {
            let pid = u32::try_from(p.pid).ok();
            let peer = control::peer_of(p.uid, pid, passwd_file);
            let cmdline = pid
                .and_then(|pid| std::fs::read(format!("/proc/{pid}/cmdline")).ok())
                .map(|b| {
                    // A command line like any other: through the redaction rules (`pkill -f
                    // 'mysql -pSECRET'`), bounded.
                    let argv: Vec<String> = b
                        .split(|c| *c == 0)
                        .filter(|w| !w.is_empty())
                        .take(4096)
                        .map(|w| String::from_utf8_lossy(w).into_owned())
                        .collect();
                    redactor.command_line(&argv)
                })
                .filter(|c| !c.is_empty());
            let detail = format!(
                "the recorder received {name} from pid {} ({}, uid {}{})",
                p.pid,
                peer.exe.as_deref().unwrap_or("executable unknown"),
                p.uid,
                cmdline
                    .map(|c| format!(", `{}`", jitrec_recorder::events::truncate_text(&c)))
                    .unwrap_or_default()
            );
            (Some(peer), detail)
        }
        None => (
            None,
            format!("the recorder received {name} (sender unknown)"),
        ),
    };
    jitrec_format::StopCause {
        by: jitrec_format::StopBy::ServiceStop,
        peer,
        recorded_user: None,
        detail,
    }
}

fn recorder_config(cfg: &Config) -> RecorderConfig {
    RecorderConfig {
        fps: cfg.capture.fps,
        chunk_len: Duration::from_millis(cfg.encoder.chunk_ms),
        encoder: cfg.encoder(),
        machine: machine(&cfg.machine_id_file),
        labels: cfg.labels.clone(),
        queue: DEFAULT_QUEUE,
        events: cfg.event_limits(),
    }
}

#[cfg(unix)]
fn run(path: &Path) -> Result<()> {
    let cfg = Config::load(path)?;
    let (spool, resume) = open_spool(&cfg)?;
    let shutdown = Arc::new(AtomicBool::new(false));
    // Rung after `shutdown` is set: the service sleeps on it (`jitrec_recorder::doorbell`).
    let bell = Arc::new(Doorbell::new());
    let shutdown_cause = Arc::new(std::sync::Mutex::new(None));
    {
        use signal_hook::iterator::{SignalsInfo, exfiltrator::WithOrigin};
        let mut signals = SignalsInfo::<WithOrigin>::new([
            signal_hook::consts::SIGTERM,
            signal_hook::consts::SIGINT,
        ])
        .context("signal handler")?;
        let (shutdown, cause, bell) = (
            Arc::clone(&shutdown),
            Arc::clone(&shutdown_cause),
            Arc::clone(&bell),
        );
        let redactor = Redactor::new(&cfg.events.redaction)?;
        // Detached: it waits for signals for the life of the process.
        std::thread::Builder::new()
            .name("jitrec-signals".into())
            .spawn(move || {
                for origin in signals.forever() {
                    let c = signal_cause(&origin, Path::new("/etc/passwd"), &redactor);
                    tracing::warn!(detail = %c.detail, "stopping on a signal");
                    *cause
                        .lock()
                        .unwrap_or_else(std::sync::PoisonError::into_inner) = Some(c);
                    shutdown.store(true, std::sync::atomic::Ordering::SeqCst);
                    bell.ring();
                }
            })?;
    }
    let (jit_tx, jit_rx) = mpsc::channel();
    if let Some(user) = &cfg.jit.user {
        let w = GroupWatcher {
            path: cfg.jit.group_file.clone(),
            group: cfg.jit.group.clone(),
            user: user.clone(),
            poll: Duration::from_millis(cfg.jit.poll_ms.max(50)),
        };
        let (tx, stop) = (jit_tx.clone(), Arc::clone(&shutdown));
        std::thread::Builder::new()
            .name("jitrec-group-watch".into())
            .spawn(move || w.run(tx, stop))?;
    }
    let access = Access {
        group: cfg.control.group.clone(),
        group_file: cfg.jit.group_file.clone(),
        passwd_file: "/etc/passwd".into(),
    };
    let listener = control::bind(&cfg.control.socket, cfg.control.mode, access.gid())
        .with_context(|| {
            format!(
                "binding the control socket {}",
                cfg.control.socket.display()
            )
        })?;
    let shared = Arc::new(control::Shared::default());
    {
        let (tx, shared) = (jit_tx.clone(), Arc::clone(&shared));
        // Detached: it blocks in accept and ends with the process.
        std::thread::Builder::new()
            .name("jitrec-control".into())
            .spawn(move || control::serve(listener, tx, shared, access))?;
    }
    drop(jit_tx);
    let config = recorder_config(&cfg);
    let sources = event_sources(&cfg)?;
    tracing::info!(spool = %cfg.spool.display(), socket = %cfg.control.socket.display(),
        user = ?cfg.jit.user, group = %cfg.jit.group, "recorder started; waiting for JIT");
    let display = cfg.capture.display.clone();
    let result = Recorder::new(spool, config, move || X11Source::open(display.as_deref()))
        .with_event_sources(sources)
        .with_sealer(sealer(&cfg)?)
        .with_resume(resume)
        .with_shutdown_cause(shutdown_cause)
        .with_doorbell(bell)
        .with_notice(cfg.notice())
        .with_fail_closed(cfg.fail_closed())
        .run(jit_rx, shutdown, |ev| shared.observe(ev));
    let _ = std::fs::remove_file(&cfg.control.socket);
    tracing::info!("recorder stopped");
    Ok(result?)
}

/// The Windows agent: JIT from Administrators membership and the control pipe, the screen
/// through Graphics Capture (or GDI), events from ETW and WinEvent hooks. Stops when its
/// standard input closes.
#[cfg(windows)]
fn run(path: &Path) -> Result<()> {
    use jitrec_recorder::capture::windows as screen;
    use jitrec_recorder::control::windows as pipe;
    use jitrec_recorder::trigger::windows::AdminWatcher;
    let cfg = Config::load(path)?;
    let (spool, resume) = open_spool(&cfg)?;
    let shutdown = Arc::new(AtomicBool::new(false));
    // Rung after `shutdown` is set: the service sleeps on it (`jitrec_recorder::doorbell`).
    let bell = Arc::new(Doorbell::new());
    {
        let (shutdown, bell) = (Arc::clone(&shutdown), Arc::clone(&bell));
        // Detached: it ends when stdin closes, which is the stop request.
        std::thread::Builder::new()
            .name("jitrec-stdin".into())
            .spawn(move || {
                let _ = std::io::copy(&mut std::io::stdin(), &mut std::io::sink());
                tracing::info!("standard input closed: finishing");
                shutdown.store(true, std::sync::atomic::Ordering::SeqCst);
                bell.ring();
            })?;
    }
    let (jit_tx, jit_rx) = mpsc::channel();
    {
        let (tx, stop) = (jit_tx.clone(), Arc::clone(&shutdown));
        std::thread::Builder::new()
            .name("jitrec-admin-watch".into())
            .spawn(move || AdminWatcher.run(tx, stop))?;
    }
    let bound = pipe::bind(pipe::DEFAULT_PIPE).context("creating the control pipe")?;
    let shared = Arc::new(jitrec_recorder::control::Shared::default());
    {
        let (tx, shared) = (jit_tx.clone(), Arc::clone(&shared));
        std::thread::Builder::new()
            .name("jitrec-control".into())
            .spawn(move || pipe::serve(bound, tx, shared))?;
    }
    drop(jit_tx);
    let config = recorder_config(&cfg);
    let sources = event_sources(&cfg)?;
    tracing::info!(spool = %cfg.spool.display(), pipe = pipe::DEFAULT_PIPE, "recorder started; waiting for JIT");
    let result = Recorder::new(spool, config, screen::open)
        .with_event_sources(sources)
        .with_sealer(sealer(&cfg)?)
        .with_resume(resume)
        .with_doorbell(bell)
        .with_notice(cfg.notice())
        .with_fail_closed(cfg.fail_closed())
        .run(jit_rx, shutdown, |ev| shared.observe(ev));
    tracing::info!("recorder stopped");
    Ok(result?)
}
