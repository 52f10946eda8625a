//! The whole product as it is deployed, for end-to-end tests and benchmarks: the real programs
//! (`jitrec-recorder run`, `jitrec-uploader run`, `jitrec-player serve`) as separate processes
//! on an Xvfb display, joined only by what joins them in production (the spool directory, the
//! bucket, the recorder's control socket, the player's HTTP API).
//!
//! The caller names the program files: the tests pass the copies built inside this package
//! (`CARGO_BIN_EXE_jitrec-test-*`), the benchmarks the release builds. Every process is
//! stopped when the [`Pipeline`] is dropped; its log stays in the pipeline's directory and is
//! quoted by the errors that need it.

use std::net::{SocketAddr, TcpListener};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use jitrec_format::SessionId;
use jitrec_recorder::control::{self, Request};

use crate::http;
use crate::xvfb::Xvfb;

/// Generous: these wait for processes and conditions on a loaded 2-core machine.
const START_LIMIT: Duration = Duration::from_secs(60);

/// The account the pipeline signs in with (an admin, so every page is open to it).
pub const REVIEWER: (&str, &str) = ("e2e-reviewer", "e2e reviewer password");

/// Where the three programs are.
#[derive(Debug, Clone)]
pub struct Programs {
    pub recorder: PathBuf,
    pub uploader: PathBuf,
    pub player: PathBuf,
}

/// Which bucket the uploader writes and the player reads.
#[derive(Debug, Clone)]
pub enum Store {
    /// A directory in the pipeline's own directory (the embedded default).
    DirBucket,
    /// A bucket on an S3-compatible server, with the given credentials.
    S3 {
        endpoint: String,
        bucket: String,
        access_key: String,
        secret_key: String,
    },
}

/// Settings of one pipeline.
#[derive(Debug, Clone)]
pub struct PipelineConfig {
    pub programs: Programs,
    pub store: Store,
    /// Screen size of the Xvfb display.
    pub width: u32,
    pub height: u32,
    pub fps: u32,
    /// Chunk length in milliseconds (the recorder's `encoder.chunk_ms`).
    pub chunk_ms: u64,
    /// The index: `None` for a SQLite file in the pipeline's directory, or a PostgreSQL URL.
    pub index: Option<String>,
    /// Encrypt payloads: the recorder gets an age recipient, the player its identity
    /// (`age.key` in the pipeline's directory).
    pub encrypt: bool,
    /// More arguments for `jitrec-player serve` (e.g. `--review-separation`).
    pub player_args: Vec<String>,
    /// More lines for the recorder's configuration file, after its own.
    pub recorder_toml: String,
}

/// The running programs.
pub struct Pipeline {
    pub dir: tempfile::TempDir,
    pub x: Xvfb,
    /// The player's HTTP address.
    pub player: SocketAddr,
    socket: PathBuf,
    /// Sign-in cookie (`name=value`) and CSRF token of [`REVIEWER`].
    cookie: String,
    csrf: String,
    // Stopped in reverse order of start on drop.
    children: Vec<(&'static str, Child)>,
    programs: Programs,
}

impl Drop for Pipeline {
    fn drop(&mut self) {
        while let Some((_, mut c)) = self.children.pop() {
            // SIGTERM first: the recorder commits its last chunk, the uploader finishes the
            // object in flight. A process still there after the limit is killed.
            let _ = rustix::process::kill_process(
                rustix::process::Pid::from_raw(c.id() as i32).expect("child pids are positive"),
                rustix::process::Signal::TERM,
            );
            let started = Instant::now();
            while started.elapsed() < Duration::from_secs(10) {
                if matches!(c.try_wait(), Ok(Some(_))) {
                    break;
                }
                std::thread::sleep(Duration::from_millis(20));
            }
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

impl Pipeline {
    /// Starts Xvfb, the recorder, the uploader and the player, creates the reviewer account and
    /// signs in; returns once the player answers.
    pub fn start(config: &PipelineConfig) -> Result<Self> {
        let dir = tempfile::tempdir()?;
        let x = Xvfb::start(config.width, config.height)?;
        let spool = dir.path().join("spool");
        let socket = dir.path().join("recorder.sock");
        let index = config
            .index
            .clone()
            .unwrap_or_else(|| dir.path().join("index.sqlite3").display().to_string());
        std::fs::write(
            dir.path().join("machine-id"),
            "e2e0e2e0e2e0e2e0e2e0e2e0e2e0e2e0\n",
        )?;
        let encryption = if config.encrypt {
            let id = age::x25519::Identity::generate();
            use age::secrecy::ExposeSecret as _;
            std::fs::write(
                dir.path().join("age.key"),
                format!(
                    "# the player's identity\n{}\n",
                    id.to_string().expose_secret()
                ),
            )?;
            format!(
                "\n[encryption]\nrecipients = [{:?}]\n",
                id.to_public().to_string()
            )
        } else {
            String::new()
        };
        // The recording notice is off: these tests and the benchmarks judge the picture (and
        // its cost) where the notice would cover it; tests/notice.rs tests the notice itself.
        let recorder_toml = format!(
            "spool = {spool:?}\nmachine_id_file = {mid:?}\n\n\
             [labels]\ncompany = \"e2e-company\"\nlocation = \"e2e-location\"\ncomputer = \"e2e-computer\"\n\n\
             [control]\nsocket = {socket:?}\n\n\
             [capture]\ndisplay = {display:?}\nfps = {fps}\n\n\
             [encoder]\nchunk_ms = {chunk_ms}\n\n\
             [notice]\nenabled = false\n",
            spool = spool.display().to_string(),
            mid = dir.path().join("machine-id").display().to_string(),
            socket = socket.display().to_string(),
            display = x.display,
            fps = config.fps,
            chunk_ms = config.chunk_ms,
        ) + &encryption
            + &config.recorder_toml;
        let recorder_config = dir.path().join("recorder.toml");
        std::fs::write(&recorder_config, recorder_toml)?;
        let mut p = Self {
            dir,
            x,
            player: ([127, 0, 0, 1], 0).into(),
            socket,
            cookie: String::new(),
            csrf: String::new(),
            children: Vec::new(),
            programs: config.programs.clone(),
        };

        p.spawn(
            "recorder",
            Command::new(&config.programs.recorder)
                .arg("run")
                .arg("--config")
                .arg(&recorder_config),
        )?;
        p.wait_for("the recorder's control socket", |p| {
            Ok(control::request(&p.socket, &Request::Status).is_ok())
        })?;

        let mut uploader = Command::new(&config.programs.uploader);
        uploader.arg("run").arg("--spool").arg(&spool);
        let mut player = Command::new(&config.programs.player);
        p.player = free_addr()?;
        player
            .arg("serve")
            .args(["--index", &index])
            .args(["--listen", &p.player.to_string()])
            // Chromium reaches it over plain HTTP on loopback.
            .arg("--plain-http-cookies")
            .args(["--retention-every", "0"])
            .args(&config.player_args);
        if config.encrypt {
            player
                .arg("--age-identity")
                .arg(p.dir.path().join("age.key"));
        }
        match &config.store {
            Store::DirBucket => {
                let bucket = p.dir.path().join("bucket");
                // The player refuses a bucket directory that does not exist (a typo would
                // otherwise show an empty list); an operator creates it, as here.
                std::fs::create_dir_all(&bucket)?;
                uploader.arg("--local-dir").arg(&bucket);
                player.arg("--bucket-dir").arg(&bucket);
            }
            Store::S3 {
                endpoint,
                bucket,
                access_key,
                secret_key,
            } => {
                for c in [&mut uploader, &mut player] {
                    c.args(["--s3-bucket", bucket, "--s3-endpoint", endpoint])
                        .env("AWS_ACCESS_KEY_ID", access_key)
                        .env("AWS_SECRET_ACCESS_KEY", secret_key);
                }
            }
        }
        p.spawn("uploader", &mut uploader)?;

        let mut add = Command::new(&config.programs.player)
            .args([
                "user", "add", REVIEWER.0, "--role", "admin", "--index", &index,
            ])
            .stdin(Stdio::piped())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .context("start `jitrec-player user add`")?;
        {
            use std::io::Write;
            let mut stdin = add.stdin.take().context("user add's stdin")?;
            writeln!(stdin, "{}", REVIEWER.1)?;
        }
        let out = add.wait_with_output()?;
        if !out.status.success() {
            bail!(
                "jitrec-player user add failed: {}",
                String::from_utf8_lossy(&out.stderr)
            );
        }

        p.spawn("player", &mut player)?;
        p.wait_for("the player", |p| {
            Ok(http::get(p.player, "/login").is_ok_and(|r| r.status == 200))
        })?;
        let login = http::request(
            p.player,
            "POST",
            "/api/login",
            &[("Content-Type", "application/json")],
            serde_json::json!({"user": REVIEWER.0, "password": REVIEWER.1})
                .to_string()
                .as_bytes(),
        )?;
        if login.status != 200 {
            bail!("signing in: {} {}", login.status, login.text());
        }
        p.cookie = login
            .header("set-cookie")
            .and_then(|c| c.split(';').next())
            .context("the sign-in sets a cookie")?
            .to_owned();
        p.csrf = login.json()?["csrf"]
            .as_str()
            .context("the sign-in answers a CSRF token")?
            .to_owned();
        Ok(p)
    }

    fn spawn(&mut self, name: &'static str, cmd: &mut Command) -> Result<()> {
        let log = std::fs::File::create(self.log_path(name))?;
        let child = cmd
            .env("RUST_LOG", "info")
            .stdin(Stdio::null())
            .stdout(log.try_clone()?)
            .stderr(log)
            .spawn()
            .with_context(|| format!("start the {name} ({:?})", cmd.get_program()))?;
        self.children.push((name, child));
        Ok(())
    }

    fn log_path(&self, name: &str) -> PathBuf {
        self.dir.path().join(format!("{name}.log"))
    }

    /// The last lines of every program's log, for a failure message.
    pub fn logs(&self) -> String {
        let mut out = String::new();
        for name in ["recorder", "uploader", "player"] {
            let log = std::fs::read_to_string(self.log_path(name)).unwrap_or_default();
            let lines: Vec<&str> = log.lines().collect();
            out.push_str(&format!("--- {name}.log (last lines) ---\n"));
            for l in &lines[lines.len().saturating_sub(15)..] {
                out.push_str(l);
                out.push('\n');
            }
        }
        out
    }

    /// Fails (with the logs) if a program has exited: nothing here is meant to stop by itself.
    fn check_alive(&mut self) -> Result<()> {
        for (name, c) in &mut self.children {
            if let Some(status) = c.try_wait()? {
                let name = *name;
                bail!("the {name} exited ({status})\n{}", self.logs());
            }
        }
        Ok(())
    }

    /// Polls `cond` every 50 ms until it holds, a program exits, or [`START_LIMIT`] passes.
    pub fn wait_for(
        &mut self,
        what: &str,
        mut cond: impl FnMut(&Self) -> Result<bool>,
    ) -> Result<()> {
        self.wait_for_within(what, START_LIMIT, |p| cond(p))
    }

    /// [`Pipeline::wait_for`] with its own limit.
    pub fn wait_for_within(
        &mut self,
        what: &str,
        limit: Duration,
        mut cond: impl FnMut(&Self) -> Result<bool>,
    ) -> Result<()> {
        let started = Instant::now();
        loop {
            if cond(self)? {
                return Ok(());
            }
            self.check_alive()?;
            if started.elapsed() > limit {
                bail!(
                    "timed out after {limit:?} waiting for {what}\n{}",
                    self.logs()
                );
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// The recorder's process id.
    pub fn recorder_pid(&self) -> Option<u32> {
        self.children
            .iter()
            .find(|(n, _)| *n == "recorder")
            .map(|(_, c)| c.id())
    }

    /// Reaps a recorder that was killed (by the test, as an administrator would) and starts it
    /// again with the same configuration, as the service manager would (`Restart=always`).
    /// Returns the killed recorder's exit status.
    pub fn restart_recorder(&mut self) -> Result<std::process::ExitStatus> {
        let i = self
            .children
            .iter()
            .position(|(n, _)| *n == "recorder")
            .context("no recorder")?;
        let (_, mut old) = self.children.remove(i);
        let status = old.wait()?;
        let config = self.dir.path().join("recorder.toml");
        let log = std::fs::OpenOptions::new()
            .append(true)
            .open(self.log_path("recorder"))?;
        let child = Command::new(&self.programs.recorder)
            .arg("run")
            .arg("--config")
            .arg(&config)
            .env("RUST_LOG", "info")
            .stdin(Stdio::null())
            .stdout(log.try_clone()?)
            .stderr(log)
            .spawn()
            .context("restart the recorder")?;
        // First in the list: stopped last on drop, as it was started first.
        self.children.insert(0, ("recorder", child));
        Ok(status)
    }

    /// JIT begins for `user` (the control socket, as a JIT controller would): returns the new
    /// session's id once it exists.
    pub fn jit_start(&self, user: &str, authorized_by: &str, reason: &str) -> Result<SessionId> {
        let r = control::request(
            &self.socket,
            &Request::Start {
                user: user.into(),
                authorized_by: Some(authorized_by.into()),
                reason: Some(reason.into()),
            },
        )?;
        if !r.ok {
            bail!("jit start refused: {}\n{}", r.message, self.logs());
        }
        r.session.context("jit start names the session")
    }

    /// JIT ends: returns once the recorder has committed the session's last chunk.
    pub fn jit_stop(&self) -> Result<()> {
        let r = control::request(&self.socket, &Request::Stop)?;
        if !r.ok {
            bail!("jit stop failed: {}\n{}", r.message, self.logs());
        }
        Ok(())
    }

    /// A signed-in GET on the player.
    pub fn get(&self, path: &str) -> Result<http::Response> {
        http::request(self.player, "GET", path, &[("Cookie", &self.cookie)], &[])
    }

    /// A signed-in GET that must answer 200 with JSON.
    pub fn get_json(&self, path: &str) -> Result<serde_json::Value> {
        let r = self.get(path)?;
        if r.status != 200 {
            bail!("GET {path}: {} {}", r.status, r.text());
        }
        r.json()
    }

    /// A signed-in POST (with the CSRF token) that must answer 200 with JSON.
    pub fn post_json(&self, path: &str) -> Result<serde_json::Value> {
        let r = http::request(
            self.player,
            "POST",
            path,
            &[("Cookie", &self.cookie), ("X-CSRF-Token", &self.csrf)],
            &[],
        )?;
        if r.status != 200 {
            bail!("POST {path}: {} {}", r.status, r.text());
        }
        r.json()
    }

    /// The session's detail from the API, once it is listed; `None` before.
    pub fn detail(&self, id: SessionId) -> Result<Option<serde_json::Value>> {
        let r = self.get(&format!("/api/sessions/{id}"))?;
        let mut d: serde_json::Value = match r.status {
            200 => r.json()?,
            404 => return Ok(None),
            s => bail!("GET /api/sessions/{id}: {s} {}", r.text()),
        };
        // The detail carries the first page of events; the rest are paged in here, as the
        // report view does, so tests see the whole session (a busy machine's processes can
        // fill a page in seconds).
        let mut more = d["events_more"] == true;
        while more {
            let Some(last) = d["events"].as_array().and_then(|e| e.last()).cloned() else {
                break;
            };
            let page = self.get_json(&format!(
                "/api/sessions/{id}/events?after_seq={}&after_idx={}",
                last["seq"], last["idx"]
            ))?;
            more = page["more"] == true;
            let next = page["events"].as_array().cloned().unwrap_or_default();
            if next.is_empty() {
                break;
            }
            if let Some(events) = d["events"].as_array_mut() {
                events.extend(next);
            }
        }
        Ok(Some(d))
    }

    /// Whether the session is complete in the player and its last chunk can be fetched (the
    /// moment a reviewer can play all of it).
    pub fn playable(&self, id: SessionId) -> Result<bool> {
        let Some(d) = self.detail(id)? else {
            return Ok(false);
        };
        if d["session"]["status"] != "complete" {
            return Ok(false);
        }
        let Some(last) = d["chunks"].as_array().and_then(|c| c.last()) else {
            return Ok(false);
        };
        let seq = last["seq"].as_u64().context("a chunk has a seq")?;
        Ok(self
            .get(&format!("/api/sessions/{id}/chunks/{seq}.m4s"))?
            .status
            == 200)
    }

    /// The sign-in cookie (`name=value`), for a browser or raw requests.
    pub fn cookie(&self) -> &str {
        &self.cookie
    }

    /// The CSRF token of the signed-in account.
    pub fn csrf(&self) -> &str {
        &self.csrf
    }

    /// The player's base URL.
    pub fn base(&self) -> String {
        format!("http://{}", self.player)
    }

    /// The recorder's spool directory.
    pub fn spool(&self) -> PathBuf {
        self.dir.path().join("spool")
    }

    /// The local bucket directory (meaningful with [`Store::DirBucket`]).
    pub fn bucket_dir(&self) -> PathBuf {
        self.dir.path().join("bucket")
    }

    /// The directory the pipeline keeps its files in.
    pub fn path(&self) -> &Path {
        self.dir.path()
    }
}

/// A loopback address with a free port. Another process could take it before the player
/// binds it; the player would then exit, which [`Pipeline::wait_for`] reports with its log.
fn free_addr() -> Result<SocketAddr> {
    Ok(TcpListener::bind("127.0.0.1:0")?.local_addr()?)
}
